//! The on-disk format of the embedded backend: keys and the hand-written record encoding.
//!
//! Keyspaces (fjall column families), all written in one atomic batch per group commit:
//! - `meta`: `format_version` → `u32` big-endian ([`FORMAT_VERSION`]).
//! - `entities`: lower-case entity path → `EntityDefinition` as JSON.
//! - `sequences`: lower-case entity path → next sequence number, `i64` big-endian.
//! - `messages`: `entity 0x00 sub seq` → record (see [`encode_record`]). `sub` is one byte
//!   (0 main, 1 dead-letter; the transfer dead-letter queue shares the dead-letter set, as in
//!   the core), `seq` is the sequence number as big-endian `u64` with the sign bit flipped, so
//!   keys of one entity and sub-queue sort in sequence order.
//! - `bodies`: `topic 0x00 seq` → an AMQP-encoded message a topic stores once for the
//!   subscription records that refer to it (flag 4 in the record, followed by the topic's name
//!   in place of the message).
//! - `sessions`: `entity 0x00 session-id` → last update time (`i64` big-endian) then the
//!   session state bytes. An empty state is never stored (setting it removes the key). Entity paths never contain a NUL
//!   (control characters are forbidden), so `entity 0x00` is an exact prefix of one entity.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use keybus_amqp::Message;
use keybus_core::queue::message_id_key;
use keybus_core::{MessageRecord, MessageState, MessageSummary, SessionRecord, SubQueue};

/// Version of the whole on-disk layout, written at creation and checked on open.
pub const FORMAT_VERSION: u32 = 1;

/// Key of the format version in the `meta` keyspace.
pub(crate) const FORMAT_VERSION_KEY: &[u8] = b"format_version";

/// Version byte leading every stored message record.
const RECORD_VERSION: u8 = 1;

/// version, flags, state, seq, enqueued, delivery count, size, scheduled, expires.
const RECORD_HEADER_LEN: usize = 1 + 1 + 1 + 8 + 8 + 4 + 4 + 8 + 8;
const FLAG_SCHEDULED: u8 = 1;
const FLAG_EXPIRES: u8 = 2;
/// The message is the body of a topic (named after the header), stored once in `bodies`.
const FLAG_SHARED_BODY: u8 = 4;

/// Sub-queue byte: 0 main, 1 dead-letter (transfer dead-letter included).
pub(crate) fn sub_byte(sub: SubQueue) -> u8 {
    match sub {
        SubQueue::Main => 0,
        SubQueue::DeadLetter | SubQueue::TransferDeadLetter => 1,
    }
}

/// Sequence number as an order-preserving big-endian key part.
fn seq_key(seq: i64) -> [u8; 8] {
    ((seq as u64) ^ (1 << 63)).to_be_bytes()
}

fn seq_from_key(b: [u8; 8]) -> i64 {
    (u64::from_be_bytes(b) ^ (1 << 63)) as i64
}

/// `entity 0x00`: the prefix of every message key of `entity`.
pub(crate) fn entity_prefix(buf: &mut Vec<u8>, entity: &str) {
    buf.clear();
    buf.extend_from_slice(entity.as_bytes());
    buf.push(0);
}

/// The key of one session's state, written into `buf` (cleared first).
pub(crate) fn session_key(buf: &mut Vec<u8>, entity: &str, session: &str) {
    entity_prefix(buf, entity);
    buf.extend_from_slice(session.as_bytes());
}

/// Decode a stored session state from its key suffix (the session id) and value.
pub(crate) fn decode_session(id: &[u8], value: &[u8]) -> Result<SessionRecord, String> {
    let session_id = std::str::from_utf8(id)
        .map_err(|_| "session id is not UTF-8".to_string())?
        .to_string();
    let (time, state) = value
        .split_first_chunk::<8>()
        .ok_or_else(|| format!("session '{session_id}' value is too short"))?;
    Ok(SessionRecord {
        session_id,
        state: Bytes::copy_from_slice(state),
        updated: i64::from_be_bytes(*time),
    })
}

/// The key of one message, written into `buf` (cleared first).
pub(crate) fn message_key(buf: &mut Vec<u8>, entity: &str, sub: SubQueue, seq: i64) {
    entity_prefix(buf, entity);
    buf.push(sub_byte(sub));
    buf.extend_from_slice(&seq_key(seq));
}

/// Split the part of a message key after `entity 0x00` into (sub byte, sequence number).
pub(crate) fn parse_message_key_suffix(suffix: &[u8]) -> Result<(u8, i64), String> {
    match suffix {
        [sub, rest @ ..] if rest.len() == 8 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(rest);
            Ok((*sub, seq_from_key(b)))
        }
        _ => Err(format!(
            "message key suffix has {} bytes, expected 9",
            suffix.len()
        )),
    }
}

