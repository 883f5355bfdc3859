//! Attach and detach: a link's node address resolved and authorised, the link registered
//! (or refused), and links whose entity was deleted detached.

use keybus_amqp::{
    AmqpError, Attach, Detach, Performative, ReceiverSettleMode, Role, SenderSettleMode, Value,
};
use keybus_core::{NodeAddress, NodeKind, ReceiveMode, SubQueue};

use super::access::unauthorized;
use super::errors::{self, error};
use super::state::{Conn, ConnError, CrossEntity, Link, LinkKind, SENDER_CREDIT, SessionBinding};
use super::terms::SESSION_FILTER;
use keybus_auth::Right;

impl Conn {
    pub(super) fn reply_attach(&mut self, channel: u16, a: &Attach, max_message_size: u64) {
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

    pub(super) fn add_link(
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
                    _gauge: crate::runtime::metrics::LinkGauge::new(self.broker.metrics()),
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

    pub(super) fn on_attach(&mut self, channel: u16, a: Attach) -> Result<(), ConnError> {
        let limit = self.broker.config().limits.max_links_per_session;
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
        if client_sends && matches!(a.target, Some(keybus_amqp::AttachTarget::Coordinator(_))) {
            // A transaction coordinator: the transfers on it declare and discharge; the work
            // that joins a transaction is checked on the links it is done on.
            self.reply_attach(channel, &a, 64 * 1024);
            self.grant_credit(
                channel,
                a.handle,
                a.initial_delivery_count.unwrap_or(0),
                SENDER_CREDIT,
            );
            self.add_link(channel, &a, LinkKind::Coordinator, None);
            if let Some(s) = self.sessions.get_mut(&channel) {
                let linked = s.links.values().any(|l| {
                    matches!(
                        l.kind,
                        LinkKind::EntityIn { .. } | LinkKind::EntityOut { .. }
                    )
                });
                if !linked && matches!(s.cross_entity, CrossEntity::Off) {
                    s.cross_entity = CrossEntity::Awaiting;
                }
            }
            return Ok(());
        }
        let address = if client_sends {
            a.target
                .as_ref()
                .and_then(|t| t.address().map(str::to_string))
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
                let target = a
                    .target
                    .as_ref()
                    .and_then(|t| t.address().map(str::to_string));
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
                matches!(st.machine, keybus_core::MessagingEntity::Topic(_)),
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
                    let target = a
                        .target
                        .as_ref()
                        .and_then(|t| t.address().map(str::to_string));
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
                // Send-via: the link's target is the via entity (the first entity of a
                // cross-entity transaction), its messages go to the destination it names.
                let (entity, path, via, max_size) = match transfer_destination(&a) {
                    None => (entity, path, None, max_size),
                    Some(dest) => {
                        let Some(daddr) = NodeAddress::parse(dest) else {
                            self.refuse(
                                channel,
                                &a,
                                error(
                                    errors::INVALID_FIELD,
                                    format!("invalid transfer destination address {dest:?}"),
                                ),
                            );
                            return Ok(());
                        };
                        let Some((dentity, dsub)) = self.broker.resolve(&daddr.entity) else {
                            let host = self.hostname.clone();
                            self.refuse(
                                channel,
                                &a,
                                errors::entity_not_found(&host, &daddr.entity),
                            );
                            return Ok(());
                        };
                        if dsub.is_some()
                            || daddr.sub_queue() != SubQueue::Main
                            || !matches!(daddr.kind, NodeKind::Entity(_))
                        {
                            self.refuse(
                                channel,
                                &a,
                                error(
                                    errors::NOT_ALLOWED,
                                    "a transfer destination must be a queue or a topic",
                                ),
                            );
                            return Ok(());
                        }
                        let dmax = dentity.lock().max_message_size();
                        let via = (!std::sync::Arc::ptr_eq(&dentity, &entity)).then_some(entity);
                        (dentity, node_key(&daddr), via, dmax)
                    }
                };
                // On a cross-entity session, a sender to another entity sends via the first.
                let via = via.or_else(|| {
                    self.cross_entity_via(channel, &entity)
                        .filter(|v| !std::sync::Arc::ptr_eq(v, &entity))
                });
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
                    LinkKind::EntityIn { entity, via },
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
                // The first entity a cross-entity session receives from is its via entity.
                self.cross_entity_via(channel, &entity);
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

    /// The client detaches. If we started the detach (a refused attach or a forced detach),
    /// the link is already gone and this is the client's answer: replying again would be a
    /// second detach, which rhea treats as a protocol error.
    pub(super) fn on_detach(&mut self, channel: u16, d: Detach) {
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
    pub(crate) fn force_detach(&mut self, channel: u16, handle: u32, err: AmqpError) {
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
    pub(super) fn link_gone(&self, channel: u16, handle: u32) -> Option<AmqpError> {
        let link = self.sessions.get(&channel)?.links.get(&handle)?;
        let (entity, subscription) = match &link.kind {
            LinkKind::EntityIn { entity, .. } => (entity, None),
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
            LinkKind::CbsIn | LinkKind::Coordinator | LinkKind::ReplyOut { .. } => return None,
        };
        let st = entity.lock();
        let gone = st.deleted
            || subscription.is_some_and(|s| match &st.machine {
                keybus_core::MessagingEntity::Topic(t) => t.subscription(s).is_none(),
                keybus_core::MessagingEntity::Queue(_) => true,
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
    pub(crate) fn detach_gone_links(&mut self) {
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
    pub(super) fn detach_gone(&mut self, channel: u16, handle: u32, err: AmqpError) {
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

impl Conn {
    /// The via entity of a cross-entity session; the first entity linked on it becomes it.
    fn cross_entity_via(
        &mut self,
        channel: u16,
        entity: &std::sync::Arc<crate::runtime::Entity>,
    ) -> Option<std::sync::Arc<crate::runtime::Entity>> {
        let s = self.sessions.get_mut(&channel)?;
        match &s.cross_entity {
            CrossEntity::Off => None,
            CrossEntity::Awaiting => {
                s.cross_entity = CrossEntity::Via(entity.clone());
                Some(entity.clone())
            }
            CrossEntity::Via(via) => Some(via.clone()),
        }
    }
}

/// The attach property that makes a sender link send-via: the messages' real destination.
const TRANSFER_DESTINATION: &str = "com.microsoft:transfer-destination-address";

fn transfer_destination(a: &Attach) -> Option<&str> {
    a.properties
        .as_ref()?
        .iter()
        .find(|(k, _)| k.as_str() == Some(TRANSFER_DESTINATION))
        .and_then(|(_, v)| v.as_str())
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
