//! The writer: one line per `write` on a file opened for appending, the chain advanced only
//! after it succeeded, torn tails marked, summaries flushed, rotation by size and age.
//! Audit I/O errors are counted and logged, never returned.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use serde_json::{Map, Value, json};

use super::files::{
    Tail, compress_archives, first_line_ms, open_append, read_tail, staging_path, with_suffix,
};
use super::key::load_or_create_key;
use super::line::{cut, hmac_hex, now_ms, rfc3339};
use super::summary::{Summarizer, SummaryKey, Window, source_of};
use super::{AuditOptions, AuditStats, Event, KEY_LEN};

pub(super) struct Sink {
    pub(super) file: Option<File>,
    pub(super) path: Option<PathBuf>,
    pub(super) node: String,
    pub(super) key: Vec<u8>,
    pub(super) seq: u64,
    /// The last line's `hmac`.
    pub(super) prev: String,
    pub(super) size: u64,
    pub(super) started_ms: i64,
    pub(super) opts: AuditOptions,
    pub(super) summaries: Summarizer,
    pub(super) last_sweep_ms: i64,
    /// A failed write left bytes that could not be cut back: mark them before the next line.
    pub(super) torn_bytes: Option<u64>,
    pub(super) last_error_log_ms: i64,
    pub(super) last_reopen_ms: i64,
    pub(super) compressing: Option<std::thread::JoinHandle<()>>,
    pub(super) stats: Arc<AuditStats>,
}

/// Where audit events go.
pub struct Audit {
    pub(super) sink: Arc<Mutex<Sink>>,
    pub path: Option<PathBuf>,
    log_allows: AtomicBool,
    pub stats: Arc<AuditStats>,
}

impl Sink {
    fn new(
        path: Option<PathBuf>,
        key: Vec<u8>,
        opts: AuditOptions,
        stats: Arc<AuditStats>,
    ) -> Self {
        Self {
            file: None,
            path,
            node: node_name(),
            key,
            seq: 0,
            prev: String::new(),
            size: 0,
            started_ms: now_ms(),
            summaries: Summarizer::new(&opts),
            opts,
            last_sweep_ms: 0,
            torn_bytes: None,
            last_error_log_ms: i64::MIN / 2,
            last_reopen_ms: i64::MIN / 2,
            compressing: None,
            stats,
        }
    }

    fn error(&mut self, what: &str, e: &std::io::Error, now: i64) {
        self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
        if now - self.last_error_log_ms >= 10_000 {
            self.last_error_log_ms = now;
            tracing::error!(error = %e, "{what} (the broker keeps serving; audit lines are lost until the audit log can be written)");
        }
    }

