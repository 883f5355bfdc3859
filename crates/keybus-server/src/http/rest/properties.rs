//! The HTTP form of a message, both ways: `BrokerProperties` (a JSON header) carries the
//! system properties, every other non-standard header is a custom property (Microsoft's
//! value syntax: `"text"`, `true`, `12`, `1.5`); a batch is a JSON array. Lock tokens are
//! UUIDs, times RFC 1123 dates.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use keybus_amqp::{Descriptor, Header, Message, Properties, Symbol, Value};
use keybus_core::{LockToken, ReceiveMode};
use percent_encoding::utf8_percent_encode;
use serde_json::{Map, Value as Json, json};

use crate::http::common::{HttpError, UNRESERVED, bad};

/// Messages in one batch send.
const MAX_BATCH: usize = 1000;
/// The batch content type.
const BATCH_TYPE: &str = "application/vnd.microsoft.servicebus.json";

/// Headers that are HTTP's or the API's own, never custom properties.
const STANDARD_HEADERS: &[&str] = &[
    "authorization",
    "brokerproperties",
    "content-type",
    "content-length",
    "content-encoding",
    "host",
    "accept",
    "accept-encoding",
    "accept-language",
    "user-agent",
    "connection",
    "keep-alive",
    "expect",
    "transfer-encoding",
    "te",
    "date",
    "cookie",
    "origin",
    "referer",
    "cache-control",
    "pragma",
    "upgrade",
    "via",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-real-ip",
    "traceparent",
    "tracestate",
    "servicebussupplementaryauthorization",
    "servicebusdlqsupplementaryauthorization",
];

pub(super) fn parse_lock(s: &str) -> Result<LockToken, HttpError> {
    uuid::Uuid::try_parse(s)
        .map(|u| LockToken(u.into_bytes()))
        .map_err(|_| bad(format!("'{s}' is not a lock token")))
}

pub(super) fn format_lock(t: LockToken) -> String {
    uuid::Uuid::from_bytes(t.0).hyphenated().to_string()
}

/// The messages of a send request: one from the body, `BrokerProperties` and custom
/// headers, or a batch (a JSON array of `{Body, BrokerProperties, UserProperties}`).
pub(super) fn messages(headers: &HeaderMap, body: &[u8]) -> Result<Vec<Message>, HttpError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let messages = if content_type
        .as_deref()
        .is_some_and(|c| c.to_ascii_lowercase().starts_with(BATCH_TYPE))
    {
        let items: Vec<Json> = serde_json::from_slice(body)
            .map_err(|e| bad(format!("a batch is a JSON array of messages: {e}")))?;
        if items.is_empty() || items.len() > MAX_BATCH {
            return Err(bad(format!("a batch holds 1 to {MAX_BATCH} messages")));
        }
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let obj = item
                .as_object()
                .ok_or_else(|| bad(format!("batch[{i}] is not an object")))?;
            let text = match obj.get("Body") {
                Some(Json::String(s)) => s.clone(),
                None | Some(Json::Null) => String::new(),
                Some(other) => other.to_string(),
            };
            let bp = match obj.get("BrokerProperties") {
                None | Some(Json::Null) => None,
                Some(Json::Object(m)) => Some(m),
                Some(_) => {
                    return Err(bad(format!("batch[{i}].BrokerProperties is not an object")));
                }
            };
            let up = match obj.get("UserProperties") {
                None | Some(Json::Null) => Vec::new(),
                Some(Json::Object(m)) => custom_from_json(m)?,
                Some(_) => return Err(bad(format!("batch[{i}].UserProperties is not an object"))),
            };
            out.push(build(text.as_bytes(), None, bp, up)?);
        }
        out
    } else {
        let bp: Option<Map<String, Json>> = match headers.get("brokerproperties") {
            None => None,
            Some(v) => {
                let s = v
                    .to_str()
                    .map_err(|_| bad("BrokerProperties is not text"))?;
                match serde_json::from_str::<Json>(s) {
                    Ok(Json::Object(m)) => Some(m),
                    _ => return Err(bad("BrokerProperties must be a JSON object")),
                }
            }
        };
        vec![build(
            body,
            content_type.as_deref(),
            bp.as_ref(),
            custom_from_headers(headers)?,
        )?]
    };
    Ok(messages)
}

