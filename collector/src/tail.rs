//! Tailing one log file through its whole life: growth, truncation, rename, deletion.
//!
//! A [`Tailer`] holds the file open, so a file renamed by rotation (kubelet renames `0.log` to
//! `0.log.<time>`) or deleted while open is still read to its end through the same handle; it
//! is released only once its path no longer leads to it, it has reached its end, and nothing
//! was written to it for `release_after` (the runtime may write a little more before it
//! reopens). A file shorter than the read position, or whose first bytes changed, was truncated
//! in place (copytruncate, or conmon's `max-size`): reading restarts at 0.
//!
//! The tailer splits the file into physical lines, parses them ([`crate::parse`]), joins
//! partial chunks, and tracks the offset a restart must resume from: the start of the oldest
//! line not yet complete. Each record carries that position as of its own end
//! ([`TailedRecord::resume`]), so that a batch holding only some of the records read can still
//! checkpoint exactly what it holds.

use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;
use std::time::{Duration, Instant};

use tracing::{debug, info, warn};

use crate::checkpoint::{Checkpoint, Checkpoints, FileId, Fingerprint, unix_secs};
use crate::discovery::Source;
use crate::parse::{Assembler, Record, parse_line};

/// Bytes read from a file per `read` call at most.
const READ_CHUNK: usize = 256 * 1024;
/// A physical line holds a record's text plus the runtime's prefix (CRI) or JSON wrapping:
/// allow this much beyond `max_line_bytes` before cutting a physical line.
const PHYSICAL_LINE_SLACK: usize = 64 * 1024;

/// What happened to a file since the last look.
#[derive(Debug, PartialEq, Eq)]
pub enum FileState {
    /// Still under its path: more may come.
    Live,
    /// Renamed or deleted: read to the end, then released.
    Gone,
}

pub struct Tailer {
    pub source: Source,
    file: File,
    pub id: FileId,
    fingerprint: Fingerprint,
    /// The next byte to read from the file.
    read_offset: u64,
    /// The bytes of the physical line being read, which has no `\n` yet.
    line: Vec<u8>,
    /// File offset of `line[0]`: every byte before it belongs to complete physical lines.
    line_start: u64,
    /// Discarding the rest of a physical line that was cut at the cap.
    skipping: bool,
    assembler: Assembler,
    max_line_bytes: usize,
    last_read_at: Instant,
    gone_since: Option<Instant>,
    /// Opened under a rotated name: done once read to its end, whatever its path says.
    rotated: bool,
}

/// A record with the tailer's bookkeeping for it.
pub struct TailedRecord {
    pub record: Record,
    /// Length of the physical bytes, for throughput metrics.
    pub raw_bytes: usize,
    /// Where a restart resumes once this record and every record before it are acknowledged.
    pub resume: Position,
}

/// A resume position in a file's content: an offset, and the fingerprint of the content it is
/// an offset into (a truncated file's earlier records belong to other content).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Position {
    pub offset: u64,
    pub fingerprint: Fingerprint,
}

impl Tailer {
    /// Opens `source`, resuming from its checkpoint if it has one for this very content, else
    /// from the start.
    pub fn open(source: Source, checkpoints: &Checkpoints, max_line_bytes: usize) -> io::Result<Tailer> {
        let file = File::open(&source.path)?;
        let metadata = file.metadata()?;
        let id = FileId::of(&metadata);
        let resume = checkpoints.resume_offset(id, &file, metadata.len())?;
        let offset = resume.unwrap_or(0);
        let fingerprint = Fingerprint::of(&file, metadata.len())?;
        info!(path = %source.path.display(), offset, resumed = resume.is_some(), "tailing");
        Ok(Tailer {
            source,
            file,
            id,
            fingerprint,
            read_offset: offset,
            line: Vec::new(),
            line_start: offset,
            skipping: false,
            assembler: Assembler::new(max_line_bytes),
            max_line_bytes,
            last_read_at: Instant::now(),
            gone_since: None,
            rotated: false,
        })
    }

    /// Reads what the file has (up to `budget` bytes), appending complete records to `out`.
    /// Returns the number of bytes read.
    pub fn read(&mut self, budget: usize, now: Instant, out: &mut Vec<TailedRecord>) -> io::Result<usize> {
        self.read_with(budget, now, out, &mut Vec::new())
    }

