//! The OpenTelemetry Python SDK sends logs, a trace and every metric point type to Wake over
//! OTLP/gRPC and OTLP/HTTP; SQL must give back exactly what it sent, from the buffers and again
//! from Parquet after a flush.

mod common;

use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::{WakeServer, as_f64, as_u64};
use serde_json::{Map, Value, json};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/send_otlp.py");
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

/// The ids the SDK generated, as the script reports them.
struct TraceIds {
    trace_id: String,
    parent_span_id: String,
    child_span_id: String,
}

fn python() -> String {
    std::env::var("WAKE_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "WAKE_TEST_PYTHON is not set: it names a Python with opentelemetry-sdk and \
             opentelemetry-exporter-otlp installed. Run the suite with scripts/test.sh, which \
             creates that virtualenv and sets the variable."
        )
    })
}

/// Runs `command` to completion, killing it after `timeout`.
fn output_within(mut command: Command, timeout: Duration) -> Output {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {command:?}: {e}"));
    let pid = child.id();
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let _ = sender.send(child.wait_with_output());
    });
    match receiver.recv_timeout(timeout) {
        Ok(output) => output.expect("waiting for the script"),
        Err(_) => {
            let _ = Command::new("kill").args(["-KILL", &pid.to_string()]).status();
            panic!("{command:?} did not finish within {timeout:?}");
        }
    }
}

fn send_with_python_sdk(server: &WakeServer, protocol: &str, run_id: &str) -> TraceIds {
    let endpoint = match protocol {
        "grpc" => server.grpc_endpoint(),
        _ => format!("http://{}", server.otlp_http_addr),
    };
    let mut command = Command::new(python());
    command.args([SCRIPT, "--protocol", protocol, "--endpoint", &endpoint, "--run-id", run_id]);
    // The SDK reads OTEL_* variables (headers, timeouts, exporters); the test must not.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("OTEL_") {
            command.env_remove(name);
        }
    }
    let output = output_within(command, SCRIPT_TIMEOUT);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "send_otlp.py --protocol {protocol} failed ({}):\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver log tail:\n{}",
        output.status,
        server.log_tail()
    );
    let ids: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("send_otlp.py printed no JSON ({e}):\n{stdout}\nstderr:\n{stderr}"));
    let id = |name: &str| ids[name].as_str().unwrap_or_else(|| panic!("no {name} in {ids}")).to_string();
    TraceIds { trace_id: id("trace_id"), parent_span_id: id("parent_span_id"), child_span_id: id("child_span_id") }
}

fn strings(pairs: &[(&str, &str)]) -> Value {
    Value::Object(pairs.iter().map(|(k, v)| (k.to_string(), json!(v))).collect())
}

fn floats(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("expected a list, got {value}"))
        .iter()
        .map(|item| as_f64(item).unwrap_or_else(|| panic!("not a number: {item}")))
        .collect()
}

fn integers(value: &Value) -> Vec<u64> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("expected a list, got {value}"))
        .iter()
        .map(|item| as_u64(item).unwrap_or_else(|| panic!("not an integer: {item}")))
        .collect()
}