/// Build one message from a body, `BrokerProperties` and custom properties.
fn build(
    body: &[u8],
    content_type: Option<&str>,
    broker_props: Option<&Map<String, Json>>,
    custom: Vec<(Value, Value)>,
) -> Result<Message, HttpError> {
    let mut props = Properties {
        content_type: content_type.map(Symbol::from),
        ..Default::default()
    };
    let mut header = Header::default();
    let mut ann: Vec<(Value, Value)> = Vec::new();
    let sym = |s: &str| Value::Symbol(Symbol::from(s));
    if let Some(bp) = broker_props {
        let text = |k: &str| -> Result<Option<String>, HttpError> {
            match bp.get(k) {
                None | Some(Json::Null) => Ok(None),
                Some(Json::String(s)) => Ok(Some(s.clone())),
                Some(other) => Err(bad(format!(
                    "BrokerProperties.{k} must be a string, not {other}"
                ))),
            }
        };
        for k in bp.keys() {
            if !matches!(
                k.as_str(),
                "MessageId"
                    | "CorrelationId"
                    | "SessionId"
                    | "Label"
                    | "ReplyTo"
                    | "To"
                    | "TimeToLive"
                    | "ScheduledEnqueueTimeUtc"
                    | "ReplyToSessionId"
                    | "PartitionKey"
                    | "ViaPartitionKey"
                    | "ContentType"
                    | "ForcePersistence"
            ) {
                return Err(bad(format!(
                    "BrokerProperties has an unknown property '{k}'"
                )));
            }
        }
        props.message_id = text("MessageId")?.map(Value::String);
        props.correlation_id = text("CorrelationId")?.map(Value::String);
        props.group_id = text("SessionId")?;
        props.subject = text("Label")?;
        props.reply_to = text("ReplyTo")?;
        props.to = text("To")?;
        props.reply_to_group_id = text("ReplyToSessionId")?;
        if let Some(ct) = text("ContentType")? {
            props.content_type = Some(Symbol::from(ct.as_str()));
        }
        if let Some(pk) = text("PartitionKey")? {
            ann.push((sym("x-opt-partition-key"), Value::String(pk)));
        }
        match bp.get("TimeToLive") {
            None | Some(Json::Null) => {}
            Some(Json::Number(n)) => {
                let secs = n.as_f64().filter(|s| *s > 0.0).ok_or_else(|| {
                    bad("BrokerProperties.TimeToLive must be a positive number of seconds")
                })?;
                header.ttl = Some((secs * 1000.0).min(u32::MAX as f64) as u32);
            }
            Some(other) => {
                return Err(bad(format!(
                    "BrokerProperties.TimeToLive must be a number, not {other}"
                )));
            }
        }
        if let Some(t) = text("ScheduledEnqueueTimeUtc")? {
            let at = parse_http_date(&t).ok_or_else(|| {
                bad(format!(
                    "BrokerProperties.ScheduledEnqueueTimeUtc '{t}' is not an RFC 1123 date"
                ))
            })?;
            ann.push((sym("x-opt-scheduled-enqueue-time"), Value::Timestamp(at)));
        }
    }
    Ok(Message {
        header: Some(header),
        delivery_annotations: None,
        message_annotations: (!ann.is_empty()).then_some(ann),
        properties: Some(props),
        application_properties: (!custom.is_empty()).then_some(custom),
        body_raw: Message::body_data(body),
    })
}

/// A custom property's value as Microsoft writes it: `"text"`, `true`, `12`, `1.5`, a date.
fn custom_value(raw: &str) -> Value {
    let t = raw.trim();
    if t.len() >= 2 && t.starts_with('"') && t.ends_with('"') {
        return Value::String(t[1..t.len() - 1].to_string());
    }
    match t {
        "true" => return Value::Bool(true),
        "false" => return Value::Bool(false),
        _ => {}
    }
    if let Ok(i) = t.parse::<i64>() {
        return Value::Long(i);
    }
    if let Ok(f) = t.parse::<f64>()
        && f.is_finite()
    {
        return Value::Double(f);
    }
    Value::String(t.to_string())
}

fn custom_from_headers(headers: &HeaderMap) -> Result<Vec<(Value, Value)>, HttpError> {
    let mut out = Vec::new();
    for (name, value) in headers {
        let n = name.as_str();
        if STANDARD_HEADERS.contains(&n) || n.starts_with("x-ms-") || n.starts_with("sec-") {
            continue;
        }
        let v = value
            .to_str()
            .map_err(|_| bad(format!("the header '{n}' is not text")))?;
        out.push((Value::String(n.to_string()), custom_value(v)));
    }
    Ok(out)
}

fn custom_from_json(m: &Map<String, Json>) -> Result<Vec<(Value, Value)>, HttpError> {
    m.iter()
        .map(|(k, v)| {
            let v = match v {
                Json::String(s) => Value::String(s.clone()),
                Json::Bool(b) => Value::Bool(*b),
                Json::Number(n) => n
                    .as_i64()
                    .map(Value::Long)
                    .or_else(|| n.as_f64().map(Value::Double))
                    .unwrap_or(Value::Null),
                Json::Null => Value::Null,
                other => {
                    return Err(bad(format!(
                        "UserProperties.{k} must be a scalar, not {other}"
                    )));
                }
            };
            Ok((Value::String(k.clone()), v))
        })
        .collect()
}

