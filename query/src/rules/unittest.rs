//! `wake rules test`: Prometheus' rule unit-test files (`rule_files`, `evaluation_interval`,
//! `group_eval_order`, `tests:` of `input_series`, `alert_rule_test`, `promql_expr_test`),
//! run as `promtool test rules` runs them (`cmd/promtool/unittest.go`, Prometheus 2.x):
//!
//! - input series are loaded at `0, interval, 2 × interval, …` from the expanding notation
//!   (`a+bxn` and `a-bxn` are n + 1 samples, each the previous one plus or minus b, `axn` is
//!   `a+0xn`, `_` and `_xn` skip samples, `stale` writes a staleness marker);
//! - every group is evaluated at `0, evaluation_interval, …` up to the latest `eval_time`,
//!   whatever its own `interval`, with its alerting rules writing `ALERTS` from the start;
//! - an `alert_rule_test` compares the firing alerts of the evaluation at or just before its
//!   `eval_time` (`alertname` added to the expected labels); a `promql_expr_test` runs an
//!   instant query at its `eval_time` over the input and everything the rules wrote;
//! - an evaluation error ends the test group, as in promtool.
//!
//! Only PromQL groups can be unit-tested: LogQL and SQL rules need the store.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use promql_parser::label::Matcher;
use serde::{Deserialize, Deserializer};

