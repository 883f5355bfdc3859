//! Duplicate detection history: message ids seen within the entity's detection window.

use std::collections::{HashMap, VecDeque};

use crate::clock::Timestamp;

/// Ids seen, with the time each was last seen, oldest first for pruning.
#[derive(Debug, Default)]
pub struct DuplicateHistory {
    seen: HashMap<String, Timestamp>,
    order: VecDeque<(Timestamp, String)>,
}

impl DuplicateHistory {
    pub fn contains(&self, id: &str) -> bool {
        self.seen.contains_key(id)
    }

    pub fn remember(&mut self, id: String, at: Timestamp) {
        self.seen.insert(id.clone(), at);
        self.order.push_back((at, id));
    }

    /// Forget ids last seen `window_ms` or longer before `now`.
    pub fn prune(&mut self, now: Timestamp, window_ms: i64) {
        while let Some((t, _)) = self.order.front() {
            if t + window_ms > now {
                break;
            }
            if let Some((t, id)) = self.order.pop_front()
                && self.seen.get(&id) == Some(&t)
            {
                self.seen.remove(&id);
            }
        }
    }
}
