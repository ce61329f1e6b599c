//! Container log lines (collector/src/parse.rs): the input, split on `\n`, is read as a CRI file
//! and as a Docker `json-file` file, every physical line parsed with `parse_line` and fed to an
//! `Assembler`, as the tailer does. Besides never panicking, the records must be what the
//! module promises, checked against a model of it:
//! - a line's chunks join per stream, and a record comes exactly when its stream's last (`F`,
//!   or newline-terminated) chunk does, with the time of its first chunk;
//! - a record keeps at most `max_line_bytes` bytes of the line, and is marked truncated exactly
//!   when the line was longer or a physical line was cut; a cut through a multi-byte character
//!   drops the incomplete character;
//! - the body is the kept bytes as lossy UTF-8, so it is at most `max_line_bytes` long when they
//!   are valid UTF-8, and at most 3 × `max_line_bytes` (one U+FFFD per invalid byte) otherwise;
//! - `resume_offset` is the start of the oldest pending line, and nothing is lost: flushing at
//!   the end gives back every pending line.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use wake_collector::parse::{Assembler, Chunk, Format, Record, Stream, parse_line};

/// A small cap, so that short inputs reach the cutting code.
const MAX_LINE_BYTES: usize = 64;
/// Physical lines longer than this are cut before parsing, as the tailer does at
/// `max_line_bytes + PHYSICAL_LINE_SLACK` (64 KiB there; small here for the same reason).
const PHYSICAL_LINE_CAP: usize = MAX_LINE_BYTES + 64;
/// The U+FFFD that replaces each invalid byte at most triples it.
const LOSSY_SLACK: usize = 3;

struct ModelPending {
    time_unix_nano: Option<u64>,
    raw: Vec<u8>,
    cut: bool,
    start_offset: u64,
    last_chunk_at: Instant,
}

fn slot(stream: Stream) -> usize {
    match stream {
        Stream::Stdout => 0,
        Stream::Stderr => 1,
        Stream::Unknown => 2,
    }
}

fn expected(pending: ModelPending, stream: Stream) -> Record {
    let truncated = pending.cut || pending.raw.len() > MAX_LINE_BYTES;
    let mut kept = pending.raw;
    kept.truncate(MAX_LINE_BYTES);
    if truncated
        && let Err(error) = std::str::from_utf8(&kept)
        && error.error_len().is_none()
    {
        kept.truncate(error.valid_up_to());
    }
    Record {
        time_unix_nano: pending.time_unix_nano,
        stream,
        body: String::from_utf8_lossy(&kept).into_owned(),
        truncated,
    }
}

fn check_record(record: &Record, want: &Record) {
    assert_eq!(record, want);
    assert!(record.body.len() <= LOSSY_SLACK * MAX_LINE_BYTES, "body of {} bytes", record.body.len());
    if !record.body.contains('\u{fffd}') {
        assert!(record.body.len() <= MAX_LINE_BYTES, "valid UTF-8 body of {} bytes", record.body.len());
    }
}

fn check_chunk(format: Format, line: &[u8], chunk: &Chunk) {
    let unparsed = chunk.stream == Stream::Unknown && chunk.time_unix_nano.is_none() && !chunk.partial;
    match format {
        Format::Cri if chunk.stream == Stream::Unknown => {
            assert!(unparsed && chunk.text == line, "a CRI line that does not parse is kept whole");
        }
        // The text is the line's fourth field, as it is.
        Format::Cri => assert!(chunk.time_unix_nano.is_some() && line.ends_with(&chunk.text)),
        Format::DockerJson => {
            if chunk.text.as_slice() != line {
                // Parsed: `log` was a JSON string, so its text is UTF-8, without its newline.
                assert!(std::str::from_utf8(&chunk.text).is_ok());
            }
        }
    }
}

fn run(format: Format, data: &[u8]) {
    let mut assembler = Assembler::new(MAX_LINE_BYTES);
    let mut model: [Option<ModelPending>; 3] = [None, None, None];
    let mut offset = 0u64;
    let mut now = Instant::now();
    for line in data.split(|&b| b == b'\n') {
        let line_offset = offset;
        offset += line.len() as u64 + 1;
        now += Duration::from_millis(1);

        let cut = line.len() > PHYSICAL_LINE_CAP;
        let physical = if cut { &line[..PHYSICAL_LINE_CAP] } else { line };
        let chunk = parse_line(format, physical);
        check_chunk(format, physical, &chunk);

        let stream = chunk.stream;
        let partial = chunk.partial;
        let pending = model[slot(stream)].get_or_insert_with(|| ModelPending {
            time_unix_nano: chunk.time_unix_nano,
            raw: Vec::new(),
            cut: false,
            start_offset: line_offset,
            last_chunk_at: now,
        });
        pending.last_chunk_at = now;
        pending.raw.extend_from_slice(&chunk.text);
        pending.cut |= cut;

        let record = assembler.push(chunk, line_offset, cut, now);
        if partial {
            assert_eq!(record, None, "a partial chunk completes no record");
        } else {
            let pending = model[slot(stream)].take().expect("just inserted");
            let record = record.expect("a final chunk completes its line's record");
            check_record(&record, &expected(pending, stream));
        }

        let oldest = model.iter().flatten().map(|p| p.start_offset).fold(offset, u64::min);
        assert_eq!(assembler.resume_offset(offset), oldest);
        assert_eq!(assembler.is_idle(), model.iter().all(Option::is_none));
    }

    // The lines whose last chunk is at least a millisecond old (all but the last line's), then
    // every other one: each pending line comes back exactly once, as its record.
    let timeout = Duration::from_millis(1);
    let stale = assembler.flush_stale(now, timeout);
    let rest = assembler.flush_all();
    assert!(assembler.is_idle());
    assert_eq!(assembler.resume_offset(offset), offset);
    let (mut want_stale, mut want_rest) = (Vec::new(), Vec::new());
    for stream in [Stream::Stdout, Stream::Stderr, Stream::Unknown] {
        if let Some(pending) = model[slot(stream)].take() {
            let is_stale = now.saturating_duration_since(pending.last_chunk_at) >= timeout;
            let want = expected(pending, stream);
            if is_stale { want_stale.push(want) } else { want_rest.push(want) }
        }
    }
    for (got, want) in [(&stale, &want_stale), (&rest, &want_rest)] {
        assert_eq!(got.len(), want.len(), "flushed {got:?}, expected {want:?}");
        for (record, want) in got.iter().zip(want) {
            check_record(record, want);
        }
    }
}

fuzz_target!(|data: &[u8]| {
    run(Format::Cri, data);
    run(Format::DockerJson, data);
});
