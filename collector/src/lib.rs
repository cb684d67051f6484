//! The collector sidecar: receive, batch, publish.
//!
//! Data path: a receiver ([`receiver::grpc`], [`receiver::http`], [`receiver::xray_udp`])
//! reads a request and hands it to [`ingest::Ingest`], which splits it by bus partition
//! ([`partition`]) and submits the parts to the [`pipeline::Pipeline`]; the pipeline batches
//! per partition, compresses, and publishes to the bus, and only then is the client answered.
//! OTLP protobuf is split and stored on its wire bytes, never decoded ([`wire`]). Before the
//! split, [`redact`] removes secrets and personal data from every signal.

pub mod config;
pub mod error;
pub mod events;
#[cfg(test)]
mod fuzz;
pub mod ingest;
pub mod memory;
pub mod partition;
pub mod pipeline;
pub mod receiver;
pub mod redact;
pub mod split;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;

use tidewater_bus::Producer;
use tokio_util::sync::CancellationToken;

pub use config::CollectorConfig;

/// A running collector.
pub struct Collector {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub xray_udp_addr: SocketAddr,
    pipeline: Arc<pipeline::Pipeline>,
    stop: CancellationToken,
    servers: Vec<tokio::task::JoinHandle<()>>,
}

impl Collector {
    /// Binds every listener (failing fast if one cannot bind) and starts serving.
    pub async fn start(
        config: &CollectorConfig,
        producer: Arc<dyn Producer>,
        producer_name: String,
    ) -> anyhow::Result<Collector> {
        let stop = CancellationToken::new();
        let listener = receiver::Listener::new(config, stop.child_token())?;
        let pipeline = pipeline::Pipeline::start(config, producer, producer_name);
        let ingest = Arc::new(ingest::Ingest::new(pipeline.clone(), config)?);
        let (grpc_addr, grpc) = receiver::grpc::serve(
            config.grpc_addr,
            ingest.clone(),
            config,
            listener.clone(),
            stop.child_token(),
        )
        .await?;
        let (http_addr, http) = receiver::http::serve(
            config.http_addr,
            ingest.clone(),
            config,
            listener,
            stop.child_token(),
        )
        .await?;
        let (xray_udp_addr, xray_udp) = receiver::xray_udp::serve(
            config.xray_udp_addr,
            config.xray_udp_receive_buffer,
            ingest,
            stop.child_token(),
        )
        .await?;
        Ok(Collector {
            grpc_addr,
            http_addr,
            xray_udp_addr,
            pipeline,
            stop,
            servers: vec![grpc, http, xray_udp],
        })
    }

    /// Stops accepting, lets in-flight requests finish, and publishes what is batched, so
    /// nothing acknowledged or in flight is left behind.
    pub async fn shutdown(self) {
        self.stop.cancel();
        for server in self.servers {
            let _ = server.await;
        }
        self.pipeline.shutdown().await;
    }
}
