//! Loki's live tail, `GET /loki/api/v1/tail` over WebSocket, as Grafana's Explore "Live" mode and
//! `logcli --tail` use it: the past lines first (`start`, `limit`), then new lines as they are
//! sent, each exactly once and in order, with their stream labels; line filters apply; a metric
//! query or a bad parameter is a 400 before the upgrade, and a tail beyond
//! `query.max_concurrent_tail_requests` a 429 with `Retry-After`.

mod common;

use std::time::{Duration, Instant};

use common::{WakeServer, attribute, now_ns, string_value, wait_until};
use futures::StreamExt;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const SECOND: u64 = 1_000_000_000;
/// Long enough for a few of the server's one-second polls.
const ARRIVAL: Duration = Duration::from_secs(15);

/// The labels every line of `service` has in Loki's answers.
fn stream_labels(service: &str) -> Value {
    json!({
        "service_name": service,
        "k8s_namespace_name": "shop",
        "k8s_pod_name": "web-1",
        "k8s_container_name": "app",
        "stream": "stdout",
    })
}

/// Sends `lines` (timestamp, body) of `service` through OTLP/HTTP.
fn send(server: &WakeServer, service: &str, lines: &[(u64, &str)]) {
    let records = lines
        .iter()
        .map(|(ts, body)| LogRecord {
            time_unix_nano: *ts,
            body: Some(string_value(body)),
            attributes: vec![attribute("log.iostream", "stdout")],
            ..Default::default()
        })
        .collect();
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    attribute("service.name", service),
                    attribute("k8s.namespace.name", "shop"),
                    attribute("k8s.pod.name", "web-1"),
                    attribute("k8s.container.name", "app"),
                ],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope::default()),
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    server.post_logs(&request);
}

/// One line as the tail sent it.
#[derive(Debug, Clone, PartialEq)]
struct Line {
    ts: u64,
    labels: Value,
    line: String,
}

/// A tail refused before the upgrade: what the server answered instead.
#[derive(Debug)]
struct Refusal {
    status: u16,
    headers: tungstenite::http::HeaderMap,
    body: String,
}

/// A tail connection, driven from blocking test code.
struct Tail {
    runtime: tokio::runtime::Runtime,
    socket: WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>,
}

fn tail_url(server: &WakeServer, params: &[(&str, &str)]) -> String {
    let base = format!("ws://{}/loki/api/v1/tail", server.http_addr);
    reqwest::Url::parse_with_params(&base, params).expect("tail URL").to_string()
}

impl Tail {
    /// Connects, or returns what the server answered instead of the upgrade.
    fn try_connect(server: &WakeServer, params: &[(&str, &str)]) -> Result<Tail, Box<Refusal>> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let url = tail_url(server, params);
        match runtime.block_on(tokio_tungstenite::connect_async(url.as_str())) {
            Ok((socket, _)) => Ok(Tail { runtime, socket }),
            Err(tungstenite::Error::Http(response)) => {
                let body = response.body().as_deref().map(|b| String::from_utf8_lossy(b).into_owned());
                Err(Box::new(Refusal {
                    status: response.status().as_u16(),
                    headers: response.headers().clone(),
                    body: body.unwrap_or_default(),
                }))
            }
            Err(error) => panic!("connecting to {url}: {error}\nserver log tail:\n{}", server.log_tail()),
        }
    }

    fn connect(server: &WakeServer, params: &[(&str, &str)]) -> Tail {
        Tail::try_connect(server, params)
            .unwrap_or_else(|refusal| panic!("tail {params:?}: {refusal:?}\nserver log tail:\n{}", server.log_tail()))
    }

    /// The next message's lines, or `None` when nothing came within `timeout`.
    fn next_message(&mut self, timeout: Duration) -> Option<Vec<Line>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let socket = &mut self.socket;
            let message =
                self.runtime.block_on(async { tokio::time::timeout_at(deadline, socket.next()).await }).ok()?;
            match message {
                Some(Ok(Message::Text(text))) => return Some(parse_message(&text)),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                other => panic!("the tail ended or sent something else: {other:?}"),
            }
        }
    }

    /// Reads until `count` lines came, or panics with what came within `timeout`.
    fn lines(&mut self, count: usize, timeout: Duration) -> Vec<Line> {
        let deadline = Instant::now() + timeout;
        let mut lines = Vec::new();
        while lines.len() < count {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.next_message(left) {
                Some(more) => lines.extend(more),
                None => panic!("expected {count} lines within {timeout:?}, got {lines:#?}"),
            }
        }
        assert_eq!(lines.len(), count, "more lines than expected: {lines:#?}");
        lines
    }

    /// Asserts that no line comes for `time`.
    fn assert_quiet(&mut self, time: Duration) {
        if let Some(lines) = self.next_message(time) {
            panic!("expected no more lines, got {lines:#?}");
        }
    }

    fn close(mut self) {
        let _ = self.runtime.block_on(self.socket.close(None));
    }
}

