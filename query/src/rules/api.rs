//! The rule APIs Grafana and amtool users read, in Prometheus' and Loki's shapes:
//!
//! - `GET /api/v1/rules` (filters `type=alert|record`, `rule_name[]`, `rule_group[]`,
//!   `file[]`, `exclude_alerts`) and `GET /api/v1/alerts`: the PromQL and SQL groups, as
//!   Grafana's Prometheus data source lists them;
//! - `GET /prometheus/api/v1/rules` and `/prometheus/api/v1/alerts`: the LogQL groups, where
//!   Grafana's Loki data source looks (Loki's ruler serves the same shapes there);
//! - `GET /loki/api/v1/rules[/{namespace}[/{group}]]`: the LogQL groups as YAML, by namespace
//!   (the rule file), as Loki's ruler answers; rules are managed by files, so writes get 405;
//! - `POST /-/reload`: reloads the rule files (200, or 500 naming the file and line).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value as Json, json};

use super::alert::{Alert, AlertState};
use super::file::{Lang, RuleDef};
use super::group::{Group, Health, Rule};
use super::manager::Ruler;

/// Routes of the rule APIs, to be merged into the query router.
pub fn router(ruler: Arc<Ruler>) -> Router {
    let read_only =
        || async { (StatusCode::METHOD_NOT_ALLOWED, "rules are managed by rule files; edit them and reload\n") };
    Router::new()
        .route("/api/v1/rules", get(prometheus_rules))
        .route("/api/v1/alerts", get(prometheus_alerts))
        .route("/prometheus/api/v1/rules", get(loki_rules_json))
        .route("/prometheus/api/v1/alerts", get(loki_alerts))
        .route("/loki/api/v1/rules", get(loki_rules_yaml).post(read_only))
        .route("/loki/api/v1/rules/{namespace}", get(loki_namespace_yaml).post(read_only).delete(read_only))
        .route("/loki/api/v1/rules/{namespace}/{group}", get(loki_group_yaml).delete(read_only))
        .route("/-/reload", post(reload).put(reload))
        .with_state(ruler)
}

/// The request's query parameters, repeated keys kept (`rule_name[]=a&rule_name[]=b`).
fn params(query: Option<String>) -> BTreeMap<String, Vec<String>> {
    let mut params: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        params.entry(key.into_owned()).or_default().push(value.into_owned());
    }
    params
}

fn success(data: Json) -> Response {
    axum::Json(json!({ "status": "success", "data": data })).into_response()
}

fn bad_data(message: String) -> Response {
    (StatusCode::BAD_REQUEST, axum::Json(json!({ "status": "error", "errorType": "bad_data", "error": message })))
        .into_response()
}

/// Which rules a `/api/v1/rules` request asks for.
struct Filter {
    kind: Option<&'static str>,
    names: Vec<String>,
    groups: Vec<String>,
    files: Vec<String>,
    exclude_alerts: bool,
}

impl Filter {
    fn parse(params: &BTreeMap<String, Vec<String>>) -> Result<Filter, String> {
        let all = |key: &str| params.get(key).cloned().unwrap_or_default();
        let kind = match params.get("type").and_then(|v| v.first()).map(String::as_str) {
            None | Some("") => None,
            Some("alert") => Some("alerting"),
            Some("record") => Some("recording"),
            Some(other) => return Err(format!("invalid parameter \"type\": {other:?}, expected alert or record")),
        };
        let exclude_alerts = match params.get("exclude_alerts").and_then(|v| v.first()).map(String::as_str) {
            None | Some("") | Some("false") => false,
            Some("true") => true,
            Some(other) => return Err(format!("invalid parameter \"exclude_alerts\": {other:?}")),
        };
        Ok(Filter {
            kind,
            names: all("rule_name[]"),
            groups: all("rule_group[]"),
            files: all("file[]"),
            exclude_alerts,
        })
    }

    fn group(&self, group: &Group) -> bool {
        (self.groups.is_empty() || self.groups.contains(&group.def.name))
            && (self.files.is_empty() || self.files.contains(&group.def.file.display().to_string()))
    }

    fn rule(&self, rule: &Rule) -> bool {
        let kind = if rule.alerting().is_some() { "alerting" } else { "recording" };
        self.kind.is_none_or(|k| k == kind)
            && (self.names.is_empty() || self.names.iter().any(|n| n == rule.def.name()))
    }
}

fn selected(ruler: &Ruler, loki: bool) -> Vec<Group> {
    ruler.groups().into_iter().filter(|g| (g.def.lang == Lang::Logql) == loki).collect()
}

