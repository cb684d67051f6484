//! What the Kinesis end-to-end tests share: kinesalite for the stream and moto for the lease
//! table, a client to set the stream up and read back what it stored, and the environment
//! that points `tidewater` at both.
#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kinesis::types::{ShardIteratorType, StreamStatus};
use aws_sdk_kinesis::Client;
use prost::Message;
use tidewater_bus::kinesis::aggregation::deaggregate;
use tidewater_proto::Envelope;

use crate::common::peers::{self, Peer};

pub mod proxy;

pub struct Peers {
    pub kinesis: Peer,
    pub dynamodb: Peer,
    pub rt: tokio::runtime::Runtime,
    pub client: Client,
}

impl Peers {
    pub fn start() -> Peers {
        let kinesis = peers::kinesalite();
        let dynamodb = peers::moto();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let client = kinesis_client(&kinesis.endpoint());
        Peers {
            kinesis,
            dynamodb,
            rt,
            client,
        }
    }

    /// `tidewater` settings for `stream`, with leases in `lease_table`; short intervals so
    /// hand-overs happen within a test's patience.
    pub fn env(&self, stream: &str, lease_table: &str) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = [
            ("AWS_ENDPOINT_URL_KINESIS", self.kinesis.endpoint()),
            ("AWS_ENDPOINT_URL_DYNAMODB", self.dynamodb.endpoint()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("TIDEWATER_BUS__KIND", "kinesis".into()),
            ("TIDEWATER_BUS__KINESIS__STREAM", stream.into()),
            ("TIDEWATER_BUS__KINESIS__LEASE_TABLE", lease_table.into()),
            ("TIDEWATER_BUS__KINESIS__LEASE_DURATION", "3s".into()),
            ("TIDEWATER_BUS__KINESIS__SHARD_SYNC_INTERVAL", "1s".into()),
            ("TIDEWATER_BUS__KINESIS__IDLE_POLL_INTERVAL", "200ms".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        env.push(("RUST_LOG".into(), "info,tidewater_bus=debug".into()));
        env
    }

    pub fn create_stream(&self, name: &str, shards: i32) {
        self.rt.block_on(create_stream(&self.client, name, shards));
    }

    /// Every record the stream holds, shard by shard from the oldest, as stored.
    pub fn stored(&self, stream: &str) -> Vec<Stored> {
        self.rt.block_on(read_stream(&self.client, stream))
    }
}

pub fn dynamodb_client(endpoint: &str) -> aws_sdk_dynamodb::Client {
    let config = aws_sdk_dynamodb::Config::builder()
        .behavior_version(aws_sdk_dynamodb::config::BehaviorVersion::latest())
        .region(aws_sdk_dynamodb::config::Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(aws_sdk_dynamodb::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .build();
    aws_sdk_dynamodb::Client::from_conf(config)
}

pub fn kinesis_client(endpoint: &str) -> Client {
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("testing", "testing", None, None, "test"))
        .build();
    Client::from_conf(config)
}

pub async fn create_stream(client: &Client, name: &str, shards: i32) {
    client
        .create_stream()
        .stream_name(name)
        .shard_count(shards)
        .send()
        .await
        .unwrap();
    wait_active(client, name).await;
}

pub async fn wait_active(client: &Client, name: &str) {
    for _ in 0..100 {
        let d = client
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await
            .unwrap();
        if d.stream_description_summary().map(|s| s.stream_status()) == Some(&StreamStatus::Active)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("stream {name} not active");
}

#[derive(Debug, Clone)]
pub struct Stored {
    pub shard: String,
    pub sequence: String,
    pub partition_key: String,
    pub data: Vec<u8>,
}

pub async fn read_stream(client: &Client, stream: &str) -> Vec<Stored> {
    let shards = client
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .unwrap();
    let mut out = Vec::new();
    for shard in shards.shards() {
        let mut it = client
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard.shard_id())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap()
            .shard_iterator()
            .map(String::from);
        while let Some(i) = it.take() {
            let r = client.get_records().shard_iterator(i).send().await.unwrap();
            for rec in r.records() {
                out.push(Stored {
                    shard: shard.shard_id().to_string(),
                    sequence: rec.sequence_number().to_string(),
                    partition_key: rec.partition_key().unwrap_or_default().to_string(),
                    data: rec.data().as_ref().to_vec(),
                });
            }
            if r.records().is_empty() {
                break;
            }
            it = r.next_shard_iterator().map(String::from);
        }
    }
    out
}

/// The bus envelopes inside stored records (de-aggregated with our own reader), by signal.
pub fn envelopes(stored: &[Stored]) -> HashMap<i32, Vec<Envelope>> {
    let mut out: HashMap<i32, Vec<Envelope>> = HashMap::new();
    for s in stored {
        let data = bytes::Bytes::from(s.data.clone());
        let users = match deaggregate(&data).unwrap() {
            Some(users) => users.into_iter().map(|u| u.data).collect(),
            None => vec![data],
        };
        for u in users {
            let e = Envelope::decode(u).unwrap();
            out.entry(e.signal).or_default().push(e);
        }
    }
    out
}
