//! One messaging entity as the runtime holds it: its state machine (a
//! [`keybus_core::MessagingEntity`]) behind one `std::sync::Mutex` that is never held across
//! an `.await`, with the receivers waiting on it. Store writes are submitted while the lock
//! is held, so they reach the store in order.

use std::collections::HashMap;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard, Weak};

use keybus_core::{
    CommitFuture, IncomingMessage, MessagingEntity, PendingSend, Queue, SendError, Store,
};

use super::agenda::Agenda;
use super::waiter::{Signal, Waiter};

/// Mutable state of one entity.
#[derive(Debug)]
pub struct EntityState {
    pub machine: MessagingEntity,
    waiters: Vec<Waiter>,
    /// The deadline the entity is on the agenda for (`None`: none yet, or it came due).
    scheduled_at: Option<i64>,
    /// On the forwarder's agenda and not yet visited.
    forward_queued: bool,
    /// Session receivers by lock holder id, told when their session lock runs out.
    session_links: HashMap<u64, Waiter>,
    /// Set when the entity was deleted: links still holding it are detached.
    pub deleted: bool,
    /// Last send or delivery (ms since the epoch; 0 = never since start-up).
    pub accessed_at: i64,
}

impl EntityState {
    /// The queue a receiver reads: the queue itself, or a topic's subscription.
    pub fn receiver(&mut self, subscription: Option<&str>) -> Option<&mut Queue> {
        self.machine.receiver(subscription)
    }

    /// [`EntityState::receiver`], read-only.
    pub fn receiver_ref(&self, subscription: Option<&str>) -> Option<&Queue> {
        self.machine.receiver_ref(subscription)
    }

    /// The lower-case path of the entity.
    pub fn name(&self) -> &str {
        self.machine.name()
    }

    /// Largest message a sender may send.
    pub fn max_message_size(&self) -> u64 {
        self.machine.max_message_size()
    }

    /// Accept a send (or a `schedule-message`): the messages stay pending until published.
    pub fn send(
        &mut self,
        msgs: Vec<IncomingMessage>,
        now: i64,
        schedule: bool,
    ) -> Result<(Vec<i64>, PendingSend), SendError> {
        if self.deleted {
            return Err(SendError::EntityNotFound(self.name().to_string()));
        }
        self.accessed_at = now;
        self.machine.send(msgs, now, schedule)
    }

    /// Publish (on a durable commit) or forget (on a failed one) what a send made pending.
    pub fn finish(&mut self, pending: &PendingSend, durable: bool) {
        if self.machine.finish(pending, durable) {
            self.wake();
        }
    }

    /// Register a receiver to wake when its (sub-)queue has what it wants.
    pub fn add_waiter(&mut self, waiter: Waiter) {
        self.waiters.push(waiter);
    }

    /// Register a session receiver holding the session lock `holder`, to tell when the lock
    /// runs out (and to wake when the entity is deleted).
    pub fn add_session_link(&mut self, holder: u64, waiter: Waiter) {
        self.session_links.insert(holder, waiter);
    }

    /// Forget the session receiver holding `holder`.
    pub fn remove_session_link(&mut self, holder: u64) {
        self.session_links.remove(&holder);
    }

    /// Forget every session receiver (the entity is gone).
    pub fn clear_session_links(&mut self) {
        self.session_links.clear();
    }

    /// Tell session receivers whose session lock ran out.
    pub fn notify_lost_sessions(&mut self) {
        for (session, holder) in self.machine.take_lost_sessions() {
            if let Some(w) = self.session_links.remove(&holder) {
                w.wake(Signal::SessionLost(session));
            }
        }
    }

    /// Wake every waiting receiver of the entity (or of one subscription) so that it notices
    /// the entity is gone (see `lifecycle.rs`): an AMQP link's next pump detaches it.
    pub fn wake_all(&mut self, subscription: Option<&str>) {
        let matches = |w: &Waiter| {
            subscription.is_none_or(|s| w.subscription().is_some_and(|x| x.eq_ignore_ascii_case(s)))
        };
        let (woken, kept): (Vec<Waiter>, Vec<Waiter>) = std::mem::take(&mut self.waiters)
            .into_iter()
            .partition(matches);
        self.waiters = kept;
        for w in woken
            .iter()
            .chain(self.session_links.values().filter(|w| matches(w)))
        {
            w.wake(Signal::Ready);
        }
    }

    /// Tell waiting receivers whose (sub-)queue has what they want to pull it.
    pub fn wake(&mut self) {
        let machine = &self.machine;
        self.waiters.retain(|w| {
            let available = machine
                .receiver_ref(w.subscription())
                .is_some_and(|q| w.satisfied_by(q));
            if available {
                w.wake(Signal::Ready);
                false
            } else {
                !w.is_closed()
            }
        });
    }
}

/// One messaging entity (a queue, or a topic with its subscriptions).
pub struct Entity {
    /// The name as declared (for display and error texts).
    pub name: String,
    state: Mutex<EntityState>,
    store: Arc<dyn Store>,
    agenda: Arc<Agenda>,
    /// The entity itself, for the agenda.
    me: Weak<Entity>,
}

