//! `[redis]`: the URL, the patterns and the liveness probe's canary.

use serde::Deserialize;

use super::{Checked, Invalid};
use crate::util::pattern::Pattern;
use crate::util::pem;

/// Suffix appended to the first pattern's literal prefix to form the canary channel.
pub const CANARY_SUFFIX: &str = "__studio_relay__";

/// URL schemes fred understands and this build supports.
const REDIS_SCHEMES: &[&str] = &[
    "redis",
    "rediss",
    "redis-cluster",
    "rediss-cluster",
    "redis-sentinel",
    "rediss-sentinel",
    "valkey",
    "valkeys",
    "valkey-cluster",
    "valkeys-cluster",
    "valkey-sentinel",
    "valkeys-sentinel",
];

/// `[redis]`: where to subscribe and how to probe the subscription.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://`, `rediss://`, `redis-cluster://` or `redis-sentinel://`
    /// URL; `""` runs without Redis (other sources only).
    pub url: String,
    /// Glob patterns to PSUBSCRIBE.
    pub patterns: Vec<String>,
    /// How often to probe the subscription; 0 turns the probe off.
    pub liveness_interval_ms: u64,
    /// How long a probe (and a connection attempt) may take.
    pub liveness_timeout_ms: u64,
    /// Channel for the canary; "" derives it from the first pattern.
    pub canary_channel: String,
    /// PEM of a private CA for `rediss://` ("" = the system's roots).
    pub tls_ca: String,
    /// Client certificate chain (PEM) for Redis with `tls-auth-clients yes`.
    pub tls_cert: String,
    /// Its private key (PEM).
    pub tls_key: String,
    /// Also take `@socket.io/redis-adapter` / `redis-emitter` broadcasts.
    pub socketio_adapter: bool,
    /// The adapter's / emitter's `key` option (channel prefix).
    pub socketio_key: String,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            patterns: vec!["claude-studio:*".into()],
            liveness_interval_ms: 5000,
            liveness_timeout_ms: 5000,
            canary_channel: String::new(),
            tls_ca: String::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            socketio_adapter: false,
            socketio_key: "socket.io".into(),
        }
    }
}

impl RedisConfig {
    /// The canary channel actually used: the configured one, or the first
    /// pattern's literal prefix + [`CANARY_SUFFIX`].
    pub fn effective_canary_channel(&self) -> String {
        if !self.canary_channel.is_empty() {
            return self.canary_channel.clone();
        }
        let prefix = self
            .patterns
            .first()
            .map(|p| Pattern::new(p).prefix().to_owned())
            .unwrap_or_default();
        format!("{prefix}{CANARY_SUFFIX}")
    }

    /// False for `url = ""`: the relay runs without Redis.
    pub fn enabled(&self) -> bool {
        !self.url.is_empty()
    }

    /// The adapter's broadcast pattern, `<key>#/#*` (namespace `/` only).
    pub fn adapter_pattern(&self) -> String {
        format!("{}#/#*", glob_escape(&self.socketio_key))
    }

    /// The URL with any password replaced, safe to log.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// URL scheme and syntax, patterns, and a canary the probe can see.
    pub(super) fn validate(&self) -> Checked {
        let mut warnings = Vec::new();
        if self.socketio_adapter && self.socketio_key.is_empty() {
            return Err(Invalid::new("redis.socketio_key", "may not be empty"));
        }
        if !self.enabled() {
            // No Redis: the patterns still name /publish's channels.
            self.validate_patterns(&mut warnings)?;
            return Ok(warnings);
        }
        let Some((scheme, _)) = self.url.split_once("://") else {
            // Naming an empty scheme would not tell someone who wrote
            // `localhost:6379` what is missing. The URL is not echoed: it may
            // hold a password.
            return Err(Invalid::new(
                "redis.url",
                "missing scheme: write it as redis://HOST:PORT (or rediss://, redis-cluster://, redis-sentinel://)",
            ));
        };
        if !REDIS_SCHEMES.contains(&scheme) {
            return Err(Invalid::new(
                "redis.url",
                format!(
                    "unsupported scheme {scheme:?}; use one of {}",
                    REDIS_SCHEMES.join(", ")
                ),
            ));
        }
        if let Err(e) = fred::types::config::Config::from_url(&self.url) {
            return Err(Invalid::new(
                "redis.url",
                format!("invalid Redis URL: {}", e.details()),
            ));
        }
        self.validate_tls(scheme)?;
        let patterns = self.validate_patterns(&mut warnings)?;
        if self.liveness_interval_ms > 0 {
            if self.liveness_timeout_ms == 0 {
                return Err(Invalid::new(
                    "redis.liveness_timeout_ms",
                    "must be above 0 while liveness_interval_ms is set",
                ));
            }
            let canary = self.effective_canary_channel();
            if !patterns.iter().any(|p| p.matches(canary.as_bytes())) {
                return Err(Invalid::new(
                    "redis.canary_channel",
                    format!("canary channel {canary:?} matches no pattern, so the liveness probe could never see it"),
                ));
            }
        }
        Ok(warnings)
    }

