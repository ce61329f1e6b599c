//! [`QueryEngine`]: the read-only DataFusion session over the store's tables.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use datafusion::execution::memory_pool::{FairSpillPool, TrackConsumersPool};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::LogicalPlan;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tracing::{debug, warn};
use wake_storage::{Signal, Store};

use crate::config::{QueryConfig, QueryLimitOverrides, ThreadPolicy};
use crate::error::{Error, Result};
use crate::fulltext::TextFunction;
use crate::limits::{Admitted, Api, Limits};
use crate::table::WakeTable;

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

#[derive(Clone)]
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
/// their own, whose threads run at a lower CPU priority, so that a heavy query cannot starve
/// the threads that acknowledge ingestion.
pub struct QueryEngine {
    store: Arc<Store>,
    context: SessionContext,
    /// Shared by the engines of all tenants.
    runtime: Arc<QueryRuntime>,
    metrics: QueryMetrics,
    threads: usize,
    limits: Arc<Limits>,
}

/// The query threads; shut down without blocking when the last engine using them goes
/// (dropping a runtime blocks, which is not allowed inside another runtime).
struct QueryRuntime(Option<tokio::runtime::Runtime>);

impl Drop for QueryRuntime {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Aborts a task when dropped: a query whose client went away stops instead of running on.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for AbortOnDrop<T> {
    type Output = std::result::Result<T, tokio::task::JoinError>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx)
    }
}

/// Stack of each query thread. Expressions are refused beyond `max_query_depth` before they
/// are evaluated, so their recursion stays far inside this.
const QUERY_THREAD_STACK_BYTES: usize = 8 << 20;

/// Lowers the calling thread's CPU priority (Linux schedules each thread on its own).
///
/// `SCHED_IDLE` (`thread_policy: idle`) rather than only a high nice value: under Linux's EEVDF
/// scheduler a waking nice-0 thread can still wait for a nice-19 thread's slice to end, while it
/// always preempts an idle-class one at once. Threads the query threads start (the PromQL file
/// readers) inherit the class.
// The one FFI call of the crate: neither rustix nor std wraps sched_setscheduler.
#[allow(unsafe_code)]
fn lower_thread_priority(policy: ThreadPolicy, nice: i32) {
    match policy {
        ThreadPolicy::Idle => {
            let param = libc::sched_param { sched_priority: 0 };
            // SAFETY: `param` is a valid sched_param for the duration of the call; pid 0 is
            // the calling thread.
            let status = unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) };
            if status != 0 {
                let error = std::io::Error::last_os_error();
                debug!(%error, "cannot move a query thread to SCHED_IDLE; lowering its nice value");
                lower_thread_priority(ThreadPolicy::Normal, 19);
            }
        }
        ThreadPolicy::Normal if nice == 0 => {}
        ThreadPolicy::Normal => {
            let thread = rustix::thread::gettid();
            if let Err(error) = rustix::process::setpriority_process(Some(thread), nice) {
                debug!(%error, nice, "cannot lower the priority of a query thread");
            }
        }
    }
}

/// The spill directory: configured, or `spill` in the data dir. Files a previous process left
/// there are removed; DataFusion creates its own temporary directories inside.
fn spill_dir(config: &QueryConfig, store: &Store) -> Result<PathBuf> {
    let dir = config.spill_dir.clone().unwrap_or_else(|| store.config().data_dir.join("spill"));
    let task =
        |what: &str, e: std::io::Error| Error::Task(format!("{what} the spill directory {}: {e}", dir.display()));
    if dir.exists() {
        for entry in std::fs::read_dir(&dir).map_err(|e| task("reading", e))? {
            let path = entry.map_err(|e| task("reading", e))?.path();
            let removed = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
            if let Err(error) = removed {
                warn!(%error, path = %path.display(), "cannot remove an old spill file");
            }
        }
    }
    std::fs::create_dir_all(&dir).map_err(|e| task("creating", e))?;
    Ok(dir)
}

/// Registers the functions and the tables over `store` in a session.
fn tables_over(store: &Arc<Store>, context: SessionContext) -> Result<SessionContext> {
    context.register_udf(TextFunction::matches());
    context.register_udf(TextFunction::contains_text());
    for signal in Signal::ALL {
        context.register_table(signal.table_name(), Arc::new(WakeTable::new(store.clone(), signal)))?;
    }
    context.register_table(
        crate::inventory::table::TABLE_NAME,
        Arc::new(crate::inventory::ContainersTable::new(store.clone())),
    )?;
    Ok(context)
}

impl QueryEngine {
    pub fn new(store: Arc<Store>, registry: &Registry) -> Result<Self> {
        Self::with_config(store, QueryConfig::default(), registry)
    }

