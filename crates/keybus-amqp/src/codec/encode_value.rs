//! Encoding of complete [`Value`]s (lists and maps included) and their sizes.

use bytes::{BufMut, BytesMut};

use super::array::{array_content_size, array_encodable, encode_array_content};
use super::compound::{begin_compound, compound_size, finish_compound};
use super::encode_primitive::{
    descriptor_size, put_binary, put_descriptor, put_string, put_symbol, put_uint, put_ulong,
    uint_size, ulong_size, var_size,
};
use crate::Value;

pub(crate) fn encode_value(v: &Value, buf: &mut BytesMut) {
    match v {
        Value::Null => buf.put_u8(0x40),
        Value::Bool(true) => buf.put_u8(0x41),
        Value::Bool(false) => buf.put_u8(0x42),
        Value::Ubyte(x) => buf.put_slice(&[0x50, *x]),
        Value::Ushort(x) => {
            buf.put_u8(0x60);
            buf.put_u16(*x);
        }
        Value::Uint(x) => put_uint(buf, *x),
        Value::Ulong(x) => put_ulong(buf, *x),
        Value::Byte(x) => buf.put_slice(&[0x51, *x as u8]),
        Value::Short(x) => {
            buf.put_u8(0x61);
            buf.put_i16(*x);
        }
        Value::Int(x) => {
            if let Ok(b) = i8::try_from(*x) {
                buf.put_slice(&[0x54, b as u8]);
            } else {
                buf.put_u8(0x71);
                buf.put_i32(*x);
            }
        }
        Value::Long(x) => {
            if let Ok(b) = i8::try_from(*x) {
                buf.put_slice(&[0x55, b as u8]);
            } else {
                buf.put_u8(0x81);
                buf.put_i64(*x);
            }
        }
        Value::Float(x) => {
            buf.put_u8(0x72);
            buf.put_f32(*x);
        }
        Value::Double(x) => {
            buf.put_u8(0x82);
            buf.put_f64(*x);
        }
        Value::Decimal32(d) => {
            buf.put_u8(0x74);
            buf.put_slice(d);
        }
        Value::Decimal64(d) => {
            buf.put_u8(0x84);
            buf.put_slice(d);
        }
        Value::Decimal128(d) => {
            buf.put_u8(0x94);
            buf.put_slice(d);
        }
        Value::Char(c) => {
            buf.put_u8(0x73);
            buf.put_u32(u32::from(*c));
        }
        Value::Timestamp(t) => {
            buf.put_u8(0x83);
            buf.put_i64(*t);
        }
        Value::Uuid(u) => {
            buf.put_u8(0x98);
            buf.put_slice(u);
        }
        Value::Binary(b) => put_binary(buf, b),
        Value::String(s) => put_string(buf, s),
        Value::Symbol(s) => put_symbol(buf, s.as_str()),
        Value::List(items) => encode_list_values(items, buf),
        Value::Map(entries) => encode_map(entries, buf),
        Value::Array(items) => {
            if array_encodable(items) {
                let start = begin_compound(buf);
                encode_array_content(items, buf);
                finish_compound(buf, start, items.len(), 0xe0, 0xf0);
            } else {
                encode_list_values(items, buf);
            }
        }
        Value::Described(d, inner) => {
            buf.put_u8(0x00);
            put_descriptor(buf, d);
            encode_value(inner, buf);
        }
    }
}

pub(crate) fn encode_list_values(items: &[Value], buf: &mut BytesMut) {
    if items.is_empty() {
        buf.put_u8(0x45);
        return;
    }
    let start = begin_compound(buf);
    for i in items {
        encode_value(i, buf);
    }
    finish_compound(buf, start, items.len(), 0xc0, 0xd0);
}

/// Encode a map (map8 or map32).
pub fn encode_map(entries: &[(Value, Value)], buf: &mut BytesMut) {
    encode_map_parts(&[entries], buf);
}

/// Encode one map made of the entries of `parts`, in order (no copy of them into one list).
pub(crate) fn encode_map_parts(parts: &[&[(Value, Value)]], buf: &mut BytesMut) {
    let start = begin_compound(buf);
    let mut count = 0;
    for (k, v) in parts.iter().flat_map(|p| p.iter()) {
        encode_value(k, buf);
        encode_value(v, buf);
        count += 2;
    }
    finish_compound(buf, start, count, 0xc1, 0xd1);
}

/// Encoded size of a map.
pub fn map_size(entries: &[(Value, Value)]) -> usize {
    map_parts_size(&[entries])
}

/// Encoded size of the map [`encode_map_parts`] writes.
pub(crate) fn map_parts_size(parts: &[&[(Value, Value)]]) -> usize {
    let entries = parts.iter().flat_map(|p| p.iter());
    let body: usize = entries
        .clone()
        .map(|(k, v)| value_size(k) + value_size(v))
        .sum();
    compound_size(body, entries.count() * 2)
}

pub(super) fn list_values_size(items: &[Value]) -> usize {
    if items.is_empty() {
        return 1;
    }
    let body: usize = items.iter().map(value_size).sum();
    compound_size(body, items.len())
}

pub(crate) fn value_size(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) => 1,
        Value::Ubyte(_) | Value::Byte(_) => 2,
        Value::Ushort(_) | Value::Short(_) => 3,
        Value::Uint(x) => uint_size(*x),
        Value::Ulong(x) => ulong_size(*x),
        Value::Int(x) => {
            if i8::try_from(*x).is_ok() {
                2
            } else {
                5
            }
        }
        Value::Long(x) => {
            if i8::try_from(*x).is_ok() {
                2
            } else {
                9
            }
        }
        Value::Float(_) | Value::Decimal32(_) | Value::Char(_) => 5,
        Value::Double(_) | Value::Decimal64(_) | Value::Timestamp(_) => 9,
        Value::Decimal128(_) | Value::Uuid(_) => 17,
        Value::Binary(b) => var_size(b.len()),
        Value::String(s) => var_size(s.len()),
        Value::Symbol(s) => var_size(s.0.len()),
        Value::List(items) => list_values_size(items),
        Value::Map(entries) => map_size(entries),
        Value::Array(items) => {
            if array_encodable(items) {
                compound_size(array_content_size(items), items.len())
            } else {
                list_values_size(items)
            }
        }
        Value::Described(d, inner) => 1 + descriptor_size(d) + value_size(inner),
    }
}
