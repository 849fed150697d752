//! TLS on a listener (SPEC §14): the rustls server config built from a
//! listener's `tls_cert` / `tls_key` (ring provider, TLS 1.3 and 1.2, ALPN
//! `http/1.1`), and the swappable slot a SIGHUP replaces it in.
//!
//! The slot is a `RwLock<Arc<ServerConfig>>`: each accepted connection
//! clones the `Arc` once (a read lock held for a pointer copy, never across
//! an await), so a reload affects only handshakes that start after it and
//! never waits for one in progress.

use std::sync::{Arc, RwLock};

use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use crate::util::pem;

/// The only application protocol served: hyper runs HTTP/1.1 here, and a
/// WebSocket upgrade needs it (RFC 8441's HTTP/2 upgrade is not supported).
const ALPN_HTTP11: &[u8] = b"http/1.1";

/// Why a certificate/key pair cannot serve. Every message names the file;
/// none carries key material (rustls' errors describe, never quote, keys).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TlsError {
    /// The certificate chain file is missing, unreadable or holds no
    /// certificate.
    #[error("{0}")]
    Cert(String),
    /// The key file is missing, unreadable or holds no usable private key.
    #[error("{0}")]
    Key(String),
    /// The key is not the one of the chain's first (leaf) certificate, or
    /// rustls refused the pair for another reason.
    #[error("{key}: {why} (certificate {cert})")]
    Mismatch {
        /// The key file.
        key: String,
        /// The certificate file.
        cert: String,
        /// What rustls said.
        why: String,
    },
}

/// Loads `cert` (PEM chain, leaf first) and `key` (PEM PKCS#8, PKCS#1 or
/// SEC1) into a server config, checking that the key matches the leaf.
pub fn server_config(cert: &str, key: &str) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = pem::certs(cert).map_err(TlsError::Cert)?;
    let private = pem::key(key).map_err(TlsError::Key)?;
    let mismatch = |e: rustls::Error| TlsError::Mismatch {
        key: key.to_owned(),
        cert: cert.to_owned(),
        why: match e {
            rustls::Error::InconsistentKeys(_) => {
                "private key does not match the certificate".to_owned()
            }
            other => other.to_string(),
        },
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(mismatch)?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(mismatch)?;
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    Ok(Arc::new(config))
}

/// A TLS listener's current certificate, replaced by reloads.
#[derive(Debug)]
pub struct TlsListener {
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsListener {
    /// Loads the pair for a listener.
    pub fn load(cert: &str, key: &str) -> Result<Self, TlsError> {
        Ok(TlsListener {
            current: RwLock::new(server_config(cert, key)?),
        })
    }

    /// An acceptor with the pair in force now, for one connection.
    pub fn acceptor(&self) -> TlsAcceptor {
        // A poisoned lock still holds a complete Arc: writers only assign.
        let config = self
            .current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        TlsAcceptor::from(config)
    }

    /// Re-reads the pair; on error the one in force is kept.
    pub fn reload(&self, cert: &str, key: &str) -> Result<(), TlsError> {
        let next = server_config(cert, key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Files in a fresh directory, removed on drop.
    struct Dir(std::path::PathBuf);

    impl Dir {
        fn new() -> Self {
            let dir = std::env::temp_dir().join(format!(
                "studio-relay-tls-unit-{}-{}",
                std::process::id(),
                crate::util::id::random_u64()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            Dir(dir)
        }

        /// Writes a self-signed pair as `<name>.pem` / `<name>.key`.
        fn pair(&self, name: &str) -> (String, String) {
            let key = rcgen::KeyPair::generate().unwrap();
            let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
                .unwrap()
                .self_signed(&key)
                .unwrap();
            let cert_path = self.0.join(format!("{name}.pem"));
            let key_path = self.0.join(format!("{name}.key"));
            std::fs::write(&cert_path, cert.pem()).unwrap();
            std::fs::write(&key_path, key.serialize_pem()).unwrap();
            (
                cert_path.to_str().unwrap().to_owned(),
                key_path.to_str().unwrap().to_owned(),
            )
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn a_matching_pair_loads_with_http11_alpn() {
        let dir = Dir::new();
        let (cert, key) = dir.pair("a");
        let config = server_config(&cert, &key).unwrap();
        assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
    }

    #[test]
    fn missing_files_and_a_foreign_key_are_named() {
        let dir = Dir::new();
        let (cert, key) = dir.pair("a");
        let (_, other_key) = dir.pair("b");
        match server_config("/nonexistent/cert.pem", &key) {
            Err(TlsError::Cert(m)) => assert!(m.starts_with("/nonexistent/cert.pem: "), "{m}"),
            other => panic!("{other:?}"),
        }
        match server_config(&cert, "/nonexistent/key.pem") {
            Err(TlsError::Key(m)) => assert!(m.starts_with("/nonexistent/key.pem: "), "{m}"),
            other => panic!("{other:?}"),
        }
        let e = server_config(&cert, &other_key).unwrap_err();
        assert!(matches!(e, TlsError::Mismatch { .. }), "{e:?}");
        let text = e.to_string();
        assert!(
            text.starts_with(&format!("{other_key}: private key does not match")),
            "{text}"
        );
        // The key file may be a certificate by mistake.
        assert!(matches!(server_config(&cert, &cert), Err(TlsError::Key(_))));
    }

    #[test]
    fn reload_swaps_the_pair_and_a_bad_one_keeps_the_old() {
        let dir = Dir::new();
        let (cert_a, key_a) = dir.pair("a");
        let (cert_b, key_b) = dir.pair("b");
        let slot = TlsListener::load(&cert_a, &key_a).unwrap();
        let first = slot.acceptor().config().clone();
        slot.reload(&cert_b, &key_b).unwrap();
        let second = slot.acceptor().config().clone();
        assert!(!Arc::ptr_eq(&first, &second));
        assert!(slot.reload(&cert_b, &key_a).is_err());
        assert!(Arc::ptr_eq(&second, slot.acceptor().config()));
    }
}
