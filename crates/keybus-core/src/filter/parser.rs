//! Recursive-descent parser. Precedence, loosest first: `OR`, `AND`, `NOT`,
//! predicates (comparison, `[NOT] LIKE`, `[NOT] IN`, `IS [NOT] NULL`),
//! `+ -`, `* / %`, unary `+ -`. Comparisons do not chain: `a = b = c` is an
//! error (write `(a = b) = c`).

use super::ast::{ArithOp, CmpOp, Constant, Expr, PropRef, Statement, SysProp};
use super::error::FilterError;
use super::lexer::{Keyword, Tok, Token, tokenize};
use super::{MAX_ACTION_STATEMENTS, MAX_DEPTH, MAX_EXPRESSION_LENGTH};

struct Parser {
    tokens: Vec<Token>,
    pos: usize,
    /// Character length of the input: the position reported at its end.
    end: usize,
    depth: usize,
}

fn check_length(text: &str) -> Result<(), FilterError> {
    let length = text.chars().count();
    if length > MAX_EXPRESSION_LENGTH {
        return Err(FilterError::TooLong {
            length,
            max: MAX_EXPRESSION_LENGTH,
        });
    }
    Ok(())
}

/// Parse a filter predicate.
pub(crate) fn parse_filter(text: &str) -> Result<Expr, FilterError> {
    check_length(text)?;
    let mut p = Parser::new(text)?;
    if p.peek().is_none() {
        return Err(FilterError::syntax(0, "the expression is empty"));
    }
    let e = p.or_expr()?;
    p.expect_end()?;
    Ok(e)
}

/// Parse the statements of a rule action.
pub(crate) fn parse_action(text: &str) -> Result<Vec<Statement>, FilterError> {
    check_length(text)?;
    let mut p = Parser::new(text)?;
    let mut out = Vec::new();
    loop {
        while matches!(p.peek(), Some(Tok::Semicolon | Tok::Comma)) {
            if out.is_empty() {
                return Err(p.unexpected("SET or REMOVE"));
            }
            p.pos += 1;
        }
        if p.peek().is_none() {
            break;
        }
        out.push(p.statement()?);
    }
    if out.is_empty() {
        return Err(FilterError::syntax(0, "the action has no statements"));
    }
    if out.len() > MAX_ACTION_STATEMENTS {
        return Err(FilterError::TooManyStatements {
            count: out.len(),
            max: MAX_ACTION_STATEMENTS,
        });
    }
    Ok(out)
}

impl Parser {
    fn new(text: &str) -> Result<Parser, FilterError> {
        Ok(Parser {
            tokens: tokenize(text)?,
            pos: 0,
            end: text.chars().count(),
            depth: 0,
        })
    }

    fn peek(&self) -> Option<&Tok> {
        self.tokens.get(self.pos).map(|t| &t.tok)
    }

    fn peek_at(&self, ahead: usize) -> Option<&Tok> {
        self.tokens.get(self.pos + ahead).map(|t| &t.tok)
    }

    /// Position of the current token (or the end of input).
    fn here(&self) -> usize {
        self.tokens.get(self.pos).map_or(self.end, |t| t.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.tokens.get(self.pos).map(|t| t.tok.clone());
        if t.is_some() {
            self.pos += 1;
        }
        t
    }

    fn eat(&mut self, tok: &Tok) -> bool {
        if self.peek() == Some(tok) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn eat_kw(&mut self, k: Keyword) -> bool {
        self.eat(&Tok::Keyword(k))
    }

    fn unexpected(&self, wanted: &str) -> FilterError {
        match self.peek() {
            Some(t) => FilterError::syntax(
                self.here(),
                format!("expected {wanted}, found {}", t.describe()),
            ),
            None => FilterError::syntax(
                self.end,
                format!("expected {wanted}, found the end of the expression"),
            ),
        }
    }

    fn expect(&mut self, tok: &Tok, wanted: &str) -> Result<(), FilterError> {
        if self.eat(tok) {
            Ok(())
        } else {
            Err(self.unexpected(wanted))
        }
    }

    fn expect_end(&self) -> Result<(), FilterError> {
        match self.peek() {
            None => Ok(()),
            Some(Tok::RParen) => Err(FilterError::syntax(self.here(), "unbalanced ')'")),
            Some(_) => Err(self.unexpected("an operator or the end of the expression")),
        }
    }

    /// Enter one level of nesting (parentheses, `NOT`, unary sign).
    fn enter(&mut self) -> Result<(), FilterError> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(FilterError::TooDeep {
                position: self.here(),
                max: MAX_DEPTH,
            });
        }
        Ok(())
    }

