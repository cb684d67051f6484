//! Elasticsearch (and OpenSearch) sink: analytics events, and OTLP logs when configured, as
//! documents analysts query.
//!
//! - `config.rs`: `[sinks.elasticsearch]`;
//! - `template.rs`: the index templates (mappings, dynamic templates, field limits), installed
//!   at start-up when missing;
//! - `request.rs`: documents → `create` actions → `_bulk` bodies bounded by bytes and count;
//! - `service.rs`: the `elasticsearch` client (basic / API key / custom CA / SigV4 in
//!   `sigv4.rs`), `_bulk` item results;
//! - `retry.rs`: item-level retry of 429/5xx, 409 as already indexed, 400 as rejected;
//! - `dead_letter.rs`: rejected documents with the reason, to a file and an index.
//!
//! A delivery returns `Ok` only when every document is indexed, already indexed, or
//! dead-lettered; the processor's checkpoint moves only then.

pub mod config;
pub mod dead_letter;
pub mod request;
pub mod retry;
pub mod service;
pub mod sigv4;
pub mod template;

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use futures::{StreamExt, TryStreamExt};
use tidewater_proto::Signal;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::decode::Batch;
use crate::sink::Sink;
pub use config::ElasticsearchSinkConfig;
use dead_letter::DeadLetterFile;
use request::{BulkItem, DocKind};
use retry::{ItemResult, RetryPolicy};
use service::EsService;
use template::Install;

pub struct ElasticsearchSink {
    inner: Arc<Inner>,
}

struct Inner {
    config: ElasticsearchSinkConfig,
    service: EsService,
    policy: RetryPolicy,
    templates: OnceCell<()>,
    dead_letters: DeadLetterFile,
}

impl ElasticsearchSink {
    /// Builds the client and, inside a runtime, starts installing the templates; the first
    /// delivery waits for that (and retries it if the cluster was not reachable).
    pub fn new(config: ElasticsearchSinkConfig, dead_letter_dir: &Path) -> anyhow::Result<Self> {
        config.validate()?;
        let b = &config.bulk;
        let inner = Arc::new(Inner {
            service: EsService::new(&config)?,
            policy: RetryPolicy {
                max_retries: b.max_retries,
                initial: b.retry_initial,
                max: b.retry_max,
            },
            templates: OnceCell::new(),
            dead_letters: DeadLetterFile::new(dead_letter_dir.to_path_buf()),
            config,
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let early = inner.clone();
            runtime.spawn(async move {
                if let Err(e) = early.ensure_templates().await {
                    tracing::warn!(error = %e, "cannot install Elasticsearch index templates yet; retrying at the first delivery");
                }
            });
        }
        Ok(ElasticsearchSink { inner })
    }
}

impl Inner {
    async fn ensure_templates(&self) -> anyhow::Result<()> {
        if !self.config.install_templates {
            return Ok(());
        }
        self.templates
            .get_or_try_init(|| async {
                for t in template::templates(&self.config) {
                    let existing = self.service.template(&t.name).await?;
                    match template::decide(existing.as_ref(), &t) {
                        Install::UpToDate => {}
                        Install::Foreign => tracing::warn!(
                            template = %t.name,
                            "an index template of that name exists and was not installed by Tidewater; leaving it as it is"
                        ),
                        decision @ (Install::Missing | Install::Outdated) => {
                            self.service.put_template(&t.name, &t.body).await?;
                            tracing::info!(template = %t.name, ?decision, "installed index template");
                        }
                    }
                }
                anyhow::Ok(())
            })
            .await?;
        Ok(())
    }

    /// Sends one request's worth of documents to the end: stored, already there, or
    /// dead-lettered.
    async fn send_chunk(&self, chunk: Vec<BulkItem>) -> anyhow::Result<()> {
        let outcome = retry::send_with_retry(&self.service, chunk, &self.policy).await?;
        for (items, label) in [
            (&outcome.stored, "indexed"),
            (&outcome.already_stored, "already_indexed"),
        ] {
            for item in items {
                count(item.kind, label);
            }
        }
        for status in &outcome.retried {
            metrics::counter!("tidewater_elasticsearch_retried_items_total", "status" => status.to_string())
                .increment(1);
        }
        metrics::counter!("tidewater_elasticsearch_retried_requests_total")
            .increment(outcome.retried_requests as u64);
        if !outcome.rejected.is_empty() {
            self.dead_letter(outcome.rejected).await?;
        }
        Ok(())
    }

    async fn dead_letter(&self, rejected: Vec<(BulkItem, ItemResult)>) -> anyhow::Result<()> {
        let now = chrono::Utc::now();
        let records: Vec<_> = rejected
            .iter()
            .map(|(item, result)| dead_letter::record(item, result, now))
            .collect();
        self.dead_letters.append(&records).await?;
        let mut to_index = Vec::new();
        for ((item, result), record) in rejected.iter().zip(&records) {
            count(item.kind, "dead_lettered");
            let reason = result
                .error
                .as_ref()
                .map(|e| e.reason.as_str())
                .unwrap_or("");
            tracing::warn!(index = %item.index, id = %item.id, status = result.status, reason, "document rejected; dead-lettered");
            // A dead letter the dead-letter index refuses stays in the file only: never loop.
            if item.kind != DocKind::DeadLetter {
                to_index.push(BulkItem::create(
                    DocKind::DeadLetter,
                    self.config.dead_letter_index.clone(),
                    &dead_letter::record_id(item),
                    record,
                )?);
            }
        }
        if !to_index.is_empty() {
            // Boxed: this future is part of the one that called it.
            Box::pin(self.send_chunk(to_index)).await?;
        }
        Ok(())
    }
}

fn count(kind: DocKind, outcome: &'static str) {
    metrics::counter!("tidewater_elasticsearch_documents_total", "kind" => kind.label(), "outcome" => outcome)
        .increment(1);
}

#[async_trait]
impl Sink for ElasticsearchSink {
    fn name(&self) -> &'static str {
        "elasticsearch"
    }

    fn accepts(&self, signal: Signal) -> bool {
        match signal {
            Signal::Events => true,
            Signal::Logs => self.inner.config.logs,
            _ => false,
        }
    }

    async fn deliver(
        &self,
        batches: &[Arc<Batch>],
        _stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let inner = &self.inner;
        inner.ensure_templates().await?;
        let bulk = &inner.config.bulk;
        let items = request::batch_items(batches, &inner.config, chrono::Utc::now());
        // Requests are built as they are sent: at most `concurrency` are in memory at once.
        futures::stream::iter(request::chunks(
            items,
            bulk.max_bytes.as_u64() as usize,
            bulk.max_actions,
        ))
        .map(|chunk| inner.send_chunk(chunk))
        .buffer_unordered(bulk.concurrency)
        .try_collect::<()>()
        .await
    }
}
