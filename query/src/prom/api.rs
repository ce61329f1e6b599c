//! The Prometheus HTTP API (`/api/v1/…`) as Grafana's Prometheus data source, `promtool` and
//! other Prometheus clients use it, with Prometheus's response and error shapes.
//!
//! Every endpoint takes its parameters from the query string and, for POST, a form body.
//! Times are Unix seconds (with a fraction) or RFC 3339; durations are Prometheus durations
//! (`5m`) or seconds. Errors are `{"status":"error","errorType":…,"error":…}` with 400
//! (`bad_data`), 422 (`execution`), 503 (`timeout`) or 500 (`internal`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use promql_parser::label::Matcher;
use promql_parser::parser::Expr;
use serde::Serialize;
use serde::ser::{SerializeMap, SerializeTuple, Serializer};
use serde_json::{Value as Json, json};

use super::eval::{self, EvalLimits, PromError, QueryValue, Sample, Steps};
use super::format_value;
use super::naming::{Labels, METRIC_NAME_LABEL};
use super::select::StoreSource;
use crate::engine::QueryEngine;
use crate::limits::{Api, RETRY_AFTER_SECS};
use crate::loki::params::{self, MAX_SECONDS, Params, first};

/// Prometheus refuses range queries with more points per series than this.
const MAX_POINTS_PER_SERIES: i128 = 11_000;
/// The bounds used when a request gives no time range ("all time", within what the store's
/// timestamps can represent).
const MIN_TIME_MS: i64 = 0;
const MAX_TIME_MS: i64 = 9_000_000_000_000;
/// The times the store can represent, in ms (nanoseconds in an `i64`).
const STORE_MIN_MS: i64 = -9_223_372_036_000;
const STORE_MAX_MS: i64 = 9_223_372_036_000;

#[derive(Clone)]
struct ApiState {
    source: Arc<StoreSource>,
}

/// Routes the Prometheus API.
pub fn router(engine: Arc<QueryEngine>) -> Router {
    let state = ApiState { source: Arc::new(StoreSource::new(engine)) };
    Router::new()
        .route("/api/v1/query", get(query).post(query))
        .route("/api/v1/query_range", get(query_range).post(query_range))
        .route("/api/v1/labels", get(labels).post(labels))
        .route("/api/v1/label/{name}/values", get(label_values))
        .route("/api/v1/series", get(series).post(series))
        .route("/api/v1/metadata", get(metadata))
        .route("/api/v1/query_exemplars", get(exemplars).post(exemplars))
        .route("/api/v1/status/buildinfo", get(build_info))
        .route("/api/v1/admin/tsdb/delete_series", axum::routing::post(delete_series).put(delete_series))
        .with_state(state)
}

/// Prometheus' `delete_series`: the samples of every series `match[]` selects within
/// `start`/`end` (default: all time) are deleted before the 204, durably.
async fn delete_series(
    State(state): State<ApiState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let outcome = async {
        let params = all_params(&state, raw, &headers, body).await?;
        let engine = state.source.engine();
        let groups = match_params(engine, &params)?;
        if groups.is_empty() {
            return Err(bad("no match[] parameter provided"));
        }
        let (start, end) = (bound_param(&params, "start", STORE_MIN_MS)?, bound_param(&params, "end", STORE_MAX_MS)?);
        let max_series = engine.config().max_series;
        let mut ids = BTreeSet::new();
        for group in &groups {
            ids.extend(state.source.series_ids(group, start, end).await?);
            if ids.len() > max_series {
                return Err(PromError::Limit {
                    limit: "max_series",
                    message: format!("the selectors match more than {max_series} series (query.max_series)"),
                });
            }
        }
        let selector = params.get("match[]").map(|m| m.join(", ")).unwrap_or_default();
        let ns = |ms: i64| ms.saturating_mul(1_000_000);
        let target = wake_storage::deletion::DeleteTarget::Series { selector, series_ids: ids.into_iter().collect() };
        engine.store().request_delete(target, ns(start), ns(end).saturating_add(999_999)).await.map_err(|error| {
            match error.class() {
                wake_storage::ErrorClass::BadRequest => PromError::BadData(error.to_string()),
                wake_storage::ErrorClass::Unavailable => PromError::Unavailable(error.to_string()),
                _ => PromError::Internal(error.to_string()),
            }
        })
    };
    match outcome.await {
        Ok(_) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => error_response(error),
    }
}

