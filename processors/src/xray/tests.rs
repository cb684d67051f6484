//! Golden tests: spans built in Rust, expected documents as JSON literals compared
//! as `serde_json::Value`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value::Value as Av, AnyValue, ArrayValue, KeyValue,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::span::{Event, SpanKind};
use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, Status};
use serde_json::{json, Value};

use super::trace_id::{MAX_TRACE_ID_AGE_SECS, MAX_TRACE_ID_SKEW_SECS, REMAP_WINDOW_SECS};
use super::*;

const NOW: u64 = 1_700_000_000; // 2023-11-14T22:13:20Z
/// First 4 bytes = 0x6553f100 = NOW: an X-Ray-valid id.
const VALID_TRACE: [u8; 16] = [
    0x65, 0x53, 0xf1, 0x00, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11, 0x12, 0x13, 0x14, 0x15,
];
const VALID_XRAY: &str = "1-6553f100-0a0b0c0d0e0f101112131415";
/// A random W3C id (epoch part 0xdeadbeef = year 2088).
const RANDOM_TRACE: [u8; 16] = [
    0xde, 0xad, 0xbe, 0xef, 0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d,
];
const RANDOM_HEX: &str = "deadbeef4bf92f3577b34da6a3ce929d";
/// Its remapped X-Ray id: boundary 0x654b97b2 (1699452850) <= start <= NOW.
const RANDOM_XRAY: &str = "1-654b97b2-4bf92f3577b34da6a3ce929d";
const START: u64 = 1_699_999_990_123_456_789;
const END: u64 = 1_699_999_990_373_456_000;
const START_S: f64 = 1_699_999_990.123456;
const END_S: f64 = 1_699_999_990.373456;

fn now() -> SystemTime {
    at(NOW)
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

fn kv(key: &str, v: Av) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    }
}
fn s(key: &str, v: &str) -> KeyValue {
    kv(key, Av::StringValue(v.to_string()))
}
fn i(key: &str, v: i64) -> KeyValue {
    kv(key, Av::IntValue(v))
}
fn f(key: &str, v: f64) -> KeyValue {
    kv(key, Av::DoubleValue(v))
}
fn b(key: &str, v: bool) -> KeyValue {
    kv(key, Av::BoolValue(v))
}
fn strs(key: &str, v: &[&str]) -> KeyValue {
    kv(
        key,
        Av::ArrayValue(ArrayValue {
            values: v
                .iter()
                .map(|x| AnyValue {
                    value: Some(Av::StringValue(x.to_string())),
                })
                .collect(),
        }),
    )
}

fn span(id: u64, parent: Option<u64>, kind: SpanKind, name: &str) -> Span {
    Span {
        trace_id: VALID_TRACE.to_vec(),
        span_id: id.to_be_bytes().to_vec(),
        parent_span_id: parent.map(|p| p.to_be_bytes().to_vec()).unwrap_or_default(),
        name: name.to_string(),
        kind: kind as i32,
        start_time_unix_nano: START,
        end_time_unix_nano: END,
        ..Default::default()
    }
}

fn attrs(mut sp: Span, a: Vec<KeyValue>) -> Span {
    sp.attributes = a;
    sp
}

