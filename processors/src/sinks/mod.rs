//! Destinations. Each sink owns its config, its translation (pure, elsewhere) and its I/O.

pub mod elasticsearch;
pub mod file;
pub mod xray;
