//! The chaos suite (issue 14): a steady load from real clients while, in turn, processes are
//! SIGKILLed and restarted, the bus is stopped, a sink fails, the bus's disk fills up and the
//! clock jumps. Each scenario counts what was sent, acknowledged and delivered, and asserts
//! the promise of the README's "Delivery guarantees": no acknowledged item is ever lost, and
//! duplicates stay within one round per partition and SIGKILL.
//!
//! The test command runs a short version (a few seconds of load, two or three faults each);
//! `scripts/chaos` sets `TIDEWATER_CHAOS_SECONDS` for the full one and collects the tables.
//!
//! Why the accounting is the way it is: a client only knows what it was told. A span counts as
//! acknowledged when its request got a 2xx with no partial rejection; as lost when it was
//! acknowledged and never reached the sink. A request whose outcome the client could not know
//! (the connection died mid-request, a 503 after the data may have been written) is sent
//! again, as a real exporter does, so its spans may legitimately arrive twice: such duplicates
//! are the client's retries and are reported apart from the processor's replays, which are
//! what the README bounds.

use std::collections::{HashMap, HashSet};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use serde_json::{json, Value};

use crate::common::bulk_proxy::BulkProxy;
use crate::common::es::{es_env, Es};
use crate::common::peers;
use crate::common::*;
use crate::kinesis_support::{kinesis_client, Peers};

/// Spans per request: `otlp_traces(batch, TRACES, SPANS)`.
const TRACES: u32 = 4;
const SPANS: u32 = 5;
const PER_REQUEST: u64 = (TRACES * SPANS) as u64;
/// Requests per second per load worker (two over HTTP, two over gRPC): 400 spans/s in all,
/// steady, well under what a debug build takes, so faults rather than load are what is tested.
const RATE: f64 = 5.0;
/// Small rounds and batches make the duplicate bound tight: one round is at most
/// `MAX_POLL_RECORDS` bus records per partition of at most `MAX_ITEMS` spans each.
const MAX_POLL_RECORDS: u64 = 8;
const MAX_ITEMS: u64 = 100;
const EMBEDDED_PARTITIONS: u64 = 4;
const SHARDS: u64 = 2;

/// `TIDEWATER_CHAOS_SECONDS` (seconds of load per scenario, or per phase; unset: the short
/// version) and `TIDEWATER_CHAOS_REPORT` (a file the rows are appended to), read once.
struct Settings {
    seconds: Option<u64>,
    report: Option<PathBuf>,
}

/// Read once and then taken out of this process's environment: `tidewater` reads every
/// `TIDEWATER_*` variable as a configuration key and refuses unknown ones, and the processes
/// the tests start inherit the environment. Every chaos test calls this before it starts one.
fn settings() -> &'static Settings {
    static SETTINGS: std::sync::LazyLock<Settings> = std::sync::LazyLock::new(|| {
        let settings = Settings {
            seconds: std::env::var("TIDEWATER_CHAOS_SECONDS").ok().map(|v| {
                v.parse()
                    .expect("TIDEWATER_CHAOS_SECONDS is a number of seconds")
            }),
            report: std::env::var_os("TIDEWATER_CHAOS_REPORT").map(PathBuf::from),
        };
        std::env::remove_var("TIDEWATER_CHAOS_SECONDS");
        std::env::remove_var("TIDEWATER_CHAOS_REPORT");
        settings
    });
    &SETTINGS
}

fn load_seconds(short: u64) -> Duration {
    Duration::from_secs(settings().seconds.unwrap_or(short))
}

fn long_run() -> bool {
    settings().seconds.is_some()
}

/// Where the load goes; a restarted collector may come back on other ports.
#[derive(Clone, Default)]
struct Target {
    http: String,
    grpc: String,
}

impl Target {
    fn of(tw: &Tidewater) -> Target {
        Target {
            http: format!("http://127.0.0.1:{}", tw.http),
            grpc: tw.grpc_url(),
        }
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Traces,
    Events,
}

#[derive(Clone, Copy)]
enum Transport {
    Http,
    Grpc,
}

/// What one attempt came to, as a real exporter would see it.
enum Outcome {
    Ack,
    /// Refused before anything was written (429, RESOURCE_EXHAUSTED, connection refused):
    /// send again after the pause.
    Refused(Duration),
    /// Maybe written, maybe not (connection lost mid-request, 503 / UNAVAILABLE): send again;
    /// a duplicate of it is the client's doing.
    Unknown(String),
    /// Refused for good: a bug in the test or in Tidewater, never expected here.
    Rejected(String),
}

/// What the load driver knows: item keys are `batch << 32 | trace << 16 | span + 1` (the span
/// id `otlp_traces` gives) for traces, `batch << 16 | index` for events, and the span id for
/// spans of the OpenTelemetry SDK app.
#[derive(Default)]
struct Ledger {
    sent: HashSet<u64>,
    /// Acknowledged items, with when.
    acked: Vec<(u64, Instant)>,
    /// Items whose request had attempts of unknown outcome, and how many.
    unknown: HashMap<u64, u32>,
    refusals: u64,
    /// A few reasons for attempts of unknown outcome, for the report.
    unknown_reasons: Vec<String>,
    rejected: Vec<String>,
    last_ack: Option<Instant>,
    sdk_runs: u32,
    sdk_failed_runs: u32,
}

struct Load {
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
    target: Arc<Mutex<Target>>,
    threads: Vec<JoinHandle<()>>,
}

fn span_keys(batch: u32) -> impl Iterator<Item = u64> {
    (0..TRACES).flat_map(move |t| {
        (0..SPANS).map(move |s| (u64::from(batch) << 32) | (u64::from(t) << 16) | u64::from(s + 1))
    })
}

fn event_keys(batch: u32) -> impl Iterator<Item = u64> {
    (0..PER_REQUEST).map(move |i| (u64::from(batch) << 16) | i)
}

fn message_id(key: u64) -> String {
    format!("chaos-{key:016x}")
}

impl Load {
    /// Starts the load: `kind` from four workers (traces: two HTTP, two gRPC; events: four
    /// HTTP) at `RATE` requests/s each, batches numbered from `first_batch`, and with `sdk`
    /// the OpenTelemetry Python SDK app in a loop beside them.
    fn start(kind: Kind, target: Target, first_batch: u32, sdk: bool) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let target = Arc::new(Mutex::new(target));
        let next = Arc::new(AtomicU32::new(first_batch));
        let mut threads = Vec::new();
        for w in 0..4 {
            let transport = if kind == Kind::Traces && w % 2 == 1 {
                Transport::Grpc
            } else {
                Transport::Http
            };
            let (stop, ledger, target, next) =
                (stop.clone(), ledger.clone(), target.clone(), next.clone());
            threads.push(std::thread::spawn(move || {
                worker(kind, transport, &stop, &ledger, &target, &next)
            }));
        }
        if sdk {
            let (stop, ledger, target) = (stop.clone(), ledger.clone(), target.clone());
            threads.push(std::thread::spawn(move || {
                sdk_loop(&stop, &ledger, &target)
            }));
        }
        Load {
            stop,
            ledger,
            target,
            threads,
        }
    }