fn request(groups: Vec<(Vec<KeyValue>, Vec<Span>)>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: groups
            .into_iter()
            .map(|(res, spans)| ResourceSpans {
                resource: Some(Resource {
                    attributes: res,
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans,
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect(),
    }
}

fn svc(name: &str) -> Vec<KeyValue> {
    vec![s("service.name", name)]
}

fn run_at(
    req: &ExportTraceServiceRequest,
    cfg: &XrayConfig,
    now: SystemTime,
) -> (Vec<Value>, TranslationStats) {
    let t = translate(req, cfg, now);
    assert_eq!(t.stats.documents, t.documents.len());
    let docs = t
        .documents
        .iter()
        .map(|d| {
            assert!(
                d.len() <= MAX_DOCUMENT_BYTES,
                "document of {} bytes",
                d.len()
            );
            serde_json::from_str(d).unwrap()
        })
        .collect();
    (docs, t.stats)
}

fn run(req: &ExportTraceServiceRequest) -> Vec<Value> {
    run_at(req, &XrayConfig::default(), now()).0
}

/// Translates one span (service `svc`) and returns its single document.
fn one(sp: Span) -> Value {
    let docs = run(&request(vec![(svc("svc"), vec![sp])]));
    assert_eq!(docs.len(), 1, "{docs:#?}");
    docs.into_iter().next().unwrap()
}

fn assert_json(actual: &Value, expected: &Value) {
    assert_eq!(
        actual,
        expected,
        "\nactual:   {}\nexpected: {}",
        serde_json::to_string_pretty(actual).unwrap(),
        serde_json::to_string_pretty(expected).unwrap()
    );
}

// ---------------------------------------------------------------- trace ids

#[test]
fn xray_trace_id_valid_is_kept() {
    let x = xray_trace_id(&VALID_TRACE, START, now()).unwrap();
    assert_eq!(
        x,
        XrayTraceId {
            id: VALID_XRAY.into(),
            remapped: false
        }
    );
    // Edges of X-Ray's window relative to `now`.
    let with_epoch = |e: u32| {
        let mut t = VALID_TRACE;
        t[..4].copy_from_slice(&e.to_be_bytes());
        xray_trace_id(&t, START, now()).unwrap()
    };
    let oldest = (NOW - MAX_TRACE_ID_AGE_SECS) as u32;
    assert!(!with_epoch(oldest).remapped);
    assert_eq!(
        with_epoch(oldest).id,
        format!("1-{oldest:08x}-0a0b0c0d0e0f101112131415")
    );
    assert!(with_epoch(oldest - 1).remapped);
    assert!(!with_epoch((NOW + MAX_TRACE_ID_SKEW_SECS) as u32).remapped);
    assert!(with_epoch((NOW + MAX_TRACE_ID_SKEW_SECS + 1) as u32).remapped);
    // Span id: 16 hex chars.
    assert_eq!(
        one(span(0xab, None, SpanKind::Server, "x"))["id"],
        "00000000000000ab"
    );
}

#[test]
fn xray_trace_id_random_is_remapped_deterministically() {
    let x = xray_trace_id(&RANDOM_TRACE, START, now()).unwrap();
    assert_eq!(
        x,
        XrayTraceId {
            id: RANDOM_XRAY.into(),
            remapped: true
        }
    );
    // Same id for spans starting hours apart, translated hours apart.
    for (start_s, now_s) in [
        (NOW - 10, NOW),
        (NOW + 2 * 3600, NOW + 3 * 3600),
        (NOW + 7 * 3600, NOW + 7 * 3600 + 5),
        (NOW - 3 * 86_400, NOW + 86_400),
    ] {
        let y = xray_trace_id(&RANDOM_TRACE, start_s * 1_000_000_000, at(now_s)).unwrap();
        assert_eq!(y, x, "start {start_s} now {now_s}");
    }
    // Spans of the trace starting on the other side of its boundary get the next
    // boundary (documented split), which is again valid.
    let next = 1_699_452_850 + REMAP_WINDOW_SECS;
    let y = xray_trace_id(&RANDOM_TRACE, next * 1_000_000_000, at(next + 60)).unwrap();
    assert_eq!(y.id, format!("1-{next:08x}-4bf92f3577b34da6a3ce929d"));
    // Too old to get an epoch X-Ray accepts: dropped.
    let old = (NOW - 40 * 86_400) * 1_000_000_000;
    assert_eq!(xray_trace_id(&RANDOM_TRACE, old, now()), None);
    assert_eq!(xray_trace_id(&[0; 16], START, now()), None);
}

#[test]
fn xray_trace_id_remap_properties() {
    // Many pseudo-random ids and start times: the epoch is a boundary in
    // (start - 21d, start], accepted by X-Ray, and the random part is kept.
    let mut seed = 7u64;
    for _ in 0..2000 {
        seed = super::trace_id::mix64(seed);
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&(seed | 0xf000_0000_0000_0000).to_be_bytes());
        id[8..].copy_from_slice(&super::trace_id::mix64(seed).to_be_bytes());
        let start_s = NOW - seed % (8 * 86_400);
        let x = xray_trace_id(&id, start_s * 1_000_000_000, now()).unwrap();
        assert!(x.remapped);
        let epoch = u64::from_str_radix(&x.id[2..10], 16).unwrap();
        assert!(epoch <= start_s && epoch + REMAP_WINDOW_SECS > start_s);
        assert!(epoch + MAX_TRACE_ID_AGE_SECS >= NOW && epoch <= NOW + MAX_TRACE_ID_SKEW_SECS);
        assert_eq!(&x.id[11..], &super::trace_id::hex(&id[4..]));
        // Any later span of the trace before the next boundary maps identically.
        let later = start_s + (epoch + REMAP_WINDOW_SECS - 1 - start_s).min(6 * 3600);
        let y = xray_trace_id(&id, later * 1_000_000_000, at(later + 30)).unwrap();
        assert_eq!(x, y);
    }
    // A span starting ahead of `now` (skewed clock) still gets an accepted epoch.
    let start = 1_699_452_850 + REMAP_WINDOW_SECS + 100;
    let x = xray_trace_id(&RANDOM_TRACE, start * 1_000_000_000, at(start - 3600)).unwrap();
    assert_eq!(x.id, RANDOM_XRAY);
}

#[test]
fn xray_remapped_trace_same_id_across_batches() {
    // Root in one batch, a child in another batch hours later.
    let root = Span {
        trace_id: RANDOM_TRACE.to_vec(),
        ..span(1, None, SpanKind::Server, "GET /")
    };
    let child = Span {
        trace_id: RANDOM_TRACE.to_vec(),
        start_time_unix_nano: START + 3 * 3_600_000_000_000,
        end_time_unix_nano: START + 3 * 3_600_000_000_000 + 1_000,
        ..span(2, Some(1), SpanKind::Client, "call")
    };
    let cfg = XrayConfig::default();
    let (a, sa) = run_at(&request(vec![(svc("svc"), vec![root])]), &cfg, now());
    let (b, sb) = run_at(
        &request(vec![(svc("svc"), vec![child])]),
        &cfg,
        at(NOW + 4 * 3600),
    );
    assert_eq!((sa.remapped_trace_ids, sb.remapped_trace_ids), (1, 1));
    assert_json(
        &a[0],
        &json!({
            "name": "svc", "id": "0000000000000001", "trace_id": RANDOM_XRAY,
            "start_time": START_S, "end_time": END_S,
            "annotations": {"otel_trace_id": RANDOM_HEX},
            "metadata": {"default": {"otel.resource.service.name": "svc"}}
        }),
    );
    assert_json(
        &b[0],
        &json!({
            "name": "call", "id": "0000000000000002", "trace_id": RANDOM_XRAY,
            "parent_id": "0000000000000001", "type": "subsegment", "namespace": "remote",
            "start_time": START_S + 10_800.0, "end_time": START_S + 10_800.000001,
            "annotations": {"otel_trace_id": RANDOM_HEX},
            "metadata": {"default": {"otel.resource.service.name": "svc"}}
        }),
    );
}

#[test]
fn xray_invalid_spans_are_dropped() {
    let ok = span(1, None, SpanKind::Server, "ok");
    let bad_trace_len = Span {
        trace_id: vec![1, 2, 3],
        ..span(2, None, SpanKind::Server, "x")
    };
    let zero_trace = Span {
        trace_id: vec![0; 16],
        ..span(3, None, SpanKind::Server, "x")
    };
    let zero_span = Span {
        span_id: vec![0; 8],
        ..span(4, None, SpanKind::Server, "x")
    };
    let too_old_random = Span {
        trace_id: RANDOM_TRACE.to_vec(),
        start_time_unix_nano: (NOW - 40 * 86_400) * 1_000_000_000,
        ..span(5, None, SpanKind::Server, "x")
    };
    let req = request(vec![(
        svc("svc"),
        vec![ok, bad_trace_len, zero_trace, zero_span, too_old_random],
    )]);
    let (docs, stats) = run_at(&req, &XrayConfig::default(), now());
    assert_eq!(docs.len(), 1);
    assert_eq!(
        (stats.spans, stats.documents, stats.dropped_spans),
        (5, 1, 4)
    );
}

// ---------------------------------------------------------------- structure

#[test]
fn xray_segments_and_nested_subsegments() {
    let spans = vec![
        span(1, None, SpanKind::Server, "GET /"),
        span(2, Some(1), SpanKind::Internal, "render"),
        attrs(
            span(3, Some(2), SpanKind::Client, "GET"),
            vec![s("peer.service", "inventory")],
        ),
        span(4, Some(1), SpanKind::Consumer, "consume in-process"),
        // SERVER with its parent in the batch: still its own segment.
        span(5, Some(3), SpanKind::Server, "inventory handler"),
        // CONSUMER with a remote parent: a local root, so a segment.
        Span {
            flags: 0x300,
            ..span(6, Some(0x77), SpanKind::Consumer, "sqs receive")
        },
        // Parent not in the batch: independent subsegment document.
        span(7, Some(0x99), SpanKind::Producer, "publish"),
    ];
    let docs = run(&request(vec![(svc("shop"), spans)]));
    let meta = json!({"default": {"otel.resource.service.name": "shop"}});
    let expected = json!([
        {
            "name": "shop", "id": "0000000000000001", "trace_id": VALID_XRAY,
            "start_time": START_S, "end_time": END_S, "metadata": meta,
            "subsegments": [
                {
                    "name": "render", "id": "0000000000000002", "start_time": START_S, "end_time": END_S,
                    "subsegments": [{
                        "name": "inventory", "id": "0000000000000003", "namespace": "remote",
                        "start_time": START_S, "end_time": END_S,
                        "metadata": {"default": {"peer.service": "inventory"}}
                    }]
                },
                {"name": "consume in-process", "id": "0000000000000004", "start_time": START_S, "end_time": END_S}
            ]
        },
        {
            "name": "shop", "id": "0000000000000005", "trace_id": VALID_XRAY, "parent_id": "0000000000000003",
            "start_time": START_S, "end_time": END_S, "metadata": meta
        },
        {
            "name": "shop", "id": "0000000000000006", "trace_id": VALID_XRAY, "parent_id": "0000000000000077",
            "start_time": START_S, "end_time": END_S, "metadata": meta
        },
        {
            "name": "publish", "id": "0000000000000007", "trace_id": VALID_XRAY, "parent_id": "0000000000000099",
            "type": "subsegment", "namespace": "remote", "start_time": START_S, "end_time": END_S, "metadata": meta
        }
    ]);
    assert_json(&Value::Array(docs), &expected);
}

#[test]
fn xray_parents_only_nest_within_their_resource() {
    let req = request(vec![
        (svc("a"), vec![span(1, None, SpanKind::Server, "a")]),
        (
            svc("b"),
            vec![span(2, Some(1), SpanKind::Internal, "b-work")],
        ),
    ]);
    let docs = run(&req);
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[1]["type"], "subsegment");
    assert_eq!(docs[1]["parent_id"], "0000000000000001");
    assert_eq!(
        docs[1]["metadata"]["default"]["otel.resource.service.name"],
        "b"
    );
}

#[test]
fn xray_cycles_and_deep_chains_terminate() {
    // 2 <-> 3 parent cycle (malformed input): emitted once, nested.
    let docs = run(&request(vec![(
        svc("s"),
        vec![
            span(2, Some(3), SpanKind::Internal, "a"),
            span(3, Some(2), SpanKind::Internal, "b"),
        ],
    )]));
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0]["id"], "0000000000000002");
    assert_eq!(docs[0]["subsegments"][0]["id"], "0000000000000003");
    // A chain deeper than MAX_NESTING_DEPTH is cut into independent documents.
    let n = 3 * MAX_NESTING_DEPTH as u64;
    let chain = (1..=n)
        .map(|id| span(id, (id > 1).then(|| id - 1), SpanKind::Internal, "step"))
        .collect();
    let docs = run(&request(vec![(svc("s"), chain)]));
    assert_eq!(docs.len(), 3);
    assert_eq!(docs[1]["type"], "subsegment");
    assert_eq!(docs[1]["id"], format!("{:016x}", MAX_NESTING_DEPTH + 1));
}

