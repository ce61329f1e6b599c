//! Wake's Prometheus API against the real Prometheus (Debian's `prometheus` package, 2.42):
//! the same deterministic data set goes to both through remote write, then every expression of
//! tests/promql/expressions.txt runs on both as instant queries at three times and as range
//! queries at two steps, and the answers must agree (status, error type, result type, label
//! sets, timestamps and values within 1e-9 relative). A second test sends the requests
//! Grafana's Prometheus data source sends (health check, metric browser, series, form-encoded
//! POSTs, errors) and compares those answers.
//!
//! Every difference is collected and the test fails once, at the end, with all of them.
//!
//! `prometheus` must be on the PATH (scripts/test.sh installs it) or named by
//! `WAKE_TEST_PROMETHEUS`. `WAKE_TEST_PROMQL_SELF_CHECK=1` compares a second Prometheus instead
//! of Wake, which checks the harness itself: it must pass with zero differences.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::WakeServer;
use common::prometheus::Prometheus;
use prost::Message;
use reqwest::blocking::{Client, RequestBuilder};
use serde_json::Value;
use wake_storage::prompb::{Label, Sample, TimeSeries, WriteRequest};

/// The expressions; see the header of the file for its format.
const EXPRESSIONS: &str = include_str!("promql/expressions.txt");
const MIN_EXPRESSIONS: usize = 150;

const SECOND_MS: i64 = 1_000;
const MINUTE_MS: i64 = 60 * SECOND_MS;
/// The data spans an hour and ends 10 minutes before the test starts.
const SPAN_MS: i64 = 60 * MINUTE_MS;
const END_BEFORE_NOW_MS: i64 = 10 * MINUTE_MS;
const SCRAPE_MS: i64 = 15 * SECOND_MS;
const JITTER_MS: i64 = 1_500;
/// Remote write batches cover 5 minutes of every series, in time order: Prometheus's head
/// refuses samples more than an hour older than the newest one it has.
const BATCH_MS: i64 = 5 * MINUTE_MS;
/// The `staleness marker` Prometheus writes when a series disappears (`value.StaleNaN`).
const STALE_NAN: u64 = 0x7ff0_0000_0000_0002;
/// The NaN Prometheus uses for ordinary NaN values (`value.NormalNaN`).
const NORMAL_NAN: u64 = 0x7ff8_0000_0000_0001;

const WORKERS: usize = 8;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------------------------
// The data set

/// SplitMix64: a small seeded generator, so that every run writes the same values.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [low, high].
    fn range(&mut self, low: i64, high: i64) -> i64 {
        low + (self.next_u64() % (high - low + 1) as u64) as i64
    }

    fn chance(&mut self, probability: f64) -> bool {
        self.unit() < probability
    }
}

struct Series {
    /// Sorted by name, `__name__` included.
    labels: Vec<(String, String)>,
    /// (Unix ms, value), in time order.
    samples: Vec<(i64, f64)>,
}

/// A temperature from the minutes since the start and noise in [-1, 1).
type Temperature = fn(f64, f64) -> f64;
/// special_values' value at the nth scrape.
type SpecialValue = fn(usize) -> f64;

struct DataSet {
    start_ms: i64,
    end_ms: i64,
    series: Vec<Series>,
}

fn series(name: &str, labels: &[(&str, &str)], samples: Vec<(i64, f64)>) -> Series {
    let mut all: Vec<(String, String)> = vec![("__name__".into(), name.into())];
    all.extend(labels.iter().map(|(n, v)| (n.to_string(), v.to_string())));
    all.sort();
    Series { labels: all, samples }
}

