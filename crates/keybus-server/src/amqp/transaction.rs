//! Transactions (AMQP 1.0 §4.5 as Service Bus does them): the coordinator link's `declare` and
//! `discharge`, and the sends and settlements that join a transaction. The bookkeeping is
//! `keybus_core::Transactions` (one per connection: closing the connection drops its open
//! transactions, which rolls them back); here is what touches entities and the wire.
//!
//! Work that joins a transaction is not applied when it arrives: a transactional send is
//! answered `transactional-state(accepted)` and kept; a transactional settlement is answered
//! with its outcome and the message stays locked. Sends to other entities join only via the
//! transaction's entity (send-via links, cross-entity sessions: see `attach.rs`); refused work
//! dooms the transaction. A commit locks every entity the work touches (in address order),
//! applies it and submits all of it as ONE store batch, answering the discharge once that
//! batch is durable; if a settled message's lock ran out meanwhile or a send does not fit,
//! nothing is applied and the discharge is refused with `amqp:transaction:rollback`. A
//! rollback drops the work.

use std::sync::Arc;

use keybus_amqp::{Bytes, DeliveryState, Disposition, Message, Role, TxnControl};
use keybus_core::{IncomingMessage, Outcome, TxnError, TxnId, TxnWork};

use super::errors::{self, error};
use super::events::{ConnEvent, SendResult};
use super::state::Conn;
use crate::runtime::Entity;

/// Every transaction of a connection has this owner: the registry is the connection's own.
const OWNER: u64 = 0;

fn txn_error(e: &TxnError) -> keybus_amqp::AmqpError {
    error(e.condition().symbol(), e.to_string())
}

fn unknown(txn_id: &[u8]) -> TxnError {
    TxnError::UnknownId(String::from_utf8_lossy(txn_id).into_owned())
}

impl Conn {
    /// A transfer on the coordinator link: `declare` or `discharge`.
    pub(super) fn on_coordinator_transfer(&mut self, channel: u16, delivery_id: u32, body: &Bytes) {
        // A transaction past its time is rolled back before anything else touches it.
        self.expire_transactions();
        let control = Message::decode(body)
            .and_then(|m| {
                m.amqp_value()?
                    .ok_or(keybus_amqp::DecodeError::InvalidField {
                        performative: "coordinator",
                        field: "<body>",
                    })
            })
            .and_then(|v| TxnControl::from_value(&v));
        let control = match control {
            Ok(c) => c,
            Err(e) => {
                let state = DeliveryState::Rejected {
                    error: Some(error(errors::DECODE_ERROR, e.to_string())),
                };
                self.write_dispositions(channel, Role::Receiver, vec![(delivery_id, state)]);
                return;
            }
        };
        match control {
            TxnControl::Declare(d) => {
                let state = if d.global_id.is_some() {
                    DeliveryState::Rejected {
                        error: Some(error(
                            errors::NOT_IMPLEMENTED,
                            "distributed transactions (a declare with a global-id) are not supported",
                        )),
                    }
                } else {
                    let id = self.transactions.declare(OWNER, self.broker.now());
                    DeliveryState::Declared {
                        txn_id: Bytes::from(id.to_bytes()),
                    }
                };
                self.write_dispositions(channel, Role::Receiver, vec![(delivery_id, state)]);
            }
            TxnControl::Discharge(d) => self.discharge(channel, delivery_id, &d.txn_id, d.fail),
        }
    }

    /// Roll back the transactions that were not discharged in time (their discharge then
    /// says `amqp:transaction:timeout`).
    pub(crate) fn expire_transactions(&mut self) {
        if self.transactions.is_empty() {
            return;
        }
        for id in self.transactions.expire(self.broker.now()) {
            self.txn_entities.remove(&id);
            self.restore_unsettled(id);
            tracing::info!(connection = %self.id, txn = id.0, "transaction timed out: rolled back");
        }
    }

    fn enlist(
        &mut self,
        txn_id: &[u8],
        entity: &Arc<Entity>,
        work: TxnWork,
    ) -> Result<TxnId, TxnError> {
        self.expire_transactions();
        let id = TxnId::from_bytes(txn_id).ok_or_else(|| unknown(txn_id))?;
        let name = entity.lock().name().to_string();
        if let Err(e) = self.transactions.enlist(id, OWNER, &name, work) {
            // The transaction cannot do all of its work any more: its commit is refused.
            self.transactions.doom(id, OWNER, &e.to_string());
            return Err(e);
        }
        self.txn_entities
            .entry(id)
            .or_insert_with(|| entity.clone());
        Ok(id)
    }

