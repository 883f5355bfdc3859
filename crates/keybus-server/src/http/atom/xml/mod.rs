//! ATOM/XML (de)serialisation for the management API, with `quick-xml`.
//!
//! Reading: a request body becomes a small namespace-resolved element tree (`dom.rs`,
//! [`parse`]: bounded depth and size, no DTDs, predefined and character references only),
//! then a [`Body`] (`read.rs`): the description inside `<entry><content>`, each element
//! checked against the elements Service Bus defines for that description (unknown or
//! misplaced ones are refused, read-only ones the SDKs echo back on update are accepted and
//! ignored), each value against its type. Writing (`write.rs`): entries and feeds in the shape
//! the SDKs parse (the Python client resolves namespaces; the JavaScript client reads some
//! prefixes literally: `i:type`, `d6p1:` value types, one `xmlns:` declaration on
//! `CountDetails`).

mod builder;
mod dom;
mod read;
#[cfg(test)]
mod tests;
mod write;

pub use dom::{Element, parse};
pub use read::{Body, Fields, RuleBody, read_entry};
pub use write::{
    Ctx, NEVER, entry, entry_element, feed, fmt_duration, fmt_time, namespace_info,
    queue_description, rule_description, subscription_description, topic_description,
};

pub const ATOM: &str = "http://www.w3.org/2005/Atom";
pub const SB: &str = "http://schemas.microsoft.com/netservices/2010/10/servicebus/connect";
pub const XSI: &str = "http://www.w3.org/2001/XMLSchema-instance";
pub const SB2011: &str = "http://schemas.microsoft.com/netservices/2011/06/servicebus";
pub const XSD: &str = "http://www.w3.org/2001/XMLSchema";

/// `TimeSpan.MaxValue`, the duration Service Bus reports for "never" / "unlimited".
pub const TIMESPAN_MAX: &str = "P10675199DT2H48M5.4775807S";
