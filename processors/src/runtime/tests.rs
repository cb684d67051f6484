//! The runtime against an in-process bus and sinks whose pace the tests set: what is
//! checkpointed, what each sink receives and when, and the memory held.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use bytesize::ByteSize;
use prost::Message;
use tidewater_bus::{BusError, Consumer, Position, Record};
use tidewater_proto::events::v1::{Event as AnalyticsEvent, PublishRequest};
use tidewater_proto::{Compression, Encoding, Envelope, Signal};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::memory::Budget;
use super::Processor;
use crate::config::ProcessorConfig;
use crate::decode::Batch;
use crate::sink::Sink;

/// A bus record of one event whose payload is `size` bytes (uncompressed, so its decoded
/// cost is exactly known), named `partition:offset` by its record id.
fn record(partition: &str, offset: u64, size: usize) -> Record {
    let mut payload = PublishRequest {
        events: vec![AnalyticsEvent {
            name: String::new(),
            user_id: "u".into(),
            ..Default::default()
        }],
    }
    .encode_to_vec();
    let pad = size.saturating_sub(payload.len() + 3);
    payload = PublishRequest {
        events: vec![AnalyticsEvent {
            name: "x".repeat(pad),
            user_id: "u".into(),
            ..Default::default()
        }],
    }
    .encode_to_vec();
    Record {
        partition: partition.into(),
        position: Position::Offset(offset),
        payload: Bytes::from(
            Envelope {
                signal: Signal::Events as i32,
                encoding: Encoding::EventsProto as i32,
                compression: Compression::None as i32,
                uncompressed_size: payload.len() as u64,
                payload,
                record_id: format!("{partition}:{offset}").into_bytes(),
                item_count: 1,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
    }
}

fn records(partition: &str, n: u64, size: usize) -> Vec<Record> {
    (0..n).map(|o| record(partition, o, size)).collect()
}

#[derive(Default)]
struct BusLog {
    commits: Vec<(String, Position)>,
    closed: bool,
}

/// Hands out its records round robin between partitions, within `max` and `max_bytes`.
struct FakeBus {
    partitions: Vec<VecDeque<Record>>,
    log: Arc<Mutex<BusLog>>,
}

impl FakeBus {
    fn new(records: Vec<Record>) -> (Self, Arc<Mutex<BusLog>>) {
        let mut partitions: Vec<VecDeque<Record>> = Vec::new();
        for r in records {
            match partitions
                .iter_mut()
                .find(|p| p[0].partition == r.partition)
            {
                Some(p) => p.push_back(r),
                None => partitions.push(VecDeque::from([r])),
            }
        }
        let log = Arc::new(Mutex::new(BusLog::default()));
        (
            FakeBus {
                partitions,
                log: Arc::clone(&log),
            },
            log,
        )
    }
}

#[async_trait]
impl Consumer for FakeBus {
    async fn poll(
        &mut self,
        max: usize,
        max_bytes: usize,
        wait: Duration,
    ) -> Result<Vec<Record>, BusError> {
        let mut out: Vec<Record> = Vec::new();
        let mut bytes = 0;
        'fill: loop {
            let mut progressed = false;
            for p in &mut self.partitions {
                let Some(next) = p.front() else { continue };
                if out.len() >= max || (!out.is_empty() && bytes + next.payload.len() > max_bytes) {
                    break 'fill;
                }
                bytes += next.payload.len();
                out.extend(p.pop_front());
                progressed = true;
            }
            if !progressed {
                break;
            }
        }
        if out.is_empty() {
            tokio::time::sleep(wait).await;
        }
        Ok(out)
    }

    async fn commit(&mut self, partition: &str, position: &Position) -> Result<(), BusError> {
        self.log
            .lock()
            .unwrap()
            .commits
            .push((partition.to_string(), position.clone()));
        Ok(())
    }

    async fn close(&mut self) -> Result<(), BusError> {
        self.log.lock().unwrap().closed = true;
        Ok(())
    }
}

enum Pace {
    Fast,
    Sleep(Duration),
    /// One round per permit; stops (with an error) when the processor does.
    Gate(Arc<Semaphore>),
    Fail,
}

struct FakeSink {
    name: &'static str,
    pace: Pace,
    /// Record ids of the rounds it began, and of those it acknowledged, in order.
    started: Mutex<Vec<String>>,
    took: Mutex<Vec<String>>,
    /// Each call's record ids.
    calls: Mutex<Vec<Vec<String>>>,
    ticks: Mutex<Vec<bool>>,
}

impl FakeSink {
    fn new(name: &'static str, pace: Pace) -> Arc<Self> {
        Arc::new(FakeSink {
            name,
            pace,
            started: Mutex::default(),
            took: Mutex::default(),
            calls: Mutex::default(),
            ticks: Mutex::default(),
        })
    }

    fn started(&self) -> Vec<String> {
        self.started.lock().unwrap().clone()
    }

    fn took(&self) -> Vec<String> {
        self.took.lock().unwrap().clone()
    }

    fn took_of(&self, partition: &str) -> Vec<String> {
        self.took()
            .into_iter()
            .filter(|id| id.starts_with(&format!("{partition}:")))
            .collect()
    }
}

fn ids(batches: &[Arc<Batch>]) -> Vec<String> {
    batches
        .iter()
        .map(|b| String::from_utf8(b.record_id.clone()).unwrap())
        .collect()
}

#[async_trait]
impl Sink for FakeSink {
    fn name(&self) -> &'static str {
        self.name
    }

    fn accepts(&self, _signal: Signal) -> bool {
        true
    }

    async fn deliver(
        &self,
        batches: &[Arc<Batch>],
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        self.started.lock().unwrap().extend(ids(batches));
        self.calls.lock().unwrap().push(ids(batches));
        match &self.pace {
            Pace::Fast => {}
            Pace::Sleep(d) => tokio::time::sleep(*d).await,
            Pace::Gate(gate) => tokio::select! {
                permit = gate.acquire() => permit.unwrap().forget(),
                _ = stop.cancelled() => anyhow::bail!("stopped"),
            },
            Pace::Fail => anyhow::bail!("the destination refuses everything"),
        }
        self.took.lock().unwrap().extend(ids(batches));
        Ok(())
    }

    async fn tick(&self, stopping: bool) -> anyhow::Result<()> {
        self.ticks.lock().unwrap().push(stopping);
        Ok(())
    }
}

