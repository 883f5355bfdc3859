//! Typed `$management` operations of an entity (wire reference §7): peek, lock renewal,
//! deferred messages by sequence number, scheduling and cancelling, settling by lock token,
//! and session state and locks.

use std::time::Duration;

use keybus_amqp::{Bytes, Message, Value};

use crate::connection::Connection;
use crate::error::ClientError;
use crate::rpc::Reply;

/// A message received through `$management` (deferred messages by sequence number).
#[derive(Debug, Clone)]
pub struct LockedMessage {
    /// The lock token (absent in receive-and-delete mode).
    pub lock_token: Option<[u8; 16]>,
    pub message: Message,
}

/// How a message received by lock token is settled (`update-disposition`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DispositionStatus {
    Completed,
    Abandoned,
    Suspended {
        reason: Option<String>,
        description: Option<String>,
    },
    Defered,
}

fn s(v: &str) -> Value {
    Value::String(v.to_string())
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (s(k), v)).collect())
}

fn field<'a>(body: &'a Value, key: &str) -> Option<&'a Value> {
    keybus_amqp::map_get(body.as_map()?, key)
}

fn items(v: Option<&Value>) -> &[Value] {
    match v {
        Some(Value::Array(items) | Value::List(items)) => items,
        _ => &[],
    }
}

fn uuids(tokens: &[[u8; 16]]) -> Value {
    Value::Array(tokens.iter().map(|t| Value::Uuid(*t)).collect())
}

