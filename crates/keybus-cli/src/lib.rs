//! keybus-cli: client-side commands of the `keybus` binary.
//!
//! `bench` drives a running broker over AMQP 1.0 through `keybus-client` (it only talks to
//! the broker through its wire protocol, never through the broker's crates).

pub mod bench;
