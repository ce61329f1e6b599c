//! Authentication and authorization against the real binary: every route the sources define
//! refuses a request without a token (but the open ones), each API refuses in its own shape,
//! a write token cannot read, a read token cannot write or administer, the tokens file is
//! reloaded without a restart, and an agent with its token delivers every line, including
//! those it read while its token was not yet known.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use common::{Node, WakeServer, attribute, string_value, wait_until};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde_json::Value;

const WRITER: &str = "w-0123456789abcdef0123456789abcdef";
const READER: &str = "r-0123456789abcdef0123456789abcdef";
const ADMIN: &str = "a-0123456789abcdef0123456789abcdef";
const AGENT: &str = "g-0123456789abcdef0123456789abcdef";

fn hash(token: &str) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_wake"))
        .args(["token", "hash"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().expect("stdin").write_all(token.as_bytes())?;
            child.wait_with_output()
        })
        .expect("wake token hash");
    assert!(output.status.success());
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

fn token_entry(name: &str, token: &str, scopes: &str) -> String {
    format!("    - name: {name}\n      sha256: {}\n      scopes: [{scopes}]\n", hash(token))
}

/// The server's config, with the reader's token in a tokens file (and the agent's once
/// `with_agent`).
fn write_config(dir: &Path, with_agent: bool) -> String {
    let tokens_file = dir.join("tokens.yaml");
    let mut tokens = format!("tokens:\n{}", token_entry("reader", READER, "read"));
    if with_agent {
        tokens += &token_entry("agent", AGENT, "write");
    }
    std::fs::write(&tokens_file, tokens.replace("\n    ", "\n  ")).expect("tokens file");
    let config = dir.join("wake.yaml");
    let text = format!(
        "auth:\n  tokens_file: {}\n  tokens:\n{}{}",
        tokens_file.display(),
        token_entry("writer", WRITER, "write"),
        token_entry("admin", ADMIN, "admin, read")
    );
    std::fs::write(&config, text).expect("config");
    config.to_str().expect("utf-8").to_string()
}

/// Every path the sources route, with path parameters filled in.
fn routed_paths() -> BTreeSet<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut paths = BTreeSet::new();
    let mut stack: Vec<_> = ["src", "storage/src", "query/src"].iter().map(|d| root.join(d)).collect();
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("source dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            // Test modules route stubs of their own; only the code before them serves.
            let text = text.split("#[cfg(test)]").next().unwrap_or_default();
            for piece in text.split(".route(\"").skip(1) {
                let route = piece.split('"').next().unwrap_or_default();
                let filled: String = route
                    .split('/')
                    .map(|part| if part.starts_with('{') { "x" } else { part })
                    .collect::<Vec<_>>()
                    .join("/");
                paths.insert(filled);
            }
        }
    }
    paths
}

fn otlp_path(path: &str) -> bool {
    path.starts_with("/v1/")
}

fn url(server: &WakeServer, path: &str) -> String {
    if otlp_path(path) { server.otlp_url(path) } else { server.api_url(path) }
}

