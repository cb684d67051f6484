//! How the gRPC and HTTP listeners serve their connections, the same way for both: accepted
//! under the connection cap ([`super::connections`]), TLS when configured (the handshake in
//! the connection's own task, bounded by `body_timeout`, so a slow handshake holds up no one
//! else), then hyper with the limits a listener open to many clients needs: header sizes,
//! HTTP/2 streams per connection, idle and keep-alive timeouts. On stop, in-flight requests
//! finish and are answered before the pipeline shuts down.

use std::convert::Infallible;
use std::time::Duration;

use futures::StreamExt;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use super::connections;
use crate::config::CollectorConfig;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Serves `listener` with `service` until `stop`. `name` labels its metrics and logs.
pub fn spawn<S, B>(
    listener: TcpListener,
    name: &'static str,
    service: S,
    config: &CollectorConfig,
    tls: Option<TlsAcceptor>,
    stop: CancellationToken,
) -> tokio::task::JoinHandle<()>
where
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let header_size = config.max_header_size.as_u64() as usize;
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(config.idle_timeout)
        // hyper's floor for its read buffer, which bounds the header block.
        .max_buf_size(header_size.max(8192));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.max_concurrent_streams)
        .max_header_list_size(header_size as u32)
        .keep_alive_interval(config.idle_timeout)
        .keep_alive_timeout(Duration::from_secs(20));
    let handshake_timeout = config.body_timeout;
    let idle_timeout = config.idle_timeout;
    let mut incoming = Box::pin(connections::accept(listener, config.max_connections, name));
    tokio::spawn(async move {
        let graceful = GracefulShutdown::new();
        loop {
            let connection = tokio::select! {
                c = incoming.next() => c,
                _ = stop.cancelled() => break,
            };
            let Some(Ok(connection)) = connection else {
                continue;
            };
            let (builder, service, tls, watcher) = (
                builder.clone(),
                service.clone(),
                tls.clone(),
                graceful.watcher(),
            );
            tokio::spawn(async move {
                // Silent connections are closed after `idle_timeout` (TLS: the handshake's).
                if tokio::time::timeout(idle_timeout, connection.readable())
                    .await
                    .is_err()
                {
                    metrics::counter!("tidewater_collector_idle_connections_closed_total", "listener" => name).increment(1);
                    return;
                }
                let Some(tls) = tls else {
                    return serve(&builder, TokioIo::new(connection), service, watcher, name).await;
                };
                match tokio::time::timeout(handshake_timeout, tls.accept(connection)).await {
                    Ok(Ok(stream)) => {
                        serve(&builder, TokioIo::new(stream), service, watcher, name).await
                    }
                    Ok(Err(e)) => handshake_failed(name, "refused", &e.to_string()),
                    Err(_) => handshake_failed(name, "timeout", "no handshake within body_timeout"),
                }
            });
        }
        graceful.shutdown().await;
    })
}

async fn serve<I, S, B>(
    builder: &auto::Builder<TokioExecutor>,
    io: I,
    service: S,
    watcher: Watcher,
    name: &'static str,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: tower::Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let connection = builder
        .serve_connection(io, TowerToHyperService::new(service))
        .into_owned();
    if let Err(e) = watcher.watch(connection).await {
        tracing::debug!(listener = name, error = %e, "connection ended with an error");
    }
}

fn handshake_failed(name: &'static str, outcome: &'static str, why: &str) {
    metrics::counter!("tidewater_collector_tls_handshake_failures_total", "listener" => name, "outcome" => outcome).increment(1);
    tracing::debug!(listener = name, why, "TLS handshake failed");
}
