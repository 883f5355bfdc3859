//! SASL frame bodies (AMQP 1.0 §5.3), each declared once with
//! [`composite!`](crate::composite::composite).

use bytes::{Bytes, BytesMut};

use crate::codec::{self, Bin, Dec, DescribedList, Result, Str, Sym, Syms, Ubyte};
use crate::composite::composite;
use crate::{DecodeError, Symbol};

pub const SASL_MECHANISMS: u64 = 0x40;
pub const SASL_INIT: u64 = 0x41;
pub const SASL_CHALLENGE: u64 = 0x42;
pub const SASL_RESPONSE: u64 = 0x43;
pub const SASL_OUTCOME: u64 = 0x44;

composite! {
    /// `sasl-mechanisms`; always encoded as an array of symbols.
    pub struct SaslMechanisms("sasl-mechanisms", SASL_MECHANISMS) {
        pub mechanisms("sasl-server-mechanisms"): Vec<Symbol> => Syms, required;
    }
}

composite! {
    pub struct SaslInit("sasl-init", SASL_INIT) {
        pub mechanism("mechanism"): Symbol => Sym, required;
        pub initial_response("initial-response"): Option<Bytes> => Bin, optional;
        pub hostname("hostname"): Option<String> => Str, optional;
    }
}

composite! {
    /// `sasl-challenge`; carried by [`SaslFrameBody::Challenge`].
    pub struct SaslChallenge("sasl-challenge", SASL_CHALLENGE) {
        pub challenge("challenge"): Bytes => Bin, required;
    }
}

composite! {
    /// `sasl-response`; carried by [`SaslFrameBody::Response`].
    pub struct SaslResponse("sasl-response", SASL_RESPONSE) {
        pub response("response"): Bytes => Bin, required;
    }
}

composite! {
    /// `sasl-outcome`; `code` 0 = ok, 1 = auth, 2 = sys, 3 = sys-perm, 4 = sys-temp.
    pub struct SaslOutcome("sasl-outcome", SASL_OUTCOME) {
        pub code("code"): u8 => Ubyte, required;
        pub additional_data("additional-data"): Option<Bytes> => Bin, optional;
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum SaslFrameBody {
    Mechanisms(SaslMechanisms),
    Init(SaslInit),
    Challenge(Bytes),
    Response(Bytes),
    Outcome(SaslOutcome),
}

impl SaslFrameBody {
    /// Calls `f` with the body as a described list (challenge and response
    /// bytes wrapped in their composite types; a reference-count bump).
    fn with_list<R>(&self, f: impl FnOnce(&dyn DescribedList) -> R) -> R {
        match self {
            SaslFrameBody::Mechanisms(m) => f(m),
            SaslFrameBody::Init(i) => f(i),
            SaslFrameBody::Challenge(b) => f(&SaslChallenge {
                challenge: b.clone(),
            }),
            SaslFrameBody::Response(b) => f(&SaslResponse {
                response: b.clone(),
            }),
            SaslFrameBody::Outcome(o) => f(o),
        }
    }

    pub fn encode(&self, buf: &mut BytesMut) {
        self.with_list(|l| codec::encode_described_list(l, buf))
    }

    pub fn encoded_size(&self) -> usize {
        self.with_list(codec::described_list_size)
    }

    /// Decode a SASL frame body from the front of `input`, advancing it.
    pub fn decode(input: &mut &[u8]) -> Result<SaslFrameBody> {
        let mut dec = Dec::new(input);
        let b = Self::decode_from(&mut dec)?;
        *input = input.get(dec.pos()..).unwrap_or_default();
        Ok(b)
    }

    pub(crate) fn decode_from(dec: &mut Dec<'_>) -> Result<SaslFrameBody> {
        let offset = dec.pos();
        if dec.u8()? != 0x00 {
            return Err(DecodeError::InvalidFrame(format!(
                "expected a described SASL body at offset {offset}"
            )));
        }
        let d = dec.descriptor()?;
        let code = d
            .code()
            .ok_or(DecodeError::InvalidDescriptor { offset: offset + 1 })?;
        Ok(match code {
            SASL_MECHANISMS => SaslFrameBody::Mechanisms(SaslMechanisms::decode_fields(dec)?),
            SASL_INIT => SaslFrameBody::Init(SaslInit::decode_fields(dec)?),
            SASL_CHALLENGE => {
                SaslFrameBody::Challenge(SaslChallenge::decode_fields(dec)?.challenge)
            }
            SASL_RESPONSE => SaslFrameBody::Response(SaslResponse::decode_fields(dec)?.response),
            SASL_OUTCOME => SaslFrameBody::Outcome(SaslOutcome::decode_fields(dec)?),
            c => return Err(DecodeError::UnknownPerformative(c)),
        })
    }
}
