//! Pure translation of analytics events and OTLP log records into the JSON documents sinks
//! store (the file sink, Elasticsearch). No I/O: the caller passes the processing time.
//!
//! Besides the document itself, each kind has a stable id (the de-duplication key a replay
//! after a crash meets again) and the instant it happened (which daily index it belongs to).

use std::net::IpAddr;

use chrono::{DateTime, SecondsFormat, Utc};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::LogRecord;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use prost_types::Timestamp;
use serde_json::{json, Map, Value};
use tidewater_proto::events::v1::Event;
use tidewater_proto::json::struct_to_json;
use xxhash_rust::xxh3::Xxh3;

use crate::xray::any_to_json;

fn rfc3339(ts: &Timestamp) -> Option<String> {
    DateTime::<Utc>::from_timestamp(ts.seconds, ts.nanos.max(0) as u32)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

fn utc(ts: &Timestamp) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp(ts.seconds, ts.nanos.max(0) as u32)
}

/// The stored document of one event: `@timestamp` is when it happened, `event.name`,
/// `user.id` and `message_id` are the fields analysts group and join on.
///
/// Derived fields, added only when the input makes them valid (so a malformed value never
/// gets an event rejected by a typed mapping; the raw value stays in `context`):
/// - `user.distinct_id`: `user_id`, else `anonymous_id` — one key per person for unique
///   counts and funnels that include anonymous visitors;
/// - `client.ip`: `context.ip` when it is an IP address;
/// - `geo.location`: `{lat, lon}` from `context.location.latitude/longitude` (the analytics
///   SDKs' shape) when both are in range.
pub fn event_document(event: &Event, processed_at: DateTime<Utc>) -> Value {
    let mut doc = Map::new();
    doc.insert(
        "@timestamp".into(),
        event
            .timestamp
            .as_ref()
            .and_then(rfc3339)
            .map(Value::String)
            .unwrap_or(Value::Null),
    );
    doc.insert("message_id".into(), event.message_id.clone().into());
    doc.insert("event".into(), json!({ "name": event.name }));
    let mut user = Map::new();
    if !event.user_id.is_empty() {
        user.insert("id".into(), event.user_id.clone().into());
    }
    if !event.anonymous_id.is_empty() {
        user.insert("anonymous_id".into(), event.anonymous_id.clone().into());
    }
    let distinct = [&event.user_id, &event.anonymous_id]
        .into_iter()
        .find(|id| !id.is_empty());
    if let Some(id) = distinct {
        user.insert("distinct_id".into(), id.clone().into());
    }
    doc.insert("user".into(), Value::Object(user));
    doc.insert(
        "properties".into(),
        event
            .properties
            .as_ref()
            .map(struct_to_json)
            .unwrap_or_else(|| json!({})),
    );
    let context = event
        .context
        .as_ref()
        .map(struct_to_json)
        .unwrap_or_else(|| json!({}));
    if let Some(ip) = context["ip"]
        .as_str()
        .and_then(|s| s.parse::<IpAddr>().ok())
    {
        doc.insert("client".into(), json!({ "ip": ip.to_string() }));
    }
    if let Some(location) = geo_point(&context["location"]) {
        doc.insert("geo".into(), json!({ "location": location }));
    }
    doc.insert("context".into(), context);
    if let Some(received) = event.received_at.as_ref().and_then(rfc3339) {
        doc.insert("received_at".into(), received.into());
    }
    doc.insert(
        "processed_at".into(),
        processed_at
            .to_rfc3339_opts(SecondsFormat::Millis, true)
            .into(),
    );
    Value::Object(doc)
}

fn geo_point(location: &Value) -> Option<Value> {
    let lat = location["latitude"].as_f64()?;
    let lon = location["longitude"].as_f64()?;
    ((-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon))
        .then(|| json!({ "lat": lat, "lon": lon }))
}

/// The event's document id: its `message_id`, or, when that is empty (the collector fills it,
/// so only for events from elsewhere), a hash of the whole encoded event, which a replay of
/// the same bus record reproduces.
pub fn event_id(event: &Event) -> String {
    if !event.message_id.is_empty() {
        return event.message_id.clone();
    }
    let mut h = Xxh3::new();
    h.update(&event.encode_to_vec());
    format!("{:032x}", h.digest128())
}

