//! `[nats]`: the NATS server and the subjects to subscribe (SPEC §10).

use serde::Deserialize;

use super::{Checked, Invalid};

/// URL schemes the NATS source accepts (`tls://` needs TLS from the first byte
/// after INFO, as NATS clients do).
const NATS_SCHEMES: &[&str] = &["nats", "tls"];

/// `[nats]`: where to connect and what to subscribe.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// `nats://[user:pass@]host:port` or `tls://…`; `""` turns NATS off.
    pub url: String,
    /// Subjects to subscribe (core NATS, `*` and `>` wildcards).
    pub subjects: Vec<String>,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: String::new(),
            subjects: vec!["claude-studio.>".into()],
        }
    }
}

impl NatsConfig {
    /// False for `url = ""`.
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// The URL with its password (or token) replaced, safe to log.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }

    /// URL scheme and syntax; subjects valid and not repeated. Overlapping
    /// subjects only warn: NATS delivers a message once per matching
    /// subscription, as Redis does per pattern.
    pub(super) fn validate(&self) -> Checked {
        if self.enabled() {
            self.validate_url()?;
        }
        let mut warnings = Vec::new();
        if self.subjects.is_empty() {
            return Err(Invalid::new(
                "nats.subjects",
                "at least one subject is required",
            ));
        }
        for (i, s) in self.subjects.iter().enumerate() {
            if let Err(why) = check_subject(s) {
                return Err(Invalid::new(
                    format!("nats.subjects[{i}]"),
                    format!("{s:?}: {why}"),
                ));
            }
            if let Some(j) = self.subjects[..i].iter().position(|o| o == s) {
                return Err(Invalid::new(
                    format!("nats.subjects[{i}]"),
                    format!("duplicate of nats.subjects[{j}] {s:?}"),
                ));
            }
            for o in &self.subjects[..i] {
                if subjects_overlap(o, s) {
                    warnings.push(format!(
                        "nats subjects {o:?} and {s:?} overlap: a message matching both is delivered once per subject"
                    ));
                }
            }
        }
        Ok(warnings)
    }

    fn validate_url(&self) -> Result<(), Invalid> {
        // The URL is never echoed: it may hold a password.
        let Some((scheme, rest)) = self.url.split_once("://") else {
            return Err(Invalid::new(
                "nats.url",
                "missing scheme: write it as nats://HOST:PORT (or tls://HOST:PORT)",
            ));
        };
        if !NATS_SCHEMES.contains(&scheme) {
            return Err(Invalid::new(
                "nats.url",
                format!(
                    "unsupported scheme {scheme:?}; use one of {}",
                    NATS_SCHEMES.join(", ")
                ),
            ));
        }
        let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
        if host.is_empty() || host.starts_with(':') {
            return Err(Invalid::new("nats.url", "missing host"));
        }
        if let Err(e) = self.url.parse::<async_nats::ServerAddr>() {
            // async-nats' message names the URL parser's complaint, not the URL.
            return Err(Invalid::new(
                "nats.url",
                format!("invalid NATS URL: {}", redact(&e.to_string())),
            ));
        }
        Ok(())
    }
}

/// Why `s` is not a subject a core NATS subscription accepts: tokens
/// separated by `.`, none empty, no whitespace, `*` and `>` only as whole
/// tokens and `>` only last.
pub fn check_subject(s: &str) -> Result<(), &'static str> {
    if s.is_empty() {
        return Err("a subject may not be empty");
    }
    if s.chars().any(char::is_whitespace) {
        return Err("a subject may not contain whitespace");
    }
    let tokens: Vec<&str> = s.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        if t.is_empty() {
            return Err("empty token (leading, trailing or doubled '.')");
        }
        if *t == ">" && i + 1 != tokens.len() {
            return Err("'>' may only be the last token");
        }
        if t.len() > 1 && t.contains(['*', '>']) {
            return Err("'*' and '>' must be whole tokens");
        }
    }
    Ok(())
}

