//! The HTTP listener: `GET /health` (200 when the broker accepts work, 503 when the store
//! cannot write). The management and REST APIs arrive here later.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
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

pub fn router(broker: Arc<Broker>) -> Router {
    Router::new()
        .route("/health", get(health))
        .with_state(broker)
}

pub async fn serve(listener: TcpListener, broker: Arc<Broker>) {
    if let Err(e) = axum::serve(listener, router(broker)).await {
        tracing::error!(%e, "HTTP server stopped");
    }
}
