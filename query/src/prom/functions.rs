//! PromQL's numeric functions on samples, computing exactly what Prometheus 2.42 computes.
//!
//! This module is a faithful port of the float paths of Prometheus v2.42's `promql/functions.go`
//! and `promql/quantile.go` (native histograms are not supported). It only does the arithmetic:
//! selecting the samples of a window, validating argument counts and types, and attaching labels
//! are the evaluator's job. Where Prometheus drops a series (e.g. `rate` over fewer than two
//! samples) the functions here return `None`.
//!
//! Being faithful means reproducing Prometheus's quirks rather than "fixing" them, because the
//! Debian `prometheus` 2.42 binary is the oracle our results are compared against:
//! - Sums and means use Prometheus's Kahan–Neumaier compensated summation, so results match it
//!   to the last bit rather than only approximately.
//! - In `rate`/`increase`, the counter zero-point clamp is applied *before* the extrapolation
//!   threshold test (later Prometheus versions swapped the order; 2.42 did not).
//! - The date functions convert their argument with Go's `int64(f)`, which on amd64 turns NaN,
//!   ±Inf and out-of-range values into `i64::MIN`, and then run Go's calendar arithmetic on that,
//!   so `year(vector(NaN))` is 292277026596, not NaN. [`eval_date`] reproduces that, wrapping
//!   arithmetic included.
//! - Comparisons follow Go's `math.Max`/`math.Min` NaN and signed-zero rules, not Rust's
//!   `f64::max`/`f64::min` (which ignore NaN).
//!
//! Nothing here panics, whatever the input: timestamps are subtracted with wrapping arithmetic
//! (as Go's `int64` does), and indexing is bounds-checked.

use std::cmp::Ordering;

/// (timestamp in milliseconds, value)
pub type Sample = (i64, f64);

/// The functions that take a range vector (one series' samples in the window, oldest first,
/// timestamps within [range_start_ms, range_end_ms] inclusive, as Prometheus 2.x selects them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeFunction {
    Rate,
    Increase,
    Delta,
    Irate,
    Idelta,
    AvgOverTime,
    MinOverTime,
    MaxOverTime,
    SumOverTime,
    CountOverTime,
    StddevOverTime,
    StdvarOverTime,
    LastOverTime,
    PresentOverTime,
    QuantileOverTime,
    Changes,
    Resets,
    Deriv,
    PredictLinear,
    HoltWinters,
}

impl RangeFunction {
    /// The function called `name` in PromQL, if it is one of the range functions above.
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "rate" => Self::Rate,
            "increase" => Self::Increase,
            "delta" => Self::Delta,
            "irate" => Self::Irate,
            "idelta" => Self::Idelta,
            "avg_over_time" => Self::AvgOverTime,
            "min_over_time" => Self::MinOverTime,
            "max_over_time" => Self::MaxOverTime,
            "sum_over_time" => Self::SumOverTime,
            "count_over_time" => Self::CountOverTime,
            "stddev_over_time" => Self::StddevOverTime,
            "stdvar_over_time" => Self::StdvarOverTime,
            "last_over_time" => Self::LastOverTime,
            "present_over_time" => Self::PresentOverTime,
            "quantile_over_time" => Self::QuantileOverTime,
            "changes" => Self::Changes,
            "resets" => Self::Resets,
            "deriv" => Self::Deriv,
            "predict_linear" => Self::PredictLinear,
            "holt_winters" => Self::HoltWinters,
            _ => return None,
        })
    }
}

/// The window a range function sees.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// The evaluation timestamp (`enh.Ts` in Prometheus); `predict_linear` intercepts here.
    pub eval_ts_ms: i64,
    /// The window's start: the evaluation time minus range and offset.
    pub range_start_ms: i64,
    /// The window's end: the evaluation time minus offset.
    pub range_end_ms: i64,
    /// The selector's range; `rate` divides by it.
    pub range_ms: i64,
}

/// None where Prometheus drops the series (e.g. rate with < 2 samples, empty window).
/// `args` are the scalar arguments in call order other than the range vector:
/// quantile_over_time(φ, …) → [φ]; predict_linear(…, t) → [t]; holt_winters(…, sf, tf) → [sf, tf].
///
/// Argument validation is the evaluator's job: a missing scalar argument yields `None` here, and
/// so does a `holt_winters` factor outside (0, 1), which Prometheus reports as a query error (the
/// evaluator should check the factors first to report that error). As in Prometheus, a NaN
/// factor passes that check and yields NaN.
pub fn eval_range(function: RangeFunction, samples: &[Sample], window: Window, args: &[f64]) -> Option<f64> {
    // The Prometheus engine never calls a range function on a series without samples in the
    // window: such a series simply produces no output.
    let (&(_, first), &(_, last)) = (samples.first()?, samples.last()?);
    match function {
        RangeFunction::Rate => extrapolated_rate(samples, window, true, true),
        RangeFunction::Increase => extrapolated_rate(samples, window, true, false),
        RangeFunction::Delta => extrapolated_rate(samples, window, false, false),
        RangeFunction::Irate => instant_value(samples, true),
        RangeFunction::Idelta => instant_value(samples, false),
        RangeFunction::AvgOverTime => Some(avg_over_time(samples)),
        RangeFunction::MinOverTime => {
            // NaN only survives when every sample is NaN: any number replaces a NaN minimum.
            Some(samples.iter().fold(first, |min, &(_, v)| if v < min || min.is_nan() { v } else { min }))
        }
        RangeFunction::MaxOverTime => {
            Some(samples.iter().fold(first, |max, &(_, v)| if v > max || max.is_nan() { v } else { max }))
        }
        RangeFunction::SumOverTime => {
            let (sum, c) = samples.iter().fold((0.0, 0.0), |(sum, c), &(_, v)| kahan_sum_inc(v, sum, c));
            // The compensation is NaN once the sum has overflowed (Inf - Inf), so leave it out.
            Some(if sum.is_infinite() { sum } else { sum + c })
        }
        RangeFunction::CountOverTime => Some(samples.len() as f64),
        RangeFunction::StddevOverTime => Some(variance_over_time(samples).sqrt()),
        RangeFunction::StdvarOverTime => Some(variance_over_time(samples)),
        RangeFunction::LastOverTime => Some(last),
        RangeFunction::PresentOverTime => Some(1.0),
        RangeFunction::QuantileOverTime => {
            let q = *args.first()?;
            let mut values: Vec<f64> = samples.iter().map(|&(_, v)| v).collect();
            Some(quantile(q, &mut values))
        }
        RangeFunction::Changes => {
            let changes = samples
                .windows(2)
                // Two NaNs in a row are no change, although NaN != NaN.
                .filter(|pair| pair[1].1 != pair[0].1 && !(pair[1].1.is_nan() && pair[0].1.is_nan()))
                .count();
            Some(changes as f64)
        }
        RangeFunction::Resets => Some(samples.windows(2).filter(|pair| pair[1].1 < pair[0].1).count() as f64),
        RangeFunction::Deriv => {
            if samples.len() < 2 {
                return None;
            }
            // Prometheus centres x on the first sample's time rather than the Unix epoch, so that
            // x*x does not lose all precision to the magnitude of millisecond timestamps
            // (prometheus/prometheus#2674).
            let (slope, _) = linear_regression(samples, samples[0].0);
            Some(slope)
        }
        RangeFunction::PredictLinear => {
            let duration = *args.first()?;
            if samples.len() < 2 {
                return None;
            }
            let (slope, intercept) = linear_regression(samples, window.eval_ts_ms);
            Some(slope * duration + intercept)
        }
        RangeFunction::HoltWinters => {
            let (&sf, &tf) = (args.first()?, args.get(1)?);
            holt_winters(samples, sf, tf, first)
        }
    }
}

