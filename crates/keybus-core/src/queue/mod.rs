//! The queue state machine: one entity's messages, its dead-letter sub-queue, locks,
//! schedules, expiry and duplicate detection.
//!
//! Every method takes `now` and mutates memory only. Writes that must reach the store are
//! queued and handed out by [`Queue::take_ops`]; the caller commits them and acknowledges the
//! client only once the commit is durable. Sends are two-phase: [`Queue::enqueue`] keeps new
//! messages invisible ("pending") until [`Queue::commit_pending`] is called after the commit,
//! so no receiver ever sees a message that is not on disk.
//!
//! Deep queues: once the shared [`BodyWindow`](crate::bodies::BodyWindow) is full, a
//! committed message that is neither locked nor pending keeps only its index entry here and
//! its body in the store; it is read back through the queue's [`Bodies`] when it is delivered,
//! peeked, forwarded or dead-lettered. A read that fails leaves the message where it was and
//! is reported by [`Queue::take_read_error`].

mod delivery;
pub mod forwarding;
pub mod purge;
pub mod redrive;
mod seq_map;
pub mod sessions;

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use keybus_amqp::{Bytes, Message, Value};

use crate::address::SubQueue;
use crate::bodies::Bodies;
use crate::clock::Timestamp;
use crate::duplicates::DuplicateHistory;
use crate::entity::QueueProperties;
use crate::error::{ManagementError, SendError, SettleError};
use crate::record::{MessageRecord, MessageState, MessageSummary};
use crate::store::{EntityName, EntitySnapshot, StoreError, StoreOp};

pub use delivery::{Delivery, encode_delivery};

/// A lock token: a GUID in RFC 4122 byte order (as `$management` carries it as `uuid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LockToken(pub [u8; 16]);

impl LockToken {
    /// The delivery-tag form: .NET `Guid.ToByteArray()` order (first three fields little-endian).
    pub fn to_delivery_tag(self) -> [u8; 16] {
        let b = self.0;
        [
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
            b[14], b[15],
        ]
    }

    /// Inverse of [`LockToken::to_delivery_tag`]; `None` unless the tag is 16 bytes.
    pub fn from_delivery_tag(tag: &[u8]) -> Option<LockToken> {
        let b: [u8; 16] = tag.try_into().ok()?;
        Some(LockToken([
            b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
            b[14], b[15],
        ]))
    }
}

/// How a receiver takes messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiveMode {
    PeekLock,
    ReceiveAndDelete,
}

/// A message as it arrives from a sender.
#[derive(Debug, Clone)]
pub struct IncomingMessage {
    pub message: Message,
    /// Encoded size in bytes, as it arrived.
    pub size: u32,
    /// Auto-forwarding hops behind it (0 for a client's send).
    pub hops: u8,
}

impl IncomingMessage {
    /// A client's message of `size` encoded bytes.
    pub fn new(message: Message, size: u32) -> IncomingMessage {
        IncomingMessage {
            message,
            size,
            hops: 0,
        }
    }
}

/// How a receiver settles a locked message.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Complete,
    Abandon {
        properties: Option<Vec<(Value, Value)>>,
    },
    Defer {
        properties: Option<Vec<(Value, Value)>>,
    },
    DeadLetter {
        reason: Option<String>,
        description: Option<String>,
        properties: Option<Vec<(Value, Value)>>,
    },
    /// Unlock without counting a delivery attempt.
    Release,
}

#[derive(Debug, Clone, Copy)]
struct Lock {
    token: LockToken,
    until: Timestamp,
}

#[derive(Debug, Clone)]
struct Entry {
    rec: MessageRecord,
    /// Boxed: few messages are locked at a time, and every entry pays for the field.
    lock: Option<Box<Lock>>,
    pending: bool,
    /// Forwarding this message failed: it stays here for receivers.
    stuck: bool,
    /// The body changed (properties to modify) since it was last written.
    body_dirty: bool,
}

impl Entry {
    fn session_id(&self) -> Option<&str> {
        self.rec.summary.session_id.as_deref()
    }
}

/// What taking one message for a receiver came to.
enum Taken {
    Delivered(Delivery),
    /// It had expired (and is expired now); try the next one.
    Expired,
    /// Its body could not be read back; it stays available (see [`Queue::take_read_error`]).
    Unreadable,
}

/// One message set (the queue itself or its dead-letter sub-queue) with its indexes.
#[derive(Debug, Default)]
struct MessageSet {
    /// Where bodies live; `resident` bytes of this set's bodies are in memory.
    bodies: Bodies,
    resident: u64,
    entries: seq_map::SeqMap<Entry>,
    /// Available messages: all of them, or in a session-enabled set those without a session.
    available: BTreeSet<i64>,
    /// Session-enabled sets index available messages by session id instead (FIFO per session).
    sessionful: bool,
    by_session: HashMap<String, BTreeSet<i64>>,
    /// Auto-forwarding sets index active messages for the forwarder instead of receivers.
    forwarding: bool,
    to_forward: BTreeSet<i64>,
    scheduled: BTreeSet<(Timestamp, i64)>,
    expiry: BTreeSet<(Timestamp, i64)>,
    lock_expiry: BTreeSet<(Timestamp, i64)>,
    size_bytes: u64,
}

impl Drop for MessageSet {
    fn drop(&mut self) {
        self.bodies.window().sub(self.resident);
    }
}

impl MessageSet {
    fn new(bodies: &Bodies, sessionful: bool, forwarding: bool) -> MessageSet {
        let mut set = MessageSet::default();
        set.bodies = bodies.clone();
        set.sessionful = sessionful;
        set.forwarding = forwarding;
        set
    }

