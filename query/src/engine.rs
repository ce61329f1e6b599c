//! [`QueryEngine`]: the read-only DataFusion session over the store's tables.

use std::sync::Arc;
use std::time::Instant;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use serde::Deserialize;
use tracing::{debug, warn};
use wake_storage::{Signal, Store};

use crate::error::{Error, Result};
use crate::fulltext::TextFunction;
use crate::table::WakeTable;

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueryConfig {
    /// Memory all running queries may use together; beyond it sorts and aggregations spill to
    /// disk or the query fails, rather than the server running out of memory.
    pub memory_limit_bytes: usize,
    /// Threads that execute queries, apart from those that receive data (0: one per core).
    pub threads: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        QueryConfig { memory_limit_bytes: 2 << 30, threads: 0 }
    }
}

/// The result of a query: its schema (also when there are no rows) and its rows.
#[derive(Debug)]
pub struct QueryOutput {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl QueryOutput {
    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(RecordBatch::num_rows).sum()
    }
}

struct QueryMetrics {
    queries: IntCounterVec,
    duration: HistogramVec,
}

impl QueryMetrics {
    fn new(registry: &Registry) -> Result<Self> {
        let queries = IntCounterVec::new(
            Opts::new("wake_server_queries_total", "SQL queries answered, by outcome"),
            &["outcome"],
        )
        .map_err(metric_error)?;
        let duration = HistogramVec::new(
            HistogramOpts::new("wake_server_query_duration_seconds", "Time to plan and run a SQL query")
                .buckets(prometheus::exponential_buckets(0.001, 2.0, 16).map_err(metric_error)?),
            &["outcome"],
        )
        .map_err(metric_error)?;
        registry.register(Box::new(queries.clone())).map_err(metric_error)?;
        registry.register(Box::new(duration.clone())).map_err(metric_error)?;
        Ok(QueryMetrics { queries, duration })
    }
}

fn metric_error(error: prometheus::Error) -> Error {
    Error::Task(format!("registering query metrics: {error}"))
}

/// Plans and runs SQL over `logs`, `metrics` and `spans`. Queries execute on a runtime of
/// their own so that a heavy query cannot starve the threads that acknowledge ingestion.
pub struct QueryEngine {
    store: Arc<Store>,
    context: SessionContext,
    runtime: Option<tokio::runtime::Runtime>,
    metrics: QueryMetrics,
    threads: usize,
}

impl QueryEngine {
    pub fn new(store: Arc<Store>, registry: &Registry) -> Result<Self> {
        Self::with_config(store, QueryConfig::default(), registry)
    }

    pub fn with_config(store: Arc<Store>, config: QueryConfig, registry: &Registry) -> Result<Self> {
        let threads = match config.threads {
            0 => std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2),
            n => n,
        };
        let mut session = SessionConfig::new()
            .with_information_schema(true)
            .with_target_partitions(threads)
            .with_default_catalog_and_schema("wake", "public");
        let options = session.options_mut();
        // The store's tables use Utf8; keep SQL casts and Parquet reads in the same types.
        options.execution.parquet.schema_force_view_types = false;
        options.sql_parser.map_string_types_to_utf8view = false;
        options.execution.parquet.pushdown_filters = true;
        options.execution.parquet.reorder_filters = true;
        let runtime_env = RuntimeEnvBuilder::new().with_memory_limit(config.memory_limit_bytes, 1.0).build_arc()?;
        let context = SessionContext::new_with_config_rt(session, runtime_env);
        context.register_udf(TextFunction::matches());
        context.register_udf(TextFunction::contains_text());
        for signal in Signal::ALL {
            context.register_table(signal.table_name(), Arc::new(WakeTable::new(store.clone(), signal)))?;
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("wake-query")
            .enable_all()
            .build()
            .map_err(|e| Error::Task(format!("starting the query runtime: {e}")))?;
        Ok(QueryEngine { store, context, runtime: Some(runtime), metrics: QueryMetrics::new(registry)?, threads })
    }

    /// Threads a query may use (the configured `threads`, or one per core).
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// The session, for the query languages built on SQL tables (PromQL, LogQL).
    pub fn context(&self) -> &SessionContext {
        &self.context
    }

