//! Whether each sink is getting through, for `/readyz`: a sink whose calls keep failing is
//! named there once it has failed for longer than its `unhealthy_after`, so an operator (or
//! an orchestrator's check) sees which destination is down rather than a growing lag.
//!
//! Process-wide, like the metrics registry: sinks are built from configuration far from the
//! admin listener, and both only need a name to meet.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct SinkHealth {
    unhealthy_after: Duration,
    failing_since: Option<Instant>,
    last_error: String,
}

static SINKS: Mutex<BTreeMap<&'static str, SinkHealth>> = Mutex::new(BTreeMap::new());

fn sinks() -> std::sync::MutexGuard<'static, BTreeMap<&'static str, SinkHealth>> {
    // Nothing panics while holding it; a poisoned map is still a valid map.
    SINKS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Makes `sink` known (healthy) with its threshold.
pub fn register(sink: &'static str, unhealthy_after: Duration) {
    sinks().insert(
        sink,
        SinkHealth {
            unhealthy_after,
            failing_since: None,
            last_error: String::new(),
        },
    );
    metrics::gauge!("tidewater_sink_failing", "sink" => sink).set(0.0);
}

/// A call failed as a whole; `immediately` for errors no wait fixes (credentials).
pub fn failed(sink: &'static str, error: &str, immediately: bool) {
    let mut all = sinks();
    let h = all.entry(sink).or_insert_with(|| SinkHealth {
        unhealthy_after: Duration::from_secs(60),
        failing_since: None,
        last_error: String::new(),
    });
    let now = Instant::now();
    let earliest = if immediately {
        now.checked_sub(h.unhealthy_after).unwrap_or(now)
    } else {
        now
    };
    h.failing_since = Some(h.failing_since.map_or(earliest, |s| s.min(earliest)));
    h.last_error = error.chars().take(300).collect();
    metrics::gauge!("tidewater_sink_failing", "sink" => sink).set(1.0);
}

/// The service answered.
pub fn answered(sink: &'static str) {
    if let Some(h) = sinks().get_mut(sink) {
        if h.failing_since.take().is_some() {
            metrics::gauge!("tidewater_sink_failing", "sink" => sink).set(0.0);
            tracing::info!(sink, "sink is getting through again");
        }
    }
}

/// One line per sink failing for longer than its threshold: name, for how long, last error.
pub fn unhealthy() -> Vec<String> {
    let now = Instant::now();
    sinks()
        .iter()
        .filter_map(|(name, h)| {
            let since = h.failing_since?;
            let failing = now.saturating_duration_since(since);
            (failing >= h.unhealthy_after).then(|| {
                format!(
                    "sink {name} failing for {}s: {}",
                    failing.as_secs(),
                    h.last_error
                )
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sink_is_named_once_it_failed_longer_than_its_threshold() {
        register("health-test-a", Duration::from_secs(3600));
        failed("health-test-a", "connection refused", false);
        assert!(!unhealthy().iter().any(|l| l.contains("health-test-a")));
        failed("health-test-a", "AccessDenied", true);
        let lines = unhealthy();
        let line = lines.iter().find(|l| l.contains("health-test-a")).unwrap();
        assert!(line.contains("AccessDenied"), "{line}");
        answered("health-test-a");
        assert!(!unhealthy().iter().any(|l| l.contains("health-test-a")));
    }
}
