//! The AMQP 1.0 listener side: one task per connection owning every session and link of it.
//!
//! | Performative | Handled in |
//! |---|---|
//! | protocol headers, SASL | `connection.rs` (`handshake`) |
//! | open, close, empty frames | `connection.rs` |
//! | begin, end, session flow | `connection.rs` (`Session`) |
//! | attach, detach | `link.rs` |
//! | transfer (client → broker) | `link.rs` → entity send, `$cbs`, `$management` |
//! | flow (link), transfer (broker → client) | `link.rs` (`pump`) |
//! | disposition | `link.rs` → entity settle |

pub mod cbs;
pub mod connection;
pub mod errors;
pub mod link;
pub mod management;
pub mod rules;
pub mod sessions;

pub use connection::serve_connection;
