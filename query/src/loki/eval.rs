//! Evaluation of LogQL over the `logs` table.
//!
//! A log query becomes one SQL statement (time range, stream selector, and the line filters
//! that come before any parser, in `WHERE`), read in time order until `limit` lines passed the
//! rest of the pipeline. A metric query is evaluated step by step like PromQL: its range
//! aggregations produce one value per series per step from the lines in
//! `(t - range - offset, t - offset]`. Counting functions over a pipeline of line filters only
//! are answered by SQL aggregation into buckets of `gcd(step, range)`, summed into sliding
//! windows here; everything else evaluates the pipeline on each line.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use arrow::record_batch::RecordBatch;
use futures::future::BoxFuture;
use logql::{
    AggregationFunction, BinOp, Expr, Grouping, LineFilter, LineFilterOp, LogQuery, MetricQuery, PipelineStage,
    RangeAggregation, RangeFunction, VectorAggregation,
};

use super::labels::{STREAM_LABELS, quote, selector_condition};
use super::params::{Direction, ParamError};
use super::pipeline::{Labels, Pipeline, unwrap_value};
use crate::engine::QueryEngine;
use crate::error::Error;

/// Why a LogQL query failed: the query's fault (400), a query limit (400, as Loki answers
/// them; `limit` is its key under `query:`), or the engine's.
#[derive(Debug, thiserror::Error)]
pub enum LokiError {
    #[error("{0}")]
    BadQuery(String),
    #[error("{message}")]
    Limit { limit: &'static str, message: String },
    /// The request body is larger than the server accepts (413).
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    Engine(#[from] Error),
}

impl LokiError {
    /// The limit this error reports, for `wake_query_limit_hits_total`.
    pub fn limit_name(&self) -> Option<&'static str> {
        match self {
            LokiError::Limit { limit, .. } => Some(limit),
            LokiError::BadQuery(_) | LokiError::TooLarge(_) => None,
            LokiError::Engine(error) => error.limit_name(),
        }
    }
}

impl From<ParamError> for LokiError {
    fn from(error: ParamError) -> Self {
        match error.limit {
            Some(limit) => LokiError::Limit { limit, message: error.message },
            None => LokiError::BadQuery(error.message),
        }
    }
}

impl From<logql::ParseError> for LokiError {
    fn from(error: logql::ParseError) -> Self {
        LokiError::BadQuery(format!("parse error at line {}, col {}: {}", error.line, error.col, error.message))
    }
}

impl From<super::pipeline::PipelineError> for LokiError {
    fn from(error: super::pipeline::PipelineError) -> Self {
        LokiError::BadQuery(error.to_string())
    }
}

/// Log lines of one stream, in the order asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Stream {
    pub labels: Labels,
    pub entries: Vec<LogEntry>,
}

/// One log line and its structured metadata: the OTLP trace context of the record, which
/// Loki 3 keeps as structured metadata (`trace_id`, `span_id`) for OTLP logs.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    pub ts: i64,
    pub line: String,
    pub metadata: Labels,
}

/// The structured metadata labels of a log line, in the order Loki lists them.
pub const METADATA_LABELS: [&str; 2] = ["span_id", "trace_id"];

/// A series evaluated at every step: `points[k]` is the value at `steps.at(k)`, if any.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    pub labels: Labels,
    pub points: Vec<Option<f64>>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Scalar(Vec<f64>),
    Vector(Vec<Series>),
}

#[derive(Debug, Clone, PartialEq)]
pub enum QueryResult {
    Streams(Vec<Stream>),
    Metric(Value),
}

/// The evaluation instants of a metric query: `start + k * step` up to `end` inclusive.
#[derive(Debug, Clone, Copy)]
pub struct Steps {
    pub start_ns: i64,
    pub end_ns: i64,
    pub step_ns: i64,
}

