//! The Rust `opentelemetry-otlp` exporter sends spans, logs (through the logs API and through
//! the `tracing` bridge) and metrics to Wake over gRPC and over HTTP/protobuf; SQL must give back
//! exactly what the SDK was told.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{WakeServer, as_f64, as_u64};
use opentelemetry::logs::{AnyValue, LogRecord as _, Logger as _, LoggerProvider as _, Severity};
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _, TraceFlags, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_appender_tracing::layer::OpenTelemetryTracingBridge;
use opentelemetry_otlp::{LogExporter, MetricExporter, Protocol, SpanExporter, WithExportConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::logs::SdkLoggerProvider;
use opentelemetry_sdk::metrics::{Aggregation, Instrument, PeriodicReader, SdkMeterProvider, Stream, Temporality};
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde_json::{Map, Value, json};
use tracing_subscriber::layer::SubscriberExt as _;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Transport {
    Grpc,
    Http,
}

impl Transport {
    fn name(self) -> &'static str {
        match self {
            Transport::Grpc => "grpc",
            Transport::Http => "http",
        }
    }

    /// gRPC exports cumulative metrics and HTTP delta ones, so that both temporalities are seen.
    fn temporality(self) -> Temporality {
        match self {
            Transport::Grpc => Temporality::Cumulative,
            Transport::Http => Temporality::Delta,
        }
    }
}

const TIMEOUT: Duration = Duration::from_secs(10);

/// Fixed times with odd nanoseconds: stored timestamps and durations must be exact.
const T0_NS: u64 = 1_700_000_000_123_456_789;
const LOG_NS: u64 = 1_700_000_000_987_654_321;

fn at(offset_ns: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_nanos(T0_NS + offset_ns)
}

fn exporters(server: &WakeServer, transport: Transport) -> (SpanExporter, LogExporter, MetricExporter) {
    let temporality = transport.temporality();
    let (spans, logs, metrics) = match transport {
        Transport::Grpc => {
            let endpoint = server.grpc_endpoint();
            (
                SpanExporter::builder().with_tonic().with_endpoint(&endpoint).with_timeout(TIMEOUT).build(),
                LogExporter::builder().with_tonic().with_endpoint(&endpoint).with_timeout(TIMEOUT).build(),
                MetricExporter::builder()
                    .with_tonic()
                    .with_endpoint(&endpoint)
                    .with_timeout(TIMEOUT)
                    .with_temporality(temporality)
                    .build(),
            )
        }
        Transport::Http => (
            SpanExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(server.otlp_url("/v1/traces"))
                .with_timeout(TIMEOUT)
                .build(),
            LogExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(server.otlp_url("/v1/logs"))
                .with_timeout(TIMEOUT)
                .build(),
            MetricExporter::builder()
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(server.otlp_url("/v1/metrics"))
                .with_timeout(TIMEOUT)
                .with_temporality(temporality)
                .build(),
        ),
    };
    (spans.expect("span exporter"), logs.expect("log exporter"), metrics.expect("metric exporter"))
}

/// The ids the SDK generated for the trace.
struct Ids {
    trace_id: String,
    parent_span_id: String,
    child_span_id: String,
}

