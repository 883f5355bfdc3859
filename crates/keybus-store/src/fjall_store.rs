//! The embedded durable store on fjall (an LSM-tree with a write-ahead journal).
//!
//! One writer thread owns all writes. `commit` queues the batch on a channel without waiting
//! (it runs on async workers, under an entity's lock, so it must never block); the writer
//! takes everything queued (up to [`FjallOptions::max_group_ops`] /
//! [`FjallOptions::max_group_bytes`]), writes it as ONE fjall write batch (one journal record,
//! atomic across keyspaces), makes the journal durable with ONE `fdatasync`, and then resolves
//! every waiting future.
//!
//! A failed write or sync poisons the store: the failed batches, and every batch submitted
//! while poisoned, fail (with [`StoreError::Full`] when the cause is a full disk) and are kept
//! in order in a backlog. Every [`FjallOptions::retry_interval`] the writer drops the failed
//! database, re-opens it (fjall's journal recovery truncates a torn tail), writes the backlog
//! in order and syncs it; once that succeeds the store is healthy again. The backlog makes the
//! disk catch up with what the broker already applied in memory (completes, expiries, lock
//! and delivery updates), so no later batch is written on top of a state that lacks an
//! earlier one. The broker refuses sends and settlements while the store is unhealthy, so the
//! backlog holds only the batches in flight at the failure and housekeeping.
//!
//! The queue has no bound of its own: a bounded queue could only block the submitting thread
//! or fail a batch whose effects the broker has already applied in memory. What bounds it is
//! the broker's admission (`[limits] max_store_backlog`: past it new sends are refused as
//! server-busy), and the work that still commits while busy (settlements, expiries,
//! forwarding) is bounded by the messages the entities hold.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use keybus_amqp::Message;
use keybus_core::{
    CommitFuture, EntityDefinition, EntitySnapshot, LoadOptions, MessageSource, Store, StoreError,
    StoreOp, SubQueue,
};
use tokio::sync::oneshot;

use crate::codec::{self, FORMAT_VERSION, FORMAT_VERSION_KEY};

/// fjall refuses (panics on) a smaller journal limit.
const MIN_JOURNAL_BYTES: u64 = 64 * 1024 * 1024;

/// Tuning of the writer.
#[derive(Debug, Clone)]
pub struct FjallOptions {
    /// A group commit stops taking queued batches once it holds this many ops.
    pub max_group_ops: usize,
    /// ... or this many (approximate) bytes of message payload.
    pub max_group_bytes: usize,
    /// fjall's block cache, in bytes.
    pub cache_bytes: u64,
    /// Bytes each keyspace's memtable holds before it is flushed to disk. fjall's default is
    /// 64 MiB per keyspace (six here): under a steady load the resident set then climbs for
    /// many minutes before it levels off; 8 MiB keeps it flat and small.
    pub memtable_bytes: u64,
    /// Journal bytes kept before memtables are flushed so that older journal files can go
    /// (at least 64 MiB, fjall's minimum); bounds the journal's disk and the replay after a
    /// crash.
    pub journal_bytes: u64,
    /// While the store refuses writes after a failure, the writer tries to re-open it this
    /// often (see the module documentation).
    pub retry_interval: Duration,
    /// Memtable bytes not yet flushed to disk tables above which the writer waits for fjall's
    /// flushes before it takes the next group. fjall itself does not bound them: a stream of
    /// large messages faster than its flush workers piled up gigabytes of sealed memtables.
    /// While the writer waits, commits queue up and the broker answers server-busy.
    pub max_unflushed_bytes: u64,
    /// After the disk filled up, the re-open waits until the file system has this much space
    /// available (at most a tenth of its size), so that it does not flap between full and
    /// healthy with every few bytes freed.
    pub min_free_bytes: u64,
}

impl Default for FjallOptions {
    fn default() -> Self {
        Self {
            max_group_ops: 4096,
            max_group_bytes: 4 * 1024 * 1024,
            cache_bytes: 16 * 1024 * 1024,
            memtable_bytes: 8 * 1024 * 1024,
            journal_bytes: 128 * 1024 * 1024,
            retry_interval: Duration::from_secs(1),
            max_unflushed_bytes: 64 * 1024 * 1024,
            min_free_bytes: 64 * 1024 * 1024,
        }
    }
}

