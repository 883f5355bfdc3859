//! Performatives, SASL bodies and frames.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keybus_amqp::*;

fn frame_rt(channel: u16, body: FrameBody) {
    let mut buf = BytesMut::new();
    encode_frame(channel, &body, &mut buf);
    let size = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    assert_eq!(size, buf.len());
    let (f, used) = decode_frame(&buf, u32::MAX).unwrap().unwrap();
    assert_eq!(used, buf.len());
    assert_eq!(
        f,
        Frame {
            channel,
            body: body.clone()
        }
    );
    let bytes = buf.clone().freeze();
    let (f2, used2) = decode_frame_bytes(&bytes, u32::MAX).unwrap().unwrap();
    assert_eq!(used2, buf.len());
    assert_eq!(f2.body, body);
    // every truncation: Ok(None) or Err, never panic
    for i in 0..buf.len() {
        match decode_frame(&buf[..i], u32::MAX) {
            Ok(None) | Err(_) => {}
            Ok(Some(_)) => panic!("decoded a truncated frame at {i}"),
        }
    }
}

fn perf_rt(p: Performative) {
    // encoded_size is exact
    let mut b = BytesMut::new();
    p.encode(&mut b);
    assert_eq!(b.len(), p.encoded_size(), "{p:?}");
    let mut input: &[u8] = &b;
    assert_eq!(Performative::decode(&mut input).unwrap(), p);
    assert!(input.is_empty());
    frame_rt(
        3,
        FrameBody::Amqp {
            performative: p,
            payload: Bytes::new(),
        },
    );
}

fn props() -> Vec<(Value, Value)> {
    vec![
        (Value::symbol("product"), Value::String("keybus".into())),
        (Value::symbol("com.microsoft:timeout"), Value::Uint(60_000)),
    ]
}

fn caps() -> Option<Vec<Symbol>> {
    Some(vec!["com.microsoft:session-filter".into(), "x".into()])
}

fn error() -> AmqpError {
    AmqpError {
        condition: "amqp:not-found".into(),
        description: Some("The messaging entity 'q' could not be found".into()),
        info: Some(vec![(Value::symbol("k"), Value::Int(1))]),
    }
}

