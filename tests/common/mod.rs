//! Harness of the end-to-end tests: spawns the real `wake` binary on port 0 with a data dir of
//! the test's choosing, learns its addresses from the `listening` log line, and talks to its
//! query and admin API. On failure, helpers put the server's log in the panic message.

// Each test file is its own crate and uses a different part of this module.
#![allow(dead_code)]

pub mod alertmanager;
pub mod podman;
pub mod prometheus;

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde_json::Value;

const START_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// A running `wake server`. Dropping it kills the process.
pub struct WakeServer {
    process: WakeProcess,
    pub grpc_addr: SocketAddr,
    pub otlp_http_addr: SocketAddr,
    pub http_addr: SocketAddr,
    client: reqwest::blocking::Client,
}

/// The fields of a JSON `listening` line, or `None` for any other line.
fn listening_fields(line: &str) -> Option<Value> {
    let json: Value = serde_json::from_str(line).ok()?;
    let fields = json.get("fields")?;
    (fields.get("message")?.as_str()? == "listening").then(|| fields.clone())
}

fn addr(fields: &Value, name: &str) -> SocketAddr {
    fields
        .get(name)
        .and_then(Value::as_str)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address {name} in the listening line {fields}"))
}

/// A running `wake` process and everything it wrote to stderr.
pub struct WakeProcess {
    pub child: Child,
    pub log: Arc<Mutex<String>>,
    /// The fields of its `listening` log line.
    pub listening: Value,
}

/// Spawns `wake <args>` with JSON logs and no `WAKE_…` variables from the environment, and
/// waits for its `listening` line.
pub fn spawn_wake(args: &[&std::ffi::OsStr]) -> WakeProcess {
    spawn_wake_in(None, args)
}

/// [`spawn_wake`] with `cwd` as the working directory (for relative paths in `args`).
pub fn spawn_wake_in(cwd: Option<&Path>, args: &[&std::ffi::OsStr]) -> WakeProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wake"));
    if let Some(cwd) = cwd {
        command.current_dir(cwd);
    }
    command
        .args(["--log-format", "json"])
        .args(args)
        // The `listening` line is logged at info; a caller's RUST_LOG must not hide it.
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // Settings from the environment would silently change what a test exercises.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("WAKE_") {
            command.env_remove(name);
        }
    }
    // Wake's own metrics, stored in itself every 15 s by default, would change the counts of
    // the `metrics` table that tests assert; the tests that want them pass the flag, which
    // wins over the environment.
    command.env("WAKE_SELF_METRICS_INTERVAL", "0");
    // The suites send records with fixed, historic timestamps (2023, 2026-11-23) so that their
    // answers never depend on the day they run: accept any age. The hostile-client tests turn
    // the window back on with the flag, which wins over the variable.
    command.env("WAKE_MAX_RECORD_AGE_SECS", "0");
    let mut child = command.spawn().expect("spawning the wake binary");

    let log = Arc::new(Mutex::new(String::new()));
    let (found, listening) = mpsc::channel();
    let stderr = child.stderr.take().expect("piped stderr");
    let reader_log = log.clone();
    // Reads stderr to its end so that the process never blocks on a full pipe.
    thread::spawn(move || {
        let mut reader = BufReader::new(stderr);
        let mut found = Some(found);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            let text = String::from_utf8_lossy(&line);
            reader_log.lock().unwrap().push_str(&text);
            if let Some(fields) = found.as_ref().and_then(|_| listening_fields(text.trim_end())) {
                let _ = found.take().expect("checked above").send(fields);
            }
        }
    });

    match listening.recv_timeout(START_TIMEOUT) {
        Ok(listening) => WakeProcess { child, log, listening },
        Err(error) => {
            let exit = child.try_wait().ok().flatten();
            let _ = child.kill();
            let _ = child.wait();
            // Give the reader a moment to collect the last lines.
            thread::sleep(Duration::from_millis(200));
            panic!(
                "wake {args:?} did not log `listening` ({error}); exit status {exit:?}; stderr:\n{}",
                log.lock().unwrap()
            );
        }
    }
}

