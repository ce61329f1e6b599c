//! LogQL's per-line pipeline, evaluated in Rust on each log line that the store's SQL selected.
//!
//! The stream selector and the leading line filters run in SQL (see `eval`); everything after them
//! (parsers, label filters, formatters, `drop`/`keep`) runs here, one line at a time, over a
//! [`Labels`] map that starts as the stream labels and ends as the entry's final labels. A
//! [`Pipeline`] is compiled once per query, so regular expressions and templates are parsed once
//! and a bad query is a [`PipelineError`] (a 400) before any line is read.
//!
//! Semantics follow Grafana Loki (its documentation, and its implementation where the documentation
//! says nothing) rather than anything cleverer, because Grafana's queries and users expect Loki's
//! answers:
//!
//! - parsers never drop a line: a line they cannot read gets `__error__` (`JSONParserErr`,
//!   `LogfmtParserErr`) and `__error_details__`, and only a later label filter removes it;
//! - an extracted label whose name is already a stream label is named `<name>_extracted`;
//! - numeric, duration and bytes label filters drop a line whose label is missing, but keep a
//!   line whose label does not convert, marking it `__error__="LabelFilterErr"` (the predicate then
//!   counts as true, like Loki's), unless it already carries an earlier, more useful error;
//! - `and` evaluates both sides (so both can mark errors), `or` stops at the first true side;
//! - `pattern` matches like Loki's matcher: a leading literal must start the line, each capture
//!   runs to the next literal, and when a literal is missing the capture takes the rest of the line
//!   and matching stops there (captures so far are kept);
//! - `unpack` extracts the top-level string fields of a JSON object, and `_entry` replaces the line;
//! - `keep` never removes `__error__`/`__error_details__`; `drop` can;
//! - templates (`line_format`, `label_format`) are a subset of Go's `text/template`: fields,
//!   string/number literals, `__line__`, pipelines, parentheses and a handful of Loki's functions.
//!   Anything else is rejected when the query is compiled rather than misrendered.
//!
//! Nothing here panics on a query or a log line: both are user input.

use std::borrow::Cow;
use std::collections::BTreeMap;

use logql::{
    FilterOp, FilterValue, LabelExtraction, LabelFilterExpr, LabelFormatValue, LabelPredicate, LineFilter,
    LineFilterOp, MatchOp, PipelineStage, Unwrap,
};
use regex::Regex;

/// Labels of one entry: stream labels on the way in, final labels on the way out.
pub type Labels = BTreeMap<String, String>;

const ERROR_LABEL: &str = "__error__";
const ERROR_DETAILS_LABEL: &str = "__error_details__";
const DUPLICATE_SUFFIX: &str = "_extracted";
const JSON_ERROR: &str = "JSONParserErr";
const LOGFMT_ERROR: &str = "LogfmtParserErr";
const LABEL_FILTER_ERROR: &str = "LabelFilterErr";
const TEMPLATE_ERROR: &str = "TemplateFormatErr";
const SAMPLE_EXTRACTION_ERROR: &str = "SampleExtractionErr";
/// Deeper JSON is refused rather than recursed into, so a hostile line cannot exhaust the stack.
const MAX_JSON_DEPTH: usize = 128;
/// A `printf` width beyond this is refused: one line must not be able to allocate without bound.
const MAX_PRINTF_WIDTH: usize = 4096;

/// Why a pipeline does not compile. These are all faults of the query, so the API answers 400.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("invalid regular expression {pattern:?}: {message}")]
    InvalidRegex { pattern: String, message: String },
    #[error("invalid template {template:?}: {message}")]
    InvalidTemplate { template: String, message: String },
    #[error("invalid {stage} stage: {message}")]
    InvalidStage { stage: &'static str, message: String },
    #[error("not supported: {0}")]
    Unsupported(String),
}

/// A compiled log pipeline: every stage of a log query after its stream selector.
#[derive(Debug)]
pub struct Pipeline {
    stages: Vec<Stage>,
    leading: Vec<LineFilter>,
    unwrap: Option<Unwrap>,
    /// Parsers rename labels that collide with stream labels, so they need the names on entry.
    needs_stream_labels: bool,
}

#[derive(Debug)]
enum Stage {
    Line(LineFilterStage),
    Json(JsonStage),
    Logfmt(LogfmtStage),
    Regexp(RegexpStage),
    Pattern(Pattern),
    Unpack,
    Decolorize(Regex),
    LabelFilter(FilterNode),
    LineFormat(Template),
    LabelFormat(Vec<(String, LabelFormatOp)>),
    Drop(Vec<NamedMatcher>),
    Keep(Vec<NamedMatcher>),
    /// An unwrap followed by more stages: its conversion error must be visible to them (Loki's
    /// post-unwrap label filters such as `| unwrap latency | __error__=""`).
    Unwrap(Unwrap),
}

impl Pipeline {
    /// Compiles the stages of a parsed log query (`LogQuery::pipeline`). `PipelineStage::Unwrap` is
    /// not a per-line stage: it is returned separately by [`Pipeline::unwrap`].
    pub fn compile(stages: &[PipelineStage]) -> Result<Pipeline, PipelineError> {
        let mut compiled = Vec::new();
        let mut leading = Vec::new();
        let mut unwrap = None;
        let mut in_leading_filters = true;
        for (index, stage) in stages.iter().enumerate() {
            in_leading_filters &= matches!(stage, PipelineStage::LineFilter(_));
            compiled.push(match stage {
                PipelineStage::LineFilter(filter) => {
                    let stage = LineFilterStage::compile(filter)?;
                    if in_leading_filters {
                        leading.push(filter.clone());
                    }
                    Stage::Line(stage)
                }
                PipelineStage::Json(extractions) => Stage::Json(JsonStage::compile(extractions)?),
                PipelineStage::Logfmt(logfmt) => Stage::Logfmt(LogfmtStage::compile(logfmt)?),
                PipelineStage::Regexp(pattern) => Stage::Regexp(RegexpStage::compile(pattern)?),
                PipelineStage::Pattern(pattern) => Stage::Pattern(Pattern::compile(pattern)?),
                PipelineStage::Unpack => Stage::Unpack,
                PipelineStage::Decolorize => Stage::Decolorize(compile_regex(ANSI_PATTERN)?),
                PipelineStage::LabelFilter(expr) => Stage::LabelFilter(FilterNode::compile(expr)?),
                PipelineStage::LineFormat(template) => Stage::LineFormat(Template::compile(template)?),
                PipelineStage::LabelFormat(formats) => Stage::LabelFormat(compile_label_format(formats)?),
                PipelineStage::Drop(predicates) => Stage::Drop(NamedMatcher::compile_all(predicates)?),
                PipelineStage::Keep(predicates) => Stage::Keep(NamedMatcher::compile_all(predicates)?),
                PipelineStage::Distinct(_) => return Err(PipelineError::Unsupported("the distinct stage".into())),
                PipelineStage::Unwrap(stage) => {
                    if unwrap.is_some() {
                        return Err(PipelineError::Unsupported("more than one unwrap stage".into()));
                    }
                    if let Some(conversion) = &stage.conversion
                        && !matches!(conversion.as_str(), "duration" | "duration_seconds" | "bytes")
                    {
                        return Err(PipelineError::InvalidStage {
                            stage: "unwrap",
                            message: format!("unknown conversion function {conversion:?}"),
                        });
                    }
                    unwrap = Some(stage.clone());
                    if index + 1 == stages.len() {
                        continue;
                    }
                    Stage::Unwrap(stage.clone())
                }
                other => return Err(PipelineError::Unsupported(format!("pipeline stage {other:?}"))),
            });
        }
        let needs_stream_labels = compiled.iter().any(|stage| {
            matches!(stage, Stage::Json(_) | Stage::Logfmt(_) | Stage::Regexp(_) | Stage::Pattern(_) | Stage::Unpack)
        });
        Ok(Pipeline { stages: compiled, leading, unwrap, needs_stream_labels })
    }

    /// True when there are no stages (the caller can skip per-line work).
    pub fn is_empty(&self) -> bool {
        self.stages.is_empty()
    }

    /// The leading line filters (before any parser or formatter), which the caller pushes down into
    /// SQL. [`Pipeline::process`] still applies them, so correctness never depends on the pushdown.
    pub fn leading_line_filters(&self) -> Vec<LineFilter> {
        self.leading.clone()
    }

    /// The unwrap stage, if the query has one.
    pub fn unwrap(&self) -> Option<&Unwrap> {
        self.unwrap.as_ref()
    }

    /// Runs one line through every stage. `labels` holds the stream labels on entry and the final
    /// labels on exit. Returns the (possibly rewritten) line, or `None` when a filter dropped it.
    pub fn process(&self, line: &str, labels: &mut Labels) -> Option<String> {
        // Sorted, since `Labels` iterates in key order: `extracted_name` binary-searches it.
        let stream: Vec<String> = if self.needs_stream_labels { labels.keys().cloned().collect() } else { Vec::new() };
        let mut line = Cow::Borrowed(line);
        for stage in &self.stages {
            match stage {
                Stage::Line(filter) => {
                    if !filter.matches(&line) {
                        return None;
                    }
                }
                Stage::Json(json) => json.process(&line, labels, &stream),
                Stage::Logfmt(logfmt) => logfmt.process(&line, labels, &stream),
                Stage::Regexp(regexp) => regexp.process(&line, labels, &stream),
                Stage::Pattern(pattern) => pattern.process(&line, labels, &stream),
                Stage::Unpack => {
                    if let Some(entry) = unpack(&line, labels, &stream) {
                        line = Cow::Owned(entry);
                    }
                }
                Stage::Decolorize(ansi) => {
                    if ansi.is_match(&line) {
                        let stripped = ansi.replace_all(&line, "").into_owned();
                        line = Cow::Owned(stripped);
                    }
                }
                Stage::LabelFilter(filter) => {
                    if !filter.eval(labels) {
                        return None;
                    }
                }
                Stage::LineFormat(template) => match template.render(labels, &line) {
                    Ok(rendered) => line = Cow::Owned(rendered),
                    Err(message) => set_error(labels, TEMPLATE_ERROR, Some(message)),
                },
                Stage::LabelFormat(formats) => label_format(formats, labels, &line),
                Stage::Drop(matchers) => {
                    for matcher in matchers {
                        let matched = match &matcher.matcher {
                            None => true,
                            Some(m) => m.matches(labels.get(&matcher.name).map_or("", String::as_str)),
                        };
                        if matched {
                            labels.remove(&matcher.name);
                        }
                    }
                }
                Stage::Keep(matchers) => labels.retain(|name, value| {
                    name == ERROR_LABEL
                        || name == ERROR_DETAILS_LABEL
                        || matchers
                            .iter()
                            .any(|keep| keep.name == *name && keep.matcher.as_ref().is_none_or(|m| m.matches(value)))
                }),
                Stage::Unwrap(unwrap) => {
                    if let Err(message) = unwrap_value(labels, unwrap) {
                        set_error(labels, SAMPLE_EXTRACTION_ERROR, Some(message));
                    }
                }
            }
        }
        Some(line.into_owned())
    }
}

/// Value of `label` for `| unwrap`: a number, a Go duration (`1.5s`, `250ms`, `1h2m`; in seconds)
/// or a bytes quantity (`10KB`, `1.5MiB`; in bytes). `Err(message)` means the caller marks the
/// sample `__error__="SampleExtractionErr"`. A missing label converts like an empty one: it fails.
pub fn unwrap_value(labels: &Labels, unwrap: &Unwrap) -> Result<f64, String> {
    let value = labels.get(&unwrap.label).map_or("", String::as_str);
    match unwrap.conversion.as_deref() {
        None => parse_go_float(value),
        Some("duration" | "duration_seconds") => parse_go_duration(value).map(|nanos| nanos as f64 / 1e9),
        Some("bytes") => parse_go_bytes(value).map(|bytes| bytes as f64),
        Some(other) => Err(format!("unknown conversion function {other:?}")),
    }
}

// ---------------------------------------------------------------------------------------------
// Shared helpers

fn set_error(labels: &mut Labels, kind: &str, details: Option<String>) {
    labels.insert(ERROR_LABEL.to_string(), kind.to_string());
    if let Some(details) = details {
        labels.insert(ERROR_DETAILS_LABEL.to_string(), details);
    }
}

fn has_error(labels: &Labels) -> bool {
    labels.get(ERROR_LABEL).is_some_and(|error| !error.is_empty())
}

/// The label an extracted `name` is stored under: stream labels are never overwritten by parsers.
fn extracted_name(stream: &[String], name: &str) -> String {
    if stream.binary_search_by(|label| label.as_str().cmp(name)).is_ok() {
        format!("{name}{DUPLICATE_SUFFIX}")
    } else {
        name.to_string()
    }
}

fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Appends `key` as a label-name fragment: characters outside `[a-zA-Z0-9_]` become `_`, and a name
/// that would start with a digit gets a leading `_`, as Loki does for JSON and logfmt keys.
fn push_sanitized(out: &mut String, key: &str) {
    let key = key.trim();
    if out.is_empty() && key.starts_with(|c: char| c.is_ascii_digit()) {
        out.push('_');
    }
    out.extend(key.chars().map(|c| if c.is_ascii_alphanumeric() || c == '_' { c } else { '_' }));
}

fn sanitize_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    push_sanitized(&mut out, key);
    out
}

fn compile_regex(pattern: &str) -> Result<Regex, PipelineError> {
    Regex::new(pattern)
        .map_err(|error| PipelineError::InvalidRegex { pattern: pattern.to_string(), message: error.to_string() })
}

/// A regex matching whole values, as label matchers do. The pattern is first compiled alone so that
/// an unbalanced `)` cannot escape the wrapping group and change what is anchored.
fn compile_anchored(pattern: &str, dot_matches_newline: bool) -> Result<Regex, PipelineError> {
    compile_regex(pattern)?;
    let flags = if dot_matches_newline { "?s:" } else { "?:" };
    Regex::new(&format!(r"\A({flags}{pattern})\z"))
        .map_err(|error| PipelineError::InvalidRegex { pattern: pattern.to_string(), message: error.to_string() })
}

/// Go's `strconv.Quote`, for error details that read like Loki's.
fn go_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

// ---------------------------------------------------------------------------------------------
// Line filters

#[derive(Debug)]
enum LineFilterStage {
    Contains(String),
    NotContains(String),
    Regex(Regex),
    NotRegex(Regex),
}

impl LineFilterStage {
    fn compile(filter: &LineFilter) -> Result<Self, PipelineError> {
        if filter.is_ip {
            return Err(PipelineError::Unsupported("ip() line filters".into()));
        }
        Ok(match filter.op {
            LineFilterOp::Contains => LineFilterStage::Contains(filter.value.clone()),
            LineFilterOp::NotContains => LineFilterStage::NotContains(filter.value.clone()),
            LineFilterOp::Regex => LineFilterStage::Regex(compile_regex(&filter.value)?),
            LineFilterOp::NotRegex => LineFilterStage::NotRegex(compile_regex(&filter.value)?),
            other => return Err(PipelineError::Unsupported(format!("line filter operator {other:?}"))),
        })
    }

    fn matches(&self, line: &str) -> bool {
        match self {
            LineFilterStage::Contains(needle) => line.contains(needle.as_str()),
            LineFilterStage::NotContains(needle) => !line.contains(needle.as_str()),
            LineFilterStage::Regex(regex) => regex.is_match(line),
            LineFilterStage::NotRegex(regex) => !regex.is_match(line),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// JSON: a small reader that keeps numbers as written and fields in document order, which a
// generic deserializer would not (Loki labels `1.50` as "1.50", not "1.5").

#[derive(Debug)]
enum Json<'a> {
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
    fn label_value(&self) -> String {
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

struct JsonReader<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> JsonReader<'a> {
    /// Reads the first JSON value of `text`. Like Loki's reader, anything after it is ignored.
    fn parse(text: &'a str) -> Result<Json<'a>, String> {
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
enum PathStep {
    Key(String),
    Index(usize),
}

fn parse_json_path(expr: &str) -> Result<Vec<PathStep>, String> {
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

fn follow_path<'j, 'a>(mut value: &'j Json<'a>, path: &[PathStep]) -> Option<&'j Json<'a>> {
    for step in path {
        value = match (value, step) {
            (Json::Object(fields, _), PathStep::Key(key)) => &fields.iter().find(|(name, _)| name == key)?.1,
            (Json::Array(items, _), PathStep::Index(index)) => items.get(*index)?,
            _ => return None,
        };
    }
    Some(value)
}

#[derive(Debug)]
struct JsonStage {
    /// `(label, path)`; empty means "every scalar field, flattened".
    extractions: Vec<(String, Vec<PathStep>)>,
}

impl JsonStage {
    fn compile(extractions: &[LabelExtraction]) -> Result<Self, PipelineError> {
        let invalid = |message: String| PipelineError::InvalidStage { stage: "json", message };
        let mut compiled = Vec::new();
        for extraction in extractions {
            let (label, path) = match &extraction.expr {
                Some(expr) => {
                    if !is_valid_label_name(&extraction.name) {
                        return Err(invalid(format!("invalid extracted label name '{}'", extraction.name)));
                    }
                    (extraction.name.clone(), parse_json_path(expr).map_err(invalid)?)
                }
                // A bare `| json a.b` extracts path `a.b` into the label its name sanitizes to.
                None => (sanitize_key(&extraction.name), parse_json_path(&extraction.name).map_err(invalid)?),
            };
            compiled.push((label, path));
        }
        Ok(JsonStage { extractions: compiled })
    }

    fn process(&self, line: &str, labels: &mut Labels, stream: &[String]) {
        if self.extractions.is_empty() {
            match JsonReader::parse(line) {
                Ok(Json::Object(fields, _)) => {
                    let mut prefix = String::new();
                    flatten_json(&fields, &mut prefix, labels, stream);
                }
                Ok(_) => set_error(labels, JSON_ERROR, Some("expecting json object, but it is not".to_string())),
                Err(details) => set_error(labels, JSON_ERROR, Some(details)),
            }
            return;
        }
        if line.is_empty() {
            return;
        }
        match JsonReader::parse(line) {
            Ok(json) => {
                for (label, path) in &self.extractions {
                    let value = follow_path(&json, path).map(Json::label_value).unwrap_or_default();
                    labels.insert(extracted_name(stream, label), value);
                }
            }
            Err(details) => set_error(labels, JSON_ERROR, Some(details)),
        }
    }
}

fn flatten_json(fields: &[(String, Json<'_>)], prefix: &mut String, labels: &mut Labels, stream: &[String]) {
    for (key, value) in fields {
        let restore = prefix.len();
        if !prefix.is_empty() {
            prefix.push('_');
        }
        push_sanitized(prefix, key);
        match value {
            Json::Object(inner, _) => flatten_json(inner, prefix, labels, stream),
            // Loki does not extract arrays at all.
            Json::Array(..) => {}
            scalar => {
                if !prefix.is_empty() {
                    labels.insert(extracted_name(stream, prefix), scalar.label_value());
                }
            }
        }
        prefix.truncate(restore);
    }
}

fn unpack(line: &str, labels: &mut Labels, stream: &[String]) -> Option<String> {
    if line.is_empty() {
        return None;
    }
    match JsonReader::parse(line) {
        Ok(Json::Object(fields, _)) => {
            let mut entry = None;
            for (key, value) in fields {
                // Packed labels are strings; anything else is not a label Promtail packed.
                let Json::String(value) = value else { continue };
                if key == "_entry" {
                    entry = Some(value);
                    continue;
                }
                let name = sanitize_key(&key);
                if !name.is_empty() {
                    labels.insert(extracted_name(stream, &name), value);
                }
            }
            entry
        }
        Ok(_) => {
            set_error(labels, JSON_ERROR, Some("expecting json object, but it is not".to_string()));
            None
        }
        Err(details) => {
            set_error(labels, JSON_ERROR, Some(details));
            None
        }
    }
}

// ---------------------------------------------------------------------------------------------
// logfmt

#[derive(Debug)]
struct LogfmtStage {
    strict: bool,
    keep_empty: bool,
    /// `(label, key)`; empty means "every pair".
    extractions: Vec<(String, String)>,
}

impl LogfmtStage {
    fn compile(stage: &logql::LogfmtStage) -> Result<Self, PipelineError> {
        let invalid = |message: String| PipelineError::InvalidStage { stage: "logfmt", message };
        let mut strict = false;
        let mut keep_empty = false;
        for flag in &stage.flags {
            match flag.as_str() {
                "strict" => strict = true,
                "keep-empty" => keep_empty = true,
                other => return Err(invalid(format!("unknown flag --{other}"))),
            }
        }
        let mut extractions = Vec::new();
        for extraction in &stage.extractions {
            match &extraction.expr {
                Some(key) => {
                    if !is_valid_label_name(&extraction.name) {
                        return Err(invalid(format!("invalid extracted label name '{}'", extraction.name)));
                    }
                    if key.is_empty() {
                        return Err(invalid(format!("empty key for label '{}'", extraction.name)));
                    }
                    extractions.push((extraction.name.clone(), key.clone()));
                }
                None => extractions.push((sanitize_key(&extraction.name), extraction.name.clone())),
            }
        }
        Ok(LogfmtStage { strict, keep_empty, extractions })
    }

    fn process(&self, line: &str, labels: &mut Labels, stream: &[String]) {
        if !self.extractions.is_empty() {
            // Loki creates every requested label, empty when the line lacks the key.
            for (label, _) in &self.extractions {
                if stream.binary_search_by(|name| name.as_str().cmp(label)).is_err() {
                    labels.entry(label.clone()).or_default();
                }
            }
        }
        let mut decoder = LogfmtDecoder { line, pos: 0 };
        while let Some(pair) = decoder.next_pair() {
            let (key, value) = match pair {
                Ok(pair) => pair,
                Err(details) => {
                    // Only `--strict` reports malformed input; otherwise the bad pair is skipped.
                    if self.strict {
                        set_error(labels, LOGFMT_ERROR, Some(details));
                        return;
                    }
                    continue;
                }
            };
            let sanitized = sanitize_key(key);
            if sanitized.is_empty() {
                continue;
            }
            if self.extractions.is_empty() {
                if value.is_empty() && !self.keep_empty {
                    continue;
                }
                labels.insert(extracted_name(stream, &sanitized), value.into_owned());
            } else {
                for (label, wanted) in &self.extractions {
                    if wanted == key || *wanted == sanitized {
                        labels.insert(extracted_name(stream, label), value.to_string());
                    }
                }
            }
        }
    }
}

/// A logfmt reader in the manner of go-logfmt, which Loki uses: keys are runs of bytes above space
/// without `=` or `"`, values are bare (no `=` or `"`) or double-quoted with JSON escapes.
struct LogfmtDecoder<'a> {
    line: &'a str,
    pos: usize,
}

type LogfmtPair<'a> = Result<(&'a str, Cow<'a, str>), String>;

impl<'a> LogfmtDecoder<'a> {
    fn byte(&self, at: usize) -> Option<u8> {
        self.line.as_bytes().get(at).copied()
    }

    fn error(&self, message: &str) -> String {
        format!("logfmt syntax error at pos {} : {message}", self.pos + 1)
    }

    /// Skips the rest of a malformed pair, up to the next space.
    fn skip_value(&mut self) {
        while self.byte(self.pos).is_some_and(|b| b > b' ') {
            self.pos += 1;
        }
    }

    fn next_pair(&mut self) -> Option<LogfmtPair<'a>> {
        while self.byte(self.pos).is_some_and(|b| b <= b' ') {
            self.pos += 1;
        }
        self.byte(self.pos)?;
        let start = self.pos;
        loop {
            match self.byte(self.pos) {
                None => return Some(Ok((&self.line[start..], Cow::Borrowed("")))),
                Some(b) if b <= b' ' => return Some(Ok((&self.line[start..self.pos], Cow::Borrowed("")))),
                Some(b'"') => {
                    let error = self.error("unexpected '\"'");
                    self.skip_value();
                    return Some(Err(error));
                }
                Some(b'=') => {
                    if self.pos == start {
                        let error = self.error("unexpected '='");
                        self.skip_value();
                        return Some(Err(error));
                    }
                    let key = &self.line[start..self.pos];
                    self.pos += 1;
                    return Some(self.value().map(|value| (key, value)));
                }
                Some(_) => self.pos += 1,
            }
        }
    }

    fn value(&mut self) -> Result<Cow<'a, str>, String> {
        match self.byte(self.pos) {
            None => return Ok(Cow::Borrowed("")),
            Some(b) if b <= b' ' => return Ok(Cow::Borrowed("")),
            Some(b'"') => return self.quoted(),
            Some(_) => {}
        }
        let start = self.pos;
        loop {
            match self.byte(self.pos) {
                None => return Ok(Cow::Borrowed(&self.line[start..])),
                Some(b) if b <= b' ' => return Ok(Cow::Borrowed(&self.line[start..self.pos])),
                Some(b @ (b'=' | b'"')) => {
                    let error = self.error(&format!("unexpected '{}'", b as char));
                    self.skip_value();
                    return Err(error);
                }
                Some(_) => self.pos += 1,
            }
        }
    }

    fn quoted(&mut self) -> Result<Cow<'a, str>, String> {
        let start = self.pos;
        let mut escaped = false;
        let mut has_escape = false;
        let mut at = start + 1;
        while let Some(b) = self.byte(at) {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
                has_escape = true;
            } else if b == b'"' {
                self.pos = at + 1;
                let inner = &self.line[start + 1..at];
                if !has_escape {
                    return Ok(Cow::Borrowed(inner));
                }
                return unescape_logfmt(inner).map(Cow::Owned).ok_or_else(|| self.error("invalid quoted value"));
            }
            at += 1;
        }
        self.pos = self.line.len();
        Err(self.error("unterminated quoted value"))
    }
}

/// `digits` hex digits exactly (`from_str_radix` alone would also take a sign).
fn is_hex(text: &str, digits: usize) -> bool {
    text.len() == digits && text.bytes().all(|b| b.is_ascii_hexdigit())
}

fn unescape_logfmt(inner: &str) -> Option<String> {
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next()? {
            '"' => out.push('"'),
            '\\' => out.push('\\'),
            '/' => out.push('/'),
            'b' => out.push('\u{8}'),
            'f' => out.push('\u{c}'),
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            'u' => {
                let hex: String = chars.by_ref().take(4).collect();
                let code = u32::from_str_radix(&hex, 16).ok().filter(|_| is_hex(&hex, 4))?;
                out.push(char::from_u32(code).unwrap_or('\u{FFFD}'));
            }
            _ => return None,
        }
    }
    Some(out)
}

// ---------------------------------------------------------------------------------------------
// regexp and pattern

#[derive(Debug)]
struct RegexpStage {
    regex: Regex,
    /// Capture group index and label name of every named group.
    names: Vec<(usize, String)>,
}

impl RegexpStage {
    fn compile(pattern: &str) -> Result<Self, PipelineError> {
        let regex = compile_regex(pattern)?;
        let names: Vec<(usize, String)> = regex
            .capture_names()
            .enumerate()
            .filter_map(|(index, name)| name.map(|name| (index, name.to_string())))
            .collect();
        if names.is_empty() {
            return Err(PipelineError::InvalidStage {
                stage: "regexp",
                message: "at least one named capture must be supplied".into(),
            });
        }
        if let Some((_, name)) = names.iter().find(|(_, name)| !is_valid_label_name(name)) {
            return Err(PipelineError::InvalidStage {
                stage: "regexp",
                message: format!("invalid extracted label name '{name}'"),
            });
        }
        Ok(RegexpStage { regex, names })
    }

    fn process(&self, line: &str, labels: &mut Labels, stream: &[String]) {
        let Some(captures) = self.regex.captures(line) else { return };
        for (index, name) in &self.names {
            // A group that did not take part in the match still sets its label, to "" (as Go's does).
            let value = captures.get(*index).map_or("", |m| m.as_str());
            labels.insert(extracted_name(stream, name), value.to_string());
        }
    }
}

#[derive(Debug, PartialEq)]
enum PatternPart {
    Literal(String),
    /// `None` for `<_>`, which matches without extracting.
    Capture(Option<String>),
}

#[derive(Debug)]
struct Pattern {
    parts: Vec<PatternPart>,
}

impl Pattern {
    fn compile(source: &str) -> Result<Self, PipelineError> {
        let invalid = |message: String| PipelineError::InvalidStage { stage: "pattern", message };
        let mut parts: Vec<PatternPart> = Vec::new();
        let mut rest = source;
        while let Some(c) = rest.chars().next() {
            if let Some(name) = capture_at(rest) {
                parts.push(PatternPart::Capture((name != "_").then(|| name.to_string())));
                rest = &rest[name.len() + 2..];
                continue;
            }
            match parts.last_mut() {
                Some(PatternPart::Literal(literal)) => literal.push(c),
                _ => parts.push(PatternPart::Literal(c.to_string())),
            }
            rest = &rest[c.len_utf8()..];
        }
        let names: Vec<&String> = parts
            .iter()
            .filter_map(|part| if let PatternPart::Capture(name) = part { name.as_ref() } else { None })
            .collect();
        if names.is_empty() {
            return Err(invalid("at least one named capture is required".into()));
        }
        if parts.windows(2).any(|pair| matches!(pair, [PatternPart::Capture(_), PatternPart::Capture(_)])) {
            return Err(invalid("consecutive captures must be separated by a literal".into()));
        }
        for (index, name) in names.iter().enumerate() {
            if names[..index].contains(name) {
                return Err(invalid(format!("duplicate capture name '{name}'")));
            }
        }
        Ok(Pattern { parts })
    }

    /// Named captures of `line`, in pattern order.
    fn captures<'l>(&self, line: &'l str) -> Vec<(&str, &'l str)> {
        let mut found = Vec::new();
        if line.is_empty() {
            return found;
        }
        let mut parts = &self.parts[..];
        let mut rest = line;
        if let Some(PatternPart::Literal(literal)) = parts.first() {
            let Some(after) = rest.strip_prefix(literal.as_str()) else { return found };
            rest = after;
            parts = &parts[1..];
        }
        while let Some((PatternPart::Capture(name), tail)) = parts.split_first() {
            let Some(PatternPart::Literal(literal)) = tail.first() else {
                // The pattern ends on this capture: it takes the rest of the line.
                if let Some(name) = name {
                    found.push((name.as_str(), rest));
                }
                break;
            };
            match rest.find(literal.as_str()) {
                None => {
                    // Loki's matcher: a missing literal ends matching, the capture taking the rest.
                    if let Some(name) = name {
                        found.push((name.as_str(), rest));
                    }
                    break;
                }
                Some(at) => {
                    if let Some(name) = name {
                        found.push((name.as_str(), &rest[..at]));
                    }
                    rest = &rest[at + literal.len()..];
                    parts = &tail[1..];
                }
            }
        }
        found
    }

    fn process(&self, line: &str, labels: &mut Labels, stream: &[String]) {
        for (name, value) in self.captures(line) {
            labels.insert(extracted_name(stream, name), value.to_string());
        }
    }
}

/// The name of a `<name>` capture at the start of `text` (names are `[A-Za-z_][A-Za-z0-9_]*`).
fn capture_at(text: &str) -> Option<&str> {
    let inner = text.strip_prefix('<')?;
    let end = inner.find('>')?;
    let name = &inner[..end];
    is_valid_label_name(name).then_some(name)
}

// ---------------------------------------------------------------------------------------------
// decolorize

/// ANSI escape sequences, as Loki strips them (the pattern of github.com/acarl005/stripansi).
const ANSI_PATTERN: &str = concat!(
    r"[\x1b\x{9b}][\[\]()#;?]*(?:(?:(?:[a-zA-Z0-9]*(?:;[a-zA-Z0-9]*)*)?\x07)",
    r"|(?:(?:[0-9]{1,4}(?:;[0-9]{0,4})*)?[0-9A-PRZcf-ntqry=><~]))"
);

// ---------------------------------------------------------------------------------------------
// Label filters, drop and keep

#[derive(Debug)]
enum Matcher {
    Equal(String),
    NotEqual(String),
    Regex(Regex),
    NotRegex(Regex),
}

impl Matcher {
    fn compile(op: MatchOp, value: &str, dot_matches_newline: bool) -> Result<Self, PipelineError> {
        Ok(match op {
            MatchOp::Eq => Matcher::Equal(value.to_string()),
            MatchOp::Neq => Matcher::NotEqual(value.to_string()),
            MatchOp::Re => Matcher::Regex(compile_anchored(value, dot_matches_newline)?),
            MatchOp::Nre => Matcher::NotRegex(compile_anchored(value, dot_matches_newline)?),
            other => return Err(PipelineError::Unsupported(format!("matcher operator {other}"))),
        })
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::Equal(expected) => value == expected,
            Matcher::NotEqual(expected) => value != expected,
            Matcher::Regex(regex) => regex.is_match(value),
            Matcher::NotRegex(regex) => !regex.is_match(value),
        }
    }
}

#[derive(Debug)]
struct NamedMatcher {
    name: String,
    matcher: Option<Matcher>,
}

impl NamedMatcher {
    fn compile_all(predicates: &[LabelPredicate]) -> Result<Vec<NamedMatcher>, PipelineError> {
        predicates
            .iter()
            .map(|predicate| {
                let matcher = match &predicate.matcher {
                    // `drop`/`keep` matchers are Prometheus matchers, whose `.` matches newlines.
                    Some((op, value)) => Some(Matcher::compile(*op, value, true)?),
                    None => None,
                };
                Ok(NamedMatcher { name: predicate.name.clone(), matcher })
            })
            .collect()
    }
}

#[derive(Debug, Clone, Copy)]
enum Comparison {
    Equal,
    NotEqual,
    Greater,
    GreaterOrEqual,
    Less,
    LessOrEqual,
}

impl Comparison {
    fn of(op: FilterOp) -> Result<Self, PipelineError> {
        Ok(match op {
            FilterOp::Eq | FilterOp::CmpEq => Comparison::Equal,
            FilterOp::Neq => Comparison::NotEqual,
            FilterOp::Gt => Comparison::Greater,
            FilterOp::Gte => Comparison::GreaterOrEqual,
            FilterOp::Lt => Comparison::Less,
            FilterOp::Lte => Comparison::LessOrEqual,
            other => return Err(PipelineError::Unsupported(format!("operator {other:?} against a number"))),
        })
    }