    /// TLS files only with a TLS scheme, cert and key together, and every
    /// file readable and parseable now rather than at the first connect.
    fn validate_tls(&self, scheme: &str) -> Result<(), Invalid> {
        let tls_scheme = scheme.starts_with("rediss") || scheme.starts_with("valkeys");
        for (key, value) in [
            ("redis.tls_ca", &self.tls_ca),
            ("redis.tls_cert", &self.tls_cert),
            ("redis.tls_key", &self.tls_key),
        ] {
            if !value.is_empty() && !tls_scheme {
                return Err(Invalid::new(
                    key,
                    format!("needs a TLS URL (rediss://…), not {scheme}://"),
                ));
            }
        }
        if self.tls_cert.is_empty() != self.tls_key.is_empty() {
            let key = if self.tls_cert.is_empty() {
                "redis.tls_cert"
            } else {
                "redis.tls_key"
            };
            return Err(Invalid::new(key, "tls_cert and tls_key go together"));
        }
        if !self.tls_ca.is_empty() {
            pem::certs(&self.tls_ca).map_err(|e| Invalid::new("redis.tls_ca", e))?;
        }
        if !self.tls_cert.is_empty() {
            pem::certs(&self.tls_cert).map_err(|e| Invalid::new("redis.tls_cert", e))?;
            pem::key(&self.tls_key).map_err(|e| Invalid::new("redis.tls_key", e))?;
        }
        Ok(())
    }

    fn validate_patterns(&self, warnings: &mut Vec<String>) -> Result<Vec<Pattern>, Invalid> {
        if self.patterns.is_empty() {
            return Err(Invalid::new(
                "redis.patterns",
                "at least one pattern is required",
            ));
        }
        if self.patterns.iter().any(|p| p.is_empty()) {
            return Err(Invalid::new("redis.patterns", "a pattern may not be empty"));
        }
        let patterns: Vec<Pattern> = self.patterns.iter().map(|p| Pattern::new(p)).collect();
        for (i, a) in patterns.iter().enumerate() {
            for b in &patterns[i + 1..] {
                if a.raw() == b.raw() {
                    return Err(Invalid::new(
                        "redis.patterns",
                        format!("duplicate pattern {:?}", a.raw()),
                    ));
                }
                if a.prefix().starts_with(b.prefix()) || b.prefix().starts_with(a.prefix()) {
                    warnings.push(format!(
                        "patterns {:?} and {:?} overlap: a message matching both is delivered once per pattern",
                        a.raw(),
                        b.raw()
                    ));
                }
            }
        }
        Ok(patterns)
    }
}

