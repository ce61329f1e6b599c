//! Tempo metrics-generator style metrics computed from OTLP traces: span metrics
//! (`traces_spanmetrics_*`, [`calls`]) and a service graph (`traces_service_graph_*`, [`graph`]),
//! produced as a Prometheus remote-write [`WriteRequest`] so they land in the metrics store like
//! any other remote-written series.
//!
//! Everything runs on the caller's clock: [`SpanMetricsGenerator::observe`] and
//! [`SpanMetricsGenerator::collect`] take `now_ms`, so edge expiry and staleness are
//! deterministic and testable without sleeping.
//!
//! Memory is bounded by configuration: at most `max_series` label sets (shared by both
//! processors; one label set of span metrics emits `calls_total`, `size_total` and the
//! `buckets + 3` latency series, one edge emits two counters and two histograms) and at most
//! `service_graph_max_items` half-seen edges. Label values are cut at [`MAX_LABEL_VALUE_BYTES`].
//!
//! Series are cumulative and live until they have not been updated for [`STALE_AFTER_MS`]
//! (Tempo's `stale_duration` default). The `collect` that drops a series writes one Prometheus
//! staleness marker for each of its samples so queries stop at once instead of after the
//! lookback window; afterwards nothing is emitted for it and its slot under `max_series` is free.
//! A series that comes back starts from zero again, which `rate()` reads as a counter reset.

pub mod calls;
pub mod config;
pub mod graph;
mod recorder;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;

use crate::prompb::{Label, MetricMetadata, STALE_NAN_BITS, Sample, TimeSeries, WriteRequest};
pub use config::SpanMetricsConfig;
pub(crate) use recorder::SpanMetricsRecorder;

/// A series not updated for this long is dropped (Tempo's registry `stale_duration`).
pub const STALE_AFTER_MS: i64 = 15 * 60 * 1000;

/// Tempo's `max_label_value_length` default; longer values are cut at a char boundary.
pub const MAX_LABEL_VALUE_BYTES: usize = 2048;

/// Nested array/kvlist attribute values deeper than this are rendered as empty, so a hostile
/// value cannot recurse the stack away.
const MAX_VALUE_DEPTH: usize = 8;

/// Every `__name__` the generator can emit.
pub fn metric_names() -> &'static [&'static str] {
    &[
        calls::CALLS_TOTAL,
        "traces_spanmetrics_latency_bucket",
        "traces_spanmetrics_latency_sum",
        "traces_spanmetrics_latency_count",
        calls::SIZE_TOTAL,
        graph::REQUEST_TOTAL,
        graph::REQUEST_FAILED_TOTAL,
        "traces_service_graph_request_server_seconds_bucket",
        "traces_service_graph_request_server_seconds_sum",
        "traces_service_graph_request_server_seconds_count",
        "traces_service_graph_request_client_seconds_bucket",
        "traces_service_graph_request_client_seconds_sum",
        "traces_service_graph_request_client_seconds_count",
        graph::UNPAIRED_SPANS_TOTAL,
        graph::DROPPED_SPANS_TOTAL,
    ]
}

/// Computes span metrics and the service graph from the traces it is shown.
pub struct SpanMetricsGenerator {
    enabled: bool,
    budget: SeriesBudget,
    calls: calls::SpanMetrics,
    graph: graph::ServiceGraph,
}

impl SpanMetricsGenerator {
    /// Does not fail: the caller is expected to have run [`SpanMetricsConfig::validate`], and
    /// anything it would reject is made harmless here (buckets are sorted, deduplicated and
    /// stripped of non-positive or non-finite bounds; zero limits simply drop everything).
    pub fn new(config: SpanMetricsConfig) -> Self {
        let layout = HistogramLayout::new(&config.histogram_buckets);
        SpanMetricsGenerator {
            enabled: config.enabled,
            budget: SeriesBudget { max: config.max_series, used: 0, dropped: 0 },
            calls: calls::SpanMetrics::new(&config.dimensions, layout.clone()),
            graph: graph::ServiceGraph::new(layout, config.service_graph_wait_secs, config.service_graph_max_items),
        }
    }

