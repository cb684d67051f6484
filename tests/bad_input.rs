//! Bad input gets a clear error naming the problem, the process keeps serving, and valid data
//! sent alongside is delivered. Limits answer with the protocol's own signals.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use prost::Message;
use serde_json::{json, Value};
use tidewater_proto::events::v1::events_service_client::EventsServiceClient;
use tidewater_proto::events::v1::{Event, PublishRequest};

fn json_post(
    url: &str,
    content_type: &str,
    body: impl Into<reqwest::blocking::Body>,
) -> (u16, Value) {
    let resp = reqwest::blocking::Client::new()
        .post(url)
        .header("content-type", content_type)
        .body(body)
        .send()
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().unwrap_or(Value::Null))
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

#[test]
fn bad_requests_get_clear_errors_and_good_data_still_flows() {
    let dir = tempfile::tempdir().unwrap();
    let tw = Tidewater::up(
        dir.path(),
        &[
            ("TIDEWATER_COLLECTOR__MAX_REQUEST_SIZE", "64KiB"),
            ("TIDEWATER_COLLECTOR__MAX_EVENTS_PER_BATCH", "10"),
        ],
    );
    let traces = tw.http_url("/v1/traces");
    let good = |batch: u32| {
        let resp = post_protobuf(&traces, otlp_traces(batch, 2, 3).encode_to_vec());
        assert_eq!(
            resp.status(),
            200,
            "valid data is accepted between bad requests"
        );
    };

    good(1);
    // Truncated protobuf: 400 with a google.rpc.Status saying why.
    let mut truncated = otlp_traces(99, 2, 3).encode_to_vec();
    truncated.truncate(truncated.len() / 2);
    let resp = post_protobuf(&traces, truncated);
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.headers()["content-type"], "application/x-protobuf");
    let status = tonic_types::Status::decode(resp.bytes().unwrap()).unwrap();
    assert_eq!(status.code, 3, "INVALID_ARGUMENT");
    assert!(
        status.message.contains("invalid OTLP protobuf"),
        "{}",
        status.message
    );

    good(2);
    // Wrong content type: 415 naming what to send.
    let (code, body) = json_post(&traces, "text/plain", "hello");
    assert_eq!(code, 415);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("application/x-protobuf"),
        "{body}"
    );

    // Invalid JSON, for OTLP and for events: 400 with the parser's position.
    let (code, body) = json_post(&traces, "application/json", "{\"resourceSpans\": [");
    assert_eq!(code, 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("invalid OTLP JSON"),
        "{body}"
    );
    let (code, body) = json_post(
        &tw.http_url("/v1/events"),
        "application/json",
        "{\"events\": [{\"name\": }]}",
    );
    assert_eq!(code, 400);
    assert!(
        body["message"].as_str().unwrap().contains("line 1 column"),
        "{body}"
    );

    good(3);
    // An event missing `name` is rejected alone; its neighbours are delivered.
    let (code, body) = json_post(
        &tw.http_url("/v1/events"),
        "application/json",
        json!({"events": [
            {"message_id": "ok-1", "name": "A", "user_id": "u"},
            {"message_id": "no-name", "user_id": "u"},
            {"message_id": "ok-2", "name": "B", "user_id": "u"}
        ]})
        .to_string(),
    );
    assert_eq!(code, 200);
    assert_eq!(
        body,
        json!({"accepted": 2, "rejected": [{"index": 1, "message_id": "no-name", "field": "name", "reason": "required and must not be empty"}]})
    );
    // A batch where every event is bad is a 400, with the same per-event report.
    let (code, body) = json_post(
        &tw.http_url("/v1/events"),
        "application/json",
        json!([{"name": "x"}]).to_string(),
    );
    assert_eq!(code, 400);
    assert_eq!(body["rejected"][0]["field"], "user_id");

    // Oversized: 413 by declared length, by streamed length, and after gunzip (a small bomb).
    let big = otlp_traces(100, 400, 5).encode_to_vec();
    assert!(big.len() > 64 * 1024);
    let resp = post_protobuf(&traces, big.clone());
    assert_eq!(resp.status(), 413);
    let resp = reqwest::blocking::Client::new()
        .post(&traces)
        .header("content-type", "application/x-protobuf")
        .header("content-encoding", "gzip")
        .body(gzip(&vec![0u8; 10 * 1024 * 1024]))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 413);
    let too_many: Vec<Value> = (0..11)
        .map(|i| json!({"name": "x", "user_id": format!("u{i}")}))
        .collect();
    let (code, body) = json_post(
        &tw.http_url("/v1/events"),
        "application/json",
        json!({ "events": too_many }).to_string(),
    );
    assert_eq!(code, 413);
    assert!(
        body["message"].as_str().unwrap().contains("limit is 10"),
        "{body}"
    );

    // gzip-compressed JSON within the limit is fine.
    let resp = reqwest::blocking::Client::new()
        .post(&traces)
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(gzip(br#"{"resourceSpans":[{"scopeSpans":[{"spans":[{"traceId":"5b8efff798038103d269b633813fc60c","spanId":"eee19b7ec3c1b174","name":"gz"}]}]}]}"#))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);

    // gRPC: an oversized message is RESOURCE_EXHAUSTED; an event without a user is
    // INVALID_ARGUMENT naming events[0].user_id.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut client = TraceServiceClient::connect(tw.grpc_url()).await.unwrap();
        let err = client.export(otlp_traces(101, 400, 5)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
        let ok = client
            .export(otlp_traces(4, 2, 3))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ok.partial_success, None);

        let mut events = EventsServiceClient::connect(tw.grpc_url()).await.unwrap();
        let err = events
            .publish(PublishRequest {
                events: vec![Event {
                    name: "x".into(),
                    ..Default::default()
                }],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument);
        assert!(
            err.message().contains("events[0].user_id"),
            "{}",
            err.message()
        );
    });

    // Still serving, and every valid item arrived.
    assert_eq!(http_get(tw.admin, "/healthz").map(|(c, _)| c), Some(200));
    let seen = wait_for(Duration::from_secs(15), || {
        let seen = span_id_counts(&tw);
        let events = tw.sink_lines("events");
        (seen.len() == 4 * 6 + 1 && events.len() == 2).then_some((seen, events))
    });
    let (_, events) = seen.unwrap_or_else(|| {
        panic!(
            "valid data missing: {} spans, {:?}\n{}",
            span_id_counts(&tw).len(),
            tw.sink_lines("events"),
            tw.log()
        )
    });
    let ids: Vec<&str> = events
        .iter()
        .map(|e| e["message_id"].as_str().unwrap())
        .collect();
    assert!(ids.contains(&"ok-1") && ids.contains(&"ok-2"));

    let metrics = tw.metrics();
    assert!(
        metrics.contains(
            "tidewater_collector_refused_requests_total{signal=\"traces\",reason=\"too_large\"}"
        ),
        "{metrics}"
    );
}

