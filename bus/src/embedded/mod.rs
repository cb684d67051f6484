//! The embedded on-disk log. (Being written: see the interface in `lib.rs`.)
