//! [`WakeTable`]: one signal's table, planned over a fresh snapshot of the store per query.
//!
//! The scan is a union of a Parquet scan over the files that may hold matching rows and an
//! in-memory scan of the acknowledged rows not yet flushed. Filters are pushed down inexactly
//! (DataFusion re-checks them), except `matches(body, '…')`, which the scan answers exactly:
//! indexed files are read only at the rows their index names as candidates, and the function
//! decides those rows and every row no index covers.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, TimestampNanosecondArray, UInt64Array};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::pruning::PruningStatistics;
use datafusion::common::{Column, DFSchema, ScalarValue};
use datafusion::config::TableParquetOptions;
use datafusion::datasource::TableType;
use datafusion::datasource::listing::PartitionedFile;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::datasource::physical_plan::parquet::{CachedParquetFileReaderFactory, ParquetAccessPlan};
use datafusion::datasource::physical_plan::{FileScanConfigBuilder, ParquetSource};
use datafusion::datasource::source::DataSourceExec;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::object_store::ObjectStoreUrl;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_optimizer::pruning::PruningPredicateBuilder;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::expressions::Column as ColumnExpr;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::union::UnionExec;
use tracing::debug;
use wake_storage::fulltext::CancelFlag;
use wake_storage::schema::BODY;
use wake_storage::{DataFile, Signal, Store};

use crate::fulltext::{FullTextSearchExec, IndexCache, calls_matches, indexable_query, search_files};

/// The `logs`, `metrics` or `spans` table.
pub struct WakeTable {
    store: Arc<Store>,
    signal: Signal,
    schema: SchemaRef,
    indexes: Arc<IndexCache>,
}

impl std::fmt::Debug for WakeTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WakeTable").field("signal", &self.signal).finish_non_exhaustive()
    }
}

impl WakeTable {
    pub fn new(store: Arc<Store>, signal: Signal) -> Self {
        WakeTable { store, signal, schema: signal.schema(), indexes: Arc::new(IndexCache::default()) }
    }
}

#[async_trait]
impl TableProvider for WakeTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> DfResult<Vec<TableProviderFilterPushDown>> {
        Ok(filters
            .iter()
            .map(|filter| match indexable_query(filter) {
                Some(_) if self.signal == Signal::Logs => TableProviderFilterPushDown::Exact,
                _ => TableProviderFilterPushDown::Inexact,
            })
            .collect())
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        let snapshot = self.store.snapshot(self.signal);
        let mut text_queries = Vec::new();
        let mut other_filters = Vec::new();
        for filter in filters {
            match indexable_query(filter) {
                Some(query) if self.signal == Signal::Logs => text_queries.push(query),
                _ => other_filters.push(filter.clone()),
            }
        }
        let df_schema = DFSchema::try_from(self.schema.clone())?;
        let pushable = conjunction(other_filters.iter().filter(|f| !calls_matches(f)).cloned());
        let predicate = pushable.map(|expr| state.create_physical_expr(expr, &df_schema)).transpose()?;

        let total_files = snapshot.files.len();
        let files = match &predicate {
            Some(predicate) => self.prune_by_time(predicate.clone(), snapshot.files)?,
            None => snapshot.files,
        };
        debug!(table = %self.signal, total_files, files = files.len(), buffered_batches = snapshot.buffered.len(), "planning scan");

        let projection: Vec<usize> = match projection {
            Some(projection) => projection.clone(),
            None => (0..self.schema.fields().len()).collect(),
        };
        let scan = ScanBuilder { state, schema: self.schema.clone(), predicate };

        if text_queries.is_empty() {
            let mut inputs = Vec::new();
            inputs.extend(scan.parquet(files.into_iter().map(|f| (f, None)).collect(), &projection, limit)?);
            inputs.extend(scan.memory(snapshot.buffered, &projection)?);
            return scan.union(inputs, &projection);
        }

