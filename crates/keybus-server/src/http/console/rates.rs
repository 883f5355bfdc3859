//! Incoming and outgoing message rates for the overview's live events: from the queues'
//! activity counters (`Queue::stats`), measured over windows of at least [`WINDOW_MS`] of the
//! broker's clock (time passed in), so one event's rate is not the noise of one tick.

use std::collections::HashMap;

use keybus_core::QueueStats;

/// The shortest window a rate is measured over.
pub(super) const WINDOW_MS: i64 = 1000;

/// Messages per second in and out.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct Rate {
    pub(super) incoming: f64,
    pub(super) outgoing: f64,
}

/// The rates of the entities one event stream watches.
#[derive(Debug, Default)]
pub(super) struct Rates {
    /// Per path: the window's start (ms) and counters, and the last measured rate.
    seen: HashMap<String, (i64, QueueStats, Rate)>,
}

impl Rates {
    /// The counters of `path` at `now`; its rate over the last full window (0 until one
    /// has passed).
    pub(super) fn observe(&mut self, path: &str, stats: QueueStats, now: i64) -> Rate {
        let Some((at, before, rate)) = self.seen.get_mut(path) else {
            self.seen
                .insert(path.to_string(), (now, stats, Rate::default()));
            return Rate::default();
        };
        let elapsed = now.saturating_sub(*at);
        if elapsed >= WINDOW_MS {
            let per_s = |a: u64, b: u64| a.saturating_sub(b) as f64 * 1000.0 / elapsed as f64;
            *rate = Rate {
                incoming: per_s(stats.incoming, before.incoming),
                outgoing: per_s(stats.outgoing, before.outgoing),
            };
            *at = now;
            *before = stats;
        }
        *rate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(incoming: u64, outgoing: u64) -> QueueStats {
        QueueStats {
            incoming,
            outgoing,
            ..QueueStats::default()
        }
    }

    #[test]
    fn rates_are_measured_over_whole_windows() {
        let mut r = Rates::default();
        assert_eq!(r.observe("q", stats(0, 0), 0), Rate::default());
        // Within the window: still the previous rate.
        assert_eq!(r.observe("q", stats(5, 0), 500), Rate::default());
        let rate = r.observe("q", stats(20, 4), 2000);
        assert_eq!(
            rate,
            Rate {
                incoming: 10.0,
                outgoing: 2.0
            }
        );
        assert_eq!(r.observe("q", stats(21, 4), 2100), rate);
        assert_eq!(r.observe("q", stats(20, 4), 3000).incoming, 0.0);
    }
}
