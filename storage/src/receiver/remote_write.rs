//! Prometheus remote write 1.0 receiver: `POST /api/v1/write`, served on the query HTTP port.
//!
//! A Prometheus server (or Alloy, vmagent, the OpenTelemetry collector's remote write exporter)
//! pointed at Wake sends its samples here, and PromQL reads them back from the `metrics` table
//! like any other metric. The body is a snappy *block* (not framed) compressed protobuf
//! `prometheus.WriteRequest` ([`crate::prompb`]).
//!
//! # Mapping onto OTLP
//!
//! A write request is turned into one OTLP `ExportMetricsServiceRequest` and goes through
//! [`Store::ingest`] like an OTLP export, so it shares the WAL, the buffers and the durability
//! guarantee. The shape is a contract the PromQL side relies on:
//! - one `ResourceMetrics` with an empty resource, and one `ScopeMetrics` whose scope name is
//!   [`REMOTE_WRITE_SCOPE`]: rows with that scope hold Prometheus names and labels, which the
//!   Prometheus API shows without OTLP's name translation;
//! - each time series becomes one gauge `Metric` named by its `__name__` label, with no unit;
//!   each sample a `NumberDataPoint` with `time_unix_nano` = timestamp in ms × 1 000 000,
//!   `as_double` = the value bit for bit (staleness markers, [`crate::prompb::STALE_NAN_BITS`],
//!   survive), and every other label as a string attribute. Labels with an empty value are
//!   dropped: in Prometheus an empty label is the same as an absent one.
//!
//! Metadata (`WriteRequest.metadata`) is accepted and ignored: a metadata-only request answers
//! 204 and stores nothing. Exemplars and native histograms are skipped by the decoder.
//!
//! # Answers
//!
//! Prometheus retries 5xx (and, depending on its configuration, 429) and drops a batch on any
//! other 4xx, so the status is the whole contract:
//! - 204 once [`Store::ingest`] returned, i.e. the samples are in the write-ahead log;
//! - 400 for a body that is not snappy, not a `WriteRequest`, or holds an invalid series (no
//!   `__name__`, an empty or duplicated label name, a timestamp at or before the Unix epoch or
//!   after 2262). Validation is all-or-nothing: such a 400 means nothing of the request was
//!   stored;
//! - 400 also for samples outside the store's accepted time window (`max_record_age_secs`,
//!   `max_record_future_secs`): as Prometheus does with out-of-bounds samples, the samples in
//!   the window are stored and the answer names how many were dropped, so that the sender does
//!   not retry what can never be stored;
//! - 413 for a body above [`MAX_COMPRESSED_BYTES`] or one that decompresses to more than
//!   [`MAX_DECOMPRESSED_BYTES`] (checked from snappy's length header before inflating);
//! - 415 for another `Content-Encoding` than snappy, or another message than
//!   `prometheus.WriteRequest` (remote write 2.0 senders then fall back to 1.0);
//! - 503 with `Retry-After` when the store cannot take the samples now (memory budget, full
//!   disk, shutting down). Not 429: Prometheus retries 429 only when `retry_on_http_429` is set,
//!   and dropping samples because Wake was busy is worse than a retry;
//! - 500 for faults of ours.
//!
//! Error bodies are plain text, one line, as Prometheus's own receiver writes them.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::metrics::v1::{
    Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric, number_data_point,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use tracing::{debug, warn};

use super::{BodyError, read_limited, transport_label};
use crate::error::{Error, ErrorClass};
use crate::prompb::{Label, WriteRequest};
use crate::schema::{REMOTE_WRITE_SCOPE, Signal};
use crate::store::{OtlpRequest, Store};

/// The largest accepted request once decompressed. Prometheus sends a few MB at most.
pub const MAX_DECOMPRESSED_BYTES: usize = 64 * 1024 * 1024;

/// The largest accepted body as received: what snappy may make of [`MAX_DECOMPRESSED_BYTES`]
/// of incompressible input.
pub const MAX_COMPRESSED_BYTES: usize = 32 + MAX_DECOMPRESSED_BYTES + MAX_DECOMPRESSED_BYTES / 6;

/// The label that carries the metric name.
const METRIC_NAME_LABEL: &str = "__name__";

/// The only message this receiver decodes (remote write 1.0).
const WRITE_REQUEST_V1: &str = "prometheus.WriteRequest";

/// The `transport` label of the request self-metric.
const TRANSPORT: &str = "prometheus_remote_write";

