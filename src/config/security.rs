//! `[security]`: which browser pages may open a connection.

use serde::Deserialize;

use super::{Checked, Invalid};

/// `[security]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Allowed `Origin` values (`scheme://host[:port]`, the port may be
    /// `*`; `"*"` = any Origin). Default: loopback pages only.
    pub allowed_origins: Vec<String>,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            allowed_origins: crate::auth::LOOPBACK_ORIGINS
                .iter()
                .map(|o| o.to_string())
                .collect(),
        }
    }
}

impl SecurityConfig {
    /// Origins are matched exactly, so one with a path could never match.
    pub(super) fn validate(&self) -> Checked {
        for (i, o) in self.allowed_origins.iter().enumerate() {
            if let Err(m) = check_origin(o) {
                return Err(Invalid::new(format!("security.allowed_origins[{i}]"), m));
            }
        }
        Ok(Vec::new())
    }
}

/// `"*"`, or `scheme://host[:port]` with nothing after the authority and a
/// port that may be `*`.
fn check_origin(origin: &str) -> Result<(), String> {
    if origin == "*" {
        return Ok(());
    }
    if origin.strip_suffix(":*").unwrap_or(origin).contains('*') {
        return Err(format!(
            "{origin:?}: only a whole entry \"*\" or a port \"*\" is a wildcard"
        ));
    }
    let Some((scheme, rest)) = origin.split_once("://") else {
        return Err(format!("{origin:?} is not scheme://host[:port]"));
    };
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return Err(format!("{origin:?} has an invalid scheme"));
    }
    if rest.is_empty() || rest.contains(['/', '?', '#', ' ']) {
        return Err(format!(
            "{origin:?} must be scheme://host[:port] with no path or trailing slash"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::parse;

    #[test]
    fn origin_with_a_path_is_refused() {
        let e = parse("[security]\nallowed_origins = [\"https://a.example/\"]\n").unwrap_err();
        assert_eq!(e.key, "security.allowed_origins[0]");
        parse("[security]\nallowed_origins = [\"https://a.example:8443\"]\n").unwrap();
    }

    #[test]
    fn wildcards_and_the_default() {
        for ok in ["*", "http://localhost:*", "https://[::1]:*"] {
            parse(&format!("[security]\nallowed_origins = [{ok:?}]\n")).unwrap();
        }
        for bad in ["https://*.example", "http://*:80", "**", "http://a:*/"] {
            let e = parse(&format!("[security]\nallowed_origins = [{bad:?}]\n")).unwrap_err();
            assert_eq!(e.key, "security.allowed_origins[0]", "{bad}");
        }
        let c = parse("").unwrap();
        assert_eq!(
            c.config.security.allowed_origins,
            crate::auth::LOOPBACK_ORIGINS
        );
    }
}
