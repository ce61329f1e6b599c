//! Turns buffered rows into Parquet files (and, for logs, their tantivy index), one file per
//! hour partition: `<data>/<table>/<YYYY-MM-DD>/<HH>/<name>.parquet` beside `<name>.index/`.
//! Compaction also writes files of several hours of a day in `<data>/<table>/<YYYY-MM-DD>/`,
//! and merges files that are already sorted without holding them in memory
//! ([`merge_sorted_files`]).
//!
//! Rows are sorted before writing: logs by container then time, so that one container's lines
//! sit side by side (better compression, row-group statistics that prune by pod), metrics by
//! series then time, spans by trace then time.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch, UInt32Array};
use arrow::compute::{SortColumn, SortOptions, concat_batches, lexsort_to_indices, take_record_batch};
use arrow::datatypes::TimestampNanosecondType;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, Encoding, ZstdLevel};
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;

use crate::catalog::{DataFile, FileStats, INDEX_EXTENSION, PARQUET_EXTENSION, remove_file_and_index};
use crate::config::StoreConfig;
use crate::error::{Error, Result};
use crate::fulltext;
use crate::schema::{self, Signal};
use crate::wal::sync_dir;

const NANOS_PER_HOUR: i64 = 3_600_000_000_000;
pub(crate) const NANOS_PER_DAY: i64 = 24 * NANOS_PER_HOUR;
/// Rows per data page of metrics files.
const METRICS_PAGE_ROWS: usize = 1024;
/// Rows per row group of metrics files, at least.
const METRICS_ROW_GROUP_ROWS: usize = 1024 * 1024;

fn sort_columns(signal: Signal) -> &'static [&'static str] {
    match signal {
        Signal::Logs => &[
            schema::K8S_NAMESPACE_NAME,
            schema::K8S_POD_NAME,
            schema::K8S_CONTAINER_NAME,
            schema::SERVICE_NAME,
            schema::TIMESTAMP,
        ],
        // A container's series together, and each series' points together in time order: a
        // PromQL selector reads a series as one run of rows.
        Signal::Metrics => &[
            schema::METRIC_NAME,
            schema::K8S_NAMESPACE_NAME,
            schema::K8S_POD_NAME,
            schema::K8S_CONTAINER_NAME,
            schema::SERVICE_NAME,
            schema::SERIES_ID,
            schema::TIMESTAMP,
        ],
        // A trace's spans together in each file: trace by id reads one run of rows per file
        // (the bloom filter finds its row group) instead of one per service the trace crossed.
        // Sorted by service first, a 45-span trace over 10 services touched 8 of 84 row groups
        // of a 10 M span day (benches/traces.rs).
        Signal::Spans => &[schema::TRACE_ID, schema::START_TIME],
    }
}