#[test]
fn every_performative_round_trips() {
    perf_rt(Performative::Open(Open::default()));
    perf_rt(Performative::Open(Open {
        container_id: "c".repeat(300),
        hostname: Some("ns.servicebus.windows.net".into()),
        max_frame_size: 65_536,
        channel_max: 0,
        idle_time_out: Some(120_000),
        outgoing_locales: Some(vec!["en-US".into()]),
        incoming_locales: Some(vec![]),
        offered_capabilities: caps(),
        desired_capabilities: caps(),
        properties: Some(props()),
    }));
    perf_rt(Performative::Begin(Begin::default()));
    perf_rt(Performative::Begin(Begin {
        remote_channel: Some(7),
        next_outgoing_id: u32::MAX,
        incoming_window: 2048,
        outgoing_window: u32::MAX - 1,
        handle_max: 255,
        offered_capabilities: caps(),
        desired_capabilities: None,
        properties: Some(props()),
    }));
    perf_rt(Performative::Attach(Attach::default()));
    perf_rt(Performative::Attach(Attach {
        name: "link-1".into(),
        handle: u32::MAX,
        role: Role::Receiver,
        snd_settle_mode: SenderSettleMode::Unsettled,
        rcv_settle_mode: ReceiverSettleMode::Second,
        source: Some(Source {
            address: Some("amqps://ns/q".into()),
            durable: 2,
            expiry_policy: Some("never".into()),
            timeout: 30,
            dynamic: true,
            dynamic_node_properties: Some(props()),
            distribution_mode: Some("move".into()),
            filter: Some(vec![(
                Value::symbol("com.microsoft:session-filter"),
                Value::String("s1".into()),
            )]),
            default_outcome: Some(Value::Described(
                Box::new(Descriptor::Code(0x26)),
                Box::new(Value::List(vec![])),
            )),
            outcomes: Some(vec!["amqp:accepted:list".into()]),
            capabilities: caps(),
        }),
        target: Some(AttachTarget::Node(Target {
            address: Some("/q".into()),
            durable: 1,
            expiry_policy: None,
            timeout: 0,
            dynamic: false,
            dynamic_node_properties: None,
            capabilities: caps(),
        })),
        unsettled: Some(vec![(Value::Binary(Bytes::from_static(b"t")), Value::Null)]),
        incomplete_unsettled: true,
        initial_delivery_count: Some(0),
        max_message_size: Some(u64::MAX),
        offered_capabilities: caps(),
        desired_capabilities: caps(),
        properties: Some(props()),
    }));
    perf_rt(Performative::Attach(Attach {
        name: "sender".into(),
        handle: 0,
        target: Some(AttachTarget::Node(Target {
            address: Some("q".into()),
            ..Default::default()
        })),
        source: Some(Source::default()),
        ..Default::default()
    }));
    perf_rt(Performative::Flow(Flow::default()));
    perf_rt(Performative::Flow(Flow {
        next_incoming_id: Some(u32::MAX),
        incoming_window: u32::MAX,
        next_outgoing_id: u32::MAX - 1,
        outgoing_window: 0,
        handle: Some(1),
        delivery_count: Some(u32::MAX),
        link_credit: Some(1000),
        available: Some(0),
        drain: true,
        echo: true,
        properties: Some(props()),
    }));
    perf_rt(Performative::Transfer(Transfer::default()));
    for state in [
        DeliveryState::Received {
            section_number: 1,
            section_offset: u64::MAX,
        },
        DeliveryState::Accepted,
        DeliveryState::Rejected { error: None },
        DeliveryState::Rejected {
            error: Some(error()),
        },
        DeliveryState::Released,
        DeliveryState::Modified {
            delivery_failed: Some(true),
            undeliverable_here: Some(false),
            message_annotations: Some(props()),
        },
        DeliveryState::Modified {
            delivery_failed: None,
            undeliverable_here: None,
            message_annotations: None,
        },
    ] {
        perf_rt(Performative::Transfer(Transfer {
            handle: 5,
            delivery_id: Some(u32::MAX),
            delivery_tag: Some(Bytes::from_static(&[0x33; 16])),
            message_format: Some(BATCH_MESSAGE_FORMAT),
            settled: Some(false),
            more: true,
            rcv_settle_mode: Some(ReceiverSettleMode::Second),
            state: Some(state.clone()),
            resume: true,
            aborted: true,
            batchable: true,
        }));
        perf_rt(Performative::Disposition(Disposition {
            role: Role::Receiver,
            first: u32::MAX,
            last: Some(0),
            settled: true,
            state: Some(state),
            batchable: true,
        }));
    }
    perf_rt(Performative::Disposition(Disposition::default()));
    perf_rt(Performative::Detach(Detach::default()));
    perf_rt(Performative::Detach(Detach {
        handle: 9,
        closed: true,
        error: Some(error()),
    }));
    perf_rt(Performative::End(End::default()));
    perf_rt(Performative::End(End {
        error: Some(error()),
    }));
    perf_rt(Performative::Close(Close::default()));
    perf_rt(Performative::Close(Close {
        error: Some(AmqpError {
            condition: "amqp:internal-error".into(),
            description: None,
            info: None,
        }),
    }));
}

#[test]
fn transfer_payload_is_zero_copy_and_round_trips() {
    let payload = Message::body_data(&[7u8; 1000]);
    let t = Performative::Transfer(Transfer {
        handle: 1,
        delivery_id: Some(0),
        delivery_tag: Some(Bytes::from_static(b"\x00\x00\x00\x01")),
        message_format: Some(0),
        ..Default::default()
    });
    let mut buf = BytesMut::new();
    encode_amqp_frame(0, &t, &payload, &mut buf);
    let bytes = buf.freeze();
    let (f, used) = decode_frame_bytes(&bytes, 65_536).unwrap().unwrap();
    assert_eq!(used, bytes.len());
    match f.body {
        FrameBody::Amqp {
            performative,
            payload: p,
        } => {
            assert_eq!(performative, t);
            assert_eq!(p, payload);
            // zero-copy: the payload points into the frame buffer
            let range = bytes.as_ptr() as usize..bytes.as_ptr() as usize + bytes.len();
            assert!(range.contains(&(p.as_ptr() as usize)));
        }
        other => panic!("{other:?}"),
    }
    frame_rt(
        0,
        FrameBody::Amqp {
            performative: t,
            payload,
        },
    );
}

