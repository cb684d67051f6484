//! Stopping `tidewater up` after clients were acknowledged loses nothing. A graceful stop
//! (SIGTERM) duplicates nothing either; a crash (SIGKILL) may deliver the last
//! un-checkpointed round again, and no more.

use std::time::Duration;

use crate::common::*;
use prost::Message;

const REQUESTS: u32 = 40;
const TRACES: u32 = 10;
const SPANS: u32 = 5;
// Small rounds so that a crash leaves a round in flight, and the duplicate bound is tight.
const MAX_POLL_RECORDS: u32 = 2;
const MAX_ITEMS: u32 = 50;

fn start(dir: &std::path::Path) -> Tidewater {
    Tidewater::up(
        dir,
        &[
            (
                "TIDEWATER_PROCESSOR__MAX_POLL_RECORDS",
                MAX_POLL_RECORDS.to_string(),
            ),
            (
                "TIDEWATER_COLLECTOR__BATCH__MAX_ITEMS",
                MAX_ITEMS.to_string(),
            ),
        ],
    )
}

/// Sends every request, 4 at a time, and checks each was acknowledged.
fn send_all(tw: &Tidewater) {
    let url = tw.http_url("/v1/traces");
    std::thread::scope(|s| {
        for worker in 0..4 {
            let url = url.clone();
            s.spawn(move || {
                for batch in (worker..REQUESTS).step_by(4) {
                    let resp =
                        post_protobuf(&url, otlp_traces(batch, TRACES, SPANS).encode_to_vec());
                    assert_eq!(resp.status(), 200, "request {batch}");
                }
            });
        }
    });
}

fn expected() -> usize {
    (REQUESTS * TRACES * SPANS) as usize
}

fn wait_complete(tw: &Tidewater) -> std::collections::HashMap<String, usize> {
    wait_for(Duration::from_secs(30), || {
        let seen = span_id_counts(tw);
        (seen.len() == expected()).then_some(seen)
    })
    .unwrap_or_else(|| {
        panic!(
            "only {} of {} spans arrived:\n{}",
            span_id_counts(tw).len(),
            expected(),
            tw.log()
        )
    })
}

#[test]
fn graceful_restart_loses_and_duplicates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut tw = start(dir.path());
    send_all(&tw);
    tw.stop();
    tw.start();
    let seen = wait_complete(&tw);
    let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicated.is_empty(),
        "SIGTERM must not duplicate: {duplicated:?}"
    );
}

#[test]
fn crash_restart_loses_nothing_and_duplicates_at_most_one_round() {
    let dir = tempfile::tempdir().unwrap();
    let mut tw = start(dir.path());
    send_all(&tw);
    // Every request was acknowledged, so it is durable on the bus; crash right away, while
    // the processor is still working through it.
    tw.kill();
    let delivered_before = span_id_counts(&tw).len();
    tw.start();
    let seen = wait_complete(&tw);
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    let one_round = (MAX_POLL_RECORDS * MAX_ITEMS) as usize;
    assert!(
        duplicates <= one_round,
        "{duplicates} duplicated spans; at most one round ({one_round}) may repeat"
    );
    eprintln!("crash test: {delivered_before} of {} spans delivered before the crash, {duplicates} duplicated after", expected());
}
