//! The benchmark corpus that `../shared/NOTES.md` defines, shared by every benchmark so that
//! figures compare across benchmarks and over time.
//!
//! Row `g`: an application timestamp prefix from a clock starting 2026-11-22T00:00:00Z that
//! advances 8.64 ms per row, then the Loghub line (all 16 `*_2k.log` files in name order,
//! cycled) with every run of three or more digits replaced by a six-digit number derived from
//! a hash of `g` (and of the run's position, so two runs of a row differ). Identity: container
//! `g % 100` (`pod-<g % 100>`, namespace `ns-<g % 10>`, container `app`), stream `stderr` when
//! `g % 10 == 9`. A row with `g % 1000003 == 7` ends with ` req-7f3a9c1e5b`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, mpsc};
use std::time::Duration;

use prost::Message;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;

pub const START_NS: i64 = 1_795_305_600_000_000_000; // 2026-11-22T00:00:00Z
pub const STEP_NS: i64 = 8_640_000; // 8.64 ms: 10 million rows span 24 h
pub const NEEDLE: &str = "req-7f3a9c1e5b";
pub const CONTAINERS: u64 = 100;

pub fn loghub_dir() -> PathBuf {
    std::env::var_os("WAKE_LOGHUB_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/loghub"))
}

pub struct Corpus {
    lines: Vec<String>,
}

pub fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// Days since 1970-01-01 to (year, month, day).
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

pub struct Row {
    pub time_ns: i64,
    pub body: String,
    pub container: u64,
    pub stream: &'static str,
}

impl Corpus {
    pub fn load() -> Corpus {
        let dir = loghub_dir();
        // Where `../shared` is absent (CI), the same 16 files are in the repository, gzipped.
        let (dir, suffix) = if dir.is_dir() || std::env::var_os("WAKE_LOGHUB_DIR").is_some() {
            (dir, "_2k.log")
        } else {
            (Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/loghub"), "_2k.log.gz")
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot read the Loghub samples in {}: {e}", dir.display()))
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|path| path.to_string_lossy().ends_with(suffix))
            .collect();
        files.sort();
        let mut lines = Vec::new();
        for file in files {
            let mut bytes = std::fs::read(&file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
            if suffix.ends_with(".gz") {
                let mut text = Vec::new();
                std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&bytes[..]), &mut text)
                    .unwrap_or_else(|e| panic!("decompressing {}: {e}", file.display()));
                bytes = text;
            }
            lines.extend(String::from_utf8_lossy(&bytes).lines().map(str::to_string));
        }
        assert!(!lines.is_empty(), "no Loghub lines under {}", dir.display());
        Corpus { lines }
    }

    /// Loghub line `i` (cycled) as it is in the samples, digits and all.
    pub fn loghub_line(&self, i: u64) -> &str {
        &self.lines[(i % self.lines.len() as u64) as usize]
    }

    pub fn time_ns(g: u64) -> i64 {
        START_NS + g as i64 * STEP_NS
    }

    pub fn row(&self, g: u64) -> Row {
        let time_ns = Self::time_ns(g);
        let mut body = String::with_capacity(200);
        let secs = time_ns.div_euclid(1_000_000_000);
        let millis = time_ns.rem_euclid(1_000_000_000) / 1_000_000;
        let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
        let second_of_day = secs.rem_euclid(86_400);
        body.push_str(&format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03} ",
            second_of_day / 3600,
            second_of_day / 60 % 60,
            second_of_day % 60
        ));
        let line = &self.lines[(g % self.lines.len() as u64) as usize];
        let bytes = line.as_bytes();
        let mut run = 0u64;
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i].is_ascii_digit() {
                let start = i;
                while i < bytes.len() && bytes[i].is_ascii_digit() {
                    i += 1;
                }
                if i - start >= 3 {
                    let number = splitmix64(g.wrapping_mul(64).wrapping_add(run)) % 900_000 + 100_000;
                    body.push_str(&number.to_string());
                    run += 1;
                } else {
                    body.push_str(&line[start..i]);
                }
            } else {
                let start = i;
                while i < bytes.len() && !bytes[i].is_ascii_digit() {
                    i += 1;
                }
                body.push_str(&line[start..i]);
            }
        }
        if g % 1_000_003 == 7 {
            body.push(' ');
            body.push_str(NEEDLE);
        }
        Row { time_ns, body, container: g % CONTAINERS, stream: if g % 10 == 9 { "stderr" } else { "stdout" } }
    }

    /// Rows `first..first + count` as one OTLP request, one resource per container.
    pub fn request(&self, first: u64, count: u64) -> (ExportLogsServiceRequest, u64) {
        let mut per_container: Vec<Vec<LogRecord>> = (0..CONTAINERS).map(|_| Vec::new()).collect();
        let mut raw_bytes = 0;
        for g in first..first + count {
            let row = self.row(g);
            raw_bytes += row.body.len() as u64;
            per_container[row.container as usize].push(LogRecord {
                time_unix_nano: row.time_ns as u64,
                observed_time_unix_nano: row.time_ns as u64,
                body: Some(AnyValue { value: Some(any_value::Value::StringValue(row.body)) }),
                attributes: vec![string_attribute("log.iostream", row.stream)],
                ..Default::default()
            });
        }
        let resource_logs = per_container
            .into_iter()
            .enumerate()
            .filter(|(_, records)| !records.is_empty())
            .map(|(container, log_records)| ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![
                        string_attribute("k8s.namespace.name", &format!("ns-{}", container % 10)),
                        string_attribute("k8s.pod.name", &format!("pod-{container}")),
                        string_attribute("k8s.container.name", "app"),
                        string_attribute("k8s.node.name", "node-1"),
                    ],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs { log_records, ..Default::default() }],
                ..Default::default()
            })
            .collect();
        (ExportLogsServiceRequest { resource_logs }, raw_bytes)
    }
}

