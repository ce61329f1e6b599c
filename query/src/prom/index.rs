//! The series index of the `metrics` table: which series each Parquet file holds, and where.
//!
//! Metric files keep each series' rows together (sorted by `series_id` within a metric and
//! container, see `wake_storage::series`). The index records, per file, the runs of rows that
//! share a `series_id`, and once per series its identity: the stored metric and its resource
//! and point attributes. A selector then decides which series it wants from the identities
//! alone, and reads only their runs of rows, only the columns it needs (the page index skips
//! the pages that hold none of them), without decoding anyone's attribute maps.
//!
//! Files never change once written, so a file's entry is built on the first query that needs
//! it and kept until compaction or retention removes the file. Rows not yet flushed are
//! looked at directly on every query: they are few, and in memory.
//!
//! Files written before `series_id` existed lack the column; their ids are computed from the
//! identity columns when they are read (`StoredIds::Computed`).

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use arrow::array::{Array, AsArray, RecordBatch, UInt64Array};
use arrow::datatypes::UInt64Type;
use parking_lot::Mutex;
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection, RowSelector,
};
use parquet::file::metadata::PageIndexPolicy;
use wake_storage::DataFile;
use wake_storage::schema::{self, PROMOTED_RESOURCE_ATTRIBUTES, Signal};
use wake_storage::series::{map_entries, series_ids};

use super::naming::{Descriptor, Exposure, Labels, RowAttributes, series_labels};

/// Rows read at a time.
const BATCH_ROWS: usize = 8 * 1024;

/// What the index knows of one series: the stored metric and every attribute of its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesInfo {
    /// Shared by every series of the metric (see [`SeriesIndex::learn`]), so that a selector
    /// can tell metrics apart by pointer.
    pub descriptor: Arc<Descriptor>,
    /// Resource attributes, the promoted columns (`service.name`, `k8s.pod.name`, …) first.
    pub resource: Vec<(String, String)>,
    pub point: Vec<(String, String)>,
    /// The series' labels under each exposure of its metric, computed on first use.
    labels: OnceLock<Vec<Option<Labels>>>,
}

impl SeriesInfo {
    pub fn row_attributes(&self) -> RowAttributes<'_> {
        RowAttributes {
            resource: self.resource.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
            point: self.point.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect(),
        }
    }

    /// The labels of this series under each of `exposures` (all the exposures of its metric,
    /// in [`Descriptor::exposures`] order; `None` where an alias does not apply). Built once:
    /// a selector matches thousands of series by their labels on every query.
    pub fn labels(&self, exposures: &[Exposure]) -> &[Option<Labels>] {
        self.labels.get_or_init(|| {
            let attributes = self.row_attributes();
            exposures.iter().map(|exposure| series_labels(&self.descriptor, exposure, &attributes)).collect()
        })
    }
}

/// The columns that make a series' identity, in the order [`SeriesInfo::from_row`] reads them.
fn identity_columns() -> Vec<&'static str> {
    let mut columns = vec![
        schema::METRIC_NAME,
        schema::METRIC_TYPE,
        schema::UNIT,
        schema::IS_MONOTONIC,
        schema::SCOPE_NAME,
        schema::METRIC_DESCRIPTION,
    ];
    columns.extend(PROMOTED_RESOURCE_ATTRIBUTES.iter().map(|(_, column)| *column));
    columns.extend([schema::RESOURCE_ATTRIBUTES, schema::ATTRIBUTES]);
    columns
}

fn text(batch: &RecordBatch, name: &str, row: usize) -> Option<String> {
    let column = batch.column_by_name(name)?.as_string_opt::<i32>()?;
    column.is_valid(row).then(|| column.value(row).to_string())
}

