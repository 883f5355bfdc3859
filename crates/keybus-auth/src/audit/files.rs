//! The log's files: opening for append (0600), archive and staging names, reading where the
//! chain stands from a file's tail, the first line's age, and compressing rotated files into
//! `FILE.N.gz` archives.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::Value;

use super::TAIL_BYTES;

pub(super) fn open_append(path: &Path) -> std::io::Result<File> {
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
pub(super) fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// The archive `n` of a log (`FILE.n.gz`, 1 = newest).
pub fn archive_path(path: &Path, n: usize) -> PathBuf {
    with_suffix(path, &format!(".{n}.gz"))
}

/// A log being compressed into `FILE.1.gz` (left over if the broker stopped meanwhile).
pub(super) fn staging_path(path: &Path) -> PathBuf {
    with_suffix(path, ".rotating")
}

/// Where a log's chain stands, from its tail.
#[derive(Debug, PartialEq)]
pub(super) enum Tail {
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

pub(super) fn read_tail(path: &Path) -> std::io::Result<Tail> {
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
pub(super) fn first_line_ms(path: &Path) -> Option<i64> {
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
pub(super) fn compress_archives(path: &Path, staging: &Path, keep: usize) {
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
