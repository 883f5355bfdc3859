//! Delivery states and outcomes (AMQP 1.0 §3.4).

use bytes::BytesMut;

use super::error::ErrorField;
use bytes::Bytes;

use crate::codec::{self, Bin, Bool, Composite, Dec, Map, NestedBox, Result, Uint, Ulong};
use crate::composite::composite_choice;
use crate::performative::codes;
use crate::{AmqpError, DecodeError, Value};

composite_choice! {
    /// Delivery states / outcomes (§3.4).
    pub enum DeliveryState("delivery-state") {
        Received("received", codes::RECEIVED) {
            section_number("section-number"): u32 => Uint, required;
            section_offset("section-offset"): u64 => Ulong, required;
        },
        Accepted("accepted", codes::ACCEPTED),
        Rejected("rejected", codes::REJECTED) {
            error("error"): Option<AmqpError> => ErrorField, optional;
        },
        Released("released", codes::RELEASED),
        Modified("modified", codes::MODIFIED) {
            delivery_failed("delivery-failed"): Option<bool> => Bool, optional;
            undeliverable_here("undeliverable-here"): Option<bool> => Bool, optional;
            message_annotations("message-annotations"): Option<Vec<(Value, Value)>> => Map, optional;
        },
        /// A coordinator's answer to `declare` (§4.5.4).
        Declared("declared", codes::DECLARED) {
            txn_id("txn-id"): Bytes => Bin, required;
        },
        /// A transfer's or disposition's work joining a transaction, with its outcome (§4.5.5).
        Transactional("transactional-state", codes::TRANSACTIONAL_STATE) {
            txn_id("txn-id"): Bytes => Bin, required;
            outcome("outcome"): Option<Box<DeliveryState>> => NestedBox<DeliveryState>, optional;
        },
    }
}

impl DeliveryState {
    /// Decode a delivery state from a complete described value.
    pub fn decode(input: &mut &[u8]) -> Result<DeliveryState> {
        let mut dec = Dec::new(input);
        if dec.u8()? != 0x00 {
            return Err(DecodeError::InvalidField {
                performative: Self::NAME,
                field: "<descriptor>",
            });
        }
        let d = dec.descriptor()?;
        let code = d.code().unwrap_or(u64::MAX);
        let s = Self::decode_body(&mut dec, code, Self::NAME, "state")?;
        *input = input.get(dec.pos()..).unwrap_or_default();
        Ok(s)
    }

    pub fn encode(&self, buf: &mut BytesMut) {
        codec::encode_described_list(self, buf);
    }
}

/// An optional `state` field.
pub(crate) type StateField = codec::Nested<DeliveryState>;
