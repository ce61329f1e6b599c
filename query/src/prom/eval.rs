//! PromQL evaluation with Prometheus 2.x semantics, series by series.
//!
//! An expression is evaluated over a [`Steps`] grid (an instant query is a grid of one step),
//! the way Prometheus's engine evaluates range queries: every node yields one value per step
//! and per series, so a selector reads its series once for the whole query, however many steps
//! it has. `offset` shifts the grid and `@` pins it to one step whose value is repeated.
//! Subqueries evaluate their inner expression on their own grid, aligned to multiples of their
//! step, and hand the points to the range function as a range selector would.
//!
//! Selection follows Prometheus 2.x: an instant selector takes the newest sample in
//! `[t - lookback, t]` unless it is a staleness marker; a range selector takes `[t - range, t]`
//! without staleness markers.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use futures::future::BoxFuture;
use promql_parser::label::{MatchOp, Matcher};
use promql_parser::parser::{
    AggregateExpr, AtModifier, BinaryExpr, Call, Expr, LabelModifier, Offset, SubqueryExpr, VectorMatchCardinality,
    VectorSelector,
};
use wake_storage::prompb::is_stale_nan;

use super::functions::{self, Bucket, RangeFunction, Window};
use super::naming::{Labels, METRIC_NAME_LABEL};

/// (timestamp in milliseconds, value)
pub type Sample = (i64, f64);

/// Prometheus's default lookback for instant selectors.
pub const DEFAULT_LOOKBACK_MS: i64 = 5 * 60 * 1000;
/// The step of a subquery that gives none (Prometheus's default evaluation interval).
pub const DEFAULT_SUBQUERY_STEP_MS: i64 = 60 * 1000;
/// The limits of one evaluation (`query.timeout_secs`, `query.max_samples`,
/// `query.max_series`).
#[derive(Debug, Clone, Copy)]
pub struct EvalLimits {
    pub deadline: Option<Instant>,
    /// Prometheus's `query.max-samples`: a query that would hold more points fails rather
    /// than exhausting memory.
    pub max_samples: usize,
    /// Series one selector may select.
    pub max_series: usize,
}

impl Default for EvalLimits {
    fn default() -> Self {
        EvalLimits { deadline: None, max_samples: 50_000_000, max_series: 500_000 }
    }
}

/// The longest range, offset or subquery step accepted, in ms: what keeps every sum of a
/// time and a duration in the evaluator far inside `i64` (times are at most ±9.2e12 ms, the
/// store's range).
pub const MAX_DURATION_MS: i64 = 10_000_000_000_000;

/// Errors with Prometheus's error types.
#[derive(Debug, thiserror::Error)]
pub enum PromError {
    /// The request or the expression is malformed: 400 `bad_data`.
    #[error("{0}")]
    BadData(String),
    /// The request body is larger than the server accepts: 413 `bad_data`.
    #[error("{0}")]
    TooLarge(String),
    /// The expression is valid but cannot be evaluated on this data: 422 `execution`.
    #[error("{0}")]
    Execution(String),
    /// A query limit (`query.<limit>`) stopped the query: 422 `execution`.
    #[error("{message}")]
    Limit { limit: &'static str, message: String },
    /// 503 `timeout`.
    #[error("query timed out in {0}")]
    Timeout(&'static str),
    /// Too many queries run or wait: 429 with `Retry-After`.
    #[error("{0}")]
    Unavailable(String),
    /// Wake failed: 500 `internal`.
    #[error("{0}")]
    Internal(String),
}

pub type Result<T> = std::result::Result<T, PromError>;

impl From<crate::Error> for PromError {
    fn from(error: crate::Error) -> Self {
        if let Some(limit) = error.limit_name() {
            return match error {
                crate::Error::Timeout(_) => PromError::Timeout("query evaluation"),
                _ => PromError::Limit { limit, message: error.to_string() },
            };
        }
        match error {
            crate::Error::Overloaded { .. } => PromError::Unavailable(error.to_string()),
            _ if error.status().is_client_error() => PromError::BadData(error.to_string()),
            _ => PromError::Internal(error.to_string()),
        }
    }
}

impl PromError {
    /// The limit this error reports, for `wake_query_limit_hits_total`.
    pub fn limit_name(&self) -> Option<&'static str> {
        match self {
            PromError::Limit { limit, .. } => Some(limit),
            PromError::Timeout(_) => Some("timeout"),
            _ => None,
        }
    }
}

/// One stored series: its labels and samples, oldest first, one per millisecond.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesData {
    pub labels: Labels,
    pub samples: Vec<Sample>,
}

/// Where series come from: the store, or memory in tests.
#[async_trait::async_trait]
pub trait SeriesSource: Send + Sync {
    /// Every series that matches all of `matchers` (`__name__` included), with its samples in
    /// `[min_ms, max_ms]`. Series without samples there are left out.
    async fn select(&self, matchers: &[Matcher], min_ms: i64, max_ms: i64) -> Result<Vec<SeriesData>>;
}

/// An evaluation grid: `start`, `start + step`, … up to `end`, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Steps {
    pub start: i64,
    pub end: i64,
    pub step: i64,
}

impl Steps {
    pub fn instant(time: i64) -> Steps {
        Steps { start: time, end: time, step: 1 }
    }

    pub fn len(&self) -> usize {
        ((self.end - self.start) / self.step) as usize + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn time(&self, index: usize) -> i64 {
        self.start + index as i64 * self.step
    }

    fn shifted(self, by: i64) -> Steps {
        Steps { start: self.start - by, end: self.end - by, step: self.step }
    }
}

/// A series evaluated on a grid: one value per step, `None` where it has none.
#[derive(Debug, Clone, PartialEq)]
pub struct StepSeries {
    pub labels: Labels,
    pub values: Vec<Option<f64>>,
}

/// What a node evaluates to.
#[derive(Debug, Clone)]
pub enum Value {
    Scalar(Vec<f64>),
    Vector(Vec<StepSeries>),
    String(String),
    /// Raw points of a range selector or subquery, per step. Only an instant query returns it.
    Matrix(Vec<RangeSeries>),
}

/// A range selector or subquery evaluated on a grid: every series' points (oldest first), and
/// for each step the window `[t - range, t]` of them.
#[derive(Debug, Clone)]
pub struct RangeSeries {
    pub labels: Labels,
    pub points: Vec<Sample>,
}

/// The windows of a range selection: shared by all series, shifted and pinned like selectors.
#[derive(Debug, Clone, Copy)]
struct RangeGrid {
    /// The grid the windows end on (offset and `@` applied).
    ends: Steps,
    /// Repeat the single window on every step of the outer grid (`@`).
    pinned: bool,
    range_ms: i64,
}

/// Evaluates PromQL over a [`SeriesSource`].
pub struct Evaluator<'a> {
    source: &'a dyn SeriesSource,
    /// The query's own start and end, which `@ start()` and `@ end()` refer to.
    query: Steps,
    lookback_ms: i64,
    limits: EvalLimits,
    points: usize,
}

/// The result of a query, in the shapes the HTTP API answers with.
#[derive(Debug, Clone)]
pub enum QueryValue {
    Scalar(i64, f64),
    String(i64, String),
    /// An instant vector: labels, time, value.
    Vector(Vec<(Labels, i64, f64)>),
    Matrix(Vec<(Labels, Vec<Sample>)>),
}

/// Parses an expression with Prometheus's grammar.
pub fn parse(query: &str) -> Result<Expr> {
    parse_limited(query, 256)
}

