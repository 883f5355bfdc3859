//! Encoding of AMQP arrays: one constructor shared by all elements.

use std::mem::discriminant;

use bytes::{BufMut, BytesMut};

use super::compound::{begin_compound, compound_size, finish_compound, put_body32};
use super::encode_primitive::{descriptor_size, put_descriptor, put_var_body};
use super::encode_value::{encode_value, value_size};
use crate::{Symbol, Value};

pub(super) fn same_type(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Described(da, ia), Value::Described(db, ib)) => da == db && same_type(ia, ib),
        _ => discriminant(a) == discriminant(b),
    }
}

pub(super) fn strip(mut v: &Value) -> &Value {
    while let Value::Described(_, inner) = v {
        v = inner;
    }
    v
}

/// Whether `items` can be encoded as an AMQP array (all of one type,
/// recursively for nested arrays).
pub(super) fn array_encodable(items: &[Value]) -> bool {
    let Some(first) = items.first() else {
        return true;
    };
    items.iter().all(|e| {
        same_type(first, e)
            && match strip(e) {
                Value::Array(inner) => array_encodable(inner),
                _ => true,
            }
    })
}

/// The element format code for a homogeneous array.
pub(super) fn array_code(items: &[Value]) -> u8 {
    let Some(first) = items.first() else {
        return 0x40;
    };
    let all = |f: &dyn Fn(&Value) -> bool| items.iter().all(|e| f(strip(e)));
    let short = |v: &Value| match v {
        Value::Binary(b) => b.len() <= 255,
        Value::String(s) => s.len() <= 255,
        Value::Symbol(s) => s.0.len() <= 255,
        _ => true,
    };
    match strip(first) {
        Value::Null => 0x40,
        Value::Bool(_) => 0x56,
        Value::Ubyte(_) => 0x50,
        Value::Ushort(_) => 0x60,
        Value::Uint(_) => {
            if all(&|v| matches!(v, Value::Uint(x) if *x <= 255)) {
                0x52
            } else {
                0x70
            }
        }
        Value::Ulong(_) => {
            if all(&|v| matches!(v, Value::Ulong(x) if *x <= 255)) {
                0x53
            } else {
                0x80
            }
        }
        Value::Byte(_) => 0x51,
        Value::Short(_) => 0x61,
        Value::Int(_) => {
            if all(&|v| matches!(v, Value::Int(x) if i8::try_from(*x).is_ok())) {
                0x54
            } else {
                0x71
            }
        }
        Value::Long(_) => {
            if all(&|v| matches!(v, Value::Long(x) if i8::try_from(*x).is_ok())) {
                0x55
            } else {
                0x81
            }
        }
        Value::Float(_) => 0x72,
        Value::Double(_) => 0x82,
        Value::Decimal32(_) => 0x74,
        Value::Decimal64(_) => 0x84,
        Value::Decimal128(_) => 0x94,
        Value::Char(_) => 0x73,
        Value::Timestamp(_) => 0x83,
        Value::Uuid(_) => 0x98,
        Value::Binary(_) => {
            if all(&short) {
                0xa0
            } else {
                0xb0
            }
        }
        Value::String(_) => {
            if all(&short) {
                0xa1
            } else {
                0xb1
            }
        }
        Value::Symbol(_) => {
            if all(&short) {
                0xa3
            } else {
                0xb3
            }
        }
        Value::List(_) => 0xd0,
        Value::Map(_) => 0xd1,
        Value::Array(_) => 0xf0,
        Value::Described(..) => 0x40, // unreachable: stripped
    }
}

/// Constructor (descriptors of the first element + element code) and elements.
pub(super) fn encode_array_content(items: &[Value], buf: &mut BytesMut) {
    let code = array_code(items);
    if let Some(mut f) = items.first() {
        while let Value::Described(d, inner) = f {
            buf.put_u8(0x00);
            put_descriptor(buf, d);
            f = inner;
        }
    }
    buf.put_u8(code);
    for e in items {
        encode_elem_body(strip(e), code, buf);
    }
}

