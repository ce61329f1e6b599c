//! Traces benchmark (issue "Traces"): synthetic spans sent as OTLP/HTTP protobuf to a real
//! release `wake server`, then Tempo's trace by id and TraceQL searches over the whole day, warm.
//!
//! The data: `WAKE_BENCH_SPANS` (default 10,000,000) spans in traces of 5 to 50 spans (uniform:
//! about 364,000 traces for 10 M spans) across 20 services (`svc-0` … `svc-19`, resource
//! attributes `service.name`, `service.version`, `k8s.namespace.name`, `k8s.pod.name`; three
//! pods each), deterministic from a seeded splitmix64. Trace ids are 16 random bytes. Each trace
//! is a tree: a root SERVER span (`GET /api/orders`, `http.method`, `http.route`,
//! `http.status_code`, `http.scheme`, `user_agent.original`); under a SERVER or INTERNAL span,
//! CLIENT calls (to another service over HTTP with `http.url`, `net.peer.name`, or a database
//! with `db.system`, `db.name`, `db.statement`) and INTERNAL spans (`code.function`); under an
//! HTTP CLIENT span, the callee's SERVER span. 1 % of spans have status error (a SERVER one
//! with `http.status_code` 500). Trace `t` starts at `begin + (t + jitter) × 24 h / traces`, so
//! the traces spread evenly over the 24 h ending a few minutes before the benchmark started,
//! and are sent in time order. Attribute `bench.tag` is on one span of a trace: `rare` when
//! `t % 10000 == 137` (one trace in 10,000), `common` when `t % 10 == 3` (one in 10).
//!
//! Ingest: the requests are built first (whole traces, about `WAKE_BENCH_BATCH_SPANS`, default
//! 2,000, spans per request; one resource per service and pod), then sent by
//! `WAKE_BENCH_CLIENTS` (default 3) concurrent senders to `POST /v1/traces` (429 and 503 are
//! retried; partial successes are counted), then `POST /api/v1/admin/flush`. Reported: protobuf
//! MB per second of server CPU (utime + stime of the server process from /proc, from the first
//! request to the end of the flush; the server also computes span metrics from the spans at
//! ingest), spans/s of wall time, the stored span count (SQL), then, once compaction has
//! settled (no change of the `spans` files for a minute, at least 90 s), the
//! Parquet bytes under `<data>/spans` per span and the server's peak RSS (`VmHWM`).
//!
//! Queries on the query port, warm: `GET /api/traces/<id>` for 50 traces drawn at random (one
//! warm-up each, then one timed call each: p50, p90, max; each answer must have the trace's
//! span count); `GET /api/search` with `limit=20` and `start`/`end` spanning the whole 24 h for
//! `{ span.bench.tag = "rare" }`, `{ span.bench.tag = "common" }` and
//! `{ resource.service.name = "svc-3" && status = error }` (one warm-up, then `WAKE_BENCH_RUNS`,
//! default 5, timed runs each: p50 and minimum; each answer must hold min(20, matching traces)
//! traces, and the tagged ones only traces with that tag). The server's defaults let these
//! searches through (`query.max_query_length_secs` 721 h; `query.max_search_traces_inspected`
//! 20,000 candidates, more than the first round of 40 that a limit of 20 reads), so no
//! `--config` is passed. To tell where a search spends its time, the two SQL statements it runs
//! (candidate trace ids by the TraceQL prefilter, then the first 40 candidates' spans) are timed
//! alone through `POST /api/v1/sql`, and so is the by-id statement.
//!
//! `cargo bench --bench traces` (env: WAKE_BENCH_SPANS, default 10,000,000; WAKE_BENCH_RUNS,
//! default 5; WAKE_BENCH_CLIENTS, default 3; WAKE_BENCH_BATCH_SPANS, default 2,000;
//! WAKE_BENCH_DATA_DIR to keep or reuse the data: `<dir>/wake`, reused without loading again
//! when `<dir>/traces-bench.json` exists).

mod common;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Child;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use prost::Message;
use reqwest::blocking::Client;
use serde_json::{Value, json};

const SEED: u64 = 0x7ace_5eed_2026_0001;
const SERVICES: u64 = 20;
const PODS: u64 = 3;
const WINDOW_NS: i64 = 24 * 3_600 * 1_000_000_000;
/// No trace starts in the last 10 s of the window, so every span lies inside it.
const WINDOW_TAIL_NS: i64 = 10_000_000_000;
const RARE_EVERY: u64 = 10_000;
const RARE_AT: u64 = 137;
const COMMON_EVERY: u64 = 10;
const COMMON_AT: u64 = 3;
const ERROR_SHARE: f64 = 0.01;
const LIMIT: usize = 20;
const BY_ID_SAMPLES: usize = 50;
/// What the server's search reads first for a limit of 20 (twice the limit), and its
/// candidate query's LIMIT (`query.max_search_traces_inspected`, default).
const FIRST_ROUND: usize = 2 * LIMIT;
const MAX_CANDIDATES: usize = 20_000;
/// The columns the server's trace loader selects (query/src/traces/load.rs).
const SPAN_COLUMNS: &str = "trace_id, span_id, parent_span_id, trace_state, name, kind, start_time, end_time, \
     status_code, status_message, flags, events, links, service_name, k8s_namespace_name, k8s_pod_name, \
     k8s_pod_uid, k8s_container_name, container_id, k8s_node_name, resource_attributes, scope_name, \
     scope_version, attributes";