/// Query string and form body together; a body over the limit is a 413 in Prometheus's shape.
async fn all_params(
    state: &ApiState,
    query: Option<String>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Params, PromError> {
    let body =
        crate::body::read(state.source.engine().config(), headers, body).await.map_err(|refusal| match refusal {
            crate::body::BodyRefusal::TooLarge(message) => PromError::TooLarge(message),
            crate::body::BodyRefusal::Unreadable(message) => PromError::BadData(message),
        })?;
    let mut params = params::parse_form(query.as_deref().unwrap_or(""));
    if !body.is_empty() {
        for (key, values) in params::parse_form(&String::from_utf8_lossy(&body)) {
            params.entry(key).or_default().extend(values);
        }
    }
    Ok(params)
}

/// The text a request is admitted and logged by: its `query`, else its `match[]` selectors.
fn request_text(params: &Params) -> String {
    match first(params, "query") {
        Some(query) => query.to_string(),
        None => params.get("match[]").map(|m| m.join(" ")).unwrap_or_default(),
    }
}

/// Runs one request of the Prometheus API on the query runtime, within its limits.
async fn run<T, F, Fut>(state: &ApiState, params: Result<Params, PromError>, work: F) -> Response
where
    T: Serialize + Send + 'static,
    F: FnOnce(ApiState, Params) -> Fut,
    Fut: Future<Output = Result<T, PromError>> + Send + 'static,
{
    let params = match params {
        Ok(params) => params,
        Err(error) => return error_response(error),
    };
    let text = request_text(&params);
    let engine = state.source.engine().clone();
    let work = work(state.clone(), params);
    let result: Result<Result<T, PromError>, crate::Error> =
        engine.run_request(Api::Prometheus, &text, async move { Ok(work.await) }).await;
    match result {
        Ok(Ok(data)) => success(data),
        Ok(Err(error)) => {
            // Limits the evaluation hit itself (those of the run, like the timeout, are
            // counted by the engine).
            if let Some(limit) = error.limit_name() {
                engine.limits().hit(Api::Prometheus, limit);
            }
            error_response(error)
        }
        Err(error) => error_response(PromError::from(error)),
    }
}

/// Prometheus's envelope of a successful answer.
#[derive(Serialize)]
struct Success<T> {
    status: &'static str,
    data: T,
}

fn success(data: impl Serialize) -> Response {
    axum::Json(Success { status: "success", data }).into_response()
}

/// Prometheus's error shape and codes: bad parameters 400, execution failures and query
/// limits 422, timeouts 503, a full queue 429 with `Retry-After`, Wake's faults 500.
fn error_response(error: PromError) -> Response {
    let (status, kind) = match &error {
        PromError::BadData(_) => (StatusCode::BAD_REQUEST, "bad_data"),
        PromError::Limit { limit, .. } if crate::error::is_text_limit(limit) => (StatusCode::BAD_REQUEST, "bad_data"),
        PromError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "bad_data"),
        PromError::Execution(_) | PromError::Limit { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "execution"),
        PromError::Timeout(_) => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
        PromError::Unavailable(_) => (StatusCode::TOO_MANY_REQUESTS, "unavailable"),
        PromError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    if status == StatusCode::INTERNAL_SERVER_ERROR {
        tracing::error!(%error, "prometheus API: internal error");
    }
    let body = axum::Json(json!({ "status": "error", "errorType": kind, "error": error.to_string() }));
    if status == StatusCode::TOO_MANY_REQUESTS {
        return (status, [(axum::http::header::RETRY_AFTER, RETRY_AFTER_SECS.to_string())], body).into_response();
    }
    (status, body).into_response()
}

fn bad(message: impl Into<String>) -> PromError {
    PromError::BadData(message.into())
}

/// Prometheus's `parseTime`: Unix seconds, possibly fractional, or RFC 3339, in ms; only
/// times the store can represent (1677 to 2262).
fn parse_time(text: &str, name: &str) -> Result<i64, PromError> {
    let text = text.trim();
    let invalid = || bad(format!("invalid parameter \"{name}\": cannot parse {text:?} to a valid timestamp"));
    if let Ok(seconds) = text.parse::<f64>() {
        if !seconds.is_finite() || seconds.abs() >= MAX_SECONDS {
            return Err(invalid());
        }
        #[allow(clippy::cast_possible_truncation)] // in range: checked just above
        return Ok((seconds * 1000.0).round() as i64);
    }
    let ms = chrono::DateTime::parse_from_rfc3339(text).map(|t| t.timestamp_millis()).map_err(|_| invalid())?;
    if !(STORE_MIN_MS..=STORE_MAX_MS).contains(&ms) {
        return Err(invalid());
    }
    Ok(ms)
}

/// A time bounding a metadata call: clients send "all time" as far-away bounds
/// (`end=9999999999`, `start=-62135596800`), which mean the store's range.
fn bound_param(params: &Params, name: &str, default: i64) -> Result<i64, PromError> {
    let Some(text) = first(params, name) else { return Ok(default) };
    match text.trim().parse::<f64>() {
        Ok(seconds) if seconds.is_finite() => {
            let ms = (seconds * 1000.0).round().clamp(STORE_MIN_MS as f64, STORE_MAX_MS as f64);
            #[allow(clippy::cast_possible_truncation)] // clamped to the store's range just above
            Ok(ms as i64)
        }
        _ => parse_time(text, name),
    }
}

fn time_param(params: &Params, name: &str, default: i64) -> Result<i64, PromError> {
    first(params, name).map_or(Ok(default), |text| parse_time(text, name))
}

fn duration_param(params: &Params, name: &str) -> Result<Option<Duration>, PromError> {
    first(params, name)
        .map(|text| {
            params::parse_duration(text)
                .map_err(|_| bad(format!("invalid parameter \"{name}\": cannot parse {text:?} to a valid duration")))
        })
        .transpose()
}

fn now_ms() -> i64 {
    params::now_ns() / 1_000_000
}

/// The evaluation's limits: its `timeout` parameter, if shorter than `query.timeout_secs`.
fn eval_limits(engine: &QueryEngine, params: &Params) -> Result<EvalLimits, PromError> {
    let configured = engine.config().timeout();
    let timeout = duration_param(params, "timeout")?.map_or(configured, |t| t.min(configured));
    Ok(EvalLimits {
        deadline: Instant::now().checked_add(timeout),
        max_samples: engine.config().max_samples,
        max_series: engine.config().max_series,
    })
}

fn parse_query(engine: &QueryEngine, params: &Params) -> Result<Expr, PromError> {
    let text = first(params, "query").ok_or_else(|| bad("invalid parameter \"query\": query must not be empty"))?;
    eval::parse_limited(text, engine.config().max_query_depth)
}

fn labels_json(labels: &Labels) -> Json {
    Json::Object(labels.iter().map(|(k, v)| (k.clone(), Json::String(v.clone()))).collect())
}

/// A sample time as Prometheus writes it: seconds, with at most three decimals.
struct Seconds(i64);

impl Serialize for Seconds {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0 % 1000 == 0 {
            serializer.serialize_i64(self.0 / 1000)
        } else {
            serializer.serialize_f64(self.0 as f64 / 1000.0)
        }
    }
}

