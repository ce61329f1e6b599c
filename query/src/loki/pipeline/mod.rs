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
//!
//! The stages are split by responsibility:
//!
//! - `filters`: line filters and label filters;
//! - `parsers`: the `json`, `logfmt`, `regexp`, `pattern` and `unpack` stages;
//! - `json`: the JSON reader and extraction paths behind `json` and `unpack`;
//! - `formatters`: `label_format` and `decolorize` (`line_format` is a template run in place);
//! - `template`: the subset of Go's `text/template` that `line_format` and `label_format` render;
//! - `labels`: extracted label names, error marks, and the matchers of `drop` and `keep`;
//! - `convert`: Go's conversions of label values, for label filters and `unwrap`.

mod convert;
mod filters;
mod formatters;
mod json;
mod labels;
mod parsers;
mod template;

use std::borrow::Cow;
use std::collections::BTreeMap;

use logql::{LineFilter, PipelineStage, Unwrap};
use regex::Regex;

use filters::{FilterNode, LineFilterStage};
use formatters::{ANSI_PATTERN, LabelFormatOp, compile_label_format, label_format};
use labels::{NamedMatcher, set_error};
use parsers::{JsonStage, LogfmtStage, Pattern, RegexpStage, unpack};
use template::Template;

pub use convert::unwrap_value;

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

// ---------------------------------------------------------------------------------------------
// Shared helpers

fn compile_regex(pattern: &str) -> Result<Regex, PipelineError> {
    Regex::new(pattern)
        .map_err(|error| PipelineError::InvalidRegex { pattern: pattern.to_string(), message: error.to_string() })
}

/// `digits` hex digits exactly (`from_str_radix` alone would also take a sign).
fn is_hex(text: &str, digits: usize) -> bool {
    text.len() == digits && text.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use logql::LineFilterOp;

    use super::*;

    pub(super) fn compile(query: &str) -> Result<Pipeline, PipelineError> {
        let parsed = logql::parse_query(query).unwrap_or_else(|e| panic!("{query} does not parse: {e:?}"));
        Pipeline::compile(&parsed.pipeline)
    }

    pub(super) fn pipeline(query: &str) -> Pipeline {
        compile(query).unwrap_or_else(|e| panic!("{query} does not compile: {e}"))
    }

    pub(super) fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    /// Runs `line` through `query` with stream labels `stream`.
    pub(super) fn run(query: &str, stream: &[(&str, &str)], line: &str) -> (Option<String>, Labels) {
        let mut labels = labels(stream);
        let out = pipeline(query).process(line, &mut labels);
        (out, labels)
    }

    pub(super) fn kept(query: &str, stream: &[(&str, &str)], line: &str) -> bool {
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
