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
    /// dead-letter reasons and properties-to-modify.
    pub message: Arc<Message>,
    /// Encoded size as the client sent it, counted against the entity's size quota.
    pub size: u32,
    /// Set on a subscription's unmodified copy of a topic message: the store keeps the message
    /// once, as the named topic's body under the same sequence number, and this record refers
    /// to it instead of holding its own copy.
    pub body_owner: Option<Arc<str>>,
}
