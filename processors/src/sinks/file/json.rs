//! OTLP/JSON for traces, written by hand: exactly the bytes serde writes for
//! `ExportTraceServiceRequest` (opentelemetry-proto's `with-serde`), at a fraction of the cost.
//!
//! Draining a backlog into the file sink, serde's rendering of spans was a third of the
//! processor's CPU: every field name escaped like a value, every trace and span id and every
//! timestamp a `String` of its own, every attribute through serde's map machinery. Here field
//! names are literals, ids and numbers are written in place, and a string is copied whole when
//! it needs no escaping (checked eight bytes at a time). What is rare (a resource, a scope,
//! span events and links, attribute values other than strings, integers and booleans, strings
//! that need escaping) still goes through serde, so the two cannot drift
//! apart there; the tests hold the rest to serde's bytes.

use std::io;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

/// Appends `request` as serde_json would write it (no newline).
pub(crate) fn traces(out: &mut Vec<u8>, request: &ExportTraceServiceRequest) -> io::Result<()> {
    out.extend_from_slice(b"{\"resourceSpans\":[");
    for (i, resource_spans) in request.resource_spans.iter().enumerate() {
        comma(out, i);
        self::resource_spans(out, resource_spans)?;
    }
    out.extend_from_slice(b"]}");
    Ok(())
}

fn resource_spans(out: &mut Vec<u8>, r: &ResourceSpans) -> io::Result<()> {
    out.extend_from_slice(b"{\"resource\":");
    serde(out, &r.resource)?;
    out.extend_from_slice(b",\"scopeSpans\":[");
    for (i, scope_spans) in r.scope_spans.iter().enumerate() {
        comma(out, i);
        self::scope_spans(out, scope_spans)?;
    }
    out.extend_from_slice(b"],\"schemaUrl\":");
    string(out, &r.schema_url)?;
    out.push(b'}');
    Ok(())
}

fn scope_spans(out: &mut Vec<u8>, s: &ScopeSpans) -> io::Result<()> {
    out.extend_from_slice(b"{\"scope\":");
    serde(out, &s.scope)?;
    out.extend_from_slice(b",\"spans\":[");
    for (i, span) in s.spans.iter().enumerate() {
        comma(out, i);
        self::span(out, span)?;
    }
    out.extend_from_slice(b"],\"schemaUrl\":");
    string(out, &s.schema_url)?;
    out.push(b'}');
    Ok(())
}

fn span(out: &mut Vec<u8>, s: &Span) -> io::Result<()> {
    out.extend_from_slice(b"{\"traceId\":");
    hex(out, &s.trace_id);
    out.extend_from_slice(b",\"spanId\":");
    hex(out, &s.span_id);
    out.extend_from_slice(b",\"traceState\":");
    string(out, &s.trace_state)?;
    out.extend_from_slice(b",\"parentSpanId\":");
    hex(out, &s.parent_span_id);
    out.extend_from_slice(b",\"flags\":");
    number(out, s.flags);
    out.extend_from_slice(b",\"name\":");
    string(out, &s.name)?;
    out.extend_from_slice(b",\"kind\":");
    number(out, s.kind);
    out.extend_from_slice(b",\"startTimeUnixNano\":");
    quoted(out, s.start_time_unix_nano);
    out.extend_from_slice(b",\"endTimeUnixNano\":");
    quoted(out, s.end_time_unix_nano);
    out.extend_from_slice(b",\"attributes\":");
    attributes(out, &s.attributes)?;
    out.extend_from_slice(b",\"droppedAttributesCount\":");
    number(out, s.dropped_attributes_count);
    out.extend_from_slice(b",\"events\":");
    list(out, &s.events)?;
    out.extend_from_slice(b",\"droppedEventsCount\":");
    number(out, s.dropped_events_count);
    out.extend_from_slice(b",\"links\":");
    list(out, &s.links)?;
    out.extend_from_slice(b",\"droppedLinksCount\":");
    number(out, s.dropped_links_count);
    out.extend_from_slice(b",\"status\":");
    match &s.status {
        Some(status) => {
            out.extend_from_slice(b"{\"message\":");
            string(out, &status.message)?;
            out.extend_from_slice(b",\"code\":");
            number(out, status.code);
            out.push(b'}');
        }
        None => out.extend_from_slice(b"null"),
    }
    out.push(b'}');
    Ok(())
}

