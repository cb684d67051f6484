//! Partition keys and how they map to partitions.
//!
//! Keys are hashed to 128 bits and partitions own contiguous ranges of the hash space, the way
//! Kinesis shards own hash-key ranges. The same hash works as a Kinesis explicit hash key, so a
//! key lands on the same range whatever the bus.

use xxhash_rust::xxh3::xxh3_128;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartitionKey {
    /// Human-readable key (trace id, resource digest, user id, or a lane name).
    pub key: String,
    pub hash: u128,
}

impl PartitionKey {
    /// A key whose hash is derived from `key` itself.
    pub fn new(key: impl Into<String>) -> Self {
        let key = key.into();
        let hash = xxh3_128(key.as_bytes());
        PartitionKey { key, hash }
    }

    /// The key at the middle of the range that partition `index` of `count` owns, so that
    /// whatever is published under it lands on that partition.
    pub fn for_partition(index: u32, count: u32) -> Self {
        assert!(count > 0 && index < count, "partition {index} of {count}");
        let mid_top64 = ((2 * index as u128 + 1) << 64) / (2 * count as u128);
        PartitionKey {
            key: format!("partition-{index}-of-{count}"),
            hash: mid_top64 << 64,
        }
    }
}

/// The partition, of `count` equal ranges of the hash space, that owns `hash`.
pub fn partition_for_hash(hash: u128, count: u32) -> u32 {
    let top = (hash >> 64) as u64 as u128;
    ((top * count as u128) >> 64) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_key_maps_to_its_partition() {
        for count in [1, 2, 3, 4, 7, 16, 1000] {
            for index in 0..count {
                let k = PartitionKey::for_partition(index, count);
                assert_eq!(partition_for_hash(k.hash, count), index, "{index}/{count}");
            }
        }
    }

    #[test]
    fn hashes_spread_evenly() {
        let mut counts = [0u32; 4];
        for i in 0..40_000 {
            counts[partition_for_hash(PartitionKey::new(format!("trace-{i}")).hash, 4) as usize] +=
                1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "{counts:?}");
        }
    }
}
