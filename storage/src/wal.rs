//! Write-ahead log with group commit.
//!
//! One thread owns the active segment. Requests queue up while it fsyncs; it then writes every
//! queued record with a single `write` and a single `fdatasync`, hands the now-durable records to
//! the store (in sequence order, before anyone is acknowledged), and answers each request. So
//! concurrent clients share fsyncs, and the store's buffers always hold a gap-free run of
//! sequence numbers, which is what lets a flush say "everything up to N is in Parquet".
//!
//! Record layout: `len: u32 LE | crc32(payload): u32 LE | payload`, where payload is
//! `signal: u8 | seq: u64 LE | received_at_ns: i64 LE | OTLP protobuf request`.
//! A torn or corrupt tail (a crash mid-write) ends replay of that segment; it was never
//! acknowledged, because acknowledgement waits for the fsync.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;

use arrow::record_batch::RecordBatch;
use bytes::Bytes;
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use crate::error::{Error, Result};
use crate::schema::Signal;

const HEADER_BYTES: usize = 8;
const PAYLOAD_PREFIX_BYTES: usize = 1 + 8 + 8;
/// Records that ask to be larger than this are corruption, not data (requests are capped far lower).
const MAX_RECORD_BYTES: usize = 1 << 30;
const SEGMENT_TARGET_BYTES: u64 = 64 * 1024 * 1024;
/// Upper bound on one group commit, so a burst cannot make a single write unboundedly large.
const MAX_GROUP_BYTES: usize = 64 * 1024 * 1024;

/// A record read back from the log at start-up.
#[derive(Debug)]
pub(crate) struct WalRecord {
    pub signal: Signal,
    pub seq: u64,
    pub received_at_ns: i64,
    pub payload: Bytes,
}

/// A record made durable by a group commit, handed to the store before the client hears back.
pub(crate) struct DurableRecord {
    pub signal: Signal,
    pub seq: u64,
    pub batch: RecordBatch,
}

/// Called by the WAL thread with each group of records right after their fsync.
pub(crate) type DurableSink = Box<dyn FnMut(Vec<DurableRecord>) + Send>;

struct AppendRequest {
    signal: Signal,
    received_at_ns: i64,
    payload: Bytes,
    batch: RecordBatch,
    reply: oneshot::Sender<Result<u64>>,
}

enum Command {
    Append(AppendRequest),
    /// Delete sealed segments whose records all have a sequence number below the given one.
    Truncate {
        below_seq: u64,
    },
}

/// Handle to the WAL thread. Dropping every handle stops the thread after it drains its queue.
#[derive(Clone)]
pub(crate) struct Wal {
    sender: mpsc::Sender<Command>,
}

/// Metrics the WAL thread updates.
#[derive(Clone)]
pub struct WalMetrics {
    pub bytes_written: prometheus::IntCounter,
    pub fsyncs: prometheus::IntCounter,
    pub size_bytes: prometheus::IntGauge,
}

fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.wal")
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut segments = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".wal")) else {
            continue;
        };
        if let Ok(first_seq) = stem.parse::<u64>() {
            segments.push((first_seq, entry.path()));
        }
    }
    segments.sort();
    Ok(segments)
}

/// Reads every intact record of the log, truncating a torn tail of the last segment so new
/// records never follow garbage.
pub(crate) fn replay(dir: &Path) -> Result<Vec<WalRecord>> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let segments = list_segments(dir)?;
    let mut records = Vec::new();
    for (index, (_, path)) in segments.iter().enumerate() {
        let is_last = index + 1 == segments.len();
        let mut data = Vec::new();
        File::open(path).and_then(|mut file| file.read_to_end(&mut data)).map_err(|e| Error::io(path, e))?;
        let (mut segment_records, valid_len) = parse_segment(&data);
        if valid_len < data.len() {
            warn!(
                path = %path.display(),
                valid_bytes = valid_len,
                total_bytes = data.len(),
                "write-ahead log segment ends in a torn or corrupt record; unacknowledged tail dropped"
            );
            if is_last {
                let file = OpenOptions::new().write(true).open(path).map_err(|e| Error::io(path, e))?;
                file.set_len(valid_len as u64).map_err(|e| Error::io(path, e))?;
                file.sync_all().map_err(|e| Error::io(path, e))?;
            }
        }
        records.append(&mut segment_records);
    }
    Ok(records)
}

