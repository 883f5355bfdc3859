//! `POST /console/deferred?e=<queue or subscription>&seq=<n>`: receive a deferred message and
//! complete it at once, through `Queue::receive_deferred` in receive-and-delete mode (the
//! code `$management`'s `receive-by-sequence-number` uses), committed before the answer.
//! Needs Listen.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use keybus_auth::Right;
use keybus_core::{ReceiveMode, SubQueue};

use super::Console;
use super::access;
use super::browse::target;
use super::error::ConsoleError;
use super::form::query;
use super::layout::notice;
use super::scheduled::sequence_number;
use crate::http::{PeerInfo, peer_text};
use crate::runtime::Broker;

pub(super) async fn take(
    State(broker): State<Arc<Broker>>,
    Extension(console): Extension<Arc<Console>>,
    peer: PeerInfo,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ConsoleError> {
    let peer = peer_text(&peer);
    let path = query(&uri, "e").unwrap_or_default().to_ascii_lowercase();
    access::post(
        &broker,
        &console,
        &headers,
        &peer,
        "console.deferred",
        Right::Listen,
        &path,
    )?;
    let seq = sequence_number(&uri)?;
    let t = target(&broker, &path)?;
    let now = broker.now();
    let commit = {
        let mut st = t.entity.lock();
        let q = st
            .receiver(t.subscription.as_deref())
            .ok_or_else(|| ConsoleError::NotFound(format!("there is no entity '{}'", t.path)))?;
        q.receive_deferred(
            SubQueue::Main,
            &[seq],
            ReceiveMode::ReceiveAndDelete,
            None,
            now,
        )
        .map_err(|e| ConsoleError::NotFound(e.to_string()))?;
        t.entity.submit(&mut st)
    };
    if let Some(f) = commit {
        f.await.map_err(|e| {
            ConsoleError::Unavailable(format!("the completion could not be stored yet: {e}"))
        })?;
    }
    Ok(notice(&format!(
        "Deferred message {seq} of {} is received and completed.",
        t.path
    )))
}
