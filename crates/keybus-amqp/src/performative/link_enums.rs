//! The link's role and settlement modes, and the wire types they are
//! written as (a `boolean` and two `ubyte`s).

use crate::codec::{F, FieldType, Fields, Result};

/// Link role; on the wire a boolean (`false` = sender).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Role {
    #[default]
    Sender,
    Receiver,
}

impl Role {
    pub fn as_bool(self) -> bool {
        self == Role::Receiver
    }
    pub fn from_bool(b: bool) -> Role {
        if b { Role::Receiver } else { Role::Sender }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum SenderSettleMode {
    Unsettled = 0,
    Settled = 1,
    #[default]
    Mixed = 2,
}

impl SenderSettleMode {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::Unsettled),
            1 => Some(Self::Settled),
            2 => Some(Self::Mixed),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum ReceiverSettleMode {
    #[default]
    First = 0,
    Second = 1,
}

impl ReceiverSettleMode {
    pub fn from_u8(v: u8) -> Option<Self> {
        match v {
            0 => Some(Self::First),
            1 => Some(Self::Second),
            _ => None,
        }
    }
}

/// [`Role`] as a `boolean` field.
pub(crate) struct RoleField;

impl FieldType for RoleField {
    type Value = Role;
    fn field(v: &Role) -> F<'_> {
        F::Bool(v.as_bool())
    }
    fn read(f: &mut Fields<'_, '_>, name: &'static str) -> Result<Option<Role>> {
        Ok(f.bool(name)?.map(Role::from_bool))
    }
}

/// [`SenderSettleMode`] as a `ubyte` field; an unknown value is an invalid field.
pub(crate) struct SndSettleField;

impl FieldType for SndSettleField {
    type Value = SenderSettleMode;
    fn field(v: &SenderSettleMode) -> F<'_> {
        F::Ubyte(*v as u8)
    }
    fn read(f: &mut Fields<'_, '_>, name: &'static str) -> Result<Option<SenderSettleMode>> {
        match f.ubyte(name)? {
            None => Ok(None),
            Some(v) => SenderSettleMode::from_u8(v)
                .map(Some)
                .ok_or_else(|| f.bad(name)),
        }
    }
}

/// [`ReceiverSettleMode`] as a `ubyte` field; an unknown value is an invalid field.
pub(crate) struct RcvSettleField;

impl FieldType for RcvSettleField {
    type Value = ReceiverSettleMode;
    fn field(v: &ReceiverSettleMode) -> F<'_> {
        F::Ubyte(*v as u8)
    }
    fn read(f: &mut Fields<'_, '_>, name: &'static str) -> Result<Option<ReceiverSettleMode>> {
        match f.ubyte(name)? {
            None => Ok(None),
            Some(v) => ReceiverSettleMode::from_u8(v)
                .map(Some)
                .ok_or_else(|| f.bad(name)),
        }
    }
}
