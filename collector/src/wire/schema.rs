//! The OTLP messages' shapes (opentelemetry-proto 0.33), for checking bytes without decoding.
//!
//! [`check`] accepts a message exactly when prost would decode it into the generated type,
//! except that it is stricter on two points prost allows and OTLP never sends (groups in
//! unknown fields, nesting deeper than [`MAX_DEPTH`]): every known field must have its wire
//! type, strings must be UTF-8, packed scalars must frame, nested messages must check. The
//! collector copies checked bytes to the bus unchanged, so this is what keeps a processor from
//! meeting a record it cannot decode. `tests::agrees_with_prost` holds it to that on
//! mutated requests.

use std::str;

use prost::encoding::decode_varint;

use super::{Field, Fields, Value, WireError};

/// How deep messages may nest. prost refuses at 100; OTLP needs 6 plus attribute values.
pub const MAX_DEPTH: usize = 64;

#[derive(Clone, Copy)]
pub enum Kind {
    Varint,
    I64,
    I32,
    Bytes,
    Str,
    Message(&'static Msg),
    /// A repeated scalar: packed, or one value per field.
    RepeatedVarint,
    RepeatedI64,
}

pub struct Msg {
    pub name: &'static str,
    /// Number, name (`[]` when repeated, for error paths with an index), kind; in order of
    /// number, so a field is usually found at its number's offset from the first.
    pub fields: &'static [(u32, &'static str, Kind)],
}

impl Msg {
    fn field(&self, number: u32) -> Option<(&'static str, Kind)> {
        let first = self.fields.first()?.0;
        let guess = self.fields.get(number.wrapping_sub(first) as usize);
        match guess {
            Some(&(n, name, kind)) if n == number => Some((name, kind)),
            _ => self
                .fields
                .iter()
                .find(|(n, _, _)| *n == number)
                .map(|(_, name, kind)| (*name, *kind)),
        }
    }
}

/// Checks `bytes` as a `msg`.
pub fn check(msg: &Msg, bytes: &[u8]) -> Result<(), WireError> {
    check_at(msg, bytes, 1, None)
}

/// Checks `bytes` as a `msg`, and shows each of its own fields to `visit` once checked, so a
/// caller reading a few of them walks the message once.
pub fn check_visiting<'a>(
    msg: &Msg,
    bytes: &'a [u8],
    mut visit: impl FnMut(&Field<'a>),
) -> Result<(), WireError> {
    check_at(msg, bytes, 1, Some(&mut visit))
}

fn check_at<'a>(
    msg: &Msg,
    bytes: &'a [u8],
    depth: usize,
    mut visit: Option<&mut dyn FnMut(&Field<'a>)>,
) -> Result<(), WireError> {
    if depth > MAX_DEPTH {
        return Err(WireError::new(format!(
            "messages nest deeper than {MAX_DEPTH} levels"
        )));
    }
    for (position, field) in Fields::new(bytes).enumerate() {
        let field = field?;
        let Some((name, kind)) = msg.field(field.number) else {
            // Unknown fields are skipped, as prost does; their framing is already checked.
            if let Some(visit) = visit.as_mut() {
                visit(&field);
            }
            continue;
        };
        check_value(msg, kind, &field, depth)
            .map_err(|e| e.within(path_name(bytes, position, field.number, name)))?;
        if let Some(visit) = visit.as_mut() {
            visit(&field);
        }
    }
    Ok(())
}

/// Checks one field met in a `msg`, outside a walk of the whole message: the split walks the
/// `resource_*` and `scope_*` messages itself and checks their other fields here. Returns
/// whether the field is one of `msg`'s (an unknown one is skipped, as prost skips it).
pub fn check_field(msg: &Msg, field: &Field) -> Result<bool, WireError> {
    let Some((name, kind)) = msg.field(field.number) else {
        return Ok(false);
    };
    check_value(msg, kind, field, 1).map_err(|e| e.within(name))?;
    Ok(true)
}