#[test]
fn a_full_collector_pushes_back_with_retry_after_and_takes_the_retry() {
    let dir = tempfile::tempdir().unwrap();
    // Room for one request at a time; a batch waits 2 s, so the first request holds the room.
    let tw = Tidewater::up(
        dir.path(),
        &[
            ("TIDEWATER_COLLECTOR__MEMORY_LIMIT", "48KiB"),
            ("TIDEWATER_COLLECTOR__BATCH__MAX_SIZE", "48KiB"),
            ("TIDEWATER_COLLECTOR__BATCH__TIMEOUT", "2s"),
        ],
    );
    let traces = tw.http_url("/v1/traces");
    let request = |batch| otlp_traces(batch, 60, 5).encode_to_vec();
    assert!(request(0).len() > 24 * 1024 && request(0).len() < 48 * 1024);

    std::thread::scope(|s| {
        let first = s.spawn(|| post_protobuf(&traces, request(1)).status().as_u16());
        std::thread::sleep(Duration::from_millis(500));
        let refused = post_protobuf(&traces, request(2));
        assert_eq!(refused.status(), 429);
        assert_eq!(refused.headers()["retry-after"], "1");
        let grpc = tokio::runtime::Runtime::new().unwrap().block_on(async {
            let mut client = TraceServiceClient::connect(tw.grpc_url()).await.unwrap();
            client.export(otlp_traces(3, 60, 5)).await.unwrap_err()
        });
        assert_eq!(grpc.code(), tonic::Code::ResourceExhausted);
        use tonic_types::StatusExt;
        assert_eq!(
            grpc.get_details_retry_info().and_then(|r| r.retry_delay),
            Some(Duration::from_secs(1))
        );
        assert_eq!(first.join().unwrap(), 200);
    });
    // After the first is durable there is room again: the client's retry goes through.
    assert_eq!(post_protobuf(&traces, request(2)).status(), 200);
    let metrics = tw.metrics();
    assert!(
        metrics.contains(
            "tidewater_collector_refused_requests_total{signal=\"traces\",reason=\"busy\"} 2"
        ),
        "{metrics}"
    );
    assert!(
        wait_for(Duration::from_secs(15), || (span_id_counts(&tw).len()
            == 600)
            .then_some(()))
        .is_some()
    );
}
