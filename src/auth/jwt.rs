//! Signed per-agent grants (SPEC §13): the key of `[auth.jwt]` and the
//! verification of a token against it.
//!
//! The accepted algorithm is pinned by the key, never read from the token:
//! HS256 for `hs256_secret`; RS256, ES256 or EdDSA for `public_key_file`,
//! whichever the key is. So `alg: none` (not an algorithm jsonwebtoken
//! knows) and algorithm confusion (a token HMAC-signed with the public
//! key's bytes) both fail. `exp` is required; `nbf`, `iss` and `aud` are
//! checked (the last two when configured); there is no leeway, so a token
//! is refused from its `exp` second on, the instant its connection is
//! closed. Nothing here logs or returns a token or key material.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::SubjectPublicKeyInfoDer;
use serde::Deserialize;

use super::grants::{Grants, GrantsError};

/// The shortest `hs256_secret`, in bytes: RFC 7518 §3.2 wants a key at
/// least as long as the hash output (256 bits).
pub const MIN_SECRET_BYTES: usize = 32;

/// ring's RS256 verifier refuses smaller moduli at every token; saying so
/// at load time beats refusing every client.
const MIN_RSA_BITS: usize = 2048;

/// Leeway on `exp` and `nbf`, in seconds. None: expiry closes connections
/// at `exp` exactly, so a handshake at that second must fail too; issuer
/// and relay are expected to keep their clocks in sync (NTP).
const LEEWAY_SECS: u64 = 0;

/// DER of the SPKI algorithm OIDs this relay reads.
const OID_RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// Why `[auth.jwt]`'s key cannot be used. Messages name the file, never
/// its contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The secret is shorter than [`MIN_SECRET_BYTES`].
    #[error("must be at least {MIN_SECRET_BYTES} bytes (it is {0})")]
    ShortSecret(usize),
    /// The key file cannot be read.
    #[error("{path}: {why}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        why: String,
    },
    /// The file holds no `PUBLIC KEY` PEM block, or one that is not DER.
    #[error("{path}: {why}")]
    Pem {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// A key of a type or size SPEC §13 does not accept.
    #[error("{path}: {why}")]
    Unsupported {
        /// The file.
        path: String,
        /// Which type or size it is.
        why: String,
    },
}

/// Why a presented token is not accepted. For debug logs and metrics; the
/// client is only told 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Its `exp` has passed.
    #[error("token expired")]
    Expired,
    /// Its `nbf` is still to come.
    #[error("token not yet valid")]
    NotYetValid,
    /// `iss` missing or not the configured issuer.
    #[error("wrong or missing issuer")]
    Issuer,
    /// `aud` missing or not the configured audience (or present while none is configured).
    #[error("wrong or missing audience")]
    Audience,
    /// The signature does not verify with the configured key.
    #[error("bad signature")]
    Signature,
    /// `alg` is not the configured key's algorithm.
    #[error("algorithm not accepted")]
    Algorithm,
    /// Not a JWT, or claims of the wrong shape (`exp` missing, not an integer…).
    #[error("malformed token")]
    Malformed,
    /// The `grants` claim cannot be read.
    #[error("{0}")]
    Grants(#[from] GrantsError),
}

/// What a verified token allows, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Its grants.
    pub grants: Grants,
    /// Its `exp`.
    pub expires: SystemTime,
}

/// The claims the relay reads. `exp` and `nbf` are parsed here as well as
/// by jsonwebtoken, which ignores an `nbf` it cannot parse.
#[derive(Deserialize)]
struct Claims {
    exp: u64,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(default)]
    grants: Option<serde_json::Value>,
    #[serde(default)]
    all: Option<serde_json::Value>,
}

/// A loaded `[auth.jwt]` key with its validation rules.
pub struct Verifier {
    key: DecodingKey,
    validation: Validation,
    alg: Algorithm,
    /// The secret or the key file's bytes: a reload compares them to tell
    /// whether the key changed.
    material: Vec<u8>,
}