fn round_to(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

impl DataSet {
    /// The data set of a test run at `now_ms`: an hour of 15 s scrapes, the hour ending
    /// 10 minutes before `now_ms` (on a whole minute). Values and times relative to the start
    /// are the same on every run.
    fn generate(now_ms: i64) -> DataSet {
        let end_ms = now_ms / MINUTE_MS * MINUTE_MS - END_BEFORE_NOW_MS;
        let start_ms = end_ms - SPAN_MS;
        let mut data = DataSet { start_ms, end_ms, series: Vec::new() };
        let mut rng = Rng(0x5eed_5eed_5eed);
        data.add_http_requests(&mut rng);
        data.add_up_and_info(&mut rng);
        data.add_gauges(&mut rng);
        data.add_histograms(&mut rng);
        data.add_gaps_and_staleness(&mut rng);
        data.add_special_values(&mut rng);
        data.add_many_series(&mut rng);
        data
    }

    /// `minutes` after the start, in Unix ms.
    fn at(&self, minutes: f64) -> i64 {
        self.start_ms + (minutes * MINUTE_MS as f64) as i64
    }

    /// Scrape times from `from_ms` to `to_ms`: every 15 s after a random phase, each ±1.5 s.
    fn scrapes(&self, rng: &mut Rng, from_ms: i64, to_ms: i64) -> Vec<i64> {
        let phase = rng.range(0, SCRAPE_MS - 1);
        (0..)
            .map(|i| from_ms + phase + i * SCRAPE_MS + rng.range(-JITTER_MS, JITTER_MS))
            .take_while(|&t| t <= to_ms)
            .collect()
    }

    fn all_scrapes(&self, rng: &mut Rng) -> Vec<i64> {
        self.scrapes(rng, self.start_ms, self.end_ms)
    }

    /// A counter: increments of 0 to 2 × `per_second` × 15 s, back to zero at `resets` (Unix
    /// ms) and now and then at random.
    fn counter(rng: &mut Rng, times: &[i64], per_second: f64, resets: &[i64]) -> Vec<(i64, f64)> {
        let mut value = rng.range(0, 1_000) as f64;
        let mut previous = i64::MIN;
        times
            .iter()
            .map(|&t| {
                if resets.iter().any(|&r| previous < r && r <= t) || rng.chance(0.004) {
                    value = 0.0;
                }
                previous = t;
                value += (per_second * 15.0 * 2.0 * rng.unit()).floor();
                (t, value)
            })
            .collect()
    }

    /// http_requests_total: 16 counters, host-b restarting (resetting) at minute 25.
    fn add_http_requests(&mut self, rng: &mut Rng) {
        let restart = self.at(25.0);
        for instance in ["host-a:9100", "host-b:9100", "host-c:9100"] {
            for method in ["GET", "POST"] {
                for (code, per_second) in [("200", 4.0), ("500", 0.05)] {
                    let per_second = if method == "POST" { per_second / 3.0 } else { per_second };
                    let times = self.all_scrapes(rng);
                    let resets: &[i64] = if instance == "host-b:9100" { &[restart] } else { &[] };
                    let samples = Self::counter(rng, &times, per_second, resets);
                    let labels = [("job", "api"), ("instance", instance), ("method", method), ("code", code)];
                    self.series.push(series("http_requests_total", &labels, samples));
                }
            }
        }
        for instance in ["host-d:8080", "host-e:8080"] {
            for (code, per_second) in [("200", 9.0), ("404", 0.3)] {
                let times = self.all_scrapes(rng);
                let samples = Self::counter(rng, &times, per_second, &[]);
                let labels = [("job", "web"), ("instance", instance), ("method", "GET"), ("code", code)];
                self.series.push(series("http_requests_total", &labels, samples));
            }
        }
    }

    /// up for 8 targets (host-c:9100 down from minute 40 to 45) and node_info for the 5
    /// application instances.
    fn add_up_and_info(&mut self, rng: &mut Rng) {
        let targets = [
            ("api", "host-a:9100"),
            ("api", "host-b:9100"),
            ("api", "host-c:9100"),
            ("web", "host-d:8080"),
            ("web", "host-e:8080"),
            ("node", "host-a:9101"),
            ("node", "host-b:9101"),
            ("node", "host-c:9101"),
        ];
        let (down_from, down_to) = (self.at(40.0), self.at(45.0));
        for (job, instance) in targets {
            let samples = self
                .all_scrapes(rng)
                .into_iter()
                .map(|t| {
                    let down = instance == "host-c:9100" && (down_from..down_to).contains(&t);
                    (t, if down { 0.0 } else { 1.0 })
                })
                .collect();
            self.series.push(series("up", &[("job", job), ("instance", instance)], samples));
            if job != "node" {
                let version = if instance.starts_with("host-a") { "1.3.0" } else { "1.2.3" };
                let samples = self.all_scrapes(rng).into_iter().map(|t| (t, 1.0)).collect();
                let labels = [("job", "inventory"), ("instance", instance), ("version", version), ("os", "linux")];
                self.series.push(series("node_info", &labels, samples));
            }
        }
    }

    /// node_memory_bytes (large integers, random walks) and temperature_celsius (one decimal,
    /// negative in the freezer and around zero outside).
    fn add_gauges(&mut self, rng: &mut Rng) {
        for instance in ["host-a:9101", "host-b:9101", "host-c:9101"] {
            for (kind, base) in [("used", 4.0e9), ("free", 12.0e9)] {
                let mut value = base + rng.range(-500_000_000, 500_000_000) as f64;
                let samples = self
                    .all_scrapes(rng)
                    .into_iter()
                    .map(|t| {
                        value += rng.range(-50_000_000, 50_000_000) as f64;
                        (t, value)
                    })
                    .collect();
                let labels = [("job", "node"), ("instance", instance), ("type", kind)];
                self.series.push(series("node_memory_bytes", &labels, samples));
            }
        }
        let start = self.start_ms as f64;
        let locations: [(&str, Temperature); 4] = [
            ("outside", |minutes, noise| -2.0 + 6.0 * (minutes / 40.0 * std::f64::consts::TAU).sin() + noise / 2.0),
            ("freezer", |_, noise| -18.0 + 1.5 * noise),
            ("room", |_, noise| 21.5 + 0.3 * noise),
            ("server_room", |minutes, noise| 28.0 + minutes / 15.0 + noise),
        ];
        for (location, temperature) in locations {
            let samples = self
                .all_scrapes(rng)
                .into_iter()
                .map(|t| {
                    let minutes = (t as f64 - start) / MINUTE_MS as f64;
                    let noise = 2.0 * rng.unit() - 1.0;
                    (t, round_to(temperature(minutes, noise), 1))
                })
                .collect();
            self.series.push(series("temperature_celsius", &[("job", "sensors"), ("location", location)], samples));
        }
    }

    /// request_duration_seconds: a classic histogram for two instances, host-b restarting
    /// (all series back to zero) at minute 25 and host-a idle from minute 50 to 54.
    fn add_histograms(&mut self, rng: &mut Rng) {
        const BOUNDS: [(&str, f64); 12] = [
            ("0.005", 0.005),
            ("0.01", 0.01),
            ("0.025", 0.025),
            ("0.05", 0.05),
            ("0.1", 0.1),
            ("0.25", 0.25),
            ("0.5", 0.5),
            ("1", 1.0),
            ("2.5", 2.5),
            ("5", 5.0),
            ("10", 10.0),
            ("+Inf", f64::INFINITY),
        ];
        let restart = self.at(25.0);
        let (idle_from, idle_to) = (self.at(50.0), self.at(54.0));
        for instance in ["host-a:9100", "host-b:9100"] {
            let times = self.all_scrapes(rng);
            let mut buckets = vec![Vec::new(); BOUNDS.len()];
            let mut sums = Vec::new();
            let mut counts = Vec::new();
            let (mut bucket_values, mut sum, mut count) = ([0.0; BOUNDS.len()], 0.0, 0.0);
            let mut previous = i64::MIN;
            for &t in &times {
                if instance == "host-b:9100" && previous < restart && restart <= t {
                    (bucket_values, sum, count) = ([0.0; BOUNDS.len()], 0.0, 0.0);
                }
                previous = t;
                let idle = instance == "host-a:9100" && (idle_from..idle_to).contains(&t);
                let observations = if idle { 0 } else { rng.range(0, 25) };
                for _ in 0..observations {
                    let mut seconds = -(1.0 - rng.unit()).ln() * 0.15;
                    if rng.chance(0.05) {
                        seconds *= 20.0;
                    }
                    for (value, (_, bound)) in bucket_values.iter_mut().zip(BOUNDS) {
                        if seconds <= bound {
                            *value += 1.0;
                        }
                    }
                    sum += seconds;
                    count += 1.0;
                }
                for (samples, value) in buckets.iter_mut().zip(bucket_values) {
                    samples.push((t, value));
                }
                sums.push((t, sum));
                counts.push((t, count));
            }
            for ((le, _), samples) in BOUNDS.iter().zip(buckets) {
                let labels = [("job", "api"), ("instance", instance), ("le", *le)];
                self.series.push(series("request_duration_seconds_bucket", &labels, samples));
            }
            let labels = [("job", "api"), ("instance", instance)];
            self.series.push(series("request_duration_seconds_sum", &labels, sums));
            self.series.push(series("request_duration_seconds_count", &labels, counts));
        }
    }

    /// Series with gaps longer than the 5 min lookback, series that end with a staleness marker
    /// (one restarting later), and series that start midway.
    fn add_gaps_and_staleness(&mut self, rng: &mut Rng) {
        // batch_jobs_processed_total: worker-1 silent from minute 10 to 17 and 40 to 52,
        // worker-2 from 25 to 28 (within the lookback).
        let gaps = [
            ("worker-1", vec![(self.at(10.0), self.at(17.0)), (self.at(40.0), self.at(52.0))]),
            ("worker-2", vec![(self.at(25.0), self.at(28.0))]),
        ];
        for (instance, gaps) in gaps {
            let times: Vec<i64> = self
                .all_scrapes(rng)
                .into_iter()
                .filter(|t| !gaps.iter().any(|gap| (gap.0..gap.1).contains(t)))
                .collect();
            let samples = Self::counter(rng, &times, 2.0, &[]);
            self.series.push(series(
                "batch_jobs_processed_total",
                &[("job", "batch"), ("instance", instance)],
                samples,
            ));
        }

        // flaky_gauge and flaky_requests_total: a staleness marker at the first scrape after
        // minute 20, nothing until minute 35, then samples again (the counter from zero).
        let (vanish, restart) = (self.at(20.0), self.at(35.0));
        let times = self.all_scrapes(rng);
        let mut gauge = Vec::new();
        let mut counter = Vec::new();
        let mut total = 100.0;
        let mut marked = false;
        for &t in &times {
            if (vanish..restart).contains(&t) {
                if !marked {
                    gauge.push((t, f64::from_bits(STALE_NAN)));
                    counter.push((t, f64::from_bits(STALE_NAN)));
                    marked = true;
                }
                continue;
            }
            if t >= restart && marked {
                total = 0.0;
                marked = false;
            }
            total += rng.range(0, 12) as f64;
            gauge.push((t, round_to(100.0 * rng.unit(), 2)));
            counter.push((t, total));
        }
        self.series.push(series("flaky_gauge", &[("job", "flaky"), ("instance", "f-1")], gauge));
        self.series.push(series("flaky_requests_total", &[("job", "flaky"), ("instance", "f-1")], counter));

        // ephemeral_gauge: ends with a staleness marker at minute 45.
        let vanish = self.at(45.0);
        let mut samples = Vec::new();
        for t in self.all_scrapes(rng) {
            if t >= vanish {
                samples.push((t, f64::from_bits(STALE_NAN)));
                break;
            }
            samples.push((t, rng.range(-50, 50) as f64));
        }
        self.series.push(series("ephemeral_gauge", &[("job", "flaky"), ("instance", "f-2")], samples));

        // late_starter_total starts at minute 30; short_lived lives from minute 10 to 14 and
        // ends without a marker.
        let times = self.scrapes(rng, self.at(30.0), self.end_ms);
        let mut samples = Self::counter(rng, &times, 1.5, &[]);
        let first = samples[0].1;
        samples.iter_mut().for_each(|(_, value)| *value -= first);
        self.series.push(series("late_starter_total", &[("job", "late"), ("instance", "l-1")], samples));
        let samples =
            self.scrapes(rng, self.at(10.0), self.at(14.0)).into_iter().map(|t| (t, rng.unit() * 10.0)).collect();
        self.series.push(series("short_lived", &[("job", "late"), ("instance", "l-2")], samples));
    }

    /// special_values: zero, negative, huge, tiny, NaN and +Inf.
    fn add_special_values(&mut self, rng: &mut Rng) {
        let kinds: [(&str, SpecialValue); 7] = [
            ("zero", |_| 0.0),
            ("negative", |i| if i % 2 == 0 { -5.5 } else { -7.25 }),
            ("large", |i| 1e300 * (1 + i % 3) as f64),
            ("tiny", |_| 1e-300),
            ("nan", |_| f64::from_bits(NORMAL_NAN)),
            ("inf", |_| f64::INFINITY),
            ("minus_one", |_| -1.0),
        ];
        for (kind, value) in kinds {
            let samples = self.all_scrapes(rng).into_iter().enumerate().map(|(i, t)| (t, value(i))).collect();
            self.series.push(series("special_values", &[("job", "special"), ("kind", kind)], samples));
        }
    }

    /// many_series: 120 series in 4 zones; an integer from 0 to 1000 that changes at about a
    /// third of the scrapes, plus shard/1000 so that no two series ever tie (topk, bottomk).
    fn add_many_series(&mut self, rng: &mut Rng) {
        for shard in 0..120 {
            let (shard_label, zone) = (shard.to_string(), format!("z{}", shard % 4));
            let mut whole = rng.range(0, 1_000);
            let samples = self
                .all_scrapes(rng)
                .into_iter()
                .map(|t| {
                    if rng.chance(0.3) {
                        whole = rng.range(0, 1_000);
                    }
                    (t, whole as f64 + shard as f64 / 1_000.0)
                })
                .collect();
            let labels = [("job", "many"), ("shard", shard_label.as_str()), ("zone", zone.as_str())];
            self.series.push(series("many_series", &labels, samples));
        }
    }

    /// Snappy-compressed remote write bodies, each with 5 minutes of every series, in time
    /// order.
    fn remote_write_bodies(&self) -> Vec<Vec<u8>> {
        let first = self.series.iter().filter_map(|s| s.samples.first()).map(|s| s.0).min().expect("samples");
        let last = self.series.iter().filter_map(|s| s.samples.last()).map(|s| s.0).max().expect("samples");
        let mut bodies = Vec::new();
        let mut from = first;
        while from <= last {
            let to = from + BATCH_MS;
            let timeseries: Vec<TimeSeries> = self
                .series
                .iter()
                .filter_map(|s| {
                    let samples: Vec<Sample> = s
                        .samples
                        .iter()
                        .filter(|(t, _)| (from..to).contains(t))
                        .map(|&(timestamp, value)| Sample { value, timestamp })
                        .collect();
                    let labels = s
                        .labels
                        .iter()
                        .map(|(name, value)| Label { name: name.clone(), value: value.clone() })
                        .collect();
                    (!samples.is_empty()).then_some(TimeSeries { labels, samples })
                })
                .collect();
            let request = WriteRequest { timeseries, metadata: Vec::new() };
            let body = snap::raw::Encoder::new().compress_vec(&request.encode_to_vec()).expect("snappy compression");
            bodies.push(body);
            from = to;
        }
        bodies
    }

    fn sample_count(&self) -> usize {
        self.series.iter().map(|s| s.samples.len()).sum()
    }
}

// ---------------------------------------------------------------------------------------------
// The servers

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970").as_millis() as i64
}

