//! The catalog: which Parquet files (and indexes) make up each table, and up to which WAL
//! sequence number each signal is in them.
//!
//! It is persisted by [`crate::manifest`]: a checkpoint plus a log of changes, each change
//! durable before it is visible. A file is part of the store exactly when the manifest names it:
//! files a crash left behind before their manifest commit are deleted at start-up, and a file
//! replaced by compaction is deleted only when the last query holding it lets go (see
//! [`DataFile`]'s `Drop`).

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::error::Result;
use crate::manifest::{self, ManifestChange, ManifestLog};
use crate::schema::Signal;

pub(crate) const PARQUET_EXTENSION: &str = "parquet";
pub(crate) const INDEX_EXTENSION: &str = "index";

/// One Parquet file of a table, with what queries need to prune it without opening it.
#[derive(Debug)]
pub struct DataFile {
    pub signal: Signal,
    /// Absolute path of the Parquet file.
    pub path: PathBuf,
    /// The tantivy index over `body`, for log files written with one.
    pub index_dir: Option<PathBuf>,
    pub size_bytes: u64,
    pub index_bytes: u64,
    pub num_rows: u64,
    /// Bounds of the signal's time column, inclusive.
    pub min_time_ns: i64,
    pub max_time_ns: i64,
    pub row_group_row_counts: Vec<u64>,
    /// When this process wrote the file or found it at start-up: compaction waits for a
    /// partition to stop receiving files (see `StoreConfig::compaction_settle_secs`).
    pub(crate) known_since: Instant,
    /// Set once compaction replaced the file; the last holder deletes it.
    retired: AtomicBool,
}

impl DataFile {
    pub(crate) fn new(signal: Signal, path: PathBuf, index_dir: Option<PathBuf>, stats: FileStats) -> DataFile {
        DataFile {
            signal,
            path,
            index_dir,
            size_bytes: stats.size_bytes,
            index_bytes: stats.index_bytes,
            num_rows: stats.num_rows,
            min_time_ns: stats.min_time_ns,
            max_time_ns: stats.max_time_ns,
            row_group_row_counts: stats.row_group_row_counts,
            known_since: Instant::now(),
            retired: AtomicBool::new(false),
        }
    }

    pub(crate) fn retire(&self) {
        self.retired.store(true, Ordering::SeqCst);
    }

    /// The hour partition directory the file lives in.
    pub(crate) fn partition_dir(&self) -> Option<&Path> {
        self.path.parent()
    }
}

impl Drop for DataFile {
    fn drop(&mut self) {
        if self.retired.load(Ordering::SeqCst) {
            remove_file_and_index(&self.path, self.index_dir.as_deref());
        }
    }
}

