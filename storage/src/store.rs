//! The store: accepts OTLP requests durably, buffers their rows, flushes them to Parquet,
//! compacts small files, and hands consistent snapshots to queries.
//!
//! Life of a request: convert to Arrow (so bad records are known before anything is written)
//! → append to the WAL and wait for its group fsync → the WAL thread puts the rows in the
//! signal's buffer → acknowledge. A background task flushes a buffer when it is old or large
//! enough, records in the manifest that the signal is in Parquet up to the last flushed
//! sequence number, and only then drops those rows from memory and lets the WAL forget them.
//! A query's snapshot is taken under the same lock, so a row is seen either in the buffer or
//! in a file, never both and never neither.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use parking_lot::Mutex;
use prost::Message;
use tracing::{debug, error, info, warn};

use crate::catalog::{Catalog, DataFile};
use crate::compaction;
use crate::config::StoreConfig;
use crate::convert::{self, Converted};
use crate::error::{Error, Result};
use crate::inventory::{self, Inventory};
use crate::metrics::StorageMetrics;
use crate::retention;
use crate::schema::Signal;
use crate::spanmetrics::SpanMetricsRecorder;
use crate::wal::{self, DurableRecord, Wal};
use crate::writer;

/// What one pass of retention and the disk bound removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RetentionOutcome {
    /// Files dropped or rewritten.
    pub files: u64,
    pub bytes: u64,
    pub rows: u64,
}

/// A decoded OTLP export request of any signal.
#[derive(Debug, Clone)]
pub enum OtlpRequest {
    Logs(ExportLogsServiceRequest),
    Metrics(ExportMetricsServiceRequest),
    Traces(ExportTraceServiceRequest),
}

/// How much larger than `max_request_bytes` a request's converted rows may be.
const MAX_EXPANSION: usize = 8;

impl OtlpRequest {
    pub fn signal(&self) -> Signal {
        match self {
            OtlpRequest::Logs(_) => Signal::Logs,
            OtlpRequest::Metrics(_) => Signal::Metrics,
            OtlpRequest::Traces(_) => Signal::Spans,
        }
    }

    pub fn decode_protobuf(signal: Signal, bytes: &[u8]) -> Result<OtlpRequest> {
        let invalid = |e: prost::DecodeError| Error::InvalidRequest(format!("malformed OTLP protobuf: {e}"));
        Ok(match signal {
            Signal::Logs => OtlpRequest::Logs(ExportLogsServiceRequest::decode(bytes).map_err(invalid)?),
            Signal::Metrics => OtlpRequest::Metrics(ExportMetricsServiceRequest::decode(bytes).map_err(invalid)?),
            Signal::Spans => OtlpRequest::Traces(ExportTraceServiceRequest::decode(bytes).map_err(invalid)?),
        })
    }

    pub fn decode_json(signal: Signal, bytes: &[u8]) -> Result<OtlpRequest> {
        let invalid = |e: serde_json::Error| Error::InvalidRequest(format!("malformed OTLP/JSON: {e}"));
        Ok(match signal {
            Signal::Logs => OtlpRequest::Logs(serde_json::from_slice(bytes).map_err(invalid)?),
            Signal::Metrics => OtlpRequest::Metrics(serde_json::from_slice(bytes).map_err(invalid)?),
            Signal::Spans => OtlpRequest::Traces(serde_json::from_slice(bytes).map_err(invalid)?),
        })
    }

    /// The request's protobuf size, without encoding it.
    pub fn encoded_len(&self) -> usize {
        match self {
            OtlpRequest::Logs(request) => request.encoded_len(),
            OtlpRequest::Metrics(request) => request.encoded_len(),
            OtlpRequest::Traces(request) => request.encoded_len(),
        }
    }

    fn encode_protobuf(&self) -> Vec<u8> {
        match self {
            OtlpRequest::Logs(request) => request.encode_to_vec(),
            OtlpRequest::Metrics(request) => request.encode_to_vec(),
            OtlpRequest::Traces(request) => request.encode_to_vec(),
        }
    }

    /// About how many bytes the request's rows take once converted: every record carries its
    /// resource's and scope's attributes (and a data point its metric's name, description and
    /// unit), so a small request of many records under one large resource expands far beyond
    /// its own size. Counted from the encoded sizes, without converting anything.
    pub fn converted_bytes(&self) -> usize {
        use opentelemetry_proto::tonic::metrics::v1::metric::Data;
        let shared =
            |resource: usize, scope: usize, records: usize| records.saturating_mul(resource.saturating_add(scope));
        let mut total = 0usize;
        match self {
            OtlpRequest::Logs(request) => {
                for resource in &request.resource_logs {
                    let resource_bytes = resource.resource.as_ref().map_or(0, Message::encoded_len);
                    for scope in &resource.scope_logs {
                        let scope_bytes = scope.scope.as_ref().map_or(0, Message::encoded_len);
                        total = total.saturating_add(shared(resource_bytes, scope_bytes, scope.log_records.len()));
                        total = total.saturating_add(scope.log_records.iter().map(Message::encoded_len).sum());
                    }
                }
            }
            OtlpRequest::Traces(request) => {
                for resource in &request.resource_spans {
                    let resource_bytes = resource.resource.as_ref().map_or(0, Message::encoded_len);
                    for scope in &resource.scope_spans {
                        let scope_bytes = scope.scope.as_ref().map_or(0, Message::encoded_len);
                        total = total.saturating_add(shared(resource_bytes, scope_bytes, scope.spans.len()));
                        total = total.saturating_add(scope.spans.iter().map(Message::encoded_len).sum());
                    }
                }
            }
            OtlpRequest::Metrics(request) => {
                for resource in &request.resource_metrics {
                    let resource_bytes = resource.resource.as_ref().map_or(0, Message::encoded_len);
                    for scope in &resource.scope_metrics {
                        let scope_bytes = scope.scope.as_ref().map_or(0, Message::encoded_len);
                        for metric in &scope.metrics {
                            let points = match &metric.data {
                                None => 0,
                                Some(Data::Gauge(g)) => g.data_points.len(),
                                Some(Data::Sum(s)) => s.data_points.len(),
                                Some(Data::Histogram(h)) => h.data_points.len(),
                                Some(Data::ExponentialHistogram(e)) => e.data_points.len(),
                                Some(Data::Summary(s)) => s.data_points.len(),
                            };
                            let metric_bytes = metric.name.len() + metric.description.len() + metric.unit.len();
                            total = total.saturating_add(shared(resource_bytes, scope_bytes + metric_bytes, points));
                            total = total.saturating_add(metric.encoded_len());
                        }
                    }
                }
            }
        }
        total
    }

    /// The request's rows, those outside `window` around `received_at_ns` refused.
    pub fn convert(&self, received_at_ns: i64, window: convert::TimeWindow) -> Result<Converted> {
        let converted = match self {
            OtlpRequest::Logs(request) => convert::logs_to_batch(request, received_at_ns),
            OtlpRequest::Metrics(request) => convert::metrics_to_batch(request, received_at_ns),
            OtlpRequest::Traces(request) => convert::spans_to_batch(request),
        }?;
        let mut converted = convert::keep_within(converted, self.signal(), window, received_at_ns)?;
        converted.batch = convert::shrink_to_fit(converted.batch)?;
        Ok(converted)
    }
}

/// What happened to an accepted request's records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestOutcome {
    pub accepted: u64,
    pub rejected: u64,
    pub error_message: String,
}

/// A consistent view of one table for one query.
#[derive(Debug, Clone)]
pub struct TableSnapshot {
    pub signal: Signal,
    /// Holding these keeps the files on disk even if compaction replaces them meanwhile.
    pub files: Vec<Arc<DataFile>>,
    /// Acknowledged rows not yet in Parquet.
    pub buffered: Vec<RecordBatch>,
}

struct Buffered {
    seq: u64,
    batch: RecordBatch,
    bytes: usize,
}

#[derive(Default)]
struct SignalBuffer {
    entries: Vec<Buffered>,
    bytes: usize,
    oldest: Option<Instant>,
}

