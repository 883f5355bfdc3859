//! The in-memory store: for `--in-memory` brokers and tests. Nothing survives the process.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use keybus_amqp::Message;
use std::sync::{Mutex, MutexGuard};

use keybus_core::queue::message_id_key;
use keybus_core::{
    CommitFuture, EntityDefinition, EntityName, EntitySnapshot, LoadOptions, MessageRecord,
    MessageSource, SessionRecord, Store, StoreError, StoreOp, SubQueue,
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
                mut record,
            } => {
                let set = self.data(entity).set(sub);
                if record.message.is_none() && record.body_owner.is_none() {
                    // Broker state only: keep the stored body (nothing to update if gone).
                    let Some(stored) = set.get(&record.sequence_number) else {
                        return;
                    };
                    record.message = stored.message.clone();
                }
                set.insert(record.sequence_number, record);
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

impl Inner {
    /// The message of a stored record: its own, or its topic's body.
    fn message(&self, entity: &str, r: &MessageRecord) -> Result<Arc<Message>, StoreError> {
        let seq = r.sequence_number;
        match &r.body_owner {
            Some(owner) => self
                .data
                .get(&**owner)
                .and_then(|o| o.bodies.get(&seq))
                .cloned()
                .ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "message {seq} of '{entity}' refers to a missing body of '{owner}'"
                    ))
                }),
            None => r.message.clone().ok_or_else(|| {
                StoreError::Corrupt(format!("message {seq} of '{entity}' has no body"))
            }),
        }
    }
}

impl MessageSource for MemStore {
    fn read_message(
        &self,
        entity: &str,
        sub: SubQueue,
        seq: i64,
    ) -> Result<Arc<Message>, StoreError> {
        let mut inner = self.lock();
        let record = inner
            .data
            .get_mut(entity)
            .and_then(|d| d.set(sub).get(&seq).cloned())
            .ok_or_else(|| {
                StoreError::Corrupt(format!("message {seq} of '{entity}' is not in the store"))
            })?;
        inner.message(entity, &record)
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

    fn load_entity(
        &self,
        entity: &str,
        options: LoadOptions,
    ) -> Result<EntitySnapshot, StoreError> {
        let inner = self.lock();
        let Some(d) = inner.data.get(entity) else {
            return Ok(EntitySnapshot::default());
        };
        let mut budget = options.max_body_bytes;
        let mut message_ids = Vec::new();
        let mut resolve = |r: &MessageRecord, main: bool| -> Result<MessageRecord, StoreError> {
            let mut r = r.clone();
            let message = inner.message(entity, &r)?;
            if main
                && options
                    .message_ids_since
                    .is_some_and(|since| r.enqueued_time >= since)
                && let Some(id) = message_id_key(&message)
            {
                message_ids.push((r.enqueued_time, id));
            }
            let keep = budget >= u64::from(r.size);
            if keep {
                budget -= u64::from(r.size);
            }
            r.message = keep.then_some(message);
            Ok(r)
        };
        let main = d
            .main
            .values()
            .map(|r| resolve(r, true))
            .collect::<Result<_, _>>()?;
        let dead_letter = d
            .dead_letter
            .values()
            .map(|r| resolve(r, false))
            .collect::<Result<_, _>>()?;
        Ok(EntitySnapshot {
            next_sequence: d.next_sequence,
            main,
            dead_letter,
            sessions: d.sessions.values().cloned().collect(),
            bodies: d.bodies.keys().copied().collect(),
            message_ids,
        })
    }

    fn healthy(&self) -> bool {
        true
    }
}