impl Steps {
    /// The number of steps: at least one (`start` itself).
    pub fn len(&self) -> usize {
        ((self.end_ns - self.start_ns) / self.step_ns.max(1)) as usize + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn at(&self, k: usize) -> i64 {
        self.start_ns + k as i64 * self.step_ns
    }
}

/// A parsed LogQL query.
#[derive(Debug, Clone)]
pub enum Parsed {
    Log(LogQuery),
    Metric(MetricQuery),
}

/// Parses a LogQL query, refusing one nested deeper than `max_depth` (see [`crate::depth`]).
pub fn parse(query: &str, max_depth: usize) -> Result<Parsed, LokiError> {
    let parsed =
        crate::depth::parse_guarded(query, max_depth, logql::parse, crate::depth::logql_depth).map_err(|error| {
            match error {
                crate::depth::DepthError::TooDeep { .. } => {
                    LokiError::Limit { limit: "max_query_depth", message: error.to_string() }
                }
                crate::depth::DepthError::Parse(message) => LokiError::BadQuery(format!("parse error: {message}")),
            }
        })?;
    match parsed {
        Expr::Log(log) => Ok(Parsed::Log(log)),
        Expr::Metric(metric) => Ok(Parsed::Metric(metric)),
        _ => Err(LokiError::BadQuery("unsupported query".into())),
    }
}

fn line_filter_sql(filter: &LineFilter) -> Result<String, LokiError> {
    if filter.is_ip {
        return Err(LokiError::BadQuery("ip() line filters are not supported".into()));
    }
    let body = "coalesce(body, '')";
    let regex = |re: &str| -> Result<String, LokiError> {
        regex::Regex::new(re).map_err(|e| LokiError::BadQuery(format!("invalid regular expression {re:?}: {e}")))?;
        Ok(quote(re))
    };
    Ok(match filter.op {
        // On `body` itself, so that the scan narrows it with the full-text indexes.
        LineFilterOp::Contains => format!("contains_text(body, {})", quote(&filter.value)),
        LineFilterOp::NotContains => format!("strpos({body}, {}) = 0", quote(&filter.value)),
        LineFilterOp::Regex => format!("regexp_like({body}, {})", regex(&filter.value)?),
        LineFilterOp::NotRegex => format!("NOT regexp_like({body}, {})", regex(&filter.value)?),
        _ => return Err(LokiError::BadQuery("unsupported line filter".into())),
    })
}

/// `WHERE` conditions of a log query: selector and the line filters SQL can apply.
fn where_clause(query: &LogQuery, pipeline: &Pipeline, time: String) -> Result<String, LokiError> {
    let mut conditions = vec![time, selector_condition(&query.selector)?];
    for filter in pipeline.leading_line_filters() {
        conditions.push(line_filter_sql(&filter)?);
    }
    Ok(conditions.join(" AND "))
}

fn label_columns() -> String {
    STREAM_LABELS.iter().map(|(_, column)| *column).collect::<Vec<_>>().join(", ")
}

/// The stream labels of row `row` (label columns start at column `first`).
fn row_labels(batch: &RecordBatch, first: usize, row: usize) -> Labels {
    let mut labels = Labels::new();
    for (i, (label, _)) in STREAM_LABELS.iter().enumerate() {
        let column = batch.column(first + i);
        if let Some(values) = column.as_string_opt::<i32>()
            && values.is_valid(row)
        {
            labels.insert((*label).to_string(), values.value(row).to_string());
        }
    }
    labels
}

fn only_line_filters(query: &LogQuery) -> bool {
    query.pipeline.iter().all(|stage| matches!(stage, PipelineStage::LineFilter(_)))
}

/// Runs a log query: the newest (backward) or oldest (forward) `limit` lines in
/// `[start, end)` that pass the pipeline, grouped into streams.
pub async fn log_query(
    engine: &QueryEngine,
    query: &LogQuery,
    start_ns: i64,
    end_ns: i64,
    limit: usize,
    direction: Direction,
) -> Result<Vec<Stream>, LokiError> {
    let pipeline = Arc::new(Pipeline::compile(&query.pipeline)?);
    let order = match direction {
        Direction::Backward => "DESC",
        Direction::Forward => "ASC",
    };
    let mut sql = format!(
        "SELECT CAST(timestamp AS BIGINT) AS ts, {}, body, trace_id, span_id FROM logs WHERE {} \
         ORDER BY timestamp {order}",
        label_columns(),
        where_clause(query, &pipeline, super::labels::time_condition(start_ns, end_ns))?
    );
    if only_line_filters(query) {
        sql.push_str(&format!(" LIMIT {limit}"));
    }
    struct Collected {
        streams: BTreeMap<Labels, Vec<LogEntry>>,
        taken: usize,
    }
    let collected = Collected { streams: BTreeMap::new(), taken: 0 };
    let collected = engine
        .sql_fold(&sql, collected, move |collected, batch| {
            let timestamps = batch.column(0).as_primitive::<Int64Type>();
            let bodies = batch.column(1 + STREAM_LABELS.len()).as_string::<i32>();
            let trace_ids = batch.column(2 + STREAM_LABELS.len()).as_string::<i32>();
            let span_ids = batch.column(3 + STREAM_LABELS.len()).as_string::<i32>();
            for row in 0..batch.num_rows() {
                if collected.taken >= limit {
                    return false;
                }
                let mut labels = row_labels(batch, 1, row);
                // Structured metadata take part in the pipeline as labels (`| trace_id="…"`), as
                // in Loki, and are answered beside the line rather than as stream labels.
                for (label, ids) in [("trace_id", trace_ids), ("span_id", span_ids)] {
                    if ids.is_valid(row) && !ids.value(row).is_empty() {
                        labels.insert(label.to_string(), ids.value(row).to_string());
                    }
                }
                let body = if bodies.is_valid(row) { bodies.value(row) } else { "" };
                if let Some(line) = pipeline.process(body, &mut labels) {
                    let mut metadata = Labels::new();
                    for label in METADATA_LABELS {
                        if let Some(value) = labels.remove(label) {
                            metadata.insert(label.to_string(), value);
                        }
                    }
                    let entry = LogEntry { ts: timestamps.value(row), line, metadata };
                    collected.streams.entry(labels).or_default().push(entry);
                    collected.taken += 1;
                }
            }
            collected.taken < limit
        })
        .await?;
    Ok(collected.streams.into_iter().map(|(labels, entries)| Stream { labels, entries }).collect())
}

/// The longest range vector and the longest offset of a metric query, in ns.
pub fn extent(query: &MetricQuery) -> (i128, i128) {
    match query {
        MetricQuery::Range(range) => (
            i128::try_from(range.range.as_nanos()).unwrap_or(i128::MAX),
            range.offset.map_or(0, |o| i128::try_from(o.as_nanos()).unwrap_or(i128::MAX)),
        ),
        MetricQuery::Vector(aggregation) => extent(&aggregation.inner),
        MetricQuery::LabelReplace(replace) => extent(&replace.inner),
        MetricQuery::Binary(binary) => {
            let (left, right) = (extent(&binary.left), extent(&binary.right));
            (left.0.max(right.0), left.1.max(right.1))
        }
        _ => (0, 0),
    }
}

/// Evaluates a query at every step.
pub fn metric_query<'a>(
    engine: &'a QueryEngine,
    query: &'a MetricQuery,
    steps: Steps,
) -> BoxFuture<'a, Result<Value, LokiError>> {
    Box::pin(async move {
        match query {
            MetricQuery::Literal(value) => Ok(Value::Scalar(vec![*value; steps.len()])),
            MetricQuery::VectorLiteral(value) => {
                Ok(Value::Vector(vec![Series { labels: Labels::new(), points: vec![Some(*value); steps.len()] }]))
            }
            MetricQuery::Range(range) => Ok(Value::Vector(range_aggregation(engine, range, steps).await?)),
            MetricQuery::Vector(aggregation) => {
                let inner = match metric_query(engine, &aggregation.inner, steps).await? {
                    Value::Vector(series) => series,
                    Value::Scalar(_) => {
                        return Err(LokiError::BadQuery("vector aggregations need a vector, not a scalar".into()));
                    }
                };
                Ok(Value::Vector(vector_aggregation(aggregation, inner, steps.len())?))
            }
            MetricQuery::Binary(binary) => {
                let left = metric_query(engine, &binary.left, steps).await?;
                let right = metric_query(engine, &binary.right, steps).await?;
                binary_operation(binary, left, right)
            }
            MetricQuery::LabelReplace(replace) => {
                let Value::Vector(mut series) = metric_query(engine, &replace.inner, steps).await? else {
                    return Err(LokiError::BadQuery("label_replace needs a vector".into()));
                };
                let regex = regex::Regex::new(&format!("^(?:{})$", replace.regex))
                    .map_err(|e| LokiError::BadQuery(format!("invalid regular expression in label_replace: {e}")))?;
                for one in &mut series {
                    let source = one.labels.get(&replace.src_label).cloned().unwrap_or_default();
                    if let Some(captures) = regex.captures(&source) {
                        let mut value = String::new();
                        captures.expand(&replace.replacement, &mut value);
                        if value.is_empty() {
                            one.labels.remove(&replace.dst_label);
                        } else {
                            one.labels.insert(replace.dst_label.clone(), value);
                        }
                    }
                }
                Ok(Value::Vector(series))
            }
            _ => Err(LokiError::BadQuery("unsupported metric query".into())),
        }
    })
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

