//! Request parameters as Loki and Prometheus accept them and Grafana sends them, with every
//! client number checked: a time, duration, step or limit that is not finite, negative where it
//! must not be, or beyond what the store can represent is a [`ParamError`] (400), never a panic,
//! an overflow or an allocation sized by the client.
//!
//! Times (Loki's `parseTimestamp`): a number with a fraction is Unix seconds; an integer of at
//! most 10 characters is Unix seconds (`start=$(date +%s)`), a longer one Unix nanoseconds;
//! anything else RFC 3339. Durations (`step`, `since`): the workspace's grammar
//! ([`wake_collector::time`]: Prometheus' `5m`, `1h30m`, `1d`, Go's `1.5h`, `250ms`) or a
//! number of seconds. Defaults as Loki's: `end` now, `start` one hour before
//! `end` (or `end - since`), `limit` 100, `direction` backward, and a step that gives about 250
//! points. Loki's limits apply: `limit` at most `max_entries_limit_per_query`, the range at
//! most `max_query_length`, at most 11,000 points per series.

// Client numbers are handled here: no silent truncation, sign loss or overflow.
#![warn(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::arithmetic_side_effects)]

use std::collections::HashMap;
use std::time::Duration;

use wake_collector::time;
pub use wake_collector::time::{MAX_DURATION, duration_ns, now_ns};

/// A bad parameter, or one beyond a limit (`limit` names it): answered with 400 and Loki's
/// error text.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ParamError {
    pub message: String,
    pub limit: Option<&'static str>,
}

impl ParamError {
    pub fn new(message: String) -> Self {
        ParamError { message, limit: None }
    }

    pub fn limit(limit: &'static str, message: String) -> Self {
        ParamError { message, limit: Some(limit) }
    }
}

pub type Params = HashMap<String, Vec<String>>;

/// Parses a query string or a form body into repeated key/value pairs.
pub fn parse_form(text: &str) -> Params {
    let mut params: Params = HashMap::new();
    for (key, value) in form_urlencoded::parse(text.as_bytes()) {
        params.entry(key.into_owned()).or_default().push(value.into_owned());
    }
    params
}

pub fn first<'a>(params: &'a Params, key: &str) -> Option<&'a str> {
    params.get(key).and_then(|values| values.first()).map(String::as_str).filter(|v| !v.is_empty())
}

/// The largest number of seconds whose nanoseconds fit an `i64` (the store's timestamps):
/// 2262-04-11.
pub const MAX_SECONDS: f64 = 9_223_372_036.0;

/// Unix seconds (finite, possibly fractional) as nanoseconds, if the store can represent them.
pub fn seconds_to_ns(seconds: f64) -> Option<i64> {
    if !seconds.is_finite() || seconds.abs() >= MAX_SECONDS {
        return None;
    }
    #[allow(clippy::cast_possible_truncation)] // in range: checked just above
    Some((seconds * 1e9).round() as i64)
}

/// A Loki timestamp: fractional seconds, integer seconds (at most 10 characters) or
/// nanoseconds, or RFC 3339.
pub fn parse_time(text: &str) -> Result<i64, ParamError> {
    let text = text.trim();
    let out_of_range =
        || ParamError::new(format!("cannot parse {text:?} as a timestamp: outside the years 1677 to 2262"));
    if text.contains('.')
        && let Ok(seconds) = text.parse::<f64>()
    {
        return seconds_to_ns(seconds).ok_or_else(out_of_range);
    }
    if let Ok(integer) = text.parse::<i64>() {
        // Loki: `if len(value) <= 10 { return time.Unix(nanos, 0) }`.
        if text.len() <= 10 {
            return integer.checked_mul(1_000_000_000).ok_or_else(out_of_range);
        }
        return Ok(integer);
    }
    if text.bytes().all(|b| b.is_ascii_digit() || b == b'-' || b == b'+') && !text.is_empty() {
        return Err(out_of_range());
    }
    chrono::DateTime::parse_from_rfc3339(text).ok().and_then(|t| t.timestamp_nanos_opt()).ok_or_else(|| {
        ParamError::new(format!("cannot parse {text:?} as a timestamp (seconds, nanoseconds or RFC 3339)"))
    })
}

