//! The one wait between attempts in Tidewater: capped exponential, with jitter, cut short by a
//! stop. The bus's own retries (Kinesis puts, reads, the spool) and the processors' delivery
//! engine, checkpoints and state writes all wait here, so "how long until the next try" has
//! one answer. It lives in the bus crate because that is the lowest crate every retrying part
//! depends on.

use std::time::Duration;

use rand::Rng;
use tokio_util::sync::CancellationToken;

/// Doubling from `initial` to `max`; each wait is jittered.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.min(max);
        Backoff {
            initial,
            max,
            next: initial,
        }
    }

    /// The wait before retry number `retry` (1 for the first retry), without the state of a
    /// running `Backoff`: calls retried independently each keep their own count.
    pub fn delay(initial: Duration, max: Duration, retry: u32) -> Duration {
        let doublings = retry.saturating_sub(1).min(31);
        jittered(initial.saturating_mul(1 << doublings).min(max))
    }

    /// Waits the next interval; `false` if stopped first.
    pub async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let wait = jittered(self.next);
        self.next = (self.next * 2).min(self.max);
        sleep(wait, stop).await
    }

    /// Starts over from `initial` (after a success).
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// Sleeps `wait`; `false` if stopped first.
pub async fn sleep(wait: Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(wait) => true,
        _ = stop.cancelled() => false,
    }
}

/// Equal jitter: between half and all of `max`, so processors retrying together spread out
/// while each still waits at least half of what the backoff asked.
pub fn jittered(max: Duration) -> Duration {
    let nanos = max.as_nanos().min(u64::MAX as u128) as u64;
    Duration::from_nanos(rand::rng().random_range(nanos / 2..=nanos.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_up_to_the_cap_and_stay_within_the_jitter() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(1));
        for (retry, full) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (40, 1000),
        ] {
            let d = Backoff::delay(initial, max, retry);
            let full = Duration::from_millis(full);
            assert!(d >= full / 2 && d <= full, "retry {retry}: {d:?}");
        }
    }

    #[tokio::test]
    async fn a_stop_cuts_the_wait_short() {
        let stop = CancellationToken::new();
        stop.cancel();
        let mut b = Backoff::new(Duration::from_secs(60), Duration::from_secs(60));
        assert!(!b.wait(&stop).await);
    }
}
