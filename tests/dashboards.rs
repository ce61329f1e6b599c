//! The Grafana provisioning in dashboards/ works against Wake: every panel query and every
//! template variable query of every dashboard, with Grafana's variables substituted the way
//! Grafana would, answers without error through Wake's Prometheus and Loki APIs; the
//! Containers and Logs panels return data over a store filled the way the agent fills it
//! (cgroup metrics under scope `wake.agent.cgroup`, container logs with k8s resource
//! attributes); the pipeline panels return data whenever the self-metrics they read exist.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{WakeServer, attribute, now_ns, string_value};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, metric,
    number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use serde_json::Value;

const SECOND: u64 = 1_000_000_000;
/// The data covers the last `HISTORY_S` seconds, one sample every `EVERY_S`.
const HISTORY_S: u64 = 300;
const EVERY_S: u64 = 15;
const TRACE_ID: &str = "5b8efff798038103d269b633813fc60c";
const SPAN_ID: &str = "00f067aa0ba902b7";

fn hex_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex")).collect()
}

/// (namespace, pod, container) of the simulated containers.
const CONTAINERS: [(&str, &str, &str); 3] =
    [("shop", "cart-0", "cart"), ("shop", "checkout-0", "checkout"), ("db", "postgres-0", "postgres")];

fn dashboards_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards")
}

// ---------------------------------------------------------------------------------------------
// The provisioning files

/// A Loki derived field: how Grafana finds a trace id in a log line, and where it links.
struct DerivedField {
    matcher_type: String,
    matcher_regex: String,
    datasource_uid: String,
}

/// What the data source provisioning declares.
struct Provisioning {
    /// uid → type of every data source.
    sources: BTreeMap<String, String>,
    derived_fields: Vec<DerivedField>,
    /// The `jsonData` of the Tempo data source: its links to logs and metrics.
    tempo: serde_yaml::Value,
}

fn provisioned_datasources() -> Provisioning {
    let path = dashboards_dir().join("provisioning/datasources/wake.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut sources = BTreeMap::new();
    let mut derived_fields = Vec::new();
    let mut tempo = None;
    for source in yaml["datasources"].as_sequence().expect("a datasources list") {
        let uid = source["uid"].as_str().expect("every data source has a uid");
        let kind = source["type"].as_str().expect("every data source has a type");
        let url = source["url"].as_str().unwrap_or_default();
        // Every API answers on Wake's query port; Jaeger's under its /jaeger prefix.
        let expected = if kind == "jaeger" { "http://wake:4380/jaeger" } else { "http://wake:4380" };
        assert_eq!(url, expected, "{uid}");
        if kind == "prometheus" {
            assert_eq!(source["jsonData"]["httpMethod"].as_str(), Some("POST"));
        }
        if kind == "tempo" {
            tempo = Some(source["jsonData"].clone());
        }
        for field in source["jsonData"]["derivedFields"].as_sequence().into_iter().flatten() {
            let text =
                |key: &str| field[key].as_str().unwrap_or_else(|| panic!("derived field without {key}")).to_string();
            assert_eq!(field["url"].as_str(), Some("$${__value.raw}"), "an internal link passes the id as the query");
            derived_fields.push(DerivedField {
                matcher_type: text("matcherType"),
                matcher_regex: text("matcherRegex"),
                datasource_uid: text("datasourceUid"),
            });
        }
        sources.insert(uid.to_string(), kind.to_string());
    }
    let providers = dashboards_dir().join("provisioning/dashboards/wake.yaml");
    let text = std::fs::read_to_string(&providers).expect("the dashboard provider file");
    let yaml: serde_yaml::Value = serde_yaml::from_str(&text).expect("the dashboard provider file is YAML");
    assert_eq!(yaml["providers"][0]["options"]["path"].as_str(), Some("/var/lib/grafana/dashboards/wake"));
    for field in &derived_fields {
        assert_eq!(sources.get(&field.datasource_uid).map(String::as_str), Some("tempo"), "{}", field.matcher_regex);
    }
    assert!(!derived_fields.is_empty(), "log lines link to their traces");
    Provisioning { sources, derived_fields, tempo: tempo.expect("a Tempo data source") }
}

/// Every `dashboards/*.json`, parsed.
fn dashboards() -> Vec<(String, Value)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dashboards_dir()).expect("dashboards/") {
        let path = entry.expect("a directory entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            let text = std::fs::read_to_string(&path).expect("reading a dashboard");
            let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            found.push((path.file_name().unwrap().to_string_lossy().into_owned(), json));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// The panels of a dashboard, those nested in collapsed rows included, rows themselves not.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        if panel["type"] == "row" {
            out.extend(panel["panels"].as_array().into_iter().flatten());
        } else {
            out.push(panel);
        }
    }
    out
}

