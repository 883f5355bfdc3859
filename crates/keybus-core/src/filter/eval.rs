//! Evaluation with SQL three-valued logic.
//!
//! A missing user property, and `NULL`, evaluate as *unknown* ([`Val::Null`]).
//! Arithmetic, comparisons and `LIKE` over unknown are unknown; `IN` is
//! unknown when its left operand is; `AND`/`OR`/`NOT` follow the truth tables
//! of the Service Bus documentation. Operand types follow C# operator binding:
//! integers widen to double, `+` concatenates strings, `=`/`<>` compare
//! strings, booleans and guids ordinally, while `<`, `>` ... are defined only
//! for numbers, datetimes and timespans. Other combinations are an
//! [`EvalError::TypeMismatch`], as a filter evaluation exception in Service Bus.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use keybus_amqp::{Value, map_get};

use super::MessageView;
use super::ast::{ArithOp, CmpOp, Constant, Expr, PropRef, SysProp};
use super::error::EvalError;
use super::value::{TICKS_PER_MS, Val, id_to_string, names_equal, user_prop};

pub(crate) struct Ctx<'v, 'a> {
    pub view: &'v MessageView<'a>,
    pub params: &'a [(String, Value)],
}

/// Evaluate a filter: `true` only when the predicate is TRUE (not FALSE, not unknown).
pub(crate) fn eval_filter(ctx: &Ctx<'_, '_>, e: &Expr) -> Result<bool, EvalError> {
    match eval(ctx, e)? {
        Val::Bool(b) => Ok(b),
        Val::Null => Ok(false),
        other => Err(EvalError::NotBoolean(other.type_name())),
    }
}

