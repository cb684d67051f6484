"""An app instrumented with the AWS X-Ray SDK for Python, sending to the X-Ray daemon address it
is given (AWS_XRAY_DAEMON_ADDRESS semantics) over UDP, exactly as it would to the real daemon.

One request segment with an annotation, metadata, http fields and a user; a subsegment for an
S3 call; and a subsegment that records an exception. `streaming_threshold=1` makes the SDK
stream finished subsegments as their own documents, the daemon protocol's second form. Prints
one JSON line with every document the SDK sent (the emitter is wrapped to record them).

    python xray_sdk_app.py --daemon 127.0.0.1:2000
"""

import argparse
import json
import sys

from aws_xray_sdk.core import xray_recorder
from aws_xray_sdk.core.emitters.udp_emitter import UDPEmitter


class RecordingEmitter(UDPEmitter):
    def __init__(self, address):
        super().__init__(address)
        self.sent = []

    def send_entity(self, entity):
        self.sent.append(json.loads(entity.serialize()))
        super().send_entity(entity)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--daemon", required=True)
    args = ap.parse_args()

    emitter = RecordingEmitter(args.daemon)
    # No centralized sampling (it would poll the daemon's TCP port): keep every request.
    xray_recorder.configure(
        service="checkout-sdk",
        sampling=False,
        context_missing="LOG_ERROR",
        daemon_address=args.daemon,
        emitter=emitter,
        streaming_threshold=1,
    )

    segment = xray_recorder.begin_segment("checkout-sdk")
    segment.put_http_meta("method", "POST")
    segment.put_http_meta("url", "https://shop.example.com/checkout")
    segment.put_http_meta("status", 500)
    segment.set_user("bob")
    segment.put_annotation("cart_items", 3)
    segment.put_metadata("cart", {"sku": ["A-1", "B-2"]}, "app")

    s3 = xray_recorder.begin_subsegment("S3", namespace="aws")
    s3.set_aws({"operation": "PutObject", "region": "us-east-1", "bucket_name": "receipts"})
    xray_recorder.end_subsegment()

    pay = xray_recorder.begin_subsegment("charge-card")
    try:
        raise RuntimeError("card declined")
    except RuntimeError as e:
        import traceback

        pay.add_exception(e, traceback.extract_stack())
    xray_recorder.end_subsegment()

    segment.add_fault_flag()
    xray_recorder.end_segment()

    print(json.dumps({"trace_id": segment.trace_id, "segment_id": segment.id, "sent": emitter.sent}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