#[test]
fn sasl_bodies_round_trip() {
    for b in [
        SaslFrameBody::Mechanisms(SaslMechanisms {
            mechanisms: vec!["MSSBCBS".into(), "ANONYMOUS".into()],
        }),
        SaslFrameBody::Mechanisms(SaslMechanisms { mechanisms: vec![] }),
        SaslFrameBody::Init(SaslInit {
            mechanism: "ANONYMOUS".into(),
            initial_response: None,
            hostname: None,
        }),
        SaslFrameBody::Init(SaslInit {
            mechanism: "ANONYMOUS".into(),
            initial_response: Some(Bytes::from_static(b"\x00key")),
            hostname: Some("ns.servicebus.windows.net".into()),
        }),
        SaslFrameBody::Challenge(Bytes::from_static(b"chal")),
        SaslFrameBody::Response(Bytes::new()),
        SaslFrameBody::Outcome(SaslOutcome {
            code: 0,
            additional_data: None,
        }),
        SaslFrameBody::Outcome(SaslOutcome {
            code: 4,
            additional_data: Some(Bytes::from_static(b"x")),
        }),
    ] {
        let mut buf = BytesMut::new();
        b.encode(&mut buf);
        assert_eq!(buf.len(), b.encoded_size());
        frame_rt(0, FrameBody::Sasl(b));
    }
}

#[test]
fn heartbeat() {
    let mut buf = BytesMut::new();
    encode_empty_frame(&mut buf);
    assert_eq!(&buf[..], &[0, 0, 0, 8, 2, 0, 0, 0]);
    let (f, n) = decode_frame(&buf, 512).unwrap().unwrap();
    assert_eq!(n, 8);
    assert_eq!(
        f,
        Frame {
            channel: 0,
            body: FrameBody::Empty
        }
    );
    frame_rt(5, FrameBody::Empty);
    // Two frames back to back: consumed only the first.
    let mut two = buf.clone();
    encode_empty_frame(&mut two);
    assert_eq!(decode_frame(&two, 512).unwrap().unwrap().1, 8);
}

#[test]
fn known_open_frame_bytes() {
    let open = Performative::Open(Open {
        container_id: "c".into(),
        hostname: Some("h".into()),
        max_frame_size: 65_536,
        channel_max: 255,
        ..Default::default()
    });
    let mut buf = BytesMut::new();
    encode_amqp_frame(0, &open, &[], &mut buf);
    let expected: &[u8] = &[
        0, 0, 0, 0x1c, 2, 0, 0, 0, // frame header
        0x00, 0x53, 0x10, // described open
        0xc0, 0x0f, 0x04, // list8 size 15 count 4
        0xa1, 1, b'c', // container-id
        0xa1, 1, b'h', // hostname
        0x70, 0, 1, 0, 0, // max-frame-size uint
        0x60, 0, 0xff, // channel-max ushort
    ];
    assert_eq!(&buf[..], expected);
    let (f, _) = decode_frame(expected, 512).unwrap().unwrap();
    assert_eq!(
        f.body,
        FrameBody::Amqp {
            performative: open,
            payload: Bytes::new()
        }
    );
}