    /// The store the tables read, for readers that go to its files directly (PromQL).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Runs blocking work that reads the store outside SQL (`what` names it in logs) on the
    /// query runtime, counted in the self-metrics like a query.
    pub async fn run_blocking<T: Send + 'static>(
        &self,
        what: &str,
        work: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let started = Instant::now();
        let run =
            async move { tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| Err(Error::Task(e.to_string()))) };
        self.run_measured(run, what, started).await
    }

    /// Runs one read-only SQL statement.
    pub async fn sql(&self, sql: &str) -> Result<QueryOutput> {
        let started = Instant::now();
        let context = self.context.clone();
        let sql_text = sql.to_string();
        let run = async move {
            let frame = read_only_frame(&context, &sql_text).await?;
            let schema = Arc::new(frame.schema().as_arrow().clone());
            let batches = frame.collect().await?;
            Ok::<_, Error>(QueryOutput { schema, batches })
        };
        let result = self.run_measured(run, sql, started).await;
        if let Ok(output) = &result {
            debug!(rows = output.num_rows(), elapsed_ms = started.elapsed().as_millis() as u64, "query");
        }
        result
    }

    /// Runs a query future on the query runtime and counts it in the self-metrics.
    async fn run_measured<T: Send + 'static>(
        &self,
        run: impl Future<Output = Result<T>> + Send + 'static,
        sql: &str,
        started: Instant,
    ) -> Result<T> {
        let result = match &self.runtime {
            Some(runtime) => runtime.spawn(run).await.unwrap_or_else(|e| Err(Error::Task(e.to_string()))),
            None => Err(Error::Task("the query engine is shut down".into())),
        };
        let outcome = if result.is_ok() { "ok" } else { "error" };
        self.metrics.queries.with_label_values(&[outcome]).inc();
        self.metrics.duration.with_label_values(&[outcome]).observe(started.elapsed().as_secs_f64());
        if let Err(error) = &result {
            warn!(%error, sql, "query failed");
        }
        result
    }
}

impl QueryEngine {
    /// Runs one read-only SQL statement and hands its result batches, as they are produced, to
    /// `on_batch` with `state`, until it returns `false` (the rest of the query is then
    /// cancelled). For query languages that stop early, like LogQL with a line limit.
    pub async fn sql_fold<S, F>(&self, sql: &str, state: S, mut on_batch: F) -> Result<S>
    where
        S: Send + 'static,
        F: FnMut(&mut S, &RecordBatch) -> bool + Send + 'static,
    {
        let started = Instant::now();
        let context = self.context.clone();
        let sql_text = sql.to_string();
        let run = async move {
            let frame = read_only_frame(&context, &sql_text).await?;
            let mut stream = frame.execute_stream().await?;
            let mut state = state;
            while let Some(batch) = futures::StreamExt::next(&mut stream).await {
                if !on_batch(&mut state, &batch?) {
                    break;
                }
            }
            Ok::<_, Error>(state)
        };
        self.run_measured(run, sql, started).await
    }
}

/// Plans `sql` and refuses anything but a read-only query.
async fn read_only_frame(context: &SessionContext, sql: &str) -> Result<datafusion::dataframe::DataFrame> {
    let plan = context.state().create_logical_plan(sql).await?;
    ensure_read_only(&plan)?;
    Ok(context.execute_logical_plan(plan).await?)
}

impl Drop for QueryEngine {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which is not allowed inside another runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Refuses DDL (`CREATE [EXTERNAL] TABLE`, `DROP`…), DML (`INSERT`, `COPY`…) and statements
/// (`SET`, transactions): a query can neither change the store nor read files outside it.
fn ensure_read_only(plan: &LogicalPlan) -> Result<()> {
    let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
    options.verify_plan(plan).map_err(|error| {
        let what = match plan {
            LogicalPlan::Ddl(ddl) => ddl.name().to_string(),
            LogicalPlan::Dml(dml) => dml.op.to_string(),
            LogicalPlan::Statement(statement) => statement.name().to_string(),
            _ => error.strip_backtrace(),
        };
        Error::ReadOnly(what)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wake_storage::StoreConfig;

    fn engine() -> (tempfile::TempDir, QueryEngine) {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = StoreConfig { data_dir: dir.path().to_path_buf(), ..StoreConfig::default() };
        let registry = Registry::new();
        let store = Store::open(config, &registry).expect("store");
        let engine = QueryEngine::new(store, &registry).expect("engine");
        (dir, engine)
    }

    #[tokio::test]
    async fn empty_tables_answer_with_their_schema() {
        let (_dir, engine) = engine();
        let output = engine.sql("SELECT timestamp, body FROM logs").await.expect("query");
        assert_eq!(output.num_rows(), 0);
        assert_eq!(output.schema.fields().len(), 2);
    }

    #[tokio::test]
    async fn statements_that_write_or_read_files_are_refused() {
        let (dir, engine) = engine();
        let outside = dir.path().join("outside.csv");
        std::fs::write(&outside, "a\n1\n").expect("write");
        for sql in [
            "CREATE TABLE t AS SELECT 1".to_string(),
            format!("CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '{}'", outside.display()),
            "INSERT INTO logs (body) VALUES ('x')".to_string(),
            format!("COPY (SELECT 1) TO '{}'", dir.path().join("out.csv").display()),
            "DROP TABLE logs".to_string(),
            "SET datafusion.execution.batch_size = 1".to_string(),
        ] {
            let error = engine.sql(&sql).await.expect_err(&sql);
            assert!(matches!(error, Error::ReadOnly(_)) || error.status().is_client_error(), "{sql}: {error}");
            assert!(error.status().is_client_error(), "{sql}: {error}");
        }
        let error = engine.sql(&format!("SELECT * FROM '{}'", outside.display())).await.expect_err("file table");
        assert!(error.status().is_client_error(), "{error}");
        assert!(!dir.path().join("out.csv").exists());
        let tables = engine.sql("SHOW TABLES").await.expect("show tables");
        assert!(tables.num_rows() >= 3);
    }
}
