//! The running namespace: entity registry, the store, the clock, SAS policies and limits.
//! Each entity's state sits behind one `std::sync::Mutex` that is never held across an
//! `.await`; store writes are submitted while it is held so they reach the store in order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use keybus_core::{
    Clock, CommitFuture, EntityDefinition, EntityKind, Fanout, IncomingMessage, Queue, SendError,
    Store, StoreError, StoreOp, SubQueue, Subscription, Topic,
};
use tokio::sync::{Notify, mpsc};

use crate::config::{Config, SasPolicy};

/// The outcome of one send: `Err((condition, description))` is refused.
pub type SendResult = Result<(), (&'static str, String)>;

/// Events delivered to a connection task from elsewhere (entities, commit waiters).
#[derive(Debug)]
pub enum ConnEvent {
    /// Messages may be available for the receiver link (`channel`, `handle`, generation).
    Wake {
        channel: u16,
        handle: u32,
        generation: u64,
    },
    /// Sends became durable (or failed): settle these deliveries.
    SendsDone {
        channel: u16,
        results: Vec<(u32, SendResult)>,
    },
    /// Settlements became durable: echo these states.
    SettlesDone {
        channel: u16,
        results: Vec<(u32, keybus_amqp::DeliveryState)>,
    },
    /// The session lock of a receiver link ran out: detach it with `session-lock-lost`.
    SessionLost {
        channel: u16,
        handle: u32,
        generation: u64,
        session: String,
    },
    /// A next-available session receiver found no session in time: refuse its attach.
    SessionTimeout {
        channel: u16,
        handle: u32,
        generation: u64,
    },
    /// A `$management` or `$cbs` response to send on (`channel`, `handle`).
    Reply {
        channel: u16,
        handle: u32,
        message: keybus_amqp::Bytes,
    },
}

/// What a waiting link waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wants {
    /// Any available message of the (sub-)queue.
    Message,
    /// An available message of this session.
    Session(String),
    /// A session it could lock (a next-available session receiver).
    FreeSession,
}

/// A link waiting for messages on an entity.
#[derive(Debug)]
pub struct Waiter {
    pub tx: mpsc::UnboundedSender<ConnEvent>,
    /// The subscription, for a topic.
    pub subscription: Option<String>,
    pub sub: SubQueue,
    pub wants: Wants,
    pub channel: u16,
    pub handle: u32,
    pub generation: u64,
}

/// The state machine behind an entity (one per entity, so the size difference is moot).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Machine {
    Queue(Queue),
    Topic(Topic),
}

/// Messages a send made pending, to publish once their commit is durable.
#[derive(Debug)]
pub enum Pending {
    Queue(Vec<i64>),
    Topic(Fanout),
}

/// Mutable state of one entity.
#[derive(Debug)]
pub struct EntityState {
    pub machine: Machine,
    pub waiters: Vec<Waiter>,
    /// Wakes the broker's forwarder when messages wait to be forwarded.
    pub forwarder: Arc<Notify>,
    /// Session receivers by lock holder id, told when their session lock runs out.
    pub session_links: HashMap<u64, Waiter>,
    /// Set when the entity was deleted: links still holding it are detached.
    pub deleted: bool,
    /// Last send or delivery (ms since the epoch; 0 = never since start-up).
    pub accessed_at: i64,
}

impl EntityState {
    /// The queue a receiver reads: the queue itself, or a topic's subscription.
    pub fn receiver(&mut self, subscription: Option<&str>) -> Option<&mut Queue> {
        match (&mut self.machine, subscription) {
            (Machine::Queue(q), None) => Some(q),
            (Machine::Topic(t), Some(s)) => t.subscription_mut(s).map(|s| &mut s.queue),
            _ => None,
        }
    }

    pub fn receiver_ref(&self, subscription: Option<&str>) -> Option<&Queue> {
        match (&self.machine, subscription) {
            (Machine::Queue(q), None) => Some(q),
            (Machine::Topic(t), Some(s)) => t.subscription(s).map(|s| &s.queue),
            _ => None,
        }
    }

    /// The lower-case path of the entity.
    pub fn name(&self) -> &str {
        match &self.machine {
            Machine::Queue(q) => q.name(),
            Machine::Topic(t) => t.name(),
        }
    }

