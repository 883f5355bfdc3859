//! Topic fan-out with an injected clock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keybus_amqp::{Message, Properties, Symbol, Value};
use keybus_core::{
    FilterDefinition, IncomingMessage, Queue, QueueProperties, ReceiveMode, RuleDefinition,
    StoreOp, SubQueue, Subscription, SubscriptionDefinition, Topic, TopicProperties,
};

fn msg(id: &str, props: Vec<(&str, Value)>) -> IncomingMessage {
    let message = Message {
        properties: Some(Properties {
            message_id: Some(Value::String(id.into())),
            ..Default::default()
        }),
        application_properties: Some(
            props
                .into_iter()
                .map(|(k, v)| (Value::String(k.into()), v))
                .collect(),
        ),
        body_raw: Message::body_data(id.as_bytes()),
        ..Default::default()
    };
    IncomingMessage::new(message, 100)
}

fn sub(name: &str, rules: Vec<RuleDefinition>, dlq_on_filter: bool) -> Subscription {
    let def = SubscriptionDefinition {
        topic: "t".into(),
        name: name.into(),
        properties: QueueProperties::default(),
        dead_lettering_on_filter_evaluation_exceptions: dlq_on_filter,
        rules,
    };
    Subscription::new(
        def,
        Queue::new(
            format!("t/subscriptions/{name}"),
            QueueProperties::default(),
            3,
        ),
    )
    .unwrap()
}

fn rule(name: &str, filter: FilterDefinition, action: Option<&str>) -> RuleDefinition {
    RuleDefinition {
        name: name.into(),
        filter,
        action: action.map(str::to_string),
        created_at: 0,
    }
}

fn topic() -> Topic {
    let mut t = Topic::new("t", TopicProperties::default(), 1);
    t.add_subscription(sub("all", vec![RuleDefinition::default_rule()], false), 0);
    t.add_subscription(
        sub(
            "eu",
            vec![rule(
                "eu",
                FilterDefinition::Sql("region = 'EU'".into()),
                Some("SET seen = 1"),
            )],
            false,
        ),
        0,
    );
    t.add_subscription(
        sub(
            "strict",
            vec![rule("n", FilterDefinition::Sql("n > 1".into()), None)],
            true,
        ),
        0,
    );
    t
}

fn app(d: &[u8], key: &str) -> Option<Value> {
    let m = Message::decode(&keybus_amqp::Bytes::copy_from_slice(d)).unwrap();
    keybus_amqp::map_get(m.application_properties.as_ref()?, key).cloned()
}

#[test]
fn fan_out_shares_sequence_numbers_and_applies_rules() {
    let mut t = topic();
    let now = 1_000;
    let (seqs, fanout) = t
        .enqueue(
            vec![
                msg(
                    "a",
                    vec![("region", Value::String("EU".into())), ("n", Value::Int(5))],
                ),
                msg(
                    "b",
                    vec![
                        ("region", Value::String("US".into())),
                        ("n", Value::String("x".into())),
                    ],
                ),
            ],
            now,
            false,
        )
        .unwrap();
    assert_eq!(seqs, vec![1, 2]);
    assert!(t.commit_pending(&fanout));
    let all = &mut t.subscription_mut("all").unwrap().queue;
    assert_eq!(
        all.acquire(SubQueue::Main, ReceiveMode::PeekLock, now)
            .unwrap()
            .sequence_number,
        1
    );
    assert_eq!(
        all.acquire(SubQueue::Main, ReceiveMode::PeekLock, now)
            .unwrap()
            .sequence_number,
        2
    );
    let eu = &mut t.subscription_mut("EU").unwrap().queue;
    let d = eu
        .acquire(SubQueue::Main, ReceiveMode::PeekLock, now)
        .unwrap();
    assert_eq!(d.sequence_number, 1);
    assert_eq!(app(&d.encoded(), "seen"), Some(Value::Long(1)));
    assert!(
        eu.acquire(SubQueue::Main, ReceiveMode::PeekLock, now)
            .is_none()
    );
    // The "all" copy has no action applied.
    let strict = &mut t.subscription_mut("strict").unwrap().queue;
    assert_eq!(
        strict
            .acquire(SubQueue::Main, ReceiveMode::PeekLock, now)
            .unwrap()
            .sequence_number,
        1
    );
    let dead = strict
        .acquire(SubQueue::DeadLetter, ReceiveMode::PeekLock, now)
        .unwrap();
    assert_eq!(dead.sequence_number, 2);
    assert_eq!(
        app(&dead.encoded(), "DeadLetterReason"),
        Some(Value::String("FilterEvaluationException".into()))
    );
    let ops = t.take_ops();
    assert!(
        ops.iter()
            .any(|o| matches!(o, StoreOp::PutSequence { entity, next: 3 } if &**entity == "t"))
    );
}

