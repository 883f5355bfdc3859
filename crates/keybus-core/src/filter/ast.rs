//! Syntax tree of filters and rule actions.
//!
//! Chains of `AND`, `OR`, `+ -` and `* / %` are kept flat (n-ary nodes), so
//! the depth of a tree is bounded by the parser's nesting limit and evaluating
//! or dropping it never recurses deeply.

/// Service Bus system properties (`sys.<name>`), names matched
/// case-insensitively. See *Messages, payloads, and serialization*.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SysProp {
    MessageId,
    CorrelationId,
    To,
    ReplyTo,
    /// `Label` (the older name) or `Subject`: the AMQP `subject`.
    Label,
    /// AMQP `group-id`.
    SessionId,
    /// AMQP `reply-to-group-id`.
    ReplyToSessionId,
    ContentType,
    SequenceNumber,
    EnqueuedTimeUtc,
    EnqueuedSequenceNumber,
    DeliveryCount,
    TimeToLive,
    ExpiresAtUtc,
    ScheduledEnqueueTimeUtc,
    PartitionKey,
    ViaPartitionKey,
    DeadLetterSource,
    Size,
    LockToken,
    LockedUntilUtc,
}

impl SysProp {
    const ALL: [(&'static str, SysProp); 23] = [
        ("MessageId", SysProp::MessageId),
        ("CorrelationId", SysProp::CorrelationId),
        ("To", SysProp::To),
        ("ReplyTo", SysProp::ReplyTo),
        ("Label", SysProp::Label),
        ("Subject", SysProp::Label),
        ("SessionId", SysProp::SessionId),
        ("ReplyToSessionId", SysProp::ReplyToSessionId),
        ("ContentType", SysProp::ContentType),
        ("SequenceNumber", SysProp::SequenceNumber),
        ("EnqueuedTimeUtc", SysProp::EnqueuedTimeUtc),
        ("EnqueuedSequenceNumber", SysProp::EnqueuedSequenceNumber),
        ("DeliveryCount", SysProp::DeliveryCount),
        ("TimeToLive", SysProp::TimeToLive),
        ("ExpiresAtUtc", SysProp::ExpiresAtUtc),
        ("ScheduledEnqueueTimeUtc", SysProp::ScheduledEnqueueTimeUtc),
        ("PartitionKey", SysProp::PartitionKey),
        ("ViaPartitionKey", SysProp::ViaPartitionKey),
        ("TransactionPartitionKey", SysProp::ViaPartitionKey),
        ("DeadLetterSource", SysProp::DeadLetterSource),
        ("Size", SysProp::Size),
        ("LockToken", SysProp::LockToken),
        ("LockedUntilUtc", SysProp::LockedUntilUtc),
    ];

    /// Look a system property up by name, ignoring case.
    pub fn from_name(name: &str) -> Option<SysProp> {
        SysProp::ALL
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, p)| *p)
    }

    /// The canonical name.
    pub fn name(self) -> &'static str {
        SysProp::ALL
            .iter()
            .find(|(_, p)| *p == self)
            .map_or("?", |(n, _)| n)
    }

    /// Whether a rule action may `SET` or `REMOVE` it.
    pub fn is_settable(self) -> bool {
        matches!(
            self,
            SysProp::MessageId
                | SysProp::CorrelationId
                | SysProp::To
                | SysProp::ReplyTo
                | SysProp::Label
                | SysProp::SessionId
                | SysProp::ReplyToSessionId
                | SysProp::ContentType
                | SysProp::PartitionKey
        )
    }
}

/// A property reference: `sys.<name>`, or `[user.]<name>`.
#[derive(Debug, Clone, PartialEq)]
pub enum PropRef {
    Sys(SysProp),
    User(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl ArithOp {
    pub(crate) fn symbol(self) -> &'static str {
        match self {
            ArithOp::Add => "+",
            ArithOp::Sub => "-",
            ArithOp::Mul => "*",
            ArithOp::Div => "/",
            ArithOp::Rem => "%",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub(crate) fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "=",
            CmpOp::Ne => "<>",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }
}

/// Constants as written in the expression.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Constant {
    Null,
    Bool(bool),
    Long(i64),
    Double(f64),
    Str(String),
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Expr {
    Const(Constant),
    Param(String),
    Prop(PropRef),
    NewId,
    /// `property(name)` / `p(name)`.
    PropertyFn(Box<Expr>),
    Neg(Box<Expr>),
    Pos(Box<Expr>),
    /// `first (op operand)*`, evaluated left to right.
    Arith(Box<Expr>, Vec<(ArithOp, Expr)>),
    Cmp(Box<Expr>, CmpOp, Box<Expr>),
    Like {
        expr: Box<Expr>,
        pattern: Box<Expr>,
        escape: Option<Box<Expr>>,
        negated: bool,
    },
    In {
        expr: Box<Expr>,
        list: Vec<Expr>,
        negated: bool,
    },
    IsNull {
        expr: Box<Expr>,
        negated: bool,
    },
    Exists(PropRef),
    Not(Box<Expr>),
    And(Vec<Expr>),
    Or(Vec<Expr>),
}

/// One statement of a rule action.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Statement {
    Set(PropRef, Expr),
    Remove(PropRef),
}
