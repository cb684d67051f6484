//! The admin listener: `/healthz` (the process is up), `/readyz` (every component it runs has
//! started: listeners bound, bus open, consumer running) and Prometheus `/metrics`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

type Flag = (&'static str, Arc<AtomicBool>);

/// Named readiness flags, one per component.
#[derive(Clone, Default)]
pub struct Readiness(Arc<std::sync::Mutex<Vec<Flag>>>);

impl Readiness {
    /// A flag for `component`, not ready until set.
    pub fn component(&self, component: &'static str) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        self.0
            .lock()
            .expect("not poisoned")
            .push((component, flag.clone()));
        flag
    }

    fn not_ready(&self) -> Vec<&'static str> {
        self.0
            .lock()
            .expect("not poisoned")
            .iter()
            .filter(|(_, f)| !f.load(Ordering::Acquire))
            .map(|(n, _)| *n)
            .collect()
    }
}

#[derive(Clone)]
struct AdminState {
    readiness: Readiness,
    metrics: PrometheusHandle,
}

/// Installs the Prometheus recorder for the `metrics` facade. Call once, before anything
/// records a metric.
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    let handle = PrometheusBuilder::new().install_recorder()?;
    let upkeep = handle.clone();
    // Histograms and summaries drain their buffers on upkeep; without it they grow.
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(std::time::Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

pub async fn serve(
    addr: SocketAddr,
    readiness: Readiness,
    metrics: PrometheusHandle,
    stop: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for admin on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|State(s): State<AdminState>| async move { s.metrics.render() }),
        )
        .with_state(AdminState { readiness, metrics });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
        {
            tracing::error!(error = %e, "admin server failed");
        }
    });
    tracing::info!(addr = %local, "admin listening (/healthz, /readyz, /metrics)");
    Ok(local)
}

async fn readyz(State(s): State<AdminState>) -> (StatusCode, String) {
    let mut waiting: Vec<String> = s
        .readiness
        .not_ready()
        .into_iter()
        .map(String::from)
        .collect();
    // A sink failing for longer than its `unhealthy_after`, named with its last error.
    waiting.extend(tidewater_processors::delivery::health::unhealthy());
    if waiting.is_empty() {
        (StatusCode::OK, "ready\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", waiting.join(", ")),
        )
    }
}
