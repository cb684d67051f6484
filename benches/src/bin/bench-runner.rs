//! `bench-runner`: measures the collector and the processor and writes `benches/report/`.
//!
//! Run it with `benches/run`, which builds the release binaries first. It starts each server
//! (`loadgen --null-server` for the ceiling, then `tidewater collector`) pinned to one core
//! with `taskset`, drives `loadgen` pinned to the other core at several offered loads and flat
//! out, samples the server's CPU time and RSS from `/proc`, and writes `results.json`,
//! `REPORT.md` and `throughput.svg`. Then it fills the bus with a backlog and times
//! `tidewater processor` draining it into each sink (and, given `--baseline-tidewater`, an
//! older processor into the file sink), so the processor is measured beside the collector in
//! the same run.

use std::collections::BTreeMap;
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use tidewater_benches::procfs::{self, Sampler};
use tidewater_benches::report::{si, Drain, Report, Row, Target};

#[derive(Parser, Debug)]
#[command(
    name = "bench-runner",
    about = "Benchmarks the Tidewater collector and writes a report"
)]
struct Args {
    /// Length of each load point's measurement...
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// ...after this long under the same load, not measured.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    warmup: Duration,
    /// Offered loads of the traces/gRPC curve, in spans/s; a flat-out point always follows.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "10000,50000,100000,200000,500000"
    )]
    loads: Vec<f64>,
    /// Items per request.
    #[arg(long, default_value_t = 100)]
    items: usize,
    /// Requests in flight for the load curve and the flat-out points. The collector answers a
    /// request once its batch is durable, and a batch waits up to `collector.batch.timeout`
    /// (10 ms by default) to fill, so a fixed rate needs rate × that much in flight.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Also run traces/gRPC flat out with this few requests in flight (0: skip).
    #[arg(long, default_value_t = 16)]
    low_concurrency: usize,
    /// Only the traces/gRPC curve and its ceiling, not the other signals and protocols, nor
    /// the processor.
    #[arg(long)]
    quick: bool,
    /// Only the collector's traces/gRPC flat-out point (the collector's spans per CPU-second
    /// the processor is compared with) and the processor points: refreshes the processor's
    /// figures in a few minutes.
    #[arg(long)]
    processor_only: bool,
    /// Spans in the backlog each processor point drains (and events, for the Elasticsearch
    /// point), sent in requests of `--items`.
    #[arg(long, default_value_t = 2_000_000)]
    processor_spans: u64,
    /// The cores of the processor's multi-core point, as `taskset -c` takes them; the other
    /// processor points run on `--server-core`.
    #[arg(long, default_value = "0,1")]
    processor_cores: String,
    /// Another `tidewater` binary, such as a release build from before a processor rework:
    /// it drains the same traces backlog into the file sink on one core, in the same run, and
    /// the report compares the two. It gets only the bus, log and file-sink keys (not
    /// `--env`), which every version has.
    #[arg(long, value_name = "PATH")]
    baseline_tidewater: Option<PathBuf>,
    /// Where the report goes.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/report"))]
    out: PathBuf,
    /// Where `tidewater` and `loadgen` are; default: beside this program.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The collector's embedded bus directory; default: a fresh one on tmpfs (/dev/shm), so
    /// the figures are the collector's, not the shared disk's. Removed afterwards.
    #[arg(long)]
    bus_dir: Option<PathBuf>,
    /// `bus.embedded.fsync` for the run.
    #[arg(long, default_value = "never")]
    fsync: String,
    /// More collector settings, as TIDEWATER_... environment variables (KEY=VALUE); this
    /// tree's processor gets them too.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// The core of the collector, the null server and the one-core processor points.
    #[arg(long, default_value = "0")]
    server_core: String,
    /// The core of the load generator, and of the null server standing in for the
    /// processor's sinks.
    #[arg(long, default_value = "1")]
    loadgen_core: String,
    /// Measure nothing: write the report again from a `results.json` of an earlier run.
    #[arg(long, value_name = "FILE")]
    from_results: Option<PathBuf>,
}