/// Prometheus's `extrapolatedRate` (2.42) for float samples: `rate`, `increase` and `delta`.
///
/// The raw difference between the last and first samples (plus, for counters, the value before
/// every reset) is extrapolated towards the window's edges, because samples rarely sit exactly
/// on them. It extrapolates all the way to an edge only when the gap to it is below 1.1 average
/// sample intervals; a larger gap suggests the series starts or ends inside the window, so it
/// extrapolates by only half an average interval there.
fn extrapolated_rate(samples: &[Sample], window: Window, is_counter: bool, is_rate: bool) -> Option<f64> {
    let (&(first_t, first_v), &(last_t, last_v)) = (samples.first()?, samples.last()?);
    if samples.len() < 2 {
        return None;
    }
    let mut result = last_v - first_v;
    if is_counter {
        // A drop means the counter restarted from zero: the value before the drop was lost from
        // the last-minus-first difference, so add it back.
        for pair in samples.windows(2) {
            if pair[1].1 < pair[0].1 {
                result += pair[0].1;
            }
        }
    }

    let mut duration_to_start = first_t.wrapping_sub(window.range_start_ms) as f64 / 1000.0;
    let duration_to_end = window.range_end_ms.wrapping_sub(last_t) as f64 / 1000.0;
    let sampled_interval = last_t.wrapping_sub(first_t) as f64 / 1000.0;
    let average_duration_between_samples = sampled_interval / (samples.len() - 1) as f64;

    if is_counter && result > 0.0 && first_v >= 0.0 {
        // Counters cannot be negative: where the slope would reach zero before the window's
        // start, take that zero point as the series' start instead of extrapolating to negative
        // values. 2.42 does this before the threshold test below, so a zero point inside the
        // threshold is extrapolated to in full.
        let duration_to_zero = sampled_interval * (first_v / result);
        if duration_to_zero < duration_to_start {
            duration_to_start = duration_to_zero;
        }
    }

    let extrapolation_threshold = average_duration_between_samples * 1.1;
    let mut extrapolate_to_interval = sampled_interval;
    extrapolate_to_interval += if duration_to_start < extrapolation_threshold {
        duration_to_start
    } else {
        average_duration_between_samples / 2.0
    };
    extrapolate_to_interval += if duration_to_end < extrapolation_threshold {
        duration_to_end
    } else {
        average_duration_between_samples / 2.0
    };

    let mut factor = extrapolate_to_interval / sampled_interval;
    if is_rate {
        factor /= window.range_ms as f64 / 1000.0;
    }
    Some(result * factor)
}

/// Prometheus's `instantValue`: `irate` and `idelta` from the last two samples only.
fn instant_value(samples: &[Sample], is_rate: bool) -> Option<f64> {
    let [.., (previous_t, previous_v), (last_t, last_v)] = *samples else {
        return None;
    };
    let mut result = if is_rate && last_v < previous_v {
        // A counter reset: the counter restarted from zero, so all of the last value is increase.
        last_v
    } else {
        last_v - previous_v
    };
    let sampled_interval = last_t.wrapping_sub(previous_t);
    if sampled_interval == 0 {
        // Two samples at the same instant have no rate; Prometheus drops the series (for idelta
        // too, although it would not divide).
        return None;
    }
    if is_rate {
        result /= sampled_interval as f64 / 1000.0;
    }
    Some(result)
}

/// `avg_over_time` as 2.42 computes it: an incremental mean (which cannot overflow where a plain
/// sum would) with Kahan compensation.
fn avg_over_time(samples: &[Sample]) -> f64 {
    let (mut mean, mut count, mut c) = (0.0_f64, 0.0_f64, 0.0_f64);
    for &(_, v) in samples {
        count += 1.0;
        if mean.is_infinite() {
            // Once the mean is infinite, the update below would compute Inf - Inf = NaN. An
            // infinity of the same sign or any finite value leaves the mean as it is; only the
            // opposite infinity or NaN go through the update, which turns the mean into NaN.
            if v.is_infinite() && (mean > 0.0) == (v > 0.0) {
                continue;
            }
            if !v.is_infinite() && !v.is_nan() {
                continue;
            }
        }
        (mean, c) = kahan_sum_inc(v / count - mean / count, mean, c);
    }
    if mean.is_infinite() { mean } else { mean + c }
}

