//! `POST /console/cancel?e=<queue>&seq=<n>`: cancel a scheduled message, through the entity's
//! `cancel_scheduled` (the code `$management`'s `cancel-scheduled-message` uses), committed
//! before the answer. Needs Send, as the management operation does.

use std::sync::Arc;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use keybus_auth::Right;

use super::Console;
use super::access;
use super::error::ConsoleError;
use super::form::query;
use super::layout::notice;
use crate::http::{PeerInfo, peer_text};
use crate::runtime::Broker;

/// The `seq` of the query.
pub(super) fn sequence_number(uri: &Uri) -> Result<i64, ConsoleError> {
    let raw = query(uri, "seq").unwrap_or_default();
    raw.parse()
        .map_err(|_| ConsoleError::BadRequest(format!("'{raw}' is not a sequence number")))
}

pub(super) async fn cancel(
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
        "console.cancel",
        Right::Send,
        &path,
    )?;
    let seq = sequence_number(&uri)?;
    let entity = broker
        .entity(&path)
        .ok_or_else(|| ConsoleError::NotFound(format!("there is no queue or topic '{path}'")))?;
    let commit = {
        let mut st = entity.lock();
        st.machine.cancel_scheduled(&[seq]);
        entity.submit(&mut st)
    };
    if let Some(f) = commit {
        f.await.map_err(|e| {
            ConsoleError::Unavailable(format!("the cancellation could not be stored yet: {e}"))
        })?;
    }
    Ok(notice(&format!(
        "Scheduled message {seq} of {path} is cancelled (if it was still scheduled)."
    )))
}
