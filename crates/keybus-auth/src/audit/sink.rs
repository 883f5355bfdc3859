//! The sink, owned by the writer thread: the file, the chain, the batch of lines not yet
//! written, denial summaries, torn tails and rotation by size and age. Audit I/O errors are
//! counted and logged, never returned.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use serde_json::{Map, Value, json};

use super::batch::{Batch, Chain};
use super::files::{
    Tail, compress_archives, first_line_ms, open_append, read_tail, staging_path, with_suffix,
};
use super::key::load_or_create_key;
use super::line::{cut, rfc3339};
use super::summary::{Summarizer, SummaryKey, Window, source_of};
use super::{AuditOptions, AuditStats, Event, KEY_LEN};

/// A batch this large is written at once, without waiting for the end of the queue.
const BATCH_BYTES: usize = 256 * 1024;

pub(super) struct Sink {
    pub(super) file: Option<File>,
    path: PathBuf,
    node: String,
    key: Vec<u8>,
    /// The last line written.
    pub(super) chain: Chain,
    /// Lines encoded after `chain`, not yet written.
    batch: Batch,
    /// Bytes in the file (lines written, plus torn bytes left in it).
    size: u64,
    started_ms: i64,
    opts: AuditOptions,
    summaries: Summarizer,
    last_sweep_ms: i64,
    /// A failed write left bytes that could not be cut back: mark them before the next line.
    torn_bytes: Option<u64>,
    last_error_log_ms: i64,
    last_reopen_ms: i64,
    compressing: Option<JoinHandle<()>>,
    stats: Arc<AuditStats>,
}

