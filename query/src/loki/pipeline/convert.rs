//! Go's conversions of label values, as Loki's answers follow them: `strconv.ParseFloat`,
//! `time.ParseDuration` and humanize's `ParseBytes` (for label filters and `unwrap`), and
//! `strconv.Quote` (for error details).

use logql::Unwrap;
use wake_collector::time::{self, DurationError, Units};

use super::Labels;

/// Value of `label` for `| unwrap`: a number, a Go duration (`1.5s`, `250ms`, `1h2m`; in seconds)
/// or a bytes quantity (`10KB`, `1.5MiB`; in bytes). `Err(message)` means the caller marks the
/// sample `__error__="SampleExtractionErr"`. A missing label converts like an empty one: it fails.
pub fn unwrap_value(labels: &Labels, unwrap: &Unwrap) -> Result<f64, String> {
    let value = labels.get(&unwrap.label).map_or("", String::as_str);
    match unwrap.conversion.as_deref() {
        None => parse_go_float(value),
        Some("duration" | "duration_seconds") => parse_go_duration(value).map(|nanos| nanos as f64 / 1e9),
        Some("bytes") => parse_go_bytes(value).map(|bytes| bytes as f64),
        Some(other) => Err(format!("unknown conversion function {other:?}")),
    }
}

/// Go's `strconv.Quote`, for error details that read like Loki's.
pub(super) fn go_quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\u{b}' => out.push_str("\\v"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

pub(super) fn parse_go_float(text: &str) -> Result<f64, String> {
    text.parse::<f64>().map_err(|_| format!("strconv.ParseFloat: parsing {}: invalid syntax", go_quote(text)))
}

/// Go's `time.ParseDuration`, in nanoseconds: the workspace's grammar with Go's units (`ns` to
/// `h`, so `1d` fails as in Loki), answering Go's error texts (they reach `__error_details__`).
pub(super) fn parse_go_duration(text: &str) -> Result<i128, String> {
    time::parse_signed_duration(text, Units::Go).map(i128::from).map_err(|error| match error {
        DurationError::MissingUnit { .. } => format!("time: missing unit in duration {}", go_quote(text)),
        DurationError::UnknownUnit { unit, .. } => {
            format!("time: unknown unit {} in duration {}", go_quote(&unit), go_quote(text))
        }
        // Go says "invalid duration" for bad syntax and for overflow alike.
        _ => format!("time: invalid duration {}", go_quote(text)),
    })
}

/// go-humanize's `ParseBytes`: a number (commas allowed) and an optional, case-insensitive unit,
/// decimal (`kB`, `MB`, `k`) or binary (`KiB`, `Mi`).
pub(super) fn parse_go_bytes(text: &str) -> Result<u64, String> {
    let number_len = text.bytes().take_while(|b| b.is_ascii_digit() || *b == b'.' || *b == b',').count();
    let number: String = text[..number_len].chars().filter(|c| *c != ',').collect();
    let value: f64 =
        number.parse().map_err(|_| format!("strconv.ParseFloat: parsing {}: invalid syntax", go_quote(&number)))?;
    let unit = text[number_len..].trim().to_ascii_lowercase();
    let multiplier: f64 = match unit.as_str() {
        "" | "b" => 1.0,
        "k" | "kb" => 1e3,
        "ki" | "kib" => 1024.0,
        "m" | "mb" => 1e6,
        "mi" | "mib" => 1024.0 * 1024.0,
        "g" | "gb" => 1e9,
        "gi" | "gib" => 1024f64.powi(3),
        "t" | "tb" => 1e12,
        "ti" | "tib" => 1024f64.powi(4),
        "p" | "pb" => 1e15,
        "pi" | "pib" => 1024f64.powi(5),
        "e" | "eb" => 1e18,
        "ei" | "eib" => 1024f64.powi(6),
        _ => return Err(format!("unhandled size name: {unit}")),
    };
    let bytes = value * multiplier;
    if bytes >= u64::MAX as f64 {
        return Err(format!("too large: {text}"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loki::pipeline::tests::labels;

    #[test]
    fn unwrap_value_converts_numbers_durations_and_bytes() {
        let unwrap = |label: &str, conversion: Option<&str>| Unwrap {
            label: label.to_string(),
            conversion: conversion.map(str::to_string),
        };
        let l =
            labels(&[("n", "42.5"), ("d", "1h2m3.5s"), ("ms", "250ms"), ("b", "10KB"), ("bi", "1.5MiB"), ("bad", "x")]);
        assert_eq!(unwrap_value(&l, &unwrap("n", None)), Ok(42.5));
        assert_eq!(unwrap_value(&l, &unwrap("d", Some("duration"))), Ok(3723.5));
        assert_eq!(unwrap_value(&l, &unwrap("ms", Some("duration_seconds"))), Ok(0.25));
        assert_eq!(unwrap_value(&l, &unwrap("b", Some("bytes"))), Ok(10_000.0));
        assert_eq!(unwrap_value(&l, &unwrap("bi", Some("bytes"))), Ok(1_572_864.0));
        assert_eq!(
            unwrap_value(&l, &unwrap("bad", None)),
            Err(r#"strconv.ParseFloat: parsing "x": invalid syntax"#.to_string())
        );
        assert!(unwrap_value(&l, &unwrap("bad", Some("duration"))).is_err());
        assert!(unwrap_value(&l, &unwrap("bad", Some("bytes"))).is_err());
        assert!(unwrap_value(&l, &unwrap("missing", None)).is_err());
        assert!(unwrap_value(&l, &unwrap("n", Some("weird"))).is_err());
    }

    #[test]
    fn go_duration_and_bytes_syntax() {
        assert_eq!(parse_go_duration("0"), Ok(0));
        assert_eq!(parse_go_duration("1.5s"), Ok(1_500_000_000));
        assert_eq!(parse_go_duration("-1m30s"), Ok(-90_000_000_000));
        assert_eq!(parse_go_duration("+.5h"), Ok(1_800_000_000_000));
        assert_eq!(parse_go_duration("1µs1us1μs1ns"), Ok(3_001));
        assert_eq!(parse_go_duration("-2h45m"), Ok(-9_900_000_000_000));
        assert_eq!(parse_go_duration("1d"), Err(r#"time: unknown unit "d" in duration "1d""#.to_string()));
        assert_eq!(parse_go_duration("5"), Err(r#"time: missing unit in duration "5""#.to_string()));
        assert_eq!(parse_go_duration(".s"), Err(r#"time: invalid duration ".s""#.to_string()));
        assert_eq!(parse_go_duration("3000000h"), Err(r#"time: invalid duration "3000000h""#.to_string()));
        for bad in ["", "s", "1", "1d", ".s", "1.2.3s", "-", "9999999999999999999999h"] {
            assert!(parse_go_duration(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_go_bytes("42"), Ok(42));
        assert_eq!(parse_go_bytes("1,024 B"), Ok(1024));
        assert_eq!(parse_go_bytes("2k"), Ok(2000));
        assert_eq!(parse_go_bytes("2Ki"), Ok(2048));
        assert_eq!(parse_go_bytes("1.5 gb"), Ok(1_500_000_000));
        for bad in ["", "KB", "-5", "5 parsecs", "99999999EiB"] {
            assert!(parse_go_bytes(bad).is_err(), "{bad:?}");
        }
    }
}
