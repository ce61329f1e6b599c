//! `wake sql` and `wake logs` against a running server: what a person at a terminal sees.

mod common;

use std::process::{Command, Output};

use common::{WakeServer, attribute, log_request, string_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;

/// 2026-11-23T00:00:00Z.
const T0_NS: u64 = 1_795_392_000_000_000_000;

fn wake(server: &WakeServer, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_wake"))
        .args(args)
        .env("WAKE_URL", format!("http://{}", server.http_addr))
        .output()
        .expect("running wake")
}

fn stdout(output: &Output) -> String {
    assert!(output.status.success(), "wake failed: {}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn start() -> (tempfile::TempDir, WakeServer) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = WakeServer::start(dir.path(), &[]);
    let records = ["starting", "connection refused by db", "retrying", "connected"]
        .iter()
        .enumerate()
        .map(|(i, body)| LogRecord {
            time_unix_nano: T0_NS + i as u64 * 1_000_000_000,
            body: Some(string_value(body)),
            attributes: vec![attribute("log.iostream", if i == 1 { "stderr" } else { "stdout" })],
            ..Default::default()
        })
        .collect();
    let mut request = log_request("api", records);
    if let Some(resource) = request.resource_logs[0].resource.as_mut() {
        resource.attributes.push(attribute("k8s.namespace.name", "shop"));
        resource.attributes.push(attribute("k8s.pod.name", "api-1"));
        resource.attributes.push(attribute("k8s.container.name", "api"));
    }
    server.post_logs(&request);
    server.wait_for_count("SELECT count(*) FROM logs", 4, std::time::Duration::from_secs(5));
    (dir, server)
}

#[test]
fn wake_sql_prints_tables_csv_and_errors() {
    let (_dir, server) = start();
    let table =
        stdout(&wake(&server, &["sql", "SELECT k8s_pod_name AS pod, count(*) AS n FROM logs GROUP BY k8s_pod_name"]));
    assert_eq!(table, " pod   | n\n-------+---\n api-1 | 4\n(1 row)\n");
    let csv = stdout(&wake(&server, &["sql", "--format", "csv", "SELECT body FROM logs ORDER BY timestamp LIMIT 2"]));
    assert_eq!(csv, "body\nstarting\nconnection refused by db\n");

    let refused = wake(&server, &["sql", "DROP TABLE logs"]);
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(message.contains("403"), "{message}");
}

#[test]
fn wake_logs_prints_lines_in_time_order_for_logql_or_words() {
    let (_dir, server) = start();
    let from = "2026-11-22T23:59:00Z";
    let to = "2026-11-23T00:01:00Z";
    let text = stdout(&wake(&server, &["logs", r#"{namespace="shop"}"#, "--from", from, "--to", to]));
    assert_eq!(
        text,
        "2026-11-23T00:00:00.000000000Z shop/api-1/api starting\n\
         2026-11-23T00:00:01.000000000Z shop/api-1/api connection refused by db\n\
         2026-11-23T00:00:02.000000000Z shop/api-1/api retrying\n\
         2026-11-23T00:00:03.000000000Z shop/api-1/api connected\n"
    );

    // Plain words search every container; `--limit` keeps the newest.
    let found =
        stdout(&wake(&server, &["logs", "conn", "--from", from, "--to", to, "--limit", "1", "--output", "jsonl"]));
    let lines: Vec<serde_json::Value> = found.lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["line"], "connected");
    assert_eq!(lines[0]["labels"]["stream"], "stdout");
    assert_eq!(lines[0]["time"], "2026-11-23T00:00:03.000000000Z");

    // Nothing before --from.
    let none = stdout(&wake(&server, &["logs", r#"{namespace="shop"}"#, "--from", "2026-11-23T00:00:04Z", "--to", to]));
    assert_eq!(none, "");

    let bad = wake(&server, &["logs", r#"{namespace=~".*"}"#, "--from", from, "--to", to]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("400"));
}
