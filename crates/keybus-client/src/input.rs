//! The input side of the engine: decoding frames and applying each performative to the
//! connection, session and link state (attach and refusals, detach, flow and credit,
//! transfers, dispositions and settled echoes).

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use keybus_amqp::{
    Bytes, BytesMut, Close, DecodeError, DeliveryState, Detach, Disposition, End, Flow, Frame,
    FrameBody, Message, Performative, Role, Transfer, Value,
};

use crate::connection::{Connection, LOCAL_MAX_FRAME};
use crate::error::{ClientError, Refusal};
use crate::link::{Delivery, Intake, Link, LinkId, LinkKind};
use crate::session::Session;
use crate::workload::{STAMP_PROPERTY, now_ns};

/// Placeholder of a refusal (an attach with a null terminus) until its detach says why.
const REFUSED: &str = "the broker refused the link";

/// `rejected: <condition> <description>` for counters of failed outcomes.
fn state_text(s: Option<&DeliveryState>) -> String {
    match s {
        Some(DeliveryState::Rejected { .. }) => format!("rejected: {}", Refusal::from_state(s)),
        other => format!("{other:?}"),
    }
}

impl Connection {
    pub(crate) fn process_input(&mut self) -> Result<(), ClientError> {
        loop {
            let Some(size) = keybus_amqp::peek_frame_size(&self.rbuf) else {
                return Ok(());
            };
            if size > LOCAL_MAX_FRAME {
                return Err(DecodeError::FrameTooLarge {
                    size,
                    max: LOCAL_MAX_FRAME,
                }
                .into());
            }
            if self.rbuf.len() < size as usize {
                self.rbuf.reserve(size as usize);
                return Ok(());
            }
            let bytes = self.rbuf.split_to(size as usize).freeze();
            let Some((frame, _)) = keybus_amqp::decode_frame_bytes(&bytes, LOCAL_MAX_FRAME)? else {
                return Err(ClientError::Protocol("incomplete frame".into()));
            };
            self.frames_in += 1;
            self.on_frame(frame)?;
        }
    }

    pub(crate) fn session_by_remote(&mut self, channel: u16) -> Option<&mut Session> {
        self.sessions
            .iter_mut()
            .find(|s| s.remote_channel == Some(channel))
    }

    pub(crate) fn on_frame(&mut self, frame: Frame) -> Result<(), ClientError> {
        let channel = frame.channel;
        let (performative, payload) = match frame.body {
            FrameBody::Empty => return Ok(()),
            FrameBody::Sasl(b) => {
                return Err(ClientError::Protocol(format!(
                    "unexpected SASL frame {b:?}"
                )));
            }
            FrameBody::Amqp {
                performative,
                payload,
            } => (performative, payload),
        };
        match performative {
            Performative::Open(o) => {
                self.remote_max_frame = o.max_frame_size.clamp(512, LOCAL_MAX_FRAME);
                self.heartbeat = o
                    .idle_time_out
                    .filter(|&ms| ms > 0)
                    .map(|ms| Duration::from_millis(u64::from(ms) / 2));
                self.opened = true;
            }
            Performative::Close(c) => {
                self.closed = Some(Refusal::from_error(c.error.as_ref()).to_string());
                self.wbuf.clear();
                if !self.close_sent {
                    self.close_sent = true;
                    self.frame(0, Performative::Close(Close::default()));
                }
            }
            Performative::Begin(b) => {
                let Some(ours) = b.remote_channel else {
                    return Err(ClientError::Protocol(
                        "the broker began a session we did not ask for".into(),
                    ));
                };
                let Some(s) = self.sessions.get_mut(usize::from(ours)) else {
                    return Err(ClientError::Protocol(format!(
                        "begin for unknown channel {ours}"
                    )));
                };
                s.remote_channel = Some(channel);
                s.remote_incoming_window = b.incoming_window;
                s.next_incoming_id = b.next_outgoing_id;
            }
            Performative::End(e) => {
                let reply = if let Some(s) = self.session_by_remote(channel) {
                    s.ended = true;
                    for l in &mut s.links {
                        l.detached.get_or_insert_with(|| {
                            let mut r = Refusal::from_error(e.error.as_ref());
                            r.description = format!("session ended: {}", r.description);
                            r
                        });
                    }
                    Some(s.channel)
                } else {
                    None
                };
                if let Some(ch) = reply {
                    self.frame(ch, Performative::End(End::default()));
                }
            }
            Performative::Attach(a) => {
                let Some(s) = self.session_by_remote(channel) else {
                    return Ok(());
                };
                if let Some(l) = s.links.iter_mut().find(|l| l.name == a.name) {
                    l.remote_handle = Some(a.handle);
                    l.attached = true;
                    l.remote_source.clone_from(&a.source);
                    match &mut l.kind {
                        LinkKind::Receiver(r) => {
                            r.delivery_count = a.initial_delivery_count.unwrap_or(0);
                            if a.source.is_none() {
                                l.detached =
                                    Some(Refusal::local(format!("{REFUSED} (null source)")));
                            }
                        }
                        LinkKind::Sender(_) => {
                            if a.target.is_none() {
                                l.detached =
                                    Some(Refusal::local(format!("{REFUSED} (null target)")));
                            }
                        }
                    }
                }
            }
            Performative::Detach(d) => {
                let mut reply = None;
                if let Some(s) = self.session_by_remote(channel)
                    && let Some(l) = s
                        .links
                        .iter_mut()
                        .find(|l| l.remote_handle == Some(d.handle))
                {
                    let why = if d.error.is_some() {
                        Refusal::from_error(d.error.as_ref())
                    } else {
                        Refusal::local("detached without error")
                    };
                    // A refusal is an attach with a null terminus followed by this detach,
                    // which carries the reason: prefer it.
                    match &mut l.detached {
                        Some(prev) if prev.description.starts_with(REFUSED) => *prev = why,
                        Some(_) => {}
                        None => l.detached = Some(why),
                    }
                    reply = Some((s.channel, l.handle));
                }
                if let Some((ch, handle)) = reply {
                    self.frame(
                        ch,
                        Performative::Detach(Detach {
                            handle,
                            closed: true,
                            error: None,
                        }),
                    );
                }
            }
            Performative::Flow(f) => self.on_flow(channel, &f),
            Performative::Transfer(t) => self.on_transfer(channel, t, payload),
            Performative::Disposition(d) => self.on_disposition(channel, &d),
        }
        Ok(())
    }

