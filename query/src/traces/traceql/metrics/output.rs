//! The last steps of a metrics answer: second stages (`topk`, `bottomk`, comparisons) on
//! whole series, Tempo's ordering of series, and the JSON of Tempo's `QueryRangeResponse`
//! and `QueryInstantResponse` as its frontend writes them (gogo `jsonpb`, no defaults).

use std::cmp::Ordering;

use serde_json::{Map, Value as Json, json};

use super::MetricsSeries;
use crate::traces::traceql::ast::{BinaryOp, SecondStage};
use crate::traces::traceql::value::Value;

/// A series with one value per step; NaN is a step without a value.
#[derive(Debug, Clone)]
pub(super) struct Dense {
    pub(super) labels: Vec<(String, Value)>,
    pub(super) values: Vec<f64>,
}

pub(super) fn is_filter_op(op: BinaryOp) -> bool {
    matches!(op, BinaryOp::Gt | BinaryOp::Gte | BinaryOp::Lt | BinaryOp::Lte | BinaryOp::Eq | BinaryOp::Neq)
}

/// Applies the second stages in order, as Tempo's `ChainedSecondStage` does.
pub(super) fn second_stages(mut series: Vec<Dense>, stages: &[SecondStage]) -> Vec<Dense> {
    for stage in stages {
        series = match *stage {
            SecondStage::TopK(k) => keep_extremes(series, usize::try_from(k).unwrap_or(0), true),
            SecondStage::BottomK(k) => keep_extremes(series, usize::try_from(k).unwrap_or(0), false),
            SecondStage::Filter(op, threshold) => filter(series, op, threshold),
        };
    }
    series
}

/// `topk(k)` (`top`) or `bottomk(k)`: at each step the k highest (lowest) values are kept
/// and the others cleared; series never kept are dropped. With k series or fewer the input
/// is the answer, as in Tempo. Ties go to the series first in label order for topk and last
/// for bottomk, which is where Tempo's heaps leave them.
fn keep_extremes(series: Vec<Dense>, k: usize, top: bool) -> Vec<Dense> {
    if series.len() <= k {
        return series;
    }
    let steps = series.iter().map(|s| s.values.len()).max().unwrap_or(0);
    let mut kept: Vec<Dense> =
        series.iter().map(|s| Dense { labels: s.labels.clone(), values: vec![f64::NAN; s.values.len()] }).collect();
    let mut candidates: Vec<(usize, f64)> = Vec::with_capacity(series.len());
    for step in 0..steps {
        candidates.clear();
        candidates.extend(
            series
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.values.get(step).map(|v| (i, *v)))
                .filter(|(_, v)| !v.is_nan()),
        );
        candidates.sort_by(|(a, x), (b, y)| {
            let by_value = if top { y.total_cmp(x) } else { x.total_cmp(y) };
            let by_labels = label_order(&series[*a].labels, &series[*b].labels);
            by_value.then(if top { by_labels } else { by_labels.reverse() })
        });
        for &(i, v) in candidates.iter().take(k) {
            kept[i].values[step] = v;
        }
    }
    kept.retain(|s| s.values.iter().any(|v| !v.is_nan()));
    kept
}

/// A comparison after the function: points that fail it are cleared, then empty series
/// dropped (Tempo's `MetricsFilter`).
fn filter(mut series: Vec<Dense>, op: BinaryOp, threshold: f64) -> Vec<Dense> {
    let holds = |v: f64| match op {
        BinaryOp::Gt => v > threshold,
        BinaryOp::Gte => v >= threshold,
        BinaryOp::Lt => v < threshold,
        BinaryOp::Lte => v <= threshold,
        BinaryOp::Eq => v == threshold,
        BinaryOp::Neq => v != threshold,
        _ => false,
    };
    for s in &mut series {
        for v in &mut s.values {
            if v.is_nan() || !holds(*v) {
                *v = f64::NAN;
            }
        }
    }
    series.retain(|s| s.values.iter().any(|v| !v.is_nan()));
    series
}

/// Tempo's frontend order (`sortResponse`): fewer labels first, then label by label by key
/// and by the value's text.
pub(super) fn label_order(a: &[(String, Value)], b: &[(String, Value)]) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| {
        a.iter()
            .zip(b)
            .map(|((ka, va), (kb, vb))| ka.cmp(kb).then_with(|| value_text(va).cmp(&value_text(vb))))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    })
}

