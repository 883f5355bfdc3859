//! Every console decision goes through `keybus_auth::Auth` (the same decision code as AMQP
//! and REST): [`can`] decides what a page shows (not audited), [`enforce`] decides an action
//! and writes its audit line naming the principal, and [`post`] is the one gate of every
//! signed-in POST (session, CSRF, decision; a refused CSRF check is audited too).

use axum::http::HeaderMap;
use keybus_auth::{Principal, Right};

use super::Console;
use super::error::ConsoleError;
use super::guard;
use super::sessions::Session;
use crate::runtime::Broker;

/// May `p` do `right` on `path`? (For what a page offers; the action itself is enforced.)
pub(super) fn can(broker: &Broker, p: &Principal, right: Right, path: &str) -> bool {
    let auth = broker.auth();
    let policy = auth.policy();
    auth.decide_with(&policy, p, right, &path.to_ascii_lowercase(), broker.now())
        .0
        .allow
}

/// May `p` read `path` (browse: Listen or Manage)?
pub(super) fn can_read(broker: &Broker, p: &Principal, path: &str) -> bool {
    can(broker, p, Right::Listen, path) || can(broker, p, Right::Manage, path)
}

/// Decide `right` on `path` for `p` and write the audit line (`event`, the principal, the
/// client's address); a denial is `403`.
pub(super) fn enforce(
    broker: &Broker,
    peer: &str,
    p: &Principal,
    event: &'static str,
    right: Right,
    path: &str,
) -> Result<(), ConsoleError> {
    let path = path.to_ascii_lowercase();
    let d = broker
        .auth()
        .check(event, p, right, &path, broker.now(), None, Some(peer), None);
    if d.allow {
        Ok(())
    } else {
        Err(ConsoleError::Forbidden(format!(
            "'{}' may not {} on '{path}' ({})",
            p.key,
            right.action(),
            d.reason
        )))
    }
}

/// Decide a read of `path` (Listen, else Manage), audited as `event`.
pub(super) fn enforce_read(
    broker: &Broker,
    peer: &str,
    p: &Principal,
    event: &'static str,
    path: &str,
) -> Result<(), ConsoleError> {
    let right = if can(broker, p, Right::Listen, path) {
        Right::Listen
    } else {
        Right::Manage
    };
    enforce(broker, peer, p, event, right, path)
}

/// The gate of a signed-in POST: a live session, its CSRF token in the header (a refusal
/// is audited as `console.csrf`), and `right` on `path` (audited as `event`).
pub(super) fn post(
    broker: &Broker,
    console: &Console,
    headers: &HeaderMap,
    peer: &str,
    event: &'static str,
    right: Right,
    path: &str,
) -> Result<Session, ConsoleError> {
    let (_, session) = guard::session(console, headers, broker.now())?;
    if let Err(e) = guard::check_csrf(headers, &session) {
        broker.auth().audit.record(keybus_auth::audit::Event {
            event: "console.csrf",
            allow: false,
            reason: e.to_string(),
            principal: Some(session.principal.audit_json(&[])),
            action: Some(right.action().into()),
            entity: Some(path.to_ascii_lowercase()),
            peer: Some(peer.to_string()),
            ..Default::default()
        });
        return Err(e);
    }
    enforce(broker, peer, &session.principal, event, right, path)?;
    Ok(session)
}
