//! Message sections, batches and body helpers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keybus_amqp::*;

fn full_message() -> Message {
    Message {
        header: Some(Header {
            durable: Some(true),
            priority: Some(4),
            ttl: Some(u32::MAX),
            first_acquirer: Some(false),
            delivery_count: Some(3),
        }),
        delivery_annotations: Some(vec![(
            Value::symbol("x-opt-lock-token"),
            Value::Uuid([5; 16]),
        )]),
        message_annotations: Some(vec![
            (Value::symbol("x-opt-sequence-number"), Value::Long(42)),
            (
                Value::symbol("x-opt-enqueued-time"),
                Value::Timestamp(1_700_000_000_000),
            ),
            (Value::symbol("x-opt-message-state"), Value::Int(1)),
        ]),
        properties: Some(Properties {
            message_id: Some(Value::Uuid([1; 16])),
            user_id: Some(Bytes::from_static(b"user")),
            to: Some("q".into()),
            subject: Some("subj".into()),
            reply_to: Some("q/$management".into()),
            correlation_id: Some(Value::Ulong(7)),
            content_type: Some("application/json".into()),
            content_encoding: Some("utf-8".into()),
            absolute_expiry_time: Some(i64::MAX),
            creation_time: Some(0),
            group_id: Some("session-1".into()),
            group_sequence: Some(u32::MAX),
            reply_to_group_id: Some("rs".into()),
        }),
        application_properties: Some(vec![
            (
                Value::String("DeadLetterReason".into()),
                Value::String("r".into()),
            ),
            (
                Value::String("dt".into()),
                Value::Described(
                    Box::new(Descriptor::Symbol("com.microsoft:datetime-offset".into())),
                    Box::new(Value::Long(1)),
                ),
            ),
        ]),
        body_raw: Message::body_data(b"hello"),
    }
}

fn rt(m: &Message) -> Message {
    let mut buf = BytesMut::new();
    m.encode(&mut buf);
    assert_eq!(buf.len(), m.encoded_size());
    let bytes = buf.freeze();
    let back = Message::decode(&bytes).unwrap();
    assert_eq!(&back, m);
    // Re-encoding is byte-identical.
    let mut again = BytesMut::new();
    back.encode(&mut again);
    assert_eq!(&again[..], &bytes[..]);
    back
}

#[test]
fn full_message_round_trips() {
    let m = full_message();
    let back = rt(&m);
    assert_eq!(
        back.data_sections().unwrap(),
        vec![Bytes::from_static(b"hello")]
    );
    // body_raw is a zero-copy slice of the input
    let mut buf = BytesMut::new();
    m.encode(&mut buf);
    let bytes = buf.freeze();
    let d = Message::decode(&bytes).unwrap();
    let r = bytes.as_ptr() as usize..bytes.as_ptr() as usize + bytes.len();
    assert!(r.contains(&(d.body_raw.as_ptr() as usize)));
}

#[test]
fn partial_and_empty_messages() {
    rt(&Message::default());
    rt(&Message {
        body_raw: Message::body_value(&Value::Null),
        ..Default::default()
    });
    rt(&Message {
        header: Some(Header::default()),
        properties: Some(Properties::default()),
        message_annotations: Some(vec![]),
        body_raw: Message::body_sequence(&[Value::Uint(1), Value::String("x".into())]),
        ..Default::default()
    });
    // Several data sections and a footer.
    let mut body = BytesMut::new();
    body.extend_from_slice(&Message::body_data(b"a"));
    body.extend_from_slice(&Message::body_data(&vec![9u8; 300]));
    body.extend_from_slice(&[0x00, 0x53, 0x78, 0xc1, 0x01, 0x00]);
    let m = Message {
        body_raw: body.freeze(),
        ..Default::default()
    };
    let back = rt(&m);
    assert_eq!(
        back.data_sections().unwrap(),
        vec![Bytes::from_static(b"a"), Bytes::from(vec![9u8; 300])]
    );
}

