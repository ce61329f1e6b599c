//! Span metrics (Tempo's `span-metrics` processor): per label set of service, span name, kind,
//! status and the configured dimensions, a call counter, a latency histogram and the total
//! encoded size of the spans.
//!
//! The three metrics always change together for the same label set, so they share one map entry
//! (and one slot of the series budget) instead of three.

use std::collections::HashMap;

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use prost::Message;

use super::config::sanitize_label_name;
use super::{
    Emitter, Histogram, HistogramLayout, METADATA_COUNTER, METADATA_HISTOGRAM, STALE_AFTER_MS, SeriesBudget,
    clamp_label_value, duration_secs, find_attr,
};
use crate::prompb::MetricMetadata;

pub const CALLS_TOTAL: &str = "traces_spanmetrics_calls_total";
pub const LATENCY: &str = "traces_spanmetrics_latency";
pub const SIZE_TOTAL: &str = "traces_spanmetrics_size_total";

/// Label names sorted, empty values removed: the identity of a series.
type LabelSet = Vec<(String, String)>;

struct SpanSeries {
    calls: u64,
    size_bytes: u64,
    latency: Histogram,
    last_update_ms: i64,
}

pub(crate) struct SpanMetrics {
    layout: HistogramLayout,
    /// (attribute key, label name) for each configured dimension, in configuration order.
    dimensions: Vec<(String, String)>,
    series: HashMap<LabelSet, SpanSeries>,
}

impl SpanMetrics {
    pub(crate) fn new(dimensions: &[String], layout: HistogramLayout) -> Self {
        let dimensions = dimensions.iter().map(|d| (d.clone(), sanitize_label_name(d))).collect();
        SpanMetrics { layout, dimensions, series: HashMap::new() }
    }

    pub(crate) fn observe(
        &mut self,
        service: &str,
        resource_attrs: &[KeyValue],
        span: &Span,
        now_ms: i64,
        budget: &mut SeriesBudget,
    ) {
        let labels = self.labels(service, resource_attrs, span);
        let entry = match self.series.get_mut(&labels) {
            Some(entry) => entry,
            None => {
                if !budget.admit() {
                    return;
                }
                let fresh = SpanSeries {
                    calls: 0,
                    size_bytes: 0,
                    latency: Histogram::new(&self.layout),
                    last_update_ms: now_ms,
                };
                self.series.entry(labels).or_insert(fresh)
            }
        };
        entry.calls = entry.calls.saturating_add(1);
        entry.size_bytes = entry.size_bytes.saturating_add(span.encoded_len() as u64);
        entry.latency.observe(&self.layout, duration_secs(span));
        entry.last_update_ms = entry.last_update_ms.max(now_ms);
    }

    fn labels(&self, service: &str, resource_attrs: &[KeyValue], span: &Span) -> LabelSet {
        let mut labels: LabelSet = Vec::with_capacity(4 + self.dimensions.len());
        labels.push(("service".to_string(), service.to_string()));
        labels.push(("span_name".to_string(), clamp_label_value(span.name.clone())));
        labels.push(("span_kind".to_string(), span_kind_label(span.kind).to_string()));
        let code = span.status.as_ref().map_or(0, |s| s.code);
        labels.push(("status_code".to_string(), status_code_label(code).to_string()));
        for (key, label) in &self.dimensions {
            // The span's own attribute is the more specific one, so it wins over the resource's.
            let Some(value) = find_attr(key, &[&span.attributes, resource_attrs]) else { continue };
            // Two dimensions may sanitize to one label (`a.b` and `a_b`, say, from different
            // SDKs); the later configured one that has a value wins, as in Tempo.
            match labels.iter_mut().find(|(name, _)| name == label) {
                Some(existing) => existing.1 = value,
                None => labels.push((label.clone(), value)),
            }
        }
        labels.retain(|(_, value)| !value.is_empty());
        labels.sort_unstable();
        labels
    }

    pub(crate) fn evict_stale(&mut self, now_ms: i64, budget: &mut SeriesBudget, out: &mut Emitter) {
        let layout = &self.layout;
        self.series.retain(|labels, series| {
            let fresh = now_ms.saturating_sub(series.last_update_ms) < STALE_AFTER_MS;
            if !fresh {
                emit_series(layout, labels, series, out);
                budget.release();
            }
            fresh
        });
    }

