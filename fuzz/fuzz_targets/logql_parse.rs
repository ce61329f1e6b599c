//! LogQL queries (`query` of Loki's `query_range`, `query` and `tail`): parsing within the depth
//! limit, the extent of a metric query (checked against `max_query_length`), the SQL of each
//! stream selector, and each pipeline compiled and run on sample log lines. A query is user
//! input and so are the lines: none of it may panic or exhaust the stack.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use logql::{LogQuery, MetricQuery};
use wake_query::loki::eval::{self, Parsed};
use wake_query::loki::labels::{STREAM_LABELS, selector_condition};
use wake_query::loki::pipeline::{Labels, Pipeline, unwrap_value};

/// Log lines for every parser: JSON (nested, with an escape, deeper than the parser goes),
/// logfmt, a pattern-like access log, ANSI colours, and lines no parser reads.
const LINES: &[&str] = &[
    r#"{"level":"error","msg":"panic: runtime error","status":500,"latency":"1.5s","size":"10KB","user":{"id":7,"name":"ä\u00e9"},"tags":["a","b"]}"#,
    r#"level=info msg="GET /healthz" status=200 duration=250ms bytes=1.5MiB app=api"#,
    r#"10.0.0.1 - - [23/Nov/2026:00:00:00 +0000] "GET /api/v1/query HTTP/1.1" 200 1234 "-" "curl/8""#,
    "\u{1b}[31mERROR\u{1b}[0m connection refused after 3 retries",
    "",
    "{\"unterminated\": ",
    "level= =x \"= k=\"v",
    "ünïcödé ☃ \u{0} \t tab",
];

/// The labels of a stream as the store reports them, with names that collide with the ones
/// parsers extract (`level`, `app`, `msg`).
fn stream_labels() -> Labels {
    let mut labels: Labels = STREAM_LABELS.iter().map(|(label, _)| (label.to_string(), format!("{label}-1"))).collect();
    for (name, value) in [("level", "info"), ("app", "api"), ("msg", "stream")] {
        labels.insert(name.to_string(), value.to_string());
    }
    labels
}

/// A deeply nested JSON line, beyond the JSON parser's depth limit.
fn deep_json() -> String {
    format!("{}1{}", "[".repeat(4096), "]".repeat(4096))
}

fn run_log_query(query: &LogQuery, unwrap: Option<&logql::Unwrap>) {
    let _ = selector_condition(&query.selector);
    let Ok(pipeline) = Pipeline::compile(&query.pipeline) else { return };
    let _ = pipeline.leading_line_filters();
    let unwrap = unwrap.or(pipeline.unwrap());
    let deep = deep_json();
    for line in LINES.iter().copied().chain([deep.as_str()]) {
        let mut labels = stream_labels();
        let processed = pipeline.process(line, &mut labels);
        if pipeline.is_empty() {
            assert_eq!(processed.as_deref(), Some(line), "an empty pipeline keeps every line as it is");
        }
        if processed.is_some()
            && let Some(unwrap) = unwrap
        {
            let _ = unwrap_value(&labels, unwrap);
        }
    }
}

/// Every range aggregation of a metric query (at most `max_depth` deep: the parse checked it).
fn run_metric_query(query: &MetricQuery) {
    match query {
        MetricQuery::Range(range) => run_log_query(&range.log_query, range.unwrap.as_ref()),
        MetricQuery::Vector(aggregation) => run_metric_query(&aggregation.inner),
        MetricQuery::Binary(binary) => {
            run_metric_query(&binary.left);
            run_metric_query(&binary.right);
        }
        MetricQuery::LabelReplace(replace) => run_metric_query(&replace.inner),
        _ => {}
    }
}

fuzz_target!(init: common::tolerate_parser_panics(), |data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    common::set_input(data);
    match eval::parse(text, 256) {
        Ok(Parsed::Log(query)) => run_log_query(&query, None),
        Ok(Parsed::Metric(metric)) => {
            let (range, offset) = eval::extent(&metric);
            assert!(range >= 0 && offset >= 0, "negative extent ({range}, {offset})");
            run_metric_query(&metric);
        }
        Err(_) => {}
    }
});
