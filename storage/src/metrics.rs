//! The store's self-metrics, registered on the registry that `/metrics` serves.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::error::{Error, Result};
use crate::manifest::ManifestMetrics;
use crate::wal::WalMetrics;

#[derive(Clone)]
pub struct StorageMetrics {
    pub records_ingested: IntCounterVec,
    pub bytes_ingested: IntCounterVec,
    pub records_rejected: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub requests: IntCounterVec,
    pub buffered_bytes: IntGaugeVec,
    pub files: IntGaugeVec,
    pub stored_bytes: IntGaugeVec,
    pub flush_duration: HistogramVec,
    pub compaction_duration: Histogram,
    pub wal: WalMetrics,
    pub manifest: ManifestMetrics,
    pub inventory: InventoryMetrics,
    pub deleted_files: IntCounterVec,
    pub deleted_bytes: IntCounterVec,
    pub deleted_rows: IntCounterVec,
}

/// The container inventory's size and what it forgot.
#[derive(Clone)]
pub struct InventoryMetrics {
    pub containers: IntGauge,
    pub events: IntCounter,
    pub forgotten: IntCounterVec,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, collector: T) -> Result<T> {
    registry
        .register(Box::new(collector.clone()))
        .map_err(|e| Error::Internal(format!("registering a metric: {e}")))?;
    Ok(collector)
}

fn metric_error(error: prometheus::Error) -> Error {
    Error::Internal(format!("defining a metric: {error}"))
}

impl StorageMetrics {
    pub fn new(registry: &Registry) -> Result<StorageMetrics> {
        let counter = |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec> {
            register(registry, IntCounterVec::new(Opts::new(name, help), labels).map_err(metric_error)?)
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| -> Result<IntGaugeVec> {
            register(registry, IntGaugeVec::new(Opts::new(name, help), labels).map_err(metric_error)?)
        };
        let duration_buckets = vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
        Ok(StorageMetrics {
            records_ingested: counter(
                "wake_server_records_ingested_total",
                "Records (log records, data points, spans) acknowledged, by signal",
                &["signal"],
            )?,
            bytes_ingested: counter(
                "wake_server_ingested_bytes_total",
                "Uncompressed OTLP protobuf bytes acknowledged, by signal",
                &["signal"],
            )?,
            records_rejected: counter(
                "wake_server_records_rejected_total",
                "Records refused as invalid and reported in partial_success, by signal",
                &["signal"],
            )?,
            rate_limited: counter(
                "wake_server_rate_limited_requests_total",
                "Ingest requests refused by the ingestion rate limit (ingestion_rate_bytes), by signal",
                &["signal"],
            )?,
            requests: counter(
                "wake_server_otlp_requests_total",
                "OTLP export requests, by signal, transport and outcome",
                &["signal", "transport", "outcome"],
            )?,
            buffered_bytes: gauge(
                "wake_server_buffered_bytes",
                "Acknowledged rows held in memory until the next flush, by signal",
                &["signal"],
            )?,
            files: gauge("wake_server_files", "Parquet files in the catalog, by signal", &["signal"])?,
            stored_bytes: gauge(
                "wake_server_stored_bytes",
                "Bytes on disk of Parquet files and their indexes, by signal",
                &["signal"],
            )?,
            flush_duration: register(
                registry,
                HistogramVec::new(
                    HistogramOpts::new("wake_server_flush_duration_seconds", "Time to write buffered rows to Parquet")
                        .buckets(duration_buckets.clone()),
                    &["signal"],
                )
                .map_err(metric_error)?,
            )?,
            compaction_duration: register(
                registry,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "wake_server_compaction_duration_seconds",
                        "Time to merge a partition's small files",
                    )
                    .buckets(duration_buckets),
                )
                .map_err(metric_error)?,
            )?,
            wal: WalMetrics {
                bytes_written: register(
                    registry,
                    IntCounter::new("wake_server_wal_written_bytes_total", "Bytes appended to the write-ahead log")
                        .map_err(metric_error)?,
                )?,
                fsyncs: register(
                    registry,
                    IntCounter::new("wake_server_wal_fsyncs_total", "Group commits (fsyncs) of the write-ahead log")
                        .map_err(metric_error)?,
                )?,
                size_bytes: register(
                    registry,
                    IntGauge::new("wake_server_wal_size_bytes", "Bytes of write-ahead log segments on disk")
                        .map_err(metric_error)?,
                )?,
            },
            manifest: ManifestMetrics {
                bytes_written: register(
                    registry,
                    IntCounter::new(
                        "wake_server_manifest_written_bytes_total",
                        "Bytes written to the manifest: log records and checkpoints",
                    )
                    .map_err(metric_error)?,
                )?,
                checkpoints: register(
                    registry,
                    IntCounter::new(
                        "wake_server_manifest_checkpoints_total",
                        "Manifest checkpoints written (each replaces the log of changes before it)",
                    )
                    .map_err(metric_error)?,
                )?,
            },
            deleted_files: counter(
                "wake_server_deleted_files_total",
                "Parquet files dropped or rewritten by retention or the disk bound, by signal and reason",
                &["signal", "reason"],
            )?,
            deleted_bytes: counter(
                "wake_server_deleted_bytes_total",
                "Bytes of Parquet files and indexes freed by retention or the disk bound, by signal and reason",
                &["signal", "reason"],
            )?,
            deleted_rows: counter(
                "wake_server_deleted_rows_total",
                "Rows removed by retention or the disk bound, by signal and reason",
                &["signal", "reason"],
            )?,
            inventory: InventoryMetrics {
                containers: register(
                    registry,
                    IntGauge::new("wake_server_inventory_containers", "Container instances in the inventory")
                        .map_err(metric_error)?,
                )?,
                events: register(
                    registry,
                    IntCounter::new(
                        "wake_server_inventory_events_total",
                        "Container lifecycle events merged into the inventory",
                    )
                    .map_err(metric_error)?,
                )?,
                forgotten: counter(
                    "wake_server_inventory_forgotten_total",
                    "Container instances dropped from the inventory, by reason (retention, capacity)",
                    &["reason"],
                )?,
            },
        })
    }
}
