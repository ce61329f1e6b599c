//! Expected numbers follow Tempo's rules (see the module documentation). The standard range
//! is 10 s to 12 s by 1 s: Tempo aligns its start down to 10 s and adds one step before it,
//! so the steps are (9 s, 10 s], (10 s, 11 s] and (11 s, 12 s], stamped 10000, 11000 and
//! 12000 ms.

use serde_json::json;

use super::*;
use crate::traces::model::tests::span;
use crate::traces::traceql::{evaluate_pipeline, parse};

const S: i64 = 1_000_000_000;

fn range() -> RangeRequest {
    RangeRequest { start_ns: 10 * S, end_ns: 12 * S, step_ns: S }
}

/// Spans by start: f 9.0 s (at the aligned start: out), g 9.5 s (first step), a 10.2 s and
/// b 10.5 s (second), c 11.3 s and d 11.4 s (third), e 12.5 s (after the end: out).
/// Durations: g 5 ms, a 10, b 20, c 30, d 40, e and f 10.
fn trace_a() -> Trace {
    Trace::new(
        "0".repeat(32),
        vec![
            span("a", None, "web", "GET /", 10_200, 10_210),
            span("b", Some("a"), "api", "call", 10_500, 10_520),
            span("c", Some("b"), "db", "query", 11_300, 11_330),
            span("d", Some("a"), "api", "call2", 11_400, 11_440),
            span("e", Some("a"), "api", "late", 12_500, 12_510),
            span("f", Some("a"), "web", "early", 9_000, 9_010),
            span("g", Some("a"), "web", "before", 9_500, 9_505),
        ],
    )
}

/// Four spans of service "svc" in the second step, lasting 10, 20, 30 and 40 ms.
fn trace_q() -> Trace {
    let spans = (1..=4).map(|i| span(&format!("q{i}"), None, "svc", "work", 10_000 + 100 * i, 10_000 + 110 * i));
    Trace::new("1".repeat(32), spans.collect())
}

fn run_with(
    query: &str,
    range: RangeRequest,
    max_series: usize,
    traces: &[Trace],
) -> Result<Vec<MetricsSeries>, MetricsError> {
    let query = parse(query, 64).expect("the query parses");
    let metrics = query.metrics.as_ref().expect("a metrics query");
    let mut evaluator = MetricsEvaluator::new(metrics, range, max_series)?;
    for trace in traces {
        evaluator.observe(trace, &evaluate_pipeline(&query.pipeline, trace))?;
    }
    Ok(evaluator.finish())
}

fn run(query: &str, traces: &[Trace]) -> Vec<MetricsSeries> {
    run_with(query, range(), 100, traces).expect("the query evaluates")
}

fn label(key: &str, value: &str) -> (String, Value) {
    (key.to_string(), Value::Str(value.to_string()))
}

fn series(labels: Vec<(String, Value)>, samples: &[(i64, f64)]) -> MetricsSeries {
    MetricsSeries { labels, samples: samples.to_vec() }
}

fn assert_close(actual: &[(i64, f64)], expected: &[(i64, f64)]) {
    assert_eq!(actual.len(), expected.len(), "{actual:?} vs {expected:?}");
    for ((t, v), (et, ev)) in actual.iter().zip(expected) {
        assert_eq!(t, et);
        assert!((v - ev).abs() < 1e-12, "{v} vs {ev} at {t}");
    }
}

#[test]
fn rate_divides_each_steps_count_by_the_step_and_ignores_spans_outside() {
    // f starts at the aligned start and e after the end: neither counts.
    let answer = run("{} | rate()", &[trace_a()]);
    assert_eq!(answer, vec![series(vec![label("__name__", "rate")], &[(10_000, 1.0), (11_000, 2.0), (12_000, 2.0)])]);
    // By 500 ms the steps are (9.5, 10], (10, 10.5], …, (11.5, 12]: g starts on the aligned
    // start and is out; a and b (on the right edge) fall in the second, c and d in the fourth.
    let half = RangeRequest { start_ns: 10 * S, end_ns: 12 * S, step_ns: S / 2 };
    let answer = run_with("{} | rate()", half, 10, &[trace_a()]).unwrap();
    assert_eq!(answer[0].samples, vec![(10_000, 0.0), (10_500, 4.0), (11_000, 0.0), (11_500, 4.0), (12_000, 0.0)]);
}

#[test]
fn an_ungrouped_rate_answers_zeros_without_spans() {
    let answer = run("{ name = \"nothing\" } | rate()", &[trace_a()]);
    assert_eq!(answer, vec![series(vec![label("__name__", "rate")], &[(10_000, 0.0), (11_000, 0.0), (12_000, 0.0)])]);
    assert!(run("{ name = \"nothing\" } | count_over_time() by (name)", &[trace_a()]).is_empty());
}