fn string_attribute(key: &str, value: &str) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.to_string())) }),
        ..Default::default()
    }
}

/// Starts the release `wake server` on port 0 over `data_dir`; returns it with its OTLP/HTTP
/// and query addresses.
pub fn start_server(data_dir: &Path) -> (Child, String, String) {
    start_server_with(data_dir, &[])
}

/// [`start_server`] with more flags (`--config <file>`, say).
pub fn start_server_with(data_dir: &Path, extra_args: &[&std::ffi::OsStr]) -> (Child, String, String) {
    let (child, _grpc, otlp, http) = start_server_listening(data_dir, extra_args);
    (child, otlp, http)
}

/// [`start_server_with`], also returning the OTLP/gRPC address: (server, gRPC, OTLP/HTTP, query).
pub fn start_server_listening(data_dir: &Path, extra_args: &[&std::ffi::OsStr]) -> (Child, String, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_wake"))
        .args([
            "server",
            "--otlp-grpc-addr",
            "127.0.0.1:0",
            "--otlp-http-addr",
            "127.0.0.1:0",
            "--http-addr",
            "127.0.0.1:0",
            // The server storing its own metrics every 15 s would add files (and compactions)
            // to the store being measured.
            "--self-metrics-interval",
            "0",
            // The corpus has a fixed clock (START_NS), which ages out of the accepted window.
            "--max-record-age-secs",
            "0",
        ])
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra_args)
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
                let _ = sender.send((field("otlp_grpc_addr="), field("otlp_http_addr="), field("http_addr=")));
            }
        }
    });
    let (grpc, otlp, http) = receiver.recv_timeout(Duration::from_secs(60)).expect("server did not start");
    (child, grpc, otlp, http)
}

/// Sends rows `0..rows` as OTLP/HTTP protobuf batches of `batch_rows` from `clients` threads,
/// retrying "retry later" answers. Returns the raw text bytes sent.
pub fn send(corpus: &Arc<Corpus>, otlp_addr: &str, rows: u64, clients: u64, batch_rows: u64) -> u64 {
    send_from(corpus, otlp_addr, 0, rows, clients, batch_rows)
}

/// [`send`] of rows `first_row..first_row + rows`.
pub fn send_from(
    corpus: &Arc<Corpus>,
    otlp_addr: &str,
    first_row: u64,
    rows: u64,
    clients: u64,
    batch_rows: u64,
) -> u64 {
    let next_batch = Arc::new(AtomicU64::new(0));
    let raw_bytes = Arc::new(AtomicU64::new(0));
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (corpus, next_batch, raw_bytes) = (corpus.clone(), next_batch.clone(), raw_bytes.clone());
            let url = format!("http://{otlp_addr}/v1/logs");
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(120)).build().unwrap();
                loop {
                    let offset = next_batch.fetch_add(1, Ordering::SeqCst) * batch_rows;
                    if offset >= rows {
                        break;
                    }
                    let first = first_row + offset;
                    let (request, raw) = corpus.request(first, batch_rows.min(rows - offset));
                    post_protobuf(&client, &url, request.encode_to_vec(), &format!("batch at row {first}"));
                    raw_bytes.fetch_add(raw, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("client thread");
    }
    raw_bytes.load(Ordering::Relaxed)
}

/// POSTs an OTLP protobuf body until the server takes it, waiting out "retry later" answers.
pub fn post_protobuf(client: &reqwest::blocking::Client, url: &str, body: Vec<u8>, what: &str) {
    loop {
        let response = client
            .post(url)
            .header("content-type", "application/x-protobuf")
            .body(body.clone())
            .send()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        match response.status().as_u16() {
            200 => return,
            429 | 503 => std::thread::sleep(Duration::from_millis(200)),
            other => panic!("{what}: HTTP {other}: {:?}", response.text()),
        }
    }
}

pub fn terminate(server: &mut Child) {
    let _ = Command::new("kill").arg("-TERM").arg(server.id().to_string()).status();
    let _ = server.wait();
}

/// A process' CPU seconds so far (user + system), from /proc/<pid>/stat.
pub fn cpu_seconds(pid: u32) -> f64 {
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

/// The highest resident set size the process has had so far (`VmHWM`), in bytes; `None` once
/// it has exited or where `/proc` does not say.
pub fn peak_rss_bytes(process: &Child) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", process.id())).ok()?;
    let kib = status.lines().find_map(|line| line.strip_prefix("VmHWM:"))?.trim().strip_suffix("kB")?.trim();
    kib.parse::<u64>().ok().map(|kib| kib * 1024)
}
