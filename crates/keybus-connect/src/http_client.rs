//! The one HTTP client the connector uses (targets and token requests): reqwest with rustls,
//! the ring provider keybus already uses and the platform's roots; no redirects.

use std::sync::Arc;
use std::time::Duration;

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("TLS set-up: {0}")]
    Tls(String),
    #[error("cannot read ca_file {path}: {err}")]
    CaFile { path: String, err: std::io::Error },
    #[error("HTTP client: {0}")]
    Build(#[from] reqwest::Error),
}

/// Platform roots plus the PEM certificates of `extra_ca`, with ring: for HTTPS and AMQPS.
pub fn tls_config(extra_ca: Option<&[u8]>) -> Result<rustls::ClientConfig, ClientBuildError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let extra: Vec<CertificateDer<'static>> = match extra_ca {
        Some(pem) => CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| ClientBuildError::Tls(format!("ca_file: {e}")))?,
        None => Vec::new(),
    };
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
            .map_err(|e| ClientBuildError::Tls(format!("platform roots: {e}")))?;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientBuildError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// A client whose requests give up after `timeout` (a connect after at most 10 s), trusting
/// the platform's roots and the PEM certificates of `extra_ca`.
pub fn build(
    timeout: Duration,
    extra_ca: Option<&[u8]>,
) -> Result<reqwest::Client, ClientBuildError> {
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("keybus-connect/", env!("CARGO_PKG_VERSION")))
        // Always a preconfigured TLS backend: without one reqwest would look for a
        // process-wide rustls provider, even for plain http, and panic when there is none.
        .tls_backend_preconfigured(tls_config(extra_ca)?)
        .build()?)
}
