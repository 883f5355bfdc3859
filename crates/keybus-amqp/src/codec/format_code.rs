//! The layout of the body that follows each primitive format code.

/// How the body following a format code is laid out.
pub(super) enum Width {
    Fixed(usize),
    Var8,
    Var32,
}

pub(super) fn width(code: u8) -> Option<Width> {
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
