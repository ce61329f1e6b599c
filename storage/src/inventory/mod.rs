//! The container inventory: what ran where, from which image, and how it ended. One row per
//! container instance, merged from the lifecycle events agents send as OTLP logs
//! ([`event`]; they are taken out of the request, not stored as log lines) and moved forward by the cgroup metrics they send for running containers (the
//! heartbeat), kept apart from the logs so that it outlives them.
//!
//! - `event`: lifecycle events out of OTLP log records.
//! - `state`: the rows in memory and how events merge into them.
//! - `ksm`: kube-state-metrics' container series, written from the rows.
//!
//! On disk (`<data_dir>/inventory/`): a checkpoint (`containers.json`, every row) and an
//! append-only log (`events.<generation>.log`, [`crate::framing`]) of the events and heartbeats
//! since, like the manifest's. Events are appended and fsynced before the request that carried
//! them is acknowledged; heartbeats are written down every [`HEARTBEAT_PERSIST_INTERVAL`] (a
//! crash loses at most that much of a running container's `last_seen`, which its next
//! heartbeat restores). When the log outgrows the checkpoint, the next write is a new
//! checkpoint under a new generation, so every crash point reopens to what was committed.

pub mod event;
pub mod ksm;
pub mod state;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

pub use event::{ContainerEvent, EventKind};
pub use state::{ContainerRow, ImageKey, InventoryState, Status};

use crate::error::{Error, Result};
use crate::framing;
use crate::metrics::InventoryMetrics;
use crate::wal::sync_dir;

const CHECKPOINT: &str = "containers.json";
const CHECKPOINT_TEMPORARY: &str = "containers.json.tmp";
const CHECKPOINT_VERSION: u32 = 1;
/// A small inventory checkpoints only once its log reaches this size.
const LOG_FLOOR_BYTES: u64 = 1024 * 1024;
pub const HEARTBEAT_PERSIST_INTERVAL: Duration = Duration::from_secs(30);

/// `store.inventory` in the config file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InventoryConfig {
    /// Container instances last seen longer ago than this are forgotten. Far longer than logs
    /// are usually kept: a row is a few hundred bytes, and "where did this image run last
    /// quarter" is the question it answers.
    pub retention_days: u64,
    /// At most this many container instances are kept (memory is bounded): past it, the
    /// exited ones seen longest ago go first.
    pub max_containers: usize,
    /// kube-state-metrics' container series are written from the inventory this often;
    /// 0 turns them off.
    pub kube_state_metrics_interval_secs: u64,
}

impl Default for InventoryConfig {
    fn default() -> Self {
        InventoryConfig { retention_days: 400, max_containers: 1_000_000, kube_state_metrics_interval_secs: 30 }
    }
}

impl InventoryConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.retention_days == 0 {
            return Err("retention_days must be at least 1".into());
        }
        if self.max_containers == 0 {
            return Err("max_containers must be at least 1".into());
        }
        Ok(())
    }
}

#[derive(Deserialize)]
struct Checkpoint {
    version: u32,
    /// The log that applies on top of these rows.
    generation: u64,
    rows: Vec<ContainerRow>,
}

#[derive(Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum LogRecord {
    Events { events: Vec<ContainerEvent> },
    Seen { seen: Vec<(String, i64)> },
}

struct LogWriter {
    file: File,
    generation: u64,
    bytes: u64,
    checkpoint_bytes: u64,
}

/// The inventory of one store.
pub struct Inventory {
    dir: PathBuf,
    config: InventoryConfig,
    metrics: InventoryMetrics,
    state: RwLock<InventoryState>,
    /// Taken for every write, so that records reach the log in the order they are applied.
    writer: Mutex<LogWriter>,
}

fn log_name(generation: u64) -> String {
    format!("events.{generation}.log")
}

fn parse_log_name(name: &str) -> Option<u64> {
    name.strip_prefix("events.")?.strip_suffix(".log")?.parse().ok()
}

