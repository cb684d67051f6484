//! Traces to X-Ray end to end, against moto's X-Ray API: an app using the OpenTelemetry Python
//! SDK over OTLP, and an app using the AWS X-Ray SDK for Python over the daemon's UDP protocol,
//! both through `tidewater up`; then what moto stored is read back with boto3. A third test
//! puts a fault-injecting proxy between the sink and moto.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::peers::{aws_env, moto, Peer};
use crate::common::*;
use prost::Message;
use serde_json::{json, Value};
use tidewater_processors::xray::xray_trace_id;

/// `BatchGetTraces` on moto (boto3), each segment's document parsed.
fn batch_get_traces(moto: &Peer, ids: &[&str]) -> Value {
    let endpoint = moto.endpoint();
    let mut args = vec!["--endpoint", &endpoint, "batch-get-traces"];
    args.extend_from_slice(ids);
    run_client("xray_query.py", &args)
}

/// Segment documents moto holds for `trace_id`, by segment id, once there are `at_least`.
fn stored_documents(
    moto: &Peer,
    trace_id: &str,
    at_least: usize,
) -> Option<HashMap<String, Value>> {
    wait_for(Duration::from_secs(30), || {
        let out = batch_get_traces(moto, &[trace_id]);
        let docs: HashMap<String, Value> = out["Traces"]
            .as_array()?
            .iter()
            .filter(|t| t["Id"] == trace_id)
            .flat_map(|t| t["Segments"].as_array().cloned().unwrap_or_default())
            .map(|s| (s["Id"].as_str().unwrap().to_string(), s["Document"].clone()))
            .collect();
        (docs.len() >= at_least).then_some(docs)
    })
}

/// Every segment and subsegment in `docs`, by id, with its parent's id: nested subsegments
/// under their enclosing one, documents of their own by `parent_id`.
fn flatten<'a>(docs: impl Iterator<Item = &'a Value>) -> HashMap<String, (Value, Option<String>)> {
    fn walk(v: &Value, parent: Option<String>, out: &mut HashMap<String, (Value, Option<String>)>) {
        let id = v["id"].as_str().unwrap_or_default().to_string();
        for sub in v["subsegments"].as_array().into_iter().flatten() {
            walk(sub, Some(id.clone()), out);
        }
        out.insert(id, (v.clone(), parent));
    }
    let mut out = HashMap::new();
    for d in docs {
        walk(d, d["parent_id"].as_str().map(str::to_string), &mut out);
    }
    out
}

fn xray_env(moto: &Peer) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = aws_env(&moto.endpoint())
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    env.push(("TIDEWATER_SINKS__XRAY__ENABLED".into(), "true".into()));
    env
}

