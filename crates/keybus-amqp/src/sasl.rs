//! SASL frame bodies (AMQP 1.0 §5.3).

use bytes::{Bytes, BytesMut};

use crate::codec::{self, DescribedList, F, Fields};
use crate::performative::req;
use crate::{Dec, DecodeError, Symbol};

type Result<T> = std::result::Result<T, DecodeError>;

pub const SASL_MECHANISMS: u64 = 0x40;
pub const SASL_INIT: u64 = 0x41;
pub const SASL_CHALLENGE: u64 = 0x42;
pub const SASL_RESPONSE: u64 = 0x43;
pub const SASL_OUTCOME: u64 = 0x44;

/// `sasl-mechanisms`; always encoded as an array of symbols.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SaslMechanisms {
    pub mechanisms: Vec<Symbol>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct SaslInit {
    pub mechanism: Symbol,
    pub initial_response: Option<Bytes>,
    pub hostname: Option<String>,
}

/// `sasl-outcome`; `code` 0 = ok, 1 = auth, 2 = sys, 3 = sys-perm, 4 = sys-temp.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SaslOutcome {
    pub code: u8,
    pub additional_data: Option<Bytes>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum SaslFrameBody {
    Mechanisms(SaslMechanisms),
    Init(SaslInit),
    Challenge(Bytes),
    Response(Bytes),
    Outcome(SaslOutcome),
}

impl DescribedList for SaslFrameBody {
    fn code(&self) -> u64 {
        match self {
            SaslFrameBody::Mechanisms(_) => SASL_MECHANISMS,
            SaslFrameBody::Init(_) => SASL_INIT,
            SaslFrameBody::Challenge(_) => SASL_CHALLENGE,
            SaslFrameBody::Response(_) => SASL_RESPONSE,
            SaslFrameBody::Outcome(_) => SASL_OUTCOME,
        }
    }
    fn with_fields(&self, f: &mut dyn FnMut(&[F<'_>])) {
        match self {
            SaslFrameBody::Mechanisms(m) => f(&[F::Syms(&m.mechanisms)]),
            SaslFrameBody::Init(i) => f(&[
                F::Sym(i.mechanism.as_str()),
                i.initial_response.as_deref().map_or(F::Null, F::Bin),
                i.hostname.as_deref().map_or(F::Null, F::Str),
            ]),
            SaslFrameBody::Challenge(b) | SaslFrameBody::Response(b) => f(&[F::Bin(b)]),
            SaslFrameBody::Outcome(o) => f(&[
                F::Ubyte(o.code),
                o.additional_data.as_deref().map_or(F::Null, F::Bin),
            ]),
        }
    }
}

impl SaslFrameBody {
    pub fn encode(&self, buf: &mut BytesMut) {
        codec::encode_described_list(self, buf);
    }

    pub fn encoded_size(&self) -> usize {
        codec::described_list_size(self)
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
            SASL_MECHANISMS => {
                const P: &str = "sasl-mechanisms";
                let mut f = Fields::open(dec, P)?;
                let mechanisms = req(
                    f.symbols("sasl-server-mechanisms")?,
                    P,
                    "sasl-server-mechanisms",
                )?;
                f.finish()?;
                SaslFrameBody::Mechanisms(SaslMechanisms { mechanisms })
            }
            SASL_INIT => {
                const P: &str = "sasl-init";
                let mut f = Fields::open(dec, P)?;
                let mechanism = req(f.symbol("mechanism")?, P, "mechanism")?;
                let initial_response = f.binary("initial-response")?;
                let hostname = f.string("hostname")?;
                f.finish()?;
                SaslFrameBody::Init(SaslInit {
                    mechanism,
                    initial_response,
                    hostname,
                })
            }
            SASL_CHALLENGE => {
                const P: &str = "sasl-challenge";
                let mut f = Fields::open(dec, P)?;
                let c = req(f.binary("challenge")?, P, "challenge")?;
                f.finish()?;
                SaslFrameBody::Challenge(c)
            }
            SASL_RESPONSE => {
                const P: &str = "sasl-response";
                let mut f = Fields::open(dec, P)?;
                let r = req(f.binary("response")?, P, "response")?;
                f.finish()?;
                SaslFrameBody::Response(r)
            }
            SASL_OUTCOME => {
                const P: &str = "sasl-outcome";
                let mut f = Fields::open(dec, P)?;
                let code = req(f.ubyte("code")?, P, "code")?;
                let additional_data = f.binary("additional-data")?;
                f.finish()?;
                SaslFrameBody::Outcome(SaslOutcome {
                    code,
                    additional_data,
                })
            }
            c => return Err(DecodeError::UnknownPerformative(c)),
        })
    }
}
