//! The processors: consume the bus, transform, deliver to sinks, checkpoint.
//!
//! Data path: [`runtime::Processor`] polls a [`tidewater_bus::Consumer`], [`decode`]s each
//! record, hands the batches to every [`sink::Sink`] that wants them, and commits the
//! checkpoint once all of them acknowledged.

pub mod anyvalue;
pub mod config;
pub mod decode;
pub mod delivery;
pub mod documents;
pub mod emf;
#[cfg(test)]
mod fuzz;
pub mod ndjson;
pub mod runtime;
pub mod sink;
pub mod sinks;

pub use config::{ProcessorConfig, SinksConfig};
pub mod xray;