impl SeriesInfo {
    /// The identity of `row` of a batch that has (at least) the identity columns.
    fn from_row(batch: &RecordBatch, row: usize) -> SeriesInfo {
        let is_monotonic = batch
            .column_by_name(schema::IS_MONOTONIC)
            .and_then(|c| c.as_boolean_opt())
            .is_some_and(|c| c.is_valid(row) && c.value(row));
        let descriptor = Descriptor {
            name: text(batch, schema::METRIC_NAME, row).unwrap_or_default(),
            metric_type: text(batch, schema::METRIC_TYPE, row).unwrap_or_default(),
            unit: text(batch, schema::UNIT, row).unwrap_or_default(),
            is_monotonic,
            scope_name: text(batch, schema::SCOPE_NAME, row).unwrap_or_default(),
            description: text(batch, schema::METRIC_DESCRIPTION, row).unwrap_or_default(),
        };
        let mut resource: Vec<(String, String)> = PROMOTED_RESOURCE_ATTRIBUTES
            .iter()
            .filter_map(|(attribute, column)| Some((attribute.to_string(), text(batch, column, row)?)))
            .collect();
        let entries = |name: &str| -> Vec<(String, String)> {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_map_opt())
                .map(|map| map_entries(map, row).map(|(k, v)| (k.to_string(), v.unwrap_or("").to_string())).collect())
                .unwrap_or_default()
        };
        resource.extend(entries(schema::RESOURCE_ATTRIBUTES));
        SeriesInfo {
            descriptor: Arc::new(descriptor),
            resource,
            point: entries(schema::ATTRIBUTES),
            labels: OnceLock::new(),
        }
    }
}

/// Whether a file has the `series_id` column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StoredIds {
    Stored,
    /// Written before the column existed: ids are computed from the identity columns.
    Computed,
}

/// One file's series: runs of rows sharing an id, in row order, and the same runs by id
/// (the file's postings).
#[derive(Debug)]
pub struct FileSeries {
    runs: Vec<(u64, Range<usize>)>,
    /// (id, index into `runs`), ascending.
    by_id: Vec<(u64, usize)>,
    /// The metrics of the file's series.
    descriptors: Vec<Arc<Descriptor>>,
    ids: StoredIds,
    metadata: ArrowReaderMetadata,
}

impl FileSeries {
    fn new(runs: Vec<(u64, Range<usize>)>, ids: StoredIds, metadata: ArrowReaderMetadata) -> FileSeries {
        let mut by_id: Vec<(u64, usize)> = runs.iter().enumerate().map(|(index, (id, _))| (*id, index)).collect();
        by_id.sort_unstable();
        FileSeries { runs, by_id, descriptors: Vec::new(), ids, metadata }
    }

    /// The file's series ids, ascending, each once.
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        let mut previous = None;
        self.by_id.iter().filter_map(move |(id, _)| (previous.replace(*id) != Some(*id)).then_some(*id))
    }

    pub fn descriptors(&self) -> &[Arc<Descriptor>] {
        &self.descriptors
    }

    /// The runs of the series `wanted` (ascending ids), in row order: a merge of two sorted
    /// lists, however few or many series are wanted.
    fn runs_of(&self, wanted: &[u64]) -> Vec<&(u64, Range<usize>)> {
        let mut indices = Vec::new();
        let (mut i, mut j) = (0, 0);
        while i < self.by_id.len() && j < wanted.len() {
            match self.by_id[i].0.cmp(&wanted[j]) {
                std::cmp::Ordering::Less => i += 1,
                std::cmp::Ordering::Greater => j += 1,
                std::cmp::Ordering::Equal => {
                    indices.push(self.by_id[i].1);
                    i += 1;
                }
            }
        }
        indices.sort_unstable();
        indices.into_iter().map(|index| &self.runs[index]).collect()
    }
}

/// Appends `ids` (the rows from `first_row` on) to `runs`.
fn extend_runs(runs: &mut Vec<(u64, Range<usize>)>, ids: &UInt64Array, first_row: usize) {
    for (offset, id) in ids.values().iter().enumerate() {
        let row = first_row + offset;
        match runs.last_mut() {
            Some((last, range)) if *last == *id && range.end == row => range.end = row + 1,
            _ => runs.push((*id, row..row + 1)),
        }
    }
}