const ROUTES: [&str; 12] = [
    "/api/orders",
    "/api/orders/{id}",
    "/api/cart",
    "/api/cart/items",
    "/api/users/{id}",
    "/api/login",
    "/api/search",
    "/api/products",
    "/api/products/{id}",
    "/api/payments",
    "/api/inventory/{sku}",
    "/healthz",
];
const NAMESPACES: [&str; 5] = ["shop", "payments", "identity", "search", "platform"];
const POD_SUFFIXES: [&str; PODS as usize] = ["x7k2p", "m4q9z", "b8n3c"];
const AGENTS: [&str; 3] = ["Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0", "okhttp/4.12.0", "python-requests/2.32.3"];
/// (db.system, db.name, db.statement, span name, peer)
const DATABASES: [(&str, &str, &str, &str, &str); 4] = [
    ("postgresql", "orders", "SELECT * FROM orders WHERE id = $1", "SELECT orders", "postgres-0"),
    ("postgresql", "users", "SELECT id, name FROM users WHERE email = $1", "SELECT users", "postgres-0"),
    (
        "postgresql",
        "orders",
        "INSERT INTO order_items (order_id, sku, qty) VALUES ($1, $2, $3)",
        "INSERT orders",
        "postgres-0",
    ),
    ("redis", "0", "GET session:{id}", "GET", "redis-0"),
];
const FUNCTIONS: [&str; 5] = ["validate", "render", "compute_total", "serialize", "authorize"];

const SEARCHES: [(&str, &str); 3] = [
    ("rare tag (1 trace in 10,000)", r#"{ span.bench.tag = "rare" }"#),
    ("common tag (1 trace in 10)", r#"{ span.bench.tag = "common" }"#),
    ("svc-3 errors", r#"{ resource.service.name = "svc-3" && status = error }"#),
];
/// The SQL prefilter the server derives from each search (query/src/traces/traceql/prefilter.rs).
const PREFILTERS: [&str; 3] = [
    "attributes['bench.tag'] = 'rare'",
    "attributes['bench.tag'] = 'common'",
    "(service_name = 'svc-3' AND status_code = 'error')",
];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// splitmix64 as a sequence.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(common::splitmix64(seed))
    }

    fn next(&mut self) -> u64 {
        let value = common::splitmix64(self.0);
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        value
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }
}

/// Trace `t`'s generator, with its id and span count drawn.
fn trace_rng(t: u64) -> (Rng, [u8; 16], usize) {
    let mut rng = Rng::new(SEED ^ t.wrapping_mul(0xA24B_AED4_963E_E407));
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&rng.next().to_be_bytes());
    id[8..].copy_from_slice(&rng.next().to_be_bytes());
    let spans = 5 + rng.below(46) as usize;
    (rng, id, spans)
}

fn trace_id_hex(t: u64) -> String {
    hex::encode(trace_rng(t).1)
}

fn tag_of(t: u64) -> Option<&'static str> {
    if t % RARE_EVERY == RARE_AT {
        Some("rare")
    } else if t % COMMON_EVERY == COMMON_AT {
        Some("common")
    } else {
        None
    }
}

/// How many traces (and spans) reach the span target, and when the 24 h end.
#[derive(Clone, Copy)]
struct Plan {
    traces: u64,
    spans: u64,
    end_ns: i64,
}

impl Plan {
    fn new(target_spans: u64, end_ns: i64) -> Plan {
        let (mut traces, mut spans) = (0, 0);
        while spans < target_spans {
            spans += trace_rng(traces).2 as u64;
            traces += 1;
        }
        Plan { traces, spans, end_ns }
    }

    fn begin_ns(&self) -> i64 {
        self.end_ns - WINDOW_NS
    }

    fn trace_start_ns(&self, t: u64, jitter: f64) -> i64 {
        let slot = (WINDOW_NS - WINDOW_TAIL_NS) as f64 / self.traces as f64;
        self.begin_ns() + ((t as f64 + jitter) * slot) as i64
    }
}

fn string_kv(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.to_string())) }),
        ..Default::default()
    }
}

fn int_kv(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(any_value::Value::IntValue(value)) }),
        ..Default::default()
    }
}

