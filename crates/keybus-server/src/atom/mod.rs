//! The Service Bus ATOM/XML management API (what `ServiceBusAdministrationClient` speaks) on
//! the broker's HTTP and HTTPS listeners.
//!
//! # Design
//! One catch-all route: the request path is percent-decoded once and split into a
//! [`Target`] (`$namespaceinfo`, `$Resources/{queues,topics}`, `{path}`,
//! `{topic}/Subscriptions[/{sub}[/Rules[/{rule}]]]`, segment names case-insensitive), then
//! authorised with the SAS token in `Authorization` (`sas::validate`, audience = the target
//! path; `Manage` for changes, `Manage` or `Listen` to read), then served by `handlers.rs`:
//! bodies are parsed by `xml.rs`, changes go through `Broker`'s lifecycle methods
//! (`admin.rs`). Every failure is an [`AtomError`], mapped to its HTTP status in one place
//! ([`AtomError::status`]) and answered with Service Bus's `<Error><Code/><Detail/></Error>`.

mod handlers;
pub mod xml;

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};

use crate::admin::AdminError;
use crate::auth::Principal;
use crate::broker::Broker;
use crate::config::Right;

/// Largest request body accepted.
pub const MAX_BODY: usize = 1024 * 1024;
/// Largest REST messaging request body: the largest message an entity may allow, plus room.
pub const MAX_REST_BODY: usize = 101 * 1024 * 1024;
/// Longest subscription or rule name (Service Bus limit).
pub const MAX_CHILD_NAME: usize = 50;

/// Why a management request failed; [`AtomError::status`] is the one mapping to HTTP.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AtomError {
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    QuotaExceeded(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    Unavailable(String),
    /// A refused token from a source that failed too often: `429`, retry after (seconds).
    #[error("{0}")]
    TooManyRequests(String, u64),
}

impl AtomError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::QuotaExceeded(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooManyRequests(..) => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

impl From<AdminError> for AtomError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::NotFound(m) => Self::NotFound(m),
            AdminError::AlreadyExists(m) => Self::Conflict(m),
            AdminError::Invalid(m) => Self::BadRequest(m),
            AdminError::QuotaExceeded(m) => Self::QuotaExceeded(m),
            AdminError::Store(e) => {
                Self::Unavailable(format!("the change could not be stored: {e}"))
            }
        }
    }
}

impl IntoResponse for AtomError {
    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = match &self {
            Self::TooManyRequests(_, s) => Some(*s),
            _ => None,
        };
        let body = xml::error(status.as_u16(), &self.to_string());
        let mut resp = (
            status,
            [(header::CONTENT_TYPE, "application/xml; charset=utf-8")],
            body,
        )
            .into_response();
        if status == StatusCode::METHOD_NOT_ALLOWED
            && let Ok(v) = header::HeaderValue::from_str("GET, PUT, DELETE")
        {
            resp.headers_mut().insert(header::ALLOW, v);
        }
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
            // Each further guess costs the client a new connection.
            resp.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        resp
    }
}

/// The routes of the management API (merged into the HTTP router in `http.rs`).
pub fn routes() -> Router<Arc<Broker>> {
    // A fallback, not a `/{*path}` route: the token service's `/{tenant}/…` routes would
    // conflict with a catch-all.
    Router::new()
        .fallback(serve)
        // REST sends carry messages up to the largest entity limit (100 MB); descriptions
        // are capped at MAX_BODY in `serve`.
        .layer(DefaultBodyLimit::max(MAX_REST_BODY))
}

async fn serve(
    State(broker): State<Arc<Broker>>,
    peer: crate::http::PeerInfo,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let peer = crate::http::peer_text(&peer);
    let result = match body {
        Ok(body) => {
            match crate::rest::dispatch(&broker, &peer, &method, &uri, &headers, &body).await {
                Some(r) => r,
                None if body.len() > MAX_BODY => Err(AtomError::PayloadTooLarge(format!(
                    "the request body is larger than {MAX_BODY} bytes"
                ))),
                None => handlers::dispatch(&broker, &peer, &method, &uri, &headers, body).await,
            }
        }
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(AtomError::PayloadTooLarge(
            format!("the request body is larger than {MAX_BODY} bytes"),
        )),
        Err(e) => Err(AtomError::BadRequest(format!(
            "the request body could not be read: {e}"
        ))),
    };
    match result {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(%method, path = %uri.path(), status = %e.status(), error = %e, "management request refused");
            e.into_response()
        }
    }
}