#[test]
fn count_over_time_by_service_fills_empty_steps_with_zero() {
    let answer = run("{} | count_over_time() by (resource.service.name)", &[trace_a()]);
    let key = "resource.service.name";
    assert_eq!(
        answer,
        vec![
            series(vec![label(key, "api")], &[(10_000, 0.0), (11_000, 1.0), (12_000, 1.0)]),
            series(vec![label(key, "db")], &[(10_000, 0.0), (11_000, 0.0), (12_000, 1.0)]),
            series(vec![label(key, "web")], &[(10_000, 1.0), (11_000, 1.0), (12_000, 0.0)]),
        ]
    );
}

#[test]
fn nil_by_values_are_left_out_and_an_all_nil_series_keeps_the_first_label() {
    let answer = run("{ resource.service.name = \"db\" } | count_over_time() by (span.missing)", &[trace_a()]);
    assert_eq!(answer[0].labels, vec![("span.missing".to_string(), Value::Nil)]);
    let answer = run("{ resource.service.name = \"db\" } | count_over_time() by (span.missing, name)", &[trace_a()]);
    assert_eq!(answer[0].labels, vec![label("name", "query")]);
}

#[test]
fn avg_max_min_and_sum_read_durations_in_seconds_and_skip_empty_steps() {
    let avg = run("{} | avg_over_time(duration)", &[trace_a()]);
    assert_eq!(avg[0].labels, vec![label("__name__", "avg_over_time")]);
    assert_close(&avg[0].samples, &[(10_000, 0.005), (11_000, 0.015), (12_000, 0.035)]);
    let max = run("{} | max_over_time(duration)", &[trace_a()]);
    assert_close(&max[0].samples, &[(10_000, 0.005), (11_000, 0.02), (12_000, 0.04)]);
    let min = run("{ resource.service.name = \"api\" } | min_over_time(duration)", &[trace_a()]);
    assert_close(&min[0].samples, &[(11_000, 0.02), (12_000, 0.04)]);
    let sum = run("{} | sum_over_time(duration)", &[trace_a()]);
    assert_close(&sum[0].samples, &[(10_000, 0.005), (11_000, 0.03), (12_000, 0.07)]);
}

#[test]
fn spans_without_a_number_are_skipped() {
    let mut spans = trace_a().spans;
    for s in &mut spans {
        match s.name.as_str() {
            "GET /" => s.attributes.insert("bytes".into(), "300".into()),
            "call" => s.attributes.insert("bytes".into(), "not a number".into()),
            _ => None,
        };
    }
    let trace = Trace::new("0".repeat(32), spans);
    let answer = run("{} | sum_over_time(span.bytes)", &[trace]);
    assert_eq!(answer, vec![series(vec![label("__name__", "sum_over_time")], &[(11_000, 300.0)])]);
}

#[test]
fn quantiles_interpolate_between_power_of_two_buckets() {
    // 10, 20, 30 and 40 ms fall in the buckets 2^24, 2^25, 2^25 and 2^26 ns.
    // p50: ceil(0.5·4) = 2 samples; the first bucket holds 1, so the second is entered for
    //   half of its 2: 2^(log2(2^24 ns) + 0.5) = 2^24·√2 ns ≈ 0.0237266 s.
    // p90: ceil(0.9·4) = 4 samples, exactly all of the third bucket: 2^26 ns = 0.067108864 s.
    // Steps without spans read 0.
    let answer = run("{} | quantile_over_time(duration, 0.5, 0.9)", &[trace_q()]);
    let p50 = 2f64.powi(24) / 1e9 * 2f64.sqrt();
    assert_eq!(answer.len(), 2);
    assert_eq!(answer[0].labels, vec![("p".to_string(), Value::Float(0.5))]);
    assert_close(&answer[0].samples, &[(10_000, 0.0), (11_000, p50), (12_000, 0.0)]);
    assert!((answer[0].samples[1].1 - 0.0237266).abs() < 1e-6);
    assert_eq!(answer[1].labels, vec![("p".to_string(), Value::Float(0.9))]);
    assert_close(&answer[1].samples, &[(10_000, 0.0), (11_000, 0.067108864), (12_000, 0.0)]);
}

#[test]
fn a_histogram_is_one_series_per_bucket_in_seconds() {
    let answer = run("{} | histogram_over_time(duration)", &[trace_q()]);
    let bucket = |b: f64, n: f64| {
        series(vec![("__bucket".to_string(), Value::Float(b))], &[(10_000, 0.0), (11_000, n), (12_000, 0.0)])
    };
    assert_eq!(answer, vec![bucket(0.016777216, 1.0), bucket(0.033554432, 2.0), bucket(0.067108864, 1.0)]);
}

#[test]
fn topk_and_bottomk_keep_the_extremes_of_each_step() {
    // Counts api [0,1,1], db [0,0,1], web [1,1,0]. topk(1): web, then the tie api/web goes
    // to api (first by labels), then api/db to api.
    let key = "resource.service.name";
    let top = run("{} | count_over_time() by (resource.service.name) | topk(1)", &[trace_a()]);
    assert_eq!(
        top,
        vec![
            series(vec![label(key, "api")], &[(11_000, 1.0), (12_000, 1.0)]),
            series(vec![label(key, "web")], &[(10_000, 1.0)]),
        ]
    );
    // bottomk(1): ties go to the series last by labels, as Tempo's heap leaves them.
    let bottom = run("{} | count_over_time() by (resource.service.name) | bottomk(1)", &[trace_a()]);
    assert_eq!(
        bottom,
        vec![
            series(vec![label(key, "db")], &[(10_000, 0.0), (11_000, 0.0)]),
            series(vec![label(key, "web")], &[(12_000, 0.0)]),
        ]
    );
}

