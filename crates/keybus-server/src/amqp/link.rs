//! Links: attach and detach, incoming transfers (sends, `$cbs` and `$management` requests),
//! credit and outgoing transfers (`pump`), and settlement by disposition.

use std::sync::Arc;

use keybus_amqp::{
    AmqpError, Attach, Bytes, BytesMut, DeliveryState, Detach, Disposition, Flow, Message,
    Performative, ReceiverSettleMode, Role, SenderSettleMode, Source, Target, Transfer, Value,
};
use keybus_core::{
    IncomingMessage, LockToken, NodeAddress, NodeKind, Outcome, ReceiveMode, SubQueue,
};

use super::access::unauthorized;
use super::connection::{Conn, ConnError};
use super::errors::{self, error};
use crate::broker::{ConnEvent, Entity, SendResult, Waiter, Wants};
use crate::config::Right;

/// Credit we grant to client senders, topped up when half is used.
const SENDER_CREDIT: u32 = 1000;

/// What a link is attached to.
pub enum LinkKind {
    /// Client sends messages to an entity.
    EntityIn { entity: Arc<Entity> },
    /// Client receives messages from an entity (sub-queue).
    EntityOut {
        entity: Arc<Entity>,
        subscription: Option<String>,
        sub: SubQueue,
        mode: ReceiveMode,
        credit: u32,
        delivery_count: u32,
        waiting: bool,
        unsettled: u32,
        /// Set for session receivers.
        session: Option<SessionBinding>,
    },
    /// Requests to `$cbs`.
    CbsIn,
    /// Requests to `<entity>/$management`.
    MgmtIn {
        entity: Arc<Entity>,
        subscription: Option<String>,
        sub: SubQueue,
    },
    /// Responses from `$cbs` or `$management` (`node` is the normalised node address).
    ReplyOut {
        node: String,
        target: Option<String>,
        next_tag: u64,
    },
}

/// The session of a session receiver link.
pub enum SessionBinding {
    /// A next-available attach still looking for a session: its reply is deferred.
    Waiting(Box<Attach>),
    /// The link holds this session's lock.
    Held(SessionGuard),
}

/// A held session lock; dropping it (detach, session end, connection loss) releases the
/// session, so it never outlives its link.
pub struct SessionGuard {
    pub id: String,
    pub holder: u64,
    entity: Arc<Entity>,
    subscription: Option<String>,
    clock: Arc<dyn keybus_core::Clock>,
}

impl SessionGuard {
    pub(super) fn new(
        id: String,
        holder: u64,
        entity: Arc<Entity>,
        subscription: Option<String>,
        clock: Arc<dyn keybus_core::Clock>,
    ) -> SessionGuard {
        SessionGuard {
            id,
            holder,
            entity,
            subscription,
            clock,
        }
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let now = self.clock.now();
        let mut st = self.entity.lock();
        st.session_links.remove(&self.holder);
        if let Some(q) = st.receiver(self.subscription.as_deref()) {
            q.release_session(&self.id, self.holder, now);
        }
        if let Some(fut) = self.entity.submit(&mut st)
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(async move {
                if let Err(err) = fut.await {
                    tracing::error!(%err, "store commit failed releasing a session");
                }
            });
        }
        st.wake();
    }
}

/// The session filter of a receiver's attach: `None` for a plain receiver, `Some(None)` for
/// "next available session", `Some(Some(id))` for a named session (§4.4).
fn session_filter(a: &Attach) -> Option<Option<String>> {
    let v = a
        .source
        .as_ref()
        .and_then(|s| s.filter.as_ref())
        .and_then(|f| keybus_amqp::map_get(f, SESSION_FILTER))?;
    Some(v.as_str().map(str::to_string))
}

pub(super) const SESSION_FILTER: &str = "com.microsoft:session-filter";

/// .NET ticks for a Unix time in milliseconds (`com.microsoft:locked-until-utc`).
pub(super) fn dotnet_ticks(unix_ms: i64) -> i64 {
    unix_ms
        .saturating_mul(10_000)
        .saturating_add(621_355_968_000_000_000)
}

