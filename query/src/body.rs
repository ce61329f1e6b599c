//! Request bodies of the query APIs (form bodies of Prometheus and Loki, the SQL endpoint's
//! JSON): read within `query.max_query_bytes` plus room for the other parameters, with the
//! store's reader, which drains an oversized body before the 413 is sent so that the client
//! sees the 413 rather than a reset connection.

// Client numbers are handled here: no silent truncation, sign loss or overflow.
#![warn(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::arithmetic_side_effects)]

use axum::body::Body;
use axum::body::Bytes;
use axum::http::HeaderMap;
use wake_storage::receiver::{BodyError, read_limited};

use crate::config::QueryConfig;

/// Room for the parameters of a request beside its query text.
const PARAMETER_BYTES: usize = 64 * 1024;
/// The most of an oversized body read and discarded before answering 413.
const DRAIN_MAX_BYTES: usize = 128 * 1024 * 1024;

/// Why a body was not read.
#[derive(Debug)]
pub(crate) enum BodyRefusal {
    /// Longer than the limit: 413.
    TooLarge(String),
    /// The connection failed while it was read: 400.
    Unreadable(String),
}

/// The largest body a query request may have.
pub(crate) fn limit(config: &QueryConfig) -> usize {
    config.max_query_bytes.saturating_add(PARAMETER_BYTES)
}

pub(crate) async fn read(config: &QueryConfig, headers: &HeaderMap, body: Body) -> Result<Bytes, BodyRefusal> {
    read_limited(headers, body, limit(config), DRAIN_MAX_BYTES).await.map_err(|error| match error {
        BodyError::Read(message) => BodyRefusal::Unreadable(format!("could not read the request body: {message}")),
        BodyError::TooLarge { limit_bytes, actual_bytes } => BodyRefusal::TooLarge(format!(
            "the request body is {actual_bytes} bytes, more than the limit of {limit_bytes} (query.max_query_bytes)"
        )),
    })
}