#[test]
fn open_from_another_implementation() {
    // An open as a client might send it: symbolic descriptor, list32, wide
    // uint forms, nulls in the middle, single-symbol capabilities, trailing
    // unknown extra field.
    let mut body = vec![0x00, 0xa3, 14];
    body.extend_from_slice(b"amqp:open:list");
    let mut fields = vec![];
    fields.extend_from_slice(&[0xa1, 3, b'a', b'b', b'c']); // container-id
    fields.push(0x40); // hostname
    fields.extend_from_slice(&[0x70, 0, 0x10, 0, 0]); // max-frame-size 1 MiB
    fields.push(0x40); // channel-max (default)
    fields.extend_from_slice(&[0x70, 0, 0, 0xea, 0x60]); // idle 60000
    fields.push(0x40);
    fields.push(0x40);
    fields.extend_from_slice(&[0xa3, 1, b'x']); // offered caps: single symbol
    fields.push(0x40);
    fields.extend_from_slice(&[0xc1, 1, 0]); // empty properties map
    fields.push(0x41); // unknown 11th field
    body.push(0xd0);
    body.extend_from_slice(&((fields.len() + 4) as u32).to_be_bytes());
    body.extend_from_slice(&11u32.to_be_bytes());
    body.extend_from_slice(&fields);
    let mut frame = ((body.len() + 8) as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&[2, 0, 0, 0]);
    frame.extend_from_slice(&body);
    let (f, _) = decode_frame(&frame, 4096).unwrap().unwrap();
    let FrameBody::Amqp {
        performative: Performative::Open(o),
        ..
    } = f.body
    else {
        panic!()
    };
    assert_eq!(o.container_id, "abc");
    assert_eq!(o.hostname, None);
    assert_eq!(o.max_frame_size, 1 << 20);
    assert_eq!(o.channel_max, 65535);
    assert_eq!(o.idle_time_out, Some(60_000));
    assert_eq!(o.offered_capabilities, Some(vec![Symbol::from("x")]));
    assert_eq!(o.properties, Some(vec![]));
}

#[test]
fn known_sasl_mechanisms_bytes() {
    let body = FrameBody::Sasl(SaslFrameBody::Mechanisms(SaslMechanisms {
        mechanisms: vec!["MSSBCBS".into(), "ANONYMOUS".into()],
    }));
    let mut buf = BytesMut::new();
    encode_frame(0, &body, &mut buf);
    let mut expected: Vec<u8> = vec![
        0, 0, 0, 0x24, 2, 1, 0, 0, 0x00, 0x53, 0x40, 0xc0, 0x17, 0x01,
    ];
    expected.extend_from_slice(&[0xe0, 0x14, 0x02, 0xa3, 7]);
    expected.extend_from_slice(b"MSSBCBS");
    expected.push(9);
    expected.extend_from_slice(b"ANONYMOUS");
    assert_eq!(&buf[..], &expected[..]);
    let (f, _) = decode_frame(&expected, 512).unwrap().unwrap();
    assert_eq!(f.body, body);

    // A single symbol (not an array) is accepted too.
    let single: Vec<u8> = [
        &[
            0, 0, 0, 0x18, 2, 1, 0, 0, 0x00, 0x53, 0x40, 0xc0, 0x0b, 0x01, 0xa3, 8,
        ][..],
        b"MSSBCBS!",
    ]
    .concat();
    let (f, _) = decode_frame(&single, 512).unwrap().unwrap();
    assert_eq!(
        f.body,
        FrameBody::Sasl(SaslFrameBody::Mechanisms(SaslMechanisms {
            mechanisms: vec!["MSSBCBS!".into()]
        }))
    );
}

#[test]
fn protocol_headers() {
    assert_eq!(
        parse_protocol_header(&AMQP_HEADER),
        Ok(ProtocolHeader::Amqp)
    );
    assert_eq!(
        parse_protocol_header(&SASL_HEADER),
        Ok(ProtocolHeader::Sasl)
    );
    assert_eq!(
        parse_protocol_header(b"AMQP\x02\x01\x00\x00"),
        Ok(ProtocolHeader::Tls)
    );
    assert_eq!(
        parse_protocol_header(b"AMQP\x00\x01\x00\x01"),
        Err(DecodeError::InvalidProtocolHeader)
    );
    assert_eq!(
        parse_protocol_header(b"AMQP\x00\x00\x09\x01"),
        Err(DecodeError::InvalidProtocolHeader)
    );
    assert_eq!(
        parse_protocol_header(b"HTTP/1.1"),
        Err(DecodeError::InvalidProtocolHeader)
    );
    assert_eq!(
        parse_protocol_header(b"AMQP"),
        Err(DecodeError::InvalidProtocolHeader)
    );
}