#[test]
fn amqp_value_body() {
    let v = Value::Map(vec![(Value::String("statusCode".into()), Value::Int(200))]);
    let m = Message {
        body_raw: Message::body_value(&v),
        ..Default::default()
    };
    let back = rt(&m);
    assert_eq!(back.amqp_value().unwrap(), Some(v));
    assert!(back.data_sections().is_err());
    let d = Message {
        body_raw: Message::body_data(b"x"),
        ..Default::default()
    };
    assert_eq!(d.amqp_value().unwrap(), None);
}

#[test]
fn batch_inner_messages() {
    let inner: Vec<Message> = (0..3)
        .map(|i| Message {
            properties: Some(Properties {
                message_id: Some(Value::String(format!("m{i}"))),
                ..Default::default()
            }),
            body_raw: Message::body_data(format!("body{i}").as_bytes()),
            ..Default::default()
        })
        .collect();
    let mut body = BytesMut::new();
    for m in &inner {
        body.extend_from_slice(&Message::body_data(&m.to_bytes()));
    }
    let envelope = Message {
        properties: inner[0].properties.clone(),
        body_raw: body.freeze(),
        ..Default::default()
    };
    let bytes = envelope.to_bytes();
    let env = Message::decode(&bytes).unwrap();
    let parts = env.batch_inner_messages().unwrap();
    assert_eq!(parts.len(), 3);
    for (p, m) in parts.iter().zip(&inner) {
        assert_eq!(&Message::decode(p).unwrap(), m);
    }
}

#[test]
fn rejects_bad_section_order() {
    let h = Message {
        header: Some(Header::default()),
        ..Default::default()
    }
    .to_bytes();
    let p = Message {
        properties: Some(Properties::default()),
        ..Default::default()
    }
    .to_bytes();
    let data = Message::body_data(b"x");
    let value = Message::body_value(&Value::Null);
    let footer: &[u8] = &[0x00, 0x53, 0x78, 0xc1, 0x01, 0x00];
    let cat = |parts: &[&[u8]]| Bytes::from(parts.concat());
    // duplicate header
    assert!(Message::decode(&cat(&[&h, &h])).is_err());
    // properties before header
    assert!(Message::decode(&cat(&[&p, &h])).is_err());
    // header after body
    assert!(Message::decode(&cat(&[&data, &h])).is_err());
    // two amqp-values, mixed body kinds
    assert!(Message::decode(&cat(&[&value, &value])).is_err());
    assert!(Message::decode(&cat(&[&data, &value])).is_err());
    // body after footer, two footers
    assert!(Message::decode(&cat(&[&data, footer, &data])).is_err());
    assert!(Message::decode(&cat(&[&data, footer, footer])).is_err());
    // unknown section descriptor
    assert!(Message::decode(&cat(&[&[0x00, 0x53, 0x79, 0x40]])).is_err());
    assert!(Message::decode(&cat(&[&[0x00, 0xa3, 1, b'x', 0x40]])).is_err());
    // not described
    assert!(Message::decode(&cat(&[&[0x40]])).is_err());
    // data section that is not binary
    assert!(Message::decode(&cat(&[&[0x00, 0x53, 0x75, 0xa1, 1, b'x']])).is_err());
    // wrong type inside properties
    assert!(
        Message::decode(&cat(&[&[
            0x00, 0x53, 0x73, 0xc0, 0x04, 0x03, 0x40, 0x40, 0x43
        ]]))
        .is_err()
    );
    // annotations that are not a map
    assert!(Message::decode(&cat(&[&[0x00, 0x53, 0x72, 0x45]])).is_err());
    // valid order is fine
    assert!(Message::decode(&cat(&[&h, &p, &data, &data, footer])).is_ok());
    // truncation at every offset: Err or a shorter valid message, never panic
    let full = full_message().to_bytes();
    for i in 0..full.len() {
        let _ = Message::decode(&full.slice(..i));
    }
    assert!(Message::decode(&full.slice(..full.len() - 1)).is_err());
}

#[test]
fn symbolic_section_descriptors() {
    let mut b = vec![0x00, 0xa3, 16];
    b.extend_from_slice(b"amqp:data:binary");
    b.extend_from_slice(&[0xa0, 1, b'z']);
    let m = Message::decode(&Bytes::from(b)).unwrap();
    assert_eq!(m.data_sections().unwrap(), vec![Bytes::from_static(b"z")]);
}
