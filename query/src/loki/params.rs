//! Request parameters as Loki accepts them and Grafana sends them.
//!
//! Times: an integer is Unix nanoseconds, a number with a fraction is Unix seconds, anything
//! else RFC 3339 (Loki's `parseTimestamp`). Durations (`step`, `since`): Prometheus syntax
//! (`5m`, `1h30m`, `250ms`) or a number of seconds. Defaults as Loki's: `end` now, `start` one
//! hour before `end` (or `end - since`), `limit` 100, `direction` backward, and a step that gives
//! about 250 points.

use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A bad parameter: answered with 400 and Loki's error text.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ParamError(pub String);

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

pub fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// A Loki timestamp: integer nanoseconds, fractional seconds, or RFC 3339.
pub fn parse_time(text: &str) -> Result<i64, ParamError> {
    let text = text.trim();
    if let Ok(ns) = text.parse::<i64>() {
        return Ok(ns);
    }
    if let Ok(seconds) = text.parse::<f64>()
        && seconds.is_finite()
    {
        return Ok((seconds * 1e9).round() as i64);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .ok()
        .and_then(|t| t.timestamp_nanos_opt())
        .ok_or_else(|| ParamError(format!("cannot parse {text:?} as a timestamp (ns, seconds or RFC 3339)")))
}

/// A Prometheus duration (`1h30m`, `250ms`) or a number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, ParamError> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>() {
        if seconds.is_finite() && seconds >= 0.0 {
            return Ok(Duration::from_secs_f64(seconds));
        }
        return Err(ParamError(format!("invalid duration {text:?}")));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    if rest.is_empty() {
        return Err(ParamError("empty duration".into()));
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(rest.len());
        let unit_end = rest[digits..].find(|c: char| c.is_ascii_digit()).map_or(rest.len(), |i| digits + i);
        let (number, unit) = (&rest[..digits], &rest[digits..unit_end]);
        let value: f64 = number.parse().map_err(|_| ParamError(format!("invalid duration {text:?}")))?;
        let unit_secs = match unit {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            "w" => 7.0 * 86400.0,
            "y" => 365.0 * 86400.0,
            _ => return Err(ParamError(format!("invalid duration {text:?}: unknown unit {unit:?}"))),
        };
        total += Duration::from_secs_f64(value * unit_secs);
        rest = &rest[unit_end..];
    }
    Ok(total)
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

pub fn range_params(params: &Params) -> Result<RangeParams, ParamError> {
    let end_ns = first(params, "end").map(parse_time).transpose()?.unwrap_or_else(now_ns);
    let start_ns = match (first(params, "start"), first(params, "since")) {
        (Some(start), _) => parse_time(start)?,
        (None, Some(since)) => end_ns - parse_duration(since)?.as_nanos() as i64,
        (None, None) => end_ns - 3600 * 1_000_000_000,
    };
    if end_ns < start_ns {
        return Err(ParamError("end timestamp must not be before start time".into()));
    }
    let step = match first(params, "step") {
        Some(step) => parse_duration(step)?,
        // Loki's default: about 250 points, at least a second.
        None => Duration::from_secs((((end_ns - start_ns) / 1_000_000_000) / 250).max(1) as u64),
    };
    if step.is_zero() {
        return Err(ParamError(
            "zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
        ));
    }
    if (end_ns - start_ns) / step.as_nanos().max(1) as i64 > MAX_POINTS {
        return Err(ParamError(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution (?step=XX)"
                .into(),
        ));
    }
    Ok(RangeParams { start_ns, end_ns, step, limit: limit(params)?, direction: direction(params)? })
}

pub fn limit(params: &Params) -> Result<usize, ParamError> {
    match first(params, "limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(text) => text.parse::<usize>().map_err(|_| ParamError(format!("invalid limit {text:?}"))),
    }
}

pub fn direction(params: &Params) -> Result<Direction, ParamError> {
    match first(params, "direction").map(str::to_ascii_lowercase).as_deref() {
        None | Some("backward") => Ok(Direction::Backward),
        Some("forward") => Ok(Direction::Forward),
        Some(other) => Err(ParamError(format!("invalid direction {other:?}: expected forward or backward"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_nanoseconds_seconds_or_rfc3339() {
        assert_eq!(parse_time("1795392000000000001").unwrap(), 1_795_392_000_000_000_001);
        assert_eq!(parse_time("1795392000.5").unwrap(), 1_795_392_000_500_000_000);
        assert_eq!(parse_time("2026-11-23T00:00:00.000000002Z").unwrap(), 1_795_392_000_000_000_002);
        assert!(parse_time("yesterday").is_err());
    }

    #[test]
    fn durations_are_prometheus_style_or_seconds() {
        assert_eq!(parse_duration("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("15").unwrap(), Duration::from_secs(15));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("-1").is_err());
    }

    #[test]
    fn forms_decode_and_repeat() {
        let params = parse_form("match%5B%5D=%7Ba%3D%22b%22%7D&match[]=x&query=a+b&limit=");
        assert_eq!(params["match[]"], vec!["{a=\"b\"}".to_string(), "x".to_string()]);
        assert_eq!(first(&params, "query"), Some("a b"));
        assert_eq!(first(&params, "limit"), None);
    }

    #[test]
    fn range_defaults_and_limits() {
        let params = parse_form("start=0&end=1000000000000&step=1s&direction=FORWARD&limit=5");
        let range = range_params(&params).unwrap();
        assert_eq!((range.start_ns, range.end_ns, range.limit), (0, 1_000_000_000_000, 5));
        assert_eq!(range.direction, Direction::Forward);
        assert!(range_params(&parse_form("start=0&end=100000000000000&step=1s")).is_err(), "too many points");
        assert!(range_params(&parse_form("start=10&end=5")).is_err());
        let defaults = range_params(&parse_form("end=3600000000000")).unwrap();
        assert_eq!(defaults.start_ns, 0);
        assert_eq!(defaults.step, Duration::from_secs(14));
    }
}
