//! The Loki API as Grafana's Loki data source calls it (GET, Unix-nanosecond times, `step`,
//! `direction`, `limit`), over a fixed data set sent through OTLP: three containers' JSON,
//! logfmt and plain-text lines every 10 s for 10 minutes. Expected answers follow Loki's
//! documented semantics.

mod common;

use common::{WakeServer, attribute, string_value};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde_json::{Value, json};

/// 2026-11-23T00:00:00Z.
const T0_S: i64 = 1_795_392_000;
const LINES: i64 = 60;
const EVERY_S: i64 = 10;

fn ns(seconds: i64) -> String {
    (seconds * 1_000_000_000).to_string()
}

/// (namespace, pod, container, stream, line i → body)
type Container = (&'static str, &'static str, &'static str, &'static str, fn(i64) -> String);

fn containers() -> Vec<Container> {
    vec![
        ("ns-a", "pod-1", "app", "stdout", |i| {
            let (level, status) = if i % 5 == 0 { ("error", 500) } else { ("info", 200) };
            format!(r#"{{"level":"{level}","status":{status},"msg":"GET /a/{i}","req":{{"id":"r{i}"}}}}"#)
        }),
        ("ns-a", "pod-2", "app", "stderr", |i| format!("level=warn msg=\"slow query {i}\" duration={}ms", i * 50)),
        ("ns-b", "pod-3", "db", "stdout", |i| format!("db checkpoint complete n={i}")),
    ]
}

fn send_data_set(server: &WakeServer) {
    let mut resource_logs = Vec::new();
    for (namespace, pod, container, stream, body) in containers() {
        let records = (0..LINES)
            .map(|i| LogRecord {
                time_unix_nano: ((T0_S + i * EVERY_S) * 1_000_000_000) as u64,
                body: Some(string_value(&body(i))),
                attributes: vec![attribute("log.iostream", stream)],
                ..Default::default()
            })
            .collect();
        resource_logs.push(ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    attribute("k8s.namespace.name", namespace),
                    attribute("k8s.pod.name", pod),
                    attribute("k8s.container.name", container),
                    attribute("service.name", container),
                ],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope::default()),
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    let response = server
        .client()
        .post(server.otlp_url("/v1/logs"))
        .header("content-type", "application/x-protobuf")
        .body(ExportLogsServiceRequest { resource_logs }.encode_to_vec())
        .send()
        .expect("POST /v1/logs");
    assert_eq!(response.status(), 200);
}

fn get(server: &WakeServer, path: &str, params: &[(&str, &str)]) -> (u16, String) {
    let url = reqwest::Url::parse_with_params(&server.api_url(path), params).expect("URL");
    let response = server.client().get(url).send().expect("GET");
    (response.status().as_u16(), response.text().unwrap_or_default())
}

fn get_json(server: &WakeServer, path: &str, params: &[(&str, &str)]) -> Value {
    let (status, body) = get(server, path, params);
    assert_eq!(status, 200, "{path} {params:?}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body}"))
}

fn range(server: &WakeServer, query: &str, extra: &[(&str, &str)]) -> Value {
    let (start, end) = (ns(T0_S), ns(T0_S + 3600));
    let mut params = vec![("query", query), ("start", start.as_str()), ("end", end.as_str()), ("step", "60000ms")];
    params.extend_from_slice(extra);
    let answer = get_json(server, "/loki/api/v1/query_range", &params);
    assert_eq!(answer["status"], "success", "{answer}");
    answer["data"].clone()
}

/// The lines of a `streams` answer, flattened in answer order.
fn lines(data: &Value) -> Vec<String> {
    assert_eq!(data["resultType"], "streams", "{data}");
    data["result"]
        .as_array()
        .expect("result")
        .iter()
        .flat_map(|s| s["values"].as_array().expect("values").iter().map(|v| v[1].as_str().expect("line").to_string()))
        .collect()
}

fn start() -> (tempfile::TempDir, WakeServer) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = WakeServer::start(dir.path(), &[]);
    send_data_set(&server);
    server.wait_for_count("SELECT count(*) FROM logs", 3 * LINES as u64, std::time::Duration::from_secs(5));
    (dir, server)
}

