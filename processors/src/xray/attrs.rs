//! Attribute lookup with "consumed" tracking: attributes copied into a typed X-Ray
//! field (http, sql, aws, user, ...) are marked consumed and not repeated in
//! metadata.

use std::collections::HashSet;

use opentelemetry_proto::tonic::common::v1::{any_value::Value as Av, AnyValue, KeyValue};
use serde_json::Value;

pub(crate) struct Attrs<'a> {
    kvs: &'a [KeyValue],
    consumed: HashSet<&'a str>,
}

impl<'a> Attrs<'a> {
    pub(crate) fn new(kvs: &'a [KeyValue]) -> Self {
        Self {
            kvs,
            consumed: HashSet::new(),
        }
    }

    /// First value for `key` (consumed or not).
    pub(crate) fn get(&self, key: &str) -> Option<&'a Av> {
        self.kvs
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .and_then(|v| v.value.as_ref())
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Non-empty string value.
    pub(crate) fn str(&self, key: &str) -> Option<&'a str> {
        match self.get(key)? {
            Av::StringValue(s) if !s.is_empty() => Some(s.as_str()),
            _ => None,
        }
    }

    pub(crate) fn first_str(&self, keys: &[&str]) -> Option<&'a str> {
        keys.iter().find_map(|k| self.str(k))
    }

    /// Any scalar rendered as a string (ports may arrive as ints or strings).
    pub(crate) fn string(&self, key: &str) -> Option<String> {
        match self.get(key)? {
            Av::StringValue(s) if !s.is_empty() => Some(s.clone()),
            Av::IntValue(i) => Some(i.to_string()),
            Av::DoubleValue(d) if d.is_finite() => Some(d.to_string()),
            Av::BoolValue(b) => Some(b.to_string()),
            _ => None,
        }
    }

    /// Integer value; integral doubles and numeric strings are accepted.
    pub(crate) fn int(&self, key: &str) -> Option<i64> {
        match self.get(key)? {
            Av::IntValue(i) => Some(*i),
            Av::DoubleValue(d) if d.fract() == 0.0 && d.abs() < 9.0e15 => Some(*d as i64),
            Av::StringValue(s) => s.trim().parse().ok(),
            _ => None,
        }
    }

    pub(crate) fn consume(&mut self, key: &str) {
        if let Some(kv) = self.kvs.iter().find(|kv| kv.key == key) {
            self.consumed.insert(kv.key.as_str());
        }
    }

    /// The first of `keys` that has a scalar value; when found, every present
    /// alternative in `keys` is consumed (they are synonyms, e.g. the legacy and
    /// current semantic-convention names emitted side by side).
    pub(crate) fn take_string(&mut self, keys: &[&str]) -> Option<String> {
        let v = keys.iter().find_map(|k| self.string(k))?;
        keys.iter().for_each(|k| self.consume(k));
        Some(v)
    }

    pub(crate) fn take_int(&mut self, keys: &[&str]) -> Option<i64> {
        let v = keys.iter().find_map(|k| self.int(k))?;
        keys.iter().for_each(|k| self.consume(k));
        Some(v)
    }

    /// Attributes not consumed, in input order, first occurrence of each key only.
    pub(crate) fn unconsumed(&self) -> impl Iterator<Item = &'a KeyValue> + '_ {
        let mut seen = HashSet::new();
        self.kvs
            .iter()
            .filter(move |kv| !self.consumed.contains(kv.key.as_str()) && seen.insert(&kv.key))
    }
}

/// Any OTLP value as JSON (metadata). Bytes become base64, like OTLP/JSON.
pub(crate) fn any_to_json(v: Option<&AnyValue>) -> Value {
    match v.and_then(|v| v.value.as_ref()) {
        None | Some(Av::StringValueStrindex(_)) => Value::Null,
        Some(Av::StringValue(s)) => Value::String(s.clone()),
        Some(Av::BoolValue(b)) => Value::Bool(*b),
        Some(Av::IntValue(i)) => Value::from(*i),
        Some(Av::DoubleValue(d)) => serde_json::Number::from_f64(*d)
            .map_or_else(|| Value::String(d.to_string()), Value::Number),
        Some(Av::ArrayValue(a)) => {
            Value::Array(a.values.iter().map(|v| any_to_json(Some(v))).collect())
        }
        Some(Av::KvlistValue(l)) => {
            let mut m = serde_json::Map::new();
            for kv in &l.values {
                m.entry(kv.key.clone())
                    .or_insert_with(|| any_to_json(kv.value.as_ref()));
            }
            Value::Object(m)
        }
        Some(Av::BytesValue(b)) => Value::String(base64(b)),
    }
}

/// Annotation values: strings, booleans, integers and finite doubles only.
pub(crate) fn annotation_value(v: Option<&AnyValue>) -> Option<Value> {
    match v?.value.as_ref()? {
        Av::StringValue(s) => Some(Value::String(s.clone())),
        Av::BoolValue(b) => Some(Value::Bool(*b)),
        Av::IntValue(i) => Some(Value::from(*i)),
        Av::DoubleValue(d) => serde_json::Number::from_f64(*d).map(Value::Number),
        _ => None,
    }
}

fn base64(bytes: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod unit {
    #[test]
    fn xray_base64() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(b"foob"), "Zm9vYg==");
    }
}