/// A partly received multi-frame transfer.
pub struct Partial {
    delivery_id: u32,
    format: u32,
    settled: bool,
    buf: BytesMut,
    oversize: bool,
}

/// One attached link.
pub struct Link {
    /// Counts the link in `keybus_active_links` while it lives.
    _gauge: crate::metrics::LinkGauge,
    pub name: String,
    pub kind: LinkKind,
    pub generation: u64,
    /// The entity path and right that authorised the attach (re-checked on token expiry).
    pub auth: Option<(String, Right)>,
    partial: Option<Partial>,
    /// For links the client sends on: credit left and the client's delivery count.
    in_credit: u32,
    in_count: u32,
}

/// A send waiting for the end of the input batch so its store write can share a commit.
pub struct PendingSend {
    pub channel: u16,
    pub delivery_id: u32,
    pub settled: bool,
    pub entity: Arc<Entity>,
    pub result: Result<Vec<IncomingMessage>, (&'static str, String)>,
}

fn node_key(addr: &NodeAddress) -> String {
    match addr.kind {
        NodeKind::Cbs => "$cbs".into(),
        NodeKind::Management(sub) => format!("{}{}/$management", addr.entity, sub_suffix(sub)),
        NodeKind::Entity(sub) => format!("{}{}", addr.entity, sub_suffix(sub)),
    }
}

fn sub_suffix(sub: SubQueue) -> &'static str {
    match sub {
        SubQueue::Main => "",
        SubQueue::DeadLetter => "/$deadletterqueue",
        SubQueue::TransferDeadLetter => "/$transfer/$deadletterqueue",
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
        DeliveryState::Received { .. } => None,
    }
}

/// The state we echo for a successful settlement (wire reference §6.2).
fn echo_of(state: &DeliveryState) -> DeliveryState {
    match state {
        DeliveryState::Rejected { .. } => DeliveryState::Rejected { error: None },
        other => other.clone(),
    }
}

impl Conn {
    pub(super) fn on_session_frame(
        &mut self,
        channel: u16,
        p: Performative,
        payload: Bytes,
    ) -> Result<(), ConnError> {
        match p {
            Performative::Attach(a) => self.on_attach(channel, a),
            Performative::Detach(d) => {
                self.on_detach(channel, d);
                Ok(())
            }
            Performative::Flow(f) => {
                self.on_session_flow(channel, &f);
                self.on_link_flow(channel, &f);
                Ok(())
            }
            Performative::Transfer(t) => {
                self.count_incoming_transfer(channel);
                self.on_transfer(channel, t, payload)
            }
            Performative::Disposition(d) => {
                self.on_disposition(channel, d);
                Ok(())
            }
            _ => Err(ConnError(error(
                errors::NOT_ALLOWED,
                "unexpected performative",
            ))),
        }
    }

    fn reply_attach(&mut self, channel: u16, a: &Attach, max_message_size: u64) {
        self.reply_attach_with(channel, a, max_message_size, None);
    }

    pub(super) fn reply_attach_with(
        &mut self,
        channel: u16,
        a: &Attach,
        max_message_size: u64,
        properties: Option<Vec<(Value, Value)>>,
    ) {
        let we_send = a.role == Role::Receiver;
        let reply = Attach {
            name: a.name.clone(),
            handle: a.handle,
            role: if we_send {
                Role::Sender
            } else {
                Role::Receiver
            },
            snd_settle_mode: a.snd_settle_mode,
            rcv_settle_mode: if we_send {
                a.rcv_settle_mode
            } else {
                ReceiverSettleMode::First
            },
            source: Some(a.source.clone().unwrap_or_default()),
            target: Some(a.target.clone().unwrap_or_default()),
            initial_delivery_count: we_send.then_some(0),
            max_message_size: Some(max_message_size),
            properties,
            ..Default::default()
        };
        self.write(channel, Performative::Attach(reply));
    }