/// One load generator run.
#[derive(Clone, Copy)]
struct Load {
    signal: &'static str,
    protocol: &'static str,
    concurrency: usize,
    /// Items per second; None: flat out.
    offered: Option<f64>,
}

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if let Some(file) = &args.from_results {
        let report: Report = serde_json::from_slice(&std::fs::read(file)?)
            .with_context(|| format!("{} is not a results.json", file.display()))?;
        return write(&report, &args.out);
    }
    let bin_dir = match &args.bin_dir {
        Some(d) => d.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("no directory")?
            .to_path_buf(),
    };
    // Absolute: the processor points run in a scratch directory.
    let bin_dir = std::path::absolute(&bin_dir)?;
    let tidewater = bin_dir.join("tidewater");
    let loadgen = bin_dir.join("loadgen");
    for b in [&tidewater, &loadgen] {
        anyhow::ensure!(
            b.exists(),
            "{} not found: build with `cargo build --release -p tidewater -p tidewater-benches` (benches/run does)",
            b.display()
        );
    }
    if let Some(b) = &mut args.baseline_tidewater {
        *b = std::path::absolute(&*b)?;
        anyhow::ensure!(
            b.is_file(),
            "--baseline-tidewater {}: no such file",
            b.display()
        );
    }
    let processor_points = args.processor_only || !args.quick;
    let pinned = Command::new("taskset")
        .arg("-V")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !pinned {
        eprintln!("bench-runner: taskset not found; running unpinned");
    }
    let runner = Runner {
        args: &args,
        loadgen: &loadgen,
        pinned,
    };

    let mut flat_out = vec![Load {
        signal: "traces",
        protocol: "grpc",
        concurrency: args.concurrency,
        offered: None,
    }];
    if args.low_concurrency > 0 && !args.processor_only {
        flat_out.push(Load {
            concurrency: args.low_concurrency,
            ..flat_out[0]
        });
    }
    if !args.quick && !args.processor_only {
        for (signal, protocol) in [
            ("traces", "http"),
            ("logs", "grpc"),
            ("metrics", "grpc"),
            ("events", "grpc"),
            ("events", "http"),
        ] {
            flat_out.push(Load {
                signal,
                protocol,
                ..flat_out[0]
            });
        }
    }
    let curve: Vec<Load> = if args.processor_only {
        Vec::new()
    } else {
        args.loads
            .iter()
            .map(|&l| Load {
                offered: Some(l),
                ..flat_out[0]
            })
            .collect()
    };
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut rows = Vec::new();

    // The ceiling: the same flat-out loads against a server that does nothing. Not needed
    // for the processor's figures.
    if !args.processor_only {
        let [port] = free_ports()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        eprintln!("== null server on {addr}");
        let mut cmd = runner.pinned(&loadgen, &args.server_core);
        cmd.args(["--null-server", &addr.to_string(), "--duration", "10m"]);
        let server = Server::start(cmd, &[addr])?;
        for load in &flat_out {
            rows.push(runner.point(Target::Null, &server, addr, addr, *load)?);
        }
    }

    // The collector.
    let bus_dir = match &args.bus_dir {
        Some(d) => d.clone(),
        None => {
            let base = if Path::new("/dev/shm").is_dir() {
                PathBuf::from("/dev/shm")
            } else {
                std::env::temp_dir()
            };
            base.join(format!("tidewater-bench-{}", std::process::id()))
        }
    };
    let bus_settings = |retention: &str| {
        vec![
            (FSYNC.to_string(), args.fsync.clone()),
            (SEGMENT_BYTES.to_string(), "16MiB".to_string()),
            (RETENTION_BYTES.to_string(), retention.to_string()),
            ("TIDEWATER_LOG__LEVEL".to_string(), "warn".to_string()),
        ]
    };
    // Bounds the bus on tmpfs; whole segments are dropped as the run goes.
    let mut settings = bus_settings("64MiB");
    let mut user_settings = Vec::new();
    for kv in &args.env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--env {kv:?}: expected KEY=VALUE"))?;
        user_settings.push((k.to_string(), v.to_string()));
    }
    settings.extend(user_settings.iter().cloned());
    // A backlog is drained whole: no segment of it may be dropped, neither by the collector
    // filling it nor by the processor opening it (retention is enforced on open too).
    let backlog_settings = bus_settings(BACKLOG_RETENTION);
    let mut processor_settings = backlog_settings.clone();
    processor_settings.extend(user_settings.iter().cloned());
    // A fresh collector for every point: the allocator keeps what a process once used, so a
    // point after a heavier one would report that one's memory.
    let collector = |bus: &Path,
                     extra: &[(String, String)]|
     -> anyhow::Result<(Server, SocketAddr, SocketAddr)> {
        let [grpc, http, admin] = free_ports()?;
        let grpc_addr = SocketAddr::from(([127, 0, 0, 1], grpc));
        let http_addr = SocketAddr::from(([127, 0, 0, 1], http));
        let mut cmd = runner.pinned(&tidewater, &args.server_core);
        cmd.arg("collector")
            .env("TIDEWATER_COLLECTOR__GRPC_ADDR", grpc_addr.to_string())
            .env("TIDEWATER_COLLECTOR__HTTP_ADDR", http_addr.to_string())
            .env("TIDEWATER_ADMIN__ADDR", format!("127.0.0.1:{admin}"))
            .env("TIDEWATER_BUS__EMBEDDED__DIR", bus)
            .envs(settings.iter().chain(extra).map(|(k, v)| (k, v)));
        let server = Server::start(cmd, &[grpc_addr, http_addr])?;
        Ok((server, grpc_addr, http_addr))
    };
    eprintln!("== tidewater collector, bus in {}", bus_dir.display());
    let result = (|| -> anyhow::Result<(u64, u64, u64)> {
        let (idle, idle_hwm) = {
            let (server, _, _) = collector(&bus_dir.join("bus-0"), &[])?;
            std::thread::sleep(Duration::from_secs(2));
            (
                procfs::status_kib(server.pid(), "VmRSS")?,
                procfs::status_kib(server.pid(), "VmHWM")?,
            )
        };
        eprintln!("idle RSS {:.1} MiB", idle as f64 / 1024.0);
        let mut after = 0;
        for (n, load) in curve.iter().chain(&flat_out).enumerate() {
            let bus = bus_dir.join(format!("bus-{}", n + 1));
            let (server, grpc_addr, http_addr) = collector(&bus, &[])?;
            rows.push(runner.point(Target::Collector, &server, grpc_addr, http_addr, *load)?);
            after = after.max(procfs::status_kib(server.pid(), "VmRSS")?);
            drop(server);
            let _ = std::fs::remove_dir_all(bus);
        }
        if processor_points {
            let drains = Drains {
                runner: &runner,
                tidewater: &tidewater,
                bus_dir: &bus_dir,
                collector: &collector,
                backlog_settings: &backlog_settings,
                settings: &processor_settings,
            };
            rows.extend(drains.run()?);
        }
        Ok((idle, idle_hwm, after))
    })();
    let _ = std::fs::remove_dir_all(&bus_dir);
    let (idle_rss_kib, idle_hwm_kib, rss_after_kib) = result?;

    let mut collector_settings: Vec<String> = settings.iter().map(setting).collect();
    if args.bus_dir.is_none() {
        collector_settings.push(format!("bus on tmpfs (`{}`)", bus_dir.display()));
    }
    let report = Report {
        date: chrono::Utc::now().format("%Y-%m-%d %H:%M UTC").to_string(),
        cpu_model: cpu_model(),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        loadavg,
        pinned,
        duration_s: args.duration.as_secs_f64(),
        warmup_s: args.warmup.as_secs_f64(),
        items_per_request: args.items,
        collector_settings,
        idle_rss_kib,
        idle_hwm_kib,
        rss_after_kib,
        curve_concurrency: args.concurrency,
        processor_settings: if processor_points {
            processor_settings.iter().map(setting).collect()
        } else {
            Vec::new()
        },
        rows,
    };
    write(&report, &args.out)
}

