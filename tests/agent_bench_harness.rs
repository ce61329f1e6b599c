//! The agent benchmark's own machinery (benches/agent/), on a tiny corpus: the generator writes
//! what it says it wrote, the sink counts exactly, and a line lost, repeated or altered fails a
//! run — also end to end, with the real `wake agent` (this build) tailing the files.

#[allow(dead_code)]
#[path = "../benches/agent/agents.rs"]
mod agents;
#[path = "../benches/common/mod.rs"]
mod common;
#[allow(dead_code)]
#[path = "../benches/agent/corpus.rs"]
mod corpus;
#[allow(dead_code)]
#[path = "../benches/agent/report.rs"]
mod report;
#[allow(dead_code)]
#[path = "../benches/agent/scenario.rs"]
mod scenario;
#[allow(dead_code)]
#[path = "../benches/agent/sink.rs"]
mod sink;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use prost::Message;

use agents::Kind;
use common::Corpus;
use corpus::{Bound, Format, Node, Written};
use report::{Spread, group};
use scenario::Limits;
use sink::{Expected, Sink, Tally, row_of};

const TINY: u64 = 2 * 1024 * 1024;

fn text(body: &str) -> AnyValue {
    AnyValue { value: Some(any_value::Value::StringValue(body.to_string())) }
}

/// A reader written apart from the agent's: every file's logical lines, CRI `P` records joined
/// per stream up to their `F`, Docker messages joined up to the one ending in `\n`.
fn read_back(root: &Path, format: Format) -> Vec<String> {
    let mut files = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "log") {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut lines = Vec::new();
    for file in files {
        let mut pending: HashMap<String, String> = HashMap::new();
        for record in std::fs::read_to_string(&file).unwrap().lines() {
            match format {
                Format::Cri => {
                    let mut fields = record.splitn(4, ' ');
                    let (_time, stream, tag, text) = (
                        fields.next().unwrap(),
                        fields.next().unwrap(),
                        fields.next().unwrap(),
                        fields.next().unwrap(),
                    );
                    let line = pending.entry(stream.to_string()).or_default();
                    line.push_str(text);
                    if tag == "F" {
                        lines.push(pending.remove(stream).unwrap());
                    } else {
                        assert_eq!(tag, "P", "{record}");
                    }
                }
                Format::Docker => {
                    let value: serde_json::Value = serde_json::from_str(record).unwrap();
                    let stream = value["stream"].as_str().unwrap().to_string();
                    let line = pending.entry(stream.clone()).or_default();
                    line.push_str(value["log"].as_str().unwrap());
                    if let Some(whole) = line.strip_suffix('\n') {
                        lines.push(whole.to_string());
                        pending.remove(&stream);
                    }
                }
            }
        }
        assert!(pending.values().all(String::is_empty), "{} ends inside a line", file.display());
    }
    lines
}

fn tally_of<'a>(written: &Written, bodies: impl IntoIterator<Item = &'a str>) -> Tally {
    let mut tally = Tally::new(Expected::from(written));
    for body in bodies {
        tally.add_body(Some(&text(body)));
    }
    tally
}

fn tiny(format: Format) -> (tempfile::TempDir, Node, Written) {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new(dir.path());
    let written = corpus::write(&Corpus::load(), &node, format, common::CONTAINERS, Bound::Bytes(TINY)).unwrap();
    (dir, node, written)
}

