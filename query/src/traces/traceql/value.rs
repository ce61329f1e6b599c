//! Values a TraceQL query hands back (by() keys, aggregates, select()ed fields) and the
//! duration syntax it shares with Tempo: literals in Go's or Prometheus' form, printed as
//! Go's `time.Duration.String` prints them.

use std::fmt;

use serde_json::{Value as Json, json};

use super::super::model::{SpanKind, SpanStatus};

/// What [`Value::key`] gives: a type tag and the value's exact text.
pub(crate) type ValueKey = (u8, String);

/// A typed value produced by a query.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// Nanoseconds.
    Duration(i64),
    Status(SpanStatus),
    Kind(SpanKind),
    Nil,
}

impl Value {
    /// A hashable identity of the value: its type and its exact content, for grouping
    /// (`by()`, metrics series).
    pub(crate) fn key(&self) -> ValueKey {
        match self {
            Value::Str(s) => (0, s.clone()),
            Value::Int(n) => (1, n.to_string()),
            Value::Float(x) => (2, x.to_bits().to_string()),
            Value::Bool(b) => (3, b.to_string()),
            Value::Duration(ns) => (4, ns.to_string()),
            Value::Status(s) => (5, s.as_str().to_string()),
            Value::Kind(k) => (6, k.as_str().to_string()),
            Value::Nil => (7, String::new()),
        }
    }

    /// The OTLP JSON `AnyValue` of this value. Durations, statuses and kinds have no OTLP type
    /// of their own, so they travel as strings (durations as Go prints them, e.g. "1.5s").
    pub fn to_json_any(&self) -> Json {
        match self {
            Value::Str(s) => json!({ "stringValue": s }),
            Value::Int(n) => json!({ "intValue": n.to_string() }),
            // OTLP JSON spells the non-finite doubles as strings; serde_json has no number for them.
            Value::Float(x) if x.is_nan() => json!({ "doubleValue": "NaN" }),
            Value::Float(x) if x.is_infinite() => {
                json!({ "doubleValue": if *x > 0.0 { "Infinity" } else { "-Infinity" } })
            }
            Value::Float(x) => json!({ "doubleValue": x }),
            Value::Bool(b) => json!({ "boolValue": b }),
            Value::Duration(ns) => json!({ "stringValue": format_duration(*ns) }),
            Value::Status(s) => json!({ "stringValue": s.as_str() }),
            Value::Kind(k) => json!({ "stringValue": k.as_str() }),
            Value::Nil => json!({}),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Str(s) => f.write_str(s),
            Value::Int(n) => write!(f, "{n}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Duration(ns) => f.write_str(&format_duration(*ns)),
            Value::Status(s) => f.write_str(s.as_str()),
            Value::Kind(k) => f.write_str(k.as_str()),
            Value::Nil => f.write_str("nil"),
        }
    }
}

/// `ns` as Go's `time.Duration.String` writes it: "0s", "250ns", "1.5µs", "100ms", "1m0s",
/// "1h2m3.5s". Tempo prints durations this way, so results look the same.
pub fn format_duration(ns: i64) -> String {
    let negative = ns < 0;
    let u = ns.unsigned_abs();
    let body = if u == 0 {
        "0s".to_string()
    } else if u < 1_000_000_000 {
        // Below a second Go switches to the largest unit that keeps an integer part.
        let (precision, unit) = match u {
            0..1_000 => (0, "ns"),
            1_000..1_000_000 => (3, "µs"),
            _ => (6, "ms"),
        };
        let (whole, fraction) = split_fraction(u, precision);
        format!("{whole}{fraction}{unit}")
    } else {
        let (seconds, fraction) = split_fraction(u, 9);
        let minutes = seconds / 60;
        let hours = minutes / 60;
        match (hours, minutes) {
            (0, 0) => format!("{seconds}{fraction}s"),
            (0, _) => format!("{minutes}m{}{fraction}s", seconds % 60),
            _ => format!("{hours}h{}m{}{fraction}s", minutes % 60, seconds % 60),
        }
    };
    if negative { format!("-{body}") } else { body }
}

/// `v / 10^precision` as (integer part, ".fraction" without trailing zeros, or "").
fn split_fraction(v: u64, precision: u32) -> (u64, String) {
    let scale = 10u64.pow(precision);
    let fraction = v % scale;
    if fraction == 0 {
        return (v / scale, String::new());
    }
    let digits = format!("{fraction:0width$}", width = precision as usize);
    (v / scale, format!(".{}", digits.trim_end_matches('0')))
}

/// A duration literal as Tempo's lexer reads it: Prometheus syntax (`1d12h`, `2w`, integers
/// only) or Go syntax (`1.5s`, `100ms`, `1h30m`), without a sign. `None` if neither fits or
/// it overflows 64-bit nanoseconds.
pub fn parse_duration_literal(text: &str) -> Option<i64> {
    parse_prometheus_duration(text).or_else(|| parse_go_duration(text))
}

/// Go's `time.ParseDuration`: an optional sign, then one or more `<decimal><unit>` with units
/// ns, us, µs, ms, s, m, h; "0" alone is zero. Attribute texts compared with duration
/// literals are read with this.
pub fn parse_go_duration(text: &str) -> Option<i64> {
    let (negative, mut rest) = match text.as_bytes().first() {
        Some(b'-') => (true, &text[1..]),
        Some(b'+') => (false, &text[1..]),
        _ => (false, text),
    };
    if rest == "0" {
        return Some(0);
    }
    if rest.is_empty() {
        return None;
    }
    let mut total: u128 = 0;
    while !rest.is_empty() {
        let int_end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        let (int_digits, after_int) = rest.split_at(int_end);
        let (frac_digits, after_number) = match after_int.strip_prefix('.') {
            Some(after_dot) => {
                let end = after_dot.find(|c: char| !c.is_ascii_digit()).unwrap_or(after_dot.len());
                after_dot.split_at(end)
            }
            None => ("", after_int),
        };
        if int_digits.is_empty() && frac_digits.is_empty() {
            return None;
        }
        let unit_end = after_number.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(after_number.len());
        let (unit, after_unit) = after_number.split_at(unit_end);
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return None,
        };
        let whole: u128 = if int_digits.is_empty() { 0 } else { int_digits.parse().ok()? };
        total = total.checked_add(whole.checked_mul(unit_ns)?)?;
        // Go keeps the fraction exactly as far as a nanosecond goes; 30 digits is plenty for u128.
        let kept = &frac_digits[..frac_digits.len().min(30)];
        if !kept.is_empty() {
            let numerator: u128 = kept.parse().ok()?;
            let scale = 10u128.pow(kept.len() as u32);
            total = total.checked_add(numerator.checked_mul(unit_ns)? / scale)?;
        }
        if total > i64::MAX as u128 + u128::from(negative) {
            return None;
        }
        rest = after_unit;
    }
    let total = i128::try_from(total).ok()?;
    i64::try_from(if negative { -total } else { total }).ok()
}

