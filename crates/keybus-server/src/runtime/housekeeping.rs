//! Housekeeping: a ticker that drives lock expiry, schedules, TTL and session-lock loss for
//! every entity whose deadline has come.

use std::sync::Arc;
use std::time::Duration;

use super::registry::Broker;

/// How often lock expiry, schedules and TTL are checked.
const TICK: Duration = Duration::from_millis(50);

/// Tick the broker every [`TICK`], forever.
pub(crate) async fn run(broker: Arc<Broker>) {
    let mut iv = tokio::time::interval(TICK);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        iv.tick().await;
        broker.tick();
    }
}

impl Broker {
    /// Run lock expiry, schedules and TTL for every entity whose deadline has come.
    pub fn tick(&self) {
        let now = self.now();
        for e in self.entity_list() {
            let mut st = e.lock();
            if st.machine.next_deadline().is_none_or(|d| d > now) {
                continue;
            }
            let woke = st.machine.tick(now);
            st.notify_lost_sessions();
            if let Some(fut) = e.submit(&mut st) {
                tokio::spawn(async move {
                    if let Err(err) = fut.await {
                        tracing::error!(%err, "store commit failed during housekeeping");
                    }
                });
            }
            if woke {
                st.wake();
            }
        }
    }
}
