//! Encoding of described lists with typed fields (performatives, sections,
//! terminus, ...): [`F`], [`DescribedList`], trailing nulls trimmed.

use bytes::{BufMut, BytesMut};

use super::array::{put_symbol_array, symbol_array_size};
use super::compound::{compound_size, fits8};
use super::encode_primitive::{
    put_binary, put_string, put_symbol, put_uint, put_ulong, uint_size, ulong_size, var_size,
};
use super::encode_value::{encode_map, encode_value, map_size, value_size};
use crate::{Symbol, Value};

/// One field of a described list, with its exact AMQP type.
pub(crate) enum F<'a> {
    Null,
    Bool(bool),
    Ubyte(u8),
    Ushort(u16),
    Uint(u32),
    Ulong(u64),
    Ts(i64),
    Str(&'a str),
    Sym(&'a str),
    Bin(&'a [u8]),
    Syms(&'a [Symbol]),
    Map(&'a [(Value, Value)]),
    Val(&'a Value),
    /// A nested described list (error, source, target, delivery state).
    Nested(&'a dyn DescribedList),
}

/// A composite type encoded as a described list.
pub(crate) trait DescribedList {
    fn code(&self) -> u64;
    /// Calls `f` with the fields (trailing nulls are trimmed by the encoder).
    fn with_fields(&self, f: &mut dyn FnMut(&[F<'_>]));
}

impl F<'_> {
    pub(super) fn is_null(&self) -> bool {
        matches!(self, F::Null)
    }

    pub(super) fn size(&self) -> usize {
        match self {
            F::Null | F::Bool(_) => 1,
            F::Ubyte(_) => 2,
            F::Ushort(_) => 3,
            F::Uint(v) => uint_size(*v),
            F::Ulong(v) => ulong_size(*v),
            F::Ts(_) => 9,
            F::Str(s) | F::Sym(s) => var_size(s.len()),
            F::Bin(b) => var_size(b.len()),
            F::Syms(s) => symbol_array_size(s),
            F::Map(m) => map_size(m),
            F::Val(v) => value_size(v),
            F::Nested(n) => described_list_size(*n),
        }
    }

    pub(super) fn encode(&self, buf: &mut BytesMut) {
        match self {
            F::Null => buf.put_u8(0x40),
            F::Bool(b) => buf.put_u8(if *b { 0x41 } else { 0x42 }),
            F::Ubyte(v) => buf.put_slice(&[0x50, *v]),
            F::Ushort(v) => {
                buf.put_u8(0x60);
                buf.put_u16(*v);
            }
            F::Uint(v) => put_uint(buf, *v),
            F::Ulong(v) => put_ulong(buf, *v),
            F::Ts(t) => {
                buf.put_u8(0x83);
                buf.put_i64(*t);
            }
            F::Str(s) => put_string(buf, s),
            F::Sym(s) => put_symbol(buf, s),
            F::Bin(b) => put_binary(buf, b),
            F::Syms(s) => put_symbol_array(buf, s),
            F::Map(m) => encode_map(m, buf),
            F::Val(v) => encode_value(v, buf),
            F::Nested(n) => encode_described_list(*n, buf),
        }
    }
}

pub(super) fn trimmed<'s, 'a>(fields: &'s [F<'a>]) -> &'s [F<'a>] {
    let n = fields
        .iter()
        .rposition(|f| !f.is_null())
        .map_or(0, |i| i + 1);
    fields.get(..n).unwrap_or_default()
}

pub(crate) fn list_fields_size(fields: &[F<'_>]) -> usize {
    let fields = trimmed(fields);
    if fields.is_empty() {
        return 1;
    }
    let body: usize = fields.iter().map(F::size).sum();
    compound_size(body, fields.len())
}

pub(crate) fn encode_list_fields(fields: &[F<'_>], buf: &mut BytesMut) {
    let fields = trimmed(fields);
    if fields.is_empty() {
        buf.put_u8(0x45);
        return;
    }
    let body: usize = fields.iter().map(F::size).sum();
    if fits8(body, fields.len()) {
        buf.reserve(3 + body);
        buf.put_slice(&[0xc0, (body + 1) as u8, fields.len() as u8]);
    } else {
        buf.reserve(9 + body);
        buf.put_u8(0xd0);
        buf.put_u32((body + 4) as u32);
        buf.put_u32(fields.len() as u32);
    }
    for f in fields {
        f.encode(buf);
    }
}

pub(crate) fn described_list_size(x: &dyn DescribedList) -> usize {
    let mut n = 0;
    x.with_fields(&mut |f| n = list_fields_size(f));
    1 + ulong_size(x.code()) + n
}

pub(crate) fn encode_described_list(x: &dyn DescribedList, buf: &mut BytesMut) {
    buf.put_u8(0x00);
    put_ulong(buf, x.code());
    x.with_fields(&mut |f| encode_list_fields(f, buf));
}
