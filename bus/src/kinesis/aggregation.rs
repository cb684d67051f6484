//! The Kinesis Producer Library's aggregated record format, so that many small bus records
//! travel as one Kinesis record and any KPL-aware reader (the KCL, Lambda, `aws-kinesis-agg`)
//! unpacks them:
//!
//! ```text
//! F3 89 9A C2 | protobuf AggregatedRecord | MD5 of the protobuf bytes (16 bytes)
//! ```
//!
//! The messages are the KPL's `messages.proto` (proto2), written as prost derives because
//! they are three tiny, frozen messages: no build step for them. Pure code, no I/O.

use bytes::Bytes;
use md5::{Digest, Md5};
use prost::Message;

pub const MAGIC: [u8; 4] = [0xF3, 0x89, 0x9A, 0xC2];
const DIGEST_LEN: usize = 16;

#[derive(Clone, PartialEq, Message)]
pub struct AggregatedRecord {
    #[prost(string, repeated, tag = "1")]
    pub partition_key_table: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub explicit_hash_key_table: Vec<String>,
    #[prost(message, repeated, tag = "3")]
    pub records: Vec<AggregatedEntry>,
}

/// The KPL's `Record` message: one user record inside an aggregate.
#[derive(Clone, PartialEq, Message)]
pub struct AggregatedEntry {
    #[prost(uint64, required, tag = "1")]
    pub partition_key_index: u64,
    #[prost(uint64, optional, tag = "2")]
    pub explicit_hash_key_index: Option<u64>,
    #[prost(bytes = "bytes", required, tag = "3")]
    pub data: Bytes,
    #[prost(message, repeated, tag = "4")]
    pub tags: Vec<Tag>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Tag {
    #[prost(string, required, tag = "1")]
    pub key: String,
    #[prost(string, optional, tag = "2")]
    pub value: Option<String>,
}

/// A record as a producer hands it to Kinesis, or as a consumer gets it back after
/// de-aggregation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub partition_key: String,
    /// Decimal 128-bit hash key that picks the shard; `None` means the MD5 of the partition key.
    pub explicit_hash_key: Option<String>,
    pub data: Bytes,
}

/// One Kinesis record: either a single user record as is, or an aggregate of several.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KinesisRecord {
    pub partition_key: String,
    pub explicit_hash_key: Option<String>,
    pub data: Bytes,
    /// Indexes (into the slice given to [`Aggregator::push`] callers' numbering) of the user
    /// records inside, in order.
    pub members: Vec<usize>,
}

impl KinesisRecord {
    /// What counts against the per-record and per-request size limits.
    pub fn size(&self) -> usize {
        self.data.len() + self.partition_key.len()
    }
}

/// Is this Kinesis record's data in the aggregated format (magic, parseable body, matching
/// digest)? Anything else is a plain record, exactly as the KCL decides.
pub fn deaggregate(data: &Bytes) -> Result<Option<Vec<UserRecord>>, String> {
    if data.len() < MAGIC.len() + DIGEST_LEN || data[..MAGIC.len()] != MAGIC {
        return Ok(None);
    }
    let body = &data[MAGIC.len()..data.len() - DIGEST_LEN];
    let digest = &data[data.len() - DIGEST_LEN..];
    if Md5::digest(body).as_slice() != digest {
        return Ok(None);
    }
    let agg = AggregatedRecord::decode(data.slice(MAGIC.len()..data.len() - DIGEST_LEN))
        .map_err(|e| format!("aggregated record with a valid digest does not decode: {e}"))?;
    agg.records
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let partition_key = agg
                .partition_key_table
                .get(r.partition_key_index as usize)
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "user record {i}: partition key index {} out of range",
                        r.partition_key_index
                    )
                })?;
            let explicit_hash_key = match r.explicit_hash_key_index {
                None => None,
                Some(k) => Some(
                    agg.explicit_hash_key_table
                        .get(k as usize)
                        .cloned()
                        .ok_or_else(|| {
                            format!("user record {i}: explicit hash key index {k} out of range")
                        })?,
                ),
            };
            Ok(UserRecord {
                partition_key,
                explicit_hash_key,
                data: r.data,
            })
        })
        .collect::<Result<Vec<_>, String>>()
        .map(Some)
}

/// Encodes user records as one aggregated record's data.
pub fn encode(records: &[&UserRecord]) -> Bytes {
    let mut agg = AggregatedRecord::default();
    for r in records {
        let pk = table_index(&mut agg.partition_key_table, &r.partition_key);
        let ehk = r
            .explicit_hash_key
            .as_ref()
            .map(|k| table_index(&mut agg.explicit_hash_key_table, k));
        agg.records.push(AggregatedEntry {
            partition_key_index: pk,
            explicit_hash_key_index: ehk,
            data: r.data.clone(),
            tags: Vec::new(),
        });
    }
    let body = agg.encode_to_vec();
    let mut out = Vec::with_capacity(MAGIC.len() + body.len() + DIGEST_LEN);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&body);
    out.extend_from_slice(&Md5::digest(&body));
    Bytes::from(out)
}

