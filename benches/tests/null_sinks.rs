//! The null server as the processor's sinks see it. The bench runner's X-Ray and Elasticsearch
//! drain points point the real sinks at it, and a wrong answer there would not fail loudly:
//! the sink would retry, dead-letter or stall, and the drain would measure that instead of the
//! processor. So: the real Elasticsearch sink installs its templates and indexes every
//! document against it, and the X-Ray, `_bulk` and template answers have the shapes the
//! clients read.

use std::time::Duration;

use serde_json::Value;
use tidewater_benches::es::{events, shared};
use tidewater_benches::null_server;
use tidewater_processors::sink::Sink;
use tidewater_processors::sinks::elasticsearch::{ElasticsearchSink, ElasticsearchSinkConfig};
use tokio_util::sync::CancellationToken;

/// A null server on a free loopback port, until the token is cancelled.
async fn null_server() -> (String, CancellationToken) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let stop = CancellationToken::new();
    tokio::spawn(null_server::serve(listener, stop.clone().cancelled_owned()));
    (url, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_elasticsearch_sink_indexes_every_document_into_the_null_server() {
    let (url, stop) = null_server().await;
    let dead_letters = tempfile::tempdir().unwrap();
    let config = ElasticsearchSinkConfig {
        enabled: true,
        url,
        ..Default::default()
    };
    let sink = ElasticsearchSink::new(config).unwrap();
    // More than one `_bulk` request (5,000 actions each by default), and a short last one.
    let batches = shared(vec![events("a", 6_000, 3), events("b", 7, 1)]);
    tokio::time::timeout(
        Duration::from_secs(60),
        sink.deliver(&batches, &CancellationToken::new()),
    )
    .await
    .expect("delivered in time")
    .expect("every document indexed");
    let rejected: Vec<_> = std::fs::read_dir(dead_letters.path())
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(rejected.is_empty(), "dead letters: {rejected:?}");
    stop.cancel();
}

#[tokio::test]
async fn answers_as_x_ray_and_elasticsearch_do() {
    let (url, stop) = null_server().await;
    let client = reqwest::Client::new();
    let json = |r: reqwest::Response| async move {
        assert!(r.status().is_success(), "{}", r.status());
        serde_json::from_slice::<Value>(&r.bytes().await.unwrap()).unwrap()
    };

    let xray = client
        .post(format!("{url}/TraceSegments"))
        .body(r#"{"TraceSegmentDocuments":["{}"]}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(
        json(xray).await,
        serde_json::json!({"UnprocessedTraceSegments": []})
    );

    let bulk = client
        .post(format!("{url}/_bulk"))
        .header("content-type", "application/x-ndjson")
        .body("{\"create\":{\"_index\":\"i\",\"_id\":\"1\"}}\n{\"a\":1}\n{\"create\":{\"_index\":\"i\",\"_id\":\"2\"}}\n{\"a\":2}\n")
        .send()
        .await
        .unwrap();
    let bulk = json(bulk).await;
    assert_eq!(bulk["errors"], false);
    assert_eq!(
        bulk["items"],
        serde_json::json!([{"create": {"status": 201}}, {"create": {"status": 201}}])
    );

    let template = client
        .get(format!("{url}/_index_template/tidewater-events"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        json(template).await,
        serde_json::json!({"index_templates": []})
    );
    let put = client
        .put(format!("{url}/_index_template/tidewater-events"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(json(put).await["acknowledged"], true);
    stop.cancel();
}