    /// [`Tailer::read`] through the caller's buffer: a reader of many files keeps one, rather
    /// than allocating (and, at this size, mapping and unmapping) a chunk for every look.
    pub fn read_with(
        &mut self,
        budget: usize,
        now: Instant,
        out: &mut Vec<TailedRecord>,
        chunk: &mut Vec<u8>,
    ) -> io::Result<usize> {
        chunk.resize(READ_CHUNK.min(budget.max(1)), 0);
        let mut total = 0;
        while total < budget {
            let want = chunk.len().min(budget - total);
            let n = self.file.read_at(&mut chunk[..want], self.read_offset)?;
            if n == 0 {
                break;
            }
            // Before the records of these bytes take their resume positions: a checkpoint must
            // carry a fingerprint of the content it points into, not of an empty file.
            if !self.fingerprint.is_complete() {
                self.fingerprint = Fingerprint::of(&self.file, self.read_offset + n as u64)?;
            }
            self.consume(&chunk[..n], self.read_offset, now, out);
            self.read_offset += n as u64;
            total += n;
        }
        if total > 0 {
            self.last_read_at = now;
        }
        Ok(total)
    }

    /// Splits `bytes` (read at file offset `chunk_start`) into physical lines.
    fn consume(&mut self, bytes: &[u8], chunk_start: u64, now: Instant, out: &mut Vec<TailedRecord>) {
        let cap = self.max_line_bytes + PHYSICAL_LINE_SLACK;
        let mut position = 0;
        while let Some(newline) = bytes[position..].iter().position(|&b| b == b'\n') {
            let head = &bytes[position..position + newline];
            let line_end = chunk_start + (position + newline + 1) as u64;
            if self.skipping {
                self.skipping = false;
            } else if self.line.is_empty() {
                self.emit(head, false, line_end, now, out);
            } else {
                let mut line = std::mem::take(&mut self.line);
                line.extend_from_slice(head);
                self.emit(&line, false, line_end, now, out);
            }
            self.line.clear();
            position += newline + 1;
            self.line_start = chunk_start + position as u64;
        }
        let rest = &bytes[position..];
        if self.skipping || rest.is_empty() {
            return;
        }
        self.line.extend_from_slice(rest);
        if self.line.len() > cap {
            // A physical line this long is not a runtime's output: keep what fits, mark it cut,
            // and drop the rest up to the next newline rather than buffering without bound.
            let line = std::mem::take(&mut self.line);
            // The rest of the line is skipped, not read: a restart resumes at the line's start
            // (and sends the cut record again) rather than in the middle of it.
            let line_start = self.line_start;
            self.emit(&line[..cap], true, line_start, now, out);
            self.skipping = true;
        }
    }

    /// Parses the physical line that starts at `self.line_start`; `resume_from` is where
    /// reading goes on once it is consumed.
    fn emit(&mut self, line: &[u8], cut: bool, resume_from: u64, now: Instant, out: &mut Vec<TailedRecord>) {
        let chunk = parse_line(self.source.format, line);
        if let Some(record) = self.assembler.push(chunk, self.line_start, cut, now) {
            let resume = Position { offset: self.assembler.resume_offset(resume_from), fingerprint: self.fingerprint };
            out.push(TailedRecord { record, raw_bytes: line.len() + 1, resume });
        }
    }

    /// Records of lines left incomplete for longer than `timeout` (output that ended without a
    /// newline), so that they are not held back forever.
    pub fn flush_stale(&mut self, now: Instant, timeout: Duration, out: &mut Vec<TailedRecord>) {
        let records = self.assembler.flush_stale(now, timeout);
        let resume = self.position();
        out.extend(records.into_iter().map(|record| TailedRecord { raw_bytes: record.body.len(), record, resume }));
    }

    /// Where a restart resumes once every record read so far is acknowledged.
    pub fn position(&self) -> Position {
        Position { offset: self.assembler.resume_offset(self.line_start), fingerprint: self.fingerprint }
    }