    fn holds<T: PartialOrd>(self, left: T, right: T) -> bool {
        match self {
            Comparison::Equal => left == right,
            Comparison::NotEqual => left != right,
            Comparison::Greater => left > right,
            Comparison::GreaterOrEqual => left >= right,
            Comparison::Less => left < right,
            Comparison::LessOrEqual => left <= right,
        }
    }
}

#[derive(Debug)]
enum FilterNode {
    And(Box<FilterNode>, Box<FilterNode>),
    Or(Box<FilterNode>, Box<FilterNode>),
    Text { name: String, matcher: Matcher },
    Number { name: String, comparison: Comparison, value: f64 },
    Duration { name: String, comparison: Comparison, nanos: i128 },
    Bytes { name: String, comparison: Comparison, value: u64 },
}

impl FilterNode {
    fn compile(expr: &LabelFilterExpr) -> Result<Self, PipelineError> {
        Ok(match expr {
            LabelFilterExpr::And(left, right) => {
                FilterNode::And(Box::new(Self::compile(left)?), Box::new(Self::compile(right)?))
            }
            LabelFilterExpr::Or(left, right) => {
                FilterNode::Or(Box::new(Self::compile(left)?), Box::new(Self::compile(right)?))
            }
            LabelFilterExpr::Pred(pred) => {
                let name = pred.name.clone();
                match &pred.value {
                    FilterValue::String(value) => {
                        let op = match pred.op {
                            FilterOp::Eq | FilterOp::CmpEq => MatchOp::Eq,
                            FilterOp::Neq => MatchOp::Neq,
                            FilterOp::Re => MatchOp::Re,
                            FilterOp::Nre => MatchOp::Nre,
                            other => {
                                return Err(PipelineError::Unsupported(format!("operator {other:?} against a string")));
                            }
                        };
                        FilterNode::Text { name, matcher: Matcher::compile(op, value, false)? }
                    }
                    FilterValue::Number(value) => {
                        FilterNode::Number { name, comparison: Comparison::of(pred.op)?, value: *value }
                    }
                    FilterValue::Duration(value) => FilterNode::Duration {
                        name,
                        comparison: Comparison::of(pred.op)?,
                        nanos: i128::try_from(value.as_nanos()).unwrap_or(i128::MAX),
                    },
                    FilterValue::Bytes(value) => {
                        FilterNode::Bytes { name, comparison: Comparison::of(pred.op)?, value: *value }
                    }
                    FilterValue::Ip(_) => return Err(PipelineError::Unsupported("ip() label filters".into())),
                    other => return Err(PipelineError::Unsupported(format!("label filter value {other:?}"))),
                }
            }
            other => return Err(PipelineError::Unsupported(format!("label filter {other:?}"))),
        })
    }

