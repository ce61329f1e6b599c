//! A counting OTLP/HTTP sink: accepts `POST /v1/logs` and `/v1/metrics` (protobuf, plain or
//! gzip), counts what arrived and answers 200 with an empty response, so that an agent's cost is
//! measured apart from a store's.
//!
//! Each log record's body is matched to the corpus line it must be: its timestamp prefix names
//! the row (rows are 8.64 ms apart, one per millisecond at most), a bitmap of the rows written
//! catches every missing and every repeated line, and the sum of the bodies' fingerprints must
//! equal the generator's, so a line cut, joined to another or altered fails too. A request whose
//! decoded body equals an earlier one's is an agent's retry (a timeout, a lost answer): it is
//! counted as such and its records are not counted again.

use std::collections::HashSet;
use std::io::Read;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{Metric, metric};
use prost::Message;

use crate::common::{Corpus, START_NS, STEP_NS};
use crate::corpus::{Lengths, Written, fingerprint};

/// What the sink expects: the generator's account of the lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expected {
    pub first_row: u64,
    pub lines: u64,
    pub text_bytes: u64,
    pub checksum: u64,
    pub lengths: Lengths,
}

impl From<&Written> for Expected {
    fn from(written: &Written) -> Expected {
        Expected {
            first_row: written.first_row,
            lines: written.lines,
            text_bytes: written.text_bytes,
            checksum: written.checksum,
            lengths: written.lengths.clone(),
        }
    }
}

/// Everything the sink counted.
#[derive(Debug)]
pub struct Tally {
    pub expected: Expected,
    seen: Vec<u64>,
    /// Distinct expected lines received.
    pub unique: u64,
    /// Records of lines already received, outside a retried request.
    pub duplicates: u64,
    /// Lines received with another length than written (cut short, or joined to another), and
    /// the first such row.
    pub altered: u64,
    pub first_altered: Option<u64>,
    /// Records that are no line of the corpus (no timestamp prefix, a row never written, a body
    /// that is not a string).
    pub unrecognised: u64,
    pub first_unrecognised: Option<String>,
    pub records: u64,
    /// Container lifecycle events (`container.start`, …): the store's inventory takes them,
    /// they are no log lines.
    pub lifecycle_events: u64,
    text_bytes: u64,
    checksum: u64,
    pub log_requests: u64,
    pub gzip_requests: u64,
    /// Requests whose decoded body was received before.
    pub retried_requests: u64,
    pub request_bytes: u64,
    pub max_request_bytes: usize,
    pub max_decoded_bytes: usize,
    request_fingerprints: HashSet<u64>,
    pub metric_requests: u64,
    pub metric_points: u64,
    /// Requests carrying container metrics (resources with `container.id`), and the most
    /// containers one of them held.
    pub container_metric_requests: u64,
    pub container_metric_points: u64,
    pub max_containers_per_request: usize,
    pub rejected_requests: u64,
    pub first_rejection: Option<String>,
    pub last_record_at: Option<Instant>,
}

impl Tally {
    pub fn new(expected: Expected) -> Tally {
        Tally {
            seen: vec![0; expected.lines.div_ceil(64) as usize],
            expected,
            unique: 0,
            duplicates: 0,
            altered: 0,
            first_altered: None,
            unrecognised: 0,
            first_unrecognised: None,
            records: 0,
            lifecycle_events: 0,
            text_bytes: 0,
            checksum: 0,
            log_requests: 0,
            gzip_requests: 0,
            retried_requests: 0,
            request_bytes: 0,
            max_request_bytes: 0,
            max_decoded_bytes: 0,
            request_fingerprints: HashSet::new(),
            metric_requests: 0,
            metric_points: 0,
            container_metric_requests: 0,
            container_metric_points: 0,
            max_containers_per_request: 0,
            rejected_requests: 0,
            first_rejection: None,
            last_record_at: None,
        }
    }

    /// Every expected line arrived.
    pub fn complete(&self) -> bool {
        self.unique == self.expected.lines
    }

    /// Counts one decoded `/v1/logs` request of `wire_bytes` as received.
    pub fn add_logs(&mut self, request: &ExportLogsServiceRequest, decoded: &[u8], wire_bytes: usize, gzip: bool) {
        self.log_requests += 1;
        self.gzip_requests += u64::from(gzip);
        self.request_bytes += wire_bytes as u64;
        self.max_request_bytes = self.max_request_bytes.max(wire_bytes);
        self.max_decoded_bytes = self.max_decoded_bytes.max(decoded.len());
        if !self.request_fingerprints.insert(fingerprint(decoded)) {
            self.retried_requests += 1;
            return;
        }
        for resource in &request.resource_logs {
            for scope in &resource.scope_logs {
                for record in &scope.log_records {
                    if record.event_name.starts_with("container.") {
                        self.lifecycle_events += 1;
                        continue;
                    }
                    self.add_body(record.body.as_ref());
                }
            }
        }
        self.last_record_at = Some(Instant::now());
    }

