#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Session state machine tests with an injected clock: locking, FIFO, renewal, expiry, state,
//! listing.

use keybus_amqp::{Bytes, Message, Properties, Value};
use keybus_core::{
    Bodies, Clock, IncomingMessage, LIST_ALL_SESSIONS, ManualClock, Outcome, Queue,
    QueueProperties, ReceiveMode, SendError, SessionError, StoreOp, SubQueue,
};

fn msg(id: &str, session: Option<&str>) -> IncomingMessage {
    let message = Message {
        properties: Some(Properties {
            message_id: Some(Value::String(id.into())),
            group_id: session.map(str::to_string),
            ..Default::default()
        }),
        body_raw: Message::body_data(id.as_bytes()),
        ..Default::default()
    };
    IncomingMessage::new(message, 100)
}

fn queue() -> (Queue, ManualClock) {
    let props = QueueProperties {
        requires_session: true,
        lock_duration_ms: 30_000,
        max_delivery_count: 3,
        ..QueueProperties::default()
    };
    (Queue::new("q", props, 7), ManualClock::new(1_000_000))
}

fn send(q: &mut Queue, clock: &ManualClock, msgs: Vec<IncomingMessage>) -> Vec<i64> {
    let seqs = q.enqueue(msgs, clock.now()).unwrap();
    q.commit_pending(&seqs);
    seqs
}

fn take_all(q: &mut Queue, session: &str, holder: u64, now: i64) -> Vec<i64> {
    let mut out = Vec::new();
    while let Some(d) = q.acquire_in_session(session, holder, ReceiveMode::PeekLock, now) {
        out.push(d.sequence_number);
    }
    out
}

#[test]
fn messages_without_a_session_id_are_refused() {
    let (mut q, clock) = queue();
    let err = q
        .enqueue(vec![msg("a", Some("s")), msg("b", None)], clock.now())
        .unwrap_err();
    assert!(matches!(err, SendError::Argument(ref t) if t.contains("SessionId")));
    assert!(q.take_ops().is_empty(), "nothing stored");
}

#[test]
fn sessions_are_fifo_and_have_one_holder() {
    let (mut q, clock) = queue();
    send(
        &mut q,
        &clock,
        vec![
            msg("1", Some("a")),
            msg("2", Some("b")),
            msg("3", Some("a")),
            msg("4", Some("b")),
        ],
    );
    // Non-session receivers see nothing on a session-enabled queue.
    assert!(
        q.acquire(SubQueue::Main, ReceiveMode::PeekLock, clock.now())
            .is_none()
    );
    let (id, until) = q.lock_session(Some("a"), 1, clock.now()).unwrap();
    assert_eq!((id.as_str(), until), ("a", clock.now() + 30_000));
    assert_eq!(
        q.lock_session(Some("a"), 2, clock.now()),
        Err(SessionError::CannotBeLocked("a".into()))
    );
    // Next available skips the locked session.
    let (next, _) = q.lock_session(None, 2, clock.now()).unwrap();
    assert_eq!(next, "b");
    assert_eq!(
        q.lock_session(None, 3, clock.now()),
        Err(SessionError::NoneAvailable)
    );
    assert!(!q.has_free_session());
    // The wrong holder takes nothing; the holder takes its session in order.
    assert!(
        q.acquire_in_session("a", 2, ReceiveMode::PeekLock, clock.now())
            .is_none()
    );
    assert_eq!(take_all(&mut q, "a", 1, clock.now()), vec![1, 3]);
    assert_eq!(take_all(&mut q, "b", 2, clock.now()), vec![2, 4]);
}

#[test]
fn abandon_returns_a_message_to_the_head_of_its_session() {
    let (mut q, clock) = queue();
    send(
        &mut q,
        &clock,
        vec![msg("1", Some("a")), msg("2", Some("a"))],
    );
    q.lock_session(Some("a"), 1, clock.now()).unwrap();
    let d = q
        .acquire_in_session("a", 1, ReceiveMode::PeekLock, clock.now())
        .unwrap();
    q.settle(
        d.lock_token,
        Outcome::Abandon { properties: None },
        clock.now(),
    )
    .unwrap();
    assert_eq!(take_all(&mut q, "a", 1, clock.now()), vec![1, 2]);
}

#[test]
fn session_lock_renewal_extends_message_locks_and_expiry_frees_the_session() {
    let (mut q, clock) = queue();
    send(&mut q, &clock, vec![msg("1", Some("a"))]);
    q.lock_session(Some("a"), 1, clock.now()).unwrap();
    let d = q
        .acquire_in_session("a", 1, ReceiveMode::PeekLock, clock.now())
        .unwrap();
    clock.advance_ms(20_000);
    // Only a holder can renew.
    assert_eq!(
        q.renew_session_lock("a", &[9], clock.now()),
        Err(SessionError::LockLost("a".into()))
    );
    let until = q.renew_session_lock("a", &[1], clock.now()).unwrap();
    assert_eq!(until, clock.now() + 30_000);
    clock.advance_ms(20_000); // past the first lock, inside the renewed one
    q.tick(clock.now());
    assert!(q.take_lost_sessions().is_empty());
    assert!(q.holds_session("a", 1, clock.now()));
    // The message lock followed the session lock: settling still works... after a renewal.
    let until = q.renew_session_lock("a", &[1], clock.now()).unwrap();
    clock.set(until + 1);
    assert!(q.tick(clock.now()));
    assert_eq!(q.take_lost_sessions(), vec![("a".to_string(), 1)]);
    assert!(
        q.settle(d.lock_token, Outcome::Complete, clock.now())
            .is_err()
    );
    // The message came back with its attempt counted; another holder can take the session.
    q.lock_session(None, 2, clock.now()).unwrap();
    let again = q
        .acquire_in_session("a", 2, ReceiveMode::PeekLock, clock.now())
        .unwrap();
    let m = Message::decode(&again.encoded()).unwrap();
    assert_eq!(m.header.unwrap().delivery_count, Some(1));
    q.settle(again.lock_token, Outcome::Complete, clock.now())
        .unwrap();
}

