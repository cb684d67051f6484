//! The stream's shards: listing them (`ListShards`, paginated) and which open shard owns a
//! hash key.

use aws_sdk_kinesis::Client;

use super::error::kinesis_error;
use crate::BusError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    pub id: String,
    pub parents: Vec<String>,
    pub start_hash: u128,
    pub end_hash: u128,
    /// A closed shard (split or merged away) has an ending sequence number.
    pub open: bool,
}

pub async fn list_shards(client: &Client, stream: &str) -> Result<Vec<Shard>, BusError> {
    let mut shards = Vec::new();
    let mut next: Option<String> = None;
    loop {
        // The API refuses a stream name together with a pagination token.
        let request = match &next {
            Some(token) => client.list_shards().next_token(token),
            None => client.list_shards().stream_name(stream),
        };
        let out = request
            .send()
            .await
            .map_err(|e| kinesis_error("ListShards", e))?;
        for s in out.shards() {
            let range = s.hash_key_range();
            let parse = |v: Option<&str>| -> Result<u128, BusError> {
                v.unwrap_or("").parse().map_err(|_| {
                    BusError::Unavailable(format!(
                        "shard {} has an unreadable hash key range",
                        s.shard_id()
                    ))
                })
            };
            shards.push(Shard {
                id: s.shard_id().to_string(),
                parents: s
                    .parent_shard_id()
                    .into_iter()
                    .chain(s.adjacent_parent_shard_id())
                    .map(String::from)
                    .collect(),
                start_hash: parse(range.map(|r| r.starting_hash_key()))?,
                end_hash: parse(range.map(|r| r.ending_hash_key()))?,
                open: s
                    .sequence_number_range()
                    .and_then(|r| r.ending_sequence_number())
                    .is_none(),
            });
        }
        match out.next_token() {
            Some(t) if !t.is_empty() => next = Some(t.to_string()),
            _ => break,
        }
    }
    Ok(shards)
}

/// Open shards ordered by hash range, for looking up which shard a hash key lands on.
#[derive(Debug, Clone, Default)]
pub struct ShardMap {
    open: Vec<Shard>,
}

impl ShardMap {
    pub fn new(shards: &[Shard]) -> ShardMap {
        let mut open: Vec<Shard> = shards.iter().filter(|s| s.open).cloned().collect();
        open.sort_by_key(|s| s.start_hash);
        ShardMap { open }
    }

    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// The middle of each open shard's range, in hash order.
    pub fn middles(&self) -> Vec<u128> {
        self.open
            .iter()
            .map(|s| s.start_hash + (s.end_hash - s.start_hash) / 2)
            .collect()
    }

    /// The open shard whose range holds `hash`.
    pub fn shard_for(&self, hash: u128) -> Option<&str> {
        let i = self.open.partition_point(|s| s.start_hash <= hash);
        let s = self.open.get(i.checked_sub(1)?)?;
        (hash <= s.end_hash).then_some(s.id.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard(id: &str, start: u128, end: u128, open: bool) -> Shard {
        Shard {
            id: id.into(),
            parents: vec![],
            start_hash: start,
            end_hash: end,
            open,
        }
    }

    #[test]
    fn hash_lookup_uses_open_shards_only() {
        let half = u128::MAX / 2;
        let map = ShardMap::new(&[
            shard("parent", 0, u128::MAX, false),
            shard("hi", half + 1, u128::MAX, true),
            shard("lo", 0, half, true),
        ]);
        assert_eq!(map.len(), 2);
        assert_eq!(map.shard_for(0), Some("lo"));
        assert_eq!(map.shard_for(half), Some("lo"));
        assert_eq!(map.shard_for(half + 1), Some("hi"));
        assert_eq!(map.shard_for(u128::MAX), Some("hi"));
        assert_eq!(ShardMap::default().shard_for(5), None);
        let middles = map.middles();
        assert_eq!(map.shard_for(middles[0]), Some("lo"));
        assert_eq!(map.shard_for(middles[1]), Some("hi"));
    }
}
