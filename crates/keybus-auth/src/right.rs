//! What a credential may do: the three Service Bus rights, and the shared access policies
//! (SAS keys) that grant them.

use serde::Deserialize;

/// A right a SAS policy (or a policy grant) gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
pub enum Right {
    Manage,
    Send,
    Listen,
}

impl Right {
    /// The audit `action` for the right.
    pub fn action(self) -> &'static str {
        match self {
            Right::Send => "send",
            Right::Listen => "receive",
            Right::Manage => "manage",
        }
    }
}

/// A shared access policy (SAS key).
#[derive(Debug, Clone, PartialEq)]
pub struct SasPolicy {
    pub name: String,
    pub key: String,
    pub rights: Vec<Right>,
    /// The entity the rule belongs to (lower-case path; `""` = the whole namespace). Tokens
    /// signed with an entity's key are good for that entity (and a topic's subscriptions).
    pub scope: String,
}
