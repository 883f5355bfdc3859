//! Redrive: move dead-lettered messages back into the queue they were dead-lettered from, as
//! one store batch (the delete from the dead-letter sub-queue and the put into the main set
//! travel together), so a crash leaves each message in exactly one place.
//!
//! The message keeps its sequence number, message id, body and properties; its delivery
//! count starts again at 0, the dead-letter reason and description the broker added are
//! removed, and a broker-owned annotation ([`REDRIVES_ANNOTATION`]) counts its redrives. Like
//! a send, a redriven message stays invisible to receivers until its batch is durable
//! ([`Queue::finish_redrive`]).

use std::sync::Arc;

use keybus_amqp::{Symbol, Value};

use super::{Entry, Queue};
use crate::address::SubQueue;
use crate::clock::Timestamp;
use crate::record::MessageState;
use crate::store::StoreOp;

/// Message annotation counting how often a message was redriven. Broker-owned: stripped
/// from clients' sends.
pub const REDRIVES_ANNOTATION: &str = "x-opt-keybus-redrive-count";

/// Application properties the broker adds when it dead-letters a message.
const DEAD_LETTER_PROPERTIES: &[&str] = &["DeadLetterReason", "DeadLetterErrorDescription"];

/// How often a message was redriven before.
fn redrives(message: &keybus_amqp::Message) -> i64 {
    message
        .message_annotations
        .as_ref()
        .and_then(|a| keybus_amqp::map_get(a, REDRIVES_ANNOTATION))
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

impl Queue {
    /// Move dead-lettered messages `seqs` (all of them when `None`) back into the main set.
    /// Locked or unknown ones are skipped. Returns the sequence numbers moved; the ops for
    /// the store (one delete and one put per message) are queued for [`Queue::take_ops`],
    /// to be committed as one batch. The moved messages stay pending until
    /// [`Queue::finish_redrive`].
    pub fn redrive(&mut self, seqs: Option<&[i64]>, now: Timestamp) -> Vec<i64> {
        let wanted: Vec<i64> = match seqs {
            Some(s) => s.to_vec(),
            None => self.dlq.entries.keys().collect(),
        };
        let mut moved = Vec::with_capacity(wanted.len());
        for seq in wanted {
            let free = self
                .dlq
                .entries
                .get(&seq)
                .is_some_and(|e| e.lock.is_none() && !e.pending);
            if !free || self.main.entries.get(&seq).is_some() {
                continue;
            }
            // The message is written whole under its new key: it needs its body (an
            // unreadable one stays, reported by `take_read_error`).
            if self.load_body(SubQueue::DeadLetter, seq).is_none() {
                continue;
            }
            let Some(mut entry) = self.dlq.remove(seq) else {
                continue;
            };
            let Some(message) = entry.rec.message.as_mut() else {
                continue;
            };
            let count = redrives(message).saturating_add(1);
            let msg = Arc::make_mut(message);
            if let Some(props) = msg.application_properties.as_mut() {
                props.retain(|(k, _)| {
                    k.as_str()
                        .is_none_or(|k| !DEAD_LETTER_PROPERTIES.contains(&k))
                });
                if props.is_empty() {
                    msg.application_properties = None;
                }
            }
            let ann = msg.message_annotations.get_or_insert_with(Vec::new);
            ann.retain(|(k, _)| k.as_str() != Some(REDRIVES_ANNOTATION));
            ann.push((
                Value::Symbol(Symbol::from(REDRIVES_ANNOTATION)),
                Value::Long(count),
            ));
            // The record now carries its own copy of the message.
            entry.rec.body_owner = None;
            entry.rec.delivery_count = 0;
            entry.rec.state = MessageState::Active;
            entry.rec.enqueued_time = now;
            entry.rec.scheduled_time = None;
            entry.rec.expires_at = self
                .ttl_ms(entry.rec.summary.ttl_ms.map(i64::from))
                .map(|ttl| now.saturating_add(ttl));
            self.ops.push(StoreOp::DeleteMessage {
                entity: self.name.clone(),
                sub: SubQueue::DeadLetter,
                sequence_number: seq,
            });
            self.ops.push(StoreOp::PutMessage {
                entity: self.name.clone(),
                sub: SubQueue::Main,
                record: entry.rec.clone(),
            });
            self.main.insert(Entry {
                pending: true,
                lock: None,
                stuck: false,
                body_dirty: false,
                rec: entry.rec,
            });
            moved.push(seq);
        }
        moved
    }

    /// The batch of a [`Queue::redrive`] resolved. Durable: the messages become available
    /// (true if any did). Not durable: they go back to the dead-letter sub-queue, with ops
    /// that undo the batch on disk once the store writes again.
    pub fn finish_redrive(&mut self, seqs: &[i64], durable: bool) -> bool {
        if durable {
            return self.commit_pending(seqs);
        }
        for &seq in seqs {
            let pending = self.main.entries.get(&seq).is_some_and(|e| e.pending);
            if !pending {
                continue;
            }
            let Some(mut entry) = self.main.remove(seq) else {
                continue;
            };
            entry.pending = false;
            entry.rec.expires_at = None;
            self.ops.push(StoreOp::DeleteMessage {
                entity: self.name.clone(),
                sub: SubQueue::Main,
                sequence_number: seq,
            });
            self.ops.push(StoreOp::PutMessage {
                entity: self.name.clone(),
                sub: SubQueue::DeadLetter,
                record: entry.rec.clone(),
            });
            self.dlq.insert(entry);
        }
        false
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::QueueProperties;
    use crate::queue::{IncomingMessage, Outcome, ReceiveMode};
    use keybus_amqp::{Message, Properties};

    fn queue() -> Queue {
        Queue::new("q", QueueProperties::default(), 7)
    }

    fn msg(id: &str) -> IncomingMessage {
        let m = Message {
            properties: Some(Properties {
                message_id: Some(Value::String(id.into())),
                ..Properties::default()
            }),
            body_raw: Message::body_data(b"hello"),
            ..Message::default()
        };
        let size = m.encoded_size() as u32;
        IncomingMessage::new(m, size)
    }

    /// Send `id`, receive it and dead-letter it with a reason; returns its sequence number.
    fn dead_lettered(q: &mut Queue, id: &str) -> i64 {
        let seqs = q.enqueue(vec![msg(id)], 0).unwrap();
        q.commit_pending(&seqs);
        let d = q.acquire(SubQueue::Main, ReceiveMode::PeekLock, 0).unwrap();
        q.settle(
            d.lock_token,
            Outcome::DeadLetter {
                reason: Some("Poison".into()),
                description: Some("bad".into()),
                properties: None,
            },
            0,
        )
        .unwrap();
        q.take_ops();
        d.sequence_number
    }

    #[test]
    fn redrive_is_one_delete_and_one_put_and_invisible_until_durable() {
        let mut q = queue();
        let seq = dead_lettered(&mut q, "m1");
        assert_eq!(q.counts().dead_letter, 1);
        let moved = q.redrive(None, 10);
        assert_eq!(moved, vec![seq]);
        let ops = q.take_ops();
        assert_eq!(ops.len(), 2);
        assert!(matches!(
            ops[0],
            StoreOp::DeleteMessage { sub: SubQueue::DeadLetter, sequence_number, .. } if sequence_number == seq
        ));
        assert!(
            matches!(&ops[1], StoreOp::PutMessage { sub: SubQueue::Main, record, .. }
            if record.sequence_number == seq && record.delivery_count == 0)
        );
        assert_eq!(q.counts().dead_letter, 0);
        assert!(
            q.acquire(SubQueue::Main, ReceiveMode::PeekLock, 10)
                .is_none()
        );
        assert!(q.finish_redrive(&moved, true));
        let d = q
            .acquire(SubQueue::Main, ReceiveMode::ReceiveAndDelete, 10)
            .unwrap();
        let m = Message::decode(&d.encoded()).unwrap();
        let props = m.properties.unwrap();
        assert_eq!(props.message_id, Some(Value::String("m1".into())));
        assert_eq!(m.body_raw, Message::body_data(b"hello"));
        let app = m.application_properties.unwrap_or_default();
        assert!(keybus_amqp::map_get(&app, "DeadLetterReason").is_none());
        let ann = m.message_annotations.unwrap();
        assert_eq!(
            keybus_amqp::map_get(&ann, REDRIVES_ANNOTATION).and_then(Value::as_i64),
            Some(1)
        );
    }

    #[test]
    fn a_failed_batch_puts_the_messages_back_into_the_dead_letter_queue() {
        let mut q = queue();
        let seq = dead_lettered(&mut q, "m1");
        let moved = q.redrive(Some(&[seq, 999]), 10);
        assert_eq!(moved, vec![seq]);
        q.take_ops();
        assert!(!q.finish_redrive(&moved, false));
        assert_eq!(q.counts().dead_letter, 1);
        assert_eq!(q.counts().active, 0);
        let undo = q.take_ops();
        assert!(matches!(
            undo[0],
            StoreOp::DeleteMessage {
                sub: SubQueue::Main,
                ..
            }
        ));
        assert!(matches!(
            undo[1],
            StoreOp::PutMessage {
                sub: SubQueue::DeadLetter,
                ..
            }
        ));
    }

    #[test]
    fn locked_dead_letters_stay() {
        let mut q = queue();
        let seq = dead_lettered(&mut q, "m1");
        let d = q
            .acquire(SubQueue::DeadLetter, ReceiveMode::PeekLock, 0)
            .unwrap();
        assert_eq!(d.sequence_number, seq);
        assert!(q.redrive(None, 10).is_empty());
        assert!(q.take_ops().is_empty());
    }

    #[test]
    fn clients_cannot_set_the_redrive_count() {
        let mut q = queue();
        let mut m = msg("m1");
        m.message.message_annotations = Some(vec![(
            Value::Symbol(Symbol::from(REDRIVES_ANNOTATION)),
            Value::Long(40),
        )]);
        let seqs = q.enqueue(vec![m], 0).unwrap();
        q.commit_pending(&seqs);
        let peeked = q.peek(SubQueue::Main, 0, 1, None, 0).unwrap();
        let ann = Message::decode(&peeked[0])
            .unwrap()
            .message_annotations
            .unwrap_or_default();
        assert!(keybus_amqp::map_get(&ann, REDRIVES_ANNOTATION).is_none());
    }

    #[test]
    fn redrives_are_counted() {
        let mut q = queue();
        let seq = dead_lettered(&mut q, "m1");
        let moved = q.redrive(None, 1);
        q.finish_redrive(&moved, true);
        let d = q.acquire(SubQueue::Main, ReceiveMode::PeekLock, 2).unwrap();
        q.settle(
            d.lock_token,
            Outcome::DeadLetter {
                reason: None,
                description: None,
                properties: None,
            },
            2,
        )
        .unwrap();
        let moved = q.redrive(Some(&[seq]), 3);
        q.finish_redrive(&moved, true);
        let peeked = q.peek(SubQueue::Main, 0, 10, None, 3).unwrap();
        let m = Message::decode(&peeked[0]).unwrap();
        let ann = m.message_annotations.unwrap();
        assert_eq!(
            keybus_amqp::map_get(&ann, REDRIVES_ANNOTATION).and_then(Value::as_i64),
            Some(2)
        );
    }
}
