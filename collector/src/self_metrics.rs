//! Wake's own metrics as OTLP, so that they can be stored in Wake itself: the `prometheus`
//! registry behind a process's `/metrics` (`wake_server_*`, `wake_agent_*`) turned into an
//! [`ExportMetricsServiceRequest`].
//!
//! Every metric keeps its Prometheus name and gets an empty unit, so that the store's
//! Prometheus API (which shows OTLP metrics under Prometheus's OTLP translation rules: the name
//! split on anything but letters and digits and joined with `_`, `_total` once on monotonic
//! sums, `_bucket`/`_sum`/`_count` on histograms) shows it under exactly the name `/metrics`
//! has: `wake_agent_read_lines_total` stays `wake_agent_read_lines_total`, the histogram
//! `wake_server_query_duration_seconds` becomes `wake_server_query_duration_seconds_bucket`,
//! `_sum` and `_count`.
//!
//! Mapping:
//! - counter → monotonic cumulative Sum, starting at the process's start;
//! - gauge and untyped → Gauge;
//! - histogram → cumulative Histogram: the finite bucket bounds, per-bucket (not cumulative)
//!   counts with the overflow bucket last, count and sum;
//! - summary → Summary (quantiles, count, sum), which shows as `<name>{quantile=…}`,
//!   `<name>_sum` and `<name>_count` as in Prometheus.
//!
//! Labels become data point attributes; a metric's own timestamp, when it has one, is kept.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint, ResourceMetrics,
    ScopeMetrics, Sum, Summary, SummaryDataPoint, metric, number_data_point, summary_data_point::ValueAtQuantile,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prometheus::proto::{MetricFamily, MetricType};

use crate::identity::string_attribute;

/// The instrumentation scope of self-metrics.
pub const SCOPE_NAME: &str = "wake.self_metrics";

/// The registry's current values as one OTLP request under `resource`. `now_ns` is the time of
/// every point (unless the metric carries its own timestamp), `start_ns` the start of every
/// cumulative one (the process's start).
pub fn registry_to_otlp(
    registry: &prometheus::Registry,
    resource: Vec<KeyValue>,
    now_ns: u64,
    start_ns: u64,
) -> ExportMetricsServiceRequest {
    let metrics: Vec<Metric> =
        registry.gather().iter().filter_map(|family| family_to_metric(family, now_ns, start_ns)).collect();
    if metrics.is_empty() {
        return ExportMetricsServiceRequest::default();
    }
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource { attributes: resource, ..Default::default() }),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(InstrumentationScope {
                    name: SCOPE_NAME.into(),
                    version: env!("CARGO_PKG_VERSION").into(),
                    ..Default::default()
                }),
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// The host name (from the kernel, else `$HOSTNAME`), for `service.instance.id`.
pub fn host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok().or_else(|| std::env::var("HOSTNAME").ok())?;
    Some(name.trim().to_string()).filter(|name| !name.is_empty())
}