#[inline]
fn check_value(msg: &Msg, kind: Kind, field: &Field, depth: usize) -> Result<(), WireError> {
    match (kind, field.value) {
        (Kind::Varint | Kind::RepeatedVarint, Value::Varint(_))
        | (Kind::I64 | Kind::RepeatedI64, Value::I64(_))
        | (Kind::I32, Value::I32(_))
        | (Kind::Bytes, Value::Len(_)) => Ok(()),
        (Kind::Str, Value::Len(b)) => str::from_utf8(b)
            .map(|_| ())
            .map_err(|_| WireError::new("string is not valid UTF-8")),
        (Kind::Message(inner), Value::Len(b)) => check_at(inner, b, depth + 1, None),
        (Kind::RepeatedVarint, Value::Len(mut b)) => {
            while !b.is_empty() {
                decode_varint(&mut b).map_err(|e| WireError::new(e.to_string()))?;
            }
            Ok(())
        }
        (Kind::RepeatedI64, Value::Len(b)) if b.len() % 8 == 0 => Ok(()),
        (Kind::RepeatedI64, Value::Len(b)) => Err(WireError::new(format!(
            "packed 64-bit values take {} bytes, not a multiple of 8",
            b.len()
        ))),
        (_, value) => Err(WireError::new(format!(
            "field {} of {} has wire type {}, which its type does not allow",
            field.number,
            msg.name,
            value.wire_type()
        ))),
    }
}

/// `name`, or `name[i]` for the i-th value of a repeated field (counted only on error).
fn path_name(bytes: &[u8], position: usize, number: u32, name: &str) -> String {
    match name.strip_suffix("[]") {
        Some(base) => {
            let index = Fields::new(bytes)
                .take(position)
                .filter(|f| f.as_ref().is_ok_and(|f| f.number == number))
                .count();
            format!("{base}[{index}]")
        }
        None => name.to_string(),
    }
}

use Kind::*;

pub static ANY_VALUE: Msg = Msg {
    name: "AnyValue",
    fields: &[
        (1, "string_value", Str),
        (2, "bool_value", Varint),
        (3, "int_value", Varint),
        (4, "double_value", I64),
        (5, "array_value", Message(&ARRAY_VALUE)),
        (6, "kvlist_value", Message(&KEY_VALUE_LIST)),
        (7, "bytes_value", Bytes),
        (8, "string_value_strindex", Varint),
    ],
};

pub static ARRAY_VALUE: Msg = Msg {
    name: "ArrayValue",
    fields: &[(1, "values[]", Message(&ANY_VALUE))],
};

pub static KEY_VALUE_LIST: Msg = Msg {
    name: "KeyValueList",
    fields: &[(1, "values[]", Message(&KEY_VALUE))],
};

pub static KEY_VALUE: Msg = Msg {
    name: "KeyValue",
    fields: &[
        (1, "key", Str),
        (2, "value", Message(&ANY_VALUE)),
        (3, "key_strindex", Varint),
    ],
};

pub static INSTRUMENTATION_SCOPE: Msg = Msg {
    name: "InstrumentationScope",
    fields: &[
        (1, "name", Str),
        (2, "version", Str),
        (3, "attributes[]", Message(&KEY_VALUE)),
        (4, "dropped_attributes_count", Varint),
    ],
};

pub static ENTITY_REF: Msg = Msg {
    name: "EntityRef",
    fields: &[
        (1, "schema_url", Str),
        (2, "type", Str),
        (3, "id_keys[]", Str),
        (4, "description_keys[]", Str),
    ],
};

/// A `resource_spans`, `resource_metrics` or `resource_logs` message without its scopes
/// (field 2), which a split walks itself.
pub static RESOURCE_ENTRY: Msg = Msg {
    name: "resource_*",
    fields: &[(1, "resource", Message(&RESOURCE)), (3, "schema_url", Str)],
};