async fn range_aggregation(
    engine: &QueryEngine,
    aggregation: &RangeAggregation,
    steps: Steps,
) -> Result<Vec<Series>, LokiError> {
    // Both within `query.max_query_length_secs` ([`extent`] checked them before evaluation).
    let range_ns = super::params::duration_ns(aggregation.range);
    if range_ns <= 0 {
        return Err(LokiError::BadQuery("the range of a range aggregation must be positive".into()));
    }
    let offset_ns = aggregation.offset.map_or(0, super::params::duration_ns);
    let pipeline = Pipeline::compile(&aggregation.log_query.pipeline)?;
    let unwrap = aggregation.unwrap.clone().or_else(|| pipeline.unwrap().cloned());
    let counting = matches!(
        aggregation.function,
        RangeFunction::CountOverTime | RangeFunction::Rate | RangeFunction::BytesOverTime | RangeFunction::BytesRate
    );
    let mut series = if counting && unwrap.is_none() && only_line_filters(&aggregation.log_query) {
        counted_by_sql(engine, aggregation, &pipeline, steps, range_ns, offset_ns).await?
    } else {
        sampled(engine, aggregation, pipeline, unwrap, steps, range_ns, offset_ns).await?
    };
    if let Some(grouping) = &aggregation.grouping {
        // `by`/`without` on a range aggregation (e.g. `sum_over_time(... [1m]) by (x)`) keeps
        // only those labels; series that then collide are merged by summing, as Loki does for
        // the functions that allow grouping.
        series = group_series(series, grouping, steps.len(), |values| values.iter().sum());
    }
    Ok(series)
}

