//! Audit log tests: the chain across reopen and rotation, torn tails, failed writes,
//! summaries and their bounds, a rebuilt chain without the key.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use serde_json::{Map, Value, json};

use super::files::open_append;
use super::line::{hmac_hex, now_ms};
use super::summary::{Summarizer, SummaryKey};
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