/// A sample value as Prometheus writes it: a string (`"1.5"`, `"NaN"`, `"+Inf"`).
struct ValueText(f64);

impl Serialize for ValueText {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0.is_finite() {
            // `Display` of a finite f64 is [`format_value`]'s text, written without a String.
            serializer.collect_str(&self.0)
        } else {
            serializer.serialize_str(&format_value(self.0))
        }
    }
}

/// `[<seconds>, "<value>"]`.
struct Point(i64, f64);

impl Serialize for Point {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut tuple = serializer.serialize_tuple(2)?;
        tuple.serialize_element(&Seconds(self.0))?;
        tuple.serialize_element(&ValueText(self.1))?;
        tuple.end()
    }
}

struct Points<'a>(&'a [Sample]);

impl Serialize for Points<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(|(time, value)| Point(*time, *value)))
    }
}

/// A query's result in Prometheus's shape, serialized straight from the evaluator's value: a
/// range query's answer holds hundreds of thousands of points, and a JSON tree of them would
/// cost more than their evaluation.
struct QueryResult(QueryValue);

impl Serialize for QueryResult {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Instant<'a> {
            metric: &'a Labels,
            value: Point,
        }
        #[derive(Serialize)]
        struct Range<'a> {
            metric: &'a Labels,
            values: Points<'a>,
        }
        let mut map = serializer.serialize_map(Some(2))?;
        match &self.0 {
            QueryValue::Scalar(time, value) => {
                map.serialize_entry("resultType", "scalar")?;
                map.serialize_entry("result", &Point(*time, *value))?;
            }
            QueryValue::String(time, text) => {
                map.serialize_entry("resultType", "string")?;
                map.serialize_entry("result", &(Seconds(*time), text))?;
            }
            QueryValue::Vector(samples) => {
                map.serialize_entry("resultType", "vector")?;
                let result: Vec<Instant> = samples
                    .iter()
                    .map(|(metric, time, value)| Instant { metric, value: Point(*time, *value) })
                    .collect();
                map.serialize_entry("result", &result)?;
            }
            QueryValue::Matrix(series) => {
                map.serialize_entry("resultType", "matrix")?;
                let result: Vec<Range> =
                    series.iter().map(|(metric, samples)| Range { metric, values: Points(samples) }).collect();
                map.serialize_entry("result", &result)?;
            }
        }
        map.end()
    }
}