impl Inventory {
    /// Reads the checkpoint and replays its log; deletes what a crash left behind.
    pub fn open(data_dir: &Path, config: InventoryConfig, metrics: InventoryMetrics) -> Result<Inventory> {
        let dir = data_dir.join("inventory");
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let checkpoint_path = dir.join(CHECKPOINT);
        let corrupt = |path: &Path, reason: String| Error::Manifest { path: path.to_path_buf(), reason };
        let (checkpoint, checkpoint_bytes) = match fs::read(&checkpoint_path) {
            Ok(bytes) => {
                let checkpoint: Checkpoint =
                    serde_json::from_slice(&bytes).map_err(|e| corrupt(&checkpoint_path, e.to_string()))?;
                if checkpoint.version != CHECKPOINT_VERSION {
                    return Err(corrupt(&checkpoint_path, format!("unknown version {}", checkpoint.version)));
                }
                (checkpoint, bytes.len() as u64)
            }
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                (Checkpoint { version: CHECKPOINT_VERSION, generation: 0, rows: Vec::new() }, 0)
            }
            Err(error) => return Err(Error::io(&checkpoint_path, error)),
        };
        let generation = checkpoint.generation;
        let mut state = InventoryState::from_rows(checkpoint.rows);
        let log_path = dir.join(log_name(generation));
        let (log_bytes, records) = framing::replay(
            &log_path,
            "inventory",
            |json| {
                match serde_json::from_slice(json).map_err(|e| e.to_string())? {
                    LogRecord::Events { events } => {
                        state.apply(&events, config.max_containers);
                    }
                    LogRecord::Seen { seen } => state.apply_seen(&seen),
                }
                Ok(())
            },
            |offset, reason| corrupt(&log_path, format!("record at offset {offset}: {reason}")),
        )?;
        for name in fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?.filter_map(|e| e.ok()) {
            let name = name.file_name().to_string_lossy().into_owned();
            let stale = parse_log_name(&name).is_some_and(|g| g != generation) || name == CHECKPOINT_TEMPORARY;
            if stale && let Err(error) = fs::remove_file(dir.join(&name)) {
                warn!(file = %name, %error, "could not delete a stale inventory file");
            }
        }
        let file = OpenOptions::new().create(true).append(true).open(&log_path).map_err(|e| Error::io(&log_path, e))?;
        sync_dir(&dir)?;
        info!(containers = state.len(), replayed_records = records, "inventory opened");
        metrics.containers.set(state.len() as i64);
        Ok(Inventory {
            dir,
            config,
            metrics,
            state: RwLock::new(state),
            writer: Mutex::new(LogWriter { file, generation, bytes: log_bytes, checkpoint_bytes }),
        })
    }

    /// The rows as they are now; hold the guard briefly (writers wait for it).
    pub fn read(&self) -> RwLockReadGuard<'_, InventoryState> {
        self.state.read()
    }

    pub fn version(&self) -> u64 {
        self.state.read().version()
    }

    pub fn config(&self) -> &InventoryConfig {
        &self.config
    }

    /// kube-state-metrics' container series now, if there are containers to show.
    pub fn kube_state_metrics(
        &self,
        now_ns: i64,
    ) -> Option<opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest> {
        ksm::series(&self.state.read(), now_ns)
    }

    /// Makes the events durable, then merges them. Blocking (it fsyncs).
    pub fn apply(&self, events: Vec<ContainerEvent>) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut writer = self.writer.lock();
        let record = LogRecord::Events { events };
        self.append(&mut writer, &record)?;
        let LogRecord::Events { events } = record else { unreachable!("constructed above") };
        let (evicted, containers) = {
            let mut state = self.state.write();
            (state.apply(&events, self.config.max_containers), state.len())
        };
        self.metrics.events.inc_by(events.len() as u64);
        self.metrics.containers.set(containers as i64);
        if evicted > 0 {
            self.metrics.forgotten.with_label_values(&["capacity"]).inc_by(evicted as u64);
            warn!(
                evicted,
                max_containers = self.config.max_containers,
                "inventory full: forgot the oldest exited containers"
            );
        }
        self.maybe_checkpoint(&mut writer)
    }

    /// Moves `last_seen` of the running containers among `ids` (in memory; see the module doc).
    pub fn heartbeat(&self, ids: &[String], time_ns: i64) {
        if !ids.is_empty() {
            self.state.write().heartbeat(ids, time_ns);
        }
    }

    /// Writes down the heartbeats since the last call, and forgets containers past retention.
    /// Blocking (it fsyncs).
    pub fn persist(&self, now_ns: i64) -> Result<()> {
        let mut writer = self.writer.lock();
        let retention_ns =
            i64::try_from(self.config.retention_days.saturating_mul(86_400_000_000_000)).unwrap_or(i64::MAX);
        let expired = self.state.write().expire(now_ns.saturating_sub(retention_ns));
        if expired > 0 {
            self.metrics.forgotten.with_label_values(&["retention"]).inc_by(expired as u64);
            self.metrics.containers.set(self.state.read().len() as i64);
            info!(expired, retention_days = self.config.retention_days, "inventory: forgot containers past retention");
            // Expiry is not in the log: a checkpoint makes it stick.
            return self.checkpoint(&mut writer);
        }
        let seen = self.state.write().take_seen();
        if !seen.is_empty() {
            self.append(&mut writer, &LogRecord::Seen { seen })?;
        }
        self.maybe_checkpoint(&mut writer)
    }

    fn append(&self, writer: &mut LogWriter, record: &LogRecord) -> Result<()> {
        let path = self.dir.join(log_name(writer.generation));
        let fail = |reason: String| Error::Manifest { path: path.clone(), reason };
        let json = serde_json::to_vec(record).map_err(|e| fail(e.to_string()))?;
        let frame = framing::encode_frame(&json).map_err(fail)?;
        if let Err(error) = writer.file.write_all(&frame).and_then(|()| writer.file.sync_data()) {
            // A partial append would sit before the next one: cut it off, or checkpoint next.
            if writer.file.set_len(writer.bytes).is_err() {
                writer.checkpoint_bytes = 0;
                writer.bytes = u64::MAX / 2;
            }
            return Err(Error::io(&path, error));
        }
        writer.bytes += frame.len() as u64;
        Ok(())
    }

    fn maybe_checkpoint(&self, writer: &mut LogWriter) -> Result<()> {
        if writer.bytes < LOG_FLOOR_BYTES.max(writer.checkpoint_bytes) {
            return Ok(());
        }
        self.checkpoint(writer)
    }

    /// Writes every row under a new generation and starts its empty log.
    fn checkpoint(&self, writer: &mut LogWriter) -> Result<()> {
        let generation = writer.generation + 1;
        let temporary = self.dir.join(CHECKPOINT_TEMPORARY);
        // Streamed from the rows under the read lock (queries go on; merges wait), so that a
        // checkpoint of a million rows costs no copy of them.
        let (containers, bytes) = {
            let state = self.state.read();
            let file = File::create(&temporary).map_err(|e| Error::io(&temporary, e))?;
            let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
            let written = (|| -> std::io::Result<File> {
                write!(out, "{{\"version\":{CHECKPOINT_VERSION},\"generation\":{generation},\"rows\":[")?;
                for (i, row) in state.rows().enumerate() {
                    if i > 0 {
                        out.write_all(b",")?;
                    }
                    serde_json::to_writer(&mut out, row)?;
                }
                out.write_all(b"]}")?;
                let file = out.into_inner().map_err(std::io::IntoInnerError::into_error)?;
                file.sync_all()?;
                Ok(file)
            })();
            let file = written.map_err(|e| Error::io(&temporary, e))?;
            (state.len(), file.metadata().map_err(|e| Error::io(&temporary, e))?.len())
        };
        let path = self.dir.join(CHECKPOINT);
        fs::rename(&temporary, &path).map_err(|e| Error::io(&path, e))?;
        let log_path = self.dir.join(log_name(generation));
        let log = OpenOptions::new()
            .create(true)
            .truncate(true)
            .write(true)
            .open(&log_path)
            .map_err(|e| Error::io(&log_path, e))?;
        sync_dir(&self.dir)?;
        let old = self.dir.join(log_name(writer.generation));
        if let Err(error) = fs::remove_file(&old)
            && error.kind() != std::io::ErrorKind::NotFound
        {
            warn!(path = %old.display(), %error, "could not delete a superseded inventory log");
        }
        debug!(generation, containers, bytes, "inventory checkpoint");
        *writer = LogWriter { file: log, generation, bytes: 0, checkpoint_bytes: bytes };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str, kind: EventKind, time_ns: i64) -> ContainerEvent {
        ContainerEvent {
            kind: Some(kind),
            time_ns,
            container_id: id.into(),
            image_name: Some("nginx:1.25".into()),
            ..Default::default()
        }
    }

    fn metrics() -> InventoryMetrics {
        crate::metrics::StorageMetrics::new(&prometheus::Registry::new()).unwrap().inventory
    }

    fn rows(inventory: &Inventory) -> Vec<ContainerRow> {
        let mut rows: Vec<_> = inventory.read().rows().cloned().collect();
        rows.sort_by(|a, b| a.container_id.cmp(&b.container_id));
        rows
    }

    #[test]
    fn events_and_heartbeats_survive_a_reopen_and_checkpoints() {
        let dir = tempfile::tempdir().unwrap();
        let config = InventoryConfig::default();
        let inventory = Inventory::open(dir.path(), config.clone(), metrics()).unwrap();
        inventory.apply(vec![event("a", EventKind::Start, 10), event("b", EventKind::Start, 11)]).unwrap();
        inventory.apply(vec![event("b", EventKind::Stop, 20)]).unwrap();
        inventory.heartbeat(&["a".into(), "b".into()], 30);
        inventory.persist(40).unwrap();
        let before = rows(&inventory);
        assert_eq!((before[0].last_seen_ns, before[1].last_seen_ns), (30, 20));
        drop(inventory);
        let reopened = Inventory::open(dir.path(), config.clone(), metrics()).unwrap();
        assert_eq!(rows(&reopened), before);

        // Enough events to pass the log floor: checkpoints, then the same rows again.
        for batch in 0..100 {
            let events = (0..200).map(|i| event(&format!("c{batch}-{i}"), EventKind::Start, 100 + i)).collect();
            reopened.apply(events).unwrap();
        }
        assert!(reopened.writer.lock().generation >= 1);
        let before = rows(&reopened);
        drop(reopened);
        let reopened = Inventory::open(dir.path(), config, metrics()).unwrap();
        assert_eq!(rows(&reopened), before);
        let logs: Vec<_> = fs::read_dir(dir.path().join("inventory"))
            .unwrap()
            .filter_map(|e| parse_log_name(&e.unwrap().file_name().to_string_lossy()))
            .collect();
        assert_eq!(logs.len(), 1, "one log, of the checkpoint's generation");
    }

    #[test]
    fn a_torn_last_append_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let inventory = Inventory::open(dir.path(), InventoryConfig::default(), metrics()).unwrap();
        inventory.apply(vec![event("a", EventKind::Start, 10)]).unwrap();
        drop(inventory);
        let log = dir.path().join("inventory").join(log_name(0));
        let mut file = OpenOptions::new().append(true).open(&log).unwrap();
        file.write_all(b"0000002a 00000000 {\"op\":\"ev").unwrap();
        let inventory = Inventory::open(dir.path(), InventoryConfig::default(), metrics()).unwrap();
        assert_eq!(rows(&inventory).len(), 1);
        inventory.apply(vec![event("b", EventKind::Start, 11)]).unwrap();
        drop(inventory);
        assert_eq!(rows(&Inventory::open(dir.path(), InventoryConfig::default(), metrics()).unwrap()).len(), 2);
    }

    #[test]
    fn containers_past_retention_are_forgotten_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let config = InventoryConfig { retention_days: 1, ..Default::default() };
        let inventory = Inventory::open(dir.path(), config.clone(), metrics()).unwrap();
        let day = 86_400_000_000_000;
        inventory.apply(vec![event("old", EventKind::Start, 1), event("new", EventKind::Start, 2 * day)]).unwrap();
        inventory.persist(2 * day + 1).unwrap();
        drop(inventory);
        let ids: Vec<_> = rows(&Inventory::open(dir.path(), config, metrics()).unwrap())
            .into_iter()
            .map(|r| r.container_id)
            .collect();
        assert_eq!(ids, vec!["new".to_string()]);
    }
}