#[test]
fn xray_timestamps_and_in_progress() {
    let d = one(Span {
        end_time_unix_nano: 0,
        ..span(1, None, SpanKind::Server, "x")
    });
    assert_json(
        &d,
        &json!({
            "name": "svc", "id": "0000000000000001", "trace_id": VALID_XRAY,
            "start_time": START_S, "in_progress": true,
            "metadata": {"default": {"otel.resource.service.name": "svc"}}
        }),
    );
    assert_eq!(
        serde_json::to_string(&d["start_time"]).unwrap(),
        "1699999990.123456"
    );
}

// ---------------------------------------------------------------- http

fn http_server_current() -> Vec<KeyValue> {
    vec![
        s("http.request.method", "GET"),
        s("url.scheme", "https"),
        s("server.address", "shop.example.com"),
        i("server.port", 443),
        s("url.path", "/orders/42"),
        s("url.query", "verbose=1"),
        s("http.route", "/orders/{id}"),
        s("user_agent.original", "curl/8.0"),
        s("client.address", "203.0.113.9"),
        i("http.response.status_code", 200),
        i("http.response.body.size", 512),
        s("network.protocol.version", "1.1"),
    ]
}

fn http_server_legacy() -> Vec<KeyValue> {
    vec![
        s("http.method", "GET"),
        s("http.scheme", "https"),
        s("net.host.name", "shop.example.com"),
        i("net.host.port", 443),
        s("http.target", "/orders/42?verbose=1"),
        s("http.route", "/orders/{id}"),
        s("http.user_agent", "curl/8.0"),
        s("http.client_ip", "203.0.113.9"),
        i("http.status_code", 200),
        i("http.response_content_length", 512),
        s("network.protocol.version", "1.1"),
    ]
}

#[test]
fn xray_http_server_both_semconv_generations() {
    let expected = json!({
        "name": "checkout", "id": "0000000000000001", "trace_id": VALID_XRAY,
        "start_time": START_S, "end_time": END_S,
        "http": {
            "request": {
                "method": "GET", "url": "https://shop.example.com/orders/42?verbose=1",
                "user_agent": "curl/8.0", "client_ip": "203.0.113.9"
            },
            "response": {"status": 200, "content_length": 512}
        },
        "metadata": {"default": {
            "http.route": "/orders/{id}",
            "network.protocol.version": "1.1",
            "otel.resource.service.name": "checkout"
        }}
    });
    for (label, a) in [
        ("current", http_server_current()),
        ("legacy", http_server_legacy()),
        // Dual emission (OTEL_SEMCONV_STABILITY_OPT_IN=http/dup): same result.
        (
            "both",
            [http_server_current(), http_server_legacy()].concat(),
        ),
    ] {
        let sp = attrs(span(1, None, SpanKind::Server, "GET /orders/{id}"), a);
        let docs = run(&request(vec![(svc("checkout"), vec![sp])]));
        assert_eq!(docs.len(), 1, "{label}");
        assert_json(&docs[0], &expected);
    }
}

#[test]
fn xray_http_server_peer_address_and_route_fallbacks() {
    // No client.address: the peer address of a server span is the client ip;
    // no target: the route completes the url.
    for a in [
        vec![
            s("http.request.method", "POST"),
            s("server.address", "api.example.com"),
            i("server.port", 8443),
            s("url.scheme", "https"),
            s("http.route", "/v1/items"),
            s("network.peer.address", "10.0.0.7"),
        ],
        vec![
            s("http.method", "POST"),
            s("net.host.name", "api.example.com"),
            i("net.host.port", 8443),
            s("http.scheme", "https"),
            s("http.route", "/v1/items"),
            s("net.sock.peer.addr", "10.0.0.7"),
        ],
    ] {
        let d = one(attrs(span(1, None, SpanKind::Server, "POST"), a));
        assert_json(
            &d["http"],
            &json!({"request": {
                "method": "POST", "url": "https://api.example.com:8443/v1/items", "client_ip": "10.0.0.7"
            }}),
        );
        assert_json(
            &d["metadata"],
            &json!({"default": {"otel.resource.service.name": "svc"}}),
        );
    }
}