pub(crate) fn remove_file_and_index(path: &Path, index_dir: Option<&Path>) {
    if let Err(error) = fs::remove_file(path)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        warn!(path = %path.display(), %error, "could not delete replaced parquet file");
    }
    if let Some(dir) = index_dir
        && let Err(error) = fs::remove_dir_all(dir)
        && error.kind() != std::io::ErrorKind::NotFound
    {
        warn!(path = %dir.display(), %error, "could not delete replaced index");
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FileStats {
    pub size_bytes: u64,
    #[serde(default)]
    pub index_bytes: u64,
    pub num_rows: u64,
    pub min_time_ns: i64,
    pub max_time_ns: i64,
    pub row_group_row_counts: Vec<u64>,
}

/// The in-memory catalog. A change is taken as a [`ManifestChange`] (`with_*`), committed, then
/// applied (`apply_*`).
pub(crate) struct Catalog {
    data_dir: PathBuf,
    files: [Vec<Arc<DataFile>>; 3],
    flushed_seq: [u64; 3],
    manifest: Arc<ManifestLog>,
}

pub(crate) fn slot(signal: Signal) -> usize {
    match signal {
        Signal::Logs => 0,
        Signal::Metrics => 1,
        Signal::Spans => 2,
    }
}

impl Catalog {
    /// Loads the manifest (an absent one means an empty store) and removes files it does not name.
    pub(crate) fn open(data_dir: &Path) -> Result<Catalog> {
        let (manifest, stored) = manifest::open(data_dir)?;
        let mut catalog = Catalog {
            data_dir: data_dir.to_path_buf(),
            files: Default::default(),
            flushed_seq: stored.flushed_seq,
            manifest,
        };
        for file in stored.files {
            if !file.path.exists() {
                // Never silently: a missing file is lost data, and the operator must know.
                warn!(path = %file.path.display(), "file named by the manifest is missing; dropped from the catalog");
                continue;
            }
            let index_dir = file.index_dir.filter(|dir| dir.exists());
            catalog.files[slot(file.signal)].push(Arc::new(DataFile::new(
                file.signal,
                file.path,
                index_dir,
                file.stats,
            )));
        }
        catalog.remove_orphans()?;
        Ok(catalog)
    }

    fn remove_orphans(&self) -> Result<()> {
        let known: HashSet<PathBuf> = self
            .files
            .iter()
            .flatten()
            .flat_map(|file| std::iter::once(file.path.clone()).chain(file.index_dir.clone()))
            .collect();
        for signal in Signal::ALL {
            let root = self.data_dir.join(signal.table_name());
            let mut stack = vec![root];
            while let Some(dir) = stack.pop() {
                let Ok(entries) = fs::read_dir(&dir) else {
                    continue;
                };
                for entry in entries.flatten() {
                    let path = entry.path();
                    let extension = path.extension().and_then(|e| e.to_str());
                    let is_data = matches!(extension, Some(PARQUET_EXTENSION) | Some(INDEX_EXTENSION) | Some("tmp"));
                    if is_data && !known.contains(&path) {
                        info!(path = %path.display(), "removing file left by an interrupted flush or compaction");
                        remove_file_and_index(&path, path.is_dir().then_some(path.as_path()));
                    } else if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) && !is_data {
                        stack.push(path);
                    }
                }
            }
        }
        Ok(())
    }

    pub(crate) fn files(&self, signal: Signal) -> &[Arc<DataFile>] {
        &self.files[slot(signal)]
    }

    pub(crate) fn flushed_seq(&self, signal: Signal) -> u64 {
        self.flushed_seq[slot(signal)]
    }

    pub(crate) fn max_flushed_seq(&self) -> u64 {
        self.flushed_seq.iter().copied().max().unwrap_or(0)
    }

    #[cfg(test)]
    pub(crate) fn manifest(&self) -> &ManifestLog {
        &self.manifest
    }

    /// Adds a flush's files and records that the signal is in Parquet up to `flushed_seq`.
    /// On failure nothing changes, in memory or on disk.
    #[cfg(test)]
    pub(crate) fn add_flushed(&mut self, signal: Signal, files: Vec<Arc<DataFile>>, flushed_seq: u64) -> Result<()> {
        self.with_flushed(signal, &files, flushed_seq).commit(&manifest::ManifestMetrics::unregistered())?;
        self.apply_flushed(signal, files, flushed_seq);
        Ok(())
    }

    /// Swaps compacted inputs for their output.
    /// On failure nothing changes, in memory or on disk.
    #[cfg(test)]
    pub(crate) fn replace(
        &mut self,
        signal: Signal,
        inputs: &[Arc<DataFile>],
        outputs: Vec<Arc<DataFile>>,
    ) -> Result<()> {
        self.with_replaced(signal, inputs, &outputs).commit(&manifest::ManifestMetrics::unregistered())?;
        self.apply_replaced(signal, inputs, outputs);
        Ok(())
    }

    /// The manifest change that adds a flush's `files`: to be committed (written and fsynced)
    /// before [`Catalog::apply_flushed`], and outside any lock that ingest or queries take.
    /// Taking it copies the new files' pointers, or, when the manifest is due a checkpoint
    /// (once per O(files) commits), every file's pointer.
    pub(crate) fn with_flushed(&self, signal: Signal, files: &[Arc<DataFile>], flushed_seq: u64) -> ManifestChange {
        if !self.manifest.wants_checkpoint() {
            return ManifestChange::flushed(self.manifest.clone(), signal, files.to_vec(), flushed_seq);
        }
        let mut after = self.files.clone();
        after[slot(signal)].extend(files.iter().cloned());
        let mut after_seq = self.flushed_seq;
        after_seq[slot(signal)] = after_seq[slot(signal)].max(flushed_seq);
        ManifestChange::checkpoint(self.manifest.clone(), after_seq, after.into_iter().flatten().collect())
    }

    /// A checkpoint of the catalog as it is.
    pub(crate) fn with_checkpoint(&self) -> ManifestChange {
        ManifestChange::checkpoint(
            self.manifest.clone(),
            self.flushed_seq,
            self.files.iter().flatten().cloned().collect(),
        )
    }

    /// The manifest change that swaps compacted `inputs` for their `outputs`.
    pub(crate) fn with_replaced(
        &self,
        signal: Signal,
        inputs: &[Arc<DataFile>],
        outputs: &[Arc<DataFile>],
    ) -> ManifestChange {
        if !self.manifest.wants_checkpoint() {
            return ManifestChange::replaced(self.manifest.clone(), signal, inputs.to_vec(), outputs.to_vec());
        }
        let mut after = self.files.clone();
        let inputs: HashSet<*const DataFile> = inputs.iter().map(Arc::as_ptr).collect();
        after[slot(signal)].retain(|file| !inputs.contains(&Arc::as_ptr(file)));
        after[slot(signal)].extend(outputs.iter().cloned());
        ManifestChange::checkpoint(self.manifest.clone(), self.flushed_seq, after.into_iter().flatten().collect())
    }

    /// Makes a committed [`Catalog::with_flushed`] visible.
    pub(crate) fn apply_flushed(&mut self, signal: Signal, files: Vec<Arc<DataFile>>, flushed_seq: u64) {
        self.files[slot(signal)].extend(files);
        self.flushed_seq[slot(signal)] = self.flushed_seq[slot(signal)].max(flushed_seq);
    }

    /// Makes a committed [`Catalog::with_replaced`] visible; the inputs are deleted once no
    /// query holds them.
    pub(crate) fn apply_replaced(&mut self, signal: Signal, inputs: &[Arc<DataFile>], outputs: Vec<Arc<DataFile>>) {
        let replaced: HashSet<*const DataFile> = inputs.iter().map(Arc::as_ptr).collect();
        self.files[slot(signal)].retain(|file| !replaced.contains(&Arc::as_ptr(file)));
        self.files[slot(signal)].extend(outputs);
        for input in inputs {
            input.retire();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats() -> FileStats {
        FileStats {
            size_bytes: 3,
            index_bytes: 0,
            num_rows: 1,
            min_time_ns: 1,
            max_time_ns: 2,
            row_group_row_counts: vec![1],
        }
    }

    #[test]
    fn manifest_round_trips_and_orphans_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let partition = dir.path().join("logs/2026-11-23/05");
        fs::create_dir_all(&partition).unwrap();
        let kept = partition.join("a.parquet");
        let orphan = partition.join("b.parquet");
        let orphan_index = partition.join("b.index");
        let mut catalog = Catalog::open(dir.path()).unwrap();
        fs::write(&kept, b"abc").unwrap();
        fs::write(&orphan, b"abc").unwrap();
        fs::create_dir_all(&orphan_index).unwrap();
        let file = Arc::new(DataFile::new(Signal::Logs, kept.clone(), None, stats()));
        catalog.add_flushed(Signal::Logs, vec![file], 42).unwrap();
        drop(catalog);

        let catalog = Catalog::open(dir.path()).unwrap();
        assert_eq!(catalog.flushed_seq(Signal::Logs), 42);
        assert_eq!(catalog.flushed_seq(Signal::Spans), 0);
        assert_eq!(catalog.files(Signal::Logs).len(), 1);
        assert_eq!(catalog.files(Signal::Logs)[0].path, kept);
        assert!(kept.exists());
        assert!(!orphan.exists() && !orphan_index.exists());
    }

    #[test]
    fn a_change_is_durable_before_it_is_visible() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.parquet");
        fs::write(&path, b"abc").unwrap();
        let mut catalog = Catalog::open(dir.path()).unwrap();
        let file = Arc::new(DataFile::new(Signal::Metrics, path.clone(), None, stats()));
        let metrics = manifest::ManifestMetrics::unregistered();
        let change = catalog.with_flushed(Signal::Metrics, std::slice::from_ref(&file), 7);
        assert!(catalog.files(Signal::Metrics).is_empty(), "taking a change changes nothing");
        change.commit(&metrics).unwrap();
        // On disk already, in memory not yet: a crash here loses nothing (the WAL still holds
        // the rows up to 7) and a reopened catalog knows the file.
        assert!(catalog.files(Signal::Metrics).is_empty());
        let reopened = Catalog::open(dir.path()).unwrap();
        assert_eq!((reopened.files(Signal::Metrics).len(), reopened.flushed_seq(Signal::Metrics)), (1, 7));
        catalog.apply_flushed(Signal::Metrics, vec![file.clone()], 7);
        assert_eq!(catalog.files(Signal::Metrics).len(), 1);

        let change = catalog.with_replaced(Signal::Metrics, std::slice::from_ref(&file), &[]);
        change.commit(&metrics).unwrap();
        assert_eq!(Catalog::open(dir.path()).unwrap().files(Signal::Metrics).len(), 0);
        catalog.apply_replaced(Signal::Metrics, std::slice::from_ref(&file), vec![]);
        assert!(catalog.files(Signal::Metrics).is_empty());
        drop(file);
        assert!(!path.exists(), "a replaced file goes when the last holder lets go");
    }

    #[test]
    fn replaced_files_are_deleted_when_the_last_reader_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.parquet");
        fs::write(&path, b"x").unwrap();
        let mut catalog = Catalog::open(dir.path()).unwrap();
        let old = Arc::new(DataFile::new(Signal::Spans, path.clone(), None, stats()));
        catalog.add_flushed(Signal::Spans, vec![old.clone()], 1).unwrap();
        let reader = old.clone();
        catalog.replace(Signal::Spans, std::slice::from_ref(&old), vec![]).unwrap();
        drop(old);
        assert!(path.exists(), "a query still holds it");
        drop(reader);
        assert!(!path.exists());
    }
}
