//! Session receivers (wire reference §4.4): locking a named or the next available session at
//! attach, the deferred attach reply of a next-available receiver that has to wait, and
//! detaching receivers whose session lock ran out.

use std::sync::Arc;
use std::time::Duration;

use keybus_amqp::{Attach, Symbol, Value};
use keybus_core::SessionError;

use super::errors::error;
use super::events::{ConnEvent, LinkWaker};
use super::state::Conn;
use super::state::{LinkKind, SessionBinding, SessionGuard};
use super::terms::{SESSION_FILTER, dotnet_ticks};
use crate::runtime::{Entity, Waiter, Wants};

/// How long a next-available receiver waits when it names no `com.microsoft:timeout`.
const DEFAULT_ACCEPT_TIMEOUT_MS: u64 = 60_000;

/// The `com.microsoft:timeout` link property (milliseconds).
fn accept_timeout(a: &Attach) -> Duration {
    let ms = a
        .properties
        .as_ref()
        .and_then(|p| keybus_amqp::map_get(p, "com.microsoft:timeout"))
        .and_then(Value::as_i64)
        .and_then(|v| u64::try_from(v).ok())
        .unwrap_or(DEFAULT_ACCEPT_TIMEOUT_MS);
    Duration::from_millis(ms)
}

impl Conn {
    /// Lock the session a receiver link asked for (`requested`, or the next available one)
    /// and answer its attach; the link is already registered under `a.handle`. A
    /// next-available receiver that finds none waits (its attach unanswered) until a session
    /// frees up or its timeout passes.
    pub(super) fn attach_session(&mut self, channel: u16, a: Attach, requested: Option<String>) {
        let now = self.broker.now();
        let holder = self.broker.next_holder();
        let tx = self.tx.clone();
        let Some(link) = self
            .sessions
            .get_mut(&channel)
            .and_then(|s| s.links.get_mut(&a.handle))
        else {
            return;
        };
        let generation = link.generation;
        let LinkKind::EntityOut {
            entity,
            subscription,
            sub,
            session,
            ..
        } = &mut link.kind
        else {
            return;
        };
        let (entity, subscription, sub) = (entity.clone(), subscription.clone(), *sub);
        let first_try = session.is_none();
        let waker = Arc::new(LinkWaker {
            tx: tx.clone(),
            channel,
            handle: a.handle,
            generation,
        });
        let waiter = |wants| Waiter::new(waker.clone(), subscription.clone(), sub, wants);
        let (result, max_size) = {
            let mut st = entity.lock();
            let max_size = st.max_message_size();
            let result = match st.receiver(subscription.as_deref()) {
                Some(q) => q.lock_session(requested.as_deref(), holder, now),
                None => Err(SessionError::NoneAvailable),
            };
            match &result {
                Ok(_) => {
                    st.add_session_link(holder, waiter(Wants::Message));
                }
                Err(SessionError::NoneAvailable) if requested.is_none() => {
                    st.add_waiter(waiter(Wants::FreeSession));
                }
                Err(_) => {}
            }
            (result, max_size)
        };
        match result {
            Ok((id, until)) => {
                let mut reply = a.clone();
                if let Some(filter) = reply.source.as_mut().and_then(|s| s.filter.as_mut()) {
                    for (k, v) in filter.iter_mut() {
                        if k.as_str() == Some(SESSION_FILTER) {
                            *v = Value::String(id.clone());
                        }
                    }
                }
                let props = vec![(
                    Value::Symbol(Symbol::from("com.microsoft:locked-until-utc")),
                    Value::Long(dotnet_ticks(until)),
                )];
                self.reply_attach_with(channel, &reply, max_size, Some(props));
                let guard = SessionGuard::new(
                    id,
                    holder,
                    entity,
                    subscription,
                    self.broker.clock().clone(),
                );
                if let Some(LinkKind::EntityOut { session, .. }) = self
                    .sessions
                    .get_mut(&channel)
                    .and_then(|s| s.links.get_mut(&a.handle))
                    .map(|l| &mut l.kind)
                {
                    *session = Some(SessionBinding::Held(guard));
                }
                self.pump(channel, a.handle);
            }
            Err(SessionError::NoneAvailable) if requested.is_none() => {
                if first_try {
                    let wait = accept_timeout(&a);
                    let handle = a.handle;
                    *session = Some(SessionBinding::Waiting(Box::new(a)));
                    tokio::spawn(async move {
                        tokio::time::sleep(wait).await;
                        let _ = tx.send(ConnEvent::SessionTimeout {
                            channel,
                            handle,
                            generation,
                        });
                    });
                }
            }
            Err(e) => {
                if let Some(s) = self.sessions.get_mut(&channel) {
                    s.links.remove(&a.handle);
                }
                self.refuse(channel, &a, error(e.condition().symbol(), e.to_string()));
            }
        }
    }

    /// A waiting next-available receiver ran out of time: refuse its attach.
    pub(super) fn on_session_timeout(&mut self, channel: u16, handle: u32, generation: u64) {
        let Some(s) = self.sessions.get_mut(&channel) else {
            return;
        };
        let waiting = s.links.get(&handle).is_some_and(|l| {
            l.generation == generation
                && matches!(
                    l.kind,
                    LinkKind::EntityOut {
                        session: Some(SessionBinding::Waiting(_)),
                        ..
                    }
                )
        });
        if !waiting {
            return;
        }
        if let Some(LinkKind::EntityOut {
            session: Some(SessionBinding::Waiting(a)),
            ..
        }) = s.links.remove(&handle).map(|l| l.kind)
        {
            let e = SessionError::NoneAvailable;
            self.refuse(channel, &a, error(e.condition().symbol(), e.to_string()));
        }
    }

    /// A session lock ran out: detach its receiver with `session-lock-lost`.
    pub(super) fn on_session_lost(
        &mut self,
        channel: u16,
        handle: u32,
        generation: u64,
        session: &str,
    ) {
        let current = self
            .sessions
            .get(&channel)
            .and_then(|s| s.links.get(&handle))
            .is_some_and(|l| l.generation == generation);
        if current {
            let e = SessionError::LockLost(session.to_string());
            self.force_detach(
                channel,
                handle,
                error(e.condition().symbol(), e.to_string()),
            );
        }
    }

    /// Lock holder ids of this connection's session receivers on `entity`: `$management`
    /// session operations are allowed to the connection that holds the session.
    pub(super) fn session_holders(&self, entity: &Arc<Entity>) -> Vec<u64> {
        self.sessions
            .values()
            .flat_map(|s| s.links.values())
            .filter_map(|l| match &l.kind {
                LinkKind::EntityOut {
                    entity: e,
                    session: Some(SessionBinding::Held(g)),
                    ..
                } if Arc::ptr_eq(e, entity) => Some(g.holder),
                _ => None,
            })
            .collect()
    }
}
