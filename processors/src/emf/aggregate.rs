//! Per-window, per-dimension-set aggregation: everything one window saw for one set of
//! dimension values, ready to become EMF documents.
//!
//! A counter's increases add up to one number. Everything else (gauges, non-monotonic sums,
//! histograms, exponential histograms, summaries, span latencies) is a distribution of values
//! with their counts, which is what EMF's `Values`/`Counts` carry: CloudWatch computes sums,
//! averages and percentiles from it, and the counts stay exact.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::delta::Buckets;

/// An `f64` as an `i64` with the same order (negative values flip their magnitude bits), so
/// distinct values can key a sorted map.
fn ordered(v: f64) -> i64 {
    let bits = v.to_bits() as i64;
    if bits < 0 {
        bits ^ i64::MAX
    } else {
        bits
    }
}

fn unordered(k: i64) -> f64 {
    let bits = if k < 0 { k ^ i64::MAX } else { k };
    f64::from_bits(bits as u64)
}

/// Values with how often each was seen, plus the exact count, sum, min and max.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Distribution {
    values: BTreeMap<i64, u64>,
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

impl Distribution {
    pub fn empty() -> Self {
        Distribution {
            values: BTreeMap::new(),
            count: 0,
            sum: 0.0,
            min: f64::MAX,
            max: f64::MIN,
        }
    }

    pub fn single(v: f64) -> Self {
        let mut d = Self::empty();
        d.record(v, 1);
        d.sum = v;
        d
    }

    /// Adds `count` observations of `v` to the values (not to `sum`: callers that know the
    /// exact sum set it; see [`Distribution::finish`]).
    fn record(&mut self, v: f64, count: u64) {
        if count == 0 || !v.is_finite() {
            return;
        }
        *self.values.entry(ordered(v)).or_default() += count;
        self.count += count;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    /// Sets the sum (exact when the source has one, else estimated from the values) and
    /// narrows min/max to what the source reported.
    fn finish(mut self, sum: Option<f64>, min: Option<f64>, max: Option<f64>) -> Self {
        self.sum = sum
            .filter(|s| s.is_finite())
            .unwrap_or_else(|| self.values().map(|(v, c)| v * c as f64).sum());
        if let Some(m) = min.filter(|m| m.is_finite()) {
            self.min = m;
        }
        if let Some(m) = max.filter(|m| m.is_finite()) {
            self.max = m;
        }
        self
    }

    /// An explicit-bucket histogram: each non-empty bucket becomes one value, the middle of
    /// its bounds (the open-ended outer buckets use the reported min/max when known, else
    /// their one finite bound), kept inside the reported min/max.
    pub fn from_histogram(
        bounds: &[f64],
        counts: &[u64],
        sum: Option<f64>,
        min: Option<f64>,
        max: Option<f64>,
    ) -> Self {
        let mut d = Self::empty();
        let last = bounds.len();
        for (i, &c) in counts.iter().enumerate().take(last + 1) {
            if c == 0 {
                continue;
            }
            let mut v = if bounds.is_empty() {
                match (min, max, sum) {
                    (Some(lo), Some(hi), _) => (lo + hi) / 2.0,
                    (_, _, Some(s)) => s / c as f64,
                    _ => 0.0,
                }
            } else if i == 0 {
                min.map(|m| (m.min(bounds[0]) + bounds[0]) / 2.0)
                    .unwrap_or(bounds[0])
            } else if i == last {
                max.map(|m| (bounds[last - 1] + m.max(bounds[last - 1])) / 2.0)
                    .unwrap_or(bounds[last - 1])
            } else {
                (bounds[i - 1] + bounds[i]) / 2.0
            };
            if let Some(m) = min {
                v = v.max(m);
            }
            if let Some(m) = max {
                v = v.min(m);
            }
            d.record(v, c);
        }
        d.finish(sum, min, max)
    }

    /// An exponential histogram: bucket `i` at `scale` covers `(base^i, base^(i+1)]` with
    /// `base = 2^(2^-scale)`; each non-empty bucket becomes its middle, zeros become 0.
    pub fn from_exponential(
        scale: i32,
        zero_count: u64,
        positive: &Buckets,
        negative: &Buckets,
        sum: Option<f64>,
        min: Option<f64>,
        max: Option<f64>,
    ) -> Self {
        let mut d = Self::empty();
        let base = 2f64.powf(2f64.powi(-scale));
        let mid = |i: i64| (base.powf(i as f64) + base.powf(i as f64 + 1.0)) / 2.0;
        let clamp = |v: f64| {
            let v = min.map_or(v, |m| v.max(m));
            max.map_or(v, |m| v.min(m))
        };
        for (j, &c) in negative.counts.iter().enumerate() {
            d.record(clamp(-mid(negative.offset as i64 + j as i64)), c);
        }
        d.record(0.0, zero_count);
        for (j, &c) in positive.counts.iter().enumerate() {
            d.record(clamp(mid(positive.offset as i64 + j as i64)), c);
        }
        d.finish(sum, min, max)
    }

    /// A summary carries no values, only count and sum (and min/max when it has the 0 and 1
    /// quantiles): it is sent as a statistic set.
    pub fn from_summary(count: u64, sum: f64, min: Option<f64>, max: Option<f64>) -> Self {
        let mean = if count > 0 { sum / count as f64 } else { 0.0 };
        Distribution {
            values: BTreeMap::new(),
            count,
            sum,
            min: min.unwrap_or(mean),
            max: max.unwrap_or(mean),
        }
    }

    pub fn merge(&mut self, other: &Distribution) {
        for (k, c) in &other.values {
            *self.values.entry(*k).or_default() += c;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    /// Distinct values in increasing order, with their counts.
    pub fn values(&self) -> impl Iterator<Item = (f64, u64)> + '_ {
        self.values.iter().map(|(k, c)| (unordered(*k), *c))
    }

    pub fn distinct(&self) -> usize {
        self.values.len()
    }
}

/// What one metric accumulated in one window for one set of dimension values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Aggregate {
    /// Counter increases, added up.
    Sum(f64),
    Distribution(Distribution),
}

impl Aggregate {
    pub fn merge(&mut self, other: Aggregate) {
        match (self, other) {
            (Aggregate::Sum(a), Aggregate::Sum(b)) => *a += b,
            (Aggregate::Distribution(a), Aggregate::Distribution(b)) => a.merge(&b),
            // One name used as both a counter and something else: keep every observation
            // by treating the counter's increase as one more value.
            (Aggregate::Distribution(a), Aggregate::Sum(b)) => a.merge(&Distribution::single(b)),
            (this @ Aggregate::Sum(_), Aggregate::Distribution(mut b)) => {
                if let Aggregate::Sum(a) = this {
                    b.merge(&Distribution::single(*a));
                }
                *this = Aggregate::Distribution(b);
            }
        }
    }
}

/// Identifies one document group: the window, where it goes, and the dimension values and
/// dimension sets its metrics share.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupKey {
    /// Start of the window, Unix milliseconds: the documents' timestamp.
    pub window_ms: i64,
    pub namespace: String,
    pub log_stream: String,
    /// Dimension name → value, sorted by name.
    pub dims: Vec<(String, String)>,
    /// Dimension sets, each a list of names from `dims`.
    pub sets: Vec<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MetricAgg {
    /// CloudWatch unit name, or empty for none.
    pub unit: String,
    pub value: Aggregate,
}

/// The metrics of one group, by name.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Group {
    pub metrics: BTreeMap<String, MetricAgg>,
}

