//! The `source` and `target` terminus types (AMQP 1.0 §3.5).

use crate::codec::{
    Address, Any, Composite, Dec, DescribedList, F, Flag, Map, Result, Sym, Syms, Uint,
};
use crate::composite::composite;
use crate::performative::codes;
use crate::{Symbol, Value};

type Fieldmap = Vec<(Value, Value)>;

composite! {
    /// `source` terminus (descriptor 0x28).
    pub struct Source("source", codes::SOURCE) {
        pub address("address"): Option<String> => Address, optional;
        pub durable("durable"): u32 => Uint, default(0);
        pub expiry_policy("expiry-policy"): Option<Symbol> => Sym, optional;
        pub timeout("timeout"): u32 => Uint, default(0);
        pub dynamic("dynamic"): bool => Flag, default(false);
        pub dynamic_node_properties("dynamic-node-properties"): Option<Fieldmap> => Map, optional;
        pub distribution_mode("distribution-mode"): Option<Symbol> => Sym, optional;
        pub filter("filter"): Option<Fieldmap> => Map, optional;
        pub default_outcome("default-outcome"): Option<Value> => Any, optional;
        pub outcomes("outcomes"): Option<Vec<Symbol>> => Syms, optional;
        pub capabilities("capabilities"): Option<Vec<Symbol>> => Syms, optional;
    }
}

composite! {
    /// `target` terminus (descriptor 0x29).
    pub struct Target("target", codes::TARGET) {
        pub address("address"): Option<String> => Address, optional;
        pub durable("durable"): u32 => Uint, default(0);
        pub expiry_policy("expiry-policy"): Option<Symbol> => Sym, optional;
        pub timeout("timeout"): u32 => Uint, default(0);
        pub dynamic("dynamic"): bool => Flag, default(false);
        pub dynamic_node_properties("dynamic-node-properties"): Option<Fieldmap> => Map, optional;
        pub capabilities("capabilities"): Option<Vec<Symbol>> => Syms, optional;
    }
}

composite! {
    /// `coordinator` target (descriptor 0x30, §4.5.1): the link a client declares and
    /// discharges transactions on.
    pub struct Coordinator("coordinator", codes::COORDINATOR) {
        pub capabilities("capabilities"): Option<Vec<Symbol>> => Syms, optional;
    }
}

/// The `target` of an attach: a node (queue, topic, `$management`...) or a transaction
/// coordinator.
#[derive(Debug, Clone, PartialEq)]
pub enum AttachTarget {
    Node(Target),
    Coordinator(Coordinator),
}

impl Default for AttachTarget {
    fn default() -> Self {
        AttachTarget::Node(Target::default())
    }
}

impl AttachTarget {
    /// The node's address; `None` for a coordinator.
    pub fn address(&self) -> Option<&str> {
        match self {
            AttachTarget::Node(t) => t.address.as_deref(),
            AttachTarget::Coordinator(_) => None,
        }
    }
}

impl From<Target> for AttachTarget {
    fn from(t: Target) -> Self {
        AttachTarget::Node(t)
    }
}

impl DescribedList for AttachTarget {
    fn code(&self) -> u64 {
        match self {
            AttachTarget::Node(t) => t.code(),
            AttachTarget::Coordinator(c) => c.code(),
        }
    }
    fn with_fields(&self, f: &mut dyn FnMut(&[F<'_>])) {
        match self {
            AttachTarget::Node(t) => t.with_fields(f),
            AttachTarget::Coordinator(c) => c.with_fields(f),
        }
    }
}

impl Composite for AttachTarget {
    fn decode_body(
        dec: &mut Dec<'_>,
        code: u64,
        container: &'static str,
        field: &'static str,
    ) -> Result<Self> {
        if code == codes::COORDINATOR {
            Coordinator::decode_body(dec, code, container, field).map(AttachTarget::Coordinator)
        } else {
            Target::decode_body(dec, code, container, field).map(AttachTarget::Node)
        }
    }
}
