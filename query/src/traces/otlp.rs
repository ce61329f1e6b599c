//! A [`Trace`] back in OTLP's shape, as Tempo answers a trace by id: protobuf `tempopb.Trace`
//! (field 1, the `ResourceSpans`, wire-compatible with OTLP's `TracesData`, which is how Grafana
//! decodes it) and `tempopb.TraceByIDResponse` for `/api/v2`, or JSON.
//!
//! JSON follows the OTLP/JSON encoding (hex trace and span ids, integer enums, 64-bit integers
//! as strings), which OpenTelemetry tools and Grafana's trace import read; Tempo's own JSON
//! (gogo `jsonpb`) differs in writing ids in base64 and enums by name.
//!
//! Spans are grouped by resource, then by instrumentation scope. Resource and span attribute
//! values are strings, as the store keeps them; event and link attributes keep their types.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::common::v1::{AnyValue, ArrayValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span as OtlpSpan, Status, span};
use prost::Message;
use serde_json::{Map as JsonMap, Value as Json, json};

use super::model::{Span, SpanStatus, Trace};

/// `tempopb.Trace`: the resource spans of one trace (named `batches` in Tempo's v1 JSON).
#[derive(Clone, PartialEq, Message)]
pub struct TempoTrace {
    #[prost(message, repeated, tag = "1")]
    pub resource_spans: Vec<ResourceSpans>,
}

/// `tempopb.TraceByIDResponse`: `/api/v2/traces/<id>` (status 0 = COMPLETE).
#[derive(Clone, PartialEq, Message)]
pub struct TraceByIdResponse {
    #[prost(message, optional, tag = "1")]
    pub trace: Option<TempoTrace>,
    #[prost(int32, tag = "3")]
    pub status: i32,
    #[prost(string, tag = "4")]
    pub message: String,
}

fn string_value(text: &str) -> AnyValue {
    AnyValue { value: Some(any_value::Value::StringValue(text.to_string())) }
}

fn key_value(key: &str, value: AnyValue) -> KeyValue {
    KeyValue { key: key.to_string(), value: Some(value), ..Default::default() }
}

fn string_attributes(attributes: &BTreeMap<String, String>) -> Vec<KeyValue> {
    attributes.iter().map(|(k, v)| key_value(k, string_value(v))).collect()
}

/// A JSON value (an event's or link's attribute) as the OTLP value it was stored from.
fn any_value_of_json(value: &Json) -> AnyValue {
    let value = match value {
        Json::Bool(flag) => any_value::Value::BoolValue(*flag),
        Json::Number(number) => match number.as_i64() {
            Some(integer) => any_value::Value::IntValue(integer),
            None => any_value::Value::DoubleValue(number.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(text) => any_value::Value::StringValue(text.clone()),
        Json::Array(items) => {
            any_value::Value::ArrayValue(ArrayValue { values: items.iter().map(any_value_of_json).collect() })
        }
        Json::Object(_) | Json::Null => any_value::Value::StringValue(value.to_string()),
    };
    AnyValue { value: Some(value) }
}

fn json_attributes(attributes: &JsonMap<String, Json>) -> Vec<KeyValue> {
    attributes.iter().map(|(k, v)| key_value(k, any_value_of_json(v))).collect()
}

fn id_bytes(hex_id: &str) -> Vec<u8> {
    hex::decode(hex_id).unwrap_or_default()
}

fn nanos(ns: i64) -> u64 {
    u64::try_from(ns).unwrap_or(0)
}

fn otlp_span(span: &Span) -> OtlpSpan {
    OtlpSpan {
        trace_id: id_bytes(&span.trace_id),
        span_id: id_bytes(&span.span_id),
        trace_state: span.trace_state.clone().unwrap_or_default(),
        parent_span_id: span.parent_span_id.as_deref().map(id_bytes).unwrap_or_default(),
        flags: span.flags,
        name: span.name.clone(),
        kind: span.kind.otlp(),
        start_time_unix_nano: nanos(span.start_ns),
        end_time_unix_nano: nanos(span.end_ns),
        attributes: string_attributes(&span.attributes),
        events: span
            .events
            .iter()
            .map(|event| span::Event {
                time_unix_nano: nanos(event.time_ns),
                name: event.name.clone(),
                attributes: json_attributes(&event.attributes),
                dropped_attributes_count: 0,
            })
            .collect(),
        links: span
            .links
            .iter()
            .map(|link| span::Link {
                trace_id: id_bytes(&link.trace_id),
                span_id: id_bytes(&link.span_id),
                trace_state: link.trace_state.clone(),
                attributes: json_attributes(&link.attributes),
                ..Default::default()
            })
            .collect(),
        status: (span.status != SpanStatus::Unset || span.status_message.is_some())
            .then(|| Status { message: span.status_message.clone().unwrap_or_default(), code: span.status.otlp() }),
        ..Default::default()
    }
}

/// The spans of one instrumentation scope (name, version).
type ScopeGroup<'a> = ((Option<&'a str>, Option<&'a str>), Vec<OtlpSpan>);

/// The trace's spans grouped by resource and scope, in the order resources first appear.
pub fn resource_spans(trace: &Trace) -> Vec<ResourceSpans> {
    let mut resources: Vec<(&BTreeMap<String, String>, Vec<ScopeGroup<'_>>)> = Vec::new();
    for span in &trace.spans {
        let position = match resources.iter().position(|(resource, _)| *resource == &span.resource) {
            Some(position) => position,
            None => {
                resources.push((&span.resource, Vec::new()));
                resources.len() - 1
            }
        };
        let scopes = &mut resources[position].1;
        let scope = (span.scope_name.as_deref(), span.scope_version.as_deref());
        match scopes.iter_mut().find(|(s, _)| *s == scope) {
            Some((_, spans)) => spans.push(otlp_span(span)),
            None => scopes.push((scope, vec![otlp_span(span)])),
        }
    }
    resources
        .into_iter()
        .map(|(resource, scopes)| ResourceSpans {
            resource: Some(Resource { attributes: string_attributes(resource), ..Default::default() }),
            scope_spans: scopes
                .into_iter()
                .map(|((name, version), spans)| ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: name.unwrap_or_default().to_string(),
                        version: version.unwrap_or_default().to_string(),
                        ..Default::default()
                    }),
                    spans,
                    schema_url: String::new(),
                })
                .collect(),
            schema_url: String::new(),
        })
        .collect()
}