    /// Folds every span of `request` into the metrics, as of the caller's `now_ms`.
    pub fn observe(&mut self, request: &ExportTraceServiceRequest, now_ms: i64) {
        if !self.enabled {
            return;
        }
        for resource_spans in &request.resource_spans {
            let resource_attrs = resource_spans.resource.as_ref().map(|r| r.attributes.as_slice()).unwrap_or_default();
            let service = find_attr("service.name", &[resource_attrs]).unwrap_or_else(|| "unknown_service".to_string());
            for scope_spans in &resource_spans.scope_spans {
                for span in &scope_spans.spans {
                    self.calls.observe(&service, resource_attrs, span, now_ms, &mut self.budget);
                    self.graph.observe(&service, resource_attrs, span, now_ms, &mut self.budget);
                }
            }
        }
    }

    /// Expires half-seen edges older than the wait, drops stale series, and returns every
    /// remaining series' cumulative value stamped `now_ms`.
    pub fn collect(&mut self, now_ms: i64) -> WriteRequest {
        if !self.enabled {
            return WriteRequest::default();
        }
        let mut emitter = Emitter { timeseries: Vec::new(), timestamp_ms: now_ms, stale: true };
        self.graph.expire(now_ms, &mut self.budget);
        self.calls.evict_stale(now_ms, &mut self.budget, &mut emitter);
        self.graph.evict_stale(now_ms, &mut self.budget, &mut emitter);
        emitter.stale = false;
        self.calls.emit(&mut emitter);
        self.graph.emit(&mut emitter);
        // Metadata rides along only with data, so an idle generator yields an empty request the
        // caller can skip sending.
        if emitter.timeseries.is_empty() {
            return WriteRequest::default();
        }
        let metadata = calls::metadata().into_iter().chain(graph::metadata()).collect();
        WriteRequest { timeseries: emitter.timeseries, metadata }
    }

    /// Label sets currently held (both processors), at most `max_series`.
    pub fn series_count(&self) -> usize {
        self.budget.used
    }

    /// Updates that needed a new label set while `max_series` were already held.
    pub fn dropped_series(&self) -> u64 {
        self.budget.dropped
    }

    /// Half-seen edges waiting for their peer span, at most `service_graph_max_items`.
    pub fn pending_edges(&self) -> usize {
        self.graph.pending_len()
    }
}

/// Cardinality limit shared by both processors, so one of them cannot starve memory for the
/// other beyond the single configured ceiling.
pub(crate) struct SeriesBudget {
    max: usize,
    used: usize,
    dropped: u64,
}

impl SeriesBudget {
    /// Claims a slot for a new label set, or counts the refusal.
    pub(crate) fn admit(&mut self) -> bool {
        if self.used < self.max {
            self.used += 1;
            true
        } else {
            self.dropped = self.dropped.saturating_add(1);
            false
        }
    }

    pub(crate) fn release(&mut self) {
        self.used = self.used.saturating_sub(1);
    }
}

/// Bucket bounds and their pre-rendered `le` values, shared by every histogram of a processor.
#[derive(Clone)]
pub(crate) struct HistogramLayout {
    bounds: Vec<f64>,
    le: Vec<String>,
}

impl HistogramLayout {
    fn new(buckets: &[f64]) -> Self {
        let mut bounds: Vec<f64> = buckets.iter().copied().filter(|b| b.is_finite() && *b > 0.0).collect();
        bounds.sort_by(f64::total_cmp);
        bounds.dedup();
        // Rust's shortest round-trip `Display` is Go's `FormatFloat(b, 'f', -1, 64)`, which
        // Tempo and client_golang use for `le`: 0.002 -> "0.002", 1.0 -> "1".
        let le = bounds.iter().map(|b| b.to_string()).collect();
        HistogramLayout { bounds, le }
    }
}

