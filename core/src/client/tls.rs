//! The device's TLS client configuration: rustls (ring), verifying the
//! hub's certificate against the public web roots, or, for a store that
//! runs its own hub, against the store's own CA only.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

/// Most certificates read from a CA file.
pub const CA_CERTIFICATES_MAX: usize = 64;

/// A rustls client configuration that trusts `ca_pem`'s certificates, or
/// Mozilla's root program when `ca_pem` is `None`.
pub fn client_config(ca_pem: Option<&[u8]>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_pem {
        Some(pem) => {
            let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
                .take(CA_CERTIFICATES_MAX)
                .collect::<Result<_, _>>()
                .map_err(|error| format!("hub CA certificate: {error}"))?;
            if certificates.is_empty() {
                return Err("hub CA: no certificate in the PEM".into());
            }
            for certificate in certificates {
                roots
                    .add(certificate)
                    .map_err(|error| format!("hub CA certificate: {error}"))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|error| format!("TLS configuration: {error}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        assert!(client_config(Some(b"not a certificate")).is_err());
        assert!(
            client_config(Some(
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
            ))
            .is_err()
        );
        assert!(client_config(None).is_ok());
    }
}
