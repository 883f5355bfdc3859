//! The one HTTP client the connector uses (targets and token requests): reqwest with rustls,
//! the ring provider keybus already uses and the platform's roots (plus `ca_file`), optionally
//! a client certificate (mTLS toward a target); no redirects.

use std::sync::Arc;
use std::time::Duration;

/// Why the HTTP client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientBuildError {
    #[error("TLS set-up: {0}")]
    Tls(String),
    #[error("cannot read {path}: {err}")]
    File { path: String, err: std::io::Error },
    #[error("HTTP client: {0}")]
    Build(#[from] reqwest::Error),
}

/// A client certificate chain and its key, both PEM, as read from files.
pub struct ClientIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
}

/// Platform roots plus the PEM certificates of `extra_ca`, with ring: for HTTPS and AMQPS.
pub fn tls_config(extra_ca: Option<&[u8]>) -> Result<rustls::ClientConfig, ClientBuildError> {
    tls_config_with(extra_ca, None)
}

/// [`tls_config`], presenting `identity` when the server asks for a client certificate
/// (mTLS toward a target).
pub fn tls_config_with(
    extra_ca: Option<&[u8]>,
    identity: Option<&ClientIdentity>,
) -> Result<rustls::ClientConfig, ClientBuildError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

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
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ClientBuildError::Tls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier));
    let Some(id) = identity else {
        return Ok(builder.with_no_client_auth());
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&id.cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| ClientBuildError::Tls(format!("client_cert: {e}")))?;
    if chain.is_empty() {
        return Err(ClientBuildError::Tls(
            "client_cert holds no certificate".into(),
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&id.key_pem)
        .map_err(|e| ClientBuildError::Tls(format!("client_key: {e}")))?;
    builder
        .with_client_auth_cert(chain, key)
        .map_err(|e| ClientBuildError::Tls(format!("client certificate: {e}")))
}

/// A client whose requests give up after `timeout` (a connect after at most 10 s), trusting
/// the platform's roots and the PEM certificates of `extra_ca`, presenting `identity` to
/// servers that ask for a client certificate.
pub fn build(
    timeout: Duration,
    extra_ca: Option<&[u8]>,
    identity: Option<&ClientIdentity>,
) -> Result<reqwest::Client, ClientBuildError> {
    Ok(reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("keybus-connect/", env!("CARGO_PKG_VERSION")))
        // Always a preconfigured TLS backend: without one reqwest would look for a
        // process-wide rustls provider, even for plain http, and panic when there is none.
        .tls_backend_preconfigured(tls_config_with(extra_ca, identity)?)
        .build()?)
}
