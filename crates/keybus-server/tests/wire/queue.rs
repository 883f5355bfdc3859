//! Queue messaging over the wire: send, batch send, peek-lock receive and complete,
//! abandon, release, defer and receive-deferred, dead-letter, receive-and-delete, lock
//! renewal, withdrawing a receiver's credit.

use keybus_client::{DispositionStatus, Outcome, ReceiveMode, ReceiverOptions, Value};

use crate::harness::{Broker, QUIET, Store, T, message, now_ms, on_both_stores};

on_both_stores!(
    send_receive_complete,
    batch_send,
    complete_a_range,
    abandon_raises_delivery_count,
    release_keeps_delivery_count,
    withdrawn_credit_brings_nothing,
    receive_any_returns_the_first_arrivals,
    defer_and_receive_deferred,
    dead_letter_with_reason,
    receive_and_delete,
    renew_lock,
);

async fn send_receive_complete(store: Store) {
    let b = Broker::start(store).await;
    let mut c = b.client(&["q"]).await;
    let snd = c.create_sender("q", T).await.unwrap();
    c.send(snd, &message("m1", b"hello"), T).await.unwrap();
    let rcv = c
        .create_receiver("q", &ReceiverOptions::default(), T)
        .await
        .unwrap();
    let got = c.receive(rcv, 1, T).await.unwrap();
    assert_eq!(got.len(), 1);
    let d = &got[0];
    assert_eq!(d.message_id(), Some("m1"));
    assert_eq!(d.body(), b"hello");
    assert!(!d.settled, "peek-lock deliveries are unsettled");
    assert!(
        d.lock_token().is_some(),
        "the delivery tag is the lock token"
    );
    assert_eq!(d.sequence_number(), Some(1));
    assert_eq!(d.delivery_count(), 0);
    assert!(d.annotation("x-opt-locked-until").is_some());
    c.settle(rcv, d, Outcome::Complete, T).await.unwrap();
    assert!(c.receive(rcv, 1, QUIET).await.unwrap().is_empty());
    assert!(c.peek("q", 1, 10, T).await.unwrap().is_empty());
}

async fn batch_send(store: Store) {
    let b = Broker::start(store).await;
    let mut c = b.client(&["q"]).await;
    let snd = c.create_sender("q", T).await.unwrap();
    let batch: Vec<_> = (0..3)
        .map(|i| message(&format!("b{i}"), format!("body {i}").as_bytes()))
        .collect();
    c.send_batch(snd, &batch, T).await.unwrap();
    let rcv = c
        .create_receiver("q", &ReceiverOptions::default(), T)
        .await
        .unwrap();
    let got = c.receive(rcv, 3, T).await.unwrap();
    let ids: Vec<_> = got
        .iter()
        .map(|d| d.message_id().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["b0", "b1", "b2"]);
    let seqs: Vec<_> = got.iter().map(|d| d.sequence_number().unwrap()).collect();
    assert_eq!(seqs, [1, 2, 3]);
    assert_eq!(got[2].body(), b"body 2");
    for d in &got {
        c.settle(rcv, d, Outcome::Complete, T).await.unwrap();
    }
}

/// One disposition over a range of delivery ids settles each message of the range.
async fn complete_a_range(store: Store) {
    let b = Broker::start(store).await;
    let mut c = b.client(&["q"]).await;
    let snd = c.create_sender("q", T).await.unwrap();
    let batch: Vec<_> = (0..40)
        .map(|i| message(&format!("r{i}"), b"range"))
        .collect();
    c.send_batch(snd, &batch, T).await.unwrap();
    let rcv = c
        .create_receiver("q", &ReceiverOptions::default(), T)
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 40 {
        let more = c.receive(rcv, 40 - got.len(), T).await.unwrap();
        assert!(!more.is_empty(), "40 messages were sent");
        got.extend(more);
    }
    let (first, last) = (&got[0], &got[39]);
    assert_eq!(last.delivery_id, first.delivery_id + 39);
    let commits = "keybus_store_commit_seconds_count";
    let before = b.metric(commits).await;
    c.settle_range(rcv, first, last, Outcome::Complete, T)
        .await
        .unwrap();
    assert_eq!(
        b.metric(commits).await - before,
        1.0,
        "one disposition over one entity makes one store commit"
    );
    assert!(c.peek("q", 1, 50, T).await.unwrap().is_empty());
    // Settled twice, the range's first id says the lock is gone.
    let again = c.settle_range(rcv, first, last, Outcome::Complete, T).await;
    assert!(again.is_err(), "{again:?}");
}

