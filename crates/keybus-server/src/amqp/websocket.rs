//! AMQP over WebSockets (wire reference §1.1): `GET /$servicebus/websocket` with subprotocol
//! `AMQPWSB10`, each WebSocket binary message carrying AMQP bytes.
//!
//! The AMQP listener accepts both: a connection whose first bytes are an HTTP request is
//! upgraded here, so the connection string of a plain AMQP client also works for the SDKs'
//! WebSocket transport (Python `TransportType.AmqpOverWebsocket` dials the endpoint's port).
//! The WebSocket is bridged to an in-process byte pipe and served by the same connection code
//! as any AMQP socket; only the framing differs.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use keybus_amqp::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};

use crate::runtime::Broker;

/// The path the SDKs request.
pub(crate) const PATH: &str = "/$servicebus/websocket";
/// The WebSocket subprotocol of AMQP 1.0 over WebSockets.
pub(crate) const SUBPROTOCOL: &str = "AMQPWSB10";

/// Bytes buffered between the WebSocket and the AMQP connection in each direction.
const PIPE: usize = 256 * 1024;

fn refuse(status: StatusCode, text: &str) -> ErrorResponse {
    let mut r = ErrorResponse::new(Some(format!("{text}\n")));
    *r.status_mut() = status;
    r
}

/// Accept only `GET /$servicebus/websocket` offering `AMQPWSB10`, and choose that subprotocol.
#[allow(clippy::result_large_err)]
fn check_request(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    if req.uri().path() != PATH {
        return Err(refuse(
            StatusCode::NOT_FOUND,
            "AMQP over WebSockets is served at /$servicebus/websocket",
        ));
    }
    let offered = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case(SUBPROTOCOL));
    if !offered {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "the WebSocket subprotocol AMQPWSB10 is required",
        ));
    }
    resp.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(SUBPROTOCOL),
    );
    Ok(resp)
}

/// Upgrade a connection that started with an HTTP request, then serve AMQP over it.
pub(crate) async fn serve_upgrade<S>(broker: Arc<Broker>, io: S, peer: super::state::Peer)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // A WebSocket message holds at most one AMQP frame's worth plus slack.
    let limit = broker.config().limits.max_frame_size as usize + 64 * 1024;
    let config = WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let upgrade = tokio_tungstenite::accept_hdr_async_with_config(io, check_request, Some(config));
    let ws = match tokio::time::timeout(broker.admission().deadlines.websocket, upgrade).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "WebSocket handshake refused");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "WebSocket upgrade not done within the deadline");
            return;
        }
    };
    let (amqp_side, mut bridge_side) = tokio::io::duplex(PIPE);
    let conn = tokio::spawn(super::connection::serve_connection(
        broker,
        amqp_side,
        peer.clone(),
    ));
    let (mut ws_tx, mut ws_rx) = ws.split();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        tokio::select! {
            msg = ws_rx.next() => match msg {
                Some(Ok(Message::Binary(data))) => {
                    if bridge_side.write_all(&data).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None => break,
                // Pings are answered by tungstenite on the next write or flush.
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                    if ws_tx.flush().await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Text(_) | Message::Frame(_))) => {
                    tracing::debug!(%peer, "text WebSocket message on an AMQP connection");
                    break;
                }
                Some(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "WebSocket read failed");
                    break;
                }
            },
            n = bridge_side.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let data = Bytes::copy_from_slice(&buf[..n]);
                    if let Err(e) = ws_tx.send(Message::Binary(data)).await {
                        if !matches!(e, tungstenite::Error::ConnectionClosed) {
                            tracing::debug!(%peer, error = %e, "WebSocket write failed");
                        }
                        break;
                    }
                }
            },
        }
    }
    // Flush whatever the connection still wrote (a `close` frame, say), then close.
    drop(bridge_side);
    let _ = conn.await;
    let _ = ws_tx.close().await;
}
