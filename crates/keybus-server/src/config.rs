//! Configuration: the keybus TOML file or the Service Bus emulator's `Config.json`, told apart
//! by content, validated into a [`Config`] with typed values. Unknown keys in the TOML file
//! fail the boot with the key named.

use std::path::Path;

use keybus_core::{
    EntityDefinition, EntityKind, FilterDefinition, QueueProperties, RuleDefinition, SimpleValue,
    SubscriptionDefinition, TopicProperties, validate_entity_name,
};

/// The definition of `<topic>/Subscriptions/<name>`.
fn subscription(
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
use serde::Deserialize;

/// A right a SAS policy grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum Right {
    Manage,
    Send,
    Listen,
}

/// A shared access policy (SAS key).
#[derive(Debug, Clone, PartialEq)]
pub struct SasPolicy {
    pub name: String,
    pub key: String,
    pub rights: Vec<Right>,
    /// The entity the rule belongs to (lower-case path; `""` = the whole namespace). Tokens
    /// signed with an entity's key are good for that entity (and a topic's subscriptions).
    pub scope: String,
}

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
            parse_emulator(&stripped)
        } else {
            parse_toml(text)
        }
    }
}

// ---------------------------------------------------------------- keybus TOML

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
    correlation_filter: Option<RawCorrelation>,
    action: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct RawCorrelation {
    correlation_id: Option<String>,
    message_id: Option<String>,
    to: Option<String>,
    reply_to: Option<String>,
    label: Option<String>,
    session_id: Option<String>,
    reply_to_session_id: Option<String>,
    content_type: Option<String>,
    properties: std::collections::BTreeMap<String, toml::Value>,
}

fn simple_value(key: &str, v: SimpleSource) -> Result<SimpleValue, ConfigError> {
    Ok(match v {
        SimpleSource::Toml(toml::Value::String(s))
        | SimpleSource::Json(serde_json::Value::String(s)) => SimpleValue::String(s),
        SimpleSource::Toml(toml::Value::Integer(n)) => SimpleValue::Long(n),
        SimpleSource::Toml(toml::Value::Float(d)) => SimpleValue::Double(d),
        SimpleSource::Toml(toml::Value::Boolean(b))
        | SimpleSource::Json(serde_json::Value::Bool(b)) => SimpleValue::Bool(b),
        SimpleSource::Json(serde_json::Value::Number(n)) => match n.as_i64() {
            Some(i) => SimpleValue::Long(i),
            None => SimpleValue::Double(n.as_f64().unwrap_or(0.0)),
        },
        other => {
            return Err(ConfigError::Invalid(format!(
                "{key}: unsupported property value {other:?}"
            )));
        }
    })
}

/// A correlation-filter property value from either file format.
#[derive(Debug)]
enum SimpleSource {
    Toml(toml::Value),
    Json(serde_json::Value),
}

