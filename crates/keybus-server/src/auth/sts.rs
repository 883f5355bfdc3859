//! keybus's token service (identity reference §1.5, §2.6): the App Service managed identity
//! endpoint and an Entra-compatible token endpoint (workload identity federation), with OIDC
//! discovery and the JWKS. Tokens are ES256, signed with a key kept in `<data-dir>/sts/`.
//! Who gets a token is decided by the policy's `[sts]` registrations; what the token may do
//! by its grants. Every issue and refusal is audited (never the token).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::extract::{Path as UrlPath, Query, RawForm, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use jsonwebtoken::jwk::Jwk;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::audit::Event;
use super::policy::{Policy, SERVICE_BUS_AUDIENCES};
use crate::broker::Broker;

const KEY_FILE: &str = "signing-key.der";

/// Signing key and token minting.
pub struct TokenService {
    encoding: EncodingKey,
    jwk: Jwk,
    kid: String,
    /// Names derived from the listeners (`--bind`, the HTTPS port), used unless the policy
    /// sets `sts.public_url`.
    default_public: std::sync::RwLock<PublicNames>,
}

/// Where clients reach the token service: the base URL of the issuer and of the discovery
/// document, and the `Host` values accepted at the token endpoint and discovery. Never taken
/// from a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicNames {
    /// `https://host[:port]`, no trailing slash.
    pub base: String,
    /// Lower-case `host[:port]` values a request's `Host` must equal.
    pub hosts: Vec<String>,
}

impl Default for PublicNames {
    fn default() -> Self {
        Self::from_url("https://localhost").unwrap_or(Self {
            base: "https://localhost".into(),
            hosts: vec!["localhost".into(), "localhost:443".into()],
        })
    }
}

impl PublicNames {
    /// From `https://host[:port][/]` (the policy's `sts.public_url`).
    pub fn from_url(url: &str) -> Result<Self, String> {
        let authority = url
            .strip_prefix("https://")
            .ok_or_else(|| format!("'{url}' is not an https:// URL"))?
            .trim_end_matches('/')
            .to_ascii_lowercase();
        if authority.is_empty()
            || authority.len() > 255
            || !authority
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
        {
            return Err(format!(
                "'{url}' must be https://host[:port] without a path"
            ));
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p))
                if !h.is_empty()
                    && !p.is_empty()
                    && p.bytes().all(|b| b.is_ascii_digit())
                    && !p.contains(']') =>
            {
                (h.to_string(), Some(p.to_string()))
            }
            _ => (authority.clone(), None),
        };
        if host.starts_with('[') != host.ends_with(']') || host.is_empty() {
            return Err(format!("'{url}' has an invalid host"));
        }
        let mut hosts = vec![authority.clone()];
        match port.as_deref() {
            None => hosts.push(format!("{host}:443")),
            Some("443") => hosts.push(host.clone()),
            Some(_) => {}
        }
        Ok(Self {
            base: format!("https://{authority}"),
            hosts,
        })
    }

    /// The defaults for a server bound to `bind` with HTTPS on `https_port`: loopback and
    /// unspecified binds answer as `localhost` (also `127.0.0.1` and `[::1]`, the names of the
    /// development certificate); any other address as itself.
    pub fn for_bind(bind: std::net::IpAddr, https_port: u16) -> Self {
        let fmt = |ip: std::net::IpAddr| match ip {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        };
        let mut names: Vec<String> = Vec::new();
        if bind.is_loopback() || bind.is_unspecified() {
            names.extend(["localhost".into(), "127.0.0.1".into(), "[::1]".into()]);
        } else {
            names.push(fmt(bind));
        }
        let mut hosts: Vec<String> = names.iter().map(|n| format!("{n}:{https_port}")).collect();
        if https_port == 443 {
            hosts.extend(names.iter().cloned());
        }
        let first = names.first().cloned().unwrap_or_else(|| "localhost".into());
        let base = if https_port == 443 {
            format!("https://{first}")
        } else {
            format!("https://{first}:{https_port}")
        };
        Self { base, hosts }
    }

    /// The issuer (`iss`) of tokens minted for `tenant`.
    pub fn issuer(&self, tenant: &str) -> String {
        format!("{}/{tenant}/v2.0", self.base)
    }
}

