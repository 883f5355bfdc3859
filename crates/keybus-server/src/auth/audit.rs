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
//! A line (with its newline) is built in one buffer and written with one `write_all` on a
//! file opened `O_APPEND`; the chain advances only after the write succeeded. A failed write
//! is undone (the file is cut back) or, if that fails too, the next line starts on a new line
//! after an `audit.torn_tail` marker. At open only the file's tail is read: a tail that does
//! not end a line is marked the same way. Lines are flushed, not fsynced, and written only at
//! token, attach and management time, never per message.
//!
//! # Bounds
//! Repeated denials from one source (IPv4 address or IPv6 /64) with the same event and
//! reason are written [`AuditOptions::summary_burst`] times per interval, then summarised in
//! one line with a `count`. The file is rotated by size and age into gzip archives
//! (`FILE.1.gz` newest), at most [`AuditOptions::keep`] of them; the first line of a new file
//! continues the chain. Audit I/O errors are counted and logged, never returned: the broker
//! keeps serving and the message store, in its own files, is not touched.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use serde_json::{Map, Value, json};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

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
    /// Flush due summaries every second on a thread of its own (off in unit tests).
    pub ticker: bool,
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
}

/// One event, filled in by the enforcement point.
#[derive(Debug, Default, Clone)]
pub struct Event {
    /// `token.put`, `token.expired`, `authz`, `link.detach`, `mgmt.op`, `sts.issue`,
    /// `mi.issue`, `policy.reload`, `http.authz`, ...
    pub event: &'static str,
    pub allow: bool,
    pub reason: String,
    /// `{"id", "kind", "iss", "sub", ...}`, built by [`super::Principal::audit_json`].
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

fn cut(s: &str) -> String {
    if s.len() <= MAX_FIELD {
        return s.to_string();
    }
    let mut end = MAX_FIELD;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn rfc3339(ms: i64) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

fn hmac_hex(key: &[u8], data: &[u8]) -> String {
    let Ok(mut mac) = HmacSha256::new_from_slice(key) else {
        return String::new();
    };
    mac.update(data);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ------------------------------------------------------------------ summaries

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct SummaryKey {
    event: &'static str,
    reason: String,
    source: String,
    /// The principal's id for decisions on authenticated callers (one principal's denials
    /// do not hide another's), empty for refused credentials.
    principal: String,
}

#[derive(Debug, Clone, Copy)]
struct Window {
    start_ms: i64,
    first_ms: i64,
    last_ms: i64,
    seen: u32,
    suppressed: u64,
}

/// Counts denials per (source, event, reason) and interval: the first `burst` are written,
/// the rest become one summary line when the interval is over. Pure (time passed in).
#[derive(Debug)]
struct Summarizer {
    interval_ms: i64,
    burst: u32,
    max_keys: usize,
    windows: HashMap<SummaryKey, Window>,
}

impl Summarizer {
    fn new(o: &AuditOptions) -> Self {
        Self {
            interval_ms: o.summary_interval_ms.max(1),
            burst: o.summary_burst,
            max_keys: o.summary_sources.max(1),
            windows: HashMap::new(),
        }
    }

    /// Should this denial be written (`true`) or only counted? Also returns the summary of
    /// this key's previous window if it ended.
    fn admit(&mut self, key: SummaryKey, now: i64) -> (bool, Option<(SummaryKey, Window)>) {
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
    fn due(&mut self, now: i64, all: bool) -> Vec<(SummaryKey, Window)> {
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
fn source_of(peer: &str) -> String {
    match super::ratelimit::Source::parse(peer) {
        Some(s) => s.to_string(),
        None => peer.to_string(),
    }
}

// ------------------------------------------------------------------ the sink

struct Sink {
    file: Option<File>,
    path: Option<PathBuf>,
    node: String,
    key: Vec<u8>,
    seq: u64,
    /// The last line's `hmac`.
    prev: String,
    size: u64,
    started_ms: i64,
    opts: AuditOptions,
    summaries: Summarizer,
    last_sweep_ms: i64,
    /// A failed write left bytes that could not be cut back: mark them before the next line.
    torn_bytes: Option<u64>,
    last_error_log_ms: i64,
    last_reopen_ms: i64,
    compressing: Option<std::thread::JoinHandle<()>>,
    stats: Arc<AuditStats>,
}

/// Where audit events go.
pub struct Audit {
    sink: Arc<Mutex<Sink>>,
    pub path: Option<PathBuf>,
    log_allows: AtomicBool,
    pub stats: Arc<AuditStats>,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    let mut opts = OpenOptions::new();
    opts.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    opts.open(path)
}

/// `path` with `suffix` appended to its file name.
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// The archive `n` of a log (`FILE.n.gz`, 1 = newest).
pub fn archive_path(path: &Path, n: usize) -> PathBuf {
    with_suffix(path, &format!(".{n}.gz"))
}

/// A log being compressed into `FILE.1.gz` (left over if the broker stopped meanwhile).
fn staging_path(path: &Path) -> PathBuf {
    with_suffix(path, ".rotating")
}

/// Read the audit key at `path`, creating it (0600, random) if it does not exist.
pub fn load_or_create_key(path: &Path) -> std::io::Result<Vec<u8>> {
    match std::fs::read(path) {
        Ok(k) if k.len() == KEY_LEN => return Ok(k),
        Ok(k) if !k.is_empty() => {
            return Err(std::io::Error::other(format!(
                "{}: an audit key is {KEY_LEN} bytes, this file has {}",
                path.display(),
                k.len()
            )));
        }
        _ => {}
    }
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    let key: [u8; KEY_LEN] = rand::random();
    let tmp = with_suffix(path, ".tmp");
    {
        let mut opts = OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(&key)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(key.to_vec())
}

/// Read a key file for verification.
pub fn read_key(path: &Path) -> std::io::Result<Vec<u8>> {
    let k = std::fs::read(path)?;
    if k.len() != KEY_LEN {
        return Err(std::io::Error::other(format!(
            "{}: an audit key is {KEY_LEN} bytes, this file has {}",
            path.display(),
            k.len()
        )));
    }
    Ok(k)
}

/// Where a log's chain stands, from its tail.
#[derive(Debug, PartialEq)]
enum Tail {
    Empty,
    /// The last good line's seq and hmac, and how many bytes after it are torn.
    Chain {
        seq: u64,
        hmac: String,
        torn: u64,
    },
    /// Written by an earlier version (a SHA-256 chain without key).
    Legacy,
    Unreadable,
}

fn read_tail(path: &Path) -> std::io::Result<Tail> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Tail::Empty),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(Tail::Empty);
    }
    let start = len.saturating_sub(TAIL_BYTES);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.take(TAIL_BYTES).read_to_end(&mut buf)?;
    // Walk complete lines backwards to the last one that carries the chain.
    let mut end = match buf.iter().rposition(|&b| b == b'\n') {
        Some(i) => i,
        None => return Ok(Tail::Unreadable),
    };
    loop {
        let begin = buf[..end].iter().rposition(|&b| b == b'\n').map(|i| i + 1);
        // A line cut by the tail window is not trusted.
        if begin.is_none() && start > 0 {
            return Ok(Tail::Unreadable);
        }
        let b = begin.unwrap_or(0);
        let line = &buf[b..end];
        if !line.iter().all(u8::is_ascii_whitespace)
            && let Ok(v) = serde_json::from_slice::<Value>(line)
        {
            let seq = v.get("seq").and_then(Value::as_u64);
            return Ok(match (seq, v.get("hmac").and_then(Value::as_str)) {
                (Some(seq), Some(h)) => Tail::Chain {
                    seq,
                    hmac: h.to_string(),
                    torn: (buf.len() - end - 1) as u64,
                },
                _ if v.get("prev_hash").is_some() => Tail::Legacy,
                _ => Tail::Unreadable,
            });
        }
        match begin {
            Some(b) if b > 0 => end = b - 1,
            _ => return Ok(Tail::Unreadable),
        }
    }
}

/// The `ts` of a log's first line (ms), for age-based rotation.
fn first_line_ms(path: &Path) -> Option<i64> {
    let f = File::open(path).ok()?;
    let mut buf = Vec::new();
    f.take(64 * 1024).read_to_end(&mut buf).ok()?;
    let end = buf.iter().position(|&b| b == b'\n')?;
    let v: Value = serde_json::from_slice(&buf[..end]).ok()?;
    let ts = humantime::parse_rfc3339(v.get("ts")?.as_str()?).ok()?;
    ts.duration_since(SystemTime::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as i64)
}

/// Shift the archives, compress `staging` into `FILE.1.gz`, keep at most `keep`.
fn compress_archives(path: &Path, staging: &Path, keep: usize) {
    let result = (|| -> std::io::Result<()> {
        if keep == 0 {
            return std::fs::remove_file(staging);
        }
        let _ = std::fs::remove_file(archive_path(path, keep));
        for n in (1..keep).rev() {
            let from = archive_path(path, n);
            if from.exists() {
                std::fs::rename(&from, archive_path(path, n + 1))?;
            }
        }
        let tmp = with_suffix(&archive_path(path, 1), ".tmp");
        {
            let mut input = File::open(staging)?;
            let mut opts = OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let out = opts.open(&tmp)?;
            let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
            std::io::copy(&mut input, &mut gz)?;
            gz.finish()?.sync_all()?;
        }
        std::fs::rename(&tmp, archive_path(path, 1))?;
        std::fs::remove_file(staging)
    })();
    if let Err(e) = result {
        tracing::error!(error = %e, file = %staging.display(), "cannot compress a rotated audit log");
    }
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

// ------------------------------------------------------------------ verification

/// What [`verify_files`] found.
#[derive(Debug, Default, PartialEq)]
pub struct VerifyReport {
    /// Each file checked (oldest first) with its line count.
    pub files: Vec<(PathBuf, u64)>,
    pub lines: u64,
    pub torn_marked: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
}

/// Where verification failed.
#[derive(Debug, PartialEq)]
pub struct VerifyError {
    pub file: PathBuf,
    /// 1-based line number in that file.
    pub line: u64,
    pub why: String,
}

impl std::fmt::Display for VerifyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} line {}: {}",
            self.file.display(),
            self.line,
            self.why
        )
    }
}

/// A line's chain members, if its `hmac` is right.
fn check_line(line: &str, key: &[u8]) -> Result<(u64, String, String, String), String> {
    const TAG: &str = ",\"hmac\":\"";
    let at = line
        .rfind(TAG)
        .ok_or_else(|| "no hmac member".to_string())?;
    let mac = line[at + TAG.len()..]
        .strip_suffix("\"}")
        .ok_or_else(|| "hmac is not the last member".to_string())?;
    let body = format!("{}}}", &line[..at]);
    if hmac_hex(key, body.as_bytes()) != mac {
        return Err("hmac does not match (edited, or another key)".into());
    }
    let v: Value = serde_json::from_str(line).map_err(|e| format!("not JSON: {e}"))?;
    let seq = v
        .get("seq")
        .and_then(Value::as_u64)
        .ok_or_else(|| "no seq".to_string())?;
    let prev = v
        .get("prev")
        .and_then(Value::as_str)
        .ok_or_else(|| "no prev".to_string())?;
    let event = v.get("event").and_then(Value::as_str).unwrap_or("");
    Ok((seq, prev.to_string(), mac.to_string(), event.to_string()))
}

/// Chain state carried from one file to the next.
#[derive(Debug, Default)]
struct Chain {
    /// (seq, hmac) of the last good line; `None` before the first line (its `prev` is taken
    /// as given: older archives may have been removed).
    last: Option<(u64, String)>,
}

fn verify_text(
    text: &str,
    key: &[u8],
    chain: &mut Chain,
    report: &mut VerifyReport,
) -> Result<u64, (u64, String)> {
    let mut n = 0u64;
    let mut lines = 0u64;
    // A line that failed, forgiven if an `audit.torn_tail` marker follows it.
    let mut pending: Option<(u64, String)> = None;
    let mut rest = text;
    while !rest.is_empty() {
        let (line, complete) = match rest.find('\n') {
            Some(i) => {
                let l = &rest[..i];
                rest = &rest[i + 1..];
                (l, true)
            }
            None => {
                let l = rest;
                rest = "";
                (l, false)
            }
        };
        n += 1;
        if line.trim().is_empty() {
            continue;
        }
        if !complete {
            return Err((
                n,
                "the last line is torn (not yet marked: the broker marks it when it opens the log)"
                    .into(),
            ));
        }
        match check_line(line, key) {
            Ok((seq, prev, mac, event)) => {
                if let Some((last_seq, last_mac)) = &chain.last {
                    if prev != *last_mac {
                        return Err(match pending {
                            Some(p) => p,
                            None => (n, "prev does not match the previous line's hmac (a line was removed or reordered)".into()),
                        });
                    }
                    if seq != last_seq + 1 {
                        return Err((n, format!("seq {seq} does not follow {last_seq}")));
                    }
                }
                if let Some(p) = pending.take() {
                    if event != "audit.torn_tail" {
                        return Err(p);
                    }
                    report.torn_marked += 1;
                } else if event == "audit.torn_tail" {
                    report.torn_marked += 1;
                }
                report.first_seq.get_or_insert(seq);
                report.last_seq = Some(seq);
                chain.last = Some((seq, mac));
                lines += 1;
            }
            Err(why) => {
                if pending.is_some() {
                    return Err(pending.unwrap_or((n, why)));
                }
                pending = Some((n, why));
            }
        }
    }
    match pending {
        Some(p) => Err(p),
        None => Ok(lines),
    }
}

/// The files of a log, oldest first: `FILE.N.gz` .. `FILE.1.gz`, `FILE.rotating`, `FILE`.
pub fn log_files(path: &Path) -> Vec<PathBuf> {
    let mut n = 1;
    while archive_path(path, n).exists() {
        n += 1;
    }
    let mut files: Vec<PathBuf> = (1..n).rev().map(|i| archive_path(path, i)).collect();
    let staging = staging_path(path);
    if staging.exists() {
        files.push(staging);
    }
    files.push(path.to_path_buf());
    files
}

/// Verify a log and its rotated archives with `key`: every line's hmac, the seq and `prev`
/// links within and across files; a torn line is accepted only when an `audit.torn_tail`
/// marker follows it.
pub fn verify_files(path: &Path, key: &[u8]) -> Result<VerifyReport, VerifyError> {
    let mut report = VerifyReport::default();
    let mut chain = Chain::default();
    for file in log_files(path) {
        let fail = |line, why: String| VerifyError {
            file: file.clone(),
            line,
            why,
        };
        let bytes = std::fs::read(&file).map_err(|e| fail(0, format!("cannot read: {e}")))?;
        let bytes = if file.extension().is_some_and(|e| e == "gz") {
            let mut out = Vec::new();
            flate2::read::MultiGzDecoder::new(&bytes[..])
                .read_to_end(&mut out)
                .map_err(|e| fail(0, format!("cannot decompress: {e}")))?;
            out
        } else {
            bytes
        };
        let text = String::from_utf8(bytes).map_err(|e| fail(0, format!("not UTF-8: {e}")))?;
        let lines =
            verify_text(&text, key, &mut chain, &mut report).map_err(|(n, why)| fail(n, why))?;
        report.lines += lines;
        report.files.push((file, lines));
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    const T0: i64 = 1_780_000_000_000;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("keybus-audit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn opts() -> AuditOptions {
        AuditOptions {
            ticker: false,
            ..Default::default()
        }
    }

    fn deny(reason: &str, peer: Option<&str>) -> Event {
        Event {
            event: "authz",
            allow: false,
            reason: reason.into(),
            entity: Some("x".repeat(2000)),
            peer: peer.map(str::to_string),
            ..Default::default()
        }
    }

    fn lines(path: &Path) -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }

    #[test]
    fn lines_chain_and_survive_reopen() {
        let d = dir("reopen");
        let (path, key_path) = (d.join("audit.jsonl"), d.join("audit-key"));
        {
            let a = Audit::open(&path, Some(&key_path), opts()).unwrap();
            a.record(deny("no_grant", None));
            a.record(deny("explicit_deny", None));
        }
        {
            let a = Audit::open(&path, Some(&key_path), opts()).unwrap();
            a.record(deny("no_principal", None));
            a.set_log_allows(false);
            a.record(Event {
                allow: true,
                ..deny("ok", None)
            });
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let key = read_key(&key_path).unwrap();
        let r = verify_files(&path, &key).unwrap();
        assert_eq!((r.lines, r.first_seq, r.last_seq), (3, Some(1), Some(3)));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.lines().all(|l| l.len() < 1400), "fields are capped");
        // An edited line is detected ...
        std::fs::write(&path, text.replacen("no_grant", "ok", 1)).unwrap();
        let e = verify_files(&path, &key).unwrap_err();
        assert_eq!(e.line, 1, "{e}");
        // ... and so is a line removed ...
        let mut ls: Vec<&str> = text.lines().collect();
        ls.remove(1);
        std::fs::write(&path, ls.join("\n") + "\n").unwrap();
        assert_eq!(verify_files(&path, &key).unwrap_err().line, 2);
        // ... and a chain recomputed without the key.
        let other = vec![7u8; KEY_LEN];
        std::fs::write(&path, &text).unwrap();
        assert!(verify_files(&path, &other).is_err());
        assert!(verify_files(&path, &key).is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_chain_rebuilt_without_the_key_is_detected() {
        // What an attacker could do with the old SHA-256 chain: edit and recompute.
        let d = dir("forge");
        let (path, key_path) = (d.join("audit.jsonl"), d.join("audit-key"));
        {
            let a = Audit::open(&path, Some(&key_path), opts()).unwrap();
            a.record(deny("no_grant", None));
            a.record(deny("no_grant", None));
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let guess = vec![0u8; KEY_LEN];
        let mut prev = String::new();
        let mut forged = String::new();
        for line in text.lines() {
            let mut v: Map<String, Value> = serde_json::from_str(line).unwrap();
            v.remove("hmac");
            v.insert("prev".into(), json!(prev));
            v.insert("reason".into(), json!("ok"));
            let body = Value::Object(v).to_string();
            prev = hmac_hex(&guess, body.as_bytes());
            forged += &format!(
                "{},\"hmac\":\"{prev}\"}}\n",
                body.strip_suffix('}').unwrap()
            );
        }
        std::fs::write(&path, forged).unwrap();
        assert!(
            verify_files(&path, &guess).is_ok(),
            "consistent with its own key"
        );
        let key = read_key(&key_path).unwrap();
        assert_eq!(verify_files(&path, &key).unwrap_err().line, 1);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_torn_tail_is_marked_at_open_and_verifies() {
        let d = dir("torn");
        let (path, key_path) = (d.join("audit.jsonl"), d.join("audit-key"));
        {
            let a = Audit::open(&path, Some(&key_path), opts()).unwrap();
            a.record(deny("no_grant", None));
            a.record(deny("no_grant", None));
        }
        // A full disk cut the next line short.
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(br#"{"ts":"2026-12-03T00:00:00Z","event":"authz","decis"#)
            .unwrap();
        drop(f);
        let key = read_key(&key_path).unwrap();
        assert!(verify_files(&path, &key).is_err(), "not yet marked");
        {
            let a = Audit::open(&path, Some(&key_path), opts()).unwrap();
            a.record(deny("after", None));
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let ls: Vec<&str> = text.lines().collect();
        assert_eq!(ls.len(), 5, "{text}");
        assert!(
            ls[2].ends_with("decis"),
            "the torn bytes stay, on their own line"
        );
        let marker: Value = serde_json::from_str(ls[3]).unwrap();
        assert_eq!(marker["event"], "audit.torn_tail");
        assert_eq!(marker["seq"], 3);
        assert_eq!(marker["after_seq"], 2);
        let r = verify_files(&path, &key).unwrap();
        assert_eq!((r.lines, r.torn_marked), (4, 1));
        // Junk without a marker is not accepted.
        let mut ls2 = ls.clone();
        ls2.remove(3);
        std::fs::write(&path, ls2.join("\n") + "\n").unwrap();
        assert!(verify_files(&path, &key).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_failed_write_does_not_advance_the_chain() {
        let d = dir("fail");
        let (path, key_path) = (d.join("audit.jsonl"), d.join("audit-key"));
        let a = Audit::open(&path, Some(&key_path), opts()).unwrap();
        a.record(deny("one", None));
        // Swap the file for a read-only handle: every write fails.
        {
            let mut s = a.sink.lock().unwrap();
            s.file = Some(File::open(&path).unwrap());
        }
        a.record(deny("lost", None));
        assert_eq!(a.stats.write_errors.load(Ordering::Relaxed), 1);
        {
            let mut s = a.sink.lock().unwrap();
            assert_eq!(s.seq, 1, "the chain did not advance");
            s.file = Some(open_append(&path).unwrap());
        }
        a.record(deny("two", None));
        drop(a);
        let key = read_key(&key_path).unwrap();
        assert_eq!(verify_files(&path, &key).unwrap().lines, 2);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn repeated_denials_are_summarised() {
        let d = dir("summary");
        let (path, key_path) = (d.join("audit.jsonl"), d.join("audit-key"));
        let a = Audit::open(&path, Some(&key_path), opts()).unwrap();
        // 1,000 refusals in 5 s from one address (several ports), one from another.
        for i in 0..1000 {
            let peer = format!("203.0.113.9:{}", 1000 + i % 50);
            a.record_at(deny("InvalidSignature", Some(&peer)), T0 + i * 5);
        }
        a.record_at(deny("InvalidSignature", Some("203.0.113.10:1")), T0 + 10);
        // Another /64 source is one key too.
        for i in 0..10 {
            let peer = format!("[2001:db8::{i:x}]:443");
            a.record_at(deny("InvalidSignature", Some(&peer)), T0 + i);
        }
        a.record_at(deny("no_grant", None), T0 + 20);
        let ls = lines(&path);
        assert_eq!(ls.len(), 3 + 1 + 3 + 1, "before the interval ends");
        a.flush_summaries_at(T0 + 10_000);
        let ls = lines(&path);
        let sums: Vec<&Value> = ls.iter().filter(|v| v["summary"] == true).collect();
        assert_eq!(sums.len(), 2);
        let by = |peer: &str| *sums.iter().find(|v| v["conn"]["peer"] == peer).unwrap();
        let v4 = by("203.0.113.9");
        assert_eq!(v4["count"], 997);
        assert_eq!(v4["decision"], "deny");
        assert_eq!(v4["reason"], "InvalidSignature");
        assert!(v4["first"].as_str().is_some() && v4["last"].as_str().is_some());
        assert_eq!(by("2001:db8::/64")["count"], 7);
        assert_eq!(a.stats.summarised.load(Ordering::Relaxed), 1004);
        // A new interval writes the first few again.
        a.record_at(deny("InvalidSignature", Some("203.0.113.9:1")), T0 + 20_000);
        assert_eq!(lines(&path).len(), 11);
        drop(a);
        let key = read_key(&key_path).unwrap();
        assert_eq!(verify_files(&path, &key).unwrap().lines, 11);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn many_sources_are_bounded() {
        let mut s = Summarizer::new(&AuditOptions {
            summary_sources: 10,
            ..opts()
        });
        let mut written = 0;
        for i in 0..10_000 {
            let key = SummaryKey {
                event: "http.token",
                reason: "InvalidSignature".into(),
                source: format!("10.0.{}.{}", i / 256, i % 256),
                principal: String::new(),
            };
            if s.admit(key, T0).0 {
                written += 1;
            }
        }
        assert_eq!(written, 10 + 3, "10 sources, then 3 under '*'");
        assert!(s.windows.len() <= 11);
        let due = s.due(T0 + 10_000, false);
        assert_eq!(due.len(), 1);
        assert_eq!(due[0].0.source, "*");
        assert_eq!(due[0].1.suppressed, 10_000 - 13);
    }

    #[test]
    fn rotation_compresses_and_continues_the_chain() {
        let d = dir("rotate");
        let (path, key_path) = (d.join("audit.jsonl"), d.join("audit-key"));
        let o = AuditOptions {
            max_bytes: 4096,
            keep: 2,
            ..opts()
        };
        {
            let a = Audit::open(&path, Some(&key_path), o.clone()).unwrap();
            for i in 0..40 {
                a.record_at(deny(&format!("r{i}"), None), T0 + i);
            }
        }
        assert!(archive_path(&path, 1).exists());
        assert!(archive_path(&path, 2).exists());
        assert!(!archive_path(&path, 3).exists(), "at most keep archives");
        assert!(std::fs::metadata(&path).unwrap().len() < 4096 + 1500);
        let key = read_key(&key_path).unwrap();
        let r = verify_files(&path, &key).unwrap();
        assert_eq!(r.files.len(), 3);
        assert_eq!(
            r.last_seq,
            Some(lines(&path).last().unwrap()["seq"].as_u64().unwrap())
        );
        assert!(r.first_seq > Some(1), "the oldest archives were removed");
        let first: Value = serde_json::from_str(
            std::fs::read_to_string(&path)
                .unwrap()
                .lines()
                .next()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(first["event"], "audit.rotate");
        // Age rotates too.
        {
            let a = Audit::open(&path, Some(&key_path), o).unwrap();
            let before = a.stats.rotations.load(Ordering::Relaxed);
            a.record_at(deny("old", None), now_ms() + 2 * 24 * 3600 * 1000);
            assert_eq!(a.stats.rotations.load(Ordering::Relaxed), before + 1);
        }
        assert!(verify_files(&path, &key).is_ok());
        // A byte changed in an archive is found.
        let gz = std::fs::read(archive_path(&path, 1)).unwrap();
        let mut text = String::new();
        flate2::read::MultiGzDecoder::new(&gz[..])
            .read_to_string(&mut text)
            .unwrap();
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(text.replacen("\"r", "\"R", 1).as_bytes())
            .unwrap();
        std::fs::write(archive_path(&path, 1), enc.finish().unwrap()).unwrap();
        let e = verify_files(&path, &key).unwrap_err();
        assert_eq!(e.file, archive_path(&path, 1));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_legacy_log_is_moved_aside() {
        let d = dir("legacy");
        let path = d.join("audit.jsonl");
        std::fs::write(
            &path,
            "{\"seq\":1,\"prev_hash\":\"\",\"event\":\"authz\"}\n",
        )
        .unwrap();
        let a = Audit::open(&path, Some(&d.join("audit-key")), opts()).unwrap();
        a.record(deny("x", None));
        drop(a);
        let ls = lines(&path);
        assert_eq!(ls[0]["event"], "audit.chain_start");
        assert_eq!(ls.len(), 2);
        let key = read_key(&d.join("audit-key")).unwrap();
        assert!(verify_files(&path, &key).is_ok());
        let _ = std::fs::remove_dir_all(&d);
    }
}
