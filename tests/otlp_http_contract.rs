//! The OTLP/HTTP (and some OTLP/gRPC) contract, with hand-made requests: OTLP/JSON and protobuf,
//! gzip, partial success, and the status codes and `google.rpc.Status` bodies of refusals.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{RpcStatus, WakeServer, as_f64, as_u64, log_request, string_value};
use flate2::Compression;
use flate2::write::GzEncoder;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use prost::Message;
use serde_json::{Value, json};

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

const INVALID_ARGUMENT: i32 = 3;

struct Answer {
    status: u16,
    content_type: String,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("answer is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

fn post(server: &WakeServer, path: &str, content_type: Option<&str>, gzip: bool, body: Vec<u8>) -> Answer {
    let mut request = server.client().post(server.otlp_url(path));
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let body = if gzip {
        request = request.header("content-encoding", "gzip");
        gzipped(&body)
    } else {
        body
    };
    let response = request.body(body).send().unwrap_or_else(|e| panic!("POST {path}: {e}\n{}", server.log_tail()));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let content_type = headers.get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let body = response.bytes().expect("reading the answer").to_vec();
    Answer { status, content_type, headers, body }
}

fn post_json(server: &WakeServer, path: &str, body: &Value) -> Answer {
    post(server, path, Some(JSON), false, body.to_string().into_bytes())
}

fn gzipped(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    encoder.write_all(data).expect("gzip into memory");
    encoder.finish().expect("gzip into memory")
}

/// Checks a 200 answer with no partial_success, in the request's encoding.
fn assert_fully_accepted(answer: &Answer, content_type: &str) {
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.content_type, content_type);
    if content_type == PROTOBUF {
        let response = ExportLogsServiceResponse::decode(answer.body.as_slice()).expect("protobuf answer");
        assert_eq!(response.partial_success, None);
    } else {
        // OTLP: partial_success stays unset when everything was accepted.
        let json = answer.json();
        assert!(json.get("partialSuccess").is_none_or(Value::is_null), "{json}");
    }
}

fn strings(pairs: &[(&str, &str)]) -> Value {
    Value::Object(pairs.iter().map(|(k, v)| (k.to_string(), json!(v))).collect())
}

fn floats(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|v| as_f64(v).expect("number"))
        .collect()
}

fn integers(value: &Value) -> Vec<u64> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|v| as_u64(v).expect("integer"))
        .collect()
}

fn record(body: &str) -> LogRecord {
    LogRecord {
        time_unix_nano: 1_700_000_000_000_000_001,
        severity_number: 9,
        body: Some(string_value(body)),
        ..Default::default()
    }
}

fn start() -> (tempfile::TempDir, WakeServer) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = WakeServer::start(dir.path(), &[]);
    (dir, server)
}

