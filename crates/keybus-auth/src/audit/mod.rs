//! The audit log (identity reference §7.2): one JSON object per line, UTC RFC 3339 times, a
//! sequence number and a keyed chain for tamper evidence. Every authentication and
//! authorisation decision goes here; never a token, key or message body.
//!
//! # The chain
//! Each line carries `seq`, `prev` (the previous line's `hmac`) and `hmac` =
//! HMAC-SHA256(key, the line without its `hmac` member), written as the line's last member.
//! The key is kept outside the log (`<data-dir>/audit-key`, 0600; brokers without a data
//! dir use a random key per process): whoever can edit the log but not read the key cannot
//! recompute the chain. `keybus audit verify FILE` checks a log and its rotated archives.
//!
//! # Writing
//! [`Audit::record`] does no JSON, HMAC or file I/O: it drops allowed events when
//! `log_allows` is off, logs the tracing line and hands the event over a bounded queue
//! ([`AuditOptions::queue_depth`]) to the writer thread, which owns the file, the chain, the
//! summaries and rotation. An allowed event that finds the queue full is dropped and counted
//! ([`AuditStats::dropped`]); a denial waits for room and is never dropped. Each turn the
//! writer takes what is queued, encodes the lines with the chain as it will stand, and writes
//! them with one `write_all` on a file opened `O_APPEND` (a batch past 256 KiB is written at
//! once). The chain advances only over the lines that reached the file whole: after a failed
//! write, the whole lines it managed to write stay and are chained, the part of a line after
//! them is cut back or, if that fails too, the next line starts on a new line after an
//! `audit.torn_tail` marker (undo is per line, not per batch, so torn bytes are never more
//! than one line). At open only the file's tail is read: a tail that does not end a line is
//! marked the same way. Lines are flushed, not fsynced, and written only at token, attach and
//! management time, never per message. [`Audit::flush`] waits until everything recorded so far
//! is written; dropping the [`Audit`] writes what is queued and every pending summary, then
//! joins the thread (the server flushes when it stops; a killed process loses what was still
//! queued). [`Audit::disabled`] (no file) has no thread.
//!
//! # Bounds
//! Repeated denials from one source (IPv4 address or IPv6 /64) with the same event and
//! reason are written [`AuditOptions::summary_burst`] times per interval, then summarised in
//! one line with a `count`. The file is rotated by size and age into gzip archives
//! (`FILE.1.gz` newest), at most [`AuditOptions::keep`] of them; the first line of a new file
//! continues the chain. Audit I/O errors are counted and logged, never returned: the broker
//! keeps serving and the message store, in its own files, is not touched.

mod batch;
mod files;
mod handle;
mod key;
mod line;
mod sink;
mod summary;
#[cfg(test)]
mod tests;
mod verify;
mod writer;

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use serde_json::Value;

pub use files::{archive_path, log_files};
pub use handle::Audit;
pub use key::{load_or_create_key, read_key};
pub use verify::{VerifyError, VerifyReport, verify_files};

/// Longest text we record in one field; longer values are cut (an attacker-chosen entity
/// name or subject must not bloat the log).
const MAX_FIELD: usize = 512;
/// How much of a log's end is read at open to find where the chain stands.
const TAIL_BYTES: u64 = 256 * 1024;
/// Length of the key in `audit-key`.
pub const KEY_LEN: usize = 32;

/// Size, age and summary limits of the audit log.
#[derive(Debug, Clone)]
pub struct AuditOptions {
    /// Rotate when the file reaches this size.
    pub max_bytes: u64,
    /// Rotate when the file's first line is older than this.
    pub max_age: Duration,
    /// Compressed archives kept (`FILE.1.gz` .. `FILE.keep.gz`).
    pub keep: usize,
    /// Denials from one source with the same event and reason are counted per interval ...
    pub summary_interval_ms: i64,
    /// ... and written one by one only this many times in it.
    pub summary_burst: u32,
    /// Sources tracked for summaries; beyond, denials are summarised under source `*`.
    pub summary_sources: usize,
    /// The writer also sweeps due summaries every second by the wall clock (off in unit
    /// tests, which pass their own times).
    pub ticker: bool,
    /// Events queued for the writer thread; beyond, allowed events are dropped and denials
    /// wait.
    pub queue_depth: usize,
}

impl Default for AuditOptions {
    fn default() -> Self {
        Self {
            max_bytes: 64 * 1024 * 1024,
            max_age: Duration::from_secs(24 * 3600),
            keep: 10,
            summary_interval_ms: 10_000,
            summary_burst: 3,
            summary_sources: 1024,
            ticker: true,
            queue_depth: 16_384,
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct AuditStats {
    pub written: AtomicU64,
    /// Denials not written one by one (counted in summary lines).
    pub summarised: AtomicU64,
    pub write_errors: AtomicU64,
    pub rotations: AtomicU64,
    pub file_bytes: AtomicU64,
    /// Allowed events dropped because the writer's queue was full.
    pub dropped: AtomicU64,
}

/// One event, filled in by the enforcement point.
#[derive(Debug, Default, Clone)]
pub struct Event {
    /// `token.put`, `token.expired`, `authz`, `link.detach`, `mgmt.op`, `sts.issue`,
    /// `mi.issue`, `policy.reload`, `http.authz`, ...
    pub event: &'static str,
    pub allow: bool,
    pub reason: String,
    /// `{"id", "kind", "iss", "sub", ...}`, built by [`crate::Principal::audit_json`].
    pub principal: Option<Value>,
    pub action: Option<String>,
    pub entity: Option<String>,
    pub rule: Option<String>,
    pub policy_version: Option<String>,
    /// AMQP connection id.
    pub conn: Option<String>,
    /// The client's address (`ip:port`).
    pub peer: Option<String>,
    pub link: Option<String>,
    pub correlation_id: Option<String>,
    /// Anything else worth keeping (counts, expiry).
    pub extra: Vec<(&'static str, Value)>,
}
