//! Purge: drop every message of the queue's main set or of its dead-letter sub-queue, with a
//! delete op per message for the store (one batch). Locks on the dropped messages end (their
//! settlement then fails as a lost lock).

use super::Queue;
use crate::address::SubQueue;
use crate::store::StoreOp;

impl Queue {
    /// Drop every message of `sub` (pending sends excepted: their commit is in flight).
    /// Returns how many were dropped; the delete ops are queued for [`Queue::take_ops`].
    pub fn purge_messages(&mut self, sub: SubQueue) -> u64 {
        let seqs: Vec<i64> = self
            .set(sub)
            .entries
            .range_from(i64::MIN)
            .filter(|(_, e)| !e.pending)
            .map(|(s, _)| s)
            .collect();
        let sub = match sub {
            SubQueue::Main => SubQueue::Main,
            SubQueue::DeadLetter | SubQueue::TransferDeadLetter => SubQueue::DeadLetter,
        };
        for &seq in &seqs {
            if let Some(e) = self.set_mut(sub).remove(seq)
                && let Some(l) = e.lock
            {
                self.locks.remove(&l.token);
            }
            self.ops.push(StoreOp::DeleteMessage {
                entity: self.name.clone(),
                sub,
                sequence_number: seq,
            });
        }
        seqs.len() as u64
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::QueueProperties;
    use crate::queue::{IncomingMessage, ReceiveMode};
    use keybus_amqp::Message;

    fn msg() -> IncomingMessage {
        let m = Message {
            body_raw: Message::body_data(b"x"),
            ..Message::default()
        };
        let size = m.encoded_size() as u32;
        IncomingMessage::new(m, size)
    }

    #[test]
    fn purge_deletes_every_message_of_the_set_and_ends_its_locks() {
        let mut q = Queue::new("q", QueueProperties::default(), 1);
        let seqs = q.enqueue(vec![msg(), msg(), msg()], 0).unwrap();
        q.commit_pending(&seqs);
        let d = q.acquire(SubQueue::Main, ReceiveMode::PeekLock, 0).unwrap();
        q.take_ops();
        assert_eq!(q.purge_messages(SubQueue::Main), 3);
        let ops = q.take_ops();
        assert_eq!(ops.len(), 3);
        assert!(ops.iter().all(|o| matches!(
            o,
            StoreOp::DeleteMessage {
                sub: SubQueue::Main,
                ..
            }
        )));
        assert_eq!(q.counts().active, 0);
        assert_eq!(q.counts().size_bytes, 0);
        assert!(!q.owns_lock(d.lock_token));
        assert!(
            q.acquire(SubQueue::Main, ReceiveMode::PeekLock, 0)
                .is_none()
        );
    }

    #[test]
    fn purge_of_the_dead_letter_queue_leaves_the_main_set() {
        let mut q = Queue::new("q", QueueProperties::default(), 1);
        let seqs = q.enqueue(vec![msg()], 0).unwrap();
        q.commit_pending(&seqs);
        q.take_ops();
        assert_eq!(q.purge_messages(SubQueue::DeadLetter), 0);
        assert!(q.take_ops().is_empty());
        assert_eq!(q.counts().active, 1);
    }
}
