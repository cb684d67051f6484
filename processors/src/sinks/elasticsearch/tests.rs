//! The sink's reading of `_bulk` answers, through the one delivery harness: a scripted cluster
//! answers as Elasticsearch does (item failures inside a 200, whole-request 429/503/413/400/
//! 401), the sink's own chunking, classification and dead-letter record run on the real
//! engine. The real cluster (osmem-server) is exercised end to end in
//! `tests/elasticsearch_*.rs`.

use std::sync::Mutex;

use async_trait::async_trait;
use serde_json::{json, Value};

use super::classify::Reply;
use super::dead_letter::{self, line};
use super::request::{self, BulkItem, DocKind};
use super::service::{self, Doc, NAME};
use super::template;
use super::ElasticsearchSinkConfig;
use crate::delivery::harness::{self, Run, Script};
use crate::delivery::{Answer, Service};

/// One scripted reply: status, `Retry-After`, body.
type Scripted = (u16, Option<&'static str>, Value);

/// `_bulk` of a cluster that answers from a script, recording the `_id`s of each request;
/// chunked at `max_actions` documents like the real service.
struct Cluster {
    script: Script<Scripted>,
    seen: Mutex<Vec<Vec<String>>>,
    max_actions: usize,
}

#[async_trait]
impl Service for Cluster {
    type Item = Doc;

    fn name(&self) -> &'static str {
        NAME
    }

    fn calls(&self, docs: Vec<Doc>) -> Vec<Vec<Doc>> {
        request::chunks(docs.into_iter(), usize::MAX, self.max_actions).collect()
    }

    async fn call(&self, docs: &[Doc]) -> Answer {
        let body = request::body(docs.iter().map(|d| &d.bulk));
        let ids = std::str::from_utf8(&body)
            .unwrap()
            .lines()
            .step_by(2)
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["create"]["_id"].to_string())
            .map(|id| id.trim_matches('"').to_string())
            .collect();
        self.seen.lock().unwrap().push(ids);
        let (status, retry_after, answer) = self.script.next().expect("a scripted answer");
        let answer = answer.to_string();
        let reply = Reply::Answered {
            status,
            retry_after,
            body: answer.as_bytes(),
        };
        service::answer(docs, reply, body.len())
    }

    fn describe(&self, doc: &Doc) -> Value {
        dead_letter::record(doc)
    }
}

fn docs(ids: &[&str]) -> Vec<Doc> {
    ids.iter()
        .map(|id| {
            let item = BulkItem::create(
                DocKind::Event,
                "tidewater-events-2026.11.01".into(),
                id,
                &json!({"message_id": id}),
            )
            .unwrap();
            Doc::new(item)
        })
        .collect()
}

/// A `_bulk` 200 with one item per `(status, error type)`.
fn items(results: &[(u16, &str)]) -> Scripted {
    let items: Vec<Value> = results
        .iter()
        .map(|(status, kind)| {
            let mut item = json!({"_index": "tidewater-events-2026.11.01", "status": status});
            if *status >= 300 {
                item["error"] = json!({"type": kind, "reason": format!("{kind} here")});
            }
            json!({ "create": item })
        })
        .collect();
    let errors = results.iter().any(|(s, _)| *s >= 300);
    (
        200,
        None,
        json!({"took": 2, "errors": errors, "items": items}),
    )
}

fn failed(status: u16, kind: &str) -> Scripted {
    (
        status,
        None,
        json!({"error": {"type": kind, "reason": format!("{kind} here")}, "status": status}),
    )
}

async fn run(
    script: Vec<Scripted>,
    max_actions: usize,
    ids: &[&str],
) -> (Vec<Vec<String>>, Run<Doc>) {
    let cluster = Cluster {
        script: Script::new(script),
        seen: Mutex::default(),
        max_actions,
    };
    let (engine, run) = harness::run(cluster, docs(ids)).await;
    let seen = engine.service().seen.lock().unwrap().clone();
    (seen, run)
}

fn sent(calls: &[&[&str]]) -> Vec<Vec<String>> {
    calls
        .iter()
        .map(|c| c.iter().map(|s| s.to_string()).collect())
        .collect()
}

