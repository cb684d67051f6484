//! `loadgen`: sends OTLP traces, logs or metrics (gRPC or HTTP) or analytics events to a
//! collector on this machine, at a fixed rate or flat out, and reports what came back.
//!
//! ```text
//! loadgen --signal traces --protocol grpc --items 100 --concurrency 16 --duration 10s
//! loadgen --rate 1000 ...           # 1000 requests/s (open loop); latency counts from the
//!                                   # time each request was due, so a stall is not hidden
//! loadgen --null-server 127.0.0.1:14317 --duration 5m   # the calibration target
//! ```
//!
//! Requests come from a pool of realistic requests encoded before the clock starts. A progress
//! line goes to stderr every second; the last line on stdout is one JSON object with the
//! throughput, latency percentiles of the acknowledgements and errors by status. Every run is
//! bounded (`--duration`, at most 10 minutes, and `--requests`), and only loopback addresses
//! are accepted.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use hdrhistogram::Histogram;
use http::uri::PathAndQuery;
use serde_json::json;
use tidewater_benches::raw_grpc::RawCodec;
use tidewater_benches::requests::{self, loopback, Protocol, Signal};
use tokio::time::Instant;
use tonic::transport::{Channel, Endpoint};

const MAX_DURATION: Duration = Duration::from_secs(600);

#[derive(Parser, Debug)]
#[command(
    name = "loadgen",
    about = "Load generator for Tidewater's collector (loopback only)"
)]
struct Args {
    /// Serve as a null OTLP/events server on ADDR (gRPC and HTTP on one port) that accepts
    /// without decoding, for `--duration` (default 10 minutes), instead of sending. It also
    /// answers X-Ray's PutTraceSegments and Elasticsearch's `_bulk` and index-template calls
    /// as the real services would on success, for the processor's sinks.
    #[arg(long, value_name = "ADDR")]
    null_server: Option<String>,
    /// host:port of the collector; 127.0.0.1:4317 for gRPC, 127.0.0.1:4318 for HTTP.
    #[arg(long)]
    target: Option<String>,
    #[arg(long, value_enum, default_value = "traces")]
    signal: Signal,
    #[arg(long, value_enum, default_value = "grpc")]
    protocol: Protocol,
    /// Items per request: spans, log records, data points or events.
    #[arg(long, default_value_t = 100)]
    items: usize,
    /// Requests per second; 0 sends flat out.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Requests in flight at once.
    #[arg(long, short = 'c', default_value_t = 16)]
    concurrency: usize,
    /// gRPC connections (HTTP/2) the requests share; default one per 64 requests in flight.
    /// HTTP/1.1 uses one connection per request in flight.
    #[arg(long)]
    connections: Option<usize>,
    /// How long to measure (at most 10 minutes).
    #[arg(long, value_parser = humantime::parse_duration)]
    duration: Option<Duration>,
    /// Send this long before measuring, so that connections, buffers and batches are in
    /// their steady state when the clock starts.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
    warmup: Duration,
    /// Stop after this many requests.
    #[arg(long)]
    requests: Option<u64>,
    /// Distinct requests in the pool.
    #[arg(long, default_value_t = 64)]
    pool: usize,
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Runtime worker threads; default: the cores this process may run on.
    #[arg(long)]
    threads: Option<usize>,
    /// No progress lines.
    #[arg(long, short)]
    quiet: bool,
}

/// When this process started: the summary gives its measurement window relative to it, so a
/// runner sampling the server can take the same window.
static PROCESS_START: OnceLock<std::time::Instant> = OnceLock::new();

fn main() -> anyhow::Result<()> {
    PROCESS_START.get_or_init(std::time::Instant::now);
    let args = Args::parse();
    let duration = args.duration.unwrap_or(if args.null_server.is_some() {
        MAX_DURATION
    } else {
        Duration::from_secs(10)
    });
    anyhow::ensure!(
        duration + args.warmup <= MAX_DURATION,
        "--duration and --warmup together are at most {MAX_DURATION:?}"
    );
    let threads = args
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads.max(1))
        .enable_all()
        .build()?;
    match &args.null_server {
        Some(addr) => runtime.block_on(null_server(addr, duration)),
        None => runtime.block_on(run(args, duration)),
    }
}

async fn null_server(addr: &str, lifetime: Duration) -> anyhow::Result<()> {
    let addr = loopback(addr)?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    eprintln!(
        "null server on {} for at most {lifetime:?}",
        listener.local_addr()?
    );
    let stop = async move {
        tokio::select! {
            _ = tokio::time::sleep(lifetime) => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = terminated() => {}
        }
    };
    tidewater_benches::null_server::serve(listener, stop).await?;
    Ok(())
}

async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            term.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}

/// Sends one pre-encoded request and returns the answer's body, or the error's label.
#[derive(Clone)]
enum Sender {
    Grpc {
        client: tonic::client::Grpc<Channel>,
        path: PathAndQuery,
    },
    Http {
        client: reqwest::Client,
        url: Arc<str>,
        content_type: &'static str,
    },
}

