//! Realistic OTLP requests and analytics events, generated once from a seed.
//!
//! What an instrumented fleet of services sends: each request comes from one service (one
//! resource with the attributes an SDK and its AWS resource detectors set), holds several
//! traces of several spans each (an HTTP server span with database, AWS SDK, outbound HTTP and
//! messaging children), and a few percent of them fail with an `exception` event. Logs carry
//! trace context; metrics are counters, gauges and histograms with per-route attributes. The
//! same seed gives the same requests, so runs compare.

use std::time::{SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue,
};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Gauge, Histogram, HistogramDataPoint,
    Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event as SpanEvent, SpanKind};
use opentelemetry_proto::tonic::trace::v1::{status, ResourceSpans, ScopeSpans, Span, Status};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tidewater_proto::events::v1::{Event, PublishRequest};

/// (service, language, version) of the fleet the requests come from.
const SERVICES: &[(&str, &str, &str)] = &[
    ("frontend", "nodejs", "4.12.0"),
    ("checkout", "java", "2.31.4"),
    ("cart", "python", "1.8.2"),
    ("payments", "go", "3.2.0"),
    ("inventory", "java", "5.0.1"),
    ("users", "python", "2.14.0"),
    ("search", "go", "1.44.3"),
    ("recommendations", "python", "0.9.17"),
    ("shipping", "rust", "1.3.0"),
    ("email", "nodejs", "1.1.9"),
    ("auth", "go", "2.7.5"),
    ("catalog", "java", "7.3.0"),
];

const ROUTES: &[(&str, &str)] = &[
    ("GET", "/api/products/{id}"),
    ("GET", "/api/cart"),
    ("POST", "/api/cart/items"),
    ("POST", "/api/checkout"),
    ("GET", "/api/users/{id}/orders"),
    ("GET", "/api/search"),
    ("PUT", "/api/users/{id}/address"),
    ("GET", "/healthz"),
];

const QUERIES: &[&str] = &[
    "SELECT id, name, price_cents, currency, stock FROM products WHERE id = $1",
    "SELECT o.id, o.created_at, o.total_cents FROM orders o WHERE o.user_id = $1 ORDER BY o.created_at DESC LIMIT 20",
    "UPDATE carts SET updated_at = now(), items = $2 WHERE id = $1",
    "INSERT INTO order_items (order_id, product_id, quantity, price_cents) VALUES ($1, $2, $3, $4)",
    "SELECT count(*) FROM inventory_reservations WHERE product_id = $1 AND expires_at > now()",
];

const AWS_CALLS: &[(&str, &str, &str)] = &[
    ("DynamoDB", "GetItem", "sessions"),
    ("DynamoDB", "PutItem", "carts"),
    ("DynamoDB", "Query", "orders-by-user"),
    ("S3", "GetObject", "catalog-images"),
    ("SQS", "SendMessage", "order-events"),
    ("SecretsManager", "GetSecretValue", "payments/api-key"),
];

const ERRORS: &[(&str, &str)] = &[
    (
        "java.sql.SQLTransientConnectionException",
        "HikariPool-1 - Connection is not available, request timed out after 30000ms.",
    ),
    (
        "botocore.exceptions.ClientError",
        "An error occurred (ProvisionedThroughputExceededException) when calling the PutItem operation",
    ),
    (
        "TimeoutError",
        "upstream request to http://inventory:8080/api/reserve timed out after 2000 ms",
    ),
    (
        "KeyError",
        "'shipping_address'",
    ),
];

const EVENT_NAMES: &[&str] = &[
    "Product Viewed",
    "Product Added",
    "Cart Viewed",
    "Checkout Started",
    "Payment Info Entered",
    "Order Completed",
    "Signed In",
    "Search Performed",
];

pub fn kv(key: &str, value: any_value::Value) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(value) }),
        ..Default::default()
    }
}

fn s(key: &str, value: impl Into<String>) -> KeyValue {
    kv(key, any_value::Value::StringValue(value.into()))
}

