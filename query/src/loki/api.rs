//! The Loki HTTP API routes and their response shapes, as Grafana's Loki data source uses them.
//!
//! Every endpoint takes its parameters from the query string or, for POST, a form body.
//! Errors are plain text with a 4xx status for the query's faults (Grafana shows the text).

use std::sync::Arc;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Int64Type;
use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value as Json, json};

use super::eval::{self, LokiError, Parsed, QueryResult, Steps, Value};
use super::labels::{STREAM_LABELS, column_of, label_of, selector_condition, time_condition};
use super::params::{self, ParamLimits, Params, first, now_ns};
use super::pipeline::Labels;
use crate::engine::QueryEngine;
use crate::error::Error;
use crate::limits::{Api, RETRY_AFTER_SECS};

type Engine = Arc<QueryEngine>;

/// Routes `/loki/api/v1/…` (the WebSocket tail in [`super::tail`]) and `/ready`.
pub fn router(engine: Engine) -> Router {
    Router::new()
        .route("/loki/api/v1/query_range", get(query_range).post(query_range))
        .route("/loki/api/v1/query", get(query).post(query))
        .route("/loki/api/v1/labels", get(labels).post(labels))
        .route("/loki/api/v1/label/{name}/values", get(label_values).post(label_values))
        .route("/loki/api/v1/series", get(series).post(series))
        .route("/loki/api/v1/index/stats", get(index_stats).post(index_stats))
        .route("/loki/api/v1/index/volume", get(volume).post(volume))
        .route("/loki/api/v1/index/volume_range", get(volume_range).post(volume_range))
        .route("/loki/api/v1/status/buildinfo", get(build_info))
        .route("/loki/api/v1/tail", get(super::tail::handler))
        .route("/ready", get(|| async { "ready\n" }))
        .with_state(engine.clone())
        .merge(super::delete::router(engine))
}

/// Query string and form body together; a body over the limit is a 413.
async fn all_params(
    engine: &QueryEngine,
    query: Option<String>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Params, LokiError> {
    let body = crate::body::read(engine.config(), headers, body).await.map_err(|refusal| match refusal {
        crate::body::BodyRefusal::TooLarge(message) => LokiError::TooLarge(message),
        crate::body::BodyRefusal::Unreadable(message) => LokiError::BadQuery(message),
    })?;
    let mut params = params::parse_form(query.as_deref().unwrap_or(""));
    if !body.is_empty() {
        for (key, values) in params::parse_form(&String::from_utf8_lossy(&body)) {
            params.entry(key).or_default().extend(values);
        }
    }
    Ok(params)
}

/// Loki's limits on parameters, from `query:`.
pub(super) fn param_limits(engine: &QueryEngine) -> ParamLimits {
    ParamLimits::of(engine.config())
}

/// Runs one request of the Loki API on the query runtime, within its limits.
async fn run<F, Fut>(engine: &Engine, params: Result<Params, LokiError>, work: F) -> Response
where
    F: FnOnce(Engine, Params) -> Fut,
    Fut: Future<Output = Result<Response, LokiError>> + Send + 'static,
{
    let params = match params {
        Ok(params) => params,
        Err(error) => return error_response(error),
    };
    let text = match first(&params, "query") {
        Some(query) => query.to_string(),
        None => params.get("match[]").or_else(|| params.get("match")).map(|m| m.join(" ")).unwrap_or_default(),
    };
    let work = work(engine.clone(), params);
    match engine.run_request(Api::Loki, &text, async move { Ok(work.await) }).await {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => {
            // Limits the evaluation hit itself (those of the run are counted by the engine).
            if let Some(limit) = error.limit_name() {
                engine.limits().hit(Api::Loki, limit);
            }
            error_response(error)
        }
        Err(error) => error_response(LokiError::Engine(error)),
    }
}

/// Loki's error shape and codes: plain text; bad parameters and exceeded limits 400, a body
/// too large 413, a full queue or too many live tails 429 with `Retry-After`, timeouts 503,
/// Wake's faults 500.
pub(super) fn error_response(error: LokiError) -> Response {
    let status = match &error {
        LokiError::BadQuery(_) | LokiError::Limit { .. } => StatusCode::BAD_REQUEST,
        LokiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
        LokiError::Engine(engine_error) => match engine_error {
            Error::Timeout(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Overloaded { .. } | Error::TooManyTails { .. } => StatusCode::TOO_MANY_REQUESTS,
            _ if engine_error.limit_name().is_some() => StatusCode::BAD_REQUEST,
            _ => engine_error.status(),
        },
    };
    if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
        tracing::error!(%error, "loki API: internal error");
    }
    let content_type = (header::CONTENT_TYPE, "text/plain; charset=utf-8".to_string());
    if status == StatusCode::TOO_MANY_REQUESTS {
        let retry_after = (header::RETRY_AFTER, RETRY_AFTER_SECS.to_string());
        return (status, [content_type, retry_after], error.to_string()).into_response();
    }
    (status, [content_type], error.to_string()).into_response()
}

fn success(data: Json) -> Response {
    axum::Json(json!({ "status": "success", "data": data })).into_response()
}

fn labels_json(labels: &Labels) -> Json {
    Json::Object(labels.iter().map(|(k, v)| (k.clone(), Json::String(v.clone()))).collect())
}

/// Seconds as Loki writes them: an integer when whole.
fn seconds(ns: i64) -> Json {
    if ns % 1_000_000_000 == 0 { json!(ns / 1_000_000_000) } else { json!(ns as f64 / 1e9) }
}

/// Go's `strconv.FormatFloat(v, 'f', -1, 64)`, which Prometheus and Loki use for sample values.
pub fn format_value(value: f64) -> String {
    if value.is_nan() {
        "NaN".into()
    } else if value.is_infinite() {
        if value > 0.0 { "+Inf".into() } else { "-Inf".into() }
    } else {
        format!("{value}")
    }
}

fn required_query(params: &Params) -> Result<&str, LokiError> {
    first(params, "query").ok_or_else(|| LokiError::BadQuery("missing query parameter `query`".into()))
}

async fn query_range(
    State(engine): State<Engine>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let categorize = categorize_labels(&headers);
    run(&engine, all_params(&engine, query, &headers, body).await, move |engine, params| async move {
        run_range(&engine, &params, categorize).await
    })
    .await
}

/// Whether the client asked for Loki 3's categorized labels
/// (`X-Loki-Response-Encoding-Flags: categorize-labels`, as Grafana does): then each line
/// carries its structured metadata beside it instead of in its stream's labels.
fn categorize_labels(headers: &HeaderMap) -> bool {
    headers
        .get_all("x-loki-response-encoding-flags")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|flags| flags.split(',').any(|flag| flag.trim() == "categorize-labels"))
}

