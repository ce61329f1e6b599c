//! Query errors, and which of them are the client's fault.

use datafusion::error::DataFusionError;
use http::StatusCode;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed (its body, its parameters).
    #[error("{0}")]
    BadRequest(String),

    /// DDL, DML, `COPY`, `SET` and other statements that would change state or touch files.
    #[error("Wake's SQL is read-only: {0} is not allowed")]
    ReadOnly(String),

    #[error("{0}")]
    DataFusion(#[from] DataFusionError),

    #[error("full-text search: {0}")]
    Storage(#[from] wake_storage::Error),

    #[error("the query task failed: {0}")]
    Task(String),

    /// Reading a file directly, outside DataFusion (the PromQL series index).
    #[error("reading the store's files: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),

    /// A configured query limit (`limit` is its key under `query:`) stopped the query.
    #[error("{message}")]
    Limit { limit: &'static str, message: String },

    /// The query ran longer than `query.timeout_secs` and was cancelled.
    #[error("the query timed out after {0:?} (query.timeout_secs)")]
    Timeout(std::time::Duration),

    /// Too many queries run and wait for this API: retry later.
    #[error("too many queries are running or waiting for the {api} API; retry later")]
    Overloaded { api: &'static str },

    /// As many live tails are open as `query.max_concurrent_tail_requests` allows: retry later.
    /// The text is Loki's, which `logcli` and Grafana show as is.
    #[error(
        "max concurrent tail requests limit exceeded, count > limit ({} > {max}) (query.max_concurrent_tail_requests)",
        max.saturating_add(1)
    )]
    TooManyTails { max: usize },
}

impl Error {
    /// 4xx when the query is at fault (syntax, unknown column, refused statement, bad
    /// full-text query, over the memory limit), 5xx when Wake is.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::ReadOnly(_) => StatusCode::FORBIDDEN,
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::DataFusion(error) => datafusion_status(error),
            Error::Storage(error) => storage_status(error),
            Error::Task(_) | Error::Parquet(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Error::Limit { limit, .. } if is_result_cap(limit) => StatusCode::PAYLOAD_TOO_LARGE,
            Error::Limit { limit, .. } if is_text_limit(limit) => StatusCode::BAD_REQUEST,
            Error::Limit { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            Error::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Overloaded { .. } | Error::TooManyTails { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The limit this error reports, as counted in `wake_query_limit_hits_total`.
    pub fn limit_name(&self) -> Option<&'static str> {
        match self {
            Error::Limit { limit, .. } => Some(limit),
            Error::Timeout(_) => Some("timeout"),
            Error::DataFusion(error) if matches!(error.find_root(), DataFusionError::ResourcesExhausted(_)) => {
                Some("memory_limit_bytes")
            }
            Error::DataFusion(error) => match error.find_root() {
                DataFusionError::External(inner) => inner.downcast_ref::<Error>().and_then(Error::limit_name),
                _ => None,
            },
            _ => None,
        }
    }

    /// Whether the client should retry later (429/503 with `Retry-After`).
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Error::Overloaded { .. } | Error::TooManyTails { .. } => Some(crate::limits::RETRY_AFTER_SECS),
            _ => None,
        }
    }
}

/// The limits on a query's text (its length, its nesting), which every API reports as 400: the
/// query is refused before it is evaluated.
pub(crate) fn is_text_limit(limit: &str) -> bool {
    matches!(limit, "max_query_bytes" | "max_query_depth")
}

/// The limits on the size of an answer, which the SQL API reports as 413.
fn is_result_cap(limit: &str) -> bool {
    matches!(limit, "max_result_rows" | "max_result_bytes" | "request_body")
}

fn storage_status(error: &wake_storage::Error) -> StatusCode {
    match error {
        wake_storage::Error::FullTextQuery { .. } | wake_storage::Error::InvalidRequest(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn datafusion_status(error: &DataFusionError) -> StatusCode {
    match error.find_root() {
        DataFusionError::SQL(..)
        | DataFusionError::Plan(_)
        | DataFusionError::SchemaError(..)
        | DataFusionError::NotImplemented(_)
        | DataFusionError::Configuration(_)
        | DataFusionError::Execution(_) => StatusCode::BAD_REQUEST,
        DataFusionError::ResourcesExhausted(_) => StatusCode::UNPROCESSABLE_ENTITY,
        DataFusionError::External(inner) => match inner.downcast_ref::<wake_storage::Error>() {
            Some(error) => storage_status(error),
            None => match inner.downcast_ref::<Error>() {
                Some(error) => error.status(),
                None => StatusCode::INTERNAL_SERVER_ERROR,
            },
        },
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_mistakes_are_4xx_and_wake_failures_5xx() {
        assert_eq!(Error::ReadOnly("CREATE TABLE".into()).status(), StatusCode::FORBIDDEN);
        assert_eq!(Error::DataFusion(DataFusionError::Plan("no such column".into())).status(), StatusCode::BAD_REQUEST);
        let bad_query = wake_storage::Error::FullTextQuery { query: "(".into(), reason: "syntax".into() };
        let wrapped = DataFusionError::External(Box::new(bad_query)).context("while scanning");
        assert_eq!(Error::DataFusion(wrapped).status(), StatusCode::BAD_REQUEST);
        let io = DataFusionError::IoError(std::io::Error::other("disk"));
        assert_eq!(Error::DataFusion(io).status(), StatusCode::INTERNAL_SERVER_ERROR);
        let cap = Error::Limit { limit: "max_result_rows", message: "too many".into() };
        assert_eq!(cap.status(), StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(Error::Overloaded { api: "sql" }.status(), StatusCode::TOO_MANY_REQUESTS);
        let tails = Error::TooManyTails { max: 10 };
        assert_eq!((tails.status(), tails.retry_after_secs()), (StatusCode::TOO_MANY_REQUESTS, Some(1)));
        let memory = DataFusionError::ResourcesExhausted("pool".into()).context("sorting");
        assert_eq!(Error::DataFusion(memory).limit_name(), Some("memory_limit_bytes"));
    }
}
