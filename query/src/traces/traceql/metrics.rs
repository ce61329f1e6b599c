//! TraceQL metrics queries (`{ status = error } | rate() by (resource.service.name)`) over
//! spans in memory, answering as Grafana Tempo's `/api/metrics/query_range` and
//! `/api/metrics/query` do. The spanset part of the query is run by
//! [`evaluate_pipeline`](super::eval::evaluate_pipeline) on each trace; the spans it selects
//! are fed to a [`MetricsEvaluator`], which sorts them into series and time steps.
//!
//! # Semantics (Tempo's, from `pkg/traceql/engine_metrics*.go` and `ast_metrics.go`)
//! - Time steps. A range query's start is rounded down to a multiple of the step, less one
//!   more step when that stays above zero (`AlignRequest`), and its end rounded up. Each
//!   step is closed on the right: step `i` holds the spans that *start* in
//!   `(start + i·step, start + (i+1)·step]` and its sample is stamped with its right edge,
//!   in milliseconds (`IntervalMapperQueryRange`). Spans starting at or before the aligned
//!   start or after the aligned end are ignored. A request whose step equals `end - start`
//!   is an instant query (Tempo's rule when the `instant` flag is absent): it is not
//!   aligned, has one step `(start, end]` and is stamped `end`.
//! - `rate()` is the count divided by the step in seconds; `count_over_time()` the count.
//!   Both, `histogram_over_time` and `quantile_over_time` fill steps without spans with 0
//!   (Tempo's combiner starts these series at 0); `min|max|sum|avg_over_time` leave such
//!   steps out (they start at NaN, and NaN samples are not sent).
//! - Field values are read as the pipeline's aggregates read them: ints, floats, durations,
//!   and attribute text that is a decimal number; a span without a number is skipped.
//!   Durations are in seconds.
//! - `histogram_over_time(f)` and `quantile_over_time(f, q…)` put each span in the power of
//!   two at or above its value (`Log2Bucketize`): durations in nanoseconds, then written in
//!   seconds; ints as they are; values below 2 and floats drop the span, as in Tempo. The
//!   histogram is one series per bucket, labelled `__bucket`; the quantiles are read off
//!   each step's buckets by Tempo's `Log2Quantile` interpolation, one series per quantile,
//!   labelled `p` (a double).
//! - Labels: one per `by` field, named by the field as TraceQL writes it
//!   (`resource.service.name`, `name`, `.x`), nil values left out; a series whose values are
//!   all nil keeps the first field with the string "nil". Without `by` the series is
//!   `{__name__="rate"}` (the function's name); histograms and quantiles have none, only
//!   their `__bucket` / `p`. An ungrouped `rate()` or `count_over_time()` answers even when
//!   no span matched, with zeros, as Tempo's `UngroupedAggregator` does.
//! - Second stages run in order on the finished series: `topk(n)`/`bottomk(n)` keep, at each
//!   step, the n highest/lowest values (ties to the series first by label order for topk,
//!   last for bottomk, as Tempo's heaps do); `> x` and the other comparisons drop the points
//!   that fail, and series left empty. Series are sorted as Tempo's frontend sorts them:
//!   fewer labels first, then label by label by key and value.
//!
//! # Differences from Tempo
//! - Bounds are errors rather than partial answers: more than [`MAX_POINTS`] steps (Tempo's
//!   default `max_intervals` is 10 000), or more series than the caller allows (Tempo cuts
//!   the answer and marks it partial).
//! - Attribute values are text in the model, so labels from attributes are strings where
//!   Tempo would keep an OTLP int or bool.
//! - Durations other than a span's `duration` (`traceDuration`, `event:timeSinceStart`) are
//!   in seconds too; Tempo's min/max/sum/avg give their nanoseconds.
//! - A span without a value is skipped by `sum_over_time`; Tempo's sum turns NaN there.
//! - `compare()`, exemplars, sampling hints (`with(sample=…)`), metrics math and the end
//!   cutoff for recent data are not implemented.

use std::collections::{BTreeMap, HashMap};

