//! The `$management` node of an entity (wire reference §7): lock renewal, peek, scheduling,
//! deferred receive and settlement by lock token. Responses that follow a store write are sent
//! only once the write is durable.

use std::sync::Arc;

use keybus_amqp::{Bytes, Message, Value};
use keybus_core::{
    CommitFuture, ErrorCondition, IncomingMessage, LockToken, ManagementError, Outcome,
    ReceiveMode, SubQueue,
};

use super::cbs::{app_prop, body_value, response};
use super::events::ConnEvent;
use super::rules;
use super::state::Conn;
use crate::runtime::{Entity, EntityState};
use keybus_auth::Right;

/// A failed operation: status code, error condition, description.
struct OpError(i32, &'static str, String);

impl From<ManagementError> for OpError {
    fn from(e: ManagementError) -> Self {
        let c = e.condition();
        OpError(c.status_code(), c.symbol(), e.to_string())
    }
}

fn bad(desc: impl Into<String>) -> OpError {
    OpError(400, ErrorCondition::ArgumentError.symbol(), desc.into())
}

/// What an operation produced: the response body, and the write (with its follow-up) that must
/// be durable before the response goes out.
struct Done {
    status: i32,
    body: Option<Value>,
    commit: Option<CommitFuture>,
    after_commit: Option<Box<dyn FnOnce(bool) + Send>>,
}

impl Done {
    fn ok(body: Value) -> Done {
        Done {
            status: 200,
            body: Some(body),
            commit: None,
            after_commit: None,
        }
    }
}

fn key(k: &str) -> Value {
    Value::String(k.to_string())
}

fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(entries.into_iter().map(|(k, v)| (key(k), v)).collect())
}

fn field<'a>(body: &'a [(Value, Value)], name: &str) -> Option<&'a Value> {
    keybus_amqp::map_get(body, name)
}

fn elements(v: &Value) -> &[Value] {
    match v {
        Value::Array(items) | Value::List(items) => items,
        _ => &[],
    }
}

fn lock_tokens(body: &[(Value, Value)]) -> Result<Vec<LockToken>, OpError> {
    let v = field(body, "lock-tokens").ok_or_else(|| bad("missing lock-tokens"))?;
    elements(v)
        .iter()
        .map(|t| match t {
            Value::Uuid(u) => Ok(LockToken(*u)),
            _ => Err(bad("lock-tokens must be an array of uuid")),
        })
        .collect()
}

fn sequence_numbers(body: &[(Value, Value)]) -> Result<Vec<i64>, OpError> {
    let v = field(body, "sequence-numbers").ok_or_else(|| bad("missing sequence-numbers"))?;
    elements(v)
        .iter()
        .map(|n| {
            n.as_i64()
                .ok_or_else(|| bad("sequence-numbers must be longs"))
        })
        .collect()
}

fn opt_string(body: &[(Value, Value)], name: &str) -> Option<String> {
    field(body, name)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The queue behind a `$management` node: the queue itself or a topic's subscription.
fn receiver<'a>(
    st: &'a mut EntityState,
    subscription: Option<&str>,
) -> Result<&'a mut keybus_core::Queue, OpError> {
    st.receiver(subscription).ok_or_else(|| {
        OpError(
            400,
            ErrorCondition::NotAllowed.symbol(),
            "this operation needs a queue or a subscription, not a topic".into(),
        )
    })
}

/// The right each operation needs (wire reference §3.7).
fn required_right(op: &str) -> Right {
    match op {
        "com.microsoft:schedule-message" | "com.microsoft:cancel-scheduled-message" => Right::Send,
        "com.microsoft:add-rule"
        | "com.microsoft:remove-rule"
        | "com.microsoft:enumerate-rules" => Right::Manage,
        _ => Right::Listen,
    }
}

/// Whether an operation writes to the store (refused while the store refuses writes).
fn writes(op: &str) -> bool {
    matches!(
        op,
        "com.microsoft:schedule-message"
            | "com.microsoft:cancel-scheduled-message"
            | "com.microsoft:update-disposition"
            | "com.microsoft:set-session-state"
            | "com.microsoft:add-rule"
            | "com.microsoft:remove-rule"
    )
}

