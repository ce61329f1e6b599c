//! Tenants: data written with `X-Scope-OrgID: team-a` (OTLP/HTTP, and the agent over gRPC with
//! `--tenant`) is answered to team-a by every read API and table, and to no other tenant (the
//! default one included); it stays apart across a restart; bad tenant names and tenants beyond
//! `max_tenants` are refused in each API's shape; per-tenant ingestion rates, retention and query
//! limits apply to their tenant only.

mod common;

use std::ffi::OsStr;
use std::io::Write;
use std::time::Duration;

use common::{Node, WakeServer, now_ns, wait_until};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);
const TEAM_A: &str = "team-a";
const TEAM_B: &str = "team-b";
const TRACE_ID: &str = "5b8aa5a2d2c872e8321cf37308d69df2";

fn resource(service: &str, namespace: &str) -> Value {
    json!({"attributes": [
        {"key": "service.name", "value": {"stringValue": service}},
        {"key": "k8s.namespace.name", "value": {"stringValue": namespace}},
    ]})
}

/// POSTs OTLP/JSON `body` to `path` as `tenant` (none: no header); the status and body.
fn post_otlp(server: &WakeServer, path: &str, tenant: Option<&str>, body: &Value) -> (u16, String) {
    let mut request = server.client().post(server.otlp_url(path)).header("content-type", "application/json").json(body);
    if let Some(tenant) = tenant {
        request = request.header("X-Scope-OrgID", tenant);
    }
    let response = request.send().unwrap_or_else(|e| panic!("POST {path}: {e}"));
    (response.status().as_u16(), response.text().unwrap_or_default())
}

fn write_tenant_data(server: &WakeServer, tenant: Option<&str>, service: &str, namespace: &str, marker: &str) {
    let now = now_ns();
    let logs = json!({"resourceLogs": [{"resource": resource(service, namespace), "scopeLogs": [{"logRecords": [
        {"timeUnixNano": now.to_string(), "severityText": "INFO", "body": {"stringValue": format!("{marker} says hello")}}
    ]}]}]});
    let metrics = json!({"resourceMetrics": [{"resource": resource(service, namespace), "scopeMetrics": [{"metrics": [
        {"name": format!("{}_requests", marker.replace('-', "_")), "gauge": {"dataPoints": [
            {"timeUnixNano": now.to_string(), "asDouble": 1.5,
             "attributes": [{"key": format!("{}_label", marker.replace('-', "_")), "value": {"stringValue": marker}}]}
        ]}}
    ]}]}]});
    let mut spans = Vec::new();
    if service == "svc-a" {
        spans.push(json!({"traceId": TRACE_ID, "spanId": "051581bf3cb55c13", "name": format!("{marker}-operation"),
            "kind": 2, "startTimeUnixNano": (now - 5_000_000).to_string(), "endTimeUnixNano": now.to_string(),
            "attributes": [{"key": "team_a_label", "value": {"stringValue": marker}}]}));
    }
    let traces =
        json!({"resourceSpans": [{"resource": resource(service, namespace), "scopeSpans": [{"spans": spans}]}]});
    for (path, body) in [("/v1/logs", logs), ("/v1/metrics", metrics), ("/v1/traces", traces)] {
        let (status, answer) = post_otlp(server, path, tenant, &body);
        assert_eq!(status, 200, "{path} as {tenant:?}: {answer}");
    }
}

/// GETs a query API path as `tenant`; the status and body.
fn get_as(server: &WakeServer, tenant: Option<&str>, path: &str, query: &[(&str, String)]) -> (u16, String) {
    let mut request = server.client().get(server.api_url(path)).query(query);
    if let Some(tenant) = tenant {
        request = request.header("X-Scope-OrgID", tenant);
    }
    let response = request.send().unwrap_or_else(|e| panic!("GET {path}: {e}"));
    (response.status().as_u16(), response.text().unwrap_or_default())
}

fn sql_as(server: &WakeServer, tenant: Option<&str>, sql: &str) -> Value {
    let mut request = server.client().post(server.api_url("/api/v1/sql")).json(&json!({ "sql": sql }));
    if let Some(tenant) = tenant {
        request = request.header("X-Scope-OrgID", tenant);
    }
    let response = request.send().expect("POST /api/v1/sql");
    let status = response.status().as_u16();
    let body: Value = response.json().expect("SQL answers JSON");
    assert_eq!(status, 200, "{sql} as {tenant:?}: {body}");
    body
}

