//! Sessions over the wire: a session receiver gets only its session, the next-available
//! receiver gets a session no one holds, and session state round-trips.

use keybus_client::{Outcome, ReceiverOptions, SessionFilter};

use crate::harness::{Broker, QUIET, Store, T, on_both_stores, session_message};

on_both_stores!(session_receiver_gets_only_its_session, session_state);

async fn session_receiver_gets_only_its_session(store: Store) {
    let b = Broker::start(store).await;
    let mut c = b.client(&["sq"]).await;
    let snd = c.create_sender("sq", T).await.unwrap();
    for (id, s) in [("a1", "A"), ("b1", "B"), ("a2", "A")] {
        c.send(snd, &session_message(id, s), T).await.unwrap();
    }
    let a_opts = ReceiverOptions {
        session: Some(SessionFilter::Id("A".into())),
        ..Default::default()
    };
    let ra = c.create_receiver("sq", &a_opts, T).await.unwrap();
    assert_eq!(c.locked_session(ra).as_deref(), Some("A"));
    let got = c.receive(ra, 3, QUIET * 2).await.unwrap();
    let ids: Vec<_> = got.iter().map(|d| d.message_id().unwrap()).collect();
    assert_eq!(ids, ["a1", "a2"], "only session A, in order");
    assert!(got.iter().all(|d| d.session_id() == Some("A")));
    for d in &got {
        c.settle(ra, d, Outcome::Complete, T).await.unwrap();
    }
    let next = ReceiverOptions {
        session: Some(SessionFilter::NextAvailable),
        ..Default::default()
    };
    let rb = c.create_receiver("sq", &next, T).await.unwrap();
    assert_eq!(
        c.locked_session(rb).as_deref(),
        Some("B"),
        "A is held by the other receiver"
    );
    let got = c.receive(rb, 1, T).await.unwrap();
    assert_eq!(got[0].message_id(), Some("b1"));
    c.settle(rb, &got[0], Outcome::Complete, T).await.unwrap();
}

async fn session_state(store: Store) {
    let b = Broker::start(store).await;
    let mut c = b.client(&["sq"]).await;
    let snd = c.create_sender("sq", T).await.unwrap();
    c.send(snd, &session_message("s1", "S"), T).await.unwrap();
    let opts = ReceiverOptions {
        session: Some(SessionFilter::Id("S".into())),
        ..Default::default()
    };
    let r = c.create_receiver("sq", &opts, T).await.unwrap();
    assert_eq!(c.get_session_state("sq", "S", T).await.unwrap(), None);
    c.set_session_state("sq", "S", b"step-2", T).await.unwrap();
    let state = c.get_session_state("sq", "S", T).await.unwrap();
    assert_eq!(state.as_deref(), Some(&b"step-2"[..]));
    let until = c.renew_session_lock("sq", "S", T).await.unwrap();
    assert!(until.is_some(), "renew-session-lock answers the new expiry");
    let got = c.receive(r, 1, T).await.unwrap();
    c.settle(r, &got[0], Outcome::Complete, T).await.unwrap();
}
