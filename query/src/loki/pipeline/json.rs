//! A small JSON reader that keeps numbers as written and fields in document order, which a
//! generic deserializer would not (Loki labels `1.50` as "1.50", not "1.5"), and the extraction
//! paths (`.a.b`, `["a"]`, `[0]`) of `json` stages.

/// Deeper JSON is refused rather than recursed into, so a hostile line cannot exhaust the stack.
const MAX_JSON_DEPTH: usize = 128;

#[derive(Debug)]
pub(super) enum Json<'a> {
    /// Fields in document order, and the object's raw text (what an extraction path returns).
    Object(Vec<(String, Json<'a>)>, &'a str),
    Array(Vec<Json<'a>>, &'a str),
    String(String),
    Number(&'a str),
    Bool(bool),
    Null,
}

impl Json<'_> {
    /// The label value of a JSON value: strings unquoted, scalars as written, containers as JSON.
    pub(super) fn label_value(&self) -> String {
        match self {
            Json::Object(_, raw) | Json::Array(_, raw) => (*raw).to_string(),
            Json::String(text) => text.clone(),
            Json::Number(raw) => (*raw).to_string(),
            Json::Bool(true) => "true".to_string(),
            Json::Bool(false) => "false".to_string(),
            Json::Null => String::new(),
        }
    }
}

pub(super) struct JsonReader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> JsonReader<'a> {
    /// Reads the first JSON value of `text`. Like Loki's reader, anything after it is ignored.
    pub(super) fn parse(text: &'a str) -> Result<Json<'a>, String> {
        let mut reader = JsonReader { text, bytes: text.as_bytes(), pos: 0 };
        reader.skip_whitespace();
        reader.value(0)
    }

    fn error(&self, what: &str) -> String {
        format!("{what} at offset {}", self.pos)
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    fn skip_whitespace(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Result<Json<'a>, String> {
        if depth > MAX_JSON_DEPTH {
            return Err(self.error("JSON nested too deeply"));
        }
        match self.peek() {
            None => Err(self.error("unexpected end of JSON")),
            Some(b'{') => self.object(depth),
            Some(b'[') => self.array(depth),
            Some(b'"') => Ok(Json::String(self.string()?)),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'n') => self.literal("null", Json::Null),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(_) => Err(self.error("unexpected character in JSON")),
        }
    }

    fn object(&mut self, depth: usize) -> Result<Json<'a>, String> {
        let start = self.pos;
        self.pos += 1;
        let mut fields = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Ok(Json::Object(fields, &self.text[start..self.pos]));
        }
        loop {
            self.skip_whitespace();
            if self.peek() != Some(b'"') {
                return Err(self.error("expected a quoted object key"));
            }
            let key = self.string()?;
            self.skip_whitespace();
            if self.peek() != Some(b':') {
                return Err(self.error("expected ':' after object key"));
            }
            self.pos += 1;
            self.skip_whitespace();
            let value = self.value(depth + 1)?;
            fields.push((key, value));
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return Ok(Json::Object(fields, &self.text[start..self.pos]));
                }
                _ => return Err(self.error("expected ',' or '}' in object")),
            }
        }
    }

    fn array(&mut self, depth: usize) -> Result<Json<'a>, String> {
        let start = self.pos;
        self.pos += 1;
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return Ok(Json::Array(items, &self.text[start..self.pos]));
        }
        loop {
            self.skip_whitespace();
            items.push(self.value(depth + 1)?);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return Ok(Json::Array(items, &self.text[start..self.pos]));
                }
                _ => return Err(self.error("expected ',' or ']' in array")),
            }
        }
    }

    fn literal(&mut self, word: &str, value: Json<'a>) -> Result<Json<'a>, String> {
        if self.text[self.pos..].starts_with(word) {
            self.pos += word.len();
            Ok(value)
        } else {
            Err(self.error("invalid literal in JSON"))
        }
    }

    fn number(&mut self) -> Result<Json<'a>, String> {
        let start = self.pos;
        while matches!(self.peek(), Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')) {
            self.pos += 1;
        }
        let raw = &self.text[start..self.pos];
        if raw.parse::<f64>().is_err() {
            self.pos = start;
            return Err(self.error("invalid number in JSON"));
        }
        Ok(Json::Number(raw))
    }

    /// A string starting at the opening quote, unescaped.
    fn string(&mut self) -> Result<String, String> {
        self.pos += 1;
        let mut out = String::new();
        let mut run = self.pos;
        loop {
            match self.peek() {
                None => return Err(self.error("unterminated string in JSON")),
                Some(b'"') => {
                    out.push_str(&self.text[run..self.pos]);
                    self.pos += 1;
                    return Ok(out);
                }
                Some(b'\\') => {
                    out.push_str(&self.text[run..self.pos]);
                    self.pos += 1;
                    let escape = self.peek();
                    self.pos += 1;
                    match escape {
                        Some(b'"') => out.push('"'),
                        Some(b'\\') => out.push('\\'),
                        Some(b'/') => out.push('/'),
                        Some(b'b') => out.push('\u{8}'),
                        Some(b'f') => out.push('\u{c}'),
                        Some(b'n') => out.push('\n'),
                        Some(b'r') => out.push('\r'),
                        Some(b't') => out.push('\t'),
                        Some(b'u') => out.push(self.unicode_escape()?),
                        _ => {
                            self.pos -= 1;
                            return Err(self.error("invalid escape in JSON string"));
                        }
                    }
                    run = self.pos;
                }
                Some(_) => self.pos += 1,
            }
        }
    }

    /// The code point of `\uXXXX` (the `\u` already read), joining surrogate pairs; a lone
    /// surrogate becomes U+FFFD rather than an error, as lenient readers do.
    fn unicode_escape(&mut self) -> Result<char, String> {
        let high = self.hex4()?;
        if (0xD800..0xDC00).contains(&high) && self.text[self.pos..].starts_with("\\u") {
            let save = self.pos;
            self.pos += 2;
            let low = self.hex4()?;
            if (0xDC00..0xE000).contains(&low) {
                let code = 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00);
                return Ok(char::from_u32(code).unwrap_or('\u{FFFD}'));
            }
            self.pos = save;
        }
        Ok(char::from_u32(high).unwrap_or('\u{FFFD}'))
    }

    fn hex4(&mut self) -> Result<u32, String> {
        let digits = self.bytes.get(self.pos..self.pos + 4).ok_or_else(|| self.error("short \\u escape"))?;
        let mut code = 0;
        for digit in digits {
            let value = (*digit as char).to_digit(16).ok_or_else(|| self.error("invalid \\u escape"))?;
            code = code * 16 + value;
        }
        self.pos += 4;
        Ok(code)
    }
}

