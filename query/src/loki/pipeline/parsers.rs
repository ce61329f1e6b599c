//! The parser stages, which extract labels from the line: `json`, `logfmt`, `regexp`, `pattern`
//! and `unpack`.

use std::borrow::Cow;

use logql::LabelExtraction;
use regex::Regex;

use super::json::{Json, JsonReader, PathStep, follow_path, parse_json_path};
use super::labels::{extracted_name, is_valid_label_name, push_sanitized, sanitize_key, set_error};
use super::{JSON_ERROR, LOGFMT_ERROR, Labels, PipelineError, compile_regex, is_hex};

// ---------------------------------------------------------------------------------------------
// json and unpack

#[derive(Debug)]
pub(super) struct JsonStage {
    /// `(label, path)`; empty means "every scalar field, flattened".
    extractions: Vec<(String, Vec<PathStep>)>,
}

impl JsonStage {
    pub(super) fn compile(extractions: &[LabelExtraction]) -> Result<Self, PipelineError> {
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

    pub(super) fn process(&self, line: &str, labels: &mut Labels, stream: &[String]) {
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

pub(super) fn unpack(line: &str, labels: &mut Labels, stream: &[String]) -> Option<String> {
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
pub(super) struct LogfmtStage {
    strict: bool,
    keep_empty: bool,
    /// `(label, key)`; empty means "every pair".
    extractions: Vec<(String, String)>,
}

impl LogfmtStage {
    pub(super) fn compile(stage: &logql::LogfmtStage) -> Result<Self, PipelineError> {
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

    pub(super) fn process(&self, line: &str, labels: &mut Labels, stream: &[String]) {
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
pub(super) struct RegexpStage {
    regex: Regex,
    /// Capture group index and label name of every named group.
    names: Vec<(usize, String)>,
}

impl RegexpStage {
    pub(super) fn compile(pattern: &str) -> Result<Self, PipelineError> {
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

    pub(super) fn process(&self, line: &str, labels: &mut Labels, stream: &[String]) {
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
pub(super) struct Pattern {
    parts: Vec<PatternPart>,
}

impl Pattern {
    pub(super) fn compile(source: &str) -> Result<Self, PipelineError> {
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

    pub(super) fn process(&self, line: &str, labels: &mut Labels, stream: &[String]) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loki::pipeline::tests::{compile, kept, labels, run};
    use crate::loki::pipeline::{ERROR_DETAILS_LABEL, ERROR_LABEL};

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
}
