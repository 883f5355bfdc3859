//! Encoding of primitive values in their smallest form, and their sizes.

use bytes::{BufMut, BytesMut};

use crate::Descriptor;

pub(super) fn put_var(buf: &mut BytesMut, code8: u8, code32: u8, data: &[u8]) {
    if data.len() <= 255 {
        buf.put_u8(code8);
        buf.put_u8(data.len() as u8);
    } else {
        buf.put_u8(code32);
        buf.put_u32(data.len() as u32);
    }
    buf.put_slice(data);
}

pub(super) fn var_size(len: usize) -> usize {
    if len <= 255 { 2 + len } else { 5 + len }
}

pub(crate) fn put_symbol(buf: &mut BytesMut, s: &str) {
    put_var(buf, 0xa3, 0xb3, s.as_bytes());
}

pub(crate) fn put_string(buf: &mut BytesMut, s: &str) {
    put_var(buf, 0xa1, 0xb1, s.as_bytes());
}

pub(crate) fn put_binary(buf: &mut BytesMut, b: &[u8]) {
    put_var(buf, 0xa0, 0xb0, b);
}

pub(crate) fn put_uint(buf: &mut BytesMut, v: u32) {
    if v == 0 {
        buf.put_u8(0x43);
    } else if v <= 255 {
        buf.put_u8(0x52);
        buf.put_u8(v as u8);
    } else {
        buf.put_u8(0x70);
        buf.put_u32(v);
    }
}

pub(super) fn uint_size(v: u32) -> usize {
    match v {
        0 => 1,
        1..=255 => 2,
        _ => 5,
    }
}

pub(crate) fn put_ulong(buf: &mut BytesMut, v: u64) {
    if v == 0 {
        buf.put_u8(0x44);
    } else if v <= 255 {
        buf.put_u8(0x53);
        buf.put_u8(v as u8);
    } else {
        buf.put_u8(0x80);
        buf.put_u64(v);
    }
}

pub(super) fn ulong_size(v: u64) -> usize {
    match v {
        0 => 1,
        1..=255 => 2,
        _ => 9,
    }
}

pub(crate) fn put_descriptor(buf: &mut BytesMut, d: &Descriptor) {
    match d {
        Descriptor::Code(c) => put_ulong(buf, *c),
        Descriptor::Symbol(s) => put_symbol(buf, s.as_str()),
    }
}

pub(super) fn descriptor_size(d: &Descriptor) -> usize {
    match d {
        Descriptor::Code(c) => ulong_size(*c),
        Descriptor::Symbol(s) => var_size(s.0.len()),
    }
}
pub(super) fn put_var_body(buf: &mut BytesMut, wide: bool, data: &[u8]) {
    if wide {
        buf.put_u32(data.len() as u32);
    } else {
        buf.put_u8(data.len() as u8);
    }
    buf.put_slice(data);
}