/// Parses the request's `query` within the depth limit.
fn parse_query(engine: &QueryEngine, text: &str) -> Result<Parsed, LokiError> {
    eval::parse(text, engine.config().max_query_depth)
}

/// Refuses a metric query whose range (`end - start` plus its longest range vector) is longer
/// than `max_query_length`, or whose offsets reach outside the times the store can hold.
fn check_extent(
    engine: &QueryEngine,
    metric: &logql::MetricQuery,
    start_ns: i64,
    end_ns: i64,
) -> Result<(), LokiError> {
    let (range_ns, offset_ns) = eval::extent(metric);
    let length_ns = (i128::from(end_ns) - i128::from(start_ns)).saturating_add(range_ns);
    param_limits(engine).check_length(length_ns)?;
    if i128::from(start_ns) - range_ns - offset_ns < i128::from(i64::MIN) {
        return Err(LokiError::BadQuery("the query's offset reaches before the times Wake can store".into()));
    }
    Ok(())
}

async fn run_range(engine: &QueryEngine, params: &Params, categorize: bool) -> Result<Response, LokiError> {
    let range = params::range_params(params, &param_limits(engine))?;
    let text = required_query(params)?;
    match parse_query(engine, text)? {
        Parsed::Log(log) => {
            param_limits(engine).check_length(i128::from(range.end_ns) - i128::from(range.start_ns))?;
            let streams =
                eval::log_query(engine, &log, range.start_ns, range.end_ns, range.limit, range.direction).await?;
            Ok(streams_response(QueryResult::Streams(streams), categorize))
        }
        Parsed::Metric(metric) => {
            check_extent(engine, &metric, range.start_ns, range.end_ns)?;
            let steps =
                Steps { start_ns: range.start_ns, end_ns: range.end_ns, step_ns: params::duration_ns(range.step) };
            let value = eval::metric_query(engine, &metric, steps).await?;
            Ok(matrix_response(value, steps))
        }
    }
}

