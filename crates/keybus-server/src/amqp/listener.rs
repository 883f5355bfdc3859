//! The AMQP listeners: admission of accepted sockets, AMQPS, and the first byte that tells
//! AMQP from AMQP over WebSockets.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

use super::connection::serve_connection;
use super::state::Peer;
use super::websocket;
use crate::runtime::Broker;
use crate::runtime::admission::{Listener, Permit, Refusal};

/// Admit a socket accepted on an AMQP listener: the socket with its permit, or `None` after
/// refusing it at once: [`refusal`] is written without waiting and the socket is left to
/// [`linger`].
pub(crate) fn admit(
    broker: &Broker,
    sock: TcpStream,
    addr: std::net::SocketAddr,
    listener: Listener,
) -> Option<(TcpStream, Permit)> {
    match broker.admission().admit(listener, addr.ip()) {
        Ok(p) => Some((sock, p)),
        Err(reason) => {
            tracing::debug!(peer = %addr, reason = reason.as_str(), listener = listener.as_str(), "connection refused");
            if listener == Listener::Amqp {
                let _ = sock.try_write(&refusal(reason));
                linger(sock);
            }
            None
        }
    }
}

/// Refused sockets that may linger at once; past this they are closed at once.
const MAX_LINGERING: usize = 256;
/// How long a refused socket lingers.
const LINGER: Duration = Duration::from_secs(2);
static LINGERING: AtomicUsize = AtomicUsize::new(0);

/// Close a refused socket so that its peer reads the refusal: closing a socket whose peer's
/// bytes (its protocol header, its `sasl-init`) are still unread makes the kernel send a reset,
/// and the client sees "broken pipe" instead of the cause. So the write side is shut (the peer
/// reads the refusal, then end of stream) and its input is read and dropped until it hangs up,
/// for at most [`LINGER`]; at most [`MAX_LINGERING`] sockets do so at once, so a flood of
/// refused sockets costs no more than that many descriptors for that long.
fn linger(sock: TcpStream) {
    if LINGERING.fetch_add(1, Ordering::SeqCst) >= MAX_LINGERING {
        LINGERING.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    tokio::spawn(async move {
        let mut sock = sock;
        let _ = sock.shutdown().await;
        let mut sink = [0u8; 512];
        let _ = tokio::time::timeout(LINGER, async {
            while matches!(sock.read(&mut sink).await, Ok(n) if n > 0) {}
        })
        .await;
        LINGERING.fetch_sub(1, Ordering::SeqCst);
    });
}

/// What a refused AMQP socket is sent, before it has said anything: the SASL header, the
/// mechanisms and a `sasl-outcome` of `sys-temp` whose additional data names the full budget.
/// Every SDK opens with the SASL header, reads the mechanisms, sends its `sasl-init` and then
/// reads this outcome, so the refusal reaches the application with its cause ("SASL
/// negotiation failed ... the broker's max_unauthenticated_per_address budget is full")
/// instead of a header mismatch.
pub(crate) fn refusal(reason: Refusal) -> Vec<u8> {
    use keybus_amqp::{
        BytesMut, FrameBody, SASL_HEADER, SaslFrameBody, SaslMechanisms, SaslOutcome, Symbol,
    };
    let mut out = BytesMut::new();
    out.extend_from_slice(&SASL_HEADER);
    let mechanisms = SaslMechanisms {
        mechanisms: vec![Symbol::from("MSSBCBS"), Symbol::from("ANONYMOUS")],
    };
    keybus_amqp::encode_frame(
        0,
        &FrameBody::Sasl(SaslFrameBody::Mechanisms(mechanisms)),
        &mut out,
    );
    let text = format!(
        "connection refused (amqp:resource-limit-exceeded): the broker's {} budget is full",
        reason.as_str()
    );
    let outcome = SaslOutcome {
        code: SASL_SYS_TEMP,
        additional_data: Some(text.into_bytes().into()),
    };
    keybus_amqp::encode_frame(
        0,
        &FrameBody::Sasl(SaslFrameBody::Outcome(outcome)),
        &mut out,
    );
    out.to_vec()
}

/// `sasl-outcome` code: a temporary system error (try again later).
const SASL_SYS_TEMP: u8 = 4;

/// Accept AMQPS connections (and AMQP over secure WebSockets) until the task is stopped.
pub(crate) async fn serve_tls(listener: TcpListener, acceptor: TlsAcceptor, broker: Arc<Broker>) {
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(%e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some((sock, permit)) = admit(&broker, sock, peer, Listener::Amqps) else {
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
            let spiffe = match certs
                .and_then(|c| c.first())
                .map(crate::runtime::tls::spiffe_id)
            {
                None | Some(Ok(None)) => None,
                Some(Ok(Some(id))) => Some(id),
                Some(Err(e)) => {
                    tracing::info!(%peer, error = %e, "client certificate refused");
                    broker.auth().audit.record(keybus_auth::audit::Event {
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
pub(crate) async fn serve_socket(broker: Arc<Broker>, sock: TcpStream, peer: Peer) {
    let handshake = broker.admission().deadlines.handshake;
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
