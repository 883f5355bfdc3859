//! Compound (list, map, array) headers: 8-bit or 32-bit size and count.

use bytes::{BufMut, BytesMut};

/// Reserve a 9-byte compound header (32-bit form) and return its position.
pub(super) fn begin_compound(buf: &mut BytesMut) -> usize {
    let start = buf.len();
    buf.put_bytes(0, 9);
    start
}

/// Whether a compound with `body` bytes after the count and `count`
/// elements fits the 8-bit form.
pub(super) fn fits8(body: usize, count: usize) -> bool {
    body < 255 && count <= 255
}

pub(super) fn compound_size(body: usize, count: usize) -> usize {
    if fits8(body, count) {
        3 + body
    } else {
        9 + body
    }
}

/// Patch the header reserved by [`begin_compound`], shrinking to the
/// 8-bit form when possible.
pub(super) fn finish_compound(
    buf: &mut BytesMut,
    start: usize,
    count: usize,
    code8: u8,
    code32: u8,
) {
    let body = buf.len().saturating_sub(start + 9);
    if fits8(body, count) {
        buf.copy_within(start + 9..start + 9 + body, start + 3);
        buf.truncate(start + 3 + body);
        if let Some(h) = buf.get_mut(start..start + 3) {
            h.copy_from_slice(&[code8, (body + 1) as u8, count as u8]);
        }
    } else if let Some(h) = buf.get_mut(start..start + 9) {
        let hdr = std::iter::once(code32)
            .chain(((body + 4) as u32).to_be_bytes())
            .chain((count as u32).to_be_bytes());
        for (dst, src) in h.iter_mut().zip(hdr) {
            *dst = src;
        }
    }
}
/// Write `size:u32 count:u32 <content>` for a compound element in an array.
pub(super) fn put_body32(buf: &mut BytesMut, count: usize, content: impl FnOnce(&mut BytesMut)) {
    let start = buf.len();
    buf.put_u32(0);
    buf.put_u32(count as u32);
    content(buf);
    let size = (buf.len() - start - 4) as u32;
    if let Some(h) = buf.get_mut(start..start + 4) {
        h.copy_from_slice(&size.to_be_bytes());
    }
}