pub(crate) fn eval<'a>(ctx: &Ctx<'_, 'a>, e: &'a Expr) -> Result<Val<'a>, EvalError> {
    Ok(match e {
        Expr::Const(c) => match c {
            Constant::Null => Val::Null,
            Constant::Bool(b) => Val::Bool(*b),
            Constant::Long(x) => Val::Long(*x),
            Constant::Double(x) => Val::Double(*x),
            Constant::Str(s) => Val::Str(Cow::Borrowed(s)),
        },
        Expr::Param(name) => {
            let found = ctx
                .params
                .iter()
                .find(|(k, _)| k == name)
                .or_else(|| ctx.params.iter().find(|(k, _)| names_equal(k, name)));
            match found {
                Some((_, v)) => Val::from_value(v),
                None => return Err(EvalError::UnknownParameter(name.clone())),
            }
        }
        Expr::Prop(p) => prop_value(ctx.view, p),
        Expr::NewId => Val::Uuid(new_uuid()),
        Expr::PropertyFn(arg) => match eval(ctx, arg)? {
            Val::Null => Val::Null,
            Val::Str(name) => dynamic_property(ctx.view, &name)?,
            other => {
                return Err(EvalError::InvalidOperand {
                    op: "property()",
                    operand: other.type_name(),
                });
            }
        },
        Expr::Neg(inner) => match eval(ctx, inner)? {
            Val::Null => Val::Null,
            Val::Long(x) => Val::Long(x.checked_neg().ok_or(EvalError::Overflow)?),
            Val::Double(x) => Val::Double(-x),
            Val::TimeSpan(x) => Val::TimeSpan(x.checked_neg().ok_or(EvalError::Overflow)?),
            other => {
                return Err(EvalError::InvalidOperand {
                    op: "unary -",
                    operand: other.type_name(),
                });
            }
        },
        Expr::Pos(inner) => match eval(ctx, inner)? {
            v @ (Val::Null | Val::Long(_) | Val::Double(_) | Val::TimeSpan(_)) => v,
            other => {
                return Err(EvalError::InvalidOperand {
                    op: "unary +",
                    operand: other.type_name(),
                });
            }
        },
        Expr::Arith(first, rest) => {
            let mut acc = eval(ctx, first)?;
            for (op, rhs) in rest {
                let r = eval(ctx, rhs)?;
                acc = arith(*op, acc, r)?;
            }
            acc
        }
        Expr::Cmp(l, op, r) => {
            let l = eval(ctx, l)?;
            let r = eval(ctx, r)?;
            compare(*op, &l, &r)?.map_or(Val::Null, Val::Bool)
        }
        Expr::Like {
            expr,
            pattern,
            escape,
            negated,
        } => {
            let text = eval(ctx, expr)?;
            let pat = eval(ctx, pattern)?;
            let esc = match escape {
                Some(e) => Some(eval(ctx, e)?),
                None => None,
            };
            if matches!(text, Val::Null)
                || matches!(pat, Val::Null)
                || matches!(esc, Some(Val::Null))
            {
                return Ok(Val::Null);
            }
            let (Val::Str(text), Val::Str(pat)) = (&text, &pat) else {
                return Err(EvalError::TypeMismatch {
                    op: "LIKE",
                    left: text.type_name(),
                    right: pat.type_name(),
                });
            };
            let esc = match esc {
                None => None,
                Some(Val::Str(s)) => {
                    let mut it = s.chars();
                    match (it.next(), it.next()) {
                        (Some(c), None) => Some(c),
                        _ => {
                            return Err(EvalError::InvalidPattern(
                                "the ESCAPE character must be a string of length 1".into(),
                            ));
                        }
                    }
                }
                Some(other) => {
                    return Err(EvalError::InvalidOperand {
                        op: "ESCAPE",
                        operand: other.type_name(),
                    });
                }
            };
            Val::Bool(like(text, pat, esc)? != *negated)
        }
        Expr::In {
            expr,
            list,
            negated,
        } => {
            let left = eval(ctx, expr)?;
            if matches!(left, Val::Null) {
                return Ok(Val::Null);
            }
            let mut found = false;
            for item in list {
                let v = eval(ctx, item)?;
                if compare(CmpOp::Eq, &left, &v)? == Some(true) {
                    found = true;
                    break;
                }
            }
            Val::Bool(found != *negated)
        }
        Expr::IsNull { expr, negated } => {
            let v = eval(ctx, expr)?;
            Val::Bool(matches!(v, Val::Null) != *negated)
        }
        Expr::Exists(p) => Val::Bool(match p {
            PropRef::User(name) => user_prop(ctx.view.message, name).is_some(),
            PropRef::Sys(s) => !matches!(sys_value(ctx.view, *s), Val::Null),
        }),
        Expr::Not(inner) => match truth(eval(ctx, inner)?, "NOT")? {
            Some(b) => Val::Bool(!b),
            None => Val::Null,
        },
        Expr::And(items) => {
            let mut unknown = false;
            for item in items {
                match truth(eval(ctx, item)?, "AND")? {
                    Some(false) => return Ok(Val::Bool(false)),
                    Some(true) => {}
                    None => unknown = true,
                }
            }
            if unknown { Val::Null } else { Val::Bool(true) }
        }
        Expr::Or(items) => {
            let mut unknown = false;
            for item in items {
                match truth(eval(ctx, item)?, "OR")? {
                    Some(true) => return Ok(Val::Bool(true)),
                    Some(false) => {}
                    None => unknown = true,
                }
            }
            if unknown { Val::Null } else { Val::Bool(false) }
        }
    })
}

fn truth(v: Val<'_>, op: &'static str) -> Result<Option<bool>, EvalError> {
    match v {
        Val::Bool(b) => Ok(Some(b)),
        Val::Null => Ok(None),
        other => Err(EvalError::InvalidOperand {
            op,
            operand: other.type_name(),
        }),
    }
}

pub(crate) fn prop_value<'a>(view: &MessageView<'a>, p: &PropRef) -> Val<'a> {
    match p {
        PropRef::User(name) => user_prop(view.message, name).map_or(Val::Null, Val::from_value),
        PropRef::Sys(s) => sys_value(view, *s),
    }
}

