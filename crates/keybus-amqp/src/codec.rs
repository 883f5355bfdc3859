//! Low-level encoding and decoding of AMQP 1.0 primitive and compound types.

use std::mem::discriminant;

use bytes::{BufMut, Bytes, BytesMut};

use crate::{DecodeError, Descriptor, Symbol, Value};

/// Maximum nesting of compound and described values.
pub const MAX_DEPTH: usize = 64;

type Result<T> = std::result::Result<T, DecodeError>;

/// Map the symbolic descriptors defined by AMQP 1.0 to their numeric codes.
pub(crate) fn symbolic_descriptor_code(s: &str) -> Option<u64> {
    Some(match s {
        "amqp:open:list" => 0x10,
        "amqp:begin:list" => 0x11,
        "amqp:attach:list" => 0x12,
        "amqp:flow:list" => 0x13,
        "amqp:transfer:list" => 0x14,
        "amqp:disposition:list" => 0x15,
        "amqp:detach:list" => 0x16,
        "amqp:end:list" => 0x17,
        "amqp:close:list" => 0x18,
        "amqp:error:list" => 0x1d,
        "amqp:received:list" => 0x23,
        "amqp:accepted:list" => 0x24,
        "amqp:rejected:list" => 0x25,
        "amqp:released:list" => 0x26,
        "amqp:modified:list" => 0x27,
        "amqp:source:list" => 0x28,
        "amqp:target:list" => 0x29,
        "amqp:sasl-mechanisms:list" => 0x40,
        "amqp:sasl-init:list" => 0x41,
        "amqp:sasl-challenge:list" => 0x42,
        "amqp:sasl-response:list" => 0x43,
        "amqp:sasl-outcome:list" => 0x44,
        "amqp:header:list" => 0x70,
        "amqp:delivery-annotations:map" => 0x71,
        "amqp:message-annotations:map" => 0x72,
        "amqp:properties:list" => 0x73,
        "amqp:application-properties:map" => 0x74,
        "amqp:data:binary" => 0x75,
        "amqp:amqp-sequence:list" => 0x76,
        "amqp:amqp-value:*" => 0x77,
        "amqp:footer:map" => 0x78,
        _ => return None,
    })
}

/// How the body following a format code is laid out.
enum Width {
    Fixed(usize),
    Var8,
    Var32,
}

fn width(code: u8) -> Option<Width> {
    Some(match code {
        0x40..=0x45 => Width::Fixed(0),
        0x50..=0x56 => Width::Fixed(1),
        0x60 | 0x61 => Width::Fixed(2),
        0x70..=0x74 => Width::Fixed(4),
        0x80..=0x84 => Width::Fixed(8),
        0x94 | 0x98 => Width::Fixed(16),
        0xa0 | 0xa1 | 0xa3 | 0xc0 | 0xc1 | 0xe0 => Width::Var8,
        0xb0 | 0xb1 | 0xb3 | 0xd0 | 0xd1 | 0xf0 => Width::Var32,
        _ => return None,
    })
}

// ---------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------

/// A bounds-checked cursor over a byte slice. If built from [`Bytes`],
/// `binary` values are zero-copy slices of it.
pub(crate) struct Dec<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
    src: Option<&'a Bytes>,
    depth: usize,
    zero_width_budget: usize,
}

/// Zero-width array elements allowed per decode beyond one per input byte.
const ZERO_WIDTH_SLACK: usize = 4096;

