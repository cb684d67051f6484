"""An OTLP/HTTP receiver for the OTLP sink's end-to-end tests.

No OpenTelemetry Collector binary can be installed here (package registries only), so the test
runs this instead: requests are decoded with the official `opentelemetry-proto` package (the
classes the Python SDK's own exporters encode with), and, with --sigv4, each request's
signature is checked with botocore's own SigV4 signer (the one the AWS CLI signs with): a
request whose signature, scope or payload hash does not match is refused with 403, as AWS
does. Faults are injected on request: `POST /control/faults` with a JSON list of answers the
next data requests of a signal get (`{"signal": "traces", "status": 503, "retry_after": "1"}`,
or `{"signal": "traces", "reject": 1, "message": "..."}` for a partial success that stores all
but the request's last item). `GET /control/received` returns what was stored.

    python otlp_receiver.py --port 4318 --sigv4 --region us-east-1
"""

import argparse
import gzip
import hashlib
import hmac
import json
import re
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from google.protobuf.json_format import MessageToDict
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2 as logs_pb
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2 as metrics_pb
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2 as trace_pb

SIGNALS = {
    "/v1/traces": ("traces", trace_pb.ExportTraceServiceRequest, trace_pb.ExportTraceServiceResponse, "xray"),
    "/v1/metrics": ("metrics", metrics_pb.ExportMetricsServiceRequest, metrics_pb.ExportMetricsServiceResponse, "monitoring"),
    "/v1/logs": ("logs", logs_pb.ExportLogsServiceRequest, logs_pb.ExportLogsServiceResponse, "logs"),
}
AUTH = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request, "
    r"SignedHeaders=(?P<signed>[^,]+), Signature=(?P<signature>[0-9a-f]{64})$"
)

lock = threading.Lock()
state = {"spans": [], "points": [], "logs": [], "requests": [], "faults": []}


def attributes(kvs):
    out = {}
    for kv in kvs:
        value = MessageToDict(kv.value)
        out[kv.key] = next(iter(value.values()), None) if value else None
    return out


def check_signature(args, path, headers, body):
    """None when botocore's signer computes the same signature for this request, else why not."""
    auth = headers.get("Authorization", "")
    m = AUTH.match(auth)
    if not m:
        return "no SigV4 Authorization header"
    expected_service = SIGNALS[path][3]
    if m["key"] != args.access_key or m["region"] != args.region or m["service"] != expected_service:
        return f"wrong scope {m['key']}/{m['region']}/{m['service']} (expected {args.region}/{expected_service})"
    if headers.get("x-amz-content-sha256") != hashlib.sha256(body).hexdigest():
        return "x-amz-content-sha256 is not the body's hash"
    stamp = headers.get("x-amz-date", "")
    if not stamp.startswith(m["date"]):
        return "x-amz-date is not the credential scope's date"
    signed = m["signed"].split(";")
    request = AWSRequest(
        method="POST",
        url=f"http://{headers.get('Host')}{path}",
        data=body,
        headers={name: headers.get(name, "") for name in signed},
    )
    request.context["timestamp"] = stamp
    signer = SigV4Auth(Credentials(args.access_key, args.secret_key), expected_service, args.region)
    canonical = signer.canonical_request(request)
    want = signer.signature(signer.string_to_sign(request, canonical), request)
    if not hmac.compare_digest(want, m["signature"]):
        return "signature does not match"
    return None


def store(signal, message, drop, headers):
    """Stores every item of `message` but its last `drop`; returns how many it held."""
    items = []
    if signal == "traces":
        for rs in message.resource_spans:
            res = attributes(rs.resource.attributes)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    items.append({"trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(), "name": s.name,
                                  "kind": s.kind, "attributes": attributes(s.attributes), "resource": res,
                                  "scope": ss.scope.name, "status": s.status.code})
    elif signal == "metrics":
        for rm in message.resource_metrics:
            res = attributes(rm.resource.attributes)
            for sm in rm.scope_metrics:
                for metric in sm.metrics:
                    data = MessageToDict(metric, preserving_proto_field_name=True)
                    for kind in ("sum", "gauge", "histogram", "exponential_histogram", "summary"):
                        for p in data.get(kind, {}).get("data_points", []):
                            p["attributes"] = {a["key"]: next(iter(a["value"].values())) for a in p.get("attributes", [])}
                            items.append({"metric": metric.name, "kind": kind, "point": p, "resource": res})
    else:
        for rl in message.resource_logs:
            res = attributes(rl.resource.attributes)
            for sl in rl.scope_logs:
                for r in sl.log_records:
                    items.append({"body": MessageToDict(r.body).get("stringValue"), "attributes": attributes(r.attributes),
                                  "trace_id": r.trace_id.hex(), "span_id": r.span_id.hex(), "resource": res,
                                  "severity": r.severity_text,
                                  "log_group": headers.get("x-aws-log-group"), "log_stream": headers.get("x-aws-log-stream")})
    kept = items[: len(items) - drop] if drop else items
    state["spans" if signal == "traces" else "points" if signal == "metrics" else "logs"].extend(kept)
    return len(items)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply(self, status, body=b"", content_type="application/x-protobuf", extra=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/control/received":
            with lock:
                body = json.dumps(state).encode()
            return self.reply(200, body, "application/json")
        self.reply(404, b"", "text/plain")

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path == "/control/faults":
            with lock:
                state["faults"].extend(json.loads(body))
            return self.reply(200, b"{}", "application/json")
        if self.path not in SIGNALS:
            return self.reply(404, b"", "text/plain")
        signal, request_type, response_type, _ = SIGNALS[self.path]
        record = {"signal": signal, "bytes": len(body), "encoding": self.headers.get("Content-Encoding"),
                  "content_type": self.headers.get("Content-Type"),
                  "api_key": self.headers.get("x-honeycomb-team")}
        with lock:
            state["requests"].append(record)
            if args.sigv4:
                why = check_signature(args, self.path, self.headers, body)
                record["signature"] = why or "ok"
                if why:
                    record["status"] = 403
                    return self.reply(403, json.dumps({"message": why}).encode(), "application/json")
            fault = next((f for f in state["faults"] if f.get("signal") == signal), None)
            if fault:
                state["faults"].remove(fault)
            if fault and "status" in fault:
                record["status"] = fault["status"]
                extra = {"Retry-After": fault["retry_after"]} if "retry_after" in fault else None
                return self.reply(fault["status"], b"", extra=extra)
            raw = gzip.decompress(body) if self.headers.get("Content-Encoding") == "gzip" else body
            message = request_type()
            message.ParseFromString(raw)
            drop = fault.get("reject", 0) if fault else 0
            record["items"] = store(signal, message, drop, self.headers)
            record["status"] = 200
            response = response_type()
            if drop:
                field = {"traces": "rejected_spans", "metrics": "rejected_data_points", "logs": "rejected_log_records"}[signal]
                setattr(response.partial_success, field, drop)
                response.partial_success.error_message = fault.get("message", "")
                record["rejected"] = drop
            return self.reply(200, response.SerializeToString())


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--sigv4", action="store_true")
    p.add_argument("--region", default="us-east-1")
    p.add_argument("--access-key", default="testing")
    p.add_argument("--secret-key", default="testing")
    args = p.parse_args()
    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    print(f"listening on 127.0.0.1:{args.port}", file=sys.stderr, flush=True)
    server.serve_forever()
