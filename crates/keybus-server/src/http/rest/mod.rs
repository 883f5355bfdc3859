//! The Service Bus REST messaging API (Microsoft's "Send Message", "Send Message Batch",
//! "Peek-Lock Message", "Receive and Delete Message", "Unlock Message", "Delete Message",
//! "Renew-Lock for a Message"), on the same HTTP ports and with the same authorisation as the
//! management API. Messages go through the same entity state machines and store commits as
//! AMQP: a send is answered 201 only once it is durable, a completion 200 only once its
//! removal is.
//!
//! `BrokerProperties` (a JSON header) carries the system properties, every other
//! non-standard header is a custom property; responses carry them the same way
//! (`properties.rs`). The router (`http/mod.rs`) offers every request to [`dispatch`] first.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use keybus_core::{IncomingMessage, LockToken, Outcome, ReceiveMode, SubQueue};
use serde_json::json;
use tokio::sync::mpsc;

mod properties;

use properties::{format_lock, http_date, insert, parse_lock, respond};

use crate::http::common::{HttpError, Need, authorize, bad, host_of, percent_decode};
use crate::runtime::{Broker, Entity, Signal, Waiter, Wants};

/// Largest REST messaging request body: the largest message an entity may allow, plus room.
pub const MAX_BODY: usize = 101 * 1024 * 1024;
/// Longest long poll a client may ask for (`timeout`, seconds).
const MAX_POLL_SECS: u64 = 60;
/// What a request addresses.
#[derive(Debug, PartialEq)]
enum Op {
    Send,
    Head,
    /// `.../messages/{messageId or sequence number}/{lockToken}`.
    Locked(LockToken),
}

/// Split `/<entity>/messages[/head | /{id}/{lock}]`; `None` when the path is not one.
fn parse(path: &str) -> Result<Option<(String, Op)>, HttpError> {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let pos = segs
        .iter()
        .rposition(|s| s.eq_ignore_ascii_case("messages"))
        .filter(|p| *p > 0);
    let Some(pos) = pos else { return Ok(None) };
    let rest = &segs[pos + 1..];
    let op = match rest {
        [] => Op::Send,
        [h] if h.eq_ignore_ascii_case("head") => Op::Head,
        [_id, lock] => Op::Locked(parse_lock(&percent_decode(lock)?)?),
        _ => return Ok(None),
    };
    let mut entity = Vec::with_capacity(pos);
    for s in &segs[..pos] {
        let s = percent_decode(s)?;
        if s.is_empty() || s == "." || s == ".." || s.contains(['\\', '\0']) {
            return Err(bad(format!("invalid entity path '{path}'")));
        }
        entity.push(s);
    }
    Ok(Some((entity.join("/").to_ascii_lowercase(), op)))
}