fn i(key: &str, value: i64) -> KeyValue {
    kv(key, any_value::Value::IntValue(value))
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn hex(rng: &mut StdRng, bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rng.random::<u8>()))
        .collect()
}

/// Builds requests; one generator makes one reproducible stream of them.
pub struct Generator {
    rng: StdRng,
    now: u64,
}

impl Generator {
    pub fn new(seed: u64) -> Self {
        Generator {
            rng: StdRng::seed_from_u64(seed),
            now: now_nanos(),
        }
    }

    /// The resource of one task of a service, as an SDK with the ECS resource detector sets it.
    fn resource(&mut self, service: usize) -> Resource {
        let (name, language, version) = SERVICES[service % SERVICES.len()];
        let task = hex(&mut self.rng, 16);
        let region = ["us-east-1", "eu-west-1", "ap-southeast-2"][service % 3];
        Resource {
            attributes: vec![
                s("service.name", name),
                s("service.namespace", "shop"),
                s("service.version", version),
                s("service.instance.id", format!("{name}-{}", &task[..8])),
                s("deployment.environment.name", "production"),
                s("telemetry.sdk.name", "opentelemetry"),
                s("telemetry.sdk.language", language),
                s("telemetry.sdk.version", "1.38.0"),
                s("cloud.provider", "aws"),
                s("cloud.platform", "aws_ecs"),
                s("cloud.region", region),
                s("cloud.account.id", "123456789012"),
                s(
                    "aws.ecs.cluster.arn",
                    format!("arn:aws:ecs:{region}:123456789012:cluster/shop-prod"),
                ),
                s(
                    "aws.ecs.task.arn",
                    format!("arn:aws:ecs:{region}:123456789012:task/shop-prod/{task}"),
                ),
                s("aws.ecs.launchtype", "fargate"),
                s("container.id", hex(&mut self.rng, 32)),
                s("host.arch", "arm64"),
                s("process.runtime.name", language),
                i("process.pid", 1),
            ],
            ..Default::default()
        }
    }

    fn scope(name: &str) -> Option<InstrumentationScope> {
        Some(InstrumentationScope {
            name: name.to_string(),
            version: "0.59b0".to_string(),
            ..Default::default()
        })
    }

