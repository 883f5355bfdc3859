//! The HTTP listener: `GET /health` and `GET /ready` (200 when the broker accepts work, 503
//! when the store cannot write), `GET /metrics` (Prometheus).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use tokio::net::TcpListener;

use crate::broker::Broker;

async fn health(State(broker): State<Arc<Broker>>) -> (StatusCode, String) {
    match broker.store.status() {
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
    match crate::metrics::render(&broker) {
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

pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(health))
        .route("/metrics", get(metrics))
        .merge(crate::auth::sts::routes())
        .merge(crate::atom::routes())
        .with_state(broker)
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

pub async fn serve(listener: TcpListener, broker: Arc<Broker>) {
    let app = router(broker).into_make_service_with_connect_info::<SocketAddr>();
    if let Err(e) = axum::serve(listener, app).await {
        tracing::error!(%e, "HTTP server stopped");
    }
}

/// Serve the same routes over HTTPS until the task is stopped.
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    broker: Arc<Broker>,
) {
    // The token service's token endpoint and discovery answer over HTTPS only.
    let app = router(broker).layer(axum::Extension(crate::auth::sts::OverTls));
    loop {
        let (sock, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(%e, "HTTPS accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let acceptor = acceptor.clone();
        let service = hyper_util::service::TowerToHyperService::new(with_peer(app.clone(), peer));
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(
                std::time::Duration::from_secs(30),
                acceptor.accept(sock),
            )
            .await
            {
                Ok(Ok(s)) => s,
                _ => {
                    tracing::debug!(%peer, "HTTPS TLS handshake failed");
                    return;
                }
            };
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, error = %e, "HTTPS connection ended with an error");
            }
        });
    }
}
