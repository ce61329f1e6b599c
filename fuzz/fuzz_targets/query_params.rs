//! The request parameters of the Loki and Prometheus APIs (`wake_query::loki::params`,
//! `wake_query::prom::api::range_steps`): the input is a form body (or query string). Every
//! client number is checked there, so nothing may panic, and what parses must keep the
//! promises the parsers make: `start <= end`, a positive step, at most 11,000 points per
//! series, a `limit` within `max_entries`, durations within `MAX_DURATION`.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use wake_query::loki::params::{self, MAX_DURATION, MAX_POINTS, ParamLimits};

fuzz_target!(|data: &[u8]| {
    // Bodies are read as UTF-8 by the API (`form_urlencoded` decodes the escapes lossily).
    let text = String::from_utf8_lossy(data);
    let params = params::parse_form(&text);
    for limits in [ParamLimits::default(), ParamLimits { max_entries: 7, max_query_length: Duration::from_secs(60) }] {
        if let Ok(range) = params::range_params(&params, &limits) {
            assert!(range.start_ns <= range.end_ns, "start after end: {range:?}");
            assert!(!range.step.is_zero(), "zero step: {range:?}");
            let length = i128::from(range.end_ns) - i128::from(range.start_ns);
            let points = length / i128::try_from(range.step.as_nanos()).unwrap_or(i128::MAX);
            assert!(points <= i128::from(MAX_POINTS), "{points} points: {range:?}");
            assert!(range.limit <= limits.max_entries, "limit beyond max_entries: {range:?}");
            let _ = limits.check_length(length);
        }
        if let Ok(limit) = params::limit(&params, &limits) {
            assert!(limit <= limits.max_entries, "limit {limit} beyond {}", limits.max_entries);
        }
    }
    let _ = params::direction(&params);
    for value in params.values().flatten() {
        let _ = params::parse_time(value);
        if let Ok(duration) = params::parse_duration(value) {
            assert!(duration <= MAX_DURATION, "{value:?} parsed to {duration:?}");
            assert!(params::duration_ns(duration) >= 0);
        }
    }
    if let Ok(steps) = wake_query::prom::api::range_steps(&params) {
        assert!(steps.end >= steps.start, "end before start: {steps:?}");
        assert!(steps.step > 0, "step not positive: {steps:?}");
        let points = (i128::from(steps.end) - i128::from(steps.start)) / i128::from(steps.step);
        assert!(points <= 11_000, "{points} points: {steps:?}");
        assert_eq!(steps.len() as i128, points + 1);
    }
});
