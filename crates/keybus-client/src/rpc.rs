//! Request-response over a link pair (AMQP management style): a sender to a node and a
//! receiver whose address is the requests' `reply-to`. `$cbs` and every entity's
//! `$management` node are such pairs; one pair per node is opened on first use and kept.

use std::time::{Duration, Instant};

use keybus_amqp::{Message, Properties, Value};

use crate::connection::Connection;
use crate::error::ClientError;
use crate::link::{Intake, LinkId};
use crate::transfer::FORMAT_MESSAGE;

/// A reply as it came: its application properties and body.
#[derive(Debug, Clone)]
pub struct Reply {
    pub message: Message,
}

impl Reply {
    /// An application property of the reply.
    pub fn property(&self, key: &str) -> Option<&Value> {
        keybus_amqp::map_get(self.message.application_properties.as_deref()?, key)
    }

    /// The body's `amqp-value` (a map for `$management` responses), if any.
    pub fn body(&self) -> Option<Value> {
        self.message.amqp_value().ok().flatten()
    }
}

impl Connection {
    /// The link pair of `node`, attached and with credit to send (opened on first use).
    async fn rpc_pair(
        &mut self,
        node: &str,
        deadline: Instant,
    ) -> Result<(LinkId, LinkId), ClientError> {
        let (snd, rcv) = match self.rpc.get(node) {
            Some(p) => *p,
            None => {
                let session = self.new_session();
                let snd = self.attach_sender(session, node);
                let rcv = self.attach_receiver(session, node, Intake::Reply, &Default::default());
                self.rpc.insert(node.to_string(), (snd, rcv));
                (snd, rcv)
            }
        };
        let what = format!("the {node} links");
        let ready = self
            .run_until(deadline, &what, move |c| {
                c.link(rcv).is_some_and(|l| l.attached)
                    && c.sender(snd).is_some_and(|s| s.credit > 0)
            })
            .await;
        if let Err(e) = ready {
            // A refused or broken pair is not kept: the next request opens a new one.
            if let Some(pair) = self.rpc.remove(node) {
                for id in [pair.0, pair.1] {
                    if let Some(l) = self.link_mut(id) {
                        l.retired = true;
                    }
                }
            }
            return Err(e);
        }
        Ok((snd, rcv))
    }

    /// Send `request` (its `message-id` and `reply-to` are set here) to `node` and wait for
    /// the reply.
    pub async fn request(
        &mut self,
        node: &str,
        mut request: Message,
        timeout: Duration,
    ) -> Result<Reply, ClientError> {
        let deadline = Instant::now() + timeout;
        let (snd, rcv) = self.rpc_pair(node, deadline).await?;
        let reply_to = self.link(rcv).map(|l| l.name.clone()).unwrap_or_default();
        self.rpc_seq += 1;
        let props = request.properties.get_or_insert_with(Properties::default);
        props.message_id = Some(Value::String(format!("kb-rpc-{}", self.rpc_seq)));
        props.reply_to = Some(reply_to);
        let payload = request.to_bytes();
        let before = self.receiver(rcv).map_or(0, |r| r.inbox.len());
        self.send_one(snd, FORMAT_MESSAGE, &payload);
        let what = format!("the reply from {node}");
        self.run_until(deadline, &what, move |c| {
            c.receiver(rcv).is_some_and(|r| r.inbox.len() > before)
        })
        .await?;
        let reply = self
            .receiver_mut(rcv)
            .and_then(|r| r.inbox.pop())
            .unwrap_or_default();
        Ok(Reply {
            message: Message::decode(&reply)?,
        })
    }
}
