//! Prometheus text for `GET /metrics`, named after Azure Monitor's Service Bus metrics where
//! one exists (`ActiveMessages` → `keybus_active_messages`, `IncomingMessages` →
//! `keybus_incoming_messages_total`, ...).
//!
//! Per-entity values are read from the entities' state machines at scrape time (counts, size,
//! activity counters); broker-wide counters are `crate::runtime::metrics`. Rendering uses
//! `prometheus-client` (OpenMetrics text).

use std::fmt;
use std::sync::atomic::Ordering;

use keybus_core::MessagingEntity;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::runtime::Broker;

/// One row of per-entity values, read at scrape time.
#[derive(Debug, Default)]
struct EntityRow {
    entity: String,
    active: u64,
    dead_letter: u64,
    scheduled: u64,
    size: u64,
    incoming: u64,
    outgoing: u64,
    completed: u64,
    abandoned: u64,
    dead_lettered: u64,
}

#[derive(Debug)]
struct EntityCollector {
    rows: Vec<EntityRow>,
    connections: i64,
    /// Entities waiting for the forwarder, and deadlines on the housekeeper's agenda.
    agenda: (usize, usize),
    /// Bytes of bodies in memory, the window's limit, and bodies that could not be read back.
    bodies: (u64, u64, u64),
    admission: crate::runtime::admission::Snapshot,
    budgets: crate::runtime::admission::Budgets,
}

type Gauges = [(&'static str, &'static str, fn(&EntityRow) -> u64)];

const ENTITY_GAUGES: &Gauges = &[
    (
        "keybus_active_messages",
        "Messages ready for delivery (Azure ActiveMessages)",
        |r| r.active,
    ),
    (
        "keybus_deadlettered_messages",
        "Messages in the dead-letter sub-queue (Azure DeadletteredMessages)",
        |r| r.dead_letter,
    ),
    (
        "keybus_scheduled_messages",
        "Scheduled messages (Azure ScheduledMessages)",
        |r| r.scheduled,
    ),
    (
        "keybus_size_bytes",
        "Bytes held by the entity (Azure Size)",
        |r| r.size,
    ),
];

const ENTITY_COUNTERS: &Gauges = &[
    (
        "keybus_incoming_messages",
        "Messages accepted (Azure IncomingMessages)",
        |r| r.incoming,
    ),
    (
        "keybus_outgoing_messages",
        "Messages delivered to receivers (Azure OutgoingMessages)",
        |r| r.outgoing,
    ),
    (
        "keybus_complete_message",
        "Messages completed (Azure CompleteMessage)",
        |r| r.completed,
    ),
    (
        "keybus_abandon_message",
        "Messages abandoned (Azure AbandonMessage)",
        |r| r.abandoned,
    ),
    (
        "keybus_dead_lettered_messages",
        "Messages moved to the dead-letter sub-queue, for any reason",
        |r| r.dead_lettered,
    ),
];

impl Collector for EntityCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        for (name, help, value) in ENTITY_GAUGES {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for r in &self.rows {
                let labels = [("entity", r.entity.as_str())];
                let v = i64::try_from(value(r)).unwrap_or(i64::MAX);
                ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
            }
        }
        for (name, help, value) in ENTITY_COUNTERS {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for r in &self.rows {
                let labels = [("entity", r.entity.as_str())];
                ConstCounter::new(value(r)).encode(family.encode_family(&labels)?)?;
            }
        }
        let family = encoder.encode_descriptor(
            "keybus_active_connections",
            "Open AMQP connections (Azure ActiveConnections)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.connections).encode(family)?;
        let (forwards, deadlines) = self.agenda;
        for (name, help, v) in [
            (
                "keybus_agenda_forwards",
                "Entities waiting for the forwarder",
                forwards,
            ),
            (
                "keybus_agenda_deadlines",
                "Entity deadlines (lock expiry, schedules, TTL) the housekeeper waits for",
                deadlines,
            ),
        ] {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(v as i64).encode(family)?;
        }
        let (used, limit, read_errors) = self.bodies;
        for (name, help, v) in [
            (
                "keybus_body_window_bytes",
                "Bytes of message bodies held in memory (the rest are read back from the store)",
                used,
            ),
            (
                "keybus_body_window_limit_bytes",
                "The body window ([limits] body_window_bytes)",
                limit,
            ),
        ] {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            ConstGauge::new(i64::try_from(v).unwrap_or(i64::MAX)).encode(family)?;
        }
        let family = encoder.encode_descriptor(
            "keybus_body_read_errors",
            "Message bodies that could not be read back from the store",
            None,
            MetricType::Counter,
        )?;
        ConstCounter::new(read_errors).encode(family)?;
        self.encode_admission(&mut encoder)
    }
}

