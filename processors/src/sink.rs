//! What a sink is: something that takes decoded batches and says when they are safe.

use std::sync::Arc;

use async_trait::async_trait;
use tidewater_proto::Signal;
use tokio_util::sync::CancellationToken;

use crate::decode::Batch;

#[async_trait]
pub trait Sink: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// Whether this sink wants batches of `signal`.
    fn accepts(&self, signal: Signal) -> bool;

    /// Delivers `batches` (all of accepted signals, in bus order within a partition). `Ok`
    /// means every item is stored at the destination or dead-lettered with its reason: the
    /// checkpoint may move past them. The sink retries what failed itself, through the one
    /// delivery engine ([`crate::delivery`]), until it succeeds or `stop` is cancelled; the
    /// runtime never calls `deliver` again for the same batches. An error therefore means
    /// "stopped first" (or a defect): the runtime does not checkpoint them, and the bus
    /// delivers them again after the restart. May be called for several rounds at once.
    async fn deliver(&self, batches: &[Arc<Batch>], stop: &CancellationToken)
        -> anyhow::Result<()>;

    /// Called by the runtime between rounds (at least every `processor.poll_wait`), and once
    /// with `stopping` when the processor stops: a sink that holds data for a while (a time
    /// window) sends what is due, or everything when stopping. What `deliver` acknowledged
    /// must already be durable, so an error here only means "try again at the next tick".
    async fn tick(&self, _stopping: bool) -> anyhow::Result<()> {
        Ok(())
    }
}