    /// Refuse a link: attach with our terminus null, then detach with the error (§4.6).
    pub(super) fn refuse(&mut self, channel: u16, a: &Attach, err: AmqpError) {
        let we_send = a.role == Role::Receiver;
        let reply = Attach {
            name: a.name.clone(),
            handle: a.handle,
            role: if we_send {
                Role::Sender
            } else {
                Role::Receiver
            },
            snd_settle_mode: a.snd_settle_mode,
            rcv_settle_mode: a.rcv_settle_mode,
            source: if we_send { None } else { a.source.clone() },
            target: if we_send { a.target.clone() } else { None },
            initial_delivery_count: we_send.then_some(0),
            ..Default::default()
        };
        self.write(channel, Performative::Attach(reply));
        self.write(
            channel,
            Performative::Detach(Detach {
                handle: a.handle,
                closed: true,
                error: Some(err),
            }),
        );
    }

    fn add_link(
        &mut self,
        channel: u16,
        a: &Attach,
        kind: LinkKind,
        auth: Option<(String, Right)>,
    ) {
        let generation = self.next_generation;
        self.next_generation += 1;
        if let Some(s) = self.sessions.get_mut(&channel) {
            s.links.insert(
                a.handle,
                Link {
                    _gauge: crate::metrics::LinkGauge::new(&self.broker.metrics),
                    name: a.name.clone(),
                    kind,
                    generation,
                    auth,
                    partial: None,
                    in_credit: SENDER_CREDIT,
                    in_count: a.initial_delivery_count.unwrap_or(0),
                },
            );
        }
    }

