//! Container log line formats and the reassembly of lines the runtime split.
//!
//! Runtimes write one *physical* line per chunk of a container's output:
//! - CRI (containerd, CRI-O, podman's `k8s-file`): `<RFC 3339 nano time> <stdout|stderr> <P|F> <text>`,
//!   where `P` marks a chunk of a longer line (the runtime split it, or the output has not ended
//!   with a newline yet) and `F` the chunk that ends it.
//! - Docker `json-file`: `{"log":"text\n","stream":"stdout","time":"…"}`, partial when `log`
//!   lacks its trailing newline.
//!
//! [`Assembler`] joins the chunks of each stream into one record, caps a record at
//! `max_line_bytes` (the rest is cut and the record marked truncated: a line is never dropped),
//! and knows the earliest file offset that a restart must re-read so that a half-assembled line
//! is not lost: [`Assembler::resume_offset`].

use std::time::{Duration, Instant};

use serde::Deserialize;

/// Which log file format a file is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Cri,
    DockerJson,
}

/// The output stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
    /// A line that did not parse: kept as it is, with no stream.
    Unknown,
}

impl Stream {
    pub fn as_str(self) -> Option<&'static str> {
        match self {
            Stream::Stdout => Some("stdout"),
            Stream::Stderr => Some("stderr"),
            Stream::Unknown => None,
        }
    }

    fn index(self) -> usize {
        match self {
            Stream::Stdout => 0,
            Stream::Stderr => 1,
            Stream::Unknown => 2,
        }
    }
}

/// One physical line of a log file, parsed.
#[derive(Debug, PartialEq)]
pub struct Chunk {
    /// The runtime's time of the chunk (Unix ns); `None` when the line did not parse.
    pub time_unix_nano: Option<u64>,
    pub stream: Stream,
    /// More chunks of the same line follow.
    pub partial: bool,
    pub text: Vec<u8>,
}

impl Chunk {
    /// A line that is not in the file's format: kept whole, as a full line of its own.
    fn unparsed(line: &[u8]) -> Chunk {
        Chunk { time_unix_nano: None, stream: Stream::Unknown, partial: false, text: line.to_vec() }
    }
}

/// Parses one physical line (without its `\n`) of a file in `format`. Never fails: a line that
/// does not parse is kept as an unparsed chunk.
pub fn parse_line(format: Format, line: &[u8]) -> Chunk {
    let parsed = match format {
        Format::Cri => parse_cri(line),
        Format::DockerJson => parse_docker(line),
    };
    parsed.unwrap_or_else(|| Chunk::unparsed(line))
}

fn parse_cri(line: &[u8]) -> Option<Chunk> {
    let mut fields = line.splitn(4, |&b| b == b' ');
    let time = fields.next()?;
    let stream = match fields.next()? {
        b"stdout" => Stream::Stdout,
        b"stderr" => Stream::Stderr,
        _ => return None,
    };
    // The tag is `P` or `F`, possibly followed by `:`-separated extensions (CRI allows that).
    let tag = fields.next()?;
    let partial = match tag.split(|&b| b == b':').next()? {
        b"P" => true,
        b"F" => false,
        _ => return None,
    };
    let text = fields.next().unwrap_or_default();
    Some(Chunk { time_unix_nano: Some(parse_rfc3339(time)?), stream, partial, text: text.to_vec() })
}

#[derive(Deserialize)]
struct DockerLine {
    log: String,
    #[serde(default)]
    stream: String,
    #[serde(default)]
    time: String,
}

fn parse_docker(line: &[u8]) -> Option<Chunk> {
    let record: DockerLine = serde_json::from_slice(line).ok()?;
    let stream = match record.stream.as_str() {
        "stdout" => Stream::Stdout,
        "stderr" => Stream::Stderr,
        _ => Stream::Unknown,
    };
    let mut text = record.log.into_bytes();
    let partial = text.last() != Some(&b'\n');
    if !partial {
        text.pop();
    }
    Some(Chunk { time_unix_nano: parse_rfc3339(record.time.as_bytes()), stream, partial, text })
}

fn parse_rfc3339(time: &[u8]) -> Option<u64> {
    let time = std::str::from_utf8(time).ok()?;
    let parsed = chrono::DateTime::parse_from_rfc3339(time).ok()?;
    u64::try_from(parsed.timestamp_nanos_opt()?).ok()
}

/// A whole line of a container's output, ready to be sent.
#[derive(Debug, PartialEq)]
pub struct Record {
    /// The runtime's time of the line's first chunk; `None` when the line did not parse.
    pub time_unix_nano: Option<u64>,
    pub stream: Stream,
    /// Lossy UTF-8: invalid bytes become U+FFFD rather than dropping the line.
    pub body: String,
    /// The line was longer than `max_line_bytes` and was cut.
    pub truncated: bool,
}

