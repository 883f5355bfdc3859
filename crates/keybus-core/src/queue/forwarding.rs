//! Auto-forwarding (`ForwardTo`, `ForwardDeadLetteredMessagesTo`): the queue side.
//!
//! A queue (or subscription) that forwards keeps its active messages away from receivers and
//! hands them to the caller as [`Transfer`]s. Each transfer holds a *transfer lock* (no client
//! can settle, expire or see it as available) until the caller reports the outcome:
//! [`Queue::forwarded`] once one store batch that deletes it here and puts it into the
//! destination is durable (so a crash leaves it in exactly one place), or
//! [`Queue::transfer_failed`] to dead-letter it here.

use std::sync::Arc;

use keybus_amqp::{Message, Symbol, Value};

use super::{Lock, Queue};
use crate::address::SubQueue;
use crate::clock::Timestamp;
use crate::store::{EntityName, StoreOp};

/// Most forwarding hops a message may take (Service Bus allows 4).
pub const MAX_TRANSFER_HOPS: u8 = 4;

/// Message annotation counting the hops behind a forwarded message. Broker-owned: stripped
/// from clients' sends and set again when the forwarder sends the message on.
pub const HOPS_ANNOTATION: &str = "x-opt-keybus-transfer-hops";

/// Dead-letter reason when the hop limit is reached.
pub const HOP_LIMIT_REASON: &str = "MaxTransferHopCountExceeded";

/// One message to move to another entity.
#[derive(Debug, Clone)]
pub struct Transfer {
    /// The source entity path (`queue` or `topic/subscriptions/sub`).
    pub entity: EntityName,
    pub sub: SubQueue,
    pub sequence_number: i64,
    /// Where it goes, as configured (an entity name of the namespace).
    pub destination: String,
    pub message: Arc<Message>,
    pub size: u32,
    /// Hops behind it; the forward about to happen is one more.
    pub hops: u8,
}

impl Transfer {
    /// The op deleting the message at its source, for the same batch as the destination's put.
    pub fn delete_op(&self) -> StoreOp {
        StoreOp::DeleteMessage {
            entity: self.entity.clone(),
            sub: self.sub,
            sequence_number: self.sequence_number,
        }
    }
}

/// Hops recorded on a stored message.
pub fn hops(message: &Message) -> u8 {
    message
        .message_annotations
        .as_ref()
        .and_then(|a| keybus_amqp::map_get(a, HOPS_ANNOTATION))
        .and_then(Value::as_i64)
        .map_or(0, |h| h.clamp(0, i64::from(u8::MAX)) as u8)
}

/// Record `hops` on a message being accepted (after its broker annotations were stripped).
pub fn set_hops(message: &mut Message, hops: u8) {
    if hops == 0 {
        return;
    }
    message
        .message_annotations
        .get_or_insert_with(Vec::new)
        .push((
            Value::Symbol(Symbol::from(HOPS_ANNOTATION)),
            Value::Int(i32::from(hops)),
        ));
}

impl Queue {
    /// True if messages wait to be forwarded.
    pub fn has_forwardable(&self) -> bool {
        !self.main.to_forward.is_empty() || !self.dlq.to_forward.is_empty()
    }

    /// Take up to `max` messages to forward, each under a transfer lock. Expired ones are
    /// expired instead.
    pub fn take_forwardable(&mut self, max: usize, now: Timestamp) -> Vec<Transfer> {
        let mut out = Vec::new();
        for sub in [SubQueue::Main, SubQueue::DeadLetter] {
            let destination = match sub {
                SubQueue::Main => self.props.forward_to.clone(),
                _ => self.props.forward_dead_lettered_messages_to.clone(),
            };
            let Some(destination) = destination else {
                continue;
            };
            while out.len() < max {
                let Some(seq) = self.set_mut(sub).to_forward.pop_first() else {
                    break;
                };
                let expired = self
                    .set(sub)
                    .entries
                    .get(&seq)
                    .and_then(|e| e.rec.expires_at)
                    .is_some_and(|t| t <= now && sub == SubQueue::Main);
                if expired {
                    self.expire(seq, now);
                    continue;
                }
                let Some(message) = self.load_body(sub, seq) else {
                    // Unreadable (kept in `read_error`): left out of the forwarder's index
                    // until it is indexed again.
                    break;
                };
                let token = self.next_token();
                let entity = self.name.clone();
                let set = self.set_mut(sub);
                set.unindex(seq);
                let Some(e) = set.entries.get_mut(&seq) else {
                    continue;
                };
                e.lock = Some(Box::new(Lock {
                    token,
                    until: Timestamp::MAX,
                }));
                let transfer = Transfer {
                    entity,
                    sub,
                    sequence_number: seq,
                    destination: destination.clone(),
                    hops: hops(&message),
                    message,
                    size: e.rec.size,
                };
                set.index(seq);
                out.push(transfer);
            }
        }
        out
    }

    fn unlock_transfer(&mut self, sub: SubQueue, seq: i64) {
        let set = self.set_mut(sub);
        set.unindex(seq);
        if let Some(e) = set.entries.get_mut(&seq) {
            e.lock = None;
        }
    }

    /// The batch deleting the message here and putting it at its destination is durable.
    pub fn forwarded(&mut self, sub: SubQueue, seq: i64) {
        self.set_mut(sub).remove(seq);
    }

    /// The forward's store batch failed: the message stays here, to be forwarded again.
    pub fn transfer_aborted(&mut self, sub: SubQueue, seq: i64) {
        self.unlock_transfer(sub, seq);
        self.set_mut(sub).index(seq);
    }

    /// The message cannot be forwarded (hop limit, missing or refusing destination): a message
    /// of the queue is dead-lettered with `reason`; one of the dead-letter sub-queue stays
    /// there for receivers.
    pub fn transfer_failed(&mut self, sub: SubQueue, seq: i64, reason: &str, description: String) {
        self.unlock_transfer(sub, seq);
        if sub == SubQueue::Main {
            self.dead_letter(seq, Some(reason.to_string()), Some(description));
            return;
        }
        let set = self.set_mut(sub);
        if let Some(e) = set.entries.get_mut(&seq) {
            e.stuck = true;
        }
        set.index(seq);
    }
}
