//! The X-Ray daemon's UDP protocol, so apps instrumented with the AWS X-Ray SDKs send to
//! Tidewater unchanged (`AWS_XRAY_DAEMON_ADDRESS`).
//!
//! Each datagram is the header line `{"format":"json","version":1}`, a newline, and one
//! segment document: a whole segment, an in-progress segment, or a subsegment streamed on
//! its own (`"type":"subsegment"` with `trace_id` and `parent_id`). Documents are checked
//! minimally and travel the bus as they came, as one line each; the processors send them to
//! X-Ray. UDP has no way to push back: a datagram that is malformed, or that arrives while
//! the collector is at its memory limit, is counted, logged (at most once a second) and
//! dropped, as the X-Ray daemon itself drops what it cannot buffer.

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytesize::ByteSize;
use serde::Deserialize;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::ingest::Ingest;
use crate::partition::XraySegment;

/// The X-Ray daemon's largest datagram (its receive buffer is 64 KiB).
pub const MAX_DATAGRAM_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BadDatagram {
    TooLarge(usize),
    NotUtf8,
    /// No `{"format":"json","version":1}` line first.
    Header(String),
    /// The document is not a JSON object.
    Json(String),
    /// A JSON object without what X-Ray needs to place it.
    Fields(&'static str),
}

impl BadDatagram {
    /// Metric label.
    pub fn label(&self) -> &'static str {
        match self {
            BadDatagram::TooLarge(_) => "too_large",
            BadDatagram::NotUtf8 => "not_utf8",
            BadDatagram::Header(_) => "header",
            BadDatagram::Json(_) => "json",
            BadDatagram::Fields(_) => "fields",
        }
    }
}

impl fmt::Display for BadDatagram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadDatagram::TooLarge(n) => {
                write!(f, "datagram of {n} bytes, over {MAX_DATAGRAM_BYTES}")
            }
            BadDatagram::NotUtf8 => write!(f, "datagram is not UTF-8"),
            BadDatagram::Header(why) => write!(
                f,
                "expected the header line {{\"format\":\"json\",\"version\":1}}: {why}"
            ),
            BadDatagram::Json(why) => write!(f, "segment document is not a JSON object: {why}"),
            BadDatagram::Fields(why) => write!(f, "segment document {why}"),
        }
    }
}

/// One datagram into the document it carries, as a single line.
pub fn parse_datagram(data: &[u8]) -> Result<XraySegment, BadDatagram> {
    if data.len() > MAX_DATAGRAM_BYTES {
        return Err(BadDatagram::TooLarge(data.len()));
    }
    let text = std::str::from_utf8(data).map_err(|_| BadDatagram::NotUtf8)?;
    let (header, body) = text
        .split_once('\n')
        .ok_or_else(|| BadDatagram::Header("no newline after it".into()))?;

    #[derive(Deserialize)]
    struct Header {
        format: String,
        version: i64,
    }
    let h: Header = serde_json::from_str(header).map_err(|e| BadDatagram::Header(e.to_string()))?;
    if h.format != "json" || h.version != 1 {
        return Err(BadDatagram::Header(format!(
            "format {:?} version {}",
            h.format, h.version
        )));
    }

    // Deserialising into these few fields still checks the whole document's syntax.
    #[derive(Deserialize)]
    struct Minimal {
        id: Option<serde_json::Value>,
        trace_id: Option<serde_json::Value>,
        parent_id: Option<serde_json::Value>,
        #[serde(rename = "type")]
        kind: Option<serde_json::Value>,
    }
    let doc: Minimal = serde_json::from_str(body).map_err(|e| BadDatagram::Json(e.to_string()))?;
    // serde's derive also reads a struct from an array of its fields' values (so a document
    // that parsed is an object or an array); X-Ray takes objects only.
    if body.trim_start().starts_with('[') {
        return Err(BadDatagram::Json("it is an array".into()));
    }
    let id = doc.id.as_ref().and_then(|v| v.as_str());
    if id.is_none_or(str::is_empty) {
        return Err(BadDatagram::Fields("has no string \"id\""));
    }
    let Some(trace_id) = doc.trace_id.as_ref().and_then(|v| v.as_str()) else {
        return Err(BadDatagram::Fields("has no string \"trace_id\""));
    };
    let streamed_subsegment = doc.kind.as_ref().and_then(|v| v.as_str()) == Some("subsegment");
    if streamed_subsegment && doc.parent_id.as_ref().and_then(|v| v.as_str()).is_none() {
        return Err(BadDatagram::Fields(
            "is a subsegment sent alone without a string \"parent_id\"",
        ));
    }
    // Raw line breaks can only be whitespace between JSON tokens (inside strings they are
    // escaped), so turning them into spaces keeps the document and makes it one line.
    let document = body.trim().replace(['\n', '\r'], " ");
    Ok(XraySegment {
        trace_id: trace_id.to_string(),
        document,
    })
}

