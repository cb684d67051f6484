//! Splitting OTLP requests by partition on their protobuf bytes.
//!
//! Traces, metrics and logs share one shape: request → `resource_*` (resource, scopes,
//! schema url) → `scope_*` (scope, items, schema url) → items. A split walks it once, checks
//! every byte it keeps against the schema ([`crate::wire::schema`]), asks the signal's
//! inspector where each item goes and whether it is valid, then writes each partition's
//! share as `resource_*` fields that copy the resource and scope fields verbatim around the
//! items bound there. Items are never decoded, only their few fields that matter here.

use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use tidewater_bus::partition_for_hash;
use xxhash_rust::xxh3::xxh3_128;

use super::{resource_hash, Part, Rejected};
use crate::wire::schema::{self, Msg};
use crate::wire::{nested_len, put_nested, Field, Fields, Value, WireError};

/// What a request held, split by partition.
#[derive(Debug)]
pub struct Split {
    pub parts: Vec<Part>,
    /// Items in the request, accepted or not (a metric without data counts as one).
    pub received: u64,
    pub rejected: Rejected,
}

/// What an inspector says of one item.
struct Item {
    /// Items it counts as when accepted (data points for a metric).
    count: u32,
    /// Items it counts as when received.
    received: u32,
    /// Where it goes (its own key's hash, or `None` for its resource's), or why not.
    verdict: Result<Option<u128>, String>,
}

/// Field names of one signal's tree, and its item inspector.
struct Shape {
    resources: &'static str,
    scopes: &'static str,
    items: &'static str,
    inspect: fn(&[u8]) -> Result<Item, WireError>,
}

// Field numbers shared by the three signals' `resource_*` and `scope_*` messages: the
// resource or scope, the children (scopes or items), the schema url.
const HEAD: u32 = 1;
const CHILDREN: u32 = 2;
const SCHEMA_URL: u32 = 3;

/// A kept item's partition until its resource's is known.
const THE_RESOURCES: u32 = u32::MAX;

pub fn split_traces(request: &[u8], partitions: u32) -> Result<Split, WireError> {
    split(
        request,
        partitions,
        &Shape {
            resources: "resource_spans",
            scopes: "scope_spans",
            items: "spans",
            inspect: inspect_span,
        },
    )
}

pub fn split_metrics(request: &[u8], partitions: u32) -> Result<Split, WireError> {
    split(
        request,
        partitions,
        &Shape {
            resources: "resource_metrics",
            scopes: "scope_metrics",
            items: "metrics",
            inspect: inspect_metric,
        },
    )
}

pub fn split_logs(request: &[u8], partitions: u32) -> Result<Split, WireError> {
    split(
        request,
        partitions,
        &Shape {
            resources: "resource_logs",
            scopes: "scope_logs",
            items: "log_records",
            inspect: inspect_log_record,
        },
    )
}

/// Spans are keyed by trace id, so every span of a trace meets on one partition.
fn inspect_span(span: &[u8]) -> Result<Item, WireError> {
    let (mut trace_id, mut span_id, mut name): (&[u8], &[u8], &[u8]) = (&[], &[], &[]);
    schema::check_visiting(&schema::SPAN, span, |f| match (f.number, f.value) {
        (1, Value::Len(b)) => trace_id = b,
        (2, Value::Len(b)) => span_id = b,
        (5, Value::Len(b)) => name = b,
        _ => {}
    })?;
    let valid = |id: &[u8], len| id.len() == len && id.iter().any(|b| *b != 0);
    let span_name = || String::from_utf8_lossy(name);
    let verdict = if !valid(trace_id, 16) {
        Err(format!(
            "span {:?}: trace_id must be 16 bytes, not all zero (got {} bytes)",
            span_name(),
            trace_id.len()
        ))
    } else if !valid(span_id, 8) {
        Err(format!(
            "span {:?}: span_id must be 8 bytes, not all zero (got {} bytes)",
            span_name(),
            span_id.len()
        ))
    } else {
        Ok(Some(xxh3_128(trace_id)))
    };
    Ok(Item {
        count: 1,
        received: 1,
        verdict,
    })
}