#[test]
fn pending_copies_are_invisible_and_cancel_reaches_every_subscription() {
    let mut t = topic();
    let mut m = msg("s", vec![("region", Value::String("EU".into()))]);
    m.message.message_annotations = Some(vec![(
        Value::Symbol(Symbol::from("x-opt-scheduled-enqueue-time")),
        Value::Timestamp(5_000),
    )]);
    let (seqs, fanout) = t.enqueue(vec![m], 1_000, true).unwrap();
    assert!(
        t.subscription("all")
            .unwrap()
            .queue
            .peek(SubQueue::Main, 1, 10, None, 1_000)
            .unwrap()
            .is_empty()
    );
    t.commit_pending(&fanout);
    assert_eq!(
        t.subscription("eu")
            .unwrap()
            .queue
            .peek(SubQueue::Main, 1, 10, None, 1_000)
            .unwrap()
            .len(),
        1
    );
    t.cancel_scheduled(&seqs);
    assert!(
        t.subscription("eu")
            .unwrap()
            .queue
            .peek(SubQueue::Main, 1, 10, None, 1_000)
            .unwrap()
            .is_empty()
    );
    assert!(
        t.subscription("all")
            .unwrap()
            .queue
            .peek(SubQueue::Main, 1, 10, None, 1_000)
            .unwrap()
            .is_empty()
    );
}

#[test]
fn duplicate_detection_at_the_topic() {
    let mut t = Topic::new(
        "t",
        TopicProperties {
            requires_duplicate_detection: true,
            duplicate_detection_window_ms: 60_000,
            ..Default::default()
        },
        1,
    );
    t.add_subscription(sub("all", vec![RuleDefinition::default_rule()], false), 0);
    let (seqs, _) = t
        .enqueue(vec![msg("a", vec![]), msg("a", vec![])], 0, false)
        .unwrap();
    assert_eq!(seqs, vec![1]);
}

#[test]
fn rules_are_added_and_removed_and_persisted() {
    let mut t = topic();
    let s = t.subscription_mut("all").unwrap();
    let op = s
        .add_rule(rule("extra", FilterDefinition::Sql("x = 1".into()), None))
        .unwrap();
    assert!(matches!(op, StoreOp::PutEntity(ref d) if d.name == "t/Subscriptions/all"));
    assert!(matches!(
        s.add_rule(rule("EXTRA", FilterDefinition::True, None)),
        Err(keybus_core::RuleError::AlreadyExists(_))
    ));
    assert!(matches!(
        s.add_rule(rule("bad", FilterDefinition::Sql("x = ".into()), None)),
        Err(keybus_core::RuleError::Invalid { .. })
    ));
    assert_eq!(s.rules().len(), 2);
    s.remove_rule("$default").unwrap();
    assert!(matches!(
        s.remove_rule("nope"),
        Err(keybus_core::RuleError::NotFound(_))
    ));
    // Only the remaining rule (x = 1) decides now.
    let (_, fanout) = t
        .enqueue(
            vec![msg("no", vec![]), msg("yes", vec![("x", Value::Long(1))])],
            0,
            false,
        )
        .unwrap();
    let all: Vec<i64> = fanout
        .iter()
        .filter(|(k, _)| k == "all")
        .flat_map(|(_, v)| v.clone())
        .collect();
    assert_eq!(all, vec![2]);
}

fn q<'a>(t: &'a mut Topic, name: &str) -> &'a mut Queue {
    &mut t.subscription_mut(name).unwrap().queue
}

fn count_ops(ops: &[StoreOp]) -> (usize, usize, usize, usize) {
    let mut c = (0, 0, 0, 0);
    for op in ops {
        match op {
            StoreOp::PutBody { .. } => c.0 += 1,
            StoreOp::PutMessage { record, .. } if record.body_owner.is_some() => c.1 += 1,
            StoreOp::PutMessage { .. } => c.2 += 1,
            StoreOp::DeleteBody { .. } => c.3 += 1,
            _ => {}
        }
    }
    c
}

#[test]
fn the_topic_stores_a_message_once_and_drops_it_with_its_last_reference() {
    let mut t = Topic::new("t", TopicProperties::default(), 1);
    for name in ["a", "b", "c"] {
        t.add_subscription(sub(name, vec![RuleDefinition::default_rule()], false), 0);
    }
    let (seqs, fanout) = t.enqueue(vec![msg("m", vec![])], 1_000, false).unwrap();
    // One body, three references, no full copies.
    assert_eq!(count_ops(&t.take_ops()), (1, 3, 0, 0));
    t.commit_pending(&fanout);
    let take = |t: &mut Topic, name: &str| {
        t.subscription_mut(name)
            .unwrap()
            .queue
            .acquire(SubQueue::Main, ReceiveMode::PeekLock, 1_000)
            .unwrap()
    };
    let da = take(&mut t, "a");
    let db = take(&mut t, "b");
    let dc = take(&mut t, "c");
    q(&mut t, "a")
        .settle(da.lock_token, keybus_core::Outcome::Complete, 1_000)
        .unwrap();
    assert_eq!(count_ops(&t.take_ops()), (0, 0, 0, 0));
    // Dead-lettering without a reason moves the reference; a modified copy is stored in full.
    q(&mut t, "b")
        .settle(
            db.lock_token,
            keybus_core::Outcome::DeadLetter {
                reason: None,
                description: None,
                properties: None,
            },
            1_000,
        )
        .unwrap();
    assert_eq!(count_ops(&t.take_ops()), (0, 1, 0, 0));
    q(&mut t, "c")
        .settle(
            dc.lock_token,
            keybus_core::Outcome::Abandon {
                properties: Some(vec![(Value::String("k".into()), Value::Int(1))]),
            },
            1_000,
        )
        .unwrap();
    assert_eq!(count_ops(&t.take_ops()), (0, 0, 1, 0));
    // The last reference (b's dead-letter record) goes: so does the body.
    let d = q(&mut t, "b")
        .acquire(SubQueue::DeadLetter, ReceiveMode::ReceiveAndDelete, 1_000)
        .unwrap();
    assert_eq!(d.sequence_number, seqs[0]);
    assert_eq!(count_ops(&t.take_ops()), (0, 0, 0, 1));
}

