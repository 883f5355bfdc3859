//! `POST /console/purge?e=<queue or subscription>&dlq=0|1`: drop every message of the entity
//! or of its dead-letter queue through `Queue::purge_messages` (one store batch), only with
//! the typed confirmation (the field `confirm` repeats the entity path). Needs Manage.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use keybus_auth::Right;
use keybus_core::SubQueue;

use super::Console;
use super::access;
use super::browse::target;
use super::error::ConsoleError;
use super::form::{Form, query};
use super::layout::notice;
use crate::http::{PeerInfo, peer_text};
use crate::runtime::Broker;

/// The typed confirmation: the entity path, exactly (case aside).
pub(super) fn confirmed(form: &Form, path: &str) -> Result<(), ConsoleError> {
    match form.get("confirm") {
        Some(c) if c.eq_ignore_ascii_case(path) => Ok(()),
        _ => Err(ConsoleError::BadRequest(format!(
            "type the entity path '{path}' to confirm the purge"
        ))),
    }
}

pub(super) async fn purge(
    State(broker): State<Arc<Broker>>,
    Extension(console): Extension<Arc<Console>>,
    peer: PeerInfo,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let peer = peer_text(&peer);
    let path = query(&uri, "e").unwrap_or_default().to_ascii_lowercase();
    let dlq = query(&uri, "dlq").is_some_and(|v| v == "1");
    access::post(
        &broker,
        &console,
        &headers,
        &peer,
        "console.purge",
        Right::Manage,
        &path,
    )?;
    let t = target(&broker, &path)?;
    confirmed(&Form::parse(&body), &t.path)?;
    let sub = if dlq {
        SubQueue::DeadLetter
    } else {
        SubQueue::Main
    };
    let (n, commit) = {
        let mut st = t.entity.lock();
        let q = st
            .receiver(t.subscription.as_deref())
            .ok_or_else(|| ConsoleError::NotFound(format!("there is no entity '{}'", t.path)))?;
        let n = q.purge_messages(sub);
        (n, t.entity.submit(&mut st))
    };
    if let Some(f) = commit {
        f.await.map_err(|e| {
            ConsoleError::Unavailable(format!("the purge could not be stored yet: {e}"))
        })?;
    }
    tracing::info!(entity = %t.path, dead_letter = dlq, messages = n, "console purge");
    Ok(notice(&format!(
        "Purged {n} message{} from {}{}.",
        if n == 1 { "" } else { "s" },
        t.path,
        if dlq { " (dead-letter queue)" } else { "" }
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_confirmation_must_name_the_entity() {
        assert!(confirmed(&Form::parse(b"confirm=Orders"), "orders").is_ok());
        assert!(confirmed(&Form::parse(b"confirm=order"), "orders").is_err());
        assert!(confirmed(&Form::parse(b""), "orders").is_err());
    }
}