/// One metric family as an OTLP metric; `None` when it has no series (a vector whose label
/// values were never used).
fn family_to_metric(family: &MetricFamily, now_ns: u64, start_ns: u64) -> Option<Metric> {
    let series = family.get_metric();
    if series.is_empty() {
        return None;
    }
    let time = |metric: &prometheus::proto::Metric| match metric.timestamp_ms() {
        ms if ms > 0 => (ms as u64).saturating_mul(1_000_000),
        _ => now_ns,
    };
    let attributes = |metric: &prometheus::proto::Metric| -> Vec<KeyValue> {
        metric.get_label().iter().map(|label| string_attribute(label.name(), label.value())).collect()
    };
    let number = |metric: &prometheus::proto::Metric, value: f64, start: u64| NumberDataPoint {
        attributes: attributes(metric),
        start_time_unix_nano: start,
        time_unix_nano: time(metric),
        value: Some(number_data_point::Value::AsDouble(value)),
        ..Default::default()
    };
    let data = match family.get_field_type() {
        MetricType::COUNTER => metric::Data::Sum(Sum {
            data_points: series.iter().map(|m| number(m, m.get_counter().get_value(), start_ns)).collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
            is_monotonic: true,
        }),
        MetricType::GAUGE => metric::Data::Gauge(Gauge {
            data_points: series.iter().map(|m| number(m, m.get_gauge().get_value(), 0)).collect(),
        }),
        // An untyped value could be either; a gauge is what Prometheus treats it as. (The
        // accessors are deprecated as protobuf-specific, but a custom collector can still
        // produce untyped families.)
        #[allow(deprecated)]
        MetricType::UNTYPED => metric::Data::Gauge(Gauge {
            data_points: series.iter().map(|m| number(m, m.get_untyped().get_value(), 0)).collect(),
        }),
        MetricType::HISTOGRAM => metric::Data::Histogram(Histogram {
            data_points: series
                .iter()
                .map(|m| {
                    let histogram = m.get_histogram();
                    let (explicit_bounds, bucket_counts) = per_bucket(histogram);
                    HistogramDataPoint {
                        attributes: attributes(m),
                        start_time_unix_nano: start_ns,
                        time_unix_nano: time(m),
                        count: histogram.get_sample_count(),
                        sum: Some(histogram.get_sample_sum()),
                        bucket_counts,
                        explicit_bounds,
                        ..Default::default()
                    }
                })
                .collect(),
            aggregation_temporality: AggregationTemporality::Cumulative as i32,
        }),
        MetricType::SUMMARY => metric::Data::Summary(Summary {
            data_points: series
                .iter()
                .map(|m| {
                    let summary = m.get_summary();
                    SummaryDataPoint {
                        attributes: attributes(m),
                        start_time_unix_nano: start_ns,
                        time_unix_nano: time(m),
                        count: summary.sample_count(),
                        sum: summary.sample_sum(),
                        quantile_values: summary
                            .get_quantile()
                            .iter()
                            .map(|q| ValueAtQuantile { quantile: q.quantile(), value: q.value() })
                            .collect(),
                        ..Default::default()
                    }
                })
                .collect(),
        }),
    };
    Some(Metric {
        name: family.name().to_string(),
        description: family.help().to_string(),
        // Empty on purpose: a unit would be appended to the name by the Prometheus translation.
        unit: String::new(),
        data: Some(data),
        ..Default::default()
    })
}