    fn leave(&mut self) {
        self.depth = self.depth.saturating_sub(1);
    }

    fn or_expr(&mut self) -> Result<Expr, FilterError> {
        let first = self.and_expr()?;
        if self.peek() != Some(&Tok::Keyword(Keyword::Or)) {
            return Ok(first);
        }
        let mut items = vec![first];
        while self.eat_kw(Keyword::Or) {
            items.push(self.and_expr()?);
        }
        Ok(Expr::Or(items))
    }

    fn and_expr(&mut self) -> Result<Expr, FilterError> {
        let first = self.not_expr()?;
        if self.peek() != Some(&Tok::Keyword(Keyword::And)) {
            return Ok(first);
        }
        let mut items = vec![first];
        while self.eat_kw(Keyword::And) {
            items.push(self.not_expr()?);
        }
        Ok(Expr::And(items))
    }

    fn not_expr(&mut self) -> Result<Expr, FilterError> {
        if self.eat_kw(Keyword::Not) {
            self.enter()?;
            let inner = self.not_expr()?;
            self.leave();
            return Ok(Expr::Not(Box::new(inner)));
        }
        self.predicate()
    }

    fn predicate(&mut self) -> Result<Expr, FilterError> {
        if self.eat_kw(Keyword::Exists) {
            self.expect(&Tok::LParen, "'(' after EXISTS")?;
            let prop = self.property()?;
            self.expect(&Tok::RParen, "')'")?;
            return Ok(Expr::Exists(prop));
        }
        let left = self.additive()?;
        let cmp = match self.peek() {
            Some(Tok::Eq) => Some(CmpOp::Eq),
            Some(Tok::Ne) => Some(CmpOp::Ne),
            Some(Tok::Lt) => Some(CmpOp::Lt),
            Some(Tok::Le) => Some(CmpOp::Le),
            Some(Tok::Gt) => Some(CmpOp::Gt),
            Some(Tok::Ge) => Some(CmpOp::Ge),
            _ => None,
        };
        if let Some(op) = cmp {
            self.pos += 1;
            let right = self.additive()?;
            return Ok(Expr::Cmp(Box::new(left), op, Box::new(right)));
        }
        let negated = match (self.peek(), self.peek_at(1)) {
            (Some(Tok::Keyword(Keyword::Not)), Some(Tok::Keyword(Keyword::Like | Keyword::In))) => {
                self.pos += 1;
                true
            }
            _ => false,
        };
        if self.eat_kw(Keyword::Like) {
            let pattern = self.additive()?;
            let escape = if self.eat_kw(Keyword::Escape) {
                Some(Box::new(self.additive()?))
            } else {
                None
            };
            return Ok(Expr::Like {
                expr: Box::new(left),
                pattern: Box::new(pattern),
                escape,
                negated,
            });
        }
        if self.eat_kw(Keyword::In) {
            self.expect(&Tok::LParen, "'(' after IN")?;
            let mut list = vec![self.additive()?];
            while self.eat(&Tok::Comma) {
                list.push(self.additive()?);
            }
            self.expect(&Tok::RParen, "',' or ')'")?;
            return Ok(Expr::In {
                expr: Box::new(left),
                list,
                negated,
            });
        }
        if self.eat_kw(Keyword::Is) {
            let negated = self.eat_kw(Keyword::Not);
            if !self.eat_kw(Keyword::Null) {
                return Err(self.unexpected("NULL after IS"));
            }
            return Ok(Expr::IsNull {
                expr: Box::new(left),
                negated,
            });
        }
        Ok(left)
    }

