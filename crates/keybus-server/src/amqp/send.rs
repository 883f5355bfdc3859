//! Sending to an entity: incoming transfers (multi-frame, batched), sends batched into one
//! store commit per input batch, and their settlement once durable. `$cbs` and
//! `$management` requests arrive here too and are handed on.

use std::sync::Arc;

use keybus_amqp::{
    Bytes, BytesMut, DeliveryState, Disposition, Message, Performative, Role, Transfer,
};
use keybus_core::{IncomingMessage, SubQueue};

use super::errors::{self, error};
use super::events::{ConnEvent, SendResult};
use super::state::{Conn, ConnError, LinkKind, Partial, PendingSend, SENDER_CREDIT};

impl Conn {
    pub(super) fn on_transfer(
        &mut self,
        channel: u16,
        t: Transfer,
        payload: Bytes,
    ) -> Result<(), ConnError> {
        // A busy store stops sender links from getting new credit (back-pressure); the
        // transfers already credited are still answered, refused as server-busy.
        let busy = self.broker.store().admit().is_err();
        let Some(s) = self.sessions.get_mut(&channel) else {
            return Ok(());
        };
        let Some(link) = s.links.get_mut(&t.handle) else {
            return Err(ConnError(error(
                errors::UNATTACHED_HANDLE,
                format!("transfer on unattached handle {}", t.handle),
            )));
        };
        let limit = match &link.kind {
            LinkKind::EntityIn { entity, .. } => {
                entity.lock().max_message_size() as usize + 64 * 1024
            }
            LinkKind::MgmtIn { entity, .. } => {
                2 * entity.lock().max_message_size() as usize + 1024 * 1024
            }
            LinkKind::CbsIn | LinkKind::Coordinator => 64 * 1024,
            _ => {
                return Err(ConnError(error(
                    errors::NOT_ALLOWED,
                    "transfer on a link the broker sends on",
                )));
            }
        };
        let partial = match link.partial.take() {
            Some(p) => p,
            None => {
                let Some(delivery_id) = t.delivery_id else {
                    return Err(ConnError(error(
                        errors::INVALID_FIELD,
                        "first transfer frame has no delivery-id",
                    )));
                };
                Partial {
                    delivery_id,
                    format: t.message_format.unwrap_or(0),
                    settled: t.settled.unwrap_or(false),
                    buf: BytesMut::new(),
                    oversize: false,
                    txn: None,
                }
            }
        };
        let mut partial = partial;
        if let Some(DeliveryState::Transactional { txn_id, .. }) = &t.state {
            partial.txn = Some(txn_id.clone());
        }
        if t.aborted {
            return Ok(());
        }
        if t.more {
            if partial.buf.len() + payload.len() > limit {
                partial.oversize = true;
                partial.buf.clear();
            } else if !partial.oversize {
                partial.buf.extend_from_slice(&payload);
            }
            link.partial = Some(partial);
            return Ok(());
        }
        let body: Bytes = if partial.buf.is_empty() && !partial.oversize {
            payload
        } else if partial.oversize || partial.buf.len() + payload.len() > limit {
            partial.oversize = true;
            Bytes::new()
        } else {
            partial.buf.extend_from_slice(&payload);
            partial.buf.freeze()
        };
        let (delivery_id, settled, format, oversize, txn) = (
            partial.delivery_id,
            partial.settled,
            partial.format,
            partial.oversize,
            partial.txn,
        );
        link.in_count = link.in_count.wrapping_add(1);
        link.in_credit = link.in_credit.saturating_sub(1);
        let low = link.in_credit < SENDER_CREDIT / 2;
        let withhold = low && busy && matches!(link.kind, LinkKind::EntityIn { .. });
        let top_up = (low && !withhold).then(|| {
            link.in_credit = SENDER_CREDIT;
            link.in_count
        });
        if withhold {
            self.credit_withheld = true;
        }
        match &mut link.kind {
            LinkKind::EntityIn { entity, via } => {
                let (entity, via) = (entity.clone(), via.clone());
                let max = entity.lock().max_message_size() as usize;
                let result = if oversize || body.len() > max {
                    Err((
                        errors::MESSAGE_SIZE_EXCEEDED,
                        format!(
                            "The received message (delivery-id:{delivery_id}, size:{} bytes) exceeds the limit ({max} bytes) currently allowed on the link.",
                            body.len().max(max + 1)
                        ),
                    ))
                } else {
                    decode_incoming(&body, format)
                };
                if let Some(txn_id) = txn {
                    self.enlist_send(
                        channel,
                        (delivery_id, settled),
                        txn_id,
                        (&entity, via.as_ref()),
                        result,
                    );
                    if let Some(count) = top_up {
                        self.grant_credit(channel, t.handle, count, SENDER_CREDIT);
                    }
                    return Ok(());
                }
                self.pending_sends.push(PendingSend {
                    channel,
                    delivery_id,
                    settled,
                    entity,
                    result,
                });
            }
            LinkKind::CbsIn => {
                if !settled {
                    self.settle_request(channel, delivery_id);
                }
                let Ok(msg) = Message::decode(&body) else {
                    return Ok(());
                };
                self.on_cbs_request(channel, &msg);
            }
            // An oversize control message arrives empty and is refused as undecodable.
            LinkKind::Coordinator => self.on_coordinator_transfer(channel, delivery_id, &body),
            LinkKind::MgmtIn {
                entity,
                subscription,
                sub,
            } => {
                let (entity, subscription, sub) = (entity.clone(), subscription.clone(), *sub);
                if !settled {
                    self.settle_request(channel, delivery_id);
                }
                if oversize {
                    return Ok(());
                }
                let Ok(msg) = Message::decode(&body) else {
                    return Ok(());
                };
                self.on_management_request(channel, entity, subscription, sub, msg);
            }
            _ => {}
        }
        if let Some(count) = top_up {
            self.grant_credit(channel, t.handle, count, SENDER_CREDIT);
        }
        Ok(())
    }

