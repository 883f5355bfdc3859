//! A correlation filter as both config files write it: the fields of
//! [`keybus_core::CorrelationFilter`] in the TOML file's `snake_case` or the emulator's
//! `PascalCase`, properties as a table of plain values (`prop = "text"`, `n = 2`, `x = 1.5`,
//! `b = true`). An empty text is an unset field, as in the management API.

use std::collections::BTreeMap;

use keybus_core::{CorrelationFilter, SimpleValue};
use serde::Deserialize;

/// The file form of a correlation filter.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(super) struct FileCorrelation {
    #[serde(alias = "CorrelationId")]
    correlation_id: Option<String>,
    #[serde(alias = "MessageId")]
    message_id: Option<String>,
    #[serde(alias = "To")]
    to: Option<String>,
    #[serde(alias = "ReplyTo")]
    reply_to: Option<String>,
    #[serde(alias = "Label")]
    label: Option<String>,
    #[serde(alias = "SessionId")]
    session_id: Option<String>,
    #[serde(alias = "ReplyToSessionId")]
    reply_to_session_id: Option<String>,
    #[serde(alias = "ContentType")]
    content_type: Option<String>,
    #[serde(alias = "Properties")]
    properties: BTreeMap<String, FileValue>,
}

/// A property value: an integer is a long, any other number a double.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileValue {
    Bool(bool),
    Long(i64),
    Double(f64),
    String(String),
}

impl From<FileCorrelation> for CorrelationFilter {
    fn from(c: FileCorrelation) -> Self {
        let set = |v: Option<String>| v.filter(|s| !s.is_empty());
        CorrelationFilter {
            correlation_id: set(c.correlation_id),
            message_id: set(c.message_id),
            to: set(c.to),
            reply_to: set(c.reply_to),
            label: set(c.label),
            session_id: set(c.session_id),
            reply_to_session_id: set(c.reply_to_session_id),
            content_type: set(c.content_type),
            properties: c
                .properties
                .into_iter()
                .map(|(k, v)| {
                    let v = match v {
                        FileValue::Bool(b) => SimpleValue::Bool(b),
                        FileValue::Long(n) => SimpleValue::Long(n),
                        FileValue::Double(d) => SimpleValue::Double(d),
                        FileValue::String(s) => SimpleValue::String(s),
                    };
                    (k, v)
                })
                .collect(),
        }
    }
}
