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

pub mod access;
pub mod cbs;
pub mod connection;
pub mod errors;
pub mod link;
pub mod management;
pub mod rules;
pub mod sessions;
pub mod websocket;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

pub use connection::serve_connection;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use crate::admission::{Listener, Permit};
use crate::broker::Broker;

/// Who is on the other end of a connection: its address and, with mTLS, the SPIFFE ID of its
/// verified client certificate.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: String,
    pub spiffe: Option<String>,
    /// The socket's admission permit (freed when the last clone is dropped).
    pub permit: Option<Arc<Permit>>,
}

impl Peer {
    pub fn new(addr: impl Into<String>) -> Self {
        Self {
            addr: addr.into(),
            spiffe: None,
            permit: None,
        }
    }
}

/// Admit a socket accepted on an AMQP listener: `Some(permit)`, or `None` after refusing it
/// at once (our header, `open` and `close` with `amqp:resource-limit-exceeded`, written
/// without waiting, then the socket is closed).
pub fn admit(
    broker: &Broker,
    sock: &TcpStream,
    addr: std::net::SocketAddr,
    listener: Listener,
) -> Option<Permit> {
    match broker.admission.admit(listener, addr.ip()) {
        Ok(p) => Some(p),
        Err(reason) => {
            tracing::debug!(peer = %addr, reason = reason.as_str(), listener = listener.as_str(), "connection refused");
            if listener == Listener::Amqp {
                let _ = sock.try_write(&crate::admission::amqp_refusal(reason));
            }
            None
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.addr)
    }
}

/// Accept AMQPS connections (and AMQP over secure WebSockets) until the task is stopped.
pub async fn serve_tls(listener: TcpListener, acceptor: TlsAcceptor, broker: Arc<Broker>) {
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(%e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(permit) = admit(&broker, &sock, peer, Listener::Amqps) else {
            continue;
        };
        let _ = sock.set_nodelay(true);
        let acceptor = acceptor.clone();
        let broker = broker.clone();
        tokio::spawn(async move {
            let peer = peer.to_string();
            let deadline = tokio::time::Instant::now() + permit.deadlines().handshake;
            let tls = match tokio::time::timeout_at(deadline, acceptor.accept(sock)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let certs = tls.get_ref().1.peer_certificates();
            let spiffe = match certs.and_then(|c| c.first()).map(crate::tls::spiffe_id) {
                None | Some(Ok(None)) => None,
                Some(Ok(Some(id))) => Some(id),
                Some(Err(e)) => {
                    tracing::info!(%peer, error = %e, "client certificate refused");
                    broker.auth.audit.record(crate::auth::audit::Event {
                        event: "mtls",
                        allow: false,
                        reason: e,
                        peer: Some(peer.clone()),
                        ..Default::default()
                    });
                    return;
                }
            };
            let peer = Peer {
                addr: peer,
                spiffe,
                permit: Some(Arc::new(permit)),
            };
            serve_stream(broker, tls, peer, deadline).await;
        });
    }
}

/// Serve a (decrypted) stream: AMQP, or AMQP over WebSockets when it opens with an HTTP
/// request. The first byte tells them apart (`A` of `AMQP` against `G` of `GET`).
async fn serve_stream<S>(broker: Arc<Broker>, mut io: S, peer: Peer, deadline: tokio::time::Instant)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, io.read_exact(&mut first)).await {
        Ok(Ok(_)) => {}
        _ => return,
    }
    let io = Prefixed {
        first: Some(first[0]),
        inner: io,
    };
    if first[0] == b'G' {
        websocket::serve_upgrade(broker, io, peer).await;
    } else {
        serve_connection(broker, io, peer).await;
    }
}

/// A stream with one byte read ahead put back in front.
struct Prefixed<S> {
    first: Option<u8>,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if let Some(b) = self.first.take() {
            if buf.remaining() > 0 {
                buf.put_slice(&[b]);
                return Poll::Ready(Ok(()));
            }
            self.first = Some(b);
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serve an accepted socket of the AMQP listener: AMQP, or AMQP over WebSockets when the
/// client opens with an HTTP request.
/// Nothing is served to a socket that sends no byte within `limits.handshake_timeout_ms`.
pub async fn serve_socket(broker: Arc<Broker>, sock: TcpStream, peer: Peer) {
    let handshake = broker.admission.deadlines.handshake;
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(handshake, sock.peek(&mut first))
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or(0);
    if peeked == 0 {
        tracing::debug!(%peer, "no byte within the handshake deadline");
        return;
    }
    if first[0] == b'G' {
        websocket::serve_upgrade(broker, sock, peer).await;
    } else {
        serve_connection(broker, sock, peer).await;
    }
}