/// Parses an expression, refusing one nested deeper than `max_depth` (see [`crate::depth`])
/// or with a duration beyond [`MAX_DURATION_MS`].
pub fn parse_limited(query: &str, max_depth: usize) -> Result<Expr> {
    register_extra_functions();
    let expr = crate::depth::parse_promql(query, max_depth).map_err(|error| match error {
        crate::depth::DepthError::TooDeep { .. } => {
            PromError::Limit { limit: "max_query_depth", message: error.to_string() }
        }
        crate::depth::DepthError::Parse(e) => PromError::BadData(format!("invalid parameter \"query\": {e}")),
    })?;
    check_durations(&expr)?;
    Ok(expr)
}

/// Refuses ranges, offsets, subquery steps and `@` times that the evaluator's arithmetic could
/// not hold. The expression is at most `max_query_depth` deep, so this recursion is bounded.
fn check_durations(expr: &Expr) -> Result<()> {
    let too_long =
        |what: &str| PromError::BadData(format!("invalid parameter \"query\": {what} is too long (at most 317 years)"));
    let duration = |d: &std::time::Duration, what: &str| {
        if i64::try_from(d.as_millis()).map_or(true, |ms| ms > MAX_DURATION_MS) { Err(too_long(what)) } else { Ok(()) }
    };
    let offset = |o: &Option<Offset>| match o {
        Some(Offset::Pos(d) | Offset::Neg(d)) => duration(d, "an offset"),
        None => Ok(()),
    };
    let at = |a: &Option<AtModifier>| match a {
        Some(AtModifier::At(time)) => {
            let ms = match time.duration_since(std::time::UNIX_EPOCH) {
                Ok(after) => after,
                Err(before) => before.duration(),
            };
            duration(&ms, "an @ time")
        }
        _ => Ok(()),
    };
    match expr {
        Expr::Aggregate(a) => {
            check_durations(&a.expr)?;
            a.param.as_deref().map_or(Ok(()), check_durations)
        }
        Expr::Unary(u) => check_durations(&u.expr),
        Expr::Binary(b) => {
            check_durations(&b.lhs)?;
            check_durations(&b.rhs)
        }
        Expr::Paren(p) => check_durations(&p.expr),
        Expr::Subquery(sub) => {
            duration(&sub.range, "a subquery range")?;
            if let Some(step) = &sub.step {
                duration(step, "a subquery step")?;
            }
            offset(&sub.offset)?;
            at(&sub.at)?;
            check_durations(&sub.expr)
        }
        Expr::Call(call) => call.args.args.iter().try_for_each(|arg| check_durations(arg)),
        Expr::VectorSelector(vs) => {
            offset(&vs.offset)?;
            at(&vs.at)
        }
        Expr::MatrixSelector(ms) => {
            duration(&ms.range, "a range")?;
            offset(&ms.vs.offset)?;
            at(&ms.vs.at)
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => Ok(()),
    }
}

fn register_extra_functions() {
    // Prometheus 2.x's name for double_exponential_smoothing, which dashboards still use.
    static HOLT_WINTERS: std::sync::Once = std::sync::Once::new();
    HOLT_WINTERS.call_once(|| {
        use promql_parser::parser::value::ValueType;
        let function = promql_parser::parser::Function::new(
            "holt_winters",
            vec![ValueType::Matrix, ValueType::Scalar, ValueType::Scalar],
            0,
            ValueType::Vector,
            false,
        );
        if let Err(error) = promql_parser::parser::register_extra_functions(vec![function]) {
            tracing::warn!(%error, "cannot register holt_winters");
        }
    });
}

/// An instant query at `time` (ms).
pub async fn instant_query(
    source: &dyn SeriesSource,
    expr: &Expr,
    time: i64,
    limits: EvalLimits,
) -> Result<QueryValue> {
    let steps = Steps::instant(time);
    let mut evaluator = Evaluator::new(source, steps, limits);
    Ok(match evaluator.eval(expr, steps).await? {
        Value::Scalar(values) => QueryValue::Scalar(time, values[0]),
        Value::String(text) => QueryValue::String(time, text),
        Value::Vector(series) => QueryValue::Vector(
            series.into_iter().filter_map(|s| s.values[0].map(|value| (s.labels, time, value))).collect(),
        ),
        Value::Matrix(series) => QueryValue::Matrix(
            series.into_iter().map(|s| (s.labels, s.points)).filter(|(_, p)| !p.is_empty()).collect(),
        ),
    })
}

/// A range query: a matrix, series sorted by labels, steps without a value left out.
pub async fn range_query(
    source: &dyn SeriesSource,
    expr: &Expr,
    steps: Steps,
    limits: EvalLimits,
) -> Result<QueryValue> {
    let mut evaluator = Evaluator::new(source, steps, limits);
    let series = match evaluator.eval(expr, steps).await? {
        Value::Scalar(values) => {
            vec![StepSeries { labels: Labels::new(), values: values.into_iter().map(Some).collect() }]
        }
        Value::Vector(series) => series,
        Value::String(_) | Value::Matrix(_) => {
            return Err(PromError::BadData(
                "invalid expression type for range query, must be Scalar or instant Vector".into(),
            ));
        }
    };
    let mut matrix: Vec<(Labels, Vec<Sample>)> = series
        .into_iter()
        .map(|s| {
            let points = s.values.iter().enumerate().filter_map(|(i, v)| v.map(|v| (steps.time(i), v))).collect();
            (s.labels, points)
        })
        .filter(|(_, points): &(Labels, Vec<Sample>)| !points.is_empty())
        .collect();
    matrix.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(QueryValue::Matrix(matrix))
}

/// Every duration of a parsed expression is at most [`MAX_DURATION_MS`] ([`check_durations`]).
fn duration_ms(duration: &std::time::Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(MAX_DURATION_MS)
}

fn offset_ms(offset: &Option<Offset>) -> i64 {
    match offset {
        None => 0,
        Some(Offset::Pos(d)) => duration_ms(d),
        Some(Offset::Neg(d)) => -duration_ms(d),
    }
}

fn drop_name(mut labels: Labels) -> Labels {
    labels.remove(METRIC_NAME_LABEL);
    labels
}

pub(crate) fn matches_all(matchers: &[Matcher], labels: &Labels) -> bool {
    matchers.iter().all(|m| m.is_match(labels.get(&m.name).map(String::as_str).unwrap_or("")))
}

/// The matchers of a selector, its name included as `__name__="…"`.
pub fn selector_matchers(selector: &VectorSelector) -> Vec<Vec<Matcher>> {
    let name_matcher = selector.name.as_ref().map(|name| Matcher::new(MatchOp::Equal, METRIC_NAME_LABEL, name));
    let with_name = |matchers: &[Matcher]| -> Vec<Matcher> {
        let mut all: Vec<Matcher> = name_matcher.iter().cloned().collect();
        all.extend(matchers.iter().cloned());
        all
    };
    if selector.matchers.or_matchers.is_empty() {
        vec![with_name(&selector.matchers.matchers)]
    } else {
        selector.matchers.or_matchers.iter().map(|group| with_name(group)).collect()
    }
}

impl<'a> Evaluator<'a> {
    pub fn new(source: &'a dyn SeriesSource, query: Steps, limits: EvalLimits) -> Self {
        Evaluator { source, query, lookback_ms: DEFAULT_LOOKBACK_MS, limits, points: 0 }
    }

    fn check_deadline(&self, stage: &'static str) -> Result<()> {
        match self.limits.deadline {
            Some(deadline) if Instant::now() > deadline => Err(PromError::Timeout(stage)),
            _ => Ok(()),
        }
    }

    fn account(&mut self, points: usize) -> Result<()> {
        self.points = self.points.saturating_add(points);
        if self.points > self.limits.max_samples {
            return Err(PromError::Limit {
                limit: "max_samples",
                message: "query processing would load too many samples into memory in query execution".into(),
            });
        }
        Ok(())
    }

    fn at_ms(&self, at: &Option<AtModifier>) -> Option<i64> {
        at.as_ref().map(|at| match at {
            AtModifier::Start => self.query.start,
            AtModifier::End => self.query.end,
            AtModifier::At(time) => match time.duration_since(std::time::UNIX_EPOCH) {
                Ok(after) => duration_ms(&after),
                Err(before) => -duration_ms(&before.duration()),
            },
        })
    }

    /// The grid a selector or subquery with `offset` and `@` is read on, and whether its one
    /// value is repeated over `steps`.
    fn effective(&self, steps: Steps, offset: &Option<Offset>, at: &Option<AtModifier>) -> (Steps, bool) {
        let offset = offset_ms(offset);
        match self.at_ms(at) {
            Some(at) => (Steps::instant(at - offset), true),
            None => (steps.shifted(offset), false),
        }
    }

    async fn fetch(&self, selector: &VectorSelector, min_ms: i64, max_ms: i64) -> Result<Vec<SeriesData>> {
        let groups = selector_matchers(selector);
        let all = if groups.len() == 1 {
            self.source.select(&groups[0], min_ms, max_ms).await?
        } else {
            let mut seen = HashSet::new();
            let mut all = Vec::new();
            for group in &groups {
                for series in self.source.select(group, min_ms, max_ms).await? {
                    if seen.insert(series.labels.clone()) {
                        all.push(series);
                    }
                }
            }
            all
        };
        if all.len() > self.limits.max_series {
            return Err(PromError::Limit {
                limit: "max_series",
                message: format!(
                    "the selector {selector} selects {} series, more than the limit of {} (query.max_series)",
                    all.len(),
                    self.limits.max_series
                ),
            });
        }
        Ok(all)
    }

    /// Evaluates `expr` on `steps`.
    pub fn eval<'b>(&'b mut self, expr: &'b Expr, steps: Steps) -> BoxFuture<'b, Result<Value>> {
        Box::pin(async move {
            self.check_deadline("query evaluation")?;
            match expr {
                Expr::NumberLiteral(number) => Ok(Value::Scalar(vec![number.val; steps.len()])),
                Expr::StringLiteral(text) => Ok(Value::String(text.val.clone())),
                Expr::Paren(paren) => self.eval(&paren.expr, steps).await,
                Expr::Unary(unary) => match self.eval(&unary.expr, steps).await? {
                    Value::Scalar(values) => Ok(Value::Scalar(values.into_iter().map(|v| -v).collect())),
                    Value::Vector(series) => {
                        let series: Vec<StepSeries> = series
                            .into_iter()
                            .map(|s| StepSeries {
                                labels: drop_name(s.labels),
                                values: s.values.into_iter().map(|v| v.map(|v| -v)).collect(),
                            })
                            .collect();
                        check_unique(&series)?;
                        Ok(Value::Vector(series))
                    }
                    _ => Err(PromError::BadData("unary minus applies to scalars and instant vectors only".into())),
                },
                Expr::VectorSelector(selector) => Ok(Value::Vector(self.eval_selector(selector, steps, false).await?)),
                Expr::MatrixSelector(_) | Expr::Subquery(_) => {
                    let (series, _) = self.eval_range_argument(expr, steps).await?;
                    Ok(Value::Matrix(series))
                }
                Expr::Call(call) => self.eval_call(call, steps).await,
                Expr::Aggregate(aggregate) => self.eval_aggregate(aggregate, steps).await,
                Expr::Binary(binary) => self.eval_binary(binary, steps).await,
                Expr::Extension(_) => Err(PromError::BadData("unsupported expression".into())),
            }
        })
    }

    async fn eval_scalar(&mut self, expr: &Expr, steps: Steps) -> Result<Vec<f64>> {
        match self.eval(expr, steps).await? {
            Value::Scalar(values) => Ok(values),
            _ => Err(PromError::BadData(format!("expected a scalar: {expr}"))),
        }
    }

    async fn eval_vector(&mut self, expr: &Expr, steps: Steps) -> Result<Vec<StepSeries>> {
        match self.eval(expr, steps).await? {
            Value::Vector(series) => Ok(series),
            _ => Err(PromError::BadData(format!("expected an instant vector: {expr}"))),
        }
    }

    /// An instant selector: the newest sample within the lookback of each step, unless it is
    /// a staleness marker. With `timestamps`, the sample's time in seconds instead of its value.
    async fn eval_selector(
        &mut self,
        selector: &VectorSelector,
        steps: Steps,
        timestamps: bool,
    ) -> Result<Vec<StepSeries>> {
        let (grid, pinned) = self.effective(steps, &selector.offset, &selector.at);
        let data = self.fetch(selector, grid.start - self.lookback_ms, grid.end).await?;
        self.account(data.len() * steps.len())?;
        let mut out = Vec::with_capacity(data.len());
        for series in data {
            let mut values = Vec::with_capacity(grid.len());
            let mut next = 0;
            for index in 0..grid.len() {
                let t = grid.time(index);
                while next < series.samples.len() && series.samples[next].0 <= t {
                    next += 1;
                }
                let value = match next.checked_sub(1).map(|i| series.samples[i]) {
                    Some((sample_t, value)) if sample_t >= t - self.lookback_ms && !is_stale_nan(value) => {
                        Some(if timestamps { sample_t as f64 / 1000.0 } else { value })
                    }
                    _ => None,
                };
                values.push(value);
            }
            if pinned {
                values = vec![values[0]; steps.len()];
            }
            if values.iter().any(Option::is_some) {
                out.push(StepSeries { labels: series.labels, values });
            }
        }
        Ok(out)
    }

    /// A range selector or subquery: every series' points and the grid of window ends.
    async fn eval_range_argument(&mut self, expr: &Expr, steps: Steps) -> Result<(Vec<RangeSeries>, RangeGrid)> {
        match expr {
            Expr::Paren(paren) => Box::pin(self.eval_range_argument(&paren.expr, steps)).await,
            Expr::MatrixSelector(matrix) => {
                let range_ms = duration_ms(&matrix.range);
                let (ends, pinned) = self.effective(steps, &matrix.vs.offset, &matrix.vs.at);
                let data = self.fetch(&matrix.vs, ends.start - range_ms, ends.end).await?;
                let series: Vec<RangeSeries> = data
                    .into_iter()
                    .map(|s| RangeSeries {
                        labels: s.labels,
                        points: s.samples.into_iter().filter(|(_, v)| !is_stale_nan(*v)).collect(),
                    })
                    .collect();
                self.account(series.iter().map(|s| s.points.len()).sum())?;
                Ok((series, RangeGrid { ends, pinned, range_ms }))
            }
            Expr::Subquery(subquery) => self.eval_subquery(subquery, steps).await,
            other => Err(PromError::BadData(format!("expected a range vector: {other}"))),
        }
    }

    async fn eval_subquery(&mut self, subquery: &SubqueryExpr, steps: Steps) -> Result<(Vec<RangeSeries>, RangeGrid)> {
        let range_ms = duration_ms(&subquery.range);
        let step_ms = subquery.step.as_ref().map(duration_ms).filter(|s| *s > 0).unwrap_or(DEFAULT_SUBQUERY_STEP_MS);
        let (ends, pinned) = self.effective(steps, &subquery.offset, &subquery.at);
        // The first multiple of the step after the first window's start, as Prometheus aligns.
        let earliest = ends.start - range_ms;
        let mut inner_start = step_ms * earliest.div_euclid(step_ms);
        if inner_start < earliest {
            inner_start += step_ms;
        }
        if inner_start > ends.end {
            return Ok((Vec::new(), RangeGrid { ends, pinned, range_ms }));
        }
        let inner = Steps { start: inner_start, end: ends.end, step: step_ms };
        // The inner grid may be far finer than the outer one (a 30 s step over the store's
        // whole range is 600 million steps): every series the inner expression yields holds a
        // value per inner step, so one series' worth counts against `max_samples` before any is
        // allocated (found by fuzzing: a 9.8 GB allocation, then an abort).
        self.account(inner.len())?;
        let series = match self.eval(&subquery.expr, inner).await? {
            Value::Vector(series) => series,
            Value::Scalar(values) => {
                vec![StepSeries { labels: Labels::new(), values: values.into_iter().map(Some).collect() }]
            }
            _ => return Err(PromError::BadData("subqueries take an instant vector or a scalar".into())),
        };
        let series = series
            .into_iter()
            .map(|s| RangeSeries {
                labels: s.labels,
                points: s.values.iter().enumerate().filter_map(|(i, v)| v.map(|v| (inner.time(i), v))).collect(),
            })
            .collect();
        Ok((series, RangeGrid { ends, pinned, range_ms }))
    }

    /// Applies `apply` to every series' window at every step.
    fn over_windows(
        &self,
        series: &[RangeSeries],
        grid: RangeGrid,
        steps: Steps,
        mut apply: impl FnMut(&[Sample], Window, usize) -> Option<f64>,
    ) -> Vec<Vec<Option<f64>>> {
        series
            .iter()
            .map(|s| {
                let mut values = Vec::with_capacity(grid.ends.len());
                let (mut first, mut last) = (0, 0);
                for index in 0..grid.ends.len() {
                    let end = grid.ends.time(index);
                    let start = end - grid.range_ms;
                    while first < s.points.len() && s.points[first].0 < start {
                        first += 1;
                    }
                    last = last.max(first);
                    while last < s.points.len() && s.points[last].0 <= end {
                        last += 1;
                    }
                    // `@` evaluates once, at the query's start, as Prometheus's step-invariant
                    // evaluation does; otherwise at the step's own time.
                    let eval_ts = if grid.pinned { steps.start } else { steps.time(index) };
                    let window = Window {
                        eval_ts_ms: eval_ts,
                        range_start_ms: start,
                        range_end_ms: end,
                        range_ms: grid.range_ms,
                    };
                    values.push(apply(&s.points[first..last], window, index));
                }
                if grid.pinned { vec![values[0]; steps.len()] } else { values }
            })
            .collect()
    }

    async fn eval_call(&mut self, call: &Call, steps: Steps) -> Result<Value> {
        let name = match call.func.name {
            "double_exponential_smoothing" => "holt_winters",
            other => other,
        };
        let args: Vec<&Expr> = call.args.args.iter().map(|a| a.as_ref()).collect();
        if name == "absent_over_time" {
            let (series, grid) = self.eval_range_argument(args[0], steps).await?;
            let present = self.over_windows(&series, grid, steps, |window, _, _| (!window.is_empty()).then_some(1.0));
            let values = (0..steps.len()).map(|i| present.iter().all(|s| s[i].is_none()).then_some(1.0)).collect();
            return Ok(Value::Vector(vec![StepSeries { labels: absent_labels(args[0]), values }]).without_empty());
        }
        if let Some(function) = RangeFunction::from_name(name) {
            return self.eval_range_function(function, &args, steps).await;
        }
        match name {
            "time" => Ok(Value::Scalar((0..steps.len()).map(|i| steps.time(i) as f64 / 1000.0).collect())),
            "pi" => Ok(Value::Scalar(vec![std::f64::consts::PI; steps.len()])),
            "vector" => {
                let values = self.eval_scalar(args[0], steps).await?;
                Ok(Value::Vector(vec![StepSeries {
                    labels: Labels::new(),
                    values: values.into_iter().map(Some).collect(),
                }]))
            }
            "scalar" => {
                let series = self.eval_vector(args[0], steps).await?;
                Ok(Value::Scalar(
                    (0..steps.len())
                        .map(|i| {
                            let mut present = series.iter().filter_map(|s| s.values[i]);
                            match (present.next(), present.next()) {
                                (Some(value), None) => value,
                                _ => f64::NAN,
                            }
                        })
                        .collect(),
                ))
            }
            "timestamp" => {
                let series = match strip_parens(args[0]) {
                    Expr::VectorSelector(selector) => self.eval_selector(selector, steps, true).await?,
                    other => {
                        let mut series = self.eval_vector(other, steps).await?;
                        for s in &mut series {
                            for (i, value) in s.values.iter_mut().enumerate() {
                                if value.is_some() {
                                    *value = Some(steps.time(i) as f64 / 1000.0);
                                }
                            }
                        }
                        series
                    }
                };
                let series: Vec<StepSeries> =
                    series.into_iter().map(|s| StepSeries { labels: drop_name(s.labels), values: s.values }).collect();
                check_unique(&series)?;
                Ok(Value::Vector(series))
            }
            "absent" => {
                let series = self.eval_vector(args[0], steps).await?;
                let labels = absent_labels(args[0]);
                let values = (0..steps.len())
                    .map(|i| if series.iter().all(|s| s.values[i].is_none()) { Some(1.0) } else { None })
                    .collect();
                Ok(Value::Vector(vec![StepSeries { labels, values }]).without_empty())
            }
            "sort" | "sort_desc" => {
                let mut series = self.eval_vector(args[0], steps).await?;
                if steps.len() == 1 {
                    let descending = name == "sort_desc";
                    // NaN goes last either way, as in Prometheus.
                    series.sort_by(|a, b| {
                        let (a, b) = (a.values[0].unwrap_or(f64::NAN), b.values[0].unwrap_or(f64::NAN));
                        match (a.is_nan(), b.is_nan()) {
                            (true, true) => std::cmp::Ordering::Equal,
                            (true, false) => std::cmp::Ordering::Greater,
                            (false, true) => std::cmp::Ordering::Less,
                            _ if descending => b.total_cmp(&a),
                            _ => a.total_cmp(&b),
                        }
                    });
                }
                Ok(Value::Vector(series))
            }
            "label_replace" => {
                let series = self.eval_vector(args[0], steps).await?;
                let [destination, replacement, source, pattern] =
                    [1, 2, 3, 4].map(|i| string_argument(args.get(i).copied()));
                let (destination, replacement, source, pattern) = (destination?, replacement?, source?, pattern?);
                let regex = regex::Regex::new(&format!("^(?s:{pattern})$"))
                    .map_err(|e| PromError::BadData(format!("invalid regular expression in label_replace(): {e}")))?;
                if !is_valid_label_name(&destination) {
                    return Err(PromError::BadData(format!(
                        "invalid destination label name in label_replace(): {destination}"
                    )));
                }
                let series: Vec<StepSeries> = series
                    .into_iter()
                    .map(|mut s| {
                        let value = s.labels.get(&source).cloned().unwrap_or_default();
                        if let Some(captures) = regex.captures(&value) {
                            let mut result = String::new();
                            captures.expand(&replacement, &mut result);
                            if result.is_empty() {
                                s.labels.remove(&destination);
                            } else {
                                s.labels.insert(destination.clone(), result);
                            }
                        }
                        s
                    })
                    .collect();
                check_unique(&series)?;
                Ok(Value::Vector(series))
            }
            "label_join" => {
                let series = self.eval_vector(args[0], steps).await?;
                let destination = string_argument(args.get(1).copied())?;
                let separator = string_argument(args.get(2).copied())?;
                let sources: Vec<String> =
                    args.iter().skip(3).map(|a| string_argument(Some(*a))).collect::<Result<_>>()?;
                if !is_valid_label_name(&destination) {
                    return Err(PromError::BadData(format!(
                        "invalid destination label name in label_join(): {destination}"
                    )));
                }
                let series: Vec<StepSeries> = series
                    .into_iter()
                    .map(|mut s| {
                        let joined = sources
                            .iter()
                            .map(|l| s.labels.get(l).cloned().unwrap_or_default())
                            .collect::<Vec<_>>()
                            .join(&separator);
                        if joined.is_empty() {
                            s.labels.remove(&destination);
                        } else {
                            s.labels.insert(destination.clone(), joined);
                        }
                        s
                    })
                    .collect();
                check_unique(&series)?;
                Ok(Value::Vector(series))
            }
            "histogram_quantile" => {
                let quantiles = self.eval_scalar(args[0], steps).await?;
                let series = self.eval_vector(args[1], steps).await?;
                Ok(Value::Vector(histogram_quantile(&quantiles, series, steps)))
            }
            "clamp" | "clamp_min" | "clamp_max" | "round" => {
                let series = self.eval_vector(args[0], steps).await?;
                let mut scalar_args = Vec::new();
                for arg in &args[1..] {
                    scalar_args.push(self.eval_scalar(arg, steps).await?);
                }
                map_values(series, |i, v| {
                    let per_step: Vec<f64> = scalar_args.iter().map(|a| a[i]).collect();
                    functions::eval_math(name, v, &per_step)
                })
            }
            "days_in_month" | "day_of_month" | "day_of_week" | "day_of_year" | "hour" | "minute" | "month" | "year" => {
                let series = if args.is_empty() {
                    let times = (0..steps.len()).map(|i| Some(steps.time(i) as f64 / 1000.0)).collect();
                    vec![StepSeries { labels: Labels::new(), values: times }]
                } else {
                    self.eval_vector(args[0], steps).await?
                };
                map_values(series, |_, v| functions::eval_date(name, v))
            }
            _ if args.len() == 1 && functions::eval_math(name, 1.0, &[]).is_some() => {
                let series = self.eval_vector(args[0], steps).await?;
                map_values(series, |_, v| functions::eval_math(name, v, &[]))
            }
            other => Err(PromError::BadData(format!("function {other:?} is not supported"))),
        }
    }

    async fn eval_range_function(&mut self, function: RangeFunction, args: &[&Expr], steps: Steps) -> Result<Value> {
        // The range vector is the first argument except for quantile_over_time(φ, v).
        let (range_arg, scalar_exprs): (&Expr, Vec<&Expr>) = match function {
            RangeFunction::QuantileOverTime => (args[1], vec![args[0]]),
            _ => (args[0], args[1..].to_vec()),
        };
        let mut scalars = Vec::new();
        for expr in scalar_exprs {
            scalars.push(self.eval_scalar(expr, steps).await?);
        }
        if function == RangeFunction::HoltWinters {
            for (values, what) in scalars.iter().zip(["smoothing factor", "trend factor"]) {
                if let Some(bad) = values.iter().find(|v| **v <= 0.0 || **v >= 1.0) {
                    return Err(PromError::Execution(format!("invalid {what}. Expected: 0 < sf < 1, got: {bad}")));
                }
            }
        }
        let (series, grid) = self.eval_range_argument(range_arg, steps).await?;
        let values = self.over_windows(&series, grid, steps, |window, bounds, index| {
            let step_args: Vec<f64> = scalars.iter().map(|s| s[if grid.pinned { 0 } else { index }]).collect();
            functions::eval_range(function, window, bounds, &step_args)
        });
        let keep_name = function == RangeFunction::LastOverTime;
        let out: Vec<StepSeries> = series
            .into_iter()
            .zip(values)
            .filter(|(_, values)| values.iter().any(Option::is_some))
            .map(|(s, values)| StepSeries { labels: if keep_name { s.labels } else { drop_name(s.labels) }, values })
            .collect();
        check_unique(&out)?;
        Ok(Value::Vector(out))
    }

    async fn eval_aggregate(&mut self, aggregate: &AggregateExpr, steps: Steps) -> Result<Value> {
        let op = aggregate.op.to_string();
        let param = match &aggregate.param {
            Some(param) if op == "count_values" => Param::Label(string_argument(Some(param))?),
            Some(param) => Param::Scalars(self.eval_scalar(param, steps).await?),
            None => Param::None,
        };
        let series = self.eval_vector(&aggregate.expr, steps).await?;
        let grouping = |labels: &Labels| -> Labels {
            match &aggregate.modifier {
                Some(LabelModifier::Include(names)) => labels
                    .iter()
                    .filter(|(k, _)| names.labels.contains(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                Some(LabelModifier::Exclude(names)) => labels
                    .iter()
                    .filter(|(k, _)| *k != METRIC_NAME_LABEL && !names.labels.contains(k))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
                None => Labels::new(),
            }
        };
        match op.as_str() {
            "topk" | "bottomk" => {
                let Param::Scalars(ks) = param else { return Err(PromError::BadData(format!("{op} needs a number"))) };
                Ok(Value::Vector(top_k(series, &ks, op == "topk", steps, grouping)))
            }
            "count_values" => {
                let Param::Label(label) = param else {
                    return Err(PromError::BadData("count_values needs a label name".into()));
                };
                if !is_valid_label_name(&label) {
                    return Err(PromError::BadData(format!("invalid label name {label:?}")));
                }
                let mut out: HashMap<Labels, Vec<Option<f64>>> = HashMap::new();
                for s in &series {
                    let mut key = grouping(&s.labels);
                    for (i, value) in s.values.iter().enumerate() {
                        if let Some(value) = value {
                            key.insert(label.clone(), super::format_value(*value));
                            let counts = out.entry(key.clone()).or_insert_with(|| vec![None; steps.len()]);
                            counts[i] = Some(counts[i].unwrap_or(0.0) + 1.0);
                        }
                    }
                }
                Ok(Value::Vector(out.into_iter().map(|(labels, values)| StepSeries { labels, values }).collect()))
            }
            _ => {
                let mut groups: HashMap<Labels, Vec<usize>> = HashMap::new();
                for (index, s) in series.iter().enumerate() {
                    groups.entry(grouping(&s.labels)).or_default().push(index);
                }
                let mut out = Vec::with_capacity(groups.len());
                let mut values = Vec::new();
                for (labels, members) in groups {
                    let mut result = Vec::with_capacity(steps.len());
                    for i in 0..steps.len() {
                        values.clear();
                        values.extend(members.iter().filter_map(|&m| series[m].values[i]));
                        if values.is_empty() {
                            result.push(None);
                            continue;
                        }
                        let q = match &param {
                            Param::Scalars(q) => q[i],
                            _ => f64::NAN,
                        };
                        result.push(Some(aggregate_values(&op, &mut values, q)?));
                    }
                    out.push(StepSeries { labels, values: result });
                }
                Ok(Value::Vector(out))
            }
        }
    }

    async fn eval_binary(&mut self, binary: &BinaryExpr, steps: Steps) -> Result<Value> {
        let op = binary.op.to_string();
        let return_bool = binary.modifier.as_ref().is_some_and(|m| m.return_bool);
        let lhs = self.eval(&binary.lhs, steps).await?;
        let rhs = self.eval(&binary.rhs, steps).await?;
        match (lhs, rhs) {
            (Value::Scalar(l), Value::Scalar(r)) => Ok(Value::Scalar(
                l.iter()
                    .zip(&r)
                    .map(|(l, r)| {
                        let (value, keep) = scalar_binop(&op, *l, *r);
                        if is_comparison(&op) { if keep { 1.0 } else { 0.0 } } else { value }
                    })
                    .collect(),
            )),
            (Value::Vector(vector), Value::Scalar(scalar)) => {
                vector_scalar(&op, vector, &scalar, false, return_bool).map(Value::Vector)
            }
            (Value::Scalar(scalar), Value::Vector(vector)) => {
                vector_scalar(&op, vector, &scalar, true, return_bool).map(Value::Vector)
            }
            (Value::Vector(lhs), Value::Vector(rhs)) => {
                let matching = binary.modifier.as_ref().and_then(|m| m.matching.clone());
                let card = binary.modifier.as_ref().map(|m| m.card.clone()).unwrap_or(VectorMatchCardinality::OneToOne);
                let signature = Signature::new(matching.as_ref());
                match op.as_str() {
                    "and" | "or" | "unless" => Ok(Value::Vector(set_operation(&op, lhs, rhs, &signature, steps))),
                    _ => vector_vector(&op, lhs, rhs, &signature, &card, matching.as_ref(), return_bool, steps)
                        .map(Value::Vector),
                }
            }
            _ => Err(PromError::BadData(format!("binary operator {op} does not apply to these operands"))),
        }
    }
}

impl Value {
    fn without_empty(self) -> Value {
        match self {
            Value::Vector(series) => {
                Value::Vector(series.into_iter().filter(|s| s.values.iter().any(Option::is_some)).collect())
            }
            other => other,
        }
    }
}

enum Param {
    None,
    Scalars(Vec<f64>),
    Label(String),
}

fn strip_parens(expr: &Expr) -> &Expr {
    match expr {
        Expr::Paren(paren) => strip_parens(&paren.expr),
        other => other,
    }
}

fn string_argument(expr: Option<&Expr>) -> Result<String> {
    match expr.map(strip_parens) {
        Some(Expr::StringLiteral(text)) => Ok(text.val.clone()),
        _ => Err(PromError::BadData("expected a string argument".into())),
    }
}

fn is_valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// The labels `absent()` answers with: the selector's equality matchers, each name once.
fn absent_labels(expr: &Expr) -> Labels {
    let selector = match strip_parens(expr) {
        Expr::VectorSelector(selector) => selector,
        Expr::MatrixSelector(matrix) => &matrix.vs,
        _ => return Labels::new(),
    };
    let mut labels = Labels::new();
    let mut repeated = HashSet::new();
    for matcher in &selector.matchers.matchers {
        if matcher.name == METRIC_NAME_LABEL {
            continue;
        }
        if matches!(matcher.op, MatchOp::Equal) {
            if labels.insert(matcher.name.clone(), matcher.value.clone()).is_some() {
                repeated.insert(matcher.name.clone());
            }
        } else {
            repeated.insert(matcher.name.clone());
        }
    }
    for name in repeated {
        labels.remove(&name);
    }
    labels
}

/// Prometheus refuses results where two series end up with the same labels (after a function
/// dropped `__name__`, say) at the same step.
fn check_unique(series: &[StepSeries]) -> Result<()> {
    let mut seen: HashMap<&Labels, &StepSeries> = HashMap::with_capacity(series.len());
    for s in series {
        if let Some(other) = seen.insert(&s.labels, s)
            && other.values.iter().zip(&s.values).any(|(a, b)| a.is_some() && b.is_some())
        {
            return Err(PromError::Execution("vector cannot contain metrics with the same labelset".into()));
        }
    }
    Ok(())
}

/// Merges series that share labels but never a step (e.g. after `__name__` was dropped from
/// series that alternate), so each label set appears once.
fn merge_disjoint(series: Vec<StepSeries>) -> Vec<StepSeries> {
    let mut index: HashMap<Labels, usize> = HashMap::with_capacity(series.len());
    let mut out: Vec<StepSeries> = Vec::with_capacity(series.len());
    for s in series {
        match index.get(&s.labels) {
            Some(&i) => {
                for (slot, value) in out[i].values.iter_mut().zip(s.values) {
                    if slot.is_none() {
                        *slot = value;
                    }
                }
            }
            None => {
                index.insert(s.labels.clone(), out.len());
                out.push(s);
            }
        }
    }
    out
}

fn map_values(series: Vec<StepSeries>, mut f: impl FnMut(usize, f64) -> Option<f64>) -> Result<Value> {
    let series: Vec<StepSeries> = series
        .into_iter()
        .map(|s| StepSeries {
            labels: drop_name(s.labels),
            values: s.values.iter().enumerate().map(|(i, v)| v.and_then(|v| f(i, v))).collect(),
        })
        .filter(|s| s.values.iter().any(Option::is_some))
        .collect();
    check_unique(&series)?;
    Ok(Value::Vector(merge_disjoint(series)))
}

fn histogram_quantile(quantiles: &[f64], series: Vec<StepSeries>, steps: Steps) -> Vec<StepSeries> {
    let mut groups: HashMap<Labels, Vec<(f64, &StepSeries)>> = HashMap::new();
    for s in &series {
        let Some(bound) = s.labels.get("le").and_then(|le| parse_float(le)) else { continue };
        let mut key = drop_name(s.labels.clone());
        key.remove("le");
        groups.entry(key).or_default().push((bound, s));
    }
    let mut out = Vec::with_capacity(groups.len());
    for (labels, members) in groups {
        let mut values = Vec::with_capacity(steps.len());
        let mut buckets = Vec::with_capacity(members.len());
        for (i, q) in quantiles.iter().enumerate() {
            buckets.clear();
            buckets.extend(
                members.iter().filter_map(|(bound, s)| s.values[i].map(|count| Bucket { upper_bound: *bound, count })),
            );
            values.push(if buckets.is_empty() { None } else { Some(functions::bucket_quantile(*q, &mut buckets)) });
        }
        if values.iter().any(Option::is_some) {
            out.push(StepSeries { labels, values });
        }
    }
    out
}

/// Go's `strconv.ParseFloat` for label values like `le="+Inf"`.
fn parse_float(text: &str) -> Option<f64> {
    match text.trim() {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        "NaN" | "nan" => Some(f64::NAN),
        other => other.parse().ok(),
    }
}

fn top_k(
    series: Vec<StepSeries>,
    ks: &[f64],
    largest: bool,
    steps: Steps,
    grouping: impl Fn(&Labels) -> Labels,
) -> Vec<StepSeries> {
    let mut groups: HashMap<Labels, Vec<usize>> = HashMap::new();
    for (index, s) in series.iter().enumerate() {
        groups.entry(grouping(&s.labels)).or_default().push(index);
    }
    let mut kept: Vec<Vec<Option<f64>>> = vec![vec![None; steps.len()]; series.len()];
    let mut candidates: Vec<(usize, f64)> = Vec::new();
    for members in groups.values() {
        for (i, k) in ks.iter().enumerate() {
            let k = if k.is_nan() || *k < 1.0 { 0 } else { k.min(members.len() as f64) as usize };
            candidates.clear();
            candidates.extend(members.iter().filter_map(|&m| series[m].values[i].map(|v| (m, v))));
            // NaN is never among the largest nor the smallest unless nothing else is left.
            candidates.sort_by(|(_, a), (_, b)| match (a.is_nan(), b.is_nan()) {
                (true, true) => std::cmp::Ordering::Equal,
                (true, false) => std::cmp::Ordering::Greater,
                (false, true) => std::cmp::Ordering::Less,
                _ if largest => b.total_cmp(a),
                _ => a.total_cmp(b),
            });
            for (m, v) in candidates.iter().take(k) {
                kept[*m][i] = Some(*v);
            }
        }
    }
    series
        .into_iter()
        .zip(kept)
        .filter(|(_, values)| values.iter().any(Option::is_some))
        .map(|(s, values)| StepSeries { labels: s.labels, values })
        .collect()
}

/// One aggregation over one step's values, with Prometheus 2.x's arithmetic.
fn aggregate_values(op: &str, values: &mut [f64], q: f64) -> Result<f64> {
    Ok(match op {
        "sum" => values.iter().sum(),
        "count" => values.len() as f64,
        "group" => 1.0,
        "min" => values.iter().skip(1).fold(values[0], |min, &v| if min > v || min.is_nan() { v } else { min }),
        "max" => values.iter().skip(1).fold(values[0], |max, &v| if max < v || max.is_nan() { v } else { max }),
        "avg" => {
            let mut mean: f64 = 0.0;
            let mut count = 0.0;
            for &v in values.iter() {
                count += 1.0;
                if mean.is_infinite() {
                    if v.is_infinite() && (mean > 0.0) == (v > 0.0) {
                        continue;
                    }
                    if !v.is_infinite() && !v.is_nan() {
                        continue;
                    }
                }
                mean += v / count - mean / count;
            }
            mean
        }
        "stddev" | "stdvar" => {
            let (mut count, mut mean, mut m2): (f64, f64, f64) = (0.0, 0.0, 0.0);
            for &v in values.iter() {
                count += 1.0;
                let delta = v - mean;
                mean += delta / count;
                m2 += delta * (v - mean);
            }
            let variance = m2 / count;
            if op == "stddev" { variance.sqrt() } else { variance }
        }
        "quantile" => functions::quantile(q, values),
        other => return Err(PromError::BadData(format!("aggregation {other:?} is not supported"))),
    })
}

fn is_comparison(op: &str) -> bool {
    matches!(op, "==" | "!=" | ">" | "<" | ">=" | "<=")
}

/// Prometheus's `vectorElemBinop`: the value and, for comparisons, whether the pair is kept.
fn scalar_binop(op: &str, l: f64, r: f64) -> (f64, bool) {
    match op {
        "+" => (l + r, true),
        "-" => (l - r, true),
        "*" => (l * r, true),
        "/" => (l / r, true),
        "^" => (l.powf(r), true),
        "%" => (l % r, true),
        "atan2" => (l.atan2(r), true),
        "==" => (l, l == r),
        "!=" => (l, l != r),
        ">" => (l, l > r),
        "<" => (l, l < r),
        ">=" => (l, l >= r),
        "<=" => (l, l <= r),
        _ => (f64::NAN, false),
    }
}

fn vector_scalar(
    op: &str,
    vector: Vec<StepSeries>,
    scalar: &[f64],
    scalar_on_left: bool,
    return_bool: bool,
) -> Result<Vec<StepSeries>> {
    let drop = !is_comparison(op) || return_bool;
    let out: Vec<StepSeries> = vector
        .into_iter()
        .map(|s| {
            let values = s
                .values
                .iter()
                .zip(scalar)
                .map(|(v, r)| {
                    let v = (*v)?;
                    let (l, r) = if scalar_on_left { (*r, v) } else { (v, *r) };
                    let (mut value, keep) = scalar_binop(op, l, r);
                    // A comparison keeps the vector's value even when the scalar is on the left.
                    if is_comparison(op) && scalar_on_left {
                        value = r;
                    }
                    if return_bool {
                        Some(if keep { 1.0 } else { 0.0 })
                    } else if keep {
                        Some(value)
                    } else {
                        None
                    }
                })
                .collect();
            StepSeries { labels: if drop { drop_name(s.labels) } else { s.labels }, values }
        })
        .filter(|s| s.values.iter().any(Option::is_some))
        .collect();
    check_unique(&out)?;
    Ok(merge_disjoint(out))
}

/// The label values two series are matched on.
type MatchSignature = Vec<(String, String)>;

/// How two series are matched: `on(…)`, `ignoring(…)` or neither.
struct Signature {
    on: Option<Vec<String>>,
    ignoring: Vec<String>,
}

impl Signature {
    fn new(matching: Option<&LabelModifier>) -> Self {
        match matching {
            Some(LabelModifier::Include(labels)) => Signature { on: Some(labels.labels.clone()), ignoring: Vec::new() },
            Some(LabelModifier::Exclude(labels)) => Signature { on: None, ignoring: labels.labels.clone() },
            None => Signature { on: None, ignoring: Vec::new() },
        }
    }

    fn of(&self, labels: &Labels) -> Vec<(String, String)> {
        match &self.on {
            Some(on) => {
                let mut names: Vec<&String> = on.iter().collect();
                names.sort();
                names.dedup();
                names.into_iter().map(|n| (n.clone(), labels.get(n).cloned().unwrap_or_default())).collect()
            }
            None => labels
                .iter()
                .filter(|(k, _)| *k != METRIC_NAME_LABEL && !self.ignoring.contains(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

fn set_operation(
    op: &str,
    lhs: Vec<StepSeries>,
    rhs: Vec<StepSeries>,
    signature: &Signature,
    steps: Steps,
) -> Vec<StepSeries> {
    let lhs_signatures: Vec<_> = lhs.iter().map(|s| signature.of(&s.labels)).collect();
    let rhs_signatures: Vec<_> = rhs.iter().map(|s| signature.of(&s.labels)).collect();
    // For each step, the signatures present on a side.
    let present = |series: &[StepSeries], signatures: &[Vec<(String, String)>]| {
        let mut by_step: Vec<HashSet<Vec<(String, String)>>> = vec![HashSet::new(); steps.len()];
        for (s, signature) in series.iter().zip(signatures) {
            for (i, v) in s.values.iter().enumerate() {
                if v.is_some() {
                    by_step[i].insert(signature.clone());
                }
            }
        }
        by_step
    };
    let mut out = Vec::new();
    match op {
        "and" | "unless" => {
            let rhs_present = present(&rhs, &rhs_signatures);
            let want = op == "and";
            for (s, signature) in lhs.into_iter().zip(&lhs_signatures) {
                let values = s
                    .values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v.filter(|_| rhs_present[i].contains(signature) == want))
                    .collect();
                out.push(StepSeries { labels: s.labels, values });
            }
        }
        _ => {
            let lhs_present = present(&lhs, &lhs_signatures);
            out.extend(lhs);
            for (s, signature) in rhs.into_iter().zip(&rhs_signatures) {
                let values = s
                    .values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v.filter(|_| !lhs_present[i].contains(signature)))
                    .collect();
                out.push(StepSeries { labels: s.labels, values });
            }
        }
    }
    let out: Vec<StepSeries> = out.into_iter().filter(|s| s.values.iter().any(Option::is_some)).collect();
    merge_disjoint(out)
}

#[allow(clippy::too_many_arguments)]
fn vector_vector(
    op: &str,
    lhs: Vec<StepSeries>,
    rhs: Vec<StepSeries>,
    signature: &Signature,
    card: &VectorMatchCardinality,
    matching: Option<&LabelModifier>,
    return_bool: bool,
    steps: Steps,
) -> Result<Vec<StepSeries>> {
    // group_right: the right side is the "many" side; swap so `many` is always first.
    let (many, one, swapped) = match card {
        VectorMatchCardinality::OneToMany(_) => (rhs, lhs, true),
        _ => (lhs, rhs, false),
    };
    let include: Vec<String> = card.labels().map(|l| l.labels.clone()).unwrap_or_default();
    let one_to_one = matches!(card, VectorMatchCardinality::OneToOne);
    let many_signatures: Vec<_> = many.iter().map(|s| signature.of(&s.labels)).collect();
    let one_signatures: Vec<_> = one.iter().map(|s| signature.of(&s.labels)).collect();
    let mut one_index: HashMap<&Vec<(String, String)>, Vec<usize>> = HashMap::new();
    for (i, signature) in one_signatures.iter().enumerate() {
        one_index.entry(signature).or_default().push(i);
    }
    let mut out: HashMap<Labels, Vec<Option<f64>>> = HashMap::new();
    // For each step, the result label sets already produced per match signature.
    let mut produced: Vec<HashMap<&MatchSignature, HashSet<Labels>>> = vec![HashMap::new(); steps.len()];
    for (m, many_series) in many.iter().enumerate() {
        let Some(candidates) = one_index.get(&many_signatures[m]) else { continue };
        let mut result_labels: Option<(usize, Labels)> = None;
        for (i, produced) in produced.iter_mut().enumerate() {
            let Some(many_value) = many_series.values[i] else { continue };
            let mut matched = candidates.iter().filter(|&&o| one[o].values[i].is_some());
            let Some(&o) = matched.next() else { continue };
            if matched.next().is_some() {
                let side = if swapped { "left" } else { "right" };
                return Err(PromError::Execution(format!(
                    "found duplicate series for the match group {} on the {side} hand-side of the operation; \
                     many-to-many matching not allowed: matching labels must be unique on one side",
                    format_signature(&many_signatures[m])
                )));
            }
            let one_value = one[o].values[i].unwrap_or(f64::NAN);
            let (l, r) = if swapped { (one_value, many_value) } else { (many_value, one_value) };
            let (value, keep) = scalar_binop(op, l, r);
            let value = if return_bool {
                if keep { 1.0 } else { 0.0 }
            } else if keep {
                value
            } else {
                continue;
            };
            if result_labels.as_ref().is_none_or(|(cached, _)| *cached != o) {
                let mut labels = many_series.labels.clone();
                if !is_comparison(op) || return_bool {
                    labels.remove(METRIC_NAME_LABEL);
                }
                if one_to_one {
                    match matching {
                        Some(LabelModifier::Include(on)) => labels.retain(|k, _| on.labels.contains(k)),
                        Some(LabelModifier::Exclude(ignoring)) => labels.retain(|k, _| !ignoring.labels.contains(k)),
                        None => {}
                    }
                }
                for name in &include {
                    match one[o].labels.get(name) {
                        Some(value) if !value.is_empty() => {
                            labels.insert(name.clone(), value.clone());
                        }
                        _ => {
                            labels.remove(name);
                        }
                    }
                }
                result_labels = Some((o, labels));
            }
            let Some((_, labels)) = &result_labels else { continue };
            let seen = produced.entry(&many_signatures[m]).or_default();
            if one_to_one {
                if !seen.is_empty() {
                    return Err(PromError::Execution(
                        "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)"
                            .into(),
                    ));
                }
            } else if seen.contains(labels) {
                return Err(PromError::Execution(
                    "multiple matches for labels: grouping labels must ensure unique matches".into(),
                ));
            }
            seen.insert(labels.clone());
            out.entry(labels.clone()).or_insert_with(|| vec![None; steps.len()])[i] = Some(value);
        }
    }
    Ok(out.into_iter().map(|(labels, values)| StepSeries { labels, values }).collect())
}

fn format_signature(signature: &[(String, String)]) -> String {
    let pairs: Vec<String> = signature.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{{{}}}", pairs.join(", "))
}

/// Series held in memory, for tests and for evaluating over data already read.
pub struct MemorySource(pub Vec<SeriesData>);

#[async_trait::async_trait]
impl SeriesSource for MemorySource {
    async fn select(&self, matchers: &[Matcher], min_ms: i64, max_ms: i64) -> Result<Vec<SeriesData>> {
        Ok(self
            .0
            .iter()
            .filter(|s| matches_all(matchers, &s.labels))
            .map(|s| SeriesData {
                labels: s.labels.clone(),
                samples: s.samples.iter().copied().filter(|(t, _)| *t >= min_ms && *t <= max_ms).collect(),
            })
            .filter(|s| !s.samples.is_empty())
            .collect())
    }
}

/// Shared so the HTTP layer can hold one per engine.
pub type SharedSource = Arc<dyn SeriesSource>;

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn series(pairs: &[(&str, &str)], samples: &[(i64, f64)]) -> SeriesData {
        SeriesData { labels: labels(pairs), samples: samples.to_vec() }
    }

    /// Two counters scraped every 15 s from 0 to 600 s; `b` resets at 300 s.
    fn source() -> MemorySource {
        let a: Vec<Sample> = (0..=40).map(|i| (i * 15_000, i as f64 * 10.0)).collect();
        let b: Vec<Sample> = (0..=40).map(|i| (i * 15_000, if i < 20 { i as f64 } else { (i - 20) as f64 })).collect();
        MemorySource(vec![
            series(&[("__name__", "requests_total"), ("job", "api"), ("instance", "a")], &a),
            series(&[("__name__", "requests_total"), ("job", "api"), ("instance", "b")], &b),
            series(&[("__name__", "up"), ("job", "api"), ("instance", "a")], &[(0, 1.0), (600_000, 1.0)]),
            series(&[("__name__", "up"), ("job", "api"), ("instance", "b")], &[(0, 1.0)]),
            series(
                &[("__name__", "gone"), ("instance", "a")],
                &[(0, 5.0), (15_000, f64::from_bits(wake_storage::prompb::STALE_NAN_BITS))],
            ),
        ])
    }

    async fn instant(query: &str, time: i64) -> Result<QueryValue> {
        instant_query(&source(), &parse(query)?, time, EvalLimits::default()).await
    }

    fn vector(value: QueryValue) -> Vec<(Labels, f64)> {
        let QueryValue::Vector(mut samples) = value else { panic!("not a vector: {value:?}") };
        samples.sort_by(|a, b| a.0.cmp(&b.0));
        samples.into_iter().map(|(labels, _, value)| (labels, value)).collect()
    }

    #[tokio::test]
    async fn selectors_look_back_five_minutes_and_stop_at_staleness_markers() {
        let up = vector(instant("up", 299_000).await.unwrap());
        assert_eq!(up.len(), 2, "both within 5 minutes: {up:?}");
        let up = vector(instant("up", 600_000).await.unwrap());
        assert_eq!(up.len(), 1, "b's last sample is older than 5 minutes");
        assert_eq!(vector(instant("gone", 10_000).await.unwrap()).len(), 1);
        assert!(vector(instant("gone", 20_000).await.unwrap()).is_empty(), "a staleness marker ends the series");
    }

    #[tokio::test]
    async fn rate_handles_resets_and_aggregations_group() {
        let rates = vector(instant("rate(requests_total[5m])", 600_000).await.unwrap());
        assert_eq!(rates.len(), 2);
        assert_eq!(rates[0].0, labels(&[("instance", "a"), ("job", "api")]));
        // 10 per 15 s, sampled exactly on the window's edges.
        assert!((rates[0].1 - 10.0 / 15.0).abs() < 1e-12, "{rates:?}");
        let sum = vector(instant("sum by (job) (increase(requests_total[5m]))", 600_000).await.unwrap());
        assert_eq!(sum.len(), 1);
        assert!((sum[0].1 - (200.0 + 20.0)).abs() < 1e-9, "{sum:?}");
    }

    #[tokio::test]
    async fn binary_operators_match_series_and_report_ambiguity() {
        let ratio = vector(instant("requests_total / on(instance) group_left up", 150_000).await.unwrap());
        assert_eq!(ratio.len(), 2);
        assert!(!ratio[0].0.contains_key("__name__"));
        let error = instant("requests_total + on(job) up", 150_000).await.unwrap_err();
        assert!(matches!(error, PromError::Execution(_)), "{error}");
        let filtered = vector(instant("requests_total > 100", 150_000).await.unwrap());
        assert_eq!(filtered.len(), 0);
        let kept = vector(instant("requests_total > bool 50", 150_000).await.unwrap());
        assert_eq!(kept.iter().map(|(_, v)| *v).collect::<Vec<_>>(), [1.0, 0.0]);
    }

    #[tokio::test]
    async fn range_queries_and_subqueries_use_their_own_grids() {
        let steps = Steps { start: 300_000, end: 600_000, step: 60_000 };
        let QueryValue::Matrix(matrix) = range_query(
            &source(),
            &parse("max_over_time(rate(requests_total[1m])[5m:1m])").unwrap(),
            steps,
            EvalLimits::default(),
        )
        .await
        .unwrap() else {
            panic!("not a matrix");
        };
        assert_eq!(matrix.len(), 2);
        assert_eq!(matrix[0].1.len(), 6);
        let QueryValue::Scalar(_, value) = instant("scalar(sum(up))", 100_000).await.unwrap() else { panic!() };
        assert_eq!(value, 2.0);
        assert!(matches!(instant("1 +", 0).await, Err(PromError::BadData(_))));
    }
}
