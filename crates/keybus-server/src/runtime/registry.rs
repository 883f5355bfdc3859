//! The running namespace: the entity registry, the store, the clock, SAS policies, limits,
//! metrics and auth. Entities are loaded from the store (and the config) at start.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use keybus_core::{
    Bodies, BodyWindow, Clock, EntityDefinition, EntityKind, LoadOptions, MessagingEntity, Queue,
    Store, StoreError, StoreOp, Subscription, Topic,
};

use super::entity::Entity;
use crate::config::Config;
use keybus_auth::SasPolicy;

/// The broker: one namespace.
pub struct Broker {
    pub(in crate::runtime) config: Config,
    pub(in crate::runtime) policies: Vec<SasPolicy>,
    pub(in crate::runtime) entities: RwLock<HashMap<String, Arc<Entity>>>,
    pub(in crate::runtime) store: Arc<dyn Store>,
    pub(in crate::runtime) clock: Arc<dyn Clock>,
    pub(in crate::runtime) connections: AtomicUsize,
    /// Every accepted socket's permit comes from here (see `admission.rs`).
    pub(in crate::runtime) admission: Arc<super::admission::Admission>,
    seed: AtomicU64,
    holders: AtomicU64,
    /// The entities the housekeeper and the forwarder must visit (see `agenda.rs`).
    pub(in crate::runtime) agenda: Arc<super::agenda::Agenda>,
    pub(in crate::runtime) metrics: super::metrics::Metrics,
    /// Serialises entity lifecycle changes (create, update, delete; see `admin.rs`).
    pub(in crate::runtime) admin: tokio::sync::Mutex<()>,
    /// When the broker started (ms since the epoch).
    pub(in crate::runtime) started_at: i64,
    /// Policy, token validation, token service and audit log.
    pub(in crate::runtime) auth: Arc<keybus_auth::Auth>,
    /// The body window every queue and subscription shares, reading evicted bodies back from
    /// the store.
    pub(in crate::runtime) bodies: Bodies,
}