fn io(context: &str, e: impl std::error::Error + 'static) -> StoreError {
    if is_full(&e) {
        StoreError::Full(format!("{context}: {e}"))
    } else {
        StoreError::Io(format!("{context}: {e}"))
    }
}

/// Whether an error (or one of its sources) is "no space left on device" or a quota.
fn is_full(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(err) = current {
        if let Some(io) = err.downcast_ref::<std::io::Error>()
            && (matches!(
                io.kind(),
                std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
            ) || io.raw_os_error() == Some(28))
        {
            return true;
        }
        current = err.source();
    }
    false
}

fn corrupt(context: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(context.to_string())
}

/// Handles to the database and its keyspaces (cheap to clone).
#[derive(Clone)]
struct Tables {
    db: Database,
    meta: Keyspace,
    entities: Keyspace,
    sequences: Keyspace,
    messages: Keyspace,
    sessions: Keyspace,
    bodies: Keyspace,
}

impl Tables {
    fn open(dir: &Path, options: &FjallOptions) -> Result<Self, StoreError> {
        let ctx = |what: &str| format!("opening store at {}: {what}", dir.display());
        let db = Database::builder(dir)
            .manual_journal_persist(true)
            .cache_size(options.cache_bytes)
            .max_journaling_size(options.journal_bytes.max(MIN_JOURNAL_BYTES))
            .open()
            .map_err(|e| io(&ctx("database"), e))?;
        let ks = |name: &str| {
            db.keyspace(name, || {
                KeyspaceCreateOptions::default().max_memtable_size(options.memtable_bytes)
            })
            .map_err(|e| io(&ctx(name), e))
        };
        let tables = Tables {
            meta: ks("meta")?,
            entities: ks("entities")?,
            sequences: ks("sequences")?,
            messages: ks("messages")?,
            sessions: ks("sessions")?,
            bodies: ks("bodies")?,
            db: db.clone(),
        };
        tables.check_format(dir)?;
        Ok(tables)
    }

    /// Write the format version into a new store; refuse a store of another version.
    fn check_format(&self, dir: &Path) -> Result<(), StoreError> {
        let stored = self
            .meta
            .get(FORMAT_VERSION_KEY)
            .map_err(|e| io("reading format version", e))?;
        match stored {
            Some(v) => {
                let bytes: [u8; 4] = v[..].try_into().map_err(|_| {
                    corrupt(format!(
                        "store at {} has a malformed format version ({} bytes)",
                        dir.display(),
                        v.len()
                    ))
                })?;
                let version = u32::from_be_bytes(bytes);
                if version != FORMAT_VERSION {
                    return Err(corrupt(format!(
                        "store at {} has on-disk format version {version}, but this build of \
                         keybus reads only version {FORMAT_VERSION}; use a matching keybus \
                         release or migrate the data",
                        dir.display()
                    )));
                }
                Ok(())
            }
            None => {
                let empty = |k: &Keyspace| k.iter().next().is_none();
                if !(empty(&self.entities) && empty(&self.sequences) && empty(&self.messages)) {
                    return Err(corrupt(format!(
                        "store at {} holds data but no format version",
                        dir.display()
                    )));
                }
                let mut batch = self.db.batch();
                batch.insert(&self.meta, FORMAT_VERSION_KEY, FORMAT_VERSION.to_be_bytes());
                batch
                    .commit()
                    .map_err(|e| io("writing format version", e))?;
                self.db
                    .persist(PersistMode::SyncAll)
                    .map_err(|e| io("syncing format version", e))
            }
        }
    }
}

