//! Golden cases end to end through the pure path: OTLP request → windows → EMF documents.

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value as Av, AnyValue, KeyValue};
use opentelemetry_proto::tonic::metrics::v1::{
    metric::Data, number_data_point, AggregationTemporality, Gauge, Histogram, HistogramDataPoint,
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span::SpanKind, status::StatusCode, ResourceSpans, ScopeSpans, Span, Status,
};
use serde_json::{json, Value};

use super::declarations::{Declaration, Declarations, Rollup};
use super::document::{documents, DocLimits};
use super::*;
use crate::sinks::cloudwatch_logs::template::NameKind;

const SEC: u64 = 1_000_000_000;
/// 2023-11-14T22:13:00Z, on a minute boundary.
const T0: u64 = 1_699_999_980 * SEC;

fn kv(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue {
            value: Some(Av::StringValue(v.into())),
        }),
        ..Default::default()
    }
}

fn settings(keep_first_value: bool, declarations: &[Declaration]) -> Settings {
    Settings {
        namespace: "Shop".into(),
        window_ms: 60_000,
        keep_first_value,
        resource_dimensions: vec!["service.name".into()],
        log_stream: Template::parse("{service.name}", NameKind::LogStream).unwrap(),
        declarations: Declarations::new(declarations, Rollup::None).unwrap(),
        span_kinds: vec![SpanKind::Server as i32, SpanKind::Consumer as i32],
        latency_digits: 2,
    }
}

