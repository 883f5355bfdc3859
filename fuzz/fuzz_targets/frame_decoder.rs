//! Fuzz the frame and message decoders: arbitrary bytes must never panic,
//! and whatever decodes must re-encode to something that decodes the same.
#![no_main]

use keybus_amqp::{
    Bytes, BytesMut, Message, Value, decode_frame, decode_frame_bytes, encode_frame,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((frame, used))) = decode_frame(data, u32::MAX) {
        assert!(used <= data.len());
        let mut buf = BytesMut::new();
        encode_frame(frame.channel, &frame.body, &mut buf);
        let again = decode_frame(&buf, u32::MAX);
        assert!(
            matches!(again, Ok(Some(_))),
            "re-encoded frame does not decode"
        );
    }
    let bytes = Bytes::copy_from_slice(data);
    let _ = decode_frame_bytes(&bytes, 512);
    let mut input = data;
    let _ = Value::decode(&mut input);
    if let Ok(msg) = Message::decode(&bytes) {
        let _ = msg.data_sections();
        let _ = msg.amqp_value();
        let mut buf = BytesMut::new();
        msg.encode(&mut buf);
        assert_eq!(buf.len(), msg.encoded_size());
        let back = Message::decode(&buf.freeze());
        assert!(back.is_ok(), "re-encoded message does not decode");
    }
});
