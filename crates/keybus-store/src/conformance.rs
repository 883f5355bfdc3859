//! The conformance suite every [`Store`] backend must pass.
//!
//! Each case takes a fresh, empty store and returns `Err(description)` on a violation, so the
//! suite runs from any test harness. [`conformance_tests!`](crate::conformance_tests) turns it
//! into one `#[test]` per case; [`run_all`] runs every case in turn. Durable backends also run
//! [`reopen_keeps_everything`] and the crash test ([`crash_child`] + [`crash_verify`]).

use std::future::Future;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use keybus_amqp::Message;
use keybus_core::{
    EntityDefinition, EntityKind, EntitySnapshot, LoadOptions, MessageRecord, MessageState,
    MessageSummary, QueueProperties, SessionRecord, Store, StoreError, StoreOp, SubQueue,
};

/// Result of one conformance case.
pub type CaseResult = Result<(), String>;

/// One named case.
pub type Case = (&'static str, fn(&dyn Store) -> CaseResult);

/// Every backend-independent case.
pub const CASES: &[Case] = &[
    (
        "messages_load_in_sequence_order",
        messages_load_in_sequence_order,
    ),
    ("records_round_trip", records_round_trip),
    ("overwrite_replaces", overwrite_replaces),
    ("delete_message", delete_message),
    ("sequence_only_rises", sequence_only_rises),
    ("entities_put_list_delete", entities_put_list_delete),
    (
        "delete_entity_removes_only_its_data",
        delete_entity_removes_only_its_data,
    ),
    ("delete_entity_within_a_batch", delete_entity_within_a_batch),
    ("batch_applies_ops_in_order", batch_applies_ops_in_order),
    (
        "transfer_dead_letter_is_dead_letter",
        transfer_dead_letter_is_dead_letter,
    ),
    ("empty_commit_resolves", empty_commit_resolves),
    (
        "commits_apply_in_submission_order",
        commits_apply_in_submission_order,
    ),
    (
        "concurrent_commits_all_durable",
        concurrent_commits_all_durable,
    ),
    ("session_states", session_states),
    ("shared_bodies", shared_bodies),
    ("put_without_body_keeps_it", put_without_body_keeps_it),
    ("read_message_reads_bodies", read_message_reads_bodies),
    ("load_bounds_bodies", load_bounds_bodies),
];

/// Run every case of [`CASES`] against a fresh store from `make`; all failures are reported.
pub fn run_all<S: Store>(make: impl Fn() -> S) -> CaseResult {
    let mut failures = Vec::new();
    for (name, case) in CASES {
        let store = make();
        if let Err(e) = case(&store) {
            failures.push(format!("{name}: {e}"));
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

/// One `#[test]` per conformance case, each on a fresh store from `$make`.
///
/// ```text
/// mod mem { keybus_store::conformance_tests!(keybus_store::MemStore::new()); }
/// ```
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@case $make;
            messages_load_in_sequence_order, records_round_trip, overwrite_replaces,
            delete_message, sequence_only_rises, entities_put_list_delete,
            delete_entity_removes_only_its_data, delete_entity_within_a_batch,
            batch_applies_ops_in_order, transfer_dead_letter_is_dead_letter,
            empty_commit_resolves, commits_apply_in_submission_order,
            concurrent_commits_all_durable, session_states, shared_bodies);
    };
    (@case $make:expr; $($name:ident),*) => {
        $(
            #[test]
            fn $name() {
                let store = $make;
                if let Err(e) = $crate::conformance::$name(&store) {
                    panic!("{}: {}", stringify!($name), e);
                }
            }
        )*
    };
}

// ---------------------------------------------------------------------------------------------
// Helpers

struct ThreadWaker(std::thread::Thread);

impl Wake for ThreadWaker {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
}

/// Drive a future to completion on this thread (no runtime needed).
pub fn block_on<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::thread::park();
    }
}

/// Commit and wait.
pub fn commit(store: &dyn Store, ops: Vec<StoreOp>) -> Result<(), String> {
    block_on(store.commit(ops)).map_err(|e| format!("commit failed: {e}"))
}

