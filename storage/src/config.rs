//! Configuration of the store, with one named default per field.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Root of the WAL, the Parquet files, the indexes and the manifest.
    pub data_dir: PathBuf,
    /// Largest accepted request body, counted after decompression (OTLP recommends 20 MiB).
    pub max_request_bytes: usize,
    /// Buffered rows of a signal are flushed to Parquet once this old...
    pub flush_interval_secs: u64,
    /// ...or once they take this much memory, whichever comes first.
    pub flush_max_bytes: usize,
    /// Above this much buffered (unflushed) data across signals, ingest answers "retry later".
    pub max_buffered_bytes: usize,
    /// Ingest answers "retry later" while the data dir's file system has less free space.
    pub min_free_disk_bytes: u64,
    /// A partition with at least this many files smaller than `compaction_target_bytes` is compacted.
    pub compaction_min_files: usize,
    /// A partition that has received no file for this long is settled: its small files are
    /// merged even if there are fewer than `compaction_min_files`, so that a past hour ends up
    /// as one file (or a few of `compaction_target_bytes`) instead of one per flush.
    pub compaction_settle_secs: u64,
    /// Settled metrics and span files whose data is older than this merge into files of
    /// several hours of their day; newer hours stay one file per hour, which the frequent
    /// short-range queries read faster.
    pub day_merge_age_secs: u64,
    /// Compaction merges small files into files of about this size; larger files are left
    /// alone. Bounded because a merge holds its inputs in memory.
    pub compaction_target_bytes: u64,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// zstd level of the Parquet pages.
    pub zstd_level: i32,
    /// Uncompressed size of a page of the log `body` column. A search decompresses a whole
    /// page for each line it reads, so smaller pages answer needle queries faster; larger
    /// pages compress a little better.
    pub log_body_page_bytes: usize,
    /// zstd level of the log `body` column's pages (see `log_body_page_bytes`).
    pub log_body_zstd_level: i32,
    /// Build a tantivy index over log bodies at flush.
    pub fulltext_index: bool,
    /// Consecutive log rows that share one document of the full-text index. The index tells
    /// which documents hold a term, and every row of those is then decided on its text: more
    /// rows per document make a smaller index (a frequent term is listed once per document,
    /// not once per row) and a little more text to decide per hit. 1: a document per row.
    pub index_rows_per_document: usize,
    /// Records whose time lies further back than this from their receipt are refused
    /// (`partial_success`; remote write drops them with a 400): they would each open an old
    /// hour partition. 0 accepts any age. The default lets a month of backfill through.
    pub max_record_age_secs: u64,
    /// Records whose time lies further ahead than this are refused likewise. 0: no bound.
    pub max_record_future_secs: u64,
    /// Span metrics and the service graph, computed from spans at ingest as Tempo's
    /// metrics generator computes them.
    pub span_metrics: crate::spanmetrics::SpanMetricsConfig,
    /// The `containers` table: how long and how many container instances it keeps.
    pub inventory: crate::inventory::InventoryConfig,
    /// How long each signal is kept, and the bound on the bytes of all files.
    pub retention: crate::retention::RetentionConfig,
    /// Bytes per second of OTLP and remote-write requests (their protobuf size) this store
    /// accepts on average; beyond, ingest answers "retry later" (HTTP 429, gRPC UNAVAILABLE).
    /// 0: no bound. Set per tenant under `tenants.overrides`, as Loki's `ingestion_rate_mb`.
    pub ingestion_rate_bytes: u64,
    /// Bytes accepted at once above the average, as Loki's `ingestion_burst_size_mb`; 0: the
    /// larger of `ingestion_rate_bytes` and `max_request_bytes`, so that any accepted request
    /// can pass.
    pub ingestion_burst_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            data_dir: default_data_dir(),
            max_request_bytes: 20 * 1024 * 1024,
            flush_interval_secs: 10,
            // A flush holds about three copies of the piece it writes beside the buffers, so
            // these two bound the store's memory. The remote-write backfill of benches/promql.rs
            // peaked at 3,855 MiB of RSS over a day with 128 MiB and 1 GiB, at over 1,405 MiB
            // over a week with 64 MiB and 256 MiB, and at 739 MiB with these (BENCHMARKS.md).
            flush_max_bytes: 32 * 1024 * 1024,
            max_buffered_bytes: 128 * 1024 * 1024,
            min_free_disk_bytes: 64 * 1024 * 1024,
            compaction_min_files: 4,
            compaction_settle_secs: 60,
            day_merge_age_secs: 6 * 3600,
            compaction_target_bytes: 64 * 1024 * 1024,
            row_group_rows: 128 * 1024,
            zstd_level: 3,
            // With pages of 256 KiB, level 1 stores the loghub samples in about the space that
            // level 3 takes with 1 MiB pages, at less CPU, and a needle query decompresses a
            // quarter as much per line it reads.
            log_body_page_bytes: 256 * 1024,
            log_body_zstd_level: 1,
            fulltext_index: true,
            index_rows_per_document: 16,
            max_record_age_secs: 30 * 86_400,
            max_record_future_secs: 3600,
            span_metrics: crate::spanmetrics::SpanMetricsConfig::default(),
            inventory: crate::inventory::InventoryConfig::default(),
            retention: crate::retention::RetentionConfig::default(),
            ingestion_rate_bytes: 0,
            ingestion_burst_bytes: 0,
        }
    }
}