/// Unix ms as the seconds the Prometheus API takes, e.g. `1700000000.25`.
fn secs(ms: i64) -> String {
    let text = format!("{}.{:03}", ms.div_euclid(1_000), ms.rem_euclid(1_000));
    text.trim_end_matches('0').trim_end_matches('.').to_string()
}

/// The reference: a Prometheus with remote write receiving enabled and nothing to scrape.
fn start_prometheus() -> Prometheus {
    Prometheus::start(
        "global: {}\nscrape_configs: []\n",
        &["--web.enable-remote-write-receiver"],
        "the PromQL compatibility tests compare Wake with the real Prometheus",
    )
}

/// What the answers of Prometheus are compared with: Wake, or a second Prometheus when the
/// harness checks itself.
enum Candidate {
    // The server before its data directory: fields drop in order.
    Wake { server: WakeServer, _dir: tempfile::TempDir },
    Prometheus(Prometheus),
}

impl Candidate {
    fn start() -> Candidate {
        if std::env::var("WAKE_TEST_PROMQL_SELF_CHECK").is_ok_and(|v| !v.is_empty() && v != "0") {
            return Candidate::Prometheus(start_prometheus());
        }
        let dir = tempfile::tempdir().expect("a temporary directory");
        Candidate::Wake { server: WakeServer::start(dir.path(), &[]), _dir: dir }
    }

    fn name(&self) -> &'static str {
        match self {
            Candidate::Wake { .. } => "Wake",
            Candidate::Prometheus(_) => "Prometheus#2",
        }
    }

    fn url(&self, path: &str) -> String {
        match self {
            Candidate::Wake { server, .. } => server.api_url(path),
            Candidate::Prometheus(prometheus) => prometheus.url(path),
        }
    }

    fn log_tail(&self) -> String {
        match self {
            Candidate::Wake { server, .. } => server.log_tail(),
            Candidate::Prometheus(prometheus) => prometheus.log_tail(),
        }
    }

    /// Makes written data queryable.
    fn flush(&self) {
        if let Candidate::Wake { server, .. } = self {
            server.flush();
        }
    }
}

/// Prometheus and the candidate, holding the same data.
struct Servers {
    client: Client,
    data: DataSet,
    reference: Prometheus,
    candidate: Candidate,
    /// Remote writes the candidate refused.
    write_problems: Vec<String>,
}

impl Servers {
    /// Starts both servers and writes the data set to both.
    fn start() -> Servers {
        let (reference, candidate) = thread::scope(|s| {
            let reference = s.spawn(start_prometheus);
            let candidate = Candidate::start();
            (reference.join().expect("starting Prometheus"), candidate)
        });
        let client = Client::builder().timeout(REQUEST_TIMEOUT).build().expect("HTTP client");
        let data = DataSet::generate(now_ms());
        let mut servers = Servers { client, data, reference, candidate, write_problems: Vec::new() };
        servers.write();
        servers
    }