/// Binds now, so a taken port fails start-up with a clear error, and serves until `stop`;
/// documents already received are handed to the pipeline before the task ends.
pub async fn serve(
    addr: SocketAddr,
    receive_buffer: ByteSize,
    ingest: Arc<Ingest>,
    stop: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let requested = usize::try_from(receive_buffer.as_u64()).unwrap_or(usize::MAX);
    let (socket, effective) = bind(addr, requested)
        .map_err(|e| anyhow::anyhow!("cannot listen for X-Ray segments on udp {addr}: {e}"))?;
    let socket = UdpSocket::from_std(socket)?;
    let local = socket.local_addr()?;
    metrics::gauge!("tidewater_collector_xray_receive_buffer_bytes").set(effective as f64);
    // Linux reports twice what it granted (the extra is its bookkeeping), so only a report
    // under the request means the request was cut.
    if effective < requested {
        tracing::warn!(
            requested = %receive_buffer,
            effective = %ByteSize::b(effective as u64),
            "X-Ray UDP receive buffer is smaller than configured: the kernel caps it at \
             net.core.rmem_max without CAP_NET_ADMIN; raise that sysctl or expect drops in bursts"
        );
    } else {
        tracing::info!(
            requested = %receive_buffer,
            effective = %ByteSize::b(effective as u64),
            "X-Ray UDP receive buffer set"
        );
    }
    kernel_drops::watch(&socket, stop.clone());
    let task = tokio::spawn(async move {
        // One byte more than allowed, so an oversized datagram shows as such.
        let mut buf = vec![0u8; MAX_DATAGRAM_BYTES + 1];
        let mut in_flight = JoinSet::new();
        let mut bad_log = Throttled::new(Duration::from_secs(1));
        loop {
            tokio::select! {
                received = socket.recv_from(&mut buf) => match received {
                    Ok((n, peer)) => match parse_datagram(&buf[..n]) {
                        Ok(segment) => {
                            let ingest = ingest.clone();
                            in_flight.spawn(async move {
                                if let Err(e) = ingest.xray_segments(vec![segment]).await {
                                    tracing::debug!(error = %e, "X-Ray segment dropped");
                                }
                            });
                        }
                        Err(bad) => {
                            metrics::counter!("tidewater_collector_xray_bad_datagrams_total", "reason" => bad.label()).increment(1);
                            if let Some(suppressed) = bad_log.ready() {
                                tracing::warn!(%peer, error = %bad, suppressed, "bad X-Ray datagram dropped");
                            }
                        }
                    },
                    // E.g. ICMP port unreachable reported on some platforms: not fatal.
                    Err(e) => tracing::debug!(error = %e, "X-Ray UDP receive error"),
                },
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                _ = stop.cancelled() => break,
            }
        }
        while in_flight.join_next().await.is_some() {}
    });
    tracing::info!(addr = %local, "X-Ray daemon protocol (UDP) listening");
    Ok((local, task))
}

/// A non-blocking UDP socket bound to `addr` with (at least, if the kernel allows)
/// `receive_buffer` bytes of receive buffer, and the size the kernel reports for it.
fn bind(addr: SocketAddr, receive_buffer: usize) -> io::Result<(std::net::UdpSocket, usize)> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    // Sized before binding, so no datagram ever meets the default buffer.
    set_receive_buffer(&socket, receive_buffer)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    let effective = socket.recv_buffer_size()?;
    Ok((socket.into(), effective))
}

