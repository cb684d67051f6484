//! One slow sink against the processor's guarantees (issue #13), end to end: Elasticsearch
//! answers every `_bulk` seconds late (the common bulk proxy in front of osmem-server) while
//! the file sink takes the same events at disk speed, through `tidewater up` with a small
//! `processor.memory_limit`. It checks, on what the two sinks stored, that the file sink kept
//! taking later rounds while Elasticsearch was behind, that the processor's memory stayed
//! under its limit with polling held back by the backlog, and that in the end both hold
//! everything once and the checkpoint caught up (a restart delivers nothing again).
//!
//! The data is laid out so rounds are known from outside: each request carries the events of
//! one user, chosen so requests take the partitions in turn; each request's part is one bus
//! record (`collector.batch.max_size` below a part) and each record one round
//! (`processor.max_round_bytes` below a record). Assertions are on orderings and bounds only.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prost::Message;
use serde_json::{json, Value};
use tidewater_collector::partition::split_events;
use tidewater_proto::events::v1::Event;
use tidewater_proto::json::struct_from_json;

use crate::common::bulk_proxy::BulkProxy;
use crate::common::es::{es_env, metric, Es};
use crate::common::peers;
use crate::common::*;

const PARTITIONS: u32 = 4;
/// Rounds (= requests = bus records) per partition.
const ROUNDS_PER_PARTITION: u32 = 10;
const EVENTS_PER_ROUND: usize = 250;
/// `processor.memory_limit`: about ten rounds of these events decoded.
const MEMORY_LIMIT: u64 = 8 * 1024 * 1024;
/// How long the proxy holds each `_bulk` (one per round) before the cluster sees it.
const BULK_DELAY: Duration = Duration::from_secs(2);
const EVENTS_ALIAS: &str = "tidewater-events";
/// The processor's estimate of an event's decoded form: its encoded bytes times this.
const EVENTS_DECODED_FACTOR: u64 = 10;

/// A user whose events the collector puts on `partition` (the collector's own split), so a
/// request of that user's events is one part, on a partition the test chose.
fn user_on(partition: u32, prefix: &str) -> String {
    (0..)
        .map(|n| format!("{prefix}-{n}"))
        .find(|user| {
            let probe = Event {
                user_id: user.clone(),
                ..Default::default()
            };
            split_events(vec![probe], PARTITIONS)[0].partition == partition
        })
        .expect("some user hashes to every partition")
}

/// Properties of event `seq`: its number and some padding, so a round of
/// `EVENTS_PER_ROUND` is about 75 KB on the bus before compression.
fn properties(seq: usize) -> Value {
    json!({"seq": seq, "pad": format!("{seq:08}").repeat(30)})
}

fn event_json(id: &str, user: &str, seq: usize) -> Value {
    json!({"message_id": id, "name": "Item Viewed", "user_id": user,
           "timestamp": "2026-11-01T12:00:00Z", "properties": properties(seq)})
}

/// At most the bytes event `id` takes on the bus before compression (the collector adds
/// `received_at`, and the batch framing): what the memory budget counts is at least
/// `EVENTS_DECODED_FACTOR` times this.
fn encoded_len_at_most(id: &str, user: &str, seq: usize) -> u64 {
    Event {
        message_id: id.into(),
        name: "Item Viewed".into(),
        user_id: user.into(),
        properties: struct_from_json(&properties(seq)),
        ..Default::default()
    }
    .encoded_len() as u64
}

/// One request: the ids and events of one user.
struct Request {
    ids: Vec<String>,
    body: Value,
}

fn request(prefix: &str, user: &str, first_seq: usize, n: usize) -> Request {
    let ids: Vec<String> = (first_seq..first_seq + n)
        .map(|seq| format!("{prefix}-{seq:06}"))
        .collect();
    let events: Vec<Value> = ids
        .iter()
        .zip(first_seq..)
        .map(|(id, seq)| event_json(id, user, seq))
        .collect();
    Request {
        ids,
        body: json!({ "events": events }),
    }
}

fn post(http: &reqwest::blocking::Client, url: &str, r: &Request) {
    let resp = http
        .post(url)
        .json(&r.body)
        .send()
        .expect("POST /v1/events");
    assert_eq!(resp.status(), 200);
    let answer: Value = resp.json().unwrap();
    assert_eq!(
        answer,
        json!({"accepted": r.ids.len(), "rejected": []}),
        "{answer}"
    );
}