pub(super) fn array_content_size(items: &[Value]) -> usize {
    let code = array_code(items);
    let mut ctor = 1;
    if let Some(mut f) = items.first() {
        while let Value::Described(d, inner) = f {
            ctor += 1 + descriptor_size(d);
            f = inner;
        }
    }
    ctor + items
        .iter()
        .map(|e| elem_body_size(strip(e), code))
        .sum::<usize>()
}
pub(super) fn encode_elem_body(v: &Value, code: u8, buf: &mut BytesMut) {
    match v {
        Value::Null => {}
        Value::Bool(b) => buf.put_u8(u8::from(*b)),
        Value::Ubyte(x) => buf.put_u8(*x),
        Value::Ushort(x) => buf.put_u16(*x),
        Value::Uint(x) => {
            if code == 0x52 {
                buf.put_u8(*x as u8)
            } else {
                buf.put_u32(*x)
            }
        }
        Value::Ulong(x) => {
            if code == 0x53 {
                buf.put_u8(*x as u8)
            } else {
                buf.put_u64(*x)
            }
        }
        Value::Byte(x) => buf.put_i8(*x),
        Value::Short(x) => buf.put_i16(*x),
        Value::Int(x) => {
            if code == 0x54 {
                buf.put_i8(*x as i8)
            } else {
                buf.put_i32(*x)
            }
        }
        Value::Long(x) => {
            if code == 0x55 {
                buf.put_i8(*x as i8)
            } else {
                buf.put_i64(*x)
            }
        }
        Value::Float(x) => buf.put_f32(*x),
        Value::Double(x) => buf.put_f64(*x),
        Value::Decimal32(d) => buf.put_slice(d),
        Value::Decimal64(d) => buf.put_slice(d),
        Value::Decimal128(d) => buf.put_slice(d),
        Value::Char(c) => buf.put_u32(u32::from(*c)),
        Value::Timestamp(t) => buf.put_i64(*t),
        Value::Uuid(u) => buf.put_slice(u),
        Value::Binary(b) => put_var_body(buf, code == 0xb0, b),
        Value::String(s) => put_var_body(buf, code == 0xb1, s.as_bytes()),
        Value::Symbol(s) => put_var_body(buf, code == 0xb3, s.0.as_bytes()),
        Value::List(items) => put_body32(buf, items.len(), |buf| {
            for i in items {
                encode_value(i, buf);
            }
        }),
        Value::Map(entries) => put_body32(buf, entries.len() * 2, |buf| {
            for (k, v) in entries {
                encode_value(k, buf);
                encode_value(v, buf);
            }
        }),
        Value::Array(items) => put_body32(buf, items.len(), |buf| encode_array_content(items, buf)),
        Value::Described(_, inner) => encode_elem_body(inner, code, buf),
    }
}

pub(super) fn elem_body_size(v: &Value, code: u8) -> usize {
    match v {
        Value::Null => 0,
        Value::Bool(_) | Value::Ubyte(_) | Value::Byte(_) => 1,
        Value::Ushort(_) | Value::Short(_) => 2,
        Value::Uint(_) | Value::Int(_) => {
            if code == 0x52 || code == 0x54 {
                1
            } else {
                4
            }
        }
        Value::Ulong(_) | Value::Long(_) => {
            if code == 0x53 || code == 0x55 {
                1
            } else {
                8
            }
        }
        Value::Float(_) | Value::Decimal32(_) | Value::Char(_) => 4,
        Value::Double(_) | Value::Decimal64(_) | Value::Timestamp(_) => 8,
        Value::Decimal128(_) | Value::Uuid(_) => 16,
        Value::Binary(b) => b.len() + if code == 0xb0 { 4 } else { 1 },
        Value::String(s) => s.len() + if code == 0xb1 { 4 } else { 1 },
        Value::Symbol(s) => s.0.len() + if code == 0xb3 { 4 } else { 1 },
        Value::List(items) => 8 + items.iter().map(value_size).sum::<usize>(),
        Value::Map(entries) => {
            8 + entries
                .iter()
                .map(|(k, v)| value_size(k) + value_size(v))
                .sum::<usize>()
        }
        Value::Array(items) => 8 + array_content_size(items),
        Value::Described(_, inner) => elem_body_size(inner, code),
    }
}

/// Encode an `array` of `symbol` (always the array form, also for 0 or 1 element).
pub(crate) fn put_symbol_array(buf: &mut BytesMut, syms: &[Symbol]) {
    let wide = syms.iter().any(|s| s.0.len() > 255);
    let start = begin_compound(buf);
    buf.put_u8(if wide { 0xb3 } else { 0xa3 });
    for s in syms {
        put_var_body(buf, wide, s.0.as_bytes());
    }
    finish_compound(buf, start, syms.len(), 0xe0, 0xf0);
}

pub(super) fn symbol_array_size(syms: &[Symbol]) -> usize {
    let wide = syms.iter().any(|s| s.0.len() > 255);
    let per = if wide { 4 } else { 1 };
    let body = 1 + syms.iter().map(|s| per + s.0.len()).sum::<usize>();
    compound_size(body, syms.len())
}
