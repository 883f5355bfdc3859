//! JSON Web Token validation (identity reference §5.1) for tokens from keybus's own token
//! service and from the OIDC issuers the policy configures.
//!
//! Validation is synchronous and never waits on the network: keys come from a per-issuer cache
//! filled from a JWKS file, a JWKS URL or OIDC discovery by background tasks. An unknown `kid`
//! asks for one refresh (at most one per minute and issuer) and the token is refused.
//! Signatures are checked by `jsonwebtoken`; everything around them (size, header, algorithm
//! allow-list, issuer and key selection, times against the injected clock) is checked here.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use super::policy::{IssuerConfig, IssuerKind, Policy, Subject};
use super::{CredentialKind, Principal, token_sha256};

/// Largest token we look at (Entra tokens with group claims can be large).
pub const MAX_JWT_LEN: usize = 16 * 1024;
/// Refresh a JWKS at most this often when an unknown `kid` shows up.
const REFRESH_EVERY_MS: i64 = 60_000;
/// Cache lifetime bounds for fetched key sets.
const MIN_CACHE_MS: i64 = 5 * 60_000;
const MAX_CACHE_MS: i64 = 24 * 3_600_000;
/// Largest discovery or JWKS document we read.
const MAX_FETCH: usize = 1024 * 1024;

/// Why a JWT was refused; the text is what the CBS reply carries (all status 401).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum JwtError {
    #[error("InvalidToken: {0}")]
    Invalid(String),
    #[error("InvalidIssuer: The token issuer '{0}' is not trusted.")]
    Issuer(String),
    #[error("InvalidSignature: The token has an invalid signature.")]
    Signature,
    #[error("InvalidSignature: The token's signing key '{0}' is not known (yet).")]
    UnknownKey(String),
    #[error("InvalidAudience: The token audience is not valid for this resource.")]
    Audience,
    #[error("ExpiredToken: The token is expired. Expiration time: '{0}'")]
    Expired(String),
}

fn invalid(s: impl Into<String>) -> JwtError {
    JwtError::Invalid(s.into())
}

/// Claims keybus reads; everything else is ignored.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Claims {
    pub iss: Option<String>,
    pub sub: Option<String>,
    pub oid: Option<String>,
    pub tid: Option<String>,
    pub appid: Option<String>,
    pub azp: Option<String>,
    pub exp: Option<f64>,
    pub nbf: Option<f64>,
    pub iat: Option<f64>,
    pub jti: Option<String>,
    pub uti: Option<String>,
    pub nonce: Option<String>,
}

/// A token that passed: its claims, the issuer entry that vouched for it, its key id.
#[derive(Debug, Clone)]
pub struct Verified {
    pub claims: Claims,
    pub issuer_id: String,
    pub kid: Option<String>,
    pub expires_at_ms: i64,
    /// The issuer's clock skew (ms): the token is accepted until `expires_at_ms` + this.
    pub leeway_ms: i64,
}

/// One issuer's cached keys.
#[derive(Default)]
struct KeyCache {
    keys: Vec<Jwk>,
    /// When the keys were last loaded (ms), and until when they count as fresh.
    loaded_at_ms: i64,
    fresh_until_ms: i64,
    /// Last refresh attempt (ms), for rate limiting; and whether one is running.
    last_try_ms: i64,
    refreshing: bool,
}

/// Validates tokens against the configured issuers.
#[derive(Default)]
pub struct Validator {
    caches: Arc<RwLock<HashMap<String, Arc<Mutex<KeyCache>>>>>,
}

fn now_ms_system() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn b64url(s: &str) -> Result<Vec<u8>, JwtError> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| invalid("a token segment is not base64url"))
}