    /// Largest message a sender may send.
    pub fn max_message_size(&self) -> u64 {
        match &self.machine {
            Machine::Queue(q) => q.properties().max_message_size,
            Machine::Topic(t) => t.properties().max_message_size,
        }
    }

    /// Accept a send (or a `schedule-message`): the messages stay pending until published.
    pub fn send(
        &mut self,
        msgs: Vec<IncomingMessage>,
        now: i64,
        schedule: bool,
    ) -> Result<(Vec<i64>, Pending), SendError> {
        if self.deleted {
            return Err(SendError::EntityNotFound(self.name().to_string()));
        }
        self.accessed_at = now;
        match &mut self.machine {
            Machine::Queue(q) => {
                let seqs = if schedule {
                    q.schedule(msgs, now)?
                } else {
                    q.enqueue(msgs, now)?
                };
                Ok((seqs.clone(), Pending::Queue(seqs)))
            }
            Machine::Topic(t) => {
                let (seqs, fanout) = t.enqueue(msgs, now, schedule)?;
                Ok((seqs, Pending::Topic(fanout)))
            }
        }
    }

    /// Publish (on a durable commit) or forget (on a failed one) what a send made pending.
    pub fn finish(&mut self, pending: &Pending, durable: bool) {
        let woke = match (&mut self.machine, pending) {
            (Machine::Queue(q), Pending::Queue(seqs)) => {
                if durable {
                    q.commit_pending(seqs)
                } else {
                    q.abort_pending(seqs);
                    false
                }
            }
            (Machine::Topic(t), Pending::Topic(fanout)) => {
                if durable {
                    t.commit_pending(fanout)
                } else {
                    t.abort_pending(fanout);
                    false
                }
            }
            _ => false,
        };
        if woke {
            self.wake();
        }
    }

    pub fn cancel_scheduled(&mut self, seqs: &[i64]) {
        match &mut self.machine {
            Machine::Queue(q) => q.cancel_scheduled(seqs),
            Machine::Topic(t) => t.cancel_scheduled(seqs),
        }
    }

    pub fn take_ops(&mut self) -> Vec<StoreOp> {
        match &mut self.machine {
            Machine::Queue(q) => q.take_ops(),
            Machine::Topic(t) => t.take_ops(),
        }
    }

    pub fn next_deadline(&self) -> Option<i64> {
        match &self.machine {
            Machine::Queue(q) => q.next_deadline(),
            Machine::Topic(t) => t.next_deadline(),
        }
    }

    pub fn tick(&mut self, now: i64) -> bool {
        match &mut self.machine {
            Machine::Queue(q) => q.tick(now),
            Machine::Topic(t) => t.tick(now),
        }
    }

    /// Detach session receivers whose session lock ran out.
    pub fn notify_lost_sessions(&mut self) {
        let mut lost = Vec::new();
        match &mut self.machine {
            Machine::Queue(q) => lost.extend(q.take_lost_sessions()),
            Machine::Topic(t) => {
                for s in t.subscriptions_mut() {
                    lost.extend(s.queue.take_lost_sessions());
                }
            }
        }
        for (session, holder) in lost {
            if let Some(w) = self.session_links.remove(&holder) {
                let _ = w.tx.send(ConnEvent::SessionLost {
                    channel: w.channel,
                    handle: w.handle,
                    generation: w.generation,
                    session,
                });
            }
        }
    }

    /// Every queue of the entity (the queue, or each subscription) with its subscription name.
    pub fn queues_mut(&mut self) -> Vec<(Option<String>, &mut Queue)> {
        match &mut self.machine {
            Machine::Queue(q) => vec![(None, q)],
            Machine::Topic(t) => t
                .subscriptions_mut()
                .map(|s| (Some(s.definition.name.to_ascii_lowercase()), &mut s.queue))
                .collect(),
        }
    }

    /// A message of one of the entity's queues was forwarded (its record deleted by the
    /// forwarder's batch).
    pub fn forwarded(&mut self, subscription: Option<&str>, sub: SubQueue, seq: i64) {
        match (&mut self.machine, subscription) {
            (Machine::Queue(q), None) => q.forwarded(sub, seq),
            (Machine::Topic(t), Some(s)) => t.forwarded(s, sub, seq),
            _ => {}
        }
    }