    /// The checkpoint to write once every record read so far is acknowledged.
    pub fn checkpoint(&self) -> Checkpoint {
        self.checkpoint_at(self.position())
    }

    /// The checkpoint to write once the records up to `position` are acknowledged.
    pub fn checkpoint_at(&self, position: Position) -> Checkpoint {
        Checkpoint {
            id: self.id,
            fingerprint: position.fingerprint,
            offset: position.offset,
            path: self.source.path.clone(),
            updated_unix_secs: unix_secs(crate::time::now()),
        }
    }

    /// Nothing will happen to the file without a write to it: it is under its path and holds
    /// no half-assembled line waiting for its timeout.
    pub fn is_settled(&self) -> bool {
        self.gone_since.is_none() && self.assembler.is_idle()
    }

    /// Bytes in the file beyond what was read: how far behind the tailer is.
    pub fn lag_bytes(&self) -> u64 {
        self.file.metadata().map(|m| m.len().saturating_sub(self.read_offset)).unwrap_or(0)
    }

    /// Detects truncation in place and whether the file is still under its path. A truncated
    /// file's half-read lines are flushed to `out` and reading restarts at 0.
    pub fn check(&mut self, now: Instant, out: &mut Vec<TailedRecord>) -> io::Result<FileState> {
        let size = self.file.metadata()?.len();
        let rewritten = self.read_offset > 0 && !self.fingerprint.matches(&self.file)?;
        if size < self.read_offset || rewritten {
            warn!(
                path = %self.source.path.display(),
                size,
                offset = self.read_offset,
                "file truncated or rewritten in place; reading it again from the start"
            );
            // What was read of the old content is gone with it: once its last records are
            // acknowledged, the new content is read from its start.
            let resume = Position { offset: 0, fingerprint: self.fingerprint };
            self.finish(now, resume, out);
            self.read_offset = 0;
            self.line_start = 0;
            self.line.clear();
            self.skipping = false;
            self.fingerprint = Fingerprint::of(&self.file, size)?;
        }
        let still_here = std::fs::metadata(&self.source.path).is_ok_and(|m| FileId::of(&m) == self.id)
            && self.file.metadata().is_ok_and(|m| m.nlink() > 0);
        if still_here && !self.rotated {
            self.gone_since = None;
            return Ok(FileState::Live);
        }
        if self.gone_since.is_none() {
            debug!(path = %self.source.path.display(), "file renamed or deleted; reading it to its end");
            self.gone_since = Some(now);
        }
        Ok(FileState::Gone)
    }

    /// Whether a gone file is done: read to its end, and quiet for `release_after` since it went
    /// away and since its last write. Its incomplete lines are then flushed to `out`.
    pub fn try_release(&mut self, now: Instant, release_after: Duration, out: &mut Vec<TailedRecord>) -> bool {
        let Some(gone_since) = self.gone_since else { return false };
        let at_end = self.file.metadata().is_ok_and(|m| m.len() <= self.read_offset);
        let quiet = now.saturating_duration_since(gone_since) >= release_after
            && now.saturating_duration_since(self.last_read_at) >= release_after;
        if !(at_end && quiet) {
            return false;
        }
        let resume = self.position();
        self.finish(now, resume, out);
        info!(path = %self.source.path.display(), offset = self.read_offset, "released a rotated or deleted file");
        true
    }

    /// Nothing more will be appended: a torn last line (no newline) counts as a line, and every
    /// half-assembled line becomes a record.
    fn finish(&mut self, now: Instant, resume: Position, out: &mut Vec<TailedRecord>) {
        let first = out.len();
        if !self.line.is_empty() && !self.skipping {
            let line = std::mem::take(&mut self.line);
            let line_end = self.line_start + line.len() as u64;
            self.emit(&line, false, line_end, now, out);
        }
        for record in self.assembler.flush_all() {
            out.push(TailedRecord { raw_bytes: record.body.len(), record, resume });
        }
        for record in &mut out[first..] {
            record.resume = resume;
        }
    }

    /// Treats the file as already rotated away: a rotated file opened to finish what a
    /// checkpoint says was not read is released once read to its end.
    pub fn mark_gone(&mut self, now: Instant) {
        self.rotated = true;
        self.gone_since = Some(now);
    }

