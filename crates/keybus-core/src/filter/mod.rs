//! Subscription rule filters and actions: the Service Bus SQL filter language
//! (a subset of SQL-92), SQL rule actions, correlation filters and the
//! true/false filters.
//!
//! Grammar and semantics follow Microsoft's *Subscription Rule SQL Filter
//! Syntax* and *SQL Action Syntax* pages:
//!
//! * predicates `NOT`, `AND`, `OR`, `= <> != > >= < <=`, `IS [NOT] NULL`,
//!   `[NOT] IN (...)`, `[NOT] LIKE pattern [ESCAPE c]`, `EXISTS(prop)`;
//!   arithmetic `+ - * / %` and unary `+ -`; constants (64-bit integers,
//!   doubles, single-quoted strings, `TRUE`, `FALSE`, `NULL`); `@parameters`;
//!   functions `newid()` and `property(name)` / `p(name)`;
//! * properties `sys.<name>` (system), `user.<name>` or a bare name
//!   (application properties); `[delimited]` and `"quoted"` names; keywords,
//!   scopes, functions and property names are case-insensitive;
//! * a missing application property is *unknown*, with three-valued logic; a
//!   filter matches only when it evaluates to TRUE;
//! * expressions are limited to [`MAX_EXPRESSION_LENGTH`] characters and
//!   actions to [`MAX_ACTION_STATEMENTS`] statements (Service Bus quotas);
//!   nesting to [`MAX_DEPTH`] levels so hostile input cannot overflow the stack.
//!
//! Nothing here does I/O; [`MessageView`] carries what the broker assigned.

mod action;
mod ast;
mod correlation;
mod error;
mod eval;
mod lexer;
mod parser;
mod value;

use keybus_amqp::{Message, Value};

pub use ast::SysProp;
pub use correlation::{CorrelationFilter, SimpleValue};
pub use error::{EvalError, FilterError};

/// Longest filter or action expression, in characters (Service Bus quota).
pub const MAX_EXPRESSION_LENGTH: usize = 1024;
/// Most statements in one rule action (Service Bus quota: 32 expressions).
pub const MAX_ACTION_STATEMENTS: usize = 32;
/// Deepest nesting of parentheses, `NOT` and unary signs.
pub const MAX_DEPTH: usize = 128;

/// Properties the broker assigns when it accepts a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SystemProps {
    pub sequence_number: i64,
    /// Milliseconds since the Unix epoch.
    pub enqueued_time: i64,
}

/// What the evaluator sees: the message plus broker-assigned system properties.
#[derive(Debug, Clone, Copy)]
pub struct MessageView<'a> {
    pub message: &'a Message,
    pub sequence_number: i64,
    /// Milliseconds since the Unix epoch.
    pub enqueued_time: i64,
}

impl<'a> MessageView<'a> {
    pub fn new(message: &'a Message, sys: &SystemProps) -> MessageView<'a> {
        MessageView {
            message,
            sequence_number: sys.sequence_number,
            enqueued_time: sys.enqueued_time,
        }
    }

    pub fn system(&self) -> SystemProps {
        SystemProps {
            sequence_number: self.sequence_number,
            enqueued_time: self.enqueued_time,
        }
    }
}

/// A parsed SQL filter. Keeps its original text for round-tripping.
#[derive(Debug, Clone, PartialEq)]
pub struct SqlFilter {
    expression: String,
    root: ast::Expr,
    parameters: Vec<(String, Value)>,
}

impl SqlFilter {
    pub fn parse(text: &str) -> Result<SqlFilter, FilterError> {
        Ok(SqlFilter {
            root: parser::parse_filter(text)?,
            expression: text.to_owned(),
            parameters: Vec::new(),
        })
    }

    /// Values for the `@name` parameters of the expression (names include
    /// the `@`, matched case-insensitively). A parameter the expression uses
    /// but that is not given is an [`EvalError::UnknownParameter`].
    pub fn with_parameters(mut self, parameters: Vec<(String, Value)>) -> SqlFilter {
        self.parameters = parameters;
        self
    }

    /// The expression exactly as given to [`SqlFilter::parse`].
    pub fn expression(&self) -> &str {
        &self.expression
    }

    pub fn parameters(&self) -> &[(String, Value)] {
        &self.parameters
    }

    /// `Ok(true)` only when the predicate is TRUE; FALSE and unknown give
    /// `Ok(false)`. Errors are filter evaluation exceptions (type mismatch,
    /// division by zero, a non-boolean result...).
    pub fn evaluate(&self, msg: &MessageView<'_>) -> Result<bool, EvalError> {
        let ctx = eval::Ctx {
            view: msg,
            params: &self.parameters,
        };
        eval::eval_filter(&ctx, &self.root)
    }
}

/// A parsed SQL rule action (`SET` / `REMOVE` statements).
#[derive(Debug, Clone, PartialEq)]
pub struct SqlRuleAction {
    expression: String,
    statements: Vec<ast::Statement>,
    parameters: Vec<(String, Value)>,
}

impl SqlRuleAction {
    pub fn parse(text: &str) -> Result<SqlRuleAction, FilterError> {
        Ok(SqlRuleAction {
            statements: parser::parse_action(text)?,
            expression: text.to_owned(),
            parameters: Vec::new(),
        })
    }

    /// See [`SqlFilter::with_parameters`].
    pub fn with_parameters(mut self, parameters: Vec<(String, Value)>) -> SqlRuleAction {
        self.parameters = parameters;
        self
    }

    pub fn expression(&self) -> &str {
        &self.expression
    }

    pub fn parameters(&self) -> &[(String, Value)] {
        &self.parameters
    }

    /// Number of `SET` / `REMOVE` statements.
    pub fn len(&self) -> usize {
        self.statements.len()
    }

    pub fn is_empty(&self) -> bool {
        self.statements.is_empty()
    }

    /// Apply the statements in order (each sees the effects of the previous
    /// ones). All or nothing: on an error the message is left unchanged.
    pub fn apply(&self, msg: &mut Message, sys: &SystemProps) -> Result<(), EvalError> {
        action::apply(&self.statements, &self.parameters, msg, sys)
    }
}

/// A subscription rule's filter.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// `TrueFilter` (`1=1`): matches every message.
    True,
    /// `FalseFilter` (`1=0`): matches none.
    False,
    Sql(SqlFilter),
    Correlation(CorrelationFilter),
}

impl Filter {
    pub fn matches(&self, msg: &MessageView<'_>) -> Result<bool, EvalError> {
        match self {
            Filter::True => Ok(true),
            Filter::False => Ok(false),
            Filter::Sql(f) => f.evaluate(msg),
            Filter::Correlation(f) => Ok(f.matches(msg)),
        }
    }
}