/// The lines of one tail message, after checking that it has Loki's `TailResponse` shape.
fn parse_message(text: &str) -> Vec<Line> {
    let json: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"));
    let object = json.as_object().unwrap_or_else(|| panic!("not an object: {text}"));
    assert!(object.keys().all(|k| k == "streams" || k == "dropped_entries"), "{text}");
    let mut lines = Vec::new();
    for stream in json["streams"].as_array().unwrap_or_else(|| panic!("no streams: {text}")) {
        assert!(stream["stream"].is_object(), "{text}");
        for value in stream["values"].as_array().unwrap_or_else(|| panic!("no values: {text}")) {
            let ts = value[0].as_str().unwrap_or_else(|| panic!("the time is a string: {text}"));
            lines.push(Line {
                ts: ts.parse().unwrap_or_else(|_| panic!("the time is in nanoseconds: {text}")),
                labels: stream["stream"].clone(),
                line: value[1].as_str().unwrap_or_else(|| panic!("the line is a string: {text}")).to_string(),
            });
        }
    }
    lines
}

fn texts(lines: &[Line]) -> Vec<&str> {
    lines.iter().map(|l| l.line.as_str()).collect()
}

fn start() -> (tempfile::TempDir, WakeServer) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = WakeServer::start(dir.path(), &[]);
    (dir, server)
}

#[test]
fn tail_sends_the_past_then_each_new_line_once_in_order() {
    let (_dir, mut server) = start();
    let t0 = now_ns();
    send(&server, "tail-svc", &[(t0 - 3 * SECOND, "before 1"), (t0 - 2 * SECOND, "before 2")]);
    send(&server, "tail-svc", &[(t0 - SECOND, "before 3"), (t0 - 7200 * SECOND, "two hours ago")]);
    send(&server, "other-svc", &[(t0 - SECOND, "not mine")]);
    server.wait_for_count("SELECT count(*) FROM logs", 5, Duration::from_secs(10));

    let selector = r#"{service_name="tail-svc"}"#;
    let mut tail = Tail::connect(&server, &[("query", selector)]);
    // The past hour first (the default `start`), oldest first, with the stream labels.
    let past = tail.lines(3, ARRIVAL);
    assert_eq!(texts(&past), ["before 1", "before 2", "before 3"]);
    assert_eq!(past.iter().map(|l| l.ts).collect::<Vec<_>>(), [t0 - 3 * SECOND, t0 - 2 * SECOND, t0 - SECOND]);
    assert!(past.iter().all(|l| l.labels == stream_labels("tail-svc")), "{past:#?}");

    // `limit` keeps the newest past lines; `start` reaches further back.
    let mut newest = Tail::connect(&server, &[("query", selector), ("limit", "2")]);
    assert_eq!(texts(&newest.lines(2, ARRIVAL)), ["before 2", "before 3"]);
    newest.assert_quiet(Duration::from_millis(1500));
    newest.close();
    let since = (t0 - 3 * 3600 * SECOND).to_string();
    let mut all = Tail::connect(&server, &[("query", selector), ("start", &since), ("delay_for", "1")]);
    assert_eq!(texts(&all.lines(4, ARRIVAL)), ["two hours ago", "before 1", "before 2", "before 3"]);
    all.close();

    // New lines, as they are sent.
    let t1 = now_ns();
    send(&server, "tail-svc", &[(t1, "after 1"), (t1 + 1000, "after 2")]);
    send(&server, "other-svc", &[(t1, "still not mine")]);
    let new = tail.lines(2, ARRIVAL);
    assert_eq!(texts(&new), ["after 1", "after 2"]);
    assert_eq!(new[1].ts, t1 + 1000);
    assert!(new.iter().all(|l| l.labels == stream_labels("tail-svc")), "{new:#?}");

    // A line that arrives late, behind lines already sent, still comes; and so does another line
    // at the very instant of the last one sent, without that one again.
    send(&server, "tail-svc", &[(t1 - 4 * SECOND, "late"), (t1 + 1000, "same instant")]);
    let more = tail.lines(2, ARRIVAL);
    assert_eq!(texts(&more), ["late", "same instant"]);
    assert_eq!(more[1].ts, t1 + 1000);
    // Exactly once: a few more polls bring nothing, also once the lines moved to Parquet.
    server.flush();
    tail.assert_quiet(Duration::from_millis(3500));

    // Many lines at once come in order, split across messages.
    let t2 = now_ns();
    let bodies: Vec<String> = (0..250).map(|i| format!("burst {i:03}")).collect();
    let burst: Vec<(u64, &str)> = bodies.iter().enumerate().map(|(i, b)| (t2 + i as u64, b.as_str())).collect();
    send(&server, "tail-svc", &burst);
    let got = tail.lines(250, ARRIVAL);
    assert_eq!(texts(&got), bodies.iter().map(String::as_str).collect::<Vec<_>>());
    tail.assert_quiet(Duration::from_millis(2500));

    // A server stopping with a tail open still stops.
    let status = server.terminate();
    assert!(status.success(), "{status:?}\n{}", server.log_tail());
}

