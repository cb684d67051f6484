//! End to end into the Elasticsearch-compatible stand-in (osmem-server): events over gRPC and
//! HTTP through `tidewater up`, documents with the right types in daily indices behind the
//! alias, and the analysts' questions (`scripts/analyst-queries`) answered with the right
//! numbers.

use std::collections::HashMap;

use crate::common::es::{analyst_queries, es_env, metric, post_events, Es};
use crate::common::peers;
use crate::common::*;
use serde_json::{json, Value};
use tidewater_proto::events::v1::events_service_client::EventsServiceClient;
use tidewater_proto::events::v1::{Event, PublishRequest};
use tidewater_proto::json::struct_from_json;

/// (message id, user, anonymous?, name, time, properties) of the shop's two days.
fn shop_events() -> Vec<(
    &'static str,
    &'static str,
    bool,
    &'static str,
    &'static str,
    Value,
)> {
    let pv = "Product Viewed";
    let atc = "Added To Cart";
    let oc = "Order Completed";
    vec![
        (
            "d1-u1-pv",
            "u1",
            false,
            pv,
            "2026-11-01T09:00:00Z",
            json!({"sku": "SKU-1", "price": 19.99}),
        ),
        (
            "d1-u1-atc",
            "u1",
            false,
            atc,
            "2026-11-01T09:05:00Z",
            json!({"sku": "SKU-1"}),
        ),
        (
            "d1-u1-oc",
            "u1",
            false,
            oc,
            "2026-11-01T09:10:00Z",
            json!({"total": 19.99, "coupon": "SPRING", "gift": true}),
        ),
        (
            "d1-u2-pv",
            "u2",
            false,
            pv,
            "2026-11-01T10:00:00Z",
            json!({"sku": "SKU-2", "price": 5}),
        ),
        (
            "d1-u2-atc",
            "u2",
            false,
            atc,
            "2026-11-01T10:01:00Z",
            json!({"sku": "SKU-2"}),
        ),
        (
            "d1-u2-oc",
            "u2",
            false,
            oc,
            "2026-11-01T10:02:00Z",
            json!({"total": 5, "gift": false}),
        ),
        (
            "d1-u3-pv",
            "u3",
            false,
            pv,
            "2026-11-01T11:00:00Z",
            json!({"sku": "SKU-1", "price": 19.99}),
        ),
        (
            "d1-u3-atc",
            "u3",
            false,
            atc,
            "2026-11-01T11:30:00Z",
            json!({"sku": "SKU-1"}),
        ),
        (
            "d1-u4-pv",
            "u4",
            false,
            pv,
            "2026-11-01T12:00:00Z",
            json!({"sku": "SKU-3", "price": 7.5}),
        ),
        // Added to cart before viewing: not a funnel conversion.
        (
            "d1-u5-atc",
            "u5",
            false,
            atc,
            "2026-11-01T08:00:00Z",
            json!({"sku": "SKU-1"}),
        ),
        (
            "d1-u5-pv",
            "u5",
            false,
            pv,
            "2026-11-01T13:00:00Z",
            json!({"sku": "SKU-1", "price": 19.99}),
        ),
        (
            "d1-anon-pv",
            "anon-1",
            true,
            pv,
            "2026-11-01T14:00:00Z",
            json!({"sku": "SKU-1", "price": 19.99}),
        ),
        (
            "d1-u7-pv",
            "u7",
            false,
            pv,
            "2026-11-01T15:00:00Z",
            json!({"sku": "SKU-3", "price": 7.5}),
        ),
        (
            "d1-u7-atc",
            "u7",
            false,
            atc,
            "2026-11-01T15:05:00Z",
            json!({"sku": "SKU-3"}),
        ),
        (
            "d2-u1-pv",
            "u1",
            false,
            pv,
            "2026-11-02T09:00:00Z",
            json!({"sku": "SKU-2", "price": 5}),
        ),
        (
            "d2-u3-oc",
            "u3",
            false,
            oc,
            "2026-11-02T10:00:00Z",
            json!({"total": 19.99}),
        ),
        (
            "d2-u6-oc",
            "u6",
            false,
            oc,
            "2026-11-02T11:00:00Z",
            json!({"total": 3}),
        ),
    ]
}

fn context() -> Value {
    json!({
        "app": {"name": "shop", "version": "2.3.1"},
        "device": {"type": "ios", "model": "iPhone15,2"},
        "ip": "203.0.113.7",
        "location": {"latitude": 48.8566, "longitude": 2.3522, "city": "Paris", "country": "FR"}
    })
}

