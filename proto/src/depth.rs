//! How deeply an event may nest, stated once for the collector that accepts it and the
//! processor that decodes it.
//!
//! prost refuses a message nested more than [`RECURSION_LIMIT`] levels below the one being
//! decoded, and that limit is fixed in prost. A processor decodes a bus record's
//! `PublishRequest` whole, so an event the collector took over HTTP JSON (which has no such
//! limit) but nested deeper than that would make the whole record undecodable, and with it
//! every good event batched beside it. The collector therefore refuses exactly the events
//! whose [`event_depth`] is over the limit; a test holds this rule equal to prost's decoding.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};

use crate::events::v1::Event;

/// prost's `RECURSION_LIMIT` (not configurable, not exported): a message may sit at most this
/// many levels below the root message being decoded.
pub const RECURSION_LIMIT: usize = 100;

/// The level of the deepest message inside `event` when it is decoded as one of a
/// `PublishRequest`'s events (the event itself is level 1).
pub fn event_depth(event: &Event) -> usize {
    let structs = [&event.properties, &event.context]
        .into_iter()
        .flatten()
        .map(struct_depth)
        .max()
        .unwrap_or(0);
    // Timestamps are messages one level down too.
    let timestamps = usize::from(event.timestamp.is_some() || event.received_at.is_some());
    1 + structs.max(timestamps)
}

/// `None` when a processor can decode `event` inside a `PublishRequest`; otherwise why not.
pub fn event_too_deep(event: &Event) -> Option<String> {
    let depth = event_depth(event);
    (depth > RECURSION_LIMIT).then(|| {
        format!(
            "nested {depth} protobuf messages deep, over the {RECURSION_LIMIT} the bus can decode \
             (each level of objects takes 3, each level of arrays 2: about 32 levels of objects)"
        )
    })
}

/// A `Struct` counts itself, and each field one map entry plus its value. A value without a
/// kind is the entry's default, which prost leaves out of the entry, so it adds no level.
pub fn struct_depth(s: &Struct) -> usize {
    1 + s
        .fields
        .values()
        .map(|v| 1 + if v.kind.is_none() { 0 } else { value_depth(v) })
        .max()
        .unwrap_or(0)
}

fn list_depth(l: &ListValue) -> usize {
    1 + l.values.iter().map(value_depth).max().unwrap_or(0)
}

fn value_depth(v: &Value) -> usize {
    1 + match &v.kind {
        Some(Kind::StructValue(s)) => struct_depth(s),
        Some(Kind::ListValue(l)) => list_depth(l),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::v1::PublishRequest;
    use prost::Message;

    fn nested(levels: usize, leaf: Value, wrap: fn(Value) -> Value) -> Value {
        (0..levels).fold(leaf, |v, _| wrap(v))
    }

    fn in_object(v: Value) -> Value {
        Value {
            kind: Some(Kind::StructValue(Struct {
                fields: [("k".to_string(), v)].into(),
            })),
        }
    }

    fn in_array(v: Value) -> Value {
        Value {
            kind: Some(Kind::ListValue(ListValue { values: vec![v] })),
        }
    }

    fn leaf() -> Value {
        Value {
            kind: Some(Kind::NumberValue(1.0)),
        }
    }

    fn event(properties: Value) -> Event {
        let Some(Kind::StructValue(properties)) = properties.kind else {
            unreachable!()
        };
        Event {
            name: "x".into(),
            user_id: "u".into(),
            properties: Some(properties),
            ..Default::default()
        }
    }

    /// The rule agrees with prost on both sides of the limit, for objects, arrays and a mix.
    #[test]
    fn agrees_with_prost_decoding() {
        let shapes: [fn(Value) -> Value; 3] = [in_object, in_array, |v| in_object(in_array(v))];
        for (shape, wrap) in shapes.into_iter().enumerate() {
            let mut saw = (false, false);
            for levels in 1..60 {
                let e = event(in_object(nested(levels, leaf(), wrap)));
                let bytes = PublishRequest {
                    events: vec![e.clone()],
                }
                .encode_to_vec();
                let decodes = PublishRequest::decode(&bytes[..]).is_ok();
                assert_eq!(
                    event_too_deep(&e).is_none(),
                    decodes,
                    "shape {shape}, {levels} levels, depth {}",
                    event_depth(&e)
                );
                if decodes {
                    saw.0 = true
                } else {
                    saw.1 = true
                }
            }
            assert_eq!(saw, (true, true), "shape {shape} crossed the limit");
        }
    }

    #[test]
    fn shallow_event_is_a_few_levels() {
        let e = event(in_object(leaf()));
        assert_eq!(event_depth(&e), 4);
        assert!(event_too_deep(&Event::default()).is_none());
    }
}
