//! `[history]`: the ring of recent events kept for resumes (SPEC §12).

use serde::Deserialize;

use super::{Checked, Invalid};

/// `[history]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// Events kept for replay; 0 turns history (and offsets) off.
    pub size: usize,
    /// Bytes of kept events (name, payload and routing keys).
    pub max_bytes: usize,
    /// Events older than this are dropped; also how long a Socket.IO
    /// session may be away and still be recovered.
    pub ttl_ms: u64,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            size: 0,
            max_bytes: 64 << 20,
            ttl_ms: 120_000,
        }
    }
}

impl HistoryConfig {
    /// True when events get offsets and are kept.
    pub fn enabled(&self) -> bool {
        self.size > 0
    }

    /// With history on, a zero bound would keep nothing while claiming to.
    pub(super) fn validate(&self) -> Checked {
        if self.enabled() {
            if self.max_bytes == 0 {
                return Err(Invalid::new(
                    "history.max_bytes",
                    "must be above 0 while size is set",
                ));
            }
            if self.ttl_ms == 0 {
                return Err(Invalid::new(
                    "history.ttl_ms",
                    "must be above 0 while size is set",
                ));
            }
        }
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;

    #[test]
    fn off_by_default_and_zero_bounds_refused_when_on() {
        let l = parse("").unwrap();
        assert!(!l.config.history.enabled());
        parse("[history]\nsize = 10\n").unwrap();
        for (text, key) in [
            ("[history]\nsize = 10\nmax_bytes = 0\n", "history.max_bytes"),
            ("[history]\nsize = 10\nttl_ms = 0\n", "history.ttl_ms"),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!((e.key.as_str(), e.line), (key, 3), "{e}");
        }
        parse("[history]\nmax_bytes = 0\n").unwrap();
        let e = parse("[history]\nsize = -1\n").unwrap_err();
        assert_eq!(e.key, "history.size");
    }
}
