//! The Elasticsearch sink under failure, through a fault-injecting proxy in front of the real
//! stand-in: item-level 429s and a type conflict in one bulk, whole-request 503s, a crash
//! after indexing but before checkpointing; and authentication (SigV4, basic) and TLS with a
//! custom CA.

use std::collections::HashMap;
use std::time::Duration;

use crate::common::bulk_proxy::BulkProxy;
use crate::common::es::{es_env, metric, post_events, Es};
use crate::common::peers;
use crate::common::*;
use serde_json::{json, Value};

const EVENTS: &str = "tidewater-events";

/// The stand-in, the proxy in front of it, and `tidewater up` writing through the proxy.
/// Bind every field (`_osmem` too: `..` would drop it at once), Tidewater last so it drops
/// first.
struct Stack {
    tw: Tidewater,
    es: Es,
    proxy: BulkProxy,
    dir: tempfile::TempDir,
    _osmem: peers::Peer,
}

impl Stack {
    fn up(extra_env: &[(&'static str, String)]) -> Stack {
        let osmem = peers::elasticsearch();
        let proxy = BulkProxy::start(&osmem.endpoint());
        let dir = tempfile::tempdir().unwrap();
        let mut env = es_env(&proxy.url());
        env.extend_from_slice(extra_env);
        Stack {
            tw: Tidewater::up(dir.path(), &env),
            es: Es::new(&osmem.endpoint()),
            proxy,
            dir,
            _osmem: osmem,
        }
    }
}

/// Publishes `events` (`(message_id, user, properties)`) over HTTP, all on 2026-11-01.
fn publish(tw: &Tidewater, events: &[(String, &str, Value)]) {
    let body: Vec<Value> = events
        .iter()
        .map(|(id, user, props)| {
            json!({"message_id": id, "name": "Order Completed", "user_id": user,
                   "timestamp": "2026-11-01T12:00:00Z", "properties": props})
        })
        .collect();
    let answer = post_events(tw, &body);
    assert_eq!(answer["accepted"], events.len(), "{answer}");
}

fn ids(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("e-{i}")).collect()
}

#[test]
fn partial_bulk_failure_retries_only_the_429s_and_dead_letters_the_conflict() {
    let Stack {
        _osmem,
        dir,
        proxy,
        es,
        tw,
    } = Stack::up(&[]);

    // The day's index learns `properties.total` as a number.
    publish(&tw, &[("seed".into(), "u-1", json!({"total": 1}))]);
    es.wait_count(EVENTS, 1, || tw.log());

    // One bulk of ten (one user: one partition, one bus record): three throttled by the
    // cluster, one whose `total` is text.
    proxy.throttle_once(&["e-3", "e-5", "e-8"]);
    let batch: Vec<(String, &str, Value)> = ids(0..10)
        .into_iter()
        .map(|id| {
            let total = if id == "e-6" {
                json!("lots of money")
            } else {
                json!(42.5)
            };
            (id, "u-1", json!({ "total": total }))
        })
        .collect();
    publish(&tw, &batch);
    es.wait_count(EVENTS, 10, || tw.log());
    es.wait_count("tidewater-dead-letter", 1, || tw.log());

    // Exactly the throttled items were sent again, alone; the conflict was not retried.
    let bulks: Vec<Vec<String>> = proxy
        .bulks()
        .iter()
        .map(|b| b.ids_in(EVENTS))
        .filter(|ids| !ids.is_empty())
        .collect();
    assert_eq!(
        bulks,
        vec![
            vec!["seed".to_string()],
            ids(0..10),
            vec!["e-3".into(), "e-5".into(), "e-8".into()]
        ]
    );

    // Every good event is there, the bad one is not.
    let stored: HashMap<String, Value> = es.sources(EVENTS).into_iter().collect();
    for id in ids(0..10) {
        assert_eq!(stored.contains_key(&id), id != "e-6", "{id}");
    }

    // The bad one is dead-lettered, with the cluster's reason, in the file and the index.
    let file = dir
        .path()
        .join("tidewater-data/dead-letter/elasticsearch.ndjson");
    let lines: Vec<Value> = std::fs::read_to_string(&file)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{lines:?}");
    let letter = &lines[0];
    assert_eq!(letter["document_id"], "e-6");
    assert_eq!(letter["index"], "tidewater-events-2026.11.01");
    assert_eq!(letter["status"], 400);
    assert_eq!(letter["error"]["type"], "mapper_parsing_exception");
    assert!(
        letter["error"]["reason"]
            .as_str()
            .unwrap()
            .contains("properties.total"),
        "{letter}"
    );
    assert_eq!(letter["document"]["properties"]["total"], "lots of money");
    let indexed = es.sources("tidewater-dead-letter");
    assert_eq!(indexed.len(), 1);
    assert_eq!(indexed[0].0, "events:e-6");
    assert_eq!(indexed[0].1, *letter);

    // A whole request refused twice is sent again whole.
    proxy.fail_requests(2);
    publish(
        &tw,
        &[
            ("e-10".into(), "u-1", json!({"total": 1})),
            ("e-11".into(), "u-1", json!({"total": 2})),
        ],
    );
    es.wait_count(EVENTS, 12, || tw.log());
    let last: Vec<Vec<String>> = proxy
        .bulks()
        .iter()
        .rev()
        .take(3)
        .map(|b| b.ids_in(EVENTS))
        .collect();
    assert_eq!(last, vec![ids(10..12); 3]);

    let m = tw.metrics();
    let items = |outcome| {
        metric(
            &m,
            "tidewater_sink_items_total",
            &[("sink", "elasticsearch"), ("outcome", outcome)],
        )
    };
    // 12 events and the dead letter indexed into the dead-letter index.
    assert_eq!(items("stored"), 12.0 + 1.0, "{m}");
    assert_eq!(items("dead_lettered"), 1.0);
    assert_eq!(
        metric(
            &m,
            "tidewater_sink_retries_total",
            &[
                ("sink", "elasticsearch"),
                ("reason", "es_rejected_execution_exception")
            ]
        ),
        3.0
    );
    assert_eq!(
        metric(
            &m,
            "tidewater_sink_calls_total",
            &[("sink", "elasticsearch"), ("answer", "retry")]
        ),
        2.0
    );
}

#[test]
fn replay_after_a_crash_between_indexing_and_checkpoint_duplicates_nothing() {
    let Stack {
        _osmem,
        dir: _dir,
        proxy,
        es,
        mut tw,
    } = Stack::up(&[]);

    // The cluster stores every document, and its answers never come back: the processor is
    // still waiting for them, before its checkpoint, when it is killed.
    proxy.swallow_responses(true);
    // One user, one request: one bus record, one round. The last event is a client's retry
    // of one already in the request.
    let mut events: Vec<(String, &str, Value)> = ids(0..30)
        .into_iter()
        .enumerate()
        .map(|(i, id)| (id, "u-1", json!({ "total": i })))
        .collect();
    events.push(events[5].clone());
    publish(&tw, &events);
    es.wait_count(EVENTS, 30, || tw.log());
    let sent_before_crash = proxy.bulks().len();
    tw.kill();

    proxy.swallow_responses(false);
    tw.start();
    // The restarted processor delivers the un-checkpointed rounds again: the cluster answers
    // 409 for every one of them.
    let replayed = wait_for(Duration::from_secs(30), || {
        let m = tw.metrics();
        let again = metric(
            &m,
            "tidewater_sink_items_total",
            &[("sink", "elasticsearch"), ("outcome", "already_stored")],
        );
        (again >= 30.0).then_some(again)
    });
    assert!(replayed.is_some(), "no replay seen:\n{}", tw.log());
    assert!(proxy.bulks().len() > sent_before_crash);
    es.wait_count(EVENTS, 30, || tw.log());
    let m = tw.metrics();
    assert_eq!(
        metric(
            &m,
            "tidewater_sink_items_total",
            &[("sink", "elasticsearch"), ("outcome", "stored")]
        ),
        0.0,
        "nothing new after the restart: {m}"
    );
    let stored: Vec<String> = es.sources(EVENTS).into_iter().map(|(id, _)| id).collect();
    let mut want = ids(0..30);
    want.sort();
    let mut got = stored;
    got.sort();
    assert_eq!(got, want);
}

/// Headers of every `_bulk` Tidewater sends to index one event under `auth_env`.
fn bulk_headers_with(auth_env: &[(&'static str, String)]) -> Vec<axum::http::HeaderMap> {
    let Stack {
        _osmem,
        dir: _dir,
        proxy,
        es,
        tw,
    } = Stack::up(auth_env);
    publish(&tw, &[("a-1".into(), "u-1", json!({"total": 1}))]);
    es.wait_count(EVENTS, 1, || tw.log());
    proxy.bulks().into_iter().map(|b| b.headers).collect()
}

#[test]
fn signed_requests_for_amazon_opensearch_service() {
    let mut env = vec![(
        "TIDEWATER_SINKS__ELASTICSEARCH__AUTH__KIND",
        "aws_sigv4".to_string(),
    )];
    env.extend(peers::aws_env("http://127.0.0.1:9"));
    for headers in bulk_headers_with(&env) {
        let auth = headers["authorization"].to_str().unwrap();
        assert!(
            auth.starts_with("AWS4-HMAC-SHA256 Credential=testing/")
                && auth.contains("/us-east-1/es/aws4_request")
                && auth.contains("SignedHeaders=host;x-amz-content-sha256;x-amz-date"),
            "{auth}"
        );
        assert_eq!(headers["x-amz-content-sha256"].len(), 64);
    }
}

#[test]
fn basic_auth_header_is_sent() {
    let env = [
        ("TIDEWATER_SINKS__ELASTICSEARCH__AUTH__KIND", "basic"),
        ("TIDEWATER_SINKS__ELASTICSEARCH__AUTH__USERNAME", "ingest"),
        ("TIDEWATER_SINKS__ELASTICSEARCH__AUTH__PASSWORD", "s3cret"),
    ]
    .map(|(k, v)| (k, v.to_string()));
    for headers in bulk_headers_with(&env) {
        // base64("ingest:s3cret")
        assert_eq!(headers["authorization"], "Basic aW5nZXN0OnMzY3JldA==");
    }
}

#[test]
fn tls_with_a_custom_ca() {
    let osmem = peers::elasticsearch();
    let es = Es::new(&osmem.endpoint());
    let dir = tempfile::tempdir().unwrap();
    let (front, ca) = crate::common::es::tls_front(&osmem.endpoint(), dir.path());
    let https = format!("https://127.0.0.1:{}", front.port);

    // The front's certificate is trusted by no one but holders of that CA.
    let untrusted = reqwest::blocking::Client::new().get(&https).send();
    let error = format!("{:?}", untrusted.unwrap_err());
    assert!(error.contains("UnknownIssuer"), "{error}");

    let mut env = es_env(&https);
    env.push((
        "TIDEWATER_SINKS__ELASTICSEARCH__TLS__CA_FILE",
        ca.display().to_string(),
    ));
    let tw = Tidewater::up(dir.path(), &env);
    publish(&tw, &[("t-1".into(), "u-1", json!({"total": 1}))]);
    es.wait_count(EVENTS, 1, || tw.log());
}

#[test]
fn bulk_limits_hold_and_mapping_explosion_is_dead_lettered() {
    let env = vec![
        (
            "TIDEWATER_SINKS__ELASTICSEARCH__BULK__MAX_ACTIONS",
            "5".to_string(),
        ),
        (
            "TIDEWATER_SINKS__ELASTICSEARCH__DELIVERY__CONCURRENCY",
            "3".to_string(),
        ),
        (
            "TIDEWATER_SINKS__ELASTICSEARCH__TOTAL_FIELDS_LIMIT",
            "60".to_string(),
        ),
    ];
    let Stack {
        _osmem,
        dir,
        proxy,
        es,
        tw,
    } = Stack::up(&env);
    proxy.delay(Duration::from_millis(150));

    // 40 events and one with 100 properties, in one round.
    let mut events: Vec<(String, &str, Value)> = ids(0..40)
        .into_iter()
        .map(|id| (id, "u-1", json!({"total": 1})))
        .collect();
    let wide: serde_json::Map<String, Value> =
        (0..100).map(|i| (format!("p{i}"), json!(i))).collect();
    events.push(("wide".into(), "u-1", Value::Object(wide)));
    publish(&tw, &events);
    es.wait_count(EVENTS, 40, || tw.log());
    es.wait_count("tidewater-dead-letter", 1, || tw.log());

    // Requests of at most 5 documents, 3 at a time.
    let mut sizes: Vec<usize> = proxy
        .bulks()
        .iter()
        .map(|b| b.ids_in(EVENTS).len())
        .filter(|n| *n > 0)
        .collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(sizes, [5, 5, 5, 5, 5, 5, 5, 5, 1], "{sizes:?}");
    assert_eq!(proxy.max_in_flight(), 3);

    // The event that would take the index past its field limit is dead-lettered with why.
    let file = dir
        .path()
        .join("tidewater-data/dead-letter/elasticsearch.ndjson");
    let letter: Value =
        serde_json::from_str(std::fs::read_to_string(file).unwrap().trim()).unwrap();
    assert_eq!(letter["document_id"], "wide");
    assert!(
        letter["error"]["reason"]
            .as_str()
            .unwrap()
            .contains("Limit of total fields [60]"),
        "{letter}"
    );
}