impl Sender {
    async fn send(&mut self, body: Bytes) -> Result<Bytes, String> {
        match self {
            Sender::Grpc { client, path } => {
                client
                    .ready()
                    .await
                    .map_err(|e| format!("grpc transport: {e}"))?;
                match client
                    .unary(tonic::Request::new(body), path.clone(), RawCodec)
                    .await
                {
                    Ok(response) => Ok(response.into_inner()),
                    Err(status) => Err(format!("grpc {:?}", status.code())),
                }
            }
            Sender::Http {
                client,
                url,
                content_type,
            } => {
                let response = client
                    .post(&**url)
                    .header(http::header::CONTENT_TYPE, *content_type)
                    .body(body)
                    .send()
                    .await
                    .map_err(|e| {
                        if e.is_connect() {
                            "http connect".to_string()
                        } else {
                            "http transport".to_string()
                        }
                    })?;
                let status = response.status();
                let body = response
                    .bytes()
                    .await
                    .map_err(|_| "http transport".to_string())?;
                if status.is_success() {
                    Ok(body)
                } else {
                    Err(format!("http {}", status.as_u16()))
                }
            }
        }
    }
}

/// Latencies in microseconds, up to a minute.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds")
}

/// Answers counted within the measurement window.
#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: AtomicU64,
    items_ok: AtomicU64,
    items_rejected: AtomicU64,
}

impl Counts {
    fn add(&self, outcome: &Result<u64, String>, items: u64) {
        match outcome {
            Ok(rejected) => {
                self.ok.fetch_add(1, Relaxed);
                self.items_ok
                    .fetch_add(items.saturating_sub(*rejected), Relaxed);
                self.items_rejected
                    .fetch_add((*rejected).min(items), Relaxed);
            }
            Err(_) => {
                self.failed.fetch_add(1, Relaxed);
            }
        }
    }
}

struct Stats {
    /// Every answer, warm-up included: for the progress line.
    live: Counts,
    /// Answers within the measurement window: for the summary.
    window: Counts,
    /// Errors within the window, by status.
    errors: Mutex<BTreeMap<String, u64>>,
    /// (requests due within the window, every request since the last progress line)
    latency: Mutex<(Histogram<u64>, Histogram<u64>)>,
}

impl Stats {
    fn answer(
        &self,
        outcome: Result<u64, String>,
        items: u64,
        plan: &Plan,
        due: Instant,
        answered: Instant,
    ) {
        self.live.add(&outcome, items);
        let counted = (plan.measure_from..=plan.end).contains(&answered);
        if counted {
            self.window.add(&outcome, items);
            if let Err(label) = outcome {
                *self
                    .errors
                    .lock()
                    .expect("not poisoned")
                    .entry(label)
                    .or_default() += 1;
            }
        }
        let micros = ((answered - due).as_micros() as u64).clamp(1, 60_000_000);
        let mut h = self.latency.lock().expect("not poisoned");
        if due >= plan.measure_from {
            h.0.saturating_record(micros);
        }
        h.1.saturating_record(micros);
    }
}

/// When each request is due.
struct Plan {
    start: Instant,
    /// Answers are counted from here (after the warm-up) to `end`.
    measure_from: Instant,
    end: Instant,
    /// Requests per second, or flat out.
    rate: Option<f64>,
    max_requests: u64,
    next: AtomicU64,
}

impl Plan {
    /// The next request's number and the time it is due, or None when the run is over.
    async fn next(&self) -> Option<(u64, Instant)> {
        let n = self.next.fetch_add(1, Relaxed);
        if n >= self.max_requests {
            return None;
        }
        match self.rate {
            Some(rate) => {
                let due = self.start + Duration::from_secs_f64(n as f64 / rate);
                if due >= self.end {
                    return None;
                }
                tokio::time::sleep_until(due).await;
                Some((n, due))
            }
            None => {
                let now = Instant::now();
                (now < self.end).then_some((n, now))
            }
        }
    }
}