fn check_logs(server: &WakeServer, protocol: &str, run_id: &str, ids: &TraceIds) {
    let service = format!("checkout-{protocol}");
    let rows = server.sql_objects(&format!(
        "SELECT body, severity_number, severity_text, timestamp, trace_id, span_id, log_iostream, \
                service_name, k8s_namespace_name, k8s_pod_name, k8s_container_name, scope_name, scope_version, \
                attributes, resource_attributes \
         FROM logs WHERE service_name = '{service}' ORDER BY timestamp"
    ));
    assert_eq!(rows.len(), 2, "{protocol}: logs {rows:#?}");
    let (info, error) = (&rows[0], &rows[1]);

    assert_eq!(info["body"], "user logged in");
    assert_eq!(info["severity_number"], 9);
    assert_eq!(info["severity_text"], "INFO");
    assert_eq!(info["timestamp"], "2023-11-14T22:13:20.987654321Z");
    assert_eq!(info["trace_id"], Value::Null);
    assert_eq!(info["span_id"], Value::Null);
    assert_eq!(info["log_iostream"], Value::Null);
    // Every attribute value is stored as text in its usual notation.
    assert_eq!(
        info["attributes"],
        strings(&[("user.id", "u-42"), ("attempt", "3"), ("remembered", "true"), ("ratio", "0.5")])
    );

    assert_eq!(error["body"], "payment failed");
    assert_eq!(error["severity_number"], 17);
    assert_eq!(error["severity_text"], "ERROR");
    assert_eq!(error["timestamp"], "2023-11-14T22:13:20.987654322Z");
    assert_eq!(error["trace_id"], ids.trace_id.as_str());
    assert_eq!(error["span_id"], ids.child_span_id.as_str());
    // log.iostream is promoted to its own column and so left out of the map.
    assert_eq!(error["log_iostream"], "stderr");
    assert_eq!(error["attributes"], strings(&[("error.kind", "card")]));

    for row in &rows {
        assert_eq!(row["service_name"], service.as_str());
        assert_eq!(row["k8s_namespace_name"], "shop");
        assert_eq!(row["k8s_pod_name"], format!("checkout-{protocol}-7d9f").as_str());
        assert_eq!(row["k8s_container_name"], Value::Null);
        assert_eq!(row["scope_name"], "shop.logs");
        assert_eq!(row["scope_version"], "0.1");
        check_resource_attributes(&row["resource_attributes"], run_id);
    }

    // Map values are addressable in SQL.
    let count = server.count(&format!(
        "SELECT count(*) FROM logs WHERE resource_attributes['run.id'] = '{run_id}' AND attributes['user.id'] = 'u-42'"
    ));
    assert_eq!(count, 1, "{protocol}: attributes['user.id'] lookup");
}

/// Promoted resource attributes live only in their columns; the rest, including what the SDK
/// adds, stay in the map.
fn check_resource_attributes(resource: &Value, run_id: &str) {
    let map: &Map<String, Value> = resource.as_object().unwrap_or_else(|| panic!("resource_attributes: {resource}"));
    assert_eq!(map.get("run.id"), Some(&json!(run_id)), "{resource}");
    assert_eq!(map.get("host.name"), Some(&json!("node-1")), "{resource}");
    assert_eq!(map.get("telemetry.sdk.language"), Some(&json!("python")), "{resource}");
    for promoted in ["service.name", "k8s.namespace.name", "k8s.pod.name"] {
        assert!(!map.contains_key(promoted), "{promoted} is a column, not in the map: {resource}");
    }
}

fn check_spans(server: &WakeServer, protocol: &str, run_id: &str, ids: &TraceIds) {
    let rows = server.sql_objects(&format!(
        "SELECT name, kind, trace_id, span_id, parent_span_id, start_time, end_time, duration_ns, \
                status_code, status_message, events, links, attributes, scope_name, scope_version, \
                service_name, resource_attributes \
         FROM spans WHERE service_name = 'checkout-{protocol}' ORDER BY start_time"
    ));
    assert_eq!(rows.len(), 2, "{protocol}: spans {rows:#?}");
    let (parent, child) = (&rows[0], &rows[1]);

    assert_eq!(parent["name"], "GET /checkout");
    assert_eq!(parent["kind"], "server");
    assert_eq!(parent["trace_id"], ids.trace_id.as_str());
    assert_eq!(parent["span_id"], ids.parent_span_id.as_str());
    assert_eq!(parent["parent_span_id"], Value::Null);
    assert_eq!(parent["start_time"], "2023-11-14T22:13:20.123456789Z");
    assert_eq!(parent["end_time"], "2023-11-14T22:13:20.423456789Z");
    assert_eq!(parent["duration_ns"], 300_000_000);
    assert_eq!(parent["status_code"], "unset");
    assert_eq!(parent["status_message"], Value::Null);
    assert_eq!(parent["events"], Value::Null);
    assert_eq!(parent["attributes"], strings(&[("http.route", "/checkout")]));

    assert_eq!(child["name"], "charge card");
    assert_eq!(child["kind"], "client");
    assert_eq!(child["trace_id"], ids.trace_id.as_str());
    assert_eq!(child["span_id"], ids.child_span_id.as_str());
    assert_eq!(child["parent_span_id"], ids.parent_span_id.as_str());
    assert_eq!(child["start_time"], "2023-11-14T22:13:20.124456789Z");
    assert_eq!(child["end_time"], "2023-11-14T22:13:20.374456789Z");
    assert_eq!(child["duration_ns"], 250_000_000);
    assert_eq!(child["status_code"], "error");
    assert_eq!(child["status_message"], "card declined");
    assert_eq!(child["links"], Value::Null);
    assert_eq!(child["attributes"], strings(&[("payment.amount", "12.5"), ("payment.retries", "2")]));
    let events: Value = serde_json::from_str(child["events"].as_str().expect("events is JSON text"))
        .unwrap_or_else(|e| panic!("events {}: {e}", child["events"]));
    assert_eq!(
        events,
        json!([{ "time_unix_nano": 1_700_000_000_125_456_789u64, "name": "retrying", "attributes": { "attempt": 1 } }])
    );

    for row in &rows {
        assert_eq!(row["scope_name"], "shop.checkout");
        assert_eq!(row["scope_version"], "1.2.3");
        check_resource_attributes(&row["resource_attributes"], run_id);
    }
}