/// The population variance of the values, by Welford's online algorithm with Kahan
/// compensation of both running sums, as 2.42's `stdvar_over_time` computes it.
fn variance_over_time(samples: &[Sample]) -> f64 {
    let (mut count, mut mean, mut c_mean, mut aux, mut c_aux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &(_, v) in samples {
        count += 1.0;
        let delta = v - (mean + c_mean);
        (mean, c_mean) = kahan_sum_inc(delta / count, mean, c_mean);
        (aux, c_aux) = kahan_sum_inc(delta * (v - (mean + c_mean)), aux, c_aux);
    }
    (aux + c_aux) / count
}

/// Prometheus's `kahanSumInc`: adds `inc` to `sum`, accumulating the lost low-order bits in `c`
/// (Neumaier's variant, which also handles an increment larger than the sum).
fn kahan_sum_inc(inc: f64, sum: f64, mut c: f64) -> (f64, f64) {
    let t = sum + inc;
    if sum.abs() >= inc.abs() {
        c += (sum - t) + inc;
    } else {
        c += (inc - t) + sum;
    }
    (t, c)
}

/// Prometheus's `linearRegression`: the least-squares slope (per second) and the value at
/// `intercept_time_ms`. Needs at least one sample; callers check for two.
fn linear_regression(samples: &[Sample], intercept_time_ms: i64) -> (f64, f64) {
    let (mut n, mut sum_x, mut c_x, mut sum_y, mut c_y) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut sum_xy, mut c_xy, mut sum_x2, mut c_x2) = (0.0, 0.0, 0.0, 0.0);
    let init_y = samples.first().map_or(f64::NAN, |&(_, v)| v);
    let mut const_y = true;
    for (i, &(t, v)) in samples.iter().enumerate() {
        if const_y && i > 0 && v != init_y {
            const_y = false;
        }
        n += 1.0;
        let x = t.wrapping_sub(intercept_time_ms) as f64 / 1e3;
        (sum_x, c_x) = kahan_sum_inc(x, sum_x, c_x);
        (sum_y, c_y) = kahan_sum_inc(v, sum_y, c_y);
        (sum_xy, c_xy) = kahan_sum_inc(x * v, sum_xy, c_xy);
        (sum_x2, c_x2) = kahan_sum_inc(x * x, sum_x2, c_x2);
    }
    if const_y {
        // A constant series has slope 0 exactly; the general formula would only approximate it
        // (or give NaN for an infinite constant, which Prometheus keeps as NaN).
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    sum_x += c_x;
    sum_y += c_y;
    sum_xy += c_xy;
    sum_x2 += c_x2;

    let cov_xy = sum_xy - sum_x * sum_y / n;
    let var_x = sum_x2 - sum_x * sum_x / n;
    let slope = cov_xy / var_x;
    let intercept = sum_y / n - slope * sum_x / n;
    (slope, intercept)
}

/// Prometheus's `funcHoltWinters`: double exponential smoothing, returning the last smoothed
/// value.
fn holt_winters(samples: &[Sample], sf: f64, tf: f64, first: f64) -> Option<f64> {
    // Written as Prometheus tests it, so that a NaN factor is accepted (and yields NaN) as in
    // Prometheus; a range check such as `!(0.0..1.0).contains(&sf)` would reject it.
    if sf <= 0.0 || sf >= 1.0 || tf <= 0.0 || tf >= 1.0 {
        return None;
    }
    let second = samples.get(1)?.1;
    let (mut s0, mut s1) = (0.0, first);
    let mut b = second - first;
    for (i, &(_, v)) in samples.iter().enumerate().skip(1) {
        let x = sf * v;
        // The trend starts as the first difference and is then smoothed against the change of
        // the smoothed value (`calcTrendValue`).
        if i > 1 {
            b = tf * (s1 - s0) + (1.0 - tf) * b;
        }
        let y = (1.0 - sf) * (s1 + b);
        (s0, s1) = (s1, x + y);
    }
    Some(s1)
}

/// Element-wise math on one value: abs ceil floor exp ln log2 log10 sqrt sgn, round (args: [to_nearest] or []),
/// clamp [min,max] (None when min > max, as Prometheus returns an empty vector), clamp_min [min], clamp_max [max],
/// acos asin atan cos sin tan acosh asinh atanh cosh sinh tanh deg rad. None for an unknown name.
///
/// A missing argument (clamp without both bounds, clamp_min/clamp_max without theirs) also gives
/// `None`: the evaluator reports those as errors before calling this.
pub fn eval_math(name: &str, value: f64, args: &[f64]) -> Option<f64> {
    Some(match name {
        "abs" => value.abs(),
        "ceil" => value.ceil(),
        "floor" => value.floor(),
        "exp" => value.exp(),
        "ln" => value.ln(),
        "log2" => go_log2(value),
        // Go's `math.Log10` is ln(x) × (1/ln 10), which is not exact for powers of ten
        // (log10(1e15) is 14.999999999999998 in Prometheus); do the same so the results agree.
        "log10" => value.ln() * std::f64::consts::LOG10_E,
        "sqrt" => value.sqrt(),
        "sgn" => {
            // NaN and both zeros are returned as they are, as in Prometheus.
            if value < 0.0 {
                -1.0
            } else if value > 0.0 {
                1.0
            } else {
                value
            }
        }
        "round" => {
            let to_nearest = args.first().copied().unwrap_or(1.0);
            // Prometheus multiplies by the inverse rather than dividing, as that causes fewer
            // floating point accuracy issues for fractional to_nearest like 0.1. Ties round up.
            let to_nearest_inverse = 1.0 / to_nearest;
            (value * to_nearest_inverse + 0.5).floor() / to_nearest_inverse
        }
        "clamp" => {
            let (&min, &max) = (args.first()?, args.get(1)?);
            if max < min {
                return None;
            }
            go_max(min, go_min(max, value))
        }
        "clamp_min" => go_max(*args.first()?, value),
        "clamp_max" => go_min(*args.first()?, value),
        "acos" => value.acos(),
        "asin" => value.asin(),
        "atan" => value.atan(),
        "cos" => value.cos(),
        "sin" => value.sin(),
        "tan" => value.tan(),
        "acosh" => value.acosh(),
        "asinh" => value.asinh(),
        "atanh" => value.atanh(),
        "cosh" => value.cosh(),
        "sinh" => value.sinh(),
        "tanh" => value.tanh(),
        // The same order of operations as Prometheus, so the rounding is the same.
        "deg" => value * 180.0 / std::f64::consts::PI,
        "rad" => value * std::f64::consts::PI / 180.0,
        _ => return None,
    })
}

/// Go's `math.Log2`: exact for powers of two, otherwise ln of the mantissa scaled, plus the
/// exponent (Rust's `log2` can differ from it in the last bit).
fn go_log2(x: f64) -> f64 {
    let (frac, exp) = go_frexp(x);
    if frac == 0.5 {
        return f64::from(exp - 1);
    }
    frac.ln() * std::f64::consts::LOG2_E + f64::from(exp)
}

/// Go's `math.Frexp`: `x = frac × 2^exp` with |frac| in [0.5, 1); 0, ±Inf and NaN are returned
/// with exponent 0.
fn go_frexp(x: f64) -> (f64, i32) {
    if x == 0.0 || x.is_infinite() || x.is_nan() {
        return (x, 0);
    }
    let (mut x, mut exp) = (x, 0_i32);
    if x.abs() < f64::MIN_POSITIVE {
        // Subnormal: scale into the normal range first so the exponent field is meaningful.
        x *= (1_u64 << 52) as f64;
        exp = -52;
    }
    let bits = x.to_bits();
    exp += ((bits >> 52) & 0x7ff) as i32 - 1023 + 1;
    let frac = f64::from_bits((bits & !(0x7ff << 52)) | (1022 << 52));
    (frac, exp)
}

/// Go's `math.Max`: +Inf wins over NaN, NaN wins over everything else, +0 wins over -0.
fn go_max(x: f64, y: f64) -> f64 {
    if x == f64::INFINITY || y == f64::INFINITY {
        f64::INFINITY
    } else if x.is_nan() || y.is_nan() {
        f64::NAN
    } else if x == 0.0 && x == y {
        if x.is_sign_negative() { y } else { x }
    } else if x > y {
        x
    } else {
        y
    }
}

/// Go's `math.Min`: -Inf wins over NaN, NaN wins over everything else, -0 wins over +0.
fn go_min(x: f64, y: f64) -> f64 {
    if x == f64::NEG_INFINITY || y == f64::NEG_INFINITY {
        f64::NEG_INFINITY
    } else if x.is_nan() || y.is_nan() {
        f64::NAN
    } else if x == 0.0 && x == y {
        if x.is_sign_negative() { x } else { y }
    } else if x < y {
        x
    } else {
        y
    }
}

/// day_of_month day_of_week day_of_year days_in_month hour minute month year, of a Unix time in seconds (UTC),
/// as Prometheus computes them (NaN/Inf input → whatever Prometheus 2.42 returns, see below). None for an unknown
/// name.
///
/// Prometheus 2.42 does not special-case NaN or Inf: it truncates with Go's `int64(v)`, which on
/// amd64 (the oracle's platform) yields `i64::MIN` for NaN, ±Inf and anything out of range, and
/// runs Go's calendar arithmetic on that, wrapping overflow included. The results are reproduced
/// here: e.g. `year` of NaN is 292277026596 and `month` of NaN is 12, not NaN.
pub fn eval_date(name: &str, unix_seconds: f64) -> Option<f64> {
    let abs = go_time::abs_from_unix(go_time::go_f64_to_i64(unix_seconds));
    let value = match name {
        "day_of_month" => go_time::abs_date(abs).day,
        "day_of_week" => go_time::abs_weekday(abs),
        "day_of_year" => go_time::abs_date(abs).yday + 1,
        "days_in_month" => {
            // Prometheus asks Go for day 32 of the month, which Go normalizes into the next
            // month: 32 minus that day is the month's length.
            let date = go_time::abs_date(abs);
            32 - go_time::abs_date(go_time::abs_from_date(date.year, date.month, 32)).day
        }
        "hour" => (abs % go_time::SECONDS_PER_DAY) as i64 / go_time::SECONDS_PER_HOUR as i64,
        "minute" => (abs % go_time::SECONDS_PER_HOUR) as i64 / go_time::SECONDS_PER_MINUTE as i64,
        "month" => go_time::abs_date(abs).month,
        "year" => go_time::abs_date(abs).year,
        _ => return None,
    };
    Some(value as f64)
}

/// The parts of Go's `time` package (as of Go 1.19, which built Debian's Prometheus 2.42) that
/// the date functions use, ported with Go's wrapping integer arithmetic, so that even
/// out-of-range times give Prometheus's answers.
///
/// Go counts "absolute" seconds as a `uint64` from the start of year -292277022399, a year that
/// starts a 400-year Gregorian cycle, which turns calendar math into divisions.
mod go_time {
    pub(super) const SECONDS_PER_MINUTE: u64 = 60;
    pub(super) const SECONDS_PER_HOUR: u64 = 60 * SECONDS_PER_MINUTE;
    pub(super) const SECONDS_PER_DAY: u64 = 24 * SECONDS_PER_HOUR;
    const SECONDS_PER_WEEK: u64 = 7 * SECONDS_PER_DAY;
    const DAYS_PER_400_YEARS: u64 = 365 * 400 + 97;
    const DAYS_PER_100_YEARS: u64 = 365 * 100 + 24;
    const DAYS_PER_4_YEARS: u64 = 365 * 4 + 1;

    const ABSOLUTE_ZERO_YEAR: i64 = -292277022399;
    const INTERNAL_YEAR: i64 = 1;
    /// Go's `(absoluteZeroYear - internalYear) * 365.2425 * secondsPerDay`; 365.2425 days are
    /// exactly 31556952 seconds.
    const ABSOLUTE_TO_INTERNAL: i64 = (ABSOLUTE_ZERO_YEAR - INTERNAL_YEAR) * 31_556_952;
    const INTERNAL_TO_ABSOLUTE: i64 = -ABSOLUTE_TO_INTERNAL;
    const UNIX_TO_INTERNAL: i64 = (1969 * 365 + 1969 / 4 - 1969 / 100 + 1969 / 400) * SECONDS_PER_DAY as i64;
    const INTERNAL_TO_UNIX: i64 = -UNIX_TO_INTERNAL;

    /// Days before the start of each month in a non-leap year (Go's `daysBefore`).
    const DAYS_BEFORE: [i64; 13] = [0, 31, 59, 90, 120, 151, 181, 212, 243, 273, 304, 334, 365];

    /// Go's `int64(f)` on amd64 (CVTTSD2SQ): truncation towards zero, and the "integer
    /// indefinite" `i64::MIN` for NaN and out-of-range values (Rust's `as` saturates instead).
    pub(super) fn go_f64_to_i64(f: f64) -> i64 {
        // 2^63: the first float too large for an i64. -2^63 itself converts exactly.
        const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;
        if f.is_nan() || !(-TWO_POW_63..TWO_POW_63).contains(&f) { i64::MIN } else { f as i64 }
    }

    /// `time.Unix(sec, 0).UTC().abs()`.
    pub(super) fn abs_from_unix(sec: i64) -> u64 {
        sec.wrapping_add(UNIX_TO_INTERNAL + INTERNAL_TO_ABSOLUTE) as u64
    }

    /// A calendar date as Go's `absDate` returns it (month 1-12, day 1-31, yday 0-365).
    #[derive(Debug, Clone, Copy)]
    pub(super) struct Date {
        pub(super) year: i64,
        pub(super) month: i64,
        pub(super) day: i64,
        pub(super) yday: i64,
    }

    /// Go's `isLeap` (Go's `%` truncates like Rust's).
    fn is_leap(year: i64) -> bool {
        year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
    }

    /// Go's `absDate(abs, true)`.
    pub(super) fn abs_date(abs: u64) -> Date {
        let mut d = abs / SECONDS_PER_DAY;

        // Whole 400-year cycles.
        let mut n = d / DAYS_PER_400_YEARS;
        let mut y = 400 * n;
        d -= DAYS_PER_400_YEARS * n;

        // 100-year cycles; the last one of a 400-year cycle has an extra leap day, which would
        // make the quotient 4 on its last day.
        n = d / DAYS_PER_100_YEARS;
        n -= n >> 2;
        y += 100 * n;
        d -= DAYS_PER_100_YEARS * n;

        // 4-year cycles.
        n = d / DAYS_PER_4_YEARS;
        y += 4 * n;
        d -= DAYS_PER_4_YEARS * n;

        // Years within a 4-year cycle; its last year is the leap year.
        n = d / 365;
        n -= n >> 2;
        y += n;
        d -= 365 * n;

        let year = (y as i64).wrapping_add(ABSOLUTE_ZERO_YEAR);
        let yday = d as i64;

        let mut day = yday;
        if is_leap(year) {
            if day > 31 + 29 - 1 {
                // After the leap day: pretend it was not there.
                day -= 1;
            } else if day == 31 + 29 - 1 {
                return Date { year, month: 2, day: 29, yday };
            }
        }

        // Estimate the month assuming 31-day months; that can be one month too low.
        let mut month = day / 31;
        let end = DAYS_BEFORE[(month + 1) as usize];
        let begin = if day >= end {
            month += 1;
            end
        } else {
            DAYS_BEFORE[month as usize]
        };
        Date { year, month: month + 1, day: day - begin + 1, yday }
    }

    /// Go's `absWeekday`: 0 is Sunday. The absolute epoch's January 1 was a Monday.
    pub(super) fn abs_weekday(abs: u64) -> i64 {
        let sec = abs.wrapping_add(SECONDS_PER_DAY) % SECONDS_PER_WEEK;
        (sec / SECONDS_PER_DAY) as i64
    }

    /// Go's `daysSinceEpoch`: days from the absolute epoch to January 1 of `year`.
    fn days_since_epoch(year: i64) -> u64 {
        let mut y = year.wrapping_sub(ABSOLUTE_ZERO_YEAR) as u64;

        let mut n = y / 400;
        y -= 400 * n;
        let mut d = DAYS_PER_400_YEARS.wrapping_mul(n);

        n = y / 100;
        y -= 100 * n;
        d = d.wrapping_add(DAYS_PER_100_YEARS * n);

        n = y / 4;
        y -= 4 * n;
        d = d.wrapping_add(DAYS_PER_4_YEARS * n);

        d.wrapping_add(365 * y)
    }

    /// `time.Date(year, month, day, 0, 0, 0, 0, time.UTC).abs()` for a month in 1-12 (Go
    /// normalizes the day by simply adding it, which is what lets day 32 overflow).
    pub(super) fn abs_from_date(year: i64, month: i64, day: i64) -> u64 {
        let month = month.clamp(1, 12);
        let mut d = days_since_epoch(year);
        d = d.wrapping_add(DAYS_BEFORE[(month - 1) as usize] as u64);
        if is_leap(year) && month >= 3 {
            d = d.wrapping_add(1);
        }
        d = d.wrapping_add((day - 1) as u64);
        let abs = d.wrapping_mul(SECONDS_PER_DAY);
        // Go goes through Unix seconds and back; with wrapping arithmetic that round trip is the
        // identity, but it is kept so the code reads like Go's.
        let unix = (abs as i64).wrapping_add(ABSOLUTE_TO_INTERNAL + INTERNAL_TO_UNIX);
        unix.wrapping_add(UNIX_TO_INTERNAL + INTERNAL_TO_ABSOLUTE) as u64
    }
}

/// A classic histogram bucket: `le` upper bound and cumulative count.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    pub upper_bound: f64,
    pub count: f64,
}

