//! The record framing of Wake's own append-only logs (the manifest's, the inventory's):
//! `<len: 8 hex> <crc32(json): 8 hex> <json>\n`, one JSON object per line.
//!
//! A record is committed once the `fdatasync` after its append returned. On replay, a torn or
//! corrupt last record (a crash mid-append, never acknowledged) is cut off so that the next
//! append does not land after it; a corrupt record with a valid one after it is an error, since
//! dropping it would silently drop the changes that follow too.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::Path;

use tracing::warn;

use crate::error::{Error, Result};

/// `<len: 8 hex> <crc: 8 hex> `.
const RECORD_HEADER_BYTES: usize = 18;

/// One record's JSON framed for appending.
pub(crate) fn encode_frame(json: &[u8]) -> Result<Vec<u8>, String> {
    let len = u32::try_from(json.len()).map_err(|_| format!("a record of {} bytes is too large", json.len()))?;
    let crc = crc32fast::hash(json);
    let mut frame = Vec::with_capacity(RECORD_HEADER_BYTES + json.len() + 1);
    write!(frame, "{len:08x} {crc:08x} ").map_err(|e| e.to_string())?;
    frame.extend_from_slice(json);
    frame.push(b'\n');
    Ok(frame)
}

fn parse_hex(bytes: &[u8]) -> Option<u32> {
    // `from_str_radix` alone would accept a sign.
    if !bytes.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    u32::from_str_radix(std::str::from_utf8(bytes).ok()?, 16).ok()
}

/// The JSON of the record at the start of `bytes` and the length of its frame, if the frame is
/// whole and its checksum matches.
pub(crate) fn decode_frame(bytes: &[u8]) -> Result<(&[u8], usize), String> {
    let header = bytes.get(..RECORD_HEADER_BYTES).ok_or("the header is cut short")?;
    if header[8] != b' ' || header[17] != b' ' {
        return Err("the header is malformed".to_string());
    }
    let (Some(len), Some(crc)) = (parse_hex(&header[..8]), parse_hex(&header[9..17])) else {
        return Err("the header is malformed".to_string());
    };
    let end = usize::try_from(len).ok().and_then(|len| RECORD_HEADER_BYTES.checked_add(len)).ok_or("too long")?;
    let json = bytes.get(RECORD_HEADER_BYTES..end).ok_or("the record is cut short")?;
    if bytes.get(end) != Some(&b'\n') {
        return Err("the record is cut short or not terminated".to_string());
    }
    if crc32fast::hash(json) != crc {
        return Err("checksum mismatch".to_string());
    }
    Ok((json, end + 1))
}

/// Where a whole, valid record starts after `offset`, if anywhere: records start after a newline.
fn next_valid_record(bytes: &[u8], offset: usize) -> Option<usize> {
    (offset + 1..bytes.len()).find(|&start| bytes[start - 1] == b'\n' && decode_frame(&bytes[start..]).is_ok())
}

/// Hands each record's JSON in the log at `path` to `apply`, cutting off a torn or corrupt last
/// record. Returns the length of the valid log and the number of records; a missing file is an
/// empty log. `corrupt` makes the error of a record that cannot be applied (`offset`, reason).
pub(crate) fn replay(
    path: &Path,
    what: &str,
    mut apply: impl FnMut(&[u8]) -> Result<(), String>,
    corrupt: impl Fn(usize, String) -> Error,
) -> Result<(u64, u64)> {
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
        Err(error) => return Err(Error::io(path, error)),
    };
    let mut offset = 0;
    let mut records = 0u64;
    while offset < bytes.len() {
        match decode_frame(&bytes[offset..]) {
            Ok((json, frame_len)) => {
                // The checksum matched: this is what was written, so a record that does not
                // parse or apply is not a torn write and is never dropped.
                apply(json).map_err(|reason| corrupt(offset, reason))?;
                offset += frame_len;
                records += 1;
            }
            Err(reason) => {
                if let Some(next) = next_valid_record(&bytes, offset) {
                    return Err(corrupt(offset, format!("{reason}, and a valid record follows at offset {next}")));
                }
                // The append a crash interrupted: its commit never returned, so nobody relied
                // on it.
                warn!(
                    path = %path.display(),
                    offset,
                    dropped_bytes = bytes.len() - offset,
                    %reason,
                    "dropping the torn last record of the {what} log"
                );
                let valid = u64::try_from(offset).map_err(|e| Error::Internal(e.to_string()))?;
                OpenOptions::new()
                    .write(true)
                    .open(path)
                    .and_then(|file| {
                        file.set_len(valid)?;
                        file.sync_data()
                    })
                    .map_err(|e| Error::io(path, e))?;
                break;
            }
        }
    }
    let valid = u64::try_from(offset).map_err(|e| Error::Internal(e.to_string()))?;
    Ok((valid, records))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_flipped_byte_is_caught() {
        let frame = encode_frame(br#"{"a":1}"#).unwrap();
        let (json, len) = decode_frame(&frame).unwrap();
        assert_eq!((json, len), (&br#"{"a":1}"#[..], frame.len()));
        let mut bad = frame.clone();
        bad[RECORD_HEADER_BYTES + 2] ^= 1;
        assert_eq!(decode_frame(&bad).unwrap_err(), "checksum mismatch");
        assert!(decode_frame(&frame[..frame.len() - 1]).is_err());
    }
}
