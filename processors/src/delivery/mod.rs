//! One delivery engine for every sink.
//!
//! A sink is its translation (pure, elsewhere), its call and how it reads the service's
//! answer: that is the [`Service`] it implements. The [`Engine`] owns the rest, once for all
//! of them: cutting items into calls within the service's limits, `concurrency` calls in
//! flight, one backoff with jitter ([`backoff`]), the attempt budget, the dead-letter writer
//! ([`dead_letter`]), the metrics and the sink's health for `/readyz` ([`health`]).
//!
//! Retries happen here and nowhere else: the AWS SDK clients are built with their own retry
//! turned off, and the processor's runtime never calls a sink again for the same round.
//!
//! Metrics, labelled by `sink`:
//! - `tidewater_sink_items_total{outcome}`: `stored`, `already_stored`, `dead_lettered`;
//! - `tidewater_sink_retries_total{reason}`: items sent again, by the service's code;
//! - `tidewater_sink_refusals_total{code}`: items dead-lettered, by the service's code;
//! - `tidewater_sink_calls_total{answer}` and `tidewater_sink_call_seconds` (histogram);
//! - `tidewater_sink_failing`: 1 while the sink's calls fail as a whole.

pub mod config;
pub mod dead_letter;
mod engine;
#[cfg(test)]
pub mod harness;
pub mod health;
pub mod service;
#[cfg(test)]
mod tests;

pub use config::DeliveryConfig;
pub use dead_letter::Refusal;
pub use engine::{Engine, Report};
pub use service::{Answer, Service, Verdict};
/// The one backoff, shared with the bus's own retries.
pub use tidewater_bus::backoff;
pub use tidewater_bus::backoff::Backoff;

/// The processor stopped before the delivery finished: nothing of it may be checkpointed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("stopped before the delivery finished")]
pub struct Stopped;
