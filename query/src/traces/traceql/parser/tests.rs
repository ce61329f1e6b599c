//! Parser tests: Tempo's documented and tested queries parse and print back to themselves,
//! invalid ones fail with a position, deep nesting is refused without exhausting the stack,
//! and no input makes the parser panic.

use super::*;

const DEPTH: usize = 64;

/// Queries from Tempo's TraceQL documentation and its list of valid test queries.
const VALID: &[&str] = &[
    // docs: construct-traceql-queries.md
    "{ }",
    "{ span.http.status_code >= 200 && span.http.status_code < 300 } | count() > 2",
    r#"{resource.service.name = "frontend" && name = "POST /api/orders"}"#,
    "{\n  resource.service.namespace = \"ecommerce\" &&\n  resource.service.name = \"frontend\" &&\n  resource.deployment.environment = \"production\" &&\n  name = \"POST /api/orders\"\n}",
    "{\n  resource.service.name=\"frontend\" &&\n  name = \"POST /api/orders\" &&\n  status = error\n}",
    r#"{span.service.name="frontend" && name = "GET /api/products/{id}"} && {span.db.system="postgresql"}"#,
    r#"{ resource.deployment.environment = "production" } && { resource.deployment.environment = "staging" }"#,
    r#"{ span.foo = "bar" }"#,
    r#"{ span.foo != "bar" }"#,
    r#"{ span.http.request.header.Accept =~ "application.*" }"#,
    r#"{ span.http.request.header.Accept !~ "application.*" }"#,
    r#"{ resource.service.name="frontend" } >> { status = error }"#,
    r#"{ } !< { resource.service.name = "productcatalogservice" }"#,
    r#"{ resource.service.name = "productcatalogservice" } ~ { resource.service.name="frontend" }"#,
    "{ span:childCount = 0 }",
    r#"{ resource.service.name = "frontend" && span:childCount = 0 }"#,
    "{ span:childCount > 10 }",
    "{ span.http.status_code = 200 } | select(resource.service.name)",
    r#"{ span.http.method = "GET" && status = ok } && { span.http.method = "DELETE" && status != ok }"#,
    r#"{ resource.deployment.environment =~ "prod-.*" && span.http.status_code = 200 }"#,
    "{ trace:duration > 5s }",
    "{ span:duration < 5ms } | count_over_time() by(resource.service.name) | topk(10)",
    r#"{ resource.deployment.environment = "production" && trace:duration > 2s } | count() > 30"#,
    r#"{ span:name = "foo" }"#,
    r#"{ event:name = "foo" }"#,
    r#"{ trace:id = "1234" }"#,
    r#"{ link:traceID = "1234" }"#,
    r#"{ resource.foo = "bar" }"#,
    r#"{ link.foo = "bar" }"#,
    r#"{ event.foo = "bar" }"#,
    "{ span:status = ok }",
    r#"{ span:statusMessage = "Forbidden" }"#,
    "{ span:duration > 100ms }",
    r#"{ span:name = "HTTP POST" }"#,
    "{ span:kind = server }",
    r#"{ span:id = "0000000000000001" }"#,
    r#"{ span:parentID = "000000000000001" }"#,
    "{ span:childCount > 0 }",
    "{ trace:duration > 100ms }",
    r#"{ trace:rootName = "HTTP GET" }"#,
    r#"{ trace:rootService = "gateway" }"#,
    r#"{ trace:id = "1234567890abcde" }"#,
    r#"{ event:name = "exception" }"#,
    "{ event:timeSinceStart > 2ms}",
    r#"{ link:spanID = "0000000000000001" }"#,
    r#"{ link:traceID = "1234567890abcde" }"#,
    r#"{ instrumentation:name = "grpc" }"#,
    r#"{ instrumentation:version = "1.0.0" }"#,
    r#"{ resource.k8s.cluster.name="service-name" && trace:rootName !~ ".*perf.*"}"#,
    r#"{ span.http.method = "GET" }"#,
    r#"{ span.db.system =~ "postgresql|mysql" }"#,
    r#"{ event.exception.message =~ ".*something went wrong.*" }"#,
    r#"{ link.opentracing.ref_type = "child_of" }"#,
    r#"{ instrumentation.language = "java" }"#,
    r#"{ resource.service.name = "foo" } | rate() by (instrumentation:name)"#,
    r#"{ span."attribute name with space" = "value" }"#,
    r#"{ span.attribute."attribute name with space" = "value" }"#,
    "{ span.http.status_code = 200 }",
    "{ span.retry_count > -1 }",
    "{ span.value != minInt && span.value != maxInt }",
    "{ event:timeSinceStart > -5s }",
    "{ span.value > 1.5 }",
    "{ span.optional_field = nil }",
    "{ span.required_field != nil }",
    "{ span.http.status_code >= 400 && span.http.status_code < 500 }",
    r#"{ span.http.status_code >= "400" }"#,
    r#"{ span.http.method =~ "DELETE|GET" }"#,
    "{ span.any_attribute != nil }",
    "{ resource.service.version = nil }",
    "{ event.exception.message = nil }",
    r#"{ span.http.method = "DELETE" && status != ok }"#,
    r#"{ resource.cloud.region = "us-east-1" } || { resource.cloud.region = "us-west-1" }"#,
    r#"{ resource.cloud.region = "us-east-1" && resource.cloud.region = "us-west-1" }"#,
    r#"{ resource.cloud.region =~ "us-east-1|us-west-1" }"#,
    r#"{ span.http.url = "/path/of/api" } >> { span.db.name = "db-shard-001" }"#,
    r#"{ span.http.url = "/path/of/api" && status = error } &>> { status = error }"#,
    r#"{ } !< { resource.service.name = "foo" }"#,
    "{ status = error } !< { status = error }",
    "count() > 10",
    "avg(duration) > 20ms",
    "{ span.http.status_code = 200 } | count() > 3",
    "{ } | sum(span.bytesProcessed) > 1000000000",
    "{ status = error } | by(resource.service.name) | count() > 1",
    "{ span.http.request_content_length > 10 * 1024 * 1024 }",
    "{ status = error } | select(span.http.status_code, span.http.url)",
    "{} with (most_recent=true)",
    r#"{ span.foo = "bar" } >> { status = error } with (most_recent=true)"#,
    // Tempo's pkg/traceql/test_examples.yaml, valid section
    "{ true }",
    "{ !true }",
    "{ true && false }",
    "{ 1 = 2 }",
    "{ -1 = 2 }",
    r#"{ "test" =~ "test" }"#,
    "{ .a }",
    "{ !.a }",
    "{ .a && false }",
    "{ .a || true }",
    "{ -.a = 2 }",
    r#"{ .a !~ "test" }"#,
    "{ resource.a != 3 }",
    r#"{ !("test" != .c || ((true && .b) || 3 < .a)) }"#,
    "{ status = unset }",
    r#"{ statusMessage = "" }"#,
    r#"{ statusMessage =~ ".*" }"#,
    "{ kind = consumer }",
    "{ traceDuration > 1s }",
    r#"{ rootServiceName = "foo" }"#,
    r#"{ rootName != "foo" }"#,
    "{ 1 < 1h }",
    "{ 1 <= 1.1 }",
    r#"{ instrumentation.foo = "bar" }"#,
    "{ span.foo != 3.0 }",
    r#"{ ."foo bar" = "v" }"#,
    r#"{ ."foo\" = \"bar" = "v" }"#,
    r#"{ ."a\\b" = "v" }"#,
    "{ .\"foo\tbar\" = \"v\" }",
    r#"{ event:timeSinceStart > 1s }"#,
    "{ 1 ^ 1 = 2 }",
    "{ .a + 1 = 2 }",
    "{ .a ^ 1 = 2 }",
    "{ duration > 1s * 2s }",
    "{ duration < (10s * 20s) }",
    "{ 1 / 1.1 = 1 }",
    r#"{ .http.status >= "200" }"#,
    "{ true } && { true }",
    "{ true } || { true }",
    "{ true } >> { true }",
    "{ true } << { true }",
    "{ true } > { true }",
    "{ true } < { true }",
    "{ true } ~ { true }",
    "{ true } !> { true }",
    "{ true } !< { true }",
    "{ true } !~ { true }",
    "{ true } !>> { true }",
    "{ true } !<< { true }",
    "{ true } &> { true }",
    "{ true } &< { true }",
    "{ true } &~ { true }",
    "{ true } &>> { true }",
    "{ true } &<< { true }",
    "({ true } | count() > 1 | { false }) >> ({ true } | count() > 1 | { false })",
    "({ true } | count() > 1 | { false }) && ({ true } | count() > 1 | { false })",
    r#"{.attr="a" || .attr="b"}"#,
    r#"{.attr!~"a.*" && .attr!~"b.*"}"#,
    "avg(.field) > 1",
    "max(duration) >= 1s",
    "{ true } | max(1 + .a) = 1",
    "{ true } | max((1 + .a) * 2) = 1",
    "max(duration) > 3s | { status = error || .http.status = 500 }",
    "select(.a)",
    "{} | select(.a,.b,.c)",
    "{ true } | { .a }",
    "count() = 1 | { true }",
    "{ true } | coalesce()",
    "{ true } | by(1 + .a) | coalesce()",
    "by(.a) | { true }",
    "{ true } | by(.field) | avg(.b) = 2",
    "{ true } | by(3 * .field - 2) | max(duration) < 1s",
    "{} | rate()",
    "{} | count_over_time() by (name) with(sample=0.1)",
    "{} | min_over_time(duration) by (span.http.path)",
    "{} | max_over_time(duration) by (span.http.path)",
    "{} | avg_over_time(duration) by (span.http.path)",
    "{} | sum_over_time(duration) by (span.http.path)",
    "{} | quantile_over_time(duration, 0, 0.9, 1) by (span.http.path)",
    "{} | rate() by (span.client_ip) | topk(10)",
    "{} | count_over_time() by (name) | bottomk(10) with(sample=0.1)",
    "{} | avg_over_time(duration) by (span:name) | topk(10)",
    "{} | rate() by (span.client_ip) >= 5.5",
    "{} | rate() > -3",
    "{} | rate() | topk(5) | bottomk (10) <= 10",
    "{} | rate() > 0 | topk(5) <= 10",
    "min(span:childCount) < 2 / 6",
    "avg(.field) > 1 - 3",
    "{ nestedSetLeft > 3 }",
    "{ } >> { kind = server } | select(nestedSetLeft, nestedSetRight, nestedSetParent)",
    "{ nil != nil }",
    "{ nil = nil }",
    "{ .foo != nil }",
    "{ name != nil }",
    // metrics docs and the extras this parser supports
    "{ } | quantile_over_time(duration, .99, .9, .5)",
    "{ } | histogram_over_time(duration) by (span.foo)",
    "{ status = error } | compare({ span.foo = `bar` })",
    "{ } | compare({ status = error }, 5, 1700000000000000000, 1700000360000000000)",
    "{ } | rate() with(sample=true, exemplars=5, most_recent=true)",
    "{ span.b = 1 } | by(resource.service.name) | { name = \"x\" } | count() > 1",
    "({ span.b = 1 } | by(.x)) && { }",
    "{ status = error } | by(span.x) | select(span.y) | coalesce() | min(duration) < max(duration)",
    "{ span.a } | (count() + 1) * 2 > 3",
    "{ span.x ^ 2 ^ 3 > -(-span.y) * 2 % 7 }",
    "{ 2 ^ span.x > 1 } | sum(duration) / count() > 1ms",
    "{ `raw\\string` = span.s } // comment\n| count() > 1 /* another */",
    "{ span.s = \"\\u00e9\\x41\\n\\t\\\"\" }",
    "{ childCount = 0 && nestedSetParent < 0 }",
    "{ .5 < span.x }",
    "{ span.x < 1.5e-7 || span.x > 1e20 }",
    "{ duration > 1h30m && duration < 2d }",
    "{ span.ok = true } > ({ span.a } < { span.b }) >> { } || { }",
];

