//! Protocol headers and frames (AMQP 1.0 §2.2, §2.3).

use bytes::{BufMut, Bytes, BytesMut};

use crate::performative::Performative;
use crate::sasl::SaslFrameBody;
use crate::{Dec, DecodeError};

type Result<T> = std::result::Result<T, DecodeError>;

pub const AMQP_HEADER: [u8; 8] = *b"AMQP\x00\x01\x00\x00";
pub const SASL_HEADER: [u8; 8] = *b"AMQP\x03\x01\x00\x00";
pub const TLS_HEADER: [u8; 8] = *b"AMQP\x02\x01\x00\x00";

/// Frame type byte of AMQP frames.
pub const FRAME_TYPE_AMQP: u8 = 0;
/// Frame type byte of SASL frames.
pub const FRAME_TYPE_SASL: u8 = 1;
/// The smallest `max-frame-size` a peer may announce.
pub const MIN_MAX_FRAME_SIZE: u32 = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProtocolHeader {
    Amqp,
    Sasl,
    Tls,
}

impl ProtocolHeader {
    pub fn bytes(self) -> [u8; 8] {
        match self {
            ProtocolHeader::Amqp => AMQP_HEADER,
            ProtocolHeader::Sasl => SASL_HEADER,
            ProtocolHeader::Tls => TLS_HEADER,
        }
    }
}

/// Parse an 8-byte protocol header (only the first 8 bytes of `b` are
/// looked at); `Err(InvalidProtocolHeader)` for anything else, including
/// fewer than 8 bytes or a version other than 1.0.0.
pub fn parse_protocol_header(b: &[u8]) -> Result<ProtocolHeader> {
    match b.get(..8) {
        Some(h) if h == AMQP_HEADER => Ok(ProtocolHeader::Amqp),
        Some(h) if h == SASL_HEADER => Ok(ProtocolHeader::Sasl),
        Some(h) if h == TLS_HEADER => Ok(ProtocolHeader::Tls),
        _ => Err(DecodeError::InvalidProtocolHeader),
    }
}

