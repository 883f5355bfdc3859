//! The `source` and `target` terminus types (AMQP 1.0 §3.5).

use crate::codec::{Address, Any, Flag, Map, Sym, Syms, Uint};
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