impl PartialEq for Verifier {
    fn eq(&self, other: &Self) -> bool {
        self.alg == other.alg
            && self.material == other.material
            && self.validation.iss == other.validation.iss
            && self.validation.aud == other.validation.aud
    }
}

// Key material never reaches a log line.
impl fmt::Debug for Verifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Verifier")
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl Verifier {
    /// HS256 with `secret`, at least [`MIN_SECRET_BYTES`] long.
    pub fn hs256(secret: &[u8], issuer: &str, audience: &str) -> Result<Self, KeyError> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err(KeyError::ShortSecret(secret.len()));
        }
        Ok(Verifier::new(
            DecodingKey::from_secret(secret),
            Algorithm::HS256,
            secret.to_vec(),
            issuer,
            audience,
        ))
    }

    /// The public key in the PEM file at `path` (a `PUBLIC KEY` block):
    /// RSA (≥ 2048 bits) → RS256, P-256 → ES256, Ed25519 → EdDSA.
    pub fn public_key_file(path: &str, issuer: &str, audience: &str) -> Result<Self, KeyError> {
        let bytes = std::fs::read(path).map_err(|e| KeyError::Read {
            path: path.to_owned(),
            why: e.to_string(),
        })?;
        let spki = SubjectPublicKeyInfoDer::from_pem_slice(&bytes).map_err(|e| KeyError::Pem {
            path: path.to_owned(),
            why: format!("no usable PUBLIC KEY PEM block ({e})"),
        })?;
        let unsupported = |why: String| KeyError::Unsupported {
            path: path.to_owned(),
            why,
        };
        let (alg, key) = public_key(spki.as_ref()).map_err(unsupported)?;
        Ok(Verifier::new(key, alg, bytes, issuer, audience))
    }

    fn new(
        key: DecodingKey,
        alg: Algorithm,
        material: Vec<u8>,
        issuer: &str,
        audience: &str,
    ) -> Self {
        let mut validation = Validation::new(alg);
        validation.leeway = LEEWAY_SECS;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        if !issuer.is_empty() {
            validation.set_issuer(&[issuer]);
            validation.required_spec_claims.insert("iss".to_owned());
        }
        if audience.is_empty() {
            // jsonwebtoken would refuse every token carrying an `aud`;
            // with none configured, `aud` is not checked (SPEC §13).
            validation.validate_aud = false;
        } else {
            validation.set_audience(&[audience]);
            validation.required_spec_claims.insert("aud".to_owned());
        }
        Verifier {
            key,
            validation,
            alg,
            material,
        }
    }

    /// The one algorithm accepted.
    pub fn algorithm(&self) -> &'static str {
        match self.alg {
            Algorithm::HS256 => "HS256",
            Algorithm::RS256 => "RS256",
            Algorithm::ES256 => "ES256",
            Algorithm::EdDSA => "EdDSA",
            _ => "other",
        }
    }

    /// Verifies `token` now.
    pub fn verify(&self, token: &str) -> Result<Verified, JwtError> {
        self.verify_at(token, SystemTime::now())
    }

    /// Verifies `token` as of `now` for the relay's own checks (jsonwebtoken
    /// uses the clock for its own).
    fn verify_at(&self, token: &str, now: SystemTime) -> Result<Verified, JwtError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| map_error(e.kind()))?;
        let claims = data.claims;
        let expires = UNIX_EPOCH
            .checked_add(Duration::from_secs(claims.exp))
            .ok_or(JwtError::Malformed)?;
        // jsonwebtoken counts in whole seconds and lets the `exp` second
        // pass; the connection would be closed at once, so refuse it here.
        if expires <= now {
            return Err(JwtError::Expired);
        }
        if let Some(nbf) = claims.nbf {
            let from = UNIX_EPOCH.checked_add(Duration::from_secs(nbf));
            if from.is_none_or(|t| t > now) {
                return Err(JwtError::NotYetValid);
            }
        }
        let grants = Grants::from_claims(claims.grants.as_ref(), claims.all.as_ref())?;
        Ok(Verified { grants, expires })
    }
}