    fn candidate_name(&self) -> &'static str {
        self.candidate.name()
    }

    fn write(&mut self) {
        let bodies = self.data.remote_write_bodies();
        for (i, body) in bodies.iter().enumerate() {
            let reference = self.remote_write(&self.reference.url("/api/v1/write"), body);
            if let Err(error) = reference {
                panic!(
                    "Prometheus refused remote write {} of {}: {error}\nits log:\n{}",
                    i + 1,
                    bodies.len(),
                    self.reference.log_tail()
                );
            }
            if let Err(error) = self.remote_write(&self.candidate.url("/api/v1/write"), body) {
                self.write_problems.push(format!("remote write {} of {}: {error}", i + 1, bodies.len()));
            }
        }
        self.candidate.flush();
        eprintln!(
            "wrote {} series, {} samples from {} to {} in {} remote writes to Prometheus and {}",
            self.data.series.len(),
            self.data.sample_count(),
            secs(self.data.start_ms),
            secs(self.data.end_ms),
            bodies.len(),
            self.candidate_name(),
        );
    }

    fn remote_write(&self, url: &str, body: &[u8]) -> Result<(), String> {
        let response = self
            .client
            .post(url)
            .header("Content-Encoding", "snappy")
            .header("Content-Type", "application/x-protobuf")
            .header("X-Prometheus-Remote-Write-Version", "0.1.0")
            .header("User-Agent", "Prometheus/2.42.0")
            .body(body.to_vec())
            .send()
            .map_err(|e| e.to_string())?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {status}: {}", snippet(&response.text().unwrap_or_default())))
        }
    }

    /// Sends the same request to both: `(Prometheus's answer, the candidate's)`.
    fn both(&self, request: &Request) -> (Answer, Answer) {
        (
            request.send(&self.client, &self.reference.url(&request.path)),
            request.send(&self.client, &self.candidate.url(&request.path)),
        )
    }

    /// The report's tail: the candidate's log.
    fn candidate_log(&self) -> String {
        format!("{} log tail:\n{}", self.candidate_name(), self.candidate.log_tail())
    }
}

// ---------------------------------------------------------------------------------------------
// Requests and answers

#[derive(Clone, Copy, PartialEq)]
enum Method {
    Get,
    /// Parameters form-encoded in the body, as Grafana sends them.
    PostForm,
}

struct Request {
    method: Method,
    path: String,
    params: Vec<(String, String)>,
}

impl Request {
    fn get(path: &str, params: &[(&str, &str)]) -> Request {
        Request::new(Method::Get, path, params)
    }

    fn post_form(path: &str, params: &[(&str, &str)]) -> Request {
        Request::new(Method::PostForm, path, params)
    }

    fn new(method: Method, path: &str, params: &[(&str, &str)]) -> Request {
        Request {
            method,
            path: path.into(),
            params: params.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
        }
    }

    fn send(&self, client: &Client, url: &str) -> Answer {
        let builder: RequestBuilder = match self.method {
            Method::Get => client.get(reqwest::Url::parse_with_params(url, &self.params).expect("URL")),
            Method::PostForm => client
                .post(url)
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(form_urlencoded::Serializer::new(String::new()).extend_pairs(&self.params).finish()),
        };
        match builder.send() {
            Ok(response) => {
                let http = response.status().as_u16();
                Answer { http, body: response.text().unwrap_or_else(|e| format!("<unreadable body: {e}>")) }
            }
            Err(error) => Answer { http: 0, body: format!("<request failed: {error}>") },
        }
    }
}

struct Answer {
    /// 0 when the request failed.
    http: u16,
    body: String,
}

impl Answer {
    fn json(&self) -> Option<Value> {
        serde_json::from_str(&self.body).ok()
    }
}

fn snippet(text: &str) -> String {
    let text = text.trim();
    match text.char_indices().nth(200) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// One line on what an answer says, for reports.
fn summary(answer: &Answer) -> String {
    let Some(json) = answer.json() else {
        return format!("HTTP {} {}", answer.http, snippet(&answer.body));
    };
    match json["status"].as_str() {
        Some("error") => format!(
            "HTTP {} error {}: {}",
            answer.http,
            json["errorType"].as_str().unwrap_or("?"),
            snippet(json["error"].as_str().unwrap_or(""))
        ),
        Some("success") => {
            let result = &json["data"]["result"];
            let size = result.as_array().map(|a| format!(" of {}", a.len())).unwrap_or_default();
            format!("HTTP {} success {}{size}", answer.http, json["data"]["resultType"].as_str().unwrap_or("?"))
        }
        _ => format!("HTTP {} {}", answer.http, snippet(&answer.body)),
    }
}

// ---------------------------------------------------------------------------------------------
// Comparing query answers

type Labels = BTreeMap<String, String>;
type Points = Vec<(i64, f64)>;

enum QueryData {
    Scalar((i64, f64)),
    Series(Vec<(Labels, Points)>),
}

fn same_value(a: f64, b: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    let difference = (a - b).abs();
    difference <= 1e-12 || difference <= 1e-9 * a.abs().max(b.abs())
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "NaN" => Some(f64::NAN),
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => text.parse().ok().filter(|v: &f64| v.is_finite()),
    }
}

/// `[1700000000.123, "1.5"]` → (Unix ms, value).
fn parse_point(point: &Value) -> Result<(i64, f64), String> {
    let pair = point.as_array().filter(|p| p.len() == 2).ok_or_else(|| format!("point {point} is not a pair"))?;
    let seconds = pair[0].as_f64().ok_or_else(|| format!("timestamp of {point} is not a number"))?;
    let text = pair[1].as_str().ok_or_else(|| format!("value of {point} is not a string"))?;
    let value = parse_value(text).ok_or_else(|| format!("value of {point} is not a number"))?;
    Ok(((seconds * 1_000.0).round() as i64, value))
}

fn parse_labels(metric: &Value) -> Result<Labels, String> {
    let object = metric.as_object().ok_or_else(|| format!("metric {metric} is not an object"))?;
    object
        .iter()
        .map(|(name, value)| {
            let value = value.as_str().ok_or_else(|| format!("label {name} of {metric} is not a string"))?;
            Ok((name.clone(), value.to_string()))
        })
        .collect()
}

fn parse_query_data(json: &Value) -> Result<(String, QueryData), String> {
    let result_type = json["data"]["resultType"].as_str().ok_or("no data.resultType")?.to_string();
    let result = &json["data"]["result"];
    let data = match result_type.as_str() {
        "scalar" | "string" => QueryData::Scalar(parse_point(result)?),
        "vector" | "matrix" => {
            let items = result.as_array().ok_or("data.result is not an array")?;
            let mut series = Vec::new();
            for item in items {
                let labels = parse_labels(&item["metric"])?;
                let points = if result_type == "vector" {
                    vec![parse_point(&item["value"])?]
                } else {
                    let values = item["values"].as_array().ok_or_else(|| format!("{item} has no values array"))?;
                    values.iter().map(parse_point).collect::<Result<_, _>>()?
                };
                series.push((labels, points));
            }
            QueryData::Series(series)
        }
        other => return Err(format!("unknown resultType {other:?}")),
    };
    Ok((result_type, data))
}

fn fmt_labels(labels: &Labels) -> String {
    let name = labels.get("__name__").map(String::as_str).unwrap_or("");
    let rest: Vec<String> =
        labels.iter().filter(|(n, _)| n.as_str() != "__name__").map(|(n, v)| format!("{n}={v:?}")).collect();
    format!("{name}{{{}}}", rest.join(", "))
}

