//! Message sessions (wire reference §4.4): one lock holder per session, FIFO delivery within a
//! session, session lock renewal and expiry, session state, and listing sessions.
//!
//! A session lock belongs to a *holder*: an opaque number the caller gives each session
//! receiver (the server uses one per link). Messages delivered under a session lock are locked
//! until the session lock runs out; renewing the session renews them, and when it expires they
//! are unlocked with their delivery attempt counted, like an expired message lock.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use keybus_amqp::Bytes;

use super::{Delivery, Queue, ReceiveMode};
use crate::address::SubQueue;
use crate::clock::Timestamp;
use crate::error::SessionError;
use crate::store::{SessionRecord, StoreOp};

/// `last-updated-time` at or beyond this (.NET `DateTime.MaxValue`, as the SDKs send it) asks
/// for every session with messages or state rather than for recently updated state.
pub const LIST_ALL_SESSIONS: Timestamp = 253_402_300_799_999;

#[derive(Debug, Clone, Copy)]
struct SessionLock {
    holder: u64,
    until: Timestamp,
}

#[derive(Debug, Clone)]
struct SessionState {
    state: Bytes,
    updated: Timestamp,
}

/// The session bookkeeping of one queue or subscription.
#[derive(Debug, Default)]
pub(super) struct Sessions {
    locks: HashMap<String, SessionLock>,
    expiry: BTreeSet<(Timestamp, String)>,
    states: BTreeMap<String, SessionState>,
    /// Sessions whose lock ran out since the last [`Queue::take_lost_sessions`].
    lost: Vec<(String, u64)>,
}

impl Sessions {
    pub(super) fn restore(&mut self, records: Vec<SessionRecord>) {
        for r in records {
            self.states.insert(
                r.session_id,
                SessionState {
                    state: r.state,
                    updated: r.updated,
                },
            );
        }
    }

    pub(super) fn first_deadline(&self) -> Option<Timestamp> {
        self.expiry.first().map(|(t, _)| *t)
    }

    fn live(&self, id: &str, now: Timestamp) -> Option<SessionLock> {
        self.locks.get(id).copied().filter(|l| l.until > now)
    }

    fn set_lock(&mut self, id: &str, lock: SessionLock) {
        if let Some(old) = self.locks.insert(id.to_string(), lock) {
            self.expiry.remove(&(old.until, id.to_string()));
        }
        self.expiry.insert((lock.until, id.to_string()));
    }

    fn remove_lock(&mut self, id: &str) -> Option<SessionLock> {
        let old = self.locks.remove(id)?;
        self.expiry.remove(&(old.until, id.to_string()));
        Some(old)
    }
}

impl Queue {
    /// Whether receivers must use sessions.
    pub fn requires_session(&self) -> bool {
        self.props.requires_session
    }

    /// Lock a session for `holder`: the named one, or (with `None`) the available session whose
    /// oldest available message is oldest. Returns the session id and the lock's expiry.
    pub fn lock_session(
        &mut self,
        session: Option<&str>,
        holder: u64,
        now: Timestamp,
    ) -> Result<(String, Timestamp), SessionError> {
        let id = match session {
            Some(id) => {
                if self
                    .sessions
                    .live(id, now)
                    .is_some_and(|l| l.holder != holder)
                {
                    return Err(SessionError::CannotBeLocked(id.to_string()));
                }
                id.to_string()
            }
            None => self.free_session(now).ok_or(SessionError::NoneAvailable)?,
        };
        let until = now.saturating_add(self.props.lock_duration_ms);
        self.sessions.set_lock(&id, SessionLock { holder, until });
        Ok((id, until))
    }

    /// The unlocked session with available messages whose first message is oldest.
    fn free_session(&self, now: Timestamp) -> Option<String> {
        self.main
            .by_session
            .iter()
            .filter(|(id, _)| self.sessions.live(id, now).is_none())
            .filter_map(|(id, seqs)| seqs.first().map(|s| (*s, id)))
            .min()
            .map(|(_, id)| id.clone())
    }

    /// True if a session with available messages has no lock (an expired lock that was not
    /// swept yet still counts: [`Queue::tick`] sweeps it and reports that it woke).
    pub fn has_free_session(&self) -> bool {
        self.free_session(Timestamp::MIN).is_some()
    }

    /// True if `session` has a message its receiver could take now.
    pub fn has_available_in(&self, session: &str) -> bool {
        self.main.by_session.contains_key(session)
    }

    /// Whether `holder` holds a live lock on `session`.
    pub fn holds_session(&self, session: &str, holder: u64, now: Timestamp) -> bool {
        self.sessions
            .live(session, now)
            .is_some_and(|l| l.holder == holder)
    }

    /// The live lock on `session` if one of `holders` owns it, else `session-lock-lost`.
    fn check_holder(
        &self,
        session: &str,
        holders: &[u64],
        now: Timestamp,
    ) -> Result<SessionLock, SessionError> {
        self.sessions
            .live(session, now)
            .filter(|l| holders.contains(&l.holder))
            .ok_or_else(|| SessionError::LockLost(session.to_string()))
    }

    /// Fail with `session-lock-lost` unless one of `holders` holds `session`.
    pub fn check_session(
        &self,
        session: &str,
        holders: &[u64],
        now: Timestamp,
    ) -> Result<(), SessionError> {
        self.check_holder(session, holders, now).map(|_| ())
    }

