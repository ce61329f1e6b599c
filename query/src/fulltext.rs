//! Full-text search in SQL: `matches(body, '<tantivy query>')` (words, tantivy's query syntax)
//! and `contains_text(body, '<substring>')` (case-sensitive substring, LogQL's `|=`).
//!
//! As a row-level function, `matches` runs the query over the bodies it is given with the same
//! tokenizer and parser as the on-disk indexes ([`wake_storage::fulltext::matches_bodies`]), so
//! it is correct anywhere in a query. When it is a conjunct of a `WHERE` clause over `body`,
//! the scan instead searches each file's index ([`search_files`]): files without a hit are
//! skipped and only the hit rows are decoded. [`FullTextSearchExec`] shows that in `EXPLAIN`.
//!
//! That search runs while the scan is planned, on a blocking thread. A query whose client went
//! away (or that timed out) is dropped with its planning future; the blocking thread cannot be,
//! so the scan hands the search a [`Cancel`] that the dropped future sets, which it asks before
//! each file and tantivy's loop asks before each segment and every few thousand documents.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, StringArray};
use arrow::datatypes::DataType;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{ScalarValue, exec_err};
use datafusion::datasource::physical_plan::parquet::{ParquetAccessPlan, RowGroupAccess};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::physical_plan::PhysicalExpr;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties};
use parking_lot::Mutex;
use parquet::arrow::arrow_reader::RowSelection;
use wake_storage::DataFile;
use wake_storage::fulltext::{Cancel, FullTextIndex, matches_bodies};
use wake_storage::schema::BODY;

pub const MATCHES_FUNCTION: &str = "matches";
pub const CONTAINS_FUNCTION: &str = "contains_text";

/// A full-text condition on `body` that the indexes can narrow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextFilter {
    /// `matches(body, query)`.
    Matches(String),
    /// `contains_text(body, substring)`.
    Contains(String),
}

impl fmt::Display for TextFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TextFilter::Matches(query) => write!(f, "matches({query:?})"),
            TextFilter::Contains(needle) => write!(f, "contains_text({needle:?})"),
        }
    }
}

/// `matches(text, query)` (tantivy query syntax, answered like the indexes answer it) and
/// `contains_text(text, substring)` (`strpos(text, substring) > 0`), as scalar functions.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TextFunction {
    name: &'static str,
    signature: Signature,
}

impl TextFunction {
    fn udf(name: &'static str) -> ScalarUDF {
        ScalarUDF::new_from_impl(TextFunction { name, signature: Signature::string(2, Volatility::Immutable) })
    }

    pub fn matches() -> ScalarUDF {
        TextFunction::udf(MATCHES_FUNCTION)
    }

    pub fn contains_text() -> ScalarUDF {
        TextFunction::udf(CONTAINS_FUNCTION)
    }
}

impl ScalarUDFImpl for TextFunction {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let name = self.name;
        let [text, pattern] = args.args.as_slice() else {
            return exec_err!("{name}() takes two arguments: a text column and a string");
        };
        let Some(pattern) = scalar_string(pattern) else {
            return exec_err!("{name}(): the second argument must be a string literal, e.g. {name}(body, 'timeout')");
        };
        let text = arrow::compute::cast(&text.to_array(args.number_rows)?, &DataType::Utf8)?;
        let Some(bodies) = text.as_any().downcast_ref::<StringArray>() else {
            return exec_err!("{name}(): the first argument must be text");
        };
        let found = if name == MATCHES_FUNCTION {
            matches_bodies(bodies, &pattern).map_err(|e| DataFusionError::External(Box::new(e)))?
        } else {
            (0..bodies.len()).map(|i| Some(bodies.is_valid(i) && bodies.value(i).contains(&pattern))).collect()
        };
        Ok(ColumnarValue::Array(Arc::new(found) as ArrayRef))
    }
}

fn scalar_string(value: &ColumnarValue) -> Option<String> {
    match value {
        ColumnarValue::Scalar(
            ScalarValue::Utf8(Some(s)) | ScalarValue::LargeUtf8(Some(s)) | ScalarValue::Utf8View(Some(s)),
        ) => Some(s.clone()),
        _ => None,
    }
}

