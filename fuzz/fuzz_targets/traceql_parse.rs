//! TraceQL queries (`q` of Tempo's `/api/search` and the tag value endpoints): parsing within
//! the depth limit; a parsed query prints as text that parses back to the same tree; and it
//! evaluates over a small trace (nested spans, an error, a missing parent, events and links)
//! and derives its SQL prefilter without panicking. Errors are answers; a panic or a stack
//! overflow is a bug.
#![no_main]

use std::collections::BTreeMap;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use wake_query::traces::model::{Event, Link, Span, SpanKind, SpanStatus, Trace};
use wake_query::traces::traceql;

fn span(id: &str, parent: Option<&str>, service: &str, name: &str, start_ms: i64, end_ms: i64) -> Span {
    let hex = |s: &str| format!("{s:0>16}");
    Span {
        trace_id: "0".repeat(31) + "1",
        span_id: hex(id),
        parent_span_id: parent.map(hex),
        trace_state: None,
        name: name.into(),
        kind: SpanKind::Server,
        status: SpanStatus::Unset,
        status_message: None,
        start_ns: start_ms * 1_000_000,
        end_ns: end_ms * 1_000_000,
        flags: 0,
        service_name: service.into(),
        resource: BTreeMap::from([("service.name".to_string(), service.to_string())]),
        scope_name: Some("lib".into()),
        scope_version: Some("1.0".into()),
        attributes: BTreeMap::from([
            ("http.status_code".to_string(), "500".to_string()),
            ("flag".to_string(), "true".to_string()),
            ("wait".to_string(), "1.5s".to_string()),
        ]),
        events: Vec::new(),
        links: Vec::new(),
    }
}

static TRACE: LazyLock<Trace> = LazyLock::new(|| {
    let mut failed = span("b", Some("a"), "api", "call", 10, 60);
    failed.status = SpanStatus::Error;
    failed.kind = SpanKind::Client;
    failed.events.push(Event {
        time_ns: 20_000_000,
        name: "exception".into(),
        attributes: serde_json::from_str(r#"{"exception.type":"Timeout","n":3,"x":1.5,"ok":false}"#).unwrap(),
    });
    failed.links.push(Link {
        trace_id: "f".repeat(32),
        span_id: "e".repeat(16),
        trace_state: String::new(),
        attributes: serde_json::from_str(r#"{"reason":"retry"}"#).unwrap(),
    });
    Trace::new(
        "0".repeat(31) + "1",
        vec![
            span("a", None, "web", "GET /", 0, 100),
            failed,
            span("c", Some("b"), "db", "SELECT", 20, 30),
            span("d", Some("b"), "db", "INSERT", 35, 55),
            span("o", Some("zz"), "api", "orphan", 5, 7),
            span("p", Some("p"), "api", "self-parent", 1, 2),
        ],
    )
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(query) = traceql::parse(text, 256) else { return };
    let printed = query.to_string();
    match traceql::parse(&printed, 1024) {
        Ok(again) => assert_eq!(again, query, "{text:?} printed as {printed:?} parses differently"),
        Err(error) => panic!("{text:?} printed as {printed:?}, which does not parse: {error:?}"),
    }
    let trace: &Trace = &TRACE;
    for spanset in traceql::evaluate(&query, trace) {
        assert!(spanset.spans.iter().all(|&i| i < trace.spans.len()), "{text:?}: {spanset:?}");
    }
    let _ = traceql::sql_prefilter(&query);
    let _ = traceql::attribute_names(&query);
});
