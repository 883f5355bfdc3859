//! Transactions over the wire: a coordinator link, declare and discharge; sends and
//! settlements that join a transaction take effect at its commit, together, and never after
//! a rollback, a closed connection or on an unknown id.

use keybus_client::{Bytes, Message, Outcome, ReceiverOptions, Value};

use crate::harness::{Broker, QUIET, Store, T, message, now_ms, on_both_stores};

on_both_stores!(
    commit_applies_send_and_complete_together,
    rollback_leaves_no_trace,
    closing_the_connection_rolls_back,
    unknown_ids_are_refused,
    a_transaction_stays_on_one_entity,
    send_via_commits_across_entities_in_one_batch,
    send_via_rolls_back_across_entities,
);

fn ids(peeked: &[Message]) -> Vec<String> {
    peeked
        .iter()
        .map(
            |m| match m.properties.as_ref().and_then(|p| p.message_id.as_ref()) {
                Some(Value::String(id)) => id.clone(),
                other => format!("{other:?}"),
            },
        )
        .collect()
}

async fn commit_applies_send_and_complete_together(store: Store) {
    let b = Broker::start(store).await;
    let mut c = b.client(&["q"]).await;
    let snd = c.create_sender("q", T).await.unwrap();
    c.send(snd, &message("in", b"input"), T).await.unwrap();
    let rcv = c
        .create_receiver("q", &ReceiverOptions::default(), T)
        .await
        .unwrap();
    let got = c.receive(rcv, 1, T).await.unwrap();
    let coord = c.create_coordinator(T).await.unwrap();
    let txn = c.declare(coord, T).await.unwrap();
    c.send_in_transaction(snd, &message("out", b"output"), &txn, T)
        .await
        .unwrap();
    c.settle_in_transaction(rcv, &got[0], Outcome::Complete, &txn, T)
        .await
        .unwrap();
    // Before the commit neither happened: the input is there (locked), the output is not.
    assert_eq!(ids(&c.peek("q", 1, 10, T).await.unwrap()), ["in"]);
    let commits = b.metric("keybus_store_commit_seconds_count").await;
    c.discharge(coord, &txn, false, T).await.unwrap();
    // the send and the complete reached the store in one batch
    assert_eq!(
        b.metric("keybus_store_commit_seconds_count").await,
        commits + 1.0
    );
    assert_eq!(ids(&c.peek("q", 1, 10, T).await.unwrap()), ["out"]);
    let next = c.receive(rcv, 1, T).await.unwrap();
    assert_eq!(next[0].message_id(), Some("out"));
    c.settle(rcv, &next[0], Outcome::Complete, T).await.unwrap();
    // The transaction has ended: its id is unknown now.
    let err = c.discharge(coord, &txn, false, T).await.unwrap_err();
    assert_eq!(
        err.condition(),
        Some("amqp:transaction:unknown-id"),
        "{err}"
    );
}

async fn rollback_leaves_no_trace(store: Store) {
    let b = Broker::start(store).await;
    let mut c = b.client(&["q"]).await;
    let snd = c.create_sender("q", T).await.unwrap();
    c.send(snd, &message("kept", b"k"), T).await.unwrap();
    let rcv = c
        .create_receiver("q", &ReceiverOptions::default(), T)
        .await
        .unwrap();
    let got = c.receive(rcv, 1, T).await.unwrap();
    let coord = c.create_coordinator(T).await.unwrap();
    let txn = c.declare(coord, T).await.unwrap();
    c.send_in_transaction(snd, &message("dropped", b"d"), &txn, T)
        .await
        .unwrap();
    c.settle_in_transaction(rcv, &got[0], Outcome::Complete, &txn, T)
        .await
        .unwrap();
    c.discharge(coord, &txn, true, T).await.unwrap();
    // Nothing was sent, and the message whose completion was rolled back is still there,
    // still locked by its receiver (nothing else gets it), which can now settle it again.
    assert_eq!(ids(&c.peek("q", 1, 10, T).await.unwrap()), ["kept"]);
    assert!(c.receive(rcv, 1, QUIET).await.unwrap().is_empty());
    c.settle(rcv, &got[0], Outcome::Complete, T).await.unwrap();
    assert!(c.peek("q", 1, 10, T).await.unwrap().is_empty());
}

