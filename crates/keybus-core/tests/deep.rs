#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Deep queues: a queue whose bodies do not fit the body window keeps them in the store and
//! reads them back. The store here is a map fed with the queue's own ops.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use keybus_amqp::{Header, Message, Properties, Value};
use keybus_core::{
    Bodies, BodyWindow, Clock, EntitySnapshot, IncomingMessage, ManualClock, MessageSource,
    Outcome, Queue, QueueProperties, ReceiveMode, StoreError, StoreOp, SubQueue,
};

/// Records by (sub-queue byte, sequence number), as a store would keep them.
#[derive(Default)]
struct MapStore {
    records: Mutex<BTreeMap<(u8, i64), keybus_core::MessageRecord>>,
    reads: Mutex<usize>,
}

fn sub_byte(sub: SubQueue) -> u8 {
    u8::from(sub != SubQueue::Main)
}

impl MapStore {
    fn apply(&self, ops: Vec<StoreOp>) {
        let mut records = self.records.lock().unwrap();
        for op in ops {
            match op {
                StoreOp::PutMessage {
                    sub, mut record, ..
                } => {
                    let key = (sub_byte(sub), record.sequence_number);
                    if record.message.is_none() {
                        record.message = records[&key].message.clone();
                    }
                    records.insert(key, record);
                }
                StoreOp::DeleteMessage {
                    sub,
                    sequence_number,
                    ..
                } => {
                    records.remove(&(sub_byte(sub), sequence_number));
                }
                _ => {}
            }
        }
    }

    fn snapshot(&self) -> EntitySnapshot {
        let records = self.records.lock().unwrap();
        let mut snap = EntitySnapshot::default();
        for ((sub, _), r) in records.iter() {
            let mut r = r.clone();
            r.message = None;
            if *sub == 0 {
                snap.main.push(r);
            } else {
                snap.dead_letter.push(r);
            }
        }
        snap
    }

    fn reads(&self) -> usize {
        *self.reads.lock().unwrap()
    }
}

impl MessageSource for MapStore {
    fn read_message(
        &self,
        _entity: &str,
        sub: SubQueue,
        seq: i64,
    ) -> Result<Arc<Message>, StoreError> {
        *self.reads.lock().unwrap() += 1;
        self.records
            .lock()
            .unwrap()
            .get(&(sub_byte(sub), seq))
            .and_then(|r| r.message.clone())
            .ok_or_else(|| StoreError::Corrupt(format!("message {seq} is not stored")))
    }
}

const SIZE: u32 = 100;

fn msg(i: u32) -> IncomingMessage {
    let message = Message {
        properties: Some(Properties {
            message_id: Some(Value::String(format!("m{i}"))),
            ..Default::default()
        }),
        body_raw: Message::body_data(format!("body {i}").as_bytes()),
        ..Default::default()
    };
    IncomingMessage::new(message, SIZE)
}

fn body(encoded: &[u8]) -> Vec<u8> {
    let m = Message::decode(&keybus_amqp::Bytes::copy_from_slice(encoded)).unwrap();
    m.data_sections().unwrap().concat()
}

/// A queue whose window holds `fit` bodies, over a map store.
fn deep(props: QueueProperties, fit: u64) -> (Queue, Arc<MapStore>, Arc<BodyWindow>) {
    let store = Arc::new(MapStore::default());
    let window = Arc::new(BodyWindow::new(fit * u64::from(SIZE)));
    let q = Queue::new("q", props, 7).with_bodies(Bodies::new(window.clone(), store.clone()));
    (q, store, window)
}

fn send(q: &mut Queue, store: &MapStore, clock: &ManualClock, n: std::ops::Range<u32>) {
    let seqs = q.enqueue(n.map(msg).collect(), clock.now()).unwrap();
    store.apply(q.take_ops());
    q.commit_pending(&seqs);
}

#[test]
fn bodies_past_the_window_are_read_back_in_order() {
    let clock = ManualClock::new(1_000_000);
    let (mut q, store, window) = deep(QueueProperties::default(), 3);
    send(&mut q, &store, &clock, 0..10);
    assert_eq!(window.used(), 3 * u64::from(SIZE), "only the window stays");
    assert_eq!(q.counts().active, 10);
    for i in 0..10 {
        let d = q
            .acquire(SubQueue::Main, ReceiveMode::PeekLock, clock.now())
            .unwrap();
        assert_eq!(body(&d.encoded()), format!("body {i}").as_bytes());
        q.settle(d.lock_token, Outcome::Complete, clock.now())
            .unwrap();
        store.apply(q.take_ops());
    }
    assert_eq!(store.reads(), 7, "every body past the window read once");
    assert_eq!(window.used(), 0, "nothing held once all are completed");
    assert!(q.take_read_error().is_none());
}

