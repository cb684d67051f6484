//! Cumulative → delta: CloudWatch adds up what it is sent, so a cumulative counter must be sent
//! as "how much since the last point", per series.
//!
//! Rules, per series (metric name, kind, resource, scope and point attributes):
//! - the first point is a baseline and sends nothing, unless `keep_first_value` (then its whole
//!   value is sent, as if the series started at zero);
//! - a point whose start time is later than the baseline's is a reset (the process restarted):
//!   its whole value is new since the reset, and is sent as it is; so is a point whose value
//!   went down under the same start time (a reset the sender did not date);
//! - a point not newer than the last one, or from an earlier start, is stale (a duplicate or
//!   out-of-order delivery): its increase is already inside the newer point, so nothing is sent;
//! - a histogram whose bucket layout changed starts a new baseline.
//!
//! The tracker is plain data (serde) so the EMF sink persists it with its windows: a restart
//! continues from the last baselines instead of sending whole cumulative values as one spike.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Exponential-histogram buckets: `counts[i]` is bucket index `offset + i`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Buckets {
    pub offset: i32,
    pub counts: Vec<u64>,
}

/// One reading of a series, cumulative or delta. Histogram min/max are not here: they describe
/// the whole life of a cumulative series and cannot be differenced.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Reading {
    Number(f64),
    Histogram {
        count: u64,
        sum: Option<f64>,
        bounds: Vec<f64>,
        counts: Vec<u64>,
    },
    Exponential {
        count: u64,
        sum: Option<f64>,
        scale: i32,
        zero_count: u64,
        positive: Buckets,
        negative: Buckets,
    },
    Summary {
        count: u64,
        sum: f64,
    },
}

