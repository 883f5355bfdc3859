//! [`Fields`]: reads the fields of a described list one by one, with type checks.

use bytes::Bytes;

use super::Result;
use super::cursor::{Dec, ListGuard};
use crate::{DecodeError, Symbol, Value};

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

    /// The name of the composite type being read (for error values).
    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn bad(&self, field: &'static str) -> DecodeError {
        DecodeError::InvalidField {
            performative: self.name,
            field,
        }
    }

    /// Next field's constructor; `None` for null or absent.
    pub(super) fn code(&mut self) -> Result<Option<u8>> {
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
