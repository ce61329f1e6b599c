//! Container inventory benchmark (issue "Container inventory"): 100,000 container instances
//! sent as the agent's lifecycle events (OTLP/HTTP protobuf) to a real release `wake server`,
//! then "where does image X run" through `GET /api/v1/containers` and SQL, warm.
//!
//! The data: `WAKE_BENCH_CONTAINERS` (default 100,000) instances over 30 days, deterministic
//! (splitmix64): 100 namespaces, 50 nodes, 400 images (`registry.example/team-<t>/app-<a>:<v>`,
//! and `nginx:1.25.<n>` for every twentieth); instance `i` starts at `begin + i × 30 d / n`, 90 %
//! end (exit 0, one in 20 with 1 and `Error`, one in 100 with 137 and `OOMKilled`) within a
//! day, 10 % run now. Each instance is a `container.start` (and a `container.stop`) event with
//! the agent's attributes, 1,000 events per request from 2 senders.
//!
//! Queries, one warm-up then `WAKE_BENCH_RUNS` (default 20) timed runs each, p50 and p90:
//! - exact image, running now: `image=nginx:1.25.3&status=running`;
//! - the same as Docker normalises it: `image=docker.io/library/nginx:1.25.3`;
//! - a tag glob over 30 days: `image=nginx:1.25*&since=30d` (default limit 1,000 rows);
//! - a digest prefix: `image=sha256:<first 12 hex of one image id>`;
//! - one node at one instant: `node=node-7&at=<mid-range>`;
//! - SQL: `SELECT namespace, node, count(*) FROM containers WHERE image_name = 'nginx:1.25.3'
//!   AND status = 'running' GROUP BY 1, 2`.
//!
//! Also reported: events per second of ingest (wall), the server's peak RSS after the load
//! and its RSS growth over an empty store, and the inventory's bytes on disk.
//!
//! `cargo bench --bench inventory` (env: WAKE_BENCH_CONTAINERS, WAKE_BENCH_RUNS).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use serde_json::Value;

const DAY_NS: i64 = 86_400_000_000_000;
const EVENTS_PER_REQUEST: usize = 1000;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn string(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.into())) }),
        ..Default::default()
    }
}

fn int(key: &str, value: i64) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(any_value::Value::IntValue(value)) }),
        ..Default::default()
    }
}

fn image_of(k: u64) -> String {
    if k.is_multiple_of(20) {
        format!("nginx:1.25.{}", k / 20 % 10)
    } else {
        format!("registry.example/team-{}/app-{}:v{}", k % 7, k, k % 5)
    }
}

fn image_id_of(k: u64) -> String {
    format!("sha256:{:016x}{:016x}{:016x}{:016x}", common::splitmix64(k), common::splitmix64(k + 1), k, k * 31)
}

/// Whether instance `i` ended (90 %), independently of its image.
fn ends(i: u64) -> bool {
    !common::splitmix64(i ^ 0x5eed).is_multiple_of(10)
}