impl<'a> Dec<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Dec {
            buf,
            pos: 0,
            end: buf.len(),
            src: None,
            depth: 0,
            zero_width_budget: buf.len() + ZERO_WIDTH_SLACK,
        }
    }

    pub fn with_bytes(b: &'a Bytes) -> Self {
        Dec {
            buf: b.as_ref(),
            pos: 0,
            end: b.len(),
            src: Some(b),
            depth: 0,
            zero_width_budget: b.len() + ZERO_WIDTH_SLACK,
        }
    }

    pub fn pos(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.end.saturating_sub(self.pos)
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    fn eof(&self) -> DecodeError {
        DecodeError::UnexpectedEof { offset: self.pos }
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.eof());
        }
        let s = self
            .buf
            .get(self.pos..self.pos + n)
            .ok_or_else(|| self.eof())?;
        self.pos += n;
        Ok(s)
    }

    fn arr<const N: usize>(&mut self) -> Result<[u8; N]> {
        let s = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8> {
        Ok(self.arr::<1>()?[0])
    }

    pub fn peek_u8(&self) -> Option<u8> {
        if self.pos < self.end {
            self.buf.get(self.pos).copied()
        } else {
            None
        }
    }

    pub fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_be_bytes(self.arr()?))
    }

    pub fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_be_bytes(self.arr()?))
    }

    pub fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_be_bytes(self.arr()?))
    }

    /// `n` bytes as [`Bytes`]: zero-copy if the decoder wraps a `Bytes`.
    pub fn bytes(&mut self, n: usize) -> Result<Bytes> {
        let start = self.pos;
        let s = self.take(n)?;
        Ok(match self.src {
            Some(src) => src.slice(start..start + n),
            None => Bytes::copy_from_slice(s),
        })
    }

    /// The rest of the (bounded) input as `Bytes`.
    pub fn rest_bytes(&mut self) -> Result<Bytes> {
        self.bytes(self.remaining())
    }

    pub fn str(&mut self, n: usize) -> Result<String> {
        let offset = self.pos;
        let s = self.take(n)?;
        match std::str::from_utf8(s) {
            Ok(s) => Ok(s.to_owned()),
            Err(_) => Err(DecodeError::InvalidUtf8 { offset }),
        }
    }

    fn len8or32(&mut self, wide: bool) -> Result<usize> {
        Ok(if wide {
            self.u32()? as usize
        } else {
            usize::from(self.u8()?)
        })
    }

    fn push_depth(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep {
                offset: self.pos,
                limit: MAX_DEPTH,
            });
        }
        Ok(())
    }

    fn pop_depth(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    /// Restrict reading to the next `size` bytes; returns the previous limit.
    fn enter(&mut self, size: usize) -> Result<usize> {
        if size > self.remaining() {
            return Err(DecodeError::UnexpectedEof { offset: self.end });
        }
        let saved = self.end;
        self.end = self.pos + size;
        Ok(saved)
    }

    /// Check the bounded region is fully consumed and restore the limit.
    fn leave(&mut self, saved: usize) -> Result<()> {
        if self.pos != self.end {
            return Err(DecodeError::InvalidSize { offset: self.pos });
        }
        self.end = saved;
        Ok(())
    }

    /// Reads a compound header (size, count) and bounds the decoder to it.
    /// Returns (saved limit, count, size).
    fn compound_header(&mut self, wide: bool) -> Result<(usize, usize, usize)> {
        let size = self.len8or32(wide)?;
        let saved = self.enter(size)?;
        let count = self.len8or32(wide)?;
        Ok((saved, count, size))
    }

    /// Decode one complete value.
    pub fn value(&mut self) -> Result<Value> {
        let code = self.u8()?;
        if code == 0x00 {
            return self.described_rest();
        }
        self.body(code)
    }

    /// After a `0x00` constructor byte: descriptor and described value.
    pub fn described_rest(&mut self) -> Result<Value> {
        self.push_depth()?;
        let d = self.descriptor()?;
        let v = self.value()?;
        self.pop_depth();
        Ok(Value::Described(Box::new(d), Box::new(v)))
    }

    /// A descriptor: `ulong` or `symbol`.
    pub fn descriptor(&mut self) -> Result<Descriptor> {
        let offset = self.pos;
        Ok(match self.u8()? {
            0x44 => Descriptor::Code(0),
            0x53 => Descriptor::Code(u64::from(self.u8()?)),
            0x80 => Descriptor::Code(self.u64()?),
            0xa3 => {
                let n = usize::from(self.u8()?);
                Descriptor::Symbol(Symbol(self.str(n)?))
            }
            0xb3 => {
                let n = self.u32()? as usize;
                Descriptor::Symbol(Symbol(self.str(n)?))
            }
            _ => return Err(DecodeError::InvalidDescriptor { offset }),
        })
    }

    /// Decode the body of a value whose format code has been read.
    pub fn body(&mut self, code: u8) -> Result<Value> {
        Ok(match code {
            0x40 => Value::Null,
            0x41 => Value::Bool(true),
            0x42 => Value::Bool(false),
            0x56 => Value::Bool(self.u8()? != 0),
            0x50 => Value::Ubyte(self.u8()?),
            0x60 => Value::Ushort(self.u16()?),
            0x43 => Value::Uint(0),
            0x52 => Value::Uint(u32::from(self.u8()?)),
            0x70 => Value::Uint(self.u32()?),
            0x44 => Value::Ulong(0),
            0x53 => Value::Ulong(u64::from(self.u8()?)),
            0x80 => Value::Ulong(self.u64()?),
            0x51 => Value::Byte(i8::from_be_bytes(self.arr()?)),
            0x61 => Value::Short(i16::from_be_bytes(self.arr()?)),
            0x54 => Value::Int(i32::from(i8::from_be_bytes(self.arr()?))),
            0x71 => Value::Int(i32::from_be_bytes(self.arr()?)),
            0x55 => Value::Long(i64::from(i8::from_be_bytes(self.arr()?))),
            0x81 => Value::Long(i64::from_be_bytes(self.arr()?)),
            0x72 => Value::Float(f32::from_be_bytes(self.arr()?)),
            0x82 => Value::Double(f64::from_be_bytes(self.arr()?)),
            0x74 => Value::Decimal32(self.arr()?),
            0x84 => Value::Decimal64(self.arr()?),
            0x94 => Value::Decimal128(self.arr()?),
            0x73 => {
                let offset = self.pos;
                let c = self.u32()?;
                Value::Char(char::from_u32(c).ok_or(DecodeError::InvalidChar { offset })?)
            }
            0x83 => Value::Timestamp(i64::from_be_bytes(self.arr()?)),
            0x98 => Value::Uuid(self.arr()?),
            0xa0 | 0xb0 => {
                let n = self.len8or32(code == 0xb0)?;
                Value::Binary(self.bytes(n)?)
            }
            0xa1 | 0xb1 => {
                let n = self.len8or32(code == 0xb1)?;
                Value::String(self.str(n)?)
            }
            0xa3 | 0xb3 => {
                let n = self.len8or32(code == 0xb3)?;
                Value::Symbol(Symbol(self.str(n)?))
            }
            0x45 => Value::List(Vec::new()),
            0xc0 | 0xd0 => Value::List(self.list_items(code == 0xd0)?),
            0xc1 | 0xd1 => Value::Map(self.map_entries(code == 0xd1)?),
            0xe0 | 0xf0 => Value::Array(self.array_items(code == 0xf0)?),
            c => return Err(DecodeError::InvalidConstructor(c)),
        })
    }

    fn list_items(&mut self, wide: bool) -> Result<Vec<Value>> {
        self.push_depth()?;
        let (saved, count, _) = self.compound_header(wide)?;
        if count > self.remaining() {
            return Err(DecodeError::InvalidSize { offset: self.pos });
        }
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            items.push(self.value()?);
        }
        self.leave(saved)?;
        self.pop_depth();
        Ok(items)
    }

    pub fn map_entries(&mut self, wide: bool) -> Result<Vec<(Value, Value)>> {
        self.push_depth()?;
        let offset = self.pos;
        let (saved, count, _) = self.compound_header(wide)?;
        if count % 2 != 0 {
            return Err(DecodeError::OddMapCount { offset });
        }
        if count > self.remaining() {
            return Err(DecodeError::InvalidSize { offset: self.pos });
        }
        let mut entries = Vec::with_capacity((count / 2).min(self.remaining() / 2));
        for _ in 0..count / 2 {
            let k = self.value()?;
            let v = self.value()?;
            entries.push((k, v));
        }
        self.leave(saved)?;
        self.pop_depth();
        Ok(entries)
    }

    fn array_items(&mut self, wide: bool) -> Result<Vec<Value>> {
        self.push_depth()?;
        let (saved, count, _) = self.compound_header(wide)?;
        let mut descriptors: Vec<Descriptor> = Vec::new();
        let mut code = self.u8()?;
        while code == 0x00 {
            self.push_depth()?;
            descriptors.push(self.descriptor()?);
            code = self.u8()?;
        }
        if matches!(width(code), Some(Width::Fixed(0))) {
            // Zero-width elements (e.g. an array of nulls) cost no input bytes:
            // charge them to a per-decode budget so a few bytes cannot make us
            // build billions of values.
            if count > self.zero_width_budget {
                return Err(DecodeError::InvalidSize { offset: self.pos });
            }
            self.zero_width_budget -= count;
        } else if count > self.remaining() {
            return Err(DecodeError::InvalidSize { offset: self.pos });
        }
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            let mut v = self.body(code)?;
            for d in descriptors.iter().rev() {
                v = Value::Described(Box::new(d.clone()), Box::new(v));
            }
            items.push(v);
        }
        for _ in 0..descriptors.len() {
            self.pop_depth();
        }
        self.leave(saved)?;
        self.pop_depth();
        Ok(items)
    }

    /// Skip one complete value, checking only its framing (not its contents).
    pub fn skip_value(&mut self) -> Result<()> {
        let code = self.u8()?;
        if code == 0x00 {
            self.push_depth()?;
            self.descriptor()?;
            self.skip_value()?;
            self.pop_depth();
            return Ok(());
        }
        self.skip_body(code)
    }

    fn skip_body(&mut self, code: u8) -> Result<()> {
        let n = match width(code) {
            Some(Width::Fixed(n)) => n,
            Some(Width::Var8) => usize::from(self.u8()?),
            Some(Width::Var32) => self.u32()? as usize,
            None => return Err(DecodeError::InvalidConstructor(code)),
        };
        self.take(n).map(|_| ())
    }

    /// Read a list constructor and bound the decoder to the list.
    pub fn list_start(&mut self) -> Result<Option<ListGuard>> {
        let offset = self.pos;
        match self.u8()? {
            0x45 => {
                self.push_depth()?;
                Ok(Some(ListGuard {
                    saved: None,
                    count: 0,
                }))
            }
            c @ (0xc0 | 0xd0) => {
                self.push_depth()?;
                let (saved, count, _) = self.compound_header(c == 0xd0)?;
                Ok(Some(ListGuard {
                    saved: Some(saved),
                    count,
                }))
            }
            _ => {
                self.pos = offset;
                Ok(None)
            }
        }
    }

    pub fn list_end(&mut self, g: ListGuard) -> Result<()> {
        if let Some(saved) = g.saved {
            self.leave(saved)?;
        }
        self.pop_depth();
        Ok(())
    }
}

