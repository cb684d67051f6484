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

    /// Delivers `batches` (all of accepted signals, one round of one partition, in bus
    /// order; a partition's rounds come one at a time, in order, and rounds of different
    /// partitions at the same time). `Ok` means every item is stored at the destination or
    /// dead-lettered with its reason: the checkpoint may move past them. `stop` is cancelled
    /// on a failure elsewhere, or `processor.stop_grace` after the processor was told to stop.
    /// The sink retries what failed itself, through the one delivery engine
    /// ([`crate::delivery`]), until it succeeds or `stop` is cancelled; the runtime never
    /// calls `deliver` again for the same batches. An error therefore means "stopped first"
    /// (or a defect): the runtime does not checkpoint them, and the bus delivers them again
    /// after the restart.
    async fn deliver(&self, batches: &[Arc<Batch>], stop: &CancellationToken)
        -> anyhow::Result<()>;

    /// Called by the runtime at least every `processor.poll_wait`, while deliveries may be
    /// under way, and once with `stopping` after the last delivery: a sink that holds data
    /// for a while (a time window) sends what is due, or everything when stopping. What
    /// `deliver` acknowledged must already be durable, so an error here only means "try
    /// again at the next tick".
    async fn tick(&self, _stopping: bool) -> anyhow::Result<()> {
        Ok(())
    }
}
