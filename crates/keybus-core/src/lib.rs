//! keybus-core: the Service Bus domain.
//!
//! # Design
//! Sans-I/O state machines for Service Bus entities: sequence numbers, peek-lock and settlement,
//! delivery counts and dead-lettering, scheduling, deferral, duplicate detection and TTL.
//! Time comes in as a `now` argument read from a [`Clock`]; persistence leaves as [`StoreOp`]s
//! that the caller commits through the [`Store`] port. Nothing here touches a socket, a file or
//! a runtime: the server wires it up.

pub mod address;
pub mod bodies;
pub mod clock;
pub mod duplicates;
pub mod entity;
pub mod error;
pub mod filter;
pub mod message_id;
pub mod messaging;
pub mod queue;
pub mod record;
pub mod settings;
pub mod store;
pub mod topic;
pub mod transaction;

pub use address::{NodeAddress, NodeKind, SubQueue};
pub use bodies::{Bodies, BodyWindow};
pub use clock::{Clock, ManualClock, SystemClock, Timestamp};
pub use entity::{
    CorrelationFilter, DEFAULT_MAX_MESSAGE_SIZE, EntityDefinition, EntityKind, EntityMeta,
    EntityStatus, FilterDefinition, MAX_MESSAGE_SIZE_LIMIT, QueueProperties, RuleDefinition,
    SimpleValue, SubscriptionDefinition, TopicProperties, validate_entity_name,
};
pub use error::{ErrorCondition, ManagementError, SendError, SessionError, SettleError};
pub use message_id::with_message_id;
pub use messaging::{MessagingEntity, PendingSend};
pub use queue::{
    Delivery, IncomingMessage, LockToken, Outcome, Queue, QueueCounts, QueueStats, ReceiveMode,
    encode_delivery,
    forwarding::{HOP_LIMIT_REASON, MAX_TRANSFER_HOPS, Transfer},
    sessions::LIST_ALL_SESSIONS,
};
pub use record::{MessageRecord, MessageState, MessageSummary};
pub use settings::{EntitySettings, FixedProperty, UNLIMITED_MS, limited};
pub use store::{
    CommitFuture, EntityName, EntitySnapshot, LoadOptions, MessageSource, SessionRecord, Store,
    StoreError, StoreOp,
};
pub use topic::{Fanout, RuleError, Subscription, Topic};
pub use transaction::{
    Discharged, TRANSACTION_TIMEOUT_MS, Transactions, TxnCondition, TxnError, TxnId, TxnWork,
};