/// Log records go with their resource; trace context is optional but must be well formed.
fn inspect_log_record(record: &[u8]) -> Result<Item, WireError> {
    let (mut trace_id, mut span_id): (&[u8], &[u8]) = (&[], &[]);
    schema::check_visiting(&schema::LOG_RECORD, record, |f| match (f.number, f.value) {
        (9, Value::Len(b)) => trace_id = b,
        (10, Value::Len(b)) => span_id = b,
        _ => {}
    })?;
    let verdict = if matches!(trace_id.len(), 0 | 16) && matches!(span_id.len(), 0 | 8) {
        Ok(None)
    } else {
        Err(format!(
            "log record: trace_id must be empty or 16 bytes and span_id empty or 8 bytes (got {} and {})",
            trace_id.len(),
            span_id.len()
        ))
    };
    Ok(Item {
        count: 1,
        received: 1,
        verdict,
    })
}

/// Metrics go with their resource, so one processor sees every point of a series. A metric
/// counts as its data points; one without a name or data is refused.
fn inspect_metric(metric: &[u8]) -> Result<Item, WireError> {
    let mut name: &[u8] = &[];
    // `data` is a oneof: prost keeps the last variant seen, merging repeats of the same one.
    let mut data: Option<(u32, u32)> = None;
    let points = |data_message: &[u8]| {
        Fields::new(data_message)
            .filter(|f| f.as_ref().is_ok_and(|f| f.number == 1))
            .count() as u32
    };
    schema::check_visiting(&schema::METRIC, metric, |f| match (f.number, f.value) {
        (1, Value::Len(b)) => name = b,
        (number @ (5 | 7 | 9 | 10 | 11), Value::Len(b)) => {
            let n = points(b);
            data = Some(match data {
                Some((variant, before)) if variant == number => (number, before + n),
                _ => (number, n),
            });
        }
        _ => {}
    })?;
    let points = data.map(|(_, n)| n).unwrap_or(0);
    let verdict = if name.is_empty() {
        Err("metric without a name".to_string())
    } else if data.is_none() {
        Err(format!(
            "metric {:?} has no data (gauge, sum, histogram, ...)",
            String::from_utf8_lossy(name)
        ))
    } else {
        Ok(None)
    };
    Ok(Item {
        count: points,
        received: points.max(1),
        verdict,
    })
}

/// An item kept for a partition, in request order.
struct Kept<'a> {
    scope: usize,
    partition: u32,
    bytes: &'a [u8],
    count: u32,
}

/// A scope of the resource being split: its message, and the size of what is copied from it
/// besides the items.
struct Scope<'a> {
    message: &'a [u8],
    head: usize,
}

/// What a split has found so far, and its per-resource scratch (cleared for each resource).
struct Scan<'a> {
    partitions: u32,
    shape: &'a Shape,
    received: u64,
    rejected: Rejected,
    kept: Vec<Kept<'a>>,
    scopes: Vec<Scope<'a>>,
    /// Whether a kept item of this resource goes where its resource does.
    keyed_by_resource: bool,
    /// The position of the resource being scanned, for the path in a refused item's reason.
    resource_index: usize,
}