async fn abandon_raises_delivery_count(store: Store) {
    let b = Broker::start(store).await;
    let mut c = b.client(&["q"]).await;
    let snd = c.create_sender("q", T).await.unwrap();
    c.send(snd, &message("a1", b"x"), T).await.unwrap();
    let rcv = c
        .create_receiver("q", &ReceiverOptions::default(), T)
        .await
        .unwrap();
    let first = c.receive(rcv, 1, T).await.unwrap().remove(0);
    assert_eq!(first.delivery_count(), 0);
    c.settle(rcv, &first, Outcome::Abandon, T).await.unwrap();
    let again = c.receive(rcv, 1, T).await.unwrap().remove(0);
    assert_eq!(again.message_id(), Some("a1"));
    assert_eq!(again.delivery_count(), 1);
    assert_ne!(again.lock_token(), first.lock_token(), "a new lock");
    c.settle(rcv, &again, Outcome::Complete, T).await.unwrap();
}

async fn release_keeps_delivery_count(store: Store) {
    let b = Broker::start(store).await;
    let mut c = b.client(&["q"]).await;
    let snd = c.create_sender("q", T).await.unwrap();
    c.send(snd, &message("r1", b"x"), T).await.unwrap();
    let rcv = c
        .create_receiver("q", &ReceiverOptions::default(), T)
        .await
        .unwrap();
    let first = c.receive(rcv, 1, T).await.unwrap().remove(0);
    c.settle(rcv, &first, Outcome::Release, T).await.unwrap();
    let again = c.receive(rcv, 1, T).await.unwrap().remove(0);
    assert_eq!(again.message_id(), Some("r1"));
    assert_eq!(
        again.delivery_count(),
        0,
        "a release is not a delivery attempt"
    );
    c.settle(rcv, &again, Outcome::Complete, T).await.unwrap();
}

async fn withdrawn_credit_brings_nothing(store: Store) {
    let b = Broker::start(store).await;
    let mut c = b.client(&["q"]).await;
    let rcv = c
        .create_receiver("q", &ReceiverOptions::default(), T)
        .await
        .unwrap();
    // Credit for two, then withdrawn before anything is there.
    assert!(c.receive(rcv, 2, QUIET).await.unwrap().is_empty());
    c.stop_credit(rcv);
    let snd = c.create_sender("q", T).await.unwrap();
    c.send(snd, &message("w1", b"x"), T).await.unwrap();
    c.run_until(std::time::Instant::now() + QUIET, "a quiet link", |_| false)
        .await
        .unwrap_err();
    assert!(c.take_held(rcv).is_empty(), "no credit, no delivery");
    // Asking again brings it.
    let d = c.receive(rcv, 1, T).await.unwrap().remove(0);
    assert_eq!(d.message_id(), Some("w1"));
    c.settle(rcv, &d, Outcome::Complete, T).await.unwrap();
}

async fn receive_any_returns_the_first_arrivals(store: Store) {
    let b = Broker::start(store).await;
    let mut c = b.client(&["q"]).await;
    let snd = c.create_sender("q", T).await.unwrap();
    c.send(snd, &message("f1", b"x"), T).await.unwrap();
    let rcv = c
        .create_receiver("q", &ReceiverOptions::default(), T)
        .await
        .unwrap();
    // One message for a credit of ten: back at once, not after the wait.
    let started = std::time::Instant::now();
    let got = c
        .receive_any(rcv, 10, std::time::Duration::from_secs(30))
        .await
        .unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message_id(), Some("f1"));
    c.settle(rcv, &got[0], Outcome::Complete, T).await.unwrap();
    // Nothing there: nothing after the wait.
    assert!(c.receive_any(rcv, 10, QUIET).await.unwrap().is_empty());
}

