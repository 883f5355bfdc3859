//! The [`composite!`] and [`composite_choice!`] macros: every AMQP composite
//! type (performatives, terminus, error, delivery states, message sections,
//! SASL frame bodies) is declared once, as a contract in the spirit of
//! fe2o3-amqp's: its spec name and descriptor code, then its fields in wire
//! order, each with its spec name, Rust type, wire type
//! ([`FieldType`](crate::codec::FieldType) marker) and presence:
//!
//! * `optional`: an `Option<T>`; `None` is written as null, null or absent
//!   reads as `None`;
//! * `required`: always written; null or absent is
//!   `InvalidField { performative, field }`;
//! * `default(expr)`: always written (unless the wire type writes its
//!   default as null, like `Flag`); null or absent reads as `expr`.
//!
//! From that one declaration the macro generates the struct (or enum), its
//! `Default`, its encoder (a described list, trailing nulls trimmed) and its
//! decoder (fields read in order with type checks, unknown trailing fields
//! skipped).

/// Declare a composite type that is a described list. See the module docs.
macro_rules! composite {
    (
        $(#[$meta:meta])*
        pub struct $name:ident($wire:literal, $code:expr) {
            $(
                $(#[$fmeta:meta])*
                pub $field:ident($fwire:literal): $ty:ty => $kind:ty, $mode:ident $(($default:expr))?;
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub struct $name {
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        impl Default for $name {
            fn default() -> Self {
                Self {
                    $($field: $crate::composite::composite!(@default $mode $(($default))?),)*
                }
            }
        }

        impl $name {
            /// The type's name in the spec.
            pub(crate) const NAME: &'static str = $wire;
            /// The type's descriptor code.
            pub(crate) const CODE: u64 = $code;

            /// Decode the list that follows the descriptor.
            pub(crate) fn decode_fields(
                dec: &mut $crate::codec::Dec<'_>,
            ) -> ::std::result::Result<Self, $crate::DecodeError> {
                #[allow(unused_mut)]
                let mut fields = $crate::codec::Fields::open(dec, Self::NAME)?;
                let v = Self {
                    $($field: $crate::composite::composite!(
                        @read fields, $kind, $fwire, $mode $(($default))?
                    ),)*
                };
                fields.finish()?;
                Ok(v)
            }
        }

        impl $crate::codec::DescribedList for $name {
            fn code(&self) -> u64 {
                Self::CODE
            }
            fn with_fields(&self, out: &mut dyn FnMut(&[$crate::codec::F<'_>])) {
                out(&[$($crate::composite::composite!(@write $kind, &self.$field, $mode),)*])
            }
        }

        impl $crate::codec::Composite for $name {
            fn decode_body(
                dec: &mut $crate::codec::Dec<'_>,
                code: u64,
                container: &'static str,
                field: &'static str,
            ) -> ::std::result::Result<Self, $crate::DecodeError> {
                if code != Self::CODE {
                    return Err($crate::DecodeError::InvalidField {
                        performative: container,
                        field,
                    });
                }
                Self::decode_fields(dec)
            }
        }
    };

    (@default optional) => { None };
    (@default required) => { Default::default() };
    (@default default($d:expr)) => { $d };

    (@read $f:ident, $kind:ty, $w:literal, optional) => {
        <$kind as $crate::codec::FieldType>::read(&mut $f, $w)?
    };
    (@read $f:ident, $kind:ty, $w:literal, required) => {
        match <$kind as $crate::codec::FieldType>::read(&mut $f, $w)? {
            Some(v) => v,
            None => return Err($f.bad($w)),
        }
    };
    (@read $f:ident, $kind:ty, $w:literal, default($d:expr)) => {
        <$kind as $crate::codec::FieldType>::read(&mut $f, $w)?.unwrap_or($d)
    };

    (@write $kind:ty, $v:expr, optional) => {
        match $v {
            Some(x) => <$kind as $crate::codec::FieldType>::field(x),
            None => $crate::codec::F::Null,
        }
    };
    (@write $kind:ty, $v:expr, $mode:ident) => {
        <$kind as $crate::codec::FieldType>::field($v)
    };
}

/// Declare a choice of composite types that is an enum of struct (or unit)
/// variants, each a described list with its own name and code (the delivery
/// states). Fields are declared as in [`composite!`].
macro_rules! composite_choice {
    (
        $(#[$meta:meta])*
        pub enum $name:ident($wire:literal) {
            $(
                $(#[$vmeta:meta])*
                $variant:ident($vwire:literal, $code:expr) $({
                    $(
                        $(#[$fmeta:meta])*
                        $field:ident($fwire:literal): $ty:ty => $kind:ty, $mode:ident $(($default:expr))?;
                    )*
                })?,
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        pub enum $name {
            $(
                $(#[$vmeta])*
                $variant $({ $($(#[$fmeta])* $field: $ty,)* })?,
            )*
        }

        impl $name {
            /// The choice's name (for error values).
            pub(crate) const NAME: &'static str = $wire;
        }

        impl $crate::codec::DescribedList for $name {
            fn code(&self) -> u64 {
                match self {
                    $(Self::$variant { .. } => $code,)*
                }
            }
            fn with_fields(&self, out: &mut dyn FnMut(&[$crate::codec::F<'_>])) {
                match self {
                    $(Self::$variant { $($($field,)*)? } => out(&[
                        $($($crate::composite::composite!(@write $kind, $field, $mode),)*)?
                    ]),)*
                }
            }
        }

        impl $crate::codec::Composite for $name {
            fn decode_body(
                dec: &mut $crate::codec::Dec<'_>,
                code: u64,
                container: &'static str,
                field: &'static str,
            ) -> ::std::result::Result<Self, $crate::DecodeError> {
                $(
                    if code == $code {
                        #[allow(unused_mut)]
                        let mut fields = $crate::codec::Fields::open(dec, $vwire)?;
                        let v = Self::$variant {
                            $($($field: $crate::composite::composite!(
                                @read fields, $kind, $fwire, $mode $(($default))?
                            ),)*)?
                        };
                        fields.finish()?;
                        return Ok(v);
                    }
                )*
                Err($crate::DecodeError::InvalidField {
                    performative: container,
                    field,
                })
            }
        }
    };
}

pub(crate) use {composite, composite_choice};
