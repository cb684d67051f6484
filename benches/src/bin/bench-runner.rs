//! `bench-runner`: measures the collector and writes `benches/report/`.
//!
//! Run it with `benches/run`, which builds the release binaries first. It starts each server
//! (`loadgen --null-server` for the ceiling, then `tidewater collector`) pinned to one core
//! with `taskset`, drives `loadgen` pinned to the other core at several offered loads and flat
//! out, samples the server's CPU time and RSS from `/proc`, and writes `results.json`,
//! `REPORT.md` and `throughput.svg`.

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use tidewater_benches::procfs::{self, Sampler};
use tidewater_benches::report::{si, Report, Row, Target};

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
    /// Only the traces/gRPC curve and its ceiling, not the other signals and protocols.
    #[arg(long)]
    quick: bool,
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
    /// More collector settings, as TIDEWATER_... environment variables (KEY=VALUE).
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    #[arg(long, default_value = "0")]
    server_core: String,
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
    let args = Args::parse();
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
    let tidewater = bin_dir.join("tidewater");
    let loadgen = bin_dir.join("loadgen");
    for b in [&tidewater, &loadgen] {
        anyhow::ensure!(
            b.exists(),
            "{} not found: build with `cargo build --release -p tidewater -p tidewater-benches` (benches/run does)",
            b.display()
        );
    }
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
    if args.low_concurrency > 0 {
        flat_out.push(Load {
            concurrency: args.low_concurrency,
            ..flat_out[0]
        });
    }
    if !args.quick {
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
    let curve: Vec<Load> = args
        .loads
        .iter()
        .map(|&l| Load {
            offered: Some(l),
            ..flat_out[0]
        })
        .collect();
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut rows = Vec::new();

    // The ceiling: the same flat-out loads against a server that does nothing.
    {
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
    let mut settings = vec![
        (
            "TIDEWATER_BUS__EMBEDDED__FSYNC".to_string(),
            args.fsync.clone(),
        ),
        // Bounds the bus on tmpfs; whole segments are dropped as the run goes.
        (
            "TIDEWATER_BUS__EMBEDDED__SEGMENT_BYTES".into(),
            "16MiB".into(),
        ),
        (
            "TIDEWATER_BUS__EMBEDDED__RETENTION_BYTES".into(),
            "64MiB".into(),
        ),
        ("TIDEWATER_LOG__LEVEL".into(), "warn".into()),
    ];
    for kv in &args.env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--env {kv:?}: expected KEY=VALUE"))?;
        settings.push((k.to_string(), v.to_string()));
    }
    // A fresh collector for every point: the allocator keeps what a process once used, so a
    // point after a heavier one would report that one's memory.
    let collector = |n: usize| -> anyhow::Result<(Server, SocketAddr, SocketAddr)> {
        let [grpc, http, admin] = free_ports()?;
        let grpc_addr = SocketAddr::from(([127, 0, 0, 1], grpc));
        let http_addr = SocketAddr::from(([127, 0, 0, 1], http));
        let mut cmd = runner.pinned(&tidewater, &args.server_core);
        cmd.arg("collector")
            .env("TIDEWATER_COLLECTOR__GRPC_ADDR", grpc_addr.to_string())
            .env("TIDEWATER_COLLECTOR__HTTP_ADDR", http_addr.to_string())
            .env("TIDEWATER_ADMIN__ADDR", format!("127.0.0.1:{admin}"))
            .env(
                "TIDEWATER_BUS__EMBEDDED__DIR",
                bus_dir.join(format!("bus-{n}")),
            )
            .envs(settings.iter().map(|(k, v)| (k, v)));
        let server = Server::start(cmd, &[grpc_addr, http_addr])?;
        Ok((server, grpc_addr, http_addr))
    };
    eprintln!("== tidewater collector, bus in {}", bus_dir.display());
    let result = (|| -> anyhow::Result<(u64, u64, u64)> {
        let (idle, idle_hwm) = {
            let (server, _, _) = collector(0)?;
            std::thread::sleep(Duration::from_secs(2));
            (
                procfs::status_kib(server.pid(), "VmRSS")?,
                procfs::status_kib(server.pid(), "VmHWM")?,
            )
        };
        eprintln!("idle RSS {:.1} MiB", idle as f64 / 1024.0);
        let mut after = 0;
        for (n, load) in curve.iter().chain(&flat_out).enumerate() {
            let (server, grpc_addr, http_addr) = collector(n + 1)?;
            rows.push(runner.point(Target::Collector, &server, grpc_addr, http_addr, *load)?);
            after = after.max(procfs::status_kib(server.pid(), "VmRSS")?);
            drop(server);
            let _ = std::fs::remove_dir_all(bus_dir.join(format!("bus-{}", n + 1)));
        }
        if !args.quick {
            rows.push(processor_point(
                &runner, &tidewater, &bus_dir, &settings, &collector,
            )?);
        }
        Ok((idle, idle_hwm, after))
    })();
    let _ = std::fs::remove_dir_all(&bus_dir);
    let (idle_rss_kib, idle_hwm_kib, rss_after_kib) = result?;

    let mut collector_settings: Vec<String> = settings
        .iter()
        .map(|(k, v)| {
            let key = k
                .trim_start_matches("TIDEWATER_")
                .to_lowercase()
                .replace("__", ".");
            format!("`{key} = {v}`")
        })
        .collect();
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
        rows,
    };
    write(&report, &args.out)
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

