//! The failed-token rate limiter: per client source (an IPv4 address, or an IPv6 /64, the
//! smallest block one subscriber is usually given), failed token presentations are counted
//! in a window; a source with [`MAX_FAILURES`] failures in the window is *limited* until the
//! window ends.
//!
//! Limited means slowed, never shut out: a valid token from a limited source is still
//! accepted (a client behind the same NAT as an attacker keeps working); a further *failing*
//! token from it is answered `TooManyFailedAttempts` (AMQP: the connection is closed; HTTP:
//! `429` with `Retry-After`) and counted.
//!
//! The table is bounded ([`MAX_TRACKED`] sources). When it is full the least recently failing
//! source that is not limited is forgotten, so a flood of new addresses cannot reset the
//! table and unblock a limited one; only when every tracked source is limited is the least
//! recently failing limited one forgotten. Hand-rolled (a `HashMap` plus a `BTreeMap` ordered
//! by (limited, last failure)) rather than the `lru` crate: recency here is *failure* recency
//! (lookups must not refresh an entry) and eviction prefers non-limited entries, neither of
//! which a plain LRU expresses.
//!
//! Pure: time is passed in (`now_ms`), nothing here sleeps or reads a clock.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// Failed tokens per source and window before it is limited.
pub const MAX_FAILURES: u32 = 30;
/// The counting window.
pub const WINDOW_MS: i64 = 60_000;
/// Sources tracked at once.
pub const MAX_TRACKED: usize = 10_000;

/// What failures are counted against: an IPv4 address, or an IPv6 /64 (the first 64 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    V4(Ipv4Addr),
    V6Prefix(u64),
}

impl Source {
    /// The source of an address; IPv4-mapped IPv6 addresses count as their IPv4 address.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Source::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Source::V4(v4),
                None => Source::V6Prefix((u128::from(v6) >> 64) as u64),
            },
        }
    }

    /// The source of a peer written as `ip:port`, `[v6]:port` or a bare address; `None` for
    /// anything else (such peers are not limited).
    pub fn parse(peer: &str) -> Option<Self> {
        if let Ok(sa) = peer.parse::<SocketAddr>() {
            return Some(Self::of(sa.ip()));
        }
        peer.parse::<IpAddr>().ok().map(Self::of)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::V4(a) => write!(f, "{a}"),
            Source::V6Prefix(p) => {
                let ip = std::net::Ipv6Addr::from(u128::from(*p) << 64);
                write!(f, "{ip}/64")
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    window_start: i64,
    failures: u32,
    /// Key in `order`.
    rank: (bool, u64),
}

/// The bounded failure table.
#[derive(Debug)]
pub struct RateLimiter {
    entries: HashMap<Source, Entry>,
    /// (limited, failure tick) → source: the first key is the one to evict.
    order: BTreeMap<(bool, u64), Source>,
    tick: u64,
    capacity: usize,
    max_failures: u32,
    window_ms: i64,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self::new(MAX_TRACKED, MAX_FAILURES, WINDOW_MS)
    }
}

impl RateLimiter {
    pub fn new(capacity: usize, max_failures: u32, window_ms: i64) -> Self {
        Self {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            capacity: capacity.max(1),
            max_failures: max_failures.max(1),
            window_ms: window_ms.max(1),
        }
    }

    /// Sources tracked now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Sources limited now.
    pub fn limited_count(&self, now_ms: i64) -> usize {
        self.entries
            .values()
            .filter(|e| self.limited_entry(e, now_ms))
            .count()
    }

    fn limited_entry(&self, e: &Entry, now_ms: i64) -> bool {
        now_ms - e.window_start < self.window_ms && e.failures >= self.max_failures
    }

    /// Is `src` limited now? `Some(ms until the window ends)` if so.
    pub fn limited(&self, src: Source, now_ms: i64) -> Option<i64> {
        let e = self.entries.get(&src)?;
        self.limited_entry(e, now_ms)
            .then(|| (e.window_start + self.window_ms - now_ms).max(1))
    }