fn parse_segment(data: &[u8]) -> (Vec<WalRecord>, usize) {
    let mut records = Vec::new();
    let mut offset = 0;
    while data.len() - offset >= HEADER_BYTES {
        let len = u32::from_le_bytes([data[offset], data[offset + 1], data[offset + 2], data[offset + 3]]) as usize;
        let crc = u32::from_le_bytes([data[offset + 4], data[offset + 5], data[offset + 6], data[offset + 7]]);
        let start = offset + HEADER_BYTES;
        if !(PAYLOAD_PREFIX_BYTES..=MAX_RECORD_BYTES).contains(&len) || data.len() - start < len {
            break;
        }
        let payload = &data[start..start + len];
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Some(signal) = Signal::from_wal_tag(payload[0]) else {
            break;
        };
        let mut seq = [0u8; 8];
        seq.copy_from_slice(&payload[1..9]);
        let mut received = [0u8; 8];
        received.copy_from_slice(&payload[9..17]);
        records.push(WalRecord {
            signal,
            seq: u64::from_le_bytes(seq),
            received_at_ns: i64::from_le_bytes(received),
            payload: Bytes::copy_from_slice(&payload[PAYLOAD_PREFIX_BYTES..]),
        });
        offset = start + len;
    }
    (records, offset)
}

fn encode_record(buffer: &mut Vec<u8>, signal: Signal, seq: u64, received_at_ns: i64, payload: &[u8]) {
    let len = (PAYLOAD_PREFIX_BYTES + payload.len()) as u32;
    let mut hasher = crc32fast::Hasher::new();
    let prefix_start = buffer.len() + HEADER_BYTES;
    buffer.extend_from_slice(&len.to_le_bytes());
    buffer.extend_from_slice(&[0; 4]);
    buffer.push(signal.wal_tag());
    buffer.extend_from_slice(&seq.to_le_bytes());
    buffer.extend_from_slice(&received_at_ns.to_le_bytes());
    hasher.update(&buffer[prefix_start..]);
    hasher.update(payload);
    buffer[prefix_start - 4..prefix_start].copy_from_slice(&hasher.finalize().to_le_bytes());
    buffer.extend_from_slice(payload);
}

struct Writer {
    dir: PathBuf,
    /// Sealed segments: (first seq, last seq, path).
    sealed: Vec<(u64, u64, PathBuf)>,
    active: Option<ActiveSegment>,
    next_seq: u64,
    metrics: WalMetrics,
    sink: DurableSink,
    scratch: Vec<u8>,
}

struct ActiveSegment {
    file: File,
    path: PathBuf,
    first_seq: u64,
    last_seq: Option<u64>,
    len: u64,
}

impl Wal {
    /// Starts the WAL thread. `records` are the ones `replay` returned; new sequence numbers
    /// continue after `next_seq`.
    pub(crate) fn start(dir: &Path, next_seq: u64, metrics: WalMetrics, sink: DurableSink) -> Result<Wal> {
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let mut sealed = Vec::new();
        let mut total = 0;
        for (first_seq, path) in list_segments(dir)? {
            let len = fs::metadata(&path).map_err(|e| Error::io(&path, e))?.len();
            total += len;
            // The last seq of an old segment is unknown without reading it; the next segment's
            // first seq bounds it, and the newest is bounded by `next_seq`.
            sealed.push((first_seq, u64::MAX, path));
        }
        for index in 0..sealed.len() {
            let bound = sealed.get(index + 1).map_or(next_seq, |next| next.0);
            sealed[index].1 = bound.saturating_sub(1);
        }
        metrics.size_bytes.set(total as i64);
        let mut writer =
            Writer { dir: dir.to_path_buf(), sealed, active: None, next_seq, metrics, sink, scratch: Vec::new() };
        let (sender, receiver) = mpsc::channel();
        thread::Builder::new()
            .name("wake-wal".into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| Error::io(dir, e))?;
        Ok(Wal { sender })
    }

    /// Appends a record and waits until it is durable and visible in the store's buffers.
    pub(crate) async fn append(
        &self,
        signal: Signal,
        received_at_ns: i64,
        payload: Bytes,
        batch: RecordBatch,
    ) -> Result<u64> {
        let (reply, response) = oneshot::channel();
        let request = AppendRequest { signal, received_at_ns, payload, batch, reply };
        self.sender.send(Command::Append(request)).map_err(|_| Error::ShuttingDown)?;
        response.await.map_err(|_| Error::ShuttingDown)?
    }

    /// Lets the WAL drop segments holding only records below `below_seq` (already in Parquet).
    pub(crate) fn truncate(&self, below_seq: u64) {
        let _ = self.sender.send(Command::Truncate { below_seq });
    }
}