async fn query(State(state): State<ApiState>, RawQuery(raw): RawQuery, headers: HeaderMap, body: Body) -> Response {
    run(&state, all_params(&state, raw, &headers, body).await, |state, params| async move {
        let engine = state.source.engine();
        let expr = parse_query(engine, &params)?;
        let time = time_param(&params, "time", now_ms())?;
        let limits = eval_limits(engine, &params)?;
        eval::instant_query(state.source.as_ref(), &expr, time, limits).await.map(QueryResult)
    })
    .await
}

async fn query_range(
    State(state): State<ApiState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    run(&state, all_params(&state, raw, &headers, body).await, |state, params| async move {
        let engine = state.source.engine();
        let expr = parse_query(engine, &params)?;
        let steps = range_steps(&params)?;
        let limits = eval_limits(engine, &params)?;
        eval::range_query(state.source.as_ref(), &expr, steps, limits).await.map(QueryResult)
    })
    .await
}

/// The `start`, `end` and `step` of a range query, checked as Prometheus checks them: times the
/// store can represent, `end` not before `start`, a positive step, at most 11,000 points.
pub fn range_steps(params: &Params) -> Result<Steps, PromError> {
    let start = first(params, "start")
        .ok_or_else(|| bad("invalid parameter \"start\": cannot parse \"\" to a valid timestamp"))
        .and_then(|t| parse_time(t, "start"))?;
    let end = first(params, "end")
        .ok_or_else(|| bad("invalid parameter \"end\": cannot parse \"\" to a valid timestamp"))
        .and_then(|t| parse_time(t, "end"))?;
    if end < start {
        return Err(bad("invalid parameter \"end\": end timestamp must not be before start time"));
    }
    let step = duration_param(params, "step")?
        .ok_or_else(|| bad("invalid parameter \"step\": cannot parse \"\" to a valid duration"))?;
    let step = i64::try_from(step.as_millis()).unwrap_or(i64::MAX);
    if step <= 0 {
        return Err(bad(
            "invalid parameter \"step\": zero or negative query resolution step widths are not accepted. \
             Try a positive integer",
        ));
    }
    if (i128::from(end) - i128::from(start)) / i128::from(step) > MAX_POINTS_PER_SERIES {
        return Err(bad(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution \
             (?step=XX)",
        ));
    }
    Ok(Steps { start, end, step })
}

