//! TraceQL metrics over stored spans (`/api/metrics/query_range` and `/api/metrics/query`, what
//! Grafana's Traces Drilldown asks): the spanset part's SQL prefilter finds the traces with a
//! candidate span in the range, each is read whole (structural operators and `trace:`
//! intrinsics need all of it) and evaluated, and the spans it selects are folded into the
//! series by [`MetricsEvaluator`].
//!
//! Unlike a search, metrics need every matching trace. At most
//! `query.max_search_traces_inspected` are read; a range holding more answers what those gave
//! with Tempo's `PARTIAL` status and a message saying so, rather than a silently low rate.

use serde_json::{Value as Json, json};

use super::TracesError;
use super::load::{self, IDS_PER_LOAD, TimeRange};
use super::traceql::metrics::{MAX_POINTS, MetricsError, MetricsEvaluator, MetricsSeries, RangeRequest};
use super::traceql::{self, Query};
use crate::engine::QueryEngine;

/// The answer and what it read.
pub struct MetricsOutcome {
    pub series: Vec<MetricsSeries>,
    pub inspected_traces: usize,
    pub inspected_spans: usize,
    /// Whether more traces matched the prefilter than were read.
    pub partial: bool,
}

impl From<MetricsError> for TracesError {
    fn from(error: MetricsError) -> Self {
        match error {
            MetricsError::TooManyPoints { .. } => {
                TracesError::Limit { limit: "max_points_per_series", message: error.to_string() }
            }
            MetricsError::TooManySeries { .. } => {
                TracesError::Limit { limit: "max_series", message: error.to_string() }
            }
            other => TracesError::BadRequest(other.to_string()),
        }
    }
}

/// Tempo's default step for a range without one (`DefaultQueryRangeStep`): about 240 points,
/// rounded down to a whole hour, 5 min, 1 min, 15 s, 5 s or 1 s (50 ms multiples below a
/// minute's range).
pub fn default_step_ns(start_ns: i64, end_ns: i64) -> i64 {
    const SECOND: i64 = 1_000_000_000;
    let baseline = end_ns.saturating_sub(start_ns) / 240;
    if end_ns.saturating_sub(start_ns) < 60 * SECOND {
        let grain = 50_000_000;
        return if baseline > grain { baseline / grain * grain } else { grain };
    }
    for grain in [3600 * SECOND, 300 * SECOND, 60 * SECOND, 15 * SECOND, 5 * SECOND, SECOND] {
        if baseline > grain {
            return baseline / grain * grain;
        }
    }
    SECOND
}

/// Evaluates the metrics `query` over `range`.
pub async fn query_range(
    engine: &QueryEngine,
    query: &Query,
    range: RangeRequest,
) -> Result<MetricsOutcome, TracesError> {
    let metrics = query
        .metrics
        .as_ref()
        .ok_or_else(|| TracesError::BadRequest("not a metrics query: it must end in e.g. | rate()".into()))?;
    let config = engine.config();
    // Series times points is bounded by the engine's sample limit, as for PromQL.
    let steps = if range.is_instant() {
        1
    } else {
        let length = u64::try_from(range.end_ns.saturating_sub(range.start_ns)).unwrap_or(0);
        let step = u64::try_from(range.step_ns).unwrap_or(1).max(1);
        (length / step).saturating_add(2).min(MAX_POINTS.saturating_add(2))
    };
    let steps = usize::try_from(steps).unwrap_or(usize::MAX);
    let max_series = (config.max_samples / steps.max(1)).clamp(1, config.max_series);
    let mut evaluator = MetricsEvaluator::new(metrics, range, max_series)?;

    let max_traces = config.max_search_traces_inspected;
    let window = TimeRange { start_ns: range.start_ns, end_ns: range.end_ns };
    let prefilter = traceql::sql_prefilter(query);
    // One more than the bound, to tell a range that holds exactly that many from one with more.
    let mut candidates =
        load::candidate_trace_ids(engine, prefilter.as_deref(), window, max_traces.saturating_add(1)).await?;
    let partial = candidates.len() > max_traces;
    candidates.truncate(max_traces);

    let mut outcome = MetricsOutcome { series: Vec::new(), inspected_traces: 0, inspected_spans: 0, partial };
    for ids in candidates.chunks(IDS_PER_LOAD) {
        for trace in load::load_traces(engine, ids, None, config.max_spans_per_trace).await? {
            outcome.inspected_traces += 1;
            outcome.inspected_spans += trace.spans.len();
            let spansets = traceql::evaluate_pipeline(traceql::spanset_part(query), &trace);
            if !spansets.is_empty() {
                evaluator.observe(&trace, &spansets)?;
            }
        }
    }
    outcome.series = evaluator.finish();
    Ok(outcome)
}

/// Tempo's answer: the series, what was read, and the partial status when the trace bound cut
/// the read short.
pub fn response(outcome: &MetricsOutcome, instant: bool, max_traces: usize) -> Json {
    let mut answer = if instant {
        traceql::metrics::query_instant_json(&outcome.series)
    } else {
        traceql::metrics::query_range_json(&outcome.series)
    };
    answer["metrics"] = json!({
        "inspectedTraces": outcome.inspected_traces,
        "inspectedSpans": outcome.inspected_spans.to_string(),
        "completedJobs": 1,
        "totalJobs": 1,
    });
    if outcome.partial {
        answer["status"] = json!("PARTIAL");
        answer["message"] = json!(format!(
            "more than {max_traces} traces match in the range; the answer counts the {max_traces} most recent \
             (query.max_search_traces_inspected)"
        ));
    }
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_steps_follow_tempo() {
        const S: i64 = 1_000_000_000;
        assert_eq!(default_step_ns(0, 3600 * S), 15 * S);
        assert_eq!(default_step_ns(0, 24 * 3600 * S), 300 * S);
        assert_eq!(default_step_ns(0, 30 * 24 * 3600 * S), 3 * 3600 * S);
        assert_eq!(default_step_ns(0, 10 * 60 * S), 2 * S);
        assert_eq!(default_step_ns(0, 30 * S), 100_000_000);
        assert_eq!(default_step_ns(0, S), 50_000_000);
        assert_eq!(default_step_ns(5, 5), 50_000_000);
    }
}
