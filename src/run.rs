//! Wires configured components together: `up` runs both halves over one bus; `collector` and
//! `processor` run one each.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tidewater_bus::embedded::EmbeddedLog;
use tidewater_bus::{BusKind, Consumer, Producer};
use tidewater_collector::Collector;
use tidewater_processors::runtime::Processor;
use tidewater_processors::sink::Sink;
use tidewater_processors::sinks::cloudwatch_logs::CloudWatchLogsSink;
use tidewater_processors::sinks::elasticsearch::ElasticsearchSink;
use tidewater_processors::sinks::emf::EmfSink;
use tidewater_processors::sinks::file::FileSink;
use tidewater_processors::sinks::xray::XraySink;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Readiness};
use crate::config::Config;
use crate::self_metrics;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Role {
    Up,
    Collector,
    Processor,
}

impl Role {
    /// As in the command line, and as the `Role` dimension of the EMF self-metrics.
    pub fn label(self) -> &'static str {
        match self {
            Role::Up => "up",
            Role::Collector => "collector",
            Role::Processor => "processor",
        }
    }
    fn collects(self) -> bool {
        matches!(self, Role::Up | Role::Collector)
    }
    fn processes(self) -> bool {
        matches!(self, Role::Up | Role::Processor)
    }
}

/// The bus, opened once per process and shared by both halves in `up`.
enum Bus {
    Embedded(Arc<EmbeddedLog>),
    Kinesis(Box<tidewater_bus::kinesis::KinesisConfig>),
}

impl Bus {
    fn open(config: &Config) -> anyhow::Result<Bus> {
        match config.bus.kind {
            BusKind::Embedded => Ok(Bus::Embedded(EmbeddedLog::open(&config.bus.embedded)?)),
            BusKind::Kinesis => Ok(Bus::Kinesis(Box::new(config.bus.kinesis.clone()))),
        }
    }

    async fn producer(&self) -> anyhow::Result<Arc<dyn Producer>> {
        Ok(match self {
            Bus::Embedded(log) => Arc::new(log.producer()),
            Bus::Kinesis(k) => Arc::new(tidewater_bus::kinesis::producer(k).await?),
        })
    }

    async fn consumer(&self, group: &str) -> anyhow::Result<Box<dyn Consumer>> {
        Ok(match self {
            Bus::Embedded(log) => Box::new(log.consumer(group)?),
            Bus::Kinesis(k) => Box::new(
                tidewater_bus::kinesis::consumer(k, format!("{group}/{}", worker_id())).await?,
            ),
        })
    }
}

/// Unique per process, so a restarted worker never mistakes its predecessor's leases for
/// its own.
fn worker_id() -> String {
    format!("{}-{}", producer_name(), uuid::Uuid::new_v4().simple())
}

pub fn sinks(config: &Config) -> anyhow::Result<Vec<Arc<dyn Sink>>> {
    let mut sinks: Vec<Arc<dyn Sink>> = Vec::new();
    if config.sinks.file.enabled {
        sinks.push(Arc::new(FileSink::new(config.sinks.file.clone())?));
    }
    if config.sinks.xray.enabled {
        sinks.push(Arc::new(XraySink::new(config.sinks.xray.clone())?));
    }
    if config.sinks.emf.enabled {
        sinks.push(Arc::new(EmfSink::new(&config.sinks.emf)?));
    }
    if config.sinks.cloudwatch_logs.enabled {
        sinks.push(Arc::new(CloudWatchLogsSink::new(
            &config.sinks.cloudwatch_logs,
        )?));
    }
    if config.sinks.elasticsearch.enabled {
        sinks.push(Arc::new(ElasticsearchSink::new(
            config.sinks.elasticsearch.clone(),
        )?));
    }
    if config.sinks.otlp.enabled {
        let otlp = tidewater_processors::sinks::otlp::OtlpSink::new(&config.sinks.otlp)?;
        sinks.push(Arc::new(otlp));
    }
    if sinks.is_empty() {
        anyhow::bail!("no sink is enabled: enable at least one under [sinks]");
    }
    Ok(sinks)
}