#[test]
fn every_route_wants_a_token_and_scopes_are_kept_apart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), false);
    let server = WakeServer::start(&dir.path().join("data"), &["--config", &config]);
    let client = reqwest::blocking::Client::new();

    let paths = routed_paths();
    assert!(paths.len() > 50, "found only {paths:?}");
    for path in &paths {
        for method in [reqwest::Method::GET, reqwest::Method::POST] {
            let response = client.request(method.clone(), url(&server, path)).send().expect("request");
            let status = response.status().as_u16();
            if path == "/healthz" || path == "/readyz" {
                assert!(status == 200 || status == 405, "{method} {path}: open, got {status}");
            } else {
                assert_eq!(status, 401, "{method} {path} without a token");
            }
        }
    }

    // Each API refuses in its own shape.
    let get = |path: &str, token: Option<&str>| {
        let mut request = client.get(url(&server, path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().expect("request");
        let status = response.status().as_u16();
        let content_type = response.headers().get("content-type").map(|v| v.to_str().unwrap().to_string());
        (status, content_type.unwrap_or_default(), response.text().unwrap_or_default())
    };
    let (_, _, body) = get("/api/v1/query?query=up", None);
    let prometheus: Value = serde_json::from_str(&body).expect("Prometheus JSON");
    assert_eq!(
        (prometheus["status"].as_str(), prometheus["errorType"].as_str()),
        (Some("error"), Some("unauthorized"))
    );
    let (_, content_type, _) = get("/loki/api/v1/labels", None);
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let (_, _, body) = get("/jaeger/api/services", None);
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["errors"][0]["code"], 401);
    let (_, _, body) = get("/api/v1/sql?sql=SELECT%201", None);
    assert!(serde_json::from_str::<Value>(&body).unwrap()["error"].is_string());

    // Scopes: a write token cannot read, a read token cannot write or administer.
    assert_eq!(get("/api/v1/query?query=up", Some(WRITER)).0, 403);
    assert_eq!(get("/api/v1/query?query=up", Some(READER)).0, 200);
    assert_eq!(get("/api/v1/query?query=up", Some("not-a-token")).0, 401);
    let logs = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![attribute("k8s.namespace.name", "shop")],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: vec![LogRecord {
                    time_unix_nano: common::now_ns(),
                    body: Some(string_value("hello")),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec();
    let post_logs = |token: &str| {
        client
            .post(server.otlp_url("/v1/logs"))
            .bearer_auth(token)
            .header("content-type", "application/x-protobuf")
            .body(logs.clone())
            .send()
            .expect("POST /v1/logs")
    };
    // OTLP/gRPC: UNAUTHENTICATED without a token, PERMISSION_DENIED with a read token.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let grpc = |token: Option<&str>| {
        use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
        let request = ExportLogsServiceRequest::decode(logs.as_slice()).unwrap();
        let endpoint = server.grpc_endpoint();
        runtime.block_on(async move {
            let mut client = LogsServiceClient::connect(endpoint).await.expect("gRPC connect");
            let mut request = tonic::Request::new(request);
            if let Some(token) = token {
                request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
            }
            client.export(request).await.map(|_| ()).map_err(|status| status.code())
        })
    };
    assert_eq!(grpc(None), Err(tonic::Code::Unauthenticated));
    assert_eq!(grpc(Some(READER)), Err(tonic::Code::PermissionDenied));
    assert_eq!(grpc(Some(WRITER)), Ok(()));

    let refused = post_logs(READER);
    assert_eq!(refused.status(), 403);
    assert_eq!(refused.headers()["content-type"], "application/x-protobuf", "OTLP's google.rpc.Status");
    assert_eq!(post_logs(WRITER).status(), 200);
    let admin = |token: &str| {
        client.post(server.api_url("/api/v1/admin/flush")).bearer_auth(token).send().expect("flush").status().as_u16()
    };
    assert_eq!(admin(READER), 403);
    assert_eq!(admin(WRITER), 403);
    assert_eq!(admin(ADMIN), 200);
    // Basic auth, as Grafana data sources and Prometheus remote write send it: the password is the token.
    let basic = client.get(server.api_url("/api/v1/labels")).basic_auth("grafana", Some(READER)).send().unwrap();
    assert_eq!(basic.status(), 200);
    // The token's tenant is the only one it may name.
    let other = client.get(server.api_url("/api/v1/labels")).bearer_auth(READER).header("X-Scope-OrgID", "team-b");
    assert_eq!(other.send().unwrap().status(), 403);
    let sql = client
        .post(server.api_url("/api/v1/sql"))
        .bearer_auth(READER)
        .json(&serde_json::json!({"sql": "SELECT count(*) FROM logs"}))
        .send()
        .unwrap();
    let answer: Value = sql.json().unwrap();
    assert_eq!(answer["rows"][0][0], 2, "one line over gRPC, one over HTTP: {answer}");
}

#[test]
fn an_agent_with_its_token_delivers_every_line_even_those_read_before_its_token_was_known() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = write_config(dir.path(), false);
    let server = WakeServer::start(&dir.path().join("data"), &["--config", &config]);
    let node = Node::new();
    let token_file = node.path("token");
    std::fs::write(&token_file, format!("{AGENT}\n")).expect("token file");
    let pod = node.path("var/log/pods/shop_web-0_0000-1111/app");
    std::fs::create_dir_all(&pod).expect("pod dir");
    let lines: String = (0..20).map(|i| format!("2026-12-07T10:00:{i:02}.000000000Z stdout F line {i}\n")).collect();
    std::fs::write(pod.join("0.log"), &lines).expect("log");
    let endpoint = server.grpc_endpoint();
    let agent = node.agent(&endpoint, &["--token-file", token_file.to_str().unwrap(), "--batch-timeout", "200ms"]);

    let client = reqwest::blocking::Client::new();
    let count = || -> u64 {
        let response = client
            .post(server.api_url("/api/v1/sql"))
            .bearer_auth(READER)
            .json(&serde_json::json!({"sql": "SELECT count(*) FROM logs WHERE k8s_pod_name = 'web-0'"}))
            .send()
            .expect("SQL");
        let answer: Value = response.json().expect("JSON");
        answer["rows"][0][0].as_u64().unwrap_or(0)
    };
    // The server does not know the agent's token yet: refused, kept, retried.
    wait_until(Duration::from_secs(20), "a refused export", || agent.metric("wake_agent_export_retries_total") >= 1.0);
    assert_eq!(count(), 0);
    // The operator adds it to the tokens file; the server reloads it without a restart.
    write_config(dir.path(), true);
    wait_until(Duration::from_secs(30), "every line", || count() == 20);
    drop(agent);
}
