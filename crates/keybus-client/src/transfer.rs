//! Writing deliveries as transfer frames, split to the peer's frame size.

use keybus_amqp::{Bytes, BytesMut, DeliveryState, Performative, Transfer};

use crate::workload::MessageTemplate;

/// Message format of an ordinary message.
pub(crate) const FORMAT_MESSAGE: u32 = 0;

/// Write one delivery (split into frames of at most `max_frame` bytes); returns the frame count.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_transfer(
    out: &mut BytesMut,
    format: u32,
    channel: u16,
    handle: u32,
    delivery_id: u32,
    tag: u64,
    payload: &[u8],
    max_frame: usize,
    state: Option<DeliveryState>,
) -> u32 {
    let first = Transfer {
        handle,
        delivery_id: Some(delivery_id),
        delivery_tag: Some(Bytes::copy_from_slice(&tag.to_be_bytes())),
        message_format: Some(format),
        state,
        ..Default::default()
    };
    let overhead = 8 + Performative::Transfer(first.clone()).encoded_size() + 2;
    if payload.len() + overhead <= max_frame {
        keybus_amqp::encode_amqp_frame(channel, &Performative::Transfer(first), payload, out);
        return 1;
    }
    let chunk = max_frame.saturating_sub(overhead).max(1);
    let mut frames = 0;
    let mut rest = payload;
    let mut t = first;
    loop {
        let n = chunk.min(rest.len());
        let (head, tail) = rest.split_at(n);
        t.more = !tail.is_empty();
        keybus_amqp::encode_amqp_frame(channel, &Performative::Transfer(t.clone()), head, out);
        frames += 1;
        rest = tail;
        if rest.is_empty() {
            return frames;
        }
        t = Transfer {
            handle,
            ..Default::default()
        };
    }
}

/// Write message `seq` of `template` as one delivery, without an intermediate copy when it
/// fits one frame.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_templated_transfer(
    out: &mut BytesMut,
    channel: u16,
    handle: u32,
    delivery_id: u32,
    tag: u64,
    template: &MessageTemplate,
    seq: u64,
    max_frame: usize,
) -> u32 {
    // transfer performative is < 40 bytes for these fields.
    if template.len() + 8 + 48 <= max_frame {
        let t = Transfer {
            handle,
            delivery_id: Some(delivery_id),
            delivery_tag: Some(Bytes::copy_from_slice(&tag.to_be_bytes())),
            message_format: Some(0),
            ..Default::default()
        };
        let start = out.len();
        keybus_amqp::encode_amqp_frame(channel, &Performative::Transfer(t), &[], out);
        template.write(seq, out);
        let size = u32::try_from(out.len() - start).unwrap_or(u32::MAX);
        if let Some(h) = out.get_mut(start..start + 4) {
            h.copy_from_slice(&size.to_be_bytes());
        }
        return 1;
    }
    let mut payload = BytesMut::with_capacity(template.len());
    template.write(seq, &mut payload);
    write_transfer(
        out,
        FORMAT_MESSAGE,
        channel,
        handle,
        delivery_id,
        tag,
        &payload,
        max_frame,
        None,
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use keybus_amqp::FrameBody;

    #[test]
    fn split_transfer() {
        let mut out = BytesMut::new();
        let payload = vec![7u8; 3000];
        let n = write_transfer(&mut out, FORMAT_MESSAGE, 3, 0, 9, 1, &payload, 1024, None);
        assert!(n >= 3);
        let mut buf = out.freeze();
        let mut got = Vec::new();
        while !buf.is_empty() {
            let (f, used) = keybus_amqp::decode_frame_bytes(&buf, 1024)
                .unwrap()
                .unwrap();
            if let FrameBody::Amqp { payload, .. } = f.body {
                got.extend_from_slice(&payload);
            }
            buf = buf.slice(used..);
        }
        assert_eq!(got, payload);
    }
}