/// Escapes glob metacharacters so `key` matches only itself in a PSUBSCRIBE.
fn glob_escape(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for c in key.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Replaces the password in `scheme://user:pass@host` with `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{parse, parse_str};
    use super::*;

    #[test]
    fn bad_url_is_located_at_redis_url() {
        let e = parse("[redis]\nurl = \"http://x\"\n").unwrap_err();
        assert_eq!(e.key, "redis.url");
    }

    #[test]
    fn url_without_scheme_says_so_and_does_not_echo_it() {
        for url in ["localhost:6379", "u:hunter2@h:1"] {
            let e = parse(&format!("[redis]\nurl = \"{url}\"\n")).unwrap_err();
            assert_eq!((e.key.as_str(), e.line, e.column), ("redis.url", 2, 7));
            assert!(e.message.starts_with("missing scheme"), "{e}");
            assert!(!e.message.contains("hunter2"), "{e}");
        }
        let e = parse("[redis]\nurl = \"http://x\"\n").unwrap_err();
        assert!(e.message.contains("unsupported scheme \"http\""), "{e}");
    }

    #[test]
    fn an_empty_url_turns_redis_off_but_keeps_pattern_rules() {
        let l = parse("[redis]\nurl = \"\"\n").unwrap();
        assert!(!l.config.redis.enabled());
        let e = parse("[redis]\nurl = \"\"\npatterns = []\n").unwrap_err();
        assert_eq!(e.key, "redis.patterns");
    }

    #[test]
    fn the_adapter_pattern_is_the_key_escaped() {
        let mut r = RedisConfig::default();
        assert_eq!(r.adapter_pattern(), "socket.io#/#*");
        r.socketio_key = "a*b".into();
        assert_eq!(r.adapter_pattern(), "a\\*b#/#*");
        let e = parse("[redis]\nsocketio_adapter = true\nsocketio_key = \"\"\n").unwrap_err();
        assert_eq!(e.key, "redis.socketio_key");
    }

    #[test]
    fn tls_files_need_a_tls_url_come_in_pairs_and_must_parse() {
        let e = parse("[redis]\ntls_ca = \"/x.pem\"\n").unwrap_err();
        assert_eq!(e.key, "redis.tls_ca");
        assert!(e.message.contains("rediss://"), "{e}");
        let e = parse("[redis]\nurl = \"rediss://h:1\"\ntls_cert = \"/c.pem\"\n").unwrap_err();
        assert_eq!(e.key, "redis.tls_key");
        let e = parse("[redis]\nurl = \"rediss://h:1\"\ntls_ca = \"/nonexistent/ca.pem\"\n")
            .unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("redis.tls_ca", 3));
        assert!(e.message.contains("/nonexistent/ca.pem"), "{e}");
    }

    #[test]
    fn canary_must_match_a_pattern_while_liveness_is_on() {
        let e = parse("[redis]\npatterns = [\"a:*\"]\ncanary_channel = \"b:x\"\n").unwrap_err();
        assert_eq!(e.key, "redis.canary_channel");
        assert_eq!(e.line, 3);
        parse(
            "[redis]\npatterns = [\"a:*\"]\ncanary_channel = \"b:x\"\nliveness_interval_ms = 0\n",
        )
        .unwrap();
        // "app." + suffix does not match "app.[ab]*": the operator must pick a channel.
        let e = parse("[redis]\npatterns = [\"app.[ab]*\"]\n").unwrap_err();
        assert!(e.message.contains("app.__studio_relay__"), "{e}");
    }

    #[test]
    fn overlapping_patterns_warn() {
        let l = parse("[redis]\npatterns = [\"cs:*\", \"cs:agent:*\"]\n").unwrap();
        assert_eq!(l.warnings.len(), 1);
        let l = parse("[redis]\npatterns = [\"cs:*\", \"other:*\"]\n").unwrap();
        assert!(l.warnings.is_empty());
    }

    #[test]
    fn redis_url_env_overrides_and_is_blamed_when_bad() {
        let l = parse_str("", "f", Some("redis://10.0.0.1:7000")).unwrap();
        assert_eq!(l.config.redis.url, "redis://10.0.0.1:7000");
        let e = parse_str("", "f", Some("nope://")).unwrap_err();
        assert_eq!(e.file, "$REDIS_URL");
    }

    #[test]
    fn redaction_hides_password_only() {
        assert_eq!(redact_url("redis://u:secret@h:1/2"), "redis://u:***@h:1/2");
        assert_eq!(redact_url("redis://:secret@h"), "redis://:***@h");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
    }
}