#[test]
fn releasing_a_session_counts_unsettled_messages_and_frees_it() {
    let (mut q, clock) = queue();
    send(&mut q, &clock, vec![msg("1", Some("a"))]);
    q.lock_session(Some("a"), 1, clock.now()).unwrap();
    take_all(&mut q, "a", 1, clock.now());
    assert!(!q.release_session("a", 2, clock.now()), "not the holder");
    assert!(q.release_session("a", 1, clock.now()));
    let (id, _) = q.lock_session(None, 2, clock.now()).unwrap();
    assert_eq!(id, "a");
    let d = q
        .acquire_in_session("a", 2, ReceiveMode::PeekLock, clock.now())
        .unwrap();
    let m = Message::decode(&d.encoded()).unwrap();
    assert_eq!(m.header.unwrap().delivery_count, Some(1));
}

#[test]
fn session_state_needs_the_lock_and_is_persisted() {
    let (mut q, clock) = queue();
    send(&mut q, &clock, vec![msg("1", Some("a"))]);
    q.take_ops();
    assert_eq!(
        q.session_state("a", &[1], clock.now()),
        Err(SessionError::LockLost("a".into()))
    );
    q.lock_session(Some("a"), 1, clock.now()).unwrap();
    assert_eq!(q.session_state("a", &[1], clock.now()), Ok(None));
    q.set_session_state("a", Some(Bytes::from_static(b"st")), &[1], clock.now())
        .unwrap();
    assert_eq!(
        q.session_state("a", &[1], clock.now()),
        Ok(Some(Bytes::from_static(b"st")))
    );
    let ops = q.take_ops();
    assert!(matches!(&ops[..], [StoreOp::PutSessionState { record, .. }] if record.state == "st"));
    // The state survives a restart.
    let snapshot = keybus_core::EntitySnapshot {
        next_sequence: 2,
        sessions: match &ops[0] {
            StoreOp::PutSessionState { record, .. } => vec![record.clone()],
            _ => unreachable!(),
        },
        ..Default::default()
    };
    let mut r = Queue::restore(
        "q",
        q.properties().clone(),
        snapshot,
        1,
        clock.now(),
        Bodies::default(),
    );
    r.lock_session(Some("a"), 5, clock.now()).unwrap();
    assert_eq!(
        r.session_state("a", &[5], clock.now()),
        Ok(Some(Bytes::from_static(b"st")))
    );
    // Clearing.
    q.set_session_state("a", None, &[1], clock.now()).unwrap();
    assert_eq!(q.session_state("a", &[1], clock.now()), Ok(None));
}

#[test]
fn listing_sessions_in_both_modes() {
    let (mut q, clock) = queue();
    send(
        &mut q,
        &clock,
        vec![
            msg("1", Some("b")),
            msg("2", Some("a")),
            msg("3", Some("c")),
        ],
    );
    assert_eq!(q.list_sessions(LIST_ALL_SESSIONS, 0, 100), ["a", "b", "c"]);
    assert_eq!(q.list_sessions(LIST_ALL_SESSIONS, 1, 1), ["b"]);
    q.lock_session(Some("z"), 1, clock.now()).unwrap();
    clock.advance_ms(10);
    q.set_session_state("z", Some(Bytes::from_static(b"x")), &[1], clock.now())
        .unwrap();
    assert_eq!(
        q.list_sessions(LIST_ALL_SESSIONS, 0, 100),
        ["a", "b", "c", "z"]
    );
    // By update time: only sessions whose state changed after the given time.
    assert_eq!(q.list_sessions(clock.now() - 1, 0, 100), ["z"]);
    assert!(q.list_sessions(clock.now(), 0, 100).is_empty());
}

#[test]
fn peek_and_deferred_receive_within_a_session() {
    let (mut q, clock) = queue();
    send(
        &mut q,
        &clock,
        vec![
            msg("1", Some("a")),
            msg("2", Some("b")),
            msg("3", Some("a")),
        ],
    );
    assert_eq!(
        q.peek(SubQueue::Main, 1, 10, Some("a"), clock.now())
            .unwrap()
            .len(),
        2
    );
    q.lock_session(Some("a"), 1, clock.now()).unwrap();
    let d = q
        .acquire_in_session("a", 1, ReceiveMode::PeekLock, clock.now())
        .unwrap();
    q.settle(
        d.lock_token,
        Outcome::Defer { properties: None },
        clock.now(),
    )
    .unwrap();
    // Deferred messages of another session are not found.
    assert!(
        q.receive_deferred(
            SubQueue::Main,
            &[1],
            ReceiveMode::PeekLock,
            Some("b"),
            clock.now()
        )
        .is_err()
    );
    let got = q
        .receive_deferred(
            SubQueue::Main,
            &[1],
            ReceiveMode::PeekLock,
            Some("a"),
            clock.now(),
        )
        .unwrap();
    q.settle(got[0].lock_token, Outcome::Complete, clock.now())
        .unwrap();
    assert_eq!(take_all(&mut q, "a", 1, clock.now()), vec![3]);
}
