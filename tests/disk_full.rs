//! A full disk: the data dir lives on a small tmpfs, partly taken by a filler file. Ingest must
//! refuse with "retry later" (HTTP 503 + Retry-After, gRPC UNAVAILABLE + RetryInfo) without
//! losing or half-writing anything acknowledged, and recover once the filler is deleted.
//!
//! Mounting needs root, which scripts/test.sh and CI provide.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{RetryInfo, RpcStatus, WakeServer, log_request, seq_record};
use opentelemetry_proto::tonic::collector::logs::v1::logs_service_client::LogsServiceClient;
use prost::Message;

const SERVICE: &str = "disk-full";
const RECORDS_PER_REQUEST: u64 = 40;
/// About 100 KB per request.
const BODY_BYTES: usize = 2500;
const UNAVAILABLE: i32 = 14;

/// A tmpfs mounted for one test, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, size_mib: u64) -> Tmpfs {
        std::fs::create_dir_all(path).expect("creating the mount point");
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "wake-test-tmpfs"])
            .arg(path)
            .output()
            .expect("running mount");
        assert!(
            output.status.success(),
            "mount -t tmpfs failed (the disk-full tests need root; run scripts/test.sh as CI does): {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Tmpfs { path: path.to_path_buf() }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(&self.path).status().is_ok_and(|s| s.success());
        if !unmounted {
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

fn fill(path: &Path, mib: usize) {
    // Real writes (not a sparse file), so that tmpfs counts every page.
    std::fs::write(path, vec![0x5a; mib << 20]).expect("writing the filler file");
}

/// Sends batches with consecutive seqs and remembers the acknowledged ones.
struct Sender {
    next_seq: u64,
    acknowledged: BTreeSet<u64>,
}

enum Outcome {
    Acknowledged,
    /// 503 with a Retry-After header; the message of the google.rpc.Status.
    RetryLater(String),
}

impl Sender {
    fn send(&mut self, server: &WakeServer) -> Outcome {
        let seqs = self.next_seq..self.next_seq + RECORDS_PER_REQUEST;
        self.next_seq += RECORDS_PER_REQUEST;
        let records = seqs.clone().map(|seq| seq_record(seq, BODY_BYTES)).collect();
        let response = server
            .client()
            .post(server.otlp_url("/v1/logs"))
            .header("content-type", "application/x-protobuf")
            .body(log_request(SERVICE, records).encode_to_vec())
            .send()
            .expect("POST /v1/logs");
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
        let body = response.bytes().expect("answer body");
        match status {
            200 => {
                self.acknowledged.extend(seqs);
                Outcome::Acknowledged
            }
            503 => {
                let retry_after = retry_after.expect("a 503 carries Retry-After in seconds");
                assert!(retry_after >= 1, "Retry-After: {retry_after}");
                let rpc = RpcStatus::decode(body.as_ref()).expect("a google.rpc.Status body");
                assert_eq!(rpc.code, UNAVAILABLE, "{rpc:?}");
                Outcome::RetryLater(rpc.message)
            }
            other => panic!("unexpected {other}: {}\n{}", String::from_utf8_lossy(&body), server.log_tail()),
        }
    }

    /// Sends until the server says "retry later"; returns its message.
    fn send_until_refused(&mut self, server: &WakeServer) -> String {
        for _ in 0..400 {
            if let Outcome::RetryLater(message) = self.send(server) {
                return message;
            }
        }
        panic!("40 MB sent to a 16 MiB file system and never refused\n{}", server.log_tail());
    }
}

/// The stored seqs are exactly the acknowledged ones: none lost, none twice, none refused.
fn check_stored(server: &WakeServer, acknowledged: &BTreeSet<u64>, moment: &str) {
    let rows = server.sql_rows(&format!(
        "SELECT CAST(attributes['seq'] AS BIGINT) AS seq FROM logs WHERE service_name = '{SERVICE}' ORDER BY seq"
    ));
    let stored: Vec<u64> = rows.iter().map(|row| row[0].as_u64().expect("seq")).collect();
    let expected: Vec<u64> = acknowledged.iter().copied().collect();
    if stored != expected {
        let stored_set: BTreeSet<u64> = stored.iter().copied().collect();
        let lost: Vec<_> = acknowledged.difference(&stored_set).take(10).collect();
        let extra: Vec<_> = stored_set.difference(acknowledged).take(10).collect();
        panic!(
            "{moment}: {} rows stored, {} acknowledged; lost e.g. {lost:?}, unacknowledged e.g. {extra:?}, \
             {} duplicates\nserver log tail:\n{}",
            stored.len(),
            acknowledged.len(),
            stored.len() - stored_set.len(),
            server.log_tail()
        );
    }
}

const NO_FLUSH: &[&str] = &["--flush-interval-secs", "3600"];

#[test]
fn low_free_space_is_refused_with_retry_later_and_ingest_recovers() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tmpfs = Tmpfs::mount(&dir.path().join("mnt"), 16);
    let filler = tmpfs.path.join("filler");
    fill(&filler, 8);
    let data_dir = tmpfs.path.join("data");
    // Nothing is flushed, so the WAL alone fills the disk.
    let mut args = vec!["--min-free-disk-bytes", "4194304"];
    args.extend_from_slice(NO_FLUSH);
    let server = WakeServer::start(&data_dir, &args);

    let mut sender = Sender { next_seq: 0, acknowledged: BTreeSet::new() };
    let message = sender.send_until_refused(&server);
    assert!(message.contains("disk"), "{message}");
    assert!(sender.acknowledged.len() > 10 * RECORDS_PER_REQUEST as usize, "refused too early");
    assert!(matches!(sender.send(&server), Outcome::RetryLater(_)), "still full, still refused");

    // gRPC says the same with UNAVAILABLE and RetryInfo.
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let status = runtime.block_on(async {
        let mut client = LogsServiceClient::connect(server.grpc_endpoint()).await.expect("gRPC connect");
        client.export(log_request(SERVICE, vec![seq_record(u64::MAX, 10)])).await.expect_err("refused over gRPC")
    });
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let details = RpcStatus::decode(status.details()).expect("google.rpc.Status details");
    let retry_info = details
        .details
        .iter()
        .find(|any| any.type_url == "type.googleapis.com/google.rpc.RetryInfo")
        .unwrap_or_else(|| panic!("no RetryInfo in {details:?}"));
    let delay = RetryInfo::decode(retry_info.value.as_slice()).expect("RetryInfo").retry_delay.expect("retry_delay");
    assert!(delay.seconds >= 1, "{delay:?}");

    check_stored(&server, &sender.acknowledged, "while the disk is full");

    recover_and_replay(server, &filler, &data_dir, &args, &mut sender);
}

#[test]
fn a_write_that_runs_out_of_space_is_cut_back_and_later_records_replay() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tmpfs = Tmpfs::mount(&dir.path().join("mnt"), 16);
    let filler = tmpfs.path.join("filler");
    fill(&filler, 10);
    let data_dir = tmpfs.path.join("data");
    // No free-space threshold: the WAL write itself meets ENOSPC, part-way through a record.
    let mut args = vec!["--min-free-disk-bytes", "0"];
    args.extend_from_slice(NO_FLUSH);
    let server = WakeServer::start(&data_dir, &args);

    let mut sender = Sender { next_seq: 0, acknowledged: BTreeSet::new() };
    sender.send_until_refused(&server);
    for _ in 0..3 {
        assert!(matches!(sender.send(&server), Outcome::RetryLater(_)), "still full, still refused");
    }
    check_stored(&server, &sender.acknowledged, "while the disk is full");

    // A flush cannot write Parquet now; it must fail without losing the buffered rows.
    let response = server.client().post(server.api_url("/api/v1/admin/flush")).send().expect("POST flush");
    assert_eq!(response.status(), 503, "flush on a full disk: {}", response.text().unwrap_or_default());
    check_stored(&server, &sender.acknowledged, "after a flush failed for lack of space");

    // Replay reads past the point of the failed writes only if they were cut back out of the log.
    recover_and_replay(server, &filler, &data_dir, &args, &mut sender);
}

/// Frees the space, checks that ingest resumes, then that a SIGKILL and WAL replay keep every
/// acknowledged record exactly once, buffered and flushed.
fn recover_and_replay(mut server: WakeServer, filler: &Path, data_dir: &Path, args: &[&str], sender: &mut Sender) {
    std::fs::remove_file(filler).expect("deleting the filler");
    for _ in 0..5 {
        assert!(matches!(sender.send(&server), Outcome::Acknowledged), "ingest recovers once space is free");
    }
    check_stored(&server, &sender.acknowledged, "after space was freed");

    server.kill();
    let server = WakeServer::start(data_dir, args);
    check_stored(&server, &sender.acknowledged, "after SIGKILL and WAL replay");
    server.flush();
    check_stored(&server, &sender.acknowledged, "after flushing to Parquet");
}
