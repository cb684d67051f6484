//! `_bulk` request bodies: which index a document goes to, its `create` action line, and the
//! split of a stream of documents into requests bounded by bytes and count. Pure.
//!
//! `create` (not `index`) with a deterministic `_id` makes a replay harmless: a document
//! already stored answers 409 and is left as it was.

use std::borrow::Borrow;

use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use serde::Serialize;
use xxhash_rust::xxh3::xxh3_128;

use super::config::{ElasticsearchSinkConfig, IndexLayout};
use crate::decode::{Batch, SignalData};
use crate::documents::{
    event_document, event_id, event_time, log_document, log_id, log_records, log_time,
};

/// Elasticsearch refuses longer `_id`s.
pub const MAX_ID_BYTES: usize = 512;

/// What a document is, for metrics and for what to do when it is rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DocKind {
    Event,
    Log,
    DeadLetter,
}

impl DocKind {
    pub fn label(self) -> &'static str {
        match self {
            DocKind::Event => "events",
            DocKind::Log => "logs",
            DocKind::DeadLetter => "dead_letter",
        }
    }
}

/// One `create` action with its source, encoded once: a retry re-sends these bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct BulkItem {
    pub kind: DocKind,
    pub index: String,
    pub id: String,
    /// `{"create":{...}}\n{source}\n`
    bytes: Bytes,
    /// Where the source starts in `bytes`.
    source_at: usize,
}

#[derive(Serialize)]
struct ActionLine<'a> {
    create: Target<'a>,
}

#[derive(Serialize)]
struct Target<'a> {
    _index: &'a str,
    _id: &'a str,
}

impl BulkItem {
    /// Encodes `source` (any serializable document) as a `create` of `id` into `index`.
    pub fn create(
        kind: DocKind,
        index: String,
        id: &str,
        source: &impl Serialize,
    ) -> serde_json::Result<BulkItem> {
        let id = document_id(id);
        let mut out = Vec::with_capacity(256);
        serde_json::to_writer(
            &mut out,
            &ActionLine {
                create: Target {
                    _index: &index,
                    _id: &id,
                },
            },
        )?;
        out.push(b'\n');
        let source_at = out.len();
        serde_json::to_writer(&mut out, source)?;
        out.push(b'\n');
        Ok(BulkItem {
            kind,
            index,
            id,
            bytes: out.into(),
            source_at,
        })
    }

    /// The document as sent (JSON, no trailing newline).
    pub fn source(&self) -> &[u8] {
        &self.bytes[self.source_at..self.bytes.len() - 1]
    }

    /// Bytes this item adds to a request.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// `raw` when the cluster accepts it as an `_id`, else a hash of it (stable, so replays
/// still meet the same document).
pub fn document_id(raw: &str) -> String {
    if !raw.is_empty() && raw.len() <= MAX_ID_BYTES {
        raw.to_string()
    } else {
        format!("{:032x}", xxh3_128(raw.as_bytes()))
    }
}

/// The NDJSON body of a request carrying `items`.
pub fn body<'a>(items: impl IntoIterator<Item = &'a BulkItem>) -> Bytes {
    let mut out = BytesMut::new();
    for item in items {
        out.extend_from_slice(&item.bytes);
    }
    out.freeze()
}

/// Where a document that happened at `at` is written. Daily indices are picked by the
/// document's own UTC day, not by today: a replay days later finds the same index, so the
/// `_id` de-duplicates it, and deleting a day's index deletes exactly that day.
pub fn index_for(base: &str, layout: IndexLayout, at: DateTime<Utc>) -> String {
    match layout {
        IndexLayout::DailyIndices => format!("{base}-{}", at.format("%Y.%m.%d")),
        IndexLayout::DataStream => base.to_string(),
    }
}

/// Every document the sink indexes from `batches`, in bus order: events, and log records
/// when `config.logs`. `now` is the processing time (and the day of a document that carries
/// no time of its own).
pub fn batch_items<'a>(
    batches: &'a [std::sync::Arc<Batch>],
    config: &'a ElasticsearchSinkConfig,
    now: DateTime<Utc>,
) -> impl Iterator<Item = BulkItem> + Send + 'a {
    batches.iter().flat_map(
        move |batch| -> Box<dyn Iterator<Item = BulkItem> + Send + 'a> {
            match &batch.data {
                SignalData::Events(request) => {
                    Box::new(request.events.iter().filter_map(move |e| {
                        let index = index_for(
                            &config.events_index,
                            config.layout,
                            event_time(e).unwrap_or(now),
                        );
                        encoded(DocKind::Event, index, &event_id(e), &event_document(e, now))
                    }))
                }
                SignalData::Logs(request) if config.logs => {
                    Box::new(log_records(request).filter_map(move |log| {
                        let at = log_time(log.record).unwrap_or(now);
                        let index = index_for(&config.logs_index, config.layout, at);
                        encoded(DocKind::Log, index, &log_id(log), &log_document(log))
                    }))
                }
                _ => Box::new(std::iter::empty()),
            }
        },
    )
}

