//! Message sections (AMQP 1.0 §3.2) and the annotated message the broker
//! stores and re-emits.

use bytes::{BufMut, Bytes, BytesMut};

use crate::codec::{self, Address, Any, Bin, Bool, Dec, Result, Str, Sym, Timestamp, Ubyte, Uint};
use crate::composite::composite;
use crate::{DecodeError, Symbol, Value};

type Fieldmap = Vec<(Value, Value)>;

/// `message-format` of Service Bus batches: the body is one `data` section per
/// inner, fully encoded message.
pub const BATCH_MESSAGE_FORMAT: u32 = 0x8001_3700;

pub const SECTION_HEADER: u64 = 0x70;
pub const SECTION_DELIVERY_ANNOTATIONS: u64 = 0x71;
pub const SECTION_MESSAGE_ANNOTATIONS: u64 = 0x72;
pub const SECTION_PROPERTIES: u64 = 0x73;
pub const SECTION_APPLICATION_PROPERTIES: u64 = 0x74;
pub const SECTION_DATA: u64 = 0x75;
pub const SECTION_AMQP_SEQUENCE: u64 = 0x76;
pub const SECTION_AMQP_VALUE: u64 = 0x77;
pub const SECTION_FOOTER: u64 = 0x78;

fn invalid(msg: impl Into<String>) -> DecodeError {
    DecodeError::InvalidMessage(msg.into())
}

composite! {
    /// `header` section (0x70).
    pub struct Header("header", SECTION_HEADER) {
        pub durable("durable"): Option<bool> => Bool, optional;
        pub priority("priority"): Option<u8> => Ubyte, optional;
        /// Milliseconds.
        pub ttl("ttl"): Option<u32> => Uint, optional;
        pub first_acquirer("first-acquirer"): Option<bool> => Bool, optional;
        pub delivery_count("delivery-count"): Option<u32> => Uint, optional;
    }
}

composite! {
    /// `properties` section (0x73). `message_id` / `correlation_id` keep their
    /// original AMQP type.
    pub struct Properties("properties", SECTION_PROPERTIES) {
        pub message_id("message-id"): Option<Value> => Any, optional;
        pub user_id("user-id"): Option<Bytes> => Bin, optional;
        pub to("to"): Option<String> => Address, optional;
        pub subject("subject"): Option<String> => Str, optional;
        pub reply_to("reply-to"): Option<String> => Address, optional;
        pub correlation_id("correlation-id"): Option<Value> => Any, optional;
        pub content_type("content-type"): Option<Symbol> => Sym, optional;
        pub content_encoding("content-encoding"): Option<Symbol> => Sym, optional;
        /// Milliseconds since the Unix epoch.
        pub absolute_expiry_time("absolute-expiry-time"): Option<i64> => Timestamp, optional;
        /// Milliseconds since the Unix epoch.
        pub creation_time("creation-time"): Option<i64> => Timestamp, optional;
        pub group_id("group-id"): Option<String> => Str, optional;
        pub group_sequence("group-sequence"): Option<u32> => Uint, optional;
        pub reply_to_group_id("reply-to-group-id"): Option<String> => Str, optional;
    }
}

/// An annotated message: header, annotations, properties and application
/// properties decoded; body sections and footer kept as raw bytes.
#[derive(Default, Clone, Debug, PartialEq)]
pub struct Message {
    pub header: Option<Header>,
    pub delivery_annotations: Option<Fieldmap>,
    pub message_annotations: Option<Fieldmap>,
    pub properties: Option<Properties>,
    pub application_properties: Option<Fieldmap>,
    /// Body sections (data 0x75 / amqp-sequence 0x76 / amqp-value 0x77, one
    /// or more) and footer (0x78), exactly as received, re-emitted verbatim.
    pub body_raw: Bytes,
}

/// The map of an annotations / application-properties / footer section.
fn section_map(dec: &mut Dec<'_>, name: &str) -> Result<Option<Fieldmap>> {
    let offset = dec.pos();
    match dec.u8()? {
        0x40 => Ok(None),
        c @ (0xc1 | 0xd1) => Ok(Some(dec.map_entries(c == 0xd1)?)),
        _ => Err(invalid(format!(
            "{name} section at offset {offset} is not a map"
        ))),
    }
}

fn section_prefix(buf: &mut BytesMut, code: u64) {
    buf.put_slice(&[0x00, 0x53, code as u8]);
}