fn count_as(server: &WakeServer, tenant: Option<&str>, sql: &str) -> u64 {
    sql_as(server, tenant, sql)["rows"][0][0].as_u64().unwrap_or_else(|| panic!("{sql}: not a count"))
}

/// Every read API, each with a query that finds team-a's data: each must answer it to team-a,
/// and show none of it to anyone else.
fn read_apis(start_s: u64, end_s: u64) -> Vec<(&'static str, Vec<(&'static str, String)>)> {
    let range = || vec![("start", start_s.to_string()), ("end", end_s.to_string())];
    let with = |mut pairs: Vec<(&'static str, String)>, extra: &[(&'static str, &str)]| {
        pairs.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        pairs
    };
    vec![
        ("/loki/api/v1/query_range", with(range(), &[("query", r#"{service_name="svc-a"}"#), ("limit", "100")])),
        ("/loki/api/v1/query", with(vec![], &[("query", r#"count_over_time({k8s_namespace_name="ns-a"}[10m])"#)])),
        ("/loki/api/v1/labels", range()),
        ("/loki/api/v1/label/service_name/values", range()),
        ("/loki/api/v1/label/k8s_namespace_name/values", range()),
        ("/loki/api/v1/series", with(range(), &[("match[]", r#"{service_name=~".+"}"#)])),
        ("/api/v1/query", with(vec![], &[("query", "team_a_requests")])),
        ("/api/v1/query_range", with(range(), &[("query", "team_a_requests"), ("step", "15")])),
        ("/api/v1/series", with(range(), &[("match[]", r#"{__name__=~"team_a.*"}"#)])),
        ("/api/v1/labels", range()),
        ("/api/v1/label/__name__/values", range()),
        ("/api/v1/label/team_a_label/values", range()),
        ("/api/traces/5b8aa5a2d2c872e8321cf37308d69df2", vec![]),
        ("/api/v2/traces/5b8aa5a2d2c872e8321cf37308d69df2", vec![]),
        ("/api/search", with(range(), &[("q", r#"{ resource.service.name = "svc-a" }"#)])),
        ("/api/search", with(range(), &[("tags", "service.name=svc-a")])),
        ("/api/v2/search/tags", range()),
        ("/api/v2/search/tag/resource.service.name/values", range()),
        ("/api/search/tag/service.name/values", range()),
        ("/jaeger/api/services", vec![]),
        ("/jaeger/api/traces/5b8aa5a2d2c872e8321cf37308d69df2", vec![]),
        ("/api/v1/containers", with(vec![], &[("namespace", "ns-a")])),
    ]
}

/// Team-a's markers: any of them in an answer is team-a's data (only its agent's rows have a
/// pod name; only its series a `team_a_label`).
const MARKERS: [&str; 7] = ["svc-a", "ns-a", "team-a", "team_a_requests", "pod-a", "k8s_pod_name", "team_a_label"];

fn check_isolation(server: &WakeServer, moment: &str) {
    let now_s = now_ns() / 1_000_000_000;
    for (path, query) in read_apis(now_s - 3600, now_s + 60) {
        let (status, answer) = get_as(server, Some(TEAM_A), path, &query);
        assert_eq!(status, 200, "{moment}: {path} {query:?} as team-a: {answer}");
        assert!(
            MARKERS.iter().any(|marker| answer.contains(marker)),
            "{moment}: {path} {query:?} as team-a shows none of its data: {answer}"
        );
        for other in [Some(TEAM_B), None] {
            let (status, answer) = get_as(server, other, path, &query);
            assert!(matches!(status, 200 | 404), "{moment}: {path} as {other:?} answered {status}: {answer}");
            if let Some(marker) = MARKERS.iter().find(|marker| answer.contains(*marker)) {
                panic!("{moment}: {path} {query:?} as {other:?} shows team-a's {marker:?}: {answer}");
            }
        }
    }
    for table in ["logs", "metrics", "spans", "containers"] {
        let sql = format!("SELECT count(*) FROM {table}");
        assert!(count_as(server, Some(TEAM_A), &sql) > 0, "{moment}: team-a has no {table}");
        for other in [Some(TEAM_B), None] {
            // The rows only: the column names are every tenant's.
            let answer = sql_as(server, other, &format!("SELECT * FROM {table}"))["rows"].to_string();
            if let Some(marker) = MARKERS.iter().find(|marker| answer.contains(*marker)) {
                panic!("{moment}: {table} as {other:?} holds team-a's {marker:?}: {answer}");
            }
        }
    }
    let answer = sql_as(server, None, "SELECT body FROM logs").to_string();
    assert!(answer.contains("default-line says"), "{moment}: the default tenant lost its own: {answer}");
    let answer = sql_as(server, Some(TEAM_B), "SELECT body FROM logs").to_string();
    assert!(answer.contains("team-b says"), "{moment}: team-b lost its own: {answer}");
}

#[test]
fn each_tenant_sees_only_its_own_data_on_every_api() {
    let data = tempfile::tempdir().expect("temp dir");
    let mut server = WakeServer::start(data.path(), &["--flush-interval-secs", "1"]);
    write_tenant_data(&server, Some(TEAM_A), "svc-a", "ns-a", "team-a");
    write_tenant_data(&server, None, "svc-default", "ns-default", "default-line");
    // team-b writes too, so that its store exists and is not merely empty for being unknown.
    write_tenant_data(&server, Some(TEAM_B), "svc-b", "ns-b", "team-b");

    // The agent of team-a's node sends over gRPC, with its tenant in the metadata.
    let node = Node::new();
    let pod_dir = node.path("var/log/pods/ns-a_pod-a_0d6e5c1e-1111-2222-3333-444455556666/app");
    std::fs::create_dir_all(&pod_dir).expect("pod dir");
    let id = "9e2d1c0b8a7f6e5d4c3b2a1908f7e6d5c4b3a29180f7e6d5c4b3a2918a7b6c5d";
    std::os::unix::fs::symlink(
        pod_dir.join("0.log"),
        node.path(&format!("var/log/containers/pod-a_ns-a_app-{id}.log")),
    )
    .expect("kubelet's symlink");
    let mut log = std::fs::File::create(pod_dir.join("0.log")).expect("log file");
    let written = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Nanos, true);
    writeln!(log, "{written} stdout F agent line of pod-a").expect("writing");
    let agent = node.agent(&server.grpc_endpoint(), &["--tenant", TEAM_A, "--batch-timeout", "200ms"]);
    let agent_rows = "SELECT count(*) FROM logs WHERE k8s_pod_name = 'pod-a'";
    wait_until(WAIT, "the agent's line in team-a's logs", || count_as(&server, Some(TEAM_A), agent_rows) == 1);
    wait_until(WAIT, "pod-a in team-a's containers", || {
        count_as(&server, Some(TEAM_A), "SELECT count(*) FROM containers WHERE pod = 'pod-a'") > 0
    });
    drop(agent);
    for tenant in [Some(TEAM_A), None] {
        let mut request = server.client().post(server.api_url("/api/v1/admin/flush"));
        if let Some(tenant) = tenant {
            request = request.header("X-Scope-OrgID", tenant);
        }
        assert_eq!(request.send().expect("flush").status(), 200);
    }
    check_isolation(&server, "live");

    // The tenant's own directory, and nothing of team-a's in the default tenant's.
    assert!(
        data.path().join("tenants/team-a/manifest.checkpoint").exists()
            || data.path().join("tenants/team-a/wal").exists()
    );
    server.terminate();
    let check = std::process::Command::new(env!("CARGO_BIN_EXE_wake"))
        .args([OsStr::new("check"), OsStr::new("--json"), OsStr::new("--data-dir"), data.path().as_os_str()])
        .output()
        .expect("wake check");
    let report: Value = serde_json::from_slice(&check.stdout).expect("wake check --json");
    assert_eq!(report["clean"], true, "{report}");
    assert!(report["tenants"][TEAM_A]["files"].as_u64().unwrap_or(0) > 0, "{report}");

    let server = WakeServer::start(data.path(), &[]);
    check_isolation(&server, "after a restart");
}

#[test]
fn bad_tenants_extra_tenants_and_per_tenant_limits_are_refused_in_each_apis_shape() {
    let data = tempfile::tempdir().expect("temp dir");
    let config = data.path().join("wake.yml");
    std::fs::write(
        &config,
        r#"
store:
  max_request_bytes: 65536
tenants:
  max_tenants: 4
  overrides:
    short:
      retention: {logs: 2h}
    slow:
      ingestion_rate_bytes: 1000
      ingestion_burst_bytes: 65536
    terse:
      query: {max_entries_limit_per_query: 2}
"#,
    )
    .expect("config");
    let data_dir = data.path().join("data");
    let server = WakeServer::start(&data_dir, &["--config", config.to_str().expect("utf-8")]);

    // A name that could leave the data dir is no tenant, in each API's error shape.
    let (status, body) = post_otlp(&server, "/v1/logs", Some("../x"), &json!({"resourceLogs": []}));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"code\":3") && body.contains("tenant"), "OTLP's Status: {body}");
    let (status, body) = get_as(&server, Some("a|b"), "/api/v1/query", &[("query", "up".into())]);
    assert_eq!(status, 400, "{body}");
    let answer: Value = serde_json::from_str(&body).expect("Prometheus' envelope");
    assert_eq!((answer["status"].as_str(), answer["errorType"].as_str()), (Some("error"), Some("bad_data")));

    // Each record ~20 KB: the slow tenant's burst takes three, then it must wait; the others
    // are not slowed.
    let record = |seq: u64| {
        json!({"resourceLogs": [{"resource": resource("svc", "ns"), "scopeLogs": [{"logRecords": [
            {"timeUnixNano": now_ns().to_string(), "body": {"stringValue": format!("{seq} {}", "x".repeat(20_000))}}
        ]}]}]})
    };
    let mut statuses = Vec::new();
    for seq in 0..5 {
        statuses.push(post_otlp(&server, "/v1/logs", Some("slow"), &record(seq)));
    }
    assert!(statuses.iter().take(2).all(|(status, _)| *status == 200), "{statuses:?}");
    let (status, body) = statuses.last().expect("five");
    assert_eq!(*status, 429, "the slow tenant's burst is spent: {body}");
    assert!(body.contains("ingestion rate limit"), "{body}");
    for seq in 0..5 {
        let (status, body) = post_otlp(&server, "/v1/logs", Some("terse"), &record(seq));
        assert_eq!(status, 200, "the terse tenant has no rate limit: {body}");
    }
    let metrics = server.client().get(server.api_url("/metrics")).send().expect("/metrics").text().expect("text");
    assert!(
        metrics.lines().any(|l| l.starts_with("wake_server_rate_limited_requests_total")
            && l.contains("tenant=\"slow\"")
            && !l.ends_with(" 0")),
        "{metrics}"
    );

    // terse's query limit is its own.
    let now_s = now_ns() / 1_000_000_000;
    let loki = |tenant: &str| {
        get_as(
            &server,
            Some(tenant),
            "/loki/api/v1/query_range",
            &[
                ("query", r#"{service_name="svc"}"#.into()),
                ("limit", "5".into()),
                ("start", (now_s - 600).to_string()),
                ("end", (now_s + 60).to_string()),
            ],
        )
    };
    let (status, body) = loki("terse");
    assert_eq!(status, 400, "limit 5 is above terse's max_entries_limit_per_query of 2: {body}");
    let (status, body) = loki("slow");
    assert_eq!(status, 200, "slow has the server's limit: {body}");

    // short's retention is its own: its lines of three hours ago go, the default tenant's stay.
    let three_hours_ago = now_ns() - 3 * 3600 * 1_000_000_000;
    let old_and_new = |tenant: Option<&str>| {
        for at in [three_hours_ago, now_ns()] {
            let body = json!({"resourceLogs": [{"resource": resource("svc-r", "ns"), "scopeLogs": [{"logRecords": [
                {"timeUnixNano": at.to_string(), "body": {"stringValue": "kept or not"}}
            ]}]}]});
            assert_eq!(post_otlp(&server, "/v1/logs", tenant, &body).0, 200);
        }
        for path in ["/api/v1/admin/flush", "/api/v1/admin/retention"] {
            let mut request = server.client().post(server.api_url(path));
            if let Some(tenant) = tenant {
                request = request.header("X-Scope-OrgID", tenant);
            }
            let response = request.send().expect(path);
            assert_eq!(response.status(), 200, "{path}: {}", response.text().unwrap_or_default());
        }
    };
    old_and_new(Some("short"));
    old_and_new(None);
    let count = "SELECT count(*) FROM logs WHERE service_name = 'svc-r'";
    assert_eq!(count_as(&server, Some("short"), count), 1, "short keeps 2 h of logs");
    assert_eq!(count_as(&server, None, count), 2, "the default tenant keeps its logs for ever");

    // The default tenant, short, slow and terse are four: a fifth is refused, retryably.
    let (status, body) = post_otlp(&server, "/v1/logs", Some("fifth"), &json!({"resourceLogs": []}));
    assert_eq!(status, 429, "{body}");
    assert!(body.contains("max_tenants"), "{body}");

    // A per-tenant limit the server cannot honour stops it at start-up with the key's name.
    let bad = data.path().join("bad.yml");
    std::fs::write(&bad, "tenants:\n  overrides:\n    x:\n      query: {timeout_secs: 0}\n").expect("config");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_wake"))
        .args([OsStr::new("server"), OsStr::new("--config"), bad.as_os_str(), OsStr::new("--data-dir")])
        .arg(data.path().join("other"))
        .args(["--otlp-grpc-addr", "127.0.0.1:0", "--otlp-http-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"])
        .output()
        .expect("wake server");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("tenants.overrides.x.query"), "{stderr}");
}

#[test]
fn a_tenants_rule_files_run_over_its_data_alone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let rules = |name: &str, record: &str| {
        let path = dir.path().join(format!("{name}.yml"));
        let text = format!(
            "groups:\n  - name: {name}\n    interval: 1s\n    rules:\n      - record: {record}\n        expr: sum(team_r_requests)\n"
        );
        std::fs::write(&path, text).expect("rule file");
        path.to_str().expect("utf-8").to_string()
    };
    let (tenant_rules, server_rules) = (rules("team-r", "team_r:requests"), rules("server", "server:requests"));
    let config = dir.path().join("wake.yml");
    std::fs::write(
        &config,
        format!(
            "rule_files: [{server_rules:?}]\nruler:\n  evaluation_interval: 1s\ntenants:\n  overrides:\n    team-r:\n      rule_files: [{tenant_rules:?}]\n"
        ),
    )
    .expect("config");
    let server = WakeServer::start(&dir.path().join("data"), &["--config", config.to_str().expect("utf-8")]);
    let metrics = json!({"resourceMetrics": [{"scopeMetrics": [{"metrics": [
        {"name": "team_r_requests", "gauge": {"dataPoints": [{"timeUnixNano": now_ns().to_string(), "asDouble": 2.0}]}}
    ]}]}]});
    assert_eq!(post_otlp(&server, "/v1/metrics", Some("team-r"), &metrics).0, 200);

    let instant = |tenant: Option<&str>, query: &str| -> Value {
        let (status, body) = get_as(&server, tenant, "/api/v1/query", &[("query", query.to_string())]);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str::<Value>(&body).expect("JSON")["data"]["result"].clone()
    };
    wait_until(WAIT, "team-r's recording rule over its own data", || {
        instant(Some("team-r"), "team_r:requests").as_array().is_some_and(|r| r.len() == 1 && r[0]["value"][1] == "2")
    });
    let (_, rules_of_r) = get_as(&server, Some("team-r"), "/api/v1/rules", &[]);
    assert!(rules_of_r.contains("team_r:requests") && !rules_of_r.contains("server:requests"), "{rules_of_r}");
    let (_, rules_of_default) = get_as(&server, None, "/api/v1/rules", &[]);
    assert!(
        rules_of_default.contains("server:requests") && !rules_of_default.contains("team_r:"),
        "{rules_of_default}"
    );
    // The server's rule evaluated too (it lists a last evaluation), over the default tenant's
    // data, which has no team_r_requests: no series, and none of team-r's in the default tenant.
    wait_until(WAIT, "the server's rule evaluated", || {
        let (_, body) = get_as(&server, None, "/api/v1/rules", &[]);
        serde_json::from_str::<Value>(&body)
            .is_ok_and(|v| v["data"]["groups"][0]["lastEvaluation"].as_str().is_some_and(|t| !t.starts_with("0001")))
    });
    assert_eq!(instant(None, "server:requests"), json!([]));
    assert_eq!(instant(None, "team_r:requests"), json!([]));
    assert_eq!(instant(Some("team-r"), "server:requests"), json!([]));
}
