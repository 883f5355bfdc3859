//! The AMQP 1.0 listener side: one task per connection owning every session and link of it.
//!
//! | Performative | Handled in |
//! |---|---|
//! | protocol headers, SASL | `connection.rs` (`handshake`) |
//! | open, close, empty frames | `connection.rs` |
//! | begin, end, session flow | `connection.rs` |
//! | attach, detach | `attach.rs` (session receivers: `sessions.rs`) |
//! | transfer (client → broker) | `send.rs` → entity send, `cbs.rs`, `management.rs` |
//! | flow (link), transfer (broker → client) | `receive.rs` (`pump`) |
//! | disposition | `settle.rs` → entity settle |
//! | coordinator (declare, discharge), transactional transfers and dispositions | `transaction.rs` |
//! | `$cbs`/`$management` responses | `reply.rs` |
//!
//! `state.rs` holds the data (connection, sessions, links); every other file adds behaviour
//! to it and none imports another back (checked by `tests/tidy.rs`). A connection that opens
//! with an HTTP request instead of an AMQP header is upgraded to AMQP over WebSockets
//! (`websocket.rs`) and then served the same way.

pub(crate) mod access;
pub(crate) mod attach;
pub(crate) mod cbs;
pub(crate) mod connection;
pub(crate) mod errors;
pub(crate) mod events;
pub(crate) mod listener;
pub(crate) mod management;
pub(crate) mod receive;
pub(crate) mod reply;
pub(crate) mod rules;
pub(crate) mod send;
pub(crate) mod sessions;
pub(crate) mod settle;
pub(crate) mod state;
pub(crate) mod terms;
pub(crate) mod transaction;
pub(crate) mod websocket;

pub(crate) use listener::{admit, serve_socket, serve_tls};
pub(crate) use state::Peer;