fn writer_properties(signal: Signal, config: &StoreConfig) -> Result<WriterProperties> {
    let level = ZstdLevel::try_new(config.zstd_level)?;
    let mut builder = WriterProperties::builder()
        .set_compression(Compression::ZSTD(level))
        // Page-level statistics also write the column and offset indexes (the "page index").
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(config.row_group_rows));
    // Times are near-sorted within a stream: deltas take a byte or two where plain values
    // take eight, and a dictionary of distinct nanoseconds only costs time.
    for column in [schema::TIMESTAMP, schema::OBSERVED_TIMESTAMP] {
        builder = builder
            .set_column_dictionary_enabled(ColumnPath::from(column), false)
            .set_column_encoding(ColumnPath::from(column), Encoding::DELTA_BINARY_PACKED);
    }
    if signal == Signal::Metrics {
        // A PromQL selector reads a few series' runs of rows out of many; smaller pages mean
        // less decompressed around each run (a series has 240 rows an hour at a 15 s scrape,
        // so a page holds about four).
        builder = builder
            .set_data_page_row_count_limit(METRICS_PAGE_ROWS)
            // Each row group opened costs a decompression context and a dictionary page per
            // column; with pages this small, the page index does the skipping that more row
            // groups would.
            .set_max_row_group_row_count(Some(config.row_group_rows.max(METRICS_ROW_GROUP_ROWS)));
        // Every data page read drags its column chunk's dictionary page along; sample values
        // are nearly all distinct, so their dictionary would be large and useless.
        for column in [schema::VALUE, schema::SUM] {
            builder = builder.set_column_dictionary_enabled(ColumnPath::from(column), false);
        }
    }
    if signal == Signal::Logs {
        let body = ColumnPath::from(schema::BODY);
        builder = builder
            // Log bodies are nearly all distinct: a dictionary is built, overflows and is dropped.
            .set_column_dictionary_enabled(body.clone(), false)
            .set_column_data_page_size_limit(body.clone(), config.log_body_page_bytes)
            .set_column_compression(body, Compression::ZSTD(ZstdLevel::try_new(config.log_body_zstd_level)?));
    }
    if matches!(signal, Signal::Logs | Signal::Spans) {
        // Trace ids are looked up one at a time and are all distinct: a bloom filter prunes
        // where min/max statistics cannot.
        builder = builder
            .set_column_bloom_filter_enabled(ColumnPath::from(schema::TRACE_ID), true)
            .set_column_dictionary_enabled(ColumnPath::from(schema::TRACE_ID), false)
            .set_column_dictionary_enabled(ColumnPath::from(schema::SPAN_ID), false);
    }
    Ok(builder.build())
}

/// Splits `batches` by hour of the signal's time column and writes one file per hour.
/// `name` must be unique among this flush's or compaction's outputs.
pub(crate) fn write_partitioned(
    data_dir: &Path,
    signal: Signal,
    batches: &[RecordBatch],
    config: &StoreConfig,
    name: &str,
) -> Result<Vec<Arc<DataFile>>> {
    let schema = signal.schema();
    let batch = concat_batches(&schema, batches)?;
    if batch.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let times = time_values(&batch, signal)?;
    let mut hours: Vec<i64> = times.iter().map(|t| t.div_euclid(NANOS_PER_HOUR)).collect();
    hours.sort_unstable();
    hours.dedup();

    let mut outputs = Vec::with_capacity(hours.len());
    for hour in hours {
        let partition = if outputs.is_empty() && times.iter().all(|t| t.div_euclid(NANOS_PER_HOUR) == hour) {
            batch.clone()
        } else {
            let indices: UInt32Array = times
                .iter()
                .enumerate()
                .filter(|(_, t)| t.div_euclid(NANOS_PER_HOUR) == hour)
                .map(|(row, _)| row as u32)
                .collect();
            take_record_batch(&batch, &indices)?
        };
        let dir = data_dir.join(signal.table_name()).join(partition_path(hour));
        let written = sort_batch(&partition, signal).and_then(|sorted| {
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            write_file(&dir, signal, &sorted, config, name)
        });
        match written {
            Ok(file) => outputs.push(Arc::new(file)),
            Err(error) => {
                // Never leave half a flush behind to fill the disk: the rows are still buffered.
                for output in &outputs {
                    output.retire();
                }
                return Err(error);
            }
        }
    }
    Ok(outputs)
}

/// Writes `batches`, rows of several hours of UTC day `day` (days since 1970-01-01), as one
/// file in the day's directory, beside its hour partitions.
pub(crate) fn write_day_file(
    data_dir: &Path,
    signal: Signal,
    batches: &[RecordBatch],
    config: &StoreConfig,
    name: &str,
    day: i64,
) -> Result<Arc<DataFile>> {
    let batch = concat_batches(&signal.schema(), batches)?;
    if let Some(outside) = time_values(&batch, signal)?.into_iter().find(|t| t.div_euclid(NANOS_PER_DAY) != day) {
        return Err(Error::Internal(format!("a row at {outside} ns does not belong to day {day}")));
    }
    let dir = day_dir(data_dir, signal, day);
    let sorted = sort_batch(&batch, signal)?;
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    Ok(Arc::new(write_file(&dir, signal, &sorted, config, name)?))
}

