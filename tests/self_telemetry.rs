//! Tidewater observes itself: with `telemetry.otlp_endpoint` set, its own spans go out over
//! OTLP. Here a second Tidewater is the receiving collector, so the check is on real spans in
//! a real sink.

use std::time::Duration;

use crate::common::*;
use prost::Message;

#[test]
fn own_spans_are_exported_over_otlp() {
    let observer_dir = tempfile::tempdir().unwrap();
    let observer = Tidewater::up::<&str, &str>(observer_dir.path(), &[]);
    let subject_dir = tempfile::tempdir().unwrap();
    let subject = Tidewater::up(
        subject_dir.path(),
        &[
            (
                "TIDEWATER_TELEMETRY__OTLP_ENDPOINT",
                observer.http_url("/v1/traces"),
            ),
            (
                "TIDEWATER_TELEMETRY__SERVICE_NAME",
                "tidewater-under-test".into(),
            ),
        ],
    );
    assert_eq!(
        post_protobuf(
            &subject.http_url("/v1/traces"),
            otlp_traces(1, 3, 2).encode_to_vec()
        )
        .status(),
        200
    );

    // The subject's batch exporter sends within its schedule (5 s by default).
    let names = wait_for(Duration::from_secs(20), || {
        let spans = spans(&observer.sink_lines("traces"));
        let names: Vec<String> = spans
            .iter()
            .filter(|(res, _)| {
                attr(&res["attributes"], "service.name").and_then(|v| v["stringValue"].as_str())
                    == Some("tidewater-under-test")
            })
            .map(|(_, s)| s["name"].as_str().unwrap().to_string())
            .collect();
        ["ingest", "publish", "round", "deliver"]
            .iter()
            .all(|n| names.iter().any(|m| m == n))
            .then_some(names)
    });
    assert!(
        names.is_some(),
        "observer got: {:?}\nsubject log:\n{}",
        spans(&observer.sink_lines("traces")).len(),
        subject.log()
    );
}
