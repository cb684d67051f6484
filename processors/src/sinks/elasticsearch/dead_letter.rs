//! Documents the cluster rejected, with its reason: appended (and fsynced) to
//! `elasticsearch.ndjson` in the processor's dead-letter directory first, then indexed into
//! the dead-letter index where analysts and operators can search them.

use std::path::PathBuf;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use super::request::BulkItem;
use super::retry::ItemResult;

/// The dead-letter record of `item`, rejected with `result` at `at`.
pub fn record(item: &BulkItem, result: &ItemResult, at: DateTime<Utc>) -> Value {
    let error = result.error.clone().unwrap_or_default();
    let document = serde_json::from_slice::<Value>(item.source())
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(item.source()).into_owned()));
    json!({
        "@timestamp": at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "index": item.index,
        "document_id": item.id,
        "status": result.status,
        "error": {"type": error.kind, "reason": error.reason},
        "document": document,
    })
}

/// The `_id` of a dead letter: unique across kinds, the same for a replayed rejection.
pub fn record_id(item: &BulkItem) -> String {
    format!("{}:{}", item.kind.label(), item.id)
}

pub struct DeadLetterFile {
    path: PathBuf,
    lock: tokio::sync::Mutex<()>,
}

impl DeadLetterFile {
    pub fn new(dir: PathBuf) -> DeadLetterFile {
        DeadLetterFile {
            path: dir.join("elasticsearch.ndjson"),
            lock: tokio::sync::Mutex::new(()),
        }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// Appends one line per record and syncs before returning: the checkpoint may pass the
    /// rejected documents only once they are safe here.
    pub async fn append(&self, records: &[Value]) -> anyhow::Result<()> {
        let mut text = String::new();
        for r in records {
            text.push_str(&r.to_string());
            text.push('\n');
        }
        let _one_writer = self.lock.lock().await;
        crate::ndjson::append_synced(self.path.clone(), text).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::elasticsearch::request::DocKind;
    use crate::sinks::elasticsearch::retry::ItemError;

    #[tokio::test]
    async fn record_golden_and_file() {
        let item = BulkItem::create(
            DocKind::Event,
            "tidewater-events-2026.11.01".into(),
            "m-9",
            &json!({"properties": {"total": "lots"}}),
        )
        .unwrap();
        let result = ItemResult {
            status: 400,
            error: Some(ItemError {
                kind: "mapper_parsing_exception".into(),
                reason: "failed to parse field [properties.total] of type [double]".into(),
            }),
        };
        let at = DateTime::<Utc>::from_timestamp(1_793_520_000, 0).unwrap();
        let r = record(&item, &result, at);
        assert_eq!(
            r,
            json!({
                "@timestamp": "2026-11-01T08:00:00.000Z",
                "index": "tidewater-events-2026.11.01",
                "document_id": "m-9",
                "status": 400,
                "error": {"type": "mapper_parsing_exception",
                          "reason": "failed to parse field [properties.total] of type [double]"},
                "document": {"properties": {"total": "lots"}}
            })
        );
        assert_eq!(record_id(&item), "events:m-9");

        let dir = tempfile::tempdir().unwrap();
        let file = DeadLetterFile::new(dir.path().join("dl"));
        file.append(std::slice::from_ref(&r)).await.unwrap();
        file.append(std::slice::from_ref(&r)).await.unwrap();
        let text = std::fs::read_to_string(file.path()).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines, vec![r.clone(), r]);
    }
}