    /// Counts one record's body.
    pub fn add_body(&mut self, body: Option<&AnyValue>) {
        self.records += 1;
        let Some(text) = body_text(body) else {
            self.unrecognise(format!("{body:?}"));
            return;
        };
        let Some(index) = row_of(text).and_then(|g| g.checked_sub(self.expected.first_row)) else {
            self.unrecognise(text.to_string());
            return;
        };
        if index >= self.expected.lines {
            self.unrecognise(text.to_string());
            return;
        }
        let (word, bit) = ((index / 64) as usize, 1u64 << (index % 64));
        if self.seen[word] & bit != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[word] |= bit;
        self.unique += 1;
        if self.expected.lengths.0.get(index as usize).is_some_and(|&length| length as usize != text.len()) {
            self.altered += 1;
            self.first_altered.get_or_insert(index + self.expected.first_row);
        }
        self.text_bytes += text.len() as u64;
        self.checksum = self.checksum.wrapping_add(fingerprint(text.as_bytes()));
    }

    fn unrecognise(&mut self, what: String) {
        self.unrecognised += 1;
        if self.first_unrecognised.is_none() {
            self.first_unrecognised = Some(what.chars().take(200).collect());
        }
    }

    pub fn add_metrics(&mut self, request: &ExportMetricsServiceRequest) {
        self.metric_requests += 1;
        let mut containers = 0;
        for resource in &request.resource_metrics {
            let is_container = resource
                .resource
                .as_ref()
                .is_some_and(|r| r.attributes.iter().any(|attribute| attribute.key == "container.id"));
            let points: usize = resource.scope_metrics.iter().flat_map(|s| &s.metrics).map(data_points).sum();
            self.metric_points += points as u64;
            if is_container {
                containers += 1;
                self.container_metric_points += points as u64;
            }
        }
        if containers > 0 {
            self.container_metric_requests += 1;
            self.max_containers_per_request = self.max_containers_per_request.max(containers);
        }
    }

    fn reject(&mut self, why: String) {
        self.rejected_requests += 1;
        if self.first_rejection.is_none() {
            self.first_rejection = Some(why);
        }
    }

    /// The first few rows not received.
    pub fn missing(&self, at_most: usize) -> Vec<u64> {
        (0..self.expected.lines)
            .filter(|&i| self.seen[(i / 64) as usize] & (1 << (i % 64)) == 0)
            .take(at_most)
            .map(|i| i + self.expected.first_row)
            .collect()
    }

    /// `Ok` when every written line arrived exactly once (retried requests aside) and unaltered;
    /// otherwise what went wrong.
    pub fn verdict(&self) -> Result<(), String> {
        let mut problems = Vec::new();
        if self.unique != self.expected.lines {
            problems.push(format!(
                "{} of {} lines delivered; first missing rows: {:?}",
                self.unique,
                self.expected.lines,
                self.missing(5)
            ));
        }
        if self.altered > 0 {
            problems.push(format!(
                "{} lines arrived with another length than written (cut short, or joined to another), the first: row {}",
                self.altered,
                self.first_altered.unwrap_or(0)
            ));
        } else if self.unique == self.expected.lines
            && (self.text_bytes != self.expected.text_bytes || self.checksum != self.expected.checksum)
        {
            problems.push(format!(
                "every line arrived but their texts differ from what was written ({} bytes, {} expected)",
                self.text_bytes, self.expected.text_bytes
            ));
        }
        if self.duplicates > 0 {
            problems.push(format!("{} lines delivered more than once", self.duplicates));
        }
        if self.unrecognised > 0 {
            problems.push(format!(
                "{} records that are no written line, the first: {:?}",
                self.unrecognised,
                self.first_unrecognised.as_deref().unwrap_or("")
            ));
        }
        if self.rejected_requests > 0 {
            problems.push(format!(
                "{} requests the sink could not decode, the first: {}",
                self.rejected_requests,
                self.first_rejection.as_deref().unwrap_or("")
            ));
        }
        if problems.is_empty() { Ok(()) } else { Err(problems.join("; ")) }
    }
}

fn data_points(metric: &Metric) -> usize {
    match &metric.data {
        Some(metric::Data::Gauge(gauge)) => gauge.data_points.len(),
        Some(metric::Data::Sum(sum)) => sum.data_points.len(),
        Some(metric::Data::Histogram(histogram)) => histogram.data_points.len(),
        Some(metric::Data::ExponentialHistogram(histogram)) => histogram.data_points.len(),
        Some(metric::Data::Summary(summary)) => summary.data_points.len(),
        None => 0,
    }
}

/// A body as text: a string, or the `log` (else `message`) string of a map, which is how
/// an agent that keeps records as maps may send them.
fn body_text(body: Option<&AnyValue>) -> Option<&str> {
    match body?.value.as_ref()? {
        any_value::Value::StringValue(text) => Some(text),
        any_value::Value::KvlistValue(list) => ["log", "message"]
            .iter()
            .find_map(|key| list.values.iter().find(|kv| kv.key == *key).and_then(|kv| body_text(kv.value.as_ref()))),
        _ => None,
    }
}

