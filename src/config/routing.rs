//! `[routing]`: which payload fields clients may filter on.

use serde::Deserialize;

use super::{Checked, Invalid};

/// Keys of client frames and query parameters that a routing field may not shadow.
const RESERVED_FIELDS: &[&str] = &["type", "all", "token", "event", "data", "since", "offset"];

/// `[routing]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Top-level payload fields clients may filter on.
    pub fields: Vec<String>,
    /// Whether a client may ask for every event.
    pub allow_firehose: bool,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        RoutingConfig {
            fields: vec!["agentId".into(), "sessionId".into()],
            allow_firehose: true,
        }
    }
}

impl RoutingConfig {
    /// The fields as shared strings, the form the decoders take.
    pub fn shared_fields(&self) -> Vec<std::sync::Arc<str>> {
        self.fields
            .iter()
            .map(|f| std::sync::Arc::from(f.as_str()))
            .collect()
    }

    /// Field names must be usable as query parameters and frame keys.
    pub(super) fn validate(&self) -> Checked {
        for (i, f) in self.fields.iter().enumerate() {
            let key = || format!("routing.fields[{i}]");
            if f.is_empty() {
                return Err(Invalid::new(key(), "may not be empty"));
            }
            if RESERVED_FIELDS.contains(&f.as_str()) {
                return Err(Invalid::new(
                    key(),
                    format!("{f:?} is reserved by the protocol"),
                ));
            }
            if self.fields[..i].contains(f) {
                return Err(Invalid::new(key(), format!("{f:?} is listed twice")));
            }
        }
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;

    #[test]
    fn reserved_field_is_located_in_the_array() {
        let e = parse("[routing]\nfields = [\"agentId\", \"type\"]\n").unwrap_err();
        assert_eq!(e.key, "routing.fields[1]");
        assert_eq!((e.line, e.column), (2, 22));
    }

    #[test]
    fn empty_and_repeated_fields_are_refused() {
        let e = parse("[routing]\nfields = [\"\"]\n").unwrap_err();
        assert_eq!(e.key, "routing.fields[0]");
        let e = parse("[routing]\nfields = [\"a\", \"a\"]\n").unwrap_err();
        assert_eq!(e.key, "routing.fields[1]");
        assert!(e.message.contains("twice"), "{e}");
    }
}