#[test]
fn grafana_health_check_and_metadata_calls() {
    let (_dir, server) = start();
    // Grafana's data source health check: `vector(1)+vector(1)` must be one sample of 2.
    let answer = get_json(&server, "/loki/api/v1/query", &[("query", "vector(1)+vector(1)"), ("time", "4000000000")]);
    assert_eq!(answer["data"]["resultType"], "vector");
    // Ten digits are Unix seconds, as Loki reads them; nineteen are nanoseconds.
    assert_eq!(answer["data"]["result"], json!([{ "metric": {}, "value": [4_000_000_000u64, "2"] }]));
    let answer =
        get_json(&server, "/loki/api/v1/query", &[("query", "vector(1)+vector(1)"), ("time", "4000000000000000000")]);
    assert_eq!(answer["data"]["result"], json!([{ "metric": {}, "value": [4_000_000_000u64, "2"] }]));

    let (start, end) = (ns(T0_S - 60), ns(T0_S + 3600));
    let window = [("start", start.as_str()), ("end", end.as_str())];
    let labels = get_json(&server, "/loki/api/v1/labels", &window);
    assert_eq!(
        labels["data"],
        json!(["k8s_container_name", "k8s_namespace_name", "k8s_pod_name", "service_name", "stream"])
    );
    for name in ["k8s_namespace_name", "namespace"] {
        let values = get_json(&server, &format!("/loki/api/v1/label/{name}/values"), &window);
        assert_eq!(values["data"], json!(["ns-a", "ns-b"]), "{name}");
    }
    let scoped = get_json(
        &server,
        "/loki/api/v1/label/k8s_pod_name/values",
        &[("start", start.as_str()), ("end", end.as_str()), ("query", r#"{namespace="ns-a"}"#)],
    );
    assert_eq!(scoped["data"], json!(["pod-1", "pod-2"]));
    assert_eq!(get_json(&server, "/loki/api/v1/label/no_such_label/values", &window)["data"], json!([]));

    let series = get_json(
        &server,
        "/loki/api/v1/series",
        &[("match[]", r#"{k8s_namespace_name="ns-a"}"#), ("start", start.as_str()), ("end", end.as_str())],
    );
    assert_eq!(
        series["data"],
        json!([
            { "k8s_container_name": "app", "k8s_namespace_name": "ns-a", "k8s_pod_name": "pod-1", "service_name": "app", "stream": "stdout" },
            { "k8s_container_name": "app", "k8s_namespace_name": "ns-a", "k8s_pod_name": "pod-2", "service_name": "app", "stream": "stderr" },
        ])
    );

    let stats = get_json(
        &server,
        "/loki/api/v1/index/stats",
        &[("query", r#"{namespace="ns-b"}"#), ("start", start.as_str()), ("end", end.as_str())],
    );
    let bytes: usize = (0..LINES).map(|i| format!("db checkpoint complete n={i}").len()).sum();
    assert_eq!(stats, json!({ "streams": 1, "chunks": 1, "entries": 60, "bytes": bytes }));

    let volume = get_json(
        &server,
        "/loki/api/v1/index/volume",
        &[("query", r#"{namespace=~"ns-.*"}"#), ("start", start.as_str()), ("end", end.as_str())],
    );
    assert_eq!(volume["data"]["resultType"], "vector");
    let namespaces: Vec<&Value> =
        volume["data"]["result"].as_array().expect("result").iter().map(|r| &r["metric"]).collect();
    assert_eq!(namespaces, vec![&json!({ "k8s_namespace_name": "ns-a" }), &json!({ "k8s_namespace_name": "ns-b" })]);

    assert_eq!(get(&server, "/ready", &[]).0, 200);
    assert_eq!(get_json(&server, "/loki/api/v1/status/buildinfo", &[])["version"], env!("CARGO_PKG_VERSION"));
}

#[test]
fn log_queries_filter_parse_limit_and_order() {
    let (_dir, server) = start();
    // Backward (the default): newest first; `limit` counts lines across streams.
    let newest = lines(&range(&server, r#"{namespace="ns-b"}"#, &[("limit", "3")]));
    assert_eq!(
        newest,
        vec!["db checkpoint complete n=59", "db checkpoint complete n=58", "db checkpoint complete n=57"]
    );
    let oldest = lines(&range(&server, r#"{namespace="ns-b"}"#, &[("limit", "2"), ("direction", "forward")]));
    assert_eq!(oldest, vec!["db checkpoint complete n=0", "db checkpoint complete n=1"]);
    // Entry times are nanosecond strings.
    let data = range(&server, r#"{namespace="ns-b"}"#, &[("limit", "1")]);
    assert_eq!(data["result"][0]["values"][0][0], ns(T0_S + 590));
    assert_eq!(data["result"][0]["stream"]["stream"], "stdout");

    // Chained line filters, regex filters and their negations.
    let filtered = lines(&range(&server, r#"{namespace="ns-b"} |= "n=1" != "n=10" |~ "n=1[0-9]$""#, &[]));
    assert_eq!(filtered.len(), 9, "{filtered:?}");
    let negated = lines(&range(&server, r#"{namespace="ns-b"} !~ "n=[0-9]$""#, &[("limit", "1000")]));
    assert_eq!(negated.len(), 50);
    // Once flushed, `|=` is narrowed by the full-text index and decided on the text: same answer.
    server.flush();
    let flushed = lines(&range(&server, r#"{namespace="ns-b"} |= "n=1" != "n=10" |~ "n=1[0-9]$""#, &[]));
    assert_eq!(flushed, filtered);
    let words = lines(&range(&server, r#"{namespace="ns-a"} |= "slow query 4""#, &[("limit", "1000")]));
    assert_eq!(words.len(), 11, "slow query 4 and 40 to 49: {words:?}");

    // `| json` with a numeric label filter: every fifth line has status 500.
    let data = range(&server, r#"{k8s_pod_name="pod-1"} | json | status >= 500"#, &[("limit", "1000")]);
    let errors = lines(&data);
    assert_eq!(errors.len(), 12);
    let stream = &data["result"][0]["stream"];
    assert_eq!(stream["level"], "error");
    assert_eq!(stream["status"], "500");
    assert_eq!(stream["k8s_pod_name"], "pod-1");

    // `| logfmt` with a duration filter: duration = 50 ms × i, so i > 20 passes `> 1s`.
    let slow = lines(&range(&server, r#"{k8s_pod_name="pod-2"} | logfmt | duration > 1s"#, &[("limit", "1000")]));
    assert_eq!(slow.len(), 39);

    // `| line_format` rewrites the line.
    let formatted = lines(&range(
        &server,
        r#"{k8s_pod_name="pod-1"} | json | status = 500 | line_format "{{.level}}: {{.msg}}""#,
        &[("limit", "1"), ("direction", "forward")],
    ));
    assert_eq!(formatted, vec!["error: GET /a/0"]);
}

/// Expected `count_over_time(...[1m])` at t = T0 + 60 k: lines at T0 + 10 i in (t - 60, t].
fn expected_counts(steps: std::ops::RangeInclusive<i64>) -> Vec<(i64, i64)> {
    steps
        .map(|k| (T0_S + 60 * k, (0..LINES).filter(|i| 10 * i > 60 * k - 60 && 10 * i <= 60 * k).count() as i64))
        .filter(|(_, n)| *n > 0)
        .collect()
}

fn matrix(data: &Value) -> Vec<(Value, Vec<(i64, String)>)> {
    assert_eq!(data["resultType"], "matrix", "{data}");
    data["result"]
        .as_array()
        .expect("result")
        .iter()
        .map(|series| {
            let points = series["values"]
                .as_array()
                .expect("values")
                .iter()
                .map(|p| (p[0].as_i64().expect("whole seconds"), p[1].as_str().expect("value").to_string()))
                .collect();
            (series["metric"].clone(), points)
        })
        .collect()
}

#[test]
fn metric_queries_count_rate_aggregate_and_combine() {
    let (_dir, server) = start();
    let (start, end) = (ns(T0_S), ns(T0_S + 660));
    let metric = |query: &str| {
        let params = [("query", query), ("start", start.as_str()), ("end", end.as_str()), ("step", "60")];
        let answer = get_json(&server, "/loki/api/v1/query_range", &params);
        matrix(&answer["data"])
    };
    let counts: Vec<(i64, String)> = expected_counts(0..=11).into_iter().map(|(t, n)| (t, n.to_string())).collect();

    let by_pod = metric(r#"sum by (k8s_pod_name) (count_over_time({namespace="ns-a"}[1m]))"#);
    assert_eq!(by_pod.len(), 2);
    assert_eq!(by_pod[0].0, json!({ "k8s_pod_name": "pod-1" }));
    assert_eq!(by_pod[0].1, counts);
    assert_eq!(by_pod[1].0, json!({ "k8s_pod_name": "pod-2" }));

    // The same through the pipeline path (a parser stage) must agree.
    let parsed = metric(r#"sum by (k8s_pod_name) (count_over_time({k8s_pod_name="pod-1"} | json [1m]))"#);
    assert_eq!(parsed, vec![(json!({ "k8s_pod_name": "pod-1" }), counts.clone())]);

    let rate = metric(r#"sum(rate({namespace="ns-b"}[1m]))"#);
    let rates: Vec<(i64, String)> =
        expected_counts(0..=11).into_iter().map(|(t, n)| (t, (n as f64 / 60.0).to_string())).collect();
    assert_eq!(rate, vec![(json!({}), rates)]);

    let total = metric(r#"sum(count_over_time({namespace=~"ns-.*"}[1m])) * 2"#);
    let doubled: Vec<(i64, String)> =
        expected_counts(0..=11).into_iter().map(|(t, n)| (t, (6 * n).to_string())).collect();
    assert_eq!(total, vec![(json!({}), doubled)]);

    let top = metric(r#"topk(1, sum by (k8s_namespace_name) (count_over_time({namespace=~"ns-.*"}[1m])))"#);
    assert_eq!(top.len(), 1);
    assert_eq!(top[0].0, json!({ "k8s_namespace_name": "ns-a" }));

    let unwrapped =
        metric(r#"max by (k8s_pod_name) (max_over_time({k8s_pod_name="pod-1"} | json | unwrap status [10m]))"#);
    assert_eq!(unwrapped[0].1.last().map(|(_, v)| v.as_str()), Some("500"));

    let bytes = metric(r#"sum(bytes_over_time({namespace="ns-b"}[10m]))"#);
    // (T0, T0 + 600]: every line but the first.
    let all: usize = (1..LINES).map(|i| format!("db checkpoint complete n={i}").len()).sum();
    assert_eq!(bytes[0].1.iter().find(|(t, _)| *t == T0_S + 600).map(|(_, v)| v.clone()), Some(all.to_string()));
}

#[test]
fn bad_queries_are_400_with_loki_messages() {
    let (_dir, server) = start();
    let (start, end) = (ns(T0_S), ns(T0_S + 3600));
    for query in [r#"{namespace=~".*"}"#, "{namespace=", r#"{namespace="a"} | json | unwrap"#, r#"{a="b"} |~ "(""#] {
        let (status, body) =
            get(&server, "/loki/api/v1/query_range", &[("query", query), ("start", &start), ("end", &end)]);
        assert_eq!(status, 400, "{query}: {body}");
        assert!(!body.is_empty());
    }
    let (status, body) = get(&server, "/loki/api/v1/query", &[("query", r#"{namespace="ns-a"}"#)]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("instant"), "{body}");
    let (status, _) = get(&server, "/loki/api/v1/query_range", &[("query", r#"{a="b"}"#), ("start", "x")]);
    assert_eq!(status, 400);
}

/// GET with the `X-Query-Tags` header Grafana puts on its supporting queries.
fn get_tagged(server: &WakeServer, path: &str, params: &[(&str, &str)], tags: &str) -> Value {
    let url = reqwest::Url::parse_with_params(&server.api_url(path), params).expect("URL");
    let response = server.client().get(url).header("X-Query-Tags", tags).send().expect("GET");
    assert_eq!(response.status(), 200);
    response.json().expect("JSON")
}

#[test]
fn grafana_explore_volume_and_log_context() {
    let (_dir, server) = start();
    let (start, end) = (ns(T0_S - 3600), ns(T0_S + 3600));

    // Explore's log query: backward, limit, and a `step` even though it is a log query.
    let explore = get_tagged(
        &server,
        "/loki/api/v1/query_range",
        &[
            ("query", r#"{k8s_namespace_name="ns-a"} |= "GET""#),
            ("direction", "backward"),
            ("limit", "1000"),
            ("start", start.as_str()),
            ("end", end.as_str()),
            ("step", "2000ms"),
        ],
        "Source=grafana-explore",
    );
    assert_eq!(explore["status"], "success");
    let found = lines(&explore["data"]);
    assert_eq!(found.len(), LINES as usize, "only pod-1's JSON lines hold GET");
    assert!(found[0].contains("GET /a/59"), "newest first: {}", found[0]);

    // Its log-volume side query: counts per step, grouped by `level` and `detected_level`,
    // neither of which is a stream label here, so one series of every line of the selection.
    let volume = get_tagged(
        &server,
        "/loki/api/v1/query_range",
        &[
            (
                "query",
                r#"sum by (level, detected_level) (count_over_time({k8s_namespace_name="ns-a"} | drop __error__[1m]))"#,
            ),
            ("start", ns(T0_S).as_str()),
            ("end", ns(T0_S + 660).as_str()),
            ("step", "60000ms"),
        ],
        "Source=logvolhist",
    );
    let series = matrix(&volume["data"]);
    assert_eq!(series.len(), 1, "{volume}");
    assert_eq!(series[0].0, json!({}));
    let doubled: Vec<(i64, String)> =
        expected_counts(0..=11).into_iter().map(|(t, n)| (t, (2 * n).to_string())).collect();
    assert_eq!(series[0].1, doubled);

    // Log context of the line of pod-1 at T0 + 300 s, as Grafana asks for it: the line's whole
    // stream selector, 2 h either side, 10 lines. Backward ends at the line's own nanosecond,
    // which Loki's `end` excludes; forward starts at it, which `start` includes.
    let line_ns = (T0_S + 300) * 1_000_000_000;
    let stream = r#"{k8s_container_name="app", k8s_namespace_name="ns-a", k8s_pod_name="pod-1", service_name="app", stream="stdout"}"#;
    let context = |direction: &str, from: i64, to: i64| {
        let (from, to) = (from.to_string(), to.to_string());
        let params = [
            ("query", stream),
            ("direction", direction),
            ("limit", "10"),
            ("start", from.as_str()),
            ("end", to.as_str()),
            ("step", "1000ms"),
        ];
        lines(&get_json(&server, "/loki/api/v1/query_range", &params)["data"])
            .iter()
            .map(|line| serde_json::from_str::<Value>(line).expect("JSON line")["msg"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let two_hours = 7_200 * 1_000_000_000;
    let before = context("backward", line_ns - two_hours, line_ns);
    let expected: Vec<String> = (20..30).rev().map(|i| format!("GET /a/{i}")).collect();
    assert_eq!(before, expected);
    let after = context("forward", line_ns, line_ns + two_hours);
    let expected: Vec<String> = (30..40).map(|i| format!("GET /a/{i}")).collect();
    assert_eq!(after, expected);
    // Near the end of the data, fewer than `limit` lines remain: all of them, nothing else.
    let last = context("forward", (T0_S + 570) * 1_000_000_000, (T0_S + 570) * 1_000_000_000 + two_hours);
    assert_eq!(last, vec!["GET /a/57", "GET /a/58", "GET /a/59"]);

    // A metric panel on a dashboard: an instant query at the panel's end time. (Its window is
    // one bucket: counting it at the instant's nanosecond step once tried to allocate 4.8 TB.)
    let instant = get_json(
        &server,
        "/loki/api/v1/query",
        &[
            ("query", r#"sum by (k8s_namespace_name) (count_over_time({k8s_namespace_name=~"ns-.*"}[10m]))"#),
            ("time", ns(T0_S + 600).as_str()),
        ],
    );
    assert_eq!(instant["data"]["resultType"], "vector");
    assert_eq!(
        instant["data"]["result"],
        json!([
            { "metric": { "k8s_namespace_name": "ns-a" }, "value": [T0_S + 600, "118"] },
            { "metric": { "k8s_namespace_name": "ns-b" }, "value": [T0_S + 600, "59"] },
        ])
    );
}
