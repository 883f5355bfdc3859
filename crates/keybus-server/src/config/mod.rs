//! Configuration: the keybus TOML file (`toml_file.rs`) or the Service Bus emulator's
//! `Config.json` (`emulator.rs`), told apart by content, validated here into a [`Config`] with
//! typed values. Unknown keys in either file fail the boot with the key named (and, in the
//! JSON file, where it is). Correlation filters in both files are read through one file form
//! (`correlation.rs`); ISO 8601 durations through one exact parser (`iso8601.rs`).

mod correlation;
mod emulator;
mod iso8601;
mod toml_file;

pub use emulator::{EMULATOR_KEY, EMULATOR_POLICY, strip_json_comments};
pub use iso8601::parse_iso8601_ms;

use std::path::Path;

use keybus_core::{
    EntityDefinition, EntityKind, QueueProperties, RuleDefinition, SubscriptionDefinition,
    validate_entity_name,
};

/// The definition of `<topic>/Subscriptions/<name>`.
pub(crate) fn subscription(
    topic: &str,
    name: String,
    properties: QueueProperties,
    dead_lettering_on_filter_evaluation_exceptions: bool,
    rules: Vec<RuleDefinition>,
) -> EntityDefinition {
    EntityDefinition {
        name: format!("{topic}/Subscriptions/{name}"),
        kind: EntityKind::Subscription(SubscriptionDefinition {
            topic: topic.to_string(),
            name,
            properties,
            dead_lettering_on_filter_evaluation_exceptions,
            rules,
        }),
    }
}
use keybus_auth::{Right, SasPolicy};
use serde::Deserialize;

/// Limits on everything a client can make the broker hold.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// AMQP sockets (plain, TLS, WebSocket) open at once, counted from accept; 0 = derived
    /// from the descriptor limit (see `admission.rs`).
    pub max_connections: usize,
    /// Of those, sockets that have not yet put a valid token; 0 = a quarter of
    /// `max_connections`.
    pub max_unauthenticated_connections: usize,
    /// Sockets without a token from one source address (IPv6: one /64); 0 = a quarter of
    /// `max_unauthenticated_connections`.
    pub max_unauthenticated_per_address: usize,
    /// HTTP sockets (plain and TLS) open at once.
    pub max_http_connections: usize,
    /// HTTP sockets beyond `max_http_connections` that still serve `/health`, `/ready` and
    /// `/metrics` (only those).
    pub http_reserved_connections: usize,
    pub max_sessions_per_connection: usize,
    pub max_links_per_session: usize,
    pub max_unsettled_per_link: u32,
    pub max_frame_size: u32,
    /// Store commits submitted and not yet durable at which the store counts as busy: new
    /// sends are refused with `com.microsoft:server-busy` (REST: 503 with `Retry-After`) and
    /// sender links get no new credit until the backlog falls below it. Settlements,
    /// housekeeping and forwarding still commit. The default (2048) is half the 4096 batches
    /// the embedded store used to queue before it blocked its caller; each commit holds at
    /// least one op, so it is at most a few of the writer's group commits (4096 ops each).
    pub max_store_backlog: usize,
    /// Bytes of message bodies kept in memory, for all entities together. Past it, a committed
    /// message that is not locked keeps only its index entry in memory and its body in the
    /// store, read back when it is delivered, peeked or forwarded: a queue's depth is bounded
    /// by the disk, not by memory. The heads of queues stay in memory while they fit.
    pub body_window_bytes: u64,
    /// A connection that has put no valid token on `$cbs` within this many milliseconds of
    /// its `open` is closed.
    pub token_timeout_ms: u64,
    /// The first byte, the protocol header and SASL (and the TLS handshake) must be done
    /// within this many milliseconds of accept.
    pub handshake_timeout_ms: u64,
    /// `open` must arrive within this many milliseconds of the end of the handshake.
    pub open_timeout_ms: u64,
    /// The idle time-out announced in `open`: a connection that sends no frame (not even an
    /// empty one) for this long is closed.
    pub idle_timeout_ms: u32,
    /// A WebSocket upgrade request must be complete and answered within this long.
    pub websocket_upgrade_timeout_ms: u64,
    /// An HTTP request head must arrive within this long (also the keep-alive idle time).
    pub http_header_timeout_ms: u64,
    /// An HTTP request body must arrive within this long.
    pub http_body_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 0,
            max_unauthenticated_connections: 0,
            max_unauthenticated_per_address: 0,
            max_http_connections: 128,
            http_reserved_connections: 8,
            max_sessions_per_connection: 256,
            max_links_per_session: 256,
            max_unsettled_per_link: 5000,
            max_frame_size: 1024 * 1024,
            max_store_backlog: 2048,
            body_window_bytes: 8 * 1024 * 1024,
            token_timeout_ms: 10_000,
            handshake_timeout_ms: 10_000,
            open_timeout_ms: 10_000,
            idle_timeout_ms: 120_000,
            websocket_upgrade_timeout_ms: 10_000,
            http_header_timeout_ms: 10_000,
            http_body_timeout_ms: 30_000,
        }
    }
}