impl SignalBuffer {
    fn push(&mut self, seq: u64, batch: RecordBatch) {
        let bytes = batch.get_array_memory_size();
        self.bytes += bytes;
        self.oldest.get_or_insert_with(Instant::now);
        self.entries.push(Buffered { seq, batch, bytes });
    }

    fn drop_through(&mut self, seq: u64) {
        self.entries.retain(|entry| entry.seq > seq);
        self.bytes = self.entries.iter().map(|entry| entry.bytes).sum();
        if self.entries.is_empty() {
            self.oldest = None;
        }
    }
}

struct State {
    buffers: [SignalBuffer; 3],
    catalog: Catalog,
}

fn slot(signal: Signal) -> usize {
    match signal {
        Signal::Logs => 0,
        Signal::Metrics => 1,
        Signal::Spans => 2,
    }
}

pub struct Store {
    config: StoreConfig,
    state: Arc<Mutex<State>>,
    wal: Wal,
    metrics: StorageMetrics,
    shutting_down: AtomicBool,
    /// Flushes run one at a time...
    flushing: tokio::sync::Mutex<()>,
    /// ...and so do compactions, beside them: a day merge can take a minute, and a flush that
    /// waited for it let the buffers grow to their bound and then wrote them all at once.
    compacting: tokio::sync::Mutex<()>,
    /// Held from taking a catalog change to applying it, so that changes reach the manifest
    /// log in the order they are applied. A flush only adds files and a compaction only
    /// replaces files it chose, which no flush touches: each change stays valid whatever the
    /// other committed since it was planned.
    committing: tokio::sync::Mutex<()>,
    next_file_id: AtomicU64,
    /// Span metrics from the spans ingested; `None` when `span_metrics.enabled` is false.
    span_metrics: Option<SpanMetricsRecorder>,
    /// The `containers` table, from the lifecycle events among the logs.
    inventory: Arc<Inventory>,
    /// For each retention override and file: the cutoff up to which the file holds no row the
    /// override removes, so that a pass reads again only the files the cutoff moved into.
    retention_cleaned: Mutex<std::collections::HashMap<(usize, std::path::PathBuf), i64>>,
    /// The ingestion rate limit (`ingestion_rate_bytes`).
    ingestion_bucket: Mutex<crate::rate::TokenBucket>,
    /// The bound on the bytes of all files: `retention.max_disk_bytes`, or this tenant's share
    /// of it when several tenants share the data dir (see [`crate::tenants`]). 0: no bound.
    disk_bound: AtomicU64,
    /// The deletion requests (`deletes.json`); held while one is recorded or executed.
    deletes: tokio::sync::Mutex<crate::deletion::DeleteLog>,
    next_request_id: AtomicU64,
    /// Held open, never read: see [`lock_data_dir`].
    _data_dir_lock: std::fs::File,
}

pub use wake_collector::time::now_ns;

/// Takes the exclusive lock of the data dir for as long as the returned file is open (the
/// kernel releases it when the process dies, however it dies). Two stores on one directory
/// would each delete files the other's manifest names.
pub(crate) fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File> {
    let path = data_dir.join(".lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(Error::DataDirLocked(data_dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(error)) => Err(Error::io(&path, error)),
    }
}

impl Store {
    /// Opens the data dir: loads the catalog, replays the WAL into the buffers, and starts the
    /// WAL thread. Call [`Store::start_background`] from within a tokio runtime afterwards.
    pub fn open(mut config: StoreConfig, registry: &prometheus::Registry) -> Result<Arc<Store>> {
        config.validate()?;
        // Queries address files by absolute paths (object-store URLs): a relative data dir
        // (`--data-dir data`) is made absolute once, here.
        config.data_dir = std::path::absolute(&config.data_dir).map_err(|e| Error::io(&config.data_dir, e))?;
        let data_dir = config.data_dir.clone();
        std::fs::create_dir_all(&data_dir).map_err(|e| Error::io(&data_dir, e))?;
        let data_dir_lock = lock_data_dir(&data_dir)?;
        let metrics = StorageMetrics::new(registry)?;
        let catalog = Catalog::open(&data_dir)?;

        let wal_dir = data_dir.join("wal");
        let records = wal::replay(&wal_dir)?;
        let mut state = State { buffers: Default::default(), catalog };
        let mut max_seq = state.catalog.max_flushed_seq();
        let mut replayed = 0u64;
        for record in records {
            max_seq = max_seq.max(record.seq);
            if record.seq <= state.catalog.flushed_seq(record.signal) {
                continue;
            }
            let request = OtlpRequest::decode_protobuf(record.signal, &record.payload)
                .map_err(|e| Error::WalCorrupt { path: wal_dir.clone(), offset: record.seq, reason: e.to_string() })?;
            let converted = request.convert(record.received_at_ns, config.time_window())?;
            replayed += converted.accepted();
            state.buffers[slot(record.signal)].push(record.seq, converted.batch);
        }
        for signal in Signal::ALL {
            let files = state.catalog.files(signal);
            metrics.files.with_label_values(&[signal.table_name()]).set(files.len() as i64);
            metrics
                .stored_bytes
                .with_label_values(&[signal.table_name()])
                .set(files.iter().map(|f| f.size_bytes + f.index_bytes).sum::<u64>() as i64);
            metrics
                .buffered_bytes
                .with_label_values(&[signal.table_name()])
                .set(state.buffers[slot(signal)].bytes as i64);
        }
        info!(data_dir = %data_dir.display(), replayed_rows = replayed, next_seq = max_seq + 1, "store opened");

        let state = Arc::new(Mutex::new(state));
        let sink_state = state.clone();
        let sink_metrics = metrics.clone();
        let sink = Box::new(move |records: Vec<DurableRecord>| {
            let mut state = sink_state.lock();
            for record in records {
                let buffer = &mut state.buffers[slot(record.signal)];
                buffer.push(record.seq, record.batch);
                sink_metrics.buffered_bytes.with_label_values(&[record.signal.table_name()]).set(buffer.bytes as i64);
            }
        });
        let inventory = Arc::new(Inventory::open(&data_dir, config.inventory.clone(), metrics.inventory.clone())?);
        let wal = Wal::start(&wal_dir, max_seq + 1, metrics.wal.clone(), sink)?;
        let span_metrics = SpanMetricsRecorder::new(&config.span_metrics, registry)?;
        let ingestion_bucket = Mutex::new(crate::rate::TokenBucket::new(
            config.ingestion_rate_bytes,
            config.ingestion_burst(),
            Instant::now(),
        ));
        let disk_bound = AtomicU64::new(config.retention.max_disk_bytes);
        let deletes = tokio::sync::Mutex::new(crate::deletion::DeleteLog::load(&data_dir)?);
        Ok(Arc::new(Store {
            config,
            state,
            wal,
            metrics,
            shutting_down: AtomicBool::new(false),
            flushing: tokio::sync::Mutex::new(()),
            compacting: tokio::sync::Mutex::new(()),
            committing: tokio::sync::Mutex::new(()),
            next_file_id: AtomicU64::new(0),
            span_metrics,
            inventory,
            retention_cleaned: Mutex::default(),
            ingestion_bucket,
            disk_bound,
            deletes,
            next_request_id: AtomicU64::new(0),
            _data_dir_lock: data_dir_lock,
        }))
    }

    pub fn config(&self) -> &StoreConfig {
        &self.config
    }

    pub fn data_dir(&self) -> &Path {
        &self.config.data_dir
    }

    pub fn metrics(&self) -> &StorageMetrics {
        &self.metrics
    }

    /// The container inventory (the `containers` table).
    pub fn inventory(&self) -> &Arc<Inventory> {
        &self.inventory
    }

