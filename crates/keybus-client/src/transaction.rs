//! Transactions (AMQP 1.0 §4.5): a coordinator link, `declare` and `discharge`, and sends and
//! settlements that join a transaction (their `transactional-state` names it).

use std::time::{Duration, Instant};

use keybus_amqp::{
    Attach, AttachTarget, Bytes, Coordinator, Declare, DeliveryState, Discharge, Disposition,
    Message, Performative, ReceiverSettleMode, Role, SenderSettleMode, Source, Symbol, TxnControl,
};

use crate::connection::Connection;
use crate::error::{ClientError, Refusal};
use crate::link::{Delivery, LinkId, LinkKind, SenderLink};
use crate::receiver::Outcome;
use crate::transfer::FORMAT_MESSAGE;

impl Connection {
    /// Open a session with a link to the transaction coordinator and wait until the broker
    /// attached it and gave credit.
    pub async fn create_coordinator(&mut self, timeout: Duration) -> Result<LinkId, ClientError> {
        let session = self.new_session();
        let name = format!("kb-txn-{}", uuid::Uuid::new_v4().simple());
        let attach = Attach {
            name: name.clone(),
            role: Role::Sender,
            snd_settle_mode: SenderSettleMode::Unsettled,
            rcv_settle_mode: ReceiverSettleMode::First,
            source: Some(Source {
                address: Some(name.clone()),
                ..Default::default()
            }),
            target: Some(AttachTarget::Coordinator(Coordinator {
                capabilities: Some(vec![Symbol::from("amqp:local-transactions")]),
            })),
            initial_delivery_count: Some(0),
            ..Default::default()
        };
        let id = self.add_link(
            session,
            name,
            String::new(),
            LinkKind::Sender(SenderLink::default()),
            attach,
        );
        self.wait_attached(id, timeout).await?;
        Ok(id)
    }

    /// Declare a transaction on `coordinator`; its id.
    pub async fn declare(
        &mut self,
        coordinator: LinkId,
        timeout: Duration,
    ) -> Result<Bytes, ClientError> {
        let control = TxnControl::Declare(Declare { global_id: None });
        match self.control(coordinator, &control, timeout).await? {
            Some(DeliveryState::Declared { txn_id }) => Ok(txn_id),
            other => Err(ClientError::Rejected(Refusal::from_state(other.as_ref()))),
        }
    }

    /// End transaction `txn_id`: commit, or roll back when `fail`. A refusal (an unknown
    /// id, a rolled back commit) is [`ClientError::Rejected`] with its condition.
    pub async fn discharge(
        &mut self,
        coordinator: LinkId,
        txn_id: &Bytes,
        fail: bool,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let control = TxnControl::Discharge(Discharge {
            txn_id: txn_id.clone(),
            fail,
        });
        match self.control(coordinator, &control, timeout).await? {
            Some(DeliveryState::Accepted) => Ok(()),
            other => Err(ClientError::Rejected(Refusal::from_state(other.as_ref()))),
        }
    }

    async fn control(
        &mut self,
        coordinator: LinkId,
        control: &TxnControl,
        timeout: Duration,
    ) -> Result<Option<DeliveryState>, ClientError> {
        let message = Message {
            body_raw: Message::body_value(&control.to_value()),
            ..Default::default()
        };
        self.send_in(coordinator, &message, None, timeout).await
    }

    /// Send `message` as part of transaction `txn_id`; `Ok` when the broker took it into
    /// the transaction (`transactional-state` with `accepted`).
    pub async fn send_in_transaction(
        &mut self,
        link: LinkId,
        message: &Message,
        txn_id: &Bytes,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let state = DeliveryState::Transactional {
            txn_id: txn_id.clone(),
            outcome: None,
        };
        match self.send_in(link, message, Some(state), timeout).await? {
            Some(DeliveryState::Transactional {
                outcome: Some(o), ..
            }) if *o == DeliveryState::Accepted => Ok(()),
            other => Err(ClientError::Rejected(Refusal::from_state(other.as_ref()))),
        }
    }

    async fn send_in(
        &mut self,
        link: LinkId,
        message: &Message,
        state: Option<DeliveryState>,
        timeout: Duration,
    ) -> Result<Option<DeliveryState>, ClientError> {
        let deadline = Instant::now() + timeout;
        self.run_until(deadline, "sender credit", move |c| {
            c.sender(link).is_none_or(|s| s.credit > 0)
        })
        .await?;
        let payload = message.to_bytes();
        let Some(id) = self.send_one_in(link, FORMAT_MESSAGE, &payload, state) else {
            return Err(ClientError::Protocol(format!("no sender link {link:?}")));
        };
        self.run_until(deadline, "the outcome", move |c| {
            c.sender(link).is_none_or(|s| s.outcomes.contains_key(&id))
        })
        .await?;
        Ok(match self.link_mut(link).map(|l| &mut l.kind) {
            Some(LinkKind::Sender(s)) => s.outcomes.remove(&id).flatten(),
            _ => None,
        })
    }

    /// Settle `delivery` with `outcome` as part of transaction `txn_id` and wait for the
    /// broker's echo (`transactional-state` with the outcome).
    pub async fn settle_in_transaction(
        &mut self,
        link: LinkId,
        delivery: &Delivery,
        outcome: Outcome,
        txn_id: &Bytes,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let Some(channel) = self.sessions.get(link.session).map(|s| s.channel) else {
            return Err(ClientError::Protocol(format!("no receiver link {link:?}")));
        };
        let id = delivery.delivery_id;
        self.frame(
            channel,
            Performative::Disposition(Disposition {
                role: Role::Receiver,
                first: id,
                last: None,
                settled: false,
                state: Some(DeliveryState::Transactional {
                    txn_id: txn_id.clone(),
                    outcome: Some(Box::new(outcome.state())),
                }),
                batchable: false,
            }),
        );
        let deadline = Instant::now() + timeout;
        self.run_until(deadline, "the settlement echo", move |c| {
            c.receiver(link).is_none_or(|r| r.echoes.contains_key(&id))
        })
        .await?;
        let echo = match self.link_mut(link).map(|l| &mut l.kind) {
            Some(LinkKind::Receiver(r)) => r.echoes.remove(&id).flatten(),
            _ => None,
        };
        match echo {
            Some(DeliveryState::Transactional {
                outcome: Some(o), ..
            }) if !matches!(*o, DeliveryState::Rejected { .. }) => Ok(()),
            other => Err(ClientError::Rejected(Refusal::from_state(other.as_ref()))),
        }
    }
}