/// Log streams in Loki's shape. Categorized, a line is `[ts, line, {"structuredMetadata": …}]`;
/// otherwise its structured metadata join its stream's labels, as Loki 3 answers clients that
/// do not ask for categories (one stream per distinct trace id, then).
fn streams_response(result: QueryResult, categorize: bool) -> Response {
    let QueryResult::Streams(streams) = result else { return success(json!({})) };
    let result: Vec<Json> = if categorize {
        streams
            .iter()
            .map(|stream| {
                let values: Vec<Json> = stream
                    .entries
                    .iter()
                    .map(|entry| {
                        let metadata = json!({ "structuredMetadata": labels_json(&entry.metadata) });
                        json!([entry.ts.to_string(), entry.line, metadata])
                    })
                    .collect();
                json!({ "stream": labels_json(&stream.labels), "values": values })
            })
            .collect()
    } else {
        let mut merged: std::collections::BTreeMap<Labels, Vec<Json>> = std::collections::BTreeMap::new();
        for stream in &streams {
            for entry in &stream.entries {
                let mut labels = stream.labels.clone();
                labels.extend(entry.metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
                merged.entry(labels).or_default().push(json!([entry.ts.to_string(), entry.line]));
            }
        }
        merged.iter().map(|(labels, values)| json!({ "stream": labels_json(labels), "values": values })).collect()
    };
    success(json!({ "resultType": "streams", "result": result, "stats": {} }))
}

fn matrix_response(value: Value, steps: Steps) -> Response {
    let result: Vec<Json> = match value {
        Value::Scalar(values) => {
            // A scalar over a range is one series without labels, as Loki returns it.
            let points: Vec<Json> =
                values.iter().enumerate().map(|(k, v)| json!([seconds(steps.at(k)), format_value(*v)])).collect();
            vec![json!({ "metric": {}, "values": points })]
        }
        Value::Vector(series) => series
            .iter()
            .map(|one| {
                let points: Vec<Json> = one
                    .points
                    .iter()
                    .enumerate()
                    .filter_map(|(k, v)| v.map(|v| json!([seconds(steps.at(k)), format_value(v)])))
                    .collect();
                json!({ "metric": labels_json(&one.labels), "values": points })
            })
            .collect(),
    };
    success(json!({ "resultType": "matrix", "result": result, "stats": {} }))
}

async fn query(State(engine): State<Engine>, RawQuery(query): RawQuery, headers: HeaderMap, body: Body) -> Response {
    run(&engine, all_params(&engine, query, &headers, body).await, |engine, params| async move {
        run_instant(&engine, &params).await
    })
    .await
}

async fn run_instant(engine: &QueryEngine, params: &Params) -> Result<Response, LokiError> {
    let time = first(params, "time").map(params::parse_time).transpose()?.unwrap_or_else(now_ns);
    let text = required_query(params)?;
    match parse_query(engine, text)? {
        Parsed::Log(_) => Err(LokiError::BadQuery(
            "log queries are not supported as an instant query type, please change your query to a range query type"
                .into(),
        )),
        Parsed::Metric(metric) => {
            check_extent(engine, &metric, time, time)?;
            let steps = Steps { start_ns: time, end_ns: time, step_ns: 1 };
            let result = match eval::metric_query(engine, &metric, steps).await? {
                Value::Scalar(values) => {
                    let value = values.first().copied().unwrap_or(f64::NAN);
                    json!({ "resultType": "scalar", "result": [seconds(time), format_value(value)], "stats": {} })
                }
                Value::Vector(series) => {
                    let result: Vec<Json> = series
                        .iter()
                        .filter_map(|one| {
                            one.points[0].map(|v| {
                                json!({ "metric": labels_json(&one.labels), "value": [seconds(time), format_value(v)] })
                            })
                        })
                        .collect();
                    json!({ "resultType": "vector", "result": result, "stats": {} })
                }
            };
            Ok(success(result))
        }
    }
}

/// The time range of a metadata call, and its optional `query` selector as SQL.
fn metadata_scope(engine: &QueryEngine, params: &Params) -> Result<String, LokiError> {
    let range = params::range_params(params, &param_limits(engine))?;
    let mut condition = time_condition(range.start_ns, range.end_ns);
    if let Some(text) = first(params, "query") {
        let selector = match parse_query(engine, text)? {
            Parsed::Log(log) => log.selector,
            Parsed::Metric(_) => return Err(LokiError::BadQuery("expected a stream selector".into())),
        };
        condition = format!("{condition} AND {}", selector_condition(&selector)?);
    }
    Ok(condition)
}

async fn labels(State(engine): State<Engine>, RawQuery(query): RawQuery, headers: HeaderMap, body: Body) -> Response {
    run(&engine, all_params(&engine, query, &headers, body).await, |engine, params| async move {
        let scope = metadata_scope(&engine, &params)?;
        let counts: Vec<String> = STREAM_LABELS.iter().map(|(_, column)| format!("count({column})")).collect();
        let output = engine.sql(&format!("SELECT {} FROM logs WHERE {scope}", counts.join(", "))).await?;
        let mut names = Vec::new();
        if let Some(batch) = output.batches.first() {
            for (i, (label, _)) in STREAM_LABELS.iter().enumerate() {
                if batch.num_rows() > 0 && batch.column(i).as_primitive::<Int64Type>().value(0) > 0 {
                    names.push(*label);
                }
            }
        }
        names.sort_unstable();
        Ok::<_, LokiError>(success(json!(names)))
    })
    .await
}

async fn label_values(
    State(engine): State<Engine>,
    Path(name): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    run(&engine, all_params(&engine, query, &headers, body).await, |engine, params| async move {
        let scope = metadata_scope(&engine, &params)?;
        let Some(column) = column_of(&name) else { return Ok(success(json!([]))) };
        let output = engine
            .sql(&format!(
                "SELECT DISTINCT {column} FROM logs WHERE {scope} AND {column} IS NOT NULL ORDER BY 1 LIMIT 10000"
            ))
            .await?;
        let mut values = Vec::new();
        for batch in &output.batches {
            let column = batch.column(0).as_string::<i32>();
            values.extend((0..batch.num_rows()).map(|row| column.value(row).to_string()));
        }
        Ok::<_, LokiError>(success(json!(values)))
    })
    .await
}

/// Label sets of the distinct streams that `condition` selects.
async fn distinct_streams(engine: &QueryEngine, condition: &str) -> Result<Vec<Labels>, LokiError> {
    let columns: Vec<&str> = STREAM_LABELS.iter().map(|(_, c)| *c).collect();
    let output = engine.sql(&format!("SELECT DISTINCT {} FROM logs WHERE {condition}", columns.join(", "))).await?;
    let mut streams = Vec::new();
    for batch in &output.batches {
        for row in 0..batch.num_rows() {
            let mut labels = Labels::new();
            for (i, (label, _)) in STREAM_LABELS.iter().enumerate() {
                let column = batch.column(i).as_string::<i32>();
                if column.is_valid(row) {
                    labels.insert((*label).to_string(), column.value(row).to_string());
                }
            }
            streams.push(labels);
        }
    }
    streams.sort();
    Ok(streams)
}

async fn series(State(engine): State<Engine>, RawQuery(query): RawQuery, headers: HeaderMap, body: Body) -> Response {
    run(&engine, all_params(&engine, query, &headers, body).await, |engine, params| async move {
        let range = params::range_params(&params, &param_limits(&engine))?;
        let matchers = params.get("match[]").or_else(|| params.get("match")).cloned().unwrap_or_default();
        if matchers.is_empty() {
            return Err(LokiError::BadQuery("at least one match[] selector is required".into()));
        }
        let mut selectors = Vec::new();
        for text in &matchers {
            let selector = match parse_query(&engine, text)? {
                Parsed::Log(log) if log.pipeline.is_empty() => log.selector,
                _ => return Err(LokiError::BadQuery(format!("{text:?} is not a stream selector"))),
            };
            selectors.push(format!("({})", selector_condition(&selector)?));
        }
        let condition = format!("{} AND ({})", time_condition(range.start_ns, range.end_ns), selectors.join(" OR "));
        let streams = distinct_streams(&engine, &condition).await?;
        Ok(success(Json::Array(streams.iter().map(labels_json).collect())))
    })
    .await
}

async fn index_stats(
    State(engine): State<Engine>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    run(&engine, all_params(&engine, query, &headers, body).await, |engine, params| async move {
        let scope = metadata_scope(&engine, &params)?;
        let streams = distinct_streams(&engine, &scope).await?.len();
        let output = engine
            .sql(&format!(
                "SELECT count(*), coalesce(sum(octet_length(coalesce(body, ''))), 0) FROM logs WHERE {scope}"
            ))
            .await?;
        let (mut entries, mut bytes) = (0, 0);
        if let Some(batch) = output.batches.first().filter(|b| b.num_rows() > 0) {
            entries = batch.column(0).as_primitive::<Int64Type>().value(0);
            bytes = batch.column(1).as_primitive::<Int64Type>().value(0);
        }
        // Wake has no chunks; one per stream is the closest meaning.
        Ok::<_, LokiError>(
            axum::Json(json!({ "streams": streams, "chunks": streams, "entries": entries, "bytes": bytes }))
                .into_response(),
        )
    })
    .await
}

/// The columns a volume query groups by: `targetLabels`, else the selector's labels.
fn volume_columns(params: &Params, selector: &logql::StreamSelector) -> Vec<&'static str> {
    let names: Vec<String> = match first(params, "targetLabels") {
        Some(targets) => targets.split(',').map(|t| t.trim().to_string()).filter(|t| !t.is_empty()).collect(),
        None => selector.matchers.iter().map(|m| m.name.clone()).collect(),
    };
    let mut columns: Vec<&'static str> = names.iter().filter_map(|n| column_of(n)).collect();
    columns.dedup();
    columns
}

