//! A trace search: TraceQL's SQL prefilter finds candidate traces (most recent first), each is
//! read whole, and TraceQL decides over the whole trace; the search stops at `limit` matches or
//! after `query.max_search_traces_inspected` candidates.
//!
//! Candidates are found from the end of the range backwards, in windows that double from 15
//! minutes (as Tempo searches its newest blocks first), and read in rounds that grow (twice the
//! limit, then doubling), since the first round answers most searches: when the prefilter
//! states the whole query, nearly every candidate matches, and a common match is found in the
//! last minutes without ranking every match of the range.

use std::collections::HashMap;

use serde_json::{Value as Json, json};

use super::TracesError;
use super::load::{self, IDS_PER_LOAD, TimeRange};
use super::model::Trace;
use super::traceql::{self, Query, SpanSet, Value};
use crate::engine::QueryEngine;
use crate::loki::params::{Params, first};

/// What Tempo shows for a trace whose root span has not arrived.
pub const MISSING_ROOT: &str = "<root span not yet received>";

/// The parameters of one search.
#[derive(Debug, Clone)]
pub struct SearchRequest {
    pub range: TimeRange,
    pub limit: usize,
    /// Spans per spanset in the answer (`spss`).
    pub spans_per_spanset: usize,
}

/// A trace that matched, with its spansets.
pub struct Found {
    pub trace: Trace,
    pub spansets: Vec<SpanSet>,
}

/// The matches, most recent first, and what the search read.
pub struct SearchOutcome {
    pub found: Vec<Found>,
    pub inspected_traces: usize,
    pub inspected_spans: usize,
}

/// Runs `query` (not a metrics query) over the traces with spans in the request's range.
pub async fn search(
    engine: &QueryEngine,
    query: &Query,
    request: &SearchRequest,
) -> Result<SearchOutcome, TracesError> {
    let config = engine.config();
    let mut candidates =
        load::RecentCandidates::new(traceql::sql_prefilter(query), request.range, config.max_search_traces_inspected);
    let mut outcome = SearchOutcome { found: Vec::new(), inspected_traces: 0, inspected_spans: 0 };
    let mut round = request.limit.saturating_mul(2).clamp(1, IDS_PER_LOAD);
    while outcome.found.len() < request.limit {
        let ids = candidates.next(engine, round).await?;
        if ids.is_empty() {
            break;
        }
        let ids = ids.as_slice();
        round = round.saturating_mul(2).min(IDS_PER_LOAD * 4);
        let mut traces: HashMap<String, Trace> = load::load_traces(engine, ids, None, config.max_spans_per_trace)
            .await?
            .into_iter()
            .map(|trace| (trace.trace_id.clone(), trace))
            .collect();
        for id in ids {
            let Some(trace) = traces.remove(id) else { continue };
            outcome.inspected_traces += 1;
            outcome.inspected_spans += trace.spans.len();
            let spansets = traceql::evaluate(query, &trace);
            if !spansets.is_empty() {
                outcome.found.push(Found { trace, spansets });
                if outcome.found.len() >= request.limit {
                    break;
                }
            }
        }
    }
    Ok(outcome)
}

/// A string as a TraceQL string literal.
fn string_literal(text: &str) -> String {
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

/// Tempo's older search parameters as a TraceQL query: `tags` in logfmt (`service.name=api
/// http.status_code=500`), each an exact match of a span or resource attribute (`name`,
/// `status.code`, `root.name` and `root.service.name` name intrinsics), and `minDuration` /
/// `maxDuration` on the trace's duration.
pub fn legacy_query(params: &Params) -> Result<String, TracesError> {
    let mut conditions = Vec::new();
    if let Some(tags) = first(params, "tags") {
        for (key, value) in logfmt(tags)? {
            let value_literal = string_literal(&value);
            conditions.push(match key.as_str() {
                "name" => format!("name = {value_literal}"),
                "status.code" | "status" => {
                    let status = value.to_ascii_lowercase();
                    let status = status.trim_start_matches("status_code_");
                    if !matches!(status, "ok" | "error" | "unset") {
                        return Err(TracesError::BadRequest(format!(
                            "invalid status {value:?}: expected ok, error or unset"
                        )));
                    }
                    format!("status = {status}")
                }
                "root.name" => format!("rootName = {value_literal}"),
                "root.service.name" => format!("rootServiceName = {value_literal}"),
                _ => format!(".{} = {value_literal}", attribute_name(&key)),
            });
        }
    }
    for (key, operator) in [("minDuration", ">="), ("maxDuration", "<=")] {
        if let Some(ns) = super::params::duration_ns(params, key)? {
            conditions.push(format!("traceDuration {operator} {ns}ns"));
        }
    }
    Ok(if conditions.is_empty() { "{}".into() } else { format!("{{ {} }}", conditions.join(" && ")) })
}

/// An attribute name in TraceQL: quoted unless it is plain identifier characters and dots.
fn attribute_name(name: &str) -> String {
    if !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'/')) {
        name.to_string()
    } else {
        string_literal(name)
    }
}

