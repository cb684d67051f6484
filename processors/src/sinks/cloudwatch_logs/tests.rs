//! The CloudWatch sinks' classification through the delivery engine, against a scripted
//! CloudWatch Logs ([`ScriptedLogs`]) that answers as the service does: refusals inside a
//! successful `PutLogEvents`, error codes for whole calls, "already exists" on creation. The
//! EMF sink's tests use the same stand-in.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use tokio_util::sync::CancellationToken;

use super::api::{LogsApi, Rejected};
use super::batch::{Limits, LogEvent};
use super::events::Destination;
use super::writer::{LogItem, LogsWriter};
use super::*;
use crate::delivery::harness::{self, Script};
use crate::delivery::Service;
use crate::sinks::aws_sdk::{CallFailure, Stage};

/// CloudWatch Logs from a script: each operation answers from its own script, then with
/// success (`PutLogEvents`: with `then`, which a test may change). Every request is logged.
pub struct ScriptedLogs {
    pub groups: Script<Result<(), CallFailure>>,
    pub streams: Script<Result<(), CallFailure>>,
    pub puts: Script<Result<Rejected, CallFailure>>,
    pub then: Mutex<Result<Rejected, CallFailure>>,
    log: Mutex<Vec<String>>,
}

impl Default for ScriptedLogs {
    fn default() -> Self {
        ScriptedLogs::new(Vec::new())
    }
}

impl ScriptedLogs {
    pub fn new(puts: Vec<Result<Rejected, CallFailure>>) -> Self {
        ScriptedLogs {
            groups: Script::new([]),
            streams: Script::new([]),
            puts: Script::new(puts),
            then: Mutex::new(Ok(Rejected::default())),
            log: Mutex::default(),
        }
    }

    /// The requests made, as `Operation arguments` lines.
    pub fn requests(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// The messages of each `PutLogEvents`, in order.
    pub fn puts_made(&self) -> Vec<Vec<String>> {
        self.requests()
            .iter()
            .filter_map(|r| r.strip_prefix("PutLogEvents "))
            .map(|r| {
                let (_, messages) = r.split_once(' ').unwrap();
                serde_json::from_str(messages).unwrap()
            })
            .collect()
    }

    fn note(&self, line: String) {
        self.log.lock().unwrap().push(line);
    }
}

#[async_trait]
impl LogsApi for ScriptedLogs {
    async fn create_log_group(&self, group: &str) -> Result<(), CallFailure> {
        self.note(format!("CreateLogGroup {group}"));
        self.groups.next().unwrap_or(Ok(()))
    }

    async fn put_retention_policy(&self, group: &str, days: u32) -> Result<(), CallFailure> {
        self.note(format!("PutRetentionPolicy {group} {days}"));
        Ok(())
    }

    async fn create_log_stream(&self, group: &str, stream: &str) -> Result<(), CallFailure> {
        self.note(format!("CreateLogStream {group}/{stream}"));
        self.streams.next().unwrap_or(Ok(()))
    }