/// Prometheus's cumulative buckets as OTLP's finite bounds and per-bucket counts (one more
/// count than bounds: the last one is everything above the highest bound). The `+Inf` bucket,
/// which the `prometheus` crate leaves implicit, is the sample count.
fn per_bucket(histogram: &prometheus::proto::Histogram) -> (Vec<f64>, Vec<u64>) {
    let finite: Vec<_> = histogram.get_bucket().iter().filter(|b| b.upper_bound().is_finite()).collect();
    let mut bounds = Vec::with_capacity(finite.len());
    let mut counts = Vec::with_capacity(finite.len() + 1);
    let mut below = 0u64;
    for bucket in finite {
        let cumulative = bucket.cumulative_count();
        bounds.push(bucket.upper_bound());
        // A snapshot is consistent, but a hand-made collector might not be: never underflow.
        counts.push(cumulative.saturating_sub(below));
        below = below.max(cumulative);
    }
    counts.push(histogram.get_sample_count().saturating_sub(below));
    (bounds, counts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::any_value;
    use prometheus::core::{Collector, Desc};
    use prometheus::{
        Gauge as PromGauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    };

    const NOW: u64 = 1_800_000_000_000_000_000;
    const START: u64 = 1_799_999_000_000_000_000;

    fn resource() -> Vec<KeyValue> {
        vec![string_attribute("service.name", "wake-test"), string_attribute("service.instance.id", "host-1")]
    }

    fn convert(registry: &Registry) -> ExportMetricsServiceRequest {
        registry_to_otlp(registry, resource(), NOW, START)
    }

    fn only_metrics(request: &ExportMetricsServiceRequest) -> &[Metric] {
        assert_eq!(request.resource_metrics.len(), 1);
        let resource_metrics = &request.resource_metrics[0];
        assert_eq!(resource_metrics.resource.as_ref().expect("resource").attributes, resource());
        assert_eq!(resource_metrics.scope_metrics.len(), 1);
        let scope = resource_metrics.scope_metrics[0].scope.as_ref().expect("scope");
        assert_eq!(scope.name, "wake.self_metrics");
        &resource_metrics.scope_metrics[0].metrics
    }

    fn metric<'a>(request: &'a ExportMetricsServiceRequest, name: &str) -> &'a Metric {
        only_metrics(request).iter().find(|m| m.name == name).unwrap_or_else(|| panic!("no metric {name}"))
    }

    fn attributes(attributes: &[KeyValue]) -> Vec<(String, String)> {
        attributes
            .iter()
            .map(|kv| {
                let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                    Some(any_value::Value::StringValue(text)) => text.clone(),
                    other => panic!("attribute {} is not a string: {other:?}", kv.key),
                };
                (kv.key.clone(), value)
            })
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect()
    }

    fn double(point: &NumberDataPoint) -> f64 {
        match point.value {
            Some(number_data_point::Value::AsDouble(value)) => value,
            other => panic!("not a double: {other:?}"),
        }
    }

    #[test]
    fn counters_become_monotonic_cumulative_sums_with_the_same_name() {
        let registry = Registry::new();
        let lines = IntCounter::new("wake_agent_read_lines_total", "Log records read").unwrap();
        registry.register(Box::new(lines.clone())).unwrap();
        let sent = IntCounterVec::new(Opts::new("wake_agent_sent_records_total", "Sent"), &["signal"]).unwrap();
        registry.register(Box::new(sent.clone())).unwrap();
        lines.inc_by(42);
        sent.with_label_values(&["logs"]).inc_by(7);
        sent.with_label_values(&["metrics"]).inc_by(3);

        let request = convert(&registry);

        let lines = metric(&request, "wake_agent_read_lines_total");
        assert_eq!(lines.unit, "");
        assert_eq!(lines.description, "Log records read");
        let Some(metric::Data::Sum(sum)) = &lines.data else { panic!("not a sum: {lines:?}") };
        assert!(sum.is_monotonic);
        assert_eq!(sum.aggregation_temporality, AggregationTemporality::Cumulative as i32);
        assert_eq!(sum.data_points.len(), 1);
        let point = &sum.data_points[0];
        assert_eq!(double(point), 42.0);
        assert_eq!((point.start_time_unix_nano, point.time_unix_nano), (START, NOW));
        assert!(point.attributes.is_empty());

        let sent = metric(&request, "wake_agent_sent_records_total");
        let Some(metric::Data::Sum(sum)) = &sent.data else { panic!("not a sum: {sent:?}") };
        let mut points: Vec<_> = sum.data_points.iter().map(|p| (attributes(&p.attributes), double(p))).collect();
        points.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(points, vec![(pairs(&[("signal", "logs")]), 7.0), (pairs(&[("signal", "metrics")]), 3.0)]);
    }

    #[test]
    fn gauges_become_gauges() {
        let registry = Registry::new();
        let files = IntGauge::new("wake_agent_files_watched", "Files").unwrap();
        let ratio = PromGauge::new("wake_test_ratio", "A float").unwrap();
        registry.register(Box::new(files.clone())).unwrap();
        registry.register(Box::new(ratio.clone())).unwrap();
        files.set(3);
        ratio.set(0.25);

        let request = convert(&registry);

        for (name, expected) in [("wake_agent_files_watched", 3.0), ("wake_test_ratio", 0.25)] {
            let gauge = metric(&request, name);
            assert_eq!(gauge.unit, "");
            let Some(metric::Data::Gauge(gauge)) = &gauge.data else { panic!("{name} is not a gauge") };
            assert_eq!(gauge.data_points.len(), 1);
            assert_eq!(double(&gauge.data_points[0]), expected);
            assert_eq!(gauge.data_points[0].time_unix_nano, NOW);
        }
    }

    #[test]
    fn histograms_get_finite_bounds_and_per_bucket_counts() {
        let registry = Registry::new();
        let duration = HistogramVec::new(
            HistogramOpts::new("wake_server_query_duration_seconds", "Query time").buckets(vec![0.1, 1.0, 10.0]),
            &["outcome"],
        )
        .unwrap();
        registry.register(Box::new(duration.clone())).unwrap();
        let ok = duration.with_label_values(&["ok"]);
        for value in [0.05, 0.05, 0.5, 5.0, 5.0, 5.0, 100.0] {
            ok.observe(value);
        }

        let request = convert(&registry);

        let histogram = metric(&request, "wake_server_query_duration_seconds");
        assert_eq!(histogram.unit, "");
        let Some(metric::Data::Histogram(histogram)) = &histogram.data else { panic!("not a histogram") };
        assert_eq!(histogram.aggregation_temporality, AggregationTemporality::Cumulative as i32);
        assert_eq!(histogram.data_points.len(), 1);
        let point = &histogram.data_points[0];
        assert_eq!(attributes(&point.attributes), pairs(&[("outcome", "ok")]));
        assert_eq!(point.explicit_bounds, vec![0.1, 1.0, 10.0]);
        // Per bucket, not cumulative: (-inf, 0.1], (0.1, 1], (1, 10], (10, +inf).
        assert_eq!(point.bucket_counts, vec![2, 1, 3, 1]);
        assert_eq!(point.count, 7);
        assert_eq!(point.bucket_counts.iter().sum::<u64>(), point.count);
        assert!((point.sum.expect("sum") - 115.6).abs() < 1e-9, "{:?}", point.sum);
        assert_eq!((point.start_time_unix_nano, point.time_unix_nano), (START, NOW));
    }

    #[test]
    fn unused_vectors_are_left_out_and_an_empty_registry_gives_an_empty_request() {
        let registry = Registry::new();
        assert_eq!(convert(&registry), ExportMetricsServiceRequest::default());
        let unused = IntCounterVec::new(Opts::new("wake_unused_total", "Never used"), &["signal"]).unwrap();
        registry.register(Box::new(unused)).unwrap();
        assert_eq!(convert(&registry), ExportMetricsServiceRequest::default());
    }

    /// A collector producing what the `prometheus` crate's own types never do: a summary, an
    /// untyped value, an explicit `+Inf` bucket and a timestamp.
    struct HandMade {
        descs: Vec<Desc>,
    }

    impl HandMade {
        fn new() -> HandMade {
            let desc = |name: &str| Desc::new(name.into(), "hand-made".into(), Vec::new(), Default::default()).unwrap();
            HandMade { descs: vec![desc("wake_test_rpc_seconds"), desc("wake_test_untyped"), desc("wake_test_hist")] }
        }
    }

    impl Collector for HandMade {
        fn desc(&self) -> Vec<&Desc> {
            self.descs.iter().collect()
        }

        #[allow(deprecated)] // `Untyped` is deprecated as protobuf-specific, yet still a type.
        fn collect(&self) -> Vec<MetricFamily> {
            use prometheus::proto::{Bucket, LabelPair, Quantile, Summary as PromSummary, Untyped};
            let family = |name: &str, kind: MetricType, metric: prometheus::proto::Metric| {
                let mut family = MetricFamily::default();
                family.set_name(name.into());
                family.set_help("hand-made".into());
                family.set_field_type(kind);
                family.set_metric(vec![metric]);
                family
            };
            let mut label = LabelPair::default();
            label.set_name("method".into());
            label.set_value("get".into());

            let mut summary = PromSummary::default();
            summary.set_sample_count(10);
            summary.set_sample_sum(2.5);
            let quantiles = [(0.5, 0.2), (0.99, 0.9)]
                .into_iter()
                .map(|(q, v)| {
                    let mut quantile = Quantile::default();
                    quantile.set_quantile(q);
                    quantile.set_value(v);
                    quantile
                })
                .collect();
            summary.set_quantile(quantiles);
            let mut with_summary = prometheus::proto::Metric::from_label(vec![label]);
            with_summary.set_summary(summary);

            let mut untyped = Untyped::default();
            untyped.set_value(9.0);
            let mut with_untyped = prometheus::proto::Metric::default();
            with_untyped.set_untyped(untyped);
            with_untyped.set_timestamp_ms(1_700_000_000_123);

            let mut histogram = prometheus::proto::Histogram::default();
            histogram.set_sample_count(5);
            histogram.set_sample_sum(12.0);
            let buckets = [(1.0, 2), (f64::INFINITY, 5)]
                .into_iter()
                .map(|(bound, cumulative)| {
                    let mut bucket = Bucket::default();
                    bucket.set_upper_bound(bound);
                    bucket.set_cumulative_count(cumulative);
                    bucket
                })
                .collect();
            histogram.set_bucket(buckets);
            let mut with_histogram = prometheus::proto::Metric::default();
            with_histogram.set_histogram(histogram);

            vec![
                family("wake_test_rpc_seconds", MetricType::SUMMARY, with_summary),
                family("wake_test_untyped", MetricType::UNTYPED, with_untyped),
                family("wake_test_hist", MetricType::HISTOGRAM, with_histogram),
            ]
        }
    }

    #[test]
    fn summaries_untyped_values_and_explicit_infinity_buckets() {
        let registry = Registry::new();
        registry.register(Box::new(HandMade::new())).unwrap();

        let request = convert(&registry);

        let summary = metric(&request, "wake_test_rpc_seconds");
        let Some(metric::Data::Summary(summary)) = &summary.data else { panic!("not a summary") };
        let point = &summary.data_points[0];
        assert_eq!(attributes(&point.attributes), pairs(&[("method", "get")]));
        assert_eq!((point.count, point.sum), (10, 2.5));
        let quantiles: Vec<_> = point.quantile_values.iter().map(|q| (q.quantile, q.value)).collect();
        assert_eq!(quantiles, vec![(0.5, 0.2), (0.99, 0.9)]);
        assert_eq!(point.start_time_unix_nano, START);

        let untyped = metric(&request, "wake_test_untyped");
        let Some(metric::Data::Gauge(gauge)) = &untyped.data else { panic!("untyped is not a gauge") };
        assert_eq!(double(&gauge.data_points[0]), 9.0);
        assert_eq!(gauge.data_points[0].time_unix_nano, 1_700_000_000_123_000_000, "own timestamp kept");

        let histogram = metric(&request, "wake_test_hist");
        let Some(metric::Data::Histogram(histogram)) = &histogram.data else { panic!("not a histogram") };
        let point = &histogram.data_points[0];
        assert_eq!(point.explicit_bounds, vec![1.0], "+Inf is not a bound in OTLP");
        assert_eq!(point.bucket_counts, vec![2, 3]);
        assert_eq!(point.count, 5);
    }

    /// What the store's Prometheus API will show, by its translation rules (a copy of the part of
    /// `wake_query`'s naming that matters for names without a unit): tokens joined with `_`,
    /// `_total` once on monotonic sums, `_bucket`/`_sum`/`_count` on histograms.
    fn prometheus_names(metric: &Metric) -> Vec<String> {
        let base: String =
            metric.name.split(|c: char| !c.is_alphanumeric()).filter(|t| !t.is_empty()).collect::<Vec<_>>().join("_");
        assert!(metric.unit.is_empty(), "a unit would change the name");
        match &metric.data {
            Some(metric::Data::Sum(sum)) if sum.is_monotonic => {
                let mut words: Vec<&str> = base.split('_').filter(|w| *w != "total").collect();
                words.push("total");
                vec![words.join("_")]
            }
            Some(metric::Data::Histogram(_)) => {
                vec![format!("{base}_bucket"), format!("{base}_sum"), format!("{base}_count")]
            }
            Some(metric::Data::Summary(_)) => vec![base.clone(), format!("{base}_sum"), format!("{base}_count")],
            _ => vec![base],
        }
    }

    #[test]
    fn names_survive_the_prometheus_translation() {
        let registry = Registry::new();
        let lines = IntCounter::new("wake_agent_read_lines_total", "Lines").unwrap();
        let files = IntGauge::new("wake_agent_files_watched", "Files").unwrap();
        let duration =
            HistogramVec::new(HistogramOpts::new("wake_server_query_duration_seconds", "Query time"), &["outcome"])
                .unwrap();
        registry.register(Box::new(lines.clone())).unwrap();
        registry.register(Box::new(files.clone())).unwrap();
        registry.register(Box::new(duration.clone())).unwrap();
        lines.inc();
        files.set(1);
        duration.with_label_values(&["ok"]).observe(0.2);

        let request = convert(&registry);
        let mut names: Vec<String> = only_metrics(&request).iter().flat_map(prometheus_names).collect();
        names.sort();
        names.dedup();

        // Exactly the names Prometheus shows for these, nothing renamed, nothing added.
        assert_eq!(
            names,
            [
                "wake_agent_files_watched",
                "wake_agent_read_lines_total",
                "wake_server_query_duration_seconds_bucket",
                "wake_server_query_duration_seconds_count",
                "wake_server_query_duration_seconds_sum",
            ]
        );
    }
}
