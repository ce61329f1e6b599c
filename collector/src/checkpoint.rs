//! Where each log file was read up to, as far as the store has acknowledged.
//!
//! A file is identified by device + inode plus a fingerprint of its first bytes
//! ([`FileId`]): the inode alone is reused as soon as a rotated file is deleted, and a reused
//! inode must neither skip the new file's first bytes nor repeat the old file's. Checkpoints
//! are written only after the store acknowledged the batch that carried the lines, as one JSON
//! file replaced atomically (write, fsync, rename, fsync the directory), so a crash at any
//! moment leaves either the old or the new state.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// How many leading bytes identify a file's content. A CRI or Docker line starts with a
/// nanosecond timestamp, so two files agree on this many bytes only if they are the same file.
pub const FINGERPRINT_BYTES: u64 = 256;

/// The checksum of a file's first `len` bytes. `len` is below [`FINGERPRINT_BYTES`] while the
/// file is that short; such a fingerprint is upgraded as the file grows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fingerprint {
    pub len: u64,
    pub crc32: u32,
}

impl Fingerprint {
    /// The fingerprint of the first `min(len, FINGERPRINT_BYTES)` bytes of `file`.
    pub fn of(file: &File, len: u64) -> io::Result<Fingerprint> {
        let len = len.min(FINGERPRINT_BYTES);
        let mut buf = vec![0; len as usize];
        let mut filled = 0;
        while filled < buf.len() {
            match file.read_at(&mut buf[filled..], filled as u64)? {
                0 => break,
                n => filled += n,
            }
        }
        buf.truncate(filled);
        Ok(Fingerprint { len: filled as u64, crc32: crc32fast::hash(&buf) })
    }

    pub fn is_complete(&self) -> bool {
        self.len >= FINGERPRINT_BYTES
    }

    /// Whether `file` still starts with the bytes this fingerprint was taken of.
    pub fn matches(&self, file: &File) -> io::Result<bool> {
        Ok(Fingerprint::of(file, self.len)? == *self)
    }
}

/// Device and inode of an open file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    pub fn of(metadata: &std::fs::Metadata) -> FileId {
        FileId { dev: metadata.dev(), ino: metadata.ino() }
    }

    fn key(&self) -> String {
        format!("{}:{}", self.dev, self.ino)
    }
}

/// The acknowledged position in one file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    pub id: FileId,
    pub fingerprint: Fingerprint,
    /// Every byte before this offset is acknowledged (and ends at a line boundary).
    pub offset: u64,
    /// Last path the file was seen under, for operators and for finding rotated files.
    pub path: PathBuf,
    /// Seconds since the epoch of the last update, for expiry.
    pub updated_unix_secs: u64,
}

#[derive(Default, Serialize, Deserialize)]
struct CheckpointFile {
    version: u32,
    checkpoints: Vec<Checkpoint>,
}

/// The checkpoints of every file, and the file that keeps them.
pub struct Checkpoints {
    path: PathBuf,
    by_id: HashMap<String, Checkpoint>,
}

const FILE_NAME: &str = "checkpoints.json";

impl Checkpoints {
    /// Loads the checkpoints of `state_dir`, creating the directory if needed. A checkpoint file
    /// that cannot be parsed is an error rather than a silent restart from zero, which would
    /// re-send every log on the node.
    pub fn open(state_dir: &Path) -> io::Result<Checkpoints> {
        std::fs::create_dir_all(state_dir)?;
        let path = state_dir.join(FILE_NAME);
        let by_id = match std::fs::read(&path) {
            Ok(bytes) => {
                let file: CheckpointFile = serde_json::from_slice(&bytes).map_err(|error| {
                    io::Error::new(io::ErrorKind::InvalidData, format!("{}: {error}", path.display()))
                })?;
                file.checkpoints.into_iter().map(|c| (c.id.key(), c)).collect()
            }
            Err(error) if error.kind() == io::ErrorKind::NotFound => HashMap::new(),
            Err(error) => return Err(error),
        };
        Ok(Checkpoints { path, by_id })
    }

    /// Where to resume reading `file`: the checkpointed offset if the checkpoint is of this very
    /// content (inode and fingerprint agree, and the file is not shorter than the offset).
    pub fn resume_offset(&self, id: FileId, file: &File, size: u64) -> io::Result<Option<u64>> {
        let Some(checkpoint) = self.by_id.get(&id.key()) else { return Ok(None) };
        if checkpoint.offset > size || !checkpoint.fingerprint.matches(file)? {
            return Ok(None);
        }
        Ok(Some(checkpoint.offset))
    }

