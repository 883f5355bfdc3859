//! The keybus TOML configuration file: `[namespace]`, `[[sas_policies]]`, `[limits]`,
//! `[[queues]]` and `[[topics]]` with their `[[topics.subscriptions]]` and rules. Durations
//! are humantime (`30s`, `5m`); unknown keys fail with the key named.

use keybus_core::{
    EntityDefinition, EntityKind, EntitySettings, FilterDefinition, QueueProperties,
    RuleDefinition, TopicProperties, limited,
};
use serde::Deserialize;

use super::correlation::FileCorrelation;
use super::{Config, ConfigError, Limits, Right, SasPolicy, subscription};

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawToml {
    namespace: RawNamespace,
    sas_policies: Vec<RawPolicy>,
    limits: Limits,
    queues: Vec<RawQueue>,
    topics: Vec<RawTopic>,
}

#[derive(Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawNamespace {
    name: String,
    max_message_size: u64,
}

impl Default for RawNamespace {
    fn default() -> Self {
        Self {
            name: "keybus".into(),
            max_message_size: keybus_core::DEFAULT_MAX_MESSAGE_SIZE,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: String,
    key: String,
    rights: Vec<Right>,
    /// A queue or topic name: the rule belongs to that entity only.
    #[serde(default)]
    entity: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawQueue {
    name: String,
    lock_duration: Option<String>,
    max_delivery_count: Option<u32>,
    default_message_time_to_live: Option<String>,
    dead_lettering_on_message_expiration: Option<bool>,
    requires_duplicate_detection: Option<bool>,
    duplicate_detection_history_time_window: Option<String>,
    requires_session: Option<bool>,
    max_message_size: Option<u64>,
    max_size_in_megabytes: Option<u64>,
    forward_to: Option<String>,
    forward_dead_lettered_messages_to: Option<String>,
    /// Subscriptions only.
    dead_lettering_on_filter_evaluation_exceptions: Option<bool>,
    /// Subscriptions only; none means the `$Default` rule.
    rules: Option<Vec<RawRule>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawTopic {
    name: String,
    default_message_time_to_live: Option<String>,
    requires_duplicate_detection: Option<bool>,
    duplicate_detection_history_time_window: Option<String>,
    max_message_size: Option<u64>,
    max_size_in_megabytes: Option<u64>,
    subscriptions: Vec<RawQueue>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawRule {
    name: String,
    /// `"true"` or `"false"`.
    filter: Option<String>,
    sql_filter: Option<String>,
    correlation_filter: Option<FileCorrelation>,
    action: Option<String>,
}

fn toml_rule(topic: &str, sub: &str, r: RawRule) -> Result<RuleDefinition, ConfigError> {
    let key = format!("topics.{topic}.subscriptions.{sub}.rules.{}", r.name);
    let filter = match (r.filter.as_deref(), r.sql_filter, r.correlation_filter) {
        (Some(f), None, None) if f.eq_ignore_ascii_case("true") => FilterDefinition::True,
        (Some(f), None, None) if f.eq_ignore_ascii_case("false") => FilterDefinition::False,
        (None, Some(sql), None) => FilterDefinition::Sql(sql),
        (None, None, Some(c)) => FilterDefinition::Correlation(c.into()),
        _ => {
            return Err(ConfigError::Invalid(format!(
                "{key}: give exactly one of filter = \"true\"/\"false\", sql_filter or correlation_filter"
            )));
        }
    };
    Ok(RuleDefinition {
        name: r.name,
        filter,
        action: r.action.filter(|a| !a.trim().is_empty()),
        created_at: 0,
    })
}

/// The settings of a queue or a subscription as the file gives them.
fn queue_settings(section: &str, q: &RawQueue) -> Result<EntitySettings, ConfigError> {
    let key = |f: &str| format!("{section}.{}.{f}", q.name);
    let duration =
        |f: &str, v: &Option<String>| v.as_deref().map(|v| humantime_ms(&key(f), v)).transpose();
    Ok(EntitySettings {
        lock_duration_ms: duration("lock_duration", &q.lock_duration)?,
        max_delivery_count: q.max_delivery_count,
        default_message_ttl_ms: duration(
            "default_message_time_to_live",
            &q.default_message_time_to_live,
        )?
        .map(limited),
        dead_lettering_on_message_expiration: q.dead_lettering_on_message_expiration,
        dead_lettering_on_filter_evaluation_exceptions: q
            .dead_lettering_on_filter_evaluation_exceptions,
        requires_duplicate_detection: q.requires_duplicate_detection,
        duplicate_detection_window_ms: duration(
            "duplicate_detection_history_time_window",
            &q.duplicate_detection_history_time_window,
        )?,
        requires_session: q.requires_session,
        max_message_size: q.max_message_size,
        max_size_bytes: q.max_size_in_megabytes.map(megabytes),
        forward_to: q.forward_to.clone(),
        forward_dead_lettered_messages_to: q.forward_dead_lettered_messages_to.clone(),
        ..Default::default()
    })
}

fn topic_settings(t: &RawTopic) -> Result<EntitySettings, ConfigError> {
    let key = |f: &str| format!("topics.{}.{f}", t.name);
    let duration =
        |f: &str, v: &Option<String>| v.as_deref().map(|v| humantime_ms(&key(f), v)).transpose();
    Ok(EntitySettings {
        default_message_ttl_ms: duration(
            "default_message_time_to_live",
            &t.default_message_time_to_live,
        )?
        .map(limited),
        requires_duplicate_detection: t.requires_duplicate_detection,
        duplicate_detection_window_ms: duration(
            "duplicate_detection_history_time_window",
            &t.duplicate_detection_history_time_window,
        )?,
        max_message_size: t.max_message_size,
        max_size_bytes: t.max_size_in_megabytes.map(megabytes),
        ..Default::default()
    })
}

fn megabytes(mb: u64) -> u64 {
    mb.saturating_mul(1024 * 1024)
}

fn humantime_ms(key: &str, v: &str) -> Result<i64, ConfigError> {
    humantime::parse_duration(v)
        .map(|d| d.as_millis().min(i64::MAX as u128) as i64)
        .map_err(|e| ConfigError::Invalid(format!("{key} = {v:?}: {e}")))
}

/// Read a keybus TOML file (validated by the caller).
pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
    let raw: RawToml = toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string()))?;
    let mut cfg = Config {
        namespace: raw.namespace.name,
        policies: raw
            .sas_policies
            .into_iter()
            .map(|p| SasPolicy {
                name: p.name,
                key: p.key,
                rights: p.rights,
                scope: p
                    .entity
                    .map(|e| e.trim_matches('/').to_ascii_lowercase())
                    .unwrap_or_default(),
            })
            .collect(),
        limits: raw.limits,
        entities: Vec::new(),
        max_message_size: raw.namespace.max_message_size,
    };
    for q in raw.queues {
        if q.rules.is_some() || q.dead_lettering_on_filter_evaluation_exceptions.is_some() {
            return Err(ConfigError::Invalid(format!(
                "queues.{}: rules belong to subscriptions",
                q.name
            )));
        }
        let p = queue_settings("queues", &q)?.queue(QueueProperties {
            max_message_size: cfg.max_message_size,
            ..Default::default()
        });
        cfg.entities.push(EntityDefinition {
            name: q.name,
            kind: EntityKind::Queue(p),
        });
    }
    for t in raw.topics {
        let p = topic_settings(&t)?.topic(TopicProperties {
            max_message_size: cfg.max_message_size,
            ..Default::default()
        });
        for s in t.subscriptions {
            let settings = queue_settings(&format!("topics.{}.subscriptions", t.name), &s)?;
            let props = settings.queue(QueueProperties {
                max_message_size: p.max_message_size,
                ..Default::default()
            });
            let rules = match s.rules {
                None => vec![RuleDefinition::default_rule()],
                Some(rules) => rules
                    .into_iter()
                    .map(|r| toml_rule(&t.name, &s.name, r))
                    .collect::<Result<_, _>>()?,
            };
            let dlq_on_filter = settings
                .dead_lettering_on_filter_evaluation_exceptions
                .unwrap_or(false);
            cfg.entities
                .push(subscription(&t.name, s.name, props, dlq_on_filter, rules));
        }
        cfg.entities.push(EntityDefinition {
            name: t.name,
            kind: EntityKind::Topic(p),
        });
    }
    Ok(cfg)
}
