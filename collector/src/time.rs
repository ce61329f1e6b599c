//! The one clock and the one duration grammar of the whole workspace. They live here because
//! this is the lowest crate: `storage`, `query` and the binary all depend on it, and it on none
//! of them.
//!
//! Durations are a sequence of `<decimal number><unit>` components (`10s`, `1h30m`, `1.5h`,
//! `.5s`, `2w3d`) with the units `ns`, `us` (also `µs`, `μs`), `ms`, `s`, `m`, `h` of Go's
//! `time.ParseDuration` and Prometheus' `d` (24h), `w` (7d) and `y` (365d); a bare `0`; and an
//! optional leading `+`. Every Prometheus duration (`model.ParseDuration`) and every Go one is
//! accepted. The sum is computed in integer nanoseconds, every step checked, and must be at most
//! [`MAX_DURATION`]: the store's time type is `i64` nanoseconds. [`parse_signed_duration`] also
//! takes Go's leading `-`, and with [`Units::Go`] refuses `d`, `w` and `y` as Go does (LogQL
//! label values are converted with Go's parser, so `1d` there is an error in Loki).
//! [`parse_duration_or_seconds`] is the form of configuration values and API parameters: a
//! duration or a number of seconds.
//!
//! Time: code that must be testable takes a [`Clock`]; [`SystemClock`] reads the system clock,
//! [`ManualClock`] is moved by tests; [`now`] and [`now_ns`] read the system clock for call
//! sites with no clock of their own. Unix nanoseconds saturate at `i64`'s bounds (the years
//! 1677 and 2262).

// Client numbers are handled here: no silent truncation, sign loss or overflow.
#![warn(clippy::cast_possible_truncation, clippy::cast_sign_loss, clippy::arithmetic_side_effects)]

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserializer;
use serde::de::{self, Visitor};

/// The longest duration accepted anywhere: what fits an `i64` of nanoseconds (about 292
/// years), so that every sum of a time and a duration can be checked in `i64`.
pub const MAX_DURATION: Duration = Duration::from_nanos(i64::MAX.unsigned_abs());

/// [`MAX_DURATION`] in nanoseconds, as the parser counts them (widening: no truncation).
const MAX_NANOS: i128 = i64::MAX as i128;

/// Fraction digits past these are dropped: 20 keep the product with the longest unit (`y`,
/// 3.2e16 ns) well inside `i128`, and together the dropped digits are worth less than 1e-4 ns.
const MAX_FRACTION_DIGITS: usize = 20;

/// Which units a duration may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Units {
    /// `ns` to `y`: Go's units and Prometheus'.
    #[default]
    All,
    /// Go's `time.ParseDuration` units only, `ns` to `h`: for values that Loki converts with Go
    /// (label filters, `unwrap duration`), where `1d` is an error.
    Go,
}

impl Units {
    fn nanos(self, unit: &str) -> Option<i128> {
        let nanos = match unit {
            "ns" => 1,
            // U+00B5 MICRO SIGN and U+03BC GREEK SMALL LETTER MU, as Go accepts both.
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            "d" if self == Units::All => 86_400_000_000_000,
            "w" if self == Units::All => 604_800_000_000_000,
            "y" if self == Units::All => 31_536_000_000_000_000,
            _ => return None,
        };
        Some(nanos)
    }
}

/// Why a text is not a duration. Each variant but [`DurationError::Empty`] carries the text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration")]
    Empty,
    #[error("invalid duration {text:?}: expected numbers each followed by a unit, as in 1h30m")]
    Syntax { text: String },
    #[error("invalid duration {text:?}: missing unit after a number, as in 10s")]
    MissingUnit { text: String },
    #[error("invalid duration {text:?}: unknown unit {unit:?}")]
    UnknownUnit { text: String, unit: String },
    #[error("invalid duration {text:?}: out of range (at most 292 years)")]
    OutOfRange { text: String },
    #[error("invalid duration {text:?}: negative")]
    Negative { text: String },
    #[error("invalid duration {text:?}: not a finite number of seconds")]
    NotFinite { text: String },
}

/// A duration (`10s`, `1h30m`, `1.5h`, `2w`): see the module's grammar. No sign but `+`, no
/// whitespace.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    match parse_nanos(text, Units::All)? {
        (true, nanos) if nanos > 0 => Err(DurationError::Negative { text: text.to_string() }),
        (_, nanos) => Ok(duration_from_nanos(nanos)),
    }
}

