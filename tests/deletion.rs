//! Deletion requests: Loki's `/loki/api/v1/delete` and Prometheus' `delete_series` remove the
//! rows they name from files and buffers alike before they answer, leave every other row, are
//! listed, survive a restart (the WAL does not bring deleted rows back), leave a store `wake
//! check` finds clean, and refuse bad requests in their API's shape.

mod common;

use std::ffi::OsStr;

use common::{WakeServer, now_ns};
use serde_json::{Value, json};

fn post_json(server: &WakeServer, path: &str, body: Value) {
    let response = server.client().post(server.otlp_url(path)).json(&body).send().expect("OTLP/HTTP");
    assert_eq!(response.status(), 200, "{path}: {}", response.text().unwrap_or_default());
}

fn logs(service: &str, lines: &[&str], at_ns: u64) -> Value {
    let records: Vec<Value> = lines
        .iter()
        .enumerate()
        .map(|(i, line)| json!({"timeUnixNano": (at_ns + i as u64).to_string(), "body": {"stringValue": line}}))
        .collect();
    json!({"resourceLogs": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeLogs": [{"logRecords": records}]}]})
}

fn gauge(host: &str, at_ns: u64, value: f64) -> Value {
    json!({"resourceMetrics": [{"scopeMetrics": [{"metrics": [{"name": "room_temperature", "gauge": {"dataPoints": [
        {"timeUnixNano": at_ns.to_string(), "asDouble": value, "attributes": [{"key": "host", "value": {"stringValue": host}}]}
    ]}}]}]}]})
}

fn bodies(server: &WakeServer) -> Vec<String> {
    server
        .sql_rows("SELECT service_name || ':' || body FROM logs ORDER BY timestamp")
        .into_iter()
        .map(|row| row[0].as_str().expect("text").to_string())
        .collect()
}

fn hosts(server: &WakeServer) -> Vec<String> {
    let response = server
        .client()
        .get(server.api_url("/api/v1/series"))
        .query(&[("match[]", "room_temperature")])
        .send()
        .expect("series");
    let answer: Value = response.json().expect("JSON");
    let mut hosts: Vec<String> =
        answer["data"].as_array().expect("data").iter().map(|s| s["host"].as_str().unwrap_or("").to_string()).collect();
    hosts.sort();
    hosts
}

#[test]
fn deletions_remove_what_they_name_everywhere_and_for_good() {
    let data = tempfile::tempdir().expect("temp dir");
    let mut server = WakeServer::start(data.path(), &[]);
    let t0 = now_ns() - 600_000_000_000;
    // Half in files, half still buffered when the deletion comes.
    post_json(&server, "/v1/logs", logs("api", &["user=alice password=hunter2", "user=bob ok"], t0));
    post_json(&server, "/v1/logs", logs("web", &["password=web-secret"], t0 + 10));
    post_json(&server, "/v1/metrics", gauge("a", t0, 20.0));
    post_json(&server, "/v1/metrics", gauge("b", t0, 21.0));
    server.flush();
    post_json(&server, "/v1/logs", logs("api", &["user=carol password=swordfish"], t0 + 1_000_000_000));
    post_json(&server, "/v1/metrics", gauge("a", t0 + 1_000_000_000, 22.0));
    assert_eq!(bodies(&server).len(), 4);

    let delete = server
        .client()
        .post(server.api_url("/loki/api/v1/delete"))
        .query(&[
            ("query", r#"{service_name="api"} |= "password""#),
            ("start", &(t0 / 1_000_000_000 - 60).to_string()),
            ("end", &(t0 / 1_000_000_000 + 60).to_string()),
        ])
        .send()
        .expect("delete");
    assert_eq!(delete.status(), 204, "{}", delete.text().unwrap_or_default());
    let expected_logs = ["api:user=bob ok", "web:password=web-secret"];
    assert_eq!(bodies(&server), expected_logs, "only api's password lines went, from files and buffers");
    let loki = server
        .client()
        .get(server.api_url("/loki/api/v1/query_range"))
        .query(&[("query", r#"{service_name=~".+"} |= "password""#), ("since", "1h")])
        .send()
        .expect("query_range")
        .text()
        .expect("text");
    assert!(!loki.contains("hunter2") && !loki.contains("swordfish") && loki.contains("web-secret"), "{loki}");

    let listed: Value =
        server.client().get(server.api_url("/loki/api/v1/delete")).send().expect("list").json().expect("JSON");
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["status"], "processed", "{listed}");
    assert_eq!(listed[0]["query"], r#"{service_name="api"} |= "password""#);
    let id = listed[0]["request_id"].as_str().expect("an id").to_string();
    let cancel =
        server.client().delete(server.api_url("/loki/api/v1/delete")).query(&[("request_id", &id)]).send().expect("x");
    assert_eq!(cancel.status(), 400, "a processed request cannot be cancelled");

    assert_eq!(hosts(&server), ["a", "b"]);
    let delete = server
        .client()
        .post(server.api_url("/api/v1/admin/tsdb/delete_series"))
        .query(&[("match[]", r#"room_temperature{host="a"}"#)])
        .send()
        .expect("delete_series");
    assert_eq!(delete.status(), 204, "{}", delete.text().unwrap_or_default());
    assert_eq!(hosts(&server), ["b"]);
    assert_eq!(server.count("SELECT count(*) FROM metrics WHERE metric_name = 'room_temperature'"), 1);

    // Bad requests, in each API's shape.
    let bad = server
        .client()
        .post(server.api_url("/loki/api/v1/delete"))
        .query(&[("query", r#"{service_name="api"} | json"#)])
        .send()
        .expect("bad delete");
    assert_eq!(bad.status(), 400);
    assert!(bad.text().unwrap_or_default().contains("line filters only"));
    let bad = server.client().post(server.api_url("/api/v1/admin/tsdb/delete_series")).send().expect("no match[]");
    assert_eq!(bad.status(), 400);
    let answer: Value = bad.json().expect("Prometheus' envelope");
    assert_eq!(answer["errorType"], "bad_data", "{answer}");

    // For good: a restart replays the WAL, and none of it comes back.
    server.terminate();
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_wake"))
        .args([OsStr::new("check"), OsStr::new("--data-dir"), data.path().as_os_str()])
        .output()
        .expect("wake check");
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stdout));
    let server = WakeServer::start(data.path(), &[]);
    assert_eq!(bodies(&server), expected_logs);
    assert_eq!(hosts(&server), ["b"]);
}