fn utc(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

impl Validator {
    pub fn new() -> Self {
        Self::default()
    }

    /// (Re)build the issuer table from a policy: key files are read now, URLs fetched in
    /// the background.
    pub fn configure(&self, policy: &Policy) {
        let mut map = HashMap::new();
        for iss in &policy.file.issuers {
            if iss.kind != IssuerKind::Oidc {
                continue;
            }
            let cache = Arc::new(Mutex::new(KeyCache::default()));
            map.insert(iss.id.clone(), cache.clone());
            refresh(iss.clone(), cache, true);
        }
        match self.caches.write() {
            Ok(mut g) => *g = map,
            Err(p) => *p.into_inner() = map,
        }
    }

    fn cache(&self, id: &str) -> Option<Arc<Mutex<KeyCache>>> {
        self.caches.read().ok()?.get(id).cloned()
    }

    /// Validate a token presented to the broker (audience: Service Bus): the principal and
    /// until when it is accepted (`exp` plus the issuer's leeway), in ms.
    pub fn validate(
        &self,
        token: &str,
        sts: &super::sts::TokenService,
        policy: &Policy,
        now_ms: i64,
    ) -> Result<(Principal, i64), JwtError> {
        let v = self.verify(token, sts, policy, now_ms, None)?;
        let c = &v.claims;
        let subject = Subject {
            issuer_id: Some(v.issuer_id.clone()),
            sub: c.sub.clone(),
            oid: c.oid.clone(),
            tid: c.tid.clone(),
            client_id: c.appid.clone().or_else(|| c.azp.clone()),
            spiffe: None,
        };
        let principal = Principal {
            key: format!(
                "jwt:{}/{}",
                v.issuer_id,
                c.sub.as_deref().or(c.oid.as_deref()).unwrap_or("?")
            ),
            kind: CredentialKind::Jwt,
            subject,
            sas: None,
            iss: c.iss.clone(),
            kid: v.kid.clone(),
            jti: c.jti.clone().or_else(|| c.uti.clone()),
            token_sha256: Some(token_sha256(token)),
        };
        Ok((principal, v.expires_at_ms.saturating_add(v.leeway_ms)))
    }

    /// The whole pipeline. `audiences`: accept these instead of the issuer's own (the token
    /// service checks federated credentials with their audiences).
    pub fn verify(
        &self,
        token: &str,
        sts: &super::sts::TokenService,
        policy: &Policy,
        now_ms: i64,
        audiences: Option<&[String]>,
    ) -> Result<Verified, JwtError> {
        if token.len() > MAX_JWT_LEN {
            return Err(invalid(format!(
                "the token is larger than {MAX_JWT_LEN} bytes"
            )));
        }
        let parts: Vec<&str> = token.split('.').collect();
        let [h, p, s] = parts.as_slice() else {
            return Err(invalid("a JWT has three dot-separated parts"));
        };
        if s.is_empty() {
            return Err(invalid("unsigned tokens are not accepted"));
        }
        let header: Value = serde_json::from_slice(&b64url(h)?)
            .map_err(|_| invalid("the token header is not JSON"))?;
        let alg_name = header
            .get("alg")
            .and_then(Value::as_str)
            .ok_or_else(|| invalid("the token header has no alg"))?
            .to_string();
        if alg_name.eq_ignore_ascii_case("none") || alg_name.starts_with("HS") {
            return Err(invalid(format!(
                "the algorithm '{alg_name}' is not accepted"
            )));
        }
        if header.get("crit").is_some() {
            return Err(invalid("critical header parameters are not supported"));
        }
        let kid = header
            .get("kid")
            .and_then(Value::as_str)
            .map(str::to_string);
        let claims: Claims = serde_json::from_slice(&b64url(p)?)
            .map_err(|_| invalid("the token claims are not a JSON object of the expected types"))?;
        let iss = claims
            .iss
            .clone()
            .ok_or_else(|| invalid("the token has no iss"))?;

        // Which issuer entry vouches for it, and its keys.
        let (entry, keys): (IssuerConfig, Vec<Jwk>) = if let Some(b) = policy
            .builtin_issuer()
            .filter(|b| builtin_iss_ok(b, &iss, &policy.file.sts.tenant))
        {
            (b.clone(), sts.public_jwks())
        } else {
            let entry = policy
                .file
                .issuers
                .iter()
                .find(|i| i.kind == IssuerKind::Oidc && i.issuer.as_deref() == Some(iss.as_str()))
                .ok_or_else(|| JwtError::Issuer(iss.clone()))?
                .clone();
            let cache = self
                .cache(&entry.id)
                .ok_or_else(|| JwtError::Issuer(iss.clone()))?;
            let keys = {
                let c = cache.lock().map_err(|_| invalid("key cache unavailable"))?;
                let stale = c.fresh_until_ms < now_ms_system();
                let lost = c.loaded_at_ms + MAX_CACHE_MS < now_ms_system() && c.loaded_at_ms > 0;
                let keys = if lost { Vec::new() } else { c.keys.clone() };
                drop(c);
                if stale {
                    refresh(entry.clone(), cache.clone(), false);
                }
                keys
            };
            (entry, keys)
        };
        let allowed: Vec<String> = if entry.kind == IssuerKind::Builtin {
            vec!["ES256".into()]
        } else {
            entry.algorithms.clone()
        };
        if !allowed.iter().any(|a| a == &alg_name) {
            return Err(invalid(format!(
                "the algorithm '{alg_name}' is not accepted for this issuer"
            )));
        }
        let alg: Algorithm = alg_name
            .parse()
            .map_err(|_| invalid(format!("unknown algorithm '{alg_name}'")))?;

        let usable = |k: &&Jwk| {
            !matches!(k.algorithm, AlgorithmParameters::OctetKey(_))
                && k.common
                    .public_key_use
                    .as_ref()
                    .is_none_or(|u| *u == PublicKeyUse::Signature)
                && k.common
                    .key_algorithm
                    .is_none_or(|ka| ka.to_string() == alg_name)
        };
        let candidates: Vec<&Jwk> = keys.iter().filter(usable).collect();
        let key = match &kid {
            Some(kid) => candidates
                .iter()
                .find(|k| k.common.key_id.as_deref() == Some(kid.as_str()))
                .copied(),
            None if candidates.len() == 1 => candidates.first().copied(),
            None => None,
        };
        let Some(key) = key else {
            if let Some(cache) = self.cache(&entry.id) {
                refresh(entry.clone(), cache, false);
            }
            return Err(JwtError::UnknownKey(kid.unwrap_or_else(|| "(none)".into())));
        };
        let decoding = DecodingKey::from_jwk(key).map_err(|_| JwtError::Signature)?;
        if decoding.family() != alg.family() {
            return Err(invalid("the key does not fit the token's algorithm"));
        }
        // `jsonwebtoken` checks the signature, that exp/iss/aud are present, iss, and nbf
        // against the system clock. exp, nbf and iat are checked again below against the
        // broker's clock; aud (string or array, per-issuer or federated lists) too.
        let leeway_s = entry.leeway_secs.min(300);
        let mut validation = Validation::new(alg);
        validation.leeway = leeway_s;
        validation.validate_exp = false;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.set_issuer(&[iss.as_str()]);
        jsonwebtoken::decode::<Value>(token, &decoding, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::InvalidSignature => JwtError::Signature,
                K::MissingRequiredClaim(c) => invalid(format!("the token has no {c}")),
                K::InvalidAlgorithm => invalid("the key does not fit the token's algorithm"),
                K::ImmatureSignature => invalid("the token is not valid yet (nbf)"),
                other => invalid(format!("{other:?}")),
            }
        })?;

        // Audience: a string or an array; one of the accepted values.
        let payload: Value =
            serde_json::from_slice(&b64url(p)?).map_err(|_| invalid("bad claims"))?;
        let accepted = audiences.unwrap_or(&entry.audiences);
        let aud_ok = match payload.get("aud") {
            Some(Value::String(a)) => accepted.iter().any(|x| x == a),
            Some(Value::Array(xs)) => xs
                .iter()
                .filter_map(Value::as_str)
                .any(|a| accepted.iter().any(|x| x == a)),
            _ => false,
        };
        if !aud_ok {
            return Err(JwtError::Audience);
        }
        if claims.nonce.is_some() {
            return Err(invalid("ID tokens are not access tokens"));
        }
        // Times, against the broker's clock.
        let leeway = leeway_s as i64 * 1000;
        let exp_ms = claims
            .exp
            .map(|e| (e * 1000.0) as i64)
            .ok_or_else(|| invalid("the token has no exp"))?;
        if exp_ms + leeway <= now_ms {
            return Err(JwtError::Expired(utc(exp_ms)));
        }
        if let Some(nbf) = claims.nbf
            && (nbf * 1000.0) as i64 > now_ms + leeway
        {
            return Err(invalid("the token is not valid yet (nbf)"));
        }
        if let Some(iat) = claims.iat
            && (iat * 1000.0) as i64 > now_ms + leeway
        {
            return Err(invalid("the token was issued in the future (iat)"));
        }
        if let Some(max) = &entry.max_token_lifetime
            && let Ok(max) = super::policy::parse_duration("max_token_lifetime", max)
        {
            let start = claims.iat.or(claims.nbf).map(|t| (t * 1000.0) as i64);
            match start {
                Some(s) if exp_ms - s <= max.as_millis() as i64 => {}
                _ => {
                    return Err(invalid(format!(
                        "the token lives longer than this issuer allows ({})",
                        humantime::format_duration(max)
                    )));
                }
            }
        }
        if !entry.tenants.is_empty()
            && !claims
                .tid
                .as_ref()
                .is_some_and(|t| entry.tenants.iter().any(|x| x.eq_ignore_ascii_case(t)))
        {
            return Err(invalid("the token's tenant is not allowed"));
        }
        Ok(Verified {
            claims,
            issuer_id: entry.id,
            kid,
            expires_at_ms: exp_ms,
            leeway_ms: leeway,
        })
    }
}

