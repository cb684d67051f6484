//! Tidewater collector.