impl Entity {
    /// A new entity around its state machine, on the agenda once its lock is first released.
    pub(crate) fn new(
        name: String,
        machine: MessagingEntity,
        agenda: Arc<Agenda>,
        store: Arc<dyn Store>,
    ) -> Arc<Entity> {
        Arc::new_cyclic(|me| Entity {
            name,
            state: Mutex::new(EntityState {
                machine,
                waiters: Vec::new(),
                scheduled_at: None,
                forward_queued: false,
                session_links: HashMap::new(),
                deleted: false,
                accessed_at: 0,
            }),
            store,
            agenda,
            me: me.clone(),
        })
    }

    /// The entity's state, locked (never hold it across an `.await`). Releasing the lock
    /// puts the entity on the agenda when it has an earlier deadline or messages to forward.
    pub fn lock(&self) -> EntityGuard<'_> {
        EntityGuard {
            state: self.state.lock().unwrap_or_else(|p| p.into_inner()),
            entity: self,
        }
    }

    /// The housekeeper's visit for the deadline `at`: run what came due (lock expiry,
    /// schedules, TTL, session locks). A visit for a deadline the entity has since moved
    /// off is skipped.
    pub(crate) fn housekeep(&self, at: i64, now: i64) {
        let mut st = self.lock();
        if st.scheduled_at != Some(at) || st.deleted {
            return;
        }
        st.scheduled_at = None;
        if st.machine.next_deadline().is_none_or(|d| d > now) {
            return;
        }
        let woke = st.machine.tick(now);
        st.notify_lost_sessions();
        if let Some(fut) = self.submit(&mut st) {
            tokio::spawn(async move {
                if let Err(err) = fut.await {
                    tracing::error!(%err, "store commit failed during housekeeping");
                }
            });
        }
        if woke {
            st.wake();
        }
    }

    /// The forwarder's visit: the entity is off its agenda until it has messages to forward
    /// again.
    pub(crate) fn forward_visit(&self) -> EntityGuard<'_> {
        let mut st = self.lock();
        st.forward_queued = false;
        st
    }

    /// Submit the entity's pending writes, in order, while the caller holds the lock.
    pub fn submit(&self, st: &mut EntityState) -> Option<CommitFuture> {
        let ops = st.machine.take_ops();
        (!ops.is_empty()).then(|| self.store.commit(ops))
    }
}

/// The locked state of an entity; see [`Entity::lock`].
pub struct EntityGuard<'a> {
    state: MutexGuard<'a, EntityState>,
    entity: &'a Entity,
}

impl Deref for EntityGuard<'_> {
    type Target = EntityState;
    fn deref(&self) -> &EntityState {
        &self.state
    }
}

impl DerefMut for EntityGuard<'_> {
    fn deref_mut(&mut self) -> &mut EntityState {
        &mut self.state
    }
}

impl Drop for EntityGuard<'_> {
    fn drop(&mut self) {
        let st = &mut *self.state;
        if st.deleted {
            return;
        }
        if let Some(at) = st.machine.next_deadline()
            && st.scheduled_at.is_none_or(|s| at < s)
        {
            st.scheduled_at = Some(at);
            self.entity.agenda.schedule(at, self.entity.me.clone());
        }
        if !st.forward_queued && st.machine.has_forwardable() {
            st.forward_queued = true;
            self.entity.agenda.forward(self.entity.me.clone());
        }
        // A body that could not be read back left its message where it was; say so (the
        // receiver, peek or forward that needed it got nothing or an error).
        if let Some(err) = st.machine.take_read_error() {
            tracing::error!(entity = %self.entity.name, %err, "a message body could not be read back from the store");
        }
    }
}

#[cfg(test)]
mod tests {
    use keybus_amqp::Message;
    use keybus_core::{QueueProperties, SubQueue};
    use tokio::sync::mpsc;

    use super::*;
    use crate::runtime::waiter::Wants;

    fn queue_entity() -> Arc<Entity> {
        let queue = Queue::new("q", QueueProperties::default(), 7);
        Entity::new(
            "q".into(),
            MessagingEntity::Queue(queue),
            Arc::new(Agenda::default()),
            Arc::new(keybus_store::MemStore::new()),
        )
    }

    #[test]
    fn a_waiting_receiver_is_woken_once_a_send_is_published() {
        let entity = queue_entity();
        let (tx, mut rx) = mpsc::unbounded_channel::<Signal>();
        let waker: Arc<mpsc::UnboundedSender<Signal>> = Arc::new(tx);
        let mut st = entity.lock();
        st.add_waiter(Waiter::new(waker, None, SubQueue::Main, Wants::Message));
        let msg = IncomingMessage::new(Message::default(), 10);
        let (_, pending) = st.send(vec![msg], 1_000, false).unwrap();
        assert!(rx.try_recv().is_err(), "not before the send is durable");
        st.finish(&pending, true);
        assert_eq!(rx.try_recv().ok(), Some(Signal::Ready));
        // A woken waiter is gone: the next wake reaches nobody.
        st.wake();
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn a_gone_receiver_is_dropped_at_the_next_wake() {
        let entity = queue_entity();
        let (tx, rx) = mpsc::unbounded_channel::<Signal>();
        let mut st = entity.lock();
        st.add_waiter(Waiter::new(
            Arc::new(tx),
            None,
            SubQueue::Main,
            Wants::Message,
        ));
        drop(rx);
        st.wake();
        assert!(st.waiters.is_empty());
    }
}