/// Prometheus's bucketQuantile (2.42): sorts, coalesces equal bounds, ensures monotonic counts, needs a +Inf bucket (NaN otherwise), q<0 → -Inf, q>1 → +Inf, NaN q → NaN, interpolation rules including the lowest bucket starting at 0 when its bound is positive.
///
/// `buckets` is left sorted and coalesced. No buckets at all gives NaN (Prometheus never calls
/// it so). Buckets are sorted with NaN bounds after +Inf (Go's sort leaves their place
/// unspecified), so a NaN bound makes the result NaN for want of a +Inf bucket at the end.
pub fn bucket_quantile(q: f64, buckets: &mut Vec<Bucket>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_unstable_by(|a, b| a.upper_bound.total_cmp(&b.upper_bound));
    match buckets.last() {
        Some(last) if last.upper_bound == f64::INFINITY => {}
        _ => return f64::NAN,
    }

    coalesce_buckets(buckets);
    ensure_monotonic(buckets);

    let n = buckets.len();
    if n < 2 {
        return f64::NAN;
    }
    let observations = buckets[n - 1].count;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    // The first bucket holding the rank-th observation; the +Inf bucket is excluded from the
    // search, as a quantile in it cannot be interpolated.
    let b = go_sort_search(n - 1, |i| buckets[i].count >= rank);

    if b == n - 1 {
        // In the +Inf bucket: the best estimate is the highest finite bound.
        return buckets[n - 2].upper_bound;
    }
    if b == 0 && buckets[0].upper_bound <= 0.0 {
        // The lowest bucket has no known lower bound, so interpolating needs one: with a
        // non-positive upper bound there is none to assume, so return the bound itself.
        return buckets[0].upper_bound;
    }
    // A positive lowest bucket is assumed to start at 0.
    let mut bucket_start = 0.0;
    let bucket_end = buckets[b].upper_bound;
    let mut count = buckets[b].count;
    if b > 0 {
        bucket_start = buckets[b - 1].upper_bound;
        count -= buckets[b - 1].count;
        rank -= buckets[b - 1].count;
    }
    bucket_start + (bucket_end - bucket_start) * (rank / count)
}

/// Prometheus's `coalesceBuckets`: merges (sorted) buckets with equal bounds, e.g. `le="1"` and
/// `le="1.0"`, by adding their counts.
fn coalesce_buckets(buckets: &mut Vec<Bucket>) {
    let Some(&first) = buckets.first() else {
        return;
    };
    let mut last = first;
    let mut i = 0;
    for j in 1..buckets.len() {
        let b = buckets[j];
        if b.upper_bound == last.upper_bound {
            last.count += b.count;
        } else {
            buckets[i] = last;
            last = b;
            i += 1;
        }
    }
    buckets[i] = last;
    buckets.truncate(i + 1);
}

/// Prometheus's `ensureMonotonic` (2.42): raises every count to the largest before it, because
/// buckets scraped at slightly different times can make cumulative counts dip, which would
/// otherwise produce negative bucket populations.
///
/// The running maximum starts at the first count, as in Prometheus: a NaN first count therefore
/// disables the correction for the whole histogram (no count compares with NaN), while a NaN
/// further up is only skipped.
fn ensure_monotonic(buckets: &mut [Bucket]) {
    let Some((first, rest)) = buckets.split_first_mut() else {
        return;
    };
    let mut max = first.count;
    for bucket in rest {
        if bucket.count > max {
            max = bucket.count;
        } else if bucket.count < max {
            bucket.count = max;
        }
    }
}

/// Go's `sort.Search`: the smallest i in [0, n) for which `f(i)` holds, or n. Ported as is, so
/// that a non-monotonic `f` (possible with NaN counts) picks the same index as Prometheus.
fn go_sort_search(n: usize, f: impl Fn(usize) -> bool) -> usize {
    let (mut i, mut j) = (0, n);
    while i < j {
        let h = i + (j - i) / 2;
        if !f(h) {
            i = h + 1;
        } else {
            j = h;
        }
    }
    i
}

