//! Jaeger's query API under `/jaeger/api/`, for the Jaeger UI and Grafana's Jaeger data source:
//! services, operations, trace search, trace by id and the service dependency graph, over the
//! same `spans` table as Tempo's API. Answers and errors use Jaeger's envelope
//! (`{"data", "total", "limit", "offset", "errors"}`).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value as Json, json};

use super::jaeger::{self, JaegerError, TraceQuery};
use super::load::{self, TimeRange};
use super::tags::strings;
use super::{TracesError, params as trace_params};
use crate::engine::QueryEngine;
use crate::limits::Api;
use crate::loki::labels::quote;

type Engine = Arc<QueryEngine>;

/// How far back the dependency graph reaches without `lookback` (Jaeger UI's default: a day).
const DEFAULT_DEPENDENCY_LOOKBACK_MS: i64 = 24 * 3600 * 1000;

pub(super) fn router(engine: Engine) -> Router {
    Router::new()
        .route("/jaeger/api/services", get(services))
        .route("/jaeger/api/services/{service}/operations", get(service_operations))
        .route("/jaeger/api/operations", get(operations))
        .route("/jaeger/api/traces", get(find_traces))
        .route("/jaeger/api/traces/{id}", get(trace_by_id))
        .route("/jaeger/api/dependencies", get(dependencies))
        .with_state(engine)
}

fn pairs(query: Option<String>) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_deref().unwrap_or("").as_bytes()).into_owned().collect()
}

fn error_response(status: StatusCode, message: &str) -> Response {
    if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
        tracing::error!(message, "jaeger API: internal error");
    }
    let mut response = (status, axum::Json(jaeger::error_envelope(status.as_u16(), message))).into_response();
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(axum::http::header::RETRY_AFTER, axum::http::HeaderValue::from(crate::limits::RETRY_AFTER_SECS));
    }
    response
}

impl From<JaegerError> for TracesError {
    fn from(error: JaegerError) -> Self {
        TracesError::BadRequest(error.to_string())
    }
}

/// Runs one request within the trace API's admission limits; errors in Jaeger's envelope.
async fn run<F, Fut>(engine: &Engine, text: &str, work: F) -> Response
where
    F: FnOnce(Engine) -> Fut,
    Fut: Future<Output = Result<Json, TracesError>> + Send + 'static,
{
    let work = work(engine.clone());
    match engine.run_request(Api::Traces, text, async move { Ok(work.await) }).await {
        Ok(Ok(data)) => axum::Json(jaeger::envelope(data)).into_response(),
        Ok(Err(error)) => {
            if let Some(limit) = error.limit_name() {
                engine.limits().hit(Api::Traces, limit);
            }
            error_response(error.status(), &error.to_string())
        }
        Err(error) => error_response(error.status(), &error.to_string()),
    }
}

async fn services(State(engine): State<Engine>) -> Response {
    run(&engine, "services", |engine| async move {
        let max = engine.config().max_tag_values;
        let sql =
            format!("SELECT DISTINCT service_name FROM spans WHERE service_name IS NOT NULL ORDER BY 1 LIMIT {max}");
        Ok(json!(strings(&engine, &sql).await?))
    })
    .await
}

async fn service_operations(State(engine): State<Engine>, Path(service): Path<String>) -> Response {
    run(&engine, &service.clone(), move |engine| async move {
        let max = engine.config().max_tag_values;
        let sql =
            format!("SELECT DISTINCT name FROM spans WHERE service_name = {} ORDER BY 1 LIMIT {max}", quote(&service));
        Ok(json!(strings(&engine, &sql).await?))
    })
    .await
}

async fn operations(State(engine): State<Engine>, RawQuery(query): RawQuery) -> Response {
    let params = pairs(query);
    run(&engine, "operations", move |engine| async move {
        let value = |key: &str| params.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone()).filter(|v| !v.is_empty());
        let service =
            value("service").ok_or_else(|| TracesError::BadRequest("parameter 'service' is required".into()))?;
        let mut condition = format!("service_name = {}", quote(&service));
        if let Some(kind) = value("spanKind") {
            condition.push_str(&format!(" AND kind = {}", quote(&kind)));
        }
        let max = engine.config().max_tag_values;
        let sql = format!("SELECT DISTINCT name, kind FROM spans WHERE {condition} ORDER BY 1, 2 LIMIT {max}");
        let rows = engine
            .sql_each(
                &sql,
                |_| Ok(Vec::new()),
                |rows, batch| {
                    use arrow::array::AsArray;
                    let names = batch.column(0).as_string::<i32>();
                    let kinds = batch.column(1).as_string::<i32>();
                    for (name, kind) in names.iter().zip(kinds.iter()) {
                        let kind = kind.filter(|k| *k != "unspecified").unwrap_or_default();
                        rows.push(json!({ "name": name.unwrap_or_default(), "spanKind": kind }));
                    }
                    Ok(true)
                },
            )
            .await?;
        Ok(Json::Array(rows))
    })
    .await
}