#[test]
fn xray_http_client_both_semconv_generations() {
    let current = vec![
        s("http.request.method", "GET"),
        s("url.full", "http://inventory.internal:8080/items?id=7"),
        s("server.address", "inventory.internal"),
        i("server.port", 8080),
        i("http.response.status_code", 503),
    ];
    let legacy = vec![
        s("http.method", "GET"),
        s("http.url", "http://inventory.internal:8080/items?id=7"),
        s("net.peer.name", "inventory.internal"),
        i("net.peer.port", 8080),
        i("http.status_code", 503),
    ];
    let expected = json!({
        "name": "frontend", "id": "0000000000000001", "trace_id": VALID_XRAY,
        "start_time": START_S, "end_time": END_S,
        "metadata": {"default": {"otel.resource.service.name": "frontend"}},
        "subsegments": [{
            "name": "render", "id": "0000000000000002", "start_time": START_S, "end_time": END_S,
            "subsegments": [{
                "name": "inventory.internal", "id": "0000000000000003", "namespace": "remote",
                "start_time": START_S, "end_time": END_S, "fault": true,
                "http": {
                    "request": {"method": "GET", "url": "http://inventory.internal:8080/items?id=7"},
                    "response": {"status": 503}
                }
            }]
        }]
    });
    for a in [current, legacy] {
        let spans = vec![
            span(1, None, SpanKind::Server, "GET /"),
            span(2, Some(1), SpanKind::Internal, "render"),
            attrs(span(3, Some(2), SpanKind::Client, "GET"), a),
        ];
        let docs = run(&request(vec![(svc("frontend"), spans)]));
        assert_eq!(docs.len(), 1);
        assert_json(&docs[0], &expected);
    }
}

// ---------------------------------------------------------------- sql

#[test]
fn xray_sql_both_semconv_generations() {
    let current = vec![
        s("db.system.name", "postgresql"),
        s("db.namespace", "orders"),
        s("server.address", "db.example.com"),
        i("server.port", 5432),
        s("db.query.text", "SELECT * FROM orders WHERE id = $1"),
    ];
    let legacy = vec![
        s("db.system", "postgresql"),
        s("db.name", "orders"),
        s("net.peer.name", "db.example.com"),
        i("net.peer.port", 5432),
        s("db.statement", "SELECT * FROM orders WHERE id = $1"),
    ];
    let expected = json!({
        "name": "orders@db.example.com", "id": "0000000000000007", "trace_id": VALID_XRAY,
        "parent_id": "0000000000000001", "type": "subsegment", "namespace": "remote",
        "start_time": START_S, "end_time": END_S,
        "sql": {
            "url": "postgresql://db.example.com:5432/orders",
            "database_type": "postgresql",
            "sanitized_query": "SELECT * FROM orders WHERE id = $1"
        },
        "metadata": {"default": {"otel.resource.service.name": "svc"}}
    });
    for a in [current, legacy] {
        assert_json(
            &one(attrs(
                span(7, Some(1), SpanKind::Client, "SELECT orders"),
                a,
            )),
            &expected,
        );
    }
}

#[test]
fn xray_sql_connection_string_and_user() {
    let d = one(attrs(
        span(7, Some(1), SpanKind::Client, "SELECT"),
        vec![
            s("db.system", "mysql"),
            s("db.name", "shop"),
            s("db.connection_string", "jdbc:mysql://db.internal:3306"),
            s("db.user", "app"),
            s("db.statement", "SELECT 1"),
        ],
    ));
    assert_eq!(d["name"], "shop@db.internal");
    assert_json(
        &d["sql"],
        &json!({
            "url": "jdbc:mysql://db.internal:3306/shop", "database_type": "mysql",
            "user": "app", "sanitized_query": "SELECT 1"
        }),
    );
}

// ---------------------------------------------------------------- aws

#[test]
fn xray_aws_sdk_both_semconv_generations() {
    let current = vec![
        s("rpc.system", "aws-api"),
        s("rpc.service", "DynamoDB"),
        s("rpc.method", "GetItem"),
        s("aws.request_id", "R2D2"),
        strs("aws.dynamodb.table_names", &["orders"]),
    ];
    let legacy = vec![
        s("aws.service", "DynamoDB"),
        s("aws.operation", "GetItem"),
        s("aws.requestId", "R2D2"),
        s("aws.table_name", "orders"),
    ];
    let resource = vec![s("service.name", "svc"), s("cloud.region", "eu-west-1")];
    let expected = json!({
        "name": "DynamoDB", "id": "0000000000000009", "trace_id": VALID_XRAY,
        "parent_id": "0000000000000001", "type": "subsegment", "namespace": "aws",
        "start_time": START_S, "end_time": END_S,
        "aws": {"operation": "GetItem", "region": "eu-west-1", "request_id": "R2D2", "table_name": "orders"},
        "metadata": {"default": {"otel.resource.cloud.region": "eu-west-1", "otel.resource.service.name": "svc"}}
    });
    for a in [current, legacy] {
        let sp = attrs(span(9, Some(1), SpanKind::Client, "DynamoDB.GetItem"), a);
        let docs = run(&request(vec![(resource.clone(), vec![sp])]));
        assert_json(&docs[0], &expected);
    }
}

#[test]
fn xray_aws_sqs_and_explicit_region() {
    for a in [
        vec![
            s("rpc.system", "aws-api"),
            s("rpc.service", "SQS"),
            s("rpc.method", "SendMessage"),
            s("aws.region", "us-east-2"),
            s(
                "aws.sqs.queue.url",
                "https://sqs.us-east-2.amazonaws.com/123456789012/q",
            ),
        ],
        vec![
            s("rpc.system", "aws-api"),
            s("rpc.service", "SQS"),
            s("rpc.method", "SendMessage"),
            s("aws.region", "us-east-2"),
            s(
                "messaging.url",
                "https://sqs.us-east-2.amazonaws.com/123456789012/q",
            ),
        ],
    ] {
        let d = one(attrs(
            span(9, Some(1), SpanKind::Producer, "SQS.SendMessage"),
            a,
        ));
        assert_eq!(
            (d["name"].as_str(), d["namespace"].as_str()),
            (Some("SQS"), Some("aws"))
        );
        assert_json(
            &d["aws"],
            &json!({
                "operation": "SendMessage", "region": "us-east-2",
                "queue_url": "https://sqs.us-east-2.amazonaws.com/123456789012/q"
            }),
        );
        assert_json(
            &d["metadata"],
            &json!({"default": {"otel.resource.service.name": "svc"}}),
        );
    }
}

