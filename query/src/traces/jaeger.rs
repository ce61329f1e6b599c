//! Jaeger's JSON model and query parameters, as the Jaeger UI and Grafana's Jaeger data source
//! use them: a [`Trace`] as Jaeger's `{traceID, spans, processes}`, the parameters of
//! `/api/traces` as a [`TraceQuery`], and the in-memory test of a trace against it.
//!
//! The mapping from OTLP follows Jaeger's own OTLP translator: the span kind becomes the tag
//! `span.kind`, an error status the tags `error=true` and `otel.status_code=ERROR`, the
//! status message `otel.status_description`, the instrumentation scope `otel.scope.name` and
//! `otel.scope.version`, events become logs (their name in the field `event`), the parent
//! a `CHILD_OF` reference and links `FOLLOWS_FROM` references. Times are microseconds.

use std::collections::BTreeMap;

use serde_json::{Value as Json, json};

use super::model::{SpanKind, SpanStatus, Trace};
use super::traceql::value::parse_go_duration;

/// Traces per search without `limit` (Jaeger's `defaultQueryLimit`).
pub const DEFAULT_LIMIT: usize = 100;
/// How far back a search reaches without `start` (Jaeger's default trace query lookback).
pub const DEFAULT_LOOKBACK_NS: i64 = 2 * 24 * 3600 * 1_000_000_000;

/// A bad parameter, worded as Jaeger words it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct JaegerError(String);

/// The parameters of a trace search (`/api/traces`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TraceQuery {
    pub service: Option<String>,
    pub operation: Option<String>,
    pub span_kind: Option<String>,
    /// Tags every one of which some single span must carry (span, process or special tags).
    pub tags: BTreeMap<String, String>,
    pub min_duration_ns: Option<i64>,
    pub max_duration_ns: Option<i64>,
    pub start_ns: i64,
    pub end_ns: i64,
    pub limit: usize,
    /// `traceID=` values: the traces to return, with every other parameter ignored.
    pub trace_ids: Vec<String>,
}

fn value<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
}

fn micros_param(params: &[(String, String)], key: &str) -> Result<Option<i64>, JaegerError> {
    let Some(text) = value(params, key) else { return Ok(None) };
    let micros: i64 = text
        .trim()
        .parse()
        .map_err(|_| JaegerError(format!("unable to parse param '{key}': {text:?} is not a number of microseconds")))?;
    micros
        .checked_mul(1000)
        .map(Some)
        .ok_or_else(|| JaegerError(format!("unable to parse param '{key}': {text} is out of range")))
}

fn duration_param(params: &[(String, String)], key: &str) -> Result<Option<i64>, JaegerError> {
    let Some(text) = value(params, key) else { return Ok(None) };
    match parse_go_duration(text.trim()) {
        Some(ns) if ns >= 0 => Ok(Some(ns)),
        _ => Err(JaegerError(format!("unable to parse param '{key}': time: invalid duration {text:?}"))),
    }
}

/// A Jaeger trace id (16 or 32 hex digits, any case) as the store keeps it: 32 lowercase digits.
pub fn parse_trace_id(text: &str) -> Result<String, JaegerError> {
    let text = text.trim();
    if text.is_empty() || text.len() > 32 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(JaegerError(format!("malformed trace id {text:?}: expected up to 32 hex digits")));
    }
    Ok(format!("{:0>32}", text.to_ascii_lowercase()))
}