    /// Give the deliveries settled in a rolled back transaction back to their sessions.
    fn restore_unsettled(&mut self, id: TxnId) {
        for (channel, delivery_id, entry) in self.txn_unsettled.remove(&id).unwrap_or_default() {
            let Some(s) = self.sessions.get_mut(&channel) else {
                continue;
            };
            if let Some(super::state::LinkKind::EntityOut { unsettled, .. }) =
                s.links.get_mut(&entry.0).map(|l| &mut l.kind)
            {
                *unsettled = unsettled.saturating_add(1);
                s.unsettled.insert(delivery_id, entry);
            }
        }
    }

    /// Messages for `entity` joining a transaction: bound to `via` when sent via it.
    fn enlist_messages(
        &mut self,
        txn_id: &[u8],
        entity: &Arc<Entity>,
        via: Option<&Arc<Entity>>,
        messages: Vec<IncomingMessage>,
    ) -> Result<TxnId, TxnError> {
        match via {
            None => self.enlist(txn_id, entity, TxnWork::Send(messages)),
            Some(via) => {
                let destination = entity.lock().name().to_string();
                self.enlist(
                    txn_id,
                    via,
                    TxnWork::SendTo {
                        destination,
                        messages,
                    },
                )
            }
        }
    }

    /// A transfer (delivery id, settled) to an entity (sent via another one, or not) that
    /// carries `transactional-state`: kept in the transaction.
    pub(super) fn enlist_send(
        &mut self,
        channel: u16,
        (delivery_id, settled): (u32, bool),
        txn_id: Bytes,
        (entity, via): (&Arc<Entity>, Option<&Arc<Entity>>),
        decoded: Result<Vec<IncomingMessage>, (&'static str, String)>,
    ) {
        // Service Bus answers with the outcome inside `transactional-state`; a refused send
        // also dooms the transaction, since SDKs may not look at the outcome (Java does not).
        let outcome = match decoded {
            Err((condition, description)) => {
                if let Some(id) = TxnId::from_bytes(&txn_id) {
                    self.transactions.doom(id, OWNER, &description);
                }
                DeliveryState::Rejected {
                    error: Some(error(condition, description)),
                }
            }
            Ok(msgs) => match self.enlist_messages(&txn_id, entity, via, msgs) {
                Ok(_) => DeliveryState::Accepted,
                Err(e) => DeliveryState::Rejected {
                    error: Some(txn_error(&e)),
                },
            },
        };
        let state = DeliveryState::Transactional {
            txn_id,
            outcome: Some(Box::new(outcome)),
        };
        if !settled {
            self.write_dispositions(channel, Role::Receiver, vec![(delivery_id, state)]);
        }
    }

    /// A disposition that carries `transactional-state`: each delivery's settlement joins
    /// the transaction and its message stays locked until the transaction ends.
    pub(super) fn enlist_settlements(
        &mut self,
        channel: u16,
        d: &Disposition,
        txn_id: Bytes,
        outcome: Outcome,
        echo: DeliveryState,
    ) {
        let last = d.last.unwrap_or(d.first);
        let span = last.wrapping_sub(d.first);
        let mut results = Vec::new();
        for k in 0..=span.min(4096) {
            let id = d.first.wrapping_add(k);
            let found = self.sessions.get_mut(&channel).and_then(|s| {
                let entry = s.unsettled.remove(&id)?;
                if let Some(super::state::LinkKind::EntityOut { unsettled, .. }) =
                    s.links.get_mut(&entry.0).map(|l| &mut l.kind)
                {
                    *unsettled = unsettled.saturating_sub(1);
                }
                Some(entry)
            });
            let Some(entry) = found else {
                if k == 0 || d.last.is_none() {
                    results.push((
                        id,
                        DeliveryState::Rejected {
                            error: Some(errors::from_condition(
                                keybus_core::ErrorCondition::MessageLockLost,
                                keybus_core::SettleError::LockLost.to_string(),
                            )),
                        },
                    ));
                }
                continue;
            };
            let work = TxnWork::Settle {
                subscription: entry.3.clone(),
                token: entry.1,
                outcome: outcome.clone(),
            };
            let entity = entry.2.clone();
            let state = match self.enlist(&txn_id, &entity, work) {
                Ok(txn) => {
                    self.txn_unsettled
                        .entry(txn)
                        .or_default()
                        .push((channel, id, entry));
                    DeliveryState::Transactional {
                        txn_id: txn_id.clone(),
                        outcome: Some(Box::new(echo.clone())),
                    }
                }
                Err(e) => {
                    // Not taken into the transaction: the delivery stays the receiver's.
                    if let Some(s) = self.sessions.get_mut(&channel) {
                        if let Some(super::state::LinkKind::EntityOut { unsettled, .. }) =
                            s.links.get_mut(&entry.0).map(|l| &mut l.kind)
                        {
                            *unsettled = unsettled.saturating_add(1);
                        }
                        s.unsettled.insert(id, entry);
                    }
                    DeliveryState::Transactional {
                        txn_id: txn_id.clone(),
                        outcome: Some(Box::new(DeliveryState::Rejected {
                            error: Some(txn_error(&e)),
                        })),
                    }
                }
            };
            results.push((id, state));
        }
        if !d.settled {
            self.write_dispositions(channel, Role::Sender, results);
        }
    }

    /// End a transaction: roll back (drop its work) or commit (apply it in one store batch).
    fn discharge(&mut self, channel: u16, delivery_id: u32, txn_id: &[u8], fail: bool) {
        let answer = move |r: SendResult| ConnEvent::TxnDone {
            channel,
            results: vec![(delivery_id, r)],
        };
        let discharged = TxnId::from_bytes(txn_id)
            .ok_or_else(|| unknown(txn_id))
            .and_then(|id| Ok((id, self.transactions.discharge(id, OWNER, fail)?)));
        let (id, discharged) = match discharged {
            Ok(x) => x,
            Err(e) => {
                let ev = answer(Err((e.condition().symbol(), e.to_string())));
                self.handle_txn_event(ev);
                return;
            }
        };
        let entity = self.txn_entities.remove(&id);
        if fail {
            self.restore_unsettled(id);
        }
        let (Some(entity), false) = (entity, discharged.work.is_empty()) else {
            self.handle_txn_event(answer(Ok(())));
            return;
        };
        if let Err(e) = self.broker.store().status() {
            let (_, description) = errors::store_failure(&e);
            let ev = answer(Err((
                keybus_core::TxnCondition::Rollback.symbol(),
                format!("the transaction was rolled back: {description}"),
            )));
            self.restore_unsettled(id);
            self.handle_txn_event(ev);
            return;
        }
        let committed = self.commit(&entity, discharged.work);
        if committed.is_err() {
            self.restore_unsettled(id);
        } else {
            self.txn_unsettled.remove(&id);
        }
        match committed {
            Err(description) => {
                let ev = answer(Err((
                    keybus_core::TxnCondition::Rollback.symbol(),
                    description,
                )));
                self.handle_txn_event(ev);
            }
            Ok(None) => self.handle_txn_event(answer(Ok(()))),
            Ok(Some((fut, pendings))) => {
                let finish = move |ok: Result<(), keybus_core::StoreError>| {
                    let failed = ok.as_ref().err().map(errors::store_failure);
                    for (entity, p) in &pendings {
                        let mut st = entity.lock();
                        st.finish(p, failed.is_none());
                        st.wake();
                    }
                    vec![answer(match failed {
                        None => Ok(()),
                        Some((_, description)) => Err((
                            keybus_core::TxnCondition::Rollback.symbol(),
                            format!("the transaction's commit failed: {description}"),
                        )),
                    })]
                };
                self.await_commit(async move { finish(fut.await) });
            }
        }
    }

    /// Apply a transaction's work: the settlements on its entity, the sends to it and (sent
    /// via it) to other entities, every entity's ops in ONE store batch. All or none: each
    /// settled message must still be locked and each entity's sends fit (checked before
    /// anything is enqueued), or nothing happens and the reason comes back. The entities are
    /// locked in one order (by address) and held until the batch is submitted, so each
    /// entity's ops reach the store in order and two commits cannot wait on each other.
    #[allow(clippy::type_complexity)]
    fn commit(
        &self,
        entity: &Arc<Entity>,
        work: Vec<TxnWork>,
    ) -> Result<
        Option<(
            keybus_core::CommitFuture,
            Vec<(Arc<Entity>, keybus_core::PendingSend)>,
        )>,
        String,
    > {
        let rolled_back = |why: String| format!("The transaction was rolled back: {why}");
        let now = self.broker.now();
        let mut settles = Vec::new();
        // (entity, its messages), the transaction's entity first
        let mut sends: Vec<(Arc<Entity>, Vec<IncomingMessage>)> =
            vec![(entity.clone(), Vec::new())];
        for w in work {
            let (target, messages) = match w {
                TxnWork::Settle {
                    subscription,
                    token,
                    outcome,
                } => {
                    settles.push((subscription, token, outcome));
                    continue;
                }
                TxnWork::Send(m) => (entity.clone(), m),
                TxnWork::SendTo {
                    destination,
                    messages,
                } => match self.broker.resolve(&destination) {
                    Some((e, None)) => (e, messages),
                    _ => {
                        return Err(rolled_back(format!(
                            "the entity '{destination}' it sends to no longer exists."
                        )));
                    }
                },
            };
            match sends.iter_mut().find(|(e, _)| Arc::ptr_eq(e, &target)) {
                Some((_, m)) => m.extend(messages),
                None => sends.push((target, messages)),
            }
        }
        let (targets, mut batches): (Vec<Arc<Entity>>, Vec<Vec<IncomingMessage>>) =
            sends.into_iter().unzip();
        let mut order: Vec<usize> = (0..targets.len()).collect();
        order.sort_by_key(|&i| Arc::as_ptr(&targets[i]) as usize);
        let mut guards: Vec<Option<crate::runtime::EntityGuard<'_>>> =
            targets.iter().map(|_| None).collect();
        for &i in &order {
            if let (Some(slot), Some(target)) = (guards.get_mut(i), targets.get(i)) {
                *slot = Some(target.lock());
            }
        }
        let mut guards: Vec<crate::runtime::EntityGuard<'_>> =
            guards.into_iter().flatten().collect();
        let Some(own) = guards.first() else {
            return Ok(None);
        };
        let lost = settles.iter().any(|(subscription, token, _)| {
            !own.receiver_ref(subscription.as_deref())
                .is_some_and(|q| q.holds_lock(*token, now))
        });
        if lost {
            return Err(rolled_back(
                "the lock of a message settled in it was lost before the commit.".into(),
            ));
        }
        let mut pendings = Vec::new();
        let mut refused = None;
        for (i, (target, messages)) in targets.iter().zip(batches.iter_mut()).enumerate() {
            if messages.is_empty() {
                continue;
            }
            let Some(st) = guards.get_mut(i) else {
                continue;
            };
            match st.send(std::mem::take(messages), now, false) {
                Ok((_, p)) => pendings.push((i, target.clone(), p)),
                Err(e) => {
                    refused = Some(e.to_string());
                    break;
                }
            }
        }
        if let Some(why) = refused {
            // Undo what was enqueued (still pending, never submitted).
            for (i, _, p) in &pendings {
                if let Some(st) = guards.get_mut(*i) {
                    st.finish(p, false);
                    st.machine.take_ops();
                }
            }
            return Err(rolled_back(why));
        }
        if let Some(own) = guards.first_mut() {
            for (subscription, token, outcome) in settles {
                // The locks were checked above under this same lock and time.
                if let Some(Err(e)) = own
                    .receiver(subscription.as_deref())
                    .map(|q| q.settle(token, outcome, now))
                {
                    tracing::error!(connection = %self.id, error = %e, "a settlement checked before the commit failed");
                }
            }
        }
        let mut ops = Vec::new();
        for st in guards.iter_mut() {
            ops.extend(st.machine.take_ops());
        }
        if ops.is_empty() {
            return Ok(None);
        }
        let fut = self.broker.store().commit(ops);
        for st in guards.iter_mut() {
            st.wake();
        }
        drop(guards);
        Ok(Some((
            fut,
            pendings.into_iter().map(|(_, e, p)| (e, p)).collect(),
        )))
    }

    /// Answer a discharge (or a declare's refusal) on the coordinator link.
    pub(super) fn handle_txn_event(&mut self, ev: ConnEvent) {
        let ConnEvent::TxnDone { channel, results } = ev else {
            return;
        };
        if !self.sessions.contains_key(&channel) {
            return;
        }
        let states = results
            .into_iter()
            .map(|(id, r)| {
                let state = match r {
                    Ok(()) => DeliveryState::Accepted,
                    Err((condition, description)) => DeliveryState::Rejected {
                        error: Some(error(condition, description)),
                    },
                };
                (id, state)
            })
            .collect();
        self.write_dispositions(channel, Role::Receiver, states);
    }
}