const FSYNC: &str = "TIDEWATER_BUS__EMBEDDED__FSYNC";
const SEGMENT_BYTES: &str = "TIDEWATER_BUS__EMBEDDED__SEGMENT_BYTES";
const RETENTION_BYTES: &str = "TIDEWATER_BUS__EMBEDDED__RETENTION_BYTES";
/// Far more than any backlog: `--processor-spans` of 2M is a few hundred MiB on the bus.
const BACKLOG_RETENTION: &str = "64GiB";

/// `TIDEWATER_BUS__EMBEDDED__FSYNC=never` as the report shows it: `bus.embedded.fsync = never`.
fn setting((k, v): &(String, String)) -> String {
    let key = k
        .trim_start_matches("TIDEWATER_")
        .to_lowercase()
        .replace("__", ".");
    format!("`{key} = {v}`")
}

fn write(report: &Report, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    std::fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(report)? + "\n",
    )?;
    std::fs::write(out.join("REPORT.md"), report.markdown())?;
    std::fs::write(out.join("throughput.svg"), report.svg())?;
    eprintln!("wrote {}", out.join("REPORT.md").display());
    Ok(())
}

struct Runner<'a> {
    args: &'a Args,
    loadgen: &'a Path,
    pinned: bool,
}

impl Runner<'_> {
    fn pinned(&self, program: &Path, core: &str) -> Command {
        if self.pinned {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(core).arg(program);
            cmd
        } else {
            Command::new(program)
        }
    }

    /// `loadgen` for one load point: `self.args.duration` measured after `warmup`.
    fn loadgen(&self, target: SocketAddr, load: Load) -> Command {
        self.loadgen_for(target, load, self.args.warmup, self.args.duration)
    }

    fn loadgen_for(
        &self,
        target: SocketAddr,
        load: Load,
        warmup: Duration,
        duration: Duration,
    ) -> Command {
        let mut cmd = self.pinned(self.loadgen, &self.args.loadgen_core);
        cmd.args(["--target", &target.to_string()])
            .args(["--signal", load.signal, "--protocol", load.protocol])
            .args(["--items", &self.args.items.to_string()])
            .args(["--concurrency", &load.concurrency.to_string()])
            .args(["--duration", &format!("{}ms", duration.as_millis())])
            .args(["--warmup", &format!("{}ms", warmup.as_millis())]);
        if let Some(items_per_s) = load.offered {
            let rate = items_per_s / self.args.items as f64;
            cmd.args(["--rate", &rate.to_string()]);
        }
        cmd
    }

    fn point(
        &self,
        target: Target,
        server: &Server,
        grpc: SocketAddr,
        http: SocketAddr,
        load: Load,
    ) -> anyhow::Result<Row> {
        let pid = server.pid();
        eprintln!(
            "-- {target:?}: {} over {}, {} in flight, {}",
            load.signal,
            load.protocol,
            load.concurrency,
            load.offered
                .map_or("flat out".into(), |l| format!("{} items/s", si(l)))
        );
        let addr = if load.protocol == "grpc" { grpc } else { http };
        let peak_reset = procfs::reset_peak(pid);
        let core = if self.pinned {
            self.args.server_core.parse().ok()
        } else {
            None
        };
        let sampler = Sampler::start(pid, core, Duration::from_millis(50));
        let started = Instant::now();
        let mut child = self
            .loadgen(addr, load)
            .stdout(Stdio::piped())
            .spawn()
            .context("cannot start loadgen")?;
        let mut stdout = String::new();
        child
            .stdout
            .take()
            .context("piped")?
            .read_to_string(&mut stdout)?;
        let (status, loadgen_cpu) = wait_with_rusage(&child)?;
        let wall = started.elapsed().as_secs_f64();
        let samples = sampler.finish();
        let sampled_peak = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
        let hwm = procfs::status_kib(pid, "VmHWM")?;
        anyhow::ensure!(status, "loadgen failed");
        let summary: serde_json::Value = stdout
            .lines()
            .last()
            .context("loadgen printed no summary")
            .and_then(|l| serde_json::from_str(l).context("loadgen summary is not JSON"))?;
        let f = |k: &str| summary[k].as_f64().unwrap_or(0.0);
        let window_from = started + Duration::from_secs_f64(f("window_from_s"));
        let window_to = window_from + Duration::from_secs_f64(f("window_s"));
        let (server_cores, core_busy) = procfs::cores_between(&samples, window_from, window_to);
        let row = Row {
            target,
            signal: load.signal.into(),
            protocol: load.protocol.into(),
            item: match load.signal {
                "traces" => "spans",
                "logs" => "log records",
                "metrics" => "data points",
                _ => "events",
            }
            .into(),
            concurrency: load.concurrency,
            offered_items_per_s: load.offered,
            req_per_s: f("req_per_s"),
            items_per_s: f("items_per_s"),
            p50_ms: summary["latency_ms"]["p50"].as_f64().unwrap_or(0.0),
            p99_ms: summary["latency_ms"]["p99"].as_f64().unwrap_or(0.0),
            failed: summary["failed"].as_u64().unwrap_or(0),
            errors: serde_json::from_value(summary["errors"].clone()).unwrap_or_default(),
            server_cpu_cores: server_cores,
            others_on_server_core: core.map(|_| (core_busy - server_cores).max(0.0)),
            loadgen_cpu_cores: loadgen_cpu / wall,
            peak_rss_kib: if peak_reset {
                hwm.max(sampled_peak)
            } else {
                sampled_peak
            },
            drain: None,
        };
        eprintln!(
            "   {} {}/s, server {:.2} cores (others on its core {:.2}), peak RSS {:.1} MiB, p99 {:.1} ms, loadgen {:.2} cores",
            si(row.items_per_s),
            row.item,
            row.server_cpu_cores,
            row.others_on_server_core.unwrap_or(0.0),
            row.peak_rss_kib as f64 / 1024.0,
            row.p99_ms,
            row.loadgen_cpu_cores
        );
        // Let the last batches go out and memory settle before the next point.
        std::thread::sleep(Duration::from_millis(700));
        Ok(row)
    }
}