/// When the event happened: its own timestamp, else when the collector received it.
pub fn event_time(event: &Event) -> Option<DateTime<Utc>> {
    event
        .timestamp
        .as_ref()
        .or(event.received_at.as_ref())
        .and_then(utc)
}

/// One log record with what it was sent under.
#[derive(Clone, Copy)]
pub struct LogRef<'a> {
    pub resource: Option<&'a Resource>,
    pub scope: Option<&'a InstrumentationScope>,
    pub record: &'a LogRecord,
}

/// Every log record of an OTLP logs request, in order.
pub fn log_records(request: &ExportLogsServiceRequest) -> impl Iterator<Item = LogRef<'_>> {
    request.resource_logs.iter().flat_map(|rl| {
        rl.scope_logs.iter().flat_map(move |sl| {
            sl.log_records.iter().map(move |record| LogRef {
                resource: rl.resource.as_ref(),
                scope: sl.scope.as_ref(),
                record,
            })
        })
    })
}

fn attributes_json(kvs: &[KeyValue]) -> Value {
    let mut m = Map::new();
    for kv in kvs {
        // The first value of a repeated key wins, as in OTLP/JSON readers.
        m.entry(kv.key.clone())
            .or_insert_with(|| any_to_json(kv.value.as_ref()));
    }
    Value::Object(m)
}

