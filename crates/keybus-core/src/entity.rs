//! Entity definitions and their properties, with Azure Service Bus defaults.

use serde::{Deserialize, Serialize};

pub use crate::filter::{CorrelationFilter, SimpleValue};

/// Largest message size an entity may allow (100 MB, the Premium limit).
pub const MAX_MESSAGE_SIZE_LIMIT: u64 = 100 * 1024 * 1024;
/// Azure Standard's message size limit: the default.
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 256 * 1024;

/// Properties of a queue (and, later, of a subscription). Durations in milliseconds;
/// `None` TTL means unlimited (`TimeSpan.MaxValue`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct QueueProperties {
    pub lock_duration_ms: i64,
    pub max_delivery_count: u32,
    pub default_message_ttl_ms: Option<i64>,
    pub dead_lettering_on_message_expiration: bool,
    pub requires_duplicate_detection: bool,
    pub duplicate_detection_window_ms: i64,
    pub requires_session: bool,
    pub max_message_size: u64,
    pub max_size_bytes: u64,
    pub forward_to: Option<String>,
    pub forward_dead_lettered_messages_to: Option<String>,
    /// Management metadata (status, auto-delete-on-idle, user metadata, times).
    pub meta: EntityMeta,
}

impl Default for QueueProperties {
    fn default() -> Self {
        Self {
            lock_duration_ms: 60_000,
            max_delivery_count: 10,
            default_message_ttl_ms: None,
            dead_lettering_on_message_expiration: false,
            requires_duplicate_detection: false,
            duplicate_detection_window_ms: 10 * 60_000,
            requires_session: false,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_size_bytes: 1024 * 1024 * 1024,
            forward_to: None,
            forward_dead_lettered_messages_to: None,
            meta: EntityMeta::default(),
        }
    }
}

impl QueueProperties {
    /// Check ranges; the error names the property and its allowed range.
    pub fn validate(&self) -> Result<(), String> {
        if !(1_000..=300_000).contains(&self.lock_duration_ms) {
            return Err(format!(
                "lock duration {} ms is out of range (1 s to 5 min)",
                self.lock_duration_ms
            ));
        }
        if self.max_delivery_count < 1 {
            return Err("max delivery count must be at least 1".into());
        }
        if let Some(ttl) = self.default_message_ttl_ms
            && ttl < 1_000
        {
            return Err(format!(
                "default message time to live {ttl} ms is below 1 s"
            ));
        }
        if !(20_000..=7 * 24 * 3_600_000).contains(&self.duplicate_detection_window_ms) {
            return Err(format!(
                "duplicate detection window {} ms is out of range (20 s to 7 days)",
                self.duplicate_detection_window_ms
            ));
        }
        if !(1024..=MAX_MESSAGE_SIZE_LIMIT).contains(&self.max_message_size) {
            return Err(format!(
                "max message size {} bytes is out of range (1 KB to 100 MB)",
                self.max_message_size
            ));
        }
        if self.max_size_bytes < 1024 * 1024 {
            return Err("max size must be at least 1 MB".into());
        }
        Ok(())
    }
}

/// What kind of entity a definition describes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum EntityKind {
    Queue(QueueProperties),
    Topic(TopicProperties),
    /// A subscription; its definition name is `<topic>/Subscriptions/<name>`.
    Subscription(SubscriptionDefinition),
}

/// Properties of a topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TopicProperties {
    pub default_message_ttl_ms: Option<i64>,
    pub requires_duplicate_detection: bool,
    pub duplicate_detection_window_ms: i64,
    pub max_message_size: u64,
    pub max_size_bytes: u64,
    /// Reported and stored (`SupportOrdering`); a topic's subscriptions are always ordered.
    pub support_ordering: bool,
    /// Management metadata (status, auto-delete-on-idle, user metadata, times).
    pub meta: EntityMeta,
}

impl Default for TopicProperties {
    fn default() -> Self {
        let q = QueueProperties::default();
        Self {
            default_message_ttl_ms: None,
            requires_duplicate_detection: false,
            duplicate_detection_window_ms: q.duplicate_detection_window_ms,
            max_message_size: q.max_message_size,
            max_size_bytes: q.max_size_bytes,
            support_ordering: true,
            meta: EntityMeta::default(),
        }
    }
}

/// An entity's status as the management API sets and reports it. Stored; keybus does not
/// refuse sends or receives because of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum EntityStatus {
    #[default]
    Active,
    Disabled,
    SendDisabled,
    ReceiveDisabled,
}