    pub fn path(&self) -> &Path {
        &self.source.path
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::discovery::Source;
    use crate::identity::ContainerIdentity;
    use crate::parse::{Format, Stream};

    fn tailer(path: &Path, checkpoints: &Checkpoints, max_line_bytes: usize) -> Tailer {
        let source = Source { path: path.to_path_buf(), format: Format::Cri, identity: ContainerIdentity::default() };
        Tailer::open(source, checkpoints, max_line_bytes).unwrap()
    }

    fn append(path: &Path, text: &str) {
        std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap().write_all(text.as_bytes()).unwrap();
    }

    fn bodies(records: &[TailedRecord]) -> Vec<&str> {
        records.iter().map(|r| r.record.body.as_str()).collect()
    }

    const T: &str = "2026-11-23T00:00:00.000000001Z";

    #[test]
    fn lines_split_across_reads_and_partials_resume_at_their_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let checkpoints = Checkpoints::open(dir.path()).unwrap();
        append(&path, &format!("{T} stdout F one\n{T} stdout P tw"));
        let mut tailer = tailer(&path, &checkpoints, 1024);
        let mut out = Vec::new();
        let now = Instant::now();
        tailer.read(usize::MAX, now, &mut out).unwrap();
        assert_eq!(bodies(&out), vec!["one"]);
        let first_line_len = format!("{T} stdout F one\n").len() as u64;
        assert_eq!(tailer.checkpoint().offset, first_line_len, "the incomplete physical line is re-read");

        append(&path, &format!("o\n{T} stderr F err\n"));
        tailer.read(usize::MAX, now, &mut out).unwrap();
        assert_eq!(bodies(&out), vec!["one", "err"]);
        assert_eq!(tailer.checkpoint().offset, first_line_len, "the stdout line is still half-assembled");

        append(&path, &format!("{T} stdout F three\n"));
        tailer.read(usize::MAX, now, &mut out).unwrap();
        assert_eq!(bodies(&out), vec!["one", "err", "twothree"]);
        let size = std::fs::metadata(&path).unwrap().len();
        assert_eq!(tailer.checkpoint().offset, size);
    }

    /// A batch may take only the first records of a read: each record's resume position is
    /// where a restart must go on once it and those before it are acknowledged, and a tailer
    /// reopened there repeats nothing after it and skips nothing.
    #[test]
    fn each_record_resumes_right_after_itself() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut checkpoints = Checkpoints::open(dir.path()).unwrap();
        let lines = [
            format!("{T} stdout F one\n"),
            format!("{T} stdout P tw\n"),
            format!("{T} stderr F err\n"),
            format!("{T} stdout F o\n"),
            format!("{T} stdout F three\n"),
        ];
        append(&path, &lines.concat());
        let ends: Vec<u64> =
            lines.iter().scan(0, |end, line| Some(*end + line.len() as u64).inspect(|e| *end = *e)).collect();
        let mut tailer = tailer(&path, &checkpoints, 1024);
        let mut out = Vec::new();
        tailer.read(usize::MAX, Instant::now(), &mut out).unwrap();
        assert_eq!(bodies(&out), vec!["one", "err", "two", "three"]);
        let resumes: Vec<u64> = out.iter().map(|r| r.resume.offset).collect();
        // "err" completes while "tw" waits for its end: a restart re-reads from "tw"'s line.
        assert_eq!(resumes, vec![ends[0], ends[0], ends[3], ends[4]]);
        assert!(out.iter().all(|r| r.resume.fingerprint.is_complete() || r.resume.fingerprint.len == ends[4]));