    /// Take the next message of a locked session, in sequence order.
    pub fn acquire_in_session(
        &mut self,
        session: &str,
        holder: u64,
        mode: ReceiveMode,
        now: Timestamp,
    ) -> Option<Delivery> {
        let until = self.check_holder(session, &[holder], now).ok()?.until;
        loop {
            let seqs = self.main.by_session.get_mut(session)?;
            let seq = seqs.pop_first()?;
            if seqs.is_empty() {
                self.main.by_session.remove(session);
            }
            match self.take(SubQueue::Main, seq, mode, until, now) {
                super::Taken::Delivered(d) => return Some(d),
                super::Taken::Expired => {}
                super::Taken::Unreadable => return None,
            }
        }
    }

    /// `renew-session-lock`: extend the session lock (and the locks of the messages received
    /// under it) by the lock duration.
    pub fn renew_session_lock(
        &mut self,
        session: &str,
        holders: &[u64],
        now: Timestamp,
    ) -> Result<Timestamp, SessionError> {
        let lock = self.check_holder(session, holders, now)?;
        let until = now.saturating_add(self.props.lock_duration_ms);
        self.sessions.set_lock(
            session,
            SessionLock {
                holder: lock.holder,
                until,
            },
        );
        for seq in self.locked_in_session(session) {
            self.main.unindex(seq);
            if let Some(l) = self
                .main
                .entries
                .get_mut(&seq)
                .and_then(|e| e.lock.as_mut())
            {
                l.until = until;
            }
            self.main.index(seq);
        }
        Ok(until)
    }

    /// Sequence numbers of the session's messages that are locked.
    fn locked_in_session(&self, session: &str) -> Vec<i64> {
        self.locks
            .values()
            .filter(|(sub, _)| *sub == SubQueue::Main)
            .filter_map(|(_, seq)| {
                let e = self.main.entries.get(seq)?;
                (e.session_id() == Some(session)).then_some(*seq)
            })
            .collect()
    }

    /// The holder closes its receiver: unlock the session, and count a delivery attempt for
    /// every message it still had locked (as an abandon would).
    pub fn release_session(&mut self, session: &str, holder: u64, now: Timestamp) -> bool {
        if self
            .sessions
            .locks
            .get(session)
            .is_none_or(|l| l.holder != holder)
        {
            return false;
        }
        self.sessions.remove_lock(session);
        for seq in self.locked_in_session(session) {
            self.main.unindex(seq);
            let token = self
                .main
                .entries
                .get_mut(&seq)
                .and_then(|e| e.lock.take())
                .map(|l| l.token);
            if let Some(token) = token {
                self.locks.remove(&token);
            }
            self.count_attempt(SubQueue::Main, seq, now);
        }
        self.main.by_session.contains_key(session)
    }

    /// Drop session locks that ran out (their messages' locks run out at the same moment and
    /// are swept by [`Queue::tick`]). Returns true if a session became free.
    pub(super) fn expire_session_locks(&mut self, now: Timestamp) -> bool {
        let mut woke = false;
        while let Some((t, id)) = self.sessions.expiry.first().cloned() {
            if t > now {
                break;
            }
            if let Some(l) = self.sessions.remove_lock(&id) {
                self.sessions.lost.push((id, l.holder));
            }
            woke = true;
        }
        woke
    }

    /// Sessions whose lock expired since the last call, with their holders, so the server can
    /// detach those receivers with `session-lock-lost`.
    pub fn take_lost_sessions(&mut self) -> Vec<(String, u64)> {
        std::mem::take(&mut self.sessions.lost)
    }

    /// `get-session-state`.
    pub fn session_state(
        &self,
        session: &str,
        holders: &[u64],
        now: Timestamp,
    ) -> Result<Option<Bytes>, SessionError> {
        self.check_holder(session, holders, now)?;
        Ok(self.sessions.states.get(session).map(|s| s.state.clone()))
    }

    /// `set-session-state`: `None` (or empty) clears it. Durable once the queued op commits.
    pub fn set_session_state(
        &mut self,
        session: &str,
        state: Option<Bytes>,
        holders: &[u64],
        now: Timestamp,
    ) -> Result<(), SessionError> {
        self.check_holder(session, holders, now)?;
        let state = state.filter(|s| !s.is_empty());
        match &state {
            Some(s) => {
                self.sessions.states.insert(
                    session.to_string(),
                    SessionState {
                        state: s.clone(),
                        updated: now,
                    },
                );
            }
            None => {
                self.sessions.states.remove(session);
            }
        }
        self.ops.push(StoreOp::PutSessionState {
            entity: self.name.clone(),
            record: SessionRecord {
                session_id: session.to_string(),
                state: state.unwrap_or_default(),
                updated: now,
            },
        });
        Ok(())
    }

    /// `get-message-sessions`: with `updated_after` at or beyond [`LIST_ALL_SESSIONS`], every
    /// session that has messages or state; otherwise sessions whose state changed after it.
    /// Sorted by id, then `skip` and `top` applied.
    pub fn list_sessions(&self, updated_after: Timestamp, skip: usize, top: usize) -> Vec<String> {
        let ids: BTreeSet<&str> = if updated_after >= LIST_ALL_SESSIONS {
            self.main
                .entries
                .values()
                .filter(|e| !e.pending)
                .filter_map(|e| e.session_id())
                .chain(self.sessions.states.keys().map(String::as_str))
                .collect()
        } else {
            self.sessions
                .states
                .iter()
                .filter(|(_, s)| s.updated > updated_after)
                .map(|(id, _)| id.as_str())
                .collect()
        };
        ids.into_iter()
            .skip(skip)
            .take(top)
            .map(str::to_string)
            .collect()
    }
}
