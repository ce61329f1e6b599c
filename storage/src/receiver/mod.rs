//! Receivers: OTLP over gRPC (the three `Export` services) and HTTP (`/v1/logs`, `/v1/metrics`,
//! `/v1/traces`), and Prometheus remote write 1.0 (`/api/v1/write`), all feeding
//! [`crate::Store::ingest`].

mod grpc;
mod http;
pub(crate) mod remote_write;

pub use grpc::grpc_routes;
pub use http::http_router;
pub use remote_write::{
    MAX_COMPRESSED_BYTES, MAX_DECOMPRESSED_BYTES, RemoteWriteError, prometheus_to_otlp, remote_write_router,
};

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, header};
use bytes::Bytes;
use http_body_util::BodyExt;

use crate::schema::Signal;

pub(crate) fn transport_label(signal: Signal, transport: &'static str, outcome: &'static str) -> [&'static str; 3] {
    [signal.table_name(), transport, outcome]
}

/// How long an oversized body may take to drain before the 413 is sent anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why [`read_limited`] returned no body.
#[derive(Debug)]
pub enum BodyError {
    /// Reading from the connection failed; the transport's message.
    Read(String),
    /// The body is longer than the limit: `actual_bytes` is the declared `Content-Length`, or
    /// how much was seen, and always more than `limit_bytes`.
    TooLarge { limit_bytes: usize, actual_bytes: usize },
}

/// Reads a request body of at most `limit` bytes. A `Content-Length` over the limit is refused
/// without reading the body into memory.
///
/// An oversized body is read and discarded, up to `drain_max` bytes in all and for at most
/// [`DRAIN_TIMEOUT`], before returning [`BodyError::TooLarge`]: a server that answers and closes
/// while the client is still sending makes most clients see a reset connection instead of the
/// 413, and retry.
pub async fn read_limited(
    headers: &HeaderMap,
    mut body: Body,
    limit: usize,
    drain_max: usize,
) -> Result<Bytes, BodyError> {
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    let mut seen = 0usize;
    if declared.is_none_or(|length| length <= limit) {
        let mut raw = Vec::with_capacity(declared.unwrap_or(0));
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| BodyError::Read(e.to_string()))?;
            let Ok(data) = frame.into_data() else { continue };
            seen = seen.saturating_add(data.len());
            if seen > limit {
                break;
            }
            raw.extend_from_slice(&data);
        }
        if seen <= limit {
            return Ok(Bytes::from(raw));
        }
    }
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Some(Ok(frame)) = body.frame().await {
            seen = seen.saturating_add(frame.data_ref().map_or(0, |d| d.len()));
            if seen > drain_max {
                break;
            }
        }
    })
    .await;
    Err(BodyError::TooLarge { limit_bytes: limit, actual_bytes: declared.unwrap_or(seen).max(limit.saturating_add(1)) })
}