/// What follows a record's header: the message, or the name of the topic whose body it is.
pub(crate) enum Tail<'a> {
    Message(&'a Message),
    Owner(&'a str),
    /// The tail of a stored record (a record put without its body keeps the stored one).
    Stored(&'a [u8]),
}

/// Encode a record into `buf` (cleared first): version byte, flags, state, then the fixed
/// big-endian fields, then the AMQP-encoded message. `None` if the record has no body
/// ([`MessageRecord::message`]) and refers to no topic body: see [`encode_record_over`].
pub(crate) fn encode_record(buf: &mut BytesMut, rec: &MessageRecord) -> Option<()> {
    let tail = match (&rec.body_owner, &rec.message) {
        (Some(owner), _) => Tail::Owner(owner),
        (None, Some(m)) => Tail::Message(m),
        (None, None) => return None,
    };
    encode_with_tail(buf, rec, tail, rec.body_owner.is_some());
    Some(())
}

/// Encode a record without its body over the `stored` value of the same key: the broker
/// state from `rec`, the message (or topic reference) from `stored`.
pub(crate) fn encode_record_over(
    buf: &mut BytesMut,
    rec: &MessageRecord,
    stored: &[u8],
) -> Result<(), String> {
    if stored.len() < RECORD_HEADER_LEN {
        return Err(format!(
            "stored record {} has {} bytes, shorter than its header",
            rec.sequence_number,
            stored.len()
        ));
    }
    let shared = stored[1] & FLAG_SHARED_BODY != 0;
    encode_with_tail(buf, rec, Tail::Stored(&stored[RECORD_HEADER_LEN..]), shared);
    Ok(())
}

fn encode_with_tail(buf: &mut BytesMut, rec: &MessageRecord, tail: Tail<'_>, shared: bool) {
    buf.clear();
    let mut flags = 0;
    if rec.scheduled_time.is_some() {
        flags |= FLAG_SCHEDULED;
    }
    if rec.expires_at.is_some() {
        flags |= FLAG_EXPIRES;
    }
    if shared {
        flags |= FLAG_SHARED_BODY;
    }
    buf.reserve(RECORD_HEADER_LEN + rec.size as usize);
    buf.put_u8(RECORD_VERSION);
    buf.put_u8(flags);
    buf.put_u8(rec.state as u8);
    buf.put_i64(rec.sequence_number);
    buf.put_i64(rec.enqueued_time);
    buf.put_u32(rec.delivery_count);
    buf.put_u32(rec.size);
    buf.put_i64(rec.scheduled_time.unwrap_or(0));
    buf.put_i64(rec.expires_at.unwrap_or(0));
    match tail {
        Tail::Owner(owner) => buf.extend_from_slice(owner.as_bytes()),
        Tail::Message(m) => m.encode(buf),
        Tail::Stored(bytes) => buf.extend_from_slice(bytes),
    }
}

/// The key of a topic's stored body (same layout as a message key, without the sub byte).
pub(crate) fn body_key(buf: &mut Vec<u8>, topic: &str, seq: i64) {
    entity_prefix(buf, topic);
    buf.extend_from_slice(&seq_key(seq));
}

/// The sequence number of a body key's suffix (after `topic 0x00`).
pub(crate) fn parse_body_key_suffix(suffix: &[u8]) -> Result<i64, String> {
    let b: [u8; 8] = suffix
        .try_into()
        .map_err(|_| format!("body key suffix has {} bytes, expected 8", suffix.len()))?;
    Ok(seq_from_key(b))
}

/// The encoded size of the message of a stored record value (0 if it is too short).
pub(crate) fn record_size(bytes: &[u8]) -> u32 {
    // version, flags, state, seq, enqueued, delivery count, then the size.
    const AT: usize = 1 + 1 + 1 + 8 + 8 + 4;
    bytes
        .get(AT..AT + 4)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_be_bytes)
}

/// The message part of a stored record value, if it holds one (not a topic reference).
pub(crate) fn record_message(bytes: &[u8]) -> Result<Option<Arc<Message>>, String> {
    if bytes.len() < RECORD_HEADER_LEN {
        return Err(format!(
            "record has {} bytes, shorter than its header",
            bytes.len()
        ));
    }
    if bytes[1] & FLAG_SHARED_BODY != 0 {
        return Ok(None);
    }
    decode_body(&bytes[RECORD_HEADER_LEN..]).map(Some)
}

/// The topic a stored record value refers to for its body, if any.
pub(crate) fn record_owner(bytes: &[u8]) -> Option<&str> {
    if bytes.len() < RECORD_HEADER_LEN || bytes[1] & FLAG_SHARED_BODY == 0 {
        return None;
    }
    std::str::from_utf8(&bytes[RECORD_HEADER_LEN..]).ok()
}

/// Decode a stored body.
pub(crate) fn decode_body(bytes: &[u8]) -> Result<Arc<Message>, String> {
    Message::decode(&Bytes::copy_from_slice(bytes))
        .map(Arc::new)
        .map_err(|e| e.to_string())
}

fn take<const N: usize>(input: &mut &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    if input.len() >= N {
        out.copy_from_slice(&input[..N]);
        *input = &input[N..];
    }
    out
}

/// Decode a record written by [`encode_record`]. A record that refers to a topic's body comes
/// back without a message (the caller reads the body); otherwise its message is decoded for
/// the summary (and its duplicate-detection key if `with_id`) and kept if `keep_body`.
pub(crate) fn decode_record(
    bytes: &[u8],
    keep_body: bool,
    with_id: bool,
) -> Result<(MessageRecord, Option<String>), String> {
    if bytes.len() < RECORD_HEADER_LEN {
        return Err(format!(
            "record has {} bytes, shorter than its header",
            bytes.len()
        ));
    }
    let mut input = bytes;
    let [version, flags, state] = take::<3>(&mut input);
    if version != RECORD_VERSION {
        return Err(format!("unknown record version {version}"));
    }
    let state = MessageState::from_i32(i32::from(state))
        .ok_or_else(|| format!("unknown message state {state}"))?;
    let sequence_number = i64::from_be_bytes(take(&mut input));
    let enqueued_time = i64::from_be_bytes(take(&mut input));
    let delivery_count = u32::from_be_bytes(take(&mut input));
    let size = u32::from_be_bytes(take(&mut input));
    let scheduled = i64::from_be_bytes(take(&mut input));
    let expires = i64::from_be_bytes(take(&mut input));
    let (message, summary, body_owner, id) = if flags & FLAG_SHARED_BODY != 0 {
        let owner = std::str::from_utf8(input)
            .map_err(|_| format!("body owner of sequence number {sequence_number} is not UTF-8"))?;
        // The caller fills in the message and summary from the owner's body.
        (
            None,
            MessageSummary::default(),
            Some(Arc::from(owner)),
            None,
        )
    } else {
        let m = Message::decode(&Bytes::copy_from_slice(input))
            .map_err(|e| format!("message of sequence number {sequence_number}: {e}"))?;
        let summary = MessageSummary::of(&m);
        let id = if with_id { message_id_key(&m) } else { None };
        (keep_body.then(|| Arc::new(m)), summary, None, id)
    };
    let record = MessageRecord {
        sequence_number,
        enqueued_time,
        state,
        delivery_count,
        scheduled_time: (flags & FLAG_SCHEDULED != 0).then_some(scheduled),
        expires_at: (flags & FLAG_EXPIRES != 0).then_some(expires),
        message,
        summary,
        size,
        body_owner,
    };
    Ok((record, id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_keys_sort_in_numeric_order() {
        let seqs = [i64::MIN, -5, -1, 0, 1, 2, 255, 256, 1 << 40, i64::MAX];
        for w in seqs.windows(2) {
            assert!(seq_key(w[0]) < seq_key(w[1]), "{} < {}", w[0], w[1]);
        }
        for s in seqs {
            assert_eq!(seq_from_key(seq_key(s)), s);
        }
    }

    #[test]
    fn message_keys_of_one_entity_share_an_exact_prefix() {
        let mut a = Vec::new();
        let mut ab = Vec::new();
        let mut p = Vec::new();
        message_key(&mut a, "a", SubQueue::Main, 1);
        message_key(&mut ab, "ab", SubQueue::Main, 1);
        entity_prefix(&mut p, "a");
        assert!(a.starts_with(&p));
        assert!(!ab.starts_with(&p));
        assert_eq!(parse_message_key_suffix(&a[p.len()..]), Ok((0, 1)));
    }

    #[test]
    fn truncated_record_is_rejected() {
        assert!(decode_record(&[1, 0, 0], true, false).is_err());
        assert!(decode_record(&[1, 0, 0], false, true).is_err());
        let mut bad = vec![9u8; RECORD_HEADER_LEN];
        bad[0] = 9;
        assert!(
            decode_record(&bad, true, false)
                .unwrap_err()
                .contains("version")
        );
    }
}
