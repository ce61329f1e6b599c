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

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use prost::Message;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Server CPU seconds so far (user + system), from /proc/<pid>/stat.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("server stat");
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let after = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    let hz = Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0);
    ticks / hz
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

fn start_server(data_dir: &Path) -> (Child, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wake"))
        .args([
            "server",
            "--otlp-grpc-addr",
            "127.0.0.1:0",
            "--otlp-http-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .env("RUST_LOG", "warn,wake=info")
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn wake server");
    let stderr = child.stderr.take().expect("stderr");
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("otlp_http_addr=") {
                let field = |key: &str| {
                    line.split_whitespace()
                        .find_map(|token| token.strip_prefix(key))
                        .map(str::to_string)
                        .unwrap_or_default()
                };
                let _ = sender.send((field("otlp_http_addr="), field("http_addr=")));
            }
        }
    });
    let (otlp, http) = receiver.recv_timeout(Duration::from_secs(60)).expect("server did not start");
    (child, otlp, http)
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
    let (mut server, otlp_addr, http_addr) = start_server(&data_dir);
    let pid = server.id();
    let cpu_before = cpu_seconds(pid);

    let next_batch = Arc::new(AtomicU64::new(0));
    let raw_bytes = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (corpus, next_batch, raw_bytes) = (corpus.clone(), next_batch.clone(), raw_bytes.clone());
            let url = format!("http://{otlp_addr}/v1/logs");
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
                loop {
                    let first = next_batch.fetch_add(1, Ordering::SeqCst) * batch_rows;
                    if first >= rows {
                        break;
                    }
                    let (request, raw) = corpus.request(first, batch_rows.min(rows - first));
                    let body = request.encode_to_vec();
                    loop {
                        let response = client
                            .post(&url)
                            .header("content-type", "application/x-protobuf")
                            .body(body.clone())
                            .send()
                            .expect("send batch");
                        match response.status().as_u16() {
                            200 => break,
                            429 | 503 => std::thread::sleep(Duration::from_millis(200)),
                            other => {
                                panic!("batch at row {first}: HTTP {other}: {:?}", response.text())
                            }
                        }
                    }
                    raw_bytes.fetch_add(raw, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("client thread");
    }
    let acked = started.elapsed();
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(600)).build().unwrap();
    let flush = client.post(format!("http://{http_addr}/api/v1/admin/flush")).send().expect("flush");
    assert!(flush.status().is_success(), "flush: {:?}", flush.text());
    let total = started.elapsed();
    let cpu = cpu_seconds(pid) - cpu_before;

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
    let raw = raw_bytes.load(Ordering::Relaxed);
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
    terminate(&mut server);
}

fn terminate(server: &mut Child) {
    let _ = Command::new("kill").arg("-TERM").arg(server.id().to_string()).status();
    let _ = server.wait();
}
