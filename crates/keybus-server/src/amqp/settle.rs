//! Settlement: dispositions from receivers mapped to outcomes on the entity, and their
//! echo once durable.

use std::sync::Arc;

use keybus_amqp::{DeliveryState, Disposition, Performative, Role};
use keybus_core::Outcome;

use super::errors::{self};
use super::events::ConnEvent;
use super::state::{Conn, LinkKind};

impl Conn {
    /// Write settled dispositions, coalescing consecutive ids with equal states into ranges.
    pub(super) fn write_dispositions(
        &mut self,
        channel: u16,
        role: Role,
        mut states: Vec<(u32, DeliveryState)>,
    ) {
        states.sort_by_key(|(id, _)| *id);
        let mut i = 0;
        while i < states.len() {
            let (first, state) = (states[i].0, states[i].1.clone());
            let mut last = first;
            let mut j = i + 1;
            while j < states.len() && states[j].0 == last.wrapping_add(1) && states[j].1 == state {
                last = states[j].0;
                j += 1;
            }
            self.write(
                channel,
                Performative::Disposition(Disposition {
                    role,
                    first,
                    last: (last != first).then_some(last),
                    settled: true,
                    state: Some(state),
                    batchable: false,
                }),
            );
            i = j;
        }
    }

    pub(super) fn on_disposition(&mut self, channel: u16, d: Disposition) {
        if d.role != Role::Receiver {
            return;
        }
        let Some(state) = d.state.clone() else { return };
        if let DeliveryState::Transactional {
            txn_id,
            outcome: Some(inner),
        } = state
        {
            if let Some(outcome) = outcome_of(&inner) {
                self.enlist_settlements(channel, &d, txn_id, outcome, echo_of(&inner));
            }
            return;
        }
        let Some(outcome) = outcome_of(&state) else {
            return;
        };
        let now = self.broker.now();
        let last = d.last.unwrap_or(d.first);
        let Some(s) = self.sessions.get_mut(&channel) else {
            return;
        };
        let span = last.wrapping_sub(d.first) as usize;
        let ids: Vec<u32> = if span < s.unsettled.len().max(64) {
            (0..=span as u32).map(|k| d.first.wrapping_add(k)).collect()
        } else {
            let mut v: Vec<u32> = s
                .unsettled
                .keys()
                .copied()
                .filter(|id| id.wrapping_sub(d.first) as usize <= span)
                .collect();
            v.sort_unstable();
            v
        };
        let mut results = Vec::with_capacity(ids.len());
        let mut futures = Vec::new();
        let mut touched = Vec::new();
        // A store that refuses writes refuses settlements before they touch the entity: the
        // message stays locked (settle again once the store is back) until its lock ends.
        let refused = self
            .broker
            .store()
            .status()
            .err()
            .map(|e| errors::from_store(&e));
        // Messages to settle, in id order; a run of them on the same entity is settled under
        // one lock and made durable by one commit.
        let mut settle = Vec::with_capacity(ids.len());
        for id in ids {
            if let Some(error) = &refused {
                if s.unsettled.contains_key(&id) {
                    results.push((
                        id,
                        DeliveryState::Rejected {
                            error: Some(error.clone()),
                        },
                    ));
                } else if d.first == id || d.last.is_none() {
                    results.push((id, lock_lost_state()));
                }
                continue;
            }
            let Some((handle, token, entity, subscription)) = s.unsettled.remove(&id) else {
                if d.first == id || d.last.is_none() {
                    results.push((id, lock_lost_state()));
                }
                continue;
            };
            if let Some(LinkKind::EntityOut { unsettled, .. }) =
                s.links.get_mut(&handle).map(|l| &mut l.kind)
            {
                *unsettled = unsettled.saturating_sub(1);
                touched.push(handle);
            }
            settle.push((id, token, entity, subscription));
        }
        let wakes = matches!(outcome, Outcome::Release | Outcome::Abandon { .. });
        for run in settle.chunk_by(|a, b| Arc::ptr_eq(&a.2, &b.2) && a.3 == b.3) {
            let Some((_, _, entity, subscription)) = run.first() else {
                continue;
            };
            let mut st = entity.lock();
            let mut woke = false;
            for (id, token, _, _) in run {
                let r = match st.receiver(subscription.as_deref()) {
                    Some(q) => q.settle(*token, outcome.clone(), now),
                    None => Err(keybus_core::SettleError::LockLost),
                };
                woke |= wakes && r.is_ok();
                results.push((
                    *id,
                    match r {
                        Ok(()) => echo_of(&state),
                        Err(e) => DeliveryState::Rejected {
                            error: Some(errors::from_condition(e.condition(), e.to_string())),
                        },
                    },
                ));
            }
            if let Some(f) = entity.submit(&mut st) {
                futures.push(f);
            }
            if woke {
                st.wake();
            }
        }
        touched.sort_unstable();
        touched.dedup();
        if !d.settled {
            if futures.is_empty() {
                self.write_dispositions(channel, Role::Sender, results);
            } else {
                self.await_commit(async move {
                    let mut failed = None;
                    for f in futures {
                        if let Err(e) = f.await {
                            failed = Some(e);
                        }
                    }
                    let results = match failed {
                        None => results,
                        Some(e) => results
                            .into_iter()
                            .map(|(id, _)| {
                                (
                                    id,
                                    DeliveryState::Rejected {
                                        error: Some(errors::from_store(&e)),
                                    },
                                )
                            })
                            .collect(),
                    };
                    vec![ConnEvent::SettlesDone { channel, results }]
                });
            }
        }
        for h in touched {
            self.pump(channel, h);
        }
    }

