//! The connector process's own HTTP listener: `/health` (200 while every connector is
//! connected to its source, else 503; the body lists each connector's state) and
//! Prometheus `/metrics`.

use std::net::SocketAddr;

use axum::Router;
use axum::extract::State as Extract;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use crate::metrics::Metrics;
use crate::status::Board;

#[derive(Clone)]
struct Shared {
    board: Board,
    metrics: Metrics,
}

async fn health(Extract(s): Extract<Shared>) -> Response {
    let states = s.board.snapshot();
    let ok = !states.is_empty() && states.iter().all(|(_, healthy, _)| *healthy);
    let body: serde_json::Map<String, serde_json::Value> = states
        .into_iter()
        .map(|(name, _, text)| (name, serde_json::Value::String(text)))
        .collect();
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::Value::Object(body).to_string(),
    )
        .into_response()
}

async fn render_metrics(Extract(s): Extract<Shared>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.render(),
    )
        .into_response()
}

/// Bind `addr`; the listener's address (port 0 picks one) and the server future.
pub async fn serve(
    addr: SocketAddr,
    board: Board,
    metrics: Metrics,
) -> std::io::Result<(SocketAddr, impl Future<Output = std::io::Result<()>>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/health", get(health))
        .route("/metrics", get(render_metrics))
        .with_state(Shared { board, metrics });
    Ok((local, async move { axum::serve(listener, app).await }))
}
