//! The Service Bus ATOM/XML management API (what `ServiceBusAdministrationClient` speaks) on
//! the broker's HTTP and HTTPS listeners.
//!
//! # Design
//! The router (`http/mod.rs`) hands every request that is not a REST messaging path to
//! [`dispatch`]: the request path is percent-decoded once and split into a [`Target`]
//! (`paths.rs`), then authorised with the token in `Authorization`
//! ([`crate::http::common::authorize`], audience = the target path; `Manage` for changes,
//! `Manage` or `Listen` to read), then served by `handlers.rs`: bodies are parsed by `xml/`,
//! changes go through `Broker`'s lifecycle methods (`admin.rs`). Every failure is an
//! [`HttpError`](crate::http::common::HttpError), answered with Service Bus's
//! `<Error><Code/><Detail/></Error>`.

mod handlers;
mod paths;
pub mod xml;

pub(crate) use handlers::dispatch;
pub use paths::{Target, check_new_name, parse_target};

/// Largest request body accepted.
pub const MAX_BODY: usize = 1024 * 1024;
/// Longest subscription or rule name (Service Bus limit).
pub const MAX_CHILD_NAME: usize = 50;
