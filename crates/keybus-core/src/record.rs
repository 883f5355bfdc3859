//! The stored form of a message: its AMQP sections plus broker state.

use keybus_amqp::Message;
use std::sync::Arc;

use crate::clock::Timestamp;

/// `x-opt-message-state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageState {
    Active = 0,
    Deferred = 1,
    Scheduled = 2,
}

impl MessageState {
    pub fn from_i32(v: i32) -> Option<Self> {
        match v {
            0 => Some(Self::Active),
            1 => Some(Self::Deferred),
            2 => Some(Self::Scheduled),
            _ => None,
        }
    }
}

/// What the in-memory index needs of a message whose body is not in memory: derived from
/// the message when it is accepted or loaded ([`MessageSummary::of`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MessageSummary {
    /// The session (`group-id`), for session-enabled entities' per-session order.
    pub session_id: Option<Box<str>>,
    /// The message's own time to live (`header.ttl`, milliseconds), applied when a scheduled
    /// message becomes active.
    pub ttl_ms: Option<u32>,
}

impl MessageSummary {
    /// The summary of a message.
    pub fn of(message: &Message) -> MessageSummary {
        MessageSummary {
            session_id: message
                .properties
                .as_ref()
                .and_then(|p| p.group_id.as_deref())
                .map(Box::from),
            ttl_ms: message
                .header
                .as_ref()
                .and_then(|h| h.ttl)
                .filter(|t| *t > 0),
        }
    }
}

/// One message of an entity as the store keeps it. Locks are not stored: after a restart every
/// lock is gone and the message is available again (at-least-once).
#[derive(Debug, Clone, PartialEq)]
pub struct MessageRecord {
    pub sequence_number: i64,
    pub enqueued_time: Timestamp,
    pub state: MessageState,
    /// Completed delivery attempts (abandons and lock expiries), not counting releases.
    pub delivery_count: u32,
    pub scheduled_time: Option<Timestamp>,
    pub expires_at: Option<Timestamp>,
    /// Client sections with broker-owned annotations stripped; application properties carry
    /// dead-letter reasons and properties-to-modify. `None` while the body is held by the
    /// store only (a deep queue's messages beyond the broker's body window): read back with
    /// `Store::read_message`. A `PutMessage` without it updates the stored record's broker
    /// state and keeps the stored body.
    pub message: Option<Arc<Message>>,
    /// What the index needs without the body.
    pub summary: MessageSummary,
    /// Encoded size as the client sent it, counted against the entity's size quota.
    pub size: u32,
    /// Set on a subscription's unmodified copy of a topic message: the store keeps the message
    /// once, as the named topic's body under the same sequence number, and this record refers
    /// to it instead of holding its own copy.
    pub body_owner: Option<Arc<str>>,
}