    fn retarget(&self, target: Target) {
        *self.target.lock().unwrap() = target;
    }

    /// Stops sending new requests; those under way are finished (retried until acknowledged,
    /// or given up after a while, then they count as sent and not acknowledged).
    fn finish(self) -> Ledger {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        Arc::try_unwrap(self.ledger)
            .ok()
            .unwrap()
            .into_inner()
            .unwrap()
    }

    fn last_ack(&self) -> Option<Instant> {
        self.ledger.lock().unwrap().last_ack
    }

    fn acked_before(&self, t: Instant) -> Vec<u64> {
        self.ledger
            .lock()
            .unwrap()
            .acked
            .iter()
            .filter(|(_, at)| *at <= t)
            .map(|(k, _)| *k)
            .collect()
    }
}

fn worker(
    kind: Kind,
    transport: Transport,
    stop: &AtomicBool,
    ledger: &Mutex<Ledger>,
    target: &Mutex<Target>,
    next: &AtomicU32,
) {
    let interval = Duration::from_secs_f64(1.0 / RATE);
    let http = reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(40))
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut grpc: Option<(String, TraceServiceClient<tonic::transport::Channel>)> = None;
    let mut due = Instant::now();
    while !stop.load(Ordering::SeqCst) {
        let batch = next.fetch_add(1, Ordering::SeqCst);
        let keys: Vec<u64> = match kind {
            Kind::Traces => span_keys(batch).collect(),
            Kind::Events => event_keys(batch).collect(),
        };
        ledger.lock().unwrap().sent.extend(&keys);
        let body = match kind {
            Kind::Traces => otlp_traces(batch, TRACES, SPANS).encode_to_vec(),
            Kind::Events => serde_json::to_vec(&json!({"events": keys.iter().map(|k| json!({
                "message_id": message_id(*k), "name": "Chaos Tested", "user_id": format!("u-{}", k % 97),
                "timestamp": "2026-11-01T12:00:00Z", "properties": {"n": k}})).collect::<Vec<_>>()}))
            .unwrap(),
        };
        let mut give_up: Option<Instant> = None;
        loop {
            let t = target.lock().unwrap().clone();
            let outcome = match (kind, transport) {
                (Kind::Traces, Transport::Http) => post_traces(&http, &t.http, &body),
                (Kind::Events, _) => post_events(&http, &t.http, &body, keys.len()),
                (Kind::Traces, Transport::Grpc) => {
                    rt.block_on(grpc_export(&mut grpc, &t.grpc, batch))
                }
            };
            let pause = match outcome {
                Outcome::Ack => {
                    let now = Instant::now();
                    let mut l = ledger.lock().unwrap();
                    l.acked.extend(keys.iter().map(|k| (*k, now)));
                    l.last_ack = Some(now);
                    break;
                }
                Outcome::Refused(pause) => {
                    ledger.lock().unwrap().refusals += 1;
                    pause
                }
                Outcome::Unknown(why) => {
                    let mut l = ledger.lock().unwrap();
                    l.refusals += 1;
                    if l.unknown_reasons.len() < 3 {
                        l.unknown_reasons.push(why);
                    }
                    for k in &keys {
                        *l.unknown.entry(*k).or_default() += 1;
                    }
                    grpc = None;
                    Duration::from_millis(250)
                }
                Outcome::Rejected(why) => {
                    ledger
                        .lock()
                        .unwrap()
                        .rejected
                        .push(format!("batch {batch}: {why}"));
                    break;
                }
            };
            // Once the run is over, a request still refused is abandoned after a while, as an
            // exporter's timeout would: sent, not acknowledged.
            if stop.load(Ordering::SeqCst) {
                let g = *give_up.get_or_insert_with(|| Instant::now() + Duration::from_secs(60));
                if Instant::now() > g {
                    break;
                }
            }
            std::thread::sleep(pause);
        }
        due += interval;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        } else {
            // Behind (a long outage): carry on at the steady rate instead of bursting.
            due = now;
        }
    }
}

fn retry_after(resp: &reqwest::blocking::Response) -> Duration {
    let secs = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(1.0);
    Duration::from_secs_f64(secs.clamp(0.1, 2.0))
}

fn http_failure(e: reqwest::Error) -> Outcome {
    if e.is_connect() {
        Outcome::Refused(Duration::from_millis(250))
    } else {
        Outcome::Unknown(e.to_string())
    }
}

