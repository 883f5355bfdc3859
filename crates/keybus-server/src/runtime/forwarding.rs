//! The forwarder: moves messages of entities with `ForwardTo` / `ForwardDeadLetteredMessagesTo`
//! into their destinations.
//!
//! Each move is one store batch holding both the delete at the source and the put at the
//! destination, so after a crash a message is in exactly one of the two places. The source
//! keeps the message under a transfer lock while the batch is in flight (see
//! `keybus_core::queue::forwarding`), and the destination keeps its copy pending (invisible)
//! until the batch is durable; no entity lock is held across the commit, and never two at once.

use std::sync::Arc;
use std::time::Duration;

use keybus_core::{
    HOP_LIMIT_REASON, IncomingMessage, MAX_TRANSFER_HOPS, PendingSend, SubQueue, Transfer,
};

use super::entity::Entity;
use super::registry::Broker;

/// Messages moved per batch and source entity.
const BATCH: usize = 256;
/// How long the forwarder waits before it tries again while the store refuses writes.
const RETRY: Duration = Duration::from_secs(1);

/// Visit the entities the agenda names as they come, until the process ends.
pub(crate) async fn run(broker: Arc<Broker>) {
    loop {
        let Some(entity) = broker.agenda.next_forward().await.upgrade() else {
            continue;
        };
        // Nothing moves while the store refuses writes: the entity stays on the agenda.
        if broker.store.status().is_err() {
            broker.agenda.forward(Arc::downgrade(&entity));
            tokio::time::sleep(RETRY).await;
            continue;
        }
        if let Err(err) = forward_entity(&broker, &entity).await {
            tracing::error!(%err, entity = %entity.name, "forwarding stopped: store commit failed");
            tokio::time::sleep(RETRY).await;
        }
    }
}

/// A transfer from one of the entity's queues (`subscription` names which, for a topic).
struct Taken {
    subscription: Option<String>,
    transfer: Transfer,
}

/// Move everything the entity has to forward, a batch at a time.
async fn forward_entity(
    broker: &Broker,
    source: &Arc<Entity>,
) -> Result<(), keybus_core::StoreError> {
    loop {
        let now = broker.now();
        let taken: Vec<Taken> = {
            let mut st = source.forward_visit();
            let mut taken = Vec::new();
            for (subscription, q) in st.machine.queues_mut() {
                if taken.len() >= BATCH {
                    break;
                }
                for transfer in q.take_forwardable(BATCH - taken.len(), now) {
                    taken.push(Taken {
                        subscription: subscription.clone(),
                        transfer,
                    });
                }
            }
            // Expiries found on the way.
            if let Some(fut) = source.submit(&mut st) {
                tokio::spawn(fut);
            }
            taken
        };
        if taken.is_empty() {
            return Ok(());
        }
        let mut ops = Vec::new();
        let mut moved: Vec<(Option<String>, SubQueue, i64)> = Vec::new();
        let mut pendings: Vec<(Arc<Entity>, PendingSend)> = Vec::new();
        let mut failed: Vec<(Taken, &'static str, String)> = Vec::new();
        for t in taken {
            match send_on(broker, &t.transfer, now) {
                Ok((dest, pending, dest_ops)) => {
                    ops.extend(dest_ops);
                    ops.push(t.transfer.delete_op());
                    moved.push((t.subscription, t.transfer.sub, t.transfer.sequence_number));
                    pendings.push((dest, pending));
                }
                Err((reason, description)) => failed.push((t, reason, description)),
            }
        }
        if !failed.is_empty() {
            let mut st = source.lock();
            for (t, reason, description) in failed {
                tracing::warn!(
                    entity = %t.transfer.entity,
                    destination = %t.transfer.destination,
                    %reason,
                    %description,
                    "message could not be forwarded"
                );
                if let Some(q) = st.receiver(t.subscription.as_deref()) {
                    q.transfer_failed(
                        t.transfer.sub,
                        t.transfer.sequence_number,
                        reason,
                        description,
                    );
                }
            }
            if let Some(fut) = source.submit(&mut st) {
                tokio::spawn(fut);
            }
            st.wake();
        }
        if ops.is_empty() {
            continue;
        }
        let result = broker.store.commit(ops).await;
        let ok = result.is_ok();
        {
            let mut st = source.lock();
            for (subscription, sub, seq) in moved {
                if ok {
                    st.machine.forwarded(subscription.as_deref(), sub, seq);
                } else if let Some(q) = st.receiver(subscription.as_deref()) {
                    q.transfer_aborted(sub, seq);
                }
            }
            // Topic bodies no subscription needs any more.
            if let Some(fut) = source.submit(&mut st) {
                tokio::spawn(fut);
            }
        }
        for (dest, pending) in pendings {
            dest.lock().finish(&pending, ok);
        }
        result?;
    }
}

/// Accept the transferred message at its destination, pending; returns the destination's
/// ops for the shared batch, or why the message cannot go there.
#[allow(clippy::type_complexity)]
fn send_on(
    broker: &Broker,
    t: &Transfer,
    now: i64,
) -> Result<(Arc<Entity>, PendingSend, Vec<keybus_core::StoreOp>), (&'static str, String)> {
    if t.hops >= MAX_TRANSFER_HOPS {
        return Err((
            HOP_LIMIT_REASON,
            format!(
                "The message was forwarded {} times, the most allowed; it was not forwarded to '{}'.",
                t.hops, t.destination
            ),
        ));
    }
    let not_found = || {
        (
            "MessagingEntityNotFound",
            format!(
                "The forwarding destination '{}' of '{}' could not be found.",
                t.destination, t.entity
            ),
        )
    };
    let (dest, subscription) = broker
        .resolve(&t.destination.to_ascii_lowercase())
        .ok_or_else(not_found)?;
    if subscription.is_some() {
        return Err(not_found());
    }
    let incoming = IncomingMessage {
        message: (*t.message).clone(),
        size: t.size,
        hops: t.hops + 1,
    };
    let mut st = dest.lock();
    let (_, pending) = st
        .send(vec![incoming], now, false)
        .map_err(|e| ("TransferFailed", e.to_string()))?;
    let ops = st.machine.take_ops();
    drop(st);
    Ok((dest, pending, ops))
}
