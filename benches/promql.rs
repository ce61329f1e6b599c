//! PromQL range-query latency of Wake against the real Prometheus (Debian's `prometheus`
//! package, 2.42) on the same data, side by side in one run.
//!
//! The data: 10,000 series scraped every 15 s for `WAKE_BENCH_HOURS` (default 24 h: 5,760
//! samples per series, 57.6 M samples), ending on a 5-minute boundary a few minutes before the
//! benchmark starts. Deterministic dashboard metrics:
//!
//! - `http_requests_total` counters: 100 instances (`host-0` … `host-99`), each in one of 5
//!   jobs, × 5 methods × 10 codes = 5,000 series;
//! - `request_duration_seconds` classic histogram: 100 instances × (12 `le` buckets + `_sum` +
//!   `_count`) = 1,400 series;
//! - `node_memory_bytes` gauges: 100 instances × 4 types = 400 series;
//! - `cpu_usage` gauges: 100 instances × 32 CPUs = 3,200 series.
//!
//! Both servers receive the same remote write requests: the series split into 4 shards, one
//! writer per shard (4 requests in flight), each request 20 scrapes × 2,500 series in time
//! order (Prometheus 2.42 refuses out-of-order samples, so a shard's requests go one after
//! the other, and no shard runs more than 4 requests ahead of the slowest). Prometheus is
//! loaded first, then Wake, each timed on its own; then Wake is flushed to Parquet
//! (`POST /api/v1/admin/flush`).
//!
//! Then each query runs as `query_range` over the last 24 h at step 300 s and over the last
//! hour at step 15 s, on Prometheus and Wake alternately: one warm-up each, then
//! `WAKE_BENCH_RUNS` (default 5) timed runs each; median and minimum. The answers must have the
//! same number of series and points (a warning is printed otherwise).
//!
//! `cargo bench --bench promql` (env: WAKE_BENCH_HOURS, default 24; WAKE_BENCH_RUNS, default
//! 5; WAKE_BENCH_DATA_DIR to keep or reuse both servers' data: `<dir>/wake` and
//! `<dir>/prometheus`, reused without loading again when `<dir>/promql-bench.json` exists;
//! WAKE_BENCH_PROMETHEUS, default `prometheus`; WAKE_BENCH_LOAD_ONLY=1 loads Wake alone, waits
//! for its compactions and stops: the backfill measurement, `WAKE_BENCH_HOURS=168` for a week).
//!
//! Wake's peak RSS (`VmHWM`) is printed once its load is acknowledged, once flushed, and once
//! compacted: a remote-write backfill must fit the server's memory bound.

mod common;

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost::Message;
use reqwest::blocking::Client;
use serde_json::Value;
use wake_storage::prompb::{Label, Sample, TimeSeries, WriteRequest};

const SCRAPE_MS: i64 = 15_000;
const BATCH_SCRAPES: i64 = 20;
const SHARDS: usize = 4;
/// How many requests a shard may run ahead of the slowest one (Prometheus's head refuses
/// samples an hour older than its newest).
const MAX_LEAD: usize = 4;
const INSTANCES: usize = 100;
const JOBS: [&str; 5] = ["api", "web", "auth", "billing", "search"];
const METHODS: [&str; 5] = ["GET", "POST", "PUT", "DELETE", "PATCH"];
const CODES: [(&str, f64); 10] = [
    ("200", 20.0),
    ("201", 3.0),
    ("204", 2.0),
    ("301", 0.5),
    ("304", 1.0),
    ("400", 0.4),
    ("401", 0.3),
    ("404", 0.8),
    ("500", 0.1),
    ("503", 0.05),
];
/// Bucket bounds and the share of requests at or below them.
const BUCKETS: [(&str, f64); 12] = [
    ("0.005", 0.02),
    ("0.01", 0.05),
    ("0.025", 0.15),
    ("0.05", 0.35),
    ("0.1", 0.60),
    ("0.25", 0.80),
    ("0.5", 0.90),
    ("1", 0.95),
    ("2.5", 0.98),
    ("5", 0.993),
    ("10", 0.998),
    ("+Inf", 1.0),
];
const MEMORY_TYPES: [&str; 4] = ["used", "free", "cached", "buffers"];
const CPUS: usize = 32;
const SERIES: usize = 10_000;

