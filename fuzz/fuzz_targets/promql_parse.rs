//! PromQL expressions (`query` of the Prometheus API's `query` and `query_range`): parsing within
//! the depth limit, then evaluation as an instant query and as range queries over a few series
//! in memory (counters with a reset, a histogram, a staleness marker, special values, samples at
//! the ends of the store's time range), with the API's kind of limits. Errors are answers;
//! a panic or a stack overflow is a bug.
#![no_main]

mod common;

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use wake_query::prom::eval::{self, EvalLimits, MemorySource, QueryValue, Sample, SeriesData, Steps};
use wake_query::prom::naming::Labels;

/// The times the store can represent, in ms (the API refuses others).
const STORE_MIN_MS: i64 = -9_223_372_036_000;
const STORE_MAX_MS: i64 = 9_223_372_036_000;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a current-thread runtime")
});

fn series(pairs: &[(&str, &str)], samples: impl IntoIterator<Item = Sample>) -> SeriesData {
    let labels: Labels = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    SeriesData { labels, samples: samples.into_iter().collect() }
}

/// Scraped every 15 s from 0 to 600 s unless said otherwise.
static SOURCE: LazyLock<MemorySource> = LazyLock::new(|| {
    let every = |f: fn(i64) -> f64| (0..=40).map(move |i| (i * 15_000, f(i)));
    let stale = f64::from_bits(wake_storage::prompb::STALE_NAN_BITS);
    let mut all = vec![
        series(&[("__name__", "requests_total"), ("job", "api"), ("instance", "a")], every(|i| i as f64 * 10.0)),
        series(
            &[("__name__", "requests_total"), ("job", "api"), ("instance", "b")],
            every(|i| if i < 20 { i as f64 } else { (i - 20) as f64 }),
        ),
        series(&[("__name__", "up"), ("job", "api"), ("instance", "a")], [(0, 1.0), (600_000, 1.0)]),
        series(&[("__name__", "up"), ("job", "db"), ("instance", "b")], [(0, 1.0)]),
        series(&[("__name__", "gone"), ("instance", "a")], [(0, 5.0), (15_000, stale)]),
        series(
            &[("__name__", "special"), ("kind", "values")],
            [(0, f64::NAN), (15_000, f64::INFINITY), (30_000, f64::NEG_INFINITY), (45_000, -0.0), (60_000, 1e308)],
        ),
        series(&[("__name__", "special"), ("kind", "ünïcödé"), ("le", "not a number")], every(|i| -(i as f64))),
        series(&[("__name__", "edges")], [(STORE_MIN_MS, 1.0), (0, 2.0), (STORE_MAX_MS, 3.0)]),
    ];
    for (le, per_step) in [("0.1", 1.0), ("0.5", 4.0), ("1", 6.0), ("+Inf", 7.0), ("NaN", 2.0)] {
        let samples: Vec<Sample> = (0..=40).map(|i| (i * 15_000, i as f64 * per_step)).collect();
        all.push(series(&[("__name__", "http_request_duration_seconds_bucket"), ("job", "api"), ("le", le)], samples));
    }
    all.push(series(&[("__name__", "http_request_duration_seconds_count"), ("job", "api")], every(|i| i as f64 * 7.0)));
    MemorySource(all)
});

fn limits() -> EvalLimits {
    EvalLimits { deadline: Some(Instant::now() + Duration::from_secs(2)), max_samples: 1_000_000, max_series: 1000 }
}

/// Instant query times: at the end of the data, near its start, and the ends of the store's range.
const TIMES: [i64; 4] = [600_000, 1_000, STORE_MIN_MS, STORE_MAX_MS];

/// Range query grids: over the data, and the store's whole range in 11,000 steps (the most the
/// API allows).
const GRIDS: [Steps; 2] = [
    Steps { start: 0, end: 600_000, step: 15_000 },
    Steps { start: STORE_MIN_MS, end: STORE_MAX_MS, step: (STORE_MAX_MS - STORE_MIN_MS) / 11_000 + 1 },
];

fuzz_target!(init: common::tolerate_parser_panics(), |data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    common::set_input(data);
    let Ok(expr) = eval::parse_limited(text, 256) else { return };
    let source: &MemorySource = &SOURCE;
    RUNTIME.block_on(async {
        for time in TIMES {
            let _ = eval::instant_query(source, &expr, time, limits()).await;
        }
        for steps in GRIDS {
            if let Ok(value) = eval::range_query(source, &expr, steps, limits()).await {
                let QueryValue::Matrix(matrix) = value else { panic!("a range query answered {value:?}") };
                for (labels, samples) in &matrix {
                    for (time, _) in samples {
                        assert!(
                            (steps.start..=steps.end).contains(time) && (time - steps.start) % steps.step == 0,
                            "{labels:?} has a point at {time}, off the grid {steps:?}"
                        );
                    }
                }
            }
        }
    });
});
