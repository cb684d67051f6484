//! What the OTLP sink sends, pure: a round's batches cut into items, items into calls within
//! the endpoint's limits, and a call's items back into one export request.
//!
//! An item is one scope with its resource (a `ResourceSpans` holding one `ScopeSpans`, and
//! likewise for metrics and logs), cut further when it alone would be over
//! `max_request_size` or `max_request_items`, down to a single span, metric or log record.
//! Any run of items is a valid request, so the engine can halve a call the endpoint finds too
//! large and bisect one it refuses as invalid down to the item to blame. Consecutive items of
//! one resource are sent as one `ResourceSpans` again, so cutting costs no bytes on the wire.

use std::ops::Range;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::logs::v1::{ResourceLogs, ScopeLogs};
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, Metric, ResourceMetrics, ScopeMetrics,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use prost::Message;
use serde_json::json;

use super::config::SignalKind;
use crate::decode::{Batch, SignalData};

/// One resource with one scope, or a piece of one.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Spans(ResourceSpans),
    Metrics(ResourceMetrics),
    Logs(ResourceLogs),
}

/// What the engine carries: a part, how many spans / data points / log records it holds,
/// its size inside a request, and the round it came from (partial-success records are written
/// with their round).
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    pub round: u64,
    pub part: Part,
    pub count: usize,
    pub size: usize,
}

/// One export request, typed: the HTTP transport encodes it, the gRPC one sends it as it is.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Traces(ExportTraceServiceRequest),
    Metrics(ExportMetricsServiceRequest),
    Logs(ExportLogsServiceRequest),
}

impl Part {
    pub fn signal(&self) -> SignalKind {
        match self {
            Part::Spans(_) => SignalKind::Traces,
            Part::Metrics(_) => SignalKind::Metrics,
            Part::Logs(_) => SignalKind::Logs,
        }
    }

    fn resource(&self) -> Option<&Resource> {
        match self {
            Part::Spans(r) => r.resource.as_ref(),
            Part::Metrics(r) => r.resource.as_ref(),
            Part::Logs(r) => r.resource.as_ref(),
        }
    }

    fn scope_name(&self) -> &str {
        let scope = match self {
            Part::Spans(r) => r.scope_spans.first().and_then(|s| s.scope.as_ref()),
            Part::Metrics(r) => r.scope_metrics.first().and_then(|s| s.scope.as_ref()),
            Part::Logs(r) => r.scope_logs.first().and_then(|s| s.scope.as_ref()),
        };
        scope.map_or("", |s| s.name.as_str())
    }

    fn encoded_len(&self) -> usize {
        match self {
            Part::Spans(r) => r.encoded_len(),
            Part::Metrics(r) => r.encoded_len(),
            Part::Logs(r) => r.encoded_len(),
        }
    }
}

impl Item {
    fn new(round: u64, part: Part, count: usize) -> Item {
        let size = field_size(part.encoded_len());
        Item {
            round,
            part,
            count,
            size,
        }
    }

    pub fn signal(&self) -> SignalKind {
        self.part.signal()
    }

    /// The resource's `service.name`, for messages and dead letters.
    pub fn service_name(&self) -> String {
        service_name(self.part.resource())
    }

    /// What a dead letter keeps: enough to find the data and send it again by hand (the part
    /// as OTLP/JSON).
    pub fn describe(&self) -> serde_json::Value {
        let otlp = match &self.part {
            Part::Spans(r) => serde_json::to_value(r),
            Part::Metrics(r) => serde_json::to_value(r),
            Part::Logs(r) => serde_json::to_value(r),
        }
        .unwrap_or_else(|e| json!(format!("not encodable as JSON: {e}")));
        json!({
            "signal": self.signal().name(),
            "service": self.service_name(),
            "scope": self.part.scope_name(),
            "items": self.count,
            "bytes": self.size,
            "otlp": otlp,
        })
    }
}