// ------------------------------------------------------------------ paths

/// What a request path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    NamespaceInfo,
    /// `$Resources/Queues` or `$Resources/Topics`.
    List {
        topics: bool,
    },
    /// A queue or a topic.
    Entity(String),
    Subscriptions(String),
    Subscription(String, String),
    Rules(String, String),
    Rule(String, String, String),
}

impl Target {
    /// The path tokens are checked against (as the SDKs sign it).
    pub fn auth_path(&self) -> String {
        match self {
            Target::NamespaceInfo => "$namespaceinfo".into(),
            Target::List { topics: false } => "$Resources/Queues".into(),
            Target::List { topics: true } => "$Resources/Topics".into(),
            Target::Entity(p) => p.clone(),
            Target::Subscriptions(t) => format!("{t}/Subscriptions"),
            Target::Subscription(t, s) => format!("{t}/Subscriptions/{s}"),
            Target::Rules(t, s) => format!("{t}/Subscriptions/{s}/Rules"),
            Target::Rule(t, s, r) => format!("{t}/Subscriptions/{s}/Rules/{r}"),
        }
    }
}

fn bad(msg: impl Into<String>) -> AtomError {
    AtomError::BadRequest(msg.into())
}

/// Decode `%XX` escapes once; invalid escapes and non-UTF-8 results are refused.
pub fn percent_decode(s: &str) -> Result<String, AtomError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while let Some(&c) = b.get(i) {
        if c == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| bad(format!("invalid percent-encoding in '{s}'")))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(c);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad(format!("'{s}' does not decode to UTF-8")))
}

fn check_path(path: &str) -> Result<(), AtomError> {
    keybus_core::validate_entity_name(path).map_err(|m| bad(format!("invalid path: {m}")))
}

fn check_child(kind: &str, name: &str, allow_default: bool) -> Result<(), AtomError> {
    if allow_default && name.eq_ignore_ascii_case("$Default") {
        return Ok(());
    }
    if name.is_empty() || name.len() > MAX_CHILD_NAME {
        return Err(bad(format!(
            "the {kind} name '{name}' must be 1 to {MAX_CHILD_NAME} characters"
        )));
    }
    check_path(name)
}

fn is(seg: &str, name: &str) -> bool {
    seg.eq_ignore_ascii_case(name)
}

/// Split a request path (as received, percent-encoded) into its target.
pub fn parse_target(raw: &str) -> Result<Target, AtomError> {
    let path = percent_decode(raw.strip_prefix('/').unwrap_or(raw))?;
    if path.is_empty() {
        return Err(AtomError::NotFound("no entity path given".into()));
    }
    if is(&path, "$namespaceinfo") {
        return Ok(Target::NamespaceInfo);
    }
    if let Some((first, rest)) = path.split_once('/')
        && is(first, "$Resources")
    {
        return match rest {
            r if is(r, "queues") => Ok(Target::List { topics: false }),
            r if is(r, "topics") => Ok(Target::List { topics: true }),
            _ => Err(AtomError::NotFound(format!(
                "unknown resource collection '{rest}': use $Resources/Queues or $Resources/Topics"
            ))),
        };
    }
    // The JavaScript client lists with a trailing slash (`{topic}/Subscriptions/`).
    let (path, trailing) = match path.strip_suffix('/') {
        Some(p) if !p.is_empty() => (p.to_string(), true),
        _ => (path, false),
    };
    let segs: Vec<&str> = path.split('/').collect();
    let n = segs.len();
    let join = |k: usize| segs.get(..k).map(|s| s.join("/")).unwrap_or_default();
    let seg = |k: usize| segs.get(k).copied().unwrap_or_default().to_string();
    let at = |k: usize, name: &str| segs.get(k).is_some_and(|s| is(s, name));
    let target = if n >= 5 && at(n - 2, "Rules") && at(n - 4, "Subscriptions") {
        Target::Rule(join(n - 4), seg(n - 3), seg(n - 1))
    } else if n >= 4 && at(n - 1, "Rules") && at(n - 3, "Subscriptions") {
        Target::Rules(join(n - 3), seg(n - 2))
    } else if n >= 3 && at(n - 2, "Subscriptions") {
        Target::Subscription(join(n - 2), seg(n - 1))
    } else if n >= 2 && at(n - 1, "Subscriptions") {
        Target::Subscriptions(join(n - 1))
    } else {
        Target::Entity(path.clone())
    };
    if trailing && !matches!(target, Target::Subscriptions(_) | Target::Rules(..)) {
        return Err(bad(format!("invalid path: '{path}/' ends with a slash")));
    }
    match &target {
        Target::Entity(p) | Target::Subscriptions(p) => check_path(p)?,
        Target::Subscription(t, s) | Target::Rules(t, s) => {
            check_path(t)?;
            check_child("subscription", s, false)?;
        }
        Target::Rule(t, s, r) => {
            check_path(t)?;
            check_child("subscription", s, false)?;
            check_child("rule", r, true)?;
        }
        Target::NamespaceInfo | Target::List { .. } => {}
    }
    Ok(target)
}