fn config(dead_letters: &std::path::Path) -> ProcessorConfig {
    ProcessorConfig {
        max_poll_records: 1,
        poll_wait: Duration::from_millis(20),
        stop_grace: Duration::from_millis(100),
        retry_initial: Duration::from_millis(1),
        retry_max: Duration::from_millis(10),
        dead_letter_dir: dead_letters.to_path_buf(),
        ..ProcessorConfig::default()
    }
}

struct Running {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    budget: Arc<Budget>,
    log: Arc<Mutex<BusLog>>,
}

fn start(config: ProcessorConfig, records: Vec<Record>, sinks: &[&Arc<FakeSink>]) -> Running {
    let (bus, log) = FakeBus::new(records);
    let sinks: Vec<Arc<dyn Sink>> = sinks
        .iter()
        .map(|s| Arc::clone(*s) as Arc<dyn Sink>)
        .collect();
    let budget = Budget::new(config.memory_limit.as_u64());
    let stop = CancellationToken::new();
    let processor = Processor::new(config, Box::new(bus), sinks);
    let task = tokio::spawn(processor.run_with(stop.clone(), Arc::clone(&budget)));
    Running {
        stop,
        task,
        budget,
        log,
    }
}

impl Running {
    fn commits(&self) -> Vec<(String, Position)> {
        self.log.lock().unwrap().commits.clone()
    }

    /// The last position committed for `partition`.
    fn committed(&self, partition: &str) -> Option<u64> {
        self.commits()
            .iter()
            .rev()
            .find(|(p, _)| p == partition)
            .map(|(_, pos)| match pos {
                Position::Offset(o) => *o,
                other => panic!("{other:?}"),
            })
    }

    async fn stop(self) -> (anyhow::Result<()>, Arc<Mutex<BusLog>>, Arc<Budget>) {
        self.stop.cancel();
        let result = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the processor stops")
            .expect("no panic");
        (result, self.log, self.budget)
    }
}

