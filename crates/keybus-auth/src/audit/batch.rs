//! A batch of lines on their way to the file, written with one `write_all`: each line is
//! encoded with the chain as it will stand once the lines before it are written, and after a
//! write (whole or cut short) the batch tells how many whole lines reached the file, so the
//! chain advances for exactly those.

use serde_json::{Map, Value, json};

use super::line::hmac_hex;

/// Where the chain stands: the last written line's `seq` and `hmac` (0 and "" before the
/// first line).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Chain {
    pub(super) seq: u64,
    pub(super) prev: String,
}

/// Encoded lines not yet written.
#[derive(Debug, Default)]
pub(super) struct Batch {
    buf: Vec<u8>,
    /// Per line: where it ends in `buf` (after its newline) and its `hmac`.
    ends: Vec<(usize, String)>,
}

/// What part of a batch reached the file.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Reached {
    /// Whole lines written.
    pub(super) lines: usize,
    /// Their bytes.
    pub(super) bytes: u64,
    /// Bytes written after them (part of the next line).
    pub(super) torn: u64,
    /// Lines not written.
    pub(super) lost: usize,
}

impl Batch {
    pub(super) fn bytes(&self) -> &[u8] {
        &self.buf
    }

    pub(super) fn len(&self) -> usize {
        self.ends.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Add `obj` as the next line after `written` and the lines already in the batch: `obj`
    /// plus `seq`, `prev` and, as its last member, `hmac` = HMAC(key, the line without it).
    pub(super) fn push(&mut self, mut obj: Map<String, Value>, key: &[u8], written: &Chain) {
        let seq = written.seq + self.ends.len() as u64 + 1;
        let prev = self.ends.last().map_or(written.prev.as_str(), |(_, h)| h);
        obj.insert("seq".into(), json!(seq));
        obj.insert("prev".into(), json!(prev));
        let body = Value::Object(obj).to_string();
        let mac = hmac_hex(key, body.as_bytes());
        // A JSON object always ends with `}`.
        let open = body.strip_suffix('}').unwrap_or(&body);
        self.buf.extend_from_slice(open.as_bytes());
        self.buf.extend_from_slice(b",\"hmac\":\"");
        self.buf.extend_from_slice(mac.as_bytes());
        self.buf.extend_from_slice(b"\"}\n");
        self.ends.push((self.buf.len(), mac));
    }

    /// The lines wholly inside the first `written` bytes of the batch.
    pub(super) fn reached(&self, written: u64) -> Reached {
        let written = written.min(self.buf.len() as u64);
        let lines = self.ends.partition_point(|(end, _)| *end as u64 <= written);
        let bytes = match lines {
            0 => 0,
            n => self.ends[n - 1].0 as u64,
        };
        Reached {
            lines,
            bytes,
            torn: written - bytes,
            lost: self.ends.len() - lines,
        }
    }

    /// Advance `chain` over the first `lines` lines (those written) and empty the batch.
    pub(super) fn commit(&mut self, lines: usize, chain: &mut Chain) {
        if lines > 0
            && let Some((_, mac)) = self.ends.get(lines - 1)
        {
            chain.seq += lines as u64;
            chain.prev = mac.clone();
        }
        self.buf.clear();
        self.ends.clear();
    }
}