/// Is `iss` our own token service's (`https://<host>/<tenant>/v2.0`, or the configured one)?
fn builtin_iss_ok(entry: &IssuerConfig, iss: &str, tenant: &str) -> bool {
    match &entry.issuer {
        Some(exact) => exact == iss,
        None => {
            let Some(rest) = iss.strip_prefix("https://") else {
                return false;
            };
            let Some((_host, path)) = rest.split_once('/') else {
                return false;
            };
            path.eq_ignore_ascii_case(&format!("{tenant}/v2.0"))
        }
    }
}

/// Load an issuer's keys: from its file now, or from the network in the background. `initial`
/// ignores the rate limit.
fn refresh(entry: IssuerConfig, cache: Arc<Mutex<KeyCache>>, initial: bool) {
    let now = now_ms_system();
    {
        let Ok(mut c) = cache.lock() else { return };
        // `refreshing` guards one fetch at a time; a fetch ends within its timeout, so a flag
        // older than that belongs to a task that died and is ignored.
        let in_flight = c.refreshing && now - c.last_try_ms < 2 * REFRESH_EVERY_MS;
        if in_flight || (!initial && now - c.last_try_ms < REFRESH_EVERY_MS) {
            return;
        }
        c.last_try_ms = now;
        if entry.jwks_file.is_some() && initial {
            // Read at configure time, so the keys are there before the first token.
            load_file(&entry, &mut c);
            return;
        }
        c.refreshing = true;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        // No runtime (tests, tools): a file is read now, URLs wait for the next configure.
        if let Ok(mut c) = cache.lock() {
            c.refreshing = false;
            if entry.jwks_file.is_some() {
                load_file(&entry, &mut c);
            }
        }
        return;
    };
    if entry.jwks_file.is_some() {
        // Never block the validating (connection) task on the file system.
        rt.spawn_blocking(move || {
            if let Ok(mut c) = cache.lock() {
                c.refreshing = false;
                load_file(&entry, &mut c);
            }
        });
        return;
    }
    rt.spawn(async move {
        let result = fetch_keys(&entry).await;
        let Ok(mut c) = cache.lock() else { return };
        c.refreshing = false;
        match result {
            Ok((keys, max_age_ms)) => {
                c.keys = keys;
                let now = now_ms_system();
                c.loaded_at_ms = now;
                c.fresh_until_ms = now + max_age_ms.clamp(MIN_CACHE_MS, MAX_CACHE_MS);
                tracing::info!(issuer = %entry.id, keys = c.keys.len(), "issuer keys loaded");
            }
            Err(e) => {
                tracing::warn!(issuer = %entry.id, error = %e, "cannot fetch the issuer's keys; keeping the last good ones")
            }
        }
    });
}

