//! Shard leases in DynamoDB, the way the KCL keeps them, so that processors share a stream's
//! shards: each shard is owned by one worker at a time, workers that stop renewing lose their
//! shards to the others, and a newcomer takes (or steals) its fair share.
//!
//! One item per shard, keyed by `leaseKey` (the shard id): `leaseOwner`, `leaseCounter`
//! (bumped by every renewal, so others can tell a live owner from a dead one), `checkpoint`
//! (`TRIM_HORIZON`, `SHARD_END`, or a sequence number) with `checkpointSubSequenceNumber`, and
//! `parentShardId`. Every change of ownership is a conditional write on the counter, so two
//! workers never both believe they own a shard; a checkpoint is conditional on the owner.
//!
//! [`plan`] (pure) decides which leases to take; [`LeaseStore`] does the I/O.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType,
    ScalarAttributeType, TableStatus,
};
use aws_sdk_dynamodb::Client;
use tokio::time::Instant;

use super::error::{error_code, kinesis_error};
use super::shards::Shard;
use crate::BusError;

const KEY: &str = "leaseKey";
const OWNER: &str = "leaseOwner";
const COUNTER: &str = "leaseCounter";
const CHECKPOINT: &str = "checkpoint";
const SUB: &str = "checkpointSubSequenceNumber";
const PARENTS: &str = "parentShardId";
const SWITCHES: &str = "ownerSwitchesSinceCheckpoint";

const TRIM_HORIZON: &str = "TRIM_HORIZON";
const SHARD_END: &str = "SHARD_END";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkpoint {
    /// Nothing read yet: start at the oldest record.
    TrimHorizon,
    /// Every record up to and including this one (and user record `sub` inside it) is done.
    At { sequence: String, sub: u32 },
    /// The shard is closed and fully read: its children may start.
    ShardEnd,
}

impl Checkpoint {
    fn parse(value: &str, sub: u32) -> Checkpoint {
        match value {
            TRIM_HORIZON => Checkpoint::TrimHorizon,
            SHARD_END => Checkpoint::ShardEnd,
            seq => Checkpoint::At {
                sequence: seq.to_string(),
                sub,
            },
        }
    }

