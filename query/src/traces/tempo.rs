//! Tempo's HTTP API on the query port, in Tempo's shapes, as Grafana's Tempo data source calls
//! it: trace by id (v1 and v2, JSON or protobuf), search (TraceQL in `q`, or the older `tags`,
//! `minDuration`, `maxDuration`), tag names and values (v1 and v2), `/api/echo` and
//! `/api/status/buildinfo`.
//!
//! Errors are plain text as Tempo's: 400 for bad parameters and TraceQL that does not parse,
//! 404 for an unknown trace, 422 for a trace over `query.max_spans_per_trace`, 429 with
//! `Retry-After` when the trace queue is full, 503 on timeout.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value as Json, json};

use super::load::{self, TimeRange};
use super::query_range;
use super::search::{self, SearchRequest};
use super::tags::{self, INTRINSIC_TAGS, Scope};
use super::{TracesError, otlp, params, traceql};
use crate::engine::QueryEngine;
use crate::limits::{Api, RETRY_AFTER_SECS};
use crate::loki::params::{Params, first, parse_form};

type Engine = Arc<QueryEngine>;

/// How far back a search or tag lookup reaches without `start`/`end`.
const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);
/// Tempo's defaults: 20 traces per search, 3 spans per spanset.
const DEFAULT_LIMIT: usize = 20;
const DEFAULT_SPSS: usize = 3;

pub(super) fn router(engine: Engine) -> Router {
    Router::new()
        .route("/api/echo", get(|| async { "echo" }))
        .route("/api/status/buildinfo", get(build_info))
        .route("/api/traces/{id}", get(trace_v1))
        .route("/api/v2/traces/{id}", get(trace_v2))
        .route("/api/search", get(search_traces))
        .route("/api/search/tags", get(tags_v1))
        .route("/api/v2/search/tags", get(tags_v2))
        .route("/api/search/tag/{tag}/values", get(values_v1))
        .route("/api/v2/search/tag/{tag}/values", get(values_v2))
        .route("/api/metrics/query_range", get(metrics_range))
        .route("/api/metrics/query", get(metrics_instant))
        .with_state(engine)
}

async fn build_info() -> Response {
    axum::Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "revision": "",
        "branch": "",
        "buildDate": "",
        "buildUser": "",
        "goVersion": "",
    }))
    .into_response()
}

/// Runs one request on the query runtime within the trace API's admission limits.
async fn run<F, Fut>(engine: &Engine, text: &str, work: F) -> Response
where
    F: FnOnce(Engine) -> Fut,
    Fut: Future<Output = Result<Response, TracesError>> + Send + 'static,
{
    let work = work(engine.clone());
    match engine.run_request(Api::Traces, text, async move { Ok(work.await) }).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            if let Some(limit) = error.limit_name() {
                engine.limits().hit(Api::Traces, limit);
            }
            error_response(&error)
        }
        Err(error) => error_response(&TracesError::Engine(error)),
    }
}

/// Tempo's error shape: plain text with the status.
pub(super) fn error_response(error: &TracesError) -> Response {
    let status = error.status();
    if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
        tracing::error!(%error, "trace API: internal error");
    }
    let content_type = (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_string());
    if status == StatusCode::TOO_MANY_REQUESTS {
        let retry_after = (header::RETRY_AFTER, RETRY_AFTER_SECS.to_string());
        return (status, [content_type, retry_after], error.to_string()).into_response();
    }
    (status, [content_type], error.to_string()).into_response()
}

fn wants_protobuf(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|accept| accept.split(',').any(|kind| kind.trim().starts_with("application/protobuf")))
}

async fn trace_v1(
    State(engine): State<Engine>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    trace_by_id(engine, id, headers, query, false).await
}

async fn trace_v2(
    State(engine): State<Engine>,
    Path(id): Path<String>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    trace_by_id(engine, id, headers, query, true).await
}

async fn trace_by_id(engine: Engine, id: String, headers: HeaderMap, query: Option<String>, v2: bool) -> Response {
    let protobuf = wants_protobuf(&headers);
    let params = parse_form(query.as_deref().unwrap_or(""));
    let text = id.clone();
    run(&engine, &text, move |engine| async move {
        let trace_id = params::trace_id(&id)?;
        let range = params::optional_range(&params)?;
        let max_spans = engine.config().max_spans_per_trace;
        let trace = load::load_traces(&engine, std::slice::from_ref(&trace_id), range, max_spans)
            .await?
            .pop()
            .ok_or(TracesError::NotFound)?;
        Ok(match (protobuf, v2) {
            (true, false) => protobuf_response(otlp::v1_protobuf(&trace)),
            (true, true) => protobuf_response(otlp::v2_protobuf(&trace)),
            (false, false) => axum::Json(otlp::v1_json(&trace)).into_response(),
            (false, true) => axum::Json(otlp::v2_json(&trace)).into_response(),
        })
    })
    .await
}

