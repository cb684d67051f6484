//! Halving a batch that encodes larger than one bus record, down to single items, so a trace
//! batch over the record limit travels as several records under the same key. Each half keeps
//! the resource and scope of what it carries, so it stands alone as an OTLP request. Pure.

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use tidewater_proto::events::v1::PublishRequest;
use tidewater_proto::Signal;

use crate::partition::data_points;

/// One signal's batch as the request message that travels on the bus.
#[derive(Debug, Clone, PartialEq)]
pub enum BusBatch {
    Traces(ExportTraceServiceRequest),
    Metrics(ExportMetricsServiceRequest),
    Logs(ExportLogsServiceRequest),
    Events(PublishRequest),
    /// X-Ray segment documents, one per line on the bus.
    XraySegments(Vec<String>),
}

impl BusBatch {
    /// A lane's payload as the message it encodes.
    pub fn decode(signal: Signal, payload: &[u8]) -> Result<BusBatch, String> {
        let invalid =
            |e: prost::DecodeError| format!("a {} batch does not decode: {e}", signal.label());
        Ok(match signal {
            Signal::Traces => {
                BusBatch::Traces(ExportTraceServiceRequest::decode(payload).map_err(invalid)?)
            }
            Signal::Metrics => {
                BusBatch::Metrics(ExportMetricsServiceRequest::decode(payload).map_err(invalid)?)
            }
            Signal::Logs => {
                BusBatch::Logs(ExportLogsServiceRequest::decode(payload).map_err(invalid)?)
            }
            Signal::Events => BusBatch::Events(PublishRequest::decode(payload).map_err(invalid)?),
            Signal::XraySegments => BusBatch::XraySegments(
                String::from_utf8_lossy(payload)
                    .lines()
                    .map(str::to_string)
                    .collect(),
            ),
            Signal::Unspecified => return Err("no signal".into()),
        })
    }

    pub fn encode_to_vec(&self) -> Vec<u8> {
        match self {
            BusBatch::Traces(m) => m.encode_to_vec(),
            BusBatch::Metrics(m) => m.encode_to_vec(),
            BusBatch::Logs(m) => m.encode_to_vec(),
            BusBatch::Events(m) => m.encode_to_vec(),
            // The UDP receiver made each document a single line.
            BusBatch::XraySegments(docs) => {
                let mut text = String::with_capacity(docs.iter().map(|d| d.len() + 1).sum());
                for d in docs {
                    text.push_str(d);
                    text.push('\n');
                }
                text.into_bytes()
            }
        }
    }

    /// Spans, data points, log records or events.
    pub fn items(&self) -> usize {
        match self {
            BusBatch::Traces(m) => m
                .resource_spans
                .iter()
                .flat_map(|r| &r.scope_spans)
                .map(|s| s.spans.len())
                .sum(),
            BusBatch::Metrics(m) => m
                .resource_metrics
                .iter()
                .flat_map(|r| &r.scope_metrics)
                .flat_map(|s| &s.metrics)
                .map(|m| data_points(m.data.as_ref()) as usize)
                .sum(),
            BusBatch::Logs(m) => m
                .resource_logs
                .iter()
                .flat_map(|r| &r.scope_logs)
                .map(|s| s.log_records.len())
                .sum(),
            BusBatch::Events(m) => m.events.len(),
            BusBatch::XraySegments(docs) => docs.len(),
        }
    }

    /// Two halves by item count (metrics by whole metric), or the batch itself back when it
    /// is a single indivisible item.
    pub fn split(self) -> Result<(BusBatch, BusBatch), BusBatch> {
        match self {
            BusBatch::Traces(m) => {
                let (a, b) = halve(m.resource_spans, |r| &mut r.scope_spans, |s| &mut s.spans);
                pair(a, b, |v| {
                    BusBatch::Traces(ExportTraceServiceRequest { resource_spans: v })
                })
            }
            BusBatch::Metrics(m) => {
                let (a, b) = halve(
                    m.resource_metrics,
                    |r| &mut r.scope_metrics,
                    |s| &mut s.metrics,
                );
                pair(a, b, |v| {
                    BusBatch::Metrics(ExportMetricsServiceRequest {
                        resource_metrics: v,
                    })
                })
            }
            BusBatch::Logs(m) => {
                let (a, b) = halve(
                    m.resource_logs,
                    |r| &mut r.scope_logs,
                    |s| &mut s.log_records,
                );
                pair(a, b, |v| {
                    BusBatch::Logs(ExportLogsServiceRequest { resource_logs: v })
                })
            }
            BusBatch::Events(mut m) => {
                let half = m.events.len() / 2;
                let b = m.events.split_off(half);
                pair(m.events, b, |v| {
                    BusBatch::Events(PublishRequest { events: v })
                })
            }
            BusBatch::XraySegments(mut docs) => {
                let b = docs.split_off(docs.len() / 2);
                pair(docs, b, BusBatch::XraySegments)
            }
        }
    }
}