    /// One request of about `spans` spans from one service: whole traces of 2 to 14 spans.
    pub fn traces(&mut self, spans: usize) -> ExportTraceServiceRequest {
        let service = self.rng.random_range(0..SERVICES.len());
        let mut out = Vec::with_capacity(spans);
        while out.len() < spans {
            let room = spans - out.len();
            let size = self.rng.random_range(2..=14).min(room);
            self.trace(size, &mut out);
        }
        ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(self.resource(service)),
                scope_spans: vec![ScopeSpans {
                    scope: Self::scope("opentelemetry.instrumentation.auto"),
                    spans: out,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    /// A server span and `size - 1` children under it.
    fn trace(&mut self, size: usize, out: &mut Vec<Span>) {
        let trace_id: [u8; 16] = self.rng.random();
        let root_id: [u8; 8] = self.rng.random();
        let start = self.now - self.rng.random_range(0..5_000_000_000u64);
        let (method, route) = *ROUTES.choose(&mut self.rng).expect("not empty");
        let failed = self.rng.random_bool(0.05);
        let status_code = if failed {
            *[500i64, 502, 503].choose(&mut self.rng).expect("not empty")
        } else if self.rng.random_bool(0.03) {
            404
        } else {
            200
        };
        let duration = self.rng.random_range(2_000_000..250_000_000u64);
        let path = route
            .replace("{id}", &self.rng.random_range(1..100_000u32).to_string())
            .replace("{", "")
            .replace("}", "");
        let mut root = Span {
            trace_id: trace_id.to_vec(),
            span_id: root_id.to_vec(),
            name: format!("{method} {route}"),
            kind: SpanKind::Server as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: start + duration,
            attributes: vec![
                s("http.request.method", method),
                s("http.route", route),
                s("url.path", path),
                s("url.scheme", "http"),
                s("server.address", "shop.example.com"),
                i("server.port", 8080),
                s("network.protocol.version", "1.1"),
                s("client.address", "10.0.12.34"),
                s(
                    "user_agent.original",
                    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
                ),
                i("http.response.status_code", status_code),
                s("enduser.id", format!("u-{}", self.rng.random_range(1..50_000u32))),
            ],
            ..Default::default()
        };
        if status_code >= 500 {
            self.fail(&mut root, start + duration / 2);
        }
        out.push(root);
        for n in 1..size {
            let child_start = start + duration * n as u64 / (size as u64 + 1);
            let child_end = child_start + duration / (size as u64 + 2);
            let parent = out[out.len() - n].span_id.clone();
            let mut span = Span {
                trace_id: trace_id.to_vec(),
                span_id: self.rng.random::<[u8; 8]>().to_vec(),
                parent_span_id: parent,
                start_time_unix_nano: child_start,
                end_time_unix_nano: child_end,
                ..Default::default()
            };
            self.child(&mut span);
            if failed && n == size - 1 {
                self.fail(&mut span, child_end);
            }
            out.push(span);
        }
    }

    fn child(&mut self, span: &mut Span) {
        match self.rng.random_range(0..10) {
            0..=3 => {
                let query = *QUERIES.choose(&mut self.rng).expect("not empty");
                let op = query.split(' ').next().unwrap_or("SELECT");
                span.name = format!("{op} shop");
                span.kind = SpanKind::Client as i32;
                span.attributes = vec![
                    s("db.system.name", "postgresql"),
                    s("db.namespace", "shop"),
                    s("db.operation.name", op),
                    s("db.query.text", query),
                    s(
                        "server.address",
                        "shop-db.cluster-c9x.us-east-1.rds.amazonaws.com",
                    ),
                    i("server.port", 5432),
                ];
            }
            4..=5 => {
                let (service, method, resource) =
                    *AWS_CALLS.choose(&mut self.rng).expect("not empty");
                span.name = format!("{service}.{method}");
                span.kind = SpanKind::Client as i32;
                span.attributes = vec![
                    s("rpc.system", "aws-api"),
                    s("rpc.service", service),
                    s("rpc.method", method),
                    s("cloud.region", "us-east-1"),
                    s("aws.request_id", hex(&mut self.rng, 16)),
                    i("http.response.status_code", 200),
                ];
                if service == "DynamoDB" {
                    span.attributes.push(kv(
                        "aws.dynamodb.table_names",
                        any_value::Value::ArrayValue(ArrayValue {
                            values: vec![AnyValue {
                                value: Some(any_value::Value::StringValue(resource.into())),
                            }],
                        }),
                    ));
                }
            }
            6..=7 => {
                let peer = SERVICES.choose(&mut self.rng).expect("not empty").0;
                span.name = "GET".into();
                span.kind = SpanKind::Client as i32;
                span.attributes = vec![
                    s("http.request.method", "GET"),
                    s(
                        "url.full",
                        format!(
                            "http://{peer}:8080/internal/v1/lookup?id={}",
                            self.rng.random::<u32>()
                        ),
                    ),
                    s("server.address", peer),
                    i("server.port", 8080),
                    i("http.response.status_code", 200),
                ];
            }
            8 => {
                span.name = "order-events publish".into();
                span.kind = SpanKind::Producer as i32;
                span.attributes = vec![
                    s("messaging.system", "aws_sqs"),
                    s("messaging.destination.name", "order-events"),
                    s("messaging.operation.type", "send"),
                    s("messaging.message.id", hex(&mut self.rng, 16)),
                ];
            }
            _ => {
                span.name = "render_response".into();
                span.kind = SpanKind::Internal as i32;
                span.attributes = vec![s("code.function.name", "views.render_response")];
                span.events.push(SpanEvent {
                    time_unix_nano: span.start_time_unix_nano + 1000,
                    name: "cache.miss".into(),
                    attributes: vec![s("cache.key", format!("page:{}", self.rng.random::<u16>()))],
                    ..Default::default()
                });
            }
        }
    }

    fn fail(&mut self, span: &mut Span, at: u64) {
        let (kind, message) = *ERRORS.choose(&mut self.rng).expect("not empty");
        span.status = Some(Status {
            code: status::StatusCode::Error as i32,
            message: message.to_string(),
        });
        let stack = (0..8)
            .map(|n| {
                format!(
                    "\tat com.example.shop.Service{n}.handle(Service{n}.java:{})",
                    40 + n * 7
                )
            })
            .collect::<Vec<_>>()
            .join("\n");
        span.events.push(SpanEvent {
            time_unix_nano: at,
            name: "exception".into(),
            attributes: vec![
                s("exception.type", kind),
                s("exception.message", message),
                s(
                    "exception.stacktrace",
                    format!("{kind}: {message}\n{stack}"),
                ),
            ],
            ..Default::default()
        });
    }

    /// `records` log records from one service, most with trace context.
    pub fn logs(&mut self, records: usize) -> ExportLogsServiceRequest {
        let service = self.rng.random_range(0..SERVICES.len());
        let log_records = (0..records)
            .map(|_| {
                let (method, route) = *ROUTES.choose(&mut self.rng).expect("not empty");
                let (severity, text, body) = match self.rng.random_range(0..20) {
                    0 => {
                        let (kind, message) = *ERRORS.choose(&mut self.rng).expect("not empty");
                        (
                            SeverityNumber::Error,
                            "ERROR",
                            format!("request failed: {kind}: {message}"),
                        )
                    }
                    1..=2 => (
                        SeverityNumber::Warn,
                        "WARN",
                        format!(
                            "slow query took {} ms on {route}",
                            self.rng.random_range(500..3000)
                        ),
                    ),
                    _ => (
                        SeverityNumber::Info,
                        "INFO",
                        format!(
                            "{method} {route} 200 {} ms user=u-{}",
                            self.rng.random_range(1..300),
                            self.rng.random_range(1..50_000)
                        ),
                    ),
                };
                let traced = self.rng.random_bool(0.7);
                let time = self.now - self.rng.random_range(0..5_000_000_000u64);
                LogRecord {
                    time_unix_nano: time,
                    observed_time_unix_nano: time + 1_000_000,
                    severity_number: severity as i32,
                    severity_text: text.into(),
                    body: Some(AnyValue {
                        value: Some(any_value::Value::StringValue(body)),
                    }),
                    attributes: vec![
                        s("log.logger", "shop.http.access"),
                        s("code.function.name", "handle_request"),
                        s("http.route", route),
                        s(
                            "thread.name",
                            format!("worker-{}", self.rng.random_range(0..16)),
                        ),
                    ],
                    trace_id: if traced {
                        self.rng.random::<[u8; 16]>().to_vec()
                    } else {
                        Vec::new()
                    },
                    span_id: if traced {
                        self.rng.random::<[u8; 8]>().to_vec()
                    } else {
                        Vec::new()
                    },
                    flags: if traced { 1 } else { 0 },
                    ..Default::default()
                }
            })
            .collect();
        ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(self.resource(service)),
                scope_logs: vec![ScopeLogs {
                    scope: Self::scope("shop.logging"),
                    log_records,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    /// About `points` data points from one service: request counters and duration histograms
    /// per route and status, and a few gauges.
    pub fn metrics(&mut self, points: usize) -> ExportMetricsServiceRequest {
        let service = self.rng.random_range(0..SERVICES.len());
        let start = self.now - 60_000_000_000;
        let mut metrics = Vec::new();
        let mut made = 0;
        let attrs = |rng: &mut StdRng| {
            let (method, route) = *ROUTES.choose(rng).expect("not empty");
            vec![
                s("http.request.method", method),
                s("http.route", route),
                i(
                    "http.response.status_code",
                    *[200i64, 200, 200, 404, 500].choose(rng).expect("not empty"),
                ),
            ]
        };
        while made < points {
            let n = (points - made).min(self.rng.random_range(4..=16));
            let data = match metrics.len() % 3 {
                0 => metric::Data::Sum(Sum {
                    data_points: (0..n)
                        .map(|_| NumberDataPoint {
                            attributes: attrs(&mut self.rng),
                            start_time_unix_nano: start,
                            time_unix_nano: self.now,
                            value: Some(number_data_point::Value::AsInt(
                                self.rng.random_range(0..100_000),
                            )),
                            ..Default::default()
                        })
                        .collect(),
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                    is_monotonic: true,
                }),
                1 => metric::Data::Histogram(Histogram {
                    data_points: (0..n)
                        .map(|_| {
                            let bucket_counts: Vec<u64> =
                                (0..15).map(|_| self.rng.random_range(0..500)).collect();
                            HistogramDataPoint {
                                attributes: attrs(&mut self.rng),
                                start_time_unix_nano: start,
                                time_unix_nano: self.now,
                                count: bucket_counts.iter().sum(),
                                sum: Some(self.rng.random_range(0.0..10_000.0)),
                                bucket_counts,
                                explicit_bounds: vec![
                                    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0,
                                    2.5, 5.0, 7.5, 10.0,
                                ],
                                min: Some(0.001),
                                max: Some(self.rng.random_range(1.0..12.0)),
                                ..Default::default()
                            }
                        })
                        .collect(),
                    aggregation_temporality: AggregationTemporality::Cumulative as i32,
                }),
                _ => metric::Data::Gauge(Gauge {
                    data_points: (0..n)
                        .map(|k| NumberDataPoint {
                            attributes: vec![
                                s("state", ["used", "free", "cached"][k % 3]),
                                i("cpu", k as i64),
                            ],
                            time_unix_nano: self.now,
                            value: Some(number_data_point::Value::AsDouble(
                                self.rng.random_range(0.0..1.0),
                            )),
                            ..Default::default()
                        })
                        .collect(),
                }),
            };
            let (name, unit) = match &data {
                metric::Data::Sum(_) => ("http.server.requests", "{request}"),
                metric::Data::Histogram(_) => ("http.server.request.duration", "s"),
                _ => ("system.memory.utilization", "1"),
            };
            metrics.push(Metric {
                name: name.into(),
                description: format!("{name} as measured by the instrumentation"),
                unit: unit.into(),
                data: Some(data),
                ..Default::default()
            });
            made += n;
        }
        ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(self.resource(service)),
                scope_metrics: vec![ScopeMetrics {
                    scope: Self::scope("opentelemetry.instrumentation.http"),
                    metrics,
                    ..Default::default()
                }],
                ..Default::default()
            }],
        }
    }

    /// `count` analytics events as JSON objects, as `POST /v1/events` takes them.
    pub fn events_json(&mut self, count: usize) -> Vec<serde_json::Value> {
        (0..count)
            .map(|_| {
                let name = *EVENT_NAMES.choose(&mut self.rng).expect("not empty");
                let known = self.rng.random_bool(0.6);
                let id = self.rng.random_range(1..50_000u32);
                let category = ["books", "garden", "kitchen", "toys"][id as usize % 4];
                let mut event = json!({
                    "message_id": format!("m-{}", hex(&mut self.rng, 12)),
                    "name": name,
                    "timestamp": format_rfc3339(self.now - self.rng.random_range(0..5_000_000_000u64)),
                    "properties": {
                        "product_id": format!("sku-{}", self.rng.random_range(1000..9999)),
                        "category": category,
                        "price": self.rng.random_range(100..20_000) as f64 / 100.0,
                        "currency": "EUR",
                        "quantity": self.rng.random_range(1..4),
                    },
                    "context": {
                        "app": {"name": "shop-ios", "version": "8.14.1", "build": "20814"},
                        "device": {"type": "ios", "model": "iPhone15,2", "manufacturer": "Apple"},
                        "os": {"name": "iOS", "version": "17.5.1"},
                        "locale": "de-DE",
                        "timezone": "Europe/Berlin",
                        "library": {"name": "analytics-ios", "version": "1.5.11"},
                    },
                });
                let key = if known { "user_id" } else { "anonymous_id" };
                event[key] = json!(if known { format!("u-{id}") } else { format!("anon-{}", hex(&mut self.rng, 8)) });
                event
            })
            .collect()
    }

    /// The same events as [`Generator::events_json`], as the gRPC `Publish` request.
    pub fn events(&mut self, count: usize) -> PublishRequest {
        let events = self
            .events_json(count)
            .iter()
            .map(event_from_json)
            .collect();
        PublishRequest { events }
    }
}

/// Converts the generator's JSON form to the proto form (the fields it sets, nothing else).
fn event_from_json(v: &serde_json::Value) -> Event {
    let str_of = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let struct_of = |k: &str| match tidewater_proto::json::from_json(&v[k]).kind {
        Some(prost_types::value::Kind::StructValue(s)) => Some(s),
        _ => None,
    };
    Event {
        message_id: str_of("message_id"),
        name: str_of("name"),
        user_id: str_of("user_id"),
        anonymous_id: str_of("anonymous_id"),
        timestamp: Some(prost_types::Timestamp {
            seconds: (now_nanos() / 1_000_000_000) as i64,
            nanos: 0,
        }),
        properties: struct_of("properties"),
        context: struct_of("context"),
        received_at: None,
    }
}

fn format_rfc3339(nanos: u64) -> String {
    chrono::DateTime::from_timestamp_nanos(nanos as i64)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn requests_hold_the_asked_number_of_items() {
        let mut g = Generator::new(7);
        let t = g.traces(100);
        let spans: usize = t.resource_spans[0]
            .scope_spans
            .iter()
            .map(|s| s.spans.len())
            .sum();
        assert_eq!(spans, 100);
        let l = g.logs(50);
        assert_eq!(l.resource_logs[0].scope_logs[0].log_records.len(), 50);
        let m = g.metrics(100);
        let points: u32 = m.resource_metrics[0].scope_metrics[0]
            .metrics
            .iter()
            .map(|m| tidewater_collector::partition::data_points(m.data.as_ref()))
            .sum();
        assert_eq!(points, 100);
        assert_eq!(g.events(10).events.len(), 10);
        // A realistic span is a few hundred bytes, not a handful.
        let per_span = t.encoded_len() / 100;
        assert!((150..1000).contains(&per_span), "{per_span} bytes per span");
    }

    #[test]
    fn same_seed_same_requests() {
        let a = Generator {
            rng: StdRng::seed_from_u64(1),
            now: 1_700_000_000_000_000_000,
        }
        .traces(20);
        let b = Generator {
            rng: StdRng::seed_from_u64(1),
            now: 1_700_000_000_000_000_000,
        }
        .traces(20);
        assert_eq!(a, b);
    }

    #[test]
    fn events_pass_the_collectors_validation() {
        let mut g = Generator::new(3);
        let limits = tidewater_collector::events::Limits {
            max_event_size: 64 * 1024,
        };
        for (n, v) in g.events_json(20).iter().enumerate() {
            let e = tidewater_collector::events::from_json(v, n).expect("parses");
            tidewater_collector::events::validate(e, n, SystemTime::now(), &limits).expect("valid");
        }
        for (n, e) in g.events(20).events.into_iter().enumerate() {
            tidewater_collector::events::validate(e, n, SystemTime::now(), &limits).expect("valid");
        }
    }
}