/// A `scope_spans`, `scope_metrics` or `scope_logs` message without its items (field 2).
pub static SCOPE_ENTRY: Msg = Msg {
    name: "scope_*",
    fields: &[
        (1, "scope", Message(&INSTRUMENTATION_SCOPE)),
        (3, "schema_url", Str),
    ],
};

pub static RESOURCE: Msg = Msg {
    name: "Resource",
    fields: &[
        (1, "attributes[]", Message(&KEY_VALUE)),
        (2, "dropped_attributes_count", Varint),
        (3, "entity_refs[]", Message(&ENTITY_REF)),
    ],
};

// Traces.

pub static SPAN: Msg = Msg {
    name: "Span",
    fields: &[
        (1, "trace_id", Bytes),
        (2, "span_id", Bytes),
        (3, "trace_state", Str),
        (4, "parent_span_id", Bytes),
        (5, "name", Str),
        (6, "kind", Varint),
        (7, "start_time_unix_nano", I64),
        (8, "end_time_unix_nano", I64),
        (9, "attributes[]", Message(&KEY_VALUE)),
        (10, "dropped_attributes_count", Varint),
        (11, "events[]", Message(&SPAN_EVENT)),
        (12, "dropped_events_count", Varint),
        (13, "links[]", Message(&SPAN_LINK)),
        (14, "dropped_links_count", Varint),
        (15, "status", Message(&STATUS)),
        (16, "flags", I32),
    ],
};

pub static SPAN_EVENT: Msg = Msg {
    name: "Span.Event",
    fields: &[
        (1, "time_unix_nano", I64),
        (2, "name", Str),
        (3, "attributes[]", Message(&KEY_VALUE)),
        (4, "dropped_attributes_count", Varint),
    ],
};

pub static SPAN_LINK: Msg = Msg {
    name: "Span.Link",
    fields: &[
        (1, "trace_id", Bytes),
        (2, "span_id", Bytes),
        (3, "trace_state", Str),
        (4, "attributes[]", Message(&KEY_VALUE)),
        (5, "dropped_attributes_count", Varint),
        (6, "flags", I32),
    ],
};

pub static STATUS: Msg = Msg {
    name: "Status",
    fields: &[(2, "message", Str), (3, "code", Varint)],
};

// Logs.

pub static LOG_RECORD: Msg = Msg {
    name: "LogRecord",
    fields: &[
        (1, "time_unix_nano", I64),
        (2, "severity_number", Varint),
        (3, "severity_text", Str),
        (5, "body", Message(&ANY_VALUE)),
        (6, "attributes[]", Message(&KEY_VALUE)),
        (7, "dropped_attributes_count", Varint),
        (8, "flags", I32),
        (9, "trace_id", Bytes),
        (10, "span_id", Bytes),
        (11, "observed_time_unix_nano", I64),
        (12, "event_name", Str),
    ],
};

// Metrics.

pub static METRIC: Msg = Msg {
    name: "Metric",
    fields: &[
        (1, "name", Str),
        (2, "description", Str),
        (3, "unit", Str),
        (5, "gauge", Message(&GAUGE)),
        (7, "sum", Message(&SUM)),
        (9, "histogram", Message(&HISTOGRAM)),
        (10, "exponential_histogram", Message(&EXPONENTIAL_HISTOGRAM)),
        (11, "summary", Message(&SUMMARY)),
        (12, "metadata[]", Message(&KEY_VALUE)),
    ],
};

pub static GAUGE: Msg = Msg {
    name: "Gauge",
    fields: &[(1, "data_points[]", Message(&NUMBER_DATA_POINT))],
};

pub static SUM: Msg = Msg {
    name: "Sum",
    fields: &[
        (1, "data_points[]", Message(&NUMBER_DATA_POINT)),
        (2, "aggregation_temporality", Varint),
        (3, "is_monotonic", Varint),
    ],
};

