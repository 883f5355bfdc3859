#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! Queue state machine tests with an injected clock: no sleeps.

use keybus_amqp::{Header, Message, Properties, Symbol, Value};
use keybus_core::{
    Bodies, Clock, IncomingMessage, ManualClock, MessageState, Outcome, Queue, QueueProperties,
    ReceiveMode, SettleError, StoreOp, SubQueue,
};

fn msg(id: &str) -> IncomingMessage {
    let message = Message {
        properties: Some(Properties {
            message_id: Some(Value::String(id.into())),
            ..Default::default()
        }),
        body_raw: Message::body_data(id.as_bytes()),
        ..Default::default()
    };
    IncomingMessage::new(message, 100)
}

fn with_ttl(id: &str, ttl: u32) -> IncomingMessage {
    let mut m = msg(id);
    m.message.header = Some(Header {
        ttl: Some(ttl),
        ..Default::default()
    });
    m
}

fn scheduled(id: &str, at: i64) -> IncomingMessage {
    let mut m = msg(id);
    m.message.message_annotations = Some(vec![(
        Value::Symbol(Symbol::from("x-opt-scheduled-enqueue-time")),
        Value::Timestamp(at),
    )]);
    m
}

fn decode(d: &[u8]) -> Message {
    Message::decode(&keybus_amqp::Bytes::copy_from_slice(d)).unwrap()
}

fn annotation(m: &Message, key: &str) -> Option<Value> {
    keybus_amqp::map_get(m.message_annotations.as_ref()?, key).cloned()
}

fn app(m: &Message, key: &str) -> Option<Value> {
    keybus_amqp::map_get(m.application_properties.as_ref()?, key).cloned()
}

fn queue(props: QueueProperties) -> (Queue, ManualClock) {
    (Queue::new("q", props, 7), ManualClock::new(1_000_000))
}

fn send(q: &mut Queue, clock: &ManualClock, msgs: Vec<IncomingMessage>) -> Vec<i64> {
    let seqs = q.enqueue(msgs, clock.now()).unwrap();
    q.commit_pending(&seqs);
    seqs
}

#[test]
fn sequence_numbers_rise_and_pending_is_invisible() {
    let (mut q, clock) = queue(QueueProperties::default());
    let seqs = q.enqueue(vec![msg("a"), msg("b")], clock.now()).unwrap();
    assert_eq!(seqs, vec![1, 2]);
    assert!(
        q.acquire(SubQueue::Main, ReceiveMode::PeekLock, clock.now())
            .is_none()
    );
    assert!(
        q.peek(SubQueue::Main, 1, 10, None, clock.now())
            .unwrap()
            .is_empty()
    );
    let ops = q.take_ops();
    assert!(matches!(
        ops.last(),
        Some(StoreOp::PutSequence { next: 3, .. })
    ));
    q.commit_pending(&seqs);
    let d = q
        .acquire(SubQueue::Main, ReceiveMode::PeekLock, clock.now())
        .unwrap();
    assert_eq!(d.sequence_number, 1);
    let m = decode(&d.encoded());
    assert_eq!(
        annotation(&m, "x-opt-sequence-number"),
        Some(Value::Long(1))
    );
    assert_eq!(
        annotation(&m, "x-opt-enqueued-time"),
        Some(Value::Timestamp(clock.now()))
    );
    assert_eq!(
        annotation(&m, "x-opt-locked-until"),
        Some(Value::Timestamp(clock.now() + 60_000))
    );
    assert_eq!(m.header.unwrap().delivery_count, Some(0));
}

#[test]
fn complete_removes_and_late_settle_loses_lock() {
    let (mut q, clock) = queue(QueueProperties::default());
    send(&mut q, &clock, vec![msg("a")]);
    let d = q
        .acquire(SubQueue::Main, ReceiveMode::PeekLock, clock.now())
        .unwrap();
    q.settle(d.lock_token, Outcome::Complete, clock.now())
        .unwrap();
    assert_eq!(
        q.settle(d.lock_token, Outcome::Complete, clock.now()),
        Err(SettleError::LockLost)
    );
    assert!(
        q.peek(SubQueue::Main, 1, 10, None, clock.now())
            .unwrap()
            .is_empty()
    );
}