#[test]
fn xray_resource_origin_and_metadata_blocks() {
    let ecs = vec![
        s("service.name", "orders"),
        s("service.version", "1.2.3"),
        s("cloud.provider", "aws"),
        s("cloud.platform", "aws_ecs"),
        s("aws.ecs.task.arn", "arn:aws:ecs:eu-west-1:123:task/c/abc"),
        s("aws.ecs.cluster.arn", "arn:aws:ecs:eu-west-1:123:cluster/c"),
        s("aws.ecs.launchtype", "fargate"),
        s("container.id", "cafe01"),
        s("container.name", "orders-app"),
        s("cloud.availability_zone", "eu-west-1a"),
        s("telemetry.sdk.language", "rust"),
        s("telemetry.sdk.version", "0.33.0"),
    ];
    let spans = vec![
        span(1, None, SpanKind::Server, "GET /"),
        span(2, Some(1), SpanKind::Internal, "work"),
    ];
    let docs = run(&request(vec![(ecs, spans)]));
    assert_json(
        &Value::Array(docs),
        &json!([{
            "name": "orders", "id": "0000000000000001", "trace_id": VALID_XRAY,
            "start_time": START_S, "end_time": END_S,
            "origin": "AWS::ECS::Container",
            "aws": {
                "ecs": {
                    "container": "orders-app", "container_id": "cafe01",
                    "task_arn": "arn:aws:ecs:eu-west-1:123:task/c/abc",
                    "cluster_arn": "arn:aws:ecs:eu-west-1:123:cluster/c",
                    "launch_type": "fargate", "availability_zone": "eu-west-1a"
                },
                "xray": {"sdk": "opentelemetry for rust", "sdk_version": "0.33.0", "auto_instrumentation": false}
            },
            "service": {"version": "1.2.3"},
            // Resource attributes once per document, not in the nested subsegment.
            "metadata": {"default": {
                "otel.resource.cloud.platform": "aws_ecs",
                "otel.resource.cloud.provider": "aws",
                "otel.resource.service.name": "orders",
                "otel.resource.telemetry.sdk.language": "rust"
            }},
            "subsegments": [{"name": "work", "id": "0000000000000002", "start_time": START_S, "end_time": END_S}]
        }]),
    );

    let seg = |res: Vec<KeyValue>| one_with(res, span(1, None, SpanKind::Server, "x"));
    let eks = seg(vec![
        s("cloud.platform", "aws_eks"),
        s("k8s.pod.name", "orders-5f7"),
        s("k8s.cluster.name", "prod"),
        s("container.id", "beef"),
    ]);
    assert_eq!(eks["origin"], "AWS::EKS::Container");
    assert_json(
        &eks["aws"],
        &json!({"eks": {"pod": "orders-5f7", "cluster_name": "prod", "container_id": "beef"}}),
    );
    let ec2 = seg(vec![
        s("cloud.platform", "aws_ec2"),
        s("host.id", "i-0abc"),
        s("host.type", "m5.large"),
        s("host.image.id", "ami-123"),
        s("cloud.availability_zone", "us-east-1b"),
    ]);
    assert_eq!(ec2["origin"], "AWS::EC2::Instance");
    assert_json(
        &ec2["aws"],
        &json!({"ec2": {"instance_id": "i-0abc", "availability_zone": "us-east-1b", "instance_size": "m5.large", "ami_id": "ami-123"}}),
    );
    let eb = seg(vec![
        s("cloud.platform", "aws_elastic_beanstalk"),
        s("deployment.environment.name", "prod-env"),
        s("service.version", "v42"),
        s("service.instance.id", "17"),
    ]);
    assert_eq!(eb["origin"], "AWS::ElasticBeanstalk::Environment");
    assert_json(
        &eb["aws"],
        &json!({"elastic_beanstalk": {"environment_name": "prod-env", "version_label": "v42", "deployment_id": 17}}),
    );
    assert_json(&eb["service"], &json!({"version": "v42"}));
    assert_json(
        &eb["metadata"],
        &json!({"default": {"otel.resource.cloud.platform": "aws_elastic_beanstalk"}}),
    );
    // Another cloud: no origin, no blocks.
    let gcp = seg(vec![
        s("cloud.provider", "gcp"),
        s("cloud.platform", "aws_ec2"),
        s("host.id", "x"),
    ]);
    assert!(gcp.get("origin").is_none() && gcp.get("aws").is_none());
}

fn one_with(resource: Vec<KeyValue>, sp: Span) -> Value {
    let docs = run(&request(vec![(resource, vec![sp])]));
    assert_eq!(docs.len(), 1);
    docs.into_iter().next().unwrap()
}

// ---------------------------------------------------------------- error/fault/throttle

#[test]
fn xray_error_fault_throttle() {
    let flags = |d: &Value| {
        (
            d.get("error").is_some_and(|v| v == true),
            d.get("fault").is_some_and(|v| v == true),
            d.get("throttle").is_some_and(|v| v == true),
        )
    };
    let error_status = Some(Status {
        code: StatusCode::Error as i32,
        message: String::new(),
    });
    for (code_key, code, status, expected) in [
        (
            Some("http.response.status_code"),
            200,
            None,
            (false, false, false),
        ),
        (Some("http.status_code"), 404, None, (true, false, false)),
        (
            Some("http.response.status_code"),
            429,
            None,
            (true, false, true),
        ),
        (Some("http.status_code"), 429, None, (true, false, true)),
        (
            Some("http.response.status_code"),
            500,
            None,
            (false, true, false),
        ),
        (
            Some("http.status_code"),
            503,
            error_status.clone(),
            (false, true, false),
        ),
        (
            Some("http.response.status_code"),
            404,
            error_status.clone(),
            (true, false, false),
        ),
        (None, 0, error_status.clone(), (false, true, false)),
        (
            None,
            0,
            Some(Status {
                code: StatusCode::Ok as i32,
                message: String::new(),
            }),
            (false, false, false),
        ),
    ] {
        let mut sp = span(1, None, SpanKind::Server, "x");
        if let Some(k) = code_key {
            sp.attributes = vec![s("http.request.method", "GET"), i(k, code)];
        }
        sp.status = status;
        assert_eq!(flags(&one(sp)), expected, "{code_key:?} {code}");
    }
}

// ---------------------------------------------------------------- cause

fn exception_event(ty: &str, msg: &str, stack: &str) -> Event {
    Event {
        name: "exception".into(),
        attributes: vec![
            s("exception.type", ty),
            s("exception.message", msg),
            s("exception.stacktrace", stack),
        ],
        ..Default::default()
    }
}

#[test]
fn xray_cause_python_traceback() {
    let stack = "Traceback (most recent call last):\n  File \"/app/main.py\", line 42, in handler\n    result = compute(x)\n  File \"/app/lib/calc.py\", line 12, in compute\n    return 1 / x\nZeroDivisionError: division by zero";
    let sp = Span {
        events: vec![exception_event(
            "ZeroDivisionError",
            "division by zero",
            stack,
        )],
        status: Some(Status {
            code: StatusCode::Error as i32,
            message: "boom".into(),
        }),
        ..span(0x31, None, SpanKind::Server, "x")
    };
    let d = one(sp);
    assert_eq!(d["fault"], true);
    assert_json(
        &d["cause"],
        &json!({"exceptions": [{
            "id": "b49b6bdf2f05fa12", "type": "ZeroDivisionError", "message": "division by zero",
            "stack": [
                {"path": "/app/lib/calc.py", "line": 12, "label": "compute"},
                {"path": "/app/main.py", "line": 42, "label": "handler"}
            ]
        }]}),
    );
}

#[test]
fn xray_cause_python_chained_keeps_last_traceback() {
    let stack = "Traceback (most recent call last):\n  File \"a.py\", line 1, in f\nKeyError: 'k'\n\nDuring handling of the above exception, another exception occurred:\n\nTraceback (most recent call last):\n  File \"b.py\", line 2, in g\nValueError: bad";
    let parsed = super::cause::parse_stacktrace(stack);
    assert_eq!(parsed.frames.len(), 1);
    assert_eq!(parsed.frames[0].path.as_deref(), Some("b.py"));
}

