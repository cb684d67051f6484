"""A small app instrumented with the official OpenTelemetry Python SDK.

It sends traces, metrics and logs to a collector with the SDK's own OTLP exporters (gRPC or
HTTP/protobuf), exactly as a real service would, then prints one JSON line describing what it
sent, so the test can check that every item arrived. It exits non-zero if any export failed.

    python otel_app.py --protocol grpc --endpoint http://127.0.0.1:4317 --traces 20
"""

import argparse
import json
import logging
import sys

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode


def exporters(protocol, endpoint):
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

        # TLS (with the OTEL_EXPORTER_OTLP_CERTIFICATE / CLIENT_* settings) for https endpoints.
        kw = dict(endpoint=endpoint, insecure=not endpoint.startswith("https://"))
        return OTLPSpanExporter(**kw), OTLPMetricExporter(**kw), OTLPLogExporter(**kw)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

    return (
        OTLPSpanExporter(endpoint=endpoint + "/v1/traces"),
        OTLPMetricExporter(endpoint=endpoint + "/v1/metrics"),
        OTLPLogExporter(endpoint=endpoint + "/v1/logs"),
    )


class Checked:
    """Counts an exporter's export calls and those that did not succeed. It patches the
    exporter's own `export` so the SDK still sees the exporter class it expects."""

    def __init__(self, exporter):
        self.failures, self.calls = 0, 0
        inner = exporter.export

        def export(batch, *args, **kwargs):
            result = inner(batch, *args, **kwargs)
            self.calls += 1
            # Each signal has its own result enum (SpanExportResult, LogRecordExportResult, ...).
            if getattr(result, "name", None) != "SUCCESS":
                self.failures += 1
            return result

        exporter.export = export


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--protocol", choices=["grpc", "http"], required=True)
    p.add_argument("--endpoint", required=True)
    p.add_argument("--service", default="checkout")
    p.add_argument("--traces", type=int, default=10)
    p.add_argument("--logs", type=int, default=10)
    p.add_argument("--resource", action="append", default=[], metavar="KEY=VALUE",
                   help="extra resource attribute (repeatable)")
    p.add_argument("--logs-in-spans", action="store_true",
                   help="emit each log record inside its own span, so it carries trace and span ids")
    args = p.parse_args()

    attributes = {"service.name": args.service, "service.version": "1.4.2", "deployment.environment": "test"}
    attributes.update(kv.split("=", 1) for kv in args.resource)
    resource = Resource.create(attributes)
    span_exp, metric_exp, log_exp = exporters(args.protocol, args.endpoint)
    checks = {"spans": Checked(span_exp), "metrics": Checked(metric_exp), "logs": Checked(log_exp)}

    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(span_exp, max_export_batch_size=64))
    tracer = tracer_provider.get_tracer("otel_app", "0.1.0")

    reader = PeriodicExportingMetricReader(metric_exp, export_interval_millis=3_600_000)
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    meter = meter_provider.get_meter("otel_app", "0.1.0")
    requests = meter.create_counter("app.requests", unit="1", description="requests handled")
    latency = meter.create_histogram("app.latency", unit="ms", description="request latency")

    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(log_exp))
    log = logging.getLogger("otel_app")
    log.setLevel(logging.INFO)
    log.addHandler(LoggingHandler(level=logging.INFO, logger_provider=logger_provider))

    sent = {"spans": [], "logs": [], "requests": 0, "latency_count": 0, "latency_sum": 0.0}
    for i in range(args.traces):
        with tracer.start_as_current_span(
            "POST /checkout/{id}",
            kind=SpanKind.SERVER,
            attributes={"http.request.method": "POST", "http.route": "/checkout/{id}", "app.items": i, "app.vip": i % 2 == 0},
        ) as server:
            with tracer.start_as_current_span("SELECT orders", kind=SpanKind.CLIENT, attributes={"db.system": "postgresql", "db.query.text": "SELECT * FROM orders WHERE id = $1"}) as db:
                pass
            if i % 5 == 4:
                server.set_status(Status(StatusCode.ERROR, "payment declined"))
                server.record_exception(ValueError(f"card {i} declined"))
        for span in (server, db):
            ctx = span.get_span_context()
            sent["spans"].append({"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}", "name": span.name})
        requests.add(1, {"route": "/checkout"})
        latency.record(10.0 + i, {"route": "/checkout"})
        sent["requests"] += 1
        sent["latency_count"] += 1
        sent["latency_sum"] += 10.0 + i
    sent["log_ids"] = []
    for i in range(args.logs):
        body = f"order {i} placed by {args.service}"
        if args.logs_in_spans:
            with tracer.start_as_current_span("place order") as span:
                log.info(body, extra={"order.id": i})
                ctx = span.get_span_context()
                sent["log_ids"].append({"trace_id": f"{ctx.trace_id:032x}", "span_id": f"{ctx.span_id:016x}"})
        else:
            log.info(body, extra={"order.id": i})
        sent["logs"].append(body)

    tracer_provider.shutdown()
    meter_provider.shutdown()
    logger_provider.shutdown()
    failures = sum(c.failures for c in checks.values())
    sent["export_calls"] = {k: c.calls for k, c in checks.items()}
    sent["export_failures"] = {k: c.failures for k, c in checks.items()}
    print(json.dumps(sent))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
