//! Kinesis Data Streams as the bus.
//!
//! - [`producer`]: the collector's side, batching every lane's publishes; [`put`] sends them
//!   with PutRecords within the service limits, KPL aggregation ([`aggregation`]), retry of
//!   only the failed records and per-shard adaptive throttling (`throttle`); the disk
//!   [`spool`] takes what the stream cannot take in time.
//! - [`consumer`]: the processors' side. Shards ([`shards`]) are shared among processors by
//!   leases in DynamoDB ([`leases`], kept by the `coordinator`), read with GetRecords within
//!   the per-shard limits (`reader`), de-aggregated, and checkpointed (sequence number plus
//!   sub-sequence) in the lease table.

pub mod aggregation;
pub mod config;
pub mod consumer;
mod coordinator;
mod error;
pub mod leases;
pub mod producer;
pub mod put;
mod reader;
pub mod shards;
pub mod spool;
mod throttle;

pub use config::KinesisConfig;
pub use consumer::KinesisConsumer;
pub use producer::KinesisProducer;

/// The SDK configuration from the standard AWS chain (region, credentials, and
/// `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_KINESIS` / `AWS_ENDPOINT_URL_DYNAMODB`), with
/// timeouts so that a stream that hangs is noticed and the producer can spool.
pub async fn aws_config() -> aws_config::SdkConfig {
    let timeouts = aws_config::timeout::TimeoutConfig::builder()
        .connect_timeout(std::time::Duration::from_secs(3))
        .operation_attempt_timeout(std::time::Duration::from_secs(10))
        .operation_timeout(std::time::Duration::from_secs(30))
        .build();
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(timeouts)
        .load()
        .await
}

/// A producer for `config.stream` with clients from the standard AWS chain.
pub async fn producer(config: &KinesisConfig) -> Result<KinesisProducer, crate::BusError> {
    let sdk = aws_config().await;
    KinesisProducer::start(aws_sdk_kinesis::Client::new(&sdk), config.clone()).await
}

/// A consumer (one worker of the group sharing `config.lease_table`) with clients from the
/// standard AWS chain. `worker` names this process in the lease table; it must be unique.
pub async fn consumer(
    config: &KinesisConfig,
    worker: String,
) -> Result<KinesisConsumer, crate::BusError> {
    let sdk = aws_config().await;
    KinesisConsumer::start(
        aws_sdk_kinesis::Client::new(&sdk),
        aws_sdk_dynamodb::Client::new(&sdk),
        config.clone(),
        worker,
    )
    .await
}
