//! One dispatch over the two kinds of messaging entity: a queue, or a topic with its
//! subscriptions. The server holds a [`MessagingEntity`] per entity and calls these methods
//! instead of matching on the kind itself.

use crate::{Fanout, IncomingMessage, Queue, QueueProperties, SendError, StoreOp, SubQueue, Topic};

/// The state machine behind one entity.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per entity: the size difference is moot
pub enum MessagingEntity {
    Queue(Queue),
    Topic(Topic),
}

/// Messages a send made pending, to publish once their commit is durable.
#[derive(Debug)]
pub enum PendingSend {
    Queue(Vec<i64>),
    Topic(Fanout),
}

impl MessagingEntity {
    /// The lower-case path of the entity.
    pub fn name(&self) -> &str {
        match self {
            MessagingEntity::Queue(q) => q.name(),
            MessagingEntity::Topic(t) => t.name(),
        }
    }

    /// Largest message a sender may send.
    pub fn max_message_size(&self) -> u64 {
        match self {
            MessagingEntity::Queue(q) => q.properties().max_message_size,
            MessagingEntity::Topic(t) => t.properties().max_message_size,
        }
    }

    /// The queue's properties, for a queue.
    pub fn queue_properties(&self) -> Option<&QueueProperties> {
        match self {
            MessagingEntity::Queue(q) => Some(q.properties()),
            MessagingEntity::Topic(_) => None,
        }
    }

    /// The topic, for a topic.
    pub fn as_topic(&self) -> Option<&Topic> {
        match self {
            MessagingEntity::Topic(t) => Some(t),
            MessagingEntity::Queue(_) => None,
        }
    }

    /// The topic, for a topic.
    pub fn as_topic_mut(&mut self) -> Option<&mut Topic> {
        match self {
            MessagingEntity::Topic(t) => Some(t),
            MessagingEntity::Queue(_) => None,
        }
    }

    /// Whether this is a topic.
    pub fn is_topic(&self) -> bool {
        matches!(self, MessagingEntity::Topic(_))
    }

    /// Whether `subscription` names something a receiver can read: none for a queue, an
    /// existing subscription for a topic.
    pub fn has_receiver(&self, subscription: Option<&str>) -> bool {
        self.receiver_ref(subscription).is_some()
    }

    /// The queue a receiver reads: the queue itself, or a topic's subscription.
    pub fn receiver(&mut self, subscription: Option<&str>) -> Option<&mut Queue> {
        match (self, subscription) {
            (MessagingEntity::Queue(q), None) => Some(q),
            (MessagingEntity::Topic(t), Some(s)) => t.subscription_mut(s).map(|s| &mut s.queue),
            _ => None,
        }
    }

    /// [`MessagingEntity::receiver`], read-only.
    pub fn receiver_ref(&self, subscription: Option<&str>) -> Option<&Queue> {
        match (self, subscription) {
            (MessagingEntity::Queue(q), None) => Some(q),
            (MessagingEntity::Topic(t), Some(s)) => t.subscription(s).map(|s| &s.queue),
            _ => None,
        }
    }

    /// Accept a send (or a `schedule-message`): the messages stay pending until
    /// [`MessagingEntity::finish`] publishes them.
    pub fn send(
        &mut self,
        msgs: Vec<IncomingMessage>,
        now: i64,
        schedule: bool,
    ) -> Result<(Vec<i64>, PendingSend), SendError> {
        match self {
            MessagingEntity::Queue(q) => {
                let seqs = if schedule {
                    q.schedule(msgs, now)?
                } else {
                    q.enqueue(msgs, now)?
                };
                Ok((seqs.clone(), PendingSend::Queue(seqs)))
            }
            MessagingEntity::Topic(t) => {
                let (seqs, fanout) = t.enqueue(msgs, now, schedule)?;
                Ok((seqs, PendingSend::Topic(fanout)))
            }
        }
    }