    pub(crate) fn on_flow(&mut self, channel: u16, f: &Flow) {
        let mut echo = None;
        let Some(s) = self.session_by_remote(channel) else {
            return;
        };
        // Transfers the broker will still take: its next-incoming-id + window - our next id.
        let limit = f
            .next_incoming_id
            .unwrap_or(0)
            .wrapping_add(f.incoming_window);
        s.remote_incoming_window = limit
            .wrapping_sub(s.next_outgoing_id)
            .min(f.incoming_window);
        if let Some(h) = f.handle
            && let Some(li) = s.links.iter().position(|l| l.remote_handle == Some(h))
        {
            if let Some(l) = s.links.get_mut(li) {
                match &mut l.kind {
                    LinkKind::Sender(snd) => {
                        if let Some(credit) = f.link_credit {
                            let peer_dc = f.delivery_count.unwrap_or(snd.delivery_count);
                            let c = peer_dc
                                .wrapping_add(credit)
                                .wrapping_sub(snd.delivery_count);
                            snd.credit = if c > 1 << 30 { 0 } else { c };
                        }
                    }
                    LinkKind::Receiver(r) => {
                        if let Some(dc) = f.delivery_count {
                            // The broker's view (after a drain it may have advanced the count).
                            let limit = r.delivery_count.wrapping_add(r.credit);
                            r.delivery_count = dc;
                            r.credit = limit.wrapping_sub(dc).min(1 << 30);
                            if let Some(c) = f.link_credit {
                                r.credit = r.credit.min(c);
                            }
                        }
                    }
                }
            }
            if f.echo {
                echo = Some(LinkId {
                    session: usize::from(s.channel),
                    link: li,
                });
            }
        }
        if let Some(id) = echo {
            let credit = match self.link(id).map(|l| &l.kind) {
                Some(LinkKind::Sender(s)) => s.credit,
                Some(LinkKind::Receiver(r)) => r.credit,
                None => 0,
            };
            self.queue_link_flow(id, credit);
        }
    }