const QUERIES: [&str; 6] = [
    "sum(rate(http_requests_total[5m]))",
    "sum by (job) (rate(http_requests_total[5m]))",
    r#"rate(http_requests_total{instance="host-17"}[5m])"#,
    "histogram_quantile(0.99, sum by (le) (rate(request_duration_seconds_bucket[5m])))",
    "avg by (instance) (node_memory_bytes)",
    "topk(5, sum by (instance) (rate(http_requests_total[5m])))",
];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Uniform in [0, 1) from a seed.
fn unit(seed: u64) -> f64 {
    (splitmix64(seed) >> 11) as f64 / (1u64 << 53) as f64
}

/// How one series' value moves from scrape to scrape.
#[derive(Clone, Copy)]
enum Kind {
    /// Increments of 0 to 2 × per_second × 15 s.
    Counter {
        per_second: f64,
    },
    /// Cumulative bucket count of an instance's histogram: its share of the instance's requests.
    Bucket {
        instance: usize,
        share: f64,
    },
    HistogramSum {
        instance: usize,
    },
    HistogramCount {
        instance: usize,
    },
    Memory {
        base: f64,
    },
    Cpu,
}

struct SeriesDef {
    labels: Vec<Label>,
    kind: Kind,
}

fn labels(pairs: &[(&str, &str)]) -> Vec<Label> {
    let mut labels: Vec<Label> =
        pairs.iter().map(|(n, v)| Label { name: n.to_string(), value: v.to_string() }).collect();
    labels.sort_by(|a, b| a.name.cmp(&b.name));
    labels
}

fn series_defs() -> Vec<SeriesDef> {
    let mut defs = Vec::with_capacity(SERIES);
    for i in 0..INSTANCES {
        let instance = format!("host-{i}");
        let job = JOBS[i % JOBS.len()];
        for method in METHODS {
            for (code, per_second) in CODES {
                let per_second = if method == "GET" { per_second } else { per_second / 4.0 };
                defs.push(SeriesDef {
                    labels: labels(&[
                        ("__name__", "http_requests_total"),
                        ("job", job),
                        ("instance", &instance),
                        ("method", method),
                        ("code", code),
                    ]),
                    kind: Kind::Counter { per_second },
                });
            }
        }
    }
    for i in 0..INSTANCES {
        let instance = format!("host-{i}");
        let job = JOBS[i % JOBS.len()];
        for (le, share) in BUCKETS {
            defs.push(SeriesDef {
                labels: labels(&[
                    ("__name__", "request_duration_seconds_bucket"),
                    ("job", job),
                    ("instance", &instance),
                    ("le", le),
                ]),
                kind: Kind::Bucket { instance: i, share },
            });
        }
        let common = [("job", job), ("instance", instance.as_str())];
        let mut sum = vec![("__name__", "request_duration_seconds_sum")];
        sum.extend(common);
        defs.push(SeriesDef { labels: labels(&sum), kind: Kind::HistogramSum { instance: i } });
        let mut count = vec![("__name__", "request_duration_seconds_count")];
        count.extend(common);
        defs.push(SeriesDef { labels: labels(&count), kind: Kind::HistogramCount { instance: i } });
    }
    for i in 0..INSTANCES {
        let instance = format!("host-{i}");
        for (t, kind) in MEMORY_TYPES.iter().enumerate() {
            defs.push(SeriesDef {
                labels: labels(&[
                    ("__name__", "node_memory_bytes"),
                    ("job", "node"),
                    ("instance", &instance),
                    ("type", kind),
                ]),
                kind: Kind::Memory { base: (2 + t * 3) as f64 * 1e9 + i as f64 * 1e7 },
            });
        }
    }
    for i in 0..INSTANCES {
        let instance = format!("host-{i}");
        for cpu in 0..CPUS {
            defs.push(SeriesDef {
                labels: labels(&[
                    ("__name__", "cpu_usage"),
                    ("job", "node"),
                    ("instance", &instance),
                    ("cpu", &cpu.to_string()),
                ]),
                kind: Kind::Cpu,
            });
        }
    }
    assert_eq!(defs.len(), SERIES);
    defs
}