    pub(super) fn settle_request(&mut self, channel: u16, delivery_id: u32) {
        self.write(
            channel,
            Performative::Disposition(Disposition {
                role: Role::Receiver,
                first: delivery_id,
                last: None,
                settled: true,
                state: Some(DeliveryState::Accepted),
                batchable: false,
            }),
        );
    }

    /// Enqueue every send read in this input batch; one store commit per entity.
    pub(crate) fn flush_sends(&mut self) {
        if self.pending_sends.is_empty() {
            return;
        }
        let mut pending = std::mem::take(&mut self.pending_sends);
        let now = self.broker.now();
        while !pending.is_empty() {
            let entity = pending[0].entity.clone();
            let (group, rest): (Vec<_>, Vec<_>) = pending
                .into_iter()
                .partition(|p| Arc::ptr_eq(&p.entity, &entity));
            pending = rest;
            let mut results = Vec::with_capacity(group.len());
            let mut pendings = Vec::new();
            // A store that refuses writes, or is busy, refuses the sends before they touch
            // the entity.
            let refused = self
                .broker
                .store()
                .admit()
                .err()
                .map(|e| errors::store_failure(&e));
            let fut = {
                let mut st = entity.lock();
                for p in group {
                    let r = match (p.result, &refused) {
                        (Ok(_), Some((condition, description))) => {
                            Err((condition.symbol(), description.clone()))
                        }
                        (Ok(msgs), None) => match st.send(msgs, now, false) {
                            Ok((_, pending)) => {
                                pendings.push(pending);
                                Ok(())
                            }
                            Err(e) => Err((e.condition().symbol(), e.to_string())),
                        },
                        (Err(e), _) => Err(e),
                    };
                    results.push((p.channel, p.delivery_id, p.settled, r));
                }
                entity.submit(&mut st)
            };
            let entity = entity.clone();
            let store = self.broker.store().clone();
            let finish = move |ok: Result<(), keybus_core::StoreError>| {
                let failed = ok.as_ref().err().map(errors::store_failure);
                {
                    let mut st = entity.lock();
                    if failed.is_some() {
                        // The store may still write the failed batch when it recovers (see
                        // keybus-store): delete what the refused sends put, after it.
                        let undo = undo_refused_sends(&st, &pendings);
                        if !undo.is_empty() {
                            tokio::spawn(store.commit(undo));
                        }
                    }
                    for p in &pendings {
                        st.finish(p, failed.is_none());
                    }
                }
                let mut by_channel: Vec<(u16, Vec<(u32, SendResult)>)> = Vec::new();
                for (ch, id, settled, r) in results {
                    if settled {
                        continue;
                    }
                    let r = match (&failed, r) {
                        (Some((condition, description)), Ok(())) => {
                            Err((condition.symbol(), description.clone()))
                        }
                        (_, r) => r,
                    };
                    match by_channel.iter_mut().find(|(c, _)| *c == ch) {
                        Some((_, v)) => v.push((id, r)),
                        None => by_channel.push((ch, vec![(id, r)])),
                    }
                }
                by_channel
            };
            match fut {
                None => {
                    for (channel, results) in finish(Ok(())) {
                        self.on_sends_done(channel, results);
                    }
                }
                Some(fut) => {
                    self.await_commit(async move {
                        finish(fut.await)
                            .into_iter()
                            .map(|(channel, results)| ConnEvent::SendsDone { channel, results })
                            .collect()
                    });
                }
            }
        }
    }