/// The HTTP form of a delivered message.
pub(super) fn respond(
    d: &keybus_core::Delivery,
    mode: ReceiveMode,
    path: &str,
) -> Result<Response, HttpError> {
    let m = Message::decode(&d.encoded()).map_err(|e| {
        HttpError::Unavailable(format!("a stored message could not be decoded: {e}"))
    })?;
    let ann = |k: &str| {
        m.message_annotations
            .as_deref()
            .and_then(|a| keybus_amqp::map_get(a, k))
            .cloned()
    };
    let mut bp = Map::new();
    let p = m.properties.clone().unwrap_or_default();
    let text = |v: &Option<Value>| v.as_ref().map(value_text);
    if let Some(id) = text(&p.message_id) {
        bp.insert("MessageId".into(), json!(id));
    }
    if let Some(c) = text(&p.correlation_id) {
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
    bp.insert("DeliveryCount".into(), json!(delivery_count + 1));
    bp.insert("SequenceNumber".into(), json!(d.sequence_number));
    bp.insert("EnqueuedSequenceNumber".into(), json!(d.sequence_number));
    if let Some(Value::Timestamp(t)) = ann("x-opt-enqueued-time") {
        bp.insert("EnqueuedTimeUtc".into(), json!(http_date(t)));
    }
    if let Some(ttl) = m.header.as_ref().and_then(|h| h.ttl) {
        bp.insert("TimeToLive".into(), json!(f64::from(ttl) / 1000.0));
    }
    if let Some(Value::String(pk)) = ann("x-opt-partition-key") {
        bp.insert("PartitionKey".into(), json!(pk));
    }
    if let Some(Value::String(r)) = ann("DeadLetterReason").or_else(|| {
        m.application_properties
            .as_deref()
            .and_then(|a| keybus_amqp::map_get(a, "DeadLetterReason"))
            .cloned()
    }) {
        bp.insert("DeadLetterReason".into(), json!(r));
    }
    bp.insert(
        "State".into(),
        json!(match ann("x-opt-message-state") {
            Some(Value::Int(1)) => "Deferred",
            Some(Value::Int(2)) => "Scheduled",
            _ => "Active",
        }),
    );
    let mut location = None;
    if mode == ReceiveMode::PeekLock {
        let token = format_lock(d.lock_token);
        bp.insert("LockToken".into(), json!(token));
        if let Some(until) = d.locked_until {
            bp.insert("LockedUntilUtc".into(), json!(http_date(until)));
        }
        let id = bp
            .get("MessageId")
            .and_then(Json::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| d.sequence_number.to_string());
        location = Some(format!(
            "/{path}/messages/{}/{token}",
            utf8_percent_encode(&id, UNRESERVED)
        ));
    }
    let status = if mode == ReceiveMode::PeekLock {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut r = (status, body_bytes(&m)).into_response();
    let h = r.headers_mut();
    insert(h, "brokerproperties", &Json::Object(bp).to_string());
    if let Some(ct) = &p.content_type {
        insert(h, "content-type", ct.as_str());
    } else {
        insert(h, "content-type", "application/octet-stream");
    }
    if let Some(l) = location {
        insert(h, "location", &l);
    }
    for (k, v) in m.application_properties.as_deref().unwrap_or(&[]) {
        let Some(name) = k.as_str() else { continue };
        let lower = name.to_ascii_lowercase();
        if STANDARD_HEADERS.contains(&lower.as_str()) {
            continue;
        }
        let text = match v {
            Value::String(s) => format!("\"{s}\""),
            other => value_text(other),
        };
        insert(h, &lower, &text);
    }
    Ok(r)
}

pub(super) fn insert(h: &mut HeaderMap, name: &str, value: &str) {
    if let (Ok(n), Ok(v)) = (HeaderName::try_from(name), HeaderValue::from_str(value)) {
        h.insert(n, v);
    }
}

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
        Value::Uuid(u) => format_lock(LockToken(*u)),
        Value::Binary(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
        other => format!("{other:?}"),
    }
}

/// The message body: its data sections, or the text of an `amqp-value` string or binary.
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

// ------------------------------------------------------------------------------ dates

/// RFC 1123 (`Sun, 06 Nov 1994 08:49:37 GMT`), as the REST API writes times.
pub(super) fn http_date(ms: i64) -> String {
    httpdate::fmt_http_date(std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64))
}

/// Parse an RFC 1123 date (also accepts RFC 3339).
fn parse_http_date(s: &str) -> Option<i64> {
    let s = s.trim();
    let at = humantime::parse_rfc3339_weak(s.trim_end_matches('Z'))
        .ok()
        .or_else(|| httpdate::parse_http_date(s).ok())?;
    at.duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_millis() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_tokens_round_trip() {
        let t = LockToken([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16]);
        assert_eq!(parse_lock(&format_lock(t)).ok(), Some(t));
    }

    #[test]
    fn dates() {
        assert_eq!(http_date(784_111_777_000), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(784_111_777_000)
        );
        assert_eq!(
            parse_http_date("2024-02-29T12:00:00Z"),
            Some(1_709_208_000_000)
        );
        assert_eq!(parse_http_date("tomorrow"), None);
        for ms in [0, 951_782_400_000, 1_709_208_000_000, 4_102_444_800_000] {
            assert_eq!(parse_http_date(&http_date(ms)), Some(ms));
        }
    }

    #[test]
    fn custom_values() {
        assert_eq!(custom_value("\"x\""), Value::String("x".into()));
        assert_eq!(custom_value("12"), Value::Long(12));
        assert_eq!(custom_value("1.5"), Value::Double(1.5));
        assert_eq!(custom_value("true"), Value::Bool(true));
        assert_eq!(custom_value("plain"), Value::String("plain".into()));
    }
}
