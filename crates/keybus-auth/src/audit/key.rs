//! The chain's key: 32 random bytes in `<data-dir>/audit-key` (0600), outside the log.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use super::files::with_suffix;

use super::KEY_LEN;

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
