//! Signing in and out. Three ways in: the one-time token `keybus serve` prints (exchanged
//! once, by `GET /console/?token=…`, for a session as the local owner: the rights of the
//! broker's first SAS policy); a SAS connection string or key name and key (made into a SAS
//! token for the namespace); or a token (a bearer JWT from an issuer the policy trusts, or a
//! SAS token). Credentials are checked by `Auth::verify_from`, the same validation, rate
//! limit and audit as CBS and the REST API; the session lasts until the credential expires,
//! at most [`SESSION_MS`].

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use keybus_auth::{CredentialKind, Principal, Right, SasRights};
use maud::{Markup, html};

use super::Console;
use super::error::ConsoleError;
use super::form::Form;
use super::guard::{self, OverTls};
use super::layout;
use super::sessions::SESSION_MS;
use crate::http::common::host_of;
use crate::http::{PeerInfo, peer_text};
use crate::runtime::Broker;

/// The sign-in page's form.
pub(super) fn form() -> Markup {
    html! {
        h1 { "Sign in" }
        p.muted { "Open the console address that " code { "keybus serve" } " printed (it signs you in once), or sign in with a credential." }
        form hx-post="/console/signin" hx-target="#messages" {
            section.panel {
                h2 { "Connection string or SAS key" }
                label for="cs" { "Connection string" }
                input #cs type="password" name="connection_string" autocomplete="off";
                p.muted { "or" }
                label for="kn" { "SAS key name" }
                input #kn type="text" name="key_name" autocomplete="off";
                label for="k" { "SAS key" }
                input #k type="password" name="key" autocomplete="off";
            }
            section.panel {
                h2 { "Token" }
                label for="tok" { "Bearer JWT (from an issuer the policy trusts) or SAS token" }
                input #tok type="password" name="token" autocomplete="off";
            }
            button type="submit" { "Sign in" }
        }
    }
}

/// The local owner: the broker's first SAS policy's rights on the whole namespace.
pub(super) fn local_owner(broker: &Broker) -> Result<Principal, ConsoleError> {
    let policy = broker
        .policies()
        .iter()
        .find(|p| p.rights.contains(&Right::Manage))
        .or_else(|| broker.policies().first())
        .ok_or_else(|| ConsoleError::SignInRefused("the broker has no SAS policy".into()))?;
    Ok(Principal {
        key: format!("console:local-owner(sas:{})", policy.name),
        kind: CredentialKind::Sas,
        subject: Default::default(),
        sas: Some(SasRights {
            resource: String::new(),
            rights: policy.rights.clone(),
            key_name: policy.name.clone(),
        }),
        iss: None,
        kid: None,
        jti: None,
        token_sha256: None,
    })
}

/// The credential a sign-in form carries, as a token.
fn credential_token(form: &Form, audience: &str, now_ms: i64) -> Result<String, ConsoleError> {
    if let Some(token) = form.get("token") {
        let token = token
            .strip_prefix("Bearer ")
            .or_else(|| token.strip_prefix("bearer "))
            .unwrap_or(token);
        return Ok(token.trim().to_string());
    }
    if let Some(cs) = form.get("connection_string") {
        let ep = keybus_client::Endpoint::parse(cs).map_err(|e| {
            ConsoleError::SignInRefused(format!("the connection string is not usable: {e}"))
        })?;
        return Ok(ep.token(audience));
    }
    match (form.get("key_name"), form.get("key")) {
        (Some(name), Some(key)) => Ok(keybus_client::sas::token(
            audience,
            name,
            key,
            (now_ms.max(0) as u64) / 1000 + 3600,
        )),
        _ => Err(ConsoleError::SignInRefused(
            "give a connection string, a SAS key name and key, or a token".into(),
        )),
    }
}