/// The `match[]` selectors of a request, each as its matcher groups.
fn match_params(engine: &QueryEngine, params: &Params) -> Result<Vec<Vec<Matcher>>, PromError> {
    let mut groups = Vec::new();
    for text in params.get("match[]").into_iter().flatten() {
        let selector = match eval::parse_limited(text, engine.config().max_query_depth)? {
            Expr::VectorSelector(selector) => selector,
            _ => return Err(bad(format!("invalid parameter \"match[]\": {text:?} is not a series selector"))),
        };
        groups.extend(eval::selector_matchers(&selector));
    }
    Ok(groups)
}

fn range_params(params: &Params) -> Result<(i64, i64), PromError> {
    Ok((bound_param(params, "start", MIN_TIME_MS)?, bound_param(params, "end", MAX_TIME_MS)?))
}

/// The label sets of every series matching `groups` (all series when there are none).
async fn matching_series(
    source: &StoreSource,
    groups: &[Vec<Matcher>],
    start: i64,
    end: i64,
) -> Result<BTreeSet<Labels>, PromError> {
    let everything = [vec![Matcher::new(promql_parser::label::MatchOp::NotEqual, METRIC_NAME_LABEL, "")]];
    let groups = if groups.is_empty() { &everything[..] } else { groups };
    let max_series = source.engine().config().max_series;
    let mut all = BTreeSet::new();
    for group in groups {
        for series in source.scan(group, start, end, false).await? {
            all.insert(series.labels);
        }
        if all.len() > max_series {
            return Err(PromError::Limit {
                limit: "max_series",
                message: format!("the selectors match more than {max_series} series (query.max_series)"),
            });
        }
    }
    Ok(all)
}

async fn labels(State(state): State<ApiState>, RawQuery(raw): RawQuery, headers: HeaderMap, body: Body) -> Response {
    run(&state, all_params(&state, raw, &headers, body).await, |state, params| async move {
        let groups = match_params(state.source.engine(), &params)?;
        let (start, end) = range_params(&params)?;
        let series = matching_series(&state.source, &groups, start, end).await?;
        let names: BTreeSet<String> = series.iter().flat_map(|labels| labels.keys().cloned()).collect();
        Ok(names)
    })
    .await
}

async fn label_values(State(state): State<ApiState>, Path(name): Path<String>, RawQuery(raw): RawQuery) -> Response {
    run(&state, all_params(&state, raw, &HeaderMap::new(), Body::empty()).await, |state, params| async move {
        let groups = match_params(state.source.engine(), &params)?;
        let (start, end) = range_params(&params)?;
        let values: BTreeSet<String> = if name == METRIC_NAME_LABEL && groups.is_empty() {
            // The metric browser's first request: names alone, without reading any series.
            let mut names = BTreeSet::new();
            for descriptor in state.source.descriptors(start, end).await? {
                for exposure in descriptor.exposures() {
                    names.insert(exposure.name);
                }
            }
            names
        } else {
            matching_series(&state.source, &groups, start, end)
                .await?
                .into_iter()
                .filter_map(|mut labels| labels.remove(&name))
                .collect()
        };
        Ok(values)
    })
    .await
}

