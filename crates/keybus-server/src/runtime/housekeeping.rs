//! Housekeeping: lock expiry, schedules, TTL and session-lock loss, run for each entity when
//! its earliest deadline comes. The task sleeps until the agenda's earliest deadline and is
//! woken when an earlier one is scheduled; an idle broker does no work.

use std::sync::Arc;
use std::time::Duration;

use super::registry::Broker;

/// The longest sleep, so that a wall clock set forward is noticed within it.
const MAX_SLEEP: Duration = Duration::from_secs(1);

/// Visit entities as their deadlines come, forever.
pub(crate) async fn run(broker: Arc<Broker>) {
    loop {
        broker.housekeep();
        let sleep = match broker.agenda.next_deadline() {
            Some(at) => {
                let ms = u64::try_from(at.saturating_sub(broker.now())).unwrap_or(0);
                Duration::from_millis(ms).min(MAX_SLEEP)
            }
            None => MAX_SLEEP,
        };
        tokio::select! {
            _ = tokio::time::sleep(sleep) => {}
            _ = broker.agenda.earlier_deadline() => {}
        }
    }
}

impl Broker {
    /// Run lock expiry, schedules and TTL for every entity whose deadline has come.
    pub fn housekeep(&self) {
        let now = self.now();
        for (at, entity) in self.agenda.take_due(now) {
            if let Some(entity) = entity.upgrade() {
                entity.housekeep(at, now);
            }
        }
    }
}