#[test]
fn xray_cause_java_with_caused_by() {
    let stack = "java.lang.IllegalStateException: boom\n\tat com.example.Service.process(Service.java:123)\n\tat com.example.Controller.handle(Controller.java:45)\n\tat java.base/java.lang.Thread.run(Thread.java:833)\n\tat jdk.internal.reflect.NativeMethodAccessorImpl.invoke0(Native Method)\n\tSuppressed: java.lang.RuntimeException: close failed\n\t\tat com.example.Res.close(Res.java:9)\nCaused by: java.io.IOException: disk full\n\tat com.example.Store.write(Store.java:77)\n\t... 3 more";
    let sp = Span {
        events: vec![exception_event(
            "java.lang.IllegalStateException",
            "boom",
            stack,
        )],
        ..span(0x31, Some(1), SpanKind::Client, "call")
    };
    let d = one(sp);
    assert_json(
        &d["cause"],
        &json!({"exceptions": [
            {
                "id": "b49b6bdf2f05fa12", "type": "java.lang.IllegalStateException", "message": "boom",
                "remote": true, "cause": "192e70ed7f6b9fb4",
                "stack": [
                    {"path": "Service.java", "line": 123, "label": "com.example.Service.process"},
                    {"path": "Controller.java", "line": 45, "label": "com.example.Controller.handle"},
                    {"path": "Thread.java", "line": 833, "label": "java.lang.Thread.run"},
                    {"path": "Native Method", "label": "jdk.internal.reflect.NativeMethodAccessorImpl.invoke0"}
                ]
            },
            {
                "id": "192e70ed7f6b9fb4", "type": "java.io.IOException", "message": "disk full", "remote": true,
                "stack": [{"path": "Store.java", "line": 77, "label": "com.example.Store.write"}]
            }
        ]}),
    );
}

#[test]
fn xray_cause_javascript_and_multiple_events() {
    let js = "TypeError: Cannot read properties of undefined (reading 'id')\n    at getUser (/app/src/users.js:10:5)\n    at async handler (/app/src/index.js:22:13)\n    at /app/src/index.js:30:1\n    at new Promise (<anonymous>)";
    let sp = Span {
        events: vec![
            exception_event(
                "TypeError",
                "Cannot read properties of undefined (reading 'id')",
                js,
            ),
            Event {
                name: "log".into(),
                ..Default::default()
            },
            exception_event("Error", "second", ""),
        ],
        ..span(0x31, None, SpanKind::Server, "x")
    };
    let d = one(sp);
    assert_json(
        &d["cause"],
        &json!({"exceptions": [
            {
                "id": "b49b6bdf2f05fa12", "type": "TypeError",
                "message": "Cannot read properties of undefined (reading 'id')",
                "stack": [
                    {"path": "/app/src/users.js", "line": 10, "label": "getUser"},
                    {"path": "/app/src/index.js", "line": 22, "label": "handler"},
                    {"path": "/app/src/index.js", "line": 30},
                    {"path": "<anonymous>", "label": "new Promise"}
                ]
            },
            {"id": "548c3f8ed05b8cc6", "type": "Error", "message": "second"}
        ]}),
    );
    // Neither an ERROR status nor an HTTP code: exceptions alone set no flag.
    assert!(d.get("fault").is_none() && d.get("error").is_none());
}

#[test]
fn xray_cause_stack_cap_and_status_message() {
    let stack: String = std::iter::once("java.lang.StackOverflowError".to_string())
        .chain((0..80).map(|n| format!("\tat a.B.f{n}(B.java:{n})")))
        .collect::<Vec<_>>()
        .join("\n");
    let d = one(Span {
        events: vec![exception_event("java.lang.StackOverflowError", "", &stack)],
        ..span(0x31, None, SpanKind::Server, "x")
    });
    let e = &d["cause"]["exceptions"][0];
    assert_eq!(e["stack"].as_array().unwrap().len(), MAX_STACK_FRAMES);
    assert_eq!(e["truncated"], 30);
    assert_eq!(e["stack"][49]["label"], "a.B.f49");
    // No exception event: the ERROR status message becomes the cause.
    let d = one(Span {
        status: Some(Status {
            code: StatusCode::Error as i32,
            message: "deadline exceeded".into(),
        }),
        ..span(1, None, SpanKind::Server, "x")
    });
    assert_json(
        &d["cause"],
        &json!({"exceptions": [{"id": "809eee4b1c4ba78c", "message": "deadline exceeded"}]}),
    );
    assert_eq!(d["fault"], true);
}

// ---------------------------------------------------------------- name, user, service

#[test]
fn xray_name_priority() {
    let client = |a: Vec<KeyValue>| {
        one(attrs(span(2, Some(1), SpanKind::Client, "span-name"), a))["name"].clone()
    };
    let full = vec![
        s("peer.service", "billing"),
        s("rpc.system", "aws-api"),
        s("rpc.service", "S3"),
        s("db.system", "mysql"),
        s("db.name", "shop"),
        s("net.peer.name", "db.local"),
        s("url.full", "https://from-url.example/x"),
    ];
    assert_eq!(client(full.clone()), "billing");
    assert_eq!(client(full[1..].to_vec()), "S3");
    assert_eq!(client(vec![s("aws.service", "AWS.SDK.Kinesis")]), "Kinesis");
    assert_eq!(client(full[3..].to_vec()), "shop@db.local");
    assert_eq!(
        client(vec![
            s("db.system.name", "mysql"),
            s("db.namespace", "shop")
        ]),
        "shop"
    );
    assert_eq!(
        client(vec![
            s("rpc.system", "grpc"),
            s("rpc.service", "pkg.Greeter"),
            s("server.address", "g.local")
        ]),
        "pkg.Greeter"
    );
    assert_eq!(
        client(vec![
            s("server.address", "api.local"),
            s("http.request.method", "GET")
        ]),
        "api.local"
    );
    assert_eq!(
        client(vec![
            s("http.host", "legacy.local:8080"),
            s("http.method", "GET")
        ]),
        "legacy.local:8080"
    );
    assert_eq!(client(full[6..].to_vec()), "from-url.example");
    assert_eq!(client(vec![]), "span-name");
    // INTERNAL subsegments keep the span name even with a peer.service.
    let d = one(attrs(
        span(2, Some(1), SpanKind::Internal, "local work"),
        vec![s("peer.service", "x")],
    ));
    assert_eq!(d["name"], "local work");
    // Segments: service.name, else the span name.
    assert_eq!(
        one_with(vec![], span(1, None, SpanKind::Server, "GET /x"))["name"],
        "GET /x"
    );
    // A root CLIENT span is a segment named after the service.
    assert_eq!(
        one(attrs(
            span(1, None, SpanKind::Client, "c"),
            vec![s("peer.service", "p")]
        ))["name"],
        "svc"
    );
}

