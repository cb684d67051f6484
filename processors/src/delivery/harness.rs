//! The one test harness for sinks on the engine: a sink's test builds its [`Service`] over a
//! scripted stand-in for the remote API (answers shaped as the real service shapes them:
//! X-Ray's `UnprocessedTraceSegments`, `_bulk` item results, `rejectedLogEventsInfo`), runs
//! items through a real [`Engine`] with fast retries, and asserts on what was stored, sent
//! again and dead-lettered. The engine's own guarantees are tested once, in `tests.rs`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{DeliveryConfig, Engine, Report, Service};

/// Answers handed out in order; `None` once the script is spent.
pub struct Script<T>(Mutex<VecDeque<T>>);

impl<T> Script<T> {
    pub fn new(answers: impl IntoIterator<Item = T>) -> Self {
        Script(Mutex::new(answers.into_iter().collect()))
    }

    pub fn next(&self) -> Option<T> {
        self.0.lock().unwrap().pop_front()
    }
}

/// What a delivery through the harness did.
pub struct Run<I> {
    pub report: Report<I>,
    /// The dead-letter file's lines, parsed.
    pub dead_letters: Vec<serde_json::Value>,
}

/// Settings for tests: one call at a time (so a script's order is the calls' order), three
/// attempts, millisecond backoff, dead letters in `dir`.
pub fn config(dir: &std::path::Path) -> DeliveryConfig {
    DeliveryConfig {
        concurrency: 1,
        max_attempts: 3,
        retry_initial: Duration::from_millis(1),
        retry_max: Duration::from_millis(4),
        unhealthy_after: Duration::from_secs(3600),
        dead_letter_dir: dir.to_path_buf(),
    }
}

/// Delivers `items` through a fresh engine over `service`; returns the engine (to look at
/// the service's recorded calls) and what happened.
pub async fn run<S: Service>(service: S, items: Vec<S::Item>) -> (Engine<S>, Run<S::Item>) {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::new(service, config(dir.path()));
    let report = engine
        .deliver(items, &CancellationToken::new())
        .await
        .expect("not stopped");
    let dead_letters = std::fs::read_to_string(engine.dead_letter_path())
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (
        engine,
        Run {
            report,
            dead_letters,
        },
    )
}
