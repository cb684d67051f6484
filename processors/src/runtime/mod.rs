//! The processor: poll the bus, decode, deliver to every sink, checkpoint; several rounds at
//! once, within a memory budget.
//!
//! One task, the driver (here), owns the bus consumer: it polls while the budget
//! ([`memory`]) has room, cuts what it got into rounds of one partition ([`round`]), starts
//! decoding them, hands them to their partition's lane ([`lanes`]), and commits what every
//! sink acknowledged ([`checkpoint`]). Polling goes on while earlier rounds are decoded and
//! delivered, so the bus, the cores and the sinks work at the same time.
//!
//! A checkpoint moves only past rounds every sink acknowledged, so after a crash a sink sees
//! again at most what it took beyond the last checkpoint; a graceful stop lets the sinks
//! catch up with each other and checkpoints that, so a restart repeats nothing. A sink
//! retries its own failures ([`crate::sink::Sink::deliver`]); one that gives up stops the
//! processor with an error, and the orchestrator's restart resumes from the checkpoint.

mod checkpoint;
mod dead_letter;
mod lanes;
mod memory;
mod round;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use tidewater_bus::{Consumer, Position, Record};
use tidewater_proto::Signal;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use self::checkpoint::Checkpoints;
use self::lanes::{Dispatched, Event, Lanes};
use self::memory::Budget;
use self::round::Cut;
use crate::config::ProcessorConfig;
use crate::decode::decoded_factor;
use crate::delivery::Backoff;
use crate::sink::Sink;

pub struct Processor {
    config: ProcessorConfig,
    consumer: Box<dyn Consumer>,
    sinks: Vec<Arc<dyn Sink>>,
}

impl Processor {
    pub fn new(
        config: ProcessorConfig,
        consumer: Box<dyn Consumer>,
        sinks: Vec<Arc<dyn Sink>>,
    ) -> Self {
        Processor {
            config,
            consumer,
            sinks,
        }
    }

    /// Runs until `stop`, then checkpoints what every sink acknowledged; `Err` when a sink's
    /// delivery, the bus or the dead letters failed (the process should exit and be
    /// restarted: the bus delivers again what was not checkpointed).
    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        let budget = Budget::new(self.config.memory_limit.as_u64());
        self.run_with(stop, budget).await
    }

    async fn run_with(self, stop: CancellationToken, budget: Arc<Budget>) -> anyhow::Result<()> {
        tracing::info!(sinks = ?self.sinks.iter().map(|s| s.name()).collect::<Vec<_>>(), memory_limit = %self.config.memory_limit, "processor running");
        let sinks: Arc<[Arc<dyn Sink>]> = self.sinks.into();
        // Cancelled by `stop`, or by a failure: nothing is polled or begun after it.
        let halt = stop.child_token();
        let ticker = tokio::spawn(tick_every(
            Arc::clone(&sinks),
            self.config.poll_wait,
            halt.clone(),
        ));
        let (events_tx, events) = mpsc::unbounded_channel();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let mut driver = Driver {
            checkpoints: Checkpoints::new(sinks.len()),
            lanes: Lanes {
                sinks: Arc::clone(&sinks),
                events: events_tx,
                halt: halt.clone(),
                give_up: CancellationToken::new(),
                dead_letter_dir: self.config.dead_letter_dir.clone(),
            },
            config: self.config,
            consumer: self.consumer,
            budget,
            cpus: Arc::new(Semaphore::new(cpus)),
            partitions: HashMap::new(),
            tasks: JoinSet::new(),
            events,
            pending: VecDeque::new(),
            // Until a poll shows otherwise: incompressible traces.
            cost_per_byte: (1 + decoded_factor(Signal::Traces)) as f64,
            largest_record: 0,
        };
        let mut outcome = driver.drive(&halt).await;
        let give_up = driver.lanes.give_up.clone();
        if let Err(e) = &outcome {
            tracing::error!(error = %format!("{e:#}"), "processor failed; stopping");
            give_up.cancel();
        }
        halt.cancel();
        let grace = tokio::spawn({
            let give_up = give_up.clone();
            let grace = driver.config.stop_grace;
            async move {
                tokio::time::sleep(grace).await;
                tracing::warn!(
                    ?grace,
                    "deliveries still under way after processor.stop_grace; telling the sinks to stop"
                );
                give_up.cancel();
            }
        });
        if let Err(e) = driver.finish(&halt).await {
            if outcome.is_ok() {
                tracing::error!(error = %format!("{e:#}"), "processor failed while stopping");
                outcome = Err(e);
            }
        }
        grace.abort();
        let _ = ticker.await;
        tick(&sinks, true).await;
        // Hands what this processor held back at once (leases) instead of after it expires.
        if let Err(e) = driver.consumer.close().await {
            tracing::warn!(error = %e, "bus consumer did not close cleanly");
        }
        metrics::gauge!("tidewater_processor_rounds_in_flight").set(0.0);
        tracing::info!("processor stopped");
        outcome
    }
}

