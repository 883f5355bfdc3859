//! `$management` over the wire: peek without locking, schedule and cancel.

use keybus_client::{Outcome, ReceiverOptions};

use crate::harness::{Broker, QUIET, Store, T, message, now_ms, on_both_stores};

on_both_stores!(peek_takes_no_lock, schedule_and_cancel);

async fn peek_takes_no_lock(store: Store) {
    let b = Broker::start(store).await;
    let mut c = b.client(&["q"]).await;
    let snd = c.create_sender("q", T).await.unwrap();
    for i in 0..3 {
        c.send(snd, &message(&format!("p{i}"), b"x"), T)
            .await
            .unwrap();
    }
    let peeked = c.peek("q", 2, 10, T).await.unwrap();
    let ids: Vec<_> = peeked
        .iter()
        .map(|m| {
            m.properties
                .as_ref()
                .and_then(|p| p.message_id.as_ref())
                .and_then(|v| v.as_str())
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids, ["p1", "p2"], "from sequence number 2 on");
    let rcv = c
        .create_receiver("q", &ReceiverOptions::default(), T)
        .await
        .unwrap();
    let got = c.receive(rcv, 3, T).await.unwrap();
    assert_eq!(got.len(), 3, "peeking locked nothing");
    for d in &got {
        c.settle(rcv, d, Outcome::Complete, T).await.unwrap();
    }
}

async fn schedule_and_cancel(store: Store) {
    let b = Broker::start(store).await;
    let mut c = b.client(&["q"]).await;
    let later = now_ms() + 3_600_000;
    let seqs = c
        .schedule(
            "q",
            &[message("sch1", b"x"), message("sch2", b"y")],
            later,
            T,
        )
        .await
        .unwrap();
    assert_eq!(seqs.len(), 2);
    let peeked = c.peek("q", 1, 10, T).await.unwrap();
    assert_eq!(peeked.len(), 2, "scheduled messages can be peeked");
    let rcv = c
        .create_receiver("q", &ReceiverOptions::default(), T)
        .await
        .unwrap();
    assert!(
        c.receive(rcv, 1, QUIET).await.unwrap().is_empty(),
        "not before their time"
    );
    c.cancel_scheduled("q", &seqs[..1], T).await.unwrap();
    let left = c.peek("q", 1, 10, T).await.unwrap();
    assert_eq!(left.len(), 1, "the cancelled one is gone");
    // Scheduling for now makes the message available.
    c.schedule("q", &[message("now", b"z")], now_ms(), T)
        .await
        .unwrap();
    let got = c.receive(rcv, 1, T).await.unwrap();
    assert_eq!(got[0].message_id(), Some("now"));
    c.settle(rcv, &got[0], Outcome::Complete, T).await.unwrap();
}
