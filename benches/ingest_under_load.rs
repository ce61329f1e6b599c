//! Ingest while heavy queries run (issue "A server no client can break"): the same OTLP/HTTP
//! acknowledgement latencies and ingest rate, measured idle and then while query clients keep
//! the query APIs busy, side by side in one run against one real `wake server`.
//!
//! 1. Loads WAKE_BENCH_ROWS rows of the benchmark corpus (default 1,000,000) and flushes them,
//!    so that the queries have real files to scan.
//! 2. Idle: WAKE_BENCH_ACKS single-record requests one after another (default 300), their
//!    latency each; then WAKE_BENCH_LOAD_ROWS more corpus rows (default 300,000) from 2 clients,
//!    for the ingest rate.
//! 3. Loaded: the same, while WAKE_BENCH_QUERY_CLIENTS threads (default 4, twice the cores
//!    here) run heavy SQL, LogQL and PromQL in a loop (full scans with regular expressions,
//!    group-bys over every row, a cross join cut by the result cap).
//!
//! `cargo bench --bench ingest_under_load`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::logs::v1::LogRecord;
use prost::Message;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Latencies of `count` one-record requests sent one after another, sorted.
fn ack_latencies(otlp_addr: &str, count: u64) -> Vec<Duration> {
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let url = format!("http://{otlp_addr}/v1/logs");
    let mut latencies: Vec<Duration> = (0..count)
        .map(|i| {
            let record = LogRecord {
                time_unix_nano: (common::START_NS + 1) as u64,
                body: Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                    value: Some(opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(format!(
                        "latency probe {i}"
                    ))),
                }),
                ..Default::default()
            };
            let request = opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest {
                resource_logs: vec![opentelemetry_proto::tonic::logs::v1::ResourceLogs {
                    scope_logs: vec![opentelemetry_proto::tonic::logs::v1::ScopeLogs {
                        log_records: vec![record],
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
            };
            let body = request.encode_to_vec();
            let started = Instant::now();
            let response =
                client.post(&url).header("content-type", "application/x-protobuf").body(body).send().expect("ack");
            let elapsed = started.elapsed();
            let status = response.status();
            assert_eq!(status, 200, "{}", response.text().unwrap_or_default());
            elapsed
        })
        .collect();
    latencies.sort();
    latencies
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * q).round() as usize]
}

/// Heavy queries of every API, one after another until `stop`; counts answers by status.
fn query_loop(http_addr: String, stop: Arc<AtomicBool>, answered: Arc<AtomicU64>, shed: Arc<AtomicU64>, seed: u64) {
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(180)).build().unwrap();
    let sql = [
        "SELECT k8s_pod_name, count(*), sum(length(body)) FROM logs GROUP BY 1 ORDER BY 2 DESC",
        "SELECT count(*) FROM logs WHERE regexp_like(body, '(err|fail)[a-z]*.*[0-9]{6}')",
        "SELECT * FROM logs a, logs b",
        "SELECT k8s_namespace_name, approx_distinct(body) FROM logs GROUP BY 1",
    ];
    let logql = r#"sum by (k8s_pod_name) (count_over_time({k8s_namespace_name=~"ns-.*"} |~ "[0-9]{6}.*error" [5m]))"#;
    let mut k = seed;
    while !stop.load(Ordering::Relaxed) {
        let response = match k % 3 {
            0 | 1 => client
                .post(format!("http://{http_addr}/api/v1/sql"))
                .json(&serde_json::json!({ "sql": sql[(k / 3) as usize % sql.len()] }))
                .send(),
            _ => client
                .get(format!("http://{http_addr}/loki/api/v1/query_range"))
                .query(&[
                    ("query", logql),
                    ("start", &(common::START_NS).to_string()),
                    ("end", &(common::START_NS + 3_600_000_000_000 * 3).to_string()),
                    ("step", "60s"),
                ])
                .send(),
        };
        match response.map(|r| r.status().as_u16()) {
            Ok(429) => {
                shed.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(100));
            }
            Ok(_) => {
                answered.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => {}
        }
        k += 1;
    }
}

struct Phase {
    p50: Duration,
    p99: Duration,
    max: Duration,
    rows_per_s: f64,
    mb_per_s: f64,
}

fn measure(corpus: &Arc<common::Corpus>, otlp_addr: &str, acks: u64, first_row: u64, rows: u64) -> Phase {
    let latencies = ack_latencies(otlp_addr, acks);
    let started = Instant::now();
    let raw = common::send_from(corpus, otlp_addr, first_row, rows, 2, 4096);
    let elapsed = started.elapsed().as_secs_f64();
    Phase {
        p50: quantile(&latencies, 0.5),
        p99: quantile(&latencies, 0.99),
        max: *latencies.last().expect("latencies"),
        rows_per_s: rows as f64 / elapsed,
        mb_per_s: raw as f64 / 1e6 / elapsed,
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("ingest_under_load: benchmark");
        return;
    }
    let rows = env_u64("WAKE_BENCH_ROWS", 1_000_000);
    let acks = env_u64("WAKE_BENCH_ACKS", 300);
    let load_rows = env_u64("WAKE_BENCH_LOAD_ROWS", 300_000);
    let query_clients = env_u64("WAKE_BENCH_QUERY_CLIENTS", 4);
    let temporary = tempfile::tempdir().expect("tempdir");
    let corpus = Arc::new(common::Corpus::load());
    let (mut server, otlp_addr, http_addr) = common::start_server(&temporary.path().join("data"));
    common::send(&corpus, &otlp_addr, rows, 4, 4096);
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(600)).build().unwrap();
    let flush = client.post(format!("http://{http_addr}/api/v1/admin/flush")).send().expect("flush");
    assert!(flush.status().is_success());

    let idle = measure(&corpus, &otlp_addr, acks, rows, load_rows);

    let stop = Arc::new(AtomicBool::new(false));
    let (answered, shed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let queries: Vec<_> = (0..query_clients)
        .map(|k| {
            let (http_addr, stop, answered, shed) = (http_addr.clone(), stop.clone(), answered.clone(), shed.clone());
            std::thread::spawn(move || query_loop(http_addr, stop, answered, shed, k))
        })
        .collect();
    // Let the queries get going before measuring.
    std::thread::sleep(Duration::from_secs(3));
    let loaded = measure(&corpus, &otlp_addr, acks, rows + load_rows, load_rows);
    stop.store(true, Ordering::Relaxed);
    for query in queries {
        let _ = query.join();
    }

    println!("ingest under query load: {rows} rows stored first, {query_clients} query clients");
    println!("| | ack p50 ms | ack p99 ms | ack max ms | ingest rows/s | ingest MB/s |");
    println!("|---|---|---|---|---|---|");
    for (name, phase) in [("idle", &idle), ("heavy queries", &loaded)] {
        println!(
            "| {name} | {:.2} | {:.2} | {:.1} | {:.0} | {:.1} |",
            phase.p50.as_secs_f64() * 1e3,
            phase.p99.as_secs_f64() * 1e3,
            phase.max.as_secs_f64() * 1e3,
            phase.rows_per_s,
            phase.mb_per_s
        );
    }
    println!(
        "ratio loaded/idle: ack p99 {:.2}x, ingest rate {:.2}x; queries answered {}, shed with 429 {}",
        loaded.p99.as_secs_f64() / idle.p99.as_secs_f64(),
        loaded.rows_per_s / idle.rows_per_s,
        answered.load(Ordering::Relaxed),
        shed.load(Ordering::Relaxed)
    );
    common::terminate(&mut server);
}
