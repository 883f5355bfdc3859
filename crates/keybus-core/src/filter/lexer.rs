//! Tokenizer of the Service Bus SQL filter and rule-action language.
//!
//! Keywords are case-insensitive. Identifiers follow the documented regular
//! expression `[[:IsLetter:]][_[:IsLetter:][:IsDigit:]]*`; `[delimited]` and
//! `"quoted"` identifiers double their closing delimiter to embed it; strings
//! are single-quoted with `''` for an embedded quote.

use super::error::FilterError;

/// Reserved words: they cannot be used as regular identifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Keyword {
    And,
    Or,
    Not,
    Like,
    Escape,
    In,
    Is,
    Null,
    Exists,
    True,
    False,
    Set,
    Remove,
}

impl Keyword {
    fn from_word(word: &str) -> Option<Keyword> {
        const WORDS: [(&str, Keyword); 13] = [
            ("AND", Keyword::And),
            ("OR", Keyword::Or),
            ("NOT", Keyword::Not),
            ("LIKE", Keyword::Like),
            ("ESCAPE", Keyword::Escape),
            ("IN", Keyword::In),
            ("IS", Keyword::Is),
            ("NULL", Keyword::Null),
            ("EXISTS", Keyword::Exists),
            ("TRUE", Keyword::True),
            ("FALSE", Keyword::False),
            ("SET", Keyword::Set),
            ("REMOVE", Keyword::Remove),
        ];
        WORDS
            .iter()
            .find(|(w, _)| w.eq_ignore_ascii_case(word))
            .map(|(_, k)| *k)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    Keyword(Keyword),
    /// A regular identifier (not a keyword).
    Ident(String),
    /// A `[delimited]` or `"quoted"` identifier, delimiters removed.
    Quoted(String),
    /// An `@name` parameter, `@` included.
    Param(String),
    /// An integer constant; kept unsigned so that `-9223372036854775808` parses.
    Int(u64),
    Float(f64),
    Str(String),
    LParen,
    RParen,
    Comma,
    Semicolon,
    Dot,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Plus,
    Minus,
    Star,
    Slash,
    Percent,
}

impl Tok {
    pub(crate) fn describe(&self) -> String {
        match self {
            Tok::Keyword(k) => format!("keyword {}", format!("{k:?}").to_uppercase()),
            Tok::Ident(s) => format!("identifier '{s}'"),
            Tok::Quoted(s) => format!("identifier '{s}'"),
            Tok::Param(s) => format!("parameter '{s}'"),
            Tok::Int(v) => format!("number {v}"),
            Tok::Float(v) => format!("number {v}"),
            Tok::Str(_) => "string constant".to_owned(),
            Tok::LParen => "'('".to_owned(),
            Tok::RParen => "')'".to_owned(),
            Tok::Comma => "','".to_owned(),
            Tok::Semicolon => "';'".to_owned(),
            Tok::Dot => "'.'".to_owned(),
            Tok::Eq => "'='".to_owned(),
            Tok::Ne => "'<>'".to_owned(),
            Tok::Lt => "'<'".to_owned(),
            Tok::Le => "'<='".to_owned(),
            Tok::Gt => "'>'".to_owned(),
            Tok::Ge => "'>='".to_owned(),
            Tok::Plus => "'+'".to_owned(),
            Tok::Minus => "'-'".to_owned(),
            Tok::Star => "'*'".to_owned(),
            Tok::Slash => "'/'".to_owned(),
            Tok::Percent => "'%'".to_owned(),
        }
    }
}

/// A token and the character offset where it starts.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub tok: Tok,
    pub pos: usize,
}

fn is_ident_start(c: char) -> bool {
    c.is_alphabetic()
}

fn is_ident_continue(c: char) -> bool {
    c == '_' || c.is_alphanumeric()
}