#[test]
fn xray_name_sanitising() {
    let name = |n: &str| {
        one_with(
            vec![s("service.name", n)],
            span(1, None, SpanKind::Server, "fallback"),
        )["name"]
            .clone()
    };
    assert_eq!(name("Checkout Service (v2)!"), "Checkout Service v2");
    assert_eq!(
        name("a_b.c:d/e%f&g#h=i+j\\k-l@m"),
        "a_b.c:d/e%f&g#h=i+j\\k-l@m"
    );
    assert_eq!(name("café-日本-٣\tx"), "café-日本-٣ x");
    assert_eq!(name("<>!?*"), "fallback");
    let long = "é".repeat(300);
    assert_eq!(name(&long), Value::from("é".repeat(MAX_NAME_CHARS)));
    assert_eq!(
        one_with(vec![], span(1, None, SpanKind::Server, "***"))["name"],
        "span"
    );
}

#[test]
fn xray_user_and_service_version() {
    for k in ["enduser.id", "user.id"] {
        let d = one_with(
            vec![s("service.name", "s"), s("service.version", "2.0.1")],
            attrs(span(1, None, SpanKind::Server, "x"), vec![s(k, "alice")]),
        );
        assert_json(
            &d,
            &json!({
                "name": "s", "id": "0000000000000001", "trace_id": VALID_XRAY,
                "start_time": START_S, "end_time": END_S, "user": "alice",
                "service": {"version": "2.0.1"},
                "metadata": {"default": {"otel.resource.service.name": "s"}}
            }),
        );
    }
}

// ---------------------------------------------------------------- annotations

fn with_config(cfg: XrayConfig, resource: Vec<KeyValue>, sp: Span) -> (Value, TranslationStats) {
    let (docs, stats) = run_at(&request(vec![(resource, vec![sp])]), &cfg, now());
    assert_eq!(docs.len(), 1);
    (docs.into_iter().next().unwrap(), stats)
}

#[test]
fn xray_annotations_keys_mode() {
    let cfg = XrayConfig {
        annotations: AnnotationMode::Keys(vec![
            "tenant.id".into(),
            "retry-count".into(),
            "ratio".into(),
            "flag".into(),
            "tags".into(),
            "http.request.method".into(),
            "otel.resource.deployment.environment.name".into(),
        ]),
    };
    let sp = attrs(
        span(1, None, SpanKind::Server, "x"),
        vec![
            s("tenant.id", "acme"),
            i("retry-count", 3),
            f("ratio", 0.5),
            b("flag", true),
            strs("tags", &["a", "b"]),
            s("other", "meta"),
            s("http.request.method", "GET"),
        ],
    );
    let res = vec![
        s("service.name", "svc"),
        s("deployment.environment.name", "prod"),
    ];
    let (d, _) = with_config(cfg, res, sp);
    assert_json(
        &d["annotations"],
        &json!({
            "tenant_id": "acme", "retry_count": 3, "ratio": 0.5, "flag": true,
            "otel_resource_deployment_environment_name": "prod"
        }),
    );
    // Arrays cannot be annotations; consumed attributes are not repeated.
    assert_json(
        &d["metadata"],
        &json!({"default": {"tags": ["a", "b"], "other": "meta", "otel.resource.service.name": "svc"}}),
    );
    assert_eq!(d["http"]["request"]["method"], "GET");
}

#[test]
fn xray_annotations_all_mode_limit_and_collisions() {
    let mut a: Vec<KeyValue> = (0..60).map(|n| i(&format!("k{n:02}"), n)).collect();
    a.insert(0, s("a.b", "first"));
    a.insert(1, s("a_b", "collides"));
    let (d, stats) = with_config(
        XrayConfig {
            annotations: AnnotationMode::All,
        },
        svc("svc"),
        attrs(span(1, None, SpanKind::Server, "x"), a),
    );
    let ann = d["annotations"].as_object().unwrap();
    assert_eq!(ann.len(), MAX_ANNOTATIONS);
    assert_eq!(ann["a_b"], "first");
    assert_eq!(ann["k00"], 0);
    assert_eq!(ann["k48"], 48);
    assert!(!ann.contains_key("k49"));
    let meta = d["metadata"]["default"].as_object().unwrap();
    let mut keys: Vec<_> = meta.keys().cloned().collect();
    keys.sort();
    let mut expected: Vec<String> = (49..60).map(|n| format!("k{n:02}")).collect();
    expected.extend(["a_b".to_string(), "otel.resource.service.name".to_string()]);
    expected.sort();
    assert_eq!(keys, expected);
    assert_eq!(meta["a_b"], "collides");
    assert_eq!(stats.annotations_to_metadata, 12);

    // A remapped trace reserves one slot for otel_trace_id.
    let mut sp = attrs(
        span(1, None, SpanKind::Server, "x"),
        (0..60).map(|n| i(&format!("k{n:02}"), n)).collect(),
    );
    sp.trace_id = RANDOM_TRACE.to_vec();
    let (d, _) = with_config(
        XrayConfig {
            annotations: AnnotationMode::All,
        },
        svc("svc"),
        sp,
    );
    let ann = d["annotations"].as_object().unwrap();
    assert_eq!(ann.len(), MAX_ANNOTATIONS);
    assert_eq!(ann["otel_trace_id"], RANDOM_HEX);
    assert!(ann.contains_key("k48") && !ann.contains_key("k49"));
}

#[test]
fn xray_annotations_none_mode_and_key_sanitising() {
    let (d, _) = with_config(
        XrayConfig::default(),
        svc("svc"),
        attrs(span(1, None, SpanKind::Server, "x"), vec![s("a.b", "v")]),
    );
    assert!(d.get("annotations").is_none());
    assert_eq!(d["metadata"]["default"]["a.b"], "v");
    assert_eq!(
        super::translate::sanitize_annotation_key("http.route/ü-1"),
        "http_route___1"
    );
}

#[test]
fn xray_config_deserialises() {
    let c: XrayConfig =
        serde_json::from_value(json!({"annotations": {"keys": ["a", "b"]}})).unwrap();
    assert_eq!(
        c.annotations,
        AnnotationMode::Keys(vec!["a".into(), "b".into()])
    );
    let c: XrayConfig = serde_json::from_value(json!({"annotations": "all"})).unwrap();
    assert_eq!(c.annotations, AnnotationMode::All);
    assert_eq!(
        serde_json::from_value::<XrayConfig>(json!({})).unwrap(),
        XrayConfig::default()
    );
}

#[test]
fn xray_metadata_value_types() {
    use opentelemetry_proto::tonic::common::v1::KeyValueList;
    let d = one(attrs(
        span(1, None, SpanKind::Server, "x"),
        vec![
            kv("bytes", Av::BytesValue(b"hi".to_vec())),
            kv(
                "map",
                Av::KvlistValue(KeyValueList {
                    values: vec![i("n", 1), b("t", false)],
                }),
            ),
            f("nan", f64::NAN),
            s("dup", "first"),
            s("dup", "second"),
        ],
    ));
    assert_json(
        &d["metadata"]["default"],
        &json!({
            "bytes": "aGk=", "map": {"n": 1, "t": false}, "nan": "NaN", "dup": "first",
            "otel.resource.service.name": "svc"
        }),
    );
}