/// Whether some subject matches both (valid) subject filters.
pub fn subjects_overlap(a: &str, b: &str) -> bool {
    let (mut a, mut b) = (a.split('.'), b.split('.'));
    loop {
        match (a.next(), b.next()) {
            (Some(">"), Some(_)) | (Some(_), Some(">")) => return true,
            (Some(x), Some(y)) if x == y || x == "*" || y == "*" => continue,
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// `scheme://user:pass@host` → `scheme://user:***@host`; a lone user part
/// (a NATS token) becomes `***` whole.
fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            super::redact_url(&format!("{scheme}://{userinfo}@{host}{tail}"))
        }
        Some((_, host)) => format!("{scheme}://***@{host}{tail}"),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    #[test]
    fn off_by_default_with_the_studio_subject() {
        let c = parse("").unwrap().config.nats;
        assert_eq!(c, NatsConfig::default());
        assert!(!c.enabled());
        assert_eq!(c.subjects, ["claude-studio.>"]);
        let c = parse("[nats]\nurl = \"nats://127.0.0.1:4222\"\n")
            .unwrap()
            .config
            .nats;
        assert!(c.enabled());
    }

    #[test]
    fn bad_urls_are_located_and_never_echo_the_password() {
        for (url, says) in [
            ("localhost:4222", "missing scheme"),
            ("u:hunter2@h:4222", "missing scheme"),
            ("http://u:hunter2@h:4222", "unsupported scheme \"http\""),
            ("nats://u:hunter2@", "missing host"),
            ("nats://u:hunter2@h:99999", "invalid NATS URL"),
            ("nats://", "missing host"),
        ] {
            let e = parse(&format!("[nats]\nurl = \"{url}\"\n")).unwrap_err();
            assert_eq!(
                (e.key.as_str(), e.line, e.column),
                ("nats.url", 2, 7),
                "{url}: {e}"
            );
            assert!(e.message.starts_with(says), "{url}: {e}");
            assert!(!e.to_string().contains("hunter2"), "{e}");
        }
        for ok in [
            "nats://127.0.0.1:4222",
            "tls://nats.example:4443",
            "nats://u:p@h:1",
            "nats://tok@h",
        ] {
            parse(&format!("[nats]\nurl = \"{ok}\"\n")).unwrap();
        }
    }

    #[test]
    fn subjects_follow_nats_rules_and_errors_name_the_entry() {
        for (subjects, key) in [
            ("[]", "nats.subjects"),
            ("[\"a.>\", \"\"]", "nats.subjects[1]"),
            ("[\"a..b\"]", "nats.subjects[0]"),
            ("[\"a.\"]", "nats.subjects[0]"),
            ("[\".a\"]", "nats.subjects[0]"),
            ("[\"a.>.b\"]", "nats.subjects[0]"),
            ("[\"a.b*\"]", "nats.subjects[0]"),
            ("[\"a.>x\"]", "nats.subjects[0]"),
            ("[\"a b\"]", "nats.subjects[0]"),
            ("[\"x.*\", \"a.>\", \"a.>\"]", "nats.subjects[2]"),
        ] {
            let e = parse(&format!("[nats]\nsubjects = {subjects}\n")).unwrap_err();
            assert_eq!(e.key, key, "{subjects}: {e}");
            assert_eq!(e.line, 2, "{subjects}: {e}");
        }
        let l = parse("[nats]\nsubjects = [\"a.>\", \"a.*.c\", \"b.c\", \"*\", \"a\"]\n").unwrap();
        // a.> ~ a.*.c, "*" ~ "a"; b.c overlaps nothing of one token or a.*.
        assert_eq!(l.warnings.len(), 2, "{:?}", l.warnings);
    }

    #[test]
    fn overlap_is_token_wise() {
        assert!(subjects_overlap("a.>", "a.b"));
        assert!(subjects_overlap("a.*", "a.b"));
        assert!(subjects_overlap("*.b", "a.*"));
        assert!(!subjects_overlap("a.>", "a"));
        assert!(!subjects_overlap("a.*", "a.b.c"));
        assert!(!subjects_overlap("a.b", "a.c"));
    }

    #[test]
    fn redaction_hides_password_and_token() {
        assert_eq!(redact("nats://u:secret@h:1"), "nats://u:***@h:1");
        assert_eq!(redact("tls://s3cr3t@h:1"), "tls://***@h:1");
        assert_eq!(redact("nats://h:4222"), "nats://h:4222");
    }
}