/// Every open window's groups.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Windows {
    #[serde(with = "pairs")]
    groups: BTreeMap<GroupKey, Group>,
}

impl Windows {
    pub fn add(&mut self, key: GroupKey, metric: &str, unit: &str, value: Aggregate) {
        let group = self.groups.entry(key).or_default();
        match group.metrics.get_mut(metric) {
            Some(m) => m.value.merge(value),
            None => {
                group.metrics.insert(
                    metric.to_string(),
                    MetricAgg {
                        unit: unit.to_string(),
                        value,
                    },
                );
            }
        }
    }

    /// Groups whose window ended at least `grace_ms` before `now_ms` (all of them when
    /// `all`), removed. Hand them back with [`Windows::restore`] if they cannot be sent.
    pub fn take_due(
        &mut self,
        now_ms: i64,
        window_ms: i64,
        grace_ms: i64,
        all: bool,
    ) -> Vec<(GroupKey, Group)> {
        let due: Vec<GroupKey> = self
            .groups
            .keys()
            .filter(|k| all || k.window_ms + window_ms + grace_ms <= now_ms)
            .cloned()
            .collect();
        due.into_iter()
            .filter_map(|k| self.groups.remove(&k).map(|g| (k, g)))
            .collect()
    }

    /// Puts groups back (merging with anything that arrived for them meanwhile).
    pub fn restore(&mut self, groups: Vec<(GroupKey, Group)>) {
        for (key, group) in groups {
            for (name, m) in group.metrics {
                self.add(key.clone(), &name, &m.unit, m.value);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.groups.len()
    }

    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }
}

/// Window start for a timestamp: windows are aligned to the epoch, so every processor cuts
/// them the same way and CloudWatch lines their documents up.
pub fn window_start(time_ms: i64, window_ms: i64) -> i64 {
    time_ms.div_euclid(window_ms.max(1)) * window_ms.max(1)
}

/// A map with non-string keys, as a JSON list of pairs.
mod pairs {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<K: Serialize, V: Serialize, S: Serializer>(
        m: &BTreeMap<K, V>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(m.iter())
    }