        let indexes = self.indexes.clone();
        let queries = text_queries.clone();
        let cancel = CancelFlag::new();
        // Dropping this future (the query's client went away, or it timed out) drops the guard,
        // which stops the blocking search: dropping its JoinHandle alone would not.
        let _cancel_on_drop = cancel.cancel_on_drop();
        let hits = tokio::task::spawn_blocking(move || search_files(&indexes, files, &queries, &cancel))
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?
            .map_err(|e| DataFusionError::External(Box::new(e)))?;

        // The index gives candidate rows (a superset: phrases and exclusions are decided on the
        // text); `matches` decides them, and every row no index covers, reading `body` even if
        // it is not projected.
        let body = self.schema.index_of(BODY)?;
        let mut wide_projection = projection.clone();
        if !wide_projection.contains(&body) {
            wide_projection.push(body);
        }
        let mut candidates = Vec::new();
        candidates.extend(scan.parquet(
            hits.selected.into_iter().map(|(f, plan)| (f, Some(plan))).collect(),
            &wide_projection,
            None,
        )?);
        candidates.extend(scan.parquet(
            hits.unindexed.into_iter().map(|f| (f, None)).collect(),
            &wide_projection,
            None,
        )?);
        candidates.extend(scan.memory(snapshot.buffered, &wide_projection)?);
        let mut inputs = Vec::new();
        if !candidates.is_empty() {
            let wide = scan.union(candidates, &wide_projection)?;
            let wide_schema = DFSchema::try_from(wide.schema())?;
            let text_filter = conjunction(filters.iter().filter(|f| indexable_query(f).is_some()).cloned())
                .ok_or_else(|| DataFusionError::Internal("full-text filter vanished".into()))?;
            let text_filter = state.create_physical_expr(text_filter, &wide_schema)?;
            let filtered: Arc<dyn ExecutionPlan> = Arc::new(FilterExec::try_new(text_filter, wide)?);
            let narrowed = (0..projection.len()).map(|i| {
                let field = filtered.schema().field(i).clone();
                (Arc::new(ColumnExpr::new(field.name(), i)) as Arc<dyn PhysicalExpr>, field.name().clone())
            });
            inputs
                .push(Arc::new(ProjectionExec::try_new(narrowed.collect::<Vec<_>>(), filtered)?)
                    as Arc<dyn ExecutionPlan>);
        }
        let plan = scan.union(inputs, &projection)?;
        Ok(Arc::new(FullTextSearchExec::new(plan, hits.stats)))
    }
}

impl WakeTable {
    /// Drops the files whose time bounds cannot satisfy the filters, before any is opened.
    fn prune_by_time(
        &self,
        predicate: Arc<dyn PhysicalExpr>,
        files: Vec<Arc<DataFile>>,
    ) -> DfResult<Vec<Arc<DataFile>>> {
        let pruning = match PruningPredicateBuilder::new().with_file_schema(self.schema.clone()).try_build(predicate) {
            Ok(pruning) => pruning,
            // A predicate the pruner cannot reason about prunes nothing.
            Err(_) => return Ok(files),
        };
        if pruning.always_true() {
            return Ok(files);
        }
        let statistics = FileTimeBounds { files: &files, time_column: self.signal.time_column() };
        let keep = pruning.prune(&statistics)?;
        Ok(files.into_iter().zip(keep).filter_map(|(file, keep)| keep.then_some(file)).collect())
    }
}

/// Each file's time bounds, as the pruner's per-container statistics.
struct FileTimeBounds<'a> {
    files: &'a [Arc<DataFile>],
    time_column: &'static str,
}

impl FileTimeBounds<'_> {
    fn bounds(&self, column: &Column, bound: impl Fn(&DataFile) -> i64) -> Option<ArrayRef> {
        if column.name != self.time_column {
            return None;
        }
        let values =
            TimestampNanosecondArray::from_iter_values(self.files.iter().map(|f| bound(f))).with_timezone("UTC");
        Some(Arc::new(values))
    }
}