/// What the Python SDK sends: a cumulative counter and a cumulative histogram.
fn sdk_export(
    at: u64,
    requests: i64,
    latency_counts: Vec<u64>,
    latency_sum: f64,
) -> ExportMetricsServiceRequest {
    let count = latency_counts.iter().sum();
    let metrics = vec![
        Metric {
            name: "app.requests".into(),
            unit: "1".into(),
            data: Some(Data::Sum(Sum {
                data_points: vec![NumberDataPoint {
                    attributes: vec![kv("route", "/checkout")],
                    start_time_unix_nano: T0 - 10 * SEC,
                    time_unix_nano: at,
                    value: Some(number_data_point::Value::AsInt(requests)),
                    ..Default::default()
                }],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
                is_monotonic: true,
            })),
            ..Default::default()
        },
        Metric {
            name: "app.latency".into(),
            unit: "ms".into(),
            data: Some(Data::Histogram(Histogram {
                data_points: vec![HistogramDataPoint {
                    attributes: vec![kv("route", "/checkout")],
                    start_time_unix_nano: T0 - 10 * SEC,
                    time_unix_nano: at,
                    count,
                    sum: Some(latency_sum),
                    bucket_counts: latency_counts,
                    explicit_bounds: vec![0.0, 5.0, 10.0, 25.0],
                    min: Some(10.0),
                    max: Some(19.0),
                    ..Default::default()
                }],
                aggregation_temporality: AggregationTemporality::Cumulative as i32,
            })),
            ..Default::default()
        },
        Metric {
            name: "queue.depth".into(),
            unit: "{item}".into(),
            data: Some(Data::Gauge(Gauge {
                data_points: vec![NumberDataPoint {
                    time_unix_nano: at,
                    value: Some(number_data_point::Value::AsDouble(3.0)),
                    ..Default::default()
                }],
            })),
            ..Default::default()
        },
    ];
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "checkout"), kv("host.name", "h1")],
                ..Default::default()
            }),
            scope_metrics: vec![ScopeMetrics {
                metrics,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn flush(state: &mut State) -> Vec<Value> {
    let mut out = Vec::new();
    for (key, group) in state.windows.take_due(0, 0, 0, true) {
        for d in documents(&key, &group, 60, &DocLimits::default()) {
            out.push(serde_json::from_str(&d).unwrap());
        }
    }
    out
}

#[test]
fn golden_sdk_counter_histogram_and_gauge() {
    let s = settings(true, &[]);
    let mut state = State::default();
    let mut stats = Stats::default();
    // 10 requests with latencies 10..=19 ms: (5,10] has 1, (10,25] has 9.
    state.fold_metrics(
        &sdk_export(T0 + 5 * SEC, 10, vec![0, 0, 1, 9, 0], 145.0),
        &s,
        0,
        &mut stats,
    );
    assert_eq!(
        stats,
        Stats {
            points: 3,
            ..Default::default()
        }
    );
    let docs = flush(&mut state);
    assert_eq!(
        docs,
        vec![
            json!({
                "_aws": {"Timestamp": 1_699_999_980_000i64, "CloudWatchMetrics": [{
                    "Namespace": "Shop",
                    "Dimensions": [["route", "service.name"]],
                    "Metrics": [{"Name": "app.latency", "Unit": "Milliseconds"}, {"Name": "app.requests"}]}]},
                "route": "/checkout",
                "service.name": "checkout",
                "app.latency": {"Values": [10.0, 17.5], "Counts": [1, 9], "Max": 19.0, "Min": 10.0, "Count": 10, "Sum": 145.0},
                "app.requests": 10.0
            }),
            json!({
                "_aws": {"Timestamp": 1_699_999_980_000i64, "CloudWatchMetrics": [{
                    "Namespace": "Shop",
                    "Dimensions": [["service.name"]],
                    "Metrics": [{"Name": "queue.depth", "Unit": "Count"}]}]},
                "service.name": "checkout",
                "queue.depth": {"Values": [3.0], "Counts": [1], "Max": 3.0, "Min": 3.0, "Count": 1, "Sum": 3.0}
            }),
        ]
    );
}

#[test]
fn the_next_cumulative_export_sends_only_the_increase() {
    let s = settings(false, &[]);
    let mut state = State::default();
    let mut stats = Stats::default();
    state.fold_metrics(
        &sdk_export(T0 + 5 * SEC, 10, vec![0, 0, 1, 9, 0], 145.0),
        &s,
        0,
        &mut stats,
    );
    assert_eq!(stats.baselines, 2);
    // Only the gauge was sent from the first export.
    assert_eq!(flush(&mut state).len(), 1);
    state.fold_metrics(
        &sdk_export(T0 + 65 * SEC, 13, vec![0, 1, 1, 11, 0], 170.0),
        &s,
        0,
        &mut stats,
    );
    let docs = flush(&mut state);
    let doc = docs
        .iter()
        .find(|d| d.get("app.requests").is_some())
        .unwrap();
    assert_eq!(doc["_aws"]["Timestamp"], json!(1_700_000_040_000i64));
    assert_eq!(doc["app.requests"], json!(3.0));
    // min/max of a cumulative histogram cover its whole life, so the delta uses bucket bounds.
    assert_eq!(
        doc["app.latency"],
        json!({"Values": [2.5, 17.5], "Counts": [1, 2], "Max": 17.5, "Min": 2.5, "Count": 3, "Sum": 25.0})
    );
    // A redelivery of the same export sends nothing more.
    state.fold_metrics(
        &sdk_export(T0 + 65 * SEC, 13, vec![0, 1, 1, 11, 0], 170.0),
        &s,
        0,
        &mut stats,
    );
    assert_eq!(stats.stale, 2);
    assert!(flush(&mut state)
        .iter()
        .all(|d| d.get("app.requests").is_none()));
}

#[test]
fn state_survives_a_restart_without_a_spike() {
    let s = settings(true, &[]);
    let mut state = State::default();
    let mut stats = Stats::default();
    state.fold_metrics(
        &sdk_export(T0 + 5 * SEC, 10, vec![0, 0, 1, 9, 0], 145.0),
        &s,
        0,
        &mut stats,
    );
    flush(&mut state);
    // What the sink persists and reads back after a restart.
    let mut restored: State =
        serde_json::from_str(&serde_json::to_string(&state).unwrap()).unwrap();
    restored.fold_metrics(
        &sdk_export(T0 + 65 * SEC, 12, vec![0, 0, 1, 11, 0], 172.0),
        &s,
        0,
        &mut stats,
    );
    let docs = flush(&mut restored);
    let doc = docs
        .iter()
        .find(|d| d.get("app.requests").is_some())
        .unwrap();
    assert_eq!(
        doc["app.requests"],
        json!(2.0),
        "the increase, not the cumulative 12"
    );
    assert_eq!(doc["app.latency"]["Count"], json!(2));
}

#[test]
fn declarations_pick_metrics_and_dimensions() {
    let decls = [Declaration {
        metrics: vec!["app\\.requests".into()],
        dimensions: vec![vec!["service.name".into()]],
        unit: "Count".into(),
        ..Default::default()
    }];
    let s = settings(true, &decls);
    let mut state = State::default();
    let mut stats = Stats::default();
    state.fold_metrics(
        &sdk_export(T0 + 5 * SEC, 10, vec![0, 0, 1, 9, 0], 145.0),
        &s,
        0,
        &mut stats,
    );
    assert_eq!(stats.undeclared, 2);
    let docs = flush(&mut state);
    assert_eq!(
        docs,
        vec![json!({
            "_aws": {"Timestamp": 1_699_999_980_000i64, "CloudWatchMetrics": [{
                "Namespace": "Shop",
                "Dimensions": [["service.name"]],
                "Metrics": [{"Name": "app.requests", "Unit": "Count"}]}]},
            "service.name": "checkout",
            "app.requests": 10.0
        })]
    );
}

fn span(name: &str, kind: SpanKind, millis: u64, error: bool) -> Span {
    Span {
        name: name.into(),
        kind: kind as i32,
        start_time_unix_nano: T0 + SEC,
        end_time_unix_nano: T0 + SEC + millis * 1_000_000,
        status: Some(Status {
            code: if error {
                StatusCode::Error
            } else {
                StatusCode::Unset
            } as i32,
            message: String::new(),
        }),
        ..Default::default()
    }
}

#[test]
fn golden_span_metrics() {
    let s = settings(false, &[]);
    let request = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", "checkout")],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans: vec![
                    span("POST /checkout", SpanKind::Server, 12, false),
                    span("POST /checkout", SpanKind::Server, 31, false),
                    span("POST /checkout", SpanKind::Server, 12, true),
                    // Not an entry span: not a request.
                    span("SELECT orders", SpanKind::Client, 3, false),
                ],
                ..Default::default()
            }],
            ..Default::default()
        }],
    };
    let mut state = State::default();
    let mut stats = Stats::default();
    state.fold_spans(&request, &s, 0, &mut stats);
    assert_eq!(stats.spans, 3);
    let docs = flush(&mut state);
    let sets = json!([
        ["Service", "Operation", "StatusClass"],
        ["Service", "Operation"],
        ["Service"]
    ]);
    let metrics = json!([
        {"Name": "ErrorCount", "Unit": "Count"},
        {"Name": "Latency", "Unit": "Milliseconds"},
        {"Name": "RequestCount", "Unit": "Count"}
    ]);
    assert_eq!(
        docs,
        vec![
            json!({
                "_aws": {"Timestamp": 1_699_999_980_000i64, "CloudWatchMetrics": [{"Namespace": "Shop", "Dimensions": sets, "Metrics": metrics}]},
                "Operation": "POST /checkout", "Service": "checkout", "StatusClass": "error",
                "ErrorCount": 1.0,
                "Latency": {"Values": [12.0], "Counts": [1], "Max": 12.0, "Min": 12.0, "Count": 1, "Sum": 12.0},
                "RequestCount": 1.0
            }),
            json!({
                "_aws": {"Timestamp": 1_699_999_980_000i64, "CloudWatchMetrics": [{"Namespace": "Shop", "Dimensions": sets, "Metrics": metrics}]},
                "Operation": "POST /checkout", "Service": "checkout", "StatusClass": "unset",
                "ErrorCount": 0.0,
                "Latency": {"Values": [12.0, 31.0], "Counts": [1, 1], "Max": 31.0, "Min": 12.0, "Count": 2, "Sum": 43.0},
                "RequestCount": 2.0
            }),
        ]
    );
}
