//! Needle search benchmark (issue "Troubleshooting logs"): the benchmark corpus (10 million
//! lines over 24 h from 100 containers by default) ingested through OTLP into a real `wake
//! server`, then the corpus's rare request id searched over the whole range, warm:
//!
//! - LogQL through the Loki API: `{k8s_namespace_name=~".+"} |= "req-7f3a9c1e5b"`;
//! - SQL: `matches(body, 'req-7f3a9c1e5b')` and `contains_text(body, 'req-7f3a9c1e5b')`;
//! - DuckDB (Python package from PyPI) over the same Parquet files with `LIKE`, in the same run;
//! - and a `count_over_time` by pod over the 24 h, for scale.
//!
//! `cargo bench --bench needle` (env: WAKE_BENCH_ROWS, default 10,000,000; WAKE_BENCH_RUNS,
//! default 20; WAKE_BENCH_DATA_DIR to keep or reuse the data: an existing store there is
//! queried without ingesting again; WAKE_BENCH_PYTHON, default python3, with `duckdb`).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// p50 and p99 of `runs` timed calls after one warm-up call; `check` validates each answer.
fn measure(runs: u64, mut call: impl FnMut() -> Value, check: impl Fn(&Value)) -> (Duration, Duration) {
    check(&call());
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let started = Instant::now();
            let answer = call();
            let elapsed = started.elapsed();
            check(&answer);
            elapsed
        })
        .collect();
    times.sort();
    let at = |q: f64| times[((times.len() as f64 - 1.0) * q).round() as usize];
    (at(0.5), at(0.99))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("needle: benchmark");
        return;
    }
    let rows = env_u64("WAKE_BENCH_ROWS", 10_000_000);
    let runs = env_u64("WAKE_BENCH_RUNS", 20);
    let temporary = tempfile::tempdir().expect("tempdir");
    let data_dir =
        std::env::var_os("WAKE_BENCH_DATA_DIR").map(PathBuf::from).unwrap_or_else(|| temporary.path().join("data"));
    let reuse = data_dir.join("manifest.json").exists();
    let (mut server, otlp_addr, http_addr) = common::start_server(&data_dir);
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(600)).build().expect("client");
    let sql = |query: &str| -> Value {
        client
            .post(format!("http://{http_addr}/api/v1/sql"))
            .json(&serde_json::json!({ "sql": query }))
            .send()
            .and_then(|r| r.json())
            .expect("SQL query")
    };
    if !reuse {
        let corpus = Arc::new(common::Corpus::load());
        let started = Instant::now();
        common::send(&corpus, &otlp_addr, rows, 4, 4096);
        let flush = client.post(format!("http://{http_addr}/api/v1/admin/flush")).send().expect("flush");
        assert!(flush.status().is_success());
        println!("ingested {rows} rows in {:.1} s (acknowledged and flushed)", started.elapsed().as_secs_f64());
    }
    let stored = sql("SELECT count(*) FROM logs")["rows"][0][0].as_u64().unwrap_or(0);
    let needles = (0..stored).filter(|g| g % 1_000_003 == 7).count() as u64;
    println!("needle benchmark: {stored} rows, {needles} needles, {runs} warm runs each");

    let start_ns = common::START_NS.to_string();
    let end_ns = (common::Corpus::time_ns(stored) + 1).to_string();
    let loki = |query: &str, step: Option<&str>| -> Value {
        let mut params =
            vec![("query", query), ("start", start_ns.as_str()), ("end", end_ns.as_str()), ("limit", "100")];
        if let Some(step) = step {
            params.push(("step", step));
        }
        let url = reqwest::Url::parse_with_params(&format!("http://{http_addr}/loki/api/v1/query_range"), &params)
            .expect("URL");
        client.get(url).send().and_then(|r| r.json()).expect("Loki query")
    };
    let lines = |answer: &Value| -> u64 {
        answer["data"]["result"]
            .as_array()
            .map_or(0, |s| s.iter().map(|s| s["values"].as_array().map_or(0, |v| v.len() as u64)).sum())
    };
    let count = |answer: &Value| answer["rows"][0][0].as_u64().unwrap_or(u64::MAX);

    let needle_logql = format!(r#"{{k8s_namespace_name=~".+"}} |= "{}""#, common::NEEDLE);
    let (p50, p99) = measure(runs, || loki(&needle_logql, None), |a| assert_eq!(lines(a), needles, "{a}"));
    println!("LogQL  {needle_logql}: p50 {:.1} ms, p99 {:.1} ms", ms(p50), ms(p99));
    let logql_p50 = p50;

    for function in ["matches", "contains_text"] {
        let query = format!("SELECT count(*) FROM logs WHERE {function}(body, '{}')", common::NEEDLE);
        let (p50, p99) = measure(runs, || sql(&query), |a| assert_eq!(count(a), needles, "{a}"));
        println!("SQL    {query}: p50 {:.1} ms, p99 {:.1} ms", ms(p50), ms(p99));
    }

    let volume = r#"sum by (k8s_pod_name) (count_over_time({k8s_namespace_name=~".+"}[1h]))"#;
    let (p50, p99) = measure(
        3,
        || loki(volume, Some("3600")),
        |a| assert_eq!(a["data"]["result"].as_array().map(Vec::len), Some(100)),
    );
    println!("LogQL  {volume} over 24 h, step 1h: p50 {:.0} ms, p99 {:.0} ms", ms(p50), ms(p99));

    let python = std::env::var("WAKE_BENCH_PYTHON").unwrap_or_else(|_| "python3".into());
    let script = format!(
        r#"
import duckdb, statistics, time
c = duckdb.connect()
q = "SELECT count(*) FROM read_parquet('{dir}/logs/**/*.parquet') WHERE body LIKE '%{needle}%'"
assert c.execute(q).fetchone()[0] == {needles}
times = []
for _ in range({runs}):
    t = time.perf_counter(); c.execute(q).fetchone(); times.append(time.perf_counter() - t)
times.sort()
print(statistics.median(times) * 1000, times[round((len(times) - 1) * 0.99)] * 1000)
"#,
        dir = data_dir.display(),
        needle = common::NEEDLE,
        runs = runs.min(5),
    );
    match Command::new(&python).arg("-c").arg(&script).output() {
        Ok(output) if output.status.success() => {
            let text = String::from_utf8_lossy(&output.stdout);
            let numbers: Vec<f64> = text.split_whitespace().filter_map(|n| n.parse().ok()).collect();
            if let [p50, p99] = numbers.as_slice() {
                println!(
                    "DuckDB LIKE '%{}%' over the same Parquet files: p50 {p50:.1} ms, p99 {p99:.1} ms",
                    common::NEEDLE
                );
                println!("LogQL needle p50 is {:.0}x faster than DuckDB's scan", p50 / ms(logql_p50));
            }
        }
        Ok(output) => println!("DuckDB comparison failed: {}", String::from_utf8_lossy(&output.stderr)),
        Err(error) => println!("DuckDB comparison skipped ({python}: {error}); pip install duckdb"),
    }
    common::terminate(&mut server);
}