    pub fn with_config(store: Arc<Store>, config: QueryConfig, registry: &Registry) -> Result<Self> {
        config.validate().map_err(|e| Error::Task(e.to_string()))?;
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
        // Every operator that can spill (sorts, aggregations, joins) gets a fair share of the
        // pool and spills beyond it; the pool names its largest consumers when it runs out.
        let pool = FairSpillPool::new(config.memory_limit_bytes);
        let pool = TrackConsumersPool::new(pool, NonZeroUsize::new(5).unwrap_or(NonZeroUsize::MIN));
        let runtime_env = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(pool))
            .with_temp_file_path(spill_dir(&config, &store)?)
            .with_max_temp_directory_size(config.max_spill_bytes)
            .build_arc()?;
        let context = tables_over(&store, SessionContext::new_with_config_rt(session, runtime_env))?;
        let (policy, nice) = (config.thread_policy, config.thread_nice);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("wake-query")
            .thread_stack_size(QUERY_THREAD_STACK_BYTES)
            .on_thread_start(move || lower_thread_priority(policy, nice))
            .enable_all()
            .build()
            .map_err(|e| Error::Task(format!("starting the query runtime: {e}")))?;
        let limits = Arc::new(Limits::new(config, registry)?);
        Ok(QueryEngine {
            store,
            context,
            runtime: Arc::new(QueryRuntime(Some(runtime))),
            metrics: QueryMetrics::new(registry)?,
            threads,
            limits,
        })
    }

    /// The engine of another tenant: its tables read only `store` (that tenant's), and its
    /// limits are `limits` applied to this engine's; the query threads, the memory pool, the
    /// spill space and the admission queues are this engine's, shared.
    pub fn for_tenant(&self, tenant: &str, store: Arc<Store>, limits: &QueryLimitOverrides) -> Result<QueryEngine> {
        let config = limits.apply(self.config());
        config.validate().map_err(|e| Error::Task(format!("tenant {tenant:?}: {e}")))?;
        let context = tables_over(
            &store,
            SessionContext::new_with_config_rt(self.context.copied_config(), self.context.runtime_env()),
        )?;
        Ok(QueryEngine {
            store,
            context,
            runtime: self.runtime.clone(),
            metrics: self.metrics.clone(),
            threads: self.threads,
            limits: Arc::new(self.limits.for_tenant(tenant, config)),
        })
    }

    /// The tenant whose data this engine reads.
    pub fn tenant(&self) -> &str {
        self.limits.tenant()
    }

    /// The limits and admission of every query API.
    pub fn limits(&self) -> &Arc<Limits> {
        &self.limits
    }

    pub fn config(&self) -> &QueryConfig {
        self.limits.config()
    }

    /// Runs one client request of `api` (`query` is its text, for the limits and the logs):
    /// waits for its turn ([`Limits::admit`]), then runs `work` on the query runtime within
    /// `query.timeout_secs`. When the caller is dropped (its client hung up), the work is
    /// aborted with it.
    pub async fn run_request<T: Send + 'static>(
        &self,
        api: Api,
        query: &str,
        work: impl Future<Output = Result<T>> + Send + 'static,
    ) -> Result<T> {
        let mut admitted: Admitted = self.limits.admit(api, query).await?;
        let timeout = self.config().timeout();
        let result = match &self.runtime.0 {
            Some(runtime) => match AbortOnDrop(runtime.spawn(tokio::time::timeout(timeout, work))).await {
                Ok(Ok(result)) => result,
                Ok(Err(_elapsed)) => Err(Error::Timeout(timeout)),
                Err(error) => Err(Error::Task(error.to_string())),
            },
            None => Err(Error::Task("the query engine is shut down".into())),
        };
        admitted.finish(&result);
        result
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

    /// Runs one read-only SQL statement and collects its answer, which may hold at most
    /// `query.max_result_rows` rows.
    pub async fn sql(&self, sql: &str) -> Result<QueryOutput> {
        let max_rows = self.config().max_result_rows;
        let collected = self
            .sql_each(
                sql,
                |schema| Ok(QueryOutput { schema: schema.clone(), batches: Vec::new() }),
                move |output, batch| {
                    if output.num_rows().saturating_add(batch.num_rows()) > max_rows {
                        return Err(Error::Limit {
                            limit: "max_result_rows",
                            message: format!(
                                "the query's answer has more than {max_rows} rows (query.max_result_rows)"
                            ),
                        });
                    }
                    output.batches.push(batch.clone());
                    Ok(true)
                },
            )
            .await?;
        debug!(rows = collected.num_rows(), "query");
        Ok(collected)
    }

    /// Runs a query future on the query runtime and counts it in the self-metrics.
    async fn run_measured<T: Send + 'static>(
        &self,
        run: impl Future<Output = Result<T>> + Send + 'static,
        sql: &str,
        started: Instant,
    ) -> Result<T> {
        let result = match &self.runtime.0 {
            Some(runtime) => AbortOnDrop(runtime.spawn(run)).await.unwrap_or_else(|e| Err(Error::Task(e.to_string()))),
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
    /// Parses and plans `sql` through the same sandbox as every query (depth limit, read-only
    /// check, physical planning), without running it: for validating SQL (rule files, fuzzing).
    pub async fn plan_sql(&self, sql: &str) -> Result<()> {
        let context = self.context.clone();
        let sql_text = sql.to_string();
        let max_depth = self.config().max_query_depth;
        let run = async move {
            let frame = read_only_frame(&context, &sql_text, max_depth).await?;
            frame.create_physical_plan().await?;
            Ok::<_, Error>(())
        };
        self.run_measured(run, sql, Instant::now()).await
    }

    /// Runs one read-only SQL statement and hands its result batches, as they are produced, to
    /// `on_batch` with `state`, until it returns `false` (the rest of the query is then
    /// cancelled). For query languages that stop early, like LogQL with a line limit.
    pub async fn sql_fold<S, F>(&self, sql: &str, state: S, mut on_batch: F) -> Result<S>
    where
        S: Send + 'static,
        F: FnMut(&mut S, &RecordBatch) -> bool + Send + 'static,
    {
        self.sql_each(sql, move |_| Ok(state), move |state, batch| Ok(on_batch(state, batch))).await
    }

    /// Runs one read-only SQL statement: `start` makes a state from the answer's schema, and
    /// `on_batch` takes each batch as it is produced, until it returns `Ok(false)` or an error
    /// (the rest of the query is then cancelled, its stream dropped).
    pub async fn sql_each<S, I, F>(&self, sql: &str, start: I, mut on_batch: F) -> Result<S>
    where
        S: Send + 'static,
        I: FnOnce(&SchemaRef) -> Result<S> + Send + 'static,
        F: FnMut(&mut S, &RecordBatch) -> Result<bool> + Send + 'static,
    {
        let started = Instant::now();
        let context = self.context.clone();
        let sql_text = sql.to_string();
        let max_depth = self.config().max_query_depth;
        let run = async move {
            let frame = read_only_frame(&context, &sql_text, max_depth).await?;
            let schema = Arc::new(frame.schema().as_arrow().clone());
            let mut state = start(&schema)?;
            let mut stream = frame.execute_stream().await?;
            while let Some(batch) = futures::StreamExt::next(&mut stream).await {
                if !on_batch(&mut state, &batch?)? {
                    break;
                }
            }
            Ok::<_, Error>(state)
        };
        self.run_measured(run, sql, started).await
    }
}

/// Parses `sql` within the depth limit ([`crate::depth`]), plans it, and refuses anything but a
/// read-only query.
async fn read_only_frame(
    context: &SessionContext,
    sql: &str,
    max_depth: usize,
) -> Result<datafusion::dataframe::DataFrame> {
    let state = context.state();
    let dialect = state.config().options().sql_parser.dialect;
    let parse = |text: &str| state.sql_to_statement(text, &dialect);
    let statement =
        crate::depth::parse_guarded(sql, max_depth, parse, crate::depth::sql_depth).map_err(|error| match error {
            crate::depth::DepthError::TooDeep { .. } => {
                Error::Limit { limit: "max_query_depth", message: error.to_string() }
            }
            crate::depth::DepthError::Parse(message) => Error::BadRequest(message),
        })?;
    let plan = state.statement_to_plan(statement).await?;
    ensure_read_only(&plan)?;
    Ok(context.execute_logical_plan(plan).await?)
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
    async fn sql_is_planned_through_the_sandbox_without_running() {
        let (_dir, engine) = engine();
        engine.plan_sql("SELECT count(*) FROM generate_series(1, 1000000000000000)").await.expect("plans at once");
        assert!(matches!(engine.plan_sql("DROP TABLE logs").await, Err(Error::ReadOnly(_))));
        let chain = format!("SELECT 1 WHERE {}", vec!["1 = 1"; 5_000].join(" AND "));
        assert!(matches!(engine.plan_sql(&chain).await, Err(Error::Limit { limit: "max_query_depth", .. })));
    }

    /// The scheduling policy of the calling thread (field 41 of `/proc/thread-self/stat`).
    fn thread_policy() -> u32 {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("stat");
        let after_name = &stat[stat.rfind(')').expect("comm") + 2..];
        after_name.split(' ').nth(41 - 3).expect("policy field").parse().expect("number")
    }

    #[tokio::test]
    async fn query_threads_run_in_the_configured_class_and_ingest_does_not() {
        for (policy, expected) in [(ThreadPolicy::Idle, libc::SCHED_IDLE), (ThreadPolicy::Normal, libc::SCHED_OTHER)] {
            let dir = tempfile::tempdir().expect("tempdir");
            let config = StoreConfig { data_dir: dir.path().to_path_buf(), ..StoreConfig::default() };
            let registry = Registry::new();
            let store = Store::open(config, &registry).expect("store");
            let query = QueryConfig { thread_policy: policy, ..QueryConfig::default() };
            let engine = QueryEngine::with_config(store, query, &registry).expect("engine");
            assert_eq!(thread_policy(), 0, "the caller (as ingest) stays SCHED_OTHER");
            let on_runtime = engine.run_request(Api::Sql, "policy", async { Ok(thread_policy()) }).await.expect("run");
            let on_blocking = engine.run_blocking("policy", || Ok(thread_policy())).await.expect("run");
            let expected = u32::try_from(expected).expect("small");
            assert_eq!((on_runtime, on_blocking), (expected, expected), "{policy:?}");
        }
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