pub(crate) fn default_data_dir() -> PathBuf {
    PathBuf::from("./wake-data")
}

impl StoreConfig {
    pub fn validate(&self) -> Result<()> {
        let fail = |message: String| Err(Error::Config(message));
        if let Err(message) = self.retention.validate() {
            return fail(format!("retention: {message}"));
        }
        if let Err(message) = self.inventory.validate() {
            return fail(format!("inventory: {message}"));
        }
        if let Err(message) = self.span_metrics.validate() {
            return fail(format!("span_metrics: {message}"));
        }
        if self.data_dir.as_os_str().is_empty() {
            return fail("data_dir must not be empty".into());
        }
        if self.max_request_bytes < 1024 {
            return fail(format!("max_request_bytes must be at least 1024, got {}", self.max_request_bytes));
        }
        if self.flush_interval_secs == 0 {
            return fail("flush_interval_secs must be at least 1".into());
        }
        if self.flush_max_bytes < 1024 * 1024 {
            return fail(format!("flush_max_bytes must be at least 1 MiB, got {}", self.flush_max_bytes));
        }
        if self.max_buffered_bytes < self.flush_max_bytes {
            return fail(format!(
                "max_buffered_bytes ({}) must be at least flush_max_bytes ({})",
                self.max_buffered_bytes, self.flush_max_bytes
            ));
        }
        if self.compaction_min_files < 2 {
            return fail("compaction_min_files must be at least 2".into());
        }
        if self.row_group_rows < 1024 {
            return fail(format!("row_group_rows must be at least 1024, got {}", self.row_group_rows));
        }
        for (name, level) in [("zstd_level", self.zstd_level), ("log_body_zstd_level", self.log_body_zstd_level)] {
            if !(1..=22).contains(&level) {
                return fail(format!("{name} must be between 1 and 22, got {level}"));
            }
        }
        if !(4096..=64 * 1024 * 1024).contains(&self.log_body_page_bytes) {
            return fail(format!(
                "log_body_page_bytes must be between 4096 and 64 MiB, got {}",
                self.log_body_page_bytes
            ));
        }
        if !(1..=1024).contains(&self.index_rows_per_document) {
            return fail(format!(
                "index_rows_per_document must be between 1 and 1024, got {}",
                self.index_rows_per_document
            ));
        }
        for (name, secs) in
            [("max_record_age_secs", self.max_record_age_secs), ("max_record_future_secs", self.max_record_future_secs)]
        {
            // 0 is "no bound"; otherwise at least a minute, at most what nanoseconds can hold.
            if secs != 0 && !(60..=100 * 365 * 86_400).contains(&secs) {
                return fail(format!("{name} must be 0 (no bound) or between 60 and 3153600000, got {secs}"));
            }
        }
        if self.ingestion_rate_bytes > 0
            && self.ingestion_burst_bytes > 0
            && self.ingestion_burst_bytes < self.max_request_bytes as u64
        {
            return fail(format!(
                "ingestion_burst_bytes ({}) must be at least max_request_bytes ({}), or a request \
                 the store accepts could never pass",
                self.ingestion_burst_bytes, self.max_request_bytes
            ));
        }
        Ok(())
    }

    /// The burst of the ingestion rate limit (see `ingestion_burst_bytes`).
    pub fn ingestion_burst(&self) -> u64 {
        match self.ingestion_burst_bytes {
            0 => self.ingestion_rate_bytes.max(self.max_request_bytes as u64),
            burst => burst,
        }
    }

    /// The accepted time window of records.
    pub fn time_window(&self) -> crate::convert::TimeWindow {
        let ns = |secs: u64| i64::try_from(secs).unwrap_or(i64::MAX).saturating_mul(1_000_000_000);
        crate::convert::TimeWindow {
            max_age_ns: ns(self.max_record_age_secs),
            max_future_ns: ns(self.max_record_future_secs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        StoreConfig::default().validate().expect("default config must validate");
    }

    #[test]
    fn rejects_buffer_smaller_than_flush_size() {
        let config = StoreConfig { max_buffered_bytes: 2 * 1024 * 1024, ..StoreConfig::default() };
        let message = config.validate().unwrap_err().to_string();
        assert!(message.contains("max_buffered_bytes"), "{message}");
    }

    #[test]
    fn rejects_out_of_range_body_settings() {
        for (config, field) in [
            (StoreConfig { log_body_zstd_level: 0, ..StoreConfig::default() }, "log_body_zstd_level"),
            (StoreConfig { log_body_page_bytes: 100, ..StoreConfig::default() }, "log_body_page_bytes"),
            (StoreConfig { index_rows_per_document: 0, ..StoreConfig::default() }, "index_rows_per_document"),
        ] {
            let message = config.validate().unwrap_err().to_string();
            assert!(message.contains(field), "{message}");
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let error = serde_json::from_str::<StoreConfig>(r#"{"data_dirr": "/x"}"#).unwrap_err();
        assert!(error.to_string().contains("unknown field"), "{error}");
    }
}
