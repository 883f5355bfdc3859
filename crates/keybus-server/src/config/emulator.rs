//! The Service Bus emulator's `Config.json`: one namespace with its queues and topics, each
//! with `Properties` in the emulator's names and ISO 8601 durations. Read with serde; an
//! unknown or mistyped key fails with its path (`UserConfig.Namespaces[0].Queues[1].
//! Properties.LockDuraton: unknown field …`). The file carries no keys: the emulator's
//! documented policy and key are used.

use keybus_core::{
    EntityDefinition, EntityKind, EntitySettings, FilterDefinition, QueueProperties,
    RuleDefinition, TopicProperties, limited,
};
use serde::{Deserialize, Deserializer};

use super::correlation::FileCorrelation;
use super::{Config, ConfigError, Right, SasPolicy, parse_iso8601_ms, subscription};

/// The emulator's documented key and policy (its Config.json carries no keys).
pub const EMULATOR_POLICY: &str = "RootManageSharedAccessKey";
pub const EMULATOR_KEY: &str = "SAS_KEY_VALUE";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct File {
    user_config: UserConfig,
}

/// `Logging` and other keys the broker has no use for are ignored.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UserConfig {
    namespaces: Vec<Namespace>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Namespace {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    queues: Vec<Queue>,
    #[serde(default)]
    topics: Vec<Topic>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Queue {
    name: String,
    #[serde(default)]
    properties: QueueProps,
}

/// The properties of a queue or a subscription.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default, deny_unknown_fields)]
struct QueueProps {
    lock_duration: Option<Duration>,
    max_delivery_count: Option<u32>,
    default_message_time_to_live: Option<Duration>,
    dead_lettering_on_message_expiration: Option<bool>,
    requires_duplicate_detection: Option<bool>,
    duplicate_detection_history_time_window: Option<Duration>,
    requires_session: Option<bool>,
    forward_to: Option<String>,
    forward_dead_lettered_messages_to: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Topic {
    name: String,
    #[serde(default)]
    properties: TopicProps,
    #[serde(default)]
    subscriptions: Vec<Subscription>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default, deny_unknown_fields)]
struct TopicProps {
    default_message_time_to_live: Option<Duration>,
    duplicate_detection_history_time_window: Option<Duration>,
    requires_duplicate_detection: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Subscription {
    name: String,
    #[serde(default)]
    properties: QueueProps,
    #[serde(default)]
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Rule {
    name: String,
    #[serde(default)]
    properties: RuleProps,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct RuleProps {
    /// `Sql` or `Correlation`.
    filter_type: Option<String>,
    sql_filter: Option<SqlExpression>,
    correlation_filter: Option<FileCorrelation>,
    action: Option<SqlExpression>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct SqlExpression {
    sql_expression: Option<String>,
}

/// An ISO 8601 duration, in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Duration(i64);

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_iso8601_ms(&text).map(Duration).ok_or_else(|| {
            serde::de::Error::custom(format!("'{text}' is not an ISO 8601 duration such as PT1M"))
        })
    }
}

fn err(m: impl Into<String>) -> ConfigError {
    ConfigError::Json(m.into())
}

/// Read an emulator `Config.json` (comments already stripped; validated by the caller).
pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let file: File = serde_path_to_error::deserialize(&mut de).map_err(|e| err(e.to_string()))?;
    de.end().map_err(|e| err(e.to_string()))?;
    let [ns]: [Namespace; 1] = file
        .user_config
        .namespaces
        .try_into()
        .map_err(|_| err("UserConfig.Namespaces must hold exactly one namespace"))?;
    let mut cfg = Config {
        namespace: ns.name.unwrap_or_else(|| "sbemulatorns".into()),
        policies: vec![SasPolicy {
            name: EMULATOR_POLICY.into(),
            key: EMULATOR_KEY.into(),
            rights: vec![Right::Manage, Right::Send, Right::Listen],
            scope: String::new(),
        }],
        ..Config::default()
    };
    for q in ns.queues {
        if q.name.is_empty() {
            return Err(err("a queue has no Name"));
        }
        cfg.entities.push(EntityDefinition {
            name: q.name,
            kind: EntityKind::Queue(queue_properties(q.properties)),
        });
    }
    for t in ns.topics {
        topic(&mut cfg, t)?;
    }
    Ok(cfg)
}

fn ms(d: Option<Duration>) -> Option<i64> {
    d.map(|Duration(ms)| ms)
}

fn queue_properties(p: QueueProps) -> QueueProperties {
    EntitySettings {
        lock_duration_ms: ms(p.lock_duration),
        max_delivery_count: p.max_delivery_count,
        default_message_ttl_ms: ms(p.default_message_time_to_live).map(limited),
        dead_lettering_on_message_expiration: p.dead_lettering_on_message_expiration,
        requires_duplicate_detection: p.requires_duplicate_detection,
        duplicate_detection_window_ms: ms(p.duplicate_detection_history_time_window),
        requires_session: p.requires_session,
        forward_to: p.forward_to,
        forward_dead_lettered_messages_to: p.forward_dead_lettered_messages_to,
        ..Default::default()
    }
    .queue(QueueProperties::default())
}

fn topic(cfg: &mut Config, t: Topic) -> Result<(), ConfigError> {
    let name = t.name;
    if name.is_empty() {
        return Err(err("a topic has no Name"));
    }
    let p = EntitySettings {
        default_message_ttl_ms: ms(t.properties.default_message_time_to_live).map(limited),
        duplicate_detection_window_ms: ms(t.properties.duplicate_detection_history_time_window),
        requires_duplicate_detection: t.properties.requires_duplicate_detection,
        ..Default::default()
    }
    .topic(TopicProperties::default());
    for s in t.subscriptions {
        let sub = s.name;
        if sub.is_empty() {
            return Err(err(format!("a subscription of {name} has no Name")));
        }
        let mut rules = s
            .rules
            .into_iter()
            .map(|r| rule(&name, &sub, r))
            .collect::<Result<Vec<_>, _>>()?;
        if rules.is_empty() {
            rules.push(RuleDefinition::default_rule());
        }
        let q = queue_properties(s.properties);
        cfg.entities.push(subscription(&name, sub, q, false, rules));
    }
    cfg.entities.push(EntityDefinition {
        name,
        kind: EntityKind::Topic(p),
    });
    Ok(())
}

fn rule(topic: &str, sub: &str, r: Rule) -> Result<RuleDefinition, ConfigError> {
    if r.name.is_empty() {
        return Err(err(format!("a rule of {topic}/{sub} has no Name")));
    }
    let key = format!("rule {topic}/{sub}/{}", r.name);
    let text =
        |e: Option<SqlExpression>| e.and_then(|e| e.sql_expression).filter(|s| !s.is_empty());
    let p = r.properties;
    let filter = match p.filter_type.as_deref() {
        Some("Sql") => FilterDefinition::Sql(
            text(p.sql_filter)
                .ok_or_else(|| err(format!("{key}: SqlFilter.SqlExpression is required")))?,
        ),
        Some("Correlation") => {
            FilterDefinition::Correlation(p.correlation_filter.unwrap_or_default().into())
        }
        other => {
            return Err(err(format!(
                "{key}: FilterType must be \"Sql\" or \"Correlation\", not {other:?}"
            )));
        }
    };
    Ok(RuleDefinition {
        name: r.name,
        filter,
        action: text(p.action),
        created_at: 0,
    })
}

/// Remove `//` and `/* */` comments outside strings (the emulator's sample file has them).
pub fn strip_json_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut in_str = false;
    while let Some(c) = chars.next() {
        if in_str {
            out.push(c);
            if c == '\\' {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            } else if c == '"' {
                in_str = false;
            }
            continue;
        }
        match (c, chars.peek()) {
            ('"', _) => {
                in_str = true;
                out.push(c);
            }
            ('/', Some('/')) => {
                for n in chars.by_ref() {
                    if n == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            ('/', Some('*')) => {
                chars.next();
                let mut prev = ' ';
                for n in chars.by_ref() {
                    if prev == '*' && n == '/' {
                        break;
                    }
                    prev = n;
                }
            }
            _ => out.push(c),
        }
    }
    out
}