/// `(document_id, status, code)` of each dead-letter line.
fn dead(run: &Run<Doc>) -> Vec<(String, u64, String)> {
    run.dead_letters
        .iter()
        .map(|l| {
            (
                l["document_id"].as_str().unwrap().to_string(),
                l["status"].as_u64().unwrap(),
                l["code"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn only_throttled_items_are_sent_again_conflicts_are_done_and_bad_ones_dead_lettered() {
    let (seen, run) = run(
        vec![
            items(&[
                (201, ""),
                (429, "es_rejected_execution_exception"),
                (400, "mapper_parsing_exception"),
                (409, "version_conflict_engine_exception"),
                (503, "unavailable_shards_exception"),
                (400, "index_closed_exception"),
            ]),
            items(&[
                (201, ""),
                (429, "es_rejected_execution_exception"),
                (201, ""),
            ]),
            items(&[(201, "")]),
        ],
        100,
        &["a", "b", "c", "d", "e", "f"],
    )
    .await;
    assert_eq!(
        seen,
        sent(&[&["a", "b", "c", "d", "e", "f"], &["b", "e", "f"], &["e"]])
    );
    assert_eq!((run.report.stored, run.report.already_stored), (4, 1));
    assert_eq!(
        dead(&run),
        [("c".into(), 400, "mapper_parsing_exception".into())]
    );
    let letter = &run.dead_letters[0];
    assert_eq!(letter["error"]["type"], "mapper_parsing_exception");
    assert_eq!(letter["reason"], "mapper_parsing_exception here");
    assert_eq!(letter["document"], json!({"message_id": "c"}));
}

#[tokio::test]
async fn an_item_still_throttled_after_its_attempts_is_dead_lettered_with_the_clusters_word() {
    let throttled = || items(&[(429, "es_rejected_execution_exception")]);
    let (seen, run) = run(vec![throttled(), throttled(), throttled()], 100, &["a"]).await;
    assert_eq!(seen.len(), 3, "max_attempts sends");
    assert_eq!(
        dead(&run),
        [("a".into(), 429, "es_rejected_execution_exception".into())]
    );
    assert!(run.dead_letters[0]["reason"]
        .as_str()
        .unwrap()
        .starts_with("still not taken after 3 attempts"));
}

#[tokio::test]
async fn whole_request_failures_are_retried_whole_without_spending_the_budget() {
    let (seen, run) = run(
        vec![
            failed(503, "unavailable_shards_exception"),
            (429, Some("0"), json!({})),
            failed(502, "bad_gateway"),
            failed(401, "security_exception"),
            failed(403, "security_exception"),
            items(&[(201, ""), (201, "")]),
        ],
        100,
        &["a", "b"],
    )
    .await;
    assert_eq!(seen, vec![vec!["a".to_string(), "b".into()]; 6]);
    assert_eq!(run.report.stored, 2);
    assert!(run.dead_letters.is_empty());
}

#[tokio::test]
async fn a_413_halves_the_request_and_a_document_too_large_alone_is_dead_lettered() {
    let too_large = || (413, None, json!({}));
    let (seen, run) = run(
        vec![
            too_large(),
            items(&[(201, "")]),
            too_large(),
            items(&[(201, "")]),
            too_large(),
        ],
        100,
        &["a", "b", "c"],
    )
    .await;
    assert_eq!(
        seen,
        sent(&[&["a", "b", "c"], &["a"], &["b", "c"], &["b"], &["c"]])
    );
    assert_eq!(run.report.stored, 2);
    assert_eq!(dead(&run), [("c".into(), 413, "TooLarge".into())]);
    let letter = &run.dead_letters[0];
    assert_eq!(letter["error"]["type"], "request_too_large");
    assert!(letter["error"]["reason"]
        .as_str()
        .unwrap()
        .starts_with("a document of"));
}

#[tokio::test]
async fn a_request_refused_as_unreadable_is_bisected_to_the_culprit() {
    let bad = || failed(400, "x_content_parse_exception");
    let (seen, run) = run(
        vec![
            bad(),
            items(&[(201, "")]),
            bad(),
            bad(),
            items(&[(201, "")]),
        ],
        100,
        &["a", "b", "c"],
    )
    .await;
    assert_eq!(
        seen,
        sent(&[&["a", "b", "c"], &["a"], &["b", "c"], &["b"], &["c"]])
    );
    assert_eq!(run.report.stored, 2);
    assert_eq!(
        dead(&run),
        [("b".into(), 400, "x_content_parse_exception".into())]
    );
}

#[tokio::test]
async fn requests_are_cut_at_max_actions() {
    let ok2 = || items(&[(201, ""), (201, "")]);
    let (seen, run) = run(
        vec![ok2(), ok2(), items(&[(201, "")])],
        2,
        &["a", "b", "c", "d", "e"],
    )
    .await;
    assert_eq!(seen, sent(&[&["a", "b"], &["c", "d"], &["e"]]));
    assert_eq!(run.report.stored, 5);
}

#[tokio::test]
async fn the_indexed_dead_letter_is_the_line_in_the_file() {
    let (_, run) = run(
        vec![items(&[(201, ""), (400, "mapper_parsing_exception")])],
        100,
        &["m-1", "m-9"],
    )
    .await;
    let written = &run.dead_letters[0];
    let letter = line(&run.report.dead_lettered[0]);
    assert_eq!(*written, letter);
    let time = letter["time"].as_str().unwrap();
    assert!(time.ends_with('Z') && time.len() == 24, "{time}");
    assert_eq!(
        letter,
        json!({
            "time": time, "@timestamp": time, "sink": "elasticsearch",
            "code": "mapper_parsing_exception",
            "reason": "mapper_parsing_exception here",
            "index": "tidewater-events-2026.11.01",
            "document_id": "m-9",
            "status": 400,
            "error": {"type": "mapper_parsing_exception",
                      "reason": "mapper_parsing_exception here"},
            "document": {"message_id": "m-9"}
        })
    );

    // The strict dead-letter index maps every key of a line.
    let t = template::dead_letter_template(&ElasticsearchSinkConfig::default());
    let mapped = &t.body["template"]["mappings"]["properties"];
    for key in letter.as_object().unwrap().keys() {
        assert!(mapped.get(key).is_some(), "{key} is not mapped");
    }

    let to_index = dead_letter::to_index(&run.report.dead_lettered, "tidewater-dead-letter");
    assert_eq!(to_index.len(), 1);
    let d = &to_index[0].bulk;
    assert_eq!(
        (d.kind, d.index.as_str(), d.id.as_str()),
        (DocKind::DeadLetter, "tidewater-dead-letter", "events:m-9")
    );
    assert_eq!(serde_json::from_slice::<Value>(d.source()).unwrap(), letter);

    // A dead letter the dead-letter index refused stays in the file only.
    let refused_again = crate::delivery::Refusal {
        item: to_index.into_iter().next().unwrap(),
        code: "strict_dynamic_mapping_exception".into(),
        message: "no".into(),
    };
    assert!(dead_letter::to_index(&[refused_again], "tidewater-dead-letter").is_empty());
}