/// A label value's text as Tempo compares it: the proto's text form, which begins with the
/// value's type (bool < double < int < string), then the value.
fn value_text(v: &Value) -> String {
    match v {
        Value::Bool(b) => format!("BoolValue:{b}"),
        Value::Float(x) => format!("DoubleValue:{x}"),
        Value::Int(n) => format!("IntValue:{n}"),
        other => format!("StringValue:{other}"),
    }
}

/// The answer series: sorted, with the steps that have a value as samples, and without
/// series that have none (Tempo sends no empty series).
pub(super) fn finish(mut series: Vec<Dense>, timestamp_ms: impl Fn(usize) -> i64) -> Vec<MetricsSeries> {
    series.sort_by(|a, b| label_order(&a.labels, &b.labels));
    series
        .into_iter()
        .map(|s| MetricsSeries {
            samples: s
                .values
                .iter()
                .enumerate()
                .filter(|(_, v)| !v.is_nan())
                .map(|(i, v)| (timestamp_ms(i), *v))
                .collect(),
            labels: s.labels,
        })
        .filter(|s| !s.samples.is_empty())
        .collect()
}

/// Tempo's `QueryRangeResponse` as its frontend writes it with gogo `jsonpb`, which leaves
/// out fields holding their zero value: a sample of 0 has no `value`, an answer without
/// series no `series`. Int64s are strings. `metrics` (Tempo's inspected bytes, spans and
/// jobs) is empty; callers that count what they read may fill it in.
pub fn query_range_json(series: &[MetricsSeries]) -> Json {
    let series: Vec<Json> = series
        .iter()
        .map(|s| {
            let mut out = Map::new();
            insert_labels(&mut out, &s.labels);
            if !s.samples.is_empty() {
                let samples = s
                    .samples
                    .iter()
                    .map(|&(ts, v)| {
                        let mut sample = Map::new();
                        if ts != 0 {
                            sample.insert("timestampMs".into(), json!(ts.to_string()));
                        }
                        insert_double(&mut sample, "value", v);
                        Json::Object(sample)
                    })
                    .collect();
                out.insert("samples".into(), Json::Array(samples));
            }
            Json::Object(out)
        })
        .collect();
    response(series)
}

/// Tempo's `QueryInstantResponse` for an instant query's series: each series' first sample
/// as its `value` (Tempo's `translateQueryRangeToInstant`), series without one left out.
pub fn query_instant_json(series: &[MetricsSeries]) -> Json {
    let series: Vec<Json> = series
        .iter()
        .filter_map(|s| {
            let &(_, value) = s.samples.first()?;
            let mut out = Map::new();
            insert_labels(&mut out, &s.labels);
            insert_double(&mut out, "value", value);
            Some(Json::Object(out))
        })
        .collect();
    response(series)
}

fn response(series: Vec<Json>) -> Json {
    let mut out = Map::new();
    if !series.is_empty() {
        out.insert("series".into(), Json::Array(series));
    }
    out.insert("metrics".into(), json!({}));
    Json::Object(out)
}

fn insert_labels(out: &mut Map<String, Json>, labels: &[(String, Value)]) {
    if labels.is_empty() {
        return;
    }
    let labels = labels.iter().map(|(key, value)| json!({ "key": key, "value": label_value(value) })).collect();
    out.insert("labels".into(), Json::Array(labels));
}

/// A label's OTLP `AnyValue`; nil is the string "nil", as Tempo's `Static.AsAnyValue` has it.
fn label_value(v: &Value) -> Json {
    match v {
        Value::Nil => json!({ "stringValue": "nil" }),
        other => other.to_json_any(),
    }
}

/// A double as `jsonpb` writes it: left out when zero, non-finite values as strings.
fn insert_double(out: &mut Map<String, Json>, key: &str, v: f64) {
    let json = match v {
        _ if v == 0.0 => return,
        _ if v.is_nan() => json!("NaN"),
        _ if v == f64::INFINITY => json!("Infinity"),
        _ if v == f64::NEG_INFINITY => json!("-Infinity"),
        _ => json!(v),
    };
    out.insert(key.into(), json);
}