impl Connection {
    /// Run `operation` on `<entity>/$management` with `body` (a map), returning the
    /// response's body (`Value::Null` for 204 No Content). A status outside 2xx is an error
    /// naming the response's `errorCondition` and `statusDescription`.
    pub async fn management(
        &mut self,
        entity: &str,
        operation: &str,
        body: Value,
        timeout: Duration,
    ) -> Result<Value, ClientError> {
        let msg = Message {
            application_properties: Some(vec![(s("operation"), s(operation))]),
            body_raw: Message::body_value(&body),
            ..Default::default()
        };
        let node = format!("{entity}/$management");
        let reply: Reply = self.request(&node, msg, timeout).await?;
        let status = reply
            .property("statusCode")
            .and_then(Value::as_i64)
            .unwrap_or(-1);
        if !(200..300).contains(&status) {
            let text = |k: &str| {
                reply
                    .property(k)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            return Err(ClientError::Management {
                operation: operation.to_string(),
                status,
                condition: text("errorCondition"),
                description: text("statusDescription"),
            });
        }
        Ok(reply.body().unwrap_or(Value::Null))
    }

    /// Peek up to `count` messages from sequence number `from` on (no locks taken).
    pub async fn peek(
        &mut self,
        entity: &str,
        from: i64,
        count: i32,
        timeout: Duration,
    ) -> Result<Vec<Message>, ClientError> {
        let op = "com.microsoft:peek-message";
        let body = map(vec![
            ("from-sequence-number", Value::Long(from)),
            ("message-count", Value::Int(count)),
        ]);
        let reply = self.management(entity, op, body, timeout).await?;
        items(field(&reply, "messages"))
            .iter()
            .map(|m| {
                let bytes = field(m, "message")
                    .and_then(Value::as_binary)
                    .ok_or_else(|| ClientError::Response {
                        operation: op.into(),
                        why: "a peeked message has no 'message' binary".into(),
                    })?;
                Ok(Message::decode(bytes)?)
            })
            .collect()
    }

    /// Renew the locks of `tokens`; returns their new expiry times (ms since the epoch).
    pub async fn renew_lock(
        &mut self,
        entity: &str,
        tokens: &[[u8; 16]],
        timeout: Duration,
    ) -> Result<Vec<i64>, ClientError> {
        let body = map(vec![("lock-tokens", uuids(tokens))]);
        let reply = self
            .management(entity, "com.microsoft:renew-lock", body, timeout)
            .await?;
        Ok(items(field(&reply, "expirations"))
            .iter()
            .filter_map(Value::as_timestamp)
            .collect())
    }

    /// Schedule `messages` for `enqueue_at_ms` (ms since the epoch); returns their sequence
    /// numbers.
    pub async fn schedule(
        &mut self,
        entity: &str,
        messages: &[Message],
        enqueue_at_ms: i64,
        timeout: Duration,
    ) -> Result<Vec<i64>, ClientError> {
        let list = messages
            .iter()
            .map(|m| {
                let mut m = m.clone();
                let ann = m.message_annotations.get_or_insert_with(Vec::new);
                ann.push((
                    Value::symbol("x-opt-scheduled-enqueue-time"),
                    Value::Timestamp(enqueue_at_ms),
                ));
                let id = m
                    .properties
                    .as_ref()
                    .and_then(|p| p.message_id.as_ref())
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                map(vec![
                    ("message-id", Value::String(id)),
                    ("message", Value::Binary(m.to_bytes())),
                ])
            })
            .collect();
        let body = map(vec![("messages", Value::List(list))]);
        let reply = self
            .management(entity, "com.microsoft:schedule-message", body, timeout)
            .await?;
        Ok(items(field(&reply, "sequence-numbers"))
            .iter()
            .filter_map(Value::as_i64)
            .collect())
    }

    /// Cancel scheduled messages by sequence number.
    pub async fn cancel_scheduled(
        &mut self,
        entity: &str,
        sequence_numbers: &[i64],
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let seqs = Value::Array(sequence_numbers.iter().map(|n| Value::Long(*n)).collect());
        let body = map(vec![("sequence-numbers", seqs)]);
        self.management(
            entity,
            "com.microsoft:cancel-scheduled-message",
            body,
            timeout,
        )
        .await?;
        Ok(())
    }

    /// Receive deferred messages by sequence number (peek-lock, or receive-and-delete when
    /// `peek_lock` is false); `session` for a session-enabled entity.
    pub async fn receive_deferred(
        &mut self,
        entity: &str,
        sequence_numbers: &[i64],
        peek_lock: bool,
        session: Option<&str>,
        timeout: Duration,
    ) -> Result<Vec<LockedMessage>, ClientError> {
        let op = "com.microsoft:receive-by-sequence-number";
        let seqs = Value::Array(sequence_numbers.iter().map(|n| Value::Long(*n)).collect());
        let mut entries = vec![
            ("sequence-numbers", seqs),
            ("receiver-settle-mode", Value::Uint(u32::from(peek_lock))),
        ];
        if let Some(id) = session {
            entries.push(("session-id", s(id)));
        }
        let reply = self.management(entity, op, map(entries), timeout).await?;
        items(field(&reply, "messages"))
            .iter()
            .map(|m| {
                let bytes = field(m, "message")
                    .and_then(Value::as_binary)
                    .ok_or_else(|| ClientError::Response {
                        operation: op.into(),
                        why: "a deferred message has no 'message' binary".into(),
                    })?;
                Ok(LockedMessage {
                    lock_token: field(m, "lock-token").and_then(Value::as_uuid).copied(),
                    message: Message::decode(bytes)?,
                })
            })
            .collect()
    }

    /// Settle messages received by lock token (deferred messages) through `$management`.
    pub async fn update_disposition(
        &mut self,
        entity: &str,
        tokens: &[[u8; 16]],
        status: DispositionStatus,
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let mut entries = vec![("lock-tokens", uuids(tokens))];
        let name = match status {
            DispositionStatus::Completed => "completed",
            DispositionStatus::Abandoned => "abandoned",
            DispositionStatus::Defered => "defered",
            DispositionStatus::Suspended {
                reason,
                description,
            } => {
                if let Some(r) = reason {
                    entries.push(("deadletter-reason", Value::String(r)));
                }
                if let Some(d) = description {
                    entries.push(("deadletter-description", Value::String(d)));
                }
                "suspended"
            }
        };
        entries.push(("disposition-status", s(name)));
        self.management(
            entity,
            "com.microsoft:update-disposition",
            map(entries),
            timeout,
        )
        .await?;
        Ok(())
    }

    /// Set a session's state.
    pub async fn set_session_state(
        &mut self,
        entity: &str,
        session: &str,
        state: &[u8],
        timeout: Duration,
    ) -> Result<(), ClientError> {
        let body = map(vec![
            ("session-id", s(session)),
            (
                "session-state",
                Value::Binary(Bytes::copy_from_slice(state)),
            ),
        ]);
        self.management(entity, "com.microsoft:set-session-state", body, timeout)
            .await?;
        Ok(())
    }

    /// A session's state (`None` when it has none).
    pub async fn get_session_state(
        &mut self,
        entity: &str,
        session: &str,
        timeout: Duration,
    ) -> Result<Option<Bytes>, ClientError> {
        let body = map(vec![("session-id", s(session))]);
        let reply = self
            .management(entity, "com.microsoft:get-session-state", body, timeout)
            .await?;
        Ok(field(&reply, "session-state")
            .and_then(Value::as_binary)
            .cloned())
    }

    /// Renew a session's lock; returns its new expiry (ms since the epoch).
    pub async fn renew_session_lock(
        &mut self,
        entity: &str,
        session: &str,
        timeout: Duration,
    ) -> Result<Option<i64>, ClientError> {
        let body = map(vec![("session-id", s(session))]);
        let reply = self
            .management(entity, "com.microsoft:renew-session-lock", body, timeout)
            .await?;
        Ok(field(&reply, "expiration").and_then(Value::as_timestamp))
    }
}
