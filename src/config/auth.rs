//! `[auth]`: the bearer tokens a client may present, and `[auth.jwt]`, the
//! key that signs per-agent grants (SPEC §13). The key is loaded with the
//! file, so `--check` and a reload refuse one that would not verify.

use std::fmt;
use std::sync::Arc;

use serde::Deserialize;

use super::{Checked, Invalid};
use crate::auth::jwt::{KeyError, Verifier, MIN_SECRET_BYTES};

/// `[auth]`
#[derive(Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Accepted bearer tokens; with `jwt` unset too, empty means no token
    /// is needed.
    pub tokens: Vec<String>,
    /// `[auth.jwt]`
    pub jwt: JwtConfig,
}

// Tokens never reach a log line, not even through `{:?}` of the config.
impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("tokens", &format_args!("[{} redacted]", self.tokens.len()))
            .field("jwt", &self.jwt)
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
        self.jwt.validate()
    }
}

/// `[auth.jwt]`: HS256 with a shared secret, or a public key file.
#[derive(Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtConfig {
    /// HMAC secret (its UTF-8 bytes, at least 32); `""` = none.
    pub hs256_secret: String,
    /// PEM `PUBLIC KEY` file: RSA → RS256, P-256 → ES256, Ed25519 → EdDSA.
    pub public_key_file: String,
    /// Required `iss` when set.
    pub issuer: String,
    /// Required `aud` when set.
    pub audience: String,
    /// The loaded key; `None` until [`load`](JwtConfig::load) (or unset).
    #[serde(skip)]
    verifier: Option<Arc<Verifier>>,
}

// The secret never reaches a log line.
impl fmt::Debug for JwtConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtConfig")
            .field(
                "hs256_secret",
                &format_args!("[{} bytes redacted]", self.hs256_secret.len()),
            )
            .field("public_key_file", &self.public_key_file)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .finish()
    }
}

impl JwtConfig {
    /// A secret or a key file is set: tokens must come, and JWTs verify.
    pub fn enabled(&self) -> bool {
        !self.hs256_secret.is_empty() || !self.public_key_file.is_empty()
    }

    /// The loaded key, when `[auth.jwt]` is set and loaded.
    pub fn verifier(&self) -> Option<&Verifier> {
        self.verifier.as_deref()
    }

    /// `HS256`, `EdDSA`… for the summary line; `None` when off.
    pub fn algorithm(&self) -> Option<&'static str> {
        self.verifier().map(Verifier::algorithm)
    }

    /// Reads the secret or the key file into a verifier; config loading
    /// calls it after [`validate`](JwtConfig::validate), and again on each
    /// reload, which is how a SIGHUP re-reads the key.
    pub(crate) fn load(&mut self) -> Result<(), Invalid> {
        self.verifier = None;
        let (key, loaded) = if !self.hs256_secret.is_empty() {
            (
                "auth.jwt.hs256_secret",
                Verifier::hs256(self.hs256_secret.as_bytes(), &self.issuer, &self.audience),
            )
        } else if !self.public_key_file.is_empty() {
            (
                "auth.jwt.public_key_file",
                Verifier::public_key_file(&self.public_key_file, &self.issuer, &self.audience),
            )
        } else {
            return Ok(());
        };
        let verifier = loaded.map_err(|e: KeyError| Invalid::new(key, e.to_string()))?;
        self.verifier = Some(Arc::new(verifier));
        Ok(())
    }

    /// One key source, a long enough secret, and no issuer or audience
    /// without a key (they would check nothing).
    fn validate(&self) -> Checked {
        let (secret, file) = (
            !self.hs256_secret.is_empty(),
            !self.public_key_file.is_empty(),
        );
        if secret && file {
            return Err(Invalid::new(
                "auth.jwt.public_key_file",
                "hs256_secret and public_key_file are both set: set one",
            ));
        }
        if secret && self.hs256_secret.len() < MIN_SECRET_BYTES {
            return Err(Invalid::new(
                "auth.jwt.hs256_secret",
                KeyError::ShortSecret(self.hs256_secret.len()).to_string(),
            ));
        }
        for (name, value) in [("issuer", &self.issuer), ("audience", &self.audience)] {
            if !value.is_empty() && !secret && !file {
                return Err(Invalid::new(
                    format!("auth.jwt.{name}"),
                    "set hs256_secret or public_key_file too, or leave it empty",
                ));
            }
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
        let mut c = AuthConfig {
            tokens: vec!["s3cret".into()],
            ..Default::default()
        };
        c.jwt.hs256_secret = "hmac-secret-hmac-secret-hmac-secret".into();
        c.jwt.load().unwrap();
        let s = format!("{c:?}");
        assert!(!s.contains("s3cret") && !s.contains("hmac-secret"), "{s}");
    }

    const SECRET32: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn jwt_secret_rules() {
        let e = parse("[auth.jwt]\nhs256_secret = \"too short\"\n").unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("auth.jwt.hs256_secret", 2));
        assert!(e.message.contains("at least 32 bytes"), "{e}");
        assert!(
            !e.to_string().contains("too short"),
            "the secret is not echoed: {e}"
        );
        let l = parse(&format!("[auth.jwt]\nhs256_secret = \"{SECRET32}\"\n")).unwrap();
        assert_eq!(l.config.auth.jwt.algorithm(), Some("HS256"));
        assert!(crate::auth::token_required(&l.config.auth));
        let e = parse(&format!(
            "[auth.jwt]\nhs256_secret = \"{SECRET32}\"\npublic_key_file = \"/k.pem\"\n"
        ))
        .unwrap_err();
        assert_eq!(e.key, "auth.jwt.public_key_file");
        assert!(e.message.contains("both"), "{e}");
        let e = parse("[auth.jwt]\nissuer = \"studio\"\n").unwrap_err();
        assert_eq!(e.key, "auth.jwt.issuer");
        let e = parse("[auth.jwt]\nsecret = \"x\"\n").unwrap_err();
        assert!(e.message.contains("unknown field"), "{e}");
        let off = parse("").unwrap();
        assert_eq!(off.config.auth.jwt.algorithm(), None);
        assert!(!crate::auth::token_required(&off.config.auth));
    }

    #[test]
    fn jwt_key_file_is_loaded_and_located() {
        let e = parse("[auth.jwt]\npublic_key_file = \"/nonexistent/jwt.pem\"\n").unwrap_err();
        assert_eq!((e.key.as_str(), e.line), ("auth.jwt.public_key_file", 2));
        assert!(e.message.starts_with("/nonexistent/jwt.pem: "), "{e}");
        let path = std::env::temp_dir().join(format!(
            "studio-relay-jwt-cfg-{}-{}.pem",
            std::process::id(),
            crate::util::id::random_u64()
        ));
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        std::fs::write(&path, pair.public_key_pem()).unwrap();
        let text = format!(
            "[auth.jwt]\npublic_key_file = \"{}\"\nissuer = \"i\"\n",
            path.display()
        );
        let a = parse(&text).unwrap();
        assert_eq!(a.config.auth.jwt.algorithm(), Some("EdDSA"));
        assert_eq!(
            a.config,
            parse(&text).unwrap().config,
            "same key, same config"
        );
        // A reload that finds another key in the same file sees a change.
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
        std::fs::write(&path, other.public_key_pem()).unwrap();
        assert_ne!(a.config, parse(&text).unwrap().config);
        std::fs::write(&path, "not a key\n").unwrap();
        let e = parse(&text).unwrap_err();
        assert_eq!(e.key, "auth.jwt.public_key_file");
        std::fs::remove_file(&path).unwrap();
    }
}