async fn closing_the_connection_rolls_back(store: Store) {
    let b = Broker::start(store).await;
    let mut c = b.client(&["q"]).await;
    let snd = c.create_sender("q", T).await.unwrap();
    let coord = c.create_coordinator(T).await.unwrap();
    let txn = c.declare(coord, T).await.unwrap();
    c.send_in_transaction(snd, &message("orphan", b"o"), &txn, T)
        .await
        .unwrap();
    c.close().await.unwrap();
    let mut other = b.client(&["q"]).await;
    let coord = other.create_coordinator(T).await.unwrap();
    // The transaction went with its connection: another one cannot commit it ...
    let err = other.discharge(coord, &txn, false, T).await.unwrap_err();
    assert_eq!(
        err.condition(),
        Some("amqp:transaction:unknown-id"),
        "{err}"
    );
    // ... and its send never happened.
    assert!(other.peek("q", 1, 10, T).await.unwrap().is_empty());
}

async fn unknown_ids_are_refused(store: Store) {
    let b = Broker::start(store).await;
    let mut c = b.client(&["q"]).await;
    let snd = c.create_sender("q", T).await.unwrap();
    let coord = c.create_coordinator(T).await.unwrap();
    let forged = Bytes::from_static(b"txn:424242");
    let err = c.discharge(coord, &forged, false, T).await.unwrap_err();
    assert_eq!(
        err.condition(),
        Some("amqp:transaction:unknown-id"),
        "{err}"
    );
    let err = c
        .send_in_transaction(snd, &message("x", b"x"), &forged, T)
        .await
        .unwrap_err();
    assert_eq!(
        err.condition(),
        Some("amqp:transaction:unknown-id"),
        "{err}"
    );
    assert!(c.peek("q", 1, 10, T).await.unwrap().is_empty());
}

async fn a_transaction_stays_on_one_entity(store: Store) {
    let b = Broker::start(store).await;
    let mut c = b.client(&["q", "t"]).await;
    let to_q = c.create_sender("q", T).await.unwrap();
    let to_t = c.create_sender("t", T).await.unwrap();
    let coord = c.create_coordinator(T).await.unwrap();
    let txn = c.declare(coord, T).await.unwrap();
    c.send_in_transaction(to_q, &message("a", b"a"), &txn, T)
        .await
        .unwrap();
    let err = c
        .send_in_transaction(to_t, &message("b", b"b"), &txn, T)
        .await
        .unwrap_err();
    assert_eq!(err.condition(), Some("amqp:not-allowed"), "{err}");
    // A transaction that could not take all of its work cannot commit (an SDK that ignores
    // the outcome of its sends learns it here): none of it happens.
    let err = c.discharge(coord, &txn, false, T).await.unwrap_err();
    assert_eq!(err.condition(), Some("amqp:transaction:rollback"), "{err}");
    assert!(c.peek("q", 1, 10, T).await.unwrap().is_empty());
}

/// A cross-entity transaction: received from `q`, sent via `q` to `graveyard` and to the
/// topic `t`; the commit makes the complete and both sends durable in one store batch.
async fn send_via_commits_across_entities_in_one_batch(store: Store) {
    let b = Broker::start(store).await;
    let mut c = b.client(&["q", "graveyard", "t"]).await;
    let snd = c.create_sender("q", T).await.unwrap();
    c.send(snd, &message("in", b"i"), T).await.unwrap();
    let rcv = c
        .create_receiver("q", &ReceiverOptions::default(), T)
        .await
        .unwrap();
    let got = c.receive(rcv, 1, T).await.unwrap();
    let to_graveyard = c.create_sender_via("q", "graveyard", T).await.unwrap();
    let to_topic = c.create_sender_via("q", "t", T).await.unwrap();
    let coord = c.create_coordinator(T).await.unwrap();
    let txn = c.declare(coord, T).await.unwrap();
    c.settle_in_transaction(rcv, &got[0], Outcome::Complete, &txn, T)
        .await
        .unwrap();
    c.send_in_transaction(to_graveyard, &message("moved", b"m"), &txn, T)
        .await
        .unwrap();
    c.send_in_transaction(to_topic, &message("published", b"p"), &txn, T)
        .await
        .unwrap();
    assert!(c.peek("graveyard", 1, 10, T).await.unwrap().is_empty());
    let commits = b.metric("keybus_store_commit_seconds_count").await;
    c.discharge(coord, &txn, false, T).await.unwrap();
    assert_eq!(
        b.metric("keybus_store_commit_seconds_count").await,
        commits + 1.0
    );
    assert!(c.peek("q", 1, 10, T).await.unwrap().is_empty());
    assert_eq!(
        ids(&c.peek("graveyard", 1, 10, T).await.unwrap()),
        ["moved"]
    );
    assert_eq!(
        ids(&c.peek("t/subscriptions/s1", 1, 10, T).await.unwrap()),
        ["published"]
    );
    // Without a transaction a send-via link sends straight to its destination.
    c.send(to_graveyard, &message("plain", b"x"), T)
        .await
        .unwrap();
    assert_eq!(
        ids(&c.peek("graveyard", 1, 10, T).await.unwrap()),
        ["moved", "plain"]
    );
}