#[test]
fn tail_filters_lines_and_refuses_bad_requests_before_the_upgrade() {
    let (_dir, server) = start();
    let mut tail = Tail::connect(&server, &[("query", r#"{service_name="filtered"} |= "needle""#)]);
    let t0 = now_ns();
    send(
        &server,
        "filtered",
        &[(t0, "hay 1"), (t0 + 1, "needle 1"), (t0 + 2, "hay 2"), (t0 + 3, "a needle 2"), (t0 + 4, "Needle 3")],
    );
    let lines = tail.lines(2, ARRIVAL);
    assert_eq!(texts(&lines), ["needle 1", "a needle 2"]);
    // Flushed, `|=` is narrowed by the full-text index: still the same lines, not again.
    server.flush();
    tail.assert_quiet(Duration::from_millis(2500));

    // The pipeline after a parser applies too, with its extracted labels.
    let mut parsed = Tail::connect(
        &server,
        &[("query", r#"{service_name="filtered"} | logfmt | level="error""#), ("start", &t0.to_string())],
    );
    send(&server, "filtered", &[(t0 + 10, "level=info msg=fine"), (t0 + 11, "level=error msg=broken")]);
    let errors = parsed.lines(1, ARRIVAL);
    assert_eq!(texts(&errors), ["level=error msg=broken"]);
    assert_eq!(errors[0].labels["level"], "error");
    assert_eq!(errors[0].labels["msg"], "broken");
    parsed.close();

    for (params, message) in [
        (vec![("query", r#"count_over_time({service_name="filtered"}[1m])"#)], "metric query"),
        (vec![("query", r#"sum(rate({service_name="filtered"} |= "x" [5m]))"#)], "metric query"),
        (vec![("query", r#"{service_name=~".*"}"#)], "at least one"),
        (vec![("query", r#"{service_name="filtered""#)], "parse error"),
        (vec![("query", r#"{service_name="filtered"}"#), ("delay_for", "6")], "delay_for"),
        (vec![("query", r#"{service_name="filtered"}"#), ("limit", "x")], "limit"),
        (vec![], "query"),
    ] {
        match Tail::try_connect(&server, &params).map_err(|refusal| *refusal) {
            Err(Refusal { status, body, .. }) => {
                assert_eq!(status, 400, "{params:?}: {body}");
                assert!(body.contains(message), "{params:?}: {body}");
            }
            Ok(_) => panic!("{params:?} was accepted"),
        }
    }
    // Without an upgrade, a good query is still no WebSocket.
    let url = tail_url(&server, &[("query", r#"{service_name="filtered"}"#)]).replacen("ws://", "http://", 1);
    let status = server.client().get(url).send().expect("GET").status();
    assert!(status.is_client_error(), "{status}");
}

/// `wake_query_limit_hits_total{api, limit}` as the server's `/metrics` shows it.
fn limit_hits(server: &WakeServer, api: &str, limit: &str) -> f64 {
    let metrics = server.client().get(server.api_url("/metrics")).send().expect("/metrics").text().unwrap_or_default();
    let wanted = format!("wake_query_limit_hits_total{{api=\"{api}\",limit=\"{limit}\"}} ");
    metrics.lines().find_map(|line| line.strip_prefix(&wanted)).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0)
}

/// Asserts that a tail was refused as Loki refuses one too many: a plain-text 429 that says so,
/// with `Retry-After`.
fn assert_too_many_tails(refused: Result<Tail, Box<Refusal>>, server: &WakeServer) {
    let Err(refusal) = refused else { panic!("a tail beyond the limit was accepted\n{}", server.log_tail()) };
    assert_eq!(refusal.status, 429, "{refusal:?}");
    assert_eq!(refusal.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"), "{refusal:?}");
    let content_type = refusal.headers.get("content-type").and_then(|v| v.to_str().ok());
    assert_eq!(content_type, Some("text/plain; charset=utf-8"), "{refusal:?}");
    assert_eq!(
        refusal.body,
        "max concurrent tail requests limit exceeded, count > limit (3 > 2) (query.max_concurrent_tail_requests)"
    );
}

#[test]
fn tails_beyond_max_concurrent_tail_requests_get_429_until_one_closes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = dir.path().join("wake.yaml");
    std::fs::write(&config, "query:\n  max_concurrent_tail_requests: 2\n").expect("writing the config");
    let server = WakeServer::start(&dir.path().join("data"), &["--config", config.to_str().expect("utf-8 path")]);
    let params = [("query", r#"{service_name="busy"}"#)];

    let first = Tail::connect(&server, &params);
    let mut second = Tail::connect(&server, &params);
    assert_too_many_tails(Tail::try_connect(&server, &params), &server);
    assert_eq!(limit_hits(&server, "loki", "max_concurrent_tail_requests"), 1.0);
    // A bad request is still answered for what it is, and takes no place.
    let bad = Tail::try_connect(&server, &[("query", r#"{service_name="busy""#)]).err().expect("a parse error");
    assert_eq!(bad.status, 400, "{bad:?}");
    // The open tails go on tailing.
    let t0 = now_ns();
    send(&server, "busy", &[(t0, "while full")]);
    assert_eq!(texts(&second.lines(1, ARRIVAL)), ["while full"]);

    // A closed tail frees its place once the server has read the close frame, which it does
    // between two polls: a second at most, so the retries are bounded.
    first.close();
    let mut third = None;
    wait_until(ARRIVAL, "the closed tail's place", || match Tail::try_connect(&server, &params) {
        Ok(tail) => {
            third = Some(tail);
            true
        }
        Err(refusal) if refusal.status == 429 => false,
        Err(refusal) => panic!("{refusal:?}\n{}", server.log_tail()),
    });
    let mut third = third.expect("a third tail");
    let t1 = now_ns();
    send(&server, "busy", &[(t1, "after a close")]);
    // The past hour first, as any tail: the line sent while the limit was reached.
    assert_eq!(texts(&third.lines(2, ARRIVAL)), ["while full", "after a close"]);
    assert_eq!(texts(&second.lines(1, ARRIVAL)), ["after a close"]);
    // Two are open again: the limit still holds.
    let hits_before = limit_hits(&server, "loki", "max_concurrent_tail_requests");
    assert_too_many_tails(Tail::try_connect(&server, &params), &server);
    assert_eq!(limit_hits(&server, "loki", "max_concurrent_tail_requests"), hits_before + 1.0);
    second.close();
    third.close();
}
