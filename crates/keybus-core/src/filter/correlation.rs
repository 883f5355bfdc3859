//! Correlation filters: equality on a set of system properties and
//! application properties, combined with AND. [`CorrelationFilter`] is the one
//! definition of the filter's fields: rule definitions hold it, the store keeps it,
//! ATOM, AMQP and the config files read and write it, and it matches as it is.

use std::borrow::Cow;

use keybus_amqp::Value;
use serde::{Deserialize, Serialize};

use super::MessageView;
use super::ast::CmpOp;
use super::eval::compare;
use super::value::{Val, id_to_string, user_prop};

/// A simple value in a correlation filter's properties.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum SimpleValue {
    String(String),
    Long(i64),
    Double(f64),
    Bool(bool),
}

impl SimpleValue {
    /// The AMQP value a message property must equal.
    pub fn to_value(&self) -> Value {
        match self {
            SimpleValue::String(s) => Value::String(s.clone()),
            SimpleValue::Long(n) => Value::Long(*n),
            SimpleValue::Double(d) => Value::Double(*d),
            SimpleValue::Bool(b) => Value::Bool(*b),
        }
    }

    fn val(&self) -> Val<'_> {
        match self {
            SimpleValue::String(s) => Val::Str(Cow::Borrowed(s)),
            SimpleValue::Long(n) => Val::Long(*n),
            SimpleValue::Double(d) => Val::Double(*d),
            SimpleValue::Bool(b) => Val::Bool(*b),
        }
    }
}

/// A `CorrelationRuleFilter`. Every field that is set must equal the
/// message's (exact, case-sensitive string comparison); every entry of
/// `properties` must name an application property whose value equals it
/// (numbers compare by value across widths, other types must match: the
/// string `"2"` does not equal the number `2`). No field set matches
/// everything.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct CorrelationFilter {
    pub correlation_id: Option<String>,
    pub message_id: Option<String>,
    pub to: Option<String>,
    pub reply_to: Option<String>,
    /// `Label` / `Subject`.
    pub label: Option<String>,
    pub session_id: Option<String>,
    pub reply_to_session_id: Option<String>,
    pub content_type: Option<String>,
    pub properties: Vec<(String, SimpleValue)>,
}

impl CorrelationFilter {
    /// True when no field and no property is set (Service Bus refuses such a filter).
    pub fn is_empty(&self) -> bool {
        [
            &self.correlation_id,
            &self.message_id,
            &self.to,
            &self.reply_to,
            &self.label,
            &self.session_id,
            &self.reply_to_session_id,
            &self.content_type,
        ]
        .iter()
        .all(|f| f.is_none())
            && self.properties.is_empty()
    }
}

fn field_matches(expected: Option<&String>, actual: Option<&str>) -> bool {
    expected.is_none_or(|e| actual == Some(e.as_str()))
}

fn values_equal(expected: &SimpleValue, actual: &Value) -> bool {
    let (e, a) = (expected.val(), Val::from_value(actual));
    match (&e, &a) {
        (Val::Null, Val::Null) => true,
        _ => matches!(compare(CmpOp::Eq, &e, &a), Ok(Some(true))),
    }
}

impl CorrelationFilter {
    /// Whether the message has every set field and property.
    pub fn matches(&self, view: &MessageView<'_>) -> bool {
        let msg = view.message;
        let props = msg.properties.as_ref();
        let message_id: Option<Cow<'_, str>> = props
            .and_then(|p| p.message_id.as_ref())
            .and_then(id_to_string);
        let correlation_id: Option<Cow<'_, str>> = props
            .and_then(|p| p.correlation_id.as_ref())
            .and_then(id_to_string);
        let s = |f: fn(&keybus_amqp::Properties) -> Option<&String>| {
            props.and_then(f).map(String::as_str)
        };
        field_matches(self.message_id.as_ref(), message_id.as_deref())
            && field_matches(self.correlation_id.as_ref(), correlation_id.as_deref())
            && field_matches(self.to.as_ref(), s(|p| p.to.as_ref()))
            && field_matches(self.reply_to.as_ref(), s(|p| p.reply_to.as_ref()))
            && field_matches(self.label.as_ref(), s(|p| p.subject.as_ref()))
            && field_matches(self.session_id.as_ref(), s(|p| p.group_id.as_ref()))
            && field_matches(
                self.reply_to_session_id.as_ref(),
                s(|p| p.reply_to_group_id.as_ref()),
            )
            && field_matches(
                self.content_type.as_ref(),
                props
                    .and_then(|p| p.content_type.as_ref())
                    .map(|c| c.as_str()),
            )
            && self.properties.iter().all(|(name, expected)| {
                user_prop(msg, name).is_some_and(|actual| values_equal(expected, actual))
            })
    }
}
