//! Evaluator conformance: queries over three fixed traces, with the results Tempo's
//! documentation describes (worked out from the docs, not from this implementation).
//!
//! Trace 1 (complete, id ...abcd):      Trace 2 (root missing):     Trace 3 (siblings):
//!   a  web   "GET /"    server 0-100     p api "orphan"  (parent zz)   s  gw "root"
//!   ├─ b api "call api" client 10-60 ERR └─ q db "SELECT"              ├─ s1 "work" n=1
//!   │  ├─ c db "SELECT" client 20-30     r api "orphan2" (parent yy)   ├─ s2 "work" n=2 ERR
//!   │  └─ d db "INSERT" internal 35-55 OK                              │  └─ s21 "leaf"
//!   └─ e cache "GET cache" client 65-70                                └─ s3 "work" n=3

use serde_json::json;

use super::super::parser::parse;
use super::super::value::Value;
use super::*;
use crate::traces::model::tests::span;
use crate::traces::model::{Event, Link, Span, SpanKind, SpanStatus, Trace};

fn with(mut s: Span, attrs: &[(&str, &str)]) -> Span {
    for (k, v) in attrs {
        s.attributes.insert(k.to_string(), v.to_string());
    }
    s
}

fn env(mut s: Span, value: &str) -> Span {
    s.resource.insert("deployment.environment".into(), value.into());
    s
}

const TRACE1_ID: &str = "0000000000000000000000000000abcd";

fn trace1() -> Trace {
    let mut a = env(
        with(
            span("a", None, "web", "GET /", 0, 100),
            &[("http.status_code", "500"), ("http.method", "GET"), ("http.url", "/api/orders")],
        ),
        "production",
    );
    a.kind = SpanKind::Server;
    a.scope_name = Some("otel-http".into());
    a.scope_version = Some("1.2.0".into());
    a.resource.insert("k8s.namespace.name".into(), "shop".into());
    let mut b = env(
        with(
            span("b", Some("a"), "api", "call api", 10, 60),
            &[("http.status_code", "503"), ("http.method", "POST"), ("retry", "true"), ("ratio", "0.75")],
        ),
        "production",
    );
    b.kind = SpanKind::Client;
    b.status = SpanStatus::Error;
    b.status_message = Some("boom".into());
    let event_attrs = json!({"exception.message": "something went wrong", "code": 42, "tags": ["x", "y"]});
    b.events.push(Event {
        time_ns: 20_000_000,
        name: "exception".into(),
        attributes: event_attrs.as_object().cloned().unwrap_or_default(),
    });
    b.events.push(Event { time_ns: 12_000_000, name: "retry".into(), attributes: Default::default() });
    let mut c = env(
        with(span("c", Some("b"), "db", "SELECT", 20, 30), &[("db.system", "postgresql"), ("rows", "12")]),
        "production",
    );
    c.kind = SpanKind::Client;
    c.links.push(Link {
        trace_id: "11112222333344445555666677778888".into(),
        span_id: "1111222233334444".into(),
        trace_state: String::new(),
        attributes: json!({"opentracing.ref_type": "child_of"}).as_object().cloned().unwrap_or_default(),
    });
    let mut d = env(
        with(
            span("d", Some("b"), "db", "INSERT", 35, 55),
            &[("db.system", "mysql"), ("rows", "abc"), ("http.status_code", "200")],
        ),
        "production",
    );
    d.status = SpanStatus::Ok;
    let mut e = env(
        with(span("e", Some("a"), "cache", "GET cache", 65, 70), &[("cache.hit", "false"), ("duration_text", "1.5s")]),
        "staging",
    );
    e.kind = SpanKind::Client;
    let spans = vec![e, c, a, d, b];
    Trace::new(
        TRACE1_ID.into(),
        spans
            .into_iter()
            .map(|mut s| {
                s.trace_id = TRACE1_ID.into();
                s
            })
            .collect(),
    )
}