    /// Publish (on a durable commit) or forget (on a failed one) what a send made pending.
    /// Returns whether messages became available.
    pub fn finish(&mut self, pending: &PendingSend, durable: bool) -> bool {
        match (self, pending) {
            (MessagingEntity::Queue(q), PendingSend::Queue(seqs)) => {
                if durable {
                    q.commit_pending(seqs)
                } else {
                    q.abort_pending(seqs);
                    false
                }
            }
            (MessagingEntity::Topic(t), PendingSend::Topic(fanout)) => {
                if durable {
                    t.commit_pending(fanout)
                } else {
                    t.abort_pending(fanout);
                    false
                }
            }
            _ => false,
        }
    }

    /// Cancel scheduled messages by sequence number.
    pub fn cancel_scheduled(&mut self, seqs: &[i64]) {
        match self {
            MessagingEntity::Queue(q) => q.cancel_scheduled(seqs),
            MessagingEntity::Topic(t) => t.cancel_scheduled(seqs),
        }
    }

    /// The store writes made since the last call, in order.
    pub fn take_ops(&mut self) -> Vec<StoreOp> {
        match self {
            MessagingEntity::Queue(q) => q.take_ops(),
            MessagingEntity::Topic(t) => t.take_ops(),
        }
    }

    /// When [`MessagingEntity::tick`] has work next (ms since the epoch).
    pub fn next_deadline(&self) -> Option<i64> {
        match self {
            MessagingEntity::Queue(q) => q.next_deadline(),
            MessagingEntity::Topic(t) => t.next_deadline(),
        }
    }

    /// Run lock expiry, schedules and TTL; returns whether messages became available.
    pub fn tick(&mut self, now: i64) -> bool {
        match self {
            MessagingEntity::Queue(q) => q.tick(now),
            MessagingEntity::Topic(t) => t.tick(now),
        }
    }

    /// The first body that could not be read back since the last call, of the entity or any
    /// of its subscriptions (see [`Queue::take_read_error`]).
    pub fn take_read_error(&mut self) -> Option<crate::store::StoreError> {
        match self {
            MessagingEntity::Queue(q) => q.take_read_error(),
            MessagingEntity::Topic(t) => t
                .subscriptions_mut()
                .filter_map(|s| s.queue.take_read_error())
                .next(),
        }
    }

    /// Sessions whose lock ran out since the last call: (session id, lock holder).
    pub fn take_lost_sessions(&mut self) -> Vec<(String, u64)> {
        match self {
            MessagingEntity::Queue(q) => q.take_lost_sessions(),
            MessagingEntity::Topic(t) => t
                .subscriptions_mut()
                .flat_map(|s| s.queue.take_lost_sessions())
                .collect(),
        }
    }

    /// Every queue of the entity (the queue, or each subscription) with its lower-case
    /// subscription name.
    pub fn queues_mut(&mut self) -> Vec<(Option<String>, &mut Queue)> {
        match self {
            MessagingEntity::Queue(q) => vec![(None, q)],
            MessagingEntity::Topic(t) => t
                .subscriptions_mut()
                .map(|s| (Some(s.definition.name.to_ascii_lowercase()), &mut s.queue))
                .collect(),
        }
    }

    /// A message of one of the entity's queues was forwarded (its record deleted by the
    /// forwarder's batch).
    pub fn forwarded(&mut self, subscription: Option<&str>, sub: SubQueue, seq: i64) {
        match (self, subscription) {
            (MessagingEntity::Queue(q), None) => q.forwarded(sub, seq),
            (MessagingEntity::Topic(t), Some(s)) => t.forwarded(s, sub, seq),
            _ => {}
        }
    }

    /// Whether any of the entity's queues holds messages waiting to be forwarded.
    pub fn has_forwardable(&self) -> bool {
        match self {
            MessagingEntity::Queue(q) => q.has_forwardable(),
            MessagingEntity::Topic(t) => t.subscriptions().any(|s| s.queue.has_forwardable()),
        }
    }
}
