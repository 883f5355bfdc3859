//! The token service's HTTP endpoints (identity reference §1.5, §2.6): the App Service managed
//! identity endpoint, an Entra-compatible token endpoint (workload identity federation), OIDC
//! discovery and the JWKS. Keys, minting and the request rules are `keybus_auth::sts`'s; who
//! gets a token is decided by the policy's `[sts]` registrations, what the token may do by its
//! grants. Every issue and refusal is audited (never the token) and counted against the
//! caller's failed-token budget.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Extension;
use axum::Router;
use axum::extract::{Path as UrlPath, Query, RawForm, State};
use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use keybus_auth::audit::Event;
use keybus_auth::policy::{Policy, SERVICE_BUS_AUDIENCES};
use keybus_auth::sts::{
    Grantee, PublicNames, audience_for, ct_eq, lifetime, scope_audience, stable_uuid, tenant_ok,
};
use keybus_auth::{Refusal, token_sha256};
use serde_json::{Value, json};

use crate::runtime::Broker;

/// Marks requests that arrived over the HTTPS listener (set by `http::serve_tls`).
#[derive(Debug, Clone, Copy)]
pub(super) struct OverTls;

/// The token service's routes (merge before the ATOM catch-all).
pub(super) fn routes() -> Router<Arc<Broker>> {
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
    let policy = broker.auth().policy();
    broker.auth().audit.record(Event {
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
        .auth()
        .refuse(peer, format!("{code}: {description}"), broker.now());
    let limited = match &refusal {
        Refusal::Limited(_, ms) => Some(((*ms).max(0) as u64).div_ceil(1000)),
        Refusal::Invalid(_) => None,
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
    let names = broker.auth().sts.public_names(policy);
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
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let peer = crate::http::peer_text(&peer);
    let policy = broker.auth().policy();
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
    let Some(audience) = resource.and_then(|r| audience_for(&policy, r)) else {
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
            "This endpoint issues tokens for https://servicebus.azure.net and the policy's sts.audiences only.",
        );
    };
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
    let issuer = broker.auth().sts.public_names(&policy).issuer(tenant);
    let grantee = Grantee {
        tenant,
        client_id: &mi.client_id,
        principal: &mi.principal,
    };
    match broker
        .auth()
        .sts
        .mint_for(&issuer, &audience, grantee, lifetime(&policy), broker.now())
    {
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
                    ("token_sha256", json!(token_sha256(&token))),
                    ("expires_on", json!(exp)),
                    ("audience", json!(audience)),
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
    let policy = broker.auth().policy();
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
    let fields: HashMap<String, String> = form_urlencoded::parse(&form).into_owned().collect();
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
    let Some(audience) = scope_audience(&policy, scope) else {
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
            "This token service issues tokens for https://servicebus.azure.net/.default and the policy's sts.audiences only.",
        );
    };
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
        match broker.auth().jwt.verify(
            assertion,
            &broker.auth().sts,
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
                extra: vec![("assertion_sha256", json!(token_sha256(assertion)))],
            },
            StatusCode::BAD_REQUEST,
            "invalid_client",
            &format!("AADSTS700213: {last_error}"),
        );
    }
    let tenant = &policy.file.sts.tenant;
    let grantee = Grantee {
        tenant,
        client_id: &client.client_id,
        principal: &client.principal,
    };
    match broker.auth().sts.mint_for(
        &names.issuer(tenant),
        &audience,
        grantee,
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
                    ("token_sha256", json!(token_sha256(&token))),
                    ("expires_on", json!(exp)),
                    ("audience", json!(audience)),
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
    let policy = broker.auth().policy();
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
    let policy = broker.auth().policy();
    if !tenant_ok(&policy, &tenant) {
        return oauth_error(StatusCode::NOT_FOUND, "invalid_tenant", "Tenant not found.");
    }
    (
        [(header::CACHE_CONTROL, "max-age=300")],
        axum::Json(json!({ "keys": broker.auth().sts.public_jwks() })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    /// The token endpoint reads its form with `form_urlencoded` (`+` is a space, `%XX` a
    /// byte, a bad escape stays as written).
    #[test]
    fn form_decoding() {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(
            b"a=b+c&scope=https%3A%2F%2Fservicebus.azure.net%2F%2F.default&x=%zz&y",
        )
        .into_owned()
        .collect();
        assert_eq!(pairs[0], ("a".into(), "b c".into()));
        assert_eq!(pairs[1].1, "https://servicebus.azure.net//.default");
        assert_eq!(pairs[2].1, "%zz");
        assert_eq!(pairs[3], ("y".into(), String::new()));
    }
}