fn split(request: &[u8], partitions: u32, shape: &Shape) -> Result<Split, WireError> {
    let mut parts: Vec<Part> = Vec::new();
    let mut scan = Scan {
        partitions,
        shape,
        received: 0,
        rejected: Rejected::default(),
        kept: Vec::new(),
        scopes: Vec::new(),
        keyed_by_resource: false,
        resource_index: 0,
    };
    let mut targets: Vec<u32> = Vec::new();
    for (r, field) in Fields::new(request)
        .filter(|f| !matches!(f, Ok(f) if f.number != 1))
        .enumerate()
    {
        let at_resource = |e: WireError| e.within(format!("{}[{r}]", shape.resources));
        let resource = field?.len_contents(shape.resources).map_err(at_resource)?;
        scan.resource_index = r;
        let head = scan.resource(resource).map_err(at_resource)?;
        if scan.kept.is_empty() {
            continue;
        }
        if scan.keyed_by_resource {
            let p =
                partition_for_hash(resource_hash(Some(&decode_resource(resource)?)), partitions);
            for k in scan
                .kept
                .iter_mut()
                .filter(|k| k.partition == THE_RESOURCES)
            {
                k.partition = p;
            }
        }
        targets.clear();
        for k in &scan.kept {
            if !targets.contains(&k.partition) {
                targets.push(k.partition);
            }
        }
        for &p in &targets {
            let part = match parts.iter().position(|part| part.partition == p) {
                Some(i) => &mut parts[i],
                None => {
                    parts.push(Part {
                        partition: p,
                        body: Vec::new(),
                        items: 0,
                    });
                    parts.last_mut().expect("just pushed")
                }
            };
            part.items += write_resource(&mut part.body, resource, head, &scan, p);
        }
    }
    Ok(Split {
        parts,
        received: scan.received,
        rejected: scan.rejected,
    })
}

impl<'a> Scan<'a> {
    /// Checks one `resource_*` message, keeps its valid items, and returns the size of its
    /// own fields that are copied (resource, schema url).
    fn resource(&mut self, resource: &'a [u8]) -> Result<usize, WireError> {
        self.kept.clear();
        self.scopes.clear();
        self.keyed_by_resource = false;
        let mut head = 0;
        for field in Fields::new(resource) {
            let field = field?;
            if field.number != CHILDREN {
                head += copied_len(&schema::RESOURCE_ENTRY, &field)?;
                continue;
            }
            let s = self.scopes.len();
            let at_scope = |e: WireError| e.within(format!("{}[{s}]", self.shape.scopes));
            let message = field.len_contents(self.shape.scopes).map_err(at_scope)?;
            let head = self.scope(s, message).map_err(at_scope)?;
            self.scopes.push(Scope { message, head });
        }
        Ok(head)
    }

    /// Checks scope `s` of the resource, keeps its valid items, counts and refuses the rest,
    /// and returns the size of its own fields that are copied (scope, schema url).
    fn scope(&mut self, s: usize, message: &'a [u8]) -> Result<usize, WireError> {
        let mut head = 0;
        let mut i = 0;
        for field in Fields::new(message) {
            let field = field?;
            if field.number != CHILDREN {
                head += copied_len(&schema::SCOPE_ENTRY, &field)?;
                continue;
            }
            let at_item = |e: WireError| e.within(format!("{}[{i}]", self.shape.items));
            let bytes = field.len_contents(self.shape.items).map_err(at_item)?;
            let item = match (self.shape.inspect)(bytes) {
                Ok(item) => item,
                // The item is framed (its length was read), so what is wrong inside it is its
                // own problem: it is refused alone, in the partial success, and its neighbours
                // go on. Its data points (for a metric) are counted as one.
                Err(e) => {
                    let (r, shape) = (self.resource_index, self.shape);
                    let e = at_item(e)
                        .within(format!("{}[{s}]", shape.scopes))
                        .within(format!("{}[{r}]", shape.resources));
                    i += 1;
                    self.received += 1;
                    self.rejected.add(|| e.to_string());
                    continue;
                }
            };
            i += 1;
            self.received += u64::from(item.received);
            match item.verdict {
                Ok(key) => {
                    self.keyed_by_resource |= key.is_none();
                    self.kept.push(Kept {
                        scope: s,
                        partition: key
                            .map_or(THE_RESOURCES, |h| partition_for_hash(h, self.partitions)),
                        bytes: field.whole,
                        count: item.count,
                    });
                }
                Err(why) => self.rejected.add(|| why),
            }
        }
        Ok(head)
    }
}

