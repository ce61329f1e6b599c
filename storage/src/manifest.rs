//! How the catalog is kept on disk: a checkpoint (`manifest.json`) of every live file, plus an
//! append-only log (`manifest.<generation>.log`) of the changes made since, so that a flush or a
//! compaction writes and fsyncs only what it changed rather than the whole list of files.
//!
//! Log record: `<len: 8 hex> <crc32(json): 8 hex> <json>\n`, one JSON object per line, either
//! `{"op":"flushed","signal",…,"flushed_seq",…,"files":[entry…]}` or
//! `{"op":"replaced","signal",…,"removed":[path…],"files":[entry…]}`; an entry is what the
//! checkpoint lists for a file. A record is committed once its `fdatasync` returned. On open, a
//! torn or corrupt last record (a crash mid-append, never acknowledged) is cut off; a corrupt
//! record with a valid one after it is an error, since dropping it would silently drop the changes
//! that follow too.
//!
//! When the log outgrows the checkpoint (and `LOG_FLOOR_BYTES`), the next change is committed
//! as a new checkpoint instead: written to a temporary file, fsynced, renamed over
//! `manifest.json`, directory fsynced. The checkpoint names the generation of the one log that
//! applies on top of it, and a new checkpoint takes a new generation, so every crash point reopens
//! to exactly the committed state: before the rename, the old checkpoint and its log; after it,
//! the new checkpoint and its (new, empty) log, while the old log is stale and deleted unread.
//! Checkpoints cost O(files) but come once per O(files) bytes of log, so each commit costs O(1)
//! amortised, and neither file grows beyond about the size of the live catalog.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tracing::{debug, info, warn};

use crate::catalog::{DataFile, FileStats, slot};
use crate::error::{Error, Result};
use crate::framing;
use crate::schema::Signal;
use crate::wal::sync_dir;

const CHECKPOINT: &str = "manifest.json";
const CHECKPOINT_TEMPORARY: &str = "manifest.json.tmp";
/// Version 2 names its log. An older Wake refuses it rather than reading the checkpoint alone
/// and losing the log's changes.
const CHECKPOINT_VERSION: u32 = 2;
/// The checkpoint alone, rewritten on every commit; still read, and replaced by a version 2
/// checkpoint at the first commit.
const CHECKPOINT_VERSION_WITHOUT_LOG: u32 = 1;
/// A small store checkpoints only once its log reaches this size, so that its few files are not
/// rewritten every few commits.
const LOG_FLOOR_BYTES: u64 = 64 * 1024;

/// Metrics of the manifest's writes: they show that its cost follows the changes, not the store.
#[derive(Clone)]
pub struct ManifestMetrics {
    pub bytes_written: prometheus::IntCounter,
    pub checkpoints: prometheus::IntCounter,
}