/// The validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub namespace: String,
    /// Policies from the file; empty means "generate one and keep it in the data dir".
    pub policies: Vec<SasPolicy>,
    pub limits: Limits,
    pub entities: Vec<EntityDefinition>,
    pub max_message_size: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            namespace: "keybus".into(),
            policies: Vec::new(),
            limits: Limits::default(),
            entities: Vec::new(),
            max_message_size: keybus_core::DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

/// A configuration that could not be read or is invalid.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("invalid keybus TOML config: {0}")]
    Toml(String),
    #[error("invalid emulator Config.json: {0}")]
    Json(String),
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text)
    }

    /// Parse either format: a document whose first significant character is `{` is the
    /// emulator's JSON (with `//` and `/* */` comments allowed), anything else keybus TOML.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let stripped = strip_json_comments(text);
        if stripped.trim_start().starts_with('{') {
            validate(emulator::parse(&stripped)?)
        } else {
            validate(toml_file::parse(text)?)
        }
    }
}

fn validate(cfg: Config) -> Result<Config, ConfigError> {
    if !(1024..=keybus_core::MAX_MESSAGE_SIZE_LIMIT).contains(&cfg.max_message_size) {
        return Err(ConfigError::Invalid(format!(
            "namespace.max_message_size {} is out of range (1024 to 104857600)",
            cfg.max_message_size
        )));
    }
    if cfg.limits.max_store_backlog == 0 {
        return Err(ConfigError::Invalid(
            "limits.max_store_backlog must be at least 1".into(),
        ));
    }
    if cfg.limits.max_frame_size < 4096 {
        return Err(ConfigError::Invalid(
            "limits.max_frame_size must be at least 4096".into(),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for e in &cfg.entities {
        validate_entity_name(&e.name).map_err(ConfigError::Invalid)?;
        if !matches!(e.kind, EntityKind::Subscription(_)) {
            keybus_auth::scope::check_entity_name(&e.name).map_err(ConfigError::Invalid)?;
        }
        if !seen.insert(e.key()) {
            return Err(ConfigError::Invalid(format!(
                "entity '{}' is declared twice",
                e.name
            )));
        }
        match &e.kind {
            EntityKind::Topic(t) => {
                if !(1024..=keybus_core::MAX_MESSAGE_SIZE_LIMIT).contains(&t.max_message_size) {
                    return Err(ConfigError::Invalid(format!(
                        "topic '{}': max message size out of range (1 KB to 100 MB)",
                        e.name
                    )));
                }
            }
            EntityKind::Subscription(sd) => {
                sd.properties
                    .validate()
                    .map_err(|m| ConfigError::Invalid(format!("subscription '{}': {m}", e.name)))?;
                for r in &sd.rules {
                    keybus_core::topic::compile_rule(r).map_err(|m| {
                        ConfigError::Invalid(format!(
                            "subscription '{}', rule '{}': {m}",
                            e.name, r.name
                        ))
                    })?;
                }
            }
            EntityKind::Queue(p) => p
                .validate()
                .map_err(|m| ConfigError::Invalid(format!("queue '{}': {m}", e.name)))?,
        }
    }
    for p in &cfg.policies {
        if p.name.is_empty() || p.key.is_empty() {
            return Err(ConfigError::Invalid(
                "a SAS policy needs a name and a key".into(),
            ));
        }
    }
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use keybus_core::FilterDefinition;

    #[test]
    fn a_typo_says_where_it_is() {
        let text = r#"{ "UserConfig": { "Namespaces": [ { "Name": "ns", "Queues": [
            { "Name": "a" }, { "Name": "b", "Properties": { "LockDuraton": "PT1M" } } ] } ] } }"#;
        let e = Config::parse(text).unwrap_err().to_string();
        assert!(
            e.contains("UserConfig.Namespaces[0].Queues[1].Properties.LockDuraton")
                && e.contains("unknown field"),
            "{e}"
        );
        let text = r#"{ "UserConfig": { "Namespaces": [ { "Topics": [ { "Name": "t",
            "Properties": { "DefaultMessageTimeToLive": "1 hour" } } ] } ] } }"#;
        let e = Config::parse(text).unwrap_err().to_string();
        assert!(
            e.contains("UserConfig.Namespaces[0].Topics[0].Properties.DefaultMessageTimeToLive")
                && e.contains("'1 hour' is not an ISO 8601 duration"),
            "{e}"
        );
        let text = r#"{ "UserConfig": { "Namespaces": [ { "Queues": [
            { "Name": "a", "Properties": { "MaxDeliveryCount": "3" } } ] } ] } }"#;
        let e = Config::parse(text).unwrap_err().to_string();
        assert!(e.contains("Queues[0].Properties.MaxDeliveryCount"), "{e}");
        assert!(Config::parse(r#"{ "UserConfig": { "Namespaces": [] } }"#).is_err());
        assert!(Config::parse(r#"{ "Other": 1 }"#).is_err());
    }

    #[test]
    fn emulator_file_with_comments() {
        let text = r#"
        // sample
        { "UserConfig": { "Namespaces": [ { "Name": "sbemulatorns",
            "Queues": [ { "Name": "queue.1", "Properties": { "LockDuration": "PT1M", /* x */
              "MaxDeliveryCount": 3, "DefaultMessageTimeToLive": "PT1H", "RequiresSession": false } } ],
            "Topics": [] } ], "Logging": { "Type": "File" } } }"#;
        let cfg = Config::parse(text).unwrap();
        assert_eq!(cfg.policies[0].key, "SAS_KEY_VALUE");
        let EntityKind::Queue(p) = &cfg.entities[0].kind else {
            panic!()
        };
        assert_eq!(p.lock_duration_ms, 60_000);
        assert_eq!(p.max_delivery_count, 3);
        assert_eq!(p.default_message_ttl_ms, Some(3_600_000));
    }

    #[test]
    fn both_formats_give_the_same_queue() {
        let toml = r#"
[[queues]]
name = "orders"
lock_duration = "30s"
max_delivery_count = 4
default_message_time_to_live = "1h"
dead_lettering_on_message_expiration = true
requires_duplicate_detection = true
duplicate_detection_history_time_window = "2m"
requires_session = true
forward_dead_lettered_messages_to = "graveyard"
[[queues]]
name = "graveyard"
"#;
        let json = r#"{ "UserConfig": { "Namespaces": [ { "Name": "n", "Queues": [
            { "Name": "orders", "Properties": { "LockDuration": "PT30S", "MaxDeliveryCount": 4,
              "DefaultMessageTimeToLive": "PT1H", "DeadLetteringOnMessageExpiration": true,
              "RequiresDuplicateDetection": true, "DuplicateDetectionHistoryTimeWindow": "PT2M",
              "RequiresSession": true, "ForwardDeadLetteredMessagesTo": "graveyard" } },
            { "Name": "graveyard" } ] } ] } }"#;
        let from_toml = Config::parse(toml).unwrap().entities;
        let from_json = Config::parse(json).unwrap().entities;
        assert_eq!(from_toml, from_json);
        let EntityKind::Queue(p) = &from_toml[0].kind else {
            panic!()
        };
        assert_eq!(p.lock_duration_ms, 30_000);
        assert_eq!(p.duplicate_detection_window_ms, 120_000);
        assert_eq!(
            p.forward_dead_lettered_messages_to.as_deref(),
            Some("graveyard")
        );
    }

    #[test]
    fn topics_in_both_formats() {
        let toml = r#"
[[topics]]
name = "events"
[[topics.subscriptions]]
name = "all"
[[topics.subscriptions]]
name = "eu"
[[topics.subscriptions.rules]]
name = "eu"
sql_filter = "Region = 'EU'"
action = "SET Routed = 'yes'"
"#;
        let cfg = Config::parse(toml).unwrap();
        let names: Vec<_> = cfg.entities.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "events/Subscriptions/all",
                "events/Subscriptions/eu",
                "events"
            ]
        );
        let EntityKind::Subscription(all) = &cfg.entities[0].kind else {
            panic!()
        };
        assert_eq!(all.rules, vec![RuleDefinition::default_rule()]);
        assert!(Config::parse(&toml.replace("Region = 'EU'", "Region = ")).is_err());

        let json = r#"{ "UserConfig": { "Namespaces": [ { "Name": "sbemulatorns", "Queues": [],
            "Topics": [ { "Name": "topic.1", "Properties": { "DefaultMessageTimeToLive": "PT1H" },
              "Subscriptions": [ { "Name": "subscription.1", "Properties": { "MaxDeliveryCount": 3 },
                "Rules": [ { "Name": "app-prop-filter-1", "Properties": { "FilterType": "Correlation",
                  "CorrelationFilter": { "ContentType": "application/text", "Label": "l", "Properties": { "prop3": "value3", "n": 2 } } } },
                  { "Name": "sql", "Properties": { "FilterType": "Sql", "SqlFilter": { "SqlExpression": "a = 1" },
                    "Action": { "SqlExpression": "SET b = 2" } } } ] } ] } ] } ], "Logging": { "Type": "File" } } }"#;
        let cfg = Config::parse(json).unwrap();
        let EntityKind::Subscription(sd) = &cfg.entities[0].kind else {
            panic!()
        };
        assert_eq!(sd.properties.max_delivery_count, 3);
        assert_eq!(sd.rules.len(), 2);
        assert!(
            matches!(&sd.rules[0].filter, FilterDefinition::Correlation(c) if c.properties.len() == 2 && c.label.as_deref() == Some("l"))
        );
        assert_eq!(sd.rules[1].action.as_deref(), Some("SET b = 2"));
        let EntityKind::Topic(tp) = &cfg.entities[1].kind else {
            panic!()
        };
        assert_eq!(tp.default_message_ttl_ms, Some(3_600_000));
    }

    #[test]
    fn toml_file() {
        let cfg = Config::parse(
            "[[queues]]\nname = \"orders\"\nlock_duration = \"5s\"\n[[sas_policies]]\nname = \"a\"\nkey = \"k\"\nrights = [\"Send\"]\n",
        )
        .unwrap();
        let EntityKind::Queue(p) = &cfg.entities[0].kind else {
            panic!()
        };
        assert_eq!(p.lock_duration_ms, 5_000);
        assert!(Config::parse("[[queues]]\nname = \"a\"\nbogus = 1\n").is_err());
        assert!(Config::parse("[[queues]]\nname = \"a?b\"\n").is_err());
        assert!(Config::parse("[[queues]]\nname = \"a\"\nlock_duration = \"1h\"\n").is_err());
    }

    #[test]
    fn out_of_range_values_are_refused() {
        assert!(Config::parse("[namespace]\nmax_message_size = 10\n").is_err());
        assert!(Config::parse("[limits]\nmax_frame_size = 10\n").is_err());
        assert!(Config::parse("[limits]\nmax_store_backlog = 0\n").is_err());
        let c =
            Config::parse("[limits]\nmax_store_backlog = 3\n").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.limits.max_store_backlog, 3);
        assert_eq!(Limits::default().max_store_backlog, 2048);
        assert!(Config::parse("[[queues]]\nname = \"a\"\n[[queues]]\nname = \"A\"\n").is_err());
    }
}
