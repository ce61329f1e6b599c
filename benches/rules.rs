//! The ruler under load: 1,000 rules (half PromQL, half LogQL) at a 15 s interval over the
//! benchmark data set, on a release `wake server`.
//!
//! The data: the first `WAKE_BENCH_ROWS` (default 2,000,000: 4.8 h) rows of the benchmark log
//! corpus (benches/common: Loghub lines over 100 containers in 10 namespaces), and, over the
//! same hours, container metrics for the same 100 containers every 15 s by remote write
//! (`container_cpu_usage_seconds_total` counters, `container_memory_working_set_bytes` and
//! `container_spec_memory_limit_bytes` gauges). The corpus has a fixed clock in the past, so
//! the ruler's `query_offset` puts its evaluations 4 h into the data: every `[5m]` window holds
//! about 35,000 log lines.
//!
//! The rules: 50 groups of 20 at 15 s. PromQL groups hold alerting and recording rules over the
//! metrics (rates, ratios to limits, aggregations by namespace and pod, each with its own
//! threshold or namespace); LogQL groups hold `count_over_time` and `rate` over line filters by
//! namespace and pod, as Loki's ruler runs them.
//!
//! Measured for `WAKE_BENCH_SECS` (default 300) after a warm-up of two intervals: the server's
//! CPU time over wall time (share of one core), every group evaluation's duration (from
//! `/api/v1/rules`, polled each second: each new `lastEvaluation` is one evaluation) as p50,
//! p99 and max, rule evaluation failures and missed iterations (`/metrics`).
//!
//! `cargo bench --bench rules` (env: WAKE_BENCH_ROWS, WAKE_BENCH_SECS, WAKE_BENCH_GROUPS of 20
//! rules, default 50; WAKE_LOGHUB_DIR).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Child;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{CONTAINERS, Corpus, START_NS, STEP_NS};
use prost::Message;
use reqwest::blocking::Client;
use serde_json::Value;
use wake_storage::prompb::{Label, Sample, TimeSeries, WriteRequest};

const INTERVAL_S: u64 = 15;
const RULES_PER_GROUP: usize = 20;
const NAMESPACES: u64 = 10;
const WORDS: [&str; 5] = ["error", "exception", "failed", "timeout", "WARN"];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// `groups` groups of 20 rules, PromQL and LogQL in turn, alternating alerting and recording rules.
fn rule_file(groups: usize) -> String {
    let mut text = String::from("groups:\n");
    for g in 0..groups {
        let logql = g % 2 == 1;
        text.push_str(&format!("  - name: group-{g}\n    interval: {INTERVAL_S}s\n"));
        if logql {
            text.push_str("    lang: logql\n");
        }
        text.push_str("    rules:\n");
        for r in 0..RULES_PER_GROUP {
            let n = g * RULES_PER_GROUP + r;
            let namespace = format!("ns-{}", n as u64 % NAMESPACES);
            let expr = if logql {
                let word = WORDS[n % WORDS.len()];
                match r % 4 {
                    0 => format!(
                        "sum by (k8s_pod_name) (count_over_time({{k8s_namespace_name=\"{namespace}\"}} |= \"{word}\" [5m])) > {}",
                        n % 7
                    ),
                    1 => format!("sum(rate({{k8s_namespace_name=\"{namespace}\"}} [5m]))"),
                    2 => format!(
                        "sum by (k8s_namespace_name) (count_over_time({{k8s_namespace_name=~\"ns-.*\"}} |~ \"(?i){word}\" [5m])) > {}",
                        n * 3
                    ),
                    _ => format!(
                        "count_over_time({{k8s_namespace_name=\"{namespace}\", k8s_pod_name=\"pod-{}\"}} [5m])",
                        n as u64 % CONTAINERS
                    ),
                }
            } else {
                match r % 4 {
                    0 => format!(
                        "sum by (pod) (rate(container_cpu_usage_seconds_total{{namespace=\"{namespace}\"}}[5m])) > 0.{}",
                        n % 9
                    ),
                    1 => format!(
                        "container_memory_working_set_bytes{{namespace=\"{namespace}\"}} / container_spec_memory_limit_bytes > 0.{}",
                        5 + n % 5
                    ),
                    2 => "sum by (namespace) (rate(container_cpu_usage_seconds_total[5m]))".to_string(),
                    _ => {
                        format!("max by (namespace) (container_memory_working_set_bytes{{namespace=\"{namespace}\"}})")
                    }
                }
            };
            let expr = expr.replace('\'', "''");
            if r % 2 == 0 {
                text.push_str(&format!("      - alert: Rule{n}\n        expr: '{expr}'\n        for: 1m\n"));
                text.push_str("        annotations:\n          summary: '{{ $labels }} at {{ humanize $value }}'\n");
            } else {
                text.push_str(&format!("      - record: bench:rule{n}\n        expr: '{expr}'\n"));
            }
        }
    }
    text
}