fn fmt_list<T>(items: &[T], show: impl Fn(&T) -> String) -> String {
    let shown: Vec<String> = items.iter().take(3).map(show).collect();
    let more = if items.len() > 3 { format!(" and {} more", items.len() - 3) } else { String::new() };
    format!("{}{more}", shown.join(", "))
}

/// `ms` as minutes and seconds after `start_ms`, e.g. `+32m17.5s`.
fn relative(start_ms: i64, ms: i64) -> String {
    let offset = ms - start_ms;
    let sign = if offset < 0 { "-" } else { "+" };
    format!("{sign}{}m{}s", offset.abs() / MINUTE_MS, secs(offset.abs() % MINUTE_MS))
}

/// For reports: the candidate's name, and the start of the data, which times are shown
/// relative to.
struct Cx<'a> {
    name: &'a str,
    start_ms: i64,
}

impl Cx<'_> {
    fn at(&self, ms: i64) -> String {
        relative(self.start_ms, ms)
    }
}

/// The first difference between two series' points, if any.
fn points_difference(reference: &Points, candidate: &Points, cx: &Cx) -> Option<String> {
    let name = cx.name;
    let reference_times: BTreeMap<i64, f64> = reference.iter().copied().collect();
    let candidate_times: BTreeMap<i64, f64> = candidate.iter().copied().collect();
    if reference_times.len() != reference.len() || candidate_times.len() != candidate.len() {
        return Some(format!("repeated timestamps ({} points, Prometheus {})", candidate.len(), reference.len()));
    }
    let missing: Vec<i64> = reference_times.keys().filter(|t| !candidate_times.contains_key(t)).copied().collect();
    let extra: Vec<i64> = candidate_times.keys().filter(|t| !reference_times.contains_key(t)).copied().collect();
    if !missing.is_empty() || !extra.is_empty() {
        let mut text = format!("{} points, Prometheus {}", candidate.len(), reference.len());
        if !missing.is_empty() {
            text += &format!("; missing at {}", fmt_list(&missing, |t| cx.at(*t)));
        }
        if !extra.is_empty() {
            text += &format!("; extra at {}", fmt_list(&extra, |t| cx.at(*t)));
        }
        return Some(text);
    }
    let sorted = candidate.windows(2).all(|w| w[0].0 < w[1].0);
    if !sorted {
        return Some("points not in time order".into());
    }
    let differing: Vec<(i64, f64, f64)> = reference_times
        .iter()
        .filter_map(|(t, r)| {
            let c = candidate_times[t];
            (!same_value(*r, c)).then_some((*t, *r, c))
        })
        .collect();
    (!differing.is_empty()).then(|| {
        format!(
            "{} of {} values differ: {}",
            differing.len(),
            reference.len(),
            fmt_list(&differing, |(t, r, c)| format!("at {} {name} {c:?}, Prometheus {r:?}", cx.at(*t)))
        )
    })
}

fn compare_series(
    reference: &[(Labels, Points)],
    candidate: &[(Labels, Points)],
    ordered: bool,
    cx: &Cx,
) -> Result<(), String> {
    let name = cx.name;
    let mut problems = Vec::new();
    let reference_map: BTreeMap<&Labels, &Points> = reference.iter().map(|(l, p)| (l, p)).collect();
    let candidate_map: BTreeMap<&Labels, &Points> = candidate.iter().map(|(l, p)| (l, p)).collect();
    if reference_map.len() != reference.len() {
        problems.push("Prometheus answered the same label set twice".to_string());
    }
    if candidate_map.len() != candidate.len() {
        problems.push(format!("{name} answered the same label set twice"));
    }
    let missing: Vec<&Labels> = reference_map.keys().filter(|l| !candidate_map.contains_key(*l)).copied().collect();
    let extra: Vec<&Labels> = candidate_map.keys().filter(|l| !reference_map.contains_key(*l)).copied().collect();
    if !missing.is_empty() {
        problems.push(format!(
            "{} of {} series missing: {}",
            missing.len(),
            reference.len(),
            fmt_list(&missing, |l| fmt_labels(l))
        ));
    }
    if !extra.is_empty() {
        problems.push(format!("{} series too many: {}", extra.len(), fmt_list(&extra, |l| fmt_labels(l))));
    }
    let differing: Vec<String> = reference_map
        .iter()
        .filter_map(|(labels, points)| {
            let difference = points_difference(points, candidate_map.get(labels)?, cx)?;
            Some(format!("{}: {difference}", fmt_labels(labels)))
        })
        .collect();
    if !differing.is_empty() {
        let more =
            if differing.len() > 1 { format!(" (and {} more series)", differing.len() - 1) } else { String::new() };
        problems.push(format!("{}{more}", differing[0]));
    }
    if ordered && problems.is_empty() {
        // Equal values may come in any order (Prometheus's sort is not stable).
        let position = reference.iter().zip(candidate).position(|((_, r), (_, c))| !same_value(r[0].1, c[0].1));
        if let Some(i) = position {
            problems.push(format!(
                "order differs at position {i}: {name} has {} {:?}, Prometheus {} {:?}",
                fmt_labels(&candidate[i].0),
                candidate[i].1[0].1,
                fmt_labels(&reference[i].0),
                reference[i].1[0].1,
            ));
        }
    }
    if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
}

/// Compares the candidate's answer to a query with Prometheus's: HTTP status, `status`,
/// `errorType`, `resultType` and the result. `ordered`: the series' order matters (`sort`).
fn compare_query(reference: &Answer, candidate: &Answer, ordered: bool, cx: &Cx) -> Result<(), String> {
    let name = cx.name;
    let Some(reference_json) = reference.json() else {
        return Err(format!("Prometheus answered {}", summary(reference)));
    };
    let Some(candidate_json) = candidate.json() else {
        return Err(format!("{name} answered {}; Prometheus {}", summary(candidate), summary(reference)));
    };
    if reference.http != candidate.http || reference_json["status"] != candidate_json["status"] {
        return Err(format!("{name} answered {}; Prometheus {}", summary(candidate), summary(reference)));
    }
    if reference_json["status"] != "success" {
        if reference_json["errorType"] != candidate_json["errorType"] {
            return Err(format!("{name} answered {}; Prometheus {}", summary(candidate), summary(reference)));
        }
        return Ok(());
    }
    let (reference_type, reference_data) =
        parse_query_data(&reference_json).map_err(|e| format!("Prometheus's answer: {e}"))?;
    let (candidate_type, candidate_data) =
        parse_query_data(&candidate_json).map_err(|e| format!("{name}'s answer: {e}"))?;
    if reference_type != candidate_type {
        return Err(format!("{name} answered {}; Prometheus {}", summary(candidate), summary(reference)));
    }
    match (reference_data, candidate_data) {
        (QueryData::Scalar(r), QueryData::Scalar(c)) => {
            if r.0 != c.0 || !same_value(r.1, c.1) {
                return Err(format!("{name} {:?} at {}, Prometheus {:?} at {}", c.1, cx.at(c.0), r.1, cx.at(r.0)));
            }
            Ok(())
        }
        (QueryData::Series(r), QueryData::Series(c)) => compare_series(&r, &c, ordered, cx),
        _ => unreachable!("same resultType, same shape"),
    }
}

// ---------------------------------------------------------------------------------------------
// The expressions