pub fn service_name(resource: Option<&Resource>) -> String {
    resource
        .into_iter()
        .flat_map(|r| &r.attributes)
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            Value::StringValue(s) => Some(s.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

/// Bytes a message of `len` takes as a repeated field of its parent: key, length, message.
fn field_size(len: usize) -> usize {
    1 + prost::length_delimiter_len(len) + len
}

/// Cuts `leaves` (spans, metrics, log records) into runs that fit `max_size` together with
/// `overhead` (their resource and scope) and hold at most `max_items` counted items; a leaf
/// too large alone is a run of its own (dead-lettered by the precheck).
fn runs(
    sizes: impl Iterator<Item = (usize, usize)>,
    overhead: usize,
    max_size: usize,
    max_items: usize,
) -> Vec<(Range<usize>, usize)> {
    let mut out = Vec::new();
    let (mut start, mut bytes, mut count) = (0, overhead, 0);
    let mut end = 0;
    for (i, (size, n)) in sizes.enumerate() {
        let size = field_size(size);
        if i > start && (bytes + size > max_size || count + n > max_items) {
            out.push((start..i, count));
            (start, bytes, count) = (i, overhead, 0);
        }
        bytes += size;
        count += n;
        end = i + 1;
    }
    if end > start {
        out.push((start..end, count));
    }
    out
}

/// The data points a metric holds: the unit of OTLP's `rejected_data_points`.
pub fn points(metric: &Metric) -> usize {
    match &metric.data {
        Some(Data::Gauge(g)) => g.data_points.len(),
        Some(Data::Sum(s)) => s.data_points.len(),
        Some(Data::Histogram(h)) => h.data_points.len(),
        Some(Data::ExponentialHistogram(h)) => h.data_points.len(),
        Some(Data::Summary(s)) => s.data_points.len(),
        None => 0,
    }
}

/// Every item of `signals` in `batches`, in bus order.
pub fn items(
    batches: &[Arc<Batch>],
    signals: &[SignalKind],
    round: u64,
    max_size: usize,
    max_items: usize,
) -> Vec<Item> {
    let mut out = Vec::new();
    for batch in batches {
        match &batch.data {
            SignalData::Traces(req) if signals.contains(&SignalKind::Traces) => {
                for rs in &req.resource_spans {
                    for ss in &rs.scope_spans {
                        let shell = ResourceSpans {
                            resource: rs.resource.clone(),
                            scope_spans: vec![ScopeSpans {
                                scope: ss.scope.clone(),
                                spans: Vec::new(),
                                schema_url: ss.schema_url.clone(),
                            }],
                            schema_url: rs.schema_url.clone(),
                        };
                        let overhead = field_size(shell.encoded_len()) + 8;
                        let sizes = ss.spans.iter().map(|s| (s.encoded_len(), 1));
                        for (range, count) in runs(sizes, overhead, max_size, max_items) {
                            let mut part = shell.clone();
                            part.scope_spans[0].spans = ss.spans[range].to_vec();
                            out.push(Item::new(round, Part::Spans(part), count));
                        }
                    }
                }
            }
            SignalData::Metrics(req) if signals.contains(&SignalKind::Metrics) => {
                for rm in &req.resource_metrics {
                    for sm in &rm.scope_metrics {
                        let shell = ResourceMetrics {
                            resource: rm.resource.clone(),
                            scope_metrics: vec![ScopeMetrics {
                                scope: sm.scope.clone(),
                                metrics: Vec::new(),
                                schema_url: sm.schema_url.clone(),
                            }],
                            schema_url: rm.schema_url.clone(),
                        };
                        let overhead = field_size(shell.encoded_len()) + 8;
                        let sizes = sm.metrics.iter().map(|m| (m.encoded_len(), points(m)));
                        for (range, count) in runs(sizes, overhead, max_size, max_items) {
                            let mut part = shell.clone();
                            part.scope_metrics[0].metrics = sm.metrics[range].to_vec();
                            out.push(Item::new(round, Part::Metrics(part), count));
                        }
                    }
                }
            }
            SignalData::Logs(req) if signals.contains(&SignalKind::Logs) => {
                for rl in &req.resource_logs {
                    for sl in &rl.scope_logs {
                        let shell = ResourceLogs {
                            resource: rl.resource.clone(),
                            scope_logs: vec![ScopeLogs {
                                scope: sl.scope.clone(),
                                log_records: Vec::new(),
                                schema_url: sl.schema_url.clone(),
                            }],
                            schema_url: rl.schema_url.clone(),
                        };
                        let overhead = field_size(shell.encoded_len()) + 8;
                        let sizes = sl.log_records.iter().map(|r| (r.encoded_len(), 1));
                        for (range, count) in runs(sizes, overhead, max_size, max_items) {
                            let mut part = shell.clone();
                            part.scope_logs[0].log_records = sl.log_records[range].to_vec();
                            out.push(Item::new(round, Part::Logs(part), count));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Cuts items into calls: one signal per call (each has its own URL), at most `max_size`
/// bytes and `max_items` spans / points / records, in order.
pub fn calls(items: Vec<Item>, max_size: usize, max_items: usize) -> Vec<Vec<Item>> {
    let mut out: Vec<Vec<Item>> = Vec::new();
    let (mut bytes, mut count) = (0, 0);
    for item in items {
        let fits = out.last().is_some_and(|call| {
            call[0].signal() == item.signal()
                && bytes + item.size <= max_size
                && count + item.count <= max_items
        });
        if !fits {
            out.push(Vec::new());
            (bytes, count) = (0, 0);
        }
        bytes += item.size;
        count += item.count;
        out.last_mut().expect("pushed").push(item);
    }
    out
}

/// The export request carrying `items` (all of one signal), consecutive items of one
/// resource under one `Resource*` again.
pub fn request(items: &[Item]) -> Request {
    match items.first().map(Item::signal) {
        Some(SignalKind::Metrics) => {
            let mut out: Vec<ResourceMetrics> = Vec::new();
            for item in items {
                let Part::Metrics(part) = &item.part else {
                    continue;
                };
                match out.last_mut() {
                    Some(last)
                        if last.resource == part.resource && last.schema_url == part.schema_url =>
                    {
                        last.scope_metrics
                            .extend(part.scope_metrics.iter().cloned())
                    }
                    _ => out.push(part.clone()),
                }
            }
            Request::Metrics(ExportMetricsServiceRequest {
                resource_metrics: out,
            })
        }
        Some(SignalKind::Logs) => {
            let mut out: Vec<ResourceLogs> = Vec::new();
            for item in items {
                let Part::Logs(part) = &item.part else {
                    continue;
                };
                match out.last_mut() {
                    Some(last)
                        if last.resource == part.resource && last.schema_url == part.schema_url =>
                    {
                        last.scope_logs.extend(part.scope_logs.iter().cloned())
                    }
                    _ => out.push(part.clone()),
                }
            }
            Request::Logs(ExportLogsServiceRequest { resource_logs: out })
        }
        _ => {
            let mut out: Vec<ResourceSpans> = Vec::new();
            for item in items {
                let Part::Spans(part) = &item.part else {
                    continue;
                };
                match out.last_mut() {
                    Some(last)
                        if last.resource == part.resource && last.schema_url == part.schema_url =>
                    {
                        last.scope_spans.extend(part.scope_spans.iter().cloned())
                    }
                    _ => out.push(part.clone()),
                }
            }
            Request::Traces(ExportTraceServiceRequest {
                resource_spans: out,
            })
        }
    }
}

impl Request {
    pub fn signal(&self) -> SignalKind {
        match self {
            Request::Traces(_) => SignalKind::Traces,
            Request::Metrics(_) => SignalKind::Metrics,
            Request::Logs(_) => SignalKind::Logs,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        match self {
            Request::Traces(r) => r.encode_to_vec(),
            Request::Metrics(r) => r.encode_to_vec(),
            Request::Logs(r) => r.encode_to_vec(),
        }
    }
}

/// A one-line account of a call, for the partial-success record: OTLP does not say which
/// items it rejected, so the record names what the request held.
pub fn summary(items: &[Item]) -> serde_json::Value {
    let mut services: Vec<String> = items.iter().map(Item::service_name).collect();
    services.sort();
    services.dedup();
    let mut scopes: Vec<String> = items
        .iter()
        .map(|i| i.part.scope_name().to_string())
        .collect();
    scopes.sort();
    scopes.dedup();
    json!({
        "signal": items.first().map_or("", |i| i.signal().name()),
        "sent": items.iter().map(|i| i.count).sum::<usize>(),
        "bytes": items.iter().map(|i| i.size).sum::<usize>(),
        "services": services,
        "scopes": scopes,
    })
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue};
    use opentelemetry_proto::tonic::logs::v1::LogRecord;
    use opentelemetry_proto::tonic::metrics::v1::{Gauge, NumberDataPoint};
    use opentelemetry_proto::tonic::trace::v1::Span;
    use tidewater_proto::Signal;

    pub fn resource(service: &str) -> Option<Resource> {
        Some(Resource {
            attributes: vec![KeyValue {
                key: "service.name".into(),
                value: Some(AnyValue {
                    value: Some(Value::StringValue(service.into())),
                }),
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    pub fn span(id: u8, pad: usize) -> Span {
        Span {
            trace_id: vec![id; 16],
            span_id: vec![id; 8],
            name: format!("span {id}{}", "x".repeat(pad)),
            ..Default::default()
        }
    }

    /// Traces of `services` (name, scopes of span counts).
    pub fn traces(services: &[(&str, &[usize])], pad: usize) -> Arc<Batch> {
        let mut id = 0u8;
        let resource_spans = services
            .iter()
            .map(|(name, scopes)| ResourceSpans {
                resource: resource(name),
                scope_spans: scopes
                    .iter()
                    .enumerate()
                    .map(|(i, n)| ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: format!("scope-{i}"),
                            ..Default::default()
                        }),
                        spans: (0..*n)
                            .map(|_| {
                                id += 1;
                                span(id, pad)
                            })
                            .collect(),
                        schema_url: String::new(),
                    })
                    .collect(),
                schema_url: String::new(),
            })
            .collect();
        batch(SignalData::Traces(ExportTraceServiceRequest {
            resource_spans,
        }))
    }

    pub fn batch(data: SignalData) -> Arc<Batch> {
        let signal = match &data {
            SignalData::Traces(_) => Signal::Traces,
            SignalData::Metrics(_) => Signal::Metrics,
            _ => Signal::Logs,
        };
        Arc::new(Batch {
            signal,
            record_id: vec![1],
            produced_at_unix_nano: 0,
            item_count: 0,
            data,
        })
    }

    fn span_ids(r: &Request) -> Vec<u8> {
        let Request::Traces(t) = r else { panic!() };
        t.resource_spans
            .iter()
            .flat_map(|rs| &rs.scope_spans)
            .flat_map(|ss| &ss.spans)
            .map(|s| s.span_id[0])
            .collect()
    }

    #[test]
    fn an_item_is_one_scope_with_its_resource_and_requests_merge_them_back() {
        let b = traces(&[("checkout", &[2, 1]), ("cart", &[3])], 0);
        let items = items(
            std::slice::from_ref(&b),
            &SignalKind::ALL,
            7,
            1 << 20,
            10_000,
        );
        assert_eq!(items.iter().map(|i| i.count).collect::<Vec<_>>(), [2, 1, 3]);
        assert!(items.iter().all(|i| i.round == 7));
        assert_eq!(items[0].service_name(), "checkout");
        let calls = calls(items, 1 << 20, 10_000);
        assert_eq!(calls.len(), 1);
        let r = request(&calls[0]);
        // The same request as the batch: one ResourceSpans per resource again.
        let SignalData::Traces(original) = &b.data else {
            panic!()
        };
        assert_eq!(r, Request::Traces(original.clone()));
        assert_eq!(span_ids(&r), [1, 2, 3, 4, 5, 6]);
        // Sizes add up to no less than the request.
        assert!(calls[0].iter().map(|i| i.size).sum::<usize>() >= r.encode().len());
    }

    #[test]
    fn scopes_over_the_limits_are_cut_and_calls_stay_within_them() {
        let b = traces(&[("checkout", &[40])], 1000);
        let max = 16 * 1024;
        let items = items(&[b], &SignalKind::ALL, 0, max, 10_000);
        assert!(items.len() >= 3, "{}", items.len());
        assert_eq!(items.iter().map(|i| i.count).sum::<usize>(), 40);
        for call in calls(items.clone(), max, 10_000) {
            assert!(request(&call).encode().len() <= max);
        }
        let by_count = super::items(&[traces(&[("a", &[25])], 0)], &SignalKind::ALL, 0, max, 10);
        assert_eq!(
            by_count.iter().map(|i| i.count).collect::<Vec<_>>(),
            [10, 10, 5]
        );
        let calls = calls(by_count, max, 12);
        assert_eq!(calls.len(), 3);
        // One span too large alone is an item of its own, over the limit.
        let big = super::items(
            &[traces(&[("a", &[1])], 20_000)],
            &SignalKind::ALL,
            0,
            max,
            10,
        );
        assert_eq!(big.len(), 1);
        assert!(big[0].size > max);
    }

    #[test]
    fn metrics_count_points_and_logs_records_and_signals_are_not_mixed() {
        let metrics = batch(SignalData::Metrics(ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: resource("checkout"),
                scope_metrics: vec![ScopeMetrics {
                    metrics: vec![Metric {
                        name: "app.requests".into(),
                        data: Some(Data::Gauge(Gauge {
                            data_points: vec![NumberDataPoint::default(); 3],
                        })),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }));
        let logs = batch(SignalData::Logs(ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: resource("checkout"),
                scope_logs: vec![ScopeLogs {
                    log_records: vec![LogRecord::default(); 2],
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }));
        let all = items(
            &[traces(&[("a", &[1])], 0), metrics.clone(), logs.clone()],
            &SignalKind::ALL,
            0,
            1 << 20,
            10_000,
        );
        assert_eq!(all.iter().map(|i| i.count).collect::<Vec<_>>(), [1, 3, 2]);
        let calls = calls(all, 1 << 20, 10_000);
        assert_eq!(
            calls.iter().map(|c| c[0].signal()).collect::<Vec<_>>(),
            SignalKind::ALL
        );
        let only_logs = items(&[metrics, logs], &[SignalKind::Logs], 0, 1 << 20, 10_000);
        assert_eq!(only_logs.len(), 1);
        assert_eq!(only_logs[0].describe()["signal"], "logs");
        assert_eq!(summary(&only_logs)["sent"], 2);
    }
}
