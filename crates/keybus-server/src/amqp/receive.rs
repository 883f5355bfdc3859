//! Receiving from an entity: link credit (`flow`) and the pump that turns credit into
//! outgoing transfers, registering the link with the runtime when it waits.

use std::sync::Arc;

use keybus_amqp::{Bytes, BytesMut, Flow, Performative, Transfer};
use keybus_core::{Delivery, ReceiveMode};

use super::events::LinkWaker;
use super::state::{Conn, LinkKind, SENDER_CREDIT, SessionBinding, session_flow};
use crate::runtime::{Waiter, Wants};

impl Conn {
    pub(super) fn grant_credit(
        &mut self,
        channel: u16,
        handle: u32,
        delivery_count: u32,
        credit: u32,
    ) {
        if let Some(s) = self.sessions.get(&channel) {
            let mut flow = session_flow(s);
            flow.handle = Some(handle);
            flow.delivery_count = Some(delivery_count);
            flow.link_credit = Some(credit);
            self.write(channel, Performative::Flow(flow));
        }
    }

    pub(super) fn on_link_flow(&mut self, channel: u16, f: &Flow) {
        let Some(handle) = f.handle else { return };
        let Some(s) = self.sessions.get_mut(&channel) else {
            return;
        };
        let Some(link) = s.links.get_mut(&handle) else {
            return;
        };
        let LinkKind::EntityOut {
            credit,
            delivery_count,
            ..
        } = &mut link.kind
        else {
            if f.echo {
                // Echo for links we receive on: restate our credit. A sender link whose
                // credit is withheld (the store is busy) hears what it has left, not more.
                let withheld = matches!(link.kind, LinkKind::EntityIn { .. })
                    && link.in_credit < SENDER_CREDIT / 2;
                let (dc, credit) = if withheld {
                    (link.in_count, link.in_credit)
                } else {
                    (f.delivery_count.unwrap_or(0), SENDER_CREDIT)
                };
                self.grant_credit(channel, handle, dc, credit);
            }
            return;
        };
        let peer_count = f.delivery_count.unwrap_or(*delivery_count);
        let limit = peer_count.wrapping_add(f.link_credit.unwrap_or(0));
        *credit = limit.wrapping_sub(*delivery_count);
        if *credit > 1 << 30 {
            *credit = 0;
        }
        self.pump(channel, handle);
        if f.drain || f.echo {
            let Some(s) = self.sessions.get_mut(&channel) else {
                return;
            };
            let Some(link) = s.links.get_mut(&handle) else {
                return;
            };
            if let LinkKind::EntityOut {
                credit,
                delivery_count,
                ..
            } = &mut link.kind
            {
                if f.drain {
                    *delivery_count = delivery_count.wrapping_add(*credit);
                    *credit = 0;
                }
                let mut flow = session_flow(s);
                if let Some(LinkKind::EntityOut {
                    credit,
                    delivery_count,
                    ..
                }) = s.links.get(&handle).map(|l| &l.kind)
                {
                    flow.handle = Some(handle);
                    flow.delivery_count = Some(*delivery_count);
                    flow.link_credit = Some(*credit);
                    flow.drain = f.drain;
                }
                self.write(channel, Performative::Flow(flow));
            }
        }
    }

    /// Deliver as many messages as credit, session window and the unsettled limit allow; if
    /// credit is left, register to be woken when messages arrive.
    pub(crate) fn pump(&mut self, channel: u16, handle: u32) {
        if let Some(err) = self.link_gone(channel, handle) {
            self.detach_gone(channel, handle, err);
            return;
        }
        let max_unsettled = self.broker.config().limits.max_unsettled_per_link;
        let now = self.broker.now();
        let tx = self.tx.clone();
        let Some(s) = self.sessions.get_mut(&channel) else {
            return;
        };
        let window = s.remote_incoming_window;
        let Some(link) = s.links.get_mut(&handle) else {
            return;
        };
        let generation = link.generation;
        let LinkKind::EntityOut {
            entity,
            subscription,
            sub,
            mode,
            credit,
            waiting,
            unsettled,
            session,
            ..
        } = &mut link.kind
        else {
            return;
        };
        let held = match session {
            None => None,
            Some(SessionBinding::Held(g)) => Some((g.id.clone(), g.holder)),
            Some(SessionBinding::Waiting(_)) => return,
        };
        if *credit == 0 {
            return;
        }
        let room = max_unsettled.saturating_sub(*unsettled);
        let want = (*credit).min(window).min(room) as usize;
        let entity = entity.clone();
        let (sub, mode) = (*sub, *mode);
        let mut deliveries = Vec::new();
        {
            let mut st = entity.lock();
            if let Some(q) = st.receiver(subscription.as_deref()) {
                while deliveries.len() < want {
                    let next = match &held {
                        None => q.acquire(sub, mode, now),
                        Some((id, holder)) => q.acquire_in_session(id, *holder, mode, now),
                    };
                    match next {
                        Some(d) => deliveries.push(d),
                        None => break,
                    }
                }
            }
            if !deliveries.is_empty() {
                st.accessed_at = now;
            }
            if deliveries.len() < *credit as usize && !*waiting {
                st.add_waiter(Waiter::new(
                    Arc::new(LinkWaker {
                        tx,
                        channel,
                        handle,
                        generation,
                    }),
                    subscription.clone(),
                    sub,
                    held.map_or(Wants::Message, |(id, _)| Wants::Session(id)),
                ));
                *waiting = true;
            }
            if let Some(fut) = entity.submit(&mut st) {
                tokio::spawn(async move {
                    if let Err(err) = fut.await {
                        tracing::error!(%err, "store commit failed for receive-and-delete");
                    }
                });
            }
        }
        let n = deliveries.len() as u32;
        let subscription = subscription.clone();
        let LinkKind::EntityOut {
            credit,
            delivery_count,
            unsettled,
            ..
        } = &mut link.kind
        else {
            return;
        };
        *credit -= n;
        *delivery_count = delivery_count.wrapping_add(n);
        let settled = mode == ReceiveMode::ReceiveAndDelete;
        if !settled {
            *unsettled += n;
        }
        for d in deliveries {
            let id = s.next_delivery_id;
            s.next_delivery_id = id.wrapping_add(1);
            if !settled {
                s.unsettled.insert(
                    id,
                    (handle, d.lock_token, entity.clone(), subscription.clone()),
                );
            }
            let tag = d.lock_token.to_delivery_tag();
            let frames = write_delivery(
                &mut self.out,
                self.peer_max_frame,
                channel,
                handle,
                id,
                &tag,
                settled,
                &d,
            );
            s.next_outgoing_id = s.next_outgoing_id.wrapping_add(frames);
            s.remote_incoming_window = s.remote_incoming_window.saturating_sub(frames);
        }
    }

