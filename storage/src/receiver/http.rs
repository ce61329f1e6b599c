//! OTLP/HTTP: protobuf and JSON bodies, optionally gzip-compressed, answered in kind.
//!
//! The size limit applies to the body as received and again as it inflates, so a small gzip
//! bomb is refused after reading at most `max_request_bytes + 1` inflated bytes.

use std::io::Read;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsPartialSuccess, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsPartialSuccess, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTracePartialSuccess, ExportTraceServiceResponse};
use prost::Message;
use tracing::warn;

use super::{BodyError, read_limited, transport_label};
use crate::error::{Error, ErrorClass};
use crate::schema::Signal;
use crate::store::{IngestOutcome, OtlpRequest, Store};

const PROTOBUF: &str = "application/x-protobuf";
const JSON: &str = "application/json";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    fn content_type(self) -> &'static str {
        match self {
            Encoding::Protobuf => PROTOBUF,
            Encoding::Json => JSON,
        }
    }
}

/// Routes `/v1/logs`, `/v1/metrics` and `/v1/traces`.
pub fn http_router(store: Arc<Store>) -> Router {
    Router::new()
        .route("/v1/logs", post(|s, h, b| export(s, Signal::Logs, h, b)))
        .route("/v1/metrics", post(|s, h, b| export(s, Signal::Metrics, h, b)))
        .route("/v1/traces", post(|s, h, b| export(s, Signal::Spans, h, b)))
        // The limit is ours to apply, after decompression too.
        .layer(DefaultBodyLimit::disable())
        .with_state(store)
}

fn request_encoding(headers: &HeaderMap) -> Result<Encoding, Error> {
    let value = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let media_type = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match media_type.as_str() {
        "application/x-protobuf" | "application/protobuf" => Ok(Encoding::Protobuf),
        "application/json" => Ok(Encoding::Json),
        _ => Err(Error::UnsupportedContentType(value.to_string())),
    }
}

/// The most of an oversized body read and discarded before answering 413 (see
/// [`read_limited`]).
const DRAIN_MAX_BYTES: usize = 64 * 1024 * 1024;

/// Reads the body within `limit` bytes, as it arrived (still compressed).
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, Error> {
    read_limited(headers, body, limit, DRAIN_MAX_BYTES).await.map_err(|error| match error {
        BodyError::Read(e) => Error::InvalidRequest(format!("could not read the request body: {e}")),
        BodyError::TooLarge { limit_bytes, actual_bytes } => Error::RequestTooLarge { limit_bytes, actual_bytes },
    })
}

