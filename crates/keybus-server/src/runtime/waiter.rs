//! How the runtime tells a waiting receiver that there is something for it, without knowing
//! what the receiver is: an AMQP link, a REST long poll. A receiver registers a [`Waiter`]
//! with its entity; the entity calls its [`Wake`] when the (sub-)queue has what it wants, or
//! when the session lock it holds runs out. The receiver's identity (a connection, channel,
//! handle and link generation, say) stays inside its `Wake` implementation.

use std::sync::Arc;

use keybus_core::{Queue, SubQueue};
use tokio::sync::mpsc;

/// What the runtime tells a waiting receiver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// Messages (or a session, or the entity's deletion) may be there to see: pull.
    Ready,
    /// The lock on this session ran out: the receiver lost the session.
    SessionLost(String),
}

/// The way to reach one waiting receiver.
pub trait Wake: Send + Sync + std::fmt::Debug {
    /// Tell the receiver (a receiver that is gone ignores it).
    fn wake(&self, signal: Signal);
    /// Whether the receiver is gone for good, so its waiter can be dropped.
    fn is_closed(&self) -> bool;
}

/// A receiver that reads its signals from a channel (a REST long poll does).
impl Wake for mpsc::UnboundedSender<Signal> {
    fn wake(&self, signal: Signal) {
        let _ = self.send(signal);
    }

    fn is_closed(&self) -> bool {
        mpsc::UnboundedSender::is_closed(self)
    }
}

/// What a waiting receiver waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wants {
    /// Any available message of the (sub-)queue.
    Message,
    /// An available message of this session.
    Session(String),
    /// A session it could lock (a next-available session receiver).
    FreeSession,
}

/// A receiver waiting on an entity.
#[derive(Debug, Clone)]
pub struct Waiter {
    waker: Arc<dyn Wake>,
    /// The subscription, for a topic.
    subscription: Option<String>,
    sub: SubQueue,
    wants: Wants,
}

impl Waiter {
    /// A receiver of `sub` of the entity (or of its `subscription`) waiting for `wants`.
    pub fn new(
        waker: Arc<dyn Wake>,
        subscription: Option<String>,
        sub: SubQueue,
        wants: Wants,
    ) -> Waiter {
        Waiter {
            waker,
            subscription,
            sub,
            wants,
        }
    }

    /// Tell the receiver.
    pub fn wake(&self, signal: Signal) {
        self.waker.wake(signal);
    }

    /// Whether the receiver is gone.
    pub fn is_closed(&self) -> bool {
        self.waker.is_closed()
    }

    /// The subscription it reads, for a topic.
    pub fn subscription(&self) -> Option<&str> {
        self.subscription.as_deref()
    }

    /// Whether `queue` (the one the receiver reads) has what it waits for.
    pub fn satisfied_by(&self, queue: &Queue) -> bool {
        match &self.wants {
            Wants::Message => queue.has_available(self.sub),
            Wants::Session(id) => queue.has_available_in(id),
            Wants::FreeSession => queue.has_free_session(),
        }
    }
}