async fn defer_and_receive_deferred(store: Store) {
    let b = Broker::start(store).await;
    let mut c = b.client(&["q"]).await;
    let snd = c.create_sender("q", T).await.unwrap();
    c.send(snd, &message("d1", b"later"), T).await.unwrap();
    let rcv = c
        .create_receiver("q", &ReceiverOptions::default(), T)
        .await
        .unwrap();
    let d = c.receive(rcv, 1, T).await.unwrap().remove(0);
    let seq = d.sequence_number().unwrap();
    c.settle(rcv, &d, Outcome::Defer, T).await.unwrap();
    assert!(
        c.receive(rcv, 1, QUIET).await.unwrap().is_empty(),
        "a deferred message is not delivered again"
    );
    let got = c
        .receive_deferred("q", &[seq], true, None, T)
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    let token = got[0].lock_token.expect("peek-lock gives a lock token");
    assert_eq!(
        got[0]
            .message
            .properties
            .as_ref()
            .and_then(|p| p.message_id.as_ref())
            .and_then(Value::as_str),
        Some("d1")
    );
    c.update_disposition("q", &[token], DispositionStatus::Completed, T)
        .await
        .unwrap();
    assert!(c.peek("q", 1, 10, T).await.unwrap().is_empty());
}

async fn dead_letter_with_reason(store: Store) {
    let b = Broker::start(store).await;
    let mut c = b.client(&["q", "q/$DeadLetterQueue"]).await;
    let snd = c.create_sender("q", T).await.unwrap();
    c.send(snd, &message("dl1", b"bad"), T).await.unwrap();
    let rcv = c
        .create_receiver("q", &ReceiverOptions::default(), T)
        .await
        .unwrap();
    let d = c.receive(rcv, 1, T).await.unwrap().remove(0);
    let outcome = Outcome::DeadLetter {
        reason: Some("Poison".into()),
        description: Some("cannot parse".into()),
    };
    c.settle(rcv, &d, outcome, T).await.unwrap();
    assert!(c.receive(rcv, 1, QUIET).await.unwrap().is_empty());
    let dlq = c
        .create_receiver("q/$DeadLetterQueue", &ReceiverOptions::default(), T)
        .await
        .unwrap();
    let dead = c.receive(dlq, 1, T).await.unwrap().remove(0);
    assert_eq!(dead.message_id(), Some("dl1"));
    assert_eq!(
        dead.property("DeadLetterReason").and_then(Value::as_str),
        Some("Poison")
    );
    assert_eq!(
        dead.property("DeadLetterErrorDescription")
            .and_then(Value::as_str),
        Some("cannot parse")
    );
    c.settle(dlq, &dead, Outcome::Complete, T).await.unwrap();
}

async fn receive_and_delete(store: Store) {
    let b = Broker::start(store).await;
    let mut c = b.client(&["q"]).await;
    let snd = c.create_sender("q", T).await.unwrap();
    c.send(snd, &message("r1", b"once"), T).await.unwrap();
    let opts = ReceiverOptions {
        mode: ReceiveMode::ReceiveAndDelete,
        session: None,
    };
    let rcv = c.create_receiver("q", &opts, T).await.unwrap();
    let got = c.receive(rcv, 1, T).await.unwrap();
    assert_eq!(got.len(), 1);
    assert!(got[0].settled, "receive-and-delete deliveries come settled");
    assert_eq!(got[0].message_id(), Some("r1"));
    assert!(c.peek("q", 1, 10, T).await.unwrap().is_empty(), "deleted");
}

async fn renew_lock(store: Store) {
    let b = Broker::start(store).await;
    let mut c = b.client(&["q"]).await;
    let snd = c.create_sender("q", T).await.unwrap();
    c.send(snd, &message("l1", b"x"), T).await.unwrap();
    let rcv = c
        .create_receiver("q", &ReceiverOptions::default(), T)
        .await
        .unwrap();
    let d = c.receive(rcv, 1, T).await.unwrap().remove(0);
    let before = d
        .annotation("x-opt-locked-until")
        .and_then(Value::as_timestamp)
        .unwrap();
    let token = d.lock_token().unwrap();
    let expiries = c.renew_lock("q", &[token], T).await.unwrap();
    assert_eq!(expiries.len(), 1);
    assert!(expiries[0] >= before, "the lock does not shrink");
    assert!(expiries[0] > now_ms(), "the lock runs into the future");
    c.settle(rcv, &d, Outcome::Complete, T).await.unwrap();
    // A lock that is gone cannot be renewed.
    let err = c.renew_lock("q", &[token], T).await.unwrap_err();
    assert_eq!(err.condition(), Some("com.microsoft:message-lock-lost"));
}
