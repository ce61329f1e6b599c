"""Sends logs, a trace and metrics of every point type to Wake with the OpenTelemetry Python SDK.

Run by tests/otlp_python.rs, which then reads the data back with SQL and compares it with the
values below. Prints the ids the SDK generated as one JSON object on stdout, and exits non-zero
if any export failed, so a refused export cannot pass for missing data.

Usage: send_otlp.py --protocol grpc|http --endpoint URL --run-id ID [--ca-file PEM] [--token T]

With --ca-file the endpoint is https:// and the store's certificate is checked against that CA;
--token is sent as `Authorization: Bearer …`.
"""

import argparse
import json
import math
import sys

from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.metrics import Observation
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.metrics.view import ExponentialBucketHistogramAggregation, View
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode

# Fixed times make the stored timestamps and durations exact; the odd nanoseconds show that
# no precision is lost on the way.
TRACE_START_NS = 1_700_000_000_123_456_789
LOG_TIME_NS = 1_700_000_000_987_654_321


def exporters(protocol, endpoint, ca_file=None, token=None):
    headers = {"authorization": f"Bearer {token}"} if token else None
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        if ca_file:
            import grpc

            with open(ca_file, "rb") as f:
                credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
            options = dict(endpoint=endpoint, insecure=False, credentials=credentials, headers=headers)
        else:
            options = dict(endpoint=endpoint, insecure=True, headers=headers)
        return (OTLPLogExporter(**options), OTLPSpanExporter(**options), OTLPMetricExporter(**options))
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    base = endpoint.rstrip("/")
    options = dict(headers=headers)
    if ca_file:
        options["certificate_file"] = ca_file
    return (
        OTLPLogExporter(endpoint=f"{base}/v1/logs", **options),
        OTLPSpanExporter(endpoint=f"{base}/v1/traces", **options),
        OTLPMetricExporter(endpoint=f"{base}/v1/metrics", **options),
    )


def record_results(exporter, failures):
    """Wraps exporter.export so that every result other than SUCCESS is remembered."""
    export = exporter.export

    def checked(*args, **kwargs):
        result = export(*args, **kwargs)
        if getattr(result, "name", None) != "SUCCESS":
            failures.append(f"{type(exporter).__name__}: {result}")
        return result

    exporter.export = checked


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--protocol", choices=["grpc", "http"], required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--run-id", required=True)
    parser.add_argument("--ca-file")
    parser.add_argument("--token")
    args = parser.parse_args()

    resource = Resource.create(
        {
            "service.name": f"checkout-{args.protocol}",
            "k8s.namespace.name": "shop",
            "k8s.pod.name": f"checkout-{args.protocol}-7d9f",
            "host.name": "node-1",
            "run.id": args.run_id,
        }
    )
    log_exporter, span_exporter, metric_exporter = exporters(args.protocol, args.endpoint, args.ca_file, args.token)
    failures = []
    for exporter in (log_exporter, span_exporter, metric_exporter):
        record_results(exporter, failures)

    # Simple processors export synchronously, one record per request: nothing is left
    # unsent when the script ends.
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(log_exporter))
    # An infinite interval means no periodic collection: force_flush exports exactly once, so
    # each cumulative stream arrives as exactly one data point.
    reader = PeriodicExportingMetricReader(metric_exporter, export_interval_millis=math.inf)
    meter_provider = MeterProvider(
        resource=resource,
        metric_readers=[reader],
        views=[
            View(
                instrument_name="py.payload.size",
                aggregation=ExponentialBucketHistogramAggregation(max_size=4, max_scale=0),
            )
        ],
    )

    tracer = tracer_provider.get_tracer("shop.checkout", "1.2.3")
    logger = logger_provider.get_logger("shop.logs", "0.1")
    meter = meter_provider.get_meter("shop.metrics")

    # A trace: a server span and its client child, which fails.
    parent = tracer.start_span("GET /checkout", kind=SpanKind.SERVER, start_time=TRACE_START_NS)
    parent.set_attribute("http.route", "/checkout")
    parent_context = trace.set_span_in_context(parent)
    child = tracer.start_span(
        "charge card",
        context=parent_context,
        kind=SpanKind.CLIENT,
        start_time=TRACE_START_NS + 1_000_000,
        attributes={"payment.amount": 12.5, "payment.retries": 2},
    )
    child.add_event("retrying", attributes={"attempt": 1}, timestamp=TRACE_START_NS + 2_000_000)
    child.set_status(Status(StatusCode.ERROR, "card declined"))

    # Logs: one outside any span, one inside the failing child span.
    logger.emit(
        timestamp=LOG_TIME_NS,
        severity_number=SeverityNumber.INFO,
        severity_text="INFO",
        body="user logged in",
        attributes={"user.id": "u-42", "attempt": 3, "remembered": True, "ratio": 0.5},
    )
    logger.emit(
        timestamp=LOG_TIME_NS + 1,
        context=trace.set_span_in_context(child),
        severity_number=SeverityNumber.ERROR,
        severity_text="ERROR",
        body="payment failed",
        attributes={"error.kind": "card", "log.iostream": "stderr"},
    )

    child.end(end_time=TRACE_START_NS + 251_000_000)
    parent.end(end_time=TRACE_START_NS + 300_000_000)

    # Metrics of every point type the SDK produces.
    requests = meter.create_counter("py.requests", unit="1", description="requests served")
    requests.add(3, {"route": "/a"})
    requests.add(4, {"route": "/a"})
    requests.add(1, {"route": "/b"})
    queue = meter.create_up_down_counter("py.queue.depth")
    queue.add(5)
    queue.add(-2)
    meter.create_observable_gauge(
        "py.temperature",
        callbacks=[lambda _options: [Observation(21.5, {"room": "lab"})]],
        unit="Cel",
    )
    latency = meter.create_histogram(
        "py.latency", unit="ms", explicit_bucket_boundaries_advisory=[10.0, 50.0, 100.0]
    )
    for value in (5, 20, 50, 70, 200):
        latency.record(value)
    size = meter.create_histogram("py.payload.size", unit="By")
    for value in (0, 1, 2, 3, 4):
        size.record(value)

    meter_provider.force_flush()
    for provider in (meter_provider, tracer_provider, logger_provider):
        provider.shutdown()

    child_context = child.get_span_context()
    print(
        json.dumps(
            {
                "trace_id": format(child_context.trace_id, "032x"),
                "parent_span_id": format(parent.get_span_context().span_id, "016x"),
                "child_span_id": format(child_context.span_id, "016x"),
            }
        )
    )
    if failures:
        print("exports failed: " + "; ".join(failures), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