/// One submitted batch and the future waiting for it.
struct Request {
    ops: Vec<StoreOp>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// State shared by the store handle and its writer thread.
struct Shared {
    /// The open database, for reads; `None` while the writer re-opens it.
    tables: Mutex<Option<Tables>>,
    poisoned: AtomicBool,
    /// Why writes are refused (set with `poisoned`).
    cause: Mutex<Option<StoreError>>,
    fail_next: AtomicBool,
    /// Held by the writer around each group commit; a test holds it to stall the writer.
    stall: Mutex<()>,
}

impl Shared {
    fn cause(&self) -> StoreError {
        self.cause
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or(StoreError::Poisoned)
    }
}

/// The embedded durable [`Store`], backed by fjall in one directory.
pub struct FjallStore {
    shared: Arc<Shared>,
    dir: PathBuf,
    queue: Option<Sender<Request>>,
    writer: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for FjallStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FjallStore")
            .field("dir", &self.dir)
            .field("healthy", &self.healthy())
            .finish_non_exhaustive()
    }
}

impl FjallStore {
    /// Open (or create) the store in `dir` with default options.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_with(dir, FjallOptions::default())
    }

    /// Open (or create) the store in `dir`.
    pub fn open_with(dir: &Path, options: FjallOptions) -> Result<Self, StoreError> {
        create_private_dir(dir)?;
        let tables = Tables::open(dir, &options)?;
        let sequences = load_sequences(&tables)?;
        let shared = Arc::new(Shared {
            tables: Mutex::new(Some(tables.clone())),
            poisoned: AtomicBool::new(false),
            cause: Mutex::new(None),
            fail_next: AtomicBool::new(false),
            stall: Mutex::new(()),
        });
        let (tx, rx) = std::sync::mpsc::channel();
        let writer = Writer {
            tables: Some(tables),
            dir: dir.to_path_buf(),
            rx,
            shared: shared.clone(),
            sequences,
            max_ops: options.max_group_ops.max(1),
            max_bytes: options.max_group_bytes.max(1),
            key: Vec::with_capacity(300),
            value: BytesMut::with_capacity(64 * 1024),
            backlog: Vec::new(),
            next_attempt: Instant::now(),
            options,
        };
        let handle = std::thread::Builder::new()
            .name("keybus-store-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| io("spawning the writer thread", e))?;
        Ok(Self {
            shared,
            dir: dir.to_path_buf(),
            queue: Some(tx),
            writer: Some(handle),
        })
    }

    /// Fault injection for tests: the next group commit fails as if the journal write had
    /// failed, which poisons the store.
    #[doc(hidden)]
    pub fn fail_next_write_for_tests(&self) {
        self.shared.fail_next.store(true, Ordering::Release);
    }

    /// Fault injection for tests: the writer stalls before its next group commit until the
    /// returned guard is dropped (a store that cannot keep up).
    #[doc(hidden)]
    pub fn stall_writer_for_tests(&self) -> std::sync::MutexGuard<'_, ()> {
        self.shared.stall.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The directory this store lives in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn tables(&self) -> Result<Tables, StoreError> {
        self.shared
            .tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| self.shared.cause())
    }
}

/// Create `dir` (and its parents) readable by the owner only; tighten an existing `dir`.
fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| io(&format!("creating {}", dir.display()), e))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| io(&format!("restricting {} to its owner", dir.display()), e))
}

fn ready(result: Result<(), StoreError>) -> CommitFuture {
    Box::pin(std::future::ready(result))
}

impl Store for FjallStore {
    fn commit(&self, ops: Vec<StoreOp>) -> CommitFuture {
        // While poisoned the batch still goes to the writer, which keeps it (in order) for
        // the re-open and fails it at once.
        let Some(queue) = &self.queue else {
            return ready(Err(StoreError::Closed));
        };
        let (done, wait) = oneshot::channel();
        let request = Request { ops, done };
        // Enqueue synchronously, without waiting, so batches apply in the order of `commit`
        // calls and no async worker ever blocks here.
        if queue.send(request).is_err() {
            return ready(Err(StoreError::Closed));
        }
        Box::pin(async move { wait.await.unwrap_or(Err(StoreError::Closed)) })
    }

    fn list_entities(&self) -> Result<Vec<EntityDefinition>, StoreError> {
        let tables = self.tables()?;
        let mut out = Vec::new();
        for item in tables.entities.iter() {
            let (key, value) = item.into_inner().map_err(|e| io("reading entities", e))?;
            let def: EntityDefinition = serde_json::from_slice(&value).map_err(|e| {
                corrupt(format!(
                    "entity definition '{}': {e}",
                    String::from_utf8_lossy(&key)
                ))
            })?;
            out.push(def);
        }
        Ok(out)
    }

