//! Bad input gets a clear error naming the problem, the process keeps serving, and valid data
//! sent alongside is delivered. Limits answer with the protocol's own signals.

use std::io::Write;
use std::time::Duration;

use crate::common::*;
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

/// An event nested deeper than a processor can decode is refused alone, over HTTP and gRPC,
/// while good events sent beside it (by the same client and by another, at the same moment) are
/// all delivered: before, the collector took it over HTTP, the processor could not decode the
/// bus record holding it and dead-lettered 50 acknowledged events with it.
#[test]
fn an_event_too_deep_for_the_bus_is_refused_alone_and_its_neighbours_are_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let tw = Tidewater::up(dir.path(), &[] as &[(&str, &str)]);
    let events_url = tw.http_url("/v1/events");
    let mut deep = json!("bottom");
    for _ in 0..40 {
        deep = json!({ "k": deep });
    }
    let good: Vec<Value> = (0..50)
        .map(|i| json!({"message_id": format!("good-{i}"), "name": "Good", "user_id": "a"}))
        .collect();
    std::thread::scope(|s| {
        let other = s.spawn(|| {
            json_post(
                &events_url,
                "application/json",
                json!({ "events": good }).to_string(),
            )
        });
        let (code, body) = json_post(
            &events_url,
            "application/json",
            json!({"events": [
                {"message_id": "deep", "name": "Deep", "user_id": "b", "properties": deep},
                {"message_id": "beside-http", "name": "Beside", "user_id": "b"}
            ]})
            .to_string(),
        );
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["accepted"], 1, "{body}");
        assert_eq!(body["rejected"][0]["index"], 0, "{body}");
        assert_eq!(body["rejected"][0]["field"], "properties", "{body}");
        assert!(
            body["rejected"][0]["reason"]
                .as_str()
                .unwrap()
                .contains("nested"),
            "{body}"
        );
        assert_eq!(
            other.join().unwrap(),
            (200, json!({"accepted": 50, "rejected": []}))
        );
    });

    // gRPC: the same event is rejected by index; a malformed request is INVALID_ARGUMENT.
    let deep_event = |id: &str| Event {
        message_id: id.into(),
        name: "Deep".into(),
        user_id: "c".into(),
        properties: tidewater_proto::json::struct_from_json(&deep),
        ..Default::default()
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let response = runtime.block_on(async {
        let mut client = EventsServiceClient::connect(tw.grpc_url()).await.unwrap();
        client
            .publish(PublishRequest {
                events: vec![
                    deep_event("deep-grpc"),
                    Event {
                        message_id: "beside-grpc".into(),
                        name: "Beside".into(),
                        user_id: "c".into(),
                        ..Default::default()
                    },
                ],
            })
            .await
            .unwrap()
            .into_inner()
    });
    assert_eq!(response.accepted, 1, "{response:?}");
    assert_eq!(response.rejected[0].index, 0, "{response:?}");
    let malformed = run_python(
        r#"
import grpc, sys
channel = grpc.insecure_channel(sys.argv[1])
publish = channel.unary_unary("/tidewater.events.v1.EventsService/Publish")
try:
    publish(b"\x0a\x7f\x01", timeout=10)
    print("OK")
except grpc.RpcError as e:
    print(e.code().name, e.details())
"#,
        &[&format!("127.0.0.1:{}", tw.grpc)],
    );
    assert!(
        malformed.starts_with("INVALID_ARGUMENT invalid PublishRequest"),
        "{malformed}"
    );

    let ids = || -> Vec<String> {
        tw.sink_lines("events")
            .iter()
            .map(|d| d["message_id"].as_str().unwrap().to_string())
            .collect()
    };
    let delivered = wait_for(Duration::from_secs(20), || {
        let ids = ids();
        (ids.len() >= 52).then_some(ids)
    })
    .unwrap_or_else(|| panic!("only {} of 52 good events delivered", ids().len()));
    let mut delivered = delivered;
    delivered.sort();
    delivered.dedup();
    assert_eq!(delivered.len(), 52);
    assert!(!delivered.iter().any(|id| id.starts_with("deep")));
    assert!(delivered.contains(&"beside-http".to_string()));
    assert!(delivered.contains(&"beside-grpc".to_string()));
    assert!(!tw
        .dir
        .join("tidewater-data/dead-letter/bus-records.ndjson")
        .exists());
}