    pub(crate) fn emit(&self, out: &mut Emitter) {
        for (labels, series) in &self.series {
            emit_series(&self.layout, labels, series, out);
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.series.len()
    }
}

fn emit_series(layout: &HistogramLayout, labels: &LabelSet, series: &SpanSeries, out: &mut Emitter) {
    let labels: Vec<(&str, &str)> = labels.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    out.push(CALLS_TOTAL, &labels, series.calls as f64);
    series.latency.emit(layout, LATENCY, &labels, out);
    out.push(SIZE_TOTAL, &labels, series.size_bytes as f64);
}

pub(crate) fn metadata() -> Vec<MetricMetadata> {
    vec![
        super::metadata(METADATA_COUNTER, CALLS_TOTAL, "Total count of the spans", ""),
        super::metadata(METADATA_HISTOGRAM, LATENCY, "Latency of the spans", "seconds"),
        super::metadata(METADATA_COUNTER, SIZE_TOTAL, "Total encoded size of the spans", "bytes"),
    ]
}

/// The protobuf enum name; values outside the enum fold into `UNSPECIFIED` rather than
/// becoming new label values (Tempo would print the number).
fn span_kind_label(kind: i32) -> &'static str {
    match SpanKind::try_from(kind) {
        Ok(SpanKind::Internal) => "SPAN_KIND_INTERNAL",
        Ok(SpanKind::Server) => "SPAN_KIND_SERVER",
        Ok(SpanKind::Client) => "SPAN_KIND_CLIENT",
        Ok(SpanKind::Producer) => "SPAN_KIND_PRODUCER",
        Ok(SpanKind::Consumer) => "SPAN_KIND_CONSUMER",
        Ok(SpanKind::Unspecified) | Err(_) => "SPAN_KIND_UNSPECIFIED",
    }
}