/// `property(name)`: `sys.<name>`, `user.<name>` or a bare user property name.
fn dynamic_property<'a>(view: &MessageView<'a>, name: &str) -> Result<Val<'a>, EvalError> {
    let scoped = |prefix: &str| {
        name.get(..prefix.len())
            .filter(|p| p.eq_ignore_ascii_case(prefix))
            .and_then(|_| name.get(prefix.len()..))
    };
    if let Some(rest) = scoped("sys.") {
        let p = SysProp::from_name(rest)
            .ok_or_else(|| EvalError::UnknownSystemProperty(rest.to_owned()))?;
        return Ok(sys_value(view, p));
    }
    let user = scoped("user.").unwrap_or(name);
    Ok(user_prop(view.message, user).map_or(Val::Null, Val::from_value))
}

fn annotation<'a>(view: &MessageView<'a>, key: &str) -> Option<&'a Value> {
    map_get(view.message.message_annotations.as_deref()?, key)
}

fn opt_str(s: Option<&String>) -> Val<'_> {
    s.map_or(Val::Null, |s| Val::Str(Cow::Borrowed(s)))
}

pub(crate) fn sys_value<'a>(view: &MessageView<'a>, p: SysProp) -> Val<'a> {
    let msg = view.message;
    let props = msg.properties.as_ref();
    let ttl_ms = msg.header.as_ref().and_then(|h| h.ttl);
    match p {
        SysProp::MessageId => props
            .and_then(|p| p.message_id.as_ref())
            .and_then(id_to_string)
            .map_or(Val::Null, Val::Str),
        SysProp::CorrelationId => props
            .and_then(|p| p.correlation_id.as_ref())
            .and_then(id_to_string)
            .map_or(Val::Null, Val::Str),
        SysProp::To => opt_str(props.and_then(|p| p.to.as_ref())),
        SysProp::ReplyTo => opt_str(props.and_then(|p| p.reply_to.as_ref())),
        SysProp::Label => opt_str(props.and_then(|p| p.subject.as_ref())),
        SysProp::SessionId => opt_str(props.and_then(|p| p.group_id.as_ref())),
        SysProp::ReplyToSessionId => opt_str(props.and_then(|p| p.reply_to_group_id.as_ref())),
        SysProp::ContentType => props
            .and_then(|p| p.content_type.as_ref())
            .map_or(Val::Null, |s| Val::Str(Cow::Borrowed(s.as_str()))),
        SysProp::SequenceNumber => Val::Long(view.sequence_number),
        SysProp::EnqueuedTimeUtc => Val::DateTime(view.enqueued_time),
        SysProp::EnqueuedSequenceNumber => {
            annotation(view, "x-opt-enqueue-sequence-number").map_or(Val::Long(0), Val::from_value)
        }
        SysProp::DeliveryCount => Val::Long(i64::from(
            msg.header
                .as_ref()
                .and_then(|h| h.delivery_count)
                .unwrap_or(0),
        )),
        SysProp::TimeToLive => {
            ttl_ms.map_or(Val::Null, |t| Val::TimeSpan(i64::from(t) * TICKS_PER_MS))
        }
        SysProp::ExpiresAtUtc => match props.and_then(|p| p.absolute_expiry_time) {
            Some(t) => Val::DateTime(t),
            None => ttl_ms.map_or(Val::Null, |t| {
                Val::DateTime(view.enqueued_time.saturating_add(i64::from(t)))
            }),
        },
        SysProp::ScheduledEnqueueTimeUtc => {
            annotation(view, "x-opt-scheduled-enqueue-time").map_or(Val::Null, Val::from_value)
        }
        SysProp::PartitionKey => {
            annotation(view, "x-opt-partition-key").map_or(Val::Null, Val::from_value)
        }
        SysProp::ViaPartitionKey => {
            annotation(view, "x-opt-via-partition-key").map_or(Val::Null, Val::from_value)
        }
        SysProp::DeadLetterSource => {
            annotation(view, "x-opt-deadletter-source").map_or(Val::Null, Val::from_value)
        }
        SysProp::Size => Val::Long(i64::try_from(msg.encoded_size()).unwrap_or(i64::MAX)),
        SysProp::LockToken | SysProp::LockedUntilUtc => Val::Null,
    }
}

fn numeric_pair(l: &Val<'_>, r: &Val<'_>) -> Option<(f64, f64)> {
    let f = |v: &Val<'_>| match v {
        Val::Long(x) => Some(*x as f64),
        Val::Double(x) => Some(*x),
        _ => None,
    };
    Some((f(l)?, f(r)?))
}