impl Broker {
    /// Load every entity from the store, create or update those the config declares.
    pub async fn open(
        config: Config,
        policies: Vec<SasPolicy>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Broker>, StoreError> {
        Self::open_with_auth(
            config,
            policies,
            store,
            clock,
            Arc::new(keybus_auth::Auth::sas_only()),
        )
        .await
    }

    /// [`Broker::open`] with an access policy, token service and audit log.
    pub async fn open_with_auth(
        config: Config,
        policies: Vec<SasPolicy>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        auth: Arc<keybus_auth::Auth>,
    ) -> Result<Arc<Broker>, StoreError> {
        let metrics = super::metrics::Metrics::default();
        let store: Arc<dyn Store> = Arc::new(super::metrics::MeteredStore::new(
            store,
            metrics.clone(),
            config.limits.max_store_backlog,
        ));
        let mut defs: HashMap<String, EntityDefinition> = store
            .list_entities()?
            .into_iter()
            .map(|d| (d.key(), d))
            .collect();
        let mut ops = Vec::new();
        for d in &config.entities {
            if defs.get(&d.key()) != Some(d) {
                ops.push(StoreOp::PutEntity(d.clone()));
                defs.insert(d.key(), d.clone());
            }
        }
        if !ops.is_empty() {
            store.commit(ops).await?;
        }
        let now = clock.now();
        let bodies = Bodies::new(
            Arc::new(BodyWindow::new(config.limits.body_window_bytes)),
            store.clone(),
        );
        // Bodies up to what is left of the window (heads of queues first); the dedup keys of
        // the detection window.
        let load = |dedup_window_ms: Option<i64>| LoadOptions {
            max_body_bytes: bodies.window().available(),
            message_ids_since: dedup_window_ms.map(|w| now.saturating_sub(w)),
        };
        let seed = AtomicU64::new(rand::random::<u64>());
        let agenda = Arc::new(super::agenda::Agenda::default());
        let mut entities = HashMap::new();
        let mut subscriptions = Vec::new();
        let mut topic_bodies = Vec::new();
        for (key, def) in defs {
            let machine = match def.kind {
                EntityKind::Queue(props) => {
                    let dedup = props
                        .requires_duplicate_detection
                        .then_some(props.duplicate_detection_window_ms);
                    let snapshot = store.load_entity(&key, load(dedup))?;
                    MessagingEntity::Queue(Queue::restore(
                        &key,
                        props,
                        snapshot,
                        seed.fetch_add(1, Ordering::Relaxed),
                        now,
                        bodies.clone(),
                    ))
                }
                EntityKind::Topic(props) => {
                    let snapshot = store.load_entity(&key, load(None))?;
                    topic_bodies.push((key.clone(), snapshot.bodies));
                    MessagingEntity::Topic(Topic::new(&key, props, snapshot.next_sequence))
                }
                EntityKind::Subscription(sub) => {
                    subscriptions.push((key, sub));
                    continue;
                }
            };
            let entity = Entity::new(def.name, machine, agenda.clone(), store.clone());
            entities.insert(key, entity);
        }
        for (key, sub) in subscriptions {
            let Some(topic) = entities.get(&sub.topic.to_ascii_lowercase()) else {
                tracing::warn!(subscription = %key, "the subscription's topic does not exist; skipped");
                continue;
            };
            let snapshot = store.load_entity(&key, load(None))?;
            let max_seq = keybus_core::topic::max_sequence(&snapshot);
            let queue = Queue::restore(
                &key,
                sub.properties.clone(),
                snapshot,
                seed.fetch_add(1, Ordering::Relaxed),
                now,
                bodies.clone(),
            );
            let subscription = match Subscription::new(sub, queue) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(subscription = %key, error = %e, "subscription skipped");
                    continue;
                }
            };
            if let MessagingEntity::Topic(t) = &mut topic.lock().machine {
                t.add_subscription(subscription, max_seq);
            }
        }
        let mut cleanup = Vec::new();
        for (key, bodies) in topic_bodies {
            if let Some(e) = entities.get(&key)
                && let MessagingEntity::Topic(t) = &mut e.lock().machine
            {
                t.collect_orphan_bodies(&bodies);
                cleanup.extend(t.take_ops());
            }
        }
        if !cleanup.is_empty() {
            store.commit(cleanup).await?;
        }
        // Releasing each entity's lock puts it on the agenda: its first deadline, and the
        // forwarder's visit if it holds messages to forward.
        for e in entities.values() {
            drop(e.lock());
        }
        let admission =
            super::admission::Admission::new(&config.limits, super::admission::nofile());
        Ok(Arc::new(Broker {
            admission,
            config,
            policies,
            entities: RwLock::new(entities),
            store,
            clock,
            connections: AtomicUsize::new(0),
            seed,
            holders: AtomicU64::new(1),
            agenda,
            metrics,
            admin: tokio::sync::Mutex::new(()),
            started_at: now,
            auth,
            bodies,
        }))
    }

    /// Resolve a node path to its entity and, for `<topic>/subscriptions/<name>`, the
    /// subscription name.
    pub fn resolve(&self, path: &str) -> Option<(Arc<Entity>, Option<String>)> {
        if let Some(e) = self.entity(path) {
            return Some((e, None));
        }
        let (topic, sub) = path.rsplit_once("/subscriptions/")?;
        let entity = self.entity(topic)?;
        let exists = entity.lock().machine.has_receiver(Some(sub));
        exists.then(|| (entity, Some(sub.to_string())))
    }

    /// Look up an entity by its lower-case path.
    pub fn entity(&self, key: &str) -> Option<Arc<Entity>> {
        self.entities
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// Every entity.
    pub fn entity_list(&self) -> Vec<Arc<Entity>> {
        self.entities
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The broker clock's time (ms since the epoch).
    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// A broker-wide unique id for a session lock holder (one per session receiver link).
    pub fn next_holder(&self) -> u64 {
        self.holders.fetch_add(1, Ordering::Relaxed)
    }

    /// A seed for a new queue's lock tokens.
    pub fn next_seed(&self) -> u64 {
        self.seed.fetch_add(0x9E37_79B9, Ordering::Relaxed)
    }

    /// The SAS policies.
    pub fn policies(&self) -> &[SasPolicy] {
        &self.policies
    }

    /// Every accepted socket's permit comes from here.
    pub fn admission(&self) -> &Arc<super::admission::Admission> {
        &self.admission
    }

    /// The body window every queue and subscription shares.
    pub fn bodies(&self) -> &Bodies {
        &self.bodies
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Policy, token validation, token service and audit log.
    pub fn auth(&self) -> &Arc<keybus_auth::Auth> {
        &self.auth
    }

    /// The counters the metrics endpoint renders.
    pub(crate) fn metrics(&self) -> &super::metrics::Metrics {
        &self.metrics
    }

    /// The store every entity commits to.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The clock every expiry is measured by.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }

    /// When the broker started (ms since the epoch).
    pub fn started_at(&self) -> i64 {
        self.started_at
    }

    /// Entities waiting for the forwarder, and deadlines the housekeeper waits for.
    pub fn agenda_len(&self) -> (usize, usize) {
        self.agenda.len()
    }

    /// AMQP connections past their handshake.
    pub fn open_connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    /// Count an AMQP connection as open until the guard drops.
    pub fn connection_opened(self: &Arc<Self>) -> OpenConnection {
        self.connections.fetch_add(1, Ordering::SeqCst);
        OpenConnection(self.clone())
    }
}

/// An open AMQP connection, counted in [`Broker::open_connections`] while it lives.
pub struct OpenConnection(Arc<Broker>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.connections.fetch_sub(1, Ordering::SeqCst);
    }
}
