//! The running agent: a reader thread, a log shipper, a metrics loop and an HTTP endpoint.
//!
//! ```text
//! files ──reader thread──▶ encoded batches (queue bounded in bytes) ──shipper──▶ store ──ack──▶ checkpoints
//! cgroups ──metrics loop (every interval)──────────────────────────────────────▶ store
//! /metrics registry ──self-metrics loop (every interval)───────────────────────▶ store (dropped if not taken)
//! ```
//!
//! The reader owns every [`Tailer`]. inotify ([`crate::watch`]) tells it which files changed,
//! and a pass reads those, the ones a budget left unfinished, and the few that wait for a timer
//! (a half-assembled line, a renamed file not yet released): an idle node costs nothing but the
//! wait. The directories are scanned when something was created, deleted or renamed, and every
//! `rescan_interval` in any case, when every file is looked at too, in case an event was lost;
//! without inotify, every `scan_interval`.
//!
//! Records go into a batch until the next one would take the batch's encoded request past
//! `batch_max_bytes`, whichever file it comes from: the batch is then encoded and queued, and
//! the record starts the next one. A batch carries, beside its records, the checkpoint each of
//! its files may advance to once the store acknowledged it: the resume position of the file's
//! last record in the batch, so that nothing past what the batch holds is ever checkpointed.
//! The shipper exports batches one at a time, in order, retrying until acknowledged, and only
//! then writes those checkpoints. The queue holds at most `queue_max_bytes` of encoded batches,
//! the one being sent included: when the store is slow or down the reader blocks on it and stops
//! reading, so memory stays bounded and the files themselves are the buffer.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use parking_lot::{Condvar, Mutex, RwLock};
use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use prost::Message;
use tokio::sync::{mpsc, watch};
use tracing::{debug, error, info, warn};

use crate::cgroup::{CgroupReader, to_resource_metrics};
use crate::checkpoint::{Checkpoint, Checkpoints, FileId};
use crate::config::AgentConfig;
use crate::discovery::{Discovery, Source};
use crate::error::{Error, Result};
use crate::export::{ExportError, ExportMetrics, Exporter};
use crate::identity::{ContainerIdentity, bool_attribute, string_attribute};
use crate::lifecycle;
use crate::self_metrics::{host_name, registry_to_otlp};
use crate::tail::{FileState, Position, TailedRecord, Tailer};
use crate::time::now_unix_nano;
use crate::watch::{Wakeups, Watch};

const SCOPE_NAME: &str = "wake.agent";
/// Bytes a reader takes from one file in a pass before turning to the next, so one busy
/// container does not starve the others.
const READ_BUDGET_PER_FILE: usize = 1024 * 1024;
/// How soon the reader looks again at files that wait for a timer rather than an event (a
/// half-assembled line, a renamed file before its release), and at a batch the shipper was too
/// busy to take.
const IDLE_WAIT: Duration = Duration::from_millis(200);
/// A new directory's own watch is only added once its creation event is handled, so a file
/// created in it right away raises no event: look again this long after a structural event
/// (twice, for a watch added late on a loaded node).
const FOLLOW_UP_SCANS: [Duration; 2] = [Duration::from_millis(100), Duration::from_secs(1)];
/// Batches in the channel to the shipper at most. `queue_max_bytes` is the bound that matters;
/// this one only keeps the channel finite.
const QUEUED_BATCHES: usize = 64;
/// How often a reader blocked on a full queue checks for shutdown.
const SHUTDOWN_CHECK: Duration = Duration::from_millis(100);
/// Paths of changed files that lead to no tailed file (excluded by filters, compressed rotated
/// files), remembered so that their writes do not cause a scan each; forgotten past this many.
const MAX_IGNORED_PATHS: usize = 100_000;

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

/// The bytes of encoded batches queued for, or being sent to, the store. The reader takes room
/// before it queues a batch, waiting while there is none; the batch gives it back once the
/// shipper is done with it.
struct QueueBudget {
    max: usize,
    used: Mutex<usize>,
    freed: Condvar,
    /// The reader waits for room.
    waiting: std::sync::atomic::AtomicBool,
}

/// A batch's share of the queue, given back when dropped.
struct QueueRoom {
    budget: Arc<QueueBudget>,
    bytes: usize,
}

