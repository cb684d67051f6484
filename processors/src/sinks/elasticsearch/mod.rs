//! Elasticsearch (and OpenSearch) sink: analytics events, and OTLP logs when configured, as
//! documents analysts query.
//!
//! - `config.rs`: `[sinks.elasticsearch]`;
//! - `template.rs`: the index templates (mappings, dynamic templates, field limits), installed
//!   before the first delivery when missing;
//! - `request.rs`: documents → `create` actions → `_bulk` bodies bounded by bytes and count;
//! - `service.rs`: the `elasticsearch` client (basic / API key / custom CA / SigV4, shared
//!   with the OTLP sink in [`crate::sinks::sigv4`]) and `_bulk` as the delivery engine's service;
//! - `classify.rs`: what a `_bulk` answer means, item by item (409 already indexed, 400
//!   rejected, 429/5xx sent again) and as a whole (413 halved, 401/403 fatal);
//! - `dead_letter.rs`: what a dead letter keeps, and the same line for the dead-letter index.
//!
//! Retries, concurrency, the dead-letter file and the metrics are the delivery engine's
//! ([`crate::delivery`]). A delivery returns `Ok` only when every document is indexed, already
//! indexed, or dead-lettered; the processor's checkpoint moves only then.

pub mod classify;
pub mod config;
pub mod dead_letter;
pub mod request;
pub mod service;
pub mod template;
#[cfg(test)]
mod tests;

use std::sync::Arc;

use async_trait::async_trait;
use tidewater_proto::Signal;
use tokio::sync::OnceCell;
use tokio_util::sync::CancellationToken;

use crate::decode::Batch;
use crate::delivery::{health, Backoff, Engine, Stopped};
use crate::sink::Sink;
pub use config::ElasticsearchSinkConfig;
use service::{Doc, EsService, NAME};
use template::Install;

pub struct ElasticsearchSink {
    inner: Arc<Inner>,
}

struct Inner {
    config: ElasticsearchSinkConfig,
    engine: Engine<EsService>,
    templates: OnceCell<()>,
}

impl ElasticsearchSink {
    /// Builds the client and, inside a runtime, starts installing the templates; the first
    /// delivery waits for that (and keeps trying if the cluster was not reachable).
    ///
    /// Dead letters go to `config.delivery.dead_letter_dir`; the second argument (the
    /// processor's directory for undecodable records, where they went before) is no longer
    /// read.
    pub fn new(config: ElasticsearchSinkConfig) -> anyhow::Result<Self> {
        config.validate()?;
        let inner = Arc::new(Inner {
            engine: Engine::new(EsService::new(&config)?, config.delivery.clone()),
            templates: OnceCell::new(),
            config,
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let early = inner.clone();
            runtime.spawn(async move {
                if let Err(e) = early.install_templates().await {
                    tracing::warn!(error = %e, "cannot install Elasticsearch index templates yet; retrying at the first delivery");
                }
            });
        }
        Ok(ElasticsearchSink { inner })
    }
}

impl Inner {
    /// Installs the templates, retrying with backoff until they are in or `stop`: a document
    /// indexed before its template would take the cluster's default mappings for good.
    async fn ensure_templates(&self, stop: &CancellationToken) -> Result<(), Stopped> {
        let delivery = &self.config.delivery;
        let mut backoff = Backoff::new(delivery.retry_initial, delivery.retry_max);
        let mut failed = false;
        loop {
            match self.install_templates().await {
                Ok(()) => {
                    if failed {
                        health::answered(NAME);
                    }
                    return Ok(());
                }
                Err(e) => {
                    failed = true;
                    tracing::warn!(error = %e, "cannot install Elasticsearch index templates; retrying");
                    health::failed(NAME, &format!("index templates: {e}"), false);
                    if !backoff.wait(stop).await {
                        return Err(Stopped);
                    }
                }
            }
        }
    }

    async fn install_templates(&self) -> anyhow::Result<()> {
        if !self.config.install_templates {
            return Ok(());
        }
        let service = self.engine.service();
        self.templates
            .get_or_try_init(|| async {
                for t in template::templates(&self.config) {
                    let existing = service.template(&t.name).await?;
                    match template::decide(existing.as_ref(), &t) {
                        Install::UpToDate => {}
                        Install::Foreign => tracing::warn!(
                            template = %t.name,
                            "an index template of that name exists and was not installed by Tidewater; leaving it as it is"
                        ),
                        decision @ (Install::Missing | Install::Outdated) => {
                            service.put_template(&t.name, &t.body).await?;
                            tracing::info!(template = %t.name, ?decision, "installed index template");
                            if t.name == self.config.dead_letter_index {
                                self.upgrade_dead_letter_index(&t).await;
                            }
                        }
                    }
                }
                anyhow::Ok(())
            })
            .await?;
        Ok(())
    }

    /// A template shapes only indices created after it: the dead-letter index an older
    /// Tidewater created (one index, strict) gets the fields dead letters have now, or it
    /// would refuse every one of them.
    async fn upgrade_dead_letter_index(&self, t: &template::Template) {
        let index = &self.config.dead_letter_index;
        match self
            .engine
            .service()
            .put_mapping(index, &t.body["template"]["mappings"])
            .await
        {
            Ok(true) => tracing::info!(index = %index, "updated the dead-letter index's mappings"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(index = %index, error = %e, "cannot update the dead-letter index's mappings; dead letters it refuses are in the file only")
            }
        }
    }
}

#[async_trait]
impl Sink for ElasticsearchSink {
    fn name(&self) -> &'static str {
        NAME
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
        stop: &CancellationToken,
    ) -> anyhow::Result<()> {
        let inner = &self.inner;
        inner.ensure_templates(stop).await?;
        // Encoding a round's documents is CPU work: off the async workers.
        let docs = {
            let (inner, batches) = (inner.clone(), batches.to_vec());
            tokio::task::spawn_blocking(move || {
                request::batch_items(&batches, &inner.config, chrono::Utc::now())
                    .map(Doc::new)
                    .collect::<Vec<_>>()
            })
            .await?
        };
        let report = inner.engine.deliver(docs, stop).await?;
        // Already in the file; also indexed where they can be searched. What the dead-letter
        // index refuses is in the file only.
        let letters = dead_letter::to_index(&report.dead_lettered, &inner.config.dead_letter_index);
        if !letters.is_empty() {
            inner.engine.deliver(letters, stop).await?;
        }
        Ok(())
    }
}
