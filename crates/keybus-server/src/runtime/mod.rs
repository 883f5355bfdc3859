//! The runtime: what runs a namespace, whichever protocol reaches it. The entity registry
//! ([`Broker`]), each entity's state and its waiting receivers, entity lifecycle,
//! forwarding, housekeeping, metric counters, admission and TLS.
//!
//! # Boundaries
//! The runtime knows nothing of AMQP or HTTP: it must not use `crate::amqp`, `crate::http`,
//! `crate::atom` or `crate::rest` (checked by `tests/tidy.rs`). Protocol wings reach waiting
//! receivers through [`waiter::Wake`], whose implementations carry their own link identity.

pub mod admission;
pub(crate) mod agenda;
pub(crate) mod entity;
pub(crate) mod forwarding;
pub(crate) mod housekeeping;
pub mod lifecycle;
pub(crate) mod metrics;
pub mod registry;
pub mod tls;
pub(crate) mod waiter;

pub use entity::{Entity, EntityGuard, EntityState};
pub use registry::Broker;
pub use waiter::{Signal, Waiter, Wake, Wants};