impl EntityCollector {
    fn encode_admission(&self, encoder: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
        let a = &self.admission;
        let mut family = encoder.encode_descriptor(
            "keybus_accepted_sockets",
            "Sockets admitted, by listener",
            None,
            MetricType::Counter,
        )?;
        for (listener, n) in &a.accepted {
            let labels = [("listener", *listener)];
            ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "keybus_refused_sockets",
            "Sockets refused at accept, by listener and the budget that was full",
            None,
            MetricType::Counter,
        )?;
        for (listener, reason, n) in &a.refused {
            let labels = [("listener", *listener), ("reason", *reason)];
            ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "keybus_open_sockets",
            "Open sockets by stage (unauthenticated and authenticated AMQP, HTTP, HTTP probe reserve)",
            None,
            MetricType::Gauge,
        )?;
        for (stage, n) in [
            ("unauthenticated", a.unauthenticated),
            ("authenticated", a.authenticated),
            ("http", a.http),
            ("http_reserved", a.http_reserved),
        ] {
            let labels = [("stage", stage)];
            let v = i64::try_from(n).unwrap_or(i64::MAX);
            ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
        }
        let mut family = encoder.encode_descriptor(
            "keybus_socket_budget",
            "Admission budgets in force, by name",
            None,
            MetricType::Gauge,
        )?;
        let b = &self.budgets;
        for (name, n) in [
            ("max_connections", b.max_connections),
            ("max_unauthenticated_connections", b.max_unauthenticated),
            (
                "max_unauthenticated_per_address",
                b.max_unauthenticated_per_address,
            ),
            ("max_http_connections", b.max_http),
            ("http_reserved_connections", b.http_reserved),
        ] {
            let labels = [("budget", name)];
            let v = i64::try_from(n).unwrap_or(i64::MAX);
            ConstGauge::new(v).encode(family.encode_family(&labels)?)?;
        }
        let family = encoder.encode_descriptor(
            "keybus_open_files_limit",
            "The process's soft RLIMIT_NOFILE (file descriptors) at start",
            None,
            MetricType::Gauge,
        )?;
        let v = b
            .nofile
            .map_or(-1, |n| i64::try_from(n).unwrap_or(i64::MAX));
        ConstGauge::new(v).encode(family)
    }
}

fn rows(broker: &Broker) -> Vec<EntityRow> {
    let mut out = Vec::new();
    for e in broker.entity_list() {
        let st = e.lock();
        let queue_row = |entity: String, q: &keybus_core::Queue| {
            let c = q.counts();
            let s = q.stats();
            EntityRow {
                entity,
                active: c.active,
                dead_letter: c.dead_letter,
                scheduled: c.scheduled,
                size: c.size_bytes,
                incoming: s.incoming,
                outgoing: s.outgoing,
                completed: s.completed,
                abandoned: s.abandoned,
                dead_lettered: s.dead_lettered,
            }
        };
        match &st.machine {
            MessagingEntity::Queue(q) => out.push(queue_row(e.name.clone(), q)),
            MessagingEntity::Topic(t) => {
                let mut topic = EntityRow {
                    entity: e.name.clone(),
                    incoming: t.incoming(),
                    ..EntityRow::default()
                };
                for s in t.subscriptions() {
                    let row = queue_row(
                        format!("{}/subscriptions/{}", e.name, s.definition.name),
                        &s.queue,
                    );
                    topic.active += row.active;
                    topic.dead_letter += row.dead_letter;
                    topic.scheduled += row.scheduled;
                    topic.size += row.size;
                    topic.outgoing += row.outgoing;
                    topic.completed += row.completed;
                    topic.abandoned += row.abandoned;
                    topic.dead_lettered += row.dead_lettered;
                    out.push(row);
                }
                out.push(topic);
            }
        }
    }
    out.sort_by(|a, b| a.entity.cmp(&b.entity));
    out
}

