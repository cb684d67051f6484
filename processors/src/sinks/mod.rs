//! Destinations. Each sink owns its config, its translation (pure, elsewhere) and its I/O.

pub mod aws_sdk;
pub mod cloudwatch_logs;
pub mod elasticsearch;
pub mod emf;
pub mod file;
pub mod otlp;
pub mod sigv4;
pub mod xray;