    fn index(&mut self, seq: i64) {
        let Some(e) = self.entries.get_mut(&seq) else {
            return;
        };
        if e.pending {
            return;
        }
        if let Some(l) = e.lock.as_deref() {
            self.lock_expiry.insert((l.until, seq));
            return;
        }
        // Neither pending nor locked: past the window its body is left to the store.
        if self.bodies.over() && e.rec.message.take().is_some() {
            self.resident = self.resident.saturating_sub(u64::from(e.rec.size));
            self.bodies.window().sub(u64::from(e.rec.size));
        }
        let Some(e) = self.entries.get(&seq) else {
            return;
        };
        match e.rec.state {
            MessageState::Active if self.forwarding && !e.stuck => {
                self.to_forward.insert(seq);
            }
            MessageState::Active => match e.session_id().filter(|_| self.sessionful) {
                Some(id) => {
                    self.by_session
                        .entry(id.to_string())
                        .or_default()
                        .insert(seq);
                }
                None => {
                    self.available.insert(seq);
                }
            },
            MessageState::Scheduled => {
                if let Some(t) = e.rec.scheduled_time {
                    self.scheduled.insert((t, seq));
                }
            }
            MessageState::Deferred => {}
        }
        if let Some(t) = e.rec.expires_at {
            self.expiry.insert((t, seq));
        }
    }

    fn unindex(&mut self, seq: i64) {
        let Some(e) = self.entries.get(&seq) else {
            return;
        };
        self.available.remove(&seq);
        self.to_forward.remove(&seq);
        if self.sessionful
            && let Some(id) = e.session_id()
            && let Some(set) = self.by_session.get_mut(id)
        {
            set.remove(&seq);
            if set.is_empty() {
                self.by_session.remove(id);
            }
        }
        if let Some(t) = e.rec.scheduled_time {
            self.scheduled.remove(&(t, seq));
        }
        if let Some(t) = e.rec.expires_at {
            self.expiry.remove(&(t, seq));
        }
        if let Some(l) = e.lock.as_deref() {
            self.lock_expiry.remove(&(l.until, seq));
        }
    }

    fn insert(&mut self, entry: Entry) {
        let seq = entry.rec.sequence_number;
        self.size_bytes += u64::from(entry.rec.size);
        if entry.rec.message.is_some() {
            self.resident += u64::from(entry.rec.size);
            self.bodies.window().add(u64::from(entry.rec.size));
        }
        self.entries.insert(seq, entry);
        self.index(seq);
    }

    fn remove(&mut self, seq: i64) -> Option<Entry> {
        self.unindex(seq);
        let e = self.entries.remove(&seq)?;
        self.size_bytes = self.size_bytes.saturating_sub(u64::from(e.rec.size));
        if e.rec.message.is_some() {
            self.resident = self.resident.saturating_sub(u64::from(e.rec.size));
            self.bodies.window().sub(u64::from(e.rec.size));
        }
        Some(e)
    }

    /// The body of `seq`: in memory, or read back from the store and kept (the caller is about
    /// to lock, modify or forward the message).
    fn load(&mut self, entity: &str, sub: SubQueue, seq: i64) -> Result<Arc<Message>, StoreError> {
        let e = self
            .entries
            .get_mut(&seq)
            .ok_or_else(|| StoreError::Corrupt(format!("message {seq} of '{entity}' is gone")))?;
        if let Some(m) = &e.rec.message {
            return Ok(m.clone());
        }
        let m = self.bodies.read(entity, sub, seq)?;
        e.rec.message = Some(m.clone());
        self.resident += u64::from(e.rec.size);
        self.bodies.window().add(u64::from(e.rec.size));
        Ok(m)
    }

    /// The body of `seq` without keeping it in memory (peek).
    fn read(&self, entity: &str, sub: SubQueue, e: &Entry) -> Result<Arc<Message>, StoreError> {
        match &e.rec.message {
            Some(m) => Ok(m.clone()),
            None => self.bodies.read(entity, sub, e.rec.sequence_number),
        }
    }

    fn first_deadline(&self) -> Option<Timestamp> {
        [
            self.lock_expiry.first().map(|x| x.0),
            self.scheduled.first().map(|x| x.0),
            self.expiry.first().map(|x| x.0),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}

/// Broker-owned message annotations, stripped from incoming messages (§5.1).
const BROKER_ANNOTATIONS: &[&str] = &[
    forwarding::HOPS_ANNOTATION,
    redrive::REDRIVES_ANNOTATION,
    "x-opt-sequence-number",
    "x-opt-enqueued-time",
    "x-opt-locked-until",
    "x-opt-message-state",
    "x-opt-enqueue-sequence-number",
    "x-opt-deadletter-source",
    "x-opt-lock-token",
    "x-opt-partition-id",
];

/// Counts for runtime properties and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueCounts {
    pub active: u64,
    pub dead_letter: u64,
    pub scheduled: u64,
    pub deferred: u64,
    pub size_bytes: u64,
}

/// Monotonic activity counters since start-up (for metrics; not persisted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Messages accepted (sends, scheduled messages, topic copies, forwarded in).
    pub incoming: u64,
    /// Deliveries handed to receivers (peek-lock and receive-and-delete, deferred included).
    pub outgoing: u64,
    pub completed: u64,
    pub abandoned: u64,
    pub deferred: u64,
    /// Messages moved to the dead-letter sub-queue, for any reason.
    pub dead_lettered: u64,
    pub expired: u64,
}