async fn run(args: Args, duration: Duration) -> anyhow::Result<()> {
    anyhow::ensure!(args.concurrency >= 1, "--concurrency must be at least 1");
    anyhow::ensure!(
        args.rate >= 0.0 && args.rate.is_finite(),
        "--rate must be >= 0"
    );
    let target = args.target.clone().unwrap_or_else(|| {
        match args.protocol {
            Protocol::Grpc => "127.0.0.1:4317",
            Protocol::Http => "127.0.0.1:4318",
        }
        .to_string()
    });
    let addr = loopback(&target)?;
    let pool = Arc::new(requests::pool(
        args.signal,
        args.protocol,
        args.items,
        args.pool,
        args.seed,
    ));
    let request_bytes = pool.iter().map(Bytes::len).sum::<usize>() / pool.len();

    let connections = args
        .connections
        .unwrap_or(args.concurrency.div_ceil(64))
        .max(1);
    let senders: Vec<Sender> = match args.protocol {
        Protocol::Grpc => {
            let mut senders = Vec::new();
            for _ in 0..connections {
                let channel = Endpoint::from_shared(format!("http://{addr}"))?
                    .tcp_nodelay(true)
                    .connect()
                    .await
                    .with_context(|| format!("cannot connect to {addr} over gRPC"))?;
                senders.push(Sender::Grpc {
                    client: tonic::client::Grpc::new(channel),
                    path: PathAndQuery::from_static(args.signal.grpc_path()),
                });
            }
            senders
        }
        Protocol::Http => {
            let client = reqwest::Client::builder()
                .no_proxy()
                .tcp_nodelay(true)
                .http1_only()
                .pool_max_idle_per_host(args.concurrency)
                .build()?;
            vec![Sender::Http {
                client,
                url: format!("http://{addr}{}", args.signal.http_path()).into(),
                content_type: args.signal.http_content_type(),
            }]
        }
    };

    let stats = Arc::new(Stats {
        live: Counts::default(),
        window: Counts::default(),
        errors: Mutex::new(BTreeMap::new()),
        latency: Mutex::new((histogram(), histogram())),
    });
    let start = Instant::now();
    let measure_from = start + args.warmup;
    let plan = Arc::new(Plan {
        start,
        measure_from,
        end: measure_from + duration,
        rate: (args.rate > 0.0).then_some(args.rate),
        max_requests: args.requests.unwrap_or(u64::MAX),
        next: AtomicU64::new(0),
    });
    let items = args.items as u64;
    let (signal, protocol) = (args.signal, args.protocol);
    let workers: Vec<_> = (0..args.concurrency)
        .map(|w| {
            let mut sender = senders[w % senders.len()].clone();
            let (pool, plan, stats) = (pool.clone(), plan.clone(), stats.clone());
            tokio::spawn(async move {
                while let Some((n, due)) = plan.next().await {
                    let body = pool[(n % pool.len() as u64) as usize].clone();
                    let outcome = sender
                        .send(body)
                        .await
                        .map(|answer| requests::rejected_items(signal, protocol, &answer));
                    let answered = Instant::now();
                    stats.answer(outcome, items, &plan, due, answered);
                }
            })
        })
        .collect();

    let done = Arc::new(AtomicBool::new(false));
    let progress = (!args.quiet).then(|| {
        let (stats, done) = (stats.clone(), done.clone());
        let item = signal.item();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            let (mut last_ok, mut last_items) = (0, 0);
            while !done.load(Relaxed) {
                tick.tick().await;
                let ok = stats.live.ok.load(Relaxed);
                let items = stats.live.items_ok.load(Relaxed);
                let failed = stats.live.failed.load(Relaxed);
                let (p50, p99) = {
                    let mut h = stats.latency.lock().expect("not poisoned");
                    let p = (h.1.value_at_quantile(0.5), h.1.value_at_quantile(0.99));
                    h.1.reset();
                    p
                };
                eprintln!(
                    "[{:>4.0}s] {:>7} req/s {:>10} {item}/s | ok {ok} failed {failed} | p50 {:.1} ms p99 {:.1} ms",
                    start.elapsed().as_secs_f64(),
                    ok - last_ok,
                    items - last_items,
                    p50 as f64 / 1000.0,
                    p99 as f64 / 1000.0,
                );
                (last_ok, last_items) = (ok, items);
            }
        })
    });
    for w in workers {
        w.await?;
    }
    // A run cut short by --requests is measured up to its last answer.
    let window = (plan.end.min(Instant::now()) - measure_from)
        .as_secs_f64()
        .max(1e-6);
    let window_from = measure_from.into_std() - *PROCESS_START.get().expect("set at start");
    done.store(true, Relaxed);
    if let Some(p) = progress {
        p.abort();
    }

    let ok = stats.window.ok.load(Relaxed);
    let failed = stats.window.failed.load(Relaxed);
    let items_ok = stats.window.items_ok.load(Relaxed);
    let h = &stats.latency.lock().expect("not poisoned").0;
    let ms = |us: u64| us as f64 / 1000.0;
    let summary = json!({
        "target": target,
        "signal": signal,
        "protocol": protocol,
        "items_per_request": args.items,
        "request_bytes": request_bytes,
        "concurrency": args.concurrency,
        "connections": if protocol == Protocol::Grpc { connections } else { args.concurrency },
        "rate_rps": plan.rate,
        "warmup_s": args.warmup.as_secs_f64(),
        // The measurement window, in seconds since this process started.
        "window_from_s": window_from.as_secs_f64(),
        "window_s": window,
        "requests": ok + failed,
        "ok": ok,
        "failed": failed,
        "items_ok": items_ok,
        "items_rejected": stats.window.items_rejected.load(Relaxed),
        "req_per_s": ok as f64 / window,
        "items_per_s": items_ok as f64 / window,
        "mib_per_s": (ok as f64 * request_bytes as f64) / window / (1024.0 * 1024.0),
        "latency_ms": {
            "p50": ms(h.value_at_quantile(0.5)),
            "p90": ms(h.value_at_quantile(0.9)),
            "p99": ms(h.value_at_quantile(0.99)),
            "p999": ms(h.value_at_quantile(0.999)),
            "max": ms(h.max()),
            "mean": h.mean() / 1000.0,
        },
        "errors": *stats.errors.lock().expect("not poisoned"),
    });
    println!("{summary}");
    Ok(())
}
