//! Tidewater's benchmarks.
//!
//! - `src/bin/loadgen.rs`: the load generator (and `--null-server`, its calibration target
//!   and the stand-in for the services the processor's sinks call).
//! - `src/bin/bench-runner.rs`: starts the collector pinned to one core, drives the load
//!   generator on the other, times the processor draining a backlog, and writes
//!   `benches/report/`.
//! - `benches/*.rs`: criterion micro-benchmarks of the hot paths and translators.
//!
//! This library holds what they share: the generated workload and the wire details.

pub mod es;
pub mod null_server;
pub mod procfs;
pub mod raw_grpc;
pub mod report;
pub mod requests;
pub mod workload;