/// Marks requests that arrived over the HTTPS listener (set by `http::serve_tls`).
#[derive(Debug, Clone, Copy)]
pub struct OverTls;

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

impl TokenService {
    /// A fresh key that lives as long as the process.
    pub fn in_memory() -> Self {
        match rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256) {
            Ok(k) => Self::from_pkcs8(&k.serialize_der()).unwrap_or_else(|_| Self::unusable()),
            Err(_) => Self::unusable(),
        }
    }

    /// A service whose tokens nobody accepts (key generation failed: it cannot happen with
    /// ring, but a server path must not panic).
    fn unusable() -> Self {
        Self {
            encoding: EncodingKey::from_ec_der(&[]),
            jwk: Jwk {
                common: Default::default(),
                algorithm: jsonwebtoken::jwk::AlgorithmParameters::OctetKey(
                    jsonwebtoken::jwk::OctetKeyParameters {
                        key_type: jsonwebtoken::jwk::OctetKeyType::Octet,
                        value: String::new(),
                    },
                ),
            },
            kid: String::new(),
            default_public: Default::default(),
        }
    }

    /// The key in `dir` (created 0700, key 0600), generated on first use.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let path = dir.join(KEY_FILE);
        let der = match std::fs::read(&path) {
            Ok(d) if !d.is_empty() => d,
            _ => {
                let k = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                let der = k.serialize_der();
                let tmp = dir.join(format!("{KEY_FILE}.tmp"));
                {
                    let mut opts = std::fs::OpenOptions::new();
                    opts.write(true).create(true).truncate(true);
                    #[cfg(unix)]
                    {
                        use std::os::unix::fs::OpenOptionsExt;
                        opts.mode(0o600);
                    }
                    use std::io::Write;
                    let mut f = opts.open(&tmp)?;
                    f.write_all(&der)?;
                    f.sync_all()?;
                }
                std::fs::rename(&tmp, &path)?;
                der
            }
        };
        Self::from_pkcs8(&der).map_err(std::io::Error::other)
    }

    fn from_pkcs8(der: &[u8]) -> Result<Self, String> {
        let pair = rcgen::KeyPair::try_from(der).map_err(|e| format!("token service key: {e}"))?;
        let raw = pair.public_key_raw();
        // Uncompressed P-256 point: 0x04 || X (32) || Y (32).
        if raw.len() != 65 || raw[0] != 4 {
            return Err("token service key: not an uncompressed P-256 point".into());
        }
        let (x, y) = (b64(&raw[1..33]), b64(&raw[33..]));
        // RFC 7638 JWK thumbprint: SHA-256 of the required members in lexicographic order.
        let thumbprint = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = b64(&Sha256::digest(thumbprint.as_bytes()));
        let jwk: Jwk = serde_json::from_value(json!({
            "kty": "EC", "crv": "P-256", "x": x, "y": y,
            "kid": kid, "use": "sig", "alg": "ES256",
        }))
        .map_err(|e| format!("token service key: {e}"))?;
        Ok(Self {
            encoding: EncodingKey::from_ec_der(der),
            jwk,
            kid,
            default_public: Default::default(),
        })
    }

    /// Set the names derived from the listeners (at start-up, once the HTTPS port is known).
    pub fn set_default_public(&self, names: PublicNames) {
        match self.default_public.write() {
            Ok(mut g) => *g = names,
            Err(p) => *p.into_inner() = names,
        }
    }

    /// The names in force: the policy's `sts.public_url`, else the listeners' defaults.
    pub fn public_names(&self, policy: &Policy) -> PublicNames {
        if let Some(url) = &policy.file.sts.public_url
            && let Ok(n) = PublicNames::from_url(url)
        {
            return n;
        }
        match self.default_public.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }

    /// The public keys, for validation and the JWKS endpoint.
    pub fn public_jwks(&self) -> Vec<Jwk> {
        vec![self.jwk.clone()]
    }

    /// Mint an access token for Service Bus. Returns the token and its `exp` (unix s).
    pub fn mint(
        &self,
        issuer_url: &str,
        tenant: &str,
        client_id: &str,
        principal: &str,
        lifetime: Duration,
        now_ms: i64,
    ) -> Result<(String, i64), String> {
        let now = now_ms / 1000;
        let exp = now + lifetime.as_secs() as i64;
        let oid = stable_uuid(&format!("{tenant}/{principal}"));
        let claims = json!({
            "iss": issuer_url, "aud": SERVICE_BUS_AUDIENCES[0],
            "iat": now, "nbf": now, "exp": exp,
            "tid": tenant, "oid": oid, "sub": oid,
            "appid": client_id, "azp": client_id,
            "idtyp": "app", "ver": "2.0",
            "jti": uuid_like(&rand::random::<[u8; 16]>()),
            "xms_mirid": format!("/keybus/identities/{principal}"),
        });
        Ok((self.sign(&claims)?, exp))
    }

    /// Sign any claims with the service's key (ES256, with its `kid`).
    pub fn sign(&self, claims: &Value) -> Result<String, String> {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, claims, &self.encoding)
            .map_err(|e| format!("cannot sign: {e}"))
    }
}

