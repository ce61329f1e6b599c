//! Retention and `wake check` against the real binary: old data goes and never comes back,
//! new data stays, the bytes on disk fall, and a store killed (-9) at many points while
//! retention and compaction run is found clean by `wake check`; a store that lost a file is
//! found damaged, and `wake check --repair` brings it back to a state that opens and checks
//! clean.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{WakeServer, attribute, now_ns, string_value};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use serde_json::Value;

const HOUR: u64 = 3_600_000_000_000;

fn config(dir: &Path, interval_secs: u64) -> String {
    let path = dir.join("wake.yaml");
    let text = format!(
        "store:\n  compaction_settle_secs: 0\n  retention:\n    logs: 2d\n    interval_secs: {interval_secs}\n"
    );
    std::fs::write(&path, text).expect("config");
    path.to_str().expect("utf-8").to_string()
}

fn start(data: &Path, config: &str) -> WakeServer {
    WakeServer::start(data, &["--config", config, "--max-record-age-secs", "0", "--self-metrics-interval", "0"])
}

/// `per_hour` lines in each of the hours `hours_ago` before now.
fn send_logs(server: &WakeServer, hours_ago: &[u64], per_hour: u64, now: u64) {
    let records = hours_ago
        .iter()
        .flat_map(|&hours| {
            (0..per_hour).map(move |i| {
                let time = now - hours * HOUR + i * 1_000_000_000;
                LogRecord {
                    time_unix_nano: time,
                    body: Some(string_value(&format!("line {hours}h ago #{i}"))),
                    ..Default::default()
                }
            })
        })
        .collect();
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![attribute("k8s.namespace.name", "shop")],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs { log_records: records, ..Default::default() }],
            ..Default::default()
        }],
    };
    server.post_logs(&request);
}

fn wake_check(data: &Path, repair: bool) -> (bool, Value) {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_wake"));
    command.args(["check", "--json", "--data-dir"]).arg(data).env("RUST_LOG", "warn");
    if repair {
        command.arg("--repair");
    }
    let output = command.output().expect("wake check");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
    });
    (output.status.success(), report)
}

fn parquet_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            total += parquet_bytes(&path);
        } else {
            total += entry.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    total
}

#[test]
fn retention_drops_the_old_range_keeps_the_rest_and_checks_clean() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let config = config(dir.path(), 3600);
    let mut server = start(&data, &config);
    let now = now_ns();
    send_logs(&server, &[120, 96, 72, 36, 12, 1], 100, now);
    server.flush();
    let before = parquet_bytes(&data.join("logs"));

    let response = server.client().post(server.api_url("/api/v1/admin/retention")).send().expect("retention");
    assert_eq!(response.status(), 200);
    let outcome: Value = response.json().expect("JSON");
    assert_eq!(outcome["rows"], 300, "{outcome}");
    assert_eq!(server.count("SELECT count(*) FROM logs"), 300);
    let cutoff_s = (now - 48 * HOUR) / 1_000_000_000;
    let old = format!("SELECT count(*) FROM logs WHERE timestamp < to_timestamp({cutoff_s})");
    assert_eq!(server.count(&old), 0);
    // Nor through the Loki API.
    let answer: Value = server
        .client()
        .get(server.api_url("/loki/api/v1/query_range"))
        .query(&[
            ("query", "{k8s_namespace_name=\"shop\"}".to_string()),
            ("start", (now - 130 * HOUR).to_string()),
            ("end", (now - 50 * HOUR).to_string()),
            ("limit", "1000".to_string()),
        ])
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(answer["data"]["result"], Value::Array(Vec::new()), "{answer}");
    let after = parquet_bytes(&data.join("logs"));
    assert!(after < before, "bytes on disk fell: {before} -> {after}");
    let metrics = server.client().get(server.api_url("/metrics")).send().unwrap().text().unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("wake_server_deleted_rows_total{reason=\"retention\",signal=\"logs\"} 300")),
        "{}",
        metrics.lines().filter(|l| l.contains("deleted")).collect::<Vec<_>>().join("\n")
    );

    server.terminate();
    let (clean, report) = wake_check(&data, false);
    assert!(clean, "{report}");
    assert_eq!(report["rows"], 300, "{report}");
    assert_eq!(report["leftovers"], Value::Array(Vec::new()), "{report}");
}

#[test]
fn a_store_killed_during_retention_and_compaction_checks_clean_and_loses_nothing_kept() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    // Retention every second, compaction of every partition as soon as it has two files.
    let config = config(dir.path(), 1);
    let now = now_ns();
    let mut kept = 0;
    for round in 0..6u64 {
        let mut server = start(&data, &config);
        // Old hours for retention to drop and trim, new hours for compaction to merge.
        send_logs(&server, &[72 + round, 49 + round, 48, 2, 1], 50, now + round * 1_000_000_000);
        kept += 150;
        server.flush();
        send_logs(&server, &[2, 1], 10, now + round * 1_000_000_000 + 500_000_000_000);
        kept += 20;
        server.flush();
        // The crash comes at a different point of retention's and compaction's work each round.
        std::thread::sleep(Duration::from_millis(150 * round));
        server.kill();
        let (clean, report) = wake_check(&data, false);
        assert!(clean, "round {round}: {report}");
    }
    let server = start(&data, &config);
    let response = server.client().post(server.api_url("/api/v1/admin/retention")).send().expect("retention");
    assert_eq!(response.status(), 200);
    let cutoff_s = (now - 48 * HOUR) / 1_000_000_000;
    // Every acknowledged row after the cutoff is there: none was lost to a crash.
    assert_eq!(
        server.count(&format!("SELECT count(*) FROM logs WHERE timestamp >= to_timestamp({})", cutoff_s + 3600)),
        kept - 6 * 50,
        "{}",
        server.log_tail()
    );
    assert_eq!(server.count(&format!("SELECT count(*) FROM logs WHERE timestamp < to_timestamp({cutoff_s})")), 0);
}

#[test]
fn a_lost_file_is_damage_and_repair_makes_the_store_open_clean() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let config = config(dir.path(), 3600);
    let mut server = start(&data, &config);
    // A minute into the hour, so that each hour's 20 seconds of lines stay in one partition
    // (and one file) whatever the clock says.
    let now = now_ns() / HOUR * HOUR + 60_000_000_000;
    send_logs(&server, &[3, 2, 1], 20, now);
    server.flush();
    server.terminate();
    let (clean, report) = wake_check(&data, false);
    assert!(clean, "{report}");

    // An hour's file goes missing behind the store's back.
    let mut files = Vec::new();
    let mut stack = vec![data.join("logs")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "parquet") {
                files.push(path);
            } else if path.is_dir() && path.extension().is_none() {
                stack.push(path);
            }
        }
    }
    files.sort();
    std::fs::remove_file(&files[0]).unwrap();
    let (clean, report) = wake_check(&data, false);
    assert!(!clean, "{report}");
    assert!(report["damage"][0].as_str().unwrap().contains("missing"), "{report}");

    let (clean, report) = wake_check(&data, true);
    assert!(clean, "after --repair: {report}");
    assert_eq!(report["rows"], 40, "{report}");
    let server = start(&data, &config);
    assert_eq!(server.count("SELECT count(*) FROM logs"), 40);
}