fn uid_of(datasource: &Value) -> Option<&str> {
    datasource["uid"].as_str()
}

// ---------------------------------------------------------------------------------------------
// Grafana's variables

/// One assignment of the dashboard variables (name → value as Grafana interpolates it).
type Values = Vec<(&'static str, &'static str)>;

/// Replaces `$name` and `${name}` of every variable, the longest names first so that
/// `$__rate_interval` is not taken for `$__rate`.
fn substitute(text: &str, values: &Values) -> String {
    let mut sorted = values.clone();
    sorted.sort_by_key(|(name, _)| std::cmp::Reverse(name.len()));
    let mut out = text.to_string();
    for (name, value) in sorted {
        out = out.replace(&format!("${{{name}}}"), value).replace(&format!("${name}"), value);
    }
    assert!(!out.contains('$'), "a variable is left in {out:?} (from {text:?})");
    out
}

/// The assignments each query is run under: the dashboards' defaults ("All" is the variable's
/// allValue, the search box empty) and concrete selections.
fn assignments() -> Vec<Values> {
    let intervals: Values = vec![
        ("__rate_interval", "1m"),
        ("__interval", "1m"),
        ("__auto", "1m"),
        ("__range", "10m"),
        ("__interval_ms", "60000"),
        ("__range_s", "600"),
    ];
    let mut all = intervals.clone();
    all.extend([
        ("namespace", ".*"),
        ("pod", ".*"),
        ("container", ".*"),
        ("search", ""),
        ("node", ".*"),
        ("image", ".*"),
    ]);
    let mut concrete = intervals.clone();
    concrete.extend([
        ("namespace", "shop"),
        ("pod", "cart-0"),
        ("container", "cart"),
        ("search", "error"),
        ("node", "node-1"),
        ("image", "registry.example/cart:1.0"),
    ]);
    let mut multi = intervals;
    multi.extend([
        ("namespace", "(shop|db)"),
        ("pod", ".+"),
        ("container", ".+"),
        ("search", "GET"),
        ("node", "node-.+"),
        ("image", "registry.example/.+"),
    ]);
    vec![all, concrete, multi]
}

// ---------------------------------------------------------------------------------------------
// Filling Wake

fn post(server: &WakeServer, path: &str, body: Vec<u8>) {
    let response = server
        .client()
        .post(server.otlp_url(path))
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = response.status();
    assert_eq!(status, 200, "POST {path}: {}", response.text().unwrap_or_default());
}

/// The resource of one run of a container, as the agent sends it: each run (restart) is a
/// container of its own, with its restart number from its log file's name.
fn container_resource((namespace, pod, container): (&str, &str, &str), run: i64) -> Resource {
    Resource {
        attributes: vec![
            attribute("k8s.namespace.name", namespace),
            attribute("k8s.pod.name", pod),
            attribute("k8s.container.name", container),
            attribute("k8s.node.name", "node-1"),
            attribute("container.id", &format!("{pod}{container}{run}0123456789abcdef")),
            attribute("container.image.name", &format!("registry.example/{container}:1.0")),
            attribute("service.name", container),
            KeyValue {
                key: "k8s.container.restart_count".into(),
                value: Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                    value: Some(opentelemetry_proto::tonic::common::v1::any_value::Value::IntValue(run)),
                }),
                ..Default::default()
            },
        ],
        ..Default::default()
    }
}