fn pair<T>(
    a: Vec<T>,
    b: Vec<T>,
    make: impl Fn(Vec<T>) -> BusBatch,
) -> Result<(BusBatch, BusBatch), BusBatch> {
    if a.is_empty() || b.is_empty() {
        let mut all = a;
        all.extend(b);
        return Err(make(all));
    }
    Ok((make(a), make(b)))
}

/// Splits resource → scope → item trees so the first half holds half the items (rounded
/// down), cutting through a scope where needed; resource and scope headers are copied.
fn halve<R: Clone, S: Clone, I>(
    top: Vec<R>,
    scopes: impl Fn(&mut R) -> &mut Vec<S>,
    items: impl Fn(&mut S) -> &mut Vec<I>,
) -> (Vec<R>, Vec<R>) {
    let mut all = top;
    let total: usize = all
        .iter_mut()
        .flat_map(|r| {
            scopes(r)
                .iter_mut()
                .map(|s| items(s).len())
                .collect::<Vec<_>>()
        })
        .sum();
    let half = total / 2;
    let (mut left, mut right) = (Vec::new(), Vec::new());
    let mut taken = 0;
    for mut r in all {
        let (mut l_scopes, mut r_scopes) = (Vec::new(), Vec::new());
        for mut s in std::mem::take(scopes(&mut r)) {
            let n = items(&mut s).len();
            if taken + n <= half {
                taken += n;
                l_scopes.push(s);
            } else if taken >= half {
                r_scopes.push(s);
            } else {
                let rest = items(&mut s).split_off(half - taken);
                taken = half;
                let mut tail = s.clone();
                *items(&mut tail) = rest;
                l_scopes.push(s);
                r_scopes.push(tail);
            }
        }
        if !l_scopes.is_empty() {
            let mut head = r.clone();
            *scopes(&mut head) = l_scopes;
            left.push(head);
        }
        if !r_scopes.is_empty() {
            *scopes(&mut r) = r_scopes;
            right.push(r);
        }
    }
    (left, right)
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    use tidewater_proto::events::v1::Event;

    use super::*;

    fn spans(names: &[&str]) -> Vec<Span> {
        names
            .iter()
            .map(|n| Span {
                name: n.to_string(),
                ..Default::default()
            })
            .collect()
    }

    fn names(b: &BusBatch) -> Vec<Vec<Vec<String>>> {
        let BusBatch::Traces(m) = b else { panic!() };
        m.resource_spans
            .iter()
            .map(|r| {
                r.scope_spans
                    .iter()
                    .map(|s| s.spans.iter().map(|x| x.name.clone()).collect())
                    .collect()
            })
            .collect()
    }

    #[test]
    fn traces_split_through_a_scope_keep_resource_and_scope() {
        let resource = |n: &str| {
            Some(Resource {
                dropped_attributes_count: n.len() as u32,
                ..Default::default()
            })
        };
        let batch = BusBatch::Traces(ExportTraceServiceRequest {
            resource_spans: vec![
                ResourceSpans {
                    resource: resource("a"),
                    scope_spans: vec![ScopeSpans {
                        spans: spans(&["a1", "a2", "a3"]),
                        schema_url: "s1".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                ResourceSpans {
                    resource: resource("bb"),
                    scope_spans: vec![ScopeSpans {
                        spans: spans(&["b1", "b2"]),
                        schema_url: "s2".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
        });
        assert_eq!(batch.items(), 5);
        let (a, b) = batch.clone().split().unwrap();
        assert_eq!(names(&a), vec![vec![vec!["a1", "a2"]]]);
        assert_eq!(names(&b), vec![vec![vec!["a3"]], vec![vec!["b1", "b2"]]]);
        let BusBatch::Traces(bm) = &b else { panic!() };
        assert_eq!(
            bm.resource_spans[0].resource,
            resource("a"),
            "the cut scope keeps its resource"
        );
        assert_eq!(bm.resource_spans[0].scope_spans[0].schema_url, "s1");
        assert_eq!(a.items() + b.items(), 5);
    }

    #[test]
    fn a_single_item_cannot_be_split() {
        let one = BusBatch::Traces(ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                scope_spans: vec![ScopeSpans {
                    spans: spans(&["only"]),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        });
        assert_eq!(one.clone().split().unwrap_err(), one);
        let events = BusBatch::Events(PublishRequest {
            events: vec![Event::default(), Event::default(), Event::default()],
        });
        let (a, b) = events.split().unwrap();
        assert_eq!((a.items(), b.items()), (1, 2));
    }
}