/// Serve a REST messaging request, or `None` when the path is not a messaging path.
pub async fn dispatch(
    broker: &Arc<Broker>,
    peer: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
) -> Option<Result<Response, HttpError>> {
    let (entity_path, op) = match parse(uri.path()) {
        Ok(Some(x)) => x,
        Ok(None) => return None,
        Err(e) => return Some(Err(e)),
    };
    Some(serve(broker, peer, method, uri, headers, body, &entity_path, op).await)
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    broker: &Arc<Broker>,
    peer: &str,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    path: &str,
    op: Op,
) -> Result<Response, HttpError> {
    let host = host_of(headers, uri);
    let need = match (&op, method) {
        (Op::Send, &Method::POST) => Need::Send,
        (Op::Head, &Method::POST | &Method::DELETE)
        | (Op::Locked(_), &Method::PUT | &Method::DELETE | &Method::POST) => Need::Listen,
        _ => {
            return Err(HttpError::MethodNotAllowed(format!(
                "{method} is not a messaging operation on '{}'",
                uri.path()
            )));
        }
    };
    authorize(broker, peer, headers, &host, path, need)?;
    let (base, dead_letter) = match path.strip_suffix("/$deadletterqueue") {
        Some(b) => (b, true),
        None => (path, false),
    };
    if dead_letter && op == Op::Send {
        return Err(bad("cannot send to a dead-letter queue"));
    }
    let (entity, subscription) = broker.resolve(base).ok_or_else(|| {
        HttpError::NotFound(format!("The messaging entity '{path}' could not be found."))
    })?;
    let timeout = query_timeout(uri)?;
    let status = match (op, method) {
        (Op::Send, _) => {
            if subscription.is_some() {
                return Err(bad("send to the topic, not to a subscription"));
            }
            return send(broker, &entity, headers, body).await;
        }
        (Op::Head, &Method::POST) => {
            return receive(
                broker,
                &entity,
                subscription,
                dead_letter,
                ReceiveMode::PeekLock,
                timeout,
                path,
            )
            .await;
        }
        (Op::Head, _) => {
            return receive(
                broker,
                &entity,
                subscription,
                dead_letter,
                ReceiveMode::ReceiveAndDelete,
                timeout,
                path,
            )
            .await;
        }
        (Op::Locked(token), &Method::PUT) => {
            settle(
                broker,
                &entity,
                subscription.as_deref(),
                token,
                Outcome::Abandon { properties: None },
            )
            .await?;
            StatusCode::OK
        }
        (Op::Locked(token), &Method::DELETE) => {
            settle(
                broker,
                &entity,
                subscription.as_deref(),
                token,
                Outcome::Complete,
            )
            .await?;
            StatusCode::OK
        }
        (Op::Locked(token), _) => {
            let until = {
                let now = broker.now();
                let mut st = entity.lock();
                let q = st
                    .receiver(subscription.as_deref())
                    .ok_or_else(|| HttpError::NotFound(format!("'{path}' has no messages")))?;
                q.renew_lock(token, now).map_err(|_| lock_lost())?
            };
            let props =
                json!({ "LockToken": format_lock(token), "LockedUntilUtc": http_date(until) });
            let mut r = StatusCode::OK.into_response();
            insert(r.headers_mut(), "brokerproperties", &props.to_string());
            return Ok(r);
        }
    };
    Ok(status.into_response())
}

fn lock_lost() -> HttpError {
    HttpError::NotFound(
        "The lock supplied is invalid: it has expired, or the message was already settled.".into(),
    )
}

fn query_timeout(uri: &Uri) -> Result<Duration, HttpError> {
    let query = uri.query().unwrap_or("").as_bytes();
    let Some((_, v)) = form_urlencoded::parse(query).find(|(k, _)| k == "timeout") else {
        return Ok(Duration::from_secs(MAX_POLL_SECS));
    };
    let secs: u64 = v
        .parse()
        .map_err(|_| bad(format!("timeout must be a number of seconds, not '{v}'")))?;
    Ok(Duration::from_secs(secs.min(MAX_POLL_SECS)))
}

// ------------------------------------------------------------------------------ sending