type StartCollector<'a> =
    dyn Fn(&Path, &[(String, String)]) -> anyhow::Result<(Server, SocketAddr, SocketAddr)> + 'a;

/// The processor points: the bus is filled once with a traces backlog (and once with events,
/// which the Elasticsearch sink takes instead of spans), then each point drains a fresh copy
/// of it with a fresh `tidewater processor`, so every point starts from the same backlog and
/// no checkpoint (kept in the bus directory, `offsets/`).
struct Drains<'a> {
    runner: &'a Runner<'a>,
    tidewater: &'a Path,
    bus_dir: &'a Path,
    collector: &'a StartCollector<'a>,
    /// The bus and log settings that keep a whole backlog, without `--env`: what the baseline
    /// processor gets.
    backlog_settings: &'a [(String, String)],
    /// This tree's processor's settings, besides each point's own.
    settings: &'a [(String, String)],
}

/// What the bus was filled with.
struct Backlog {
    dir: PathBuf,
    signal: &'static str,
    item: &'static str,
    requests: u64,
    items: u64,
}

/// Where a processor point delivers.
#[derive(Clone, Copy)]
enum SinkKind {
    File,
    /// X-Ray, with the AWS SDK pointed at this null server.
    Xray(SocketAddr),
    /// Elasticsearch at this null server.
    Elasticsearch(SocketAddr),
}

