//! OTLP/protobuf logs export requests, as OTLP/HTTP (`/v1/logs`) and OTLP/gRPC receive them:
//! decoding must refuse bad bytes with an error, and a request that decodes must convert to
//! rows (see `common`) and replay from its WAL encoding to the same rows. The container
//! lifecycle events among its records merge into an inventory, and kube-state-metrics' series
//! come out of that, without a panic.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use wake_storage::{OtlpRequest, Signal};

fuzz_target!(|data: &[u8]| {
    let Ok(request) = OtlpRequest::decode_protobuf(Signal::Logs, data) else { return };
    assert_eq!(request.signal(), Signal::Logs);
    let converted = common::convert_and_check(&request);
    common::check_replay(Signal::Logs, &request, &converted);
    if let OtlpRequest::Logs(mut logs) = request {
        let events = wake_storage::inventory::event::take_events(&mut logs);
        let mut state = wake_storage::inventory::InventoryState::default();
        state.apply(&events, 64);
        assert!(state.len() <= events.len().max(64));
        let _ = wake_storage::inventory::ksm::series(&state, 1_000_000_000);
    }
});