/// Checks a `resource_*` or `scope_*` field other than the children, and returns how many
/// bytes copying it takes: unknown fields are dropped, as a decode and encode would.
fn copied_len(entry: &Msg, field: &Field) -> Result<usize, WireError> {
    Ok(if schema::check_field(entry, field)? {
        field.whole.len()
    } else {
        0
    })
}

/// Appends one `resource_*` field holding the resource's own fields and, per scope with
/// items bound for `partition`, one `scope_*` field with those items; returns the items'
/// count.
fn write_resource(
    out: &mut Vec<u8>,
    resource: &[u8],
    head: usize,
    scan: &Scan,
    partition: u32,
) -> u32 {
    let mine = || scan.kept.iter().filter(move |k| k.partition == partition);
    let scope_len = |s: usize| {
        scan.scopes[s].head
            + mine()
                .filter(|k| k.scope == s)
                .map(|k| k.bytes.len())
                .sum::<usize>()
    };
    let mut used: Vec<usize> = mine().map(|k| k.scope).collect();
    used.dedup();
    let body = head
        + used
            .iter()
            .map(|&s| nested_len(CHILDREN, scope_len(s)))
            .sum::<usize>();
    out.reserve(nested_len(1, body));
    put_nested(out, 1, body);
    copy_head(out, resource);
    for s in used {
        put_nested(out, CHILDREN, scope_len(s));
        copy_head(out, scan.scopes[s].message);
        for k in mine().filter(|k| k.scope == s) {
            out.extend_from_slice(k.bytes);
        }
    }
    mine().map(|k| k.count).sum()
}

/// Copies the message's resource or scope and its schema url (already checked).
fn copy_head(out: &mut Vec<u8>, message: &[u8]) {
    for field in Fields::new(message).flatten() {
        if matches!(field.number, HEAD | SCHEMA_URL) {
            out.extend_from_slice(field.whole);
        }
    }
}

