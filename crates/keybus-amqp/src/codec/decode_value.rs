//! Decoding of complete [`Value`]s: primitives, described values, lists,
//! maps and arrays, and skipping a value without building it.

use super::Result;
use super::cursor::Dec;
use super::format_code::{Width, width};
use crate::{DecodeError, Descriptor, Symbol, Value};

impl Dec<'_> {
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

    pub(super) fn list_items(&mut self, wide: bool) -> Result<Vec<Value>> {
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

    pub(super) fn array_items(&mut self, wide: bool) -> Result<Vec<Value>> {
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

    pub(super) fn skip_body(&mut self, code: u8) -> Result<()> {
        let n = match width(code) {
            Some(Width::Fixed(n)) => n,
            Some(Width::Var8) => usize::from(self.u8()?),
            Some(Width::Var32) => self.u32()? as usize,
            None => return Err(DecodeError::InvalidConstructor(code)),
        };
        self.take(n).map(|_| ())
    }
}
