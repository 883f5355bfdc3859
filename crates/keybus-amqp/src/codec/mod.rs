//! Low-level encoding and decoding of AMQP 1.0 primitive and compound types,
//! one idea per file:
//!
//! * [`cursor`]: the bounds-checked read cursor [`Dec`];
//! * [`format_code`]: how many bytes follow each format code;
//! * [`decode_value`]: decoding (and skipping) complete values;
//! * [`encode_primitive`]: primitives in their smallest encodings;
//! * [`compound`]: 8-bit / 32-bit compound headers;
//! * [`encode_value`]: complete values, lists and maps;
//! * [`array`]: arrays and their shared element constructor;
//! * [`symbolic`]: symbolic descriptors mapped to codes;
//! * [`described`]: described lists with typed fields (encoding);
//! * [`fields`]: described lists with typed fields (decoding).

mod array;
mod compound;
mod cursor;
mod decode_value;
mod described;
mod encode_primitive;
mod encode_value;
mod field_type;
mod fields;
mod format_code;
mod symbolic;

use crate::DecodeError;

/// Maximum nesting of compound and described values.
pub const MAX_DEPTH: usize = 64;

pub(crate) type Result<T> = std::result::Result<T, DecodeError>;

pub(crate) use cursor::Dec;
pub(crate) use described::{DescribedList, F, described_list_size, encode_described_list};
pub(crate) use encode_primitive::put_binary;
pub(crate) use encode_value::{
    encode_list_values, encode_map_parts, encode_value, map_parts_size, value_size,
};
pub use encode_value::{encode_map, map_size};
pub(crate) use field_type::{
    Address, Any, Bin, Bool, Composite, FieldType, Flag, Map, Nested, NestedBox, Str, Sym, Syms,
    Timestamp, Ubyte, Uint, Ulong, Ushort,
};
pub(crate) use fields::Fields;
pub(crate) use symbolic::symbolic_descriptor_code;
