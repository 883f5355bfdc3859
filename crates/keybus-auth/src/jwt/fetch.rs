//! Fetching an issuer's keys: OIDC discovery (unless `jwks_uri` is set), then the JWKS, over
//! HTTPS (or plain HTTP to a loopback address), 5 s, 1 MiB, no redirects. The TLS client
//! trusts the platform's roots (on Linux: the system store, or `SSL_CERT_FILE`/`SSL_CERT_DIR`
//! when set) plus the issuer's `ca_file` as an extra CA, verified with ring.

use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::Jwk;
use serde_json::Value;

use super::keys::{MIN_CACHE_MS, parse_jwks};
use crate::policy::IssuerConfig;

/// Largest discovery or JWKS document we read.
const MAX_FETCH: usize = 1024 * 1024;

/// Discovery (unless `jwks_uri` is set), then the JWKS. Returns the keys and a cache age.
pub(super) async fn fetch_keys(entry: &IssuerConfig) -> Result<(Vec<Jwk>, i64), String> {
    let issuer = entry.issuer.as_deref().ok_or("no issuer")?;
    let ca = match &entry.ca_file {
        Some(p) => Some(std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => None,
    };
    let jwks_uri = match &entry.jwks_uri {
        Some(u) => u.clone(),
        None => {
            let url = format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            );
            let (doc, _) = http_get(&url, ca.as_deref()).await?;
            let doc: Value = serde_json::from_slice(&doc).map_err(|e| format!("{url}: {e}"))?;
            if doc.get("issuer").and_then(Value::as_str) != Some(issuer) {
                return Err(format!("{url}: the document's issuer is not '{issuer}'"));
            }
            doc.get("jwks_uri")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{url}: no jwks_uri"))?
                .to_string()
        }
    };
    let (body, max_age) = http_get(&jwks_uri, ca.as_deref()).await?;
    Ok((parse_jwks(&body)?, max_age.unwrap_or(MIN_CACHE_MS)))
}

/// Is `host` (as in a URL, IPv6 in brackets or not) a loopback name or address?
fn loopback(host: &str) -> bool {
    matches!(
        host.trim_start_matches('[').trim_end_matches(']'),
        "127.0.0.1" | "localhost" | "::1"
    )
}

/// The TLS client configuration for key fetches: ring (keybus's one crypto provider), the
/// platform's roots plus the issuer's `ca_file` certificates.
fn tls_config(extra_ca: Option<&[u8]>) -> Result<rustls::ClientConfig, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let extra: Vec<CertificateDer<'static>> = match extra_ca {
        Some(pem) => CertificateDer::pem_slice_iter(pem)
            .collect::<Result<_, _>>()
            .map_err(|e| format!("ca_file: {e}"))?,
        None => Vec::new(),
    };
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
            .map_err(|e| format!("TLS roots: {e}"))?;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// GET a small document: https (or http to a loopback host), 5 s, 1 MiB, no redirects.
/// Returns the body and the `Cache-Control: max-age` in ms.
pub async fn http_get(
    url: &str,
    extra_ca: Option<&[u8]>,
) -> Result<(Vec<u8>, Option<i64>), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{url}: {e}"))?;
    let host = parsed.host_str().ok_or_else(|| format!("{url}: no host"))?;
    let https = match parsed.scheme() {
        "https" => true,
        "http" if loopback(host) => false,
        _ => {
            return Err(format!(
                "{url}: only https (or http to a loopback address) is allowed"
            ));
        }
    };
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(5))
        .user_agent(concat!("keybus/", env!("CARGO_PKG_VERSION")));
    // Always a preconfigured TLS backend: without one reqwest would look for a process-wide
    // rustls provider, even for plain http, and panic when there is none.
    builder = builder.tls_backend_preconfigured(tls_config(extra_ca)?);
    if !https {
        builder = builder.no_proxy();
    }
    let client = builder.build().map_err(|e| format!("{url}: {e}"))?;
    let work = async {
        let mut resp = client
            .get(parsed.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !resp.status().is_success() {
            return Err(format!("{url}: HTTP {}", resp.status()));
        }
        if resp.content_length().is_some_and(|n| n > MAX_FETCH as u64) {
            return Err(format!("{url}: larger than {MAX_FETCH} bytes"));
        }
        let max_age = resp
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.split(',')
                    .find_map(|d| d.trim().strip_prefix("max-age=")?.parse::<i64>().ok())
            })
            .map(|s| s.saturating_mul(1000));
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| format!("{url}: {e}"))? {
            if body.len() + chunk.len() > MAX_FETCH {
                return Err(format!("{url}: larger than {MAX_FETCH} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok((body, max_age))
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .map_err(|_| format!("{url}: timed out"))?
}