/// One step of a JSON extraction path: `.field`, `["field"]` or `[0]`.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum PathStep {
    Key(String),
    Index(usize),
}

pub(super) fn parse_json_path(expr: &str) -> Result<Vec<PathStep>, String> {
    let mut steps = Vec::new();
    let mut chars = expr.trim().chars().peekable();
    let is_ident = |c: char| !matches!(c, '.' | '[' | ']' | '"' | '\'') && !c.is_whitespace();
    while let Some(&c) = chars.peek() {
        match c {
            '.' => {
                chars.next();
                let mut key = String::new();
                while let Some(&c) = chars.peek().filter(|c| is_ident(**c)) {
                    key.push(c);
                    chars.next();
                }
                if key.is_empty() {
                    return Err(format!("expected a field name after '.' in {expr:?}"));
                }
                steps.push(PathStep::Key(key));
            }
            '[' => {
                chars.next();
                match chars.peek().copied() {
                    Some(quote @ ('"' | '\'')) => {
                        chars.next();
                        let mut key = String::new();
                        loop {
                            match chars.next() {
                                None => return Err(format!("unterminated string in {expr:?}")),
                                Some('\\') => match chars.next() {
                                    Some(escaped) => key.push(escaped),
                                    None => return Err(format!("unterminated string in {expr:?}")),
                                },
                                Some(c) if c == quote => break,
                                Some(c) => key.push(c),
                            }
                        }
                        steps.push(PathStep::Key(key));
                    }
                    _ => {
                        let mut digits = String::new();
                        while let Some(&c) = chars.peek().filter(|c| c.is_ascii_digit()) {
                            digits.push(c);
                            chars.next();
                        }
                        let index = digits.parse().map_err(|_| format!("expected an index or a string in {expr:?}"))?;
                        steps.push(PathStep::Index(index));
                    }
                }
                if chars.next() != Some(']') {
                    return Err(format!("expected ']' in {expr:?}"));
                }
            }
            c if is_ident(c) && steps.is_empty() => {
                let mut key = String::new();
                while let Some(&c) = chars.peek().filter(|c| is_ident(**c)) {
                    key.push(c);
                    chars.next();
                }
                steps.push(PathStep::Key(key));
            }
            c => return Err(format!("unexpected {c:?} in {expr:?}")),
        }
    }
    if steps.is_empty() {
        return Err("empty extraction expression".to_string());
    }
    Ok(steps)
}

pub(super) fn follow_path<'j, 'a>(mut value: &'j Json<'a>, path: &[PathStep]) -> Option<&'j Json<'a>> {
    for step in path {
        value = match (value, step) {
            (Json::Object(fields, _), PathStep::Key(key)) => &fields.iter().find(|(name, _)| name == key)?.1,
            (Json::Array(items, _), PathStep::Index(index)) => items.get(*index)?,
            _ => return None,
        };
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use crate::loki::pipeline::tests::run;
    use crate::loki::pipeline::{ERROR_LABEL, JSON_ERROR};

    #[test]
    fn deeply_nested_json_is_an_error_not_a_crash() {
        let line = format!("{}{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
        let (out, l) = run(r#"{a="b"} | json"#, &[], &line);
        assert!(out.is_some());
        assert_eq!(l[ERROR_LABEL], JSON_ERROR);
    }
}
