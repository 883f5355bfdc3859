//! Verification (`keybus audit verify`): every line's `hmac`, the `seq` and `prev` links within
//! and across a log's files, torn lines only where an `audit.torn_tail` marker follows.

use std::io::Read;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::files::log_files;
use super::line::hmac_hex;

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
