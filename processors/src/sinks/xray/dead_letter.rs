//! Documents X-Ray will never take, kept with the reason where an operator can look.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::retry::Rejection;

pub struct DeadLetter {
    path: PathBuf,
}

impl DeadLetter {
    pub fn new(path: PathBuf) -> DeadLetter {
        DeadLetter { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one JSON line per rejection and syncs, before the round may be checkpointed.
    pub async fn write(&self, rejections: Vec<Rejection>) -> anyhow::Result<()> {
        if rejections.is_empty() {
            return Ok(());
        }
        let codes: Vec<String> = rejections.iter().map(|r| r.code.clone()).collect();
        let now = chrono::Utc::now().to_rfc3339();
        let mut text = String::new();
        for r in rejections {
            tracing::warn!(code = %r.code, reason = %r.message, id = r.doc.id.as_deref(), trace_id = r.doc.trace_id.as_deref(), "X-Ray rejected a segment document; dead-lettered");
            let line = json!({
                "time": now,
                "sink": "xray",
                "code": r.code,
                "reason": r.message,
                "id": r.doc.id,
                "trace_id": r.doc.trace_id,
                "document": r.doc.body,
            });
            text.push_str(&line.to_string());
            text.push('\n');
        }
        crate::ndjson::append_synced(self.path.clone(), text).await?;
        // Counted once written: a failed write fails the delivery, which finds them again.
        for code in codes {
            metrics::counter!("tidewater_xray_dead_letter_documents_total", "code" => code)
                .increment(1);
        }
        Ok(())
    }
}
