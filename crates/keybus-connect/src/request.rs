//! The HTTP form of a pushed message: the body as-is with its content type, the Service Bus
//! REST API's receive headers (`BrokerProperties` JSON, each application property as a
//! header in Microsoft's value syntax) and CloudEvents binary-mode headers, so a handler
//! written for either convention works. Pure: no I/O.

use keybus_amqp::{Descriptor, Message, Value};
use serde_json::{Map, Value as Json, json};

/// `ce-type` of every pushed message.
pub const CE_TYPE: &str = "com.microsoft.servicebus.message";
/// `content-type` of a message that names none.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// Headers that are HTTP's own or this mapping's: an application property of one of these
/// names is not sent as a header.
const RESERVED: &[&str] = &[
    "authorization",
    "brokerproperties",
    "content-type",
    "content-length",
    "content-encoding",
    "host",
    "connection",
    "keep-alive",
    "transfer-encoding",
    "te",
    "upgrade",
    "expect",
    "date",
];

/// What a message becomes on the wire to the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushRequest {
    pub content_type: String,
    /// Header names lower case, values visible ASCII.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Where a message came from: the namespace (`sb://host[:port]`) and entity path.
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    pub namespace: &'a str,
    pub entity: &'a str,
}

/// The request for `m`, delivered with `lock_token` (RFC 4122 bytes) for the
/// `delivery_count`-th time before this one.
pub fn push_request(m: &Message, lock_token: Option<[u8; 16]>, origin: Origin<'_>) -> PushRequest {
    let p = m.properties.clone().unwrap_or_default();
    let ann = |k: &str| {
        m.message_annotations
            .as_deref()
            .and_then(|a| keybus_amqp::map_get(a, k))
    };
    let mut bp = Map::new();
    let message_id = p.message_id.as_ref().map(value_text);
    if let Some(id) = &message_id {
        bp.insert("MessageId".into(), json!(id));
    }
    if let Some(c) = p.correlation_id.as_ref().map(value_text) {
        bp.insert("CorrelationId".into(), json!(c));
    }
    for (k, v) in [
        ("SessionId", &p.group_id),
        ("Label", &p.subject),
        ("ReplyTo", &p.reply_to),
        ("To", &p.to),
        ("ReplyToSessionId", &p.reply_to_group_id),
    ] {
        if let Some(v) = v {
            bp.insert(k.into(), json!(v));
        }
    }
    let delivery_count = m
        .header
        .as_ref()
        .and_then(|h| h.delivery_count)
        .unwrap_or(0);
    bp.insert("DeliveryCount".into(), json!(u64::from(delivery_count) + 1));
    let sequence = ann("x-opt-sequence-number").and_then(Value::as_i64);
    if let Some(n) = sequence {
        bp.insert("SequenceNumber".into(), json!(n));
        bp.insert("EnqueuedSequenceNumber".into(), json!(n));
    }
    let enqueued = ann("x-opt-enqueued-time").and_then(Value::as_timestamp);
    if let Some(t) = enqueued {
        bp.insert("EnqueuedTimeUtc".into(), json!(http_date(t)));
    }
    if let Some(t) = ann("x-opt-locked-until").and_then(Value::as_timestamp) {
        bp.insert("LockedUntilUtc".into(), json!(http_date(t)));
    }
    if let Some(token) = lock_token {
        bp.insert(
            "LockToken".into(),
            json!(uuid::Uuid::from_bytes(token).hyphenated().to_string()),
        );
    }
    if let Some(ttl) = m.header.as_ref().and_then(|h| h.ttl) {
        bp.insert("TimeToLive".into(), json!(f64::from(ttl) / 1000.0));
    }
    if let Some(Value::String(pk)) = ann("x-opt-partition-key") {
        bp.insert("PartitionKey".into(), json!(pk));
    }
    let mut headers = vec![("brokerproperties".to_string(), Json::Object(bp).to_string())];
    for (k, v) in m.application_properties.as_deref().unwrap_or(&[]) {
        let Some(name) = k.as_str() else { continue };
        let lower = name.to_ascii_lowercase();
        if RESERVED.contains(&lower.as_str()) || lower.starts_with("ce-") || !token(&lower) {
            continue;
        }
        let text = match v {
            Value::String(s) => format!("\"{s}\""),
            other => value_text(other),
        };
        if visible(&text) {
            headers.push((lower, text));
        }
    }
    let id = message_id.or_else(|| sequence.map(|n| n.to_string()));
    let mut ce = vec![
        ("ce-specversion", "1.0".to_string()),
        (
            "ce-source",
            format!("{}/{}", origin.namespace, origin.entity),
        ),
        ("ce-type", CE_TYPE.to_string()),
    ];
    if let Some(id) = id {
        ce.push(("ce-id", id));
    }
    if let Some(t) = enqueued {
        ce.push(("ce-time", rfc3339(t)));
    }
    if let Some(s) = &p.subject {
        ce.push(("ce-subject", s.clone()));
    }
    headers.extend(
        ce.into_iter()
            .filter(|(_, v)| visible(v))
            .map(|(k, v)| (k.to_string(), v)),
    );
    let content_type = p
        .content_type
        .as_ref()
        .map(|s| s.as_str().to_string())
        .filter(|s| visible(s))
        .unwrap_or_else(|| DEFAULT_CONTENT_TYPE.to_string());
    PushRequest {
        content_type,
        headers,
        body: body_bytes(m),
    }
}

