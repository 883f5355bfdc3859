//! What protects every console request: the security headers on every answer (a strict
//! Content-Security-Policy: scripts, styles and connections from the broker only, no inline
//! code, no framing), the session cookie (`HttpOnly`, `SameSite=Strict`, `Secure` over HTTPS,
//! path `/console/`), and the CSRF rule: every POST carries the session's token in
//! `X-Keybus-Csrf` (a header a cross-site form cannot send) and, when the browser names an
//! `Origin`, it is the host the request addressed.

use axum::Extension;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;

use super::Console;
use super::error::ConsoleError;
use super::sessions::Session;

/// The session cookie's name.
pub(super) const COOKIE: &str = "keybus_console";
/// The CSRF header every POST carries.
pub(super) const CSRF_HEADER: &str = "x-keybus-csrf";

/// The Content-Security-Policy of every console answer.
pub(super) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Add the security headers to a console answer.
pub(super) async fn secure_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

/// The `Set-Cookie` value for session `id` (an empty id with `Max-Age=0` ends it).
pub(super) fn cookie(id: &str, secure: bool) -> String {
    let mut c = format!("{COOKIE}={id}; Path=/console/; HttpOnly; SameSite=Strict");
    if id.is_empty() {
        c.push_str("; Max-Age=0");
    }
    if secure {
        c.push_str("; Secure");
    }
    c
}

/// The session id the request's cookie names.
pub(super) fn session_id(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// The signed-in session of a request.
pub(super) fn session(
    console: &Console,
    headers: &HeaderMap,
    now: i64,
) -> Result<(String, Session), ConsoleError> {
    let id = session_id(headers)
        .ok_or_else(|| ConsoleError::SignInRequired("no console session cookie".into()))?;
    let s = console.sessions.get(&id, now).ok_or_else(|| {
        ConsoleError::SignInRequired("the console session ended or is unknown".into())
    })?;
    Ok((id, s))
}

/// Equal bytes, in time that depends on the length only.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// The `Origin` rule: absent, or naming the host the request addressed.
fn same_origin(headers: &HeaderMap) -> Result<(), ConsoleError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let origin_host = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"))
        .unwrap_or("");
    if host.is_empty() || origin_host != host {
        return Err(ConsoleError::Csrf(format!(
            "the request comes from origin '{origin}', not from this console"
        )));
    }
    Ok(())
}

/// The CSRF check of a signed-in POST: the header equals the session's token.
pub(super) fn check_csrf(headers: &HeaderMap, session: &Session) -> Result<(), ConsoleError> {
    same_origin(headers)?;
    let sent = headers
        .get(CSRF_HEADER)
        .ok_or_else(|| ConsoleError::Csrf(format!("the {CSRF_HEADER} header is missing")))?;
    if !same(sent.as_bytes(), session.csrf.as_bytes()) {
        return Err(ConsoleError::Csrf(format!(
            "the {CSRF_HEADER} header does not match the session"
        )));
    }
    Ok(())
}

/// The CSRF check of the sign-in POST (no session yet): the header is present and the
/// origin is this console.
pub(super) fn check_signin_csrf(headers: &HeaderMap) -> Result<(), ConsoleError> {
    same_origin(headers)?;
    if headers.get(CSRF_HEADER).is_none() {
        return Err(ConsoleError::Csrf(format!(
            "the {CSRF_HEADER} header is missing"
        )));
    }
    Ok(())
}

/// Whether the request came over HTTPS (cookies are then `Secure`).
pub(super) type OverTls = Option<Extension<crate::http::token_service::OverTls>>;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use keybus_auth::{CredentialKind, Principal, policy::Subject};

    fn sess() -> Session {
        Session {
            principal: Principal {
                key: "sas:root".into(),
                kind: CredentialKind::Sas,
                subject: Subject::default(),
                sas: None,
                iss: None,
                kid: None,
                jti: None,
                token_sha256: None,
            },
            csrf: "abc".into(),
            expires_at: 1,
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn csrf_needs_the_sessions_token_and_the_same_origin() {
        let s = sess();
        assert!(check_csrf(&headers(&[]), &s).is_err());
        assert!(check_csrf(&headers(&[("x-keybus-csrf", "abd")]), &s).is_err());
        assert!(check_csrf(&headers(&[("x-keybus-csrf", "abc")]), &s).is_ok());
        let cross = headers(&[
            ("x-keybus-csrf", "abc"),
            ("host", "127.0.0.1:5300"),
            ("origin", "http://evil.example"),
        ]);
        assert!(matches!(check_csrf(&cross, &s), Err(ConsoleError::Csrf(_))));
        let same = headers(&[
            ("x-keybus-csrf", "abc"),
            ("host", "127.0.0.1:5300"),
            ("origin", "http://127.0.0.1:5300"),
        ]);
        assert!(check_csrf(&same, &s).is_ok());
    }

    #[test]
    fn cookies_are_http_only_strict_and_secure_over_tls() {
        assert_eq!(
            cookie("x", false),
            "keybus_console=x; Path=/console/; HttpOnly; SameSite=Strict"
        );
        assert!(cookie("x", true).ends_with("; Secure"));
        assert!(cookie("", false).contains("Max-Age=0"));
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let h = headers(&[("cookie", "a=1; keybus_console=s1; b=2")]);
        assert_eq!(session_id(&h).as_deref(), Some("s1"));
        assert_eq!(session_id(&headers(&[("cookie", "a=1")])), None);
    }
}
