//! TLS to Redis with a private CA and/or a client certificate
//! (`redis.tls_ca`, `tls_cert`, `tls_key`): a rustls client config with the
//! ring provider, as fred itself uses. Without them, `rediss://` uses
//! fred's default (the system's roots).

use std::sync::Arc;

use fred::types::config::{TlsConfig, TlsConnector};
use rustls::{ClientConfig, RootCertStore};

use crate::config::RedisConfig;
use crate::util::pem;

/// The TLS settings for `redis`, or `None` to keep fred's default.
pub fn config(redis: &RedisConfig) -> Result<Option<TlsConfig>, String> {
    if redis.tls_ca.is_empty() && redis.tls_cert.is_empty() {
        return Ok(None);
    }
    let mut roots = RootCertStore::empty();
    if redis.tls_ca.is_empty() {
        // A client certificate alone: the server is checked against the
        // system's roots, as fred does for a plain rediss:// URL.
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    } else {
        for cert in pem::certs(&redis.tls_ca)? {
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", redis.tls_ca))?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = if redis.tls_cert.is_empty() {
        builder.with_no_client_auth()
    } else {
        let chain = pem::certs(&redis.tls_cert)?;
        let key = pem::key(&redis.tls_key)?;
        builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| format!("{}: {e}", redis.tls_key))?
    };
    Ok(Some(TlsConnector::from(config).into()))
}
