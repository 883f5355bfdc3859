//! The HTTP listener: `GET /health` and `GET /ready` (200 when the broker accepts work, 503
//! when the store cannot write), `GET /metrics` (Prometheus).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use crate::broker::Broker;

async fn health(State(broker): State<Arc<Broker>>) -> (StatusCode, &'static str) {
    if broker.store.healthy() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "store cannot write\n")
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
        .with_state(broker)
}

pub async fn serve(listener: TcpListener, broker: Arc<Broker>) {
    if let Err(e) = axum::serve(listener, router(broker)).await {
        tracing::error!(%e, "HTTP server stopped");
    }
}