fn uuid_like(b: &[u8]) -> String {
    let mut bytes = [0u8; 16];
    for (d, s) in bytes.iter_mut().zip(b) {
        *d = *s;
    }
    uuid::Uuid::from_bytes(bytes).hyphenated().to_string()
}

/// A UUID-shaped id derived from a name (the same principal keeps its object id).
pub fn stable_uuid(name: &str) -> String {
    uuid_like(&Sha256::digest(name.as_bytes()))
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    // Compare digests so the time does not depend on where the secrets differ.
    let (x, y) = (Sha256::digest(a), Sha256::digest(b));
    x.iter()
        .zip(y.iter())
        .fold(0u8, |acc, (p, q)| acc | (p ^ q))
        == 0
}

// ------------------------------------------------------------------------------ HTTP

/// The token service's routes (merge before the ATOM catch-all).
pub fn routes() -> Router<Arc<Broker>> {
    Router::new()
        .route("/msi/token", get(managed_identity))
        .route("/msi/token/", get(managed_identity))
        .route("/{tenant}/oauth2/v2.0/token", post(token_endpoint))
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(discovery),
        )
        .route("/{tenant}/discovery/v2.0/keys", get(jwks))
}

/// Entra-style error (`error`, `error_description`) plus the App Service shape
/// (`statusCode`, `message`).
fn oauth_error(status: StatusCode, code: &str, description: &str) -> Response {
    let body = json!({
        "error": code, "error_description": description,
        "statusCode": status.as_u16(), "message": description,
        "error_codes": [], "timestamp": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "trace_id": uuid::Uuid::new_v4().to_string(), "correlation_id": uuid::Uuid::new_v4().to_string(),
    });
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(body),
    )
        .into_response()
}

#[allow(clippy::too_many_arguments)]
fn audit_issue(
    broker: &Broker,
    peer: &str,
    event: &'static str,
    allow: bool,
    reason: &str,
    principal: Option<&str>,
    client_id: Option<&str>,
    extra: Vec<(&'static str, Value)>,
) {
    let policy = broker.auth.policy();
    broker.auth.audit.record(Event {
        event,
        allow,
        reason: reason.to_string(),
        principal: principal.map(|p| json!({ "id": p, "client_id": client_id, "kind": "sts" })),
        policy_version: Some(policy.version.clone()),
        peer: Some(peer.to_string()),
        extra,
        ..Default::default()
    });
}

/// A refused token request, for [`refuse`].
struct Refused<'a> {
    event: &'static str,
    reason: &'a str,
    principal: Option<&'a str>,
    client_id: Option<&'a str>,
    extra: Vec<(&'static str, Value)>,
}

/// Audit a refused token request, count it against the client address's rate limit, and
/// answer it: the given error, or `429` with `Retry-After` once the address is limited (a
/// valid request from it is still served).
fn refuse(
    broker: &Broker,
    peer: &str,
    r: Refused<'_>,
    status: StatusCode,
    code: &str,
    description: &str,
) -> Response {
    let refusal = broker
        .auth
        .refuse(peer, format!("{code}: {description}"), broker.now());
    let limited = match &refusal {
        super::Refusal::Limited(_, ms) => Some(((*ms).max(0) as u64).div_ceil(1000)),
        super::Refusal::Invalid(_) => None,
    };
    let reason = if limited.is_some() {
        refusal.reason()
    } else {
        r.reason.to_string()
    };
    audit_issue(
        broker,
        peer,
        r.event,
        false,
        &reason,
        r.principal,
        r.client_id,
        r.extra,
    );
    match limited {
        Some(secs) => {
            let mut resp = oauth_error(
                StatusCode::TOO_MANY_REQUESTS,
                "temporarily_unavailable",
                refusal.description(),
            );
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
            resp.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            resp
        }
        None => oauth_error(status, code, description),
    }
}

fn resource_ok(resource: Option<&str>) -> bool {
    resource.is_some_and(|r| SERVICE_BUS_AUDIENCES.contains(&r))
}

fn lifetime(policy: &Policy) -> Duration {
    super::policy::parse_duration("sts.token_lifetime", &policy.file.sts.token_lifetime)
        .unwrap_or(Duration::from_secs(3600))
}

/// The `Host` the client addressed (the header, or the authority of an HTTP/2 request).
fn request_host<'a>(headers: &'a HeaderMap, uri: &'a Uri) -> Option<&'a str> {
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| uri.authority().map(|a| a.as_str()))
}

