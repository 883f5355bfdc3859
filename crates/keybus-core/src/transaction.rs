//! AMQP 1.0 transactions as Service Bus does them (sans-I/O): the transactions a connection's
//! coordinator declared, the work that joined each one, and how each ends.
//!
//! A transaction is declared by a connection (its `owner`), is bound to the first entity its
//! work touches (later work on another one is refused, except sends *via* the bound entity to
//! another one: [`TxnWork::SendTo`], a cross-entity transaction), and collects the sends and settlements that carry its id. Discharging it hands the
//! work back, to be applied by the caller in one store batch (commit) or dropped (roll back).
//! A transaction not discharged within [`TRANSACTION_TIMEOUT_MS`] is rolled back by
//! [`Transactions::expire`]; one whose connection closed by [`Transactions::drop_owner`].
//! Time comes in as an argument: nothing here reads a clock.

use std::collections::HashMap;

use crate::clock::Timestamp;
use crate::error::ErrorCondition;
use crate::queue::{IncomingMessage, LockToken, Outcome};

/// How long a transaction may stay undischarged before it is rolled back (Service Bus: 2 min).
pub const TRANSACTION_TIMEOUT_MS: i64 = 120_000;

/// A transaction id as the coordinator hands it out in `declared` (opaque binary on the wire).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TxnId(pub u64);

impl TxnId {
    /// The wire form: `txn:` and the counter, as bytes.
    pub fn to_bytes(self) -> Vec<u8> {
        format!("txn:{}", self.0).into_bytes()
    }

    /// Inverse of [`TxnId::to_bytes`]; `None` for bytes this broker never handed out.
    pub fn from_bytes(bytes: &[u8]) -> Option<TxnId> {
        std::str::from_utf8(bytes)
            .ok()?
            .strip_prefix("txn:")?
            .parse()
            .ok()
            .map(TxnId)
    }
}

/// One piece of work that joined a transaction.
#[derive(Debug, Clone)]
pub enum TxnWork {
    /// Messages sent with the transaction's id (one transfer, possibly a batch) to the
    /// transaction's entity.
    Send(Vec<IncomingMessage>),
    /// Messages sent via the transaction's entity to another entity of the namespace
    /// (send-via: a cross-entity transaction).
    SendTo {
        destination: String,
        messages: Vec<IncomingMessage>,
    },
    /// A settlement of a message received from the transaction's entity.
    Settle {
        subscription: Option<String>,
        token: LockToken,
        outcome: Outcome,
    },
}

/// Why a transaction operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TxnError {
    #[error("The transaction '{0}' is unknown: it was never declared, or has already ended.")]
    UnknownId(String),
    #[error(
        "The transaction was rolled back: it was not discharged within {} seconds.",
        TRANSACTION_TIMEOUT_MS / 1000
    )]
    Timeout,
    #[error(
        "Local transactions cannot span multiple top-level entities: the transaction is bound to '{bound}', not '{requested}'."
    )]
    OtherEntity { bound: String, requested: String },
    #[error("The transaction was rolled back: {0}")]
    Rollback(String),
}

impl TxnError {
    pub fn condition(&self) -> TxnCondition {
        match self {
            Self::UnknownId(_) => TxnCondition::UnknownId,
            Self::Timeout => TxnCondition::Timeout,
            Self::OtherEntity { .. } => TxnCondition::Other(ErrorCondition::NotAllowed),
            Self::Rollback(_) => TxnCondition::Rollback,
        }
    }
}

/// The AMQP condition of a [`TxnError`]: the transaction conditions of AMQP 1.0 §4.5.8, or a
/// Service Bus one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnCondition {
    UnknownId,
    Rollback,
    Timeout,
    Other(ErrorCondition),
}

impl TxnCondition {
    pub fn symbol(self) -> &'static str {
        match self {
            Self::UnknownId => "amqp:transaction:unknown-id",
            Self::Rollback => "amqp:transaction:rollback",
            Self::Timeout => "amqp:transaction:timeout",
            Self::Other(c) => c.symbol(),
        }
    }
}

/// An open transaction.
#[derive(Debug)]
struct Open {
    owner: u64,
    declared_at: Timestamp,
    entity: Option<String>,
    work: Vec<TxnWork>,
    /// Why the transaction can no longer commit (a piece of its work was refused): its
    /// commit is refused with this reason.
    doomed: Option<String>,
}

/// What a discharge hands back: the entity and the work to apply (commit), or nothing.
#[derive(Debug)]
pub struct Discharged {
    pub entity: Option<String>,
    pub work: Vec<TxnWork>,
}

/// The open transactions of a namespace.
#[derive(Debug, Default)]
pub struct Transactions {
    next: u64,
    open: HashMap<TxnId, Open>,
    /// Ids rolled back by the timeout, so that their discharge says `timeout`, not `unknown-id`.
    timed_out: HashMap<TxnId, u64>,
}

