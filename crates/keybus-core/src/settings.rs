//! The settable properties of a queue, topic or subscription as a request or a file gives
//! them, before defaults: the one form that the TOML file, the emulator's `Config.json` and
//! ATOM descriptions are read into, and the one place that turns it into properties and says
//! which properties are fixed once an entity exists.

use crate::entity::{EntityMeta, EntityStatus, QueueProperties, TopicProperties};

/// Durations at least this long (ms) mean "unlimited" (`TimeSpan.MaxValue`, ~29,227 years,
/// written with fewer fraction digits by some clients).
pub const UNLIMITED_MS: i64 = 922_337_203_685_000;

/// A duration that may be unlimited: `None` for `TimeSpan.MaxValue` and anything as long.
pub fn limited(ms: i64) -> Option<i64> {
    (ms < UNLIMITED_MS).then_some(ms)
}

/// The properties a reader found, each `None` when it was not given. Sizes in bytes,
/// durations in milliseconds.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EntitySettings {
    pub lock_duration_ms: Option<i64>,
    pub max_delivery_count: Option<u32>,
    /// `Some(None)`: unlimited.
    pub default_message_ttl_ms: Option<Option<i64>>,
    pub dead_lettering_on_message_expiration: Option<bool>,
    /// Subscriptions only.
    pub dead_lettering_on_filter_evaluation_exceptions: Option<bool>,
    pub requires_duplicate_detection: Option<bool>,
    pub duplicate_detection_window_ms: Option<i64>,
    pub requires_session: Option<bool>,
    pub max_message_size: Option<u64>,
    pub max_size_bytes: Option<u64>,
    /// Entity paths; an empty one is the same as none.
    pub forward_to: Option<String>,
    pub forward_dead_lettered_messages_to: Option<String>,
    /// Topics only.
    pub support_ordering: Option<bool>,
    pub status: Option<EntityStatus>,
    /// `Some(None)`: never.
    pub auto_delete_on_idle_ms: Option<Option<i64>>,
    pub user_metadata: Option<String>,
    pub enable_batched_operations: Option<bool>,
    pub enable_partitioning: Option<bool>,
    pub enable_express: Option<bool>,
}

/// A property that cannot change once its entity exists, named as Service Bus names it.
pub type FixedProperty = &'static str;

fn nonempty(v: &Option<String>) -> Option<String> {
    v.clone().filter(|s| !s.is_empty())
}

impl EntitySettings {
    /// The management metadata: what is given over `base`.
    fn meta(&self, base: EntityMeta) -> EntityMeta {
        EntityMeta {
            status: self.status.unwrap_or(base.status),
            auto_delete_on_idle_ms: self
                .auto_delete_on_idle_ms
                .unwrap_or(base.auto_delete_on_idle_ms),
            user_metadata: nonempty(&self.user_metadata).or(base.user_metadata),
            enable_batched_operations: self
                .enable_batched_operations
                .unwrap_or(base.enable_batched_operations),
            enable_partitioning: self.enable_partitioning.unwrap_or(base.enable_partitioning),
            enable_express: self.enable_express.unwrap_or(base.enable_express),
            ..base
        }
    }

    /// Queue (or subscription) properties: what is given over `base`.
    pub fn queue(&self, base: QueueProperties) -> QueueProperties {
        QueueProperties {
            lock_duration_ms: self.lock_duration_ms.unwrap_or(base.lock_duration_ms),
            max_delivery_count: self.max_delivery_count.unwrap_or(base.max_delivery_count),
            default_message_ttl_ms: self
                .default_message_ttl_ms
                .unwrap_or(base.default_message_ttl_ms),
            dead_lettering_on_message_expiration: self
                .dead_lettering_on_message_expiration
                .unwrap_or(base.dead_lettering_on_message_expiration),
            requires_duplicate_detection: self
                .requires_duplicate_detection
                .unwrap_or(base.requires_duplicate_detection),
            duplicate_detection_window_ms: self
                .duplicate_detection_window_ms
                .unwrap_or(base.duplicate_detection_window_ms),
            requires_session: self.requires_session.unwrap_or(base.requires_session),
            max_message_size: self.max_message_size.unwrap_or(base.max_message_size),
            max_size_bytes: self.max_size_bytes.unwrap_or(base.max_size_bytes),
            forward_to: match &self.forward_to {
                Some(_) => nonempty(&self.forward_to),
                None => base.forward_to,
            },
            forward_dead_lettered_messages_to: match &self.forward_dead_lettered_messages_to {
                Some(_) => nonempty(&self.forward_dead_lettered_messages_to),
                None => base.forward_dead_lettered_messages_to,
            },
            meta: self.meta(base.meta),
        }
    }