/// Counting functions by SQL: counts and bytes per series per bucket of `gcd(step, range)`,
/// then sliding sums over the buckets of each window.
async fn counted_by_sql(
    engine: &QueryEngine,
    aggregation: &RangeAggregation,
    pipeline: &Pipeline,
    steps: Steps,
    range_ns: i64,
    offset_ns: i64,
) -> Result<Vec<Series>, LokiError> {
    let origin = steps.start_ns - range_ns - offset_ns;
    // Windows start a whole number of buckets apart and span a whole number of them. One
    // window (an instant query) is one bucket, whatever its nominal step.
    let bucket = if steps.len() == 1 { range_ns.max(1) } else { gcd(steps.step_ns, range_ns).max(1) };
    let last = steps.at(steps.len() - 1) - offset_ns;
    let time = format!(
        "timestamp > '{}' AND timestamp <= '{}'",
        crate::json::format_timestamp_ns(origin, true),
        crate::json::format_timestamp_ns(last, true)
    );
    let columns = label_columns();
    let sql = format!(
        "SELECT (CAST(timestamp AS BIGINT) - ({origin}) + {bucket} - 1) / {bucket} AS bucket, {columns}, \
                count(*) AS lines, sum(octet_length(coalesce(body, ''))) AS bytes \
         FROM logs WHERE {} GROUP BY {columns}, bucket",
        where_clause(&aggregation.log_query, pipeline, time)?
    );
    let output = engine.sql(&sql).await?;
    let bytes = matches!(aggregation.function, RangeFunction::BytesOverTime | RangeFunction::BytesRate);
    let mut buckets: HashMap<Labels, HashMap<i64, f64>> = HashMap::new();
    for batch in &output.batches {
        let bucket_ids = batch.column(0).as_primitive::<Int64Type>();
        let lines = batch.column(1 + STREAM_LABELS.len()).as_primitive::<Int64Type>();
        let sizes = batch.column(2 + STREAM_LABELS.len()).as_primitive::<Int64Type>();
        for row in 0..batch.num_rows() {
            let value = if bytes { sizes.value(row) as f64 } else { lines.value(row) as f64 };
            *buckets.entry(row_labels(batch, 1, row)).or_default().entry(bucket_ids.value(row)).or_default() += value;
        }
    }
    let per_window = range_ns / bucket;
    let per_step = steps.step_ns / bucket;
    let rate = matches!(aggregation.function, RangeFunction::Rate | RangeFunction::BytesRate);
    let range_secs = range_ns as f64 / 1e9;
    let mut result = Vec::with_capacity(buckets.len());
    for (labels, counts) in buckets {
        // Only the buckets that hold lines, in order, with running sums: a window's sum is a
        // difference of two of them, however many (empty) buckets the range spans.
        let mut occupied: Vec<(i64, f64)> = counts.into_iter().collect();
        occupied.sort_unstable_by_key(|(id, _)| *id);
        let mut prefix = Vec::with_capacity(occupied.len() + 1);
        prefix.push(0.0);
        for (_, value) in &occupied {
            prefix.push(prefix[prefix.len() - 1] + value);
        }
        let points = (0..steps.len())
            .map(|k| {
                // Window k holds the buckets (first, first + per_window].
                let first = k as i64 * per_step;
                let from = occupied.partition_point(|(id, _)| *id <= first);
                let to = occupied.partition_point(|(id, _)| *id <= first + per_window);
                let value = prefix[to] - prefix[from];
                (to > from).then_some(if rate { value / range_secs } else { value })
            })
            .collect();
        result.push(Series { labels, points });
    }
    result.retain(|s| s.points.iter().any(Option::is_some));
    result.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(result)
}