struct Driver {
    config: ProcessorConfig,
    consumer: Box<dyn Consumer>,
    budget: Arc<Budget>,
    /// One permit per core, for decoding.
    cpus: Arc<Semaphore>,
    checkpoints: Checkpoints,
    lanes: Lanes,
    /// Each partition's lane, by partition.
    partitions: HashMap<String, mpsc::UnboundedSender<Dispatched>>,
    tasks: JoinSet<()>,
    events: mpsc::UnboundedReceiver<Event>,
    /// Rounds cut from the last poll, waiting for memory to decode them, in poll order.
    pending: VecDeque<Cut>,
    /// What a byte polled costs the budget once decoded, as the last poll found: a poll asks
    /// for the bytes the room can take decoded, so its rounds seldom wait.
    cost_per_byte: f64,
    /// The most a record polled so far cost: polling waits for that much room, so one more
    /// record of the kind seen does not take the budget past its limit.
    largest_record: u64,
}

impl Driver {
    /// Polls, dispatches and commits until halted (`Ok`) or a failure (`Err`).
    async fn drive(&mut self, halt: &CancellationToken) -> anyhow::Result<()> {
        loop {
            let next_cost = self.pending.front().map_or(0, Cut::decoded_estimate);
            let own: u64 = self.pending.iter().map(Cut::compressed_bytes).sum();
            let budget = Arc::clone(&self.budget);
            tokio::select! {
                biased;
                _ = halt.cancelled() => return Ok(()),
                Some(event) = self.events.recv() => self.on_events(event, halt).await?,
                Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    // A lane ends on its own only after reporting a failure, which comes as an
                    // event; a panic does not.
                    if let Err(e) = joined {
                        anyhow::bail!("a partition's delivery task failed: {e}");
                    }
                }
                decoded = budget.reserve(next_cost, own), if !self.pending.is_empty() => {
                    let mut cut = self.pending.pop_front().expect("not empty");
                    cut.held.as_mut().expect("held since the poll").merge(decoded);
                    self.dispatch(cut);
                }
                room = budget.room(self.largest_record), if self.pending.is_empty() => {
                    self.poll(room, halt).await?;
                }
            }
        }
    }

    /// One poll, for as many bytes as `room` takes decoded; its rounds join `pending`.
    async fn poll(&mut self, room: u64, halt: &CancellationToken) -> anyhow::Result<()> {
        let max = self.config.max_poll_records;
        let max_bytes = ((room as f64 / self.cost_per_byte) as u64).max(1);
        let max_bytes = usize::try_from(max_bytes).unwrap_or(usize::MAX);
        // Data already there comes back at once: such a poll is never cut short, so no read
        // is wasted.
        let mut records = tokio::select! {
            biased;
            _ = halt.cancelled() => return Ok(()),
            polled = self.consumer.poll(max, max_bytes, Duration::ZERO) => polled?,
        };
        if records.is_empty() {
            // Idle: wait for data, but not past an acknowledgement, so checkpoints follow
            // deliveries at once. The bus consumers' polls can be cut short losing nothing.
            records = tokio::select! {
                biased;
                _ = halt.cancelled() => return Ok(()),
                Some(event) = self.events.recv() => {
                    return self.on_events(event, halt).await;
                }
                polled = self.consumer.poll(max, max_bytes, self.config.poll_wait) => polled?,
            };
        }
        if records.is_empty() {
            return Ok(());
        }
        self.learn_costs(&records);
        let cuts = round::cut(records, max, self.config.max_round_bytes.as_u64());
        for mut cut in cuts {
            cut.held = Some(self.budget.take(cut.compressed_bytes()));
            self.pending.push_back(cut);
        }
        Ok(())
    }

    fn learn_costs(&mut self, records: &[Record]) {
        let (mut bytes, mut cost) = (0u64, 0u64);
        for record in records {
            let one = round::record_cost(record);
            self.largest_record = self.largest_record.max(one);
            bytes += record.payload.len() as u64;
            cost += one;
        }
        if bytes > 0 {
            self.cost_per_byte = (cost as f64 / bytes as f64).max(1.0);
        }
    }

    /// Starts decoding a round whose memory is held, and hands it to its partition's lane.
    fn dispatch(&mut self, mut cut: Cut) {
        let seq = self.checkpoints.open(&cut.partition, cut.last_position());
        self.report();
        let (records, sizes) = cut.take_records();
        let span =
            tracing::debug_span!("round", partition = %cut.partition, records = records.len());
        let decode = tokio::spawn(
            round::decode_round(records, sizes, Arc::clone(&self.cpus)).instrument(span),
        );
        let lane = self
            .partitions
            .entry(cut.partition.clone())
            .or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                self.tasks
                    .spawn(self.lanes.clone().partition(cut.partition.clone(), rx));
                tx
            });
        let round = Dispatched {
            seq,
            decode,
            held: cut.held.take().expect("held since the poll"),
        };
        // A lane that failed is gone; its failure is on its way and this round is dropped
        // with it.
        let _ = lane.send(round);
    }

    /// Takes in `first` and whatever else is waiting, then commits what they completed: one
    /// commit per partition however many rounds it covers.
    async fn on_events(&mut self, first: Event, halt: &CancellationToken) -> anyhow::Result<()> {
        let mut failure = None;
        let mut next = Some(first);
        while let Some(event) = next {
            self.take_in(event, &mut failure);
            next = self.events.try_recv().ok();
        }
        if let Some(e) = failure {
            return Err(e);
        }
        self.report();
        self.commit_ready(halt).await;
        Ok(())
    }

    async fn commit_ready(&mut self, stop: &CancellationToken) {
        for (partition, position) in self.checkpoints.committable() {
            commit(
                self.consumer.as_mut(),
                &partition,
                &position,
                &self.config,
                stop,
            )
            .await;
        }
    }

    /// After a halt: lets the lanes finish what they may (deliveries under way, and rounds
    /// another sink already took), then commits every acknowledged round. `Err` for a failure
    /// reported meanwhile.
    async fn finish(&mut self, halt: &CancellationToken) -> anyhow::Result<()> {
        self.pending.clear();
        // Without their senders, partition lanes end once their rounds are through.
        self.partitions.clear();
        let mut failure = None;
        loop {
            tokio::select! {
                Some(event) = self.events.recv() => self.take_in(event, &mut failure),
                joined = self.tasks.join_next() => match joined {
                    None => break,
                    Some(Err(e)) => {
                        failure.get_or_insert(anyhow::anyhow!("a partition's delivery task failed: {e}"));
                    }
                    Some(Ok(())) => {}
                },
            }
        }
        while let Ok(event) = self.events.try_recv() {
            self.take_in(event, &mut failure);
        }
        self.report();
        // One attempt each: `halt` is cancelled.
        self.commit_ready(halt).await;
        failure.map_or(Ok(()), Err)
    }

    /// Records an acknowledgement, or the first failure (telling the sinks to give up).
    fn take_in(&mut self, event: Event, failure: &mut Option<anyhow::Error>) {
        match event {
            Event::Acked {
                partition,
                seq,
                sink,
            } => {
                self.checkpoints.ack(&partition, seq, sink);
            }
            Event::Failed(e) => {
                self.lanes.give_up.cancel();
                failure.get_or_insert(e);
            }
        }
    }

    fn report(&self) {
        metrics::gauge!("tidewater_processor_rounds_in_flight")
            .set(self.checkpoints.in_flight() as f64);
    }
}

