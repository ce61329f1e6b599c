//! Ingest benchmark (issue "Store core"): OTLP/HTTP log batches built from the benchmark
//! corpus, sent over loopback by several concurrent clients to a real `wake server`.
//!
//! Reports raw log text MB/s per core of *server* CPU (utime + stime of the server process from
//! /proc, including the flush to Parquet + tantivy), lines/s of wall time, and bytes on disk
//! (Parquet + index) as a percentage of the raw text.
//!
//! `cargo bench --bench ingest` (env: WAKE_BENCH_ROWS, default 2,000,000; WAKE_BENCH_CLIENTS,
//! default 4; WAKE_BENCH_BATCH_ROWS, default 4096; WAKE_BENCH_DATA_DIR to keep the data).

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn dir_bytes(dir: &Path, filter: &dyn Fn(&Path) -> bool) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if filter(&path) {
                total += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
    }
    total
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("ingest: benchmark");
        return;
    }
    let rows = env_u64("WAKE_BENCH_ROWS", 2_000_000);
    let clients = env_u64("WAKE_BENCH_CLIENTS", 4);
    let batch_rows = env_u64("WAKE_BENCH_BATCH_ROWS", 4096);
    let temporary = tempfile::tempdir().expect("tempdir");
    let data_dir = std::env::var_os("WAKE_BENCH_DATA_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| temporary.path().join("data"));
    let corpus = Arc::new(common::Corpus::load());
    let (mut server, otlp_addr, http_addr) = common::start_server(&data_dir);
    let pid = server.id();
    let cpu_before = common::cpu_seconds(pid);

    let started = Instant::now();
    let raw = common::send(&corpus, &otlp_addr, rows, clients, batch_rows);
    let acked = started.elapsed();
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(600)).build().unwrap();
    let flush = client.post(format!("http://{http_addr}/api/v1/admin/flush")).send().expect("flush");
    assert!(flush.status().is_success(), "flush: {:?}", flush.text());
    let total = started.elapsed();
    let cpu = common::cpu_seconds(pid) - cpu_before;

    let count: serde_json::Value = client
        .post(format!("http://{http_addr}/api/v1/sql"))
        .json(&serde_json::json!({"sql": "SELECT count(*) FROM logs"}))
        .send()
        .and_then(|r| r.json())
        .expect("count query");
    let stored_rows = count["rows"][0][0].as_u64().unwrap_or(0);
    assert_eq!(stored_rows, rows, "every sent row must be stored");

    let parquet = dir_bytes(&data_dir, &|p| p.extension().is_some_and(|e| e == "parquet"));
    let index = dir_bytes(&data_dir, &|p| p.ancestors().any(|a| a.extension().is_some_and(|e| e == "index")));
    let mb = raw as f64 / 1e6;
    println!("ingest benchmark: {rows} rows, {clients} clients, {batch_rows} rows per request");
    println!("raw log text:          {mb:.1} MB");
    println!("wall time (acked):     {:.2} s; with final flush {:.2} s", acked.as_secs_f64(), total.as_secs_f64());
    println!("lines/s (wall, acked): {:.0}", rows as f64 / acked.as_secs_f64());
    println!("server CPU:            {cpu:.2} s (user+system, incl. flush and index)");
    println!("MB/s per server core:  {:.1}", mb / cpu);
    println!(
        "on disk: parquet {:.1} MB ({:.1} %), index {:.1} MB ({:.1} %), total {:.1} %",
        parquet as f64 / 1e6,
        100.0 * parquet as f64 / raw as f64,
        index as f64 / 1e6,
        100.0 * index as f64 / raw as f64,
        100.0 * (parquet + index) as f64 / raw as f64
    );
    common::terminate(&mut server);
}
