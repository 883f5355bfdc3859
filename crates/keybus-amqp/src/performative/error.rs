//! The `error` composite type (AMQP 1.0 §2.8.14).

use crate::codec::{F, FieldType, Fields, Map, Nested, Result, Str, Sym};
use crate::composite::composite;
use crate::performative::codes;
use crate::{Symbol, Value};

composite! {
    /// `error` (descriptor 0x1d).
    pub struct AmqpError("error", codes::ERROR) {
        pub condition("condition"): Symbol => Sym, required;
        pub description("description"): Option<String> => Str, optional;
        pub info("info"): Option<Vec<(Value, Value)>> => ErrorInfo, default(None);
    }
}

impl AmqpError {
    pub fn new(condition: &str, description: impl Into<String>) -> Self {
        AmqpError {
            condition: Symbol::from(condition),
            description: Some(description.into()),
            info: None,
        }
    }
}

/// An optional `error` field.
pub(crate) type ErrorField = Nested<AmqpError>;

/// The `info` map of an error. Always sent, as an empty map for "none":
/// Python's sender reads `error[2]` without a length check. An empty map
/// reads back as `None`.
pub(crate) struct ErrorInfo;

impl FieldType for ErrorInfo {
    type Value = Option<Vec<(Value, Value)>>;
    fn field(v: &Self::Value) -> F<'_> {
        v.as_deref().map_or(F::Map(&[]), F::Map)
    }
    fn read(f: &mut Fields<'_, '_>, name: &'static str) -> Result<Option<Self::Value>> {
        Ok(<Map as FieldType>::read(f, name)?
            .filter(|m| !m.is_empty())
            .map(Some))
    }
}