/// Writes an HTTP/1.1 POST of `body` in `chunk`-byte pieces `pause` apart; the status, or
/// `None` when the collector closed the connection on an upload it refused mid-body.
fn slow_post(port: u16, path: &str, body: &[u8], chunk: usize, pause: Duration) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).ok()?;
    for piece in body.chunks(chunk) {
        if s.write_all(piece).is_err() {
            break;
        }
        std::thread::sleep(pause);
    }
    let mut response = Vec::new();
    let _ = s.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    text.split(' ').nth(1).and_then(|code| code.parse().ok())
}

/// Many concurrent slow uploads of 4 MiB bodies (and 256 gRPC streams beside them) against a 64 MiB
/// memory limit: bodies are counted before they are held, so what does not fit is refused
/// (429 / RESOURCE_EXHAUSTED), what was accepted is published, the process stays within the
/// limit plus a fixed overhead, and a stalled upload is cut off by `body_timeout` while others
/// are served.
#[test]
fn concurrent_uploads_stay_within_the_memory_limit() {
    let dir = tempfile::tempdir().unwrap();
    let tw = Tidewater::run(
        "collector",
        dir.path(),
        &[
            ("TIDEWATER_COLLECTOR__MEMORY_LIMIT", "64MiB"),
            ("TIDEWATER_COLLECTOR__BODY_TIMEOUT", "3s"),
        ],
    );
    let blob = "x".repeat(4000);
    let events: Vec<Value> = (0..1000)
        .map(|i| json!({"name": "Upload", "user_id": format!("u{i}"), "timestamp": 1_700_000_000_000u64 + i, "properties": {"blob": blob}}))
        .collect();
    let body = json!({ "events": events }).to_string().into_bytes();
    assert!(body.len() > 4_000_000);
    const UPLOADS: usize = 256;
    let statuses: Vec<Option<u16>> = std::thread::scope(|s| {
        // A client that declares a body, sends a little and stalls: cut off by body_timeout
        // (408), while the others go on meanwhile.
        let stalled = s.spawn(|| {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(("127.0.0.1", tw.http)).unwrap();
            let head = "POST /v1/events HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 100000\r\n\r\n{\"events\": [";
            s.write_all(head.as_bytes()).unwrap();
            let mut response = String::new();
            let _ = s.read_to_string(&mut response);
            response
        });
        std::thread::sleep(Duration::from_millis(300));
        let grpc = s.spawn(|| {
            // 256 streams at once: 8 connections of 32 concurrent exports.
            tokio::runtime::Runtime::new().unwrap().block_on(async {
                let mut exports = tokio::task::JoinSet::new();
                for connection in 0..8u32 {
                    let client = TraceServiceClient::connect(tw.grpc_url()).await.unwrap();
                    for stream in 0..32u32 {
                        let mut client = client.clone();
                        let request = otlp_traces(connection * 32 + stream, 100, 20);
                        exports.spawn(async move {
                            match client.export(request).await {
                                Ok(_) => tonic::Code::Ok,
                                Err(status) => status.code(),
                            }
                        });
                    }
                }
                exports.join_all().await
            })
        });
        let uploads: Vec<_> = (0..UPLOADS)
            .map(|_| {
                s.spawn(|| {
                    slow_post(
                        tw.http,
                        "/v1/events",
                        &body,
                        512 * 1024,
                        Duration::from_millis(100),
                    )
                })
            })
            .collect();
        let statuses = uploads.into_iter().map(|u| u.join().unwrap()).collect();
        let stalled = stalled.join().unwrap();
        assert!(stalled.starts_with("HTTP/1.1 408"), "{stalled}");
        assert!(stalled.contains("body_timeout"), "{stalled}");
        for code in grpc.join().unwrap() {
            assert!(
                // Refused for memory, or (on this loaded 2-core machine) not received within
                // the test's short body_timeout: both retryable in OTLP.
                matches!(
                    code,
                    tonic::Code::Ok
                        | tonic::Code::ResourceExhausted
                        | tonic::Code::DeadlineExceeded
                ),
                "{code:?}"
            );
        }
        statuses
    });
    let ok = statuses.iter().filter(|s| **s == Some(200)).count();
    // Refused for memory (429), or, as for the gRPC exports above, not read within the test's
    // short body_timeout while this 2-core machine is loaded (408): both retryable.
    let refused = statuses
        .iter()
        .filter(|s| matches!(**s, Some(429 | 408)))
        .count();
    assert!(ok > 0, "{statuses:?}");
    assert_eq!(
        ok + refused + statuses.iter().filter(|s| s.is_none()).count(),
        UPLOADS,
        "only 200, 429, 408 or a refused upload's closed connection: {statuses:?}"
    );
    let peak = tw.peak_rss();
    eprintln!(
        "{UPLOADS} uploads of {} bytes: {ok} accepted, {refused} refused 429; peak RSS {:.1} MiB",
        body.len(),
        peak as f64 / (1024.0 * 1024.0)
    );
    // The documented overhead beyond memory_limit (README, Limits).
    assert!(peak < (64 + 48) * 1024 * 1024, "peak RSS {peak}");
    // After the burst the memory is handed back to the system, not kept by the allocator.
    let after = wait_for(Duration::from_secs(10), || {
        let rss = tw.rss();
        (rss < peak / 2).then_some(rss)
    });
    eprintln!(
        "RSS after the burst: {:.1} MiB",
        tw.rss() as f64 / (1024.0 * 1024.0)
    );
    assert!(
        after.is_some(),
        "RSS stayed at {} after the burst (peak {peak})",
        tw.rss()
    );
    let metrics = tw.metrics();
    assert!(
        metrics.contains(
            "tidewater_collector_refused_requests_total{signal=\"events\",reason=\"timeout\"} 1"
        ),
        "the stalled upload is cut off: {metrics}"
    );
    let published = |m: &str| -> u64 {
        m.lines()
            .find(|l| l.starts_with("tidewater_collector_published_items_total{signal=\"events\"}"))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(published(&metrics), 1000 * ok as u64, "{metrics}");
}

/// One attribute nested past the limit refuses its span alone (OTLP partial success) instead of
/// the whole export; every other span is delivered.
#[test]
fn a_span_nested_too_deep_is_refused_alone_in_the_partial_success() {
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue, KeyValueList};
    let dir = tempfile::tempdir().unwrap();
    let tw = Tidewater::up(dir.path(), &[] as &[(&str, &str)]);
    let mut request = otlp_traces(1, 4, 5);
    let mut deep = AnyValue {
        value: Some(any_value::Value::StringValue("bottom".into())),
    };
    for _ in 0..40 {
        deep = AnyValue {
            value: Some(any_value::Value::KvlistValue(KeyValueList {
                values: vec![KeyValue {
                    key: "k".into(),
                    value: Some(deep),
                    ..Default::default()
                }],
            })),
        };
    }
    let bad_span = &mut request.resource_spans[0].scope_spans[0].spans[2];
    bad_span.attributes.push(KeyValue {
        key: "deep".into(),
        value: Some(deep),
        ..Default::default()
    });
    let bad_id = hex(&bad_span.span_id);
    let resp = post_protobuf(&tw.http_url("/v1/traces"), request.encode_to_vec());
    assert_eq!(resp.status(), 200);
    let partial = ExportTraceServiceResponse::decode(resp.bytes().unwrap())
        .unwrap()
        .partial_success
        .expect("a partial success");
    assert_eq!(partial.rejected_spans, 1);
    assert!(
        partial
            .error_message
            .starts_with("resource_spans[0].scope_spans[0].spans[2].attributes[")
            && partial.error_message.contains("nest deeper than"),
        "{}",
        partial.error_message
    );
    let delivered = wait_for(Duration::from_secs(20), || {
        let counts = span_id_counts(&tw);
        (counts.len() >= 19).then_some(counts)
    })
    .expect("the other 19 spans delivered");
    assert_eq!(delivered.len(), 19);
    assert!(!delivered.contains_key(&bad_id));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// An HTTP/2 "rapid reset" client (requests opened and cancelled at once, CVE-2023-44487) is
/// cut off by hyper's reset limits without flooding the log, and other clients are served.
#[test]
fn a_rapid_reset_client_is_cut_off_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let tw = Tidewater::up(dir.path(), &[] as &[(&str, &str)]);
    let log_before = tw.log().lines().count();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let sent = runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", tw.grpc))
            .await
            .unwrap();
        let (client, connection) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(connection);
        let mut client = client;
        let mut sent = 0;
        for _ in 0..5000 {
            let Ok(ready) = client.clone().ready().await else {
                break;
            };
            client = ready;
            let request = http::Request::post(format!(
                "http://127.0.0.1:{}/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                tw.grpc
            ))
            .header("content-type", "application/grpc")
            .body(())
            .unwrap();
            let Ok((_, mut stream)) = client.send_request(request, false) else {
                break;
            };
            stream.send_reset(h2::Reason::CANCEL);
            sent += 1;
        }
        sent
    });
    assert!(
        sent < 5000,
        "the connection was never cut off ({sent} resets)"
    );
    // Others are still served.
    let resp = post_protobuf(
        &tw.http_url("/v1/traces"),
        otlp_traces(1, 1, 1).encode_to_vec(),
    );
    assert_eq!(resp.status(), 200);
    let logged = tw.log().lines().count() - log_before;
    assert!(
        logged < 10,
        "{logged} log lines for one abusive client:\n{}",
        tw.log()
    );
}