pub static HISTOGRAM: Msg = Msg {
    name: "Histogram",
    fields: &[
        (1, "data_points[]", Message(&HISTOGRAM_DATA_POINT)),
        (2, "aggregation_temporality", Varint),
    ],
};

pub static EXPONENTIAL_HISTOGRAM: Msg = Msg {
    name: "ExponentialHistogram",
    fields: &[
        (
            1,
            "data_points[]",
            Message(&EXPONENTIAL_HISTOGRAM_DATA_POINT),
        ),
        (2, "aggregation_temporality", Varint),
    ],
};

pub static SUMMARY: Msg = Msg {
    name: "Summary",
    fields: &[(1, "data_points[]", Message(&SUMMARY_DATA_POINT))],
};

pub static EXEMPLAR: Msg = Msg {
    name: "Exemplar",
    fields: &[
        (2, "time_unix_nano", I64),
        (3, "as_double", I64),
        (4, "span_id", Bytes),
        (5, "trace_id", Bytes),
        (6, "as_int", I64),
        (7, "filtered_attributes[]", Message(&KEY_VALUE)),
    ],
};

pub static NUMBER_DATA_POINT: Msg = Msg {
    name: "NumberDataPoint",
    fields: &[
        (2, "start_time_unix_nano", I64),
        (3, "time_unix_nano", I64),
        (4, "as_double", I64),
        (5, "exemplars[]", Message(&EXEMPLAR)),
        (6, "as_int", I64),
        (7, "attributes[]", Message(&KEY_VALUE)),
        (8, "flags", Varint),
    ],
};

pub static HISTOGRAM_DATA_POINT: Msg = Msg {
    name: "HistogramDataPoint",
    fields: &[
        (2, "start_time_unix_nano", I64),
        (3, "time_unix_nano", I64),
        (4, "count", I64),
        (5, "sum", I64),
        (6, "bucket_counts", RepeatedI64),
        (7, "explicit_bounds", RepeatedI64),
        (8, "exemplars[]", Message(&EXEMPLAR)),
        (9, "attributes[]", Message(&KEY_VALUE)),
        (10, "flags", Varint),
        (11, "min", I64),
        (12, "max", I64),
    ],
};

pub static EXPONENTIAL_HISTOGRAM_DATA_POINT: Msg = Msg {
    name: "ExponentialHistogramDataPoint",
    fields: &[
        (1, "attributes[]", Message(&KEY_VALUE)),
        (2, "start_time_unix_nano", I64),
        (3, "time_unix_nano", I64),
        (4, "count", I64),
        (5, "sum", I64),
        (6, "scale", Varint),
        (7, "zero_count", I64),
        (8, "positive", Message(&BUCKETS)),
        (9, "negative", Message(&BUCKETS)),
        (10, "flags", Varint),
        (11, "exemplars[]", Message(&EXEMPLAR)),
        (12, "min", I64),
        (13, "max", I64),
        (14, "zero_threshold", I64),
    ],
};

pub static BUCKETS: Msg = Msg {
    name: "ExponentialHistogramDataPoint.Buckets",
    fields: &[(1, "offset", Varint), (2, "bucket_counts", RepeatedVarint)],
};

pub static SUMMARY_DATA_POINT: Msg = Msg {
    name: "SummaryDataPoint",
    fields: &[
        (2, "start_time_unix_nano", I64),
        (3, "time_unix_nano", I64),
        (4, "count", I64),
        (5, "sum", I64),
        (6, "quantile_values[]", Message(&VALUE_AT_QUANTILE)),
        (7, "attributes[]", Message(&KEY_VALUE)),
        (8, "flags", Varint),
    ],
};

pub static VALUE_AT_QUANTILE: Msg = Msg {
    name: "SummaryDataPoint.ValueAtQuantile",
    fields: &[(1, "quantile", I64), (2, "value", I64)],
};