impl WakeServer {
    /// Starts `wake server` on port 0 over `data_dir` and waits until it listens.
    pub fn start(data_dir: &Path, extra_args: &[&str]) -> WakeServer {
        WakeServer::start_on(data_dir, "127.0.0.1:0", extra_args)
    }

    /// Starts `wake standalone` (server and agent in one process) over `data_dir` on free ports.
    #[allow(dead_code)]
    pub fn start_standalone(data_dir: &Path, extra_args: &[&str]) -> WakeServer {
        let port = || std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().to_string();
        let (grpc, http, query, agent) = (port(), port(), port(), port());
        let mut args: Vec<&std::ffi::OsStr> = vec!["standalone".as_ref(), "--data-dir".as_ref(), data_dir.as_os_str()];
        for arg in [
            "--otlp-grpc-addr",
            grpc.as_str(),
            "--otlp-http-addr",
            http.as_str(),
            "--http-addr",
            query.as_str(),
            "--agent-http-addr",
            agent.as_str(),
        ] {
            args.push(arg.as_ref());
        }
        args.extend(extra_args.iter().map(std::ffi::OsStr::new));
        WakeServer::from_process(spawn_wake(&args))
    }

    /// `wake server --data-dir <data_dir_arg>` (possibly relative) run in `cwd`.
    pub fn start_in(cwd: &Path, data_dir_arg: &str, extra_args: &[&str]) -> WakeServer {
        let mut args: Vec<&std::ffi::OsStr> = vec!["server".as_ref(), "--data-dir".as_ref(), data_dir_arg.as_ref()];
        for arg in ["--otlp-grpc-addr", "127.0.0.1:0", "--otlp-http-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"]
        {
            args.push(arg.as_ref());
        }
        args.extend(extra_args.iter().map(std::ffi::OsStr::new));
        WakeServer::from_process(spawn_wake_in(Some(cwd), &args))
    }

    fn from_process(process: WakeProcess) -> WakeServer {
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("building the HTTP client");
        WakeServer {
            grpc_addr: addr(&process.listening, "otlp_grpc_addr"),
            otlp_http_addr: addr(&process.listening, "otlp_http_addr"),
            http_addr: addr(&process.listening, "http_addr"),
            process,
            client,
        }
    }

    /// Like [`WakeServer::start`], with the OTLP/gRPC listener on `grpc_addr` (to restart a
    /// server where its clients expect it).
    pub fn start_on(data_dir: &Path, grpc_addr: &str, extra_args: &[&str]) -> WakeServer {
        let mut args: Vec<&std::ffi::OsStr> = vec!["server".as_ref(), "--data-dir".as_ref(), data_dir.as_os_str()];
        for arg in ["--otlp-grpc-addr", grpc_addr, "--otlp-http-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"] {
            args.push(arg.as_ref());
        }
        args.extend(extra_args.iter().map(std::ffi::OsStr::new));
        WakeServer::from_process(spawn_wake(&args))
    }

    pub fn log(&self) -> String {
        self.process.log()
    }

    pub fn log_tail(&self) -> String {
        self.process.log_tail()
    }

    pub fn pid(&self) -> u32 {
        self.process.child.id()
    }

    pub fn kill(&mut self) {
        self.process.kill();
    }

    pub fn terminate(&mut self) -> ExitStatus {
        self.process.terminate()
    }