/// Sends one trace, two logs and five metric streams, then shuts the providers down, which
/// exports everything still pending.
fn send_with_rust_sdk(server: &WakeServer, transport: Transport) -> Ids {
    // The tonic channel needs a tokio runtime while it is built and while it runs; the SDK's own
    // processors and readers run on their own threads.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let _runtime_context = runtime.enter();
    let (span_exporter, log_exporter, metric_exporter) = exporters(server, transport);
    let resource = Resource::builder()
        .with_service_name(format!("rust-{}", transport.name()))
        .with_attributes([
            KeyValue::new("k8s.namespace.name", "rust-ns"),
            KeyValue::new("k8s.container.name", "app"),
            KeyValue::new("host.name", "node-r"),
        ])
        .build();
    let tracer_provider =
        SdkTracerProvider::builder().with_resource(resource.clone()).with_batch_exporter(span_exporter).build();
    let logger_provider =
        SdkLoggerProvider::builder().with_resource(resource.clone()).with_batch_exporter(log_exporter).build();
    // One collection only, at shutdown: every stream arrives as exactly one point.
    let reader = PeriodicReader::builder(metric_exporter).with_interval(Duration::from_secs(3600)).build();
    let meter_provider = SdkMeterProvider::builder()
        .with_resource(resource)
        .with_reader(reader)
        .with_view(|instrument: &Instrument| {
            (instrument.name() == "rust.payload.size").then(|| {
                Stream::builder()
                    .with_aggregation(Aggregation::Base2ExponentialHistogram {
                        max_size: 4,
                        max_scale: 0,
                        record_min_max: true,
                    })
                    .build()
                    .expect("a valid stream")
            })
        })
        .build();

    let scope = |name: &'static str| InstrumentationScope::builder(name).with_version("3.1").build();
    let tracer = tracer_provider.tracer_with_scope(scope("rust.tracer"));
    let parent = tracer.span_builder("rust parent").with_kind(SpanKind::Server).with_start_time(at(0)).start(&tracer);
    let parent_context = Context::current_with_span(parent);
    let child = tracer
        .span_builder("rust child")
        .with_kind(SpanKind::Client)
        .with_start_time(at(1_000_000))
        .with_attributes([
            KeyValue::new("db.system", "postgresql"),
            KeyValue::new("rows", 3_i64),
            KeyValue::new("cache.hit", false),
        ])
        .start_with_context(&tracer, &parent_context);
    let child_context = parent_context.with_span(child);
    let span_context = child_context.span().span_context().clone();
    child_context.span().add_event_with_timestamp("retry", at(5_000_000), vec![KeyValue::new("attempt", 2_i64)]);
    child_context.span().set_status(Status::error("boom"));

    // A log through the logs API, tied to the child span explicitly...
    let logger = logger_provider.logger_with_scope(scope("rust.logger"));
    let mut record = logger.create_log_record();
    record.set_timestamp(UNIX_EPOCH + Duration::from_nanos(LOG_NS));
    record.set_severity_number(Severity::Warn);
    record.set_severity_text("WARN");
    record.set_event_name("rust.api");
    record.set_body(AnyValue::from("rust api log"));
    record.add_attribute("user.id", "u-7");
    record.add_attribute("count", 3_i64);
    record.set_trace_context(span_context.trace_id(), span_context.span_id(), Some(TraceFlags::SAMPLED));
    logger.emit(record);

    // ...and one through `tracing`, tied to the child span by the current context.
    let subscriber = tracing_subscriber::registry().with(OpenTelemetryTracingBridge::new(&logger_provider));
    tracing::subscriber::with_default(subscriber, || {
        let _attached = child_context.clone().attach();
        tracing::error!(name: "payment.declined", target: "payments", user = "u-1", amount = 12, "card declined");
    });

    child_context.span().end_with_timestamp(at(101_000_000));
    parent_context.span().end_with_timestamp(at(200_000_000));

    let meter = meter_provider.meter_with_scope(scope("rust.meter"));
    let counter = meter.u64_counter("rust.requests").with_unit("1").with_description("requests").build();
    counter.add(5, &[KeyValue::new("route", "/a")]);
    counter.add(2, &[KeyValue::new("route", "/a")]);
    let queue = meter.i64_up_down_counter("rust.queue.depth").build();
    queue.add(10, &[]);
    queue.add(-3, &[]);
    meter.f64_gauge("rust.temperature").with_unit("Cel").build().record(3.25, &[KeyValue::new("room", "lab")]);
    let latency = meter.f64_histogram("rust.latency").with_unit("ms").with_boundaries(vec![1.0, 5.0]).build();
    for value in [0.5, 2.0, 5.0, 7.0] {
        latency.record(value, &[]);
    }
    let size = meter.f64_histogram("rust.payload.size").with_unit("By").build();
    for value in [1.0, 2.0, 3.0, 4.0] {
        size.record(value, &[]);
    }

    tracer_provider.shutdown().expect("tracer provider shutdown exports the spans");
    logger_provider.shutdown().expect("logger provider shutdown exports the logs");
    meter_provider.shutdown().expect("meter provider shutdown exports the metrics");
    Ids {
        trace_id: span_context.trace_id().to_string(),
        parent_span_id: parent_context.span().span_context().span_id().to_string(),
        child_span_id: span_context.span_id().to_string(),
    }
}

fn strings(pairs: &[(&str, &str)]) -> Value {
    Value::Object(pairs.iter().map(|(k, v)| (k.to_string(), json!(v))).collect())
}

fn check_identity(row: &Map<String, Value>, transport: Transport) {
    assert_eq!(row["service_name"], format!("rust-{}", transport.name()).as_str());
    assert_eq!(row["k8s_namespace_name"], "rust-ns");
    assert_eq!(row["k8s_container_name"], "app");
    let resource = row["resource_attributes"].as_object().expect("resource_attributes is a map");
    assert_eq!(resource.get("host.name"), Some(&json!("node-r")), "{resource:?}");
    assert_eq!(resource.get("telemetry.sdk.language"), Some(&json!("rust")), "{resource:?}");
    assert!(!resource.contains_key("service.name"), "promoted keys are not in the map: {resource:?}");
}