impl Conn {
    pub(super) fn on_management_request(
        &mut self,
        channel: u16,
        entity: Arc<Entity>,
        subscription: Option<String>,
        sub: SubQueue,
        msg: Message,
    ) {
        let op = app_prop(&msg, "operation")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let entity_key = {
            let st = entity.lock();
            match &subscription {
                Some(s) => format!("{}/subscriptions/{s}", st.name()),
                None => st.name().to_string(),
            }
        };
        let node = match sub {
            SubQueue::Main => format!("{entity_key}/$management"),
            SubQueue::DeadLetter => format!("{entity_key}/$deadletterqueue/$management"),
            SubQueue::TransferDeadLetter => {
                format!("{entity_key}/$transfer/$deadletterqueue/$management")
            }
        };
        let reply_to = msg.properties.as_ref().and_then(|p| p.reply_to.clone());
        let Some((ch, h)) = self.reply_link(channel, reply_to.as_deref(), &node) else {
            tracing::debug!(%op, "management request without a reply link");
            return;
        };
        let correlation = msg
            .properties
            .as_ref()
            .and_then(|p| p.message_id.as_ref())
            .map(super::cbs::id_text);
        let right = required_right(&op);
        let result = match self.check_audited("mgmt.op", &node, right, Some(&op), correlation) {
            Ok(()) => {
                let body = body_value(&msg);
                let fields = body.as_ref().and_then(Value::as_map).unwrap_or(&[]);
                // A store that refuses writes refuses the operations that write, before they
                // touch the entity; a busy one refuses those that add messages.
                let refusal = if op == "com.microsoft:schedule-message" {
                    self.broker.store().admit()
                } else {
                    self.broker.store().status()
                };
                match refusal {
                    Err(e) if writes(&op) => {
                        let (condition, description) = super::errors::store_failure(&e);
                        Err(OpError(
                            condition.status_code(),
                            condition.symbol(),
                            description,
                        ))
                    }
                    _ => self.management_op(&op, &entity, subscription.as_deref(), sub, fields),
                }
            }
            Err(e) => Err(OpError(
                401,
                "amqp:unauthorized-access",
                e.description
                    .unwrap_or_else(|| format!("'{op}' needs the {right:?} right")),
            )),
        };
        let op_name = op.strip_prefix("com.microsoft:").unwrap_or(&op).to_string();
        match result {
            Err(OpError(status, cond, desc)) => {
                self.broker.metrics().request(&op_name, status);
                let bytes = mgmt_response(&msg, status, &desc, Some(cond), None);
                self.send_reply(ch, h, &bytes);
            }
            Ok(Done {
                status,
                body,
                commit: None,
                after_commit,
            }) => {
                if let Some(f) = after_commit {
                    f(true);
                }
                self.broker.metrics().request(&op_name, status);
                let bytes = mgmt_response(&msg, status, "OK", None, body);
                self.send_reply(ch, h, &bytes);
            }
            Ok(Done {
                status,
                body,
                commit: Some(fut),
                after_commit,
            }) => {
                let tx = self.tx.clone();
                let metrics = self.broker.metrics().clone();
                tokio::spawn(async move {
                    let r = fut.await;
                    metrics.request(&op_name, if r.is_ok() { status } else { 500 });
                    if let Some(f) = after_commit {
                        f(r.is_ok());
                    }
                    let bytes = match r {
                        Ok(()) => mgmt_response(&msg, status, "OK", None, body),
                        Err(e) => {
                            let (condition, description) = super::errors::store_failure(&e);
                            mgmt_response(
                                &msg,
                                condition.status_code(),
                                &description,
                                Some(condition.symbol()),
                                None,
                            )
                        }
                    };
                    let _ = tx.send(ConnEvent::Reply {
                        channel: ch,
                        handle: h,
                        message: bytes,
                    });
                });
            }
        }
    }