/// Container logs of the last `HISTORY_S` seconds: JSON access lines on stdout, every fourth
/// an error, and an error on stderr now and then with a trace id.
fn send_logs(server: &WakeServer, now: u64) -> u64 {
    let mut resource_logs = Vec::new();
    let mut count = 0;
    for (c, container) in CONTAINERS.into_iter().enumerate() {
        let mut records = Vec::new();
        for i in 0..HISTORY_S / 5 {
            let time = now - HISTORY_S * SECOND + i * 5 * SECOND + c as u64 * 1000;
            let (stream, body) = if i % 4 == 0 {
                ("stderr", format!("level=error msg=\"upstream failed\" trace_id={TRACE_ID} attempt={i}"))
            } else {
                ("stdout", format!(r#"{{"level":"info","msg":"GET /items/{i}","status":200,"trace_id":"{TRACE_ID}"}}"#))
            };
            // The first container's error lines carry the OTLP trace context of the span.
            let (trace_id, span_id) =
                if c == 0 && i % 4 == 0 { (hex_bytes(TRACE_ID), hex_bytes(SPAN_ID)) } else { (Vec::new(), Vec::new()) };
            records.push(LogRecord {
                time_unix_nano: time,
                observed_time_unix_nano: time,
                body: Some(string_value(&body)),
                attributes: vec![attribute("log.iostream", stream)],
                trace_id,
                span_id,
                ..Default::default()
            });
        }
        count += records.len() as u64;
        resource_logs.push(ResourceLogs {
            resource: Some(container_resource(container, 0)),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope { name: "wake.agent.logs".into(), ..Default::default() }),
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        });
    }
    post(server, "/v1/logs", ExportLogsServiceRequest { resource_logs }.encode_to_vec());
    count
}

/// The agent's lifecycle events for the containers: each started; the cart's first run was
/// OOM-killed and its second (restart 1) runs now.
fn send_lifecycle(server: &WakeServer, now: u64) {
    let event = |container, run: i64, name: &str, time: u64, exit: Option<(i64, &str)>| {
        let mut attributes = vec![attribute("event.name", name)];
        if let Some((code, reason)) = exit {
            attributes.push(KeyValue {
                key: "container.exit_code".into(),
                value: Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                    value: Some(opentelemetry_proto::tonic::common::v1::any_value::Value::IntValue(code)),
                }),
                ..Default::default()
            });
            attributes.push(attribute("container.exit_reason", reason));
        }
        ResourceLogs {
            resource: Some(container_resource(container, run)),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope { name: "wake.agent.lifecycle".into(), ..Default::default() }),
                log_records: vec![LogRecord {
                    time_unix_nano: time,
                    event_name: name.into(),
                    body: Some(string_value(name)),
                    attributes,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }
    };
    let start = now - HISTORY_S * SECOND;
    let mut resource_logs: Vec<ResourceLogs> =
        CONTAINERS.into_iter().map(|c| event(c, 0, "container.start", start, None)).collect();
    resource_logs.push(event(CONTAINERS[0], 0, "container.stop", start + 60 * SECOND, Some((137, "OOMKilled"))));
    resource_logs.push(event(CONTAINERS[0], 1, "container.start", start + 61 * SECOND, None));
    post(server, "/v1/logs", ExportLogsServiceRequest { resource_logs }.encode_to_vec());
}

fn point(value: number_data_point::Value, attributes: Vec<KeyValue>, start: u64, now: u64) -> NumberDataPoint {
    NumberDataPoint {
        attributes,
        start_time_unix_nano: start,
        time_unix_nano: now,
        value: Some(value),
        ..Default::default()
    }
}

fn sum(name: &str, unit: &str, data_points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        data: Some(metric::Data::Sum(Sum {
            data_points,
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        })),
        ..Default::default()
    }
}

fn gauge(name: &str, unit: &str, data_points: Vec<NumberDataPoint>) -> Metric {
    Metric {
        name: name.into(),
        unit: unit.into(),
        data: Some(metric::Data::Gauge(Gauge { data_points })),
        ..Default::default()
    }
}

