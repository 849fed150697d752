//! Who may connect: bearer tokens (constant-time) and allowed Origins.
//! Pure functions; [`transport::handshake`](crate::transport::handshake)
//! calls them in SPEC §9's refusal order.

use subtle::ConstantTimeEq;

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

/// SPEC §9: no `Origin` header is accepted; otherwise, with a non-empty
/// list, the Origin must equal an entry (scheme and host are
/// case-insensitive, as browsers serialise them in lower case anyway).
pub fn origin_allowed(origin: Option<&str>, allowed: &[String]) -> bool {
    match origin {
        None => true,
        Some(_) if allowed.is_empty() => true,
        Some(o) => allowed.iter().any(|a| a.eq_ignore_ascii_case(o.trim())),
    }
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
        assert!(origin_allowed(Some("https://any"), &[]));
    }
}