fn protobuf_response(body: Vec<u8>) -> Response {
    ([(header::CONTENT_TYPE, "application/protobuf")], body).into_response()
}

fn search_range(engine: &QueryEngine, params: &Params) -> Result<TimeRange, TracesError> {
    params::range(params, DEFAULT_WINDOW, engine.config().max_query_length())
}

async fn search_traces(State(engine): State<Engine>, RawQuery(query): RawQuery) -> Response {
    let params = parse_form(query.as_deref().unwrap_or(""));
    let text = first(&params, "q").unwrap_or_default().to_string();
    run(&engine, &text.clone(), move |engine| async move {
        let config = engine.config();
        let query_text = if text.trim().is_empty() { search::legacy_query(&params)? } else { text };
        let query = traceql::parse(&query_text, config.max_query_depth)
            .map_err(|e| TracesError::BadRequest(format!("invalid TraceQL query: {e}")))?;
        if traceql::is_metrics(&query) {
            return Err(TracesError::BadRequest(
                "invalid TraceQL query: metrics queries are answered by /api/metrics/query_range, not /api/search"
                    .into(),
            ));
        }
        let request = SearchRequest {
            range: search_range(&engine, &params)?,
            limit: params::count(
                &params,
                "limit",
                DEFAULT_LIMIT,
                config.max_entries_limit_per_query,
                "max_entries_limit_per_query",
            )?,
            spans_per_spanset: params::count(
                &params,
                "spss",
                DEFAULT_SPSS,
                config.max_spans_per_trace,
                "max_spans_per_trace",
            )?,
        };
        let outcome = search::search(&engine, &query, &request).await?;
        Ok(axum::Json(search::tempo_response(&query, &outcome, &request)).into_response())
    })
    .await
}

async fn metrics_range(State(engine): State<Engine>, RawQuery(query): RawQuery) -> Response {
    metrics_query(engine, query, false).await
}

async fn metrics_instant(State(engine): State<Engine>, RawQuery(query): RawQuery) -> Response {
    metrics_query(engine, query, true).await
}

/// A TraceQL metrics query: `q` (or `query`, as Grafana's Prometheus-style callers send it),
/// `start`/`end`/`since` as for search, and for ranges `step` (seconds or a duration; by
/// default Tempo's ~240 points).
async fn metrics_query(engine: Engine, query: Option<String>, instant: bool) -> Response {
    let params = parse_form(query.as_deref().unwrap_or(""));
    let text = first(&params, "q").or_else(|| first(&params, "query")).unwrap_or_default().to_string();
    run(&engine, &text.clone(), move |engine| async move {
        let config = engine.config();
        let query = traceql::parse(&text, config.max_query_depth)
            .map_err(|e| TracesError::BadRequest(format!("invalid TraceQL query: {e}")))?;
        if !traceql::is_metrics(&query) {
            return Err(TracesError::BadRequest(
                "invalid TraceQL query: a metrics query ends in a metrics function, e.g. { } | rate()".into(),
            ));
        }
        let range = search_range(&engine, &params)?;
        let request = if instant {
            traceql::metrics::RangeRequest::instant(range.start_ns, range.end_ns)
        } else {
            let step_ns = match params::duration_ns(&params, "step")? {
                Some(step) if step > 0 => step,
                Some(_) => return Err(TracesError::BadRequest("invalid step: it must be positive".into())),
                None => query_range::default_step_ns(range.start_ns, range.end_ns),
            };
            traceql::metrics::RangeRequest { start_ns: range.start_ns, end_ns: range.end_ns, step_ns }
        };
        let outcome = query_range::query_range(&engine, &query, request).await?;
        Ok(axum::Json(query_range::response(&outcome, instant, config.max_search_traces_inspected)).into_response())
    })
    .await
}

/// The prefilter of a `q` filter on tag calls. Grafana sends the query being typed, which may
/// not parse yet: then it filters nothing, as in Tempo, rather than failing the autocomplete.
fn tag_filter(engine: &QueryEngine, params: &Params) -> Option<String> {
    let text = first(params, "q")?;
    traceql::parse(text, engine.config().max_query_depth).ok().and_then(|query| traceql::sql_prefilter(&query))
}