fn table_index(table: &mut Vec<String>, key: &str) -> u64 {
    match table.iter().position(|k| k == key) {
        Some(i) => i as u64,
        None => {
            table.push(key.to_string());
            (table.len() - 1) as u64
        }
    }
}

/// Bytes a length-delimited protobuf field of `len` bytes takes with a one-byte tag.
fn field_len(len: usize) -> usize {
    1 + prost::encoding::encoded_len_varint(len as u64) + len
}

/// Packs user records into Kinesis records, each within `max_record_size` (data plus
/// partition key) and `max_members` user records. Records are packed only with records of
/// the same explicit hash key, so an aggregate lands on the shard each member was meant for;
/// order is kept within a key. With `aggregate` off, or for a record alone in its group,
/// the user record is sent as is.
///
/// A user record that cannot fit in any Kinesis record is returned in the error with its
/// index; the others are still packed.
pub fn pack(
    records: &[UserRecord],
    aggregate: bool,
    max_record_size: usize,
    max_members: usize,
) -> (Vec<KinesisRecord>, Vec<(usize, String)>) {
    let mut out = Vec::new();
    let mut too_large = Vec::new();
    let mut open: Vec<Open> = Vec::new();
    for (i, r) in records.iter().enumerate() {
        let plain = r.data.len() + r.partition_key.len();
        if plain > max_record_size {
            too_large.push((
                i,
                format!(
                    "record of {plain} bytes (data plus partition key) exceeds the Kinesis record limit of {max_record_size} bytes"
                ),
            ));
            continue;
        }
        if !aggregate {
            out.push(single(records, i));
            continue;
        }
        let slot = match open.iter().position(|o| o.hash_key == r.explicit_hash_key) {
            Some(s) => s,
            None => {
                open.push(Open::new(r));
                open.len() - 1
            }
        };
        if !open[slot].fits(r, max_record_size, max_members) {
            let full = std::mem::replace(&mut open[slot], Open::new(r));
            out.push(full.finish(records));
        }
        open[slot].add(i, r);
    }
    out.extend(
        open.into_iter()
            .filter(|o| !o.members.is_empty())
            .map(|o| o.finish(records)),
    );
    (out, too_large)
}

fn single(records: &[UserRecord], i: usize) -> KinesisRecord {
    let r = &records[i];
    KinesisRecord {
        partition_key: r.partition_key.clone(),
        explicit_hash_key: r.explicit_hash_key.clone(),
        data: r.data.clone(),
        members: vec![i],
    }
}

/// An aggregate being filled, with its exact encoded size tracked as members are added.
struct Open {
    hash_key: Option<String>,
    members: Vec<usize>,
    partition_keys: Vec<String>,
    /// Size of the protobuf body so far.
    body: usize,
    /// The outer record's partition key: the first member's, as the KPL does.
    outer_key_len: usize,
}

impl Open {
    fn new(r: &UserRecord) -> Open {
        let body = r
            .explicit_hash_key
            .as_ref()
            .map_or(0, |k| field_len(k.len()));
        Open {
            hash_key: r.explicit_hash_key.clone(),
            members: Vec::new(),
            partition_keys: Vec::new(),
            body,
            outer_key_len: r.partition_key.len(),
        }
    }

    /// Body growth if `r` were added.
    fn growth(&self, r: &UserRecord) -> usize {
        let new_key = !self.partition_keys.contains(&r.partition_key);
        let key_index = if new_key {
            self.partition_keys.len()
        } else {
            self.partition_keys
                .iter()
                .position(|k| *k == r.partition_key)
                .unwrap_or(0)
        };
        let mut entry =
            1 + prost::encoding::encoded_len_varint(key_index as u64) + field_len(r.data.len());
        if r.explicit_hash_key.is_some() {
            entry += 1 + 1; // index 0 of a one-entry table
        }
        field_len(entry)
            + if new_key {
                field_len(r.partition_key.len())
            } else {
                0
            }
    }

    fn fits(&self, r: &UserRecord, max_record_size: usize, max_members: usize) -> bool {
        if self.members.is_empty() {
            return true;
        }
        let total = MAGIC.len() + self.body + self.growth(r) + DIGEST_LEN + self.outer_key_len;
        self.members.len() < max_members && total <= max_record_size
    }

    fn add(&mut self, i: usize, r: &UserRecord) {
        self.body += self.growth(r);
        if !self.partition_keys.contains(&r.partition_key) {
            self.partition_keys.push(r.partition_key.clone());
        }
        self.members.push(i);
    }