/// Refuse requests over plain HTTP, or addressed to a host that is not one of the token
/// service's configured names (421); otherwise the names in force.
fn check_public(
    broker: &Broker,
    peer: &str,
    policy: &Policy,
    headers: &HeaderMap,
    uri: &Uri,
    tls: bool,
    event: &'static str,
) -> Result<PublicNames, Box<Response>> {
    let names = broker.auth.sts.public_names(policy);
    if !tls {
        audit_issue(broker, peer, event, false, "plain_http", None, None, vec![]);
        return Err(Box::new(oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            &format!(
                "This endpoint is served over HTTPS only: use {}.",
                names.base
            ),
        )));
    }
    let host = request_host(headers, uri).unwrap_or("");
    if !names.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
        let shown: String = host.chars().take(100).collect();
        audit_issue(
            broker,
            peer,
            event,
            false,
            "unknown_host",
            None,
            None,
            vec![("host", json!(shown))],
        );
        return Err(Box::new(oauth_error(
            StatusCode::MISDIRECTED_REQUEST,
            "invalid_request",
            &format!(
                "This token service answers as {} only, not as '{shown}'.",
                names.base
            ),
        )));
    }
    Ok(names)
}

async fn managed_identity(
    State(broker): State<Arc<Broker>>,
    peer: crate::http::PeerInfo,
    headers: HeaderMap,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    let peer = crate::http::peer_text(&peer);
    let policy = broker.auth.policy();
    if headers.contains_key(header::ORIGIN) {
        // A web page in a browser on this host is not a workload (identity reference §8).
        return refuse(
            &broker,
            &peer,
            Refused {
                event: "mi.issue",
                reason: "browser_origin",
                principal: None,
                client_id: None,
                extra: vec![],
            },
            StatusCode::FORBIDDEN,
            "invalid_request",
            "Requests from browsers are not served.",
        );
    }
    let secret = headers
        .get("x-identity-header")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let bound: Vec<usize> = policy
        .mi_secrets
        .iter()
        .filter(|(s, _)| !secret.is_empty() && ct_eq(s.as_bytes(), secret.as_bytes()))
        .map(|(_, i)| *i)
        .collect();
    if bound.is_empty() {
        return refuse(
            &broker,
            &peer,
            Refused {
                event: "mi.issue",
                reason: "bad_identity_header",
                principal: None,
                client_id: None,
                extra: vec![],
            },
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "The X-IDENTITY-HEADER is missing or not known.",
        );
    }
    let resource = q.get("resource").map(String::as_str);
    if !resource_ok(resource) {
        return refuse(
            &broker,
            &peer,
            Refused {
                event: "mi.issue",
                reason: "invalid_resource",
                principal: None,
                client_id: None,
                extra: vec![],
            },
            StatusCode::BAD_REQUEST,
            "invalid_resource",
            "This endpoint issues tokens for https://servicebus.azure.net only.",
        );
    }
    let mis = &policy.file.sts.managed_identities;
    let selector = [
        "client_id",
        "object_id",
        "principal_id",
        "mi_res_id",
        "msi_res_id",
        "resource_id",
    ]
    .iter()
    .find_map(|k| q.get(*k).map(|v| (*k, v.as_str())));
    let chosen = match selector {
        None => bound.first().copied(),
        Some((kind, id)) => bound.iter().copied().find(|i| {
            let mi = &mis[*i];
            match kind {
                "client_id" => mi.client_id.eq_ignore_ascii_case(id),
                "object_id" | "principal_id" => {
                    stable_uuid(&format!("{}/{}", policy.file.sts.tenant, mi.principal))
                        .eq_ignore_ascii_case(id)
                }
                _ => id.ends_with(&format!("/{}", mi.principal)),
            }
        }),
    };
    let Some(i) = chosen else {
        return refuse(
            &broker,
            &peer,
            Refused {
                event: "mi.issue",
                reason: "unknown_identity",
                principal: None,
                client_id: None,
                extra: vec![],
            },
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "No managed identity found for the specified id.",
        );
    };
    let mi = &mis[i];
    let tenant = &policy.file.sts.tenant;
    let issuer = broker.auth.sts.public_names(&policy).issuer(tenant);
    match broker.auth.sts.mint(
        &issuer,
        tenant,
        &mi.client_id,
        &mi.principal,
        lifetime(&policy),
        broker.now(),
    ) {
        Ok((token, exp)) => {
            audit_issue(
                &broker,
                &peer,
                "mi.issue",
                true,
                "ok",
                Some(&mi.principal),
                Some(&mi.client_id),
                vec![
                    ("token_sha256", json!(super::token_sha256(&token))),
                    ("expires_on", json!(exp)),
                ],
            );
            let now = broker.now() / 1000;
            axum::Json(json!({
                "access_token": token,
                "expires_on": exp.to_string(),
                "expires_in": (exp - now).to_string(),
                "resource": resource.unwrap_or(SERVICE_BUS_AUDIENCES[1]),
                "token_type": "Bearer",
                "client_id": mi.client_id,
            }))
            .into_response()
        }
        Err(e) => oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", &e),
    }
}

