//! The SQL endpoint over real logs (the 16 loghub samples): acknowledged data is
//! queryable within 2 s, `matches()` answers exactly what an equivalent regular expression
//! answers (before and after the flush, i.e. from the scan and from the tantivy index), the plan
//! shows the index doing the work, attributes are reachable by key, CSV works, and anything that
//! is not a read-only query is refused.

mod common;

use std::time::{Duration, Instant};

use common::{WakeServer, attribute, log_request, now_ns, string_value};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use prost::Message;
use serde_json::Value;

/// The loghub samples (see tests/data/loghub/LICENSE), 2,000 lines from each of 16 systems.
const SAMPLES: [&str; 16] = [
    "Android",
    "Apache",
    "BGL",
    "HDFS",
    "HPC",
    "Hadoop",
    "HealthApp",
    "Linux",
    "Mac",
    "OpenSSH",
    "OpenStack",
    "Proxifier",
    "Spark",
    "Thunderbird",
    "Windows",
    "Zookeeper",
];
const LINES: u64 = 32_000;
const BATCH: usize = 500;

/// The lines of a sample, sent with `service.name` = the system's name in lower case.
fn sample_lines(system: &str) -> Vec<String> {
    let path = format!("{}/tests/data/loghub/{system}_2k.log.gz", env!("CARGO_MANIFEST_DIR"));
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let mut text = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(file), &mut text).expect("gunzip");
    text.lines().map(str::to_string).collect()
}

/// Full-text queries in tantivy syntax, each with a SQL condition of case-insensitive regular
/// expressions that selects the same lines under tantivy's default tokenizer (alphanumeric runs,
/// lowercased).
const QUERIES: [(&str, &str); 9] = [
    ("failed", r"regexp_like(lower(body), '(^|[^a-z0-9])failed([^a-z0-9]|$)')"),
    ("\"invalid user\"", r"regexp_like(lower(body), '(^|[^a-z0-9])invalid[^a-z0-9]+user([^a-z0-9]|$)')"),
    (
        "preauth AND webmaster",
        "regexp_like(lower(body), '(^|[^a-z0-9])preauth([^a-z0-9]|$)') \
         AND regexp_like(lower(body), '(^|[^a-z0-9])webmaster([^a-z0-9]|$)')",
    ),
    ("PacketResponder", r"regexp_like(lower(body), '(^|[^a-z0-9])packetresponder([^a-z0-9]|$)')"),
    ("blk_38865049064139660", r"regexp_like(lower(body), '(^|[^a-z0-9])blk[^a-z0-9]+38865049064139660([^a-z0-9]|$)')"),
    ("exception", r"regexp_like(lower(body), '(^|[^a-z0-9])exception([^a-z0-9]|$)')"),
    ("kernel OR ciod", r"regexp_like(lower(body), '(^|[^a-z0-9])(kernel|ciod)([^a-z0-9]|$)')"),
    (
        "error -interrupt",
        "regexp_like(lower(body), '(^|[^a-z0-9])error([^a-z0-9]|$)') \
         AND NOT regexp_like(lower(body), '(^|[^a-z0-9])interrupt([^a-z0-9]|$)')",
    ),
    ("nosuchwordanywhere", "strpos(lower(body), 'nosuchwordanywhere') > 0"),
];

fn send_samples(server: &WakeServer) -> u64 {
    let client = server.client();
    let mut sent = 0;
    for system in SAMPLES {
        let lines = sample_lines(system);
        for (batch_index, batch) in lines.chunks(BATCH).enumerate() {
            let records = batch
                .iter()
                .enumerate()
                .map(|(i, line)| LogRecord {
                    time_unix_nano: now_ns(),
                    severity_number: 9,
                    severity_text: "INFO".into(),
                    body: Some(string_value(line)),
                    attributes: vec![attribute("line_no", &(batch_index * BATCH + i + 1).to_string())],
                    ..Default::default()
                })
                .collect();
            let response = client
                .post(server.otlp_url("/v1/logs"))
                .header("Content-Type", "application/x-protobuf")
                .body(log_request(&system.to_lowercase(), records).encode_to_vec())
                .send()
                .expect("POST /v1/logs");
            assert_eq!(response.status(), 200, "{}", response.text().unwrap_or_default());
            sent += batch.len() as u64;
        }
    }
    sent
}