impl Message {
    /// Decode a message. Sections must be in spec order and not repeated
    /// (except body sections of one kind: several `data` or several
    /// `amqp-sequence`). `body_raw` is a zero-copy slice of `bytes`.
    /// An empty input decodes to an empty message.
    pub fn decode(bytes: &Bytes) -> Result<Message> {
        let mut dec = Dec::with_bytes(bytes);
        let mut msg = Message::default();
        let mut stage = 0u8;
        let mut body_start: Option<usize> = None;
        let mut body_kind: Option<u64> = None;
        while !dec.is_empty() {
            let start = dec.pos();
            if dec.u8()? != 0x00 {
                return Err(invalid(format!(
                    "expected a described section at offset {start}"
                )));
            }
            let d = dec.descriptor()?;
            let code = d
                .code()
                .ok_or_else(|| invalid(format!("unknown section {d:?}")))?;
            let rank = match code {
                SECTION_HEADER => 1,
                SECTION_DELIVERY_ANNOTATIONS => 2,
                SECTION_MESSAGE_ANNOTATIONS => 3,
                SECTION_PROPERTIES => 4,
                SECTION_APPLICATION_PROPERTIES => 5,
                SECTION_DATA | SECTION_AMQP_SEQUENCE | SECTION_AMQP_VALUE => 6,
                SECTION_FOOTER => 7,
                _ => return Err(invalid(format!("unknown section descriptor 0x{code:x}"))),
            };
            if rank < stage || (rank == stage && rank != 6) {
                return Err(invalid(format!(
                    "section 0x{code:x} at offset {start} is duplicate or out of order"
                )));
            }
            stage = rank;
            match code {
                SECTION_HEADER => msg.header = Some(Header::decode_fields(&mut dec)?),
                SECTION_DELIVERY_ANNOTATIONS => {
                    msg.delivery_annotations = section_map(&mut dec, "delivery-annotations")?
                }
                SECTION_MESSAGE_ANNOTATIONS => {
                    msg.message_annotations = section_map(&mut dec, "message-annotations")?
                }
                SECTION_PROPERTIES => msg.properties = Some(Properties::decode_fields(&mut dec)?),
                SECTION_APPLICATION_PROPERTIES => {
                    msg.application_properties = section_map(&mut dec, "application-properties")?
                }
                SECTION_FOOTER => {
                    body_start.get_or_insert(start);
                    if !matches!(dec.peek_u8(), Some(0x40 | 0xc1 | 0xd1)) {
                        return Err(invalid("footer is not a map"));
                    }
                    dec.skip_value()?;
                }
                _ => {
                    match body_kind {
                        None => {
                            body_kind = Some(code);
                            body_start = Some(start);
                        }
                        Some(k) if k == code && code != SECTION_AMQP_VALUE => {}
                        Some(_) => {
                            return Err(invalid(format!(
                                "body section 0x{code:x} at offset {start} mixes body kinds"
                            )));
                        }
                    }
                    let ok = match (code, dec.peek_u8()) {
                        (SECTION_DATA, Some(c)) => matches!(c, 0xa0 | 0xb0),
                        (SECTION_AMQP_SEQUENCE, Some(c)) => matches!(c, 0x45 | 0xc0 | 0xd0),
                        (_, c) => c.is_some(),
                    };
                    if !ok {
                        return Err(invalid(format!("malformed body section at offset {start}")));
                    }
                    dec.skip_value()?;
                }
            }
        }
        if let Some(s) = body_start {
            msg.body_raw = bytes.slice(s..);
        }
        Ok(msg)
    }

    /// Append the message: decoded sections re-encoded, then `body_raw` verbatim.
    pub fn encode(&self, buf: &mut BytesMut) {
        buf.reserve(self.body_raw.len() + 64);
        if let Some(h) = &self.header {
            codec::encode_described_list(h, buf);
        }
        if let Some(m) = &self.delivery_annotations {
            section_prefix(buf, SECTION_DELIVERY_ANNOTATIONS);
            codec::encode_map(m, buf);
        }
        if let Some(m) = &self.message_annotations {
            section_prefix(buf, SECTION_MESSAGE_ANNOTATIONS);
            codec::encode_map(m, buf);
        }
        if let Some(p) = &self.properties {
            codec::encode_described_list(p, buf);
        }
        if let Some(m) = &self.application_properties {
            section_prefix(buf, SECTION_APPLICATION_PROPERTIES);
            codec::encode_map(m, buf);
        }
        buf.put_slice(&self.body_raw);
    }

    /// Append the message as a broker delivers it: `header` in place of its own, no delivery
    /// annotations, `extra` appended to its message annotations, the rest as stored (the
    /// sections are written straight from the message: nothing is copied before the write).
    pub fn encode_delivered(&self, header: &Header, extra: &[(Value, Value)], buf: &mut BytesMut) {
        buf.reserve(self.body_raw.len() + 64);
        codec::encode_described_list(header, buf);
        let own = self.message_annotations.as_deref().unwrap_or_default();
        if !own.is_empty() || !extra.is_empty() {
            section_prefix(buf, SECTION_MESSAGE_ANNOTATIONS);
            codec::encode_map_parts(&[own, extra], buf);
        }
        if let Some(p) = &self.properties {
            codec::encode_described_list(p, buf);
        }
        if let Some(m) = &self.application_properties {
            section_prefix(buf, SECTION_APPLICATION_PROPERTIES);
            codec::encode_map(m, buf);
        }
        buf.put_slice(&self.body_raw);
    }