#[test]
fn lock_expiry_redelivers_with_count_and_old_lock_is_lost() {
    let (mut q, clock) = queue(QueueProperties {
        lock_duration_ms: 5_000,
        ..Default::default()
    });
    send(&mut q, &clock, vec![msg("a")]);
    let d = q
        .acquire(SubQueue::Main, ReceiveMode::PeekLock, clock.now())
        .unwrap();
    assert_eq!(q.next_deadline(), Some(clock.now() + 5_000));
    clock.advance_ms(5_001);
    assert!(q.tick(clock.now()));
    assert_eq!(
        q.settle(d.lock_token, Outcome::Complete, clock.now()),
        Err(SettleError::LockLost)
    );
    let d2 = q
        .acquire(SubQueue::Main, ReceiveMode::PeekLock, clock.now())
        .unwrap();
    assert_eq!(
        decode(&d2.encoded()).header.unwrap().delivery_count,
        Some(1)
    );
}

#[test]
fn renew_extends_the_lock() {
    let (mut q, clock) = queue(QueueProperties {
        lock_duration_ms: 5_000,
        ..Default::default()
    });
    send(&mut q, &clock, vec![msg("a")]);
    let d = q
        .acquire(SubQueue::Main, ReceiveMode::PeekLock, clock.now())
        .unwrap();
    clock.advance_ms(4_000);
    assert_eq!(
        q.renew_lock(d.lock_token, clock.now()),
        Ok(clock.now() + 5_000)
    );
    clock.advance_ms(4_000);
    q.tick(clock.now());
    q.settle(d.lock_token, Outcome::Complete, clock.now())
        .unwrap();
}

#[test]
fn abandon_counts_and_release_does_not() {
    let (mut q, clock) = queue(QueueProperties {
        max_delivery_count: 3,
        ..Default::default()
    });
    send(&mut q, &clock, vec![msg("a")]);
    let d = q
        .acquire(SubQueue::Main, ReceiveMode::PeekLock, clock.now())
        .unwrap();
    q.settle(d.lock_token, Outcome::Release, clock.now())
        .unwrap();
    let d = q
        .acquire(SubQueue::Main, ReceiveMode::PeekLock, clock.now())
        .unwrap();
    assert_eq!(decode(&d.encoded()).header.unwrap().delivery_count, Some(0));
    for expected in 0..3u32 {
        let d = if expected == 0 {
            d.clone()
        } else {
            q.acquire(SubQueue::Main, ReceiveMode::PeekLock, clock.now())
                .unwrap()
        };
        assert_eq!(
            decode(&d.encoded()).header.unwrap().delivery_count,
            Some(expected)
        );
        q.settle(
            d.lock_token,
            Outcome::Abandon { properties: None },
            clock.now(),
        )
        .unwrap();
    }
    assert!(
        q.acquire(SubQueue::Main, ReceiveMode::PeekLock, clock.now())
            .is_none()
    );
    let dl = q
        .acquire(SubQueue::DeadLetter, ReceiveMode::PeekLock, clock.now())
        .unwrap();
    let m = decode(&dl.encoded());
    assert_eq!(dl.sequence_number, 1);
    assert_eq!(
        app(&m, "DeadLetterReason"),
        Some(Value::String("MaxDeliveryCountExceeded".into()))
    );
}

#[test]
fn dead_letter_with_reason_and_properties() {
    let (mut q, clock) = queue(QueueProperties::default());
    send(&mut q, &clock, vec![msg("a")]);
    let d = q
        .acquire(SubQueue::Main, ReceiveMode::PeekLock, clock.now())
        .unwrap();
    let props = vec![(Value::String("k".into()), Value::Int(5))];
    q.settle(
        d.lock_token,
        Outcome::DeadLetter {
            reason: Some("r".into()),
            description: Some("d".into()),
            properties: Some(props),
        },
        clock.now(),
    )
    .unwrap();
    let peeked = q
        .peek(SubQueue::DeadLetter, 1, 10, None, clock.now())
        .unwrap();
    assert_eq!(peeked.len(), 1);
    let m = decode(&peeked[0]);
    assert_eq!(app(&m, "DeadLetterReason"), Some(Value::String("r".into())));
    assert_eq!(
        app(&m, "DeadLetterErrorDescription"),
        Some(Value::String("d".into()))
    );
    assert_eq!(app(&m, "k"), Some(Value::Int(5)));
    let dl = q
        .acquire(SubQueue::DeadLetter, ReceiveMode::PeekLock, clock.now())
        .unwrap();
    q.settle(dl.lock_token, Outcome::Complete, clock.now())
        .unwrap();
    assert_eq!(q.counts().dead_letter, 0);
}