    pub fn get(&self, id: FileId) -> Option<&Checkpoint> {
        self.by_id.get(&id.key())
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Records an acknowledged position (not yet persisted: see [`Checkpoints::persist`]).
    pub fn update(&mut self, checkpoint: Checkpoint) {
        self.by_id.insert(checkpoint.id.key(), checkpoint);
    }

    /// Forgets a file that was read to its end and released.
    pub fn remove(&mut self, id: FileId) {
        self.by_id.remove(&id.key());
    }

    /// Forgets checkpoints not updated for `ttl` whose file is not `live`: the file is gone,
    /// and keeping its entry forever would let a reused inode match it by chance.
    pub fn expire(&mut self, ttl: Duration, live: impl Fn(FileId) -> bool) -> usize {
        let cutoff = unix_secs(crate::time::now()).saturating_sub(ttl.as_secs());
        let before = self.by_id.len();
        self.by_id.retain(|_, c| live(c.id) || c.updated_unix_secs >= cutoff);
        before - self.by_id.len()
    }

    /// Writes every checkpoint durably: a temporary file, fsync, rename over the old file, fsync
    /// of the directory.
    pub fn persist(&self) -> io::Result<()> {
        let mut checkpoints: Vec<Checkpoint> = self.by_id.values().cloned().collect();
        checkpoints.sort_by(|a, b| a.path.cmp(&b.path));
        let bytes = serde_json::to_vec_pretty(&CheckpointFile { version: 1, checkpoints })
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
        let temporary = self.path.with_extension("json.tmp");
        let mut file = File::create(&temporary)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temporary, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}

pub fn unix_secs(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checkpoint(file: &File, path: &Path, offset: u64) -> Checkpoint {
        let metadata = file.metadata().unwrap();
        Checkpoint {
            id: FileId::of(&metadata),
            fingerprint: Fingerprint::of(file, metadata.len()).unwrap(),
            offset,
            path: path.to_path_buf(),
            updated_unix_secs: unix_secs(crate::time::now()),
        }
    }

    #[test]
    fn persisted_checkpoints_resume_only_the_same_content() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        std::fs::write(&log, "2026-11-23T00:00:00.000000001Z stdout F first\n").unwrap();
        let file = File::open(&log).unwrap();
        let size = file.metadata().unwrap().len();

        let mut checkpoints = Checkpoints::open(&dir.path().join("state")).unwrap();
        checkpoints.update(checkpoint(&file, &log, size));
        checkpoints.persist().unwrap();

        let reopened = Checkpoints::open(&dir.path().join("state")).unwrap();
        let id = FileId::of(&file.metadata().unwrap());
        assert_eq!(reopened.resume_offset(id, &file, size).unwrap(), Some(size));

        // Same inode, different first bytes (the inode was reused, or the file rewritten): start over.
        std::fs::write(&log, "2026-11-23T00:00:09.000000001Z stdout F other content, longer\n").unwrap();
        let file = File::open(&log).unwrap();
        let id_now = FileId::of(&file.metadata().unwrap());
        let size_now = file.metadata().unwrap().len();
        if id_now == id {
            assert_eq!(reopened.resume_offset(id_now, &file, size_now).unwrap(), None);
        }
    }

    #[test]
    fn a_truncated_file_does_not_resume_past_its_end() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        std::fs::write(&log, "x".repeat(1000)).unwrap();
        let file = File::open(&log).unwrap();
        let mut checkpoints = Checkpoints::open(dir.path()).unwrap();
        checkpoints.update(checkpoint(&file, &log, 1000));
        let id = FileId::of(&file.metadata().unwrap());
        assert_eq!(checkpoints.resume_offset(id, &file, 500).unwrap(), None);
    }

    #[test]
    fn a_corrupt_checkpoint_file_is_an_error_not_a_silent_reset() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE_NAME), "{not json").unwrap();
        let error = Checkpoints::open(dir.path()).err().expect("an error");
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn old_checkpoints_of_gone_files_expire() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        std::fs::write(&log, "abc\n").unwrap();
        let file = File::open(&log).unwrap();
        let mut checkpoints = Checkpoints::open(dir.path()).unwrap();
        let mut old = checkpoint(&file, &log, 4);
        old.updated_unix_secs -= 7200;
        checkpoints.update(old.clone());
        assert_eq!(checkpoints.expire(Duration::from_secs(3600), |id| id == old.id), 0, "live files stay");
        assert_eq!(checkpoints.expire(Duration::from_secs(3600), |_| false), 1);
        assert!(checkpoints.is_empty());
    }

    #[test]
    fn short_fingerprints_grow_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("0.log");
        std::fs::write(&log, "short\n").unwrap();
        let file = File::open(&log).unwrap();
        let short = Fingerprint::of(&file, 6).unwrap();
        assert!(!short.is_complete());
        std::fs::OpenOptions::new().append(true).open(&log).unwrap().write_all(&[b'y'; 400]).unwrap();
        assert!(short.matches(&file).unwrap(), "a prefix still matches");
        assert!(Fingerprint::of(&file, 406).unwrap().is_complete());
    }
}