    fn load_entity(
        &self,
        entity: &str,
        options: LoadOptions,
    ) -> Result<EntitySnapshot, StoreError> {
        let tables = self.tables()?;
        let mut budget = options.max_body_bytes;
        let mut snap = EntitySnapshot::default();
        if let Some(v) = tables
            .sequences
            .get(entity)
            .map_err(|e| io("reading sequence number", e))?
        {
            snap.next_sequence = decode_sequence(entity, &v)?;
        }
        let mut prefix = Vec::new();
        codec::entity_prefix(&mut prefix, entity);
        let mut bodies: HashMap<(Arc<str>, i64), Arc<Message>> = HashMap::new();
        let mut key_buf = Vec::new();
        for item in tables.messages.prefix(&prefix) {
            let (key, value) = item
                .into_inner()
                .map_err(|e| io(&format!("reading messages of '{entity}'"), e))?;
            let (sub, seq) = codec::parse_message_key_suffix(&key[prefix.len()..])
                .map_err(|e| corrupt(format!("message key of '{entity}': {e}")))?;
            // Bodies in sequence order until the budget is spent (the head of the queue).
            let keep_body = budget >= u64::from(codec::record_size(&value));
            let main = sub == codec::sub_byte(SubQueue::Main);
            let with_id = main && options.message_ids_since.is_some();
            let (mut rec, id) = codec::decode_record(&value, keep_body, with_id)
                .map_err(|e| corrupt(format!("message {seq} of '{entity}': {e}")))?;
            if keep_body {
                budget -= u64::from(rec.size);
            }
            if let (Some(id), Some(since)) = (id, options.message_ids_since)
                && rec.enqueued_time >= since
            {
                snap.message_ids.push((rec.enqueued_time, id));
            }
            if rec.sequence_number != seq {
                return Err(corrupt(format!(
                    "message stored under sequence number {seq} of '{entity}' carries {}",
                    rec.sequence_number
                )));
            }
            if let Some(owner) = rec.body_owner.clone() {
                let cache_key = (owner.clone(), seq);
                let message = match bodies.get(&cache_key) {
                    Some(m) => m.clone(),
                    None => {
                        codec::body_key(&mut key_buf, &owner, seq);
                        let bytes = tables
                            .bodies
                            .get(&key_buf)
                            .map_err(|e| io("reading a message body", e))?
                            .ok_or_else(|| {
                                corrupt(format!(
                                    "message {seq} of '{entity}' refers to a missing body of '{owner}'"
                                ))
                            })?;
                        let m = codec::decode_body(&bytes)
                            .map_err(|e| corrupt(format!("body {seq} of '{owner}': {e}")))?;
                        if keep_body {
                            bodies.insert(cache_key, m.clone());
                        }
                        m
                    }
                };
                if main
                    && options
                        .message_ids_since
                        .is_some_and(|since| rec.enqueued_time >= since)
                    && let Some(id) = keybus_core::queue::message_id_key(&message)
                {
                    snap.message_ids.push((rec.enqueued_time, id));
                }
                rec.summary = keybus_core::MessageSummary::of(&message);
                rec.message = keep_body.then_some(message);
            }
            if sub == codec::sub_byte(SubQueue::Main) {
                snap.main.push(rec);
            } else if sub == codec::sub_byte(SubQueue::DeadLetter) {
                snap.dead_letter.push(rec);
            } else {
                return Err(corrupt(format!(
                    "message {seq} of '{entity}' has sub-queue {sub}"
                )));
            }
        }
        for item in tables.bodies.prefix(&prefix) {
            let key = item
                .key()
                .map_err(|e| io(&format!("reading bodies of '{entity}'"), e))?;
            let seq = codec::parse_body_key_suffix(&key[prefix.len()..])
                .map_err(|e| corrupt(format!("body key of '{entity}': {e}")))?;
            snap.bodies.push(seq);
        }
        for item in tables.sessions.prefix(&prefix) {
            let (key, value) = item
                .into_inner()
                .map_err(|e| io(&format!("reading sessions of '{entity}'"), e))?;
            let record = codec::decode_session(&key[prefix.len()..], &value)
                .map_err(|e| corrupt(format!("session state of '{entity}': {e}")))?;
            snap.sessions.push(record);
        }
        Ok(snap)
    }

