//! The ruler end to end, against the real Alertmanager (Debian's `prometheus-alertmanager`):
//! a PromQL, a LogQL and an SQL alert fire, reach Alertmanager with their labels and rendered
//! annotations, and resolve when their condition clears; `for` and `keep_firing_for` hold;
//! a recording rule's output is queryable through PromQL and SQL; a restart keeps a pending
//! alert's `for` clock; a broken rule file is refused on reload while the old rules run.

mod common;

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::alertmanager::Alertmanager;
use common::{WakeServer, attribute, string_value};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde_json::Value;
use wake_storage::prompb::{Label, Sample, TimeSeries, WriteRequest};

const RULES: &str = r#"
groups:
  - name: queues
    interval: 1s
    rules:
      - alert: QueueBacklog
        expr: queue_depth > 10
        for: 2s
        keep_firing_for: 3s
        labels:
          severity: '{{ if gt $value 100.0 }}critical{{ else }}warning{{ end }}'
        annotations:
          summary: 'Queue {{ $labels.queue }} holds {{ $value }} items ({{ humanize $value }}) in {{ $externalLabels.cluster }}'
      - record: queue:depth:sum
        expr: sum(queue_depth)
  - name: panics
    interval: 1s
    lang: logql
    rules:
      - alert: PanicLines
        expr: sum by (k8s_namespace_name) (count_over_time({k8s_namespace_name="prod"} |= "panic" [10s])) > 0
        annotations:
          summary: '{{ $value }} panic lines in {{ $labels.k8s_namespace_name }}'
      # Logs into metrics, as Loki's ruler records them.
      - record: namespace:panic_lines:count10s
        expr: sum by (k8s_namespace_name) (count_over_time({k8s_namespace_name="prod"} |= "panic" [10s]))
  - name: errors
    interval: 1s
    lang: sql
    rules:
      - alert: ErrorBurst
        expr: >-
          SELECT k8s_pod_name AS pod, count(*) AS value FROM logs
          WHERE body LIKE '%ERROR%' AND timestamp > now() - INTERVAL '10 seconds'
          GROUP BY k8s_pod_name HAVING count(*) >= 3
        annotations:
          summary: '{{ $labels.pod }} logged {{ $value }} errors'
"#;

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64
}

fn config(dir: &Path, rules: &Path, alertmanager: &str, grace: &str) -> std::path::PathBuf {
    let path = dir.join("wake.yml");
    std::fs::write(
        &path,
        format!(
            "rule_files: [{rules:?}]\nruler:\n  evaluation_interval: 1s\n  resend_delay: 1s\n  for_grace_period: {grace}\n  \
             external_labels: {{cluster: test}}\n  alertmanagers:\n    - url: {alertmanager}\n",
            rules = rules.display().to_string()
        ),
    )
    .unwrap();
    path
}

fn start(dir: &Path, config: &Path) -> WakeServer {
    WakeServer::start(&dir.join("data"), &["--config", config.to_str().unwrap()])
}

fn write_gauge(server: &WakeServer, labels: &[(&str, &str)], value: f64) {
    let series = TimeSeries {
        labels: labels.iter().map(|(n, v)| Label { name: n.to_string(), value: v.to_string() }).collect(),
        samples: vec![Sample { value, timestamp: now_ms() }],
    };
    let body = WriteRequest { timeseries: vec![series], ..Default::default() }.encode_to_vec();
    let response = server
        .client()
        .post(server.api_url("/api/v1/write"))
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "snappy")
        .body(snap::raw::Encoder::new().compress_vec(&body).unwrap())
        .send()
        .unwrap();
    assert_eq!(response.status(), 204, "{}", response.text().unwrap_or_default());
}

fn write_logs(server: &WakeServer, namespace: &str, pod: &str, bodies: &[&str]) {
    let now_ns = now_ms() as u64 * 1_000_000;
    let records = bodies
        .iter()
        .enumerate()
        .map(|(i, body)| LogRecord {
            time_unix_nano: now_ns + i as u64,
            body: Some(string_value(body)),
            ..Default::default()
        })
        .collect();
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![attribute("k8s.namespace.name", namespace), attribute("k8s.pod.name", pod)],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs { log_records: records, ..Default::default() }],
            ..Default::default()
        }],
    };
    let response = server
        .client()
        .post(server.otlp_url("/v1/logs"))
        .header("content-type", "application/x-protobuf")
        .body(request.encode_to_vec())
        .send()
        .unwrap();
    assert_eq!(response.status(), 200);
}

fn get_json(server: &WakeServer, path: &str) -> Value {
    let response = server.client().get(server.api_url(path)).send().unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.json().unwrap()
}