fn post_traces(http: &reqwest::blocking::Client, base: &str, body: &[u8]) -> Outcome {
    let resp = match http
        .post(format!("{base}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(body.to_vec())
        .send()
    {
        Ok(r) => r,
        Err(e) => return http_failure(e),
    };
    match resp.status().as_u16() {
        200 => {
            let Ok(bytes) = resp.bytes() else {
                return Outcome::Unknown("body lost".into());
            };
            match ExportTraceServiceResponse::decode(bytes.as_ref()) {
                Ok(r)
                    if r.partial_success
                        .as_ref()
                        .is_none_or(|p| p.rejected_spans == 0) =>
                {
                    Outcome::Ack
                }
                Ok(r) => Outcome::Rejected(format!("partial success {:?}", r.partial_success)),
                Err(e) => Outcome::Rejected(format!("undecodable 200: {e}")),
            }
        }
        429 => Outcome::Refused(retry_after(&resp)),
        // 503 may come after part of the request was written (ack timeout, a partition that
        // failed): its outcome is unknown.
        408 | 503 => {
            let pause = retry_after(&resp);
            std::thread::sleep(pause);
            Outcome::Unknown(format!("{}", resp.status()))
        }
        s => Outcome::Rejected(format!("HTTP {s}: {}", resp.text().unwrap_or_default())),
    }
}

fn post_events(http: &reqwest::blocking::Client, base: &str, body: &[u8], n: usize) -> Outcome {
    let resp = match http
        .post(format!("{base}/v1/events"))
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
    {
        Ok(r) => r,
        Err(e) => return http_failure(e),
    };
    match resp.status().as_u16() {
        200 => match resp.json::<Value>() {
            Ok(a)
                if a["accepted"] == n && a["rejected"].as_array().is_some_and(|r| r.is_empty()) =>
            {
                Outcome::Ack
            }
            Ok(a) => Outcome::Rejected(format!("partial: {a}")),
            Err(e) => Outcome::Unknown(format!("answer lost: {e}")),
        },
        429 => Outcome::Refused(retry_after(&resp)),
        408 | 503 => {
            std::thread::sleep(retry_after(&resp));
            Outcome::Unknown(format!("{}", resp.status()))
        }
        s => Outcome::Rejected(format!("HTTP {s}: {}", resp.text().unwrap_or_default())),
    }
}

async fn grpc_export(
    client: &mut Option<(String, TraceServiceClient<tonic::transport::Channel>)>,
    url: &str,
    batch: u32,
) -> Outcome {
    if client.as_ref().is_none_or(|(u, _)| u != url) {
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(40));
        match endpoint.connect().await {
            Ok(ch) => *client = Some((url.to_string(), TraceServiceClient::new(ch))),
            Err(_) => return Outcome::Refused(Duration::from_millis(250)),
        }
    }
    let (_, c) = client.as_mut().unwrap();
    match c.export(otlp_traces(batch, TRACES, SPANS)).await {
        Ok(r) => match r.into_inner().partial_success {
            Some(p) if p.rejected_spans > 0 => Outcome::Rejected(format!("partial success {p:?}")),
            _ => Outcome::Ack,
        },
        Err(status) => {
            *client = None;
            let detail = format!("{status:?}");
            match status.code() {
                tonic::Code::ResourceExhausted => Outcome::Refused(Duration::from_secs(1)),
                tonic::Code::Unavailable if detail.contains("Connection refused") => {
                    Outcome::Refused(Duration::from_millis(250))
                }
                tonic::Code::Unavailable => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    Outcome::Unknown(detail)
                }
                tonic::Code::Unknown
                | tonic::Code::Cancelled
                | tonic::Code::Internal
                | tonic::Code::DeadlineExceeded
                | tonic::Code::Aborted => Outcome::Unknown(detail),
                _ => Outcome::Rejected(detail),
            }
        }
    }
}

/// The official OpenTelemetry Python SDK app, run again and again beside the load. Its spans
/// count as acknowledged only for a run whose exporters reported no failure (it exports
/// through the SDK's own retrying exporters, so a run across a restart may still succeed).
fn sdk_loop(stop: &AtomicBool, ledger: &Mutex<Ledger>, target: &Mutex<Target>) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/otel_app.py");
    let mut run = 0u32;
    while !stop.load(Ordering::SeqCst) {
        let t = target.lock().unwrap().clone();
        let (protocol, endpoint) = if run.is_multiple_of(2) {
            ("grpc", t.grpc)
        } else {
            ("http", t.http)
        };
        run += 1;
        if run > 1 {
            // An app exports now and then; back to back, the interpreter's start-up alone
            // would take one of the machine's two cores.
            std::thread::sleep(Duration::from_secs(1));
        }
        let out = Command::new(python())
            .arg(&script)
            .args(["--protocol", protocol, "--endpoint", &endpoint])
            .args(["--service", "chaos-sdk", "--traces", "25", "--logs", "5"])
            .output()
            .expect("run otel_app.py");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let Some(summary) = stdout
            .lines()
            .last()
            .and_then(|l| serde_json::from_str::<Value>(l).ok())
        else {
            // It died before its summary: nothing of it counts as acknowledged.
            ledger.lock().unwrap().sdk_failed_runs += 1;
            continue;
        };
        let keys: Vec<u64> = sent_span_ids(&summary)
            .iter()
            .map(|id| u64::from_str_radix(id, 16).unwrap())
            .collect();
        let now = Instant::now();
        let mut l = ledger.lock().unwrap();
        l.sent.extend(&keys);
        l.sdk_runs += 1;
        // The SDK retries a retryable refusal (503, UNAVAILABLE) by itself and says so on
        // stderr, a line a retry; each refused attempt may have landed in part (a request
        // spans partitions), so that many copies of its spans are the client's retries, as
        // for the driver's own. (Lines of any signal count: an upper bound.)
        let retries = String::from_utf8_lossy(&out.stderr)
            .matches("Transient error")
            .count() as u32;
        if retries > 0 {
            for k in &keys {
                *l.unknown.entry(*k).or_default() += retries;
            }
        }
        if summary["export_failures"]["spans"] == 0 {
            l.acked.extend(keys.iter().map(|k| (*k, now)));
            l.last_ack = Some(now);
        } else {
            l.sdk_failed_runs += 1;
            // Its exporter retried what was refused: a copy may have landed.
            for k in &keys {
                *l.unknown.entry(*k).or_default() += 1;
            }
        }
    }
}

