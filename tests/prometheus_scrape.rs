//! The real Prometheus (Debian's `prometheus` package, 2.42) scrapes a `wake server`'s and a
//! `wake agent`'s `/metrics` every second while the agent ships a pod's log lines to the
//! server. Both targets must be `up`, the self-metrics must arrive with the values the traffic
//! implies, and every metric family must follow Prometheus's naming conventions: the component's
//! prefix, `_total` on counters and on nothing else, base units (`_seconds`, `_bytes`) at the end
//! of the name, and a HELP text. docs/self-metrics.md must document every family scraped, with
//! its type, and its table is held to the same conventions (it also lists the families that
//! only appear once something happened, e.g. a refused record).
//!
//! `prometheus` must be on the PATH (scripts/test.sh installs it) or named by
//! `WAKE_TEST_PROMETHEUS`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::Write;
use std::net::SocketAddr;
use std::thread;
use std::time::{Duration, Instant};

use common::prometheus::Prometheus;
use common::{Node, WakeServer};
use reqwest::blocking::Client;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
const LINES: u64 = 40;
const SERVER_JOB: &str = "wake-server";
const AGENT_JOB: &str = "wake-agent";
/// Series Prometheus itself adds for every target.
const SYNTHETIC: &[&str] = &[
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
];

/// A running Prometheus scraping the given jobs every second, and a client of its API.
struct ScrapingPrometheus {
    prometheus: Prometheus,
    client: Client,
}

impl ScrapingPrometheus {
    fn start(jobs: &[(&str, SocketAddr)]) -> ScrapingPrometheus {
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\nscrape_configs:\n",
        );
        for (job, target) in jobs {
            config.push_str(&format!(
                "  - job_name: {job}\n    metrics_path: /metrics\n    static_configs:\n      - targets: ['{target}']\n"
            ));
        }
        let prometheus = Prometheus::start(&config, &[], "this test has the real Prometheus scrape Wake");
        let client = Client::builder().timeout(Duration::from_secs(10)).build().expect("HTTP client");
        ScrapingPrometheus { prometheus, client }
    }

    fn log_tail(&self) -> String {
        self.prometheus.log_tail()
    }

    /// The `data` of a successful API answer.
    fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let url = self.prometheus.url(path);
        let response = self.client.get(&url).query(query).send().unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let body: Value = response.json().unwrap_or_else(|e| panic!("GET {path} answered non-JSON: {e}"));
        assert_eq!(body["status"], "success", "GET {path} {query:?} answered {body}");
        body["data"].clone()
    }

    /// The instant vector `query` evaluates to now, as (labels, value).
    fn query(&self, query: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let data = self.api("/api/v1/query", &[("query", query)]);
        assert_eq!(data["resultType"], "vector", "{query}: {data}");
        data["result"]
            .as_array()
            .expect("a result array")
            .iter()
            .map(|sample| {
                let labels = sample["metric"]
                    .as_object()
                    .expect("labels")
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().expect("a label value").to_string()))
                    .collect();
                let value = sample["value"][1].as_str().and_then(|v| v.parse().ok()).expect("a sample value");
                (labels, value)
            })
            .collect()
    }

    /// Polls `query` until `accept` takes its answer; panics with the last answer.
    fn wait_for(&self, query: &str, what: &str, accept: impl Fn(&[(BTreeMap<String, String>, f64)]) -> bool) {
        let deadline = Instant::now() + WAIT;
        loop {
            let answer = self.query(query);
            if accept(&answer) {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{query}: expected {what} within {WAIT:?}, got {answer:?}\nPrometheus log:\n{}",
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits until `query` has a series whose value satisfies `accept`.
    fn wait_for_value(&self, query: &str, what: &str, accept: impl Fn(f64) -> bool) {
        self.wait_for(query, what, |answer| answer.iter().any(|(_, value)| accept(*value)));
    }
}

/// One metric family of a text exposition: its `# TYPE` and `# HELP`, and the label names of
/// its samples.
#[derive(Debug, Default)]
struct Family {
    kind: String,
    help: String,
    labels: BTreeSet<String>,
}

/// The families of a Prometheus text exposition (format 0.0.4), by name.
fn parse_exposition(text: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or_else(|| panic!("bad TYPE line {line:?}"));
            families.entry(name.to_string()).or_default().kind = kind.trim().to_string();
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            families.entry(name.to_string()).or_default().help = help.trim().to_string();
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("bad sample line {line:?}"));
            let series = &line[..name_end];
            let family = families
                .keys()
                .filter(|name| {
                    series == name.as_str()
                        || series
                            .strip_prefix(name.as_str())
                            .is_some_and(|s| ["_bucket", "_sum", "_count"].contains(&s))
                })
                .max_by_key(|name| name.len())
                .cloned()
                .unwrap_or_else(|| panic!("sample {series} has no # TYPE before it"));
            if line[name_end..].starts_with('{') {
                let labels = &line[name_end + 1..line.rfind('}').expect("closing brace")];
                for pair in labels.split("\",").filter(|p| !p.is_empty()) {
                    let label = pair.split('=').next().expect("a label name").trim();
                    if label != "le" && label != "quantile" {
                        families.get_mut(&family).expect("family").labels.insert(label.to_string());
                    }
                }
            }
        }
    }
    families
}