async fn until(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn names(partition: &str, offsets: std::ops::Range<u64>) -> Vec<String> {
    offsets.map(|o| format!("{partition}:{o}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checkpoint_never_passes_a_round_a_sink_has_not_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let fast = FakeSink::new("fast", Pace::Fast);
    let slow = FakeSink::new("slow", Pace::Gate(Arc::clone(&gate)));
    let run = start(config(dir.path()), records("a", 6, 200), &[&fast, &slow]);

    // The fast sink takes every round, in order, while the slow one is still on the first.
    until("the fast sink took all", || fast.took().len() == 6).await;
    assert_eq!(fast.took(), names("a", 0..6));
    assert_eq!(slow.started(), names("a", 0..1), "one round at a time");
    assert!(run.commits().is_empty(), "{:?}", run.commits());

    gate.add_permits(1);
    until("round 0 committed", || run.committed("a") == Some(0)).await;
    gate.add_permits(2);
    until("rounds 1 and 2 committed", || run.committed("a") == Some(2)).await;
    // Each commit covered only rounds both sinks took.
    for (_, position) in run.commits() {
        let Position::Offset(o) = position else {
            unreachable!()
        };
        assert!(slow.took().contains(&format!("a:{o}")));
    }
    gate.add_permits(3);
    until("everything committed", || run.committed("a") == Some(5)).await;
    let (result, log, budget) = run.stop().await;
    result.unwrap();
    assert_eq!(slow.took(), names("a", 0..6));
    assert!(log.lock().unwrap().closed);
    assert_eq!(budget.held(), 0, "every round's memory given back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_sink_does_not_hold_back_a_fast_one_or_other_partitions() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Semaphore::new(0));
    let fast = FakeSink::new("fast", Pace::Fast);
    let slow = FakeSink::new("slow", Pace::Gate(Arc::clone(&gate)));
    let mut all = records("a", 4, 200);
    all.extend(records("b", 4, 200));
    let run = start(config(dir.path()), all, &[&fast, &slow]);

    until("the fast sink took both partitions", || {
        fast.took().len() == 8
    })
    .await;
    assert_eq!(
        fast.took_of("a"),
        names("a", 0..4),
        "in order per partition"
    );
    assert_eq!(fast.took_of("b"), names("b", 0..4));
    // The slow sink works on both partitions at once, one round of each.
    until("the slow sink began both partitions", || {
        slow.started().len() == 2
    })
    .await;
    let mut started = slow.started();
    started.sort();
    assert_eq!(started, ["a:0", "b:0"]);

    gate.add_permits(8);
    until("everything committed", || {
        run.committed("a") == Some(3) && run.committed("b") == Some(3)
    })
    .await;
    assert_eq!(slow.took_of("a"), names("a", 0..4));
    assert_eq!(slow.took_of("b"), names("b", 0..4));
    run.stop().await.0.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_within_the_limit_while_a_sink_blocks() {
    let dir = tempfile::tempdir().unwrap();
    let size = 1000;
    let cost = |r: &Record| super::round::record_cost(r);
    let one = cost(&record("a", 0, size));
    let mut config = config(dir.path());
    // Room for five rounds of one record.
    config.memory_limit = ByteSize::b(5 * one + one / 2);
    config.max_round_bytes = ByteSize::b(1);
    let gate = Arc::new(Semaphore::new(0));
    let fast = FakeSink::new("fast", Pace::Fast);
    let slow = FakeSink::new("slow", Pace::Gate(Arc::clone(&gate)));
    let mut all = records("a", 30, size);
    all.extend(records("b", 30, size));
    let limit = config.memory_limit.as_u64();
    let run = start(config, all, &[&fast, &slow]);

    until("the fast sink took what the budget let in", || {
        fast.took().len() == 5
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(fast.took().len(), 5, "polling waits for memory");
    assert!(run.budget.held() <= limit);

    gate.add_permits(60);
    until("everything committed", || {
        run.committed("a") == Some(29) && run.committed("b") == Some(29)
    })
    .await;
    let (result, _, budget) = run.stop().await;
    result.unwrap();
    assert_eq!(fast.took().len(), 60);
    assert!(
        budget.peak() <= limit,
        "held {} at most, over the limit {limit}",
        budget.peak()
    );
    assert!(
        budget.peak() >= 4 * one,
        "the budget was used: {}",
        budget.peak()
    );
    assert_eq!(budget.held(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_larger_than_the_limit_goes_through_alone() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.memory_limit = ByteSize::b(1000);
    let sink = FakeSink::new("file", Pace::Fast);
    let run = start(config, records("a", 3, 5000), &[&sink]);
    until("all committed", || run.committed("a") == Some(2)).await;
    let (result, _, budget) = run.stop().await;
    result.unwrap();
    assert_eq!(sink.took(), names("a", 0..3));
    assert!(budget.peak() >= 5000 * 4, "{}", budget.peak());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_commits_only_acknowledged_rounds() {
    let dir = tempfile::tempdir().unwrap();
    let gate = Arc::new(Semaphore::new(1));
    let fast = FakeSink::new("fast", Pace::Fast);
    // Takes round 0, then holds round 1 until it is told to give up, past `stop_grace`.
    let slow = FakeSink::new("slow", Pace::Gate(Arc::clone(&gate)));
    let run = start(config(dir.path()), records("a", 5, 200), &[&fast, &slow]);
    until("the fast sink took all", || fast.took().len() == 5).await;
    until("round 0 committed", || run.committed("a") == Some(0)).await;
    until("the slow sink is on round 1", || slow.started().len() == 2).await;
    let (result, log, budget) = run.stop().await;
    result.unwrap();
    assert_eq!(slow.took(), names("a", 0..1));
    let log = log.lock().unwrap();
    assert_eq!(log.commits, vec![("a".to_string(), Position::Offset(0))]);
    assert!(log.closed);
    assert_eq!(budget.held(), 0);
    assert_eq!(fast.ticks.lock().unwrap().last(), Some(&true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delivery_under_way_at_a_stop_finishes_within_the_grace_and_is_checkpointed() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.stop_grace = Duration::from_secs(5);
    let gate = Arc::new(Semaphore::new(0));
    let sink = FakeSink::new("file", Pace::Gate(Arc::clone(&gate)));
    let run = start(config, records("a", 3, 200), &[&sink]);
    until("round 0 under way", || sink.started().len() == 1).await;
    run.stop.cancel();
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The destination answers after the stop: the round is stored, so it is checkpointed.
    gate.add_permits(3);
    let (result, log, _) = run.stop().await;
    result.unwrap();
    assert_eq!(
        sink.took(),
        names("a", 0..1),
        "no round begun after the stop"
    );
    assert_eq!(
        log.lock().unwrap().commits,
        vec![("a".to_string(), Position::Offset(0))]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_lets_the_sinks_catch_up_and_starts_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let ahead = FakeSink::new("ahead", Pace::Sleep(Duration::from_millis(2)));
    let behind = FakeSink::new("behind", Pace::Sleep(Duration::from_millis(15)));
    let run = start(
        config(dir.path()),
        records("a", 200, 200),
        &[&ahead, &behind],
    );
    until("the slower sink took a few", || behind.took().len() >= 3).await;
    let (result, log, _) = run.stop().await;
    result.unwrap();
    // The slower sink took every round the faster one had begun, and nothing else was begun.
    let took = ahead.took();
    assert!(took.len() < 200, "stopped before the end");
    assert_eq!(behind.took(), took);
    assert_eq!(ahead.started(), took);
    let last = took.last().unwrap().clone();
    let committed = log.lock().unwrap().commits.last().cloned().unwrap();
    assert_eq!(format!("{}:{}", committed.0, committed.1), last);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_sink_stops_the_processor_with_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let good = FakeSink::new("good", Pace::Fast);
    let bad = FakeSink::new("bad", Pace::Fail);
    let run = start(config(dir.path()), records("a", 3, 200), &[&good, &bad]);
    let result = tokio::time::timeout(Duration::from_secs(10), run.task)
        .await
        .expect("stops on its own")
        .unwrap();
    let error = format!("{:#}", result.unwrap_err());
    assert!(error.contains("refuses everything"), "{error}");
    let log = run.log.lock().unwrap();
    assert!(log.commits.is_empty(), "{:?}", log.commits);
    assert!(log.closed);
    assert_eq!(bad.took(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_records_are_dead_lettered_and_passed() {
    let dir = tempfile::tempdir().unwrap();
    let sink = FakeSink::new("file", Pace::Fast);
    let mut all = records("a", 3, 200);
    all[1].payload = Bytes::from_static(b"\xff\xff not an envelope");
    let run = start(config(dir.path()), all, &[&sink]);
    until("all committed", || run.committed("a") == Some(2)).await;
    run.stop().await.0.unwrap();
    assert_eq!(sink.took(), ["a:0", "a:2"]);
    let text = std::fs::read_to_string(dir.path().join(super::dead_letter::FILE)).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["position"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_tick_while_running_and_once_stopping() {
    let dir = tempfile::tempdir().unwrap();
    let sink = FakeSink::new("file", Pace::Fast);
    let run = start(config(dir.path()), Vec::new(), &[&sink]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    run.stop().await.0.unwrap();
    let ticks = sink.ticks.lock().unwrap().clone();
    assert!(ticks.len() >= 6, "every poll_wait (20ms): {}", ticks.len());
    assert_eq!(ticks.iter().filter(|s| **s).count(), 1);
    assert_eq!(ticks.last(), Some(&true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_holds_up_to_max_poll_records_of_one_partition() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.max_poll_records = 4;
    let sink = FakeSink::new("file", Pace::Fast);
    let mut all = records("a", 6, 200);
    all.extend(records("b", 2, 200));
    let run = start(config, all, &[&sink]);
    until("all committed", || {
        run.committed("a") == Some(5) && run.committed("b") == Some(1)
    })
    .await;
    run.stop().await.0.unwrap();
    assert_eq!(sink.took_of("a"), names("a", 0..6));
    assert_eq!(sink.took_of("b"), names("b", 0..2));
    for call in sink.calls.lock().unwrap().iter() {
        assert!(call.len() <= 4, "{call:?}");
        let partition = &call[0][..2];
        assert!(call.iter().all(|id| id.starts_with(partition)), "{call:?}");
    }
}