    fn has_forwardable(&self) -> bool {
        match &self.machine {
            Machine::Queue(q) => q.has_forwardable(),
            Machine::Topic(t) => t.subscriptions().any(|s| s.queue.has_forwardable()),
        }
    }

    /// Wake every waiting link of the entity (or of one subscription) so that it notices
    /// the entity is gone (see `admin.rs`): its next pump detaches it.
    pub fn wake_all(&mut self, subscription: Option<&str>) {
        let matches = |w: &Waiter| {
            subscription.is_none_or(|s| {
                w.subscription
                    .as_deref()
                    .is_some_and(|x| x.eq_ignore_ascii_case(s))
            })
        };
        let (woken, kept): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(matches);
        self.waiters = kept;
        for w in woken
            .iter()
            .chain(self.session_links.values().filter(|w| matches(w)))
        {
            let _ = w.tx.send(ConnEvent::Wake {
                channel: w.channel,
                handle: w.handle,
                generation: w.generation,
            });
        }
    }

    /// Tell waiting links whose (sub-)queue has messages to pull them.
    pub fn wake(&mut self) {
        if self.has_forwardable() {
            self.forwarder.notify_one();
        }
        let machine = &self.machine;
        self.waiters.retain(|w| {
            let queue = match (machine, w.subscription.as_deref()) {
                (Machine::Queue(q), None) => Some(q),
                (Machine::Topic(t), Some(s)) => t.subscription(s).map(|s| &s.queue),
                _ => None,
            };
            let available = queue.is_some_and(|q| match &w.wants {
                Wants::Message => q.has_available(w.sub),
                Wants::Session(id) => q.has_available_in(id),
                Wants::FreeSession => q.has_free_session(),
            });
            if available {
                let _ = w.tx.send(ConnEvent::Wake {
                    channel: w.channel,
                    handle: w.handle,
                    generation: w.generation,
                });
                false
            } else {
                !w.tx.is_closed()
            }
        });
    }
}

/// One messaging entity (a queue, or a topic with its subscriptions).
pub struct Entity {
    /// The name as declared (for display and error texts).
    pub name: String,
    state: Mutex<EntityState>,
    store: Arc<dyn Store>,
}

impl Entity {
    /// A new entity around its state machine.
    pub(crate) fn new(
        name: String,
        machine: Machine,
        forwarder: Arc<Notify>,
        store: Arc<dyn Store>,
    ) -> Entity {
        Entity {
            name,
            state: Mutex::new(EntityState {
                machine,
                waiters: Vec::new(),
                forwarder,
                session_links: HashMap::new(),
                deleted: false,
                accessed_at: 0,
            }),
            store,
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, EntityState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Submit the entity's pending writes, in order, while the caller holds the lock.
    pub fn submit(&self, st: &mut EntityState) -> Option<CommitFuture> {
        let ops = st.take_ops();
        (!ops.is_empty()).then(|| self.store.commit(ops))
    }
}

/// The broker: one namespace.
pub struct Broker {
    pub config: Config,
    pub policies: Vec<SasPolicy>,
    pub(crate) entities: RwLock<HashMap<String, Arc<Entity>>>,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub connections: AtomicUsize,
    /// Every accepted socket's permit comes from here (see `admission.rs`).
    pub admission: Arc<crate::admission::Admission>,
    seed: AtomicU64,
    holders: AtomicU64,
    /// Notified when an entity has messages to forward (see `forwarding.rs`).
    pub forwarder: Arc<Notify>,
    pub metrics: crate::metrics::Metrics,
    /// Serialises entity lifecycle changes (create, update, delete; see `admin.rs`).
    pub(crate) admin: tokio::sync::Mutex<()>,
    /// When the broker started (ms since the epoch).
    pub started_at: i64,
    /// Policy, token validation, token service and audit log.
    pub auth: Arc<crate::auth::Auth>,
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
            Arc::new(crate::auth::Auth::sas_only()),
        )
        .await
    }