    async fn put_log_events(
        &self,
        group: &str,
        stream: &str,
        events: &[&LogEvent],
    ) -> Result<Rejected, CallFailure> {
        let messages: Vec<&str> = events.iter().map(|e| e.message.as_str()).collect();
        self.note(format!(
            "PutLogEvents {group}/{stream} {}",
            serde_json::to_string(&messages).unwrap()
        ));
        self.puts
            .next()
            .unwrap_or_else(|| self.then.lock().unwrap().clone())
    }
}

pub fn error(code: &str) -> CallFailure {
    CallFailure::service(400, code, &format!("{code} message"))
}

fn service(api: &Arc<ScriptedLogs>, retention_days: u32) -> LogsService {
    LogsService {
        writer: LogsWriter::new("cloudwatch_logs", api.clone(), retention_days),
        limits: Limits::default(),
    }
}

fn destination(group: &str, stream: &str) -> Arc<Destination> {
    Arc::new((group.to_string(), stream.to_string()))
}

fn items(dest: &Arc<Destination>, messages: &[&str]) -> Vec<LogItem> {
    messages
        .iter()
        .enumerate()
        .map(|(i, m)| LogItem {
            destination: dest.clone(),
            event: LogEvent {
                timestamp_ms: 1_000 + i as i64,
                message: m.to_string(),
            },
        })
        .collect()
}

#[tokio::test]
async fn refused_events_are_dead_lettered_with_their_limit_and_the_rest_stored() {
    let api = Arc::new(ScriptedLogs::new(vec![Ok(Rejected {
        too_old_end: Some(0),
        too_new_start: Some(3),
        expired_end: None,
    })]));
    let dest = destination("/ecs/checkout", "h1");
    let (_, run) = harness::run(service(&api, 7), items(&dest, &["a", "b", "c", "d"])).await;
    assert_eq!(
        api.requests(),
        [
            "CreateLogGroup /ecs/checkout",
            "PutRetentionPolicy /ecs/checkout 7",
            "CreateLogStream /ecs/checkout/h1",
            r#"PutLogEvents /ecs/checkout/h1 ["a","b","c","d"]"#,
        ]
    );
    assert_eq!(run.report.stored, 2);
    let dead: Vec<(&str, &str, &str)> = run
        .dead_letters
        .iter()
        .map(|l| {
            (
                l["code"].as_str().unwrap(),
                l["reason"].as_str().unwrap(),
                l["message"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        dead,
        [("too_old", "too_old", "a"), ("too_new", "too_new", "d")]
    );
    let line = &run.dead_letters[0];
    assert_eq!(line["sink"], "cloudwatch_logs");
    assert_eq!(line["log_group"], "/ecs/checkout");
    assert_eq!(line["log_stream"], "h1");
    assert_eq!(line["timestamp"], 1_000);
}

#[tokio::test]
async fn throttling_and_outages_are_retried_until_the_call_goes_through() {
    let transport = CallFailure {
        stage: Stage::Transport,
        status: None,
        code: None,
        message: "connection refused".into(),
        retry_after: None,
    };
    let api = Arc::new(ScriptedLogs::new(vec![
        Err(error("ThrottlingException")),
        Err(CallFailure::service(
            503,
            "ServiceUnavailableException",
            "down",
        )),
        Err(transport),
    ]));
    let dest = destination("/g", "s");
    let (_, run) = harness::run(service(&api, 0), items(&dest, &["a", "b"])).await;
    assert_eq!(run.report.stored, 2);
    assert!(run.dead_letters.is_empty());
    assert_eq!(api.puts_made(), vec![vec!["a", "b"]; 4]);
    // The group and stream were created once; the retries found them cached.
    assert_eq!(
        api.requests()
            .iter()
            .filter(|r| r.starts_with("Create"))
            .count(),
        2
    );
}

#[tokio::test]
async fn a_call_refused_as_invalid_is_bisected_to_the_culprit() {
    let invalid = || Err(error("InvalidParameterException"));
    let ok = || Ok(Rejected::default());
    let api = Arc::new(ScriptedLogs::new(vec![
        invalid(),
        ok(),
        invalid(),
        ok(),
        invalid(),
    ]));
    let dest = destination("/g", "s");
    let (_, run) = harness::run(service(&api, 0), items(&dest, &["a", "b", "c", "d"])).await;
    assert_eq!(
        api.puts_made(),
        [
            vec!["a", "b", "c", "d"],
            vec!["a", "b"],
            vec!["c", "d"],
            vec!["c"],
            vec!["d"]
        ]
    );
    assert_eq!(run.report.stored, 3);
    assert_eq!(run.dead_letters.len(), 1);
    assert_eq!(run.dead_letters[0]["code"], "InvalidParameterException");
    assert_eq!(run.dead_letters[0]["message"], "d");
}

#[tokio::test]
async fn a_stream_deleted_since_it_was_cached_is_created_again_within_the_call() {
    // The group is still there the second time; the stream is not.
    let api = Arc::new(ScriptedLogs {
        groups: Script::new([Ok(()), Err(error("ResourceAlreadyExistsException"))]),
        ..ScriptedLogs::new(vec![Err(error("ResourceNotFoundException"))])
    });
    let dest = destination("/g", "s");
    let (_, run) = harness::run(service(&api, 3), items(&dest, &["a"])).await;
    assert_eq!(run.report.stored, 1);
    assert_eq!(
        api.requests(),
        [
            "CreateLogGroup /g",
            "PutRetentionPolicy /g 3",
            "CreateLogStream /g/s",
            r#"PutLogEvents /g/s ["a"]"#,
            "CreateLogGroup /g",
            "CreateLogStream /g/s",
            r#"PutLogEvents /g/s ["a"]"#,
        ]
    );
}

#[tokio::test]
async fn an_operator_problem_is_retried_until_fixed_and_never_dead_lettered() {
    let api = Arc::new(ScriptedLogs::new(vec![
        Err(error("AccessDeniedException")),
        Err(error("UnrecognizedClientException")),
    ]));
    let dest = destination("/g", "s");
    let (_, run) = harness::run(service(&api, 0), items(&dest, &["a", "b"])).await;
    assert_eq!(run.report.stored, 2);
    assert!(run.dead_letters.is_empty());
    assert_eq!(api.puts_made().len(), 3);
}

#[tokio::test]
async fn events_for_a_destination_cloudwatch_refuses_are_dead_lettered_without_a_put() {
    let api = Arc::new(ScriptedLogs {
        groups: Script::new([Err(error("InvalidParameterException"))]),
        ..ScriptedLogs::default()
    });
    let dest = destination("/aws/reserved", "s");
    let (_, run) = harness::run(service(&api, 0), items(&dest, &["a", "b"])).await;
    assert_eq!(api.requests(), ["CreateLogGroup /aws/reserved"]);
    assert_eq!(run.dead_letters.len(), 2);
    assert_eq!(run.dead_letters[1]["code"], "InvalidParameterException");
    assert!(run.dead_letters[1]["reason"]
        .as_str()
        .unwrap()
        .starts_with("CreateLogGroup /aws/reserved: "));
}

#[test]
fn calls_hold_one_stream_each_sorted_and_within_24_hours() {
    let api = Arc::new(ScriptedLogs::default());
    let (a, b) = (destination("/g", "a"), destination("/g", "b"));
    let day = 24 * 3600 * 1000;
    let item = |dest: &Arc<Destination>, t: i64, m: &str| LogItem {
        destination: dest.clone(),
        event: LogEvent {
            timestamp_ms: t,
            message: m.into(),
        },
    };
    let calls = service(&api, 0).calls(vec![
        item(&b, 5, "b1"),
        item(&a, day + 10, "a2"),
        item(&a, 1, "a1"),
        item(&b, 3, "b0"),
    ]);
    let shape: Vec<(String, Vec<String>)> = calls
        .iter()
        .map(|c| {
            (
                c[0].destination.1.clone(),
                c.iter().map(|i| i.event.message.clone()).collect(),
            )
        })
        .collect();
    assert_eq!(
        shape,
        [
            ("a".to_string(), vec!["a1".to_string()]),
            ("a".to_string(), vec!["a2".to_string()]),
            ("b".to_string(), vec!["b0".to_string(), "b1".to_string()]),
        ]
    );
}

fn string(v: &str) -> Option<AnyValue> {
    Some(AnyValue {
        value: Some(any_value::Value::StringValue(v.into())),
    })
}

#[tokio::test]
async fn the_sink_splits_oversized_records_into_marked_parts_and_sends_them_all() {
    let dir = tempfile::tempdir().unwrap();
    let config = CloudWatchLogsConfig {
        enabled: true,
        log_group: "/app/{service.name}".into(),
        log_stream: "main".into(),
        max_event_size: bytesize::ByteSize::kib(1),
        delivery: harness::config(dir.path()),
        ..Default::default()
    };
    let api = Arc::new(ScriptedLogs::default());
    let sink = CloudWatchLogsSink::with_api(&config, api.clone()).unwrap();
    let record = |body: &str| LogRecord {
        time_unix_nano: 1_700_000_000_000_000_000,
        body: string(body),
        ..Default::default()
    };
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![KeyValue {
                    key: "service.name".into(),
                    value: string("shop"),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: vec![record("small"), record(&"x".repeat(3000))],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let batch = Arc::new(Batch {
        signal: Signal::Logs,
        record_id: vec![1; 16],
        produced_at_unix_nano: 0,
        item_count: 2,
        data: SignalData::Logs(request),
    });
    sink.deliver(&[batch], &CancellationToken::new())
        .await
        .unwrap();
    let puts = api.puts_made();
    assert_eq!(puts.len(), 1);
    let parts: Vec<&String> = puts[0]
        .iter()
        .filter(|m| m.contains("[tidewater: part"))
        .collect();
    assert!(parts.len() >= 3, "{puts:?}");
    assert!(parts
        .iter()
        .all(|m| m.len() + batch::EVENT_OVERHEAD <= 1024));
    assert!(puts[0].iter().any(|m| m.contains("small")));
    assert!(api.requests()[0] == "CreateLogGroup /app/shop");
    assert!(!dir.path().join("cloudwatch_logs.ndjson").exists());
}