    /// Makes the request's valid records durable and visible, then returns what was accepted.
    /// `raw_protobuf` is the request's own protobuf encoding when the caller has it, which
    /// saves encoding it again for the WAL.
    pub async fn ingest(&self, request: OtlpRequest, raw_protobuf: Option<Bytes>) -> Result<IngestOutcome> {
        let signal = request.signal();
        if self.shutting_down.load(Ordering::SeqCst) {
            return Err(Error::ShuttingDown);
        }
        let buffered_bytes = self.buffered_bytes();
        if buffered_bytes > self.config.max_buffered_bytes {
            return Err(Error::Backpressure { buffered_bytes });
        }
        self.check_free_space()?;
        let request_bytes = raw_protobuf.as_ref().map_or_else(|| request.encoded_len(), Bytes::len) as u64;
        if !self.ingestion_bucket.lock().try_take(request_bytes, Instant::now()) {
            self.metrics.rate_limited.with_label_values(&[signal.table_name()]).inc();
            return Err(Error::RateLimited {
                rate_bytes: self.config.ingestion_rate_bytes,
                burst_bytes: self.config.ingestion_burst(),
            });
        }
        // A request whose rows would take far more memory than its bytes is refused before it
        // is converted (128 KB of records under one 64 KB resource attribute would be 2 GB).
        let converted_limit = self.config.max_request_bytes.saturating_mul(MAX_EXPANSION);
        let converted_bytes = request.converted_bytes();
        if converted_bytes > converted_limit {
            return Err(Error::RowsTooLarge { limit_bytes: converted_limit, actual_bytes: converted_bytes });
        }

        // Lifecycle events go to the inventory, durable before the rest of the request is: a
        // retry after a failure below merges them again, to the same rows.
        let mut request = request;
        let mut raw_protobuf = raw_protobuf;
        if let OtlpRequest::Logs(logs) = &mut request {
            let events = inventory::event::take_events(logs);
            if !events.is_empty() {
                raw_protobuf = None;
                let inventory = self.inventory.clone();
                tokio::task::spawn_blocking(move || inventory.apply(events))
                    .await
                    .map_err(|e| Error::Internal(format!("inventory task failed: {e}")))??;
            }
        }
        let received_at_ns = now_ns();
        let window = self.config.time_window();
        let (converted, payload, request) =
            tokio::task::spawn_blocking(move || -> Result<(Converted, Bytes, OtlpRequest)> {
                let converted = request.convert(received_at_ns, window)?;
                let payload = match raw_protobuf {
                    Some(raw) => raw,
                    None if converted.accepted() > 0 => Bytes::from(request.encode_protobuf()),
                    None => Bytes::new(),
                };
                Ok((converted, payload, request))
            })
            .await
            .map_err(|e| Error::Internal(format!("conversion task failed: {e}")))??;

        let outcome = IngestOutcome {
            accepted: converted.accepted(),
            rejected: converted.rejected,
            error_message: converted.error_message,
        };
        let label = [signal.table_name()];
        if outcome.accepted > 0 {
            let payload_len = payload.len() as u64;
            self.wal.append(signal, received_at_ns, payload, converted.batch).await?;
            // Only what is durable is counted; rejected spans of the request are counted too,
            // as Tempo's generator sees every span the distributor received.
            match request {
                OtlpRequest::Traces(request) => {
                    if let Some(span_metrics) = &self.span_metrics {
                        span_metrics.observe(request);
                    }
                }
                OtlpRequest::Metrics(request) => {
                    self.inventory.heartbeat(&inventory::event::metric_container_ids(&request), received_at_ns);
                }
                OtlpRequest::Logs(_) => {}
            }
            self.metrics.records_ingested.with_label_values(&label).inc_by(outcome.accepted);
            self.metrics.bytes_ingested.with_label_values(&label).inc_by(payload_len);
        }
        if outcome.rejected > 0 {
            self.metrics.records_rejected.with_label_values(&label).inc_by(outcome.rejected);
            debug!(%signal, rejected = outcome.rejected, reason = %outcome.error_message, "rejected records");
        }
        Ok(outcome)
    }

    fn buffered_bytes(&self) -> usize {
        self.state.lock().buffers.iter().map(|buffer| buffer.bytes).sum()
    }

    fn check_free_space(&self) -> Result<()> {
        let path = &self.config.data_dir;
        let stats = rustix::fs::statvfs(path.as_path()).map_err(|e| Error::io(path, e.into()))?;
        let available_bytes = stats.f_bavail.saturating_mul(stats.f_frsize);
        if available_bytes < self.config.min_free_disk_bytes {
            return Err(Error::DiskFull {
                path: path.clone(),
                available_bytes,
                required_bytes: self.config.min_free_disk_bytes,
            });
        }
        Ok(())
    }

    /// A consistent view of a table: its files and its buffered rows.
    pub fn snapshot(&self, signal: Signal) -> TableSnapshot {
        let state = self.state.lock();
        TableSnapshot {
            signal,
            files: state.catalog.files(signal).to_vec(),
            buffered: state.buffers[slot(signal)].entries.iter().map(|entry| entry.batch.clone()).collect(),
        }
    }