use super::ast::{FieldExpr, Metrics, MetricsFunction, SecondStage};
use super::eval::{FieldReader, SpanSet};
use super::value::{Value, ValueKey, format_duration};
use crate::traces::model::Trace;
use buckets::{as_seconds, log2_bucket, log2_quantile};

mod buckets;
mod output;
#[cfg(test)]
mod tests;

pub use output::{query_instant_json, query_range_json};

/// The most steps a query may have: Prometheus' limit of 11 000 points per series.
pub const MAX_POINTS: u64 = 11_000;

/// Tempo's limit on `by` fields; histograms, quantiles and averages keep one slot back.
const MAX_GROUP_BYS: usize = 5;

/// The time range of a metrics query, in Unix nanoseconds. A request whose step equals
/// `end_ns - start_ns` is an instant query (`/api/metrics/query`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeRequest {
    pub start_ns: i64,
    pub end_ns: i64,
    pub step_ns: i64,
}

impl RangeRequest {
    /// One step over the whole range, as Tempo rewrites `/api/metrics/query`.
    pub fn instant(start_ns: i64, end_ns: i64) -> RangeRequest {
        RangeRequest { start_ns, end_ns, step_ns: end_ns.saturating_sub(start_ns) }
    }

    pub fn is_instant(&self) -> bool {
        self.end_ns.checked_sub(self.start_ns) == Some(self.step_ns)
    }
}

/// One answered series: its labels in Tempo's order and its samples, oldest first, as
/// (timestamp in Unix milliseconds, value).
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsSeries {
    pub labels: Vec<(String, Value)>,
    pub samples: Vec<(i64, f64)>,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MetricsError {
    #[error("{0}")]
    InvalidRange(&'static str),
    #[error(
        "step of {} is too small, minimum step for given range is {}",
        format_duration(*.step_ns),
        format_duration(*.minimum_step_ns)
    )]
    TooManyPoints { step_ns: i64, minimum_step_ns: i64 },
    #[error("the query yields more than {max} series; narrow its filter or group by fewer fields")]
    TooManySeries { max: usize },
    #[error("quantile must be between 0 and 1: {0}")]
    InvalidQuantile(f64),
    #[error("limit must be greater than 0")]
    InvalidLimit,
    #[error("{0}")]
    Unsupported(String),
}

/// The steps of a request after Tempo's alignment: step `i` is `(start + i·step, start +
/// (i+1)·step]`.
#[derive(Debug, Clone, Copy)]
struct Grid {
    start: i64,
    end: i64,
    step: i64,
    intervals: usize,
}

impl Grid {
    fn new(r: RangeRequest) -> Result<Grid, MetricsError> {
        if r.step_ns <= 0 {
            return Err(MetricsError::InvalidRange("step must be greater than 0"));
        }
        if r.start_ns < 0 {
            return Err(MetricsError::InvalidRange("start must not be negative"));
        }
        if r.end_ns <= r.start_ns {
            return Err(MetricsError::InvalidRange("end must be greater than start"));
        }
        // Checked on the range asked for, before alignment adds up to two steps, as Tempo does.
        let range = r.end_ns - r.start_ns;
        let points = (range as u64).div_ceil(r.step_ns as u64);
        if points > MAX_POINTS {
            let minimum_step_ns = (range as u64).div_ceil(MAX_POINTS) as i64;
            return Err(MetricsError::TooManyPoints { step_ns: r.step_ns, minimum_step_ns });
        }
        if r.is_instant() {
            return Ok(Grid { start: r.start_ns, end: r.end_ns, step: r.step_ns, intervals: 1 });
        }
        let step = r.step_ns;
        let mut start = r.start_ns - r.start_ns % step;
        let (end, wide_step) = (i128::from(r.end_ns), i128::from(step));
        let end = i64::try_from((end + wide_step - 1) / wide_step * wide_step)
            .map_err(|_| MetricsError::InvalidRange("end is too far in the future"))?;
        // Tempo adds a step before the first (`AlignRequest`): steps are closed on the right,
        // so a span starting exactly at the aligned start belongs to the step ending there.
        if start > step {
            start -= step;
        }
        let intervals = usize::try_from((end - start) / step).unwrap_or(usize::MAX);
        Ok(Grid { start, end, step, intervals })
    }