/// How often each item reached its destination.
trait Delivered {
    fn counts(&mut self, keys: &[u64]) -> Vec<u32>;
}

/// Reads the file sink's `traces.ndjson` as it grows, once: a full run writes tens of MB, and
/// recovery is polled many times. Only whole lines are taken, since the sink cuts a torn last
/// line left by a crash before it appends again.
struct FileSpans {
    path: PathBuf,
    offset: u64,
    seen: HashMap<u64, u32>,
}

impl FileSpans {
    fn new(dir: &Path) -> FileSpans {
        FileSpans {
            path: dir.join("tidewater-data/out/traces.ndjson"),
            offset: 0,
            seen: HashMap::new(),
        }
    }

    fn refresh(&mut self) {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return;
        };
        f.seek(SeekFrom::Start(self.offset)).unwrap();
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).unwrap();
        let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
            return;
        };
        for line in buf[..end].split(|b| *b == b'\n') {
            let v: Value = serde_json::from_slice(line).expect("the file sink writes JSON lines");
            for (_, span) in spans(std::slice::from_ref(&v)) {
                let id = span["spanId"].as_str().unwrap();
                *self
                    .seen
                    .entry(u64::from_str_radix(id, 16).unwrap())
                    .or_default() += 1;
            }
        }
        self.offset += end as u64 + 1;
    }
}

impl Delivered for FileSpans {
    fn counts(&mut self, keys: &[u64]) -> Vec<u32> {
        self.refresh();
        keys.iter()
            .map(|k| self.seen.get(k).copied().unwrap_or(0))
            .collect()
    }
}

/// Events in Elasticsearch, found by `message_id`. A document is `create`d under its event's
/// id, so the cluster holds each at most once: a replay shows as `already_indexed`, not as a
/// second document.
struct EsEvents {
    es: Es,
    present: HashSet<u64>,
}

impl Delivered for EsEvents {
    fn counts(&mut self, keys: &[u64]) -> Vec<u32> {
        let missing: Vec<u64> = keys
            .iter()
            .copied()
            .filter(|k| !self.present.contains(k))
            .collect();
        for chunk in missing.chunks(1000) {
            let ids: Vec<String> = chunk.iter().map(|k| message_id(*k)).collect();
            let (status, out) = self.es.request(
                "POST",
                "/tidewater-events/_search",
                Some(&json!({"size": ids.len(), "_source": false,
                             "query": {"terms": {"message_id": ids}}})),
            );
            if status == 404 {
                continue;
            }
            assert_eq!(status, 200, "{out}");
            for hit in out["hits"]["hits"].as_array().unwrap() {
                let id = hit["_id"].as_str().unwrap();
                self.present
                    .insert(u64::from_str_radix(id.trim_start_matches("chaos-"), 16).unwrap());
            }
        }
        keys.iter()
            .map(|k| u32::from(self.present.contains(k)))
            .collect()
    }
}

/// Recovery from one fault: seconds from its end until the collector acknowledged again, and
/// until everything acknowledged before its end was delivered.
#[derive(Clone, Copy, Default)]
struct Recovery {
    accept: f64,
    caught_up: f64,
}

fn recover(load: &Load, delivered: &mut dyn Delivered, fault_end: Instant) -> Recovery {
    let patience = Duration::from_secs(if long_run() { 600 } else { 90 });
    let accept = wait_for(patience, || {
        load.last_ack()
            .filter(|t| *t > fault_end)
            .map(|t| t - fault_end)
    })
    .unwrap_or(patience);
    let mut pending = load.acked_before(fault_end);
    let caught_up = wait_for(patience, || {
        let counts = delivered.counts(&pending);
        pending = pending
            .iter()
            .zip(counts)
            .filter(|(_, n)| *n == 0)
            .map(|(k, _)| *k)
            .collect();
        pending.is_empty().then(|| fault_end.elapsed())
    })
    .unwrap_or(patience);
    Recovery {
        accept: accept.as_secs_f64(),
        caught_up: caught_up.as_secs_f64(),
    }
}

/// One row of a scenario's table.
struct Row {
    scenario: String,
    sent: usize,
    acked: usize,
    delivered: usize,
    lost: usize,
    duplicated: u64,
    replayed: u64,
    replay_bound: u64,
    peak_rss: u64,
    recovery: Recovery,
    faults: usize,
}

const HEADER: &str = "scenario                            sent    acked  delivered  lost  duplicated (replays/bound)  peak RSS MiB  recovery s (accept/caught up)  faults";

impl Row {
    fn line(&self) -> String {
        format!(
            "{:<32} {:>7} {:>8} {:>10} {:>5} {:>11} ({:>5}/{:<6})  {:>12.1}  {:>14.1} / {:<12.1}  {:>6}",
            self.scenario,
            self.sent,
            self.acked,
            self.delivered,
            self.lost,
            self.duplicated,
            self.replayed,
            self.replay_bound,
            self.peak_rss as f64 / (1024.0 * 1024.0),
            self.recovery.accept,
            self.recovery.caught_up,
            self.faults
        )
    }
}

