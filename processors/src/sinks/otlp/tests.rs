//! The OTLP sink's classification through the delivery engine, against a scripted endpoint
//! ([`ScriptedEndpoint`]) answering as OTLP receivers do: partial success inside a 200,
//! 503 with `Retry-After`, 413, 400 with a `google.rpc.Status`, 401.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceResponse,
};
use prost::Message;
use tokio_util::sync::CancellationToken;

use super::classify::Reply;
use super::request::tests::traces;
use super::request::{self, Request};
use super::service::{Exporter, OtlpService};
use super::*;
use crate::delivery::harness::{self, Script};
use crate::delivery::Service;

/// An OTLP endpoint from a script (then 200s), keeping every request it was sent.
#[derive(Default)]
struct ScriptedEndpoint {
    replies: Option<Script<Reply>>,
    requests: Mutex<Vec<Request>>,
}

impl ScriptedEndpoint {
    fn new(replies: Vec<Reply>) -> Arc<Self> {
        Arc::new(ScriptedEndpoint {
            replies: Some(Script::new(replies)),
            requests: Mutex::default(),
        })
    }

    /// The span ids (first byte) of each request, in order.
    fn sent(&self) -> Vec<Vec<u8>> {
        self.requests
            .lock()
            .unwrap()
            .iter()
            .map(|r| match r {
                Request::Traces(t) => t
                    .resource_spans
                    .iter()
                    .flat_map(|rs| &rs.scope_spans)
                    .flat_map(|ss| &ss.spans)
                    .map(|s| s.span_id[0])
                    .collect(),
                _ => Vec::new(),
            })
            .collect()
    }
}

#[async_trait]
impl Exporter for ScriptedEndpoint {
    async fn export(&self, request: Request) -> Reply {
        self.requests.lock().unwrap().push(request);
        self.replies
            .as_ref()
            .and_then(Script::next)
            .unwrap_or_else(|| http(200, None, Bytes::new()))
    }
}

/// Forwards to a shared endpoint, so a test keeps a handle on what it was sent.
struct Shared(Arc<ScriptedEndpoint>);

#[async_trait]
impl Exporter for Shared {
    async fn export(&self, request: Request) -> Reply {
        self.0.export(request).await
    }
}

fn http(status: u16, retry_after: Option<&str>, body: Bytes) -> Reply {
    Reply::Http {
        status,
        retry_after: retry_after.map(str::to_string),
        content_type: "application/x-protobuf".into(),
        body,
    }
}

fn partial(rejected: i64, message: &str) -> Reply {
    let body = ExportTraceServiceResponse {
        partial_success: Some(ExportTracePartialSuccess {
            rejected_spans: rejected,
            error_message: message.into(),
        }),
    }
    .encode_to_vec();
    http(200, None, body.into())
}

/// Six spans: checkout (scopes of 2 and 1) and cart (3): three items.
fn items() -> Vec<request::Item> {
    request::items(
        &[traces(&[("checkout", &[2, 1]), ("cart", &[3])], 0)],
        &config::SignalKind::ALL,
        0,
        1 << 20,
        10_000,
    )
}

fn service(endpoint: &Arc<ScriptedEndpoint>) -> OtlpService {
    OtlpService::new(Arc::new(Shared(endpoint.clone())), 1 << 20, 10_000)
}

#[tokio::test]
async fn a_503_with_retry_after_is_sent_again_whole_then_stored() {
    let endpoint = ScriptedEndpoint::new(vec![http(503, Some("0"), Bytes::new())]);
    let (_, run) = harness::run(service(&endpoint), items()).await;
    assert_eq!(run.report.stored, 3);
    assert!(run.dead_letters.is_empty());
    assert_eq!(
        endpoint.sent(),
        [vec![1, 2, 3, 4, 5, 6], vec![1, 2, 3, 4, 5, 6]]
    );
}