/// An HTTP token (header name) character set.
fn token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A header value this mapping sends: visible ASCII and spaces.
fn visible(s: &str) -> bool {
    s.bytes()
        .all(|b| b == b' ' || b == b'\t' || (0x21..0x7f).contains(&b))
}

/// A property value in Microsoft's REST syntax (strings are quoted by the caller).
fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Symbol(s) => s.as_str().to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Long(i) => i.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Short(i) => i.to_string(),
        Value::Byte(i) => i.to_string(),
        Value::Ulong(i) => i.to_string(),
        Value::Uint(i) => i.to_string(),
        Value::Ushort(i) => i.to_string(),
        Value::Ubyte(i) => i.to_string(),
        Value::Double(f) => f.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Timestamp(t) => http_date(*t),
        Value::Uuid(u) => uuid::Uuid::from_bytes(*u).hyphenated().to_string(),
        Value::Binary(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
        other => format!("{other:?}"),
    }
}

/// The body: its data sections joined, or the text of an `amqp-value` string or binary.
fn body_bytes(m: &Message) -> Vec<u8> {
    let mut input: &[u8] = &m.body_raw;
    let mut out = Vec::new();
    while !input.is_empty() {
        let Ok(v) = Value::decode(&mut input) else {
            break;
        };
        if let Value::Described(d, inner) = v {
            match (*d, *inner) {
                (Descriptor::Code(0x75), Value::Binary(b)) => out.extend_from_slice(&b),
                (Descriptor::Code(0x77), Value::String(s)) => out.extend_from_slice(s.as_bytes()),
                (Descriptor::Code(0x77), Value::Binary(b)) => out.extend_from_slice(&b),
                (Descriptor::Code(0x77), other) => {
                    out.extend_from_slice(value_text(&other).as_bytes())
                }
                _ => {}
            }
        }
    }
    out
}

fn system_time(ms: i64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_millis(u64::try_from(ms).unwrap_or(0))
}

/// RFC 1123, as the REST API writes times.
fn http_date(ms: i64) -> String {
    httpdate::fmt_http_date(system_time(ms))
}

