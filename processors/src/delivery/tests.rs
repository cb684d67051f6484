//! The engine's guarantees, once for every sink, against a service that answers from a
//! script: each sink then only has to show that it reads its own service's answers right.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::harness::config;
use super::*;

/// Answers calls in order from `answers` (then "stored"), recording what each call carried.
pub struct Scripted {
    answers: Mutex<VecDeque<Answer>>,
    pub calls: Mutex<Vec<Vec<u32>>>,
    per_call: usize,
    in_flight: AtomicUsize,
    pub most_in_flight: AtomicUsize,
    pause: Duration,
}

impl Scripted {
    pub fn new(per_call: usize, answers: Vec<Answer>) -> Scripted {
        Scripted {
            answers: Mutex::new(answers.into()),
            calls: Mutex::default(),
            per_call,
            in_flight: AtomicUsize::new(0),
            most_in_flight: AtomicUsize::new(0),
            pause: Duration::ZERO,
        }
    }

    fn calls_made(&self) -> Vec<Vec<u32>> {
        self.calls.lock().unwrap().clone()
    }
}

#[async_trait]
impl Service for Scripted {
    type Item = u32;

    fn name(&self) -> &'static str {
        "scripted"
    }

    fn precheck(&self, item: &u32) -> Option<(String, String)> {
        (*item >= 1000).then(|| ("TooBig".to_string(), format!("item {item} over the limit")))
    }

    fn calls(&self, items: Vec<u32>) -> Vec<Vec<u32>> {
        items.chunks(self.per_call).map(<[u32]>::to_vec).collect()
    }

    async fn call(&self, items: &[u32]) -> Answer {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.most_in_flight.fetch_max(now, Ordering::SeqCst);
        self.calls.lock().unwrap().push(items.to_vec());
        if !self.pause.is_zero() {
            tokio::time::sleep(self.pause).await;
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.answers
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or(Answer::Stored)
    }

    fn describe(&self, item: &u32) -> serde_json::Value {
        json!({ "item": item })
    }
}

fn dead_letters(dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("scripted.ndjson"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn retry(code: &str) -> Verdict {
    Verdict::Retry {
        code: code.into(),
        message: "busy".into(),
    }
}

fn refused(code: &str) -> Verdict {
    Verdict::Refused {
        code: code.into(),
        message: "bad".into(),
    }
}

async fn deliver(engine: &Engine<Scripted>, items: Vec<u32>) -> Report<u32> {
    engine
        .deliver(items, &CancellationToken::new())
        .await
        .unwrap()
}

#[tokio::test]
async fn only_the_items_not_taken_are_sent_again_and_refused_ones_are_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let service = Scripted::new(
        10,
        vec![
            Answer::Items(vec![
                Verdict::Stored,
                retry("Throttled"),
                Verdict::AlreadyStored,
                refused("InvalidSegment"),
            ]),
            Answer::Items(vec![retry("Throttled")]),
        ],
    );
    let engine = Engine::new(service, config(dir.path()));
    let report = deliver(&engine, vec![1, 2, 3, 4, 2000]).await;
    assert_eq!(
        engine.service().calls_made(),
        vec![vec![1, 2, 3, 4], vec![2], vec![2]]
    );
    assert_eq!((report.stored, report.already_stored), (2, 1));
    let dead: Vec<(u32, String)> = report
        .dead_lettered
        .iter()
        .map(|r| (r.item, r.code.clone()))
        .collect();
    assert_eq!(
        dead,
        vec![(2000, "TooBig".into()), (4, "InvalidSegment".into())]
    );
    let lines = dead_letters(dir.path());
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1]["sink"], "scripted");
    assert_eq!(lines[1]["code"], "InvalidSegment");
    assert_eq!(lines[1]["reason"], "bad");
    assert_eq!(lines[1]["item"], 4);
}

#[tokio::test]
async fn an_item_refused_past_its_attempt_budget_is_dead_lettered_with_the_last_reason() {
    let dir = tempfile::tempdir().unwrap();
    let service = Scripted::new(
        10,
        vec![
            Answer::Items(vec![retry("Throttled"), Verdict::Stored]),
            Answer::Items(vec![retry("Throttled")]),
            Answer::Items(vec![retry("Throttled")]),
        ],
    );
    let engine = Engine::new(service, config(dir.path()));
    let report = deliver(&engine, vec![1, 2]).await;
    assert_eq!(engine.service().calls_made().len(), 3);
    assert_eq!(report.stored, 1);
    assert_eq!(report.dead_lettered.len(), 1);
    assert_eq!(report.dead_lettered[0].code, "Throttled");
    assert!(report.dead_lettered[0]
        .message
        .contains("after 3 attempts: busy"));
}

#[tokio::test]
async fn a_call_failing_as_a_whole_is_retried_past_the_budget_until_it_goes_through() {
    let dir = tempfile::tempdir().unwrap();
    let down = || Answer::retry("ConnectionRefused", "connection refused");
    let service = Scripted::new(
        10,
        vec![down(), down(), down(), down(), down(), Answer::Stored],
    );
    let engine = Engine::new(service, config(dir.path()));
    let report = deliver(&engine, vec![1, 2]).await;
    assert_eq!(engine.service().calls_made().len(), 6);
    assert_eq!(report.stored, 2);
    assert!(report.dead_lettered.is_empty());
    assert!(dead_letters(dir.path()).is_empty());
}

