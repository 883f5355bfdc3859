//! AMQP error conditions used by the server, and the one mapping from domain errors.

use keybus_amqp::{AmqpError, Symbol};
use keybus_core::{ErrorCondition, StoreError};

pub(crate) const DECODE_ERROR: &str = "amqp:decode-error";
pub(crate) const FRAMING_ERROR: &str = "amqp:connection:framing-error";
pub(crate) const RESOURCE_LIMIT: &str = "amqp:resource-limit-exceeded";
pub(crate) const NOT_ALLOWED: &str = "amqp:not-allowed";
pub(crate) const NOT_FOUND: &str = "amqp:not-found";
pub(crate) const UNAUTHORIZED: &str = "amqp:unauthorized-access";
pub(crate) const INTERNAL: &str = "amqp:internal-error";
pub(crate) const INVALID_FIELD: &str = "amqp:invalid-field";
pub(crate) const UNATTACHED_HANDLE: &str = "amqp:session:unattached-handle";
pub(crate) const MESSAGE_SIZE_EXCEEDED: &str = "amqp:link:message-size-exceeded";
pub(crate) const NOT_IMPLEMENTED: &str = "amqp:not-implemented";

pub(crate) fn error(condition: &str, description: impl Into<String>) -> AmqpError {
    AmqpError {
        condition: Symbol::from(condition),
        description: Some(description.into()),
        info: None,
    }
}

pub(crate) fn from_condition(c: ErrorCondition, description: impl Into<String>) -> AmqpError {
    error(c.symbol(), description)
}

/// The one mapping of a store failure (a commit that failed, or a store that refuses writes)
/// to what a client sees. A full disk is `amqp:resource-limit-exceeded`, which the SDKs raise
/// as their quota-exceeded error (Python: `ServiceBusQuotaExceededError`), naming the cause;
/// a store that is behind is `com.microsoft:server-busy`, which the SDKs retry with back-off
/// (Python: `ServiceBusServerBusyError`); anything else is an internal error.
pub(crate) fn store_failure(e: &StoreError) -> (ErrorCondition, String) {
    match e {
        StoreError::Busy { .. } => (
            ErrorCondition::ServerBusy,
            format!(
                "The broker is busy: its store cannot keep up ({e}). The request was not \
                 taken; retry after a short delay."
            ),
        ),
        StoreError::Full(_) => (
            ErrorCondition::QuotaExceeded,
            "The broker cannot store anything: no space left on device (the broker's data \
             volume is full). Sends and settlements are refused until space is freed; the \
             broker then resumes on its own."
                .to_string(),
        ),
        _ => (
            ErrorCondition::InternalError,
            format!("The broker's store cannot write: {e}"),
        ),
    }
}

/// [`store_failure`] as an AMQP error.
pub(crate) fn from_store(e: &StoreError) -> AmqpError {
    let (condition, description) = store_failure(e);
    from_condition(condition, description)
}

/// The description the JS SDK needs to recognise a missing entity (wire reference §0 rule 19).
pub(crate) fn entity_not_found(host: &str, path: &str) -> AmqpError {
    error(
        NOT_FOUND,
        format!(
            "The messaging entity 'sb://{host}/{path}' could not be found. To know more visit https://aka.ms/sbResourceMgrExceptions."
        ),
    )
}
