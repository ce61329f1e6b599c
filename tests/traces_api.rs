//! Traces end to end: the OpenTelemetry Python SDK sends one trace across three services
//! (nested spans, events, a link, errors, k8s resource attributes) and logs carrying its
//! context; the Tempo API returns it by id as JSON and as protobuf, Grafana's search-builder
//! query finds it, the tag endpoints list its attributes, the Jaeger API returns the same
//! trace, a log line of the trace is found from the trace id and the trace from the line, and
//! `wake traces` prints it. Bad input gets 400s in each API's shape.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::WakeServer;
use opentelemetry_proto::tonic::trace::v1::TracesData;
use prost::Message;
use serde_json::Value;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/send_trace.py");
const MS: i64 = 1_000_000;

struct Sent {
    trace_id: String,
    previous_trace_id: String,
    spans: BTreeMap<String, String>,
    start_ns: i64,
}

fn python() -> String {
    std::env::var("WAKE_TEST_PYTHON")
        .unwrap_or_else(|_| panic!("WAKE_TEST_PYTHON is not set: run the suite with scripts/test.sh"))
}

fn send_trace(server: &WakeServer) -> Sent {
    // A minute ago, whole milliseconds: inside every default search window.
    let start_ns = (common::now_ns() as i64 / 1_000_000_000 - 60) * 1_000_000_000;
    // The run id names this run's resources, so that searches by it see only this trace.
    let run_id = format!("run-{start_ns}");
    let mut command = Command::new(python());
    command.args([
        SCRIPT,
        "--endpoint",
        &format!("http://{}", server.otlp_http_addr),
        "--start-ns",
        &start_ns.to_string(),
        "--run-id",
        &run_id,
    ]);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("OTEL_") {
            command.env_remove(name);
        }
    }
    let output = command.stdin(Stdio::null()).output().expect("running send_trace.py");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "send_trace.py failed: {stdout}\n{}\n{}",
        String::from_utf8_lossy(&output.stderr),
        server.log_tail()
    );
    let sent: Value = serde_json::from_str(stdout.trim()).expect("the script prints JSON");
    Sent {
        trace_id: sent["trace_id"].as_str().unwrap().to_string(),
        previous_trace_id: sent["previous_trace_id"].as_str().unwrap().to_string(),
        spans: sent["spans"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap().into()))
            .collect(),
        start_ns,
    }
}

fn get(server: &WakeServer, path: &str, params: &[(&str, &str)]) -> (u16, String) {
    let url = reqwest::Url::parse_with_params(&server.api_url(path), params).expect("a URL");
    let response =
        server.client().get(url.clone()).send().unwrap_or_else(|e| panic!("GET {url}: {e}\n{}", server.log_tail()));
    (response.status().as_u16(), response.text().unwrap_or_default())
}

fn get_json(server: &WakeServer, path: &str, params: &[(&str, &str)]) -> Value {
    let (status, body) = get(server, path, params);
    assert_eq!(status, 200, "GET {path} {params:?}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: not JSON ({e}): {body}"))
}

