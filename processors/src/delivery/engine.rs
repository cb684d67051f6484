//! The engine: takes a round's items for one sink and returns once each is stored or
//! dead-lettered. It cuts them into calls with the sink's [`Service::calls`], keeps
//! `concurrency` calls in flight, and acts on each answer:
//!
//! | answer | what the engine does |
//! |---|---|
//! | every item stored | done |
//! | per-item verdicts | stored ones done; refused ones dead-lettered; passing refusals sent again together after backoff, each item up to `max_attempts` sends, then dead-lettered |
//! | call retryable (transport, 429, 5xx) | the same call again after backoff (or the service's `Retry-After` if longer), until it succeeds or the processor stops |
//! | call too large | halves sent at once; a single item is dead-lettered |
//! | call refused as invalid | bisected at once until the culprits are alone; those are dead-lettered |
//! | fatal (credentials, permissions) | retried at `retry_max`; the sink is unhealthy at once |
//!
//! A whole call failing never spends the items' budget: an outage holds the round (and, through
//! the checkpoint, the partition) until the service is back, with the data safe on the bus,
//! rather than emptying the bus into the dead-letter file.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use futures::stream::FuturesUnordered;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::backoff::{self, Backoff};
use super::dead_letter::{DeadLetters, Refusal};
use super::health;
use super::service::{Answer, Service, Verdict};
use super::{DeliveryConfig, Stopped};

/// What became of a round's items once nothing is left to retry.
#[derive(Debug)]
pub struct Report<I> {
    pub stored: usize,
    pub already_stored: usize,
    /// Already written to the dead-letter file; handed back for sinks that also keep them
    /// elsewhere (Elasticsearch indexes them).
    pub dead_lettered: Vec<Refusal<I>>,
}

impl<I> Default for Report<I> {
    fn default() -> Self {
        Report {
            stored: 0,
            already_stored: 0,
            dead_lettered: Vec::new(),
        }
    }
}

struct Call<I> {
    items: Vec<I>,
    /// Per item: sends that ended in a per-item retry verdict.
    attempts: Vec<u32>,
    /// Whole-call failures in a row, for the backoff.
    failures: u32,
    delay: Duration,
}

impl<I> Call<I> {
    fn now(items: Vec<I>, attempts: Vec<u32>) -> Self {
        Call {
            items,
            attempts,
            failures: 0,
            delay: Duration::ZERO,
        }
    }

    fn fresh(items: Vec<I>) -> Self {
        let attempts = vec![0; items.len()];
        Call::now(items, attempts)
    }
}

pub struct Engine<S: Service> {
    service: S,
    config: DeliveryConfig,
    dead_letters: DeadLetters,
}

impl<S: Service> Engine<S> {
    pub fn new(service: S, config: DeliveryConfig) -> Self {
        let name = service.name();
        health::register(name, config.unhealthy_after);
        let dead_letters = DeadLetters::new(
            name,
            config.dead_letter_path(name),
            Backoff::new(config.retry_initial, config.retry_max),
        );
        Engine {
            service,
            config,
            dead_letters,
        }
    }

    pub fn service(&self) -> &S {
        &self.service
    }

    pub fn config(&self) -> &DeliveryConfig {
        &self.config
    }

    pub fn dead_letter_path(&self) -> &std::path::Path {
        self.dead_letters.path()
    }

    /// Delivers `items`; `Err` only when stopped first (nothing may then be checkpointed).
    pub async fn deliver(
        &self,
        items: Vec<S::Item>,
        stop: &CancellationToken,
    ) -> Result<Report<S::Item>, Stopped> {
        let name = self.service.name();
        let mut report = Report::default();
        let mut refused = Vec::new();
        let mut sendable = Vec::with_capacity(items.len());
        for item in items {
            match self.service.precheck(&item) {
                Some((code, message)) => refused.push(Refusal {
                    item,
                    code,
                    message,
                }),
                None => sendable.push(item),
            }
        }
        let mut queue: VecDeque<Call<S::Item>> = self
            .service
            .calls(sendable)
            .into_iter()
            .filter(|c| !c.is_empty())
            .map(Call::fresh)
            .collect();
        // A stop ends the waits between attempts and starts no new call, but a call already
        // made is let finish (its time is bounded by the client's timeout): dropping it would
        // not unsend it, and its answer may settle the round, which can then be checkpointed.
        let mut in_flight = FuturesUnordered::new();
        loop {
            while in_flight.len() < self.config.concurrency.max(1) && !stop.is_cancelled() {
                let Some(call) = queue.pop_front() else { break };
                in_flight.push(self.send(call, stop));
            }
            let Some((call, answer)) = in_flight.next().await else {
                break;
            };
            match answer {
                Some(answer) => self.settle(call, answer, &mut queue, &mut report, &mut refused),
                None => queue.push_back(call),
            }
        }
        if !queue.is_empty() {
            return Err(Stopped);
        }
        self.dead_letters
            .write(&refused, |i| self.service.describe(i), stop)
            .await?;
        metrics::counter!("tidewater_sink_items_total", "sink" => name, "outcome" => "stored")
            .increment(report.stored as u64);
        metrics::counter!("tidewater_sink_items_total", "sink" => name, "outcome" => "already_stored")
            .increment(report.already_stored as u64);
        report.dead_lettered = refused;
        Ok(report)
    }

