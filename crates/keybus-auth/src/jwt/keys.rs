//! Each OIDC issuer's cached signing keys, and their refresh: read from a `jwks_file` or fetched
//! ([`super::fetch`]) by a background task, never by the validating call. A refresh runs at most
//! once per minute and issuer (one at a time); fetched sets live between 5 minutes and a day
//! (the server's `Cache-Control: max-age`, clamped); a failed refresh keeps the last good keys.

use std::sync::{Arc, Mutex};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use serde_json::Value;

use super::fetch::fetch_keys;
use crate::policy::IssuerConfig;

/// Refresh a JWKS at most this often when an unknown `kid` shows up.
const REFRESH_EVERY_MS: i64 = 60_000;
/// Cache lifetime bounds for fetched key sets.
pub(super) const MIN_CACHE_MS: i64 = 5 * 60_000;
const MAX_CACHE_MS: i64 = 24 * 3_600_000;

/// One issuer's cached keys.
#[derive(Default)]
pub(super) struct KeyCache {
    keys: Vec<Jwk>,
    /// When the keys were last loaded (ms), and until when they count as fresh.
    loaded_at_ms: i64,
    fresh_until_ms: i64,
    /// Last refresh attempt (ms), for rate limiting; and whether one is running.
    last_try_ms: i64,
    refreshing: bool,
}

impl KeyCache {
    /// The keys to validate with now (none once they are a day past their last load), and
    /// whether they are stale (a background refresh is due).
    pub(super) fn keys_now(&self) -> (Vec<Jwk>, bool) {
        let now = now_ms_system();
        let stale = self.fresh_until_ms < now;
        let lost = self.loaded_at_ms + MAX_CACHE_MS < now && self.loaded_at_ms > 0;
        let keys = if lost { Vec::new() } else { self.keys.clone() };
        (keys, stale)
    }
}

pub(super) fn now_ms_system() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Load an issuer's keys: from its file now, or from the network in the background. `initial`
/// ignores the rate limit.
pub(super) fn refresh(entry: IssuerConfig, cache: Arc<Mutex<KeyCache>>, initial: bool) {
    let now = now_ms_system();
    {
        let Ok(mut c) = cache.lock() else { return };
        // `refreshing` guards one fetch at a time; a fetch ends within its timeout, so a flag
        // older than that belongs to a task that died and is ignored.
        let in_flight = c.refreshing && now - c.last_try_ms < 2 * REFRESH_EVERY_MS;
        if in_flight || (!initial && now - c.last_try_ms < REFRESH_EVERY_MS) {
            return;
        }
        c.last_try_ms = now;
        if entry.jwks_file.is_some() && initial {
            // Read at configure time, so the keys are there before the first token.
            load_file(&entry, &mut c);
            return;
        }
        c.refreshing = true;
    }
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        // No runtime (tests, tools): a file is read now, URLs wait for the next configure.
        if let Ok(mut c) = cache.lock() {
            c.refreshing = false;
            if entry.jwks_file.is_some() {
                load_file(&entry, &mut c);
            }
        }
        return;
    };
    if entry.jwks_file.is_some() {
        // Never block the validating (connection) task on the file system.
        rt.spawn_blocking(move || {
            if let Ok(mut c) = cache.lock() {
                c.refreshing = false;
                load_file(&entry, &mut c);
            }
        });
        return;
    }
    rt.spawn(async move {
        let result = fetch_keys(&entry).await;
        let Ok(mut c) = cache.lock() else { return };
        c.refreshing = false;
        match result {
            Ok((keys, max_age_ms)) => {
                c.keys = keys;
                let now = now_ms_system();
                c.loaded_at_ms = now;
                c.fresh_until_ms = now + max_age_ms.clamp(MIN_CACHE_MS, MAX_CACHE_MS);
                tracing::info!(issuer = %entry.id, keys = c.keys.len(), "issuer keys loaded");
            }
            Err(e) => {
                tracing::warn!(issuer = %entry.id, error = %e, "cannot fetch the issuer's keys; keeping the last good ones")
            }
        }
    });
}

/// Read an issuer's `jwks_file` into its cache (keeping the old keys if that fails).
fn load_file(entry: &IssuerConfig, c: &mut KeyCache) {
    let Some(path) = &entry.jwks_file else { return };
    match std::fs::read(path)
        .map_err(|e| e.to_string())
        .and_then(|b| parse_jwks(&b))
    {
        Ok(keys) => {
            let now = now_ms_system();
            c.keys = keys;
            c.loaded_at_ms = now;
            c.fresh_until_ms = now + MIN_CACHE_MS;
        }
        Err(e) => {
            tracing::warn!(issuer = %entry.id, path = %path.display(), error = %e, "cannot read the issuer's JWKS file; keeping the last good keys")
        }
    }
}

pub(super) fn parse_jwks(bytes: &[u8]) -> Result<Vec<Jwk>, String> {
    // Parse key by key: one unsupported key must not hide the others.
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let keys = v
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("no `keys` array")?;
    let set = JwkSet {
        keys: keys
            .iter()
            .filter_map(|k| serde_json::from_value::<Jwk>(k.clone()).ok())
            .filter(|k| !matches!(k.algorithm, AlgorithmParameters::OctetKey(_)))
            .collect(),
    };
    Ok(set.keys)
}