/// Requests an instance's histogram observed in scrape interval `step`.
fn histogram_requests(instance: usize, step: u64) -> f64 {
    (unit((instance as u64) << 32 | step) * 300.0).floor()
}

/// The remote write bodies of one shard, in time order: `scrapes` scrapes ending at `end_ms`.
fn shard_bodies(defs: &[SeriesDef], shard: usize, scrapes: i64, end_ms: i64) -> Vec<Vec<u8>> {
    let first_ms = end_ms - (scrapes - 1) * SCRAPE_MS;
    let mine: Vec<(usize, &SeriesDef)> = defs.iter().enumerate().filter(|(i, _)| i % SHARDS == shard).collect();
    let mut state: Vec<f64> = mine.iter().map(|(i, _)| (splitmix64(*i as u64) % 1000) as f64).collect();
    for (value, (_, def)) in state.iter_mut().zip(&mine) {
        if !matches!(def.kind, Kind::Counter { .. }) {
            *value = 0.0;
        }
    }
    let mut bodies = Vec::new();
    let mut step = 0i64;
    while step < scrapes {
        let steps = step..(step + BATCH_SCRAPES).min(scrapes);
        let timeseries = mine
            .iter()
            .zip(state.iter_mut())
            .map(|((index, def), value)| {
                let samples = steps
                    .clone()
                    .map(|s| {
                        let seed = (*index as u64) << 32 | s as u64;
                        let timestamp = first_ms + s * SCRAPE_MS;
                        let v = match def.kind {
                            Kind::Counter { per_second } => {
                                *value += (per_second * 15.0 * 2.0 * unit(seed)).floor();
                                *value
                            }
                            Kind::Bucket { instance, share } => {
                                *value += (histogram_requests(instance, s as u64) * share).floor();
                                *value
                            }
                            Kind::HistogramCount { instance } => {
                                *value += histogram_requests(instance, s as u64);
                                *value
                            }
                            Kind::HistogramSum { instance } => {
                                *value += histogram_requests(instance, s as u64) * (0.05 + 0.1 * unit(seed));
                                *value
                            }
                            Kind::Memory { base } => {
                                let phase = s as f64 / 240.0 + *index as f64;
                                (base * (1.0 + 0.2 * phase.sin()) + unit(seed) * 1e8).round()
                            }
                            Kind::Cpu => {
                                let phase = s as f64 / 480.0 + *index as f64 / 7.0;
                                ((0.4 + 0.3 * phase.sin() + 0.2 * unit(seed)) * 1e4).round() / 1e4
                            }
                        };
                        Sample { value: v, timestamp }
                    })
                    .collect();
                TimeSeries { labels: def.labels.clone(), samples }
            })
            .collect();
        let request = WriteRequest { timeseries, metadata: Vec::new() };
        bodies.push(snap::raw::Encoder::new().compress_vec(&request.encode_to_vec()).expect("snappy"));
        step += BATCH_SCRAPES;
    }
    bodies
}

