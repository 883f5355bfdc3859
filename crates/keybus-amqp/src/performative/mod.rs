//! Connection, session and link performatives (AMQP 1.0 §2.7) and the
//! composite types they carry (error, terminus, delivery states), each
//! declared once with [`composite!`](crate::composite::composite).

mod delivery_state;
mod error;
mod link_enums;
mod terminus;
mod transaction;

use bytes::{Bytes, BytesMut};

use self::delivery_state::StateField;
use self::error::ErrorField;
use self::link_enums::{RcvSettleField, RoleField, SndSettleField};
use crate::codec::{
    self, Bin, Bool, Dec, Flag, Map, Nested, Result, Str, Syms, Uint, Ulong, Ushort,
};
use crate::composite::composite;
use crate::{DecodeError, Symbol, Value};

pub use delivery_state::DeliveryState;
pub use error::AmqpError;
pub use link_enums::{ReceiverSettleMode, Role, SenderSettleMode};
pub use terminus::{AttachTarget, Coordinator, Source, Target};
pub use transaction::{Declare, Discharge, TxnControl};

type Fieldmap = Vec<(Value, Value)>;

/// Descriptor codes of the performatives and composite types.
pub mod codes {
    pub const OPEN: u64 = 0x10;
    pub const BEGIN: u64 = 0x11;
    pub const ATTACH: u64 = 0x12;
    pub const FLOW: u64 = 0x13;
    pub const TRANSFER: u64 = 0x14;
    pub const DISPOSITION: u64 = 0x15;
    pub const DETACH: u64 = 0x16;
    pub const END: u64 = 0x17;
    pub const CLOSE: u64 = 0x18;
    pub const ERROR: u64 = 0x1d;
    pub const RECEIVED: u64 = 0x23;
    pub const ACCEPTED: u64 = 0x24;
    pub const REJECTED: u64 = 0x25;
    pub const RELEASED: u64 = 0x26;
    pub const MODIFIED: u64 = 0x27;
    pub const SOURCE: u64 = 0x28;
    pub const TARGET: u64 = 0x29;
    pub const COORDINATOR: u64 = 0x30;
    pub const DECLARE: u64 = 0x31;
    pub const DISCHARGE: u64 = 0x32;
    pub const DECLARED: u64 = 0x33;
    pub const TRANSACTIONAL_STATE: u64 = 0x34;
}

composite! {
    pub struct Open("open", codes::OPEN) {
        pub container_id("container-id"): String => Str, required;
        pub hostname("hostname"): Option<String> => Str, optional;
        /// Default `u32::MAX`.
        pub max_frame_size("max-frame-size"): u32 => Uint, default(u32::MAX);
        /// Default 65535.
        pub channel_max("channel-max"): u16 => Ushort, default(u16::MAX);
        /// Milliseconds.
        pub idle_time_out("idle-time-out"): Option<u32> => Uint, optional;
        pub outgoing_locales("outgoing-locales"): Option<Vec<Symbol>> => Syms, optional;
        pub incoming_locales("incoming-locales"): Option<Vec<Symbol>> => Syms, optional;
        pub offered_capabilities("offered-capabilities"): Option<Vec<Symbol>> => Syms, optional;
        pub desired_capabilities("desired-capabilities"): Option<Vec<Symbol>> => Syms, optional;
        pub properties("properties"): Option<Fieldmap> => Map, optional;
    }
}

composite! {
    pub struct Begin("begin", codes::BEGIN) {
        pub remote_channel("remote-channel"): Option<u16> => Ushort, optional;
        pub next_outgoing_id("next-outgoing-id"): u32 => Uint, required;
        pub incoming_window("incoming-window"): u32 => Uint, required;
        pub outgoing_window("outgoing-window"): u32 => Uint, required;
        /// Default `u32::MAX`.
        pub handle_max("handle-max"): u32 => Uint, default(u32::MAX);
        pub offered_capabilities("offered-capabilities"): Option<Vec<Symbol>> => Syms, optional;
        pub desired_capabilities("desired-capabilities"): Option<Vec<Symbol>> => Syms, optional;
        pub properties("properties"): Option<Fieldmap> => Map, optional;
    }
}

composite! {
    pub struct Attach("attach", codes::ATTACH) {
        pub name("name"): String => Str, required;
        pub handle("handle"): u32 => Uint, required;
        pub role("role"): Role => RoleField, required;
        pub snd_settle_mode("snd-settle-mode"): SenderSettleMode => SndSettleField,
            default(SenderSettleMode::default());
        pub rcv_settle_mode("rcv-settle-mode"): ReceiverSettleMode => RcvSettleField,
            default(ReceiverSettleMode::default());
        pub source("source"): Option<Source> => Nested<Source>, optional;
        pub target("target"): Option<AttachTarget> => Nested<AttachTarget>, optional;
        pub unsettled("unsettled"): Option<Fieldmap> => Map, optional;
        pub incomplete_unsettled("incomplete-unsettled"): bool => Flag, default(false);
        pub initial_delivery_count("initial-delivery-count"): Option<u32> => Uint, optional;
        pub max_message_size("max-message-size"): Option<u64> => Ulong, optional;
        pub offered_capabilities("offered-capabilities"): Option<Vec<Symbol>> => Syms, optional;
        pub desired_capabilities("desired-capabilities"): Option<Vec<Symbol>> => Syms, optional;
        pub properties("properties"): Option<Fieldmap> => Map, optional;
    }
}