    fn eval(&self, labels: &mut Labels) -> bool {
        match self {
            // Both sides run, as in Loki, so both can mark a conversion error.
            FilterNode::And(left, right) => {
                let left = left.eval(labels);
                let right = right.eval(labels);
                left && right
            }
            FilterNode::Or(left, right) => left.eval(labels) || right.eval(labels),
            FilterNode::Text { name, matcher } => matcher.matches(labels.get(name).map_or("", String::as_str)),
            FilterNode::Number { name, comparison, value } => {
                let parsed = labels.get(name).map(|v| parse_go_float(v));
                compare_converted(labels, parsed, |label| comparison.holds(label, *value))
            }
            FilterNode::Duration { name, comparison, nanos } => {
                let parsed = labels.get(name).map(|v| parse_go_duration(v));
                compare_converted(labels, parsed, |label| comparison.holds(label, *nanos))
            }
            FilterNode::Bytes { name, comparison, value } => {
                let parsed = labels.get(name).map(|v| parse_go_bytes(v));
                compare_converted(labels, parsed, |label| comparison.holds(label, *value))
            }
        }
    }
}

/// Loki's rules for converting label filters: a missing label fails the predicate; a label that
/// does not convert passes it but marks the line, unless an earlier error is already there.
fn compare_converted<T>(labels: &mut Labels, parsed: Option<Result<T, String>>, holds: impl Fn(T) -> bool) -> bool {
    match parsed {
        None => false,
        Some(Ok(value)) => holds(value),
        Some(Err(details)) => {
            if !has_error(labels) {
                set_error(labels, LABEL_FILTER_ERROR, Some(details));
            }
            true
        }
    }
}

// ---------------------------------------------------------------------------------------------
// label_format

#[derive(Debug)]
enum LabelFormatOp {
    Rename(String),
    Template(Template),
}

fn compile_label_format(formats: &[logql::LabelFormat]) -> Result<Vec<(String, LabelFormatOp)>, PipelineError> {
    let invalid = |message: String| PipelineError::InvalidStage { stage: "label_format", message };
    let mut compiled: Vec<(String, LabelFormatOp)> = Vec::new();
    for format in formats {
        if format.dst == ERROR_LABEL {
            return Err(invalid(format!("{ERROR_LABEL} cannot be formatted")));
        }
        if !is_valid_label_name(&format.dst) {
            return Err(invalid(format!("invalid label name '{}'", format.dst)));
        }
        // Renaming and rewriting the same label in one stage would depend on order: Loki refuses it.
        if compiled.iter().any(|(dst, _)| *dst == format.dst) {
            return Err(invalid(format!(
                "multiple label name '{}' not allowed in a single format operation",
                format.dst
            )));
        }
        let op = match &format.value {
            LabelFormatValue::Rename(source) => LabelFormatOp::Rename(source.clone()),
            LabelFormatValue::Template(template) => LabelFormatOp::Template(Template::compile(template)?),
            other => return Err(PipelineError::Unsupported(format!("label_format value {other:?}"))),
        };
        compiled.push((format.dst.clone(), op));
    }
    Ok(compiled)
}

fn label_format(formats: &[(String, LabelFormatOp)], labels: &mut Labels, line: &str) {
    // Templates see the labels as they were when the first template ran, not each other's output.
    let mut snapshot: Option<Labels> = None;
    for (dst, op) in formats {
        match op {
            LabelFormatOp::Rename(source) => {
                if source == dst {
                    continue;
                }
                if let Some(value) = labels.remove(source) {
                    labels.insert(dst.clone(), value);
                }
            }
            LabelFormatOp::Template(template) => {
                let data = snapshot.get_or_insert_with(|| labels.clone());
                match template.render(data, line) {
                    Ok(value) => {
                        labels.insert(dst.clone(), value);
                    }
                    Err(details) => set_error(labels, TEMPLATE_ERROR, Some(details)),
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Templates: the subset of Go's text/template that line_format and label_format queries use.

#[derive(Debug)]
struct Template {
    nodes: Vec<TemplateNode>,
}

#[derive(Debug)]
enum TemplateNode {
    Text(String),
    Action(TemplatePipeline),
}

#[derive(Debug)]
struct TemplatePipeline(Vec<Command>);

#[derive(Debug)]
enum Command {
    /// A lone value (`.x`, `"text"`, `5`); only valid as a pipeline's first command.
    Value(Arg),
    /// A function call; in a pipeline the previous command's value is appended as the last argument.
    Call(Function, Vec<Arg>),
}

#[derive(Debug)]
enum Arg {
    Field(String),
    Text(String),
    Int(i64),
    Float(f64),
    /// A function named as an argument is called without arguments, as in Go.
    Call(Function),
    Pipeline(Box<TemplatePipeline>),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Function {
    Line,
    ToLower,
    ToUpper,
    Title,
    TrimSpace,
    /// Go's `strings` argument order: the subject first.
    TrimPrefix,
    TrimSuffix,
    Trim,
    TrimLeft,
    TrimRight,
    Replace,
    /// Sprig's argument order: the subject last, so they read well in pipelines.
    SprigTrimPrefix,
    SprigTrimSuffix,
    SprigTrimAll,
    SprigReplace,
    Trunc,
    Substr,
    Default,
    Printf,
}

enum Arity {
    Exactly(usize),
    AtLeast(usize),
}

impl Function {
    fn lookup(name: &str) -> Result<(Function, Arity), String> {
        use Arity::{AtLeast, Exactly};
        Ok(match name {
            "__line__" => (Function::Line, Exactly(0)),
            "ToLower" | "lower" => (Function::ToLower, Exactly(1)),
            "ToUpper" | "upper" => (Function::ToUpper, Exactly(1)),
            "title" => (Function::Title, Exactly(1)),
            "TrimSpace" | "trim" => (Function::TrimSpace, Exactly(1)),
            "TrimPrefix" => (Function::TrimPrefix, Exactly(2)),
            "TrimSuffix" => (Function::TrimSuffix, Exactly(2)),
            "Trim" => (Function::Trim, Exactly(2)),
            "TrimLeft" => (Function::TrimLeft, Exactly(2)),
            "TrimRight" => (Function::TrimRight, Exactly(2)),
            "Replace" => (Function::Replace, Exactly(4)),
            "trimPrefix" => (Function::SprigTrimPrefix, Exactly(2)),
            "trimSuffix" => (Function::SprigTrimSuffix, Exactly(2)),
            "trimAll" => (Function::SprigTrimAll, Exactly(2)),
            "replace" => (Function::SprigReplace, Exactly(3)),
            "trunc" => (Function::Trunc, Exactly(2)),
            "substr" => (Function::Substr, Exactly(3)),
            "default" => (Function::Default, AtLeast(1)),
            "printf" => (Function::Printf, AtLeast(1)),
            "__timestamp__" => return Err("__timestamp__ is not supported".to_string()),
            other => return Err(format!("function {other:?} not defined or not supported")),
        })
    }

    fn check_arity(name: &str, arity: Arity, given: usize) -> Result<(), String> {
        let ok = match arity {
            Arity::Exactly(n) => given == n,
            Arity::AtLeast(n) => given >= n,
        };
        if ok { Ok(()) } else { Err(format!("wrong number of args for {name}: got {given}")) }
    }

    fn call(self, mut args: Vec<Value>, line: &str) -> Result<Value, String> {
        // Arity was checked when the template compiled; a short list is still an error, not a panic.
        let text = |args: &mut Vec<Value>, index: usize| -> Result<String, String> {
            let slot = args.get_mut(index).ok_or("missing argument")?;
            std::mem::replace(slot, Value::Int(0)).into_text()
        };
        let int = |args: &[Value], index: usize| -> Result<i64, String> {
            args.get(index).ok_or("missing argument")?.as_int()
        };
        Ok(Value::Text(match self {
            Function::Line => line.to_string(),
            Function::ToLower => text(&mut args, 0)?.to_lowercase(),
            Function::ToUpper => text(&mut args, 0)?.to_uppercase(),
            Function::Title => title(&text(&mut args, 0)?),
            Function::TrimSpace => text(&mut args, 0)?.trim().to_string(),
            Function::TrimPrefix => {
                let (subject, prefix) = (text(&mut args, 0)?, text(&mut args, 1)?);
                subject.strip_prefix(prefix.as_str()).unwrap_or(&subject).to_string()
            }
            Function::TrimSuffix => {
                let (subject, suffix) = (text(&mut args, 0)?, text(&mut args, 1)?);
                subject.strip_suffix(suffix.as_str()).unwrap_or(&subject).to_string()
            }
            Function::Trim => {
                let (subject, cutset) = (text(&mut args, 0)?, text(&mut args, 1)?);
                subject.trim_matches(|c| cutset.contains(c)).to_string()
            }
            Function::TrimLeft => {
                let (subject, cutset) = (text(&mut args, 0)?, text(&mut args, 1)?);
                subject.trim_start_matches(|c| cutset.contains(c)).to_string()
            }
            Function::TrimRight => {
                let (subject, cutset) = (text(&mut args, 0)?, text(&mut args, 1)?);
                subject.trim_end_matches(|c| cutset.contains(c)).to_string()
            }
            Function::Replace => {
                let (subject, old, new) = (text(&mut args, 0)?, text(&mut args, 1)?, text(&mut args, 2)?);
                match usize::try_from(int(&args, 3)?) {
                    Ok(count) => subject.replacen(old.as_str(), &new, count),
                    Err(_) => subject.replace(old.as_str(), &new),
                }
            }
            Function::SprigTrimPrefix => {
                let (prefix, subject) = (text(&mut args, 0)?, text(&mut args, 1)?);
                subject.strip_prefix(prefix.as_str()).unwrap_or(&subject).to_string()
            }
            Function::SprigTrimSuffix => {
                let (suffix, subject) = (text(&mut args, 0)?, text(&mut args, 1)?);
                subject.strip_suffix(suffix.as_str()).unwrap_or(&subject).to_string()
            }
            Function::SprigTrimAll => {
                let (cutset, subject) = (text(&mut args, 0)?, text(&mut args, 1)?);
                subject.trim_matches(|c| cutset.contains(c)).to_string()
            }
            Function::SprigReplace => {
                let (old, new, subject) = (text(&mut args, 0)?, text(&mut args, 1)?, text(&mut args, 2)?);
                subject.replace(old.as_str(), &new)
            }
            Function::Trunc => {
                let count = int(&args, 0)?;
                let subject = text(&mut args, 1)?;
                truncate(&subject, count)
            }
            Function::Substr => {
                let (start, end) = (int(&args, 0)?, int(&args, 1)?);
                substring(&text(&mut args, 2)?, start, end)
            }
            Function::Default => {
                let given = args.drain(1..).next();
                let fallback = args.pop();
                return Ok(match (given, fallback) {
                    (Some(given), _) if !given.is_empty() => given,
                    (_, Some(fallback)) => fallback,
                    (Some(given), None) => given,
                    (None, None) => Value::Text(String::new()),
                });
            }
            Function::Printf => {
                let format = text(&mut args, 0)?;
                go_printf(&format, args.get(1..).unwrap_or_default())?
            }
        }))
    }
}

/// A template value. Go's templates are typed: a number where a string is expected is an error.
#[derive(Debug, Clone)]
enum Value {
    Text(String),
    Int(i64),
    Float(f64),
}

impl Value {
    fn type_name(&self) -> &'static str {
        match self {
            Value::Text(_) => "string",
            Value::Int(_) => "int",
            Value::Float(_) => "float64",
        }
    }

    fn render(&self) -> String {
        match self {
            Value::Text(text) => text.clone(),
            Value::Int(n) => n.to_string(),
            Value::Float(f) => go_float(*f),
        }
    }

    fn into_text(self) -> Result<String, String> {
        match self {
            Value::Text(text) => Ok(text),
            other => Err(format!("wrong type for value; expected string; got {}", other.type_name())),
        }
    }

    fn as_int(&self) -> Result<i64, String> {
        match self {
            Value::Int(n) => Ok(*n),
            other => Err(format!("wrong type for value; expected int; got {}", other.type_name())),
        }
    }

    /// Sprig's notion of empty, for `default`.
    fn is_empty(&self) -> bool {
        match self {
            Value::Text(text) => text.is_empty(),
            Value::Int(n) => *n == 0,
            Value::Float(f) => *f == 0.0,
        }
    }
}

/// Go's `%v` for a float64: shortest representation, exponent form outside [1e-4, 1e21).
fn go_float(value: f64) -> String {
    if value.is_nan() {
        return "NaN".to_string();
    }
    if value.is_infinite() {
        return if value > 0.0 { "+Inf".to_string() } else { "-Inf".to_string() };
    }
    let magnitude = value.abs();
    if magnitude == 0.0 || (1e-4..1e21).contains(&magnitude) {
        return value.to_string();
    }
    let formatted = format!("{value:e}");
    match formatted.split_once('e') {
        Some((mantissa, exponent)) => {
            let (sign, digits) = exponent.strip_prefix('-').map_or(("+", exponent), |digits| ("-", digits));
            format!("{mantissa}e{sign}{digits:0>2}")
        }
        None => formatted,
    }
}

fn title(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_word = false;
    for c in text.chars() {
        if !in_word && c.is_alphabetic() {
            out.extend(c.to_uppercase());
        } else {
            out.push(c);
        }
        in_word = c.is_alphanumeric() || c == '\'';
    }
    out
}

/// Loki's `trunc`: the first `count` characters, or the last `-count` when negative.
fn truncate(text: &str, count: i64) -> String {
    let chars: Vec<char> = text.chars().collect();
    let len = chars.len() as i64;
    if count < 0 && len + count > 0 {
        return chars[(len + count) as usize..].iter().collect();
    }
    if count >= 0 && len > count {
        return chars[..count as usize].iter().collect();
    }
    text.to_string()
}

/// Loki's `substr`: characters `[start, end)`, with Loki's handling of out-of-range bounds.
fn substring(text: &str, start: i64, end: i64) -> String {
    let chars: Vec<char> = text.chars().collect();
    let len = chars.len() as i64;
    let end = end.min(len);
    let start = start.min(len);
    if start < 0 {
        return if end < 0 { String::new() } else { chars[..end as usize].iter().collect() };
    }
    if end < 0 {
        return chars[start as usize..].iter().collect();
    }
    if start > end {
        return String::new();
    }
    chars[start as usize..end as usize].iter().collect()
}

/// Go's `fmt.Sprintf` for the verbs templates use (`%s %v %d %q %f %x %%`), with flags, width and
/// precision; a verb that does not fit its argument renders Go's `%!v(type=value)` marker.
fn go_printf(format: &str, args: &[Value]) -> Result<String, String> {
    let mut out = String::new();
    let mut chars = format.chars().peekable();
    let mut next_arg = 0;
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let (mut left, mut zero, mut plus) = (false, false, false);
        while let Some(&flag) = chars.peek() {
            match flag {
                '-' => left = true,
                '0' => zero = true,
                '+' => plus = true,
                ' ' | '#' => {}
                _ => break,
            }
            chars.next();
        }
        let width = read_count(&mut chars).unwrap_or(0);
        let precision = if chars.peek() == Some(&'.') {
            chars.next();
            Some(read_count(&mut chars).unwrap_or(0))
        } else {
            None
        };
        if width > MAX_PRINTF_WIDTH || precision.is_some_and(|p| p > MAX_PRINTF_WIDTH) {
            return Err(format!("printf width or precision above {MAX_PRINTF_WIDTH}"));
        }
        let Some(verb) = chars.next() else {
            out.push_str("%!(NOVERB)");
            break;
        };
        if verb == '%' {
            out.push('%');
            continue;
        }
        let Some(arg) = args.get(next_arg) else {
            out.push_str(&format!("%!{verb}(MISSING)"));
            continue;
        };
        next_arg += 1;
        let numeric = matches!(arg, Value::Int(_) | Value::Float(_));
        let signed = |text: String, negative: bool| if plus && !negative { format!("+{text}") } else { text };
        let body = match (verb, arg) {
            ('s' | 'v', Value::Text(text)) => match precision {
                Some(precision) => text.chars().take(precision).collect(),
                None => text.clone(),
            },
            ('q', Value::Text(text)) => go_quote(text),
            ('x', Value::Text(text)) => text.bytes().map(|b| format!("{b:02x}")).collect(),
            ('X', Value::Text(text)) => text.bytes().map(|b| format!("{b:02X}")).collect(),
            ('v' | 'd', Value::Int(n)) => signed(n.to_string(), *n < 0),
            ('x', Value::Int(n)) => signed(format!("{n:x}"), *n < 0),
            ('X', Value::Int(n)) => signed(format!("{n:X}"), *n < 0),
            ('v', Value::Float(f)) => signed(go_float(*f), *f < 0.0),
            ('f' | 'F', Value::Float(f)) => signed(format!("{:.*}", precision.unwrap_or(6), f), *f < 0.0),
            ('e', Value::Float(f)) => signed(go_float_exp(*f, precision.unwrap_or(6)), *f < 0.0),
            (verb, arg) => format!("%!{verb}({}={})", arg.type_name(), arg.render()),
        };
        let pad = width.saturating_sub(body.chars().count());
        if pad == 0 {
            out.push_str(&body);
        } else if left {
            out.push_str(&body);
            out.extend(std::iter::repeat_n(' ', pad));
        } else if zero && numeric {
            let (sign, digits) = match body.chars().next() {
                Some(sign @ ('-' | '+')) => (Some(sign), &body[1..]),
                _ => (None, body.as_str()),
            };
            out.extend(sign);
            out.extend(std::iter::repeat_n('0', pad));
            out.push_str(digits);
        } else {
            out.extend(std::iter::repeat_n(' ', pad));
            out.push_str(&body);
        }
    }
    if next_arg < args.len() {
        let extra: Vec<String> =
            args[next_arg..].iter().map(|arg| format!("{}={}", arg.type_name(), arg.render())).collect();
        out.push_str(&format!("%!(EXTRA {})", extra.join(", ")));
    }
    Ok(out)
}

/// A printf width or precision; saturating, so a huge one is refused rather than overflowing.
fn read_count(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> Option<usize> {
    let mut number: Option<usize> = None;
    while let Some(digit) = chars.peek().and_then(|c| c.to_digit(10)) {
        number = Some(number.unwrap_or(0).saturating_mul(10).saturating_add(digit as usize));
        chars.next();
    }
    number
}

fn go_float_exp(value: f64, precision: usize) -> String {
    let formatted = format!("{value:.precision$e}");
    match formatted.split_once('e') {
        Some((mantissa, exponent)) => {
            let (sign, digits) = exponent.strip_prefix('-').map_or(("+", exponent), |digits| ("-", digits));
            format!("{mantissa}e{sign}{digits:0>2}")
        }
        None => formatted,
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    Field(String),
    Ident(String),
    Text(String),
    Int(i64),
    Float(f64),
    Pipe,
    Open,
    Close,
}

fn is_go_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\r' | '\n')
}

impl Template {
    fn compile(source: &str) -> Result<Template, PipelineError> {
        Self::parse(source).map_err(|message| PipelineError::InvalidTemplate { template: source.to_string(), message })
    }

    fn parse(source: &str) -> Result<Template, String> {
        let mut nodes = Vec::new();
        let mut pos = 0;
        let mut trim_next_text = false;
        while pos < source.len() {
            let Some(offset) = source[pos..].find("{{") else {
                let mut text = &source[pos..];
                if trim_next_text {
                    text = text.trim_start_matches(is_go_space);
                }
                if !text.is_empty() {
                    nodes.push(TemplateNode::Text(text.to_string()));
                }
                break;
            };
            let mut text = &source[pos..pos + offset];
            if trim_next_text {
                text = text.trim_start_matches(is_go_space);
            }
            let mut action = pos + offset + 2;
            // `{{- ` trims the whitespace before the action.
            if source[action..].starts_with('-') && source[action + 1..].starts_with(is_go_space) {
                text = text.trim_end_matches(is_go_space);
                action += 1;
            }
            if !text.is_empty() {
                nodes.push(TemplateNode::Text(text.to_string()));
            }
            let (tokens, end, trim) = lex_action(source, action)?;
            if let Some(tokens) = tokens {
                let mut index = 0;
                let pipeline = parse_pipeline(&tokens, &mut index, false)?;
                nodes.push(TemplateNode::Action(pipeline));
            }
            pos = end;
            trim_next_text = trim;
        }
        Ok(Template { nodes })
    }

    fn render(&self, labels: &Labels, line: &str) -> Result<String, String> {
        let mut out = String::new();
        for node in &self.nodes {
            match node {
                TemplateNode::Text(text) => out.push_str(text),
                TemplateNode::Action(pipeline) => out.push_str(&pipeline.eval(labels, line)?.render()),
            }
        }
        Ok(out)
    }
}

/// The tokens of the action starting at byte `start` (just after `{{` or `{{-`), where it ends
/// (after `}}`), and whether it trims the whitespace after it (`-}}`). `None` for a comment.
fn lex_action(source: &str, start: usize) -> Result<(Option<Vec<Token>>, usize, bool), String> {
    let mut tokens = Vec::new();
    let mut pos = start;
    let comment_at = pos + source[pos..].len() - source[pos..].trim_start_matches(is_go_space).len();
    if source[comment_at..].starts_with("/*") {
        let close = source[comment_at..].find("*/").ok_or("unclosed comment")?;
        pos = comment_at + close + 2;
        let rest = &source[pos..];
        let after_space = rest.trim_start_matches(is_go_space);
        let skipped = rest.len() - after_space.len();
        if skipped > 0 && after_space.starts_with("-}}") {
            return Ok((None, pos + skipped + 3, true));
        }
        if after_space.starts_with("}}") {
            return Ok((None, pos + skipped + 2, false));
        }
        return Err("comment ends before closing delimiter".to_string());
    }
    loop {
        let rest = &source[pos..];
        let after_space = rest.trim_start_matches(is_go_space);
        let skipped = rest.len() - after_space.len();
        pos += skipped;
        if skipped > 0 && after_space.starts_with("-}}") {
            return Ok((Some(tokens), pos + 3, true));
        }
        if after_space.starts_with("}}") {
            return Ok((Some(tokens), pos + 2, false));
        }
        let Some(c) = after_space.chars().next() else { return Err("unclosed action".to_string()) };
        match c {
            '|' => {
                tokens.push(Token::Pipe);
                pos += 1;
            }
            '(' => {
                tokens.push(Token::Open);
                pos += 1;
            }
            ')' => {
                tokens.push(Token::Close);
                pos += 1;
            }
            '"' => {
                let (text, len) = lex_go_string(after_space)?;
                tokens.push(Token::Text(text));
                pos += len;
            }
            '`' => {
                let close = after_space[1..].find('`').ok_or("unterminated raw string")?;
                tokens.push(Token::Text(after_space[1..=close].to_string()));
                pos += close + 2;
            }
            '.' => {
                let name: String = after_space[1..].chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                if name.is_empty() {
                    return Err("`.` (the whole label map) is not supported; use .label".to_string());
                }
                pos += 1 + name.len();
                if source[pos..].starts_with('.') {
                    return Err(format!("nested field access on .{name} is not supported"));
                }
                tokens.push(Token::Field(name));
            }
            '$' => return Err("template variables are not supported".to_string()),
            c if c.is_ascii_digit()
                || ((c == '-' || c == '+') && after_space[1..].starts_with(|d: char| d.is_ascii_digit())) =>
            {
                let len = 1 + after_space[1..]
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_'))
                    .unwrap_or(after_space.len() - 1);
                let literal = &after_space[..len];
                let token = if let Ok(n) = literal.parse::<i64>() {
                    Token::Int(n)
                } else if let Ok(f) = literal.parse::<f64>() {
                    Token::Float(f)
                } else {
                    return Err(format!("bad number syntax: {literal:?}"));
                };
                tokens.push(token);
                pos += len;
            }
            c if c.is_alphabetic() || c == '_' => {
                let name: String = after_space.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
                pos += name.len();
                if matches!(
                    name.as_str(),
                    "if" | "else"
                        | "end"
                        | "range"
                        | "with"
                        | "define"
                        | "template"
                        | "block"
                        | "break"
                        | "continue"
                        | "nil"
                        | "true"
                        | "false"
                ) {
                    return Err(format!("`{name}` is not supported in templates"));
                }
                tokens.push(Token::Ident(name));
            }
            other => return Err(format!("unexpected {other:?} in action")),
        }
    }
}

/// A Go interpreted string literal at the start of `text`: its value and its length in bytes.
fn lex_go_string(text: &str) -> Result<(String, usize), String> {
    let mut out = String::new();
    let mut chars = text.char_indices().skip(1);
    while let Some((at, c)) = chars.next() {
        match c {
            '"' => return Ok((out, at + 1)),
            '\n' => return Err("newline in string".to_string()),
            '\\' => {
                let Some((_, escape)) = chars.next() else { break };
                match escape {
                    'n' => out.push('\n'),
                    't' => out.push('\t'),
                    'r' => out.push('\r'),
                    'a' => out.push('\u{7}'),
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'v' => out.push('\u{b}'),
                    '\\' => out.push('\\'),
                    '"' => out.push('"'),
                    '\'' => out.push('\''),
                    'x' | 'u' | 'U' => {
                        let digits = match escape {
                            'x' => 2,
                            'u' => 4,
                            _ => 8,
                        };
                        let hex: String = chars.by_ref().take(digits).map(|(_, c)| c).collect();
                        let code = u32::from_str_radix(&hex, 16)
                            .ok()
                            .filter(|_| is_hex(&hex, digits))
                            .ok_or_else(|| format!("invalid \\{escape} escape in string"))?;
                        out.push(char::from_u32(code).ok_or_else(|| format!("invalid code point {code:#x}"))?);
                    }
                    other => return Err(format!("unknown escape sequence \\{other}")),
                }
            }
            c => out.push(c),
        }
    }
    Err("unterminated quoted string".to_string())
}

/// One operand while a command is parsed: identifiers become calls once their position is known.
enum Operand {
    Ident(String),
    Arg(Arg),
}

fn parse_pipeline(tokens: &[Token], index: &mut usize, nested: bool) -> Result<TemplatePipeline, String> {
    let mut commands = Vec::new();
    loop {
        commands.push(parse_command(tokens, index, !commands.is_empty())?);
        match tokens.get(*index) {
            Some(Token::Pipe) => *index += 1,
            Some(Token::Close) if nested => break,
            None if !nested => break,
            None => return Err("unclosed left paren".to_string()),
            Some(token) => return Err(format!("unexpected {token:?} in action")),
        }
    }
    Ok(TemplatePipeline(commands))
}

fn parse_command(tokens: &[Token], index: &mut usize, piped: bool) -> Result<Command, String> {
    let mut operands = Vec::new();
    while let Some(token) = tokens.get(*index) {
        *index += 1;
        operands.push(match token {
            Token::Pipe | Token::Close => {
                *index -= 1;
                break;
            }
            Token::Open => {
                let inner = parse_pipeline(tokens, index, true)?;
                *index += 1;
                Operand::Arg(Arg::Pipeline(Box::new(inner)))
            }
            Token::Field(name) => Operand::Arg(Arg::Field(name.clone())),
            Token::Ident(name) => Operand::Ident(name.clone()),
            Token::Text(text) => Operand::Arg(Arg::Text(text.clone())),
            Token::Int(n) => Operand::Arg(Arg::Int(*n)),
            Token::Float(f) => Operand::Arg(Arg::Float(*f)),
        });
    }
    let mut operands = operands.into_iter();
    let Some(first) = operands.next() else { return Err("missing value for command".to_string()) };
    match first {
        Operand::Ident(name) => {
            let (function, arity) = Function::lookup(&name)?;
            let args: Vec<Arg> = operands
                .map(|operand| match operand {
                    Operand::Arg(arg) => Ok(arg),
                    Operand::Ident(name) => {
                        let (function, arity) = Function::lookup(&name)?;
                        Function::check_arity(&name, arity, 0)?;
                        Ok(Arg::Call(function))
                    }
                })
                .collect::<Result<_, String>>()?;
            Function::check_arity(&name, arity, args.len() + usize::from(piped))?;
            Ok(Command::Call(function, args))
        }
        Operand::Arg(arg) => {
            if operands.next().is_some() {
                return Err("can't give argument to non-function".to_string());
            }
            if piped {
                return Err("non executable command in pipeline stage".to_string());
            }
            Ok(Command::Value(arg))
        }
    }
}

impl TemplatePipeline {
    fn eval(&self, labels: &Labels, line: &str) -> Result<Value, String> {
        let mut previous: Option<Value> = None;
        for command in &self.0 {
            previous = Some(match command {
                Command::Value(arg) => arg.eval(labels, line)?,
                Command::Call(function, args) => {
                    let mut values = args.iter().map(|arg| arg.eval(labels, line)).collect::<Result<Vec<_>, _>>()?;
                    values.extend(previous.take());
                    function.call(values, line)?
                }
            });
        }
        previous.ok_or_else(|| "empty pipeline".to_string())
    }
}

impl Arg {
    fn eval(&self, labels: &Labels, line: &str) -> Result<Value, String> {
        Ok(match self {
            // Loki runs templates with missingkey=zero: a missing label renders as "".
            Arg::Field(name) => Value::Text(labels.get(name).cloned().unwrap_or_default()),
            Arg::Text(text) => Value::Text(text.clone()),
            Arg::Int(n) => Value::Int(*n),
            Arg::Float(f) => Value::Float(*f),
            Arg::Call(function) => function.call(Vec::new(), line)?,
            Arg::Pipeline(pipeline) => pipeline.eval(labels, line)?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Go conversions: strconv.ParseFloat, time.ParseDuration, humanize.ParseBytes.

fn parse_go_float(text: &str) -> Result<f64, String> {
    text.parse::<f64>().map_err(|_| format!("strconv.ParseFloat: parsing {}: invalid syntax", go_quote(text)))
}

/// Go's `time.ParseDuration`, in nanoseconds: `[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+` with units
/// `ns us µs ms s m h`, or a bare `0`.
fn parse_go_duration(text: &str) -> Result<i128, String> {
    let invalid = || format!("time: invalid duration {}", go_quote(text));
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let whole_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let whole = &rest[..whole_len];
        rest = &rest[whole_len..];
        let mut fraction = "";
        if let Some(after_dot) = rest.strip_prefix('.') {
            let fraction_len = after_dot.bytes().take_while(u8::is_ascii_digit).count();
            fraction = &after_dot[..fraction_len];
            rest = &after_dot[fraction_len..];
            if whole.is_empty() && fraction.is_empty() {
                return Err(invalid());
            }
        } else if whole.is_empty() {
            return Err(invalid());
        }
        let unit_len = rest.find(|c: char| c == '.' || c.is_ascii_digit()).unwrap_or(rest.len());
        if unit_len == 0 {
            return Err(format!("time: missing unit in duration {}", go_quote(text)));
        }
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let unit_nanos: i128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(format!("time: unknown unit {} in duration {}", go_quote(unit), go_quote(text))),
        };
        // Longer digit runs overflow Go's int64 nanoseconds anyway.
        if whole.len() > 20 {
            return Err(invalid());
        }
        let whole: i128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| invalid())? };
        let mut value = whole.checked_mul(unit_nanos).ok_or_else(invalid)?;
        if !fraction.is_empty() {
            let fraction: f64 = format!("0.{fraction}").parse().unwrap_or(0.0);
            value += (fraction * unit_nanos as f64) as i128;
        }
        total = total.checked_add(value).filter(|total| *total <= i128::from(i64::MAX)).ok_or_else(invalid)?;
    }
    Ok(if negative { -total } else { total })
}

/// go-humanize's `ParseBytes`: a number (commas allowed) and an optional, case-insensitive unit,
/// decimal (`kB`, `MB`, `k`) or binary (`KiB`, `Mi`).
fn parse_go_bytes(text: &str) -> Result<u64, String> {
    let number_len = text.bytes().take_while(|b| b.is_ascii_digit() || *b == b'.' || *b == b',').count();
    let number: String = text[..number_len].chars().filter(|c| *c != ',').collect();
    let value: f64 =
        number.parse().map_err(|_| format!("strconv.ParseFloat: parsing {}: invalid syntax", go_quote(&number)))?;
    let unit = text[number_len..].trim().to_ascii_lowercase();
    let multiplier: f64 = match unit.as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "ki" | "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mi" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gi" | "gib" => 1024f64.powi(3),
        "t" | "tb" => 1e12,
        "ti" | "tib" => 1024f64.powi(4),
        "p" | "pb" => 1e15,
        "pi" | "pib" => 1024f64.powi(5),
        "e" | "eb" => 1e18,
        "ei" | "eib" => 1024f64.powi(6),
        _ => return Err(format!("unhandled size name: {unit}")),
    };
    let bytes = value * multiplier;
    if bytes >= u64::MAX as f64 {
        return Err(format!("too large: {text}"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(query: &str) -> Result<Pipeline, PipelineError> {
        let parsed = logql::parse_query(query).unwrap_or_else(|e| panic!("{query} does not parse: {e:?}"));
        Pipeline::compile(&parsed.pipeline)
    }

    fn pipeline(query: &str) -> Pipeline {
        compile(query).unwrap_or_else(|e| panic!("{query} does not compile: {e}"))
    }

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Runs `line` through `query` with stream labels `stream`.
    fn run(query: &str, stream: &[(&str, &str)], line: &str) -> (Option<String>, Labels) {
        let mut labels = labels(stream);
        let out = pipeline(query).process(line, &mut labels);
        (out, labels)
    }

    fn kept(query: &str, stream: &[(&str, &str)], line: &str) -> bool {
        run(query, stream, line).0.is_some()
    }

    #[test]
    fn empty_pipeline_passes_lines_through() {
        let p = pipeline(r#"{app="a"}"#);
        assert!(p.is_empty());
        assert!(p.leading_line_filters().is_empty());
        assert!(p.unwrap().is_none());
        let mut l = labels(&[("app", "a")]);
        assert_eq!(p.process("hello", &mut l), Some("hello".to_string()));
        assert_eq!(l, labels(&[("app", "a")]));
    }

    #[test]
    fn chained_line_filters_all_apply_and_are_case_sensitive() {
        let q = r#"{app="a"} |= "error" != "timeout" |~ "code=[45][0-9]{2}" !~ "(?i)debug""#;
        assert!(kept(q, &[], "error code=503 upstream"));
        assert!(!kept(q, &[], "ERROR code=503 upstream"));
        assert!(!kept(q, &[], "error timeout code=503"));
        assert!(!kept(q, &[], "error code=200"));
        assert!(!kept(q, &[], "error code=503 DEBUG"));
        // `|~` searches anywhere in the line: it is not anchored.
        assert!(kept(r#"{a="b"} |~ "b+""#, &[], "aaabbbccc"));
    }

    #[test]
    fn leading_line_filters_stop_at_the_first_other_stage() {
        let p = pipeline(r#"{a="b"} |= "x" !~ "y" | json |= "z""#);
        let leading = p.leading_line_filters();
        assert_eq!(leading.len(), 2);
        assert_eq!(leading[0].value, "x");
        assert_eq!(leading[1].op, LineFilterOp::NotRegex);
        // The trailing filter still applies after the parser.
        assert!(p.process(r#"{"k":"x z"}"#, &mut Labels::new()).is_some());
        assert!(p.process(r#"{"k":"x"}"#, &mut Labels::new()).is_none());
        // The leading ones are applied here too, whatever SQL did.
        assert!(p.process(r#"{"k":"y z"}"#, &mut Labels::new()).is_none());
    }

    #[test]
    fn unsupported_and_invalid_stages_fail_to_compile() {
        assert!(matches!(compile(r#"{a="b"} |= ip("10.0.0.0/8")"#), Err(PipelineError::Unsupported(_))));
        assert!(matches!(compile(r#"{a="b"} | logfmt | addr = ip("10.0.0.1")"#), Err(PipelineError::Unsupported(_))));
        assert!(matches!(compile(r#"{a="b"} | distinct host"#), Err(PipelineError::Unsupported(_))));
        assert!(matches!(compile(r#"{a="b"} |~ "(unclosed""#), Err(PipelineError::InvalidRegex { .. })));
        assert!(matches!(compile(r#"{a="b"} | level =~ "a)(b""#), Err(PipelineError::InvalidRegex { .. })));
        assert!(matches!(compile(r#"{a="b"} | logfmt --bogus"#), Err(PipelineError::InvalidStage { .. })));
        assert!(matches!(compile(r#"{a="b"} | unwrap seconds(x) | x > 1"#), Err(PipelineError::InvalidStage { .. })));
        assert!(matches!(compile(r#"{a="b"} | json a="[unclosed""#), Err(PipelineError::InvalidStage { .. })));
    }

    #[test]
    fn json_flattens_nested_objects_and_skips_arrays() {
        let line = r#"{"level":"info","ok":true,"n":1.50,"none":null,"req":{"method":"GET","headers":{"x-id":"7"}},"servers":["a","b"],"esc":"a\"b\u00e9"}"#;
        let (out, l) = run(r#"{app="a"} | json"#, &[("app", "a")], line);
        assert_eq!(out.as_deref(), Some(line));
        assert_eq!(
            l,
            labels(&[
                ("app", "a"),
                ("level", "info"),
                ("ok", "true"),
                ("n", "1.50"),
                ("none", ""),
                ("req_method", "GET"),
                ("req_headers_x_id", "7"),
                ("esc", "a\"bé"),
            ])
        );
    }

    #[test]
    fn json_sanitizes_names_and_renames_collisions_with_stream_labels() {
        let line = r#"{"app":"inner","1st":"x","a b":{"c.d":"y"},"level":"warn"}"#;
        let (_, l) = run(r#"{app="a"} | json"#, &[("app", "a")], line);
        assert_eq!(
            l,
            labels(&[("app", "a"), ("app_extracted", "inner"), ("_1st", "x"), ("a_b_c_d", "y"), ("level", "warn")])
        );
        // Labels added by an earlier stage are overwritten, not renamed: only stream labels are kept.
        let (_, l) = run(r#"{app="a"} | label_format level="x" | json"#, &[("app", "a")], r#"{"level":"warn"}"#);
        assert_eq!(l["level"], "warn");
    }

    #[test]
    fn json_extraction_expressions_pick_only_the_named_paths() {
        let q = r#"{app="a"} | json method="request.method", first="servers[0]", spaced="[\"key with spaces\"]", deep=".a.b[1].c", obj="request", missing="nope.nope", app"#;
        let line = r#"{"request":{"method":"GET"},"servers":["s1","s2"],"key with spaces":5,"a":{"b":[{},{"c":"deep"}]},"app":"x","other":"o"}"#;
        let (_, l) = run(q, &[("app", "a")], line);
        assert_eq!(
            l,
            labels(&[
                ("app", "a"),
                ("method", "GET"),
                ("first", "s1"),
                ("spaced", "5"),
                ("deep", "deep"),
                ("obj", r#"{"method":"GET"}"#),
                ("missing", ""),
                ("app_extracted", "x"),
            ])
        );
        let (_, l) = run(r#"{a="b"} | json x="y""#, &[], "not json");
        assert_eq!(l[ERROR_LABEL], JSON_ERROR);
    }

    #[test]
    fn invalid_json_is_marked_and_can_be_filtered_or_dropped() {
        let (out, l) = run(r#"{app="a"} | json"#, &[("app", "a")], "plain text line");
        assert_eq!(out.as_deref(), Some("plain text line"));
        assert_eq!(l[ERROR_LABEL], JSON_ERROR);
        assert!(l[ERROR_DETAILS_LABEL].contains("offset 0"), "{l:?}");
        let (_, l) = run(r#"{app="a"} | json"#, &[], r#"["an","array"]"#);
        assert_eq!(l[ERROR_LABEL], JSON_ERROR);
        let (_, l) = run(r#"{app="a"} | json"#, &[], r#"{"a":1,"b":"#);
        assert_eq!(l[ERROR_LABEL], JSON_ERROR);

        assert!(!kept(r#"{app="a"} | json | __error__ = """#, &[], "plain"));
        assert!(kept(r#"{app="a"} | json | __error__ = """#, &[], r#"{"a":1}"#));
        assert!(kept(r#"{app="a"} | json | __error__ != "JSONParserErr""#, &[], r#"{"a":1}"#));

        let (out, l) = run(r#"{app="a"} | json | drop __error__, __error_details__"#, &[("app", "a")], "plain");
        assert_eq!(out.as_deref(), Some("plain"));
        assert_eq!(l, labels(&[("app", "a")]));
    }

    #[test]
    fn deeply_nested_json_is_an_error_not_a_crash() {
        let line = format!("{}{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
        let (out, l) = run(r#"{a="b"} | json"#, &[], &line);
        assert!(out.is_some());
        assert_eq!(l[ERROR_LABEL], JSON_ERROR);
    }

    #[test]
    fn logfmt_reads_bare_and_quoted_values() {
        let line = r#"level=info msg="hello \"world\"\n" path=/api dur=1.5s empty= flag app=x"#;
        let (out, l) = run(r#"{app="a"} | logfmt"#, &[("app", "a")], line);
        assert_eq!(out.as_deref(), Some(line));
        assert_eq!(
            l,
            labels(&[
                ("app", "a"),
                ("level", "info"),
                ("msg", "hello \"world\"\n"),
                ("path", "/api"),
                ("dur", "1.5s"),
                ("app_extracted", "x"),
            ])
        );
        let (_, l) = run(r#"{app="a"} | logfmt --keep-empty"#, &[], "a=1 empty= flag");
        assert_eq!(l, labels(&[("a", "1"), ("empty", ""), ("flag", "")]));
    }

    #[test]
    fn logfmt_reports_malformed_input_only_when_strict() {
        let line = r#"a=1 b="unterminated c=3"#;
        let (out, l) = run(r#"{x="y"} | logfmt"#, &[], line);
        assert!(out.is_some());
        assert_eq!(l, labels(&[("a", "1")]));

        let (_, l) = run(r#"{x="y"} | logfmt"#, &[], "a=1 =bad c=3 d=x=y e=5");
        assert_eq!(l, labels(&[("a", "1"), ("c", "3"), ("e", "5")]));

        let (out, l) = run(r#"{x="y"} | logfmt --strict"#, &[], "a=1 =bad c=3");
        assert!(out.is_some());
        assert_eq!(l["a"], "1");
        assert!(!l.contains_key("c"), "strict parsing stops at the first error");
        assert_eq!(l[ERROR_LABEL], LOGFMT_ERROR);
        assert!(l[ERROR_DETAILS_LABEL].contains("unexpected '='"), "{l:?}");
        assert!(!kept(r#"{x="y"} | logfmt --strict | __error__="""#, &[], "a=1 =bad c=3"));
    }

    #[test]
    fn logfmt_extraction_expressions() {
        let (_, l) =
            run(r#"{app="a"} | logfmt lvl="level", app, missing"#, &[("app", "a")], "level=warn app=x other=1");
        assert_eq!(l, labels(&[("app", "a"), ("lvl", "warn"), ("app_extracted", "x"), ("missing", "")]));
    }

    #[test]
    fn regexp_named_captures_become_labels() {
        let q = r#"{a="b"} | regexp "(?P<method>GET|POST) (?<path>/\\S*)(?: (?P<code>\\d+))?""#;
        let (_, l) = run(q, &[], "10.0.0.1 GET /index.html 200");
        assert_eq!(l, labels(&[("method", "GET"), ("path", "/index.html"), ("code", "200")]));
        let (_, l) = run(q, &[], "POST /x");
        assert_eq!(l, labels(&[("method", "POST"), ("path", "/x"), ("code", "")]));
        // No match: nothing extracted, nothing dropped.
        let (out, l) = run(q, &[], "nothing here");
        assert!(out.is_some());
        assert!(l.is_empty());

        assert!(matches!(compile(r#"{a="b"} | regexp "(\\d+)""#), Err(PipelineError::InvalidStage { .. })));
        assert!(matches!(compile(r#"{a="b"} | regexp "(?P<a.b>x)""#), Err(PipelineError::InvalidStage { .. })));
    }

    #[test]
    fn pattern_captures_between_literals() {
        let q = r#"{job="x"} | pattern "<ip> - <_> [<ts>] \"<method> <path> <_>\" <status> <size>""#;
        let line = r#"10.1.2.3 - - [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326"#;
        let (_, l) = run(q, &[("job", "x")], line);
        assert_eq!(
            l,
            labels(&[
                ("job", "x"),
                ("ip", "10.1.2.3"),
                ("ts", "10/Oct/2000:13:55:36 -0700"),
                ("method", "GET"),
                ("path", "/apache_pb.gif"),
                ("status", "200"),
                ("size", "2326"),
            ])
        );
        // A leading literal must start the line, or nothing is extracted.
        let (out, l) = run(r#"{a="b"} | pattern "level=<level> <_>""#, &[], "msg level=info x");
        assert!(out.is_some());
        assert!(l.is_empty());
        // A missing later literal ends matching; the capture takes the rest of the line (Loki's matcher).
        let (_, l) = run(r#"{a="b"} | pattern "<a> <b>|<c>""#, &[], "one two three");
        assert_eq!(l, labels(&[("a", "one"), ("b", "two three")]));
        // Collisions with stream labels are renamed.
        let (_, l) = run(r#"{a="b"} | pattern "<job> <_>""#, &[("job", "j")], "x y");
        assert_eq!(l, labels(&[("job", "j"), ("job_extracted", "x")]));

        for bad in [r#""<_> text""#, r#""<a><b>""#, r#""<a> <a>""#, r#""no captures""#] {
            let query = format!(r#"{{a="b"}} | pattern {bad}"#);
            assert!(matches!(compile(&query), Err(PipelineError::InvalidStage { .. })), "{query}");
        }
    }

    #[test]
    fn unpack_promotes_string_fields_and_replaces_the_line_with_entry() {
        let line = r#"{"container":"myapp","pod":"pod-3223f","n":5,"_entry":"original log message"}"#;
        let (out, l) = run(r#"{app="a"} | unpack"#, &[("pod", "p")], line);
        assert_eq!(out.as_deref(), Some("original log message"));
        assert_eq!(l, labels(&[("pod", "p"), ("container", "myapp"), ("pod_extracted", "pod-3223f")]));
        let (out, l) = run(r#"{app="a"} | unpack"#, &[], "not json");
        assert_eq!(out.as_deref(), Some("not json"));
        assert_eq!(l[ERROR_LABEL], JSON_ERROR);
        // The unpacked line can be parsed again.
        let (out, l) = run(r#"{app="a"} | unpack | logfmt"#, &[], r#"{"_entry":"a=1 b=2"}"#);
        assert_eq!(out.as_deref(), Some("a=1 b=2"));
        assert_eq!(l, labels(&[("a", "1"), ("b", "2")]));
    }

    #[test]
    fn decolorize_strips_ansi_sequences() {
        let (out, _) = run(r#"{a="b"} | decolorize"#, &[], "\u{1b}[31mred\u{1b}[0m plain \u{1b}[1;32mbold\u{1b}[m");
        assert_eq!(out.as_deref(), Some("red plain bold"));
        let (out, _) = run(r#"{a="b"} | decolorize |= "red plain""#, &[], "\u{1b}[31mred\u{1b}[0m plain");
        assert_eq!(out.as_deref(), Some("red plain"));
    }

    #[test]
    fn numeric_label_filters_convert_values() {
        let q = r#"{a="b"} | logfmt | status >= 500"#;
        assert!(kept(q, &[], "status=503"));
        assert!(kept(q, &[], "status=500.0"));
        assert!(!kept(q, &[], "status=404"));
        // A missing label fails the comparison without an error.
        let (out, l) = run(q, &[], "other=1");
        assert!(out.is_none());
        assert!(!l.contains_key(ERROR_LABEL));
        // A label that does not convert keeps the line, marked.
        let (out, l) = run(q, &[], "status=abc");
        assert!(out.is_some());
        assert_eq!(l[ERROR_LABEL], LABEL_FILTER_ERROR);
        assert_eq!(l[ERROR_DETAILS_LABEL], r#"strconv.ParseFloat: parsing "abc": invalid syntax"#);
        assert!(!kept(r#"{a="b"} | logfmt | status >= 500 | __error__="""#, &[], "status=abc"));
        // An earlier, more useful error is not overwritten.
        let (_, l) = run(r#"{a="b"} | json | status > 1"#, &[("status", "x")], "not json");
        assert_eq!(l[ERROR_LABEL], JSON_ERROR);

        assert!(kept(r#"{a="b"} | logfmt | status == 200"#, &[], "status=200"));
        assert!(kept(r#"{a="b"} | logfmt | status = 200"#, &[], "status=200"));
        assert!(kept(r#"{a="b"} | logfmt | status != 200"#, &[], "status=201"));
        assert!(kept(r#"{a="b"} | logfmt | ratio < 0.5"#, &[], "ratio=0.25"));
        assert!(!kept(r#"{a="b"} | logfmt | ratio <= 0.5"#, &[], "ratio=0.75"));
    }

    #[test]
    fn duration_and_bytes_label_filters() {
        let q = r#"{a="b"} | logfmt | duration > 1s"#;
        assert!(kept(q, &[], "duration=1.5s"));
        assert!(kept(q, &[], "duration=1m"));
        assert!(kept(q, &[], "duration=1h2m"));
        assert!(!kept(q, &[], "duration=250ms"));
        assert!(!kept(q, &[], "duration=1s"));
        assert!(kept(r#"{a="b"} | logfmt | duration >= 1s"#, &[], "duration=1000ms"));
        assert!(kept(r#"{a="b"} | logfmt | duration == 90s"#, &[], "duration=1m30s"));
        let (out, l) = run(q, &[], "duration=5");
        assert!(out.is_some());
        assert_eq!(l[ERROR_LABEL], LABEL_FILTER_ERROR);
        assert_eq!(l[ERROR_DETAILS_LABEL], r#"time: missing unit in duration "5""#);

        let q = r#"{a="b"} | logfmt | size > 10KB"#;
        assert!(kept(q, &[], "size=10.5kB"));
        assert!(kept(q, &[], "size=1MiB"));
        assert!(kept(q, &[], "size=20000"));
        assert!(!kept(q, &[], "size=10KB"));
        assert!(!kept(q, &[], "size=9KiB"));
        let (_, l) = run(q, &[], "size=lots");
        assert_eq!(l[ERROR_LABEL], LABEL_FILTER_ERROR);
    }

    #[test]
    fn and_binds_tighter_than_or_and_commas_mean_and() {
        let q = r#"{a="b"} | logfmt | level="error" or level="warn" and status >= 500"#;
        assert!(kept(q, &[], "level=error status=200"));
        assert!(kept(q, &[], "level=warn status=503"));
        assert!(!kept(q, &[], "level=warn status=200"));
        assert!(!kept(q, &[], "level=info status=503"));

        let q = r#"{a="b"} | logfmt | (level="error" or level="warn") and status >= 500"#;
        assert!(!kept(q, &[], "level=error status=200"));
        assert!(kept(q, &[], "level=error status=500"));

        let q = r#"{a="b"} | logfmt | level="error", status >= 500"#;
        assert!(kept(q, &[], "level=error status=500"));
        assert!(!kept(q, &[], "level=error status=499"));
        assert!(!kept(q, &[], "level=warn status=500"));
    }

    #[test]
    fn string_label_filters_and_anchored_regexes() {
        let q = r#"{a="b"} | logfmt | level =~ "err|warn""#;
        assert!(kept(q, &[], "level=err"));
        assert!(kept(q, &[], "level=warn"));
        assert!(!kept(q, &[], "level=error"), "=~ matches the whole value");
        assert!(!kept(q, &[], "level=xerr"));
        assert!(kept(r#"{a="b"} | logfmt | level !~ "err.*""#, &[], "level=warn"));
        assert!(!kept(r#"{a="b"} | logfmt | level !~ "err.*""#, &[], "level=error"));
        // A missing label compares as "".
        assert!(kept(r#"{a="b"} | logfmt | level = """#, &[], "msg=x"));
        assert!(kept(r#"{a="b"} | logfmt | level != "info""#, &[], "msg=x"));
        assert!(kept(r#"{a="b"} | logfmt | level == "info""#, &[], "level=info"));
        // Stream labels filter too.
        assert!(kept(r#"{a="b"} | app="web""#, &[("app", "web")], "x"));
    }

    #[test]
    fn line_format_renders_templates() {
        let q = r#"{app="a"} | logfmt | line_format "{{.level | ToUpper}} {{ .msg }} [{{.missing}}] {{ToLower .level}} {{ default \"none\" .user }} {{printf \"%05d|%-4s|%q\" 42 .level .msg}} {{__line__ | len3}}""#;
        assert!(matches!(compile(q), Err(PipelineError::InvalidTemplate { .. })), "unknown function");
        let q = r#"{app="a"} | logfmt | line_format "{{.level | ToUpper}} {{ .msg }} [{{.missing}}] {{ToLower .level}} {{ default \"none\" .user }} {{printf \"%05d|%-4s|%q\" 42 .level .msg}}""#;
        let (out, l) = run(q, &[("app", "a")], "level=Info msg=hi");
        assert_eq!(out.as_deref(), Some(r#"INFO hi [] info none 00042|Info|"hi""#));
        assert_eq!(l["level"], "Info", "line_format leaves labels alone");

        let (out, _) = run(r#"{a="b"} | line_format "{{__line__}}!""#, &[], "raw");
        assert_eq!(out.as_deref(), Some("raw!"));
        let (out, _) = run(
            r#"{a="b"} | logfmt | line_format "{{ .a | trunc 3 }}-{{ substr 1 3 .a }}-{{ .a | replace \"c\" \"C\" | title }}""#,
            &[],
            "a=abcdef",
        );
        assert_eq!(out.as_deref(), Some("abc-bc-AbCdef"));
        let (out, _) = run(r#"{a="b"} | line_format "a {{- \" b \" -}} c {{/* comment */}}d""#, &[], "x");
        assert_eq!(out.as_deref(), Some("a b c d"));
        let (out, _) = run(r#"{a="b"} | line_format `{{ upper (printf "%s-%s" .a "x") }}`"#, &[("a", "q")], "x");
        assert_eq!(out.as_deref(), Some("Q-X"));

        // Go reports a type error while rendering: the line is kept as it was, marked.
        let (out, l) = run(r#"{a="b"} | line_format "{{ trunc .a .a }}""#, &[("a", "q")], "orig");
        assert_eq!(out.as_deref(), Some("orig"));
        assert_eq!(l[ERROR_LABEL], TEMPLATE_ERROR);

        for bad in [
            r#""{{ .a ""#,
            r#""{{ if .a }}x{{ end }}""#,
            r#""{{ __timestamp__ }}""#,
            r#""{{ ToUpper }}""#,
            r#""{{ .a .b }}""#,
            r#""{{ .a | .b }}""#,
            r#""{{ . }}""#,
            r#""{{ .a.b }}""#,
            r#""{{ $x }}""#,
            r#""{{}}""#,
        ] {
            let query = format!(r#"{{a="b"}} | line_format {bad}"#);
            assert!(matches!(compile(&query), Err(PipelineError::InvalidTemplate { .. })), "{query}");
        }
    }

    #[test]
    fn label_format_renames_and_templates() {
        let q = r#"{app="a"} | logfmt | label_format dst=src, combo="{{.src}}-{{.other}}", app="{{.app | ToUpper}}""#;
        let (out, l) = run(q, &[("app", "a")], "src=1 other=2");
        assert_eq!(out.as_deref(), Some("src=1 other=2"));
        // Templates see the labels as they were before the stage's own templates, after the renames before them.
        assert_eq!(l, labels(&[("app", "A"), ("dst", "1"), ("combo", "-2"), ("other", "2")]));
        // Renaming a missing label does nothing.
        let (_, l) = run(r#"{a="b"} | label_format x=nope"#, &[("k", "v")], "line");
        assert_eq!(l, labels(&[("k", "v")]));
        let (_, l) = run(r#"{a="b"} | label_format line="{{__line__}}""#, &[], "the line");
        assert_eq!(l, labels(&[("line", "the line")]));

        assert!(matches!(compile(r#"{a="b"} | label_format a=b, a="x""#), Err(PipelineError::InvalidStage { .. })));
        assert!(matches!(compile(r#"{a="b"} | label_format __error__="x""#), Err(PipelineError::InvalidStage { .. })));
        assert!(matches!(
            compile(r#"{a="b"} | label_format a="{{nope .b}}""#),
            Err(PipelineError::InvalidTemplate { .. })
        ));
    }

    #[test]
    fn drop_and_keep_with_matchers() {
        let stream = [("app", "web"), ("env", "prod")];
        let line = "level=info method=GET path=/x";
        let (_, l) = run(r#"{a="b"} | logfmt | drop level, method="GET", path=~"/y.*", env!="dev""#, &stream, line);
        assert_eq!(l, labels(&[("app", "web"), ("path", "/x")]));

        let (_, l) = run(r#"{a="b"} | logfmt | keep app, method="POST", path=~"/x""#, &stream, line);
        assert_eq!(l, labels(&[("app", "web"), ("path", "/x")]));

        // keep never removes the error labels; drop does.
        let (out, l) = run(r#"{a="b"} | json | keep app"#, &stream, "not json");
        assert!(out.is_some());
        assert_eq!(l.keys().collect::<Vec<_>>(), [ERROR_LABEL, ERROR_DETAILS_LABEL, "app"]);
        let (_, l) = run(r#"{a="b"} | json | drop __error__="JSONParserErr""#, &stream, "not json");
        assert!(!l.contains_key(ERROR_LABEL));
        let (_, l) = run(r#"{a="b"} | json | drop __error__="LogfmtParserErr""#, &stream, "not json");
        assert!(l.contains_key(ERROR_LABEL));
    }

    #[test]
    fn unwrap_is_returned_separately_and_marks_errors_for_later_filters() {
        let p = pipeline(r#"{a="b"} | logfmt | unwrap duration(latency)"#);
        let unwrap = p.unwrap().cloned().expect("unwrap");
        assert_eq!(unwrap.label, "latency");
        assert_eq!(unwrap.conversion.as_deref(), Some("duration"));
        let mut l = Labels::new();
        assert!(p.process("latency=250ms", &mut l).is_some());
        assert_eq!(unwrap_value(&l, &unwrap), Ok(0.25));

        // Filters after unwrap see its conversion error, as Loki's post-unwrap filters do.
        let q = r#"{a="b"} | logfmt | unwrap latency | __error__="""#;
        assert!(kept(q, &[], "latency=3"));
        assert!(!kept(q, &[], "latency=slow"));
        let (out, l) = run(r#"{a="b"} | logfmt | unwrap latency | drop x"#, &[], "latency=slow");
        assert!(out.is_some());
        assert_eq!(l[ERROR_LABEL], SAMPLE_EXTRACTION_ERROR);
    }

    #[test]
    fn unwrap_value_converts_numbers_durations_and_bytes() {
        let unwrap = |label: &str, conversion: Option<&str>| Unwrap {
            label: label.to_string(),
            conversion: conversion.map(str::to_string),
        };
        let l =
            labels(&[("n", "42.5"), ("d", "1h2m3.5s"), ("ms", "250ms"), ("b", "10KB"), ("bi", "1.5MiB"), ("bad", "x")]);
        assert_eq!(unwrap_value(&l, &unwrap("n", None)), Ok(42.5));
        assert_eq!(unwrap_value(&l, &unwrap("d", Some("duration"))), Ok(3723.5));
        assert_eq!(unwrap_value(&l, &unwrap("ms", Some("duration_seconds"))), Ok(0.25));
        assert_eq!(unwrap_value(&l, &unwrap("b", Some("bytes"))), Ok(10_000.0));
        assert_eq!(unwrap_value(&l, &unwrap("bi", Some("bytes"))), Ok(1_572_864.0));
        assert_eq!(
            unwrap_value(&l, &unwrap("bad", None)),
            Err(r#"strconv.ParseFloat: parsing "x": invalid syntax"#.to_string())
        );
        assert!(unwrap_value(&l, &unwrap("bad", Some("duration"))).is_err());
        assert!(unwrap_value(&l, &unwrap("bad", Some("bytes"))).is_err());
        assert!(unwrap_value(&l, &unwrap("missing", None)).is_err());
        assert!(unwrap_value(&l, &unwrap("n", Some("weird"))).is_err());
    }

    #[test]
    fn go_duration_and_bytes_syntax() {
        assert_eq!(parse_go_duration("0"), Ok(0));
        assert_eq!(parse_go_duration("1.5s"), Ok(1_500_000_000));
        assert_eq!(parse_go_duration("-1m30s"), Ok(-90_000_000_000));
        assert_eq!(parse_go_duration("+.5h"), Ok(1_800_000_000_000));
        assert_eq!(parse_go_duration("1µs1us1μs1ns"), Ok(3_001));
        for bad in ["", "s", "1", "1d", ".s", "1.2.3s", "-", "9999999999999999999999h"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_go_bytes("42"), Ok(42));
        assert_eq!(parse_go_bytes("1,024 B"), Ok(1024));
        assert_eq!(parse_go_bytes("2k"), Ok(2000));
        assert_eq!(parse_go_bytes("2Ki"), Ok(2048));
        assert_eq!(parse_go_bytes("1.5 gb"), Ok(1_500_000_000));
        for bad in ["", "KB", "-5", "5 parsecs", "99999999EiB"] {
            assert!(parse_go_bytes(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn printf_follows_go_fmt() {
        let text = |s: &str| Value::Text(s.to_string());
        assert_eq!(go_printf("%s=%v", &[text("a"), Value::Int(1)]), Ok("a=1".to_string()));
        assert_eq!(
            go_printf("%6.2f|%+d|%x", &[Value::Float(1.23456), Value::Int(5), text("hi")]),
            Ok("  1.23|+5|6869".into())
        );
        assert_eq!(go_printf("%d", &[text("x")]), Ok("%!d(string=x)".to_string()));
        assert_eq!(go_printf("%s %s", &[text("x")]), Ok("x %!s(MISSING)".to_string()));
        assert_eq!(go_printf("%s", &[text("x"), Value::Int(2)]), Ok("x%!(EXTRA int=2)".to_string()));
        assert_eq!(go_printf("100%%", &[]), Ok("100%".to_string()));
        assert!(go_printf("%99999999s", &[text("x")]).is_err());
        assert_eq!(go_float(1e21), "1e+21");
        assert_eq!(go_float(0.5), "0.5");
    }

    #[test]
    fn odd_input_never_panics() {
        let q = r#"{a="b"} | decolorize | unpack | json | logfmt --strict | regexp "(?P<x>.)" | pattern "<p> <q>" | json z="a[0].b" | label_format l="{{.x}}" | line_format "{{.p}}{{__line__}}" | x != "none" | n > 1 | d > 1s | s > 1KB"#;
        let p = pipeline(q);
        let lines = [
            "",
            " ",
            "{",
            "}",
            "\"",
            "=",
            "a=\"\\",
            "a=\"\\u12\"",
            r#"{"a":"\ud800"}"#,
            r#"{"a":"\ud800\u0041"}"#,
            r#"{"_entry":5}"#,
            "é=ü ü=\"é\"",
            "\u{1b}[",
            "<><>",
            "{\"a\":[1,2,{\"b\":\"c\"}]}",
            "[[[[[[",
            "n=NaN d=-5h s=1e400",
            "\u{0}\u{1}\u{7f}",
        ];
        for line in lines {
            let mut l = labels(&[("n", "x")]);
            let _ = p.process(line, &mut l);
        }
    }
}
