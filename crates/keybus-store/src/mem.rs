//! The in-memory store: for `--in-memory` brokers and tests. Nothing survives the process.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use keybus_amqp::Message;
use std::sync::{Mutex, MutexGuard};

use keybus_core::{
    CommitFuture, EntityDefinition, EntityName, EntitySnapshot, MessageRecord, SessionRecord,
    Store, StoreError, StoreOp, SubQueue,
};

#[derive(Default)]
struct EntityData {
    next_sequence: i64,
    main: BTreeMap<i64, MessageRecord>,
    dead_letter: BTreeMap<i64, MessageRecord>,
    sessions: BTreeMap<String, SessionRecord>,
    bodies: BTreeMap<i64, Arc<Message>>,
}

impl EntityData {
    fn set(&mut self, sub: SubQueue) -> &mut BTreeMap<i64, MessageRecord> {
        match sub {
            SubQueue::Main => &mut self.main,
            SubQueue::DeadLetter | SubQueue::TransferDeadLetter => &mut self.dead_letter,
        }
    }
}

#[derive(Default)]
struct Inner {
    definitions: BTreeMap<String, EntityDefinition>,
    data: HashMap<EntityName, EntityData>,
}

impl Inner {
    fn data(&mut self, entity: EntityName) -> &mut EntityData {
        self.data.entry(entity).or_default()
    }

    fn apply(&mut self, op: StoreOp) {
        match op {
            StoreOp::PutEntity(def) => {
                self.definitions.insert(def.key(), def);
            }
            StoreOp::DeleteEntity { entity } => {
                self.definitions.remove(&*entity);
                self.data.remove(&entity);
            }
            StoreOp::PutSequence { entity, next } => {
                let d = self.data(entity);
                d.next_sequence = d.next_sequence.max(next);
            }
            StoreOp::PutMessage {
                entity,
                sub,
                record,
            } => {
                self.data(entity)
                    .set(sub)
                    .insert(record.sequence_number, record);
            }
            StoreOp::DeleteMessage {
                entity,
                sub,
                sequence_number,
            } => {
                if let Some(d) = self.data.get_mut(&entity) {
                    d.set(sub).remove(&sequence_number);
                }
            }
            StoreOp::PutBody {
                entity,
                sequence_number,
                message,
            } => {
                self.data(entity).bodies.insert(sequence_number, message);
            }
            StoreOp::DeleteBody {
                entity,
                sequence_number,
            } => {
                if let Some(d) = self.data.get_mut(&entity) {
                    d.bodies.remove(&sequence_number);
                }
            }
            StoreOp::PutSessionState { entity, record } => {
                let sessions = &mut self.data(entity).sessions;
                if record.state.is_empty() {
                    sessions.remove(&record.session_id);
                } else {
                    sessions.insert(record.session_id.clone(), record);
                }
            }
        }
    }
}

/// A [`Store`] that keeps everything in memory. `commit` applies the batch under one lock and
/// resolves at once, so batches are atomic and ordered by the `commit` calls.
#[derive(Default)]
pub struct MemStore {
    inner: Mutex<Inner>,
}

impl MemStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock cannot leave a half-applied batch visible to anyone
        // who cares (the process is going down), so recover the guard.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl std::fmt::Debug for MemStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemStore").finish_non_exhaustive()
    }
}

impl Store for MemStore {
    fn commit(&self, ops: Vec<StoreOp>) -> CommitFuture {
        {
            let mut inner = self.lock();
            for op in ops {
                inner.apply(op);
            }
        }
        Box::pin(std::future::ready(Ok(())))
    }

    fn list_entities(&self) -> Result<Vec<EntityDefinition>, StoreError> {
        Ok(self.lock().definitions.values().cloned().collect())
    }

    fn load_entity(&self, entity: &str) -> Result<EntitySnapshot, StoreError> {
        let inner = self.lock();
        let Some(d) = inner.data.get(entity) else {
            return Ok(EntitySnapshot::default());
        };
        let resolve = |r: &MessageRecord| -> Result<MessageRecord, StoreError> {
            let mut r = r.clone();
            if let Some(owner) = &r.body_owner {
                r.message = inner
                    .data
                    .get(&**owner)
                    .and_then(|o| o.bodies.get(&r.sequence_number))
                    .cloned()
                    .ok_or_else(|| {
                        StoreError::Corrupt(format!(
                            "message {} of '{entity}' refers to a missing body of '{owner}'",
                            r.sequence_number
                        ))
                    })?;
            }
            Ok(r)
        };
        Ok(EntitySnapshot {
            next_sequence: d.next_sequence,
            main: d.main.values().map(resolve).collect::<Result<_, _>>()?,
            dead_letter: d
                .dead_letter
                .values()
                .map(resolve)
                .collect::<Result<_, _>>()?,
            sessions: d.sessions.values().cloned().collect(),
            bodies: d.bodies.keys().copied().collect(),
        })
    }

    fn healthy(&self) -> bool {
        true
    }
}
