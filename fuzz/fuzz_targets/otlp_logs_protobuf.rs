//! OTLP/protobuf logs export requests, as OTLP/HTTP (`/v1/logs`) and OTLP/gRPC receive them:
//! decoding must refuse bad bytes with an error, and a request that decodes must convert to
//! rows (see `common`) and replay from its WAL encoding to the same rows.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use wake_storage::{OtlpRequest, Signal};

fuzz_target!(|data: &[u8]| {
    let Ok(request) = OtlpRequest::decode_protobuf(Signal::Logs, data) else { return };
    assert_eq!(request.signal(), Signal::Logs);
    let converted = common::convert_and_check(&request);
    common::check_replay(Signal::Logs, &request, &converted);
});
