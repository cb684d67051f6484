//! End to end through `tidewater up`: the official OpenTelemetry Python SDK over OTLP/gRPC and
//! OTLP/HTTP, events over gRPC and HTTP, and the file sink holding every item, intact.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::common::*;
use serde_json::{json, Value};
use tidewater_proto::events::v1::events_service_client::EventsServiceClient;
use tidewater_proto::events::v1::{Event, PublishRequest};
use tidewater_proto::json::struct_from_json;

#[test]
fn otel_sdk_and_events_reach_the_file_sink_intact() {
    let dir = tempfile::tempdir().unwrap();
    let tw = Tidewater::up::<&str, &str>(dir.path(), &[]);

    let via_grpc = run_otel_app(
        "grpc",
        &tw.grpc_url(),
        &["--service", "shop-grpc", "--traces", "20", "--logs", "15"],
    );
    let via_http = run_otel_app(
        "http",
        &tw.http_url(""),
        &["--service", "shop-http", "--traces", "20", "--logs", "15"],
    );
    for sent in [&via_grpc, &via_http] {
        assert_eq!(
            sent["export_failures"],
            json!({"spans": 0, "metrics": 0, "logs": 0}),
            "{sent}"
        );
    }

    let rt = tokio::runtime::Runtime::new().unwrap();
    let grpc_response = rt.block_on(async {
        let mut client = EventsServiceClient::connect(tw.grpc_url()).await.unwrap();
        let events = (0..5)
            .map(|i| Event {
                message_id: format!("grpc-{i}"),
                // The third has no name: rejected alone.
                name: if i == 2 { String::new() } else { "Checkout Completed".into() },
                user_id: format!("user-{i}"),
                properties: struct_from_json(&json!({"total": 10.5 * i as f64, "items": i, "coupon": "SPRING", "gift": i % 2 == 0})),
                context: struct_from_json(&json!({"app": {"version": "2.3.1"}, "ip": "203.0.113.7"})),
                ..Default::default()
            })
            .collect();
        client.publish(PublishRequest { events }).await.unwrap().into_inner()
    });
    assert_eq!(grpc_response.accepted, 4);
    assert_eq!(grpc_response.rejected.len(), 1);
    assert_eq!(
        (
            grpc_response.rejected[0].index,
            grpc_response.rejected[0].field.as_str()
        ),
        (2, "name")
    );

    let http_events: Vec<Value> = (0..5)
        .map(|i| json!({"messageId": format!("http-{i}"), "name": "Product Viewed", "anonymousId": format!("anon-{i}"),
                        "timestamp": "2026-11-01T10:00:00Z", "properties": {"sku": format!("SKU-{i}"), "price": 19.99}}))
        .collect();
    let client = reqwest::blocking::Client::new();
    let resp = client
        .post(tw.http_url("/v1/events"))
        .json(&json!({ "events": http_events }))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.json::<Value>().unwrap(),
        json!({"accepted": 5, "rejected": []})
    );

    // Everything sent, everything in the sink.
    let expected_spans: HashSet<String> = sent_span_ids(&via_grpc)
        .into_iter()
        .chain(sent_span_ids(&via_http))
        .collect();
    assert_eq!(expected_spans.len(), 80);
    let found = wait_for(Duration::from_secs(20), || {
        let spans = spans(&tw.sink_lines("traces"));
        let events = tw.sink_lines("events");
        let logs = log_records(&tw.sink_lines("logs"));
        (spans.len() >= 80 && events.len() >= 9 && logs.len() >= 30)
            .then_some((spans, events, logs))
    });
    let (spans, events, logs) = found.unwrap_or_else(|| panic!("sink incomplete:\n{}", tw.log()));

    // Spans: each exactly once, attributes and resource intact.
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (_, span) in &spans {
        *seen
            .entry(span["spanId"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    assert_eq!(seen.keys().cloned().collect::<HashSet<_>>(), expected_spans);
    assert!(
        seen.values().all(|n| *n == 1),
        "no span duplicated on the happy path"
    );
    for service in ["shop-grpc", "shop-http"] {
        let servers: Vec<&Value> = spans
            .iter()
            .filter(|(res, s)| {
                attr(&res["attributes"], "service.name") == Some(&json!({"stringValue": service}))
                    && s["kind"] == 2
            })
            .map(|(_, s)| s)
            .collect();
        assert_eq!(servers.len(), 20, "{service}");
        let items: HashSet<String> = servers
            .iter()
            .map(|s| {
                attr(&s["attributes"], "app.items").unwrap()["intValue"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(items, (0..20).map(|i| i.to_string()).collect());
        for s in &servers {
            assert_eq!(
                attr(&s["attributes"], "http.route"),
                Some(&json!({"stringValue": "/checkout/{id}"}))
            );
            let items: i64 = attr(&s["attributes"], "app.items").unwrap()["intValue"]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(
                attr(&s["attributes"], "app.vip"),
                Some(&json!({"boolValue": items % 2 == 0}))
            );
            if items % 5 == 4 {
                assert_eq!(s["status"]["code"], 2);
                let exception = &s["events"][0];
                assert_eq!(exception["name"], "exception");
                assert_eq!(
                    attr(&exception["attributes"], "exception.type"),
                    Some(&json!({"stringValue": "ValueError"}))
                );
            }
        }
    }
    // A trace's spans stay together: each trace's spans sit in one sink line (one bus batch
    // of one partition) here, because the app sends a trace's spans in one request.
    let (_, any) = &spans[0];
    assert_eq!(any["traceId"].as_str().unwrap().len(), 32);

    // Logs: every body, with its attributes and severity.
    let bodies: HashSet<String> = logs
        .iter()
        .map(|(_, r)| r["body"]["stringValue"].as_str().unwrap().to_string())
        .collect();
    for sent in [&via_grpc, &via_http] {
        for body in sent["logs"].as_array().unwrap() {
            assert!(
                bodies.contains(body.as_str().unwrap()),
                "missing log {body}"
            );
        }
    }
    for (_, r) in &logs {
        assert_eq!(r["severityText"], "INFO");
        assert!(attr(&r["attributes"], "order.id").is_some());
    }

    // Metrics: the counter and histogram carry exactly what the app recorded.
    let points = metric_points(&tw.sink_lines("metrics"));
    let counter_max = points
        .iter()
        .filter(|(n, _)| n == "app.requests")
        .map(|(_, p)| p["asInt"].as_str().unwrap().parse::<i64>().unwrap())
        .max();
    assert_eq!(counter_max, Some(20));
    let hist: Vec<&Value> = points
        .iter()
        .filter(|(n, _)| n == "app.latency")
        .map(|(_, p)| p)
        .collect();
    assert!(hist.len() >= 2, "one histogram series per service");
    for p in hist {
        assert_eq!(p["count"], "20");
        assert_eq!(p["sum"].as_f64(), via_grpc["latency_sum"].as_f64());
    }

    // Events: the valid ones, with types and nesting intact.
    let by_id: HashMap<&str, &Value> = events
        .iter()
        .map(|e| (e["message_id"].as_str().unwrap(), e))
        .collect();
    assert_eq!(by_id.len(), 9);
    assert!(!by_id.contains_key("grpc-2"));
    let e = by_id["grpc-3"];
    assert_eq!(e["event"]["name"], "Checkout Completed");
    assert_eq!(e["user"]["id"], "user-3");
    assert_eq!(
        e["properties"],
        json!({"total": 31.5, "items": 3, "coupon": "SPRING", "gift": false})
    );
    assert_eq!(e["context"]["app"]["version"], "2.3.1");
    let h = by_id["http-4"];
    assert_eq!(h["user"]["anonymous_id"], "anon-4");
    assert_eq!(h["@timestamp"], "2026-11-01T10:00:00.000Z");
    assert_eq!(h["properties"]["sku"], "SKU-4");

    // The collector counted what it did.
    let metrics = tw.metrics();
    for line in [
        "tidewater_collector_accepted_items_total{signal=\"events\"} 9",
        "tidewater_collector_rejected_items_total{signal=\"events\"} 1",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in:\n{metrics}");
    }
}
