//! OTLP `AnyValue` as the two shapes CloudWatch wants: a plain string (metric dimensions, log
//! group and stream names) and JSON (structured log events).

use std::collections::BTreeMap;

use base64::Engine;
use opentelemetry_proto::tonic::common::v1::{any_value::Value as Av, AnyValue, KeyValue};
use serde_json::{Map, Value};

/// The value as text: strings as they are, scalars formatted, arrays and maps as JSON.
pub fn to_string(value: &AnyValue) -> String {
    match &value.value {
        None => String::new(),
        Some(Av::StringValue(s)) => s.clone(),
        Some(Av::BoolValue(b)) => b.to_string(),
        Some(Av::IntValue(i)) => i.to_string(),
        Some(Av::DoubleValue(d)) => d.to_string(),
        Some(_) => to_json(value).to_string(),
    }
}

pub fn to_json(value: &AnyValue) -> Value {
    match &value.value {
        // An index into a profile's string table, which other signals never carry.
        None | Some(Av::StringValueStrindex(_)) => Value::Null,
        Some(Av::StringValue(s)) => Value::String(s.clone()),
        Some(Av::BoolValue(b)) => Value::Bool(*b),
        Some(Av::IntValue(i)) => Value::from(*i),
        Some(Av::DoubleValue(d)) => serde_json::Number::from_f64(*d)
            .map(Value::Number)
            // NaN and infinities have no JSON form; keep them readable rather than lose them.
            .unwrap_or_else(|| Value::String(d.to_string())),
        Some(Av::ArrayValue(a)) => Value::Array(a.values.iter().map(to_json).collect()),
        Some(Av::KvlistValue(kv)) => attributes_json(&kv.values),
        Some(Av::BytesValue(b)) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(b))
        }
    }
}

/// Attributes as a JSON object (later duplicates win, as in the SDKs).
pub fn attributes_json(kvs: &[KeyValue]) -> Value {
    let mut map = Map::new();
    for kv in kvs {
        let v = kv.value.as_ref().map(to_json).unwrap_or(Value::Null);
        map.insert(kv.key.clone(), v);
    }
    Value::Object(map)
}

/// Attributes as sorted `key → text` pairs.
pub fn attributes_text(kvs: &[KeyValue]) -> BTreeMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = kv.value.as_ref().map(to_string).unwrap_or_default();
            (kv.key.clone(), v)
        })
        .collect()
}
