//! Wire types of composite-type fields: each marker type ties a Rust type to
//! the exact AMQP type it is written as ([`F`]) and the typed reader of
//! [`Fields`] it is read with. The [`composite!`](crate::composite) macro
//! names one marker per field.

use std::marker::PhantomData;

use bytes::Bytes;

use super::{Dec, DescribedList, F, Fields, Result};
use crate::{Symbol, Value};

/// How one field of a described list is written and read.
pub(crate) trait FieldType {
    /// The Rust type of the field (without the `Option` of optional fields).
    type Value;
    /// The field as written on the wire.
    fn field(v: &Self::Value) -> F<'_>;
    /// The next field; `None` when it is null or absent.
    fn read(f: &mut Fields<'_, '_>, name: &'static str) -> Result<Option<Self::Value>>;
}

/// A composite type that can appear as a field of another one (or in a
/// choice of several): decoded from the list after its descriptor.
pub(crate) trait Composite: DescribedList + Sized {
    /// Decode the fields that follow descriptor `code`. A `code` that is not
    /// (one of) this type's is `InvalidField { container, field }`.
    fn decode_body(
        dec: &mut Dec<'_>,
        code: u64,
        container: &'static str,
        field: &'static str,
    ) -> Result<Self>;
}

macro_rules! primitive_field {
    ($($(#[$meta:meta])* $marker:ident: $ty:ty, |$v:ident| $enc:expr, $read:ident;)*) => {$(
        $(#[$meta])*
        pub(crate) struct $marker;

        impl FieldType for $marker {
            type Value = $ty;
            fn field($v: &$ty) -> F<'_> {
                $enc
            }
            fn read(f: &mut Fields<'_, '_>, name: &'static str) -> Result<Option<$ty>> {
                f.$read(name)
            }
        }
    )*};
}

primitive_field! {
    /// `boolean`.
    Bool: bool, |v| F::Bool(*v), bool;
    /// `boolean` with default `false`: `false` is sent as null (equivalent per spec).
    Flag: bool, |v| if *v { F::Bool(true) } else { F::Null }, bool;
    /// `ubyte`.
    Ubyte: u8, |v| F::Ubyte(*v), ubyte;
    /// `ushort`.
    Ushort: u16, |v| F::Ushort(*v), ushort;
    /// `uint` (smallest encoding).
    Uint: u32, |v| F::Uint(*v), uint;
    /// `ulong` (smallest encoding).
    Ulong: u64, |v| F::Ulong(*v), ulong;
    /// `timestamp`.
    Timestamp: i64, |v| F::Ts(*v), timestamp;
    /// `string`.
    Str: String, |v| F::Str(v), string;
    /// An address: written as `string`, read as `string` or (leniently) `symbol`.
    Address: String, |v| F::Str(v), address;
    /// `symbol`.
    Sym: Symbol, |v| F::Sym(v.as_str()), symbol;
    /// `binary`.
    Bin: Bytes, |v| F::Bin(v), binary;
    /// A `multiple="true"` symbol field: written as an array, read as a
    /// single symbol or an array.
    Syms: Vec<Symbol>, |v| F::Syms(v), symbols;
    /// `map` (fields, annotations, filter sets, ...).
    Map: Vec<(Value, Value)>, |v| F::Map(v), map;
}

/// A field of type `*`: any value, kept with its AMQP type.
pub(crate) struct Any;

impl FieldType for Any {
    type Value = Value;
    fn field(v: &Value) -> F<'_> {
        F::Val(v)
    }
    fn read(f: &mut Fields<'_, '_>, _name: &'static str) -> Result<Option<Value>> {
        f.value()
    }
}

/// A nested composite type (error, source, target, delivery state).
pub(crate) struct Nested<T>(PhantomData<T>);

impl<T: Composite> FieldType for Nested<T> {
    type Value = T;
    fn field(v: &T) -> F<'_> {
        F::Nested(v)
    }
    fn read(f: &mut Fields<'_, '_>, name: &'static str) -> Result<Option<T>> {
        let container = f.name();
        f.described(name, |dec, code| T::decode_body(dec, code, container, name))
    }
}

/// A nested composite type held in a box (a delivery state inside a transactional state).
pub(crate) struct NestedBox<T>(PhantomData<T>);

impl<T: Composite> FieldType for NestedBox<T> {
    type Value = Box<T>;
    fn field(v: &Box<T>) -> F<'_> {
        F::Nested(&**v)
    }
    fn read(f: &mut Fields<'_, '_>, name: &'static str) -> Result<Option<Box<T>>> {
        let container = f.name();
        f.described(name, |dec, code| T::decode_body(dec, code, container, name))
            .map(|v| v.map(Box::new))
    }
}