type StartCollector<'a> = dyn Fn(usize) -> anyhow::Result<(Server, SocketAddr, SocketAddr)> + 'a;

/// The processor: a collector fills the bus with 10,000 requests of traces and stops; then
/// `tidewater processor`, pinned like the collector, drains the bus into the file sink on
/// tmpfs (without fsync), and is timed until it delivered every span.
fn processor_point(
    runner: &Runner,
    tidewater: &Path,
    bus_dir: &Path,
    settings: &[(String, String)],
    collector: &StartCollector,
) -> anyhow::Result<Row> {
    const BUS: usize = 999;
    const REQUESTS: u64 = 10_000;
    eprintln!("-- Processor: traces from the bus to the file sink");
    let (server, grpc, _) = collector(BUS)?;
    let load = Load {
        signal: "traces",
        protocol: "grpc",
        concurrency: runner.args.concurrency,
        offered: None,
    };
    let out = runner
        .loadgen_for(grpc, load, Duration::ZERO, Duration::from_secs(300))
        .args(["--requests", &REQUESTS.to_string(), "--quiet"])
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
        summary["ok"] == REQUESTS,
        "filling the bus: not every request was accepted: {summary}"
    );
    let expected = summary["items_ok"].as_f64().unwrap_or(0.0);
    // SIGTERM: the collector publishes what it holds before it exits.
    drop(server);

    let [admin] = free_ports()?;
    let admin = SocketAddr::from(([127, 0, 0, 1], admin));
    let mut cmd = runner.pinned(tidewater, &runner.args.server_core);
    cmd.arg("processor")
        .env(
            "TIDEWATER_BUS__EMBEDDED__DIR",
            bus_dir.join(format!("bus-{BUS}")),
        )
        .env("TIDEWATER_ADMIN__ADDR", admin.to_string())
        .env("TIDEWATER_SINKS__FILE__DIR", bus_dir.join("out"))
        .env("TIDEWATER_SINKS__FILE__FSYNC", "false")
        .env(
            "TIDEWATER_PROCESSOR__DEAD_LETTER_DIR",
            bus_dir.join("dead-letter"),
        )
        .envs(settings.iter().map(|(k, v)| (k, v)));
    let started = Instant::now();
    let server = Server::start(cmd, &[admin])?;
    let core = if runner.pinned {
        runner.args.server_core.parse().ok()
    } else {
        None
    };
    let sampler = Sampler::start(server.pid(), core, Duration::from_millis(50));
    let url = format!("http://{admin}/metrics");
    let deadline = started + Duration::from_secs(300);
    loop {
        let text = reqwest::blocking::get(&url)?.text()?;
        let consumed = metric(&text, "tidewater_processor_consumed_items_total");
        let records = metric(&text, "tidewater_processor_consumed_records_total");
        let delivered = metric(&text, "tidewater_processor_delivered_batches_total");
        if consumed >= expected && delivered >= records {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the processor did not drain the bus: {consumed} of {expected} spans"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let done = Instant::now();
    let samples = sampler.finish();
    let hwm = procfs::status_kib(server.pid(), "VmHWM")?;
    drop(server);
    let _ = std::fs::remove_dir_all(bus_dir.join(format!("bus-{BUS}")));
    let _ = std::fs::remove_dir_all(bus_dir.join("out"));
    let secs = (done - started).as_secs_f64();
    let (server_cores, core_busy) = procfs::cores_between(&samples, started, done);
    let row = Row {
        target: Target::Processor,
        signal: "traces".into(),
        protocol: "bus → file".into(),
        item: "spans".into(),
        concurrency: 0,
        offered_items_per_s: None,
        req_per_s: REQUESTS as f64 / secs,
        items_per_s: expected / secs,
        p50_ms: 0.0,
        p99_ms: 0.0,
        failed: 0,
        errors: Default::default(),
        server_cpu_cores: server_cores,
        others_on_server_core: core.map(|_| (core_busy - server_cores).max(0.0)),
        loadgen_cpu_cores: 0.0,
        peak_rss_kib: hwm.max(samples.iter().map(|s| s.rss_kib).max().unwrap_or(0)),
    };
    eprintln!(
        "   {} spans/s, processor {:.2} cores, peak RSS {:.1} MiB",
        si(row.items_per_s),
        row.server_cpu_cores,
        row.peak_rss_kib as f64 / 1024.0
    );
    Ok(row)
}

/// The sum of a Prometheus metric's samples, whatever their labels.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
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
