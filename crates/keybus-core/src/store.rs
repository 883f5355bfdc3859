//! The persistence port. Backends (in `keybus-store`) implement [`Store`]; the core only emits
//! [`StoreOp`]s and never learns which backend holds them.
//!
//! The contract, which the shared conformance suite checks for every backend:
//! - `commit` is atomic: after a crash either all ops of a batch are visible or none are.
//! - Its future resolves `Ok` only once the batch is durable (fsync or database commit).
//! - Batches submitted earlier are applied earlier (per store instance).
//! - After any failed commit the store is poisoned: every later commit fails and `healthy()` is
//!   false, so the broker stops acknowledging work it cannot keep. A backend may recover on
//!   its own (the embedded store re-opens itself once writes succeed again, see
//!   `keybus-store`): `healthy()` is then true again. [`Store::status`] names the cause.
//! - `commit` never blocks its caller (it runs on async workers); a store that cannot keep up
//!   says so through [`Store::admit`] (the broker's metering wrapper counts the backlog).
//!
//! A subscription's record may refer to its topic's body instead of holding the message
//! ([`MessageRecord::body_owner`]): `load_entity` and `read_message` return such records with
//! the body filled in.
//!
//! Deep queues: `load_entity` returns bodies only up to [`LoadOptions::max_body_bytes`] (in
//! sequence order, so the head of each queue), the rest as records without a body, and
//! [`Store::read_message`] reads one body back. A `PutMessage` whose record has no body
//! (`message: None`) replaces the stored record's broker state (state, delivery count,
//! times) and keeps the body already stored under that key.
//!
//! Keys are (entity path, sub-queue, sequence number), so a PostgreSQL backend maps them to
//! one `messages` table with a primary key on those columns, and several broker nodes can
//! share it with an entity-ownership lease (see ARCHITECTURE.md).

use std::future::Future;
use std::pin::Pin;

use keybus_amqp::Bytes;

use crate::address::SubQueue;
use crate::clock::Timestamp;
use crate::entity::EntityDefinition;
use crate::record::MessageRecord;

/// An entity's lower-case path as store operations carry it: shared, so an operation costs a
/// reference count, not a copy of the name.
pub type EntityName = std::sync::Arc<str>;

/// One write.
#[derive(Debug, Clone)]
pub enum StoreOp {
    /// Create or replace an entity definition.
    PutEntity(EntityDefinition),
    /// Remove an entity with all its messages and counters.
    DeleteEntity { entity: EntityName },
    /// Raise the entity's sequence high-water mark (the next number to hand out).
    PutSequence { entity: EntityName, next: i64 },
    /// Create or replace a message.
    PutMessage {
        entity: EntityName,
        sub: SubQueue,
        record: MessageRecord,
    },
    /// Remove a message.
    DeleteMessage {
        entity: EntityName,
        sub: SubQueue,
        sequence_number: i64,
    },
    /// Store a topic message once, for the subscription records that refer to it
    /// ([`MessageRecord::body_owner`]).
    PutBody {
        entity: EntityName,
        sequence_number: i64,
        message: std::sync::Arc<keybus_amqp::Message>,
    },
    /// Remove a topic message body no record refers to any more.
    DeleteBody {
        entity: EntityName,
        sequence_number: i64,
    },
    /// Set a session's state; an empty state removes it.
    PutSessionState {
        entity: EntityName,
        record: SessionRecord,
    },
}

/// The stored state of one message session.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionRecord {
    pub session_id: String,
    pub state: Bytes,
    /// When the state was last set.
    pub updated: Timestamp,
}

/// Everything the store holds for one entity.
#[derive(Debug, Clone, Default)]
pub struct EntitySnapshot {
    pub next_sequence: i64,
    /// Messages by sub-queue, in sequence order.
    pub main: Vec<MessageRecord>,
    pub dead_letter: Vec<MessageRecord>,
    /// Session states, by session id.
    pub sessions: Vec<SessionRecord>,
    /// Sequence numbers of the message bodies a topic stores for its subscriptions.
    pub bodies: Vec<i64>,
    /// `(enqueued time, duplicate-detection key)` of the main records enqueued since
    /// [`LoadOptions::message_ids_since`], in sequence order.
    pub message_ids: Vec<(Timestamp, String)>,
}

/// What `load_entity` returns besides the records' broker state.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Bodies are returned for records in sequence order (main set first) until they add up
    /// to this many bytes; later records come without their body.
    pub max_body_bytes: u64,
    /// Return the duplicate-detection keys ([`EntitySnapshot::message_ids`]) of the main
    /// sub-queue's records enqueued at or after this time (the duplicate-detection window of an entity that detects duplicates).
    pub message_ids_since: Option<Timestamp>,
}

impl LoadOptions {
    /// Every body, no duplicate-detection keys.
    pub const ALL_BODIES: LoadOptions = LoadOptions {
        max_body_bytes: u64::MAX,
        message_ids_since: None,
    };
}

/// Failures of the store.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O failed: {0}")]
    Io(String),
    #[error("store data is corrupt: {0}")]
    Corrupt(String),
    /// The disk (or the file system quota) is full: writes fail until space is freed.
    #[error("no space left on device: {0}")]
    Full(String),
    #[error("store is poisoned after an earlier write failure; restart the broker")]
    Poisoned,
    #[error("store is closed")]
    Closed,
    /// The store is behind: `backlog` commits are submitted and not yet durable, at or past
    /// the configured limit. New sends are refused until it catches up; nothing is lost.
    #[error("store is busy: {backlog} commits are waiting to become durable (limit {limit})")]
    Busy { backlog: usize, limit: usize },
}

/// Resolves once a batch is durable.
pub type CommitFuture = Pin<Box<dyn Future<Output = Result<(), StoreError>> + Send>>;

/// Reads one stored message body back (deep queues). Blocking: a point read of the store, made
/// under the entity's lock when a message without its body in memory is delivered, peeked or
/// forwarded.
pub trait MessageSource {
    /// The message stored as `seq` in `entity`'s sub-queue `sub` (its topic's body when the
    /// record refers to one). A committed message that is missing is [`StoreError::Corrupt`].
    fn read_message(
        &self,
        entity: &str,
        sub: SubQueue,
        seq: i64,
    ) -> Result<std::sync::Arc<keybus_amqp::Message>, StoreError>;
}

/// The persistence port.
pub trait Store: MessageSource + Send + Sync + 'static {
    /// Submit a batch. Concurrent batches share one sync (group commit).
    fn commit(&self, ops: Vec<StoreOp>) -> CommitFuture;
    /// All entity definitions. Blocking; called at start-up.
    fn list_entities(&self) -> Result<Vec<EntityDefinition>, StoreError>;
    /// Everything stored for one entity (lower-case path), bodies as `options` say. Blocking;
    /// called at start-up.
    fn load_entity(&self, entity: &str, options: LoadOptions)
    -> Result<EntitySnapshot, StoreError>;
    /// False once a write failed (the store refuses writes from then on, until it recovers).
    fn healthy(&self) -> bool;
    /// `Err` with the cause while the store refuses writes (the error later commits fail with).
    fn status(&self) -> Result<(), StoreError> {
        if self.healthy() {
            Ok(())
        } else {
            Err(StoreError::Poisoned)
        }
    }
    /// `Err` while the store takes no new work (sends): what [`Store::status`] says, or
    /// [`StoreError::Busy`] while too many commits wait to become durable. Settlements,
    /// housekeeping and forwarding check only `status`: they free space, so they go on.
    fn admit(&self) -> Result<(), StoreError> {
        self.status()
    }
}