/// Waits for every acknowledged item to be delivered (or for patience to run out), then
/// counts, prints the row and asserts: nothing acknowledged lost, and what was delivered more
/// than once beyond the client's own retries within `replay_bound`.
#[allow(clippy::too_many_arguments)]
fn settle(
    scenario: &str,
    ledger: Ledger,
    delivered: &mut dyn Delivered,
    replay_bound: u64,
    peak_rss: u64,
    recoveries: &[Recovery],
    log: impl Fn() -> String,
) -> Row {
    assert!(
        ledger.rejected.is_empty(),
        "{scenario}: requests refused for good: {:?}",
        &ledger.rejected[..ledger.rejected.len().min(5)]
    );
    let acked: HashSet<u64> = ledger.acked.iter().map(|(k, _)| *k).collect();
    let acked_keys: Vec<u64> = acked.iter().copied().collect();
    // Until everything acknowledged is there, or nothing more has arrived for a while (a
    // backlog still draining keeps moving; what was lost never comes).
    let stall = Duration::from_secs(if long_run() { 120 } else { 30 });
    let (mut arrived, mut since) = (0, Instant::now());
    wait_for(Duration::from_secs(900), || {
        let now = delivered
            .counts(&acked_keys)
            .iter()
            .filter(|n| **n > 0)
            .count();
        if now > arrived {
            (arrived, since) = (now, Instant::now());
        }
        (now == acked_keys.len() || since.elapsed() > stall).then_some(())
    });
    let sent: Vec<u64> = ledger.sent.iter().copied().collect();
    let counts = delivered.counts(&sent);
    let mut row = Row {
        scenario: scenario.to_string(),
        sent: sent.len(),
        acked: acked.len(),
        delivered: 0,
        lost: 0,
        duplicated: 0,
        replayed: 0,
        replay_bound,
        peak_rss,
        recovery: Recovery {
            accept: recoveries.iter().map(|r| r.accept).fold(0.0, f64::max),
            caught_up: recoveries.iter().map(|r| r.caught_up).fold(0.0, f64::max),
        },
        faults: recoveries.len(),
    };
    let mut lost = Vec::new();
    for (key, n) in sent.iter().zip(counts) {
        if n > 0 {
            row.delivered += 1;
            let extra = u64::from(n - 1);
            row.duplicated += extra;
            let retries = u64::from(ledger.unknown.get(key).copied().unwrap_or(0));
            row.replayed += extra.saturating_sub(retries);
        } else if acked.contains(key) {
            lost.push(*key);
        }
    }
    row.lost = lost.len();
    report(&row);
    eprintln!(
        "{scenario}: {} refusals retried, {} items with attempts of unknown outcome; SDK app: {} runs, {} with export failures",
        ledger.refusals,
        ledger.unknown.len(),
        ledger.sdk_runs,
        ledger.sdk_failed_runs
    );
    if !ledger.unknown_reasons.is_empty() {
        eprintln!("{scenario}: e.g. {:?}", ledger.unknown_reasons);
    }
    assert!(
        lost.is_empty(),
        "{scenario}: {} acknowledged items lost, e.g. {:x?}\n{}",
        lost.len(),
        &lost[..lost.len().min(10)],
        log()
    );
    assert!(
        row.replayed <= replay_bound,
        "{scenario}: {} items delivered again beyond the client's retries; the README allows one round per partition and crash ({replay_bound})",
        row.replayed
    );
    assert!(row.acked > 0, "{scenario}: nothing was acknowledged");
    row
}

/// Prints the row under its header, and appends it to `TIDEWATER_CHAOS_REPORT` (the file
/// `scripts/chaos` collects the tables from).
fn report(row: &Row) {
    eprintln!("{HEADER}\n{}", row.line());
    if let Some(path) = &settings().report {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        if f.metadata().unwrap().len() == 0 {
            writeln!(f, "{HEADER}").unwrap();
        }
        writeln!(f, "{}", row.line()).unwrap();
    }
}

/// The most of each process's peak RSS: `VmHWM` is per process, so it is read before each kill.
#[derive(Default)]
struct Peak(u64);

impl Peak {
    fn sample(&mut self, tw: &mut Tidewater) {
        if tw.is_running() {
            self.0 = self.0.max(tw.peak_rss());
        }
    }
}

fn small_rounds() -> Vec<(String, String)> {
    vec![
        (
            "TIDEWATER_PROCESSOR__MAX_POLL_RECORDS".into(),
            MAX_POLL_RECORDS.to_string(),
        ),
        (
            "TIDEWATER_COLLECTOR__BATCH__MAX_ITEMS".into(),
            MAX_ITEMS.to_string(),
        ),
        ("TIDEWATER_PROCESSOR__RETRY_MAX".into(), "1s".into()),
    ]
}

/// One round per partition of at most `MAX_ITEMS` items each, per crash.
fn round(partitions: u64) -> u64 {
    partitions * MAX_POLL_RECORDS * MAX_ITEMS
}

/// Pauses `d` while the load runs, unless the scenario's time is up sooner.
fn steady(until: Instant, d: Duration) {
    let d = d.min(until.saturating_duration_since(Instant::now()));
    std::thread::sleep(d);
}

/// a. `tidewater up` (embedded bus) SIGKILLed and restarted again and again under load.
#[test]
fn chaos_up_sigkilled_in_a_loop() {
    settings();
    let dir = tempfile::tempdir().unwrap();
    let mut tw = Tidewater::up(dir.path(), &small_rounds());
    let load = Load::start(Kind::Traces, Target::of(&tw), 1, true);
    let mut sink = FileSpans::new(dir.path());
    let mut peak = Peak::default();
    let mut recoveries = Vec::new();
    let end = Instant::now() + load_seconds(8);
    let every = if long_run() { 15 } else { 2 };
    while Instant::now() < end {
        steady(end, Duration::from_secs(every));
        peak.sample(&mut tw);
        tw.kill();
        std::thread::sleep(Duration::from_millis(500));
        let restart = Instant::now();
        tw.start();
        load.retarget(Target::of(&tw));
        recoveries.push(recover(&load, &mut sink, restart));
    }
    let ledger = load.finish();
    peak.sample(&mut tw);
    let bound = recoveries.len() as u64 * round(EMBEDDED_PARTITIONS);
    settle(
        "a. up SIGKILLed",
        ledger,
        &mut sink,
        bound,
        peak.0,
        &recoveries,
        || tw.log(),
    );
}

/// A collector and a processor apart on the peers' Kinesis stream, with small rounds, the
/// collector spooling after 1 s.
struct Halves {
    collector: Tidewater,
    processor: Tidewater,
    /// Their working directories, removed when dropped.
    dirs: (tempfile::TempDir, tempfile::TempDir),
}