fn nanos_rfc3339(nanos: u64) -> Option<String> {
    (nanos > 0).then(|| {
        DateTime::<Utc>::from_timestamp_nanos(nanos.min(i64::MAX as u64) as i64)
            .to_rfc3339_opts(SecondsFormat::AutoSi, true)
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The stored document of one log record, in the shape of the OpenTelemetry log data model:
/// `@timestamp` (the record's time, else when it was observed), `severity_text`,
/// `severity_number`, `message` (the body as text: searchable), `body` (the body itself when it
/// is structured), `trace_id`/`span_id` (hex, to jump to the trace), `attributes`,
/// `resource.attributes`, `service.name` (copied from the resource, the field everyone filters
/// on), `scope`. Empty fields are left out.
pub fn log_document(log: LogRef<'_>) -> Value {
    let r = log.record;
    let mut doc = Map::new();
    let time = nanos_rfc3339(r.time_unix_nano).or_else(|| nanos_rfc3339(r.observed_time_unix_nano));
    doc.insert(
        "@timestamp".into(),
        time.map(Value::String).unwrap_or(Value::Null),
    );
    if let Some(observed) = nanos_rfc3339(r.observed_time_unix_nano) {
        doc.insert("observed_timestamp".into(), observed.into());
    }
    if !r.severity_text.is_empty() {
        doc.insert("severity_text".into(), r.severity_text.clone().into());
    }
    if r.severity_number > 0 {
        doc.insert("severity_number".into(), r.severity_number.into());
    }
    match r.body.as_ref().and_then(|b| b.value.as_ref()) {
        None => {}
        Some(any_value::Value::StringValue(s)) => {
            doc.insert("message".into(), s.clone().into());
        }
        Some(_) => {
            let body = any_to_json(r.body.as_ref());
            let text = match &body {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            doc.insert("message".into(), text.into());
            if body.is_object() || body.is_array() {
                doc.insert("body".into(), body);
            }
        }
    }
    if !r.event_name.is_empty() {
        doc.insert("event_name".into(), r.event_name.clone().into());
    }
    if !r.trace_id.is_empty() {
        doc.insert("trace_id".into(), hex(&r.trace_id).into());
    }
    if !r.span_id.is_empty() {
        doc.insert("span_id".into(), hex(&r.span_id).into());
    }
    doc.insert("attributes".into(), attributes_json(&r.attributes));
    let resource_attrs = log.resource.map(|r| &r.attributes[..]).unwrap_or(&[]);
    if let Some(service) = resource_attrs.iter().find(|kv| kv.key == "service.name") {
        doc.insert(
            "service".into(),
            json!({ "name": any_to_json(service.value.as_ref()) }),
        );
    }
    doc.insert(
        "resource".into(),
        json!({ "attributes": attributes_json(resource_attrs) }),
    );
    if let Some(scope) = log.scope.filter(|s| !s.name.is_empty()) {
        let mut s = Map::new();
        s.insert("name".into(), scope.name.clone().into());
        if !scope.version.is_empty() {
            s.insert("version".into(), scope.version.clone().into());
        }
        doc.insert("scope".into(), Value::Object(s));
    }
    Value::Object(doc)
}

/// A log record's document id: a hash of the record with its resource and scope. A replay of
/// the same bus record, or an SDK re-sending the same export, yields the same id; two
/// distinct records would have to match to the nanosecond in every field to share one.
pub fn log_id(log: LogRef<'_>) -> String {
    let mut h = Xxh3::new();
    h.update(&log.resource.map(|r| r.encode_to_vec()).unwrap_or_default());
    h.update(&[0xff]);
    h.update(&log.scope.map(|s| s.encode_to_vec()).unwrap_or_default());
    h.update(&[0xff]);
    h.update(&log.record.encode_to_vec());
    format!("{:032x}", h.digest128())
}

/// When the record happened: its time, else when it was observed.
pub fn log_time(record: &LogRecord) -> Option<DateTime<Utc>> {
    [record.time_unix_nano, record.observed_time_unix_nano]
        .into_iter()
        .find(|n| *n > 0)
        .map(|n| DateTime::<Utc>::from_timestamp_nanos(n.min(i64::MAX as u64) as i64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::AnyValue;
    use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};

    fn string_value(s: &str) -> Option<AnyValue> {
        Some(AnyValue {
            value: Some(any_value::Value::StringValue(s.into())),
        })
    }

    fn order_completed() -> Event {
        Event {
            message_id: "m-1".into(),
            name: "Order Completed".into(),
            user_id: "u-7".into(),
            anonymous_id: String::new(),
            timestamp: Some(Timestamp {
                seconds: 1_793_520_000,
                nanos: 250_000_000,
            }),
            properties: tidewater_proto::json::struct_from_json(
                &json!({"total": 42.5, "items": 3, "coupon": null}),
            ),
            context: tidewater_proto::json::struct_from_json(&json!({"app": {"version": "2.1.0"}})),
            received_at: Some(Timestamp {
                seconds: 1_793_520_001,
                nanos: 0,
            }),
        }
    }

    #[test]
    fn event_document_golden() {
        let processed = DateTime::<Utc>::from_timestamp(1_793_520_002, 0).unwrap();
        assert_eq!(
            event_document(&order_completed(), processed),
            json!({
                "@timestamp": "2026-11-01T08:00:00.250Z",
                "message_id": "m-1",
                "event": {"name": "Order Completed"},
                "user": {"id": "u-7", "distinct_id": "u-7"},
                "properties": {"total": 42.5, "items": 3, "coupon": null},
                "context": {"app": {"version": "2.1.0"}},
                "received_at": "2026-11-01T08:00:01.000Z",
                "processed_at": "2026-11-01T08:00:02.000Z"
            })
        );
    }

    #[test]
    fn event_document_derives_ip_geo_and_distinct_id_only_from_valid_input() {
        let processed = DateTime::<Utc>::from_timestamp(1_793_520_002, 0).unwrap();
        let mut e = order_completed();
        e.user_id.clear();
        e.anonymous_id = "anon-1".into();
        e.context = tidewater_proto::json::struct_from_json(&json!({
            "ip": "2001:db8::1",
            "location": {"latitude": 48.85, "longitude": 2.35, "city": "Paris"},
            "device": {"type": "ios"}
        }));
        let doc = event_document(&e, processed);
        assert_eq!(
            doc["user"],
            json!({"anonymous_id": "anon-1", "distinct_id": "anon-1"})
        );
        assert_eq!(doc["client"], json!({"ip": "2001:db8::1"}));
        assert_eq!(doc["geo"], json!({"location": {"lat": 48.85, "lon": 2.35}}));
        assert_eq!(doc["context"]["location"]["city"], "Paris");

        e.context = tidewater_proto::json::struct_from_json(&json!({
            "ip": "not an ip",
            "location": {"latitude": 123.0, "longitude": 2.35}
        }));
        let doc = event_document(&e, processed);
        assert!(
            doc.get("client").is_none() && doc.get("geo").is_none(),
            "{doc}"
        );
        assert_eq!(doc["context"]["ip"], "not an ip", "the raw value is kept");
    }

    #[test]
    fn event_id_is_the_message_id_else_a_stable_hash() {
        let mut e = order_completed();
        assert_eq!(event_id(&e), "m-1");
        e.message_id.clear();
        let id = event_id(&e);
        assert_eq!(id.len(), 32);
        assert_eq!(id, event_id(&e.clone()), "deterministic");
        e.name = "Order Refunded".into();
        assert_ne!(id, event_id(&e));
    }

    #[test]
    fn event_time_falls_back_to_received_at() {
        let mut e = order_completed();
        assert_eq!(event_time(&e).unwrap().timestamp(), 1_793_520_000);
        e.timestamp = None;
        assert_eq!(event_time(&e).unwrap().timestamp(), 1_793_520_001);
        e.received_at = None;
        assert_eq!(event_time(&e), None);
    }

    fn kv(key: &str, value: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(value) }),
            ..Default::default()
        }
    }

    fn logs_request() -> ExportLogsServiceRequest {
        use any_value::Value as V;
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![
                        kv("service.name", V::StringValue("checkout".into())),
                        kv("deployment.environment", V::StringValue("prod".into())),
                    ],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    scope: Some(InstrumentationScope {
                        name: "shop.orders".into(),
                        version: "1.2".into(),
                        ..Default::default()
                    }),
                    log_records: vec![
                        LogRecord {
                            time_unix_nano: 1_793_520_000_123_456_789,
                            observed_time_unix_nano: 1_793_520_000_200_000_000,
                            severity_number: 17,
                            severity_text: "ERROR".into(),
                            body: string_value("payment declined"),
                            attributes: vec![
                                kv("order.id", V::IntValue(42)),
                                kv("retry", V::BoolValue(false)),
                            ],
                            trace_id: vec![0xab; 16],
                            span_id: vec![0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08],
                            ..Default::default()
                        },
                        LogRecord {
                            observed_time_unix_nano: 1_793_520_001_000_000_000,
                            body: Some(AnyValue {
                                value: Some(V::KvlistValue(
                                    opentelemetry_proto::tonic::common::v1::KeyValueList {
                                        values: vec![kv("cart", V::IntValue(3))],
                                    },
                                )),
                            }),
                            ..Default::default()
                        },
                    ],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    #[test]
    fn log_document_golden() {
        let request = logs_request();
        let docs: Vec<Value> = log_records(&request).map(log_document).collect();
        assert_eq!(
            docs,
            vec![
                json!({
                    "@timestamp": "2026-11-01T08:00:00.123456789Z",
                    "observed_timestamp": "2026-11-01T08:00:00.200Z",
                    "severity_text": "ERROR",
                    "severity_number": 17,
                    "message": "payment declined",
                    "trace_id": "abababababababababababababababab",
                    "span_id": "0102030405060708",
                    "attributes": {"order.id": 42, "retry": false},
                    "service": {"name": "checkout"},
                    "resource": {"attributes": {"service.name": "checkout", "deployment.environment": "prod"}},
                    "scope": {"name": "shop.orders", "version": "1.2"}
                }),
                json!({
                    "@timestamp": "2026-11-01T08:00:01Z",
                    "observed_timestamp": "2026-11-01T08:00:01Z",
                    "message": "{\"cart\":3}",
                    "body": {"cart": 3},
                    "attributes": {},
                    "service": {"name": "checkout"},
                    "resource": {"attributes": {"service.name": "checkout", "deployment.environment": "prod"}},
                    "scope": {"name": "shop.orders", "version": "1.2"}
                }),
            ]
        );
    }

    #[test]
    fn log_ids_are_stable_and_distinct() {
        let request = logs_request();
        let ids: Vec<String> = log_records(&request).map(log_id).collect();
        let again: Vec<String> = log_records(&request.clone()).map(log_id).collect();
        assert_eq!(ids, again);
        assert_ne!(ids[0], ids[1]);
        let times: Vec<i64> = log_records(&request)
            .map(|l| log_time(l.record).unwrap().timestamp())
            .collect();
        assert_eq!(times, vec![1_793_520_000, 1_793_520_001]);
    }
}
