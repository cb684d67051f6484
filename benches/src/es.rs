//! Workloads for the Elasticsearch sink's benchmark and load generator: a shop's events and
//! an app's log records, as the processor hands them to sinks.

use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::resource::v1::Resource;
use serde_json::json;
use tidewater_processors::decode::{Batch, SignalData};
use tidewater_proto::events::v1::{Event, PublishRequest};
use tidewater_proto::json::struct_from_json;
use tidewater_proto::Signal;

/// 2026-11-01T00:00:00Z
pub const DAY_ONE: i64 = 1_793_491_200;

/// `n` events with ids `<prefix>-<i>`, spread over `days` days, with typical properties and
/// context (about 600 bytes of JSON each).
pub fn events(prefix: &str, n: usize, days: i64) -> Batch {
    let names = [
        "Product Viewed",
        "Added To Cart",
        "Order Completed",
        "Signed Up",
    ];
    let events = (0..n)
        .map(|i| Event {
            message_id: format!("{prefix}-{i}"),
            name: names[i % names.len()].into(),
            user_id: format!("user-{}", i % 997),
            anonymous_id: String::new(),
            timestamp: Some(ts(DAY_ONE + (i as i64 * 7919) % (days.max(1) * 86_400))),
            properties: struct_from_json(&json!({
                "sku": format!("SKU-{}", i % 113), "price": (i % 50) as f64 + 0.99,
                "quantity": i % 5, "currency": "EUR", "gift": i % 7 == 0,
                "category": (["shoes", "hats", "bags"][i % 3])
            })),
            context: struct_from_json(&json!({
                "app": {"name": "shop", "version": "2.3.1", "build": "4211"},
                "device": {"type": "ios", "model": "iPhone15,2", "manufacturer": "Apple"},
                "os": {"name": "iOS", "version": "17.1"},
                "ip": format!("203.0.113.{}", i % 250),
                "locale": "fr-FR",
                "location": {"latitude": 48.85, "longitude": 2.35, "city": "Paris", "country": "FR"}
            })),
            received_at: Some(ts(DAY_ONE + 3 * 86_400)),
        })
        .collect();
    Batch {
        signal: Signal::Events,
        record_id: prefix.as_bytes().to_vec(),
        produced_at_unix_nano: 0,
        item_count: n as u32,
        data: SignalData::Events(PublishRequest { events }),
    }
}

fn ts(seconds: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds, nanos: 0 }
}

fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

/// `n` log records of one service, a second apart from 2026-11-01.
pub fn logs(n: usize) -> Batch {
    use any_value::Value as V;
    let records = (0..n)
        .map(|i| LogRecord {
            time_unix_nano: (DAY_ONE as u64 + i as u64) * 1_000_000_000 + 123_456,
            observed_time_unix_nano: (DAY_ONE as u64 + i as u64) * 1_000_000_000 + 200_000,
            severity_number: 9,
            severity_text: "INFO".into(),
            body: Some(AnyValue {
                value: Some(V::StringValue(format!(
                    "order {i} paid by card ending {}",
                    i % 10_000
                ))),
            }),
            attributes: vec![
                kv("order.id", V::IntValue(i as i64)),
                kv("http.route", V::StringValue("/checkout/{id}".into())),
                kv("payment.ok", V::BoolValue(i % 9 != 0)),
            ],
            trace_id: vec![(i % 251) as u8; 16],
            span_id: vec![(i % 241) as u8; 8],
            ..Default::default()
        })
        .collect();
    let request = ExportLogsServiceRequest {
        resource_logs: vec![ResourceLogs {
            resource: Some(Resource {
                attributes: vec![
                    kv("service.name", V::StringValue("checkout".into())),
                    kv("deployment.environment", V::StringValue("prod".into())),
                ],
                ..Default::default()
            }),
            scope_logs: vec![ScopeLogs {
                log_records: records,
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    Batch {
        signal: Signal::Logs,
        record_id: vec![1],
        produced_at_unix_nano: 0,
        item_count: n as u32,
        data: SignalData::Logs(request),
    }
}

/// Shared batches, as `Sink::deliver` takes them.
pub fn shared(batches: Vec<Batch>) -> Vec<Arc<Batch>> {
    batches.into_iter().map(Arc::new).collect()
}