#[cfg(target_os = "linux")]
fn set_receive_buffer(socket: &Socket, size: usize) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    // The kernel doubles the value and keeps it in an int.
    let value = libc::c_int::try_from(size)
        .unwrap_or(libc::c_int::MAX)
        .min(libc::c_int::MAX / 2);
    // SO_RCVBUFFORCE ignores net.core.rmem_max, whose default (about 200 KiB) is what lost
    // half of a burst; it needs CAP_NET_ADMIN, without which SO_RCVBUF gets what the cap allows.
    // SAFETY: a valid socket, and a pointer to a c_int with its exact length.
    let forced = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if forced == 0 {
        return Ok(());
    }
    socket.set_recv_buffer_size(value as usize)
}

#[cfg(not(target_os = "linux"))]
fn set_receive_buffer(socket: &Socket, size: usize) -> io::Result<()> {
    socket.set_recv_buffer_size(size)
}

/// Datagrams the kernel drops when the receive buffer is full never reach the process, so
/// only the kernel's own per-socket counter can show them.
mod kernel_drops {
    use tokio::net::UdpSocket;
    use tokio_util::sync::CancellationToken;

    #[cfg(not(target_os = "linux"))]
    pub fn watch(_socket: &UdpSocket, _stop: CancellationToken) {}

    /// Adds the socket's kernel drops to
    /// `tidewater_collector_xray_kernel_dropped_datagrams_total` every second until `stop`.
    #[cfg(target_os = "linux")]
    pub fn watch(socket: &UdpSocket, stop: CancellationToken) {
        use std::time::Duration;

        let dropped = metrics::counter!("tidewater_collector_xray_kernel_dropped_datagrams_total");
        // Registered at zero, so a dashboard can tell "no drops" from "not measured".
        dropped.increment(0);
        let inode = match socket_inode(socket) {
            Ok(inode) => inode,
            Err(e) => {
                tracing::warn!(error = %e, "cannot find the X-Ray UDP socket's inode: its kernel drops will not be counted");
                return;
            }
        };
        let table = if socket.local_addr().is_ok_and(|a| a.is_ipv6()) {
            "/proc/self/net/udp6"
        } else {
            "/proc/self/net/udp"
        };
        tokio::spawn(async move {
            let mut counted = 0u64;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let last = tokio::select! {
                    _ = tick.tick() => false,
                    // One more read, for what the last partial second dropped.
                    _ = stop.cancelled() => true,
                };
                // Once the socket is closed its line is gone: nothing left to count.
                let Some(drops) = std::fs::read_to_string(table)
                    .ok()
                    .and_then(|text| drops_for_inode(&text, inode))
                else {
                    break;
                };
                dropped.increment(drops.saturating_sub(counted));
                counted = counted.max(drops);
                if last {
                    break;
                }
            }
        });
    }

    /// The inode `/proc/net/udp` lists the socket under: the `NNN` of the `socket:[NNN]`
    /// link its descriptor has in `/proc/self/fd`.
    #[cfg(target_os = "linux")]
    pub fn socket_inode(socket: &impl std::os::fd::AsRawFd) -> std::io::Result<u64> {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", socket.as_raw_fd()))?;
        link.to_str()
            .and_then(|l| l.strip_prefix("socket:["))
            .and_then(|l| l.strip_suffix(']'))
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("not a socket: {}", link.display())))
    }

    /// The `drops` column (the last) of the `/proc/net/udp` or `/proc/net/udp6` line whose
    /// `inode` column (the tenth) is `inode`. The header cannot be used to find columns: some
    /// of its names head one column (`tx_queue rx_queue`) and some two.
    #[cfg_attr(not(target_os = "linux"), allow(dead_code))]
    pub fn drops_for_inode(proc_net_udp: &str, inode: u64) -> Option<u64> {
        proc_net_udp.lines().skip(1).find_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 13 || fields[9].parse::<u64>().ok()? != inode {
                return None;
            }
            fields.last()?.parse().ok()
        })
    }
}

/// At most one log line per `every`, saying how many were skipped in between.
struct Throttled {
    every: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttled {
    fn new(every: Duration) -> Self {
        Throttled {
            every,
            last: None,
            suppressed: 0,
        }
    }

    fn ready(&mut self) -> Option<u64> {
        let now = Instant::now();
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < self.every)
        {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "{\"format\": \"json\", \"version\": 1}\n";

    fn datagram(doc: &str) -> Vec<u8> {
        format!("{HEADER}{doc}").into_bytes()
    }

    #[test]
    fn segments_and_streamed_subsegments_are_accepted() {
        let seg = r#"{"trace_id": "1-5759e988-bd862e3fe1be46a994272793", "id": "defdfd9912dc5a56", "name": "app",
 "start_time": 1.5, "in_progress": true}"#;
        let s = parse_datagram(&datagram(seg)).unwrap();
        assert_eq!(s.trace_id, "1-5759e988-bd862e3fe1be46a994272793");
        assert!(!s.document.contains('\n'));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&s.document).unwrap(),
            serde_json::from_str::<serde_json::Value>(seg).unwrap(),
            "the document is kept as it came"
        );