impl SinkKind {
    fn name(self) -> &'static str {
        match self {
            SinkKind::File => "file",
            SinkKind::Xray(_) => "xray",
            SinkKind::Elasticsearch(_) => "elasticsearch",
        }
    }
}

/// One processor point.
struct DrainPoint<'a> {
    program: &'a Path,
    /// The baseline binary's file name; None for this tree's processor.
    baseline: Option<String>,
    sink: SinkKind,
    cores: &'a str,
    settings: &'a [(String, String)],
}

impl Drains<'_> {
    fn run(&self) -> anyhow::Result<Vec<Row>> {
        let args = self.runner.args;
        let traces = self.fill("traces")?;
        let events = self.fill("events")?;
        let one = args.server_core.as_str();
        let mut rows = Vec::new();
        if let Some(baseline) = &args.baseline_tidewater {
            // Only keys both versions know: the bus and log keys here, the file sink's in
            // `drain`. `--env` may name keys the older binary would refuse.
            rows.push(
                self.drain(
                    &DrainPoint {
                        program: baseline,
                        baseline: Some(
                            baseline
                                .file_name()
                                .map_or("baseline".into(), |n| n.to_string_lossy().into_owned()),
                        ),
                        sink: SinkKind::File,
                        cores: one,
                        settings: self.backlog_settings,
                    },
                    &traces,
                )?,
            );
        }
        let this = |sink, cores| DrainPoint {
            program: self.tidewater,
            baseline: None,
            sink,
            cores,
            settings: self.settings,
        };
        rows.push(self.drain(&this(SinkKind::File, one), &traces)?);
        rows.push(self.drain(&this(SinkKind::File, &args.processor_cores), &traces)?);
        // One null server for both services, on the load generator's core so that it takes
        // nothing from the processor's.
        let [port] = free_ports()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut cmd = self.runner.pinned(self.runner.loadgen, &args.loadgen_core);
        cmd.args(["--null-server", &addr.to_string(), "--duration", "10m"]);
        let null = Server::start(cmd, &[addr])?;
        rows.push(self.drain(&this(SinkKind::Xray(addr), one), &traces)?);
        rows.push(self.drain(&this(SinkKind::Elasticsearch(addr), one), &events)?);
        drop(null);
        let _ = std::fs::remove_dir_all(&traces.dir);
        let _ = std::fs::remove_dir_all(&events.dir);
        Ok(rows)
    }

    /// Fills a bus with `--processor-spans` items of `signal` through a collector, which is
    /// stopped before any processor starts.
    fn fill(&self, signal: &'static str) -> anyhow::Result<Backlog> {
        let args = self.runner.args;
        let per_request = args.items as u64;
        let requests = args.processor_spans.div_ceil(per_request).max(1);
        let dir = self.bus_dir.join(format!("backlog-{signal}"));
        eprintln!(
            "-- Processor: filling a bus with {} {signal} ({requests} requests)",
            si((requests * per_request) as f64)
        );
        let keep_all = [(RETENTION_BYTES.to_string(), BACKLOG_RETENTION.to_string())];
        let (server, grpc, _) = (self.collector)(&dir, &keep_all)?;
        let load = Load {
            signal,
            protocol: "grpc",
            concurrency: args.concurrency,
            offered: None,
        };
        let out = self
            .runner
            .loadgen_for(grpc, load, Duration::ZERO, Duration::from_secs(600))
            .args(["--requests", &requests.to_string(), "--quiet"])
            .stdout(Stdio::piped())
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "filling the bus: loadgen failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: serde_json::Value = serde_json::from_slice(
            out.stdout
                .split(|b| *b == b'\n')
                .rfind(|l| !l.is_empty())
                .context("loadgen printed no summary")?,
        )?;
        anyhow::ensure!(
            summary["ok"] == requests,
            "filling the bus: not every request was accepted: {summary}"
        );
        let items = summary["items_ok"].as_u64().unwrap_or(0);
        // SIGTERM: the collector publishes what it holds before it exits.
        drop(server);
        Ok(Backlog {
            dir,
            signal,
            item: if signal == "traces" {
                "spans"
            } else {
                "events"
            },
            requests,
            items,
        })
    }

    /// Drains a copy of `backlog` with a fresh processor, timed from its start until its
    /// metrics show every item consumed and every batch delivered.
    fn drain(&self, point: &DrainPoint, backlog: &Backlog) -> anyhow::Result<Row> {
        let runner = self.runner;
        let sink = point.sink.name();
        eprintln!(
            "-- Processor{}: {} from the bus to the {sink} sink, cores {}",
            point
                .baseline
                .as_ref()
                .map_or(String::new(), |b| format!(" ({b})")),
            backlog.signal,
            point.cores
        );
        let work = self.bus_dir.join("drain");
        let _ = std::fs::remove_dir_all(&work);
        let bus = work.join("bus");
        copy_dir(&backlog.dir, &bus)?;
        let [admin] = free_ports()?;
        let admin = SocketAddr::from(([127, 0, 0, 1], admin));
        let mut cmd = runner.pinned(point.program, point.cores);
        // Run in the scratch directory, so that the relative default paths (dead letters,
        // sink state: `tidewater-data/...`) land there, whatever keys name them in this
        // version: setting them would tie the run to one version's configuration.
        cmd.arg("processor")
            .current_dir(&work)
            .envs(point.settings.iter().map(|(k, v)| (k, v)))
            .env("TIDEWATER_BUS__EMBEDDED__DIR", &bus)
            .env("TIDEWATER_ADMIN__ADDR", admin.to_string());
        match point.sink {
            SinkKind::File => {
                cmd.env("TIDEWATER_SINKS__FILE__DIR", work.join("out"))
                    .env("TIDEWATER_SINKS__FILE__FSYNC", "false");
            }
            SinkKind::Xray(null) => {
                cmd.env("TIDEWATER_SINKS__FILE__ENABLED", "false")
                    .env("TIDEWATER_SINKS__XRAY__ENABLED", "true")
                    .env("AWS_ENDPOINT_URL_XRAY", format!("http://{null}"))
                    .env("AWS_REGION", "us-east-1")
                    .env("AWS_ACCESS_KEY_ID", "x")
                    .env("AWS_SECRET_ACCESS_KEY", "x")
                    // Nothing of this machine's own AWS setup may reach the stand-in.
                    .env("AWS_EC2_METADATA_DISABLED", "true")
                    .env_remove("AWS_PROFILE")
                    .env_remove("AWS_SESSION_TOKEN")
                    .env_remove("AWS_ENDPOINT_URL");
            }
            SinkKind::Elasticsearch(null) => {
                cmd.env("TIDEWATER_SINKS__FILE__ENABLED", "false")
                    .env("TIDEWATER_SINKS__ELASTICSEARCH__ENABLED", "true")
                    .env(
                        "TIDEWATER_SINKS__ELASTICSEARCH__URL",
                        format!("http://{null}"),
                    );
            }
        }
        let cores = if runner.pinned {
            parse_cores(point.cores)?
        } else {
            Vec::new()
        };
        let busy = || -> f64 {
            cores
                .iter()
                .map(|&c| procfs::core_busy_seconds(c).unwrap_or(0.0))
                .sum()
        };
        let busy_before = busy();
        let started = Instant::now();
        let mut server = Server::start(cmd, &[admin])?;
        let pid = server.pid();
        let client = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        let url = format!("http://{admin}/metrics");
        let expected = backlog.items as f64;
        let deadline = started + Duration::from_secs(900);
        let mut next_progress = started + Duration::from_secs(10);
        let (mut consumed, mut records, mut delivered) = (0.0, 0.0, 0.0);
        loop {
            if let Some(status) = server.child.try_wait()? {
                anyhow::bail!("the processor exited before draining the bus: {status}");
            }
            // A scrape that fails (the admin server busy past the timeout) is tried again.
            if let Ok(text) = client.get(&url).send().and_then(|r| r.text()) {
                consumed = metric(&text, "tidewater_processor_consumed_items_total");
                records = metric(&text, "tidewater_processor_consumed_records_total");
                delivered = metric(&text, "tidewater_processor_delivered_batches_total");
                if consumed >= expected && delivered >= records {
                    break;
                }
            }
            let now = Instant::now();
            anyhow::ensure!(
                now < deadline,
                "the processor did not drain the bus: {consumed} of {expected} {} consumed, {delivered} batches delivered of {records} records",
                backlog.item
            );
            if now >= next_progress {
                eprintln!(
                    "   {:.0} s: {} of {} {} consumed",
                    (now - started).as_secs_f64(),
                    si(consumed),
                    si(expected),
                    backlog.item
                );
                next_progress += Duration::from_secs(10);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let done = Instant::now();
        // The process is fresh: its CPU time and peak RSS are the drain's, start-up included.
        let cpu = procfs::cpu_seconds(pid)?;
        let busy_after = busy();
        let hwm = procfs::status_kib(pid, "VmHWM")?;
        drop(server);
        let errors = count_lines(&work.join("tidewater-data"));
        if !errors.is_empty() {
            eprintln!("   dead letters: {errors:?}");
        }
        let _ = std::fs::remove_dir_all(&work);
        let secs = (done - started).as_secs_f64();
        let server_cores = cpu / secs;
        let row = Row {
            target: Target::Processor,
            signal: backlog.signal.into(),
            protocol: format!(
                "bus → {}",
                match point.sink {
                    SinkKind::File => "file",
                    SinkKind::Xray(_) => "X-Ray",
                    SinkKind::Elasticsearch(_) => "Elasticsearch",
                }
            ),
            item: backlog.item.into(),
            concurrency: 0,
            offered_items_per_s: None,
            req_per_s: backlog.requests as f64 / secs,
            items_per_s: expected / secs,
            p50_ms: 0.0,
            p99_ms: 0.0,
            failed: 0,
            errors,
            server_cpu_cores: server_cores,
            others_on_server_core: (!cores.is_empty())
                .then(|| ((busy_after - busy_before) / secs - server_cores).max(0.0)),
            loadgen_cpu_cores: 0.0,
            peak_rss_kib: hwm,
            drain: Some(Drain {
                sink: sink.into(),
                cores: point.cores.into(),
                core_count: parse_cores(point.cores).map_or(1, |c| c.len()),
                baseline: point.baseline.clone(),
                items: backlog.items,
                records: records as u64,
                drain_s: secs,
            }),
        };
        eprintln!(
            "   {} {}/s in {:.1} s, processor {:.2} cores = {} {} per CPU-second, peak RSS {:.1} MiB",
            si(row.items_per_s),
            row.item,
            secs,
            row.server_cpu_cores,
            si(row.items_per_cpu_second()),
            row.item,
            row.peak_rss_kib as f64 / 1024.0
        );
        Ok(row)
    }
}

/// `taskset -c` core lists: "0", "0,1", "0-3", "0,2-3".
fn parse_cores(list: &str) -> anyhow::Result<Vec<usize>> {
    let mut cores = Vec::new();
    for part in list.split(',').map(str::trim) {
        let bad = || format!("{list:?} is not a core list such as 0,1 or 0-3");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) =
                    (a.parse().with_context(bad)?, b.parse().with_context(bad)?);
                anyhow::ensure!(a <= b, bad());
                cores.extend(a..=b);
            }
            None => cores.push(part.parse().with_context(bad)?),
        }
    }
    cores.sort_unstable();
    cores.dedup();
    Ok(cores)
}