/// Read an issuer's `jwks_file` into its cache (keeping the old keys if that fails).
fn load_file(entry: &IssuerConfig, c: &mut KeyCache) {
    let Some(path) = &entry.jwks_file else { return };
    match std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|b| parse_jwks(&b))
    {
        Ok(keys) => {
            let now = now_ms_system();
            c.keys = keys;
            c.loaded_at_ms = now;
            c.fresh_until_ms = now + MIN_CACHE_MS;
        }
        Err(e) => {
            tracing::warn!(issuer = %entry.id, path = %path.display(), error = %e, "cannot read the issuer's JWKS file; keeping the last good keys")
        }
    }
}

fn parse_jwks(bytes: &[u8]) -> Result<Vec<Jwk>, String> {
    // Parse key by key: one unsupported key must not hide the others.
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let keys = v
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("no `keys` array")?;
    let set = JwkSet {
        keys: keys
            .iter()
            .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
            .filter(|k| !matches!(k.algorithm, AlgorithmParameters::OctetKey(_)))
            .collect(),
    };
    Ok(set.keys)
}

/// Discovery (unless `jwks_uri` is set), then the JWKS. Returns the keys and a cache age.
async fn fetch_keys(entry: &IssuerConfig) -> Result<(Vec<Jwk>, i64), String> {
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

#[cfg(test)]
mod tests {
    use super::super::policy::PolicyFile;
    use super::super::sts::TokenService;
    use super::*;

    const NOW: i64 = 1_767_225_600_000;
    const ISS: &str = "https://issuer.example";

    /// A policy with an OIDC issuer whose key is `ext`'s, and the builtin service.
    fn setup() -> (
        Validator,
        TokenService,
        TokenService,
        Policy,
        std::path::PathBuf,
    ) {
        let dir = std::env::temp_dir().join(format!(
            "keybus-jwt-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let _ = std::fs::create_dir_all(&dir);
        let ext = TokenService::in_memory();
        let jwks = dir.join("jwks.json");
        let keys = serde_json::json!({ "keys": ext.public_jwks() });
        let _ = std::fs::write(&jwks, keys.to_string());
        let text = format!(
            r#"
            [[issuers]]
            id = "ext"
            kind = "oidc"
            issuer = "{ISS}"
            jwks_file = "{}"
            algorithms = ["ES256"]
            max_token_lifetime = "2h"
            [[principals]]
            id = "app"
            [[sts.managed_identities]]
            principal = "app"
            client_id = "c-1"
            identity_header = "0123456789abcdef0123"
            "#,
            jwks.display()
        );
        let file: PolicyFile = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        let policy = Policy::from_file(file, text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let v = Validator::new();
        v.configure(&policy);
        (v, TokenService::in_memory(), ext, policy, dir)
    }

    fn claims(extra: serde_json::Value) -> serde_json::Value {
        let mut c = serde_json::json!({
            "iss": ISS, "aud": "https://servicebus.azure.net", "sub": "s-1",
            "iat": NOW / 1000, "nbf": NOW / 1000, "exp": NOW / 1000 + 600,
        });
        if let (Some(c), Some(e)) = (c.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                if v.is_null() {
                    c.remove(k);
                } else {
                    c.insert(k.clone(), v.clone());
                }
            }
        }
        c
    }

    fn b64j(v: &serde_json::Value) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
    }

    #[test]
    fn external_tokens() {
        let (v, sts, ext, policy, dir) = setup();
        let sign = |c: serde_json::Value| ext.sign(&c).unwrap_or_default();
        let check = |t: &str| v.validate(t, &sts, &policy, NOW);
        let (p, exp) =
            check(&sign(claims(serde_json::json!({})))).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.subject.issuer_id.as_deref(), Some("ext"));
        assert_eq!(p.subject.sub.as_deref(), Some("s-1"));
        assert_eq!(exp, NOW + 600_000 + 30_000, "exp plus the default leeway");
        assert!(p.token_sha256.is_some());
        // Audience as an array.
        let arr = sign(claims(
            serde_json::json!({"aud": ["x", "https://servicebus.azure.net/"]}),
        ));
        assert!(check(&arr).is_ok());
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (serde_json::json!({"exp": NOW / 1000 - 120}), "ExpiredToken"),
            (
                serde_json::json!({"nbf": NOW / 1000 + 3600}),
                "not valid yet",
            ),
            (serde_json::json!({"iat": NOW / 1000 + 3600}), "future"),
            (
                serde_json::json!({"aud": "https://management.azure.com"}),
                "InvalidAudience",
            ),
            (
                serde_json::json!({"iss": "https://evil.example"}),
                "InvalidIssuer",
            ),
            (serde_json::json!({"exp": null}), "exp"),
            (serde_json::json!({"aud": null}), "aud"),
            (
                serde_json::json!({"iat": NOW / 1000 - 86_400, "nbf": null}),
                "longer",
            ),
            (serde_json::json!({"nonce": "n"}), "ID tokens"),
        ];
        for (extra, want) in cases {
            let e = check(&sign(claims(extra.clone())))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(e.contains(want), "{extra}: {e}");
        }
        // Expiry: accepted up to the default 30 s leeway after exp, refused past it (it used
        // to be 60 s), with the real reason.
        let exp = NOW / 1000 - 600;
        let t = sign(claims(
            serde_json::json!({"iat": exp - 600, "nbf": exp - 600, "exp": exp}),
        ));
        let at = |ms: i64| v.validate(&t, &sts, &policy, ms);
        assert!(at(exp * 1000 + 29_999).is_ok());
        for late in [30_000, 45_000, 60_000] {
            let e = at(exp * 1000 + late)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                e.starts_with("ExpiredToken: The token is expired."),
                "{late}: {e}"
            );
        }
        // A token signed by another key with the issuer's kid: bad signature.
        let other = TokenService::in_memory();
        let forged = other
            .sign(&claims(serde_json::json!({})))
            .unwrap_or_default();
        let e = check(&forged)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("InvalidSignature"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn hostile_headers() {
        let (v, sts, ext, policy, dir) = setup();
        let check = |t: &str| {
            v.validate(t, &sts, &policy, NOW)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let body = b64j(&claims(serde_json::json!({})));
        let good = ext.sign(&claims(serde_json::json!({}))).unwrap_or_default();
        let sig = good.rsplit('.').next().unwrap_or_default().to_string();
        let with = |h: serde_json::Value| format!("{}.{body}.{sig}", b64j(&h));
        assert!(
            check(&format!(
                "{}.{body}.",
                b64j(&serde_json::json!({"alg": "none"}))
            ))
            .contains("InvalidToken")
        );
        assert!(check(&with(serde_json::json!({"alg": "none"}))).contains("'none'"));
        assert!(check(&with(serde_json::json!({"alg": "HS256", "kid": "x"}))).contains("'HS256'"));
        assert!(check(&with(serde_json::json!({"alg": "RS256"}))).contains("not accepted"));
        assert!(
            check(&with(serde_json::json!({"alg": "ES256", "crit": ["b64"]}))).contains("critical")
        );
        assert!(
            check(&with(serde_json::json!({"alg": "ES256", "kid": "unknown"})))
                .contains("not known")
        );
        assert!(check("a.b").contains("three"));
        assert!(check(&"x".repeat(MAX_JWT_LEN + 1)).contains("larger"));
        assert!(check("!!!.@@@.###").contains("base64url"));
        // A `jwk` header naming the attacker's own key is ignored: the issuer's keys decide.
        let attacker = TokenService::in_memory();
        let mut h = serde_json::json!({"alg": "ES256", "jwk": attacker.public_jwks()[0]});
        if let Some(o) = h.as_object_mut() {
            o.remove("kid");
        }
        let t = attacker
            .sign(&claims(serde_json::json!({})))
            .unwrap_or_default();
        let s2 = t.rsplit('.').next().unwrap_or_default();
        assert!(check(&format!("{}.{body}.{s2}", b64j(&h))).contains("InvalidSignature"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn algorithm_confusion_and_missing_claims() {
        use hmac::{Hmac, Mac};
        let (v, sts, ext, policy, dir) = setup();
        let check = |t: &str| {
            v.validate(t, &sts, &policy, NOW)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        // HS256 keyed with the issuer's public key bytes (the JWK text, the raw point): a
        // verifier that let the token pick the algorithm would accept these.
        let jwk = serde_json::to_value(&ext.public_jwks()[0]).unwrap_or_default();
        let kid = jwk["kid"].as_str().unwrap_or_default().to_string();
        let coord = |c: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(jwk[c].as_str().unwrap_or_default())
                .unwrap_or_default()
        };
        let mut point = vec![4u8];
        point.extend(coord("x"));
        point.extend(coord("y"));
        let secrets: Vec<Vec<u8>> = vec![jwk.to_string().into_bytes(), point];
        for (alg, secret) in [
            ("HS256", &secrets[0]),
            ("HS256", &secrets[1]),
            ("HS384", &secrets[0]),
        ] {
            let input = format!(
                "{}.{}",
                b64j(&serde_json::json!({"alg": alg, "typ": "JWT", "kid": kid})),
                b64j(&claims(serde_json::json!({})))
            );
            let mut mac =
                Hmac::<sha2::Sha256>::new_from_slice(secret).unwrap_or_else(|e| panic!("{e}"));
            mac.update(input.as_bytes());
            let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(mac.finalize().into_bytes());
            let e = check(&format!("{input}.{sig}"));
            assert!(
                e.starts_with("InvalidToken") && e.contains(alg),
                "{alg}: {e}"
            );
        }
        // The same claims signed properly pass, so the refusals above are about the algorithm.
        assert!(check(&ext.sign(&claims(serde_json::json!({}))).unwrap_or_default()).is_empty());
        // Required claims: iss (no issuer entry to pick), exp, aud.
        for (missing, want) in [("iss", "no iss"), ("exp", "exp"), ("aud", "aud")] {
            let t = ext
                .sign(&claims(serde_json::json!({ missing: null })))
                .unwrap_or_default();
            let e = check(&t);
            assert!(
                e.starts_with("InvalidToken") && e.contains(want),
                "{missing}: {e}"
            );
        }
        // An issuer whose key set has no key for this token's kid: refused, and a refresh
        // (rate limited, never from the validating call) is asked for.
        let stranger = TokenService::in_memory();
        let e = check(
            &stranger
                .sign(&claims(serde_json::json!({})))
                .unwrap_or_default(),
        );
        assert!(e.contains("not known"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Serve `routes` over HTTPS on a loopback port with a `--dev-tls`-style CA in `dir`;
    /// returns the port and the CA file.
    async fn https_server(
        dir: &std::path::Path,
        routes: axum::Router,
    ) -> (u16, std::path::PathBuf) {
        let files = crate::tls::dev_files(dir, &[]).unwrap_or_else(|e| panic!("{e}"));
        let tls = crate::tls::Tls::load(files.clone(), None).unwrap_or_else(|e| panic!("{e}"));
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.http.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, routes) = (acceptor.clone(), routes.clone());
                tokio::spawn(async move {
                    let Ok(stream) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(routes);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                });
            }
        });
        (port, files.ca.unwrap_or_default())
    }

    #[tokio::test]
    async fn keys_from_discovery_over_https_and_from_a_loopback_jwks_uri() {
        use axum::routing::get;
        let dir = std::env::temp_dir().join(format!(
            "keybus-jwt-fetch-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        let ext = TokenService::in_memory();
        let jwks = serde_json::json!({ "keys": ext.public_jwks() });
        let port_cell = Arc::new(std::sync::OnceLock::<u16>::new());
        let (pc, jw) = (port_cell.clone(), jwks.clone());
        let routes = axum::Router::new()
            .route(
                "/.well-known/openid-configuration",
                get(move || {
                    let port = pc.get().copied().unwrap_or_default();
                    async move {
                        axum::Json(serde_json::json!({
                            "issuer": format!("https://localhost:{port}"),
                            "jwks_uri": format!("https://localhost:{port}/keys"),
                        }))
                    }
                }),
            )
            .route(
                "/keys",
                get(move || {
                    let jw = jw.clone();
                    async move { ([("cache-control", "public, max-age=60")], axum::Json(jw)) }
                }),
            );
        let (port, ca) = https_server(&dir, routes.clone()).await;
        let _ = port_cell.set(port);
        // Plain http on loopback, for `jwks_uri`.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let http_port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
        tokio::spawn(async move {
            let _ = axum::serve(listener, routes).await;
        });

        let iss = format!("https://localhost:{port}");
        let text = format!(
            r#"
            [[issuers]]
            id = "disco"
            kind = "oidc"
            issuer = "{iss}"
            ca_file = "{}"
            algorithms = ["ES256"]
            [[issuers]]
            id = "direct"
            kind = "oidc"
            issuer = "https://direct.example"
            jwks_uri = "http://127.0.0.1:{http_port}/keys"
            algorithms = ["ES256"]
            [[issuers]]
            id = "untrusted"
            kind = "oidc"
            issuer = "https://localhost:{port}/"
            jwks_uri = "https://localhost:{port}/keys"
            algorithms = ["ES256"]
            "#,
            ca.display()
        );
        let file: PolicyFile = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        let policy = Policy::from_file(file, text.as_bytes()).unwrap_or_else(|e| panic!("{e}"));
        let v = Validator::new();
        v.configure(&policy);
        let sts = TokenService::in_memory();
        let now = now_ms_system();
        let token = |iss: &str| {
            ext.sign(&serde_json::json!({
                "iss": iss, "aud": "https://servicebus.azure.net", "sub": "s",
                "iat": now / 1000, "exp": now / 1000 + 600,
            }))
            .unwrap_or_default()
        };
        let mut results = (Err(JwtError::Signature), Err(JwtError::Signature));
        for _ in 0..100 {
            results = (
                v.validate(&token(&iss), &sts, &policy, now),
                v.validate(&token("https://direct.example"), &sts, &policy, now),
            );
            if results.0.is_ok() && results.1.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (disco, direct) = results;
        assert_eq!(
            disco
                .map(|(p, _)| p.subject.issuer_id)
                .ok()
                .flatten()
                .as_deref(),
            Some("disco")
        );
        assert_eq!(
            direct
                .map(|(p, _)| p.subject.issuer_id)
                .ok()
                .flatten()
                .as_deref(),
            Some("direct")
        );
        // The same server without its CA (no ca_file): never trusted, so no keys.
        let e = v
            .validate(&token(&format!("{iss}/")), &sts, &policy, now)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("not known"), "{e}");
        // Fetch hygiene.
        for bad in [
            "http://example.com/keys",
            "ftp://127.0.0.1/keys",
            "file:///etc/passwd",
        ] {
            assert!(http_get(bad, None).await.is_err(), "{bad}");
        }
        let (_, max_age) = http_get(&format!("http://127.0.0.1:{http_port}/keys"), None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(max_age, Some(60_000));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn builtin_tokens_round_trip() {
        let (v, sts, _ext, policy, dir) = setup();
        let (t, exp) = sts
            .mint(
                "https://localhost:5443/keybus/v2.0",
                "keybus",
                "c-1",
                "app",
                Duration::from_secs(3600),
                NOW,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(exp, NOW / 1000 + 3600);
        let (p, _) = v
            .validate(&t, &sts, &policy, NOW)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.subject.client_id.as_deref(), Some("c-1"));
        assert_eq!(policy.principals_for(&p.subject), vec!["app"]);
        // Another keybus's service signed it: refused.
        let other = TokenService::in_memory();
        let (t2, _) = other
            .mint(
                "https://localhost:5443/keybus/v2.0",
                "keybus",
                "c-1",
                "app",
                Duration::from_secs(3600),
                NOW,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(v.validate(&t2, &sts, &policy, NOW).is_err());
        // Expired later.
        let late = NOW + 3_700_000;
        let e = v
            .validate(&t, &sts, &policy, late)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.starts_with("ExpiredToken"), "{e}");
        // A different tenant path in iss is not ours.
        let (t3, _) = sts
            .mint(
                "https://localhost:5443/other/v2.0",
                "keybus",
                "c-1",
                "app",
                Duration::from_secs(3600),
                NOW,
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(v.validate(&t3, &sts, &policy, NOW).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