    fn additive(&mut self) -> Result<Expr, FilterError> {
        let first = self.multiplicative()?;
        let mut rest = Vec::new();
        loop {
            let op = match self.peek() {
                Some(Tok::Plus) => ArithOp::Add,
                Some(Tok::Minus) => ArithOp::Sub,
                _ => break,
            };
            self.pos += 1;
            rest.push((op, self.multiplicative()?));
        }
        Ok(if rest.is_empty() {
            first
        } else {
            Expr::Arith(Box::new(first), rest)
        })
    }

    fn multiplicative(&mut self) -> Result<Expr, FilterError> {
        let first = self.unary()?;
        let mut rest = Vec::new();
        loop {
            let op = match self.peek() {
                Some(Tok::Star) => ArithOp::Mul,
                Some(Tok::Slash) => ArithOp::Div,
                Some(Tok::Percent) => ArithOp::Rem,
                _ => break,
            };
            self.pos += 1;
            rest.push((op, self.unary()?));
        }
        Ok(if rest.is_empty() {
            first
        } else {
            Expr::Arith(Box::new(first), rest)
        })
    }

    fn unary(&mut self) -> Result<Expr, FilterError> {
        match self.peek() {
            Some(Tok::Minus) => {
                self.pos += 1;
                // Fold negative literals, which also admits i64::MIN.
                match self.peek() {
                    Some(Tok::Int(v)) => {
                        let v = *v;
                        self.pos += 1;
                        let n = if v == 1u64 << 63 {
                            i64::MIN
                        } else {
                            i64::try_from(v).map_or(i64::MIN, |x| -x)
                        };
                        return Ok(Expr::Const(Constant::Long(n)));
                    }
                    Some(Tok::Float(v)) => {
                        let v = *v;
                        self.pos += 1;
                        return Ok(Expr::Const(Constant::Double(-v)));
                    }
                    _ => {}
                }
                self.enter()?;
                let inner = self.unary()?;
                self.leave();
                Ok(Expr::Neg(Box::new(inner)))
            }
            Some(Tok::Plus) => {
                self.pos += 1;
                self.enter()?;
                let inner = self.unary()?;
                self.leave();
                Ok(Expr::Pos(Box::new(inner)))
            }
            _ => self.primary(),
        }
    }

    fn primary(&mut self) -> Result<Expr, FilterError> {
        let start = self.here();
        match self.peek() {
            Some(Tok::Int(v)) => {
                let v = *v;
                self.pos += 1;
                let n = i64::try_from(v).map_err(|_| {
                    FilterError::syntax(
                        start,
                        "integer constant out of the range of a 64-bit integer",
                    )
                })?;
                Ok(Expr::Const(Constant::Long(n)))
            }
            Some(Tok::Float(v)) => {
                let v = *v;
                self.pos += 1;
                Ok(Expr::Const(Constant::Double(v)))
            }
            Some(Tok::Str(_)) => match self.next() {
                Some(Tok::Str(s)) => Ok(Expr::Const(Constant::Str(s))),
                _ => Err(self.unexpected("a string")),
            },
            Some(Tok::Keyword(Keyword::True)) => {
                self.pos += 1;
                Ok(Expr::Const(Constant::Bool(true)))
            }
            Some(Tok::Keyword(Keyword::False)) => {
                self.pos += 1;
                Ok(Expr::Const(Constant::Bool(false)))
            }
            Some(Tok::Keyword(Keyword::Null)) => {
                self.pos += 1;
                Ok(Expr::Const(Constant::Null))
            }
            Some(Tok::Param(_)) => match self.next() {
                Some(Tok::Param(p)) => Ok(Expr::Param(p)),
                _ => Err(self.unexpected("a parameter")),
            },
            Some(Tok::LParen) => {
                self.pos += 1;
                self.enter()?;
                let inner = self.or_expr()?;
                self.leave();
                self.expect(&Tok::RParen, "')'")?;
                Ok(inner)
            }
            Some(Tok::Ident(name)) if self.peek_at(1) == Some(&Tok::LParen) => {
                let name = name.clone();
                self.pos += 2;
                self.function(&name, start)
            }
            Some(Tok::Ident(_) | Tok::Quoted(_)) => Ok(Expr::Prop(self.property()?)),
            _ => Err(self.unexpected("an expression")),
        }
    }