fn label(name: &str, value: &str) -> Label {
    Label { name: name.to_string(), value: value.to_string() }
}

/// Container metrics for `0..hours`, every 15 s, by remote write in requests of 40 scrapes.
fn send_metrics(client: &Client, http: &str, rows: u64) {
    let end_ms = (START_NS + rows as i64 * STEP_NS) / 1_000_000;
    let start_ms = START_NS / 1_000_000;
    let scrape_ms = 15_000;
    let mut t = start_ms;
    while t < end_ms {
        let mut timeseries = Vec::new();
        for c in 0..CONTAINERS {
            let (namespace, pod) = (format!("ns-{}", c % NAMESPACES), format!("pod-{c}"));
            let identity = |name: &str| {
                vec![
                    label("__name__", name),
                    label("namespace", &namespace),
                    label("pod", &pod),
                    label("container", "app"),
                ]
            };
            let times: Vec<i64> = (0..40).map(|k| t + k * scrape_ms).filter(|&t| t < end_ms).collect();
            let cpu = |t: i64| (t - start_ms) as f64 / 1000.0 * (0.05 + (c % 10) as f64 * 0.05);
            let memory = |t: i64| 100e6 + ((t / scrape_ms) % 50) as f64 * 1e6 + c as f64 * 1e6;
            for (name, value) in [
                ("container_cpu_usage_seconds_total", &cpu as &dyn Fn(i64) -> f64),
                ("container_memory_working_set_bytes", &memory),
                ("container_spec_memory_limit_bytes", &|_| 256e6),
            ] {
                timeseries.push(TimeSeries {
                    labels: identity(name),
                    samples: times.iter().map(|&t| Sample { value: value(t), timestamp: t }).collect(),
                });
            }
        }
        let body = snap::raw::Encoder::new()
            .compress_vec(&WriteRequest { timeseries, ..Default::default() }.encode_to_vec())
            .expect("snappy");
        loop {
            let response = client
                .post(format!("http://{http}/api/v1/write"))
                .header("content-type", "application/x-protobuf")
                .header("content-encoding", "snappy")
                .body(body.clone())
                .send()
                .expect("remote write");
            match response.status().as_u16() {
                204 => break,
                503 | 429 => std::thread::sleep(Duration::from_millis(200)),
                other => panic!("remote write: HTTP {other}: {:?}", response.text()),
            }
        }
        t += 40 * scrape_ms;
    }
}

/// The server, its OTLP/HTTP and its query address.
fn start_server(dir: &Path, offset_s: u64, groups: usize) -> (Child, String, String) {
    let rules = dir.join("rules.yml");
    std::fs::write(&rules, rule_file(groups)).expect("writing the rules");
    let config = dir.join("wake.yml");
    std::fs::write(
        &config,
        format!(
            "rule_files: [{:?}]\nruler:\n  evaluation_interval: {INTERVAL_S}s\n  query_offset: {offset_s}s\n",
            rules.display().to_string()
        ),
    )
    .expect("writing the config");
    common::start_server_with(&dir.join("data"), &["--config".as_ref(), config.as_os_str()])
}