/// An AMQP message with one data section of `len` bytes, derived from `tag`.
pub fn test_message(tag: i64, len: usize) -> Result<Message, String> {
    let mut raw = Vec::with_capacity(len + 8);
    // described type: descriptor smallulong 0x75 (data section), value vbin32.
    raw.extend_from_slice(&[0x00, 0x53, 0x75, 0xb0]);
    raw.extend_from_slice(&(len as u32).to_be_bytes());
    let seed = tag.to_be_bytes();
    raw.extend((0..len).map(|i| seed[i % 8] ^ (i as u8)));
    Message::decode(&Bytes::from(raw)).map_err(|e| format!("building a test message: {e}"))
}

/// A 1 KB record with sequence number `seq`; `tag` varies the payload and delivery count.
pub fn record(seq: i64, tag: u32) -> Result<MessageRecord, String> {
    Ok(with_message(
        MessageRecord {
            sequence_number: seq,
            enqueued_time: 1_700_000_000_000 + seq,
            state: MessageState::Active,
            delivery_count: tag,
            scheduled_time: None,
            expires_at: None,
            message: None,
            summary: MessageSummary::default(),
            size: 1024 + 8,
            body_owner: None,
        },
        test_message(seq ^ i64::from(tag), 1024)?,
    ))
}

/// `record` holding `message`, with its summary.
pub fn with_message(mut record: MessageRecord, message: Message) -> MessageRecord {
    record.summary = MessageSummary::of(&message);
    record.message = Some(Arc::new(message));
    record
}

pub fn queue(name: &str) -> EntityDefinition {
    EntityDefinition {
        name: name.into(),
        kind: EntityKind::Queue(QueueProperties::default()),
    }
}

pub fn put(entity: &str, sub: SubQueue, record: MessageRecord) -> StoreOp {
    StoreOp::PutMessage {
        entity: entity.into(),
        sub,
        record,
    }
}

pub fn del(entity: &str, sub: SubQueue, sequence_number: i64) -> StoreOp {
    StoreOp::DeleteMessage {
        entity: entity.into(),
        sub,
        sequence_number,
    }
}

pub fn seq(entity: &str, next: i64) -> StoreOp {
    StoreOp::PutSequence {
        entity: entity.into(),
        next,
    }
}

fn seqs(records: &[MessageRecord]) -> Vec<i64> {
    records.iter().map(|r| r.sequence_number).collect()
}

fn load(store: &dyn Store, entity: &str) -> Result<EntitySnapshot, String> {
    store
        .load_entity(entity, LoadOptions::ALL_BODIES)
        .map_err(|e| format!("load_entity({entity}) failed: {e}"))
}

fn names(store: &dyn Store) -> Result<Vec<String>, String> {
    let mut v: Vec<String> = store
        .list_entities()
        .map_err(|e| format!("list_entities failed: {e}"))?
        .into_iter()
        .map(|d| d.name)
        .collect();
    v.sort();
    Ok(v)
}