/// Parses the parameters of `/api/traces` at time `now_ns`. Tags come as a JSON object in
/// `tags` and as repeated `tag=key:value`; `lookback` is only the UI's label for the range.
pub fn parse_trace_query(
    params: &[(String, String)],
    now_ns: i64,
    max_limit: usize,
) -> Result<TraceQuery, JaegerError> {
    let trace_ids = params
        .iter()
        .filter(|(k, v)| k == "traceID" && !v.is_empty())
        .map(|(_, v)| parse_trace_id(v))
        .collect::<Result<Vec<_>, _>>()?;
    let end_ns = micros_param(params, "end")?.unwrap_or(now_ns);
    let start_ns = micros_param(params, "start")?.unwrap_or(end_ns.saturating_sub(DEFAULT_LOOKBACK_NS));
    if start_ns > end_ns {
        return Err(JaegerError("start time is after end time".into()));
    }
    // 0 (the Jaeger UI's empty field) asks for the default, as an absent limit does.
    let limit = match value(params, "limit").filter(|text| text.trim() != "0") {
        None => DEFAULT_LIMIT,
        Some(text) => text
            .trim()
            .parse::<usize>()
            .map_err(|_| JaegerError(format!("unable to parse param 'limit': {text:?} is not a number")))?,
    };
    if limit > max_limit {
        return Err(JaegerError(format!("limit {limit} is above the maximum of {max_limit}")));
    }
    let mut tags = BTreeMap::new();
    if let Some(text) = value(params, "tags") {
        let object: BTreeMap<String, Json> =
            serde_json::from_str(text).map_err(|error| JaegerError(format!("malformed 'tags' parameter: {error}")))?;
        for (key, value) in object {
            let text = match value {
                Json::String(s) => s,
                other => other.to_string(),
            };
            tags.insert(key, text);
        }
    }
    for (_, tag) in params.iter().filter(|(k, _)| k == "tag") {
        let (key, value) = tag
            .split_once(':')
            .ok_or_else(|| JaegerError(format!("malformed 'tag' parameter {tag:?}: expected key:value")))?;
        tags.insert(key.to_string(), value.to_string());
    }
    let min_duration_ns = duration_param(params, "minDuration")?;
    let max_duration_ns = duration_param(params, "maxDuration")?;
    if let (Some(min), Some(max)) = (min_duration_ns, max_duration_ns)
        && min > max
    {
        return Err(JaegerError("'maxDuration' should be greater than 'minDuration'".into()));
    }
    let service = value(params, "service").map(str::to_string);
    if trace_ids.is_empty() && service.is_none() {
        return Err(JaegerError("parameter 'service' is required".into()));
    }
    Ok(TraceQuery {
        service,
        operation: value(params, "operation").map(str::to_string),
        span_kind: value(params, "spanKind").map(str::to_string),
        tags,
        min_duration_ns,
        max_duration_ns,
        start_ns,
        end_ns,
        limit,
        trace_ids,
    })
}

/// The tags Jaeger derives from a span's OTLP fields.
fn special_tags(trace: &Trace, i: usize) -> Vec<(&'static str, Json)> {
    let span = &trace.spans[i];
    let mut tags = Vec::new();
    if span.kind != SpanKind::Unspecified {
        tags.push(("span.kind", json!(span.kind.as_str())));
    }
    match span.status {
        SpanStatus::Error => {
            tags.push(("error", json!(true)));
            tags.push(("otel.status_code", json!("ERROR")));
        }
        SpanStatus::Ok => tags.push(("otel.status_code", json!("OK"))),
        SpanStatus::Unset => {}
    }
    if let Some(message) = span.status_message.as_deref().filter(|m| !m.is_empty()) {
        tags.push(("otel.status_description", json!(message)));
    }
    if let Some(name) = span.scope_name.as_deref().filter(|n| !n.is_empty()) {
        tags.push(("otel.scope.name", json!(name)));
    }
    if let Some(version) = span.scope_version.as_deref().filter(|v| !v.is_empty()) {
        tags.push(("otel.scope.version", json!(version)));
    }
    tags
}

/// Whether some span of `trace` meets every span-level condition of `query`, as Jaeger's
/// stores decide it: service, operation, kind, duration and every tag on one span, a tag
/// found among the span's tags, its process' tags or its logs' fields.
pub fn matches(query: &TraceQuery, trace: &Trace) -> bool {
    let start = trace.start_ns();
    if start < query.start_ns || start > query.end_ns {
        return false;
    }
    (0..trace.spans.len()).any(|i| {
        let span = &trace.spans[i];
        if query.service.as_deref().is_some_and(|s| s != span.service_name)
            || query.operation.as_deref().is_some_and(|o| o != span.name)
            || query.span_kind.as_deref().is_some_and(|k| k != span.kind.as_str())
            || query.min_duration_ns.is_some_and(|min| span.duration_ns() < min)
            || query.max_duration_ns.is_some_and(|max| span.duration_ns() > max)
        {
            return false;
        }
        let special = special_tags(trace, i);
        query.tags.iter().all(|(key, wanted)| {
            let text_of = |value: &Json| match value {
                Json::String(s) => s.clone(),
                other => other.to_string(),
            };
            span.attributes.get(key).or_else(|| span.resource.get(key)).is_some_and(|v| v == wanted)
                || special.iter().any(|(k, v)| k == key && text_of(v) == *wanted)
                || span.events.iter().any(|event| {
                    (key == "event" && event.name == *wanted)
                        || event.attributes.get(key).is_some_and(|v| text_of(v) == *wanted)
                })
        })
    })
}

/// Jaeger's spelling of a trace id: 16 digits when the high half is zero, else 32.
fn jaeger_trace_id(id: &str) -> &str {
    match id.len() {
        32 if id[..16].bytes().all(|b| b == b'0') => &id[16..],
        _ => id,
    }
}