fn map_error(kind: &ErrorKind) -> JwtError {
    match kind {
        ErrorKind::ExpiredSignature => JwtError::Expired,
        ErrorKind::ImmatureSignature => JwtError::NotYetValid,
        ErrorKind::InvalidIssuer => JwtError::Issuer,
        ErrorKind::InvalidAudience => JwtError::Audience,
        ErrorKind::MissingRequiredClaim(c) if c == "iss" => JwtError::Issuer,
        ErrorKind::MissingRequiredClaim(c) if c == "aud" => JwtError::Audience,
        ErrorKind::InvalidSignature => JwtError::Signature,
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => JwtError::Algorithm,
        // Json errors can quote claim values: they are not passed on.
        _ => JwtError::Malformed,
    }
}

/// The algorithm and jsonwebtoken key of a DER SubjectPublicKeyInfo.
fn public_key(spki: &[u8]) -> Result<(Algorithm, DecodingKey), String> {
    let bad = || "not a valid SubjectPublicKeyInfo".to_owned();
    let (body, _) = der(spki, 0x30).ok_or_else(bad)?;
    let (alg_id, rest) = der(body, 0x30).ok_or_else(bad)?;
    let (bits, _) = der(rest, 0x03).ok_or_else(bad)?;
    // A BIT STRING starts with its count of unused bits: keys have none.
    let key = match bits.split_first() {
        Some((0, key)) => key,
        _ => return Err(bad()),
    };
    let (oid, params) = der(alg_id, 0x06).ok_or_else(bad)?;
    if oid == OID_RSA {
        let bits = rsa_modulus_bits(key).ok_or_else(bad)?;
        if bits < MIN_RSA_BITS {
            return Err(format!(
                "RSA key of {bits} bits; RS256 needs at least {MIN_RSA_BITS}"
            ));
        }
        // jsonwebtoken (ring) takes the PKCS#1 RSAPublicKey the BIT STRING holds.
        Ok((Algorithm::RS256, DecodingKey::from_rsa_der(key)))
    } else if oid == OID_EC {
        match der(params, 0x06) {
            Some((curve, _)) if curve == OID_P256 => {}
            _ => return Err("EC key on a curve other than P-256; ES256 needs P-256".into()),
        }
        // An uncompressed point, as ring verifies with.
        if key.len() != 65 || key[0] != 0x04 {
            return Err("P-256 key is not an uncompressed point".into());
        }
        Ok((Algorithm::ES256, DecodingKey::from_ec_der(key)))
    } else if oid == OID_ED25519 {
        if key.len() != 32 {
            return Err(bad());
        }
        Ok((Algorithm::EdDSA, DecodingKey::from_ed_der(key)))
    } else {
        Err("unsupported key type; expected RSA (RS256), P-256 (ES256) or Ed25519 (EdDSA)".into())
    }
}

/// The bit length of the modulus of a PKCS#1 RSAPublicKey.
fn rsa_modulus_bits(key: &[u8]) -> Option<usize> {
    let (seq, _) = der(key, 0x30)?;
    let (n, rest) = der(seq, 0x02)?;
    der(rest, 0x02)?;
    let n = match n.iter().position(|b| *b != 0) {
        Some(i) => &n[i..],
        None => return Some(0),
    };
    Some(n.len() * 8 - n[0].leading_zeros() as usize)
}

