//! Topics over the wire: a send fans out to every subscription.

use keybus_client::{Outcome, ReceiverOptions};

use crate::harness::{Broker, Store, T, message, on_both_stores};

on_both_stores!(topic_fans_out_to_subscriptions);

async fn topic_fans_out_to_subscriptions(store: Store) {
    let b = Broker::start(store).await;
    let mut c = b
        .client(&["t", "t/Subscriptions/s1", "t/Subscriptions/s2"])
        .await;
    let snd = c.create_sender("t", T).await.unwrap();
    c.send(snd, &message("t1", b"news"), T).await.unwrap();
    for sub in ["t/Subscriptions/s1", "t/Subscriptions/s2"] {
        let r = c
            .create_receiver(sub, &ReceiverOptions::default(), T)
            .await
            .unwrap();
        let got = c.receive(r, 1, T).await.unwrap();
        assert_eq!(got.len(), 1, "{sub} gets its copy");
        assert_eq!(got[0].message_id(), Some("t1"));
        assert_eq!(got[0].body(), b"news");
        c.settle(r, &got[0], Outcome::Complete, T).await.unwrap();
    }
}