fn expect_eq<T: PartialEq + std::fmt::Debug>(what: &str, got: T, want: T) -> CaseResult {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: got {got:?}, want {want:?}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Cases

pub fn messages_load_in_sequence_order(store: &dyn Store) -> CaseResult {
    let q = "orders";
    let mut ops = Vec::new();
    for s in [5, 1, 300, 3, 256, 2] {
        ops.push(put(q, SubQueue::Main, record(s, 0)?));
    }
    for s in [9, 4, 7] {
        ops.push(put(q, SubQueue::DeadLetter, record(s, 0)?));
    }
    commit(store, ops)?;
    commit(
        store,
        vec![put(q, SubQueue::Main, record(4_000_000_000, 0)?)],
    )?;
    let snap = load(store, q)?;
    expect_eq(
        "main",
        seqs(&snap.main),
        vec![1, 2, 3, 5, 256, 300, 4_000_000_000],
    )?;
    expect_eq("dead-letter", seqs(&snap.dead_letter), vec![4, 7, 9])?;
    let other = load(store, "unknown")?;
    expect_eq(
        "unknown entity",
        (other.next_sequence, other.main.len()),
        (0, 0),
    )
}

pub fn records_round_trip(store: &dyn Store) -> CaseResult {
    let q = "roundtrip";
    let mut a = record(1, 3)?;
    a.state = MessageState::Scheduled;
    a.scheduled_time = Some(1_800_000_000_000);
    a.expires_at = Some(-1);
    a.size = 77;
    let mut b = record(2, 0)?;
    b.state = MessageState::Deferred;
    b.expires_at = Some(i64::MAX);
    let b = with_message(b, test_message(2, 0)?);
    let c = record(3, u32::MAX)?;
    let mut c = with_message(c, test_message(3, 200_000)?);
    c.size = 200_008;
    commit(
        store,
        vec![
            put(q, SubQueue::Main, a.clone()),
            put(q, SubQueue::Main, b.clone()),
            put(q, SubQueue::DeadLetter, c.clone()),
        ],
    )?;
    let snap = load(store, q)?;
    if snap.main != vec![a, b] {
        return Err("main records differ after a round trip".into());
    }
    if snap.dead_letter != vec![c] {
        return Err("dead-letter record differs after a round trip".into());
    }
    Ok(())
}

pub fn overwrite_replaces(store: &dyn Store) -> CaseResult {
    let q = "overwrite";
    commit(
        store,
        vec![
            put(q, SubQueue::Main, record(1, 0)?),
            put(q, SubQueue::Main, record(2, 0)?),
        ],
    )?;
    let mut updated = record(1, 5)?;
    updated.state = MessageState::Deferred;
    commit(store, vec![put(q, SubQueue::Main, updated.clone())])?;
    let snap = load(store, q)?;
    expect_eq("main", seqs(&snap.main), vec![1, 2])?;
    if snap.main.first() != Some(&updated) {
        return Err("overwritten record does not match the second put".into());
    }
    Ok(())
}

pub fn delete_message(store: &dyn Store) -> CaseResult {
    let q = "delete";
    commit(
        store,
        vec![
            put(q, SubQueue::Main, record(1, 0)?),
            put(q, SubQueue::Main, record(2, 0)?),
            put(q, SubQueue::DeadLetter, record(2, 0)?),
        ],
    )?;
    commit(
        store,
        vec![
            del(q, SubQueue::Main, 2),
            del(q, SubQueue::Main, 99),
            del("none", SubQueue::Main, 1),
        ],
    )?;
    let snap = load(store, q)?;
    expect_eq("main", seqs(&snap.main), vec![1])?;
    expect_eq(
        "dead-letter (same seq, other sub-queue)",
        seqs(&snap.dead_letter),
        vec![2],
    )?;
    commit(
        store,
        vec![del(q, SubQueue::DeadLetter, 2), del(q, SubQueue::Main, 1)],
    )?;
    let snap = load(store, q)?;
    expect_eq(
        "all deleted",
        (snap.main.len(), snap.dead_letter.len()),
        (0, 0),
    )
}

pub fn sequence_only_rises(store: &dyn Store) -> CaseResult {
    let q = "seq";
    commit(store, vec![seq(q, 10)])?;
    expect_eq("after 10", load(store, q)?.next_sequence, 10)?;
    commit(store, vec![seq(q, 5)])?;
    expect_eq("after lower 5", load(store, q)?.next_sequence, 10)?;
    commit(store, vec![seq(q, 20)])?;
    expect_eq("after 20", load(store, q)?.next_sequence, 20)?;
    commit(store, vec![seq(q, 30), seq(q, 25)])?;
    expect_eq(
        "after 30 then 25 in one batch",
        load(store, q)?.next_sequence,
        30,
    )?;
    commit(store, vec![seq("other", 3)])?;
    expect_eq("other entity", load(store, "other")?.next_sequence, 3)?;
    expect_eq("first entity unchanged", load(store, q)?.next_sequence, 30)
}

pub fn entities_put_list_delete(store: &dyn Store) -> CaseResult {
    expect_eq("empty", names(store)?, Vec::<String>::new())?;
    commit(
        store,
        vec![
            StoreOp::PutEntity(queue("Orders")),
            StoreOp::PutEntity(queue("a/b")),
        ],
    )?;
    expect_eq(
        "two",
        names(store)?,
        vec!["Orders".to_string(), "a/b".to_string()],
    )?;
    // Replacing keeps one definition per lower-case key.
    let mut changed = queue("ORDERS");
    #[allow(irrefutable_let_patterns)] // more entity kinds will come
    if let EntityKind::Queue(p) = &mut changed.kind {
        p.max_delivery_count = 3;
    }
    commit(store, vec![StoreOp::PutEntity(changed.clone())])?;
    let defs = store.list_entities().map_err(|e| e.to_string())?;
    expect_eq("count after replace", defs.len(), 2)?;
    if !defs.contains(&changed) {
        return Err("replaced definition not listed".into());
    }
    commit(
        store,
        vec![StoreOp::DeleteEntity {
            entity: "orders".into(),
        }],
    )?;
    expect_eq("after delete", names(store)?, vec!["a/b".to_string()])
}

pub fn delete_entity_removes_only_its_data(store: &dyn Store) -> CaseResult {
    let mut ops = Vec::new();
    for q in ["q", "q/a", "qa"] {
        ops.push(StoreOp::PutEntity(queue(q)));
        ops.push(seq(q, 4));
        for s in 1..=3 {
            ops.push(put(q, SubQueue::Main, record(s, 0)?));
        }
        ops.push(put(q, SubQueue::DeadLetter, record(9, 0)?));
    }
    commit(store, ops)?;
    commit(store, vec![StoreOp::DeleteEntity { entity: "q".into() }])?;
    let gone = load(store, "q")?;
    expect_eq(
        "deleted entity",
        (gone.next_sequence, gone.main.len(), gone.dead_letter.len()),
        (0, 0, 0),
    )?;
    for q in ["q/a", "qa"] {
        let snap = load(store, q)?;
        expect_eq(
            q,
            (
                snap.next_sequence,
                seqs(&snap.main),
                seqs(&snap.dead_letter),
            ),
            (4, vec![1, 2, 3], vec![9]),
        )?;
    }
    expect_eq(
        "definitions",
        names(store)?,
        vec!["q/a".to_string(), "qa".to_string()],
    )?;
    // The entity can be created again from scratch; its counter starts over.
    commit(store, vec![StoreOp::PutEntity(queue("q")), seq("q", 2)])?;
    expect_eq("recreated counter", load(store, "q")?.next_sequence, 2)
}

pub fn delete_entity_within_a_batch(store: &dyn Store) -> CaseResult {
    let q = "inbatch";
    commit(store, vec![put(q, SubQueue::Main, record(1, 0)?)])?;
    // Put then delete in one batch: nothing remains, including the put of this batch.
    commit(
        store,
        vec![
            StoreOp::PutEntity(queue(q)),
            put(q, SubQueue::Main, record(2, 0)?),
            seq(q, 3),
            StoreOp::DeleteEntity { entity: q.into() },
        ],
    )?;
    let snap = load(store, q)?;
    expect_eq(
        "after put+delete",
        (snap.next_sequence, snap.main.len()),
        (0, 0),
    )?;
    expect_eq("definitions", names(store)?, Vec::<String>::new())?;
    // Delete then put in one batch: the later puts survive.
    commit(store, vec![put(q, SubQueue::Main, record(5, 0)?)])?;
    commit(
        store,
        vec![
            StoreOp::DeleteEntity { entity: q.into() },
            StoreOp::PutEntity(queue(q)),
            put(q, SubQueue::Main, record(6, 0)?),
            seq(q, 7),
        ],
    )?;
    let snap = load(store, q)?;
    expect_eq(
        "after delete+put",
        (snap.next_sequence, seqs(&snap.main)),
        (7, vec![6]),
    )?;
    expect_eq("definitions", names(store)?, vec![q.to_string()])
}

pub fn batch_applies_ops_in_order(store: &dyn Store) -> CaseResult {
    let q = "order";
    commit(
        store,
        vec![
            put(q, SubQueue::Main, record(1, 0)?),
            del(q, SubQueue::Main, 1),
            put(q, SubQueue::Main, record(2, 0)?),
            put(q, SubQueue::Main, record(2, 7)?),
            del(q, SubQueue::Main, 3),
            put(q, SubQueue::Main, record(3, 0)?),
        ],
    )?;
    let snap = load(store, q)?;
    expect_eq("main", seqs(&snap.main), vec![2, 3])?;
    expect_eq(
        "last put wins",
        snap.main.first().map(|r| r.delivery_count),
        Some(7),
    )
}

pub fn transfer_dead_letter_is_dead_letter(store: &dyn Store) -> CaseResult {
    let q = "tdlq";
    commit(
        store,
        vec![
            put(q, SubQueue::TransferDeadLetter, record(1, 0)?),
            put(q, SubQueue::DeadLetter, record(2, 0)?),
        ],
    )?;
    expect_eq(
        "dead-letter",
        seqs(&load(store, q)?.dead_letter),
        vec![1, 2],
    )?;
    commit(
        store,
        vec![
            del(q, SubQueue::DeadLetter, 1),
            del(q, SubQueue::TransferDeadLetter, 2),
        ],
    )?;
    expect_eq("after deletes", load(store, q)?.dead_letter.len(), 0)
}

pub fn empty_commit_resolves(store: &dyn Store) -> CaseResult {
    commit(store, Vec::new())?;
    expect_eq("healthy", store.healthy(), true)
}

pub fn commits_apply_in_submission_order(store: &dyn Store) -> CaseResult {
    let q = "fifo";
    // Submit everything first, then wait: later batches must land after earlier ones.
    let mut pending = Vec::new();
    for i in 0..300u32 {
        let mut ops = vec![
            put(q, SubQueue::Main, record(1, i)?),
            seq(q, i64::from(i) + 2),
        ];
        if i % 2 == 0 {
            ops.push(put(q, SubQueue::Main, record(2, i)?));
        } else {
            ops.push(del(q, SubQueue::Main, 2));
        }
        pending.push(store.commit(ops));
    }
    for (i, f) in pending.into_iter().enumerate() {
        block_on(f).map_err(|e| format!("commit {i} failed: {e}"))?;
    }
    let snap = load(store, q)?;
    expect_eq("next", snap.next_sequence, 301)?;
    expect_eq("main (last batch deleted 2)", seqs(&snap.main), vec![1])?;
    expect_eq(
        "last write wins",
        snap.main.first().map(|r| r.delivery_count),
        Some(299),
    )
}

pub fn concurrent_commits_all_durable(store: &dyn Store) -> CaseResult {
    const THREADS: i64 = 8;
    const PER_THREAD: i64 = 150;
    let results: Vec<CaseResult> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                s.spawn(move || -> CaseResult {
                    let q = format!("c{t}");
                    for i in 1..=PER_THREAD {
                        let mut ops = vec![put(&q, SubQueue::Main, record(i, 0)?), seq(&q, i + 1)];
                        if i > 10 {
                            ops.push(del(&q, SubQueue::Main, i - 10));
                        }
                        commit(store, ops)?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err("committer thread panicked".into()))
            })
            .collect()
    });
    for r in results {
        r?;
    }
    for t in 0..THREADS {
        let q = format!("c{t}");
        let snap = load(store, &q)?;
        expect_eq(
            &q,
            (snap.next_sequence, seqs(&snap.main)),
            (PER_THREAD + 1, (PER_THREAD - 9..=PER_THREAD).collect()),
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Durable backends

/// Data written through one instance is all there after dropping it and opening another.
/// Subscription records that refer to their topic's body load with the body's message; the
/// topic lists its bodies; deleting the topic removes them.
pub fn shared_bodies(store: &dyn Store) -> CaseResult {
    let body = record(5, 0)?;
    let mut shared = body.clone();
    shared.body_owner = Some(Arc::from("t"));
    let mut dlq = shared.clone();
    dlq.delivery_count = 3;
    commit(
        store,
        vec![
            StoreOp::PutEntity(queue("t")),
            StoreOp::PutBody {
                entity: "t".into(),
                sequence_number: 5,
                message: body_of(&body)?,
            },
            StoreOp::PutBody {
                entity: "t".into(),
                sequence_number: 6,
                message: body_of(&body)?,
            },
            put("t/subscriptions/a", SubQueue::Main, shared.clone()),
            put("t/subscriptions/b", SubQueue::DeadLetter, dlq),
        ],
    )?;
    let a = load(store, "t/subscriptions/a")?;
    expect_eq("shared record", a.main, vec![shared])?;
    let b = load(store, "t/subscriptions/b")?;
    expect_eq(
        "message of a dead-lettered reference",
        b.dead_letter[0].message.clone(),
        body.message.clone(),
    )?;
    expect_eq("bodies", load(store, "t")?.bodies, vec![5, 6])?;
    commit(
        store,
        vec![StoreOp::DeleteBody {
            entity: "t".into(),
            sequence_number: 6,
        }],
    )?;
    expect_eq("bodies after delete", load(store, "t")?.bodies, vec![5])?;
    commit(store, vec![StoreOp::DeleteEntity { entity: "t".into() }])?;
    expect_eq(
        "bodies of a deleted topic",
        load(store, "t")?.bodies,
        Vec::<i64>::new(),
    )
}

fn session(entity: &str, id: &str, state: &[u8], updated: i64) -> StoreOp {
    StoreOp::PutSessionState {
        entity: entity.into(),
        record: SessionRecord {
            session_id: id.into(),
            state: Bytes::copy_from_slice(state),
            updated,
        },
    }
}

/// Session states: set, replaced, cleared by an empty state, kept per entity, and removed
/// with their entity (also when set earlier in the same batch).
pub fn session_states(store: &dyn Store) -> CaseResult {
    commit(
        store,
        vec![
            StoreOp::PutEntity(queue("s")),
            StoreOp::PutEntity(queue("s2")),
            session("s", "b", b"two", 2),
            session("s", "a", b"one", 1),
            session("s", "c", b"gone", 1),
            session("s2", "a", b"other", 5),
        ],
    )?;
    commit(
        store,
        vec![session("s", "a", b"uno", 3), session("s", "c", b"", 4)],
    )?;
    let got: Vec<(String, Vec<u8>, i64)> = load(store, "s")?
        .sessions
        .into_iter()
        .map(|r| (r.session_id, r.state.to_vec(), r.updated))
        .collect();
    expect_eq(
        "session states",
        got,
        vec![
            ("a".to_string(), b"uno".to_vec(), 3),
            ("b".to_string(), b"two".to_vec(), 2),
        ],
    )?;
    commit(
        store,
        vec![
            session("s", "d", b"new", 6),
            StoreOp::DeleteEntity { entity: "s".into() },
        ],
    )?;
    expect_eq(
        "deleted entity's sessions",
        load(store, "s")?.sessions.len(),
        0,
    )?;
    expect_eq(
        "other entity's sessions",
        load(store, "s2")?.sessions.len(),
        1,
    )
}

pub fn reopen_keeps_everything<S: Store>(open: impl Fn() -> Result<S, StoreError>) -> CaseResult {
    let open = || open().map_err(|e| format!("open failed: {e}"));
    let mut big = record(7, 1)?;
    big = with_message(big, test_message(7, 300_000)?);
    big.size = 300_008;
    big.scheduled_time = Some(42);
    {
        let store = open()?;
        let mut ops = vec![
            StoreOp::PutEntity(queue("Keep")),
            StoreOp::PutEntity(queue("drop")),
        ];
        for s in 1..=50 {
            ops.push(put("keep", SubQueue::Main, record(s, 0)?));
            ops.push(put("drop", SubQueue::Main, record(s, 0)?));
        }
        ops.push(put("keep", SubQueue::DeadLetter, big.clone()));
        ops.push(seq("keep", 51));
        commit(&store, ops)?;
        commit(
            &store,
            vec![del("keep", SubQueue::Main, 1), seq("keep", 40)],
        )?;
        // Several ops on one key in one batch: the last one wins, also after recovery.
        commit(
            &store,
            vec![
                put("keep", SubQueue::Main, record(70, 0)?),
                del("keep", SubQueue::Main, 70),
                put("keep", SubQueue::Main, record(71, 0)?),
                put("keep", SubQueue::Main, record(71, 9)?),
            ],
        )?;
        // Submitted but not awaited: dropping the store must still write it.
        drop(store.commit(vec![StoreOp::DeleteEntity {
            entity: "drop".into(),
        }]));
        let f = store.commit(vec![
            put("keep", SubQueue::Main, record(60, 0)?),
            seq("keep", 61),
        ]);
        drop(store);
        block_on(f).map_err(|e| format!("commit pending at close failed: {e}"))?;
    }
    for round in 0..2 {
        let store = open()?;
        expect_eq(
            &format!("definitions (round {round})"),
            names(&store)?,
            vec!["Keep".to_string()],
        )?;
        let snap = load(&store, "keep")?;
        let mut want: Vec<i64> = (2..=50).collect();
        want.extend([60, 71]);
        expect_eq("main", seqs(&snap.main), want)?;
        expect_eq(
            "last put wins",
            snap.main.last().map(|r| r.delivery_count),
            Some(9),
        )?;
        expect_eq("next", snap.next_sequence, 61)?;
        if snap.dead_letter != vec![big.clone()] {
            return Err("large dead-letter record differs after reopen".into());
        }
        let dropped = load(&store, "drop")?;
        expect_eq("deleted entity", dropped.main.len(), 0)?;
        // Sequence cache must come back from disk: a lower value does not lower it.
        commit(&store, vec![seq("keep", 10)])?;
    }
    Ok(())
}

const CRASH_ENTITY: &str = "crash";
const CRASH_WINDOW: i64 = 5;

/// The child side of the crash test: commit batch after batch (batch `i` puts message `i`,
/// raises the counter to `i + 1` and deletes message `i - 5`), keeping up to 16 in flight,
/// and append `i` to `ack` once batch `i` resolved. Runs until killed, or stops on its own
/// after `limit`.
pub fn crash_child(store: &dyn Store, ack: &Path, limit: Duration) -> CaseResult {
    let mut ack = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(ack)
        .map_err(|e| format!("opening ack file: {e}"))?;
    let start = Instant::now();
    let mut in_flight = std::collections::VecDeque::new();
    let mut i: i64 = 0;
    while start.elapsed() < limit {
        i += 1;
        let mut ops = vec![
            put(CRASH_ENTITY, SubQueue::Main, record(i, 0)?),
            seq(CRASH_ENTITY, i + 1),
        ];
        if i > CRASH_WINDOW {
            ops.push(del(CRASH_ENTITY, SubQueue::Main, i - CRASH_WINDOW));
        }
        in_flight.push_back((i, store.commit(ops)));
        if in_flight.len() >= 16
            && let Some((n, f)) = in_flight.pop_front()
        {
            block_on(f).map_err(|e| format!("commit {n} failed: {e}"))?;
            // One write per acknowledged batch; the kernel keeps it across SIGKILL.
            writeln!(ack, "{n}").map_err(|e| format!("writing ack: {e}"))?;
        }
    }
    Ok(())
}

/// The parent side: after the child was killed, the store holds exactly the state after some
/// batch `L` (atomic batches, applied in order) with `L` at least the last acknowledged batch.
/// Returns (last acknowledged, last applied).
pub fn crash_verify(store: &dyn Store, ack: &Path) -> Result<(i64, i64), String> {
    let acked = std::fs::read_to_string(ack).map_err(|e| format!("reading ack file: {e}"))?;
    let last_acked = acked
        .lines()
        .filter_map(|l| l.trim().parse::<i64>().ok())
        .max()
        .unwrap_or(0);
    let snap = load(store, CRASH_ENTITY)?;
    let applied = snap.next_sequence - 1;
    if applied < last_acked {
        return Err(format!(
            "batch {last_acked} was acknowledged but only {applied} survived"
        ));
    }
    let want: Vec<i64> = ((applied - CRASH_WINDOW + 1).max(1)..=applied).collect();
    expect_eq(
        &format!("messages after batch {applied}"),
        seqs(&snap.main),
        want,
    )?;
    for r in &snap.main {
        let fresh = record(r.sequence_number, 0)?;
        if *r != fresh {
            return Err(format!(
                "message {} differs from what was written",
                r.sequence_number
            ));
        }
    }
    Ok((last_acked, applied))
}

fn body_of(record: &MessageRecord) -> Result<Arc<Message>, String> {
    record
        .message
        .clone()
        .ok_or_else(|| "test record has no body".to_string())
}

/// A record put without its body (`message: None`) replaces the stored broker state and keeps
/// the stored body, whether that was committed before or put earlier in the same batch.
pub fn put_without_body_keeps_it(store: &dyn Store) -> CaseResult {
    let q = "meta";
    let first = record(1, 0)?;
    commit(store, vec![put(q, SubQueue::Main, first.clone())])?;
    let mut update = first.clone();
    update.message = None;
    update.delivery_count = 4;
    update.state = MessageState::Deferred;
    let second = record(2, 0)?;
    let mut second_update = second.clone();
    second_update.message = None;
    second_update.delivery_count = 9;
    commit(
        store,
        vec![
            put(q, SubQueue::Main, update.clone()),
            put(q, SubQueue::Main, second.clone()),
            put(q, SubQueue::Main, second_update.clone()),
        ],
    )?;
    let snap = load(store, q)?;
    let mut want_first = update;
    want_first.message = first.message;
    let mut want_second = second_update;
    want_second.message = second.message;
    expect_eq("records", snap.main, vec![want_first, want_second])?;
    // Nothing to update once the record is gone.
    let mut gone = record(3, 0)?;
    gone.message = None;
    commit(store, vec![put(q, SubQueue::Main, gone)])?;
    expect_eq(
        "after a put of a missing record",
        seqs(&load(store, q)?.main),
        vec![1, 2],
    )
}

/// `read_message` returns a record's own body, or its topic's; a missing message is an error.
pub fn read_message_reads_bodies(store: &dyn Store) -> CaseResult {
    let own = record(1, 0)?;
    let topic_body = record(2, 7)?;
    let mut shared = topic_body.clone();
    shared.body_owner = Some(Arc::from("rt"));
    shared.message = None;
    commit(
        store,
        vec![
            put("rq", SubQueue::DeadLetter, own.clone()),
            StoreOp::PutBody {
                entity: "rt".into(),
                sequence_number: 2,
                message: body_of(&topic_body)?,
            },
            put("rt/subscriptions/s", SubQueue::Main, shared),
        ],
    )?;
    let read = |entity: &str, sub: SubQueue, seq: i64| {
        store
            .read_message(entity, sub, seq)
            .map_err(|e| format!("read_message({entity}, {seq}) failed: {e}"))
    };
    expect_eq(
        "own body",
        read("rq", SubQueue::DeadLetter, 1)?,
        body_of(&own)?,
    )?;
    expect_eq(
        "topic body",
        read("rt/subscriptions/s", SubQueue::Main, 2)?,
        body_of(&topic_body)?,
    )?;
    match store.read_message("rq", SubQueue::Main, 1) {
        Err(StoreError::Corrupt(_)) => Ok(()),
        other => Err(format!("reading a missing message: {other:?}")),
    }
}

/// `load_entity` returns bodies in sequence order up to the budget and the rest without; every
/// record keeps its summary, and duplicate-detection keys come only when asked for.
pub fn load_bounds_bodies(store: &dyn Store) -> CaseResult {
    let q = "deep";
    let mut ops = Vec::new();
    let mut want = Vec::new();
    for s in 1..=6 {
        let mut m = test_message(s, 1024)?;
        m.properties = Some(keybus_amqp::Properties {
            message_id: Some(keybus_amqp::Value::String(format!("id-{s}"))),
            group_id: Some(format!("session-{s}")),
            ..Default::default()
        });
        let r = with_message(record(s, 0)?, m);
        ops.push(put(q, SubQueue::Main, r.clone()));
        want.push(r);
    }
    commit(store, ops)?;
    let size = u64::from(want[0].size);
    let since = want[4].enqueued_time;
    let snap = store
        .load_entity(
            q,
            LoadOptions {
                max_body_bytes: 3 * size + size / 2,
                message_ids_since: Some(since),
            },
        )
        .map_err(|e| format!("load_entity failed: {e}"))?;
    let with_body: Vec<bool> = snap.main.iter().map(|r| r.message.is_some()).collect();
    expect_eq(
        "bodies loaded",
        with_body,
        vec![true, true, true, false, false, false],
    )?;
    for (got, want) in snap.main.iter().zip(&want) {
        expect_eq(
            "session of the summary",
            got.summary.session_id.as_deref(),
            want.summary.session_id.as_deref(),
        )?;
    }
    let ids: Vec<(i64, String)> = want
        .iter()
        .filter(|r| r.enqueued_time >= since)
        .map(|r| (r.enqueued_time, format!("s:id-{}", r.sequence_number)))
        .collect();
    expect_eq("duplicate-detection keys", snap.message_ids, ids)?;
    Ok(())
}
