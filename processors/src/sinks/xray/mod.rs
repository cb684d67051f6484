//! Traces to AWS X-Ray with `PutTraceSegments`, on the delivery engine.
//!
//! OTLP spans are translated by the pure [`crate::xray`] translator; segment documents
//! that X-Ray SDK apps sent to the collector's daemon-compatible UDP port travel the bus
//! as-is. The sink supplies the rest of its [`service::XrayService`]: X-Ray's limits
//! ([`request::precheck`], [`request::chunk`]: 64 KiB per document, 50 documents and
//! `max_request_size` per call), the call, and what X-Ray's answer means ([`answer`]: each
//! document X-Ray names in `UnprocessedTraceSegments` is sent again or refused by its code).
//! The engine owns retries, concurrency, the dead-letter file and the `tidewater_sink_*`
//! metrics; spans the translator found no X-Ray form for ([`dropped`]) are refused by the
//! precheck, so they reach the same dead-letter file. Only the translation's counters are
//! the sink's own (`tidewater_xray_*`).

pub mod answer;
mod config;
mod dropped;
pub mod request;
pub mod service;

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use tidewater_proto::Signal;
use tokio_util::sync::CancellationToken;

pub use config::XraySinkConfig;

use crate::decode::{Batch, SignalData};
use crate::delivery::Engine;
use crate::sink::Sink;
use crate::xray::{translate, AnnotationMode, TranslationStats, XrayConfig};
use request::Doc;
use service::{SegmentApi, Xray, XrayService};

pub struct XraySink {
    translation: XrayConfig,
    engine: Engine<XrayService>,
}

impl XraySink {
    pub fn new(config: XraySinkConfig) -> anyhow::Result<Self> {
        Self::with_api(config, Arc::new(Xray::default()))
    }

    /// With another implementation of the X-Ray call (unit tests).
    pub fn with_api(config: XraySinkConfig, api: Arc<dyn SegmentApi>) -> anyhow::Result<Self> {
        config.validate().map_err(anyhow::Error::msg)?;
        let service = XrayService::new(api, config.max_request_size.as_u64() as usize);
        Ok(XraySink {
            translation: config.translation(),
            engine: Engine::new(service, config.delivery),
        })
    }

    pub fn describe(&self) -> String {
        let annotations = match &self.translation.annotations {
            AnnotationMode::None => "none".to_string(),
            AnnotationMode::All => "every attribute".to_string(),
            AnnotationMode::Keys(keys) => keys.join(", "),
        };
        format!(
            "sink xray: PutTraceSegments, annotations: {annotations}; dead letters in {}",
            self.engine.dead_letter_path().display()
        )
    }
}

/// What a round becomes.
pub struct Documents {
    /// Translated spans, SDK documents as they came, and spans with no X-Ray form (marked
    /// [`Doc::unplaceable`], for the dead-letter file).
    pub docs: Vec<Doc>,
    pub stats: TranslationStats,
    pub from_sdk: usize,
}

pub fn documents(batches: &[Arc<Batch>], config: &XrayConfig, now: SystemTime) -> Documents {
    let mut docs = Vec::new();
    let mut stats = TranslationStats::default();
    let mut from_sdk = 0;
    for batch in batches {
        match &batch.data {
            SignalData::Traces(request) => {
                let t = translate(request, config, now);
                add_stats(&mut stats, &t.stats);
                docs.extend(t.documents.into_iter().map(Doc::new));
                if t.stats.dropped_spans > 0 {
                    docs.extend(dropped::unplaceable(request, now));
                }
            }
            SignalData::XraySegments(bodies) => {
                from_sdk += bodies.len();
                docs.extend(bodies.iter().cloned().map(Doc::new));
            }
            _ => {}
        }
    }
    Documents {
        docs,
        stats,
        from_sdk,
    }
}

fn add_stats(total: &mut TranslationStats, s: &TranslationStats) {
    total.spans += s.spans;
    total.documents += s.documents;
    total.remapped_trace_ids += s.remapped_trace_ids;
    total.dropped_spans += s.dropped_spans;
    total.annotations_to_metadata += s.annotations_to_metadata;
    total.metadata_keys_shed += s.metadata_keys_shed;
    total.annotations_shed += s.annotations_shed;
    total.stack_frames_shed += s.stack_frames_shed;
    total.documents_split += s.documents_split;
    total.strings_truncated += s.strings_truncated;
    total.exceptions_shed += s.exceptions_shed;
}

fn record_stats(s: &TranslationStats, from_sdk: usize) {
    metrics::counter!("tidewater_xray_spans_total").increment(s.spans as u64);
    metrics::counter!("tidewater_xray_documents_total", "source" => "otlp")
        .increment(s.documents as u64);
    metrics::counter!("tidewater_xray_documents_total", "source" => "xray_sdk")
        .increment(from_sdk as u64);
    for (kind, n) in [
        ("remapped_trace_ids", s.remapped_trace_ids),
        ("dropped_spans", s.dropped_spans),
        ("annotations_to_metadata", s.annotations_to_metadata),
        ("metadata_keys_shed", s.metadata_keys_shed),
        ("annotations_shed", s.annotations_shed),
        ("stack_frames_shed", s.stack_frames_shed),
        ("documents_split", s.documents_split),
        ("strings_truncated", s.strings_truncated),
        ("exceptions_shed", s.exceptions_shed),
    ] {
        metrics::counter!("tidewater_xray_translation_total", "kind" => kind).increment(n as u64);
    }
}

#[async_trait]
impl Sink for XraySink {
    fn name(&self) -> &'static str {
        "xray"
    }

    fn accepts(&self, signal: Signal) -> bool {
        matches!(signal, Signal::Traces | Signal::XraySegments)
    }

    async fn deliver(
        &self,
        batches: &[Arc<Batch>],
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let now = SystemTime::now();
        let owned = batches.to_vec();
        let cfg = self.translation.clone();
        // Translation is CPU work proportional to the round: off the async workers.
        let Documents {
            docs,
            stats,
            from_sdk,
        } = tokio::task::spawn_blocking(move || documents(&owned, &cfg, now)).await?;
        self.engine.deliver(docs, stop).await?;
        // Counted only once the round is through, so a round stopped and delivered again
        // after the restart does not count twice.
        record_stats(&stats, from_sdk);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