#[test]
fn events_over_grpc_and_http_land_typed_and_answer_the_analysts() {
    let osmem = peers::elasticsearch();
    let es = Es::new(&osmem.endpoint());
    let dir = tempfile::tempdir().unwrap();
    let tw = Tidewater::up(dir.path(), &es_env(&osmem.endpoint()));

    // Day one over gRPC, with context; day two over HTTP, plus a client retry of one event.
    let events = shop_events();
    let (day1, day2): (Vec<_>, Vec<_>) = events.iter().partition(|e| e.0.starts_with("d1"));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let response = rt.block_on(async {
        let mut client = EventsServiceClient::connect(tw.grpc_url()).await.unwrap();
        let events = day1
            .iter()
            .map(|(id, user, anonymous, name, at, props)| Event {
                message_id: id.to_string(),
                name: name.to_string(),
                user_id: if *anonymous {
                    String::new()
                } else {
                    user.to_string()
                },
                anonymous_id: if *anonymous {
                    user.to_string()
                } else {
                    String::new()
                },
                timestamp: Some(at.parse().unwrap()),
                properties: struct_from_json(props),
                context: struct_from_json(&context()),
                ..Default::default()
            })
            .collect();
        client
            .publish(PublishRequest { events })
            .await
            .unwrap()
            .into_inner()
    });
    assert_eq!((response.accepted, response.rejected.len()), (14, 0));

    let mut body: Vec<Value> = day2
        .iter()
        .map(|(id, user, _, name, at, props)| {
            json!({"message_id": id, "name": name, "user_id": user, "timestamp": at, "properties": props})
        })
        .collect();
    body.push(body[2].clone());
    assert_eq!(post_events(&tw, &body)["accepted"], 4);

    // Every distinct event exactly once, in its own day's index, all behind the alias.
    es.wait_count("tidewater-events", 17, || tw.log());
    assert_eq!(es.count("tidewater-events-2026.11.01"), 14);
    assert_eq!(es.count("tidewater-events-2026.11.02"), 3);
    let aliases = es.get("/_alias/tidewater-events");
    let mut indices: Vec<&String> = aliases.as_object().unwrap().keys().collect();
    indices.sort();
    assert_eq!(
        indices,
        ["tidewater-events-2026.11.01", "tidewater-events-2026.11.02"]
    );
    let ids: HashMap<String, Value> = es.sources("tidewater-events").into_iter().collect();
    for (id, ..) in &events {
        assert_eq!(ids[*id]["message_id"], *id, "_id is the message_id");
    }

    // Types, as the template says: what analysts filter and aggregate on.
    let day1_index = "tidewater-events-2026.11.01";
    let types: Vec<(&str, Value)> = [
        "@timestamp",
        "event.name",
        "user.id",
        "user.distinct_id",
        "message_id",
        "received_at",
        "client.ip",
        "geo.location",
        "context.app.version",
        "context.device.type",
        "context.location.latitude",
        "properties.price",
        "properties.total",
        "properties.gift",
    ]
    .into_iter()
    .map(|f| (f, es.field_mapping(day1_index, f)["type"].clone()))
    .collect();
    assert_eq!(
        types,
        vec![
            ("@timestamp", json!("date")),
            ("event.name", json!("keyword")),
            ("user.id", json!("keyword")),
            ("user.distinct_id", json!("keyword")),
            ("message_id", json!("keyword")),
            ("received_at", json!("date")),
            ("client.ip", json!("ip")),
            ("geo.location", json!("geo_point")),
            ("context.app.version", json!("keyword")),
            ("context.device.type", json!("keyword")),
            ("context.location.latitude", json!("double")),
            // 5 and 19.99 in one field: numbers are all double, never a conflict.
            ("properties.price", json!("double")),
            ("properties.total", json!("double")),
            ("properties.gift", json!("boolean")),
        ]
    );
    assert_eq!(
        es.field_mapping(day1_index, "properties.sku"),
        json!({"type": "keyword", "ignore_above": 1024, "fields": {"text": {"type": "text"}}})
    );

    // Typed fields answer typed queries: CIDR on the IP, distance on the location, full text
    // on a property's text sub-field.
    let hits = |index: &str, query: Value| {
        es.search(index, json!({"size": 0, "query": query}))["hits"]["total"]["value"].clone()
    };
    assert_eq!(
        hits(
            "tidewater-events",
            json!({"term": {"client.ip": "203.0.113.0/24"}})
        ),
        14
    );
    assert_eq!(
        hits(
            "tidewater-events",
            json!({"geo_distance": {"distance": "5km", "geo.location": {"lat": 48.86, "lon": 2.35}}})
        ),
        14
    );
    assert_eq!(
        hits(
            "tidewater-events",
            json!({"match": {"properties.coupon.text": "spring"}})
        ),
        1
    );

    // The analysts' questions, as scripts/analyst-queries asks them.
    let answers = analyst_queries(
        &es.url,
        &[
            "--property",
            "sku",
            "--property-event",
            "Product Viewed",
            "--message-id",
            "d1-u1-oc",
        ],
    );
    assert_eq!(
        answers["events per day by name"],
        json!({
            "2026-11-01": {"Product Viewed": 7, "Added To Cart": 5, "Order Completed": 2},
            "2026-11-02": {"Product Viewed": 1, "Order Completed": 2}
        })
    );
    assert_eq!(
        answers["unique users per day"],
        json!({"2026-11-01": 7, "2026-11-02": 3})
    );
    assert_eq!(
        answers["funnel"],
        json!([
            {"step": "Product Viewed", "users": 7},
            {"step": "Added To Cart", "users": 4},
            {"step": "Order Completed", "users": 3}
        ])
    );
    assert_eq!(
        answers["top property values"],
        json!([
            {"value": "SKU-1", "events": 4},
            {"value": "SKU-2", "events": 2},
            {"value": "SKU-3", "events": 2}
        ])
    );
    let doc = &answers["document by message_id"];
    let received_at = doc["received_at"].as_str().unwrap().to_string();
    let processed_at = doc["processed_at"].as_str().unwrap().to_string();
    assert!(received_at <= processed_at, "{doc}");
    assert_eq!(
        *doc,
        json!({
            "@timestamp": "2026-11-01T09:10:00.000Z",
            "message_id": "d1-u1-oc",
            "event": {"name": "Order Completed"},
            "user": {"id": "u1", "distinct_id": "u1"},
            "properties": {"total": 19.99, "coupon": "SPRING", "gift": true},
            "client": {"ip": "203.0.113.7"},
            "geo": {"location": {"lat": 48.8566, "lon": 2.3522}},
            "context": context(),
            "received_at": received_at,
            "processed_at": processed_at
        })
    );

    // Counted: 17 indexed, the client's retry answered 409 and counted as already there.
    let metrics = tw.metrics();
    let docs = |outcome| {
        metric(
            &metrics,
            "tidewater_sink_items_total",
            &[("sink", "elasticsearch"), ("outcome", outcome)],
        )
    };
    assert_eq!(
        (
            docs("stored"),
            docs("already_stored"),
            docs("dead_lettered")
        ),
        (17.0, 1.0, 0.0),
        "{metrics}"
    );
}

