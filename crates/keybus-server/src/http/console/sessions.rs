//! The console's sessions: the one-time sign-in token (`keybus serve` prints it; exchanged
//! once) and a bounded table of signed-in sessions, each with its principal, its CSRF token
//! and its expiry. Time is passed in (ms since the epoch).

use std::collections::HashMap;
use std::sync::Mutex;

use keybus_auth::Principal;

/// How long a session lives at most (a credential that expires sooner ends it sooner).
pub(super) const SESSION_MS: i64 = 12 * 3600 * 1000;
/// The most sessions kept; a new one beyond it replaces the one that expires first.
const MAX_SESSIONS: usize = 1024;

/// A signed-in console user.
#[derive(Debug, Clone)]
pub(super) struct Session {
    pub(super) principal: Principal,
    /// Sent back in `X-Keybus-Csrf` on every POST.
    pub(super) csrf: String,
    pub(super) expires_at: i64,
}

#[derive(Default)]
struct Table {
    /// SHA-256 of the one-time token while it has not been used.
    one_time: Option<String>,
    sessions: HashMap<String, Session>,
}

/// The one-time token and the session table.
pub(super) struct Sessions {
    table: Mutex<Table>,
    /// The token in clear until it is handed out to be printed (then only its SHA-256 stays).
    one_time_token: Mutex<Option<String>>,
}

/// 32 random bytes, hex.
pub(super) fn random_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Sessions {
    pub(super) fn new() -> Sessions {
        let token = random_token();
        Sessions {
            table: Mutex::new(Table {
                one_time: Some(keybus_auth::token_sha256(&token)),
                sessions: HashMap::new(),
            }),
            one_time_token: Mutex::new(Some(token)),
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The one-time token, once (to print it); `None` after.
    pub(super) fn take_one_time_token(&self) -> Option<String> {
        self.one_time_token
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
    }

    /// Use the one-time token: true exactly once, for the right token.
    pub(super) fn redeem(&self, token: &str) -> bool {
        let mut t = self.table();
        let matches = t
            .one_time
            .as_deref()
            .is_some_and(|h| *h == keybus_auth::token_sha256(token));
        if matches {
            t.one_time = None;
        }
        matches
    }

    /// Open a session for `principal` until `expires_at`; returns its id.
    pub(super) fn open(
        &self,
        principal: Principal,
        expires_at: i64,
        now: i64,
    ) -> (String, Session) {
        let id = random_token();
        let session = Session {
            principal,
            csrf: random_token(),
            expires_at,
        };
        let mut t = self.table();
        t.sessions.retain(|_, s| s.expires_at > now);
        if t.sessions.len() >= MAX_SESSIONS {
            let first = t
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.expires_at)
                .map(|(k, _)| k.clone());
            if let Some(k) = first {
                t.sessions.remove(&k);
            }
        }
        t.sessions.insert(id.clone(), session.clone());
        (id, session)
    }

    /// The live session `id`, if any.
    pub(super) fn get(&self, id: &str, now: i64) -> Option<Session> {
        let mut t = self.table();
        match t.sessions.get(id) {
            Some(s) if s.expires_at > now => Some(s.clone()),
            Some(_) => {
                t.sessions.remove(id);
                None
            }
            None => None,
        }
    }

    /// End session `id`.
    pub(super) fn close(&self, id: &str) {
        self.table().sessions.remove(id);
    }
}

impl Default for Sessions {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use keybus_auth::{CredentialKind, policy::Subject};

    fn principal() -> Principal {
        Principal {
            key: "sas:root".into(),
            kind: CredentialKind::Sas,
            subject: Subject::default(),
            sas: None,
            iss: None,
            kid: None,
            jti: None,
            token_sha256: None,
        }
    }

    #[test]
    fn the_one_time_token_works_once() {
        let s = Sessions::new();
        let t = s.take_one_time_token().unwrap();
        assert_eq!(s.take_one_time_token(), None, "handed out once");
        assert!(!s.redeem("wrong"));
        assert!(s.redeem(&t));
        assert!(!s.redeem(&t));
    }

    #[test]
    fn sessions_expire_and_close() {
        let s = Sessions::new();
        let (id, sess) = s.open(principal(), 1000, 0);
        assert_eq!(s.get(&id, 999).map(|x| x.csrf), Some(sess.csrf));
        assert!(s.get(&id, 1000).is_none());
        let (id, _) = s.open(principal(), 1000, 0);
        s.close(&id);
        assert!(s.get(&id, 0).is_none());
    }

    #[test]
    fn the_table_is_bounded() {
        let s = Sessions::new();
        let (first, _) = s.open(principal(), 10, 0);
        for i in 0..MAX_SESSIONS {
            s.open(principal(), 100 + i as i64, 0);
        }
        assert!(s.get(&first, 0).is_none());
        assert_eq!(s.table().sessions.len(), MAX_SESSIONS);
    }
}
