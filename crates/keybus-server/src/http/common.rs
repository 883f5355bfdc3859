//! What the management (ATOM) and messaging (REST) APIs share: the HTTP error with its one
//! mapping to a status code and Service Bus's `<Error>` body, the authorisation of a request
//! by its token, the host a client addressed, and percent decoding.

use axum::http::{HeaderMap, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};
use quick_xml::escape::escape;

use crate::runtime::Broker;
use crate::runtime::lifecycle::AdminError;
use keybus_auth::Principal;
use keybus_auth::Right;

/// Why a management or messaging request failed; [`HttpError::status`] is the one mapping to
/// HTTP.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HttpError {
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
    /// The store cannot keep up (`StoreError::Busy`): `503` with `Retry-After` (seconds).
    #[error("{0}")]
    ServerBusy(String, u64),
    /// A refused token from a source that failed too often: `429`, retry after (seconds).
    #[error("{0}")]
    TooManyRequests(String, u64),
}

impl HttpError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::QuotaExceeded(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable(_) | Self::ServerBusy(..) => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooManyRequests(..) => StatusCode::TOO_MANY_REQUESTS,
        }
    }
}

impl From<AdminError> for HttpError {
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

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (retry_after, close) = match &self {
            // Each further guess costs the client a new connection.
            Self::TooManyRequests(_, s) => (Some(*s), true),
            Self::ServerBusy(_, s) => (Some(*s), false),
            _ => (None, false),
        };
        let body = error_body(status.as_u16(), &self.to_string());
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
        }
        if close {
            resp.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        resp
    }
}

/// The error body Service Bus sends (`<?xml …?><Error><Code/><Detail/></Error>`).
pub fn error_body(code: u16, detail: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>{code}</Code><Detail>{}</Detail></Error>",
        escape(detail)
    )
}

/// What stays as it is in a URL component: RFC 3986's unreserved characters (letters,
/// digits, `-`, `_`, `.`, `~`); everything else is percent-encoded (UTF-8 bytes).
pub const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
/// An entity path in a URL: its slashes and `$` (as in `$Resources`) kept.
pub const ENTITY_PATH: &AsciiSet = &UNRESERVED.remove(b'/').remove(b'$');

/// A `400 Bad Request` with `msg`.
pub fn bad(msg: impl Into<String>) -> HttpError {
    HttpError::BadRequest(msg.into())
}

/// Decode `%XX` escapes once; invalid escapes and non-UTF-8 results are refused.
pub fn percent_decode(s: &str) -> Result<String, HttpError> {
    // The crate passes a malformed escape through as it is; Service Bus paths refuse it.
    let malformed = s.split('%').skip(1).any(|rest| {
        rest.as_bytes()
            .get(..2)
            .is_none_or(|h| !h.iter().all(u8::is_ascii_hexdigit))
    });
    if malformed {
        return Err(bad(format!("invalid percent-encoding in '{s}'")));
    }
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| bad(format!("'{s}' does not decode to UTF-8")))
}

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
) -> Result<Principal, HttpError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or_else(|| {
            HttpError::Unauthorized(
                "the Authorization header is missing: send a SharedAccessSignature or Bearer token"
                    .into(),
            )
        })?
        .to_str()
        .map_err(|_| HttpError::Unauthorized("the Authorization header is not ASCII".into()))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .unwrap_or(value)
        .trim();
    let audience = format!("sb://{host}/{path}");
    let now = broker.now();
    let auth = &broker.auth();
    let (principal, _) = auth
        .verify_from(token, &audience, broker.policies(), peer, now)
        .map_err(|e| {
            auth.audit.record(keybus_auth::audit::Event {
                event: "http.token",
                allow: false,
                reason: e.reason(),
                entity: Some(path.to_ascii_lowercase()),
                peer: Some(peer.to_string()),
                ..Default::default()
            });
            match e {
                keybus_auth::Refusal::Limited(d, ms) => {
                    HttpError::TooManyRequests(d, (ms.max(0) as u64).div_ceil(1000))
                }
                keybus_auth::Refusal::Invalid(d) => {
                    HttpError::Unauthorized(format!("Unauthorized: {d}"))
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
        return Err(HttpError::Unauthorized(format!(
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
    fn percent_decoding() {
        assert_eq!(percent_decode("a%2Fb%20c").unwrap(), "a/b c");
        assert_eq!(percent_decode("plain").unwrap(), "plain");
        for bad in ["a%zz", "a%", "a%2", "a%C3", "%%41"] {
            assert!(percent_decode(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn percent_encoding_sets() {
        let enc = |s, set| percent_encoding::utf8_percent_encode(s, set).to_string();
        assert_eq!(enc("a/b $c~é", ENTITY_PATH), "a/b%20$c~%C3%A9");
        assert_eq!(enc("a/b$c-1.2_x", UNRESERVED), "a%2Fb%24c-1.2_x");
    }

    #[test]
    fn error_bodies_are_escaped() {
        assert_eq!(
            error_body(400, "a<b"),
            "<?xml version=\"1.0\" encoding=\"utf-8\"?><Error><Code>400</Code><Detail>a&lt;b</Detail></Error>"
        );
    }

    #[test]
    fn errors_map_to_statuses() {
        assert_eq!(
            HttpError::from(AdminError::AlreadyExists("x".into())).status(),
            StatusCode::CONFLICT
        );
        assert_eq!(
            HttpError::from(AdminError::NotFound("x".into())).status(),
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            HttpError::from(AdminError::Invalid("x".into())).status(),
            StatusCode::BAD_REQUEST
        );
        assert_eq!(
            HttpError::from(AdminError::QuotaExceeded("x".into())).status(),
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn server_busy_is_503_with_retry_after_on_a_kept_connection() {
        let resp = HttpError::ServerBusy("busy".into(), 1).into_response();
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            resp.headers().get(header::RETRY_AFTER),
            Some(&header::HeaderValue::from(1u64))
        );
        assert!(resp.headers().get(header::CONNECTION).is_none());
    }
}
