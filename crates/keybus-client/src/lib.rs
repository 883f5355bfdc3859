//! keybus-client: a small AMQP 1.0 client for Service Bus-style brokers (keybus, and the
//! Service Bus wire protocol in general).
//!
//! One [`Connection`] is one TCP connection (plain, or TLS with [`Connection::connect_tls`])
//! driven by its holder (no background task).
//! It does SASL ANONYMOUS and CBS `put-token` with SAS tokens ([`sas`], made from an
//! [`Endpoint`] connection string); opens senders ([`Connection::create_sender`],
//! [`Connection::send`], [`Connection::send_batch`]) and receivers in peek-lock or
//! receive-and-delete mode, optionally on a session ([`Connection::create_receiver`],
//! [`Connection::receive`]); settles deliveries ([`Connection::settle`] with an
//! [`Outcome`]); and runs `$management` operations (`management.rs`). For load generation
//! the same engine runs bulk workloads ([`SendWork`], [`RecvWork`]) without per-message
//! calls.
//!
//! Files, one idea each: `connection` (handshake and I/O loop), `stream` (plain TCP or
//! TLS), `attach` (sessions and
//! links), `input` and `produce` (the two sides of the frame engine), `transfer` (transfer
//! frames), `sender`, `receiver` (and settlement), `rpc` (request-response pairs), `cbs`,
//! `management`, `transaction` (coordinator, declare, discharge, transactional sends and
//! settlements), `workload`, `endpoint`, `sas`, `error`.
//!
//! It depends on the codec (`keybus-amqp`) only, never on the broker's crates.

mod attach;
mod cbs;
mod connection;
mod endpoint;
mod error;
mod input;
mod link;
mod management;
mod produce;
mod receiver;
mod rpc;
pub mod sas;
mod sender;
mod session;
mod stream;
mod transaction;
mod transfer;
mod workload;

pub use attach::{ReceiveMode, ReceiverOptions, SESSION_FILTER, SessionFilter};
pub use connection::Connection;
pub use endpoint::{Endpoint, EndpointError};
pub use error::{ClientError, Refusal};
pub use keybus_amqp::{Bytes, Header, Message, Properties, Value};
pub use link::{Delivery, Link, LinkId, LinkKind, ReceiverLink, SenderLink};
pub use management::{DispositionStatus, LockedMessage};
pub use receiver::Outcome;
pub use rpc::Reply;
pub use workload::{MessageTemplate, Pacing, RecvWork, STAMP_PROPERTY, SendWork, Tally, now_ns};