composite! {
    pub struct Flow("flow", codes::FLOW) {
        pub next_incoming_id("next-incoming-id"): Option<u32> => Uint, optional;
        pub incoming_window("incoming-window"): u32 => Uint, required;
        pub next_outgoing_id("next-outgoing-id"): u32 => Uint, required;
        pub outgoing_window("outgoing-window"): u32 => Uint, required;
        pub handle("handle"): Option<u32> => Uint, optional;
        pub delivery_count("delivery-count"): Option<u32> => Uint, optional;
        pub link_credit("link-credit"): Option<u32> => Uint, optional;
        pub available("available"): Option<u32> => Uint, optional;
        pub drain("drain"): bool => Flag, default(false);
        pub echo("echo"): bool => Flag, default(false);
        pub properties("properties"): Option<Fieldmap> => Map, optional;
    }
}

composite! {
    pub struct Transfer("transfer", codes::TRANSFER) {
        pub handle("handle"): u32 => Uint, required;
        pub delivery_id("delivery-id"): Option<u32> => Uint, optional;
        pub delivery_tag("delivery-tag"): Option<Bytes> => Bin, optional;
        pub message_format("message-format"): Option<u32> => Uint, optional;
        pub settled("settled"): Option<bool> => Bool, optional;
        pub more("more"): bool => Flag, default(false);
        pub rcv_settle_mode("rcv-settle-mode"): Option<ReceiverSettleMode> => RcvSettleField, optional;
        pub state("state"): Option<DeliveryState> => StateField, optional;
        pub resume("resume"): bool => Flag, default(false);
        pub aborted("aborted"): bool => Flag, default(false);
        pub batchable("batchable"): bool => Flag, default(false);
    }
}

composite! {
    pub struct Disposition("disposition", codes::DISPOSITION) {
        pub role("role"): Role => RoleField, required;
        pub first("first"): u32 => Uint, required;
        pub last("last"): Option<u32> => Uint, optional;
        pub settled("settled"): bool => Flag, default(false);
        pub state("state"): Option<DeliveryState> => StateField, optional;
        pub batchable("batchable"): bool => Flag, default(false);
    }
}

composite! {
    pub struct Detach("detach", codes::DETACH) {
        pub handle("handle"): u32 => Uint, required;
        pub closed("closed"): bool => Flag, default(false);
        pub error("error"): Option<AmqpError> => ErrorField, optional;
    }
}

composite! {
    pub struct End("end", codes::END) {
        pub error("error"): Option<AmqpError> => ErrorField, optional;
    }
}

composite! {
    pub struct Close("close", codes::CLOSE) {
        pub error("error"): Option<AmqpError> => ErrorField, optional;
    }
}

/// Declares [`Performative`] over the performative types: the enum, its
/// `From` impls, and dispatch by variant (name, encoding) and by
/// descriptor code (decoding).
macro_rules! performatives {
    ($($v:ident),* $(,)?) => {
        /// Any AMQP performative.
        #[derive(Debug, Clone, PartialEq)]
        // The variants are part of the public API; boxing would change it.
        #[allow(clippy::large_enum_variant)]
        pub enum Performative {
            $($v($v),)*
        }

        $(impl From<$v> for Performative {
            fn from(x: $v) -> Self {
                Performative::$v(x)
            }
        })*

        impl Performative {
            /// The performative's name as in the spec (`"open"`, `"transfer"`, ...).
            pub fn name(&self) -> &'static str {
                match self {
                    $(Performative::$v(_) => $v::NAME,)*
                }
            }

            fn as_list(&self) -> &dyn codec::DescribedList {
                match self {
                    $(Performative::$v(x) => x,)*
                }
            }

            /// Decode the list after descriptor `code`.
            fn decode_body(dec: &mut Dec<'_>, code: u64) -> Result<Performative> {
                match code {
                    $(c if c == $v::CODE => Ok(Performative::$v($v::decode_fields(dec)?)),)*
                    c => Err(DecodeError::UnknownPerformative(c)),
                }
            }
        }
    };
}

performatives!(
    Open,
    Begin,
    Attach,
    Flow,
    Transfer,
    Disposition,
    Detach,
    End,
    Close
);

impl Performative {
    /// Append the performative (a described list, trailing nulls trimmed).
    pub fn encode(&self, buf: &mut BytesMut) {
        codec::encode_described_list(self.as_list(), buf)
    }

    pub fn encoded_size(&self) -> usize {
        codec::described_list_size(self.as_list())
    }

    /// Decode a performative from the front of `input`, advancing it.
    pub fn decode(input: &mut &[u8]) -> Result<Performative> {
        let mut dec = Dec::new(input);
        let p = Self::decode_from(&mut dec)?;
        *input = input.get(dec.pos()..).unwrap_or_default();
        Ok(p)
    }

    pub(crate) fn decode_from(dec: &mut Dec<'_>) -> Result<Performative> {
        let offset = dec.pos();
        if dec.u8()? != 0x00 {
            return Err(DecodeError::InvalidFrame(format!(
                "expected a described performative at offset {offset}"
            )));
        }
        let d = dec.descriptor()?;
        let code = d
            .code()
            .ok_or(DecodeError::InvalidDescriptor { offset: offset + 1 })?;
        Self::decode_body(dec, code)
    }
}