fn check_read_back(format: Format, root: &Path, written: &Written) {
    let lines = read_back(root, format);
    assert_eq!(lines.len() as u64, written.lines);
    let all = || lines.iter().map(String::as_str);
    let tally = tally_of(written, all());
    assert_eq!(tally.verdict(), Ok(()));
    assert_eq!((tally.unique, tally.duplicates, tally.unrecognised), (written.lines, 0, 0));

    // One line fewer: the run fails and names the row.
    let dropped = 17;
    let tally = tally_of(written, all().filter(|line| row_of(line) != Some(dropped)));
    let verdict = tally.verdict().unwrap_err();
    assert!(verdict.contains(&format!("{} of {} lines delivered", written.lines - 1, written.lines)), "{verdict}");
    assert!(verdict.contains("first missing rows: [17]"), "{verdict}");

    // One line twice.
    let verdict = tally_of(written, all().chain(all().take(1))).verdict().unwrap_err();
    assert!(verdict.contains("1 lines delivered more than once"), "{verdict}");

    // One line altered after its timestamp, same length: only the checksum tells.
    let altered: Vec<String> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| if i == 3 { format!("{}!", &l[..l.len() - 1]) } else { l.clone() })
        .collect();
    let verdict = tally_of(written, altered.iter().map(String::as_str)).verdict().unwrap_err();
    assert!(verdict.contains("every line arrived but their texts differ"), "{verdict}");
    // A long line cut where the runtime split it, its second piece arriving as a record of its
    // own (as Fluent Bit sends a line whose P records it flushed before their F).
    let long = lines.iter().position(|l| l.len() > corpus::RUNTIME_SPLIT_BYTES).unwrap();
    let row = row_of(&lines[long]).unwrap();
    let pieces = corpus::pieces(&lines[long], corpus::RUNTIME_SPLIT_BYTES);
    let cut = all().enumerate().flat_map(|(i, l)| if i == long { pieces.clone() } else { vec![l] });
    let tally = tally_of(written, cut);
    assert_eq!((tally.unique, tally.altered, tally.unrecognised), (written.lines, 1, pieces.len() as u64 - 1));
    let verdict = tally.verdict().unwrap_err();
    assert!(
        verdict.contains(&format!(
            "1 lines arrived with another length than written (cut short, or joined to another), the first: row {row}"
        )),
        "{verdict}"
    );

    // Something that is no line of the corpus.
    let verdict = tally_of(written, all().chain(["hello"])).verdict().unwrap_err();
    assert!(verdict.contains("1 records that are no written line, the first: \"hello\""), "{verdict}");
}

#[test]
fn cri_corpus_reads_back_exactly_and_a_dropped_line_fails_the_count() {
    let (_dir, node, written) = tiny(Format::Cri);
    assert!(written.file_bytes >= TINY && written.file_bytes < TINY + 64 * 1024, "{written:?}");
    assert_eq!(written.files, 100);
    // Lines over 16 KiB (cut into P records), 1–4 KiB ones, and short lines flushed in halves.
    assert!(written.longest_line > corpus::RUNTIME_SPLIT_BYTES, "{written:?}");
    assert!(written.split_lines > 10 && written.records > written.lines + written.split_lines, "{written:?}");
    let records: usize = read_files(&node.log_root()).iter().map(|t| t.lines().count()).sum();
    assert_eq!(records as u64, written.records);
    assert_eq!(read_files(&node.log_root()).iter().map(|t| t.len() as u64).sum::<u64>(), written.file_bytes);
    // kubelet's symlinks, one per container, resolve to the pod logs.
    let links: Vec<_> = std::fs::read_dir(node.containers_dir()).unwrap().flatten().collect();
    assert_eq!(links.len(), 100);
    assert!(links.iter().all(|l| std::fs::metadata(l.path()).is_ok_and(|m| m.is_file())));
    check_read_back(Format::Cri, &node.log_root(), &written);
}

#[test]
fn docker_corpus_reads_back_exactly_and_a_dropped_line_fails_the_count() {
    let (_dir, node, written) = tiny(Format::Docker);
    assert!(written.split_lines > 0, "{written:?}");
    check_read_back(Format::Docker, &node.docker_root(), &written);
}

fn read_files(root: &Path) -> Vec<String> {
    let mut texts = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap().flatten() {
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                texts.push(std::fs::read_to_string(entry.path()).unwrap());
            }
        }
    }
    texts
}

