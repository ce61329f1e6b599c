//! Errors of the store, and the one place that decides how each maps onto OTLP's
//! retryable / non-retryable responses.

use std::io;
use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid configuration: {0}")]
    Config(String),

    #[error("the data dir {} is in use by another process, which holds its .lock file", .0.display())]
    DataDirLocked(PathBuf),

    #[error("invalid request: {0}")]
    InvalidRequest(String),

    #[error("request body of {actual_bytes} bytes or more exceeds the limit of {limit_bytes} bytes")]
    RequestTooLarge { limit_bytes: usize, actual_bytes: usize },

    #[error(
        "the request's records take {actual_bytes} bytes once each carries its resource and scope \
         attributes, more than the limit of {limit_bytes} bytes (8 × max_request_bytes): send fewer records per request"
    )]
    RowsTooLarge { limit_bytes: usize, actual_bytes: usize },

    #[error("unsupported content type {0:?}: expected application/x-protobuf or application/json")]
    UnsupportedContentType(String),

    #[error("the store is over its memory budget ({buffered_bytes} bytes buffered), retry later")]
    Backpressure { buffered_bytes: usize },

    #[error(
        "ingestion rate limit exceeded: {rate_bytes} bytes/s with a burst of {burst_bytes} bytes \
         (ingestion_rate_bytes), retry later"
    )]
    RateLimited { rate_bytes: u64, burst_bytes: u64 },

    #[error("not enough free disk space in {path}: {available_bytes} bytes available, {required_bytes} required")]
    DiskFull { path: PathBuf, available_bytes: u64, required_bytes: u64 },

    #[error("the store is shutting down")]
    ShuttingDown,

    #[error("i/o error on {path}: {source}")]
    Io { path: PathBuf, source: io::Error },

    #[error("write-ahead log is corrupt at {path} offset {offset}: {reason}")]
    WalCorrupt { path: PathBuf, offset: u64, reason: String },

    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),

    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),

    #[error("full-text index: {0}")]
    FullText(#[from] tantivy::TantivyError),

    #[error("full-text query {query:?} is invalid: {reason}")]
    FullTextQuery { query: String, reason: String },

    #[error("manifest {path}: {reason}")]
    Manifest { path: PathBuf, reason: String },

    #[error("internal error: {0}")]
    Internal(String),

    /// A search stopped because its query was dropped: nobody waits for the answer.
    #[error("the full-text search was cancelled")]
    Cancelled,
}

/// How a failure looks to a client: this decides the HTTP status, the gRPC code and whether the
/// client may retry (OTLP specification, "Failures").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Bad data: 400 / INVALID_ARGUMENT, never retried.
    BadRequest,
    /// 413; the OTLP spec forbids retrying it.
    TooLarge,
    /// 415.
    UnsupportedMediaType,
    /// The store cannot accept now: 503 with Retry-After / UNAVAILABLE with RetryInfo.
    Unavailable,
    /// A fault of ours: 500 / INTERNAL.
    Internal,
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }

    pub fn class(&self) -> ErrorClass {
        match self {
            Error::InvalidRequest(_) | Error::FullTextQuery { .. } => ErrorClass::BadRequest,
            Error::RequestTooLarge { .. } | Error::RowsTooLarge { .. } => ErrorClass::TooLarge,
            Error::UnsupportedContentType(_) => ErrorClass::UnsupportedMediaType,
            Error::Backpressure { .. } | Error::RateLimited { .. } | Error::DiskFull { .. } | Error::ShuttingDown => {
                ErrorClass::Unavailable
            }
            // A full disk or quota surfaces as an i/o error from write or fsync: it is transient
            // from the client's point of view, so it must be retried, not dropped.
            Error::Io { source, .. } if is_out_of_space(source) => ErrorClass::Unavailable,
            _ => ErrorClass::Internal,
        }
    }

    /// Seconds a client should wait before retrying an `Unavailable` error.
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            Error::Backpressure { .. } | Error::RateLimited { .. } => 1,
            Error::ShuttingDown => 5,
            _ => 5,
        }
    }
}

pub(crate) fn is_out_of_space(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || error.kind() == io::ErrorKind::StorageFull
}
