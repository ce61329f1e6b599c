//! Query errors, and which of them are the client's fault.

use datafusion::error::DataFusionError;
use http::StatusCode;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
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
}

impl Error {
    /// 4xx when the query is at fault (syntax, unknown column, refused statement, bad
    /// full-text query, over the memory limit), 5xx when Wake is.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::ReadOnly(_) => StatusCode::FORBIDDEN,
            Error::DataFusion(error) => datafusion_status(error),
            Error::Storage(error) => storage_status(error),
            Error::Task(_) | Error::Parquet(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
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
    }
}
