//! Who may connect and what they may see: bearer tokens (static ones
//! compared in constant time, or JWTs with per-agent [`grants`], SPEC §13)
//! and allowed Origins. Pure functions;
//! [`transport::handshake`](crate::transport::handshake) calls them in SPEC
//! §9's refusal order and [`session::policy`](crate::session::policy)
//! applies the grants.

pub mod grants;
pub mod jwt;

use std::time::SystemTime;

use subtle::ConstantTimeEq;

use crate::config::AuthConfig;
pub use grants::{Denied, Grants};

/// What an accepted token (or no token, on an open relay) allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// What may be subscribed to.
    pub grants: Grants,
    /// When the token expires (a JWT's `exp`); `None` never.
    pub expires: Option<SystemTime>,
}

impl Access {
    /// Everything, for ever: an open relay or a static token.
    pub fn everything() -> Self {
        Access {
            grants: Grants::everything(),
            expires: None,
        }
    }
}

/// Why a token is not accepted (the client only sees 401 / `unauthorized`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// A token is needed and none came.
    #[error("missing token")]
    Missing,
    /// Not a static token, and no JWT key is configured.
    #[error("unknown token")]
    Unknown,
    /// Not a static token, and not a JWT that verifies.
    #[error("invalid token: {0}")]
    Jwt(#[from] jwt::JwtError),
}

/// Whether `[auth]` asks for a token at all: static tokens or a JWT key.
pub fn token_required(auth: &AuthConfig) -> bool {
    !auth.tokens.is_empty() || auth.jwt.enabled()
}

/// The one token decision of every path (handshakes, Socket.IO CONNECT,
/// reloads): an open relay admits everyone with every grant; else the
/// token must be a static one (everything) or a JWT that verifies now
/// (its grants, until its `exp`).
pub fn authenticate(token: Option<&str>, auth: &AuthConfig) -> Result<Access, AuthError> {
    if !token_required(auth) {
        return Ok(Access::everything());
    }
    let token = token.ok_or(AuthError::Missing)?;
    if token_valid(token, &auth.tokens) {
        return Ok(Access::everything());
    }
    // A configured key that did not load verifies nothing: fail closed.
    let verifier = auth.jwt.verifier().ok_or(AuthError::Unknown)?;
    let verified = verifier.verify(token)?;
    Ok(Access {
        grants: verified.grants,
        expires: Some(verified.expires),
    })
}

/// True when `candidate` equals one of `tokens`. Every configured token is
/// compared, each in constant time, so timing reveals neither which token
/// matched nor how much of one did.
pub fn token_valid(candidate: &str, tokens: &[String]) -> bool {
    let mut ok = subtle::Choice::from(0u8);
    for token in tokens {
        ok |= candidate.as_bytes().ct_eq(token.as_bytes());
    }
    ok.into()
}

/// Whether a connection holding `token` may stay under `tokens`
/// (no tokens configured: everyone may).
pub fn token_allowed(token: Option<&str>, tokens: &[String]) -> bool {
    tokens.is_empty() || token.is_some_and(|t| token_valid(t, tokens))
}

/// The token of an `Authorization: Bearer …` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, rest) = header.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// The default of `security.allowed_origins` (SPEC §3): pages served from
/// this machine, on any port. A website the user visits cannot open the
/// relay from their browser, though the browser runs on the relay's host.
pub const LOOPBACK_ORIGINS: [&str; 6] = [
    "http://localhost:*",
    "http://127.0.0.1:*",
    "http://[::1]:*",
    "https://localhost:*",
    "https://127.0.0.1:*",
    "https://[::1]:*",
];

/// SPEC §9: no `Origin` header is accepted (browsers always send one, CLI
/// clients do not); otherwise the Origin must match an entry of `allowed`
/// ([`origin_matches`]). An empty list admits no browser page.
pub fn origin_allowed(origin: Option<&str>, allowed: &[String]) -> bool {
    match origin {
        None => true,
        Some(o) => allowed.iter().any(|a| origin_matches(a, o.trim())),
    }
}