    /// `http://127.0.0.1:port`, as gRPC clients and exporters want it.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc_addr)
    }

    /// The OTLP/HTTP URL of `path`, e.g. `/v1/logs`.
    pub fn otlp_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.otlp_http_addr)
    }

    /// The query/admin API URL of `path`.
    pub fn api_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http_addr)
    }

    pub fn client(&self) -> &reqwest::blocking::Client {
        &self.client
    }

    /// Runs `sql` and returns the whole JSON answer; panics with the body unless it is 200.
    pub fn sql(&self, sql: &str) -> Value {
        let (status, body) = self.sql_response(sql);
        if status != 200 {
            panic!("SQL {sql:?} answered {status}: {body}\nserver log tail:\n{}", self.log_tail());
        }
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("SQL {sql:?} answered non-JSON ({e}): {body}"))
    }

    /// Runs `sql` and returns the status and body, whatever they are.
    pub fn sql_response(&self, sql: &str) -> (u16, String) {
        let response = self
            .client
            .post(self.api_url("/api/v1/sql"))
            .json(&serde_json::json!({ "sql": sql }))
            .send()
            .unwrap_or_else(|e| panic!("SQL {sql:?} failed: {e}\nserver log tail:\n{}", self.log_tail()));
        let status = response.status().as_u16();
        (status, response.text().unwrap_or_default())
    }

    /// The `data.result` of a Prometheus API instant query evaluated now; panics unless it
    /// succeeded.
    #[allow(dead_code)]
    pub fn promql(&self, query: &str) -> Vec<Value> {
        let response = self
            .client
            .get(self.api_url("/api/v1/query"))
            .query(&[("query", query)])
            .send()
            .unwrap_or_else(|e| panic!("PromQL {query:?} failed: {e}"));
        let status = response.status().as_u16();
        let body: Value = response.json().unwrap_or_else(|e| panic!("PromQL {query:?} answered non-JSON: {e}"));
        assert_eq!(status, 200, "PromQL {query:?} answered {body}");
        body["data"]["result"].as_array().cloned().unwrap_or_else(|| panic!("PromQL {query:?} answered {body}"))
    }

    /// The rows of the answer to `sql`.
    pub fn sql_rows(&self, sql: &str) -> Vec<Vec<Value>> {
        let answer = self.sql(sql);
        let rows = answer
            .get("rows")
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("SQL {sql:?} answered without rows: {answer}"));
        rows.iter().map(|row| row.as_array().unwrap_or_else(|| panic!("row is not an array: {row}")).clone()).collect()
    }

    /// The rows of the answer to `sql` as objects keyed by column name.
    pub fn sql_objects(&self, sql: &str) -> Vec<serde_json::Map<String, Value>> {
        let answer = self.sql(sql);
        let columns: Vec<String> = answer["columns"]
            .as_array()
            .unwrap_or_else(|| panic!("SQL {sql:?} answered without columns: {answer}"))
            .iter()
            .map(|c| c.as_str().expect("column names are strings").to_string())
            .collect();
        answer["rows"]
            .as_array()
            .unwrap_or_else(|| panic!("SQL {sql:?} answered without rows: {answer}"))
            .iter()
            .map(|row| columns.iter().cloned().zip(row.as_array().expect("rows are arrays").iter().cloned()).collect())
            .collect()
    }

    /// The single integer `sql` answers (e.g. a `count(*)`).
    pub fn count(&self, sql: &str) -> u64 {
        let rows = self.sql_rows(sql);
        match rows.as_slice() {
            [row] if row.len() == 1 => as_u64(&row[0]).unwrap_or_else(|| panic!("SQL {sql:?} answered {row:?}")),
            _ => panic!("SQL {sql:?} answered {} rows, expected one: {rows:?}", rows.len()),
        }
    }

    /// Polls `sql` (a single count) until it answers `expected`; panics with the last answer.
    pub fn wait_for_count(&self, sql: &str, expected: u64, timeout: Duration) {
        self.wait_for_count_where(sql, &format!("{expected}"), |actual| actual == expected, timeout);
    }

    /// Waits until `sql`'s count is at least `minimum`: for rows that keep coming (metrics
    /// scraped every second), where an exact count would race the next scrape.
    pub fn wait_for_count_at_least(&self, sql: &str, minimum: u64, timeout: Duration) {
        self.wait_for_count_where(sql, &format!("at least {minimum}"), |actual| actual >= minimum, timeout);
    }

    fn wait_for_count_where(&self, sql: &str, expected: &str, done: impl Fn(u64) -> bool, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let actual = self.count(sql);
            if done(actual) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "SQL {sql:?} answered {actual}, expected {expected} within {timeout:?}\nserver log tail:\n{}",
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Writes every buffered row to Parquet now.
    pub fn flush(&self) {
        let response = self.client.post(self.api_url("/api/v1/admin/flush")).send().expect("POST /api/v1/admin/flush");
        let status = response.status();
        let body = response.text().unwrap_or_default();
        assert_eq!(status, 200, "flush answered {body}\nserver log tail:\n{}", self.log_tail());
    }

    /// POSTs `request` to `/v1/logs` as protobuf and expects it taken whole (200).
    #[allow(dead_code)]
    pub fn post_logs(&self, request: &ExportLogsServiceRequest) {
        let response = self
            .client
            .post(self.otlp_url("/v1/logs"))
            .header("content-type", "application/x-protobuf")
            .body(request.encode_to_vec())
            .send()
            .expect("POST /v1/logs");
        let status = response.status();
        assert_eq!(status, 200, "POST /v1/logs answered {}", response.text().unwrap_or_default());
    }
}

