//! Tidewater processors.
