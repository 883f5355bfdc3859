//! Transaction control messages (AMQP 1.0 §4.5): the `declare` and `discharge` a client sends
//! to a coordinator, each as the `amqp-value` body of a transfer.

use bytes::Bytes;

use crate::performative::codes;
use crate::{DecodeError, Descriptor, Value};

/// `declare` (0x31): start a transaction. `global-id` (distributed transactions) is kept only
/// to be refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Declare {
    pub global_id: Option<Value>,
}

/// `discharge` (0x32): end transaction `txn_id`, committing it unless `fail`.
#[derive(Debug, Clone, PartialEq)]
pub struct Discharge {
    pub txn_id: Bytes,
    pub fail: bool,
}

/// What a transfer on a coordinator link asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum TxnControl {
    Declare(Declare),
    Discharge(Discharge),
}

impl TxnControl {
    /// Read a control message from a transfer's `amqp-value` body.
    pub fn from_value(v: &Value) -> Result<TxnControl, DecodeError> {
        let bad = |field| DecodeError::InvalidField {
            performative: "coordinator",
            field,
        };
        let Value::Described(d, body) = v else {
            return Err(bad("<descriptor>"));
        };
        let fields: &[Value] = match body.as_ref() {
            Value::List(items) => items,
            _ => return Err(bad("<list>")),
        };
        match Descriptor::code(d) {
            Some(codes::DECLARE) => Ok(TxnControl::Declare(Declare {
                global_id: fields.first().filter(|v| **v != Value::Null).cloned(),
            })),
            Some(codes::DISCHARGE) => {
                let txn_id = match fields.first() {
                    Some(Value::Binary(b)) => b.clone(),
                    _ => return Err(bad("txn-id")),
                };
                let fail = match fields.get(1) {
                    None | Some(Value::Null) => false,
                    Some(Value::Bool(b)) => *b,
                    Some(_) => return Err(bad("fail")),
                };
                Ok(TxnControl::Discharge(Discharge { txn_id, fail }))
            }
            _ => Err(bad("<descriptor>")),
        }
    }

    /// The `amqp-value` a client sends for this control message.
    pub fn to_value(&self) -> Value {
        let (code, fields) = match self {
            TxnControl::Declare(d) => (
                codes::DECLARE,
                d.global_id.iter().cloned().collect::<Vec<_>>(),
            ),
            TxnControl::Discharge(d) => (
                codes::DISCHARGE,
                vec![Value::Binary(d.txn_id.clone()), Value::Bool(d.fail)],
            ),
        };
        Value::Described(
            Box::new(Descriptor::Code(code)),
            Box::new(Value::List(fields)),
        )
    }
}