/// (span name → span JSON) of a Tempo v1 or v2 trace, with each span's service.
fn tempo_spans(resource_spans: &Value) -> BTreeMap<String, (String, Value)> {
    let mut spans = BTreeMap::new();
    for batch in resource_spans.as_array().expect("resource spans") {
        let service = batch["resource"]["attributes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|kv| kv["key"] == "service.name")
            .map(|kv| kv["value"]["stringValue"].as_str().unwrap().to_string())
            .unwrap();
        for scope in batch["scopeSpans"].as_array().unwrap() {
            for span in scope["spans"].as_array().unwrap() {
                spans.insert(span["name"].as_str().unwrap().to_string(), (service.clone(), span.clone()));
            }
        }
    }
    spans
}

fn check_trace_by_id(server: &WakeServer, sent: &Sent) {
    let v1 = get_json(server, &format!("/api/traces/{}", sent.trace_id), &[]);
    let spans = tempo_spans(&v1["batches"]);
    let names: BTreeSet<&str> = spans.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        BTreeSet::from(["GET /checkout", "POST checkout", "POST /checkout", "charge", "authorize", "ledger.write"])
    );
    let parent_of = |name: &str| spans[name].1["parentSpanId"].as_str().unwrap_or_default().to_string();
    assert_eq!(parent_of("GET /checkout"), "");
    assert_eq!(parent_of("POST checkout"), sent.spans["GET /checkout"]);
    assert_eq!(parent_of("POST /checkout"), sent.spans["POST checkout"]);
    assert_eq!(parent_of("charge"), sent.spans["POST /checkout"]);
    assert_eq!(parent_of("authorize"), sent.spans["charge"]);
    assert_eq!(parent_of("ledger.write"), sent.spans["authorize"]);
    assert_eq!(spans["charge"].0, "checkout");
    assert_eq!(spans["authorize"].0, "payments");
    let charge = &spans["charge"].1;
    assert_eq!(charge["status"]["code"], 2, "{charge}");
    assert_eq!(charge["status"]["message"], "card declined");
    assert_eq!(charge["kind"], 3);
    let events: Vec<&str> = charge["events"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(events, ["retry", "exception"]);
    assert_eq!(charge["events"][0]["attributes"][0]["value"]["intValue"], "1", "{charge}");
    let start: i64 = charge["startTimeUnixNano"].as_str().unwrap().parse().unwrap();
    assert_eq!(start, sent.start_ns + 10 * MS);
    let link = &spans["GET /checkout"].1["links"][0];
    assert_eq!(link["traceId"], sent.previous_trace_id.as_str());
    assert_eq!(link["attributes"][0]["key"], "link.reason");

    // v2, and the time range Grafana sends.
    let start = (sent.start_ns / 1_000_000_000 - 3600).to_string();
    let end = (sent.start_ns / 1_000_000_000 + 3600).to_string();
    let v2 = get_json(server, &format!("/api/v2/traces/{}", sent.trace_id), &[("start", &start), ("end", &end)]);
    assert_eq!(tempo_spans(&v2["trace"]["resourceSpans"]).len(), 6);

    // Protobuf, as Grafana asks for it, decoded as OTLP.
    for path in [format!("/api/traces/{}", sent.trace_id), format!("/api/v2/traces/{}", sent.trace_id)] {
        let response =
            server.client().get(server.api_url(&path)).header("Accept", "application/protobuf").send().unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/protobuf");
        let bytes = response.bytes().unwrap();
        let resource_spans = if path.contains("/v2/") {
            // TraceByIDResponse { trace = 1 }: field 1 holds a Trace, itself TracesData-shaped.
            #[derive(Clone, PartialEq, Message)]
            struct ByIdResponse {
                #[prost(message, optional, tag = "1")]
                trace: Option<TracesData>,
            }
            ByIdResponse::decode(bytes.as_ref()).unwrap().trace.unwrap().resource_spans
        } else {
            TracesData::decode(bytes.as_ref()).unwrap().resource_spans
        };
        let spans: Vec<_> = resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans).collect();
        assert_eq!(spans.len(), 6, "{path}");
        let charge = spans.iter().find(|s| s.name == "charge").unwrap();
        assert_eq!(hex::encode(&charge.trace_id), sent.trace_id);
        assert_eq!(charge.events.len(), 2);
        assert_eq!(charge.status.as_ref().unwrap().code, 2);
    }

    // A 64-bit form of an id is left-padded, as Tempo does; unknown and malformed ids.
    let (status, _) = get(server, &format!("/api/traces/{}", "0".repeat(31) + "1"), &[]);
    assert_eq!(status, 404);
    let (status, body) = get(server, "/api/traces/not-a-trace-id", &[]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid trace id"), "{body}");
}

fn check_search(server: &WakeServer, sent: &Sent) {
    let start = (sent.start_ns / 1_000_000_000 - 600).to_string();
    let end = (sent.start_ns / 1_000_000_000 + 600).to_string();
    let range = [("start", start.as_str()), ("end", end.as_str())];
    let search = |q: &str, extra: &[(&str, &str)]| {
        let mut params = vec![("q", q)];
        params.extend_from_slice(&range);
        params.extend_from_slice(extra);
        get_json(server, "/api/search", &params)
    };
    // Grafana's search builder.
    let answer = search(
        r#"{resource.service.name="checkout" && name="charge" && status=error && duration>100ms}"#,
        &[("limit", "20"), ("spss", "3")],
    );
    let traces = answer["traces"].as_array().expect("traces");
    assert_eq!(traces.len(), 1, "{answer}");
    let trace = &traces[0];
    assert_eq!(trace["traceID"], sent.trace_id.as_str());
    assert_eq!(trace["rootServiceName"], "frontend");
    assert_eq!(trace["rootTraceName"], "GET /checkout");
    assert_eq!(trace["durationMs"], 180);
    assert_eq!(trace["startTimeUnixNano"], sent.start_ns.to_string());
    let spanset = &trace["spanSets"][0];
    assert_eq!(spanset["matched"], 1);
    assert_eq!(spanset["spans"][0]["spanID"], sent.spans["charge"].as_str());
    assert_eq!(spanset["spans"][0]["durationNanos"], (150 * MS).to_string());
    let shown: Vec<&str> =
        spanset["spans"][0]["attributes"].as_array().unwrap().iter().map(|a| a["key"].as_str().unwrap()).collect();
    assert!(shown.contains(&"service.name"), "{spanset}");

    // The same query just below the span's duration finds nothing.
    let answer = search(r#"{resource.service.name="checkout" && name="charge" && duration>150ms}"#, &[]);
    assert_eq!(answer["traces"].as_array().unwrap().len(), 0, "{answer}");
    // Structural: a payments span under a checkout span; a pipeline counting errors.
    let answer = search(r#"{resource.service.name="checkout"} >> {resource.service.name="payments"}"#, &[]);
    assert_eq!(answer["traces"][0]["spanSets"][0]["matched"], 2, "{answer}");
    let answer = search(&format!(r#"{{resource.run.id="{}" && status=error}} | count() > 2"#, run_id(sent)), &[]);
    assert_eq!(answer["traces"].as_array().unwrap().len(), 1, "{answer}");
    let answer = search(&format!(r#"{{resource.run.id="{}" && status=error}} | count() > 3"#, run_id(sent)), &[]);
    assert_eq!(answer["traces"].as_array().unwrap().len(), 0, "{answer}");
    // The older tag search.
    let answer = get_json(
        server,
        "/api/search",
        &[&range[..], &[("tags", "service.name=payments name=authorize"), ("minDuration", "100ms")]].concat(),
    );
    assert_eq!(answer["traces"][0]["traceID"], sent.trace_id.as_str(), "{answer}");

    // Malformed TraceQL is a 400 in Tempo's shape (plain text).
    let (status, body) = get(server, "/api/search", &[("q", "{ resource.service.name = }")]);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("invalid TraceQL query"), "{body}");
    let (status, body) = get(server, "/api/search", &[("q", "{}"), ("limit", "x")]);
    assert_eq!(status, 400, "{body}");
}

/// TraceQL metrics, as Grafana's Traces Drilldown asks for them.
fn check_metrics(server: &WakeServer, sent: &Sent) {
    let start = (sent.start_ns / 1_000_000_000 - 300).to_string();
    let end = (sent.start_ns / 1_000_000_000 + 300).to_string();
    let range = [("start", start.as_str()), ("end", end.as_str())];
    let q = format!(r#"{{resource.run.id="{}"}} | count_over_time() by (resource.service.name)"#, run_id(sent));
    let answer = get_json(server, "/api/metrics/query_range", &[&range[..], &[("q", &q), ("step", "60")]].concat());
    let mut spans_by_service = BTreeMap::new();
    for series in answer["series"].as_array().unwrap_or_else(|| panic!("{answer}")) {
        assert_eq!(series["labels"][0]["key"], "resource.service.name", "{answer}");
        let service = series["labels"][0]["value"]["stringValue"].as_str().unwrap().to_string();
        let samples = series["samples"].as_array().unwrap();
        // A sample every 60 s over the 600 s range, zeros without a value as Tempo writes them.
        assert!((10..=12).contains(&samples.len()), "{answer}");
        let total: f64 = samples.iter().map(|s| s["value"].as_f64().unwrap_or(0.0)).sum();
        spans_by_service.insert(service, total);
    }
    assert_eq!(spans_by_service.get("checkout"), Some(&2.0), "{answer}");
    assert_eq!(spans_by_service.get("payments"), Some(&2.0), "{answer}");
    assert!(spans_by_service.get("frontend").is_some_and(|n| *n >= 2.0), "{answer}");
    assert_eq!(answer["metrics"]["inspectedTraces"].as_u64().map(|n| n >= 1), Some(true), "{answer}");

    // An instant rate of the three failed spans over the 600 s range.
    let q = format!(r#"{{resource.run.id="{}" && status=error}} | rate()"#, run_id(sent));
    let answer = get_json(server, "/api/metrics/query", &[&range[..], &[("q", &q)]].concat());
    let value = answer["series"][0]["value"].as_f64().unwrap_or_else(|| panic!("{answer}"));
    assert!((value - 3.0 / 600.0).abs() < 1e-9, "{answer}");

    // Not a metrics query, a bad step, and too many points: 400s in Tempo's plain text.
    for (q, step) in [("{ status = error }", "60"), ("{} | rate()", "soon"), ("{} | rate()", "0.01")] {
        let (status, body) =
            get(server, "/api/metrics/query_range", &[&range[..], &[("q", q), ("step", step)]].concat());
        assert_eq!(status, 400, "{q} step={step}: {body}");
    }
}

fn run_id(sent: &Sent) -> String {
    format!("run-{}", sent.start_ns)
}

fn check_tags(server: &WakeServer, sent: &Sent) {
    let start = (sent.start_ns / 1_000_000_000 - 600).to_string();
    let end = (sent.start_ns / 1_000_000_000 + 600).to_string();
    let range = [("start", start.as_str()), ("end", end.as_str())];
    let v2 = get_json(server, "/api/v2/search/tags", &range);
    let scope = |name: &str| -> BTreeSet<String> {
        v2["scopes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == name)
            .map(|s| s["tags"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().to_string()).collect())
            .unwrap_or_default()
    };
    assert!(scope("resource").contains("service.name"), "{v2}");
    assert!(scope("resource").contains("k8s.pod.name"), "{v2}");
    assert!(scope("resource").contains("run.id"), "{v2}");
    assert!(scope("span").contains("payment.currency"), "{v2}");
    assert!(scope("intrinsic").contains("status"), "{v2}");
    let v1 = get_json(server, "/api/search/tags", &range);
    let names: Vec<&str> = v1["tagNames"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert!(names.contains(&"http.route") && names.contains(&"service.name"), "{v1}");

    let values = get_json(server, "/api/v2/search/tag/resource.service.name/values", &range);
    let services: BTreeSet<&str> =
        values["tagValues"].as_array().unwrap().iter().map(|v| v["value"].as_str().unwrap()).collect();
    assert!(services.is_superset(&BTreeSet::from(["checkout", "frontend", "payments"])), "{values}");
    assert_eq!(values["tagValues"][0]["type"], "string");
    // Filtered by the query being built, as Grafana sends it.
    let q = r#"{resource.service.name="payments"}"#;
    let values = get_json(server, "/api/v2/search/tag/name/values", &[&range[..], &[("q", q)]].concat());
    let names: BTreeSet<&str> =
        values["tagValues"].as_array().unwrap().iter().map(|v| v["value"].as_str().unwrap()).collect();
    assert_eq!(names, BTreeSet::from(["authorize", "ledger.write"]), "{values}");
    let values = get_json(server, "/api/v2/search/tag/span.http.response.status_code/values", &range);
    assert!(
        values["tagValues"].as_array().unwrap().iter().any(|v| v["type"] == "int" && v["value"] == "500"),
        "{values}"
    );
    let values = get_json(server, "/api/search/tag/payment.currency/values", &range);
    assert_eq!(values["tagValues"], serde_json::json!(["EUR"]));
    // A partial query while the user types filters nothing rather than failing.
    let values =
        get_json(server, "/api/v2/search/tag/status/values", &[&range[..], &[("q", "{ resource.x = ")]].concat());
    assert!(values["tagValues"].as_array().unwrap().iter().any(|v| v["value"] == "error"), "{values}");
}

fn check_jaeger(server: &WakeServer, sent: &Sent) {
    let services = get_json(server, "/jaeger/api/services", &[]);
    let list: BTreeSet<&str> = services["data"].as_array().unwrap().iter().map(|s| s.as_str().unwrap()).collect();
    assert!(list.is_superset(&BTreeSet::from(["checkout", "frontend", "payments"])), "{services}");
    let operations = get_json(server, "/jaeger/api/services/payments/operations", &[]);
    assert_eq!(operations["data"], serde_json::json!(["authorize", "ledger.write"]));

    let by_id = get_json(server, &format!("/jaeger/api/traces/{}", sent.trace_id), &[]);
    let trace = &by_id["data"][0];
    assert_eq!(trace["traceID"], sent.trace_id.as_str());
    assert_eq!(trace["spans"].as_array().unwrap().len(), 6);
    let charge = trace["spans"].as_array().unwrap().iter().find(|s| s["operationName"] == "charge").unwrap();
    assert_eq!(charge["references"][0]["refType"], "CHILD_OF");
    assert_eq!(charge["references"][0]["spanID"], sent.spans["POST /checkout"].as_str());
    assert_eq!(charge["duration"], 150_000);
    let process = &trace["processes"][charge["processID"].as_str().unwrap()];
    assert_eq!(process["serviceName"], "checkout");
    assert!(charge["tags"].as_array().unwrap().iter().any(|t| t["key"] == "error" && t["value"] == true), "{charge}");

    let start_us = ((sent.start_ns - 600_000 * MS) / 1000).to_string();
    let end_us = ((sent.start_ns + 600_000 * MS) / 1000).to_string();
    let found = get_json(
        server,
        "/jaeger/api/traces",
        &[
            ("service", "checkout"),
            ("operation", "charge"),
            ("tags", r#"{"payment.currency":"EUR"}"#),
            ("minDuration", "100ms"),
            ("start", &start_us),
            ("end", &end_us),
            ("limit", "20"),
        ],
    );
    assert_eq!(found["data"].as_array().unwrap().len(), 1, "{found}");
    assert_eq!(found["data"][0]["traceID"], sent.trace_id.as_str());
    let found = get_json(
        server,
        "/jaeger/api/traces",
        &[("service", "checkout"), ("minDuration", "1s"), ("start", &start_us), ("end", &end_us)],
    );
    assert_eq!(found["data"].as_array().unwrap().len(), 0, "{found}");
    let end_ms = ((sent.start_ns + 600_000 * MS) / MS).to_string();
    let dependencies = get_json(server, "/jaeger/api/dependencies", &[("endTs", &end_ms), ("lookback", "3600000")]);
    let edges: BTreeSet<(String, String)> = dependencies["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["parent"].as_str().unwrap().to_string(), d["child"].as_str().unwrap().to_string()))
        .collect();
    assert!(edges.contains(&("frontend".into(), "checkout".into())), "{dependencies}");
    assert!(edges.contains(&("checkout".into(), "payments".into())), "{dependencies}");

    let (status, body) = get(server, "/jaeger/api/traces", &[("lookback", "1h")]);
    assert_eq!(status, 400, "{body}");
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["errors"][0]["code"], 400, "{body}");
    let (status, _) = get(server, "/jaeger/api/traces/zz", &[]);
    assert_eq!(status, 400);
}

fn check_logs_links(server: &WakeServer, sent: &Sent) {
    // From the trace to its logs: the provisioned tracesToLogsV2 query shape.
    let query = format!(
        r#"{{service_name="checkout", k8s_namespace_name="shop", k8s_pod_name="checkout-7d9f-xyz12"}} | trace_id="{}""#,
        sent.trace_id
    );
    let start = (sent.start_ns - 60_000 * MS).to_string();
    let end = (sent.start_ns + 60_000 * MS).to_string();
    let url = reqwest::Url::parse_with_params(
        &server.api_url("/loki/api/v1/query_range"),
        &[("query", query.as_str()), ("start", &start), ("end", &end), ("limit", "100")],
    )
    .unwrap();
    let answer: Value = server
        .client()
        .get(url.clone())
        .header("X-Loki-Response-Encoding-Flags", "categorize-labels")
        .send()
        .unwrap()
        .json()
        .unwrap();
    let streams = answer["data"]["result"].as_array().expect("streams");
    assert_eq!(streams.len(), 1, "{answer}");
    let entry = &streams[0]["values"][0];
    assert!(entry[1].as_str().unwrap().starts_with("charge failed"), "{answer}");
    // From the line to the trace: its structured metadata carry the ids.
    assert_eq!(entry[2]["structuredMetadata"]["trace_id"], sent.trace_id.as_str(), "{answer}");
    assert_eq!(entry[2]["structuredMetadata"]["span_id"], sent.spans["charge"].as_str());
    assert!(streams[0]["stream"].get("trace_id").is_none(), "metadata are not stream labels: {answer}");
    // Without categories (older clients), Loki 3 puts them among the stream's labels.
    let plain: Value = server.client().get(url).send().unwrap().json().unwrap();
    assert_eq!(plain["data"]["result"][0]["stream"]["trace_id"], sent.trace_id.as_str(), "{plain}");
}

fn check_cli(server: &WakeServer, sent: &Sent) {
    let output = Command::new(env!("CARGO_BIN_EXE_wake"))
        .args(["traces", "get", &sent.trace_id, "--url", &server.api_url("")])
        .output()
        .expect("wake traces get");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.starts_with(&format!("trace {}  180.0 ms  6 spans  3 errors\n", sent.trace_id)), "{stdout}");
    assert!(stdout.contains("GET /checkout  [frontend]  +0.0 ms  180.0 ms\n"), "{stdout}");
    assert!(
        stdout.contains("      └─ charge  [checkout]  +10.0 ms  150.0 ms  ERROR card declined  (2 events)\n"),
        "{stdout}"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_wake"))
        .args([
            "traces",
            "search",
            "{ status = error && resource.service.name = \"payments\" }",
            "--url",
            &server.api_url(""),
        ])
        .output()
        .expect("wake traces search");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(stdout.contains(&sent.trace_id) && stdout.contains("frontend GET /checkout"), "{stdout}");
}

/// Polls an instant PromQL query until it answers some series.
fn wait_for_series(server: &WakeServer, query: &str) -> Vec<Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let result = server.promql(query);
        if !result.is_empty() {
            return result;
        }
        assert!(std::time::Instant::now() < deadline, "{query} answered no series\n{}", server.log_tail());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn check_span_metrics(server: &WakeServer) {
    let run = r#"service="checkout", span_name="charge", span_kind="SPAN_KIND_CLIENT""#;
    let calls = wait_for_series(server, &format!("traces_spanmetrics_calls_total{{{run}}}"));
    assert_eq!(calls[0]["metric"]["status_code"], "STATUS_CODE_ERROR", "{calls:?}");
    assert_eq!(calls[0]["value"][1], "1", "{calls:?}");
    // charge took 150 ms: in the 0.256 s bucket, not in the 0.128 s one.
    let bucket = |le: &str| server.promql(&format!("traces_spanmetrics_latency_bucket{{{run}, le=\"{le}\"}}"));
    assert_eq!(bucket("0.256")[0]["value"][1], "1");
    assert_eq!(bucket("0.128")[0]["value"][1], "0");
    // The service graph pairs frontend's client span with checkout's server span, and
    // checkout's failed client call with payments' server span.
    let edge = wait_for_series(server, r#"traces_service_graph_request_total{client="frontend", server="checkout"}"#);
    assert_eq!(edge[0]["value"][1], "1", "{edge:?}");
    let failed =
        wait_for_series(server, r#"traces_service_graph_request_failed_total{client="checkout", server="payments"}"#);
    assert_eq!(failed[0]["value"][1], "1", "{failed:?}");
    let latency = server.promql(r#"sum(traces_service_graph_request_server_seconds_count{server="payments"})"#);
    assert_eq!(latency[0]["value"][1], "1", "{latency:?}");
}

#[test]
fn a_python_sdk_trace_is_served_by_the_tempo_jaeger_and_loki_apis() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Span metrics written every second rather than every 15, so the test need not wait.
    let config = dir.path().join("wake.yaml");
    std::fs::write(&config, "store:\n  span_metrics:\n    collection_interval_secs: 1\n").expect("config");
    let server = WakeServer::start(&dir.path().join("data"), &["--config", config.to_str().expect("utf-8")]);
    let sent = send_trace(&server);
    server.wait_for_count(
        &format!("SELECT count(*) FROM spans WHERE trace_id = '{}'", sent.trace_id),
        6,
        Duration::from_secs(20),
    );
    server.wait_for_count(
        &format!("SELECT count(*) FROM logs WHERE trace_id = '{}'", sent.trace_id),
        2,
        Duration::from_secs(20),
    );
    // Half the checks from the write buffers, then all of them again from Parquet.
    for _pass in 0..2 {
        check_trace_by_id(&server, &sent);
        check_search(&server, &sent);
        check_tags(&server, &sent);
        check_jaeger(&server, &sent);
        check_logs_links(&server, &sent);
        check_metrics(&server, &sent);
        server.flush();
    }
    check_cli(&server, &sent);
    check_span_metrics(&server);
}
