//! `[auth]`: the bearer tokens a client may present.

use std::fmt;

use serde::Deserialize;

use super::{Checked, Invalid};

/// `[auth]`
#[derive(Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Accepted bearer tokens; empty means no token is needed.
    pub tokens: Vec<String>,
}

// Tokens never reach a log line, not even through `{:?}` of the config.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("tokens", &format_args!("[{} redacted]", self.tokens.len()))
            .finish()
    }
}

impl AuthConfig {
    /// An empty token would let an empty `?token=` in.
    pub(super) fn validate(&self) -> Checked {
        if let Some(i) = self.tokens.iter().position(|t| t.is_empty()) {
            return Err(Invalid::new(
                format!("auth.tokens[{i}]"),
                "a token may not be empty",
            ));
        }
        Ok(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    #[test]
    fn empty_token_is_located() {
        let e = parse("[auth]\ntokens = [\"\"]\n").unwrap_err();
        assert_eq!(e.key, "auth.tokens[0]");
    }

    #[test]
    fn debug_hides_tokens() {
        assert!(!format!(
            "{:?}",
            AuthConfig {
                tokens: vec!["s3cret".into()]
            }
        )
        .contains("s3cret"));
    }
}