fn method(rng: &mut Rng) -> &'static str {
    match rng.below(20) {
        0..14 => "GET",
        14..18 => "POST",
        18 => "PUT",
        _ => "DELETE",
    }
}

struct Generated {
    service: u64,
    pod: u64,
    kind: SpanKind,
    /// The callee of an HTTP CLIENT span.
    peer: u64,
    /// Database calls have no children.
    leaf: bool,
    parent: Option<usize>,
    start_ns: i64,
    duration_ns: i64,
    error: bool,
    span: Span,
}

/// Trace `t`'s spans, in creation order (parents before children).
fn generate(plan: &Plan, t: u64) -> Vec<Generated> {
    let (mut rng, trace_id, n) = trace_rng(t);
    let trace_start = plan.trace_start_ns(t, rng.unit());
    let tag = tag_of(t).map(|tag| (tag, rng.below(n as u64) as usize));
    let mut spans: Vec<Generated> = Vec::with_capacity(n);
    for i in 0..n {
        let (kind, service, parent, start_ns, duration_ns) = if i == 0 {
            // 5 ms to 2 s, log-uniform.
            let duration = (5e6 * 400f64.powf(rng.unit())) as i64;
            (SpanKind::Server, rng.below(SERVICES), None, trace_start, duration)
        } else {
            let mut p = rng.below(i as u64) as usize;
            while spans[p].leaf {
                p = spans[p].parent.expect("the root is no leaf");
            }
            let parent = &spans[p];
            let kind = match parent.kind {
                SpanKind::Client => SpanKind::Server,
                _ if rng.chance(0.6) => SpanKind::Client,
                _ => SpanKind::Internal,
            };
            let service = if kind == SpanKind::Server { parent.peer } else { parent.service };
            let offset = (parent.duration_ns as f64 * 0.5 * rng.unit()) as i64;
            let duration = ((parent.duration_ns as f64 * (0.1 + 0.4 * rng.unit())) as i64).max(1_000);
            (kind, service, Some(p), parent.start_ns + offset, duration)
        };
        let error = rng.chance(ERROR_SHARE);
        let mut peer = service;
        let mut leaf = false;
        let mut attributes = Vec::with_capacity(6);
        let name = match kind {
            SpanKind::Server => {
                let method = method(&mut rng);
                let route = ROUTES[((service * 3 + rng.below(4)) % ROUTES.len() as u64) as usize];
                let status = if error {
                    500
                } else if rng.chance(0.02) {
                    404
                } else {
                    200
                };
                attributes.push(string_kv("http.method", method));
                attributes.push(string_kv("http.route", route));
                attributes.push(int_kv("http.status_code", status));
                attributes.push(string_kv("http.scheme", "http"));
                attributes.push(string_kv("user_agent.original", AGENTS[rng.below(AGENTS.len() as u64) as usize]));
                format!("{method} {route}")
            }
            SpanKind::Client if rng.chance(0.35) => {
                leaf = true;
                let (system, db, statement, name, host) = DATABASES[rng.below(DATABASES.len() as u64) as usize];
                attributes.push(string_kv("db.system", system));
                attributes.push(string_kv("db.name", db));
                attributes.push(string_kv("db.statement", statement));
                attributes.push(string_kv("net.peer.name", host));
                name.to_string()
            }
            SpanKind::Client => {
                peer = (service + 1 + rng.below(SERVICES - 1)) % SERVICES;
                let method = method(&mut rng);
                let route = ROUTES[((peer * 3 + rng.below(4)) % ROUTES.len() as u64) as usize];
                attributes.push(string_kv("http.method", method));
                attributes.push(string_kv("http.url", &format!("http://svc-{peer}:8080{route}")));
                attributes.push(string_kv("net.peer.name", &format!("svc-{peer}")));
                attributes.push(int_kv("http.status_code", if error { 500 } else { 200 }));
                method.to_string()
            }
            _ => {
                let function = FUNCTIONS[rng.below(FUNCTIONS.len() as u64) as usize];
                attributes.push(string_kv("code.function", function));
                attributes.push(string_kv("code.namespace", &format!("svc{service}.handlers")));
                function.to_string()
            }
        };
        if let Some((tag, tagged_span)) = tag
            && tagged_span == i
        {
            attributes.push(string_kv("bench.tag", tag));
        }
        let span = Span {
            trace_id: trace_id.to_vec(),
            span_id: rng.next().to_be_bytes().to_vec(),
            parent_span_id: parent.map(|p| spans[p].span.span_id.clone()).unwrap_or_default(),
            name,
            kind: kind as i32,
            start_time_unix_nano: start_ns as u64,
            end_time_unix_nano: (start_ns + duration_ns) as u64,
            attributes,
            status: error.then(|| Status { code: StatusCode::Error as i32, message: "internal error".into() }),
            ..Default::default()
        };
        spans.push(Generated {
            service,
            pod: (t / 7 + service) % PODS,
            kind,
            peer,
            leaf,
            parent,
            start_ns,
            duration_ns,
            error,
            span,
        });
    }
    spans
}

