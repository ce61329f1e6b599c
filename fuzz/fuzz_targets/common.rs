//! What every OTLP target checks once a request decoded: the conversion to Arrow rows that
//! `Store::ingest` runs must succeed (an error there would answer a client's request with a
//! 500, which OTLP clients retry forever) and account for every record: each one is a row or
//! counted as rejected. Conversion runs twice: without a time window (OTLP's own rules only)
//! and with the default configuration's, which may only refuse more.

#![allow(dead_code)] // Each target uses part of it.

use opentelemetry_proto::tonic::metrics::v1::metric;
use prost::Message;
use wake_storage::fuzzing::{self, Converted, TimeWindow};
use wake_storage::{OtlpRequest, Signal};

/// A fixed receive time: conversion must be deterministic given the request and this.
pub const RECEIVED_AT_NS: i64 = 1_795_400_197_067_094_714;

/// The records (log records, data points, spans) the request holds, as conversion counts them:
/// metrics without data hold none.
pub fn record_count(request: &OtlpRequest) -> u64 {
    let count = match request {
        OtlpRequest::Logs(request) => {
            request.resource_logs.iter().flat_map(|r| &r.scope_logs).map(|s| s.log_records.len()).sum::<usize>()
        }
        OtlpRequest::Traces(request) => {
            request.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum::<usize>()
        }
        OtlpRequest::Metrics(request) => request
            .resource_metrics
            .iter()
            .flat_map(|r| &r.scope_metrics)
            .flat_map(|s| &s.metrics)
            .map(|m| match &m.data {
                None => 0,
                Some(metric::Data::Gauge(g)) => g.data_points.len(),
                Some(metric::Data::Sum(s)) => s.data_points.len(),
                Some(metric::Data::Histogram(h)) => h.data_points.len(),
                Some(metric::Data::ExponentialHistogram(e)) => e.data_points.len(),
                Some(metric::Data::Summary(s)) => s.data_points.len(),
            })
            .sum::<usize>(),
    };
    count as u64
}

/// Converts as ingest does, with the default time window, and checks the result.
pub fn convert_and_check(request: &OtlpRequest) -> Converted {
    let unbounded = convert_within(request, TimeWindow::UNBOUNDED);
    let converted = convert_within(request, fuzzing::default_window());
    assert!(
        converted.accepted() <= unbounded.accepted() && converted.rejected >= unbounded.rejected,
        "the time window only refuses more ({} rows of {} kept)",
        converted.accepted(),
        unbounded.accepted()
    );
    converted
}

fn convert_within(request: &OtlpRequest, window: TimeWindow) -> Converted {
    let converted = fuzzing::convert(request, RECEIVED_AT_NS, window)
        .unwrap_or_else(|e| panic!("conversion of a decoded {} request failed: {e}", request.signal()));
    assert_eq!(
        converted.accepted() + converted.rejected,
        record_count(request),
        "every record is a row or rejected ({} rows, {} rejected: {}; {window:?})",
        converted.accepted(),
        converted.rejected,
        converted.error_message
    );
    assert_eq!(converted.rejected == 0, converted.error_message.is_empty(), "{:?}", converted.error_message);
    assert_eq!(converted.batch.schema(), request.signal().schema(), "the table's schema");
    converted
}

/// The request's protobuf encoding: what the WAL keeps for a request that came without one
/// (OTLP/JSON, remote write).
pub fn encode_protobuf(request: &OtlpRequest) -> Vec<u8> {
    match request {
        OtlpRequest::Logs(request) => request.encode_to_vec(),
        OtlpRequest::Metrics(request) => request.encode_to_vec(),
        OtlpRequest::Traces(request) => request.encode_to_vec(),
    }
}

/// WAL replay decodes the protobuf the WAL kept and converts it again: it must give the rows
/// that were acknowledged.
pub fn check_replay(signal: Signal, request: &OtlpRequest, converted: &Converted) {
    let payload = encode_protobuf(request);
    let replayed = OtlpRequest::decode_protobuf(signal, &payload)
        .unwrap_or_else(|e| panic!("the WAL payload of a {signal} request does not decode: {e}"));
    let again = convert_and_check(&replayed);
    assert_eq!(
        (again.accepted(), again.rejected),
        (converted.accepted(), converted.rejected),
        "replaying the WAL payload gives other rows"
    );
}

// ---------------------------------------------------------------------------------------------
// The query targets (logql_parse, promql_parse, sql_plan)

/// The input being run, for the note that a tolerated parser panic prints.
static CURRENT_INPUT: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

/// Remembers the input being run (see [`tolerate_parser_panics`]).
pub fn set_input(data: &[u8]) {
    let mut current = CURRENT_INPUT.lock().unwrap_or_else(|e| e.into_inner());
    current.clear();
    current.extend_from_slice(data);
}

/// The third-party parsers whose panics `wake_query::depth::parse_guarded` turns into errors.
const GUARDED_PARSERS: [&str; 3] = ["/logql-parser-", "/promql-parser-", "/sqlparser-"];

/// libFuzzer's panic hook aborts on every panic, even one that is caught. A query parser's panic
/// is caught by design: `depth::parse_guarded` answers it as a bad query (400), so it is not a
/// crash of Wake. This hook lets a panic unwind when the innermost frame outside the standard
/// library that raised it is one of those parsers' code and `parse_guarded` is on the stack; it
/// prints a note (once per location) so that it is still reported. Every other panic aborts as
/// before, and so does a tolerated one that nothing caught (libFuzzer aborts when a panic reaches
/// it). Call it from `init:` (after libFuzzer set its hook).
pub fn tolerate_parser_panics() {
    let previous = std::panic::take_hook();
    let noted = std::sync::Mutex::new(std::collections::HashSet::<String>::new());
    std::panic::set_hook(Box::new(move |info| {
        let backtrace = std::backtrace::Backtrace::force_capture().to_string();
        if let Some(raiser) = guarded_parser_frame(&backtrace) {
            if noted.lock().unwrap_or_else(|e| e.into_inner()).insert(raiser.clone()) {
                let input = CURRENT_INPUT.lock().unwrap_or_else(|e| e.into_inner()).clone();
                eprintln!(
                    "wake-fuzz: tolerated parser panic (caught by depth::parse_guarded) in {raiser}: {info}; input: {:?}",
                    String::from_utf8_lossy(&input)
                );
            }
            return;
        }
        previous(info)
    }));
}

/// The source location (`file:line:col`) of the innermost frame outside the standard library
/// below the panic machinery, if it is a guarded parser's and `parse_guarded` is further up.
fn guarded_parser_frame(backtrace: &str) -> Option<String> {
    if !backtrace.contains("depth::parse_guarded") {
        return None;
    }
    let lines: Vec<&str> = backtrace.lines().map(str::trim).collect();
    let unwind = lines.iter().position(|l| l.contains("rust_begin_unwind") || l.contains("begin_panic"))?;
    let raiser = lines[unwind..].iter().filter_map(|l| l.strip_prefix("at ")).find(|path| {
        !path.starts_with("/rustc/") && !path.contains("/library/std/") && !path.contains("/library/core/")
    })?;
    GUARDED_PARSERS.iter().any(|p| raiser.contains(p)).then(|| raiser.to_string())
}