/// Serialising a `serde_json::Value` into memory cannot fail (its keys are strings); were it
/// to, the document is reported, never a panic.
fn encoded(kind: DocKind, index: String, id: &str, doc: &serde_json::Value) -> Option<BulkItem> {
    BulkItem::create(kind, index, id, doc)
        .inspect_err(|e| {
            metrics::counter!("tidewater_elasticsearch_unencodable_documents_total").increment(1);
            tracing::error!(id, error = %e, "document cannot be encoded; skipped");
        })
        .ok()
}

/// Splits items into requests of at most `max_bytes` (unless one item alone is larger: it
/// goes alone) and `max_actions` items, keeping order. Items are `BulkItem`s or anything that
/// carries one (the engine's documents).
pub struct Chunks<I: Iterator> {
    items: std::iter::Peekable<I>,
    max_bytes: usize,
    max_actions: usize,
}

pub fn chunks<T: Borrow<BulkItem>, I: Iterator<Item = T>>(
    items: I,
    max_bytes: usize,
    max_actions: usize,
) -> Chunks<I> {
    Chunks {
        items: items.peekable(),
        max_bytes,
        max_actions: max_actions.max(1),
    }
}

impl<T: Borrow<BulkItem>, I: Iterator<Item = T>> Iterator for Chunks<I> {
    type Item = Vec<T>;

    fn next(&mut self) -> Option<Vec<T>> {
        let mut chunk = Vec::new();
        let mut bytes = 0;
        while let Some(next) = self.items.peek() {
            let len = next.borrow().len();
            if !chunk.is_empty()
                && (chunk.len() >= self.max_actions || bytes + len > self.max_bytes)
            {
                break;
            }
            bytes += len;
            chunk.extend(self.items.next());
        }
        (!chunk.is_empty()).then_some(chunk)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn item(id: &str, size: usize) -> BulkItem {
        BulkItem::create(
            DocKind::Event,
            "ev-2026.11.01".into(),
            id,
            &json!({"pad": "x".repeat(size)}),
        )
        .unwrap()
    }

    #[test]
    fn bulk_body_golden() {
        let a = BulkItem::create(
            DocKind::Event,
            "tidewater-events-2026.11.01".into(),
            "m-1",
            &json!({"event": {"name": "Signed Up"}, "n": 1}),
        )
        .unwrap();
        let b = BulkItem::create(
            DocKind::Log,
            "tidewater-logs".into(),
            "q\"x",
            &json!({"message": "line\nbreak"}),
        )
        .unwrap();
        assert_eq!(
            std::str::from_utf8(&body([&a, &b])).unwrap(),
            concat!(
                "{\"create\":{\"_index\":\"tidewater-events-2026.11.01\",\"_id\":\"m-1\"}}\n",
                "{\"event\":{\"name\":\"Signed Up\"},\"n\":1}\n",
                "{\"create\":{\"_index\":\"tidewater-logs\",\"_id\":\"q\\\"x\"}}\n",
                "{\"message\":\"line\\nbreak\"}\n",
            )
        );
        assert_eq!(b.source(), br#"{"message":"line\nbreak"}"#);
    }

    #[test]
    fn overlong_ids_are_hashed_stably() {
        let long = "m".repeat(600);
        let id = document_id(&long);
        assert_eq!(id.len(), 32);
        assert_eq!(id, document_id(&long));
        assert_eq!(document_id("m-1"), "m-1");
        assert_eq!(document_id(&"m".repeat(512)).len(), 512);
    }

    #[test]
    fn daily_index_is_the_documents_utc_day() {
        let at = DateTime::parse_from_rfc3339("2026-11-01T23:30:00-02:00")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            index_for("tidewater-events", IndexLayout::DailyIndices, at),
            "tidewater-events-2026.11.02"
        );
        assert_eq!(
            index_for("tidewater-events", IndexLayout::DataStream, at),
            "tidewater-events"
        );
    }

    #[test]
    fn chunks_respect_bytes_and_count_and_order() {
        let items: Vec<BulkItem> = (0..10).map(|i| item(&i.to_string(), 100)).collect();
        let one = items[0].len();
        let sizes = |c: &[Vec<BulkItem>]| c.iter().map(Vec::len).collect::<Vec<_>>();

        let by_count: Vec<_> = chunks(items.clone().into_iter(), usize::MAX, 4).collect();
        assert_eq!(sizes(&by_count), [4, 4, 2]);
        let by_bytes: Vec<_> = chunks(items.clone().into_iter(), one * 3, 100).collect();
        assert_eq!(sizes(&by_bytes), [3, 3, 3, 1]);
        let ids: Vec<String> = by_bytes.iter().flatten().map(|i| i.id.clone()).collect();
        assert_eq!(ids, (0..10).map(|i| i.to_string()).collect::<Vec<_>>());

        // An item bigger than the limit still goes, alone.
        let mixed = vec![item("a", 10), item("big", 5000), item("b", 10)];
        let c: Vec<_> = chunks(mixed.into_iter(), 1000, 100).collect();
        assert_eq!(sizes(&c), [1, 1, 1]);
    }
}
