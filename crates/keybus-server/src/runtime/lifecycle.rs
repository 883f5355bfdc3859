//! Entity lifecycle for the management API (served by the HTTP wing's `atom/`): create, update and delete queues,
//! topics, subscriptions and rules, durably, and read their properties and runtime counts.
//!
//! # Design
//! Lifecycle changes are serialised by `Broker::admin` (a tokio mutex held across the
//! store commit; no entity mutex is). A queue or topic is committed (`PutEntity`, after a
//! `DeleteEntity` that clears anything left under its name) before it enters the registry,
//! so an attach finds it only once it is durable. A subscription, a rule or a property change
//! is applied under its entity's mutex and its op submitted there, in order with the
//! entity's other writes; the caller hears back once that batch is durable. Deleting removes
//! the entity from the registry first, marks it deleted (AMQP links still holding it are
//! detached with `amqp:not-found`, see the AMQP wing), drops its messages and commits
//! `DeleteEntity` for it and, for a topic, for each subscription, releasing stored bodies
//! through `Topic::remove_subscription`.

use std::sync::Arc;

use keybus_core::{
    EntityDefinition, EntityKind, FixedProperty, Queue, QueueCounts, QueueProperties,
    RuleDefinition, RuleError, StoreError, StoreOp, Subscription, SubscriptionDefinition, Topic,
    TopicProperties, validate_entity_name,
};

use keybus_core::MessagingEntity;

use super::entity::Entity;
use super::registry::Broker;

/// Why a management operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    QuotaExceeded(String),
    #[error("the change could not be stored: {0}")]
    Store(#[from] StoreError),
}

impl From<RuleError> for AdminError {
    fn from(e: RuleError) -> Self {
        match e {
            RuleError::AlreadyExists(_) => AdminError::AlreadyExists(e.to_string()),
            RuleError::NotFound(_) => AdminError::NotFound(e.to_string()),
            RuleError::Invalid { .. } => AdminError::Invalid(e.to_string()),
            RuleError::TooMany(_) => AdminError::QuotaExceeded(e.to_string()),
        }
    }
}

/// A queue as the management API reports it.
#[derive(Debug, Clone)]
pub struct QueueView {
    pub name: String,
    pub props: QueueProperties,
    pub counts: QueueCounts,
    pub accessed_at: i64,
}

/// A topic as the management API reports it.
#[derive(Debug, Clone)]
pub struct TopicView {
    pub name: String,
    pub props: TopicProperties,
    pub subscriptions: usize,
    /// Bytes held for the topic (the largest subscription, as the size quota counts).
    pub size_bytes: u64,
    /// Scheduled messages (the most any subscription holds).
    pub scheduled: u64,
    pub accessed_at: i64,
}

/// A subscription as the management API reports it.
#[derive(Debug, Clone)]
pub struct SubscriptionView {
    pub topic: String,
    pub name: String,
    pub props: QueueProperties,
    pub dead_lettering_on_filter_evaluation_exceptions: bool,
    pub counts: QueueCounts,
    pub accessed_at: i64,
}

/// A queue or a topic.
#[derive(Debug, Clone)]
pub enum EntityView {
    Queue(QueueView),
    Topic(TopicView),
}

fn not_found(path: &str) -> AdminError {
    AdminError::NotFound(format!("The messaging entity '{path}' could not be found."))
}

fn view(entity: &Entity) -> EntityView {
    let st = entity.lock();
    match &st.machine {
        MessagingEntity::Queue(q) => EntityView::Queue(QueueView {
            name: entity.name.clone(),
            props: q.properties().clone(),
            counts: q.counts(),
            accessed_at: st.accessed_at,
        }),
        MessagingEntity::Topic(t) => {
            let counts: Vec<QueueCounts> = t.subscriptions().map(|s| s.queue.counts()).collect();
            EntityView::Topic(TopicView {
                name: entity.name.clone(),
                props: t.properties().clone(),
                subscriptions: counts.len(),
                size_bytes: counts.iter().map(|c| c.size_bytes).max().unwrap_or(0),
                scheduled: counts.iter().map(|c| c.scheduled).max().unwrap_or(0),
                accessed_at: st.accessed_at,
            })
        }
    }
}

