//! The OTLP sink end to end: an app using the official OpenTelemetry Python SDK exports
//! traces, metrics and logs over OTLP/HTTP to `tidewater up`, whose OTLP sink exports them
//! (gzip, SigV4, the CloudWatch Logs headers, an API-key header) to an OTLP receiver the test
//! runs (`tests/clients/otlp_receiver.py`). No OpenTelemetry Collector binary can be installed
//! here and moto has no OTLP endpoint, so the receiver is a stand-in, built on the official
//! `opentelemetry-proto` package to decode and on botocore's SigV4 signer to verify each
//! request's signature. It injects a 503 with `Retry-After` and a partial success; the test
//! checks what it stored, item by item, and what Tidewater dead-lettered and counted.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::common::peers::Peer;
use crate::common::*;

fn receiver() -> Peer {
    let port = free_port();
    let mut cmd = Command::new(python());
    cmd.arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/otlp_receiver.py"))
        .args([
            "--port",
            &port.to_string(),
            "--sigv4",
            "--region",
            "us-east-1",
        ]);
    Peer::spawn("otlp_receiver", cmd, port, |p| {
        http_get(p, "/control/received").is_some_and(|(code, _)| code == 200)
    })
}

fn received(peer: &Peer) -> Value {
    let (_, body) = http_get(peer.port, "/control/received").expect("receiver answers");
    serde_json::from_str(&body).unwrap()
}

fn inject(peer: &Peer, faults: Value) {
    let r = reqwest::blocking::Client::new()
        .post(format!("{}/control/faults", peer.endpoint()))
        .body(faults.to_string())
        .send()
        .unwrap();
    assert!(r.status().is_success());
}