fn trace2() -> Trace {
    let mut p = span("p", Some("zz"), "api", "orphan", 0, 10);
    p.status = SpanStatus::Error;
    let q = span("q", Some("p"), "db", "SELECT", 2, 5);
    let r = span("r", Some("yy"), "api", "orphan2", 20, 30);
    Trace::new("2".repeat(32), vec![p, q, r])
}

fn trace3() -> Trace {
    let s = span("s", None, "gw", "root", 0, 50);
    let s1 = with(span("s1", Some("s"), "w", "work", 5, 15), &[("n", "1")]);
    let mut s2 = with(span("s2", Some("s"), "w", "work", 10, 30), &[("n", "2")]);
    s2.status = SpanStatus::Error;
    let s21 = span("s21", Some("s2"), "w", "leaf", 12, 14);
    let s3 = with(span("s3", Some("s"), "w", "work", 20, 50), &[("n", "3")]);
    Trace::new("3".repeat(32), vec![s3, s21, s2, s1, s])
}

fn short_name(trace: &Trace, i: usize) -> String {
    let bytes = hex::decode(trace.spans[i].span_id.trim_start_matches('0')).unwrap_or_default();
    String::from_utf8(bytes).unwrap_or_default()
}

fn run(q: &str, trace: &Trace) -> Vec<SpanSet> {
    let query = parse(q, 64).unwrap_or_else(|e| panic!("{q}: {e}"));
    evaluate(&query, trace)
}

fn names(q: &str, trace: &Trace) -> Vec<Vec<String>> {
    let mut sets: Vec<Vec<String>> =
        run(q, trace).iter().map(|s| s.spans.iter().map(|&i| short_name(trace, i)).collect()).collect();
    sets.sort();
    sets
}