#[test]
fn rows_are_found_from_their_timestamp_prefix() {
    let corpus = Corpus::load();
    for g in [0, 1, 2, 124, 125, 126, 999_999, 10_000_000, 123_456_789] {
        assert_eq!(row_of(&corpus.row(g).body), Some(g), "row {g}");
        assert_eq!(row_of(&corpus::line(&corpus, g)), Some(g), "line {g}");
    }
    assert_eq!(row_of("2026-11-22T00:00:00.001 x"), None, "no row has this millisecond");
    assert_eq!(row_of("2026-11-21T23:59:59.999 before the corpus starts"), None);
    assert_eq!(row_of("not a line of the corpus"), None);
    assert_eq!(corpus::rfc3339_nanos(Corpus::time_ns(1)), "2026-11-22T00:00:00.008640000Z");
}

#[test]
fn pieces_cut_on_character_boundaries() {
    assert_eq!(corpus::pieces("ab\u{00e9}cd", 3), vec!["ab", "\u{00e9}c", "d"]);
    assert_eq!(corpus::pieces("abc", 3), vec!["abc"]);
}

#[test]
fn spreads_and_table_cells() {
    let spread = Spread::of([3.0, 1.0, 2.0, f64::NAN]).unwrap();
    assert_eq!((spread.min, spread.median, spread.max), (1.0, 2.0, 3.0));
    assert_eq!(spread.cell(1), "2.0 (1.0–3.0)");
    assert_eq!(Spread::of([4.0, 1.0]).unwrap().median, 2.5);
    assert_eq!(Spread::of([5.0]).unwrap().cell(0), "5");
    assert!(Spread::of([]).is_none());
    assert_eq!(group(1_234_567), "1,234,567");
    assert_eq!(group(999), "999");
}