/// Prometheus' `model.ParseDuration`: integer components with units y, w, d, h, m, s, ms, each
/// at most once and from the largest down ("1d12h", not "12h1d").
fn parse_prometheus_duration(text: &str) -> Option<i64> {
    const UNITS: [(&str, u128); 7] = [
        ("y", 365 * 86_400_000_000_000),
        ("w", 7 * 86_400_000_000_000),
        ("d", 86_400_000_000_000),
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
    ];
    if text == "0" {
        return Some(0);
    }
    let mut rest = text;
    let mut next_unit = 0;
    let mut total: u128 = 0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits_end = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits_end == 0 {
            return None;
        }
        let value: u128 = rest[..digits_end].parse().ok()?;
        let after = &rest[digits_end..];
        let unit_end = after.find(|c: char| c.is_ascii_digit()).unwrap_or(after.len());
        let unit = &after[..unit_end];
        let position = UNITS.iter().skip(next_unit).position(|(name, _)| *name == unit)? + next_unit;
        total = total.checked_add(value.checked_mul(UNITS[position].1)?)?;
        next_unit = position + 1;
        rest = &after[unit_end..];
    }
    i64::try_from(total).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_print_as_go_prints_them() {
        let cases = [
            (0, "0s"),
            (1, "1ns"),
            (1_500, "1.5µs"),
            (100_000_000, "100ms"),
            (1_500_000_000, "1.5s"),
            (120_000_000_000, "2m0s"),
            (3_600_000_000_000, "1h0m0s"),
            (3_723_500_000_000, "1h2m3.5s"),
            (-5_000_000_000, "-5s"),
            (i64::MAX, "2562047h47m16.854775807s"),
        ];
        for (ns, text) in cases {
            assert_eq!(format_duration(ns), text);
            assert_eq!(parse_go_duration(text), Some(ns), "{text}");
        }
    }

    #[test]
    fn duration_literals_take_go_and_prometheus_forms() {
        assert_eq!(parse_duration_literal("1d"), Some(86_400_000_000_000));
        assert_eq!(parse_duration_literal("1w"), Some(7 * 86_400_000_000_000));
        assert_eq!(parse_duration_literal("1d12h"), Some(36 * 3_600_000_000_000));
        assert_eq!(parse_duration_literal("1h30m"), Some(90 * 60_000_000_000));
        assert_eq!(parse_duration_literal("1.5s"), Some(1_500_000_000));
        assert_eq!(parse_duration_literal("10us"), Some(10_000));
        assert_eq!(parse_duration_literal("10µs"), Some(10_000));
        assert_eq!(parse_duration_literal("1.5d"), None);
        assert_eq!(parse_duration_literal("5x"), None);
        assert_eq!(parse_duration_literal("s"), None);
        assert_eq!(parse_duration_literal("99999999999999999999h"), None);
        assert_eq!(parse_go_duration("-1.5h"), Some(-5_400_000_000_000));
        assert_eq!(parse_go_duration(".5s"), Some(500_000_000));
        assert_eq!(parse_go_duration("5"), None);
    }

    #[test]
    fn values_become_otlp_any_values() {
        assert_eq!(Value::Int(5).to_json_any(), json!({"intValue": "5"}));
        assert_eq!(Value::Duration(1_500_000_000).to_json_any(), json!({"stringValue": "1.5s"}));
        assert_eq!(Value::Status(SpanStatus::Error).to_json_any(), json!({"stringValue": "error"}));
        assert_eq!(Value::Float(0.5).to_json_any(), json!({"doubleValue": 0.5}));
        assert_eq!(Value::Bool(true).to_json_any(), json!({"boolValue": true}));
    }
}