/// The directory of UTC day `day`'s files that span several hours.
pub(crate) fn day_dir(data_dir: &Path, signal: Signal, day: i64) -> PathBuf {
    data_dir.join(signal.table_name()).join(day_path(day))
}

/// Input rows a streaming merge holds per input file at a time.
const MERGE_BATCH_ROWS: usize = 8192;

/// One input of a streaming merge: its current batch and the batch's sort keys as rows.
struct MergeCursor {
    reader: parquet::arrow::arrow_reader::ParquetRecordBatchReader,
    batch: RecordBatch,
    keys: arrow::row::Rows,
    position: usize,
    done: bool,
}

impl MergeCursor {
    /// Moves to the next non-empty batch, or marks the input done.
    fn advance(&mut self, signal: Signal, converter: &arrow::row::RowConverter) -> Result<()> {
        self.position = 0;
        loop {
            match self.reader.next() {
                Some(batch) => {
                    let batch = RecordBatch::try_new(signal.schema(), batch?.columns().to_vec())?;
                    if batch.num_rows() == 0 {
                        continue;
                    }
                    self.keys = converter.convert_columns(&sort_key_columns(&batch, signal))?;
                    self.batch = batch;
                    return Ok(());
                }
                None => {
                    self.done = true;
                    return Ok(());
                }
            }
        }
    }
}

fn sort_key_columns(batch: &RecordBatch, signal: Signal) -> Vec<arrow::array::ArrayRef> {
    sort_columns(signal).iter().filter_map(|name| batch.column_by_name(name).cloned()).collect()
}