#[cfg(test)]
impl ManifestMetrics {
    pub(crate) fn unregistered() -> ManifestMetrics {
        ManifestMetrics {
            bytes_written: prometheus::IntCounter::new("manifest_bytes", "test").unwrap(),
            checkpoints: prometheus::IntCounter::new("manifest_checkpoints", "test").unwrap(),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Checkpoint {
    version: u32,
    /// The log whose records apply on top of this checkpoint: `manifest.<log_generation>.log`.
    /// Absent in version 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    log_generation: Option<u64>,
    /// Per signal, the highest WAL sequence number whose rows are in the files below.
    flushed_seq: BTreeMap<String, u64>,
    files: Vec<ManifestEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ManifestEntry {
    signal: String,
    /// Relative to the data dir.
    path: String,
    index: Option<String>,
    #[serde(flatten)]
    stats: FileStats,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
enum LogRecord {
    /// A flush added `files`, and the signal is in Parquet up to `flushed_seq`.
    Flushed { signal: String, flushed_seq: u64, files: Vec<ManifestEntry> },
    /// Compaction swapped the files at `removed` for `files`.
    Replaced { signal: String, removed: Vec<String>, files: Vec<ManifestEntry> },
}

/// A file as checkpoint and log name it, not yet checked against the disk.
pub(crate) struct StoredFile {
    pub(crate) signal: Signal,
    /// Absolute.
    pub(crate) path: PathBuf,
    pub(crate) index_dir: Option<PathBuf>,
    pub(crate) stats: FileStats,
}

/// What checkpoint and log together say the catalog holds.
pub(crate) struct StoredCatalog {
    pub(crate) flushed_seq: [u64; 3],
    /// In the order the files were added, as the catalog keeps them in memory.
    pub(crate) files: Vec<StoredFile>,
}

/// The catalog being rebuilt from checkpoint and log. Files are keyed by path so that a record
/// costs what it changes, whatever the number of files.
#[derive(Default)]
struct Replay {
    flushed_seq: [u64; 3],
    /// By relative path: the order of addition, the signal, the entry.
    files: HashMap<String, (u64, Signal, ManifestEntry)>,
    next_order: u64,
}

impl Replay {
    fn add(&mut self, entry: ManifestEntry) -> Result<(), String> {
        let signal = entry.signal.parse::<Signal>()?;
        let order = self.next_order;
        self.next_order += 1;
        let path = entry.path.clone();
        if self.files.insert(path.clone(), (order, signal, entry)).is_some() {
            return Err(format!("{path} is added twice"));
        }
        Ok(())
    }

    fn apply(&mut self, record: LogRecord) -> Result<(), String> {
        match record {
            LogRecord::Flushed { signal, flushed_seq, files } => {
                let signal = signal.parse::<Signal>()?;
                let seq = &mut self.flushed_seq[slot(signal)];
                *seq = (*seq).max(flushed_seq);
                files.into_iter().try_for_each(|entry| self.add(entry))
            }
            LogRecord::Replaced { signal, removed, files } => {
                let signal = signal.parse::<Signal>()?;
                for path in removed {
                    match self.files.remove(&path) {
                        Some((_, removed_signal, _)) if removed_signal == signal => {}
                        Some(_) => return Err(format!("{path} is not a file of {signal}")),
                        // A record that removes a file the state does not have was applied to
                        // the wrong state (or twice): going on would rebuild a catalog that
                        // never existed.
                        None => return Err(format!("{path} is removed but not in the catalog")),
                    }
                }
                files.into_iter().try_for_each(|entry| self.add(entry))
            }
        }
    }

    fn finish(self, data_dir: &Path) -> StoredCatalog {
        let mut files: Vec<_> = self.files.into_values().collect();
        files.sort_unstable_by_key(|(order, _, _)| *order);
        StoredCatalog {
            flushed_seq: self.flushed_seq,
            files: files
                .into_iter()
                .map(|(_, signal, entry)| StoredFile {
                    signal,
                    path: data_dir.join(&entry.path),
                    index_dir: entry.index.map(|index| data_dir.join(index)),
                    stats: entry.stats,
                })
                .collect(),
        }
    }
}

fn log_name(generation: u64) -> String {
    format!("manifest.{generation}.log")
}

fn parse_log_name(name: &str) -> Option<u64> {
    name.strip_prefix("manifest.")?.strip_suffix(".log")?.parse().ok()
}

/// One log record framed for appending.
fn encode_record(record: &LogRecord) -> Result<Vec<u8>, String> {
    let json = serde_json::to_vec(record).map_err(|e| e.to_string())?;
    framing::encode_frame(&json)
}

/// Applies the log's records to `replay`, cutting off a torn or corrupt last record. Returns the
/// length of the valid log.
fn replay_log(path: &Path, replay: &mut Replay) -> Result<u64> {
    let corrupt = |offset: usize, reason: String| Error::Manifest {
        path: path.to_path_buf(),
        reason: format!("record at offset {offset}: {reason}"),
    };
    let (valid, records) = framing::replay(
        path,
        "manifest",
        |json| {
            let record: LogRecord = serde_json::from_slice(json).map_err(|e| e.to_string())?;
            replay.apply(record)
        },
        corrupt,
    )?;
    debug!(path = %path.display(), records, "replayed the manifest log");
    Ok(valid)
}

/// Reads checkpoint and log, deletes what a crash left behind (a stale log, a temporary
/// checkpoint) and opens the log for the next commits.
pub(crate) fn open(data_dir: &Path) -> Result<(Arc<ManifestLog>, StoredCatalog)> {
    let checkpoint_path = data_dir.join(CHECKPOINT);
    let manifest_error = |reason: String| Error::Manifest { path: checkpoint_path.clone(), reason };
    let checkpoint = match fs::read(&checkpoint_path) {
        Ok(bytes) => {
            let checkpoint: Checkpoint = serde_json::from_slice(&bytes).map_err(|e| manifest_error(e.to_string()))?;
            let bytes = u64::try_from(bytes.len()).map_err(|e| Error::Internal(e.to_string()))?;
            Some((checkpoint, bytes))
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
        Err(error) => return Err(Error::io(checkpoint_path, error)),
    };
    let log_generation = match &checkpoint {
        None => None,
        Some((checkpoint, _)) => match (checkpoint.version, checkpoint.log_generation) {
            (CHECKPOINT_VERSION, Some(generation)) => Some(generation),
            (CHECKPOINT_VERSION, None) => return Err(manifest_error("log_generation is missing".to_string())),
            (CHECKPOINT_VERSION_WITHOUT_LOG, None) => None,
            (version, _) => {
                return Err(manifest_error(format!(
                    "version {version} is not supported (expected {CHECKPOINT_VERSION_WITHOUT_LOG} or {CHECKPOINT_VERSION})"
                )));
            }
        },
    };

    // A checkpoint interrupted before its rename: the one in place is still the committed one.
    let temporary = data_dir.join(CHECKPOINT_TEMPORARY);
    if let Err(error) = fs::remove_file(&temporary)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        return Err(Error::io(temporary, error));
    }
    let mut highest_generation = log_generation.unwrap_or(0);
    let entries = fs::read_dir(data_dir).map_err(|e| Error::io(data_dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(data_dir, e))?;
        let Some(generation) = entry.file_name().to_str().and_then(parse_log_name) else {
            continue;
        };
        if checkpoint.is_none() {
            // Logs are only ever created after their checkpoint: without one, the catalog is
            // unknown, and opening it empty would delete every file as an orphan.
            return Err(Error::Manifest {
                path: entry.path(),
                reason: format!("a manifest log exists but {CHECKPOINT} does not"),
            });
        }
        highest_generation = highest_generation.max(generation);
        if Some(generation) != log_generation {
            // Superseded by the checkpoint, which already holds its changes: replaying it would
            // apply them twice.
            info!(path = %entry.path().display(), "removing a manifest log superseded by the checkpoint");
            fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
        }
    }

    let mut replay = Replay::default();
    let mut checkpoint_bytes = 0;
    if let Some((checkpoint, bytes)) = checkpoint {
        checkpoint_bytes = bytes;
        for (name, seq) in checkpoint.flushed_seq {
            let signal = name.parse::<Signal>().map_err(&manifest_error)?;
            replay.flushed_seq[slot(signal)] = seq;
        }
        for entry in checkpoint.files {
            replay.add(entry).map_err(&manifest_error)?;
        }
    }
    let log = match log_generation {
        Some(generation) => {
            let path = data_dir.join(log_name(generation));
            let log_bytes = replay_log(&path, &mut replay)?;
            let existed = path.exists();
            let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path);
            let file = file.map_err(|e| Error::io(&path, e))?;
            if !existed {
                sync_dir(data_dir)?;
            }
            Some(OpenLog { file, generation, bytes: log_bytes })
        }
        // No checkpoint yet, or one of version 1: the first commit writes one.
        None => None,
    };
    let committed_generation = log.as_ref().map(|log| log.generation);
    let manifest = ManifestLog {
        data_dir: data_dir.to_path_buf(),
        state: Mutex::new(LogState { highest_generation, committed_generation, log, checkpoint_bytes }),
    };
    Ok((Arc::new(manifest), replay.finish(data_dir)))
}

/// The log being appended to, valid up to `bytes`.
struct OpenLog {
    file: File,
    generation: u64,
    bytes: u64,
}

struct LogState {
    /// The highest generation on disk or ever attempted: a new checkpoint takes the next one,
    /// so it never names a log that may already hold records.
    highest_generation: u64,
    /// The generation of the checkpoint known to be durable, whose log is deleted once a newer
    /// checkpoint is.
    committed_generation: Option<u64>,
    /// `None` once the log cannot be appended to (none yet, or a failed write that could not be
    /// undone): the next commit is a checkpoint, which starts a new log.
    log: Option<OpenLog>,
    checkpoint_bytes: u64,
}

/// The manifest's writer. Only the store's commits (one at a time, under its `committing`
/// lock) use it, so its lock is never contended; ingest and queries never take it.
pub(crate) struct ManifestLog {
    data_dir: PathBuf,
    state: Mutex<LogState>,
}

impl ManifestLog {
    /// Whether the next change should be committed as a checkpoint: the log has outgrown the
    /// checkpoint, so replaying it would cost more than reading a fresh one.
    pub(crate) fn wants_checkpoint(&self) -> bool {
        let state = self.state.lock();
        match &state.log {
            None => true,
            Some(log) => log.bytes > state.checkpoint_bytes.max(LOG_FLOOR_BYTES),
        }
    }

    #[cfg(test)]
    pub(crate) fn sizes(&self) -> (u64, u64) {
        let state = self.state.lock();
        (state.checkpoint_bytes, state.log.as_ref().map_or(0, |log| log.bytes))
    }

    fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.data_dir).unwrap_or(path).to_string_lossy().into_owned()
    }

    fn entry(&self, file: &DataFile) -> ManifestEntry {
        ManifestEntry {
            signal: file.signal.table_name().to_string(),
            path: self.relative(&file.path),
            index: file.index_dir.as_deref().map(|dir| self.relative(dir)),
            stats: FileStats {
                size_bytes: file.size_bytes,
                index_bytes: file.index_bytes,
                num_rows: file.num_rows,
                min_time_ns: file.min_time_ns,
                max_time_ns: file.max_time_ns,
                row_group_row_counts: file.row_group_row_counts.clone(),
            },
        }
    }

    fn append(&self, record: &LogRecord, metrics: &ManifestMetrics) -> Result<()> {
        let mut state = self.state.lock();
        let Some(log) = state.log.as_mut() else {
            return Err(Error::Internal("the manifest log is closed; the change should be a checkpoint".to_string()));
        };
        let path = self.data_dir.join(log_name(log.generation));
        let frame = encode_record(record).map_err(|reason| Error::Manifest { path: path.clone(), reason })?;
        let written = log.file.write_all_at(&frame, log.bytes).and_then(|()| log.file.sync_data());
        if let Err(error) = written {
            // Part of the record may be on disk; once another record followed it, it would be
            // corruption in the middle of the log and the store would not open. Cut it off, or
            // if even that fails, append no more: the next commit starts a new log.
            let undone = log.file.set_len(log.bytes).and_then(|()| log.file.sync_data());
            if let Err(undo_error) = undone {
                warn!(path = %path.display(), error = %undo_error, "could not undo a failed manifest append; the next commit writes a checkpoint");
                state.log = None;
            }
            return Err(Error::io(path, error));
        }
        let frame_bytes = u64::try_from(frame.len()).map_err(|e| Error::Internal(e.to_string()))?;
        log.bytes += frame_bytes;
        metrics.bytes_written.inc_by(frame_bytes);
        Ok(())
    }

    /// Commits the whole catalog as a new checkpoint with a new, empty log.
    fn checkpoint(&self, flushed_seq: [u64; 3], files: &[Arc<DataFile>], metrics: &ManifestMetrics) -> Result<()> {
        let mut state = self.state.lock();
        let generation = state.highest_generation + 1;
        state.highest_generation = generation;
        let checkpoint = Checkpoint {
            version: CHECKPOINT_VERSION,
            log_generation: Some(generation),
            flushed_seq: Signal::ALL
                .into_iter()
                .map(|signal| (signal.table_name().to_string(), flushed_seq[slot(signal)]))
                .collect(),
            files: files.iter().map(|file| self.entry(file)).collect(),
        };
        let path = self.data_dir.join(CHECKPOINT);
        let temporary = self.data_dir.join(CHECKPOINT_TEMPORARY);
        let bytes = serde_json::to_vec(&checkpoint)
            .map_err(|e| Error::Manifest { path: path.clone(), reason: e.to_string() })?;
        File::create(&temporary)
            .and_then(|mut file| {
                file.write_all(&bytes)?;
                file.sync_all()
            })
            .map_err(|e| Error::io(&temporary, e))?;
        let checkpoint_bytes = u64::try_from(bytes.len()).map_err(|e| Error::Internal(e.to_string()))?;
        metrics.bytes_written.inc_by(checkpoint_bytes);
        fs::rename(&temporary, &path).map_err(|e| Error::io(&path, e))?;
        // Until the directory is synced, a power loss may bring back the old checkpoint, so the
        // old log must stay; and the log must not be appended to, since the checkpoint in place
        // may already be the new one.
        if let Err(error) = sync_dir(&self.data_dir) {
            state.log = None;
            return Err(error);
        }
        metrics.checkpoints.inc();
        let previous = state.committed_generation.replace(generation);
        state.checkpoint_bytes = checkpoint_bytes;
        state.log = None;
        debug!(generation, files = files.len(), bytes = checkpoint_bytes, "wrote a manifest checkpoint");
        // The change is durable now: a failure to prepare the next log only makes the next
        // commit a checkpoint again.
        match self.start_log(generation, previous) {
            Ok(file) => state.log = Some(OpenLog { file, generation, bytes: 0 }),
            Err(error) => {
                warn!(%error, generation, "could not start the manifest log; the next commit writes a checkpoint")
            }
        }
        Ok(())
    }

    fn start_log(&self, generation: u64, previous: Option<u64>) -> Result<File> {
        let path = self.data_dir.join(log_name(generation));
        // Truncating: the checkpoint just written holds everything, whatever a file of that
        // name might hold.
        let file =
            OpenOptions::new().create(true).truncate(true).write(true).open(&path).map_err(|e| Error::io(&path, e))?;
        if let Some(previous) = previous {
            let old = self.data_dir.join(log_name(previous));
            if let Err(error) = fs::remove_file(&old)
                && error.kind() != std::io::ErrorKind::NotFound
            {
                // Harmless: the checkpoint does not name it, and the next open deletes it.
                warn!(path = %old.display(), %error, "could not delete a superseded manifest log");
            }
        }
        // The new log's name must be durable before a record appended to it counts as committed.
        sync_dir(&self.data_dir)?;
        Ok(file)
    }
}

enum Change {
    Flushed {
        signal: Signal,
        files: Vec<Arc<DataFile>>,
        flushed_seq: u64,
    },
    Replaced {
        signal: Signal,
        removed: Vec<Arc<DataFile>>,
        files: Vec<Arc<DataFile>>,
    },
    /// The whole catalog as it will be after the change.
    Checkpoint {
        flushed_seq: [u64; 3],
        files: Vec<Arc<DataFile>>,
    },
}

/// A change to the catalog, taken under the state lock (pointers to the files, nothing else) and
/// committed (serialized, written and fsynced) outside it, before it is applied.
pub(crate) struct ManifestChange {
    log: Arc<ManifestLog>,
    change: Change,
}

impl ManifestChange {
    pub(crate) fn flushed(
        log: Arc<ManifestLog>,
        signal: Signal,
        files: Vec<Arc<DataFile>>,
        flushed_seq: u64,
    ) -> ManifestChange {
        ManifestChange { log, change: Change::Flushed { signal, files, flushed_seq } }
    }

    pub(crate) fn replaced(
        log: Arc<ManifestLog>,
        signal: Signal,
        removed: Vec<Arc<DataFile>>,
        files: Vec<Arc<DataFile>>,
    ) -> ManifestChange {
        ManifestChange { log, change: Change::Replaced { signal, removed, files } }
    }

    pub(crate) fn checkpoint(
        log: Arc<ManifestLog>,
        flushed_seq: [u64; 3],
        files: Vec<Arc<DataFile>>,
    ) -> ManifestChange {
        ManifestChange { log, change: Change::Checkpoint { flushed_seq, files } }
    }

    /// Makes the change durable: on success a reopened store sees it, on failure it does not.
    pub(crate) fn commit(self, metrics: &ManifestMetrics) -> Result<()> {
        let log = &self.log;
        let entries = |files: &[Arc<DataFile>]| files.iter().map(|file| log.entry(file)).collect();
        match self.change {
            Change::Flushed { signal, files, flushed_seq } => {
                let record =
                    LogRecord::Flushed { signal: signal.table_name().to_string(), flushed_seq, files: entries(&files) };
                log.append(&record, metrics)
            }
            Change::Replaced { signal, removed, files } => {
                let record = LogRecord::Replaced {
                    signal: signal.table_name().to_string(),
                    removed: removed.iter().map(|file| log.relative(&file.path)).collect(),
                    files: entries(&files),
                };
                log.append(&record, metrics)
            }
            Change::Checkpoint { flushed_seq, files } => log.checkpoint(flushed_seq, &files, metrics),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Catalog;

    fn stats(rows: u64) -> FileStats {
        FileStats {
            size_bytes: 1000 + rows,
            index_bytes: rows % 3,
            num_rows: rows,
            min_time_ns: 1_700_000_000_000_000_000,
            max_time_ns: 1_700_000_000_000_000_000 + i64::try_from(rows).unwrap(),
            row_group_row_counts: vec![rows],
        }
    }

    /// Everything the catalog holds, in its order, for comparing two catalogs.
    fn describe(catalog: &Catalog) -> Vec<(Signal, u64, Vec<String>)> {
        Signal::ALL
            .into_iter()
            .map(|signal| {
                let files = catalog
                    .files(signal)
                    .iter()
                    .map(|f| {
                        let stats = (f.size_bytes, f.index_bytes, f.num_rows, f.min_time_ns, f.max_time_ns);
                        format!("{:?} {:?} {stats:?} {:?}", f.path, f.index_dir, f.row_group_row_counts)
                    })
                    .collect();
                (signal, catalog.flushed_seq(signal), files)
            })
            .collect()
    }

    /// Makes data files on disk (a reopened catalog drops the files it cannot find).
    struct Files {
        dir: tempfile::TempDir,
        next: u64,
    }

    impl Files {
        fn new() -> Files {
            Files { dir: tempfile::tempdir().unwrap(), next: 0 }
        }

        fn path(&self) -> &Path {
            self.dir.path()
        }

        fn make(&mut self, signal: Signal) -> Arc<DataFile> {
            self.next += 1;
            let partition = self.dir.path().join(signal.table_name()).join("2026-11-23/05");
            fs::create_dir_all(&partition).unwrap();
            let path = partition.join(format!("{}-f-{}.parquet", 1_700_000_000_000_000_000u64 + self.next, self.next));
            fs::write(&path, b"x").unwrap();
            let index_dir = (signal == Signal::Logs).then(|| path.with_extension("index"));
            if let Some(dir) = &index_dir {
                fs::create_dir_all(dir).unwrap();
            }
            Arc::new(DataFile::new(signal, path, index_dir, stats(self.next)))
        }
    }

    fn flush(catalog: &mut Catalog, metrics: &ManifestMetrics, signal: Signal, files: Vec<Arc<DataFile>>, seq: u64) {
        catalog.with_flushed(signal, &files, seq).commit(metrics).unwrap();
        catalog.apply_flushed(signal, files, seq);
    }

    fn replace(
        catalog: &mut Catalog,
        metrics: &ManifestMetrics,
        signal: Signal,
        inputs: &[Arc<DataFile>],
        outputs: Vec<Arc<DataFile>>,
    ) {
        catalog.with_replaced(signal, inputs, &outputs).commit(metrics).unwrap();
        catalog.apply_replaced(signal, inputs, outputs);
    }

    /// One step of a mixed workload: flushes of each signal, and compactions of two files into one.
    fn step(catalog: &mut Catalog, files: &mut Files, metrics: &ManifestMetrics, i: u64) {
        let signal = Signal::ALL[usize::try_from(i % 3).unwrap()];
        if i.is_multiple_of(2) || catalog.files(signal).len() < 2 {
            let new = vec![files.make(signal), files.make(signal)];
            flush(catalog, metrics, signal, new, i);
        } else {
            let inputs = catalog.files(signal)[..2].to_vec();
            let output = files.make(signal);
            replace(catalog, metrics, signal, &inputs, vec![output]);
        }
    }

    fn log_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .filter(|name| parse_log_name(name).is_some())
            .collect();
        names.sort();
        names
    }

    fn current_log(dir: &Path) -> PathBuf {
        let logs = log_files(dir);
        assert_eq!(logs.len(), 1, "{logs:?}");
        dir.join(&logs[0])
    }

    #[test]
    fn replaying_checkpoint_and_log_gives_the_catalog_in_memory() {
        let mut files = Files::new();
        let metrics = ManifestMetrics::unregistered();
        let mut catalog = Catalog::open(files.path()).unwrap();
        for i in 0..1500 {
            step(&mut catalog, &mut files, &metrics, i);
            if i % 250 == 7 {
                let reopened = Catalog::open(files.path()).unwrap();
                assert_eq!(describe(&reopened), describe(&catalog), "after commit {i}");
            }
        }
        assert!(metrics.checkpoints.get() >= 3, "the workload crosses checkpoints: {}", metrics.checkpoints.get());
        let (_, log_bytes) = catalog.manifest().sizes();
        assert!(log_bytes > 0, "and ends with records in the log");
        let expected = describe(&catalog);
        drop(catalog);
        assert_eq!(describe(&Catalog::open(files.path()).unwrap()), expected);
        assert_eq!(log_files(files.path()).len(), 1, "one log: stale ones are deleted");
    }

    #[test]
    fn a_torn_last_record_is_dropped_and_the_store_reopens() {
        let mut files = Files::new();
        let metrics = ManifestMetrics::unregistered();
        let mut catalog = Catalog::open(files.path()).unwrap();
        for i in 0..4 {
            step(&mut catalog, &mut files, &metrics, i);
        }
        let before_last = describe(&catalog);
        let log = current_log(files.path());
        let valid_len = fs::metadata(&log).unwrap().len();
        let torn_files = vec![files.make(Signal::Metrics), files.make(Signal::Metrics)];
        let torn_paths: Vec<PathBuf> = torn_files.iter().map(|file| file.path.clone()).collect();
        flush(&mut catalog, &metrics, Signal::Metrics, torn_files, 40);
        let full_len = fs::metadata(&log).unwrap().len();
        assert!(full_len > valid_len + 40);
        drop(catalog);

        // A crash mid-append: only part of the last record reached the disk.
        let torn = OpenOptions::new().write(true).open(&log).unwrap();
        torn.set_len(valid_len + 30).unwrap();
        drop(torn);
        let mut catalog = Catalog::open(files.path()).unwrap();
        assert_eq!(describe(&catalog), before_last);
        assert_eq!(fs::metadata(&log).unwrap().len(), valid_len, "the torn record is cut off");
        assert!(torn_paths.iter().all(|path| !path.exists()), "the files it named are orphans, removed");

        // Appends after the cut read back, with nothing of the torn record between them.
        let new = vec![files.make(Signal::Logs)];
        flush(&mut catalog, &metrics, Signal::Logs, new, 50);
        let expected = describe(&catalog);
        drop(catalog);
        assert_eq!(describe(&Catalog::open(files.path()).unwrap()), expected);

        // A whole last record with a flipped byte is a torn write too (its checksum fails).
        let mut bytes = fs::read(&log).unwrap();
        let last = bytes.len() - 5;
        bytes[last] ^= 0x01;
        fs::write(&log, &bytes).unwrap();
        let catalog = Catalog::open(files.path()).unwrap();
        assert_eq!(describe(&catalog), before_last);
        assert_eq!(fs::metadata(&log).unwrap().len(), valid_len);
    }

    #[test]
    fn a_corrupt_record_followed_by_valid_ones_is_an_error() {
        let mut files = Files::new();
        let metrics = ManifestMetrics::unregistered();
        let mut catalog = Catalog::open(files.path()).unwrap();
        for i in 0..6 {
            step(&mut catalog, &mut files, &metrics, i);
        }
        let kept = catalog.files(Signal::Logs)[0].path.clone();
        drop(catalog);
        let log = current_log(files.path());
        let mut bytes = fs::read(&log).unwrap();
        let original = bytes.clone();
        // Inside the first record's JSON (the first commit was the checkpoint).
        bytes[18 + 10] ^= 0x20;
        fs::write(&log, &bytes).unwrap();
        let error = Catalog::open(files.path()).err().expect("a corrupt record in the middle is an error");
        assert!(
            matches!(&error, Error::Manifest { path, reason } if *path == log && reason.contains("offset 0")),
            "{error}"
        );
        assert_eq!(fs::read(&log).unwrap(), bytes, "and nothing is cut off");
        assert!(kept.exists(), "nor is any file removed as an orphan");

        // A record whose checksum matches but that does not apply is an error even when last.
        let record =
            LogRecord::Replaced { signal: "logs".to_string(), removed: vec!["nowhere".to_string()], files: vec![] };
        let mut bytes = original;
        bytes.extend(encode_record(&record).unwrap());
        fs::write(&log, &bytes).unwrap();
        let error = Catalog::open(files.path()).err().expect("a valid record that does not apply is an error");
        assert!(matches!(&error, Error::Manifest { reason, .. } if reason.contains("nowhere")), "{error}");
    }

    /// Commits until the next change is a checkpoint, and returns the log it will supersede.
    fn fill_log(catalog: &mut Catalog, files: &mut Files, metrics: &ManifestMetrics) -> (PathBuf, Vec<u8>) {
        // The first commit of a new store is its first checkpoint.
        step(catalog, files, metrics, 0);
        let mut i = 1;
        while !catalog.manifest().wants_checkpoint() {
            step(catalog, files, metrics, i);
            i += 1;
        }
        let log = current_log(files.path());
        let bytes = fs::read(&log).unwrap();
        (log, bytes)
    }

    #[test]
    fn a_crash_after_a_checkpoint_reopens_without_replaying_the_old_log() {
        for keep_new_log in [true, false] {
            let mut files = Files::new();
            let metrics = ManifestMetrics::unregistered();
            let mut catalog = Catalog::open(files.path()).unwrap();
            let (old_log, old_bytes) = fill_log(&mut catalog, &mut files, &metrics);
            let checkpoints = metrics.checkpoints.get();
            step(&mut catalog, &mut files, &metrics, 1);
            assert_eq!(metrics.checkpoints.get(), checkpoints + 1);
            let new_log = current_log(files.path());
            assert_ne!(new_log, old_log);
            assert_eq!(fs::metadata(&new_log).unwrap().len(), 0, "a checkpoint starts an empty log");
            let expected = describe(&catalog);
            drop(catalog);

            // A crash after the checkpoint's rename and before the old log was deleted (and
            // possibly before the new one was created).
            fs::write(&old_log, &old_bytes).unwrap();
            if !keep_new_log {
                fs::remove_file(&new_log).unwrap();
            }
            let mut catalog = Catalog::open(files.path()).unwrap();
            assert_eq!(describe(&catalog), expected, "new log kept: {keep_new_log}");
            assert!(!old_log.exists(), "the stale log is deleted");
            assert_eq!(current_log(files.path()), new_log);

            step(&mut catalog, &mut files, &metrics, 2);
            let expected = describe(&catalog);
            drop(catalog);
            assert_eq!(describe(&Catalog::open(files.path()).unwrap()), expected);
        }
    }

    #[test]
    fn a_crash_before_a_checkpoints_rename_keeps_the_old_checkpoint_and_log() {
        let mut files = Files::new();
        let metrics = ManifestMetrics::unregistered();
        let mut catalog = Catalog::open(files.path()).unwrap();
        fill_log(&mut catalog, &mut files, &metrics);
        let expected = describe(&catalog);
        drop(catalog);
        fs::write(files.path().join(CHECKPOINT_TEMPORARY), b"{\"version\":2,\"log_gen").unwrap();
        assert_eq!(describe(&Catalog::open(files.path()).unwrap()), expected);
        assert!(!files.path().join(CHECKPOINT_TEMPORARY).exists());
    }

    #[test]
    fn a_version_1_manifest_opens_and_its_first_commit_is_a_checkpoint() {
        let mut files = Files::new();
        let old = files.make(Signal::Metrics);
        let v1 = serde_json::json!({
            "version": 1,
            "flushed_seq": {"logs": 3, "metrics": 9, "spans": 0},
            "files": [{
                "signal": "metrics",
                "path": old.path.strip_prefix(files.path()).unwrap().to_str().unwrap(),
                "index": null,
                "size_bytes": 1001, "num_rows": 1, "min_time_ns": 5, "max_time_ns": 6,
                "row_group_row_counts": [1],
            }],
        });
        fs::write(files.path().join(CHECKPOINT), serde_json::to_vec(&v1).unwrap()).unwrap();
        let metrics = ManifestMetrics::unregistered();
        let mut catalog = Catalog::open(files.path()).unwrap();
        assert_eq!((catalog.flushed_seq(Signal::Logs), catalog.flushed_seq(Signal::Metrics)), (3, 9));
        assert_eq!(catalog.files(Signal::Metrics).len(), 1);
        assert_eq!(catalog.files(Signal::Metrics)[0].min_time_ns, 5);
        assert!(log_files(files.path()).is_empty(), "opening writes nothing");

        let new = files.make(Signal::Metrics);
        flush(&mut catalog, &metrics, Signal::Metrics, vec![new], 12);
        assert_eq!(metrics.checkpoints.get(), 1, "an older Wake must not read a checkpoint whose log it ignores");
        let checkpoint: Checkpoint = serde_json::from_slice(&fs::read(files.path().join(CHECKPOINT)).unwrap()).unwrap();
        assert_eq!((checkpoint.version, checkpoint.log_generation, checkpoint.files.len()), (2, Some(1), 2));
        assert_eq!(log_files(files.path()), vec!["manifest.1.log".to_string()]);
        let expected = describe(&catalog);
        drop(catalog);
        assert_eq!(describe(&Catalog::open(files.path()).unwrap()), expected);
    }

    #[test]
    fn a_log_without_a_checkpoint_is_refused() {
        let files = Files::new();
        fs::write(files.path().join(log_name(4)), b"").unwrap();
        assert!(matches!(Catalog::open(files.path()), Err(Error::Manifest { .. })));
    }

    #[test]
    fn manifest_writes_grow_linearly_with_commits_not_with_files() {
        const LIVE_FILES: usize = 1000;
        const COMMITS: u64 = 3000;
        let mut files = Files::new();
        let metrics = ManifestMetrics::unregistered();
        let mut catalog = Catalog::open(files.path()).unwrap();
        let initial: Vec<_> = (0..LIVE_FILES).map(|_| files.make(Signal::Spans)).collect();
        flush(&mut catalog, &metrics, Signal::Spans, initial, 1);
        let (checkpoint_bytes, _) = catalog.manifest().sizes();
        let entry_bytes = checkpoint_bytes / u64::try_from(LIVE_FILES).unwrap();
        let written_before = metrics.bytes_written.get();

        let mut max_log = 0;
        let mut max_checkpoint = 0;
        for i in 0..COMMITS {
            // Alternately a flush of one file and a compaction of two into one: the store stays at
            // about LIVE_FILES files.
            if i.is_multiple_of(2) {
                let new = files.make(Signal::Spans);
                flush(&mut catalog, &metrics, Signal::Spans, vec![new], i + 2);
            } else {
                let inputs = catalog.files(Signal::Spans)[..2].to_vec();
                let output = files.make(Signal::Spans);
                replace(&mut catalog, &metrics, Signal::Spans, &inputs, vec![output]);
            }
            let (checkpoint, log) = catalog.manifest().sizes();
            max_checkpoint = max_checkpoint.max(checkpoint);
            max_log = max_log.max(log);
        }
        assert_eq!(catalog.files(Signal::Spans).len(), LIVE_FILES);
        let written = metrics.bytes_written.get() - written_before;
        // Rewriting the manifest at every commit would write COMMITS × LIVE_FILES entries.
        let full_rewrites = COMMITS * checkpoint_bytes;
        assert!(
            written < 4 * COMMITS * entry_bytes,
            "{written} bytes for {COMMITS} commits of ~{entry_bytes}-byte entries (full rewrites: {full_rewrites})"
        );
        assert!(written * 100 < full_rewrites, "{written} vs {full_rewrites}");
        assert!(metrics.checkpoints.get() >= 2, "the log was checkpointed");
        assert!(max_checkpoint < checkpoint_bytes + checkpoint_bytes / 10, "{max_checkpoint} vs {checkpoint_bytes}");
        assert!(max_log <= max_checkpoint.max(LOG_FLOOR_BYTES) + 4 * entry_bytes, "{max_log}");

        let expected = describe(&catalog);
        drop(catalog);
        assert_eq!(describe(&Catalog::open(files.path()).unwrap()), expected);
    }
}