fn subscription_view(topic: &str, s: &Subscription, accessed_at: i64) -> SubscriptionView {
    SubscriptionView {
        topic: topic.to_string(),
        name: s.definition.name.clone(),
        props: s.queue.properties().clone(),
        dead_lettering_on_filter_evaluation_exceptions: s
            .definition
            .dead_lettering_on_filter_evaluation_exceptions,
        counts: s.queue.counts(),
        accessed_at,
    }
}

/// Ranges of a topic's properties (queues and subscriptions use `QueueProperties::validate`).
fn validate_topic(p: &TopicProperties) -> Result<(), String> {
    let q = QueueProperties {
        default_message_ttl_ms: p.default_message_ttl_ms,
        duplicate_detection_window_ms: p.duplicate_detection_window_ms,
        max_message_size: p.max_message_size,
        max_size_bytes: p.max_size_bytes,
        ..QueueProperties::default()
    };
    q.validate()?;
    p.meta.validate()
}

fn validate_queue(p: &QueueProperties) -> Result<(), String> {
    p.validate()?;
    p.meta.validate()
}

impl Broker {
    /// The topic entity `topic` names, or `NotFound`.
    fn topic_entity(&self, topic: &str) -> Result<Arc<Entity>, AdminError> {
        let entity = self
            .entity(&topic.to_ascii_lowercase())
            .ok_or_else(|| not_found(topic))?;
        if !matches!(entity.lock().machine, MessagingEntity::Topic(_)) {
            return Err(not_found(topic));
        }
        Ok(entity)
    }

    /// A forwarding destination must be an existing queue or topic other than the source.
    fn check_forward(&self, source: &str, dest: Option<&str>) -> Result<(), AdminError> {
        let Some(dest) = dest else {
            return Ok(());
        };
        validate_entity_name(dest).map_err(AdminError::Invalid)?;
        if dest.eq_ignore_ascii_case(source) {
            return Err(AdminError::Invalid(format!(
                "The entity '{source}' cannot forward to itself."
            )));
        }
        if self.entity(&dest.to_ascii_lowercase()).is_none() {
            return Err(AdminError::Invalid(format!(
                "The forwarding destination '{dest}' does not exist: it must be a queue or a topic of this namespace."
            )));
        }
        Ok(())
    }

    /// The queue or topic at `path` (any case).
    pub fn entity_view(&self, path: &str) -> Option<EntityView> {
        self.entity(&path.to_ascii_lowercase()).map(|e| view(&e))
    }

    /// Every queue (or every topic), ordered by path.
    pub fn entity_views(&self, topics: bool) -> Vec<EntityView> {
        let mut entities = self.entity_list();
        entities.sort_by_key(|e| e.name.to_ascii_lowercase());
        entities
            .iter()
            .map(|e| view(e))
            .filter(|v| matches!(v, EntityView::Topic(_)) == topics)
            .collect()
    }

    /// Every subscription of a topic, ordered by name.
    pub fn subscription_views(&self, topic: &str) -> Result<Vec<SubscriptionView>, AdminError> {
        let entity = self.topic_entity(topic)?;
        let st = entity.lock();
        let MessagingEntity::Topic(t) = &st.machine else {
            return Err(not_found(topic));
        };
        Ok(t.subscriptions()
            .map(|s| subscription_view(&entity.name, s, st.accessed_at))
            .collect())
    }

    pub fn subscription_view(
        &self,
        topic: &str,
        name: &str,
    ) -> Result<SubscriptionView, AdminError> {
        let entity = self.topic_entity(topic)?;
        let st = entity.lock();
        let MessagingEntity::Topic(t) = &st.machine else {
            return Err(not_found(topic));
        };
        t.subscription(name)
            .map(|s| subscription_view(&entity.name, s, st.accessed_at))
            .ok_or_else(|| not_found(&format!("{topic}/Subscriptions/{name}")))
    }

    /// The rules of a subscription, in evaluation order.
    pub fn rule_list(&self, topic: &str, name: &str) -> Result<Vec<RuleDefinition>, AdminError> {
        let entity = self.topic_entity(topic)?;
        let st = entity.lock();
        let MessagingEntity::Topic(t) = &st.machine else {
            return Err(not_found(topic));
        };
        t.subscription(name)
            .map(|s| s.rules().to_vec())
            .ok_or_else(|| not_found(&format!("{topic}/Subscriptions/{name}")))
    }