/// What `check-config` prints: the components a role would start, and where.
pub fn describe(config: &Config, role: Role) -> Vec<String> {
    let mut lines = Vec::new();
    let c = &config.collector;
    if role.collects() {
        lines.push(format!(
            "collector: OTLP/gRPC + events gRPC on {}, OTLP/HTTP + POST /v1/events on {}",
            c.grpc_addr, c.http_addr
        ));
        lines.push(format!(
            "  X-Ray daemon protocol (UDP) on {}",
            c.xray_udp_addr
        ));
        lines.push(format!(
            "  batches of up to {} items / {} / {:?}, memory limit {}, max request {}",
            c.batch.max_items,
            c.batch.max_size,
            c.batch.timeout,
            c.memory_limit,
            c.max_request_size
        ));
    }
    match config.bus.kind {
        BusKind::Embedded => {
            let b = &config.bus.embedded;
            lines.push(format!(
                "bus: embedded log in {} ({} partitions, fsync {:?})",
                b.dir.display(),
                b.partitions,
                b.fsync
            ));
        }
        BusKind::Kinesis => {
            let k = &config.bus.kinesis;
            lines.push(format!(
                "bus: Kinesis stream {:?} (aggregation {}, records up to {}), leases in DynamoDB table {:?}, spool {}",
                k.stream,
                if k.aggregation { "on" } else { "off" },
                k.max_record_size,
                k.lease_table,
                k.spool.dir.display()
            ));
        }
    }
    if role.processes() {
        let p = &config.processor;
        lines.push(format!(
            "processor: group {:?}, rounds of up to {} records / {} decompressed, memory limit {}",
            p.group, p.max_poll_records, p.max_round_bytes, p.memory_limit
        ));
        if config.sinks.file.enabled {
            lines.push(format!("  sink file: {}", config.sinks.file.dir.display()));
        }
        if config.sinks.xray.enabled {
            match XraySink::new(config.sinks.xray.clone()) {
                Ok(sink) => lines.push(format!("  {}", sink.describe())),
                Err(e) => lines.push(format!("  sink xray: {e}")),
            }
        }
        let emf = &config.sinks.emf;
        if emf.enabled {
            lines.push(format!(
                "  sink emf: namespace {}, {:?} windows, log group {}",
                emf.namespace, emf.window, emf.log_group
            ));
        }
        let logs = &config.sinks.cloudwatch_logs;
        if logs.enabled {
            lines.push(format!(
                "  sink cloudwatch_logs: group {}, stream {}",
                logs.log_group, logs.log_stream
            ));
        }
        if config.sinks.otlp.enabled {
            lines.push(format!(
                "  {}",
                tidewater_processors::sinks::otlp::describe(&config.sinks.otlp)
            ));
        }
        let es = &config.sinks.elasticsearch;
        if es.enabled {
            lines.push(format!(
                "  sink elasticsearch: {} ({:?}, events {:?}{}, auth {:?})",
                es.url,
                es.layout,
                es.events_index,
                if es.logs {
                    format!(", logs {:?}", es.logs_index)
                } else {
                    String::new()
                },
                es.auth.kind
            ));
        }
    }
    lines.push(format!(
        "admin: /healthz /readyz /metrics on {}",
        config.admin.addr
    ));
    let emf = &config.telemetry.emf;
    if emf.enabled {
        lines.push(format!(
            "self-metrics: EMF on stdout every {:?}, namespace {}, Pipeline={:?} Role={:?}{}",
            emf.interval,
            emf.namespace,
            emf.pipeline,
            role.label(),
            if emf.service.is_empty() {
                String::new()
            } else {
                format!(" Service={:?}", emf.service)
            }
        ));
    }
    lines
}

pub async fn run(config: Config, role: Role) -> anyhow::Result<()> {
    let metrics = admin::install_metrics()?;
    let readiness = Readiness::default();
    let stop = CancellationToken::new();
    // Its own stop, cancelled once the components have stopped, so the last report carries
    // what they did while draining.
    let self_metrics_stop = CancellationToken::new();
    let self_metrics = config.telemetry.emf.enabled.then(|| {
        self_metrics::spawn(
            metrics.clone(),
            self_metrics::render::Settings::from_config(
                &config,
                role.label(),
                role.collects(),
                role.processes(),
            ),
            config.telemetry.emf.interval,
            std::io::stdout(),
            self_metrics_stop.clone(),
        )
    });
    admin::serve(
        config.admin.addr,
        readiness.clone(),
        metrics,
        stop.child_token(),
    )
    .await?;

    let bus_ready = readiness.component("bus");
    // Opening scans and checks the retained log: blocking work, kept off the async workers.
    let bus = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || Bus::open(&config)).await??
    };
    bus_ready.store(true, Ordering::Release);

    let collector = if role.collects() {
        let ready = readiness.component("collector");
        let collector =
            Collector::start(&config.collector, bus.producer().await?, producer_name()).await?;
        ready.store(true, Ordering::Release);
        Some(collector)
    } else {
        None
    };

    let processor_stop = CancellationToken::new();
    let processor = if role.processes() {
        let ready = readiness.component("processor");
        let processor = Processor::new(
            config.processor.clone(),
            bus.consumer(&config.processor.group).await?,
            sinks(&config)?,
        );
        let task = tokio::spawn(processor.run(processor_stop.clone()));
        ready.store(true, Ordering::Release);
        Some(task)
    } else {
        None
    };

    tracing::info!(role = ?role, "tidewater running");
    if role == Role::Up && config.sinks.file.enabled {
        tracing::info!(
            otlp_grpc = %config.collector.grpc_addr,
            otlp_http = %config.collector.http_addr,
            output = %config.sinks.file.dir.display(),
            "send OTLP or events here; the file sink writes what arrives to the output dir"
        );
    }
    let mut processor = processor;
    let processor_ended = async {
        match processor.as_mut() {
            Some(task) => task.await,
            None => std::future::pending().await,
        }
    };
    // A processor that stops on its own has failed: shut the rest down and exit non-zero, so
    // the orchestrator restarts the task instead of leaving a collector with no consumer.
    let mut outcome = Ok(());
    let mut processor_done = false;
    tokio::select! {
        _ = shutdown_signal() => tracing::info!("shutting down"),
        result = processor_ended => {
            processor_done = true;
            outcome = processor_outcome(result);
        }
    }
    // Collector first: it publishes what it holds, so a processor sees it now or next run.
    if let Some(collector) = collector {
        collector.shutdown().await;
    }
    processor_stop.cancel();
    if let Some(task) = processor.filter(|_| !processor_done) {
        outcome = processor_outcome(task.await);
    }
    self_metrics_stop.cancel();
    if let Some(task) = self_metrics {
        // Bounded: a log driver that stopped reading must not hold the exit.
        let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
    }
    stop.cancel();
    outcome
}

fn processor_outcome(
    result: Result<anyhow::Result<()>, tokio::task::JoinError>,
) -> anyhow::Result<()> {
    match result {
        Ok(r) => r.map_err(|e| e.context("processor failed")),
        Err(e) => Err(anyhow::anyhow!("processor panicked: {e}")),
    }
}

fn producer_name() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| format!("pid-{}", std::process::id()))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
