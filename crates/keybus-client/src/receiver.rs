//! Receivers for a caller: attach (peek-lock or receive-and-delete, optionally on a
//! session), receive with explicit credit, and settle each delivery (complete, abandon,
//! defer, dead-letter) waiting for the broker's settled echo.

use std::time::{Duration, Instant};

use keybus_amqp::{AmqpError, DeliveryState, Disposition, Performative, Role, Symbol, Value};

use crate::attach::{ReceiverOptions, SESSION_FILTER};
use crate::connection::Connection;
use crate::error::{ClientError, Refusal};
use crate::link::{Delivery, Intake, LinkId, LinkKind};

/// How a peek-locked message is settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `accepted`: the message is removed.
    Complete,
    /// `modified`: the lock is released and the delivery count rises.
    Abandon,
    /// `released`: the lock is released and the delivery count stays (the message was
    /// never processed, say a receiver that stops with deliveries it did not start).
    Release,
    /// `modified` with `undeliverable-here`: the message is set aside, to be received by
    /// sequence number.
    Defer,
    /// `rejected` with `com.microsoft:dead-letter`: the message moves to the dead-letter
    /// sub-queue with this reason and description.
    DeadLetter {
        reason: Option<String>,
        description: Option<String>,
    },
}

impl Outcome {
    pub(crate) fn state(&self) -> DeliveryState {
        match self {
            Outcome::Complete => DeliveryState::Accepted,
            Outcome::Abandon => DeliveryState::Modified {
                delivery_failed: Some(true),
                undeliverable_here: Some(false),
                message_annotations: None,
            },
            Outcome::Release => DeliveryState::Released,
            Outcome::Defer => DeliveryState::Modified {
                delivery_failed: Some(false),
                undeliverable_here: Some(true),
                message_annotations: None,
            },
            Outcome::DeadLetter {
                reason,
                description,
            } => {
                let mut info = Vec::new();
                if let Some(r) = reason {
                    info.push((Value::from("DeadLetterReason"), Value::from(r.as_str())));
                }
                if let Some(d) = description {
                    info.push((
                        Value::from("DeadLetterErrorDescription"),
                        Value::from(d.as_str()),
                    ));
                }
                DeliveryState::Rejected {
                    error: Some(AmqpError {
                        condition: Symbol::from("com.microsoft:dead-letter"),
                        description: description.clone(),
                        info: Some(info),
                    }),
                }
            }
        }
    }
}

impl Delivery {
    /// The lock token (peek-lock deliveries), in the RFC 4122 byte order `$management`
    /// operations take. The delivery tag carries it in .NET `Guid.ToByteArray()` order
    /// (first three fields little-endian).
    pub fn lock_token(&self) -> Option<[u8; 16]> {
        let tag = <[u8; 16]>::try_from(self.tag.as_ref()).ok()?;
        Some(uuid::Uuid::from_bytes_le(tag).into_bytes())
    }

    /// A message annotation by key.
    pub fn annotation(&self, key: &str) -> Option<&Value> {
        keybus_amqp::map_get(self.message.message_annotations.as_deref()?, key)
    }

    /// An application property by key.
    pub fn property(&self, key: &str) -> Option<&Value> {
        keybus_amqp::map_get(self.message.application_properties.as_deref()?, key)
    }

    /// The broker-assigned sequence number (`x-opt-sequence-number`).
    pub fn sequence_number(&self) -> Option<i64> {
        self.annotation("x-opt-sequence-number")
            .and_then(Value::as_i64)
    }

    /// How often the message was delivered before (the header's `delivery-count`).
    pub fn delivery_count(&self) -> u32 {
        self.message
            .header
            .as_ref()
            .and_then(|h| h.delivery_count)
            .unwrap_or(0)
    }

    /// The `message-id` as text.
    pub fn message_id(&self) -> Option<&str> {
        self.message
            .properties
            .as_ref()?
            .message_id
            .as_ref()?
            .as_str()
    }

