//! A cap on the connections a listener holds open.
//!
//! Without one, 1,100 idle connections exhausted the process's open files and OTLP, events and
//! `/healthz` all stopped answering, with nothing logged. A listener at its cap stops accepting
//! (new connections wait in the kernel's backlog, so clients see latency, not errors) until a
//! connection closes; the admin listener has its own file descriptors left. A connection that
//! sends nothing is closed after `idle_timeout` ([`Counted::readable`], in [`super::serve`]);
//! an idle HTTP/1 one by hyper's header timeout, a dead HTTP/2 peer by its keep-alive pings.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// A connection that holds its listener's slot until it is dropped.
pub struct Counted {
    stream: TcpStream,
    _slot: OwnedSemaphorePermit,
    listener: &'static str,
}

impl Drop for Counted {
    fn drop(&mut self) {
        metrics::gauge!("tidewater_collector_open_connections", "listener" => self.listener)
            .decrement(1.0);
    }
}

/// Binds `addr` for a listener with a deep accept queue: at the connection cap new
/// connections wait there, and std's default of 128 would have the kernel drop their SYNs
/// (clients then time out after minutes instead of waiting their turn). The kernel caps it at
/// `net.core.somaxconn`.
pub fn bind(addr: std::net::SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

impl Counted {
    /// Resolves when the client has sent something (or closed). A connection that never
    /// sends a byte is otherwise held forever: hyper's header timeout starts only once it has
    /// seen which HTTP version the client speaks.
    pub async fn readable(&self) -> io::Result<()> {
        // A peek, not `readable()`, which may wake without data.
        self.stream.peek(&mut [0u8; 1]).await.map(drop)
    }
}

/// Accepts from `listener`, at most `max` connections open at once. `name` labels the
/// metrics (`tidewater_collector_open_connections{listener}`,
/// `tidewater_collector_connection_limit_reached_total{listener}`).
pub fn accept(
    listener: TcpListener,
    max: usize,
    name: &'static str,
) -> impl Stream<Item = io::Result<Counted>> {
    let slots = Arc::new(Semaphore::new(max.max(1)));
    futures::stream::unfold((listener, slots), move |(listener, slots)| async move {
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                metrics::counter!("tidewater_collector_connection_limit_reached_total", "listener" => name).increment(1);
                tracing::warn!(
                    listener = name,
                    max,
                    "at the connection limit (collector.max_connections): not accepting until one closes"
                );
                slots.clone().acquire_owned().await.ok()?
            }
        };
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    // Without TCP_NODELAY a response waits on the client's delayed ACK.
                    let _ = stream.set_nodelay(true);
                    metrics::gauge!("tidewater_collector_open_connections", "listener" => name)
                        .increment(1.0);
                    let counted = Counted {
                        stream,
                        _slot: slot,
                        listener: name,
                    };
                    return Some((Ok(counted), (listener, slots)));
                }
                // Out of file descriptors or a connection reset before it was accepted: the
                // listener itself is fine; wait a moment rather than spin.
                Err(e) => {
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    })
}

impl AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
