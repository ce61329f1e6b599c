//! Traces over the `spans` table: Tempo's and Jaeger's query APIs and TraceQL, for Grafana's
//! Tempo and Jaeger data sources, the Jaeger UI and `wake traces`.
//!
//! - `model`: one trace in memory, with the tree between its spans;
//! - `load`: whole traces by id and candidate trace ids, through SQL;
//! - `traceql`: the TraceQL parser, its evaluator over one trace, and the SQL prefilter;
//! - `search`: a search: candidates by the prefilter, whole traces, TraceQL over each;
//! - `query_range`: TraceQL metrics (`| rate()` …) over every matching trace of a range;
//! - `tags`: tag names and values for autocomplete;
//! - `otlp`: a trace in OTLP's shape (Tempo's protobuf and JSON);
//! - `params`: trace ids, times, limits as clients send them;
//! - `tempo`: Tempo's HTTP API; `jaeger` and `jaeger_api`: Jaeger's.
//!
//! A search never trusts a partial trace: the prefilter only narrows which traces are read,
//! and each candidate is read whole (every span, whichever flush or hour file holds it) before
//! TraceQL decides, so structural operators and `trace:` intrinsics see the whole trace.

pub mod jaeger;
mod jaeger_api;
pub mod load;
pub mod model;
pub mod otlp;
pub mod params;
pub mod query_range;
pub mod search;
pub mod tags;
mod tempo;
pub mod traceql;

use axum::Router;

use crate::engine::QueryEngine;
use crate::error::Error;

/// A failed trace API request; each API renders it in its own shape.
#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    /// Malformed parameters or query text: 400.
    #[error("{0}")]
    BadRequest(String),
    /// A parameter beyond one of `query:`'s limits (named): 400.
    #[error("{message}")]
    Limit { limit: &'static str, message: String },
    /// No span of the trace is stored: 404.
    #[error("trace not found")]
    NotFound,
    #[error(transparent)]
    Engine(#[from] Error),
}

impl TracesError {
    pub fn status(&self) -> axum::http::StatusCode {
        use axum::http::StatusCode;
        match self {
            TracesError::BadRequest(_) | TracesError::Limit { .. } => StatusCode::BAD_REQUEST,
            TracesError::NotFound => StatusCode::NOT_FOUND,
            TracesError::Engine(error) => error.status(),
        }
    }

    /// The limit a request hit, for the limit counters.
    pub fn limit_name(&self) -> Option<&'static str> {
        match self {
            TracesError::Limit { limit, .. } => Some(limit),
            TracesError::Engine(error) => error.limit_name(),
            _ => None,
        }
    }
}

/// Routes Tempo's API (`/api/traces`, `/api/v2/traces`, `/api/search…`, `/api/echo`,
/// `/api/status/buildinfo`) and Jaeger's (`/jaeger/api/…`).
pub fn router(engine: std::sync::Arc<QueryEngine>) -> Router {
    tempo::router(engine.clone()).merge(jaeger_api::router(engine))
}