impl WakeProcess {
    /// Everything the process wrote to stderr so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The last lines of the log, for panic messages.
    pub fn log_tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the process gets no chance to flush anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        self.child.wait().expect("waiting for the killed process");
    }

    /// SIGTERM, then waits for the graceful shutdown to finish.
    pub fn terminate(&mut self) -> ExitStatus {
        let pid = self.child.id();
        assert!(send_signal(pid, "TERM"), "sending SIGTERM to {pid}");
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("polling the process") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("wake did not stop within {STOP_TIMEOUT:?} of SIGTERM\nlog tail:\n{}", self.log_tail());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for WakeProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A running `wake agent`. Dropping it kills the process.
pub struct WakeAgent {
    pub process: WakeProcess,
    pub http_addr: SocketAddr,
}

impl WakeAgent {
    /// Starts `wake agent` with its HTTP endpoint on port 0 and `args`, and waits until it listens.
    pub fn start(args: &[&std::ffi::OsStr]) -> WakeAgent {
        let mut all: Vec<&std::ffi::OsStr> = vec!["agent".as_ref(), "--http-addr".as_ref(), "127.0.0.1:0".as_ref()];
        all.extend_from_slice(args);
        let process = spawn_wake(&all);
        WakeAgent { http_addr: addr(&process.listening, "http_addr"), process }
    }

    /// The value of an unlabelled self-metric, summed over its label sets if it has any.
    pub fn metric(&self, name: &str) -> f64 {
        let text = reqwest::blocking::get(format!("http://{}/metrics", self.http_addr))
            .and_then(|r| r.text())
            .unwrap_or_else(|e| panic!("GET /metrics of the agent: {e}"));
        text.lines()
            .filter(|line| line.starts_with(name) && line[name.len()..].starts_with([' ', '{']))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

/// A node's directories under a temporary root.
pub struct Node {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Node {
    pub fn new() -> Node {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().to_path_buf();
        for sub in ["var/log/pods", "var/log/containers", "docker", "cgroup", "state", "data"] {
            std::fs::create_dir_all(root.join(sub)).expect("creating the node layout");
        }
        Node { _dir: dir, root }
    }

    pub fn path(&self, sub: &str) -> PathBuf {
        self.root.join(sub)
    }

    /// Starts `wake agent` on this node's directories (and no containers/storage), sending to
    /// `endpoint`, with `args` after those.
    pub fn agent(&self, endpoint: &str, args: &[&str]) -> WakeAgent {
        let paths = [
            ("--log-root", self.path("var/log/pods")),
            ("--docker-root", self.path("docker")),
            ("--cgroup-root", self.path("cgroup")),
            ("--state-dir", self.path("state")),
            ("--containers-storage-root", self.path("no-storage")),
        ];
        let mut all: Vec<&OsStr> = Vec::new();
        for (flag, path) in &paths {
            all.extend([OsStr::new(flag), path.as_os_str()]);
        }
        all.extend(["--endpoint", endpoint].map(OsStr::new));
        all.extend(args.iter().map(OsStr::new));
        WakeAgent::start(&all)
    }
}

/// Sends `signal` (e.g. `TERM`) to `pid` with the `kill` command, which keeps the tests free of
/// `unsafe` (the workspace denies it).
fn send_signal(pid: u32, signal: &str) -> bool {
    Command::new("kill").args([format!("-{signal}"), pid.to_string()]).status().is_ok_and(|status| status.success())
}

/// A JSON number (or a numeric string) as u64.
pub fn as_u64(value: &Value) -> Option<u64> {
    value.as_u64().or_else(|| value.as_str()?.parse().ok())
}

/// A JSON number (or a numeric string) as f64.
pub fn as_f64(value: &Value) -> Option<f64> {
    value.as_f64().or_else(|| value.as_str()?.parse().ok())
}

pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_nanos() as u64
}

// ---------------------------------------------------------------------------------------------
// OTLP status messages

/// `google.rpc.Status`, the body of OTLP/HTTP refusals and the details of gRPC ones.
#[derive(Clone, PartialEq, Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
    #[prost(message, repeated, tag = "3")]
    pub details: Vec<ProtoAny>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ProtoAny {
    #[prost(string, tag = "1")]
    pub type_url: String,
    #[prost(bytes = "vec", tag = "2")]
    pub value: Vec<u8>,
}

/// `google.rpc.RetryInfo`, how long a refused client should wait.
#[derive(Clone, PartialEq, Message)]
pub struct RetryInfo {
    #[prost(message, optional, tag = "1")]
    pub retry_delay: Option<ProtoDuration>,
}

#[derive(Clone, PartialEq, Message)]
pub struct ProtoDuration {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

// ---------------------------------------------------------------------------------------------
// OTLP request builders

pub fn string_value(value: &str) -> AnyValue {
    AnyValue { value: Some(any_value::Value::StringValue(value.to_string())) }
}

pub fn attribute(key: &str, value: &str) -> KeyValue {
    KeyValue { key: key.to_string(), value: Some(string_value(value)), ..Default::default() }
}

/// A log request of one resource (`service.name` = `service`) and one scope.
pub fn log_request(service: &str, records: Vec<LogRecord>) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource { attributes: vec![attribute("service.name", service)], ..Default::default() }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope { name: "wake-tests".into(), ..Default::default() }),
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// A log record whose `seq` attribute identifies it; `body_bytes` pads the body.
pub fn seq_record(seq: u64, body_bytes: usize) -> LogRecord {
    let mut body = format!("record {seq} ");
    // Varied filler, so that nothing downstream can compress the size test away.
    let mut state = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while body.len() < body_bytes {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        body.push(char::from(b'a' + (state % 26) as u8));
    }
    LogRecord {
        time_unix_nano: now_ns(),
        severity_number: 9,
        severity_text: "INFO".into(),
        body: Some(string_value(&body)),
        attributes: vec![attribute("seq", &seq.to_string())],
        ..Default::default()
    }
}

/// The field `name` of the `fields` of every JSON log line whose message is `message`.
pub fn log_field(log: &str, message: &str, name: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|json| json["fields"]["message"] == message)
        .map(|json| json["fields"][name].clone())
        .collect()
}

/// Polls `condition` every 250 ms until it holds; panics after `timeout`, naming `what`.
pub fn wait_until(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        thread::sleep(Duration::from_millis(250));
    }
}