    /// Count a failed token from `src`; returns [`RateLimiter::limited`] after counting.
    pub fn record_failure(&mut self, src: Source, now_ms: i64) -> Option<i64> {
        self.tick += 1;
        let tick = self.tick;
        let mut entry = match self.entries.get(&src).copied() {
            Some(e) => {
                self.order.remove(&e.rank);
                e
            }
            None => {
                if self.entries.len() >= self.capacity
                    && let Some((_, old)) = self.order.pop_first()
                {
                    self.entries.remove(&old);
                }
                Entry {
                    window_start: now_ms,
                    failures: 0,
                    rank: (false, 0),
                }
            }
        };
        if now_ms - entry.window_start >= self.window_ms {
            entry.window_start = now_ms;
            entry.failures = 0;
        }
        entry.failures = entry.failures.saturating_add(1);
        entry.rank = (entry.failures >= self.max_failures, tick);
        self.order.insert(entry.rank, src);
        self.entries.insert(src, entry);
        self.limited(src, now_ms)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn v4(i: u32) -> Source {
        Source::V4(Ipv4Addr::from(0x0a00_0000 + i))
    }

    #[test]
    fn limited_after_max_failures_until_the_window_ends() {
        let mut rl = RateLimiter::new(100, 3, 1000);
        let a = v4(1);
        assert_eq!(rl.record_failure(a, 0), None);
        assert_eq!(rl.record_failure(a, 10), None);
        assert_eq!(rl.record_failure(a, 20), Some(980));
        assert_eq!(rl.limited(a, 500), Some(500));
        assert_eq!(rl.limited(v4(2), 500), None);
        assert_eq!(rl.limited(a, 1000), None, "the window ended");
        assert_eq!(rl.record_failure(a, 1000), None, "a new window starts");
    }

    #[test]
    fn a_flood_of_other_addresses_does_not_unblock_a_limited_one() {
        let mut rl = RateLimiter::default();
        let blocked = Source::parse("192.0.2.7:40000").unwrap();
        for i in 0..MAX_FAILURES {
            rl.record_failure(blocked, i64::from(i));
        }
        assert!(rl.limited(blocked, 100).is_some());
        // 10,000 other addresses fail once each, after the blocked one last failed.
        for i in 0..10_000u32 {
            rl.record_failure(v4(i), 1000 + i64::from(i));
            assert!(rl.len() <= MAX_TRACKED);
        }
        assert!(
            rl.limited(blocked, 20_000).is_some(),
            "still limited after the flood"
        );
        assert_eq!(rl.len(), MAX_TRACKED);
        // The least recently failing non-limited source was the one forgotten.
        assert!(rl.entries.contains_key(&v4(9_999)));
        assert!(!rl.entries.contains_key(&v4(0)));
        assert_eq!(rl.limited_count(20_000), 1);
    }

    #[test]
    fn when_all_are_limited_the_least_recently_failing_goes() {
        let mut rl = RateLimiter::new(2, 1, 60_000);
        rl.record_failure(v4(1), 0);
        rl.record_failure(v4(2), 1);
        rl.record_failure(v4(1), 2);
        rl.record_failure(v4(3), 3);
        assert!(rl.limited(v4(1), 4).is_some());
        assert!(rl.limited(v4(2), 4).is_none(), "evicted");
        assert!(rl.limited(v4(3), 4).is_some());
    }

    #[test]
    fn ipv6_counts_per_64() {
        let mut rl = RateLimiter::new(100, 3, 60_000);
        let a = Source::parse("[2001:db8:1:2::1]:5000").unwrap();
        let b = Source::parse("[2001:db8:1:2:ffff:1:2:3]:6000").unwrap();
        let other = Source::parse("2001:db8:1:3::1").unwrap();
        assert_eq!(a, b);
        assert_ne!(a, other);
        rl.record_failure(a, 0);
        rl.record_failure(b, 1);
        assert!(
            rl.record_failure(Source::parse("[2001:db8:1:2::9]:1").unwrap(), 2)
                .is_some()
        );
        assert!(rl.limited(other, 3).is_none());
        assert_eq!(a.to_string(), "2001:db8:1:2::/64");
        // IPv4-mapped addresses are their IPv4 address; v4 is per address.
        assert_eq!(
            Source::parse("[::ffff:192.0.2.1]:1"),
            Source::parse("192.0.2.1:2")
        );
        assert_ne!(Source::parse("192.0.2.1:1"), Source::parse("192.0.2.2:1"));
        assert_eq!(Source::parse("not an address"), None);
    }
}
