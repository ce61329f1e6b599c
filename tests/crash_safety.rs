//! Every acknowledged record survives SIGKILL exactly once.
//!
//! Clients stream OTLP/HTTP log batches whose records carry unique `seq` attributes while the
//! server is killed several times mid-stream, with frequent flushes so that kills land before,
//! during and after Parquet writes. Each seq is sent once and never retried, so a seq stored
//! twice can only come from the store (a replayed WAL entry that was already flushed, say).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread;
use std::time::{Duration, Instant};

use common::{WakeServer, log_field, log_request, seq_record};
use prost::Message;

const SERVICE: &str = "crash-safety";
const CLIENTS: usize = 3;
const RECORDS_PER_BATCH: u64 = 25;
const KILLS: usize = 4;
const SERVER_ARGS: &[&str] = &["--flush-interval-secs", "1"];

/// What the clients learned: seqs acknowledged with 200, and how many requests failed.
#[derive(Default)]
struct Outcomes {
    acknowledged: BTreeSet<u64>,
    failed_requests: u64,
}

struct Stream {
    /// The OTLP/HTTP logs URL of the running server; `None` while it is down.
    url: RwLock<Option<String>>,
    next_seq: AtomicU64,
    outcomes: Mutex<Outcomes>,
    stop: AtomicBool,
}

