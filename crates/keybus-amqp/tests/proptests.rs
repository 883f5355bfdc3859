//! Property tests: arbitrary bytes never panic; random values round-trip.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keybus_amqp::*;
use proptest::prelude::*;

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<u8>().prop_map(Value::Ubyte),
        any::<u16>().prop_map(Value::Ushort),
        any::<u32>().prop_map(Value::Uint),
        prop_oneof![Just(0u32), Just(255), Just(256), Just(u32::MAX)].prop_map(Value::Uint),
        any::<u64>().prop_map(Value::Ulong),
        any::<i8>().prop_map(Value::Byte),
        any::<i16>().prop_map(Value::Short),
        any::<i32>().prop_map(Value::Int),
        (-200i64..200).prop_map(Value::Long),
        any::<i64>().prop_map(Value::Long),
        any::<f32>()
            .prop_filter("nan", |f| !f.is_nan())
            .prop_map(Value::Float),
        any::<f64>()
            .prop_filter("nan", |f| !f.is_nan())
            .prop_map(Value::Double),
        any::<[u8; 4]>().prop_map(Value::Decimal32),
        any::<[u8; 8]>().prop_map(Value::Decimal64),
        any::<[u8; 16]>().prop_map(Value::Decimal128),
        any::<char>().prop_map(Value::Char),
        any::<i64>().prop_map(Value::Timestamp),
        any::<[u8; 16]>().prop_map(Value::Uuid),
        proptest::collection::vec(any::<u8>(), 0..300).prop_map(|v| Value::Binary(Bytes::from(v))),
        ".{0,40}".prop_map(Value::String),
        "[a-z:-]{0,300}".prop_map(|s| Value::Symbol(Symbol(s))),
    ]
}

fn descriptor() -> impl Strategy<Value = Descriptor> {
    prop_oneof![
        any::<u64>().prop_map(Descriptor::Code),
        "[a-z:]{1,20}".prop_map(|s| Descriptor::Symbol(Symbol(s))),
    ]
}

/// A homogeneous array: `n` values generated from one leaf kind.
fn array_of(inner: BoxedStrategy<Value>) -> impl Strategy<Value = Value> {
    (inner, 0usize..6).prop_flat_map(|(first, n)| {
        let kind = std::mem::discriminant(&first);
        proptest::collection::vec(leaf(), 0..40).prop_map(move |cands| {
            let mut items = vec![first.clone()];
            items.extend(
                cands
                    .into_iter()
                    .filter(|c| std::mem::discriminant(c) == kind)
                    .take(n),
            );
            Value::Array(items)
        })
    })
}

fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::List),
            proptest::collection::vec((inner.clone(), inner.clone()), 0..6).prop_map(Value::Map),
            array_of(leaf().boxed()),
            // arrays of lists / maps / described values with one descriptor
            proptest::collection::vec(proptest::collection::vec(inner.clone(), 0..3), 1..4)
                .prop_map(|ls| Value::Array(ls.into_iter().map(Value::List).collect())),
            (descriptor(), proptest::collection::vec(any::<i32>(), 1..5)).prop_map(|(d, xs)| {
                Value::Array(
                    xs.into_iter()
                        .map(|x| Value::Described(Box::new(d.clone()), Box::new(Value::Int(x))))
                        .collect(),
                )
            }),
            (descriptor(), inner).prop_map(|(d, v)| Value::Described(Box::new(d), Box::new(v))),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn value_round_trip(v in value()) {
        let mut buf = BytesMut::new();
        v.encode(&mut buf);
        prop_assert_eq!(buf.len(), v.encoded_size());
        let mut input: &[u8] = &buf;
        let back = Value::decode(&mut input).unwrap();
        prop_assert!(input.is_empty());
        prop_assert_eq!(back, v);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let b = Bytes::from(bytes.clone());
        let _ = decode_frame(&bytes, 4096);
        let _ = decode_frame_bytes(&b, 4096);
        let mut input: &[u8] = &bytes;
        let _ = Value::decode(&mut input);
        if let Ok(m) = Message::decode(&b) {
            let _ = m.data_sections();
            let _ = m.amqp_value();
            // A decoded message re-encodes to something that decodes the same.
            let re = m.to_bytes();
            prop_assert_eq!(Message::decode(&re).unwrap(), m);
        }
        let _ = parse_protocol_header(&bytes);
        let mut input: &[u8] = &bytes;
        let _ = Performative::decode(&mut input);
        let mut input: &[u8] = &bytes;
        let _ = SaslFrameBody::decode(&mut input);
    }

    /// Bytes that start like a valid frame (valid header, described body) so
    /// that the fuzzing reaches the performative decoders.
    #[test]
    fn frame_like_bytes_never_panic(
        ftype in 0u8..2,
        code in prop_oneof![0x10u8..0x19, 0x40u8..0x45],
        tail in proptest::collection::vec(any::<u8>(), 0..200),
    ) {
        let mut body = vec![0x00, 0x53, code];
        body.extend_from_slice(&tail);
        let mut f = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        f.extend_from_slice(&[2, ftype, 0, 0]);
        f.extend_from_slice(&body);
        let _ = decode_frame(&f, u32::MAX);
    }

    /// Mutating single bytes of valid frames never panics.
    #[test]
    fn mutated_frames_never_panic(idx in any::<prop::sample::Index>(), byte in any::<u8>(), which in 0usize..4) {
        let p = match which {
            0 => Performative::Attach(Attach {
                name: "n".into(),
                source: Some(Source { address: Some("q".into()), filter: Some(vec![(Value::symbol("f"), Value::Null)]), ..Default::default() }),
                target: Some(AttachTarget::default()),
                properties: Some(vec![(Value::symbol("p"), Value::Long(1))]),
                ..Default::default()
            }),
            1 => Performative::Transfer(Transfer {
                handle: 1, delivery_tag: Some(Bytes::from_static(b"tag")),
                state: Some(DeliveryState::Modified { delivery_failed: Some(true), undeliverable_here: None, message_annotations: Some(vec![]) }),
                ..Default::default()
            }),
            2 => Performative::Open(Open { container_id: "c".into(), offered_capabilities: Some(vec!["a".into()]), ..Default::default() }),
            _ => Performative::Detach(Detach { handle: 1, closed: true, error: Some(AmqpError::new("a:b", "c")) }),
        };
        let mut buf = BytesMut::new();
        encode_amqp_frame(0, &p, b"xyz", &mut buf);
        let i = idx.index(buf.len());
        buf[i] = byte;
        let _ = decode_frame(&buf, u32::MAX);
    }
}