/// `/api/traces/<id>` as protobuf (`tempopb.Trace`).
pub fn v1_protobuf(trace: &Trace) -> Vec<u8> {
    TempoTrace { resource_spans: resource_spans(trace) }.encode_to_vec()
}

/// `/api/v2/traces/<id>` as protobuf (`tempopb.TraceByIDResponse`).
pub fn v2_protobuf(trace: &Trace) -> Vec<u8> {
    TraceByIdResponse {
        trace: Some(TempoTrace { resource_spans: resource_spans(trace) }),
        status: 0,
        message: String::new(),
    }
    .encode_to_vec()
}

fn resource_spans_json(trace: &Trace) -> Json {
    serde_json::to_value(resource_spans(trace)).unwrap_or(Json::Array(Vec::new()))
}

/// `/api/traces/<id>` as JSON: `{"batches": [ResourceSpans…]}`.
pub fn v1_json(trace: &Trace) -> Json {
    json!({ "batches": resource_spans_json(trace) })
}

/// `/api/v2/traces/<id>` as JSON: `{"trace": {"resourceSpans": […]}, "status": "COMPLETE"}`.
pub fn v2_json(trace: &Trace) -> Json {
    json!({ "trace": { "resourceSpans": resource_spans_json(trace) }, "status": "COMPLETE" })
}

#[cfg(test)]
mod tests {
    use super::super::model::tests::span;
    use super::super::model::{Event, SpanKind};
    use super::*;

    fn sample() -> Trace {
        let mut root = span("a", None, "web", "GET /", 0, 100);
        root.kind = SpanKind::Server;
        root.status = SpanStatus::Error;
        root.status_message = Some("boom".into());
        root.attributes.insert("http.status_code".into(), "500".into());
        root.events.push(Event {
            time_ns: 5_000_000,
            name: "exception".into(),
            attributes: serde_json::from_str(r#"{"n": 3, "x": 1.5, "ok": true}"#).unwrap(),
        });
        let child = span("b", Some("a"), "api", "call", 10, 50);
        let sibling = span("c", Some("a"), "web", "render", 60, 90);
        Trace::new("0".repeat(32), vec![root, child, sibling])
    }

    #[test]
    fn spans_are_grouped_by_resource_and_keep_their_fields() {
        let trace = sample();
        let groups = resource_spans(&trace);
        assert_eq!(groups.len(), 2, "web and api");
        let web = &groups[0];
        assert_eq!(web.scope_spans[0].spans.len(), 2);
        let root = &web.scope_spans[0].spans[0];
        assert_eq!(root.kind, 2);
        assert_eq!(root.status.as_ref().unwrap().code, 2);
        assert_eq!(root.events[0].attributes.len(), 3);
        assert!(root.parent_span_id.is_empty());
        assert_eq!(groups[1].scope_spans[0].spans[0].parent_span_id, root.span_id);
    }

    #[test]
    fn protobuf_decodes_as_otlp_traces_data() {
        let trace = sample();
        let decoded =
            opentelemetry_proto::tonic::trace::v1::TracesData::decode(v1_protobuf(&trace).as_slice()).unwrap();
        let spans: usize = decoded.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        assert_eq!(spans, 3);
        let v2 = TraceByIdResponse::decode(v2_protobuf(&trace).as_slice()).unwrap();
        assert_eq!(v2.trace.unwrap().resource_spans.len(), 2);
    }

    #[test]
    fn json_uses_hex_ids_and_string_nanoseconds() {
        let json = v1_json(&sample());
        let span = &json["batches"][0]["scopeSpans"][0]["spans"][0];
        assert_eq!(span["traceId"], "0".repeat(32));
        assert_eq!(span["startTimeUnixNano"], "0");
        assert_eq!(span["endTimeUnixNano"], "100000000");
        assert_eq!(v2_json(&sample())["trace"]["resourceSpans"].as_array().unwrap().len(), 2);
    }
}