/// Commits, retrying a failure (a full disk under the offsets file, the lease table
/// throttling) with backoff until it succeeds or the processor stops: the rounds are
/// delivered, and giving up would take the process down with it; after a stop, they are
/// delivered again, as after a crash. `false` if stopped first.
async fn commit(
    consumer: &mut dyn Consumer,
    partition: &str,
    position: &Position,
    config: &ProcessorConfig,
    stop: &CancellationToken,
) -> bool {
    let mut backoff = Backoff::new(config.retry_initial, config.retry_max);
    loop {
        match consumer.commit(partition, position).await {
            Ok(()) => return true,
            Err(e) => {
                metrics::counter!("tidewater_processor_commit_failures_total").increment(1);
                tracing::warn!(partition, error = %e, "checkpoint failed; retrying");
                if !backoff.wait(stop).await {
                    return false;
                }
            }
        }
    }
}

/// Ticks the sinks every `every` until `halt`.
async fn tick_every(sinks: Arc<[Arc<dyn Sink>]>, every: Duration, halt: CancellationToken) {
    loop {
        tokio::select! {
            _ = halt.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        tick(&sinks, false).await;
    }
}

/// Lets every sink send what it holds that is due; a failure is retried at the next tick.
async fn tick(sinks: &[Arc<dyn Sink>], stopping: bool) {
    for sink in sinks {
        if let Err(e) = sink.tick(stopping).await {
            metrics::counter!("tidewater_processor_sink_failures_total", "sink" => sink.name())
                .increment(1);
            tracing::warn!(sink = sink.name(), error = %e, stopping, "sink tick failed; will retry");
        }
    }
}
