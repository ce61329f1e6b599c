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
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use promql_parser::label::Matcher;
use promql_parser::parser::Expr;
use serde::Serialize;
use serde::ser::{SerializeMap, SerializeTuple, Serializer};
use serde_json::{Value as Json, json};

use super::eval::{self, PromError, QueryValue, Sample, Steps};
use super::format_value;
use super::naming::{Labels, METRIC_NAME_LABEL};
use super::select::StoreSource;
use crate::engine::QueryEngine;
use crate::loki::params::{self, Params, first};

/// Prometheus's `query.timeout` default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// Prometheus refuses range queries with more points per series than this.
const MAX_POINTS_PER_SERIES: i64 = 11_000;
/// The bounds used when a request gives no time range ("all time", within what the store's
/// timestamps can represent).
const MIN_TIME_MS: i64 = 0;
const MAX_TIME_MS: i64 = 9_000_000_000_000;

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
        .with_state(state)
}

fn all_params(query: Option<String>, body: &Bytes) -> Params {
    let mut params = params::parse_form(query.as_deref().unwrap_or(""));
    if !body.is_empty() {
        for (key, values) in params::parse_form(&String::from_utf8_lossy(body)) {
            params.entry(key).or_default().extend(values);
        }
    }
    params
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

fn error_response(error: PromError) -> Response {
    let (status, kind) = match &error {
        PromError::BadData(_) => (StatusCode::BAD_REQUEST, "bad_data"),
        PromError::Execution(_) => (StatusCode::UNPROCESSABLE_ENTITY, "execution"),
        PromError::Timeout(_) => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
        PromError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    };
    (status, axum::Json(json!({ "status": "error", "errorType": kind, "error": error.to_string() }))).into_response()
}

fn bad(message: impl Into<String>) -> PromError {
    PromError::BadData(message.into())
}

/// Prometheus's `parseTime`: Unix seconds, possibly fractional, or RFC 3339.
fn parse_time(text: &str, name: &str) -> Result<i64, PromError> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<f64>()
        && seconds.is_finite()
    {
        return Ok((seconds * 1000.0).round() as i64);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp_millis())
        .map_err(|_| bad(format!("invalid parameter \"{name}\": cannot parse {text:?} to a valid timestamp")))
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

fn deadline(params: &Params) -> Result<Option<Instant>, PromError> {
    let timeout = duration_param(params, "timeout")?.unwrap_or(DEFAULT_TIMEOUT);
    Ok(Some(Instant::now() + timeout))
}

fn parse_query(params: &Params) -> Result<Expr, PromError> {
    let text = first(params, "query").ok_or_else(|| bad("invalid parameter \"query\": query must not be empty"))?;
    eval::parse(text)
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

async fn query(State(state): State<ApiState>, RawQuery(raw): RawQuery, body: Bytes) -> Response {
    let params = all_params(raw, &body);
    let run = async {
        let expr = parse_query(&params)?;
        let time = time_param(&params, "time", now_ms())?;
        let deadline = deadline(&params)?;
        eval::instant_query(state.source.as_ref(), &expr, time, deadline).await
    };
    match run.await {
        Ok(value) => success(QueryResult(value)),
        Err(error) => error_response(error),
    }
}

async fn query_range(State(state): State<ApiState>, RawQuery(raw): RawQuery, body: Bytes) -> Response {
    let params = all_params(raw, &body);
    let run = async {
        let expr = parse_query(&params)?;
        let start = first(&params, "start")
            .ok_or_else(|| bad("invalid parameter \"start\": cannot parse \"\" to a valid timestamp"))
            .and_then(|t| parse_time(t, "start"))?;
        let end = first(&params, "end")
            .ok_or_else(|| bad("invalid parameter \"end\": cannot parse \"\" to a valid timestamp"))
            .and_then(|t| parse_time(t, "end"))?;
        if end < start {
            return Err(bad("invalid parameter \"end\": end timestamp must not be before start time"));
        }
        let step = duration_param(&params, "step")?
            .ok_or_else(|| bad("invalid parameter \"step\": cannot parse \"\" to a valid duration"))?;
        let step = step.as_millis() as i64;
        if step <= 0 {
            return Err(bad(
                "invalid parameter \"step\": zero or negative query resolution step widths are not accepted. \
                 Try a positive integer",
            ));
        }
        if (end - start) / step > MAX_POINTS_PER_SERIES {
            return Err(bad(
                "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query resolution \
                 (?step=XX)",
            ));
        }
        let deadline = deadline(&params)?;
        eval::range_query(state.source.as_ref(), &expr, Steps { start, end, step }, deadline).await
    };
    match run.await {
        Ok(value) => success(QueryResult(value)),
        Err(error) => error_response(error),
    }
}

/// The `match[]` selectors of a request, each as its matcher groups.
fn match_params(params: &Params) -> Result<Vec<Vec<Matcher>>, PromError> {
    let mut groups = Vec::new();
    for text in params.get("match[]").into_iter().flatten() {
        let selector = match eval::parse(text)? {
            Expr::VectorSelector(selector) => selector,
            _ => return Err(bad(format!("invalid parameter \"match[]\": {text:?} is not a series selector"))),
        };
        groups.extend(eval::selector_matchers(&selector));
    }
    Ok(groups)
}

fn range_params(params: &Params) -> Result<(i64, i64), PromError> {
    Ok((time_param(params, "start", MIN_TIME_MS)?, time_param(params, "end", MAX_TIME_MS)?))
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
    let mut all = BTreeSet::new();
    for group in groups {
        for series in source.scan(group, start, end, false).await? {
            all.insert(series.labels);
        }
    }
    Ok(all)
}

async fn labels(State(state): State<ApiState>, RawQuery(raw): RawQuery, body: Bytes) -> Response {
    let params = all_params(raw, &body);
    let run = async {
        let groups = match_params(&params)?;
        let (start, end) = range_params(&params)?;
        let series = matching_series(&state.source, &groups, start, end).await?;
        let names: BTreeSet<&String> = series.iter().flat_map(|labels| labels.keys()).collect();
        Ok::<_, PromError>(json!(names))
    };
    match run.await {
        Ok(data) => success(data),
        Err(error) => error_response(error),
    }
}

async fn label_values(State(state): State<ApiState>, Path(name): Path<String>, RawQuery(raw): RawQuery) -> Response {
    let params = all_params(raw, &Bytes::new());
    let run = async {
        let groups = match_params(&params)?;
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
        Ok::<_, PromError>(json!(values))
    };
    match run.await {
        Ok(data) => success(data),
        Err(error) => error_response(error),
    }
}

async fn series(State(state): State<ApiState>, RawQuery(raw): RawQuery, body: Bytes) -> Response {
    let params = all_params(raw, &body);
    let run = async {
        let groups = match_params(&params)?;
        if groups.is_empty() {
            return Err(bad("no match[] parameter provided"));
        }
        let (start, end) = range_params(&params)?;
        let series = matching_series(&state.source, &groups, start, end).await?;
        Ok(Json::Array(series.iter().map(labels_json).collect()))
    };
    match run.await {
        Ok(data) => success(data),
        Err(error) => error_response(error),
    }
}

async fn metadata(State(state): State<ApiState>, RawQuery(raw): RawQuery) -> Response {
    let params = all_params(raw, &Bytes::new());
    let run = async {
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
        if let Some(limit) = limit.filter(|l| *l >= 0) {
            families = families.into_iter().take(limit as usize).collect();
        }
        Ok::<_, PromError>(json!(families))
    };
    match run.await {
        Ok(data) => success(data),
        Err(error) => error_response(error),
    }
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