    fn healthy(&self) -> bool {
        !self.shared.poisoned.load(Ordering::Acquire)
    }

    fn status(&self) -> Result<(), StoreError> {
        if self.healthy() {
            Ok(())
        } else {
            Err(self.shared.cause())
        }
    }
}

impl MessageSource for FjallStore {
    fn read_message(
        &self,
        entity: &str,
        sub: SubQueue,
        seq: i64,
    ) -> Result<Arc<Message>, StoreError> {
        let tables = self.tables()?;
        let mut key = Vec::new();
        codec::message_key(&mut key, entity, sub, seq);
        let value = tables
            .messages
            .get(&key)
            .map_err(|e| io(&format!("reading message {seq} of '{entity}'"), e))?
            .ok_or_else(|| corrupt(format!("message {seq} of '{entity}' is not in the store")))?;
        if let Some(owner) = codec::record_owner(&value) {
            codec::body_key(&mut key, owner, seq);
            let bytes = tables
                .bodies
                .get(&key)
                .map_err(|e| io("reading a message body", e))?
                .ok_or_else(|| {
                    corrupt(format!(
                        "message {seq} of '{entity}' refers to a missing body of '{owner}'"
                    ))
                })?;
            return codec::decode_body(&bytes)
                .map_err(|e| corrupt(format!("body {seq} of '{owner}': {e}")));
        }
        codec::record_message(&value)
            .map_err(|e| corrupt(format!("message {seq} of '{entity}': {e}")))?
            .ok_or_else(|| corrupt(format!("message {seq} of '{entity}' has no body")))
    }
}

impl Drop for FjallStore {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued and exit; fjall syncs its
        // journal when the last database handle goes.
        self.queue.take();
        if let Some(handle) = self.writer.take() {
            let _ = handle.join();
        }
    }
}

fn decode_sequence(entity: &str, v: &[u8]) -> Result<i64, StoreError> {
    let bytes: [u8; 8] = v.try_into().map_err(|_| {
        corrupt(format!(
            "sequence number of '{entity}' has {} bytes, expected 8",
            v.len()
        ))
    })?;
    Ok(i64::from_be_bytes(bytes))
}

fn load_sequences(tables: &Tables) -> Result<HashMap<String, i64>, StoreError> {
    let mut out = HashMap::new();
    for item in tables.sequences.iter() {
        let (key, value) = item
            .into_inner()
            .map_err(|e| io("reading sequence numbers", e))?;
        let entity = String::from_utf8(key.to_vec())
            .map_err(|_| corrupt("sequence number key is not UTF-8"))?;
        let next = decode_sequence(&entity, &value)?;
        out.insert(entity, next);
    }
    Ok(out)
}

/// The writer thread's state.
struct Writer {
    /// The open database; `None` after a failure until it is re-opened.
    tables: Option<Tables>,
    dir: PathBuf,
    options: FjallOptions,
    rx: Receiver<Request>,
    shared: Arc<Shared>,
    /// Stored high-water marks, so `PutSequence` needs no read to only ever raise them.
    sequences: HashMap<String, i64>,
    max_ops: usize,
    max_bytes: usize,
    /// Reused key and value buffers.
    key: Vec<u8>,
    value: BytesMut,
    /// Batches that failed or came while poisoned, in order: written first on re-open.
    backlog: Vec<Vec<StoreOp>>,
    /// When to try the next re-open while poisoned.
    next_attempt: Instant,
}

fn approx_bytes(ops: &[StoreOp]) -> usize {
    ops.iter()
        .map(|op| match op {
            StoreOp::PutMessage { record, .. } if record.body_owner.is_none() => {
                record.size as usize + 64
            }
            StoreOp::PutBody { message, .. } => message.encoded_size() + 64,
            _ => 64,
        })
        .sum()
}