fn amqp_frame(body: &[u8]) -> Vec<u8> {
    let mut f = ((body.len() + 8) as u32).to_be_bytes().to_vec();
    f.extend_from_slice(&[2, 0, 0, 0]);
    f.extend_from_slice(body);
    f
}

#[test]
fn malformed_frames() {
    // size < 8
    assert!(matches!(
        decode_frame(&[0, 0, 0, 7, 2, 0, 0, 0], 512),
        Err(DecodeError::InvalidFrame(_))
    ));
    assert!(matches!(
        decode_frame(&[0, 0, 0, 0], 512),
        Err(DecodeError::InvalidFrame(_))
    ));
    // too large, detected from the 4 size bytes alone
    assert_eq!(
        decode_frame(&[0, 1, 0, 0], 512),
        Err(DecodeError::FrameTooLarge {
            size: 65_536,
            max: 512
        })
    );
    // need more bytes
    assert_eq!(decode_frame(&[0, 0], 512), Ok(None));
    assert_eq!(decode_frame(&[0, 0, 0, 9, 2, 0, 0, 0], 512), Ok(None));
    // bad doff
    assert!(matches!(
        decode_frame(&[0, 0, 0, 8, 1, 0, 0, 0], 512),
        Err(DecodeError::InvalidFrame(_))
    ));
    assert!(matches!(
        decode_frame(&[0, 0, 0, 8, 0, 0, 0, 0], 512),
        Err(DecodeError::InvalidFrame(_))
    ));
    assert!(matches!(
        decode_frame(&[0, 0, 0, 8, 3, 0, 0, 0], 512),
        Err(DecodeError::InvalidFrame(_))
    ));
    // doff = 3 with a 4-byte extended header is fine (skipped)
    assert_eq!(
        decode_frame(&[0, 0, 0, 12, 3, 0, 0, 1, 9, 9, 9, 9], 512)
            .unwrap()
            .unwrap()
            .0,
        Frame {
            channel: 1,
            body: FrameBody::Empty
        }
    );
    // unknown frame type
    assert!(matches!(
        decode_frame(&[0, 0, 0, 8, 2, 7, 0, 0], 512),
        Err(DecodeError::InvalidFrame(_))
    ));
    // empty SASL frame
    assert!(decode_frame(&[0, 0, 0, 8, 2, 1, 0, 0], 512).is_err());
    // unknown performative code
    assert_eq!(
        decode_frame(&amqp_frame(&[0x00, 0x53, 0x19, 0x45]), 512),
        Err(DecodeError::UnknownPerformative(0x19))
    );
    assert_eq!(
        decode_frame(
            &[&[0, 0, 0, 12, 2, 1, 0, 0][..], &[0x00, 0x53, 0x45, 0x45]].concat(),
            512
        ),
        Err(DecodeError::UnknownPerformative(0x45))
    );
    // body not described
    assert!(decode_frame(&amqp_frame(&[0x45]), 512).is_err());
    // trailing bytes after a non-transfer performative
    let mut b = BytesMut::new();
    Performative::Close(Close::default()).encode(&mut b);
    b.extend_from_slice(&[0x40]);
    assert!(matches!(
        decode_frame(&amqp_frame(&b), 512),
        Err(DecodeError::InvalidFrame(_))
    ));
    // wrong field types: handle as string
    let bad = [0x00, 0x53, 0x16, 0xc0, 0x04, 0x01, 0xa1, 1, b'1'];
    assert_eq!(
        decode_frame(&amqp_frame(&bad), 512),
        Err(DecodeError::InvalidField {
            performative: "detach",
            field: "handle"
        })
    );
    // handle as ulong
    let bad = [0x00, 0x53, 0x16, 0xc0, 0x03, 0x01, 0x53, 1];
    assert!(matches!(
        decode_frame(&amqp_frame(&bad), 512),
        Err(DecodeError::InvalidField { .. })
    ));
    // missing mandatory handle
    assert_eq!(
        decode_frame(&amqp_frame(&[0x00, 0x53, 0x16, 0x45]), 512),
        Err(DecodeError::InvalidField {
            performative: "detach",
            field: "handle"
        })
    );
    // role as uint, settle mode out of range, tag as string
    let mut a = BytesMut::new();
    Performative::Attach(Attach {
        name: "n".into(),
        ..Default::default()
    })
    .encode(&mut a);
    let pos = a.iter().position(|&x| x == 0x42).unwrap(); // role=false
    let mut bad = a.to_vec();
    bad[pos] = 0x43;
    assert!(matches!(
        decode_frame(&amqp_frame(&bad), 512),
        Err(DecodeError::InvalidField { field: "role", .. })
    ));
    let mut bad = a.to_vec();
    bad[pos + 2] = 3; // snd-settle-mode ubyte value
    assert!(matches!(
        decode_frame(&amqp_frame(&bad), 512),
        Err(DecodeError::InvalidField {
            field: "snd-settle-mode",
            ..
        })
    ));
    let t = [
        0x00, 0x53, 0x14, 0xc0, 0x06, 0x03, 0x43, 0x43, 0xa1, 1, b'x',
    ];
    assert!(matches!(
        decode_frame(&amqp_frame(&t), 512),
        Err(DecodeError::InvalidField {
            field: "delivery-tag",
            ..
        })
    ));
    // unknown delivery state in disposition
    let d = [
        0x00, 0x53, 0x15, 0xc0, 0x09, 0x05, 0x41, 0x43, 0x40, 0x41, 0x00, 0x53, 0x38, 0x45,
    ];
    assert!(matches!(
        decode_frame(&amqp_frame(&d), 512),
        Err(DecodeError::InvalidField { field: "state", .. })
    ));
    // list size lies
    let lie = [0x00, 0x53, 0x17, 0xc0, 0x05, 0x00, 0x40];
    assert!(decode_frame(&amqp_frame(&lie), 512).is_err());
}