impl Halves {
    fn start(peers: &Peers) -> Halves {
        peers.create_stream("chaos", SHARDS as i32);
        let mut env = peers.env("chaos", "chaos-leases");
        env.extend(small_rounds());
        env.push(("RUST_LOG".into(), "info".into()));
        let mut collector_env = env.clone();
        collector_env.extend([
            (
                "TIDEWATER_BUS__KINESIS__SPOOL_AFTER".to_string(),
                "1s".to_string(),
            ),
            (
                "TIDEWATER_BUS__KINESIS__RETRY_MAX".to_string(),
                "1s".to_string(),
            ),
        ]);
        let dirs = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let collector = Tidewater::run("collector", dirs.0.path(), &collector_env);
        let processor = Tidewater::run("processor", dirs.1.path(), &env);
        Halves {
            collector,
            processor,
            dirs,
        }
    }
}

/// b. Collector and processor apart on Kinesis: the processor SIGKILLed and restarted in a
/// loop, then the collector likewise.
#[test]
fn chaos_kinesis_processor_then_collector_sigkilled() {
    settings();
    let peers = Peers::start();
    let Halves {
        mut collector,
        mut processor,
        dirs: (_cdir, pdir),
    } = Halves::start(&peers);
    let mut sink = FileSpans::new(pdir.path());
    let every = Duration::from_secs(if long_run() { 20 } else { 3 });

    // Phase 1: the processor dies; its shards are resumed from the checkpoints once its
    // leases expire.
    let load = Load::start(Kind::Traces, Target::of(&collector), 1, false);
    let (mut peak, mut recoveries) = (Peak::default(), Vec::new());
    let end = Instant::now() + load_seconds(7);
    while Instant::now() < end {
        steady(end, every);
        peak.sample(&mut processor);
        processor.kill();
        let restart = Instant::now();
        processor.start();
        recoveries.push(recover(&load, &mut sink, restart));
    }
    let ledger = load.finish();
    peak.sample(&mut processor);
    peak.sample(&mut collector);
    let bound = recoveries.len() as u64 * round(SHARDS);
    settle(
        "b1. kinesis processor SIGKILLed",
        ledger,
        &mut sink,
        bound,
        peak.0,
        &recoveries,
        || processor.log(),
    );

    // Phase 2: the collector dies, with clients and the SDK app retrying while it is away.
    let load = Load::start(Kind::Traces, Target::of(&collector), 50_000_000, true);
    let (mut peak, mut recoveries) = (Peak::default(), Vec::new());
    let end = Instant::now() + load_seconds(7);
    while Instant::now() < end {
        steady(end, every);
        peak.sample(&mut collector);
        collector.kill();
        std::thread::sleep(Duration::from_millis(500));
        let restart = Instant::now();
        collector.start();
        load.retarget(Target::of(&collector));
        recoveries.push(recover(&load, &mut sink, restart));
    }
    let ledger = load.finish();
    peak.sample(&mut collector);
    peak.sample(&mut processor);
    settle(
        "b2. kinesis collector SIGKILLed",
        ledger,
        &mut sink,
        0,
        peak.0,
        &recoveries,
        || collector.log(),
    );
}

/// c. The bus stopped: kinesalite killed for a while (60 s in the full run) and started again
/// on the same port with the data it kept on disk. The collector spools to disk and keeps
/// acknowledging, and drains the spool once the stream is back.
#[test]
fn chaos_kinesis_bus_stopped() {
    settings();
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let kinesis = peers::kinesalite_at(port, &data.path().join("kinesalite"));
    let mut peers = Peers {
        client: kinesis_client(&kinesis.endpoint()),
        kinesis,
        dynamodb: peers::moto(),
        rt: tokio::runtime::Runtime::new().unwrap(),
    };
    let Halves {
        mut collector,
        mut processor,
        dirs: (_cdir, pdir),
    } = Halves::start(&peers);
    let mut sink = FileSpans::new(pdir.path());
    let load = Load::start(Kind::Traces, Target::of(&collector), 1, true);
    let (outage, gap) = if long_run() {
        (Duration::from_secs(60), Duration::from_secs(20))
    } else {
        (Duration::from_secs(5), Duration::from_secs(2))
    };
    let mut recoveries = Vec::new();
    let mut spooled_max = 0.0f64;
    let end = Instant::now() + load_seconds(14);
    while Instant::now() < end {
        steady(end, gap);
        let stored = peers.stored("chaos").len();
        peers.kinesis.kill();
        let down = Instant::now();
        while down.elapsed() < outage {
            let m = collector.metrics();
            spooled_max = spooled_max.max(crate::common::es::metric(
                &m,
                "tidewater_kinesis_spool_depth_records",
                &[],
            ));
            std::thread::sleep(Duration::from_millis(250));
        }
        peers.kinesis = peers::kinesalite_at(port, &data.path().join("kinesalite"));
        // Else what the processor had not read yet would be gone with the stand-in's memory.
        assert!(
            peers.stored("chaos").len() >= stored,
            "kinesalite kept its records across the restart"
        );
        recoveries.push(recover(&load, &mut sink, Instant::now()));
    }
    let ledger = load.finish();
    let mut peak = Peak::default();
    peak.sample(&mut collector);
    peak.sample(&mut processor);
    eprintln!("c. the spool held at most {spooled_max} records during the outages");
    assert!(
        spooled_max > 0.0,
        "the outage went to the spool:\n{}",
        collector.log()
    );
    // Neither process is killed, so the processor replays nothing; but a PutRecords cut off
    // by the outage may have been stored with its answer lost, and is sent again (the bus is
    // at least once). Only data no client was acknowledged for yet can be in flight: at most
    // each worker's request and an SDK export batch (64 spans) per outage.
    let in_flight = recoveries.len() as u64 * (4 * PER_REQUEST + 64);
    settle(
        "c. kinesis bus stopped",
        ledger,
        &mut sink,
        in_flight,
        peak.0,
        &recoveries,
        || collector.log(),
    );
}

