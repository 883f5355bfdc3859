//! Audit log tests: the chain across reopen and rotation, torn tails, failed writes,
//! summaries and their bounds, a rebuilt chain without the key, the writer's queue and its
//! bound, batches cut short.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, mpsc};
use std::time::Duration;

use serde_json::{Map, Value, json};

use super::batch::{Batch, Chain};
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
    a.flush();
    // Swap the file for a read-only handle: every write fails.
    let read_only = File::open(&path).unwrap();
    a.on_writer(move |s| s.file = Some(read_only));
    a.record(deny("lost", None));
    a.flush();
    assert_eq!(a.stats.write_errors.load(Ordering::Relaxed), 1);
    let (seq_tx, seq_rx) = mpsc::channel();
    let p = path.clone();
    a.on_writer(move |s| {
        let _ = seq_tx.send(s.chain.seq);
        s.file = open_append(&p).ok();
    });
    assert_eq!(seq_rx.recv().unwrap(), 1, "the chain did not advance");
    a.record(deny("two", None));
    drop(a);
    let key = read_key(&key_path).unwrap();
    assert_eq!(verify_files(&path, &key).unwrap().lines, 2);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_cut_short_batch_chains_only_its_whole_lines() {
    let key = vec![1u8; KEY_LEN];
    let mut chain = Chain {
        seq: 7,
        prev: "p".into(),
    };
    let mut batch = Batch::default();
    for i in 0..3 {
        let mut obj = Map::new();
        obj.insert("n".into(), json!(i));
        batch.push(obj, &key, &chain);
    }
    let text = String::from_utf8(batch.bytes().to_vec()).unwrap();
    let ls: Vec<&str> = text.lines().collect();
    let second: Value = serde_json::from_str(ls[1]).unwrap();
    assert_eq!(second["seq"], 9);
    let first_end = ls[0].len() + 1;
    let second_end = first_end + ls[1].len() + 1;
    // A write that stopped 5 bytes into the third line.
    let r = batch.reached((second_end + 5) as u64);
    assert_eq!(
        (r.lines, r.bytes, r.torn, r.lost),
        (2, second_end as u64, 5, 1)
    );
    assert_eq!(batch.reached(0).lines, 0);
    assert_eq!(batch.reached(u64::MAX).lost, 0);
    batch.commit(r.lines, &mut chain);
    assert!(batch.is_empty());
    assert_eq!(chain.seq, 9);
    assert_eq!(chain.prev, second["hmac"].as_str().unwrap());
    // The next line follows the second, not the lost third.
    batch.push(Map::new(), &key, &chain);
    let next: Value = serde_json::from_slice(batch.bytes()).unwrap();
    assert_eq!(
        (next["seq"].clone(), next["prev"].clone()),
        (json!(10), second["hmac"].clone())
    );
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
    a.flush();
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
    a.flush();
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
        a.flush();
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

fn allow(reason: &str) -> Event {
    Event {
        allow: true,
        ..deny(reason, None)
    }
}

#[test]
fn a_full_queue_drops_allowed_events_and_counts_them_but_never_a_denial() {
    let d = dir("full");
    let (path, key_path) = (d.join("audit.jsonl"), d.join("audit-key"));
    let o = AuditOptions {
        queue_depth: 4,
        ..opts()
    };
    let a = Arc::new(Audit::open(&path, Some(&key_path), o).unwrap());
    // Hold the writer until told.
    let (held_tx, held) = mpsc::channel();
    let (release, released) = mpsc::channel::<()>();
    a.on_writer(move |_| {
        let _ = held_tx.send(());
        let _ = released.recv();
    });
    held.recv().unwrap();
    for i in 0..10 {
        a.record(allow(&format!("a{i}")));
    }
    assert_eq!(
        a.stats.dropped.load(Ordering::Relaxed),
        6,
        "4 fit the queue"
    );
    // Denials wait for room instead.
    let (started_tx, started) = mpsc::channel();
    let denier = std::thread::spawn({
        let a = a.clone();
        move || {
            let _ = started_tx.send(());
            for i in 0..10 {
                a.record(deny(&format!("d{i}"), None));
            }
        }
    });
    started.recv().unwrap();
    release.send(()).unwrap();
    denier.join().unwrap();
    a.flush();
    let reasons: Vec<String> = lines(&path)
        .iter()
        .map(|v| v["reason"].as_str().unwrap().to_string())
        .collect();
    let want: Vec<String> = (0..4)
        .map(|i| format!("a{i}"))
        .chain((0..10).map(|i| format!("d{i}")))
        .collect();
    assert_eq!(reasons, want);
    assert_eq!(a.stats.dropped.load(Ordering::Relaxed), 6);
    assert_eq!(a.stats.written.load(Ordering::Relaxed), 14);
    let key = read_key(&key_path).unwrap();
    assert_eq!(verify_files(&path, &key).unwrap().lines, 14);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn lines_from_several_threads_form_one_chain() {
    let d = dir("threads");
    let (path, key_path) = (d.join("audit.jsonl"), d.join("audit-key"));
    let a = Arc::new(Audit::open(&path, Some(&key_path), opts()).unwrap());
    let workers: Vec<_> = (0..8)
        .map(|t| {
            let a = a.clone();
            std::thread::spawn(move || {
                for i in 0..250 {
                    let reason = format!("t{t}-{i}");
                    if i % 2 == 0 {
                        a.record(allow(&reason));
                    } else {
                        a.record(deny(&reason, None));
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().unwrap();
    }
    a.flush();
    let key = read_key(&key_path).unwrap();
    let r = verify_files(&path, &key).unwrap();
    assert_eq!(
        (r.lines, r.first_seq, r.last_seq),
        (2000, Some(1), Some(2000))
    );
    let mut reasons: Vec<String> = lines(&path)
        .iter()
        .map(|v| v["reason"].as_str().unwrap().to_string())
        .collect();
    reasons.sort();
    reasons.dedup();
    assert_eq!(reasons.len(), 2000, "every line once");
    // Each thread's lines keep their order.
    for t in 0..8 {
        let mine: Vec<usize> = lines(&path)
            .iter()
            .filter_map(|v| {
                v["reason"]
                    .as_str()?
                    .strip_prefix(&format!("t{t}-"))?
                    .parse()
                    .ok()
            })
            .collect();
        assert_eq!(mine, (0..250).collect::<Vec<_>>());
    }
    assert_eq!(a.stats.dropped.load(Ordering::Relaxed), 0);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn the_writer_sweeps_due_summaries_by_the_clock() {
    let d = dir("ticker");
    let (path, key_path) = (d.join("audit.jsonl"), d.join("audit-key"));
    let o = AuditOptions {
        ticker: true,
        summary_interval_ms: 20,
        ..opts()
    };
    let a = Audit::open(&path, Some(&key_path), o).unwrap();
    for _ in 0..5 {
        a.record(deny("InvalidSignature", Some("198.51.100.7:5")));
    }
    // No more events: only the writer's clock can write the summary.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let summary = loop {
        a.flush();
        if let Some(v) = lines(&path).into_iter().find(|v| v["summary"] == true) {
            break v;
        }
        assert!(std::time::Instant::now() < deadline, "no summary written");
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(summary["count"], 2);
    assert_eq!(lines(&path).len(), 4);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn a_disabled_log_has_no_writer() {
    let a = Audit::disabled();
    a.record(deny("x", None));
    a.flush();
    a.flush_summaries_at(T0);
    assert_eq!(a.stats.written.load(Ordering::Relaxed), 0);
    assert!(a.path.is_none());
}