    /// After `name(`: the arguments and the closing parenthesis.
    fn function(&mut self, name: &str, start: usize) -> Result<Expr, FilterError> {
        if name.eq_ignore_ascii_case("newid") {
            self.expect(&Tok::RParen, "')' (newid takes no arguments)")?;
            Ok(Expr::NewId)
        } else if name.eq_ignore_ascii_case("property") || name.eq_ignore_ascii_case("p") {
            self.enter()?;
            let arg = self.additive()?;
            self.leave();
            self.expect(&Tok::RParen, "')'")?;
            Ok(Expr::PropertyFn(Box::new(arg)))
        } else {
            Err(FilterError::syntax(
                start,
                format!("unknown function '{name}'"),
            ))
        }
    }

    /// `[sys.|user.]name`, where `name` is regular, `[delimited]` or `"quoted"`.
    fn property(&mut self) -> Result<PropRef, FilterError> {
        let start = self.here();
        let first = match self.next() {
            Some(Tok::Ident(s)) => (s, false),
            Some(Tok::Quoted(s)) => (s, true),
            _ => {
                self.pos = self.pos.saturating_sub(1);
                return Err(self.unexpected("a property name"));
            }
        };
        if first.1 || self.peek() != Some(&Tok::Dot) {
            return Ok(PropRef::User(first.0));
        }
        let scope = first.0;
        self.pos += 1;
        let name_pos = self.here();
        let name = match self.next() {
            Some(Tok::Ident(s) | Tok::Quoted(s)) => s,
            _ => {
                self.pos = self.pos.saturating_sub(1);
                return Err(self.unexpected("a property name after the scope"));
            }
        };
        if scope.eq_ignore_ascii_case("sys") {
            SysProp::from_name(&name)
                .map(PropRef::Sys)
                .ok_or(FilterError::UnknownSystemProperty {
                    position: name_pos,
                    name,
                })
        } else if scope.eq_ignore_ascii_case("user") {
            Ok(PropRef::User(name))
        } else {
            Err(FilterError::syntax(
                start,
                format!("unknown scope '{scope}' (expected sys or user)"),
            ))
        }
    }

    fn statement(&mut self) -> Result<Statement, FilterError> {
        if self.eat_kw(Keyword::Set) {
            let prop_pos = self.here();
            let prop = self.property()?;
            check_settable(&prop, prop_pos)?;
            self.expect(&Tok::Eq, "'='")?;
            let value = self.or_expr()?;
            Ok(Statement::Set(prop, value))
        } else if self.eat_kw(Keyword::Remove) {
            let prop_pos = self.here();
            let prop = self.property()?;
            check_settable(&prop, prop_pos)?;
            Ok(Statement::Remove(prop))
        } else {
            Err(self.unexpected("SET or REMOVE"))
        }
    }
}

fn check_settable(prop: &PropRef, position: usize) -> Result<(), FilterError> {
    match prop {
        PropRef::Sys(p) if !p.is_settable() => Err(FilterError::ReadOnlySystemProperty {
            position,
            name: p.name().to_owned(),
        }),
        _ => Ok(()),
    }
}
