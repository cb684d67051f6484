//! Bus data no processor can read (another producer, a corrupted record, an item nested past
//! what prost decodes) would block its partition forever if the processor insisted: it is kept,
//! with the reason, where an operator can look (`<dead_letter_dir>/bus-records.ndjson`), and
//! the partition moves on. The lines are on disk before the round's checkpoint can pass them,
//! and are written off the async workers.

use std::path::Path;

use std::time::Duration;

use base64::Engine;
use tidewater_bus::Record;
use tokio_util::sync::CancellationToken;

use crate::delivery::dead_letter::DeadLetters;
use crate::delivery::{Backoff, Stopped};

/// The file, under `processor.dead_letter_dir`.
pub(crate) const FILE: &str = "bus-records.ndjson";

/// One dead letter's line (with its newline), logged and counted. `payload` is the whole
/// record, or the unreadable item's encoding.
pub(crate) fn line(record: &Record, reason: &str, payload: &[u8]) -> String {
    tracing::error!(partition = %record.partition, position = %record.position, reason, "undecodable bus data dead-lettered");
    metrics::counter!("tidewater_processor_dead_letter_records_total", "reason" => "undecodable")
        .increment(1);
    let mut line = serde_json::json!({
        "partition": record.partition,
        "position": record.position.to_string(),
        "reason": reason,
        "payload_base64": base64::engine::general_purpose::STANDARD.encode(payload),
    })
    .to_string();
    line.push('\n');
    line
}

/// Appends `lines` and syncs them through the one dead-letter writer, which retries a failed
/// write (a full disk) with backoff until it succeeds or `stop`.
pub(crate) async fn write(
    dir: &Path,
    lines: String,
    stop: &CancellationToken,
) -> Result<(), Stopped> {
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(30));
    DeadLetters::new("processor", dir.join(FILE), backoff)
        .append(lines, stop)
        .await
}