    pub(super) fn on_wake(&mut self, channel: u16, handle: u32, generation: u64) {
        let Some(link) = self
            .sessions
            .get_mut(&channel)
            .and_then(|s| s.links.get_mut(&handle))
        else {
            return;
        };
        if link.generation != generation {
            return;
        }
        if let Some(err) = self.link_gone(channel, handle) {
            self.detach_gone(channel, handle, err);
            return;
        }
        let Some(link) = self
            .sessions
            .get_mut(&channel)
            .and_then(|s| s.links.get_mut(&handle))
        else {
            return;
        };
        if let LinkKind::EntityOut {
            waiting, session, ..
        } = &mut link.kind
        {
            *waiting = false;
            if let Some(SessionBinding::Waiting(a)) = session {
                let a = (**a).clone();
                self.attach_session(channel, a, None);
                return;
            }
        }
        self.pump(channel, handle);
    }
}

/// Write a delivery as transfer frames: one frame encoded straight from the stored sections
/// into the output when it fits the peer's max frame size (the message is copied once), else
/// encoded first and split ([`write_transfer`]). Returns the number of frames written.
#[allow(clippy::too_many_arguments)]
fn write_delivery(
    out: &mut BytesMut,
    peer_max_frame: u32,
    channel: u16,
    handle: u32,
    delivery_id: u32,
    tag: &[u8],
    settled: bool,
    d: &Delivery,
) -> u32 {
    let size = d.encoded_size();
    if size > frame_room(peer_max_frame) {
        let payload = d.encoded();
        return write_transfer(
            out,
            peer_max_frame,
            channel,
            handle,
            delivery_id,
            tag,
            settled,
            &payload,
        );
    }
    let t = Transfer {
        handle,
        delivery_id: Some(delivery_id),
        delivery_tag: Some(Bytes::copy_from_slice(tag)),
        message_format: Some(0),
        settled: Some(settled),
        more: false,
        ..Default::default()
    };
    out.reserve(size + 128);
    keybus_amqp::encode_amqp_frame_with(channel, &Performative::Transfer(t), out, |buf| {
        d.encode(buf)
    });
    1
}

/// Payload bytes a transfer frame holds within the peer's max frame size (room is left for
/// the frame header and the transfer performative).
fn frame_room(peer_max_frame: u32) -> usize {
    (peer_max_frame as usize).saturating_sub(128).max(256)
}

/// Write one delivery as transfer frames no larger than the peer's max frame size. Returns
/// the number of frames written.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_transfer(
    out: &mut BytesMut,
    peer_max_frame: u32,
    channel: u16,
    handle: u32,
    delivery_id: u32,
    tag: &[u8],
    settled: bool,
    payload: &[u8],
) -> u32 {
    let room = frame_room(peer_max_frame);
    let mut frames = 0;
    let mut rest = payload;
    loop {
        let first = frames == 0;
        let n = rest.len().min(room);
        let (chunk, tail) = rest.split_at(n);
        let more = !tail.is_empty();
        let t = Transfer {
            handle,
            delivery_id: first.then_some(delivery_id),
            delivery_tag: first.then(|| Bytes::copy_from_slice(tag)),
            message_format: first.then_some(0),
            settled: first.then_some(settled),
            more,
            ..Default::default()
        };
        keybus_amqp::encode_amqp_frame(channel, &Performative::Transfer(t), chunk, out);
        frames += 1;
        rest = tail;
        if !more {
            return frames;
        }
    }
}