fn projection(
    builder_schema: &parquet::schema::types::SchemaDescriptor,
    arrow: &arrow::datatypes::Schema,
    names: &[&str],
) -> ProjectionMask {
    let roots: Vec<usize> = names.iter().filter_map(|name| arrow.index_of(name).ok()).collect();
    ProjectionMask::roots(builder_schema, roots)
}

fn open_file(path: &PathBuf) -> parquet::errors::Result<File> {
    File::open(path).map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
}

/// A file's footer with its page index, read once per file: parsing it is a good part of a
/// selective query's time.
fn load_metadata(path: &PathBuf) -> parquet::errors::Result<ArrowReaderMetadata> {
    let options = ArrowReaderOptions::new().with_page_index_policy(PageIndexPolicy::Optional);
    ArrowReaderMetadata::load(&open_file(path)?, options)
}

fn open(
    path: &PathBuf,
    metadata: &ArrowReaderMetadata,
) -> parquet::errors::Result<ParquetRecordBatchReaderBuilder<File>> {
    Ok(ParquetRecordBatchReaderBuilder::new_with_metadata(open_file(path)?, metadata.clone()))
}

/// A selection of the rows in `ranges` (sorted, not overlapping) out of `total` rows.
fn row_selection(ranges: impl Iterator<Item = Range<usize>>, total: usize) -> RowSelection {
    let mut selectors = Vec::new();
    let mut position = 0;
    for range in ranges {
        if range.start > position {
            selectors.push(RowSelector::skip(range.start - position));
        }
        if range.end > range.start {
            selectors.push(RowSelector::select(range.end - range.start));
        }
        position = range.end;
    }
    if total > position {
        selectors.push(RowSelector::skip(total - position));
    }
    RowSelection::from(selectors)
}

/// The ids of a batch read with the identity columns, stored or computed.
pub fn batch_ids(batch: &RecordBatch) -> parquet::errors::Result<UInt64Array> {
    if let Some(ids) = batch.column_by_name(schema::SERIES_ID).and_then(|c| c.as_primitive_opt::<UInt64Type>())
        && ids.null_count() == 0
    {
        return Ok(ids.clone());
    }
    series_ids(&batch.schema(), batch.columns()).map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
}

/// Files' series and every known series' identity.
#[derive(Default)]
pub struct SeriesIndex {
    /// At most [`crate::cache::MAX_CACHED_FILES`]; an evicted file is indexed again when a
    /// query reads it, which also re-adds its series.
    files: Mutex<crate::cache::LruMap<PathBuf, Arc<FileSeries>>>,
    series: Mutex<KnownSeries>,
}

/// Every known series, and the series of each metric.
#[derive(Default)]
struct KnownSeries {
    by_id: HashMap<u64, Arc<SeriesInfo>>,
    /// Keys are the interned descriptors the series share.
    by_metric: HashMap<Arc<Descriptor>, Vec<u64>>,
}

impl KnownSeries {
    fn insert(&mut self, id: u64, mut info: SeriesInfo) {
        if let Some((shared, _)) = self.by_metric.get_key_value(&info.descriptor) {
            info.descriptor = shared.clone();
        }
        self.by_metric.entry(info.descriptor.clone()).or_default().push(id);
        self.by_id.insert(id, Arc::new(info));
    }
}

impl SeriesIndex {
    /// The entries of `files`, built for those not indexed yet; entries of files no longer in
    /// the store (compacted, expired) are dropped when `files` is the store's whole list.
    pub fn files(
        &self,
        files: &[Arc<DataFile>],
        all_files: &[Arc<DataFile>],
    ) -> parquet::errors::Result<Vec<Arc<FileSeries>>> {
        let mut out = Vec::with_capacity(files.len());
        for file in files {
            let known = self.files.lock().get(&file.path).cloned();
            let entry = match known {
                Some(entry) => entry,
                None => {
                    let entry = Arc::new(self.index_file(&file.path)?);
                    self.files.lock().insert(file.path.clone(), entry.clone());
                    entry
                }
            };
            out.push(entry);
        }
        self.forget_removed(all_files);
        Ok(out)
    }