/// The set of (service, line number) pairs `sql` selects.
fn line_ids(server: &WakeServer, condition: &str) -> Vec<(String, u64)> {
    let rows = server.sql_rows(&format!(
        "SELECT service_name, CAST(attributes['line_no'] AS BIGINT) AS n FROM logs WHERE {condition} ORDER BY 1, 2"
    ));
    rows.into_iter()
        .map(|row| (row[0].as_str().expect("service_name").to_string(), row[1].as_u64().expect("line number")))
        .collect()
}

fn check_matches_agree_with_regex(server: &WakeServer, moment: &str) {
    for (query, scan_condition) in QUERIES {
        let literal = query.replace('\'', "''");
        let by_index = line_ids(server, &format!("matches(body, '{literal}')"));
        let by_regex = line_ids(server, scan_condition);
        assert_eq!(by_index, by_regex, "{moment}: matches(body, {query:?}) and the regex disagree");
    }
    // Substrings, as LogQL's `|=`: the index narrows, the text decides, case-sensitively.
    for needle in
        ["Failed password", "blk_-", "PacketResponder 1 for", "10.", "java.io", "ERROR", "error", "=", "zzz-none"]
    {
        let literal = needle.replace('\'', "''");
        let narrowed = line_ids(server, &format!("contains_text(body, '{literal}')"));
        let scanned = line_ids(server, &format!("strpos(body, '{literal}') > 0"));
        assert_eq!(narrowed, scanned, "{moment}: contains_text(body, {needle:?})");
    }

    // The queries are not vacuous: the samples hold most of them many times.
    for word in ["failed", "PacketResponder", "exception", "error"] {
        let hits = line_ids(server, &format!("matches(body, '{word}')"));
        assert!(hits.len() > 20, "{moment}: {word:?} has only {} hits", hits.len());
        // A word match is a substring match too: LIKE finds a superset (e.g. `errors`).
        let like = line_ids(server, &format!("body ILIKE '%{word}%'"));
        assert!(hits.iter().all(|hit| like.contains(hit)), "{moment}: {word:?} matched what ILIKE did not");
    }
}

#[test]
fn matches_agrees_with_a_scan_and_uses_the_index_after_flush() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = WakeServer::start(dir.path(), &[]);
    let sent = send_samples(&server);
    assert_eq!(sent, LINES);

    // Acknowledged means queryable within 2 s, flushed or not.
    let acknowledged_at = Instant::now();
    server.wait_for_count("SELECT count(*) FROM logs", sent, Duration::from_secs(2));
    eprintln!("all {sent} acknowledged records queryable after {:?}", acknowledged_at.elapsed());

    check_matches_agree_with_regex(&server, "buffered");
    server.flush();
    check_matches_agree_with_regex(&server, "flushed");

    // The flushed rows are answered from the tantivy index: the plan says so and how many rows
    // it selected: the blocks of 16 rows (`index_rows_per_document`) that hold the matching
    // lines, not all 32,000.
    let failed = line_ids(&server, "matches(body, 'failed')").len();
    let plan = explain(&server, "SELECT count(*) FROM logs WHERE matches(body, 'failed')");
    assert!(plan.contains("FullTextSearchExec"), "{plan}");
    let selected: usize = plan
        .split("rows_selected=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("no rows_selected in {plan}"));
    assert!(plan.contains(&format!("rows_selected={selected} of {sent}")), "{plan}");
    assert!(
        (failed..=failed * 16).contains(&selected) && selected < sent as usize / 4,
        "{failed} lines, {selected}: {plan}"
    );
    assert!(plan.contains("files_searched=") && !plan.contains("files_searched=0"), "{plan}");

    let needle_hits = line_ids(&server, "contains_text(body, 'Failed password')").len();
    let plan = explain(&server, "SELECT count(*) FROM logs WHERE contains_text(body, 'Failed password')");
    assert!(plan.contains("FullTextSearchExec"), "{plan}");
    assert!(plan.contains("rows_selected="), "{plan}");
    assert!(needle_hits > 0);

    // A query the index cannot answer (a function of the body) is still correct, by scanning.
    let upper = server.count("SELECT count(*) FROM logs WHERE matches(upper(body), 'FAILED')");
    assert_eq!(upper as usize, failed);

    // A bad tantivy query is the client's fault.
    let (status, body) = server.sql_response("SELECT count(*) FROM logs WHERE matches(body, 'AND (')");
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("error"), "{body}");
}