impl Transactions {
    pub fn new() -> Transactions {
        Transactions::default()
    }

    /// Declare a transaction for connection `owner`.
    pub fn declare(&mut self, owner: u64, now: Timestamp) -> TxnId {
        self.next += 1;
        let id = TxnId(self.next);
        self.open.insert(
            id,
            Open {
                owner,
                declared_at: now,
                entity: None,
                work: Vec::new(),
                doomed: None,
            },
        );
        id
    }

    /// Mark transaction `id` of `owner` as unable to commit (some of its work was refused:
    /// an SDK that does not look at the outcome of a transactional send learns it at the
    /// commit, as `amqp:transaction:rollback`). The first reason is kept.
    pub fn doom(&mut self, id: TxnId, owner: u64, reason: &str) {
        if let Some(open) = self.open.get_mut(&id).filter(|o| o.owner == owner) {
            open.doomed.get_or_insert_with(|| reason.to_string());
        }
    }

    /// Whether `id` is open (and so work can join it).
    pub fn is_open(&self, id: TxnId) -> bool {
        self.open.contains_key(&id)
    }

    fn unknown(&self, id: TxnId) -> TxnError {
        if self.timed_out.contains_key(&id) {
            TxnError::Timeout
        } else {
            TxnError::UnknownId(String::from_utf8_lossy(&id.to_bytes()).into_owned())
        }
    }

    /// Add work on `entity` to transaction `id`, declared by `owner`.
    pub fn enlist(
        &mut self,
        id: TxnId,
        owner: u64,
        entity: &str,
        work: TxnWork,
    ) -> Result<(), TxnError> {
        let err = self.unknown(id);
        let Some(open) = self.open.get_mut(&id).filter(|o| o.owner == owner) else {
            return Err(err);
        };
        match &open.entity {
            Some(bound) if bound != entity => {
                return Err(TxnError::OtherEntity {
                    bound: bound.clone(),
                    requested: entity.to_string(),
                });
            }
            Some(_) => {}
            None => open.entity = Some(entity.to_string()),
        }
        open.work.push(work);
        Ok(())
    }

    /// End transaction `id` of `owner`: its work, to apply when `fail` is false; a rolled
    /// back transaction's work is dropped (an empty `work`).
    pub fn discharge(&mut self, id: TxnId, owner: u64, fail: bool) -> Result<Discharged, TxnError> {
        match self.open.remove(&id) {
            Some(open) if open.owner == owner && !fail && open.doomed.is_some() => {
                Err(TxnError::Rollback(open.doomed.unwrap_or_default()))
            }
            Some(open) if open.owner == owner => Ok(Discharged {
                entity: open.entity,
                work: if fail { Vec::new() } else { open.work },
            }),
            Some(open) => {
                self.open.insert(id, open);
                Err(self.unknown(id))
            }
            None => {
                let err = self.unknown(id);
                self.timed_out.remove(&id);
                Err(err)
            }
        }
    }