/// The SQL condition a span of a matching trace satisfies (exactly the span-level filters).
fn candidate_condition(query: &TraceQuery) -> String {
    let mut conditions = Vec::new();
    if let Some(service) = &query.service {
        conditions.push(format!("service_name = {}", quote(service)));
    }
    if let Some(operation) = &query.operation {
        conditions.push(format!("name = {}", quote(operation)));
    }
    if let Some(kind) = &query.span_kind {
        conditions.push(format!("kind = {}", quote(kind)));
    }
    if let Some(min) = query.min_duration_ns {
        conditions.push(format!("duration_ns >= {min}"));
    }
    if let Some(max) = query.max_duration_ns {
        conditions.push(format!("duration_ns <= {max}"));
    }
    if conditions.is_empty() { "TRUE".into() } else { conditions.join(" AND ") }
}

async fn find_traces(State(engine): State<Engine>, RawQuery(query): RawQuery) -> Response {
    let params = pairs(query);
    run(&engine, "traces", move |engine| async move {
        let config = engine.config();
        let query =
            jaeger::parse_trace_query(&params, crate::loki::params::now_ns(), config.max_entries_limit_per_query)?;
        let max_spans = config.max_spans_per_trace;
        if !query.trace_ids.is_empty() {
            let traces = load::load_traces(&engine, &query.trace_ids, None, max_spans).await?;
            return Ok(Json::Array(traces.iter().map(jaeger::trace_json).collect()));
        }
        let range = TimeRange { start_ns: query.start_ns, end_ns: query.end_ns };
        let mut candidates =
            load::RecentCandidates::new(Some(candidate_condition(&query)), range, config.max_search_traces_inspected);
        let mut found = Vec::new();
        loop {
            let ids = candidates.next(&engine, load::IDS_PER_LOAD).await?;
            if ids.is_empty() {
                break;
            }
            let mut traces = load::load_traces(&engine, &ids, None, max_spans).await?;
            // Most recent first, as the candidates are.
            traces.sort_by_key(|trace| std::cmp::Reverse(trace.start_ns()));
            for trace in traces.iter().filter(|trace| jaeger::matches(&query, trace)) {
                found.push(jaeger::trace_json(trace));
                if found.len() >= query.limit {
                    return Ok(Json::Array(found));
                }
            }
        }
        Ok(Json::Array(found))
    })
    .await
}

async fn trace_by_id(State(engine): State<Engine>, Path(id): Path<String>) -> Response {
    run(&engine, &id.clone(), move |engine| async move {
        let trace_id = trace_params::trace_id(&id)?;
        let max_spans = engine.config().max_spans_per_trace;
        let traces = load::load_traces(&engine, std::slice::from_ref(&trace_id), None, max_spans).await?;
        if traces.is_empty() {
            return Err(TracesError::NotFound);
        }
        Ok(Json::Array(traces.iter().map(jaeger::trace_json).collect()))
    })
    .await
}

/// Calls between services: a span whose parent span belongs to another service, counted per
/// (parent service, child service) over `lookback` before `endTs` (milliseconds).
async fn dependencies(State(engine): State<Engine>, RawQuery(query): RawQuery) -> Response {
    let params = pairs(query);
    run(&engine, "dependencies", move |engine| async move {
        let number = |key: &str| -> Result<Option<i64>, TracesError> {
            params
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| {
                    v.trim().parse::<i64>().map_err(|_| {
                        TracesError::BadRequest(format!("unable to parse param '{key}': {v:?} is not a number"))
                    })
                })
                .transpose()
        };
        let end_ms = number("endTs")?.unwrap_or_else(|| crate::loki::params::now_ns() / 1_000_000);
        let lookback_ms = number("lookback")?.unwrap_or(DEFAULT_DEPENDENCY_LOOKBACK_MS);
        if lookback_ms < 0 || end_ms < 0 {
            return Err(TracesError::BadRequest("endTs and lookback must not be negative".into()));
        }
        let to_ns =
            |ms: i64| ms.checked_mul(1_000_000).ok_or_else(|| TracesError::BadRequest("endTs is out of range".into()));
        let end_ns = to_ns(end_ms)?;
        let start_ns = end_ns.saturating_sub(to_ns(lookback_ms)?);
        let window = |table: &str| {
            format!(
                "{table}.start_time >= '{}' AND {table}.start_time < '{}'",
                crate::json::format_timestamp_ns(start_ns, true),
                crate::json::format_timestamp_ns(end_ns, true)
            )
        };
        let sql = format!(
            "SELECT parent.service_name AS parent, child.service_name AS child, count(*) AS calls \
             FROM spans child JOIN spans parent \
               ON child.trace_id = parent.trace_id AND child.parent_span_id = parent.span_id \
             WHERE {} AND {} AND child.service_name <> parent.service_name \
             GROUP BY 1, 2 ORDER BY 1, 2 LIMIT {}",
            window("child"),
            window("parent"),
            engine.config().max_tag_values
        );
        let rows = engine
            .sql_each(
                &sql,
                |_| Ok(Vec::new()),
                |rows, batch| {
                    use arrow::array::AsArray;
                    use arrow::datatypes::Int64Type;
                    let parents = batch.column(0).as_string::<i32>();
                    let children = batch.column(1).as_string::<i32>();
                    let calls = batch.column(2).as_primitive::<Int64Type>();
                    for i in 0..batch.num_rows() {
                        rows.push(json!({
                            "parent": parents.value(i),
                            "child": children.value(i),
                            "callCount": calls.value(i),
                        }));
                    }
                    Ok(true)
                },
            )
            .await?;
        Ok(Json::Array(rows))
    })
    .await
}