#[tokio::test]
async fn a_413_halves_and_a_400_bisects_to_the_item_to_blame() {
    let status = |m: &str| {
        // google.rpc.Status { code = 3, message }
        let mut b = vec![0x08, 0x03, 0x12, m.len() as u8];
        b.extend_from_slice(m.as_bytes());
        Bytes::from(b)
    };
    let endpoint = ScriptedEndpoint::new(vec![
        http(413, None, Bytes::new()),
        http(200, None, Bytes::new()),
        http(400, None, status("span 6: bad trace id")),
        http(200, None, Bytes::new()),
        http(400, None, status("span 6: bad trace id")),
    ]);
    let (_, run) = harness::run(service(&endpoint), items()).await;
    // [A B C] too large: [A] stored, [B C] refused: [B] stored, [C] refused alone.
    assert_eq!(
        endpoint.sent(),
        [
            vec![1, 2, 3, 4, 5, 6],
            vec![1, 2],
            vec![3, 4, 5, 6],
            vec![3],
            vec![4, 5, 6],
        ]
    );
    assert_eq!(run.report.stored, 2);
    assert_eq!(run.dead_letters.len(), 1, "{:?}", run.dead_letters);
    let dl = &run.dead_letters[0];
    assert_eq!(dl["code"], "HTTP400");
    assert_eq!(dl["reason"], "400 span 6: bad trace id");
    assert_eq!(dl["service"], "cart");
    assert_eq!(dl["items"], 3);
    assert_eq!(
        dl["otlp"]["scopeSpans"][0]["spans"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
}

#[tokio::test]
async fn credentials_refused_are_retried_until_they_work() {
    let endpoint = ScriptedEndpoint::new(vec![
        http(401, None, Bytes::from_static(b"missing API key")),
        Reply::Grpc {
            code: 14,
            message: "connection reset".into(),
            retry_after: None,
            partial: None,
        },
    ]);
    let (_, run) = harness::run(service(&endpoint), items()).await;
    assert_eq!(run.report.stored, 3);
    assert_eq!(endpoint.sent().len(), 3);
}

#[tokio::test]
async fn an_item_over_the_request_size_is_dead_lettered_unsent() {
    let endpoint = ScriptedEndpoint::new(vec![]);
    let max = 16 * 1024;
    let big = request::items(
        &[traces(&[("checkout", &[1, 1])], 20_000)],
        &config::SignalKind::ALL,
        0,
        max,
        10_000,
    );
    let service = OtlpService::new(Arc::new(Shared(endpoint.clone())), max, 10_000);
    assert!(service.precheck(&big[0]).is_some());
    let (_, run) = harness::run(service, big).await;
    assert_eq!(run.report.stored, 0);
    assert_eq!(run.dead_letters.len(), 2);
    assert_eq!(run.dead_letters[0]["code"], "too_large");
    assert!(endpoint.sent().is_empty());
}

#[tokio::test]
async fn a_partial_success_is_stored_counted_and_recorded_once_never_retried() {
    let dir = tempfile::tempdir().unwrap();
    let endpoint = ScriptedEndpoint::new(vec![partial(2, "2 spans older than 14 days")]);
    let mut config = OtlpSinkConfig::default();
    config.delivery = harness::config(dir.path());
    let sink = OtlpSink::with_exporter(&config, Arc::new(Shared(endpoint.clone()))).unwrap();
    assert!(sink.accepts(Signal::Traces) && !sink.accepts(Signal::Events));
    let batch = traces(&[("checkout", &[2, 1]), ("cart", &[3])], 0);
    sink.deliver(&[batch], &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(endpoint.sent().len(), 1, "never retried");
    let text = std::fs::read_to_string(dir.path().join("otlp.ndjson")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{text}");
    let line = &lines[0];
    assert_eq!(line["sink"], "otlp");
    assert_eq!(line["code"], "partial_success");
    assert_eq!(line["reason"], "2 spans older than 14 days");
    assert_eq!(line["rejected"], 2);
    assert_eq!(line["signal"], "traces");
    assert_eq!(line["request"]["sent"], 6);
    assert_eq!(
        line["request"]["services"],
        serde_json::json!(["cart", "checkout"])
    );
    // A zero count with a message is a warning: nothing recorded.
    let endpoint = ScriptedEndpoint::new(vec![partial(0, "attributes truncated")]);
    let quiet = OtlpSink::with_exporter(&config, Arc::new(Shared(endpoint))).unwrap();
    quiet
        .deliver(&[traces(&[("a", &[1])], 0)], &CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        std::fs::read_to_string(dir.path().join("otlp.ndjson"))
            .unwrap()
            .lines()
            .count(),
        1
    );
}

#[tokio::test]
async fn the_http_exporter_signs_compresses_and_sends_the_configured_headers() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            let n = socket.read(&mut buf).await.unwrap();
            seen.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&seen).to_string();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length: ")
                            .map(|v| v.trim().parse().unwrap())
                    })
                    .unwrap_or(0);
                if body.len() >= len || seen.len() - head.len() - 4 >= len {
                    break;
                }
            }
        }
        socket
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
            .await
            .unwrap();
        seen
    });
    let mut config = OtlpSinkConfig {
        endpoint: format!("http://127.0.0.1:{port}"),
        log_group: "/app/logs".into(),
        log_stream: "web-1".into(),
        ..Default::default()
    };
    config.sigv4 = config::Sigv4Config {
        enabled: true,
        region: "eu-west-1".into(),
        service: String::new(),
    };
    config
        .headers
        .insert("x-honeycomb-team".into(), config::Secret("hc-key".into()));
    let credentials =
        aws_credential_types::Credentials::new("AKIDEXAMPLE", "secret", None, None, "test");
    let exporter =
        service::HttpExporter::new(&config)
            .unwrap()
            .with_sigv4(crate::sinks::sigv4::SigV4::fixed(
                "xray",
                "eu-west-1",
                credentials,
            ));
    let items = items();
    let reply = exporter.export(request::request(&items)).await;
    assert!(
        matches!(reply, Reply::Http { status: 200, .. }),
        "{reply:?}"
    );
    let seen = server.await.unwrap();
    let head = String::from_utf8_lossy(&seen).to_ascii_lowercase();
    assert!(head.starts_with("post /v1/traces http/1.1"), "{head}");
    assert!(head.contains("content-type: application/x-protobuf"));
    assert!(head.contains("content-encoding: gzip"));
    assert!(head.contains("x-honeycomb-team: hc-key"));
    assert!(head.contains("x-amz-date: "));
    assert!(
        head.contains("credential=akidexample/") && head.contains("/eu-west-1/xray/aws4_request"),
        "{head}"
    );
    // Log headers go with logs only.
    assert!(!head.contains("x-aws-log-group"));
}
