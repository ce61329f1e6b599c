//! Prometheus remote write 1.0 end to end: snappy-compressed `prometheus.WriteRequest`s posted to
//! `/api/v1/write` on the query port of the real binary, then read back with SQL.

mod common;

use common::WakeServer;
use prost::Message;
use serde_json::{Value, json};
use wake_storage::prompb::{Label, MetricMetadata, STALE_NAN_BITS, Sample, TimeSeries, WriteRequest};

/// 2023-11-14T22:13:20Z in milliseconds.
const T0_MS: i64 = 1_700_000_000_000;

fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> TimeSeries {
    TimeSeries {
        labels: labels.iter().map(|(name, value)| Label { name: name.to_string(), value: value.to_string() }).collect(),
        samples: samples.iter().map(|&(timestamp, value)| Sample { value, timestamp }).collect(),
    }
}

/// Posts `body` as Prometheus does: snappy block format, protobuf, version header.
fn post_raw(server: &WakeServer, body: Vec<u8>) -> (u16, String) {
    let response = server
        .client()
        .post(server.api_url("/api/v1/write"))
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "snappy")
        .header("x-prometheus-remote-write-version", "0.1.0")
        .body(body)
        .send()
        .unwrap_or_else(|e| panic!("POST /api/v1/write: {e}\n{}", server.log_tail()));
    let status = response.status().as_u16();
    (status, response.text().unwrap_or_default())
}

fn post(server: &WakeServer, request: &WriteRequest) -> (u16, String) {
    let body = snap::raw::Encoder::new().compress_vec(&request.encode_to_vec()).expect("snappy compression");
    post_raw(server, body)
}

fn metric_count(server: &WakeServer) -> u64 {
    server.count("SELECT count(*) FROM metrics")
}

/// The value of the request self-metric for `outcome`, from `/metrics` on the query port.
fn requests_total(server: &WakeServer, outcome: &str) -> f64 {
    let text = server.client().get(server.api_url("/metrics")).send().and_then(|r| r.text()).expect("GET /metrics");
    let wanted = ["signal=\"metrics\"", "transport=\"prometheus_remote_write\"", &format!("outcome=\"{outcome}\"")];
    text.lines()
        .filter(|line| line.starts_with("wake_server_otlp_requests_total{"))
        .filter(|line| wanted.iter().all(|label| line.contains(label)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn invalid_requests_are_refused_with_400_and_store_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = WakeServer::start(dir.path(), &[]);

    let (status, body) = post_raw(&server, b"this is not snappy".to_vec());
    assert_eq!(status, 400, "{body}");
    assert!(body.starts_with("snappy: "), "{body}");

    let not_protobuf = snap::raw::Encoder::new().compress_vec(&[0xff; 64]).expect("snappy compression");
    let (status, body) = post_raw(&server, not_protobuf);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("protobuf"), "{body}");

    // One good series and one without `__name__`: the whole request is refused.
    let nameless = WriteRequest {
        timeseries: vec![
            series(&[("__name__", "good"), ("job", "x")], &[(T0_MS, 1.0)]),
            series(&[("job", "x")], &[(T0_MS, 2.0)]),
        ],
        metadata: Vec::new(),
    };
    let (status, body) = post(&server, &nameless);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("__name__"), "{body}");

    let duplicated = WriteRequest {
        timeseries: vec![series(&[("__name__", "up"), ("job", "a"), ("job", "b")], &[(T0_MS, 1.0)])],
        metadata: Vec::new(),
    };
    let (status, body) = post(&server, &duplicated);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("duplicate label name \"job\""), "{body}");

    server.flush();
    assert_eq!(metric_count(&server), 0);
    assert_eq!(requests_total(&server, "error"), 4.0);
}

