//! Splits a request into one part per bus partition.
//!
//! Traces are keyed by trace id, so every span of a trace lands on one partition whatever
//! request or collector it came through; metrics and logs by their resource, so one processor
//! sees every point of a series; events by user, so a user's events stay in order. Each part
//! keeps its resource and scope so it stands on its own as an OTLP request.

use std::collections::HashMap;

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{metric, ResourceMetrics};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use prost::Message;
use tidewater_bus::partition_for_hash;
use tidewater_proto::events::v1::Event;
use xxhash_rust::xxh3::{xxh3_128, Xxh3};

/// What one part carries, by signal.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    Traces(Vec<ResourceSpans>),
    Metrics(Vec<ResourceMetrics>),
    Logs(Vec<ResourceLogs>),
    Events(Vec<Event>),
    /// X-Ray segment documents from X-Ray SDK apps, one line each.
    XraySegments(Vec<String>),
}

/// The share of a request bound for one partition.
#[derive(Debug)]
pub struct Part {
    pub partition: u32,
    pub payload: Payload,
    /// Spans, data points, log records or events.
    pub items: u32,
    /// Encoded size, for batching and the memory bound.
    pub bytes: usize,
}

/// Items refused while splitting, reported to the client as OTLP partial success.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rejected {
    pub count: u64,
    /// The first problem seen, for the client's error message.
    pub message: Option<String>,
}

impl Rejected {
    fn add(&mut self, message: impl FnOnce() -> String) {
        self.count += 1;
        if self.message.is_none() {
            self.message = Some(message());
        }
    }
}

pub fn split_traces(resource_spans: Vec<ResourceSpans>, partitions: u32) -> (Vec<Part>, Rejected) {
    let mut rejected = Rejected::default();
    let mut by_partition: HashMap<u32, Vec<ResourceSpans>> = HashMap::new();
    for rs in resource_spans {
        let mut per_partition: HashMap<u32, Vec<ScopeSpans>> = HashMap::new();
        for ss in rs.scope_spans {
            let mut spans_by_partition: HashMap<u32, Vec<_>> = HashMap::new();
            for span in ss.spans {
                if span.trace_id.len() != 16 || span.trace_id.iter().all(|b| *b == 0) {
                    rejected.add(|| {
                        format!(
                            "span {:?}: trace_id must be 16 bytes, not all zero (got {} bytes)",
                            span.name,
                            span.trace_id.len()
                        )
                    });
                    continue;
                }
                if span.span_id.len() != 8 || span.span_id.iter().all(|b| *b == 0) {
                    rejected.add(|| {
                        format!(
                            "span {:?}: span_id must be 8 bytes, not all zero (got {} bytes)",
                            span.name,
                            span.span_id.len()
                        )
                    });
                    continue;
                }
                let p = partition_for_hash(xxh3_128(&span.trace_id), partitions);
                spans_by_partition.entry(p).or_default().push(span);
            }
            for (p, spans) in spans_by_partition {
                per_partition.entry(p).or_default().push(ScopeSpans {
                    scope: ss.scope.clone(),
                    spans,
                    schema_url: ss.schema_url.clone(),
                });
            }
        }
        for (p, scope_spans) in per_partition {
            by_partition.entry(p).or_default().push(ResourceSpans {
                resource: rs.resource.clone(),
                scope_spans,
                schema_url: rs.schema_url.clone(),
            });
        }
    }
    let parts = into_parts(by_partition, Payload::Traces, |r| {
        r.scope_spans.iter().map(|s| s.spans.len() as u32).sum()
    });
    (parts, rejected)
}

pub fn split_metrics(
    resource_metrics: Vec<ResourceMetrics>,
    partitions: u32,
) -> (Vec<Part>, Rejected) {
    let mut rejected = Rejected::default();
    let mut by_partition: HashMap<u32, Vec<ResourceMetrics>> = HashMap::new();
    for mut rm in resource_metrics {
        for sm in &mut rm.scope_metrics {
            sm.metrics.retain(|m| {
                if m.name.is_empty() {
                    rejected.add(|| "metric without a name".to_string());
                    false
                } else if m.data.is_none() {
                    rejected.add(|| {
                        format!(
                            "metric {:?} has no data (gauge, sum, histogram, ...)",
                            m.name
                        )
                    });
                    false
                } else {
                    true
                }
            });
        }
        rm.scope_metrics.retain(|sm| !sm.metrics.is_empty());
        if rm.scope_metrics.is_empty() {
            continue;
        }
        let p = partition_for_hash(resource_hash(rm.resource.as_ref()), partitions);
        by_partition.entry(p).or_default().push(rm);
    }
    let parts = into_parts(by_partition, Payload::Metrics, |r| {
        r.scope_metrics
            .iter()
            .flat_map(|s| &s.metrics)
            .map(|m| data_points(m.data.as_ref()))
            .sum()
    });
    (parts, rejected)
}

