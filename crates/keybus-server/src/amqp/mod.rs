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
//!
//! A connection that opens with an HTTP request instead of an AMQP header is upgraded to AMQP
//! over WebSockets (`websocket.rs`) and then served the same way.

pub mod cbs;
pub mod connection;
pub mod errors;
pub mod link;
pub mod management;
pub mod rules;
pub mod sessions;
pub mod websocket;

use std::sync::Arc;

pub use connection::serve_connection;
use tokio::net::TcpStream;

use crate::broker::Broker;

/// Serve an accepted socket of the AMQP listener: AMQP, or AMQP over WebSockets when the
/// client opens with an HTTP request.
pub async fn serve_socket(broker: Arc<Broker>, sock: TcpStream, peer: String) {
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(std::time::Duration::from_secs(30), sock.peek(&mut first))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    if peeked == 1 && first[0] == b'G' {
        websocket::serve_upgrade(broker, sock, peer).await;
    } else {
        serve_connection(broker, sock, peer).await;
    }
}
