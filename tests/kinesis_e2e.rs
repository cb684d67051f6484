//! Kinesis as the bus, end to end: the OpenTelemetry Python SDK sends to the collector, the
//! records go through a real Kinesis stand-in (kinesalite), leases and checkpoints live in
//! DynamoDB (moto), and a processor consumes everything into the file sink.

use std::collections::HashSet;
use std::time::Duration;

use crate::common::*;
use crate::kinesis_support::*;
use serde_json::json;
use tidewater_proto::Signal;

#[test]
fn otel_sdk_through_kinesis_reaches_the_file_sink() {
    let peers = Peers::start();
    peers.create_stream("e2e", 2);
    let dir = tempfile::tempdir().unwrap();
    let tw = Tidewater::up(dir.path(), &peers.env("e2e", "e2e-leases"));

    let via_grpc = run_otel_app(
        "grpc",
        &tw.grpc_url(),
        &["--service", "shop-grpc", "--traces", "30", "--logs", "10"],
    );
    let via_http = run_otel_app(
        "http",
        &tw.http_url(""),
        &["--service", "shop-http", "--traces", "30", "--logs", "10"],
    );
    for sent in [&via_grpc, &via_http] {
        assert_eq!(
            sent["export_failures"],
            json!({"spans": 0, "metrics": 0, "logs": 0}),
            "{sent}"
        );
    }
    let expected: HashSet<String> = sent_span_ids(&via_grpc)
        .into_iter()
        .chain(sent_span_ids(&via_http))
        .collect();
    assert_eq!(expected.len(), 120);

    let seen = wait_for(Duration::from_secs(60), || {
        let seen = span_id_counts(&tw);
        (seen.len() >= expected.len()).then_some(seen)
    })
    .unwrap_or_else(|| panic!("spans missing from the sink:\n{}", tw.log()));
    assert_eq!(seen.keys().cloned().collect::<HashSet<_>>(), expected);
    assert!(
        seen.values().all(|n| *n == 1),
        "no span duplicated on the happy path"
    );
    let logs = wait_for(Duration::from_secs(20), || {
        let logs = log_records(&tw.sink_lines("logs"));
        (logs.len() >= 20).then_some(logs)
    });
    assert!(logs.is_some(), "every log record arrives too");

    // What the stream itself holds: our envelopes, packed into KPL aggregates per shard, keyed
    // at the middle of a shard's hash range; every span is in exactly one envelope.
    let stored = peers.stored("e2e");
    assert!(!stored.is_empty());
    let shards: HashSet<&str> = stored.iter().map(|s| s.shard.as_str()).collect();
    assert_eq!(shards.len(), 2, "both shards used: {shards:?}");
    let by_signal = envelopes(&stored);
    let trace_items: u32 = by_signal[&(Signal::Traces as i32)]
        .iter()
        .map(|e| e.item_count)
        .sum();
    assert_eq!(trace_items as usize, expected.len());
    let aggregated = stored
        .iter()
        .filter(|s| s.data.starts_with(&[0xF3, 0x89, 0x9A, 0xC2]))
        .count();
    let envelope_count: usize = by_signal.values().map(Vec::len).sum();
    assert!(
        envelope_count > stored.len() || aggregated == 0,
        "aggregates hold several envelopes"
    );

    let metrics = tw.metrics();
    for name in [
        "tidewater_kinesis_put_records_total",
        "tidewater_kinesis_checkpoints_total",
        "tidewater_kinesis_millis_behind_latest",
    ] {
        assert!(metrics.contains(name), "missing {name} in:\n{metrics}");
    }
}

/// A batch larger than a Kinesis record is split into several records that keep the lane's
/// key; each stays within the configured record limit and every span arrives.
#[test]
fn a_batch_over_the_record_limit_travels_as_several_records_under_one_key() {
    let peers = Peers::start();
    peers.create_stream("big", 1);
    let dir = tempfile::tempdir().unwrap();
    let mut env = peers.env("big", "big-leases");
    env.push((
        "TIDEWATER_BUS__KINESIS__MAX_RECORD_SIZE".into(),
        "16KiB".into(),
    ));
    let tw = Tidewater::up(dir.path(), &env);
    // Incompressible attributes, so the compressed batch is well over the 16 KiB limit.
    let mut request = otlp_traces(7, 200, 5);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for span in request
        .resource_spans
        .iter_mut()
        .flat_map(|r| &mut r.scope_spans)
        .flat_map(|s| &mut s.spans)
    {
        let noise: String = (0..48)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                char::from(b'a' + (x % 26) as u8)
            })
            .collect();
        span.attributes
            .push(opentelemetry_proto::tonic::common::v1::KeyValue {
                key: "noise".into(),
                value: Some(opentelemetry_proto::tonic::common::v1::AnyValue {
                    value: Some(
                        opentelemetry_proto::tonic::common::v1::any_value::Value::StringValue(
                            noise,
                        ),
                    ),
                }),
                ..Default::default()
            });
    }
    let resp = post_protobuf(
        &tw.http_url("/v1/traces"),
        prost::Message::encode_to_vec(&request),
    );
    assert_eq!(resp.status(), 200);
    let seen = wait_for(Duration::from_secs(30), || {
        let seen = span_id_counts(&tw);
        (seen.len() >= 1000).then_some(seen)
    })
    .unwrap_or_else(|| panic!("spans missing:\n{}", tw.log()));
    assert_eq!(seen.len(), 1000);

    let stored = peers.stored("big");
    for s in &stored {
        assert!(
            s.data.len() + s.partition_key.len() <= 16 * 1024,
            "record of {} bytes",
            s.data.len()
        );
    }
    let traces = &envelopes(&stored)[&(Signal::Traces as i32)];
    assert!(traces.len() > 1, "split into {} envelopes", traces.len());
    assert_eq!(traces.iter().map(|e| e.item_count).sum::<u32>(), 1000);
    let keys: HashSet<&str> = stored.iter().map(|s| s.partition_key.as_str()).collect();
    assert_eq!(keys.len(), 1, "one key: {keys:?}");
}
