//! Traces to AWS X-Ray with `PutTraceSegments`.
//!
//! OTLP spans are translated by the pure [`crate::xray`] translator; segment documents
//! that X-Ray SDK apps sent to the collector's daemon-compatible UDP port travel the bus
//! as-is. Both are checked against X-Ray's limits ([`request::precheck`]), cut into calls
//! of at most 50 documents and `max_request_size` ([`request::chunk`]), and sent
//! `concurrency` calls at a time. Within a call only what X-Ray reports in
//! `UnprocessedTraceSegments` is sent again, with backoff and jitter ([`retry`]);
//! documents refused for good go to the dead-letter file with X-Ray's code and message
//! ([`dead_letter`]), as do spans the translator found no X-Ray form for ([`dropped`]).
//! A call that keeps failing as a whole fails the delivery, so the processor retries the
//! round and never checkpoints past it.

mod config;
mod dead_letter;
mod dropped;
pub mod request;
pub mod retry;
pub mod service;

use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use tidewater_proto::Signal;
use tokio_util::sync::CancellationToken;

pub use config::XraySinkConfig;

use crate::decode::{Batch, SignalData};
use crate::sink::Sink;
use crate::xray::{translate, AnnotationMode, TranslationStats, XrayConfig};
use dead_letter::DeadLetter;
use request::{chunk, precheck, Doc};
use retry::{send, Rejection, RetryPolicy};
use service::{SegmentApi, Xray};

pub struct XraySink {
    config: XraySinkConfig,
    translation: XrayConfig,
    api: Arc<dyn SegmentApi>,
    dead_letter: DeadLetter,
    policy: RetryPolicy,
}

impl XraySink {
    pub fn new(config: XraySinkConfig) -> anyhow::Result<Self> {
        Self::with_api(config, Arc::new(Xray::default()))
    }

    /// With another implementation of the X-Ray call (unit tests).
    pub fn with_api(config: XraySinkConfig, api: Arc<dyn SegmentApi>) -> anyhow::Result<Self> {
        config.validate()?;
        Ok(XraySink {
            translation: config.translation(),
            dead_letter: DeadLetter::new(config.dead_letter_path.clone()),
            policy: RetryPolicy {
                max_attempts: config.max_attempts,
                initial: config.retry_initial,
                max: config.retry_max,
            },
            api,
            config,
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
            self.dead_letter.path().display()
        )
    }
}

/// What a round becomes.
pub struct Documents {
    /// Translated spans, and SDK documents as they came.
    pub docs: Vec<Doc>,
    pub stats: TranslationStats,
    pub from_sdk: usize,
    /// Spans with no X-Ray form, for the dead-letter file.
    pub unplaceable: Vec<Rejection>,
}

pub fn documents(batches: &[Arc<Batch>], config: &XrayConfig, now: SystemTime) -> Documents {
    let mut docs = Vec::new();
    let mut stats = TranslationStats::default();
    let mut from_sdk = 0;
    let mut unplaceable = Vec::new();
    for batch in batches {
        match &batch.data {
            SignalData::Traces(request) => {
                let t = translate(request, config, now);
                if t.stats.dropped_spans > 0 {
                    unplaceable.extend(dropped::unplaceable(request, now));
                }
                add_stats(&mut stats, &t.stats);
                docs.extend(t.documents.into_iter().map(Doc::new));
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
        unplaceable,
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
        _stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let now = SystemTime::now();
        let owned = batches.to_vec();
        let cfg = self.translation.clone();
        // Translation is CPU work proportional to the round: off the async workers.
        let Documents {
            docs,
            stats,
            from_sdk,
            unplaceable,
        } = tokio::task::spawn_blocking(move || documents(&owned, &cfg, now)).await?;

        let mut rejected = unplaceable;
        let mut sendable = Vec::with_capacity(docs.len());
        for doc in docs {
            match precheck(&doc) {
                Some(reason) => rejected.push(Rejection {
                    doc,
                    code: "Tidewater.InvalidDocument".into(),
                    message: reason.into(),
                }),
                None => sendable.push(doc),
            }
        }
        let calls = chunk(sendable, self.config.max_request_size.as_u64() as usize);
        let outcomes: Vec<retry::Outcome> = futures::stream::iter(calls)
            .map(|call| send(self.api.as_ref(), call, &self.policy))
            .buffer_unordered(self.config.concurrency)
            .try_collect()
            .await?;
        let mut accepted = 0;
        for o in outcomes {
            accepted += o.accepted;
            rejected.extend(o.rejected);
        }
        self.dead_letter.write(rejected).await?;
        // Counted only once the round is through, so a retried round does not count twice.
        record_stats(&stats, from_sdk);
        metrics::counter!("tidewater_xray_sent_documents_total").increment(accepted as u64);
        Ok(())
    }
}

#[cfg(test)]
mod tests;