impl Writer {
    fn poisoned(&self) -> bool {
        self.shared.poisoned.load(Ordering::Acquire)
    }

    fn run(mut self) {
        let mut group: Vec<Request> = Vec::new();
        loop {
            // `recv` fails once every sender is gone and the queue is drained.
            let first = if self.poisoned() {
                let wait = self.next_attempt.saturating_duration_since(Instant::now());
                match self.rx.recv_timeout(wait) {
                    Ok(first) => Some(first),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match self.rx.recv() {
                    Ok(first) => Some(first),
                    Err(_) => break,
                }
            };
            if self.poisoned() && Instant::now() >= self.next_attempt {
                self.try_reopen();
            }
            let Some(first) = first else { continue };
            let stall = Arc::clone(&self.shared);
            let _stalled = stall.stall.lock().unwrap_or_else(|p| p.into_inner());
            let mut ops = first.ops.len();
            let mut bytes = approx_bytes(&first.ops);
            group.push(first);
            while ops < self.max_ops && bytes < self.max_bytes {
                match self.rx.try_recv() {
                    Ok(next) => {
                        ops += next.ops.len();
                        bytes += approx_bytes(&next.ops);
                        group.push(next);
                    }
                    Err(_) => break,
                }
            }
            let batches: Vec<Vec<StoreOp>> = group
                .iter_mut()
                .map(|r| std::mem::take(&mut r.ops))
                .collect();
            let result = if self.poisoned() {
                self.backlog.extend(batches);
                Err(self.shared.cause())
            } else {
                let r = self.write_batches(&batches);
                if let Err(e) = &r {
                    self.backlog.extend(batches);
                    self.poison(e.clone());
                }
                r
            };
            for request in group.drain(..) {
                // The waiter may have gone away; the batch is written regardless.
                let _ = request.done.send(result.clone());
            }
            self.wait_for_flushes();
        }
    }

    /// Hold the next group while more than `max_unflushed_bytes` of memtables wait for
    /// fjall's flush workers (see [`FjallOptions::max_unflushed_bytes`]).
    fn wait_for_flushes(&self) {
        let Some(tables) = &self.tables else {
            return;
        };
        while tables.db.write_buffer_size() > self.options.max_unflushed_bytes {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Refuse writes from now on, with `cause`, until a re-open succeeds.
    fn poison(&mut self, cause: StoreError) {
        tracing::error!(
            store = %self.dir.display(),
            %cause,
            retry_ms = self.options.retry_interval.as_millis() as u64,
            "store write failed: writes are refused until the store can be re-opened"
        );
        *self.shared.cause.lock().unwrap_or_else(|p| p.into_inner()) = Some(cause);
        self.shared.poisoned.store(true, Ordering::Release);
        self.next_attempt = Instant::now() + self.options.retry_interval;
    }

    /// Drop the failed database, open it again, write the backlog and sync it; on success
    /// the store is healthy again.
    fn try_reopen(&mut self) {
        self.next_attempt = Instant::now() + self.options.retry_interval;
        if matches!(self.shared.cause(), StoreError::Full(_)) && !self.space_is_back() {
            return;
        }
        // Every handle of the failed database must go (it holds the directory's lock).
        self.tables = None;
        *self.shared.tables.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let reopened = Tables::open(&self.dir, &self.options).and_then(|t| {
            let sequences = load_sequences(&t)?;
            Ok((t, sequences))
        });
        let (tables, sequences) = match reopened {
            Ok(x) => x,
            Err(e) => return self.still_failing(e),
        };
        self.tables = Some(tables.clone());
        self.sequences = sequences;
        let backlog = std::mem::take(&mut self.backlog);
        let written = if backlog.is_empty() {
            // Prove that a write and a sync succeed before accepting work again.
            let mut batch = tables.db.batch();
            batch.insert(
                &tables.meta,
                FORMAT_VERSION_KEY,
                FORMAT_VERSION.to_be_bytes(),
            );
            batch
                .commit()
                .map_err(|e| io("writing to the journal", e))
                .and_then(|()| {
                    tables
                        .db
                        .persist(PersistMode::SyncData)
                        .map_err(|e| io("syncing the journal", e))
                })
        } else {
            backlog
                .chunks(64)
                .try_for_each(|chunk| self.write_batches(chunk))
        };
        if let Err(e) = written {
            self.backlog = backlog;
            self.tables = None;
            return self.still_failing(e);
        }
        *self.shared.tables.lock().unwrap_or_else(|p| p.into_inner()) = Some(tables);
        *self.shared.cause.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.shared.poisoned.store(false, Ordering::Release);
        tracing::warn!(
            store = %self.dir.display(),
            replayed = backlog.len(),
            "store re-opened after a write failure: writes are accepted again"
        );
    }

    /// Whether the store's file system has `min_free_bytes` available (or a tenth of its
    /// size, if that is less). Unknown counts as yes: the re-open itself is the real test.
    fn space_is_back(&self) -> bool {
        match rustix::fs::statvfs(&self.dir) {
            Ok(v) => {
                let available = v.f_bavail.saturating_mul(v.f_frsize);
                let total = v.f_blocks.saturating_mul(v.f_frsize);
                available >= self.options.min_free_bytes.min(total / 10)
            }
            Err(_) => true,
        }
    }

    fn still_failing(&mut self, e: StoreError) {
        tracing::debug!(store = %self.dir.display(), error = %e, "store re-open failed; will retry");
        // A more precise cause (the disk is full) replaces a generic one.
        let mut cause = self.shared.cause.lock().unwrap_or_else(|p| p.into_inner());
        if matches!(e, StoreError::Full(_)) || cause.is_none() {
            *cause = Some(e);
        }
    }

    /// Write the batches as one atomic fjall batch and sync it.
    fn write_batches(&mut self, group: &[Vec<StoreOp>]) -> Result<(), StoreError> {
        let Some(tables) = &self.tables else {
            return Err(StoreError::Poisoned);
        };
        let Tables {
            db,
            entities,
            sequences,
            messages,
            sessions,
            bodies,
            ..
        } = tables;
        let total: usize = group.iter().map(|r| r.len()).sum();
        let mut batch = fjall::OwnedWriteBatch::with_capacity(db.clone(), total);
        for (ri, request) in group.iter().enumerate() {
            for (oi, op) in request.iter().enumerate() {
                match op {
                    StoreOp::PutEntity(def) => {
                        let json = serde_json::to_vec(def)
                            .map_err(|e| io(&format!("encoding entity '{}'", def.name), e))?;
                        batch.insert(entities, def.key().as_bytes(), json);
                    }
                    StoreOp::DeleteEntity { entity } => {
                        batch.remove(entities, entity.as_bytes());
                        batch.remove(sequences, entity.as_bytes());
                        self.sequences.remove(&**entity);
                        // Messages already in the database...
                        codec::entity_prefix(&mut self.key, entity);
                        for item in messages.prefix(&self.key) {
                            let key = item.key().map_err(|e| io("scanning messages", e))?;
                            batch.remove(messages, key);
                        }
                        for item in sessions.prefix(&self.key) {
                            let key = item.key().map_err(|e| io("scanning sessions", e))?;
                            batch.remove(sessions, key);
                        }
                        for item in bodies.prefix(&self.key) {
                            let key = item.key().map_err(|e| io("scanning bodies", e))?;
                            batch.remove(bodies, key);
                        }
                        // ...and those put earlier in this group, not yet applied. A later
                        // op on the same key in one batch wins.
                        let earlier = group[..ri]
                            .iter()
                            .flat_map(|r| r.iter())
                            .chain(request[..oi].iter());
                        for op in earlier {
                            if let StoreOp::PutMessage {
                                entity: e,
                                sub,
                                record,
                            } = op
                                && e == entity
                            {
                                codec::message_key(&mut self.key, e, *sub, record.sequence_number);
                                batch.remove(messages, self.key.as_slice());
                            }
                            if let StoreOp::PutBody {
                                entity: e,
                                sequence_number,
                                ..
                            } = op
                                && e == entity
                            {
                                codec::body_key(&mut self.key, e, *sequence_number);
                                batch.remove(bodies, self.key.as_slice());
                            }
                            if let StoreOp::PutSessionState { entity: e, record } = op
                                && e == entity
                            {
                                codec::session_key(&mut self.key, e, &record.session_id);
                                batch.remove(sessions, self.key.as_slice());
                            }
                        }
                    }
                    StoreOp::PutSequence { entity, next } => {
                        let raise = match self.sequences.get_mut(&**entity) {
                            Some(stored) if *stored >= *next => false,
                            Some(stored) => {
                                *stored = *next;
                                true
                            }
                            None => {
                                self.sequences.insert(entity.to_string(), *next);
                                true
                            }
                        };
                        if raise {
                            batch.insert(sequences, entity.as_bytes(), next.to_be_bytes());
                        }
                    }
                    StoreOp::PutMessage {
                        entity,
                        sub,
                        record,
                    } => {
                        codec::message_key(&mut self.key, entity, *sub, record.sequence_number);
                        if codec::encode_record(&mut self.value, record).is_none() {
                            // No body: keep the one stored under this key, or put earlier in
                            // this group (not yet applied).
                            let earlier = group[..ri]
                                .iter()
                                .flat_map(|r| r.iter())
                                .chain(request[..oi].iter())
                                .rev()
                                .find_map(|op| match op {
                                    StoreOp::PutMessage {
                                        entity: e,
                                        sub: s,
                                        record: r,
                                    } if e == entity
                                        && codec::sub_byte(*s) == codec::sub_byte(*sub)
                                        && r.sequence_number == record.sequence_number
                                        && (r.message.is_some() || r.body_owner.is_some()) =>
                                    {
                                        Some(r)
                                    }
                                    _ => None,
                                });
                            let stored = match earlier {
                                Some(r) => {
                                    let mut v = BytesMut::new();
                                    codec::encode_record(&mut v, r);
                                    Some(v.to_vec())
                                }
                                None => messages
                                    .get(self.key.as_slice())
                                    .map_err(|e| io("reading a stored message", e))?
                                    .map(|v| v.to_vec()),
                            };
                            // A record that is gone (deleted before) has nothing to update.
                            let Some(stored) = stored else {
                                continue;
                            };
                            codec::encode_record_over(&mut self.value, record, &stored)
                                .map_err(corrupt)?;
                        }
                        batch.insert(messages, self.key.as_slice(), &self.value[..]);
                    }
                    StoreOp::DeleteMessage {
                        entity,
                        sub,
                        sequence_number,
                    } => {
                        codec::message_key(&mut self.key, entity, *sub, *sequence_number);
                        batch.remove(messages, self.key.as_slice());
                    }
                    StoreOp::PutBody {
                        entity,
                        sequence_number,
                        message,
                    } => {
                        codec::body_key(&mut self.key, entity, *sequence_number);
                        self.value.clear();
                        message.encode(&mut self.value);
                        batch.insert(bodies, self.key.as_slice(), &self.value[..]);
                    }
                    StoreOp::DeleteBody {
                        entity,
                        sequence_number,
                    } => {
                        codec::body_key(&mut self.key, entity, *sequence_number);
                        batch.remove(bodies, self.key.as_slice());
                    }
                    StoreOp::PutSessionState { entity, record } => {
                        codec::session_key(&mut self.key, entity, &record.session_id);
                        if record.state.is_empty() {
                            batch.remove(sessions, self.key.as_slice());
                        } else {
                            let mut v = Vec::with_capacity(8 + record.state.len());
                            v.extend_from_slice(&record.updated.to_be_bytes());
                            v.extend_from_slice(&record.state);
                            batch.insert(sessions, self.key.as_slice(), v);
                        }
                    }
                }
            }
        }
        if batch.is_empty() {
            return Ok(());
        }
        if self.shared.fail_next.swap(false, Ordering::AcqRel) {
            return Err(StoreError::Io("injected write failure".into()));
        }
        batch
            .commit()
            .map_err(|e| io("writing to the journal", e))?;
        db.persist(PersistMode::SyncData)
            .map_err(|e| io("syncing the journal", e))
    }
}