/// d. A sink failing: Elasticsearch, behind a proxy answering every `_bulk` with 503 for a
/// while (minutes in the full run), with analytics events as the load. The bus holds the
/// backlog, nothing is checkpointed past what the cluster took, and the processor catches up.
#[test]
fn chaos_elasticsearch_answers_5xx() {
    settings();
    let osmem = peers::elasticsearch();
    let proxy = BulkProxy::start(&osmem.endpoint());
    let dir = tempfile::tempdir().unwrap();
    let mut env: Vec<(String, String)> = es_env(&proxy.url())
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    env.extend(small_rounds());
    let mut tw = Tidewater::up(dir.path(), &env);
    let mut es = EsEvents {
        es: Es::new(&osmem.endpoint()),
        present: HashSet::new(),
    };
    let load = Load::start(Kind::Events, Target::of(&tw), 1, false);
    let (failing, gap) = if long_run() {
        (Duration::from_secs(120), Duration::from_secs(20))
    } else {
        (Duration::from_secs(5), Duration::from_secs(2))
    };
    let mut recoveries = Vec::new();
    let end = Instant::now() + load_seconds(12);
    while Instant::now() < end {
        steady(end, gap);
        proxy.fail_requests(u32::MAX);
        std::thread::sleep(failing);
        proxy.fail_requests(0);
        recoveries.push(recover(&load, &mut es, Instant::now()));
    }
    let ledger = load.finish();
    let mut peak = Peak::default();
    peak.sample(&mut tw);
    let m = tw.metrics();
    eprintln!(
        "d. {} _bulk requests seen by the proxy; documents already indexed when sent again: {}",
        proxy.bulks().len(),
        crate::common::es::metric(
            &m,
            "tidewater_elasticsearch_documents_total",
            &[("kind", "events"), ("outcome", "already_indexed")]
        )
    );
    settle(
        "d. elasticsearch 5xx",
        ledger,
        &mut es,
        0,
        peak.0,
        &recoveries,
        || tw.log(),
    );
}