fn check_spans(server: &WakeServer, transport: Transport, ids: &Ids) {
    let rows = server.sql_objects(&format!(
        "SELECT name, kind, trace_id, span_id, parent_span_id, start_time, end_time, duration_ns, status_code, \
                status_message, events, attributes, scope_name, scope_version, service_name, k8s_namespace_name, \
                k8s_container_name, resource_attributes \
         FROM spans WHERE service_name = 'rust-{}' ORDER BY start_time",
        transport.name()
    ));
    assert_eq!(rows.len(), 2, "{transport:?}: {rows:#?}");
    let (parent, child) = (&rows[0], &rows[1]);
    assert_eq!(parent["name"], "rust parent");
    assert_eq!(parent["kind"], "server");
    assert_eq!(parent["trace_id"], ids.trace_id.as_str());
    assert_eq!(parent["span_id"], ids.parent_span_id.as_str());
    assert_eq!(parent["parent_span_id"], Value::Null);
    assert_eq!(parent["start_time"], "2023-11-14T22:13:20.123456789Z");
    assert_eq!(parent["end_time"], "2023-11-14T22:13:20.323456789Z");
    assert_eq!(parent["duration_ns"], 200_000_000);
    assert_eq!(parent["status_code"], "unset");

    assert_eq!(child["name"], "rust child");
    assert_eq!(child["kind"], "client");
    assert_eq!(child["trace_id"], ids.trace_id.as_str());
    assert_eq!(child["span_id"], ids.child_span_id.as_str());
    assert_eq!(child["parent_span_id"], ids.parent_span_id.as_str());
    assert_eq!(child["start_time"], "2023-11-14T22:13:20.124456789Z");
    assert_eq!(child["end_time"], "2023-11-14T22:13:20.224456789Z");
    assert_eq!(child["duration_ns"], 100_000_000);
    assert_eq!(child["status_code"], "error");
    assert_eq!(child["status_message"], "boom");
    assert_eq!(child["attributes"], strings(&[("db.system", "postgresql"), ("rows", "3"), ("cache.hit", "false")]));
    let events: Value = serde_json::from_str(child["events"].as_str().expect("events text")).expect("events JSON");
    assert_eq!(
        events,
        json!([{ "time_unix_nano": T0_NS + 5_000_000, "name": "retry", "attributes": { "attempt": 2 } }])
    );
    for row in &rows {
        assert_eq!(row["scope_name"], "rust.tracer");
        assert_eq!(row["scope_version"], "3.1");
        check_identity(row, transport);
    }
}

fn check_logs(server: &WakeServer, transport: Transport, ids: &Ids) {
    let rows = server.sql_objects(&format!(
        "SELECT body, severity_number, severity_text, event_name, timestamp, trace_id, span_id, attributes, \
                scope_name, scope_version, service_name, k8s_namespace_name, k8s_container_name, resource_attributes \
         FROM logs WHERE service_name = 'rust-{}' ORDER BY severity_number",
        transport.name()
    ));
    assert_eq!(rows.len(), 2, "{transport:?}: {rows:#?}");
    let (api, bridged) = (&rows[0], &rows[1]);
    assert_eq!(api["body"], "rust api log");
    assert_eq!(api["severity_number"], 13);
    assert_eq!(api["severity_text"], "WARN");
    assert_eq!(api["event_name"], "rust.api");
    assert_eq!(api["timestamp"], "2023-11-14T22:13:20.987654321Z");
    assert_eq!(api["attributes"], strings(&[("user.id", "u-7"), ("count", "3")]));
    assert_eq!(api["scope_name"], "rust.logger");
    assert_eq!(api["scope_version"], "3.1");

    assert_eq!(bridged["body"], "card declined");
    assert_eq!(bridged["severity_number"], 17);
    assert_eq!(bridged["severity_text"], "ERROR");
    assert_eq!(bridged["event_name"], "payment.declined");
    // The exporter reports a `tracing` target as the scope name.
    assert_eq!(bridged["scope_name"], "payments");
    assert_eq!(bridged["attributes"], strings(&[("user", "u-1"), ("amount", "12")]));

    for row in &rows {
        assert_eq!(row["trace_id"], ids.trace_id.as_str());
        assert_eq!(row["span_id"], ids.child_span_id.as_str());
        check_identity(row, transport);
    }
}