#[test]
fn a_comparison_drops_points_and_then_empty_series() {
    let answer = run("{} | count_over_time() by (resource.service.name) > 2", &[trace_a(), trace_q()]);
    assert_eq!(answer, vec![series(vec![label("resource.service.name", "svc")], &[(11_000, 4.0)])]);
    // A duration is compared in seconds.
    let answer = run("{} | max_over_time(duration) > 25ms", &[trace_a()]);
    assert_close(&answer[0].samples, &[(12_000, 0.04)]);
}

#[test]
fn a_span_in_two_spansets_counts_once() {
    let trace = trace_a();
    let query = parse("{} | count_over_time()", 64).unwrap();
    let sets = evaluate_pipeline(&query.pipeline, &trace);
    let twice = [sets.clone(), sets].concat();
    let mut evaluator = MetricsEvaluator::new(query.metrics.as_ref().unwrap(), range(), 10).unwrap();
    evaluator.observe(&trace, &twice).unwrap();
    assert_eq!(evaluator.finish()[0].samples, vec![(10_000, 1.0), (11_000, 2.0), (12_000, 2.0)]);
}

#[test]
fn an_instant_query_is_one_unaligned_step() {
    // (10 s, 12 s]: a, b, c and d; rate over 2 s.
    let answer = run_with("{} | rate()", RangeRequest::instant(10 * S, 12 * S), 10, &[trace_a()]).unwrap();
    assert_eq!(answer[0].samples, vec![(12_000, 2.0)]);
    let json = query_instant_json(&answer);
    assert_eq!(
        json,
        json!({"series": [{"labels": [{"key": "__name__", "value": {"stringValue": "rate"}}], "value": 2.0}], "metrics": {}})
    );
}

#[test]
fn bounds_are_errors() {
    let a = [trace_a()];
    let points = RangeRequest { start_ns: 0, end_ns: 11_001 * S, step_ns: S };
    assert_eq!(
        run_with("{} | rate()", points, 10, &a),
        Err(MetricsError::TooManyPoints { step_ns: S, minimum_step_ns: 1_000_090_910 })
    );
    let most = RangeRequest { start_ns: 0, end_ns: 11_000 * S, step_ns: S };
    assert!(run_with("{} | rate()", most, 10, &a).is_ok());
    let zero_step = RangeRequest { step_ns: 0, ..range() };
    assert_eq!(
        run_with("{} | rate()", zero_step, 10, &a),
        Err(MetricsError::InvalidRange("step must be greater than 0"))
    );
    let by_service = "{} | count_over_time() by (resource.service.name)";
    assert_eq!(run_with(by_service, range(), 2, &a), Err(MetricsError::TooManySeries { max: 2 }));
    // Each group of a quantile query is a series per quantile.
    let quantiles = "{} | quantile_over_time(duration, 0.5, 0.9) by (resource.service.name)";
    assert_eq!(run_with(quantiles, range(), 3, &a), Err(MetricsError::TooManySeries { max: 3 }));
    assert_eq!(
        run_with("{} | quantile_over_time(duration, 1.5)", range(), 10, &a),
        Err(MetricsError::InvalidQuantile(1.5))
    );
    let compare = run_with("{} | compare({ status = error })", range(), 10, &a);
    assert_eq!(compare, Err(MetricsError::Unsupported("compare() is not supported".to_string())));
    assert_eq!(
        MetricsError::TooManyPoints { step_ns: S, minimum_step_ns: 2 * S }.to_string(),
        "step of 1s is too small, minimum step for given range is 2s"
    );
}

#[test]
fn the_range_answer_is_tempos_json() {
    let answer = run(
        "{ resource.service.name = \"db\" } | count_over_time() by (resource.service.name, span.missing)",
        &[trace_a()],
    );
    // jsonpb leaves out zero values: the samples of 0 have no "value".
    assert_eq!(
        query_range_json(&answer),
        json!({
            "series": [{
                "labels": [{"key": "resource.service.name", "value": {"stringValue": "db"}}],
                "samples": [
                    {"timestampMs": "10000"},
                    {"timestampMs": "11000"},
                    {"timestampMs": "12000", "value": 1.0},
                ],
            }],
            "metrics": {},
        })
    );
    let nil = series(vec![("span.x".to_string(), Value::Nil), ("p".to_string(), Value::Float(0.5))], &[(5, 0.25)]);
    assert_eq!(
        query_range_json(&[nil])["series"][0],
        json!({
            "labels": [{"key": "span.x", "value": {"stringValue": "nil"}}, {"key": "p", "value": {"doubleValue": 0.5}}],
            "samples": [{"timestampMs": "5", "value": 0.25}],
        })
    );
    assert_eq!(query_range_json(&[]), json!({"metrics": {}}));
}