    pub(crate) fn on_transfer(&mut self, channel: u16, t: Transfer, payload: Bytes) {
        let mut settle_collected = None;
        let Some(s) = self.session_by_remote(channel) else {
            return;
        };
        s.next_incoming_id = s.next_incoming_id.wrapping_add(1);
        s.incoming_window = s.incoming_window.saturating_sub(1);
        let Some(l) = s
            .links
            .iter_mut()
            .find(|l| l.remote_handle == Some(t.handle))
        else {
            return;
        };
        let LinkKind::Receiver(r) = &mut l.kind else {
            return;
        };
        if let Some(id) = t.delivery_id
            && r.partial.is_none()
        {
            r.current_delivery = id;
            r.current_tag = t.delivery_tag.clone().unwrap_or_default();
        }
        let first_frame = r.partial.is_none();
        if first_frame {
            r.credit = r.credit.saturating_sub(1);
            r.delivery_count = r.delivery_count.wrapping_add(1);
        }
        if t.aborted {
            r.partial = None;
            return;
        }
        let settled = t.settled.unwrap_or(false);
        let whole = if t.more || !first_frame {
            let (_, st, buf) = r
                .partial
                .get_or_insert_with(|| (r.current_delivery, settled, BytesMut::new()));
            *st |= settled;
            buf.extend_from_slice(&payload);
            if t.more {
                return;
            }
            match r.partial.take() {
                Some((_, st, buf)) => (st, buf.freeze()),
                None => return,
            }
        } else {
            (settled, payload)
        };
        let (settled, body) = whole;
        let id = r.current_delivery;
        r.received += 1;
        r.last_delivery = Some(Instant::now());
        if r.intake == Intake::Hold {
            match Message::decode(&body) {
                Ok(message) => r.held.push_back(Delivery {
                    delivery_id: id,
                    tag: r.current_tag.clone(),
                    settled,
                    raw: body,
                    message,
                }),
                Err(e) => r.last_error = Some(format!("undecodable message: {e}")),
            }
        } else if r.intake == Intake::Reply {
            r.inbox.push(body);
            if !settled {
                settle_collected = Some(id);
            }
        } else {
            if r.work.as_ref().is_some_and(|w| w.measure_latency) {
                let now = now_ns();
                if let Ok(m) = Message::decode(&body)
                    && let Some(sent) = m
                        .application_properties
                        .as_deref()
                        .and_then(|p| keybus_amqp::map_get(p, STAMP_PROPERTY))
                        .and_then(Value::as_i64)
                {
                    let us = (now.saturating_sub(sent) / 1000).clamp(0, i64::from(u32::MAX));
                    r.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
                }
            }
            if settled {
                // Pre-settled (receive-and-delete): nothing to complete.
                r.completed += 1;
                if let Some(t) = r.work.as_ref().and_then(|w| w.tally.as_ref()) {
                    t.completed.fetch_add(1, Ordering::Relaxed);
                }
            } else {
                match r.pending.last_mut() {
                    Some((_, last)) if last.wrapping_add(1) == id => *last = id,
                    _ => r.pending.push((id, id)),
                }
            }
        }
        if let Some(id) = settle_collected {
            let ch = s.channel;
            let d = Disposition {
                role: Role::Receiver,
                first: id,
                last: None,
                settled: true,
                state: Some(DeliveryState::Accepted),
                batchable: false,
            };
            self.frame(ch, Performative::Disposition(d));
        }
    }

    pub(crate) fn on_disposition(&mut self, channel: u16, d: &Disposition) {
        let Some(s) = self.session_by_remote(channel) else {
            return;
        };
        let last = d.last.unwrap_or(d.first);
        let span = u64::from(last.wrapping_sub(d.first)) + 1;
        match d.role {
            // The broker as receiver: about our outgoing deliveries.
            Role::Receiver => {
                if !d.settled {
                    return;
                }
                let Some(li) = s.sender_index() else { return };
                let Some(Link {
                    kind: LinkKind::Sender(snd),
                    ..
                }) = s.links.get_mut(li)
                else {
                    return;
                };
                let ok = matches!(d.state, Some(DeliveryState::Accepted) | None);
                let mut id = d.first;
                for _ in 0..span.min(1 << 20) {
                    let idx = id.wrapping_sub(snd.unsettled_base) as usize;
                    if let Some(slot) = snd.unsettled.get_mut(idx)
                        && !*slot
                    {
                        *slot = true;
                        snd.outstanding = snd.outstanding.saturating_sub(1);
                        snd.settled_total += 1;
                        if snd.work.is_none() {
                            snd.outcomes.insert(id, d.state.clone());
                        }
                        if ok {
                            snd.accepted += 1;
                        } else {
                            snd.rejected += 1;
                            snd.last_error = Some(state_text(d.state.as_ref()));
                        }
                    }
                    id = id.wrapping_add(1);
                }
                while snd.unsettled.front() == Some(&true) {
                    snd.unsettled.pop_front();
                    snd.unsettled_base = snd.unsettled_base.wrapping_add(1);
                }
            }
            // The broker as sender: the settled echo of our completions.
            Role::Sender => {
                if !d.settled {
                    return;
                }
                let Some(li) = s.receiver_index() else { return };
                let Some(Link {
                    kind: LinkKind::Receiver(r),
                    ..
                }) = s.links.get_mut(li)
                else {
                    return;
                };
                if r.intake == Intake::Hold {
                    let mut id = d.first;
                    for _ in 0..span.min(1 << 20) {
                        r.echoes.insert(id, d.state.clone());
                        id = id.wrapping_add(1);
                    }
                    return;
                }
                let n = span.min(r.awaiting_echo);
                r.awaiting_echo -= n;
                if matches!(d.state, Some(DeliveryState::Accepted)) {
                    r.completed += n;
                    if let Some(t) = r.work.as_ref().and_then(|w| w.tally.as_ref()) {
                        t.completed.fetch_add(n, Ordering::Relaxed);
                    }
                } else {
                    r.complete_errors += n;
                    r.last_error = Some(state_text(d.state.as_ref()));
                }
            }
        }
    }
}
