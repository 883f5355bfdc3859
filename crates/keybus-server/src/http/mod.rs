//! The HTTP wing: the router and the HTTP and HTTPS listeners. `GET /health` and `GET /ready`
//! (200 when the broker accepts work, 503 when the store cannot write), `GET /metrics`
//! (Prometheus), the token service, and one fallback that serves the REST messaging API
//! (`rest/`) for `…/messages…` paths and the ATOM management API (`atom/`) for the rest.
//! What both share (errors, authorisation, host, percent decoding) is in `common.rs`; neither
//! uses the other, and nothing here uses the AMQP wing. The web console (`console/`) is served
//! under `/console/`.

pub mod atom;
pub mod common;
pub mod console;
pub mod rest;
mod token_service;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{ConnectInfo, DefaultBodyLimit, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use tokio::net::TcpListener;

use crate::runtime::Broker;
use common::HttpError;

async fn health(State(broker): State<Arc<Broker>>) -> (StatusCode, String) {
    match broker.store().status() {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("store cannot write: {e}\n"),
        ),
    }
}

/// Prometheus scrape: per-entity gauges and counters, requests, connections, links, store
/// commit latency (see `metrics.rs`).
async fn metrics(State(broker): State<Arc<Broker>>) -> Response {
    match crate::http_metrics::render(&broker) {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

pub fn router(broker: Arc<Broker>, console: Arc<console::Console>) -> Router {
    let body_deadline = broker.admission().deadlines.http_body;
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(health))
        .route("/metrics", get(metrics))
        .merge(token_service::routes())
        .merge(console::routes())
        .merge(api_routes())
        .layer(Extension(console))
        .layer(axum::middleware::from_fn(move |req, next| {
            body_within(body_deadline, req, next)
        }))
        .with_state(broker)
}

/// The management and messaging APIs: a fallback, not a `/{*path}` route (the token
/// service's `/{tenant}/…` routes would conflict with a catch-all).
fn api_routes() -> Router<Arc<Broker>> {
    Router::new()
        .fallback(api)
        // REST sends carry messages up to the largest entity limit (100 MB); descriptions
        // are capped at `atom::MAX_BODY` in `api`.
        .layer(DefaultBodyLimit::max(rest::MAX_BODY))
}

/// Serve a REST messaging request, else a management request.
async fn api(
    State(broker): State<Arc<Broker>>,
    peer: PeerInfo,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let peer = peer_text(&peer);
    let too_large = || {
        HttpError::PayloadTooLarge(format!(
            "the request body is larger than {} bytes",
            atom::MAX_BODY
        ))
    };
    let result = match body {
        Ok(body) => match rest::dispatch(&broker, &peer, &method, &uri, &headers, &body).await {
            Some(r) => r,
            None if body.len() > atom::MAX_BODY => Err(too_large()),
            None => atom::dispatch(&broker, &peer, &method, &uri, &headers, body).await,
        },
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(too_large()),
        Err(e) => Err(HttpError::BadRequest(format!(
            "the request body could not be read: {e}"
        ))),
    };
    match result {
        Ok(resp) => resp,
        Err(e) => {
            tracing::debug!(%method, path = %uri.path(), status = %e.status(), error = %e, "management request refused");
            e.into_response()
        }
    }
}

// ------------------------------------------------------------------ client address

/// The client's address, as handlers extract it: the listeners put a `ConnectInfo` on every
/// request (`serve` through axum's connect info, `serve_tls` through [`with_peer`]).
pub type PeerInfo = Option<Extension<ConnectInfo<SocketAddr>>>;

/// The client's address as audit text (`ip:port`), `unknown` if the listener gave none.
pub fn peer_text(p: &PeerInfo) -> String {
    match p {
        Some(Extension(ConnectInfo(addr))) => addr.to_string(),
        None => "unknown".into(),
    }
}

/// `app` with the client's address on every request (one connection's service).
pub fn with_peer(app: Router, peer: SocketAddr) -> Router {
    app.layer(Extension(ConnectInfo(peer)))
}

/// The routes served on the probe reserve (HTTP sockets past `max_http_connections`).
fn probe_router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(health))
        .route("/metrics", get(metrics))
        .fallback(|| async {
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::RETRY_AFTER, "1")],
                "too many HTTP connections: only /health, /ready and /metrics are served\n",
            )
        })
        .with_state(broker)
}