    fn on_attach(&mut self, channel: u16, a: Attach) -> Result<(), ConnError> {
        let limit = self.broker.config.limits.max_links_per_session;
        let (count, in_use) = self
            .sessions
            .get(&channel)
            .map(|s| (s.links.len(), s.links.contains_key(&a.handle)))
            .unwrap_or((0, false));
        if in_use {
            return Err(ConnError(error(
                errors::NOT_ALLOWED,
                format!("handle {} is already attached", a.handle),
            )));
        }
        if count >= limit {
            self.refuse(
                channel,
                &a,
                error(
                    errors::RESOURCE_LIMIT,
                    format!("the session already has the maximum of {limit} links"),
                ),
            );
            return Ok(());
        }
        let client_sends = a.role == Role::Sender;
        let address = if client_sends {
            a.target.as_ref().and_then(|t| t.address.clone())
        } else {
            a.source.as_ref().and_then(|s| s.address.clone())
        };
        let Some(addr) = address.as_deref().and_then(NodeAddress::parse) else {
            self.refuse(
                channel,
                &a,
                error(
                    errors::INVALID_FIELD,
                    format!("invalid node address {address:?}"),
                ),
            );
            return Ok(());
        };
        if addr.kind == NodeKind::Cbs {
            if client_sends {
                self.reply_attach(channel, &a, 1024 * 1024);
                self.grant_credit(
                    channel,
                    a.handle,
                    a.initial_delivery_count.unwrap_or(0),
                    SENDER_CREDIT,
                );
                self.add_link(channel, &a, LinkKind::CbsIn, None);
            } else {
                self.reply_attach(channel, &a, 1024 * 1024);
                let target = a.target.as_ref().and_then(|t| t.address.clone());
                self.add_link(
                    channel,
                    &a,
                    LinkKind::ReplyOut {
                        node: "$cbs".into(),
                        target,
                        next_tag: 0,
                    },
                    None,
                );
            }
            return Ok(());
        }
        let Some((entity, subscription)) = self.broker.resolve(&addr.entity) else {
            let host = self.hostname.clone();
            self.refuse(channel, &a, errors::entity_not_found(&host, &addr.entity));
            return Ok(());
        };
        let (max_size, is_topic, requires_session) = {
            let st = entity.lock();
            let requires_session = st
                .receiver_ref(subscription.as_deref())
                .is_some_and(|q| q.properties().requires_session);
            (
                st.max_message_size(),
                matches!(st.machine, crate::broker::Machine::Topic(_)),
                requires_session,
            )
        };
        let sub = addr.sub_queue();
        // Tokens are checked against the node's own path: a token for `q/$DeadLetterQueue`
        // covers that sub-queue (and its `$management`), one for `q` covers all of them.
        let path = node_key(&addr);
        match addr.kind {
            NodeKind::Management(_) => {
                let ok = [Right::Listen, Right::Send, Right::Manage]
                    .iter()
                    .any(|r| self.authorized(&path, *r));
                if !ok {
                    // Audited as the right most management operations need.
                    let err = self
                        .check_audited("authz", &path, Right::Listen, Some(&a.name), None)
                        .err()
                        .unwrap_or_else(|| unauthorized(&path, Right::Listen));
                    self.refuse(channel, &a, err);
                    return Ok(());
                }
                if is_topic && subscription.is_none() && sub != SubQueue::Main {
                    self.refuse(
                        channel,
                        &a,
                        error(errors::NOT_ALLOWED, "a topic has no dead-letter sub-queue"),
                    );
                    return Ok(());
                }
                self.reply_attach(channel, &a, max_size);
                if client_sends {
                    self.grant_credit(
                        channel,
                        a.handle,
                        a.initial_delivery_count.unwrap_or(0),
                        SENDER_CREDIT,
                    );
                    self.add_link(
                        channel,
                        &a,
                        LinkKind::MgmtIn {
                            entity,
                            subscription,
                            sub,
                        },
                        None,
                    );
                } else {
                    let target = a.target.as_ref().and_then(|t| t.address.clone());
                    let node = node_key(&addr);
                    self.add_link(
                        channel,
                        &a,
                        LinkKind::ReplyOut {
                            node,
                            target,
                            next_tag: 0,
                        },
                        None,
                    );
                }
            }
            NodeKind::Entity(_) if client_sends => {
                if subscription.is_some() {
                    self.refuse(
                        channel,
                        &a,
                        error(
                            errors::NOT_ALLOWED,
                            "cannot send to a subscription; send to its topic",
                        ),
                    );
                    return Ok(());
                }
                if sub != SubQueue::Main {
                    self.refuse(
                        channel,
                        &a,
                        error(
                            errors::NOT_ALLOWED,
                            "cannot send to a dead-letter sub-queue",
                        ),
                    );
                    return Ok(());
                }
                if let Err(err) =
                    self.check_audited("authz", &path, Right::Send, Some(&a.name), None)
                {
                    self.refuse(channel, &a, err);
                    return Ok(());
                }
                self.reply_attach(channel, &a, max_size);
                self.grant_credit(
                    channel,
                    a.handle,
                    a.initial_delivery_count.unwrap_or(0),
                    SENDER_CREDIT,
                );
                self.add_link(
                    channel,
                    &a,
                    LinkKind::EntityIn { entity },
                    Some((path, Right::Send)),
                );
            }
            NodeKind::Entity(_) => {
                if is_topic && subscription.is_none() {
                    self.refuse(
                        channel,
                        &a,
                        error(
                            errors::NOT_ALLOWED,
                            "cannot receive from a topic; receive from one of its subscriptions",
                        ),
                    );
                    return Ok(());
                }
                if let Err(err) =
                    self.check_audited("authz", &path, Right::Listen, Some(&a.name), None)
                {
                    self.refuse(channel, &a, err);
                    return Ok(());
                }
                let mode = if a.snd_settle_mode == SenderSettleMode::Settled {
                    ReceiveMode::ReceiveAndDelete
                } else {
                    ReceiveMode::PeekLock
                };
                let filter = session_filter(&a);
                let needs_session = requires_session && sub == SubQueue::Main;
                let refusal = match (&filter, needs_session) {
                    (Some(_), false) if sub != SubQueue::Main => Some(
                        "a dead-letter sub-queue is not session-enabled; receive from it without a session",
                    ),
                    (Some(_), false) => Some(
                        "It is not possible for an entity that requires sessions to create a non-sessionful message receiver, and this entity does not require sessions: use a receiver without a session",
                    ),
                    (None, true) => Some(
                        "It is not possible for an entity that requires sessions to create a non-sessionful message receiver: use a session receiver",
                    ),
                    _ => None,
                };
                if let Some(text) = refusal {
                    self.refuse(channel, &a, error(errors::NOT_ALLOWED, text));
                    return Ok(());
                }
                let kind = LinkKind::EntityOut {
                    entity: entity.clone(),
                    subscription: subscription.clone(),
                    sub,
                    mode,
                    credit: 0,
                    delivery_count: 0,
                    waiting: false,
                    unsettled: 0,
                    session: None,
                };
                let Some(requested) = filter else {
                    self.reply_attach(channel, &a, max_size);
                    self.add_link(channel, &a, kind, Some((path, Right::Listen)));
                    return Ok(());
                };
                self.add_link(channel, &a, kind, Some((path, Right::Listen)));
                self.attach_session(channel, a, requested);
            }
            NodeKind::Cbs => {}
        }
        Ok(())
    }