/// The OpenMetrics text of every metric.
pub(crate) fn render(broker: &Broker) -> Result<String, fmt::Error> {
    let m = &broker.metrics();
    let mut registry = Registry::default();
    registry.register(
        "keybus_incoming_requests",
        "Requests by operation and result (Azure IncomingRequests, SuccessfulRequests, UserErrors, ServerErrors)",
        m.requests.clone(),
    );
    registry.register(
        "keybus_server_errors",
        "Requests that failed on the broker's side (Azure ServerErrors)",
        m.server_errors.clone(),
    );
    registry.register(
        "keybus_throttled_requests",
        "Requests refused as server-busy (Azure ThrottledRequests)",
        m.throttled.clone(),
    );
    registry.register(
        "keybus_active_links",
        "Attached AMQP links",
        m.links.clone(),
    );
    registry.register(
        "keybus_store_backlog",
        "Store commits submitted and not yet durable (busy at limits.max_store_backlog)",
        m.store_backlog.clone(),
    );
    registry.register(
        "keybus_store_commit_seconds",
        "Time from store submit to durable commit",
        m.commit_seconds.clone(),
    );
    registry.register_collector(Box::new(EntityCollector {
        rows: rows(broker),
        connections: broker.open_connections() as i64,
        agenda: broker.agenda_len(),
        bodies: {
            let w = broker.bodies().window();
            (w.used(), w.limit(), w.read_errors())
        },
        admission: broker.admission().snapshot(),
        budgets: broker.admission().budgets.clone(),
    }));
    registry.register_collector(Box::new(AuditCollector::of(broker)));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)?;
    Ok(out)
}

/// The audit log's counters and the failed-token rate limiter, read at scrape time.
#[derive(Debug)]
struct AuditCollector {
    counters: [(&'static str, &'static str, u64); 5],
    file_bytes: i64,
    limited_sources: i64,
}

impl AuditCollector {
    fn of(broker: &Broker) -> Self {
        let s = &broker.auth().audit.stats;
        let get = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        Self {
            counters: [
                (
                    "keybus_audit_lines_written",
                    "Audit lines written",
                    get(&s.written),
                ),
                (
                    "keybus_audit_lines_summarised",
                    "Repeated denials not written one by one (counted in summary lines)",
                    get(&s.summarised),
                ),
                (
                    "keybus_audit_write_errors",
                    "Audit lines that could not be written (the broker keeps serving)",
                    get(&s.write_errors),
                ),
                (
                    "keybus_audit_rotations",
                    "Audit log rotations",
                    get(&s.rotations),
                ),
                (
                    "keybus_audit_dropped",
                    "Allowed events not written because the audit writer's queue was full (denials are never dropped)",
                    get(&s.dropped),
                ),
            ],
            file_bytes: i64::try_from(get(&s.file_bytes)).unwrap_or(i64::MAX),
            limited_sources: i64::try_from(broker.auth().limited_sources(broker.now()))
                .unwrap_or(i64::MAX),
        }
    }
}

impl Collector for AuditCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        for (name, help, v) in self.counters {
            let family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            ConstCounter::new(v).encode(family)?;
        }
        let family = encoder.encode_descriptor(
            "keybus_audit_file_bytes",
            "Size of the current audit log file",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.file_bytes).encode(family)?;
        let family = encoder.encode_descriptor(
            "keybus_auth_limited_sources",
            "Client sources (IPv4 address, IPv6 /64) limited for too many refused tokens",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.limited_sources).encode(family)
    }
}
