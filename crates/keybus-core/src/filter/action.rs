//! Applying rule-action statements to a message.

use keybus_amqp::{Message, Properties, Symbol, Value};

use super::ast::{PropRef, Statement, SysProp};
use super::error::EvalError;
use super::eval::{Ctx, eval};
use super::value::{format_uuid, user_prop_index, value_type_name};
use super::{MessageView, SystemProps};

/// Run the statements in order, each seeing the effects of the ones before.
/// All or nothing: on an error `msg` is left untouched.
pub(crate) fn apply(
    statements: &[Statement],
    params: &[(String, Value)],
    msg: &mut Message,
    sys: &SystemProps,
) -> Result<(), EvalError> {
    let mut work = msg.clone();
    for st in statements {
        match st {
            Statement::Set(prop, expr) => {
                let value = {
                    let view = MessageView::new(&work, sys);
                    let ctx = Ctx {
                        view: &view,
                        params,
                    };
                    eval(&ctx, expr)?.into_value()
                };
                match prop {
                    PropRef::User(name) => set_user(&mut work, name, value),
                    PropRef::Sys(p) => set_sys(&mut work, *p, value)?,
                }
            }
            Statement::Remove(PropRef::User(name)) => {
                if let Some(props) = work.application_properties.as_mut()
                    && let Some(i) = user_prop_index(props, name)
                {
                    props.remove(i);
                }
            }
            Statement::Remove(PropRef::Sys(p)) => set_sys(&mut work, *p, Value::Null)?,
        }
    }
    *msg = work;
    Ok(())
}

fn set_user(msg: &mut Message, name: &str, value: Value) {
    let props = msg.application_properties.get_or_insert_with(Vec::new);
    match user_prop_index(props, name).and_then(|i| props.get_mut(i)) {
        Some((_, existing)) => {
            let converted = convert_like(existing, value);
            *existing = converted;
        }
        None => props.push((Value::String(name.to_owned()), value)),
    }
}

/// `SET` keeps the type of an existing property when the new value converts
/// to it without loss (integer widths, integer to floating point, and string
/// literals that parse as the existing number or boolean type).
fn convert_like(existing: &Value, new: Value) -> Value {
    let new = match (existing, &new) {
        (
            Value::Byte(_)
            | Value::Short(_)
            | Value::Int(_)
            | Value::Long(_)
            | Value::Ubyte(_)
            | Value::Ushort(_)
            | Value::Uint(_)
            | Value::Ulong(_),
            Value::String(s),
        ) => s.trim().parse::<i64>().map_or(new, Value::Long),
        (Value::Double(_) | Value::Float(_), Value::String(s)) => {
            s.trim().parse::<f64>().map_or(new, Value::Double)
        }
        (Value::Bool(_), Value::String(s)) if s.eq_ignore_ascii_case("true") => Value::Bool(true),
        (Value::Bool(_), Value::String(s)) if s.eq_ignore_ascii_case("false") => Value::Bool(false),
        _ => new,
    };
    match (existing, new) {
        (Value::Int(_), Value::Long(n)) => i32::try_from(n).map_or(Value::Long(n), Value::Int),
        (Value::Short(_), Value::Long(n)) => i16::try_from(n).map_or(Value::Long(n), Value::Short),
        (Value::Byte(_), Value::Long(n)) => i8::try_from(n).map_or(Value::Long(n), Value::Byte),
        (Value::Uint(_), Value::Long(n)) => u32::try_from(n).map_or(Value::Long(n), Value::Uint),
        (Value::Ushort(_), Value::Long(n)) => {
            u16::try_from(n).map_or(Value::Long(n), Value::Ushort)
        }
        (Value::Ubyte(_), Value::Long(n)) => u8::try_from(n).map_or(Value::Long(n), Value::Ubyte),
        (Value::Ulong(_), Value::Long(n)) => u64::try_from(n).map_or(Value::Long(n), Value::Ulong),
        (Value::Double(_), Value::Long(n)) => Value::Double(n as f64),
        (Value::Float(_), Value::Long(n)) => Value::Float(n as f32),
        (_, new) => new,
    }
}

/// A value for a string-typed system property: `None` clears it.
fn string_for(p: SysProp, value: Value) -> Result<Option<String>, EvalError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s)),
        Value::Symbol(s) => Ok(Some(s.0)),
        Value::Uuid(u) => Ok(Some(format_uuid(&u))),
        other => Err(EvalError::InvalidAssignment {
            property: p.name(),
            value: value_type_name(&other),
        }),
    }
}

fn set_sys(msg: &mut Message, p: SysProp, value: Value) -> Result<(), EvalError> {
    let s = string_for(p, value)?;
    if p == SysProp::PartitionKey {
        let ann = msg.message_annotations.get_or_insert_with(Vec::new);
        ann.retain(|(k, _)| k.as_str() != Some("x-opt-partition-key"));
        if let Some(s) = s {
            ann.push((Value::symbol("x-opt-partition-key"), Value::String(s)));
        }
        return Ok(());
    }
    let props = msg.properties.get_or_insert_with(Properties::default);
    match p {
        SysProp::MessageId => props.message_id = s.map(Value::String),
        SysProp::CorrelationId => props.correlation_id = s.map(Value::String),
        SysProp::To => props.to = s,
        SysProp::ReplyTo => props.reply_to = s,
        SysProp::Label => props.subject = s,
        SysProp::SessionId => props.group_id = s,
        SysProp::ReplyToSessionId => props.reply_to_group_id = s,
        SysProp::ContentType => props.content_type = s.map(Symbol),
        // The parser rejects the others (`SysProp::is_settable`).
        _ => {
            return Err(EvalError::InvalidAssignment {
                property: p.name(),
                value: "any",
            });
        }
    }
    Ok(())
}