/// Undoes the `Content-Encoding` of a body, within the size limit.
fn decode_body(headers: &HeaderMap, raw: Bytes, limit: usize) -> Result<Bytes, Error> {
    let too_large = |actual_bytes| Error::RequestTooLarge { limit_bytes: limit, actual_bytes };
    let encoding = headers
        .get(header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("identity")
        .trim()
        .to_ascii_lowercase();
    match encoding.as_str() {
        "" | "identity" => Ok(raw),
        "gzip" | "x-gzip" => {
            let mut inflated = Vec::new();
            flate2::read::MultiGzDecoder::new(raw.as_ref())
                .take(limit as u64 + 1)
                .read_to_end(&mut inflated)
                .map_err(|e| Error::InvalidRequest(format!("invalid gzip body: {e}")))?;
            if inflated.len() > limit {
                return Err(too_large(inflated.len()));
            }
            Ok(Bytes::from(inflated))
        }
        other => {
            Err(Error::InvalidRequest(format!("unsupported Content-Encoding {other:?}: expected gzip or identity")))
        }
    }
}

async fn export(State(store): State<Arc<Store>>, signal: Signal, headers: HeaderMap, body: Body) -> Response {
    // Answer in the request's encoding; an unknown content type gets JSON.
    let encoding = request_encoding(&headers).unwrap_or(Encoding::Json);
    let result = async {
        let encoding = request_encoding(&headers)?;
        let limit = store.config().max_request_bytes;
        let compressed = read_body(&headers, body, limit).await?;
        // Inflating and decoding up to 20 MiB is CPU work: off the async workers, which
        // acknowledge every other request.
        let headers = headers.clone();
        let (request, raw) = tokio::task::spawn_blocking(move || -> Result<_, Error> {
            let bytes = decode_body(&headers, compressed, limit)?;
            Ok(match encoding {
                Encoding::Protobuf => (OtlpRequest::decode_protobuf(signal, &bytes)?, Some(bytes)),
                Encoding::Json => (OtlpRequest::decode_json(signal, &bytes)?, None),
            })
        })
        .await
        .map_err(|e| Error::Internal(format!("decoding task failed: {e}")))??;
        store.ingest(request, raw).await
    }
    .await;
    match result {
        Ok(outcome) => {
            store.metrics().requests.with_label_values(&transport_label(signal, "http", "ok")).inc();
            success(signal, encoding, &outcome)
        }
        Err(error) => {
            let outcome = if error.class() == ErrorClass::Unavailable { "unavailable" } else { "error" };
            store.metrics().requests.with_label_values(&transport_label(signal, "http", outcome)).inc();
            warn!(%signal, %error, transport = "http", "export refused");
            failure(encoding, &error)
        }
    }
}

fn encoded<M: Message + serde::Serialize>(encoding: Encoding, message: &M) -> Vec<u8> {
    match encoding {
        Encoding::Protobuf => message.encode_to_vec(),
        Encoding::Json => serde_json::to_vec(message).unwrap_or_else(|_| b"{}".to_vec()),
    }
}

fn success(signal: Signal, encoding: Encoding, outcome: &IngestOutcome) -> Response {
    let rejected = outcome.rejected as i64;
    let message = outcome.error_message.clone();
    // OTLP: partial_success stays unset when everything was accepted.
    let partial = outcome.rejected > 0;
    let body = match signal {
        Signal::Logs => encoded(
            encoding,
            &ExportLogsServiceResponse {
                partial_success: partial
                    .then_some(ExportLogsPartialSuccess { rejected_log_records: rejected, error_message: message }),
            },
        ),
        Signal::Metrics => encoded(
            encoding,
            &ExportMetricsServiceResponse {
                partial_success: partial
                    .then_some(ExportMetricsPartialSuccess { rejected_data_points: rejected, error_message: message }),
            },
        ),
        Signal::Spans => encoded(
            encoding,
            &ExportTraceServiceResponse {
                partial_success: partial
                    .then_some(ExportTracePartialSuccess { rejected_spans: rejected, error_message: message }),
            },
        ),
    };
    (StatusCode::OK, [(header::CONTENT_TYPE, encoding.content_type())], body).into_response()
}

/// OTLP/HTTP failures carry a `google.rpc.Status`; only 429, 502, 503 and 504 are retried.
fn failure(encoding: Encoding, error: &Error) -> Response {
    let (status, grpc_code) = match error.class() {
        ErrorClass::BadRequest => (StatusCode::BAD_REQUEST, tonic::Code::InvalidArgument),
        ErrorClass::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, tonic::Code::ResourceExhausted),
        ErrorClass::UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, tonic::Code::InvalidArgument),
        ErrorClass::Unavailable if matches!(error, Error::Backpressure { .. } | Error::RateLimited { .. }) => {
            (StatusCode::TOO_MANY_REQUESTS, tonic::Code::ResourceExhausted)
        }
        ErrorClass::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, tonic::Code::Unavailable),
        ErrorClass::Internal => (StatusCode::INTERNAL_SERVER_ERROR, tonic::Code::Internal),
    };
    let message = error.to_string();
    let body = match encoding {
        Encoding::Protobuf => {
            tonic_types::Status { code: grpc_code as i32, message, details: Vec::new() }.encode_to_vec()
        }
        Encoding::Json => serde_json::json!({ "code": grpc_code as i32, "message": message }).to_string().into_bytes(),
    };
    let mut response = (status, [(header::CONTENT_TYPE, encoding.content_type())], body).into_response();
    if error.class() == ErrorClass::Unavailable {
        response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(error.retry_after_secs()));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_types_are_recognised_with_parameters() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json; charset=utf-8"));
        assert_eq!(request_encoding(&headers).unwrap(), Encoding::Json);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-protobuf"));
        assert_eq!(request_encoding(&headers).unwrap(), Encoding::Protobuf);
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(matches!(request_encoding(&headers), Err(Error::UnsupportedContentType(_))));
    }

    #[tokio::test]
    async fn gzip_bomb_is_refused_without_inflating_it_all() {
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut encoder, &vec![0u8; 8 * 1024 * 1024]).unwrap();
        let bomb = encoder.finish().unwrap();
        assert!(bomb.len() < 64 * 1024);
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let compressed = read_body(&headers, Body::from(bomb), 1024 * 1024).await.expect("small on the wire");
        let error = decode_body(&headers, compressed, 1024 * 1024).unwrap_err();
        assert!(matches!(error, Error::RequestTooLarge { .. }), "{error}");
    }

    #[tokio::test]
    async fn oversize_bodies_and_bad_gzip_are_client_errors() {
        let headers = HeaderMap::new();
        let error = read_body(&headers, Body::from(vec![1u8; 2048]), 1024).await.unwrap_err();
        assert!(matches!(error, Error::RequestTooLarge { .. }), "{error}");

        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        let compressed = read_body(&headers, Body::from(&b"not gzip"[..]), 1024).await.expect("read");
        let error = decode_body(&headers, compressed, 1024).unwrap_err();
        assert_eq!(error.class(), ErrorClass::BadRequest, "{error}");
    }
}
