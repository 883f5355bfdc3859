//! The `$cbs` node: `put-token` (wire reference §3). SAS tokens are validated and kept per
//! connection, keyed by audience; links are authorised against them.

use keybus_amqp::{Bytes, BytesMut, Message, Properties, Value};

use super::state::Conn;

/// Read `name` from a message's application properties as text.
pub(crate) fn app_prop<'a>(msg: &'a Message, name: &str) -> Option<&'a Value> {
    keybus_amqp::map_get(msg.application_properties.as_deref()?, name)
}

/// The single `amqp-value` body of a message.
pub(crate) fn body_value(msg: &Message) -> Option<Value> {
    let mut input: &[u8] = &msg.body_raw;
    match Value::decode(&mut input).ok()? {
        Value::Described(d, v) if matches!(*d, keybus_amqp::Descriptor::Code(0x77)) => Some(*v),
        _ => None,
    }
}

/// A message id as audit text: UUIDs hyphenated, numbers in decimal, binary in hex, strings
/// and symbols as they are (never Rust debug text).
pub(crate) fn id_text(id: &Value) -> String {
    match id {
        Value::Uuid(b) => uuid::Uuid::from_bytes(*b).hyphenated().to_string(),
        Value::String(s) => s.clone(),
        Value::Symbol(s) => s.0.clone(),
        Value::Ulong(n) => n.to_string(),
        Value::Uint(n) => n.to_string(),
        Value::Long(n) => n.to_string(),
        Value::Int(n) => n.to_string(),
        Value::Binary(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
        other => format!("{other:?}"),
    }
}

/// Build a response message: correlation-id = the request's message-id (same AMQP type),
/// the given application properties, and an optional `amqp-value` body.
pub(crate) fn response(request: &Message, app: Vec<(Value, Value)>, body: Option<Value>) -> Bytes {
    let correlation_id = request
        .properties
        .as_ref()
        .and_then(|p| p.message_id.clone());
    let msg = Message {
        properties: Some(Properties {
            correlation_id,
            ..Default::default()
        }),
        application_properties: Some(app),
        body_raw: Message::body_value(&body.unwrap_or(Value::Null)),
        ..Default::default()
    };
    let mut buf = BytesMut::with_capacity(msg.encoded_size());
    msg.encode(&mut buf);
    buf.freeze()
}

fn s(v: &str) -> Value {
    Value::String(v.to_string())
}

impl Conn {
    pub(super) fn on_cbs_request(&mut self, channel: u16, msg: &Message) {
        let op = app_prop(msg, "operation")
            .and_then(Value::as_str)
            .unwrap_or("");
        let (status, description) = if op != "put-token" {
            (400, format!("unsupported $cbs operation '{op}'"))
        } else {
            let name = app_prop(msg, "name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let kind = app_prop(msg, "type").and_then(Value::as_str).unwrap_or("");
            let token = body_value(msg);
            let correlation = msg
                .properties
                .as_ref()
                .and_then(|p| p.message_id.as_ref())
                .map(id_text);
            // Python sends `type = jwt` even for SAS tokens, so the token's own form decides.
            match (kind, token.as_ref().and_then(Value::as_str)) {
                (_, None) => (
                    400,
                    "the put-token body must be the token as a string".to_string(),
                ),
                ("jwt" | "amqp:jwt" | "servicebus.windows.net:sastoken", Some(token)) => {
                    if name.is_empty() {
                        (
                            400,
                            "put-token needs the `name` property (the audience)".to_string(),
                        )
                    } else {
                        let r = self.put_token(&name, token, correlation);
                        (r.status, r.description)
                    }
                }
                (other, _) => (400, format!("unsupported token type '{other}'")),
            }
        };
        self.broker.metrics().request("put-token", status);
        let reply_to = msg.properties.as_ref().and_then(|p| p.reply_to.clone());
        let app = vec![
            (s("status-code"), Value::Int(status)),
            (s("status-description"), s(&description)),
        ];
        let bytes = response(msg, app, None);
        if let Some((ch, h)) = self.reply_link(channel, reply_to.as_deref(), "$cbs") {
            self.send_reply(ch, h, &bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_text() {
        let u = Value::Uuid([74, 114, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
        assert_eq!(id_text(&u), "4a720001-0203-0405-0607-08090a0b0c0d");
        assert_eq!(id_text(&Value::Ulong(7)), "7");
        assert_eq!(id_text(&Value::String("m-1".into())), "m-1");
        assert_eq!(
            id_text(&Value::Binary(Bytes::from_static(b"\x01\xff"))),
            "01ff"
        );
    }
}