async fn prometheus_rules(State(ruler): State<Arc<Ruler>>, RawQuery(query): RawQuery) -> Response {
    rules_json(&ruler, query, false)
}

async fn loki_rules_json(State(ruler): State<Arc<Ruler>>, RawQuery(query): RawQuery) -> Response {
    rules_json(&ruler, query, true)
}

fn rules_json(ruler: &Ruler, query: Option<String>, loki: bool) -> Response {
    let filter = match Filter::parse(&params(query)) {
        Ok(filter) => filter,
        Err(message) => return bad_data(message),
    };
    let groups: Vec<Json> = selected(ruler, loki)
        .iter()
        .filter(|g| filter.group(g))
        .filter_map(|group| {
            let rules: Vec<Json> =
                group.rules.iter().filter(|r| filter.rule(r)).map(|r| rule_json(r, filter.exclude_alerts)).collect();
            // Prometheus leaves out groups whose rules were all filtered away.
            let filtering = filter.kind.is_some() || !filter.names.is_empty();
            (!(filtering && rules.is_empty())).then(|| {
                json!({
                    "name": group.def.name,
                    "file": group.def.file.display().to_string(),
                    "rules": rules,
                    "interval": group.interval.as_secs_f64(),
                    "limit": group.def.limit,
                    "evaluationTime": group.evaluation_time.as_secs_f64(),
                    "lastEvaluation": rfc3339(group.last_evaluation),
                })
            })
        })
        .collect();
    success(json!({ "groups": groups }))
}

fn rule_json(rule: &Rule, exclude_alerts: bool) -> Json {
    let health = match rule.health {
        Health::Unknown => "unknown",
        Health::Ok => "ok",
        Health::Err => "err",
    };
    let common = |mut value: Json| {
        value["health"] = json!(health);
        value["lastError"] = json!(rule.last_error.clone().unwrap_or_default());
        value["evaluationTime"] = json!(rule.evaluation_time.as_secs_f64());
        value["lastEvaluation"] = json!(rfc3339(rule.last_evaluation));
        value
    };
    match (&rule.def, rule.alerting()) {
        (RuleDef::Alerting { alert, expr, hold, keep_firing_for, labels, annotations }, Some(state)) => {
            let alerts: Vec<Json> =
                if exclude_alerts { Vec::new() } else { state.active_alerts().map(alert_json).collect() };
            common(json!({
                "state": state.state().name(),
                "name": alert,
                "query": expr,
                "duration": hold.as_secs_f64(),
                "keepFiringFor": keep_firing_for.as_secs_f64(),
                "labels": labels,
                "annotations": annotations,
                "alerts": alerts,
                "type": "alerting",
            }))
        }
        (def, _) => common(json!({
            "name": def.name(),
            "query": def.expr(),
            "labels": match def { RuleDef::Recording { labels, .. } => json!(labels), _ => json!({}) },
            "type": "recording",
        })),
    }
}

fn alert_json(alert: &Alert) -> Json {
    let mut value = json!({
        "labels": alert.labels,
        "annotations": alert.annotations,
        "state": alert.state.name(),
        "activeAt": rfc3339(Some(alert.active_at)),
        "value": format_exponent(alert.value),
    });
    if let Some(since) = alert.keep_firing_since {
        value["keepFiringSince"] = json!(rfc3339(Some(since)));
    }
    value
}

async fn prometheus_alerts(State(ruler): State<Arc<Ruler>>) -> Response {
    alerts(&ruler, false)
}

async fn loki_alerts(State(ruler): State<Arc<Ruler>>) -> Response {
    alerts(&ruler, true)
}

fn alerts(ruler: &Ruler, loki: bool) -> Response {
    let alerts: Vec<Json> = selected(ruler, loki)
        .iter()
        .flat_map(|g| g.rules.iter())
        .filter_map(Rule::alerting)
        .flat_map(|rule| {
            rule.active_alerts().filter(|a| a.state != AlertState::Inactive).map(alert_json).collect::<Vec<_>>()
        })
        .collect();
    success(json!({ "alerts": alerts }))
}