    fn grant_credit(&mut self, channel: u16, handle: u32, delivery_count: u32, credit: u32) {
        if let Some(s) = self.sessions.get(&channel) {
            let mut flow = super::connection::session_flow(s);
            flow.handle = Some(handle);
            flow.delivery_count = Some(delivery_count);
            flow.link_credit = Some(credit);
            self.write(channel, Performative::Flow(flow));
        }
    }

    /// The client detaches. If we started the detach (a refused attach or a forced detach),
    /// the link is already gone and this is the client's answer: replying again would be a
    /// second detach, which rhea treats as a protocol error.
    fn on_detach(&mut self, channel: u16, d: Detach) {
        let attached = self
            .sessions
            .get_mut(&channel)
            .and_then(|s| s.links.remove(&d.handle))
            .is_some();
        if !attached {
            return;
        }
        self.write(
            channel,
            Performative::Detach(Detach {
                handle: d.handle,
                closed: d.closed,
                error: None,
            }),
        );
    }

    /// Detach a link from our side with an error.
    pub fn force_detach(&mut self, channel: u16, handle: u32, err: AmqpError) {
        if let Some(s) = self.sessions.get_mut(&channel) {
            s.links.remove(&handle);
        }
        self.write(
            channel,
            Performative::Detach(Detach {
                handle,
                closed: true,
                error: Some(err),
            }),
        );
    }

    /// `amqp:not-found` if the link's entity (or subscription) was deleted.
    fn link_gone(&self, channel: u16, handle: u32) -> Option<AmqpError> {
        let link = self.sessions.get(&channel)?.links.get(&handle)?;
        let (entity, subscription) = match &link.kind {
            LinkKind::EntityIn { entity } => (entity, None),
            LinkKind::EntityOut {
                entity,
                subscription,
                ..
            }
            | LinkKind::MgmtIn {
                entity,
                subscription,
                ..
            } => (entity, subscription.as_deref()),
            LinkKind::CbsIn | LinkKind::ReplyOut { .. } => return None,
        };
        let st = entity.lock();
        let gone = st.deleted
            || subscription.is_some_and(|s| match &st.machine {
                crate::broker::Machine::Topic(t) => t.subscription(s).is_none(),
                crate::broker::Machine::Queue(_) => true,
            });
        if !gone {
            return None;
        }
        let path = match subscription {
            Some(s) => format!("{}/Subscriptions/{s}", entity.name),
            None => entity.name.clone(),
        };
        Some(errors::entity_not_found(&self.hostname, &path))
    }

    /// Detach links whose entity or subscription was deleted (checked on the connection's
    /// ticker; receivers that wait are woken at deletion and detached at once).
    pub fn detach_gone_links(&mut self) {
        let mut gone = Vec::new();
        for (ch, s) in &self.sessions {
            for h in s.links.keys() {
                if let Some(err) = self.link_gone(*ch, *h) {
                    gone.push((*ch, *h, err));
                }
            }
        }
        for (ch, h, err) in gone {
            self.detach_gone(ch, h, err);
        }
    }

    /// Detach a link whose entity is gone; a session receiver whose attach is still
    /// unanswered (waiting for a session) is refused instead.
    fn detach_gone(&mut self, channel: u16, handle: u32, err: AmqpError) {
        let waiting = self
            .sessions
            .get(&channel)
            .and_then(|s| s.links.get(&handle))
            .is_some_and(|l| {
                matches!(
                    l.kind,
                    LinkKind::EntityOut {
                        session: Some(SessionBinding::Waiting(_)),
                        ..
                    }
                )
            });
        if !waiting {
            self.force_detach(channel, handle, err);
            return;
        }
        if let Some(LinkKind::EntityOut {
            session: Some(SessionBinding::Waiting(a)),
            ..
        }) = self
            .sessions
            .get_mut(&channel)
            .and_then(|s| s.links.remove(&handle))
            .map(|l| l.kind)
        {
            self.refuse(channel, &a, err);
        }
    }

