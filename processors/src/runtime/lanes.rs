//! Delivery: one lane per partition, and under it one lane per sink.
//!
//! A partition's lane takes its rounds in poll order, waits for each to be decoded (decoding
//! itself runs ahead, several rounds at once), writes its dead letters, and hands each sink the
//! batches it accepts. A sink's lane delivers them one round at a time, in order: a sink sees a
//! partition in bus order, which the EMF sink's differencing of cumulative counters needs.
//! Lanes of different partitions, and of different sinks, run at the same time, so a slow or
//! failing sink does not hold the others back: they take later rounds while it works on an
//! earlier one. What they may run ahead by is bounded by the memory budget, since a round
//! is held until every sink acknowledged it.
//!
//! Every acknowledgement goes to the driver, which alone decides what to checkpoint.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::dead_letter;
use super::memory::Held;
use super::round::Decoded;
use crate::decode::Batch;
use crate::sink::Sink;

/// What lanes tell the driver.
pub(crate) enum Event {
    /// `sink` took round `seq` of `partition`, or had nothing to take in it.
    Acked {
        partition: String,
        seq: u64,
        sink: usize,
    },
    /// The processor cannot go on (a sink's delivery failed, dead letters cannot be written):
    /// it stops, and the bus delivers what was not checkpointed again after the restart.
    Failed(anyhow::Error),
}

/// A round on its way to its partition's lane.
pub(crate) struct Dispatched {
    pub(crate) seq: u64,
    pub(crate) decode: JoinHandle<anyhow::Result<Decoded>>,
    pub(crate) held: Held,
}

/// What every lane shares.
#[derive(Clone)]
pub(crate) struct Lanes {
    pub(crate) sinks: Arc<[Arc<dyn Sink>]>,
    pub(crate) events: mpsc::UnboundedSender<Event>,
    /// Cancelled when the processor stops, or fails: no round is begun after it.
    pub(crate) halt: CancellationToken,
    /// What `deliver` is given: cancelled on a failure, and `stop_grace` after a stop, so
    /// deliveries under way at a stop finish and are checkpointed rather than abandoned
    /// midway (their writes may land anyway, and would then be delivered again).
    pub(crate) give_up: CancellationToken,
    pub(crate) dead_letter_dir: PathBuf,
}

/// A decoded round, shared by the sinks taking it. Its memory is given back when the last of
/// them is done with it.
struct Shared {
    state: AtomicU8,
    _held: Held,
}

const OPEN: u8 = 0;
const STARTED: u8 = 1;
const CLOSED: u8 = 2;

impl Shared {
    /// Whether a sink lane may deliver this round. Once the processor is halting, a round no
    /// sink has begun is closed for all of them, and one that some sink began is delivered by
    /// every sink: they all stop after the same round, so the checkpoint covers whatever any
    /// of them took and a graceful restart delivers nothing twice.
    fn begin(&self, halting: bool) -> bool {
        let next = if halting { CLOSED } else { STARTED };
        match self
            .state
            .compare_exchange(OPEN, next, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => !halting,
            Err(state) => state == STARTED,
        }
    }
}

/// A round's batches for one sink.
struct ForSink {
    seq: u64,
    batches: Vec<Arc<Batch>>,
    round: Arc<Shared>,
}

impl Lanes {
    fn ack(&self, partition: &str, seq: u64, sink: usize) {
        // Fails only once the driver is gone, when nothing is committed any more.
        let _ = self.events.send(Event::Acked {
            partition: partition.to_string(),
            seq,
            sink,
        });
    }

    fn fail(&self, error: anyhow::Error) {
        let _ = self.events.send(Event::Failed(error));
    }