    /// Create a queue, a topic or a subscription (with its rules). Returns the stored
    /// definition (with its creation time).
    pub async fn create_entity(
        &self,
        mut def: EntityDefinition,
    ) -> Result<EntityDefinition, AdminError> {
        validate_entity_name(&def.name).map_err(AdminError::Invalid)?;
        if !matches!(def.kind, EntityKind::Subscription(_)) {
            keybus_auth::scope::check_entity_name(&def.name).map_err(AdminError::Invalid)?;
        }
        let now = self.now();
        let _admin = self.admin.lock().await;
        let key = def.key();
        match &mut def.kind {
            EntityKind::Queue(p) => {
                validate_queue(p).map_err(AdminError::Invalid)?;
                if self.entity(&key).is_some() {
                    return Err(AdminError::AlreadyExists(format!(
                        "The messaging entity '{}' already exists.",
                        def.name
                    )));
                }
                self.check_forward(&def.name, p.forward_to.as_deref())?;
                self.check_forward(&def.name, p.forward_dead_lettered_messages_to.as_deref())?;
                p.meta.created_at = now;
                p.meta.updated_at = now;
            }
            EntityKind::Topic(p) => {
                validate_topic(p).map_err(AdminError::Invalid)?;
                if self.entity(&key).is_some() {
                    return Err(AdminError::AlreadyExists(format!(
                        "The messaging entity '{}' already exists.",
                        def.name
                    )));
                }
                p.meta.created_at = now;
                p.meta.updated_at = now;
            }
            EntityKind::Subscription(sd) => {
                sd.properties.meta.created_at = now;
                sd.properties.meta.updated_at = now;
                for r in &mut sd.rules {
                    r.created_at = now;
                }
                return self.create_subscription(sd.clone()).await;
            }
        }
        self.store
            .commit(vec![
                StoreOp::DeleteEntity {
                    entity: key.as_str().into(),
                },
                StoreOp::PutEntity(def.clone()),
            ])
            .await?;
        let machine = match &def.kind {
            EntityKind::Queue(p) => MessagingEntity::Queue(
                Queue::new(&key, p.clone(), self.next_seed()).with_bodies(self.bodies.clone()),
            ),
            EntityKind::Topic(p) => MessagingEntity::Topic(Topic::new(&key, p.clone(), 1)),
            EntityKind::Subscription(_) => return Err(AdminError::Invalid("unreachable".into())),
        };
        let entity = Entity::new(
            def.name.clone(),
            machine,
            self.agenda.clone(),
            self.store.clone(),
        );
        self.entities
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, entity);
        tracing::info!(entity = %def.name, "entity created");
        Ok(def)
    }

    /// Add a subscription to its topic (the caller holds the admin lock).
    async fn create_subscription(
        &self,
        mut sd: SubscriptionDefinition,
    ) -> Result<EntityDefinition, AdminError> {
        let entity = self.topic_entity(&sd.topic)?;
        sd.topic = entity.name.clone();
        let source = format!("{}/Subscriptions/{}", sd.topic, sd.name);
        self.check_forward(&source, sd.properties.forward_to.as_deref())?;
        self.check_forward(
            &source,
            sd.properties.forward_dead_lettered_messages_to.as_deref(),
        )?;
        let key = source.to_ascii_lowercase();
        let (fut, def) = {
            let mut st = entity.lock();
            let MessagingEntity::Topic(t) = &mut st.machine else {
                return Err(not_found(&sd.topic));
            };
            if t.subscription(&sd.name).is_some() {
                return Err(AdminError::AlreadyExists(format!(
                    "The messaging entity '{source}' already exists."
                )));
            }
            sd.properties.max_message_size = t.properties().max_message_size;
            validate_queue(&sd.properties).map_err(AdminError::Invalid)?;
            let queue = Queue::new(&key, sd.properties.clone(), self.next_seed())
                .with_bodies(self.bodies.clone());
            let sub = Subscription::new(sd.clone(), queue).map_err(AdminError::Invalid)?;
            let def = EntityDefinition {
                name: source.clone(),
                kind: EntityKind::Subscription(sd),
            };
            t.push_op(StoreOp::DeleteEntity { entity: key.into() });
            t.push_op(StoreOp::PutEntity(def.clone()));
            t.add_subscription(sub, 0);
            (entity.submit(&mut st), def)
        };
        if let Some(fut) = fut {
            fut.await?;
        }
        tracing::info!(entity = %source, "subscription created");
        Ok(def)
    }

    /// Replace the properties of a queue, topic or subscription (`PUT` with `If-Match`).
    /// Properties fixed at creation (sessions, duplicate detection, partitioning) must not
    /// change. Returns the stored definition.
    pub async fn update_entity(
        &self,
        def: EntityDefinition,
    ) -> Result<EntityDefinition, AdminError> {
        let now = self.now();
        let _admin = self.admin.lock().await;
        if let EntityKind::Subscription(sd) = def.kind {
            return self.update_subscription(sd, now).await;
        }
        let key = def.key();
        let entity = self.entity(&key).ok_or_else(|| not_found(&def.name))?;
        let mut def = EntityDefinition {
            name: entity.name.clone(),
            kind: def.kind,
        };
        if let EntityKind::Queue(p) = &def.kind {
            validate_queue(p).map_err(AdminError::Invalid)?;
            self.check_forward(&def.name, p.forward_to.as_deref())?;
            self.check_forward(&def.name, p.forward_dead_lettered_messages_to.as_deref())?;
        }
        if let EntityKind::Topic(p) = &def.kind {
            validate_topic(p).map_err(AdminError::Invalid)?;
        }
        let fut = {
            let mut st = entity.lock();
            if st.deleted {
                return Err(not_found(&def.name));
            }
            match (&mut st.machine, &mut def.kind) {
                (MessagingEntity::Queue(q), EntityKind::Queue(p)) => {
                    let old = q.properties();
                    immutable(old.fixed_change(p))?;
                    p.meta.created_at = old.meta.created_at;
                    p.meta.updated_at = now;
                    q.set_properties(p.clone());
                }
                (MessagingEntity::Topic(t), EntityKind::Topic(p)) => {
                    let old = t.properties();
                    immutable(old.fixed_change(p))?;
                    p.meta.created_at = old.meta.created_at;
                    p.meta.updated_at = now;
                    t.set_properties(p.clone());
                }
                (MessagingEntity::Queue(_), _) => {
                    return Err(AdminError::Invalid(format!(
                        "'{}' is a queue: update it with a QueueDescription.",
                        def.name
                    )));
                }
                (MessagingEntity::Topic(_), _) => {
                    return Err(AdminError::Invalid(format!(
                        "'{}' is a topic: update it with a TopicDescription.",
                        def.name
                    )));
                }
            }
            let mut ops = st.machine.take_ops();
            ops.push(StoreOp::PutEntity(def.clone()));
            let fut = self.store.commit(ops);
            // Forwarding may have been switched on or off.
            st.wake();
            fut
        };
        fut.await?;
        tracing::info!(entity = %def.name, "entity updated");
        Ok(def)
    }

    async fn update_subscription(
        &self,
        mut sd: SubscriptionDefinition,
        now: i64,
    ) -> Result<EntityDefinition, AdminError> {
        let entity = self.topic_entity(&sd.topic)?;
        let source = format!("{}/Subscriptions/{}", entity.name, sd.name);
        self.check_forward(&source, sd.properties.forward_to.as_deref())?;
        self.check_forward(
            &source,
            sd.properties.forward_dead_lettered_messages_to.as_deref(),
        )?;
        let (fut, def) = {
            let mut st = entity.lock();
            let MessagingEntity::Topic(t) = &mut st.machine else {
                return Err(not_found(&sd.topic));
            };
            let max_message_size = t.properties().max_message_size;
            let sub = t
                .subscription_mut(&sd.name)
                .ok_or_else(|| not_found(&source))?;
            let old = sub.queue.properties();
            immutable(old.fixed_change(&sd.properties))?;
            sd.properties.max_message_size = max_message_size;
            sd.properties.meta.created_at = old.meta.created_at;
            sd.properties.meta.updated_at = now;
            validate_queue(&sd.properties).map_err(AdminError::Invalid)?;
            let op = sub.set_properties(
                sd.properties,
                sd.dead_lettering_on_filter_evaluation_exceptions,
            );
            let def = EntityDefinition {
                name: source.clone(),
                kind: EntityKind::Subscription(sub.definition.clone()),
            };
            t.push_op(op);
            let fut = entity.submit(&mut st);
            st.wake();
            (fut, def)
        };
        if let Some(fut) = fut {
            fut.await?;
        }
        tracing::info!(entity = %source, "subscription updated");
        Ok(def)
    }

    /// Delete a queue or a topic (with its subscriptions) and every message it holds.
    pub async fn delete_entity(&self, path: &str) -> Result<(), AdminError> {
        let key = path.to_ascii_lowercase();
        let _admin = self.admin.lock().await;
        let entity = self
            .entities
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&key)
            .ok_or_else(|| not_found(path))?;
        let fut = {
            let mut st = entity.lock();
            st.deleted = true;
            let mut ops = Vec::new();
            match &mut st.machine {
                MessagingEntity::Queue(q) => {
                    drop(q.take_ops());
                    q.purge();
                }
                MessagingEntity::Topic(t) => {
                    let names: Vec<String> = t
                        .subscriptions()
                        .map(|s| s.definition.name.clone())
                        .collect();
                    for name in names {
                        t.remove_subscription(&name);
                    }
                    ops.extend(t.take_ops());
                }
            }
            ops.push(StoreOp::DeleteEntity { entity: key.into() });
            let fut = self.store.commit(ops);
            st.wake_all(None);
            st.clear_session_links();
            fut
        };
        fut.await?;
        tracing::info!(entity = %entity.name, "entity deleted");
        Ok(())
    }

    /// Delete a subscription and its messages.
    pub async fn delete_subscription(&self, topic: &str, name: &str) -> Result<(), AdminError> {
        let _admin = self.admin.lock().await;
        let entity = self.topic_entity(topic)?;
        let fut = {
            let mut st = entity.lock();
            let MessagingEntity::Topic(t) = &mut st.machine else {
                return Err(not_found(topic));
            };
            t.remove_subscription(name)
                .ok_or_else(|| not_found(&format!("{topic}/Subscriptions/{name}")))?;
            let fut = entity.submit(&mut st);
            st.wake_all(Some(name));
            fut
        };
        if let Some(fut) = fut {
            fut.await?;
        }
        tracing::info!(topic = %entity.name, subscription = %name, "subscription deleted");
        Ok(())
    }

    /// Apply a rule change to a subscription under its topic's lock and wait until durable.
    async fn change_rules(
        &self,
        topic: &str,
        name: &str,
        change: impl FnOnce(&mut Subscription) -> Result<(StoreOp, RuleDefinition), AdminError>,
    ) -> Result<RuleDefinition, AdminError> {
        let entity = self.topic_entity(topic)?;
        let (fut, rule) = {
            let mut st = entity.lock();
            let MessagingEntity::Topic(t) = &mut st.machine else {
                return Err(not_found(topic));
            };
            let sub = t
                .subscription_mut(name)
                .ok_or_else(|| not_found(&format!("{topic}/Subscriptions/{name}")))?;
            let (op, rule) = change(sub)?;
            t.push_op(op);
            (entity.submit(&mut st), rule)
        };
        if let Some(fut) = fut {
            fut.await?;
        }
        Ok(rule)
    }

    /// Add a rule to a subscription.
    pub async fn create_rule(
        &self,
        topic: &str,
        subscription: &str,
        mut rule: RuleDefinition,
    ) -> Result<RuleDefinition, AdminError> {
        rule.created_at = self.now();
        self.change_rules(topic, subscription, |s| {
            Ok((s.add_rule(rule.clone())?, rule))
        })
        .await
    }

    /// Replace a rule's filter and action.
    pub async fn update_rule(
        &self,
        topic: &str,
        subscription: &str,
        rule: RuleDefinition,
    ) -> Result<RuleDefinition, AdminError> {
        self.change_rules(topic, subscription, |s| {
            let op = s.replace_rule(rule.clone())?;
            let stored = s
                .rules()
                .iter()
                .find(|r| r.name.eq_ignore_ascii_case(&rule.name))
                .cloned()
                .unwrap_or(rule);
            Ok((op, stored))
        })
        .await
    }

    /// Remove a rule.
    pub async fn delete_rule(
        &self,
        topic: &str,
        subscription: &str,
        rule: &str,
    ) -> Result<(), AdminError> {
        self.change_rules(topic, subscription, |s| {
            let old = s
                .rules()
                .iter()
                .find(|r| r.name.eq_ignore_ascii_case(rule))
                .cloned()
                .ok_or_else(|| RuleError::NotFound(rule.to_string()))?;
            Ok((s.remove_rule(rule)?, old))
        })
        .await
        .map(|_| ())
    }
}

/// A property fixed at creation must keep its value.
fn immutable(changed: Option<FixedProperty>) -> Result<(), AdminError> {
    match changed {
        None => Ok(()),
        Some(name) => Err(AdminError::Invalid(format!(
            "The value of {name} of an existing entity cannot be changed."
        ))),
    }
}