/// A duration (`1h30m`, `250ms`, `1d`) or a number of seconds, at most [`MAX_DURATION`]: the
/// workspace's one grammar ([`wake_collector::time`]), a superset of Prometheus'.
pub fn parse_duration(text: &str) -> Result<Duration, ParamError> {
    time::parse_duration_or_seconds(text).map_err(|error| ParamError::new(error.to_string()))
}

/// Loki's limits on a query's parameters (`query.max_entries_limit_per_query` and
/// `query.max_query_length_secs`).
#[derive(Clone, Copy, Debug)]
pub struct ParamLimits {
    pub max_entries: usize,
    pub max_query_length: Duration,
}

impl Default for ParamLimits {
    fn default() -> Self {
        ParamLimits { max_entries: 5_000, max_query_length: Duration::from_secs(721 * 3600) }
    }
}

impl ParamLimits {
    pub fn of(config: &crate::QueryConfig) -> Self {
        ParamLimits { max_entries: config.max_entries_limit_per_query, max_query_length: config.max_query_length() }
    }

    /// Loki's error when a query's range (its `end - start`, plus its longest range vector) is
    /// longer than `max_query_length`.
    pub fn check_length(&self, length_ns: i128) -> Result<(), ParamError> {
        let limit_ns = i128::try_from(self.max_query_length.as_nanos()).unwrap_or(i128::MAX);
        if length_ns > limit_ns {
            let length = Duration::from_nanos(u64::try_from(length_ns).unwrap_or(u64::MAX));
            return Err(ParamError::limit(
                "max_query_length_secs",
                format!(
                    "the query time range exceeds the limit (query length: {}, limit: {}) (query.max_query_length_secs)",
                    humanize(length),
                    humanize(self.max_query_length)
                ),
            ));
        }
        Ok(())
    }
}

/// A duration as Go prints one (`721h0m0s`), for Loki's error texts.
fn humanize(duration: Duration) -> String {
    let secs = duration.as_secs();
    format!("{}h{}m{}s", secs / 3600, secs % 3600 / 60, secs % 60)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Forward,
    Backward,
}

/// The parameters of a range query (`query_range`, and the time range of the metadata calls).
#[derive(Clone, Debug)]
pub struct RangeParams {
    pub start_ns: i64,
    pub end_ns: i64,
    pub step: Duration,
    pub limit: usize,
    pub direction: Direction,
}

const DEFAULT_LIMIT: usize = 100;
/// Loki refuses more points per series than this, as Prometheus does.
pub const MAX_POINTS: i64 = 11_000;

pub fn range_params(params: &Params, limits: &ParamLimits) -> Result<RangeParams, ParamError> {
    let end_ns = first(params, "end").map(parse_time).transpose()?.unwrap_or_else(now_ns);
    let start_ns = match (first(params, "start"), first(params, "since")) {
        (Some(start), _) => parse_time(start)?,
        (None, Some(since)) => end_ns.saturating_sub(duration_ns(parse_duration(since)?)),
        (None, None) => end_ns.saturating_sub(3600 * 1_000_000_000),
    };
    if end_ns < start_ns {
        return Err(ParamError::new("end timestamp must not be before start time".into()));
    }
    // Both fit an i64, so their difference fits an i128.
    let length_ns = i128::from(end_ns).saturating_sub(i128::from(start_ns));
    let step = match first(params, "step") {
        Some(step) => parse_duration(step)?,
        // Loki's default: about 250 points, at least a second.
        None => Duration::from_secs(u64::try_from(length_ns / 1_000_000_000 / 250).unwrap_or(u64::MAX).max(1)),
    };
    if step.is_zero() {
        return Err(ParamError::new(
            "zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
        ));
    }
    let step_ns = i128::try_from(step.as_nanos()).unwrap_or(i128::MAX).max(1);
    if length_ns.checked_div(step_ns).unwrap_or(i128::MAX) > i128::from(MAX_POINTS) {
        return Err(ParamError::limit(
            "max_points",
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)"
                .into(),
        ));
    }
    Ok(RangeParams { start_ns, end_ns, step, limit: limit(params, limits)?, direction: direction(params)? })
}