impl PruningStatistics for FileTimeBounds<'_> {
    fn min_values(&self, column: &Column) -> Option<ArrayRef> {
        self.bounds(column, |f| f.min_time_ns)
    }

    fn max_values(&self, column: &Column) -> Option<ArrayRef> {
        self.bounds(column, |f| f.max_time_ns)
    }

    fn num_containers(&self) -> usize {
        self.files.len()
    }

    fn null_counts(&self, column: &Column) -> Option<ArrayRef> {
        // The time column is never null.
        (column.name == self.time_column).then(|| Arc::new(UInt64Array::from(vec![0u64; self.files.len()])) as ArrayRef)
    }

    fn row_counts(&self) -> Option<ArrayRef> {
        Some(Arc::new(UInt64Array::from_iter_values(self.files.iter().map(|f| f.num_rows))))
    }

    fn contained(&self, _column: &Column, _values: &HashSet<ScalarValue>) -> Option<BooleanArray> {
        None
    }
}

struct ScanBuilder<'a> {
    state: &'a dyn Session,
    schema: SchemaRef,
    predicate: Option<Arc<dyn PhysicalExpr>>,
}

impl ScanBuilder<'_> {
    /// A Parquet scan of `files` (each optionally restricted to an access plan), with the
    /// filters pushed into the reader: statistics, page index, bloom filters, late
    /// materialization.
    fn parquet(
        &self,
        files: Vec<(Arc<DataFile>, Option<ParquetAccessPlan>)>,
        projection: &[usize],
        limit: Option<usize>,
    ) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
        if files.is_empty() {
            return Ok(None);
        }
        let mut options = TableParquetOptions {
            global: self.state.config_options().execution.parquet.clone(),
            ..TableParquetOptions::default()
        };
        options.global.pushdown_filters = true;
        options.global.reorder_filters = true;
        // Files never change once written: their footers and page indexes are parsed once and
        // kept in the session's metadata cache (bounded, least recently used first out)
        // rather than read again by every query.
        let url = ObjectStoreUrl::local_filesystem();
        let store = self.state.runtime_env().object_store(&url)?;
        let metadata_cache = self.state.runtime_env().cache_manager.get_file_metadata_cache();
        let mut source = ParquetSource::new(self.schema.clone())
            .with_table_parquet_options(options)
            .with_parquet_file_reader_factory(Arc::new(CachedParquetFileReaderFactory::new(store, metadata_cache)));
        if let Some(predicate) = &self.predicate {
            source = source.with_predicate(predicate.clone());
        }
        let mut config = FileScanConfigBuilder::new(url, Arc::new(source))
            .with_projection_indices(Some(projection.to_vec()))?
            .with_limit(limit);
        for (file, access_plan) in files {
            let location = file.path.to_string_lossy();
            let mut partitioned = PartitionedFile::new(location.trim_start_matches('/'), file.size_bytes);
            if let Some(access_plan) = access_plan {
                partitioned = partitioned.with_extension(access_plan);
            }
            config = config.with_file(partitioned);
        }
        Ok(Some(DataSourceExec::from_data_source(config.build())))
    }

    /// The buffered rows, spread over partitions so that they are filtered in parallel.
    fn memory(&self, batches: Vec<RecordBatch>, projection: &[usize]) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
        if batches.is_empty() {
            return Ok(None);
        }
        let partitions = self.state.config_options().execution.target_partitions.max(1);
        let mut split: Vec<Vec<RecordBatch>> = vec![Vec::new(); partitions.min(batches.len())];
        let slots = split.len();
        for (i, batch) in batches.into_iter().enumerate() {
            split[i % slots].push(batch);
        }
        let exec = MemorySourceConfig::try_new_exec(&split, self.schema.clone(), Some(projection.to_vec()))?;
        Ok(Some(exec))
    }

    fn union(&self, inputs: Vec<Arc<dyn ExecutionPlan>>, projection: &[usize]) -> DfResult<Arc<dyn ExecutionPlan>> {
        if inputs.is_empty() {
            return Ok(Arc::new(EmptyExec::new(Arc::new(self.schema.project(projection)?))));
        }
        UnionExec::try_new(inputs)
    }
}