/// Range functions by evaluating the pipeline on each line: samples per series, then a
/// sliding window per step.
async fn sampled(
    engine: &QueryEngine,
    aggregation: &RangeAggregation,
    pipeline: Pipeline,
    unwrap: Option<logql::Unwrap>,
    steps: Steps,
    range_ns: i64,
    offset_ns: i64,
) -> Result<Vec<Series>, LokiError> {
    let origin = steps.start_ns - range_ns - offset_ns;
    let last = steps.at(steps.len() - 1) - offset_ns;
    let time = format!(
        "timestamp > '{}' AND timestamp <= '{}'",
        crate::json::format_timestamp_ns(origin, true),
        crate::json::format_timestamp_ns(last, true)
    );
    let sql = format!(
        "SELECT CAST(timestamp AS BIGINT) AS ts, {}, body FROM logs WHERE {}",
        label_columns(),
        where_clause(&aggregation.log_query, &pipeline, time)?
    );
    let function = aggregation.function;
    struct Samples {
        by_series: HashMap<Labels, Vec<(i64, f64)>>,
        error: Option<String>,
    }
    let pipeline = Arc::new(pipeline);
    let samples = Samples { by_series: HashMap::new(), error: None };
    let samples = engine
        .sql_fold(&sql, samples, move |samples, batch| {
            let timestamps = batch.column(0).as_primitive::<Int64Type>();
            let bodies = batch.column(1 + STREAM_LABELS.len()).as_string::<i32>();
            for row in 0..batch.num_rows() {
                let mut labels = row_labels(batch, 1, row);
                let body = if bodies.is_valid(row) { bodies.value(row) } else { "" };
                let Some(line) = pipeline.process(body, &mut labels) else { continue };
                let value = match (&unwrap, function) {
                    (Some(unwrap), _) => match unwrap_value(&labels, unwrap) {
                        Ok(value) => {
                            labels.remove(&unwrap.label);
                            value
                        }
                        Err(message) => {
                            samples.error = Some(format!("SampleExtractionErr: {message}"));
                            return false;
                        }
                    },
                    (None, RangeFunction::BytesOverTime | RangeFunction::BytesRate) => line.len() as f64,
                    (None, _) => 1.0,
                };
                if let Some(error) = labels.get("__error__") {
                    samples.error = Some(error.clone());
                    return false;
                }
                samples.by_series.entry(labels).or_default().push((timestamps.value(row), value));
            }
            true
        })
        .await?;
    if let Some(error) = samples.error {
        return Err(LokiError::BadQuery(format!(
            "pipeline error: '{error}'. Use a label filter to intentionally skip this error. \
             (e.g | __error__!=\"{error}\")"
        )));
    }
    let range_secs = range_ns as f64 / 1e9;
    let mut result = Vec::new();
    for (labels, mut samples) in samples.by_series {
        samples.sort_by_key(|(ts, _)| *ts);
        let mut points = Vec::with_capacity(steps.len());
        let (mut lo, mut hi) = (0, 0);
        for k in 0..steps.len() {
            let end = steps.at(k) - offset_ns;
            let begin = end - range_ns;
            while hi < samples.len() && samples[hi].0 <= end {
                hi += 1;
            }
            while lo < hi && samples[lo].0 <= begin {
                lo += 1;
            }
            let window: Vec<f64> = samples[lo..hi].iter().map(|(_, v)| *v).collect();
            points.push(apply_range_function(function, aggregation.param, &window, range_secs));
        }
        if points.iter().any(Option::is_some) {
            result.push(Series { labels, points });
        }
    }
    result.sort_by(|a, b| a.labels.cmp(&b.labels));
    Ok(result)
}

fn apply_range_function(function: RangeFunction, param: Option<f64>, window: &[f64], range_secs: f64) -> Option<f64> {
    if window.is_empty() {
        return None;
    }
    let n = window.len() as f64;
    let sum: f64 = window.iter().sum();
    let mean = sum / n;
    let variance = window.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    Some(match function {
        RangeFunction::CountOverTime => n,
        RangeFunction::Rate => n / range_secs,
        RangeFunction::BytesOverTime | RangeFunction::SumOverTime => sum,
        RangeFunction::BytesRate => sum / range_secs,
        RangeFunction::AvgOverTime => mean,
        RangeFunction::MinOverTime => window.iter().copied().fold(f64::INFINITY, f64::min),
        RangeFunction::MaxOverTime => window.iter().copied().fold(f64::NEG_INFINITY, f64::max),
        RangeFunction::StdvarOverTime => variance,
        RangeFunction::StddevOverTime => variance.sqrt(),
        RangeFunction::QuantileOverTime => quantile(param.unwrap_or(0.5), window),
        RangeFunction::FirstOverTime => window[0],
        RangeFunction::LastOverTime => window[window.len() - 1],
        RangeFunction::RateCounter => {
            // Prometheus-style increase of a counter, with resets, per second.
            let mut increase = 0.0;
            for pair in window.windows(2) {
                increase += if pair[1] >= pair[0] { pair[1] - pair[0] } else { pair[1] };
            }
            increase / range_secs
        }
        RangeFunction::AbsentOverTime => return None,
        _ => return None,
    })
}

/// Prometheus's quantile: linear interpolation between the closest ranks.
fn quantile(q: f64, values: &[f64]) -> f64 {
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let rank = q * (sorted.len() - 1) as f64;
    let (lower, upper) = (rank.floor() as usize, rank.ceil() as usize);
    let weight = rank - rank.floor();
    sorted[lower] * (1.0 - weight) + sorted[upper] * weight
}