/// The corpus row whose timestamp prefix (`YYYY-MM-DDTHH:MM:SS.mmm `) `text` starts with.
pub fn row_of(text: &str) -> Option<u64> {
    let b = text.as_bytes();
    if b.len() < 24 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'.' || b[23] != b' ' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<i64> {
        let digits = &text[range];
        if digits.bytes().all(|d| d.is_ascii_digit()) { digits.parse().ok() } else { None }
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second, millis) = (number(11..13)?, number(14..16)?, number(17..19)?, number(20..23)?);
    let millis_since_epoch = (days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second)
        .checked_mul(1000)?
        .checked_add(millis)?;
    let offset = millis_since_epoch.checked_mul(1_000_000)?.checked_sub(START_NS)?;
    if offset < 0 {
        return None;
    }
    // Row g's prefix is its time truncated to the millisecond: g is the first row at or after it.
    let g = (offset as u64).div_ceil(STEP_NS as u64);
    (Corpus::time_ns(g).div_euclid(1_000_000) == millis_since_epoch).then_some(g)
}

/// (year, month, day) to days since 1970-01-01 (the inverse of `civil_from_days`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

type Shared = Arc<Mutex<Tally>>;

fn lock(tally: &Shared) -> MutexGuard<'_, Tally> {
    // A panic while counting leaves counts that are still the best account there is.
    tally.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The sink, serving on 127.0.0.1 from its own thread (one tokio thread: on a 2-core machine the
/// sink should take as little as it can from the agent it measures).
pub struct Sink {
    pub addr: SocketAddr,
    tally: Shared,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sink {
    pub fn start(expected: Expected) -> std::io::Result<Sink> {
        let tally = Arc::new(Mutex::new(Tally::new(expected)));
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let state = tally.clone();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let thread = std::thread::Builder::new().name("otlp-sink".into()).spawn(move || {
            runtime.block_on(async move {
                let router = axum::Router::new()
                    .route("/v1/logs", axum::routing::post(logs))
                    .route("/v1/metrics", axum::routing::post(metrics))
                    .layer(DefaultBodyLimit::max(256 * 1024 * 1024))
                    .with_state(state);
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(listener) => listener,
                    Err(error) => panic!("sink listener: {error}"),
                };
                let serve = axum::serve(listener, router).with_graceful_shutdown(async {
                    let _ = stopped.await;
                });
                if let Err(error) = serve.await {
                    eprintln!("sink stopped: {error}");
                }
            })
        })?;
        Ok(Sink { addr, tally, stop: Some(stop), thread: Some(thread) })
    }

    pub fn with<R>(&self, read: impl FnOnce(&Tally) -> R) -> R {
        read(&lock(&self.tally))
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The request body, gunzipped when its `Content-Encoding` says gzip.
fn decode_body(headers: &HeaderMap, body: &[u8]) -> Result<(Vec<u8>, bool), String> {
    let encoding = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).unwrap_or("identity");
    match encoding.trim().to_ascii_lowercase().as_str() {
        "gzip" | "x-gzip" => {
            let mut decoded = Vec::with_capacity(body.len() * 4);
            flate2::read::GzDecoder::new(body).read_to_end(&mut decoded).map_err(|e| format!("gzip: {e}"))?;
            Ok((decoded, true))
        }
        "identity" | "" => Ok((body.to_vec(), false)),
        other => Err(format!("unsupported Content-Encoding {other:?}")),
    }
}

fn protobuf(message: &impl Message) -> Response {
    ([(header::CONTENT_TYPE, "application/x-protobuf")], message.encode_to_vec()).into_response()
}

fn check_content_type(headers: &HeaderMap) -> Result<(), String> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type.starts_with("application/x-protobuf") || content_type.starts_with("application/protobuf") {
        Ok(())
    } else {
        Err(format!("unsupported Content-Type {content_type:?} (the sink decodes protobuf only)"))
    }
}

async fn logs(State(tally): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let decoded = check_content_type(&headers).and_then(|()| decode_body(&headers, &body));
    let request = decoded.and_then(|(decoded, gzip)| {
        ExportLogsServiceRequest::decode(&decoded[..]).map(|r| (r, decoded, gzip)).map_err(|e| format!("protobuf: {e}"))
    });
    match request {
        Ok((request, decoded, gzip)) => {
            lock(&tally).add_logs(&request, &decoded, body.len(), gzip);
            protobuf(&ExportLogsServiceResponse::default())
        }
        Err(why) => {
            lock(&tally).reject(why.clone());
            (StatusCode::BAD_REQUEST, why).into_response()
        }
    }
}

async fn metrics(State(tally): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let decoded = check_content_type(&headers).and_then(|()| decode_body(&headers, &body));
    match decoded.and_then(|(decoded, _)| {
        ExportMetricsServiceRequest::decode(&decoded[..]).map_err(|e| format!("protobuf: {e}"))
    }) {
        Ok(request) => {
            lock(&tally).add_metrics(&request);
            protobuf(&ExportMetricsServiceResponse::default())
        }
        Err(why) => {
            lock(&tally).reject(why.clone());
            (StatusCode::BAD_REQUEST, why).into_response()
        }
    }
}
