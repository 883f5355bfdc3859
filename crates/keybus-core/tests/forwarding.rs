#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! The queue side of auto-forwarding: transfer locks, outcomes, hop counts.

use keybus_amqp::{Message, Properties, Symbol, Value};
use keybus_core::{
    Clock, HOP_LIMIT_REASON, IncomingMessage, ManualClock, Outcome, Queue, QueueProperties,
    ReceiveMode, StoreOp, SubQueue,
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

fn forwarding_queue() -> (Queue, ManualClock) {
    let props = QueueProperties {
        forward_to: Some("dest".into()),
        forward_dead_lettered_messages_to: Some("dlq-dest".into()),
        max_delivery_count: 1,
        ..QueueProperties::default()
    };
    (Queue::new("src", props, 3), ManualClock::new(1_000))
}

fn send(q: &mut Queue, clock: &ManualClock, m: IncomingMessage) -> i64 {
    let seqs = q.enqueue(vec![m], clock.now()).unwrap();
    q.commit_pending(&seqs);
    q.take_ops();
    seqs[0]
}

#[test]
fn forwarded_messages_never_reach_receivers_and_leave_once_durable() {
    let (mut q, clock) = forwarding_queue();
    let seq = send(&mut q, &clock, msg("a"));
    assert!(q.has_forwardable());
    assert!(
        q.acquire(SubQueue::Main, ReceiveMode::PeekLock, clock.now())
            .is_none()
    );
    let t = q.take_forwardable(10, clock.now());
    assert_eq!(t.len(), 1);
    assert_eq!((t[0].destination.as_str(), t[0].hops), ("dest", 0));
    assert!(matches!(
        t[0].delete_op(),
        StoreOp::DeleteMessage { ref entity, sub: SubQueue::Main, sequence_number } if &**entity == "src" && sequence_number == seq
    ));
    // Under the transfer lock: not offered twice, not expired by time, no client lock shown.
    assert!(!q.has_forwardable());
    assert!(q.take_forwardable(10, clock.now()).is_empty());
    clock.advance_ms(10 * 60_000);
    q.tick(clock.now());
    let peeked = q.peek(SubQueue::Main, 1, 10, None, clock.now()).unwrap();
    let m = Message::decode(&peeked[0]).unwrap();
    assert!(
        keybus_amqp::map_get(
            m.message_annotations.as_ref().unwrap(),
            "x-opt-locked-until"
        )
        .is_none()
    );
    q.forwarded(SubQueue::Main, seq);
    assert!(
        q.peek(SubQueue::Main, 1, 10, None, clock.now())
            .unwrap()
            .is_empty()
    );
    assert!(q.take_ops().is_empty(), "the caller's batch deletes it");
}

#[test]
fn an_aborted_transfer_is_offered_again() {
    let (mut q, clock) = forwarding_queue();
    send(&mut q, &clock, msg("a"));
    let t = q.take_forwardable(10, clock.now());
    q.transfer_aborted(t[0].sub, t[0].sequence_number);
    assert_eq!(q.take_forwardable(10, clock.now()).len(), 1);
}

#[test]
fn a_failed_transfer_dead_letters_and_the_dead_letter_is_forwarded_too() {
    let (mut q, clock) = forwarding_queue();
    let seq = send(&mut q, &clock, msg("a"));
    let t = q.take_forwardable(10, clock.now());
    q.transfer_failed(
        SubQueue::Main,
        seq,
        HOP_LIMIT_REASON,
        "too many hops".into(),
    );
    let ops = q.take_ops();
    assert!(ops.iter().any(|o| matches!(
        o,
        StoreOp::PutMessage {
            sub: SubQueue::DeadLetter,
            ..
        }
    )));
    drop(t);
    let t = q.take_forwardable(10, clock.now());
    assert_eq!(t.len(), 1);
    assert_eq!(
        (t[0].sub, t[0].destination.as_str()),
        (SubQueue::DeadLetter, "dlq-dest")
    );
    // The dead-letter forward fails too: the message stays in the dead-letter queue, receivable.
    q.transfer_failed(
        SubQueue::DeadLetter,
        seq,
        HOP_LIMIT_REASON,
        "too many hops".into(),
    );
    assert!(!q.has_forwardable());
    let d = q
        .acquire(SubQueue::DeadLetter, ReceiveMode::PeekLock, clock.now())
        .unwrap();
    let m = Message::decode(&d.encoded()).unwrap();
    let reason = keybus_amqp::map_get(
        m.application_properties.as_ref().unwrap(),
        "DeadLetterReason",
    );
    assert_eq!(reason, Some(&Value::String(HOP_LIMIT_REASON.into())));
}

#[test]
fn hops_are_recorded_and_clients_cannot_forge_them() {
    let (mut q, clock) = forwarding_queue();
    let mut forged = msg("forged");
    forged.message.message_annotations = Some(vec![(
        Value::Symbol(Symbol::from("x-opt-keybus-transfer-hops")),
        Value::Int(3),
    )]);
    send(&mut q, &clock, forged);
    let mut hop = msg("hop");
    hop.hops = 2;
    send(&mut q, &clock, hop);
    let t = q.take_forwardable(10, clock.now());
    let hops: Vec<u8> = t.iter().map(|t| t.hops).collect();
    assert_eq!(hops, vec![0, 2]);
}

#[test]
fn non_forwarding_queue_dead_letters_into_its_own_sub_queue() {
    let props = QueueProperties {
        max_delivery_count: 1,
        ..QueueProperties::default()
    };
    let mut q = Queue::new("plain", props, 1);
    let clock = ManualClock::new(1_000);
    send(&mut q, &clock, msg("a"));
    let d = q
        .acquire(SubQueue::Main, ReceiveMode::PeekLock, clock.now())
        .unwrap();
    q.settle(
        d.lock_token,
        Outcome::Abandon { properties: None },
        clock.now(),
    )
    .unwrap();
    assert!(!q.has_forwardable());
    assert!(
        q.acquire(SubQueue::DeadLetter, ReceiveMode::PeekLock, clock.now())
            .is_some()
    );
}