#[test]
fn symbolic_descriptors_and_single_symbol_caps() {
    // attach with amqp:source:list symbolic descriptor and a single-symbol capability.
    let mut src = vec![0x00, 0xa3, 16];
    src.extend_from_slice(b"amqp:source:list");
    src.extend_from_slice(&[
        0xc0, 0x10, 0x0b, 0xa1, 1, b'q', 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40, 0x40,
        0xa3, 1, b'c',
    ]);
    let mut attach = vec![0x00, 0x53, 0x12];
    let mut fields = vec![0xa1, 1, b'n', 0x43, 0x41, 0x50, 0, 0x50, 1];
    fields.extend_from_slice(&src);
    attach.push(0xc0);
    attach.push((fields.len() + 1) as u8);
    attach.push(6);
    attach.extend_from_slice(&fields);
    let (f, _) = decode_frame(&amqp_frame(&attach), 512).unwrap().unwrap();
    let FrameBody::Amqp {
        performative: Performative::Attach(a),
        ..
    } = f.body
    else {
        panic!()
    };
    assert_eq!(a.role, Role::Receiver);
    assert_eq!(a.snd_settle_mode, SenderSettleMode::Unsettled);
    assert_eq!(a.rcv_settle_mode, ReceiverSettleMode::Second);
    let s = a.source.unwrap();
    assert_eq!(s.address.as_deref(), Some("q"));
    assert_eq!(s.capabilities, Some(vec![Symbol::from("c")]));
}