async fn send(
    broker: &Arc<Broker>,
    entity: &Arc<Entity>,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<Response, HttpError> {
    let messages = properties::messages(headers, body)?;
    let limit = entity.lock().max_message_size();
    let mut incoming = Vec::with_capacity(messages.len());
    for m in messages {
        let m = keybus_core::with_message_id(m, rand::random());
        let size = m.encoded_size() as u64;
        if size > limit {
            return Err(HttpError::PayloadTooLarge(format!(
                "The message (size {size} bytes) exceeds the limit ({limit} bytes) allowed on '{}'.",
                entity.name
            )));
        }
        incoming.push(IncomingMessage::new(m, size as u32));
    }
    let n = incoming.len();
    // A busy (or failed) store refuses the send before it touches the entity.
    if let Err(e) = broker.store().admit() {
        broker.metrics().request("rest.send", 503);
        return Err(match e {
            keybus_core::StoreError::Busy { .. } => HttpError::ServerBusy(
                format!("The broker is busy: {e}. Retry after a short delay."),
                1,
            ),
            e => HttpError::Unavailable(format!("the message could not be stored: {e}")),
        });
    }
    let now = broker.now();
    let (commit, pending) = {
        let mut st = entity.lock();
        let (_, pending) = st.send(incoming, now, false).map_err(|e| match e {
            keybus_core::SendError::EntityNotFound(m) => HttpError::NotFound(m),
            keybus_core::SendError::QuotaExceeded { .. } => HttpError::QuotaExceeded(e.to_string()),
            keybus_core::SendError::MessageSizeExceeded { .. } => {
                HttpError::PayloadTooLarge(e.to_string())
            }
            keybus_core::SendError::Argument(m) => bad(m),
        })?;
        (entity.submit(&mut st), pending)
    };
    let durable = match commit {
        Some(f) => f.await.is_ok(),
        None => true,
    };
    entity.lock().finish(&pending, durable);
    if !durable {
        return Err(HttpError::Unavailable(
            "the message could not be stored".into(),
        ));
    }
    broker.metrics().request("rest.send", 201);
    tracing::debug!(entity = %entity.name, messages = n, "REST send");
    Ok(StatusCode::CREATED.into_response())
}

// ------------------------------------------------------------------------------ receiving

async fn receive(
    broker: &Arc<Broker>,
    entity: &Arc<Entity>,
    subscription: Option<String>,
    dead_letter: bool,
    mode: ReceiveMode,
    timeout: Duration,
    path: &str,
) -> Result<Response, HttpError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let (tx, mut rx) = mpsc::unbounded_channel::<Signal>();
    let waker: std::sync::Arc<mpsc::UnboundedSender<Signal>> = std::sync::Arc::new(tx);
    let sub = if dead_letter {
        SubQueue::DeadLetter
    } else {
        SubQueue::Main
    };
    loop {
        let (delivery, commit) = {
            let mut st = entity.lock();
            if st.machine.is_topic() && subscription.is_none() {
                return Err(bad(
                    "receive from a subscription of the topic, not the topic",
                ));
            }
            let now = broker.now();
            let q = st
                .receiver(subscription.as_deref())
                .ok_or_else(|| HttpError::NotFound(format!("'{path}' could not be found")))?;
            if q.properties().requires_session {
                return Err(bad(format!(
                    "'{path}' requires sessions; the REST API receives without sessions (use AMQP)"
                )));
            }
            let d = q.acquire(sub, mode, now);
            if d.is_none() {
                // Wait for a wake-up (a send, an unlock, a lock expiry) or the deadline.
                st.add_waiter(Waiter::new(
                    waker.clone(),
                    subscription.clone(),
                    sub,
                    Wants::Message,
                ));
            }
            let commit = entity.submit(&mut st);
            (d, commit)
        };
        if let Some(f) = commit
            && f.await.is_err()
        {
            return Err(HttpError::Unavailable(
                "the store could not record the receive".into(),
            ));
        }
        if let Some(d) = delivery {
            broker.metrics().request(
                if mode == ReceiveMode::PeekLock {
                    "rest.peek-lock"
                } else {
                    "rest.receive-and-delete"
                },
                200,
            );
            return respond(&d, mode, path);
        }
        let wait = tokio::time::timeout_at(deadline, async {
            loop {
                match rx.recv().await {
                    Some(Signal::Ready) | None => return,
                    Some(_) => {}
                }
            }
        });
        if wait.await.is_err() {
            return Ok(StatusCode::NO_CONTENT.into_response());
        }
    }
}

async fn settle(
    broker: &Arc<Broker>,
    entity: &Arc<Entity>,
    subscription: Option<&str>,
    token: LockToken,
    outcome: Outcome,
) -> Result<(), HttpError> {
    let now = broker.now();
    let commit = {
        let mut st = entity.lock();
        let q = st
            .receiver(subscription)
            .ok_or_else(|| HttpError::NotFound("the entity has no messages".into()))?;
        q.settle(token, outcome, now).map_err(|_| lock_lost())?;
        let commit = entity.submit(&mut st);
        st.wake();
        commit
    };
    if let Some(f) = commit {
        f.await.map_err(|e| {
            HttpError::Unavailable(format!("the settlement could not be stored: {e}"))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let p = |s: &str| parse(s).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p("/q1/messages"), Some(("q1".into(), Op::Send)));
        assert_eq!(p("/Q1/messages/head"), Some(("q1".into(), Op::Head)));
        assert_eq!(
            p("/t/subscriptions/s/messages/head"),
            Some(("t/subscriptions/s".into(), Op::Head))
        );
        let tok = "0f0e0d0c-0b0a-0908-0706-050403020100";
        assert_eq!(
            p(&format!("/a/b/messages/m1/{tok}")),
            Some((
                "a/b".into(),
                Op::Locked(parse_lock(tok).unwrap_or(LockToken([0; 16])))
            ))
        );
        assert_eq!(p("/q1"), None);
        assert_eq!(p("/messages"), None);
        assert!(parse("/q1/messages/x/not-a-lock").is_err());
        assert!(parse("/%2e%2e/messages").is_err());
    }
}
