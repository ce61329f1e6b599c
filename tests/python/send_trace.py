"""Sends one trace across three services, and logs carrying its context, with the OpenTelemetry
Python SDK over OTLP/HTTP.

Run by tests/traces_api.rs, which then reads the trace back through the Tempo and Jaeger APIs
and the Loki API. Each service has its own TracerProvider and Resource, as three processes
would; the context passes between them explicitly, as a propagator would carry it. Times are
fixed (relative to --start-ns) so durations are exact. Prints the generated ids as one JSON
object on stdout and exits non-zero if any export failed.

Usage: send_trace.py --endpoint http://HOST:PORT --start-ns NS --run-id ID
"""

import argparse
import json
import sys

from opentelemetry import trace
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

MS = 1_000_000


def checked(exporter, failures):
    export = exporter.export

    def wrapper(*args, **kwargs):
        result = export(*args, **kwargs)
        if getattr(result, "name", None) != "SUCCESS":
            failures.append(f"{type(exporter).__name__}: {result}")
        return result

    exporter.export = wrapper
    return exporter


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--start-ns", type=int, required=True)
    parser.add_argument("--run-id", required=True)
    args = parser.parse_args()
    base = args.endpoint.rstrip("/")
    t0 = args.start_ns
    failures = []
    providers = []

    def service(name, pod):
        resource = Resource.create(
            {
                "service.name": name,
                "k8s.namespace.name": "shop",
                "k8s.pod.name": pod,
                "k8s.container.name": name,
                "run.id": args.run_id,
            }
        )
        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(
            SimpleSpanProcessor(checked(OTLPSpanExporter(endpoint=f"{base}/v1/traces"), failures))
        )
        logger_provider = LoggerProvider(resource=resource)
        logger_provider.add_log_record_processor(
            SimpleLogRecordProcessor(checked(OTLPLogExporter(endpoint=f"{base}/v1/logs"), failures))
        )
        providers.extend([tracer_provider, logger_provider])
        return tracer_provider.get_tracer(f"shop.{name}", "1.0.0"), logger_provider.get_logger(f"shop.{name}")

    frontend, frontend_log = service("frontend", "frontend-5c7d-abcde")
    checkout, checkout_log = service("checkout", "checkout-7d9f-xyz12")
    payments, _ = service("payments", "payments-66b8-qwert")

    # An earlier, unrelated span for the link.
    previous = frontend.start_span("GET /cart", kind=SpanKind.SERVER, start_time=t0 - 1000 * MS)
    previous.end(end_time=t0 - 990 * MS)

    root = frontend.start_span(
        "GET /checkout",
        kind=SpanKind.SERVER,
        start_time=t0,
        attributes={"http.request.method": "GET", "http.route": "/checkout", "http.response.status_code": 500},
        links=[Link(previous.get_span_context(), {"link.reason": "same session"})],
    )
    root_ctx = trace.set_span_in_context(root)
    call = frontend.start_span("POST checkout", kind=SpanKind.CLIENT, context=root_ctx, start_time=t0 + 2 * MS)
    call_ctx = trace.set_span_in_context(call)

    handler = checkout.start_span("POST /checkout", kind=SpanKind.SERVER, context=call_ctx, start_time=t0 + 5 * MS)
    handler_ctx = trace.set_span_in_context(handler)
    charge = checkout.start_span(
        "charge",
        kind=SpanKind.CLIENT,
        context=handler_ctx,
        start_time=t0 + 10 * MS,
        attributes={"payment.amount": 12.5, "payment.currency": "EUR"},
    )
    charge.add_event("retry", attributes={"attempt": 1}, timestamp=t0 + 60 * MS)
    charge.add_event(
        "exception",
        attributes={"exception.type": "CardDeclined", "exception.message": "card declined"},
        timestamp=t0 + 150 * MS,
    )
    charge_ctx = trace.set_span_in_context(charge)

    authorize = payments.start_span(
        "authorize", kind=SpanKind.SERVER, context=charge_ctx, start_time=t0 + 15 * MS
    )
    ledger = payments.start_span(
        "ledger.write",
        kind=SpanKind.INTERNAL,
        context=trace.set_span_in_context(authorize),
        start_time=t0 + 20 * MS,
        attributes={"db.system": "postgresql"},
    )
    ledger.end(end_time=t0 + 40 * MS)
    authorize.set_status(Status(StatusCode.ERROR, "insufficient funds"))
    authorize.end(end_time=t0 + 140 * MS)

    checkout_log.emit(
        timestamp=t0 + 150 * MS,
        context=charge_ctx,
        severity_number=SeverityNumber.ERROR,
        severity_text="ERROR",
        body=f"charge failed: card declined run={args.run_id}",
    )
    charge.set_status(Status(StatusCode.ERROR, "card declined"))
    charge.end(end_time=t0 + 160 * MS)
    handler.set_status(Status(StatusCode.ERROR))
    handler.end(end_time=t0 + 170 * MS)
    call.end(end_time=t0 + 175 * MS)
    frontend_log.emit(
        timestamp=t0 + 178 * MS,
        context=root_ctx,
        severity_number=SeverityNumber.WARN,
        severity_text="WARN",
        body=f"checkout answered 500 run={args.run_id}",
    )
    root.end(end_time=t0 + 180 * MS)

    for provider in providers:
        provider.shutdown()
    if failures:
        print("\n".join(failures), file=sys.stderr)
        sys.exit(1)

    def sid(span):
        return format(span.get_span_context().span_id, "016x")

    print(
        json.dumps(
            {
                "trace_id": format(root.get_span_context().trace_id, "032x"),
                "previous_trace_id": format(previous.get_span_context().trace_id, "032x"),
                "spans": {
                    "GET /checkout": sid(root),
                    "POST checkout": sid(call),
                    "POST /checkout": sid(handler),
                    "charge": sid(charge),
                    "authorize": sid(authorize),
                    "ledger.write": sid(ledger),
                },
            }
        )
    )


if __name__ == "__main__":
    main()