/// What collector/src/cgroup.rs sends for one container at one time: the same names, units,
/// types, point attributes and scope.
fn cgroup_metrics(c: u64, tick: u64, start: u64, now: u64) -> Vec<Metric> {
    use number_data_point::Value::{AsDouble, AsInt};
    let int = |v: u64| AsInt(v as i64);
    let total = |v: u64| vec![point(int(v), Vec::new(), start, now)];
    let current = |v: u64| vec![point(int(v), Vec::new(), 0, now)];
    let seconds = |v: f64| vec![point(AsDouble(v), Vec::new(), start, now)];
    let t = tick as f64;
    vec![
        sum(
            "container.cpu.time",
            "s",
            vec![
                point(AsDouble(t * 2.0 * (c + 1) as f64), vec![attribute("cpu.mode", "user")], start, now),
                point(AsDouble(t * 0.5), vec![attribute("cpu.mode", "system")], start, now),
            ],
        ),
        sum("container.cpu.throttling_data.throttled_periods", "{period}", total(tick * 3)),
        sum("container.cpu.throttling_data.throttled_time", "s", seconds(t * 0.2)),
        gauge("container.cpu.limit", "{cpu}", vec![point(AsDouble(2.0), Vec::new(), 0, now)]),
        gauge("container.memory.usage", "By", current((300 + tick) << 20)),
        gauge("container.memory.working_set", "By", current((200 + tick + 50 * c) << 20)),
        gauge("container.memory.rss", "By", current((150 + tick) << 20)),
        gauge("container.memory.limit", "By", current(512 << 20)),
        sum("container.memory.page_faults", "{fault}", total(tick * 1000)),
        sum("container.memory.major_page_faults", "{fault}", total(tick)),
        sum("container.memory.oom_events", "{event}", total(tick / 10)),
        sum(
            "container.disk.io",
            "By",
            vec![
                point(int(tick * 4096), vec![attribute("disk.io.direction", "read")], start, now),
                point(int(tick * 8192), vec![attribute("disk.io.direction", "write")], start, now),
            ],
        ),
        gauge("container.pids.count", "{pid}", current(10 + c)),
        gauge("container.pids.limit", "{pid}", current(4096)),
    ]
}

fn send_cgroup_metrics(server: &WakeServer, now: u64) {
    let start = now - (HISTORY_S + 60) * SECOND;
    for tick in 0..=HISTORY_S / EVERY_S {
        let time = now - HISTORY_S * SECOND + tick * EVERY_S * SECOND;
        let resource_metrics = CONTAINERS
            .into_iter()
            .enumerate()
            .map(|(c, container)| ResourceMetrics {
                // The first container restarts halfway through.
                resource: Some(container_resource(container, i64::from(c == 0 && tick > HISTORY_S / EVERY_S / 2))),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope { name: "wake.agent.cgroup".into(), ..Default::default() }),
                    metrics: cgroup_metrics(c as u64, tick + 1, start, time),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        post(server, "/v1/metrics", ExportMetricsServiceRequest { resource_metrics }.encode_to_vec());
    }
}

/// One span of the trace the log lines mention, for the derived-field links.
fn send_span(server: &WakeServer, now: u64) {
    let span = Span {
        trace_id: hex_bytes(TRACE_ID),
        span_id: hex_bytes(SPAN_ID),
        name: "GET /items".into(),
        kind: 2,
        start_time_unix_nano: now - 2 * SECOND,
        end_time_unix_nano: now - SECOND,
        ..Default::default()
    };
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(container_resource(CONTAINERS[0], 0)),
            scope_spans: vec![ScopeSpans { spans: vec![span], ..Default::default() }],
            ..Default::default()
        }],
    };
    post(server, "/v1/traces", request.encode_to_vec());
}

// ---------------------------------------------------------------------------------------------
// Querying like Grafana

fn get_json(server: &WakeServer, url: &str, params: &[(&str, &str)]) -> Value {
    let url = reqwest::Url::parse_with_params(url, params).expect("a URL");
    let response = server.client().get(url.clone()).send().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    let body = response.text().unwrap_or_default();
    assert_eq!(status, 200, "GET {url} answered {status}: {body}\nserver log tail:\n{}", server.log_tail());
    let json: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: not JSON ({e}): {body}"));
    assert_eq!(json["status"], "success", "GET {url} answered {json}");
    json
}

/// Runs a panel query over the last ten minutes; returns the series (or streams).
fn run_panel_query(server: &WakeServer, kind: &str, panel_type: &str, expr: &str) -> Vec<Value> {
    let end_s = now_ns() / SECOND + 1;
    let start_s = end_s - 600;
    let answer = match kind {
        "prometheus" => {
            let (start, end) = (start_s.to_string(), end_s.to_string());
            let params = [("query", expr), ("start", start.as_str()), ("end", end.as_str()), ("step", "60")];
            get_json(server, &server.api_url("/api/v1/query_range"), &params)
        }
        "loki" => {
            let (start, end) = ((start_s * SECOND).to_string(), (end_s * SECOND).to_string());
            let params = [
                ("query", expr),
                ("start", start.as_str()),
                ("end", end.as_str()),
                ("step", "60s"),
                ("limit", "1000"),
                ("direction", "backward"),
            ];
            let answer = get_json(server, &server.api_url("/loki/api/v1/query_range"), &params);
            let expected = if panel_type == "logs" { "streams" } else { "matrix" };
            assert_eq!(answer["data"]["resultType"], expected, "{expr}: {answer}");
            answer
        }
        other => panic!("no data source type {other}"),
    };
    answer["data"]["result"].as_array().cloned().unwrap_or_else(|| panic!("{expr}: {answer}"))
}