    /// The `session-id` (`group-id`).
    pub fn session_id(&self) -> Option<&str> {
        self.message.properties.as_ref()?.group_id.as_deref()
    }

    /// The body's `data` sections joined.
    pub fn body(&self) -> Vec<u8> {
        self.message
            .data_sections()
            .map(|s| s.concat())
            .unwrap_or_default()
    }
}

impl Connection {
    /// Open a session with a receiver link on `entity` (deliveries are held for
    /// [`Connection::receive`]) and wait until the broker attached it.
    pub async fn create_receiver(
        &mut self,
        entity: &str,
        options: &ReceiverOptions,
        timeout: Duration,
    ) -> Result<LinkId, ClientError> {
        let session = self.new_session();
        let id = self.attach_receiver(session, entity, Intake::Hold, options);
        self.wait_attached(id, timeout).await?;
        Ok(id)
    }

    /// The session a session receiver holds (from the filter the broker attached with).
    pub fn locked_session(&self, link: LinkId) -> Option<String> {
        let filter = self.link(link)?.remote_source.as_ref()?.filter.as_deref()?;
        keybus_amqp::map_get(filter, SESSION_FILTER)?
            .as_str()
            .map(str::to_string)
    }

    /// Receive up to `max` messages: grant credit for what is missing and wait until `max`
    /// are here or `wait` has passed (then return what came, possibly nothing).
    pub async fn receive(
        &mut self,
        link: LinkId,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, ClientError> {
        let held = self.receiver(link).map_or(0, |r| r.held.len());
        let want = u32::try_from(max.saturating_sub(held)).unwrap_or(u32::MAX);
        let credit = self.receiver(link).map_or(0, |r| r.credit);
        if want > credit {
            if let Some(r) = self.receiver_mut(link) {
                r.credit = want;
            }
            self.queue_link_flow(link, want);
        }
        let deadline = Instant::now() + wait;
        match self
            .run_until(deadline, "deliveries", move |c| {
                c.receiver(link).is_none_or(|r| r.held.len() >= max)
            })
            .await
        {
            Ok(()) | Err(ClientError::Timeout { .. }) => {}
            Err(e) => return Err(e),
        }
        let Some(r) = self.receiver_mut(link) else {
            return Ok(Vec::new());
        };
        let n = r.held.len().min(max);
        Ok(r.held.drain(..n).collect())
    }

    /// Receive what comes first: grant credit for up to `max` messages and return as soon as
    /// at least one is here (with whatever else came with it, at most `max`), or nothing once
    /// `wait` has passed.
    pub async fn receive_any(
        &mut self,
        link: LinkId,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery>, ClientError> {
        let held = self.receiver(link).map_or(0, |r| r.held.len());
        let want = u32::try_from(max.saturating_sub(held)).unwrap_or(u32::MAX);
        let credit = self.receiver(link).map_or(0, |r| r.credit);
        if want > credit {
            if let Some(r) = self.receiver_mut(link) {
                r.credit = want;
            }
            self.queue_link_flow(link, want);
        }
        match self
            .run_until(Instant::now() + wait, "a delivery", move |c| {
                c.receiver(link).is_none_or(|r| !r.held.is_empty())
            })
            .await
        {
            Ok(()) | Err(ClientError::Timeout { .. }) => {}
            Err(e) => return Err(e),
        }
        Ok(self.take_up_to(link, max))
    }

    fn take_up_to(&mut self, link: LinkId, max: usize) -> Vec<Delivery> {
        let Some(r) = self.receiver_mut(link) else {
            return Vec::new();
        };
        let n = r.held.len().min(max);
        r.held.drain(..n).collect()
    }

    /// Take the deliveries the link holds without asking for more.
    pub fn take_held(&mut self, link: LinkId) -> Vec<Delivery> {
        self.receiver_mut(link)
            .map(|r| r.held.drain(..).collect())
            .unwrap_or_default()
    }

    /// Withdraw the link's credit (a `flow` with credit 0): the broker sends nothing more
    /// until the next [`Connection::receive`]. Frames are only queued.
    pub fn stop_credit(&mut self, link: LinkId) {
        if let Some(r) = self.receiver_mut(link) {
            r.credit = 0;
        }
        self.queue_link_flow(link, 0);
    }

    /// Settle `delivery` with `outcome` and wait for the broker's settled echo; a refusal
    /// (say, the lock was lost) is [`ClientError::Rejected`] with its condition.
    pub async fn settle(
        &mut self,
        link: LinkId,
        delivery: &Delivery,
        outcome: Outcome,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        self.settle_range(link, delivery, delivery, outcome, timeout)
            .await
    }

    /// Settle every delivery from `first` to `last` (delivery ids, inclusive) with one
    /// disposition, and wait for the broker's settled echo of each; the first refusal is
    /// [`ClientError::Rejected`] with its condition.
    pub async fn settle_range(
        &mut self,
        link: LinkId,
        first: &Delivery,
        last: &Delivery,
        outcome: Outcome,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let Some(channel) = self.sessions.get(link.session).map(|s| s.channel) else {
            return Err(ClientError::Protocol(format!("no receiver link {link:?}")));
        };
        let (first, last) = (first.delivery_id, last.delivery_id);
        let span = last.wrapping_sub(first);
        if span >= 1 << 20 {
            return Err(ClientError::Protocol(format!(
                "delivery ids {first}..={last} are not a range"
            )));
        }
        let ids = move || (0..=span).map(move |k| first.wrapping_add(k));
        self.frame(
            channel,
            Performative::Disposition(Disposition {
                role: Role::Receiver,
                first,
                last: (last != first).then_some(last),
                settled: false,
                state: Some(outcome.state()),
                batchable: false,
            }),
        );
        let deadline = Instant::now() + timeout;
        self.run_until(deadline, "the settlement echo", move |c| {
            c.receiver(link)
                .is_none_or(|r| ids().all(|id| r.echoes.contains_key(&id)))
        })
        .await?;
        let mut refusal = None;
        if let Some(LinkKind::Receiver(r)) = self.link_mut(link).map(|l| &mut l.kind) {
            for id in ids() {
                if let Some(Some(DeliveryState::Rejected { error: Some(e) })) = r.echoes.remove(&id)
                {
                    refusal.get_or_insert(e);
                }
            }
        }
        match refusal {
            Some(e) => Err(ClientError::Rejected(Refusal::from_error(Some(&e)))),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;
    use keybus_amqp::{Bytes, Message};

    #[test]
    fn lock_token_is_the_tag_in_rfc_order() {
        // .NET Guid.ToByteArray() order: the first three fields little-endian.
        let tag: Vec<u8> = (0u8..16).collect();
        let d = Delivery {
            delivery_id: 0,
            tag: Bytes::from(tag),
            settled: false,
            raw: Bytes::new(),
            message: Message::default(),
        };
        assert_eq!(
            d.lock_token().unwrap(),
            [3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15]
        );
    }

    #[test]
    fn outcomes_map_to_service_bus_states() {
        assert_eq!(Outcome::Complete.state(), DeliveryState::Accepted);
        let DeliveryState::Modified {
            undeliverable_here, ..
        } = Outcome::Defer.state()
        else {
            panic!("defer is modified")
        };
        assert_eq!(undeliverable_here, Some(true));
        assert_eq!(Outcome::Release.state(), DeliveryState::Released);
        let DeliveryState::Rejected { error: Some(e) } = (Outcome::DeadLetter {
            reason: Some("r".into()),
            description: Some("d".into()),
        })
        .state() else {
            panic!("dead-letter is rejected")
        };
        assert_eq!(e.condition.as_str(), "com.microsoft:dead-letter");
        let info = e.info.unwrap();
        assert_eq!(
            keybus_amqp::map_get(&info, "DeadLetterReason").and_then(Value::as_str),
            Some("r")
        );
    }
}