/// The resource of a `resource_*` message, merged over repeats as prost would.
fn decode_resource(message: &[u8]) -> Result<Resource, WireError> {
    let mut resource = Resource::default();
    for field in Fields::new(message).flatten() {
        if let (HEAD, Value::Len(b)) = (field.number, field.value) {
            resource
                .merge(b)
                .map_err(|e| WireError::new(e.to_string()).within("resource"))?;
        }
    }
    Ok(resource)
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{
        any_value, AnyValue, InstrumentationScope, KeyValue, KeyValueList,
    };
    use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
    use opentelemetry_proto::tonic::metrics::v1::{
        exponential_histogram_data_point::Buckets, metric, number_data_point, summary_data_point,
        ExponentialHistogram, ExponentialHistogramDataPoint, Gauge, Histogram, HistogramDataPoint,
        Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum, Summary, SummaryDataPoint,
    };
    use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Span, Status};

    use super::*;

    fn value(v: any_value::Value) -> Option<AnyValue> {
        Some(AnyValue { value: Some(v) })
    }

    fn kv(key: &str, v: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: value(v),
            ..Default::default()
        }
    }

    /// Attributes of every value type, nested.
    fn attributes(n: u8) -> Vec<KeyValue> {
        use any_value::Value::*;
        vec![
            kv("s", StringValue(format!("value-{n}"))),
            kv("b", BoolValue(n.is_multiple_of(2))),
            kv("i", IntValue(-(n as i64))),
            kv("d", DoubleValue(n as f64 / 3.0)),
            kv("x", BytesValue(vec![n; 3])),
            kv(
                "a",
                ArrayValue(opentelemetry_proto::tonic::common::v1::ArrayValue {
                    values: vec![AnyValue {
                        value: Some(KvlistValue(KeyValueList {
                            values: vec![kv("deep", StringValue("é".into()))],
                        })),
                    }],
                }),
            ),
        ]
    }

    fn resource(service: &str) -> Option<Resource> {
        Some(Resource {
            attributes: vec![kv(
                "service.name",
                any_value::Value::StringValue(service.into()),
            )],
            ..Default::default()
        })
    }

    fn scope() -> Option<InstrumentationScope> {
        Some(InstrumentationScope {
            name: "lib".into(),
            version: "1.0".into(),
            attributes: attributes(9),
            ..Default::default()
        })
    }

    fn spans(n: u8) -> Vec<Span> {
        (1..=n)
            .map(|i| Span {
                trace_id: vec![i % 5 + 1; 16],
                span_id: vec![i; 8],
                parent_span_id: vec![i + 1; 8],
                name: format!("span-{i}"),
                kind: 2,
                start_time_unix_nano: 1_000 * i as u64,
                end_time_unix_nano: 2_000 * i as u64,
                attributes: attributes(i),
                events: vec![span::Event {
                    name: "exception".into(),
                    attributes: attributes(i + 1),
                    ..Default::default()
                }],
                links: vec![span::Link {
                    trace_id: vec![7; 16],
                    span_id: vec![7; 8],
                    attributes: attributes(i + 2),
                    flags: 1,
                    ..Default::default()
                }],
                status: Some(Status {
                    message: "boom".into(),
                    code: 2,
                }),
                flags: 0x100,
                ..Default::default()
            })
            .collect()
    }

    fn traces() -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: ["a", "b"]
                .iter()
                .map(|service| ResourceSpans {
                    resource: resource(service),
                    scope_spans: vec![
                        ScopeSpans {
                            scope: scope(),
                            spans: spans(6),
                            schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
                        },
                        ScopeSpans {
                            spans: spans(3),
                            ..Default::default()
                        },
                    ],
                    schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
                })
                .collect(),
        }
    }

    fn metrics() -> ExportMetricsServiceRequest {
        let number = |i: u8| NumberDataPoint {
            attributes: attributes(i),
            time_unix_nano: 5,
            value: Some(number_data_point::Value::AsDouble(i as f64)),
            ..Default::default()
        };
        let metric = |name: &str, data: metric::Data| Metric {
            name: name.into(),
            unit: "ms".into(),
            data: Some(data),
            ..Default::default()
        };
        let all = vec![
            metric(
                "g",
                metric::Data::Gauge(Gauge {
                    data_points: vec![number(1), number(2)],
                }),
            ),
            metric(
                "s",
                metric::Data::Sum(Sum {
                    data_points: vec![number(3)],
                    aggregation_temporality: 2,
                    is_monotonic: true,
                }),
            ),
            metric(
                "h",
                metric::Data::Histogram(Histogram {
                    data_points: vec![HistogramDataPoint {
                        count: 3,
                        sum: Some(1.5),
                        bucket_counts: vec![1, 2, 0],
                        explicit_bounds: vec![1.0, 2.0],
                        min: Some(0.1),
                        ..Default::default()
                    }],
                    aggregation_temporality: 1,
                }),
            ),
            metric(
                "e",
                metric::Data::ExponentialHistogram(ExponentialHistogram {
                    data_points: vec![ExponentialHistogramDataPoint {
                        scale: -2,
                        count: 4,
                        positive: Some(Buckets {
                            offset: -3,
                            bucket_counts: vec![1, 300, 0],
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
                        count: 2,
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
            resource_metrics: ["a", "b", "c"]
                .iter()
                .map(|service| ResourceMetrics {
                    resource: resource(service),
                    scope_metrics: vec![ScopeMetrics {
                        scope: scope(),
                        metrics: all.clone(),
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .collect(),
        }
    }

    fn logs() -> ExportLogsServiceRequest {
        ExportLogsServiceRequest {
            resource_logs: ["a", "b", "c"]
                .iter()
                .map(|service| ResourceLogs {
                    resource: resource(service),
                    scope_logs: vec![ScopeLogs {
                        scope: scope(),
                        log_records: (1..=4)
                            .map(|i| LogRecord {
                                severity_text: "INFO".into(),
                                body: value(any_value::Value::StringValue(format!("line {i}"))),
                                attributes: attributes(i),
                                trace_id: if i % 2 == 0 { vec![i; 16] } else { Vec::new() },
                                span_id: if i % 2 == 0 { vec![i; 8] } else { Vec::new() },
                                event_name: "e".into(),
                                ..Default::default()
                            })
                            .collect(),
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .collect(),
        }
    }

    /// (resource, scope, item) for every item, with its resource's and scope's other fields.
    fn flat_spans(r: &ExportTraceServiceRequest) -> Vec<(ResourceSpans, ScopeSpans, Span)> {
        let mut out = Vec::new();
        for rs in &r.resource_spans {
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    let head = ResourceSpans {
                        scope_spans: Vec::new(),
                        ..rs.clone()
                    };
                    let scope = ScopeSpans {
                        spans: Vec::new(),
                        ..ss.clone()
                    };
                    out.push((head, scope, s.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn a_split_holds_every_valid_span_once_under_its_resource_and_scope() {
        let mut request = traces();
        request.resource_spans[1].scope_spans[0].spans[2].span_id = vec![0; 8];
        let bytes = request.encode_to_vec();
        let split = split_traces(&bytes, 4).unwrap();
        assert_eq!(split.received, 18);
        assert_eq!(split.rejected.count, 1);
        assert!(split
            .rejected
            .message
            .as_deref()
            .unwrap()
            .contains("span \"span-3\": span_id"));
        let mut expected = flat_spans(&request);
        expected.retain(|(_, _, s)| s.span_id != vec![0; 8]);
        let mut got = Vec::new();
        for part in &split.parts {
            let decoded = ExportTraceServiceRequest::decode(&part.body[..]).unwrap();
            let flat = flat_spans(&decoded);
            assert_eq!(part.items as usize, flat.len());
            for (_, _, s) in &flat {
                assert_eq!(
                    partition_for_hash(xxh3_128(&s.trace_id), 4),
                    part.partition,
                    "a span is on its trace's partition"
                );
            }
            got.extend(flat);
        }
        assert_eq!(got.len(), expected.len());
        for item in &expected {
            assert!(got.contains(item), "{:?} missing", item.2.name);
        }
        assert!(split.parts.len() > 1);
    }

    #[test]
    fn metrics_and_logs_go_with_their_resource_and_bad_items_alone_are_refused() {
        let mut request = metrics();
        request.resource_metrics[0].scope_metrics[0].metrics[1]
            .name
            .clear();
        request.resource_metrics[2].scope_metrics[0].metrics[4].data = None;
        let split = split_metrics(&request.encode_to_vec(), 8).unwrap();
        // 6 data points per resource, and a metric without data counts as one.
        assert_eq!(split.received, 3 * 6 - 1 + 1);
        assert_eq!(split.rejected.count, 2);
        assert_eq!(
            split.rejected.message.as_deref(),
            Some("metric without a name")
        );
        let mut seen = 0;
        for part in &split.parts {
            let decoded = ExportMetricsServiceRequest::decode(&part.body[..]).unwrap();
            for rm in &decoded.resource_metrics {
                let p = partition_for_hash(resource_hash(rm.resource.as_ref()), 8);
                assert_eq!(p, part.partition);
                seen += rm.scope_metrics[0].metrics.len();
                assert_eq!(rm.scope_metrics[0].scope, scope());
            }
        }
        assert_eq!(seen, 3 * 5 - 2);
        assert_eq!(split.parts.iter().map(|p| p.items).sum::<u32>(), 18 - 1 - 1);

        let mut request = logs();
        request.resource_logs[1].scope_logs[0].log_records[0].span_id = vec![1, 2];
        let split = split_logs(&request.encode_to_vec(), 8).unwrap();
        assert_eq!((split.received, split.rejected.count), (12, 1));
        let decoded: Vec<LogRecord> = split
            .parts
            .iter()
            .flat_map(|p| {
                ExportLogsServiceRequest::decode(&p.body[..])
                    .unwrap()
                    .resource_logs
            })
            .flat_map(|r| r.scope_logs)
            .flat_map(|s| s.log_records)
            .collect();
        assert_eq!(decoded.len(), 11);
    }

    #[test]
    fn errors_say_where_the_bad_bytes_are() {
        let mut request = traces();
        request.resource_spans[1].scope_spans[0].spans[4].attributes[0].key = "\u{1F600}".into();
        let mut bytes = request.encode_to_vec();
        // Break the emoji's UTF-8 in place (its 4 bytes keep their length).
        let at = bytes
            .windows(4)
            .position(|w| w == "\u{1F600}".as_bytes())
            .unwrap();
        bytes[at] = 0xff;
        // Inside a span: that span alone is refused, with where its bad bytes are.
        let split = split_traces(&bytes, 4).unwrap();
        assert_eq!(split.rejected.count, 1);
        assert_eq!(
            split.rejected.message.as_deref(),
            Some(
                "resource_spans[1].scope_spans[0].spans[4].attributes[0].key: string is not valid UTF-8"
            )
        );
        let kept: u32 = split.parts.iter().map(|p| p.items).sum();
        assert_eq!(u64::from(kept), split.received - 1);
        assert!(split_traces(&[0x0a, 0x05, 1, 2], 4).is_err());
        assert!(split_traces(&[], 4).unwrap().parts.is_empty());
    }

    /// A small deterministic generator, so a failure replays.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Damages `bytes` the way a buggy client or a bad network would: a changed, dropped or
    /// added byte, or a cut.
    fn mutate(rng: &mut XorShift, bytes: &[u8]) -> Vec<u8> {
        let mut out = bytes.to_vec();
        for _ in 0..=rng.below(3) {
            let at = rng.below(out.len().max(1));
            match rng.below(4) {
                0 if !out.is_empty() => out[at] = rng.next() as u8,
                1 if !out.is_empty() => {
                    out.remove(at);
                }
                2 => out.insert(at, rng.next() as u8),
                _ => out.truncate(at),
            }
        }
        out
    }

    /// The check accepts what prost decodes and refuses what prost refuses (allowing only
    /// the documented stricter cases), and what it accepts splits into parts that decode.
    fn agrees_with_prost<M: Message + Default>(
        valid: &[u8],
        split: fn(&[u8], u32) -> Result<Split, WireError>,
        seed: u64,
    ) {
        let mut rng = XorShift(seed);
        let (mut accepted, mut refused) = (0, 0);
        for round in 0..4000 {
            let bytes = mutate(&mut rng, valid);
            let prost = M::decode(&bytes[..]);
            match split(&bytes, 4) {
                Ok(split) => {
                    accepted += 1;
                    // What prost refuses as a whole is accepted only with the bad items
                    // refused, and the rest decodes.
                    assert!(
                        prost.is_ok() || split.rejected.count > 0,
                        "round {round}: accepted what prost refuses: {:?}",
                        prost.err()
                    );
                    for part in split.parts {
                        M::decode(&part.body[..]).expect("a part decodes");
                    }
                }
                Err(e) => {
                    refused += 1;
                    assert!(
                        prost.is_err() || e.to_string().contains("groups"),
                        "round {round}: refused what prost decodes: {e}"
                    );
                }
            }
        }
        assert!(
            accepted > 100 && refused > 100,
            "{accepted} accepted, {refused} refused"
        );
    }

    #[test]
    fn traces_agree_with_prost() {
        agrees_with_prost::<ExportTraceServiceRequest>(&traces().encode_to_vec(), split_traces, 7);
    }

    #[test]
    fn metrics_agree_with_prost() {
        agrees_with_prost::<ExportMetricsServiceRequest>(
            &metrics().encode_to_vec(),
            split_metrics,
            11,
        );
    }

    #[test]
    fn logs_agree_with_prost() {
        agrees_with_prost::<ExportLogsServiceRequest>(&logs().encode_to_vec(), split_logs, 13);
    }
}
