//! `keybus-amqp`: the AMQP 1.0 codec of keybus.
//!
//! It covers the AMQP type system ([`Value`]), the connection/session/link
//! performatives ([`Performative`]), SASL frame bodies ([`SaslFrameBody`]),
//! frames and protocol headers ([`decode_frame`], [`encode_frame`]) and the
//! message format ([`Message`]) as used by Azure Service Bus clients.
//!
//! # Design
//!
//! * **No I/O.** Everything works on byte slices: decoding reads from
//!   `&[u8]` / [`Bytes`], encoding appends to a caller-owned [`BytesMut`].
//!   There is no async runtime, no logging and no global state.
//! * **Owns [`DecodeError`].** Every decoding function returns
//!   `Result<_, DecodeError>`; arbitrary input never panics, lengths from
//!   the wire never drive allocation beyond the input size, and nesting is
//!   limited to [`MAX_DEPTH`] levels.
//! * **Zero-copy payloads.** [`decode_frame_bytes`] returns the transfer
//!   payload (and binary fields) as slices of the input [`Bytes`];
//!   [`Message::decode`] keeps the body sections as a slice
//!   ([`Message::body_raw`]) that is re-emitted verbatim, and batch inner
//!   messages are slices too. [`encode_amqp_frame`] writes a payload
//!   without cloning it.
//! * **Exact wire types.** Performatives are encoded as described lists
//!   with trailing null fields trimmed and fields in the exact types of the
//!   spec (`uint` handles, `binary` delivery tags, `ubyte` settle modes,
//!   ...); values use their smallest encodings. Boolean fields whose
//!   default is `false` are sent as null when `false` (equivalent per spec).
//! * **Lenient where peers differ.** Multi-valued symbol fields accept a
//!   single symbol or an array, symbolic descriptors are mapped to codes,
//!   unknown trailing fields of a list are skipped.
//! * **Declared once.** Every composite type (performatives, error,
//!   terminus, delivery states, message header and properties, SASL
//!   bodies) is one `composite!` declaration: descriptor name and code, then
//!   the fields in wire order with their wire types and defaults. The
//!   macro generates the struct, its `Default`, its encoder and its decoder.
//! * **No indexing.** `clippy::indexing_slicing` is denied crate-wide, so
//!   "never panics on input" does not rest on reviewed index arithmetic.
//!
//! # Layout
//!
//! * `codec/`: the primitives, one idea per file: the read cursor, value
//!   decoding, primitive / value / array / compound encoding, described
//!   lists with typed fields and the wire types of those fields;
//! * `composite.rs`: the `composite!` and `composite_choice!` macros;
//! * `value.rs`: [`Value`], [`Symbol`], [`Descriptor`];
//! * `performative/`: the performatives and the composites they carry;
//! * `sasl.rs`, `message.rs`, `frame.rs`: SASL bodies, message sections,
//!   frames and protocol headers;
//! * `error.rs`: [`DecodeError`].

#![deny(clippy::indexing_slicing)]

mod codec;
mod composite;
mod error;
mod frame;
mod message;
mod performative;
mod sasl;
mod value;

pub(crate) use codec::Dec;

pub use bytes::{Bytes, BytesMut};
pub use codec::{MAX_DEPTH, encode_map, map_size};
pub use error::DecodeError;
pub use frame::{
    AMQP_HEADER, FRAME_TYPE_AMQP, FRAME_TYPE_SASL, Frame, FrameBody, MIN_MAX_FRAME_SIZE,
    ProtocolHeader, SASL_HEADER, TLS_HEADER, decode_frame, decode_frame_bytes, encode_amqp_frame,
    encode_amqp_frame_with, encode_empty_frame, encode_frame, parse_protocol_header,
    peek_frame_size,
};
pub use message::{
    BATCH_MESSAGE_FORMAT, Header, Message, Properties, SECTION_AMQP_SEQUENCE, SECTION_AMQP_VALUE,
    SECTION_APPLICATION_PROPERTIES, SECTION_DATA, SECTION_DELIVERY_ANNOTATIONS, SECTION_FOOTER,
    SECTION_HEADER, SECTION_MESSAGE_ANNOTATIONS, SECTION_PROPERTIES,
};
pub use performative::{
    AmqpError, Attach, AttachTarget, Begin, Close, Coordinator, Declare, DeliveryState, Detach,
    Discharge, Disposition, End, Flow, Open, Performative, ReceiverSettleMode, Role,
    SenderSettleMode, Source, Target, Transfer, TxnControl, codes,
};
pub use sasl::{
    SASL_CHALLENGE, SASL_INIT, SASL_MECHANISMS, SASL_OUTCOME, SASL_RESPONSE, SaslFrameBody,
    SaslInit, SaslMechanisms, SaslOutcome,
};
pub use value::{Descriptor, Symbol, Value, map_get};