fn tenant_ok(policy: &Policy, tenant: &str) -> bool {
    policy.file.sts.tenant.eq_ignore_ascii_case(tenant)
}

async fn token_endpoint(
    State(broker): State<Arc<Broker>>,
    peer: crate::http::PeerInfo,
    UrlPath(tenant): UrlPath<String>,
    tls: Option<Extension<OverTls>>,
    uri: Uri,
    headers: HeaderMap,
    RawForm(form): RawForm,
) -> Response {
    let peer = crate::http::peer_text(&peer);
    let policy = broker.auth.policy();
    let names = match check_public(
        &broker,
        &peer,
        &policy,
        &headers,
        &uri,
        tls.is_some(),
        "sts.issue",
    ) {
        Ok(n) => n,
        Err(r) => return *r,
    };
    let fields: std::collections::HashMap<String, String> =
        form_urlencoded_pairs(&form).into_iter().collect();
    let get = |k: &str| fields.get(k).map(String::as_str).unwrap_or("");
    if !tenant_ok(&policy, &tenant) {
        return refuse(
            &broker,
            &peer,
            Refused {
                event: "sts.issue",
                reason: "unknown_tenant",
                principal: None,
                client_id: Some(get("client_id")),
                extra: vec![],
            },
            StatusCode::BAD_REQUEST,
            "invalid_tenant",
            &format!("AADSTS90002: Tenant '{tenant}' not found."),
        );
    }
    if get("grant_type") != "client_credentials" {
        return refuse(
            &broker,
            &peer,
            Refused {
                event: "sts.issue",
                reason: "unsupported_grant_type",
                principal: None,
                client_id: Some(get("client_id")),
                extra: vec![],
            },
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Only client_credentials is supported.",
        );
    }
    let scope = get("scope");
    let scope_ok = scope.split(' ').any(|s| {
        let r = s.trim_end_matches(".default");
        SERVICE_BUS_AUDIENCES.contains(&r)
            || SERVICE_BUS_AUDIENCES.contains(&r.trim_end_matches('/'))
    });
    if !scope_ok {
        return refuse(
            &broker,
            &peer,
            Refused {
                event: "sts.issue",
                reason: "invalid_scope",
                principal: None,
                client_id: None,
                extra: vec![],
            },
            StatusCode::BAD_REQUEST,
            "invalid_scope",
            "This token service issues tokens for https://servicebus.azure.net/.default only.",
        );
    }
    let client_id = get("client_id");
    let Some(client) = policy
        .file
        .sts
        .clients
        .iter()
        .find(|c| c.client_id.eq_ignore_ascii_case(client_id))
    else {
        return refuse(
            &broker,
            &peer,
            Refused {
                event: "sts.issue",
                reason: "unknown_client",
                principal: None,
                client_id: Some(client_id),
                extra: vec![],
            },
            StatusCode::BAD_REQUEST,
            "unauthorized_client",
            &format!("Application with identifier '{client_id}' was not found."),
        );
    };
    if get("client_assertion_type") != "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" {
        return refuse(
            &broker,
            &peer,
            Refused {
                event: "sts.issue",
                reason: "no_assertion",
                principal: Some(&client.principal),
                client_id: Some(client_id),
                extra: vec![],
            },
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "A client_assertion (jwt-bearer) is required: keybus has no client secrets.",
        );
    }
    let assertion = get("client_assertion");
    // The assertion must satisfy one of the client's federated credentials.
    let mut last_error = "no federated credential matches".to_string();
    let mut matched = false;
    for fc in &client.federated {
        match broker.auth.jwt.verify(
            assertion,
            &broker.auth.sts,
            &policy,
            broker.now(),
            Some(&fc.audiences),
        ) {
            Ok(v)
                if v.claims.iss.as_deref() == Some(fc.issuer.as_str())
                    && v.claims.sub.as_deref() == Some(fc.subject.as_str()) =>
            {
                matched = true;
                break;
            }
            Ok(v) => {
                last_error = format!(
                    "the assertion's issuer and subject ('{}', '{}') match no federated credential",
                    v.claims.iss.unwrap_or_default(),
                    v.claims.sub.unwrap_or_default()
                )
            }
            Err(e) => last_error = e.to_string(),
        }
    }
    if !matched {
        return refuse(
            &broker,
            &peer,
            Refused {
                event: "sts.issue",
                reason: &last_error,
                principal: Some(&client.principal),
                client_id: Some(client_id),
                extra: vec![("assertion_sha256", json!(super::token_sha256(assertion)))],
            },
            StatusCode::BAD_REQUEST,
            "invalid_client",
            &format!("AADSTS700213: {last_error}"),
        );
    }
    let tenant = &policy.file.sts.tenant;
    match broker.auth.sts.mint(
        &names.issuer(tenant),
        tenant,
        &client.client_id,
        &client.principal,
        lifetime(&policy),
        broker.now(),
    ) {
        Ok((token, exp)) => {
            audit_issue(
                &broker,
                &peer,
                "sts.issue",
                true,
                "ok",
                Some(&client.principal),
                Some(client_id),
                vec![
                    ("token_sha256", json!(super::token_sha256(&token))),
                    ("expires_on", json!(exp)),
                ],
            );
            let expires_in = exp - broker.now() / 1000;
            (
                [(header::CACHE_CONTROL, "no-store")],
                axum::Json(json!({
                    "token_type": "Bearer",
                    "expires_in": expires_in,
                    "ext_expires_in": expires_in,
                    "access_token": token,
                })),
            )
                .into_response()
        }
        Err(e) => oauth_error(StatusCode::INTERNAL_SERVER_ERROR, "server_error", &e),
    }
}