// ---------------------------------------------------------------- 64 KiB cap

#[test]
fn xray_size_cap_sheds_metadata_largest_first() {
    let mut a: Vec<KeyValue> = (0..40)
        .map(|n| s(&format!("big{n:02}"), &"x".repeat(4000)))
        .collect();
    a.push(s("small", "kept"));
    let sp = attrs(span(1, None, SpanKind::Server, "x"), a);
    let (docs, stats) = run_at(
        &request(vec![(svc("svc"), vec![sp])]),
        &XrayConfig::default(),
        now(),
    );
    assert_eq!(docs.len(), 1);
    let meta = docs[0]["metadata"]["default"].as_object().unwrap();
    assert_eq!(meta["small"], "kept");
    assert_eq!(meta["otel.resource.service.name"], "svc");
    // 40 * ~4 KB = 160 KB: about 25 of the big values had to go.
    let kept = meta.keys().filter(|k| k.starts_with("big")).count();
    assert_eq!(stats.metadata_keys_shed, 40 - kept);
    assert!((20..30).contains(&stats.metadata_keys_shed), "{stats:?}");
    assert_eq!((stats.documents_split, stats.annotations_shed), (0, 0));
}

#[test]
fn xray_size_cap_nested_metadata_before_own() {
    let big = |p: &str| {
        (0..10)
            .map(|n| s(&format!("{p}{n}"), &"y".repeat(3000)))
            .collect::<Vec<_>>()
    };
    let spans = vec![
        attrs(span(1, None, SpanKind::Server, "root"), big("root")),
        attrs(span(2, Some(1), SpanKind::Internal, "child"), big("child")),
        attrs(span(3, Some(1), SpanKind::Internal, "child2"), big("other")),
    ];
    let (docs, stats) = run_at(
        &request(vec![(svc("svc"), spans)]),
        &XrayConfig::default(),
        now(),
    );
    assert_eq!(docs.len(), 1);
    // 90 KB of metadata: shedding ~27 KB from the nested subsegments suffices.
    assert_eq!(
        docs[0]["metadata"]["default"].as_object().unwrap().len(),
        11
    );
    assert!(
        stats.metadata_keys_shed >= 9 && stats.metadata_keys_shed <= 20,
        "{stats:?}"
    );
}

#[test]
fn xray_size_cap_keeps_otel_trace_id_sheds_annotations_then_stacks() {
    let frames: String = std::iter::once("java.lang.Error: x".to_string())
        .chain((0..50).map(|n| format!("\tat com.example.{}.m{n}(F.java:{n})", "Deep".repeat(60))))
        .collect::<Vec<_>>()
        .join("\n");
    let mut sp = attrs(
        span(1, None, SpanKind::Server, "x"),
        (0..20)
            .map(|n| s(&format!("a{n}"), &"z".repeat(2000)))
            .collect(),
    );
    sp.trace_id = RANDOM_TRACE.to_vec();
    sp.events = (0..5)
        .map(|_| exception_event("java.lang.Error", "x", &frames))
        .collect();
    let (docs, stats) = run_at(
        &request(vec![(svc("svc"), vec![sp])]),
        &XrayConfig {
            annotations: AnnotationMode::All,
        },
        now(),
    );
    assert_eq!(docs.len(), 1);
    let d = &docs[0];
    assert_eq!(d["annotations"]["otel_trace_id"], RANDOM_HEX);
    // ~40 KB of annotations and five 50-frame stacks of ~14 KB: metadata (the
    // resource key), every annotation but otel_trace_id, then one stack.
    assert_eq!(d["annotations"].as_object().unwrap().len(), 1);
    assert!(d.get("metadata").is_none());
    assert_eq!(
        (
            stats.metadata_keys_shed,
            stats.annotations_shed,
            stats.stack_frames_shed,
            stats.documents_split
        ),
        (1, 20, 50, 0),
        "{stats:?}"
    );
    let shed_frames: u64 = d["cause"]["exceptions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["truncated"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(shed_frames as usize, stats.stack_frames_shed);
}

#[test]
fn xray_size_cap_splits_subsegments_last() {
    // 300 nested HTTP calls with long urls (not sheddable): the segment must be
    // split into independent subsegment documents.
    let mut spans = vec![span(1, None, SpanKind::Server, "root")];
    for n in 0..300u64 {
        spans.push(attrs(
            span(100 + n, Some(1), SpanKind::Client, "GET"),
            vec![
                s("http.request.method", "GET"),
                s(
                    "url.full",
                    &format!("https://api.example.com/{n}/{}", "p".repeat(600)),
                ),
                s("note", "meta"),
            ],
        ));
    }
    spans.push(span(999, Some(100), SpanKind::Internal, "grandchild"));
    let mut req = request(vec![(svc("svc"), spans)]);
    req.resource_spans[0].scope_spans[0]
        .spans
        .iter_mut()
        .for_each(|s| s.trace_id = RANDOM_TRACE.to_vec());
    let (docs, stats) = run_at(&req, &XrayConfig::default(), now());
    assert!(docs.len() > 1);
    assert_eq!(stats.documents_split, docs.len() - 1);
    // Metadata goes before any split: the 300 nested `note`s, then the root's own.
    assert_eq!(stats.metadata_keys_shed, 301, "{stats:?}");
    assert_eq!(docs[0]["id"], "0000000000000001");
    assert!(docs[0].get("metadata").is_none());
    let mut seen = docs[0]["subsegments"].as_array().unwrap().len();
    for d in &docs[1..] {
        assert_eq!(d["type"], "subsegment");
        assert_eq!(d["trace_id"], RANDOM_XRAY);
        assert_eq!(d["parent_id"], "0000000000000001");
        assert_eq!(d["annotations"]["otel_trace_id"], RANDOM_HEX);
        seen += 1;
    }
    assert_eq!(seen, 300);
    // The grandchild stays nested under its parent wherever that went.
    let holder = docs
        .iter()
        .flat_map(|d| std::iter::once(d).chain(d["subsegments"].as_array().into_iter().flatten()))
        .find(|d| d["id"] == "0000000000000064")
        .unwrap();
    assert_eq!(holder["subsegments"][0]["id"], "00000000000003e7");
}

#[test]
fn xray_size_cap_single_huge_field_is_truncated() {
    let sp = attrs(
        span(1, None, SpanKind::Server, "x"),
        vec![
            s("http.request.method", "GET"),
            s("url.full", &format!("https://h/{}", "q".repeat(100_000))),
        ],
    );
    let (docs, stats) = run_at(
        &request(vec![(svc("svc"), vec![sp])]),
        &XrayConfig::default(),
        now(),
    );
    assert_eq!(docs.len(), 1);
    assert_eq!(stats.strings_truncated, 1);
    assert_eq!(
        docs[0]["http"]["request"]["url"]
            .as_str()
            .unwrap()
            .chars()
            .count(),
        1024
    );
}