/// One `allowed_origins` entry against an Origin: `"*"` matches any; an
/// entry ending in `:*` matches its scheme and host with any port or none
/// (browsers leave out the scheme's default port); otherwise the two are
/// equal. Scheme and host are compared ignoring ASCII case, as browsers
/// serialise them in lower case anyway.
pub fn origin_matches(entry: &str, origin: &str) -> bool {
    if entry == "*" {
        return true;
    }
    let Some(base) = entry.strip_suffix(":*") else {
        return entry.eq_ignore_ascii_case(origin);
    };
    let same_base = origin
        .get(..base.len())
        .is_some_and(|o| o.eq_ignore_ascii_case(base));
    let Some(rest) = origin.get(base.len()..).filter(|_| same_base) else {
        return false;
    };
    rest.is_empty()
        || rest
            .strip_prefix(':')
            .is_some_and(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        let t = vec!["alpha".to_string(), "beta".to_string()];
        assert!(token_valid("beta", &t));
        assert!(!token_valid("bet", &t));
        assert!(!token_valid("", &t));
        assert!(token_allowed(None, &[]));
        assert!(!token_allowed(None, &t));
        assert!(token_allowed(Some("alpha"), &t));
    }

    #[test]
    fn authenticate_static_tokens_and_jwts() {
        use jsonwebtoken::{encode, EncodingKey, Header};
        let secret = "0123456789abcdef0123456789abcdef";
        let mut auth = AuthConfig::default();
        assert_eq!(authenticate(None, &auth), Ok(Access::everything()));
        assert_eq!(authenticate(Some("x"), &auth), Ok(Access::everything()));
        auth.tokens = vec!["static".into()];
        assert_eq!(authenticate(None, &auth), Err(AuthError::Missing));
        assert_eq!(authenticate(Some("x"), &auth), Err(AuthError::Unknown));
        auth.jwt.hs256_secret = secret.into();
        // Set but not loaded: nothing verifies.
        let exp = SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 60;
        let token = encode(
            &Header::default(),
            &serde_json::json!({"exp": exp, "grants": {"agentId": ["a"]}}),
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap();
        assert_eq!(authenticate(Some(&token), &auth), Err(AuthError::Unknown));
        auth.jwt.load().unwrap();
        let access = authenticate(Some(&token), &auth).unwrap();
        assert!(access.grants.allows("agentId", "a") && !access.grants.allows("agentId", "b"));
        assert!(access.expires.is_some());
        assert_eq!(
            authenticate(Some("static"), &auth),
            Ok(Access::everything())
        );
        assert!(matches!(
            authenticate(Some("garbage"), &auth),
            Err(AuthError::Jwt(jwt::JwtError::Malformed))
        ));
        auth.tokens.clear();
        assert!(token_required(&auth));
        assert_eq!(authenticate(None, &auth), Err(AuthError::Missing));
    }

    #[test]
    fn bearer_header() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer  abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }

    #[test]
    fn origins() {
        let allowed = vec![
            "https://studio.example".to_string(),
            "http://localhost:3000".to_string(),
        ];
        assert!(origin_allowed(None, &allowed));
        assert!(origin_allowed(Some("https://studio.example"), &allowed));
        assert!(origin_allowed(Some("HTTPS://Studio.Example"), &allowed));
        assert!(!origin_allowed(
            Some("https://studio.example:444"),
            &allowed
        ));
        assert!(!origin_allowed(Some("http://localhost:3001"), &allowed));
        assert!(
            !origin_allowed(Some("https://any"), &[]),
            "empty admits no page"
        );
        assert!(origin_allowed(None, &[]));
        assert!(origin_allowed(Some("https://any"), &["*".into()]));
        assert!(origin_allowed(Some("null"), &["*".into()]));
    }

    #[test]
    fn the_loopback_default_and_port_wildcards() {
        let d: Vec<String> = LOOPBACK_ORIGINS.iter().map(|s| s.to_string()).collect();
        for ok in [
            "http://localhost:5173",
            "http://localhost",
            "https://127.0.0.1:8443",
            "http://[::1]:3000",
            "http://[::1]",
            "HTTP://LOCALHOST:1",
        ] {
            assert!(origin_allowed(Some(ok), &d), "{ok}");
        }
        for bad in [
            "https://evil.example",
            "http://localhost.evil.example",
            "http://localhost.:80",
            "http://127.0.0.1.nip.io:80",
            "http://localhost:",
            "http://localhost:80x",
            "http://localhost:123456",
            "null",
            "ws://localhost:1",
            "",
        ] {
            assert!(!origin_allowed(Some(bad), &d), "{bad}");
        }
        // A multi-byte origin never slices inside a character.
        assert!(!origin_matches("http://é:*", "http://"));
        assert!(!origin_matches("http://a:*", "http://ééé"));
    }
}