/// The most of an oversized body read and discarded before answering 413 (see
/// [`read_limited`]): Prometheus retries network errors forever, so it must see the 413.
const DRAIN_MAX_BYTES: usize = 128 * 1024 * 1024;

/// Series labels quoted in an error message are cut at this many bytes.
const MAX_QUOTED_LABELS_BYTES: usize = 256;

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

/// Why a remote write request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RemoteWriteError {
    #[error("unsupported Content-Encoding {0:?}: expected snappy")]
    UnsupportedEncoding(String),

    #[error("unsupported Content-Type {0:?}: expected application/x-protobuf")]
    UnsupportedContentType(String),

    #[error("unsupported remote write message {0:?}: only prometheus.WriteRequest (remote write 1.0) is accepted")]
    UnsupportedMessage(String),

    #[error("request body of {actual_bytes} bytes or more exceeds the limit of {limit_bytes} bytes")]
    BodyTooLarge { limit_bytes: usize, actual_bytes: usize },

    #[error("request decompresses to {decompressed_bytes} bytes, more than the limit of {limit_bytes} bytes")]
    DecompressedTooLarge { limit_bytes: usize, decompressed_bytes: usize },

    #[error("could not read the request body: {0}")]
    Body(String),

    /// snappy's own messages already start with `snappy: `.
    #[error("{0}")]
    Snappy(#[from] snap::Error),

    #[error("invalid protobuf, expected a prometheus.WriteRequest: {0}")]
    Protobuf(#[from] prost::DecodeError),

    #[error("invalid series {labels}: no metric name (label __name__)")]
    MissingMetricName { labels: String },

    #[error("invalid series {labels}: a label has an empty name")]
    EmptyLabelName { labels: String },

    #[error("invalid series {labels}: duplicate label name {name:?}")]
    DuplicateLabelName { labels: String, name: String },

    #[error(
        "invalid sample of series {labels}: timestamp {timestamp_ms} ms is out of range \
         (after the Unix epoch and before 2262)"
    )]
    TimestampOutOfRange { labels: String, timestamp_ms: i64 },

    #[error("{rejected} samples rejected: {message}")]
    Rejected { rejected: u64, message: String },

    #[error(transparent)]
    Store(#[from] Error),
}

