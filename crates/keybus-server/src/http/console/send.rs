//! Send a test message (body, content type, message id, session id, correlation id,
//! application properties; repeated N times) to a queue or topic, through the same entity
//! state machine and store commit as an AMQP or REST send: answered once it is durable.

use std::sync::Arc;

use axum::Extension;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Uri};
use axum::response::Response;
use keybus_amqp::{Message, Properties, Symbol, Value};
use keybus_auth::Right;
use keybus_core::{IncomingMessage, SendError, StoreError};

use super::Console;
use super::access;
use super::error::ConsoleError;
use super::form::{Form, query};
use super::layout::notice;
use crate::http::{PeerInfo, peer_text};
use crate::runtime::Broker;

/// The most copies one send makes.
pub(super) const MAX_REPEAT: u32 = 1000;

/// The message a send form describes.
pub(super) fn message_of(form: &Form) -> Result<Message, ConsoleError> {
    let body = form.raw("body").unwrap_or("");
    let mut app = Vec::new();
    if let Some(lines) = form.raw("properties") {
        for line in lines.lines().map(str::trim).filter(|l| !l.is_empty()) {
            let (k, v) = line.split_once('=').ok_or_else(|| {
                ConsoleError::BadRequest(format!("application property '{line}' is not key=value"))
            })?;
            app.push((
                Value::String(k.trim().to_string()),
                Value::String(v.trim().to_string()),
            ));
        }
    }
    Ok(Message {
        properties: Some(Properties {
            message_id: form.get("message_id").map(|s| Value::String(s.into())),
            correlation_id: form.get("correlation_id").map(|s| Value::String(s.into())),
            content_type: form.get("content_type").map(Symbol::from),
            group_id: form.get("session_id").map(str::to_string),
            ..Properties::default()
        }),
        application_properties: (!app.is_empty()).then_some(app),
        body_raw: Message::body_data(body.as_bytes()),
        ..Message::default()
    })
}

fn send_error(e: SendError) -> ConsoleError {
    match e {
        SendError::EntityNotFound(m) => ConsoleError::NotFound(m),
        e => ConsoleError::BadRequest(e.to_string()),
    }
}

/// `POST /console/send?e=<queue or topic>`.
pub(super) async fn send(
    State(broker): State<Arc<Broker>>,
    Extension(console): Extension<Arc<Console>>,
    peer: PeerInfo,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ConsoleError> {
    let peer = peer_text(&peer);
    let path = query(&uri, "e").unwrap_or_default().to_ascii_lowercase();
    access::post(
        &broker,
        &console,
        &headers,
        &peer,
        "console.send",
        Right::Send,
        &path,
    )?;
    let entity = broker
        .entity(&path)
        .ok_or_else(|| ConsoleError::NotFound(format!("there is no queue or topic '{path}'")))?;
    let form = Form::parse(&body);
    let repeat: u32 = match form.get("repeat") {
        Some(n) => n
            .parse()
            .ok()
            .filter(|n| (1..=MAX_REPEAT).contains(n))
            .ok_or_else(|| {
                ConsoleError::BadRequest(format!("repeat must be 1 to {MAX_REPEAT}, not '{n}'"))
            })?,
        None => 1,
    };
    let template = message_of(&form)?;
    let mut incoming = Vec::with_capacity(repeat as usize);
    for _ in 0..repeat {
        let m = keybus_core::with_message_id(template.clone(), rand::random());
        let size = u32::try_from(m.encoded_size()).unwrap_or(u32::MAX);
        incoming.push(IncomingMessage::new(m, size));
    }
    broker.store().admit().map_err(|e| match e {
        StoreError::Busy { .. } => {
            ConsoleError::Unavailable(format!("the broker is busy ({e}); try again"))
        }
        e => ConsoleError::Unavailable(format!("the message could not be stored: {e}")),
    })?;
    let now = broker.now();
    let (commit, pending) = {
        let mut st = entity.lock();
        let (_, pending) = st.send(incoming, now, false).map_err(send_error)?;
        (entity.submit(&mut st), pending)
    };
    let durable = match commit {
        Some(f) => f.await.is_ok(),
        None => true,
    };
    entity.lock().finish(&pending, durable);
    if !durable {
        return Err(ConsoleError::Unavailable(
            "the message could not be stored".into(),
        ));
    }
    Ok(notice(&format!(
        "Sent {repeat} message{} to {path}.",
        if repeat == 1 { "" } else { "s" }
    )))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn a_form_becomes_a_message() {
        let f = Form::parse(
            b"body=%7B%22a%22%3A1%7D&content_type=application%2Fjson&message_id=m1&session_id=s1&correlation_id=c1&properties=k%3Dv%0Ax+%3D+y",
        );
        let m = message_of(&f).unwrap();
        let p = m.properties.unwrap();
        assert_eq!(p.message_id, Some(Value::String("m1".into())));
        assert_eq!(p.group_id.as_deref(), Some("s1"));
        assert_eq!(p.correlation_id, Some(Value::String("c1".into())));
        assert_eq!(p.content_type, Some(Symbol::from("application/json")));
        assert_eq!(
            m.application_properties.unwrap(),
            vec![
                (Value::String("k".into()), Value::String("v".into())),
                (Value::String("x".into()), Value::String("y".into())),
            ]
        );
        assert_eq!(m.body_raw, Message::body_data(br#"{"a":1}"#));
    }

    #[test]
    fn a_property_without_equals_is_refused() {
        assert!(message_of(&Form::parse(b"properties=nope")).is_err());
    }
}
