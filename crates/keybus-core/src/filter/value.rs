//! Values as the evaluator sees them, and their mapping to and from AMQP.
//!
//! AMQP integers of every width become `long` (an unsigned `ulong` above
//! `i64::MAX` becomes `double`), `float`/`double` become `double`, `string`,
//! `symbol` and `char` become `string`, `timestamp` a `datetime`, and the
//! Service Bus described types `com.microsoft:timespan`,
//! `com.microsoft:datetime-offset` and `com.microsoft:uri` a `timespan`,
//! `datetime` and `string`. Anything else (binary, lists, maps, decimals) is
//! carried as an opaque value that only `IS NULL`, `EXISTS` and equality with
//! another opaque value accept.

use std::borrow::Cow;

use keybus_amqp::{Descriptor, Message, Value};

pub(crate) const TIMESPAN_DESCRIPTOR: &str = "com.microsoft:timespan";
const DATETIME_OFFSET_DESCRIPTOR: &str = "com.microsoft:datetime-offset";
const URI_DESCRIPTOR: &str = "com.microsoft:uri";
/// .NET ticks (100 ns) per millisecond.
pub(crate) const TICKS_PER_MS: i64 = 10_000;
/// .NET ticks between 0001-01-01 and the Unix epoch.
const UNIX_EPOCH_TICKS: i64 = 621_355_968_000_000_000;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val<'a> {
    /// Both SQL `NULL` and the *unknown* value of a missing property.
    Null,
    Bool(bool),
    Long(i64),
    Double(f64),
    Str(Cow<'a, str>),
    Uuid([u8; 16]),
    /// Milliseconds since the Unix epoch.
    DateTime(i64),
    /// .NET ticks (100 ns).
    TimeSpan(i64),
    Other(Cow<'a, Value>),
}

impl<'a> Val<'a> {
    pub(crate) fn type_name(&self) -> &'static str {
        match self {
            Val::Null => "null",
            Val::Bool(_) => "boolean",
            Val::Long(_) => "long",
            Val::Double(_) => "double",
            Val::Str(_) => "string",
            Val::Uuid(_) => "guid",
            Val::DateTime(_) => "datetime",
            Val::TimeSpan(_) => "timespan",
            Val::Other(v) => value_type_name(v),
        }
    }

    pub(crate) fn from_value(v: &'a Value) -> Val<'a> {
        match v {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(*b),
            Value::Ubyte(x) => Val::Long(i64::from(*x)),
            Value::Ushort(x) => Val::Long(i64::from(*x)),
            Value::Uint(x) => Val::Long(i64::from(*x)),
            Value::Ulong(x) => i64::try_from(*x).map_or(Val::Double(*x as f64), Val::Long),
            Value::Byte(x) => Val::Long(i64::from(*x)),
            Value::Short(x) => Val::Long(i64::from(*x)),
            Value::Int(x) => Val::Long(i64::from(*x)),
            Value::Long(x) => Val::Long(*x),
            Value::Float(x) => Val::Double(f64::from(*x)),
            Value::Double(x) => Val::Double(*x),
            Value::Char(c) => Val::Str(Cow::Owned(c.to_string())),
            Value::Timestamp(t) => Val::DateTime(*t),
            Value::Uuid(u) => Val::Uuid(*u),
            Value::String(s) => Val::Str(Cow::Borrowed(s)),
            Value::Symbol(s) => Val::Str(Cow::Borrowed(s.as_str())),
            Value::Described(d, inner) => match (described_name(d), inner.as_ref()) {
                (Some(TIMESPAN_DESCRIPTOR), Value::Long(t)) => Val::TimeSpan(*t),
                (Some(DATETIME_OFFSET_DESCRIPTOR), Value::Long(t)) => {
                    Val::DateTime(t.saturating_sub(UNIX_EPOCH_TICKS) / TICKS_PER_MS)
                }
                (Some(URI_DESCRIPTOR), Value::String(s)) => Val::Str(Cow::Borrowed(s)),
                _ => Val::Other(Cow::Borrowed(v)),
            },
            other => Val::Other(Cow::Borrowed(other)),
        }
    }

    /// The AMQP value a rule action stores.
    pub(crate) fn into_value(self) -> Value {
        match self {
            Val::Null => Value::Null,
            Val::Bool(b) => Value::Bool(b),
            Val::Long(x) => Value::Long(x),
            Val::Double(x) => Value::Double(x),
            Val::Str(s) => Value::String(s.into_owned()),
            Val::Uuid(u) => Value::Uuid(u),
            Val::DateTime(t) => Value::Timestamp(t),
            Val::TimeSpan(t) => Value::Described(
                Box::new(Descriptor::Symbol(TIMESPAN_DESCRIPTOR.into())),
                Box::new(Value::Long(t)),
            ),
            Val::Other(v) => v.into_owned(),
        }
    }
}

fn described_name(d: &Descriptor) -> Option<&str> {
    match d {
        Descriptor::Symbol(s) => Some(s.as_str()),
        Descriptor::Code(_) => None,
    }
}

pub(crate) fn value_type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Ubyte(_) => "ubyte",
        Value::Ushort(_) => "ushort",
        Value::Uint(_) => "uint",
        Value::Ulong(_) => "ulong",
        Value::Byte(_) => "byte",
        Value::Short(_) => "short",
        Value::Int(_) => "int",
        Value::Long(_) => "long",
        Value::Float(_) => "float",
        Value::Double(_) => "double",
        Value::Decimal32(_) | Value::Decimal64(_) | Value::Decimal128(_) => "decimal",
        Value::Char(_) => "char",
        Value::Timestamp(_) => "datetime",
        Value::Uuid(_) => "guid",
        Value::Binary(_) => "binary",
        Value::String(_) => "string",
        Value::Symbol(_) => "symbol",
        Value::List(_) => "list",
        Value::Map(_) => "map",
        Value::Array(_) => "array",
        Value::Described(..) => "described",
    }
}