    fn on_link_flow(&mut self, channel: u16, f: &Flow) {
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
                // Echo for links we receive on: restate our credit.
                let dc = f.delivery_count.unwrap_or(0);
                self.grant_credit(channel, handle, dc, SENDER_CREDIT);
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
                let mut flow = super::connection::session_flow(s);
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
    pub fn pump(&mut self, channel: u16, handle: u32) {
        if let Some(err) = self.link_gone(channel, handle) {
            self.detach_gone(channel, handle, err);
            return;
        }
        let max_unsettled = self.broker.config.limits.max_unsettled_per_link;
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
                st.waiters.push(Waiter {
                    tx,
                    subscription: subscription.clone(),
                    sub,
                    wants: held.map_or(Wants::Message, |(id, _)| Wants::Session(id)),
                    channel,
                    handle,
                    generation,
                });
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
            let frames = write_transfer(
                &mut self.out,
                self.peer_max_frame,
                channel,
                handle,
                id,
                &tag,
                settled,
                &d.encoded,
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

    fn on_transfer(&mut self, channel: u16, t: Transfer, payload: Bytes) -> Result<(), ConnError> {
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
            LinkKind::CbsIn => 64 * 1024,
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
                }
            }
        };
        let mut partial = partial;
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
        let (delivery_id, settled, format, oversize) = (
            partial.delivery_id,
            partial.settled,
            partial.format,
            partial.oversize,
        );
        link.in_count = link.in_count.wrapping_add(1);
        link.in_credit = link.in_credit.saturating_sub(1);
        let top_up = (link.in_credit < SENDER_CREDIT / 2).then(|| {
            link.in_credit = SENDER_CREDIT;
            link.in_count
        });
        match &mut link.kind {
            LinkKind::EntityIn { entity } => {
                let entity = entity.clone();
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

    fn settle_request(&mut self, channel: u16, delivery_id: u32) {
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
    pub fn flush_sends(&mut self) {
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
            // A store that refuses writes refuses the sends before they touch the entity.
            let refused = self
                .broker
                .store
                .status()
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
            let tx = self.tx.clone();
            let entity = entity.clone();
            let store = self.broker.store.clone();
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
                    tokio::spawn(async move {
                        let r = fut.await;
                        for (channel, results) in finish(r) {
                            let _ = tx.send(ConnEvent::SendsDone { channel, results });
                        }
                    });
                }
            }
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
                    self.broker.metrics.request("send", 200);
                    DeliveryState::Accepted
                }
                Err((cond, desc)) => {
                    let status = match cond {
                        errors::INTERNAL => 500,
                        "com.microsoft:server-busy" => 503,
                        _ => 400,
                    };
                    self.broker.metrics.request("send", status);
                    DeliveryState::Rejected {
                        error: Some(error(cond, desc)),
                    }
                }
            };
            states.push((id, state));
        }
        self.write_dispositions(channel, Role::Receiver, states);
    }

    /// Write settled dispositions, coalescing consecutive ids with equal states into ranges.
    fn write_dispositions(
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

    fn on_disposition(&mut self, channel: u16, d: Disposition) {
        if d.role != Role::Receiver {
            return;
        }
        let Some(state) = d.state.clone() else { return };
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
            .store
            .status()
            .err()
            .map(|e| errors::from_store(&e));
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
            let mut st = entity.lock();
            let r = match st.receiver(subscription.as_deref()) {
                Some(q) => q.settle(token, outcome.clone(), now),
                None => Err(keybus_core::SettleError::LockLost),
            };
            if let Some(f) = entity.submit(&mut st) {
                futures.push(f);
            }
            if matches!(outcome, Outcome::Release | Outcome::Abandon { .. }) && r.is_ok() {
                st.wake();
            }
            drop(st);
            results.push((
                id,
                match r {
                    Ok(()) => echo_of(&state),
                    Err(e) => DeliveryState::Rejected {
                        error: Some(errors::from_condition(e.condition(), e.to_string())),
                    },
                },
            ));
        }
        touched.sort_unstable();
        touched.dedup();
        if !d.settled {
            if futures.is_empty() {
                self.write_dispositions(channel, Role::Sender, results);
            } else {
                let tx = self.tx.clone();
                tokio::spawn(async move {
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
                    let _ = tx.send(ConnEvent::SettlesDone { channel, results });
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

    /// Find the link a response goes out on (wire reference §7.1 routing rule).
    pub fn reply_link(
        &self,
        channel: u16,
        reply_to: Option<&str>,
        node: &str,
    ) -> Option<(u16, u32)> {
        let replies = || {
            self.sessions.iter().flat_map(|(ch, s)| {
                s.links.iter().filter_map(move |(h, l)| match &l.kind {
                    LinkKind::ReplyOut { node, target, .. } => {
                        Some((*ch, *h, l.name.as_str(), node.as_str(), target.as_deref()))
                    }
                    _ => None,
                })
            })
        };
        if let Some(rt) = reply_to {
            if let Some((ch, h, ..)) = replies().find(|(_, _, _, _, t)| *t == Some(rt)) {
                return Some((ch, h));
            }
            if let Some((ch, h, ..)) = replies().find(|(_, _, name, _, _)| *name == rt) {
                return Some((ch, h));
            }
        }
        replies()
            .find(|(ch, _, _, n, _)| *ch == channel && n.eq_ignore_ascii_case(node))
            .or_else(|| replies().find(|(_, _, _, n, _)| n.eq_ignore_ascii_case(node)))
            .map(|(ch, h, ..)| (ch, h))
    }

    /// Send a response message pre-settled on a reply link.
    pub fn send_reply(&mut self, channel: u16, handle: u32, message: &[u8]) {
        let Some(s) = self.sessions.get_mut(&channel) else {
            return;
        };
        let Some(link) = s.links.get_mut(&handle) else {
            return;
        };
        let LinkKind::ReplyOut { next_tag, .. } = &mut link.kind else {
            return;
        };
        let tag = next_tag.to_be_bytes();
        *next_tag += 1;
        let id = s.next_delivery_id;
        s.next_delivery_id = id.wrapping_add(1);
        let frames = write_transfer(
            &mut self.out,
            self.peer_max_frame,
            channel,
            handle,
            id,
            &tag,
            true,
            message,
        );
        s.next_outgoing_id = s.next_outgoing_id.wrapping_add(frames);
        s.remote_incoming_window = s.remote_incoming_window.saturating_sub(frames);
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

/// Service Bus gives a message without a `message-id` one (a GUID in its 32-digit form), so
/// receivers (the JS SDK's lock renewer, duplicate detection) can rely on it.
pub fn with_message_id(mut m: Message) -> Message {
    let props = m.properties.get_or_insert_with(Default::default);
    if props.message_id.is_none() {
        props.message_id = Some(Value::String(format!("{:032x}", rand::random::<u128>())));
    }
    m
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
            with_message_id(Message::decode(&own).map_err(bad)?),
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

/// Write one delivery as transfer frames no larger than the peer's max frame size. Returns
/// the number of frames written.
#[allow(clippy::too_many_arguments)]
pub fn write_transfer(
    out: &mut BytesMut,
    peer_max_frame: u32,
    channel: u16,
    handle: u32,
    delivery_id: u32,
    tag: &[u8],
    settled: bool,
    payload: &[u8],
) -> u32 {
    let room = (peer_max_frame as usize).saturating_sub(128).max(256);
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

#[allow(dead_code)]
fn _assert_types(_: Source, _: Target, _: LockToken, _: Value) {}

/// Deletes of the records that refused sends (`pendings`) put into the entity's queue or
/// subscriptions. A topic body left without records is removed at the next start.
fn undo_refused_sends(
    st: &crate::broker::EntityState,
    pendings: &[crate::broker::Pending],
) -> Vec<keybus_core::StoreOp> {
    use crate::broker::Pending;
    let delete = |entity: &str, seq: i64| keybus_core::StoreOp::DeleteMessage {
        entity: entity.to_string(),
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