#[test]
fn defer_then_receive_by_sequence_number() {
    let (mut q, clock) = queue(QueueProperties::default());
    send(&mut q, &clock, vec![msg("a"), msg("b")]);
    let d = q
        .acquire(SubQueue::Main, ReceiveMode::PeekLock, clock.now())
        .unwrap();
    q.settle(
        d.lock_token,
        Outcome::Defer { properties: None },
        clock.now(),
    )
    .unwrap();
    let next = q
        .acquire(SubQueue::Main, ReceiveMode::PeekLock, clock.now())
        .unwrap();
    assert_eq!(next.sequence_number, 2);
    assert!(
        q.acquire(SubQueue::Main, ReceiveMode::PeekLock, clock.now())
            .is_none()
    );
    let peek = q.peek(SubQueue::Main, 1, 1, None, clock.now()).unwrap();
    assert_eq!(
        annotation(&decode(&peek[0]), "x-opt-message-state"),
        Some(Value::Int(MessageState::Deferred as i32))
    );
    assert!(
        q.receive_deferred(
            SubQueue::Main,
            &[2],
            ReceiveMode::PeekLock,
            None,
            clock.now()
        )
        .is_err()
    );
    let got = q
        .receive_deferred(
            SubQueue::Main,
            &[1],
            ReceiveMode::PeekLock,
            None,
            clock.now(),
        )
        .unwrap();
    q.settle(got[0].lock_token, Outcome::Complete, clock.now())
        .unwrap();
    assert!(
        q.receive_deferred(
            SubQueue::Main,
            &[1],
            ReceiveMode::PeekLock,
            None,
            clock.now()
        )
        .is_err()
    );
}

#[test]
fn scheduled_messages_wait_and_cancel() {
    let (mut q, clock) = queue(QueueProperties::default());
    let at = clock.now() + 10_000;
    let seqs = q
        .schedule(vec![scheduled("a", at), scheduled("b", at)], clock.now())
        .unwrap();
    q.commit_pending(&seqs);
    assert!(
        q.acquire(SubQueue::Main, ReceiveMode::PeekLock, clock.now())
            .is_none()
    );
    let peek = q.peek(SubQueue::Main, 1, 10, None, clock.now()).unwrap();
    assert_eq!(peek.len(), 2);
    assert_eq!(
        annotation(&decode(&peek[0]), "x-opt-message-state"),
        Some(Value::Int(2))
    );
    q.cancel_scheduled(&[seqs[1]]);
    clock.advance_ms(10_000);
    assert!(q.tick(clock.now()));
    let d = q
        .acquire(SubQueue::Main, ReceiveMode::PeekLock, clock.now())
        .unwrap();
    assert_eq!(d.sequence_number, seqs[0]);
    assert_eq!(
        annotation(&decode(&d.encoded()), "x-opt-enqueued-time"),
        Some(Value::Timestamp(at))
    );
    assert!(
        q.acquire(SubQueue::Main, ReceiveMode::PeekLock, clock.now())
            .is_none()
    );
}

#[test]
fn ttl_expires_or_dead_letters() {
    let (mut q, clock) = queue(QueueProperties::default());
    send(&mut q, &clock, vec![with_ttl("a", 1_000), msg("b")]);
    clock.advance_ms(1_000);
    q.tick(clock.now());
    assert_eq!(
        q.acquire(SubQueue::Main, ReceiveMode::PeekLock, clock.now())
            .unwrap()
            .sequence_number,
        2
    );

    let (mut q, clock) = queue(QueueProperties {
        dead_lettering_on_message_expiration: true,
        default_message_ttl_ms: Some(2_000),
        ..Default::default()
    });
    send(&mut q, &clock, vec![msg("a"), with_ttl("b", 60_000)]);
    clock.advance_ms(2_000);
    // Expired messages are never delivered, even before the sweep.
    assert!(
        q.acquire(SubQueue::Main, ReceiveMode::PeekLock, clock.now())
            .is_none()
    );
    let dl = q
        .acquire(SubQueue::DeadLetter, ReceiveMode::PeekLock, clock.now())
        .unwrap();
    assert_eq!(
        app(&decode(&dl.encoded()), "DeadLetterReason"),
        Some(Value::String("TTLExpiredException".into()))
    );
    assert_eq!(q.counts().dead_letter, 2);
}