/// RFC 3339 with milliseconds, as CloudEvents writes `time`.
fn rfc3339(ms: i64) -> String {
    humantime::format_rfc3339_millis(system_time(ms)).to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use keybus_amqp::{Header, Properties, Symbol};

    fn sym(s: &str) -> Value {
        Value::Symbol(Symbol::from(s))
    }

    fn message() -> Message {
        let s = |v: &str| Value::String(v.to_string());
        let data = Message::body_data(b"{\"order\":7}");
        Message {
            header: Some(Header {
                delivery_count: Some(2),
                ttl: Some(60_000),
                ..Default::default()
            }),
            message_annotations: Some(vec![
                (sym("x-opt-sequence-number"), Value::Long(41)),
                (
                    sym("x-opt-enqueued-time"),
                    Value::Timestamp(1_700_000_000_123),
                ),
                (
                    sym("x-opt-locked-until"),
                    Value::Timestamp(1_700_000_030_000),
                ),
            ]),
            properties: Some(Properties {
                message_id: Some(s("m-1")),
                correlation_id: Some(s("c-9")),
                subject: Some("order.created".into()),
                content_type: Some(Symbol::from("application/json")),
                group_id: Some("cust-3".into()),
                ..Default::default()
            }),
            application_properties: Some(vec![
                (s("Tenant"), s("acme")),
                (s("priority"), Value::Int(5)),
                (s("urgent"), Value::Bool(true)),
                (s("Content-Type"), s("text/evil")),
                (s("bad name"), s("x")),
                (s("ce-id"), s("spoofed")),
                (s("multi"), s("line\nbreak")),
            ]),
            body_raw: data,
            ..Default::default()
        }
    }

    fn header<'a>(r: &'a PushRequest, name: &str) -> Option<&'a str> {
        let mut found = r.headers.iter().filter(|(k, _)| k == name);
        let first = found.next().map(|(_, v)| v.as_str());
        assert!(found.next().is_none(), "{name} sent twice");
        first
    }

    #[test]
    fn body_content_type_and_broker_properties() {
        let token = *uuid::Uuid::parse_str("6f1e0b4c-1b2a-4c3d-8e9f-0a1b2c3d4e5f")
            .unwrap()
            .as_bytes();
        let r = push_request(
            &message(),
            Some(token),
            Origin {
                namespace: "sb://kb:5672",
                entity: "orders",
            },
        );
        assert_eq!(r.body, b"{\"order\":7}");
        assert_eq!(r.content_type, "application/json");
        let bp: Json = serde_json::from_str(header(&r, "brokerproperties").unwrap()).unwrap();
        assert_eq!(bp["MessageId"], "m-1");
        assert_eq!(bp["CorrelationId"], "c-9");
        assert_eq!(bp["SessionId"], "cust-3");
        assert_eq!(bp["Label"], "order.created");
        assert_eq!(bp["DeliveryCount"], 3);
        assert_eq!(bp["SequenceNumber"], 41);
        assert_eq!(bp["TimeToLive"], 60.0);
        assert_eq!(bp["EnqueuedTimeUtc"], "Tue, 14 Nov 2023 22:13:20 GMT");
        assert_eq!(bp["LockedUntilUtc"], "Tue, 14 Nov 2023 22:13:50 GMT");
        assert_eq!(bp["LockToken"], "6f1e0b4c-1b2a-4c3d-8e9f-0a1b2c3d4e5f");
    }

    #[test]
    fn application_properties_become_headers_in_rest_syntax() {
        let r = push_request(
            &message(),
            None,
            Origin {
                namespace: "sb://kb",
                entity: "q",
            },
        );
        assert_eq!(header(&r, "tenant"), Some("\"acme\""));
        assert_eq!(header(&r, "priority"), Some("5"));
        assert_eq!(header(&r, "urgent"), Some("true"));
        // Reserved, malformed and CloudEvents names are never taken from properties.
        assert_eq!(header(&r, "content-type"), None);
        assert_eq!(header(&r, "bad name"), None);
        assert_eq!(header(&r, "multi"), None);
        assert_eq!(header(&r, "ce-id"), Some("m-1"));
    }

    #[test]
    fn cloudevents_binary_mode_headers() {
        let r = push_request(
            &message(),
            None,
            Origin {
                namespace: "sb://kb:5672",
                entity: "events/subscriptions/audit",
            },
        );
        assert_eq!(header(&r, "ce-specversion"), Some("1.0"));
        assert_eq!(header(&r, "ce-id"), Some("m-1"));
        assert_eq!(
            header(&r, "ce-source"),
            Some("sb://kb:5672/events/subscriptions/audit")
        );
        assert_eq!(header(&r, "ce-type"), Some(CE_TYPE));
        assert_eq!(header(&r, "ce-time"), Some("2023-11-14T22:13:20.123Z"));
        assert_eq!(header(&r, "ce-subject"), Some("order.created"));
    }

    #[test]
    fn a_bare_message_gets_defaults_and_its_sequence_number_as_id() {
        let mut m = Message {
            message_annotations: Some(vec![(sym("x-opt-sequence-number"), Value::Long(9))]),
            body_raw: Message::body_value(&Value::String("hello".into())),
            ..Default::default()
        };
        m.properties = None;
        let r = push_request(
            &m,
            None,
            Origin {
                namespace: "sb://kb",
                entity: "q",
            },
        );
        assert_eq!(r.content_type, DEFAULT_CONTENT_TYPE);
        assert_eq!(r.body, b"hello");
        assert_eq!(header(&r, "ce-id"), Some("9"));
        assert_eq!(header(&r, "ce-subject"), None);
        let bp: Json = serde_json::from_str(header(&r, "brokerproperties").unwrap()).unwrap();
        assert_eq!(bp["DeliveryCount"], 1);
        assert!(bp.get("MessageId").is_none());
    }
}
