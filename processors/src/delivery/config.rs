//! How a sink delivers: one shape of settings, the same table under every sink
//! (`[sinks.<name>.delivery]`), so retries, concurrency and dead letters read alike everywhere.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Calls to the sink's service in flight at once, per round.
    pub concurrency: usize,
    /// Sends of one item the service refused for a passing reason (throttled, busy) while it
    /// took the rest of the call; then the item is dead-lettered with that reason, so one
    /// item cannot hold its partition back for ever. A call that fails as a whole (the service
    /// unreachable, 5xx, throttled) does not spend it: that call is retried until the
    /// processor stops, and the bus holds the data meanwhile.
    pub max_attempts: u32,
    /// Wait before the first retry, doubling for each further one up to `retry_max`, with
    /// jitter. A service's own `Retry-After` is honoured when longer.
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// A sink whose calls have failed for this long makes `/readyz` answer 503, naming it.
    #[serde(with = "humantime_serde")]
    pub unhealthy_after: Duration,
    /// Items refused for good are appended (and fsynced before the checkpoint may pass them)
    /// to `<dead_letter_dir>/<sink>.ndjson`, one JSON line each with the service's code and
    /// reason.
    pub dead_letter_dir: PathBuf,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        DeliveryConfig {
            concurrency: 4,
            max_attempts: 8,
            retry_initial: Duration::from_millis(200),
            retry_max: Duration::from_secs(30),
            unhealthy_after: Duration::from_secs(60),
            dead_letter_dir: PathBuf::from("tidewater-data/dead-letter"),
        }
    }
}

impl DeliveryConfig {
    /// Checks what serde cannot; `key` names the table in the message (`sinks.xray.delivery`).
    pub fn validate(&self, key: &str) -> Result<(), String> {
        if self.concurrency == 0 {
            return Err(format!("{key}.concurrency must be at least 1"));
        }
        if self.max_attempts == 0 {
            return Err(format!("{key}.max_attempts must be at least 1"));
        }
        if self.retry_initial.is_zero() || self.retry_initial > self.retry_max {
            return Err(format!(
                "{key}.retry_initial must be above zero and at most {key}.retry_max"
            ));
        }
        Ok(())
    }

    /// The sink's dead-letter file.
    pub fn dead_letter_path(&self, sink: &str) -> PathBuf {
        self.dead_letter_dir.join(format!("{sink}.ndjson"))
    }
}

/// Keys of the sinks' former retry settings, each with the key that replaced it: a config
/// that still uses one is refused with this message rather than with serde's list of
/// expected fields.
pub const RENAMED_KEYS: &[(&str, &str)] = &[
    ("sinks.xray.concurrency", "sinks.xray.delivery.concurrency"),
    (
        "sinks.xray.max_attempts",
        "sinks.xray.delivery.max_attempts",
    ),
    (
        "sinks.xray.retry_initial",
        "sinks.xray.delivery.retry_initial",
    ),
    ("sinks.xray.retry_max", "sinks.xray.delivery.retry_max"),
    (
        "sinks.xray.dead_letter_path",
        "sinks.xray.delivery.dead_letter_dir (the file is <dir>/xray.ndjson)",
    ),
    (
        "sinks.elasticsearch.bulk.concurrency",
        "sinks.elasticsearch.delivery.concurrency",
    ),
    (
        "sinks.elasticsearch.bulk.max_retries",
        "sinks.elasticsearch.delivery.max_attempts",
    ),
    (
        "sinks.elasticsearch.bulk.retry_initial",
        "sinks.elasticsearch.delivery.retry_initial",
    ),
    (
        "sinks.elasticsearch.bulk.retry_max",
        "sinks.elasticsearch.delivery.retry_max",
    ),
    (
        "sinks.cloudwatch_logs.concurrency",
        "sinks.cloudwatch_logs.delivery.concurrency",
    ),
    (
        "sinks.cloudwatch_logs.max_attempts",
        "sinks.cloudwatch_logs.delivery.max_attempts",
    ),
    (
        "sinks.cloudwatch_logs.retry_initial",
        "sinks.cloudwatch_logs.delivery.retry_initial",
    ),
    (
        "sinks.cloudwatch_logs.retry_max",
        "sinks.cloudwatch_logs.delivery.retry_max",
    ),
    (
        "sinks.cloudwatch_logs.dead_letter_dir",
        "sinks.cloudwatch_logs.delivery.dead_letter_dir",
    ),
    ("sinks.emf.concurrency", "sinks.emf.delivery.concurrency"),
    ("sinks.emf.max_attempts", "sinks.emf.delivery.max_attempts"),
    (
        "sinks.emf.retry_initial",
        "sinks.emf.delivery.retry_initial",
    ),
    ("sinks.emf.retry_max", "sinks.emf.delivery.retry_max"),
    (
        "sinks.emf.dead_letter_dir",
        "sinks.emf.delivery.dead_letter_dir",
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_key() {
        let bad = DeliveryConfig {
            concurrency: 0,
            ..DeliveryConfig::default()
        };
        assert!(bad
            .validate("sinks.xray.delivery")
            .unwrap_err()
            .contains("sinks.xray.delivery.concurrency"));
        assert!(DeliveryConfig::default().validate("x").is_ok());
    }
}
