//! `[publish]`: `POST /publish` on every listener (SPEC §10).

use std::fmt;
use std::net::SocketAddr;

use serde::Deserialize;

use super::{Checked, Invalid, RedisConfig, SocketIoConfig};

/// The route `POST /publish` is served at.
pub const PUBLISH_PATH: &str = "/publish";

/// Where published events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishTo {
    /// PUBLISH on Redis, so every relay subscribed there delivers it.
    Redis,
    /// Straight to this relay's hub.
    Local,
}

/// `[publish]`
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PublishConfig {
    /// Serve `POST /publish` on every listener.
    pub enabled: bool,
    /// Bearer tokens allowed to publish; empty only with loopback listeners.
    pub tokens: Vec<String>,
    /// `redis` (re-PUBLISH) or `local` (this relay's hub only).
    pub to: PublishTo,
    /// Largest request body, checked on `Content-Length` and while reading.
    pub max_body_bytes: usize,
}

impl Default for PublishConfig {
    fn default() -> Self {
        PublishConfig {
            enabled: false,
            tokens: Vec::new(),
            to: PublishTo::Redis,
            max_body_bytes: 1 << 20,
        }
    }
}

// Tokens never reach a log line, not even through `{:?}` of the config.
impl fmt::Debug for PublishConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublishConfig")
            .field("enabled", &self.enabled)
            .field("tokens", &format_args!("[{} redacted]", self.tokens.len()))
            .field("to", &self.to)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish()
    }
}

impl PublishConfig {
    /// The `--check` summary's tail: `""` while off.
    pub(super) fn summary(&self) -> String {
        if !self.enabled {
            return String::new();
        }
        let to = match self.to {
            PublishTo::Redis => "redis",
            PublishTo::Local => "local",
        };
        format!(
            ", POST /publish to {to} with {} publish token(s)",
            self.tokens.len()
        )
    }

    /// Tokens non-empty; a body limit; `to = "redis"` needs Redis; no
    /// tokenless publishing on a listener other hosts can reach; the path
    /// not taken by Socket.IO.
    pub(super) fn validate(
        &self,
        redis: &RedisConfig,
        socketio: &SocketIoConfig,
        listeners: &[SocketAddr],
    ) -> Checked {
        let mut warnings = Vec::new();
        if let Some(i) = self.tokens.iter().position(|t| t.is_empty()) {
            return Err(Invalid::new(
                format!("publish.tokens[{i}]"),
                "a token may not be empty",
            ));
        }
        if self.max_body_bytes == 0 {
            return Err(Invalid::new("publish.max_body_bytes", "must be above 0"));
        }
        if !self.enabled {
            return Ok(warnings);
        }
        if self.to == PublishTo::Redis && !redis.enabled() {
            return Err(Invalid::new(
                "publish.to",
                "\"redis\" needs redis.url; without Redis use to = \"local\"",
            ));
        }
        if self.tokens.is_empty() {
            if let Some(open) = listeners.iter().find(|a| !a.ip().is_loopback()) {
                return Err(Invalid::new(
                    "publish.enabled",
                    format!("publish.tokens is empty and listener {open} is not loopback: anyone reaching it could publish; set publish.tokens or bind loopback only"),
                ));
            }
            warnings.push(
                "POST /publish needs no token: publish.tokens is empty (allowed as every listener is loopback)".to_owned(),
            );
        }
        if socketio.serves(PUBLISH_PATH) {
            return Err(Invalid::new(
                "publish.enabled",
                format!("socketio.path {:?} takes {PUBLISH_PATH}", socketio.path),
            ));
        }
        Ok(warnings)
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    #[test]
    fn defaults_are_off_to_redis_one_mebibyte() {
        let c = parse("").unwrap().config.publish;
        assert_eq!(c, PublishConfig::default());
        assert!(!c.enabled && c.tokens.is_empty() && c.to == PublishTo::Redis);
        assert_eq!(c.max_body_bytes, 1_048_576);
        // Off, "redis" without Redis is no error: nothing would publish.
        parse("[redis]\nurl = \"\"\n").unwrap();
    }

    #[test]
    fn bad_values_are_located() {
        for (text, key) in [
            ("[publish]\ntokens = [\"a\", \"\"]\n", "publish.tokens[1]"),
            ("[publish]\nmax_body_bytes = 0\n", "publish.max_body_bytes"),
            ("[publish]\nto = \"nats\"\n", "publish.to"),
            ("[publish]\nenable = true\n", "publish.enable"),
            (
                "[redis]\nurl = \"\"\n[publish]\nenabled = true\ntokens = [\"t\"]\nto = \"redis\"\n",
                "publish.to",
            ),
            (
                "[[listeners]]\nbind = \"0.0.0.0:4456\"\n[publish]\nenabled = true\n",
                "publish.enabled",
            ),
            (
                "[socketio]\npath = \"/publish/\"\n[publish]\nenabled = true\ntokens = [\"t\"]\n",
                "publish.enabled",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
            assert!(e.line > 1, "located at the value: {e}");
        }
    }

    #[test]
    fn the_redis_default_without_redis_names_publish_to_even_when_to_is_implicit() {
        let e = parse("[redis]\nurl = \"\"\n[publish]\nenabled = true\n").unwrap_err();
        assert_eq!(e.key, "publish.to");
        assert!(e.message.contains("local"), "{e}");
    }

    #[test]
    fn tokenless_publishing_needs_every_listener_on_loopback() {
        let e = parse(
            "[[listeners]]\nbind = \"127.0.0.1:1\"\n[[listeners]]\nbind = \"[::]:2\"\n[publish]\nenabled = true\n",
        )
        .unwrap_err();
        assert!(e.message.contains("[::]:2"), "{e}");
        let l = parse(
            "[[listeners]]\nbind = \"127.0.0.1:1\"\n[[listeners]]\nbind = \"[::1]:2\"\n[publish]\nenabled = true\n",
        )
        .unwrap();
        assert!(
            l.warnings.iter().any(|w| w.contains("no token")),
            "{:?}",
            l.warnings
        );
        // No listeners configured: the default one is loopback.
        parse("[publish]\nenabled = true\n").unwrap();
        // With a token, any listener may serve it.
        let l = parse(
            "[[listeners]]\nbind = \"0.0.0.0:1\"\n[publish]\nenabled = true\ntokens = [\"t\"]\n",
        )
        .unwrap();
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        let l = parse(
            "[redis]\nurl = \"\"\n[publish]\nenabled = true\nto = \"local\"\ntokens = [\"t\"]\n",
        )
        .unwrap();
        assert_eq!(l.config.publish.to, PublishTo::Local);
    }

    #[test]
    fn debug_hides_tokens() {
        let c = PublishConfig {
            tokens: vec!["s3cret".into()],
            ..Default::default()
        };
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