/// (query, trace number, expected spansets as span names in start order; spansets sorted).
const CASES: &[(&str, usize, &[&[&str]])] = &[
    // --- filters, intrinsics -------------------------------------------------------------
    ("{}", 1, &[&["a", "b", "c", "d", "e"]]),
    ("{ true }", 1, &[&["a", "b", "c", "d", "e"]]),
    ("{ false }", 1, &[]),
    (r#"{ name = "SELECT" }"#, 1, &[&["c"]]),
    (r#"{ span:name = "SELECT" }"#, 2, &[&["q"]]),
    ("{ status = error }", 1, &[&["b"]]),
    ("{ status != error }", 1, &[&["a", "c", "d", "e"]]),
    ("{ span:status = ok }", 1, &[&["d"]]),
    ("{ kind = client }", 1, &[&["b", "c", "e"]]),
    ("{ kind != client && kind != server }", 1, &[&["d"]]),
    ("{ duration > 15ms }", 1, &[&["a", "b", "d"]]),
    ("{ span:duration <= 10ms }", 1, &[&["c", "e"]]),
    (r#"{ statusMessage = "boom" }"#, 1, &[&["b"]]),
    ("{ span:childCount = 0 }", 1, &[&["c", "d", "e"]]),
    ("{ childCount = 2 }", 1, &[&["a", "b"]]),
    ("{ nestedSetParent < 0 }", 1, &[&["a"]]),
    ("{ nestedSetParent < 0 }", 2, &[]),
    ("{ nestedSetParent < 0 }", 3, &[&["s"]]),
    ("{ nestedSetParent >= 0 }", 2, &[&["p", "q", "r"]]),
    ("{ nestedSetLeft < nestedSetRight }", 3, &[&["s", "s1", "s2", "s21", "s3"]]),
    (r#"{ rootName = "GET /" }"#, 1, &[&["a", "b", "c", "d", "e"]]),
    (r#"{ rootName = "GET /" }"#, 2, &[]),
    ("{ rootServiceName != nil }", 2, &[]),
    (r#"{ trace:rootService = "web" && kind = server }"#, 1, &[&["a"]]),
    ("{ traceDuration > 90ms }", 1, &[&["a", "b", "c", "d", "e"]]),
    ("{ trace:duration < 50ms }", 1, &[]),
    (r#"{ trace:id = "abcd" }"#, 1, &[&["a", "b", "c", "d", "e"]]),
    (r#"{ trace:id = "0000000000000000000000000000abcd" }"#, 1, &[&["a", "b", "c", "d", "e"]]),
    (r#"{ trace:id != "abcd" }"#, 1, &[]),
    (r#"{ span:id = "0000000000000062" }"#, 1, &[&["b"]]),
    (r#"{ span:parentID = "0000000000000061" }"#, 1, &[&["b", "e"]]),
    (r#"{ instrumentation:name = "otel-http" && instrumentation:version = "1.2.0" }"#, 1, &[&["a"]]),
    (r#"{ instrumentation:name != "x" }"#, 1, &[&["a"]]),
    // --- attributes and the typing rule ----------------------------------------------------
    ("{ span.http.status_code >= 500 }", 1, &[&["a", "b"]]),
    (r#"{ span.http.status_code = "500" }"#, 1, &[&["a"]]),
    (r#"{ span.http.status_code > "3" }"#, 1, &[&["a", "b"]]),
    ("{ span.rows > 5 }", 1, &[&["c"]]),
    ("{ span.rows != 5 }", 1, &[&["c"]]),
    (r#"{ span.rows = "abc" }"#, 1, &[&["d"]]),
    ("{ span.http.method = 1 }", 1, &[]),
    ("{ span.http.method != 1 }", 1, &[]),
    ("{ span.retry = true }", 1, &[&["b"]]),
    ("{ span.retry }", 1, &[&["b"]]),
    ("{ span.cache.hit != true }", 1, &[&["e"]]),
    ("{ !span.cache.hit }", 1, &[&["e"]]),
    ("{ span.http.method = true }", 1, &[]),
    ("{ span.ratio > 0.5 && span.ratio < 1 }", 1, &[&["b"]]),
    ("{ span.duration_text > 1s }", 1, &[&["e"]]),
    ("{ span.rows > 1s }", 1, &[]),
    ("{ span.http.method = ok }", 1, &[]),
    ("{ span.db.system = nil }", 1, &[&["a", "b", "e"]]),
    ("{ span.db.system != nil }", 1, &[&["c", "d"]]),
    (r#"{ span.missing != "x" }"#, 1, &[]),
    (r#"{ span.missing !~ ".*" }"#, 1, &[]),
    (r#"{ resource.service.name = "api" }"#, 1, &[&["b"]]),
    (r#"{ resource.deployment.environment = "production" }"#, 1, &[&["a", "b", "c", "d"]]),
    (r#"{ resource.http.method = "GET" }"#, 1, &[]),
    (r#"{ span.service.name = "web" }"#, 1, &[]),
    (r#"{ .service.name = "db" }"#, 1, &[&["c", "d"]]),
    (r#"{ .http.method = "GET" }"#, 1, &[&["a"]]),
    (r#"{ .deployment.environment = "staging" }"#, 1, &[&["e"]]),
    (r#"{ resource.k8s.namespace.name = "shop" }"#, 1, &[&["a"]]),
    (r#"{ instrumentation.anything = "x" }"#, 1, &[]),
    (r#"{ instrumentation.name = "otel-http" && instrumentation.version =~ "1\\..*" }"#, 1, &[&["a"]]),
    // --- regexes are anchored ---------------------------------------------------------------
    (r#"{ name =~ "GET" }"#, 1, &[]),
    (r#"{ name =~ "GET.*" }"#, 1, &[&["a", "e"]]),
    (r#"{ name =~ ".*cache" }"#, 1, &[&["e"]]),
    (r#"{ name !~ "GET.*" }"#, 1, &[&["b", "c", "d"]]),
    (r#"{ span.db.system =~ "postgresql|mysql" }"#, 1, &[&["c", "d"]]),
    (r#"{ span.http.status_code =~ "5.." }"#, 1, &[&["a", "b"]]),
    // --- events and links ---------------------------------------------------------------------
    (r#"{ event:name = "exception" }"#, 1, &[&["b"]]),
    (r#"{ event.exception.message =~ ".*wrong.*" }"#, 1, &[&["b"]]),
    ("{ event.code = 42 }", 1, &[&["b"]]),
    (r#"{ event.code = "42" }"#, 1, &[]),
    (r#"{ event:name = "exception" && event.code = 42 }"#, 1, &[&["b"]]),
    (r#"{ event:name = "retry" && event.code = 42 }"#, 1, &[]),
    ("{ event:timeSinceStart > 5ms }", 1, &[&["b"]]),
    ("{ event.exception.message = nil }", 1, &[&["a", "b", "c", "d", "e"]]),
    ("{ event.exception.message != nil }", 1, &[&["b"]]),
    (r#"{ event.tags = "y" }"#, 1, &[&["b"]]),
    (r#"{ event.tags != "y" }"#, 1, &[]),
    (r#"{ link.opentracing.ref_type = "child_of" }"#, 1, &[&["c"]]),
    (r#"{ link:spanID = "1111222233334444" && link:traceID =~ "1111.*" }"#, 1, &[&["c"]]),
    // --- arithmetic ------------------------------------------------------------------------
    ("{ span.http.status_code - 3 = 500 }", 1, &[&["b"]]),
    ("{ duration * 2 > 150ms }", 1, &[&["a"]]),
    ("{ span.rows / 0 > 1 }", 1, &[]),
    ("{ span.rows / 0 = nil }", 1, &[&["a", "b", "c", "d", "e"]]),
    ("{ span.rows % 5 = 2 }", 1, &[&["c"]]),
    ("{ 2 ^ span.rows > 4000 }", 1, &[&["c"]]),
    ("{ -span.http.status_code < -501 }", 1, &[&["b"]]),
    ("{ span.ratio * 4 = 3 }", 1, &[&["b"]]),
    ("{ span.http.status_code > 10 * 50 }", 1, &[&["b"]]),
    // --- && and || inside filters ------------------------------------------------------------
    (r#"{ resource.service.name = "db" && span.db.system = "mysql" }"#, 1, &[&["d"]]),
    (r#"{ name = "SELECT" || status = error }"#, 1, &[&["b", "c"]]),
    (r#"{ span.missing = 1 || name = "SELECT" }"#, 1, &[&["c"]]),
    (r#"{ !(name = "SELECT") }"#, 1, &[&["a", "b", "d", "e"]]),
    // --- && and || between spansets ----------------------------------------------------------
    (r#"{ name = "SELECT" } && { status = error }"#, 1, &[&["b", "c"]]),
    (r#"{ name = "SELECT" } && { name = "nope" }"#, 1, &[]),
    (r#"{ name = "SELECT" } || { name = "nope" }"#, 1, &[&["c"]]),
    (r#"{ name = "SELECT" } || { status = error }"#, 1, &[&["b", "c"]]),
    (r#"{ name = "nope" } || { name = "nope2" }"#, 1, &[]),
    // --- structural operators ------------------------------------------------------------------
    (r#"{ resource.service.name = "api" } > { }"#, 1, &[&["c", "d"]]),
    (r#"{ } > { resource.service.name = "api" }"#, 1, &[&["b"]]),
    (r#"{ name = "SELECT" } < { }"#, 1, &[&["b"]]),
    (r#"{ resource.service.name = "web" } >> { status = error }"#, 1, &[&["b"]]),
    (r#"{ resource.service.name = "web" } >> { }"#, 1, &[&["b", "c", "d", "e"]]),
    (r#"{ name = "SELECT" } << { }"#, 1, &[&["a", "b"]]),
    (r#"{ name = "SELECT" } ~ { }"#, 1, &[&["d"]]),
    (r#"{ } ~ { resource.service.name = "db" }"#, 1, &[&["c", "d"]]),
    (r#"{ name = "SELECT" } ~ { name = "SELECT" }"#, 1, &[]),
    ("{ } !< { }", 1, &[&["c", "d", "e"]]),
    ("{ status = error } !< { status = error }", 1, &[&["b"]]),
    ("{ } !> { }", 1, &[&["a"]]),
    (r#"{ resource.service.name = "api" } !> { resource.service.name = "db" }"#, 1, &[]),
    (r#"{ name = "SELECT" } !~ { resource.service.name = "db" }"#, 1, &[&["c"]]),
    (r#"{ name = "SELECT" } !>> { }"#, 1, &[&["a", "b", "c", "d", "e"]]),
    (r#"{ name = "SELECT" } !<< { }"#, 1, &[&["c", "d", "e"]]),
    (r#"{ name = "nope" } !> { name = "SELECT" }"#, 1, &[&["c"]]),
    (r#"{ name = "nope" } > { }"#, 1, &[]),
    (r#"{ resource.service.name = "api" } &> { }"#, 1, &[&["b", "c", "d"]]),
    (r#"{ name = "SELECT" } &< { }"#, 1, &[&["b", "c"]]),
    (r#"{ resource.service.name = "web" } &>> { status = error }"#, 1, &[&["a", "b"]]),
    (r#"{ name = "SELECT" } &<< { }"#, 1, &[&["a", "b", "c"]]),
    (r#"{ name = "SELECT" } &~ { }"#, 1, &[&["c", "d"]]),
    (r#"{ name = "nope" } &> { }"#, 1, &[]),
    (r#"{ resource.service.name = "web" } > { } > { }"#, 1, &[&["c", "d"]]),
    (r#"{ name = "GET /" } > ({ status = error } > { })"#, 1, &[]),
    (r#"{ name = "SELECT" } && { } !< { }"#, 1, &[&["c", "d", "e"]]),
    (r#"({ name = "SELECT" } || { name = "INSERT" }) < { }"#, 1, &[&["b"]]),
    ("{ } > { }", 2, &[&["q"]]),
    ("{ } !> { }", 2, &[&["p", "r"]]),
    (r#"{ name = "orphan" } ~ { name = "orphan2" }"#, 2, &[]),
    (r#"{ } >> { name = "SELECT" }"#, 2, &[&["q"]]),
    (r#"{ name = "SELECT" } << { }"#, 2, &[&["p"]]),
    ("{ span.n = 1 } ~ { }", 3, &[&["s2", "s3"]]),
    ("{ } ~ { }", 3, &[&["s1", "s2", "s3"]]),
    ("{ status = error } &~ { span.n = 3 }", 3, &[&["s2", "s3"]]),
    (r#"{ name = "work" } !~ { }"#, 3, &[&["s", "s21"]]),
    (r#"{ name = "root" } >> { name = "leaf" }"#, 3, &[&["s21"]]),
    (r#"{ name = "leaf" } << { name = "work" }"#, 3, &[&["s2"]]),
    // --- pipelines -----------------------------------------------------------------------------
    ("{ kind = client } | count() > 2", 1, &[&["b", "c", "e"]]),
    ("{ kind = client } | count() > 3", 1, &[]),
    ("count() > 4", 1, &[&["a", "b", "c", "d", "e"]]),
    ("{ } | count() + 1 > 5", 1, &[&["a", "b", "c", "d", "e"]]),
    ("{ } | by(resource.service.name)", 1, &[&["a"], &["b"], &["c", "d"], &["e"]]),
    ("{ } | by(resource.service.name) | count() > 1", 1, &[&["c", "d"]]),
    ("{ status = error } | by(resource.service.name) | count() > 1", 1, &[]),
    ("{ } | by(span.db.system)", 1, &[&["a", "b", "e"], &["c"], &["d"]]),
    ("{ } | by(resource.service.name) | { kind = client }", 1, &[&["b"], &["c"], &["e"]]),
    (r#"{ } | by(resource.service.name) | { kind = client } | { name = "SELECT" }"#, 1, &[&["c"]]),
    ("{ } | avg(duration) > 30ms", 1, &[&["a", "b", "c", "d", "e"]]),
    ("{ } | by(resource.service.name) | avg(duration) >= 15ms", 1, &[&["a"], &["b"], &["c", "d"]]),
    ("{ } | by(resource.service.name) | coalesce()", 1, &[&["a", "b", "c", "d", "e"]]),
    (r#"{ kind = client } | count() = 3 | { name = "SELECT" }"#, 1, &[&["c"]]),
    (r#"({ name = "SELECT" } | by(span.db.system)) && { status = error }"#, 1, &[&["b", "c"]]),
    (r#"{ resource.service.name = "web" } >> { } | { kind = client }"#, 1, &[&["b", "c", "e"]]),
    (r#"{ name = "work" } | max(span.n) = 3"#, 3, &[&["s1", "s2", "s3"]]),
    (r#"{ name = "work" } | avg(span.n) = 2"#, 3, &[&["s1", "s2", "s3"]]),
    (r#"{ name = "work" } | by(status) | count() = 2"#, 3, &[&["s1", "s3"]]),
    ("{ } | rate()", 1, &[]),
];

#[test]
fn conformance_cases() {
    assert!(CASES.len() >= 60);
    let traces = [trace1(), trace2(), trace3()];
    let mut failures = Vec::new();
    for (q, t, want) in CASES {
        let got = names(q, &traces[t - 1]);
        let want: Vec<Vec<String>> = want.iter().map(|s| s.iter().map(|n| n.to_string()).collect()).collect();
        if got != want {
            failures.push(format!("{q} on trace {t}: got {got:?}, want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}

fn attributes(q: &str, trace: &Trace) -> Vec<Vec<(String, Value)>> {
    let mut sets: Vec<Vec<(String, Value)>> = run(q, trace).into_iter().map(|s| s.attributes).collect();
    sets.sort_by_key(|a| format!("{a:?}"));
    sets
}

fn attr(name: &str, v: Value) -> (String, Value) {
    (name.to_string(), v)
}

#[test]
fn grouping_and_aggregates_record_their_values() {
    let t = trace1();
    assert_eq!(attributes("{ kind = client } | count() > 2", &t), vec![vec![attr("count()", Value::Int(3))]]);
    assert_eq!(
        attributes("{ } | by(resource.service.name) | count() > 1", &t),
        vec![vec![attr("by(resource.service.name)", Value::Str("db".into())), attr("count()", Value::Int(2)),]]
    );
    assert_eq!(
        attributes("{ } | by(span.db.system)", &t),
        vec![
            vec![attr("by(span.db.system)", Value::Nil)],
            vec![attr("by(span.db.system)", Value::Str("mysql".into()))],
            vec![attr("by(span.db.system)", Value::Str("postgresql".into()))],
        ]
    );
    // avg over durations stays a duration: (100 + 50 + 10 + 20 + 5) / 5 ms.
    assert_eq!(
        attributes("{ } | avg(duration) > 30ms", &t),
        vec![vec![attr("avg(duration)", Value::Duration(37_000_000))]]
    );
    // Texts that are not numbers (d's rows "abc") are left out; missing ones too.
    assert_eq!(attributes("{ } | max(span.rows) = 12", &t), vec![vec![attr("max(span.rows)", Value::Int(12))]]);
    assert_eq!(
        attributes("{ } | sum(span.http.status_code) = 1203", &t),
        vec![vec![attr("sum(span.http.status_code)", Value::Int(1203))]]
    );
    assert_eq!(
        attributes("{ } | avg(span.http.status_code) > 400", &t),
        vec![vec![attr("avg(span.http.status_code)", Value::Float(401.0))]]
    );
    assert_eq!(
        attributes("{ } | min(duration) < 6ms", &t),
        vec![vec![attr("min(duration)", Value::Duration(5_000_000))]]
    );
    // No span has a value: the spanset is dropped, as in Tempo.
    assert!(attributes("{ } | avg(span.missing) > 0", &t).is_empty());
    assert!(attributes("{ } | by(resource.service.name) | coalesce()", &t) == vec![Vec::new()]);
    let t3 = trace3();
    assert_eq!(
        attributes(r#"{ name = "work" } | avg(span.n) = 2"#, &t3),
        vec![vec![attr("avg(span.n)", Value::Float(2.0))]]
    );
    assert_eq!(
        attributes("{ name = \"work\" } | by(status) | count() = 2", &t3),
        vec![vec![attr("by(status)", Value::Status(SpanStatus::Unset)), attr("count()", Value::Int(2)),]]
    );
}

#[test]
fn select_records_fields_per_span() {
    let t = trace1();
    let sets = run(r#"{ resource.service.name = "db" } | select(span.db.system, duration, span.missing)"#, &t);
    assert_eq!(sets.len(), 1);
    let named: Vec<(String, Vec<(String, Value)>)> =
        sets[0].selected.iter().map(|(i, fields)| (short_name(&t, *i), fields.clone())).collect();
    assert_eq!(
        named,
        vec![
            (
                "c".to_string(),
                vec![
                    attr("span.db.system", Value::Str("postgresql".into())),
                    attr("duration", Value::Duration(10_000_000))
                ]
            ),
            (
                "d".to_string(),
                vec![attr("span.db.system", Value::Str("mysql".into())), attr("duration", Value::Duration(20_000_000))]
            ),
        ]
    );
    // Selections follow the spans through later stages and are dropped with them.
    let sets = run(r#"{ } | select(name) | { kind = client } | { resource.service.name = "db" }"#, &t);
    assert_eq!(sets[0].selected.len(), 1);
    assert_eq!(sets[0].selected[0].1, vec![attr("name", Value::Str("SELECT".into()))]);
    let sets = run(r#"{ } | select(span.http.method) | by(resource.service.name) | coalesce()"#, &t);
    assert_eq!(sets[0].selected.len(), 2);
}

#[test]
fn metrics_queries_expose_their_parts() {
    let q = parse(r#"{ status = error } | rate() by (resource.service.name)"#, 64).unwrap();
    assert!(is_metrics(&q));
    assert!(evaluate(&q, &trace1()).is_empty());
    let spans = evaluate_pipeline(spanset_part(&q), &trace1());
    assert_eq!(spans.len(), 1);
    assert_eq!(spans[0].spans.iter().map(|&i| short_name(&trace1(), i)).collect::<Vec<_>>(), vec!["b"]);
    assert!(!is_metrics(&parse("{ }", 64).unwrap()));
}

#[test]
fn odd_traces_do_not_break_evaluation() {
    let empty = Trace::new("0".repeat(32), Vec::new());
    assert!(run("{ }", &empty).is_empty());
    // A cycle of parent ids: structural operators still end.
    let cycle =
        Trace::new("0".repeat(32), vec![span("x", Some("y"), "s", "x", 0, 1), span("y", Some("x"), "s", "y", 0, 1)]);
    for q in ["{ } >> { }", "{ } << { }", "{ } ~ { }", "{ } > { }", "{ } &>> { }", "{ nestedSetParent >= 0 }"] {
        let _ = run(q, &cycle);
    }
    // A deep chain of spans: linear walks, no recursion.
    let mut spans = vec![span("n0", None, "s", "n", 0, 100)];
    for i in 1..3000 {
        spans.push(span(&format!("n{i}"), Some(&format!("n{}", i - 1)), "s", "n", i, 100));
    }
    let chain = Trace::new("0".repeat(32), spans);
    assert_eq!(run("{ } >> { }", &chain)[0].spans.len(), 2999);
    assert_eq!(run("{ } << { }", &chain)[0].spans.len(), 2999);
    assert_eq!(run("{ nestedSetParent < 0 }", &chain)[0].spans.len(), 1);
    assert_eq!(run("{ nestedSetLeft = 1 && nestedSetRight = 6000 }", &chain)[0].spans.len(), 1);
}