/// Runs a variable query the way Grafana's data sources do; returns the values.
fn run_variable_query(server: &WakeServer, kind: &str, definition: &str) -> Vec<Value> {
    let inner = definition
        .strip_prefix("label_values(")
        .and_then(|rest| rest.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unsupported variable query {definition:?}"));
    let end_s = now_ns() / SECOND + 1;
    let start_s = end_s - 600;
    let answer = match kind {
        "prometheus" => {
            // label_values(selector, label): /api/v1/label/<label>/values?match[]=<selector>.
            let (selector, label) = inner.rsplit_once(',').expect("label_values(metric, label)");
            let (start, end) = (start_s.to_string(), end_s.to_string());
            let params = [("match[]", selector.trim()), ("start", start.as_str()), ("end", end.as_str())];
            get_json(server, &server.api_url(&format!("/api/v1/label/{}/values", label.trim())), &params)
        }
        "loki" => {
            let (start, end) = ((start_s * SECOND).to_string(), (end_s * SECOND).to_string());
            let params = [("start", start.as_str()), ("end", end.as_str())];
            get_json(server, &server.api_url(&format!("/loki/api/v1/label/{}/values", inner.trim())), &params)
        }
        other => panic!("no data source type {other}"),
    };
    answer["data"].as_array().cloned().unwrap_or_else(|| panic!("{definition}: {answer}"))
}

/// The metric names of Wake's self-metrics that `expr` reads.
fn self_metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("wake_") {
        let name: String =
            rest[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect::<String>();
        rest = &rest[at + name.len()..];
        names.push(name);
    }
    names
}

fn metric_names(server: &WakeServer) -> BTreeSet<String> {
    let answer = get_json(server, &server.api_url("/api/v1/label/__name__/values"), &[]);
    answer["data"].as_array().expect("names").iter().filter_map(|n| n.as_str().map(str::to_string)).collect()
}

/// Tempo's trace by id, as the Tempo data source asks for it.
fn tempo_trace(server: &WakeServer, id: &str) -> Value {
    let url = server.api_url(&format!("/api/traces/{id}"));
    let response = server.client().get(&url).send().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status().as_u16(), 200, "GET {url}");
    response.json().expect("a trace answers JSON")
}

