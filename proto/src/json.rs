//! `google.protobuf.Struct`/`Value` <-> `serde_json::Value`: prost-types has no serde support,
//! and events arrive as JSON over HTTP and leave as JSON documents.

use prost_types::{value::Kind, ListValue, Struct, Value};

pub fn to_json(value: &Value) -> serde_json::Value {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::NumberValue(n)) => number_to_json(*n),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::ListValue(l)) => {
            serde_json::Value::Array(l.values.iter().map(to_json).collect())
        }
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

pub fn struct_to_json(s: &Struct) -> serde_json::Value {
    serde_json::Value::Object(
        s.fields
            .iter()
            .map(|(k, v)| (k.clone(), to_json(v)))
            .collect(),
    )
}

/// Integers stay integers in JSON output (protobuf numbers are doubles) when they are exact.
fn number_to_json(n: f64) -> serde_json::Value {
    const EXACT: f64 = 9_007_199_254_740_992.0; // 2^53
    if n.fract() == 0.0 && n.abs() < EXACT {
        serde_json::Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n)
            .map(serde_json::Value::Number)
            .unwrap_or(serde_json::Value::Null)
    }
}

pub fn from_json(value: &serde_json::Value) -> Value {
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(*b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Kind::StringValue(s.clone()),
        serde_json::Value::Array(a) => Kind::ListValue(ListValue {
            values: a.iter().map(from_json).collect(),
        }),
        serde_json::Value::Object(_) => {
            Kind::StructValue(struct_from_json(value).unwrap_or_default())
        }
    };
    Value { kind: Some(kind) }
}

/// `None` when `value` is not a JSON object.
pub fn struct_from_json(value: &serde_json::Value) -> Option<Struct> {
    let map = value.as_object()?;
    Some(Struct {
        fields: map.iter().map(|(k, v)| (k.clone(), from_json(v))).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_nested_json() {
        let v = serde_json::json!({"a": 1, "b": [true, null, "x", 1.5], "c": {"d": -3}});
        assert_eq!(struct_to_json(&struct_from_json(&v).unwrap()), v);
    }
}