    /// The step a span starting at `ts` falls in.
    fn interval(&self, ts: i64) -> Option<usize> {
        if ts <= self.start || ts > self.end {
            return None;
        }
        usize::try_from((ts - self.start - 1) / self.step).ok().filter(|i| *i < self.intervals)
    }

    /// The timestamp of step `i` (its right edge) in milliseconds.
    fn timestamp_ms(&self, i: usize) -> i64 {
        let offset = (i as i64).saturating_add(1).saturating_mul(self.step);
        self.start.saturating_add(offset).min(self.end) / 1_000_000
    }
}

#[derive(Debug, Clone)]
enum Function {
    Rate,
    Count,
    Min(FieldExpr),
    Max(FieldExpr),
    Sum(FieldExpr),
    Avg(FieldExpr),
    Quantile(FieldExpr, Vec<f64>),
    Histogram(FieldExpr),
}

impl Function {
    /// The name Tempo gives an ungrouped series (`__name__`).
    fn name(&self) -> &'static str {
        match self {
            Function::Rate => "rate",
            Function::Count => "count_over_time",
            Function::Min(_) => "min_over_time",
            Function::Max(_) => "max_over_time",
            Function::Sum(_) => "sum_over_time",
            Function::Avg(_) => "avg_over_time",
            Function::Quantile(..) => "quantile_over_time",
            Function::Histogram(_) => "histogram_over_time",
        }
    }

    /// Whether a step without spans reads 0 rather than being left out.
    fn zero_filled(&self) -> bool {
        matches!(self, Function::Rate | Function::Count | Function::Quantile(..) | Function::Histogram(_))
    }
}

/// What one step of one group has seen: a count, and for min/max/sum/avg a value with the
/// Neumaier compensation of the sum.
#[derive(Debug, Clone, Copy, Default)]
struct Cell {
    count: u64,
    value: f64,
    compensation: f64,
}

impl Cell {
    fn add(&mut self, x: f64) {
        let t = self.value + x;
        if t.is_infinite() {
            self.compensation = 0.0;
        } else if self.value.abs() >= x.abs() {
            self.compensation += (self.value - t) + x;
        } else {
            self.compensation += (x - t) + self.value;
        }
        self.value = t;
    }
}

/// The spans of one combination of `by` values (and, for histograms, one bucket).
#[derive(Debug)]
struct Group {
    /// One value per `by` field, nil included.
    by: Vec<Value>,
    /// `histogram_over_time`'s bucket, in the unit of its label.
    bucket: Option<f64>,
    cells: BTreeMap<usize, Cell>,
    /// `quantile_over_time`: per step, the count in each bucket (keyed by the bucket's bits,
    /// which order as the positive buckets do).
    histograms: BTreeMap<usize, BTreeMap<u64, u64>>,
}

/// Sorts the spans that a metrics query's pipeline selects into series and steps.
#[derive(Debug)]
pub struct MetricsEvaluator {
    function: Function,
    /// Each `by` field with its label name.
    by: Vec<(String, FieldExpr)>,
    second_stages: Vec<SecondStage>,
    grid: Grid,
    max_series: usize,
    /// How many answer series the groups so far make (a quantile group makes one per `p`).
    series: usize,
    groups: Vec<Group>,
    index: HashMap<(Vec<ValueKey>, Option<u64>), usize>,
}

