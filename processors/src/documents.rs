//! Pure translation of analytics events into the JSON documents sinks store (the file sink
//! today, Elasticsearch next). No I/O: the caller passes the processing time.

use chrono::{DateTime, SecondsFormat, Utc};
use prost_types::Timestamp;
use serde_json::{json, Map, Value};
use tidewater_proto::events::v1::Event;
use tidewater_proto::json::struct_to_json;

fn rfc3339(ts: &Timestamp) -> Option<String> {
    DateTime::<Utc>::from_timestamp(ts.seconds, ts.nanos.max(0) as u32)
        .map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// The stored document of one event: `@timestamp` is when it happened, `event.name`,
/// `user.id` and `message_id` are the fields analysts group and join on.
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
    doc.insert("user".into(), Value::Object(user));
    doc.insert(
        "properties".into(),
        event
            .properties
            .as_ref()
            .map(struct_to_json)
            .unwrap_or_else(|| json!({})),
    );
    doc.insert(
        "context".into(),
        event
            .context
            .as_ref()
            .map(struct_to_json)
            .unwrap_or_else(|| json!({})),
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_document_golden() {
        let event = Event {
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
        };
        let processed = DateTime::<Utc>::from_timestamp(1_793_520_002, 0).unwrap();
        assert_eq!(
            event_document(&event, processed),
            json!({
                "@timestamp": "2026-11-01T08:00:00.250Z",
                "message_id": "m-1",
                "event": {"name": "Order Completed"},
                "user": {"id": "u-7"},
                "properties": {"total": 42.5, "items": 3, "coupon": null},
                "context": {"app": {"version": "2.1.0"}},
                "received_at": "2026-11-01T08:00:01.000Z",
                "processed_at": "2026-11-01T08:00:02.000Z"
            })
        );
    }
}