/// `Some(result)`, `None` for unknown, or an error for incompatible types.
pub(crate) fn compare(op: CmpOp, l: &Val<'_>, r: &Val<'_>) -> Result<Option<bool>, EvalError> {
    if matches!(l, Val::Null) || matches!(r, Val::Null) {
        return Ok(None);
    }
    let ordering: Option<Ordering> = match (l, r) {
        (Val::Long(a), Val::Long(b)) => Some(a.cmp(b)),
        (Val::DateTime(a), Val::DateTime(b)) | (Val::TimeSpan(a), Val::TimeSpan(b)) => {
            Some(a.cmp(b))
        }
        _ => match numeric_pair(l, r) {
            // `None` here is NaN: every comparison but `<>` is false.
            Some((a, b)) => a.partial_cmp(&b),
            None => {
                let equal = match (l, r) {
                    (Val::Str(a), Val::Str(b)) => a == b,
                    (Val::Bool(a), Val::Bool(b)) => a == b,
                    (Val::Uuid(a), Val::Uuid(b)) => a == b,
                    (Val::Other(a), Val::Other(b)) => a == b,
                    _ => return Err(mismatch(op.symbol(), l, r)),
                };
                return match op {
                    CmpOp::Eq => Ok(Some(equal)),
                    CmpOp::Ne => Ok(Some(!equal)),
                    _ => Err(mismatch(op.symbol(), l, r)),
                };
            }
        },
    };
    Ok(Some(match ordering {
        Some(o) => match op {
            CmpOp::Eq => o == Ordering::Equal,
            CmpOp::Ne => o != Ordering::Equal,
            CmpOp::Lt => o == Ordering::Less,
            CmpOp::Le => o != Ordering::Greater,
            CmpOp::Gt => o == Ordering::Greater,
            CmpOp::Ge => o != Ordering::Less,
        },
        None => op == CmpOp::Ne,
    }))
}

fn mismatch(op: &'static str, l: &Val<'_>, r: &Val<'_>) -> EvalError {
    EvalError::TypeMismatch {
        op,
        left: l.type_name(),
        right: r.type_name(),
    }
}

/// The text `+` appends for a value concatenated to a string (C# `ToString`).
fn concat_text(v: &Val<'_>) -> Option<String> {
    match v {
        Val::Str(s) => Some(s.to_string()),
        Val::Long(x) => Some(x.to_string()),
        Val::Double(x) => Some(x.to_string()),
        Val::Bool(true) => Some("True".to_owned()),
        Val::Bool(false) => Some("False".to_owned()),
        Val::Uuid(u) => Some(super::value::format_uuid(u)),
        _ => None,
    }
}

