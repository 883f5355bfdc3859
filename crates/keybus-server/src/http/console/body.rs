//! How a message body is shown: JSON pretty-printed, other UTF-8 text as it is, anything
//! else as hex (at most [`MAX_SHOWN`] bytes, with the full length named). An `amqp-value`
//! or `amqp-sequence` body is shown as its value.

use keybus_amqp::{Message, Value};

/// The most body bytes shown.
pub(super) const MAX_SHOWN: usize = 64 * 1024;

/// A body as the console shows it.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Shown {
    Json(String),
    Text(String),
    /// Hex of the first bytes, and the full length.
    Hex(String, usize),
    /// An AMQP value body.
    Value(String),
    Empty,
}

impl Shown {
    pub(super) fn label(&self) -> &'static str {
        match self {
            Shown::Json(_) => "JSON",
            Shown::Text(_) => "text",
            Shown::Hex(..) => "binary (hex)",
            Shown::Value(_) => "AMQP value",
            Shown::Empty => "empty",
        }
    }

    pub(super) fn text(&self) -> String {
        match self {
            Shown::Json(s) | Shown::Text(s) | Shown::Value(s) => s.clone(),
            Shown::Hex(h, len) if len * 2 > h.len() => format!("{h}… ({len} bytes)"),
            Shown::Hex(h, _) => h.clone(),
            Shown::Empty => String::new(),
        }
    }
}

/// Show raw body bytes.
pub(super) fn show_bytes(bytes: &[u8]) -> Shown {
    if bytes.is_empty() {
        return Shown::Empty;
    }
    if let Ok(text) = std::str::from_utf8(bytes) {
        let trimmed = text.trim_start();
        if (trimmed.starts_with('{') || trimmed.starts_with('['))
            && let Ok(v) = serde_json::from_str::<serde_json::Value>(text)
            && let Ok(pretty) = serde_json::to_string_pretty(&v)
        {
            return Shown::Json(pretty);
        }
        let printable = text
            .chars()
            .all(|c| !c.is_control() || matches!(c, '\n' | '\r' | '\t'));
        if printable {
            return Shown::Text(text.chars().take(MAX_SHOWN).collect());
        }
    }
    let hex = bytes
        .iter()
        .take(MAX_SHOWN)
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join("");
    Shown::Hex(hex, bytes.len())
}

/// A value as text (strings as they are).
pub(super) fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Symbol(s) => s.0.clone(),
        Value::Binary(b) => b.iter().map(|x| format!("{x:02x}")).collect(),
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Ubyte(n) => n.to_string(),
        Value::Ushort(n) => n.to_string(),
        Value::Uint(n) => n.to_string(),
        Value::Ulong(n) => n.to_string(),
        Value::Byte(n) => n.to_string(),
        Value::Short(n) => n.to_string(),
        Value::Int(n) => n.to_string(),
        Value::Long(n) => n.to_string(),
        Value::Float(n) => n.to_string(),
        Value::Double(n) => n.to_string(),
        Value::Char(c) => c.to_string(),
        Value::Timestamp(t) => format!("{t} ms"),
        Value::Uuid(u) => uuid::Uuid::from_bytes(*u).to_string(),
        other => format!("{other:?}"),
    }
}

/// Show a message's body.
pub(super) fn show(m: &Message) -> Shown {
    if let Ok(sections) = m.data_sections()
        && !sections.is_empty()
    {
        let all: Vec<u8> = sections.iter().flat_map(|s| s.iter().copied()).collect();
        return show_bytes(&all);
    }
    match m.amqp_value() {
        Ok(Some(v)) => Shown::Value(value_text(&v)),
        _ if m.body_raw.is_empty() => Shown::Empty,
        _ => show_bytes(&m.body_raw),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    #[test]
    fn json_is_pretty_text_is_text_binary_is_hex() {
        assert_eq!(
            show_bytes(br#"{"a":1}"#),
            Shown::Json("{\n  \"a\": 1\n}".into())
        );
        assert_eq!(
            show_bytes(b"hello\nworld"),
            Shown::Text("hello\nworld".into())
        );
        assert_eq!(show_bytes(&[0, 1, 0xff]), Shown::Hex("0001ff".into(), 3));
        assert_eq!(show_bytes(b"{not json"), Shown::Text("{not json".into()));
        assert_eq!(show_bytes(b""), Shown::Empty);
    }

    #[test]
    fn long_binary_is_cut_and_names_its_length() {
        let big = vec![0u8; MAX_SHOWN + 10];
        let s = show_bytes(&big);
        assert!(s.text().ends_with(&format!("({} bytes)", MAX_SHOWN + 10)));
    }

    #[test]
    fn data_and_value_bodies() {
        let m = Message {
            body_raw: Message::body_data(b"hi"),
            ..Message::default()
        };
        assert_eq!(show(&m), Shown::Text("hi".into()));
        let m = Message {
            body_raw: Message::body_value(&Value::String("v".into())),
            ..Message::default()
        };
        assert_eq!(show(&m), Shown::Value("v".into()));
    }
}
