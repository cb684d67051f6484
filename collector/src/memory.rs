//! One memory bound for everything the collector holds on its clients' behalf: request bodies
//! while they are read, decompressed and parsed, and their parts until the bus has them.
//!
//! Counting only batched parts let 256 concurrent uploads take a sidecar with a 64 MiB limit to
//! 291 MiB before a single byte was batched. Here a request takes its share before its body is
//! read (its declared length, or frame by frame as it streams in), grows it while decompressing
//! and parsing, and hands it to the pipeline, which resizes it to the parts it keeps: the bytes
//! counted follow the bytes held, and a request that does not fit is refused with the
//! protocol's retryable signal before it costs anything.
//!
//! The allocator keeps what a burst freed: a collector that took 400 MiB for a moment stayed
//! there. Once everything counted is given back after at least [`TRIM_AFTER`] was held, the
//! C allocator is asked to return its free memory to the system.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::IngestError;

/// `collector.memory_limit`, shared by the receivers and the pipeline.
pub struct Memory {
    semaphore: Arc<Semaphore>,
    limit: usize,
    retry_after: Duration,
    /// The most held since memory was last handed back.
    peak: AtomicUsize,
}

/// A burst this large is worth a `malloc_trim` once it is over (a trim walks the heap, so
/// not after every small request).
pub const TRIM_AFTER: usize = 16 * 1024 * 1024;

/// Bytes counted against the bound; given back when dropped (which updates the gauge, and
/// hands memory back to the system when a burst is over, whichever request ends it).
pub struct Held {
    permit: Option<OwnedSemaphorePermit>,
    memory: Option<Arc<Memory>>,
}

impl Memory {
    pub fn new(limit: u64, retry_after: Duration) -> Arc<Self> {
        // Permits are taken as a u32 at a time.
        let limit = usize::try_from(limit)
            .unwrap_or(usize::MAX)
            .min(u32::MAX as usize);
        metrics::gauge!("tidewater_collector_memory_limit_bytes").set(limit as f64);
        Arc::new(Memory {
            semaphore: Arc::new(Semaphore::new(limit)),
            limit,
            retry_after,
            peak: AtomicUsize::new(0),
        })
    }

    /// Bytes counted now.
    pub fn held(&self) -> usize {
        self.limit - self.semaphore.available_permits()
    }

    /// `bytes` more, at once or not at all: [`IngestError::Busy`] when the bound is reached now,
    /// [`IngestError::TooLarge`] when `bytes` could never fit.
    pub fn take(self: &Arc<Self>, bytes: usize, what: &'static str) -> Result<Held, IngestError> {
        let mut held = Held::none();
        self.grow(&mut held, bytes, what)?;
        Ok(held)
    }

    /// Adds `bytes` to `held`, with [`Memory::take`]'s errors (`held` is unchanged then).
    pub fn grow(
        self: &Arc<Self>,
        held: &mut Held,
        bytes: usize,
        what: &'static str,
    ) -> Result<(), IngestError> {
        if bytes == 0 {
            return Ok(());
        }
        if held.bytes().saturating_add(bytes) > self.limit {
            return Err(IngestError::TooLarge(format!(
                "request needs more than the collector's memory_limit of {} bytes",
                self.limit
            )));
        }
        let more = u32::try_from(bytes)
            .ok()
            .and_then(|n| self.semaphore.clone().try_acquire_many_owned(n).ok())
            .ok_or_else(|| {
                metrics::counter!("tidewater_collector_memory_refusals_total", "at" => what)
                    .increment(1);
                IngestError::Busy {
                    limit: self.limit,
                    retry_after: self.retry_after,
                }
            })?;
        match &mut held.permit {
            Some(permit) => permit.merge(more),
            None => held.permit = Some(more),
        }
        held.memory.get_or_insert_with(|| self.clone());
        self.report();
        Ok(())
    }

    /// Makes `held` exactly `bytes`: grows it (which may fail as [`Memory::grow`]) or gives the
    /// surplus back.
    pub fn resize(
        self: &Arc<Self>,
        held: &mut Held,
        bytes: usize,
        what: &'static str,
    ) -> Result<(), IngestError> {
        let now = held.bytes();
        if bytes > now {
            return self.grow(held, bytes - now, what);
        }
        // Given back (and reported) as the split-off part drops.
        drop(held.split(now - bytes));
        Ok(())
    }

    /// Sets `tidewater_collector_buffered_bytes`, and hands memory back once a burst is over.
    /// Called whenever what is held changes (a [`Held`] calls it as it drops).
    pub fn report(&self) {
        let held = self.held();
        metrics::gauge!("tidewater_collector_buffered_bytes").set(held as f64);
        self.peak.fetch_max(held, Ordering::Relaxed);
        if held == 0 && self.peak.swap(0, Ordering::Relaxed) >= TRIM_AFTER {
            hand_back_free_memory();
        }
    }
}

/// glibc's malloc keeps freed memory in its arenas; `malloc_trim` returns it. Off the async
/// workers, since it walks the heap.
fn hand_back_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let trim = || {
            // SAFETY: malloc_trim only releases free pages; it has no preconditions.
            unsafe { libc::malloc_trim(0) };
            metrics::counter!("tidewater_collector_memory_trims_total").increment(1);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(trim)),
            Err(_) => trim(),
        }
    }
}

impl Held {
    /// Nothing held yet; grown later (a UDP datagram is counted by the pipeline).
    pub fn none() -> Held {
        Held {
            permit: None,
            memory: None,
        }
    }

    pub fn bytes(&self) -> usize {
        self.permit.as_ref().map_or(0, |p| p.num_permits())
    }

    /// Moves `bytes` of this into a new `Held` (at most what this holds).
    pub fn split(&mut self, bytes: usize) -> Held {
        let bytes = bytes.min(self.bytes());
        Held {
            permit: self.permit.as_mut().and_then(|p| p.split(bytes)),
            memory: self.memory.clone(),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            drop(permit);
            if let Some(memory) = &self.memory {
                memory.report();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_is_held_and_refuses_past_the_limit() {
        let memory = Memory::new(100, Duration::from_secs(1));
        let mut a = memory.take(60, "test").unwrap();
        assert!(matches!(
            memory.take(50, "test"),
            Err(IngestError::Busy { .. })
        ));
        assert!(matches!(
            memory.take(101, "test"),
            Err(IngestError::TooLarge(_))
        ));
        memory.resize(&mut a, 20, "test").unwrap();
        assert_eq!(memory.held(), 20);
        let b = memory.take(80, "test").unwrap();
        let part = a.split(5);
        assert_eq!((a.bytes(), part.bytes(), memory.held()), (15, 5, 100));
        drop((a, b));
        assert_eq!(memory.held(), 5);
        drop(part);
        assert_eq!(memory.held(), 0);
        assert_eq!(memory.take(0, "test").unwrap().bytes(), 0);
    }
}
