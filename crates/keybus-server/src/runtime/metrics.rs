//! Broker-wide metric counters, updated where the work happens, and [`MeteredStore`], which
//! times commits. Per-entity values are read from the entities at scrape time; the text
//! rendering (`GET /metrics`) is `crate::http_metrics`.

use std::sync::Arc;
use std::time::Instant;

use keybus_core::{CommitFuture, EntityDefinition, EntitySnapshot, Store, StoreError, StoreOp};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

/// Labels of `keybus_incoming_requests_total`.
pub(crate) type RequestLabels = [(&'static str, String); 2];

/// Broker-wide metrics (cheap to clone: every metric is shared).
#[derive(Debug, Clone)]
pub(crate) struct Metrics {
    /// Requests by operation (`send`, `put-token`, `$management` operations) and result
    /// (`success`, `client_error`, `server_error`).
    pub requests: Family<RequestLabels, Counter>,
    pub server_errors: Counter,
    pub throttled: Counter,
    pub commit_seconds: Histogram,
    pub links: Gauge,
    /// `requests{operation="send",result="success"}`, kept at hand for the hot path.
    sends_ok: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        let requests: Family<RequestLabels, Counter> = Family::default();
        let sends_ok = requests
            .get_or_create(&[
                ("operation", "send".to_string()),
                ("result", "success".to_string()),
            ])
            .clone();
        Metrics {
            requests,
            sends_ok,
            server_errors: Counter::default(),
            throttled: Counter::default(),
            // 50 µs .. ~1.6 s
            commit_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            links: Gauge::default(),
        }
    }
}

impl Metrics {
    /// Count one request. `status` is an HTTP-style status code.
    pub(crate) fn request(&self, operation: &str, status: i32) {
        if status == 200 && operation == "send" {
            self.sends_ok.inc();
            return;
        }
        let result = match status {
            200..=299 => "success",
            500..=599 => "server_error",
            _ => "client_error",
        };
        if status >= 500 {
            self.server_errors.inc();
        }
        if status == 503 {
            self.throttled.inc();
        }
        self.requests
            .get_or_create(&[
                ("operation", operation.to_string()),
                ("result", result.to_string()),
            ])
            .inc();
    }
}

/// Counts a link while it lives.
#[derive(Debug)]
pub(crate) struct LinkGauge(Gauge);

impl LinkGauge {
    pub(crate) fn new(metrics: &Metrics) -> LinkGauge {
        metrics.links.inc();
        LinkGauge(metrics.links.clone())
    }
}

impl Drop for LinkGauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// A [`Store`] that times commits and counts failed ones as server errors.
pub(crate) struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Metrics,
}

impl MeteredStore {
    pub(crate) fn new(inner: Arc<dyn Store>, metrics: Metrics) -> MeteredStore {
        MeteredStore { inner, metrics }
    }
}

impl Store for MeteredStore {
    fn commit(&self, ops: Vec<StoreOp>) -> CommitFuture {
        let start = Instant::now();
        let fut = self.inner.commit(ops);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let r = fut.await;
            metrics
                .commit_seconds
                .observe(start.elapsed().as_secs_f64());
            if r.is_err() {
                metrics.server_errors.inc();
            }
            r
        })
    }

    fn list_entities(&self) -> Result<Vec<EntityDefinition>, StoreError> {
        self.inner.list_entities()
    }

    fn load_entity(&self, entity: &str) -> Result<EntitySnapshot, StoreError> {
        self.inner.load_entity(entity)
    }

    fn healthy(&self) -> bool {
        self.inner.healthy()
    }

    fn status(&self) -> Result<(), StoreError> {
        self.inner.status()
    }
}
