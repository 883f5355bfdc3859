//! The running namespace: entity registry, the store, the clock, SAS policies and limits.
//! Each entity's state sits behind one `std::sync::Mutex` that is never held across an
//! `.await`; store writes are submitted while it is held so they reach the store in order.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use keybus_core::{
    Clock, CommitFuture, EntityDefinition, EntityKind, Queue, Store, StoreError, StoreOp, SubQueue,
};
use tokio::sync::mpsc;

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
    /// A `$management` or `$cbs` response to send on (`channel`, `handle`).
    Reply {
        channel: u16,
        handle: u32,
        message: keybus_amqp::Bytes,
    },
}

/// A link waiting for messages on an entity.
#[derive(Debug)]
pub struct Waiter {
    pub tx: mpsc::UnboundedSender<ConnEvent>,
    pub sub: SubQueue,
    pub channel: u16,
    pub handle: u32,
    pub generation: u64,
}

/// Mutable state of one entity.
#[derive(Debug)]
pub struct EntityState {
    pub queue: Queue,
    pub waiters: Vec<Waiter>,
}

impl EntityState {
    /// Tell waiting links whose sub-queue has messages to pull them.
    pub fn wake(&mut self) {
        let queue = &self.queue;
        self.waiters.retain(|w| {
            if queue.has_available(w.sub) {
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

/// One messaging entity.
pub struct Entity {
    /// The name as declared (for display and error texts).
    pub name: String,
    state: Mutex<EntityState>,
    store: Arc<dyn Store>,
}

impl Entity {
    pub fn lock(&self) -> MutexGuard<'_, EntityState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Submit the queue's pending writes, in order, while the caller holds the lock.
    pub fn submit(&self, st: &mut EntityState) -> Option<CommitFuture> {
        let ops = st.queue.take_ops();
        (!ops.is_empty()).then(|| self.store.commit(ops))
    }
}

/// The broker: one namespace.
pub struct Broker {
    pub config: Config,
    pub policies: Vec<SasPolicy>,
    entities: RwLock<HashMap<String, Arc<Entity>>>,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    pub connections: AtomicUsize,
    seed: AtomicU64,
}

impl Broker {
    /// Load every entity from the store, create or update those the config declares.
    pub async fn open(
        config: Config,
        policies: Vec<SasPolicy>,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
    ) -> Result<Arc<Broker>, StoreError> {
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
        let mut entities = HashMap::new();
        for (key, def) in defs {
            let snapshot = store.load_entity(&key)?;
            let EntityKind::Queue(props) = def.kind;
            let queue = Queue::restore(
                &key,
                props,
                snapshot,
                seed.fetch_add(1, Ordering::Relaxed),
                now,
            );
            entities.insert(
                key,
                Arc::new(Entity {
                    name: def.name,
                    state: Mutex::new(EntityState {
                        queue,
                        waiters: Vec::new(),
                    }),
                    store: store.clone(),
                }),
            );
        }
        Ok(Arc::new(Broker {
            config,
            policies,
            entities: RwLock::new(entities),
            store,
            clock,
            connections: AtomicUsize::new(0),
            seed,
        }))
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

    pub fn next_seed(&self) -> u64 {
        self.seed.fetch_add(0x9E37_79B9, Ordering::Relaxed)
    }

    /// Run lock expiry, schedules and TTL for every entity whose deadline has come.
    pub fn tick(&self) {
        let now = self.now();
        for e in self.entity_list() {
            let mut st = e.lock();
            if st.queue.next_deadline().is_none_or(|d| d > now) {
                continue;
            }
            let woke = st.queue.tick(now);
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
