//! Tidewater's own telemetry: structured logs via `tracing` (text for people, JSON for log
//! pipelines), and, when `telemetry.otlp_endpoint` is set, its own spans exported over
//! OTLP/HTTP so an operator sees where a request's time went. Point it at another collector:
//! exporting to itself works but mixes Tidewater's spans with the apps'.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogConfig, LogFormat};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OTLP/HTTP traces endpoint for Tidewater's own spans, e.g.
    /// `http://otel-collector:4318/v1/traces`. Empty: not exported.
    pub otlp_endpoint: String,
    /// Which spans to export, in `RUST_LOG` syntax. The hot-path spans (per request, per
    /// batch, per round) are at debug level, so they cost nothing unless selected here.
    pub filter: String,
    /// Fraction of root spans kept (parent-based below them).
    pub sample_ratio: f64,
    pub service_name: String,
    /// Its own health as EMF lines on stdout (`[telemetry.emf]`, `src/self_metrics`).
    pub emf: crate::config::EmfTelemetryConfig,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: String::new(),
            filter: "tidewater=debug,tidewater_collector=debug,tidewater_processors=debug,tidewater_bus=debug".into(),
            sample_ratio: 1.0,
            service_name: "tidewater".into(),
            emf: Default::default(),
        }
    }
}

/// Flushes exported spans when dropped.
pub struct Guard(Option<SdkTracerProvider>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.0.take() {
            let _ = provider.shutdown_with_timeout(Duration::from_secs(5));
        }
    }
}

pub fn init(log: &LogConfig, telemetry: &TelemetryConfig) -> anyhow::Result<Guard> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&log.level));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let fmt = match log.format {
        LogFormat::Text => fmt.boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).boxed(),
    };
    let (otel, provider) = if telemetry.otlp_endpoint.is_empty() {
        (None, None)
    } else {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(&telemetry.otlp_endpoint)
            .build()?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                telemetry.sample_ratio,
            ))))
            .with_resource(
                Resource::builder()
                    .with_service_name(telemetry.service_name.clone())
                    .build(),
            )
            .build();
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("tidewater"))
            .with_filter(EnvFilter::try_new(&telemetry.filter)?);
        (Some(layer), Some(provider))
    };
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel)
        .try_init()?;
    Ok(Guard(provider))
}
