//! The numbers metrics functions read off spans: values in seconds, and the power-of-two
//! buckets and quantile interpolation of Tempo's `histogram_over_time` and
//! `quantile_over_time` (`Log2Bucketize`, `Log2Quantile` in `engine_metrics.go`).

use std::collections::BTreeMap;

use crate::traces::traceql::value::Value;

/// A number in the unit of metrics: durations in seconds.
pub(super) fn as_seconds(v: &Value) -> Option<f64> {
    match v {
        Value::Int(n) => Some(*n as f64),
        Value::Float(x) => Some(*x),
        Value::Duration(ns) => Some(*ns as f64 / 1e9),
        _ => None,
    }
}

/// The histogram bucket of a value, as Tempo's `bucketizeAttribute`: the power of two at or
/// above it, for durations (then in seconds) and ints of at least 2; none for floats.
pub(super) fn log2_bucket(v: &Value) -> Option<f64> {
    let (n, scale) = match v {
        Value::Duration(ns) => (*ns, 1e9),
        Value::Int(n) => (*n, 1.0),
        _ => return None,
    };
    if n < 2 {
        return None;
    }
    let bits = 64 - (n as u64 - 1).leading_zeros();
    let bucket = 1u64.checked_shl(bits).map_or(2f64.powi(64), |b| b as f64);
    Some(bucket / scale)
}

/// Tempo's `Log2Quantile`: the bucket holding the `p`th sample (rounded up), interpolated
/// exponentially between the bucket below and this one by the share of it that is needed.
pub(super) fn log2_quantile(p: f64, histogram: &BTreeMap<u64, u64>) -> f64 {
    let buckets: Vec<(f64, u64)> = histogram.iter().map(|(bits, count)| (f64::from_bits(*bits), *count)).collect();
    let total: u64 = buckets.iter().map(|(_, c)| c).sum();
    if p.is_nan() || !(0.0..=1.0).contains(&p) || total == 0 {
        return 0.0;
    }
    let wanted = ((p * total as f64).ceil() as u64).max(1);
    let (mut consumed, mut at) = (0u64, 0usize);
    for (i, (max, count)) in buckets.iter().enumerate() {
        at = i;
        if consumed + count > wanted {
            break;
        }
        consumed += count;
        if consumed == wanted {
            return *max;
        }
    }
    let Some(&(max, count)) = buckets.get(at) else { return 0.0 };
    let share = wanted.saturating_sub(consumed) as f64 / count.max(1) as f64;
    let high = max.log2();
    let low = if at > 0 { buckets[at - 1].0.log2() } else { high - 1.0 };
    2f64.powf(low + (high - low) * share)
}