pub fn split_logs(resource_logs: Vec<ResourceLogs>, partitions: u32) -> (Vec<Part>, Rejected) {
    let mut rejected = Rejected::default();
    let mut by_partition: HashMap<u32, Vec<ResourceLogs>> = HashMap::new();
    for mut rl in resource_logs {
        for sl in &mut rl.scope_logs {
            sl.log_records.retain(|r| {
                // Trace context on a log record is optional, but when present it must be valid.
                let ok = matches!(r.trace_id.len(), 0 | 16) && matches!(r.span_id.len(), 0 | 8);
                if !ok {
                    rejected.add(|| {
                        format!("log record: trace_id must be empty or 16 bytes and span_id empty or 8 bytes (got {} and {})", r.trace_id.len(), r.span_id.len())
                    });
                }
                ok
            });
        }
        rl.scope_logs
            .retain(|sl: &ScopeLogs| !sl.log_records.is_empty());
        if rl.scope_logs.is_empty() {
            continue;
        }
        let p = partition_for_hash(resource_hash(rl.resource.as_ref()), partitions);
        by_partition.entry(p).or_default().push(rl);
    }
    let parts = into_parts(by_partition, Payload::Logs, |r| {
        r.scope_logs
            .iter()
            .map(|s| s.log_records.len() as u32)
            .sum()
    });
    (parts, rejected)
}

/// Events must already be validated.
pub fn split_events(events: Vec<Event>, partitions: u32) -> Vec<Part> {
    let mut by_partition: HashMap<u32, Vec<Event>> = HashMap::new();
    for event in events {
        let user = if event.user_id.is_empty() {
            &event.anonymous_id
        } else {
            &event.user_id
        };
        let p = partition_for_hash(xxh3_128(user.as_bytes()), partitions);
        by_partition.entry(p).or_default().push(event);
    }
    into_parts(by_partition, Payload::Events, |_| 1)
}

/// One part per partition from what was grouped by partition: `items` counts the items in one
/// message, and sizes are the messages' encoded lengths.
fn into_parts<T: Message>(
    by_partition: HashMap<u32, Vec<T>>,
    payload: fn(Vec<T>) -> Payload,
    items: impl Fn(&T) -> u32,
) -> Vec<Part> {
    by_partition
        .into_iter()
        .map(|(partition, messages)| Part {
            partition,
            items: messages.iter().map(&items).sum(),
            bytes: messages.iter().map(Message::encoded_len).sum(),
            payload: payload(messages),
        })
        .collect()
}

/// One X-Ray segment document (a single line) and its trace id.
#[derive(Debug, Clone, PartialEq)]
pub struct XraySegment {
    pub trace_id: String,
    pub document: String,
}

/// X-Ray segments are keyed by trace id like OTLP spans: `1-5759e988-bd862e3fe1be46a994272793`
/// hashes as the 16 bytes `5759e988bd86...`, the same id an OpenTelemetry span of that trace
/// carries (X-Ray propagation), so both halves of a trace meet on one partition.
pub fn split_xray_segments(segments: Vec<XraySegment>, partitions: u32) -> Vec<Part> {
    let mut by_partition: HashMap<u32, Vec<String>> = HashMap::new();
    for s in segments {
        let hash = match xray_trace_id_bytes(&s.trace_id) {
            Some(bytes) => xxh3_128(&bytes),
            None => xxh3_128(s.trace_id.as_bytes()),
        };
        by_partition
            .entry(partition_for_hash(hash, partitions))
            .or_default()
            .push(s.document);
    }
    by_partition
        .into_iter()
        .map(|(partition, docs)| Part {
            partition,
            items: docs.len() as u32,
            bytes: docs.iter().map(|d| d.len() + 1).sum(),
            payload: Payload::XraySegments(docs),
        })
        .collect()
}