/// A duration with an optional leading `-` or `+`, in nanoseconds, within ±[`MAX_DURATION`]:
/// Go's `time.ParseDuration` with [`Units::Go`].
pub fn parse_signed_duration(text: &str, units: Units) -> Result<i64, DurationError> {
    let (negative, nanos) = parse_nanos(text, units)?;
    let nanos = i64::try_from(nanos).map_err(|_| DurationError::OutOfRange { text: text.to_string() })?;
    Ok(if negative { nanos.saturating_neg() } else { nanos })
}

/// A configuration value or API parameter (Prometheus' and Loki's `step`, `since`): a
/// duration, or a number of seconds (`15`, `1.5`, `1e3`); surrounding whitespace is ignored.
/// NaN, infinities, negatives and anything past [`MAX_DURATION`] are refused.
pub fn parse_duration_or_seconds(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    match text.parse::<f64>() {
        Ok(seconds) => checked_seconds(seconds, text),
        Err(_) => parse_duration(text),
    }
}

/// serde's `deserialize_with` for durations in configuration files: a string as
/// [`parse_duration_or_seconds`] reads it (`10s`, `500ms`, `"15"`), or a number of seconds.
pub fn deserialize_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    struct DurationVisitor;

    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            formatter.write_str("a duration such as 10s, 1h30m or 250ms, or a number of seconds")
        }

        fn visit_u64<E: de::Error>(self, seconds: u64) -> Result<Duration, E> {
            let duration = Duration::from_secs(seconds);
            if duration > MAX_DURATION {
                return Err(E::custom(DurationError::OutOfRange { text: seconds.to_string() }));
            }
            Ok(duration)
        }

        fn visit_i64<E: de::Error>(self, seconds: i64) -> Result<Duration, E> {
            match u64::try_from(seconds) {
                Ok(seconds) => self.visit_u64(seconds),
                Err(_) => Err(E::custom(DurationError::Negative { text: seconds.to_string() })),
            }
        }

        fn visit_f64<E: de::Error>(self, seconds: f64) -> Result<Duration, E> {
            checked_seconds(seconds, &seconds.to_string()).map_err(E::custom)
        }

        fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
            parse_duration_or_seconds(text).map_err(E::custom)
        }
    }

    deserializer.deserialize_any(DurationVisitor)
}

/// A duration as `i64` nanoseconds, saturating; every parsed duration fits.
pub fn duration_ns(duration: Duration) -> i64 {
    i64::try_from(duration.as_nanos()).unwrap_or(i64::MAX)
}

/// Seconds from a client or a file, checked. The bound is compared as a `Duration`, not as an
/// `f64`: `MAX_DURATION.as_secs_f64()` rounds up to 9223372036.854776, which a client can send
/// (found by fuzzing: fuzz/regressions/query_params/duration_just_past_max.form).
fn checked_seconds(seconds: f64, text: &str) -> Result<Duration, DurationError> {
    if !seconds.is_finite() {
        // `1e400` overflows to infinity: too long rather than not a number.
        if seconds.is_infinite() && text.bytes().any(|b| b.is_ascii_digit()) {
            return Err(DurationError::OutOfRange { text: text.to_string() });
        }
        return Err(DurationError::NotFinite { text: text.to_string() });
    }
    if seconds < 0.0 {
        return Err(DurationError::Negative { text: text.to_string() });
    }
    // `abs` turns -0.0, which `try_from_secs_f64` may call negative, into 0.
    Duration::try_from_secs_f64(seconds.abs())
        .ok()
        .filter(|duration| *duration <= MAX_DURATION)
        .ok_or_else(|| DurationError::OutOfRange { text: text.to_string() })
}

/// `nanos` is in `0..=MAX_NANOS` (the parser's bound), so the conversion cannot fail.
fn duration_from_nanos(nanos: i128) -> Duration {
    u64::try_from(nanos).map_or(MAX_DURATION, Duration::from_nanos)
}