/// A classic Prometheus histogram: per-bucket counts (the last one is `+Inf`), made cumulative
/// only when emitted.
#[derive(Clone)]
pub(crate) struct Histogram {
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub(crate) fn new(layout: &HistogramLayout) -> Self {
        Histogram { counts: vec![0; layout.bounds.len() + 1], sum: 0.0, count: 0 }
    }

    pub(crate) fn observe(&mut self, layout: &HistogramLayout, value: f64) {
        // `le` is inclusive: the first bound >= value takes it, past the last one is `+Inf`.
        let index = layout.bounds.partition_point(|b| *b < value);
        if let Some(slot) = self.counts.get_mut(index) {
            *slot = slot.saturating_add(1);
        }
        self.sum += value;
        self.count = self.count.saturating_add(1);
    }

    pub(crate) fn emit(&self, layout: &HistogramLayout, name: &str, labels: &[(&str, &str)], out: &mut Emitter) {
        let bucket_name = format!("{name}_bucket");
        let mut cumulative = 0u64;
        for (le, count) in layout.le.iter().zip(&self.counts) {
            cumulative = cumulative.saturating_add(*count);
            out.push_with_le(&bucket_name, labels, le, cumulative as f64);
        }
        out.push_with_le(&bucket_name, labels, "+Inf", self.count as f64);
        out.push(&format!("{name}_sum"), labels, self.sum);
        out.push(&format!("{name}_count"), labels, self.count as f64);
    }
}

/// Accumulates output series. In stale mode every value becomes the staleness marker, so the
/// same emit code that writes a live series also retires it.
pub(crate) struct Emitter {
    timeseries: Vec<TimeSeries>,
    timestamp_ms: i64,
    stale: bool,
}

impl Emitter {
    pub(crate) fn push(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.push_series(name, labels, None, value);
    }

    fn push_with_le(&mut self, name: &str, labels: &[(&str, &str)], le: &str, value: f64) {
        self.push_series(name, labels, Some(le), value);
    }

    fn push_series(&mut self, name: &str, labels: &[(&str, &str)], le: Option<&str>, value: f64) {
        let mut out = Vec::with_capacity(labels.len() + 2);
        out.push(Label { name: "__name__".to_string(), value: name.to_string() });
        // Prometheus treats an empty value as an absent label, so it is not written at all.
        out.extend(
            labels
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(n, v)| Label { name: (*n).to_string(), value: (*v).to_string() }),
        );
        if let Some(le) = le {
            out.push(Label { name: "le".to_string(), value: le.to_string() });
        }
        // Remote write requires labels sorted by name (byte order, so `__name__` sorts after
        // any upper-case name and before lower-case ones).
        out.sort_by(|a, b| a.name.cmp(&b.name));
        let value = if self.stale { f64::from_bits(STALE_NAN_BITS) } else { value };
        self.timeseries.push(TimeSeries { labels: out, samples: vec![Sample { value, timestamp: self.timestamp_ms }] });
    }
}

pub(crate) fn metadata(kind: i32, family: &str, help: &str, unit: &str) -> MetricMetadata {
    MetricMetadata {
        r#type: kind,
        metric_family_name: family.to_string(),
        help: help.to_string(),
        unit: unit.to_string(),
    }
}

/// `prometheus.MetricMetadata.MetricType` values used here.
pub(crate) const METADATA_COUNTER: i32 = 1;
pub(crate) const METADATA_HISTOGRAM: i32 = 3;

/// Span duration in seconds; a span ending before it starts counts as zero, as in Tempo.
pub(crate) fn duration_secs(span: &Span) -> f64 {
    span.end_time_unix_nano.saturating_sub(span.start_time_unix_nano) as f64 / 1e9
}

