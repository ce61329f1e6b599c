//! The running agent: a reader thread, a log shipper, a metrics loop and an HTTP endpoint.
//!
//! ```text
//! files ──reader thread──▶ batches (bounded channel) ──shipper──▶ store ──ack──▶ checkpoints
//! cgroups ──metrics loop (every interval)──────────────────────▶ store
//! /metrics registry ──self-metrics loop (every interval)───────▶ store (dropped if not taken)
//! ```
//!
//! The reader owns every [`Tailer`]: it scans the log directories (on inotify events, and every
//! `scan_interval` in any case), reads what is new, and cuts batches by size and age. A batch
//! carries, beside its records, the checkpoint each of its files may advance to once the store
//! acknowledged it. The shipper exports batches one at a time, in order, retrying until
//! acknowledged, and only then writes those checkpoints. The channel between them holds two
//! batches: when the store is down, the reader blocks on it and stops reading, so memory stays
//! bounded and the files themselves are the buffer.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use parking_lot::{Mutex, RwLock};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::cgroup::{CgroupReader, to_resource_metrics};
use crate::checkpoint::{Checkpoint, Checkpoints, FileId};
use crate::config::AgentConfig;
use crate::discovery::{Discovery, Source};
use crate::error::{Error, Result};
use crate::export::{ExportError, ExportMetrics, Exporter};
use crate::identity::{ContainerIdentity, bool_attribute, string_attribute};
use crate::self_metrics::{host_name, registry_to_otlp};
use crate::tail::{FileState, TailedRecord, Tailer};
use crate::time::now_unix_nano;

const SCOPE_NAME: &str = "wake.agent";
/// Bytes a reader takes from one file before turning to the next, so one busy container does
/// not starve the others.
const READ_BUDGET_PER_FILE: usize = 1024 * 1024;
/// How long the reader sleeps when no file had anything new and no event arrived.
const IDLE_WAIT: Duration = Duration::from_millis(200);
/// How soon after a directory event the reader scans once more.
const FOLLOW_UP_SCAN: Duration = Duration::from_millis(100);
/// Batches queued between the reader and the shipper.
const QUEUED_BATCHES: usize = 2;

/// The agent's self-metrics.
#[derive(Clone)]
struct AgentMetrics {
    files_watched: IntGauge,
    bytes_read: IntCounter,
    lines_read: IntCounter,
    truncated_lines: IntCounter,
    records_sent: IntCounterVec,
    records_dropped: IntCounterVec,
    checkpoint_lag_bytes: IntGauge,
    checkpoint_errors: IntCounter,
}

impl AgentMetrics {
    fn new(registry: &Registry) -> Result<AgentMetrics> {
        let gauge = |name: &str, help: &str| -> Result<IntGauge> {
            let gauge = IntGauge::new(name, help)?;
            registry.register(Box::new(gauge.clone()))?;
            Ok(gauge)
        };
        let counter = |name: &str, help: &str| -> Result<IntCounter> {
            let counter = IntCounter::new(name, help)?;
            registry.register(Box::new(counter.clone()))?;
            Ok(counter)
        };
        let by_signal = |name: &str, help: &str| -> Result<IntCounterVec> {
            let counter = IntCounterVec::new(Opts::new(name, help), &["signal"])?;
            registry.register(Box::new(counter.clone()))?;
            Ok(counter)
        };
        Ok(AgentMetrics {
            files_watched: gauge("wake_agent_files_watched", "Log files open for tailing")?,
            bytes_read: counter("wake_agent_read_bytes_total", "Bytes read from log files")?,
            lines_read: counter("wake_agent_read_lines_total", "Log records read (after partial-line reassembly)")?,
            truncated_lines: counter("wake_agent_truncated_lines_total", "Lines cut at max_line_bytes")?,
            records_sent: by_signal("wake_agent_sent_records_total", "Records the store acknowledged")?,
            records_dropped: by_signal(
                "wake_agent_dropped_records_total",
                "Records in batches the store refused for good (not retryable)",
            )?,
            checkpoint_lag_bytes: gauge(
                "wake_agent_checkpoint_lag_bytes",
                "Bytes in log files not yet read, summed over open files",
            )?,
            checkpoint_errors: counter("wake_agent_checkpoint_errors_total", "Failed checkpoint writes")?,
        })
    }
}