pub(crate) fn arith<'a>(op: ArithOp, l: Val<'a>, r: Val<'a>) -> Result<Val<'a>, EvalError> {
    if matches!(l, Val::Null) || matches!(r, Val::Null) {
        return Ok(Val::Null);
    }
    let checked = |v: Option<i64>| v.ok_or(EvalError::Overflow);
    Ok(match (op, &l, &r) {
        (_, Val::Long(a), Val::Long(b)) => {
            let (a, b) = (*a, *b);
            Val::Long(match op {
                ArithOp::Add => checked(a.checked_add(b))?,
                ArithOp::Sub => checked(a.checked_sub(b))?,
                ArithOp::Mul => checked(a.checked_mul(b))?,
                ArithOp::Div if b == 0 => return Err(EvalError::DivisionByZero),
                ArithOp::Div => checked(a.checked_div(b))?,
                ArithOp::Rem if b == 0 => return Err(EvalError::DivisionByZero),
                ArithOp::Rem => checked(a.checked_rem(b))?,
            })
        }
        (ArithOp::Add, Val::Str(_), _) | (ArithOp::Add, _, Val::Str(_)) => {
            match (concat_text(&l), concat_text(&r)) {
                (Some(a), Some(b)) => Val::Str(Cow::Owned(a + &b)),
                _ => return Err(mismatch(op.symbol(), &l, &r)),
            }
        }
        (ArithOp::Sub, Val::DateTime(a), Val::DateTime(b)) => Val::TimeSpan(checked(
            a.checked_sub(*b).and_then(|d| d.checked_mul(TICKS_PER_MS)),
        )?),
        (ArithOp::Add, Val::DateTime(a), Val::TimeSpan(t))
        | (ArithOp::Add, Val::TimeSpan(t), Val::DateTime(a)) => {
            Val::DateTime(checked(a.checked_add(t / TICKS_PER_MS))?)
        }
        (ArithOp::Sub, Val::DateTime(a), Val::TimeSpan(t)) => {
            Val::DateTime(checked(a.checked_sub(t / TICKS_PER_MS))?)
        }
        (ArithOp::Add, Val::TimeSpan(a), Val::TimeSpan(b)) => {
            Val::TimeSpan(checked(a.checked_add(*b))?)
        }
        (ArithOp::Sub, Val::TimeSpan(a), Val::TimeSpan(b)) => {
            Val::TimeSpan(checked(a.checked_sub(*b))?)
        }
        _ => match numeric_pair(&l, &r) {
            Some((a, b)) => Val::Double(match op {
                ArithOp::Add => a + b,
                ArithOp::Sub => a - b,
                ArithOp::Mul => a * b,
                ArithOp::Div => a / b,
                ArithOp::Rem => a % b,
            }),
            None => return Err(mismatch(op.symbol(), &l, &r)),
        },
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pat {
    Lit(char),
    One,
    Many,
}

/// SQL `LIKE`: `%` matches any run of characters, `_` exactly one; the
/// escape character makes the character after it literal. Case-sensitive,
/// over Unicode scalar values, anchored at both ends.
pub(crate) fn like(text: &str, pattern: &str, escape: Option<char>) -> Result<bool, EvalError> {
    let mut pat = Vec::new();
    let mut it = pattern.chars();
    while let Some(c) = it.next() {
        if Some(c) == escape {
            match it.next() {
                Some(n) => pat.push(Pat::Lit(n)),
                None => {
                    return Err(EvalError::InvalidPattern(
                        "the pattern ends with the escape character".into(),
                    ));
                }
            }
        } else {
            pat.push(match c {
                '%' => Pat::Many,
                '_' => Pat::One,
                c => Pat::Lit(c),
            });
        }
    }
    let text: Vec<char> = text.chars().collect();
    // Greedy matching that backtracks to the last `%` seen: O(len * pattern).
    let (mut ti, mut pi) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while let Some(&c) = text.get(ti) {
        match pat.get(pi) {
            Some(Pat::Lit(p)) if *p == c => {
                ti += 1;
                pi += 1;
            }
            Some(Pat::One) => {
                ti += 1;
                pi += 1;
            }
            Some(Pat::Many) => {
                star = Some((pi + 1, ti));
                pi += 1;
            }
            _ => match star {
                Some((after_star, from)) => {
                    pi = after_star;
                    ti = from + 1;
                    star = Some((after_star, from + 1));
                }
                None => return Ok(false),
            },
        }
    }
    while pat.get(pi) == Some(&Pat::Many) {
        pi += 1;
    }
    Ok(pi == pat.len())
}

static NEWID_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A random (version 4) GUID for `newid()`, in RFC 4122 byte order.
///
/// The bits come from the standard library's randomly keyed SipHash over a
/// process-wide counter: unique and unpredictable enough for message ids,
/// without a dependency on a random number generator.
pub(crate) fn new_uuid() -> [u8; 16] {
    let n = NEWID_COUNTER.fetch_add(1, AtomicOrdering::Relaxed);
    let state = RandomState::new();
    let half = |salt: u8| {
        let mut h = state.build_hasher();
        h.write_u64(n);
        h.write_u8(salt);
        h.finish().to_be_bytes()
    };
    let mut out = [0u8; 16];
    for (dst, src) in out.iter_mut().zip(half(1).iter().chain(half(2).iter())) {
        *dst = *src;
    }
    out[6] = (out[6] & 0x0f) | 0x40;
    out[8] = (out[8] & 0x3f) | 0x80;
    out
}