/// The grammar, Go's algorithm with checked integer arithmetic: whether a `-` led, and the
/// magnitude in nanoseconds, at most `MAX_NANOS`.
fn parse_nanos(text: &str, units: Units) -> Result<(bool, i128), DurationError> {
    if text.is_empty() {
        return Err(DurationError::Empty);
    }
    let (negative, mut rest) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    // Go and Prometheus: `0` needs no unit.
    if rest == "0" {
        return Ok((negative, 0));
    }
    let syntax = || DurationError::Syntax { text: text.to_string() };
    let out_of_range = || DurationError::OutOfRange { text: text.to_string() };
    if rest.is_empty() {
        return Err(syntax());
    }
    let mut total: i128 = 0;
    while !rest.is_empty() {
        let (whole, after) = rest.split_at(leading_digits(rest));
        let (fraction, after) = match after.strip_prefix('.') {
            Some(after_dot) => after_dot.split_at(leading_digits(after_dot)),
            None => ("", after),
        };
        // `5.s` and `.5s` are numbers, `.s` is not (Go).
        if whole.is_empty() && fraction.is_empty() {
            return Err(syntax());
        }
        let (unit, after) = after.split_at(after.find(|c: char| c == '.' || c.is_ascii_digit()).unwrap_or(after.len()));
        if unit.is_empty() {
            return Err(DurationError::MissingUnit { text: text.to_string() });
        }
        let unit_nanos = units
            .nanos(unit)
            .ok_or_else(|| DurationError::UnknownUnit { text: text.to_string(), unit: unit.to_string() })?;
        let component = component_nanos(whole, fraction, unit_nanos).ok_or_else(out_of_range)?;
        total = total.checked_add(component).filter(|total| *total <= MAX_NANOS).ok_or_else(out_of_range)?;
        rest = after;
    }
    Ok((negative, total))
}

fn leading_digits(text: &str) -> usize {
    text.bytes().take_while(u8::is_ascii_digit).count()
}

/// `whole.fraction` times `unit_nanos`, truncated toward zero as Go does; `None` past
/// `MAX_NANOS`. `whole` and `fraction` are ASCII digits.
fn component_nanos(whole: &str, fraction: &str, unit_nanos: i128) -> Option<i128> {
    let mut whole_value: i128 = 0;
    for digit in whole.bytes() {
        whole_value = whole_value.checked_mul(10)?.checked_add(digit_value(digit)?)?;
        // Leading zeros keep it small; anything bigger is out of range with any unit.
        if whole_value > MAX_NANOS {
            return None;
        }
    }
    let (mut numerator, mut scale): (i128, i128) = (0, 1);
    for digit in fraction.bytes().take(MAX_FRACTION_DIGITS) {
        numerator = numerator.checked_mul(10)?.checked_add(digit_value(digit)?)?;
        scale = scale.checked_mul(10)?;
    }
    let value =
        whole_value.checked_mul(unit_nanos)?.checked_add(numerator.checked_mul(unit_nanos)?.checked_div(scale)?)?;
    (value <= MAX_NANOS).then_some(value)
}

fn digit_value(digit: u8) -> Option<i128> {
    char::from(digit).to_digit(10).map(i128::from)
}

/// Where "now" comes from. Take one (`&dyn Clock`, `Arc<dyn Clock>`, a generic) where a test
/// needs to control time; [`SystemClock`] in production.
pub trait Clock: Send + Sync {
    fn now(&self) -> SystemTime;

    /// [`Clock::now`] as Unix nanoseconds, saturating at `i64`'s bounds.
    fn now_ns(&self) -> i64 {
        unix_ns(self.now())
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> SystemTime {
        (**self).now()
    }

    fn now_ns(&self) -> i64 {
        (**self).now_ns()
    }
}

impl<C: Clock + ?Sized> Clock for &C {
    fn now(&self) -> SystemTime {
        (**self).now()
    }

    fn now_ns(&self) -> i64 {
        (**self).now_ns()
    }
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// A clock that moves only when told to: for tests. Holds Unix nanoseconds, so its times are
/// those the store can represent.
#[derive(Debug, Default)]
pub struct ManualClock {
    ns: AtomicI64,
}

impl ManualClock {
    pub fn new(start: SystemTime) -> Self {
        Self::at_ns(unix_ns(start))
    }

    pub fn at_ns(ns: i64) -> Self {
        ManualClock { ns: AtomicI64::new(ns) }
    }

    pub fn set(&self, time: SystemTime) {
        self.set_ns(unix_ns(time));
    }

    pub fn set_ns(&self, ns: i64) {
        self.ns.store(ns, Ordering::SeqCst);
    }