#[derive(Debug, Clone, PartialEq)]
// The variants are part of the public API; boxing would change it.
#[allow(clippy::large_enum_variant)]
pub enum FrameBody {
    /// An AMQP frame without body (heartbeat).
    Empty,
    Amqp {
        performative: Performative,
        /// Transfer payload; empty for other performatives.
        payload: Bytes,
    },
    Sasl(SaslFrameBody),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Frame {
    pub channel: u16,
    pub body: FrameBody,
}

/// Decode one frame from the front of `buf`. `Ok(None)` = need more bytes,
/// `Ok(Some((frame, consumed)))` otherwise. The transfer payload is copied;
/// see [`decode_frame_bytes`] for the zero-copy variant.
pub fn decode_frame(buf: &[u8], max_frame_size: u32) -> Result<Option<(Frame, usize)>> {
    decode_impl(buf, None, max_frame_size)
}

/// Like [`decode_frame`], but binary fields and the transfer payload are
/// zero-copy slices of `buf`.
pub fn decode_frame_bytes(buf: &Bytes, max_frame_size: u32) -> Result<Option<(Frame, usize)>> {
    decode_impl(buf.as_ref(), Some(buf), max_frame_size)
}

/// The size of the frame at the front of `buf`, once its 4 size bytes are there.
pub fn peek_frame_size(buf: &[u8]) -> Option<u32> {
    let h: [u8; 4] = buf.get(..4)?.try_into().ok()?;
    Some(u32::from_be_bytes(h))
}

fn decode_impl(buf: &[u8], src: Option<&Bytes>, max: u32) -> Result<Option<(Frame, usize)>> {
    let Some(size) = peek_frame_size(buf) else {
        return Ok(None);
    };
    if size < 8 {
        return Err(DecodeError::InvalidFrame(format!(
            "frame size {size} is less than 8"
        )));
    }
    if size > max {
        return Err(DecodeError::FrameTooLarge { size, max });
    }
    let size = size as usize;
    let Some(frame) = buf.get(..size) else {
        return Ok(None);
    };
    let (doff, ftype, channel) = match frame.get(4..8) {
        Some(&[d, t, c0, c1]) => (d, t, u16::from_be_bytes([c0, c1])),
        _ => return Err(DecodeError::UnexpectedEof { offset: 4 }),
    };
    if doff < 2 {
        return Err(DecodeError::InvalidFrame(format!(
            "data offset {doff} is less than 2"
        )));
    }
    let body_start = usize::from(doff) * 4;
    if body_start > size {
        return Err(DecodeError::InvalidFrame(format!(
            "data offset {doff} points beyond the frame size {size}"
        )));
    }
    let body_slice = frame.get(body_start..).unwrap_or_default();
    let owned;
    let mut dec = match src {
        Some(b) => {
            owned = b.slice(body_start..size);
            Dec::with_bytes(&owned)
        }
        None => Dec::new(body_slice),
    };
    let body = match ftype {
        FRAME_TYPE_AMQP => {
            if dec.is_empty() {
                FrameBody::Empty
            } else {
                let performative = Performative::decode_from(&mut dec)?;
                let payload = if matches!(performative, Performative::Transfer(_)) {
                    dec.rest_bytes()?
                } else if !dec.is_empty() {
                    return Err(DecodeError::InvalidFrame(format!(
                        "{} trailing bytes after {}",
                        dec.remaining(),
                        performative.name()
                    )));
                } else {
                    Bytes::new()
                };
                FrameBody::Amqp {
                    performative,
                    payload,
                }
            }
        }
        FRAME_TYPE_SASL => {
            if dec.is_empty() {
                return Err(DecodeError::InvalidFrame("empty SASL frame".into()));
            }
            let b = SaslFrameBody::decode_from(&mut dec)?;
            if !dec.is_empty() {
                return Err(DecodeError::InvalidFrame(format!(
                    "{} trailing bytes after SASL body",
                    dec.remaining()
                )));
            }
            FrameBody::Sasl(b)
        }
        t => return Err(DecodeError::InvalidFrame(format!("unknown frame type {t}"))),
    };
    Ok(Some((Frame { channel, body }, size)))
}

fn begin_frame(buf: &mut BytesMut, ftype: u8, channel: u16) -> usize {
    let start = buf.len();
    buf.put_u32(0);
    buf.put_slice(&[2, ftype]);
    buf.put_u16(channel);
    start
}

fn finish_frame(buf: &mut BytesMut, start: usize) {
    let size = (buf.len() - start) as u32;
    if let Some(h) = buf.get_mut(start..start + 4) {
        h.copy_from_slice(&size.to_be_bytes());
    }
}

/// Append a frame: size, doff = 2, type 0 (AMQP, also for `Empty`) or 1 (SASL).
pub fn encode_frame(channel: u16, body: &FrameBody, buf: &mut BytesMut) {
    match body {
        FrameBody::Empty => {
            let start = begin_frame(buf, FRAME_TYPE_AMQP, channel);
            finish_frame(buf, start);
        }
        FrameBody::Amqp {
            performative,
            payload,
        } => encode_amqp_frame(channel, performative, payload, buf),
        FrameBody::Sasl(b) => {
            buf.reserve(8 + b.encoded_size());
            let start = begin_frame(buf, FRAME_TYPE_SASL, channel);
            b.encode(buf);
            finish_frame(buf, start);
        }
    }
}

/// Append an AMQP frame carrying `performative` followed by `payload`.
pub fn encode_amqp_frame(
    channel: u16,
    performative: &Performative,
    payload: &[u8],
    buf: &mut BytesMut,
) {
    buf.reserve(8 + 64 + payload.len());
    let start = begin_frame(buf, FRAME_TYPE_AMQP, channel);
    performative.encode(buf);
    buf.put_slice(payload);
    finish_frame(buf, start);
}

/// Append an AMQP frame whose payload `write` appends after the performative (so a payload
/// is encoded straight into the output, not copied there).
pub fn encode_amqp_frame_with(
    channel: u16,
    performative: &Performative,
    buf: &mut BytesMut,
    write: impl FnOnce(&mut BytesMut),
) {
    let start = begin_frame(buf, FRAME_TYPE_AMQP, channel);
    performative.encode(buf);
    write(buf);
    finish_frame(buf, start);
}

/// Append an empty (heartbeat) frame on channel 0.
pub fn encode_empty_frame(buf: &mut BytesMut) {
    buf.put_slice(&[0, 0, 0, 8, 2, 0, 0, 0]);
}
