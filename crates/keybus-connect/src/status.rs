//! Each connector's state, shown on stdout when it changes (one line per change) and read
//! by `/health`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Where a connector is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum State {
    Connecting,
    /// Receiving and pushing.
    Running,
    /// The target failed; pushes pause until the retry.
    Retrying {
        why: String,
        after_ms: u128,
    },
    /// The namespace could not be reached or refused the connector; it tries again.
    Disconnected {
        why: String,
    },
    /// Finishing what is in flight before it stops.
    Draining,
    Stopped,
}

impl State {
    /// Healthy: connected to its source (a failing target is the target's problem, shown
    /// but not unhealthy).
    pub fn healthy(&self) -> bool {
        matches!(self, State::Running | State::Retrying { .. })
    }

    fn text(&self) -> String {
        match self {
            State::Connecting => "connecting".into(),
            State::Running => "running".into(),
            State::Retrying { why, after_ms } => {
                format!("target failing ({why}), next push in {after_ms} ms")
            }
            State::Disconnected { why } => format!("disconnected ({why}), reconnecting"),
            State::Draining => "draining".into(),
            State::Stopped => "stopped".into(),
        }
    }
}

/// Every connector's state (cheap to clone: shared).
#[derive(Clone, Default)]
pub struct Board {
    states: Arc<Mutex<BTreeMap<String, State>>>,
}

impl Board {
    /// Record `state` for `connector`, printing a line when it changed.
    pub fn set(&self, connector: &str, state: State) {
        let Ok(mut states) = self.states.lock() else {
            return;
        };
        if states.get(connector) == Some(&state) {
            return;
        }
        println!("keybus connect: connector {connector}: {}", state.text());
        if state == State::Stopped {
            states.remove(connector);
        } else {
            states.insert(connector.to_string(), state);
        }
    }

    /// `(name, healthy, state text)` of every connector not stopped.
    pub fn snapshot(&self) -> Vec<(String, bool, String)> {
        self.states
            .lock()
            .map(|s| {
                s.iter()
                    .map(|(k, v)| (k.clone(), v.healthy(), v.text()))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_kept_until_stopped() {
        let b = Board::default();
        b.set("a", State::Connecting);
        b.set("b", State::Running);
        b.set(
            "a",
            State::Retrying {
                why: "HTTP 503".into(),
                after_ms: 100,
            },
        );
        assert_eq!(
            b.snapshot(),
            vec![
                (
                    "a".to_string(),
                    true,
                    "target failing (HTTP 503), next push in 100 ms".to_string()
                ),
                ("b".to_string(), true, "running".to_string()),
            ]
        );
        b.set("b", State::Stopped);
        b.set(
            "a",
            State::Disconnected {
                why: "refused".into(),
            },
        );
        assert_eq!(
            b.snapshot(),
            vec![(
                "a".to_string(),
                false,
                "disconnected (refused), reconnecting".to_string()
            )]
        );
    }
}