/// Copies a bus directory (segments, `meta.json`, the `offsets/` directory and `LOCK`, an
/// empty file the lock is taken on).
fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from).with_context(|| format!("{}", from.display()))? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// Lines of each `.ndjson` file under `dir` (where the processor's dead letters go), by file
/// name: what the processor could not deliver, none expected.
fn count_lines(dir: &Path) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            counts.append(&mut count_lines(&path));
        } else if path.extension().is_some_and(|e| e == "ndjson") {
            if let Ok(text) = std::fs::read(&path) {
                let lines = text.iter().filter(|&&b| b == b'\n').count() as u64;
                if lines > 0 {
                    *counts
                        .entry(format!(
                            "dead letters in {}",
                            entry.file_name().to_string_lossy()
                        ))
                        .or_default() += lines;
                }
            }
        }
    }
    counts
}

/// The sum of a Prometheus metric's samples, whatever their labels.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        // Not `sum()`: that of nothing is -0.0, which the progress lines would print.
        .fold(0.0, |a, b| a + b)
}

/// Waits for `child` and returns whether it succeeded and the CPU seconds it used. std's
/// `wait` does not report resource usage; `wait4` does.
fn wait_with_rusage(child: &Child) -> anyhow::Result<(bool, f64)> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value of that plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child, writing only to the two locals.
    let r = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    anyhow::ensure!(r >= 0, "wait4: {}", std::io::Error::last_os_error());
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    Ok((ok, secs(usage.ru_utime) + secs(usage.ru_stime)))
}

