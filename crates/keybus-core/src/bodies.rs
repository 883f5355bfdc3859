//! The body window: how many bytes of message bodies the broker keeps in memory, shared by
//! every entity. A message accepted while the window is full is kept by the store only (its
//! entry in the index stays, without the body) and read back when it is delivered, peeked or
//! forwarded; so a queue's depth is bounded by the disk, not by memory.
//!
//! The domain reads a body back through the [`MessageSource`] port it is given ([`Bodies`]):
//! the store, wired in by the server. It never does I/O itself.
//!
//! Accounting is by a message's encoded size (`MessageRecord::size`). A body shared by several
//! subscriptions counts once per subscription that holds it, so the window errs on the small
//! side.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use keybus_amqp::Message;

use crate::address::SubQueue;
use crate::store::{MessageSource, StoreError};

/// Bytes of message bodies held in memory, against a limit.
#[derive(Debug)]
pub struct BodyWindow {
    limit: u64,
    used: AtomicU64,
    /// Reads back that failed, since start-up.
    read_errors: AtomicU64,
}

impl BodyWindow {
    /// A window of `limit` bytes.
    pub fn new(limit: u64) -> BodyWindow {
        BodyWindow {
            limit,
            used: AtomicU64::new(0),
            read_errors: AtomicU64::new(0),
        }
    }

    /// A window that never evicts (every body stays in memory).
    pub fn unlimited() -> BodyWindow {
        BodyWindow::new(u64::MAX)
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes of bodies held now.
    pub fn used(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    /// Bytes that may still be taken before the window is full.
    pub fn available(&self) -> u64 {
        self.limit.saturating_sub(self.used())
    }

    /// Bodies that could not be read back since start-up (each is reported by the queue's
    /// `take_read_error`).
    pub fn read_errors(&self) -> u64 {
        self.read_errors.load(Ordering::Relaxed)
    }

    pub(crate) fn add(&self, bytes: u64) {
        self.used.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn sub(&self, bytes: u64) {
        // Saturating: a release never takes the counter below zero.
        let _ = self
            .used
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |u| {
                Some(u.saturating_sub(bytes))
            });
    }
}

impl Default for BodyWindow {
    fn default() -> Self {
        BodyWindow::unlimited()
    }
}

/// Where an entity's bodies live: the shared window, and the source to read evicted ones back
/// from. Without a source nothing is evicted (every body stays in memory).
#[derive(Clone, Default)]
pub struct Bodies {
    window: Arc<BodyWindow>,
    source: Option<Arc<dyn MessageSource + Send + Sync>>,
}

impl std::fmt::Debug for Bodies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bodies")
            .field("window", &self.window)
            .field("source", &self.source.is_some())
            .finish()
    }
}

impl Bodies {
    /// Bodies beyond `window` are evicted and read back from `source`.
    pub fn new(window: Arc<BodyWindow>, source: Arc<dyn MessageSource + Send + Sync>) -> Bodies {
        Bodies {
            window,
            source: Some(source),
        }
    }

    pub fn window(&self) -> &BodyWindow {
        &self.window
    }

    /// True if a body that is no longer locked should be left to the store: the window holds
    /// more than its limit.
    pub(crate) fn over(&self) -> bool {
        self.source.is_some() && self.window.used() > self.window.limit
    }

    /// True if a new message of `size` bytes keeps its body in memory: it fits the window (or
    /// there is no store to read it back from). Earlier messages keep theirs first, so the
    /// heads of queues stay in memory.
    pub(crate) fn fits(&self, size: u32) -> bool {
        self.source.is_none()
            || self.window.used().saturating_add(u64::from(size)) <= self.window.limit
    }

    /// Read an evicted body back.
    pub(crate) fn read(
        &self,
        entity: &str,
        sub: SubQueue,
        seq: i64,
    ) -> Result<Arc<Message>, StoreError> {
        let read = match &self.source {
            Some(source) => source.read_message(entity, sub, seq),
            None => Err(StoreError::Corrupt(format!(
                "message {seq} of '{entity}' has no body in memory and no store to read it from"
            ))),
        };
        if read.is_err() {
            self.window.read_errors.fetch_add(1, Ordering::Relaxed);
        }
        read
    }
}
