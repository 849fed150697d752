//! `[log]`: the level filter and the line format.

use serde::Deserialize;

use super::{Checked, Invalid};

/// What a bare directive, or the right of `=`, may be.
const LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

/// `[log]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// An `EnvFilter` directive such as `info` or `studio_relay=debug`.
    pub level: String,
    /// Line format.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// `log.format`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl LogConfig {
    /// `log.level` must be a filter that shows something.
    pub(super) fn validate(&self) -> Checked {
        check_filter(&self.level).map_err(|m| Invalid::new("log.level", m))?;
        // The grammar above is stricter than EnvFilter's; this catches what
        // it leaves to EnvFilter, such as a bad field value in a span filter.
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.level) {
            return Err(Invalid::new("log.level", format!("invalid filter: {e}")));
        }
        Ok(Vec::new())
    }
}

/// EnvFilter takes any bare word as a target that enables every level for
/// it, so a typo such as `verbose` silences the whole relay. Here each
/// comma-separated directive must be a level, or `target=level` /
/// `target[span{field}]=level` with `target` a Rust module path.
fn check_filter(filter: &str) -> Result<(), String> {
    let levels = LEVELS.join(", ");
    let forms = format!(
        "use a level ({levels}), or target=level directives such as studio_relay=debug, separated by commas"
    );
    if filter.trim().is_empty() {
        return Err(format!("may not be empty; {forms}"));
    }
    // EnvFilter skips empty pieces between commas, and trims the others.
    for raw in filter.split(',').filter(|d| !d.is_empty()) {
        let directive = raw.trim();
        if directive.is_empty() {
            return Err(format!("empty directive between commas; {forms}"));
        }
        let Some((selector, level)) = directive
            .rsplit_once('=')
            .filter(|_| !directive.ends_with(']'))
        else {
            if is_level(directive) {
                continue;
            }
            return Err(format!("{directive:?} is not a log level; {forms}"));
        };
        if !is_level(level) {
            return Err(format!(
                "{level:?} in {directive:?} is not a log level; use one of {levels}"
            ));
        }
        let (target, span) = match selector.find('[') {
            Some(i) => (&selector[..i], Some(&selector[i..])),
            None => (selector, None),
        };
        if span.is_some_and(|s| !s.ends_with(']')) {
            return Err(format!(
                "{directive:?}: a span filter is written target[span{{field}}]=level"
            ));
        }
        if target.is_empty() && span.is_none() {
            return Err(format!("{directive:?} names no target; {forms}"));
        }
        if !target.is_empty() && !is_module_path(target) {
            return Err(format!(
                "{target:?} in {directive:?} is not a target: a target is a Rust module path such as studio_relay::source"
            ));
        }
    }
    Ok(())
}

fn is_level(word: &str) -> bool {
    LEVELS.iter().any(|l| l.eq_ignore_ascii_case(word))
}

/// `[A-Za-z_][A-Za-z0-9_]*` segments joined by `::`.
fn is_module_path(target: &str) -> bool {
    target.split("::").all(|segment| {
        let mut bytes = segment.bytes();
        bytes
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
            && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
    })
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    #[test]
    fn bad_format_and_unparsable_filter_are_refused() {
        let e = parse("[log]\nformat = \"xml\"\n").unwrap_err();
        assert_eq!(e.key, "log.format");
        let e = parse("[log]\nlevel = \"=[\"\n").unwrap_err();
        assert_eq!(e.key, "log.level");
    }

    #[test]
    fn a_bare_word_that_is_not_a_level_is_refused_at_the_value() {
        for level in ["verbose!!", "verbose", "studio_relay", "info,verbose", "3"] {
            let e = parse(&format!("[log]\nformat = \"text\"\nlevel = \"{level}\"\n")).unwrap_err();
            assert_eq!(
                (e.key.as_str(), e.line, e.column),
                ("log.level", 3, 9),
                "{level}"
            );
            assert!(
                e.message.contains("is not a log level")
                    && e.message.contains("off, error, warn, info, debug, trace")
                    && e.message.contains("target=level"),
                "{level}: {e}"
            );
        }
    }

    #[test]
    fn levels_and_target_directives_are_accepted() {
        for level in [
            "warn",
            "INFO",
            "Off",
            "studio_relay=debug,info",
            "studio_relay::source=trace,fred=warn",
            "info,",
            "studio_relay[conn{id}]=debug",
            "[conn]=debug",
            "_private=error",
        ] {
            assert_eq!(check_filter(level), Ok(()), "{level}");
            parse(&format!("[log]\nlevel = \"{level}\"\n")).unwrap();
        }
    }

    #[test]
    fn malformed_directives_say_which_part_is_wrong() {
        for (level, wanted) in [
            ("", "may not be empty"),
            ("  ", "may not be empty"),
            ("info, ", "empty directive"),
            (
                "studio_relay=verbose",
                "\"verbose\" in \"studio_relay=verbose\" is not a log level",
            ),
            (
                "studio_relay=",
                "\"\" in \"studio_relay=\" is not a log level",
            ),
            ("=debug", "names no target"),
            ("studio-relay=debug", "a target is a Rust module path"),
            ("studio_relay =debug", "a target is a Rust module path"),
            ("a::=debug", "a target is a Rust module path"),
            ("1x=debug", "a target is a Rust module path"),
            ("studio_relay[conn", "is not a log level"),
            ("studio_relay[conn]", "is not a log level"),
            ("studio_relay[conn=debug", "span filter"),
        ] {
            let e = check_filter(level).unwrap_err();
            assert!(e.contains(wanted), "{level:?}: {e}");
        }
    }
}
