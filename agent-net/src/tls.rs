//! The TLS client configuration for every connection to the control plane
//! (HTTP and the realtime WebSocket alike): the system's trusted roots plus,
//! when `api_tls_ca_file` is set, the certificates of that PEM bundle.
//! TLS 1.2 is the minimum; the crypto provider is ring.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject as _;

/// Why the TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("api_tls_ca_file {}: could not read it: {reason}", path.display())]
    CaUnreadable { path: PathBuf, reason: String },
    #[error("api_tls_ca_file {} contains no PEM certificate (expected -----BEGIN CERTIFICATE-----)", path.display())]
    CaEmpty { path: PathBuf },
    #[error("api_tls_ca_file {}: certificate {index} is not usable: {reason}", path.display())]
    CaInvalid {
        path: PathBuf,
        index: usize,
        reason: String,
    },
    #[error(
        "no trusted root certificates: the system store is empty and no api_tls_ca_file is set (install ca-certificates)"
    )]
    NoRoots,
    #[error("TLS set-up failed: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Builds the shared client configuration.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    // Unreadable system certificates are skipped; an empty store is caught below.
    let native = rustls_native_certs::load_native_certs();
    let _ = roots.add_parsable_certificates(native.certs);
    if let Some(path) = ca_file {
        let certs = read_pem_bundle(path)?;
        for (index, cert) in certs.into_iter().enumerate() {
            roots.add(cert).map_err(|e| TlsError::CaInvalid {
                path: path.to_owned(),
                index: index + 1,
                reason: e.to_string(),
            })?;
        }
    }
    if roots.is_empty() {
        return Err(TlsError::NoRoots);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn read_pem_bundle(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|e| TlsError::CaUnreadable {
        path: path.to_owned(),
        reason: e.to_string(),
    })?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::CaUnreadable {
            path: path.to_owned(),
            reason: format!("not valid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::CaEmpty {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_certificates_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let err = client_config(Some(&path)).unwrap_err().to_string();
        assert!(
            err.contains("ca.pem") && err.contains("no PEM certificate"),
            "{err}"
        );
        let missing = dir.path().join("missing.pem");
        let err = client_config(Some(&missing)).unwrap_err().to_string();
        assert!(
            err.contains("missing.pem") && err.contains("could not read"),
            "{err}"
        );
    }

    #[test]
    fn a_garbled_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(
            &path,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        assert!(client_config(Some(&path)).is_err());
    }
}
