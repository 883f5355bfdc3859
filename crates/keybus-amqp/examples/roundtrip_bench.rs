//! Rough CPU cost of one 1 KB message through the codec, end to end:
//! decode transfer frame -> decode message -> re-encode message -> encode
//! transfer frame -> decode disposition. Run with
//! `cargo run --release -p keybus-amqp --example roundtrip_bench`.

use std::hint::black_box;
use std::time::Instant;

use keybus_amqp::*;

fn main() {
    let msg = Message {
        header: Some(Header {
            ttl: Some(60_000),
            ..Default::default()
        }),
        message_annotations: Some(vec![(
            Value::symbol("x-opt-partition-key"),
            Value::String("pk".into()),
        )]),
        properties: Some(Properties {
            message_id: Some(Value::String("3f2504e0-4f89-11d3-9a0c-0305e82c3301".into())),
            content_type: Some("application/json".into()),
            creation_time: Some(1_700_000_000_000),
            absolute_expiry_time: Some(1_700_000_060_000),
            ..Default::default()
        }),
        application_properties: Some(vec![
            (
                Value::String("tenant".into()),
                Value::String("contoso".into()),
            ),
            (Value::String("n".into()), Value::Int(42)),
        ]),
        body_raw: Message::body_data(&[b'x'; 1024]),
        ..Default::default()
    };
    let transfer = Performative::Transfer(Transfer {
        handle: 0,
        delivery_id: Some(12345),
        delivery_tag: Some(Bytes::from_static(&[1; 16])),
        message_format: Some(0),
        ..Default::default()
    });
    let mut wire = BytesMut::new();
    encode_amqp_frame(1, &transfer, &msg.to_bytes(), &mut wire);
    let wire = wire.freeze();
    let disp = Performative::Disposition(Disposition {
        role: Role::Receiver,
        first: 12345,
        settled: true,
        state: Some(DeliveryState::Accepted),
        ..Default::default()
    });
    let mut disp_wire = BytesMut::new();
    encode_amqp_frame(1, &disp, &[], &mut disp_wire);

    let n = 200_000;
    let mut out = BytesMut::with_capacity(4096);
    let start = Instant::now();
    for i in 0..n {
        out.clear();
        let Ok(Some((frame, _))) = decode_frame_bytes(&wire, u32::MAX) else {
            return;
        };
        let FrameBody::Amqp { payload, .. } = frame.body else {
            return;
        };
        let Ok(mut m) = Message::decode(&payload) else {
            return;
        };
        if let Some(h) = m.header.as_mut() {
            h.delivery_count = Some(i);
        }
        let mut body = BytesMut::with_capacity(m.encoded_size());
        m.encode(&mut body);
        let t = Performative::Transfer(Transfer {
            handle: 3,
            delivery_id: Some(i),
            delivery_tag: Some(Bytes::from_static(&[2; 16])),
            message_format: Some(0),
            ..Default::default()
        });
        encode_amqp_frame(2, &t, &body, &mut out);
        let d = decode_frame(&disp_wire, u32::MAX);
        let _ = black_box((&out, d));
    }
    let per = start.elapsed() / n;
    println!(
        "{} byte transfer, end to end: {per:?} per message",
        wire.len()
    );
}