/// What became of a cumulative point.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Send this increase. `whole` when it is the point's entire value (first point kept, or a
    /// reset), so point-level min/max still describe it.
    Delta { reading: Reading, whole: bool },
    /// First point of the series: kept as the baseline, nothing sent.
    Baseline,
    /// Not newer than what the series already had: nothing sent.
    Stale,
    /// The bucket layout changed: a new baseline, nothing sent.
    Incompatible,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Baseline {
    start: u64,
    time: u64,
    reading: Reading,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DeltaTracker {
    series: HashMap<u64, Baseline>,
}

impl DeltaTracker {
    pub fn len(&self) -> usize {
        self.series.len()
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Folds the cumulative point `reading` (`start`/`time` in Unix nanoseconds) of series
    /// `key` into the tracker and says what to send.
    pub fn update(
        &mut self,
        key: u64,
        start: u64,
        time: u64,
        reading: Reading,
        keep_first_value: bool,
    ) -> Outcome {
        let Some(prev) = self.series.get_mut(&key) else {
            self.series.insert(
                key,
                Baseline {
                    start,
                    time,
                    reading: reading.clone(),
                },
            );
            return if keep_first_value {
                Outcome::Delta {
                    reading,
                    whole: true,
                }
            } else {
                Outcome::Baseline
            };
        };
        let restarted = start != 0 && prev.start != 0 && start > prev.start;
        if !restarted && (time <= prev.time || (start != 0 && start < prev.start)) {
            return Outcome::Stale;
        }
        let outcome = if restarted {
            Outcome::Delta {
                reading: reading.clone(),
                whole: true,
            }
        } else {
            match subtract(&reading, &prev.reading) {
                Some(Diff::Increase(d)) => Outcome::Delta {
                    reading: d,
                    whole: false,
                },
                Some(Diff::Decrease) => Outcome::Delta {
                    reading: reading.clone(),
                    whole: true,
                },
                None => Outcome::Incompatible,
            }
        };
        *prev = Baseline {
            start,
            time,
            reading,
        };
        outcome
    }

    /// Forgets series whose last point is older than `before` (Unix nanoseconds): a series
    /// that went away must not hold memory forever. Returns how many were dropped.
    pub fn evict_older_than(&mut self, before: u64) -> usize {
        let n = self.series.len();
        self.series.retain(|_, b| b.time >= before);
        n - self.series.len()
    }

    /// Keeps at most `max` series, dropping those seen least recently. Returns how many.
    pub fn evict_to(&mut self, max: usize) -> usize {
        if self.series.len() <= max {
            return 0;
        }
        let mut times: Vec<u64> = self.series.values().map(|b| b.time).collect();
        let excess = self.series.len() - max;
        times.select_nth_unstable(excess - 1);
        let cutoff = times[excess - 1];
        let mut dropped = 0;
        self.series.retain(|_, b| {
            if dropped < excess && b.time <= cutoff {
                dropped += 1;
                false
            } else {
                true
            }
        });
        dropped
    }
}

enum Diff {
    Increase(Reading),
    /// The value went down: the series was reset without a new start time.
    Decrease,
}

/// `now - prev`, or `None` when the two cannot be compared (kind or bucket layout changed).
fn subtract(now: &Reading, prev: &Reading) -> Option<Diff> {
    use Reading::*;
    let decrease = Some(Diff::Decrease);
    match (now, prev) {
        (Number(a), Number(b)) => Some(if a < b {
            Diff::Decrease
        } else {
            Diff::Increase(Number(a - b))
        }),
        (
            Histogram {
                count,
                sum,
                bounds,
                counts,
            },
            Histogram {
                count: pc,
                sum: ps,
                bounds: pb,
                counts: pcs,
            },
        ) => {
            if bounds != pb || counts.len() != pcs.len() {
                return None;
            }
            if count < pc || counts.iter().zip(pcs).any(|(a, b)| a < b) {
                return decrease;
            }
            Some(Diff::Increase(Histogram {
                count: count - pc,
                sum: sum.zip(*ps).map(|(a, b)| a - b),
                bounds: bounds.clone(),
                counts: counts.iter().zip(pcs).map(|(a, b)| a - b).collect(),
            }))
        }
        (
            Exponential {
                count,
                sum,
                scale,
                zero_count,
                positive,
                negative,
            },
            Exponential {
                count: pc,
                sum: ps,
                scale: pscale,
                zero_count: pz,
                positive: pp,
                negative: pn,
            },
        ) => {
            // A scale change (the SDK rescales as its range grows) is compared at the coarser
            // scale, where every bucket of the finer one falls into exactly one coarser bucket.
            let s = (*scale).min(*pscale);
            let (pos, ppos) = (downscale(positive, scale - s), downscale(pp, pscale - s));
            let (neg, pneg) = (downscale(negative, scale - s), downscale(pn, pscale - s));
            if count < pc || zero_count < pz {
                return decrease;
            }
            let (Some(dpos), Some(dneg)) = (bucket_diff(&pos, &ppos), bucket_diff(&neg, &pneg))
            else {
                return decrease;
            };
            Some(Diff::Increase(Exponential {
                count: count - pc,
                sum: sum.zip(*ps).map(|(a, b)| a - b),
                scale: s,
                zero_count: zero_count - pz,
                positive: dpos,
                negative: dneg,
            }))
        }
        (Summary { count, sum }, Summary { count: pc, sum: ps }) => Some(if count < pc {
            Diff::Decrease
        } else {
            Diff::Increase(Summary {
                count: count - pc,
                sum: sum - ps,
            })
        }),
        _ => None,
    }
}

/// The same counts at a scale `by` steps coarser: bucket `i` moves to `i >> by`.
pub fn downscale(b: &Buckets, by: i32) -> Buckets {
    if by <= 0 || b.counts.is_empty() {
        return b.clone();
    }
    let by = by.min(62) as u32;
    let first = (b.offset as i64) >> by;
    let last = (b.offset as i64 + b.counts.len() as i64 - 1) >> by;
    let mut counts = vec![0u64; (last - first + 1) as usize];
    for (i, c) in b.counts.iter().enumerate() {
        let idx = ((b.offset as i64 + i as i64) >> by) - first;
        counts[idx as usize] += c;
    }
    Buckets {
        offset: first as i32,
        counts,
    }
}

/// `now - prev` bucket by bucket; `None` if any bucket went down.
fn bucket_diff(now: &Buckets, prev: &Buckets) -> Option<Buckets> {
    let get = |b: &Buckets, i: i64| -> u64 {
        let j = i - b.offset as i64;
        if j >= 0 && (j as usize) < b.counts.len() {
            b.counts[j as usize]
        } else {
            0
        }
    };
    let lo = (now.offset as i64).min(prev.offset as i64);
    let hi = (now.offset as i64 + now.counts.len() as i64)
        .max(prev.offset as i64 + prev.counts.len() as i64);
    let mut counts = Vec::with_capacity((hi - lo).max(0) as usize);
    for i in lo..hi {
        counts.push(get(now, i).checked_sub(get(prev, i))?);
    }
    Some(Buckets {
        offset: lo as i32,
        counts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000;

    fn n(v: f64) -> Reading {
        Reading::Number(v)
    }

    fn delta(v: f64) -> Outcome {
        Outcome::Delta {
            reading: n(v),
            whole: false,
        }
    }

    fn whole(v: f64) -> Outcome {
        Outcome::Delta {
            reading: n(v),
            whole: true,
        }
    }

    #[test]
    fn first_point_is_a_baseline_then_increases_are_sent() {
        let mut t = DeltaTracker::default();
        assert_eq!(t.update(1, S, 10, n(5.0), false), Outcome::Baseline);
        assert_eq!(t.update(1, S, 20, n(8.0), false), delta(3.0));
        assert_eq!(t.update(1, S, 30, n(8.0), false), delta(0.0));
        // Another series is independent.
        assert_eq!(t.update(2, S, 30, n(1.0), false), Outcome::Baseline);
    }

    #[test]
    fn keep_first_value_sends_the_first_point_whole() {
        let mut t = DeltaTracker::default();
        assert_eq!(t.update(1, S, 10, n(5.0), true), whole(5.0));
        assert_eq!(t.update(1, S, 20, n(7.0), true), delta(2.0));
    }

    #[test]
    fn a_later_start_time_is_a_reset_and_sends_the_new_value() {
        let mut t = DeltaTracker::default();
        t.update(1, S, 10, n(100.0), false);
        // The process restarted at 2S and has counted 4 since: exactly 4 are new.
        assert_eq!(t.update(1, 2 * S, 20, n(4.0), false), whole(4.0));
        assert_eq!(t.update(1, 2 * S, 30, n(6.0), false), delta(2.0));
    }

    #[test]
    fn a_drop_without_a_new_start_time_is_a_reset_too() {
        let mut t = DeltaTracker::default();
        t.update(1, 0, 10, n(100.0), false);
        assert_eq!(t.update(1, 0, 20, n(3.0), false), whole(3.0));
    }

    #[test]
    fn out_of_order_and_duplicate_points_send_nothing() {
        let mut t = DeltaTracker::default();
        t.update(1, S, 10, n(1.0), false);
        assert_eq!(t.update(1, S, 30, n(9.0), false), delta(8.0));
        // An older point (its increase is inside the one just sent) and a redelivery.
        assert_eq!(t.update(1, S, 20, n(5.0), false), Outcome::Stale);
        assert_eq!(t.update(1, S, 30, n(9.0), false), Outcome::Stale);
        // A point from the previous incarnation arriving after a reset.
        assert_eq!(t.update(1, 2 * S, 40, n(1.0), false), whole(1.0));
        assert_eq!(t.update(1, S, 50, n(12.0), false), Outcome::Stale);
        assert_eq!(t.update(1, 2 * S, 60, n(4.0), false), delta(3.0));
    }

    fn hist(count: u64, sum: f64, counts: Vec<u64>) -> Reading {
        Reading::Histogram {
            count,
            sum: Some(sum),
            bounds: vec![10.0, 20.0],
            counts,
        }
    }

    #[test]
    fn histograms_difference_bucket_by_bucket() {
        let mut t = DeltaTracker::default();
        t.update(1, S, 10, hist(3, 30.0, vec![1, 2, 0]), false);
        assert_eq!(
            t.update(1, S, 20, hist(7, 100.0, vec![1, 4, 2]), false),
            Outcome::Delta {
                reading: hist(4, 70.0, vec![0, 2, 2]),
                whole: false
            }
        );
        // A new bucket layout cannot be compared: new baseline.
        let other = Reading::Histogram {
            count: 9,
            sum: Some(1.0),
            bounds: vec![5.0],
            counts: vec![4, 5],
        };
        assert_eq!(t.update(1, S, 30, other, false), Outcome::Incompatible);
    }

    #[test]
    fn exponential_histograms_compare_at_the_coarser_scale() {
        let mut t = DeltaTracker::default();
        let at = |scale, offset, counts: Vec<u64>, count| Reading::Exponential {
            count,
            sum: Some(0.0),
            scale,
            zero_count: 1,
            positive: Buckets { offset, counts },
            negative: Buckets::default(),
        };
        // scale 1: buckets 2,3 → scale 0: bucket 1 (2>>1 = 3>>1 = 1).
        t.update(1, S, 10, at(1, 2, vec![1, 1], 3), false);
        let out = t.update(1, S, 20, at(0, 1, vec![5, 1], 7), false);
        assert_eq!(
            out,
            Outcome::Delta {
                reading: Reading::Exponential {
                    count: 4,
                    sum: Some(0.0),
                    scale: 0,
                    zero_count: 0,
                    positive: Buckets {
                        offset: 1,
                        counts: vec![3, 1]
                    },
                    negative: Buckets::default(),
                },
                whole: false
            }
        );
    }

    #[test]
    fn downscale_merges_negative_indexes_correctly() {
        let b = Buckets {
            offset: -3,
            counts: vec![1, 1, 1, 1],
        }; // -3,-2,-1,0 → -2,-1,-1,0
        assert_eq!(
            downscale(&b, 1),
            Buckets {
                offset: -2,
                counts: vec![1, 2, 1]
            }
        );
    }

    #[test]
    fn eviction_keeps_recent_series() {
        let mut t = DeltaTracker::default();
        for k in 0..10 {
            t.update(k, S, 100 + k, n(1.0), false);
        }
        assert_eq!(t.evict_to(4), 6);
        assert_eq!(t.len(), 4);
        assert_eq!(t.update(9, S, 200, n(2.0), false), delta(1.0));
        assert_eq!(t.evict_older_than(150), 3);
        assert_eq!(t.len(), 1);
    }
}