#[test]
fn samples_are_stored_with_exact_names_labels_times_and_values() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = WakeServer::start(dir.path(), &[]);

    let stale = f64::from_bits(STALE_NAN_BITS);
    let request = WriteRequest {
        timeseries: vec![
            series(
                &[("__name__", "http_requests_total"), ("code", "200"), ("instance", "api:8080"), ("job", "api")],
                &[(T0_MS, 10.0), (T0_MS + 15_000, 12.5), (T0_MS + 30_123, 0.1 + 0.2)],
            ),
            series(
                &[("__name__", "up"), ("instance", "node:9100"), ("job", "node")],
                &[(T0_MS, 1.0), (T0_MS + 15_000, stale)],
            ),
        ],
        metadata: vec![MetricMetadata {
            r#type: 1,
            metric_family_name: "http_requests_total".into(),
            help: "Requests served.".into(),
            unit: String::new(),
        }],
    };
    let (status, body) = post(&server, &request);
    assert_eq!(status, 204, "{body}");
    assert!(body.is_empty(), "{body}");
    assert_eq!(requests_total(&server, "ok"), 1.0);

    // 204 means stored: the rows are visible at once, from the buffer and then from Parquet.
    let query = "SELECT metric_name, timestamp, value, attributes, scope_name, metric_type, unit, service_name \
                 FROM metrics ORDER BY metric_name, timestamp";
    let expected = vec![
        vec![
            json!("http_requests_total"),
            json!("2023-11-14T22:13:20.000000000Z"),
            json!(10.0),
            json!({"code": "200", "instance": "api:8080", "job": "api"}),
            json!("prometheus.remote_write"),
            json!("gauge"),
            Value::Null,
            Value::Null,
        ],
        vec![
            json!("http_requests_total"),
            json!("2023-11-14T22:13:35.000000000Z"),
            json!(12.5),
            json!({"code": "200", "instance": "api:8080", "job": "api"}),
            json!("prometheus.remote_write"),
            json!("gauge"),
            Value::Null,
            Value::Null,
        ],
        vec![
            json!("http_requests_total"),
            json!("2023-11-14T22:13:50.123000000Z"),
            json!(0.1 + 0.2),
            json!({"code": "200", "instance": "api:8080", "job": "api"}),
            json!("prometheus.remote_write"),
            json!("gauge"),
            Value::Null,
            Value::Null,
        ],
        vec![
            json!("up"),
            json!("2023-11-14T22:13:20.000000000Z"),
            json!(1.0),
            json!({"instance": "node:9100", "job": "node"}),
            json!("prometheus.remote_write"),
            json!("gauge"),
            Value::Null,
            Value::Null,
        ],
        vec![
            json!("up"),
            json!("2023-11-14T22:13:35.000000000Z"),
            json!("NaN"),
            json!({"instance": "node:9100", "job": "node"}),
            json!("prometheus.remote_write"),
            json!("gauge"),
            Value::Null,
            Value::Null,
        ],
    ];
    assert_eq!(server.sql_rows(query), expected);
    server.flush();
    assert_eq!(server.sql_rows(query), expected);

    // The staleness marker is a NaN in SQL terms too (its exact bits are checked by the unit
    // tests of the receiver, on the stored Arrow rows).
    assert_eq!(server.count("SELECT count(*) FROM metrics WHERE metric_name = 'up' AND isnan(value)"), 1);

    // Metadata only: accepted, nothing stored.
    let metadata_only = WriteRequest { timeseries: Vec::new(), metadata: request.metadata.clone() };
    let (status, body) = post(&server, &metadata_only);
    assert_eq!(status, 204, "{body}");
    assert_eq!(metric_count(&server), 5);
}

#[test]
fn other_encodings_and_remote_write_2_are_refused_with_415() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = WakeServer::start(dir.path(), &[]);
    let send = |content_type: &str, content_encoding: &str| {
        let response = server
            .client()
            .post(server.api_url("/api/v1/write"))
            .header("content-type", content_type)
            .header("content-encoding", content_encoding)
            .body(Vec::new())
            .send()
            .expect("POST /api/v1/write");
        response.status().as_u16()
    };
    assert_eq!(send("application/x-protobuf;proto=io.prometheus.write.v2.Request", "snappy"), 415);
    assert_eq!(send("application/x-protobuf", "gzip"), 415);
    assert_eq!(send("application/json", "snappy"), 415);
}
