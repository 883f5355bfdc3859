//! The agenda of the background tasks: which entities the housekeeper must visit and when
//! (each entity's earliest lock expiry, schedule, TTL or session-lock deadline), and which
//! the forwarder must visit (those holding messages to forward).
//!
//! Entities put themselves on it when their lock is released (see `entity.rs`), so an idle
//! broker does nothing: no task polls every entity.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::sync::{Mutex, MutexGuard, Weak};

use tokio::sync::Notify;

use super::entity::Entity;

/// A deadline of one entity.
struct Due {
    at: i64,
    entity: Weak<Entity>,
}

impl PartialEq for Due {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other).is_eq()
    }
}

impl Eq for Due {}

impl PartialOrd for Due {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Due {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.entity.as_ptr()).cmp(&(other.at, other.entity.as_ptr()))
    }
}

/// What the housekeeper and the forwarder must visit.
#[derive(Default)]
pub(crate) struct Agenda {
    deadlines: Mutex<BinaryHeap<Reverse<Due>>>,
    /// Told when a deadline earlier than every other one arrives.
    earlier: Notify,
    forwards: Mutex<VecDeque<Weak<Entity>>>,
    /// Told when an entity joins `forwards`.
    forward_ready: Notify,
}

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Agenda {
    /// Visit `entity` at `at` (ms since the epoch).
    pub(crate) fn schedule(&self, at: i64, entity: Weak<Entity>) {
        let mut heap = locked(&self.deadlines);
        let earliest = heap.peek().is_none_or(|Reverse(d)| at < d.at);
        heap.push(Reverse(Due { at, entity }));
        drop(heap);
        if earliest {
            self.earlier.notify_one();
        }
    }

    /// The earliest deadline, if any.
    pub(crate) fn next_deadline(&self) -> Option<i64> {
        locked(&self.deadlines).peek().map(|Reverse(d)| d.at)
    }

    /// Take the entities whose deadline is at or before `now`, with that deadline.
    pub(crate) fn take_due(&self, now: i64) -> Vec<(i64, Weak<Entity>)> {
        let mut heap = locked(&self.deadlines);
        let mut due = Vec::new();
        while heap.peek().is_some_and(|Reverse(d)| d.at <= now) {
            if let Some(Reverse(d)) = heap.pop() {
                due.push((d.at, d.entity));
            }
        }
        due
    }

    /// Wait until a deadline earlier than every other one is scheduled.
    pub(crate) async fn earlier_deadline(&self) {
        self.earlier.notified().await;
    }

    /// Visit `entity` to forward its messages.
    pub(crate) fn forward(&self, entity: Weak<Entity>) {
        locked(&self.forwards).push_back(entity);
        self.forward_ready.notify_one();
    }

    /// The next entity with messages to forward, waiting for one.
    pub(crate) async fn next_forward(&self) -> Weak<Entity> {
        loop {
            if let Some(e) = locked(&self.forwards).pop_front() {
                return e;
            }
            self.forward_ready.notified().await;
        }
    }

    /// Entities waiting for the forwarder and deadlines scheduled (for the metrics).
    pub(crate) fn len(&self) -> (usize, usize) {
        (locked(&self.forwards).len(), locked(&self.deadlines).len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_come_due_in_order() {
        let agenda = Agenda::default();
        agenda.schedule(300, Weak::new());
        agenda.schedule(100, Weak::new());
        agenda.schedule(200, Weak::new());
        assert_eq!(agenda.next_deadline(), Some(100));
        let due: Vec<i64> = agenda.take_due(200).into_iter().map(|(at, _)| at).collect();
        assert_eq!(due, [100, 200]);
        assert_eq!(agenda.next_deadline(), Some(300));
        assert!(agenda.take_due(299).is_empty());
    }
}