    pub(super) fn on_settles_done(&mut self, channel: u16, results: Vec<(u32, DeliveryState)>) {
        if self.sessions.contains_key(&channel) {
            self.write_dispositions(channel, Role::Sender, results);
        }
    }
}

fn outcome_of(state: &DeliveryState) -> Option<Outcome> {
    match state {
        DeliveryState::Accepted => Some(Outcome::Complete),
        DeliveryState::Released => Some(Outcome::Release),
        DeliveryState::Modified {
            undeliverable_here,
            message_annotations,
            ..
        } => {
            let properties = message_annotations.clone();
            if *undeliverable_here == Some(true) {
                Some(Outcome::Defer { properties })
            } else {
                Some(Outcome::Abandon { properties })
            }
        }
        DeliveryState::Rejected { error } => {
            let mut reason = None;
            let mut description = error.as_ref().and_then(|e| e.description.clone());
            let mut properties = Vec::new();
            if let Some(info) = error.as_ref().and_then(|e| e.info.as_ref()) {
                for (k, v) in info {
                    match k.as_str() {
                        Some("DeadLetterReason") => reason = v.as_str().map(str::to_string),
                        Some("DeadLetterErrorDescription") => {
                            if let Some(d) = v.as_str() {
                                description = Some(d.to_string());
                            }
                        }
                        _ => properties.push((k.clone(), v.clone())),
                    }
                }
            }
            Some(Outcome::DeadLetter {
                reason,
                description,
                properties: (!properties.is_empty()).then_some(properties),
            })
        }
        DeliveryState::Received { .. }
        | DeliveryState::Declared { .. }
        | DeliveryState::Transactional { .. } => None,
    }
}

/// The state we echo for a successful settlement (wire reference §6.2).
fn echo_of(state: &DeliveryState) -> DeliveryState {
    match state {
        DeliveryState::Rejected { .. } => DeliveryState::Rejected { error: None },
        other => other.clone(),
    }
}

fn lock_lost_state() -> DeliveryState {
    DeliveryState::Rejected {
        error: Some(errors::from_condition(
            keybus_core::ErrorCondition::MessageLockLost,
            keybus_core::SettleError::LockLost.to_string(),
        )),
    }
}