    /// Runs a partition's lane until the driver drops its sender and every round it had is
    /// through, or a failure.
    pub(crate) async fn partition(
        self,
        partition: String,
        mut rounds: mpsc::UnboundedReceiver<Dispatched>,
    ) {
        let mut sink_lanes = JoinSet::new();
        let senders: Vec<_> = (0..self.sinks.len())
            .map(|index| {
                let (tx, rx) = mpsc::unbounded_channel();
                sink_lanes.spawn(self.clone().sink(index, partition.clone(), rx));
                tx
            })
            .collect();
        while let Some(round) = rounds.recv().await {
            let decoded = match round.decode.await {
                Ok(Ok(decoded)) => decoded,
                Ok(Err(e)) => {
                    self.fail(e.context(format!("cannot decode a round of partition {partition}")));
                    break;
                }
                Err(e) => {
                    self.fail(anyhow::anyhow!(
                        "decoding a round of partition {partition} failed: {e}"
                    ));
                    break;
                }
            };
            if !decoded.dead_letters.is_empty() {
                let written =
                    dead_letter::write(&self.dead_letter_dir, decoded.dead_letters, &self.give_up)
                        .await;
                if written.is_err() {
                    // Stopped before the lines were on disk: the round is not acknowledged,
                    // so the bus delivers it again.
                    break;
                }
            }
            let shared = Arc::new(Shared {
                state: AtomicU8::new(OPEN),
                _held: round.held,
            });
            for (index, sink) in self.sinks.iter().enumerate() {
                let batches: Vec<Arc<Batch>> = decoded
                    .batches
                    .iter()
                    .filter(|b| sink.accepts(b.signal))
                    .cloned()
                    .collect();
                if batches.is_empty() {
                    self.ack(&partition, round.seq, index);
                    continue;
                }
                let item = ForSink {
                    seq: round.seq,
                    batches,
                    round: Arc::clone(&shared),
                };
                // A sink lane ends early only after a failure it reported, or when halting.
                if senders[index].send(item).is_err() && !self.halt.is_cancelled() {
                    self.fail(anyhow::anyhow!(
                        "the {} sink's delivery of partition {partition} ended unexpectedly",
                        sink.name()
                    ));
                }
            }
        }
        drop(senders);
        while let Some(joined) = sink_lanes.join_next().await {
            if let Err(e) = joined {
                tracing::error!(partition, error = %e, "a sink's delivery task failed");
                self.fail(anyhow::anyhow!("a sink's delivery task failed: {e}"));
            }
        }
    }

    /// Runs one sink's lane of one partition: its rounds one at a time, in order.
    async fn sink(
        self,
        index: usize,
        partition: String,
        mut rounds: mpsc::UnboundedReceiver<ForSink>,
    ) {
        let sink = Arc::clone(&self.sinks[index]);
        while let Some(item) = rounds.recv().await {
            if !item.round.begin(self.halt.is_cancelled()) {
                // Halting: this round and the later ones stay for the next run.
                break;
            }
            let span = tracing::debug_span!("deliver", sink = sink.name(), partition = %partition, batches = item.batches.len());
            // The sink retries what fails until it succeeds or gives up; not retried here.
            match sink
                .deliver(&item.batches, &self.give_up)
                .instrument(span)
                .await
            {
                Ok(()) => {
                    metrics::counter!("tidewater_processor_delivered_batches_total", "sink" => sink.name())
                        .increment(item.batches.len() as u64);
                    self.ack(&partition, item.seq, index);
                }
                Err(e) => {
                    metrics::counter!("tidewater_processor_sink_failures_total", "sink" => sink.name())
                        .increment(1);
                    if self.halt.is_cancelled() {
                        tracing::warn!(sink = sink.name(), partition, error = %format!("{e:#}"), "stopped before the sink took a round; it is delivered again after the restart");
                    } else {
                        tracing::error!(sink = sink.name(), partition, error = %format!("{e:#}"), "sink failed to deliver; stopping the processor, the bus delivers the round again after the restart");
                        self.fail(e.context(format!("sink {} failed", sink.name())));
                    }
                    break;
                }
            }
        }
    }
}