    /// Moves the clock forward by `by`, saturating at `i64::MAX` nanoseconds.
    pub fn advance(&self, by: Duration) {
        let by = duration_ns(by);
        // The closure always returns `Some`, so the update cannot fail.
        let _ = self.ns.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |ns| Some(ns.saturating_add(by)));
    }
}

impl Clock for ManualClock {
    fn now(&self) -> SystemTime {
        from_unix_ns(self.now_ns())
    }

    fn now_ns(&self) -> i64 {
        self.ns.load(Ordering::SeqCst)
    }
}

/// The system clock's time, for call sites with no injected [`Clock`].
pub fn now() -> SystemTime {
    SystemClock.now()
}

/// The system clock's time as Unix nanoseconds (saturating at `i64`'s bounds), for call sites
/// with no injected [`Clock`].
pub fn now_ns() -> i64 {
    SystemClock.now_ns()
}

/// The system clock's time as OTLP's `time_unix_nano` (unsigned; 0 before 1970).
pub fn now_unix_nano() -> u64 {
    u64::try_from(now_ns()).unwrap_or(0)
}

/// `time` as Unix nanoseconds, saturating at `i64`'s bounds; negative before 1970.
pub fn unix_ns(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_nanos()).unwrap_or(i64::MAX),
        Err(before) => i64::try_from(before.duration().as_nanos()).map_or(i64::MIN, i64::saturating_neg),
    }
}

/// Unix nanoseconds as a `SystemTime`.
pub fn from_unix_ns(ns: i64) -> SystemTime {
    let offset = Duration::from_nanos(ns.unsigned_abs());
    let time = if ns >= 0 { UNIX_EPOCH.checked_add(offset) } else { UNIX_EPOCH.checked_sub(offset) };
    // SystemTime spans far more than ±292 years on every platform Rust supports.
    time.unwrap_or(UNIX_EPOCH)
}

#[cfg(test)]
#[allow(clippy::arithmetic_side_effects)] // test arithmetic on known small numbers
mod tests {
    use super::*;
    use proptest::prelude::*;

    const UNITS: [(&str, u64); 9] = [
        ("y", 31_536_000_000_000_000),
        ("w", 604_800_000_000_000),
        ("d", 86_400_000_000_000),
        ("h", 3_600_000_000_000),
        ("m", 60_000_000_000),
        ("s", 1_000_000_000),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ];

    /// Largest unit first (`1y2w3d4h5m6s7ms8us9ns`), `0s` for zero: the shape Prometheus prints.
    fn format(duration: Duration) -> String {
        let mut nanos = u64::try_from(duration.as_nanos()).unwrap();
        if nanos == 0 {
            return "0s".to_string();
        }
        let mut out = String::new();
        for (unit, unit_nanos) in UNITS {
            if nanos >= unit_nanos {
                out.push_str(&format!("{}{unit}", nanos / unit_nanos));
                nanos %= unit_nanos;
            }
        }
        out
    }

    fn secs(seconds: u64) -> Duration {
        Duration::from_secs(seconds)
    }

    #[test]
    fn prometheus_durations_parse() {
        assert_eq!(parse_duration("5m"), Ok(secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(secs(5400)));
        assert_eq!(parse_duration("1d"), Ok(secs(86_400)));
        assert_eq!(parse_duration("1w"), Ok(secs(7 * 86_400)));
        assert_eq!(parse_duration("1y"), Ok(secs(365 * 86_400)));
        assert_eq!(
            parse_duration("1y2w3d4h5m6s7ms"),
            Ok(Duration::from_millis(((((365 + 17) * 24 + 4) * 60 + 5) * 60 + 6) * 1000 + 7))
        );
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("+10s"), Ok(secs(10)));
        // Any order, repeats summed, as Go does.
        assert_eq!(parse_duration("30m1h1h"), Ok(secs(9000)));
    }

