//! Errors of the filter language: [`FilterError`] when a filter or action is
//! parsed (the rule is rejected), [`EvalError`] when one is evaluated against a
//! message (Service Bus calls this a filter evaluation exception).

/// A filter or rule-action expression that cannot be accepted.
///
/// Positions are 0-based character (not byte) offsets into the expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FilterError {
    /// The text does not follow the grammar.
    #[error("syntax error at position {position}: {message}")]
    Syntax { position: usize, message: String },
    /// The expression is longer than Service Bus allows.
    #[error("the expression is {length} characters long; the limit is {max}")]
    TooLong { length: usize, max: usize },
    /// Parentheses, `NOT` or unary signs nest deeper than the parser allows.
    #[error("the expression is nested too deeply at position {position} (limit {max})")]
    TooDeep { position: usize, max: usize },
    /// `sys.<name>` where `<name>` is not a Service Bus system property.
    #[error("unknown system property 'sys.{name}' at position {position}")]
    UnknownSystemProperty { position: usize, name: String },
    /// A rule action tries to `SET` or `REMOVE` a read-only system property.
    #[error(
        "system property 'sys.{name}' at position {position} cannot be modified by a rule action"
    )]
    ReadOnlySystemProperty { position: usize, name: String },
    /// A rule action has more statements than Service Bus allows.
    #[error("the rule action has {count} statements; the limit is {max}")]
    TooManyStatements { count: usize, max: usize },
}

impl FilterError {
    /// The character offset the error refers to, when there is one.
    pub fn position(&self) -> Option<usize> {
        match self {
            FilterError::Syntax { position, .. }
            | FilterError::TooDeep { position, .. }
            | FilterError::UnknownSystemProperty { position, .. }
            | FilterError::ReadOnlySystemProperty { position, .. } => Some(*position),
            FilterError::TooLong { .. } | FilterError::TooManyStatements { .. } => None,
        }
    }

    pub(crate) fn syntax(position: usize, message: impl Into<String>) -> Self {
        FilterError::Syntax {
            position,
            message: message.into(),
        }
    }
}

/// A runtime failure while evaluating a filter or action against a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EvalError {
    /// An operator applied to operands whose types it does not accept
    /// (for instance `'a' < 'b'`, `'1' = 1` or `TRUE + 1`).
    #[error("operator '{op}' cannot be applied to operands of type {left} and {right}")]
    TypeMismatch {
        op: &'static str,
        left: &'static str,
        right: &'static str,
    },
    /// A unary operator or a function applied to an operand of the wrong type.
    #[error("'{op}' cannot be applied to an operand of type {operand}")]
    InvalidOperand {
        op: &'static str,
        operand: &'static str,
    },
    /// Integer division or remainder by zero.
    #[error("division by zero")]
    DivisionByZero,
    /// Integer arithmetic left the range of a 64-bit integer.
    #[error("arithmetic overflow")]
    Overflow,
    /// A `LIKE` pattern or `ESCAPE` character that is not valid.
    #[error("invalid LIKE pattern: {0}")]
    InvalidPattern(String),
    /// An `@parameter` that the filter's parameters do not define.
    #[error("parameter '{0}' is not defined")]
    UnknownParameter(String),
    /// `property('sys.<name>')` naming a property that does not exist.
    #[error("unknown system property 'sys.{0}'")]
    UnknownSystemProperty(String),
    /// A filter whose value is neither a boolean nor unknown.
    #[error("the filter evaluated to a value of type {0}, not a boolean")]
    NotBoolean(&'static str),
    /// A rule action assigning a value a system property cannot hold.
    #[error("system property 'sys.{property}' cannot be set to a value of type {value}")]
    InvalidAssignment {
        property: &'static str,
        value: &'static str,
    },
}
