//! OTLP/JSON export requests (OTLP/HTTP with `Content-Type: application/json`). The first byte
//! picks the signal, the rest is the body: decoding must refuse bad JSON with an error, and a
//! request that decodes must convert to rows (see `common`) and, as the WAL keeps such a
//! request re-encoded as protobuf, replay from that encoding to the same rows.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use wake_storage::{OtlpRequest, Signal};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let signal = Signal::ALL[usize::from(selector) % Signal::ALL.len()];
    let Ok(request) = OtlpRequest::decode_json(signal, body) else { return };
    assert_eq!(request.signal(), signal);
    let converted = common::convert_and_check(&request);
    common::check_replay(signal, &request, &converted);
});