#[test]
fn peek_reads_without_keeping_and_abandon_leaves_the_body_to_the_store() {
    let clock = ManualClock::new(1_000_000);
    let (mut q, store, window) = deep(QueueProperties::default(), 1);
    send(&mut q, &store, &clock, 0..4);
    let peeked = q.peek(SubQueue::Main, 1, 10, None, clock.now()).unwrap();
    let bodies: Vec<Vec<u8>> = peeked.iter().map(|p| body(p)).collect();
    assert_eq!(bodies.len(), 4);
    assert_eq!(bodies[3], b"body 3");
    assert_eq!(window.used(), u64::from(SIZE), "peek keeps nothing");

    // The second message is cold: delivering it reads it back and holds it while locked.
    let first = q
        .acquire(SubQueue::Main, ReceiveMode::PeekLock, clock.now())
        .unwrap();
    let second = q
        .acquire(SubQueue::Main, ReceiveMode::PeekLock, clock.now())
        .unwrap();
    assert_eq!(window.used(), 2 * u64::from(SIZE));
    q.settle(
        second.lock_token,
        Outcome::Abandon { properties: None },
        clock.now(),
    )
    .unwrap();
    let ops = q.take_ops();
    assert!(
        ops.iter()
            .any(|op| matches!(op, StoreOp::PutMessage { record, .. } if record.message.is_none())),
        "the abandon writes the delivery count without the body"
    );
    store.apply(ops);
    assert_eq!(
        window.used(),
        u64::from(SIZE),
        "unlocked past the window: evicted"
    );
    q.settle(first.lock_token, Outcome::Complete, clock.now())
        .unwrap();
    store.apply(q.take_ops());
    let again = q
        .acquire(SubQueue::Main, ReceiveMode::PeekLock, clock.now())
        .unwrap();
    assert_eq!(again.sequence_number, second.sequence_number);
    assert_eq!(body(&again.encoded()), b"body 1");
    let m = Message::decode(&keybus_amqp::Bytes::copy_from_slice(&again.encoded())).unwrap();
    assert_eq!(m.header.and_then(|h| h.delivery_count), Some(1));
}

#[test]
fn an_expired_cold_message_is_dead_lettered_with_its_body() {
    let clock = ManualClock::new(1_000_000);
    let props = QueueProperties {
        dead_lettering_on_message_expiration: true,
        ..QueueProperties::default()
    };
    let (mut q, store, _window) = deep(props, 0);
    let mut m = msg(7);
    m.message.header = Some(Header {
        ttl: Some(1_000),
        ..Default::default()
    });
    let seqs = q.enqueue(vec![m], clock.now()).unwrap();
    store.apply(q.take_ops());
    q.commit_pending(&seqs);
    clock.advance_ms(2_000);
    q.tick(clock.now());
    store.apply(q.take_ops());
    assert_eq!(q.counts().dead_letter, 1);
    let d = q
        .acquire(
            SubQueue::DeadLetter,
            ReceiveMode::ReceiveAndDelete,
            clock.now(),
        )
        .unwrap();
    assert_eq!(body(&d.encoded()), b"body 7");
    let m = Message::decode(&keybus_amqp::Bytes::copy_from_slice(&d.encoded())).unwrap();
    assert_eq!(
        keybus_amqp::map_get(
            m.application_properties.as_ref().unwrap(),
            "DeadLetterReason"
        ),
        Some(&Value::String("TTLExpiredException".into()))
    );
}

#[test]
fn a_restored_queue_reads_every_body_back_in_order_and_keeps_dedup() {
    let clock = ManualClock::new(1_000_000);
    let props = QueueProperties {
        requires_duplicate_detection: true,
        ..QueueProperties::default()
    };
    let (mut q, store, _window) = deep(props.clone(), 2);
    send(&mut q, &store, &clock, 0..6);
    drop(q);
    let mut snap = store.snapshot();
    snap.message_ids = snap
        .main
        .iter()
        .map(|r| (r.enqueued_time, format!("s:m{}", r.sequence_number - 1)))
        .collect();
    let window = Arc::new(BodyWindow::new(2 * u64::from(SIZE)));
    let mut r = Queue::restore(
        "q",
        props,
        snap,
        1,
        clock.now(),
        Bodies::new(window.clone(), store.clone()),
    );
    // A re-send of m3 is a duplicate: the restored history knows its id without its body.
    let dup = r.enqueue(vec![msg(3)], clock.now()).unwrap();
    assert!(dup.is_empty(), "duplicate accepted as new: {dup:?}");
    for i in 0..6 {
        let d = r
            .acquire(SubQueue::Main, ReceiveMode::ReceiveAndDelete, clock.now())
            .unwrap();
        assert_eq!(body(&d.encoded()), format!("body {i}").as_bytes());
    }
    assert_eq!(window.used(), 0);
}

#[test]
fn an_unreadable_body_is_reported_and_the_message_stays() {
    let clock = ManualClock::new(1_000_000);
    let (mut q, store, _window) = deep(QueueProperties::default(), 0);
    send(&mut q, &store, &clock, 0..2);
    store.records.lock().unwrap().clear();
    assert!(
        q.acquire(SubQueue::Main, ReceiveMode::PeekLock, clock.now())
            .is_none()
    );
    let err = q.take_read_error().expect("the failed read is reported");
    assert!(err.to_string().contains("not stored"), "{err}");
    assert_eq!(q.counts().active, 2, "nothing lost from the index");
    assert!(q.peek(SubQueue::Main, 1, 10, None, clock.now()).is_err());
}

#[test]
fn redrive_moves_dead_letters_whose_bodies_are_in_the_store() {
    let clock = ManualClock::new(1_000_000);
    let (mut q, store, window) = deep(QueueProperties::default(), 1);
    send(&mut q, &store, &clock, 0..4);
    for _ in 0..4 {
        let d = q
            .acquire(SubQueue::Main, ReceiveMode::PeekLock, clock.now())
            .unwrap();
        q.settle(
            d.lock_token,
            Outcome::DeadLetter {
                reason: Some("r".into()),
                description: None,
                properties: None,
            },
            clock.now(),
        )
        .unwrap();
        store.apply(q.take_ops());
    }
    assert!(
        window.used() <= u64::from(SIZE),
        "dead letters past the window are evicted"
    );
    let moved = q.redrive(None, clock.now());
    assert_eq!(moved.len(), 4);
    store.apply(q.take_ops());
    q.finish_redrive(&moved, true);
    for i in 0..4 {
        let d = q
            .acquire(SubQueue::Main, ReceiveMode::ReceiveAndDelete, clock.now())
            .unwrap();
        assert_eq!(body(&d.encoded()), format!("body {i}").as_bytes());
    }
    assert!(q.take_read_error().is_none());
}