fn unhex<const N: usize>(s: &str) -> [u8; N] {
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[test]
fn otel_sdk_trace_reaches_xray_as_segment_and_subsegments() {
    let moto = moto();
    let dir = tempfile::tempdir().unwrap();
    let mut env = xray_env(&moto);
    env.push((
        "TIDEWATER_SINKS__XRAY__INDEXED_ATTRIBUTES".into(),
        r#"["app.order_id"]"#.into(),
    ));
    let tw = Tidewater::up(dir.path(), &env);

    let sent = run_client("xray_web_app.py", &["--endpoint", &tw.grpc_url()]);
    assert_eq!(sent["export_failures"], json!([]), "{sent}");
    let otel_trace_id = sent["trace_id"].as_str().unwrap();
    let (server_id, db_id, http_id) = (
        sent["server"]["span_id"].as_str().unwrap(),
        sent["db"]["span_id"].as_str().unwrap(),
        sent["http"]["span_id"].as_str().unwrap(),
    );

    // The OpenTelemetry SDK's trace id is random: X-Ray holds the trace under the id the
    // documented rule maps it to, which the test computes with the translator's own function.
    let xid = xray_trace_id(
        &unhex::<16>(otel_trace_id),
        sent["server"]["start_time_unix_nano"].as_u64().unwrap(),
        SystemTime::now(),
    )
    .expect("a fresh span has an X-Ray id");
    assert_eq!(
        &xid.id[11..],
        &otel_trace_id[8..],
        "the random part is kept"
    );

    // One segment document with both client spans nested, as the SDK's batch processor sends
    // a trace's spans together; had they come in separate batches, the subsegments would be
    // documents of their own (`type: subsegment`, `parent_id`). Either way, each span is found.
    let found = wait_for(Duration::from_secs(30), || {
        let docs = stored_documents(&moto, &xid.id, 1)?;
        let all = flatten(docs.values());
        [server_id, db_id, http_id]
            .iter()
            .all(|id| all.contains_key(*id))
            .then_some((docs, all))
    });
    let (docs, all) =
        found.unwrap_or_else(|| panic!("trace {} not in X-Ray:\n{}", xid.id, tw.log()));
    let seg = &docs[server_id];
    assert_eq!(seg["name"], "orders-api");
    assert_eq!(seg["id"], server_id);
    assert_eq!(seg["trace_id"], xid.id);
    assert!(seg.get("parent_id").is_none() && seg.get("namespace").is_none());
    assert_eq!(
        seg["http"],
        json!({
            "request": {"method": "GET", "url": "https://shop.example.com/orders/42",
                        "user_agent": "curl/8.5.0", "client_ip": "203.0.113.9"},
            "response": {"status": 502}
        })
    );
    assert_eq!(seg["fault"], true);
    assert_eq!(seg["user"], "alice");
    assert_eq!(seg["service"]["version"], "1.4.2");
    assert_eq!(seg["annotations"]["app_order_id"], "42");
    if xid.remapped {
        assert_eq!(seg["annotations"]["otel_trace_id"], otel_trace_id);
    }
    assert_eq!(
        seg["metadata"]["default"]["otel.resource.deployment.environment"],
        "test"
    );
    assert!(seg["start_time"].as_f64().unwrap() > 1.7e9 && seg["end_time"].as_f64().is_some());

    let subs = &all;
    for id in [db_id, http_id] {
        let (sub, parent) = &subs[id];
        assert_eq!(parent.as_deref(), Some(server_id), "{sub}");
    }
    let db = &subs[db_id].0;
    assert_eq!(db["name"], "orders@db.internal");
    assert_eq!(db["namespace"], "remote");
    assert_eq!(
        db["sql"],
        json!({"url": "postgresql://db.internal:5432/orders", "database_type": "postgresql",
               "user": "shop", "sanitized_query": "SELECT * FROM orders WHERE id = $1"})
    );
    assert!(db.get("fault").is_none() && db.get("cause").is_none());

    let http = &subs[http_id].0;
    assert_eq!(http["name"], "inventory.internal");
    assert_eq!(http["namespace"], "remote");
    assert_eq!(
        http["http"],
        json!({"request": {"method": "GET", "url": "http://inventory.internal:8080/stock/42"},
               "response": {"status": 503}})
    );
    assert_eq!(http["fault"], true);
    let exception = &http["cause"]["exceptions"][0];
    // The Python SDK's `exception.type` is module-qualified for non-builtin exceptions.
    assert_eq!(exception["type"], "__main__.InventoryUnavailable");
    assert_eq!(exception["message"], "inventory answered 503");
    let stack = exception["stack"]
        .as_array()
        .expect("frames from the traceback");
    assert!(
        stack.iter().any(|f| f["path"]
            .as_str()
            .is_some_and(|p| p.ends_with("xray_web_app.py"))
            && f["label"] == "main"),
        "{stack:?}"
    );

    // GetTraceSummaries finds it too.
    let endpoint = moto.endpoint();
    let (start, end) = (
        (unix_now() - 600).to_string(),
        (unix_now() + 600).to_string(),
    );
    let summaries = run_client(
        "xray_query.py",
        &[
            "--endpoint",
            &endpoint,
            "trace-summaries",
            "--start",
            &start,
            "--end",
            &end,
        ],
    );
    let ids: Vec<&str> = summaries["TraceSummaries"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["Id"].as_str())
        .collect();
    assert!(ids.contains(&xid.id.as_str()), "{summaries}");

    let metrics = tw.metrics();
    assert!(
        metrics.contains("tidewater_xray_spans_total 3"),
        "{metrics}"
    );
}

#[test]
fn xray_sdk_segments_over_udp_reach_xray_intact() {
    let moto = moto();
    let dir = tempfile::tempdir().unwrap();
    let tw = Tidewater::up(dir.path(), &xray_env(&moto));

    // A bad datagram first: counted, logged, and the receiver goes on.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.send_to(b"not the daemon protocol", ("127.0.0.1", tw.xray_udp))
        .unwrap();

    let daemon = format!("127.0.0.1:{}", tw.xray_udp);
    let sent = run_client("xray_sdk_app.py", &["--daemon", &daemon]);
    let trace_id = sent["trace_id"].as_str().unwrap();
    let sent_docs: HashMap<String, Value> = sent["sent"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["id"].as_str().unwrap().to_string(), d.clone()))
        .collect();
    assert_eq!(
        sent_docs.len(),
        3,
        "the segment and two streamed subsegments: {sent}"
    );

    let stored = stored_documents(&moto, trace_id, 3)
        .unwrap_or_else(|| panic!("segments not in X-Ray:\n{}", tw.log()));
    assert_eq!(
        stored, sent_docs,
        "X-Ray holds exactly the documents the SDK sent"
    );
    let segment = &stored[sent["segment_id"].as_str().unwrap()];
    assert_eq!(segment["annotations"]["cart_items"], 3);
    let charge = stored
        .values()
        .find(|d| d["name"] == "charge-card")
        .unwrap();
    assert_eq!(charge["type"], "subsegment");
    assert_eq!(charge["parent_id"], segment["id"]);
    assert_eq!(charge["cause"]["exceptions"][0]["message"], "card declined");

    let metrics = tw.metrics();
    assert!(
        metrics.contains(r#"tidewater_collector_xray_bad_datagrams_total{reason="header"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"tidewater_xray_documents_total{source="xray_sdk"} 3"#),
        "{metrics}"
    );
}

/// Between the sink and moto: answers the first `PutTraceSegments` call with throttling,
/// reports the documents in `throttle_once` as unprocessed (`ThrottledException`) the first
/// time it sees them and those in `reject` every time (`InvalidSegment`), forwarding only the
/// rest to moto. Records the document ids of every call it processed.
struct Faults {
    upstream: String,
    throttle_first_call: AtomicBool,
    throttle_once: Mutex<HashSet<String>>,
    reject: HashSet<String>,
    calls: Mutex<Vec<Vec<String>>>,
}

async fn fault_proxy(
    axum::extract::State(f): axum::extract::State<Arc<Faults>>,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let json_type = [("content-type", "application/x-amz-json-1.1")];
    if uri.path() != "/TraceSegments" {
        return (axum::http::StatusCode::NOT_FOUND, "not proxied").into_response();
    }
    if f.throttle_first_call.swap(false, Ordering::SeqCst) {
        return (
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            [
                ("content-type", "application/x-amz-json-1.1"),
                ("x-amzn-errortype", "ThrottledException"),
            ],
            json!({"__type": "ThrottledException", "message": "Rate exceeded"}).to_string(),
        )
            .into_response();
    }
    let request: Value = serde_json::from_slice(&body).unwrap();
    let docs: Vec<String> = request["TraceSegmentDocuments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_str().unwrap().to_string())
        .collect();
    let mut forward = Vec::new();
    let mut unprocessed = Vec::new();
    let mut ids = Vec::new();
    for doc in docs {
        let id = serde_json::from_str::<Value>(&doc).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_string();
        ids.push(id.clone());
        if f.reject.contains(&id) {
            unprocessed.push(json!({"Id": id, "ErrorCode": "InvalidSegment", "Message": "Invalid segment. ErrorCode: InvalidSegment"}));
        } else if f.throttle_once.lock().unwrap().remove(&id) {
            unprocessed.push(
                json!({"Id": id, "ErrorCode": "ThrottledException", "Message": "Rate exceeded"}),
            );
        } else {
            forward.push(doc);
        }
    }
    f.calls.lock().unwrap().push(ids);
    let mut upstream = reqwest::Client::new()
        .post(format!("{}{}", f.upstream, uri.path()))
        .body(json!({ "TraceSegmentDocuments": forward }).to_string());
    for (k, v) in &headers {
        if k != "host" && k != "content-length" {
            upstream = upstream.header(k, v);
        }
    }
    let answer: Value = upstream.send().await.unwrap().json().await.unwrap();
    unprocessed.extend(
        answer["UnprocessedTraceSegments"]
            .as_array()
            .cloned()
            .unwrap_or_default(),
    );
    (
        json_type,
        json!({ "UnprocessedTraceSegments": unprocessed }).to_string(),
    )
        .into_response()
}

#[test]
fn only_unprocessed_documents_are_retried_and_rejected_ones_dead_lettered() {
    let moto = moto();
    let span_hex = |t: u16, s: u16| format!("00000007{t:04x}{s:04x}");
    let faults = Arc::new(Faults {
        upstream: moto.endpoint(),
        throttle_first_call: AtomicBool::new(true),
        throttle_once: Mutex::new([span_hex(1, 4), span_hex(1, 18)].into_iter().collect()),
        reject: [span_hex(2, 6)].into_iter().collect(),
        calls: Mutex::default(),
    });
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let proxy_port = listener.local_addr().unwrap().port();
    let app = axum::Router::new()
        .fallback(fault_proxy)
        .with_state(faults.clone());
    rt.spawn(async move { axum::serve(listener, app).await });

    let dir = tempfile::tempdir().unwrap();
    let mut env = xray_env(&moto);
    for (k, v) in env.iter_mut() {
        if k == "AWS_ENDPOINT_URL" {
            *v = format!("http://127.0.0.1:{proxy_port}");
        }
    }
    let tw = Tidewater::up(dir.path(), &env);

    // 3 traces x 40 root spans = 120 segment documents: three calls of 50, 50 and 20.
    let mut request = otlp_traces(7, 3, 40);
    let now_nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut all_ids = HashSet::new();
    let mut trace_ids = HashSet::new();
    for span in request.resource_spans[0].scope_spans[0].spans.iter_mut() {
        span.start_time_unix_nano = now_nanos;
        span.end_time_unix_nano = now_nanos + 5_000_000;
        all_ids.insert(
            span.span_id
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
        );
        let trace: [u8; 16] = span.trace_id.clone().try_into().unwrap();
        trace_ids.insert(
            xray_trace_id(&trace, now_nanos, SystemTime::now())
                .unwrap()
                .id,
        );
    }
    assert_eq!((all_ids.len(), trace_ids.len()), (120, 3));
    let response = post_protobuf(&tw.http_url("/v1/traces"), request.encode_to_vec());
    assert_eq!(response.status(), 200);

    let rejected = span_hex(2, 6);
    let expected: HashSet<String> = all_ids
        .iter()
        .filter(|id| **id != rejected)
        .cloned()
        .collect();
    let trace_ids: Vec<&str> = trace_ids.iter().map(String::as_str).collect();
    let stored = wait_for(Duration::from_secs(30), || {
        let out = batch_get_traces(&moto, &trace_ids);
        let ids: HashSet<String> = out["Traces"]
            .as_array()?
            .iter()
            .flat_map(|t| t["Segments"].as_array().cloned().unwrap_or_default())
            .map(|s| s["Id"].as_str().unwrap().to_string())
            .collect();
        (ids.len() >= expected.len()).then_some(ids)
    })
    .unwrap_or_else(|| panic!("X-Ray incomplete:\n{}", tw.log()));
    assert_eq!(
        stored, expected,
        "everything but the rejected document, once"
    );

    // Each document was processed once, except the two throttled ones: exactly twice, and
    // their second time in a call of their own.
    let calls = faults.calls.lock().unwrap().clone();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for id in calls.iter().flatten() {
        *seen.entry(id).or_default() += 1;
    }
    let throttled: HashSet<String> = [span_hex(1, 4), span_hex(1, 18)].into();
    for id in &all_ids {
        let want = if throttled.contains(id) { 2 } else { 1 };
        assert_eq!(seen.get(id.as_str()), Some(&want), "{id} in {calls:?}");
    }
    let retries: Vec<&Vec<String>> = calls.iter().filter(|c| c.len() < 20).collect();
    assert!(
        !retries.is_empty()
            && retries
                .iter()
                .all(|c| c.iter().all(|id| throttled.contains(id))),
        "retries carry only the throttled documents: {calls:?}"
    );

    let dead = std::fs::read_to_string(dir.path().join("tidewater-data/dead-letter/xray.ndjson"))
        .expect("dead-letter file");
    let dead: Vec<Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["id"], rejected);
    assert_eq!(dead[0]["code"], "InvalidSegment");
    assert!(dead[0]["reason"]
        .as_str()
        .unwrap()
        .contains("Invalid segment"));
    let doc: Value = serde_json::from_str(dead[0]["document"].as_str().unwrap()).unwrap();
    assert_eq!(doc["id"], rejected);

    let metrics = tw.metrics();
    for line in [
        r#"tidewater_sink_refusals_total{sink="xray",code="InvalidSegment"} 1"#,
        r#"tidewater_sink_items_total{sink="xray",outcome="stored"} 119"#,
        r#"tidewater_xray_translation_total{kind="remapped_trace_ids"} 120"#,
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
    // The engine counts every document sent again under the service's code: the two X-Ray
    // left unprocessed, and those of the one call it throttled as a whole (at most 50; how
    // many depends on how the round's records were cut into calls).
    let retried: u64 = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                r#"tidewater_sink_retries_total{sink="xray",reason="ThrottledException"} "#,
            )
        })
        .unwrap_or_else(|| panic!("no ThrottledException retries:\n{metrics}"))
        .trim()
        .parse()
        .unwrap();
    assert!(
        (3..=52).contains(&retried),
        "2 unprocessed documents and one throttled call of at most 50: {retried}"
    );
}