/// The events of instance `i` (start, and stop unless it runs now).
fn events(i: u64, n: u64, begin_ns: i64, now_ns: i64) -> Vec<ResourceLogs> {
    let r = common::splitmix64(i);
    let k = r % 400;
    let (namespace, pod) = (format!("ns-{}", r % 100), format!("app-{}-{:05x}", k, i % 0xfffff));
    let start = begin_ns + i64::try_from(i).unwrap() * (30 * DAY_NS / i64::try_from(n).unwrap());
    let resource = Resource {
        attributes: vec![
            string("container.id", &format!("{:016x}{:048x}", common::splitmix64(i ^ 0xabc), i)),
            string("k8s.namespace.name", &namespace),
            string("k8s.pod.name", &pod),
            string("k8s.container.name", "app"),
            string("k8s.node.name", &format!("node-{}", (r >> 8) % 50)),
            string("container.image.name", &image_of(k)),
            string("container.image.id", &image_id_of(k)),
            KeyValue {
                key: "container.image.repo_digests".into(),
                value: Some(AnyValue {
                    value: Some(any_value::Value::ArrayValue(ArrayValue {
                        values: vec![AnyValue {
                            value: Some(any_value::Value::StringValue(format!(
                                "registry.example/app@{}",
                                image_id_of(k + 1000)
                            ))),
                        }],
                    })),
                }),
                ..Default::default()
            },
            string("container.runtime", "containerd"),
            int("k8s.container.restart_count", i64::try_from(r % 3).unwrap()),
        ],
        ..Default::default()
    };
    let record = |name: &str, time: i64, attributes: Vec<KeyValue>| LogRecord {
        time_unix_nano: u64::try_from(time).unwrap(),
        event_name: name.into(),
        attributes,
        ..Default::default()
    };
    let mut records = vec![record("container.start", start, vec![int("container.started_at", start)])];
    if ends(i) {
        let end = (start + i64::try_from(r % 1000).unwrap() * (DAY_NS / 1000)).min(now_ns);
        let (code, reason) = match r % 100 {
            0..=0 => (137, "OOMKilled"),
            1..=5 => (1, "Error"),
            _ => (0, "Completed"),
        };
        records.push(record(
            "container.stop",
            end,
            vec![
                int("container.finished_at", end),
                int("container.exit_code", code),
                string("container.exit_reason", reason),
            ],
        ));
    }
    vec![ResourceLogs {
        resource: Some(resource),
        scope_logs: vec![ScopeLogs {
            scope: Some(InstrumentationScope { name: "wake.agent.lifecycle".into(), ..Default::default() }),
            log_records: records,
            ..Default::default()
        }],
        ..Default::default()
    }]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn main() {
    let n = env_or("WAKE_BENCH_CONTAINERS", 100_000);
    let runs = env_or("WAKE_BENCH_RUNS", 20) as usize;
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut server, otlp, http) = common::start_server(&dir.path().join("wake"));
    let empty_rss = common::peak_rss_bytes(&server).unwrap_or(0);
    let now_ns = i64::try_from(SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()).unwrap();
    let begin_ns = now_ns - 30 * DAY_NS;

    // Requests of about EVENTS_PER_REQUEST events each, built first.
    let mut requests = Vec::new();
    let (mut batch, mut batch_events) = (Vec::new(), 0);
    for i in 0..n {
        let logs = events(i, n, begin_ns, now_ns);
        batch_events += logs[0].scope_logs[0].log_records.len();
        batch.extend(logs);
        if batch_events >= EVENTS_PER_REQUEST {
            requests.push(ExportLogsServiceRequest { resource_logs: std::mem::take(&mut batch) }.encode_to_vec());
            batch_events = 0;
        }
    }
    if !batch.is_empty() {
        requests.push(ExportLogsServiceRequest { resource_logs: batch }.encode_to_vec());
    }
    let total_events: usize = (0..n).map(|i| if ends(i) { 2 } else { 1 }).sum();
    let requests = Arc::new(requests);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let senders: Vec<_> = (0..2)
        .map(|_| {
            let (requests, next, url) = (requests.clone(), next.clone(), format!("http://{otlp}/v1/logs"));
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::new();
                loop {
                    let index = next.fetch_add(1, Ordering::SeqCst);
                    let Some(body) = requests.get(index) else { break };
                    common::post_protobuf(&client, &url, body.clone(), &format!("request {index}"));
                }
            })
        })
        .collect();
    for sender in senders {
        sender.join().expect("sender");
    }
    let ingest = started.elapsed().as_secs_f64();

    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let api = |params: &[(&str, String)]| -> (Value, f64) {
        let started = Instant::now();
        let response = client.get(format!("http://{http}/api/v1/containers")).query(params).send().expect("GET");
        assert_eq!(response.status(), 200);
        let body: Value = response.json().expect("JSON");
        (body, started.elapsed().as_secs_f64() * 1000.0)
    };
    let (all, _) = api(&[("limit", "1".into())]);
    let stored = all["data"]["total"].as_u64().unwrap_or(0);
    assert_eq!(stored, n, "every instance is in the inventory");

    let mid = (begin_ns + 15 * DAY_NS) / 1_000_000_000;
    let digest = image_id_of(3)[..19].to_string();
    let queries: Vec<(&str, Vec<(&str, String)>)> = vec![
        ("exact image, running now", vec![("image", "nginx:1.25.3".into()), ("status", "running".into())]),
        ("normalised name", vec![("image", "docker.io/library/nginx:1.25.3".into())]),
        ("tag glob over 30 days", vec![("image", "nginx:1.25*".into()), ("since", "30d".into())]),
        ("digest prefix", vec![("image", digest)]),
        ("one node at one instant", vec![("node", "node-7".into()), ("at", mid.to_string())]),
    ];
    println!("## inventory: {n} container instances, {total_events} lifecycle events");
    println!();
    println!(
        "ingest: {ingest:.1} s wall, {:.0} events/s; inventory on disk {:.1} MB",
        total_events as f64 / ingest,
        dir_bytes(&dir.path().join("wake/inventory")) as f64 / 1e6
    );
    println!();
    println!("| query | rows (of matching) | p50 ms | p90 ms |");
    println!("|---|---|---|---|");
    for (name, params) in &queries {
        let (answer, _) = api(params);
        let mut times: Vec<f64> = (0..runs).map(|_| api(params).1).collect();
        times.sort_by(f64::total_cmp);
        let rows = answer["data"]["containers"].as_array().map_or(0, Vec::len);
        let total = answer["data"]["total"].as_u64().unwrap_or(0);
        assert!(total > 0, "{name}: nothing matched");
        println!("| {name} | {rows} ({total}) | {:.1} | {:.1} |", percentile(&times, 0.5), percentile(&times, 0.9));
    }
    let sql = "SELECT namespace, node, count(*) FROM containers WHERE image_name = 'nginx:1.25.3' AND status = 'running' GROUP BY 1, 2";
    let run_sql = || {
        let started = Instant::now();
        let response = client
            .post(format!("http://{http}/api/v1/sql"))
            .json(&serde_json::json!({ "sql": sql }))
            .send()
            .expect("SQL");
        assert_eq!(response.status(), 200);
        let body: Value = response.json().unwrap();
        (body["rows"].as_array().map_or(0, Vec::len), started.elapsed().as_secs_f64() * 1000.0)
    };
    let (groups, _) = run_sql();
    let mut times: Vec<f64> = (0..runs).map(|_| run_sql().1).collect();
    times.sort_by(f64::total_cmp);
    println!(
        "| SQL: running nginx:1.25.3 by namespace and node | {groups} groups | {:.1} | {:.1} |",
        percentile(&times, 0.5),
        percentile(&times, 0.9)
    );
    let rss = common::peak_rss_bytes(&server).unwrap_or(0);
    println!();
    println!(
        "server peak RSS {:.0} MiB ({:.0} MiB over the empty store's {:.0} MiB)",
        rss as f64 / 1048576.0,
        rss.saturating_sub(empty_rss) as f64 / 1048576.0,
        empty_rss as f64 / 1048576.0
    );
    common::terminate(&mut server);
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| entries.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum())
        .unwrap_or(0)
}