    /// Waits the call's delay, then makes it, timing the service; no answer if stopped before
    /// the call was made.
    async fn send(
        &self,
        call: Call<S::Item>,
        stop: &CancellationToken,
    ) -> (Call<S::Item>, Option<Answer>) {
        if stop.is_cancelled() || !backoff::sleep(call.delay, stop).await {
            return (call, None);
        }
        let started = Instant::now();
        let answer = self.service.call(&call.items).await;
        let name = self.service.name();
        metrics::histogram!("tidewater_sink_call_seconds", "sink" => name)
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("tidewater_sink_calls_total", "sink" => name, "answer" => label(&answer))
            .increment(1);
        (call, Some(answer))
    }

    /// Acts on one answer: counts, queues what is to be sent again, collects refusals.
    fn settle(
        &self,
        call: Call<S::Item>,
        answer: Answer,
        queue: &mut VecDeque<Call<S::Item>>,
        report: &mut Report<S::Item>,
        refused: &mut Vec<Refusal<S::Item>>,
    ) {
        let name = self.service.name();
        let cfg = &self.config;
        match answer {
            Answer::Stored => {
                health::answered(name);
                report.stored += call.items.len();
            }
            Answer::Items(verdicts) if verdicts.len() != call.items.len() => {
                let message = format!(
                    "the service answered {} item results for {} items",
                    verdicts.len(),
                    call.items.len()
                );
                self.again(call, "InvalidAnswer", &message, None, false, queue);
            }
            Answer::Items(verdicts) => {
                health::answered(name);
                let (mut retry, mut attempts) = (Vec::new(), Vec::new());
                for ((item, tried), verdict) in
                    call.items.into_iter().zip(call.attempts).zip(verdicts)
                {
                    match verdict {
                        Verdict::Stored => report.stored += 1,
                        Verdict::AlreadyStored => report.already_stored += 1,
                        Verdict::Refused { code, message } => refused.push(Refusal {
                            item,
                            code,
                            message,
                        }),
                        Verdict::Retry { code, message } => {
                            let tried = tried + 1;
                            if tried >= cfg.max_attempts {
                                refused.push(Refusal {
                                    item,
                                    message: format!(
                                        "still not taken after {tried} attempts: {message}"
                                    ),
                                    code,
                                });
                            } else {
                                metrics::counter!("tidewater_sink_retries_total", "sink" => name, "reason" => code)
                                    .increment(1);
                                retry.push(item);
                                attempts.push(tried);
                            }
                        }
                    }
                }
                if let Some(most) = attempts.iter().max().copied() {
                    let mut again = Call::now(retry, attempts);
                    again.delay = Backoff::delay(cfg.retry_initial, cfg.retry_max, most);
                    queue.push_back(again);
                }
            }
            Answer::Retry {
                code,
                message,
                after,
            } => self.again(call, &code, &message, after, false, queue),
            Answer::Fatal { code, message } => self.again(call, &code, &message, None, true, queue),
            Answer::TooLarge(message) => {
                health::answered(name);
                self.split(call, "TooLarge", message, queue, refused);
            }
            Answer::Refused { code, message } => {
                health::answered(name);
                self.split(call, &code, message, queue, refused);
            }
        }
    }

    /// The whole call again, later: after backoff, the service's `Retry-After` if longer, or
    /// `retry_max` for a fatal error.
    fn again(
        &self,
        mut call: Call<S::Item>,
        code: &str,
        message: &str,
        after: Option<Duration>,
        fatal: bool,
        queue: &mut VecDeque<Call<S::Item>>,
    ) {
        let name = self.service.name();
        let cfg = &self.config;
        health::failed(name, &format!("{code}: {message}"), fatal);
        call.failures += 1;
        call.delay = if fatal {
            backoff::jittered(cfg.retry_max)
        } else {
            let wait = Backoff::delay(cfg.retry_initial, cfg.retry_max, call.failures);
            // A service's Retry-After is its own word on when it can take more; capped so a
            // bogus one cannot stall the sink for hours.
            after.map_or(wait, |a| {
                wait.max(a.min(cfg.retry_max.max(Duration::from_secs(300))))
            })
        };
        metrics::counter!("tidewater_sink_retries_total", "sink" => name, "reason" => code.to_string())
            .increment(call.items.len() as u64);
        if fatal {
            tracing::error!(sink = name, code, reason = message, items = call.items.len(), retry_in = ?call.delay, "the sink's service refuses every call; fix its configuration or permissions");
        } else {
            tracing::warn!(sink = name, code, reason = message, items = call.items.len(), failures = call.failures, retry_in = ?call.delay, "call failed; retrying");
        }
        queue.push_back(call);
    }

    /// Halves a call the service would not take as a whole, to be sent again at once; one
    /// item alone is refused for good.
    fn split(
        &self,
        mut call: Call<S::Item>,
        code: &str,
        message: String,
        queue: &mut VecDeque<Call<S::Item>>,
        refused: &mut Vec<Refusal<S::Item>>,
    ) {
        if call.items.len() == 1 {
            let item = call.items.pop().expect("one item");
            refused.push(Refusal {
                item,
                code: code.to_string(),
                message,
            });
            return;
        }
        tracing::debug!(
            sink = self.service.name(),
            code,
            items = call.items.len(),
            "call refused as a whole; sending it in halves"
        );
        let half = call.items.len() / 2;
        let second = call.items.split_off(half);
        let second_attempts = call.attempts.split_off(half);
        queue.push_front(Call::now(second, second_attempts));
        queue.push_front(Call::now(call.items, call.attempts));
    }
}

fn label(answer: &Answer) -> &'static str {
    match answer {
        Answer::Stored => "stored",
        Answer::Items(_) => "items",
        Answer::Retry { .. } => "retry",
        Answer::TooLarge(_) => "too_large",
        Answer::Refused { .. } => "refused",
        Answer::Fatal { .. } => "fatal",
    }
}