    fn forget_removed(&self, all_files: &[Arc<DataFile>]) {
        let mut files = self.files.lock();
        let current: HashSet<&PathBuf> = all_files.iter().map(|f| &f.path).collect();
        if files.keys().all(|path| current.contains(path)) {
            return;
        }
        files.retain(|path, _| current.contains(path));
        // Series of removed files that no remaining file holds are forgotten too; rows still
        // in memory re-add theirs on the next query.
        let live: HashSet<u64> = files.values().flat_map(|f| f.ids()).collect();
        drop(files);
        let mut series = self.series.lock();
        series.by_id.retain(|id, _| live.contains(id));
        for ids in series.by_metric.values_mut() {
            ids.retain(|id| live.contains(id));
        }
        series.by_metric.retain(|_, ids| !ids.is_empty());
    }

    /// Every known series of the metrics `accept` takes. A superset of a time range's series
    /// once the range's files are indexed; those without rows in the range read none.
    pub fn series_of(&self, mut accept: impl FnMut(&Descriptor) -> bool) -> Vec<(u64, Arc<SeriesInfo>)> {
        let series = self.series.lock();
        let mut found = Vec::new();
        for (descriptor, ids) in &series.by_metric {
            if accept(descriptor) {
                found.extend(ids.iter().filter_map(|id| Some((*id, series.by_id.get(id)?.clone()))));
            }
        }
        found
    }

    /// The distinct metrics of `ids`.
    pub fn descriptors_of(&self, ids: impl Iterator<Item = u64>) -> Vec<Arc<Descriptor>> {
        let series = self.series.lock();
        let mut seen = HashSet::new();
        ids.filter_map(|id| series.by_id.get(&id))
            .filter(|info| seen.insert(Arc::as_ptr(&info.descriptor)))
            .map(|info| info.descriptor.clone())
            .collect()
    }

    fn index_file(&self, path: &PathBuf) -> parquet::errors::Result<FileSeries> {
        let metadata = load_metadata(path)?;
        let builder = open(path, &metadata)?;
        let arrow = builder.schema().clone();
        let total = builder.metadata().file_metadata().num_rows() as usize;
        let ids = if arrow.index_of(schema::SERIES_ID).is_ok() { StoredIds::Stored } else { StoredIds::Computed };
        let mut runs = Vec::new();
        match ids {
            StoredIds::Stored => {
                let mask = projection(builder.parquet_schema(), &arrow, &[schema::SERIES_ID]);
                let mut row = 0;
                for batch in builder.with_projection(mask).with_batch_size(BATCH_ROWS).build()? {
                    let batch = batch?;
                    let ids = batch_ids(&batch)?;
                    extend_runs(&mut runs, &ids, row);
                    row += batch.num_rows();
                }
                // The identities of series seen for the first time: one row of each.
                let first_rows: Vec<Range<usize>> = {
                    let series = self.series.lock();
                    let mut new = HashSet::new();
                    runs.iter()
                        .filter(|(id, _)| !series.by_id.contains_key(id) && new.insert(*id))
                        .map(|(_, range)| range.start..range.start + 1)
                        .collect()
                };
                if !first_rows.is_empty() {
                    let builder = open(path, &metadata)?;
                    let mut columns = identity_columns();
                    columns.push(schema::SERIES_ID);
                    let mask = projection(builder.parquet_schema(), &arrow, &columns);
                    let reader = builder
                        .with_projection(mask)
                        .with_row_selection(row_selection(first_rows.into_iter(), total))
                        .with_batch_size(BATCH_ROWS)
                        .build()?;
                    for batch in reader {
                        self.learn(&batch?)?;
                    }
                }
            }
            StoredIds::Computed => {
                let mask = projection(builder.parquet_schema(), &arrow, &identity_columns());
                let mut row = 0;
                for batch in builder.with_projection(mask).with_batch_size(BATCH_ROWS).build()? {
                    let batch = batch?;
                    let ids = self.learn(&batch)?;
                    extend_runs(&mut runs, &ids, row);
                    row += batch.num_rows();
                }
            }
        }
        let mut entry = FileSeries::new(runs, ids, metadata);
        entry.descriptors = self.descriptors_of(entry.ids());
        Ok(entry)
    }

