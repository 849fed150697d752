//! `[log]`: the level filter and the line format.

use serde::Deserialize;

use super::{Checked, Invalid};

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
    /// `log.level` must be a filter EnvFilter accepts.
    pub(super) fn validate(&self) -> Checked {
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.level) {
            return Err(Invalid::new("log.level", format!("invalid filter: {e}")));
        }
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;

    #[test]
    fn bad_format_and_unparsable_filter_are_refused() {
        let e = parse("[log]\nformat = \"xml\"\n").unwrap_err();
        assert_eq!(e.key, "log.format");
        let e = parse("[log]\nlevel = \"=[\"\n").unwrap_err();
        assert_eq!(e.key, "log.level");
    }
}