    /// Write one line: `obj` plus `seq`, `prev` and `hmac`, in one `write_all`. The chain
    /// advances only if it succeeded.
    fn write_line(&mut self, mut obj: Map<String, Value>, now: i64) -> bool {
        let Some(file) = self.file.as_mut() else {
            return false;
        };
        let seq = self.seq + 1;
        obj.insert("seq".into(), json!(seq));
        obj.insert("prev".into(), json!(self.prev));
        let body = Value::Object(obj).to_string();
        let mac = hmac_hex(&self.key, body.as_bytes());
        let Some(open) = body.strip_suffix('}') else {
            return false;
        };
        let mut buf = Vec::with_capacity(body.len() + 80);
        buf.extend_from_slice(open.as_bytes());
        buf.extend_from_slice(format!(",\"hmac\":\"{mac}\"}}\n").as_bytes());
        match file.write_all(&buf) {
            Ok(()) => {
                self.seq = seq;
                self.prev = mac;
                self.size += buf.len() as u64;
                self.stats.written.fetch_add(1, Ordering::Relaxed);
                self.stats.file_bytes.store(self.size, Ordering::Relaxed);
                true
            }
            Err(e) => {
                // Cut back what part of the line got written; if that fails, the next line
                // starts after a torn-tail marker.
                let actual = file.metadata().map(|m| m.len()).unwrap_or(self.size);
                if actual > self.size && file.set_len(self.size).is_err() {
                    self.torn_bytes = Some(actual - self.size);
                    self.size = actual;
                }
                self.error("cannot write the audit log", &e, now);
                false
            }
        }
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

    /// Mark torn bytes (before the next line, which starts on a new line).
    fn mark_torn(&mut self, torn: u64, now: i64) -> bool {
        let Some(file) = self.file.as_mut() else {
            return false;
        };
        if let Err(e) = file.write_all(b"\n") {
            self.error("cannot write the audit log", &e, now);
            return false;
        }
        self.size += 1;
        let mut obj = self.base(now, "audit.torn_tail", false, "torn_tail");
        obj.insert("torn_bytes".into(), json!(torn));
        obj.insert("after_seq".into(), json!(self.seq));
        self.write_line(obj, now)
    }

    /// Append an event line (rotating, reopening and marking first as needed).
    fn append(&mut self, obj: Map<String, Value>, now: i64) {
        if self.path.is_none() {
            return;
        }
        if self.file.is_none() {
            if now - self.last_reopen_ms < 1000 {
                self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
                return;
            }
            self.last_reopen_ms = now;
            let Some(path) = self.path.clone() else {
                return;
            };
            match open_append(&path) {
                Ok(f) => {
                    self.size = f.metadata().map(|m| m.len()).unwrap_or(0);
                    self.file = Some(f);
                }
                Err(e) => {
                    self.error("cannot open the audit log", &e, now);
                    return;
                }
            }
        }
        if self.size > 0
            && (self.size >= self.opts.max_bytes
                || now - self.started_ms >= self.opts.max_age.as_millis() as i64)
        {
            self.rotate(now);
        }
        if let Some(torn) = self.torn_bytes
            && self.mark_torn(torn, now)
        {
            self.torn_bytes = None;
        }
        if self.torn_bytes.is_none() {
            self.write_line(obj, now);
        }
    }

    /// Move the file aside (compressed on another thread) and start a new one whose first
    /// line continues the chain.
    fn rotate(&mut self, now: i64) {
        let Some(path) = self.path.clone() else {
            return;
        };
        if let Some(h) = self.compressing.take() {
            let _ = h.join();
        }
        let staging = staging_path(&path);
        if let Err(e) = std::fs::rename(&path, &staging) {
            self.error("cannot rotate the audit log", &e, now);
            // Try again after another max_age (or when the size grows further).
            self.started_ms = now;
            return;
        }
        let previous_lines_end = self.seq;
        self.file = None;
        match open_append(&path) {
            Ok(f) => self.file = Some(f),
            Err(e) => self.error("cannot open the audit log", &e, now),
        }
        self.size = 0;
        self.started_ms = now;
        self.stats.rotations.fetch_add(1, Ordering::Relaxed);
        self.stats.file_bytes.store(0, Ordering::Relaxed);
        let keep = self.opts.keep;
        let spawned = std::thread::Builder::new()
            .name("keybus-audit-gzip".into())
            .spawn({
                let (path, staging) = (path.clone(), staging.clone());
                move || compress_archives(&path, &staging, keep)
            });
        match spawned {
            Ok(h) => self.compressing = Some(h),
            Err(_) => compress_archives(&path, &staging, keep),
        }
        let mut obj = self.base(now, "audit.rotate", true, "rotated");
        obj.insert("previous_file_last_seq".into(), json!(previous_lines_end));
        self.write_line(obj, now);
    }

    /// Write the summaries whose interval ended (all of them with `all`).
    fn sweep(&mut self, now: i64, all: bool) {
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
}

impl Audit {
    fn with_sink(sink: Sink, path: Option<PathBuf>) -> Self {
        let stats = sink.stats.clone();
        Self {
            sink: Arc::new(Mutex::new(sink)),
            path,
            log_allows: true.into(),
            stats,
        }
    }

    /// An audit log that only goes to tracing (no file).
    pub fn disabled() -> Self {
        let key: [u8; KEY_LEN] = rand::random();
        let sink = Sink::new(None, key.to_vec(), AuditOptions::default(), Arc::default());
        Self::with_sink(sink, None)
    }

    /// Append to `path` (created 0600), continuing the sequence and chain of what is there,
    /// keyed with the key at `key_path` (created on first use; `None`: a random key for this
    /// process). A torn tail is marked; a log of an earlier version, or one whose tail cannot
    /// be read, is moved aside (`FILE.legacy-<ms>`, `FILE.unreadable-<ms>`) and a new chain
    /// starts.
    pub fn open(path: &Path, key_path: Option<&Path>, opts: AuditOptions) -> std::io::Result<Self> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let key = match key_path {
            Some(k) => load_or_create_key(k)?,
            None => rand::random::<[u8; KEY_LEN]>().to_vec(),
        };
        let now = now_ms();
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
        let ticker = opts.ticker;
        let mut sink = Sink::new(Some(path.to_path_buf()), key, opts, Arc::default());
        let file = open_append(path)?;
        sink.size = file.metadata()?.len();
        sink.file = Some(file);
        sink.started_ms = first_line_ms(path).unwrap_or(now);
        sink.stats.file_bytes.store(sink.size, Ordering::Relaxed);
        if let Tail::Chain { seq, hmac, torn } = tail {
            sink.seq = seq;
            sink.prev = hmac;
            if torn > 0 {
                sink.torn_bytes = Some(torn);
                if sink.mark_torn(torn, now) {
                    sink.torn_bytes = None;
                }
            }
        }
        if let Some(aside) = moved {
            let mut obj = sink.base(now, "audit.chain_start", true, "previous_log_moved");
            obj.insert("moved_to".into(), json!(aside.display().to_string()));
            sink.write_line(obj, now);
        }
        let audit = Self::with_sink(sink, Some(path.to_path_buf()));
        if ticker {
            let weak = Arc::downgrade(&audit.sink);
            let _ = std::thread::Builder::new()
                .name("keybus-audit".into())
                .spawn(move || {
                    loop {
                        std::thread::sleep(Duration::from_secs(1));
                        let Some(sink) = weak.upgrade() else {
                            return;
                        };
                        if let Ok(mut s) = sink.lock() {
                            s.sweep(now_ms(), false);
                        }
                    }
                });
        }
        Ok(audit)
    }

    pub fn set_log_allows(&self, on: bool) {
        self.log_allows.store(on, Ordering::Relaxed);
    }

    /// Record one event (allowed ones only when `log_allows`).
    pub fn record(&self, ev: Event) {
        self.record_at(ev, now_ms());
    }

    /// [`Audit::record`] at a given time (ms since the epoch).
    pub fn record_at(&self, ev: Event, now: i64) {
        if ev.allow && !self.log_allows.load(Ordering::Relaxed) {
            return;
        }
        let decision = if ev.allow { "allow" } else { "deny" };
        tracing::debug!(target: "keybus::audit", event = ev.event, decision, reason = %ev.reason, peer = ev.peer.as_deref().unwrap_or(""));
        let Ok(mut sink) = self.sink.lock() else {
            return;
        };
        if sink.path.is_none() {
            return;
        }
        if now - sink.last_sweep_ms >= 1000 {
            sink.sweep(now, false);
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
            let (write, due) = sink.summaries.admit(key, now);
            if let Some((k, w)) = due {
                sink.write_summary(&k, &w, now);
            }
            if !write {
                self.stats.summarised.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        let mut obj = sink.base(now, ev.event, ev.allow, &cut(&ev.reason));
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
        sink.append(obj, now);
    }

    /// Write summaries that are due at `now` (the ticker does this every second).
    pub fn flush_summaries_at(&self, now: i64) {
        if let Ok(mut s) = self.sink.lock() {
            s.sweep(now, false);
        }
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        if let Ok(mut s) = self.sink.lock() {
            s.sweep(now_ms(), true);
            if let Some(h) = s.compressing.take() {
                let _ = h.join();
            }
        }
    }
}

fn node_name() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "keybus".into())
}