    /// Records the identity of every series of `batch` (which has the identity columns) not
    /// known yet, and returns the batch's ids.
    pub fn learn(&self, batch: &RecordBatch) -> parquet::errors::Result<UInt64Array> {
        let ids = batch_ids(batch)?;
        let mut series = self.series.lock();
        let mut previous = None;
        for (row, id) in ids.values().iter().enumerate() {
            if previous == Some(*id) {
                continue;
            }
            previous = Some(*id);
            if !series.by_id.contains_key(id) {
                series.insert(*id, SeriesInfo::from_row(batch, row));
            }
        }
        Ok(ids)
    }

    /// Reads the rows of the series `wanted` (ascending ids) from `file`, `columns` of them,
    /// in batches handed to `on_batch` with their ids.
    pub fn read(
        &self,
        file: &DataFile,
        entry: &FileSeries,
        wanted: &[u64],
        columns: &[&str],
        on_batch: &mut dyn FnMut(&RecordBatch, &UInt64Array),
    ) -> parquet::errors::Result<()> {
        // Runs are in row order, so the rows read come run after run: their ids are known
        // without reading the `series_id` column.
        let runs = entry.runs_of(wanted);
        if runs.is_empty() {
            return Ok(());
        }
        let ranges: Vec<Range<usize>> = runs.iter().map(|(_, range)| range.clone()).collect();
        let mut run_ids = runs.iter().flat_map(|(id, range)| std::iter::repeat_n(*id, range.len()));
        let builder = open(&file.path, &entry.metadata)?;
        let arrow = builder.schema().clone();
        let mut names: Vec<&str> = columns.to_vec();
        if entry.ids == StoredIds::Computed {
            names.extend(identity_columns());
        }
        let mask = projection(builder.parquet_schema(), &arrow, &names);
        // Only the row groups that hold wanted rows are opened at all: each column chunk
        // opened costs a decompression context and a skip over its pages.
        let group_rows: Vec<usize> = builder.metadata().row_groups().iter().map(|g| g.num_rows() as usize).collect();
        let (groups, ranges) = groups_and_ranges(&group_rows, merge(ranges));
        let rows_in_groups = groups.iter().map(|g| group_rows[*g]).sum();
        let reader = builder
            .with_projection(mask)
            .with_row_groups(groups)
            .with_row_selection(row_selection(ranges.into_iter(), rows_in_groups))
            .with_batch_size(BATCH_ROWS)
            .build()?;
        for batch in reader {
            let batch = batch?;
            let ids = match entry.ids {
                StoredIds::Stored => UInt64Array::from_iter_values(run_ids.by_ref().take(batch.num_rows())),
                StoredIds::Computed => batch_ids(&batch)?,
            };
            on_batch(&batch, &ids);
        }
        Ok(())
    }
}

/// Sorted ranges with the touching ones joined.
fn merge(mut ranges: Vec<Range<usize>>) -> Vec<Range<usize>> {
    ranges.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<usize>> = Vec::with_capacity(ranges.len());
    for range in ranges {
        match merged.last_mut() {
            Some(last) if last.end >= range.start => last.end = last.end.max(range.end),
            _ => merged.push(range),
        }
    }
    merged
}

