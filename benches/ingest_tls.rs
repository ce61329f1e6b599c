//! The cost of TLS and authentication on ingest (issue "Lifecycle and access"): the same OTLP/gRPC
//! logs requests sent to a release `wake server` in plaintext without tokens, and to one with TLS
//! on every listener (rustls, a certificate the bench makes with rcgen) and a bearer token on
//! every request, side by side in one run, alternating, each mode `WAKE_BENCH_RUNS` (default 3)
//! times on a fresh data dir.
//!
//! The requests: `WAKE_BENCH_ROWS` (default 1,000,000) rows of the benchmark corpus in requests
//! of `WAKE_BENCH_BATCH_ROWS` (4,096), built first, sent over `WAKE_BENCH_CLIENTS` (4) gRPC
//! connections. Reported per mode: protobuf MB per second of wall time and per second of
//! server CPU (user + system, /proc), from the first request to the last acknowledgement.
//!
//! `cargo bench --bench ingest_tls`.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use prost::Message;

const TOKEN: &str = "bench-token-0123456789abcdef0123456789abcdef";

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Secure {
    ca_pem: String,
    args: Vec<String>,
}

fn secure(dir: &std::path::Path) -> Secure {
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let (cert_file, key_file, config) = (dir.join("cert.pem"), dir.join("key.pem"), dir.join("wake.yaml"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(TOKEN.as_bytes()))
    };
    std::fs::write(
        &config,
        format!("auth:\n  tokens:\n    - {{name: bench, sha256: {hash}, scopes: [write, read]}}\n"),
    )
    .unwrap();
    let args = [
        "--tls-cert-file",
        cert_file.to_str().unwrap(),
        "--tls-key-file",
        key_file.to_str().unwrap(),
        "--config",
        config.to_str().unwrap(),
    ];
    Secure { ca_pem: ca.pem(), args: args.iter().map(|a| a.to_string()).collect() }
}

/// Sends every request; returns (wall seconds, server CPU seconds).
fn run(requests: &Arc<Vec<ExportLogsServiceRequest>>, clients: usize, secure: Option<&Secure>) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let args: Vec<&std::ffi::OsStr> =
        secure.map(|s| s.args.iter().map(std::ffi::OsStr::new).collect()).unwrap_or_default();
    let (mut server, grpc, _, _) = common::start_server_listening(&dir.path().join("data"), &args);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let scheme = if secure.is_some() { "https" } else { "http" };
    let endpoint = format!("{scheme}://{grpc}");
    let channels: Vec<tonic::transport::Channel> = (0..clients)
        .map(|_| {
            let mut builder = tonic::transport::Endpoint::from_shared(endpoint.clone()).unwrap();
            if let Some(secure) = secure {
                let tls = tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(&secure.ca_pem))
                    .domain_name("localhost");
                builder = builder.tls_config(tls).unwrap();
            }
            runtime.block_on(builder.connect()).expect("connect")
        })
        .collect();
    let next = Arc::new(AtomicUsize::new(0));
    let cpu_before = common::cpu_seconds(server.id());
    let started = Instant::now();
    runtime.block_on(async {
        let tasks: Vec<_> = channels
            .into_iter()
            .map(|channel| {
                let (requests, next) = (requests.clone(), next.clone());
                let token = secure.map(|_| format!("Bearer {TOKEN}"));
                tokio::spawn(async move {
                    let mut client = LogsServiceClient::new(channel);
                    loop {
                        let index = next.fetch_add(1, Ordering::SeqCst);
                        let Some(body) = requests.get(index) else { break };
                        loop {
                            let mut request = tonic::Request::new(body.clone());
                            if let Some(token) = &token {
                                request.metadata_mut().insert("authorization", token.parse().unwrap());
                            }
                            match client.export(request).await {
                                Ok(_) => break,
                                Err(status) if status.code() == tonic::Code::Unavailable => {
                                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                                }
                                Err(status) => panic!("request {index}: {status}"),
                            }
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.unwrap();
        }
    });
    let wall = started.elapsed().as_secs_f64();
    let cpu = common::cpu_seconds(server.id()) - cpu_before;
    common::terminate(&mut server);
    (wall, cpu)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("ingest_tls: benchmark");
        return;
    }
    let rows = env_u64("WAKE_BENCH_ROWS", 1_000_000);
    let batch_rows = env_u64("WAKE_BENCH_BATCH_ROWS", 4096);
    let clients = env_u64("WAKE_BENCH_CLIENTS", 4) as usize;
    let runs = env_u64("WAKE_BENCH_RUNS", 3);
    let corpus = common::Corpus::load();
    let requests: Vec<ExportLogsServiceRequest> = (0..rows.div_ceil(batch_rows))
        .map(|i| corpus.request(i * batch_rows, batch_rows.min(rows - i * batch_rows)).0)
        .collect();
    let bytes: usize = requests.iter().map(Message::encoded_len).sum();
    let requests = Arc::new(requests);
    let dir = tempfile::tempdir().unwrap();
    let secure = secure(dir.path());
    println!(
        "## ingest_tls: {rows} rows, {:.1} MB of OTLP protobuf, {} requests, {clients} gRPC connections",
        bytes as f64 / 1e6,
        requests.len()
    );
    println!();
    println!("| run | mode | wall s | server CPU s | MB/s wall | MB per server CPU-s |");
    println!("|---|---|---|---|---|---|");
    let mut totals = [(0.0, 0.0); 2];
    for run_index in 0..runs {
        for (mode, name) in [(None, "plaintext, no tokens"), (Some(&secure), "TLS + bearer token")] {
            let (wall, cpu) = run(&requests, clients, mode);
            let slot = usize::from(mode.is_some());
            totals[slot].0 += wall;
            totals[slot].1 += cpu;
            let mb = bytes as f64 / 1e6;
            println!("| {} | {name} | {wall:.2} | {cpu:.2} | {:.1} | {:.1} |", run_index + 1, mb / wall, mb / cpu);
        }
    }
    let mb = bytes as f64 / 1e6 * runs as f64;
    let (plain, tls) = (mb / totals[0].1, mb / totals[1].1);
    println!();
    println!(
        "per server CPU-s: plaintext {plain:.1} MB, TLS + token {tls:.1} MB: TLS and authentication cost {:.1} % of the CPU per MB",
        (totals[1].1 / totals[0].1 - 1.0) * 100.0
    );
}
