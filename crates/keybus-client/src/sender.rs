//! Sending one message or a batch and waiting for the broker's outcome.

use std::time::{Duration, Instant};

use keybus_amqp::{BATCH_MESSAGE_FORMAT, BytesMut, DeliveryState, Message};

use crate::connection::Connection;
use crate::error::{ClientError, Refusal};
use crate::link::{LinkId, LinkKind};
use crate::transfer::FORMAT_MESSAGE;

impl Connection {
    /// Open a session with a sender link to `entity` and wait until the broker attached it
    /// and gave credit (a refusal comes back as [`ClientError::Detached`]).
    pub async fn create_sender(
        &mut self,
        entity: &str,
        timeout: Duration,
    ) -> Result<LinkId, ClientError> {
        let id = self.open_sender(entity);
        self.wait_attached(id, timeout).await?;
        Ok(id)
    }

    /// [`Connection::create_sender`] for a send-via link: messages sent on it go to
    /// `destination` through the entity `via` (whose transactions they can join).
    pub async fn create_sender_via(
        &mut self,
        via: &str,
        destination: &str,
        timeout: Duration,
    ) -> Result<LinkId, ClientError> {
        let session = self.new_session();
        let id = self.attach_sender_via(session, via, Some(destination));
        self.wait_attached(id, timeout).await?;
        Ok(id)
    }

    /// Ask the broker to restate a sender link's credit (a `flow` with `echo`); its answer
    /// is applied when the connection next runs (any later call that waits).
    pub fn ask_credit(&mut self, link: LinkId) {
        let credit = self.sender(link).map_or(0, |s| s.credit);
        self.queue_flow(link, credit, true);
    }

    /// Send `message` and wait until the broker settles it: `Ok` for `accepted`,
    /// [`ClientError::Rejected`] with the broker's condition otherwise.
    pub async fn send(
        &mut self,
        link: LinkId,
        message: &Message,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        self.send_payload(link, FORMAT_MESSAGE, &message.to_bytes(), timeout)
            .await
    }

    /// Send `messages` as one batch delivery (message format `0x80013700`, each message
    /// one `data` section) and wait for its outcome.
    pub async fn send_batch(
        &mut self,
        link: LinkId,
        messages: &[Message],
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let mut body = BytesMut::new();
        for m in messages {
            body.extend_from_slice(&Message::body_data(&m.to_bytes()));
        }
        let envelope = Message {
            properties: messages.first().and_then(|m| m.properties.clone()),
            body_raw: body.freeze(),
            ..Default::default()
        };
        self.send_payload(link, BATCH_MESSAGE_FORMAT, &envelope.to_bytes(), timeout)
            .await
    }

    async fn send_payload(
        &mut self,
        link: LinkId,
        format: u32,
        payload: &[u8],
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let deadline = Instant::now() + timeout;
        self.run_until(deadline, "sender credit", move |c| {
            c.sender(link).is_none_or(|s| s.credit > 0)
        })
        .await?;
        let Some(id) = self.send_one(link, format, payload) else {
            return Err(ClientError::Protocol(format!("no sender link {link:?}")));
        };
        self.run_until(deadline, "the send outcome", move |c| {
            c.sender(link).is_none_or(|s| s.outcomes.contains_key(&id))
        })
        .await?;
        let outcome = match self.link_mut(link).map(|l| &mut l.kind) {
            Some(LinkKind::Sender(s)) => s.outcomes.remove(&id).flatten(),
            _ => None,
        };
        match outcome {
            Some(DeliveryState::Accepted) | None => Ok(()),
            other => Err(ClientError::Rejected(Refusal::from_state(other.as_ref()))),
        }
    }
}
