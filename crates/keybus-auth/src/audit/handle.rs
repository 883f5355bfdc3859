//! [`Audit`], what enforcement points hold: it filters allowed events, logs the tracing line
//! and hands the event to the writer thread over a bounded queue. No JSON, HMAC or file I/O
//! happens in the caller. A full queue drops an allowed event (counted) and makes a denial
//! wait for room.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;

use super::line::now_ms;
use super::sink::Sink;
use super::writer::{Msg, run};
use super::{AuditOptions, AuditStats, Event};

/// Where audit events go.
pub struct Audit {
    /// The writer's queue (`None`: no file, nothing to write).
    queue: Option<SyncSender<Msg>>,
    writer: Option<JoinHandle<()>>,
    pub path: Option<PathBuf>,
    log_allows: AtomicBool,
    pub stats: Arc<AuditStats>,
}

impl Audit {
    /// An audit log that only goes to tracing (no file, no writer thread).
    pub fn disabled() -> Self {
        Self {
            queue: None,
            writer: None,
            path: None,
            log_allows: true.into(),
            stats: Arc::default(),
        }
    }

    /// Append to `path` (created 0600), continuing the sequence and chain of what is there,
    /// keyed with the key at `key_path` (created on first use; `None`: a random key for this
    /// process), written by a thread of its own. A torn tail is marked; a log of an earlier
    /// version, or one whose tail cannot be read, is moved aside (`FILE.legacy-<ms>`,
    /// `FILE.unreadable-<ms>`) and a new chain starts.
    pub fn open(path: &Path, key_path: Option<&Path>, opts: AuditOptions) -> std::io::Result<Self> {
        let stats = Arc::new(AuditStats::default());
        let (ticker, depth) = (opts.ticker, opts.queue_depth.max(1));
        let sink = Sink::open(path, key_path, opts, stats.clone(), now_ms())?;
        let (queue, taken) = sync_channel(depth);
        let writer = std::thread::Builder::new()
            .name("keybus-audit".into())
            .spawn(move || run(sink, taken, ticker))?;
        Ok(Self {
            queue: Some(queue),
            writer: Some(writer),
            path: Some(path.to_path_buf()),
            log_allows: true.into(),
            stats,
        })
    }

    pub fn set_log_allows(&self, on: bool) {
        self.log_allows.store(on, Ordering::Relaxed);
    }

    /// Record one event (allowed ones only when `log_allows`).
    pub fn record(&self, ev: Event) {
        self.record_at(ev, now_ms());
    }

    /// [`Audit::record`] at a given time (ms since the epoch). An allowed event finding the
    /// queue full is dropped and counted in [`AuditStats::dropped`]; a denial waits for room.
    pub fn record_at(&self, ev: Event, now: i64) {
        if ev.allow && !self.log_allows.load(Ordering::Relaxed) {
            return;
        }
        let decision = if ev.allow { "allow" } else { "deny" };
        tracing::debug!(target: "keybus::audit", event = ev.event, decision, reason = %ev.reason, peer = ev.peer.as_deref().unwrap_or(""));
        let Some(queue) = &self.queue else {
            return;
        };
        let allow = ev.allow;
        let msg = Msg::Record(Box::new(ev), now);
        let sent = if allow {
            match queue.try_send(msg) {
                Ok(()) => true,
                Err(TrySendError::Full(_)) => {
                    self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                    true
                }
                Err(TrySendError::Disconnected(_)) => false,
            }
        } else {
            queue.send(msg).is_ok()
        };
        if !sent {
            // The writer thread is gone: nothing more can be written.
            self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Wait until everything recorded so far is written (or could not be).
    pub fn flush(&self) {
        let Some(queue) = &self.queue else {
            return;
        };
        let (done, written) = sync_channel(1);
        if queue.send(Msg::Flush(done)).is_ok() {
            let _ = written.recv();
        }
    }

    /// Write the summaries that are due at `now` (the ticker does this every second), and
    /// wait until they are written.
    pub fn flush_summaries_at(&self, now: i64) {
        if let Some(queue) = &self.queue
            && queue.send(Msg::Sweep(now)).is_ok()
        {
            self.flush();
        }
    }

    /// Run `f` on the sink in the writer thread, in queue order, without waiting.
    #[cfg(test)]
    pub(super) fn on_writer(&self, f: impl FnOnce(&mut Sink) + Send + 'static) {
        if let Some(queue) = &self.queue {
            let _ = queue.send(Msg::Run(Box::new(f)));
        }
    }
}

impl Drop for Audit {
    /// Write everything queued and every pending summary, then join the writer.
    fn drop(&mut self) {
        drop(self.queue.take());
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}