impl Writer {
    fn run(&mut self, receiver: mpsc::Receiver<Command>) {
        let mut group = Vec::new();
        while let Ok(command) = receiver.recv() {
            let mut pending = Some(command);
            let mut group_bytes = 0;
            // Everything that queued up during the previous fsync joins this group.
            loop {
                match pending.take() {
                    Some(Command::Append(request)) => {
                        group_bytes += request.payload.len();
                        group.push(request);
                    }
                    Some(Command::Truncate { below_seq }) => self.truncate(below_seq),
                    None => {}
                }
                if group_bytes >= MAX_GROUP_BYTES {
                    break;
                }
                match receiver.try_recv() {
                    Ok(command) => pending = Some(command),
                    Err(_) => break,
                }
            }
            if !group.is_empty() {
                self.commit(&mut group);
            }
        }
        debug!("write-ahead log thread stopped");
    }

    fn commit(&mut self, group: &mut Vec<AppendRequest>) {
        match self.write_group(group) {
            Ok(first_seq) => {
                let mut durable = Vec::with_capacity(group.len());
                let mut replies = Vec::with_capacity(group.len());
                for (offset, request) in group.drain(..).enumerate() {
                    let seq = first_seq + offset as u64;
                    durable.push(DurableRecord { signal: request.signal, seq, batch: request.batch });
                    replies.push((request.reply, seq));
                }
                (self.sink)(durable);
                for (reply, seq) in replies {
                    let _ = reply.send(Ok(seq));
                }
            }
            Err(error) => {
                let class = error.class();
                warn!(%error, records = group.len(), ?class, "write-ahead log append failed");
                let message = error.to_string();
                for request in group.drain(..) {
                    let error = match class {
                        crate::error::ErrorClass::Unavailable => Error::DiskFull {
                            path: self.dir.clone(),
                            available_bytes: 0,
                            required_bytes: request.payload.len() as u64,
                        },
                        _ => Error::Internal(message.clone()),
                    };
                    let _ = request.reply.send(Err(error));
                }
            }
        }
    }

    /// Writes and fsyncs the group; on failure the segment is cut back to where it was, so a
    /// half-written group never precedes later records.
    fn write_group(&mut self, group: &[AppendRequest]) -> Result<u64> {
        let first_seq = self.next_seq;
        self.ensure_active(first_seq)?;
        self.scratch.clear();
        for (offset, request) in group.iter().enumerate() {
            encode_record(
                &mut self.scratch,
                request.signal,
                first_seq + offset as u64,
                request.received_at_ns,
                &request.payload,
            );
        }
        let Some(active) = self.active.as_mut() else {
            return Err(Error::Internal("no active write-ahead log segment".into()));
        };
        let written = active.file.write_all(&self.scratch).and_then(|()| active.file.sync_data());
        if let Err(source) = written {
            let path = active.path.clone();
            if let Err(truncate_error) = active.file.set_len(active.len).and_then(|()| active.file.sync_data()) {
                // The file may now end in a partial record: start a fresh segment so that the
                // partial record stays at a segment's tail, where replay expects and drops it.
                error!(path = %path.display(), error = %truncate_error, "could not cut back a failed write-ahead log append");
                self.seal_active();
            }
            return Err(Error::io(path, source));
        }
        let last_seq = first_seq + group.len() as u64 - 1;
        active.len += self.scratch.len() as u64;
        active.last_seq = Some(last_seq);
        self.next_seq = last_seq + 1;
        self.metrics.bytes_written.inc_by(self.scratch.len() as u64);
        self.metrics.size_bytes.add(self.scratch.len() as i64);
        self.metrics.fsyncs.inc();
        if active.len >= SEGMENT_TARGET_BYTES {
            self.seal_active();
        }
        Ok(first_seq)
    }

    fn ensure_active(&mut self, first_seq: u64) -> Result<()> {
        if self.active.is_some() {
            return Ok(());
        }
        let path = self.dir.join(segment_name(first_seq));
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
        let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        sync_dir(&self.dir)?;
        self.active = Some(ActiveSegment { file, path, first_seq, last_seq: None, len });
        Ok(())
    }

    fn seal_active(&mut self) {
        if let Some(active) = self.active.take() {
            let last_seq = active.last_seq.unwrap_or(active.first_seq.saturating_sub(1));
            self.sealed.push((active.first_seq, last_seq, active.path));
        }
    }