    pub fn deserialize<'de, K, V, D>(d: D) -> Result<BTreeMap<K, V>, D::Error>
    where
        K: Deserialize<'de> + Ord,
        V: Deserialize<'de>,
        D: Deserializer<'de>,
    {
        Ok(Vec::<(K, V)>::deserialize(d)?.into_iter().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(d: &Distribution) -> Vec<(f64, u64)> {
        d.values().collect()
    }

    #[test]
    fn ordered_keys_sort_like_the_numbers() {
        let mut xs = vec![3.5, -2.0, 0.0, -0.5, 1e300, -1e300, 7.0];
        let mut keys: Vec<i64> = xs.iter().map(|v| ordered(*v)).collect();
        keys.sort();
        xs.sort_by(|a, b| a.partial_cmp(b).unwrap());
        assert_eq!(keys.into_iter().map(unordered).collect::<Vec<_>>(), xs);
    }

    #[test]
    fn explicit_histogram_buckets_become_values_with_exact_counts() {
        // Python SDK default-like bounds; 1 value in (0,5], 3 in (10,25], 1 above 100.
        let bounds = [0.0, 5.0, 10.0, 25.0, 100.0];
        let counts = [0, 1, 0, 3, 0, 1];
        let d = Distribution::from_histogram(&bounds, &counts, Some(190.0), Some(2.0), Some(120.0));
        assert_eq!(values(&d), vec![(2.5, 1), (17.5, 3), (110.0, 1)]);
        assert_eq!((d.count, d.sum, d.min, d.max), (5, 190.0, 2.0, 120.0));
        // Without min/max (a delta of a cumulative histogram), the outer buckets use their bound.
        let d = Distribution::from_histogram(&bounds, &[2, 0, 0, 0, 0, 1], None, None, None);
        assert_eq!(values(&d), vec![(0.0, 2), (100.0, 1)]);
        assert_eq!((d.count, d.sum, d.min, d.max), (3, 100.0, 0.0, 100.0));
    }

    #[test]
    fn exponential_histogram_buckets_become_bucket_middles() {
        // scale 0: base 2; bucket 1 = (2,4] → 3, bucket 2 = (4,8] → 6; negative bucket 0 = -(1,2] → -1.5.
        let pos = Buckets {
            offset: 1,
            counts: vec![2, 1],
        };
        let neg = Buckets {
            offset: 0,
            counts: vec![1],
        };
        let d = Distribution::from_exponential(0, 4, &pos, &neg, Some(10.0), None, None);
        assert_eq!(values(&d), vec![(-1.5, 1), (0.0, 4), (3.0, 2), (6.0, 1)]);
        assert_eq!((d.count, d.sum), (8, 10.0));
    }

    #[test]
    fn summaries_are_statistic_sets() {
        let d = Distribution::from_summary(4, 20.0, Some(1.0), Some(9.0));
        assert_eq!(
            (d.count, d.sum, d.min, d.max, d.distinct()),
            (4, 20.0, 1.0, 9.0, 0)
        );
    }

    #[test]
    fn windows_merge_by_key_and_release_when_due() {
        let key = |w| GroupKey {
            window_ms: w,
            namespace: "ns".into(),
            log_stream: "s".into(),
            dims: vec![("service.name".into(), "checkout".into())],
            sets: vec![vec!["service.name".into()]],
        };
        let mut w = Windows::default();
        w.add(key(0), "requests", "Count", Aggregate::Sum(2.0));
        w.add(key(0), "requests", "Count", Aggregate::Sum(3.0));
        w.add(
            key(0),
            "cpu",
            "",
            Aggregate::Distribution(Distribution::single(0.5)),
        );
        w.add(
            key(0),
            "cpu",
            "",
            Aggregate::Distribution(Distribution::single(0.5)),
        );
        w.add(key(60_000), "requests", "Count", Aggregate::Sum(1.0));
        assert!(w.take_due(60_000, 60_000, 1_000, false).is_empty());
        let due = w.take_due(61_000, 60_000, 1_000, false);
        assert_eq!(due.len(), 1);
        let g = &due[0].1;
        assert_eq!(g.metrics["requests"].value, Aggregate::Sum(5.0));
        let Aggregate::Distribution(cpu) = &g.metrics["cpu"].value else {
            panic!()
        };
        assert_eq!(values(cpu), vec![(0.5, 2)]);
        w.restore(due);
        assert_eq!(w.len(), 2);
        assert_eq!(w.take_due(0, 60_000, 0, true).len(), 2);
    }

    #[test]
    fn windows_survive_a_json_round_trip() {
        let mut w = Windows::default();
        let key = GroupKey {
            window_ms: 120_000,
            namespace: "ns".into(),
            log_stream: "s".into(),
            dims: vec![],
            sets: vec![vec![]],
        };
        w.add(
            key,
            "lat",
            "Milliseconds",
            Aggregate::Distribution(Distribution::from_histogram(
                &[1.0],
                &[1, 2],
                Some(4.0),
                None,
                None,
            )),
        );
        let text = serde_json::to_string(&w).unwrap();
        assert_eq!(serde_json::from_str::<Windows>(&text).unwrap(), w);
    }

    #[test]
    fn window_start_aligns_to_the_epoch() {
        assert_eq!(window_start(125_500, 60_000), 120_000);
        assert_eq!(window_start(-1, 60_000), -60_000);
    }
}
