//! `POST /console/redrive?e=<queue or subscription>`: move the selected dead letters (`seq`
//! fields, with `which=selected`) or all of them (`which=all`) back into the entity, through
//! `Queue::redrive`: one store batch per request, the messages invisible until it is durable
//! (`Queue::finish_redrive`), put back into the dead-letter queue if it fails. Needs Manage.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use keybus_auth::Right;

use super::Console;
use super::access;
use super::browse::target;
use super::error::ConsoleError;
use super::form::{Form, query};
use super::layout::notice;
use crate::http::{PeerInfo, peer_text};
use crate::runtime::Broker;

/// The sequence numbers a redrive form selects (`None`: all).
pub(super) fn selection(form: &Form) -> Result<Option<Vec<i64>>, ConsoleError> {
    if form.get("which") == Some("all") {
        return Ok(None);
    }
    let seqs = form
        .all("seq")
        .map(|s| {
            s.trim()
                .parse::<i64>()
                .map_err(|_| ConsoleError::BadRequest(format!("'{s}' is not a sequence number")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if seqs.is_empty() {
        return Err(ConsoleError::BadRequest(
            "select the messages to redrive, or redrive all".into(),
        ));
    }
    Ok(Some(seqs))
}

pub(super) async fn redrive(
    State(broker): State<Arc<Broker>>,
    Extension(console): Extension<Arc<Console>>,
    peer: PeerInfo,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let peer = peer_text(&peer);
    let path = query(&uri, "e").unwrap_or_default().to_ascii_lowercase();
    access::post(
        &broker,
        &console,
        &headers,
        &peer,
        "console.redrive",
        Right::Manage,
        &path,
    )?;
    let t = target(&broker, &path)?;
    let seqs = selection(&Form::parse(&body))?;
    let now = broker.now();
    let not_found = || ConsoleError::NotFound(format!("there is no entity '{}'", t.path));
    let (moved, commit) = {
        let mut st = t.entity.lock();
        let q = st
            .receiver(t.subscription.as_deref())
            .ok_or_else(not_found)?;
        let moved = q.redrive(seqs.as_deref(), now);
        (moved, t.entity.submit(&mut st))
    };
    let durable = match commit {
        Some(f) => f.await.is_ok(),
        None => true,
    };
    let undo = {
        let mut st = t.entity.lock();
        let woke = st
            .receiver(t.subscription.as_deref())
            .is_some_and(|q| q.finish_redrive(&moved, durable));
        if woke {
            st.wake();
        }
        t.entity.submit(&mut st)
    };
    if let Some(f) = undo
        && let Err(e) = f.await
    {
        tracing::warn!(entity = %t.path, error = %e, "undoing a failed redrive is not stored yet");
    }
    if !durable {
        return Err(ConsoleError::Unavailable(
            "the redrive could not be stored; the messages stay in the dead-letter queue".into(),
        ));
    }
    tracing::info!(entity = %t.path, messages = moved.len(), "console redrive");
    Ok(notice(&format!(
        "Redrove {} message{} to {}.",
        moved.len(),
        if moved.len() == 1 { "" } else { "s" },
        t.path
    )))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn selections() {
        assert_eq!(selection(&Form::parse(b"which=all&seq=1")).unwrap(), None);
        assert_eq!(
            selection(&Form::parse(b"which=selected&seq=1&seq=5")).unwrap(),
            Some(vec![1, 5])
        );
        assert!(selection(&Form::parse(b"which=selected")).is_err());
        assert!(selection(&Form::parse(b"seq=x")).is_err());
    }
}
