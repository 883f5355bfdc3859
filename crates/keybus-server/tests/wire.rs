//! The Rust wire suite: `keybus-client` against an in-process broker, over TCP, for both
//! the memory store and the durable store (fjall, in a temporary directory). Each test
//! asserts on what comes back over the wire: deliveries, outcomes, settled echoes,
//! `$management` responses and refusals with their AMQP conditions.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "wire/backpressure.rs"]
mod backpressure;
#[path = "wire/console.rs"]
mod console;
#[path = "wire/deadlines.rs"]
mod deadlines;
#[path = "wire/harness.rs"]
mod harness;
#[path = "wire/management.rs"]
mod management;
#[path = "wire/queue.rs"]
mod queue;
#[path = "wire/refusals.rs"]
mod refusals;
#[path = "wire/sessions.rs"]
mod sessions;
#[path = "wire/topics.rs"]
mod topics;
#[path = "wire/transactions.rs"]
mod transactions;