/// Wake's own view of an alert (`/api/v1/alerts`), once `condition` holds.
fn wait_for_wake_alert(
    server: &WakeServer,
    name: &str,
    timeout: Duration,
    condition: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let body = get_json(server, "/api/v1/alerts");
        let alerts = body["data"]["alerts"].as_array().cloned().unwrap_or_default();
        if let Some(alert) = alerts.iter().find(|a| a["labels"]["alertname"] == name && condition(a)) {
            return alert.clone();
        }
        assert!(
            Instant::now() < deadline,
            "no {name} in Wake's alerts within {timeout:?}: {alerts:#?}\n{}",
            server.log_tail()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_for_series(server: &WakeServer, query: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.promql(query).is_empty() {
        assert!(Instant::now() < deadline, "{query} never answered\n{}", server.log_tail());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn wait_until_gone(alertmanager: &Alertmanager, name: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while alertmanager.alerts().iter().any(|a| a["labels"]["alertname"] == name) {
        assert!(Instant::now() < deadline, "{name} did not resolve at Alertmanager within {timeout:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn promql_logql_and_sql_alerts_fire_and_resolve_at_a_real_alertmanager() {
    let alertmanager = Alertmanager::start();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yml");
    std::fs::write(&rules, RULES).unwrap();
    let config = config(dir.path(), &rules, &alertmanager.url(), "10m");
    let server = start(dir.path(), &config);

    // PromQL: pending first, firing after `for`, with templated labels and annotations.
    write_gauge(&server, &[("__name__", "queue_depth"), ("queue", "orders")], 50.0);
    let pending = wait_for_wake_alert(&server, "QueueBacklog", Duration::from_secs(30), |_| true);
    assert_eq!(pending["state"], "pending", "{pending}");
    let alert = alertmanager.wait_for_alert("QueueBacklog", Duration::from_secs(30), |_| true);
    assert_eq!(alert["labels"]["queue"], "orders");
    assert_eq!(alert["labels"]["severity"], "warning");
    assert_eq!(alert["labels"]["cluster"], "test", "external labels are attached");
    assert_eq!(alert["annotations"]["summary"], "Queue orders holds 50 items (50) in test");
    assert!(alert["generatorURL"].as_str().unwrap().contains("/graph?g0.expr=queue_depth"), "{alert}");
    let firing = wait_for_wake_alert(&server, "QueueBacklog", Duration::from_secs(5), |a| a["state"] == "firing");
    let active_at = chrono::DateTime::parse_from_rfc3339(firing["activeAt"].as_str().unwrap()).unwrap();
    let started = chrono::DateTime::parse_from_rfc3339(alert["startsAt"].as_str().unwrap()).unwrap();
    assert!(started - active_at >= chrono::Duration::seconds(2), "fired after `for`: {active_at} → {started}");

    // The recording rule's output, through PromQL and SQL.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let result = server.promql("queue:depth:sum");
        if result.first().is_some_and(|r| r["value"][1] == "50") {
            break;
        }
        assert!(Instant::now() < deadline, "queue:depth:sum never answered 50: {result:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(server.count("SELECT count(*) FROM metrics WHERE metric_name = 'queue:depth:sum'") >= 1);

    // Cleared: `keep_firing_for` keeps it firing a while, then it resolves at Alertmanager.
    write_gauge(&server, &[("__name__", "queue_depth"), ("queue", "orders")], 0.0);
    let kept =
        wait_for_wake_alert(&server, "QueueBacklog", Duration::from_secs(10), |a| a.get("keepFiringSince").is_some());
    assert_eq!(kept["state"], "firing");
    wait_until_gone(&alertmanager, "QueueBacklog", Duration::from_secs(30));

    // LogQL, as Loki's ruler evaluates it.
    write_logs(&server, "prod", "api-1", &["worker panic: index out of range", "fine"]);
    let alert = alertmanager.wait_for_alert("PanicLines", Duration::from_secs(30), |_| true);
    assert_eq!(alert["labels"]["k8s_namespace_name"], "prod");
    wait_for_series(&server, "namespace:panic_lines:count10s{k8s_namespace_name=\"prod\"} == 1");
    assert_eq!(alert["annotations"]["summary"], "1 panic lines in prod");
    wait_until_gone(&alertmanager, "PanicLines", Duration::from_secs(40));

    // SQL: each row an alert instance, every column but `value` a label.
    write_logs(&server, "prod", "web-1", &["ERROR a", "ERROR b", "ERROR c"]);
    let alert = alertmanager.wait_for_alert("ErrorBurst", Duration::from_secs(30), |_| true);
    assert_eq!(alert["labels"]["pod"], "web-1");
    assert_eq!(alert["annotations"]["summary"], "web-1 logged 3 errors");
    wait_until_gone(&alertmanager, "ErrorBurst", Duration::from_secs(40));

    // The rule APIs Grafana reads.
    let rules = get_json(&server, "/api/v1/rules?type=record");
    let groups = rules["data"]["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1, "only the group with a recording rule: {rules}");
    assert_eq!(groups[0]["rules"][0]["name"], "queue:depth:sum");
    assert_eq!(groups[0]["rules"][0]["health"], "ok");
    let loki = get_json(&server, "/prometheus/api/v1/rules");
    assert_eq!(loki["data"]["groups"][0]["name"], "panics", "{loki}");
    let yaml = server.client().get(server.api_url("/loki/api/v1/rules")).send().unwrap().text().unwrap();
    assert!(yaml.contains("PanicLines") && yaml.contains("rules:"), "{yaml}");
    let metrics = server.client().get(server.api_url("/metrics")).send().unwrap().text().unwrap();
    assert!(metrics.contains("wake_server_rule_evaluations_total{rule_group="), "{metrics}");
    assert!(metrics.contains("wake_server_notifications_sent_total"), "{metrics}");
}

#[test]
fn a_restart_keeps_a_pending_alerts_for_clock() {
    let alertmanager = Alertmanager::start();
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yml");
    std::fs::write(
        &rules,
        "groups:\n  - name: slow\n    interval: 1s\n    rules:\n      - alert: Stuck\n        expr: stuck_jobs > 0\n        for: 30s\n",
    )
    .unwrap();
    let config = config(dir.path(), &rules, &alertmanager.url(), "1s");
    let mut server = start(dir.path(), &config);
    write_gauge(&server, &[("__name__", "stuck_jobs")], 3.0);
    let pending = wait_for_wake_alert(&server, "Stuck", Duration::from_secs(30), |a| a["state"] == "pending");
    let first_active_at = chrono::DateTime::parse_from_rfc3339(pending["activeAt"].as_str().unwrap()).unwrap();
    // Pending long enough for `ALERTS_FOR_STATE` to be written (from the third evaluation).
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.promql("ALERTS_FOR_STATE{alertname=\"Stuck\"}").is_empty() {
        assert!(Instant::now() < deadline, "ALERTS_FOR_STATE never written\n{}", server.log_tail());
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(5));
    let status = server.terminate();
    assert!(status.success(), "{status}");

    let server = start(dir.path(), &config);
    let restarted = chrono::Utc::now();
    // After the restore (past the second evaluation), the alert is older than the restart.
    let restored = wait_for_wake_alert(&server, "Stuck", Duration::from_secs(30), |a| {
        chrono::DateTime::parse_from_rfc3339(a["activeAt"].as_str().unwrap())
            .is_ok_and(|t| t.with_timezone(&chrono::Utc) < restarted - chrono::Duration::seconds(3))
    });
    let active_at = chrono::DateTime::parse_from_rfc3339(restored["activeAt"].as_str().unwrap()).unwrap();
    assert!(active_at >= first_active_at, "the downtime is added back: {first_active_at} → {active_at}");
    assert_eq!(restored["state"], "pending");
}

#[test]
fn a_broken_rule_file_is_refused_on_reload_and_the_old_rules_keep_running() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yml");
    std::fs::write(
        &rules,
        "groups:\n  - name: g\n    interval: 1s\n    rules:\n      - record: r:one\n        expr: vector(1)\n      \
         - alert: Always\n        expr: vector(1)\n",
    )
    .unwrap();
    // No Alertmanager is reachable here: evaluation must not wait for it.
    let config = config(dir.path(), &rules, "http://127.0.0.1:9", "10m");
    let server = start(dir.path(), &config);
    wait_for_series(&server, "r:one");
    std::fs::write(&rules, "groups:\n  - name: g\n    rules:\n      - record: r:one\n        expr: sum(\n").unwrap();
    let response = server
        .client()
        .post(server.api_url("/-/reload"))
        .send()
        .unwrap_or_else(|e| panic!("POST /-/reload: {e}\n{}", server.log_tail()));
    assert_eq!(response.status(), 500);
    let body = response.text().unwrap();
    assert!(body.contains("rules.yml: 4: group \"g\", rule 1, \"r:one\": could not parse expression"), "{body}");
    // Still evaluated after the refusal: a sample newer than the refused reload.
    let refused_at = now_ms() as f64 / 1000.0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server.promql("r:one").iter().any(|s| s["value"][0].as_f64().is_some_and(|t| t > refused_at)) {
        assert!(Instant::now() < deadline, "the old rule stopped\n{}", server.log_tail());
        std::thread::sleep(Duration::from_millis(100));
    }
    let rules_api = get_json(&server, "/api/v1/rules");
    assert_eq!(rules_api["data"]["groups"][0]["rules"][0]["health"], "ok", "{rules_api}");
    let metrics = server.client().get(server.api_url("/metrics")).send().unwrap().text().unwrap();
    assert!(metrics.contains("wake_server_rules_config_last_reload_successful 0"), "{metrics}");
    // The firing alert cannot reach the Alertmanager: counted, and evaluation goes on.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = server.client().get(server.api_url("/metrics")).send().unwrap().text().unwrap();
        let errors: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("wake_server_notifications_errors_total{"))
            .filter_map(|l| l.rsplit(" ").next()?.parse::<f64>().ok())
            .sum();
        if errors >= 1.0 {
            break;
        }
        assert!(Instant::now() < deadline, "no notification errors counted:\n{metrics}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_rule_file_refused_at_start_stops_the_server_naming_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.yml");
    std::fs::write(&rules, "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: rate(x[5m]\n").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_wake"))
        .args([
            "server",
            "--otlp-grpc-addr",
            "127.0.0.1:0",
            "--otlp-http-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--rule-files")
        .arg(&rules)
        .env_remove("WAKE_CONFIG")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("rules.yml: 4: group \"g\", rule 1, \"A\": could not parse expression"), "{stderr}");
}