fn request(bodies: &[&str]) -> ExportLogsServiceRequest {
    ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            scope_logs: vec![ScopeLogs {
                log_records: bodies
                    .iter()
                    .map(|body| LogRecord { body: Some(text(body)), ..Default::default() })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[test]
fn sink_counts_plain_and_gzip_requests_and_tells_a_retry_from_a_duplicate() {
    let corpus = Corpus::load();
    let lines: Vec<String> = (0..4).map(|g| corpus::line(&corpus, g)).collect();
    let written = Written {
        lines: 4,
        text_bytes: lines.iter().map(|l| l.len() as u64).sum(),
        checksum: lines.iter().fold(0u64, |sum, l| sum.wrapping_add(corpus::fingerprint(l.as_bytes()))),
        ..Written::default()
    };
    let sink = Sink::start(Expected::from(&written)).unwrap();
    let client = reqwest::blocking::Client::new();
    let url = format!("http://{}/v1/logs", sink.addr);
    let post = |body: Vec<u8>, gzip: bool| {
        let mut request = client.post(&url).header("content-type", "application/x-protobuf");
        let body = if gzip {
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            encoder.write_all(&body).unwrap();
            request = request.header("content-encoding", "gzip");
            encoder.finish().unwrap()
        } else {
            body
        };
        let response = request.body(body).send().unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.headers()["content-type"], "application/x-protobuf");
        // An empty ExportLogsServiceResponse.
        assert!(response.bytes().unwrap().is_empty());
    };
    let first = request(&[&lines[0], &lines[1]]).encode_to_vec();
    post(first.clone(), false);
    // The same request again (an agent retrying after a lost answer): not counted twice.
    post(first, true);
    post(request(&[&lines[2]]).encode_to_vec(), true);
    sink.with(|t| {
        assert_eq!((t.log_requests, t.gzip_requests, t.retried_requests), (3, 2, 1));
        assert_eq!((t.unique, t.duplicates, t.records), (3, 0, 3));
        assert!(!t.complete());
        assert!(t.verdict().unwrap_err().contains("first missing rows: [3]"));
    });
    // A new request repeating a line is a duplicate.
    post(request(&[&lines[3], &lines[0]]).encode_to_vec(), false);
    sink.with(|t| {
        assert!(t.complete());
        assert_eq!(t.duplicates, 1);
        assert_eq!(t.verdict().unwrap_err(), "1 lines delivered more than once");
    });
    // JSON is refused (the sink decodes protobuf only), and that fails the run too.
    let response = client.post(&url).header("content-type", "application/json").body("{}").send().unwrap();
    assert_eq!(response.status(), 400);
    assert!(sink.with(|t| t.verdict()).unwrap_err().contains("1 requests the sink could not decode"));
}

fn wake() -> Kind {
    Kind::Wake { binary: PathBuf::from(env!("CARGO_BIN_EXE_wake")), extra: Vec::new() }
}

const LIMITS: Limits = Limits { timeout: Duration::from_secs(120), stall: Duration::from_secs(5) };

#[test]
fn wake_agent_delivers_every_line_of_the_tiny_corpora() {
    for format in [Format::Cri, Format::Docker] {
        let (dir, node, written) = tiny(format);
        let measured = scenario::throughput(&wake(), &node, &written, &dir.path().join("state"), LIMITS)
            .unwrap_or_else(|e| panic!("{format:?}: {e}"));
        assert_eq!(measured.failure, None, "{format:?}");
        let run = measured.figures;
        assert_eq!((run.delivered, run.written), (written.lines, written.lines), "{format:?}");
        assert_eq!(run.problems(), None);
        assert_eq!(run.input_bytes, written.file_bytes);
        assert!(run.requests >= 1 && run.max_request_bytes > 0 && run.cpu_secs > 0.0, "{run:?}");
    }
}

#[test]
fn a_line_missing_from_the_files_fails_the_run() {
    let (dir, node, written) = tiny(Format::Cri);
    // Take a one-record line of container 5's file out after the generator counted it, as an
    // agent that lost it would.
    let pod = std::fs::read_dir(node.log_root())
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("ns-5_pod-5_"))
        .unwrap();
    let file = pod.path().join("app/0.log");
    let text = std::fs::read_to_string(&file).unwrap();
    let corpus = Corpus::load();
    let (row, record) = (5..written.lines)
        .step_by(100)
        .find_map(|g| {
            let line = corpus::line(&corpus, g);
            text.lines().find(|r| r.ends_with(&format!(" F {line}")) && r.len() < 300).map(|r| (g, r.to_string()))
        })
        .unwrap();
    std::fs::write(&file, text.replacen(&format!("{record}\n"), "", 1)).unwrap();

    let measured = scenario::throughput(&wake(), &node, &written, &dir.path().join("state"), LIMITS).unwrap();
    let error = measured.failure.unwrap();
    assert!(error.starts_with("no record arrived for 5s"), "{error}");
    assert!(error.contains(&format!("{} of {} lines delivered", written.lines - 1, written.lines)), "{error}");
    assert_eq!(measured.figures.problems().as_deref(), Some("1 missing"));
    assert!(error.contains(&format!("first missing rows: [{row}]")), "{error}");
}

#[test]
fn cgroup_fixture_is_scraped_whole() {
    let dir = tempfile::tempdir().unwrap();
    let node = Node::new(dir.path());
    let written = corpus::write(&Corpus::load(), &node, Format::Cri, 5, Bound::Lines(5)).unwrap();
    corpus::write_cgroup_v2(&node, 5).unwrap();
    let kind = Kind::Wake {
        binary: PathBuf::from(env!("CARGO_BIN_EXE_wake")),
        extra: vec!["--metrics-interval".into(), "1s".into()],
    };
    let scrape =
        scenario::scrape(&kind, &node, &written, &dir.path().join("state"), LIMITS, Duration::from_secs(3), true)
            .unwrap();
    assert_eq!(scrape.containers_per_scrape, 5);
    assert!(scrape.scrapes >= 2 && scrape.points_per_scrape >= 5.0 * 10.0, "{scrape:?}");
}