/// The links between the provisioned data sources, followed as Grafana follows them: from a
/// log line to its trace, from a span to its container's logs and its service's metrics.
fn check_trace_links(server: &WakeServer, provisioning: &Provisioning) {
    let end_ns = now_ns() + SECOND;
    let (start, end) = ((end_ns - 600 * SECOND).to_string(), end_ns.to_string());
    let url = server.api_url("/loki/api/v1/query_range");
    let params = [("query", r#"{k8s_pod_name="cart-0"}"#), ("start", &start), ("end", &end), ("limit", "1000")];
    let answer: Value = server
        .client()
        .get(reqwest::Url::parse_with_params(&url, params).expect("a URL"))
        .header("X-Loki-Response-Encoding-Flags", "categorize-labels")
        .send()
        .expect("a Loki query")
        .json()
        .expect("Loki answers JSON");
    let entries: Vec<&Value> = answer["data"]["result"]
        .as_array()
        .expect("streams")
        .iter()
        .flat_map(|stream| stream["values"].as_array().expect("values"))
        .collect();
    for field in &provisioning.derived_fields {
        // What Grafana finds in the lines with this field: a label (structured metadata
        // included) named by the matcher, or the regex's first group in the line.
        let regex = regex::Regex::new(&field.matcher_regex).expect("the matcher regex compiles");
        let found: BTreeSet<String> = entries
            .iter()
            .filter_map(|entry| match field.matcher_type.as_str() {
                "label" => entry[2]["structuredMetadata"][&field.matcher_regex].as_str().map(str::to_string),
                "regex" => regex.captures(entry[1].as_str()?).map(|c| c[1].to_string()),
                other => panic!("matcher type {other}"),
            })
            .collect();
        assert_eq!(found, BTreeSet::from([TRACE_ID.to_string()]), "{}: {answer}", field.matcher_regex);
        let trace = tempo_trace(server, TRACE_ID);
        assert_eq!(trace["batches"][0]["scopeSpans"][0]["spans"][0]["spanId"], SPAN_ID, "{trace}");
    }

    // From the span to the logs of its pod: tracesToLogsV2's query with the span's tags.
    let trace = tempo_trace(server, TRACE_ID);
    let tags: BTreeMap<String, String> = trace["batches"][0]["resource"]["attributes"]
        .as_array()
        .expect("resource attributes")
        .iter()
        .filter_map(|kv| Some((kv["key"].as_str()?.to_string(), kv["value"]["stringValue"].as_str()?.to_string())))
        .collect();
    let logs = &provisioning.tempo["tracesToLogsV2"];
    assert_eq!(logs["customQuery"].as_bool(), Some(true));
    let mut query = logs["query"].as_str().expect("a logs query").replace("$$", "$");
    for (key, value) in &tags {
        query = query.replace(&format!(r#"${{__span.tags["{key}"]}}"#), value);
    }
    let query = query.replace("${__trace.traceId}", TRACE_ID);
    assert!(!query.contains("${"), "every variable is substituted: {query}");
    let lines = run_panel_query(server, "loki", "logs", &query);
    let lines: Vec<&Value> = lines.iter().flat_map(|stream| stream["values"].as_array().expect("values")).collect();
    assert!(!lines.is_empty(), "{query} found no lines");
    assert!(lines.iter().all(|line| line[1].as_str().unwrap().contains("upstream failed")), "{lines:?}");

    // From the span to its service's RED metrics: tracesToMetrics with `$__tags` expanded.
    let metrics = &provisioning.tempo["tracesToMetrics"];
    let mut selector = Vec::new();
    for tag in metrics["tags"].as_sequence().expect("metric tags") {
        let key = tag["key"].as_str().expect("a tag key");
        let label = tag["value"].as_str().unwrap_or(key);
        selector.push(format!(r#"{label}="{}""#, tags[key]));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    for query in metrics["queries"].as_sequence().expect("metric queries") {
        let name = query["name"].as_str().expect("a query name");
        let expr =
            query["query"].as_str().expect("a query").replace("$$", "$").replace("$__tags", &selector.join(", "));
        loop {
            let series = run_panel_query(server, "prometheus", "timeseries", &expr);
            // The span succeeded: its error rate has no series, the others must have one.
            if name.contains("Error") || !series.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "{name}: {expr} has no series\n{}", server.log_tail());
            std::thread::sleep(Duration::from_millis(250));
        }
    }
    assert_eq!(provisioning.tempo["serviceMap"]["datasourceUid"].as_str(), Some("wake-prometheus"));
    assert_eq!(provisioning.tempo["lokiSearch"]["datasourceUid"].as_str(), Some("wake-loki"));
}

#[test]
fn every_dashboard_query_runs_against_wake() {
    let provisioning = provisioned_datasources();
    let datasources = &provisioning.sources;
    let dashboards = dashboards();
    let uids: BTreeSet<&str> = dashboards.iter().filter_map(|(_, d)| d["uid"].as_str()).collect();
    assert_eq!(uids, BTreeSet::from(["wake-containers", "wake-inventory", "wake-logs", "wake-pipeline"]));

    let dir = tempfile::tempdir().expect("temp dir");
    // Span metrics every second, so that the Tempo data source's metric links find some.
    let config = dir.path().join("wake.yaml");
    // And the inventory's kube-state-metrics series every second.
    std::fs::write(
        &config,
        "store:\n  span_metrics:\n    collection_interval_secs: 1\n  inventory:\n    kube_state_metrics_interval_secs: 1\n",
    )
    .expect("config");
    let config = config.to_str().expect("utf-8");
    let server = WakeServer::start(&dir.path().join("data"), &["--self-metrics-interval", "1s", "--config", config]);
    let now = now_ns();
    let logs = send_logs(&server, now);
    send_cgroup_metrics(&server, now);
    send_span(&server, now);
    send_lifecycle(&server, now);
    server.wait_for_count("SELECT count(*) FROM logs", logs, Duration::from_secs(10));
    server.wait_for_count("SELECT count(*) FROM containers", 4, Duration::from_secs(10));
    server.wait_for_count("SELECT count(*) FROM spans", 1, Duration::from_secs(10));
    server.flush();

    // The server stores its registry every second; rate() wants two snapshots after the
    // flush above, in the one-minute window.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !["wake_server_flush_duration_seconds_bucket", "kube_pod_container_status_last_terminated_reason"]
        .iter()
        .all(|name| metric_names(&server).contains(*name))
    {
        assert!(Instant::now() < deadline, "no self-metrics stored\n{}", server.log_tail());
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));
    // A few queries, so that the query histograms have observations in the window.
    server.sql("SELECT count(*) FROM metrics");
    std::thread::sleep(Duration::from_millis(1500));
    let names = metric_names(&server);

    check_trace_links(&server, &provisioning);

    let mut failures = Vec::new();
    let mut checked = 0;
    for (file, dashboard) in &dashboards {
        assert_eq!(dashboard["schemaVersion"], 39, "{file}");
        let needs_data = file != "pipeline.json";

        for variable in dashboard["templating"]["list"].as_array().into_iter().flatten() {
            if variable["type"] != "query" {
                continue;
            }
            let name = variable["name"].as_str().unwrap_or("?");
            let uid = uid_of(&variable["datasource"]).unwrap_or_else(|| panic!("{file}: variable {name} has no uid"));
            let kind = datasources.get(uid).unwrap_or_else(|| panic!("{file}: variable {name}: no data source {uid}"));
            let definition = variable["definition"].as_str().expect("a variable definition");
            if let Some(query) = variable["query"]["query"].as_str() {
                assert_eq!(query, definition, "{file}: variable {name}");
            }
            let definitions: BTreeSet<String> = assignments().iter().map(|v| substitute(definition, v)).collect();
            for definition in definitions {
                let result = run_variable_query(&server, kind, &definition);
                checked += 1;
                if needs_data && result.is_empty() {
                    failures.push(format!("{file}: variable {name}: {definition} has no values"));
                }
            }
        }

        for panel in panels(dashboard) {
            let title = panel["title"].as_str().unwrap_or("?");
            let panel_type = panel["type"].as_str().unwrap_or("?");
            let panel_uid =
                uid_of(&panel["datasource"]).unwrap_or_else(|| panic!("{file}: {title}: no data source uid"));
            assert!(datasources.contains_key(panel_uid), "{file}: {title}: no data source {panel_uid}");
            let targets = panel["targets"].as_array().filter(|t| !t.is_empty());
            for target in targets.unwrap_or_else(|| panic!("{file}: {title}: no targets")) {
                let uid = uid_of(&target["datasource"]).unwrap_or(panel_uid);
                let kind = datasources.get(uid).unwrap_or_else(|| panic!("{file}: {title}: no data source {uid}"));
                let expr = target["expr"].as_str().unwrap_or_else(|| panic!("{file}: {title}: a target without expr"));
                let wants_data = needs_data || self_metric_names(expr).iter().all(|name| names.contains(name));
                let exprs: BTreeSet<String> = assignments().iter().map(|values| substitute(expr, values)).collect();
                for expr in exprs {
                    let result = run_panel_query(&server, kind, panel_type, &expr);
                    checked += 1;
                    if wants_data && result.is_empty() {
                        failures.push(format!("{file}: {title}: {expr} returned no series"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} of {checked} queries returned nothing:\n{}", failures.len(), failures.join("\n"));

    // The Restarts panel counts the cart container's one restart, and no other.
    let restarts = r#"count by (namespace, pod, container) (count by (namespace, pod, container, k8s_container_restart_count) (last_over_time(container_memory_working_set_bytes{k8s_container_restart_count!=""}[1h]))) - 1"#;
    let answer = get_json(&server, &server.api_url("/api/v1/query"), &[("query", restarts)]);
    let counted: BTreeMap<String, String> = answer["data"]["result"]
        .as_array()
        .expect("a vector")
        .iter()
        .map(|s| {
            (s["metric"]["pod"].as_str().unwrap_or("").to_string(), s["value"][1].as_str().unwrap_or("").to_string())
        })
        .collect();
    let expected: BTreeMap<String, String> =
        [("cart-0", "1"), ("checkout-0", "0"), ("postgres-0", "0")].map(|(p, n)| (p.to_string(), n.to_string())).into();
    assert_eq!(counted, expected, "{answer}");
    assert!(checked > 60, "only {checked} queries");
}
