//! The connector process's Prometheus metrics, labelled by connector: deliveries received,
//! outcomes (complete, dead_letter, abandon, lock_lost), push latency, retries, requests in
//! flight and whether the connector is connected. Rendered by `http.rs` at `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type ByConnector = [(&'static str, String); 1];
type ByOutcome = [(&'static str, String); 2];

/// Every metric of the process (cheap to clone: each metric is shared).
#[derive(Clone)]
pub struct Metrics {
    deliveries: Family<ByConnector, Counter>,
    outcomes: Family<ByOutcome, Counter>,
    latency: Family<ByConnector, Histogram>,
    retries: Family<ByConnector, Counter>,
    in_flight: Family<ByConnector, Gauge>,
    up: Family<ByConnector, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            deliveries: Family::default(),
            outcomes: Family::default(),
            // 1 ms .. ~65 s
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 17))
            }),
            retries: Family::default(),
            in_flight: Family::default(),
            up: Family::default(),
        }
    }
}

/// How a message's push ended, as counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    Complete,
    DeadLetter,
    Abandon,
    /// The settlement was refused (the lock was lost): the broker delivers the message again.
    LockLost,
}

impl Counted {
    fn label(self) -> &'static str {
        match self {
            Counted::Complete => "complete",
            Counted::DeadLetter => "dead_letter",
            Counted::Abandon => "abandon",
            Counted::LockLost => "lock_lost",
        }
    }
}

impl Metrics {
    fn by(connector: &str) -> ByConnector {
        [("connector", connector.to_string())]
    }

    pub fn delivered(&self, connector: &str) {
        self.deliveries.get_or_create(&Self::by(connector)).inc();
    }

    pub fn outcome(&self, connector: &str, outcome: Counted) {
        self.outcomes
            .get_or_create(&[
                ("connector", connector.to_string()),
                ("outcome", outcome.label().to_string()),
            ])
            .inc();
    }

    pub fn latency(&self, connector: &str, seconds: f64) {
        self.latency
            .get_or_create(&Self::by(connector))
            .observe(seconds);
    }

    pub fn retried(&self, connector: &str) {
        self.retries.get_or_create(&Self::by(connector)).inc();
    }

    pub fn set_in_flight(&self, connector: &str, n: usize) {
        self.in_flight
            .get_or_create(&Self::by(connector))
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// One more (`true`) or one less request in flight (session workers, which share the
    /// gauge).
    pub fn in_flight_step(&self, connector: &str, up: bool) {
        let g = self.in_flight.get_or_create(&Self::by(connector));
        if up {
            g.inc();
        } else {
            g.dec();
        }
    }

    pub fn set_up(&self, connector: &str, up: bool) {
        self.up
            .get_or_create(&Self::by(connector))
            .set(i64::from(up));
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut r = Registry::default();
        r.register(
            "keybus_connect_deliveries",
            "Messages received for pushing",
            self.deliveries.clone(),
        );
        r.register(
            "keybus_connect_outcomes",
            "How pushed messages were settled",
            self.outcomes.clone(),
        );
        r.register(
            "keybus_connect_push_duration_seconds",
            "Time from sending a push request to its answer",
            self.latency.clone(),
        );
        r.register(
            "keybus_connect_retries",
            "Pushes that failed transiently and were abandoned for a retry",
            self.retries.clone(),
        );
        r.register(
            "keybus_connect_in_flight",
            "Push requests in flight",
            self.in_flight.clone(),
        );
        r.register(
            "keybus_connect_up",
            "1 while the connector is connected to its source",
            self.up.clone(),
        );
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &r);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_by_connector() {
        let m = Metrics::default();
        m.delivered("orders");
        m.outcome("orders", Counted::DeadLetter);
        m.latency("orders", 0.02);
        m.retried("orders");
        m.set_in_flight("orders", 3);
        m.set_up("orders", true);
        let text = m.render();
        for line in [
            "keybus_connect_deliveries_total{connector=\"orders\"} 1",
            "keybus_connect_outcomes_total{connector=\"orders\",outcome=\"dead_letter\"} 1",
            "keybus_connect_push_duration_seconds_count{connector=\"orders\"} 1",
            "keybus_connect_retries_total{connector=\"orders\"} 1",
            "keybus_connect_in_flight{connector=\"orders\"} 3",
            "keybus_connect_up{connector=\"orders\"} 1",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