struct Pending {
    time_unix_nano: Option<u64>,
    text: Vec<u8>,
    truncated: bool,
    /// File offset of the first chunk: a restart must re-read from here to rebuild the line.
    start_offset: u64,
    last_chunk_at: Instant,
}

/// Joins partial chunks into records, per stream (stdout and stderr chunks interleave).
pub struct Assembler {
    max_line_bytes: usize,
    pending: [Option<Pending>; 3],
}

impl Assembler {
    pub fn new(max_line_bytes: usize) -> Assembler {
        Assembler { max_line_bytes, pending: [None, None, None] }
    }

    /// Feeds the chunk of the physical line that starts at `line_offset`; returns the record it
    /// completes, if any. `cut` says the physical line itself was cut (longer than the reader
    /// holds), so the record is truncated whatever its length.
    pub fn push(&mut self, chunk: Chunk, line_offset: u64, cut: bool, now: Instant) -> Option<Record> {
        let slot = &mut self.pending[chunk.stream.index()];
        let pending = slot.get_or_insert_with(|| Pending {
            time_unix_nano: chunk.time_unix_nano,
            text: Vec::new(),
            truncated: false,
            start_offset: line_offset,
            last_chunk_at: now,
        });
        pending.last_chunk_at = now;
        pending.truncated |= cut;
        let room = self.max_line_bytes.saturating_sub(pending.text.len());
        if chunk.text.len() > room {
            pending.text.extend_from_slice(&chunk.text[..room]);
            pending.truncated = true;
        } else {
            pending.text.extend_from_slice(&chunk.text);
        }
        if chunk.partial {
            return None;
        }
        let pending = slot.take()?;
        Some(finish(pending, chunk.stream))
    }

    /// The records of lines whose last chunk came longer than `timeout` ago: output that ended
    /// without a newline, or a writer that died mid-line. Waiting longer would hold them back
    /// forever.
    pub fn flush_stale(&mut self, now: Instant, timeout: Duration) -> Vec<Record> {
        self.flush_if(|pending| now.saturating_duration_since(pending.last_chunk_at) >= timeout)
    }

    /// Every half-assembled line, as records (the file is done: released or truncated).
    pub fn flush_all(&mut self) -> Vec<Record> {
        self.flush_if(|_| true)
    }

    fn flush_if(&mut self, condition: impl Fn(&Pending) -> bool) -> Vec<Record> {
        let streams = [Stream::Stdout, Stream::Stderr, Stream::Unknown];
        let mut records = Vec::new();
        for (slot, stream) in self.pending.iter_mut().zip(streams) {
            if slot.as_ref().is_some_and(&condition)
                && let Some(pending) = slot.take()
            {
                records.push(finish(pending, stream));
            }
        }
        records
    }

    /// Where a restart must resume so that no line is lost: the start of the oldest
    /// half-assembled line, or `read_offset` when none is pending.
    pub fn resume_offset(&self, read_offset: u64) -> u64 {
        self.pending.iter().flatten().map(|pending| pending.start_offset).fold(read_offset, u64::min)
    }

    pub fn is_idle(&self) -> bool {
        self.pending.iter().all(Option::is_none)
    }
}