#[test]
fn encodes_exact_field_types() {
    let t = Performative::Transfer(Transfer {
        handle: 300,
        delivery_id: Some(1),
        delivery_tag: Some(Bytes::from_static(b"ab")),
        message_format: Some(BATCH_MESSAGE_FORMAT),
        settled: Some(true),
        ..Default::default()
    });
    let mut b = BytesMut::new();
    t.encode(&mut b);
    assert_eq!(
        &b[..],
        &[
            0x00, 0x53, 0x14, 0xc0, 0x12, 0x05, 0x70, 0, 0, 1, 0x2c, 0x52, 1, 0xa0, 2, b'a', b'b',
            0x70, 0x80, 0x01, 0x37, 0x00, 0x41
        ]
    );
    let d = Performative::Disposition(Disposition {
        role: Role::Receiver,
        first: 0,
        last: None,
        settled: true,
        state: Some(DeliveryState::Accepted),
        batchable: false,
    });
    let mut b = BytesMut::new();
    d.encode(&mut b);
    assert_eq!(
        &b[..],
        &[
            0x00, 0x53, 0x15, 0xc0, 0x09, 0x05, 0x41, 0x43, 0x40, 0x41, 0x00, 0x53, 0x24, 0x45
        ]
    );
    let a = Performative::Attach(Attach {
        name: "n".into(),
        handle: 0,
        role: Role::Sender,
        max_message_size: Some(262_144),
        ..Default::default()
    });
    let mut b = BytesMut::new();
    a.encode(&mut b);
    let tail = &b[b.len() - 9..];
    assert_eq!(tail, &[0x80, 0, 0, 0, 0, 0, 4, 0, 0]); // ulong max-message-size
    assert!(b.windows(4).any(|w| w == [0x42, 0x50, 2, 0x50])); // role false, ubyte modes
    let e = Performative::Detach(Detach {
        handle: 1,
        closed: true,
        error: Some(AmqpError::new("amqp:x", "d")),
    });
    let mut b = BytesMut::new();
    e.encode(&mut b);
    assert!(b.windows(3).any(|w| w == [0x00, 0x53, 0x1d]));
    let s = Attach {
        source: Some(Source::default()),
        target: Some(AttachTarget::default()),
        ..Default::default()
    };
    let mut b = BytesMut::new();
    Performative::Attach(s).encode(&mut b);
    assert!(b.windows(3).any(|w| w == [0x00, 0x53, 0x28]));
    assert!(b.windows(3).any(|w| w == [0x00, 0x53, 0x29]));
}

#[test]
fn serial_numbers_near_wrap() {
    for v in [u32::MAX, u32::MAX - 1, 0, 1, 0x7fff_ffff, 0x8000_0000] {
        perf_rt(Performative::Flow(Flow {
            next_incoming_id: Some(v),
            incoming_window: v,
            next_outgoing_id: v,
            outgoing_window: v,
            handle: Some(v),
            delivery_count: Some(v.wrapping_add(1)),
            link_credit: Some(v),
            available: Some(v),
            ..Default::default()
        }));
        perf_rt(Performative::Disposition(Disposition {
            role: Role::Sender,
            first: v,
            last: Some(v.wrapping_add(5)),
            ..Default::default()
        }));
    }
}

#[test]
fn truncated_frames_never_panic() {
    let mut buf = BytesMut::new();
    encode_amqp_frame(
        1,
        &Performative::Transfer(Transfer {
            handle: 1,
            delivery_id: Some(2),
            delivery_tag: Some(Bytes::from_static(b"tag")),
            state: Some(DeliveryState::Rejected {
                error: Some(error()),
            }),
            ..Default::default()
        }),
        b"payload",
        &mut buf,
    );
    for i in 0..buf.len() {
        assert!(!matches!(decode_frame(&buf[..i], 512), Ok(Some(_))));
        // Lying about the size: the frame is cut short but claims to be complete.
        let mut cut = buf[..i.max(8)].to_vec();
        let n = cut.len() as u32;
        cut[..4].copy_from_slice(&n.to_be_bytes());
        let _ = decode_frame(&cut, 512);
    }
}
