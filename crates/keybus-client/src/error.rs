//! The client's errors. A refusal by the broker keeps the AMQP condition and description it
//! carried, so callers (and tests) can match on what came over the wire.

use std::fmt;

use keybus_amqp::{AmqpError, DecodeError, DeliveryState};

/// An AMQP error as the broker sent it: condition symbol and description.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Refusal {
    /// The condition, e.g. `amqp:not-found` (empty when the broker gave none).
    pub condition: String,
    /// The description (empty when the broker gave none).
    pub description: String,
}

impl Refusal {
    /// A refusal from an optional AMQP error (`None`: no condition, no description).
    pub fn from_error(e: Option<&AmqpError>) -> Refusal {
        match e {
            Some(e) => Refusal {
                condition: e.condition.as_str().to_string(),
                description: e.description.clone().unwrap_or_default(),
            },
            None => Refusal::default(),
        }
    }

    /// A refusal from a delivery outcome that is not `accepted`.
    pub fn from_state(s: Option<&DeliveryState>) -> Refusal {
        match s {
            Some(DeliveryState::Rejected { error }) => Refusal::from_error(error.as_ref()),
            Some(DeliveryState::Released) => Refusal {
                condition: String::new(),
                description: "released".into(),
            },
            Some(DeliveryState::Modified { .. }) => Refusal {
                condition: String::new(),
                description: "modified".into(),
            },
            Some(DeliveryState::Transactional {
                outcome: Some(outcome),
                ..
            }) => Refusal::from_state(Some(outcome)),
            Some(
                DeliveryState::Received { .. }
                | DeliveryState::Accepted
                | DeliveryState::Declared { .. }
                | DeliveryState::Transactional { outcome: None, .. },
            )
            | None => Refusal::default(),
        }
    }

    /// A refusal this client noticed itself (no condition).
    pub(crate) fn local(description: impl Into<String>) -> Refusal {
        Refusal {
            condition: String::new(),
            description: description.into(),
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.condition.is_empty(), self.description.is_empty()) {
            (true, true) => f.write_str("(no error)"),
            (false, true) => f.write_str(&self.condition),
            (true, false) => f.write_str(&self.description),
            (false, false) => write!(f, "{} {}", self.condition, self.description),
        }
    }
}

/// Everything that can go wrong talking to a broker.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {addr}: {err}")]
    Connect { addr: String, err: std::io::Error },
    #[error("TLS with {addr} failed: {err}")]
    Tls { addr: String, err: std::io::Error },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error("undecodable frame from the broker: {0}")]
    Decode(#[from] DecodeError),
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("the broker closed the connection{0}")]
    Closed(String),
    #[error("link '{name}' was detached by the broker: {error}")]
    Detached { name: String, error: Refusal },
    #[error("put-token for '{audience}' failed: status {status} {description}")]
    Auth {
        audience: String,
        status: i64,
        description: String,
    },
    #[error("the broker refused the delivery: {0}")]
    Rejected(Refusal),
    #[error("'{operation}' failed: status {status} {condition} {description}")]
    Management {
        operation: String,
        status: i64,
        /// `error-condition` of the response, if any.
        condition: String,
        description: String,
    },
    #[error("unexpected response to '{operation}': {why}")]
    Response { operation: String, why: String },
    #[error("timed out waiting for {what}; state: {state}")]
    Timeout { what: String, state: String },
}

impl ClientError {
    /// The AMQP condition the broker gave, if this error is a refusal that carried one.
    pub fn condition(&self) -> Option<&str> {
        let c = match self {
            ClientError::Detached { error, .. } | ClientError::Rejected(error) => {
                error.condition.as_str()
            }
            ClientError::Management { condition, .. } => condition.as_str(),
            _ => return None,
        };
        (!c.is_empty()).then_some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keybus_amqp::Symbol;

    #[test]
    fn a_refusal_keeps_condition_and_description() {
        let e = AmqpError {
            condition: Symbol::from("amqp:not-found"),
            description: Some("no such queue".into()),
            info: None,
        };
        let r = Refusal::from_error(Some(&e));
        assert_eq!(r.to_string(), "amqp:not-found no such queue");
        let err = ClientError::Detached {
            name: "l".into(),
            error: r,
        };
        assert_eq!(err.condition(), Some("amqp:not-found"));
        assert_eq!(ClientError::Closed(String::new()).condition(), None);
        assert_eq!(Refusal::default().to_string(), "(no error)");
    }
}