fn check_metrics(server: &WakeServer, transport: Transport) {
    let rows = server.sql_objects(&format!(
        "SELECT metric_name, metric_type, metric_description, unit, aggregation_temporality, is_monotonic, value, \
                count, sum, min, max, explicit_bounds, bucket_counts, exp_scale, exp_zero_count, exp_positive_offset, \
                exp_positive_bucket_counts, attributes, scope_name \
         FROM metrics WHERE service_name = 'rust-{}' ORDER BY metric_name",
        transport.name()
    ));
    let names: Vec<&Value> = rows.iter().map(|row| &row["metric_name"]).collect();
    assert_eq!(
        names,
        vec!["rust.latency", "rust.payload.size", "rust.queue.depth", "rust.requests", "rust.temperature"],
        "{transport:?}: {rows:#?}"
    );
    let [latency, size, queue, requests, temperature] = rows.as_slice() else { unreachable!() };
    let temporality = match transport.temporality() {
        Temporality::Delta => "delta",
        _ => "cumulative",
    };

    assert_eq!(requests["metric_type"], "sum");
    assert_eq!(requests["metric_description"], "requests");
    assert_eq!(requests["unit"], "1");
    assert_eq!(requests["aggregation_temporality"], temporality);
    assert_eq!(requests["is_monotonic"], true);
    assert_eq!(as_f64(&requests["value"]), Some(7.0), "{requests:?}");
    assert_eq!(requests["attributes"], strings(&[("route", "/a")]));
    assert_eq!(requests["scope_name"], "rust.meter");

    // OTLP exporters keep up-down counters cumulative even when asked for delta.
    assert_eq!(queue["metric_type"], "sum");
    assert_eq!(queue["aggregation_temporality"], "cumulative");
    assert_eq!(queue["is_monotonic"], false);
    assert_eq!(as_f64(&queue["value"]), Some(7.0), "{queue:?}");

    assert_eq!(temperature["metric_type"], "gauge");
    assert_eq!(temperature["unit"], "Cel");
    assert_eq!(as_f64(&temperature["value"]), Some(3.25), "{temperature:?}");
    assert_eq!(temperature["attributes"], strings(&[("room", "lab")]));

    assert_eq!(latency["metric_type"], "histogram");
    assert_eq!(latency["aggregation_temporality"], temporality);
    assert_eq!(as_u64(&latency["count"]), Some(4));
    assert_eq!(as_f64(&latency["sum"]), Some(14.5));
    assert_eq!(as_f64(&latency["min"]), Some(0.5));
    assert_eq!(as_f64(&latency["max"]), Some(7.0));
    assert_eq!(latency["explicit_bounds"], json!([1.0, 5.0]));
    // 0.5 | 2, 5 (bounds are inclusive above) | 7
    let buckets: Vec<u64> =
        latency["bucket_counts"].as_array().expect("bucket_counts").iter().map(|v| as_u64(v).expect("u64")).collect();
    assert_eq!(buckets, vec![1, 2, 1]);

    assert_eq!(size["metric_type"], "exponential_histogram");
    assert_eq!(size["aggregation_temporality"], temporality);
    assert_eq!(as_u64(&size["count"]), Some(4));
    assert_eq!(as_f64(&size["sum"]), Some(10.0));
    // At scale 0 bucket i holds (2^i, 2^(i+1)]: 1 | 2 | 3, 4.
    assert_eq!(size["exp_scale"], 0);
    assert_eq!(as_u64(&size["exp_zero_count"]), Some(0));
    assert_eq!(size["exp_positive_offset"], -1);
    let mut positive: Vec<u64> = size["exp_positive_bucket_counts"]
        .as_array()
        .expect("exp_positive_bucket_counts")
        .iter()
        .map(|v| as_u64(v).expect("u64"))
        .collect();
    // An SDK may pad the bucket array with zeros up to max_size.
    while positive.last() == Some(&0) {
        positive.pop();
    }
    assert_eq!(positive, vec![1, 1, 2], "{size:?}");
}

fn round_trip(transport: Transport) {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = WakeServer::start(dir.path(), &[]);
    let ids = send_with_rust_sdk(&server, transport);
    assert_eq!(ids.trace_id.len(), 32);
    for flushed in [false, true] {
        if flushed {
            server.flush();
        }
        check_spans(&server, transport, &ids);
        check_logs(&server, transport, &ids);
        check_metrics(&server, transport);
    }
}

#[test]
fn rust_exporter_over_grpc_reads_back_exactly() {
    round_trip(Transport::Grpc);
}

#[test]
fn rust_exporter_over_http_protobuf_reads_back_exactly() {
    round_trip(Transport::Http);
}
