//! A message as a receiver gets it: the stored sections, shared with the queue's entry (not
//! copied), and the broker state it is delivered with. It is encoded once, by whoever writes
//! it ([`Delivery::encode`]: the connection, straight into its output frames; §5.2 for the
//! broker annotations and their exact AMQP types).

use std::sync::Arc;

use keybus_amqp::{Bytes, BytesMut, Header, Message, Symbol, Value};

use super::LockToken;
use crate::clock::Timestamp;
use crate::record::{MessageRecord, MessageState};

/// A message handed to a receiver.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub sequence_number: i64,
    /// Unique per delivery; the lock token in peek-lock mode.
    pub lock_token: LockToken,
    pub locked_until: Option<Timestamp>,
    message: Arc<Message>,
    header: Header,
    /// The broker's message annotations, after the client's.
    annotations: Vec<(Value, Value)>,
}

impl Delivery {
    pub(crate) fn new(
        rec: &MessageRecord,
        message: Arc<Message>,
        lock_token: LockToken,
        locked_until: Option<Timestamp>,
    ) -> Delivery {
        let (header, annotations) = broker_sections(rec, &message, locked_until);
        Delivery {
            sequence_number: rec.sequence_number,
            lock_token,
            locked_until,
            message,
            header,
            annotations,
        }
    }

    /// Bytes [`Delivery::encode`] writes.
    pub fn encoded_size(&self) -> usize {
        self.message
            .encoded_size_delivered(&self.header, &self.annotations)
    }

    /// Append the encoded message: its header with the delivery count, the client's
    /// annotations plus the broker's, and its properties, application properties and body.
    pub fn encode(&self, buf: &mut BytesMut) {
        self.message
            .encode_delivered(&self.header, &self.annotations, buf);
    }

    /// The encoded message in a buffer of its own.
    pub fn encoded(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.encoded_size());
        self.encode(&mut buf);
        buf.freeze()
    }
}

/// The header (with the delivery count) and the broker annotations of a delivery or a peek.
fn broker_sections(
    rec: &MessageRecord,
    message: &Message,
    locked_until: Option<Timestamp>,
) -> (Header, Vec<(Value, Value)>) {
    let mut header = message.header.clone().unwrap_or_default();
    header.delivery_count = Some(rec.delivery_count);
    let sym = |s: &str| Value::Symbol(Symbol::from(s));
    let mut ann = Vec::with_capacity(4);
    ann.push((
        sym("x-opt-sequence-number"),
        Value::Long(rec.sequence_number),
    ));
    ann.push((
        sym("x-opt-enqueued-time"),
        Value::Timestamp(rec.enqueued_time),
    ));
    if let Some(t) = locked_until {
        ann.push((sym("x-opt-locked-until"), Value::Timestamp(t)));
    }
    if rec.state != MessageState::Active {
        ann.push((sym("x-opt-message-state"), Value::Int(rec.state as i32)));
    }
    (header, ann)
}

/// Encode a stored message (`rec`'s broker state, `src` its sections) as a peek shows it.
pub fn encode_delivery(
    rec: &MessageRecord,
    src: &Message,
    locked_until: Option<Timestamp>,
) -> Bytes {
    let (header, ann) = broker_sections(rec, src, locked_until);
    let mut buf = BytesMut::with_capacity(src.encoded_size_delivered(&header, &ann));
    src.encode_delivered(&header, &ann, &mut buf);
    buf.freeze()
}