fn attributes(out: &mut Vec<u8>, attributes: &[KeyValue]) -> io::Result<()> {
    out.push(b'[');
    for (i, kv) in attributes.iter().enumerate() {
        comma(out, i);
        key_value(out, kv)?;
    }
    out.push(b']');
    Ok(())
}

fn key_value(out: &mut Vec<u8>, kv: &KeyValue) -> io::Result<()> {
    let value = kv.value.as_ref().and_then(|v| v.value.as_ref());
    let (tag, plain): (&[u8], _) = match value {
        Some(Value::StringValue(_)) => (b"stringValue", true),
        Some(Value::IntValue(_)) => (b"intValue", true),
        Some(Value::BoolValue(_)) => (b"boolValue", true),
        _ => (b"", false),
    };
    // `keyStrindex` is written only when set, and arrays, maps, bytes and doubles have
    // serde's own rules.
    if !plain || kv.key_strindex != 0 {
        return serde(out, kv);
    }
    out.extend_from_slice(b"{\"key\":");
    string(out, &kv.key)?;
    out.extend_from_slice(b",\"value\":{\"");
    out.extend_from_slice(tag);
    out.extend_from_slice(b"\":");
    match value {
        Some(Value::StringValue(s)) => string(out, s)?,
        Some(Value::IntValue(i)) => quoted(out, *i),
        Some(Value::BoolValue(b)) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        _ => unreachable!("only the plain kinds come here"),
    }
    out.extend_from_slice(b"}}");
    Ok(())
}

fn comma(out: &mut Vec<u8>, index: usize) {
    if index > 0 {
        out.push(b',');
    }
}

/// A list serde writes, `[]` without calling it when empty (as most spans' events and links).
fn list(out: &mut Vec<u8>, items: &[impl serde::Serialize]) -> io::Result<()> {
    if items.is_empty() {
        out.extend_from_slice(b"[]");
        return Ok(());
    }
    serde(out, items)
}

fn serde(out: &mut Vec<u8>, value: &(impl serde::Serialize + ?Sized)) -> io::Result<()> {
    serde_json::to_writer(&mut *out, value).map_err(io::Error::other)
}

