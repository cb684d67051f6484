//! Waiting between attempts: jittered backoff, and an adaptive pause per shard so a shard that
//! throttles is not hammered while the others go on at full speed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::backoff::jittered;
use tokio::time::Instant;

/// Adaptive per-shard pacing: a shard that throttles gets a pause that doubles while it keeps
/// throttling and halves with each success, so a hot shard is not hammered while the others
/// go on at full speed.
pub(super) struct ShardThrottle {
    min: Duration,
    max: Duration,
    shards: Mutex<HashMap<String, (Duration, Instant)>>,
}

impl ShardThrottle {
    pub(super) fn new(min: Duration, max: Duration) -> Self {
        ShardThrottle {
            min,
            max,
            shards: Mutex::new(HashMap::new()),
        }
    }

    pub(super) fn penalize(&self, shard: &str) {
        let mut shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        let entry = shards
            .entry(shard.to_string())
            .or_insert((Duration::ZERO, Instant::now()));
        entry.0 = (entry.0 * 2).clamp(self.min, self.max);
        entry.1 = Instant::now() + jittered(entry.0);
        metrics::gauge!("tidewater_kinesis_shard_pause_seconds", "shard" => shard.to_string())
            .set(entry.0.as_secs_f64());
    }

    pub(super) fn relax(&self, shard: &str) {
        let mut shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(entry) = shards.get_mut(shard) {
            entry.0 /= 2;
            if entry.0 < self.min {
                shards.remove(shard);
                metrics::gauge!("tidewater_kinesis_shard_pause_seconds", "shard" => shard.to_string()).set(0.0);
            }
        }
    }

    fn paused_until(&self, shard: Option<String>) -> Option<Instant> {
        let shards = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        let until = shards.get(&shard?)?.1;
        (until > Instant::now()).then_some(until)
    }

    /// (records that may go now, records whose shard is paused).
    pub(super) fn split(
        &self,
        todo: &[usize],
        shard_of: impl Fn(usize) -> Option<String>,
    ) -> (Vec<usize>, Vec<usize>) {
        todo.iter()
            .partition(|&&i| self.paused_until(shard_of(i)).is_none())
    }

    /// When the first paused shard among `todo` may be sent to again.
    pub(super) fn earliest(
        &self,
        todo: &[usize],
        shard_of: impl Fn(usize) -> Option<String>,
    ) -> Instant {
        todo.iter()
            .filter_map(|&i| self.paused_until(shard_of(i)))
            .min()
            .unwrap_or_else(Instant::now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_pauses_a_hot_shard_and_recovers() {
        let t = ShardThrottle::new(Duration::from_millis(100), Duration::from_secs(5));
        let shard = |i: usize| {
            Some(if i == 0 {
                "hot".to_string()
            } else {
                "cold".to_string()
            })
        };
        t.penalize("hot");
        let (ready, waiting) = t.split(&[0, 1], shard);
        assert_eq!((ready, waiting), (vec![1], vec![0]));
        assert!(t.earliest(&[0], shard) > Instant::now());
        for _ in 0..10 {
            t.penalize("hot");
        }
        assert_eq!(
            t.shards.lock().unwrap()["hot"].0,
            Duration::from_secs(5),
            "capped"
        );
        for _ in 0..7 {
            t.relax("hot");
        }
        assert!(
            t.shards.lock().unwrap().get("hot").is_none(),
            "forgotten once calm"
        );
        assert_eq!(t.split(&[0, 1], shard).1, Vec::<usize>::new());
    }
}