impl RemoteWriteError {
    pub fn status(&self) -> StatusCode {
        match self {
            RemoteWriteError::UnsupportedEncoding(_)
            | RemoteWriteError::UnsupportedContentType(_)
            | RemoteWriteError::UnsupportedMessage(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RemoteWriteError::BodyTooLarge { .. } | RemoteWriteError::DecompressedTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            RemoteWriteError::Body(_)
            | RemoteWriteError::Snappy(_)
            | RemoteWriteError::Protobuf(_)
            | RemoteWriteError::MissingMetricName { .. }
            | RemoteWriteError::EmptyLabelName { .. }
            | RemoteWriteError::DuplicateLabelName { .. }
            | RemoteWriteError::TimestampOutOfRange { .. }
            | RemoteWriteError::Rejected { .. } => StatusCode::BAD_REQUEST,
            RemoteWriteError::Store(error) => match error.class() {
                ErrorClass::BadRequest => StatusCode::BAD_REQUEST,
                ErrorClass::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
                ErrorClass::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                // 503 rather than 429 even for back-pressure: see the module documentation.
                ErrorClass::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
                ErrorClass::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    /// Seconds a client should wait before retrying, for errors it should retry.
    fn retry_after_secs(&self) -> Option<u64> {
        match self {
            RemoteWriteError::Store(error) if error.class() == ErrorClass::Unavailable => {
                Some(error.retry_after_secs())
            }
            _ => None,
        }
    }

    fn into_response(self) -> Response {
        let status = self.status();
        let retry_after = self.retry_after_secs();
        let mut response = (status, [(header::CONTENT_TYPE, TEXT_PLAIN)], format!("{self}\n")).into_response();
        if let Some(seconds) = retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl RemoteWriteError {
    /// [`decode`] then [`to_otlp`], as [`receive`] runs them, returning the OTLP request and
    /// its number of samples: the remote write fuzz target's entry point, through
    /// `crate::fuzzing` (an associated function because this module is private to `receiver`).
    #[doc(hidden)]
    pub(crate) fn fuzz_decode(compressed: &[u8]) -> Result<(ExportMetricsServiceRequest, usize), RemoteWriteError> {
        let (request, received) = decode(compressed).and_then(to_otlp)?;
        Ok((request, received.samples))
    }
}

/// What a request held, for logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Received {
    pub series: usize,
    pub samples: usize,
    pub metadata: usize,
}

/// Routes `POST /api/v1/write`, to be merged into the query API's router.
pub fn remote_write_router(store: Arc<Store>) -> Router {
    Router::new()
        .route("/api/v1/write", post(write))
        // The limits are ours to apply, before and after decompression.
        .layer(DefaultBodyLimit::disable())
        .with_state(store)
}

async fn write(State(store): State<Arc<Store>>, headers: HeaderMap, body: Body) -> Response {
    let requests = &store.metrics().requests;
    match receive(&store, &headers, body).await {
        Ok(received) => {
            requests.with_label_values(&transport_label(Signal::Metrics, TRANSPORT, "ok")).inc();
            debug!(
                series = received.series,
                samples = received.samples,
                metadata = received.metadata,
                transport = TRANSPORT,
                "remote write stored"
            );
            StatusCode::NO_CONTENT.into_response()
        }
        Err(error) => {
            let outcome = if error.retry_after_secs().is_some() { "unavailable" } else { "error" };
            requests.with_label_values(&transport_label(Signal::Metrics, TRANSPORT, outcome)).inc();
            warn!(%error, status = error.status().as_u16(), transport = TRANSPORT, "remote write refused");
            error.into_response()
        }
    }
}

/// Checks, decodes and stores one request; returns once the samples are durable.
async fn receive(store: &Store, headers: &HeaderMap, body: Body) -> Result<Received, RemoteWriteError> {
    check_headers(headers)?;
    let compressed = read_body(headers, body, MAX_COMPRESSED_BYTES).await?;
    // Inflating and converting tens of MB is CPU work: keep it off the async workers.
    let (request, received) = tokio::task::spawn_blocking(move || decode(&compressed).and_then(to_otlp))
        .await
        .map_err(|e| Error::Internal(format!("remote write decoding task failed: {e}")))??;
    if received.samples == 0 {
        // Metadata only, or series without samples: nothing to store.
        return Ok(received);
    }
    // No raw protobuf: the WAL keeps the OTLP encoding, which is what replay decodes.
    let outcome = store.ingest(OtlpRequest::Metrics(request), None).await?;
    if outcome.rejected > 0 {
        return Err(RemoteWriteError::Rejected { rejected: outcome.rejected, message: outcome.error_message });
    }
    Ok(received)
}

/// Refuses other encodings and messages than remote write 1.0's. Missing headers are let
/// through: hand-written clients often omit them.
fn check_headers(headers: &HeaderMap) -> Result<(), RemoteWriteError> {
    let text = |name| headers.get(name).map(|value: &HeaderValue| String::from_utf8_lossy(value.as_bytes()));
    if let Some(encoding) = text(header::CONTENT_ENCODING) {
        let encoding = encoding.trim();
        if !encoding.is_empty() && !encoding.eq_ignore_ascii_case("snappy") {
            return Err(RemoteWriteError::UnsupportedEncoding(encoding.to_string()));
        }
    }
    if let Some(content_type) = text(header::CONTENT_TYPE) {
        let mut parts = content_type.split(';');
        let media_type = parts.next().unwrap_or_default().trim();
        if media_type.is_empty() {
            return Ok(());
        }
        if !media_type.eq_ignore_ascii_case("application/x-protobuf") {
            return Err(RemoteWriteError::UnsupportedContentType(content_type.to_string()));
        }
        for parameter in parts {
            if let Some((name, value)) = parameter.split_once('=')
                && name.trim().eq_ignore_ascii_case("proto")
            {
                let message = value.trim().trim_matches('"');
                if message != WRITE_REQUEST_V1 {
                    return Err(RemoteWriteError::UnsupportedMessage(message.to_string()));
                }
            }
        }
    }
    Ok(())
}

/// Reads the body within `limit` bytes.
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, RemoteWriteError> {
    read_limited(headers, body, limit, DRAIN_MAX_BYTES).await.map_err(|error| match error {
        BodyError::Read(e) => RemoteWriteError::Body(e),
        BodyError::TooLarge { limit_bytes, actual_bytes } => {
            RemoteWriteError::BodyTooLarge { limit_bytes, actual_bytes }
        }
    })
}

/// Snappy block format, then protobuf. The decompressed size comes from snappy's header and is
/// checked before anything is allocated for it.
fn decode(compressed: &[u8]) -> Result<WriteRequest, RemoteWriteError> {
    let decompressed_bytes = snap::raw::decompress_len(compressed)?;
    if decompressed_bytes > MAX_DECOMPRESSED_BYTES {
        return Err(RemoteWriteError::DecompressedTooLarge { limit_bytes: MAX_DECOMPRESSED_BYTES, decompressed_bytes });
    }
    let decompressed = snap::raw::Decoder::new().decompress_vec(compressed)?;
    Ok(WriteRequest::decode(decompressed.as_slice())?)
}

/// Converts Prometheus samples into the OTLP request a remote write of them would store, for
/// writers inside the server (the ruler's recording rules and `ALERTS`), so that their series
/// read back exactly like remote-written ones.
pub fn prometheus_to_otlp(request: WriteRequest) -> Result<ExportMetricsServiceRequest, RemoteWriteError> {
    to_otlp(request).map(|(otlp, _)| otlp)
}

/// Converts a request into the OTLP shape described in the module documentation, after
/// validating every series: either all of it converts, or none.
pub(crate) fn to_otlp(request: WriteRequest) -> Result<(ExportMetricsServiceRequest, Received), RemoteWriteError> {
    let mut received = Received { series: request.timeseries.len(), metadata: request.metadata.len(), samples: 0 };
    let mut metrics = Vec::with_capacity(request.timeseries.len());
    for series in request.timeseries {
        validate_labels(&series.labels)?;
        // Checked before the labels are taken apart, so that the error can quote them.
        if let Some(sample) = series.samples.iter().find(|sample| timestamp_ns(sample.timestamp).is_none()) {
            return Err(RemoteWriteError::TimestampOutOfRange {
                labels: quote_labels(&series.labels),
                timestamp_ms: sample.timestamp,
            });
        }
        if series.samples.is_empty() {
            continue;
        }
        received.samples += series.samples.len();

        let mut name = String::new();
        let mut attributes = Vec::with_capacity(series.labels.len().saturating_sub(1));
        for label in series.labels {
            if label.name == METRIC_NAME_LABEL {
                name = label.value;
            } else if !label.value.is_empty() {
                attributes.push(KeyValue {
                    key: label.name,
                    value: Some(AnyValue { value: Some(any_value::Value::StringValue(label.value)) }),
                    ..Default::default()
                });
            }
        }

        let last = series.samples.len() - 1;
        let data_points = series
            .samples
            .into_iter()
            .enumerate()
            .map(|(index, sample)| NumberDataPoint {
                // The last point takes the attributes; the common one-sample series copies nothing.
                attributes: if index == last { std::mem::take(&mut attributes) } else { attributes.clone() },
                time_unix_nano: timestamp_ns(sample.timestamp).unwrap_or_default(),
                value: Some(number_data_point::Value::AsDouble(sample.value)),
                ..Default::default()
            })
            .collect();
        metrics.push(Metric { name, data: Some(metric::Data::Gauge(Gauge { data_points })), ..Default::default() });
    }
    Ok((as_remote_written(metrics), received))
}

/// Gauges with Prometheus names and labels, in the shape remote write gives them (the module
/// doc): what the Prometheus API shows as they are.
pub(crate) fn as_remote_written(metrics: Vec<Metric>) -> ExportMetricsServiceRequest {
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource::default()),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope { name: REMOTE_WRITE_SCOPE.to_string(), ..Default::default() }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// A series needs a non-empty `__name__`, and label names that are non-empty and unique.
fn validate_labels(labels: &[Label]) -> Result<(), RemoteWriteError> {
    if labels.iter().any(|label| label.name.is_empty()) {
        return Err(RemoteWriteError::EmptyLabelName { labels: quote_labels(labels) });
    }
    if let Some(name) = duplicate_name(labels) {
        return Err(RemoteWriteError::DuplicateLabelName { labels: quote_labels(labels), name: name.to_string() });
    }
    if !labels.iter().any(|label| label.name == METRIC_NAME_LABEL && !label.value.is_empty()) {
        return Err(RemoteWriteError::MissingMetricName { labels: quote_labels(labels) });
    }
    Ok(())
}

/// The first label name that occurs twice. Senders sort labels by name, which makes the usual
/// case one pass without allocating.
fn duplicate_name(labels: &[Label]) -> Option<&str> {
    if labels.windows(2).all(|pair| pair[0].name < pair[1].name) {
        return None;
    }
    let mut names: Vec<&str> = labels.iter().map(|label| label.name.as_str()).collect();
    names.sort_unstable();
    names.windows(2).find(|pair| pair[0] == pair[1]).map(|pair| pair[0])
}

/// Milliseconds since the epoch as OTLP nanoseconds. Zero would read as "unset" (the store puts
/// the receive time in its place) and OTLP cannot carry earlier times, so both are refused, as
/// is anything past `i64` nanoseconds (year 2262).
fn timestamp_ns(timestamp_ms: i64) -> Option<u64> {
    if timestamp_ms <= 0 {
        return None;
    }
    u64::try_from(timestamp_ms.checked_mul(1_000_000)?).ok()
}

/// `{__name__="up", job="node"}`, cut at [`MAX_QUOTED_LABELS_BYTES`].
fn quote_labels(labels: &[Label]) -> String {
    let mut text = String::from("{");
    for (index, label) in labels.iter().enumerate() {
        if index > 0 {
            text.push_str(", ");
        }
        text.push_str(&format!("{}={:?}", label.name, label.value));
        if text.len() > MAX_QUOTED_LABELS_BYTES {
            let mut cut = MAX_QUOTED_LABELS_BYTES;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
            text.push('…');
            break;
        }
    }
    text.push('}');
    text
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use arrow::array::{Array, AsArray, MapArray};
    use arrow::datatypes::{Float64Type, TimestampNanosecondType};
    use http_body_util::BodyExt;
    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value;

    use super::*;
    use crate::StoreConfig;
    use crate::prompb::{MetricMetadata, STALE_NAN_BITS, Sample, TimeSeries, is_stale_nan};

    fn label(name: &str, value: &str) -> Label {
        Label { name: name.to_string(), value: value.to_string() }
    }

    fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> TimeSeries {
        TimeSeries {
            labels: labels.iter().map(|(name, value)| label(name, value)).collect(),
            samples: samples.iter().map(|&(timestamp, value)| Sample { value, timestamp }).collect(),
        }
    }

    fn request(timeseries: Vec<TimeSeries>) -> WriteRequest {
        WriteRequest { timeseries, metadata: Vec::new() }
    }

    fn compressed(request: &WriteRequest) -> Vec<u8> {
        snap::raw::Encoder::new().compress_vec(&request.encode_to_vec()).unwrap()
    }

    fn stale_nan() -> f64 {
        f64::from_bits(STALE_NAN_BITS)
    }

    fn string_attributes(attributes: &[KeyValue]) -> Vec<(&str, &str)> {
        attributes
            .iter()
            .map(|kv| match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(text)) => (kv.key.as_str(), text.as_str()),
                other => panic!("attribute {} is not a string: {other:?}", kv.key),
            })
            .collect()
    }

    #[test]
    fn series_become_gauges_with_labels_as_attributes() {
        let write = request(vec![
            series(
                &[("__name__", "http_requests_total"), ("code", "200"), ("empty", ""), ("job", "api")],
                &[(1_700_000_000_123, 5.0), (1_700_000_015_123, 7.5)],
            ),
            series(&[("__name__", "up"), ("job", "node")], &[(1_700_000_000_000, stale_nan())]),
            series(&[("__name__", "no_samples")], &[]),
        ]);
        let (otlp, received) = to_otlp(write).unwrap();
        assert_eq!(received, Received { series: 3, samples: 3, metadata: 0 });

        let [resource] = otlp.resource_metrics.as_slice() else { panic!("one resource: {otlp:?}") };
        assert!(resource.resource.as_ref().is_some_and(|r| r.attributes.is_empty()));
        let [scope] = resource.scope_metrics.as_slice() else { panic!("one scope: {otlp:?}") };
        assert_eq!(scope.scope.as_ref().unwrap().name, REMOTE_WRITE_SCOPE);
        let [requests, up] = scope.metrics.as_slice() else { panic!("two metrics: {otlp:?}") };

        assert_eq!(requests.name, "http_requests_total");
        assert_eq!(requests.unit, "");
        let Some(metric::Data::Gauge(gauge)) = &requests.data else { panic!("not a gauge: {requests:?}") };
        let points: Vec<(u64, Option<Value>)> = gauge.data_points.iter().map(|p| (p.time_unix_nano, p.value)).collect();
        assert_eq!(
            points,
            vec![
                (1_700_000_000_123_000_000, Some(Value::AsDouble(5.0))),
                (1_700_000_015_123_000_000, Some(Value::AsDouble(7.5)))
            ]
        );
        for point in &gauge.data_points {
            // `__name__` is the metric's name and the empty label is no label at all.
            assert_eq!(string_attributes(&point.attributes), vec![("code", "200"), ("job", "api")]);
        }

        assert_eq!(up.name, "up");
        let Some(metric::Data::Gauge(gauge)) = &up.data else { panic!("not a gauge: {up:?}") };
        let [point] = gauge.data_points.as_slice() else { panic!("one point: {gauge:?}") };
        let Some(Value::AsDouble(value)) = point.value else { panic!("not a double: {point:?}") };
        assert_eq!(value.to_bits(), STALE_NAN_BITS);
        assert_eq!(string_attributes(&point.attributes), vec![("job", "node")]);
    }

    #[test]
    fn compressed_requests_decode() {
        let write = request(vec![series(&[("__name__", "up")], &[(1, 1.0)])]);
        assert_eq!(decode(&compressed(&write)).unwrap(), write);
    }

    #[test]
    fn bad_snappy_and_bad_protobuf_are_refused() {
        let error = decode(b"definitely not snappy").unwrap_err();
        assert!(matches!(error, RemoteWriteError::Snappy(_)), "{error}");
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        assert!(error.to_string().starts_with("snappy: "), "{error}");

        let error = decode(&[]).unwrap_err();
        assert!(matches!(error, RemoteWriteError::Snappy(_)), "{error}");

        // Framed snappy (the stream format) is not what remote write sends.
        let mut framed = snap::write::FrameEncoder::new(Vec::new());
        std::io::Write::write_all(&mut framed, &request(vec![]).encode_to_vec()).unwrap();
        let framed = framed.into_inner().unwrap();
        assert_eq!(decode(&framed).unwrap_err().status(), StatusCode::BAD_REQUEST);

        let garbage = snap::raw::Encoder::new().compress_vec(&[0xff; 32]).unwrap();
        let error = decode(&garbage).unwrap_err();
        assert!(matches!(error, RemoteWriteError::Protobuf(_)), "{error}");
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn oversized_requests_are_refused_from_the_snappy_header() {
        // A snappy block header (varint length) that announces 64 MiB + 1 bytes, and no data.
        let mut header = Vec::new();
        let mut length = MAX_DECOMPRESSED_BYTES as u64 + 1;
        while length >= 0x80 {
            header.push((length as u8) | 0x80);
            length >>= 7;
        }
        header.push(length as u8);
        let error = decode(&header).unwrap_err();
        assert!(matches!(error, RemoteWriteError::DecompressedTooLarge { .. }), "{error}");
        assert_eq!(error.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[test]
    fn series_without_a_name_are_refused() {
        for labels in [&[("job", "api")][..], &[("__name__", ""), ("job", "api")][..], &[][..]] {
            let error = to_otlp(request(vec![series(labels, &[(1, 1.0)])])).unwrap_err();
            assert!(matches!(error, RemoteWriteError::MissingMetricName { .. }), "{error}");
            assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        }
        let error = to_otlp(request(vec![series(&[("job", "api")], &[(1, 1.0)])])).unwrap_err();
        assert_eq!(error.to_string(), r#"invalid series {job="api"}: no metric name (label __name__)"#);
    }

    #[test]
    fn empty_label_names_are_refused() {
        let error = to_otlp(request(vec![series(&[("", "x"), ("__name__", "up")], &[(1, 1.0)])])).unwrap_err();
        assert!(matches!(error, RemoteWriteError::EmptyLabelName { .. }), "{error}");
        assert_eq!(error.status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn duplicate_label_names_are_refused_sorted_or_not() {
        for labels in [
            &[("__name__", "up"), ("job", "a"), ("job", "b")][..],
            &[("job", "a"), ("__name__", "up"), ("job", "b")][..],
            &[("__name__", "up"), ("__name__", "down")][..],
        ] {
            let error = to_otlp(request(vec![series(labels, &[(1, 1.0)])])).unwrap_err();
            let RemoteWriteError::DuplicateLabelName { name, .. } = &error else { panic!("{error}") };
            assert!(name == "job" || name == METRIC_NAME_LABEL, "{error}");
            assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        }
        assert_eq!(duplicate_name(&[label("b", ""), label("a", ""), label("c", "")]), None);
    }

    #[test]
    fn out_of_range_timestamps_are_refused() {
        for timestamp in [0, -1, i64::MIN, i64::MAX, i64::MAX / 1_000_000 + 1] {
            let error = to_otlp(request(vec![series(&[("__name__", "up")], &[(timestamp, 1.0)])])).unwrap_err();
            assert!(matches!(error, RemoteWriteError::TimestampOutOfRange { .. }), "{timestamp}: {error}");
            assert_eq!(error.status(), StatusCode::BAD_REQUEST);
        }
        assert_eq!(timestamp_ns(i64::MAX / 1_000_000), Some((i64::MAX / 1_000_000 * 1_000_000) as u64));
    }

    #[test]
    fn one_invalid_series_refuses_the_whole_request() {
        let write = request(vec![series(&[("__name__", "good")], &[(1, 1.0)]), series(&[("job", "x")], &[(1, 1.0)])]);
        assert!(matches!(to_otlp(write), Err(RemoteWriteError::MissingMetricName { .. })));
    }

    #[test]
    fn quoted_labels_are_bounded() {
        let long = "é".repeat(1000);
        let quoted = quote_labels(&[label("__name__", "up"), label("big", &long)]);
        assert!(quoted.len() <= MAX_QUOTED_LABELS_BYTES + 8, "{}", quoted.len());
        assert!(quoted.starts_with(r#"{__name__="up", big=""#) && quoted.ends_with("…}"), "{quoted}");
    }

    #[test]
    fn headers_of_remote_write_1_0_are_accepted_and_others_refused() {
        let headers = |pairs: &[(header::HeaderName, &'static str)]| {
            let mut map = HeaderMap::new();
            for (name, value) in pairs {
                map.insert(name.clone(), HeaderValue::from_static(value));
            }
            map
        };
        for ok in [
            headers(&[]),
            headers(&[(header::CONTENT_ENCODING, "snappy"), (header::CONTENT_TYPE, "application/x-protobuf")]),
            headers(&[(header::CONTENT_TYPE, "application/x-protobuf;proto=prometheus.WriteRequest")]),
        ] {
            check_headers(&ok).unwrap();
        }
        for (refused, why) in [
            (headers(&[(header::CONTENT_ENCODING, "gzip")]), "gzip"),
            (headers(&[(header::CONTENT_TYPE, "application/json")]), "JSON"),
            (headers(&[(header::CONTENT_TYPE, "application/x-protobuf;proto=io.prometheus.write.v2.Request")]), "v2"),
        ] {
            let error = check_headers(&refused).unwrap_err();
            assert_eq!(error.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE, "{why}: {error}");
        }
    }

    #[test]
    fn large_requests_convert_every_sample() {
        let timeseries = (0..500)
            .map(|i| {
                let instance = format!("host-{i}:9100");
                let samples: Vec<(i64, f64)> = (0..100).map(|s| (1_700_000_000_000 + s * 15_000, s as f64)).collect();
                series(&[("__name__", "node_load1"), ("instance", &instance), ("job", "node")], &samples)
            })
            .collect();
        let (otlp, received) = to_otlp(request(timeseries)).unwrap();
        assert_eq!(received, Received { series: 500, samples: 50_000, metadata: 0 });
        let metrics = &otlp.resource_metrics[0].scope_metrics[0].metrics;
        let points: usize = metrics
            .iter()
            .map(|m| match &m.data {
                Some(metric::Data::Gauge(gauge)) => gauge.data_points.len(),
                other => panic!("not a gauge: {other:?}"),
            })
            .sum();
        assert_eq!(points, 50_000);
    }

    fn open(dir: &Path) -> Arc<Store> {
        let config = StoreConfig {
            data_dir: dir.to_path_buf(),
            min_free_disk_bytes: 0,
            max_record_age_secs: 0,
            ..StoreConfig::default()
        };
        Store::open(config, &prometheus::Registry::new()).unwrap()
    }

    fn snappy_headers() -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("snappy"));
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-protobuf"));
        headers
    }

    async fn write_response(store: &Arc<Store>, body: Vec<u8>) -> Response {
        write(State(store.clone()), snappy_headers(), Body::from(body)).await
    }

    async fn post(store: &Arc<Store>, body: Vec<u8>) -> (StatusCode, String) {
        let response = write_response(store, body).await;
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn buffered_rows(store: &Store) -> usize {
        store.snapshot(Signal::Metrics).buffered.iter().map(|batch| batch.num_rows()).sum()
    }

    fn requests(store: &Store, outcome: &'static str) -> u64 {
        store.metrics().requests.with_label_values(&transport_label(Signal::Metrics, TRANSPORT, outcome)).get()
    }

    #[tokio::test]
    async fn stored_rows_keep_names_labels_times_and_stale_markers() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let write = request(vec![series(
            &[("__name__", "up"), ("instance", "a:9100"), ("job", "node")],
            &[(1_700_000_000_000, 1.0), (1_700_000_015_000, stale_nan())],
        )]);
        let (status, body) = post(&store, compressed(&write)).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        assert_eq!(requests(&store, "ok"), 1);

        let snapshot = store.snapshot(Signal::Metrics);
        let [batch] = snapshot.buffered.as_slice() else { panic!("one batch: {:?}", snapshot.buffered) };
        let column = |name: &str| batch.column_by_name(name).unwrap_or_else(|| panic!("no column {name}")).clone();
        let names = column("metric_name");
        let names = names.as_string::<i32>();
        assert_eq!((names.value(0), names.value(1)), ("up", "up"));
        let scopes = column("scope_name");
        assert_eq!(scopes.as_string::<i32>().value(0), REMOTE_WRITE_SCOPE);
        let timestamps = column("timestamp");
        let timestamps = timestamps.as_primitive::<TimestampNanosecondType>();
        assert_eq!((timestamps.value(0), timestamps.value(1)), (1_700_000_000_000_000_000, 1_700_000_015_000_000_000));
        let values = column("value");
        let values = values.as_primitive::<Float64Type>();
        assert_eq!(values.value(0), 1.0);
        assert!(is_stale_nan(values.value(1)), "{:#x}", values.value(1).to_bits());
        let attributes = column("attributes");
        let attributes: &MapArray = attributes.as_map();
        let row = attributes.value(0);
        let keys = row.column(0).as_string::<i32>();
        let values = row.column(1).as_string::<i32>();
        let pairs: Vec<(&str, &str)> = (0..row.len()).map(|i| (keys.value(i), values.value(i))).collect();
        assert_eq!(pairs, vec![("instance", "a:9100"), ("job", "node")]);
    }

    #[tokio::test]
    async fn refused_requests_store_nothing_and_are_counted() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());

        let (status, body) = post(&store, b"garbage".to_vec()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body.starts_with("snappy: ") && body.ends_with('\n'), "{body:?}");

        let nameless = request(vec![series(&[("__name__", "ok")], &[(1, 1.0)]), series(&[("job", "x")], &[(1, 1.0)])]);
        let (status, body) = post(&store, compressed(&nameless)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert!(body.contains("__name__"), "{body}");

        assert_eq!(buffered_rows(&store), 0);
        assert_eq!(requests(&store, "error"), 2);
        assert_eq!(requests(&store, "ok"), 0);
    }

    #[tokio::test]
    async fn metadata_only_requests_are_accepted_and_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let metadata = WriteRequest {
            timeseries: Vec::new(),
            metadata: vec![MetricMetadata {
                r#type: 1,
                metric_family_name: "http_requests_total".into(),
                help: "Requests.".into(),
                unit: String::new(),
            }],
        };
        let (status, body) = post(&store, compressed(&metadata)).await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
        assert_eq!(buffered_rows(&store), 0);
    }

    #[tokio::test]
    async fn oversized_bodies_are_refused_with_413() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(2048));
        let error = read_body(&headers, Body::from(vec![0u8; 2048]), 1024).await.unwrap_err();
        assert_eq!(error.status(), StatusCode::PAYLOAD_TOO_LARGE, "{error}");
        let error = read_body(&HeaderMap::new(), Body::from(vec![0u8; 2048]), 1024).await.unwrap_err();
        assert_eq!(error.status(), StatusCode::PAYLOAD_TOO_LARGE, "{error}");
        assert_eq!(read_body(&HeaderMap::new(), Body::from(vec![0u8; 1024]), 1024).await.unwrap().len(), 1024);
    }

    #[tokio::test]
    async fn a_shutting_down_store_answers_503_with_retry_after() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        store.shutdown().await.unwrap();
        let write = request(vec![series(&[("__name__", "up")], &[(1_700_000_000_000, 1.0)])]);
        let response = write_response(&store, compressed(&write)).await;
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(response.headers().contains_key(header::RETRY_AFTER));
        assert_eq!(requests(&store, "unavailable"), 1);
    }
}
