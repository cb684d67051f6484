"""Reads what X-Ray (moto, at --endpoint) stored, with boto3, and prints it as JSON.

    python xray_query.py --endpoint URL batch-get-traces TRACE_ID...
    python xray_query.py --endpoint URL trace-summaries --start EPOCH --end EPOCH

boto3 is used rather than aws-sdk-xray from the Rust tests because moto's GetTraceSummaries
body is one the Rust SDK cannot parse, while boto3 can (see TESTBEDS).
"""

import argparse
import datetime
import json

import boto3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--endpoint", required=True)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("batch-get-traces")
    b.add_argument("ids", nargs="+")
    s = sub.add_parser("trace-summaries")
    s.add_argument("--start", type=int, required=True)
    s.add_argument("--end", type=int, required=True)
    args = ap.parse_args()

    xray = boto3.client(
        "xray",
        endpoint_url=args.endpoint,
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    if args.cmd == "batch-get-traces":
        out = xray.batch_get_traces(TraceIds=args.ids)
        traces = [
            {
                "Id": t["Id"],
                "Segments": [
                    {"Id": s["Id"], "Document": json.loads(s["Document"])} for s in t["Segments"]
                ],
            }
            for t in out["Traces"]
        ]
        print(json.dumps({"Traces": traces, "UnprocessedTraceIds": out["UnprocessedTraceIds"]}))
    else:
        out = xray.get_trace_summaries(
            StartTime=datetime.datetime.fromtimestamp(args.start, datetime.timezone.utc),
            EndTime=datetime.datetime.fromtimestamp(args.end, datetime.timezone.utc),
        )
        print(json.dumps({"TraceSummaries": out["TraceSummaries"]}, default=str))


if __name__ == "__main__":
    main()
