//! Splits a request into one part per bus partition.
//!
//! Traces are keyed by trace id, so every span of a trace lands on one partition whatever
//! request or collector it came through; metrics and logs by their resource, so one processor
//! sees every point of a series; events by user, so a user's events stay in order. Each part
//! keeps its resource and scope so it stands on its own as an OTLP request.

mod otlp;

pub use otlp::{split_logs, split_metrics, split_traces, Split};

use std::collections::HashMap;

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::metric;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use tidewater_bus::partition_for_hash;
use tidewater_proto::events::v1::{Event, PublishRequest};
use xxhash_rust::xxh3::{xxh3_128, Xxh3};

/// The share of a request bound for one partition.
#[derive(Debug)]
pub struct Part {
    pub partition: u32,
    /// Encoded as it travels on the bus, so a lane's batch is its parts' bodies one after the
    /// other: repeated fields of the signal's request message (`resource_spans`, ...,
    /// `events`), or X-Ray segment documents one per line.
    pub body: Vec<u8>,
    /// Spans, data points, log records or events.
    pub items: u32,
}

impl Part {
    /// Bytes held, for batching and the memory bound.
    pub fn bytes(&self) -> usize {
        self.body.len()
    }
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
    by_partition
        .into_iter()
        .map(|(partition, events)| Part {
            partition,
            items: events.len() as u32,
            body: PublishRequest { events }.encode_to_vec(),
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
        .map(|(partition, docs)| {
            // The UDP receiver made each document a single line.
            let mut body = Vec::with_capacity(docs.iter().map(|d| d.len() + 1).sum());
            for d in &docs {
                body.extend_from_slice(d.as_bytes());
                body.push(b'\n');
            }
            Part {
                partition,
                items: docs.len() as u32,
                body,
            }
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
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};

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

    fn split(resource_spans: Vec<ResourceSpans>, partitions: u32) -> Split {
        let request = ExportTraceServiceRequest { resource_spans }.encode_to_vec();
        split_traces(&request, partitions).expect("valid request")
    }

    fn decoded(part: &Part) -> ExportTraceServiceRequest {
        ExportTraceServiceRequest::decode(&part.body[..]).expect("a part is a request")
    }

    #[test]
    fn spans_of_one_trace_share_a_partition_across_requests() {
        let a = split(vec![rs((1..=20).map(|t| span(t, 1)).collect())], 4).parts;
        let b = split(vec![rs((1..=20).map(|t| span(t, 2)).collect())], 4).parts;
        let where_is = |parts: &[Part], trace: u8| {
            parts
                .iter()
                .find(|p| {
                    decoded(p)
                        .resource_spans
                        .iter()
                        .flat_map(|r| &r.scope_spans)
                        .flat_map(|s| &s.spans)
                        .any(|s| s.trace_id[0] == trace)
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
            let rs = decoded(p).resource_spans;
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
        let split = split(vec![rs(vec![bad, span(2, 2)])], 4);
        assert_eq!(split.rejected.count, 1);
        assert_eq!(split.received, 2);
        assert!(split
            .rejected
            .message
            .unwrap()
            .contains("trace_id must be 16 bytes"));
        assert_eq!(split.parts.iter().map(|p| p.items).sum::<u32>(), 1);
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
        let spans = split(vec![rs(vec![sp])], 16).parts;
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
