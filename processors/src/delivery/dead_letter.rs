//! The one dead-letter writer: items a service refused for good, one JSON line each with the
//! sink, the service's code and reason, appended and fsynced before the checkpoint may pass
//! them. The disk work runs off the async workers, and a failed write (a full disk) is
//! retried with the engine's backoff rather than failing the round.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::backoff::Backoff;
use super::Stopped;

/// An item refused for good, with the service's code and reason.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal<I> {
    pub item: I,
    pub code: String,
    pub message: String,
}

pub struct DeadLetters {
    sink: &'static str,
    path: PathBuf,
    backoff: Backoff,
}

impl DeadLetters {
    pub fn new(sink: &'static str, path: PathBuf, backoff: Backoff) -> Self {
        DeadLetters {
            sink,
            path,
            backoff,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends whole lines already rendered (the runtime's undecodable bus records have lines
    /// of their own); returns once they are on disk, or when stopped first.
    pub async fn append(&self, text: String, stop: &CancellationToken) -> Result<(), Stopped> {
        let mut backoff = self.backoff.clone();
        loop {
            match crate::ndjson::append_synced(self.path.clone(), text.clone()).await {
                Ok(()) => return Ok(()),
                Err(e) => {
                    metrics::counter!("tidewater_sink_dead_letter_write_failures_total", "sink" => self.sink).increment(1);
                    tracing::error!(sink = self.sink, path = %self.path.display(), error = %e, "cannot write dead letters; retrying");
                    if !backoff.wait(stop).await {
                        return Err(Stopped);
                    }
                }
            }
        }
    }

    /// Writes one line per refusal; returns once they are on disk, or when stopped first.
    pub async fn write<I>(
        &self,
        refusals: &[Refusal<I>],
        describe: impl Fn(&I) -> Value,
        stop: &CancellationToken,
    ) -> Result<(), Stopped> {
        if refusals.is_empty() {
            return Ok(());
        }
        let now = chrono::Utc::now().to_rfc3339();
        let mut text = String::new();
        for r in refusals {
            let mut line = json!({
                "time": now,
                "sink": self.sink,
                "code": r.code,
                "reason": r.message,
            });
            if let (Value::Object(line), Value::Object(fields)) = (&mut line, describe(&r.item)) {
                line.extend(fields);
            }
            text.push_str(&line.to_string());
            text.push('\n');
        }
        self.append(text, stop).await?;
        for r in refusals {
            tracing::warn!(sink = self.sink, code = %r.code, reason = %r.message, "item refused for good; dead-lettered");
            metrics::counter!("tidewater_sink_items_total", "sink" => self.sink, "outcome" => "dead_lettered").increment(1);
            metrics::counter!("tidewater_sink_refusals_total", "sink" => self.sink, "code" => r.code.clone()).increment(1);
        }
        Ok(())
    }
}