/// Split `text` into tokens. The returned vector ends at the end of input
/// (the parser reports `text`'s length in characters as the end position).
pub(crate) fn tokenize(text: &str) -> Result<Vec<Token>, FilterError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(&c) = chars.get(i) {
        let start = i;
        let at = |k: usize| chars.get(k).copied();
        let tok = match c {
            c if c.is_whitespace() => {
                i += 1;
                continue;
            }
            '(' => {
                i += 1;
                Tok::LParen
            }
            ')' => {
                i += 1;
                Tok::RParen
            }
            ',' => {
                i += 1;
                Tok::Comma
            }
            ';' => {
                i += 1;
                Tok::Semicolon
            }
            '+' => {
                i += 1;
                Tok::Plus
            }
            '-' => {
                i += 1;
                Tok::Minus
            }
            '*' => {
                i += 1;
                Tok::Star
            }
            '/' => {
                i += 1;
                Tok::Slash
            }
            '%' => {
                i += 1;
                Tok::Percent
            }
            '=' => {
                i += 1;
                Tok::Eq
            }
            '!' => {
                if at(i + 1) == Some('=') {
                    i += 2;
                    Tok::Ne
                } else {
                    return Err(FilterError::syntax(start, "'!' must be followed by '='"));
                }
            }
            '<' => match at(i + 1) {
                Some('=') => {
                    i += 2;
                    Tok::Le
                }
                Some('>') => {
                    i += 2;
                    Tok::Ne
                }
                _ => {
                    i += 1;
                    Tok::Lt
                }
            },
            '>' => {
                if at(i + 1) == Some('=') {
                    i += 2;
                    Tok::Ge
                } else {
                    i += 1;
                    Tok::Gt
                }
            }
            '\'' => {
                let (s, next) = delimited(&chars, i, '\'')
                    .ok_or_else(|| FilterError::syntax(start, "unterminated string constant"))?;
                i = next;
                Tok::Str(s)
            }
            '"' => {
                let (s, next) = delimited(&chars, i, '"')
                    .ok_or_else(|| FilterError::syntax(start, "unterminated quoted identifier"))?;
                i = next;
                if s.is_empty() {
                    return Err(FilterError::syntax(start, "empty quoted identifier"));
                }
                Tok::Quoted(s)
            }
            '[' => {
                let (s, next) = delimited(&chars, i, ']').ok_or_else(|| {
                    FilterError::syntax(start, "unterminated delimited identifier")
                })?;
                i = next;
                if s.is_empty() {
                    return Err(FilterError::syntax(start, "empty delimited identifier"));
                }
                Tok::Quoted(s)
            }
            '@' => {
                let mut j = i + 1;
                while at(j).is_some_and(is_ident_continue) {
                    j += 1;
                }
                if j == i + 1 {
                    return Err(FilterError::syntax(
                        start,
                        "'@' must start a parameter name",
                    ));
                }
                let name: String = chars.get(i..j).unwrap_or_default().iter().collect();
                i = j;
                Tok::Param(name)
            }
            '.' if at(i + 1).is_some_and(|d| d.is_ascii_digit()) => {
                let (tok, next) = number(&chars, i)?;
                i = next;
                tok
            }
            '.' => {
                i += 1;
                Tok::Dot
            }
            c if c.is_ascii_digit() => {
                let (tok, next) = number(&chars, i)?;
                i = next;
                tok
            }
            c if is_ident_start(c) => {
                let mut j = i + 1;
                while at(j).is_some_and(is_ident_continue) {
                    j += 1;
                }
                let word: String = chars.get(i..j).unwrap_or_default().iter().collect();
                i = j;
                match Keyword::from_word(&word) {
                    Some(k) => Tok::Keyword(k),
                    None => Tok::Ident(word),
                }
            }
            other => {
                return Err(FilterError::syntax(
                    start,
                    format!("unexpected character '{other}'"),
                ));
            }
        };
        out.push(Token { tok, pos: start });
    }
    Ok(out)
}

/// Read a run delimited by `close` starting at the opening delimiter at
/// `open`; a doubled `close` stands for one. Returns the contents and the
/// index after the closing delimiter, or `None` if it is unterminated.
fn delimited(chars: &[char], open: usize, close: char) -> Option<(String, usize)> {
    let mut s = String::new();
    let mut i = open + 1;
    loop {
        let c = *chars.get(i)?;
        if c == close {
            if chars.get(i + 1) == Some(&close) {
                s.push(close);
                i += 2;
                continue;
            }
            return Some((s, i + 1));
        }
        s.push(c);
        i += 1;
    }
}

/// Integer (`1894`), decimal (`1894.1204`, `.5`) or approximate (`101.5E5`).
fn number(chars: &[char], start: usize) -> Result<(Tok, usize), FilterError> {
    let digit = |k: usize| chars.get(k).is_some_and(|c| c.is_ascii_digit());
    let mut i = start;
    while digit(i) {
        i += 1;
    }
    let mut float = false;
    if chars.get(i) == Some(&'.') {
        float = true;
        i += 1;
        while digit(i) {
            i += 1;
        }
    }
    if matches!(chars.get(i), Some('e' | 'E')) {
        let mut j = i + 1;
        if matches!(chars.get(j), Some('+' | '-')) {
            j += 1;
        }
        if !digit(j) {
            return Err(FilterError::syntax(i, "exponent has no digits"));
        }
        while digit(j) {
            j += 1;
        }
        float = true;
        i = j;
    }
    if chars.get(i).is_some_and(|c| is_ident_continue(*c)) {
        return Err(FilterError::syntax(
            i,
            "a number must not be followed by a letter",
        ));
    }
    let text: String = chars.get(start..i).unwrap_or_default().iter().collect();
    if float {
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok((Tok::Float(v), i)),
            _ => Err(FilterError::syntax(start, "numeric constant out of range")),
        }
    } else {
        match text.parse::<u64>() {
            Ok(v) if v <= 1u64 << 63 => Ok((Tok::Int(v), i)),
            _ => Err(FilterError::syntax(
                start,
                "integer constant out of the range of a 64-bit integer",
            )),
        }
    }
}