use super::alert::{AlertState, TemplateContext};
use super::file::{self, GroupDef, Lang, parse_prometheus_duration};
use super::group::{Group, RuleQuerier, SampleWriter, millis, stale_nan};
use super::querier::promql_instant;
use crate::prom::eval::{EvalLimits, Sample, SeriesData, SeriesSource, matches_all};
use crate::prom::naming::Labels;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFile {
    #[serde(default)]
    rule_files: Vec<String>,
    #[serde(default, deserialize_with = "duration")]
    evaluation_interval: Option<Duration>,
    #[serde(default)]
    group_eval_order: Vec<String>,
    #[serde(default)]
    tests: Vec<TestGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TestGroup {
    #[serde(default, deserialize_with = "duration")]
    interval: Option<Duration>,
    #[serde(default)]
    input_series: Vec<InputSeries>,
    #[serde(default)]
    alert_rule_test: Vec<AlertTest>,
    #[serde(default)]
    promql_expr_test: Vec<ExprTest>,
    #[serde(default)]
    external_labels: Labels,
    #[serde(default)]
    external_url: String,
    #[serde(default)]
    name: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputSeries {
    series: String,
    #[serde(default)]
    values: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AlertTest {
    #[serde(deserialize_with = "required_duration")]
    eval_time: Duration,
    #[serde(default)]
    alertname: String,
    #[serde(default)]
    exp_alerts: Vec<ExpectedAlert>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedAlert {
    #[serde(default)]
    exp_labels: Labels,
    #[serde(default)]
    exp_annotations: Labels,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExprTest {
    expr: String,
    #[serde(deserialize_with = "required_duration")]
    eval_time: Duration,
    #[serde(default)]
    exp_samples: Vec<ExpectedSample>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectedSample {
    labels: String,
    value: f64,
}

fn duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
    let text: Option<String> = Option::deserialize(deserializer)?;
    text.map(|t| parse_prometheus_duration(&t).map_err(serde::de::Error::custom)).transpose()
}

fn required_duration<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_prometheus_duration(&text).map_err(serde::de::Error::custom)
}

/// The outcome of one test file: failures as promtool words them.
#[derive(Debug, Default)]
pub struct FileOutcome {
    pub errors: Vec<String>,
}

/// Runs one unit-test file. `check_expr` checks rule expressions at load.
pub async fn run_file(path: &Path, check_expr: &file::ExprChecker) -> FileOutcome {
    match run_file_inner(path, check_expr).await {
        Ok(errors) => FileOutcome { errors },
        Err(error) => FileOutcome { errors: vec![error] },
    }
}

async fn run_file_inner(path: &Path, check_expr: &file::ExprChecker) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let test: TestFile = serde_yaml::from_str(&text).map_err(|e| e.to_string())?;
    let base = path.parent().unwrap_or_else(|| Path::new("."));
    let mut rule_paths = Vec::new();
    for pattern in &test.rule_files {
        let full = if Path::new(pattern).is_absolute() { PathBuf::from(pattern) } else { base.join(pattern) };
        let matches: Vec<PathBuf> = glob::glob(&full.to_string_lossy())
            .map_err(|e| format!("bad rule_files pattern {pattern:?}: {e}"))?
            .filter_map(Result::ok)
            .collect();
        if matches.is_empty() {
            // Not a pattern that matched nothing: a named file that is missing.
            rule_paths.push(full);
        } else {
            rule_paths.extend(matches);
        }
    }
    let mut defs = Vec::new();
    for rule_path in &rule_paths {
        defs.extend(file::load_file(rule_path, Lang::Promql, check_expr).map_err(|e| e.to_string())?);
    }
    if let Some(group) = defs.iter().find(|g| g.lang != Lang::Promql) {
        return Err(format!("group {:?}: only PromQL rules can be unit-tested, not {}", group.name, group.lang.name()));
    }
    order_groups(&mut defs, &test.group_eval_order)?;
    let evaluation_interval = test.evaluation_interval.unwrap_or(Duration::from_secs(60));
    let mut errors = Vec::new();
    for (index, group) in test.tests.iter().enumerate() {
        let name = if group.name.is_empty() { format!("#{index}") } else { group.name.clone() };
        let failures = run_group(group, &defs, evaluation_interval).await;
        if !failures.is_empty() {
            errors.push(format!("  FAILED ({name}):\n{}", failures.join("\n")));
        }
    }
    Ok(errors)
}

fn order_groups(defs: &mut [GroupDef], order: &[String]) -> Result<(), String> {
    if order.is_empty() {
        return Ok(());
    }
    let mut position = BTreeMap::new();
    for (index, name) in order.iter().enumerate() {
        if position.insert(name.as_str(), index).is_some() {
            return Err(format!("group name repeated in evaluation order: {name}"));
        }
    }
    if let Some(missing) = defs.iter().find(|g| !position.contains_key(g.name.as_str())) {
        return Err(format!("group {:?} is missing from group_eval_order", missing.name));
    }
    defs.sort_by_key(|g| position.get(g.name.as_str()).copied().unwrap_or(usize::MAX));
    Ok(())
}

async fn run_group(test: &TestGroup, defs: &[GroupDef], evaluation_interval: Duration) -> Vec<String> {
    let store = Arc::new(MemoryStore::default());
    let interval = test.interval.unwrap_or(Duration::from_secs(60));
    for input in &test.input_series {
        if let Err(error) = store.load(&input.series, &input.values, millis(interval)) {
            return vec![format!("    input series {:?}: {error}", input.series)];
        }
    }
    let context =
        TemplateContext { external_labels: test.external_labels.clone(), external_url: test.external_url.clone() };
    let mut groups: Vec<Group> =
        defs.iter().cloned().map(|def| Group::new(def, interval, Duration::ZERO, true)).collect();
    let max_eval = test
        .alert_rule_test
        .iter()
        .map(|t| t.eval_time)
        .chain(test.promql_expr_test.iter().map(|t| t.eval_time))
        .max()
        .unwrap_or_default();
    let step = millis(evaluation_interval).max(1);
    let mut alert_times: Vec<i64> = test.alert_rule_test.iter().map(|t| millis(t.eval_time)).collect();
    alert_times.sort_unstable();
    alert_times.dedup();
    let mut next_alert_time = 0;
    let mut errors = Vec::new();
    let mut ts = 0i64;
    while ts <= millis(max_eval) {
        let mut eval_errors = Vec::new();
        for group in &mut groups {
            group.eval(ts, store.as_ref(), store.as_ref(), &context).await;
            for rule in &group.rules {
                if let Some(error) = &rule.last_error {
                    eval_errors.push(format!("    rule: {}, time: {}, err: {error}", rule.def.name(), show(ts)));
                }
            }
        }
        if !eval_errors.is_empty() {
            errors.extend(eval_errors);
            return errors;
        }
        // The alerts of evaluation `ts` answer the tests with ts <= eval_time < ts + step.
        while next_alert_time < alert_times.len()
            && ts <= alert_times[next_alert_time]
            && alert_times[next_alert_time] < ts.saturating_add(step)
        {
            let time = alert_times[next_alert_time];
            for case in test.alert_rule_test.iter().filter(|t| millis(t.eval_time) == time) {
                errors.extend(check_alerts(case, &groups));
            }
            next_alert_time += 1;
        }
        ts = ts.saturating_add(step);
    }
    for case in &test.promql_expr_test {
        errors.extend(check_expr(case, store.as_ref()).await);
    }
    errors
}

/// Labels and annotations of an alert, as compared.
type AlertShape = (Labels, Labels);

fn check_alerts(case: &AlertTest, groups: &[Group]) -> Option<String> {
    if case.alertname.is_empty() {
        return Some("    alertname missing in an alert_rule_test".to_string());
    }
    let mut got: Vec<AlertShape> = groups
        .iter()
        .flat_map(|g| g.rules.iter())
        .filter_map(|rule| rule.alerting())
        .filter(|rule| rule.name == case.alertname)
        .flat_map(|rule| rule.active_alerts().filter(|a| a.state == AlertState::Firing))
        .map(|alert| (alert.labels.clone(), alert.annotations.clone()))
        .collect();
    let mut expected: Vec<AlertShape> = case
        .exp_alerts
        .iter()
        .map(|alert| {
            let mut labels = alert.exp_labels.clone();
            labels.insert(super::alert::ALERT_NAME_LABEL.to_string(), case.alertname.clone());
            (labels, alert.exp_annotations.clone())
        })
        .collect();
    got.sort();
    expected.sort();
    (got != expected).then(|| {
        format!(
            "    alertname: {}, time: {}, \n        exp:{}, \n        got:{}",
            case.alertname,
            show(millis(case.eval_time)),
            show_alerts(&expected),
            show_alerts(&got)
        )
    })
}

async fn check_expr(case: &ExprTest, store: &MemoryStore) -> Option<String> {
    let time = millis(case.eval_time);
    let got = match promql_instant(store, &case.expr, time, EvalLimits::default()).await {
        Ok(got) => got,
        Err(error) => return Some(format!("    expr: {:?}, time: {}, err: {error}", case.expr, show(time))),
    };
    let mut expected = Vec::with_capacity(case.exp_samples.len());
    for sample in &case.exp_samples {
        match parse_series(&sample.labels) {
            Ok(labels) => expected.push((labels, sample.value)),
            Err(error) => return Some(format!("    expr: {:?}, time: {}, err: {error}", case.expr, show(time))),
        }
    }
    let mut got = got;
    got.sort_by(|a, b| a.0.cmp(&b.0));
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    let same = got.len() == expected.len()
        && got.iter().zip(&expected).all(|(g, e)| g.0 == e.0 && (g.1 == e.1 || (g.1.is_nan() && e.1.is_nan())));
    (!same).then(|| {
        format!(
            "    expr: {:?}, time: {},\n        exp: {}\n        got: {}",
            case.expr,
            show(time),
            show_samples(&expected),
            show_samples(&got)
        )
    })
}

fn show(ms: i64) -> String {
    promql_parser::util::display_duration(&Duration::from_millis(u64::try_from(ms).unwrap_or(0)))
}

fn show_labels(labels: &Labels) -> String {
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", pairs.join(", "))
}

fn show_alerts(alerts: &[AlertShape]) -> String {
    if alerts.is_empty() {
        return "[]".into();
    }
    let shown: Vec<String> = alerts
        .iter()
        .enumerate()
        .map(|(i, (labels, annotations))| {
            format!(
                "{i}:\n            Labels:{}\n            Annotations:{}",
                show_labels(labels),
                show_labels(annotations)
            )
        })
        .collect();
    format!("[\n        {}\n        ]", shown.join("\n        "))
}

fn show_samples(samples: &[(Labels, f64)]) -> String {
    let shown: Vec<String> = samples
        .iter()
        .map(|(labels, value)| format!("{} {}", show_labels(labels), crate::prom::format_value(*value)))
        .collect();
    format!("[{}]", shown.join(", "))
}

/// A series in PromQL's notation, `name{label="value", …}`, as its labels.
pub fn parse_series(text: &str) -> Result<Labels, String> {
    let expr = promql_parser::parser::parse(text).map_err(|e| format!("invalid series {text:?}: {e}"))?;
    let promql_parser::parser::Expr::VectorSelector(selector) = expr else {
        return Err(format!("invalid series {text:?}: not a series"));
    };
    let mut labels = Labels::new();
    if let Some(name) = selector.name {
        labels.insert(crate::prom::naming::METRIC_NAME_LABEL.to_string(), name);
    }
    for matcher in selector.matchers.matchers {
        if !matches!(matcher.op, promql_parser::label::MatchOp::Equal) {
            return Err(format!("invalid series {text:?}: only `=` may be used"));
        }
        if !matcher.value.is_empty() {
            labels.insert(matcher.name, matcher.value);
        }
    }
    Ok(labels)
}

/// One value of the expanding notation: a sample, a missing sample, or a staleness marker.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SeriesValue {
    Value(f64),
    Missing,
    Stale,
}

/// Expands Prometheus' series notation (see the module documentation).
pub fn expand_values(text: &str) -> Result<Vec<SeriesValue>, String> {
    let mut values = Vec::new();
    for token in text.split_whitespace() {
        let bad = || format!("invalid value {token:?} in {text:?}");
        if token == "stale" {
            values.push(SeriesValue::Stale);
            continue;
        }
        if token == "_" {
            values.push(SeriesValue::Missing);
            continue;
        }
        if let Some(count) = token.strip_prefix("_x") {
            let count: usize = count.parse().map_err(|_| bad())?;
            values.extend(std::iter::repeat_n(SeriesValue::Missing, count));
            continue;
        }
        let Some((head, count)) = token.rsplit_once('x').filter(|(_, count)| count.bytes().all(|b| b.is_ascii_digit()))
        else {
            values.push(SeriesValue::Value(parse_number(token).ok_or_else(bad)?));
            continue;
        };
        let count: u64 = count.parse().map_err(|_| bad())?;
        if count > 1_000_000 {
            return Err(format!("{token:?} expands to more than 1000000 samples"));
        }
        let (start, step) = split_step(head).ok_or_else(bad)?;
        let mut value = start;
        for _ in 0..=count {
            values.push(SeriesValue::Value(value));
            // Repeated addition, as Prometheus' parser does (not start + k × step).
            value += step;
        }
    }
    Ok(values)
}

/// `a+b`, `a-b` or `a` (step 0) of a `…xn` token.
fn split_step(head: &str) -> Option<(f64, f64)> {
    let bytes = head.as_bytes();
    // The operator: a `+` or `-` that is neither the sign of `a` nor of an exponent.
    let operator = (1..bytes.len())
        .find(|&i| (bytes[i] == b'+' || bytes[i] == b'-') && !matches!(bytes[i - 1], b'e' | b'E' | b'+' | b'-'));
    match operator {
        None => Some((parse_number(head)?, 0.0)),
        Some(i) => {
            let start = parse_number(&head[..i])?;
            let step = parse_number(&head[i + 1..])?;
            Some((start, if bytes[i] == b'-' { -step } else { step }))
        }
    }
}

fn parse_number(text: &str) -> Option<f64> {
    let (sign, rest) = match text.as_bytes().first() {
        Some(b'-') => (-1.0, &text[1..]),
        Some(b'+') => (1.0, &text[1..]),
        _ => (1.0, text),
    };
    let magnitude = match rest.to_ascii_lowercase().as_str() {
        "inf" => f64::INFINITY,
        "nan" => f64::NAN,
        _ if rest.starts_with("0x") => i64::from_str_radix(&rest[2..], 16).ok()? as f64,
        _ if rest.chars().all(|c| c.is_ascii_digit() || matches!(c, '.' | 'e' | 'E' | '+' | '-')) => {
            rest.parse().ok()?
        }
        _ => return None,
    };
    Some(sign * magnitude)
}

/// Series in memory that rules can read and write: the storage of a unit test.
#[derive(Default)]
pub struct MemoryStore {
    series: RwLock<BTreeMap<Labels, Vec<Sample>>>,
}

impl MemoryStore {
    /// Loads a series from the expanding notation, one value per `interval_ms` from 0.
    pub fn load(&self, series: &str, values: &str, interval_ms: i64) -> Result<(), String> {
        let labels = parse_series(series)?;
        let values = expand_values(values)?;
        let mut samples = Vec::with_capacity(values.len());
        for (index, value) in values.into_iter().enumerate() {
            let t = i64::try_from(index).unwrap_or(i64::MAX).saturating_mul(interval_ms);
            match value {
                SeriesValue::Value(v) => samples.push((t, v)),
                SeriesValue::Stale => samples.push((t, stale_nan())),
                SeriesValue::Missing => {}
            }
        }
        let mut all = self.series.write();
        let existing = all.entry(labels).or_default();
        for sample in samples {
            insert_sample(existing, sample);
        }
        Ok(())
    }
}

fn insert_sample(samples: &mut Vec<Sample>, sample: Sample) {
    match samples.binary_search_by_key(&sample.0, |s| s.0) {
        Ok(index) => samples[index] = sample,
        Err(index) => samples.insert(index, sample),
    }
}

#[async_trait::async_trait]
impl SeriesSource for MemoryStore {
    async fn select(
        &self,
        matchers: &[Matcher],
        min_ms: i64,
        max_ms: i64,
    ) -> crate::prom::eval::Result<Vec<SeriesData>> {
        let all = self.series.read();
        Ok(all
            .iter()
            .filter(|(labels, _)| matches_all(matchers, labels))
            .map(|(labels, samples)| SeriesData {
                labels: labels.clone(),
                samples: samples.iter().copied().filter(|(t, _)| *t >= min_ms && *t <= max_ms).collect(),
            })
            .filter(|s| !s.samples.is_empty())
            .collect())
    }
}

#[async_trait::async_trait]
impl RuleQuerier for MemoryStore {
    async fn instant(&self, lang: Lang, expr: &str, ts_ms: i64) -> Result<Vec<(Labels, f64)>, String> {
        match lang {
            Lang::Promql => promql_instant(self, expr, ts_ms, EvalLimits::default()).await,
            other => Err(format!("{} rules cannot be evaluated in memory", other.name())),
        }
    }
}

#[async_trait::async_trait]
impl SampleWriter for MemoryStore {
    async fn write(&self, ts_ms: i64, samples: Vec<(Labels, f64)>) -> Result<(), String> {
        let mut all = self.series.write();
        for (labels, value) in samples {
            insert_sample(all.entry(labels).or_default(), (ts_ms, value));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(text: &str) -> Vec<SeriesValue> {
        expand_values(text).unwrap()
    }

    #[test]
    fn the_expanding_notation_matches_prometheus_documentation() {
        use SeriesValue::{Missing, Stale, Value};
        assert_eq!(values("-2+4x3"), [Value(-2.0), Value(2.0), Value(6.0), Value(10.0)]);
        assert_eq!(values(" 1-2x4"), [Value(1.0), Value(-1.0), Value(-3.0), Value(-5.0), Value(-7.0)]);
        assert_eq!(values("1x4"), vec![Value(1.0); 5]);
        assert_eq!(values("1 _x3 stale"), [Value(1.0), Missing, Missing, Missing, Stale]);
        assert_eq!(values("1e3 -Inf +1 _"), [Value(1000.0), Value(f64::NEG_INFINITY), Value(1.0), Missing]);
        assert_eq!(values("1e1+1e1x1"), [Value(10.0), Value(20.0)]);
        assert!(matches!(values("NaN")[..], [Value(v)] if v.is_nan()));
        for bad in ["1+x3", "abc", "1+2xy", "_xz"] {
            assert!(expand_values(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn repeated_addition_keeps_prometheus_float_rounding() {
        let expanded = values("0+0.1x3");
        assert_eq!(expanded[3], SeriesValue::Value(0.1 + 0.1 + 0.1));
    }

    #[test]
    fn series_notation_gives_labels() {
        let labels = parse_series(r#"up{job="api", instance="a:9090"}"#).unwrap();
        assert_eq!(labels.len(), 3);
        assert_eq!(labels["__name__"], "up");
        assert_eq!(parse_series(r#"{__name__="x", a="b"}"#).unwrap()["__name__"], "x");
        assert!(parse_series(r#"up{job=~"a"}"#).is_err());
    }
}