#[test]
fn orphan_bodies_are_collected_at_start_up() {
    let mut t = Topic::new("t", TopicProperties::default(), 1);
    t.add_subscription(sub("a", vec![RuleDefinition::default_rule()], false), 0);
    t.collect_orphan_bodies(&[4, 9]);
    assert_eq!(count_ops(&t.take_ops()), (0, 0, 0, 2));
}

#[test]
fn removing_a_subscription_releases_its_body_references() {
    let mut t = Topic::new("t", TopicProperties::default(), 1);
    for name in ["a", "b"] {
        t.add_subscription(sub(name, vec![RuleDefinition::default_rule()], false), 0);
    }
    // Two messages, each stored once with two references.
    let (seqs, fanout) = t
        .enqueue(vec![msg("m1", vec![]), msg("m2", vec![])], 1_000, false)
        .unwrap();
    assert_eq!(count_ops(&t.take_ops()), (2, 4, 0, 0));
    t.commit_pending(&fanout);
    // b settles the first message: its body is still a's.
    let d = q(&mut t, "b")
        .acquire(SubQueue::Main, ReceiveMode::ReceiveAndDelete, 1_000)
        .unwrap();
    assert_eq!(d.sequence_number, seqs[0]);
    assert_eq!(count_ops(&t.take_ops()), (0, 0, 0, 0));
    // Removing b releases its reference to the second body only: a still needs both.
    assert!(t.remove_subscription("B").is_some());
    let ops = t.take_ops();
    assert_eq!(count_ops(&ops), (0, 0, 0, 0));
    assert!(
        matches!(ops.as_slice(), [StoreOp::DeleteEntity { entity }] if &**entity == "t/subscriptions/b")
    );
    assert!(t.subscription("b").is_none());
    assert!(t.remove_subscription("b").is_none());
    // Removing a (the last reference to both bodies) deletes both bodies with it.
    t.remove_subscription("a").unwrap();
    let ops = t.take_ops();
    assert!(
        matches!(&ops[0], StoreOp::DeleteEntity { entity } if &**entity == "t/subscriptions/a")
    );
    let deleted: Vec<i64> = ops
        .iter()
        .filter_map(|op| match op {
            StoreOp::DeleteBody {
                entity,
                sequence_number,
            } if &**entity == "t" => Some(*sequence_number),
            _ => None,
        })
        .collect();
    assert_eq!(deleted, seqs);
    // Later sends reach no subscription and store no body.
    t.enqueue(vec![msg("m3", vec![])], 1_000, false).unwrap();
    assert_eq!(count_ops(&t.take_ops()), (0, 0, 0, 0));
}

#[test]
fn rules_are_replaced_in_place_and_properties_updated() {
    let mut t = topic();
    let s = t.subscription_mut("strict").unwrap();
    let op = s
        .replace_rule(rule("N", FilterDefinition::Sql("n > 5".into()), None))
        .unwrap();
    assert!(matches!(op, StoreOp::PutEntity(_)));
    assert_eq!(s.rules().len(), 1);
    assert_eq!(s.rules()[0].filter, FilterDefinition::Sql("n > 5".into()));
    assert!(
        s.replace_rule(rule("missing", FilterDefinition::True, None))
            .is_err()
    );
    assert!(
        s.replace_rule(rule("n", FilterDefinition::Sql("n >".into()), None))
            .is_err()
    );
    let props = QueueProperties {
        max_delivery_count: 2,
        ..QueueProperties::default()
    };
    s.set_properties(props.clone(), false);
    assert_eq!(s.queue.properties(), &props);
    assert_eq!(s.definition.properties, props);
    assert!(!s.definition.dead_lettering_on_filter_evaluation_exceptions);
    // The replaced rule is the one evaluated.
    t.enqueue(vec![msg("x", vec![("n", Value::Long(3))])], 1_000, false)
        .unwrap();
    assert_eq!(
        q(&mut t, "strict").counts().active + q(&mut t, "strict").counts().dead_letter,
        0
    );
}