async fn series(State(state): State<ApiState>, RawQuery(raw): RawQuery, headers: HeaderMap, body: Body) -> Response {
    run(&state, all_params(&state, raw, &headers, body).await, |state, params| async move {
        let groups = match_params(state.source.engine(), &params)?;
        if groups.is_empty() {
            return Err(bad("no match[] parameter provided"));
        }
        let (start, end) = range_params(&params)?;
        let series = matching_series(&state.source, &groups, start, end).await?;
        Ok(Json::Array(series.iter().map(labels_json).collect()))
    })
    .await
}

async fn metadata(State(state): State<ApiState>, RawQuery(raw): RawQuery) -> Response {
    run(&state, all_params(&state, raw, &HeaderMap::new(), Body::empty()).await, |state, params| async move {
        let limit = match first(&params, "limit") {
            Some(text) => Some(text.parse::<i64>().map_err(|_| bad("limit must be a number"))?),
            None => None,
        };
        let wanted = first(&params, "metric");
        let mut families: BTreeMap<String, Vec<Json>> = BTreeMap::new();
        for descriptor in state.source.descriptors(MIN_TIME_MS, MAX_TIME_MS).await? {
            for exposure in descriptor.exposures() {
                // Histograms and summaries are one family under their base name.
                let family = match exposure.prom_type {
                    "histogram" | "summary" => {
                        let base = exposure.name.strip_suffix("_bucket").unwrap_or(&exposure.name);
                        if exposure.name.ends_with("_sum") || exposure.name.ends_with("_count") {
                            continue;
                        }
                        base.to_string()
                    }
                    _ => exposure.name.clone(),
                };
                if wanted.is_some_and(|w| w != family) {
                    continue;
                }
                let entry =
                    json!({ "type": exposure.prom_type, "help": descriptor.description, "unit": descriptor.unit });
                let list = families.entry(family).or_default();
                if !list.contains(&entry) {
                    list.push(entry);
                }
            }
        }
        if let Some(limit) = limit.and_then(|l| usize::try_from(l).ok()) {
            families = families.into_iter().take(limit).collect();
        }
        Ok(families)
    })
    .await
}

/// Wake stores no exemplars yet; Grafana asks for them with every panel query when enabled.
async fn exemplars() -> Response {
    success(json!([]))
}

async fn build_info() -> Response {
    success(json!({
        "version": env!("CARGO_PKG_VERSION"),
        "revision": "",
        "branch": "",
        "buildUser": "",
        "buildDate": "",
        "goVersion": "",
        "application": "wake",
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(value: QueryValue) -> String {
        serde_json::to_string(&Success { status: "success", data: QueryResult(value) }).unwrap()
    }

    #[test]
    fn results_are_written_in_prometheus_shape() {
        let labels: Labels =
            [("__name__".to_string(), "up".to_string()), ("job".to_string(), "a\"b".to_string())].into();
        let samples =
            vec![(1_000, 1.5), (1_500, f64::NAN), (2_000, f64::INFINITY), (2_001, f64::NEG_INFINITY), (3_000, -0.0)];
        assert_eq!(
            body(QueryValue::Matrix(vec![(labels.clone(), samples)])),
            r#"{"status":"success","data":{"resultType":"matrix","result":[{"metric":{"__name__":"up","job":"a\"b"},"values":[[1,"1.5"],[1.5,"NaN"],[2,"+Inf"],[2.001,"-Inf"],[3,"-0"]]}]}}"#
        );
        assert_eq!(
            body(QueryValue::Vector(vec![(labels, 4_250, 1e21)])),
            r#"{"status":"success","data":{"resultType":"vector","result":[{"metric":{"__name__":"up","job":"a\"b"},"value":[4.25,"1000000000000000000000"]}]}}"#
        );
        assert_eq!(
            body(QueryValue::Scalar(5_000, 0.1)),
            r#"{"status":"success","data":{"resultType":"scalar","result":[5,"0.1"]}}"#
        );
        assert_eq!(
            body(QueryValue::String(5_000, "x".into())),
            r#"{"status":"success","data":{"resultType":"string","result":[5,"x"]}}"#
        );
    }
}