/// Units that are not Prometheus base units, as name tokens.
const NON_BASE_UNITS: &[&str] = &[
    "ms",
    "msec",
    "millis",
    "milliseconds",
    "us",
    "usec",
    "micros",
    "microseconds",
    "ns",
    "nanos",
    "nanoseconds",
    "secs",
    "sec",
    "minutes",
    "mins",
    "hours",
    "days",
    "kb",
    "kib",
    "kilobytes",
    "mb",
    "mib",
    "megabytes",
    "gb",
    "gib",
    "gigabytes",
    "bits",
    "percent",
];

/// What is wrong with the name of family `name` of type `kind`, exposed by the component whose
/// prefix is `prefix`.
fn convention_violations(name: &str, kind: &str, help: &str, labels: &BTreeSet<String>, prefix: &str) -> Vec<String> {
    let mut violations = Vec::new();
    let mut fail = |message: String| violations.push(format!("{name} ({kind}): {message}"));
    let snake = |s: &str| {
        !s.is_empty()
            && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
            && !s.starts_with(|c: char| c.is_ascii_digit())
            && !s.contains("__")
    };
    if !name.starts_with(prefix) {
        fail(format!("does not start with {prefix}"));
    }
    if !snake(name) {
        fail("is not snake_case".into());
    }
    if !["counter", "gauge", "histogram", "summary"].contains(&kind) {
        fail(format!("unexpected type {kind:?}"));
    }
    let is_counter = kind == "counter";
    if is_counter != name.ends_with("_total") {
        fail(if is_counter { "a counter without _total".into() } else { "_total on a non-counter".into() });
    }
    for suffix in ["_bucket", "_sum", "_count", "_info"] {
        if name.ends_with(suffix) {
            fail(format!("ends with the reserved suffix {suffix}"));
        }
    }
    let tokens: Vec<&str> = name.trim_end_matches("_total").split('_').collect();
    for token in &tokens {
        if NON_BASE_UNITS.contains(token) {
            fail(format!("unit {token:?} is not a base unit (seconds, bytes)"));
        }
    }
    // The unit is the last word (before _total).
    for unit in ["seconds", "bytes"] {
        if let Some(position) = tokens.iter().position(|t| *t == unit)
            && position != tokens.len() - 1
        {
            fail(format!("unit {unit} is not at the end of the name"));
        }
    }
    // Times are in seconds, sizes in bytes.
    if tokens.iter().any(|t| ["duration", "latency", "elapsed", "time", "age"].contains(t))
        && tokens.last() != Some(&"seconds")
    {
        fail("a time without the unit _seconds".into());
    }
    if tokens.iter().any(|t| ["size", "memory"].contains(t)) && tokens.last() != Some(&"bytes") {
        fail("a size without the unit _bytes".into());
    }
    if help.is_empty() {
        fail("no HELP text".into());
    }
    for label in labels {
        if !snake(label) || label.starts_with("__") {
            fail(format!("label {label:?} is not snake_case"));
        }
    }
    violations
}

/// The rows of docs/self-metrics.md's tables: name → (type, labels).
fn documented_metrics() -> BTreeMap<String, (String, BTreeSet<String>)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/self-metrics.md"))
        .expect("reading docs/self-metrics.md");
    let mut rows = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line.trim().trim_matches('|').split('|').map(str::trim).collect();
        if cells.len() < 4 || !cells[0].starts_with("`wake_") {
            continue;
        }
        let name = cells[0].trim_matches('`').to_string();
        let labels = cells[2]
            .split(',')
            .map(|l| l.trim().trim_matches('`').to_string())
            .filter(|l| !l.is_empty() && l != "—" && l != "-")
            .collect();
        rows.insert(name, (cells[1].to_string(), labels));
    }
    assert!(rows.len() > 10, "docs/self-metrics.md has no metric table");
    rows
}

fn get_text(client: &Client, url: &str) -> String {
    let response = client.get(url).send().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status().as_u16(), 200, "GET {url}");
    let content_type = response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
    assert!(content_type.starts_with("text/plain"), "GET {url}: content-type {content_type:?}");
    response.text().expect("a text body")
}