/// A tag of Jaeger's model. Stored attribute values are text; Jaeger's UI shows them as such.
fn tag(key: &str, value: &Json) -> Json {
    let kind = match value {
        Json::Bool(_) => "bool",
        Json::Number(n) if n.is_i64() || n.is_u64() => "int64",
        Json::Number(_) => "float64",
        _ => "string",
    };
    let value = match value {
        Json::String(_) | Json::Bool(_) | Json::Number(_) => value.clone(),
        other => json!(other.to_string()),
    };
    json!({ "key": key, "type": kind, "value": value })
}

/// A trace in Jaeger's JSON model, one process per distinct resource.
pub fn trace_json(trace: &Trace) -> Json {
    let trace_id = jaeger_trace_id(&trace.trace_id);
    let mut processes: Vec<&BTreeMap<String, String>> = Vec::new();
    let mut spans = Vec::with_capacity(trace.spans.len());
    for (i, span) in trace.spans.iter().enumerate() {
        let process = match processes.iter().position(|resource| **resource == span.resource) {
            Some(p) => p,
            None => {
                processes.push(&span.resource);
                processes.len() - 1
            }
        };
        let mut references = Vec::new();
        if let Some(parent) = &span.parent_span_id {
            references.push(json!({ "refType": "CHILD_OF", "traceID": trace_id, "spanID": parent }));
        }
        for link in &span.links {
            references.push(json!({
                "refType": "FOLLOWS_FROM",
                "traceID": jaeger_trace_id(&link.trace_id),
                "spanID": link.span_id,
            }));
        }
        let mut tags: Vec<Json> = span.attributes.iter().map(|(k, v)| tag(k, &json!(v))).collect();
        tags.extend(special_tags(trace, i).iter().map(|(k, v)| tag(k, v)));
        let logs: Vec<Json> = span
            .events
            .iter()
            .map(|event| {
                let mut fields = vec![tag("event", &json!(event.name))];
                fields.extend(event.attributes.iter().map(|(k, v)| tag(k, v)));
                json!({ "timestamp": event.time_ns / 1000, "fields": fields })
            })
            .collect();
        spans.push(json!({
            "traceID": trace_id,
            "spanID": span.span_id,
            "operationName": span.name,
            "references": references,
            "startTime": span.start_ns / 1000,
            "duration": span.duration_ns() / 1000,
            "tags": tags,
            "logs": logs,
            "processID": format!("p{}", process + 1),
            "warnings": Json::Null,
            "flags": span.flags,
        }));
    }
    let processes: serde_json::Map<String, Json> = processes
        .iter()
        .enumerate()
        .map(|(p, resource)| {
            let service = resource.get("service.name").cloned().unwrap_or_default();
            let tags: Vec<Json> =
                resource.iter().filter(|(k, _)| *k != "service.name").map(|(k, v)| tag(k, &json!(v))).collect();
            (format!("p{}", p + 1), json!({ "serviceName": service, "tags": tags }))
        })
        .collect();
    json!({ "traceID": trace_id, "spans": spans, "processes": processes, "warnings": Json::Null })
}

/// Jaeger's answer envelope around `data`.
pub fn envelope(data: Json) -> Json {
    let total = data.as_array().map_or(0, Vec::len);
    json!({ "data": data, "total": total, "limit": 0, "offset": 0, "errors": Json::Null })
}

