//! The audit log (identity reference §7.2): one JSON object per line, UTC RFC 3339 times, a
//! sequence number and a SHA-256 hash chain (`prev_hash`) for tamper evidence. Every
//! authentication and authorisation decision goes here; never a token, key or message body.
//!
//! Lines are written and flushed under a mutex, not fsynced: the audit log records decisions
//! and must not slow the message path (it is only written at token, attach and management
//! time, never per message).

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

/// Longest text we record in one field; longer values are cut (an attacker-chosen entity
/// name or subject must not bloat the log).
const MAX_FIELD: usize = 512;

struct Sink {
    file: Option<File>,
    seq: u64,
    prev_hash: String,
}

/// Where audit events go.
pub struct Audit {
    sink: Mutex<Sink>,
    pub path: Option<PathBuf>,
    node: String,
    log_allows: std::sync::atomic::AtomicBool,
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
    pub conn: Option<String>,
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

fn now_rfc3339() -> String {
    humantime::format_rfc3339_millis(std::time::SystemTime::now()).to_string()
}

impl Audit {
    /// An audit log that only goes to tracing (no file).
    pub fn disabled() -> Self {
        Self {
            sink: Mutex::new(Sink {
                file: None,
                seq: 0,
                prev_hash: String::new(),
            }),
            path: None,
            node: node_name(),
            log_allows: true.into(),
        }
    }

    /// Append to `path` (created 0600), continuing the sequence and hash chain of what is
    /// already there.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        let (mut seq, mut prev_hash) = (0u64, String::new());
        if let Ok(f) = File::open(path) {
            for line in BufReader::new(f).lines() {
                let line = line?;
                if line.trim().is_empty() {
                    continue;
                }
                seq += 1;
                prev_hash = format!("{:x}", Sha256::digest(line.as_bytes()));
            }
        }
        let mut opts = OpenOptions::new();
        opts.create(true).append(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let file = opts.open(path)?;
        Ok(Self {
            sink: Mutex::new(Sink {
                file: Some(file),
                seq,
                prev_hash,
            }),
            path: Some(path.to_path_buf()),
            node: node_name(),
            log_allows: true.into(),
        })
    }

    pub fn set_log_allows(&self, on: bool) {
        self.log_allows
            .store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Record one event (allowed ones only when `log_allows`).
    pub fn record(&self, ev: Event) {
        if ev.allow && !self.log_allows.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let mut obj = Map::new();
        obj.insert("ts".into(), json!(now_rfc3339()));
        obj.insert("node".into(), json!(self.node));
        obj.insert("event".into(), json!(ev.event));
        obj.insert(
            "decision".into(),
            json!(if ev.allow { "allow" } else { "deny" }),
        );
        obj.insert("reason".into(), json!(cut(&ev.reason)));
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
            obj.insert(k.into(), v);
        }
        let decision = if ev.allow { "allow" } else { "deny" };
        tracing::debug!(target: "keybus::audit", event = ev.event, decision, reason = %ev.reason);
        let Ok(mut sink) = self.sink.lock() else {
            return;
        };
        sink.seq += 1;
        obj.insert("seq".into(), json!(sink.seq));
        obj.insert("prev_hash".into(), json!(sink.prev_hash));
        let line = Value::Object(obj).to_string();
        sink.prev_hash = format!("{:x}", Sha256::digest(line.as_bytes()));
        if let Some(f) = sink.file.as_mut()
            && let Err(e) = f
                .write_all(line.as_bytes())
                .and_then(|()| f.write_all(b"\n"))
        {
            tracing::error!(error = %e, "cannot write the audit log");
        }
    }
}

fn node_name() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| "keybus".into())
}

/// Check a log's hash chain; returns the number of lines, or the first bad line number.
pub fn verify_chain(text: &str) -> Result<u64, u64> {
    let mut prev = String::new();
    let mut n = 0;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        n += 1;
        let v: Value = serde_json::from_str(line).map_err(|_| n)?;
        if v.get("prev_hash").and_then(Value::as_str) != Some(prev.as_str())
            || v.get("seq").and_then(Value::as_u64) != Some(n)
        {
            return Err(n);
        }
        prev = format!("{:x}", Sha256::digest(line.as_bytes()));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_chain_and_survive_reopen() {
        let dir = std::env::temp_dir().join(format!("keybus-audit-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("audit.jsonl");
        let ev = |reason: &str| Event {
            event: "authz",
            allow: false,
            reason: reason.into(),
            entity: Some("x".repeat(2000)),
            ..Default::default()
        };
        {
            let a = Audit::open(&path).unwrap_or_else(|e| panic!("{e}"));
            a.record(ev("no_grant"));
            a.record(ev("explicit_deny"));
        }
        {
            let a = Audit::open(&path).unwrap_or_else(|e| panic!("{e}"));
            a.record(ev("no_principal"));
            a.set_log_allows(false);
            a.record(Event {
                allow: true,
                ..ev("ok")
            });
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        assert_eq!(verify_chain(&text), Ok(3));
        assert!(text.lines().all(|l| l.len() < 1200), "fields are capped");
        let tampered = text.replacen("no_grant", "ok", 1);
        assert_eq!(verify_chain(&tampered), Err(2));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