#[test]
fn otlp_json_logs_keep_exact_values() {
    let (_dir, server) = start();
    let request = json!({
        "resourceLogs": [{
            "resource": {
                "attributes": [
                    { "key": "service.name", "value": { "stringValue": "json-svc" } },
                    { "key": "k8s.namespace.name", "value": { "stringValue": "prod" } },
                    { "key": "k8s.pod.name", "value": { "stringValue": "api-5c6b" } },
                    { "key": "k8s.pod.uid", "value": { "stringValue": "0b7e-11" } },
                    { "key": "k8s.container.name", "value": { "stringValue": "api" } },
                    { "key": "container.id", "value": { "stringValue": "c0ffee" } },
                    { "key": "k8s.node.name", "value": { "stringValue": "node-7" } },
                    { "key": "cloud.region", "value": { "stringValue": "eu-west-1" } }
                ],
                "droppedAttributesCount": 0,
                "aFieldFromTheFuture": { "x": 1 }
            },
            "schemaUrl": "https://opentelemetry.io/schemas/1.26.0",
            "scopeLogs": [{
                "scope": {
                    "name": "json-scope",
                    "version": "2.0",
                    "attributes": [{ "key": "lib.flavour", "value": { "stringValue": "vanilla" } }]
                },
                "logRecords": [
                    {
                        // int64 fields as strings (the OTLP/JSON encoding) and as numbers (also
                        // accepted); both above 2^53, so that a detour through f64 would show.
                        "timeUnixNano": "1700000000123456789",
                        "observedTimeUnixNano": 1_700_000_001_000_000_007u64,
                        "severityNumber": 13,
                        "severityText": "WARN",
                        "body": { "stringValue": "disk almost full" },
                        "traceId": "5b8efff798038103d269b633813fc60c",
                        "spanId": "eee19b7ec3c1b174",
                        "flags": 1,
                        "eventName": "disk.warning",
                        "attributes": [
                            { "key": "as.string", "value": { "intValue": "9007199254740993" } },
                            { "key": "as.number", "value": { "intValue": 9_007_199_254_740_993u64 } },
                            { "key": "negative", "value": { "intValue": "-5" } },
                            { "key": "double", "value": { "doubleValue": 2.5 } },
                            { "key": "flag", "value": { "boolValue": false } },
                            { "key": "list", "value": { "arrayValue": { "values": [{ "stringValue": "a" }, { "intValue": "1" }] } } },
                            { "key": "nested", "value": { "kvlistValue": { "values": [{ "key": "k", "value": { "stringValue": "v" } }] } } },
                            { "key": "raw", "value": { "bytesValue": "3q2+7w==" } },
                            { "key": "log.iostream", "value": { "stringValue": "stdout" } },
                            { "key": "with.unknown", "value": { "stringValue": "kept", "futureValue": 1 } }
                        ],
                        "unknownRecordField": [1, 2, 3]
                    },
                    { "timeUnixNano": 1_700_000_002_000_000_001u64, "severityNumber": 9, "body": { "stringValue": "second" } }
                ]
            }]
        }]
    });
    let answer = post_json(&server, "/v1/logs", &request);
    assert_fully_accepted(&answer, JSON);

    let rows = server.sql_objects(
        "SELECT timestamp, observed_timestamp, severity_number, severity_text, body, trace_id, span_id, flags, \
                event_name, service_name, k8s_namespace_name, k8s_pod_name, k8s_pod_uid, k8s_container_name, \
                container_id, k8s_node_name, log_iostream, resource_attributes, scope_name, scope_version, \
                scope_attributes, attributes \
         FROM logs ORDER BY timestamp",
    );
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let first = &rows[0];
    let expected = json!({
        "timestamp": "2023-11-14T22:13:20.123456789Z",
        "observed_timestamp": "2023-11-14T22:13:21.000000007Z",
        "severity_number": 13,
        "severity_text": "WARN",
        "body": "disk almost full",
        "trace_id": "5b8efff798038103d269b633813fc60c",
        "span_id": "eee19b7ec3c1b174",
        "flags": 1,
        "event_name": "disk.warning",
        "service_name": "json-svc",
        "k8s_namespace_name": "prod",
        "k8s_pod_name": "api-5c6b",
        "k8s_pod_uid": "0b7e-11",
        "k8s_container_name": "api",
        "container_id": "c0ffee",
        "k8s_node_name": "node-7",
        "log_iostream": "stdout",
        "resource_attributes": { "cloud.region": "eu-west-1" },
        "scope_name": "json-scope",
        "scope_version": "2.0",
        "scope_attributes": { "lib.flavour": "vanilla" },
        "attributes": strings(&[
            ("as.string", "9007199254740993"),
            ("as.number", "9007199254740993"),
            ("negative", "-5"),
            ("double", "2.5"),
            ("flag", "false"),
            ("list", r#"["a",1]"#),
            ("nested", r#"{"k":"v"}"#),
            ("raw", "deadbeef"),
            ("with.unknown", "kept"),
        ]),
    });
    assert_eq!(Value::Object(first.clone()), expected);

    let second = &rows[1];
    assert_eq!(second["timestamp"], "2023-11-14T22:13:22.000000001Z");
    assert_eq!(second["body"], "second");
    assert_eq!(second["trace_id"], Value::Null);
    assert_eq!(second["severity_text"], Value::Null);
    assert_eq!(second["attributes"], json!({}));
    // Without observedTimeUnixNano the time of receipt stands in: after the event, before now.
    let observed = second["observed_timestamp"].as_str().expect("observed_timestamp is a string");
    assert!(observed > "2024" && observed.ends_with('Z'), "{observed}");
}

#[test]
fn protobuf_gzip_and_json_gzip_bodies_are_accepted() {
    let (_dir, server) = start();
    let traced = LogRecord { trace_id: (1..=16).collect(), span_id: (0xa1..=0xa8).collect(), ..record("traced") };
    let plain = log_request("proto-plain", vec![traced, record("two")]);
    assert_fully_accepted(&post(&server, "/v1/logs", Some(PROTOBUF), false, plain.encode_to_vec()), PROTOBUF);
    let zipped = log_request("proto-gzip", vec![record("three")]);
    assert_fully_accepted(&post(&server, "/v1/logs", Some(PROTOBUF), true, zipped.encode_to_vec()), PROTOBUF);
    // The alternative media type and parameters are recognised too.
    let alternative = log_request("proto-alt", vec![record("four")]);
    let answer = post(&server, "/v1/logs", Some("application/protobuf"), false, alternative.encode_to_vec());
    assert_eq!(answer.status, 200, "{}", answer.text());
    let json_body = json!({ "resourceLogs": [{
        "resource": { "attributes": [{ "key": "service.name", "value": { "stringValue": "json-gzip" } }] },
        "scopeLogs": [{ "logRecords": [{ "timeUnixNano": "1700000000000000001", "body": { "stringValue": "five" } }] }]
    }]});
    let answer =
        post(&server, "/v1/logs", Some("application/json; charset=utf-8"), true, json_body.to_string().into_bytes());
    assert_fully_accepted(&answer, JSON);

    let rows = server.sql_rows("SELECT service_name, body, trace_id, span_id FROM logs ORDER BY body");
    assert_eq!(
        rows,
        vec![
            vec![json!("json-gzip"), json!("five"), Value::Null, Value::Null],
            vec![json!("proto-alt"), json!("four"), Value::Null, Value::Null],
            vec![json!("proto-gzip"), json!("three"), Value::Null, Value::Null],
            vec![
                json!("proto-plain"),
                json!("traced"),
                json!("0102030405060708090a0b0c0d0e0f10"),
                json!("a1a2a3a4a5a6a7a8")
            ],
            vec![json!("proto-plain"), json!("two"), Value::Null, Value::Null],
        ]
    );
}

#[test]
fn otlp_json_spans_keep_kind_status_events_and_links() {
    let (_dir, server) = start();
    let request = json!({ "resourceSpans": [{
        "resource": { "attributes": [{ "key": "service.name", "value": { "stringValue": "json-traces" } }] },
        "scopeSpans": [{
            "scope": { "name": "tracer", "version": "0.9" },
            "spans": [
                {
                    "traceId": "5b8efff798038103d269b633813fc60c",
                    "spanId": "eee19b7ec3c1b174",
                    "parentSpanId": "",
                    "traceState": "vendor=1",
                    "name": "GET /items",
                    "kind": 2,
                    "startTimeUnixNano": "1700000000000000001",
                    "endTimeUnixNano": 1_700_000_000_500_000_001u64,
                    "attributes": [{ "key": "http.response.status_code", "value": { "intValue": "503" } }],
                    "status": { "code": 2, "message": "upstream down" },
                    "events": [{
                        "timeUnixNano": "1700000000100000000",
                        "name": "exception",
                        "attributes": [{ "key": "exception.type", "value": { "stringValue": "Timeout" } }]
                    }],
                    "links": [{
                        "traceId": "0102030405060708090a0b0c0d0e0f10",
                        "spanId": "0102030405060708",
                        "attributes": [{ "key": "link.kind", "value": { "stringValue": "follows" } }]
                    }]
                },
                {
                    "traceId": "5b8efff798038103d269b633813fc60c",
                    "spanId": "1111111111111111",
                    "parentSpanId": "eee19b7ec3c1b174",
                    "name": "SELECT items",
                    "kind": 3,
                    "startTimeUnixNano": "1700000000100000001",
                    "endTimeUnixNano": "1700000000200000001",
                    "status": { "code": 1 }
                }
            ]
        }]
    }]});
    let answer = post_json(&server, "/v1/traces", &request);
    assert_eq!(answer.status, 200, "{}", answer.text());

    let rows = server.sql_objects(
        "SELECT trace_id, span_id, parent_span_id, trace_state, name, kind, start_time, end_time, duration_ns, \
                status_code, status_message, events, links, attributes, service_name, scope_name, scope_version \
         FROM spans ORDER BY start_time",
    );
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let (server_span, client_span) = (&rows[0], &rows[1]);
    assert_eq!(server_span["trace_id"], "5b8efff798038103d269b633813fc60c");
    assert_eq!(server_span["span_id"], "eee19b7ec3c1b174");
    assert_eq!(server_span["parent_span_id"], Value::Null);
    assert_eq!(server_span["trace_state"], "vendor=1");
    assert_eq!(server_span["name"], "GET /items");
    assert_eq!(server_span["kind"], "server");
    assert_eq!(server_span["start_time"], "2023-11-14T22:13:20.000000001Z");
    assert_eq!(server_span["end_time"], "2023-11-14T22:13:20.500000001Z");
    assert_eq!(server_span["duration_ns"], 500_000_000);
    assert_eq!(server_span["status_code"], "error");
    assert_eq!(server_span["status_message"], "upstream down");
    assert_eq!(server_span["attributes"], strings(&[("http.response.status_code", "503")]));
    assert_eq!(server_span["service_name"], "json-traces");
    assert_eq!(server_span["scope_name"], "tracer");
    assert_eq!(server_span["scope_version"], "0.9");
    let events: Value =
        serde_json::from_str(server_span["events"].as_str().expect("events text")).expect("events JSON");
    assert_eq!(
        events,
        json!([{ "time_unix_nano": 1_700_000_000_100_000_000u64, "name": "exception",
                 "attributes": { "exception.type": "Timeout" } }])
    );
    let links: Value = serde_json::from_str(server_span["links"].as_str().expect("links text")).expect("links JSON");
    assert_eq!(
        links,
        json!([{ "trace_id": "0102030405060708090a0b0c0d0e0f10", "span_id": "0102030405060708",
                 "trace_state": "", "attributes": { "link.kind": "follows" } }])
    );

    assert_eq!(client_span["parent_span_id"], "eee19b7ec3c1b174");
    assert_eq!(client_span["kind"], "client");
    assert_eq!(client_span["duration_ns"], 100_000_000);
    assert_eq!(client_span["status_code"], "ok");
    assert_eq!(client_span["status_message"], Value::Null);
    assert_eq!(client_span["events"], Value::Null);
    assert_eq!(client_span["links"], Value::Null);
    assert_eq!(client_span["trace_state"], Value::Null);
}

#[test]
fn otlp_json_metrics_of_every_type_including_summary() {
    let (_dir, server) = start();
    let time = "1700000060000000001";
    let request = json!({ "resourceMetrics": [{
        "resource": { "attributes": [{ "key": "service.name", "value": { "stringValue": "json-metrics" } }] },
        "scopeMetrics": [{
            "scope": { "name": "meter", "version": "1" },
            "metrics": [
                { "name": "rpc.duration", "unit": "ms", "description": "time per call", "summary": { "dataPoints": [{
                    "startTimeUnixNano": "1700000000000000003", "timeUnixNano": time, "count": "10", "sum": 123.5,
                    "quantileValues": [{ "quantile": 0.5, "value": 9.5 }, { "quantile": 0.99, "value": 40 }],
                    "attributes": [{ "key": "rpc.method", "value": { "stringValue": "Get" } }]
                }]}},
                { "name": "queue.size", "gauge": { "dataPoints": [{ "timeUnixNano": time, "asInt": "-42" }] } },
                { "name": "bytes.sent", "unit": "By", "sum": {
                    "aggregationTemporality": 1, "isMonotonic": true,
                    "dataPoints": [{ "startTimeUnixNano": "1700000000000000003", "timeUnixNano": time, "asDouble": 1024.5 }]
                }},
                { "name": "request.size", "histogram": { "aggregationTemporality": 2, "dataPoints": [{
                    "timeUnixNano": time, "count": 3, "sum": 6, "bucketCounts": ["1", 2, "0"], "explicitBounds": [1, 5],
                    "min": 1, "max": 3
                }]}},
                { "name": "response.size", "exponentialHistogram": { "aggregationTemporality": 1, "dataPoints": [{
                    "timeUnixNano": time, "count": "4", "sum": 20, "scale": 1, "zeroCount": "1", "zeroThreshold": 0.001,
                    "positive": { "offset": 2, "bucketCounts": ["1", "2"] },
                    "negative": { "offset": -1, "bucketCounts": [0] }
                }]}}
            ]
        }]
    }]});
    let answer = post_json(&server, "/v1/metrics", &request);
    assert_eq!(answer.status, 200, "{}", answer.text());

    let rows = server.sql_objects(
        "SELECT metric_name, metric_type, metric_description, unit, aggregation_temporality, is_monotonic, timestamp, \
                start_timestamp, value, count, sum, min, max, explicit_bounds, bucket_counts, exp_scale, exp_zero_count, \
                exp_zero_threshold, exp_positive_offset, exp_positive_bucket_counts, exp_negative_offset, \
                exp_negative_bucket_counts, quantiles, quantile_values, attributes, scope_name, service_name \
         FROM metrics ORDER BY metric_name",
    );
    let names: Vec<&Value> = rows.iter().map(|row| &row["metric_name"]).collect();
    assert_eq!(names, vec!["bytes.sent", "queue.size", "request.size", "response.size", "rpc.duration"]);
    let [sum, gauge, histogram, exponential, summary] = rows.as_slice() else { unreachable!() };

    assert_eq!(summary["metric_type"], "summary");
    assert_eq!(summary["metric_description"], "time per call");
    assert_eq!(summary["unit"], "ms");
    assert_eq!(summary["timestamp"], "2023-11-14T22:14:20.000000001Z");
    assert_eq!(summary["start_timestamp"], "2023-11-14T22:13:20.000000003Z");
    assert_eq!(as_u64(&summary["count"]), Some(10));
    assert_eq!(as_f64(&summary["sum"]), Some(123.5));
    assert_eq!(floats(&summary["quantiles"]), vec![0.5, 0.99]);
    assert_eq!(floats(&summary["quantile_values"]), vec![9.5, 40.0]);
    assert_eq!(summary["value"], Value::Null);
    assert_eq!(summary["aggregation_temporality"], Value::Null);
    assert_eq!(summary["attributes"], strings(&[("rpc.method", "Get")]));
    assert_eq!(summary["scope_name"], "meter");
    assert_eq!(summary["service_name"], "json-metrics");

    assert_eq!(gauge["metric_type"], "gauge");
    assert_eq!(as_f64(&gauge["value"]), Some(-42.0));
    assert_eq!(gauge["start_timestamp"], Value::Null);
    assert_eq!(gauge["count"], Value::Null);

    assert_eq!(sum["metric_type"], "sum");
    assert_eq!(sum["aggregation_temporality"], "delta");
    assert_eq!(sum["is_monotonic"], true);
    assert_eq!(as_f64(&sum["value"]), Some(1024.5));

    assert_eq!(histogram["metric_type"], "histogram");
    assert_eq!(histogram["aggregation_temporality"], "cumulative");
    assert_eq!(as_u64(&histogram["count"]), Some(3));
    assert_eq!(as_f64(&histogram["sum"]), Some(6.0));
    assert_eq!(as_f64(&histogram["min"]), Some(1.0));
    assert_eq!(as_f64(&histogram["max"]), Some(3.0));
    assert_eq!(floats(&histogram["explicit_bounds"]), vec![1.0, 5.0]);
    assert_eq!(integers(&histogram["bucket_counts"]), vec![1, 2, 0]);

    assert_eq!(exponential["metric_type"], "exponential_histogram");
    assert_eq!(exponential["aggregation_temporality"], "delta");
    assert_eq!(as_u64(&exponential["count"]), Some(4));
    assert_eq!(exponential["exp_scale"], 1);
    assert_eq!(as_u64(&exponential["exp_zero_count"]), Some(1));
    assert_eq!(as_f64(&exponential["exp_zero_threshold"]), Some(0.001));
    assert_eq!(exponential["exp_positive_offset"], 2);
    assert_eq!(integers(&exponential["exp_positive_bucket_counts"]), vec![1, 2]);
    assert_eq!(exponential["exp_negative_offset"], -1);
    assert_eq!(integers(&exponential["exp_negative_bucket_counts"]), vec![0]);
    assert_eq!(exponential["min"], Value::Null);
}

#[test]
fn invalid_records_are_reported_in_partial_success_and_the_rest_kept() {
    let (_dir, server) = start();

    // Protobuf logs: two bad ids among three good records.
    let records = vec![
        record("good 1"),
        LogRecord { trace_id: vec![1, 2, 3], ..record("bad trace id") },
        record("good 2"),
        LogRecord { span_id: vec![1, 2, 3, 4, 5], ..record("bad span id") },
        record("good 3"),
    ];
    let answer = post(&server, "/v1/logs", Some(PROTOBUF), false, log_request("partial", records).encode_to_vec());
    assert_eq!(answer.status, 200, "OTLP: partial success is a 200; {}", answer.text());
    assert_eq!(answer.content_type, PROTOBUF);
    let response = ExportLogsServiceResponse::decode(answer.body.as_slice()).expect("protobuf answer");
    let partial = response.partial_success.expect("partial_success is set");
    assert_eq!(partial.rejected_log_records, 2);
    assert!(partial.error_message.contains("trace_id of 3 bytes"), "{}", partial.error_message);
    assert!(partial.error_message.contains("span_id of 5 bytes"), "{}", partial.error_message);
    let bodies = server.sql_rows("SELECT body FROM logs WHERE service_name = 'partial' ORDER BY body");
    assert_eq!(bodies, vec![vec![json!("good 1")], vec![json!("good 2")], vec![json!("good 3")]]);

    // OTLP/JSON spans: one with a 3-byte trace id.
    let span = |trace_id: &str, name: &str| {
        json!({ "traceId": trace_id, "spanId": "0102030405060708", "name": name, "kind": 1,
                "startTimeUnixNano": "1700000000000000001", "endTimeUnixNano": "1700000000000000002" })
    };
    let request = json!({ "resourceSpans": [{ "scopeSpans": [{ "spans": [
        span("5b8efff798038103d269b633813fc60c", "kept"),
        span("010203", "refused")
    ]}]}]});
    let answer = post_json(&server, "/v1/traces", &request);
    assert_eq!(answer.status, 200, "{}", answer.text());
    assert_eq!(answer.content_type, JSON);
    let json = answer.json();
    assert_eq!(as_u64(&json["partialSuccess"]["rejectedSpans"]), Some(1), "{json}");
    let message = json["partialSuccess"]["errorMessage"].as_str().unwrap_or_default();
    assert!(message.contains("trace_id of 3 bytes"), "{json}");
    assert_eq!(server.sql_rows("SELECT name FROM spans"), vec![vec![json!("kept")]]);

    // OTLP/JSON metrics: a nameless metric's two points and an inconsistent histogram point.
    let request = json!({ "resourceMetrics": [{ "scopeMetrics": [{ "metrics": [
        { "name": "", "gauge": { "dataPoints": [{ "asDouble": 1.0 }, { "asDouble": 2.0 }] } },
        { "name": "bad.histogram", "histogram": { "aggregationTemporality": 2, "dataPoints": [
            { "count": "3", "bucketCounts": ["1", "2"], "explicitBounds": [1, 2, 3] }
        ]}},
        { "name": "good.gauge", "gauge": { "dataPoints": [{ "timeUnixNano": "1700000000000000001", "asDouble": 7.5 }] } }
    ]}]}]});
    let answer = post_json(&server, "/v1/metrics", &request);
    assert_eq!(answer.status, 200, "{}", answer.text());
    let json = answer.json();
    assert_eq!(as_u64(&json["partialSuccess"]["rejectedDataPoints"]), Some(3), "{json}");
    assert_eq!(server.sql_rows("SELECT metric_name, value FROM metrics"), vec![vec![json!("good.gauge"), json!(7.5)]]);

    // The same rule over gRPC.
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let response = runtime.block_on(async {
        let mut client = LogsServiceClient::connect(server.grpc_endpoint()).await.expect("gRPC connect");
        let records = vec![record("grpc good"), LogRecord { trace_id: vec![9; 17], ..record("grpc bad") }];
        client.export(log_request("partial-grpc", records)).await.expect("gRPC export").into_inner()
    });
    let partial = response.partial_success.expect("partial_success over gRPC");
    assert_eq!(partial.rejected_log_records, 1);
    assert!(partial.error_message.contains("trace_id of 17 bytes"), "{}", partial.error_message);
    assert_eq!(server.count("SELECT count(*) FROM logs WHERE service_name = 'partial-grpc'"), 1);
}

#[test]
fn unsupported_content_types_are_415() {
    let (_dir, server) = start();
    let body = log_request("nope", vec![record("never stored")]).encode_to_vec();
    for content_type in [Some("text/plain"), Some("application/grpc"), None] {
        let answer = post(&server, "/v1/logs", content_type, false, body.clone());
        assert_eq!(answer.status, 415, "content type {content_type:?}: {}", answer.text());
        // The request's encoding is unknown, so the google.rpc.Status comes as JSON.
        assert_eq!(answer.content_type, JSON);
        let status = answer.json();
        assert_eq!(status["code"], INVALID_ARGUMENT, "{status}");
        assert!(status["message"].as_str().is_some_and(|m| m.contains("content type")), "{status}");
    }
    assert_eq!(server.count("SELECT count(*) FROM logs"), 0);
}

#[test]
fn malformed_bodies_are_400_with_a_status_in_the_request_encoding() {
    let (_dir, server) = start();
    let earlier =
        post(&server, "/v1/logs", Some(PROTOBUF), false, log_request("earlier", vec![record("kept")]).encode_to_vec());
    assert_fully_accepted(&earlier, PROTOBUF);
    // Field 1 (resource_logs) claims 5 bytes and has 3.
    let garbage = vec![0x0a, 0x05, b'a', b'b', b'c'];
    for path in ["/v1/logs", "/v1/metrics", "/v1/traces"] {
        let answer = post(&server, path, Some(PROTOBUF), false, garbage.clone());
        assert_eq!(answer.status, 400, "{path}: {}", answer.text());
        assert_eq!(answer.content_type, PROTOBUF);
        let status = RpcStatus::decode(answer.body.as_slice()).expect("a google.rpc.Status in protobuf");
        assert_eq!(status.code, INVALID_ARGUMENT, "{status:?}");
        assert!(status.message.contains("protobuf"), "{status:?}");

        let json_garbage =
            [r#"{"resourceLogs": ["#, "[1, 2]", r#"{"resourceSpans": 5, "resourceLogs": 5, "resourceMetrics": 5}"#];
        for garbage in json_garbage {
            let answer = post(&server, path, Some(JSON), false, garbage.as_bytes().to_vec());
            assert_eq!(answer.status, 400, "{path} {garbage}: {}", answer.text());
            assert_eq!(answer.content_type, JSON);
            let status = answer.json();
            assert_eq!(status["code"], INVALID_ARGUMENT, "{status}");
            assert!(status["message"].as_str().is_some_and(|m| m.contains("JSON")), "{status}");
        }
    }

    // A body that claims gzip and is not.
    let answer = {
        let request = server
            .client()
            .post(server.otlp_url("/v1/logs"))
            .header("content-type", PROTOBUF)
            .header("content-encoding", "gzip")
            .body(log_request("not-gzip", vec![record("x")]).encode_to_vec());
        request.send().expect("POST")
    };
    assert_eq!(answer.status(), 400);
    let status = RpcStatus::decode(answer.bytes().expect("body")).expect("google.rpc.Status");
    assert!(status.message.contains("gzip"), "{status:?}");

    // Nothing of the garbage was stored, and what was accepted before it is intact.
    assert_eq!(server.sql_rows("SELECT service_name, body FROM logs"), vec![vec![json!("earlier"), json!("kept")]]);
    assert_eq!(server.count("SELECT count(*) FROM metrics"), 0);
    assert_eq!(server.count("SELECT count(*) FROM spans"), 0);
}

#[test]
fn empty_bodies_are_valid_empty_requests() {
    let (_dir, server) = start();
    for path in ["/v1/logs", "/v1/metrics", "/v1/traces"] {
        let answer = post(&server, path, Some(PROTOBUF), false, Vec::new());
        assert_eq!(answer.status, 200, "{path}: {}", answer.text());
        assert_eq!(answer.content_type, PROTOBUF);
        assert!(answer.body.is_empty(), "{path}: an all-default response encodes to nothing");
        let answer = post(&server, path, Some(JSON), false, b"{}".to_vec());
        assert_eq!(answer.status, 200, "{path}: {}", answer.text());
    }
    assert_eq!(server.count("SELECT count(*) FROM logs"), 0);
}

/// A protobuf log request of about `bytes` bytes.
fn request_of_size(service: &str, bytes: usize) -> Vec<u8> {
    log_request(service, vec![record(&"x".repeat(bytes))]).encode_to_vec()
}

#[test]
fn oversized_bodies_are_413_before_and_after_decompression() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = WakeServer::start(dir.path(), &["--max-request-bytes", "65536"]);

    let answer = post(&server, "/v1/logs", Some(PROTOBUF), false, request_of_size("too-big", 70_000));
    assert_eq!(answer.status, 413, "{}", answer.text());
    let status = RpcStatus::decode(answer.body.as_slice()).expect("google.rpc.Status");
    assert!(status.message.contains("65536"), "{status:?}");
    assert!(answer.headers.get("retry-after").is_none(), "OTLP: 413 must not be retried");

    // Small on the wire, too large once inflated.
    let body = request_of_size("too-big-inflated", 70_000);
    assert!(gzipped(&body).len() < 65_536);
    let answer = post(&server, "/v1/logs", Some(PROTOBUF), true, body);
    assert_eq!(answer.status, 413, "{}", answer.text());

    // Just under the limit is fine, compressed or not.
    let answer = post(&server, "/v1/logs", Some(PROTOBUF), false, request_of_size("fits", 60_000));
    assert_eq!(answer.status, 200, "{}", answer.text());
    let answer = post(&server, "/v1/logs", Some(PROTOBUF), true, request_of_size("fits-gzip", 60_000));
    assert_eq!(answer.status, 200, "{}", answer.text());
    let rows = server.sql_rows("SELECT service_name FROM logs ORDER BY service_name");
    assert_eq!(rows, vec![vec![json!("fits")], vec![json!("fits-gzip")]]);
}

#[test]
fn a_gzip_bomb_is_413_and_the_server_keeps_serving() {
    let (_dir, server) = start();
    let earlier = post(
        &server,
        "/v1/logs",
        Some(PROTOBUF),
        false,
        log_request("before-bomb", vec![record("kept")]).encode_to_vec(),
    );
    assert_fully_accepted(&earlier, PROTOBUF);
    // 200 MB of zeros: 0.2 MB on the wire, ten times the default 20 MiB limit once inflated.
    let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..200 {
        encoder.write_all(&zeros).expect("gzip into memory");
    }
    let bomb = encoder.finish().expect("gzip into memory");
    assert!(bomb.len() < 1 << 20, "the bomb is small on the wire: {} bytes", bomb.len());

    for content_type in [PROTOBUF, JSON] {
        let started = std::time::Instant::now();
        let response = server
            .client()
            .post(server.otlp_url("/v1/logs"))
            .header("content-type", content_type)
            .header("content-encoding", "gzip")
            .body(bomb.clone())
            .send()
            .expect("POST the bomb");
        assert_eq!(response.status(), 413, "{content_type}");
        assert!(started.elapsed() < Duration::from_secs(20), "refusing the bomb took {:?}", started.elapsed());
    }

    let answer =
        post(&server, "/v1/logs", Some(PROTOBUF), true, log_request("after-bomb", vec![record("ok")]).encode_to_vec());
    assert_fully_accepted(&answer, PROTOBUF);
    assert_eq!(
        server.sql_rows("SELECT service_name, body FROM logs ORDER BY service_name"),
        vec![vec![json!("after-bomb"), json!("ok")], vec![json!("before-bomb"), json!("kept")]]
    );
    let health = server.client().get(server.api_url("/healthz")).send().expect("GET /healthz");
    assert_eq!(health.status(), 200);
}

#[test]
fn grpc_enforces_the_size_limit_after_decompression_and_accepts_gzip() {
    let (_dir, server) = start();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async {
        let channel = tonic::transport::Endpoint::new(server.grpc_endpoint())
            .expect("endpoint")
            .connect()
            .await
            .expect("gRPC connect");
        let mut gzip_client = LogsServiceClient::new(channel.clone())
            .send_compressed(tonic::codec::CompressionEncoding::Gzip)
            .max_encoding_message_size(usize::MAX);

        let response = gzip_client
            .export(log_request("grpc-gzip", vec![record("compressed")]))
            .await
            .expect("gzip-compressed gRPC export");
        assert_eq!(response.into_inner().partial_success, None);

        // 24 MiB of one letter compresses to almost nothing and inflates past the 20 MiB limit.
        let bomb = log_request("grpc-bomb", vec![record(&"z".repeat(24 << 20))]);
        let status = gzip_client.export(bomb.clone()).await.expect_err("an inflated 24 MiB message is refused");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");

        let mut plain_client = LogsServiceClient::new(channel).max_encoding_message_size(usize::MAX);
        let status = plain_client.export(bomb).await.expect_err("a 24 MiB message is refused");
        assert!(
            matches!(status.code(), tonic::Code::OutOfRange | tonic::Code::ResourceExhausted),
            "a non-retryable code: {status:?}"
        );
    });
    assert_eq!(
        server.sql_rows("SELECT service_name, body FROM logs"),
        vec![vec![json!("grpc-gzip"), json!("compressed")]]
    );
}