    fn attributes(&self) -> (String, u32) {
        match self {
            Checkpoint::TrimHorizon => (TRIM_HORIZON.into(), 0),
            Checkpoint::ShardEnd => (SHARD_END.into(), 0),
            Checkpoint::At { sequence, sub } => (sequence.clone(), *sub),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub shard: String,
    pub owner: Option<String>,
    pub counter: u64,
    pub checkpoint: Checkpoint,
    pub parents: Vec<String>,
}

/// What a worker has seen of each lease's counter, and since when: a lease whose counter has
/// not moved for a lease duration belongs to a dead worker.
#[derive(Debug, Default)]
pub struct Observations {
    seen: HashMap<String, (u64, Instant)>,
}

impl Observations {
    pub fn observe(&mut self, leases: &[Lease], now: Instant) {
        self.seen
            .retain(|k, _| leases.iter().any(|l| &l.shard == k));
        for l in leases {
            match self.seen.get_mut(&l.shard) {
                Some((c, _)) if *c == l.counter => {}
                _ => {
                    self.seen.insert(l.shard.clone(), (l.counter, now));
                }
            }
        }
    }

    pub fn expired(&self, lease: &Lease, now: Instant, duration: Duration) -> bool {
        match self.seen.get(&lease.shard) {
            Some((c, since)) => *c == lease.counter && now.duration_since(*since) > duration,
            None => false,
        }
    }
}

/// Can this lease's shard be read now: not finished, and every parent still in the table has
/// been read to its end (parents before children after a split or merge).
pub fn eligible(lease: &Lease, all: &BTreeMap<&str, &Lease>) -> bool {
    lease.checkpoint != Checkpoint::ShardEnd
        && lease.parents.iter().all(|p| {
            all.get(p.as_str())
                .is_none_or(|parent| parent.checkpoint == Checkpoint::ShardEnd)
        })
}

/// The leases `me` should try to take now: free or expired ones up to its fair share
/// (eligible leases over live workers, rounded up), or else one stolen from the busiest worker
/// when that worker holds more than its share. `held` is what `me` is reading now; a lease the
/// table gives to `me` that it does not hold (its reader failed) is free to take again.
pub fn plan(
    leases: &[Lease],
    me: &str,
    held: &HashSet<String>,
    expired: impl Fn(&Lease) -> bool,
) -> Vec<Lease> {
    let all: BTreeMap<&str, &Lease> = leases.iter().map(|l| (l.shard.as_str(), l)).collect();
    let eligible: Vec<&Lease> = leases.iter().filter(|l| eligible(l, &all)).collect();
    if eligible.is_empty() {
        return Vec::new();
    }
    let is_held = |l: &Lease| held.contains(&l.shard);
    let mut per_owner: BTreeMap<&str, usize> = BTreeMap::new();
    per_owner.insert(me, eligible.iter().filter(|l| is_held(l)).count());
    for l in &eligible {
        match l.owner.as_deref() {
            Some(owner) if owner != me && !expired(l) => *per_owner.entry(owner).or_default() += 1,
            _ => {}
        }
    }
    let target = eligible.len().div_ceil(per_owner.len());
    let mine = per_owner[me];
    if mine >= target {
        return Vec::new();
    }
    let mut free: Vec<Lease> = eligible
        .iter()
        .filter(|l| !is_held(l))
        .filter(|l| match l.owner.as_deref() {
            None => true,
            Some(owner) if owner == me => true,
            Some(_) => expired(l),
        })
        .map(|l| (*l).clone())
        .collect();
    if !free.is_empty() {
        free.truncate(target - mine);
        return free;
    }
    // Steal only from a worker over its share, so two workers never trade a shard back and
    // forth; one per round so the fleet converges gently.
    let (busiest, held) = per_owner
        .iter()
        .filter(|(o, _)| **o != me)
        .max_by_key(|(_, n)| **n)
        .map(|(o, n)| (*o, *n))
        .unwrap_or((me, 0));
    if held > target {
        if let Some(l) = eligible
            .iter()
            .rev()
            .find(|l| l.owner.as_deref() == Some(busiest))
        {
            return vec![(*l).clone()];
        }
    }
    Vec::new()
}

pub struct LeaseStore {
    client: Client,
    table: String,
}

impl LeaseStore {
    pub fn new(client: Client, table: &str) -> LeaseStore {
        LeaseStore {
            client,
            table: table.to_string(),
        }
    }

    /// Creates the table (on-demand billing) unless it exists, and waits until it is active.
    pub async fn ensure_table(&self) -> Result<(), BusError> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
            {
                Ok(out) => {
                    let status = out.table().and_then(|t| t.table_status());
                    if matches!(status, Some(TableStatus::Active) | None) {
                        return Ok(());
                    }
                }
                Err(e) if error_code(&e) == "ResourceNotFoundException" => {
                    let created = self
                        .client
                        .create_table()
                        .table_name(&self.table)
                        .billing_mode(BillingMode::PayPerRequest)
                        .attribute_definitions(
                            AttributeDefinition::builder()
                                .attribute_name(KEY)
                                .attribute_type(ScalarAttributeType::S)
                                .build()
                                .map_err(|e| BusError::Config(e.to_string()))?,
                        )
                        .key_schema(
                            KeySchemaElement::builder()
                                .attribute_name(KEY)
                                .key_type(KeyType::Hash)
                                .build()
                                .map_err(|e| BusError::Config(e.to_string()))?,
                        )
                        .send()
                        .await;
                    match created {
                        Ok(_) => tracing::info!(table = %self.table, "lease table created"),
                        // Another worker created it first.
                        Err(e) if error_code(&e) == "ResourceInUseException" => {}
                        Err(e) => return Err(kinesis_error("CreateTable", e)),
                    }
                }
                Err(e) => return Err(kinesis_error("DescribeTable", e)),
            }
            if Instant::now() > deadline {
                return Err(BusError::Unavailable(format!(
                    "lease table {} is not active after 120s",
                    self.table
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Every lease, read consistently.
    pub async fn list(&self) -> Result<Vec<Lease>, BusError> {
        let mut leases = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.table)
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| kinesis_error("Scan", e))?;
            for item in out.items() {
                match lease_from_item(item) {
                    Some(l) => leases.push(l),
                    None => tracing::warn!(table = %self.table, "unreadable lease item ignored"),
                }
            }
            match out.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => break,
            }
        }
        Ok(leases)
    }

    /// Adds a lease for `shard` at TRIM_HORIZON unless one exists. `true` if it was added.
    pub async fn create_if_missing(&self, shard: &Shard) -> Result<bool, BusError> {
        let mut put = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(KEY, s(&shard.id))
            .item(COUNTER, n(0))
            .item(CHECKPOINT, s(TRIM_HORIZON))
            .item(SUB, n(0))
            .item(SWITCHES, n(0))
            .condition_expression("attribute_not_exists(#k)")
            .expression_attribute_names("#k", KEY);
        if !shard.parents.is_empty() {
            put = put.item(PARENTS, AttributeValue::Ss(shard.parents.clone()));
        }
        match put.send().await {
            Ok(_) => Ok(true),
            Err(e) if error_code(&e) == "ConditionalCheckFailedException" => Ok(false),
            Err(e) => Err(kinesis_error("PutItem", e)),
        }
    }

    /// Takes `lease` (free, expired or stolen) if nobody changed it since it was read. Returns
    /// the new counter, or `None` if another worker got there first.
    pub async fn take(&self, lease: &Lease, me: &str) -> Result<Option<u64>, BusError> {
        let next = lease.counter + 1;
        self.conditional(
            self.client
                .update_item()
                .table_name(&self.table)
                .key(KEY, s(&lease.shard))
                .update_expression("SET #o = :me, #c = :next ADD #sw :one")
                .condition_expression("#c = :seen")
                .expression_attribute_names("#o", OWNER)
                .expression_attribute_names("#c", COUNTER)
                .expression_attribute_names("#sw", SWITCHES)
                .expression_attribute_values(":me", s(me))
                .expression_attribute_values(":next", n(next))
                .expression_attribute_values(":seen", n(lease.counter))
                .expression_attribute_values(":one", n(1))
                .send()
                .await,
            "UpdateItem (take lease)",
        )
        .map(|ok| ok.then_some(next))
    }

    /// Renews a lease `me` holds at `counter`. `None` when it was lost (taken or stolen).
    pub async fn renew(
        &self,
        shard: &str,
        me: &str,
        counter: u64,
    ) -> Result<Option<u64>, BusError> {
        let next = counter + 1;
        self.conditional(
            self.client
                .update_item()
                .table_name(&self.table)
                .key(KEY, s(shard))
                .update_expression("SET #c = :next")
                .condition_expression("#o = :me AND #c = :seen")
                .expression_attribute_names("#o", OWNER)
                .expression_attribute_names("#c", COUNTER)
                .expression_attribute_values(":me", s(me))
                .expression_attribute_values(":next", n(next))
                .expression_attribute_values(":seen", n(counter))
                .send()
                .await,
            "UpdateItem (renew lease)",
        )
        .map(|ok| ok.then_some(next))
    }

    /// Stores a checkpoint if `me` still owns the shard. `false` when the lease was lost: the
    /// new owner re-reads from the previous checkpoint.
    pub async fn checkpoint(
        &self,
        shard: &str,
        me: &str,
        checkpoint: &Checkpoint,
    ) -> Result<bool, BusError> {
        let (value, sub) = checkpoint.attributes();
        self.conditional(
            self.client
                .update_item()
                .table_name(&self.table)
                .key(KEY, s(shard))
                .update_expression("SET #cp = :cp, #sub = :sub, #sw = :zero")
                .condition_expression("#o = :me")
                .expression_attribute_names("#o", OWNER)
                .expression_attribute_names("#cp", CHECKPOINT)
                .expression_attribute_names("#sub", SUB)
                .expression_attribute_names("#sw", SWITCHES)
                .expression_attribute_values(":me", s(me))
                .expression_attribute_values(":cp", s(&value))
                .expression_attribute_values(":sub", n(sub as u64))
                .expression_attribute_values(":zero", n(0))
                .send()
                .await,
            "UpdateItem (checkpoint)",
        )
    }

    /// Gives up a lease `me` holds, keeping its checkpoint: another worker can take it at once.
    pub async fn release(&self, shard: &str, me: &str) -> Result<bool, BusError> {
        self.conditional(
            self.client
                .update_item()
                .table_name(&self.table)
                .key(KEY, s(shard))
                .update_expression("REMOVE #o")
                .condition_expression("#o = :me")
                .expression_attribute_names("#o", OWNER)
                .expression_attribute_values(":me", s(me))
                .send()
                .await,
            "UpdateItem (release lease)",
        )
    }

    fn conditional<T, E>(
        &self,
        result: Result<
            T,
            aws_sdk_dynamodb::error::SdkError<E, aws_sdk_dynamodb::config::http::HttpResponse>,
        >,
        operation: &str,
    ) -> Result<bool, BusError>
    where
        E: aws_sdk_dynamodb::error::ProvideErrorMetadata
            + std::error::Error
            + Send
            + Sync
            + 'static,
    {
        match result {
            Ok(_) => Ok(true),
            Err(e) if error_code(&e) == "ConditionalCheckFailedException" => Ok(false),
            Err(e) => Err(kinesis_error(operation, e)),
        }
    }
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.to_string())
}

fn n(v: u64) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

fn lease_from_item(item: &HashMap<String, AttributeValue>) -> Option<Lease> {
    let string = |k: &str| item.get(k).and_then(|v| v.as_s().ok()).cloned();
    let number = |k: &str| {
        item.get(k)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(Lease {
        shard: string(KEY)?,
        owner: string(OWNER),
        counter: number(COUNTER).unwrap_or(0),
        checkpoint: Checkpoint::parse(
            &string(CHECKPOINT).unwrap_or_else(|| TRIM_HORIZON.into()),
            number(SUB).unwrap_or(0) as u32,
        ),
        parents: item
            .get(PARENTS)
            .and_then(|v| v.as_ss().ok())
            .cloned()
            .unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(shard: &str, owner: Option<&str>, checkpoint: Checkpoint, parents: &[&str]) -> Lease {
        Lease {
            shard: shard.into(),
            owner: owner.map(String::from),
            counter: 1,
            checkpoint,
            parents: parents.iter().map(|p| p.to_string()).collect(),
        }
    }

    fn none() -> HashSet<String> {
        HashSet::new()
    }

    fn held(leases: &[Lease], me: &str) -> HashSet<String> {
        leases
            .iter()
            .filter(|l| l.owner.as_deref() == Some(me))
            .map(|l| l.shard.clone())
            .collect()
    }

    fn ids(v: &[Lease]) -> Vec<&str> {
        v.iter().map(|l| l.shard.as_str()).collect()
    }

    #[test]
    fn a_lone_worker_takes_every_free_shard() {
        let leases: Vec<Lease> = (0..4)
            .map(|i| lease(&format!("s{i}"), None, Checkpoint::TrimHorizon, &[]))
            .collect();
        assert_eq!(
            ids(&plan(&leases, "a", &none(), |_| false)),
            vec!["s0", "s1", "s2", "s3"]
        );
    }

    #[test]
    fn a_second_worker_steals_one_at_a_time_up_to_half() {
        let leases: Vec<Lease> = (0..4)
            .map(|i| lease(&format!("s{i}"), Some("a"), Checkpoint::TrimHorizon, &[]))
            .collect();
        assert_eq!(plan(&leases, "b", &held(&leases, "b"), |_| false).len(), 1);
        let mut leases = leases;
        leases[3].owner = Some("b".into());
        assert_eq!(
            plan(&leases, "b", &held(&leases, "b"), |_| false).len(),
            1,
            "a still holds 3 > 2"
        );
        leases[2].owner = Some("b".into());
        assert!(
            plan(&leases, "b", &held(&leases, "b"), |_| false).is_empty(),
            "2 and 2: balanced"
        );
        assert!(
            plan(&leases, "a", &held(&leases, "a"), |_| false).is_empty(),
            "and a does not steal back"
        );
    }

    #[test]
    fn expired_leases_of_a_dead_worker_are_taken() {
        let mut leases: Vec<Lease> = (0..4)
            .map(|i| lease(&format!("s{i}"), Some("a"), Checkpoint::TrimHorizon, &[]))
            .collect();
        leases[0].owner = Some("b".into());
        leases[1].owner = Some("b".into());
        let taken = plan(&leases, "b", &held(&leases, "b"), |l| {
            l.owner.as_deref() == Some("a")
        });
        assert_eq!(ids(&taken), vec!["s2", "s3"]);
    }

    #[test]
    fn a_lease_of_mine_whose_reader_stopped_is_taken_again() {
        let leases = vec![
            lease("s0", Some("a"), Checkpoint::TrimHorizon, &[]),
            lease("s1", Some("a"), Checkpoint::TrimHorizon, &[]),
        ];
        let only_s0: HashSet<String> = ["s0".to_string()].into();
        assert_eq!(ids(&plan(&leases, "a", &only_s0, |_| false)), vec!["s1"]);
    }

    #[test]
    fn children_wait_for_their_parents_to_end() {
        let mut leases = vec![
            lease(
                "parent",
                Some("a"),
                Checkpoint::At {
                    sequence: "5".into(),
                    sub: 0,
                },
                &[],
            ),
            lease("child-1", None, Checkpoint::TrimHorizon, &["parent"]),
            lease("child-2", None, Checkpoint::TrimHorizon, &["parent"]),
        ];
        assert!(plan(&leases, "a", &held(&leases, "a"), |_| false).is_empty());
        leases[0].checkpoint = Checkpoint::ShardEnd;
        assert_eq!(
            ids(&plan(&leases, "a", &held(&leases, "a"), |_| false)),
            vec!["child-1", "child-2"]
        );
        // A parent that aged out of the table does not hold its children back.
        let orphan = vec![lease("child", None, Checkpoint::TrimHorizon, &["gone"])];
        assert_eq!(plan(&orphan, "a", &none(), |_| false).len(), 1);
        // A merged child waits for both parents.
        let merge = vec![
            lease("p1", None, Checkpoint::ShardEnd, &[]),
            lease("p2", Some("b"), Checkpoint::TrimHorizon, &[]),
            lease("m", None, Checkpoint::TrimHorizon, &["p1", "p2"]),
        ];
        assert!(
            plan(&merge, "a", &none(), |_| false).is_empty(),
            "p2 is b's and m must wait for it"
        );
    }

    #[test]
    fn expiry_needs_an_unchanged_counter_for_a_whole_lease_duration() {
        let t0 = Instant::now();
        let d = Duration::from_secs(10);
        let mut obs = Observations::default();
        let mut l = lease("s", Some("a"), Checkpoint::TrimHorizon, &[]);
        obs.observe(std::slice::from_ref(&l), t0);
        assert!(!obs.expired(&l, t0 + Duration::from_secs(9), d));
        assert!(obs.expired(&l, t0 + Duration::from_secs(11), d));
        l.counter += 1;
        obs.observe(std::slice::from_ref(&l), t0 + Duration::from_secs(11));
        assert!(!obs.expired(&l, t0 + Duration::from_secs(12), d), "renewed");
    }
}
