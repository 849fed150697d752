//! `[socketio]`: Socket.IO v4 clients on the same listeners (SPEC §11).

use serde::Deserialize;

use super::{Checked, Invalid};

/// What a Socket.IO client that subscribed to nothing receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unsubscribed {
    /// Global events only, as a native client with no subscription.
    Global,
    /// Every event, as `io.emit` did before the relay (needs the firehose).
    All,
}

/// `[socketio]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SocketIoConfig {
    /// Serve Engine.IO / Socket.IO at `path` on every listener.
    pub enabled: bool,
    /// The Engine.IO path, as the client's `path` option (with a trailing `/`).
    pub path: String,
    /// Server ping interval; the first ping comes after it.
    pub ping_interval_ms: u64,
    /// A client silent for interval + this is dropped.
    pub ping_timeout_ms: u64,
    /// What a client with no subscription gets.
    pub unsubscribed: Unsubscribed,
}

impl Default for SocketIoConfig {
    fn default() -> Self {
        SocketIoConfig {
            enabled: true,
            path: "/socket.io/".into(),
            ping_interval_ms: 25_000,
            ping_timeout_ms: 20_000,
            unsubscribed: Unsubscribed::Global,
        }
    }
}

impl SocketIoConfig {
    /// The path must be an absolute path of its own, not one the relay
    /// already serves; the timers must run.
    pub(super) fn validate(&self, allow_firehose: bool) -> Checked {
        let p = &self.path;
        if !p.starts_with('/') || !p.ends_with('/') || p.len() < 3 {
            return Err(Invalid::new(
                "socketio.path",
                format!("{p:?} must start and end with '/', like \"/socket.io/\""),
            ));
        }
        if p.contains(['?', '#', ' ']) {
            return Err(Invalid::new(
                "socketio.path",
                format!("{p:?} may not contain '?', '#' or spaces"),
            ));
        }
        if ["/ws/", "/healthz/", "/metrics/"].contains(&p.as_str()) {
            return Err(Invalid::new(
                "socketio.path",
                format!("{p:?} is taken by the relay's own endpoints"),
            ));
        }
        for (key, v) in [
            ("socketio.ping_interval_ms", self.ping_interval_ms),
            ("socketio.ping_timeout_ms", self.ping_timeout_ms),
        ] {
            if v == 0 {
                return Err(Invalid::new(key, "must be above 0"));
            }
        }
        if self.enabled && self.unsubscribed == Unsubscribed::All && !allow_firehose {
            return Err(Invalid::new(
                "socketio.unsubscribed",
                "\"all\" sends every event, which needs routing.allow_firehose = true",
            ));
        }
        Ok(Vec::new())
    }

    /// True when `path` is the Engine.IO endpoint (with or without the
    /// trailing slash, as socket.io's own server accepts).
    pub fn serves(&self, path: &str) -> bool {
        self.enabled && (path == self.path || Some(path) == self.path.strip_suffix('/'))
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    #[test]
    fn defaults_and_bad_values_are_located() {
        let c = parse("").unwrap().config.socketio;
        assert_eq!(c, SocketIoConfig::default());
        assert!(c.serves("/socket.io/") && c.serves("/socket.io") && !c.serves("/socket.io/x"));
        for (text, key) in [
            ("[socketio]\npath = \"socket.io\"\n", "socketio.path"),
            ("[socketio]\npath = \"/ws/\"\n", "socketio.path"),
            (
                "[socketio]\nping_timeout_ms = 0\n",
                "socketio.ping_timeout_ms",
            ),
            (
                "[socketio]\nunsubscribed = \"some\"\n",
                "socketio.unsubscribed",
            ),
            (
                "[routing]\nallow_firehose = false\n[socketio]\nunsubscribed = \"all\"\n",
                "socketio.unsubscribed",
            ),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.key, key, "{text}: {e}");
            assert!(e.line > 1, "located at the value: {e}");
        }
        let off = parse("[socketio]\nenabled = false\n")
            .unwrap()
            .config
            .socketio;
        assert!(!off.serves("/socket.io/"));
    }
}