fn status_code_label(code: i32) -> &'static str {
    match StatusCode::try_from(code) {
        Ok(StatusCode::Ok) => "STATUS_CODE_OK",
        Ok(StatusCode::Error) => "STATUS_CODE_ERROR",
        Ok(StatusCode::Unset) | Err(_) => "STATUS_CODE_UNSET",
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::super::{SpanMetricsConfig, SpanMetricsGenerator};
    use super::*;

    #[test]
    fn server_and_client_spans_get_their_own_series() {
        let mut generator = SpanMetricsGenerator::new(SpanMetricsConfig::default());
        // 5 ms server span, 300 ms client span.
        let server = span(1, 10, 0, SpanKind::Server, "GET /users", 5_000_000, None);
        let client = span(1, 11, 10, SpanKind::Client, "SELECT users", 300_000_000, Some(StatusCode::Ok));
        generator.observe(&request(vec![("api", vec![server.clone(), client])]), 1_000);
        let out = generator.collect(2_000);

        let server_labels = [
            ("service", "api"),
            ("span_kind", "SPAN_KIND_SERVER"),
            ("span_name", "GET /users"),
            ("status_code", "STATUS_CODE_UNSET"),
        ];
        assert_eq!(value(&out, CALLS_TOTAL, &server_labels), Some(1.0));
        let client_labels = [
            ("service", "api"),
            ("span_kind", "SPAN_KIND_CLIENT"),
            ("span_name", "SELECT users"),
            ("status_code", "STATUS_CODE_OK"),
        ];
        assert_eq!(value(&out, CALLS_TOTAL, &client_labels), Some(1.0));

        // Cumulative buckets: 0.005 s falls in le=0.008 and everything above.
        let bucket = |le: &str| {
            let mut labels = server_labels.to_vec();
            labels.push(("le", le));
            value(&out, "traces_spanmetrics_latency_bucket", &labels)
        };
        assert_eq!(bucket("0.002"), Some(0.0));
        assert_eq!(bucket("0.004"), Some(0.0));
        assert_eq!(bucket("0.008"), Some(1.0));
        assert_eq!(bucket("16.384"), Some(1.0));
        assert_eq!(bucket("+Inf"), Some(1.0));
        let sum = value(&out, "traces_spanmetrics_latency_sum", &server_labels).unwrap();
        assert!((sum - 0.005).abs() < 1e-12, "{sum}");
        assert_eq!(value(&out, "traces_spanmetrics_latency_count", &server_labels), Some(1.0));
        assert_eq!(value(&out, SIZE_TOTAL, &server_labels), Some(server.encoded_len() as f64));

        let client_sum = value(&out, "traces_spanmetrics_latency_sum", &client_labels).unwrap();
        assert!((client_sum - 0.3).abs() < 1e-12);
        let mut client_bucket = client_labels.to_vec();
        client_bucket.push(("le", "0.256"));
        assert_eq!(value(&out, "traces_spanmetrics_latency_bucket", &client_bucket), Some(0.0));
        client_bucket.pop();
        client_bucket.push(("le", "0.512"));
        assert_eq!(value(&out, "traces_spanmetrics_latency_bucket", &client_bucket), Some(1.0));

        // Every series: sorted labels, `__name__` present, stamped with the collect time.
        assert_labels_sorted(&out);
        assert!(out.timeseries.iter().all(|ts| ts.samples.len() == 1 && ts.samples[0].timestamp == 2_000));
        // 2 label sets x (calls + size + 14 buckets + Inf + sum + count).
        let own =
            |ts: &&crate::prompb::TimeSeries| ts.labels.iter().any(|l| l.value.starts_with("traces_spanmetrics_"));
        assert_eq!(out.timeseries.iter().filter(own).count(), 2 * 19);
    }

    #[test]
    fn counts_accumulate_and_negative_durations_are_zero() {
        let mut generator = SpanMetricsGenerator::new(SpanMetricsConfig::default());
        let mut backwards = span(1, 10, 0, SpanKind::Internal, "work", 0, None);
        backwards.start_time_unix_nano = 2_000;
        backwards.end_time_unix_nano = 1_000;
        generator.observe(&request(vec![("svc", vec![backwards.clone()])]), 0);
        generator.observe(&request(vec![("svc", vec![backwards])]), 10);
        let out = generator.collect(20);
        let labels = [
            ("service", "svc"),
            ("span_kind", "SPAN_KIND_INTERNAL"),
            ("span_name", "work"),
            ("status_code", "STATUS_CODE_UNSET"),
        ];
        assert_eq!(value(&out, CALLS_TOTAL, &labels), Some(2.0));
        assert_eq!(value(&out, "traces_spanmetrics_latency_sum", &labels), Some(0.0));
        let mut first = labels.to_vec();
        first.push(("le", "0.002"));
        assert_eq!(value(&out, "traces_spanmetrics_latency_bucket", &first), Some(2.0));
        assert_eq!(generator.series_count(), 1);
    }

    #[test]
    fn dimensions_are_sanitized_and_looked_up_span_first() {
        let config = SpanMetricsConfig {
            dimensions: vec!["http.method".into(), "deployment.environment".into(), "service".into(), "absent".into()],
            ..Default::default()
        };
        let mut generator = SpanMetricsGenerator::new(config);
        let mut s = span(1, 10, 0, SpanKind::Server, "GET", 1_000, None);
        s.attributes.push(attr("http.method", "GET"));
        s.attributes.push(attr("service", "from-span"));
        let mut req = request(vec![("api", vec![s])]);
        let resource = req.resource_spans[0].resource.as_mut().unwrap();
        resource.attributes.push(attr("deployment.environment", "prod"));
        resource.attributes.push(attr("http.method", "ignored: span wins"));
        generator.observe(&req, 0);
        let out = generator.collect(0);
        let labels = [
            ("__service", "from-span"),
            ("deployment_environment", "prod"),
            ("http_method", "GET"),
            ("service", "api"),
            ("span_kind", "SPAN_KIND_SERVER"),
            ("span_name", "GET"),
            ("status_code", "STATUS_CODE_UNSET"),
        ];
        assert_eq!(value(&out, CALLS_TOTAL, &labels), Some(1.0));
        assert!(!out.timeseries.iter().any(|ts| ts.labels.iter().any(|l| l.name == "absent")));
    }

    #[test]
    fn missing_service_name_and_odd_enums_do_not_create_new_values() {
        let mut generator = SpanMetricsGenerator::new(SpanMetricsConfig::default());
        let mut s = span(1, 10, 0, SpanKind::Server, "", 1_000, None);
        s.kind = 42;
        s.status = Some(opentelemetry_proto::tonic::trace::v1::Status { message: String::new(), code: 9 });
        let mut req = request(vec![("x", vec![s])]);
        req.resource_spans[0].resource = None;
        generator.observe(&req, 0);
        let out = generator.collect(0);
        let labels = [
            ("service", "unknown_service"),
            ("span_kind", "SPAN_KIND_UNSPECIFIED"),
            ("status_code", "STATUS_CODE_UNSET"),
        ];
        assert_eq!(value(&out, CALLS_TOTAL, &labels), Some(1.0));
    }
}
