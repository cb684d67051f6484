//! Validation of analytics events, and the JSON form accepted by `POST /v1/events`.
//!
//! Each event is judged alone: a bad one is reported with its index and the offending field,
//! and the rest of the batch goes on.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prost::Message;
use prost_types::Timestamp;
use serde_json::{Map, Value};
use tidewater_proto::events::v1::{Event, RejectedEvent};
use tidewater_proto::json::struct_from_json;
use xxhash_rust::xxh3::xxh3_128;

use crate::wire::{Fields, WireError};

/// Identifiers and names longer than this are refused rather than truncated.
pub const MAX_ID_LEN: usize = 256;
/// Clocks drift; events stamped further in the future than this are refused.
pub const MAX_FUTURE_SKEW: Duration = Duration::from_secs(24 * 3600);

pub struct Limits {
    pub max_event_size: usize,
}

/// Checks one event and fills what the collector owns: `received_at`, a `message_id` when the
/// client sent none (a hash of the event's content, so a retried event keeps its id), and a
/// `timestamp` when the client sent none.
pub fn validate(
    mut event: Event,
    index: usize,
    now: SystemTime,
    limits: &Limits,
) -> Result<Event, RejectedEvent> {
    let reject = |event: &Event, field: &str, reason: String| RejectedEvent {
        index: index as u32,
        message_id: event.message_id.clone(),
        field: field.to_string(),
        reason,
    };
    if event.name.trim().is_empty() {
        return Err(reject(
            &event,
            "name",
            "required and must not be empty".into(),
        ));
    }
    for (field, value) in [
        ("name", &event.name),
        ("message_id", &event.message_id),
        ("user_id", &event.user_id),
        ("anonymous_id", &event.anonymous_id),
    ] {
        if value.len() > MAX_ID_LEN {
            return Err(reject(
                &event,
                field,
                format!("longer than {MAX_ID_LEN} bytes"),
            ));
        }
    }
    if event.user_id.is_empty() && event.anonymous_id.is_empty() {
        return Err(reject(
            &event,
            "user_id",
            "one of user_id and anonymous_id is required".into(),
        ));
    }
    if let Some(ts) = &event.timestamp {
        let limit = now + MAX_FUTURE_SKEW;
        let limit_secs = limit
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(i64::MAX);
        if ts.seconds < 0 || !(0..1_000_000_000).contains(&ts.nanos) {
            return Err(reject(
                &event,
                "timestamp",
                "must be a valid time after 1970".into(),
            ));
        }
        if ts.seconds > limit_secs {
            return Err(reject(
                &event,
                "timestamp",
                format!(
                    "more than {}h in the future",
                    MAX_FUTURE_SKEW.as_secs() / 3600
                ),
            ));
        }
    }
    if let Some(reason) = tidewater_proto::depth::event_too_deep(&event) {
        let field = if event
            .properties
            .as_ref()
            .map(tidewater_proto::depth::struct_depth)
            >= event
                .context
                .as_ref()
                .map(tidewater_proto::depth::struct_depth)
        {
            "properties"
        } else {
            "context"
        };
        return Err(reject(&event, field, reason));
    }
    let size = event.encoded_len();
    if size > limits.max_event_size {
        return Err(reject(
            &event,
            "event",
            format!(
                "{size} bytes encoded, over the {} byte limit",
                limits.max_event_size
            ),
        ));
    }
    if event.message_id.is_empty() {
        event.message_id = if event.timestamp.is_some() {
            // A client's retry carries the same content and timestamp, so it gets the same id
            // and is stored once downstream.
            format!("{:032x}", xxh3_128(&event.encode_to_vec()))
        } else {
            // Nothing tells two identical events without a time apart from a retry of one:
            // a fresh id keeps both (a retry of such an event may then be stored twice, which
            // beats silently merging two real events into one).
            uuid::Uuid::now_v7().simple().to_string()
        };
    }
    let now_ts = Timestamp::from(now);
    if event.timestamp.is_none() {
        event.timestamp = Some(now_ts);
    }
    event.received_at = Some(now_ts);
    Ok(event)
}