impl MetricsEvaluator {
    /// An evaluator of `metrics` over `range`, refusing to hold more than `max_series` answer
    /// series (a quantile group counts once per quantile, a histogram once per bucket). An
    /// ungrouped `rate()`/`count_over_time()` holds its one series from the start.
    pub fn new(metrics: &Metrics, range: RangeRequest, max_series: usize) -> Result<Self, MetricsError> {
        let grid = Grid::new(range)?;
        let function = match &metrics.function {
            MetricsFunction::Rate => Function::Rate,
            MetricsFunction::CountOverTime => Function::Count,
            MetricsFunction::MinOverTime(f) => Function::Min(f.to_expr()),
            MetricsFunction::MaxOverTime(f) => Function::Max(f.to_expr()),
            MetricsFunction::SumOverTime(f) => Function::Sum(f.to_expr()),
            MetricsFunction::AvgOverTime(f) => Function::Avg(f.to_expr()),
            MetricsFunction::HistogramOverTime(f) => Function::Histogram(f.to_expr()),
            MetricsFunction::QuantileOverTime(f, qs) => {
                let mut quantiles: Vec<f64> = Vec::new();
                for &q in qs {
                    if !(0.0..=1.0).contains(&q) {
                        return Err(MetricsError::InvalidQuantile(q));
                    }
                    // A repeated quantile would name the same series twice; Tempo keeps one.
                    if !quantiles.contains(&q) {
                        quantiles.push(q);
                    }
                }
                Function::Quantile(f.to_expr(), quantiles)
            }
            MetricsFunction::Compare { .. } => {
                return Err(MetricsError::Unsupported("compare() is not supported".to_string()));
            }
        };
        let slots = match function {
            Function::Quantile(..) | Function::Histogram(_) | Function::Avg(_) => MAX_GROUP_BYS - 1,
            _ => MAX_GROUP_BYS,
        };
        if metrics.by.len() > slots {
            return Err(MetricsError::Unsupported(format!("metrics group by {} values", metrics.by.len())));
        }
        for stage in &metrics.second_stages {
            match stage {
                SecondStage::TopK(n) | SecondStage::BottomK(n) if *n <= 0 => return Err(MetricsError::InvalidLimit),
                SecondStage::Filter(op, _) if !output::is_filter_op(*op) => {
                    return Err(MetricsError::Unsupported(format!(
                        "unsupported metrics filter operation: {}",
                        op.symbol()
                    )));
                }
                _ => {}
            }
        }
        let mut evaluator = MetricsEvaluator {
            function,
            by: metrics.by.iter().map(|f| (f.to_string(), f.to_expr())).collect(),
            second_stages: metrics.second_stages.clone(),
            grid,
            max_series,
            series: 0,
            groups: Vec::new(),
            index: HashMap::new(),
        };
        if evaluator.by.is_empty() && matches!(evaluator.function, Function::Rate | Function::Count) {
            evaluator.group(Vec::new(), None)?;
        }
        Ok(evaluator)
    }

    /// Feeds the spans of `trace` that its spansets hold. A span is counted once however
    /// many spansets hold it; spans starting outside the query's steps are ignored.
    pub fn observe(&mut self, trace: &Trace, spansets: &[SpanSet]) -> Result<(), MetricsError> {
        let n = trace.spans.len();
        let mut seen = vec![false; n];
        let reader = FieldReader::new(trace);
        for &span in spansets.iter().flat_map(|s| s.spans.iter()) {
            // Indices come from the pipeline; one out of range is skipped, never indexed.
            if span >= n || std::mem::replace(&mut seen[span], true) {
                continue;
            }
            if let Some(interval) = self.grid.interval(trace.spans[span].start_ns) {
                self.observe_span(&reader, span, interval)?;
            }
        }
        Ok(())
    }

    fn observe_span(&mut self, reader: &FieldReader<'_>, span: usize, interval: usize) -> Result<(), MetricsError> {
        let seconds = |e: &FieldExpr| reader.number(span, e).and_then(|v| as_seconds(&v));
        let bucket = |e: &FieldExpr| reader.number(span, e).and_then(|v| log2_bucket(&v));
        // What the span adds, read before any group is touched.
        let value = match &self.function {
            Function::Rate | Function::Count => None,
            Function::Min(e) | Function::Max(e) | Function::Sum(e) | Function::Avg(e) => match seconds(e) {
                Some(x) => Some(x),
                None => return Ok(()),
            },
            Function::Quantile(e, _) | Function::Histogram(e) => match bucket(e) {
                Some(b) => Some(b),
                None => return Ok(()),
            },
        };
        let by: Vec<Value> = self.by.iter().map(|(_, e)| reader.value(span, e)).collect();
        let histogram_bucket = if matches!(self.function, Function::Histogram(_)) { value } else { None };
        let g = self.group(by, histogram_bucket)?;
        let group = &mut self.groups[g];
        match (&self.function, value) {
            (Function::Quantile(..), Some(b)) => {
                *group.histograms.entry(interval).or_default().entry(b.to_bits()).or_default() += 1;
            }
            (Function::Min(_), Some(x)) => {
                let cell = group.cells.entry(interval).or_default();
                if cell.count == 0 || x < cell.value {
                    cell.value = x;
                }
                cell.count += 1;
            }
            (Function::Max(_), Some(x)) => {
                let cell = group.cells.entry(interval).or_default();
                if cell.count == 0 || x > cell.value {
                    cell.value = x;
                }
                cell.count += 1;
            }
            (Function::Sum(_) | Function::Avg(_), Some(x)) => {
                let cell = group.cells.entry(interval).or_default();
                cell.add(x);
                cell.count += 1;
            }
            _ => group.cells.entry(interval).or_default().count += 1,
        }
        Ok(())
    }