fn grouped_labels(labels: &Labels, grouping: Option<&Grouping>) -> Labels {
    match grouping {
        None => Labels::new(),
        Some(grouping) if grouping.without => {
            labels.iter().filter(|(k, _)| !grouping.labels.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
        }
        Some(grouping) => {
            labels.iter().filter(|(k, _)| grouping.labels.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
        }
    }
}

fn group_series(series: Vec<Series>, grouping: &Grouping, len: usize, combine: impl Fn(&[f64]) -> f64) -> Vec<Series> {
    let mut groups: BTreeMap<Labels, Vec<Series>> = BTreeMap::new();
    for one in series {
        groups.entry(grouped_labels(&one.labels, Some(grouping))).or_default().push(one);
    }
    groups
        .into_iter()
        .map(|(labels, members)| {
            let points = (0..len)
                .map(|k| {
                    let values: Vec<f64> = members.iter().filter_map(|m| m.points[k]).collect();
                    (!values.is_empty()).then(|| combine(&values))
                })
                .collect();
            Series { labels, points }
        })
        .collect()
}

fn vector_aggregation(
    aggregation: &VectorAggregation,
    inner: Vec<Series>,
    len: usize,
) -> Result<Vec<Series>, LokiError> {
    let grouping = aggregation.grouping.as_ref();
    let combine = |values: &[f64]| -> f64 {
        let n = values.len() as f64;
        let sum: f64 = values.iter().sum();
        let mean = sum / n;
        let variance = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
        match aggregation.function {
            AggregationFunction::Sum => sum,
            AggregationFunction::Avg => mean,
            AggregationFunction::Min => values.iter().copied().fold(f64::INFINITY, f64::min),
            AggregationFunction::Max => values.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            AggregationFunction::Count => n,
            AggregationFunction::Stdvar => variance,
            AggregationFunction::Stddev => variance.sqrt(),
            _ => sum,
        }
    };
    match aggregation.function {
        AggregationFunction::Topk | AggregationFunction::Bottomk => {
            let k = aggregation.param.ok_or_else(|| LokiError::BadQuery("topk and bottomk need k".into()))?;
            if k < 1.0 {
                return Err(LokiError::BadQuery(format!("parameter k of topk/bottomk must be at least 1, got {k}")));
            }
            let k = k as usize;
            let top = aggregation.function == AggregationFunction::Topk;
            let mut kept: Vec<Series> =
                inner.iter().map(|s| Series { labels: s.labels.clone(), points: vec![None; len] }).collect();
            for step in 0..len {
                let mut groups: BTreeMap<Labels, Vec<(usize, f64)>> = BTreeMap::new();
                for (i, one) in inner.iter().enumerate() {
                    if let Some(value) = one.points[step] {
                        groups.entry(grouped_labels(&one.labels, grouping)).or_default().push((i, value));
                    }
                }
                for (_, mut members) in groups {
                    members.sort_by(|a, b| if top { b.1.total_cmp(&a.1) } else { a.1.total_cmp(&b.1) });
                    for (i, value) in members.into_iter().take(k) {
                        kept[i].points[step] = Some(value);
                    }
                }
            }
            kept.retain(|s| s.points.iter().any(Option::is_some));
            Ok(kept)
        }
        AggregationFunction::Sort | AggregationFunction::SortDesc => Ok(inner),
        _ => {
            let empty = Grouping { without: false, labels: Vec::new() };
            let mut result = group_series(inner, grouping.unwrap_or(&empty), len, combine);
            result.retain(|s| s.points.iter().any(Option::is_some));
            Ok(result)
        }
    }
}

fn arithmetic(op: BinOp, left: f64, right: f64) -> Option<f64> {
    Some(match op {
        BinOp::Add => left + right,
        BinOp::Sub => left - right,
        BinOp::Mul => left * right,
        BinOp::Div => left / right,
        BinOp::Mod => left % right,
        BinOp::Pow => left.powf(right),
        _ => return None,
    })
}

fn comparison(op: BinOp, left: f64, right: f64) -> Option<bool> {
    Some(match op {
        BinOp::Eq => left == right,
        BinOp::Neq => left != right,
        BinOp::Gt => left > right,
        BinOp::Gte => left >= right,
        BinOp::Lt => left < right,
        BinOp::Lte => left <= right,
        _ => return None,
    })
}

/// One value of `left op right`; for comparisons without `bool`, the kept value (`keep`) or none.
fn combine(op: BinOp, bool_modifier: bool, left: f64, right: f64, keep: f64) -> Option<f64> {
    if let Some(value) = arithmetic(op, left, right) {
        return Some(value);
    }
    let holds = comparison(op, left, right)?;
    if bool_modifier { Some(if holds { 1.0 } else { 0.0 }) } else { holds.then_some(keep) }
}

fn matching_key(labels: &Labels, matching: Option<&logql::VectorMatch>) -> Labels {
    match matching {
        None => labels.clone(),
        Some(m) if m.on => {
            labels.iter().filter(|(k, _)| m.labels.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
        }
        Some(m) => labels.iter().filter(|(k, _)| !m.labels.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect(),
    }
}

/// Each series' value at each step, combined with the scalar's value at that step.
fn with_scalar(series: Vec<Series>, scalar: &[f64], f: impl Fn(f64, f64) -> Option<f64>) -> Value {
    Value::Vector(
        series
            .into_iter()
            .map(|s| Series {
                points: s.points.iter().zip(scalar).map(|(v, r)| v.and_then(|v| f(v, *r))).collect(),
                labels: s.labels,
            })
            .filter(|s| s.points.iter().any(Option::is_some))
            .collect(),
    )
}

fn binary_operation(binary: &logql::BinaryExpr, left: Value, right: Value) -> Result<Value, LokiError> {
    let op = binary.op;
    let set_operation = matches!(op, BinOp::And | BinOp::Or | BinOp::Unless);
    match (left, right) {
        (Value::Scalar(l), Value::Scalar(r)) => {
            if set_operation {
                return Err(LokiError::BadQuery("set operations need vectors on both sides".into()));
            }
            let values = l.iter().zip(&r).map(|(a, b)| combine(op, true, *a, *b, *a).unwrap_or(f64::NAN)).collect();
            Ok(Value::Scalar(values))
        }
        (Value::Vector(_), Value::Scalar(_)) | (Value::Scalar(_), Value::Vector(_)) if set_operation => {
            Err(LokiError::BadQuery("set operations need vectors on both sides".into()))
        }
        (Value::Vector(series), Value::Scalar(scalar)) => {
            Ok(with_scalar(series, &scalar, |v, r| combine(op, binary.bool_modifier, v, r, v)))
        }
        (Value::Scalar(scalar), Value::Vector(series)) => {
            Ok(with_scalar(series, &scalar, |v, l| combine(op, binary.bool_modifier, l, v, v)))
        }
        (Value::Vector(left), Value::Vector(right)) => {
            let matching = binary.matching.as_ref();
            if matching.is_some_and(|m| m.grouped) {
                return Err(LokiError::BadQuery("group_left/group_right are not supported".into()));
            }
            let mut by_key: HashMap<Labels, &Series> = HashMap::new();
            for one in &right {
                by_key.insert(matching_key(&one.labels, matching), one);
            }
            let mut result = Vec::new();
            match op {
                BinOp::And | BinOp::Unless => {
                    for one in &left {
                        let other = by_key.get(&matching_key(&one.labels, matching));
                        let points = one
                            .points
                            .iter()
                            .enumerate()
                            .map(|(k, v)| {
                                let present = other.is_some_and(|o| o.points[k].is_some());
                                v.filter(|_| if op == BinOp::And { present } else { !present })
                            })
                            .collect();
                        result.push(Series { labels: one.labels.clone(), points });
                    }
                }
                BinOp::Or => {
                    let left_keys: HashMap<Labels, &Series> =
                        left.iter().map(|s| (matching_key(&s.labels, matching), s)).collect();
                    result.extend(left.iter().cloned());
                    for one in &right {
                        let mine = left_keys.get(&matching_key(&one.labels, matching));
                        let points = one
                            .points
                            .iter()
                            .enumerate()
                            .map(|(k, v)| v.filter(|_| mine.is_none_or(|m| m.points[k].is_none())))
                            .collect();
                        result.push(Series { labels: one.labels.clone(), points });
                    }
                }
                _ => {
                    for one in &left {
                        let key = matching_key(&one.labels, matching);
                        let Some(other) = by_key.get(&key) else { continue };
                        let points = one
                            .points
                            .iter()
                            .zip(&other.points)
                            .map(|(l, r)| match (l, r) {
                                (Some(l), Some(r)) => combine(op, binary.bool_modifier, *l, *r, *l),
                                _ => None,
                            })
                            .collect();
                        // Arithmetic keeps only the matched labels, as Prometheus does.
                        let labels = if arithmetic(op, 0.0, 1.0).is_some() || binary.bool_modifier {
                            if matching.is_some() { key } else { one.labels.clone() }
                        } else {
                            one.labels.clone()
                        };
                        result.push(Series { labels, points });
                    }
                }
            }
            result.retain(|s| s.points.iter().any(Option::is_some));
            Ok(Value::Vector(result))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(labels: &[(&str, &str)], points: &[Option<f64>]) -> Series {
        Series { labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), points: points.to_vec() }
    }

    fn aggregation(text: &str) -> VectorAggregation {
        match logql::parse(text).expect("parses") {
            Expr::Metric(MetricQuery::Vector(aggregation)) => *aggregation,
            other => panic!("not a vector aggregation: {other:?}"),
        }
    }

    #[test]
    fn range_functions_follow_prometheus() {
        let window = [1.0, 2.0, 3.0, 10.0];
        assert_eq!(apply_range_function(RangeFunction::CountOverTime, None, &window, 60.0), Some(4.0));
        assert_eq!(apply_range_function(RangeFunction::Rate, None, &window, 2.0), Some(2.0));
        assert_eq!(apply_range_function(RangeFunction::SumOverTime, None, &window, 60.0), Some(16.0));
        assert_eq!(apply_range_function(RangeFunction::AvgOverTime, None, &window, 60.0), Some(4.0));
        assert_eq!(apply_range_function(RangeFunction::MaxOverTime, None, &window, 60.0), Some(10.0));
        assert_eq!(apply_range_function(RangeFunction::QuantileOverTime, Some(0.5), &window, 60.0), Some(2.5));
        assert_eq!(apply_range_function(RangeFunction::LastOverTime, None, &window, 60.0), Some(10.0));
        assert_eq!(apply_range_function(RangeFunction::CountOverTime, None, &[], 60.0), None);
        assert_eq!(quantile(1.5, &window), f64::INFINITY);
    }

    #[test]
    fn sums_group_by_labels_and_topk_keeps_the_largest_per_step() {
        let inner = vec![
            series(&[("pod", "a"), ("ns", "x")], &[Some(1.0), Some(5.0)]),
            series(&[("pod", "b"), ("ns", "x")], &[Some(2.0), None]),
            series(&[("pod", "c"), ("ns", "y")], &[Some(4.0), Some(1.0)]),
        ];
        let sum = vector_aggregation(&aggregation(r#"sum by (ns) (count_over_time({a="b"}[1m]))"#), inner.clone(), 2)
            .unwrap();
        assert_eq!(
            sum,
            vec![series(&[("ns", "x")], &[Some(3.0), Some(5.0)]), series(&[("ns", "y")], &[Some(4.0), Some(1.0)])]
        );
        let total =
            vector_aggregation(&aggregation(r#"count(count_over_time({a="b"}[1m]))"#), inner.clone(), 2).unwrap();
        assert_eq!(total, vec![series(&[], &[Some(3.0), Some(2.0)])]);
        let top = vector_aggregation(&aggregation(r#"topk(1, count_over_time({a="b"}[1m]))"#), inner, 2).unwrap();
        assert_eq!(
            top,
            vec![
                series(&[("ns", "x"), ("pod", "a")], &[None, Some(5.0)]),
                series(&[("ns", "y"), ("pod", "c")], &[Some(4.0), None])
            ]
        );
    }

    fn binary(text: &str) -> logql::BinaryExpr {
        match logql::parse(text).expect("parses") {
            Expr::Metric(MetricQuery::Binary(binary)) => *binary,
            other => panic!("not a binary expression: {other:?}"),
        }
    }

    #[test]
    fn binary_operations_between_vectors_and_scalars() {
        // Grafana's health check.
        let plus = binary("vector(1)+vector(1)");
        let one = || Value::Vector(vec![series(&[], &[Some(1.0)])]);
        assert_eq!(binary_operation(&plus, one(), one()).unwrap(), Value::Vector(vec![series(&[], &[Some(2.0)])]));

        let left = Value::Vector(vec![
            series(&[("pod", "a")], &[Some(1.0), Some(8.0)]),
            series(&[("pod", "b")], &[Some(3.0), None]),
        ]);
        let gt = binary(r#"count_over_time({a="b"}[1m]) > 2"#);
        assert_eq!(
            binary_operation(&gt, left.clone(), Value::Scalar(vec![2.0, 2.0])).unwrap(),
            Value::Vector(vec![
                series(&[("pod", "a")], &[None, Some(8.0)]),
                series(&[("pod", "b")], &[Some(3.0), None])
            ])
        );
        let gt_bool = binary(r#"count_over_time({a="b"}[1m]) > bool 2"#);
        assert_eq!(
            binary_operation(&gt_bool, left.clone(), Value::Scalar(vec![2.0, 2.0])).unwrap(),
            Value::Vector(vec![
                series(&[("pod", "a")], &[Some(0.0), Some(1.0)]),
                series(&[("pod", "b")], &[Some(1.0), None])
            ])
        );
        let div = binary(r#"count_over_time({a="b"}[1m]) / count_over_time({a="b"}[1m])"#);
        let right = Value::Vector(vec![series(&[("pod", "a")], &[Some(2.0), Some(2.0)])]);
        assert_eq!(
            binary_operation(&div, left.clone(), right.clone()).unwrap(),
            Value::Vector(vec![series(&[("pod", "a")], &[Some(0.5), Some(4.0)])])
        );
        let unless = binary(r#"count_over_time({a="b"}[1m]) unless count_over_time({a="b"}[1m])"#);
        assert_eq!(
            binary_operation(&unless, left, right).unwrap(),
            Value::Vector(vec![series(&[("pod", "b")], &[Some(3.0), None])])
        );
        assert_eq!(
            binary_operation(&binary("2 * 3"), Value::Scalar(vec![2.0]), Value::Scalar(vec![3.0])).unwrap(),
            Value::Scalar(vec![6.0])
        );
    }
}
