//! Summaries of repeated denials: per source (IPv4 address or IPv6 /64), event and reason,
//! [`super::AuditOptions::summary_burst`] lines per interval are written one by one, the rest
//! counted into one summary line; the number of sources tracked is bounded.

use std::collections::HashMap;

use super::AuditOptions;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct SummaryKey {
    pub(super) event: &'static str,
    pub(super) reason: String,
    pub(super) source: String,
    /// The principal's id for decisions on authenticated callers (one principal's denials
    /// do not hide another's), empty for refused credentials.
    pub(super) principal: String,
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Window {
    pub(super) start_ms: i64,
    pub(super) first_ms: i64,
    pub(super) last_ms: i64,
    pub(super) seen: u32,
    pub(super) suppressed: u64,
}

/// Counts denials per (source, event, reason) and interval: the first `burst` are written,
/// the rest become one summary line when the interval is over. Pure (time passed in).
#[derive(Debug)]
pub(super) struct Summarizer {
    pub(super) interval_ms: i64,
    pub(super) burst: u32,
    pub(super) max_keys: usize,
    pub(super) windows: HashMap<SummaryKey, Window>,
}

impl Summarizer {
    pub(super) fn new(o: &AuditOptions) -> Self {
        Self {
            interval_ms: o.summary_interval_ms.max(1),
            burst: o.summary_burst,
            max_keys: o.summary_sources.max(1),
            windows: HashMap::new(),
        }
    }

    /// Should this denial be written (`true`) or only counted? Also returns the summary of
    /// this key's previous window if it ended.
    pub(super) fn admit(
        &mut self,
        key: SummaryKey,
        now: i64,
    ) -> (bool, Option<(SummaryKey, Window)>) {
        let mut due = None;
        if let Some(w) = self.windows.get(&key).copied()
            && now - w.start_ms >= self.interval_ms
        {
            self.windows.remove(&key);
            if w.suppressed > 0 {
                due = Some((key.clone(), w));
            }
        }
        let key = if !self.windows.contains_key(&key) && self.windows.len() >= self.max_keys {
            SummaryKey {
                source: "*".into(),
                principal: String::new(),
                ..key
            }
        } else {
            key
        };
        let w = self.windows.entry(key).or_insert(Window {
            start_ms: now,
            first_ms: now,
            last_ms: now,
            seen: 0,
            suppressed: 0,
        });
        w.seen = w.seen.saturating_add(1);
        if w.seen <= self.burst {
            return (true, due);
        }
        if w.suppressed == 0 {
            w.first_ms = now;
        }
        w.suppressed += 1;
        w.last_ms = now;
        (false, due)
    }

    /// Windows that ended by `now` (all with `all`) and have something to summarise.
    pub(super) fn due(&mut self, now: i64, all: bool) -> Vec<(SummaryKey, Window)> {
        let interval = self.interval_ms;
        let ended: Vec<SummaryKey> = self
            .windows
            .iter()
            .filter(|(_, w)| all || now - w.start_ms >= interval)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out = Vec::new();
        for k in ended {
            if let Some(w) = self.windows.remove(&k)
                && w.suppressed > 0
            {
                out.push((k, w));
            }
        }
        out.sort_by_key(|(_, w)| w.first_ms);
        out
    }
}

/// The summary source of a peer: its rate-limit source (IPv4 address, IPv6 /64).
pub(super) fn source_of(peer: &str) -> String {
    match crate::ratelimit::Source::parse(peer) {
        Some(s) => s.to_string(),
        None => peer.to_string(),
    }
}
