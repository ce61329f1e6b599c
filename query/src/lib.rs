//! Wake's query side: DataFusion SQL over the store's `logs`, `metrics`, `spans` and `containers` tables.
//!
//! A query sees one consistent [`wake_storage::TableSnapshot`] per table: the Parquet files
//! and the rows acknowledged but not yet flushed. Scans prune files by the time column's
//! bounds before opening them, push the remaining filters into the Parquet reader (row-group
//! statistics, page index, bloom filters), and answer `matches(body, '<query>')` from each
//! file's tantivy index: a file without hits is never opened, and only the hit rows are read.
//!
//! # Layout
//! - `auth`: tokens, scopes and tenants on every route, refusals in each API's shape.
//! - `cache`: the bounded, least-recently-used map of the per-file caches.
//! - `body`: request bodies read within their limit (an oversized one drained, then 413).
//! - `config`: [`QueryConfig`], the engine's resources and every query limit, validated.
//! - `engine`: [`QueryEngine`], the read-only `SessionContext`, the query runtime and metrics.
//! - `limits`: admission per API, the active-query list, the slow-query log, limit counters.
//! - `depth`: the nesting limit of PromQL and LogQL, checked before and after parsing.
//! - `table`: [`WakeTable`], the `TableProvider` that plans scans over a snapshot.
//! - `fulltext`: the `matches` function, the index search and the plan node that reports it.
//! - `http`: `POST /api/v1/sql` and `GET /api/v1/sql` (JSON or CSV).
//! - `json`: Arrow values as JSON (timestamps as RFC 3339, maps as objects).
//! - `error`: [`Error`] and the HTTP status each kind of failure maps to.
//! - `rules`: the ruler (alerting and recording rules, Alertmanager, rule APIs, rule tests).
//! - `inventory`: the `containers` table and `GET /api/v1/containers`.
//! - `traces`: Tempo's and Jaeger's trace APIs and TraceQL over the `spans` table.

pub mod auth;
mod body;
mod cache;
mod config;
pub mod depth;
mod engine;
mod error;
pub mod fulltext;
mod http;
pub mod inventory;
pub mod json;
pub mod limits;
pub mod loki;
pub mod prom;
pub mod rules;
mod table;
pub mod traces;

pub use config::{ConfigError, QueryConfig, QueryLimitOverrides, ThreadPolicy};
pub use engine::{QueryEngine, QueryOutput};
pub use error::{Error, Result};
pub use http::router;
pub use table::WakeTable;