/// Prometheus's `quantile` (aggregation and quantile_over_time): q<0 → -Inf, q>1 → +Inf, empty → NaN, linear interpolation between ranks (the R-7 method Prometheus uses).
///
/// NaN q gives NaN. `values` is left sorted, NaNs first as Prometheus sorts them (a NaN at
/// either interpolation rank makes the result NaN).
pub fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_unstable_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        (false, true) => Ordering::Greater,
        (false, false) => a.partial_cmp(b).unwrap_or(Ordering::Equal),
    });

    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower_index = rank.floor().max(0.0);
    let upper_index = (n - 1.0).min(lower_index + 1.0);
    let weight = rank - rank.floor();
    // The indices are within [0, n-1] because q is within [0, 1]; `get` only guards that.
    let at = |index: f64| values.get(index as usize).copied().unwrap_or(f64::NAN);
    at(lower_index) * (1.0 - weight) + at(upper_index) * weight
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Equal within 1e-12 relative, with NaN equal to NaN and infinities compared exactly.
    fn close(actual: f64, expected: f64) -> bool {
        if expected.is_nan() {
            return actual.is_nan();
        }
        if expected.is_infinite() || expected == 0.0 {
            return actual == expected;
        }
        ((actual - expected) / expected).abs() <= 1e-12
    }

    #[track_caller]
    fn assert_close(actual: Option<f64>, expected: f64) {
        match actual {
            Some(actual) => assert!(close(actual, expected), "got {actual:e}, expected {expected:e}"),
            None => panic!("got None, expected {expected:e}"),
        }
    }

    /// A window ending at `end_s`, `range_s` long, evaluated at its end (no offset).
    fn window(end_s: i64, range_s: i64) -> Window {
        Window {
            eval_ts_ms: end_s * 1000,
            range_start_ms: (end_s - range_s) * 1000,
            range_end_ms: end_s * 1000,
            range_ms: range_s * 1000,
        }
    }

    /// Samples at the given seconds.
    fn at_seconds(points: &[(i64, f64)]) -> Vec<Sample> {
        points.iter().map(|&(s, v)| (s * 1000, v)).collect()
    }

    fn range(function: RangeFunction, points: &[(i64, f64)], window: Window, args: &[f64]) -> Option<f64> {
        eval_range(function, &at_seconds(points), window, args)
    }

    #[test]
    fn from_name_knows_every_range_function() {
        let names = [
            ("rate", RangeFunction::Rate),
            ("increase", RangeFunction::Increase),
            ("delta", RangeFunction::Delta),
            ("irate", RangeFunction::Irate),
            ("idelta", RangeFunction::Idelta),
            ("avg_over_time", RangeFunction::AvgOverTime),
            ("min_over_time", RangeFunction::MinOverTime),
            ("max_over_time", RangeFunction::MaxOverTime),
            ("sum_over_time", RangeFunction::SumOverTime),
            ("count_over_time", RangeFunction::CountOverTime),
            ("stddev_over_time", RangeFunction::StddevOverTime),
            ("stdvar_over_time", RangeFunction::StdvarOverTime),
            ("last_over_time", RangeFunction::LastOverTime),
            ("present_over_time", RangeFunction::PresentOverTime),
            ("quantile_over_time", RangeFunction::QuantileOverTime),
            ("changes", RangeFunction::Changes),
            ("resets", RangeFunction::Resets),
            ("deriv", RangeFunction::Deriv),
            ("predict_linear", RangeFunction::PredictLinear),
            ("holt_winters", RangeFunction::HoltWinters),
        ];
        for (name, function) in names {
            assert_eq!(RangeFunction::from_name(name), Some(function), "{name}");
        }
        assert_eq!(RangeFunction::from_name("absent_over_time"), None);
        assert_eq!(RangeFunction::from_name("Rate"), None);
        assert_eq!(RangeFunction::from_name(""), None);
    }

    #[test]
    fn rate_and_increase_extrapolate_to_both_edges() {
        // Samples every 15s, 5s after the window's start and 10s before its end: both gaps are
        // under 1.1 intervals (16.5s), so the 30 increase over 45s is stretched to 60s.
        let points = [(5, 10.0), (20, 20.0), (35, 30.0), (50, 40.0)];
        let w = window(60, 60);
        assert_close(range(RangeFunction::Increase, &points, w, &[]), 40.0);
        assert_close(range(RangeFunction::Rate, &points, w, &[]), 40.0 / 60.0);
    }

    #[test]
    fn increase_adds_back_the_value_before_a_counter_reset() {
        // 10 → 20, reset, 5 → 15: 10 + 15 = 25 over 45s, stretched to 60s.
        let points = [(5, 10.0), (20, 20.0), (35, 5.0), (50, 15.0)];
        let w = window(60, 60);
        assert_close(range(RangeFunction::Increase, &points, w, &[]), 25.0 * 60.0 / 45.0);
        assert_close(range(RangeFunction::Rate, &points, w, &[]), 25.0 / 45.0);
        assert_close(range(RangeFunction::Resets, &points, w, &[]), 1.0);
    }

    #[test]
    fn extrapolation_is_capped_at_half_an_interval_when_the_gap_is_large() {
        // Samples every 10s from 30s: the 30s gap at the start exceeds 1.1 intervals, so only 5s
        // are added there; the 10s gap at the end is extrapolated in full.
        let points = [(30, 100.0), (40, 110.0), (50, 120.0)];
        let w = window(60, 60);
        assert_close(range(RangeFunction::Increase, &points, w, &[]), 20.0 * (20.0 + 5.0 + 10.0) / 20.0);
        assert_close(range(RangeFunction::Rate, &points, w, &[]), 35.0 / 60.0);
        // Both gaps large: half an interval on each side.
        let points = [(25, 100.0), (35, 110.0)];
        assert_close(range(RangeFunction::Increase, &points, w, &[]), 10.0 * 20.0 / 10.0);
    }

    #[test]
    fn counter_extrapolation_stops_at_the_zero_point() {
        // 1 → 21 over 20s: the counter would have been 0 one second before the first sample, so
        // the start is extrapolated by 1s, not by the 20s gap (which is over the threshold
        // anyway) nor by half an interval.
        let points = [(20, 1.0), (30, 11.0), (40, 21.0)];
        assert_close(range(RangeFunction::Increase, &points, window(40, 40), &[]), 21.0);
        // delta is not a counter function: it extrapolates by half an interval instead.
        assert_close(range(RangeFunction::Delta, &points, window(40, 40), &[]), 25.0);
    }

    #[test]
    fn zero_point_clamp_comes_before_the_threshold_test() {
        // Verified against Prometheus 2.42: the gap to the window's start (120s) is over the
        // threshold (66s), but the zero point (45s before the first sample) is under it, so 2.42
        // extrapolates by the full 45s (later versions would take half an interval, 30s).
        let points = [(120, 15.0), (180, 35.0), (240, 55.0)];
        assert_close(range(RangeFunction::Increase, &points, window(240, 240), &[]), 55.0);
    }

    #[test]
    fn delta_on_a_gauge_ignores_decreases_as_resets() {
        let points = [(0, 5.0), (15, 3.0), (30, 8.0), (45, 1.0), (60, 2.0)];
        assert_close(range(RangeFunction::Delta, &points, window(60, 60), &[]), -3.0);
        // Extrapolated: 10s at the start (under the 16.5s threshold), 7.5s at the end (20s gap).
        let points = [(10, 5.0), (25, 3.0), (40, 1.0)];
        assert_close(range(RangeFunction::Delta, &points, window(60, 60), &[]), -4.0 * 47.5 / 30.0);
    }

    #[test]
    fn rate_needs_two_samples() {
        let w = window(60, 60);
        for function in [RangeFunction::Rate, RangeFunction::Increase, RangeFunction::Delta] {
            assert_eq!(range(function, &[], w, &[]), None);
            assert_eq!(range(function, &[(30, 1.0)], w, &[]), None);
        }
    }

    #[test]
    fn irate_and_idelta_use_the_last_two_samples() {
        let w = window(20, 60);
        let points = [(0, 10.0), (10, 50.0), (20, 70.0)];
        assert_close(range(RangeFunction::Irate, &points, w, &[]), 2.0);
        assert_close(range(RangeFunction::Idelta, &points, w, &[]), 20.0);
        // A reset: irate counts the whole last value as increase; idelta just subtracts.
        let points = [(0, 10.0), (10, 50.0), (20, 5.0)];
        assert_close(range(RangeFunction::Irate, &points, w, &[]), 0.5);
        assert_close(range(RangeFunction::Idelta, &points, w, &[]), -45.0);
        // Sub-second spacing: per second, not per millisecond.
        assert_close(eval_range(RangeFunction::Irate, &[(1000, 1.0), (1250, 2.0)], w, &[]), 4.0);
        // Fewer than two samples, or two at the same instant: dropped.
        assert_eq!(range(RangeFunction::Irate, &[(10, 1.0)], w, &[]), None);
        assert_eq!(range(RangeFunction::Idelta, &[(10, 1.0), (10, 2.0)], w, &[]), None);
        assert_eq!(range(RangeFunction::Irate, &[(10, 1.0), (10, 2.0)], w, &[]), None);
    }

    #[test]
    fn deriv_and_predict_linear_on_a_line() {
        // y = 3 + 0.5 t (t in seconds), sampled from 100s to 160s.
        let points: Vec<(i64, f64)> = (0..7).map(|i| (100 + 10 * i, 3.0 + 0.5 * (100 + 10 * i) as f64)).collect();
        let w = window(160, 60);
        assert_close(range(RangeFunction::Deriv, &points, w, &[]), 0.5);
        // predict_linear intercepts at the evaluation time: y(160) = 83, plus 60s of slope.
        assert_close(range(RangeFunction::PredictLinear, &points, w, &[60.0]), 113.0);
        assert_close(range(RangeFunction::PredictLinear, &points, w, &[0.0]), 83.0);
        // Evaluated later than the window's end (an offset): the intercept moves with it.
        let w = Window { eval_ts_ms: 200_000, ..w };
        assert_close(range(RangeFunction::PredictLinear, &points, w, &[0.0]), 103.0);
        // Real timestamps: centring x on the first sample keeps full precision.
        let base = 1_709_214_300_000_i64;
        let samples: Vec<Sample> = (0..5).map(|i| (base + i * 15_000, 7.0 - 0.25 * (i * 15) as f64)).collect();
        let w =
            Window { eval_ts_ms: base + 60_000, range_start_ms: base, range_end_ms: base + 60_000, range_ms: 60_000 };
        assert_close(eval_range(RangeFunction::Deriv, &samples, w, &[]), -0.25);
        assert_close(eval_range(RangeFunction::PredictLinear, &samples, w, &[4.0]), -9.0);
    }

    #[test]
    fn deriv_edge_cases() {
        let w = window(60, 60);
        assert_eq!(range(RangeFunction::Deriv, &[(0, 1.0)], w, &[]), None);
        assert_eq!(range(RangeFunction::PredictLinear, &[(0, 1.0)], w, &[10.0]), None);
        assert_eq!(range(RangeFunction::PredictLinear, &[(0, 1.0), (10, 2.0)], w, &[]), None);
        // A constant series has slope exactly 0 and predicts itself.
        let constant = [(0, 5.0), (20, 5.0), (40, 5.0)];
        assert_close(range(RangeFunction::Deriv, &constant, w, &[]), 0.0);
        assert_close(range(RangeFunction::PredictLinear, &constant, w, &[100.0]), 5.0);
        // A constant infinity has no slope (verified against Prometheus 2.42).
        let infinite = [(0, f64::INFINITY), (20, f64::INFINITY)];
        assert_close(range(RangeFunction::PredictLinear, &infinite, w, &[100.0]), f64::NAN);
        // Kahan summation in the regression (verified against Prometheus 2.42, which gives 0;
        // naive sums would give 0.142).
        let points = [(0, 7.3), (60, 9.45741611005233e16), (120, 7.3)];
        assert_close(range(RangeFunction::Deriv, &points, window(120, 600), &[]), 0.0);
    }

    #[test]
    fn over_time_aggregations() {
        let w = window(100, 100);
        let points = [(10, 2.0), (20, 4.0), (30, 4.0), (40, 4.0), (50, 5.0), (60, 5.0), (70, 7.0), (80, 9.0)];
        assert_close(range(RangeFunction::AvgOverTime, &points, w, &[]), 5.0);
        assert_close(range(RangeFunction::SumOverTime, &points, w, &[]), 40.0);
        assert_close(range(RangeFunction::CountOverTime, &points, w, &[]), 8.0);
        assert_close(range(RangeFunction::MinOverTime, &points, w, &[]), 2.0);
        assert_close(range(RangeFunction::MaxOverTime, &points, w, &[]), 9.0);
        assert_close(range(RangeFunction::StddevOverTime, &points, w, &[]), 2.0);
        assert_close(range(RangeFunction::StdvarOverTime, &points, w, &[]), 4.0);
        assert_close(range(RangeFunction::LastOverTime, &points, w, &[]), 9.0);
        assert_close(range(RangeFunction::PresentOverTime, &points, w, &[]), 1.0);
        assert_close(range(RangeFunction::Changes, &points, w, &[]), 4.0);
        assert_close(range(RangeFunction::Resets, &points, w, &[]), 0.0);
        // A single sample: no spread.
        assert_close(range(RangeFunction::StddevOverTime, &[(1, 3.0)], w, &[]), 0.0);
    }

    #[test]
    fn every_range_function_drops_an_empty_window() {
        let all = [
            RangeFunction::Rate,
            RangeFunction::Increase,
            RangeFunction::Delta,
            RangeFunction::Irate,
            RangeFunction::Idelta,
            RangeFunction::AvgOverTime,
            RangeFunction::MinOverTime,
            RangeFunction::MaxOverTime,
            RangeFunction::SumOverTime,
            RangeFunction::CountOverTime,
            RangeFunction::StddevOverTime,
            RangeFunction::StdvarOverTime,
            RangeFunction::LastOverTime,
            RangeFunction::PresentOverTime,
            RangeFunction::QuantileOverTime,
            RangeFunction::Changes,
            RangeFunction::Resets,
            RangeFunction::Deriv,
            RangeFunction::PredictLinear,
            RangeFunction::HoltWinters,
        ];
        for function in all {
            assert_eq!(eval_range(function, &[], window(60, 60), &[0.5, 0.5]), None, "{function:?}");
        }
    }

    #[test]
    fn sums_and_means_use_kahan_summation() {
        // Both verified against Prometheus 2.42 (naive sums give 0 and 0.8).
        let w = window(600, 600);
        let points = [(0, 1e16), (60, 1.0), (120, 1.0), (180, -1e16)];
        assert_close(range(RangeFunction::SumOverTime, &points, w, &[]), 2.0);
        let points = [(0, 1e16), (60, 1.0), (120, 1.0), (180, 1.0), (240, -1e16), (300, 3.0), (360, 0.1)];
        assert_close(range(RangeFunction::AvgOverTime, &points, w, &[]), 0.675);
    }

    #[test]
    fn over_time_aggregations_with_nan_and_inf() {
        let w = window(600, 600);
        // An infinite mean absorbs finite values; opposite infinities make NaN.
        let points = [(0, f64::INFINITY), (60, 1.0), (120, 2.0)];
        assert_close(range(RangeFunction::AvgOverTime, &points, w, &[]), f64::INFINITY);
        assert_close(range(RangeFunction::SumOverTime, &points, w, &[]), f64::INFINITY);
        assert_close(range(RangeFunction::StddevOverTime, &points, w, &[]), f64::NAN);
        let points = [(0, f64::NEG_INFINITY), (60, f64::INFINITY), (120, 2.0)];
        assert_close(range(RangeFunction::AvgOverTime, &points, w, &[]), f64::NAN);
        // NaN is skipped by min/max unless every value is NaN; two NaNs in a row are no change;
        // quantiles sort NaN first (all verified against Prometheus 2.42).
        let nan = f64::NAN;
        let points = [(0, 1.0), (60, nan), (120, nan), (180, 2.0), (240, nan), (300, 1.0), (360, 1.0)];
        assert_close(range(RangeFunction::MaxOverTime, &points, w, &[]), 2.0);
        assert_close(range(RangeFunction::MinOverTime, &points, w, &[]), 1.0);
        assert_close(range(RangeFunction::Changes, &points, w, &[]), 4.0);
        assert_close(range(RangeFunction::QuantileOverTime, &points, w, &[0.5]), 1.0);
        assert_close(range(RangeFunction::MinOverTime, &[(0, nan), (1, 3.0)], w, &[]), 3.0);
        assert_close(range(RangeFunction::MaxOverTime, &[(0, nan), (1, nan)], w, &[]), nan);
    }

    #[test]
    fn quantile_over_time_interpolates() {
        let w = window(60, 60);
        let points = [(0, 4.0), (10, 1.0), (20, 3.0), (30, 2.0)];
        assert_close(range(RangeFunction::QuantileOverTime, &points, w, &[0.25]), 1.75);
        assert_close(range(RangeFunction::QuantileOverTime, &points, w, &[0.5]), 2.5);
        assert_close(range(RangeFunction::QuantileOverTime, &points, w, &[-1.0]), f64::NEG_INFINITY);
        assert_close(range(RangeFunction::QuantileOverTime, &points, w, &[2.0]), f64::INFINITY);
        assert_close(range(RangeFunction::QuantileOverTime, &points, w, &[f64::NAN]), f64::NAN);
        assert_eq!(range(RangeFunction::QuantileOverTime, &points, w, &[]), None);
    }

    #[test]
    fn holt_winters_smooths() {
        let w = window(60, 60);
        // s=1, b=1; then s = 0.5·2 + 0.5·(1+1) = 2; b = 0.5·(2-1) + 0.5·1 = 1; s = 0.5·4 + 0.5·(2+1).
        let points = [(0, 1.0), (10, 2.0), (20, 4.0)];
        assert_close(range(RangeFunction::HoltWinters, &points, w, &[0.5, 0.5]), 3.5);
        // A line is followed exactly.
        let line = [(0, 1.0), (10, 2.0), (20, 3.0), (30, 4.0)];
        assert_close(range(RangeFunction::HoltWinters, &line, w, &[0.3, 0.6]), 4.0);
        // Factors outside (0, 1) are query errors in Prometheus; NaN passes its check.
        for (sf, tf) in [(0.0, 0.5), (1.0, 0.5), (0.5, 0.0), (0.5, 1.0), (-0.1, 0.5), (0.5, 2.0)] {
            assert_eq!(range(RangeFunction::HoltWinters, &points, w, &[sf, tf]), None, "{sf} {tf}");
        }
        assert_close(range(RangeFunction::HoltWinters, &points, w, &[f64::NAN, 0.5]), f64::NAN);
        assert_eq!(range(RangeFunction::HoltWinters, &points, w, &[0.5]), None);
        assert_eq!(range(RangeFunction::HoltWinters, &[(0, 1.0)], w, &[0.5, 0.5]), None);
    }

    fn buckets(pairs: &[(f64, f64)]) -> Vec<Bucket> {
        pairs.iter().map(|&(upper_bound, count)| Bucket { upper_bound, count }).collect()
    }

    #[test]
    fn bucket_quantile_interpolates_within_buckets() {
        let inf = f64::INFINITY;
        let h = [(1.0, 10.0), (2.0, 30.0), (4.0, 40.0), (inf, 40.0)];
        // Rank 20 is the 10th of the 20 observations in (1, 2].
        assert_close(Some(bucket_quantile(0.5, &mut buckets(&h))), 1.5);
        // The lowest bucket starts at 0 because its bound is positive.
        assert_close(Some(bucket_quantile(0.25, &mut buckets(&h))), 1.0);
        assert_close(Some(bucket_quantile(0.1, &mut buckets(&h))), 0.4);
        assert_close(Some(bucket_quantile(1.0, &mut buckets(&h))), 4.0);
        assert_close(Some(bucket_quantile(0.0, &mut buckets(&h))), 0.0);
        // Unsorted input is sorted first.
        let mut shuffled = buckets(&[(4.0, 40.0), (inf, 40.0), (1.0, 10.0), (2.0, 30.0)]);
        assert_close(Some(bucket_quantile(0.5, &mut shuffled)), 1.5);
        assert_eq!(shuffled, buckets(&h));
        // In the +Inf bucket: the highest finite bound.
        let h = [(1.0, 10.0), (2.0, 30.0), (4.0, 40.0), (inf, 50.0)];
        assert_close(Some(bucket_quantile(0.9, &mut buckets(&h))), 4.0);
        // A non-positive lowest bucket has no lower bound to interpolate from.
        let h = [(-1.0, 5.0), (1.0, 10.0), (inf, 10.0)];
        assert_close(Some(bucket_quantile(0.2, &mut buckets(&h))), -1.0);
        assert_close(Some(bucket_quantile(0.75, &mut buckets(&h))), 0.0);
    }

    #[test]
    fn bucket_quantile_edge_cases() {
        let inf = f64::INFINITY;
        let h = [(1.0, 10.0), (2.0, 30.0), (inf, 40.0)];
        assert_close(Some(bucket_quantile(-0.1, &mut buckets(&h))), f64::NEG_INFINITY);
        assert_close(Some(bucket_quantile(1.1, &mut buckets(&h))), f64::INFINITY);
        assert_close(Some(bucket_quantile(f64::NAN, &mut buckets(&h))), f64::NAN);
        // No +Inf bucket.
        assert_close(Some(bucket_quantile(0.5, &mut buckets(&[(1.0, 10.0), (2.0, 30.0)]))), f64::NAN);
        // Nothing to interpolate: no buckets, only +Inf, no observations.
        assert_close(Some(bucket_quantile(0.5, &mut Vec::new())), f64::NAN);
        assert_close(Some(bucket_quantile(0.5, &mut buckets(&[(inf, 10.0)]))), f64::NAN);
        assert_close(Some(bucket_quantile(0.5, &mut buckets(&[(1.0, 0.0), (inf, 0.0)]))), f64::NAN);
    }

    #[test]
    fn bucket_quantile_repairs_non_monotonic_counts() {
        let inf = f64::INFINITY;
        // The 8 dips below the 10 before it and is raised to 10.
        let h = [(1.0, 10.0), (2.0, 8.0), (4.0, 20.0), (inf, 20.0)];
        assert_close(Some(bucket_quantile(0.5, &mut buckets(&h))), 1.0);
        assert_close(Some(bucket_quantile(0.75, &mut buckets(&h))), 3.0);
        // A +Inf count below a finite bucket's is raised too.
        let h = [(1.0, 10.0), (2.0, 30.0), (inf, 20.0)];
        assert_close(Some(bucket_quantile(0.5, &mut buckets(&h))), 1.25);
        // A NaN first count stops the repair altogether (verified against Prometheus 2.42).
        let h = [(0.0, f64::NAN), (2.5, 7.0), (10.0, 12.0), (inf, 9.0)];
        assert_close(Some(bucket_quantile(0.8608693741276188, &mut buckets(&h))), 3.6217365507228534);
    }

    #[test]
    fn bucket_quantile_coalesces_equal_bounds() {
        // le="1" and le="1.0" are one bucket: their counts add up (verified against Prometheus).
        let mut h = buckets(&[(1.0, 3.0), (f64::INFINITY, 10.0), (0.5, 6.0), (1.0, 5.0)]);
        assert_close(Some(bucket_quantile(0.5, &mut h)), 0.5 * 5.0 / 6.0);
        assert_eq!(h, buckets(&[(0.5, 6.0), (1.0, 8.0), (f64::INFINITY, 10.0)]));
        let mut h = buckets(&[(1.0, 5.0), (1.0, 3.0), (f64::INFINITY, 10.0)]);
        assert_close(Some(bucket_quantile(0.4, &mut h)), 0.5);
    }

    #[test]
    fn quantile_interpolates_between_ranks() {
        assert_close(Some(quantile(0.5, &mut [4.0, 1.0, 3.0, 2.0])), 2.5);
        assert_close(Some(quantile(0.0, &mut [4.0, 1.0, 3.0, 2.0])), 1.0);
        assert_close(Some(quantile(1.0, &mut [4.0, 1.0, 3.0, 2.0])), 4.0);
        assert_close(Some(quantile(0.9, &mut [10.0, 20.0, 30.0])), 28.0);
        assert_close(Some(quantile(0.3, &mut [7.0])), 7.0);
        let mut values = [3.0, f64::NAN, 1.0];
        assert_close(Some(quantile(1.0, &mut values)), 3.0);
        assert!(values[0].is_nan() && values[1] == 1.0 && values[2] == 3.0, "NaN sorts first: {values:?}");
        // A NaN at an interpolated rank makes the result NaN.
        assert_close(Some(quantile(0.25, &mut [f64::NAN, 1.0, 2.0])), f64::NAN);
    }

    #[test]
    fn quantile_edge_cases() {
        assert_close(Some(quantile(0.5, &mut [])), f64::NAN);
        assert_close(Some(quantile(-2.0, &mut [])), f64::NAN);
        assert_close(Some(quantile(-0.01, &mut [1.0, 2.0])), f64::NEG_INFINITY);
        assert_close(Some(quantile(1.01, &mut [1.0, 2.0])), f64::INFINITY);
        assert_close(Some(quantile(f64::NAN, &mut [1.0, 2.0])), f64::NAN);
    }

    #[test]
    fn clamp_follows_prometheus() {
        assert_eq!(eval_math("clamp", 5.0, &[3.0, 1.0]), None, "min > max drops the series");
        assert_close(eval_math("clamp", 5.0, &[0.0, 3.0]), 3.0);
        assert_close(eval_math("clamp", -5.0, &[0.0, 3.0]), 0.0);
        assert_close(eval_math("clamp", 2.0, &[2.0, 2.0]), 2.0);
        assert_close(eval_math("clamp", f64::NAN, &[0.0, f64::INFINITY]), f64::NAN);
        assert_close(eval_math("clamp", 5.0, &[f64::NAN, 1.0]), f64::NAN);
        assert_close(eval_math("clamp_min", 1.0, &[2.0]), 2.0);
        assert_close(eval_math("clamp_min", f64::NAN, &[f64::INFINITY]), f64::INFINITY);
        assert_close(eval_math("clamp_max", 1.0, &[0.5]), 0.5);
        assert_close(eval_math("clamp_max", f64::NAN, &[f64::NEG_INFINITY]), f64::NEG_INFINITY);
        assert!(eval_math("clamp_min", -0.0, &[0.0]).is_some_and(|v| v == 0.0 && v.is_sign_positive()));
        assert_eq!(eval_math("clamp", 1.0, &[0.0]), None);
        assert_eq!(eval_math("clamp_min", 1.0, &[]), None);
    }

    #[test]
    fn round_rounds_ties_up_to_the_nearest_multiple() {
        assert_close(eval_math("round", 2.5, &[]), 3.0);
        assert_close(eval_math("round", -2.5, &[]), -2.0);
        assert_close(eval_math("round", 2.4, &[1.0]), 2.0);
        assert_close(eval_math("round", 123.456, &[0.1]), 123.5);
        assert_close(eval_math("round", 7.0, &[5.0]), 5.0);
        assert_close(eval_math("round", 7.5, &[5.0]), 10.0);
        assert_close(eval_math("round", f64::NAN, &[]), f64::NAN);
        // Rounding to the nearest 0 is NaN in Prometheus (x · Inf / Inf).
        assert_close(eval_math("round", 2.5, &[0.0]), f64::NAN);
    }

    #[test]
    fn elementwise_math() {
        let cases = [
            ("abs", -2.0, 2.0),
            ("ceil", 1.2, 2.0),
            ("floor", -1.2, -2.0),
            ("exp", 0.0, 1.0),
            ("ln", std::f64::consts::E, 1.0),
            ("ln", -1.0, f64::NAN),
            ("ln", 0.0, f64::NEG_INFINITY),
            ("log2", 8.0, 3.0),
            ("log10", 1000.0, 3.0),
            // Go's ln(x)/ln(10) is not exact here; Prometheus shows the same.
            ("log10", 1e15, 14.999999999999998),
            ("sqrt", 16.0, 4.0),
            ("sqrt", -1.0, f64::NAN),
            ("sgn", -3.0, -1.0),
            ("sgn", 3.0, 1.0),
            ("sgn", 0.0, 0.0),
            ("sgn", f64::NAN, f64::NAN),
            ("cos", 0.0, 1.0),
            ("sin", 0.0, 0.0),
            ("tan", 0.0, 0.0),
            ("acos", 1.0, 0.0),
            ("asin", 1.0, std::f64::consts::FRAC_PI_2),
            ("atan", f64::INFINITY, std::f64::consts::FRAC_PI_2),
            ("acosh", 1.0, 0.0),
            ("asinh", 0.0, 0.0),
            ("atanh", 1.0, f64::INFINITY),
            ("cosh", 0.0, 1.0),
            ("sinh", 0.0, 0.0),
            ("tanh", f64::INFINITY, 1.0),
            ("deg", std::f64::consts::PI, 180.0),
            ("rad", 180.0, std::f64::consts::PI),
        ];
        for (name, value, expected) in cases {
            let actual = eval_math(name, value, &[]);
            assert!(actual.is_some_and(|a| close(a, expected)), "{name}({value}) = {actual:?}, expected {expected}");
        }
        assert!(eval_math("sgn", -0.0, &[]).is_some_and(|v| v == 0.0 && v.is_sign_negative()));
        assert_eq!(eval_math("log", 1.0, &[]), None);
        assert_eq!(eval_math("", 1.0, &[]), None);
    }

    #[test]
    fn date_functions_on_a_leap_day() {
        // 2024-02-29T13:45:00Z, a Thursday.
        let t = 1_709_214_300.0;
        let expected = [
            ("day_of_month", 29.0),
            ("day_of_week", 4.0),
            ("day_of_year", 60.0),
            ("days_in_month", 29.0),
            ("hour", 13.0),
            ("minute", 45.0),
            ("month", 2.0),
            ("year", 2024.0),
        ];
        for (name, value) in expected {
            assert_eq!(eval_date(name, t), Some(value), "{name}");
        }
        // Fractions of a second are truncated.
        assert_eq!(eval_date("minute", t + 59.9), Some(45.0));
        assert_eq!(eval_date("fortnight", t), None);
    }

    #[test]
    fn date_functions_across_the_calendar() {
        // 2023-02-01: not a leap year.
        assert_eq!(eval_date("days_in_month", 1_675_209_600.0), Some(28.0));
        // 2000-02-01: a leap year although a multiple of 100.
        assert_eq!(eval_date("days_in_month", 949_363_200.0), Some(29.0));
        // 1999-12-31T23:59:59Z, a Friday.
        let t = 946_684_799.0;
        assert_eq!(eval_date("year", t), Some(1999.0));
        assert_eq!(eval_date("day_of_year", t), Some(365.0));
        assert_eq!(eval_date("day_of_week", t), Some(5.0));
        assert_eq!(eval_date("days_in_month", t), Some(31.0));
        assert_eq!(eval_date("hour", t), Some(23.0));
        // Before the epoch: 1969-12-31T23:59:59Z, a Wednesday. Truncation is towards zero, so
        // -0.5 is 1970-01-01T00:00:00Z.
        assert_eq!(eval_date("year", -1.0), Some(1969.0));
        assert_eq!(eval_date("day_of_week", -1.0), Some(3.0));
        assert_eq!(eval_date("minute", -1.0), Some(59.0));
        assert_eq!(eval_date("year", -0.5), Some(1970.0));
        assert_eq!(eval_date("day_of_year", 0.0), Some(1.0));
        // Far before the epoch (verified against Prometheus 2.42).
        assert_eq!(eval_date("year", -1e12), Some(-29719.0));
        assert_eq!(eval_date("days_in_month", -1e12), Some(30.0));
    }

    #[test]
    fn date_functions_on_nan_and_inf_match_prometheus() {
        // Go's int64(NaN) is i64::MIN on amd64; Prometheus 2.42 then reports this date
        // (verified against it), and the same for ±Inf and out-of-range values.
        let expected = [
            ("year", 292_277_026_596.0),
            ("month", 12.0),
            ("day_of_month", 4.0),
            ("day_of_week", 0.0),
            ("day_of_year", 339.0),
            ("days_in_month", 31.0),
            ("hour", 15.0),
            ("minute", 30.0),
        ];
        for value in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 9.3e18, -1e300] {
            for (name, result) in expected {
                assert_eq!(eval_date(name, value), Some(result), "{name}({value})");
            }
        }
    }

    #[test]
    fn nothing_panics_on_hostile_input() {
        let values = [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.0, -0.0, f64::MAX, f64::MIN, f64::MIN_POSITIVE];
        let times = [i64::MIN, -1, 0, 1, i64::MAX];
        let mut samples = Vec::new();
        for (i, &t) in times.iter().enumerate() {
            samples.push((t, values[i % values.len()]));
        }
        let windows = [
            Window { eval_ts_ms: i64::MAX, range_start_ms: i64::MIN, range_end_ms: i64::MAX, range_ms: 0 },
            Window { eval_ts_ms: i64::MIN, range_start_ms: i64::MAX, range_end_ms: i64::MIN, range_ms: i64::MIN },
            window(0, 0),
        ];
        let function_names = [
            "rate",
            "increase",
            "delta",
            "irate",
            "idelta",
            "avg_over_time",
            "min_over_time",
            "max_over_time",
            "sum_over_time",
            "count_over_time",
            "stddev_over_time",
            "stdvar_over_time",
            "last_over_time",
            "present_over_time",
            "quantile_over_time",
            "changes",
            "resets",
            "deriv",
            "predict_linear",
            "holt_winters",
        ];
        for name in function_names {
            let function = RangeFunction::from_name(name).expect(name);
            for w in windows {
                for len in 0..=samples.len() {
                    for args in [&[][..], &[f64::NAN, f64::NAN][..], &[0.5, 0.5][..], &[f64::INFINITY][..]] {
                        let _ = eval_range(function, &samples[..len], w, args);
                    }
                }
            }
        }
        for &v in &values {
            for name in ["abs", "round", "clamp", "clamp_min", "clamp_max", "log2", "log10", "sgn", "deg"] {
                let _ = eval_math(name, v, &[v, v]);
                let _ = eval_math(name, v, &[]);
            }
            for name in ["year", "month", "day_of_month", "day_of_week", "day_of_year", "days_in_month"] {
                assert!(eval_date(name, v).is_some());
            }
            let _ = quantile(v, &mut values.clone());
            let mut h: Vec<Bucket> = values.iter().map(|&upper_bound| Bucket { upper_bound, count: v }).collect();
            let _ = bucket_quantile(0.5, &mut h);
            let _ = bucket_quantile(v, &mut h);
        }
        // Every representable year goes through days_in_month without overflow panics.
        for t in [i64::MIN as f64, -9.2e18, -1e17, 1e17, 9.2e18, 9.223372036854775e18] {
            assert!(eval_date("days_in_month", t).is_some());
        }
    }
}
