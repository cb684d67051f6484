//! The processor's one memory bound, `processor.memory_limit`: the bytes it holds for records
//! in flight, from the poll that read them until every sink acknowledged their round.
//!
//! Draining a backlog used to take as much memory as the bus could hand over. Now polling
//! waits while the bound is reached, and a slow sink makes the processor slow, not large.
//!
//! Not a `tokio::sync::Semaphore` over bytes, because memory is taken in two steps a semaphore
//! cannot express. What a poll returned is already in memory, so it is counted as it is
//! ([`Budget::take`]); the poll was sized to the room, and returns one record beyond it only
//! when that record is alone. A round's decoded size is reserved before decoding
//! ([`Budget::reserve`]), waiting for room, except when nothing else is in flight: no release
//! would ever come, so that round goes through alone, over the limit. A watch channel of the
//! count gives both, and wakes waiters on every release.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::watch;

pub(crate) struct Budget {
    limit: u64,
    held: watch::Sender<u64>,
    /// The most held at once: what the tests check the bound against.
    peak: AtomicU64,
}

/// Bytes counted against a [`Budget`], given back when dropped, so a round's memory is
/// released however it ends: acknowledged by every sink, closed by a stop, or dropped with a
/// task that failed.
pub(crate) struct Held {
    budget: Arc<Budget>,
    bytes: u64,
}

impl Budget {
    pub(crate) fn new(limit: u64) -> Arc<Budget> {
        metrics::gauge!("tidewater_processor_memory_limit_bytes").set(limit as f64);
        metrics::gauge!("tidewater_processor_memory_bytes").set(0.0);
        Arc::new(Budget {
            limit,
            held: watch::channel(0).0,
            peak: AtomicU64::new(0),
        })
    }

    #[cfg(test)]
    pub(crate) fn held(&self) -> u64 {
        *self.held.borrow()
    }

    #[cfg(test)]
    pub(crate) fn peak(&self) -> u64 {
        self.peak.load(Ordering::Relaxed)
    }

    /// Waits until at least `wanted` bytes are free (all of them when `wanted` is over the
    /// limit, and at least one byte), and returns how many are.
    pub(crate) async fn room(&self, wanted: u64) -> u64 {
        let wanted = wanted.clamp(1, self.limit.max(1));
        let limit = self.limit;
        let held = self
            .wait_for(|held| held.saturating_add(wanted) <= limit)
            .await;
        limit - held
    }

    /// Counts `bytes` that are already in memory, room or not.
    pub(crate) fn take(self: &Arc<Self>, bytes: u64) -> Held {
        self.held.send_modify(|held| *held += bytes);
        self.report();
        Held {
            budget: Arc::clone(self),
            bytes,
        }
    }

    /// Waits until `bytes` more fit under the limit, or until everything held is `own` (the
    /// caller's, nothing in flight): then nothing would ever be released, and the caller goes
    /// through alone.
    pub(crate) async fn reserve(self: &Arc<Self>, bytes: u64, own: u64) -> Held {
        let limit = self.limit;
        let mut rx = self.held.subscribe();
        let mut waited = false;
        loop {
            rx.borrow_and_update();
            let taken = self.held.send_if_modified(|held| {
                let fits = held.saturating_add(bytes) <= limit || *held <= own;
                if fits {
                    *held += bytes;
                }
                fits
            });
            if taken {
                self.report();
                return Held {
                    budget: Arc::clone(self),
                    bytes,
                };
            }
            if !waited {
                waited = true;
                metrics::counter!("tidewater_processor_memory_waits_total").increment(1);
            }
            // The sender lives in `self`: this ends only with a change.
            let _ = rx.changed().await;
        }
    }

    /// Waits until `ready` holds for the bytes held, counting the wait; returns them.
    async fn wait_for(&self, ready: impl Fn(u64) -> bool) -> u64 {
        let mut rx = self.held.subscribe();
        let mut waited = false;
        loop {
            let held = *rx.borrow_and_update();
            if ready(held) {
                return held;
            }
            if !waited {
                waited = true;
                metrics::counter!("tidewater_processor_memory_waits_total").increment(1);
            }
            let _ = rx.changed().await;
        }
    }

    fn release(&self, bytes: u64) {
        self.held.send_modify(|held| *held -= bytes);
        self.report();
    }

    fn report(&self) {
        let held = *self.held.borrow();
        self.peak.fetch_max(held, Ordering::Relaxed);
        metrics::gauge!("tidewater_processor_memory_bytes").set(held as f64);
    }
}

impl Held {
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Adds `other`'s bytes to these, to be given back together.
    pub(crate) fn merge(&mut self, mut other: Held) {
        self.bytes += std::mem::take(&mut other.bytes);
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if self.bytes > 0 {
            self.budget.release(self.bytes);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn pending<T>(f: impl std::future::Future<Output = T>) -> bool {
        tokio::time::timeout(Duration::from_millis(50), f)
            .await
            .is_err()
    }

    #[tokio::test]
    async fn reserve_waits_for_room_and_release_gives_it() {
        let budget = Budget::new(100);
        let first = budget.reserve(60, 0).await;
        assert_eq!(budget.held(), 60);
        assert!(pending(budget.reserve(50, 0)).await, "60 + 50 is over 100");
        let waiter = tokio::spawn({
            let budget = Arc::clone(&budget);
            async move { budget.reserve(50, 0).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(first);
        let second = waiter.await.unwrap();
        assert_eq!((budget.held(), second.bytes()), (50, 50));
        drop(second);
        assert_eq!(budget.held(), 0);
        assert_eq!(budget.peak(), 60);
    }

    #[tokio::test]
    async fn a_round_larger_than_the_limit_goes_through_alone() {
        let budget = Budget::new(100);
        // What its poll returned is held already, and is all that is held.
        let mut own = budget.take(30);
        let decoded = budget.reserve(500, 30).await;
        own.merge(decoded);
        assert_eq!(budget.held(), 530);
        // While it is in flight, another waits.
        let other = budget.take(10);
        assert!(pending(budget.reserve(20, 10)).await);
        drop(own);
        assert_eq!(budget.reserve(20, 10).await.bytes(), 20);
        drop(other);
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn room_waits_until_enough_is_free() {
        let budget = Budget::new(100);
        assert_eq!(budget.room(40).await, 100);
        let held = budget.take(80);
        assert!(pending(budget.room(40)).await);
        assert_eq!(budget.room(20).await, 20);
        // More than the limit asks for all of it.
        assert!(pending(budget.room(1000)).await);
        drop(held);
        assert_eq!(budget.room(1000).await, 100);
    }
}
