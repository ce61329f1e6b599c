//! Wake's store: receives OTLP logs, metrics and traces, makes each batch durable before it is
//! acknowledged, and keeps the signals as Parquet files with a tantivy index over log bodies.
//!
//! Data moves through the modules in this order: a receiver decodes a request, [`convert`]
//! turns it into Arrow rows, the [`Store`] appends it to the write-ahead log (group commit) and
//! buffers the rows, and a background flush writes them as Parquet (+ index) files that the
//! catalog records in its manifest (a checkpoint plus a log of changes). Queries take a
//! [`TableSnapshot`]: the files and the buffered rows, consistent with each other.
//!
//! # Layout
//! - `config`: [`StoreConfig`], defaults and validation.
//! - `error`: [`Error`] and the [`ErrorClass`] that decides HTTP/gRPC status and retryability.
//! - `schema`: the fixed Arrow schemas of the `logs`, `metrics` and `spans` tables.
//! - `convert`: OTLP requests to Arrow record batches; invalid records are counted, not stored.
//! - `series`: the `series_id` of metric rows, a stable hash of their series identity.
//! - `wal`: the write-ahead log, its group-commit thread and replay.
//! - `store`: ingest, buffers, flush, snapshots and shutdown; runs compaction passes.
//! - `tenants`: one store per tenant under the data dir, their limits and merged metrics.
//! - `rate`: the token bucket of the ingestion rate limit.
//! - `check`: `wake check`, the store's files and logs checked against each other.
//! - `retention`: which files retention and the disk bound drop or trim.
//! - `deletion`: deletion requests (Loki's and Prometheus' APIs), durable, then executed.
//! - `compaction`: which files to merge, and the merge (streaming when the inputs are sorted).
//! - `writer`: hour-partitioned, sorted Parquet files and their full-text indexes.
//! - `catalog`: the files of each table, and when replaced files may be deleted.
//! - `manifest`: the catalog on disk: a checkpoint, an append-only log of changes, replay.
//! - `framing`: the checksummed record framing of the manifest's and the inventory's logs.
//! - `inventory`: the `containers` table: container instances merged from lifecycle events.
//! - `fulltext`: the tantivy index over log bodies, and the same matching in memory.
//! - `receiver`: OTLP/gRPC services and OTLP/HTTP routes.
//! - `spanmetrics`: Tempo-style span metrics and service graph, computed from spans at
//!   ingest and written to the metrics table.
//! - `metrics`: the store's Prometheus self-metrics.

mod catalog;
pub mod check;
mod compaction;
mod config;
mod convert;
pub mod deletion;
mod error;
mod framing;
pub mod fulltext;
pub mod inventory;
mod manifest;
mod metrics;
pub mod prompb;
mod rate;
pub mod receiver;
pub mod retention;
pub mod schema;
pub mod series;
pub mod spanmetrics;
mod store;
pub mod tenants;
mod wal;
mod writer;

pub use catalog::DataFile;
pub use config::StoreConfig;
pub use convert::{TimeWindow, any_value_to_string};
pub use error::{Error, ErrorClass, Result};
pub use metrics::StorageMetrics;
pub use schema::Signal;
pub use store::{IngestOutcome, OtlpRequest, RetentionOutcome, Store, TableSnapshot, now_ns};
pub use tenants::{DEFAULT_TENANT, TenantError, TenantLimits, TenantStores, TenantsConfig};

/// Entry points for the fuzz targets under `fuzz/`: the steps ingest runs on a client's bytes
/// that are not public otherwise. Not an API: nothing outside `fuzz/` may rely on it.
#[doc(hidden)]
pub mod fuzzing {
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;

    pub use crate::convert::{Converted, TimeWindow};
    use crate::receiver::RemoteWriteError;
    use crate::store::OtlpRequest;

    /// The accepted time window of records with the default configuration.
    pub fn default_window() -> TimeWindow {
        crate::StoreConfig::default().time_window()
    }

    /// Converts a decoded request to Arrow rows as [`crate::Store::ingest`] (and WAL replay)
    /// does, keeping only the records within `window` around `received_at_ns`.
    pub fn convert(request: &OtlpRequest, received_at_ns: i64, window: TimeWindow) -> crate::Result<Converted> {
        request.convert(received_at_ns, window)
    }

    /// A Prometheus remote write body (snappy block, then protobuf) decoded, validated and
    /// mapped onto OTLP as the receiver does, with its number of samples; `None` when the
    /// receiver would refuse it.
    pub fn remote_write_decode(compressed: &[u8]) -> Option<(ExportMetricsServiceRequest, usize)> {
        RemoteWriteError::fuzz_decode(compressed).ok()
    }
}