#[derive(Clone, Copy, PartialEq, Debug)]
enum Expect {
    Success,
    /// An instant query answers a matrix; range queries are refused.
    Matrix,
    Error,
}

struct Expression {
    text: String,
    expect: Expect,
}

/// The expressions of tests/promql/expressions.txt with `${AT}` replaced by `at`.
fn expressions(at: &str) -> Vec<Expression> {
    EXPRESSIONS
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(|line| {
            let (expect, text) = if let Some(rest) = line.strip_prefix("[matrix]") {
                (Expect::Matrix, rest)
            } else if let Some(rest) = line.strip_prefix("[error]") {
                (Expect::Error, rest)
            } else {
                (Expect::Success, line)
            };
            Expression { text: text.trim().replace("${AT}", at), expect }
        })
        .collect()
}

/// Where an expression is evaluated.
struct Evaluation {
    label: String,
    path: &'static str,
    params: Vec<(&'static str, String)>,
}

impl Evaluation {
    fn is_range(&self) -> bool {
        self.path.ends_with("query_range")
    }
}

/// Three instant queries inside the data span and two range queries over most of it.
fn evaluations(data: &DataSet) -> Vec<Evaluation> {
    let relative = |ms| relative(data.start_ms, ms);
    let mut evaluations: Vec<Evaluation> = [data.at(15.0), data.at(32.0) + 17_500, data.end_ms - 45 * SECOND_MS]
        .into_iter()
        .map(|t| Evaluation {
            label: format!("query time={}", relative(t)),
            path: "/api/v1/query",
            params: vec![("time", secs(t))],
        })
        .collect();
    for (start, end, step) in
        [(data.at(5.0), data.end_ms, 60), (data.at(7.0) + 13 * SECOND_MS, data.end_ms - 11 * SECOND_MS, 37)]
    {
        evaluations.push(Evaluation {
            label: format!("query_range {}..{} step={step}s", relative(start), relative(end)),
            path: "/api/v1/query_range",
            params: vec![("start", secs(start)), ("end", secs(end)), ("step", step.to_string())],
        });
    }
    evaluations
}

/// Whether Prometheus answered as the expression list says it does.
fn check_expectation(expect: Expect, range: bool, reference: &Answer) -> Result<(), String> {
    let json = reference.json().unwrap_or_default();
    let status = json["status"].as_str().unwrap_or("");
    let result_type = json["data"]["resultType"].as_str().unwrap_or("");
    let fine = match (expect, range) {
        (Expect::Success, _) => status == "success",
        (Expect::Matrix, false) => status == "success" && result_type == "matrix",
        (Expect::Matrix, true) | (Expect::Error, _) => status == "error",
    };
    if fine {
        Ok(())
    } else {
        Err(format!("the list expects {expect:?} but Prometheus answered {}", summary(reference)))
    }
}

/// Runs `jobs` on `WORKERS` threads and returns the results in job order.
fn parallel<J: Sync, R: Send>(jobs: &[J], run: impl Fn(&J) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::with_capacity(jobs.len()));
    thread::scope(|s| {
        for _ in 0..WORKERS {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(job) = jobs.get(i) else { break };
                    let result = run(job);
                    results.lock().expect("results lock").push((i, result));
                }
            });
        }
    });
    let mut results = results.into_inner().expect("results lock");
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

#[test]
fn promql_matches_prometheus() {
    let started = Instant::now();
    let servers = Servers::start();
    let name = servers.candidate_name();
    let cx = Cx { name, start_ms: servers.data.start_ms };
    let at = secs(servers.data.at(25.0) + 30_250);
    let expressions = expressions(&at);
    assert!(
        expressions.len() >= MIN_EXPRESSIONS,
        "only {} expressions in tests/promql/expressions.txt, expected at least {MIN_EXPRESSIONS}",
        expressions.len()
    );
    let evaluations = evaluations(&servers.data);
    eprintln!(
        "{} PromQL expressions × {} evaluations against Prometheus and {name} ({:.1?} so far)",
        expressions.len(),
        evaluations.len(),
        started.elapsed()
    );

    let jobs: Vec<(usize, usize)> =
        (0..expressions.len()).flat_map(|e| (0..evaluations.len()).map(move |v| (e, v))).collect();
    let outcomes = parallel(&jobs, |&(e, v)| {
        let (expression, evaluation) = (&expressions[e], &evaluations[v]);
        let mut params: Vec<(&str, &str)> = vec![("query", expression.text.as_str())];
        params.extend(evaluation.params.iter().map(|(n, v)| (*n, v.as_str())));
        let (reference, candidate) = servers.both(&Request::get(evaluation.path, &params));
        let expectation = check_expectation(expression.expect, evaluation.is_range(), &reference);
        let ordered = !evaluation.is_range() && expression.text.starts_with("sort");
        let empty = reference.json().is_some_and(|j| j["data"]["result"].as_array().is_some_and(Vec::is_empty));
        (expectation, compare_query(&reference, &candidate, ordered, &cx), empty)
    });

    let mut report = String::new();
    let mut list_problems = Vec::new();
    let mut differences = 0;
    let mut current = usize::MAX;
    for (&(e, v), (expectation, comparison, _)) in jobs.iter().zip(&outcomes) {
        if let Err(problem) = expectation {
            list_problems.push(format!("  {} [{}]: {problem}", expressions[e].text, evaluations[v].label));
        }
        if let Err(difference) = comparison {
            if current != e {
                report += &format!("\n{}\n", expressions[e].text);
                current = e;
            }
            report += &format!("    [{}] {difference}\n", evaluations[v].label);
            differences += 1;
        }
    }
    let agree = outcomes.len() - differences;
    let empty = outcomes.iter().filter(|(_, _, empty)| *empty).count();
    let always_empty: Vec<&str> = (0..expressions.len())
        .filter(|&e| outcomes[e * evaluations.len()..(e + 1) * evaluations.len()].iter().all(|o| o.2))
        .map(|e| expressions[e].text.as_str())
        .collect();
    eprintln!(
        "{} expressions, {} comparisons: {agree} agree, {differences} differ ({:.1?}); Prometheus's result is \
         empty in {empty} of them, and for every evaluation of {} expressions: {}",
        expressions.len(),
        outcomes.len(),
        started.elapsed(),
        always_empty.len(),
        always_empty.join(" | ")
    );

    let mut failure = String::new();
    if !servers.write_problems.is_empty() {
        failure += &format!(
            "{name} refused {} remote writes (Prometheus accepted them all): {}\n\n",
            servers.write_problems.len(),
            fmt_list(&servers.write_problems, String::clone)
        );
    }
    if !list_problems.is_empty() {
        failure += &format!(
            "tests/promql/expressions.txt does not describe Prometheus's answers ({} cases):\n{}\n\n",
            list_problems.len(),
            list_problems.join("\n")
        );
    }
    if differences > 0 {
        failure += &format!(
            "{name} differs from Prometheus in {differences} of {} comparisons ({agree} agree, {} expressions):\n{report}\n",
            outcomes.len(),
            expressions.len()
        );
    }
    if !failure.is_empty() {
        panic!("{failure}{}", servers.candidate_log());
    }
}

// ---------------------------------------------------------------------------------------------
// Grafana's requests

