//! `wss://` for the load generator: a throwaway self-signed certificate for
//! the relay's TLS listener (`--gen-cert`), and the rustls client config
//! that trusts exactly that certificate (`--tls-ca`). Ring provider, no
//! system roots: the bench talks to one relay it started itself.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;

/// Writes `cert.pem` and `key.pem` into `dir`: a self-signed ECDSA P-256
/// certificate for `127.0.0.1`, `::1` and `localhost`.
pub fn gen_cert(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let names = vec![
        "127.0.0.1".to_owned(),
        "::1".to_owned(),
        "localhost".to_owned(),
    ];
    let cert = rcgen::generate_simple_self_signed(names).context("making the certificate")?;
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, cert.cert.pem()).with_context(|| format!("writing {}", c.display()))?;
    std::fs::write(&k, cert.signing_key.serialize_pem())
        .with_context(|| format!("writing {}", k.display()))?;
    Ok(())
}

/// A connector that trusts only the certificates in the PEM file `ca`.
pub fn connector(ca: &Path) -> Result<TlsConnector> {
    let mut roots = RootCertStore::empty();
    for cert in
        CertificateDer::pem_file_iter(ca).with_context(|| format!("reading {}", ca.display()))?
    {
        roots
            .add(cert.with_context(|| format!("parsing {}", ca.display()))?)
            .context("adding the certificate to the trust store")?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The name to verify for a relay at `ip` (the certificate carries it).
pub fn server_name(ip: IpAddr) -> ServerName<'static> {
    ServerName::IpAddress(ip.into())
}
