//! The output side of the engine: everything the connection writes on its own (workload
//! transfers, batched completions, credit refills, heartbeats), and single transfers and
//! flows queued for a caller.

use std::time::Instant;

use keybus_amqp::{DeliveryState, Disposition, Flow, Performative, Role};

use crate::connection::{Connection, INCOMING_WINDOW, WRITE_BUDGET};
use crate::link::{Intake, Link, LinkId, LinkKind};
use crate::transfer::{write_templated_transfer, write_transfer};

impl Connection {
    /// Queue one unsettled transfer of message format `format` on a sender link (ignores
    /// credit: callers wait for it first). Returns its delivery id.
    pub(crate) fn send_one(&mut self, id: LinkId, format: u32, payload: &[u8]) -> Option<u32> {
        self.send_one_in(id, format, payload, None)
    }

    /// [`Connection::send_one`] with a delivery state on the transfer (a
    /// `transactional-state` naming the transaction the send joins).
    pub(crate) fn send_one_in(
        &mut self,
        id: LinkId,
        format: u32,
        payload: &[u8],
        state: Option<DeliveryState>,
    ) -> Option<u32> {
        let max_frame = self.remote_max_frame as usize;
        let session = self.sessions.get_mut(id.session)?;
        let channel = session.channel;
        let delivery_id = session.next_outgoing_id;
        let Some(Link {
            handle,
            kind: LinkKind::Sender(s),
            ..
        }) = session.links.get_mut(id.link)
        else {
            return None;
        };
        let tag = s.next_tag;
        s.next_tag += 1;
        s.credit = s.credit.saturating_sub(1);
        s.delivery_count = s.delivery_count.wrapping_add(1);
        if s.unsettled.is_empty() {
            s.unsettled_base = delivery_id;
        }
        s.unsettled.push_back(false);
        s.outstanding += 1;
        s.sent += 1;
        let handle = *handle;
        let frames = write_transfer(
            &mut self.wbuf,
            format,
            channel,
            handle,
            delivery_id,
            tag,
            payload,
            max_frame,
            state,
        );
        session.next_outgoing_id = delivery_id.wrapping_add(1);
        session.remote_incoming_window = session.remote_incoming_window.saturating_sub(frames);
        Some(delivery_id)
    }

    pub(crate) fn queue_link_flow(&mut self, id: LinkId, credit: u32) {
        self.queue_flow(id, credit, false);
    }

    /// A link `flow`; with `echo` the broker answers with its own view of the link.
    pub(crate) fn queue_flow(&mut self, id: LinkId, credit: u32, echo: bool) {
        let Some(session) = self.sessions.get_mut(id.session) else {
            return;
        };
        let mut flow = session.session_flow();
        session.incoming_window = INCOMING_WINDOW;
        let channel = session.channel;
        let Some(link) = session.links.get(id.link) else {
            return;
        };
        let dc = match &link.kind {
            LinkKind::Receiver(r) => r.delivery_count,
            LinkKind::Sender(s) => s.delivery_count,
        };
        flow.handle = Some(link.handle);
        flow.delivery_count = Some(dc);
        flow.link_credit = Some(credit);
        flow.echo = echo;
        self.frame(channel, Performative::Flow(flow));
    }

    /// Queue every frame that can be sent now. Returns true if it stopped because of the
    /// write budget (more can be produced right away).
    pub(crate) fn produce(&mut self) -> bool {
        let max_frame = self.remote_max_frame as usize;
        let now = Instant::now();
        let mut more = false;
        for session in &mut self.sessions {
            if session.ended {
                continue;
            }
            let channel = session.channel;
            for li in 0..session.links.len() {
                let Some(link) = session.links.get_mut(li) else {
                    continue;
                };
                if !link.attached || link.detached.is_some() || link.retired {
                    continue;
                }
                let handle = link.handle;
                match &mut link.kind {
                    LinkKind::Sender(s) => {
                        let Some(w) = &s.work else { continue };
                        while s.sent < w.count
                            && s.credit > 0
                            && session.remote_incoming_window > 0
                            && s.outstanding < w.max_inflight
                        {
                            if let Some(p) = w.pacing
                                && p.start + p.interval.mul_f64(s.sent as f64) > now
                            {
                                break;
                            }
                            if self.wbuf.len() >= WRITE_BUDGET {
                                more = true;
                                break;
                            }
                            let delivery_id = session.next_outgoing_id;
                            let tag = s.next_tag;
                            s.next_tag += 1;
                            s.credit -= 1;
                            s.delivery_count = s.delivery_count.wrapping_add(1);
                            if s.unsettled.is_empty() {
                                s.unsettled_base = delivery_id;
                            }
                            s.unsettled.push_back(false);
                            s.outstanding += 1;
                            let seq = s.sent;
                            s.sent += 1;
                            let frames = write_templated_transfer(
                                &mut self.wbuf,
                                channel,
                                handle,
                                delivery_id,
                                tag,
                                &w.template,
                                seq,
                                max_frame,
                            );
                            session.next_outgoing_id = delivery_id.wrapping_add(1);
                            session.remote_incoming_window =
                                session.remote_incoming_window.saturating_sub(frames);
                        }
                    }
                    LinkKind::Receiver(r) => {
                        for (first, last) in r.pending.drain(..) {
                            r.awaiting_echo += u64::from(last.wrapping_sub(first)) + 1;
                            let d = Disposition {
                                role: Role::Receiver,
                                first,
                                last: (last != first).then_some(last),
                                settled: false,
                                state: Some(DeliveryState::Accepted),
                                batchable: false,
                            };
                            keybus_amqp::encode_amqp_frame(
                                channel,
                                &Performative::Disposition(d),
                                &[],
                                &mut self.wbuf,
                            );
                        }
                        let window = r
                            .work
                            .as_ref()
                            .map_or(if r.intake == Intake::Reply { 10 } else { 0 }, |w| {
                                w.credit_window
                            });
                        let active = r
                            .work
                            .as_ref()
                            .is_none_or(|w| w.tally.as_ref().is_none_or(|t| !t.done()));
                        let refill = active && window > 0 && r.credit <= window / 2;
                        if refill || session.incoming_window < INCOMING_WINDOW / 2 {
                            let mut flow = Flow {
                                next_incoming_id: Some(session.next_incoming_id),
                                incoming_window: INCOMING_WINDOW,
                                next_outgoing_id: session.next_outgoing_id,
                                outgoing_window: u32::MAX,
                                ..Default::default()
                            };
                            session.incoming_window = INCOMING_WINDOW;
                            if refill {
                                r.credit = window;
                                flow.handle = Some(handle);
                                flow.delivery_count = Some(r.delivery_count);
                                flow.link_credit = Some(window);
                            }
                            keybus_amqp::encode_amqp_frame(
                                channel,
                                &Performative::Flow(flow),
                                &[],
                                &mut self.wbuf,
                            );
                        }
                    }
                }
            }
        }
        if self.wbuf.is_empty()
            && let Some(h) = self.heartbeat
            && now.duration_since(self.last_write) >= h
        {
            keybus_amqp::encode_empty_frame(&mut self.wbuf);
        }
        more
    }
}