/// The first attribute named `key` in the lists, searched in order, rendered as Tempo's
/// `StringifyAnyValue` does and cut to [`MAX_LABEL_VALUE_BYTES`]. Empty values count as absent,
/// because an empty label value is an absent label.
pub(crate) fn find_attr(key: &str, lists: &[&[KeyValue]]) -> Option<String> {
    let kv = lists.iter().flat_map(|list| list.iter()).find(|kv| kv.key == key)?;
    let mut value = String::new();
    stringify(kv.value.as_ref(), &mut value, 0);
    let value = clamp_label_value(value);
    (!value.is_empty()).then_some(value)
}

fn stringify(value: Option<&AnyValue>, out: &mut String, depth: usize) {
    if depth > MAX_VALUE_DEPTH || out.len() > MAX_LABEL_VALUE_BYTES {
        return;
    }
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => out.push_str(s),
        Some(any_value::Value::BoolValue(b)) => out.push_str(if *b { "true" } else { "false" }),
        Some(any_value::Value::IntValue(i)) => out.push_str(&i.to_string()),
        Some(any_value::Value::DoubleValue(d)) => out.push_str(&format_double(*d)),
        // Tempo renders bytes as empty; hex keeps the value usable as a label.
        Some(any_value::Value::BytesValue(b)) => out.push_str(&hex::encode(b)),
        Some(any_value::Value::ArrayValue(array)) => {
            out.push('[');
            for v in &array.values {
                stringify(Some(v), out, depth + 1);
            }
            out.push(']');
        }
        Some(any_value::Value::KvlistValue(list)) => {
            out.push('{');
            for kv in &list.values {
                out.push_str(&kv.key);
                out.push(':');
                stringify(kv.value.as_ref(), out, depth + 1);
            }
            out.push('}');
        }
        Some(any_value::Value::StringValueStrindex(_)) | None => {}
    }
}

/// Go's `FormatFloat(d, 'f', -1, 64)`, including its spelling of the non-finite values.
fn format_double(d: f64) -> String {
    if d.is_nan() {
        "NaN".to_string()
    } else if d.is_infinite() {
        if d > 0.0 { "+Inf".to_string() } else { "-Inf".to_string() }
    } else {
        d.to_string()
    }
}

/// Cuts `value` to at most [`MAX_LABEL_VALUE_BYTES`] on a char boundary.
pub(crate) fn clamp_label_value(mut value: String) -> String {
    if value.len() > MAX_LABEL_VALUE_BYTES {
        let mut end = MAX_LABEL_VALUE_BYTES;
        while !value.is_char_boundary(end) {
            end -= 1;
        }
        value.truncate(end);
    }
    value
}