    /// [`Broker::open`] with an access policy, token service and audit log.
    pub async fn open_with_auth(
        config: Config,
        policies: Vec<SasPolicy>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        auth: Arc<crate::auth::Auth>,
    ) -> Result<Arc<Broker>, StoreError> {
        let metrics = crate::metrics::Metrics::default();
        let store: Arc<dyn Store> =
            Arc::new(crate::metrics::MeteredStore::new(store, metrics.clone()));
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
        let seed = AtomicU64::new(rand::random::<u64>());
        let forwarder = Arc::new(Notify::new());
        let mut entities = HashMap::new();
        let mut subscriptions = Vec::new();
        let mut topic_bodies = Vec::new();
        for (key, def) in defs {
            let machine = match def.kind {
                EntityKind::Queue(props) => {
                    let snapshot = store.load_entity(&key)?;
                    Machine::Queue(Queue::restore(
                        &key,
                        props,
                        snapshot,
                        seed.fetch_add(1, Ordering::Relaxed),
                        now,
                    ))
                }
                EntityKind::Topic(props) => {
                    let snapshot = store.load_entity(&key)?;
                    topic_bodies.push((key.clone(), snapshot.bodies));
                    Machine::Topic(Topic::new(&key, props, snapshot.next_sequence))
                }
                EntityKind::Subscription(sub) => {
                    subscriptions.push((key, sub));
                    continue;
                }
            };
            let entity = Entity::new(def.name, machine, forwarder.clone(), store.clone());
            entities.insert(key, Arc::new(entity));
        }
        for (key, sub) in subscriptions {
            let Some(topic) = entities.get(&sub.topic.to_ascii_lowercase()) else {
                tracing::warn!(subscription = %key, "the subscription's topic does not exist; skipped");
                continue;
            };
            let snapshot = store.load_entity(&key)?;
            let max_seq = keybus_core::topic::max_sequence(&snapshot);
            let queue = Queue::restore(
                &key,
                sub.properties.clone(),
                snapshot,
                seed.fetch_add(1, Ordering::Relaxed),
                now,
            );
            let subscription = match Subscription::new(sub, queue) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(subscription = %key, error = %e, "subscription skipped");
                    continue;
                }
            };
            if let Machine::Topic(t) = &mut topic.lock().machine {
                t.add_subscription(subscription, max_seq);
            }
        }
        let mut cleanup = Vec::new();
        for (key, bodies) in topic_bodies {
            if let Some(e) = entities.get(&key)
                && let Machine::Topic(t) = &mut e.lock().machine
            {
                t.collect_orphan_bodies(&bodies);
                cleanup.extend(t.take_ops());
            }
        }
        if !cleanup.is_empty() {
            store.commit(cleanup).await?;
        }
        let admission =
            crate::admission::Admission::new(&config.limits, crate::admission::nofile());
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
            forwarder,
            metrics,
            admin: tokio::sync::Mutex::new(()),
            started_at: now,
            auth,
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
        let exists =
            matches!(&entity.lock().machine, Machine::Topic(t) if t.subscription(sub).is_some());
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

    pub fn entity_list(&self) -> Vec<Arc<Entity>> {
        self.entities
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub fn now(&self) -> i64 {
        self.clock.now()
    }

    /// A broker-wide unique id for a session lock holder (one per session receiver link).
    pub fn next_holder(&self) -> u64 {
        self.holders.fetch_add(1, Ordering::Relaxed)
    }

    pub fn next_seed(&self) -> u64 {
        self.seed.fetch_add(0x9E37_79B9, Ordering::Relaxed)
    }

    /// Run lock expiry, schedules and TTL for every entity whose deadline has come.
    pub fn tick(&self) {
        let now = self.now();
        for e in self.entity_list() {
            let mut st = e.lock();
            if st.next_deadline().is_none_or(|d| d > now) {
                continue;
            }
            let woke = st.tick(now);
            st.notify_lost_sessions();
            if let Some(fut) = e.submit(&mut st) {
                tokio::spawn(async move {
                    if let Err(err) = fut.await {
                        tracing::error!(%err, "store commit failed during housekeeping");
                    }
                });
            }
            if woke {
                st.wake();
            }
        }
    }
}