/// An open list region (see [`Dec::list_start`]).
pub(crate) struct ListGuard {
    /// The enclosing limit, `None` for `list0` (which sets no limit).
    saved: Option<usize>,
    pub count: usize,
}

// ---------------------------------------------------------------------------
// Encoding of values
// ---------------------------------------------------------------------------

fn put_var(buf: &mut BytesMut, code8: u8, code32: u8, data: &[u8]) {
    if data.len() <= 255 {
        buf.put_u8(code8);
        buf.put_u8(data.len() as u8);
    } else {
        buf.put_u8(code32);
        buf.put_u32(data.len() as u32);
    }
    buf.put_slice(data);
}

fn var_size(len: usize) -> usize {
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

fn uint_size(v: u32) -> usize {
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

fn ulong_size(v: u64) -> usize {
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

fn descriptor_size(d: &Descriptor) -> usize {
    match d {
        Descriptor::Code(c) => ulong_size(*c),
        Descriptor::Symbol(s) => var_size(s.0.len()),
    }
}

/// Reserve a 9-byte compound header (32-bit form) and return its position.
fn begin_compound(buf: &mut BytesMut) -> usize {
    let start = buf.len();
    buf.put_bytes(0, 9);
    start
}

/// Whether a compound with `body` bytes after the count and `count`
/// elements fits the 8-bit form.
fn fits8(body: usize, count: usize) -> bool {
    body < 255 && count <= 255
}

fn compound_size(body: usize, count: usize) -> usize {
    if fits8(body, count) {
        3 + body
    } else {
        9 + body
    }
}

/// Patch the header reserved by [`begin_compound`], shrinking to the
/// 8-bit form when possible.
fn finish_compound(buf: &mut BytesMut, start: usize, count: usize, code8: u8, code32: u8) {
    let body = buf.len().saturating_sub(start + 9);
    if fits8(body, count) {
        buf.copy_within(start + 9..start + 9 + body, start + 3);
        buf.truncate(start + 3 + body);
        if let Some(h) = buf.get_mut(start..start + 3) {
            h.copy_from_slice(&[code8, (body + 1) as u8, count as u8]);
        }
    } else if let Some(h) = buf.get_mut(start..start + 9) {
        let mut hdr = [0u8; 9];
        hdr[0] = code32;
        hdr[1..5].copy_from_slice(&((body + 4) as u32).to_be_bytes());
        hdr[5..9].copy_from_slice(&(count as u32).to_be_bytes());
        h.copy_from_slice(&hdr);
    }
}

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
    let start = begin_compound(buf);
    for (k, v) in entries {
        encode_value(k, buf);
        encode_value(v, buf);
    }
    finish_compound(buf, start, entries.len() * 2, 0xc1, 0xd1);
}

/// Encoded size of a map.
pub fn map_size(entries: &[(Value, Value)]) -> usize {
    let body: usize = entries
        .iter()
        .map(|(k, v)| value_size(k) + value_size(v))
        .sum();
    compound_size(body, entries.len() * 2)
}

fn list_values_size(items: &[Value]) -> usize {
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

// ---------------------------------------------------------------------------
// Arrays
// ---------------------------------------------------------------------------

fn same_type(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Described(da, ia), Value::Described(db, ib)) => da == db && same_type(ia, ib),
        _ => discriminant(a) == discriminant(b),
    }
}

fn strip(mut v: &Value) -> &Value {
    while let Value::Described(_, inner) = v {
        v = inner;
    }
    v
}

/// Whether `items` can be encoded as an AMQP array (all of one type,
/// recursively for nested arrays).
fn array_encodable(items: &[Value]) -> bool {
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
fn array_code(items: &[Value]) -> u8 {
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
fn encode_array_content(items: &[Value], buf: &mut BytesMut) {
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

fn array_content_size(items: &[Value]) -> usize {
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

fn put_var_body(buf: &mut BytesMut, wide: bool, data: &[u8]) {
    if wide {
        buf.put_u32(data.len() as u32);
    } else {
        buf.put_u8(data.len() as u8);
    }
    buf.put_slice(data);
}

/// Write `size:u32 count:u32 <content>` for a compound element in an array.
fn put_body32(buf: &mut BytesMut, count: usize, content: impl FnOnce(&mut BytesMut)) {
    let start = buf.len();
    buf.put_u32(0);
    buf.put_u32(count as u32);
    content(buf);
    let size = (buf.len() - start - 4) as u32;
    if let Some(h) = buf.get_mut(start..start + 4) {
        h.copy_from_slice(&size.to_be_bytes());
    }
}

fn encode_elem_body(v: &Value, code: u8, buf: &mut BytesMut) {
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

fn elem_body_size(v: &Value, code: u8) -> usize {
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

fn symbol_array_size(syms: &[Symbol]) -> usize {
    let wide = syms.iter().any(|s| s.0.len() > 255);
    let per = if wide { 4 } else { 1 };
    let body = 1 + syms.iter().map(|s| per + s.0.len()).sum::<usize>();
    compound_size(body, syms.len())
}

// ---------------------------------------------------------------------------
// Described lists with typed fields (performatives, sections, terminus, ...)
// ---------------------------------------------------------------------------

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
    fn is_null(&self) -> bool {
        matches!(self, F::Null)
    }

    fn size(&self) -> usize {
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

    fn encode(&self, buf: &mut BytesMut) {
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

fn trimmed<'s, 'a>(fields: &'s [F<'a>]) -> &'s [F<'a>] {
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

// ---------------------------------------------------------------------------
// Typed field decoding
// ---------------------------------------------------------------------------

/// Reads the fields of a described list one by one with type checks.
pub(crate) struct Fields<'d, 'a> {
    pub dec: &'d mut Dec<'a>,
    guard: Option<ListGuard>,
    left: usize,
    name: &'static str,
}

impl<'d, 'a> Fields<'d, 'a> {
    /// Start reading the list that follows a descriptor.
    pub fn open(dec: &'d mut Dec<'a>, name: &'static str) -> Result<Self> {
        match dec.list_start()? {
            Some(g) => {
                let left = g.count;
                Ok(Fields {
                    dec,
                    guard: Some(g),
                    left,
                    name,
                })
            }
            None => Err(DecodeError::InvalidField {
                performative: name,
                field: "<list>",
            }),
        }
    }

    /// Skip unknown trailing fields and check the list size.
    pub fn finish(mut self) -> Result<()> {
        while self.left > 0 {
            self.left -= 1;
            self.dec.skip_value()?;
        }
        match self.guard.take() {
            Some(g) => self.dec.list_end(g),
            None => Ok(()),
        }
    }

    pub fn bad(&self, field: &'static str) -> DecodeError {
        DecodeError::InvalidField {
            performative: self.name,
            field,
        }
    }

    /// Next field's constructor; `None` for null or absent.
    fn code(&mut self) -> Result<Option<u8>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        match self.dec.u8()? {
            0x40 => Ok(None),
            c => Ok(Some(c)),
        }
    }

    pub fn bool(&mut self, field: &'static str) -> Result<Option<bool>> {
        Ok(match self.code()? {
            None => None,
            Some(0x41) => Some(true),
            Some(0x42) => Some(false),
            Some(0x56) => Some(self.dec.u8()? != 0),
            Some(_) => return Err(self.bad(field)),
        })
    }

    pub fn ubyte(&mut self, field: &'static str) -> Result<Option<u8>> {
        match self.code()? {
            None => Ok(None),
            Some(0x50) => Ok(Some(self.dec.u8()?)),
            Some(_) => Err(self.bad(field)),
        }
    }

    pub fn ushort(&mut self, field: &'static str) -> Result<Option<u16>> {
        match self.code()? {
            None => Ok(None),
            Some(0x60) => Ok(Some(self.dec.u16()?)),
            Some(_) => Err(self.bad(field)),
        }
    }

    pub fn uint(&mut self, field: &'static str) -> Result<Option<u32>> {
        Ok(match self.code()? {
            None => None,
            Some(0x43) => Some(0),
            Some(0x52) => Some(u32::from(self.dec.u8()?)),
            Some(0x70) => Some(self.dec.u32()?),
            Some(_) => return Err(self.bad(field)),
        })
    }

    pub fn ulong(&mut self, field: &'static str) -> Result<Option<u64>> {
        Ok(match self.code()? {
            None => None,
            Some(0x44) => Some(0),
            Some(0x53) => Some(u64::from(self.dec.u8()?)),
            Some(0x80) => Some(self.dec.u64()?),
            Some(_) => return Err(self.bad(field)),
        })
    }

    pub fn timestamp(&mut self, field: &'static str) -> Result<Option<i64>> {
        match self.code()? {
            None => Ok(None),
            Some(0x83) => Ok(Some(i64::from_be_bytes(self.dec.arr()?))),
            Some(_) => Err(self.bad(field)),
        }
    }

    pub fn string(&mut self, field: &'static str) -> Result<Option<String>> {
        match self.code()? {
            None => Ok(None),
            Some(c @ (0xa1 | 0xb1)) => {
                let n = self.dec.len8or32(c == 0xb1)?;
                Ok(Some(self.dec.str(n)?))
            }
            Some(_) => Err(self.bad(field)),
        }
    }

    /// An address: `string` (or, leniently, `symbol`).
    pub fn address(&mut self, field: &'static str) -> Result<Option<String>> {
        match self.code()? {
            None => Ok(None),
            Some(c @ (0xa1 | 0xb1 | 0xa3 | 0xb3)) => {
                let n = self.dec.len8or32(c & 0xf0 == 0xb0)?;
                Ok(Some(self.dec.str(n)?))
            }
            Some(_) => Err(self.bad(field)),
        }
    }

    pub fn symbol(&mut self, field: &'static str) -> Result<Option<Symbol>> {
        match self.code()? {
            None => Ok(None),
            Some(c @ (0xa3 | 0xb3)) => {
                let n = self.dec.len8or32(c == 0xb3)?;
                Ok(Some(Symbol(self.dec.str(n)?)))
            }
            Some(_) => Err(self.bad(field)),
        }
    }

    pub fn binary(&mut self, field: &'static str) -> Result<Option<Bytes>> {
        match self.code()? {
            None => Ok(None),
            Some(c @ (0xa0 | 0xb0)) => {
                let n = self.dec.len8or32(c == 0xb0)?;
                Ok(Some(self.dec.bytes(n)?))
            }
            Some(_) => Err(self.bad(field)),
        }
    }

    /// A `multiple="true"` symbol field: a single symbol or an array of symbols.
    pub fn symbols(&mut self, field: &'static str) -> Result<Option<Vec<Symbol>>> {
        match self.code()? {
            None => Ok(None),
            Some(c @ (0xa3 | 0xb3)) => {
                let n = self.dec.len8or32(c == 0xb3)?;
                Ok(Some(vec![Symbol(self.dec.str(n)?)]))
            }
            Some(c @ (0xe0 | 0xf0)) => {
                let items = self.dec.array_items(c == 0xf0)?;
                let mut out = Vec::with_capacity(items.len());
                for v in items {
                    match v {
                        Value::Symbol(s) => out.push(s),
                        _ => return Err(self.bad(field)),
                    }
                }
                Ok(Some(out))
            }
            Some(_) => Err(self.bad(field)),
        }
    }

    pub fn map(&mut self, field: &'static str) -> Result<Option<Vec<(Value, Value)>>> {
        match self.code()? {
            None => Ok(None),
            Some(c @ (0xc1 | 0xd1)) => Ok(Some(self.dec.map_entries(c == 0xd1)?)),
            Some(_) => Err(self.bad(field)),
        }
    }

    /// A field of type `*`: any value.
    pub fn value(&mut self) -> Result<Option<Value>> {
        match self.code()? {
            None => Ok(None),
            Some(0x00) => Ok(Some(self.dec.described_rest()?)),
            Some(c) => Ok(Some(self.dec.body(c)?)),
        }
    }

    /// A described-list field: `parse` gets the descriptor code (symbolic
    /// descriptors mapped) and reads the rest.
    pub fn described<T>(
        &mut self,
        field: &'static str,
        parse: impl FnOnce(&mut Dec<'a>, u64) -> Result<T>,
    ) -> Result<Option<T>> {
        match self.code()? {
            None => Ok(None),
            Some(0x00) => {
                let d = self.dec.descriptor()?;
                let code = d.code().ok_or_else(|| self.bad(field))?;
                self.dec.push_depth()?;
                let v = parse(self.dec, code)?;
                self.dec.pop_depth();
                Ok(Some(v))
            }
            Some(_) => Err(self.bad(field)),
        }
    }
}