    fn management_op(
        &mut self,
        op: &str,
        entity: &Arc<Entity>,
        subscription: Option<&str>,
        sub: SubQueue,
        body: &[(Value, Value)],
    ) -> Result<Done, OpError> {
        let now = self.broker.now();
        let holders = self.session_holders(entity);
        let session = opt_string(body, "session-id");
        let mut st = entity.lock();
        let gone = st.deleted
            || subscription.is_some_and(|s| match &st.machine {
                keybus_core::MessagingEntity::Topic(t) => t.subscription(s).is_none(),
                keybus_core::MessagingEntity::Queue(_) => true,
            });
        if gone {
            return Err(OpError(
                404,
                ErrorCondition::NotFound.symbol(),
                format!("The messaging entity '{}' could not be found.", entity.name),
            ));
        }
        if let Some(id) = &session
            && op != "com.microsoft:peek-message"
        {
            receiver(&mut st, subscription)?
                .check_session(id, &holders, now)
                .map_err(ManagementError::from)?;
        }
        match op {
            "com.microsoft:renew-lock" => {
                let mut out = Vec::new();
                for t in lock_tokens(body)? {
                    out.push(Value::Timestamp(
                        receiver(&mut st, subscription)?
                            .renew_lock(t, now)
                            .map_err(ManagementError::from)?,
                    ));
                }
                Ok(Done::ok(map(vec![("expirations", Value::Array(out))])))
            }
            "com.microsoft:peek-message" => {
                let from = field(body, "from-sequence-number")
                    .and_then(Value::as_i64)
                    .unwrap_or(1);
                let count = field(body, "message-count")
                    .and_then(Value::as_i64)
                    .unwrap_or(1)
                    .clamp(0, 1000) as usize;
                let msgs = receiver(&mut st, subscription)?
                    .peek(sub, from, count, session.as_deref(), now)
                    .map_err(|e| ManagementError::Store(e.to_string()))?;
                if msgs.is_empty() {
                    return Ok(Done {
                        status: 204,
                        body: None,
                        commit: None,
                        after_commit: None,
                    });
                }
                let list = msgs
                    .into_iter()
                    .map(|m| map(vec![("message", Value::Binary(m))]))
                    .collect();
                Ok(Done::ok(map(vec![("messages", Value::List(list))])))
            }
            "com.microsoft:schedule-message" => {
                let items = field(body, "messages").map(elements).unwrap_or(&[]);
                let mut incoming = Vec::with_capacity(items.len());
                for item in items {
                    let bytes = item
                        .as_map()
                        .and_then(|m| field(m, "message"))
                        .and_then(Value::as_binary)
                        .ok_or_else(|| bad("each scheduled message needs a 'message' binary"))?;
                    let message = Message::decode(bytes).map_err(|e| {
                        bad(format!("the scheduled message could not be decoded: {e}"))
                    })?;
                    incoming.push(IncomingMessage::new(
                        keybus_core::with_message_id(message, rand::random()),
                        bytes.len() as u32,
                    ));
                }
                let (seqs, pending) = st
                    .send(incoming, now, true)
                    .map_err(ManagementError::from)?;
                let commit = entity.submit(&mut st);
                let e = entity.clone();
                let after: Box<dyn FnOnce(bool) + Send> =
                    Box::new(move |ok| e.lock().finish(&pending, ok));
                let out = seqs.into_iter().map(Value::Long).collect();
                Ok(Done {
                    status: 200,
                    body: Some(map(vec![("sequence-numbers", Value::Array(out))])),
                    commit,
                    after_commit: Some(after),
                })
            }
            "com.microsoft:cancel-scheduled-message" => {
                st.machine.cancel_scheduled(&sequence_numbers(body)?);
                let commit = entity.submit(&mut st);
                Ok(Done {
                    status: 200,
                    body: Some(map(vec![])),
                    commit,
                    after_commit: None,
                })
            }
            "com.microsoft:receive-by-sequence-number" => {
                let seqs = sequence_numbers(body)?;
                let mode = match field(body, "receiver-settle-mode").and_then(Value::as_u32) {
                    Some(0) => ReceiveMode::ReceiveAndDelete,
                    _ => ReceiveMode::PeekLock,
                };
                let ds = receiver(&mut st, subscription)?.receive_deferred(
                    sub,
                    &seqs,
                    mode,
                    session.as_deref(),
                    now,
                )?;
                let commit = entity.submit(&mut st);
                let list = ds
                    .into_iter()
                    .map(|d| {
                        let mut m = vec![("message", Value::Binary(d.encoded()))];
                        if mode == ReceiveMode::PeekLock {
                            m.insert(0, ("lock-token", Value::Uuid(d.lock_token.0)));
                        }
                        map(m)
                    })
                    .collect();
                Ok(Done {
                    status: 200,
                    body: Some(map(vec![("messages", Value::List(list))])),
                    commit,
                    after_commit: None,
                })
            }
            "com.microsoft:add-rule"
            | "com.microsoft:remove-rule"
            | "com.microsoft:enumerate-rules" => {
                let Some(name) = subscription else {
                    return Err(OpError(
                        400,
                        ErrorCondition::NotAllowed.symbol(),
                        "rules belong to subscriptions".into(),
                    ));
                };
                let keybus_core::MessagingEntity::Topic(topic) = &mut st.machine else {
                    return Err(OpError(
                        400,
                        ErrorCondition::NotAllowed.symbol(),
                        "rules belong to subscriptions".into(),
                    ));
                };
                let sub = topic.subscription_mut(name).ok_or_else(|| {
                    OpError(
                        404,
                        ErrorCondition::NotFound.symbol(),
                        format!("The subscription '{name}' could not be found."),
                    )
                })?;
                let op = match op {
                    "com.microsoft:enumerate-rules" => {
                        let skip = field(body, "skip")
                            .and_then(Value::as_i64)
                            .unwrap_or(0)
                            .max(0) as usize;
                        let top = field(body, "top")
                            .and_then(Value::as_i64)
                            .unwrap_or(i64::from(i32::MAX))
                            .max(0) as usize;
                        let rules: Vec<Value> = sub
                            .rules()
                            .iter()
                            .skip(skip)
                            .take(top)
                            .map(rules::describe)
                            .collect();
                        if rules.is_empty() {
                            return Ok(Done {
                                status: 204,
                                body: None,
                                commit: None,
                                after_commit: None,
                            });
                        }
                        return Ok(Done::ok(map(vec![("rules", Value::List(rules))])));
                    }
                    "com.microsoft:add-rule" => {
                        let def = rules::parse_add_rule(body, now).map_err(bad)?;
                        sub.add_rule(def)
                    }
                    _ => {
                        let rule = field(body, "rule-name")
                            .and_then(Value::as_str)
                            .ok_or_else(|| bad("missing rule-name"))?;
                        sub.remove_rule(rule)
                    }
                }
                .map_err(|e| match e {
                    keybus_core::RuleError::AlreadyExists(_) => {
                        OpError(409, "com.microsoft:entity-already-exists", e.to_string())
                    }
                    keybus_core::RuleError::NotFound(_) => {
                        OpError(404, ErrorCondition::NotFound.symbol(), e.to_string())
                    }
                    keybus_core::RuleError::TooMany(_) => {
                        OpError(403, ErrorCondition::QuotaExceeded.symbol(), e.to_string())
                    }
                    keybus_core::RuleError::Invalid { .. } => bad(e.to_string()),
                })?;
                topic.push_op(op);
                let commit = entity.submit(&mut st);
                Ok(Done {
                    status: 200,
                    body: Some(map(vec![])),
                    commit,
                    after_commit: None,
                })
            }
            "com.microsoft:update-disposition" => {
                let status = field(body, "disposition-status")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let properties = field(body, "properties-to-modify")
                    .and_then(Value::as_map)
                    .map(<[_]>::to_vec);
                let outcome = match status {
                    "completed" => Outcome::Complete,
                    "abandoned" => Outcome::Abandon { properties },
                    "defered" | "deferred" => Outcome::Defer { properties },
                    "suspended" => Outcome::DeadLetter {
                        reason: opt_string(body, "deadletter-reason"),
                        description: opt_string(body, "deadletter-description"),
                        properties,
                    },
                    other => return Err(bad(format!("unknown disposition-status '{other}'"))),
                };
                let q = receiver(&mut st, subscription)?;
                for t in lock_tokens(body)? {
                    q.settle(t, outcome.clone(), now)
                        .map_err(ManagementError::from)?;
                }
                if matches!(outcome, Outcome::Abandon { .. }) {
                    st.wake();
                }
                let commit = entity.submit(&mut st);
                Ok(Done {
                    status: 200,
                    body: Some(map(vec![])),
                    commit,
                    after_commit: None,
                })
            }
            "com.microsoft:renew-session-lock" => {
                let id = session.ok_or_else(|| bad("missing session-id"))?;
                let until = receiver(&mut st, subscription)?
                    .renew_session_lock(&id, &holders, now)
                    .map_err(ManagementError::from)?;
                Ok(Done::ok(map(vec![("expiration", Value::Timestamp(until))])))
            }
            "com.microsoft:get-session-state" => {
                let id = session.ok_or_else(|| bad("missing session-id"))?;
                let state = receiver(&mut st, subscription)?
                    .session_state(&id, &holders, now)
                    .map_err(ManagementError::from)?;
                let v = state.map_or(Value::Null, Value::Binary);
                Ok(Done::ok(map(vec![("session-state", v)])))
            }
            "com.microsoft:set-session-state" => {
                let id = session.ok_or_else(|| bad("missing session-id"))?;
                let state = match field(body, "session-state") {
                    None | Some(Value::Null) => None,
                    Some(Value::Binary(b)) => Some(b.clone()),
                    Some(_) => return Err(bad("session-state must be binary or null")),
                };
                receiver(&mut st, subscription)?
                    .set_session_state(&id, state, &holders, now)
                    .map_err(ManagementError::from)?;
                let commit = entity.submit(&mut st);
                Ok(Done {
                    status: 200,
                    body: Some(map(vec![])),
                    commit,
                    after_commit: None,
                })
            }
            "com.microsoft:get-message-sessions" => {
                let after = match field(body, "last-updated-time") {
                    Some(Value::Timestamp(t)) => *t,
                    Some(v) => v.as_i64().unwrap_or(keybus_core::LIST_ALL_SESSIONS),
                    None => keybus_core::LIST_ALL_SESSIONS,
                };
                let skip = field(body, "skip")
                    .and_then(Value::as_i64)
                    .unwrap_or(0)
                    .max(0) as usize;
                let top = field(body, "top")
                    .and_then(Value::as_i64)
                    .unwrap_or(100)
                    .clamp(0, 1000) as usize;
                let ids = receiver(&mut st, subscription)?.list_sessions(after, skip, top);
                if ids.is_empty() {
                    return Ok(Done {
                        status: 204,
                        body: None,
                        commit: None,
                        after_commit: None,
                    });
                }
                let ids = ids.into_iter().map(Value::String).collect();
                Ok(Done::ok(map(vec![
                    ("sessions-ids", Value::Array(ids)),
                    ("skip", Value::Int(skip as i32)),
                ])))
            }
            other => Err(OpError(
                501,
                "amqp:not-implemented",
                format!("The operation '{other}' is not supported by this keybus version."),
            )),
        }
    }
}

/// A `$management` response (camelCase keys, wire reference §7.1).
fn mgmt_response(
    request: &Message,
    status: i32,
    description: &str,
    condition: Option<&str>,
    body: Option<Value>,
) -> Bytes {
    let mut app = vec![
        (key("statusCode"), Value::Int(status)),
        (
            key("statusDescription"),
            Value::String(description.to_string()),
        ),
    ];
    if let Some(c) = condition {
        app.push((
            key("errorCondition"),
            Value::Symbol(keybus_amqp::Symbol::from(c)),
        ));
    }
    response(request, app, body)
}