/// Records of one file within a batch.
struct FileRecords {
    identity: ContainerIdentity,
    path: String,
    records: Vec<LogRecord>,
}

/// A batch of log records and the checkpoints it allows once acknowledged.
struct LogBatch {
    files: Vec<FileRecords>,
    checkpoints: HashMap<FileId, Checkpoint>,
    released: Vec<FileId>,
    records: usize,
    bytes: usize,
    started_at: Instant,
}

impl LogBatch {
    fn new() -> LogBatch {
        LogBatch {
            files: Vec::new(),
            checkpoints: HashMap::new(),
            released: Vec::new(),
            records: 0,
            bytes: 0,
            started_at: Instant::now(),
        }
    }

    fn is_empty(&self) -> bool {
        self.records == 0 && self.checkpoints.is_empty() && self.released.is_empty()
    }

    fn request(&mut self) -> ExportLogsServiceRequest {
        let scope = InstrumentationScope {
            name: SCOPE_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        };
        let resource_logs = std::mem::take(&mut self.files)
            .into_iter()
            .map(|file| ResourceLogs {
                resource: Some(Resource { attributes: file.identity.resource_attributes(), ..Default::default() }),
                scope_logs: vec![ScopeLogs {
                    scope: Some(scope.clone()),
                    log_records: file.records,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        ExportLogsServiceRequest { resource_logs }
    }
}

fn log_record(tailed: TailedRecord, path: &str, observed: u64) -> LogRecord {
    let record = tailed.record;
    let mut attributes = Vec::with_capacity(3);
    if let Some(stream) = record.stream.as_str() {
        attributes.push(string_attribute("log.iostream", stream));
    }
    attributes.push(string_attribute("log.file.path", path));
    if record.truncated {
        attributes.push(bool_attribute("log.truncated", true));
    }
    LogRecord {
        // The runtime's time of the line; a line that did not parse has only the time it was read.
        time_unix_nano: record.time_unix_nano.unwrap_or(observed),
        observed_time_unix_nano: observed,
        body: Some(AnyValue { value: Some(any_value::Value::StringValue(record.body)) }),
        attributes,
        ..Default::default()
    }
}

/// Container identities by container id, shared by the reader (which learns them from log
/// paths) and the metrics loop (which finds container ids in cgroup paths).
type Identities = Arc<RwLock<HashMap<String, ContainerIdentity>>>;

struct Reader {
    config: AgentConfig,
    discovery: Discovery,
    checkpoints: Arc<Mutex<Checkpoints>>,
    tailers: HashMap<FileId, Tailer>,
    identities: Identities,
    batches: mpsc::Sender<LogBatch>,
    events: std_mpsc::Receiver<bool>,
    shutdown: watch::Receiver<bool>,
    metrics: AgentMetrics,
}

impl Reader {
    fn run(mut self) {
        let mut batch = LogBatch::new();
        let mut last_scan: Option<Instant> = None;
        let mut rescan_requested = true;
        // A new directory's own watch is only added once its creation event is handled, so a
        // file created in it right away raises no event: look again shortly after.
        let mut follow_up_scan: Option<Instant> = None;
        let mut last_expiry = Instant::now();
        loop {
            if *self.shutdown.borrow() {
                return;
            }
            let now = Instant::now();
            let follow_up_due = follow_up_scan.is_some_and(|at| now >= at);
            if rescan_requested
                || follow_up_due
                || last_scan.is_none_or(|t| now.duration_since(t) >= self.config.scan_interval)
            {
                follow_up_scan = if rescan_requested { Some(now + FOLLOW_UP_SCAN) } else { None };
                self.scan(now);
                if last_scan.is_none() || now.duration_since(last_expiry) >= Duration::from_secs(3600) {
                    self.expire_checkpoints();
                    last_expiry = now;
                }
                last_scan = Some(now);
                rescan_requested = false;
            }
            let read = self.read_all(now, &mut batch);
            // Full or old batches go at once; and while the shipper has nothing queued, whatever
            // was read goes as soon as the files have nothing more, so that a quiet node's lines
            // are not held back for the batch timeout. Under load, batches fill while the
            // shipper is busy.
            let shipper_idle = self.batches.capacity() == self.batches.max_capacity();
            let due = batch.bytes >= self.config.batch_max_bytes
                || (!batch.is_empty()
                    && (now.duration_since(batch.started_at) >= self.config.batch_timeout
                        || (read == 0 && shipper_idle)));
            if due {
                let full = std::mem::replace(&mut batch, LogBatch::new());
                // Blocks while the shipper is behind: reading stops, memory stays bounded.
                if self.batches.blocking_send(full).is_err() {
                    return;
                }
            }
            if read == 0 {
                let wait = follow_up_scan.map_or(IDLE_WAIT, |at| at.saturating_duration_since(now).min(IDLE_WAIT));
                match self.events.recv_timeout(wait) {
                    Ok(structural) => {
                        rescan_requested |= structural;
                        // Coalesce a burst of events into one pass.
                        while let Ok(structural) = self.events.try_recv() {
                            rescan_requested |= structural;
                        }
                    }
                    Err(std_mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => std::thread::sleep(IDLE_WAIT),
                }
            }
        }
    }

    /// Opens files that appeared (and rotated files a checkpoint says were not finished).
    fn scan(&mut self, now: Instant) {
        let sources = self.discovery.scan();
        for source in sources {
            for rotated in Discovery::rotated_siblings(&source.path) {
                self.open_rotated(&source, rotated, now);
            }
            let Ok(metadata) = std::fs::metadata(&source.path) else { continue };
            let id = FileId::of(&metadata);
            if let Some(tailer) = self.tailers.get_mut(&id) {
                // kubelet may create the container-id symlink after the file appeared.
                if tailer.source.identity != source.identity && tailer.path() == source.path {
                    tailer.source.identity = source.identity.clone();
                    self.remember_identity(&source.identity);
                }
                continue;
            }
            self.open(source, None);
        }
        self.metrics.files_watched.set(self.tailers.len() as i64);
    }

    fn open_rotated(&mut self, current: &Source, path: std::path::PathBuf, now: Instant) {
        let Ok(metadata) = std::fs::metadata(&path) else { return };
        let id = FileId::of(&metadata);
        if self.tailers.contains_key(&id) {
            return;
        }
        let unfinished = self.checkpoints.lock().get(id).is_some_and(|c| c.offset < metadata.len());
        if unfinished {
            let source = Source { path, format: current.format, identity: current.identity.clone() };
            self.open(source, Some(now));
        }
    }

    fn open(&mut self, source: Source, rotated_at: Option<Instant>) {
        let identity = source.identity.clone();
        let path = source.path.clone();
        let opened = {
            let checkpoints = self.checkpoints.lock();
            Tailer::open(source, &checkpoints, self.config.max_line_bytes)
        };
        match opened {
            Ok(mut tailer) => {
                if let Some(at) = rotated_at {
                    tailer.mark_gone(at);
                }
                self.remember_identity(&identity);
                self.tailers.insert(tailer.id, tailer);
            }
            // Listed a moment ago, gone now: the next scan will tell.
            Err(error) => debug!(path = %path.display(), %error, "cannot open log file"),
        }
    }

    fn remember_identity(&self, identity: &ContainerIdentity) {
        if let Some(id) = &identity.container_id {
            self.identities.write().insert(id.clone(), identity.clone());
        }
    }

    fn expire_checkpoints(&mut self) {
        let live: Vec<FileId> = self.tailers.keys().copied().collect();
        let expired = self.checkpoints.lock().expire(self.config.checkpoint_ttl, |id| live.contains(&id));
        if expired > 0 {
            info!(expired, "expired checkpoints of files that are gone");
        }
    }

    /// Reads every file once; returns the bytes read.
    fn read_all(&mut self, now: Instant, batch: &mut LogBatch) -> usize {
        let mut total = 0;
        let mut lag = 0;
        let mut released = Vec::new();
        let mut records = Vec::new();
        for (id, tailer) in &mut self.tailers {
            let read = match tailer.read(READ_BUDGET_PER_FILE, now, &mut records) {
                Ok(read) => read,
                Err(error) => {
                    warn!(path = %tailer.path().display(), %error, "reading a log file failed");
                    0
                }
            };
            total += read;
            self.metrics.bytes_read.inc_by(read as u64);
            let mut gone = false;
            if read == 0 {
                match tailer.check(now, &mut records) {
                    Ok(FileState::Live) => {}
                    Ok(FileState::Gone) => gone = true,
                    Err(error) => warn!(path = %tailer.path().display(), %error, "checking a log file failed"),
                }
            }
            tailer.flush_stale(now, self.config.partial_line_timeout, &mut records);
            let release = gone && tailer.try_release(now, self.config.release_after, &mut records);
            lag += tailer.lag_bytes();
            let had_records = !records.is_empty();
            if had_records {
                add_records(batch, tailer, std::mem::take(&mut records), &self.metrics);
            }
            if release {
                batch.checkpoints.remove(id);
                batch.released.push(*id);
                released.push(*id);
            } else if had_records {
                batch.checkpoints.insert(*id, tailer.checkpoint());
            }
        }
        for id in released {
            self.tailers.remove(&id);
        }
        self.metrics.files_watched.set(self.tailers.len() as i64);
        self.metrics.checkpoint_lag_bytes.set(lag as i64);
        total
    }
}

fn add_records(batch: &mut LogBatch, tailer: &Tailer, records: Vec<TailedRecord>, metrics: &AgentMetrics) {
    let path = tailer.path().display().to_string();
    let observed = now_unix_nano();
    if batch.records == 0 {
        // A batch's age is its oldest record's.
        batch.started_at = Instant::now();
    }
    let same_file = batch.files.last().is_some_and(|f| f.path == path && f.identity == tailer.source.identity);
    if !same_file {
        batch.files.push(FileRecords {
            identity: tailer.source.identity.clone(),
            path: path.clone(),
            records: Vec::new(),
        });
    }
    let Some(file) = batch.files.last_mut() else { return };
    for tailed in records {
        if tailed.record.truncated {
            metrics.truncated_lines.inc();
        }
        metrics.lines_read.inc();
        batch.bytes += tailed.raw_bytes;
        batch.records += 1;
        file.records.push(log_record(tailed, &path, observed));
    }
}

/// Exports batches in order and checkpoints each after the store acknowledged it.
async fn ship_logs(
    mut batches: mpsc::Receiver<LogBatch>,
    exporter: Arc<Exporter>,
    checkpoints: Arc<Mutex<Checkpoints>>,
    shutdown: watch::Receiver<bool>,
    metrics: AgentMetrics,
) {
    while let Some(mut batch) = batches.recv().await {
        if batch.records > 0 {
            let request = batch.request();
            match exporter.export_logs(request, &shutdown).await {
                Ok(_) => metrics.records_sent.with_label_values(&["logs"]).inc_by(batch.records as u64),
                Err(ExportError::Cancelled) => return,
                Err(error) => {
                    // Retrying a request the store refuses for good would stall every file
                    // behind it: count it, say so loudly, and move on.
                    error!(%error, records = batch.records, "the store refused a log batch; dropping it");
                    metrics.records_dropped.with_label_values(&["logs"]).inc_by(batch.records as u64);
                }
            }
        }
        let checkpoints = checkpoints.clone();
        let persisted = tokio::task::spawn_blocking(move || {
            let mut checkpoints = checkpoints.lock();
            for (_, checkpoint) in batch.checkpoints {
                checkpoints.update(checkpoint);
            }
            for id in batch.released {
                checkpoints.remove(id);
            }
            checkpoints.persist()
        })
        .await;
        match persisted {
            Ok(Ok(())) => {}
            Ok(Err(error)) => {
                metrics.checkpoint_errors.inc();
                error!(%error, "writing checkpoints failed; they will be written with the next batch");
            }
            Err(error) => error!(%error, "checkpoint task failed"),
        }
    }
}

/// Reads every container's cgroup each interval and exports the points.
async fn ship_metrics(
    config: AgentConfig,
    exporter: Arc<Exporter>,
    identities: Identities,
    mut shutdown: watch::Receiver<bool>,
    metrics: AgentMetrics,
) {
    let reader = Arc::new(CgroupReader::new(config.cgroup_root.clone()));
    let discovery = match config.discovery() {
        Ok(discovery) => Arc::new(discovery),
        Err(error) => {
            error!(%error, "metrics disabled");
            return;
        }
    };
    let filters = discovery.filters.clone();
    let start_time = now_unix_nano();
    let mut ticker = tokio::time::interval(config.metrics_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let reader = reader.clone();
        let identities = identities.clone();
        let node_name = config.node_name.clone();
        let discovery = discovery.clone();
        let samples = tokio::task::spawn_blocking(move || {
            let cgroups = reader.discover();
            // A container's cgroup can appear before the reader met its log file: look its
            // identity up in the log directories now rather than send points without it.
            if cgroups.iter().any(|c| !identities.read().contains_key(&c.container_id)) {
                let mut known = identities.write();
                for source in discovery.scan() {
                    if let Some(id) = source.identity.container_id.clone() {
                        known.entry(id).or_insert(source.identity);
                    }
                }
            }
            let known = identities.read();
            cgroups
                .into_iter()
                .map(|cgroup| {
                    let identity = known.get(&cgroup.container_id).cloned().unwrap_or_else(|| ContainerIdentity {
                        pod_uid: cgroup.pod_uid.clone(),
                        container_id: Some(cgroup.container_id.clone()),
                        node_name: node_name.clone(),
                        ..ContainerIdentity::default()
                    });
                    let stats = reader.read(&cgroup);
                    (identity, stats)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let mut samples = match samples {
            Ok(samples) => samples,
            Err(error) => {
                error!(%error, "reading cgroups failed");
                continue;
            }
        };
        samples.retain(|(identity, _)| identity.namespace.is_none() || filters.admits(identity));
        if samples.is_empty() {
            continue;
        }
        let resource_metrics = to_resource_metrics(&samples, start_time, now_unix_nano());
        let points: usize =
            resource_metrics.iter().flat_map(|r| &r.scope_metrics).flat_map(|s| &s.metrics).map(data_points).sum();
        match exporter.export_metrics(ExportMetricsServiceRequest { resource_metrics }, &shutdown).await {
            Ok(_) => metrics.records_sent.with_label_values(&["metrics"]).inc_by(points as u64),
            Err(ExportError::Cancelled) => return,
            Err(error) => {
                error!(%error, "the store refused container metrics; dropping them");
                metrics.records_dropped.with_label_values(&["metrics"]).inc_by(points as u64);
            }
        }
    }
}

fn data_points(metric: &opentelemetry_proto::tonic::metrics::v1::Metric) -> usize {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    match &metric.data {
        Some(Data::Gauge(gauge)) => gauge.data_points.len(),
        Some(Data::Sum(sum)) => sum.data_points.len(),
        Some(Data::Histogram(histogram)) => histogram.data_points.len(),
        Some(Data::ExponentialHistogram(histogram)) => histogram.data_points.len(),
        Some(Data::Summary(summary)) => summary.data_points.len(),
        None => 0,
    }
}

/// The resource of the agent's own metrics: `job="wake-agent"`, `instance=<node>` in PromQL.
fn self_resource(node_name: Option<&str>) -> Vec<opentelemetry_proto::tonic::common::v1::KeyValue> {
    let mut attributes = vec![string_attribute("service.name", "wake-agent")];
    if let Some(instance) = node_name.map(str::to_owned).or_else(host_name) {
        attributes.push(string_attribute("service.instance.id", &instance));
    }
    if let Some(node) = node_name {
        attributes.push(string_attribute("k8s.node.name", node));
    }
    attributes
}

/// Sends the agent's own metrics (its `/metrics` registry) to the store every
/// `self_metrics_interval`, through the same exporter (connection, retries, back-off, server
/// throttling) as logs and container metrics, but in a task of its own so that log shipping
/// never waits for it. At most one snapshot is ever held: one the store has not acknowledged
/// within an interval (or an export timeout, if longer) is dropped, since the next one, with
/// cumulative values, supersedes it. Nothing is counted for self-metrics beyond the exporter's
/// own request counters.
async fn ship_self_metrics(
    config: AgentConfig,
    exporter: Arc<Exporter>,
    registry: Registry,
    mut shutdown: watch::Receiver<bool>,
    start_time: u64,
) {
    let interval = config.self_metrics_interval;
    if interval.is_zero() {
        return;
    }
    let resource = self_resource(config.node_name.as_deref());
    let give_up_after = interval.max(config.export_timeout);
    // The first snapshot one interval after the start: there is nothing to tell before.
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        let request = registry_to_otlp(&registry, resource.clone(), now_unix_nano(), start_time);
        if request.resource_metrics.is_empty() {
            continue;
        }
        match tokio::time::timeout(give_up_after, exporter.export_metrics(request, &shutdown)).await {
            Ok(Ok(_)) => {}
            Ok(Err(ExportError::Cancelled)) => return,
            Ok(Err(error)) => warn!(%error, "the store refused the agent's self-metrics; dropping them"),
            Err(_) => debug!(?give_up_after, "the store did not take the agent's self-metrics; dropping them"),
        }
    }
}

/// Wakes the reader on file-system events under the log directories. `true` means files may
/// have appeared or moved (rescan); `false` only that some file grew.
fn watch_directories(config: &AgentConfig, events: std_mpsc::Sender<bool>) -> Option<notify::RecommendedWatcher> {
    use notify::{EventKind, RecursiveMode, Watcher};
    let handler = move |event: notify::Result<notify::Event>| {
        let structural = match event {
            Ok(event) => {
                !matches!(event.kind, EventKind::Modify(notify::event::ModifyKind::Data(_)) | EventKind::Access(_))
            }
            Err(_) => true,
        };
        let _ = events.send(structural);
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(watcher) => watcher,
        Err(error) => {
            warn!(%error, "inotify unavailable; finding and reading files by polling");
            return None;
        }
    };
    for dir in [&config.log_root, &config.containers_dir(), &config.docker_root] {
        if dir.is_dir()
            && let Err(error) = watcher.watch(dir, RecursiveMode::Recursive)
        {
            warn!(dir = %dir.display(), %error, "cannot watch; polling it instead");
        }
    }
    Some(watcher)
}

async fn serve_http(listener: tokio::net::TcpListener, registry: Registry, mut shutdown: watch::Receiver<bool>) {
    use axum::routing::get;
    let metrics = move || {
        let registry = registry.clone();
        async move {
            let mut text = String::new();
            match prometheus::TextEncoder::new().encode_utf8(&registry.gather(), &mut text) {
                Ok(()) => (axum::http::StatusCode::OK, [("content-type", prometheus::TEXT_FORMAT)], text),
                Err(error) => (
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    [("content-type", "text/plain")],
                    format!("encoding metrics: {error}"),
                ),
            }
        }
    };
    let app = axum::Router::new().route("/metrics", get(metrics)).route("/healthz", get(|| async { "ok\n" }));
    let stopped = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    if let Err(error) = axum::serve(listener, app).with_graceful_shutdown(stopped).await {
        error!(%error, "agent HTTP server failed");
    }
}

/// Runs the agent until `shutdown` turns true. Data read but not acknowledged at that moment is
/// not checkpointed, so the next start reads it again.
pub async fn run(config: AgentConfig, shutdown: watch::Receiver<bool>) -> Result<()> {
    config.validate()?;
    let start_time = now_unix_nano();
    let registry = Registry::new();
    let metrics = AgentMetrics::new(&registry)?;
    let exporter = Arc::new(Exporter::new(config.export(), ExportMetrics::new(&registry)?)?);
    let state_dir = config.state_dir.clone();
    let checkpoints = Checkpoints::open(&state_dir).map_err(|source| Error::Io {
        action: "opening checkpoints in",
        path: state_dir,
        source,
    })?;
    info!(checkpoints = checkpoints.len(), "loaded checkpoints");
    let checkpoints = Arc::new(Mutex::new(checkpoints));

    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .map_err(|source| Error::Bind { addr: config.http_addr, source })?;
    let http_addr: SocketAddr =
        listener.local_addr().map_err(|source| Error::Bind { addr: config.http_addr, source })?;
    info!(
        %http_addr,
        endpoint = %config.endpoint,
        protocol = ?config.protocol,
        log_root = %config.log_root.display(),
        node_name = config.node_name.as_deref().unwrap_or(""),
        "listening"
    );

    let identities: Identities = Arc::default();
    let (batch_sender, batch_receiver) = mpsc::channel(QUEUED_BATCHES);
    let (event_sender, events) = std_mpsc::channel();
    let watcher = watch_directories(&config, event_sender);
    let reader = Reader {
        config: config.clone(),
        discovery: config.discovery()?,
        checkpoints: checkpoints.clone(),
        tailers: HashMap::new(),
        identities: identities.clone(),
        batches: batch_sender,
        events,
        shutdown: shutdown.clone(),
        metrics: metrics.clone(),
    };
    let reader = std::thread::Builder::new()
        .name("wake-agent-reader".into())
        .spawn(move || reader.run())
        .map_err(|error| Error::Task("reader", error.to_string()))?;

    let shipper =
        tokio::spawn(ship_logs(batch_receiver, exporter.clone(), checkpoints, shutdown.clone(), metrics.clone()));
    let self_metrics = tokio::spawn(ship_self_metrics(
        config.clone(),
        exporter.clone(),
        registry.clone(),
        shutdown.clone(),
        start_time,
    ));
    let metrics_loop = tokio::spawn(ship_metrics(config, exporter, identities, shutdown.clone(), metrics));
    let http = tokio::spawn(serve_http(listener, registry, shutdown.clone()));

    let mut stop = shutdown;
    let _ = stop.wait_for(|stop| *stop).await;
    info!("shutting down");
    drop(watcher);
    // The shipper ends when its export is cancelled or the reader (its only sender) ends.
    let (shipped, measured, reported, served) = tokio::join!(shipper, metrics_loop, self_metrics, http);
    for (task, result) in
        [("log shipper", shipped), ("metrics loop", measured), ("self-metrics loop", reported), ("HTTP server", served)]
    {
        if let Err(error) = result {
            return Err(Error::Task(task, error.to_string()));
        }
    }
    tokio::task::spawn_blocking(move || reader.join())
        .await
        .map_err(|error| Error::Task("reader", error.to_string()))?
        .map_err(|_| Error::Task("reader", "panicked".into()))?;
    info!("stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// With the store down, each snapshot is retried for at most an interval and then dropped
    /// (never queued), and shutdown ends the loop at once.
    #[tokio::test]
    async fn self_metrics_to_a_dead_store_are_dropped_and_shutdown_is_prompt() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let config = AgentConfig {
            endpoint: format!("http://{addr}"),
            self_metrics_interval: Duration::from_millis(100),
            export_timeout: Duration::from_millis(100),
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(20),
            node_name: Some("node-1".into()),
            ..AgentConfig::default()
        };
        let registry = Registry::new();
        let metrics = AgentMetrics::new(&registry).unwrap();
        metrics.lines_read.inc();
        let exporter = Arc::new(Exporter::new(config.export(), ExportMetrics::new(&registry).unwrap()).unwrap());
        let (stop, shutdown) = watch::channel(false);

        let task = tokio::spawn(ship_self_metrics(config, exporter, registry.clone(), shutdown, now_unix_nano()));
        let total = |name: &str, outcome: Option<&str>| -> f64 {
            registry
                .gather()
                .iter()
                .filter(|family| family.name() == name)
                .flat_map(|family| family.get_metric())
                .filter(|metric| {
                    outcome.is_none_or(|outcome| {
                        metric.get_label().iter().any(|label| label.name() == "outcome" && label.value() == outcome)
                    })
                })
                .map(|metric| metric.get_counter().get_value())
                .sum()
        };
        let retries = || total("wake_agent_export_retries_total", None);
        crate::export::eventually("two refused exports", Duration::from_secs(5), || retries() >= 2.0).await;
        assert!(!task.is_finished(), "the loop ended with the store down");
        stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(1), task).await.expect("prompt shutdown").unwrap();

        // Every attempt was refused and counted as such; none was taken for an answer.
        let refused = total("wake_agent_export_requests_total", Some("retryable_error"));
        assert_eq!(total("wake_agent_export_requests_total", Some("ok")), 0.0);
        assert_eq!(refused, retries());
        // Nothing of it counts as records sent or dropped.
        assert!(
            registry
                .gather()
                .iter()
                .all(|family| !family.name().contains("records_total") || family.get_metric().is_empty())
        );
    }

    #[test]
    fn self_metrics_resource_names_the_agent_and_its_node() {
        let resource = self_resource(Some("node-1"));
        let pairs: Vec<(String, String)> = resource
            .iter()
            .map(|kv| {
                let Some(any_value::Value::StringValue(value)) = kv.value.as_ref().and_then(|v| v.value.clone()) else {
                    panic!("not a string: {kv:?}")
                };
                (kv.key.clone(), value)
            })
            .collect();
        let expected = [("service.name", "wake-agent"), ("service.instance.id", "node-1"), ("k8s.node.name", "node-1")];
        assert_eq!(pairs, expected.map(|(k, v)| (k.to_string(), v.to_string())));
    }
}