/// One DER element with tag `tag` at the start of `input`: its contents
/// and what follows it. Definite lengths up to 4 bytes, which covers any
/// key file.
fn der(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, rest) = input.split_first()?;
    if t != tag {
        return None;
    }
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn hs(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap()
    }

    #[test]
    fn short_secrets_are_refused() {
        assert_eq!(
            Verifier::hs256(b"short", "", "").unwrap_err(),
            KeyError::ShortSecret(5)
        );
        assert!(Verifier::hs256(SECRET, "", "").is_ok());
    }

    #[test]
    fn hs256_claims_are_checked() {
        let v = Verifier::hs256(SECRET, "", "").unwrap();
        let ok = v
            .verify(&hs(
                json!({"exp": now() + 60, "grants": {"agentId": ["a"]}}),
            ))
            .unwrap();
        assert!(ok.grants.allows("agentId", "a") && !ok.grants.allows("agentId", "b"));
        assert_eq!(ok.expires, UNIX_EPOCH + Duration::from_secs(now() + 60));
        // An aud with none configured is not checked.
        assert!(v
            .verify(&hs(json!({"exp": now() + 60, "aud": "x"})))
            .is_ok());
        for (claims, err) in [
            (json!({"exp": now() - 1}), JwtError::Expired),
            (json!({"exp": now()}), JwtError::Expired),
            (json!({"grants": {}}), JwtError::Malformed),
            (json!({"exp": "soon"}), JwtError::Malformed),
            (
                json!({"exp": now() + 60, "nbf": now() + 30}),
                JwtError::NotYetValid,
            ),
            (json!({"exp": now() + 60, "nbf": 1.5}), JwtError::Malformed),
            (
                json!({"exp": now() + 60, "grants": []}),
                JwtError::Grants(GrantsError::NotAnObject),
            ),
        ] {
            assert_eq!(v.verify(&hs(claims.clone())), Err(err), "{claims}");
        }
        assert_eq!(v.verify("garbage"), Err(JwtError::Malformed));
        let other = Verifier::hs256(b"another secret, also 32 bytes long", "", "").unwrap();
        assert_eq!(
            other.verify(&hs(json!({"exp": now() + 60}))),
            Err(JwtError::Signature)
        );
    }

    #[test]
    fn issuer_and_audience_when_configured() {
        let v = Verifier::hs256(SECRET, "studio", "relay").unwrap();
        let exp = now() + 60;
        assert!(v
            .verify(&hs(
                json!({"exp": exp, "iss": "studio", "aud": ["x", "relay"]})
            ))
            .is_ok());
        for (claims, err) in [
            (json!({"exp": exp, "aud": "relay"}), JwtError::Issuer),
            (
                json!({"exp": exp, "iss": "evil", "aud": "relay"}),
                JwtError::Issuer,
            ),
            (json!({"exp": exp, "iss": "studio"}), JwtError::Audience),
            (
                json!({"exp": exp, "iss": "studio", "aud": "other"}),
                JwtError::Audience,
            ),
        ] {
            assert_eq!(v.verify(&hs(claims.clone())), Err(err), "{claims}");
        }
    }

    #[test]
    fn alg_none_and_other_algorithms_are_refused() {
        let v = Verifier::hs256(SECRET, "", "").unwrap();
        let b64 = |s: &str| {
            let mut out = String::new();
            crate::util::base64::encode_into(&mut out, s.as_bytes());
            out.trim_end_matches('=')
                .replace('+', "-")
                .replace('/', "_")
        };
        let payload = b64(&format!(r#"{{"exp":{}}}"#, now() + 60));
        let none = format!("{}.{payload}.", b64(r#"{"alg":"none","typ":"JWT"}"#));
        assert!(v.verify(&none).is_err());
        let hs384 = encode(
            &Header::new(Algorithm::HS384),
            &json!({"exp": now() + 60}),
            &EncodingKey::from_secret(SECRET),
        )
        .unwrap();
        assert_eq!(v.verify(&hs384), Err(JwtError::Algorithm));
    }

    #[test]
    fn public_keys_are_detected_and_pinned() {
        let dir = std::env::temp_dir();
        for (alg, expected) in [
            (&rcgen::PKCS_ED25519, Algorithm::EdDSA),
            (&rcgen::PKCS_ECDSA_P256_SHA256, Algorithm::ES256),
        ] {
            let pair = rcgen::KeyPair::generate_for(alg).unwrap();
            let path = dir.join(format!(
                "studio-relay-jwt-{}-{}.pem",
                std::process::id(),
                crate::util::id::random_u64()
            ));
            std::fs::write(&path, pair.public_key_pem()).unwrap();
            let p = path.to_str().unwrap();
            let v = Verifier::public_key_file(p, "", "").unwrap();
            assert_eq!(v.alg, expected);
            let key = match expected {
                Algorithm::EdDSA => EncodingKey::from_ed_der(&pair.serialize_der()),
                _ => EncodingKey::from_ec_der(&pair.serialize_der()),
            };
            let good = encode(&Header::new(expected), &json!({"exp": now() + 60}), &key).unwrap();
            assert!(v.verify(&good).is_ok());
            // Algorithm confusion: HMAC with the public key file as secret.
            let confused = encode(
                &Header::new(Algorithm::HS256),
                &json!({"exp": now() + 60}),
                &EncodingKey::from_secret(pair.public_key_pem().as_bytes()),
            )
            .unwrap();
            assert_eq!(v.verify(&confused), Err(JwtError::Algorithm));
            // A private key file is not a public key.
            std::fs::write(&path, pair.serialize_pem()).unwrap();
            assert!(matches!(
                Verifier::public_key_file(p, "", ""),
                Err(KeyError::Pem { .. })
            ));
            std::fs::remove_file(&path).unwrap();
        }
        assert!(matches!(
            Verifier::public_key_file("/nonexistent/key.pem", "", ""),
            Err(KeyError::Read { .. })
        ));
    }

    #[test]
    fn rsa_and_unsupported_keys() {
        // `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048`, public half.
        let rsa2048 = der_of(RSA_2048_PUB);
        let (alg, _) = public_key(&rsa2048).unwrap();
        assert_eq!(alg, Algorithm::RS256);
        let rsa1024 = der_of(RSA_1024_PUB);
        assert!(public_key(&rsa1024).err().unwrap().contains("1024 bits"));
        let p384 = der_of(P384_PUB);
        assert!(public_key(&p384).err().unwrap().contains("P-256"));
        assert!(public_key(&[0x30, 0x03, 0x30, 0x01]).is_err());
        assert!(public_key(&[]).is_err());
    }

    fn der_of(pem: &str) -> Vec<u8> {
        SubjectPublicKeyInfoDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .as_ref()
            .to_vec()
    }

    const RSA_2048_PUB: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAuqYoHAJDHJCwiySgebdG\n\
CEscuDJpDfIKnpA9WFeaePPWDwPZjRQqTFxt+jq/9SZWjdhVDXAr/WXXSAv2a3Vl\n\
YcXo2IbE4zLi+yrpwkBAR88iDnnoops5np+YNEdOMBdCp4e5Em7OLbuylIkvkJJp\n\
5/p0q3PAv2iXrOEXTo8ftQUYgYkpE/ADFhsSb6GjyLbWZ8tYURpQTpGCimwrtq3Z\n\
K+ETm0IyOkonljl6iYu/oNOuCb4wze7Yfdqwz9juezUOuF5euEFK8jZpqFwXZj9u\n\
pcjyN9yIrVyMVAq4uZtSDadVxxh/o8qKflp0LAXGN+lM9BPESmbEh+dP5gVrrXrF\n\
SwIDAQAB\n\
-----END PUBLIC KEY-----\n\
";
    const RSA_1024_PUB: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIGfMA0GCSqGSIb3DQEBAQUAA4GNADCBiQKBgQC35p0Z9Q/CTQjBRyO2vNNX0rlS\n\
bPtWFgy6DjDyGPvfn09B/U/pwSV3mg2cd7ZvU8jZVpN7w1qGjRuQx0xsdd66j4xm\n\
LKMCdjo1F1OxO1bZxYCCd6eWKCLC8pOXjFNZoMLPbK86xSDCczzFpOhEh8QL5Qqm\n\
SYsnHW+qszWmzqraQwIDAQAB\n\
-----END PUBLIC KEY-----\n\
";
    const P384_PUB: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAEiWLh0tdRbYIb6K8A2PcQOuB+v+eyx9vu\n\
ZDLiwtSn+V5nslZoJ4Nm3p2kYuFOs1K6rj5TU5UTEPi6fab8MWq3c2STKNDdH3Kr\n\
oKYC9jIf6KexOlCOid/0u1wIXJlTVZZN\n\
-----END PUBLIC KEY-----\n\
";
}