/// Parses one event of a JSON batch. Field names are the proto's (`message_id`), with the
/// camelCase spellings analytics SDKs use (`messageId`) accepted too. Unknown fields are
/// refused, not dropped: silently losing a field is worse than a clear error.
pub fn from_json(value: &Value, index: usize) -> Result<Event, RejectedEvent> {
    let reject = |field: &str, reason: String| RejectedEvent {
        index: index as u32,
        message_id: value
            .get("message_id")
            .or_else(|| value.get("messageId"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string(),
        field: field.to_string(),
        reason,
    };
    let Some(obj) = value.as_object() else {
        return Err(reject("event", "must be a JSON object".into()));
    };
    let mut event = Event::default();
    for (key, v) in obj {
        match key.as_str() {
            "message_id" | "messageId" => event.message_id = string(v).map_err(|r| reject(key, r))?,
            "name" | "event" => event.name = string(v).map_err(|r| reject(key, r))?,
            "user_id" | "userId" => event.user_id = string(v).map_err(|r| reject(key, r))?,
            "anonymous_id" | "anonymousId" => event.anonymous_id = string(v).map_err(|r| reject(key, r))?,
            "timestamp" => event.timestamp = timestamp(v).map_err(|r| reject(key, r))?,
            "properties" => event.properties = object(v).map_err(|r| reject(key, r))?,
            "context" => event.context = object(v).map_err(|r| reject(key, r))?,
            // Set by the collector; a client's value is ignored, as the proto says.
            "received_at" | "receivedAt" => {}
            other => return Err(reject(other, "unknown field (expected message_id, name, user_id, anonymous_id, timestamp, properties, context)".into())),
        }
    }
    Ok(event)
}

/// The events of an encoded `PublishRequest`, each decoded alone so that one malformed event is
/// rejected by its index while the others go on. `Err` only when the request's own framing is
/// broken. Unknown fields are skipped, as prost would.
pub fn from_protobuf(request: &[u8]) -> Result<Vec<Result<Event, RejectedEvent>>, WireError> {
    let mut events = Vec::new();
    for field in Fields::new(request) {
        let field = field?;
        if field.number != 1 {
            continue;
        }
        let bytes = field.len_contents("events")?;
        let index = events.len();
        events.push(Event::decode(bytes).map_err(|e| RejectedEvent {
            index: index as u32,
            message_id: String::new(),
            field: "event".into(),
            reason: format!("not a valid Event: {e}"),
        }));
    }
    Ok(events)
}

fn string(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Null => Ok(String::new()),
        other => Err(format!("must be a string, not {}", kind(other))),
    }
}

fn object(v: &Value) -> Result<Option<prost_types::Struct>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Object(_) => Ok(struct_from_json(v)),
        other => Err(format!("must be an object, not {}", kind(other))),
    }
}