#[tokio::test]
async fn a_call_too_large_is_halved_and_a_single_item_too_large_dead_lettered() {
    let dir = tempfile::tempdir().unwrap();
    let too_large = || Answer::TooLarge("413".into());
    // [1,2,3,4] too large → [1,2] too large → [1] too large (refused), [2] stored; [3,4] stored.
    let service = Scripted::new(10, vec![too_large(), too_large(), too_large()]);
    let engine = Engine::new(service, config(dir.path()));
    let report = deliver(&engine, vec![1, 2, 3, 4]).await;
    assert_eq!(
        engine.service().calls_made(),
        vec![vec![1, 2, 3, 4], vec![1, 2], vec![1], vec![2], vec![3, 4]]
    );
    assert_eq!(report.stored, 3);
    assert_eq!(report.dead_lettered[0].item, 1);
    assert_eq!(report.dead_lettered[0].code, "TooLarge");
}

#[tokio::test]
async fn a_call_refused_as_invalid_is_bisected_to_find_the_culprit() {
    let dir = tempfile::tempdir().unwrap();
    let invalid = || Answer::Refused {
        code: "InvalidRequestException".into(),
        message: "bad document".into(),
    };
    // [1,2,3,4] refused → [1,2] stored, [3,4] refused → [3] stored, [4] refused.
    let service = Scripted::new(
        10,
        vec![
            invalid(),
            Answer::Stored,
            invalid(),
            Answer::Stored,
            invalid(),
        ],
    );
    let engine = Engine::new(service, config(dir.path()));
    let report = deliver(&engine, vec![1, 2, 3, 4]).await;
    assert_eq!(
        engine.service().calls_made(),
        vec![vec![1, 2, 3, 4], vec![1, 2], vec![3, 4], vec![3], vec![4]]
    );
    assert_eq!(report.stored, 3);
    assert_eq!(report.dead_lettered.len(), 1);
    assert_eq!(report.dead_lettered[0].item, 4);
    assert_eq!(report.dead_lettered[0].code, "InvalidRequestException");
}

#[tokio::test]
async fn a_wrong_number_of_item_results_is_not_taken_as_an_answer() {
    let dir = tempfile::tempdir().unwrap();
    let service = Scripted::new(10, vec![Answer::Items(vec![Verdict::Stored])]);
    let engine = Engine::new(service, config(dir.path()));
    let report = deliver(&engine, vec![1, 2]).await;
    assert_eq!(engine.service().calls_made().len(), 2);
    assert_eq!(report.stored, 2);
}

#[tokio::test]
async fn a_stop_during_an_outage_returns_stopped_and_dead_letters_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fatal = || Answer::Fatal {
        code: "AccessDeniedException".into(),
        message: "not authorized".into(),
    };
    let service = Scripted::new(10, (0..1000).map(|_| fatal()).collect());
    let mut cfg = config(dir.path());
    cfg.retry_max = Duration::from_millis(20);
    let engine = Engine::new(service, cfg);
    let stop = CancellationToken::new();
    let stopper = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        stopper.cancel();
    });
    assert_eq!(
        engine.deliver(vec![1, 2], &stop).await.unwrap_err(),
        Stopped
    );
    assert!(engine.service().calls_made().len() >= 2);
    assert!(dead_letters(dir.path()).is_empty());
    // Unhealthy at once: no waiting for `unhealthy_after` when no wait can fix it.
    assert!(health::unhealthy()
        .iter()
        .any(|l| l.contains("scripted") && l.contains("AccessDeniedException")));
    health::answered("scripted");
}

#[tokio::test]
async fn a_stop_lets_the_call_in_flight_finish_and_starts_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let mut service = Scripted::new(1, Vec::new());
    service.pause = Duration::from_millis(200);
    let engine = Engine::new(service, config(dir.path()));
    let stop = CancellationToken::new();
    let stopper = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        stopper.cancel();
    });
    // The first call is under way when the stop comes: it finishes; the second is not made.
    assert_eq!(
        engine.deliver(vec![1, 2], &stop).await.unwrap_err(),
        Stopped
    );
    assert_eq!(engine.service().calls_made(), vec![vec![1]]);
    assert_eq!(engine.service().in_flight.load(Ordering::SeqCst), 0);

    // One call only, finished after the stop: the round is settled, so it is delivered.
    let stop = CancellationToken::new();
    let stopper = stop.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        stopper.cancel();
    });
    let report = engine.deliver(vec![3], &stop).await.unwrap();
    assert_eq!(report.stored, 1);
}

#[tokio::test]
async fn calls_in_flight_never_exceed_the_concurrency() {
    let dir = tempfile::tempdir().unwrap();
    let mut service = Scripted::new(1, Vec::new());
    service.pause = Duration::from_millis(5);
    let mut cfg = config(dir.path());
    cfg.concurrency = 3;
    let engine = Engine::new(service, cfg);
    let report = deliver(&engine, (0..20).collect()).await;
    assert_eq!(report.stored, 20);
    assert_eq!(engine.service().most_in_flight.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_retry_after_longer_than_the_backoff_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    let service = Scripted::new(
        10,
        vec![Answer::Retry {
            code: "429".into(),
            message: "slow down".into(),
            after: Some(Duration::from_millis(150)),
        }],
    );
    let engine = Engine::new(service, config(dir.path()));
    let started = std::time::Instant::now();
    deliver(&engine, vec![1]).await;
    assert!(started.elapsed() >= Duration::from_millis(150));
}