    /// Runs flushes and compactions until the store shuts down: two loops side by side, so
    /// that a long merge never holds up a flush (aborting the task stops both).
    pub fn start_background(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let (flusher, compactor) = (self.clone(), self.clone());
        let flushes = async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !flusher.shutting_down.load(Ordering::SeqCst) {
                tick.tick().await;
                for signal in Signal::ALL {
                    if flusher.flush_due(signal)
                        && let Err(error) = flusher.flush(signal).await
                    {
                        // The rows stay buffered (and in the WAL): the next tick tries again.
                        warn!(%signal, %error, "flush failed; will retry");
                    }
                }
            }
        };
        let compactions = async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            while !compactor.shutting_down.load(Ordering::SeqCst) {
                tick.tick().await;
                for signal in Signal::ALL {
                    if let Err(error) = compactor.compact(signal).await {
                        warn!(%signal, %error, "compaction failed; will retry");
                    }
                }
            }
        };
        let recorder = self.clone();
        let span_metrics = async move {
            let Some(span_metrics) = &recorder.span_metrics else { return };
            let mut tick = tokio::time::interval(span_metrics.interval());
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            while !recorder.shutting_down.load(Ordering::SeqCst) {
                tick.tick().await;
                let written = match span_metrics.collect().await {
                    Ok(Some(request)) => recorder.ingest(OtlpRequest::Metrics(request), None).await.map(|_| ()),
                    Ok(None) => Ok(()),
                    Err(error) => Err(error),
                };
                if let Err(error) = written {
                    // Counters are cumulative: the next collection carries what this one lost.
                    warn!(%error, "writing span metrics failed; will retry");
                }
            }
        };
        let keeper = self.clone();
        let inventory = async move {
            let mut tick = tokio::time::interval(inventory::HEARTBEAT_PERSIST_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            while !keeper.shutting_down.load(Ordering::SeqCst) {
                tick.tick().await;
                keeper.persist_inventory().await;
            }
        };
        let writer = self.clone();
        let kube_state_metrics = async move {
            let seconds = writer.inventory.config().kube_state_metrics_interval_secs;
            if seconds == 0 {
                return;
            }
            let mut tick = tokio::time::interval(Duration::from_secs(seconds));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            while !writer.shutting_down.load(Ordering::SeqCst) {
                tick.tick().await;
                if let Some(request) = writer.inventory.kube_state_metrics(now_ns())
                    && let Err(error) = writer.ingest(OtlpRequest::Metrics(request), None).await
                {
                    // The next tick writes the state as it is then.
                    warn!(%error, "writing kube-state-metrics series failed");
                }
            }
        };
        let keeper = self.clone();
        let retention = async move {
            let mut tick = tokio::time::interval(Duration::from_secs(keeper.config.retention.interval_secs));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            while !keeper.shutting_down.load(Ordering::SeqCst) {
                tick.tick().await;
                // Deletion requests a crash or a failure left unfinished, first.
                if let Err(error) = keeper.process_deletes().await {
                    warn!(%error, "executing deletion requests failed; will retry");
                }
                if let Err(error) = keeper.apply_retention().await {
                    warn!(%error, "retention failed; will retry");
                }
            }
        };
        tokio::spawn(async move {
            tokio::join!(flushes, compactions, span_metrics, inventory, kube_state_metrics, retention);
        })
    }

    fn flush_due(&self, signal: Signal) -> bool {
        let state = self.state.lock();
        let buffer = &state.buffers[slot(signal)];
        buffer.bytes >= self.config.flush_max_bytes
            || buffer
                .oldest
                .is_some_and(|oldest| oldest.elapsed() >= Duration::from_secs(self.config.flush_interval_secs))
    }

    fn file_name(&self, kind: &str) -> String {
        format!("{}-{kind}-{}", now_ns(), self.next_file_id.fetch_add(1, Ordering::Relaxed))
    }

    /// Writes a signal's buffered rows to Parquet and drops them from memory and the WAL: all
    /// that was buffered when the call began, in pieces of about `flush_max_bytes`. Writing
    /// concatenates, partitions and sorts the rows, copies of a piece's size each, so the
    /// pieces bound what a flush holds beside the buffers (one flush of a 1.1 GB buffer took the
    /// server from 1.4 to 3.9 GB).
    pub async fn flush(&self, signal: Signal) -> Result<()> {
        let _flushing = self.flushing.lock().await;
        let Some(last_seq) = self.state.lock().buffers[slot(signal)].entries.last().map(|entry| entry.seq) else {
            return Ok(());
        };
        loop {
            let piece = {
                let state = self.state.lock();
                let mut bytes = 0usize;
                let mut piece = Vec::new();
                for entry in state.buffers[slot(signal)].entries.iter().take_while(|entry| entry.seq <= last_seq) {
                    if !piece.is_empty() && bytes.saturating_add(entry.bytes) > self.config.flush_max_bytes {
                        break;
                    }
                    bytes = bytes.saturating_add(entry.bytes);
                    piece.push((entry.seq, entry.batch.clone()));
                }
                piece
            };
            let Some(&(through_seq, _)) = piece.last() else {
                return Ok(());
            };
            let batches = piece.into_iter().map(|(_, batch)| batch).collect();
            self.flush_piece(signal, batches, through_seq).await?;
            if through_seq >= last_seq {
                return Ok(());
            }
        }
    }

    /// Writes `batches`, the buffered rows of `signal` through WAL sequence `through_seq`.
    async fn flush_piece(&self, signal: Signal, batches: Vec<RecordBatch>, through_seq: u64) -> Result<()> {
        let started = Instant::now();
        let rows: usize = batches.iter().map(|batch| batch.num_rows()).sum();
        let data_dir = self.config.data_dir.clone();
        let config = self.config.clone();
        let name = self.file_name("f");
        let files =
            tokio::task::spawn_blocking(move || writer::write_partitioned(&data_dir, signal, &batches, &config, &name))
                .await
                .map_err(|e| Error::Internal(format!("flush task failed: {e}")))??;
        let file_count = files.len();
        {
            // The manifest is written and fsynced outside the state lock, which every ingest
            // and query takes.
            let _committing = self.committing.lock().await;
            let change = self.state.lock().catalog.with_flushed(signal, &files, through_seq);
            self.commit(change, &files).await?;
            let mut state = self.state.lock();
            state.catalog.apply_flushed(signal, files, through_seq);
            state.buffers[slot(signal)].drop_through(through_seq);
            self.update_gauges(&state, signal);
        }
        self.truncate_wal();
        let elapsed = started.elapsed();
        self.metrics.flush_duration.with_label_values(&[signal.table_name()]).observe(elapsed.as_secs_f64());
        info!(%signal, rows, files = file_count, through_seq, elapsed_ms = elapsed.as_millis() as u64, "flushed");
        Ok(())
    }

    fn update_gauges(&self, state: &State, signal: Signal) {
        let label = [signal.table_name()];
        let files = state.catalog.files(signal);
        self.metrics.files.with_label_values(&label).set(files.len() as i64);
        self.metrics
            .stored_bytes
            .with_label_values(&label)
            .set(files.iter().map(|f| f.size_bytes + f.index_bytes).sum::<u64>() as i64);
        self.metrics.buffered_bytes.with_label_values(&label).set(state.buffers[slot(signal)].bytes as i64);
    }

    fn truncate_wal(&self) {
        let state = self.state.lock();
        let lowest_buffered = state
            .buffers
            .iter()
            .filter_map(|buffer| buffer.entries.first().map(|entry| entry.seq))
            .min()
            .unwrap_or(u64::MAX);
        self.wal.truncate(lowest_buffered);
    }

    /// Flushes every signal.
    pub async fn flush_all(&self) -> Result<()> {
        for signal in Signal::ALL {
            self.flush(signal).await?;
        }
        Ok(())
    }

    /// Merges small files: those of each hour partition into one, and for signals without a
    /// full-text index, settled files of a day into files of several hours (see
    /// [`compaction::plan`]).
    pub async fn compact(&self, signal: Signal) -> Result<()> {
        let _compacting = self.compacting.lock().await;
        let merges = {
            let state = self.state.lock();
            compaction::plan(signal, state.catalog.files(signal), &self.config, Instant::now(), now_ns())
        };
        for merge in merges {
            let started = Instant::now();
            let data_dir = self.config.data_dir.clone();
            let config = self.config.clone();
            let name = self.file_name("c");
            let task_inputs = merge.inputs.clone();
            let into_day = merge.into_day;
            let outputs = tokio::task::spawn_blocking(move || {
                compaction::merge_files(&data_dir, signal, &task_inputs, into_day, &config, &name)
            })
            .await
            .map_err(|e| Error::Internal(format!("compaction task failed: {e}")))??;
            let inputs = merge.inputs;
            self.replace_files(signal, &inputs, outputs).await?;
            let elapsed = started.elapsed();
            self.metrics.compaction_duration.observe(elapsed.as_secs_f64());
            info!(
                %signal,
                inputs = inputs.len(),
                rows = inputs.iter().map(|f| f.num_rows).sum::<u64>(),
                into = if into_day.is_some() { "day" } else { "hour" },
                elapsed_ms = elapsed.as_millis() as u64,
                "compacted"
            );
        }
        Ok(())
    }

    /// Stops accepting requests and flushes everything buffered, so the next start replays
    /// nothing. Requests still in the WAL queue stay in the WAL and are replayed then.
    pub async fn shutdown(&self) -> Result<()> {
        self.shutting_down.store(true, Ordering::SeqCst);
        self.persist_inventory().await;
        let flushed = self.flush_all().await;
        match &flushed {
            Ok(()) => info!("store flushed and closed"),
            Err(error) => {
                error!(%error, "flush at shutdown failed; the write-ahead log keeps the rows")
            }
        }
        flushed
    }

    /// Writes the catalog as it is in memory as a new manifest checkpoint: after an open that
    /// found files the manifest names missing, so that it stops naming them.
    pub async fn rewrite_manifest(&self) -> Result<()> {
        let _committing = self.committing.lock().await;
        let change = self.state.lock().catalog.with_checkpoint();
        self.commit(change, &[]).await
    }

    /// Applies retention to every signal, then the disk bound; returns what went.
    pub async fn apply_retention(&self) -> Result<RetentionOutcome> {
        // Beside compaction, never with it: both replace files, and neither may replace a file
        // the other is rewriting.
        let _compacting = self.compacting.lock().await;
        let mut outcome = RetentionOutcome::default();
        let now = now_ns();
        for signal in Signal::ALL {
            let Some(keep) = self.config.retention.of(signal) else { continue };
            let cutoff = now.saturating_sub(i64::try_from(keep.as_nanos()).unwrap_or(i64::MAX));
            let plan = retention::plan(self.state.lock().catalog.files(signal), cutoff);
            if !plan.drop.is_empty() {
                self.remove_files(signal, plan.drop, Vec::new(), "retention", &mut outcome).await?;
            }
            for file in plan.trim {
                let (data_dir, config, name) = (self.config.data_dir.clone(), self.config.clone(), self.file_name("r"));
                let input = file.clone();
                let outputs =
                    tokio::task::spawn_blocking(move || retention::trim(&data_dir, &input, cutoff, &config, &name))
                        .await
                        .map_err(|e| Error::Internal(format!("retention task failed: {e}")))??;
                self.remove_files(signal, vec![file], outputs, "retention", &mut outcome).await?;
            }
        }
        for (index, rule) in self.config.retention.overrides.iter().enumerate() {
            for signal in Signal::ALL {
                let Some(keep) = rule.of(signal) else { continue };
                let selector = retention::RowSelector::compile(&rule.selector, signal).map_err(Error::Config)?;
                let cutoff = now.saturating_sub(i64::try_from(keep.as_nanos()).unwrap_or(i64::MAX));
                let candidates: Vec<Arc<DataFile>> = {
                    let cleaned = self.retention_cleaned.lock();
                    self.state
                        .lock()
                        .catalog
                        .files(signal)
                        .iter()
                        .filter(|file| file.min_time_ns < cutoff)
                        .filter(|file| {
                            let needed = cutoff.min(file.max_time_ns.saturating_add(1));
                            cleaned.get(&(index, file.path.clone())).is_none_or(|&done| done < needed)
                        })
                        .cloned()
                        .collect()
                };
                for file in candidates {
                    let (data_dir, config, name) =
                        (self.config.data_dir.clone(), self.config.clone(), self.file_name("o"));
                    let (input, selector) = (file.clone(), selector.clone());
                    let outputs = tokio::task::spawn_blocking(move || {
                        retention::trim_matching(&data_dir, &input, &selector, cutoff, &config, &name)
                    })
                    .await
                    .map_err(|e| Error::Internal(format!("retention task failed: {e}")))??;
                    let cleaned = |path: std::path::PathBuf| {
                        self.retention_cleaned.lock().insert((index, path), cutoff);
                    };
                    match outputs {
                        None => cleaned(file.path.clone()),
                        Some(outputs) => {
                            let paths: Vec<std::path::PathBuf> = outputs.iter().map(|f| f.path.clone()).collect();
                            self.remove_files(signal, vec![file.clone()], outputs, "retention", &mut outcome).await?;
                            self.retention_cleaned.lock().remove(&(index, file.path.clone()));
                            for path in paths {
                                cleaned(path);
                            }
                        }
                    }
                }
            }
        }
        let max_bytes = self.disk_bound();
        if max_bytes > 0 {
            let (files, total) = {
                let state = self.state.lock();
                let files: Vec<(Signal, Vec<Arc<DataFile>>)> =
                    Signal::ALL.iter().map(|&s| (s, state.catalog.files(s).to_vec())).collect();
                let total = files.iter().flat_map(|(_, f)| f).map(|f| f.size_bytes + f.index_bytes).sum::<u64>();
                (files, total)
            };
            let evicted = retention::evict(&files, total, max_bytes, &self.config.retention.eviction_order);
            for signal in Signal::ALL {
                let of_signal: Vec<Arc<DataFile>> = evicted.iter().filter(|f| f.signal == signal).cloned().collect();
                if !of_signal.is_empty() {
                    self.remove_files(signal, of_signal, Vec::new(), "disk", &mut outcome).await?;
                }
            }
        }
        if outcome.files > 0 {
            info!(files = outcome.files, bytes = outcome.bytes, rows = outcome.rows, "retention removed data");
        }
        Ok(outcome)
    }

    /// Replaces `inputs` by `outputs` in the catalog (one manifest commit) and counts what went.
    async fn remove_files(
        &self,
        signal: Signal,
        inputs: Vec<Arc<DataFile>>,
        outputs: Vec<Arc<DataFile>>,
        reason: &str,
        outcome: &mut RetentionOutcome,
    ) -> Result<()> {
        let bytes_of = |files: &[Arc<DataFile>]| files.iter().map(|f| f.size_bytes + f.index_bytes).sum::<u64>();
        let rows_of = |files: &[Arc<DataFile>]| files.iter().map(|f| f.num_rows).sum::<u64>();
        let bytes = bytes_of(&inputs).saturating_sub(bytes_of(&outputs));
        let rows = rows_of(&inputs).saturating_sub(rows_of(&outputs));
        let rewritten = outputs.len();
        self.replace_files(signal, &inputs, outputs).await?;
        let label = [signal.table_name(), reason];
        self.metrics.deleted_files.with_label_values(&label).inc_by(inputs.len() as u64);
        self.metrics.deleted_bytes.with_label_values(&label).inc_by(bytes);
        self.metrics.deleted_rows.with_label_values(&label).inc_by(rows);
        outcome.files += inputs.len() as u64;
        outcome.bytes += bytes;
        outcome.rows += rows;
        info!(%signal, reason, files = inputs.len(), rewritten, rows, bytes, "dropped old data");
        Ok(())
    }

    /// Swaps `inputs` for `outputs`: committed to the manifest outside the state lock (which
    /// every ingest and query takes), then applied under it, as in `flush`.
    async fn replace_files(&self, signal: Signal, inputs: &[Arc<DataFile>], outputs: Vec<Arc<DataFile>>) -> Result<()> {
        let _committing = self.committing.lock().await;
        let change = self.state.lock().catalog.with_replaced(signal, inputs, &outputs);
        self.commit(change, &outputs).await?;
        let mut state = self.state.lock();
        state.catalog.apply_replaced(signal, inputs, outputs);
        self.update_gauges(&state, signal);
        Ok(())
    }

    /// Writes and fsyncs a manifest change on a blocking thread; if it fails, the files written
    /// for it (`new_files`) are retired, since no manifest will name them.
    async fn commit(&self, change: crate::manifest::ManifestChange, new_files: &[Arc<DataFile>]) -> Result<()> {
        let metrics = self.metrics.manifest.clone();
        let committed = tokio::task::spawn_blocking(move || change.commit(&metrics))
            .await
            .map_err(|e| Error::Internal(format!("manifest task failed: {e}")))?;
        if committed.is_err() {
            for file in new_files {
                file.retire();
            }
        }
        committed
    }

    /// Writes down the inventory's heartbeats and applies its retention.
    async fn persist_inventory(&self) {
        let inventory = self.inventory.clone();
        let persisted = tokio::task::spawn_blocking(move || inventory.persist(now_ns())).await;
        match persisted {
            Ok(Ok(())) => {}
            Ok(Err(error)) => warn!(%error, "persisting the inventory failed; will retry"),
            Err(error) => warn!(%error, "inventory task failed"),
        }
    }

    /// Records a deletion request durably, then executes it: when this returns, no query sees
    /// the rows it names that were acknowledged before it.
    pub async fn request_delete(
        &self,
        target: crate::deletion::DeleteTarget,
        start_ns: i64,
        end_ns: i64,
    ) -> Result<crate::deletion::DeleteRequest> {
        use crate::deletion::{DeleteRequest, DeleteStatus, RowPredicate};
        if start_ns > end_ns {
            return Err(Error::InvalidRequest(format!(
                "the deletion's start ({start_ns}) is after its end ({end_ns})"
            )));
        }
        RowPredicate::compile(&target).map_err(Error::InvalidRequest)?;
        let created_at_ns = now_ns();
        let request = DeleteRequest {
            request_id: format!(
                "{:x}{:02x}",
                created_at_ns,
                self.next_request_id.fetch_add(1, Ordering::Relaxed) % 256
            ),
            target,
            start_ns,
            end_ns,
            created_at_ns,
            status: DeleteStatus::Received,
        };
        {
            let mut log = self.deletes.lock().await;
            log.requests.push(request.clone());
            if let Err(error) = self.save_deletes(&log).await {
                log.requests.pop();
                return Err(error);
            }
        }
        info!(request_id = %request.request_id, signal = %request.target.signal(), query = %request.target.query(), start_ns, end_ns, "deletion requested");
        self.process_deletes().await?;
        let log = self.deletes.lock().await;
        Ok(log.requests.iter().find(|r| r.request_id == request.request_id).cloned().unwrap_or(request))
    }

    async fn save_deletes(&self, log: &crate::deletion::DeleteLog) -> Result<()> {
        let snapshot = crate::deletion::DeleteLog { requests: log.requests.clone() };
        let data_dir = self.config.data_dir.clone();
        tokio::task::spawn_blocking(move || snapshot.save(&data_dir))
            .await
            .map_err(|e| Error::Internal(format!("deletion log task failed: {e}")))?
    }

    /// Every deletion request of this store, oldest first.
    pub async fn delete_requests(&self) -> Vec<crate::deletion::DeleteRequest> {
        self.deletes.lock().await.requests.clone()
    }

    /// Cancels a request that is not executed yet: `Ok(false)` when there is none by that id,
    /// an error when it is already processed (its rows are gone).
    pub async fn cancel_delete(&self, request_id: &str) -> Result<bool> {
        let mut log = self.deletes.lock().await;
        let Some(position) = log.requests.iter().position(|r| r.request_id == request_id) else { return Ok(false) };
        if log.requests[position].status == crate::deletion::DeleteStatus::Processed {
            return Err(Error::InvalidRequest(format!(
                "deletion request {request_id} is already processed; its data is gone"
            )));
        }
        let removed = log.requests.remove(position);
        if let Err(error) = self.save_deletes(&log).await {
            log.requests.insert(position, removed);
            return Err(error);
        }
        Ok(true)
    }

    /// Executes every deletion request not yet processed: flushes the buffers, then rewrites
    /// each overlapping file without the request's rows.
    pub async fn process_deletes(&self) -> Result<()> {
        use crate::deletion::{DeleteStatus, RowPredicate};
        let mut log = self.deletes.lock().await;
        if log.requests.iter().all(|r| r.status == DeleteStatus::Processed) {
            return Ok(());
        }
        self.flush_all().await?;
        let _compacting = self.compacting.lock().await;
        for index in 0..log.requests.len() {
            let request = log.requests[index].clone();
            if request.status == DeleteStatus::Processed {
                continue;
            }
            let signal = request.target.signal();
            let predicate = Arc::new(RowPredicate::compile(&request.target).map_err(Error::InvalidRequest)?);
            let files: Vec<Arc<DataFile>> = self
                .state
                .lock()
                .catalog
                .files(signal)
                .iter()
                .filter(|f| f.min_time_ns <= request.end_ns && f.max_time_ns >= request.start_ns)
                .cloned()
                .collect();
            let mut outcome = RetentionOutcome::default();
            for file in files {
                let (data_dir, config, name) = (self.config.data_dir.clone(), self.config.clone(), self.file_name("d"));
                let (input, predicate) = (file.clone(), predicate.clone());
                let range = (request.start_ns, request.end_ns);
                let outputs = tokio::task::spawn_blocking(move || {
                    crate::deletion::rewrite(&data_dir, &input, &predicate, range, &config, &name)
                })
                .await
                .map_err(|e| Error::Internal(format!("deletion task failed: {e}")))??;
                if let Some(outputs) = outputs {
                    self.remove_files(signal, vec![file], outputs, "delete", &mut outcome).await?;
                }
            }
            log.requests[index].status = DeleteStatus::Processed;
            self.save_deletes(&log).await?;
            info!(request_id = %request.request_id, rows = outcome.rows, files = outcome.files, "deletion processed");
        }
        Ok(())
    }

    /// The bound on the bytes of this store's files that retention keeps (0: none).
    pub fn disk_bound(&self) -> u64 {
        self.disk_bound.load(Ordering::Relaxed)
    }

    /// Changes the disk bound: a tenant's share of it moves when tenants come and go.
    pub fn set_disk_bound(&self, bytes: u64) {
        self.disk_bound.store(bytes, Ordering::Relaxed);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};

    fn logs(bodies: &[&str]) -> OtlpRequest {
        let log_records = bodies
            .iter()
            .map(|body| LogRecord {
                time_unix_nano: 1_795_305_600_000_000_000,
                body: Some(AnyValue { value: Some(any_value::Value::StringValue(body.to_string())) }),
                ..Default::default()
            })
            .collect();
        OtlpRequest::Logs(ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs { log_records, ..Default::default() }],
                ..Default::default()
            }],
        })
    }

    #[tokio::test]
    async fn a_streaming_merge_interleaves_its_inputs_in_sorted_order() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig { compaction_settle_secs: 0, ..test_config(dir.path()) };
        let store = Store::open(config, &prometheus::Registry::new()).unwrap();
        // Three flushes, each with every series at a third of the times: each input holds
        // 10,000 rows (more than a merge batch), and every series' run is split across all three.
        for part in 0..3u64 {
            let times: Vec<u64> = (0..100).map(|i| DAY_START_NS + (3 * i + part) * 15_000_000_000).collect();
            store.ingest(gauges(100, &times), None).await.unwrap();
            store.flush(Signal::Metrics).await.unwrap();
        }
        store.compact(Signal::Metrics).await.unwrap();
        let files = store.snapshot(Signal::Metrics).files;
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].num_rows, 30_000);
        assert!(writer::can_merge_streaming(&files).unwrap(), "the merged file has today's schema");
        let merged =
            arrow::compute::concat_batches(&Signal::Metrics.schema(), &writer::read_files(&files).unwrap()).unwrap();
        let resorted = writer::sort_batch(&merged, Signal::Metrics).unwrap();
        assert_eq!(merged, resorted, "the merge wrote the rows in the signal's sort order");
        let times = merged.column_by_name(crate::schema::TIMESTAMP).unwrap();
        let times = times.as_any().downcast_ref::<arrow::array::TimestampNanosecondArray>().unwrap();
        let (min, max) = (times.values().iter().min().copied(), times.values().iter().max().copied());
        assert_eq!((files[0].min_time_ns, files[0].max_time_ns), (min.unwrap(), max.unwrap()));
    }

    #[tokio::test]
    async fn a_flush_writes_a_large_buffer_in_pieces_of_flush_max_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig { flush_max_bytes: 1 << 20, ..test_config(dir.path()) };
        let store = Store::open(config, &prometheus::Registry::new()).unwrap();
        let body = "x".repeat(1000);
        for _ in 0..3 {
            // About 2 MB of rows per request: each is a piece of its own.
            store.ingest(logs(&vec![body.as_str(); 2000]), None).await.unwrap();
        }
        store.ingest(logs(&["small one", "small two"]), None).await.unwrap();
        assert_eq!(rows(&store.snapshot(Signal::Logs)), (0, 6002));
        store.flush(Signal::Logs).await.unwrap();
        let snapshot = store.snapshot(Signal::Logs);
        assert_eq!(rows(&snapshot), (6002, 0), "every row flushed, none left buffered");
        let mut per_file: Vec<u64> = snapshot.files.iter().map(|f| f.num_rows).collect();
        per_file.sort_unstable();
        // A request larger than the bound is a piece alone; the small one is a piece of its own.
        assert_eq!(per_file, vec![2, 2000, 2000, 2000]);
    }

    fn logs_at(times: &[i64]) -> OtlpRequest {
        let log_records = times
            .iter()
            .map(|&time| LogRecord {
                time_unix_nano: u64::try_from(time).unwrap(),
                body: Some(AnyValue { value: Some(any_value::Value::StringValue(format!("line at {time}"))) }),
                ..Default::default()
            })
            .collect();
        OtlpRequest::Logs(ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                scope_logs: vec![ScopeLogs { log_records, ..Default::default() }],
                ..Default::default()
            }],
        })
    }

    fn stored_times(store: &Store) -> Vec<i64> {
        let mut times: Vec<i64> = writer::read_files(&store.snapshot(Signal::Logs).files)
            .unwrap()
            .iter()
            .flat_map(|batch| {
                let column = batch.column_by_name(crate::schema::TIMESTAMP).unwrap();
                column.as_any().downcast_ref::<arrow::array::TimestampNanosecondArray>().unwrap().values().to_vec()
            })
            .collect();
        times.sort_unstable();
        times
    }

    #[tokio::test]
    async fn retention_drops_old_files_trims_straddling_ones_and_survives_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        const HOUR: i64 = 3_600_000_000_000;
        let now = now_ns();
        let keep = Duration::from_secs(48 * 3600);
        let cutoff = now - 48 * HOUR;
        let retention = retention::RetentionConfig { logs: Some(keep), ..Default::default() };
        let config = StoreConfig { retention, ..test_config(dir.path()) };
        let registry = prometheus::Registry::new();
        let store = Store::open(config.clone(), &registry).unwrap();
        // Hours wholly past the cutoff, the cutoff's own hour on both sides of it, and newer.
        let old: Vec<i64> = (0..10).map(|i| cutoff - 10 * HOUR + i * HOUR).collect();
        // Every minute of the cutoff's hour, but the two around the cutoff: the store takes its
        // own clock's cutoff a moment later than this one.
        let hour_start = cutoff.div_euclid(HOUR) * HOUR;
        let straddling: Vec<i64> = (0..60)
            .map(|minute| hour_start + minute * 60_000_000_000)
            .filter(|t| (t - cutoff).abs() > 60_000_000_000)
            .collect();
        let new: Vec<i64> = (1..5).map(|i| cutoff + i * HOUR).collect();
        let all: Vec<i64> = old.iter().chain(&straddling).chain(&new).copied().collect();
        store.ingest(logs_at(&all), None).await.unwrap();
        store.flush(Signal::Logs).await.unwrap();
        let bytes_before: u64 = store.snapshot(Signal::Logs).files.iter().map(|f| f.size_bytes + f.index_bytes).sum();

        let outcome = store.apply_retention().await.unwrap();
        let mut expected: Vec<i64> = all.iter().copied().filter(|&t| t >= cutoff).collect();
        expected.sort_unstable();
        assert_eq!(stored_times(&store), expected, "nothing before the cutoff, everything after");
        let dropped = all.len() as u64 - expected.len() as u64;
        assert_eq!(outcome.rows, dropped);
        let bytes_after: u64 = store.snapshot(Signal::Logs).files.iter().map(|f| f.size_bytes + f.index_bytes).sum();
        assert!(bytes_after < bytes_before && outcome.bytes > 0, "{bytes_before} -> {bytes_after}");
        let counted = store.metrics.deleted_rows.with_label_values(&["logs", "retention"]).get();
        assert_eq!(counted, dropped);
        // A second pass has nothing left to do.
        assert_eq!(store.apply_retention().await.unwrap(), RetentionOutcome::default());
        drop(store);

        // The manifest says the same after a reopen, and no dropped file is left on disk.
        let store = Store::open(config, &prometheus::Registry::new()).unwrap();
        assert_eq!(stored_times(&store), expected);
        let parquet_files = walk(&dir.path().join("logs"))
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
            .count();
        assert_eq!(parquet_files, store.snapshot(Signal::Logs).files.len());
    }

    fn namespaced_logs(namespace: &str, times: &[i64]) -> OtlpRequest {
        let OtlpRequest::Logs(mut request) = logs_at(times) else { unreachable!() };
        request.resource_logs[0].resource = Some(opentelemetry_proto::tonic::resource::v1::Resource {
            attributes: vec![opentelemetry_proto::tonic::common::v1::KeyValue {
                key: "k8s.namespace.name".into(),
                value: Some(AnyValue { value: Some(any_value::Value::StringValue(namespace.into())) }),
                ..Default::default()
            }],
            ..Default::default()
        });
        OtlpRequest::Logs(request)
    }

    #[tokio::test]
    async fn a_namespace_override_removes_only_its_streams_older_rows() {
        let dir = tempfile::tempdir().unwrap();
        const DAY: i64 = 86_400_000_000_000;
        let now = now_ns();
        let retention = retention::RetentionConfig {
            default: Some(Duration::from_secs(30 * 86400)),
            overrides: vec![retention::RetentionOverride {
                selector: r#"{k8s_namespace_name=~"dev-.*"}"#.into(),
                logs: Some(Duration::from_secs(3 * 86400)),
                metrics: None,
                spans: None,
            }],
            ..Default::default()
        };
        let config = StoreConfig { retention, ..test_config(dir.path()) };
        let store = Store::open(config, &prometheus::Registry::new()).unwrap();
        let times = [now - 5 * DAY, now - 4 * DAY, now - DAY, now - 3_600_000_000_000];
        for namespace in ["dev-a", "prod"] {
            store.ingest(namespaced_logs(namespace, &times), None).await.unwrap();
        }
        store.flush(Signal::Logs).await.unwrap();
        let outcome = store.apply_retention().await.unwrap();
        assert_eq!(outcome.rows, 2, "the dev rows older than 3 days: {outcome:?}");
        let batches = writer::read_files(&store.snapshot(Signal::Logs).files).unwrap();
        let mut kept: Vec<(String, i64)> = Vec::new();
        for batch in &batches {
            let namespaces = batch.column_by_name(crate::schema::K8S_NAMESPACE_NAME).unwrap();
            let namespaces = namespaces.as_any().downcast_ref::<arrow::array::StringArray>().unwrap();
            let times = batch.column_by_name(crate::schema::TIMESTAMP).unwrap();
            let times = times.as_any().downcast_ref::<arrow::array::TimestampNanosecondArray>().unwrap();
            for row in 0..batch.num_rows() {
                kept.push((namespaces.value(row).to_string(), times.value(row)));
            }
        }
        kept.sort();
        let mut expected: Vec<(String, i64)> = times.iter().map(|&t| ("prod".to_string(), t)).collect();
        expected.extend(times[2..].iter().map(|&t| ("dev-a".to_string(), t)));
        expected.sort();
        assert_eq!(kept, expected);
        // The next pass reads nothing again and removes nothing.
        assert_eq!(store.apply_retention().await.unwrap(), RetentionOutcome::default());
    }

    #[test]
    fn override_selectors_are_checked_against_the_tables_columns() {
        let rule = |selector: &str| retention::RetentionConfig {
            overrides: vec![retention::RetentionOverride {
                selector: selector.into(),
                logs: Some(Duration::from_secs(86400)),
                metrics: None,
                spans: None,
            }],
            ..Default::default()
        };
        assert!(rule(r#"{k8s_namespace_name="dev"}"#).validate().is_ok());
        assert!(rule(r#"{no_such_column="dev"}"#).validate().is_err());
        assert!(rule(r#"{k8s_namespace_name=~"("}"#).validate().is_err());
        assert!(rule("not a selector").validate().is_err());
    }

    fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                found.extend(walk(&path));
            } else {
                found.push(path);
            }
        }
        found
    }

    #[tokio::test]
    async fn the_disk_bound_drops_the_oldest_hours_until_the_files_fit() {
        let dir = tempfile::tempdir().unwrap();
        const HOUR: i64 = 3_600_000_000_000;
        let now = now_ns();
        let mut config = test_config(dir.path());
        let store = Store::open(config.clone(), &prometheus::Registry::new()).unwrap();
        for hour in 0..8 {
            let times: Vec<i64> = (0..200).map(|i| now - (8 - hour) * HOUR + i * 1_000_000_000).collect();
            store.ingest(logs_at(&times), None).await.unwrap();
            store.flush(Signal::Logs).await.unwrap();
        }
        let files = store.snapshot(Signal::Logs).files;
        let total: u64 = files.iter().map(|f| f.size_bytes + f.index_bytes).sum();
        drop(files);
        drop(store);
        // Room for about half the files.
        config.retention.max_disk_bytes = total / 2;
        let store = Store::open(config, &prometheus::Registry::new()).unwrap();
        let outcome = store.apply_retention().await.unwrap();
        let files = store.snapshot(Signal::Logs).files;
        let left: u64 = files.iter().map(|f| f.size_bytes + f.index_bytes).sum();
        assert!(left <= total / 2, "{left} bytes left of {total}, bound {}", total / 2);
        assert!(outcome.files >= 4 && outcome.files < 8, "{outcome:?}");
        // The newest hours stayed, the oldest went.
        let oldest_left = files.iter().map(|f| f.min_time_ns).min().unwrap();
        assert!(oldest_left >= now - 4 * HOUR - HOUR, "the oldest hours went first");
        assert_eq!(store.metrics.deleted_files.with_label_values(&["logs", "disk"]).get(), outcome.files);
    }

    fn rows(snapshot: &TableSnapshot) -> (u64, usize) {
        (snapshot.files.iter().map(|f| f.num_rows).sum(), snapshot.buffered.iter().map(|b| b.num_rows()).sum())
    }

    fn test_config(dir: &Path) -> StoreConfig {
        StoreConfig {
            data_dir: dir.to_path_buf(),
            min_free_disk_bytes: 0,
            max_record_age_secs: 0,
            ..StoreConfig::default()
        }
    }

    fn open(dir: &Path) -> Arc<Store> {
        Store::open(test_config(dir), &prometheus::Registry::new()).unwrap()
    }

    /// Found by fuzzing: 128 KB of empty records under one 64 KB resource attribute converted
    /// into a 2 GB string column, and arrow panicked on its offset overflow.
    #[tokio::test]
    async fn a_request_whose_rows_would_dwarf_it_is_refused_before_conversion() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let attribute = opentelemetry_proto::tonic::common::v1::KeyValue {
            key: "big".into(),
            value: Some(AnyValue { value: Some(any_value::Value::StringValue("x".repeat(64 * 1024))) }),
            ..Default::default()
        };
        let request = OtlpRequest::Logs(ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(opentelemetry_proto::tonic::resource::v1::Resource {
                    attributes: vec![attribute],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs { log_records: vec![LogRecord::default(); 32_800], ..Default::default() }],
                ..Default::default()
            }],
        });
        assert!(request.encode_protobuf().len() < 200 * 1024);
        let error = store.ingest(request, None).await.expect_err("refused");
        assert!(matches!(error, Error::RowsTooLarge { .. }), "{error}");
        assert_eq!(error.class(), crate::ErrorClass::TooLarge);
        assert_eq!(rows(&store.snapshot(Signal::Logs)), (0, 0));
        // An ordinary request of the same records under a small resource is taken.
        assert_eq!(store.ingest(logs(&["a"; 1000]), None).await.unwrap().accepted, 1000);
    }

    #[tokio::test]
    async fn reopening_after_a_crash_shows_every_acknowledged_row_exactly_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let outcome = store.ingest(logs(&["a", "b", "c"]), None).await.unwrap();
        assert_eq!((outcome.accepted, outcome.rejected), (3, 0));
        store.flush(Signal::Logs).await.unwrap();
        store.ingest(logs(&["d", "e"]), None).await.unwrap();
        assert_eq!(rows(&store.snapshot(Signal::Logs)), (3, 2));
        // No shutdown: the rows of the second request exist only in the WAL.
        drop(store);

        let store = open(dir.path());
        assert_eq!(rows(&store.snapshot(Signal::Logs)), (3, 2), "flushed rows are not replayed again");
        store.flush(Signal::Logs).await.unwrap();
        store.ingest(logs(&["f"]), None).await.unwrap();
        drop(store);

        let store = open(dir.path());
        assert_eq!(rows(&store.snapshot(Signal::Logs)), (5, 1));
        store.shutdown().await.unwrap();
        drop(store);
        let store = open(dir.path());
        assert_eq!(rows(&store.snapshot(Signal::Logs)), (6, 0));
        assert!(store.ingest(logs(&["g"]), None).await.is_ok());
    }

    #[test]
    fn a_data_dir_serves_one_store_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let config = StoreConfig { data_dir: dir.path().to_path_buf(), ..StoreConfig::default() };
        let error = Store::open(config, &prometheus::Registry::new()).err().expect("a second store is refused");
        assert!(matches!(error, Error::DataDirLocked(_)), "{error}");
        drop(store);
        drop(open(dir.path()));
    }

    #[tokio::test]
    async fn compaction_keeps_every_row_and_the_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        for body in ["alpha one", "beta two", "gamma three", "delta four"] {
            store.ingest(logs(&[body]), None).await.unwrap();
            store.flush(Signal::Logs).await.unwrap();
        }
        let before = store.snapshot(Signal::Logs);
        assert_eq!(before.files.len(), 4);
        let replaced: Vec<std::path::PathBuf> = before.files.iter().map(|f| f.path.clone()).collect();
        drop(before);
        store.compact(Signal::Logs).await.unwrap();
        let after = store.snapshot(Signal::Logs);
        assert_eq!(after.files.len(), 1);
        assert_eq!(rows(&after), (4, 0));
        assert!(replaced.iter().all(|path| !path.exists()), "inputs are deleted once unused");
        let index = crate::fulltext::FullTextIndex::open(after.files[0].index_dir.as_ref().unwrap()).unwrap();
        assert!(!index.candidates("gamma").unwrap().is_empty());
        assert!(index.candidates("absent").unwrap().is_empty());
        drop(after);
        drop(store);
        let store = open(dir.path());
        assert_eq!(rows(&store.snapshot(Signal::Logs)), (4, 0));
    }

    #[tokio::test]
    async fn log_bodies_are_written_in_pages_of_the_configured_size() {
        use parquet::file::reader::{FileReader, SerializedFileReader};

        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig { log_body_page_bytes: 16 * 1024, ..test_config(dir.path()) };
        let store = Store::open(config, &prometheus::Registry::new()).unwrap();
        // 2,000 distinct lines of 100 bytes: about 200 KiB of text, a dozen pages.
        let bodies: Vec<String> = (0..2000).map(|i| format!("{i:06} {}", "x".repeat(93))).collect();
        let bodies: Vec<&str> = bodies.iter().map(String::as_str).collect();
        store.ingest(logs(&bodies), None).await.unwrap();
        store.flush(Signal::Logs).await.unwrap();
        let snapshot = store.snapshot(Signal::Logs);
        let reader = SerializedFileReader::new(std::fs::File::open(&snapshot.files[0].path).unwrap()).unwrap();
        let row_group = reader.get_row_group(0).unwrap();
        let body = reader.metadata().file_metadata().schema_descr().columns().iter().position(|c| c.name() == "body");
        let mut pages = row_group.get_column_page_reader(body.unwrap()).unwrap();
        let mut sizes = Vec::new();
        while let Some(page) = pages.get_next_page().unwrap() {
            sizes.push(page.buffer().len());
        }
        assert!(sizes.len() >= 12, "{sizes:?}");
        // A page closes once it reaches the limit: at most one line over it.
        assert!(sizes.iter().all(|&size| size <= 16 * 1024 + 104), "{sizes:?}");
    }

    fn gauges(series: usize, times: &[u64]) -> OtlpRequest {
        use opentelemetry_proto::tonic::common::v1::KeyValue;
        use opentelemetry_proto::tonic::metrics::v1::{
            Gauge, Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, metric, number_data_point,
        };
        let data_points = (0..series)
            .flat_map(|s| {
                times.iter().map(move |&time| NumberDataPoint {
                    time_unix_nano: time,
                    value: Some(number_data_point::Value::AsDouble(
                        ((time - DAY_START_NS) / 15_000_000_000) as f64 + 1e6 * s as f64,
                    )),
                    attributes: vec![KeyValue {
                        key: "instance".into(),
                        value: Some(AnyValue { value: Some(any_value::Value::StringValue(format!("host-{s}"))) }),
                        ..Default::default()
                    }],
                    ..Default::default()
                })
            })
            .collect();
        let metric = Metric {
            name: "temperature".into(),
            data: Some(metric::Data::Gauge(Gauge { data_points })),
            ..Default::default()
        };
        OtlpRequest::Metrics(ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                scope_metrics: vec![ScopeMetrics { metrics: vec![metric], ..Default::default() }],
                ..Default::default()
            }],
        })
    }

    const DAY_START_NS: u64 = 1_795_305_600_000_000_000;

    #[tokio::test]
    async fn settled_metrics_hours_end_as_one_file_of_the_day() {
        let gauge_at = |hour: u64| gauges(1, &[DAY_START_NS + hour * 3_600_000_000_000]);
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig { compaction_settle_secs: 0, ..test_config(dir.path()) };
        let store = Store::open(config.clone(), &prometheus::Registry::new()).unwrap();
        for hour in [0, 1, 2] {
            store.ingest(gauge_at(hour), None).await.unwrap();
            store.flush(Signal::Metrics).await.unwrap();
        }
        assert_eq!(store.snapshot(Signal::Metrics).files.len(), 3, "one file per hour partition");
        store.compact(Signal::Metrics).await.unwrap();
        let files = store.snapshot(Signal::Metrics).files;
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].path.parent().unwrap(), dir.path().join("metrics/2026-11-22"));
        let batches = writer::read_files(&files).unwrap();
        let values: Vec<f64> = batches
            .iter()
            .flat_map(|batch| {
                let column = batch.column_by_name(crate::schema::VALUE).unwrap();
                column.as_any().downcast_ref::<arrow::array::Float64Array>().unwrap().values().to_vec()
            })
            .collect();
        assert_eq!(values, vec![0.0, 240.0, 480.0], "one point an hour, every 240th 15 s step");
        drop(files);
        drop(store);
        let store = Store::open(config, &prometheus::Registry::new()).unwrap();
        assert_eq!(rows(&store.snapshot(Signal::Metrics)), (3, 0), "the manifest names the day file");
    }
}