/// Builders for hand-made export requests and lookups into the output, shared by the tests.
#[cfg(test)]
pub(crate) mod testing {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
    use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};

    use crate::prompb::WriteRequest;

    pub(crate) fn attr(key: &str, value: &str) -> KeyValue {
        KeyValue {
            key: key.to_string(),
            value: Some(AnyValue { value: Some(any_value::Value::StringValue(value.to_string())) }),
            ..Default::default()
        }
    }

    /// Trace id `[trace; 16]`, span id `[id; 8]`, parent `[parent; 8]` (0: a root span).
    pub(crate) fn span(
        trace: u8,
        id: u8,
        parent: u8,
        kind: SpanKind,
        name: &str,
        duration_ns: u64,
        status: Option<StatusCode>,
    ) -> Span {
        let start = 1_700_000_000_000_000_000u64;
        Span {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            parent_span_id: if parent == 0 { Vec::new() } else { vec![parent; 8] },
            name: name.to_string(),
            kind: kind as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: start + duration_ns,
            status: status.map(|code| Status { message: String::new(), code: code as i32 }),
            ..Default::default()
        }
    }

    /// One resource per (service.name, spans) pair.
    pub(crate) fn request(batches: Vec<(&str, Vec<Span>)>) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: batches
                .into_iter()
                .map(|(service, spans)| ResourceSpans {
                    resource: Some(Resource { attributes: vec![attr("service.name", service)], ..Default::default() }),
                    scope_spans: vec![ScopeSpans { spans, ..Default::default() }],
                    ..Default::default()
                })
                .collect(),
        }
    }

    /// The value of the series named `name` whose other labels are exactly `labels`.
    pub(crate) fn value(out: &WriteRequest, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut want: Vec<(&str, &str)> = labels.to_vec();
        want.push(("__name__", name));
        want.sort_unstable();
        let matches: Vec<f64> = out
            .timeseries
            .iter()
            .filter(|ts| {
                let have: Vec<(&str, &str)> = ts.labels.iter().map(|l| (l.name.as_str(), l.value.as_str())).collect();
                have == want
            })
            .map(|ts| ts.samples[0].value)
            .collect();
        assert!(matches.len() <= 1, "duplicate series {name} {labels:?}");
        matches.first().copied()
    }

    /// All series named `name`.
    pub(crate) fn named<'a>(out: &'a WriteRequest, name: &'a str) -> impl Iterator<Item = Vec<(&'a str, &'a str)>> {
        out.timeseries
            .iter()
            .filter(move |ts| ts.labels.iter().any(|l| l.name == "__name__" && l.value == name))
            .map(|ts| ts.labels.iter().map(|l| (l.name.as_str(), l.value.as_str())).collect())
    }

    pub(crate) fn assert_labels_sorted(out: &WriteRequest) {
        for ts in &out.timeseries {
            assert!(ts.labels.windows(2).all(|w| w[0].name < w[1].name), "{:?}", ts.labels);
            assert!(ts.labels.iter().any(|l| l.name == "__name__"));
            assert!(ts.labels.iter().all(|l| !l.value.is_empty()));
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

    use super::testing::*;
    use super::*;

    fn unique_spans(count: usize) -> ExportTraceServiceRequest {
        let spans = (0..count).map(|i| span(1, 1, 0, SpanKind::Internal, &format!("op-{i}"), 1_000, None)).collect();
        request(vec![("svc", spans)])
    }

    #[test]
    fn max_series_drops_and_counts_new_label_sets() {
        let mut generator = SpanMetricsGenerator::new(SpanMetricsConfig::default());
        generator.observe(&unique_spans(10_001), 0);
        assert_eq!(generator.series_count(), 10_000);
        assert_eq!(generator.dropped_series(), 1);
        assert_eq!(generator.calls.len(), 10_000);

        // Existing series keep counting; only new label sets are refused.
        generator.observe(&unique_spans(10_001), 1);
        assert_eq!(generator.series_count(), 10_000);
        assert_eq!(generator.dropped_series(), 2);
        let out = generator.collect(2);
        assert_eq!(named(&out, calls::CALLS_TOTAL).count(), 10_000);
        let labels = [("service", "svc"), ("span_kind", "SPAN_KIND_INTERNAL"), ("status_code", "STATUS_CODE_UNSET")];
        let mut first = labels.to_vec();
        first.push(("span_name", "op-0"));
        assert_eq!(testing::value(&out, calls::CALLS_TOTAL, &first), Some(2.0));
        let mut last = labels.to_vec();
        last.push(("span_name", "op-10000"));
        assert_eq!(testing::value(&out, calls::CALLS_TOTAL, &last), None);
    }

    #[test]
    fn stale_series_are_retired_with_a_marker_and_free_their_slot() {
        let config = SpanMetricsConfig { max_series: 1, ..Default::default() };
        let mut generator = SpanMetricsGenerator::new(config);
        generator.observe(&unique_spans(1), 0);
        assert_eq!(generator.collect(STALE_AFTER_MS - 1).timeseries.len(), 19);

        let out = generator.collect(STALE_AFTER_MS);
        assert_eq!(out.timeseries.len(), 19);
        assert!(out.timeseries.iter().all(|ts| crate::prompb::is_stale_nan(ts.samples[0].value)));
        assert_eq!(generator.series_count(), 0);
        assert!(generator.collect(STALE_AFTER_MS + 1).timeseries.is_empty());

        // The slot is free again for a new label set.
        let spans = vec![span(1, 1, 0, SpanKind::Internal, "new", 1_000, None)];
        generator.observe(&request(vec![("svc", spans)]), STALE_AFTER_MS + 2);
        assert_eq!(generator.series_count(), 1);
        assert_eq!(generator.dropped_series(), 0);
    }

    #[test]
    fn disabled_generator_ignores_input() {
        let mut generator = SpanMetricsGenerator::new(SpanMetricsConfig { enabled: false, ..Default::default() });
        generator.observe(&unique_spans(3), 0);
        assert_eq!(generator.series_count(), 0);
        assert_eq!(generator.collect(0), WriteRequest::default());
    }

    #[test]
    fn invalid_buckets_are_made_harmless() {
        let config = SpanMetricsConfig { histogram_buckets: vec![1.0, f64::NAN, -1.0, 0.5, 0.5], ..Default::default() };
        let mut generator = SpanMetricsGenerator::new(config);
        generator.observe(&unique_spans(1), 0);
        let out = generator.collect(0);
        let les: Vec<&str> = named(&out, "traces_spanmetrics_latency_bucket")
            .filter_map(|labels| labels.iter().find(|(n, _)| *n == "le").map(|(_, v)| *v))
            .collect();
        assert_eq!(les, ["0.5", "1", "+Inf"]);
    }

    #[test]
    fn attribute_values_are_stringified_like_tempo_and_bounded() {
        use opentelemetry_proto::tonic::common::v1::ArrayValue;
        let int = KeyValue {
            key: "n".into(),
            value: Some(AnyValue { value: Some(any_value::Value::IntValue(-7)) }),
            ..Default::default()
        };
        let list = KeyValue {
            key: "l".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::ArrayValue(ArrayValue {
                    values: vec![
                        AnyValue { value: Some(any_value::Value::BoolValue(true)) },
                        AnyValue { value: Some(any_value::Value::DoubleValue(1.5)) },
                    ],
                })),
            }),
            ..Default::default()
        };
        let long = attr("s", &"é".repeat(MAX_LABEL_VALUE_BYTES));
        let attrs = [int, list, long];
        assert_eq!(find_attr("n", &[&attrs]).as_deref(), Some("-7"));
        assert_eq!(find_attr("l", &[&attrs]).as_deref(), Some("[true1.5]"));
        let cut = find_attr("s", &[&attrs]).unwrap();
        assert_eq!(cut.len(), MAX_LABEL_VALUE_BYTES);
        assert_eq!(find_attr("missing", &[&attrs]), None);

        // A deeply nested value neither recurses without bound nor panics.
        let mut deep = AnyValue { value: Some(any_value::Value::StringValue("x".into())) };
        for _ in 0..1_000 {
            deep = AnyValue { value: Some(any_value::Value::ArrayValue(ArrayValue { values: vec![deep] })) };
        }
        let nested = [KeyValue { key: "d".into(), value: Some(deep), ..Default::default() }];
        assert!(find_attr("d", &[&nested]).unwrap().len() < 64);
    }

    #[test]
    fn metric_names_cover_every_emitted_name() {
        let config = SpanMetricsConfig { service_graph_max_items: 1, ..Default::default() };
        let mut generator = SpanMetricsGenerator::new(config);
        let spans = vec![
            span(1, 1, 0, SpanKind::Server, "root", 1_000, None),
            span(1, 2, 1, SpanKind::Client, "out", 1_000, None),
            span(1, 3, 1, SpanKind::Client, "out", 1_000, None),
        ];
        generator.observe(&request(vec![("svc", spans)]), 0);
        let out = generator.collect(60_000);
        for ts in &out.timeseries {
            let name = &ts.labels.iter().find(|l| l.name == "__name__").unwrap().value;
            assert!(metric_names().contains(&name.as_str()), "{name}");
        }
        assert_eq!(metric_names().len(), 15);
    }
}