    #[test]
    fn go_durations_parse_with_fractions_and_small_units() {
        assert_eq!(parse_duration("1.5h"), Ok(secs(5400)));
        assert_eq!(parse_duration(".5s"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5.s"), Ok(secs(5)));
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("1µs1us1μs1ns"), Ok(Duration::from_nanos(3_001)));
        assert_eq!(parse_duration("1.000000001s"), Ok(Duration::from_nanos(1_000_000_001)));
        // Truncated toward zero below the nanosecond, as Go does.
        assert_eq!(parse_duration("1.9ns"), Ok(Duration::from_nanos(1)));
        assert_eq!(parse_duration("0.1y"), Ok(Duration::from_nanos(3_153_600_000_000_000)));
        assert_eq!(parse_duration("0.33333333333333333333333333333h"), Ok(Duration::from_nanos(1_199_999_999_999)));
        assert_eq!(parse_duration("00000000000000000000000001s"), Ok(secs(1)));
    }

    #[test]
    fn each_mistake_says_what_was_wrong() {
        assert_eq!(parse_duration(""), Err(DurationError::Empty));
        let syntax = |text: &str| DurationError::Syntax { text: text.to_string() };
        assert_eq!(parse_duration("s"), Err(syntax("s")));
        assert_eq!(parse_duration(".s"), Err(syntax(".s")));
        assert_eq!(parse_duration("+"), Err(syntax("+")));
        assert_eq!(parse_duration("--1s"), Err(syntax("--1s")));
        assert_eq!(parse_duration("5"), Err(DurationError::MissingUnit { text: "5".into() }));
        assert_eq!(parse_duration("1.2.3s"), Err(DurationError::MissingUnit { text: "1.2.3s".into() }));
        assert_eq!(parse_duration("1h30"), Err(DurationError::MissingUnit { text: "1h30".into() }));
        let unknown = |text: &str, unit: &str| DurationError::UnknownUnit { text: text.into(), unit: unit.into() };
        assert_eq!(parse_duration("5 minutes"), Err(unknown("5 minutes", " minutes")));
        assert_eq!(parse_duration("1h 30m"), Err(unknown("1h 30m", "h ")));
        assert_eq!(parse_duration("1sec"), Err(unknown("1sec", "sec")));
        assert_eq!(parse_duration("1M"), Err(unknown("1M", "M")));
        assert_eq!(parse_duration("-5m"), Err(DurationError::Negative { text: "-5m".into() }));
        assert_eq!(parse_duration("-0"), Ok(Duration::ZERO));
        let out_of_range = |text: &str| DurationError::OutOfRange { text: text.into() };
        assert_eq!(parse_duration("293y"), Err(out_of_range("293y")));
        assert_eq!(parse_duration("9223372036854775808ns"), Err(out_of_range("9223372036854775808ns")));
        assert_eq!(
            parse_duration("99999999999999999999999999999999999999999h"),
            Err(out_of_range("99999999999999999999999999999999999999999h"))
        );
        assert_eq!(parse_duration("292y292y"), Err(out_of_range("292y292y")));
        assert_eq!(
            parse_duration("5 minutes").unwrap_err().to_string(),
            r#"invalid duration "5 minutes": unknown unit " minutes""#
        );
        assert_eq!(
            parse_duration("293y").unwrap_err().to_string(),
            r#"invalid duration "293y": out of range (at most 292 years)"#
        );
    }

    #[test]
    fn the_bound_is_i64_nanoseconds_exactly() {
        assert_eq!(parse_duration("9223372036854775807ns"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("292y"), Ok(secs(292 * 365 * 86_400)));
        assert_eq!(parse_duration("9223372036s854775807ns"), Ok(MAX_DURATION));
        assert!(parse_duration("9223372036s854775808ns").is_err());
        assert_eq!(duration_ns(MAX_DURATION), i64::MAX);
        assert_eq!(duration_ns(Duration::MAX), i64::MAX);
    }

    #[test]
    fn signed_durations_follow_go() {
        assert_eq!(parse_signed_duration("-1m30s", Units::Go), Ok(-90_000_000_000));
        assert_eq!(parse_signed_duration("+.5h", Units::Go), Ok(1_800_000_000_000));
        assert_eq!(parse_signed_duration("-2h45m", Units::Go), Ok(-9_900_000_000_000));
        assert_eq!(parse_signed_duration("-0", Units::Go), Ok(0));
        assert_eq!(parse_signed_duration("-9223372036854775807ns", Units::Go), Ok(-i64::MAX));
        assert_eq!(parse_signed_duration("-1d", Units::All), Ok(-86_400_000_000_000));
        // Go has no day: Loki marks `duration=1d` as a conversion error.
        assert_eq!(
            parse_signed_duration("1d", Units::Go),
            Err(DurationError::UnknownUnit { text: "1d".into(), unit: "d".into() })
        );
        for bad in ["", "-", "+", "1", "-.s", " 1s", "1s "] {
            assert!(parse_signed_duration(bad, Units::Go).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn api_and_config_values_are_durations_or_seconds() {
        assert_eq!(parse_duration_or_seconds("15"), Ok(secs(15)));
        assert_eq!(parse_duration_or_seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration_or_seconds("1e3"), Ok(secs(1000)));
        assert_eq!(parse_duration_or_seconds(" 10s\n"), Ok(secs(10)));
        assert_eq!(parse_duration_or_seconds("7d"), Ok(secs(7 * 86_400)));
        assert_eq!(parse_duration_or_seconds("-0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration_or_seconds("  "), Err(DurationError::Empty));
        for text in ["NaN", "inf", "-inf", "infinity"] {
            assert_eq!(parse_duration_or_seconds(text), Err(DurationError::NotFinite { text: text.into() }), "{text}");
        }
        for text in ["-1", "-0.5", "-5m"] {
            assert_eq!(parse_duration_or_seconds(text), Err(DurationError::Negative { text: text.into() }), "{text}");
        }
        for text in ["1e20", "1e400", "9223372037", "300y"] {
            assert!(matches!(parse_duration_or_seconds(text), Err(DurationError::OutOfRange { .. })), "{text}");
        }
    }

    #[test]
    fn seconds_just_past_the_bound_are_refused() {
        // Found by fuzzing (fuzz/regressions/query_params/duration_just_past_max.form): rounds to
        // the bound as an f64, lies past it as a Duration.
        assert!(matches!(parse_duration_or_seconds("9223372036.854776"), Err(DurationError::OutOfRange { .. })));
        assert!(parse_duration_or_seconds("9223372036.854775").is_ok_and(|d| d <= MAX_DURATION));
    }

    #[test]
    fn config_files_take_strings_and_numbers() {
        #[derive(serde::Deserialize)]
        struct Config {
            #[serde(deserialize_with = "deserialize_duration")]
            interval: Duration,
        }
        let read = |json: &str| serde_json::from_str::<Config>(json).map(|config| config.interval);
        assert_eq!(read(r#"{"interval": "1h30m"}"#).unwrap(), secs(5400));
        assert_eq!(read(r#"{"interval": "15"}"#).unwrap(), secs(15));
        assert_eq!(read(r#"{"interval": 2}"#).unwrap(), secs(2));
        assert_eq!(read(r#"{"interval": 0.25}"#).unwrap(), Duration::from_millis(250));
        assert!(read(r#"{"interval": -1}"#).unwrap_err().to_string().contains("negative"));
        assert!(read(r#"{"interval": "ten"}"#).unwrap_err().to_string().contains(r#"invalid duration "ten""#));
        assert!(read(r#"{"interval": 18446744073709551615}"#).unwrap_err().to_string().contains("out of range"));
        assert!(read(r#"{"interval": true}"#).unwrap_err().to_string().contains("a duration such as 10s"));
    }

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::at_ns(1_000);
        assert_eq!(clock.now_ns(), 1_000);
        assert_eq!(clock.now(), UNIX_EPOCH + Duration::from_nanos(1_000));
        clock.advance(Duration::from_secs(2));
        assert_eq!(clock.now_ns(), 2_000_001_000);
        clock.advance(Duration::MAX);
        assert_eq!(clock.now_ns(), i64::MAX);
        clock.set(UNIX_EPOCH - Duration::from_secs(1));
        assert_eq!(clock.now_ns(), -1_000_000_000);
        assert_eq!(clock.now(), UNIX_EPOCH - Duration::from_secs(1));
        let shared: Arc<dyn Clock> = Arc::new(ManualClock::new(UNIX_EPOCH + Duration::from_secs(60)));
        assert_eq!(shared.now_ns(), 60_000_000_000);
    }

    #[test]
    fn unix_nanoseconds_saturate_at_i64_bounds() {
        assert_eq!(unix_ns(UNIX_EPOCH), 0);
        assert_eq!(unix_ns(UNIX_EPOCH + Duration::from_secs(400 * 365 * 86_400)), i64::MAX);
        assert_eq!(unix_ns(UNIX_EPOCH - Duration::from_secs(400 * 365 * 86_400)), i64::MIN);
        assert_eq!(from_unix_ns(i64::MIN), UNIX_EPOCH - Duration::from_nanos(i64::MIN.unsigned_abs()));
        assert_eq!(unix_ns(from_unix_ns(i64::MIN)), i64::MIN);
        assert_eq!(unix_ns(from_unix_ns(i64::MAX)), i64::MAX);
    }

    #[test]
    fn system_clock_is_now() {
        let before = unix_ns(SystemTime::now());
        let system = now_ns();
        let after = unix_ns(SystemTime::now());
        // 2020-09-13, well before any test run: a clock stuck at 0 fails.
        assert!(before > 1_600_000_000_000_000_000);
        assert!(before <= system && system <= after, "{before} {system} {after}");
        assert!(now_unix_nano() >= u64::try_from(system).unwrap());
        let first = now();
        assert!(SystemClock.now() >= first);
    }

    fn unit() -> impl Strategy<Value = (&'static str, u64)> {
        prop::sample::select(UNITS.to_vec())
    }

    proptest! {
        #[test]
        fn formatted_durations_round_trip(nanos in 0..=i64::MAX.unsigned_abs()) {
            let duration = Duration::from_nanos(nanos);
            prop_assert_eq!(parse_duration(&format(duration)), Ok(duration));
        }

        #[test]
        fn components_sum(components in prop::collection::vec((0u64..100_000, unit()), 1..8)) {
            let text: String = components.iter().map(|(value, (unit, _))| format!("{value}{unit}")).collect();
            let sum: u128 = components.iter().map(|(value, (_, nanos))| u128::from(*value) * u128::from(*nanos)).sum();
            match u64::try_from(sum).ok().filter(|sum| *sum <= i64::MAX.unsigned_abs()) {
                Some(sum) => prop_assert_eq!(parse_duration(&text), Ok(Duration::from_nanos(sum))),
                None => {
                    let parsed = parse_duration(&text);
                    prop_assert!(matches!(parsed, Err(DurationError::OutOfRange { .. })), "{parsed:?}");
                }
            }
        }

        #[test]
        fn fractions_are_exact_to_the_nanosecond(whole in 0u64..1_000_000, nanos in 0u64..1_000_000_000) {
            let text = format!("{whole}.{nanos:09}s");
            prop_assert_eq!(parse_duration(&text), Ok(Duration::new(whole, u32::try_from(nanos).unwrap())));
        }

        #[test]
        fn a_sign_negates(nanos in 0..=i64::MAX.unsigned_abs()) {
            let text = format(Duration::from_nanos(nanos));
            let positive = parse_signed_duration(&text, Units::All).unwrap();
            prop_assert_eq!(parse_signed_duration(&format!("-{text}"), Units::All), Ok(-positive));
            prop_assert_eq!(parse_signed_duration(&format!("+{text}"), Units::All), Ok(positive));
        }

        #[test]
        fn arbitrary_text_never_panics_nor_exceeds_the_bound(
            text in prop_oneof![".{0,40}", "[-+]?[0-9.]{0,25}(ns|us|µs|ms|s|m|h|d|w|y|x|)[0-9.]{0,25}[a-z]{0,2}"],
        ) {
            if let Ok(duration) = parse_duration(&text) {
                prop_assert!(duration <= MAX_DURATION);
            }
            if let Ok(duration) = parse_duration_or_seconds(&text) {
                prop_assert!(duration <= MAX_DURATION);
            }
            for units in [Units::All, Units::Go] {
                if let Ok(nanos) = parse_signed_duration(&text, units) {
                    prop_assert!(nanos > i64::MIN);
                }
            }
        }

        #[test]
        fn seconds_are_checked(seconds in proptest::num::f64::ANY) {
            let parsed = parse_duration_or_seconds(&seconds.to_string());
            if !seconds.is_finite() {
                prop_assert!(matches!(parsed, Err(DurationError::NotFinite { .. } | DurationError::OutOfRange { .. })), "{parsed:?}");
            } else if seconds < 0.0 {
                prop_assert!(matches!(parsed, Err(DurationError::Negative { .. })), "{parsed:?}");
            } else if seconds < 9.2e9 {
                let error = (parsed.unwrap().as_secs_f64() - seconds).abs();
                prop_assert!(error <= seconds * 1e-15 + 1e-9, "{seconds} off by {error}");
            } else if seconds > 9.3e9 {
                prop_assert!(matches!(parsed, Err(DurationError::OutOfRange { .. })), "{parsed:?}");
            }
            for text in [seconds.to_string(), format!("{seconds:.6}"), format!("{seconds:e}")] {
                if let Ok(duration) = parse_duration_or_seconds(&text) {
                    prop_assert!(duration <= MAX_DURATION);
                }
            }
        }
    }
}
