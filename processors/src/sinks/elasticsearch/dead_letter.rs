//! Dead letters of the Elasticsearch sink: what a line keeps of a rejected document (the
//! engine appends it to `<delivery.dead_letter_dir>/elasticsearch.ndjson`), and the same line
//! as a document of the dead-letter index, where analysts and operators can search them.
//!
//! The line and the indexed document are the same JSON: the engine's `sink`, `code` and
//! `reason`, then [`record`]. The record sets `time` itself (the moment the cluster refused
//! the document, which overrides the engine's write time in the line): the sink, indexing
//! after the engine wrote, could not otherwise know the time in the file.

use chrono::SecondsFormat;
use serde_json::{json, Value};

use super::request::{BulkItem, DocKind};
use super::service::{Doc, NAME};
use crate::delivery::Refusal;

/// What a dead letter keeps of `doc`: where it was going, the cluster's status and error, and
/// the document itself.
pub fn record(doc: &Doc) -> Value {
    let (result, at) = doc.told();
    let error = result.error.unwrap_or_default();
    let item = &doc.bulk;
    let document = serde_json::from_slice::<Value>(item.source())
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(item.source()).into_owned()));
    let at = at.to_rfc3339_opts(SecondsFormat::Millis, true);
    json!({
        "time": at,
        "@timestamp": at,
        "index": item.index,
        "document_id": item.id,
        "status": result.status,
        "error": {"type": error.kind, "reason": error.reason},
        "document": document,
    })
}

/// The dead-letter line of `refusal`, as the engine wrote it.
pub fn line(refusal: &Refusal<Doc>) -> Value {
    let mut line = json!({"sink": NAME, "code": refusal.code, "reason": refusal.message});
    if let (Value::Object(line), Value::Object(record)) = (&mut line, record(&refusal.item)) {
        line.extend(record);
    }
    line
}

/// The `_id` of a dead letter: unique across kinds, the same for a replayed rejection.
pub fn record_id(item: &BulkItem) -> String {
    format!("{}:{}", item.kind.label(), item.id)
}

/// Documents for the dead-letter index, one per refused document. Dead letters the
/// dead-letter index itself refused are left out: they are in the file only, never looping.
pub fn to_index(refusals: &[Refusal<Doc>], index: &str) -> Vec<Doc> {
    refusals
        .iter()
        .filter(|r| r.item.bulk.kind != DocKind::DeadLetter)
        .filter_map(|r| {
            BulkItem::create(
                DocKind::DeadLetter,
                index.to_string(),
                &record_id(&r.item.bulk),
                &line(r),
            )
            .inspect_err(|e| tracing::error!(id = %r.item.bulk.id, error = %e, "dead letter cannot be encoded; it is in the file only"))
            .ok()
        })
        .map(Doc::new)
        .collect()
}