fn explain(server: &WakeServer, sql: &str) -> String {
    let rows = server.sql_rows(&format!("EXPLAIN {sql}"));
    rows.iter()
        .map(|row| row.iter().map(|v| v.as_str().unwrap_or_default().to_string()).collect::<Vec<_>>().join("\n"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn attributes_by_key_csv_and_get() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = WakeServer::start(dir.path(), &[]);
    send_samples(&server);
    server.wait_for_count("SELECT count(*) FROM logs", LINES, Duration::from_secs(2));

    let first_ssh_line = sample_lines("OpenSSH").swap_remove(0);
    let rows = server.sql_rows(
        "SELECT body, attributes['line_no'], service_name FROM logs \
         WHERE service_name = 'openssh' AND attributes['line_no'] = '1'",
    );
    assert_eq!(rows, vec![vec![Value::from(first_ssh_line), Value::from("1"), Value::from("openssh")]]);

    let csv = server
        .client()
        .post(server.api_url("/api/v1/sql"))
        .header("Accept", "text/csv")
        .json(&serde_json::json!({
            "sql": "SELECT service_name, count(*) AS n FROM logs \
                    WHERE service_name IN ('hdfs', 'openssh') GROUP BY service_name ORDER BY service_name"
        }))
        .send()
        .expect("POST /api/v1/sql");
    assert_eq!(csv.status(), 200);
    assert!(csv.headers()["content-type"].to_str().unwrap_or_default().starts_with("text/csv"));
    assert_eq!(csv.text().expect("body"), "service_name,n\nhdfs,2000\nopenssh,2000\n");

    let get = server
        .client()
        .get(
            reqwest::Url::parse_with_params(
                &server.api_url("/api/v1/sql"),
                [("sql", "SELECT count(*) AS n FROM logs WHERE service_name = 'hdfs'")],
            )
            .expect("URL"),
        )
        .send()
        .expect("GET /api/v1/sql");
    assert_eq!(get.status(), 200);
    let answer: Value = get.json().expect("JSON");
    assert_eq!(answer["columns"], serde_json::json!(["n"]));
    assert_eq!(answer["rows"], serde_json::json!([[2000]]));
}

#[test]
fn anything_but_reading_the_store_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = WakeServer::start(dir.path(), &[]);
    let outside = dir.path().join("outside.csv");
    std::fs::write(&outside, "a\n1\n").expect("writing a file outside the store");
    let outside = outside.display().to_string();

    let refused = [
        "CREATE TABLE t AS SELECT 1".to_string(),
        "CREATE VIEW v AS SELECT * FROM logs".to_string(),
        format!("CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '{outside}'"),
        "INSERT INTO logs (body) VALUES ('forged')".to_string(),
        "DELETE FROM logs".to_string(),
        "DROP TABLE logs".to_string(),
        format!("COPY (SELECT 1) TO '{outside}.out'"),
        "SET datafusion.execution.batch_size = 1".to_string(),
        format!("SELECT * FROM '{outside}'"),
    ];
    for sql in &refused {
        let (status, body) = server.sql_response(sql);
        assert!((400..500).contains(&status), "{sql:?} answered {status}: {body}");
        let error: Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("{sql:?}: non-JSON error ({e}): {body}"));
        assert!(error["error"].as_str().is_some_and(|m| !m.is_empty()), "{sql:?}: {body}");
    }
    assert!(!std::path::Path::new(&format!("{outside}.out")).exists(), "COPY wrote a file");
    assert_eq!(server.count("SELECT count(*) FROM logs"), 0, "nothing was inserted");

    for (sql, status) in
        [("SELEC 1", 400), ("SELECT no_such_column FROM logs", 400), ("SELECT * FROM no_such_table", 400)]
    {
        let (actual, body) = server.sql_response(sql);
        assert_eq!(actual, status, "{sql:?}: {body}");
    }
    let malformed = server
        .client()
        .post(server.api_url("/api/v1/sql"))
        .header("Content-Type", "application/json")
        .body("{not json")
        .send()
        .expect("POST /api/v1/sql");
    assert_eq!(malformed.status(), 400);

    // The tables and their fixed columns are visible to SQL clients.
    let tables = server
        .sql_rows("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY table_name");
    let names = ["containers", "logs", "metrics", "spans"];
    assert_eq!(tables, names.map(|name| vec![Value::from(name)]).to_vec());
}