    /// Roll back every transaction of a closed connection; the ids rolled back.
    pub fn drop_owner(&mut self, owner: u64) -> Vec<TxnId> {
        let ids: Vec<TxnId> = self
            .open
            .iter()
            .filter(|(_, o)| o.owner == owner)
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            self.open.remove(id);
        }
        self.timed_out.retain(|_, o| *o != owner);
        ids
    }

    /// Roll back every transaction declared more than [`TRANSACTION_TIMEOUT_MS`] before `now`.
    pub fn expire(&mut self, now: Timestamp) -> Vec<TxnId> {
        let ids: Vec<TxnId> = self
            .open
            .iter()
            .filter(|(_, o)| now.saturating_sub(o.declared_at) >= TRANSACTION_TIMEOUT_MS)
            .map(|(id, _)| *id)
            .collect();
        for id in &ids {
            if let Some(open) = self.open.remove(id) {
                self.timed_out.insert(*id, open.owner);
            }
        }
        ids
    }

    /// The earliest time a transaction times out, if any is open.
    pub fn next_deadline(&self) -> Option<Timestamp> {
        self.open
            .values()
            .map(|o| o.declared_at.saturating_add(TRANSACTION_TIMEOUT_MS))
            .min()
    }

    /// How many transactions are open.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settle(n: u8) -> TxnWork {
        TxnWork::Settle {
            subscription: None,
            token: LockToken([n; 16]),
            outcome: Outcome::Complete,
        }
    }

    #[test]
    fn ids_round_trip_and_foreign_bytes_are_refused() {
        assert_eq!(TxnId::from_bytes(&TxnId(42).to_bytes()), Some(TxnId(42)));
        assert_eq!(TxnId::from_bytes(b"txn:"), None);
        assert_eq!(TxnId::from_bytes(b"nope:1"), None);
        assert_eq!(TxnId::from_bytes(&[0xff, 0xfe]), None);
    }

    #[test]
    fn commit_hands_back_the_work_in_order_and_ends_the_transaction() {
        let mut t = Transactions::new();
        let id = t.declare(1, 0);
        t.enlist(id, 1, "q", settle(1)).unwrap();
        t.enlist(id, 1, "q", settle(2)).unwrap();
        let d = t.discharge(id, 1, false).unwrap();
        assert_eq!(d.entity.as_deref(), Some("q"));
        let tokens: Vec<u8> = d
            .work
            .iter()
            .map(|w| match w {
                TxnWork::Settle { token, .. } => token.0[0],
                TxnWork::Send(_) | TxnWork::SendTo { .. } => 0,
            })
            .collect();
        assert_eq!(tokens, vec![1, 2]);
        assert!(t.is_empty());
        let again = t.discharge(id, 1, false).unwrap_err();
        assert!(matches!(again, TxnError::UnknownId(_)));
        assert_eq!(again.condition().symbol(), "amqp:transaction:unknown-id");
    }

    #[test]
    fn rollback_drops_the_work() {
        let mut t = Transactions::new();
        let id = t.declare(1, 0);
        t.enlist(id, 1, "q", settle(1)).unwrap();
        let d = t.discharge(id, 1, true).unwrap();
        assert!(d.work.is_empty());
        assert!(!t.is_open(id));
    }

    #[test]
    fn a_doomed_transaction_cannot_commit_but_can_roll_back() {
        let mut t = Transactions::new();
        let id = t.declare(1, 0);
        t.enlist(id, 1, "q", settle(1)).unwrap();
        t.doom(id, 1, "a send was refused");
        t.doom(id, 1, "a later reason");
        let err = t.discharge(id, 1, false).unwrap_err();
        assert_eq!(err, TxnError::Rollback("a send was refused".into()));
        assert_eq!(err.condition().symbol(), "amqp:transaction:rollback");
        assert!(
            !t.is_open(id),
            "a refused commit still ends the transaction"
        );
        let other = t.declare(1, 0);
        t.doom(other, 1, "refused");
        assert!(t.discharge(other, 1, true).unwrap().work.is_empty());
    }

    #[test]
    fn a_transaction_is_bound_to_its_first_entity() {
        let mut t = Transactions::new();
        let id = t.declare(1, 0);
        t.enlist(id, 1, "a", settle(1)).unwrap();
        let err = t.enlist(id, 1, "b", settle(2)).unwrap_err();
        assert_eq!(
            err,
            TxnError::OtherEntity {
                bound: "a".into(),
                requested: "b".into()
            }
        );
        assert_eq!(err.condition().symbol(), "amqp:not-allowed");
        assert_eq!(t.discharge(id, 1, false).unwrap().work.len(), 1);
    }

    #[test]
    fn another_connection_cannot_use_or_end_a_transaction() {
        let mut t = Transactions::new();
        let id = t.declare(1, 0);
        assert!(matches!(
            t.enlist(id, 2, "q", settle(1)),
            Err(TxnError::UnknownId(_))
        ));
        assert!(matches!(
            t.discharge(id, 2, false),
            Err(TxnError::UnknownId(_))
        ));
        assert!(t.is_open(id));
    }

    #[test]
    fn closing_a_connection_rolls_back_only_its_transactions() {
        let mut t = Transactions::new();
        let a = t.declare(1, 0);
        let b = t.declare(2, 0);
        assert_eq!(t.drop_owner(1), vec![a]);
        assert!(!t.is_open(a));
        assert!(t.is_open(b));
    }

    #[test]
    fn undischarged_after_two_minutes_is_rolled_back_and_says_timeout() {
        let mut t = Transactions::new();
        let old = t.declare(1, 0);
        let young = t.declare(1, 60_000);
        assert_eq!(t.next_deadline(), Some(TRANSACTION_TIMEOUT_MS));
        assert!(t.expire(TRANSACTION_TIMEOUT_MS - 1).is_empty());
        assert_eq!(t.expire(TRANSACTION_TIMEOUT_MS), vec![old]);
        assert!(t.is_open(young));
        assert_eq!(
            t.enlist(old, 1, "q", settle(1)).unwrap_err(),
            TxnError::Timeout
        );
        let err = t.discharge(old, 1, false).unwrap_err();
        assert_eq!(err, TxnError::Timeout);
        assert_eq!(err.condition().symbol(), "amqp:transaction:timeout");
        // the timeout is said once; afterwards the id is unknown
        assert!(matches!(
            t.discharge(old, 1, false),
            Err(TxnError::UnknownId(_))
        ));
    }
}