/// A server process of the run, stopped with SIGTERM (then SIGKILL) when dropped.
struct Server {
    child: Child,
}

impl Server {
    fn start(mut cmd: Command, ports: &[SocketAddr]) -> anyhow::Result<Server> {
        let child = cmd
            .stdin(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {cmd:?}"))?;
        let mut server = Server { child };
        let deadline = Instant::now() + Duration::from_secs(30);
        for addr in ports {
            while TcpStream::connect_timeout(addr, Duration::from_millis(200)).is_err() {
                if let Some(status) = server.child.try_wait()? {
                    anyhow::bail!("{cmd:?} exited: {status}");
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{cmd:?} did not listen on {addr}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        Ok(server)
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SAFETY: signals our own child, by its id.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `N` distinct free loopback ports: the listeners are held until all are bound, so the
/// system cannot hand out one port twice.
fn free_ports<const N: usize>() -> anyhow::Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_lists_read_as_taskset_takes_them() {
        assert_eq!(parse_cores("0").unwrap(), [0]);
        assert_eq!(parse_cores("0,1").unwrap(), [0, 1]);
        assert_eq!(parse_cores("2-3,0").unwrap(), [0, 2, 3]);
        assert_eq!(parse_cores("1,1").unwrap(), [1]);
        assert!(parse_cores("a").is_err());
        assert!(parse_cores("3-1").is_err());
    }

    #[test]
    fn metrics_sum_over_labels_and_skip_longer_names() {
        let text = "# TYPE tidewater_processor_consumed_items_total counter\n\
                    tidewater_processor_consumed_items_total{signal=\"traces\"} 1500\n\
                    tidewater_processor_consumed_items_total{signal=\"events\"} 500\n\
                    tidewater_processor_consumed_items_total_extra 7\n\
                    tidewater_processor_consumed_records_total 12\n";
        assert_eq!(
            metric(text, "tidewater_processor_consumed_items_total"),
            2000.0
        );
        assert_eq!(
            metric(text, "tidewater_processor_consumed_records_total"),
            12.0
        );
        assert_eq!(
            metric(text, "tidewater_processor_delivered_batches_total"),
            0.0
        );
    }

    #[test]
    fn dead_letters_are_counted_by_file_in_nested_directories() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join("dead-letter");
        std::fs::create_dir_all(&nested).unwrap();
        std::fs::write(nested.join("xray.ndjson"), "{}\n{}\n").unwrap();
        std::fs::write(nested.join("empty.ndjson"), "").unwrap();
        std::fs::write(dir.path().join("state.json"), "{}\n").unwrap();
        let counts = count_lines(dir.path());
        assert_eq!(
            counts.into_iter().collect::<Vec<_>>(),
            [("dead letters in xray.ndjson".to_string(), 2)]
        );
        assert!(count_lines(&dir.path().join("missing")).is_empty());
    }
}
