//! The sink with an in-process X-Ray: its glue (translation, precheck, calls, dead letters)
//! through `Sink::deliver`, and its reading of X-Ray's answers through the engine with the
//! one delivery harness. The real X-Ray is exercised end to end against moto in
//! `tests/xray_e2e.rs`.

use std::sync::Mutex;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use serde_json::Value;

use super::answer::Unprocessed;
use super::*;
use crate::delivery::harness::{self, Script};
use crate::sinks::aws_sdk::CallFailure;

/// Rejects documents whose id is listed, on every call; records every call.
#[derive(Default)]
struct Fake {
    reject: Vec<String>,
    calls: Mutex<Vec<Vec<String>>>,
}

#[async_trait]
impl SegmentApi for Fake {
    async fn put(&self, documents: Vec<String>) -> Result<Vec<Unprocessed>, CallFailure> {
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

fn config(dead_letter_dir: &std::path::Path) -> XraySinkConfig {
    let mut c = XraySinkConfig {
        enabled: true,
        ..Default::default()
    };
    c.delivery.dead_letter_dir = dead_letter_dir.to_path_buf();
    c
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
    let config = config(&dir.path().join("dl"));
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
    let mut sizes: Vec<usize> = calls.iter().map(Vec::len).collect();
    // Calls run concurrently; their sizes are what counts.
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(
        sizes,
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
    let config = config(dir.path());
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

/// X-Ray answering from a script (then "all processed"), recording the ids of every call.
struct Scripted {
    answers: Script<Result<Vec<Unprocessed>, CallFailure>>,
    calls: Mutex<Vec<Vec<String>>>,
}

impl Scripted {
    fn new(answers: Vec<Result<Vec<Unprocessed>, CallFailure>>) -> Arc<Scripted> {
        Arc::new(Scripted {
            answers: Script::new(answers),
            calls: Mutex::default(),
        })
    }

    fn calls(&self) -> Vec<Vec<String>> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl SegmentApi for Scripted {
    async fn put(&self, documents: Vec<String>) -> Result<Vec<Unprocessed>, CallFailure> {
        let ids = documents
            .iter()
            .map(|d| Doc::new(d.clone()).id.unwrap_or_default())
            .collect();
        self.calls.lock().unwrap().push(ids);
        self.answers.next().unwrap_or(Ok(Vec::new()))
    }
}

fn docs(ids: &[&str]) -> Vec<Doc> {
    ids.iter()
        .map(|id| Doc::new(format!(r#"{{"id":"{id}","name":"n"}}"#)))
        .collect()
}

fn unprocessed(id: Option<&str>, code: &str) -> Unprocessed {
    Unprocessed {
        id: id.map(str::to_string),
        code: code.into(),
        message: format!("{code} message"),
    }
}

fn ids(calls: &[&[&str]]) -> Vec<Vec<String>> {
    calls
        .iter()
        .map(|c| c.iter().map(|s| s.to_string()).collect())
        .collect()
}

async fn run(api: &Arc<Scripted>, items: Vec<Doc>) -> harness::Run<Doc> {
    let service = service::XrayService::new(api.clone(), 4 << 20);
    harness::run(service, items).await.1
}

fn dead(run: &harness::Run<Doc>) -> Vec<(String, String)> {
    run.dead_letters
        .iter()
        .map(|l| {
            (
                l["id"].as_str().unwrap_or_default().to_string(),
                l["code"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn only_unprocessed_documents_are_sent_again_and_refused_ones_dead_lettered() {
    let api = Scripted::new(vec![
        Ok(vec![
            unprocessed(Some("b"), "ThrottledException"),
            unprocessed(Some("d"), "InvalidSegment"),
        ]),
        Ok(vec![]),
    ]);
    let run = run(&api, docs(&["a", "b", "c", "d"])).await;
    assert_eq!(api.calls(), ids(&[&["a", "b", "c", "d"], &["b"]]));
    assert_eq!(run.report.stored, 3);
    assert_eq!(dead(&run), vec![("d".into(), "InvalidSegment".into())]);
    let line = &run.dead_letters[0];
    assert_eq!(line["sink"], "xray");
    assert_eq!(line["reason"], "InvalidSegment message");
    assert_eq!(line["document"], r#"{"id":"d","name":"n"}"#);
}

#[tokio::test]
async fn a_document_still_throttled_after_its_attempts_is_dead_lettered() {
    let throttled = || Ok(vec![unprocessed(Some("a"), "ThrottledException")]);
    let api = Scripted::new(vec![throttled(), throttled(), throttled()]);
    let run = run(&api, docs(&["a", "b"])).await;
    assert_eq!(api.calls(), ids(&[&["a", "b"], &["a"], &["a"]]));
    assert_eq!(run.report.stored, 1);
    assert_eq!(dead(&run), vec![("a".into(), "ThrottledException".into())]);
    assert!(run.dead_letters[0]["reason"]
        .as_str()
        .unwrap()
        .contains("after 3 attempts"));
}

#[tokio::test]
async fn a_throttled_call_is_sent_again_whole_without_spending_the_budget() {
    let throttled = || {
        Err(CallFailure::service(
            429,
            "ThrottledException",
            "Rate exceeded",
        ))
    };
    let api = Scripted::new(vec![throttled(), throttled(), throttled(), throttled()]);
    let run = run(&api, docs(&["a", "b"])).await;
    assert_eq!(api.calls().len(), 5);
    assert_eq!(run.report.stored, 2);
    assert!(run.dead_letters.is_empty());
}

#[tokio::test]
async fn a_call_refused_as_invalid_is_bisected_to_the_bad_document() {
    let invalid = || {
        Err(CallFailure::service(
            400,
            "InvalidRequestException",
            "bad document",
        ))
    };
    let api = Scripted::new(vec![invalid(), Ok(vec![]), invalid()]);
    let run = run(&api, docs(&["a", "b"])).await;
    assert_eq!(api.calls(), ids(&[&["a", "b"], &["a"], &["b"]]));
    assert_eq!(run.report.stored, 1);
    assert_eq!(
        dead(&run),
        vec![("b".into(), "InvalidRequestException".into())]
    );
}

#[tokio::test]
async fn a_refusal_x_ray_does_not_name_is_narrowed_down_to_its_document() {
    // X-Ray names no document while several are in doubt: the call is bisected until "c" is
    // alone, when the refusal can only mean it.
    let unnamed = || Ok(vec![unprocessed(None, "MissingId")]);
    let api = Scripted::new(vec![
        unnamed(),
        Ok(vec![]),
        unnamed(),
        unnamed(),
        Ok(vec![]),
    ]);
    let run = run(&api, docs(&["a", "b", "c", "d"])).await;
    assert_eq!(
        api.calls(),
        ids(&[
            &["a", "b", "c", "d"],
            &["a", "b"],
            &["c", "d"],
            &["c"],
            &["d"]
        ])
    );
    assert_eq!(run.report.stored, 3);
    assert_eq!(dead(&run), vec![("c".into(), "MissingId".into())]);
}

#[tokio::test]
async fn a_call_too_large_is_halved() {
    let too_large = || {
        Err(CallFailure::service(
            413,
            "RequestEntityTooLarge",
            "too large",
        ))
    };
    let api = Scripted::new(vec![too_large()]);
    let run = run(&api, docs(&["a", "b"])).await;
    assert_eq!(api.calls(), ids(&[&["a", "b"], &["a"], &["b"]]));
    assert_eq!(run.report.stored, 2);
}

#[tokio::test]
async fn access_denied_holds_the_documents_until_it_is_fixed() {
    let denied = || {
        Err(CallFailure::service(
            400,
            "AccessDeniedException",
            "not authorized to perform xray:PutTraceSegments",
        ))
    };
    let api = Scripted::new(vec![denied(), denied()]);
    let run = run(&api, docs(&["a"])).await;
    assert_eq!(api.calls().len(), 3);
    assert_eq!(run.report.stored, 1);
    assert!(run.dead_letters.is_empty());
    crate::delivery::health::answered("xray");
}

#[tokio::test]
async fn spans_and_documents_no_call_can_carry_are_dead_lettered_without_a_call() {
    let mut span = docs(&["span"]).remove(0);
    span.unplaceable = Some("too old");
    let api = Scripted::new(vec![]);
    let run = run(
        &api,
        vec![Doc::new("[1]".into()), span, docs(&["a"]).remove(0)],
    )
    .await;
    assert_eq!(api.calls(), ids(&[&["a"]]));
    assert_eq!(
        dead(&run),
        vec![
            (String::new(), "Tidewater.InvalidDocument".into()),
            ("span".into(), "Tidewater.UnplaceableSpan".into()),
        ]
    );
}
