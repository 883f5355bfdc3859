//! The AMQP 1.0 type system (§1.6 of the spec) as a Rust enum.

use std::fmt;

use bytes::{Bytes, BytesMut};

use crate::DecodeError;
use crate::codec::{self, Dec};

/// Any AMQP 1.0 value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Ubyte(u8),
    Ushort(u16),
    Uint(u32),
    Ulong(u64),
    Byte(i8),
    Short(i16),
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    Decimal32([u8; 4]),
    Decimal64([u8; 8]),
    Decimal128([u8; 16]),
    Char(char),
    /// Milliseconds since the Unix epoch.
    Timestamp(i64),
    /// RFC 4122 byte order, as on the wire.
    Uuid([u8; 16]),
    Binary(Bytes),
    String(String),
    Symbol(Symbol),
    List(Vec<Value>),
    /// Keeps wire order; duplicate keys are not merged.
    Map(Vec<(Value, Value)>),
    /// All elements must have the same type (including the same descriptor for
    /// described elements). An array whose elements differ in type cannot be
    /// represented on the wire and is encoded as a `list` instead.
    Array(Vec<Value>),
    Described(Box<Descriptor>, Box<Value>),
}

/// An AMQP `symbol` (ASCII by spec; any UTF-8 is accepted).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Symbol(pub String);

impl Symbol {
    pub fn new(s: impl Into<String>) -> Self {
        Symbol(s.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Symbol {
    fn from(s: &str) -> Self {
        Symbol(s.to_owned())
    }
}

impl From<String> for Symbol {
    fn from(s: String) -> Self {
        Symbol(s)
    }
}

impl fmt::Display for Symbol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::borrow::Borrow<str> for Symbol {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Symbol {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for Symbol {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Symbol {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

/// The descriptor of a described type.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Descriptor {
    Code(u64),
    Symbol(Symbol),
}

impl Descriptor {
    /// The numeric code, mapping the well-known symbolic descriptors of the
    /// AMQP 1.0 spec (e.g. `amqp:open:list`) to their codes.
    pub fn code(&self) -> Option<u64> {
        match self {
            Descriptor::Code(c) => Some(*c),
            Descriptor::Symbol(s) => codec::symbolic_descriptor_code(s.as_str()),
        }
    }
}

impl Value {
    /// Append the smallest encoding of this value.
    pub fn encode(&self, buf: &mut BytesMut) {
        codec::encode_value(self, buf);
    }

    /// Exact number of bytes [`Value::encode`] writes.
    pub fn encoded_size(&self) -> usize {
        codec::value_size(self)
    }

    /// Decode one value from the front of `input` and advance it past the value.
    pub fn decode(input: &mut &[u8]) -> Result<Value, DecodeError> {
        let mut dec = Dec::new(input);
        let v = dec.value()?;
        let used = dec.pos();
        *input = input.get(used..).unwrap_or_default();
        Ok(v)
    }

    /// Decode one value from the front of `input`; `binary` values are
    /// zero-copy slices of `input`. Returns the value and the bytes consumed.
    pub fn decode_bytes(input: &Bytes) -> Result<(Value, usize), DecodeError> {
        let mut dec = Dec::with_bytes(input);
        let v = dec.value()?;
        Ok((v, dec.pos()))
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// `String` or `Symbol` contents.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::String(s) => Some(s),
            Value::Symbol(s) => Some(s.as_str()),
            _ => None,
        }
    }

    pub fn as_symbol(&self) -> Option<&Symbol> {
        match self {
            Value::Symbol(s) => Some(s),
            _ => None,
        }
    }

    /// `uint`, `ushort` or `ubyte`.
    pub fn as_u32(&self) -> Option<u32> {
        match self {
            Value::Uint(v) => Some(*v),
            Value::Ushort(v) => Some(u32::from(*v)),
            Value::Ubyte(v) => Some(u32::from(*v)),
            _ => None,
        }
    }

    /// Any unsigned integer.
    pub fn as_u64(&self) -> Option<u64> {
        match self {
            Value::Ulong(v) => Some(*v),
            other => other.as_u32().map(u64::from),
        }
    }

    /// Any signed integer.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Long(v) => Some(*v),
            Value::Int(v) => Some(i64::from(*v)),
            Value::Short(v) => Some(i64::from(*v)),
            Value::Byte(v) => Some(i64::from(*v)),
            Value::Uint(v) => Some(i64::from(*v)),
            Value::Ushort(v) => Some(i64::from(*v)),
            Value::Ubyte(v) => Some(i64::from(*v)),
            Value::Ulong(v) => i64::try_from(*v).ok(),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match self {
            Value::Bool(b) => Some(*b),
            _ => None,
        }
    }

    pub fn as_timestamp(&self) -> Option<i64> {
        match self {
            Value::Timestamp(t) => Some(*t),
            _ => None,
        }
    }

    pub fn as_uuid(&self) -> Option<&[u8; 16]> {
        match self {
            Value::Uuid(u) => Some(u),
            _ => None,
        }
    }

    pub fn as_binary(&self) -> Option<&Bytes> {
        match self {
            Value::Binary(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_map(&self) -> Option<&[(Value, Value)]> {
        match self {
            Value::Map(m) => Some(m),
            _ => None,
        }
    }

    /// Elements of a `list` or an `array`.
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::List(l) | Value::Array(l) => Some(l),
            _ => None,
        }
    }

    /// The descriptor and inner value of a described value.
    pub fn as_described(&self) -> Option<(&Descriptor, &Value)> {
        match self {
            Value::Described(d, v) => Some((d, v)),
            _ => None,
        }
    }

    /// Shorthand for `Value::Symbol(Symbol::from(s))`.
    pub fn symbol(s: &str) -> Value {
        Value::Symbol(Symbol::from(s))
    }
}

/// Look up a map entry whose key is a `symbol` or `string` equal to `key`.
pub fn map_get<'a>(map: &'a [(Value, Value)], key: &str) -> Option<&'a Value> {
    map.iter()
        .find(|(k, _)| k.as_str() == Some(key))
        .map(|(_, v)| v)
}

macro_rules! from_impl {
    ($($t:ty => $v:ident),* $(,)?) => {
        $(impl From<$t> for Value {
            fn from(x: $t) -> Self {
                Value::$v(x)
            }
        })*
    };
}

from_impl!(bool => Bool, u8 => Ubyte, u16 => Ushort, u32 => Uint, u64 => Ulong, i8 => Byte,
    i16 => Short, i32 => Int, i64 => Long, f32 => Float, f64 => Double, char => Char,
    Bytes => Binary, String => String, Symbol => Symbol);

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::String(s.to_owned())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(o: Option<T>) -> Self {
        o.map_or(Value::Null, Into::into)
    }
}
