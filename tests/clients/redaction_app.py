"""An app that leaks: it sends, through the official SDKs an app would use, telemetry seeded with
secrets and personal data, beside look-alikes that are none, so the test can check the collector
removed the first and kept the second.

- OpenTelemetry Python SDK (OTLP/gRPC): a span whose name, attributes, event and HTTP headers
  carry an AWS access key, a bearer token, a card number and an email; a log record whose body
  carries them too, with structured attributes.
- AWS X-Ray SDK (daemon protocol over UDP): a segment with the same in its annotations, metadata,
  user and URL.

Prints one JSON line: the trace ids and what was seeded.

    python redaction_app.py --endpoint http://127.0.0.1:4317 --daemon 127.0.0.1:2000
"""

import argparse
import json
import logging
import sys

SECRETS = {
    "aws_access_key": "AKIAY3F7QW2ZK5LMNOPQ",
    "bearer_token": "9f8e7d6c5b4a39281706f5e4d3c2b1a0",
    "card_number": "4242 4242 4242 4242",
    "email": "jane.doe@example.com",
}
LOOK_ALIKES = {
    "order_id": "4111111111111112",
    "git_sha": "3f786850e387550fdab836ed7e6dc881de23001b",
    "uuid": "123e4567-e89b-12d3-a456-426614174000",
    "image": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk.png",
}


def otel(endpoint):
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import SpanKind

    s = SECRETS
    resource = Resource.create({"service.name": "leaky", "deployed.by": s["email"]})
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True)))
    tracer = tracer_provider.get_tracer("leaky")
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(endpoint=endpoint, insecure=True)))
    log = logging.getLogger("leaky")
    log.setLevel(logging.INFO)
    log.addHandler(LoggingHandler(level=logging.INFO, logger_provider=logger_provider))

    with tracer.start_as_current_span(
        f"charge {s['card_number']}",
        kind=SpanKind.SERVER,
        attributes={
            "http.request.header.authorization": [f"Bearer {s['bearer_token']}"],
            "url.full": f"https://shop.example.com/pay?order=7&access_token={s['bearer_token']}",
            "enduser.email": s["email"],
            "app.env": [f"AWS_ACCESS_KEY_ID={s['aws_access_key']}", "HOME=/app"],
            "db.system": "postgresql",
            "db.statement": f"SELECT * FROM cards WHERE number = '{s['card_number']}' AND owner = '{s['email']}'",
            **{f"app.{k}": v for k, v in LOOK_ALIKES.items()},
        },
    ) as span:
        span.add_event("retry", {"detail": f"auth with Bearer {s['bearer_token']} failed for {s['email']}"})
        log.info(
            "payment by %s with card %s using key %s and header Authorization: Bearer %s",
            s["email"], s["card_number"], s["aws_access_key"], s["bearer_token"],
            extra={"app.customer": s["email"], **{f"app.{k}": v for k, v in LOOK_ALIKES.items()}},
        )
        trace_id = f"{span.get_span_context().trace_id:032x}"
    tracer_provider.shutdown()
    logger_provider.shutdown()
    return trace_id


def xray(daemon):
    from aws_xray_sdk.core import xray_recorder

    s = SECRETS
    xray_recorder.configure(service="leaky-xray", sampling=False, context_missing="LOG_ERROR", daemon_address=daemon)
    segment = xray_recorder.begin_segment("leaky-xray")
    segment.put_http_meta("url", f"https://shop.example.com/pay?api_key={s['aws_access_key']}&order=7")
    segment.set_user(s["email"])
    segment.put_annotation("card", s["card_number"])
    segment.put_annotation("order_id", LOOK_ALIKES["order_id"])
    segment.put_metadata("headers", {"Authorization": f"Bearer {s['bearer_token']}"}, "app")
    segment.put_metadata("look_alikes", LOOK_ALIKES, "app")
    xray_recorder.end_segment()
    return segment.trace_id


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--daemon", required=True)
    args = ap.parse_args()
    otel_trace = otel(args.endpoint)
    xray_trace = xray(args.daemon)
    print(json.dumps({"otel_trace_id": otel_trace, "xray_trace_id": xray_trace, "secrets": SECRETS, "look_alikes": LOOK_ALIKES}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
