//! Parameters of the trace APIs as Tempo and Grafana send them, every client number checked:
//! trace ids (hex, up to 128 bits, left-padded as Tempo does), time ranges (Unix seconds, or
//! nanoseconds and RFC 3339 as the Loki parameters accept), limits and durations.

// Client numbers are handled here: no silent truncation, sign loss or overflow.
#![warn(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::arithmetic_side_effects)]

use std::time::Duration;

use super::TracesError;
use super::load::TimeRange;
use crate::loki::params::{self as loki_params, Params, first};

/// A trace id as the store keeps it: 32 lowercase hex digits. Shorter ids (64-bit ones from
/// Jaeger and Zipkin clients) are left-padded with zeros, as Tempo does.
pub fn trace_id(text: &str) -> Result<String, TracesError> {
    let text = text.trim();
    if text.is_empty() || text.len() > 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(TracesError::BadRequest(format!(
            "invalid trace id {:?}: it must be 1 to 32 hexadecimal digits",
            crate::limits::truncated(text, 64)
        )));
    }
    Ok(format!("{:0>32}", text.to_ascii_lowercase()))
}

fn time(params: &Params, key: &str) -> Result<Option<i64>, TracesError> {
    first(params, key)
        .map(|text| loki_params::parse_time(text).map_err(|e| TracesError::BadRequest(format!("invalid {key}: {e}"))))
        .transpose()
}

/// `start` and `end` if the request names them (both, or neither: Tempo's rule).
pub fn optional_range(params: &Params) -> Result<Option<TimeRange>, TracesError> {
    match (time(params, "start")?, time(params, "end")?) {
        (None, None) => Ok(None),
        (Some(start_ns), Some(end_ns)) if start_ns <= end_ns => Ok(Some(TimeRange { start_ns, end_ns })),
        (Some(_), Some(_)) => Err(TracesError::BadRequest("invalid start: start must not be after end".into())),
        _ => Err(TracesError::BadRequest("start and end must be given together".into())),
    }
}

/// `start`/`end`, or the `default` window before now (then `since` may set it), at most
/// `max_length` long.
pub fn range(params: &Params, default: Duration, max_length: Duration) -> Result<TimeRange, TracesError> {
    let end_ns = time(params, "end")?.unwrap_or_else(loki_params::now_ns);
    let window = match first(params, "since") {
        Some(since) => {
            loki_params::parse_duration(since).map_err(|e| TracesError::BadRequest(format!("invalid since: {e}")))?
        }
        None => default,
    };
    let start_ns = match time(params, "start")? {
        Some(start) => start,
        None => end_ns.saturating_sub(i64::try_from(window.as_nanos()).unwrap_or(i64::MAX)),
    };
    if start_ns > end_ns {
        return Err(TracesError::BadRequest("invalid start: start must not be after end".into()));
    }
    // start <= end was checked, so this cannot overflow.
    let length = i128::from(end_ns).saturating_sub(i128::from(start_ns));
    if length > i128::try_from(max_length.as_nanos()).unwrap_or(i128::MAX) {
        return Err(TracesError::Limit {
            limit: "max_query_length_secs",
            message: format!(
                "the time range is longer than the {} s allowed (query.max_query_length_secs)",
                max_length.as_secs()
            ),
        });
    }
    Ok(TimeRange { start_ns, end_ns })
}

/// A positive count parameter: `default` when absent, at most `max` (more is a 400 naming the
/// limit, as Tempo refuses a search `limit` over its `max_result_limit`).
pub fn count(
    params: &Params,
    key: &str,
    default: usize,
    max: usize,
    limit: &'static str,
) -> Result<usize, TracesError> {
    let Some(text) = first(params, key) else { return Ok(default.min(max)) };
    let value: usize = text.trim().parse().map_err(|_| {
        TracesError::BadRequest(format!(
            "invalid {key} {:?}: must be a positive integer",
            crate::limits::truncated(text, 64)
        ))
    })?;
    if value == 0 {
        return Ok(default.min(max));
    }
    if value > max {
        return Err(TracesError::Limit {
            limit,
            message: format!("{key} {value} is more than the {max} allowed (query.{limit})"),
        });
    }
    Ok(value)
}

/// A Go duration parameter (`100ms`, `1.5s`, `2m`), in nanoseconds.
pub fn duration_ns(params: &Params, key: &str) -> Result<Option<i64>, TracesError> {
    first(params, key)
        .map(|text| {
            loki_params::parse_duration(text)
                .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
                .map_err(|e| TracesError::BadRequest(format!("invalid {key}: {e}")))
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loki::params::parse_form;

    #[test]
    fn trace_ids_are_padded_and_checked() {
        assert_eq!(trace_id("ABC").unwrap(), format!("{}abc", "0".repeat(29)));
        assert_eq!(trace_id(&"f".repeat(32)).unwrap(), "f".repeat(32));
        for bad in ["", "xyz", &"1".repeat(33), "12 34"] {
            assert!(trace_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ranges_take_unix_seconds_and_check_order_and_length() {
        let params = parse_form("start=1700000000&end=1700003600");
        let range = optional_range(&params).unwrap().unwrap();
        assert_eq!(range.start_ns, 1_700_000_000_000_000_000);
        assert!(optional_range(&parse_form("start=5&end=4")).is_err());
        assert!(optional_range(&parse_form("start=5")).is_err());
        assert!(optional_range(&parse_form("")).unwrap().is_none());
        let long = parse_form("start=0&end=1700000000");
        assert!(matches!(range_of(&long), Err(TracesError::Limit { .. })));
        assert!(range_of(&parse_form("start=1e400&end=5")).is_err());
    }

    fn range_of(params: &Params) -> Result<TimeRange, TracesError> {
        range(params, Duration::from_secs(3600), Duration::from_secs(721 * 3600))
    }

    #[test]
    fn counts_default_and_cap() {
        let params = parse_form("limit=50&spss=x");
        assert_eq!(count(&params, "limit", 20, 100, "max").unwrap(), 50);
        assert_eq!(count(&parse_form(""), "limit", 20, 100, "max").unwrap(), 20);
        assert!(count(&params, "spss", 3, 100, "max").is_err());
        assert!(matches!(count(&params, "limit", 20, 10, "max"), Err(TracesError::Limit { .. })));
        assert!(count(&parse_form("limit=-1"), "limit", 20, 100, "max").is_err());
    }
}