/// The largest request body buffered (the routes' own limits apply after).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// Read a request body within `limits.http_body_timeout_ms`, else answer 408.
async fn body_within(
    deadline: std::time::Duration,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use axum::body::HttpBody as _;
    let (parts, body) = req.into_parts();
    if body.is_end_stream() {
        return next
            .run(axum::extract::Request::from_parts(parts, body))
            .await;
    }
    match tokio::time::timeout(deadline, axum::body::to_bytes(body, MAX_BODY)).await {
        Ok(Ok(bytes)) => {
            next.run(axum::extract::Request::from_parts(
                parts,
                axum::body::Body::from(bytes),
            ))
            .await
        }
        Ok(Err(_)) => StatusCode::PAYLOAD_TOO_LARGE.into_response(),
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            [(header::CONNECTION, "close")],
            "the request body did not arrive in time\n",
        )
            .into_response(),
    }
}

/// Serve one admitted HTTP connection: HTTP/1.1 (head within `http_header_timeout_ms`, also
/// between keep-alive requests) or HTTP/2.
async fn serve_conn<I>(
    io: I,
    broker: &Arc<Broker>,
    console: &Arc<console::Console>,
    permit: crate::runtime::admission::Permit,
    peer: SocketAddr,
    over_tls: bool,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let app = if permit.probe_only() {
        probe_router(broker.clone())
    } else {
        router(broker.clone(), console.clone())
    };
    let app = with_peer(app, peer);
    // The token service's token endpoint and discovery answer over HTTPS only.
    let app = if over_tls {
        app.layer(Extension(token_service::OverTls))
    } else {
        app
    };
    let service = hyper_util::service::TowerToHyperService::new(app);
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(broker.admission().deadlines.http_header);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Some(broker.admission().deadlines.http_header))
        .keep_alive_timeout(broker.admission().deadlines.http_header);
    let io = FirstBytes {
        inner: io,
        read: 0,
        deadline: Some(Box::pin(tokio::time::sleep(
            broker.admission().deadlines.http_header,
        ))),
    };
    let conn = builder.serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(io), service);
    if let Err(e) = conn.await {
        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
    }
    drop(permit);
}

/// Bytes hyper reads to tell HTTP/1 from HTTP/2 (the HTTP/2 preface), before its own
/// header time-out is in force.
const PREFACE: usize = 24;

/// A stream whose first [`PREFACE`] bytes must arrive within a deadline (reads fail with
/// `TimedOut` after it); hyper's `header_read_timeout` covers the rest.
struct FirstBytes<I> {
    inner: I,
    read: usize,
    deadline: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<I: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for FirstBytes<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                self.read += buf.filled().len() - before;
                if self.read >= PREFACE {
                    self.deadline = None;
                }
                Poll::Ready(r)
            }
            Poll::Pending => {
                let expired = self
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if expired {
                    Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no HTTP request in time",
                    )))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<I: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for FirstBytes<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Admit an accepted HTTP socket, or close it at once.
fn admit(
    broker: &Broker,
    addr: std::net::SocketAddr,
    listener: crate::runtime::admission::Listener,
) -> Option<crate::runtime::admission::Permit> {
    match broker.admission().admit(listener, addr.ip()) {
        Ok(p) => Some(p),
        Err(reason) => {
            tracing::debug!(peer = %addr, reason = reason.as_str(), "HTTP connection refused");
            None
        }
    }
}

/// Serve the routes over plain HTTP until the task is stopped.
pub async fn serve(listener: TcpListener, broker: Arc<Broker>, console: Arc<console::Console>) {
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(%e, "HTTP accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(permit) = admit(&broker, peer, crate::runtime::admission::Listener::Http) else {
            continue;
        };
        let broker = broker.clone();
        let console = console.clone();
        tokio::spawn(async move {
            serve_conn(sock, &broker, &console, permit, peer, false).await;
        });
    }
}

/// Serve the same routes over HTTPS until the task is stopped.
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    broker: Arc<Broker>,
    console: Arc<console::Console>,
) {
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(%e, "HTTPS accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(permit) = admit(&broker, peer, crate::runtime::admission::Listener::Https) else {
            continue;
        };
        let acceptor = acceptor.clone();
        let broker = broker.clone();
        let console = console.clone();
        tokio::spawn(async move {
            let deadline = broker.admission().deadlines.handshake;
            let tls = match tokio::time::timeout(deadline, acceptor.accept(sock)).await {
                Ok(Ok(s)) => s,
                _ => {
                    tracing::debug!(%peer, "HTTPS TLS handshake failed");
                    return;
                }
            };
            serve_conn(tls, &broker, &console, permit, peer, true).await;
        });
    }
}
