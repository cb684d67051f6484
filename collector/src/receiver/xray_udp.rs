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
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
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
    ingest: Arc<Ingest>,
    stop: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let socket = UdpSocket::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen for X-Ray segments on udp {addr}: {e}"))?;
    let local = socket.local_addr()?;
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
    fn bad_datagram_logs_are_throttled() {
        let mut t = Throttled::new(Duration::from_secs(3600));
        assert_eq!(t.ready(), Some(0));
        assert_eq!(t.ready(), None);
        assert_eq!(t.ready(), None);
        t.last = Some(Instant::now() - Duration::from_secs(7200));
        assert_eq!(t.ready(), Some(2));
    }
}