/// Sends every shard's bodies to `url`, one writer per shard; returns the refused requests.
fn load(client: &Client, url: &str, shards: &[Vec<Vec<u8>>]) -> Vec<String> {
    let done: Vec<AtomicUsize> = shards.iter().map(|_| AtomicUsize::new(0)).collect();
    let problems = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for (shard, bodies) in shards.iter().enumerate() {
            let (done, problems) = (&done, &problems);
            scope.spawn(move || {
                for (b, body) in bodies.iter().enumerate() {
                    while done.iter().map(|d| d.load(Ordering::Acquire)).min().unwrap_or(0) + MAX_LEAD < b {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    loop {
                        let response = client
                            .post(url)
                            .header("Content-Encoding", "snappy")
                            .header("Content-Type", "application/x-protobuf")
                            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
                            .body(body.clone())
                            .send()
                            .expect("remote write");
                        let status = response.status().as_u16();
                        match status {
                            200..=299 => break,
                            429 | 503 => std::thread::sleep(Duration::from_millis(200)),
                            _ => {
                                let text = response.text().unwrap_or_default();
                                problems.lock().unwrap().push(format!(
                                    "shard {shard} request {b}: HTTP {status}: {}",
                                    text.chars().take(200).collect::<String>()
                                ));
                                break;
                            }
                        }
                    }
                    done[shard].store(b + 1, Ordering::Release);
                }
            });
        }
    });
    problems.into_inner().unwrap()
}