/// `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, lower case, bytes in RFC 4122 order.
pub(crate) fn format_uuid(u: &[u8; 16]) -> String {
    let mut s = String::with_capacity(36);
    for (i, b) in u.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// A message or correlation id as the string Service Bus exposes.
pub(crate) fn id_to_string(v: &Value) -> Option<Cow<'_, str>> {
    match v {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Symbol(s) => Some(Cow::Borrowed(s.as_str())),
        Value::Uuid(u) => Some(Cow::Owned(format_uuid(u))),
        Value::Ulong(x) => Some(Cow::Owned(x.to_string())),
        Value::Binary(b) => Some(Cow::Owned(b.iter().map(|x| format!("{x:02X}")).collect())),
        _ => None,
    }
}

/// Case-insensitive (Unicode simple lower-casing) name comparison.
pub(crate) fn names_equal(a: &str, b: &str) -> bool {
    if a.is_ascii() && b.is_ascii() {
        return a.eq_ignore_ascii_case(b);
    }
    a.chars()
        .flat_map(char::to_lowercase)
        .eq(b.chars().flat_map(char::to_lowercase))
}

/// Index of the application property `name`: an exact match first, else the
/// first whose name matches ignoring case (property names are case-insensitive).
pub(crate) fn user_prop_index(props: &[(Value, Value)], name: &str) -> Option<usize> {
    props
        .iter()
        .position(|(k, _)| k.as_str() == Some(name))
        .or_else(|| {
            props
                .iter()
                .position(|(k, _)| k.as_str().is_some_and(|k| names_equal(k, name)))
        })
}

pub(crate) fn user_prop<'a>(msg: &'a Message, name: &str) -> Option<&'a Value> {
    let props = msg.application_properties.as_deref()?;
    user_prop_index(props, name)
        .and_then(|i| props.get(i))
        .map(|(_, v)| v)
}