impl EntityStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "Active",
            Self::Disabled => "Disabled",
            Self::SendDisabled => "SendDisabled",
            Self::ReceiveDisabled => "ReceiveDisabled",
        }
    }

    /// Parse the management API's spelling (case-insensitive).
    pub fn parse(s: &str) -> Option<EntityStatus> {
        [
            Self::Active,
            Self::Disabled,
            Self::SendDisabled,
            Self::ReceiveDisabled,
        ]
        .into_iter()
        .find(|v| v.as_str().eq_ignore_ascii_case(s.trim()))
    }
}

/// Management metadata of a queue, topic or subscription: kept durably and reported by the
/// management API, not enforced (auto-delete-on-idle never deletes anything).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct EntityMeta {
    pub status: EntityStatus,
    /// `None` is `TimeSpan.MaxValue` (never).
    pub auto_delete_on_idle_ms: Option<i64>,
    pub user_metadata: Option<String>,
    pub enable_batched_operations: bool,
    pub enable_partitioning: bool,
    pub enable_express: bool,
    /// Creation and last update (ms since the epoch); 0 for entities from a config file.
    pub created_at: i64,
    pub updated_at: i64,
}

impl Default for EntityMeta {
    fn default() -> Self {
        Self {
            status: EntityStatus::Active,
            auto_delete_on_idle_ms: None,
            user_metadata: None,
            enable_batched_operations: true,
            enable_partitioning: false,
            enable_express: false,
            created_at: 0,
            updated_at: 0,
        }
    }
}

/// Shortest auto-delete-on-idle interval Service Bus accepts (5 minutes).
pub const MIN_AUTO_DELETE_ON_IDLE_MS: i64 = 5 * 60_000;
/// Longest user metadata Service Bus accepts (characters).
pub const MAX_USER_METADATA_LEN: usize = 1024;

impl EntityMeta {
    /// Check ranges; the error names the property and its allowed range.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(ms) = self.auto_delete_on_idle_ms
            && ms < MIN_AUTO_DELETE_ON_IDLE_MS
        {
            return Err(format!(
                "auto delete on idle {ms} ms is below the minimum of 5 minutes"
            ));
        }
        if let Some(m) = &self.user_metadata
            && m.chars().count() > MAX_USER_METADATA_LEN
        {
            return Err(format!(
                "user metadata is longer than {MAX_USER_METADATA_LEN} characters"
            ));
        }
        Ok(())
    }
}

/// A subscription of a topic: queue-like properties plus its rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SubscriptionDefinition {
    /// The topic's name.
    pub topic: String,
    /// The subscription's own name.
    pub name: String,
    pub properties: QueueProperties,
    pub dead_lettering_on_filter_evaluation_exceptions: bool,
    pub rules: Vec<RuleDefinition>,
}

/// A rule's filter as declared (compiled when the subscription is loaded).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum FilterDefinition {
    True,
    False,
    Sql(String),
    /// Stored as the struct variant it was (`{"Correlation": {fields}}`).
    Correlation(CorrelationFilter),
}

/// A subscription rule: a filter and an optional SQL action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleDefinition {
    pub name: String,
    pub filter: FilterDefinition,
    pub action: Option<String>,
    /// Creation time (ms since the epoch); 0 for rules declared in a config file.
    #[serde(default)]
    pub created_at: i64,
}

impl RuleDefinition {
    /// The rule every subscription starts with.
    pub fn default_rule() -> RuleDefinition {
        RuleDefinition {
            name: "$Default".into(),
            filter: FilterDefinition::True,
            action: None,
            created_at: 0,
        }
    }
}

/// A named, durable entity of the namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EntityDefinition {
    /// The path as the user wrote it (case kept for display); lookups use its lower-case form.
    pub name: String,
    pub kind: EntityKind,
}

impl EntityDefinition {
    pub fn key(&self) -> String {
        self.name.to_ascii_lowercase()
    }
}

/// Validate an entity name: Service Bus forbids `@ ? # *`, empty segments and over-long paths.
pub fn validate_entity_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > 260 {
        return Err(format!("entity name '{name}' must be 1 to 260 characters"));
    }
    if name
        .chars()
        .any(|c| matches!(c, '@' | '?' | '#' | '*' | '\\') || c.is_control())
    {
        return Err(format!(
            "entity name '{name}' contains a forbidden character (@ ? # * \\)"
        ));
    }
    if name.starts_with('/') || name.ends_with('/') || name.contains("//") || name.starts_with('$')
    {
        return Err(format!("entity name '{name}' is not a valid path"));
    }
    if name
        .split('/')
        .any(|s| s == "." || s == ".." || s.starts_with('$'))
    {
        return Err(format!("entity name '{name}' is not a valid path"));
    }
    Ok(())
}