fn finish(pending: Pending, stream: Stream) -> Record {
    let mut text = pending.text;
    if pending.truncated {
        // Cutting may have split a multi-byte character: drop its incomplete tail rather than
        // turning it into a replacement character.
        if let Err(error) = std::str::from_utf8(&text)
            && error.error_len().is_none()
        {
            text.truncate(error.valid_up_to());
        }
    }
    let body = match String::from_utf8(text) {
        Ok(body) => body,
        Err(error) => String::from_utf8_lossy(error.as_bytes()).into_owned(),
    };
    Record { time_unix_nano: pending.time_unix_nano, stream, body, truncated: pending.truncated }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(body: &str, stream: Stream, time: u64, truncated: bool) -> Record {
        Record { time_unix_nano: Some(time), stream, body: body.to_string(), truncated }
    }

    #[test]
    fn cri_lines_parse_exactly() {
        let chunk = parse_line(Format::Cri, b"2026-11-23T02:16:37.067094714+00:00 stdout F line 0");
        assert_eq!(
            chunk,
            Chunk {
                time_unix_nano: Some(1_795_400_197_067_094_714),
                stream: Stream::Stdout,
                partial: false,
                text: b"line 0".to_vec()
            }
        );
        let chunk = parse_line(Format::Cri, b"2026-11-23T02:16:37.5Z stderr P  two  spaces ");
        assert_eq!(chunk.stream, Stream::Stderr);
        assert!(chunk.partial);
        assert_eq!(chunk.text, b" two  spaces ");
        assert_eq!(chunk.time_unix_nano, Some(1_795_400_197_500_000_000));
        // An empty line is an `F` with nothing after the tag.
        assert_eq!(parse_line(Format::Cri, b"2026-11-23T02:16:37Z stdout F").text, b"");
        assert_eq!(parse_line(Format::Cri, b"2026-11-23T02:16:37Z stdout F:x hi").text, b"hi");
    }

    #[test]
    fn lines_that_do_not_parse_are_kept_whole() {
        for line in [&b"not a cri line"[..], b"2026-11-23T02:16:37Z stdin F x", b"yesterday stdout F x", b""] {
            assert_eq!(parse_line(Format::Cri, line), Chunk::unparsed(line));
        }
        assert_eq!(parse_line(Format::DockerJson, b"{\"log\":"), Chunk::unparsed(b"{\"log\":"));
    }

    #[test]
    fn docker_json_lines_parse_and_partials_lack_the_newline() {
        let full = parse_line(
            Format::DockerJson,
            br#"{"log":"hello\n","stream":"stderr","time":"2026-11-23T02:16:37.000000001Z"}"#,
        );
        assert_eq!(
            full,
            Chunk {
                time_unix_nano: Some(1_795_400_197_000_000_001),
                stream: Stream::Stderr,
                partial: false,
                text: b"hello".to_vec()
            }
        );
        let partial = parse_line(
            Format::DockerJson,
            br#"{"log":"hel","stream":"stdout","time":"2026-11-23T02:16:37Z","attrs":{}}"#,
        );
        assert!(partial.partial);
        assert_eq!(partial.text, b"hel");
    }

    #[test]
    fn partial_chunks_join_per_stream_and_resume_at_the_first_chunk() {
        let now = Instant::now();
        let mut assembler = Assembler::new(1024);
        let chunk = |stream, partial, text: &str| Chunk {
            time_unix_nano: Some(if partial { 1 } else { 2 }),
            stream,
            partial,
            text: text.as_bytes().to_vec(),
        };
        assert_eq!(assembler.push(chunk(Stream::Stdout, true, "hel"), 100, false, now), None);
        assert_eq!(assembler.resume_offset(150), 100);
        let stderr = assembler.push(chunk(Stream::Stderr, false, "err"), 150, false, now);
        assert_eq!(stderr, Some(record("err", Stream::Stderr, 2, false)));
        assert_eq!(assembler.resume_offset(200), 100, "stdout's line is still pending");
        let stdout = assembler.push(chunk(Stream::Stdout, false, "lo"), 200, false, now);
        assert_eq!(stdout, Some(record("hello", Stream::Stdout, 1, false)), "the first chunk's time");
        assert_eq!(assembler.resume_offset(250), 250);
        assert!(assembler.is_idle());
    }

    #[test]
    fn long_lines_are_cut_at_the_cap_and_marked() {
        let now = Instant::now();
        let mut assembler = Assembler::new(10);
        for part in ["aaaa", "bbbb", "cccc"] {
            let chunk = Chunk { time_unix_nano: Some(1), stream: Stream::Stdout, partial: true, text: part.into() };
            assert_eq!(assembler.push(chunk, 0, false, now), None);
        }
        let last = Chunk { time_unix_nano: Some(1), stream: Stream::Stdout, partial: false, text: b"dddd".to_vec() };
        assert_eq!(assembler.push(last, 0, false, now), Some(record("aaaabbbbcc", Stream::Stdout, 1, true)));

        // A cut through a multi-byte character drops the incomplete character.
        let mut assembler = Assembler::new(4);
        let chunk = Chunk { time_unix_nano: Some(1), stream: Stream::Stdout, partial: false, text: "abcé".into() };
        assert_eq!(assembler.push(chunk, 0, false, now), Some(record("abc", Stream::Stdout, 1, true)));
    }

    #[test]
    fn invalid_utf8_is_kept_lossy() {
        let mut assembler = Assembler::new(100);
        let chunk = Chunk { time_unix_nano: Some(1), stream: Stream::Stdout, partial: false, text: b"a\xffb".to_vec() };
        assert_eq!(
            assembler.push(chunk, 0, false, Instant::now()),
            Some(record("a\u{fffd}b", Stream::Stdout, 1, false))
        );
    }

    #[test]
    fn stale_partials_are_flushed_after_the_timeout() {
        let start = Instant::now();
        let mut assembler = Assembler::new(100);
        let chunk =
            Chunk { time_unix_nano: Some(1), stream: Stream::Stdout, partial: true, text: b"no-newline".to_vec() };
        assert_eq!(assembler.push(chunk, 7, false, start), None);
        assert!(assembler.flush_stale(start + Duration::from_millis(500), Duration::from_secs(1)).is_empty());
        let flushed = assembler.flush_stale(start + Duration::from_secs(2), Duration::from_secs(1));
        assert_eq!(flushed, vec![record("no-newline", Stream::Stdout, 1, false)]);
        assert_eq!(assembler.resume_offset(40), 40);
    }
}