fn resource(service: u64, pod: u64) -> Resource {
    Resource {
        attributes: vec![
            string_kv("service.name", &format!("svc-{service}")),
            string_kv("service.version", &format!("1.{}.0", service % 4)),
            string_kv("k8s.namespace.name", NAMESPACES[(service % NAMESPACES.len() as u64) as usize]),
            string_kv(
                "k8s.pod.name",
                &format!("svc-{service}-{:08x}-{}", common::splitmix64(service) as u32, POD_SUFFIXES[pod as usize]),
            ),
        ],
        ..Default::default()
    }
}

#[derive(Default, Clone, Copy)]
struct Stats {
    error_spans: u64,
    /// Traces with an error span of svc-3: what the third search finds.
    svc3_error_traces: u64,
}

/// The request body of traces `first..end`.
fn request_body(plan: &Plan, first: u64, end: u64, stats: &mut Stats) -> Vec<u8> {
    let mut by_resource: BTreeMap<(u64, u64), Vec<Span>> = BTreeMap::new();
    for t in first..end {
        let mut svc3_error = false;
        for generated in generate(plan, t) {
            stats.error_spans += u64::from(generated.error);
            svc3_error |= generated.error && generated.service == 3;
            by_resource.entry((generated.service, generated.pod)).or_default().push(generated.span);
        }
        stats.svc3_error_traces += u64::from(svc3_error);
    }
    let resource_spans = by_resource
        .into_iter()
        .map(|((service, pod), spans)| ResourceSpans {
            resource: Some(resource(service, pod)),
            scope_spans: vec![ScopeSpans {
                scope: Some(InstrumentationScope {
                    name: "io.wake.bench".into(),
                    version: "1.0.0".into(),
                    ..Default::default()
                }),
                spans,
                ..Default::default()
            }],
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest { resource_spans }.encode_to_vec()
}

/// Request boundaries: whole traces, at least `batch_spans` spans each but the last.
fn batches(plan: &Plan, batch_spans: u64) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let (mut first, mut spans) = (0, 0);
    for t in 0..plan.traces {
        spans += trace_rng(t).2 as u64;
        if spans >= batch_spans {
            out.push((first, t + 1));
            (first, spans) = (t + 1, 0);
        }
    }
    if first < plan.traces {
        out.push((first, plan.traces));
    }
    out
}

/// One generator thread's bodies, with their request numbers, and what it generated.
type Part = (Vec<(usize, Vec<u8>)>, Stats);

/// Every request body, built on every core.
fn build_bodies(plan: &Plan, bounds: &[(u64, u64)]) -> (Vec<Vec<u8>>, Stats) {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let parts: Vec<Part> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|w| {
                scope.spawn(move || {
                    let mut stats = Stats::default();
                    let bodies: Vec<(usize, Vec<u8>)> = bounds
                        .iter()
                        .enumerate()
                        .filter(|(b, _)| b % threads == w)
                        .map(|(b, &(first, end))| (b, request_body(plan, first, end, &mut stats)))
                        .collect();
                    (bodies, stats)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("generator")).collect()
    });
    let mut stats = Stats::default();
    let mut bodies: Vec<Vec<u8>> = vec![Vec::new(); bounds.len()];
    for (part, part_stats) in parts {
        stats.error_spans += part_stats.error_spans;
        stats.svc3_error_traces += part_stats.svc3_error_traces;
        for (b, body) in part {
            bodies[b] = body;
        }
    }
    (bodies, stats)
}

/// Sends the bodies in order from `clients` threads; returns (rejected spans, retried requests).
fn send(otlp_addr: &str, bodies: &[Vec<u8>], clients: usize) -> (i64, u64) {
    let next = AtomicUsize::new(0);
    let rejected = AtomicU64::new(0);
    let retries = AtomicU64::new(0);
    let url = format!("http://{otlp_addr}/v1/traces");
    std::thread::scope(|scope| {
        for _ in 0..clients {
            let (next, rejected, retries, url) = (&next, &rejected, &retries, &url);
            scope.spawn(move || {
                let client = Client::builder().timeout(Duration::from_secs(120)).build().expect("client");
                loop {
                    let b = next.fetch_add(1, Ordering::SeqCst);
                    let Some(body) = bodies.get(b) else { break };
                    loop {
                        let response = client
                            .post(url)
                            .header("content-type", "application/x-protobuf")
                            .body(body.clone())
                            .send()
                            .expect("send a request");
                        match response.status().as_u16() {
                            200 => {
                                let bytes = response.bytes().expect("the answer");
                                let answer = ExportTraceServiceResponse::decode(bytes.as_ref()).expect("protobuf");
                                if let Some(partial) = answer.partial_success {
                                    rejected.fetch_add(partial.rejected_spans as u64, Ordering::Relaxed);
                                    if partial.rejected_spans > 0 {
                                        println!("  WARNING request {b}: {}", partial.error_message);
                                    }
                                }
                                break;
                            }
                            429 | 503 => {
                                retries.fetch_add(1, Ordering::Relaxed);
                                std::thread::sleep(Duration::from_millis(200));
                            }
                            other => panic!("request {b}: HTTP {other}: {:?}", response.text()),
                        }
                    }
                }
            });
        }
    });
    (rejected.load(Ordering::Relaxed) as i64, retries.load(Ordering::Relaxed))
}

/// (bytes, files) of the files under `dir` that `filter` keeps.
fn dir_bytes(dir: &Path, filter: &dyn Fn(&Path) -> bool) -> (u64, u64) {
    let (mut total, mut files) = (0, 0);
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if filter(&path) {
                total += entry.metadata().map(|m| m.len()).unwrap_or(0);
                files += 1;
            }
        }
    }
    (total, files)
}

