//! OTLP log records → CloudWatch Logs events, each placed in the group and stream its resource
//! maps to. Pure: the caller passes the time used for records that carry none.
//!
//! Each event is one JSON object, so Logs Insights and filter patterns see fields:
//! `body` (a string, or JSON when the body is structured), `severity`, `severity_number`,
//! `trace_id`, `span_id`, `attributes`, `scope`, `event_name`, and `resource` when asked.
//! Empty fields are left out.

use std::collections::BTreeMap;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use serde_json::{Map, Value};

use super::batch::LogEvent;
use super::template::Template;
use crate::anyvalue::{attributes_json, attributes_text, to_json};

/// Where events go: (log group, log stream).
pub type Destination = (String, String);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The message of one record.
pub fn message(record: &LogRecord, scope: &str, resource: Option<&Value>) -> String {
    let mut m = Map::new();
    if let Some(body) = record.body.as_ref() {
        m.insert("body".into(), to_json(body));
    }
    if !record.severity_text.is_empty() {
        m.insert("severity".into(), record.severity_text.clone().into());
    }
    if record.severity_number != 0 {
        m.insert("severity_number".into(), record.severity_number.into());
    }
    if record.trace_id.iter().any(|b| *b != 0) {
        m.insert("trace_id".into(), hex(&record.trace_id).into());
    }
    if record.span_id.iter().any(|b| *b != 0) {
        m.insert("span_id".into(), hex(&record.span_id).into());
    }
    if !record.event_name.is_empty() {
        m.insert("event_name".into(), record.event_name.clone().into());
    }
    if !record.attributes.is_empty() {
        m.insert("attributes".into(), attributes_json(&record.attributes));
    }
    if !scope.is_empty() {
        m.insert("scope".into(), scope.into());
    }
    if let Some(r) = resource {
        m.insert("resource".into(), r.clone());
    }
    Value::Object(m).to_string()
}

/// The record's time: when it happened, else when it was observed, else `now_ms`.
pub fn timestamp_ms(record: &LogRecord, now_ms: i64) -> i64 {
    [record.time_unix_nano, record.observed_time_unix_nano]
        .into_iter()
        .find(|t| *t != 0)
        .map_or(now_ms, |t| (t / 1_000_000) as i64)
}

/// Every record of `request` as an event, grouped by destination.
pub fn log_events(
    request: &ExportLogsServiceRequest,
    group: &Template,
    stream: &Template,
    include_resource: bool,
    now_ms: i64,
) -> BTreeMap<Destination, Vec<LogEvent>> {
    let mut out: BTreeMap<Destination, Vec<LogEvent>> = BTreeMap::new();
    for rl in &request.resource_logs {
        let attrs = rl
            .resource
            .as_ref()
            .map(|r| r.attributes.as_slice())
            .unwrap_or_default();
        let text = attributes_text(attrs);
        let dest = (group.render(&text), stream.render(&text));
        let resource = include_resource.then(|| attributes_json(attrs));
        let events = out.entry(dest).or_default();
        for sl in &rl.scope_logs {
            let scope = sl.scope.as_ref().map(|s| s.name.as_str()).unwrap_or("");
            for record in &sl.log_records {
                events.push(LogEvent {
                    timestamp_ms: timestamp_ms(record, now_ms),
                    message: message(record, scope, resource.as_ref()),
                });
            }
        }
    }
    out.retain(|_, events| !events.is_empty());
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::cloudwatch_logs::template::NameKind;
    use opentelemetry_proto::tonic::common::v1::{
        any_value::Value as Av, AnyValue, InstrumentationScope, KeyValue, KeyValueList,
    };
    use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use serde_json::json;

    fn s(v: &str) -> Option<AnyValue> {
        Some(AnyValue {
            value: Some(Av::StringValue(v.into())),
        })
    }

    fn kv(k: &str, v: Option<AnyValue>) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: v,
            ..Default::default()
        }
    }

    fn request(service: &str, records: Vec<LogRecord>) -> ResourceLogs {
        ResourceLogs {
            resource: Some(Resource {
                attributes: vec![kv("service.name", s(service)), kv("host.name", s("h1"))],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                scope: Some(InstrumentationScope {
                    name: "otel_app".into(),
                    ..Default::default()
                }),
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn golden_record_keeps_body_severity_ids_and_attributes() {
        let record = LogRecord {
            time_unix_nano: 1_700_000_000_123_000_000,
            severity_number: 9,
            severity_text: "INFO".into(),
            body: s("order 7 placed"),
            attributes: vec![kv(
                "order.id",
                Some(AnyValue {
                    value: Some(Av::IntValue(7)),
                }),
            )],
            trace_id: (1..=16).collect(),
            span_id: (1..=8).collect(),
            ..Default::default()
        };
        let req = ExportLogsServiceRequest {
            resource_logs: vec![request("checkout", vec![record])],
        };
        let g = Template::parse("/ecs/{service.name}", NameKind::LogGroup).unwrap();
        let st = Template::parse("{host.name}/{container.id}", NameKind::LogStream).unwrap();
        let out = log_events(&req, &g, &st, false, 0);
        let events = &out[&("/ecs/checkout".to_string(), "h1/unknown".to_string())];
        assert_eq!(events[0].timestamp_ms, 1_700_000_000_123);
        let msg: Value = serde_json::from_str(&events[0].message).unwrap();
        assert_eq!(
            msg,
            json!({
                "body": "order 7 placed",
                "severity": "INFO",
                "severity_number": 9,
                "trace_id": "0102030405060708090a0b0c0d0e0f10",
                "span_id": "0102030405060708",
                "attributes": {"order.id": 7},
                "scope": "otel_app"
            })
        );
    }

    #[test]
    fn structured_bodies_stay_json_and_resources_route_records() {
        let body = Some(AnyValue {
            value: Some(Av::KvlistValue(KeyValueList {
                values: vec![
                    kv("user", s("u-1")),
                    kv(
                        "ok",
                        Some(AnyValue {
                            value: Some(Av::BoolValue(true)),
                        }),
                    ),
                ],
            })),
        });
        let req = ExportLogsServiceRequest {
            resource_logs: vec![
                request(
                    "checkout",
                    vec![LogRecord {
                        body,
                        observed_time_unix_nano: 5_000_000,
                        ..Default::default()
                    }],
                ),
                request(
                    "payments",
                    vec![LogRecord {
                        body: s("x"),
                        ..Default::default()
                    }],
                ),
                request("empty", vec![]),
            ],
        };
        let g = Template::parse("/app/{service.name}", NameKind::LogGroup).unwrap();
        let st = Template::parse("{host.name}", NameKind::LogStream).unwrap();
        let out = log_events(&req, &g, &st, true, 42);
        assert_eq!(out.len(), 2);
        let checkout = &out[&("/app/checkout".to_string(), "h1".to_string())][0];
        assert_eq!(checkout.timestamp_ms, 5);
        let msg: Value = serde_json::from_str(&checkout.message).unwrap();
        assert_eq!(msg["body"], json!({"user": "u-1", "ok": true}));
        assert_eq!(
            msg["resource"],
            json!({"service.name": "checkout", "host.name": "h1"})
        );
        // No time at all: the processing time.
        assert_eq!(
            out[&("/app/payments".to_string(), "h1".to_string())][0].timestamp_ms,
            42
        );
    }
}
