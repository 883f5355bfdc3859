//! [`Dec`]: the bounds-checked read cursor every decoder works on (primitive
//! reads, nesting depth, bounded compound regions).

use bytes::Bytes;

use super::{MAX_DEPTH, Result};
use crate::DecodeError;

/// A bounds-checked cursor over a byte slice. If built from [`Bytes`],
/// `binary` values are zero-copy slices of it.
pub(crate) struct Dec<'a> {
    pub(super) buf: &'a [u8],
    pub(super) pos: usize,
    pub(super) end: usize,
    pub(super) src: Option<&'a Bytes>,
    pub(super) depth: usize,
    pub(super) zero_width_budget: usize,
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

    pub(super) fn eof(&self) -> DecodeError {
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

    pub(super) fn arr<const N: usize>(&mut self) -> Result<[u8; N]> {
        let s = self.take(N)?;
        let mut out = [0u8; N];
        out.copy_from_slice(s);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8> {
        let [b] = self.arr::<1>()?;
        Ok(b)
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

    pub(super) fn len8or32(&mut self, wide: bool) -> Result<usize> {
        Ok(if wide {
            self.u32()? as usize
        } else {
            usize::from(self.u8()?)
        })
    }

    pub(super) fn push_depth(&mut self) -> Result<()> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(DecodeError::TooDeep {
                offset: self.pos,
                limit: MAX_DEPTH,
            });
        }
        Ok(())
    }

    pub(super) fn pop_depth(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    /// Restrict reading to the next `size` bytes; returns the previous limit.
    pub(super) fn enter(&mut self, size: usize) -> Result<usize> {
        if size > self.remaining() {
            return Err(DecodeError::UnexpectedEof { offset: self.end });
        }
        let saved = self.end;
        self.end = self.pos + size;
        Ok(saved)
    }

    /// Check the bounded region is fully consumed and restore the limit.
    pub(super) fn leave(&mut self, saved: usize) -> Result<()> {
        if self.pos != self.end {
            return Err(DecodeError::InvalidSize { offset: self.pos });
        }
        self.end = saved;
        Ok(())
    }

    /// Reads a compound header (size, count) and bounds the decoder to it.
    /// Returns (saved limit, count, size).
    pub(super) fn compound_header(&mut self, wide: bool) -> Result<(usize, usize, usize)> {
        let size = self.len8or32(wide)?;
        let saved = self.enter(size)?;
        let count = self.len8or32(wide)?;
        Ok((saved, count, size))
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
    pub(super) saved: Option<usize>,
    pub count: usize,
}