/// Names of entities created through the API: letters, digits, `.`, `-`, `_` (and `/` in
/// queue and topic paths), as Service Bus allows.
pub fn check_new_name(name: &str, slashes: bool) -> Result<(), AtomError> {
    let ok = name.chars().all(|c| {
        c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') || (slashes && c == '/')
    });
    if slashes
        && name
            .split('/')
            .any(|seg| is(seg, "Subscriptions") || is(seg, "Rules"))
    {
        return Err(bad(format!(
            "the path '{name}' may not have a segment named Subscriptions or Rules"
        )));
    }
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "the name '{name}' may contain only letters, digits, '.', '-', '_'{}",
            if slashes { " and '/'" } else { "" }
        )))
    }
}

// ------------------------------------------------------------------ authorisation

/// The rights an operation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Create, update, delete.
    Manage,
    /// Get and list entities: `Manage` or `Listen`.
    Read,
    /// Send messages (REST).
    Send,
    /// Receive and settle messages (REST).
    Listen,
    /// `$namespaceinfo`: any right.
    Any,
}

/// Validate the token in `Authorization` (`SharedAccessSignature …` or `Bearer <jwt>`) for
/// `path` and check, through the access policy, that its holder may do `need`. Audited with
/// the client's address `peer`; refused tokens count against its rate limit (a limited source
/// gets `429` for further refused tokens, a valid token is still accepted).
pub fn authorize(
    broker: &Broker,
    peer: &str,
    headers: &HeaderMap,
    host: &str,
    path: &str,
    need: Need,
) -> Result<Principal, AtomError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| {
            AtomError::Unauthorized(
                "the Authorization header is missing: send a SharedAccessSignature or Bearer token"
                    .into(),
            )
        })?
        .to_str()
        .map_err(|_| AtomError::Unauthorized("the Authorization header is not ASCII".into()))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .unwrap_or(value)
        .trim();
    let audience = format!("sb://{host}/{path}");
    let now = broker.now();
    let auth = &broker.auth;
    let (principal, _) = auth
        .verify_from(token, &audience, &broker.policies, peer, now)
        .map_err(|e| {
            auth.audit.record(crate::auth::audit::Event {
                event: "http.token",
                allow: false,
                reason: e.reason(),
                entity: Some(path.to_ascii_lowercase()),
                peer: Some(peer.to_string()),
                ..Default::default()
            });
            match e {
                crate::auth::Refusal::Limited(d, ms) => {
                    AtomError::TooManyRequests(d, (ms.max(0) as u64).div_ceil(1000))
                }
                crate::auth::Refusal::Invalid(d) => {
                    AtomError::Unauthorized(format!("Unauthorized: {d}"))
                }
            }
        })?;
    let lower = path.to_ascii_lowercase();
    let rights: &[Right] = match need {
        Need::Manage => &[Right::Manage],
        Need::Read => &[Right::Manage, Right::Listen],
        Need::Any => &[Right::Manage, Right::Listen, Right::Send],
        Need::Send => &[Right::Send],
        Need::Listen => &[Right::Listen],
    };
    // Audit the first right that allows it, or the denial of the main one.
    let policy = auth.policy();
    let allowed = rights.iter().any(|r| {
        auth.decide_with(&policy, &principal, *r, &lower, now)
            .0
            .allow
    });
    let audited = if allowed {
        rights
            .iter()
            .copied()
            .find(|r| {
                auth.decide_with(&policy, &principal, *r, &lower, now)
                    .0
                    .allow
            })
            .unwrap_or(rights[0])
    } else {
        rights[0]
    };
    let d = auth.check(
        "http.authz",
        &principal,
        audited,
        &lower,
        now,
        None,
        Some(peer),
        None,
    );
    if !d.allow {
        let needed = match need {
            Need::Manage => "the Manage right",
            Need::Read => "the Manage or Listen right",
            Need::Any => "a right",
            Need::Send => "the Send right",
            Need::Listen => "the Listen right",
        };
        return Err(AtomError::Unauthorized(format!(
            "Unauthorized: this operation on '{path}' needs {needed}; '{}' does not have it ({})",
            principal.key, d.reason
        )));
    }
    Ok(principal)
}