    /// Top up the sender links whose credit was withheld while the store was busy, once it
    /// admits sends again.
    pub(crate) fn restore_credit(&mut self) {
        if !self.credit_withheld || self.broker.store().admit().is_err() {
            return;
        }
        self.credit_withheld = false;
        let mut grants = Vec::new();
        for (&channel, s) in &mut self.sessions {
            for (&handle, link) in &mut s.links {
                if matches!(link.kind, LinkKind::EntityIn { .. })
                    && link.in_credit < SENDER_CREDIT / 2
                {
                    link.in_credit = SENDER_CREDIT;
                    grants.push((channel, handle, link.in_count));
                }
            }
        }
        for (channel, handle, count) in grants {
            self.grant_credit(channel, handle, count, SENDER_CREDIT);
        }
    }

    pub(super) fn on_sends_done(&mut self, channel: u16, results: Vec<(u32, SendResult)>) {
        if !self.sessions.contains_key(&channel) {
            return;
        }
        let mut states = Vec::with_capacity(results.len());
        for (id, r) in results {
            let state = match r {
                Ok(()) => {
                    self.broker.metrics().request("send", 200);
                    DeliveryState::Accepted
                }
                Err((cond, desc)) => {
                    let status = match cond {
                        errors::INTERNAL => 500,
                        "com.microsoft:server-busy" => 503,
                        _ => 400,
                    };
                    self.broker.metrics().request("send", status);
                    DeliveryState::Rejected {
                        error: Some(error(cond, desc)),
                    }
                }
            };
            states.push((id, state));
        }
        self.write_dispositions(channel, Role::Receiver, states);
    }
}

/// Decode a received transfer into messages (a batch holds one encoded message per `data`).
///
/// Stored messages own their bytes: decoding zero-copy from the read buffer would pin a whole
/// 64 KB read buffer per message for as long as the message lives.
fn decode_incoming(
    body: &Bytes,
    format: u32,
) -> Result<Vec<IncomingMessage>, (&'static str, String)> {
    let bad = |e: keybus_amqp::DecodeError| {
        (
            errors::DECODE_ERROR,
            format!("the message could not be decoded: {e}"),
        )
    };
    let owned = |b: &[u8]| -> Result<IncomingMessage, (&'static str, String)> {
        let own = Bytes::copy_from_slice(b);
        Ok(IncomingMessage::new(
            keybus_core::with_message_id(Message::decode(&own).map_err(bad)?, rand::random()),
            b.len() as u32,
        ))
    };
    if format == keybus_amqp::BATCH_MESSAGE_FORMAT {
        let envelope = Message::decode(body).map_err(bad)?;
        envelope
            .batch_inner_messages()
            .map_err(bad)?
            .iter()
            .map(|b| owned(b))
            .collect()
    } else {
        Ok(vec![owned(body)?])
    }
}

/// Deletes of the records that refused sends (`pendings`) put into the entity's queue or
/// subscriptions. A topic body left without records is removed at the next start.
fn undo_refused_sends(
    st: &crate::runtime::EntityState,
    pendings: &[keybus_core::PendingSend],
) -> Vec<keybus_core::StoreOp> {
    use keybus_core::PendingSend as Pending;
    let delete = |entity: &str, seq: i64| keybus_core::StoreOp::DeleteMessage {
        entity: entity.into(),
        sub: SubQueue::Main,
        sequence_number: seq,
    };
    let mut ops = Vec::new();
    for p in pendings {
        match p {
            Pending::Queue(seqs) => ops.extend(seqs.iter().map(|&seq| delete(st.name(), seq))),
            Pending::Topic(fanout) => {
                for (key, seqs) in fanout {
                    if let Some(q) = st.receiver_ref(Some(key)) {
                        ops.extend(seqs.iter().map(|&seq| delete(q.name(), seq)));
                    }
                }
            }
        }
    }
    ops
}
