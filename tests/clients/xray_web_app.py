"""A web-like request instrumented with the official OpenTelemetry Python SDK, for the X-Ray
end-to-end test: a SERVER span handling `GET /orders/{id}`, a PostgreSQL CLIENT span, and an
HTTP CLIENT span to an inventory service that fails with an exception. It exports over OTLP/gRPC
with the SDK's own exporter, as a real service would, and prints one JSON line with the ids and
start times of what it sent (ids as lowercase hex). Exits non-zero if the export failed.

    python xray_web_app.py --endpoint http://127.0.0.1:4317
"""

import argparse
import json
import sys

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode


class InventoryUnavailable(Exception):
    pass


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    args = ap.parse_args()

    exporter = OTLPSpanExporter(endpoint=args.endpoint, insecure=True)
    failures = []
    inner = exporter.export

    def export(spans):
        result = inner(spans)
        if result != SpanExportResult.SUCCESS:
            failures.append(str(result))
        return result

    exporter.export = export
    provider = TracerProvider(
        resource=Resource.create(
            {
                "service.name": "orders-api",
                "service.version": "1.4.2",
                "deployment.environment": "test",
                "cloud.provider": "aws",
                "cloud.region": "us-east-1",
            }
        )
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = provider.get_tracer("xray-web-app")

    sent = {}
    with tracer.start_as_current_span(
        "GET /orders/{id}",
        kind=SpanKind.SERVER,
        attributes={
            # Current HTTP semantic conventions.
            "http.request.method": "GET",
            "url.scheme": "https",
            "server.address": "shop.example.com",
            "url.path": "/orders/42",
            "http.route": "/orders/{id}",
            "user_agent.original": "curl/8.5.0",
            "client.address": "203.0.113.9",
            "app.order_id": "42",
            "enduser.id": "alice",
        },
    ) as server:
        with tracer.start_as_current_span(
            "SELECT orders",
            kind=SpanKind.CLIENT,
            attributes={
                # Legacy database conventions, as many instrumentations still send.
                "db.system": "postgresql",
                "db.name": "orders",
                "db.user": "shop",
                "db.statement": "SELECT * FROM orders WHERE id = $1",
                "net.peer.name": "db.internal",
                "net.peer.port": 5432,
            },
        ) as db:
            pass
        with tracer.start_as_current_span(
            "GET",
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": "GET",
                "url.full": "http://inventory.internal:8080/stock/42",
                "server.address": "inventory.internal",
                "http.response.status_code": 503,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as client:
            try:
                raise InventoryUnavailable("inventory answered 503")
            except InventoryUnavailable as e:
                client.record_exception(e)
                client.set_status(Status(StatusCode.ERROR, "inventory answered 503"))
        server.set_attribute("http.response.status_code", 502)
        server.set_status(Status(StatusCode.ERROR))

    for name, span in (("server", server), ("db", db), ("http", client)):
        ctx = span.get_span_context()
        sent[name] = {
            "span_id": format(ctx.span_id, "016x"),
            "start_time_unix_nano": span.start_time,
        }
    sent["trace_id"] = format(server.get_span_context().trace_id, "032x")
    provider.shutdown()
    sent["export_failures"] = failures
    print(json.dumps(sent))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