/// The host the client addressed (for ids, links and token audiences); `localhost` if the
/// request names none or an odd one.
pub fn host_of(headers: &HeaderMap, uri: &Uri) -> String {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| uri.authority().map(|a| a.to_string()))
        .unwrap_or_default();
    let ok = !host.is_empty()
        && host.len() <= 255
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
    if ok { host } else { "localhost".into() }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn targets() {
        let t = |p: &str| parse_target(p).unwrap();
        assert_eq!(t("/$namespaceinfo"), Target::NamespaceInfo);
        assert_eq!(t("/$Resources/queues"), Target::List { topics: false });
        assert_eq!(t("/$resources/Topics"), Target::List { topics: true });
        assert_eq!(t("/orders"), Target::Entity("orders".into()));
        // Python percent-encodes slashes in names; JavaScript sends them as they are.
        assert_eq!(t("/q%2Fa"), Target::Entity("q/a".into()));
        assert_eq!(t("/q/a"), Target::Entity("q/a".into()));
        assert_eq!(t("/t/subscriptions"), Target::Subscriptions("t".into()));
        assert_eq!(t("/t/Subscriptions/"), Target::Subscriptions("t".into()));
        assert_eq!(
            t("/t/Subscriptions/s/Rules/"),
            Target::Rules("t".into(), "s".into())
        );
        assert_eq!(
            t("/a%2Fb/Subscriptions/s"),
            Target::Subscription("a/b".into(), "s".into())
        );
        assert_eq!(
            t("/t/subscriptions/s/rules"),
            Target::Rules("t".into(), "s".into())
        );
        assert_eq!(
            t("/t/Subscriptions/s/Rules/$Default"),
            Target::Rule("t".into(), "s".into(), "$Default".into())
        );
        assert_eq!(
            Target::Rule("t".into(), "s".into(), "r".into()).auth_path(),
            "t/Subscriptions/s/Rules/r"
        );
    }

    #[test]
    fn bad_paths_are_refused() {
        for p in [
            "/..",
            "/a/../b",
            "/a%2F..%2Fb",
            "/%2E%2E",
            "/a//b",
            "/%2Fa",
            "/a%2F",
            "/a/",
            "/t/Subscriptions/s/",
            "/a%5Cb",
            "/a@b",
            "/a%3Fb",
            "/a%23b",
            "/a*",
            "/$x",
            "/a/$b",
            "/a%zz",
            "/a%",
            "/a%C3",
            "/a%00b",
            "/t/Subscriptions/..",
            "/t/Subscriptions/$x",
            "/t/Subscriptions/s/Rules/$x",
            "/t/Subscriptions/s/Rules/..",
        ] {
            assert!(
                matches!(parse_target(p), Err(AtomError::BadRequest(_))),
                "{p}: {:?}",
                parse_target(p)
            );
        }
        let long = format!("/t/Subscriptions/{}", "s".repeat(51));
        assert!(matches!(parse_target(&long), Err(AtomError::BadRequest(_))));
        assert!(matches!(parse_target("/"), Err(AtomError::NotFound(_))));
        assert!(matches!(
            parse_target("/$Resources/other"),
            Err(AtomError::NotFound(_))
        ));
        assert!(check_new_name("a-b.c_d/e", true).is_ok());
        assert!(check_new_name("a/b", false).is_err());
        assert!(check_new_name("a%2Fb", true).is_err());
        assert!(check_new_name("a b", true).is_err());
        assert!(check_new_name("t/subscriptions/x", true).is_err());
    }

    #[test]
    fn errors_map_to_statuses() {
        assert_eq!(
            AtomError::from(AdminError::AlreadyExists("x".into())).status(),
            StatusCode::CONFLICT
        );
        assert_eq!(
            AtomError::from(AdminError::NotFound("x".into())).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            AtomError::from(AdminError::Invalid("x".into())).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            AtomError::from(AdminError::QuotaExceeded("x".into())).status(),
            StatusCode::FORBIDDEN
        );
    }
}