/// Counts the lines the file sink wrote to a file, reading only what was added since the last
/// look (a line still being written is not counted until its newline).
struct LineCounter {
    path: PathBuf,
    read: u64,
    lines: u64,
}

impl LineCounter {
    fn count(&mut self) -> u64 {
        if let Ok(mut f) = File::open(&self.path) {
            f.seek(SeekFrom::Start(self.read)).unwrap();
            let mut added = Vec::new();
            f.read_to_end(&mut added).unwrap();
            self.read += added.len() as u64;
            self.lines += added.iter().filter(|b| **b == b'\n').count() as u64;
        }
        self.lines
    }
}

/// One look at both sinks: the file sink's count read first, Elasticsearch's after, so
/// `fast - slow` never overstates how far the file sink was ahead at the first read.
#[derive(Clone, Copy, Debug)]
struct Look {
    at: Duration,
    fast: u64,
    slow: u64,
}

/// Sets its flag when dropped, panicking or not.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// `/metrics` sampled while the processor works: (memory held, its limit).
#[derive(Clone, Copy, Debug)]
struct MemorySample {
    at: Duration,
    held: f64,
    limit: f64,
}

fn sample_memory(admin: u16, start: Instant, done: &AtomicBool) -> Vec<MemorySample> {
    let mut out = Vec::new();
    while !done.load(Ordering::SeqCst) {
        if let Some((200, body)) = http_get(admin, "/metrics") {
            if body.contains("tidewater_processor_memory_limit_bytes") {
                out.push(MemorySample {
                    at: start.elapsed(),
                    held: metric(&body, "tidewater_processor_memory_bytes", &[]),
                    limit: metric(&body, "tidewater_processor_memory_limit_bytes", &[]),
                });
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    out
}

/// The `message_id` of every event line the file sink wrote, with how often each appears.
fn file_ids(tw: &Tidewater) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    for doc in tw.sink_lines("events") {
        *seen
            .entry(doc["message_id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    seen
}

#[test]
fn a_slow_sink_does_not_hold_back_the_others_and_memory_stays_under_its_limit() {
    let osmem = peers::elasticsearch();
    let proxy = BulkProxy::start(&osmem.endpoint());
    proxy.delay(BULK_DELAY);
    let es = Es::new(&osmem.endpoint());
    let dir = tempfile::tempdir().unwrap();
    let mut env = es_env(&proxy.url());
    env.extend([
        (
            "TIDEWATER_BUS__EMBEDDED__PARTITIONS",
            PARTITIONS.to_string(),
        ),
        // Below one request's part: each part is a bus record of its own.
        ("TIDEWATER_COLLECTOR__BATCH__MAX_SIZE", "16KiB".to_string()),
        // Below one record: each record is a round of its own.
        ("TIDEWATER_PROCESSOR__MAX_ROUND_BYTES", "32KiB".to_string()),
        (
            "TIDEWATER_PROCESSOR__MEMORY_LIMIT",
            format!("{}MiB", MEMORY_LIMIT >> 20),
        ),
    ]);
    let mut tw = Tidewater::up(dir.path(), &env);

    // Requests take the partitions in turn: request k is round k / PARTITIONS of partition
    // k % PARTITIONS, one user per partition.
    let users: Vec<String> = (0..PARTITIONS).map(|p| user_on(p, "user")).collect();
    let requests: Vec<Request> = (0..PARTITIONS * ROUNDS_PER_PARTITION)
        .map(|k| {
            let user = &users[(k % PARTITIONS) as usize];
            request("ev", user, k as usize * EVENTS_PER_ROUND, EVENTS_PER_ROUND)
        })
        .collect();
    let total = (requests.len() * EVENTS_PER_ROUND) as u64;
    let sent: HashSet<String> = requests.iter().flat_map(|r| r.ids.clone()).collect();
    assert_eq!(sent.len() as u64, total);
    // No round is larger than the limit (the one case the runtime lets through over it), and
    // the data is several times the limit: the bound has to work.
    let round_bytes: u64 = requests[0]
        .ids
        .iter()
        .zip(0..)
        .map(|(id, seq)| encoded_len_at_most(id, &users[0], seq))
        .sum();
    assert!(round_bytes * EVENTS_DECODED_FACTOR * 4 < MEMORY_LIMIT);
    assert!(
        total / EVENTS_PER_ROUND as u64 * round_bytes * EVENTS_DECODED_FACTOR > 3 * MEMORY_LIMIT
    );
    // What any event costs the budget at least, for the bound on the file sink's lead.
    let event_cost_at_least = requests
        .iter()
        .flat_map(|r| r.ids.iter())
        .zip(0..)
        .map(|(id, seq)| {
            let user = &users[(seq / EVENTS_PER_ROUND) % PARTITIONS as usize];
            encoded_len_at_most(id, user, seq) * EVENTS_DECODED_FACTOR
        })
        .min()
        .unwrap();

    let start = Instant::now();
    let done = AtomicBool::new(false);
    let mut events_file = LineCounter {
        path: dir.path().join("tidewater-data/out/events.ndjson"),
        read: 0,
        lines: 0,
    };
    let url = tw.http_url("/v1/events");
    let admin = tw.admin;
    let (looks, memory) = std::thread::scope(|s| {
        // Stops the sampler however this ends: the scope waits for it before a panic here
        // goes on.
        let _stop_sampler = StopOnDrop(&done);
        let sampler = s.spawn(|| sample_memory(admin, start, &done));
        let mut sender = Some(s.spawn(|| {
            let http = reqwest::blocking::Client::new();
            for r in &requests {
                post(&http, &url, r);
            }
            start.elapsed()
        }));
        let mut sent_in = None;
        let mut looks = Vec::new();
        let deadline = start + Duration::from_secs(120);
        loop {
            if sender.as_ref().is_some_and(|h| h.is_finished()) {
                match sender.take().unwrap().join() {
                    Ok(took) => sent_in = Some(took),
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            let fast = events_file.count();
            let slow = es.count(EVENTS_ALIAS);
            looks.push(Look {
                at: start.elapsed(),
                fast,
                slow,
            });
            if sent_in.is_some() && fast >= total && slow >= total {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "not delivered in time: file {fast}, elasticsearch {slow} of {total}\n{}",
                tw.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        done.store(true, Ordering::SeqCst);
        eprintln!("sent {total} events in {:?}", sent_in.unwrap());
        (looks, sampler.join().unwrap())
    });
    let drained_in = start.elapsed();
    let metrics = tw.metrics();

    // 1. While Elasticsearch was behind, the file sink had taken later rounds. Elasticsearch
    //    takes a partition's rounds one at a time, so at most PARTITIONS rounds were begun and
    //    not stored: a lead of more rounds than that is rounds it had not even begun.
    let lead = |l: &Look| l.fast.saturating_sub(l.slow);
    let best = looks
        .iter()
        .filter(|l| l.slow * 2 <= total)
        .max_by_key(|l| lead(l))
        .copied()
        .expect("looked while Elasticsearch had stored at most half");
    eprintln!(
        "largest lead: {} events at {:?} ({best:?}); drained in {drained_in:?}; {} looks",
        lead(&best),
        best.at,
        looks.len()
    );
    let later_rounds = (PARTITIONS as u64 + 1) * EVENTS_PER_ROUND as u64;
    assert!(
        lead(&best) >= later_rounds,
        "the file sink never got {later_rounds} events ahead while Elasticsearch had at most half: {looks:?}"
    );
    // ... and that lead is bounded: what the file sink has and Elasticsearch has not is held
    // in memory, within the limit.
    let max_lead = looks.iter().map(lead).max().unwrap();
    eprintln!("max lead {max_lead} events at >= {event_cost_at_least} bytes each");
    assert!(
        max_lead * event_cost_at_least <= MEMORY_LIMIT,
        "the file sink ran {max_lead} events ahead, more than {MEMORY_LIMIT} bytes of budget hold \
         at {event_cost_at_least} bytes each: {looks:?}"
    );

    // 2. Memory stayed under the limit, which the backlog reached: polling waited for it.
    assert!(memory.len() >= 20, "too few /metrics samples: {memory:?}");
    for s in &memory {
        assert_eq!(s.limit, MEMORY_LIMIT as f64, "{s:?}");
        assert!(
            s.held <= s.limit,
            "memory over its limit: {s:?}\nall samples: {memory:?}"
        );
    }
    let peak = memory
        .iter()
        .copied()
        .max_by(|a, b| a.held.total_cmp(&b.held))
        .unwrap();
    eprintln!(
        "memory: peak sampled {} of {MEMORY_LIMIT} at {:?}, over {} samples",
        peak.held,
        peak.at,
        memory.len()
    );
    let peak = peak.held;
    assert!(
        peak >= MEMORY_LIMIT as f64 / 2.0,
        "the backlog never filled half the budget (peak {peak}): {memory:?}"
    );
    let waits = metric(&metrics, "tidewater_processor_memory_waits_total", &[]);
    assert!(waits > 0.0, "polling never waited for memory:\n{metrics}");
    eprintln!("memory waits: {waits}");

    // 3. Both hold everything, once; Elasticsearch was sent each event once.
    es.wait_count(EVENTS_ALIAS, total, || tw.log());
    let in_file = file_ids(&tw);
    assert_eq!(in_file.keys().cloned().collect::<HashSet<_>>(), sent);
    assert!(in_file.values().all(|n| *n == 1), "duplicates in the file");
    let bulked: Vec<String> = proxy
        .bulks()
        .iter()
        .flat_map(|b| b.ids_in(EVENTS_ALIAS))
        .collect();
    assert_eq!(
        bulked.len() as u64,
        total,
        "each event sent to the cluster once"
    );
    assert_eq!(bulked.into_iter().collect::<HashSet<_>>(), sent);

    // Every round acknowledged by both sinks: nothing in flight, nothing held.
    proxy.delay(Duration::ZERO);
    let settled = wait_for(Duration::from_secs(10), || {
        let m = tw.metrics();
        (metric(&m, "tidewater_processor_rounds_in_flight", &[]) == 0.0
            && metric(&m, "tidewater_processor_memory_bytes", &[]) == 0.0)
            .then_some(())
    });
    assert!(
        settled.is_some(),
        "rounds still in flight:\n{}",
        tw.metrics()
    );

    // The checkpoint caught up: after a restart, events sent to every partition are the only
    // ones consumed and delivered. A round not checkpointed would be consumed again, ahead of
    // its partition's new events, so once both sinks hold those, it would have shown.
    let bulks_before = proxy.bulks().len();
    tw.stop();
    tw.start();
    let late: Vec<Request> = (0..PARTITIONS)
        .map(|p| {
            let user = user_on(p, "late");
            request("late", &user, p as usize * 20, 20)
        })
        .collect();
    let http = reqwest::blocking::Client::new();
    for r in &late {
        post(&http, &tw.http_url("/v1/events"), r);
    }
    let late_total = (late.len() * 20) as u64;
    es.wait_count(EVENTS_ALIAS, total + late_total, || tw.log());
    let everything: HashSet<String> = sent
        .iter()
        .cloned()
        .chain(late.iter().flat_map(|r| r.ids.clone()))
        .collect();
    let in_file = wait_for(Duration::from_secs(30), || {
        let ids = file_ids(&tw);
        (ids.len() as u64 >= total + late_total).then_some(ids)
    })
    .unwrap_or_else(|| panic!("the late events never reached the file:\n{}", tw.log()));
    assert_eq!(in_file.keys().cloned().collect::<HashSet<_>>(), everything);
    assert!(
        in_file.values().all(|n| *n == 1),
        "delivered again after the restart: {:?}",
        in_file.iter().filter(|(_, n)| **n > 1).collect::<Vec<_>>()
    );
    let rebulked: Vec<String> = proxy.bulks()[bulks_before..]
        .iter()
        .flat_map(|b| b.ids_in(EVENTS_ALIAS))
        .collect();
    assert!(
        rebulked.len() as u64 == late_total && rebulked.iter().all(|id| id.starts_with("late-")),
        "Elasticsearch was sent again what it had before the restart: {rebulked:?}"
    );
    let consumed = metric(
        &tw.metrics(),
        "tidewater_processor_consumed_items_total",
        &[("signal", "events")],
    );
    assert_eq!(consumed, late_total as f64, "consumed after the restart");
}
