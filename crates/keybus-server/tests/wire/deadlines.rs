//! What the broker does when nobody asks: locks that run out, schedules that come due and
//! messages forwarded, each driven by the housekeeper's and the forwarder's agenda (no task
//! polls the entities).

use keybus_client::{Outcome, ReceiverOptions};

use crate::harness::{Broker, QUIET, Store, T, message, now_ms, on_both_stores};

on_both_stores!(
    an_expired_lock_redelivers_then_dead_letters_and_forwards,
    a_schedule_comes_due_for_a_waiting_receiver,
    a_send_is_forwarded,
);

/// `short` locks for 1 s, dead-letters at the second delivery and forwards its dead letters to
/// `graveyard`.
async fn an_expired_lock_redelivers_then_dead_letters_and_forwards(store: Store) {
    let b = Broker::start(store).await;
    let mut c = b.client(&["short", "graveyard"]).await;
    let snd = c.create_sender("short", T).await.unwrap();
    c.send(snd, &message("lapse", b"x"), T).await.unwrap();
    let rcv = c
        .create_receiver("short", &ReceiverOptions::default(), T)
        .await
        .unwrap();
    let first = c.receive(rcv, 1, T).await.unwrap();
    assert_eq!(first[0].delivery_count(), 0);
    // Not settled: once the lock runs out the waiting receiver gets it again.
    let again = c.receive(rcv, 1, T).await.unwrap();
    assert_eq!(again.len(), 1, "redelivered after the lock ran out");
    assert_eq!(again[0].message_id(), Some("lapse"));
    assert_eq!(again[0].delivery_count(), 1);
    // The second lock runs out too: the message is dead-lettered and forwarded.
    let grave = c
        .create_receiver("graveyard", &ReceiverOptions::default(), T)
        .await
        .unwrap();
    let buried = c.receive(grave, 1, T).await.unwrap();
    assert_eq!(buried.len(), 1, "forwarded from the dead-letter queue");
    assert_eq!(buried[0].message_id(), Some("lapse"));
    c.settle(grave, &buried[0], Outcome::Complete, T)
        .await
        .unwrap();
    assert!(c.peek("short", 1, 10, T).await.unwrap().is_empty());
}

async fn a_schedule_comes_due_for_a_waiting_receiver(store: Store) {
    let b = Broker::start(store).await;
    let mut c = b.client(&["q"]).await;
    let rcv = c
        .create_receiver("q", &ReceiverOptions::default(), T)
        .await
        .unwrap();
    let at = now_ms() + 400;
    c.schedule("q", &[message("soon", b"s")], at, T)
        .await
        .unwrap();
    assert!(
        c.receive(rcv, 1, QUIET / 2).await.unwrap().is_empty(),
        "not before its time"
    );
    let got = c.receive(rcv, 1, T).await.unwrap();
    assert_eq!(got[0].message_id(), Some("soon"));
    assert!(now_ms() >= at, "delivered at or after its time");
    c.settle(rcv, &got[0], Outcome::Complete, T).await.unwrap();
}

async fn a_send_is_forwarded(store: Store) {
    let b = Broker::start(store).await;
    let mut c = b.client(&["relay", "q"]).await;
    let snd = c.create_sender("relay", T).await.unwrap();
    let batch: Vec<_> = (0..5).map(|i| message(&format!("f{i}"), b"f")).collect();
    c.send_batch(snd, &batch, T).await.unwrap();
    let rcv = c
        .create_receiver("q", &ReceiverOptions::default(), T)
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 5 {
        let more = c.receive(rcv, 5 - got.len(), T).await.unwrap();
        assert!(!more.is_empty(), "all five are forwarded");
        got.extend(more);
    }
    let ids: Vec<_> = got.iter().filter_map(|d| d.message_id()).collect();
    assert_eq!(ids, ["f0", "f1", "f2", "f3", "f4"]);
    assert!(c.peek("relay", 1, 10, T).await.unwrap().is_empty());
}