/// A flood of idle connections (before: 1,100 of them exhausted the open files and OTLP,
/// events and `/healthz` all timed out, with nothing logged) is held to
/// `collector.max_connections`: the admin listener keeps answering, the cap is logged and
/// counted, idle connections are closed after `idle_timeout`, and a real client then gets in.
#[test]
fn idle_connections_are_capped_and_closed() {
    let dir = tempfile::tempdir().unwrap();
    let tw = Tidewater::up(
        dir.path(),
        &[
            ("TIDEWATER_COLLECTOR__MAX_CONNECTIONS", "20"),
            ("TIDEWATER_COLLECTOR__IDLE_TIMEOUT", "1s"),
        ],
    );
    let idle: Vec<std::net::TcpStream> = (0..100)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", tw.http)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        http_get(tw.admin, "/healthz").map(|(code, _)| code),
        Some(200),
        "the admin listener answers whatever the receivers suffer"
    );
    // Behind 100 idle connections, a real request is served once idle ones are closed.
    let started = std::time::Instant::now();
    let resp = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
        .post(tw.http_url("/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(otlp_traces(1, 1, 1).encode_to_vec())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    eprintln!(
        "served after {:?} behind 100 idle connections",
        started.elapsed()
    );
    let metrics = tw.metrics();
    assert!(
        metrics.contains("tidewater_collector_connection_limit_reached_total{listener=\"http\"}"),
        "{metrics}"
    );
    assert!(tw.log().contains("at the connection limit"), "{}", tw.log());
    drop(idle);
}