async fn volume_query(engine: &QueryEngine, params: &Params, bucketed: bool) -> Result<Response, LokiError> {
    let range = params::range_params(params, &param_limits(engine))?;
    let selector = match parse_query(engine, required_query(params)?)? {
        Parsed::Log(log) => log.selector,
        Parsed::Metric(_) => return Err(LokiError::BadQuery("expected a stream selector".into())),
    };
    let columns = volume_columns(params, &selector);
    let condition = format!("{} AND {}", time_condition(range.start_ns, range.end_ns), selector_condition(&selector)?);
    let step_ns = params::duration_ns(range.step);
    let mut select: Vec<String> = columns.iter().map(|c| c.to_string()).collect();
    let mut group = select.clone();
    if bucketed {
        select.push(format!("(CAST(timestamp AS BIGINT) - ({})) / {step_ns} AS bucket", range.start_ns));
        group.push("bucket".into());
    }
    select.push("sum(octet_length(coalesce(body, ''))) AS bytes".into());
    let group_by = if group.is_empty() { String::new() } else { format!(" GROUP BY {}", group.join(", ")) };
    let limit = if bucketed { String::new() } else { format!(" ORDER BY bytes DESC LIMIT {}", range.limit.max(1)) };
    let output =
        engine.sql(&format!("SELECT {} FROM logs WHERE {condition}{group_by}{limit}", select.join(", "))).await?;
    let mut by_labels: std::collections::BTreeMap<Labels, Vec<(i64, i64)>> = Default::default();
    for batch in &output.batches {
        let bytes = batch.column(batch.num_columns() - 1).as_primitive::<Int64Type>();
        for row in 0..batch.num_rows() {
            let mut labels = Labels::new();
            for (i, column) in columns.iter().enumerate() {
                let values = batch.column(i).as_string::<i32>();
                if values.is_valid(row) {
                    labels.insert(label_of(column).unwrap_or(column).to_string(), values.value(row).to_string());
                }
            }
            let at = if bucketed {
                range.start_ns + batch.column(columns.len()).as_primitive::<Int64Type>().value(row) * step_ns
            } else {
                range.end_ns
            };
            by_labels.entry(labels).or_default().push((at, bytes.value(row)));
        }
    }
    let result: Vec<Json> = by_labels
        .into_iter()
        .map(|(labels, mut points)| {
            points.sort_unstable();
            if bucketed {
                let values: Vec<Json> = points.iter().map(|(at, b)| json!([seconds(*at), b.to_string()])).collect();
                json!({ "metric": labels_json(&labels), "values": values })
            } else {
                let total: i64 = points.iter().map(|(_, b)| b).sum();
                json!({ "metric": labels_json(&labels), "value": [seconds(range.end_ns), total.to_string()] })
            }
        })
        .collect();
    let kind = if bucketed { "matrix" } else { "vector" };
    Ok(success(json!({ "resultType": kind, "result": result, "stats": {} })))
}

async fn volume(State(engine): State<Engine>, RawQuery(query): RawQuery, headers: HeaderMap, body: Body) -> Response {
    run(&engine, all_params(&engine, query, &headers, body).await, |engine, params| async move {
        volume_query(&engine, &params, false).await
    })
    .await
}

async fn volume_range(
    State(engine): State<Engine>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    run(&engine, all_params(&engine, query, &headers, body).await, |engine, params| async move {
        volume_query(&engine, &params, true).await
    })
    .await
}

async fn build_info() -> Response {
    axum::Json(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "revision": "",
        "branch": "",
        "buildUser": "",
        "buildDate": "",
        "goVersion": "",
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_print_like_go() {
        assert_eq!(format_value(2.0), "2");
        assert_eq!(format_value(0.25), "0.25");
        assert_eq!(format_value(f64::INFINITY), "+Inf");
        assert_eq!(format_value(f64::NAN), "NaN");
        assert_eq!(seconds(1_500_000_000), json!(1.5));
        assert_eq!(seconds(2_000_000_000), json!(2));
    }
}