    /// Exact number of bytes [`Message::encode_delivered`] writes.
    pub fn encoded_size_delivered(&self, header: &Header, extra: &[(Value, Value)]) -> usize {
        let own = self.message_annotations.as_deref().unwrap_or_default();
        let annotations = if own.is_empty() && extra.is_empty() {
            0
        } else {
            3 + codec::map_parts_size(&[own, extra])
        };
        codec::described_list_size(header)
            + annotations
            + self
                .properties
                .as_ref()
                .map_or(0, |p| codec::described_list_size(p))
            + self
                .application_properties
                .as_deref()
                .map_or(0, |m| 3 + codec::map_size(m))
            + self.body_raw.len()
    }

    /// Encode into a fresh buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::with_capacity(self.encoded_size());
        self.encode(&mut buf);
        buf.freeze()
    }

    /// Exact number of bytes [`Message::encode`] writes.
    pub fn encoded_size(&self) -> usize {
        let maps = [
            &self.delivery_annotations,
            &self.message_annotations,
            &self.application_properties,
        ];
        self.header
            .as_ref()
            .map_or(0, |h| codec::described_list_size(h))
            + self
                .properties
                .as_ref()
                .map_or(0, |p| codec::described_list_size(p))
            + maps
                .iter()
                .filter_map(|m| m.as_deref())
                .map(|m| 3 + codec::map_size(m))
                .sum::<usize>()
            + self.body_raw.len()
    }

    /// For `message-format = 0x80013700` batches: the inner messages are the
    /// payloads of the `data` sections of the body (zero-copy slices).
    pub fn batch_inner_messages(&self) -> Result<Vec<Bytes>> {
        self.data_sections()
    }

    /// One `data` section, encoded.
    pub fn body_data(data: &[u8]) -> Bytes {
        let mut buf = BytesMut::with_capacity(data.len() + 8);
        section_prefix(&mut buf, SECTION_DATA);
        codec::put_binary(&mut buf, data);
        buf.freeze()
    }

    /// One `amqp-value` section, encoded.
    pub fn body_value(v: &Value) -> Bytes {
        let mut buf = BytesMut::with_capacity(v.encoded_size() + 3);
        section_prefix(&mut buf, SECTION_AMQP_VALUE);
        v.encode(&mut buf);
        buf.freeze()
    }

    /// One `amqp-sequence` section, encoded.
    pub fn body_sequence(items: &[Value]) -> Bytes {
        let mut buf = BytesMut::new();
        section_prefix(&mut buf, SECTION_AMQP_SEQUENCE);
        codec::encode_list_values(items, &mut buf);
        buf.freeze()
    }

    /// The payloads of the body's `data` sections (zero-copy); an error if
    /// the body has other sections (a trailing footer is ignored).
    pub fn data_sections(&self) -> Result<Vec<Bytes>> {
        let mut out = Vec::new();
        self.walk_body(|code, dec| {
            if code != SECTION_DATA {
                return Err(invalid("body is not made of data sections"));
            }
            let n = match dec.u8()? {
                0xa0 => usize::from(dec.u8()?),
                0xb0 => dec.u32()? as usize,
                _ => return Err(invalid("data section is not binary")),
            };
            out.push(dec.bytes(n)?);
            Ok(())
        })?;
        Ok(out)
    }

    /// The value of an `amqp-value` body; `Ok(None)` if the body is of
    /// another kind (or empty).
    pub fn amqp_value(&self) -> Result<Option<Value>> {
        let mut out = None;
        self.walk_body(|code, dec| {
            if code == SECTION_AMQP_VALUE && out.is_none() {
                out = Some(dec.value()?);
            } else {
                dec.skip_value()?;
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// Calls `f` with each body section's code and a decoder positioned on
    /// its value (which `f` must consume); stops at the footer.
    fn walk_body(&self, mut f: impl FnMut(u64, &mut Dec<'_>) -> Result<()>) -> Result<()> {
        let mut dec = Dec::with_bytes(&self.body_raw);
        while !dec.is_empty() {
            let start = dec.pos();
            if dec.u8()? != 0x00 {
                return Err(invalid(format!(
                    "expected a described section at offset {start}"
                )));
            }
            let d = dec.descriptor()?;
            match d.code() {
                Some(SECTION_FOOTER) => return Ok(()),
                Some(c @ (SECTION_DATA | SECTION_AMQP_SEQUENCE | SECTION_AMQP_VALUE)) => {
                    f(c, &mut dec)?
                }
                _ => return Err(invalid(format!("unexpected body section {d:?}"))),
            }
        }
        Ok(())
    }
}