/// How a Grafana request's answers are compared.
enum Check {
    /// A query: like the expressions' answers; also Prometheus must answer `expect` if given.
    Query(Option<&'static str>),
    /// `data` is a list of strings (label names or values): the same set, not empty.
    Strings,
    /// `data` is a list of label sets (`/api/v1/series`): the same set.
    LabelSets,
    /// Both answer 400 with `errorType` `bad_data`.
    BadData,
    /// Both answer success, with `data` of this JSON type ("object"; "version": an object
    /// with a `version` string).
    Shape(&'static str),
}

fn string_set(answer: &Answer) -> Result<BTreeSet<String>, String> {
    let json = answer.json().filter(|j| j["status"] == "success").ok_or_else(|| summary(answer))?;
    let items = json["data"].as_array().ok_or("data is not an array")?;
    items.iter().map(|i| i.as_str().map(str::to_string).ok_or_else(|| format!("{i} is not a string"))).collect()
}

fn label_set_set(answer: &Answer) -> Result<BTreeSet<Labels>, String> {
    let json = answer.json().filter(|j| j["status"] == "success").ok_or_else(|| summary(answer))?;
    let items = json["data"].as_array().ok_or("data is not an array")?;
    items.iter().map(parse_labels).collect()
}

fn compare_sets<T: Ord>(
    reference: &BTreeSet<T>,
    candidate: &BTreeSet<T>,
    show: impl Fn(&T) -> String,
) -> Result<(), String> {
    let missing: Vec<&T> = reference.difference(candidate).collect();
    let extra: Vec<&T> = candidate.difference(reference).collect();
    if missing.is_empty() && extra.is_empty() {
        return Ok(());
    }
    Err(format!(
        "{} of {} missing ({}), {} too many ({})",
        missing.len(),
        reference.len(),
        fmt_list(&missing, |t| show(t)),
        extra.len(),
        fmt_list(&extra, |t| show(t))
    ))
}

fn check_grafana(check: &Check, reference: &Answer, candidate: &Answer, cx: &Cx) -> Result<(), String> {
    let name = cx.name;
    match check {
        Check::Query(expect) => {
            if let Some(expected) = expect {
                let value = reference.json().and_then(|j| j["data"]["result"][1].as_str().map(str::to_string));
                if value.as_deref() != Some(expected) {
                    return Err(format!("Prometheus answered {}, not {expected}", summary(reference)));
                }
            }
            compare_query(reference, candidate, false, cx)
        }
        Check::Strings => {
            let r = string_set(reference).map_err(|e| format!("Prometheus: {e}"))?;
            let c = string_set(candidate).map_err(|e| format!("{name}: {e}"))?;
            if r.is_empty() {
                return Err("Prometheus answered an empty list".into());
            }
            compare_sets(&r, &c, |s| format!("{s:?}"))
        }
        Check::LabelSets => {
            let r = label_set_set(reference).map_err(|e| format!("Prometheus: {e}"))?;
            let c = label_set_set(candidate).map_err(|e| format!("{name}: {e}"))?;
            if r.is_empty() {
                return Err("Prometheus answered no series".into());
            }
            compare_sets(&r, &c, fmt_labels)
        }
        Check::BadData => {
            let mut problems = Vec::new();
            for (who, answer) in [("Prometheus", reference), (name, candidate)] {
                let json = answer.json().unwrap_or_default();
                if answer.http != 400 || json["status"] != "error" || json["errorType"] != "bad_data" {
                    problems.push(format!("{who} answered {}, expected HTTP 400 error bad_data", summary(answer)));
                }
            }
            if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
        }
        Check::Shape(shape) => {
            let mut problems = Vec::new();
            for (who, answer) in [("Prometheus", reference), (name, candidate)] {
                let json = answer.json().unwrap_or_default();
                let data = &json["data"];
                let fine = answer.http == 200
                    && json["status"] == "success"
                    && match *shape {
                        "version" => data["version"].is_string(),
                        _ => data.is_object(),
                    };
                if !fine {
                    problems.push(format!("{who} answered {}", summary(answer)));
                }
            }
            if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
        }
    }
}

#[test]
fn grafana_request_shapes() {
    let servers = Servers::start();
    let name = servers.candidate_name();
    let data = &servers.data;
    let cx = Cx { name, start_ms: data.start_ms };
    // Grafana's default range, "the last hour", widened to hold the whole data set.
    let (start, end) = (secs(data.start_ms - 5 * MINUTE_MS), secs(now_ms()));
    let (start, end) = (start.as_str(), end.as_str());
    let now = secs(now_ms());
    // A panel's range, aligned to its step as Grafana aligns it.
    let step = 30 * SECOND_MS;
    let panel_start = secs((data.start_ms + 5 * MINUTE_MS) / step * step);
    let panel_end = secs(data.end_ms / step * step);
    let (panel_start, panel_end) = (panel_start.as_str(), panel_end.as_str());
    let early_end = secs(data.at(8.0));
    let instant = secs(data.at(40.0));

    let requests: Vec<(&str, Check, Request)> = vec![
        ("health check", Check::Query(Some("2")), Request::get("/api/v1/query", &[("query", "1+1"), ("time", &now)])),
        ("build info", Check::Shape("version"), Request::get("/api/v1/status/buildinfo", &[])),
        ("metadata", Check::Shape("object"), Request::get("/api/v1/metadata", &[])),
        ("label names", Check::Strings, Request::get("/api/v1/labels", &[("start", start), ("end", end)])),
        (
            "label names of a metric",
            Check::Strings,
            Request::get("/api/v1/labels", &[("match[]", "http_requests_total"), ("start", start), ("end", end)]),
        ),
        (
            "metric names",
            Check::Strings,
            Request::get("/api/v1/label/__name__/values", &[("start", start), ("end", end)]),
        ),
        (
            "job values of a metric",
            Check::Strings,
            Request::get(
                "/api/v1/label/job/values",
                &[("match[]", "http_requests_total"), ("start", start), ("end", end)],
            ),
        ),
        (
            "instance values of a selector",
            Check::Strings,
            Request::get(
                "/api/v1/label/instance/values",
                &[("match[]", r#"{job=~"api|node", __name__!="node_info"}"#), ("start", start), ("end", end)],
            ),
        ),
        (
            "le values",
            Check::Strings,
            Request::get(
                "/api/v1/label/le/values",
                &[("match[]", "request_duration_seconds_bucket"), ("start", start), ("end", end)],
            ),
        ),
        (
            "series of a selector",
            Check::LabelSets,
            Request::get(
                "/api/v1/series",
                &[("match[]", r#"http_requests_total{code="500"}"#), ("start", start), ("end", end)],
            ),
        ),
        (
            "series of two selectors",
            Check::LabelSets,
            Request::get(
                "/api/v1/series",
                &[
                    ("match[]", "up"),
                    ("match[]", r#"{__name__=~"request_duration_seconds_(sum|count)"}"#),
                    ("match[]", "flaky_gauge"),
                    ("start", start),
                    ("end", end),
                ],
            ),
        ),
        (
            "series of the first minutes only",
            Check::LabelSets,
            Request::get(
                "/api/v1/series",
                &[("match[]", r#"{job=~"late|batch"}"#), ("start", &secs(data.start_ms)), ("end", &early_end)],
            ),
        ),
        (
            "series, form-encoded",
            Check::LabelSets,
            Request::post_form(
                "/api/v1/series",
                &[("match[]", r#"{__name__="many_series", zone="z2"}"#), ("start", start), ("end", end)],
            ),
        ),
        (
            "panel query_range, form-encoded",
            Check::Query(None),
            Request::post_form(
                "/api/v1/query_range",
                &[
                    ("query", "sum by (job) (rate(http_requests_total[5m]))"),
                    ("start", panel_start),
                    ("end", panel_end),
                    ("step", "30"),
                ],
            ),
        ),
        (
            "panel query_range of a histogram, form-encoded",
            Check::Query(None),
            Request::post_form(
                "/api/v1/query_range",
                &[
                    ("query", "histogram_quantile(0.95, sum by (le) (rate(request_duration_seconds_bucket[1m])))"),
                    ("start", panel_start),
                    ("end", panel_end),
                    ("step", "30"),
                ],
            ),
        ),
        (
            "table query, form-encoded",
            Check::Query(None),
            Request::post_form("/api/v1/query", &[("query", "sum by (job) (up)"), ("time", &instant)]),
        ),
        (
            "syntax error",
            Check::BadData,
            Request::get("/api/v1/query", &[("query", "sum(rate(http_requests_total[5m])"), ("time", &instant)]),
        ),
        (
            "syntax error in a range query, form-encoded",
            Check::BadData,
            Request::post_form(
                "/api/v1/query_range",
                &[("query", "up{"), ("start", panel_start), ("end", panel_end), ("step", "30")],
            ),
        ),
        (
            "zero step",
            Check::BadData,
            Request::get(
                "/api/v1/query_range",
                &[("query", "up"), ("start", panel_start), ("end", panel_end), ("step", "0")],
            ),
        ),
        (
            "end before start",
            Check::BadData,
            Request::get(
                "/api/v1/query_range",
                &[("query", "up"), ("start", panel_end), ("end", panel_start), ("step", "30")],
            ),
        ),
    ];

    let outcomes = parallel(&requests, |(_, check, request)| {
        let (reference, candidate) = servers.both(request);
        check_grafana(check, &reference, &candidate, &cx)
    });
    let mut report = String::new();
    for ((what, _, request), outcome) in requests.iter().zip(&outcomes) {
        if let Err(problem) = outcome {
            let method = if request.method == Method::Get { "GET" } else { "POST" };
            report += &format!("  {what} ({method} {}): {problem}\n", request.path);
        }
    }
    let differences = outcomes.iter().filter(|o| o.is_err()).count();
    eprintln!("{} Grafana requests: {} agree, {differences} differ", requests.len(), requests.len() - differences);
    let mut failure = String::new();
    if !servers.write_problems.is_empty() {
        failure += &format!(
            "{name} refused {} remote writes (Prometheus accepted them all): {}\n\n",
            servers.write_problems.len(),
            fmt_list(&servers.write_problems, String::clone)
        );
    }
    if differences > 0 {
        failure += &format!(
            "{name} answers {differences} of {} Grafana requests unlike Prometheus:\n{report}\n",
            requests.len()
        );
    }
    if !failure.is_empty() {
        panic!("{failure}{}", servers.candidate_log());
    }
}

/// The comparison itself, on hand-written answers: what must agree and what must not.
#[test]
fn comparison_rules() {
    let cx = Cx { name: "Wake", start_ms: 1_700_000_000_000 };
    let answer = |http: u16, body: &str| Answer { http, body: body.to_string() };
    let vector = |items: &[(&str, &str)]| {
        let result: Vec<String> = items
            .iter()
            .map(|(job, value)| format!(r#"{{"metric":{{"job":"{job}"}},"value":[1700000060.5,"{value}"]}}"#))
            .collect();
        answer(
            200,
            &format!(r#"{{"status":"success","data":{{"resultType":"vector","result":[{}]}}}}"#, result.join(",")),
        )
    };
    let same = |a: &Answer, b: &Answer, ordered: bool| compare_query(a, b, ordered, &cx);

    // Values: NaN equals NaN, infinities by sign, 1e-9 relative, 1e-12 absolute.
    let reference = vector(&[("a", "NaN"), ("b", "+Inf"), ("c", "1e6"), ("d", "0")]);
    assert!(
        same(&reference, &vector(&[("d", "1e-13"), ("c", "1000000.0005"), ("b", "+Inf"), ("a", "NaN")]), false).is_ok()
    );
    for candidate in [
        vector(&[("a", "1"), ("b", "+Inf"), ("c", "1e6"), ("d", "0")]),
        vector(&[("a", "NaN"), ("b", "-Inf"), ("c", "1e6"), ("d", "0")]),
        vector(&[("a", "NaN"), ("b", "+Inf"), ("c", "1000000.01"), ("d", "0")]),
        vector(&[("a", "NaN"), ("b", "+Inf"), ("c", "1e6"), ("d", "1e-11")]),
        vector(&[("a", "NaN"), ("b", "+Inf"), ("c", "1e6")]),
        vector(&[("a", "NaN"), ("b", "+Inf"), ("c", "1e6"), ("d", "0"), ("e", "0")]),
        vector(&[("a", "NaN"), ("b", "+Inf"), ("c", "1e6"), ("e", "0")]),
        vector(&[("a", "NaN"), ("b", "+Inf"), ("c", "1e6"), ("d", "0"), ("d", "0")]),
    ] {
        assert!(same(&reference, &candidate, false).is_err(), "{} must differ from {}", candidate.body, reference.body);
    }
    // Values are strings, timestamps numbers.
    let numeric = answer(200, r#"{"status":"success","data":{"resultType":"scalar","result":[1700000060.5,2]}}"#);
    let scalar = answer(200, r#"{"status":"success","data":{"resultType":"scalar","result":[1700000060.5,"2"]}}"#);
    assert!(same(&scalar, &scalar, false).is_ok());
    assert!(same(&scalar, &numeric, false).is_err());
    // Order matters for sort (equal values in any order), not otherwise.
    let sorted = vector(&[("a", "1"), ("b", "2"), ("c", "2"), ("d", "3")]);
    assert!(same(&sorted, &vector(&[("a", "1"), ("c", "2"), ("b", "2"), ("d", "3")]), true).is_ok());
    assert!(same(&sorted, &vector(&[("d", "3"), ("a", "1"), ("b", "2"), ("c", "2")]), true).is_err());
    assert!(same(&sorted, &vector(&[("d", "3"), ("a", "1"), ("b", "2"), ("c", "2")]), false).is_ok());
    // Errors: HTTP status and errorType, not the message.
    let bad_data = answer(400, r#"{"status":"error","errorType":"bad_data","error":"parse error"}"#);
    let other_message = answer(400, r#"{"status":"error","errorType":"bad_data","error":"unexpected end"}"#);
    let execution = answer(422, r#"{"status":"error","errorType":"execution","error":"parse error"}"#);
    assert!(same(&bad_data, &other_message, false).is_ok());
    assert!(same(&bad_data, &execution, false).is_err());
    assert!(same(&bad_data, &answer(404, "404 page not found"), false).is_err());
    assert!(same(&scalar, &vector(&[("a", "2")]), false).is_err());
    // Matrices: the same timestamps.
    let matrix = |points: &str| {
        answer(
            200,
            &format!(
                r#"{{"status":"success","data":{{"resultType":"matrix","result":[{{"metric":{{}},"values":[{points}]}}]}}}}"#
            ),
        )
    };
    let reference = matrix(r#"[1700000000,"1"],[1700000060,"2"]"#);
    assert!(same(&reference, &matrix(r#"[1700000000.0,"1"],[1700000060,"2.0"]"#), false).is_ok());
    assert!(same(&reference, &matrix(r#"[1700000000,"1"],[1700000061,"2"]"#), false).is_err());
    assert!(same(&reference, &matrix(r#"[1700000000,"1"]"#), false).is_err());
}
