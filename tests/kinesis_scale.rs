//! Kinesis consumers that scale out and follow resharding, against kinesalite (stream) and
//! moto (lease table): two processor workers share a 4-shard stream and one is killed
//! mid-stream; a stream is split, and the split merged back, while it is being consumed.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::common::*;
use crate::kinesis_support::*;
use prost::Message;
use serde_json::{json, Value};

fn gauge(metrics: &str, name: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn collector_env(
    peers: &Peers,
    stream: &str,
    table: &str,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut env = peers.env(stream, table);
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

#[test]
fn a_killed_worker_s_shards_are_resumed_by_the_other_from_checkpoints() {
    let peers = Peers::start();
    peers.create_stream("handover", 4);
    let env = collector_env(
        &peers,
        "handover",
        "handover-leases",
        &[("TIDEWATER_PROCESSOR__MAX_POLL_RECORDS", "5")],
    );
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let collector = Tidewater::run("collector", dirs[0].path(), &env);
    let mut a = Tidewater::run("processor", dirs[1].path(), &env);
    let held =
        |tw: &Tidewater| gauge(&tw.metrics(), "tidewater_kinesis_leases_held").unwrap_or(0.0);
    wait_for(Duration::from_secs(20), || (held(&a) == 4.0).then_some(()))
        .unwrap_or_else(|| panic!("a holds every shard:\n{}", a.log()));
    let b = Tidewater::run("processor", dirs[2].path(), &env);
    wait_for(Duration::from_secs(30), || {
        (held(&a) == 2.0 && held(&b) == 2.0).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the shards are shared 2 and 2 (a {}, b {}):\n{}",
            held(&a),
            held(&b),
            b.log()
        )
    });

    // Load, with a SIGKILL of a in the middle of it.
    let mut sent = HashSet::new();
    for batch in 0..40u32 {
        if batch == 20 {
            a.kill();
        }
        let request = otlp_traces(batch, 8, 4);
        for rs in &request.resource_spans {
            for ss in &rs.scope_spans {
                for s in &ss.spans {
                    sent.insert(hex(&s.span_id));
                }
            }
        }
        let resp = post_protobuf(&collector.http_url("/v1/traces"), request.encode_to_vec());
        assert_eq!(resp.status(), 200);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(sent.len(), 40 * 32);

    let both = || {
        let mut seen: HashMap<String, usize> = HashMap::new();
        for tw in [&a, &b] {
            for (id, n) in span_id_counts(tw) {
                *seen.entry(id).or_default() += n;
            }
        }
        seen
    };
    let seen = wait_for(Duration::from_secs(60), || {
        let seen = both();
        sent.iter().all(|id| seen.contains_key(id)).then_some(seen)
    })
    .unwrap_or_else(|| {
        panic!(
            "spans lost after the hand-over ({} of {}):\n{}",
            both().len(),
            sent.len(),
            b.log()
        )
    });
    assert_eq!(
        seen.keys().cloned().collect::<HashSet<_>>(),
        sent,
        "nothing extra"
    );
    assert_eq!(held(&b), 4.0, "b holds every shard now");
    // At least once: what a delivered but had not checkpointed is delivered again by b, and
    // no more than one round (5 records) on each of the two shards it held.
    let duplicated: usize = seen.values().filter(|n| **n > 1).count();
    eprintln!(
        "hand-over: {duplicated} of {} spans delivered twice",
        sent.len()
    );
    let per_record = 32; // at most one request's spans per shard in a record here
    assert!(
        duplicated <= 2 * 5 * per_record,
        "{duplicated} spans delivered twice"
    );
    assert!(
        b.log().contains("shard lease taken"),
        "b logged its take-over"
    );
}

#[test]
fn a_split_and_a_merge_during_consumption_are_followed_parents_first_in_order() {
    let peers = Peers::start();
    peers.create_stream("split", 2);
    let dir = tempfile::tempdir().unwrap();
    let tw = Tidewater::up(dir.path(), &peers.env("split", "split-leases"));
    let users = 8;
    let rounds = 60;
    let client = reqwest::blocking::Client::new();
    let mut split_at = None;
    for k in 0..rounds {
        if k == 20 {
            split_at = Some(Instant::now());
            peers.rt.block_on(async {
                let shards = peers
                    .client
                    .list_shards()
                    .stream_name("split")
                    .send()
                    .await
                    .unwrap();
                let first = &shards.shards()[0];
                let range = first.hash_key_range().unwrap();
                let start: u128 = range.starting_hash_key().parse().unwrap();
                let end: u128 = range.ending_hash_key().parse().unwrap();
                peers
                    .client
                    .split_shard()
                    .stream_name("split")
                    .shard_to_split(first.shard_id())
                    .new_starting_hash_key((start + (end - start) / 3).to_string())
                    .send()
                    .await
                    .unwrap();
                wait_active(&peers.client, "split").await;
            });
        }
        if k == 40 {
            // Merge the split's two children back: a child with two parents.
            peers.rt.block_on(async {
                let shards = peers
                    .client
                    .list_shards()
                    .stream_name("split")
                    .send()
                    .await
                    .unwrap();
                let children: Vec<&str> = shards
                    .shards()
                    .iter()
                    .filter(|s| s.parent_shard_id().is_some())
                    .map(|s| s.shard_id())
                    .collect();
                assert_eq!(children.len(), 2, "{children:?}");
                peers
                    .client
                    .merge_shards()
                    .stream_name("split")
                    .shard_to_merge(children[0])
                    .adjacent_shard_to_merge(children[1])
                    .send()
                    .await
                    .unwrap();
                wait_active(&peers.client, "split").await;
            });
        }
        let events: Vec<Value> = (0..users)
            .map(|u| json!({"messageId": format!("u{u}-{k:03}"), "name": "Step", "userId": format!("user-{u}"), "properties": {"k": k}}))
            .collect();
        let resp = client
            .post(tw.http_url("/v1/events"))
            .json(&json!({ "events": events }))
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    assert!(split_at.is_some());

    let lines = wait_for(Duration::from_secs(60), || {
        let lines = tw.sink_lines("events");
        (lines.len() >= users * rounds).then_some(lines)
    })
    .unwrap_or_else(|| {
        panic!(
            "events missing ({}):\n{}",
            tw.sink_lines("events").len(),
            tw.log()
        )
    });
    assert_eq!(lines.len(), users * rounds, "each event once");
    // Within a user (one key), the sink saw the events in the order they were sent.
    let mut last: HashMap<String, i64> = HashMap::new();
    for e in &lines {
        let user = e["user"]["id"].as_str().unwrap().to_string();
        let k = e["properties"]["k"].as_i64().unwrap();
        let prev = last.insert(user.clone(), k).unwrap_or(-1);
        assert_eq!(k, prev + 1, "{user}: {k} after {prev}");
    }
    for n in last.values() {
        assert_eq!(*n, rounds as i64 - 1);
    }
    // Every child was taken only after each of its parents was read to its end.
    let log = tw.log();
    let line_of = |what: &str, shard: &str| {
        log.lines()
            .position(|l| l.contains(what) && l.contains(shard))
            .unwrap_or_else(|| panic!("no {what:?} for {shard}:\n{log}"))
    };
    let listed = peers.rt.block_on(async {
        peers
            .client
            .list_shards()
            .stream_name("split")
            .send()
            .await
            .unwrap()
    });
    for child in listed
        .shards()
        .iter()
        .filter(|s| s.parent_shard_id().is_some())
    {
        let taken = line_of("shard lease taken", child.shard_id());
        for parent in child
            .parent_shard_id()
            .into_iter()
            .chain(child.adjacent_parent_shard_id())
        {
            assert!(
                line_of("shard read to its end", parent) < taken,
                "{} taken before its parent {parent} ended",
                child.shard_id()
            );
        }
    }
    let shards = peers.rt.block_on(async {
        peers
            .client
            .list_shards()
            .stream_name("split")
            .send()
            .await
            .unwrap()
    });
    assert_eq!(
        shards.shards().len(),
        5,
        "the parent, its two children, their merged child and the untouched shard"
    );
    assert!(gauge(&tw.metrics(), "tidewater_kinesis_shards_ended_total").unwrap_or(0.0) >= 3.0);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A worker stopped gracefully (SIGTERM) releases its leases as it goes, so the other takes
/// its shards at once instead of after they expire.
#[test]
fn a_stopped_worker_releases_its_leases_at_once() {
    let peers = Peers::start();
    peers.create_stream("release", 4);
    let mut env = collector_env(&peers, "release", "release-leases", &[]);
    env.retain(|(k, _)| k != "TIDEWATER_BUS__KINESIS__LEASE_DURATION");
    env.push((
        "TIDEWATER_BUS__KINESIS__LEASE_DURATION".into(),
        "15s".into(),
    ));
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut a = Tidewater::run("processor", dirs[0].path(), &env);
    let held =
        |tw: &Tidewater| gauge(&tw.metrics(), "tidewater_kinesis_leases_held").unwrap_or(0.0);
    wait_for(Duration::from_secs(30), || (held(&a) == 4.0).then_some(()))
        .expect("a holds every shard");
    let b = Tidewater::run("processor", dirs[1].path(), &env);
    wait_for(Duration::from_secs(60), || (held(&b) == 2.0).then_some(()))
        .expect("b steals its share");

    let stopped = Instant::now();
    a.stop();
    assert!(a.log().contains("shard lease released"), "{}", a.log());
    wait_for(Duration::from_secs(12), || (held(&b) == 4.0).then_some(()))
        .unwrap_or_else(|| panic!("b did not take a's released shards:\n{}", b.log()));
    assert!(
        stopped.elapsed() < Duration::from_secs(12),
        "before the 15s leases would expire"
    );
}