fn client_loop(stream: &Stream) {
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().expect("HTTP client");
    while !stream.stop.load(Ordering::SeqCst) {
        let Some(url) = stream.url.read().unwrap().clone() else {
            thread::sleep(Duration::from_millis(5));
            continue;
        };
        // Fresh seqs for every attempt: a failed request may or may not have been stored.
        let first = stream.next_seq.fetch_add(RECORDS_PER_BATCH, Ordering::SeqCst);
        let seqs = first..first + RECORDS_PER_BATCH;
        let records = seqs.clone().map(|seq| seq_record(seq, 200)).collect();
        let body = log_request(SERVICE, records).encode_to_vec();
        let result = client.post(&url).header("content-type", "application/x-protobuf").body(body).send();
        let acknowledged = match result {
            Ok(response) if response.status() == 200 => {
                let body = response.bytes().map(|b| b.to_vec()).unwrap_or_default();
                let answer =
                    opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceResponse::decode(body.as_slice())
                        .expect("a 200 carries an ExportLogsServiceResponse");
                assert_eq!(answer.partial_success, None, "nothing in these batches is invalid");
                true
            }
            _ => false,
        };
        let mut outcomes = stream.outcomes.lock().unwrap();
        if acknowledged {
            outcomes.acknowledged.extend(seqs);
        } else {
            outcomes.failed_requests += 1;
            drop(outcomes);
            thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Fixed-seed xorshift: "random" kill moments that are the same on every run.
struct Moments(u64);

impl Moments {
    fn next_millis(&mut self, low: u64, high: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        low + self.0 % (high - low)
    }
}

/// Every seq stored, with duplicates kept, in ascending order.
fn stored_seqs(server: &WakeServer) -> Vec<u64> {
    let rows = server.sql_rows(&format!(
        "SELECT CAST(attributes['seq'] AS BIGINT) AS seq FROM logs WHERE service_name = '{SERVICE}' ORDER BY seq"
    ));
    rows.iter().map(|row| row[0].as_u64().unwrap_or_else(|| panic!("seq {row:?}"))).collect()
}

/// Every acknowledged seq is stored, and no seq is stored twice.
fn check_exactly_once(server: &WakeServer, acknowledged: &BTreeSet<u64>, moment: &str) {
    let duplicates = server.sql_rows(&format!(
        "SELECT attributes['seq'], count(*) FROM logs WHERE service_name = '{SERVICE}' \
         GROUP BY attributes['seq'] HAVING count(*) > 1 LIMIT 20"
    ));
    assert!(duplicates.is_empty(), "{moment}: seqs stored more than once: {duplicates:?}\n{}", server.log_tail());

    let stored = stored_seqs(server);
    let stored_set: BTreeSet<u64> = stored.iter().copied().collect();
    assert_eq!(stored.len(), stored_set.len(), "{moment}: duplicates that GROUP BY did not show");
    let lost: Vec<u64> = acknowledged.difference(&stored_set).copied().take(20).collect();
    assert!(
        lost.is_empty(),
        "{moment}: {} of {} acknowledged seqs are missing, e.g. {lost:?}\nserver log tail:\n{}",
        acknowledged.difference(&stored_set).count(),
        acknowledged.len(),
        server.log_tail()
    );
    // One query, one snapshot: clients may be adding rows meanwhile.
    let counts = server.sql_rows(&format!(
        "SELECT count(*), count(DISTINCT attributes['seq']) FROM logs WHERE service_name = '{SERVICE}'"
    ));
    assert_eq!(counts[0][0], counts[0][1], "{moment}: rows and distinct seqs differ: {counts:?}");
}

fn start(dir: &Path, stream: &Stream) -> WakeServer {
    let server = WakeServer::start(dir, SERVER_ARGS);
    *stream.url.write().unwrap() = Some(server.otlp_url("/v1/logs"));
    server
}

fn wait_for_new_acknowledgements(stream: &Stream, beyond: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while stream.outcomes.lock().unwrap().acknowledged.len() <= beyond {
        assert!(Instant::now() < deadline, "no acknowledgement within 20 s of a restart");
        thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn acknowledged_records_survive_sigkill_exactly_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stream = Arc::new(Stream {
        url: RwLock::new(None),
        next_seq: AtomicU64::new(0),
        outcomes: Mutex::new(Outcomes::default()),
        stop: AtomicBool::new(false),
    });
    let mut server = start(dir.path(), &stream);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let stream = stream.clone();
            thread::spawn(move || client_loop(&stream))
        })
        .collect();

    let mut moments = Moments(0x5eed_cafe_f00d);
    for kill in 1..=KILLS {
        let before = stream.outcomes.lock().unwrap().acknowledged.len();
        wait_for_new_acknowledgements(&stream, before);
        // Past the 1 s flush interval at times, so that some kills find data in Parquet.
        thread::sleep(Duration::from_millis(moments.next_millis(150, 2500)));
        *stream.url.write().unwrap() = None;
        server.kill();
        // Only a live server acknowledges: a 200 that is recorded only after this copy is
        // checked at the next kill instead.
        let acknowledged = stream.outcomes.lock().unwrap().acknowledged.clone();
        server = start(dir.path(), &stream);
        check_exactly_once(&server, &acknowledged, &format!("after kill {kill}"));
    }

    let before = stream.outcomes.lock().unwrap().acknowledged.len();
    wait_for_new_acknowledgements(&stream, before);
    stream.stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().expect("client thread");
    }
    let outcomes = std::mem::take(&mut *stream.outcomes.lock().unwrap());
    check_exactly_once(&server, &outcomes.acknowledged, "before the final shutdown");

    // A graceful stop flushes everything: the next start has nothing to replay.
    let status = server.terminate();
    assert!(status.success(), "SIGTERM exit status {status}\n{}", server.log_tail());
    let server = WakeServer::start(dir.path(), SERVER_ARGS);
    let replayed = log_field(&server.log(), "store opened", "replayed_rows");
    assert_eq!(replayed, vec![serde_json::json!(0)], "rows replayed after a graceful stop\n{}", server.log());
    check_exactly_once(&server, &outcomes.acknowledged, "after SIGTERM and restart");

    let total = server.count(&format!("SELECT count(*) FROM logs WHERE service_name = '{SERVICE}'"));
    let sent = stream.next_seq.load(Ordering::SeqCst);
    eprintln!(
        "{} seqs acknowledged, {total} stored, {sent} sent, {} requests failed",
        outcomes.acknowledged.len(),
        outcomes.failed_requests
    );
    assert!(outcomes.failed_requests > 0, "the kills must have interrupted the stream");
    assert!(total <= sent);
}
