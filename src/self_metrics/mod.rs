//! Tidewater's own health in CloudWatch with no agent and no extra IAM: with
//! `telemetry.emf.enabled`, every `telemetry.emf.interval` the key series of `/metrics` are
//! written to stdout as CloudWatch Embedded Metric Format lines. On ECS the `awslogs` driver
//! already ships stdout to a log group with the execution role's permissions, and CloudWatch
//! turns the lines into metrics in namespace `Tidewater` that the deploy stack alarms on.
//!
//! - [`exposition`]: reads the Prometheus text `/metrics` serves (same registry, same values);
//! - [`render`]: which series, and how they become EMF documents (pure);
//! - here: the interval task, the only part with a clock and I/O.
//!
//! Nothing else writes to stdout in a running Tidewater (logs go to stderr), so every stdout
//! line is an EMF document.

pub mod exposition;
pub mod render;

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use render::{Part, Settings, Totals};

use crate::config::{Config, EmfTelemetryConfig};

impl Settings {
    /// The report of a process running `role` (`collector`, `processor`, `up`) over
    /// `config`'s bus.
    pub fn from_config(
        config: &Config,
        role: &'static str,
        collects: bool,
        processes: bool,
    ) -> Self {
        let emf: &EmfTelemetryConfig = &config.telemetry.emf;
        let kinesis = config.bus.kind == tidewater_bus::BusKind::Kinesis;
        let mut parts = Vec::new();
        if collects {
            parts.push(Part::Collector);
            if kinesis {
                parts.push(Part::KinesisSpool);
            }
        }
        if processes {
            parts.push(Part::Processor);
            if kinesis {
                parts.push(Part::KinesisReader);
            }
        }
        Settings {
            namespace: emf.namespace.clone(),
            pipeline: emf.pipeline.clone(),
            role,
            service: Some(emf.service.clone()).filter(|s| !s.is_empty()),
            parts,
        }
    }
}

/// Reports every `interval` until `stop`, then once more, so what happened since the last
/// report is not lost when the task stops (SIGTERM on a deployment).
pub fn spawn<W: Write + Send + 'static>(
    handle: PrometheusHandle,
    settings: Settings,
    interval: Duration,
    out: W,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let out = std::sync::Arc::new(std::sync::Mutex::new(out));
    tokio::spawn(async move {
        let mut totals = Totals::default();
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        // A late tick (a stalled runtime) reports once, not a burst of catch-up reports that
        // would each carry a near-zero increase.
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut warned = false;
        loop {
            let last = tokio::select! {
                _ = ticker.tick() => false,
                _ = stop.cancelled() => true,
            };
            let text = handle.render();
            let samples = exposition::parse(&text, |name| settings.reads(name));
            let docs = render::render(&samples, &mut totals, &settings, now_ms());
            let mut lines = docs.join("\n");
            lines.push('\n');
            // One write of the whole report, off the async workers: a slow log driver stalls
            // this task only, and (stdout locking for each write) lines never interleave.
            let out = out.clone();
            let written = tokio::task::spawn_blocking(move || {
                let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
                out.write_all(lines.as_bytes())?;
                out.flush()
            })
            .await;
            match written {
                Ok(Ok(())) => warned = false,
                Ok(Err(e)) if !warned => {
                    warned = true;
                    tracing::warn!(error = %e, "cannot write the EMF self-metrics to stdout; retrying at the next interval");
                }
                _ => {}
            }
            if last {
                break;
            }
        }
    })
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_follow_the_role_and_the_bus() {
        let mut config = Config::default();
        config.telemetry.emf.pipeline = "orders".into();
        let up = Settings::from_config(&config, "up", true, true);
        assert_eq!(up.parts, vec![Part::Collector, Part::Processor]);
        assert_eq!(up.service, None);
        config.bus.kind = tidewater_bus::BusKind::Kinesis;
        config.telemetry.emf.service = "shop".into();
        let collector = Settings::from_config(&config, "collector", true, false);
        assert_eq!(collector.parts, vec![Part::Collector, Part::KinesisSpool]);
        assert_eq!(collector.service.as_deref(), Some("shop"));
        assert_eq!(collector.pipeline, "orders");
        let processor = Settings::from_config(&config, "processor", false, true);
        assert_eq!(processor.parts, vec![Part::Processor, Part::KinesisReader]);
    }

    /// What the task writes, kept for the test to read.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn reports_on_the_interval_and_once_more_on_stop() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let accept = |n| {
            metrics::with_local_recorder(&recorder, || {
                metrics::counter!("tidewater_collector_accepted_items_total", "signal" => "traces")
                    .increment(n);
            })
        };
        accept(5);
        let settings = Settings {
            namespace: "Tidewater".into(),
            pipeline: "p".into(),
            role: "collector",
            service: None,
            parts: vec![Part::Collector],
        };
        let out = Captured::default();
        let stop = CancellationToken::new();
        let task = spawn(
            handle,
            settings,
            Duration::from_millis(50),
            out.clone(),
            stop.clone(),
        );
        let reported = || !out.0.lock().unwrap().is_empty();
        while !reported() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Recorded after the first report: a later one carries it (the one on stop at latest).
        accept(2);
        stop.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the task ends on stop")
            .unwrap();

        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let totals: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|d| d.get("Signal").is_none())
            .collect();
        let accepted: Vec<f64> = totals
            .iter()
            .map(|d| d["AcceptedItems"].as_f64().unwrap())
            .collect();
        // Increases, not totals: the first report has the 5, a later one the 2.
        assert!(accepted.len() >= 2, "a tick and the report on stop: {text}");
        assert_eq!(accepted[0], 5.0, "{text}");
        assert_eq!(accepted.iter().sum::<f64>(), 7.0, "{text}");
    }
}