impl QueueBudget {
    fn new(max: usize) -> Arc<QueueBudget> {
        Arc::new(QueueBudget {
            max,
            used: Mutex::new(0),
            freed: Condvar::new(),
            waiting: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// Waits for room for `bytes`; `None` if shutdown began meanwhile.
    fn take(self: &Arc<Self>, bytes: usize, shutdown: &watch::Receiver<bool>) -> Option<QueueRoom> {
        // A batch larger than the whole queue (one record past batch_max_bytes) waits for an
        // empty queue rather than for ever.
        let bytes = bytes.min(self.max);
        let mut used = self.used.lock();
        while *used + bytes > self.max {
            if *shutdown.borrow() {
                self.waiting.store(false, std::sync::atomic::Ordering::SeqCst);
                return None;
            }
            self.waiting.store(true, std::sync::atomic::Ordering::SeqCst);
            self.freed.wait_for(&mut used, SHUTDOWN_CHECK);
        }
        self.waiting.store(false, std::sync::atomic::Ordering::SeqCst);
        *used += bytes;
        Some(QueueRoom { budget: self.clone(), bytes })
    }

    #[cfg(test)]
    fn used(&self) -> usize {
        *self.used.lock()
    }

    #[cfg(test)]
    fn is_waiting(&self) -> bool {
        self.waiting.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for QueueRoom {
    fn drop(&mut self) {
        let mut used = self.budget.used.lock();
        *used -= self.bytes;
        self.budget.freed.notify_all();
    }
}

/// Encoded length of a length-delimited protobuf field with a one-byte key (field numbers up
/// to 15, as every field of the request's envelope).
fn field_len(len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

fn scope() -> InstrumentationScope {
    InstrumentationScope { name: SCOPE_NAME.into(), version: env!("CARGO_PKG_VERSION").into(), ..Default::default() }
}

/// Which resource a batch entry is of: a file, and the version of its identity (kubelet's
/// container-id link may appear after the file did).
#[derive(Clone, Copy, PartialEq, Eq)]
struct EntryKey {
    id: FileId,
    identity_version: u64,
}

/// Records of one file within a batch.
struct FileRecords {
    key: EntryKey,
    resource: Resource,
    resource_len: usize,
    records: Vec<LogRecord>,
    /// Encoded length of `records` as the `log_records` field of their `ScopeLogs`.
    records_len: usize,
}

/// A batch being filled, and the exact length of the request it encodes to.
struct LogBatch {
    files: Vec<FileRecords>,
    checkpoints: HashMap<FileId, Checkpoint>,
    released: Vec<FileId>,
    records: usize,
    encoded_len: usize,
    scope_len: usize,
    started_at: Instant,
}

impl LogBatch {
    fn new() -> LogBatch {
        LogBatch {
            files: Vec::new(),
            checkpoints: HashMap::new(),
            released: Vec::new(),
            records: 0,
            encoded_len: 0,
            scope_len: scope().encoded_len(),
            started_at: Instant::now(),
        }
    }

    fn is_empty(&self) -> bool {
        self.records == 0 && self.checkpoints.is_empty() && self.released.is_empty()
    }

    /// Encoded length of a `ResourceLogs` entry of the request.
    fn entry_len(&self, resource_len: usize, records_len: usize) -> usize {
        let scope_logs = field_len(self.scope_len) + records_len;
        field_len(field_len(resource_len) + field_len(scope_logs))
    }

    /// The encoded length of the request if a record of `record_len` bytes of entry `key` joined.
    fn encoded_len_with(&self, key: EntryKey, resource_len: usize, record_len: usize) -> usize {
        let record = field_len(record_len);
        match self.files.last() {
            Some(last) if last.key == key => {
                self.encoded_len - self.entry_len(last.resource_len, last.records_len)
                    + self.entry_len(last.resource_len, last.records_len + record)
            }
            _ => self.encoded_len + self.entry_len(resource_len, record),
        }
    }

    fn push(&mut self, key: EntryKey, resource: &Resource, resource_len: usize, record: LogRecord, record_len: usize) {
        if self.records == 0 {
            // A batch's age is its oldest record's.
            self.started_at = Instant::now();
        }
        self.encoded_len = self.encoded_len_with(key, resource_len, record_len);
        if self.files.last().is_none_or(|last| last.key != key) {
            self.files.push(FileRecords {
                key,
                resource: resource.clone(),
                resource_len,
                records: Vec::new(),
                records_len: 0,
            });
        }
        if let Some(file) = self.files.last_mut() {
            file.records.push(record);
            file.records_len += field_len(record_len);
        }
        self.records += 1;
    }

    fn request(self) -> (ExportLogsServiceRequest, BatchOutcome) {
        let scope = scope();
        let resource_logs = self
            .files
            .into_iter()
            .map(|file| ResourceLogs {
                resource: Some(file.resource),
                scope_logs: vec![ScopeLogs {
                    scope: Some(scope.clone()),
                    log_records: file.records,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect();
        let outcome = BatchOutcome { records: self.records, checkpoints: self.checkpoints, released: self.released };
        (ExportLogsServiceRequest { resource_logs }, outcome)
    }

    /// The batch as the shipper takes it: its request encoded.
    fn encode(self) -> (Vec<u8>, BatchOutcome) {
        let expected = self.encoded_len;
        let (request, outcome) = self.request();
        let payload = request.encode_to_vec();
        debug_assert_eq!(payload.len(), expected, "the batch's size accounting is off");
        (payload, outcome)
    }
}

/// What an acknowledged batch allows: its records count as sent, its files' checkpoints advance.
struct BatchOutcome {
    records: usize,
    checkpoints: HashMap<FileId, Checkpoint>,
    released: Vec<FileId>,
}

/// A batch as queued for the shipper.
struct EncodedBatch {
    /// An `ExportLogsServiceRequest`'s protobuf.
    payload: Vec<u8>,
    outcome: BatchOutcome,
    /// Its share of `queue_max_bytes`, held until the shipper is done with it.
    room: QueueRoom,
}

fn log_record(record: crate::parse::Record, path: &str, observed: u64) -> LogRecord {
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

/// A tailed file and what the reader keeps about it.
struct Tracked {
    tailer: Tailer,
    /// `log.file.path` of its records.
    path: String,
    resource: Resource,
    resource_len: usize,
    identity_version: u64,
    /// Its last read stopped at the budget: there is more without any event saying so.
    more: bool,
    /// Bytes beyond what was read, as of the last look.
    lag: u64,
}

impl Tracked {
    fn new(tailer: Tailer) -> Tracked {
        let path = tailer.path().display().to_string();
        let resource = Resource { attributes: tailer.source.identity.resource_attributes(), ..Default::default() };
        let resource_len = resource.encoded_len();
        Tracked { tailer, path, resource, resource_len, identity_version: 0, more: false, lag: 0 }
    }

    fn set_identity(&mut self, identity: ContainerIdentity) {
        self.resource = Resource { attributes: identity.resource_attributes(), ..Default::default() };
        self.resource_len = self.resource.encoded_len();
        self.identity_version += 1;
        self.tailer.source.identity = identity;
    }

    fn key(&self) -> EntryKey {
        EntryKey { id: self.tailer.id, identity_version: self.identity_version }
    }

    /// Whether a pass must look at the file even though no event named it.
    fn needs_attention(&self) -> bool {
        self.more || !self.tailer.is_settled()
    }

    /// Reads what the file has (up to the budget) into `records`, and checks the file for
    /// truncation, rotation and deletion when it has nothing new. Returns the bytes read and
    /// whether the file is done and may be released once `records` are in a batch.
    fn refill(
        &mut self,
        now: Instant,
        config: &AgentConfig,
        metrics: &AgentMetrics,
        chunk: &mut Vec<u8>,
        records: &mut Vec<TailedRecord>,
    ) -> (usize, bool) {
        let read = match self.tailer.read_with(READ_BUDGET_PER_FILE, now, records, chunk) {
            Ok(read) => read,
            Err(error) => {
                warn!(path = %self.tailer.path().display(), %error, "reading a log file failed");
                0
            }
        };
        metrics.bytes_read.inc_by(read as u64);
        let mut gone = false;
        if read == 0 {
            match self.tailer.check(now, records) {
                Ok(FileState::Live) => {}
                Ok(FileState::Gone) => gone = true,
                Err(error) => warn!(path = %self.tailer.path().display(), %error, "checking a log file failed"),
            }
        }
        self.tailer.flush_stale(now, config.partial_line_timeout, records);
        let release = gone && self.tailer.try_release(now, config.release_after, records);
        self.lag = self.tailer.lag_bytes();
        // A budget cut the read short, or the check found the file truncated and to be read
        // again from its start: either way the next pass reads on without waiting for an event.
        self.more = read >= READ_BUDGET_PER_FILE || (read == 0 && self.lag > 0 && !release);
        (read, release)
    }
}

/// The shipper is gone, or shutdown began: the reader stops.
#[derive(Debug)]
struct Stopped;

/// The batch being filled and the way to the shipper.
struct Outbox {
    batch: LogBatch,
    batch_max_bytes: usize,
    batches: mpsc::Sender<EncodedBatch>,
    budget: Arc<QueueBudget>,
    shutdown: watch::Receiver<bool>,
}

impl Outbox {
    /// Moves `file`'s `records` (all of them) into batches, queuing each batch that fills up.
    fn take_from(
        &mut self,
        file: &Tracked,
        records: &mut Vec<TailedRecord>,
        metrics: &AgentMetrics,
    ) -> Result<(), Stopped> {
        if records.is_empty() {
            return Ok(());
        }
        let key = file.key();
        let observed = now_unix_nano();
        let mut last: Option<Position> = None;
        for tailed in records.drain(..) {
            if tailed.record.truncated {
                metrics.truncated_lines.inc();
            }
            metrics.lines_read.inc();
            let resume = tailed.resume;
            let record = log_record(tailed.record, &file.path, observed);
            let record_len = record.encoded_len();
            if self.batch.records > 0
                && self.batch.encoded_len_with(key, file.resource_len, record_len) > self.batch_max_bytes
            {
                if let Some(position) = last.take() {
                    self.batch.checkpoints.insert(key.id, file.tailer.checkpoint_at(position));
                }
                self.send()?;
            }
            self.batch.push(key, &file.resource, file.resource_len, record, record_len);
            last = Some(resume);
        }
        if let Some(position) = last {
            self.batch.checkpoints.insert(key.id, file.tailer.checkpoint_at(position));
        }
        Ok(())
    }

    /// The file was read to its end and released: its checkpoint goes once this batch is
    /// acknowledged.
    fn release(&mut self, id: FileId) {
        self.batch.checkpoints.remove(&id);
        self.batch.released.push(id);
    }

    /// Encodes and queues the batch, waiting for room in the queue.
    fn send(&mut self) -> Result<(), Stopped> {
        let batch = std::mem::replace(&mut self.batch, LogBatch::new());
        let (payload, outcome) = batch.encode();
        let room = self.budget.take(payload.len(), &self.shutdown).ok_or(Stopped)?;
        self.batches.blocking_send(EncodedBatch { payload, outcome, room }).map_err(|_| Stopped)
    }

    /// Nothing queued for the shipper: it is waiting for work.
    fn shipper_idle(&self) -> bool {
        self.batches.capacity() == self.batches.max_capacity()
    }
}

/// What one pass did, for tests and logs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct PassStats {
    /// Files looked at.
    visited: usize,
    /// Files that had bytes to read.
    read: usize,
    bytes: usize,
}

struct Reader {
    config: AgentConfig,
    discovery: Discovery,
    checkpoints: Arc<Mutex<Checkpoints>>,
    files: HashMap<FileId, Tracked>,
    /// The tailed file under each path (the newest, when a rotated one keeps the old path),
    /// and under the other names events gave it.
    by_path: HashMap<PathBuf, FileId>,
    /// Files events named since the last pass.
    dirty: HashSet<FileId>,
    /// Changed paths a scan found to lead to no file to tail.
    ignored: HashSet<PathBuf>,
    watch: Watch,
    identities: Identities,
    outbox: Outbox,
    metrics: AgentMetrics,
    /// The read buffer every file shares.
    chunk: Vec<u8>,
    /// The records of the file being looked at, on their way into batches: one buffer for all,
    /// as a file's records are all in batches before the next file is read.
    records: Vec<TailedRecord>,
    /// Told after every scan: files came or went, and with them, maybe, containers.
    lifecycle_wake: Arc<tokio::sync::Notify>,
}

impl Reader {
    fn new(
        config: &AgentConfig,
        checkpoints: Arc<Mutex<Checkpoints>>,
        identities: Identities,
        batches: mpsc::Sender<EncodedBatch>,
        budget: Arc<QueueBudget>,
        shutdown: watch::Receiver<bool>,
        metrics: &AgentMetrics,
    ) -> Result<Reader> {
        // podman's own `ctr.log`s are under containers/storage (with containers.json beside them).
        let roots = [
            config.log_root.clone(),
            config.containers_dir(),
            config.docker_root.clone(),
            config.containers_storage_root.join("overlay-containers"),
        ];
        Ok(Reader {
            config: config.clone(),
            discovery: config.discovery()?,
            checkpoints,
            files: HashMap::new(),
            by_path: HashMap::new(),
            dirty: HashSet::new(),
            ignored: HashSet::new(),
            watch: Watch::new(&roots),
            identities,
            outbox: Outbox {
                batch: LogBatch::new(),
                batch_max_bytes: config.batch_max_bytes,
                batches,
                budget,
                shutdown,
            },
            metrics: metrics.clone(),
            chunk: Vec::new(),
            records: Vec::new(),
            lifecycle_wake: Arc::default(),
        })
    }

    fn run(mut self) {
        let start = Instant::now();
        let mut next_rescan = start;
        let mut next_root_check = start + self.config.scan_interval;
        let mut follow_ups: Vec<Instant> = Vec::new();
        let mut last_expiry: Option<Instant> = None;
        let mut wakeups = Wakeups::default();
        loop {
            if *self.outbox.shutdown.borrow() {
                return;
            }
            let now = Instant::now();
            let structural = !wakeups.structural.is_empty();
            let (mut scan, mut everything, unknown) = self.apply(std::mem::take(&mut wakeups));
            if structural {
                follow_ups = FOLLOW_UP_SCANS.iter().map(|after| now + *after).collect();
            }
            if follow_ups.first().is_some_and(|at| now >= *at) {
                follow_ups.remove(0);
                scan = true;
            }
            if self.watch.polling() {
                // The watcher may have failed since the last full look was planned.
                next_rescan = next_rescan.min(now + self.config.scan_interval);
            }
            if now >= next_rescan {
                scan = true;
                everything = true;
                let interval =
                    if self.watch.polling() { self.config.scan_interval } else { self.config.rescan_interval };
                next_rescan = now + interval;
            }
            if self.watch.missing_roots() && now >= next_root_check {
                if self.watch.watch_new_roots() {
                    scan = true;
                    everything = true;
                }
                next_root_check = now + self.config.scan_interval;
            }
            if scan {
                self.scan(now);
                self.ignore_unknown(unknown);
                if last_expiry.is_none_or(|at| now.duration_since(at) >= Duration::from_secs(3600)) {
                    self.expire_checkpoints();
                    last_expiry = Some(now);
                }
            }
            let Ok(stats) = self.pass(now, everything) else { return };
            if stats.visited > 0 {
                debug!(visited = stats.visited, read = stats.read, bytes = stats.bytes, "read pass");
            }
            // Old batches go at once; and while the shipper has nothing queued, whatever was read
            // goes as soon as the files have nothing more, so that a quiet node's lines are not
            // held back for the batch timeout. Under load, batches fill while the shipper is busy.
            let batch = &self.outbox.batch;
            let due = !batch.is_empty()
                && (now.duration_since(batch.started_at) >= self.config.batch_timeout
                    || (stats.bytes == 0 && self.outbox.shipper_idle()));
            if due && self.outbox.send().is_err() {
                return;
            }
            if stats.bytes > 0 {
                wakeups = self.watch.take();
                continue;
            }
            let mut deadlines = vec![next_rescan];
            deadlines.extend(follow_ups.first().copied());
            if self.watch.missing_roots() {
                deadlines.push(next_root_check);
            }
            if !self.outbox.batch.is_empty() || self.files.values().any(Tracked::needs_attention) {
                deadlines.push(now + IDLE_WAIT);
            }
            let wait = deadlines.into_iter().min().map_or(IDLE_WAIT, |at| at.saturating_duration_since(now));
            wakeups = self.watch.wait(wait);
        }
    }

    /// Marks the files `wakeups` name for the next pass. Returns whether the directories need
    /// a scan, whether every file needs a look, and the changed paths no tailed file is under.
    fn apply(&mut self, wakeups: Wakeups) -> (bool, bool, Vec<PathBuf>) {
        let mut unknown = Vec::new();
        for path in wakeups.changed {
            if let Some(id) = self.by_path.get(&path).filter(|id| self.files.contains_key(id)) {
                self.dirty.insert(*id);
                continue;
            }
            if self.ignored.contains(&path) {
                continue;
            }
            // Another name of a tailed file (inotify names the directory the write went
            // through, a tailer the path discovery found), or a file not met yet.
            match std::fs::metadata(&path).map(|metadata| FileId::of(&metadata)) {
                Ok(id) if self.files.contains_key(&id) => {
                    self.dirty.insert(id);
                    self.by_path.insert(path, id);
                }
                _ => unknown.push(path),
            }
        }
        // A rename or deletion names the file (or a directory above it): it is read to its end.
        for path in &wakeups.structural {
            self.ignored.remove(path);
            for (id, file) in &self.files {
                if file.tailer.path().starts_with(path) {
                    self.dirty.insert(*id);
                }
            }
        }
        let scan = wakeups.rescan || !wakeups.structural.is_empty() || !unknown.is_empty();
        (scan, wakeups.rescan, unknown)
    }

    /// Changed paths that still lead to no tailed file after a scan are not worth another.
    fn ignore_unknown(&mut self, unknown: Vec<PathBuf>) {
        if self.ignored.len() + unknown.len() > MAX_IGNORED_PATHS {
            self.ignored.clear();
        }
        for path in unknown {
            if !self.by_path.contains_key(&path) {
                debug!(path = %path.display(), "changed file is not tailed");
                self.ignored.insert(path);
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
            if let Some(file) = self.files.get_mut(&id) {
                // kubelet may create the container-id symlink after the file appeared.
                if file.tailer.source.identity != source.identity && file.tailer.path() == source.path {
                    file.set_identity(source.identity.clone());
                    remember_identity(&self.identities, &source.identity);
                }
                continue;
            }
            self.open(source, None);
        }
        self.metrics.files_watched.set(self.files.len() as i64);
        self.lifecycle_wake.notify_one();
    }

    fn open_rotated(&mut self, current: &Source, path: PathBuf, now: Instant) {
        let Ok(metadata) = std::fs::metadata(&path) else { return };
        let id = FileId::of(&metadata);
        if self.files.contains_key(&id) {
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
                remember_identity(&self.identities, &identity);
                let id = tailer.id;
                self.by_path.insert(path, id);
                self.dirty.insert(id);
                self.files.insert(id, Tracked::new(tailer));
            }
            // Listed a moment ago, gone now: the next scan will tell.
            Err(error) => debug!(path = %path.display(), %error, "cannot open log file"),
        }
    }

    fn expire_checkpoints(&mut self) {
        let live: HashSet<FileId> = self.files.keys().copied().collect();
        let expired = self.checkpoints.lock().expire(self.config.checkpoint_ttl, |id| live.contains(&id));
        if expired > 0 {
            info!(expired, "expired checkpoints of files that are gone");
        }
    }

    /// Looks at the files events named and those that need it anyway (or, with `everything`,
    /// at every file), and moves what they have into batches.
    fn pass(&mut self, now: Instant, everything: bool) -> Result<PassStats, Stopped> {
        let ids: Vec<FileId> = self
            .files
            .iter()
            .filter(|(id, file)| everything || self.dirty.contains(*id) || file.needs_attention())
            .map(|(id, _)| *id)
            .collect();
        self.dirty.clear();
        let mut stats = PassStats::default();
        for id in ids {
            let Some(file) = self.files.get_mut(&id) else { continue };
            stats.visited += 1;
            let (read, release) = file.refill(now, &self.config, &self.metrics, &mut self.chunk, &mut self.records);
            if read > 0 {
                stats.read += 1;
                stats.bytes += read;
            }
            self.outbox.take_from(file, &mut self.records, &self.metrics)?;
            if release {
                self.outbox.release(id);
                self.files.remove(&id);
                // Its names, unless a newer file took one (the path of a rotated file's successor).
                self.by_path.retain(|_, named| *named != id);
            }
        }
        self.metrics.files_watched.set(self.files.len() as i64);
        let lag: u64 = self.files.values().map(|file| file.lag).sum();
        self.metrics.checkpoint_lag_bytes.set(i64::try_from(lag).unwrap_or(i64::MAX));
        Ok(stats)
    }
}

fn remember_identity(identities: &Identities, identity: &ContainerIdentity) {
    if let Some(id) = &identity.container_id {
        identities.write().insert(id.clone(), identity.clone());
    }
}

/// Exports batches in order and checkpoints each after the store acknowledged it.
async fn ship_logs(
    mut batches: mpsc::Receiver<EncodedBatch>,
    exporter: Arc<Exporter>,
    checkpoints: Arc<Mutex<Checkpoints>>,
    shutdown: watch::Receiver<bool>,
    metrics: AgentMetrics,
) {
    while let Some(batch) = batches.recv().await {
        let EncodedBatch { payload, outcome, room } = batch;
        let BatchOutcome { records, checkpoints: advanced, released } = outcome;
        if records > 0 {
            match exporter.export_logs_encoded(payload, &shutdown).await {
                Ok(_) => metrics.records_sent.with_label_values(&["logs"]).inc_by(records as u64),
                Err(ExportError::Cancelled) => return,
                Err(error) => {
                    // Retrying a request the store refuses for good would stall every file
                    // behind it: count it, say so loudly, and move on.
                    error!(%error, records, "the store refused a log batch; dropping it");
                    metrics.records_dropped.with_label_values(&["logs"]).inc_by(records as u64);
                }
            }
        }
        let checkpoints = checkpoints.clone();
        let persisted = tokio::task::spawn_blocking(move || {
            let mut checkpoints = checkpoints.lock();
            for (_, checkpoint) in advanced {
                checkpoints.update(checkpoint);
            }
            for id in released {
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
        // The batch is done with: its bytes leave the queue.
        drop(room);
    }
}

/// Reads every container's cgroup each interval and exports the points.
async fn ship_metrics(
    config: AgentConfig,
    exporter: Arc<Exporter>,
    identities: Identities,
    oom_counts: lifecycle::OomCounts,
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
        {
            let mut counts = oom_counts.lock();
            counts.clear();
            for (identity, stats) in &samples {
                if let (Some(id), Some(oom)) = (&identity.container_id, stats.oom_events) {
                    counts.insert(id.clone(), oom);
                }
            }
        }
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
    let exporter = Arc::new(Exporter::new(config.export()?, ExportMetrics::new(&registry)?)?);
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
    let budget = QueueBudget::new(config.queue_max_bytes);
    let reader = Reader::new(
        &config,
        checkpoints.clone(),
        identities.clone(),
        batch_sender,
        budget,
        shutdown.clone(),
        &metrics,
    )?;
    let lifecycle_wake = reader.lifecycle_wake.clone();
    let oom_counts = lifecycle::OomCounts::default();
    let waker = reader.watch.waker();
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
    let lifecycle = config.lifecycle_events.then(|| {
        tokio::spawn(lifecycle::run(
            config.clone(),
            exporter.clone(),
            identities.clone(),
            oom_counts.clone(),
            lifecycle_wake,
            shutdown.clone(),
        ))
    });
    let metrics_loop = tokio::spawn(ship_metrics(config, exporter, identities, oom_counts, shutdown.clone(), metrics));
    let http = tokio::spawn(serve_http(listener, registry, shutdown.clone()));

    let mut stop = shutdown;
    let _ = stop.wait_for(|stop| *stop).await;
    info!("shutting down");
    // The reader may be waiting for an event with nothing to do: it sees the shutdown at once.
    waker.wake();
    // The shipper ends when its export is cancelled or the reader (its only sender) ends.
    let (shipped, measured, reported, served) = tokio::join!(shipper, metrics_loop, self_metrics, http);
    if let Some(lifecycle) = lifecycle
        && let Err(error) = lifecycle.await
    {
        return Err(Error::Task("container lifecycle", error.to_string()));
    }
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
        let exporter =
            Arc::new(Exporter::new(config.export().unwrap(), ExportMetrics::new(&registry).unwrap()).unwrap());
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

    use std::io::Write as _;
    use std::path::Path;

    use crate::watch::Wakeups;

    const T: &str = "2026-11-23T00:00:00.000000001Z";

    /// A reader over `root/pods`, as `run` builds it, with the receiving end of its queue.
    struct TestReader {
        reader: Reader,
        batches: mpsc::Receiver<EncodedBatch>,
        budget: Arc<QueueBudget>,
        _stop: watch::Sender<bool>,
    }

    fn test_reader(root: &Path, config: AgentConfig) -> TestReader {
        let config = AgentConfig {
            log_root: root.join("pods"),
            containers_dir: Some(root.join("containers")),
            docker_root: root.join("docker"),
            containers_storage_root: root.join("storage"),
            state_dir: root.join("state"),
            ..config
        };
        std::fs::create_dir_all(&config.log_root).unwrap();
        let registry = Registry::new();
        let metrics = AgentMetrics::new(&registry).unwrap();
        let checkpoints = Arc::new(Mutex::new(Checkpoints::open(&config.state_dir).unwrap()));
        let (sender, batches) = mpsc::channel(QUEUED_BATCHES);
        let budget = QueueBudget::new(config.queue_max_bytes);
        let (stop, shutdown) = watch::channel(false);
        let reader =
            Reader::new(&config, checkpoints, Identities::default(), sender, budget.clone(), shutdown, &metrics)
                .unwrap();
        TestReader { reader, batches, budget, _stop: stop }
    }

    fn log_path(root: &Path, pod: usize) -> PathBuf {
        root.join("pods").join(format!("ns-{}_pod-{pod}_uid-{pod}", pod % 10)).join("app").join("0.log")
    }

    /// The CRI line of record `seq` of `pod`, all lines of one file being of the same length.
    fn line(pod: usize, seq: usize, padding: usize) -> String {
        format!("{T} stdout F pod-{pod:03} seq-{seq:08} {}\n", "x".repeat(padding))
    }

    fn write_lines(root: &Path, pod: usize, lines: std::ops::Range<usize>, padding: usize) {
        let path = log_path(root, pod);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
        let text: String = lines.map(|seq| line(pod, seq, padding)).collect();
        file.write_all(text.as_bytes()).unwrap();
    }

    /// (pod, seq) of every record of a request, in order.
    fn records_of(request: &ExportLogsServiceRequest) -> Vec<(usize, usize)> {
        let mut records = Vec::new();
        for resource in &request.resource_logs {
            for scope in &resource.scope_logs {
                for record in &scope.log_records {
                    let Some(any_value::Value::StringValue(body)) = record.body.as_ref().and_then(|b| b.value.as_ref())
                    else {
                        panic!("no body: {record:?}")
                    };
                    let mut words = body.split(' ');
                    let pod = words.next().and_then(|w| w.strip_prefix("pod-")).unwrap().parse().unwrap();
                    let seq = words.next().and_then(|w| w.strip_prefix("seq-")).unwrap().parse().unwrap();
                    records.push((pod, seq));
                }
            }
        }
        records
    }

    #[test]
    fn a_batch_knows_its_exact_encoded_length() {
        let mut batch = LogBatch::new();
        let mut rng = fastrand::Rng::with_seed(7);
        // Bodies around the varint steps (127/128 bytes, 16383/16384) and files taking turns.
        for round in 0..400 {
            let file = rng.usize(0..3);
            let identity = ContainerIdentity {
                pod_name: Some(format!("pod-{file}")),
                namespace: Some("default".into()),
                ..Default::default()
            };
            let resource = Resource { attributes: identity.resource_attributes(), ..Default::default() };
            let key = EntryKey { id: FileId { dev: 1, ino: file as u64 }, identity_version: (round / 100) as u64 };
            let body_len = [0, 1, 90, 100, 127, 128, 16_300, 16_384, 200_000][rng.usize(0..9)];
            let record = crate::parse::Record {
                time_unix_nano: Some(1),
                stream: crate::parse::Stream::Stdout,
                body: "b".repeat(body_len),
                truncated: round % 7 == 0,
            };
            let record = log_record(record, &format!("/var/log/pods/x/{file}/0.log"), 2);
            let record_len = record.encoded_len();
            let predicted = batch.encoded_len_with(key, resource.encoded_len(), record_len);
            batch.push(key, &resource, resource.encoded_len(), record, record_len);
            assert_eq!(batch.encoded_len, predicted);
        }
        let expected = batch.encoded_len;
        let (request, outcome) = batch.request();
        assert_eq!(request.encoded_len(), expected);
        assert_eq!(outcome.records, 400);
    }

    /// 100 files with 1 MiB each ready at once: every request stays within batch_max_bytes
    /// (the issue was 11 requests of ~93 MiB), the queue never holds more than queue_max_bytes,
    /// every record arrives once and in its file's order, and each batch checkpoints each of its
    /// files exactly past that file's last record in it.
    #[test]
    fn batches_stay_within_batch_max_bytes_however_many_files_contribute() {
        const FILES: usize = 100;
        const PADDING: usize = 160;
        let dir = tempfile::tempdir().unwrap();
        let line_len = line(0, 0, PADDING).len();
        let lines_per_file = (1 << 20) / line_len + 1;
        for pod in 0..FILES {
            write_lines(dir.path(), pod, 0..lines_per_file, PADDING);
        }
        let config = AgentConfig {
            batch_max_bytes: 1 << 20,
            queue_max_bytes: 4 << 20,
            batch_timeout: Duration::from_secs(3600),
            ..AgentConfig::default()
        };
        let TestReader { mut reader, batches, budget, _stop } = test_reader(dir.path(), config);
        let ids: HashMap<FileId, usize> =
            (0..FILES).map(|pod| (FileId::of(&std::fs::metadata(log_path(dir.path(), pod)).unwrap()), pod)).collect();

        let (requests, held_max) = std::thread::scope(|scope| {
            scope.spawn(move || {
                reader.scan(Instant::now());
                loop {
                    let stats = reader.pass(Instant::now(), false).unwrap();
                    if stats.bytes == 0 && !reader.files.values().any(Tracked::needs_attention) {
                        break;
                    }
                }
                reader.outbox.send().unwrap();
            });
            // Owned here, so that a failed assertion drops it and the reader stops too.
            let mut batches = batches;
            let mut requests = Vec::new();
            let mut held: Vec<EncodedBatch> = Vec::new();
            let mut held_max = 0;
            let mut next = vec![0; FILES];
            while next.iter().any(|&n| n < lines_per_file) {
                // A slow store: batches are held (not acknowledged) until the reader waits for
                // room; only then are they let go.
                let batch = match batches.try_recv() {
                    Ok(batch) => batch,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        if budget.is_waiting() && !held.is_empty() {
                            let held_bytes: usize = held.iter().map(|b| b.payload.len()).sum();
                            assert!(held_bytes + (1 << 20) > 4 << 20, "the reader waits with {held_bytes} queued");
                            held_max = held_max.max(held_bytes);
                            held.clear();
                        }
                        std::thread::yield_now();
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => panic!("the reader stopped early"),
                };
                assert!(batch.payload.len() <= 1 << 20, "a request of {} bytes", batch.payload.len());
                let request = ExportLogsServiceRequest::decode(batch.payload.as_slice()).unwrap();
                let mut last_in_batch = HashMap::new();
                for (pod, seq) in records_of(&request) {
                    assert_eq!(seq, next[pod], "pod {pod}: out of order or repeated");
                    next[pod] += 1;
                    last_in_batch.insert(pod, seq);
                }
                // Checkpoints name exactly the files with records here, each just past its last.
                let checkpointed: HashMap<usize, u64> =
                    batch.outcome.checkpoints.values().map(|c| (ids[&c.id], c.offset)).collect();
                let expected: HashMap<usize, u64> =
                    last_in_batch.iter().map(|(&pod, &seq)| (pod, ((seq + 1) * line_len) as u64)).collect();
                assert_eq!(checkpointed, expected);
                requests.push(batch.payload.len());
                held.push(batch);
                assert!(budget.used() <= 4 << 20, "{} bytes queued", budget.used());
            }
            (requests, held_max)
        });
        let total: usize = requests.iter().sum();
        assert!(requests.len() >= total / (1 << 20), "{} requests for {total} bytes", requests.len());
        // Full batches, bar the last few of a pass: the bound is a bound, not the usual size.
        let full = requests.iter().filter(|&&len| len > (1 << 20) - 4096).count();
        assert!(full * 10 >= requests.len() * 9, "{full} of {} requests full", requests.len());
        assert!(held_max > 3 << 20, "the queue never filled: {held_max}");
    }

    /// The reader looks at what events name: after the first pass over every file, a write to
    /// two of 50 files makes a pass that reads those two; the agent's own scans and opens (which
    /// raise IN_OPEN, IN_CLOSE_NOWRITE) make none.
    #[test]
    fn a_woken_reader_reads_only_the_files_that_changed() {
        const FILES: usize = 50;
        let dir = tempfile::tempdir().unwrap();
        for pod in 0..FILES {
            write_lines(dir.path(), pod, 0..3, 10);
        }
        let TestReader { mut reader, mut batches, _stop, .. } = test_reader(dir.path(), AgentConfig::default());
        assert!(!reader.watch.polling());
        let drain = std::thread::spawn(move || {
            let mut records = 0;
            while let Some(batch) = batches.blocking_recv() {
                records += batch.outcome.records;
            }
            records
        });

        reader.scan(Instant::now());
        let first = reader.pass(Instant::now(), false).unwrap();
        assert_eq!((first.visited, first.read), (FILES, FILES));
        assert!(!reader.files.values().any(Tracked::needs_attention));
        assert_eq!(reader.pass(Instant::now(), false).unwrap(), PassStats::default(), "a pass with nothing to do");

        // What a periodic rescan and a look at every file do: list every directory, open,
        // stat and read every file.
        reader.scan(Instant::now());
        let everything = reader.pass(Instant::now(), true).unwrap();
        assert_eq!((everything.visited, everything.read), (FILES, 0));
        for pod in 0..FILES {
            std::fs::read(log_path(dir.path(), pod)).unwrap();
        }
        write_lines(dir.path(), 3, 3..5, 10);
        write_lines(dir.path(), 17, 3..4, 10);
        let changed = HashSet::from([log_path(dir.path(), 3), log_path(dir.path(), 17)]);
        let mut gathered = Wakeups::default();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !changed.is_subset(&gathered.changed) {
            assert!(Instant::now() < deadline, "no events for the writes: {gathered:?}");
            let more = reader.watch.wait(Duration::from_millis(100));
            gathered.changed.extend(more.changed);
            gathered.structural.extend(more.structural);
            gathered.rescan |= more.rescan;
        }
        assert_eq!(gathered, Wakeups { changed, ..Wakeups::default() }, "events of the agent's own reads");
        let (scan, everything, unknown) = reader.apply(gathered);
        assert_eq!((scan, everything, unknown), (false, false, vec![]));
        let woken = reader.pass(Instant::now(), false).unwrap();
        assert_eq!((woken.visited, woken.read), (2, 2));

        reader.outbox.send().unwrap();
        drop(reader);
        assert_eq!(drain.join().unwrap(), FILES * 3 + 3);
    }

    /// A representative OTLP body (the agent's records of Loghub lines, 1 MiB requests) through
    /// the exporter's compression at levels 1 and 6. Timing only, no assertion on it:
    /// `cargo test -p wake-collector --lib -- --ignored --nocapture compression_throughput`.
    /// With `WAKE_OTLP_BODY_OUT=<file>` the encoded requests are written there too, for timing
    /// elsewhere (an optimised build).
    #[test]
    #[ignore = "a measurement, not a test"]
    fn compression_throughput_of_agent_requests() {
        let mut lines = Vec::new();
        let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/loghub");
        let mut names: Vec<PathBuf> = std::fs::read_dir(&data)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|path| path.extension().is_some_and(|ext| ext == "gz"))
            .collect();
        names.sort();
        for name in names {
            let mut text = String::new();
            std::io::Read::read_to_string(
                &mut flate2::read::GzDecoder::new(std::fs::File::open(&name).unwrap()),
                &mut text,
            )
            .unwrap();
            lines.extend(text.lines().map(str::to_owned));
        }
        let mut payloads = Vec::new();
        let mut batch = LogBatch::new();
        let observed = now_unix_nano();
        for (g, text) in lines.iter().cycle().take(lines.len() * 4).enumerate() {
            let pod = g % 100;
            let identity = ContainerIdentity {
                namespace: Some(format!("ns-{}", pod % 10)),
                pod_name: Some(format!("pod-{pod}")),
                container_name: Some("app".into()),
                ..Default::default()
            };
            let resource = Resource { attributes: identity.resource_attributes(), ..Default::default() };
            let record = crate::parse::Record {
                time_unix_nano: Some(observed - 1_000_000_000 + g as u64 * 8_640_000),
                stream: if g % 10 == 9 { crate::parse::Stream::Stderr } else { crate::parse::Stream::Stdout },
                body: text.clone(),
                truncated: false,
            };
            let path = format!("/var/log/pods/ns-{}_pod-{pod}_uid/app/0.log", pod % 10);
            let record = log_record(record, &path, observed);
            let len = record.encoded_len();
            // Runs of a file's records, as a pass takes them.
            let key = EntryKey { id: FileId { dev: 0, ino: (g / 50 % 100) as u64 }, identity_version: 0 };
            if batch.records > 0 && batch.encoded_len_with(key, resource.encoded_len(), len) > 1 << 20 {
                payloads.push(std::mem::replace(&mut batch, LogBatch::new()).encode().0);
            }
            batch.push(key, &resource, resource.encoded_len(), record, len);
        }
        let total: usize = payloads.iter().map(Vec::len).sum();
        if let Ok(out) = std::env::var("WAKE_OTLP_BODY_OUT") {
            std::fs::write(out, payloads.concat()).unwrap();
        }
        for level in [1, 6] {
            let started = Instant::now();
            let compressed: usize = payloads.iter().map(|p| crate::export::gzip(p, level).len()).sum();
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "gzip level {level}: {} requests, {:.1} MiB -> {:.1} MiB ({:.1} %), {:.0} MiB/s",
                payloads.len(),
                total as f64 / 1048576.0,
                compressed as f64 / 1048576.0,
                100.0 * compressed as f64 / total as f64,
                total as f64 / 1048576.0 / seconds
            );
        }
    }
}