#[test]
fn otel_sdk_logs_are_indexed_when_configured() {
    let osmem = peers::elasticsearch();
    let es = Es::new(&osmem.endpoint());
    let dir = tempfile::tempdir().unwrap();
    let mut env = es_env(&osmem.endpoint());
    env.push(("TIDEWATER_SINKS__ELASTICSEARCH__LOGS", "true".into()));
    let tw = Tidewater::up(dir.path(), &env);

    let sent = run_otel_app(
        "grpc",
        &tw.grpc_url(),
        &["--service", "shop-logs", "--traces", "2", "--logs", "15"],
    );
    assert_eq!(sent["export_failures"]["logs"], 0, "{sent}");
    es.wait_count("tidewater-logs", 15, || tw.log());

    // Each record once, searchable by its text, with its severity, service and attributes.
    let docs: Vec<Value> = es
        .sources("tidewater-logs")
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    let mut messages: Vec<&str> = docs
        .iter()
        .map(|d| d["message"].as_str().unwrap())
        .collect();
    messages.sort();
    let mut want: Vec<&str> = sent["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    want.sort();
    assert_eq!(messages, want);
    for d in &docs {
        assert_eq!(d["severity_text"], "INFO", "{d}");
        assert_eq!(d["severity_number"], 9);
        assert_eq!(d["service"]["name"], "shop-logs");
        assert_eq!(d["resource"]["attributes"]["service.name"], "shop-logs");
        assert!(d["attributes"]["order.id"].is_i64(), "{d}");
        assert!(d["@timestamp"].as_str().unwrap().ends_with('Z'));
    }
    let hits = es.search(
        "tidewater-logs",
        json!({"query": {"bool": {"filter": [
            {"match": {"message": "order 7"}},
            {"term": {"service.name": "shop-logs"}},
            {"range": {"severity_number": {"gte": 9}}}
        ]}}}),
    );
    let texts: Vec<&str> = hits["hits"]["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["_source"]["message"].as_str().unwrap())
        .filter(|m| m.starts_with("order 7 "))
        .collect();
    assert_eq!(texts, ["order 7 placed by shop-logs"]);

    let index = es
        .get("/_alias/tidewater-logs")
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    assert!(index.starts_with("tidewater-logs-"), "{index}");
    for (field, ty) in [
        ("@timestamp", "date_nanos"),
        ("severity_text", "keyword"),
        ("severity_number", "integer"),
        ("message", "text"),
        ("service.name", "keyword"),
        ("trace_id", "keyword"),
    ] {
        let mapping = es.field_mapping(&index, field);
        assert!(
            mapping["type"] == ty || (field == "trace_id" && mapping.is_null()),
            "{field}: {mapping}"
        );
    }
    // Events still go to their own index only.
    assert_eq!(es.count("tidewater-events"), 0);
}