        let sub = r#"{"type":"subsegment","trace_id":"1-5759e988-bd862e3fe1be46a994272793","parent_id":"defdfd9912dc5a56","id":"53995c3f42cd8ad8","name":"S3","start_time":1,"end_time":2,"namespace":"aws"}"#;
        assert_eq!(parse_datagram(&datagram(sub)).unwrap().document, sub);
        // The compact header the Go and Java SDKs send.
        let compact = format!("{{\"format\":\"json\",\"version\":1}}\n{sub}");
        assert!(parse_datagram(compact.as_bytes()).is_ok());
    }

    #[test]
    fn bad_datagrams_say_why() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (b"{\"id\":\"a\",\"trace_id\":\"t\"}".to_vec(), "header"),
            (b"{\"format\":\"xml\",\"version\":1}\n{}".to_vec(), "header"),
            (b"garbage\n{}".to_vec(), "header"),
            (vec![0xff, 0xfe, b'\n'], "not_utf8"),
            (datagram("{\"id\":\"a\",\"trace_id\":"), "json"),
            (datagram("[1,2]"), "json"),
            (datagram("{\"trace_id\":\"t\"}"), "fields"),
            (datagram("{\"id\":\"a\"}"), "fields"),
            (datagram("{\"id\":7,\"trace_id\":\"t\"}"), "fields"),
            (
                datagram("{\"type\":\"subsegment\",\"id\":\"a\",\"trace_id\":\"t\"}"),
                "fields",
            ),
            (vec![b' '; MAX_DATAGRAM_BYTES + 1], "too_large"),
        ];
        for (data, label) in cases {
            let err = parse_datagram(&data).unwrap_err();
            assert_eq!(err.label(), label, "{err}");
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn kernel_drops_are_read_from_the_sockets_line() {
        let table = "\
   sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode ref pointer drops
  130: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 18744 2 0000000000000000 0
  512: 0100007F:07D0 00000000:0000 07 00000000:0001F400 00:00000000 00000000     0        0 5231871 2 ffff8f1c9a3e2000 53790
";
        assert_eq!(kernel_drops::drops_for_inode(table, 5231871), Some(53790));
        assert_eq!(kernel_drops::drops_for_inode(table, 18744), Some(0));
        assert_eq!(
            kernel_drops::drops_for_inode(table, 0),
            None,
            "the header is no socket"
        );
        assert_eq!(kernel_drops::drops_for_inode(table, 7), None);
        assert_eq!(kernel_drops::drops_for_inode("", 18744), None);
    }

    #[test]
    fn the_receive_buffer_is_as_large_as_the_kernel_allows() {
        let requested = 4 * 1024 * 1024;
        let (socket, effective) = bind("127.0.0.1:0".parse().unwrap(), requested).unwrap();
        // Linux reports double what it grants; without CAP_NET_ADMIN it grants at most
        // net.core.rmem_max.
        let cap = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .map(|max| 2 * max);
        assert!(
            effective > requested / 2 || Some(effective) == cap,
            "asked for {requested}, got {effective} (kernel cap {cap:?})"
        );
        assert!(socket.local_addr().unwrap().port() != 0);

        #[cfg(target_os = "linux")]
        {
            let inode = kernel_drops::socket_inode(&socket).unwrap();
            let table = std::fs::read_to_string("/proc/self/net/udp").unwrap();
            assert_eq!(kernel_drops::drops_for_inode(&table, inode), Some(0));
        }
    }

    #[test]
    fn bad_datagram_logs_are_throttled() {
        let mut t = Throttled::new(Duration::from_secs(3600));
        assert_eq!(t.ready(), Some(0));
        assert_eq!(t.ready(), None);
        assert_eq!(t.ready(), None);
        t.last = Some(Instant::now() - Duration::from_secs(7200));
        assert_eq!(t.ready(), Some(2));
    }
}