#[test]
fn otel_sdk_data_reaches_an_otlp_endpoint_signed_once_each_through_a_503_and_a_partial_success() {
    let peer = receiver();
    inject(
        &peer,
        json!([
            {"signal": "traces", "status": 503, "retry_after": "1"},
            {"signal": "traces", "reject": 1, "message": "1 span older than 14 days"},
        ]),
    );
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("TIDEWATER_SINKS__OTLP__ENABLED", "true".to_string()),
        ("TIDEWATER_SINKS__OTLP__ENDPOINT", peer.endpoint()),
        ("TIDEWATER_SINKS__OTLP__SIGV4__ENABLED", "true".into()),
        ("TIDEWATER_SINKS__OTLP__LOG_GROUP", "/tidewater/e2e".into()),
        ("TIDEWATER_SINKS__OTLP__LOG_STREAM", "checkout-1".into()),
        (
            "TIDEWATER_SINKS__OTLP__HEADERS__X-HONEYCOMB-TEAM",
            "hc-secret-key".into(),
        ),
        (
            "TIDEWATER_SINKS__OTLP__DELIVERY__RETRY_INITIAL",
            "50ms".into(),
        ),
        ("TIDEWATER_SINKS__OTLP__DELIVERY__RETRY_MAX", "2s".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "testing".into()),
        ("AWS_SECRET_ACCESS_KEY", "testing".into()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ];
    let tw = Tidewater::up(dir.path(), &env);

    let sent = run_otel_app(
        "http",
        &tw.http_url(""),
        &["--traces", "10", "--logs", "10", "--logs-in-spans"],
    );
    let sent_spans = sent_span_ids(&sent);
    // 10 server + 10 client spans, and a span around each log record.
    assert_eq!(sent_spans.len(), 20);

    let got = wait_for(Duration::from_secs(60), || {
        let r = received(&peer);
        let spans = r["spans"].as_array()?.len();
        let logs = r["logs"].as_array()?.len();
        let points = r["points"].as_array()?.len();
        // 30 spans sent, one rejected by the partial success.
        (spans >= 29 && logs >= 10 && points >= 2).then_some(r)
    })
    .unwrap_or_else(|| panic!("not everything arrived: {}\n{}", received(&peer), tw.log()));

    // Every request was signed by the right name and verified by botocore's signer, carried the
    // API key and gzip; logs requests carried the log group and stream.
    let requests = got["requests"].as_array().unwrap();
    for r in requests {
        assert_eq!(r["signature"], "ok", "{r}");
        assert_eq!(r["encoding"], "gzip", "{r}");
        assert_eq!(r["content_type"], "application/x-protobuf", "{r}");
        assert_eq!(r["api_key"], "hc-secret-key", "{r}");
    }
    let traces: Vec<&Value> = requests
        .iter()
        .filter(|r| r["signal"] == "traces")
        .collect();
    assert_eq!(traces[0]["status"], 503, "{traces:?}");
    // The call answered 503 was sent again whole (same body), and taken.
    assert!(
        traces[1..]
            .iter()
            .any(|r| r["bytes"] == traces[0]["bytes"] && r["status"] == 200),
        "{traces:?}"
    );
    let partial: Vec<&&Value> = traces
        .iter()
        .filter(|r| r.get("rejected").is_some())
        .collect();
    assert_eq!(partial.len(), 1, "{traces:?}");
    assert_eq!(partial[0]["rejected"], 1);

    // Each span stored once, attributes intact; the one the endpoint rejected is not there.
    let spans = got["spans"].as_array().unwrap();
    let mut by_id: HashMap<&str, usize> = HashMap::new();
    for s in spans {
        *by_id.entry(s["span_id"].as_str().unwrap()).or_default() += 1;
    }
    assert!(
        by_id.values().all(|n| *n == 1),
        "a span stored twice: {by_id:?}"
    );
    assert_eq!(spans.len(), 29);
    let missing: Vec<&String> = sent_spans
        .iter()
        .filter(|id| !by_id.contains_key(id.as_str()))
        .collect();
    assert!(missing.len() <= 1, "{missing:?}");
    let server = spans
        .iter()
        .find(|s| s["name"] == "POST /checkout/{id}" && s["attributes"]["app.items"] == "3")
        .or_else(|| spans.iter().find(|s| s["name"] == "POST /checkout/{id}"))
        .unwrap();
    assert_eq!(server["attributes"]["http.route"], "/checkout/{id}");
    assert_eq!(server["attributes"]["http.request.method"], "POST");
    assert!(server["attributes"]["app.vip"].is_boolean());
    assert_eq!(server["resource"]["service.name"], "checkout");
    assert_eq!(server["resource"]["service.version"], "1.4.2");
    assert_eq!(server["scope"], "otel_app");

    // Log records, each once, with their trace context and the CloudWatch Logs headers.
    let logs = got["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 10);
    let mut bodies: Vec<&str> = logs.iter().map(|l| l["body"].as_str().unwrap()).collect();
    bodies.sort();
    let mut want: Vec<&str> = sent["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_str().unwrap())
        .collect();
    want.sort();
    assert_eq!(bodies, want);
    for l in logs {
        assert_eq!(l["log_group"], "/tidewater/e2e");
        assert_eq!(l["log_stream"], "checkout-1");
        assert_eq!(l["resource"]["service.name"], "checkout");
        // An int64 attribute, as OTLP/JSON writes it.
        assert!(l["attributes"]["order.id"].is_string(), "{l}");
    }
    let ids: Vec<(&str, &str)> = logs
        .iter()
        .map(|l| {
            (
                l["trace_id"].as_str().unwrap(),
                l["span_id"].as_str().unwrap(),
            )
        })
        .collect();
    for want in sent["log_ids"].as_array().unwrap() {
        let pair = (
            want["trace_id"].as_str().unwrap(),
            want["span_id"].as_str().unwrap(),
        );
        assert!(ids.contains(&pair), "{pair:?} not among {ids:?}");
    }

    // Metrics: the counter's total and the histogram's count and sum, as the SDK sent them.
    let points = got["points"].as_array().unwrap();
    let requests_point = points
        .iter()
        .find(|p| p["metric"] == "app.requests")
        .unwrap();
    assert_eq!(requests_point["point"]["as_int"], "10", "{requests_point}");
    let latency = points
        .iter()
        .find(|p| p["metric"] == "app.latency")
        .unwrap();
    assert_eq!(latency["point"]["count"], "10");
    assert_eq!(
        latency["point"]["sum"].as_f64().unwrap(),
        sent["latency_sum"].as_f64().unwrap()
    );
    assert_eq!(latency["point"]["attributes"]["route"], "/checkout");

    // The partial success: one dead-letter line, never retried, counted.
    let dead = std::fs::read_to_string(dir.path().join("tidewater-data/dead-letter/otlp.ndjson"))
        .unwrap_or_else(|e| panic!("no dead letters: {e}\n{}", tw.log()));
    let lines: Vec<Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{dead}");
    assert_eq!(lines[0]["code"], "partial_success");
    assert_eq!(lines[0]["reason"], "1 span older than 14 days");
    assert_eq!(lines[0]["rejected"], 1);
    assert_eq!(lines[0]["request"]["signal"], "traces");
    assert_eq!(lines[0]["request"]["services"], json!(["checkout"]));
    let metrics = tw.metrics();
    assert!(
        metrics.contains(r#"tidewater_otlp_rejected_total{signal="traces"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("tidewater_sink_retries_total")
                && l.contains(r#"sink="otlp""#)
                && l.contains(r#"reason="HTTP503""#)),
        "{metrics}"
    );
    // The API key never reached the log.
    assert!(!tw.log().contains("hc-secret-key"));

    // The receiver does refuse a bad signature: the same headers on another body.
    let r = reqwest::blocking::Client::new()
        .post(format!("{}/v1/traces", peer.endpoint()))
        .header(
            "Authorization",
            "AWS4-HMAC-SHA256 Credential=testing/20261101/us-east-1/xray/aws4_request, \
             SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=0000000000000000000000000000000000000000000000000000000000000000",
        )
        .header("x-amz-date", "20261101T080000Z")
        .header(
            "x-amz-content-sha256",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        )
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
}

/// Over gRPC, to a real OTLP/gRPC receiver: a second `tidewater up`, whose collector is the
/// project's own tonic server and whose file sink shows what arrived.
#[test]
fn otlp_sink_exports_over_grpc_to_another_collector() {
    let downstream_dir = tempfile::tempdir().unwrap();
    let downstream = Tidewater::up(downstream_dir.path(), &[] as &[(&str, &str)]);
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("TIDEWATER_SINKS__FILE__ENABLED", "false".to_string()),
        ("TIDEWATER_SINKS__OTLP__ENABLED", "true".into()),
        ("TIDEWATER_SINKS__OTLP__PROTOCOL", "grpc".into()),
        ("TIDEWATER_SINKS__OTLP__ENDPOINT", downstream.grpc_url()),
        ("TIDEWATER_SINKS__OTLP__HEADERS__X-API-KEY", "k".into()),
    ];
    let tw = Tidewater::up(dir.path(), &env);
    let sent = run_otel_app("grpc", &tw.grpc_url(), &["--traces", "5", "--logs", "4"]);
    let want = sent_span_ids(&sent);
    let spans = wait_for(Duration::from_secs(60), || {
        let spans = spans(&downstream.sink_lines("traces"));
        let logs = log_records(&downstream.sink_lines("logs"));
        (spans.len() >= want.len() && logs.len() >= 4).then_some(spans)
    })
    .unwrap_or_else(|| panic!("not everything arrived:\n{}", tw.log()));
    let mut got: Vec<String> = spans
        .iter()
        .map(|(_, s)| s["spanId"].as_str().unwrap().to_string())
        .collect();
    got.sort();
    let mut want = want;
    want.sort();
    assert_eq!(got, want, "each span once");
    let (resource, server) = spans
        .iter()
        .find(|(_, s)| s["name"] == "POST /checkout/{id}")
        .unwrap();
    assert!(resource.to_string().contains("checkout"), "{resource}");
    assert!(server.to_string().contains("http.route"), "{server}");
    let points = wait_for(Duration::from_secs(30), || {
        let p = metric_points(&downstream.sink_lines("metrics"));
        (!p.is_empty()).then_some(p)
    })
    .expect("metrics arrived");
    assert!(points.iter().any(|(name, _)| name == "app.requests"));
    assert!(tw
        .metrics()
        .contains(r#"tidewater_otlp_exported_total{signal="traces"} 10"#));
}