/// `key=value key2="quoted value"` pairs.
fn logfmt(text: &str) -> Result<Vec<(String, String)>, TracesError> {
    let bad = || {
        TracesError::BadRequest(format!(
            "invalid tags {:?}: expected logfmt key=value pairs",
            crate::limits::truncated(text, 128)
        ))
    };
    let mut pairs = Vec::new();
    let mut rest = text.trim_start();
    while !rest.is_empty() {
        let equals = rest.find('=').ok_or_else(bad)?;
        let key = rest[..equals].trim();
        if key.is_empty() || key.contains(char::is_whitespace) {
            return Err(bad());
        }
        rest = &rest[equals + 1..];
        let value;
        if let Some(quoted) = rest.strip_prefix('"') {
            let mut out = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => out.push(chars.next().ok_or_else(bad)?.1),
                    '"' => {
                        end = Some(i + 1);
                        break;
                    }
                    c => out.push(c),
                }
            }
            rest = &quoted[end.ok_or_else(bad)?..];
            value = out;
        } else {
            let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
            value = rest[..end].to_string();
            rest = &rest[end..];
        }
        pairs.push((key.to_string(), value));
        rest = rest.trim_start();
    }
    Ok(pairs)
}

fn key_values(pairs: &[(String, Value)]) -> Vec<Json> {
    pairs.iter().map(|(key, value)| json!({ "key": key, "value": value.to_json_any() })).collect()
}

/// The attributes shown for each span of a spanset: those the query's conditions name, and
/// those `select()` asked for.
fn span_json(found: &Found, spanset: &SpanSet, span: usize, shown: &[String]) -> Json {
    let record = &found.trace.spans[span];
    let mut attributes: Vec<Json> = Vec::new();
    for name in shown {
        if let Some(value) = record.attributes.get(name).or_else(|| record.resource.get(name)) {
            attributes.push(json!({ "key": name, "value": { "stringValue": value } }));
        }
    }
    if let Some((_, selected)) = spanset.selected.iter().find(|(i, _)| *i == span) {
        attributes.extend(key_values(selected));
    }
    json!({
        "spanID": record.span_id,
        "name": record.name,
        "startTimeUnixNano": record.start_ns.to_string(),
        "durationNanos": record.duration_ns().to_string(),
        "attributes": attributes,
    })
}

/// One trace of Tempo's search answer.
fn trace_json(found: &Found, spans_per_spanset: usize, shown: &[String]) -> Json {
    let trace = &found.trace;
    let spansets: Vec<Json> = found
        .spansets
        .iter()
        .map(|spanset| {
            let spans: Vec<Json> = spanset
                .spans
                .iter()
                .take(spans_per_spanset)
                .map(|&span| span_json(found, spanset, span, shown))
                .collect();
            let mut set = json!({ "spans": spans, "matched": spanset.spans.len() });
            if !spanset.attributes.is_empty() {
                set["attributes"] = Json::Array(key_values(&spanset.attributes));
            }
            set
        })
        .collect();
    let duration_ms = trace.duration_ns() / 1_000_000;
    json!({
        "traceID": trace.trace_id,
        "rootServiceName": trace.root_service_name().unwrap_or(MISSING_ROOT),
        "rootTraceName": trace.root_name().unwrap_or_default(),
        "startTimeUnixNano": trace.start_ns().to_string(),
        "durationMs": duration_ms,
        "spanSet": spansets.first().cloned().unwrap_or(Json::Null),
        "spanSets": spansets,
    })
}

/// Tempo's `/api/search` answer.
pub fn tempo_response(query: &Query, outcome: &SearchOutcome, request: &SearchRequest) -> Json {
    let shown = traceql::attribute_names(query);
    let traces: Vec<Json> =
        outcome.found.iter().map(|found| trace_json(found, request.spans_per_spanset, &shown)).collect();
    json!({
        "traces": traces,
        "metrics": {
            "inspectedTraces": outcome.inspected_traces,
            "inspectedSpans": outcome.inspected_spans.to_string(),
            "inspectedBytes": "0",
            "completedJobs": 1,
            "totalJobs": 1,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loki::params::parse_form;

    #[test]
    fn legacy_parameters_become_traceql() {
        let params =
            parse_form("tags=service.name%3Dapi%20name%3D%22GET%20%2F%22%20status.code%3Derror&minDuration=100ms");
        assert_eq!(
            legacy_query(&params).unwrap(),
            "{ .service.name = \"api\" && name = \"GET /\" && status = error && traceDuration >= 100000000ns }"
        );
        assert_eq!(legacy_query(&parse_form("")).unwrap(), "{}");
        assert!(legacy_query(&parse_form("tags=novalue")).is_err());
        assert!(legacy_query(&parse_form("tags=a%3D%22open")).is_err());
        assert!(legacy_query(&parse_form("tags=status%3Dbroken")).is_err());
        assert!(legacy_query(&parse_form("minDuration=soon")).is_err());
    }
}