/// The row groups that `ranges` (sorted, not overlapping, in file rows) touch, and the ranges
/// renumbered as rows of those groups alone.
fn groups_and_ranges(group_rows: &[usize], ranges: Vec<Range<usize>>) -> (Vec<usize>, Vec<Range<usize>>) {
    let mut groups = Vec::new();
    let mut renumbered = Vec::with_capacity(ranges.len());
    // Rows of the groups before the current one that are left out of the reading.
    let (mut group, mut group_start, mut skipped) = (0, 0, 0);
    for range in ranges {
        let mut start = range.start;
        while start < range.end && group < group_rows.len() {
            let group_end = group_start + group_rows[group];
            if start >= group_end {
                if groups.last() != Some(&group) {
                    skipped += group_rows[group];
                }
                group_start = group_end;
                group += 1;
                continue;
            }
            if groups.last() != Some(&group) {
                groups.push(group);
            }
            let end = range.end.min(group_end);
            renumbered.push(start - skipped..end - skipped);
            start = end;
        }
    }
    (groups, renumbered)
}

/// Whether `file` may hold rows in `[min_ns, max_ns]`.
pub fn overlaps(file: &DataFile, min_ns: i64, max_ns: i64) -> bool {
    file.signal == Signal::Metrics && file.min_time_ns <= max_ns && file.max_time_ns >= min_ns
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_join_consecutive_rows_of_one_series() {
        let mut runs = Vec::new();
        extend_runs(&mut runs, &UInt64Array::from(vec![7, 7, 9]), 0);
        extend_runs(&mut runs, &UInt64Array::from(vec![9, 7]), 3);
        assert_eq!(runs, vec![(7, 0..2), (9, 2..4), (7, 4..5)]);
    }

    #[test]
    fn runs_of_wanted_series_come_in_row_order() {
        let runs = vec![(9, 0..2), (3, 2..4), (7, 4..6), (3, 6..7)];
        let metadata = ArrowReaderMetadata::try_new(
            Arc::new(parquet::file::metadata::ParquetMetaData::new(
                parquet::file::metadata::FileMetaData::new(
                    1,
                    0,
                    None,
                    None,
                    Arc::new(parquet::schema::types::SchemaDescriptor::new(Arc::new(
                        parquet::schema::types::Type::group_type_builder("schema").build().unwrap(),
                    ))),
                    None,
                ),
                Vec::new(),
            )),
            ArrowReaderOptions::new(),
        )
        .unwrap();
        let entry = FileSeries::new(runs, StoredIds::Stored, metadata);
        assert_eq!(entry.ids().collect::<Vec<_>>(), vec![3, 7, 9]);
        let picked: Vec<_> = entry.runs_of(&[3, 9]).into_iter().cloned().collect();
        assert_eq!(picked, vec![(9, 0..2), (3, 2..4), (3, 6..7)]);
        assert!(entry.runs_of(&[1, 4]).is_empty());
    }

    #[test]
    fn only_the_row_groups_with_wanted_rows_are_read() {
        // Groups of 10 rows: rows 12..14 and 15..25 are in groups 1 and 2, 45..47 in group 4.
        let (groups, ranges) = groups_and_ranges(&[10, 10, 10, 10, 10], vec![12..14, 15..25, 45..47]);
        assert_eq!(groups, vec![1, 2, 4]);
        // Renumbered over groups 1, 2 and 4 alone (rows 10..30 and 40..50 become 0..30).
        assert_eq!(ranges, vec![2..4, 5..10, 10..15, 25..27]);
        let (groups, ranges) = groups_and_ranges(&[10, 10], std::iter::once(0..20).collect());
        assert_eq!((groups, ranges), (vec![0, 1], vec![0..10, 10..20]));
    }

    #[test]
    fn selections_skip_between_ranges() {
        let selection = row_selection(merge(vec![5..7, 0..2, 2..3]).into_iter(), 10);
        let selectors: Vec<RowSelector> = selection.into();
        assert_eq!(
            selectors,
            vec![RowSelector::select(3), RowSelector::skip(2), RowSelector::select(2), RowSelector::skip(3)]
        );
    }
}