/// One queue with its dead-letter sub-queue.
#[derive(Debug)]
pub struct Queue {
    name: EntityName,
    props: QueueProperties,
    next_seq: i64,
    main: MessageSet,
    dlq: MessageSet,
    locks: HashMap<LockToken, (SubQueue, i64)>,
    duplicates: DuplicateHistory,
    ops: Vec<StoreOp>,
    rng: u64,
    sessions: sessions::Sessions,
    stats: QueueStats,
    bodies: Bodies,
    /// The first body that could not be read back since the last [`Queue::take_read_error`].
    read_error: Option<StoreError>,
}

impl Queue {
    /// A new, empty queue. `seed` feeds lock-token generation.
    pub fn new(name: impl Into<String>, props: QueueProperties, seed: u64) -> Queue {
        Queue {
            name: name.into().to_ascii_lowercase().into(),
            props,
            next_seq: 1,
            main: MessageSet::default(),
            dlq: MessageSet::default(),
            locks: HashMap::new(),
            duplicates: DuplicateHistory::default(),
            ops: Vec::new(),
            rng: seed | 1,
            sessions: sessions::Sessions::default(),
            stats: QueueStats::default(),
            bodies: Bodies::default(),
            read_error: None,
        }
        .with_bodies(Bodies::default())
    }

    /// Keep bodies in `bodies`' window and read evicted ones back from its source. Called on
    /// an empty queue (it rebuilds the message sets).
    pub fn with_bodies(mut self, bodies: Bodies) -> Queue {
        self.main = MessageSet::new(
            &bodies,
            self.props.requires_session,
            self.props.forward_to.is_some(),
        );
        self.dlq = MessageSet::new(
            &bodies,
            false,
            self.props.forward_dead_lettered_messages_to.is_some(),
        );
        self.bodies = bodies;
        self
    }

    /// The first failure to read a body back since the last call (the message stayed where it
    /// was): the caller reports it.
    pub fn take_read_error(&mut self) -> Option<StoreError> {
        self.read_error.take()
    }

    /// Make sure the body of `seq` is in memory; false (with the error kept) if it cannot be
    /// read back.
    fn load_body(&mut self, sub: SubQueue, seq: i64) -> Option<Arc<Message>> {
        let name = self.name.clone();
        match self.set_mut(sub).load(&name, sub, seq) {
            Ok(m) => Some(m),
            Err(e) => {
                self.read_error.get_or_insert(e);
                None
            }
        }
    }

    /// Rebuild a queue from what the store holds (records without their body stay so, see
    /// the module documentation). Every lock is gone after a restart.
    pub fn restore(
        name: impl Into<String>,
        props: QueueProperties,
        snapshot: EntitySnapshot,
        seed: u64,
        now: Timestamp,
        bodies: Bodies,
    ) -> Queue {
        let mut q = Queue::new(name, props, seed).with_bodies(bodies);
        let mut max_seq = 0;
        for rec in snapshot.main {
            max_seq = max_seq.max(rec.sequence_number);
            if q.props.requires_duplicate_detection
                && snapshot.message_ids.is_empty()
                && rec.enqueued_time + q.props.duplicate_detection_window_ms > now
                && let Some(id) = rec.message.as_deref().and_then(message_id_key)
            {
                q.remember_id(id, rec.enqueued_time);
            }
            q.main.insert(Entry {
                rec,
                lock: None,
                pending: false,
                stuck: false,
                body_dirty: false,
            });
        }
        for rec in snapshot.dead_letter {
            max_seq = max_seq.max(rec.sequence_number);
            q.dlq.insert(Entry {
                rec,
                lock: None,
                pending: false,
                stuck: false,
                body_dirty: false,
            });
        }
        if q.props.requires_duplicate_detection {
            for (at, id) in snapshot.message_ids {
                if at + q.props.duplicate_detection_window_ms > now {
                    q.remember_id(id, at);
                }
            }
        }
        q.next_seq = snapshot.next_sequence.max(max_seq + 1).max(1);
        q.sessions.restore(snapshot.sessions);
        q
    }

    /// The lower-case path, shared (as store operations carry it).
    pub fn shared_name(&self) -> EntityName {
        self.name.clone()
    }

