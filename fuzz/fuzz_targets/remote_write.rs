//! Prometheus remote write 1.0 bodies (`POST /api/v1/write`): snappy block decompression,
//! `prometheus.WriteRequest` decoding, validation and the mapping onto OTLP. A body the receiver
//! validated must convert to one row per sample, and replay from its WAL encoding to the same
//! rows. Validation is all-or-nothing (what the receiver validated converts whole); only the
//! store's time window may then drop samples, as Prometheus drops out-of-bounds samples, and
//! every one it drops is counted as rejected.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use wake_storage::fuzzing::{self, TimeWindow};
use wake_storage::{OtlpRequest, Signal};


fuzz_target!(|data: &[u8]| {
    let Some((request, samples)) = fuzzing::remote_write_decode(data) else { return };
    let request = OtlpRequest::Metrics(request);
    assert_eq!(common::record_count(&request), samples as u64, "one data point per sample");

    // What the receiver validated, OTLP conversion must not refuse.
    let unbounded = fuzzing::convert(&request, common::RECEIVED_AT_NS, TimeWindow::UNBOUNDED)
        .unwrap_or_else(|e| panic!("conversion of a validated remote write request failed: {e}"));
    assert_eq!(
        (unbounded.accepted(), unbounded.rejected),
        (samples as u64, 0),
        "a validated remote write request converts whole: {}",
        unbounded.error_message
    );

    let converted = common::convert_and_check(&request);
    assert_eq!(converted.accepted() + converted.rejected, samples as u64, "every sample is kept or counted");
    if converted.rejected > 0 {
        assert!(
            converted.error_message.contains("accepted window"),
            "only the time window drops validated samples: {}",
            converted.error_message
        );
    }
    common::check_replay(Signal::Metrics, &request, &converted);
});