    fn truncate(&mut self, below_seq: u64) {
        // The active segment is sealed once everything in it is in Parquet, so that it can go too.
        if let Some(active) = &self.active
            && active.last_seq.is_some_and(|last| last < below_seq)
        {
            self.seal_active();
        }
        let mut kept = Vec::new();
        for (first_seq, last_seq, path) in self.sealed.drain(..) {
            if last_seq < below_seq || first_seq > last_seq {
                let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                match fs::remove_file(&path) {
                    Ok(()) => {
                        self.metrics.size_bytes.sub(len as i64);
                        info!(path = %path.display(), first_seq, last_seq, "removed flushed write-ahead log segment");
                    }
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                    Err(error) => {
                        warn!(path = %path.display(), %error, "could not remove write-ahead log segment");
                        kept.push((first_seq, last_seq, path));
                    }
                }
            } else {
                kept.push((first_seq, last_seq, path));
            }
        }
        self.sealed = kept;
    }
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn metrics() -> WalMetrics {
        WalMetrics {
            bytes_written: prometheus::IntCounter::new("b", "b").unwrap(),
            fsyncs: prometheus::IntCounter::new("f", "f").unwrap(),
            size_bytes: prometheus::IntGauge::new("s", "s").unwrap(),
        }
    }

    fn empty_batch() -> RecordBatch {
        RecordBatch::new_empty(Signal::Logs.schema())
    }

    #[tokio::test]
    async fn appends_are_replayed_in_order_and_seen_by_the_sink() {
        let dir = tempfile::tempdir().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink_seen = seen.clone();
        let sink: DurableSink = Box::new(move |records| {
            sink_seen.lock().unwrap().extend(records.into_iter().map(|r| r.seq));
        });
        let wal = Wal::start(dir.path(), 7, metrics(), sink).unwrap();
        let mut tasks = Vec::new();
        for i in 0..20u8 {
            let wal = wal.clone();
            tasks.push(tokio::spawn(async move {
                wal.append(Signal::Metrics, i as i64, Bytes::from(vec![i; 10]), empty_batch()).await
            }));
        }
        let mut seqs: Vec<u64> = Vec::new();
        for task in tasks {
            seqs.push(task.await.unwrap().unwrap());
        }
        seqs.sort();
        assert_eq!(seqs, (7..27).collect::<Vec<_>>());
        assert_eq!(*seen.lock().unwrap(), (7..27).collect::<Vec<_>>(), "sink sees seqs in order");
        drop(wal);

        let records = replay(dir.path()).unwrap();
        assert_eq!(records.len(), 20);
        assert!(records.windows(2).all(|w| w[0].seq + 1 == w[1].seq));
        let record = records.iter().find(|r| r.received_at_ns == 3).unwrap();
        assert_eq!(record.payload.as_ref(), &[3u8; 10]);
        assert_eq!(record.signal, Signal::Metrics);
    }

    #[test]
    fn torn_tail_is_dropped_and_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(segment_name(1));
        let mut data = Vec::new();
        encode_record(&mut data, Signal::Logs, 1, 10, b"first");
        encode_record(&mut data, Signal::Spans, 2, 20, b"second");
        let intact = data.len();
        encode_record(&mut data, Signal::Logs, 3, 30, b"third, torn");
        data.truncate(data.len() - 4);
        fs::write(&path, &data).unwrap();

        let records = replay(dir.path()).unwrap();
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(fs::metadata(&path).unwrap().len(), intact as u64);
    }

    #[test]
    fn corrupt_record_stops_replay_of_its_segment() {
        let mut data = Vec::new();
        encode_record(&mut data, Signal::Logs, 1, 10, b"first");
        let first_len = data.len();
        encode_record(&mut data, Signal::Logs, 2, 20, b"second");
        data[first_len + HEADER_BYTES + PAYLOAD_PREFIX_BYTES] ^= 0xff;
        let (records, valid) = parse_segment(&data);
        assert_eq!(records.len(), 1);
        assert_eq!(valid, first_len);
    }

    #[tokio::test]
    async fn truncate_removes_only_fully_flushed_segments() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join(segment_name(1)), b"").unwrap();
        fs::write(dir.path().join(segment_name(5)), b"").unwrap();
        let wal = Wal::start(dir.path(), 9, metrics(), Box::new(|_| {})).unwrap();
        wal.truncate(5);
        // A later append is a barrier: the truncate command ahead of it has run.
        wal.append(Signal::Logs, 0, Bytes::from_static(b"x"), empty_batch()).await.unwrap();
        let remaining: Vec<u64> = list_segments(dir.path()).unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(remaining, vec![5, 9]);
    }
}