    /// The lower-case path.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn properties(&self) -> &QueueProperties {
        &self.props
    }

    /// Replace the properties (update entity). Existing messages keep their state.
    pub fn set_properties(&mut self, props: QueueProperties) {
        self.props = props;
        self.main.forwarding = self.props.forward_to.is_some();
        self.dlq.forwarding = self.props.forward_dead_lettered_messages_to.is_some();
        for set in [&mut self.main, &mut self.dlq] {
            let seqs: Vec<i64> = set.entries.keys().collect();
            for seq in seqs {
                set.unindex(seq);
                set.index(seq);
            }
        }
    }

    /// Writes queued since the last call, to be committed in order.
    pub fn take_ops(&mut self) -> Vec<StoreOp> {
        std::mem::take(&mut self.ops)
    }

    pub fn counts(&self) -> QueueCounts {
        let mut c = QueueCounts {
            dead_letter: self.dlq.entries.len() as u64,
            size_bytes: self.main.size_bytes + self.dlq.size_bytes,
            ..QueueCounts::default()
        };
        for e in self.main.entries.values() {
            match e.rec.state {
                MessageState::Active => c.active += 1,
                MessageState::Deferred => c.deferred += 1,
                MessageState::Scheduled => c.scheduled += 1,
            }
        }
        c
    }

    /// Activity counters since start-up.
    pub fn stats(&self) -> QueueStats {
        self.stats
    }

    /// True if a receiver on `sub` could take a message now.
    pub fn has_available(&self, sub: SubQueue) -> bool {
        !self.set(sub).available.is_empty()
    }

    /// The earliest time at which [`Queue::tick`] has work (lock expiry, schedule, TTL).
    pub fn next_deadline(&self) -> Option<Timestamp> {
        [
            self.main.first_deadline(),
            self.dlq.first_deadline(),
            self.sessions.first_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn set(&self, sub: SubQueue) -> &MessageSet {
        match sub {
            SubQueue::Main => &self.main,
            SubQueue::DeadLetter | SubQueue::TransferDeadLetter => &self.dlq,
        }
    }

    fn set_mut(&mut self, sub: SubQueue) -> &mut MessageSet {
        match sub {
            SubQueue::Main => &mut self.main,
            SubQueue::DeadLetter | SubQueue::TransferDeadLetter => &mut self.dlq,
        }
    }

    fn next_token(&mut self) -> LockToken {
        // splitmix64: unique, well-spread tokens from the injected seed.
        let mut out = [0u8; 16];
        for chunk in out.chunks_mut(8) {
            self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            chunk.copy_from_slice(&z.to_be_bytes());
        }
        out[6] = (out[6] & 0x0f) | 0x40;
        out[8] = (out[8] & 0x3f) | 0x80;
        LockToken(out)
    }

    fn remember_id(&mut self, id: String, at: Timestamp) {
        self.duplicates.remember(id, at);
    }

    fn prune_duplicates(&mut self, now: Timestamp) {
        self.duplicates
            .prune(now, self.props.duplicate_detection_window_ms);
    }

    /// The time to live of a message whose own is `own` (milliseconds): the shorter of it and
    /// the queue's default.
    fn ttl_ms(&self, own: Option<i64>) -> Option<i64> {
        match (own, self.props.default_message_ttl_ms) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn check_incoming(&self, msgs: &[IncomingMessage]) -> Result<(), SendError> {
        if self.props.requires_session && msgs.iter().any(|m| group_id(&m.message).is_none()) {
            return Err(SendError::Argument(format!(
                "The SessionId was not set on a message, and it cannot be sent to the entity '{}'. Entities that have session support enabled can only receive messages that have the SessionId set to a valid value.",
                self.name
            )));
        }
        check_sizes(
            &self.name,
            msgs,
            self.props.max_message_size,
            self.size_bytes(),
            self.props.max_size_bytes,
        )
    }

    /// Accept messages from a sender: assign sequence numbers, strip broker annotations, and
    /// keep them pending (invisible) until [`Queue::commit_pending`]. Duplicates (by message id,
    /// within the detection window) are accepted and dropped. Messages carrying a future
    /// `x-opt-scheduled-enqueue-time` become scheduled. All or nothing.
    pub fn enqueue(
        &mut self,
        msgs: Vec<IncomingMessage>,
        now: Timestamp,
    ) -> Result<Vec<i64>, SendError> {
        self.check_incoming(&msgs)?;
        self.accept(msgs, now, false)
    }

    /// `schedule-message`: like [`Queue::enqueue`], but every message is scheduled at its
    /// `x-opt-scheduled-enqueue-time` (which it must carry). Returns the sequence numbers.
    pub fn schedule(
        &mut self,
        msgs: Vec<IncomingMessage>,
        now: Timestamp,
    ) -> Result<Vec<i64>, SendError> {
        self.check_incoming(&msgs)?;
        for m in &msgs {
            if scheduled_time(&m.message).is_none() {
                return Err(SendError::Argument(
                    "A scheduled message must carry x-opt-scheduled-enqueue-time.".into(),
                ));
            }
        }
        self.accept(msgs, now, true)
    }

    fn accept(
        &mut self,
        msgs: Vec<IncomingMessage>,
        now: Timestamp,
        always_assign: bool,
    ) -> Result<Vec<i64>, SendError> {
        if self.props.requires_duplicate_detection {
            self.prune_duplicates(now);
        }
        let mut seqs = Vec::with_capacity(msgs.len());
        for m in msgs {
            let mut message = m.message;
            if self.props.requires_duplicate_detection
                && let Some(id) = message_id_key(&message)
            {
                if self.duplicates.contains(&id) && !always_assign {
                    continue;
                }
                self.remember_id(id, now);
            }
            strip_broker_annotations(&mut message);
            forwarding::set_hops(&mut message, m.hops);
            let seq = self.next_seq;
            self.next_seq += 1;
            let keep = self.bodies.fits(m.size);
            self.insert_pending(seq, Arc::new(message), m.size, now, None, keep);
            seqs.push(seq);
        }
        self.ops.push(StoreOp::PutSequence {
            entity: self.name.clone(),
            next: self.next_seq,
        });
        Ok(seqs)
    }

    /// Insert a new pending message with an already assigned sequence number.
    fn insert_pending(
        &mut self,
        seq: i64,
        message: Arc<Message>,
        size: u32,
        now: Timestamp,
        body_owner: Option<Arc<str>>,
        keep_body: bool,
    ) {
        let sched = scheduled_time(&message).filter(|t| *t > now);
        let summary = MessageSummary::of(&message);
        let (state, enqueued_time, expires_at) = match sched {
            Some(t) => (MessageState::Scheduled, t, None),
            None => (
                MessageState::Active,
                now,
                self.ttl_ms(summary.ttl_ms.map(i64::from))
                    .map(|ttl| now.saturating_add(ttl)),
            ),
        };
        let rec = MessageRecord {
            sequence_number: seq,
            enqueued_time,
            state,
            delivery_count: 0,
            scheduled_time: sched,
            expires_at,
            message: Some(message),
            summary,
            size,
            body_owner,
        };
        self.ops.push(StoreOp::PutMessage {
            entity: self.name.clone(),
            sub: SubQueue::Main,
            record: rec.clone(),
        });
        let mut rec = rec;
        if !keep_body {
            // The op carries the body to the store; a pending message is read by no one, and
            // once committed it is read back from there.
            rec.message = None;
        }
        self.main.insert(Entry {
            rec,
            lock: None,
            pending: true,
            stuck: false,
            body_dirty: false,
        });
        self.stats.incoming += 1;
    }

    /// A topic's copy of a message for this subscription: the sequence number was assigned
    /// at the topic and broker annotations are already stripped. Pending until
    /// [`Queue::commit_pending`]. `body_owner` names the topic when the copy is the topic's
    /// unmodified message, stored once as the topic's body.
    pub fn accept_copy(
        &mut self,
        seq: i64,
        message: Arc<Message>,
        size: u32,
        now: Timestamp,
        body_owner: Option<Arc<str>>,
    ) {
        self.next_seq = self.next_seq.max(seq + 1);
        let keep = self.bodies.fits(size);
        self.insert_pending(seq, message, size, now, body_owner, keep);
    }

    /// `(sub-queue, sequence number)` of every record that refers to a topic's stored body.
    pub fn shared_body_refs(&self) -> Vec<(SubQueue, i64)> {
        [
            (SubQueue::Main, &self.main),
            (SubQueue::DeadLetter, &self.dlq),
        ]
        .into_iter()
        .flat_map(|(sub, set)| {
            set.entries
                .values()
                .filter(|e| e.rec.body_owner.is_some())
                .map(move |e| (sub, e.rec.sequence_number))
        })
        .collect()
    }

    /// A topic's copy that failed rule evaluation on a subscription that dead-letters filter
    /// exceptions: it goes straight to the dead-letter sub-queue.
    pub fn dead_letter_copy(
        &mut self,
        seq: i64,
        message: Message,
        size: u32,
        now: Timestamp,
        description: String,
    ) {
        self.next_seq = self.next_seq.max(seq + 1);
        // Kept in memory: it is dead-lettered before its commit (the store has no copy yet).
        self.insert_pending(seq, Arc::new(message), size, now, None, true);
        if let Some(e) = self.main.entries.get_mut(&seq) {
            e.pending = false;
        }
        self.dead_letter(
            seq,
            Some("FilterEvaluationException".into()),
            Some(description),
        );
    }

    /// Bytes held by this queue and its dead-letter sub-queue.
    pub fn size_bytes(&self) -> u64 {
        self.main.size_bytes + self.dlq.size_bytes
    }

    /// Make pending messages visible once their commit is durable. Returns true if any became
    /// available to receivers.
    pub fn commit_pending(&mut self, seqs: &[i64]) -> bool {
        let mut any = false;
        for &seq in seqs {
            if let Some(e) = self.main.entries.get_mut(&seq)
                && e.pending
            {
                e.pending = false;
                any |= e.rec.state == MessageState::Active;
                self.main.index(seq);
            }
        }
        any
    }

    /// Forget pending messages whose commit failed.
    pub fn abort_pending(&mut self, seqs: &[i64]) {
        for &seq in seqs {
            if self.main.entries.get(&seq).is_some_and(|e| e.pending) {
                self.main.remove(seq);
            }
        }
    }

    /// Take the next available message for a receiver on `sub`.
    pub fn acquire(
        &mut self,
        sub: SubQueue,
        mode: ReceiveMode,
        now: Timestamp,
    ) -> Option<Delivery> {
        let until = now.saturating_add(self.props.lock_duration_ms);
        loop {
            let seq = self.set_mut(sub).available.pop_first()?;
            match self.take(sub, seq, mode, until, now) {
                Taken::Delivered(d) => return Some(d),
                Taken::Expired => {}
                Taken::Unreadable => return None,
            }
        }
    }

    /// Hand out message `seq` (just removed from an available index): delete it
    /// (receive-and-delete) or lock it until `until`.
    fn take(
        &mut self,
        sub: SubQueue,
        seq: i64,
        mode: ReceiveMode,
        until: Timestamp,
        now: Timestamp,
    ) -> Taken {
        let expired = self
            .set(sub)
            .entries
            .get(&seq)
            .and_then(|e| e.rec.expires_at)
            .is_some_and(|t| t <= now && sub == SubQueue::Main);
        if expired {
            self.expire(seq, now);
            return Taken::Expired;
        }
        let Some(message) = self.load_body(sub, seq) else {
            self.set_mut(sub).index(seq);
            return Taken::Unreadable;
        };
        let token = self.next_token();
        self.stats.outgoing += 1;
        match mode {
            ReceiveMode::ReceiveAndDelete => {
                let Some(entry) = self.set_mut(sub).remove(seq) else {
                    return Taken::Expired;
                };
                self.ops.push(StoreOp::DeleteMessage {
                    entity: self.name.clone(),
                    sub,
                    sequence_number: seq,
                });
                Taken::Delivered(Delivery::new(&entry.rec, message, token, None))
            }
            ReceiveMode::PeekLock => {
                let set = self.set_mut(sub);
                set.unindex(seq);
                let Some(entry) = set.entries.get_mut(&seq) else {
                    return Taken::Expired;
                };
                entry.lock = Some(Box::new(Lock { token, until }));
                let delivery = Delivery::new(&entry.rec, message, token, Some(until));
                set.index(seq);
                self.locks.insert(token, (sub, seq));
                Taken::Delivered(delivery)
            }
        }
    }

    /// Find the message a live lock token names.
    fn locked(&self, token: LockToken, now: Timestamp) -> Result<(SubQueue, i64), SettleError> {
        let (sub, seq) = *self.locks.get(&token).ok_or(SettleError::LockLost)?;
        let entry = self
            .set(sub)
            .entries
            .get(&seq)
            .ok_or(SettleError::LockLost)?;
        match entry.lock.as_deref() {
            Some(l) if l.token == token && l.until > now => Ok((sub, seq)),
            _ => Err(SettleError::LockLost),
        }
    }

    /// Settle a locked message.
    pub fn settle(
        &mut self,
        token: LockToken,
        outcome: Outcome,
        now: Timestamp,
    ) -> Result<(), SettleError> {
        let (sub, seq) = match self.locked(token, now) {
            Ok(x) => x,
            Err(e) => {
                // A lock that ran out but was not swept yet: sweep it now.
                self.tick(now);
                return Err(e);
            }
        };
        self.locks.remove(&token);
        let set = self.set_mut(sub);
        set.unindex(seq);
        if let Some(e) = set.entries.get_mut(&seq) {
            e.lock = None;
        }
        match outcome {
            Outcome::Complete => {
                self.stats.completed += 1;
                self.set_mut(sub).remove(seq);
                self.ops.push(StoreOp::DeleteMessage {
                    entity: self.name.clone(),
                    sub,
                    sequence_number: seq,
                });
            }
            Outcome::Release => self.set_mut(sub).index(seq),
            Outcome::Abandon { properties } => {
                self.stats.abandoned += 1;
                self.modify(sub, seq, properties.as_deref(), None);
                self.count_attempt(sub, seq, now);
            }
            Outcome::Defer { properties } => {
                self.stats.deferred += 1;
                self.modify(
                    sub,
                    seq,
                    properties.as_deref(),
                    Some(MessageState::Deferred),
                );
                self.persist(sub, seq);
                self.set_mut(sub).index(seq);
            }
            Outcome::DeadLetter {
                reason,
                description,
                properties,
            } => {
                self.modify(sub, seq, properties.as_deref(), None);
                if sub == SubQueue::Main {
                    self.dead_letter(seq, reason, description);
                } else {
                    self.persist(sub, seq);
                    self.set_mut(sub).index(seq);
                }
            }
        }
        Ok(())
    }

    /// Extend a lock by the lock duration; returns the new expiry.
    pub fn renew_lock(
        &mut self,
        token: LockToken,
        now: Timestamp,
    ) -> Result<Timestamp, SettleError> {
        let (sub, seq) = self.locked(token, now)?;
        let until = now.saturating_add(self.props.lock_duration_ms);
        let set = self.set_mut(sub);
        set.unindex(seq);
        if let Some(e) = set.entries.get_mut(&seq)
            && let Some(l) = e.lock.as_mut()
        {
            l.until = until;
        }
        set.index(seq);
        Ok(until)
    }

    /// Apply properties-to-modify and an optional new state to a stored message.
    fn modify(
        &mut self,
        sub: SubQueue,
        seq: i64,
        properties: Option<&[(Value, Value)]>,
        state: Option<MessageState>,
    ) {
        let props = properties.filter(|p| !p.is_empty());
        if props.is_some() && self.load_body(sub, seq).is_none() {
            // Unreadable body (kept in `read_error`): the state still changes, the
            // properties cannot be applied.
        }
        let Some(e) = self.set_mut(sub).entries.get_mut(&seq) else {
            return;
        };
        if let Some(props) = props
            && let Some(m) = e.rec.message.as_mut()
        {
            e.rec.body_owner = None;
            e.body_dirty = true;
            let msg = Arc::make_mut(m);
            for (k, v) in props {
                if let Some(name) = k.as_str() {
                    set_app_property(msg, name, v.clone());
                }
            }
        }
        if let Some(s) = state {
            e.rec.state = s;
        }
    }

    /// Write a message's broker state; its body too only if it changed since it was stored.
    fn persist(&mut self, sub: SubQueue, seq: i64) {
        let name = self.name.clone();
        if let Some(e) = self.set_mut(sub).entries.get_mut(&seq) {
            let mut record = e.rec.clone();
            if !std::mem::take(&mut e.body_dirty) {
                record.message = None;
            }
            self.ops.push(StoreOp::PutMessage {
                entity: name,
                sub,
                record,
            });
        }
    }

    /// A delivery attempt ended without success (abandon or lock expiry): count it, and
    /// dead-letter the message once it reaches the max delivery count.
    fn count_attempt(&mut self, sub: SubQueue, seq: i64, _now: Timestamp) {
        let max = self.props.max_delivery_count;
        let Some(e) = self.set_mut(sub).entries.get_mut(&seq) else {
            return;
        };
        e.rec.delivery_count = e.rec.delivery_count.saturating_add(1);
        if sub == SubQueue::Main && e.rec.delivery_count >= max {
            let count = e.rec.delivery_count;
            self.dead_letter(
                seq,
                Some("MaxDeliveryCountExceeded".into()),
                Some(format!(
                    "Message could not be consumed after {count} delivery attempts."
                )),
            );
        } else {
            self.persist(sub, seq);
            self.set_mut(sub).index(seq);
        }
    }

    /// Move a message of the main set to the dead-letter sub-queue, keeping its sequence number.
    /// False if its body could not be read back (it stays where it is).
    fn dead_letter(
        &mut self,
        seq: i64,
        reason: Option<String>,
        description: Option<String>,
    ) -> bool {
        // The dead-letter record is written whole, under another key: it needs the body.
        if self.load_body(SubQueue::Main, seq).is_none() {
            return false;
        }
        let Some(mut entry) = self.main.remove(seq) else {
            return false;
        };
        let reason = reason.filter(|r| !r.is_empty());
        let description = description.filter(|d| !d.is_empty());
        if (reason.is_some() || description.is_some())
            && let Some(m) = entry.rec.message.as_mut()
        {
            entry.rec.body_owner = None;
            let msg = Arc::make_mut(m);
            if let Some(r) = reason {
                set_app_property(msg, "DeadLetterReason", Value::String(r));
            }
            if let Some(d) = description {
                set_app_property(msg, "DeadLetterErrorDescription", Value::String(d));
            }
        }
        entry.rec.state = MessageState::Active;
        entry.rec.expires_at = None;
        entry.rec.scheduled_time = None;
        entry.lock = None;
        self.stats.dead_lettered += 1;
        self.ops.push(StoreOp::DeleteMessage {
            entity: self.name.clone(),
            sub: SubQueue::Main,
            sequence_number: seq,
        });
        self.ops.push(StoreOp::PutMessage {
            entity: self.name.clone(),
            sub: SubQueue::DeadLetter,
            record: entry.rec.clone(),
        });
        self.dlq.insert(entry);
        true
    }

    /// A message of the main set outlived its TTL. It leaves the expiry index even if its body
    /// cannot be read back for the dead-letter sub-queue (then a receiver's take retries).
    fn expire(&mut self, seq: i64, _now: Timestamp) {
        self.stats.expired += 1;
        if self.props.dead_lettering_on_message_expiration {
            let moved = self.dead_letter(
                seq,
                Some("TTLExpiredException".into()),
                Some("The message expired and was dead lettered.".into()),
            );
            if !moved {
                self.main.expiry.retain(|(_, s)| *s != seq);
            }
        } else if self.main.remove(seq).is_some() {
            self.ops.push(StoreOp::DeleteMessage {
                entity: self.name.clone(),
                sub: SubQueue::Main,
                sequence_number: seq,
            });
        }
    }

    /// Process everything due at `now`: lock expiries, scheduled messages, TTL, duplicate
    /// history. Returns true if messages became available.
    pub fn tick(&mut self, now: Timestamp) -> bool {
        let mut woke = self.expire_session_locks(now);
        for sub in [SubQueue::Main, SubQueue::DeadLetter] {
            while let Some(&(t, seq)) = self.set(sub).lock_expiry.first() {
                if t > now {
                    break;
                }
                let set = self.set_mut(sub);
                set.unindex(seq);
                let token = set
                    .entries
                    .get_mut(&seq)
                    .and_then(|e| e.lock.take())
                    .map(|l| l.token);
                set.lock_expiry.remove(&(t, seq));
                if let Some(token) = token {
                    self.locks.remove(&token);
                }
                self.count_attempt(sub, seq, now);
                woke = true;
            }
        }
        while let Some(&(t, seq)) = self.main.scheduled.first() {
            if t > now {
                break;
            }
            self.main.unindex(seq);
            let ttl = self
                .main
                .entries
                .get(&seq)
                .and_then(|e| self.ttl_ms(e.rec.summary.ttl_ms.map(i64::from)));
            if let Some(e) = self.main.entries.get_mut(&seq) {
                e.rec.state = MessageState::Active;
                e.rec.enqueued_time = t;
                e.rec.expires_at = ttl.map(|ttl| t.saturating_add(ttl));
            }
            self.persist(SubQueue::Main, seq);
            self.main.index(seq);
            woke = true;
        }
        while let Some(&(t, seq)) = self.main.expiry.first() {
            if t > now {
                break;
            }
            self.expire(seq, now);
        }
        if self.props.requires_duplicate_detection {
            self.prune_duplicates(now);
        }
        woke
    }

    /// `peek-message`: up to `count` messages with sequence number ≥ `from`, without locks,
    /// including deferred and scheduled ones.
    /// With `session`, only that session's messages.
    pub fn peek(
        &self,
        sub: SubQueue,
        from: i64,
        count: usize,
        session: Option<&str>,
        now: Timestamp,
    ) -> Result<Vec<Bytes>, StoreError> {
        let set = self.set(sub);
        set.entries
            .range_from(from)
            .filter(|(_, e)| !e.pending)
            .filter(|(_, e)| session.is_none_or(|s| e.session_id() == Some(s)))
            .filter(|(_, e)| sub != SubQueue::Main || e.rec.expires_at.is_none_or(|t| t > now))
            .take(count)
            .map(|(_, e)| {
                // A transfer lock (forever) is not a client's lock: show none.
                let until = e
                    .lock
                    .as_deref()
                    .map(|l| l.until)
                    .filter(|t| *t != Timestamp::MAX);
                let message = set.read(&self.name, sub, e)?;
                Ok(encode_delivery(&e.rec, &message, until))
            })
            .collect()
    }

    /// `receive-by-sequence-number`: deferred messages only (of `session`, if given). All or
    /// nothing.
    pub fn receive_deferred(
        &mut self,
        sub: SubQueue,
        seqs: &[i64],
        mode: ReceiveMode,
        session: Option<&str>,
        now: Timestamp,
    ) -> Result<Vec<Delivery>, ManagementError> {
        for &seq in seqs {
            let ok = self.set(sub).entries.get(&seq).is_some_and(|e| {
                !e.pending
                    && e.lock.is_none()
                    && e.rec.state == MessageState::Deferred
                    && session.is_none_or(|s| e.session_id() == Some(s))
            });
            if !ok {
                return Err(ManagementError::MessageNotFound(seq));
            }
        }
        let mut bodies = Vec::with_capacity(seqs.len());
        for &seq in seqs {
            let body = self.load_body(sub, seq);
            match (body, self.read_error.take()) {
                (Some(m), _) => bodies.push(m),
                (None, Some(e)) => return Err(ManagementError::Store(e.to_string())),
                (None, None) => return Err(ManagementError::MessageNotFound(seq)),
            }
        }
        let mut out = Vec::with_capacity(seqs.len());
        for (&seq, message) in seqs.iter().zip(bodies) {
            let token = self.next_token();
            self.stats.outgoing += 1;
            match mode {
                ReceiveMode::ReceiveAndDelete => {
                    if let Some(e) = self.set_mut(sub).remove(seq) {
                        self.ops.push(StoreOp::DeleteMessage {
                            entity: self.name.clone(),
                            sub,
                            sequence_number: seq,
                        });
                        out.push(Delivery::new(&e.rec, message, token, None));
                    }
                }
                ReceiveMode::PeekLock => {
                    let until = now.saturating_add(self.props.lock_duration_ms);
                    let set = self.set_mut(sub);
                    set.unindex(seq);
                    if let Some(e) = set.entries.get_mut(&seq) {
                        e.lock = Some(Box::new(Lock { token, until }));
                        out.push(Delivery::new(&e.rec, message, token, Some(until)));
                    }
                    set.index(seq);
                    self.locks.insert(token, (sub, seq));
                }
            }
        }
        Ok(out)
    }

    /// `cancel-scheduled-message`: unknown or no longer scheduled numbers are ignored.
    pub fn cancel_scheduled(&mut self, seqs: &[i64]) {
        for &seq in seqs {
            let scheduled = self
                .main
                .entries
                .get(&seq)
                .is_some_and(|e| e.rec.state == MessageState::Scheduled);
            if scheduled {
                self.main.remove(seq);
                self.ops.push(StoreOp::DeleteMessage {
                    entity: self.name.clone(),
                    sub: SubQueue::Main,
                    sequence_number: seq,
                });
            }
        }
    }

    /// Whether `token` still locks a message at `now` (so settling it would succeed).
    pub fn holds_lock(&self, token: LockToken, now: Timestamp) -> bool {
        self.locked(token, now).is_ok()
    }

    /// Whether a lock token is live on this queue.
    pub fn owns_lock(&self, token: LockToken) -> bool {
        self.locks.contains_key(&token)
    }

    /// Drop every message (entity deletion).
    pub fn purge(&mut self) {
        self.main = MessageSet::new(
            &self.bodies,
            self.props.requires_session,
            self.props.forward_to.is_some(),
        );
        self.dlq = MessageSet::new(
            &self.bodies,
            false,
            self.props.forward_dead_lettered_messages_to.is_some(),
        );
        self.locks.clear();
        self.sessions = sessions::Sessions::default();
    }
}

/// Check each message against the message size limit and the batch against the entity's
/// size quota (`used` bytes already held).
pub fn check_sizes(
    entity: &str,
    msgs: &[IncomingMessage],
    max_message_size: u64,
    used: u64,
    max_size_bytes: u64,
) -> Result<(), SendError> {
    let mut total = 0u64;
    for m in msgs {
        let size = u64::from(m.size);
        if size > max_message_size {
            return Err(SendError::MessageSizeExceeded {
                size,
                limit: max_message_size,
            });
        }
        total += size;
    }
    if used + total > max_size_bytes {
        return Err(SendError::QuotaExceeded {
            entity: entity.to_string(),
            size: used,
            limit: max_size_bytes,
        });
    }
    Ok(())
}

/// Remove what the broker owns from an incoming message: delivery annotations and the
/// broker's `x-opt-*` message annotations (§5.1).
pub fn strip_broker_annotations(message: &mut Message) {
    message.delivery_annotations = None;
    if let Some(ann) = message.message_annotations.as_mut() {
        ann.retain(|(k, _)| !k.as_str().is_some_and(|k| BROKER_ANNOTATIONS.contains(&k)));
    }
}

/// The duplicate-detection key of a message: its message id as text.
pub fn message_id_key(msg: &Message) -> Option<String> {
    let id = msg.properties.as_ref()?.message_id.as_ref()?;
    Some(match id {
        Value::String(s) => format!("s:{s}"),
        Value::Symbol(s) => format!("s:{}", s.as_str()),
        Value::Ulong(n) => format!("n:{n}"),
        Value::Uuid(u) => format!("u:{u:02x?}"),
        Value::Binary(b) => format!("b:{b:02x?}"),
        other => format!("o:{other:?}"),
    })
}

pub fn group_id(msg: &Message) -> Option<&str> {
    msg.properties.as_ref()?.group_id.as_deref()
}

pub fn scheduled_time(msg: &Message) -> Option<Timestamp> {
    let ann = msg.message_annotations.as_ref()?;
    match keybus_amqp::map_get(ann, "x-opt-scheduled-enqueue-time")? {
        Value::Timestamp(t) | Value::Long(t) => Some(*t),
        _ => None,
    }
}

fn set_app_property(msg: &mut Message, name: &str, value: Value) {
    let props = msg.application_properties.get_or_insert_with(Vec::new);
    if let Some(slot) = props.iter_mut().find(|(k, _)| k.as_str() == Some(name)) {
        slot.1 = value;
    } else {
        props.push((Value::String(name.to_string()), value));
    }
}