fn number(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// An integer as a JSON string, as OTLP/JSON writes 64-bit integers.
fn quoted(out: &mut Vec<u8>, n: impl itoa::Integer) {
    out.push(b'"');
    number(out, n);
    out.push(b'"');
}

/// Lowercase hex, as opentelemetry-proto writes trace and span ids.
fn hex(out: &mut Vec<u8>, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    out.reserve(bytes.len() * 2 + 2);
    out.push(b'"');
    for b in bytes {
        out.push(DIGITS[(b >> 4) as usize]);
        out.push(DIGITS[(b & 0xf) as usize]);
    }
    out.push(b'"');
}

/// A JSON string: copied whole when nothing in it needs escaping, else escaped by serde_json.
fn string(out: &mut Vec<u8>, s: &str) -> io::Result<()> {
    if needs_escaping(s.as_bytes()) {
        return serde(out, s);
    }
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
    Ok(())
}

/// Whether `bytes` has a quote, a backslash or a control character (below 0x20): what JSON
/// escapes, and so what serde_json escapes.
fn needs_escaping(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::MAX / 255;
    const HIGH: u64 = ONES * 0x80;
    // Set in a byte's top bit when that byte is zero or, with `less`, below `n`: exact about
    // whether any byte is, which is all that is asked.
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let less = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGH;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let x = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        if less(x, 0x20) | zero(x ^ (ONES * b'"' as u64)) | zero(x ^ (ONES * b'\\' as u64)) != 0 {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::common::v1::{
        AnyValue, ArrayValue, InstrumentationScope, KeyValueList,
    };
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{span, Status};

    use super::*;

    fn kv(key: &str, value: Option<Value>) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value }),
            key_strindex: 0,
        }
    }

    fn same_as_serde(request: &ExportTraceServiceRequest) {
        let mut ours = Vec::new();
        traces(&mut ours, request).unwrap();
        let theirs = serde_json::to_vec(request).unwrap();
        assert_eq!(
            String::from_utf8(ours).unwrap(),
            String::from_utf8(theirs).unwrap()
        );
    }

    #[test]
    fn every_kind_of_field_is_written_as_serde_writes_it() {
        let attributes = vec![
            kv("s", Some(Value::StringValue("plain".into()))),
            kv(
                "esc",
                Some(Value::StringValue(
                    "q\" b\\ nl\n tab\t \u{1}\u{7f} é ∑".into(),
                )),
            ),
            kv("i", Some(Value::IntValue(-42))),
            kv("big", Some(Value::IntValue(i64::MIN))),
            kv("t", Some(Value::BoolValue(true))),
            kv("f", Some(Value::BoolValue(false))),
            kv("d", Some(Value::DoubleValue(1.5e300))),
            kv("nan", Some(Value::DoubleValue(f64::NAN))),
            kv("bytes", Some(Value::BytesValue(vec![0, 1, 255]))),
            kv("strindex", Some(Value::StringValueStrindex(3))),
            kv(
                "array",
                Some(Value::ArrayValue(ArrayValue {
                    values: vec![AnyValue {
                        value: Some(Value::IntValue(1)),
                    }],
                })),
            ),
            kv(
                "kvlist",
                Some(Value::KvlistValue(KeyValueList {
                    values: vec![kv("inner", Some(Value::StringValue("x".into())))],
                })),
            ),
            kv("empty", None),
            KeyValue {
                key: "no value".into(),
                value: None,
                key_strindex: 0,
            },
            KeyValue {
                key: "k\"ey".into(),
                value: Some(AnyValue {
                    value: Some(Value::StringValue("v".into())),
                }),
                key_strindex: 7,
            },
        ];
        let span = Span {
            trace_id: (0..16).collect(),
            span_id: vec![0xab; 8],
            trace_state: "a=b".into(),
            parent_span_id: Vec::new(),
            flags: 257,
            name: "GET /x/\"y\"".into(),
            kind: 2,
            start_time_unix_nano: u64::MAX,
            end_time_unix_nano: 0,
            attributes,
            dropped_attributes_count: 3,
            events: vec![span::Event {
                time_unix_nano: 5,
                name: "exception".into(),
                attributes: vec![kv("m", Some(Value::StringValue("boom".into())))],
                dropped_attributes_count: 1,
            }],
            dropped_events_count: 2,
            links: vec![span::Link {
                trace_id: vec![1; 16],
                span_id: vec![2; 8],
                trace_state: String::new(),
                attributes: Vec::new(),
                dropped_attributes_count: 0,
                flags: 1,
            }],
            dropped_links_count: 4,
            status: Some(Status {
                message: "bad\n".into(),
                code: 2,
            }),
        };
        let request = ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    resource: Some(Resource {
                        attributes: vec![kv("service.name", Some(Value::StringValue("a".into())))],
                        dropped_attributes_count: 0,
                        entity_refs: Vec::new(),
                    }),
                    scope_spans: vec![
                        ScopeSpans {
                            scope: Some(InstrumentationScope {
                                name: "lib".into(),
                                version: "1".into(),
                                attributes: Vec::new(),
                                dropped_attributes_count: 0,
                            }),
                            spans: vec![span.clone(), Span::default()],
                            schema_url: "https://x/\u{0}".into(),
                        },
                        ScopeSpans::default(),
                    ],
                    schema_url: "s".into(),
                },
                ResourceSpans::default(),
            ],
        };
        same_as_serde(&request);
        same_as_serde(&ExportTraceServiceRequest::default());
    }

    #[test]
    fn escaping_is_detected_wherever_it_falls() {
        for len in 0..20 {
            for at in 0..len {
                for bad in [b'"', b'\\', 0u8, 0x1f, b'\n'] {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = bad;
                    assert!(needs_escaping(&bytes), "{bytes:?}");
                }
                let mut fine = vec![b'a'; len];
                for ok in [b' ', 0x7f, 0x80, 0xff, b'!', b'#', b'[', b']'] {
                    fine[at] = ok;
                    assert!(!needs_escaping(&fine), "{fine:?}");
                }
            }
        }
    }
}
