//! Turns TraceQL text into tokens, the way Tempo's lexer does.
//!
//! The lexer is context sensitive in one place, as Tempo's is: after `.`, `span.`,
//! `resource.`, `event.`, `link.` or `instrumentation.` it reads an attribute name, which runs
//! until whitespace or one of `{}()=~!<>&|^,` and may contain quoted parts (`span."a b"`).
//! So `.name` is the attribute "name", not the intrinsic, and `span.a-b` is one name.
//! Numbers directly followed by units are durations (`1.5s`, `1h30m`, `2d`). `//` and `/* */`
//! comments are skipped, as Go's text/scanner skips them for Tempo.

use super::ast::AttributeScope;
use super::parser::ParseError;
use super::value::parse_duration_literal;

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tok {
    /// Identifiers and keywords; the parser decides what a word means where it stands.
    Word(String),
    Attr(AttributeScope, String),
    /// `span:`, `trace:`, `event:`, `link:`, `instrumentation:`.
    ScopeColon(&'static str),
    Str(String),
    Int(i64),
    Float(f64),
    Duration(i64),
    LBrace,
    RBrace,
    LParen,
    RParen,
    Comma,
    Eq,
    Neq,
    Re,
    /// `!~`: a negated regex in a filter, "not sibling" between spansets.
    Nre,
    Gt,
    Gte,
    Lt,
    Lte,
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    And,
    Or,
    Not,
    Pipe,
    Desc,
    Ance,
    Tilde,
    NotChild,
    NotParent,
    NotDesc,
    NotAnce,
    UnionChild,
    UnionParent,
    UnionDesc,
    UnionAnce,
    UnionSibl,
    Eof,
}

impl Tok {
    /// How an error message names the token.
    pub(crate) fn describe(&self) -> String {
        match self {
            Tok::Word(w) => format!("identifier {w:?}"),
            Tok::Attr(_, name) => format!("attribute {name:?}"),
            Tok::ScopeColon(s) => format!("\"{s}:\""),
            Tok::Str(_) => "string".to_string(),
            Tok::Int(n) => format!("integer {n}"),
            Tok::Float(x) => format!("float {x}"),
            Tok::Duration(_) => "duration".to_string(),
            Tok::Eof => "end of query".to_string(),
            other => format!("{:?}", other.symbol()),
        }
    }

    fn symbol(&self) -> &'static str {
        match self {
            Tok::LBrace => "{",
            Tok::RBrace => "}",
            Tok::LParen => "(",
            Tok::RParen => ")",
            Tok::Comma => ",",
            Tok::Eq => "=",
            Tok::Neq => "!=",
            Tok::Re => "=~",
            Tok::Nre => "!~",
            Tok::Gt => ">",
            Tok::Gte => ">=",
            Tok::Lt => "<",
            Tok::Lte => "<=",
            Tok::Add => "+",
            Tok::Sub => "-",
            Tok::Mul => "*",
            Tok::Div => "/",
            Tok::Mod => "%",
            Tok::Pow => "^",
            Tok::And => "&&",
            Tok::Or => "||",
            Tok::Not => "!",
            Tok::Pipe => "|",
            Tok::Desc => ">>",
            Tok::Ance => "<<",
            Tok::Tilde => "~",
            Tok::NotChild => "!>",
            Tok::NotParent => "!<",
            Tok::NotDesc => "!>>",
            Tok::NotAnce => "!<<",
            Tok::UnionChild => "&>",
            Tok::UnionParent => "&<",
            Tok::UnionDesc => "&>>",
            Tok::UnionAnce => "&<<",
            Tok::UnionSibl => "&~",
            _ => "",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Token {
    pub tok: Tok,
    /// Byte offset of the token's first character.
    pub pos: usize,
}

/// Whether `c` may stand unquoted in an attribute name (Tempo's `isAttributeRune`).
pub(super) fn is_attribute_rune(c: char) -> bool {
    !c.is_whitespace() && !matches!(c, '{' | '}' | '(' | ')' | '=' | '~' | '!' | '<' | '>' | '&' | '|' | '^' | ',')
}

/// Operators, longest first so that `!>>` wins over `!>` and `!`.
const OPERATORS: [(&str, Tok); 35] = [
    ("!>>", Tok::NotDesc),
    ("!<<", Tok::NotAnce),
    ("&>>", Tok::UnionDesc),
    ("&<<", Tok::UnionAnce),
    ("=~", Tok::Re),
    ("!=", Tok::Neq),
    ("!~", Tok::Nre),
    ("!>", Tok::NotChild),
    ("!<", Tok::NotParent),
    (">=", Tok::Gte),
    (">>", Tok::Desc),
    ("<=", Tok::Lte),
    ("<<", Tok::Ance),
    ("&&", Tok::And),
    ("&>", Tok::UnionChild),
    ("&<", Tok::UnionParent),
    ("&~", Tok::UnionSibl),
    ("||", Tok::Or),
    ("=", Tok::Eq),
    ("!", Tok::Not),
    (">", Tok::Gt),
    ("<", Tok::Lt),
    ("|", Tok::Pipe),
    ("~", Tok::Tilde),
    ("+", Tok::Add),
    ("-", Tok::Sub),
    ("*", Tok::Mul),
    ("/", Tok::Div),
    ("%", Tok::Mod),
    ("^", Tok::Pow),
    (",", Tok::Comma),
    ("{", Tok::LBrace),
    ("}", Tok::RBrace),
    ("(", Tok::LParen),
    (")", Tok::RParen),
];

struct Lexer<'t> {
    text: &'t str,
    pos: usize,
}

/// The tokens of `text`, ending with `Eof`.
pub(crate) fn lex(text: &str) -> Result<Vec<Token>, ParseError> {
    let mut lexer = Lexer { text, pos: 0 };
    let mut tokens = Vec::new();
    loop {
        let token = lexer.next_token()?;
        let end = token.tok == Tok::Eof;
        tokens.push(token);
        if end {
            return Ok(tokens);
        }
    }
}

impl<'t> Lexer<'t> {
    fn rest(&self) -> &'t str {
        &self.text[self.pos..]
    }

    fn peek(&self) -> Option<char> {
        self.rest().chars().next()
    }

    fn peek_second(&self) -> Option<char> {
        self.rest().chars().nth(1)
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn error(&self, pos: usize, message: impl Into<String>) -> ParseError {
        ParseError::new(self.text, pos, message)
    }

    fn skip_blanks(&mut self) -> Result<(), ParseError> {
        loop {
            let rest = self.rest();
            if let Some(c) = self.peek().filter(|c| c.is_whitespace()) {
                self.pos += c.len_utf8();
            } else if rest.starts_with("//") {
                self.pos += rest.find('\n').unwrap_or(rest.len());
            } else if let Some(body) = rest.strip_prefix("/*") {
                let end = body.find("*/").ok_or_else(|| self.error(self.pos, "comment not terminated"))?;
                self.pos += end + 4;
            } else {
                return Ok(());
            }
        }
    }

    fn next_token(&mut self) -> Result<Token, ParseError> {
        self.skip_blanks()?;
        let pos = self.pos;
        let Some(c) = self.peek() else { return Ok(Token { tok: Tok::Eof, pos }) };
        let tok = match c {
            '"' => Tok::Str(self.string()?),
            '`' => Tok::Str(self.raw_string()?),
            '0'..='9' => self.number()?,
            '.' if self.peek_second().is_some_and(|d| d.is_ascii_digit()) => self.number()?,
            '.' => {
                self.bump();
                Tok::Attr(AttributeScope::Unscoped, self.attribute_name(pos)?)
            }
            c if c.is_alphabetic() || c == '_' => self.word(pos)?,
            _ => self.operator(pos)?,
        };
        Ok(Token { tok, pos })
    }

    fn operator(&mut self, pos: usize) -> Result<Tok, ParseError> {
        let rest = self.rest();
        for (text, tok) in &OPERATORS {
            if rest.starts_with(text) {
                self.pos += text.len();
                return Ok(tok.clone());
            }
        }
        let c = self.peek().unwrap_or(' ');
        Err(self.error(pos, format!("syntax error: unexpected character {c:?}")))
    }

    /// An identifier, or a scope that starts an attribute (`span.`) or intrinsic (`span:`).
    fn word(&mut self, pos: usize) -> Result<Tok, ParseError> {
        let start = self.pos;
        while self.peek().is_some_and(|c| c.is_alphanumeric() || c == '_') {
            self.bump();
        }
        let word = &self.text[start..self.pos];
        match self.peek() {
            Some('.') => {
                let scope = match word {
                    "span" => Some(AttributeScope::Span),
                    "resource" => Some(AttributeScope::Resource),
                    "event" => Some(AttributeScope::Event),
                    "link" => Some(AttributeScope::Link),
                    "instrumentation" => Some(AttributeScope::Instrumentation),
                    "parent" => return Err(self.error(pos, "the parent. scope is not supported")),
                    _ => None,
                };
                if let Some(scope) = scope {
                    self.bump();
                    return Ok(Tok::Attr(scope, self.attribute_name(pos)?));
                }
            }
            Some(':') => {
                let scope = match word {
                    "span" => Some("span"),
                    "trace" => Some("trace"),
                    "event" => Some("event"),
                    "link" => Some("link"),
                    "instrumentation" => Some("instrumentation"),
                    _ => None,
                };
                if let Some(scope) = scope {
                    self.bump();
                    return Ok(Tok::ScopeColon(scope));
                }
            }
            _ => {}
        }
        Ok(Tok::Word(word.to_string()))
    }

    /// The name after a scope: attribute runes and quoted parts, concatenated.
    fn attribute_name(&mut self, start: usize) -> Result<String, ParseError> {
        let mut name = String::new();
        let mut quoted = false;
        while let Some(c) = self.peek() {
            if c == '"' {
                quoted = true;
                let quote = self.pos;
                self.bump();
                loop {
                    match self.bump() {
                        None => return Err(self.error(quote, "unterminated quoted attribute name")),
                        Some('"') => break,
                        Some('\\') => match self.bump() {
                            Some(e @ ('"' | '\\')) => name.push(e),
                            _ => return Err(self.error(self.pos, "invalid escape sequence in attribute name")),
                        },
                        Some(other) => name.push(other),
                    }
                }
            } else if is_attribute_rune(c) {
                name.push(c);
                self.bump();
            } else {
                break;
            }
        }
        if name.is_empty() && !quoted {
            return Err(self.error(start, "syntax error: expected an attribute name"));
        }
        if name.is_empty() {
            return Err(self.error(start, "an attribute name cannot be empty"));
        }
        Ok(name)
    }

    /// A decimal integer or float, or a duration if units follow directly.
    fn number(&mut self) -> Result<Tok, ParseError> {
        let start = self.pos;
        let digits = |l: &mut Lexer| {
            while l.peek().is_some_and(|c| c.is_ascii_digit()) {
                l.bump();
            }
        };
        digits(self);
        let mut is_float = false;
        if self.peek() == Some('.') {
            is_float = true;
            self.bump();
            digits(self);
        }
        if matches!(self.peek(), Some('e' | 'E')) {
            let save = self.pos;
            self.bump();
            if matches!(self.peek(), Some('+' | '-')) {
                self.bump();
            }
            if self.peek().is_some_and(|c| c.is_ascii_digit()) {
                is_float = true;
                digits(self);
            } else {
                return Err(self.error(save, "syntax error: exponent has no digits"));
            }
        }
        let number = &self.text[start..self.pos];
        // As Tempo: the run of digits, '.' and unit letters that follows is tried as a duration.
        let unit_run = self
            .rest()
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || "nsumhµμdwy".contains(c)))
            .unwrap_or(self.rest().len());
        if unit_run > 0 {
            let candidate = &self.text[start..self.pos + unit_run];
            if let Some(ns) = parse_duration_literal(candidate) {
                self.pos += unit_run;
                return Ok(Tok::Duration(ns));
            }
        }
        if is_float {
            match number.parse::<f64>() {
                Ok(x) if x.is_finite() => Ok(Tok::Float(x)),
                _ => Err(self.error(start, format!("float out of range: {number}"))),
            }
        } else {
            number
                .parse::<i64>()
                .map(Tok::Int)
                .map_err(|_| self.error(start, format!("integer out of range: {number}")))
        }
    }

    /// A Go double-quoted string, with Go's escapes.
    fn string(&mut self) -> Result<String, ParseError> {
        let start = self.pos;
        self.bump();
        let mut out = String::new();
        loop {
            let at = self.pos;
            match self.bump() {
                None | Some('\n') => return Err(self.error(start, "literal not terminated")),
                Some('"') => return Ok(out),
                Some('\\') => {
                    let e = self.bump().ok_or_else(|| self.error(start, "literal not terminated"))?;
                    let simple = match e {
                        'a' => Some('\u{7}'),
                        'b' => Some('\u{8}'),
                        'f' => Some('\u{c}'),
                        'n' => Some('\n'),
                        'r' => Some('\r'),
                        't' => Some('\t'),
                        'v' => Some('\u{b}'),
                        '\\' => Some('\\'),
                        '"' => Some('"'),
                        _ => None,
                    };
                    if let Some(c) = simple {
                        out.push(c);
                        continue;
                    }
                    let (count, radix) = match e {
                        'x' => (2, 16),
                        'u' => (4, 16),
                        'U' => (8, 16),
                        '0'..='7' => (2, 8),
                        _ => return Err(self.error(at, "invalid escape sequence in string")),
                    };
                    let mut digits = String::new();
                    if radix == 8 {
                        digits.push(e);
                    }
                    for _ in 0..count {
                        match self.bump() {
                            Some(d) if d.is_digit(radix) => digits.push(d),
                            _ => return Err(self.error(at, "invalid escape sequence in string")),
                        }
                    }
                    let code = u32::from_str_radix(&digits, radix).map_err(|_| self.error(at, "invalid escape"))?;
                    // Go writes \x and octal escapes as bytes; bytes above 0x7f would not be
                    // UTF-8 on their own, so only their ASCII range is taken.
                    let valid = if matches!(e, 'u' | 'U') || code < 0x80 { char::from_u32(code) } else { None };
                    out.push(valid.ok_or_else(|| self.error(at, "invalid escape sequence in string"))?);
                }
                Some(c) => out.push(c),
            }
        }
    }

    /// A Go raw string: everything up to the next backtick, carriage returns dropped.
    fn raw_string(&mut self) -> Result<String, ParseError> {
        let start = self.pos;
        self.bump();
        let end = self.rest().find('`').ok_or_else(|| self.error(start, "literal not terminated"))?;
        let body = self.rest()[..end].replace('\r', "");
        self.pos += end + 1;
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toks(text: &str) -> Vec<Tok> {
        lex(text).unwrap().into_iter().map(|t| t.tok).collect()
    }

    #[test]
    fn attributes_durations_and_operators() {
        assert_eq!(
            toks("{ span.http.status_code>=500 && .foo-bar !~ `a\\b` }"),
            vec![
                Tok::LBrace,
                Tok::Attr(AttributeScope::Span, "http.status_code".into()),
                Tok::Gte,
                Tok::Int(500),
                Tok::And,
                Tok::Attr(AttributeScope::Unscoped, "foo-bar".into()),
                Tok::Nre,
                Tok::Str("a\\b".into()),
                Tok::RBrace,
                Tok::Eof
            ]
        );
        assert_eq!(
            toks("1.5s 100ms 2 .5 1e3"),
            vec![
                Tok::Duration(1_500_000_000),
                Tok::Duration(100_000_000),
                Tok::Int(2),
                Tok::Float(0.5),
                Tok::Float(1000.0),
                Tok::Eof
            ]
        );
        assert_eq!(
            toks("!>> &< !~ ~ span:id"),
            vec![
                Tok::NotDesc,
                Tok::UnionParent,
                Tok::Nre,
                Tok::Tilde,
                Tok::ScopeColon("span"),
                Tok::Word("id".into()),
                Tok::Eof
            ]
        );
    }

    #[test]
    fn quoted_names_and_strings() {
        assert_eq!(
            toks(r#"span.attribute."name with space" "a\"\n\u00e9\x41""#),
            vec![
                Tok::Attr(AttributeScope::Span, "attribute.name with space".into()),
                Tok::Str("a\"\né\x41".into()),
                Tok::Eof
            ]
        );
        assert_eq!(toks("a // comment\n /* more */ b"), vec![Tok::Word("a".into()), Tok::Word("b".into()), Tok::Eof]);
    }

    #[test]
    fn bad_input_is_an_error_with_a_position() {
        for (text, pos) in [("\"abc", 0), ("{ . }", 2), ("a # b", 2), ("99999999999999999999", 0), ("\"\\q\"", 1)] {
            let err = lex(text).unwrap_err();
            assert_eq!(err.position, pos, "{text}: {err}");
        }
    }
}