/// `limit`: at most `max_entries_limit_per_query`, as Loki refuses more.
pub fn limit(params: &Params, limits: &ParamLimits) -> Result<usize, ParamError> {
    let limit = match first(params, "limit") {
        None => DEFAULT_LIMIT,
        Some(text) => text
            .trim()
            .parse::<usize>()
            .map_err(|_| ParamError::new(format!("invalid limit {text:?}: expected a non-negative integer")))?,
    };
    if limit > limits.max_entries {
        return Err(ParamError::limit(
            "max_entries_limit_per_query",
            format!(
                "max entries limit per query exceeded, limit > max_entries_limit_per_query ({limit} > {})",
                limits.max_entries
            ),
        ));
    }
    Ok(limit)
}

pub fn direction(params: &Params) -> Result<Direction, ParamError> {
    match first(params, "direction").map(str::to_ascii_lowercase).as_deref() {
        None | Some("backward") => Ok(Direction::Backward),
        Some("forward") => Ok(Direction::Forward),
        Some(other) => Err(ParamError::new(format!("invalid direction {other:?}: expected forward or backward"))),
    }
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn times_are_seconds_nanoseconds_or_rfc3339() {
        assert_eq!(parse_time("1795392000000000001").unwrap(), 1_795_392_000_000_000_001);
        assert_eq!(parse_time("1795392000.5").unwrap(), 1_795_392_000_500_000_000);
        assert_eq!(parse_time("2026-11-23T00:00:00.000000002Z").unwrap(), 1_795_392_000_000_000_002);
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn integers_of_at_most_ten_characters_are_seconds_as_in_loki() {
        // `start=$(date +%s)`.
        assert_eq!(parse_time("1795392000").unwrap(), 1_795_392_000_000_000_000);
        assert_eq!(parse_time("0").unwrap(), 0);
        assert_eq!(parse_time("-60").unwrap(), -60_000_000_000);
        assert_eq!(parse_time("17953920001").unwrap(), 17_953_920_001);
    }

    #[test]
    fn absurd_times_are_refused() {
        for text in ["1e20", "99999999999999999999999", "NaN", "inf", "-9e15.0", "9223372037.0", "9999999999"] {
            assert!(parse_time(text).is_err(), "{text}");
        }
    }

    #[test]
    fn durations_are_prometheus_style_or_seconds() {
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("15").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("-1").is_err());
        assert_eq!(parse_duration("1d").unwrap(), Duration::from_secs(86_400));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        // Loki's 400 says what was wrong.
        let message = |text: &str| parse_duration(text).unwrap_err().to_string();
        assert_eq!(message("5 minutes"), r#"invalid duration "5 minutes": unknown unit " minutes""#);
        assert_eq!(message("300y"), r#"invalid duration "300y": out of range (at most 292 years)"#);
        assert_eq!(message("-1"), r#"invalid duration "-1": negative"#);
    }

    #[test]
    fn absurd_durations_are_refused() {
        for text in ["1e20", "99999999999y", "NaN", "inf", "-0.5", "300y", "1e400"] {
            assert!(parse_duration(text).is_err(), "{text}");
        }
        assert_eq!(parse_duration("292y").unwrap(), Duration::from_secs(292 * 365 * 86400));
        // Found by fuzzing: rounds to the bound as an f64, lies past it as a Duration.
        assert!(parse_duration("9223372036.854776").is_err());
        assert!(parse_duration("9223372036.854775").is_ok_and(|d| d <= MAX_DURATION));
    }

    #[test]
    fn forms_decode_and_repeat() {
        let params = parse_form("match%5B%5D=%7Ba%3D%22b%22%7D&match[]=x&query=a+b&limit=");
        assert_eq!(params["match[]"], vec!["{a=\"b\"}".to_string(), "x".to_string()]);
        assert_eq!(first(&params, "query"), Some("a b"));
        assert_eq!(first(&params, "limit"), None);
    }

    fn range(text: &str) -> Result<RangeParams, ParamError> {
        range_params(&parse_form(text), &ParamLimits::default())
    }

    #[test]
    fn range_defaults_and_limits() {
        let range_ok = range("start=0&end=1000000000000&step=1s&direction=FORWARD&limit=5").unwrap();
        assert_eq!((range_ok.start_ns, range_ok.end_ns, range_ok.limit), (0, 1_000_000_000_000, 5));
        assert_eq!(range_ok.direction, Direction::Forward);
        assert!(range("start=0&end=100000000000000&step=1s").is_err(), "too many points");
        assert!(range("start=10&end=5").is_err());
        let defaults = range("end=3600000000000").unwrap();
        assert_eq!(defaults.start_ns, 0);
        assert_eq!(defaults.step, Duration::from_secs(14));
    }

    #[test]
    fn hostile_ranges_are_400s_not_panics() {
        for text in [
            "start=0&end=3600000000000&step=1e20",
            "start=0&end=3600000000000&step=99999999999y",
            "start=0&end=3600000000000&step=NaN",
            "start=0&end=3600000000000&step=-1",
            "end=3600000000000&since=1e20",
            "start=-9223372036854775808&end=9223372036854775807&step=1",
            "start=0&end=3600000000000&limit=-1",
            "start=0&end=3600000000000&limit=5001",
            "start=0&end=3600000000000&limit=99999999999999999999999",
        ] {
            assert!(range(text).is_err(), "{text}");
        }
        let error = range("start=0&end=3600000000000&limit=5001").unwrap_err().to_string();
        assert_eq!(error, "max entries limit per query exceeded, limit > max_entries_limit_per_query (5001 > 5000)");
        let error = ParamLimits::default().check_length(722 * 3_600_000_000_000).unwrap_err().to_string();
        assert!(
            error.starts_with("the query time range exceeds the limit (query length: 722h0m0s, limit: 721h0m0s)"),
            "{error}"
        );
    }

    proptest! {
        #[test]
        fn any_parameters_parse_or_fail_without_panicking(start in ".{0,24}", end in ".{0,24}", step in ".{0,24}", limit in ".{0,24}") {
            let mut params = Params::new();
            for (key, value) in [("start", start), ("end", end), ("step", step), ("limit", limit)] {
                params.insert(key.to_string(), vec![value]);
            }
            if let Ok(range) = range_params(&params, &ParamLimits::default()) {
                prop_assert!(range.start_ns <= range.end_ns);
                prop_assert!(!range.step.is_zero());
                let points = (i128::from(range.end_ns) - i128::from(range.start_ns)) / i128::try_from(range.step.as_nanos()).unwrap();
                prop_assert!(points <= i128::from(MAX_POINTS));
                prop_assert!(range.limit <= 5_000);
            }
        }

        #[test]
        fn numeric_times_and_durations_never_panic(seconds in proptest::num::f64::ANY, integer in proptest::num::i64::ANY) {
            let _ = parse_time(&seconds.to_string());
            let _ = parse_time(&format!("{seconds:.3}"));
            let _ = parse_time(&integer.to_string());
            if let Ok(duration) = parse_duration(&seconds.to_string()) {
                prop_assert!(duration <= MAX_DURATION);
            }
            if let Ok(duration) = parse_duration(&format!("{integer}y{integer}d")) {
                prop_assert!(duration <= MAX_DURATION);
            }
        }
    }
}