    /// The index of the group of `by` values (and histogram bucket), made if new, unless it
    /// would take the answer past `max_series`.
    fn group(&mut self, by: Vec<Value>, bucket: Option<f64>) -> Result<usize, MetricsError> {
        let key = (by.iter().map(Value::key).collect::<Vec<_>>(), bucket.map(f64::to_bits));
        if let Some(&g) = self.index.get(&key) {
            return Ok(g);
        }
        let adds = match &self.function {
            Function::Quantile(_, qs) => qs.len(),
            _ => 1,
        };
        if self.series.saturating_add(adds) > self.max_series {
            return Err(MetricsError::TooManySeries { max: self.max_series });
        }
        self.series += adds;
        self.groups.push(Group { by, bucket, cells: BTreeMap::new(), histograms: BTreeMap::new() });
        self.index.insert(key, self.groups.len() - 1);
        Ok(self.groups.len() - 1)
    }

    /// The labels of a group's series, before a quantile's `p`.
    fn labels(&self, group: &Group) -> Vec<(String, Value)> {
        let bucketed = matches!(self.function, Function::Quantile(..) | Function::Histogram(_));
        if self.by.is_empty() && !bucketed {
            return vec![("__name__".to_string(), Value::Str(self.function.name().to_string()))];
        }
        let mut labels: Vec<(String, Value)> = self
            .by
            .iter()
            .zip(&group.by)
            .filter(|(_, v)| **v != Value::Nil)
            .map(|((name, _), v)| (name.clone(), v.clone()))
            .collect();
        if let Some(b) = group.bucket {
            labels.push(("__bucket".to_string(), Value::Float(b)));
        }
        // All nil: Tempo keeps the first field, so that the series has a label.
        if labels.is_empty()
            && !bucketed
            && let Some((name, _)) = self.by.first()
        {
            labels.push((name.clone(), Value::Nil));
        }
        labels
    }

    /// The answer: every series with its samples, after the second stages, sorted by labels.
    pub fn finish(self) -> Vec<MetricsSeries> {
        let n = self.grid.intervals;
        let step_seconds = self.grid.step as f64 / 1e9;
        let rate_multiplier = 1.0 / step_seconds;
        let empty = if self.function.zero_filled() { 0.0 } else { f64::NAN };
        let mut series = Vec::with_capacity(self.series);
        for group in &self.groups {
            let labels = self.labels(group);
            if let Function::Quantile(_, qs) = &self.function {
                for &q in qs {
                    let values =
                        (0..n).map(|i| group.histograms.get(&i).map_or(0.0, |h| log2_quantile(q, h))).collect();
                    let mut labels = labels.clone();
                    labels.push(("p".to_string(), Value::Float(q)));
                    series.push(output::Dense { labels, values });
                }
                continue;
            }
            let value = |cell: &Cell| match self.function {
                Function::Rate => cell.count as f64 * rate_multiplier,
                Function::Min(_) | Function::Max(_) => cell.value,
                Function::Sum(_) => cell.value + cell.compensation,
                Function::Avg(_) => (cell.value + cell.compensation) / cell.count as f64,
                _ => cell.count as f64,
            };
            let values = (0..n).map(|i| group.cells.get(&i).map_or(empty, value)).collect();
            series.push(output::Dense { labels, values });
        }
        let series = output::second_stages(series, &self.second_stages);
        output::finish(series, |i| self.grid.timestamp_ms(i))
    }
}
