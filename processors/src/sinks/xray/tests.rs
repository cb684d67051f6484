//! The sink's glue with an in-process X-Ray (the real one is exercised end to end against
//! moto in `tests/xray_e2e.rs`).

use std::sync::Mutex;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use serde_json::Value;

use super::request::Unprocessed;
use super::service::CallError;
use super::*;

/// Rejects documents whose id is listed, on every call; records every call.
#[derive(Default)]
struct Fake {
    reject: Vec<String>,
    calls: Mutex<Vec<Vec<String>>>,
}

#[async_trait]
impl SegmentApi for Fake {
    async fn put(&self, documents: Vec<String>) -> Result<Vec<Unprocessed>, CallError> {
        let mut unprocessed = Vec::new();
        for d in &documents {
            let id = Doc::new(d.clone()).id.unwrap_or_default();
            if self.reject.contains(&id) {
                unprocessed.push(Unprocessed {
                    id: Some(id),
                    code: "InvalidSegment".into(),
                    message: "Invalid segment".into(),
                });
            }
        }
        self.calls.lock().unwrap().push(documents);
        Ok(unprocessed)
    }
}

fn batch(signal: Signal, data: SignalData) -> Arc<Batch> {
    Arc::new(Batch {
        signal,
        record_id: vec![],
        produced_at_unix_nano: 0,
        item_count: 0,
        data,
    })
}

fn spans(n: u64) -> ExportTraceServiceRequest {
    let now = SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let spans = (1..=n)
        .map(|i| Span {
            // Random-looking ids: every trace is remapped.
            trace_id: [[0xab; 8], i.to_be_bytes()].concat(),
            span_id: i.to_be_bytes().to_vec(),
            name: format!("GET /{i}"),
            kind: 2,
            start_time_unix_nano: now,
            end_time_unix_nano: now + 1_000_000,
            ..Default::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

#[tokio::test]
async fn translates_chunks_sends_and_dead_letters() {
    let dir = tempfile::tempdir().unwrap();
    let config = XraySinkConfig {
        enabled: true,
        dead_letter_path: dir.path().join("dl/xray.ndjson"),
        ..Default::default()
    };
    let fake = Arc::new(Fake {
        reject: vec![format!("{:016x}", 7)],
        ..Default::default()
    });
    let sink = XraySink::with_api(config, fake.clone()).unwrap();
    assert!(sink.accepts(Signal::Traces) && sink.accepts(Signal::XraySegments));
    assert!(!sink.accepts(Signal::Logs));

    let sdk_doc = r#"{"trace_id":"1-6553f100-0a0b0c0d0e0f101112131415","id":"70de5b6f19ff9a0a","name":"sdk","start_time":1,"end_time":2}"#;
    let batches = vec![
        batch(Signal::Traces, SignalData::Traces(spans(120))),
        batch(
            Signal::XraySegments,
            SignalData::XraySegments(vec![sdk_doc.into(), "[not an object]".into()]),
        ),
    ];
    sink.deliver(&batches, &tokio_util::sync::CancellationToken::new())
        .await
        .unwrap();

    let calls = fake.calls.lock().unwrap().clone();
    assert_eq!(
        calls.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![50, 50, 21],
        "120 segments and one SDK document, 50 per call"
    );
    let sent: Vec<Value> = calls
        .iter()
        .flatten()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert!(sent.iter().any(|d| d["name"] == "sdk"));
    assert!(sent
        .iter()
        .filter(|d| d["name"] != "sdk")
        .all(|d| d["annotations"]["otel_trace_id"].is_string()));

    let dead: Vec<Value> = std::fs::read_to_string(dir.path().join("dl/xray.ndjson"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0]["code"], "Tidewater.InvalidDocument");
    assert_eq!(dead[0]["document"], "[not an object]");
    assert_eq!(dead[1]["code"], "InvalidSegment");
    assert_eq!(dead[1]["id"], format!("{:016x}", 7));
    assert!(dead[1]["document"].as_str().unwrap().contains("GET /7"));
}

#[tokio::test]
async fn spans_with_no_xray_form_are_dead_lettered_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let config = XraySinkConfig {
        enabled: true,
        dead_letter_path: dir.path().join("xray.ndjson"),
        ..Default::default()
    };
    let fake = Arc::new(Fake::default());
    let sink = XraySink::with_api(config, fake.clone()).unwrap();
    let mut request = spans(3);
    let sent = &mut request.resource_spans[0].scope_spans[0].spans;
    // 40 days old: older than any trace id X-Ray takes.
    sent[0].start_time_unix_nano -= 40 * 86_400 * 1_000_000_000;
    sent[1].trace_id = vec![1, 2, 3];
    sink.deliver(
        &[batch(Signal::Traces, SignalData::Traces(request))],
        &tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();

    assert_eq!(fake.calls.lock().unwrap().concat().len(), 1);
    let dead: Vec<Value> = std::fs::read_to_string(dir.path().join("xray.ndjson"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dead.len(), 2);
    assert!(dead
        .iter()
        .all(|d| d["code"] == "Tidewater.UnplaceableSpan"));
    assert_eq!(dead[0]["id"], "0000000000000001");
    assert!(dead[0]["reason"].as_str().unwrap().contains("too long ago"));
    assert!(dead[1]["reason"].as_str().unwrap().contains("16 bytes"));
    let otlp: Value = serde_json::from_str(dead[0]["document"].as_str().unwrap()).unwrap();
    assert_eq!(
        otlp["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["name"],
        "GET /1"
    );
}