/// RFC 3339 strings (any offset) or Unix epoch milliseconds.
fn timestamp(v: &Value) -> Result<Option<Timestamp>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| {
                Some(Timestamp {
                    seconds: t.timestamp(),
                    // chrono gives a leap second (`23:59:60`) nanos past 10^9, which protobuf
                    // refuses; like Unix time, take it as the end of the second before.
                    nanos: t.timestamp_subsec_nanos().min(999_999_999) as i32,
                })
            })
            .map_err(|e| format!("{s:?} is not an RFC 3339 time: {e}")),
        Value::Number(n) => {
            let ms = n
                .as_i64()
                .ok_or_else(|| format!("{n} is not whole epoch milliseconds"))?;
            Ok(Some(Timestamp {
                seconds: ms.div_euclid(1000),
                nanos: (ms.rem_euclid(1000) * 1_000_000) as i32,
            }))
        }
        other => Err(format!(
            "must be an RFC 3339 string or epoch milliseconds, not {}",
            kind(other)
        )),
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The JSON form of a publish response.
pub fn response_json(accepted: usize, rejected: &[RejectedEvent]) -> Value {
    let rejected: Vec<Value> = rejected
        .iter()
        .map(|r| {
            let mut m = Map::new();
            m.insert("index".into(), r.index.into());
            m.insert("message_id".into(), r.message_id.clone().into());
            m.insert("field".into(), r.field.clone().into());
            m.insert("reason".into(), r.reason.clone().into());
            Value::Object(m)
        })
        .collect();
    serde_json::json!({ "accepted": accepted, "rejected": rejected })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const LIMITS: Limits = Limits {
        max_event_size: 64 * 1024,
    };

    fn parse_and_validate(v: Value) -> Result<Event, RejectedEvent> {
        validate(from_json(&v, 3)?, 3, SystemTime::now(), &LIMITS)
    }

    #[test]
    fn accepts_a_full_event_and_fills_collector_fields() {
        let e = parse_and_validate(json!({
            "messageId": "m1", "name": "Signed Up", "userId": "u1",
            "timestamp": "2026-11-01T10:00:00.5+02:00",
            "properties": {"plan": "pro", "seats": 3}, "context": {"app": {"version": "1.2"}}
        }))
        .unwrap();
        assert_eq!(e.message_id, "m1");
        assert_eq!(e.timestamp.unwrap().seconds, 1_793_520_000);
        assert_eq!(e.timestamp.unwrap().nanos, 500_000_000);
        assert!(e.received_at.is_some());
        assert_eq!(
            tidewater_proto::json::struct_to_json(e.properties.as_ref().unwrap()),
            json!({"plan": "pro", "seats": 3})
        );
    }

    #[test]
    fn names_the_field_and_index() {
        for (event, field) in [
            (json!({"user_id": "u"}), "name"),
            (json!({"name": "x"}), "user_id"),
            (
                json!({"name": "x", "user_id": "u", "timestamp": "yesterday"}),
                "timestamp",
            ),
            (
                json!({"name": "x", "user_id": "u", "properties": [1]}),
                "properties",
            ),
            (json!({"name": 5, "user_id": "u"}), "name"),
            (
                json!({"name": "x", "user_id": "u", "colour": "red"}),
                "colour",
            ),
            (
                json!({"name": "x", "user_id": "u", "timestamp": 4_102_444_800_000u64}),
                "timestamp",
            ),
        ] {
            let r = parse_and_validate(event.clone()).unwrap_err();
            assert_eq!(
                (r.index, r.field.as_str()),
                (3, field),
                "{event}: {}",
                r.reason
            );
        }
    }

    #[test]
    fn missing_message_id_is_derived_from_content_and_time() {
        let v = json!({"name": "x", "anonymous_id": "a", "timestamp": 1_700_000_000_000u64});
        let a = parse_and_validate(v.clone()).unwrap();
        let b = parse_and_validate(v).unwrap();
        assert_eq!(a.message_id.len(), 32);
        assert_eq!(a.message_id, b.message_id);
        // Without a time, identical events are two events, not one sent twice.
        let v = json!({"name": "x", "anonymous_id": "a"});
        let a = parse_and_validate(v.clone()).unwrap();
        let b = parse_and_validate(v).unwrap();
        assert_eq!(a.message_id.len(), 32);
        assert_ne!(a.message_id, b.message_id);
    }

    #[test]
    fn a_leap_second_is_the_last_instant_of_its_minute() {
        let e = parse_and_validate(
            json!({"name": "x", "user_id": "u", "timestamp": "2016-12-31T23:59:60.5Z"}),
        )
        .unwrap();
        let ts = e.timestamp.unwrap();
        assert_eq!((ts.seconds, ts.nanos), (1_483_228_799, 999_999_999));
    }

    #[test]
    fn properties_too_deep_for_the_bus_are_refused_alone() {
        let mut deep = json!(1);
        for _ in 0..40 {
            deep = json!({ "k": deep });
        }
        let r = parse_and_validate(json!({"name": "x", "user_id": "u", "properties": deep}))
            .unwrap_err();
        assert_eq!(r.field, "properties");
        assert!(r.reason.contains("nested"), "{}", r.reason);
        let mut ok = json!(1);
        for _ in 0..20 {
            ok = json!({ "k": ok });
        }
        parse_and_validate(json!({"name": "x", "user_id": "u", "context": ok})).unwrap();
    }

    #[test]
    fn a_malformed_protobuf_event_is_rejected_alone() {
        use prost::encoding::{encode_key, encode_varint, WireType};
        let good = Event {
            name: "x".into(),
            user_id: "u".into(),
            ..Default::default()
        };
        let mut request = tidewater_proto::events::v1::PublishRequest {
            events: vec![good.clone()],
        }
        .encode_to_vec();
        // events[1]: a string field holding invalid UTF-8.
        let bad = [0x12, 0x02, 0xff, 0xfe];
        encode_key(1, WireType::LengthDelimited, &mut request);
        encode_varint(bad.len() as u64, &mut request);
        request.extend_from_slice(&bad);
        request.extend(
            tidewater_proto::events::v1::PublishRequest { events: vec![good] }.encode_to_vec(),
        );
        let events = from_protobuf(&request).unwrap();
        assert_eq!(events.len(), 3);
        assert!(events[0].is_ok() && events[2].is_ok());
        let r = events[1].as_ref().unwrap_err();
        assert_eq!((r.index, r.field.as_str()), (1, "event"));
        assert!(
            r.reason.contains("UTF-8") || r.reason.contains("utf"),
            "{}",
            r.reason
        );
        // A broken frame is the whole request's problem.
        assert!(from_protobuf(&[0x0a, 0x7f, 0x01]).is_err());
    }

    #[test]
    fn oversized_event_is_refused() {
        let big = "x".repeat(70 * 1024);
        let r =
            parse_and_validate(json!({"name": "x", "user_id": "u", "properties": {"blob": big}}))
                .unwrap_err();
        assert_eq!(r.field, "event");
    }
}