/// Jaeger's error envelope.
pub fn error_envelope(code: u16, message: &str) -> Json {
    json!({ "data": Json::Null, "total": 0, "limit": 0, "offset": 0, "errors": [{ "code": code, "msg": message }] })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::traces::model::tests::span;

    fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    const NOW: i64 = 1_700_000_000_000_000_000;

    #[test]
    fn search_parameters_parse_as_jaeger_reads_them() {
        let query = parse_trace_query(
            &params(&[
                ("service", "api"),
                ("operation", "GET /"),
                ("tags", r#"{"http.status_code":500,"db":"pg"}"#),
                ("tag", "region:eu"),
                ("minDuration", "1.5ms"),
                ("maxDuration", "2s"),
                ("start", "1000"),
                ("end", "5000"),
                ("limit", "20"),
                ("lookback", "custom"),
            ]),
            NOW,
            1000,
        )
        .unwrap();
        assert_eq!(query.service.as_deref(), Some("api"));
        assert_eq!(query.tags.get("http.status_code").map(String::as_str), Some("500"));
        assert_eq!(query.tags.get("region").map(String::as_str), Some("eu"));
        assert_eq!((query.min_duration_ns, query.max_duration_ns), (Some(1_500_000), Some(2_000_000_000)));
        assert_eq!((query.start_ns, query.end_ns, query.limit), (1_000_000, 5_000_000, 20));

        let defaults = parse_trace_query(&params(&[("service", "api")]), NOW, 1000).unwrap();
        assert_eq!((defaults.start_ns, defaults.end_ns, defaults.limit), (NOW - DEFAULT_LOOKBACK_NS, NOW, 100));
        let zero = parse_trace_query(&params(&[("service", "api"), ("limit", "0")]), NOW, 1000).unwrap();
        assert_eq!(zero.limit, DEFAULT_LIMIT);
        let by_id = parse_trace_query(&params(&[("traceID", "AB")]), NOW, 1000).unwrap();
        assert_eq!(by_id.trace_ids, vec![format!("{:0>32}", "ab")]);

        for bad in [
            vec![("lookback", "1h")],
            vec![("service", "a"), ("minDuration", "soon")],
            vec![("service", "a"), ("minDuration", "2s"), ("maxDuration", "1s")],
            vec![("service", "a"), ("start", "x")],
            vec![("service", "a"), ("start", "9"), ("end", "1")],
            vec![("service", "a"), ("end", "99999999999999999")],
            vec![("service", "a"), ("limit", "-1")],
            vec![("service", "a"), ("limit", "1001")],
            vec![("service", "a"), ("tags", "{")],
            vec![("service", "a"), ("tag", "novalue")],
            vec![("traceID", "xyz")],
        ] {
            assert!(parse_trace_query(&params(&bad), NOW, 1000).is_err(), "{bad:?}");
        }
    }

    fn sample() -> Trace {
        let mut root = span("aa", None, "front", "GET /", 0, 300);
        root.kind = SpanKind::Server;
        let mut child = span("bb", Some("aa"), "db", "query", 10, 110);
        child.status = SpanStatus::Error;
        child.attributes.insert("db.system".into(), "pg".into());
        child.events.push(crate::traces::model::Event {
            time_ns: 50_000_000,
            name: "exception".into(),
            attributes: serde_json::from_str(r#"{"exception.type":"Timeout","retries":3}"#).unwrap(),
        });
        Trace::new(format!("{:0>32}", "1f"), vec![root, child])
    }

    #[test]
    fn traces_match_when_one_span_meets_every_condition() {
        let trace = sample();
        let query = |pairs: &[(&str, &str)]| {
            let mut all = params(&[("start", "0"), ("end", "1000000000")]);
            all.extend(params(pairs));
            parse_trace_query(&all, NOW, 1000).unwrap()
        };
        assert!(matches(&query(&[("service", "db"), ("tag", "db.system:pg"), ("tag", "error:true")]), &trace));
        assert!(matches(&query(&[("service", "front"), ("spanKind", "server"), ("minDuration", "300ms")]), &trace));
        assert!(matches(&query(&[("service", "db"), ("tag", "event:exception"), ("tag", "retries:3")]), &trace));
        assert!(matches(&query(&[("service", "db"), ("tag", "service.name:db")]), &trace));
        // Conditions met by different spans do not make a match.
        assert!(!matches(&query(&[("service", "front"), ("tag", "db.system:pg")]), &trace));
        assert!(!matches(&query(&[("service", "db"), ("maxDuration", "50ms")]), &trace));
        let outside = parse_trace_query(&params(&[("service", "db"), ("start", "5000000")]), NOW, 1000).unwrap();
        assert!(!matches(&outside, &trace));
    }

    #[test]
    fn traces_take_jaegers_json_shape() {
        let json = trace_json(&sample());
        assert_eq!(json["traceID"], "000000000000001f");
        let spans = json["spans"].as_array().unwrap();
        assert_eq!(
            spans[1]["references"][0],
            json!({"refType": "CHILD_OF", "traceID": "000000000000001f", "spanID": spans[0]["spanID"]})
        );
        assert_eq!((spans[1]["startTime"].as_i64(), spans[1]["duration"].as_i64()), (Some(10_000), Some(100_000)));
        let tags = spans[1]["tags"].as_array().unwrap();
        assert!(tags.contains(&json!({"key": "error", "type": "bool", "value": true})), "{tags:?}");
        assert!(tags.contains(&json!({"key": "db.system", "type": "string", "value": "pg"})), "{tags:?}");
        let log = &spans[1]["logs"][0];
        assert_eq!(log["timestamp"], 50_000);
        assert!(log["fields"].as_array().unwrap().contains(&json!({"key": "retries", "type": "int64", "value": 3})));
        assert_ne!(spans[0]["processID"], spans[1]["processID"]);
        assert_eq!(json["processes"][spans[1]["processID"].as_str().unwrap()]["serviceName"], "db");
        assert_eq!(envelope(json!([1, 2]))["total"], 2);
        assert_eq!(error_envelope(400, "bad")["errors"][0]["msg"], "bad");
    }
}
