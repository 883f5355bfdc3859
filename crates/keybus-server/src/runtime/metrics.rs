//! Broker-wide metric counters, updated where the work happens, and [`MeteredStore`], which
//! times commits and measures the store's backlog (commits submitted and not yet durable):
//! past `[limits] max_store_backlog` it answers [`StoreError::Busy`] from [`Store::admit`],
//! so new sends are refused before they touch an entity. Per-entity values are read from the entities at scrape time; the text
//! rendering (`GET /metrics`) is `crate::http_metrics`.

use std::sync::Arc;
use std::time::Instant;

use keybus_core::{
    CommitFuture, EntityDefinition, EntitySnapshot, LoadOptions, MessageSource, Store, StoreError,
    StoreOp, SubQueue,
};
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
    /// Store commits submitted and not yet resolved (see [`MeteredStore`]).
    pub store_backlog: Gauge,
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
            store_backlog: Gauge::default(),
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

/// A [`Store`] that times commits, counts failed ones as server errors and counts the
/// commits in flight. A commit leaves the backlog when its future resolves or is dropped, so
/// a caller that stops waiting never leaves the store looking busy for good.
pub(crate) struct MeteredStore {
    inner: Arc<dyn Store>,
    metrics: Metrics,
    /// `admit` answers `Busy` while at least this many commits are in flight.
    max_backlog: usize,
}

impl MeteredStore {
    pub(crate) fn new(inner: Arc<dyn Store>, metrics: Metrics, max_backlog: usize) -> MeteredStore {
        MeteredStore {
            inner,
            metrics,
            max_backlog: max_backlog.max(1),
        }
    }

    fn backlog(&self) -> usize {
        usize::try_from(self.metrics.store_backlog.get()).unwrap_or(0)
    }
}

/// One commit in the backlog, from submission until its future resolves or is dropped.
struct InFlight(Gauge);

impl InFlight {
    fn enter(gauge: &Gauge) -> InFlight {
        gauge.inc();
        InFlight(gauge.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl MessageSource for MeteredStore {
    fn read_message(
        &self,
        entity: &str,
        sub: SubQueue,
        seq: i64,
    ) -> Result<Arc<keybus_amqp::Message>, StoreError> {
        self.inner.read_message(entity, sub, seq)
    }
}

impl Store for MeteredStore {
    fn commit(&self, ops: Vec<StoreOp>) -> CommitFuture {
        let start = Instant::now();
        let in_flight = InFlight::enter(&self.metrics.store_backlog);
        let fut = self.inner.commit(ops);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let r = fut.await;
            drop(in_flight);
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

    fn load_entity(
        &self,
        entity: &str,
        options: LoadOptions,
    ) -> Result<EntitySnapshot, StoreError> {
        self.inner.load_entity(entity, options)
    }

    fn healthy(&self) -> bool {
        self.inner.healthy()
    }

    fn status(&self) -> Result<(), StoreError> {
        self.inner.status()
    }

    fn admit(&self) -> Result<(), StoreError> {
        self.inner.admit()?;
        let backlog = self.backlog();
        if backlog >= self.max_backlog {
            return Err(StoreError::Busy {
                backlog,
                limit: self.max_backlog,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};

    use tokio::sync::oneshot;

    use super::*;

    /// A store whose commits resolve only when the test releases them, oldest first.
    #[derive(Default)]
    struct HeldStore {
        held: Mutex<Vec<oneshot::Sender<()>>>,
        poisoned: AtomicBool,
    }

    impl HeldStore {
        fn release_oldest(&self) {
            let mut held = self.held.lock().unwrap();
            assert!(!held.is_empty(), "no commit is held");
            let _ = held.remove(0).send(());
        }
    }

    impl MessageSource for HeldStore {
        fn read_message(
            &self,
            entity: &str,
            _sub: SubQueue,
            seq: i64,
        ) -> Result<Arc<keybus_amqp::Message>, StoreError> {
            Err(StoreError::Corrupt(format!(
                "{entity} {seq}: no messages here"
            )))
        }
    }

    impl Store for HeldStore {
        fn commit(&self, _ops: Vec<StoreOp>) -> CommitFuture {
            let (tx, rx) = oneshot::channel();
            self.held.lock().unwrap().push(tx);
            Box::pin(async move { rx.await.map_err(|_| StoreError::Closed) })
        }
        fn list_entities(&self) -> Result<Vec<EntityDefinition>, StoreError> {
            Ok(Vec::new())
        }
        fn load_entity(
            &self,
            _entity: &str,
            _options: LoadOptions,
        ) -> Result<EntitySnapshot, StoreError> {
            Ok(EntitySnapshot::default())
        }
        fn healthy(&self) -> bool {
            !self.poisoned.load(Ordering::SeqCst)
        }
    }

    fn metered(limit: usize) -> (Arc<HeldStore>, MeteredStore, Metrics) {
        let inner = Arc::new(HeldStore::default());
        let metrics = Metrics::default();
        let store = MeteredStore::new(inner.clone(), metrics.clone(), limit);
        (inner, store, metrics)
    }

    #[tokio::test]
    async fn busy_at_the_limit_and_admits_again_once_commits_resolve() {
        let (inner, store, metrics) = metered(2);
        assert!(store.admit().is_ok());
        let first = store.commit(Vec::new());
        assert!(
            store.admit().is_ok(),
            "one in flight is below the limit of two"
        );
        let second = store.commit(Vec::new());
        match store.admit() {
            Err(StoreError::Busy { backlog, limit }) => assert_eq!((backlog, limit), (2, 2)),
            other => panic!("expected busy, got {other:?}"),
        }
        assert!(store.status().is_ok(), "busy is not unhealthy");
        assert_eq!(metrics.store_backlog.get(), 2);
        inner.release_oldest();
        first.await.unwrap();
        assert_eq!(metrics.store_backlog.get(), 1);
        assert!(store.admit().is_ok());
        inner.release_oldest();
        second.await.unwrap();
        assert_eq!(metrics.store_backlog.get(), 0);
    }

    #[tokio::test]
    async fn a_dropped_commit_leaves_the_backlog() {
        let (_inner, store, metrics) = metered(1);
        let fut = store.commit(Vec::new());
        assert!(matches!(store.admit(), Err(StoreError::Busy { .. })));
        drop(fut);
        assert_eq!(metrics.store_backlog.get(), 0);
        assert!(store.admit().is_ok());
    }

    #[tokio::test]
    async fn an_unhealthy_store_names_its_own_cause_first() {
        let (inner, store, _metrics) = metered(1);
        let _held = store.commit(Vec::new());
        inner.poisoned.store(true, Ordering::SeqCst);
        assert!(matches!(store.admit(), Err(StoreError::Poisoned)));
    }
}
