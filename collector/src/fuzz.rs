//! Fuzz targets of the collector: everything a client can send it. Each target states what
//! must hold for any input, not only that nothing panics: the OTLP split agrees with prost on
//! arbitrary bytes, an event the collector accepts is one the bus can carry, an accepted X-Ray
//! datagram is one line of JSON.
//!
//! Run briefly by the test command and for as long as asked by `scripts/fuzz`.

#[path = "../../bus/src/fuzz/driver.rs"]
mod driver;

use std::collections::HashSet;
use std::time::SystemTime;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};
use proptest::prelude::*;
use prost::Message;
use serde_json::Value;
use tidewater_bus::partition_for_hash;
use tidewater_proto::depth::event_too_deep;
use tidewater_proto::events::v1::{Event, PublishRequest};
use xxhash_rust::xxh3::xxh3_128;

use crate::events::{from_json, from_protobuf, validate, Limits};
use crate::partition::{resource_hash, split_logs, split_metrics, split_traces, Split};
use crate::receiver::xray_udp::parse_datagram;
use crate::wire::WireError;
use driver::fuzz;

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..max)
}

/// A protobuf field as it may appear on the wire, valid or not, so random input gets past
/// the framing and into the schema checks far more often than random bytes do.
#[derive(Debug, Clone)]
enum Wire {
    Varint(u32, u64),
    I64(u32, u64),
    I32(u32, u32),
    Len(u32, Vec<u8>),
    Message(u32, Vec<Wire>),
    /// A key with any wire type (groups, the invalid 6 and 7), then raw bytes.
    Raw(u64, Vec<u8>),
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn encode_wire(fields: &[Wire], out: &mut Vec<u8>) {
    for field in fields {
        let key = |n: u32, wire_type: u64| (u64::from(n) << 3) | wire_type;
        match field {
            Wire::Varint(n, v) => {
                put_varint(out, key(*n, 0));
                put_varint(out, *v);
            }
            Wire::I64(n, v) => {
                put_varint(out, key(*n, 1));
                out.extend_from_slice(&v.to_le_bytes());
            }
            Wire::I32(n, v) => {
                put_varint(out, key(*n, 5));
                out.extend_from_slice(&v.to_le_bytes());
            }
            Wire::Len(n, b) => {
                put_varint(out, key(*n, 2));
                put_varint(out, b.len() as u64);
                out.extend_from_slice(b);
            }
            Wire::Message(n, inner) => {
                let mut body = Vec::new();
                encode_wire(inner, &mut body);
                put_varint(out, key(*n, 2));
                put_varint(out, body.len() as u64);
                out.extend_from_slice(&body);
            }
            Wire::Raw(k, b) => {
                put_varint(out, *k);
                out.extend_from_slice(b);
            }
        }
    }
}

fn field_number() -> impl Strategy<Value = u32> {
    // OTLP's fields are 1 to 17; the rest are unknown fields, or the invalid 0.
    prop_oneof![
        12 => 1u32..=17,
        1 => 18u32..=100_000,
        1 => Just(0u32),
        1 => Just(u32::MAX >> 3),
    ]
}

fn wire_message() -> BoxedStrategy<Vec<Wire>> {
    let len_bytes = prop_oneof![
        bytes(24),
        Just(vec![7u8; 16]),
        Just(vec![9u8; 8]),
        ".{0,6}".prop_map(String::into_bytes),
    ];
    let leaf = prop_oneof![
        1 => (field_number(), any::<u64>()).prop_map(|(n, v)| Wire::Varint(n, v)),
        1 => (field_number(), any::<u64>()).prop_map(|(n, v)| Wire::I64(n, v)),
        1 => (field_number(), any::<u32>()).prop_map(|(n, v)| Wire::I32(n, v)),
        4 => (field_number(), len_bytes).prop_map(|(n, b)| Wire::Len(n, b)),
        1 => (any::<u64>(), bytes(6)).prop_map(|(k, b)| Wire::Raw(k % 4096, b)),
    ];
    let field = leaf.prop_recursive(7, 96, 6, |inner| {
        (field_number(), prop::collection::vec(inner, 0..6)).prop_map(|(n, f)| Wire::Message(n, f))
    });
    prop::collection::vec(field, 0..6).boxed()
}

/// `levels` nested arrays in a span attribute: over the split's 64 levels and, further, over
/// prost's 100, so both limits are met from either side.
fn deep_span(levels: usize) -> Vec<u8> {
    let mut value = AnyValue {
        value: Some(any_value::Value::IntValue(1)),
    };
    for _ in 0..levels {
        value = AnyValue {
            value: Some(any_value::Value::ArrayValue(ArrayValue {
                values: vec![value],
            })),
        };
    }
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![Span {
                    trace_id: vec![1; 16],
                    span_id: vec![2; 8],
                    attributes: vec![KeyValue {
                        key: "deep".into(),
                        value: Some(value),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

/// Damages bytes as a buggy client or a bad network would: a changed, dropped or added byte,
/// or a cut.
fn mutated(input: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let edit = (0u8..4, any::<prop::sample::Index>(), any::<u8>());
    (input, prop::collection::vec(edit, 1..4)).prop_map(|(mut b, edits)| {
        for (op, at, x) in edits {
            let at = at.index(b.len() + 1);
            match op {
                0 if at < b.len() => b[at] ^= x.max(1),
                1 if at < b.len() => {
                    b.remove(at);
                }
                2 => b.insert(at, x),
                _ => b.truncate(at),
            }
        }
        b
    })
}

/// Encoded random protobuf trees.
fn wire_bytes() -> BoxedStrategy<Vec<u8>> {
    wire_message()
        .prop_map(|m| {
            let mut out = Vec::new();
            encode_wire(&m, &mut out);
            out
        })
        .boxed()
}

fn otlp_bytes(valid: BoxedStrategy<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let tree = wire_bytes();
    prop_oneof![
        1 => bytes(256),
        3 => tree.clone(),
        2 => mutated(tree),
        2 => valid.clone(),
        2 => mutated(valid),
        1 => (30usize..70).prop_map(deep_span),
    ]
}

/// The split is stricter than prost on two documented points only: groups in unknown fields,
/// and nesting deeper than the schema's limit.
fn documented_stricter(e: &WireError) -> bool {
    let e = e.to_string();
    e.contains("groups") || e.contains("nest deeper")
}

/// What every signal's split must satisfy on any bytes: refuse only what prost refuses (or
/// the documented stricter cases), accept what prost refuses only by refusing items alone,
/// and produce parts that decode, one per partition, counting what they hold.
fn agrees_with_prost<M: Message + Default>(
    bytes: &[u8],
    partitions: u32,
    split: fn(&[u8], u32) -> Result<Split, WireError>,
) -> Result<Option<(M, Split, Vec<M>)>, TestCaseError> {
    let whole = M::decode(bytes);
    let split = match split(bytes, partitions) {
        Ok(split) => split,
        Err(e) => {
            prop_assert!(
                whole.is_err() || documented_stricter(&e),
                "refused what prost decodes: {}",
                e
            );
            return Ok(None);
        }
    };
    prop_assert!(
        whole.is_ok() || split.rejected.count > 0,
        "accepted what prost refuses ({:?}) without refusing an item",
        whole.as_ref().err()
    );
    prop_assert!(split.rejected.count <= split.received);
    let mut seen = HashSet::new();
    let mut parts = Vec::new();
    for part in &split.parts {
        prop_assert!(part.partition < partitions);
        prop_assert!(seen.insert(part.partition), "two parts for one partition");
        match M::decode(&part.body[..]) {
            Ok(m) => parts.push(m),
            Err(e) => return Err(TestCaseError::fail(format!("a part does not decode: {e}"))),
        }
    }
    Ok(whole.ok().map(|whole| (whole, split, parts)))
}

fn valid_span(s: &Span) -> bool {
    let valid = |id: &[u8], len| id.len() == len && id.iter().any(|b| *b != 0);
    valid(&s.trace_id, 16) && valid(&s.span_id, 8)
}

/// One span with its resource and scope, encoded, so spans compare whatever their floats.
fn span_in_context(r: &ResourceSpans, s: &ScopeSpans, span: &Span) -> Vec<u8> {
    ResourceSpans {
        resource: r.resource.clone(),
        schema_url: r.schema_url.clone(),
        scope_spans: vec![ScopeSpans {
            scope: s.scope.clone(),
            schema_url: s.schema_url.clone(),
            spans: vec![span.clone()],
        }],
    }
    .encode_to_vec()
}

/// Every valid span of `request` is in exactly one part, with its resource and scope, on its
/// trace's partition; every invalid one is refused; nothing else is in the parts.
fn spans_kept_exactly(
    request: &ExportTraceServiceRequest,
    split: &Split,
    parts: &[ExportTraceServiceRequest],
    partitions: u32,
) -> Result<(), TestCaseError> {
    let mut want = Vec::new();
    let (mut received, mut invalid) = (0u64, 0u64);
    for r in &request.resource_spans {
        for s in &r.scope_spans {
            for span in &s.spans {
                received += 1;
                if valid_span(span) {
                    want.push(span_in_context(r, s, span));
                } else {
                    invalid += 1;
                }
            }
        }
    }
    prop_assert_eq!(split.received, received);
    let mut got = Vec::new();
    for (part, decoded) in split.parts.iter().zip(parts) {
        let mut items = 0;
        for r in &decoded.resource_spans {
            for s in &r.scope_spans {
                for span in &s.spans {
                    items += 1;
                    let p = partition_for_hash(xxh3_128(&span.trace_id), partitions);
                    prop_assert_eq!(p, part.partition, "span on another trace's partition");
                    got.push(span_in_context(r, s, span));
                }
            }
        }
        prop_assert_eq!(items, part.items);
    }
    if split.rejected.count == invalid {
        want.sort();
        got.sort();
        prop_assert!(got == want, "kept spans differ from the valid spans");
    } else {
        // Some valid-looking span was refused for what is inside it (nesting, groups).
        prop_assert!(split.rejected.count > invalid);
        prop_assert_eq!(got.len() as u64 + split.rejected.count, received);
    }
    Ok(())
}

#[test]
fn otlp_traces_split_agrees_with_prost() {
    let valid = traces_request().prop_map(|r| r.encode_to_vec()).boxed();
    fuzz(
        "otlp_traces_split_agrees_with_prost",
        (otlp_bytes(valid), 1u32..9),
        |(bytes, n)| {
            if let Some((whole, split, parts)) =
                agrees_with_prost::<ExportTraceServiceRequest>(&bytes, n, split_traces)?
            {
                spans_kept_exactly(&whole, &split, &parts, n)?;
            }
            Ok(())
        },
    );
}

/// Metrics and logs go where their resource does.
fn on_resource_partition(
    resources: impl Iterator<Item = Option<Resource>>,
    partition: u32,
    partitions: u32,
) -> Result<(), TestCaseError> {
    for resource in resources {
        let p = partition_for_hash(resource_hash(resource.as_ref()), partitions);
        prop_assert_eq!(p, partition, "on another resource's partition");
    }
    Ok(())
}

#[test]
fn otlp_metrics_split_agrees_with_prost() {
    let valid = Just(metrics_request().encode_to_vec()).boxed();
    fuzz(
        "otlp_metrics_split_agrees_with_prost",
        (otlp_bytes(valid), 1u32..9),
        |(bytes, n)| {
            if let Some((_, split, parts)) =
                agrees_with_prost::<ExportMetricsServiceRequest>(&bytes, n, split_metrics)?
            {
                for (part, decoded) in split.parts.iter().zip(&parts) {
                    let resources = decoded.resource_metrics.iter().map(|r| r.resource.clone());
                    on_resource_partition(resources, part.partition, n)?;
                }
            }
            Ok(())
        },
    );
}

#[test]
fn otlp_logs_split_agrees_with_prost() {
    let valid = Just(logs_request().encode_to_vec()).boxed();
    fuzz(
        "otlp_logs_split_agrees_with_prost",
        (otlp_bytes(valid), 1u32..9),
        |(bytes, n)| {
            if let Some((whole, split, parts)) =
                agrees_with_prost::<ExportLogsServiceRequest>(&bytes, n, split_logs)?
            {
                let records = |r: &ExportLogsServiceRequest| -> u64 {
                    r.resource_logs
                        .iter()
                        .flat_map(|r| &r.scope_logs)
                        .map(|s| s.log_records.len() as u64)
                        .sum()
                };
                prop_assert_eq!(split.received, records(&whole));
                let kept: u64 = parts.iter().map(records).sum();
                prop_assert_eq!(kept + split.rejected.count, split.received);
                for (part, decoded) in split.parts.iter().zip(&parts) {
                    prop_assert_eq!(u64::from(part.items), records(decoded));
                    let resources = decoded.resource_logs.iter().map(|r| r.resource.clone());
                    on_resource_partition(resources, part.partition, n)?;
                }
            }
            Ok(())
        },
    );
}

/// Structured requests: every kept span is in exactly one part, and nothing valid is lost.
#[test]
fn otlp_traces_split_keeps_every_valid_span_once() {
    fuzz(
        "otlp_traces_split_keeps_every_valid_span_once",
        (traces_request(), 1u32..9),
        |(request, n)| {
            let bytes = request.encode_to_vec();
            let split = split_traces(&bytes, n)
                .map_err(|e| TestCaseError::fail(format!("a valid request refused: {e}")))?;
            let mut parts = Vec::new();
            for part in &split.parts {
                parts.push(
                    ExportTraceServiceRequest::decode(&part.body[..])
                        .map_err(|e| TestCaseError::fail(format!("part: {e}")))?,
                );
            }
            spans_kept_exactly(&request, &split, &parts, n)
        },
    );
}

fn any_value() -> BoxedStrategy<AnyValue> {
    use any_value::Value as V;
    let leaf = prop_oneof![
        ".{0,8}".prop_map(V::StringValue),
        any::<bool>().prop_map(V::BoolValue),
        any::<i64>().prop_map(V::IntValue),
        any::<f64>().prop_map(V::DoubleValue),
        bytes(8).prop_map(V::BytesValue),
    ]
    .prop_map(|v| AnyValue { value: Some(v) });
    let leaf = prop_oneof![8 => leaf, 1 => Just(AnyValue { value: None })];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|values| AnyValue {
                value: Some(V::ArrayValue(ArrayValue { values })),
            }),
            prop::collection::vec(("[a-z.]{0,6}", inner), 0..4).prop_map(|kvs| AnyValue {
                value: Some(V::KvlistValue(KeyValueList {
                    values: kvs
                        .into_iter()
                        .map(|(key, value)| KeyValue {
                            key,
                            value: Some(value),
                            ..Default::default()
                        })
                        .collect(),
                })),
            }),
        ]
    })
    .boxed()
}

fn attributes() -> BoxedStrategy<Vec<KeyValue>> {
    let kv = ("[a-z.]{0,10}", prop::option::of(any_value())).prop_map(|(key, value)| KeyValue {
        key,
        value,
        ..Default::default()
    });
    prop::collection::vec(kv, 0..3).boxed()
}

fn span() -> impl Strategy<Value = Span> {
    // A few shared trace ids, so spans of one trace meet in one part; sometimes a bad one.
    let trace_id = prop_oneof![
        6 => (0u8..4).prop_map(|b| {
            let mut id = vec![0x5a; 16];
            id[0] = b;
            id
        }),
        1 => prop::array::uniform16(any::<u8>()).prop_map(|a| a.to_vec()),
        1 => Just(vec![0; 16]),
        1 => bytes(20),
    ];
    let span_id = prop_oneof![
        8 => prop::array::uniform8(1u8..).prop_map(|a| a.to_vec()),
        1 => Just(vec![0; 8]),
        1 => bytes(10),
    ];
    let event =
        (".{0,6}", any::<u64>(), attributes()).prop_map(|(name, t, attributes)| span::Event {
            name,
            time_unix_nano: t,
            attributes,
            ..Default::default()
        });
    let link = (bytes(17), bytes(9), attributes(), any::<u32>()).prop_map(
        |(trace_id, span_id, attributes, flags)| span::Link {
            trace_id,
            span_id,
            attributes,
            flags,
            ..Default::default()
        },
    );
    let status =
        prop::option::of((".{0,6}", 0i32..4).prop_map(|(message, code)| Status { message, code }));
    (
        (trace_id, span_id, bytes(9), ".{0,8}", ".{0,8}"),
        (any::<i32>(), any::<u64>(), any::<u64>(), any::<u32>()),
        (
            attributes(),
            prop::collection::vec(event, 0..2),
            prop::collection::vec(link, 0..2),
            status,
        ),
    )
        .prop_map(
            |(
                (trace_id, span_id, parent_span_id, name, trace_state),
                (kind, start, end, flags),
                (attributes, events, links, status),
            )| Span {
                trace_id,
                span_id,
                parent_span_id,
                name,
                trace_state,
                kind,
                start_time_unix_nano: start,
                end_time_unix_nano: end,
                flags,
                attributes,
                events,
                links,
                status,
                ..Default::default()
            },
        )
}

fn traces_request() -> BoxedStrategy<ExportTraceServiceRequest> {
    let scope = prop::option::of((".{0,6}", ".{0,4}", attributes()).prop_map(
        |(name, version, attributes)| InstrumentationScope {
            name,
            version,
            attributes,
            ..Default::default()
        },
    ));
    let scope_spans = (scope, prop::collection::vec(span(), 0..5), ".{0,6}").prop_map(
        |(scope, spans, schema_url)| ScopeSpans {
            scope,
            spans,
            schema_url,
        },
    );
    let resource = prop::option::of(attributes().prop_map(|attributes| Resource {
        attributes,
        ..Default::default()
    }));
    let resource_spans = (resource, prop::collection::vec(scope_spans, 0..3), ".{0,6}").prop_map(
        |(resource, scope_spans, schema_url)| ResourceSpans {
            resource,
            scope_spans,
            schema_url,
        },
    );
    prop::collection::vec(resource_spans, 0..4)
        .prop_map(|resource_spans| ExportTraceServiceRequest { resource_spans })
        .boxed()
}

/// Every kind of metric, for mutation.
fn metrics_request() -> ExportMetricsServiceRequest {
    use opentelemetry_proto::tonic::metrics::v1::*;
    let attributes = vec![KeyValue {
        key: "k".into(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue("v".into())),
        }),
        ..Default::default()
    }];
    let number = NumberDataPoint {
        attributes: attributes.clone(),
        time_unix_nano: 5,
        value: Some(number_data_point::Value::AsInt(3)),
        ..Default::default()
    };
    let metric = |name: &str, data| Metric {
        name: name.into(),
        data: Some(data),
        ..Default::default()
    };
    let metrics = vec![
        metric(
            "g",
            metric::Data::Gauge(Gauge {
                data_points: vec![number.clone(), number.clone()],
            }),
        ),
        metric(
            "s",
            metric::Data::Sum(Sum {
                data_points: vec![number],
                aggregation_temporality: 2,
                is_monotonic: true,
            }),
        ),
        metric(
            "h",
            metric::Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    count: 3,
                    bucket_counts: vec![1, 2],
                    explicit_bounds: vec![1.0],
                    ..Default::default()
                }],
                aggregation_temporality: 1,
            }),
        ),
        metric(
            "e",
            metric::Data::ExponentialHistogram(ExponentialHistogram {
                data_points: vec![ExponentialHistogramDataPoint {
                    scale: 2,
                    count: 1,
                    positive: Some(exponential_histogram_data_point::Buckets {
                        offset: -1,
                        bucket_counts: vec![1],
                    }),
                    ..Default::default()
                }],
                aggregation_temporality: 2,
            }),
        ),
        metric(
            "q",
            metric::Data::Summary(Summary {
                data_points: vec![SummaryDataPoint {
                    count: 1,
                    quantile_values: vec![summary_data_point::ValueAtQuantile {
                        quantile: 0.5,
                        value: 1.0,
                    }],
                    ..Default::default()
                }],
            }),
        ),
    ];
    ExportMetricsServiceRequest {
        resource_metrics: ["a", "b"]
            .iter()
            .map(|service| ResourceMetrics {
                resource: Some(Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(service.to_string())),
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                scope_metrics: vec![ScopeMetrics {
                    metrics: metrics.clone(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

/// Log records with and without trace context, for mutation.
fn logs_request() -> ExportLogsServiceRequest {
    use opentelemetry_proto::tonic::logs::v1::*;
    let record = |i: u8| LogRecord {
        time_unix_nano: u64::from(i),
        severity_number: 9,
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(format!("line {i}"))),
        }),
        trace_id: if i.is_multiple_of(2) {
            vec![i + 1; 16]
        } else {
            vec![]
        },
        span_id: if i.is_multiple_of(2) {
            vec![i + 1; 8]
        } else {
            vec![]
        },
        ..Default::default()
    };
    ExportLogsServiceRequest {
        resource_logs: ["a", "b"]
            .iter()
            .map(|service| ResourceLogs {
                resource: Some(Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(service.to_string())),
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                scope_logs: vec![ScopeLogs {
                    log_records: (0..4).map(record).collect(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

fn json_value() -> BoxedStrategy<Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        ".{0,10}".prop_map(Value::String),
    ];
    leaf.prop_recursive(5, 40, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::Array),
            prop::collection::btree_map(".{0,5}", inner, 0..5)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
    .boxed()
}

/// Objects and arrays nested `levels` deep (a 1 bit in `shape` is an array level), around the
/// depth where the bus's protobuf decoding stops.
fn deep_json() -> impl Strategy<Value = Value> {
    (0usize..48, any::<u64>(), json_value()).prop_map(|(levels, shape, mut v)| {
        for level in 0..levels {
            v = if (shape >> (level % 64)) & 1 == 1 {
                Value::Array(vec![v])
            } else {
                Value::Object([("k".to_string(), v)].into_iter().collect())
            };
        }
        Value::Object([("p".to_string(), v)].into_iter().collect())
    })
}

/// Timestamps as clients write them, and as they should not.
fn timestamp_json() -> impl Strategy<Value = Value> {
    let rfc3339 = (
        (1900u32..2200, 0u32..14, 0u32..33),
        (0u32..25, 0u32..61, 0u32..62),
        prop::option::of(0u32..1_000_000_000),
        prop::sample::select(vec!["Z", "+00:00", "-11:30", "+14:00", "", "z"]),
    )
        .prop_map(|((y, mo, d), (h, mi, s), frac, zone)| {
            let frac = frac.map_or(String::new(), |f| format!(".{f:09}"));
            Value::String(format!(
                "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}{zone}"
            ))
        });
    let now_ms = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    prop_oneof![
        rfc3339,
        any::<i64>().prop_map(Value::from),
        (-200_000_000_000i64..200_000_000_000).prop_map(move |d| Value::from(now_ms + d)),
        json_value(),
    ]
}

fn id_json() -> impl Strategy<Value = Value> {
    prop_oneof![
        6 => ".{0,12}".prop_map(Value::String),
        1 => "[a-z]{250,260}".prop_map(Value::String),
        1 => Just(Value::String(" \t".into())),
        1 => json_value(),
    ]
}

/// Event objects with the known fields (either spelling) given sensible or hostile values,
/// sometimes an unknown field, sometimes not an object at all.
fn event_json() -> impl Strategy<Value = Value> {
    let object = prop_oneof![deep_json(), json_value()].boxed();
    let fields = (
        (
            prop::option::of((
                prop::sample::select(vec!["message_id", "messageId"]),
                id_json(),
            )),
            prop::option::of((prop::sample::select(vec!["name", "event"]), id_json())),
            prop::option::of((prop::sample::select(vec!["user_id", "userId"]), id_json())),
            prop::option::of((
                prop::sample::select(vec!["anonymous_id", "anonymousId"]),
                id_json(),
            )),
        ),
        (
            prop::option::of(timestamp_json()),
            prop::option::of(object.clone()),
            prop::option::of(object),
            prop::option::of((
                prop::sample::select(vec!["received_at", "receivedAt", "unknown"]),
                json_value(),
            )),
        ),
    );
    let event = fields.prop_map(|((m, n, u, a), (t, p, c, x))| {
        let named = [("timestamp", t), ("properties", p), ("context", c)];
        let named = named.into_iter().filter_map(|(k, v)| Some((k, v?)));
        let fields = [m, n, u, a, x].into_iter().flatten().chain(named);
        Value::Object(fields.map(|(k, v)| (k.to_string(), v)).collect())
    });
    prop_oneof![8 => event, 1 => json_value()]
}

/// `max_event_size`: the default, or small enough to refuse some.
fn max_event_size() -> impl Strategy<Value = usize> {
    prop_oneof![Just(64usize << 10), 64usize..4096]
}

/// The "one definition of valid": an event is refused as too deep exactly when prost cannot
/// decode it on the bus, and every event `validate` accepts decodes there unchanged.
fn bus_carries(raw: &Event, max_event_size: usize) -> Result<(), TestCaseError> {
    let alone = PublishRequest {
        events: vec![raw.clone()],
    }
    .encode_to_vec();
    prop_assert_eq!(
        event_too_deep(raw).is_none(),
        PublishRequest::decode(&alone[..]).is_ok(),
        "the depth rule and prost disagree"
    );
    let limits = Limits { max_event_size };
    if let Ok(event) = validate(raw.clone(), 0, SystemTime::now(), &limits) {
        prop_assert!(!event.name.trim().is_empty());
        prop_assert!(!event.user_id.is_empty() || !event.anonymous_id.is_empty());
        prop_assert!(!event.message_id.is_empty() && event.received_at.is_some());
        let ts = event.timestamp.expect("validate sets a timestamp");
        prop_assert!(ts.seconds >= 0 && (0..1_000_000_000).contains(&ts.nanos));
        let encoded = PublishRequest {
            events: vec![event],
        }
        .encode_to_vec();
        match PublishRequest::decode(&encoded[..]) {
            Ok(decoded) => prop_assert_eq!(decoded.encode_to_vec(), encoded),
            Err(e) => {
                return Err(TestCaseError::fail(format!(
                    "accepted, then undecodable: {e}"
                )))
            }
        }
    }
    Ok(())
}

#[test]
fn events_json_accepted_means_decodable() {
    fuzz(
        "events_json_accepted_means_decodable",
        (event_json(), max_event_size()),
        |(json, max_size)| {
            if let Ok(raw) = from_json(&json, 3) {
                bus_carries(&raw, max_size)?;
            }
            Ok(())
        },
    );
}

#[test]
fn events_protobuf_agrees_with_prost() {
    let encoded_events = prop::collection::vec(event_json(), 0..4).prop_map(|values| {
        PublishRequest {
            events: values.iter().filter_map(|v| from_json(v, 0).ok()).collect(),
        }
        .encode_to_vec()
    });
    let encoded_events = encoded_events.boxed();
    let tree = wire_bytes();
    let input = prop_oneof![
        bytes(256),
        tree.clone(),
        mutated(tree),
        encoded_events.clone(),
        mutated(encoded_events),
    ];
    fuzz(
        "events_protobuf_agrees_with_prost",
        (input, max_event_size()),
        |(bytes, max_size)| {
            let whole = PublishRequest::decode(&bytes[..]);
            let events = match from_protobuf(&bytes) {
                Ok(events) => events,
                Err(e) => {
                    prop_assert!(
                        whole.is_err() || e.to_string().contains("groups"),
                        "refused what prost decodes: {}",
                        e
                    );
                    return Ok(());
                }
            };
            if let Ok(whole) = &whole {
                prop_assert_eq!(events.len(), whole.events.len());
                for (got, want) in events.iter().zip(&whole.events) {
                    match got {
                        Ok(got) => prop_assert_eq!(got.encode_to_vec(), want.encode_to_vec()),
                        Err(r) => {
                            return Err(TestCaseError::fail(format!(
                                "event refused that prost decodes: {}",
                                r.reason
                            )))
                        }
                    }
                }
            }
            for event in events.into_iter().flatten() {
                bus_carries(&event, max_size)?;
            }
            Ok(())
        },
    );
}

/// Segment documents as the X-Ray SDKs send them, and as a broken or hostile one might.
fn xray_datagram() -> impl Strategy<Value = Text> {
    let header = prop_oneof![
        6 => Just(r#"{"format":"json","version":1}"#.to_string()),
        1 => Just(r#"{ "version" : 1, "format" : "json" }"#.to_string()),
        1 => Just(r#"["json",1]"#.to_string()),
        1 => Just(r#"{"format":"json","version":2}"#.to_string()),
        1 => ".{0,12}",
    ];
    let scalar = prop_oneof![
        6 => "[0-9a-f-]{0,24}".prop_map(Value::String),
        1 => Just(Value::String(String::new())),
        1 => json_value(),
    ];
    let doc_fields = (
        prop::option::of(scalar.clone()),
        prop::option::of(scalar.clone()),
        prop::option::of(scalar),
        prop::option::of(prop_oneof![
            Just(Value::String("subsegment".into())),
            json_value()
        ]),
        prop::option::of(json_value()),
    );
    let doc = doc_fields.prop_map(|(id, trace_id, parent_id, kind, extra)| {
        let fields = [
            ("id", id),
            ("trace_id", trace_id),
            ("parent_id", parent_id),
            ("type", kind),
            ("annotations", extra),
        ];
        let fields = fields
            .into_iter()
            .filter_map(|(k, v)| Some((k.to_string(), v?)));
        Value::Object(fields.collect())
    });
    // The document as compact, pretty (raw line breaks between tokens, CRLF too), an array
    // of its values (serde's derive reads a struct from a sequence), or cut short.
    let body =
        (doc, 0u8..6, any::<prop::sample::Index>()).prop_map(|(doc, style, cut)| match style {
            0 | 1 => doc.to_string(),
            2 => serde_json::to_string_pretty(&doc).unwrap(),
            3 => serde_json::to_string_pretty(&doc)
                .unwrap()
                .replace('\n', "\r\n"),
            4 => {
                let values = ["id", "trace_id", "parent_id", "type"]
                    .iter()
                    .map(|k| doc.get(*k).cloned().unwrap_or(Value::Null))
                    .collect();
                Value::Array(values).to_string()
            }
            _ => {
                let s = doc.to_string();
                let at = cut.index(s.len() + 1);
                String::from_utf8_lossy(&s.as_bytes()[..at]).into_owned()
            }
        });
    let near_valid = (
        header,
        prop::sample::select(vec!["\n", "\r\n", " \n\n"]),
        body,
    )
        .prop_map(|(h, nl, b)| format!("{h}{nl}{b}").into_bytes())
        .boxed();
    prop_oneof![1 => bytes(128), 6 => near_valid.clone(), 2 => mutated(near_valid)].prop_map(Text)
}

/// Bytes shown as text in a failure report, since datagrams are mostly text.
#[derive(Clone)]
struct Text(Vec<u8>);

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

/// An accepted datagram is one line holding one JSON object with the ids it was keyed by.
#[test]
fn xray_datagram_accepted_is_one_json_line() {
    fuzz(
        "xray_datagram_accepted_is_one_json_line",
        xray_datagram(),
        |Text(data)| {
            let Ok(segment) = parse_datagram(&data) else {
                return Ok(());
            };
            let doc = &segment.document;
            prop_assert!(
                !doc.contains('\n') && !doc.contains('\r'),
                "not one line: {:?}",
                doc
            );
            // JSON's grammar, not serde_json's number range: a number past f64 in a field the
            // collector does not read is still JSON, and passes through as the SDK sent it.
            serde_json::from_str::<serde::de::IgnoredAny>(doc)
                .map_err(|e| TestCaseError::fail(format!("not JSON ({e}): {doc:?}")))?;
            prop_assert!(doc.starts_with('{'), "not an object: {}", doc);
            #[derive(serde::Deserialize)]
            struct Ids {
                id: String,
                trace_id: String,
            }
            let ids: Ids = serde_json::from_str(doc)
                .map_err(|e| TestCaseError::fail(format!("no string ids ({e}): {doc:?}")))?;
            prop_assert_eq!(ids.trace_id, segment.trace_id);
            prop_assert!(!ids.id.is_empty());
            Ok(())
        },
    );
}

/// Met by `xray_datagram_accepted_is_one_json_line` (a false alarm of its first version,
/// which read the document as a `serde_json::Value`): a number past f64's range is JSON and
/// must not get a document refused for a field the collector does not read.
#[test]
fn regression_xray_number_past_f64_passes_through() {
    let datagram =
        b"{\"format\":\"json\",\"version\":1}\n{\"a\":[-1e309],\"id\":\"0\",\"trace_id\":\"t\"}";
    let segment = parse_datagram(datagram).unwrap();
    assert_eq!(
        segment.document,
        "{\"a\":[-1e309],\"id\":\"0\",\"trace_id\":\"t\"}"
    );
}

/// Found by `xray_datagram_accepted_is_one_json_line`: serde's derive read the document's
/// fields from an array, so `["0","",null,null]` was taken and sent on as a segment document.
#[test]
fn regression_xray_array_document_is_refused() {
    let datagram = b"{\"format\":\"json\",\"version\":1}\n[\"0\",\"\",null,null]";
    assert!(parse_datagram(datagram).is_err());
    let object = b"{\"format\":\"json\",\"version\":1}\n \r\n{\"id\":\"0\",\"trace_id\":\"\"}";
    assert!(parse_datagram(object).is_ok());
}

/// Found by `events_protobuf_agrees_with_prost`: a `Struct` field whose value has no kind is
/// left out of its map entry by prost, so it adds no level; the depth rule counted one and
/// refused events at the limit that the bus decodes.
#[test]
fn regression_kindless_struct_value_adds_no_level() {
    use prost_types::{value::Kind, Struct, Value as Pv};
    let object = |inner: Pv| Pv {
        kind: Some(Kind::StructValue(Struct {
            fields: [("k".to_string(), inner)].into(),
        })),
    };
    let list = |inner: Pv| Pv {
        kind: Some(Kind::ListValue(prost_types::ListValue {
            values: vec![inner],
        })),
    };
    // Objects nest three levels at a time and lists two: a list or two more reaches every
    // depth, the limit itself among them.
    let mut saw_both = (false, false);
    for (levels, lists) in (25..40).flat_map(|l| (0..3).map(move |n| (l, n))) {
        let innermost = object(Pv { kind: None });
        let value = (0..lists).fold(innermost, |v, _| list(v));
        let value = (0..levels).fold(value, |v, _| object(v));
        let Some(Kind::StructValue(properties)) = value.kind else {
            unreachable!()
        };
        let event = Event {
            name: "x".into(),
            user_id: "u".into(),
            properties: Some(properties),
            ..Default::default()
        };
        let bytes = PublishRequest {
            events: vec![event.clone()],
        }
        .encode_to_vec();
        let decodes = PublishRequest::decode(&bytes[..]).is_ok();
        let rule = event_too_deep(&event).is_none();
        assert_eq!(rule, decodes, "{levels} objects, {lists} lists");
        saw_both = (saw_both.0 || decodes, saw_both.1 || !decodes);
    }
    assert_eq!(saw_both, (true, true));
}