        checkpoints.update(tailer.checkpoint_at(out[1].resume));
        let mut again = tailer_at(&path, &checkpoints);
        let mut rest = Vec::new();
        again.read(usize::MAX, Instant::now(), &mut rest).unwrap();
        // At least once: "err" again (its line follows "tw"'s), then what was not acknowledged.
        assert_eq!(bodies(&rest), vec!["err", "two", "three"]);
    }

    fn tailer_at(path: &Path, checkpoints: &Checkpoints) -> Tailer {
        tailer(path, checkpoints, 1024)
    }

    #[test]
    fn a_checkpoint_resumes_without_repeating_or_skipping() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let mut checkpoints = Checkpoints::open(dir.path()).unwrap();
        append(&path, &format!("{T} stdout F a\n{T} stdout F b\n"));
        let mut first = tailer(&path, &checkpoints, 1024);
        let mut out = Vec::new();
        first.read(usize::MAX, Instant::now(), &mut out).unwrap();
        assert_eq!(bodies(&out), vec!["a", "b"]);
        checkpoints.update(first.checkpoint());
        drop(first);

        append(&path, &format!("{T} stdout F c\n"));
        let mut second = tailer(&path, &checkpoints, 1024);
        let mut out = Vec::new();
        second.read(usize::MAX, Instant::now(), &mut out).unwrap();
        assert_eq!(bodies(&out), vec!["c"]);
    }

    #[test]
    fn truncation_in_place_restarts_at_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let checkpoints = Checkpoints::open(dir.path()).unwrap();
        append(&path, &format!("{T} stdout F before-truncation-1\n{T} stdout F before-truncation-2\n"));
        let mut tailer = tailer(&path, &checkpoints, 1024);
        let mut out = Vec::new();
        let now = Instant::now();
        tailer.read(usize::MAX, now, &mut out).unwrap();
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(0).unwrap();
        append(&path, &format!("{T} stdout F after\n"));
        assert_eq!(tailer.check(now, &mut out).unwrap(), FileState::Live);
        tailer.read(usize::MAX, now, &mut out).unwrap();
        assert_eq!(bodies(&out), vec!["before-truncation-1", "before-truncation-2", "after"]);
    }

    #[test]
    fn a_renamed_file_is_read_to_its_end_then_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let checkpoints = Checkpoints::open(dir.path()).unwrap();
        append(&path, &format!("{T} stdout F old-1\n"));
        let mut tailer = tailer(&path, &checkpoints, 1024);
        let start = Instant::now();
        let mut out = Vec::new();
        tailer.read(usize::MAX, start, &mut out).unwrap();
        std::fs::rename(&path, dir.path().join("0.log.20261123-000000")).unwrap();
        append(&dir.path().join("0.log.20261123-000000"), &format!("{T} stdout F old-2\n{T} stdout P tail"));
        append(&path, &format!("{T} stdout F new-1\n"));

        assert_eq!(tailer.check(start, &mut out).unwrap(), FileState::Gone);
        assert!(!tailer.try_release(start, Duration::from_secs(1), &mut out), "not read to its end yet");
        tailer.read(usize::MAX, start, &mut out).unwrap();
        assert!(!tailer.try_release(start, Duration::from_secs(1), &mut out), "too soon");
        assert!(tailer.try_release(start + Duration::from_secs(2), Duration::from_secs(1), &mut out));
        assert_eq!(bodies(&out), vec!["old-1", "old-2", "tail"]);
    }

    #[test]
    fn a_deleted_file_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let checkpoints = Checkpoints::open(dir.path()).unwrap();
        append(&path, &format!("{T} stderr F bye\n"));
        let mut tailer = tailer(&path, &checkpoints, 1024);
        std::fs::remove_file(&path).unwrap();
        let now = Instant::now();
        let mut out = Vec::new();
        assert_eq!(tailer.check(now, &mut out).unwrap(), FileState::Gone);
        tailer.read(usize::MAX, now, &mut out).unwrap();
        assert_eq!(out[0].record.stream, Stream::Stderr);
        assert!(tailer.try_release(now + Duration::from_secs(5), Duration::from_secs(1), &mut out));
    }

    #[test]
    fn an_endless_physical_line_is_cut_and_tailing_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.log");
        let checkpoints = Checkpoints::open(dir.path()).unwrap();
        let huge = "x".repeat(200 * 1024);
        append(&path, &format!("{T} stdout F {huge}\n{T} stdout F next\n"));
        let mut tailer = tailer(&path, &checkpoints, 1000);
        let mut out = Vec::new();
        tailer.read(usize::MAX, Instant::now(), &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].record.body.len(), 1000);
        assert!(out[0].record.truncated);
        assert_eq!(out[1].record.body, "next");
        assert!(!out[1].record.truncated);
    }
}