fn metric_sum(client: &Client, http: &str, name: &str) -> f64 {
    let text = client.get(format!("http://{http}/metrics")).send().and_then(|r| r.text()).unwrap_or_default();
    text.lines()
        .filter(|line| line.starts_with(name) && line[name.len()..].starts_with(['{', ' ']))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn main() {
    let rows = env_u64("WAKE_BENCH_ROWS", 2_000_000);
    let seconds = env_u64("WAKE_BENCH_SECS", 300);
    let groups = env_u64("WAKE_BENCH_GROUPS", 50) as usize;
    let dir = tempfile::tempdir().expect("a temporary directory");
    // Evaluations 4 h into the data (or at its end when there is less).
    let now_s = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs();
    let target_s = (START_NS + (rows as i64 * STEP_NS).min(4 * 3_600 * 1_000_000_000)) / 1_000_000_000;
    let offset_s = now_s - target_s as u64;
    let (mut server, otlp, http) = start_server(dir.path(), offset_s, groups);
    let client = Client::builder().timeout(Duration::from_secs(120)).build().expect("HTTP client");

    println!("loading {rows} log rows and their container metrics...");
    let corpus = Arc::new(Corpus::load());
    let load_started = Instant::now();
    common::send(&corpus, &otlp, rows, 2, 5_000);
    send_metrics(&client, &http, rows);
    client.post(format!("http://{http}/api/v1/admin/flush")).send().expect("flush");
    println!("loaded in {:.0} s", load_started.elapsed().as_secs_f64());

    // Warm-up: two intervals, so that every group ran and the file caches are filled.
    std::thread::sleep(Duration::from_secs(2 * INTERVAL_S));
    let failures_before = metric_sum(&client, &http, "wake_server_rule_evaluation_failures_total");
    let missed_before = metric_sum(&client, &http, "wake_server_rule_group_iterations_missed_total");
    let evaluations_before = metric_sum(&client, &http, "wake_server_rule_evaluations_total");
    let cpu_before = common::cpu_seconds(server.id());
    let started = Instant::now();
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    let mut durations = Vec::new();
    let mut by_lang: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut errors: BTreeMap<String, String> = BTreeMap::new();
    while started.elapsed() < Duration::from_secs(seconds) {
        let poll = Instant::now();
        // PromQL groups at the Prometheus API, LogQL groups at Loki's.
        let bodies: Vec<Value> = ["/api/v1/rules", "/prometheus/api/v1/rules"]
            .iter()
            .filter_map(|path| client.get(format!("http://{http}{path}")).send().and_then(|r| r.json::<Value>()).ok())
            .collect();
        for body in &bodies {
            for group in body["data"]["groups"].as_array().into_iter().flatten() {
                let name = group["name"].as_str().unwrap_or_default().to_string();
                let at = group["lastEvaluation"].as_str().unwrap_or_default().to_string();
                if last.get(&name) != Some(&at) {
                    if last.contains_key(&name) {
                        let seconds = group["evaluationTime"].as_f64().unwrap_or(f64::NAN);
                        durations.push(seconds);
                        let lang = if group["rules"][0]["query"].as_str().is_some_and(|q| q.contains("k8s_")) {
                            "LogQL"
                        } else {
                            "PromQL"
                        };
                        by_lang.entry(lang).or_default().push(seconds);
                    }
                    last.insert(name, at);
                }
                for rule in group["rules"].as_array().into_iter().flatten() {
                    if let Some(error) = rule["lastError"].as_str().filter(|e| !e.is_empty()) {
                        errors.insert(rule["name"].as_str().unwrap_or_default().to_string(), error.to_string());
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_secs(1).saturating_sub(poll.elapsed()));
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = common::cpu_seconds(server.id()) - cpu_before;
    let evaluations = metric_sum(&client, &http, "wake_server_rule_evaluations_total") - evaluations_before;
    let failures = metric_sum(&client, &http, "wake_server_rule_evaluation_failures_total") - failures_before;
    let missed = metric_sum(&client, &http, "wake_server_rule_group_iterations_missed_total") - missed_before;
    durations.sort_by(f64::total_cmp);
    println!(
        "\n{} rules ({} PromQL, {} LogQL) at {INTERVAL_S} s over {rows} log rows, {wall:.0} s measured:",
        groups * RULES_PER_GROUP,
        groups.div_ceil(2) * RULES_PER_GROUP,
        groups / 2 * RULES_PER_GROUP
    );
    println!("  server CPU: {:.1} % of one core ({cpu:.1} CPU-s)", 100.0 * cpu / wall);
    println!(
        "  group evaluations: {} seen; duration p50 {:.3} s, p99 {:.3} s, max {:.3} s",
        durations.len(),
        percentile(&durations, 0.5),
        percentile(&durations, 0.99),
        durations.last().copied().unwrap_or(f64::NAN)
    );
    for (lang, mut seconds) in by_lang {
        seconds.sort_by(f64::total_cmp);
        println!(
            "  {lang} groups ({RULES_PER_GROUP} rules each): p50 {:.3} s, p99 {:.3} s",
            percentile(&seconds, 0.5),
            percentile(&seconds, 0.99)
        );
    }
    println!("  rule evaluations: {evaluations:.0}, failed {failures:.0}; missed group iterations: {missed:.0}");
    for (rule, error) in errors.iter().take(5) {
        println!("  error of {rule}: {error}");
    }
    common::terminate(&mut server);
}