#[test]
fn duplicate_detection_within_window() {
    let (mut q, clock) = queue(QueueProperties {
        requires_duplicate_detection: true,
        duplicate_detection_window_ms: 60_000,
        ..Default::default()
    });
    assert_eq!(send(&mut q, &clock, vec![msg("a"), msg("a")]), vec![1]);
    assert_eq!(send(&mut q, &clock, vec![msg("a")]), Vec::<i64>::new());
    clock.advance_ms(60_001);
    q.tick(clock.now());
    assert_eq!(send(&mut q, &clock, vec![msg("a")]), vec![2]);
}

#[test]
fn size_limits() {
    let (mut q, clock) = queue(QueueProperties {
        max_message_size: 1024,
        max_size_bytes: 1024 * 1024,
        ..Default::default()
    });
    let mut big = msg("a");
    big.size = 2000;
    let err = q.enqueue(vec![big], clock.now()).unwrap_err();
    assert_eq!(err.condition().symbol(), "amqp:link:message-size-exceeded");
    let mut m = msg("x");
    m.size = 1000;
    for _ in 0..1048 {
        let _ = q.enqueue(vec![m.clone()], clock.now());
    }
    let err = q.enqueue(vec![m], clock.now()).unwrap_err();
    assert_eq!(err.condition().symbol(), "amqp:resource-limit-exceeded");
}

#[test]
fn receive_and_delete_and_restore() {
    let (mut q, clock) = queue(QueueProperties::default());
    send(&mut q, &clock, vec![msg("a"), msg("b"), msg("c")]);
    let d = q
        .acquire(SubQueue::Main, ReceiveMode::ReceiveAndDelete, clock.now())
        .unwrap();
    assert_eq!(d.sequence_number, 1);
    let _locked = q
        .acquire(SubQueue::Main, ReceiveMode::PeekLock, clock.now())
        .unwrap();
    // Rebuild from the store ops: message 1 deleted, 2 and 3 present, locks gone.
    let mut snap = keybus_core::EntitySnapshot::default();
    for op in q.take_ops() {
        match op {
            StoreOp::PutMessage {
                record,
                sub: SubQueue::Main,
                ..
            } => snap.main.push(record),
            StoreOp::DeleteMessage {
                sequence_number, ..
            } => snap.main.retain(|r| r.sequence_number != sequence_number),
            StoreOp::PutSequence { next, .. } => snap.next_sequence = next,
            _ => {}
        }
    }
    let mut r = Queue::restore(
        "q",
        QueueProperties::default(),
        snap,
        1,
        clock.now(),
        Bodies::default(),
    );
    let a = r
        .acquire(SubQueue::Main, ReceiveMode::PeekLock, clock.now())
        .unwrap();
    assert_eq!(a.sequence_number, 2);
    let seqs = r.enqueue(vec![msg("d")], clock.now()).unwrap();
    assert_eq!(seqs, vec![4]);
}

#[test]
fn broker_annotations_are_stripped_on_send() {
    let (mut q, clock) = queue(QueueProperties::default());
    let mut m = msg("a");
    m.message.message_annotations = Some(vec![
        (
            Value::Symbol(Symbol::from("x-opt-sequence-number")),
            Value::Long(99),
        ),
        (
            Value::Symbol(Symbol::from("x-opt-locked-until")),
            Value::Long(5),
        ),
        (Value::Symbol(Symbol::from("custom")), Value::Int(1)),
    ]);
    send(&mut q, &clock, vec![m]);
    let d = q
        .acquire(SubQueue::Main, ReceiveMode::ReceiveAndDelete, clock.now())
        .unwrap();
    let out = decode(&d.encoded());
    assert_eq!(
        annotation(&out, "x-opt-sequence-number"),
        Some(Value::Long(1))
    );
    assert_eq!(annotation(&out, "x-opt-locked-until"), None);
    assert_eq!(annotation(&out, "custom"), Some(Value::Int(1)));
}

#[test]
fn lock_token_tag_order() {
    let t = keybus_core::LockToken([
        0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee,
        0xff,
    ]);
    assert_eq!(
        t.to_delivery_tag(),
        [
            0x33, 0x22, 0x11, 0x00, 0x55, 0x44, 0x77, 0x66, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd,
            0xee, 0xff
        ]
    );
    assert_eq!(
        keybus_core::LockToken::from_delivery_tag(&t.to_delivery_tag()),
        Some(t)
    );
}