/// A small tmpfs, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }

    /// Writes a ballast file until the filesystem is full.
    fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.join("ballast")).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        // Smaller and smaller writes after the first refusal, so not even the tail of a
        // page is left for the bus to write into.
        for size in [64 * 1024, 4096, 1] {
            while f.write_all(&chunk[..size]).is_ok() {}
        }
    }

    fn free(&self) {
        std::fs::remove_file(self.0.join("ballast")).unwrap();
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// e. The disk under the embedded bus fills up (a small tmpfs and a ballast file): the
/// collector must refuse (503 / UNAVAILABLE) what it could not write rather than acknowledge
/// it, and take data again once space returns.
#[test]
fn chaos_embedded_bus_disk_full() {
    settings();
    let dir = tempfile::tempdir().unwrap();
    let bus = dir.path().join("bus");
    let disk = match Tmpfs::mount(&bus, "32m") {
        Ok(d) => d,
        Err(e) => panic!("e. needs a tmpfs (run as root): mount failed: {e}"),
    };
    let mut env = small_rounds();
    env.extend([
        (
            "TIDEWATER_BUS__EMBEDDED__DIR".to_string(),
            bus.display().to_string(),
        ),
        // Retention keeps the bus itself under the tmpfs's size over a long run: the disk
        // fills only when the test says so.
        (
            "TIDEWATER_BUS__EMBEDDED__SEGMENT_BYTES".to_string(),
            "512KiB".to_string(),
        ),
        (
            "TIDEWATER_BUS__EMBEDDED__RETENTION_BYTES".to_string(),
            "4MiB".to_string(),
        ),
    ]);
    let mut tw = Tidewater::up(dir.path(), &env);
    let load = Load::start(Kind::Traces, Target::of(&tw), 1, true);
    let mut sink = FileSpans::new(dir.path());
    let (full, gap) = if long_run() {
        (Duration::from_secs(30), Duration::from_secs(20))
    } else {
        (Duration::from_secs(3), Duration::from_secs(2))
    };
    let mut recoveries = Vec::new();
    let mut peak = Peak::default();
    let mut restarts = 0;
    let end = Instant::now() + load_seconds(10);
    while Instant::now() < end {
        steady(end, gap);
        let refusals_before = load.ledger.lock().unwrap().refusals;
        disk.fill();
        std::thread::sleep(full);
        let refused = load.ledger.lock().unwrap().refusals - refusals_before;
        eprintln!("e. disk full for {full:?}: {refused} attempts refused");
        disk.free();
        let freed = Instant::now();
        // A process that gave up on a full disk is restarted, as its supervisor would.
        if !tw.is_running() {
            restarts += 1;
            let log = tw.log();
            let why = log
                .lines()
                .rev()
                .find(|l| l.contains("ERROR"))
                .unwrap_or("no error logged");
            eprintln!("e. tidewater exited while the disk was full; restarting it. It said: {why}");
            tw.kill();
            tw.start();
            load.retarget(Target::of(&tw));
        }
        recoveries.push(recover(&load, &mut sink, freed));
    }
    let ledger = load.finish();
    peak.sample(&mut tw);
    eprintln!("e. tidewater restarted {restarts} times after a full disk");
    settle(
        "e. embedded bus disk full",
        ledger,
        &mut sink,
        // One round more than the restarts (there should be none: a checkpoint the full disk
        // refuses is retried): in about 1 of 20 short runs a few SDK spans arrived once more
        // than the retries its log shows, which this leaves room for, rather than a flaky test.
        (restarts + 1) * round(EMBEDDED_PARTITIONS),
        peak.0,
        &recoveries,
        || tw.log(),
    );
}

/// libfaketime's preload library (Debian's `faketime` package; `scripts/test` installs it).
fn libfaketime() -> PathBuf {
    [
        "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
        "/usr/lib/faketime/libfaketime.so.1",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .expect("libfaketime is missing: run ./scripts/test (it installs Debian's faketime package)")
}

/// Runs a process under libfaketime with the wall-clock offset read from `offset` at every
/// call (so the test moves it by rewriting the file) and the monotonic clock left alone, as
/// an NTP step leaves it. (libfaketime 0.9.10 also fails monotonic `clock_nanosleep` with
/// EINVAL in this mode; Tidewater's timers do not use it.)
fn faketime_env(offset: &Path) -> Vec<(String, String)> {
    vec![
        (
            "LD_PRELOAD".to_string(),
            libfaketime().display().to_string(),
        ),
        (
            "FAKETIME_TIMESTAMP_FILE".to_string(),
            offset.display().to_string(),
        ),
        ("FAKETIME_NO_CACHE".to_string(), "1".to_string()),
        ("FAKETIME_DONT_FAKE_MONOTONIC".to_string(), "1".to_string()),
    ]
}

/// f. The wall clock jumps (two hours ahead, a day behind, eight days ahead: past the retention
/// age) under `tidewater up`, through libfaketime reading the offset from a file at every
/// call. The monotonic clock is left alone, as an NTP step leaves it.
#[test]
fn chaos_clock_jumps() {
    settings();
    let dir = tempfile::tempdir().unwrap();
    let offset = dir.path().join("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    let mut env = small_rounds();
    env.extend(faketime_env(&offset));
    env.extend([
        // Small segments, so the bus rolls, and so applies its age-based retention, after a jump.
        (
            "TIDEWATER_BUS__EMBEDDED__SEGMENT_BYTES".to_string(),
            "8KiB".to_string(),
        ),
    ]);
    let mut tw = Tidewater::up(dir.path(), &env);
    let load = Load::start(Kind::Traces, Target::of(&tw), 1, true);
    let mut sink = FileSpans::new(dir.path());
    let jumps = ["+2h", "-1d", "+8d", "+0"];
    let end = Instant::now() + load_seconds(8);
    let gap = if long_run() {
        Duration::from_secs(20)
    } else {
        Duration::from_secs(2)
    };
    let mut recoveries = Vec::new();
    let mut i = 0;
    while Instant::now() < end {
        steady(end, gap);
        let jump = jumps[i % jumps.len()];
        i += 1;
        std::fs::write(&offset, format!("{jump}\n")).unwrap();
        let jumped = Instant::now();
        // An event's `received_at` is the collector's wall clock: proof the process saw it.
        let probe = json!({"events": [{"message_id": format!("clock-{i}"), "name": "Clock Probe", "user_id": "u"}]});
        let resp = reqwest::blocking::Client::new()
            .post(tw.http_url("/v1/events"))
            .json(&probe)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200);
        recoveries.push(recover(&load, &mut sink, jumped));
    }
    let ledger = load.finish();
    let mut peak = Peak::default();
    peak.sample(&mut tw);
    assert!(tw.is_running(), "{}", tw.log());
    let days: HashSet<String> = wait_for(Duration::from_secs(30), || {
        let probes = tw.sink_lines("events");
        (probes.len() == i).then(|| {
            probes
                .iter()
                .map(|e| e["received_at"].as_str().unwrap()[..10].to_string())
                .collect()
        })
    })
    .expect("every clock probe delivered");
    eprintln!(
        "f. clock probes received on {days:?}; bus segments deleted by retention: {}",
        crate::common::es::metric(
            &tw.metrics(),
            "tidewater_bus_retention_deleted_segments_total",
            &[]
        )
    );
    assert!(
        i < 3 || days.len() >= 3,
        "the jumps reached the process: {days:?}"
    );
    settle(
        "f. clock jumps",
        ledger,
        &mut sink,
        0,
        peak.0,
        &recoveries,
        || tw.log(),
    );
}

/// f2. The same jumps while the processor has a backlog (its sink answering 503). When the
/// bus's age-based retention read the wall clock, a forward jump past `retention_age` (7 days)
/// made seconds-old segments "expired" and deleted them before the processor read them (1,696
/// of 4,820 acknowledged events lost); segment age is now on the monotonic clock.
#[test]
fn chaos_clock_jump_past_retention_with_a_backlog() {
    settings();
    let osmem = peers::elasticsearch();
    let proxy = BulkProxy::start(&osmem.endpoint());
    let dir = tempfile::tempdir().unwrap();
    let offset = dir.path().join("faketime");
    std::fs::write(&offset, "+0\n").unwrap();
    let mut env: Vec<(String, String)> = es_env(&proxy.url())
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    env.extend(small_rounds());
    env.extend(faketime_env(&offset));
    env.push((
        "TIDEWATER_BUS__EMBEDDED__SEGMENT_BYTES".to_string(),
        "8KiB".to_string(),
    ));
    let mut tw = Tidewater::up(dir.path(), &env);
    let mut es = EsEvents {
        es: Es::new(&osmem.endpoint()),
        present: HashSet::new(),
    };
    proxy.fail_requests(u32::MAX);
    let load = Load::start(Kind::Events, Target::of(&tw), 1, false);
    let phase = load_seconds(4).min(Duration::from_secs(60));
    std::thread::sleep(phase);
    // Two steps, so that every closed segment's newest record is more than 7 days "old".
    std::fs::write(&offset, "+8d\n").unwrap();
    std::thread::sleep(phase);
    std::fs::write(&offset, "+16d\n").unwrap();
    std::thread::sleep(phase);
    proxy.fail_requests(0);
    let ledger = load.finish();
    let mut peak = Peak::default();
    peak.sample(&mut tw);
    eprintln!(
        "f2. bus segments deleted by retention: {}",
        crate::common::es::metric(
            &tw.metrics(),
            "tidewater_bus_retention_deleted_segments_total",
            &[]
        )
    );
    settle(
        "f2. clock jump, backlog",
        ledger,
        &mut es,
        0,
        peak.0,
        &[],
        || tw.log(),
    );
}