/// Loki's YAML answer: rule groups by namespace (the rule file's name).
fn loki_yaml(ruler: &Ruler, namespace: Option<&str>, group: Option<&str>) -> Response {
    let mut namespaces: BTreeMap<String, Vec<Json>> = BTreeMap::new();
    for g in selected(ruler, true) {
        let name = namespace_of(&g);
        if namespace.is_some_and(|n| n != name) || group.is_some_and(|n| n != g.def.name) {
            continue;
        }
        let rules: Vec<Json> = g
            .def
            .rules
            .iter()
            .map(|rule| match rule {
                RuleDef::Recording { record, expr, labels } => {
                    json!({ "record": record, "expr": expr, "labels": labels })
                }
                RuleDef::Alerting { alert, expr, hold, keep_firing_for, labels, annotations } => json!({
                    "alert": alert,
                    "expr": expr,
                    "for": promql_parser::util::display_duration(hold),
                    "keep_firing_for": promql_parser::util::display_duration(keep_firing_for),
                    "labels": labels,
                    "annotations": annotations,
                }),
            })
            .collect();
        namespaces.entry(name).or_default().push(json!({
            "name": g.def.name,
            "interval": promql_parser::util::display_duration(&g.interval),
            "rules": rules,
        }));
    }
    if namespaces.is_empty() && (namespace.is_some() || group.is_some()) {
        return (StatusCode::NOT_FOUND, "no rule groups found\n").into_response();
    }
    let body = if let (Some(_), Some(_)) = (namespace, group) {
        namespaces.into_values().flatten().next().map(|g| serde_yaml::to_string(&g))
    } else {
        Some(serde_yaml::to_string(&namespaces))
    };
    match body {
        Some(Ok(text)) => ([(header::CONTENT_TYPE, "application/yaml")], text).into_response(),
        Some(Err(error)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response(),
        None => (StatusCode::NOT_FOUND, "no rule groups found\n").into_response(),
    }
}

fn namespace_of(group: &Group) -> String {
    group
        .def
        .file
        .file_stem()
        .map_or_else(|| group.def.file.display().to_string(), |s| s.to_string_lossy().into_owned())
}

async fn loki_rules_yaml(State(ruler): State<Arc<Ruler>>) -> Response {
    loki_yaml(&ruler, None, None)
}

async fn loki_namespace_yaml(State(ruler): State<Arc<Ruler>>, Path(namespace): Path<String>) -> Response {
    loki_yaml(&ruler, Some(&namespace), None)
}

async fn loki_group_yaml(
    State(ruler): State<Arc<Ruler>>,
    Path((namespace, group)): Path<(String, String)>,
) -> Response {
    loki_yaml(&ruler, Some(&namespace), Some(&group))
}

async fn reload(State(ruler): State<Arc<Ruler>>) -> Response {
    match ruler.reload().await {
        Ok(groups) => (StatusCode::OK, format!("reloaded {groups} rule groups\n")).into_response(),
        Err(error) => {
            (StatusCode::INTERNAL_SERVER_ERROR, format!("failed to reload config: {error}\n")).into_response()
        }
    }
}

/// RFC 3339 with nanoseconds as Prometheus writes times; Go's zero time when never set.
fn rfc3339(ms: Option<i64>) -> String {
    match ms.and_then(chrono::DateTime::<chrono::Utc>::from_timestamp_millis) {
        Some(time) => time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        None => "0001-01-01T00:00:00Z".to_string(),
    }
}

/// Go's `strconv.FormatFloat(v, 'e', -1, 64)`, the shape of an alert's `value`: "1e+00",
/// "1.5e+03".
pub fn format_exponent(value: f64) -> String {
    if value.is_nan() {
        return "NaN".into();
    }
    if value.is_infinite() {
        return if value > 0.0 { "+Inf".into() } else { "-Inf".into() };
    }
    let text = format!("{value:e}");
    let (mantissa, exponent) = text.split_once('e').unwrap_or((&text, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let sign = if exponent < 0 { '-' } else { '+' };
    format!("{mantissa}e{sign}{:02}", exponent.unsigned_abs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_values_are_formatted_as_go_does() {
        assert_eq!(format_exponent(1.0), "1e+00");
        assert_eq!(format_exponent(1500.0), "1.5e+03");
        assert_eq!(format_exponent(0.00025), "2.5e-04");
        assert_eq!(format_exponent(-3e120), "-3e+120");
        assert_eq!(format_exponent(0.0), "0e+00");
        assert_eq!(format_exponent(f64::INFINITY), "+Inf");
    }

    #[test]
    fn times_are_rfc3339_and_zero_when_unset() {
        assert_eq!(rfc3339(None), "0001-01-01T00:00:00Z");
        assert_eq!(rfc3339(Some(1_500)), "1970-01-01T00:00:01.500Z");
    }

    #[test]
    fn filters_refuse_unknown_types() {
        let mut params = BTreeMap::new();
        params.insert("type".to_string(), vec!["both".to_string()]);
        assert!(Filter::parse(&params).is_err());
        params.insert("type".to_string(), vec!["alert".to_string()]);
        assert_eq!(Filter::parse(&params).unwrap().kind, Some("alerting"));
    }
}
