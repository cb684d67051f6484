//! OTLP -> X-Ray translation throughput, reported in spans per second.
//!
//! A request of web-like traces: per trace a SERVER span with HTTP attributes, a database
//! CLIENT span, an HTTP CLIENT span that failed with an exception, and an INTERNAL span, all
//! with random (remapped) trace ids, as the OpenTelemetry SDKs produce them.
//!
//!     cargo bench -p tidewater-benches --bench xray_translate

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value::Value as Av, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, SpanKind};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use tidewater_processors::xray::{translate, AnnotationMode, XrayConfig};

fn kv(key: &str, v: Av) -> KeyValue {
    KeyValue {
        key: key.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}

fn s(key: &str, v: &str) -> KeyValue {
    kv(key, Av::StringValue(v.into()))
}

fn i(key: &str, v: i64) -> KeyValue {
    kv(key, Av::IntValue(v))
}

/// `traces` web-like traces of 4 spans each.
fn request(traces: u64, start: u64) -> ExportTraceServiceRequest {
    let mut spans = Vec::new();
    for t in 0..traces {
        // splitmix-style spread so ids look random, like W3C ids.
        let hi = (t + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let trace_id = [hi.to_be_bytes(), (!hi).to_be_bytes()].concat();
        let id = |n: u64| (t * 4 + n + 1).to_be_bytes().to_vec();
        let span = |n: u64, parent: Option<u64>, kind: SpanKind, name: &str| Span {
            trace_id: trace_id.clone(),
            span_id: id(n),
            parent_span_id: parent.map(id).unwrap_or_default(),
            name: name.into(),
            kind: kind as i32,
            start_time_unix_nano: start + n * 1_000_000,
            end_time_unix_nano: start + 40_000_000,
            ..Default::default()
        };
        let mut server = span(0, None, SpanKind::Server, "GET /orders/{id}");
        server.attributes = vec![
            s("http.request.method", "GET"),
            s("url.scheme", "https"),
            s("server.address", "shop.example.com"),
            s("url.path", "/orders/42"),
            s("http.route", "/orders/{id}"),
            s("user_agent.original", "Mozilla/5.0 (X11; Linux x86_64)"),
            s("client.address", "203.0.113.9"),
            i("http.response.status_code", 502),
            s("app.order_id", "42"),
            s("enduser.id", "alice"),
        ];
        let mut db = span(1, Some(0), SpanKind::Client, "SELECT orders");
        db.attributes = vec![
            s("db.system", "postgresql"),
            s("db.name", "orders"),
            s("db.statement", "SELECT * FROM orders WHERE id = $1"),
            s("net.peer.name", "db.internal"),
            i("net.peer.port", 5432),
        ];
        let mut http = span(2, Some(0), SpanKind::Client, "GET");
        http.attributes = vec![
            s("http.request.method", "GET"),
            s("url.full", "http://inventory.internal:8080/stock/42"),
            s("server.address", "inventory.internal"),
            i("http.response.status_code", 503),
        ];
        http.status = Some(Status {
            code: StatusCode::Error as i32,
            message: "inventory answered 503".into(),
        });
        http.events = vec![Event {
            name: "exception".into(),
            time_unix_nano: start + 30_000_000,
            attributes: vec![
                s("exception.type", "InventoryUnavailable"),
                s("exception.message", "inventory answered 503"),
                s(
                    "exception.stacktrace",
                    "Traceback (most recent call last):\n  File \"/app/orders.py\", line 88, in get_order\n    stock = inventory.get(order.sku)\n  File \"/app/inventory.py\", line 12, in get\n    raise InventoryUnavailable(resp.text)\nInventoryUnavailable: inventory answered 503",
                ),
            ],
            ..Default::default()
        }];
        let mut render = span(3, Some(0), SpanKind::Internal, "render");
        render.attributes = vec![i("template.items", 3)];
        spans.extend([server, db, http, render]);
    }
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![
                    s("service.name", "orders-api"),
                    s("service.version", "1.4.2"),
                    s("cloud.provider", "aws"),
                    s("cloud.platform", "aws_ecs"),
                    s("cloud.region", "us-east-1"),
                    s("telemetry.sdk.language", "python"),
                ],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

fn bench(c: &mut Criterion) {
    let now = SystemTime::now();
    let start = now.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64 - 60_000_000_000;
    let traces = 256;
    let req = request(traces, start);
    let spans = traces * 4;
    let mut group = c.benchmark_group("xray_translate");
    group.throughput(Throughput::Elements(spans));
    for (label, annotations) in [
        ("no_annotations", AnnotationMode::None),
        ("index_all_attributes", AnnotationMode::All),
    ] {
        let config = XrayConfig { annotations };
        group.bench_function(label, |b| b.iter(|| translate(&req, &config, now)));
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Short runs: the machine is shared.
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
