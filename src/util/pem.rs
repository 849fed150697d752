//! Certificates and keys from PEM files, with errors that name the file.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Every certificate in `path`; at least one.
pub fn certs(path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("{path}: {e}"))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{path}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{path}: no PEM certificate in it"));
    }
    Ok(certs)
}

/// The private key in `path` (PKCS#8, PKCS#1 or SEC1).
pub fn key(path: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| format!("{path}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_files_name_the_file() {
        let e = certs("/nonexistent/ca.pem").unwrap_err();
        assert!(e.starts_with("/nonexistent/ca.pem: "), "{e}");
        let path = std::env::temp_dir().join(format!("studio-relay-pem-{}", std::process::id()));
        std::fs::write(&path, "not pem\n").unwrap();
        let p = path.to_str().unwrap();
        assert!(certs(p).unwrap_err().contains("no PEM certificate"));
        assert!(key(p).is_err());
        std::fs::remove_file(&path).unwrap();
    }
}
