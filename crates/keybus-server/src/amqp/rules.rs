//! Rule encodings of `$management` (wire reference §7.2): the `add-rule` request map and the
//! described types of `enumerate-rules` responses.

use keybus_amqp::{Descriptor, Value};
use keybus_core::{CorrelationFilter, FilterDefinition, RuleDefinition, SimpleValue};

const RULE_DESCRIPTION: u64 = 0x0000_0137_0000_0004;
const SQL_FILTER: u64 = 0x0000_0013_7000_0006;
const TRUE_FILTER: u64 = 0x0000_0013_7000_0007;
const FALSE_FILTER: u64 = 0x0000_0013_7000_0008;
const CORRELATION_FILTER: u64 = 0x0000_0013_7000_0009;
const EMPTY_ACTION: u64 = 0x0000_0137_0000_0005;
const SQL_ACTION: u64 = 0x0000_0137_0000_0006;
/// The compatibility level Service Bus reports for SQL expressions.
const COMPATIBILITY_LEVEL: i32 = 20;

fn described(code: u64, fields: Vec<Value>) -> Value {
    Value::Described(
        Box::new(Descriptor::Code(code)),
        Box::new(Value::List(fields)),
    )
}

fn opt(s: &Option<String>) -> Value {
    s.as_ref().map_or(Value::Null, |s| Value::String(s.clone()))
}

/// `{ "rule-description": described(rule, [filter, action, name, created-at]) }`.
pub(crate) fn describe(rule: &RuleDefinition) -> Value {
    let filter = match &rule.filter {
        FilterDefinition::True => described(
            TRUE_FILTER,
            vec![Value::String("1=1".into()), Value::Int(COMPATIBILITY_LEVEL)],
        ),
        FilterDefinition::False => described(
            FALSE_FILTER,
            vec![Value::String("1=0".into()), Value::Int(COMPATIBILITY_LEVEL)],
        ),
        FilterDefinition::Sql(expr) => described(
            SQL_FILTER,
            vec![Value::String(expr.clone()), Value::Int(COMPATIBILITY_LEVEL)],
        ),
        FilterDefinition::Correlation(c) => described(
            CORRELATION_FILTER,
            vec![
                opt(&c.correlation_id),
                opt(&c.message_id),
                opt(&c.to),
                opt(&c.reply_to),
                opt(&c.label),
                opt(&c.session_id),
                opt(&c.reply_to_session_id),
                opt(&c.content_type),
                Value::Map(
                    c.properties
                        .iter()
                        .map(|(k, v)| (Value::String(k.clone()), v.to_value()))
                        .collect(),
                ),
            ],
        ),
    };
    let action = match &rule.action {
        Some(expr) => described(
            SQL_ACTION,
            vec![Value::String(expr.clone()), Value::Int(COMPATIBILITY_LEVEL)],
        ),
        None => described(EMPTY_ACTION, vec![]),
    };
    let created = if rule.created_at > 0 {
        Value::Timestamp(rule.created_at)
    } else {
        Value::Null
    };
    Value::Map(vec![(
        Value::String("rule-description".into()),
        described(
            RULE_DESCRIPTION,
            vec![filter, action, Value::String(rule.name.clone()), created],
        ),
    )])
}

fn text(map: &[(Value, Value)], key: &str) -> Option<String> {
    keybus_amqp::map_get(map, key)
        .and_then(Value::as_str)
        .map(str::to_string)
}

fn simple(v: &Value) -> Result<SimpleValue, String> {
    Ok(match v {
        Value::String(s) => SimpleValue::String(s.clone()),
        Value::Symbol(s) => SimpleValue::String(s.as_str().to_string()),
        Value::Bool(b) => SimpleValue::Bool(*b),
        Value::Double(d) => SimpleValue::Double(*d),
        Value::Float(f) => SimpleValue::Double(f64::from(*f)),
        other => match other.as_i64() {
            Some(n) => SimpleValue::Long(n),
            None => return Err(format!("unsupported correlation property value {other:?}")),
        },
    })
}

/// Parse an `add-rule` request body into a rule definition.
pub(crate) fn parse_add_rule(body: &[(Value, Value)], now: i64) -> Result<RuleDefinition, String> {
    let name = text(body, "rule-name")
        .filter(|n| !n.is_empty())
        .ok_or("missing rule-name")?;
    if name.len() > 50 {
        return Err(format!("rule name '{name}' is longer than 50 characters"));
    }
    let desc = keybus_amqp::map_get(body, "rule-description")
        .and_then(Value::as_map)
        .ok_or("missing rule-description")?;
    let sql = keybus_amqp::map_get(desc, "sql-filter").and_then(Value::as_map);
    let corr = keybus_amqp::map_get(desc, "correlation-filter").and_then(Value::as_map);
    let filter = match (sql, corr) {
        (Some(f), None) => {
            FilterDefinition::Sql(text(f, "expression").ok_or("sql-filter needs an expression")?)
        }
        (None, Some(c)) => {
            let mut properties = Vec::new();
            if let Some(props) = keybus_amqp::map_get(c, "properties").and_then(Value::as_map) {
                for (k, v) in props {
                    let k = k
                        .as_str()
                        .ok_or("correlation property names must be strings")?;
                    properties.push((k.to_string(), simple(v)?));
                }
            }
            FilterDefinition::Correlation(CorrelationFilter {
                correlation_id: text(c, "correlation-id"),
                message_id: text(c, "message-id"),
                to: text(c, "to"),
                reply_to: text(c, "reply-to"),
                label: text(c, "label"),
                session_id: text(c, "session-id"),
                reply_to_session_id: text(c, "reply-to-session-id"),
                content_type: text(c, "content-type"),
                properties,
            })
        }
        _ => {
            return Err(
                "rule-description needs exactly one of sql-filter or correlation-filter".into(),
            );
        }
    };
    let action = keybus_amqp::map_get(desc, "sql-rule-action")
        .and_then(Value::as_map)
        .and_then(|a| text(a, "expression"))
        .filter(|e| !e.trim().is_empty());
    Ok(RuleDefinition {
        name,
        filter,
        action,
        created_at: now,
    })
}