fn dir_size(path: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries
        .filter_map(Result::ok)
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn start_prometheus(dir: &Path) -> (Child, String) {
    let binary = std::env::var("WAKE_BENCH_PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
    std::fs::create_dir_all(dir).expect("Prometheus dir");
    let config = dir.join("prometheus.yml");
    std::fs::write(&config, "global: {}\nscrape_configs: []\n").expect("prometheus.yml");
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
    let addr = format!("127.0.0.1:{port}");
    let log = File::create(dir.join("prometheus.log")).expect("log");
    let mut child = Command::new(&binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
        .arg("--storage.tsdb.retention.time=30d")
        .arg(format!("--web.listen-address={addr}"))
        .arg("--web.enable-remote-write-receiver")
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {binary}: {e}"));
    wait_ready(&mut child, &addr);
    (child, addr)
}

fn wait_ready(child: &mut Child, addr: &str) {
    let probe = Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        if let Some(status) = child.try_wait().expect("polling Prometheus") {
            panic!("Prometheus exited: {status}");
        }
        if probe.get(format!("http://{addr}/-/ready")).send().is_ok_and(|r| r.status().is_success()) {
            return;
        }
        assert!(Instant::now() < deadline, "Prometheus not ready after 15 minutes");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn print_peak_rss(wake: &Child, after: &str) {
    match common::peak_rss_bytes(wake) {
        Some(bytes) => println!("Wake peak RSS once {after}: {:.0} MiB", bytes as f64 / (1024.0 * 1024.0)),
        None => println!("Wake peak RSS once {after}: unknown"),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// (series, points) of a query_range answer; panics on an error answer.
fn shape(answer: &Value, who: &str, query: &str) -> (usize, usize) {
    assert_eq!(answer["status"], "success", "{who} failed on {query}: {answer}");
    let result = answer["data"]["result"].as_array().expect("result");
    (result.len(), result.iter().map(|s| s["values"].as_array().map_or(0, Vec::len)).sum())
}

/// How many compactions Wake has finished, from its `/metrics`.
fn compactions(client: &Client, wake_addr: &str) -> u64 {
    let text = client.get(format!("http://{wake_addr}/metrics")).send().and_then(|r| r.text()).unwrap_or_default();
    text.lines()
        .find_map(|line| line.strip_prefix("wake_server_compaction_duration_seconds_count "))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until Wake's background compaction (every 10 s) has merged the flushed files, so that
/// no timed query runs beside a compaction or meets files it has not seen yet. Hours with few
/// files are merged once they have settled (no new file for a minute, the default
/// `compaction_settle_secs`), so the wait lasts at least that long after the last flush.
fn wait_for_compaction(client: &Client, wake_addr: &str) {
    let started = Instant::now();
    let (mut count, mut unchanged_since) = (compactions(client, wake_addr), Instant::now());
    // A merge of files up to the 64 MB target takes tens of seconds and is counted when done.
    while unchanged_since.elapsed() < Duration::from_secs(60) || started.elapsed() < Duration::from_secs(90) {
        std::thread::sleep(Duration::from_secs(5));
        let now = compactions(client, wake_addr);
        if now != count {
            (count, unchanged_since) = (now, Instant::now());
        }
    }
    println!("Wake: compaction settled after {:.0} s ({count} compactions)", started.elapsed().as_secs_f64());
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("promql: benchmark");
        return;
    }
    let hours = env_u64("WAKE_BENCH_HOURS", 24) as i64;
    let load_only = env_u64("WAKE_BENCH_LOAD_ONLY", 0) == 1;
    let runs = env_u64("WAKE_BENCH_RUNS", 5) as usize;
    let temporary = tempfile::tempdir().expect("tempdir");
    let root = std::env::var_os("WAKE_BENCH_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| temporary.path().into());
    std::fs::create_dir_all(&root).expect("data dir");
    let meta_path = root.join("promql-bench.json");
    let (wake_dir, prometheus_dir) = (root.join("wake"), root.join("prometheus"));
    let meta: Option<Value> = std::fs::read(&meta_path).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let client = Client::builder().timeout(Duration::from_secs(1800)).build().expect("client");

    let mut prometheus = (!load_only).then(|| start_prometheus(&prometheus_dir));
    let (mut wake, _otlp, wake_addr) = common::start_server(&wake_dir);

    let (end_ms, hours) = if let Some(meta) = &meta {
        let (end_ms, hours) = (meta["end_ms"].as_i64().expect("end_ms"), meta["hours"].as_i64().expect("hours"));
        println!("reusing the data in {} ({hours} h ending at {end_ms}); loaded earlier: {meta}", root.display());
        (end_ms, hours)
    } else {
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as i64;
        let end_ms = now_ms / 300_000 * 300_000 - 300_000;
        let scrapes = hours * 3600 * 1000 / SCRAPE_MS;
        let started = Instant::now();
        let defs = series_defs();
        let shards: Vec<Vec<Vec<u8>>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..SHARDS)
                .map(|s| {
                    scope.spawn({
                        let defs = &defs;
                        move || shard_bodies(defs, s, scrapes, end_ms)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("generator")).collect()
        });
        let requests: usize = shards.iter().map(Vec::len).sum();
        let bytes: usize = shards.iter().flatten().map(Vec::len).sum();
        let samples = SERIES as i64 * scrapes;
        println!(
            "generated {SERIES} series × {scrapes} scrapes = {samples} samples ({hours} h ending at {end_ms}) as \
             {requests} requests, {:.0} MB snappy, in {:.1} s",
            bytes as f64 / 1e6,
            started.elapsed().as_secs_f64()
        );

        let mut prometheus_load = None;
        if let Some((_, prometheus_addr)) = &prometheus {
            let started = Instant::now();
            let problems = load(&client, &format!("http://{prometheus_addr}/api/v1/write"), &shards);
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "Prometheus: loaded in {seconds:.1} s ({:.0} samples/s), {} refused requests",
                samples as f64 / seconds,
                problems.len()
            );
            for problem in problems.iter().take(5) {
                println!("  WARNING Prometheus refused {problem}");
            }
            prometheus_load = Some(seconds);
        }

        let started = Instant::now();
        let problems = load(&client, &format!("http://{wake_addr}/api/v1/write"), &shards);
        let acknowledged = started.elapsed().as_secs_f64();
        print_peak_rss(&wake, "load acknowledged");
        let flush = client.post(format!("http://{wake_addr}/api/v1/admin/flush")).send().expect("flush");
        assert!(flush.status().is_success(), "flush: {:?}", flush.text());
        let wake_load = started.elapsed().as_secs_f64();
        println!(
            "Wake: loaded in {wake_load:.1} s ({:.0} samples/s; acknowledged after {acknowledged:.1} s, then \
             flushed), {} refused requests",
            samples as f64 / wake_load,
            problems.len()
        );
        for problem in problems.iter().take(5) {
            println!("  WARNING Wake refused {problem}");
        }
        print_peak_rss(&wake, "flushed");
        drop(shards);
        let meta = serde_json::json!({
            "end_ms": end_ms,
            "hours": hours,
            "samples": samples,
            "prometheus_load_s": prometheus_load,
            "wake_load_s": wake_load,
        });
        std::fs::write(&meta_path, meta.to_string()).expect("writing promql-bench.json");
        (end_ms, hours)
    };
    wait_for_compaction(&client, &wake_addr);
    print_peak_rss(&wake, "compacted");
    let Some((mut prometheus, prometheus_addr)) = prometheus.take() else {
        println!("Wake on disk: {:.0} MB ({SERIES} series, {hours} h at 15 s)", dir_size(&wake_dir) as f64 / 1e6);
        common::terminate(&mut wake);
        return;
    };
    println!(
        "on disk: Prometheus {:.0} MB, Wake {:.0} MB ({SERIES} series, {hours} h at 15 s)",
        dir_size(&prometheus_dir.join("data")) as f64 / 1e6,
        dir_size(&wake_dir) as f64 / 1e6
    );

    let query = |addr: &str, expr: &str, start_ms: i64, step: &str| -> Value {
        let (start, end) = ((start_ms / 1000).to_string(), (end_ms / 1000).to_string());
        let params = [("query", expr), ("start", start.as_str()), ("end", end.as_str()), ("step", step)];
        let url = reqwest::Url::parse_with_params(&format!("http://{addr}/api/v1/query_range"), &params).expect("URL");
        client.get(url).send().and_then(|r| r.json()).expect("query_range")
    };
    let ranges = [("24 h", 24 * 3_600_000, "300"), ("1 h", 3_600_000, "15")];
    let mut table = Vec::new();
    for expr in QUERIES {
        for (range, range_ms, step) in ranges {
            let start_ms = end_ms - range_ms;
            let p_answer = query(&prometheus_addr, expr, start_ms, step);
            let w_answer = query(&wake_addr, expr, start_ms, step);
            let (p_shape, w_shape) = (shape(&p_answer, "Prometheus", expr), shape(&w_answer, "Wake", expr));
            if p_shape != w_shape {
                println!(
                    "WARNING {expr} over {range}: Prometheus {} series / {} points, Wake {} series / {} points",
                    p_shape.0, p_shape.1, w_shape.0, w_shape.1
                );
            }
            let (mut p_times, mut w_times) = (Vec::new(), Vec::new());
            for _ in 0..runs {
                let started = Instant::now();
                shape(&query(&prometheus_addr, expr, start_ms, step), "Prometheus", expr);
                p_times.push(started.elapsed());
                let started = Instant::now();
                shape(&query(&wake_addr, expr, start_ms, step), "Wake", expr);
                w_times.push(started.elapsed());
            }
            p_times.sort();
            w_times.sort();
            let (p_med, w_med) = (p_times[p_times.len() / 2], w_times[w_times.len() / 2]);
            println!(
                "{expr} over {range} (step {step} s; {} series, {} points): Prometheus {:.1} ms (min {:.1}), Wake \
                 {:.1} ms (min {:.1})",
                p_shape.0,
                p_shape.1,
                ms(p_med),
                ms(p_times[0]),
                ms(w_med),
                ms(w_times[0])
            );
            table.push((expr, range, step, p_shape, w_shape, p_med, p_times[0], w_med, w_times[0]));
        }
    }
    println!("\n| query | range, step | series / points | Prometheus ms (min) | Wake ms (min) | Wake / Prometheus |");
    println!("|---|---|---|---|---|---|");
    for (expr, range, step, p_shape, w_shape, p_med, p_min, w_med, w_min) in table {
        let same = if p_shape == w_shape { String::new() } else { format!(" (Wake: {} / {})", w_shape.0, w_shape.1) };
        println!(
            "| `{}` | {range}, {step} s | {} / {}{same} | {:.1} ({:.1}) | {:.1} ({:.1}) | {:.1}× |",
            expr.replace('|', "\\|"),
            p_shape.0,
            p_shape.1,
            ms(p_med),
            ms(p_min),
            ms(w_med),
            ms(w_min),
            ms(w_med) / ms(p_med)
        );
    }
    common::terminate(&mut wake);
    common::terminate(&mut prometheus);
}