/// Whether `files` can be merged by [`merge_sorted_files`]: signals without a full-text index,
/// files with every column of the current schema (so already sorted in today's order).
pub(crate) fn can_merge_streaming(files: &[Arc<DataFile>]) -> Result<bool> {
    for file in files {
        if file.signal == Signal::Logs {
            return Ok(false);
        }
        let handle = File::open(&file.path).map_err(|e| Error::io(&file.path, e))?;
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(handle)?;
        if builder.schema().fields().len() != file.signal.schema().fields().len() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Merges files, each already sorted in the signal's order, into one sorted file in `dir`
/// without holding them in memory: a batch per input and one output batch at a time. Sorting
/// the concatenation instead took about three times the inputs' decoded size (16 GB for a day
/// merge of 12 M metric rows).
pub(crate) fn merge_sorted_files(
    inputs: &[Arc<DataFile>],
    dir: &Path,
    signal: Signal,
    config: &StoreConfig,
    name: &str,
) -> Result<Arc<DataFile>> {
    let schema = signal.schema();
    let sort_fields = sort_columns(signal)
        .iter()
        .filter_map(|name| schema.field_with_name(name).ok())
        .map(|field| {
            arrow::row::SortField::new_with_options(
                field.data_type().clone(),
                SortOptions { descending: false, nulls_first: true },
            )
        })
        .collect();
    let converter = arrow::row::RowConverter::new(sort_fields)?;
    let mut cursors = Vec::with_capacity(inputs.len());
    for input in inputs {
        let handle = File::open(&input.path).map_err(|e| Error::io(&input.path, e))?;
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(handle)?
            .with_batch_size(MERGE_BATCH_ROWS)
            .build()?;
        let mut cursor = MergeCursor {
            reader,
            batch: RecordBatch::new_empty(schema.clone()),
            keys: converter.empty_rows(0, 0),
            position: 0,
            done: false,
        };
        cursor.advance(signal, &converter)?;
        cursors.push(cursor);
    }

    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join(format!("{name}.{PARQUET_EXTENSION}"));
    let written = (|| -> Result<DataFile> {
        let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
        let mut writer = ArrowWriter::try_new(file, schema.clone(), Some(writer_properties(signal, config)?))?;
        let (mut rows, mut min_time, mut max_time) = (0u64, i64::MAX, i64::MIN);
        let mut picks: Vec<(usize, usize)> = Vec::with_capacity(MERGE_BATCH_ROWS);
        loop {
            // Few inputs (a merge's files): a scan for the smallest key beats a heap here.
            let mut smallest: Option<usize> = None;
            for (i, cursor) in cursors.iter().enumerate() {
                if cursor.done {
                    continue;
                }
                let key = cursor.keys.row(cursor.position);
                if smallest.is_none_or(|s| key < cursors[s].keys.row(cursors[s].position)) {
                    smallest = Some(i);
                }
            }
            let Some(next) = smallest else {
                break;
            };
            picks.push((next, cursors[next].position));
            cursors[next].position += 1;
            let exhausted = cursors[next].position == cursors[next].batch.num_rows();
            // Picks point into the cursors' current batches: write them out before a cursor
            // moves on to its next batch.
            if exhausted || picks.len() == MERGE_BATCH_ROWS {
                let batches: Vec<&RecordBatch> = cursors.iter().map(|c| &c.batch).collect();
                let merged = arrow::compute::interleave_record_batch(&batches, &picks)?;
                for time in time_values(&merged, signal)? {
                    (min_time, max_time) = (min_time.min(time), max_time.max(time));
                }
                rows += merged.num_rows() as u64;
                writer.write(&merged)?;
                picks.clear();
                if exhausted {
                    cursors[next].advance(signal, &converter)?;
                }
            }
        }
        let (size_bytes, row_group_row_counts) = finish_file(writer, &path)?;
        sync_dir(dir)?;
        let stats = FileStats {
            size_bytes,
            index_bytes: 0,
            num_rows: rows,
            min_time_ns: if rows == 0 { 0 } else { min_time },
            max_time_ns: if rows == 0 { 0 } else { max_time },
            row_group_row_counts,
        };
        Ok(DataFile::new(signal, path.clone(), None, stats))
    })();
    match written {
        Ok(file) => Ok(Arc::new(file)),
        Err(error) => {
            remove_file_and_index(&path, None);
            Err(error)
        }
    }
}

fn time_values(batch: &RecordBatch, signal: Signal) -> Result<Vec<i64>> {
    let column = batch
        .column_by_name(signal.time_column())
        .ok_or_else(|| Error::Internal(format!("{signal} batch lacks its time column")))?;
    let times = column
        .as_primitive_opt::<TimestampNanosecondType>()
        .ok_or_else(|| Error::Internal(format!("{signal} time column is not a nanosecond timestamp")))?;
    Ok(times.values().to_vec())
}

fn partition_path(hour: i64) -> PathBuf {
    day_path(hour.div_euclid(24)).join(format!("{:02}", hour.rem_euclid(24)))
}

fn day_path(days: i64) -> PathBuf {
    let (year, month, day) = civil_from_days(days);
    PathBuf::from(format!("{year:04}-{month:02}-{day:02}"))
}

/// Days since 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

pub(crate) fn sort_batch(batch: &RecordBatch, signal: Signal) -> Result<RecordBatch> {
    let columns: Vec<SortColumn> = sort_columns(signal)
        .iter()
        .filter_map(|name| batch.column_by_name(name))
        .map(|values| SortColumn {
            values: values.clone(),
            options: Some(SortOptions { descending: false, nulls_first: true }),
        })
        .collect();
    let indices = lexsort_to_indices(&columns, None)?;
    Ok(take_record_batch(batch, &indices)?)
}

fn write_file(dir: &Path, signal: Signal, batch: &RecordBatch, config: &StoreConfig, name: &str) -> Result<DataFile> {
    let path = dir.join(format!("{name}.{PARQUET_EXTENSION}"));
    let index_dir = dir.join(format!("{name}.{INDEX_EXTENSION}"));
    write_file_and_index(dir, &path, &index_dir, signal, batch, config)
        .inspect_err(|_| remove_file_and_index(&path, Some(&index_dir)))
}

/// Writes the footer and fsyncs the file; returns its size and its row groups' row counts.
fn finish_file(mut writer: ArrowWriter<File>, path: &Path) -> Result<(u64, Vec<u64>)> {
    // Close the last, partial row group so that every group's size is known before the footer.
    writer.flush()?;
    let row_group_row_counts: Vec<u64> =
        writer.flushed_row_groups().iter().map(|group| group.num_rows() as u64).collect();
    let mut file = writer.into_inner()?;
    std::io::Write::flush(&mut file).map_err(|e| Error::io(path, e))?;
    file.sync_all().map_err(|e| Error::io(path, e))?;
    let size_bytes = file.metadata().map_err(|e| Error::io(path, e))?.len();
    Ok((size_bytes, row_group_row_counts))
}

fn write_file_and_index(
    dir: &Path,
    path: &Path,
    index_dir: &Path,
    signal: Signal,
    batch: &RecordBatch,
    config: &StoreConfig,
) -> Result<DataFile> {
    let path = path.to_path_buf();
    let file = File::create(&path).map_err(|e| Error::io(&path, e))?;
    let mut writer = ArrowWriter::try_new(file, batch.schema(), Some(writer_properties(signal, config)?))?;
    writer.write(batch)?;
    let (size_bytes, row_group_row_counts) = finish_file(writer, &path)?;

    let index_dir = if signal == Signal::Logs && config.fulltext_index {
        let index_dir = index_dir.to_path_buf();
        let bodies = batch
            .column_by_name(schema::BODY)
            .and_then(|column| column.as_string_opt::<i32>())
            .ok_or_else(|| Error::Internal("log batch lacks a utf8 body column".into()))?;
        let bodies = (0..bodies.len()).map(|i| bodies.is_valid(i).then(|| bodies.value(i)));
        fulltext::build_index(&index_dir, bodies, config.index_rows_per_document)?;
        sync_tree(&index_dir)?;
        Some(index_dir)
    } else {
        None
    };
    sync_dir(dir)?;

    let times = time_values(batch, signal)?;
    let stats = FileStats {
        size_bytes,
        index_bytes: index_dir.as_deref().map(fulltext::index_size_bytes).unwrap_or(0),
        num_rows: batch.num_rows() as u64,
        min_time_ns: times.iter().copied().min().unwrap_or(0),
        max_time_ns: times.iter().copied().max().unwrap_or(0),
        row_group_row_counts,
    };
    Ok(DataFile::new(signal, path, index_dir, stats))
}

/// fsyncs every file of a directory and the directory itself (tantivy leaves that to us).
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.flatten() {
        let path = entry.path();
        if path.is_file() {
            File::open(&path).and_then(|f| f.sync_all()).map_err(|e| Error::io(&path, e))?;
        }
    }
    sync_dir(dir)
}

/// Reads whole files back, for compaction.
pub(crate) fn read_files(files: &[Arc<DataFile>]) -> Result<Vec<RecordBatch>> {
    let mut batches = Vec::new();
    for file in files {
        let handle = File::open(&file.path).map_err(|e| Error::io(&file.path, e))?;
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(handle)?
            .with_batch_size(64 * 1024)
            .build()?;
        for batch in reader {
            let batch = batch?;
            let schema = file.signal.schema();
            let mut columns = batch.columns().to_vec();
            // Metrics files written before `series_id` existed lack only that last column.
            if file.signal == Signal::Metrics && columns.len() + 1 == schema.fields().len() {
                columns = crate::series::with_series_ids(&schema, columns)?;
            }
            // Files carry the exact schema they were written with; rebuilding against the
            // current one keeps field metadata differences from failing concatenation.
            batches.push(RecordBatch::try_new(schema, columns)?);
        }
    }
    Ok(batches)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hour_partitions_are_named_by_utc_date_and_hour() {
        assert_eq!(partition_path(0), PathBuf::from("1970-01-01/00"));
        // 1_700_000_000 s is 2023-11-14T22:13:20Z.
        assert_eq!(partition_path(1_700_000_000 / 3600), PathBuf::from("2023-11-14/22"));
        assert_eq!(partition_path(-1), PathBuf::from("1969-12-31/23"));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
    }
}