async fn discovery(
    State(broker): State<Arc<Broker>>,
    UrlPath(tenant): UrlPath<String>,
    tls: Option<Extension<OverTls>>,
    peer: crate::http::PeerInfo,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let policy = broker.auth.policy();
    let peer = crate::http::peer_text(&peer);
    let names = match check_public(
        &broker,
        &peer,
        &policy,
        &headers,
        &uri,
        tls.is_some(),
        "sts.discovery",
    ) {
        Ok(n) => n,
        Err(r) => return *r,
    };
    if !tenant_ok(&policy, &tenant) {
        return oauth_error(StatusCode::NOT_FOUND, "invalid_tenant", "Tenant not found.");
    }
    let base = format!("{}/{tenant}", names.base);
    axum::Json(json!({
        "issuer": format!("{base}/v2.0"),
        "authorization_endpoint": format!("{base}/oauth2/v2.0/authorize"),
        "token_endpoint": format!("{base}/oauth2/v2.0/token"),
        "jwks_uri": format!("{base}/discovery/v2.0/keys"),
        "response_types_supported": ["token"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["ES256"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "grant_types_supported": ["client_credentials"],
        "tenant_region_scope": null,
        "cloud_instance_name": "keybus",
    }))
    .into_response()
}

async fn jwks(State(broker): State<Arc<Broker>>, UrlPath(tenant): UrlPath<String>) -> Response {
    let policy = broker.auth.policy();
    if !tenant_ok(&policy, &tenant) {
        return oauth_error(StatusCode::NOT_FOUND, "invalid_tenant", "Tenant not found.");
    }
    (
        [(header::CACHE_CONTROL, "max-age=300")],
        axum::Json(json!({ "keys": broker.auth.sts.public_jwks() })),
    )
        .into_response()
}

/// `application/x-www-form-urlencoded` pairs (`+` is a space, `%XX` bytes).
fn form_urlencoded_pairs(body: &[u8]) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => {
                    let hex = |c: u8| (c as char).to_digit(16);
                    match (hex(b[i + 1]), hex(b[i + 2])) {
                        (Some(h), Some(l)) => {
                            out.push((h * 16 + l) as u8);
                            i += 2;
                        }
                        _ => out.push(b'%'),
                    }
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_names() {
        let lo = PublicNames::for_bind(std::net::IpAddr::from([127, 0, 0, 1]), 5443);
        assert_eq!(lo.base, "https://localhost:5443");
        assert_eq!(lo.issuer("t"), "https://localhost:5443/t/v2.0");
        assert!(lo.hosts.contains(&"127.0.0.1:5443".to_string()));
        assert!(lo.hosts.contains(&"[::1]:5443".to_string()));
        assert!(!lo.hosts.iter().any(|h| h.contains("evil")));
        let v6 = PublicNames::for_bind("fd00::1".parse().unwrap(), 443);
        assert_eq!(v6.base, "https://[fd00::1]");
        assert_eq!(v6.hosts, vec!["[fd00::1]:443", "[fd00::1]"]);
        let u = PublicNames::from_url("https://SB.example.com/").unwrap();
        assert_eq!(u.base, "https://sb.example.com");
        assert_eq!(u.hosts, vec!["sb.example.com", "sb.example.com:443"]);
        let p = PublicNames::from_url("https://sb.example.com:8443").unwrap();
        assert_eq!(p.hosts, vec!["sb.example.com:8443"]);
        for bad in [
            "http://x",
            "https://",
            "https://x/path",
            "https://x y",
            "sb.example.com",
        ] {
            assert!(PublicNames::from_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn form_decoding() {
        let pairs = form_urlencoded_pairs(
            b"a=b+c&scope=https%3A%2F%2Fservicebus.azure.net%2F%2F.default&x=%zz&y",
        );
        assert_eq!(pairs[0], ("a".into(), "b c".into()));
        assert_eq!(pairs[1].1, "https://servicebus.azure.net//.default");
        assert_eq!(pairs[2].1, "%zz");
        assert_eq!(pairs[3], ("y".into(), String::new()));
    }

    #[test]
    fn key_persists_and_tokens_verify() {
        let dir = std::env::temp_dir().join(format!("keybus-sts-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let a = TokenService::open(&dir).unwrap_or_else(|e| panic!("{e}"));
        let b = TokenService::open(&dir).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.kid, b.kid, "the key is kept across restarts");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode =
                std::fs::metadata(dir.join(KEY_FILE)).map(|m| m.permissions().mode() & 0o777);
            assert_eq!(mode.ok(), Some(0o600));
        }
        let c = TokenService::in_memory();
        assert_ne!(a.kid, c.kid);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
