//! Kinesis as the bus, end to end: the OpenTelemetry Python SDK sends to the collector, the
//! records go through a real Kinesis stand-in (kinesalite), leases and checkpoints live in
//! DynamoDB (moto), and a processor consumes everything into the file sink.

mod common;
mod kinesis_support;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use kinesis_support::*;
use serde_json::{json, Value};
use tidewater_proto::Signal;

fn sent_span_ids(sent: &Value) -> Vec<String> {
    sent["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["span_id"].as_str().unwrap().to_string())
        .collect()
}

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