/// The one row of `rows` of metric `name` with exactly `attributes`.
fn the_point<'a>(rows: &'a [Map<String, Value>], name: &str, attributes: Value) -> &'a Map<String, Value> {
    let matching: Vec<_> =
        rows.iter().filter(|row| row["metric_name"] == name && row["attributes"] == attributes).collect();
    assert_eq!(matching.len(), 1, "points of {name} {attributes}: {rows:#?}");
    matching[0]
}

fn check_metrics(server: &WakeServer, protocol: &str) {
    let rows = server.sql_objects(&format!(
        "SELECT metric_name, metric_type, metric_description, unit, aggregation_temporality, is_monotonic, \
                value, count, sum, min, max, explicit_bounds, bucket_counts, exp_scale, exp_zero_count, \
                exp_positive_offset, exp_positive_bucket_counts, exp_negative_bucket_counts, \
                quantiles, start_timestamp, attributes, scope_name \
         FROM metrics WHERE service_name = 'checkout-{protocol}'"
    ));
    // The reader collected once, so each stream is exactly one point.
    assert_eq!(rows.len(), 6, "{protocol}: metric points {rows:#?}");
    let point = |name: &str, attributes: Value| the_point(&rows, name, attributes);

    for route_value in [("/a", 7.0), ("/b", 1.0)] {
        let counter = point("py.requests", strings(&[("route", route_value.0)]));
        assert_eq!(counter["metric_type"], "sum");
        assert_eq!(counter["metric_description"], "requests served");
        assert_eq!(counter["unit"], "1");
        assert_eq!(counter["aggregation_temporality"], "cumulative");
        assert_eq!(counter["is_monotonic"], true);
        assert_eq!(as_f64(&counter["value"]), Some(route_value.1), "{counter:?}");
        assert_eq!(counter["count"], Value::Null);
        assert!(counter["start_timestamp"].is_string(), "cumulative sums have a start: {counter:?}");
        assert_eq!(counter["scope_name"], "shop.metrics");
    }

    let queue = point("py.queue.depth", json!({}));
    assert_eq!(queue["metric_type"], "sum");
    assert_eq!(queue["aggregation_temporality"], "cumulative");
    assert_eq!(queue["is_monotonic"], false);
    assert_eq!(as_f64(&queue["value"]), Some(3.0), "{queue:?}");

    let gauge = point("py.temperature", strings(&[("room", "lab")]));
    assert_eq!(gauge["metric_type"], "gauge");
    assert_eq!(gauge["unit"], "Cel");
    assert_eq!(gauge["aggregation_temporality"], Value::Null);
    assert_eq!(gauge["is_monotonic"], Value::Null);
    assert_eq!(as_f64(&gauge["value"]), Some(21.5), "{gauge:?}");

    let histogram = point("py.latency", json!({}));
    assert_eq!(histogram["metric_type"], "histogram");
    assert_eq!(histogram["unit"], "ms");
    assert_eq!(histogram["aggregation_temporality"], "cumulative");
    assert_eq!(histogram["value"], Value::Null);
    assert_eq!(as_u64(&histogram["count"]), Some(5), "{histogram:?}");
    assert_eq!(as_f64(&histogram["sum"]), Some(345.0), "{histogram:?}");
    assert_eq!(as_f64(&histogram["min"]), Some(5.0), "{histogram:?}");
    assert_eq!(as_f64(&histogram["max"]), Some(200.0), "{histogram:?}");
    assert_eq!(floats(&histogram["explicit_bounds"]), vec![10.0, 50.0, 100.0]);
    // 5 | 20, 50 (bounds are inclusive above) | 70 | 200
    assert_eq!(integers(&histogram["bucket_counts"]), vec![1, 2, 1, 1]);
    assert_eq!(histogram["exp_scale"], Value::Null);
    assert_eq!(histogram["quantiles"], Value::Null);

    let exponential = point("py.payload.size", json!({}));
    assert_eq!(exponential["metric_type"], "exponential_histogram");
    assert_eq!(exponential["unit"], "By");
    assert_eq!(exponential["aggregation_temporality"], "cumulative");
    assert_eq!(as_u64(&exponential["count"]), Some(5), "{exponential:?}");
    assert_eq!(as_f64(&exponential["sum"]), Some(10.0), "{exponential:?}");
    assert_eq!(as_f64(&exponential["min"]), Some(0.0), "{exponential:?}");
    assert_eq!(as_f64(&exponential["max"]), Some(4.0), "{exponential:?}");
    // At scale 0 bucket i holds (2^i, 2^(i+1)]: 1 | 2 | 3, 4, and 0 is in the zero bucket.
    assert_eq!(exponential["exp_scale"], 0);
    assert_eq!(as_u64(&exponential["exp_zero_count"]), Some(1));
    assert_eq!(exponential["exp_positive_offset"], -1);
    // The SDK pads the bucket array up to max_size; the padding is zeros.
    let mut positive = integers(&exponential["exp_positive_bucket_counts"]);
    while positive.last() == Some(&0) {
        positive.pop();
    }
    assert_eq!(positive, vec![1, 1, 2], "{exponential:?}");
    assert_eq!(integers(&exponential["exp_negative_bucket_counts"]).iter().sum::<u64>(), 0);
    assert_eq!(exponential["explicit_bounds"], Value::Null);
}