#[test]
fn documented_queries_parse() {
    for q in VALID {
        if let Err(e) = parse(q, DEPTH) {
            panic!("{q:?} did not parse: {e}");
        }
    }
}

#[test]
fn printed_queries_parse_back_to_the_same_tree() {
    for q in VALID {
        let query = parse(q, DEPTH).unwrap_or_else(|e| panic!("{q}: {e}"));
        let text = query.to_string();
        let again = parse(&text, DEPTH).unwrap_or_else(|e| panic!("{q} printed as {text} fails: {e}"));
        assert_eq!(again, query, "{q} printed as {text}");
        assert_eq!(again.to_string(), text);
    }
}

/// Invalid queries, mostly from Tempo's list of failing ones, with where the error is.
const INVALID: &[(&str, usize)] = &[
    ("", 0),
    ("true", 0),
    ("[ true ]", 0),
    ("( true )", 2),
    ("{ . }", 2),
    ("{ < }", 2),
    ("{ .a < }", 7),
    ("{ .a < 3", 8),
    ("{ (.a < 3 }", 10),
    ("{ attribute = 4 }", 2),
    ("{ .attribute == 4 }", 14),
    ("{} | rate() == 42", 13),
    ("{ span. }", 2),
    ("{ true } + { true }", 9),
    ("{ true } = { true }", 9),
    ("{ true } <= { true }", 9),
    (r#"max(name) = "foo""#, 0),
    ("max(status) = ok", 0),
    ("min(1) = 5", 0),
    ("min(parent) = nil", 4),
    (r#"avg(span:childCount) > "foo""#, 23),
    ("avg(.field) + 1", 15),
    ("min(span:childCount) && 2", 21),
    ("select(.a", 9),
    ("select()", 7),
    (r#"select(1 + "string")"#, 7),
    ("coalesce() | { true }", 0),
    ("count() > 3 && { true }", 12),
    ("{ true } | count()", 18),
    ("{ true } | notAnAggregate() = 1", 11),
    ("{ true } | count = 1", 17),
    ("{ true } | max() = 1", 15),
    ("{ true } | by()", 14),
    ("({ true }) && (count())", 22),
    ("5 + {} | rate()", 4),
    ("{} | rate() + 5", 12),
    ("2 * 3", 5),
    ("3 = 2", 0),
    ("{ .foo = \"a\" } | 3 > 2", 17),
    ("({} | rate()) % 10", 4),
    ("{ trace:status = error }", 2),
    (r#"{ trace:name = "a" }"#, 2),
    (r#"{ span:rootName = "bar" }"#, 2),
    ("{} | topk(10)", 5),
    ("{} | rate() | topk(-1)", 19),
    ("{} | rate() | topk(0)", 14),
    ("{} > 10", 5),
    ("{} == 10", 3),
    ("{ status }", 0),
    ("{ 1 + 1 }", 0),
    (r#"{ "foo" }"#, 0),
    (r#"{ 1 + "foo" = 1 }"#, 4),
    ("{ 1 - true = 1 }", 4),
    ("{ 1 = name }", 4),
    ("{ 1 =~ 2 }", 4),
    (r#"{ 1 && "foo" }"#, 4),
    ("{ true || 1.1 }", 7),
    ("{ status > ok }", 9),
    ("{ status = 1 }", 9),
    ("{ kind = ok }", 7),
    (r#"{ duration > "x" }"#, 11),
    (r#"{ traceDuration > "test" }"#, 16),
    ("{ rootName != 3.2 }", 11),
    (r#"{ "foo" = span:childCount }"#, 8),
    ("{ span:status = nil }", 14),
    ("{ nil = span:status }", 6),
    ("{ resource.service.name = nil }", 24),
    (r#"{ span.foo =~ "[" }"#, 11),
    (r#"{ span.foo !~ "(a" }"#, 11),
    ("{ -true }", 2),
    (r#"{ -name = "foo" }"#, 2),
    ("{ !1 = 1 }", 2),
    ("min(1 = 3) = 1", 0),
    ("sum(3) = 2", 0),
    ("min(2h) < max(duration)", 0),
    ("{ true } | by(1)", 11),
    (r#"{ nestedSetLeft = "foo" }"#, 16),
    ("{ nestedSetRight = false }", 17),
    ("{} | compare({status=error}) | topk(10)", 5),
    ("{ parent.a != 3 }", 2),
    ("{ parent }", 2),
    ("{ span.a = 1 } with(x)", 21),
    ("{ \"abc }", 2),
    ("{ span.\"abc = 1 }", 7),
    ("{ 1e }", 3),
    ("{ 99999999999999999999 = span.x }", 2),
    ("{ span.a = 1 } | quantile_over_time(duration) ", 44),
    ("{ span.b = 1 }\n  | by(x)", 22),
    ("{ span.x = 1 } | by(span.y", 26),
];

#[test]
fn invalid_queries_fail_where_they_are_wrong() {
    assert!(INVALID.len() >= 40);
    let mut failures = Vec::new();
    for (q, pos) in INVALID {
        match parse(q, DEPTH) {
            Ok(query) => failures.push(format!("{q:?} parsed as {query}")),
            Err(e) if e.position != *pos => failures.push(format!("{q:?} at {} not {pos}: {e}", e.position)),
            Err(_) => {}
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn errors_say_where_and_what() {
    let e = parse("{ .a = 1 } && { foo }", DEPTH).unwrap_err();
    assert_eq!(e.to_string(), "parse error at line 1, col 17: syntax error: unknown identifier: foo");
    let e = parse("{ .a = 1 }\n| count( > 1", DEPTH).unwrap_err();
    assert_eq!((e.line, e.column), (2, 10));
    assert!(e.message.contains("unexpected \">\""), "{e}");
    let e = parse("{ span.x =~ \"a(\" }", DEPTH).unwrap_err();
    assert!(e.message.starts_with("invalid regex"), "{e}");
}

#[test]
fn precedence_follows_tempo() {
    let filter = |q: &str| match parse(q, DEPTH).unwrap().pipeline.stages.remove(0) {
        Stage::Spanset(SpansetExpr::Filter(f)) => f.to_string(),
        other => panic!("{other:?}"),
    };
    // && and || share one level, left to right.
    assert_eq!(filter("{ .a || .b && .c }"), "(.a || .b) && .c");
    assert_eq!(filter("{ .a && .b || .c }"), "(.a && .b) || .c");
    assert_eq!(
        filter("{ .a = 1 && .b > 2 + 3 * .c }"),
        "(.a = 1) && (.b > (5 * .c))".replace("(5 * .c)", "(2 + (3 * .c))").as_str()
    );
    assert_eq!(filter("{ -.a * .b = 1 }"), "(-(.a * .b)) = 1");
    assert_eq!(filter("{ -.a + .b = 1 }"), "((-.a) + .b) = 1");
    assert_eq!(filter("{ !.a = true }"), "(!.a) = true");
    assert_eq!(filter("{ .a ^ .b ^ .c = 1 }"), "(.a ^ (.b ^ .c)) = 1");
    assert_eq!(filter("{ .a - .b - .c = 1 }"), "((.a - .b) - .c) = 1");
    assert_eq!(filter("{ span.a = nil && span.b != nil }"), "(span.a = nil) && (span.b != nil)");
    assert_eq!(filter("{ nil = span.a + 1 }"), "(span.a + 1) = nil");
    // Literal arithmetic is folded.
    assert_eq!(filter("{ span.x > 10 * 1024 * 1024 }"), "span.x > 10485760");
    assert_eq!(filter("{ span.x > -(2 ^ 3) }"), "span.x > (-8)");
    assert_eq!(filter("{ 1 = 1 }"), "true");
    assert_eq!(filter("{ span.x > 1 / 0 }"), "span.x > (1 / 0)");
    let query = parse("{ .a } && { .b } > { .c } || { .d }", DEPTH).unwrap();
    assert_eq!(query.to_string(), "({ .a } && ({ .b } > { .c })) || { .d }");
    let query = parse("{ .a } > { .b } >> { .c }", DEPTH).unwrap();
    assert_eq!(query.to_string(), "({ .a } > { .b }) >> { .c }");
}

#[test]
fn parts_of_the_tree() {
    let q = parse(r#"{ span:name = "a" } | by(resource.service.name) | count() > 2 with(sample=0.1)"#, DEPTH).unwrap();
    assert_eq!(q.pipeline.stages.len(), 3);
    assert_eq!(
        q.pipeline.stages[1],
        Stage::By(FieldExpr::Attribute(Attribute { scope: AttributeScope::Resource, name: "service.name".into() }))
    );
    assert_eq!(q.hints, vec![Hint { name: "sample".into(), value: Literal::Float(0.1) }]);
    let m = parse("{ } | quantile_over_time(duration, .5, .9, .99) by (span.a, name) | topk(3) > 5", DEPTH).unwrap();
    let metrics = m.metrics.unwrap();
    assert_eq!(
        metrics.function,
        MetricsFunction::QuantileOverTime(Field::Intrinsic(Intrinsic::Duration), vec![0.5, 0.9, 0.99])
    );
    assert_eq!(metrics.by.len(), 2);
    assert_eq!(metrics.second_stages, vec![SecondStage::TopK(3), SecondStage::Filter(BinaryOp::Gt, 5.0)]);
    let d = parse("{ duration > 1.5s && duration < 2m && span:duration != 1w && duration > 10µs }", DEPTH).unwrap();
    assert_eq!(
        d.to_string(),
        "{ (((duration > 1.5s) && (duration < 2m0s)) && (duration != 168h0m0s)) && (duration > 10µs) }"
    );
    let q = parse("{ .x } | min(span.x) > 1", DEPTH).unwrap();
    assert!(!q.to_string().is_empty());
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let n = 100_000;
    let cases = [
        "(".repeat(n),
        format!("{}{{ true }}{}", "(".repeat(n), ")".repeat(n)),
        format!("{{ {}true{} }}", "(".repeat(n), ")".repeat(n)),
        format!("{{ {}true }}", "!".repeat(n)),
        format!("{{ {}span.x = 1 }}", "-".repeat(n)),
        format!("{{ .a{} }}", " && .a".repeat(n)),
        format!("{{ span.x{} = 1 }}", " + span.y".repeat(n)),
        format!("{{ span.x{} = 1 }}", " ^ span.y".repeat(n)),
        format!("{{ }}{}", " && { }".repeat(n)),
        format!("{{ }}{}", " >> { }".repeat(n)),
        format!("count(){} > 1", " + count()".repeat(n)),
        format!("{}count() > 1", "(".repeat(n)),
        format!("{} > 1", "-".repeat(n)),
        "{".repeat(n),
    ];
    for q in &cases {
        let e = parse(q, DEPTH).unwrap_err();
        assert!(e.message.contains("deeper than 64") || e.message.contains("syntax error"), "{}: {e}", &q[..20]);
    }
    let e = parse(&"(".repeat(n), DEPTH).unwrap_err();
    assert_eq!(e.message, "the query nests deeper than 64 levels");
    // Within the limit the same shapes parse.
    assert!(parse(&format!("{{ .a{} }}", " && .a".repeat(60)), DEPTH).is_ok());
    assert!(parse(&format!("{}{{ true }}{}", "(".repeat(60), ")".repeat(60)), DEPTH).is_ok());
    assert!(parse(&format!("{{ }}{}", " >> { }".repeat(60)), DEPTH).is_ok());
}

/// A small deterministic generator, so the property tests need no extra crate.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> usize {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) as usize
    }
}

#[test]
fn no_input_makes_the_parser_panic() {
    // Truncations at every character boundary of every valid query.
    for q in VALID {
        for (i, _) in q.char_indices() {
            let _ = parse(&q[..i], DEPTH);
            let _ = parse(&q[i..], DEPTH);
        }
    }
    // Random token soups and random bytes.
    const PIECES: &[&str] = &[
        "{",
        "}",
        "(",
        ")",
        " ",
        ".",
        "span.",
        "resource.",
        "span:",
        "trace:",
        "event:",
        "name",
        "status",
        "duration",
        "=",
        "!=",
        "=~",
        "!~",
        ">",
        ">>",
        "<",
        "<<",
        "~",
        "&&",
        "||",
        "!",
        "&>",
        "!<<",
        "+",
        "-",
        "*",
        "/",
        "%",
        "^",
        "|",
        ",",
        "1",
        "1.5",
        "2s",
        "-",
        "\"a\"",
        "`b`",
        "nil",
        "true",
        "error",
        "server",
        "count()",
        "avg(",
        "by(",
        "select(",
        "coalesce()",
        "rate()",
        "topk(",
        "with(",
        "x",
        "\"",
        "\\",
        "µ",
        "1e",
        ".5",
        "minInt",
        "quantile_over_time(",
    ];
    let mut rng = Lcg(42);
    for _ in 0..20_000 {
        let len = rng.next() % 12;
        let q: String = (0..len).map(|_| PIECES[rng.next() % PIECES.len()]).collect();
        if let Ok(query) = parse(&q, DEPTH) {
            // Whatever parses prints back to the same tree.
            let text = query.to_string();
            assert_eq!(parse(&text, DEPTH).as_ref(), Ok(&query), "{q} -> {text}");
        }
    }
    for _ in 0..5_000 {
        let len = rng.next() % 24;
        let bytes: Vec<u8> = (0..len).map(|_| (rng.next() % 256) as u8).collect();
        let _ = parse(&String::from_utf8_lossy(&bytes), DEPTH);
    }
}

fn pick<'a>(rng: &mut Lcg, items: &[&'a str]) -> &'a str {
    items[rng.next() % items.len()]
}

/// A random filter expression over a small vocabulary; not always well typed.
fn random_field(rng: &mut Lcg, depth: usize) -> String {
    const FIELDS: &[&str] = &[
        ".a",
        "span.b",
        "resource.service.name",
        "span.\"x y\"",
        "event.e",
        "link.l",
        "name",
        "duration",
        "span:childCount",
        "statusMessage",
        "trace:id",
        "nestedSetParent",
        "instrumentation:name",
        "status",
        "kind",
    ];
    const LITERALS: &[&str] =
        &["\"s\"", "1", "-2", "1.5", "100ms", "true", "ok", "server", "minInt", "`r`", "2e3", "(3 * 4)", "-1.5s"];
    const OPS: &[&str] = &["=", "!=", "<", "<=", ">", ">="];
    let choice = if depth == 0 { rng.next() % 4 } else { rng.next() % 9 };
    match choice {
        0 => format!("{} {} {}", pick(rng, FIELDS), pick(rng, OPS), pick(rng, LITERALS)),
        1 => format!("{} {} \"a.*\"", pick(rng, FIELDS), pick(rng, &["=~", "!~"])),
        2 => format!("{} {} nil", pick(rng, FIELDS), pick(rng, &["=", "!="])),
        3 => pick(rng, &[".a", "span.flag", "true", "false"]).to_string(),
        4 => format!("({} && {})", random_field(rng, depth - 1), random_field(rng, depth - 1)),
        5 => format!("{} || {}", random_field(rng, depth - 1), random_field(rng, depth - 1)),
        6 => format!("!({})", random_field(rng, depth - 1)),
        7 => format!(
            "{} {} {} > {}",
            pick(rng, FIELDS),
            pick(rng, &["+", "-", "*", "/", "%", "^"]),
            pick(rng, LITERALS),
            pick(rng, LITERALS)
        ),
        _ => format!("-{} < {}", pick(rng, &[".a", "duration", "(span.b * 2)"]), pick(rng, LITERALS)),
    }
}

fn random_spanset(rng: &mut Lcg, depth: usize) -> String {
    const OPS: &[&str] =
        &["&&", "||", ">", "<", ">>", "<<", "~", "!>", "!<", "!>>", "!<<", "!~", "&>", "&<", "&>>", "&<<", "&~"];
    match if depth == 0 { 0 } else { rng.next() % 5 } {
        0 => format!("{{ {} }}", random_field(rng, 2)),
        1 => "{}".to_string(),
        2 => format!("({} {} {})", random_spanset(rng, depth - 1), pick(rng, OPS), random_spanset(rng, depth - 1)),
        3 => format!("{} {} {}", random_spanset(rng, depth - 1), pick(rng, OPS), random_spanset(rng, depth - 1)),
        _ => format!("({} | by(.a) | count() > 1)", random_spanset(rng, depth - 1)),
    }
}

fn random_query(rng: &mut Lcg) -> String {
    const STAGES: &[&str] = &[
        "by(resource.service.name)",
        "count() > 1",
        "avg(duration) > 1ms",
        "select(.a, name)",
        "coalesce()",
        "max(span.n) - min(span.n) >= 1",
        "by(.a + 1)",
        "{ name = \"x\" }",
        "sum(.a) < 10",
    ];
    let mut q = random_spanset(rng, 2);
    for _ in 0..rng.next() % 3 {
        q = format!("{q} | {}", pick(rng, STAGES));
    }
    if rng.next().is_multiple_of(4) {
        q = format!(
            "{q} | {}",
            pick(rng, &["rate() by (.a)", "quantile_over_time(duration, .5) | topk(2)", "count_over_time() > 1"])
        );
    }
    if rng.next().is_multiple_of(5) {
        q.push_str(" with(sample=0.5, most_recent=true)");
    }
    q
}

#[test]
fn random_queries_round_trip_and_evaluate() {
    use crate::traces::model::tests::span;
    let mut spans = vec![span("a", None, "web", "x", 0, 10), span("b", Some("a"), "api", "y", 1, 5)];
    spans[1].attributes.insert("a".into(), "3".into());
    spans[1].attributes.insert("n".into(), "1".into());
    let trace = crate::traces::model::Trace::new("0".repeat(32), spans);
    let mut rng = Lcg(7);
    let mut parsed = 0;
    for _ in 0..3_000 {
        let q = random_query(&mut rng);
        let Ok(query) = parse(&q, DEPTH) else { continue };
        parsed += 1;
        let text = query.to_string();
        assert_eq!(parse(&text, DEPTH).as_ref(), Ok(&query), "{q} -> {text}");
        let _ = super::super::eval::evaluate(&query, &trace);
        let _ = super::super::prefilter::sql_prefilter(&query);
    }
    assert!(parsed > 1_000, "only {parsed} random queries parsed");
}