async fn send_via_rolls_back_across_entities(store: Store) {
    let b = Broker::start(store).await;
    let mut c = b.client(&["q", "graveyard"]).await;
    let to_graveyard = c.create_sender_via("q", "graveyard", T).await.unwrap();
    let coord = c.create_coordinator(T).await.unwrap();
    let txn = c.declare(coord, T).await.unwrap();
    c.send_in_transaction(to_graveyard, &message("never", b"n"), &txn, T)
        .await
        .unwrap();
    c.discharge(coord, &txn, true, T).await.unwrap();
    assert!(c.peek("graveyard", 1, 10, T).await.unwrap().is_empty());
    assert!(c.peek("q", 1, 10, T).await.unwrap().is_empty());
}

/// A broker of queue `q` on a clock the test moves.
async fn broker_on(clock: &keybus_core::ManualClock) -> Broker {
    let opts = keybus_server::ServeOptions {
        in_memory: true,
        amqp_port: 0,
        http_port: 0,
        ..keybus_server::ServeOptions::default()
    };
    let config =
        keybus_server::config::Config::parse("[[queues]]\nname = \"q\"\nlock_duration = \"5s\"\n")
            .unwrap();
    let running =
        keybus_server::start_with_clock(opts, config, std::sync::Arc::new(clock.clone()), |s| s)
            .await
            .unwrap();
    Broker::wrap(running)
}

/// A commit whose settled message lost its lock meanwhile does nothing at all: the discharge
/// is refused with `amqp:transaction:rollback` and the transaction's send never happens.
#[tokio::test]
async fn a_lost_lock_rolls_back_the_whole_commit() {
    let clock = keybus_core::ManualClock::new(now_ms());
    let b = broker_on(&clock).await;
    let mut c = b.client(&["q"]).await;
    let snd = c.create_sender("q", T).await.unwrap();
    c.send(snd, &message("in", b"i"), T).await.unwrap();
    let rcv = c
        .create_receiver("q", &ReceiverOptions::default(), T)
        .await
        .unwrap();
    let got = c.receive(rcv, 1, T).await.unwrap();
    let coord = c.create_coordinator(T).await.unwrap();
    let txn = c.declare(coord, T).await.unwrap();
    c.send_in_transaction(snd, &message("out", b"o"), &txn, T)
        .await
        .unwrap();
    c.settle_in_transaction(rcv, &got[0], Outcome::Complete, &txn, T)
        .await
        .unwrap();
    clock.advance_ms(6_000);
    let err = c.discharge(coord, &txn, false, T).await.unwrap_err();
    assert_eq!(err.condition(), Some("amqp:transaction:rollback"), "{err}");
    assert_eq!(ids(&c.peek("q", 1, 10, T).await.unwrap()), ["in"]);
}

/// A transaction not discharged within 2 minutes (of the broker's clock) is rolled back: its
/// work never happens and its discharge says `amqp:transaction:timeout`.
#[tokio::test]
async fn undischarged_for_two_minutes_times_out() {
    let clock = keybus_core::ManualClock::new(now_ms());
    let b = broker_on(&clock).await;
    let mut c = b.client(&["q"]).await;
    let snd = c.create_sender("q", T).await.unwrap();
    let coord = c.create_coordinator(T).await.unwrap();
    let txn = c.declare(coord, T).await.unwrap();
    c.send_in_transaction(snd, &message("late", b"l"), &txn, T)
        .await
        .unwrap();
    clock.advance_ms(keybus_core::TRANSACTION_TIMEOUT_MS - 1);
    let young = c.declare(coord, T).await.unwrap();
    clock.advance_ms(1);
    let err = c.discharge(coord, &txn, false, T).await.unwrap_err();
    assert_eq!(err.condition(), Some("amqp:transaction:timeout"), "{err}");
    assert!(c.peek("q", 1, 10, T).await.unwrap().is_empty());
    // the one declared later has time left
    c.discharge(coord, &young, false, T).await.unwrap();
}