fn toml_rule(topic: &str, sub: &str, r: RawRule) -> Result<RuleDefinition, ConfigError> {
    let key = format!("topics.{topic}.subscriptions.{sub}.rules.{}", r.name);
    let filter = match (r.filter.as_deref(), r.sql_filter, r.correlation_filter) {
        (Some(f), None, None) if f.eq_ignore_ascii_case("true") => FilterDefinition::True,
        (Some(f), None, None) if f.eq_ignore_ascii_case("false") => FilterDefinition::False,
        (None, Some(sql), None) => FilterDefinition::Sql(sql),
        (None, None, Some(c)) => FilterDefinition::Correlation {
            properties: c
                .properties
                .into_iter()
                .map(|(k, v)| {
                    Ok((
                        k.clone(),
                        simple_value(&format!("{key}.{k}"), SimpleSource::Toml(v))?,
                    ))
                })
                .collect::<Result<_, ConfigError>>()?,
            correlation_id: c.correlation_id,
            message_id: c.message_id,
            to: c.to,
            reply_to: c.reply_to,
            label: c.label,
            session_id: c.session_id,
            reply_to_session_id: c.reply_to_session_id,
            content_type: c.content_type,
        },
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

fn toml_queue_props(
    section: &str,
    q: &RawQueue,
    max_message_size: u64,
) -> Result<QueueProperties, ConfigError> {
    let mut p = QueueProperties {
        max_message_size,
        ..Default::default()
    };
    let key = |f: &str| format!("{section}.{}.{f}", q.name);
    if let Some(v) = &q.lock_duration {
        p.lock_duration_ms = humantime_ms(&key("lock_duration"), v)?;
    }
    if let Some(v) = q.max_delivery_count {
        p.max_delivery_count = v;
    }
    if let Some(v) = &q.default_message_time_to_live {
        p.default_message_ttl_ms = Some(humantime_ms(&key("default_message_time_to_live"), v)?);
    }
    if let Some(v) = q.dead_lettering_on_message_expiration {
        p.dead_lettering_on_message_expiration = v;
    }
    if let Some(v) = q.requires_duplicate_detection {
        p.requires_duplicate_detection = v;
    }
    if let Some(v) = &q.duplicate_detection_history_time_window {
        p.duplicate_detection_window_ms =
            humantime_ms(&key("duplicate_detection_history_time_window"), v)?;
    }
    if let Some(v) = q.requires_session {
        p.requires_session = v;
    }
    if let Some(v) = q.max_message_size {
        p.max_message_size = v;
    }
    if let Some(v) = q.max_size_in_megabytes {
        p.max_size_bytes = v.saturating_mul(1024 * 1024);
    }
    p.forward_to = q.forward_to.clone().filter(|s| !s.is_empty());
    p.forward_dead_lettered_messages_to = q
        .forward_dead_lettered_messages_to
        .clone()
        .filter(|s| !s.is_empty());
    Ok(p)
}

fn humantime_ms(key: &str, v: &str) -> Result<i64, ConfigError> {
    humantime::parse_duration(v)
        .map(|d| d.as_millis().min(i64::MAX as u128) as i64)
        .map_err(|e| ConfigError::Invalid(format!("{key} = {v:?}: {e}")))
}

fn parse_toml(text: &str) -> Result<Config, ConfigError> {
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
        let p = toml_queue_props("queues", &q, cfg.max_message_size)?;
        cfg.entities.push(EntityDefinition {
            name: q.name,
            kind: EntityKind::Queue(p),
        });
    }
    for t in raw.topics {
        let key = |f: &str| format!("topics.{}.{f}", t.name);
        let mut p = TopicProperties {
            max_message_size: cfg.max_message_size,
            ..Default::default()
        };
        if let Some(v) = &t.default_message_time_to_live {
            p.default_message_ttl_ms = Some(humantime_ms(&key("default_message_time_to_live"), v)?);
        }
        if let Some(v) = t.requires_duplicate_detection {
            p.requires_duplicate_detection = v;
        }
        if let Some(v) = &t.duplicate_detection_history_time_window {
            p.duplicate_detection_window_ms =
                humantime_ms(&key("duplicate_detection_history_time_window"), v)?;
        }
        if let Some(v) = t.max_message_size {
            p.max_message_size = v;
        }
        if let Some(v) = t.max_size_in_megabytes {
            p.max_size_bytes = v.saturating_mul(1024 * 1024);
        }
        for s in t.subscriptions {
            let props = toml_queue_props(
                &format!("topics.{}.subscriptions", t.name),
                &s,
                p.max_message_size,
            )?;
            let rules = match s.rules {
                None => vec![RuleDefinition::default_rule()],
                Some(rules) => rules
                    .into_iter()
                    .map(|r| toml_rule(&t.name, &s.name, r))
                    .collect::<Result<_, _>>()?,
            };
            let dlq_on_filter = s
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
    validate(cfg)
}

// ---------------------------------------------------------------- emulator Config.json

/// The emulator's documented key and policy (its Config.json carries no keys).
pub const EMULATOR_POLICY: &str = "RootManageSharedAccessKey";
pub const EMULATOR_KEY: &str = "SAS_KEY_VALUE";

fn parse_emulator(text: &str) -> Result<Config, ConfigError> {
    let err = |m: String| ConfigError::Json(m);
    let doc: serde_json::Value = serde_json::from_str(text).map_err(|e| err(e.to_string()))?;
    let user = doc
        .get("UserConfig")
        .ok_or_else(|| err("missing UserConfig".into()))?;
    let namespaces = user
        .get("Namespaces")
        .and_then(|v| v.as_array())
        .ok_or_else(|| err("missing UserConfig.Namespaces".into()))?;
    let ns = match namespaces.as_slice() {
        [ns] => ns,
        _ => {
            return Err(err(
                "UserConfig.Namespaces must hold exactly one namespace".into()
            ));
        }
    };
    let mut cfg = Config {
        namespace: ns
            .get("Name")
            .and_then(|v| v.as_str())
            .unwrap_or("sbemulatorns")
            .to_string(),
        policies: vec![SasPolicy {
            name: EMULATOR_POLICY.into(),
            key: EMULATOR_KEY.into(),
            rights: vec![Right::Manage, Right::Send, Right::Listen],
            scope: String::new(),
        }],
        ..Config::default()
    };
    for q in ns
        .get("Queues")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
    {
        let name = q
            .get("Name")
            .and_then(|v| v.as_str())
            .ok_or_else(|| err("a queue has no Name".into()))?;
        let props = q
            .get("Properties")
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        let p = emulator_queue_props(name, &props)?;
        cfg.entities.push(EntityDefinition {
            name: name.to_string(),
            kind: EntityKind::Queue(p),
        });
    }
    for t in ns
        .get("Topics")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
    {
        emulator_topic(&mut cfg, t)?;
    }
    validate(cfg)
}

fn json_str(v: &serde_json::Value, key: &str) -> Option<String> {
    v.get(key)
        .and_then(|x| x.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn emulator_topic(cfg: &mut Config, t: &serde_json::Value) -> Result<(), ConfigError> {
    let err = |m: String| ConfigError::Json(m);
    let name = json_str(t, "Name").ok_or_else(|| err("a topic has no Name".into()))?;
    let mut p = TopicProperties::default();
    if let Some(obj) = t.get("Properties").and_then(|v| v.as_object()) {
        for (k, v) in obj {
            let bad = || {
                err(format!(
                    "topic {name}: property {k} has an invalid value {v}"
                ))
            };
            let dur = || v.as_str().and_then(parse_iso8601_ms).ok_or_else(bad);
            match k.as_str() {
                "DefaultMessageTimeToLive" => p.default_message_ttl_ms = Some(dur()?),
                "DuplicateDetectionHistoryTimeWindow" => p.duplicate_detection_window_ms = dur()?,
                "RequiresDuplicateDetection" => {
                    p.requires_duplicate_detection = v.as_bool().ok_or_else(bad)?
                }
                other => return Err(err(format!("topic {name}: unknown property {other}"))),
            }
        }
    }
    for s in t
        .get("Subscriptions")
        .and_then(|v| v.as_array())
        .into_iter()
        .flatten()
    {
        let sub = json_str(s, "Name")
            .ok_or_else(|| err(format!("a subscription of {name} has no Name")))?;
        let props = s
            .get("Properties")
            .cloned()
            .unwrap_or(serde_json::Value::Null);
        let q = emulator_queue_props(&format!("{name}/Subscriptions/{sub}"), &props)?;
        let mut rules = Vec::new();
        for r in s
            .get("Rules")
            .and_then(|v| v.as_array())
            .into_iter()
            .flatten()
        {
            let rname = json_str(r, "Name")
                .ok_or_else(|| err(format!("a rule of {name}/{sub} has no Name")))?;
            let rp = r
                .get("Properties")
                .cloned()
                .unwrap_or(serde_json::Value::Null);
            let key = format!("rule {name}/{sub}/{rname}");
            let filter = match rp.get("FilterType").and_then(|v| v.as_str()) {
                Some("Sql") => FilterDefinition::Sql(
                    rp.get("SqlFilter")
                        .and_then(|f| json_str(f, "SqlExpression"))
                        .ok_or_else(|| {
                            err(format!("{key}: SqlFilter.SqlExpression is required"))
                        })?,
                ),
                Some("Correlation") => {
                    let c = rp
                        .get("CorrelationFilter")
                        .cloned()
                        .unwrap_or(serde_json::Value::Null);
                    let mut properties = Vec::new();
                    for (k, v) in c
                        .get("Properties")
                        .and_then(|v| v.as_object())
                        .into_iter()
                        .flatten()
                    {
                        properties.push((
                            k.clone(),
                            simple_value(&format!("{key}.{k}"), SimpleSource::Json(v.clone()))?,
                        ));
                    }
                    FilterDefinition::Correlation {
                        correlation_id: json_str(&c, "CorrelationId"),
                        message_id: json_str(&c, "MessageId"),
                        to: json_str(&c, "To"),
                        reply_to: json_str(&c, "ReplyTo"),
                        label: json_str(&c, "Label"),
                        session_id: json_str(&c, "SessionId"),
                        reply_to_session_id: json_str(&c, "ReplyToSessionId"),
                        content_type: json_str(&c, "ContentType"),
                        properties,
                    }
                }
                other => {
                    return Err(err(format!(
                        "{key}: FilterType must be \"Sql\" or \"Correlation\", not {other:?}"
                    )));
                }
            };
            let action = rp.get("Action").and_then(|a| json_str(a, "SqlExpression"));
            rules.push(RuleDefinition {
                name: rname,
                filter,
                action,
                created_at: 0,
            });
        }
        if rules.is_empty() {
            rules.push(RuleDefinition::default_rule());
        }
        cfg.entities.push(subscription(&name, sub, q, false, rules));
    }
    cfg.entities.push(EntityDefinition {
        name,
        kind: EntityKind::Topic(p),
    });
    Ok(())
}

fn emulator_queue_props(name: &str, p: &serde_json::Value) -> Result<QueueProperties, ConfigError> {
    let mut q = QueueProperties::default();
    let Some(obj) = p.as_object() else {
        return Ok(q);
    };
    for (k, v) in obj {
        let bad = || {
            ConfigError::Json(format!(
                "queue {name}: property {k} has an invalid value {v}"
            ))
        };
        let dur = || v.as_str().and_then(parse_iso8601_ms).ok_or_else(bad);
        match k.as_str() {
            "LockDuration" => q.lock_duration_ms = dur()?,
            "MaxDeliveryCount" => {
                q.max_delivery_count = v
                    .as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(bad)?
            }
            "DefaultMessageTimeToLive" => q.default_message_ttl_ms = Some(dur()?),
            "DeadLetteringOnMessageExpiration" => {
                q.dead_lettering_on_message_expiration = v.as_bool().ok_or_else(bad)?
            }
            "RequiresDuplicateDetection" => {
                q.requires_duplicate_detection = v.as_bool().ok_or_else(bad)?
            }
            "DuplicateDetectionHistoryTimeWindow" => q.duplicate_detection_window_ms = dur()?,
            "RequiresSession" => q.requires_session = v.as_bool().ok_or_else(bad)?,
            "ForwardTo" => q.forward_to = v.as_str().filter(|s| !s.is_empty()).map(str::to_string),
            "ForwardDeadLetteredMessagesTo" => {
                q.forward_dead_lettered_messages_to =
                    v.as_str().filter(|s| !s.is_empty()).map(str::to_string)
            }
            other => {
                return Err(ConfigError::Json(format!(
                    "queue {name}: unknown property {other}"
                )));
            }
        }
    }
    Ok(q)
}

/// Parse an ISO 8601 duration (`PT1M`, `P1DT2H`, `PT0.5S`) into milliseconds.
pub fn parse_iso8601_ms(s: &str) -> Option<i64> {
    let rest = s.strip_prefix('P')?;
    let (date, time) = match rest.split_once('T') {
        Some((d, t)) => (d, Some(t)),
        None => (rest, None),
    };
    let mut total = 0f64;
    let mut seen = false;
    let mut take = |part: &str, units: &[(char, f64)]| -> Option<()> {
        let mut num = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' {
                num.push(c);
            } else {
                let mult = units.iter().find(|(u, _)| *u == c)?.1;
                let n: f64 = num.parse().ok()?;
                total += n * mult;
                num.clear();
                seen = true;
            }
        }
        num.is_empty().then_some(())
    };
    take(
        date,
        &[
            ('Y', 365.0 * 86_400_000.0),
            ('M', 30.0 * 86_400_000.0),
            ('W', 7.0 * 86_400_000.0),
            ('D', 86_400_000.0),
        ],
    )?;
    if let Some(t) = time {
        take(t, &[('H', 3_600_000.0), ('M', 60_000.0), ('S', 1_000.0)])?;
    }
    if !seen || !total.is_finite() || total > i64::MAX as f64 {
        return None;
    }
    Some(total as i64)
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

fn validate(cfg: Config) -> Result<Config, ConfigError> {
    if !(1024..=keybus_core::MAX_MESSAGE_SIZE_LIMIT).contains(&cfg.max_message_size) {
        return Err(ConfigError::Invalid(format!(
            "namespace.max_message_size {} is out of range (1024 to 104857600)",
            cfg.max_message_size
        )));
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
            crate::auth::scope::check_entity_name(&e.name).map_err(ConfigError::Invalid)?;
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
    use super::*;

    #[test]
    fn iso8601() {
        assert_eq!(parse_iso8601_ms("PT1M"), Some(60_000));
        assert_eq!(parse_iso8601_ms("PT30S"), Some(30_000));
        assert_eq!(parse_iso8601_ms("P1DT1H"), Some(90_000_000));
        assert_eq!(parse_iso8601_ms("PT0.5S"), Some(500));
        assert_eq!(parse_iso8601_ms("1M"), None);
        assert_eq!(parse_iso8601_ms("P"), None);
        assert_eq!(parse_iso8601_ms("PTxS"), None);
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
            matches!(&sd.rules[0].filter, FilterDefinition::Correlation { properties, .. } if properties.len() == 2)
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
}