/// Audit a sign-in.
fn audit_signin(broker: &Broker, peer: &str, p: Option<&Principal>, allow: bool, reason: &str) {
    broker.auth().audit.record(keybus_auth::audit::Event {
        event: "console.signin",
        allow,
        reason: reason.to_string(),
        principal: p.map(|p| p.audit_json(&[])),
        peer: Some(peer.to_string()),
        ..Default::default()
    });
}

/// The session cookie header.
fn set_cookie(r: &mut Response, id: &str, tls: bool) {
    if let Ok(v) = HeaderValue::from_str(&guard::cookie(id, tls)) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
}

/// An htmx answer that sets (or clears) the session cookie and sends the browser to the
/// overview.
fn signed_in(id: &str, tls: bool) -> Response {
    let mut r = StatusCode::OK.into_response();
    set_cookie(&mut r, id, tls);
    r.headers_mut()
        .insert("HX-Redirect", HeaderValue::from_static("/console/"));
    r
}

/// The page the one-time token's address answers with: it sets the cookie and moves on to
/// the overview by a same-origin navigation (a meta refresh, not a redirect: a `SameSite=Strict`
/// cookie is not sent on a redirect that a link from another site started), which also drops
/// the token from the address bar.
fn token_redeemed(id: &str, tls: bool) -> Response {
    let mut r = layout::html_response(html! {
        (maud::DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta http-equiv="refresh" content="0;url=/console/";
                title { "Signed in · keybus console" }
            }
            body { main { h1 { "Signed in" } p { a href="/console/" { "Continue to the console" } } } }
        }
    });
    set_cookie(&mut r, id, tls);
    r
}

/// `GET /console/?token=…`: exchange the one-time token for a session.
pub(super) fn redeem(
    broker: &Broker,
    console: &Console,
    peer: &str,
    token: &str,
    tls: bool,
) -> Result<Response, ConsoleError> {
    if !console.sessions.redeem(token) {
        let reason = "the one-time token is wrong or was used already";
        audit_signin(broker, peer, None, false, reason);
        broker.auth().record_failure(peer, broker.now());
        return Err(ConsoleError::SignInRefused(reason.into()));
    }
    let p = local_owner(broker)?;
    let now = broker.now();
    audit_signin(broker, peer, Some(&p), true, "one_time_token");
    let (id, _) = console
        .sessions
        .open(p, now.saturating_add(SESSION_MS), now);
    Ok(token_redeemed(&id, tls))
}

/// `POST /console/signin`.
pub(super) async fn sign_in(
    State(broker): State<Arc<Broker>>,
    Extension(console): Extension<Arc<Console>>,
    peer: PeerInfo,
    tls: OverTls,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let peer = peer_text(&peer);
    guard::check_signin_csrf(&headers)?;
    let form = Form::parse(&body);
    let audience = format!("sb://{}/", host_of(&headers, &uri));
    let now = broker.now();
    let token = credential_token(&form, &audience, now)?;
    let (p, until) = broker
        .auth()
        .verify_from(&token, &audience, broker.policies(), &peer, now)
        .map_err(|e| {
            let d = match e {
                keybus_auth::Refusal::Invalid(d) | keybus_auth::Refusal::Limited(d, _) => d,
            };
            audit_signin(&broker, &peer, None, false, &d);
            ConsoleError::SignInRefused(d)
        })?;
    audit_signin(&broker, &peer, Some(&p), true, p.kind.as_str());
    let expires = until.min(now.saturating_add(SESSION_MS));
    let (id, _) = console.sessions.open(p, expires, now);
    Ok(signed_in(&id, tls.is_some()))
}

/// `POST /console/signout`.
pub(super) async fn sign_out(
    State(broker): State<Arc<Broker>>,
    Extension(console): Extension<Arc<Console>>,
    tls: OverTls,
    headers: HeaderMap,
) -> Result<Response, ConsoleError> {
    let (id, session) = guard::session(&console, &headers, broker.now())?;
    guard::check_csrf(&headers, &session)?;
    console.sessions.close(&id);
    Ok(signed_in("", tls.is_some()))
}