fn is_parquet(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "parquet")
}

/// How many compactions the server has finished, from its `/metrics`.
fn compactions(client: &Client, http: &str) -> u64 {
    let text = client.get(format!("http://{http}/metrics")).send().and_then(|r| r.text()).unwrap_or_default();
    text.lines()
        .find_map(|line| line.strip_prefix("wake_server_compaction_duration_seconds_count "))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until compaction of the spans has settled: no change of the `spans` files (count and
/// bytes) for a minute, and at least 90 s (an hour with few files is merged once it has had
/// no new file for `compaction_settle_secs`, 60 s). benches/promql.rs waits for the server's
/// compaction count to stand still instead; here it never does, since the span metrics that
/// the server derives from spans are written every 15 s, and compacted, for as long as it runs.
fn wait_for_compaction(client: &Client, http: &str, spans_dir: &Path) {
    let started = Instant::now();
    let state = || dir_bytes(spans_dir, &|_| true);
    let (mut seen, mut unchanged_since) = (state(), Instant::now());
    while unchanged_since.elapsed() < Duration::from_secs(60) || started.elapsed() < Duration::from_secs(90) {
        std::thread::sleep(Duration::from_secs(5));
        let now = state();
        if now != seen {
            (seen, unchanged_since) = (now, Instant::now());
        }
    }
    println!(
        "compaction of the spans settled after {:.0} s ({} compactions of any signal so far)",
        started.elapsed().as_secs_f64(),
        compactions(client, http)
    );
}

fn rss_mib(server: &Child) -> f64 {
    common::peak_rss_bytes(server).map_or(f64::NAN, |b| b as f64 / (1024.0 * 1024.0))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The value at quantile `q` of sorted durations.
fn at(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

/// GET `url`: (time to the whole answer, the answer as JSON).
fn get_json(client: &Client, url: reqwest::Url) -> (Duration, Value) {
    let started = Instant::now();
    let response = client.get(url.clone()).send().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status();
    let body = response.bytes().expect("answer body");
    let elapsed = started.elapsed();
    assert!(status.is_success(), "GET {url}: HTTP {status}: {}", String::from_utf8_lossy(&body));
    (elapsed, serde_json::from_slice(&body).unwrap_or_else(|e| panic!("GET {url}: not JSON: {e}")))
}

/// One SQL statement through `POST /api/v1/sql`: (time, answer).
fn sql(client: &Client, http: &str, text: &str) -> (Duration, Value) {
    let started = Instant::now();
    let response = client.post(format!("http://{http}/api/v1/sql")).json(&json!({ "sql": text })).send().expect("sql");
    let status = response.status();
    let body = response.bytes().expect("answer body");
    let elapsed = started.elapsed();
    assert!(status.is_success(), "SQL {text}: HTTP {status}: {}", String::from_utf8_lossy(&body));
    (elapsed, serde_json::from_slice(&body).expect("SQL answer is JSON"))
}

/// Median and minimum of `runs` timed calls after one warm-up.
fn timed(runs: usize, mut call: impl FnMut() -> Duration) -> (Duration, Duration) {
    call();
    let mut times: Vec<Duration> = (0..runs.max(1)).map(|_| call()).collect();
    times.sort();
    (at(&times, 0.5), times[0])
}

fn timestamp(ns: i64) -> String {
    chrono::DateTime::from_timestamp_nanos(ns).format("%Y-%m-%dT%H:%M:%S%.9fZ").to_string()
}

fn spans_in(trace: &Value) -> usize {
    trace["batches"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|batch| batch["scopeSpans"].as_array().into_iter().flatten())
        .map(|scope| scope["spans"].as_array().map_or(0, Vec::len))
        .sum()
}

fn normalized(id: &str) -> String {
    id.trim_start_matches('0').to_ascii_lowercase()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("traces: benchmark");
        return;
    }
    let target_spans = env_u64("WAKE_BENCH_SPANS", 10_000_000);
    let runs = env_u64("WAKE_BENCH_RUNS", 5) as usize;
    let clients = env_u64("WAKE_BENCH_CLIENTS", 3).max(1) as usize;
    let batch_spans = env_u64("WAKE_BENCH_BATCH_SPANS", 2_000).max(1);
    let temporary = tempfile::tempdir().expect("tempdir");
    let root = std::env::var_os("WAKE_BENCH_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| temporary.path().into());
    std::fs::create_dir_all(&root).expect("data dir");
    let meta_path = root.join("traces-bench.json");
    let wake_dir = root.join("wake");
    let spans_dir = wake_dir.join("spans");
    let meta: Option<Value> = std::fs::read(&meta_path).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let client = Client::builder().timeout(Duration::from_secs(1800)).build().expect("client");

    let (mut server, otlp, http) = common::start_server(&wake_dir);
    let pid = server.id();
    let mut rows: Vec<(String, String, String)> = Vec::new();
    let mut problems: Vec<String> = Vec::new();

    let (plan, svc3_error_traces) = if let Some(meta) = &meta {
        let plan = Plan {
            traces: meta["traces"].as_u64().expect("traces"),
            spans: meta["spans"].as_u64().expect("spans"),
            end_ns: meta["end_ns"].as_i64().expect("end_ns"),
        };
        println!("reusing the data in {}; loaded earlier: {meta}", root.display());
        let (bytes, cpu) =
            (meta["protobuf_bytes"].as_f64().unwrap_or(0.0), meta["server_cpu_s"].as_f64().unwrap_or(0.0));
        let acked = meta["acked_s"].as_f64().unwrap_or(0.0);
        rows.push(("spans / traces".into(), format!("{} / {}", plan.spans, plan.traces), String::new()));
        rows.push((
            "ingest (earlier run): MB/s per server core; spans/s wall (acked)".into(),
            format!("{:.1}; {:.0}", bytes / 1e6 / cpu, plan.spans as f64 / acked),
            String::new(),
        ));
        (plan, meta["svc3_error_traces"].as_u64().expect("svc3_error_traces"))
    } else {
        let now_ns = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_nanos() as i64;
        // A minute boundary five minutes ago.
        let end_ns = now_ns / 60_000_000_000 * 60_000_000_000 - 300_000_000_000;
        let started = Instant::now();
        let plan = Plan::new(target_spans, end_ns);
        let bounds = batches(&plan, batch_spans);
        let (bodies, stats) = build_bodies(&plan, &bounds);
        let bytes: u64 = bodies.iter().map(|b| b.len() as u64).sum();
        let mb = bytes as f64 / 1e6;
        println!(
            "generated {} spans in {} traces ({} error spans, {} traces with a svc-3 error) as {} requests, \
             {mb:.0} MB of protobuf ({:.0} B per span), in {:.1} s",
            plan.spans,
            plan.traces,
            stats.error_spans,
            stats.svc3_error_traces,
            bodies.len(),
            bytes as f64 / plan.spans as f64,
            started.elapsed().as_secs_f64()
        );

        let cpu_before = common::cpu_seconds(pid);
        let started = Instant::now();
        let (rejected, retries) = send(&otlp, &bodies, clients);
        let acked = started.elapsed().as_secs_f64();
        let rss_acked = rss_mib(&server);
        let flush = client.post(format!("http://{http}/api/v1/admin/flush")).send().expect("flush");
        assert!(flush.status().is_success(), "flush: {:?}", flush.text());
        let total = started.elapsed().as_secs_f64();
        let cpu = common::cpu_seconds(pid) - cpu_before;
        drop(bodies);
        println!(
            "sent by {clients} clients: acknowledged in {acked:.1} s, flushed after {total:.1} s; {retries} requests \
             retried (429/503), {rejected} spans rejected; server CPU {cpu:.1} s; peak RSS {rss_acked:.0} MiB once \
             acknowledged, {:.0} MiB once flushed",
            rss_mib(&server)
        );
        rows.push((
            "spans / traces / requests".into(),
            format!("{} / {} / {}", plan.spans, plan.traces, bounds.len()),
            String::new(),
        ));
        rows.push((
            "OTLP protobuf sent".into(),
            format!("{mb:.0} MB ({:.0} B/span)", bytes as f64 / plan.spans as f64),
            String::new(),
        ));
        rows.push((
            "ingest: MB/s per server core (CPU incl. flush)".into(),
            format!("{:.1} ({cpu:.1} CPU-s)", mb / cpu),
            String::new(),
        ));
        rows.push((
            "ingest: spans per server CPU-second".into(),
            format!("{:.0}", plan.spans as f64 / cpu),
            String::new(),
        ));
        rows.push((
            "ingest: spans/s wall (acked; with flush)".into(),
            format!("{:.0}; {:.0}", plan.spans as f64 / acked, plan.spans as f64 / total),
            String::new(),
        ));
        rows.push((
            "ingest: retried requests / rejected spans".into(),
            format!("{retries} / {rejected}"),
            String::new(),
        ));
        let meta = json!({
            "end_ns": plan.end_ns,
            "traces": plan.traces,
            "spans": plan.spans,
            "svc3_error_traces": stats.svc3_error_traces,
            "protobuf_bytes": bytes,
            "acked_s": acked,
            "flushed_s": total,
            "server_cpu_s": cpu,
            "clients": clients,
            "batch_spans": batch_spans,
        });
        std::fs::write(&meta_path, meta.to_string()).expect("writing traces-bench.json");
        (plan, stats.svc3_error_traces)
    };

    let (_, count) = sql(&client, &http, "SELECT count(*) FROM spans");
    let stored = count["rows"][0][0].as_u64().unwrap_or(0);
    if stored != plan.spans {
        problems.push(format!("{stored} spans stored, {} sent", plan.spans));
    }
    let cpu_before = common::cpu_seconds(pid);
    wait_for_compaction(&client, &http, &spans_dir);
    let compaction_cpu = common::cpu_seconds(pid) - cpu_before;
    let (parquet, files) = dir_bytes(&spans_dir, &|p| is_parquet(p));
    let (spans_total, _) = dir_bytes(&spans_dir, &|_| true);
    let (all_total, _) = dir_bytes(&wake_dir, &|_| true);
    let rss = rss_mib(&server);
    println!(
        "stored {stored} spans; on disk: spans Parquet {:.1} MB in {files} files ({:.1} B/span), spans dir {:.1} MB, \
         whole data dir {:.1} MB; server CPU while compacting {compaction_cpu:.1} s; peak RSS {rss:.0} MiB",
        parquet as f64 / 1e6,
        parquet as f64 / plan.spans as f64,
        spans_total as f64 / 1e6,
        all_total as f64 / 1e6
    );
    rows.push(("stored spans (SQL count)".into(), stored.to_string(), String::new()));
    rows.push((
        "on disk: spans Parquet bytes per span".into(),
        format!("{:.1} ({:.1} MB, {files} files)", parquet as f64 / plan.spans as f64, parquet as f64 / 1e6),
        String::new(),
    ));
    rows.push(("on disk: whole data dir".into(), format!("{:.1} MB", all_total as f64 / 1e6), String::new()));
    rows.push(("server CPU while compacting".into(), format!("{compaction_cpu:.1} s"), String::new()));
    rows.push(("server peak RSS (VmHWM) after load and compaction".into(), format!("{rss:.0} MiB"), String::new()));

    // Trace by id.
    let mut rng = Rng::new(SEED ^ 0xb1d);
    let mut picked = Vec::new();
    while picked.len() < BY_ID_SAMPLES.min(plan.traces as usize) {
        let t = rng.below(plan.traces);
        if !picked.contains(&t) {
            picked.push(t);
        }
    }
    let mut by_id = Vec::new();
    let mut by_id_sql = Vec::new();
    for &t in &picked {
        let (_, id, spans) = trace_rng(t);
        let id = hex::encode(id);
        let url = reqwest::Url::parse(&format!("http://{http}/api/traces/{id}")).expect("URL");
        get_json(&client, url.clone());
        let (elapsed, answer) = get_json(&client, url);
        let got = spans_in(&answer);
        if got != spans {
            problems.push(format!("trace {id} (#{t}): {got} spans answered, {spans} sent"));
        }
        by_id.push(elapsed);
        let statement = format!("SELECT {SPAN_COLUMNS} FROM spans WHERE trace_id IN ('{id}')");
        sql(&client, &http, &statement);
        by_id_sql.push(sql(&client, &http, &statement).0);
    }
    by_id.sort();
    by_id_sql.sort();
    let by_id_p50 = at(&by_id, 0.5);
    println!(
        "trace by id ({} traces): p50 {:.1} ms, p90 {:.1} ms, max {:.1} ms; the same SQL alone p50 {:.1} ms",
        by_id.len(),
        ms(by_id_p50),
        ms(at(&by_id, 0.9)),
        ms(by_id[by_id.len() - 1]),
        ms(at(&by_id_sql, 0.5))
    );
    rows.push((
        "trace by id p50 / p90 / max".into(),
        format!("{:.1} / {:.1} / {:.1} ms", ms(by_id_p50), ms(at(&by_id, 0.9)), ms(by_id[by_id.len() - 1])),
        format!("p50 ≤ 20 ms: {}", if ms(by_id_p50) <= 20.0 { "met" } else { "NOT met" }),
    ));
    rows.push((
        "  its SQL alone (`trace_id IN (id)`) p50".into(),
        format!("{:.1} ms", ms(at(&by_id_sql, 0.5))),
        String::new(),
    ));

    // TraceQL searches over the whole 24 h.
    let (start_s, end_s) = (plan.begin_ns().div_euclid(1_000_000_000), plan.end_ns.div_euclid(1_000_000_000));
    let tagged = |tag: &str| -> HashSet<String> {
        (0..plan.traces).filter(|&t| tag_of(t) == Some(tag)).map(|t| normalized(&trace_id_hex(t))).collect()
    };
    let expected_sets = [Some(tagged("rare")), Some(tagged("common")), None];
    let matching = [
        expected_sets[0].as_ref().map_or(0, HashSet::len) as u64,
        expected_sets[1].as_ref().map_or(0, HashSet::len) as u64,
        svc3_error_traces,
    ];
    let range = format!(
        "start_time >= '{}' AND start_time < '{}'",
        timestamp(start_s * 1_000_000_000),
        timestamp(end_s * 1_000_000_000)
    );
    for (i, (label, query)) in SEARCHES.iter().enumerate() {
        let params = [
            ("q", query.to_string()),
            ("limit", LIMIT.to_string()),
            ("start", start_s.to_string()),
            ("end", end_s.to_string()),
        ];
        let url = reqwest::Url::parse_with_params(&format!("http://{http}/api/search"), &params).expect("URL");
        let expected = (matching[i] as usize).min(LIMIT);
        let mut inspected = 0;
        let (p50, min) = timed(runs, || {
            let (elapsed, answer) = get_json(&client, url.clone());
            let traces = answer["traces"].as_array().cloned().unwrap_or_default();
            inspected = answer["metrics"]["inspectedTraces"].as_u64().unwrap_or(0);
            if traces.len() != expected {
                problems.push(format!("{query}: {} traces answered, {expected} expected", traces.len()));
            }
            if let Some(set) = &expected_sets[i] {
                for trace in &traces {
                    let id = trace["traceID"].as_str().unwrap_or_default();
                    if !set.contains(&normalized(id)) {
                        problems.push(format!("{query}: trace {id} does not carry the tag"));
                    }
                }
            }
            elapsed
        });
        // Its two SQL statements alone.
        let candidates_sql = format!(
            "SELECT trace_id, max(start_time) AS latest FROM spans WHERE {range} AND ({}) GROUP BY trace_id \
             ORDER BY latest DESC, trace_id LIMIT {MAX_CANDIDATES}",
            PREFILTERS[i]
        );
        let mut candidates = 0;
        let mut first_ids: Vec<String> = Vec::new();
        let (candidates_p50, _) = timed(runs, || {
            let (elapsed, answer) = sql(&client, &http, &candidates_sql);
            let ids = answer["rows"].as_array().cloned().unwrap_or_default();
            candidates = ids.len();
            first_ids = ids.iter().take(FIRST_ROUND).filter_map(|r| r[0].as_str().map(|s| format!("'{s}'"))).collect();
            elapsed
        });
        let load_p50 = if first_ids.is_empty() {
            Duration::ZERO
        } else {
            let load_sql = format!("SELECT {SPAN_COLUMNS} FROM spans WHERE trace_id IN ({})", first_ids.join(", "));
            timed(runs, || sql(&client, &http, &load_sql).0).0
        };
        println!(
            "{query} over 24 h, limit {LIMIT}: p50 {:.1} ms (min {:.1}); {expected} traces expected of {} matching, \
             {inspected} inspected; its SQL alone: candidates ({candidates} ids) p50 {:.1} ms, spans of the first {} \
             p50 {:.1} ms",
            ms(p50),
            ms(min),
            matching[i],
            ms(candidates_p50),
            first_ids.len(),
            ms(load_p50)
        );
        rows.push((
            format!("search {label}: `{query}` p50 (min)"),
            format!("{:.1} ({:.1}) ms; {expected} traces, {inspected} inspected", ms(p50), ms(min)),
            format!("p50 ≤ 300 ms: {}", if ms(p50) <= 300.0 { "met" } else { "NOT met" }),
        ));
        rows.push((
            "  its SQL alone: candidate ids; spans of the first (up to 40)".into(),
            format!("{:.1} ms ({candidates} ids); {:.1} ms", ms(candidates_p50), ms(load_p50)),
            String::new(),
        ));
    }
    println!("server peak RSS at the end: {:.0} MiB", rss_mib(&server));

    println!(
        "\ntraces benchmark: {} spans, {} traces over 24 h, {clients} clients, ~{batch_spans} spans per request",
        plan.spans, plan.traces
    );
    println!("| measurement | value | target |");
    println!("|---|---|---|");
    for (what, value, target) in &rows {
        println!("| {} | {value} | {target} |", what.replace('|', "\\|"));
    }
    common::terminate(&mut server);
    if !problems.is_empty() {
        problems.dedup();
        panic!("{} problems:\n{}", problems.len(), problems.join("\n"));
    }
}