/// `1-xxxxxxxx-yyyyyyyyyyyyyyyyyyyyyyyy` as 16 bytes.
pub fn xray_trace_id_bytes(id: &str) -> Option<[u8; 16]> {
    let mut parts = id.split('-');
    let (Some("1"), Some(epoch), Some(random), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if epoch.len() != 8 || random.len() != 24 {
        return None;
    }
    let hex = format!("{epoch}{random}");
    let mut out = [0u8; 16];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

pub fn data_points(data: Option<&metric::Data>) -> u32 {
    (match data {
        Some(metric::Data::Gauge(g)) => g.data_points.len(),
        Some(metric::Data::Sum(s)) => s.data_points.len(),
        Some(metric::Data::Histogram(h)) => h.data_points.len(),
        Some(metric::Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(metric::Data::Summary(s)) => s.data_points.len(),
        None => 0,
    }) as u32
}

/// A hash of a resource's attributes that does not depend on their order, so one app's
/// resource maps to one partition however its SDK orders attributes.
pub fn resource_hash(resource: Option<&Resource>) -> u128 {
    let mut attrs: Vec<&KeyValue> = resource
        .map(|r| r.attributes.iter().collect())
        .unwrap_or_default();
    attrs.sort_by(|a, b| a.key.cmp(&b.key));
    let mut h = Xxh3::new();
    let mut buf = Vec::new();
    for kv in attrs {
        h.update(kv.key.as_bytes());
        h.update(&[0]);
        buf.clear();
        if let Some(v) = &kv.value {
            v.encode(&mut buf).expect("Vec has room");
        }
        h.update(&buf);
        h.update(&[0]);
    }
    h.digest128()
}

/// The value of a resource attribute as a string, when it is one.
pub fn string_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref() {
            Some(AnyValue {
                value: Some(any_value::Value::StringValue(s)),
            }) => Some(s.as_str()),
            _ => None,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1::Span;

    fn kv(k: &str, v: &str) -> KeyValue {
        KeyValue {
            key: k.into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::StringValue(v.into())),
            }),
            ..Default::default()
        }
    }

    fn span(trace: u8, id: u8) -> Span {
        Span {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            name: format!("s{trace}-{id}"),
            ..Default::default()
        }
    }

    fn rs(spans: Vec<Span>) -> ResourceSpans {
        ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "a")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn spans_of_one_trace_share_a_partition_across_requests() {
        let (a, _) = split_traces(vec![rs((1..=20).map(|t| span(t, 1)).collect())], 4);
        let (b, _) = split_traces(vec![rs((1..=20).map(|t| span(t, 2)).collect())], 4);
        let where_is = |parts: &[Part], trace: u8| {
            parts
                .iter()
                .find(|p| match &p.payload {
                    Payload::Traces(rs) => rs
                        .iter()
                        .flat_map(|r| &r.scope_spans)
                        .flat_map(|s| &s.spans)
                        .any(|s| s.trace_id[0] == trace),
                    _ => false,
                })
                .map(|p| p.partition)
        };
        for t in 1..=20 {
            assert_eq!(where_is(&a, t), where_is(&b, t));
        }
        assert!(
            a.len() > 1,
            "20 traces over 4 partitions should use more than one"
        );
        assert_eq!(a.iter().map(|p| p.items).sum::<u32>(), 20);
        // Resource and scope travel with every part.
        for p in &a {
            let Payload::Traces(rs) = &p.payload else {
                panic!()
            };
            assert_eq!(
                string_attr(&rs[0].resource.as_ref().unwrap().attributes, "service.name"),
                Some("a")
            );
        }
    }

    #[test]
    fn invalid_ids_are_rejected_alone() {
        let mut bad = span(1, 1);
        bad.trace_id = vec![1, 2, 3];
        let (parts, rejected) = split_traces(vec![rs(vec![bad, span(2, 2)])], 4);
        assert_eq!(rejected.count, 1);
        assert!(rejected
            .message
            .unwrap()
            .contains("trace_id must be 16 bytes"));
        assert_eq!(parts.iter().map(|p| p.items).sum::<u32>(), 1);
    }

    #[test]
    fn xray_segments_share_a_partition_with_their_otlp_trace() {
        let otlp = [
            0x57, 0x59, 0xe9, 0x88, 0xbd, 0x86, 0x2e, 0x3f, 0xe1, 0xbe, 0x46, 0xa9, 0x94, 0x27,
            0x27, 0x93,
        ];
        let xray = "1-5759e988-bd862e3fe1be46a994272793";
        assert_eq!(xray_trace_id_bytes(xray), Some(otlp));
        for bad in [
            "",
            "1-5759e988",
            "2-5759e988-bd862e3fe1be46a994272793",
            "1-zz59e988-bd862e3fe1be46a994272793",
        ] {
            assert_eq!(xray_trace_id_bytes(bad), None, "{bad}");
        }
        let mut sp = span(1, 1);
        sp.trace_id = otlp.to_vec();
        let (spans, _) = split_traces(vec![rs(vec![sp])], 16);
        let segments = split_xray_segments(
            vec![
                XraySegment {
                    trace_id: xray.into(),
                    document: "{}".into(),
                },
                XraySegment {
                    trace_id: "odd".into(),
                    document: "{}".into(),
                },
            ],
            16,
        );
        assert!(segments.iter().any(|p| p.partition == spans[0].partition));
        assert_eq!(segments.iter().map(|p| p.items).sum::<u32>(), 2);
    }

    #[test]
    fn resource_hash_ignores_attribute_order() {
        let a = Resource {
            attributes: vec![kv("x", "1"), kv("y", "2")],
            ..Default::default()
        };
        let b = Resource {
            attributes: vec![kv("y", "2"), kv("x", "1")],
            ..Default::default()
        };
        let c = Resource {
            attributes: vec![kv("y", "2"), kv("x", "3")],
            ..Default::default()
        };
        assert_eq!(resource_hash(Some(&a)), resource_hash(Some(&b)));
        assert_ne!(resource_hash(Some(&a)), resource_hash(Some(&c)));
    }
}