fn check_everything(server: &WakeServer, runs: &[(&str, String, TraceIds)]) {
    for (protocol, run_id, ids) in runs {
        check_logs(server, protocol, run_id, ids);
        check_spans(server, protocol, run_id, ids);
        check_metrics(server, protocol);
    }
    assert_eq!(server.count("SELECT count(*) FROM logs"), 4);
    assert_eq!(server.count("SELECT count(*) FROM spans"), 4);
    assert_eq!(server.count("SELECT count(*) FROM metrics"), 12);
}

#[test]
fn python_sdk_data_reads_back_exactly_over_grpc_and_http() {
    // Fail before starting anything when the Python environment is missing.
    python();
    let dir = tempfile::tempdir().expect("temp dir");
    let server = WakeServer::start(dir.path(), &[]);

    let runs: Vec<(&str, String, TraceIds)> = ["grpc", "http"]
        .into_iter()
        .map(|protocol| {
            let run_id = format!("py-{protocol}-{}", std::process::id());
            let ids = send_with_python_sdk(&server, protocol, &run_id);
            (protocol, run_id, ids)
        })
        .collect();
    assert_ne!(runs[0].2.trace_id, runs[1].2.trace_id, "each run has its own trace");

    // Acknowledged means queryable: no waiting before the first check.
    check_everything(&server, &runs);
    server.flush();
    check_everything(&server, &runs);
}