/// The scopes a `scope=` parameter asks for, in Tempo's order.
fn scopes(params: &Params) -> Result<Vec<&'static str>, TracesError> {
    Ok(match first(params, "scope") {
        None | Some("all" | "none") => vec!["resource", "span", "intrinsic"],
        Some("resource") => vec!["resource"],
        Some("span") => vec!["span"],
        Some("intrinsic") => vec!["intrinsic"],
        // Event, link and instrumentation attributes are not indexed as tags: none to list.
        Some("event" | "link" | "instrumentation") => vec![],
        Some(other) => {
            return Err(TracesError::BadRequest(format!(
                "invalid scope {:?}: expected resource, span, intrinsic, event, link, instrumentation or all",
                crate::limits::truncated(other, 64)
            )));
        }
    })
}

fn tag_limit(engine: &QueryEngine, params: &Params) -> Result<usize, TracesError> {
    let max = engine.config().max_tag_values;
    params::count(params, "limit", max, max, "max_tag_values")
}

async fn tag_names_of(engine: &QueryEngine, params: &Params, scope: &str) -> Result<Vec<String>, TracesError> {
    let range = search_range(engine, params)?;
    let limit = tag_limit(engine, params)?;
    let prefilter = tag_filter(engine, params);
    match scope {
        "intrinsic" => Ok(INTRINSIC_TAGS.iter().map(|t| (*t).to_string()).collect()),
        "resource" => tags::tag_names(engine, Scope::Resource, range, prefilter.as_deref(), limit).await,
        _ => tags::tag_names(engine, Scope::Span, range, prefilter.as_deref(), limit).await,
    }
}

async fn tags_v1(State(engine): State<Engine>, RawQuery(query): RawQuery) -> Response {
    let params = parse_form(query.as_deref().unwrap_or(""));
    run(&engine, "tags", move |engine| async move {
        let mut names = Vec::new();
        for scope in scopes(&params)? {
            // v1 lists attribute names only, unless intrinsics are asked for by name.
            if scope != "intrinsic" || first(&params, "scope") == Some("intrinsic") {
                names.extend(tag_names_of(&engine, &params, scope).await?);
            }
        }
        names.sort();
        names.dedup();
        Ok(axum::Json(json!({ "tagNames": names, "metrics": {} })).into_response())
    })
    .await
}

async fn tags_v2(State(engine): State<Engine>, RawQuery(query): RawQuery) -> Response {
    let params = parse_form(query.as_deref().unwrap_or(""));
    run(&engine, "tags", move |engine| async move {
        let mut listed = Vec::new();
        for scope in scopes(&params)? {
            listed.push(json!({ "name": scope, "tags": tag_names_of(&engine, &params, scope).await? }));
        }
        Ok(axum::Json(json!({ "scopes": listed, "metrics": {} })).into_response())
    })
    .await
}

async fn values_of(engine: &QueryEngine, tag: &str, params: &Params, v2: bool) -> Result<Json, TracesError> {
    let (expressions, keyword) = tags::parse_tag(tag, v2)?;
    let range = search_range(engine, params)?;
    let limit = tag_limit(engine, params)?;
    let prefilter = tag_filter(engine, params);
    let values = tags::tag_values(engine, &expressions, range, prefilter.as_deref(), limit).await?;
    Ok(if v2 {
        json!({ "tagValues": values.iter().map(|v| tags::typed_value(v, keyword)).collect::<Vec<_>>(), "metrics": {} })
    } else {
        json!({ "tagValues": values, "metrics": {} })
    })
}

async fn values_v1(State(engine): State<Engine>, Path(tag): Path<String>, RawQuery(query): RawQuery) -> Response {
    let params = parse_form(query.as_deref().unwrap_or(""));
    run(&engine, &tag.clone(), move |engine| async move {
        Ok(axum::Json(values_of(&engine, &tag, &params, false).await?).into_response())
    })
    .await
}

async fn values_v2(State(engine): State<Engine>, Path(tag): Path<String>, RawQuery(query): RawQuery) -> Response {
    let params = parse_form(query.as_deref().unwrap_or(""));
    run(&engine, &tag.clone(), move |engine| async move {
        Ok(axum::Json(values_of(&engine, &tag, &params, true).await?).into_response())
    })
    .await
}
