"""The KPL aggregated-record format's reference implementation (PyPI `aws-kinesis-agg`), driven
by the Kinesis cross-check test through stdin and stdout (JSON, record data in base64).

    python kpl_agg.py deaggregate < stored-records.json   # what a Lambda consumer would see
    python kpl_agg.py aggregate < user-records.json       # what a KPL producer would put
"""

import base64
import json
import sys

from aws_kinesis_agg.aggregator import RecordAggregator
from aws_kinesis_agg.deaggregator import deaggregate_records


def deaggregate(records):
    # The Lambda event shape, which the library reads as is.
    event = [
        {
            "kinesis": {
                "kinesisSchemaVersion": "1.0",
                "sequenceNumber": r["sequence"],
                "partitionKey": r["partition_key"],
                "approximateArrivalTimestamp": 0,
                "data": r["data"],
            }
        }
        for r in records
    ]
    out = []
    for u in deaggregate_records(event):
        k = u["kinesis"]
        data = k["data"]
        out.append(
            {
                "sequence": k["sequenceNumber"],
                "sub": k.get("subSequenceNumber"),
                "aggregated": k.get("aggregated", False),
                "partition_key": k["partitionKey"],
                "explicit_hash_key": k.get("explicitHashKey"),
                "data": data.decode() if isinstance(data, bytes) else data,
            }
        )
    return out


def aggregate(records):
    aggregator = RecordAggregator()
    out = []

    def emit(agg):
        if agg is not None:
            pk, ehk, data = agg.get_contents()
            out.append(
                {
                    "partition_key": pk,
                    "explicit_hash_key": ehk,
                    "data": base64.b64encode(data).decode(),
                    "count": agg.get_num_user_records(),
                }
            )

    for r in records:
        emit(
            aggregator.add_user_record(
                r["partition_key"], base64.b64decode(r["data"]), r.get("explicit_hash_key")
            )
        )
    emit(aggregator.clear_and_get())
    return out


if __name__ == "__main__":
    command = sys.argv[1]
    records = json.load(sys.stdin)
    result = {"deaggregate": deaggregate, "aggregate": aggregate}[command](records)
    json.dump(result, sys.stdout)