#[test]
fn prometheus_scrapes_the_server_and_the_agent() {
    // A node with one pod's log file, and an agent shipping it to the server.
    let node = Node::new();
    let server = WakeServer::start(&node.path("data"), &[]);
    let container_dir = node.path("var/log/pods/shop_web-1_0a1b2c3d-0000-4000-8000-000000000001/app");
    std::fs::create_dir_all(&container_dir).expect("container dir");
    let mut log = File::create(container_dir.join("0.log")).expect("a log file");
    for n in 0..LINES {
        writeln!(log, "2026-11-23T10:00:00.{n:09}Z stdout F scrape-line-{n}").expect("writing a log line");
    }
    drop(log);
    let agent = node.agent(
        &server.grpc_endpoint(),
        &["--node-name", "node-1", "--batch-timeout", "200ms", "--metrics-interval", "1s"],
    );
    server.wait_for_count("SELECT count(*) FROM logs WHERE body LIKE 'scrape-line-%'", LINES, WAIT);
    // A SQL query (above) and a flush, so that the query and flush families have series.
    server.flush();

    let prometheus = ScrapingPrometheus::start(&[(SERVER_JOB, server.http_addr), (AGENT_JOB, agent.http_addr)]);

    // Both targets up, as the targets page and the `up` series say.
    let deadline = Instant::now() + WAIT;
    loop {
        let targets = prometheus.api("/api/v1/targets", &[("state", "active")]);
        let active = targets["activeTargets"].as_array().cloned().unwrap_or_default();
        let health: BTreeMap<String, (String, String)> = active
            .iter()
            .map(|t| {
                let job = t["labels"]["job"].as_str().unwrap_or_default().to_string();
                (
                    job,
                    (
                        t["health"].as_str().unwrap_or_default().into(),
                        t["lastError"].as_str().unwrap_or_default().into(),
                    ),
                )
            })
            .collect();
        if [SERVER_JOB, AGENT_JOB].iter().all(|job| health.get(*job).is_some_and(|(h, _)| h == "up")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "targets not up within {WAIT:?}: {health:?}\nPrometheus log:\n{}",
            prometheus.log_tail()
        );
        thread::sleep(Duration::from_millis(250));
    }
    for job in [SERVER_JOB, AGENT_JOB] {
        prometheus.wait_for_value(&format!("up{{job=\"{job}\"}}"), "1", |v| v == 1.0);
    }

    // The self-metrics, with the values this traffic implies.
    let lines = LINES as f64;
    let server_job = format!("job=\"{SERVER_JOB}\"");
    let agent_job = format!("job=\"{AGENT_JOB}\"");
    for (query, what, accept) in [
        (
            format!("wake_server_records_ingested_total{{{server_job},signal=\"logs\"}}"),
            "the lines",
            Box::new(move |v: f64| v >= lines) as Box<dyn Fn(f64) -> bool>,
        ),
        (format!("wake_server_ingested_bytes_total{{{server_job},signal=\"logs\"}}"), "> 0", Box::new(|v| v > 0.0)),
        (
            format!("wake_server_otlp_requests_total{{{server_job},signal=\"logs\",transport=\"grpc\"}}"),
            "> 0",
            Box::new(|v| v > 0.0),
        ),
        (format!("wake_server_wal_written_bytes_total{{{server_job}}}"), "> 0", Box::new(|v| v > 0.0)),
        (format!("wake_server_wal_fsyncs_total{{{server_job}}}"), "> 0", Box::new(|v| v > 0.0)),
        (format!("wake_server_wal_size_bytes{{{server_job}}}"), ">= 0", Box::new(|v| v >= 0.0)),
        (format!("wake_server_files{{{server_job},signal=\"logs\"}}"), "> 0 after the flush", Box::new(|v| v > 0.0)),
        (
            format!("wake_server_stored_bytes{{{server_job},signal=\"logs\"}}"),
            "> 0 after the flush",
            Box::new(|v| v > 0.0),
        ),
        (
            format!("wake_server_flush_duration_seconds_count{{{server_job},signal=\"logs\"}}"),
            "> 0",
            Box::new(|v| v > 0.0),
        ),
        (format!("sum(wake_server_queries_total{{{server_job}}})"), "> 0", Box::new(|v| v > 0.0)),
        (format!("sum(wake_server_query_duration_seconds_count{{{server_job}}})"), "> 0", Box::new(|v| v > 0.0)),
        (format!("wake_agent_read_lines_total{{{agent_job}}}"), "the lines", Box::new(move |v| v == lines)),
        (format!("wake_agent_read_bytes_total{{{agent_job}}}"), "> 0", Box::new(|v| v > 0.0)),
        (
            format!("wake_agent_sent_records_total{{{agent_job},signal=\"logs\"}}"),
            "the lines",
            Box::new(move |v| v == lines),
        ),
        (format!("wake_agent_files_watched{{{agent_job}}}"), "1", Box::new(|v| v == 1.0)),
        (format!("wake_agent_checkpoint_lag_bytes{{{agent_job}}}"), "0, all read", Box::new(|v| v == 0.0)),
        (format!("wake_agent_checkpoint_errors_total{{{agent_job}}}"), "0", Box::new(|v| v == 0.0)),
        (format!("sum(wake_agent_export_requests_total{{{agent_job},signal=\"logs\"}})"), "> 0", Box::new(|v| v > 0.0)),
        (
            format!("sum(wake_agent_export_duration_seconds_count{{{agent_job},signal=\"logs\"}})"),
            "> 0",
            Box::new(|v| v > 0.0),
        ),
    ] {
        prometheus.wait_for_value(&query, what, accept);
    }

    // Naming conventions, over each endpoint's whole exposition.
    let client = Client::builder().timeout(Duration::from_secs(10)).build().expect("HTTP client");
    let documented = documented_metrics();
    let mut violations = Vec::new();
    let mut exposed: BTreeMap<String, String> = BTreeMap::new();
    for (prefix, url) in
        [("wake_server_", server.api_url("/metrics")), ("wake_agent_", format!("http://{}/metrics", agent.http_addr))]
    {
        let families = parse_exposition(&get_text(&client, &url));
        assert!(families.len() >= 8, "{url}: only {families:?}");
        for (name, family) in &families {
            violations.extend(convention_violations(name, &family.kind, &family.help, &family.labels, prefix));
            match documented.get(name) {
                None => violations.push(format!("{name}: not in docs/self-metrics.md")),
                Some((kind, labels)) => {
                    if *kind != family.kind {
                        violations
                            .push(format!("{name}: docs/self-metrics.md says {kind}, /metrics says {}", family.kind));
                    }
                    if *labels != family.labels {
                        violations.push(format!(
                            "{name}: docs/self-metrics.md lists labels {labels:?}, /metrics has {:?}",
                            family.labels
                        ));
                    }
                }
            }
            exposed.insert(name.clone(), family.kind.clone());
        }
    }
    // The documented families the traffic did not produce (e.g. refused records) follow the
    // conventions too.
    for (name, (kind, labels)) in &documented {
        let prefix = if name.starts_with("wake_agent_") { "wake_agent_" } else { "wake_server_" };
        violations.extend(convention_violations(name, kind, "documented", labels, prefix));
    }

    // Everything Prometheus stored came from those families (or is its own per-target series).
    let names = prometheus.api("/api/v1/label/__name__/values", &[]);
    for name in names.as_array().expect("a list of names") {
        let name = name.as_str().expect("a name");
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| name.strip_suffix(suffix).filter(|f| exposed.get(*f).is_some_and(|k| k == "histogram")))
            .unwrap_or(name);
        if !exposed.contains_key(family) && !SYNTHETIC.contains(&name) {
            violations.push(format!("{name}: stored by Prometheus but in neither /metrics"));
        }
    }
    violations.sort();
    violations.dedup();
    assert!(violations.is_empty(), "naming convention violations:\n{}", violations.join("\n"));
}

#[test]
fn the_convention_check_catches_bad_names() {
    let none = BTreeSet::new();
    let bad = [
        ("wake_server_requests", "counter"),
        ("wake_server_files_total", "gauge"),
        ("wake_server_flush_duration_ms", "histogram"),
        ("wake_server_query_duration", "histogram"),
        ("wake_server_bytes_stored", "gauge"),
        ("wake_server_wal_size", "gauge"),
        ("wake_agent_read_bytes_total", "counter"),
        ("wakeServerThings", "gauge"),
    ];
    for (name, kind) in bad {
        assert!(!convention_violations(name, kind, "help", &none, "wake_server_").is_empty(), "{name} passed");
    }
    let good = [
        ("wake_server_records_ingested_total", "counter"),
        ("wake_server_flush_duration_seconds", "histogram"),
        ("wake_server_wal_size_bytes", "gauge"),
        ("wake_server_files", "gauge"),
    ];
    for (name, kind) in good {
        assert_eq!(convention_violations(name, kind, "help", &none, "wake_server_"), Vec::<String>::new());
    }
    assert!(!convention_violations("wake_server_files", "gauge", "", &none, "wake_server_").is_empty(), "no HELP");
}