/// The full-text condition of a `matches(body, '…')` or `contains_text(body, '…')` filter.
pub fn indexable_query(filter: &Expr) -> Option<TextFilter> {
    let Expr::ScalarFunction(call) = filter else {
        return None;
    };
    let text = match call.args.as_slice() {
        [Expr::Column(column), Expr::Literal(ScalarValue::Utf8(Some(text)) | ScalarValue::Utf8View(Some(text)), _)]
            if column.name == BODY =>
        {
            text.clone()
        }
        _ => return None,
    };
    match call.func.name() {
        MATCHES_FUNCTION => Some(TextFilter::Matches(text)),
        CONTAINS_FUNCTION => Some(TextFilter::Contains(text)),
        _ => None,
    }
}

/// Whether an expression calls a full-text function anywhere (such filters never go to the
/// Parquet reader, where they would be evaluated on every row).
pub fn calls_matches(expr: &Expr) -> bool {
    let mut found = false;
    let _ = expr.apply(|e| {
        if matches!(e, Expr::ScalarFunction(call) if [MATCHES_FUNCTION, CONTAINS_FUNCTION].contains(&call.func.name()))
        {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

use datafusion::common::tree_node::TreeNode;

/// Opened indexes of the live log files. Opening an index reads its meta file and maps its
/// segments; keeping them open makes a needle search cost only the lookups.
/// At most [`crate::cache::MAX_CACHED_FILES`], the least recently used closed first.
#[derive(Default)]
pub struct IndexCache {
    indexes: Mutex<crate::cache::LruMap<PathBuf, Arc<FullTextIndex>>>,
}

impl IndexCache {
    fn get(&self, dir: &PathBuf) -> wake_storage::Result<Arc<FullTextIndex>> {
        if let Some(index) = self.indexes.lock().get(dir) {
            return Ok(index.clone());
        }
        let index = Arc::new(FullTextIndex::open(dir)?);
        self.indexes.lock().insert(dir.clone(), index.clone());
        Ok(index)
    }

    /// Forgets indexes of files that compaction replaced.
    fn retain_live(&self, files: &[Arc<DataFile>]) {
        let mut indexes = self.indexes.lock();
        if indexes.len() > files.len() {
            let live: std::collections::HashSet<&PathBuf> = files.iter().filter_map(|f| f.index_dir.as_ref()).collect();
            indexes.retain(|dir, _| live.contains(dir));
        }
    }
}

/// What the indexes answered for one scan.
pub struct FileHits {
    /// Indexed files with at least one hit, and the rows to read from each.
    pub selected: Vec<(Arc<DataFile>, ParquetAccessPlan)>,
    /// Files without an index: the function must be evaluated on their rows.
    pub unindexed: Vec<Arc<DataFile>>,
    pub stats: SearchStats,
}

#[derive(Debug, Clone, Default)]
pub struct SearchStats {
    pub queries: Vec<TextFilter>,
    pub files_searched: usize,
    pub files_skipped: usize,
    pub rows_selected: u64,
    pub rows_in_searched_files: u64,
}

/// Searches each file's index for all `queries` (AND), turning hits into Parquet row
/// selections, until `cancel` says to stop ([`wake_storage::Error::Cancelled`]). Blocking: call
/// it from a blocking thread.
pub fn search_files(
    cache: &IndexCache,
    files: Vec<Arc<DataFile>>,
    queries: &[TextFilter],
    cancel: &dyn Cancel,
) -> wake_storage::Result<FileHits> {
    cache.retain_live(&files);
    let mut hits = FileHits {
        selected: Vec::new(),
        unindexed: Vec::new(),
        stats: SearchStats { queries: queries.to_vec(), ..SearchStats::default() },
    };
    for file in files {
        let Some(dir) = &file.index_dir else {
            hits.unindexed.push(file);
            continue;
        };
        // Before the index is opened, which reads its meta file and maps its segments.
        if cancel.is_cancelled() {
            return Err(wake_storage::Error::Cancelled);
        }
        let index = cache.get(dir)?;
        let mut rows: Option<Vec<u64>> = None;
        for query in queries {
            let found = match query {
                TextFilter::Matches(query) => index.candidates_cancellable(query, cancel)?,
                TextFilter::Contains(needle) => index.substring_candidates_cancellable(needle, cancel)?,
            };
            rows = Some(match rows {
                None => found,
                Some(previous) => intersect_sorted(&previous, &found),
            });
            if rows.as_ref().is_some_and(|r| r.is_empty()) {
                break;
            }
        }
        let rows = rows.unwrap_or_default();
        hits.stats.files_searched += 1;
        hits.stats.rows_in_searched_files += file.num_rows;
        if rows.is_empty() {
            hits.stats.files_skipped += 1;
            continue;
        }
        hits.stats.rows_selected += rows.len() as u64;
        let plan = access_plan(&file.row_group_row_counts, &rows);
        hits.selected.push((file, plan));
    }
    Ok(hits)
}

fn intersect_sorted(a: &[u64], b: &[u64]) -> Vec<u64> {
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() && j < b.len() {
        match a[i].cmp(&b[j]) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                out.push(a[i]);
                i += 1;
                j += 1;
            }
        }
    }
    out
}

/// Row groups without a hit are skipped; the others read only runs of hit rows.
fn access_plan(row_group_row_counts: &[u64], sorted_rows: &[u64]) -> ParquetAccessPlan {
    let mut plan = ParquetAccessPlan::new_all(row_group_row_counts.len());
    let mut next_hit = 0;
    let mut group_start = 0u64;
    for (group, &count) in row_group_row_counts.iter().enumerate() {
        let group_end = group_start + count;
        let mut ranges: Vec<Range<usize>> = Vec::new();
        while next_hit < sorted_rows.len() && sorted_rows[next_hit] < group_end {
            let row = (sorted_rows[next_hit] - group_start) as usize;
            match ranges.last_mut() {
                Some(last) if last.end == row => last.end = row + 1,
                _ => ranges.push(row..row + 1),
            }
            next_hit += 1;
        }
        if ranges.is_empty() {
            plan.set(group, RowGroupAccess::Skip);
        } else {
            plan.scan_selection(group, RowSelection::from_consecutive_ranges(ranges.into_iter(), count as usize));
        }
        group_start = group_end;
    }
    plan
}

/// Wraps the scan of a full-text query so that `EXPLAIN` shows what the indexes answered.
/// It passes batches through unchanged.
#[derive(Debug)]
pub struct FullTextSearchExec {
    input: Arc<dyn ExecutionPlan>,
    stats: SearchStats,
}

impl FullTextSearchExec {
    pub fn new(input: Arc<dyn ExecutionPlan>, stats: SearchStats) -> Self {
        FullTextSearchExec { input, stats }
    }
}

impl DisplayAs for FullTextSearchExec {
    fn fmt_as(&self, _format: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "FullTextSearchExec: fulltext index queries=[{}], files_searched={}, files_skipped={}, rows_selected={} of {}",
            self.stats.queries.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            self.stats.files_searched,
            self.stats.files_skipped,
            self.stats.rows_selected,
            self.stats.rows_in_searched_files
        )
    }
}

impl ExecutionPlan for FullTextSearchExec {
    fn name(&self) -> &str {
        "FullTextSearchExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.len() != 1 {
            return Err(DataFusionError::Internal("FullTextSearchExec has exactly one child".into()));
        }
        Ok(Arc::new(FullTextSearchExec { input: children.swap_remove(0), stats: self.stats.clone() }))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> DfResult<SendableRecordBatchStream> {
        self.input.execute(partition, context)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::{col, lit};

    #[test]
    fn access_plan_selects_hit_runs_and_skips_groups_without_hits() {
        let plan = access_plan(&[4, 4, 4], &[1, 2, 3, 9]);
        assert!(plan.should_scan(0));
        assert!(!plan.should_scan(1));
        assert!(plan.should_scan(2));
        let selection = plan.into_overall_row_selection(&row_group_metadata(&[4, 4, 4])).expect("selection");
        let selected: usize = selection.expect("some selection").iter().filter(|s| !s.skip).map(|s| s.row_count).sum();
        assert_eq!(selected, 4);
    }

    fn row_group_metadata(counts: &[i64]) -> Vec<parquet::file::metadata::RowGroupMetaData> {
        use parquet::schema::types::{SchemaDescriptor, Type};
        let field = Arc::new(Type::primitive_type_builder("a", parquet::basic::Type::INT32).build().expect("field"));
        let schema = Type::group_type_builder("schema").with_fields(vec![field]).build().expect("schema");
        let descriptor = Arc::new(SchemaDescriptor::new(Arc::new(schema)));
        counts
            .iter()
            .map(|&rows| {
                let column = parquet::file::metadata::ColumnChunkMetaData::builder(descriptor.column(0))
                    .build()
                    .expect("column");
                parquet::file::metadata::RowGroupMetaData::builder(descriptor.clone())
                    .set_num_rows(rows)
                    .set_column_metadata(vec![column])
                    .build()
                    .expect("row group")
            })
            .collect()
    }

    #[test]
    fn only_matches_over_body_with_a_literal_is_indexable() {
        let udf = Arc::new(TextFunction::matches());
        let on_body = udf.call(vec![col("body"), lit("timeout")]);
        assert_eq!(indexable_query(&on_body), Some(TextFilter::Matches("timeout".into())));
        let on_other = udf.call(vec![col("severity_text"), lit("timeout")]);
        assert_eq!(indexable_query(&on_other), None);
        assert!(calls_matches(&on_other.or(col("flags").eq(lit(1)))));
        assert!(!calls_matches(&col("flags").eq(lit(1))));
    }

    /// A store with `files` indexed log files of `rows` bodies "error <n>" each.
    async fn indexed_files(dir: &std::path::Path, files: usize, rows: usize) -> Vec<Arc<DataFile>> {
        use wake_storage::{OtlpRequest, Signal, Store, StoreConfig};
        let config = StoreConfig {
            data_dir: dir.to_path_buf(),
            min_free_disk_bytes: 0,
            max_record_age_secs: 0,
            ..StoreConfig::default()
        };
        let store = Store::open(config, &prometheus::Registry::new()).expect("store");
        let now = wake_storage::now_ns();
        for file in 0..files {
            let records: Vec<serde_json::Value> = (0..rows)
                .map(|row| {
                    serde_json::json!({
                        "timeUnixNano": (now + (file * rows + row) as i64).to_string(),
                        "body": { "stringValue": format!("error {file} {row}") },
                    })
                })
                .collect();
            let body = serde_json::json!({ "resourceLogs": [{ "scopeLogs": [{ "logRecords": records }] }] });
            let request = OtlpRequest::decode_json(Signal::Logs, body.to_string().as_bytes()).expect("OTLP/JSON");
            store.ingest(request, None).await.expect("ingest");
            store.flush(Signal::Logs).await.expect("flush");
        }
        let files = store.snapshot(Signal::Logs).files;
        assert!(files.iter().all(|file| file.index_dir.is_some()), "every file has an index");
        files
    }

    /// Indexes opened by a search: one per file it searched.
    fn opened(cache: &IndexCache) -> usize {
        cache.indexes.lock().len()
    }

    #[tokio::test]
    async fn a_cancelled_search_opens_no_further_index() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = indexed_files(dir.path(), 4, 50).await;
        assert_eq!(files.len(), 4);
        let queries = [TextFilter::Matches("error".into()), TextFilter::Contains("rror".into())];

        let cache = IndexCache::default();
        let hits = search_files(&cache, files.clone(), &queries, &|| false).expect("not cancelled");
        assert_eq!((hits.stats.files_searched, hits.stats.rows_selected, opened(&cache)), (4, 200, 4));

        let cache = IndexCache::default();
        let cancelled = wake_storage::fulltext::CancelFlag::new();
        cancelled.cancel();
        let error = search_files(&cache, files.clone(), &queries, &cancelled).err().expect("cancelled before");
        assert!(matches!(error, wake_storage::Error::Cancelled), "{error}");
        assert_eq!(opened(&cache), 0);

        // Cancelled while the second file is searched: the third and fourth are never opened.
        let cache = IndexCache::default();
        let error =
            search_files(&cache, files.clone(), &queries, &|| opened(&cache) >= 2).err().expect("cancelled during");
        assert!(matches!(error, wake_storage::Error::Cancelled), "{error}");
        assert_eq!(opened(&cache), 2);

        // Dropping the guard, as a dropped scan does, stops the search within the file it is in.
        let cache = IndexCache::default();
        let flag = wake_storage::fulltext::CancelFlag::new();
        let guard = Mutex::new(Some(flag.cancel_on_drop()));
        let drop_in_first_file = || {
            if opened(&cache) == 1 {
                drop(guard.lock().take());
            }
            flag.is_cancelled()
        };
        let error = search_files(&cache, files, &queries, &drop_in_first_file).err().expect("guard dropped");
        assert!(matches!(error, wake_storage::Error::Cancelled), "{error}");
        assert_eq!(opened(&cache), 1);
    }

    #[test]
    fn intersection_of_sorted_rows() {
        assert_eq!(intersect_sorted(&[1, 3, 5, 7], &[3, 4, 5, 8]), vec![3, 5]);
    }
}