    fn finish(self, records: &[UserRecord]) -> KinesisRecord {
        if self.members.len() == 1 {
            return single(records, self.members[0]);
        }
        let members: Vec<&UserRecord> = self.members.iter().map(|&i| &records[i]).collect();
        let data = encode(&members);
        debug_assert_eq!(data.len(), MAGIC.len() + self.body + DIGEST_LEN);
        KinesisRecord {
            partition_key: members[0].partition_key.clone(),
            explicit_hash_key: self.hash_key,
            data,
            members: self.members,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(pk: &str, ehk: Option<&str>, data: &[u8]) -> UserRecord {
        UserRecord {
            partition_key: pk.into(),
            explicit_hash_key: ehk.map(String::from),
            data: Bytes::copy_from_slice(data),
        }
    }

    /// The exact bytes of a two-record aggregate, worked out by hand from the proto2 wire
    /// format, so the encoding cannot drift unnoticed.
    #[test]
    fn golden_two_record_aggregate() {
        let a = rec("k", Some("5"), b"ab");
        let b = rec("k", Some("5"), b"c");
        let data = encode(&[&a, &b]);
        let body: Vec<u8> = vec![
            0x0a, 0x01, b'k', // partition_key_table[0] = "k"
            0x12, 0x01, b'5', // explicit_hash_key_table[0] = "5"
            0x1a, 0x08, 0x08, 0x00, 0x10, 0x00, 0x1a, 0x02, b'a', b'b', // record 0
            0x1a, 0x07, 0x08, 0x00, 0x10, 0x00, 0x1a, 0x01, b'c', // record 1
        ];
        let mut want = MAGIC.to_vec();
        want.extend_from_slice(&body);
        want.extend_from_slice(&Md5::digest(&body));
        assert_eq!(&data[..], &want[..]);
        assert_eq!(deaggregate(&data).unwrap(), Some(vec![a, b]));
    }

    #[test]
    fn plain_records_are_not_aggregates() {
        assert_eq!(deaggregate(&Bytes::from_static(b"hello")).unwrap(), None);
        // Magic but a wrong digest: a plain record that happens to start with the magic.
        let mut data = encode(&[&rec("k", None, b"x"), &rec("k", None, b"y")]).to_vec();
        let last = data.len() - 1;
        data[last] ^= 1;
        assert_eq!(deaggregate(&Bytes::from(data)).unwrap(), None);
    }

    #[test]
    fn bad_table_index_is_an_error_not_a_panic() {
        let agg = AggregatedRecord {
            partition_key_table: vec![],
            explicit_hash_key_table: vec![],
            records: vec![AggregatedEntry {
                partition_key_index: 3,
                explicit_hash_key_index: None,
                data: Bytes::new(),
                tags: vec![],
            }],
        };
        let body = agg.encode_to_vec();
        let mut data = MAGIC.to_vec();
        data.extend_from_slice(&body);
        data.extend_from_slice(&Md5::digest(&body));
        assert!(deaggregate(&Bytes::from(data))
            .unwrap_err()
            .contains("out of range"));
    }

    #[test]
    fn pack_groups_by_hash_key_and_keeps_order() {
        let records = vec![
            rec("a", Some("1"), b"a0"),
            rec("b", Some("2"), b"b0"),
            rec("a", Some("1"), b"a1"),
            rec("c", Some("3"), b"c0"),
            rec("a2", Some("1"), b"a2"),
        ];
        let (out, too_large) = pack(&records, true, 1 << 20, 1000);
        assert!(too_large.is_empty());
        assert_eq!(out.len(), 3);
        let lone = out
            .iter()
            .find(|r| r.explicit_hash_key.as_deref() == Some("2"))
            .unwrap();
        assert_eq!(lone.members, vec![1]);
        assert_eq!(
            lone.data,
            Bytes::from_static(b"b0"),
            "a lone record is sent plain"
        );
        let agg = out
            .iter()
            .find(|r| r.explicit_hash_key.as_deref() == Some("1"))
            .unwrap();
        assert_eq!(agg.members, vec![0, 2, 4]);
        assert_eq!(agg.partition_key, "a");
        let inner = deaggregate(&agg.data).unwrap().unwrap();
        assert_eq!(
            inner,
            vec![records[0].clone(), records[2].clone(), records[4].clone()]
        );
    }

    #[test]
    fn pack_respects_size_and_count_limits_exactly() {
        let records: Vec<UserRecord> = (0..200)
            .map(|i| rec("key", Some("42"), &vec![i as u8; 100 + i]))
            .collect();
        for max in [400, 1000, 4096, 65536] {
            let (out, too_large) = pack(&records, true, max, 1000);
            assert!(too_large.is_empty());
            let members: Vec<usize> = out.iter().flat_map(|r| r.members.clone()).collect();
            assert_eq!(members, (0..200).collect::<Vec<_>>());
            for r in &out {
                assert!(r.size() <= max, "{} > {max}", r.size());
            }
        }
        let (out, _) = pack(&records, true, 1 << 20, 7);
        assert!(out.iter().all(|r| r.members.len() <= 7));
        assert_eq!(out.len(), 200usize.div_ceil(7));
        let (out, _) = pack(&records, false, 1 << 20, 1000);
        assert_eq!(out.len(), 200);
    }

    #[test]
    fn oversized_records_are_refused_alone() {
        let records = vec![rec("k", None, &[0; 2000]), rec("k", None, b"small")];
        let (out, too_large) = pack(&records, true, 1024, 1000);
        assert_eq!(too_large.len(), 1);
        assert_eq!(too_large[0].0, 0);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].members, vec![1]);
    }
}