    /// Topic properties: what is given over `base`.
    pub fn topic(&self, base: TopicProperties) -> TopicProperties {
        TopicProperties {
            default_message_ttl_ms: self
                .default_message_ttl_ms
                .unwrap_or(base.default_message_ttl_ms),
            requires_duplicate_detection: self
                .requires_duplicate_detection
                .unwrap_or(base.requires_duplicate_detection),
            duplicate_detection_window_ms: self
                .duplicate_detection_window_ms
                .unwrap_or(base.duplicate_detection_window_ms),
            max_message_size: self.max_message_size.unwrap_or(base.max_message_size),
            max_size_bytes: self.max_size_bytes.unwrap_or(base.max_size_bytes),
            support_ordering: self.support_ordering.unwrap_or(base.support_ordering),
            meta: self.meta(base.meta),
        }
    }
}

impl QueueProperties {
    /// The first property fixed at creation that `new` changes, if any.
    pub fn fixed_change(&self, new: &QueueProperties) -> Option<FixedProperty> {
        [
            (
                "RequiresSession",
                self.requires_session != new.requires_session,
            ),
            (
                "RequiresDuplicateDetection",
                self.requires_duplicate_detection != new.requires_duplicate_detection,
            ),
            (
                "EnablePartitioning",
                self.meta.enable_partitioning != new.meta.enable_partitioning,
            ),
        ]
        .into_iter()
        .find_map(|(name, changed)| changed.then_some(name))
    }

    /// `self` (a base that settings are then applied over) with the fixed properties of
    /// `old`: an update that leaves a fixed property out keeps it.
    pub fn keeping_fixed(self, old: &QueueProperties) -> QueueProperties {
        let mut p = self;
        p.requires_session = old.requires_session;
        p.requires_duplicate_detection = old.requires_duplicate_detection;
        p.meta.enable_partitioning = old.meta.enable_partitioning;
        p
    }
}

impl TopicProperties {
    /// The first property fixed at creation that `new` changes, if any.
    pub fn fixed_change(&self, new: &TopicProperties) -> Option<FixedProperty> {
        [
            (
                "RequiresDuplicateDetection",
                self.requires_duplicate_detection != new.requires_duplicate_detection,
            ),
            (
                "EnablePartitioning",
                self.meta.enable_partitioning != new.meta.enable_partitioning,
            ),
        ]
        .into_iter()
        .find_map(|(name, changed)| changed.then_some(name))
    }

    /// `self` (a base that settings are then applied over) with the fixed properties of
    /// `old`.
    pub fn keeping_fixed(self, old: &TopicProperties) -> TopicProperties {
        let mut p = self;
        p.requires_duplicate_detection = old.requires_duplicate_detection;
        p.meta.enable_partitioning = old.meta.enable_partitioning;
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_values_win_and_the_rest_is_the_base() {
        let s = EntitySettings {
            lock_duration_ms: Some(5_000),
            default_message_ttl_ms: Some(None),
            forward_to: Some(String::new()),
            enable_partitioning: Some(true),
            ..Default::default()
        };
        let base = QueueProperties {
            max_message_size: 2048,
            default_message_ttl_ms: Some(9_000),
            forward_to: Some("elsewhere".into()),
            ..Default::default()
        };
        let p = s.queue(base);
        assert_eq!(p.lock_duration_ms, 5_000);
        assert_eq!(p.max_message_size, 2048);
        assert_eq!(p.default_message_ttl_ms, None);
        assert_eq!(p.forward_to, None, "an empty path switches forwarding off");
        assert!(p.meta.enable_partitioning);
        assert_eq!(
            p.max_delivery_count,
            QueueProperties::default().max_delivery_count
        );
    }

    #[test]
    fn fixed_properties_are_named_and_kept() {
        let old = QueueProperties {
            requires_session: true,
            ..Default::default()
        };
        let new = QueueProperties::default();
        assert_eq!(old.fixed_change(&new), Some("RequiresSession"));
        assert_eq!(old.fixed_change(&new.clone().keeping_fixed(&old)), None);
        let t_old = TopicProperties::default();
        let mut t_new = TopicProperties::default();
        t_new.meta.enable_partitioning = true;
        assert_eq!(t_old.fixed_change(&t_new), Some("EnablePartitioning"));
    }

    #[test]
    fn time_span_max_value_is_unlimited() {
        assert_eq!(limited(UNLIMITED_MS), None);
        assert_eq!(limited(60_000), Some(60_000));
    }
}
