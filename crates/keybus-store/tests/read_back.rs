//! Property: a message whose body the broker left to the store (a deep queue) is delivered
//! with exactly the sections it was sent with, on the embedded store and the memory store.

#![cfg(feature = "embedded")]
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use keybus_amqp::{Header, Message, Properties, Value};
use keybus_core::{
    Bodies, BodyWindow, IncomingMessage, LoadOptions, Queue, QueueProperties, ReceiveMode, Store,
    SubQueue,
};
use keybus_store::conformance::commit;
use proptest::prelude::*;

fn message() -> impl Strategy<Value = Message> {
    (
        proptest::collection::vec(any::<u8>(), 0..3000),
        proptest::option::of("[a-z0-9-]{1,12}"),
        proptest::option::of(1u32..1_000_000),
        proptest::collection::vec(("[a-zA-Z]{1,8}", any::<i64>()), 0..4),
    )
        .prop_map(|(body, id, ttl, app)| Message {
            header: ttl.map(|t| Header {
                ttl: Some(t),
                ..Default::default()
            }),
            properties: Some(Properties {
                message_id: id.map(Value::String),
                content_type: Some(keybus_amqp::Symbol::from("application/octet-stream")),
                ..Default::default()
            }),
            application_properties: (!app.is_empty()).then(|| {
                app.into_iter()
                    .map(|(k, v)| (Value::String(k), Value::Long(v)))
                    .collect()
            }),
            body_raw: Message::body_data(&body),
            ..Default::default()
        })
}

/// Send `msgs` through a queue whose window holds about one of them, commit to `store`,
/// restart the queue from the store's index (no bodies), and receive everything.
fn sent_equals_received(store: Arc<dyn Store>, msgs: Vec<Message>) {
    let window = Arc::new(BodyWindow::new(1024));
    let bodies = Bodies::new(window.clone(), store.clone());
    let mut q = Queue::new("props", QueueProperties::default(), 1).with_bodies(bodies.clone());
    let now = 1_700_000_000_000;
    let incoming = msgs
        .iter()
        .map(|m| IncomingMessage::new(m.clone(), m.encoded_size() as u32))
        .collect();
    let seqs = q.enqueue(incoming, now).unwrap();
    commit(&*store, q.take_ops()).unwrap();
    q.commit_pending(&seqs);
    // Half from this queue (bodies in memory or read back), the rest after a restart.
    let half = msgs.len() / 2;
    let mut got = Vec::new();
    for _ in 0..half {
        got.push(
            q.acquire(SubQueue::Main, ReceiveMode::PeekLock, now)
                .unwrap(),
        );
    }
    drop(q);
    let snapshot = store
        .load_entity(
            "props",
            LoadOptions {
                max_body_bytes: 0,
                message_ids_since: None,
            },
        )
        .unwrap();
    let mut r = Queue::restore(
        "props",
        QueueProperties::default(),
        snapshot,
        2,
        now,
        bodies,
    );
    while let Some(d) = r.acquire(SubQueue::Main, ReceiveMode::ReceiveAndDelete, now) {
        got.push(d);
    }
    assert!(r.take_read_error().is_none());
    // The first half were locked, not settled: after the restart they come again first.
    let received: Vec<Message> = got
        .iter()
        .map(|d| Message::decode(&d.encoded()).unwrap())
        .collect();
    let expected: Vec<&Message> = msgs[..half].iter().chain(msgs.iter()).collect();
    assert_eq!(received.len(), expected.len());
    for (r, m) in received.iter().zip(expected) {
        assert_eq!(r.body_raw, m.body_raw, "body");
        assert_eq!(r.properties, m.properties, "properties");
        assert_eq!(r.application_properties, m.application_properties);
        assert_eq!(
            r.header.as_ref().and_then(|h| h.ttl),
            m.header.as_ref().and_then(|h| h.ttl)
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_body_read_back_from_the_embedded_store_is_the_body_sent(
        msgs in proptest::collection::vec(message(), 1..12)
    ) {
        let dir = tempdir();
        let store: Arc<dyn Store> = Arc::new(keybus_store::FjallStore::open(&dir).unwrap());
        sent_equals_received(store, msgs);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_body_read_back_from_the_memory_store_is_the_body_sent(
        msgs in proptest::collection::vec(message(), 1..12)
    ) {
        sent_equals_received(Arc::new(keybus_store::MemStore::new()), msgs);
    }
}

fn tempdir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "keybus-read-back-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}