impl Sink {
    /// Open `path` for appending (created 0600), continuing the sequence and chain of what is
    /// there, keyed with the key at `key_path` (created on first use; `None`: a random key for
    /// this process). A torn tail is marked; a log of an earlier version, or one whose tail
    /// cannot be read, is moved aside (`FILE.legacy-<ms>`, `FILE.unreadable-<ms>`) and a new
    /// chain starts.
    pub(super) fn open(
        path: &Path,
        key_path: Option<&Path>,
        opts: AuditOptions,
        stats: Arc<AuditStats>,
        now: i64,
    ) -> std::io::Result<Self> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let key = match key_path {
            Some(k) => load_or_create_key(k)?,
            None => rand::random::<[u8; KEY_LEN]>().to_vec(),
        };
        // A rotation that the broker did not finish compressing.
        let staging = staging_path(path);
        if staging.exists() {
            compress_archives(path, &staging, opts.keep);
        }
        let tail = read_tail(path)?;
        let mut moved = None;
        if matches!(tail, Tail::Legacy | Tail::Unreadable) {
            let kind = if tail == Tail::Legacy {
                "legacy"
            } else {
                "unreadable"
            };
            let aside = with_suffix(path, &format!(".{kind}-{now}"));
            std::fs::rename(path, &aside)?;
            tracing::warn!(file = %aside.display(), "the audit log could not be continued; it was moved aside and a new chain starts");
            moved = Some(aside);
        }
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        stats.file_bytes.store(size, Ordering::Relaxed);
        let mut sink = Self {
            file: Some(file),
            path: path.to_path_buf(),
            node: node_name(),
            key,
            chain: Chain::default(),
            batch: Batch::default(),
            size,
            started_ms: first_line_ms(path).unwrap_or(now),
            summaries: Summarizer::new(&opts),
            opts,
            last_sweep_ms: 0,
            torn_bytes: None,
            last_error_log_ms: i64::MIN / 2,
            last_reopen_ms: i64::MIN / 2,
            compressing: None,
            stats,
        };
        if let Tail::Chain { seq, hmac, torn } = tail {
            sink.chain = Chain { seq, prev: hmac };
            if torn > 0 {
                sink.torn_bytes = Some(torn);
                sink.mark_torn(torn, now);
            }
        }
        if let Some(aside) = moved {
            let mut obj = sink.base(now, "audit.chain_start", true, "previous_log_moved");
            obj.insert("moved_to".into(), json!(aside.display().to_string()));
            sink.batch.push(obj, &sink.key, &sink.chain);
            sink.flush(now);
        }
        Ok(sink)
    }

    /// Count an I/O error (as the lines it lost, at least one) and log it, at most every 10 s.
    fn error(&mut self, what: &str, e: &std::io::Error, lost: u64, now: i64) {
        self.stats
            .write_errors
            .fetch_add(lost.max(1), Ordering::Relaxed);
        if now - self.last_error_log_ms >= 10_000 {
            self.last_error_log_ms = now;
            tracing::error!(error = %e, "{what} (the broker keeps serving; audit lines are lost until the audit log can be written)");
        }
    }

    /// Write the batch with one `write_all`. The chain advances over the lines that reached
    /// the file whole; a failed write's part of a line is cut back or, if that fails, marked
    /// before the next line. `false` if lines were lost.
    pub(super) fn flush(&mut self, now: i64) -> bool {
        if self.batch.is_empty() {
            return true;
        }
        let Some(file) = self.file.as_mut() else {
            let lost = self.batch.len() as u64;
            self.stats.write_errors.fetch_add(lost, Ordering::Relaxed);
            self.batch.commit(0, &mut self.chain);
            return false;
        };
        let result = file.write_all(self.batch.bytes());
        let written = match &result {
            Ok(()) => self.batch.bytes().len() as u64,
            Err(_) => file
                .metadata()
                .map_or(0, |m| m.len().saturating_sub(self.size)),
        };
        let reached = self.batch.reached(written);
        self.batch.commit(reached.lines, &mut self.chain);
        self.size += reached.bytes;
        self.stats
            .written
            .fetch_add(reached.lines as u64, Ordering::Relaxed);
        let Err(e) = result else {
            self.stats.file_bytes.store(self.size, Ordering::Relaxed);
            return true;
        };
        if reached.torn > 0 && file.set_len(self.size).is_err() {
            self.torn_bytes = Some(reached.torn);
            self.size += reached.torn;
        }
        self.stats.file_bytes.store(self.size, Ordering::Relaxed);
        self.error("cannot write the audit log", &e, reached.lost as u64, now);
        false
    }

    /// The common members of a line.
    fn base(&self, now: i64, event: &str, allow: bool, reason: &str) -> Map<String, Value> {
        let mut obj = Map::new();
        obj.insert("ts".into(), json!(rfc3339(now)));
        obj.insert("node".into(), json!(self.node));
        obj.insert("event".into(), json!(event));
        obj.insert(
            "decision".into(),
            json!(if allow { "allow" } else { "deny" }),
        );
        obj.insert("reason".into(), json!(reason));
        obj
    }

    /// Mark torn bytes: a newline, then a marker line, written at once. Clears `torn_bytes`
    /// when the marker is in the file.
    fn mark_torn(&mut self, torn: u64, now: i64) {
        if !self.flush(now) {
            return;
        }
        let Some(file) = self.file.as_mut() else {
            return;
        };
        if let Err(e) = file.write_all(b"\n") {
            self.error("cannot write the audit log", &e, 1, now);
            return;
        }
        self.size += 1;
        let mut obj = self.base(now, "audit.torn_tail", false, "torn_tail");
        obj.insert("torn_bytes".into(), json!(torn));
        obj.insert("after_seq".into(), json!(self.chain.seq));
        self.batch.push(obj, &self.key, &self.chain);
        if self.flush(now) {
            self.torn_bytes = None;
        }
    }

    /// Add an event line to the batch (reopening, rotating and marking torn bytes first as
    /// needed); a full batch is written at once.
    fn append(&mut self, obj: Map<String, Value>, now: i64) {
        if self.file.is_none() {
            if now - self.last_reopen_ms < 1000 {
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
            self.last_reopen_ms = now;
            match open_append(&self.path) {
                Ok(f) => {
                    self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
                    self.file = Some(f);
                }
                Err(e) => {
                    self.error("cannot open the audit log", &e, 1, now);
                    return;
                }
            }
        }
        let size = self.size + self.batch.bytes().len() as u64;
        if size > 0
            && (size >= self.opts.max_bytes
                || now - self.started_ms >= self.opts.max_age.as_millis() as i64)
        {
            self.rotate(now);
        }
        if let Some(torn) = self.torn_bytes {
            self.mark_torn(torn, now);
        }
        if self.torn_bytes.is_some() {
            return;
        }
        if self.file.is_none() {
            // Rotation could not open the new file.
            self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.batch.push(obj, &self.key, &self.chain);
        if self.batch.bytes().len() >= BATCH_BYTES {
            self.flush(now);
        }
    }

    /// Write the batch, move the file aside (compressed on another thread) and start a new
    /// one whose first line continues the chain.
    fn rotate(&mut self, now: i64) {
        self.flush(now);
        if let Some(h) = self.compressing.take() {
            let _ = h.join();
        }
        let staging = staging_path(&self.path);
        if let Err(e) = std::fs::rename(&self.path, &staging) {
            self.error("cannot rotate the audit log", &e, 1, now);
            // Try again after another max_age (or when the size grows further).
            self.started_ms = now;
            return;
        }
        let previous_lines_end = self.chain.seq;
        self.file = None;
        match open_append(&self.path) {
            Ok(f) => self.file = Some(f),
            Err(e) => self.error("cannot open the audit log", &e, 1, now),
        }
        self.size = 0;
        self.started_ms = now;
        self.stats.rotations.fetch_add(1, Ordering::Relaxed);
        self.stats.file_bytes.store(0, Ordering::Relaxed);
        let keep = self.opts.keep;
        let spawned = std::thread::Builder::new()
            .name("keybus-audit-gzip".into())
            .spawn({
                let (path, staging) = (self.path.clone(), staging.clone());
                move || compress_archives(&path, &staging, keep)
            });
        match spawned {
            Ok(h) => self.compressing = Some(h),
            Err(_) => compress_archives(&self.path, &staging, keep),
        }
        if self.file.is_some() {
            let mut obj = self.base(now, "audit.rotate", true, "rotated");
            obj.insert("previous_file_last_seq".into(), json!(previous_lines_end));
            self.batch.push(obj, &self.key, &self.chain);
        }
    }

    pub(super) fn summary_interval_ms(&self) -> i64 {
        self.summaries.interval_ms
    }

    /// Add the summaries whose interval ended (all of them with `all`) to the batch.
    pub(super) fn sweep(&mut self, now: i64, all: bool) {
        self.last_sweep_ms = now;
        for (k, w) in self.summaries.due(now, all) {
            self.write_summary(&k, &w, now);
        }
    }

    fn write_summary(&mut self, k: &SummaryKey, w: &Window, now: i64) {
        let mut obj = self.base(now, k.event, false, &k.reason);
        obj.insert("conn".into(), json!({ "peer": k.source }));
        if !k.principal.is_empty() {
            obj.insert("principal".into(), json!({ "id": k.principal }));
        }
        obj.insert("summary".into(), json!(true));
        obj.insert("count".into(), json!(w.suppressed));
        obj.insert("first".into(), json!(rfc3339(w.first_ms)));
        obj.insert("last".into(), json!(rfc3339(w.last_ms)));
        obj.insert("interval_ms".into(), json!(self.summaries.interval_ms));
        self.append(obj, now);
    }

    /// Add one event's line to the batch, unless it is a repeated denial that the summaries
    /// count instead.
    pub(super) fn record(&mut self, ev: Event, now: i64) {
        if now - self.last_sweep_ms >= 1000 {
            self.sweep(now, false);
        }
        if !ev.allow
            && let Some(peer) = &ev.peer
        {
            let principal = ev
                .principal
                .as_ref()
                .and_then(|p| p.get("id"))
                .and_then(Value::as_str)
                .map(cut)
                .unwrap_or_default();
            let key = SummaryKey {
                event: ev.event,
                reason: cut(&ev.reason),
                source: source_of(peer),
                principal,
            };
            let (write, due) = self.summaries.admit(key, now);
            if let Some((k, w)) = due {
                self.write_summary(&k, &w, now);
            }
            if !write {
                self.stats.summarised.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let mut obj = self.base(now, ev.event, ev.allow, &cut(&ev.reason));
        if let Some(p) = ev.principal {
            obj.insert("principal".into(), p);
        }
        if let Some(a) = ev.action {
            obj.insert("action".into(), json!(a));
        }
        if let Some(e) = ev.entity {
            obj.insert("resource".into(), json!({ "entity": cut(&e) }));
        }
        if ev.rule.is_some() || ev.policy_version.is_some() {
            obj.insert(
                "policy".into(),
                json!({ "rule": ev.rule, "version": ev.policy_version }),
            );
        }
        if ev.conn.is_some() || ev.peer.is_some() {
            obj.insert("conn".into(), json!({ "id": ev.conn, "peer": ev.peer }));
        }
        if let Some(l) = ev.link {
            obj.insert("link".into(), json!(cut(&l)));
        }
        if let Some(c) = ev.correlation_id {
            obj.insert("correlation_id".into(), json!(cut(&c)));
        }
        for (k, v) in ev.extra {
            if !matches!(k, "seq" | "prev" | "hmac") {
                obj.insert(k.into(), v);
            }
        }
        self.append(obj, now);
    }

    /// At shutdown: write every pending summary and the batch, and wait for a compression
    /// under way.
    pub(super) fn close(&mut self, now: i64) {
        self.sweep(now, true);
        self.flush(now);
        if let Some(h) = self.compressing.take() {
            let _ = h.join();
        }
    }
}

fn node_name() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "keybus".into())
}
