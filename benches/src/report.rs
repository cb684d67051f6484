//! The bench runner's results and how they are written: `results.json`, `REPORT.md` and
//! `throughput.svg`. Pure: the runner measures, this only formats.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// `loadgen --null-server`: the load generator's own ceiling.
    Null,
    Collector,
    /// `tidewater processor` draining a backlog from the bus into a sink.
    Processor,
}

/// One load point: one load generator run against one server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub target: Target,
    pub signal: String,
    pub protocol: String,
    /// "spans", "log records", ...
    pub item: String,
    pub concurrency: usize,
    /// None: flat out.
    pub offered_items_per_s: Option<f64>,
    pub req_per_s: f64,
    pub items_per_s: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub failed: u64,
    pub errors: BTreeMap<String, u64>,
    /// CPU time of the server over the run, per second of wall time (1.0 = one core busy).
    pub server_cpu_cores: f64,
    /// CPU other processes took on the server's core over the run: on a shared machine, what
    /// the server could not have.
    #[serde(default)]
    pub others_on_server_core: Option<f64>,
    pub loadgen_cpu_cores: f64,
    /// Peak RSS of the server during the run.
    pub peak_rss_kib: u64,
    /// Processor points only: what was drained, where to, on which cores, by which binary.
    /// Absent from the results of runs before the drain points existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain: Option<Drain>,
}

/// A processor point: a fresh `tidewater processor` draining a backlog the bus was filled
/// with before it started, timed until its metrics show every item consumed and delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Drain {
    /// "file", "xray" or "elasticsearch".
    pub sink: String,
    /// The cores it was allowed, as given to `taskset -c`.
    pub cores: String,
    pub core_count: usize,
    /// The file name of the other `tidewater` binary this point ran (`--baseline-tidewater`),
    /// or None for the tree's own.
    #[serde(default)]
    pub baseline: Option<String>,
    /// Items (spans or events) in the backlog, all drained.
    pub items: u64,
    /// Bus records holding them.
    pub records: u64,
    /// From starting the process to the last item delivered.
    pub drain_s: f64,
}

impl Row {
    pub fn items_per_cpu_second(&self) -> f64 {
        if self.server_cpu_cores > 0.0 {
            self.items_per_s / self.server_cpu_cores
        } else {
            0.0
        }
    }

    /// Which server: for processor drains, also which binary and, past one, which cores.
    fn server_label(&self) -> String {
        match (self.target, &self.drain) {
            (Target::Null, _) => "null".into(),
            (Target::Collector, _) => "collector".into(),
            (Target::Processor, None) => "processor".into(),
            (Target::Processor, Some(d)) => {
                let mut label = "processor".to_string();
                if let Some(b) = &d.baseline {
                    let _ = write!(label, " ({b})");
                }
                if d.core_count > 1 {
                    let _ = write!(label, " on cores {}", d.cores);
                }
                label
            }
        }
    }

    fn same_load(&self, other: &Row) -> bool {
        self.signal == other.signal
            && self.protocol == other.protocol
            && self.concurrency == other.concurrency
            && self.offered_items_per_s.is_none()
            && other.offered_items_per_s.is_none()
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub date: String,
    pub cpu_model: String,
    pub cores: usize,
    /// /proc/loadavg before the run: how busy the shared machine was.
    pub loadavg: String,
    /// Whether the servers and the load generator ran pinned to cores of their own.
    pub pinned: bool,
    pub duration_s: f64,
    pub warmup_s: f64,
    pub items_per_request: usize,
    /// The collector's settings that differ from the defaults.
    pub collector_settings: Vec<String>,
    pub idle_rss_kib: u64,
    pub idle_hwm_kib: u64,
    pub rss_after_kib: u64,
    /// The concurrency of the traces/gRPC load curve.
    pub curve_concurrency: usize,
    /// The settings every processor point ran with (besides its bus copy, admin port and
    /// sink): empty in runs before the drain points existed.
    #[serde(default)]
    pub processor_settings: Vec<String>,
    pub rows: Vec<Row>,
}

/// Whether a drain point ran on one core or on more.
#[derive(Clone, Copy)]
enum Cores {
    One,
    More,
}

/// `a / b`, or 0 when there is no `b` to compare with.
fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// 1234567 -> "1.23M", 45600 -> "45.6k".
pub fn si(x: f64) -> String {
    if x >= 1e6 {
        format!("{:.2}M", x / 1e6)
    } else if x >= 1e3 {
        format!("{:.1}k", x / 1e3)
    } else {
        format!("{x:.0}")
    }
}

/// 0.123 -> "12%", 0.0031 -> "0.3%".
fn percent(ratio: f64) -> String {
    if ratio < 0.1 {
        format!("{:.1}%", 100.0 * ratio)
    } else {
        format!("{:.0}%", 100.0 * ratio)
    }
}

impl Report {
    /// The null-server row measured with the same load as `row`.
    pub fn ceiling(&self, row: &Row) -> Option<&Row> {
        self.rows
            .iter()
            .find(|r| r.target == Target::Null && r.same_load(row))
    }

    /// Traces over gRPC at the curve's concurrency: the offered loads, then flat out.
    pub fn curve(&self) -> Vec<&Row> {
        let mut rows: Vec<&Row> = self
            .rows
            .iter()
            .filter(|r| {
                r.target == Target::Collector
                    && r.signal == "traces"
                    && r.protocol == "grpc"
                    && r.concurrency == self.curve_concurrency
            })
            .collect();
        rows.sort_by(|a, b| {
            let key = |r: &Row| r.offered_items_per_s.unwrap_or(f64::INFINITY);
            key(a).total_cmp(&key(b))
        });
        rows
    }

    fn flat_out_traces(&self) -> Option<&Row> {
        self.curve()
            .into_iter()
            .find(|r| r.offered_items_per_s.is_none())
    }

    fn at_100k(&self) -> Option<&Row> {
        self.curve()
            .into_iter()
            .find(|r| r.offered_items_per_s == Some(100_000.0))
    }

    /// The processor points of a run that had them.
    pub fn drains(&self) -> impl Iterator<Item = (&Row, &Drain)> {
        self.rows
            .iter()
            .filter(|r| r.target == Target::Processor)
            .filter_map(|r| Some((r, r.drain.as_ref()?)))
    }

    /// The drain into `sink` by the tree's processor (or the baseline's), on one core or more.
    fn drain(&self, sink: &str, baseline: bool, cores: Cores) -> Option<(&Row, &Drain)> {
        self.drains().find(|(_, d)| {
            d.sink == sink
                && d.baseline.is_some() == baseline
                && match cores {
                    Cores::One => d.core_count <= 1,
                    Cores::More => d.core_count > 1,
                }
        })
    }

    fn drain_method(&self, w: &mut String) {
        let backlog = |sink: &str| {
            self.drains()
                .find(|(_, d)| d.sink == sink)
                .map(|(r, d)| (si(d.items as f64), d.records, r.item.clone()))
        };
        let mut filled = Vec::new();
        for sink in ["file", "elasticsearch"] {
            if let Some((items, records, item)) = backlog(sink) {
                filled.push(format!("{items} {item} ({records} bus records)"));
            }
        }
        let filled = match filled.split_first() {
            Some((first, rest)) => format!(
                "{first} in requests of {} items over gRPC{}",
                self.items_per_request,
                rest.iter()
                    .map(|f| format!(", and another with {f}"))
                    .collect::<String>()
            ),
            None => String::new(),
        };
        let _ = writeln!(
            w,
            "- Processor: a collector, pinned and set as above (but keeping every segment), \
             fills a bus with {}, and stops. Each processor \
             point copies that bus directory afresh (segments, and an empty `offsets/`, where \
             the processor's checkpoint goes), so every point drains the same backlog, and \
             starts a fresh `tidewater processor` on it, pinned with `taskset` to the cores \
             shown, with default settings except: {}; the sink's own keys; no memory setting. \
             It is timed from its start until its `/metrics` show every item consumed \
             (`tidewater_processor_consumed_items_total`) and as many batches delivered as bus \
             records consumed (`tidewater_processor_delivered_batches_total`, \
             `tidewater_processor_consumed_records_total`). CPU: the processor's user + system \
             time over its whole life, per second of that time; \"others on its cores\": what \
             other processes took on those cores meanwhile; peak RSS: its `VmHWM` then.",
            filled,
            if self.processor_settings.is_empty() {
                "none".to_string()
            } else {
                self.processor_settings.join(", ")
            }
        );
        let _ = writeln!(
            w,
            "- Sinks: the file sink, on tmpfs (`sinks.file.fsync = false`); X-Ray \
             (`sinks.xray.enabled = true`, file sink off), with the AWS SDK pointed \
             (`AWS_ENDPOINT_URL_XRAY`) at `loadgen --null-server` on the load generator's core, \
             which answers every `PutTraceSegments` with no unprocessed segment; Elasticsearch \
             (`sinks.elasticsearch.enabled = true`, file sink off) against the same null \
             server, which answers each `_bulk` with one `create` item of status 201 per \
             document and the index-template calls with 200, fed with events (the sink takes \
             no spans). The same null server stands behind both, so what is measured is the \
             processor's translation and client, not a service."
        );
        if let Some((_, d)) = self.drains().find(|(_, d)| d.baseline.is_some()) {
            let _ = writeln!(
                w,
                "- Before the rework: `{}` (`--baseline-tidewater`), the same file-sink drain \
                 of the same backlog on one core, in the same run, given only keys both \
                 versions know (the bus, log and file-sink keys; not `--env`).",
                d.baseline.as_deref().unwrap_or_default()
            );
        }
        let _ = writeln!(w);
    }

    fn processor_section(&self, w: &mut String) {
        let _ = writeln!(w, "## Processor\n");
        let one = self.drain("file", false, Cores::One);
        let base = self.drain("file", true, Cores::One);
        let two = self.drain("file", false, Cores::More);
        let collector = self.flat_out_traces();
        let met = |ok: bool| if ok { "met" } else { "**not met**" };
        let _ = writeln!(w, "| goal (issue #13) | target | measured |");
        let _ = writeln!(w, "|---|---|---|");
        if let Some((r, d)) = one {
            let _ = writeln!(
                w,
                "| peak RSS, default settings, draining {} {} into the file sink | ≤ 256 MiB | **{:.1} MiB**{}{}: {} |",
                si(d.items as f64),
                r.item,
                mib(r.peak_rss_kib),
                two.map_or(String::new(), |(r2, d2)| format!(
                    "; on cores {}: {:.1} MiB",
                    d2.cores,
                    mib(r2.peak_rss_kib)
                )),
                base.map_or(String::new(), |(b, bd)| format!(
                    "; before the rework ({}): {:.1} MiB",
                    bd.baseline.as_deref().unwrap_or_default(),
                    mib(b.peak_rss_kib)
                )),
                met(mib(r.peak_rss_kib).max(two.map_or(0.0, |(r2, _)| mib(r2.peak_rss_kib)))
                    <= 256.0)
            );
            let mut measured = format!(
                "**{}** ({} spans/s at {:.2} cores, drained in {:.1} s)",
                si(r.items_per_cpu_second()),
                si(r.items_per_s),
                r.server_cpu_cores,
                d.drain_s
            );
            if let Some((b, bd)) = base {
                let _ = write!(
                    measured,
                    "; {:.2}× the processor before the rework ({}: {} spans per CPU-second)",
                    ratio(r.items_per_cpu_second(), b.items_per_cpu_second()),
                    bd.baseline.as_deref().unwrap_or_default(),
                    si(b.items_per_cpu_second())
                );
            }
            if let Some(c) = collector {
                let of = ratio(r.items_per_cpu_second(), c.items_per_cpu_second());
                let _ = write!(
                    measured,
                    "; {} of the collector's {} spans per CPU-second in this run: {}",
                    percent(of),
                    si(c.items_per_cpu_second()),
                    met(of >= 0.5)
                );
            }
            let _ = writeln!(
                w,
                "| spans per CPU-second, one core, file sink | ≥ ½ the collector's | {measured} |"
            );
        }
        if let (Some((r1, _)), Some((r2, d2))) = (one, two) {
            let x = ratio(r2.items_per_s, r1.items_per_s);
            let _ = writeln!(
                w,
                "| {} cores against one, file sink (spans/s) | ≥ 1.7× | **{x:.2}×**: {} spans/s at {:.2} cores on cores {} (others took {} of them meanwhile), against {} at {:.2} on one: {} |",
                d2.core_count,
                si(r2.items_per_s),
                r2.server_cpu_cores,
                d2.cores,
                r2.others_on_server_core
                    .map_or("?".to_string(), |c| format!("{c:.2}")),
                si(r1.items_per_s),
                r1.server_cpu_cores,
                met(x >= 1.7)
            );
        }
        for (sink, what) in [
            ("xray", "X-Ray translation path"),
            ("elasticsearch", "Elasticsearch documents"),
        ] {
            if let Some((r, d)) = self.drain(sink, false, Cores::One) {
                let _ = writeln!(
                    w,
                    "| {what}, one core | | {} {}/s at {:.2} cores = **{} {} per CPU-second**, peak RSS {:.1} MiB, {} drained in {:.1} s |",
                    si(r.items_per_s),
                    r.item,
                    r.server_cpu_cores,
                    si(r.items_per_cpu_second()),
                    r.item,
                    mib(r.peak_rss_kib),
                    si(d.items as f64),
                    d.drain_s
                );
            }
        }
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "| processor | sink | cores | items | bus records | time to drain s | items/s | CPU (cores) | others on its cores | items per CPU-s | peak RSS MiB | dead letters |"
        );
        let _ = writeln!(w, "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|---|");
        for (r, d) in self.drains() {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} {} | {} | {:.1} | {} | {:.2} | {} | {} | {:.1} | {} |",
                d.baseline.as_deref().unwrap_or("this tree"),
                d.sink,
                d.cores,
                si(d.items as f64),
                r.item,
                d.records,
                d.drain_s,
                si(r.items_per_s),
                r.server_cpu_cores,
                r.others_on_server_core
                    .map_or(String::new(), |c| format!("{c:.2}")),
                si(r.items_per_cpu_second()),
                mib(r.peak_rss_kib),
                r.errors
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        let _ = writeln!(w);
    }

    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let w = &mut md;
        let _ = writeln!(w, "# Tidewater collector benchmark\n");
        let _ = writeln!(
            w,
            "Written by `benches/run` on {}. Machine: {} × {} ({}); load average before the \
             run: {}. The machine is shared, so absolute figures move from run to run: compare \
             the ratios measured within one run.\n",
            self.date,
            self.cores,
            self.cpu_model,
            if self.pinned {
                "server on core 0, load generator on core 1, both with `taskset`"
            } else {
                "NOT pinned: taskset was not available"
            },
            self.loadavg.trim()
        );
        let _ = writeln!(w, "## Method\n");
        let _ = writeln!(
            w,
            "- `tidewater collector` (release build) with the embedded bus; the load generator \
             (`loadgen`, release) sends a pool of 64 pre-encoded, realistic requests of {} items \
             each (12 services with ECS resource attributes, traces of 2–14 spans with HTTP, SQL, \
             AWS SDK and messaging attributes, 5% failed with an `exception` event; ~340 bytes a \
             span): each load point is measured for {:.0} s after {:.0} s of the same load.",
            self.items_per_request, self.duration_s, self.warmup_s
        );
        let _ = writeln!(
            w,
            "- Collector settings that differ from the defaults: {}.",
            if self.collector_settings.is_empty() {
                "none".to_string()
            } else {
                self.collector_settings.join(", ")
            }
        );
        let _ = writeln!(
            w,
            "- A request counts once the collector acknowledged it, i.e. once its data is \
             durable on the bus. Latency is of the acknowledgement; at a fixed rate it counts \
             from when the request was due, so a stall is not hidden."
        );
        let _ = writeln!(
            w,
            "- CPU: the collector's user + system time from `/proc/PID/stat` over the measured window, per \
             second (1.00 = one core); \"others on its core\": what other processes of the shared \
             machine took on that core meanwhile (`/proc/stat`). Peak RSS: `VmHWM` from `/proc/PID/status`, reset before \
             each point. Ceiling: the same load against `loadgen --null-server`, which accepts \
             without decoding (with TCP_NODELAY, as the collector).\n"
        );

        if self.drains().next().is_some() {
            self.drain_method(w);
        } else if self.rows.iter().any(|r| r.target == Target::Processor) {
            let _ = writeln!(
                w,
                "- Processor: a collector fills the bus with 10,000 requests of traces and stops; \
                 `tidewater processor`, pinned to the same core, then drains the bus into the \
                 file sink on tmpfs (`sinks.file.fsync = false`), timed from its start until \
                 its metrics show every span consumed and every batch delivered.\n"
            );
        }
        let _ = writeln!(w, "## Summary\n");
        let _ = writeln!(w, "| goal (issue #7) | target | measured |");
        let _ = writeln!(w, "|---|---|---|");
        if let Some(r) = self.flat_out_traces() {
            let ceiling = self.ceiling(r);
            let _ = writeln!(
                w,
                "| OTLP/gRPC → bus batches, 100-span requests, one core | ≥ 1,000,000 spans/s | {} spans/s at {:.2} cores = **{} spans per CPU-second**{} |",
                si(r.items_per_s),
                r.server_cpu_cores,
                si(r.items_per_cpu_second()),
                ceiling.map_or(String::new(), |c| format!(
                    "; {:.0}% of the load generator's ceiling ({} spans/s on the null server)",
                    100.0 * r.items_per_s / c.items_per_s,
                    si(c.items_per_s)
                ))
            );
        }
        if let Some(r) = self.at_100k() {
            let _ = writeln!(
                w,
                "| peak RSS at 100,000 spans/s | < 32 MiB | {:.1} MiB (achieved {} spans/s, {:.2} cores) |",
                mib(r.peak_rss_kib),
                si(r.items_per_s),
                r.server_cpu_cores
            );
        }
        // Runs with drain points summarise the processor in a section of its own.
        if let Some(r) = self
            .rows
            .iter()
            .find(|r| r.target == Target::Processor && r.drain.is_none())
        {
            let _ = writeln!(
                w,
                "| processor: traces from the bus to the file sink | | {} spans/s at {:.2} cores = {} spans per CPU-second, peak RSS {:.1} MiB |",
                si(r.items_per_s),
                r.server_cpu_cores,
                si(r.items_per_cpu_second()),
                mib(r.peak_rss_kib)
            );
        }
        let _ = writeln!(
            w,
            "| idle RSS | < 10 MiB | {:.1} MiB |",
            mib(self.idle_rss_kib)
        );
        let _ = writeln!(w);
        let _ = writeln!(
            w,
            "![throughput, CPU and memory against offered load](throughput.svg)\n"
        );
        if self.drains().next().is_some() {
            self.processor_section(w);
        }

        let _ = writeln!(w, "## All load points\n");
        let _ = writeln!(
            w,
            "| server | signal | protocol | in flight | offered items/s | req/s | items/s | of ceiling | server CPU (cores) | others on its core | items per CPU-s | peak RSS MiB | p50 ms | p99 ms | loadgen CPU | errors |"
        );
        let _ = writeln!(
            w,
            "|---|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|"
        );
        for r in &self.rows {
            let ceiling = match r.target {
                Target::Collector => self
                    .ceiling(r)
                    .map(|c| percent(r.items_per_s / c.items_per_s))
                    .unwrap_or_default(),
                Target::Null => "100%".into(),
                Target::Processor => String::new(),
            };
            let errors = if r.errors.is_empty() {
                String::new()
            } else {
                r.errors
                    .iter()
                    .map(|(k, v)| format!("{k}: {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} | {} | {:.0} | {} | {} | {:.2} | {} | {} | {:.1} | {:.1} | {:.1} | {:.2} | {} |",
                r.server_label(),
                r.signal,
                r.protocol,
                if r.concurrency > 0 {
                    r.concurrency.to_string()
                } else {
                    String::new()
                },
                r.offered_items_per_s.map_or("flat out".into(), si),
                r.req_per_s,
                si(r.items_per_s),
                ceiling,
                r.server_cpu_cores,
                r.others_on_server_core
                    .map_or(String::new(), |c| format!("{c:.2}")),
                si(r.items_per_cpu_second()),
                mib(r.peak_rss_kib),
                r.p50_ms,
                r.p99_ms,
                r.loadgen_cpu_cores,
                errors
            );
        }
        md
    }

    /// Throughput, CPU and peak RSS of the traces/gRPC load curve, one panel each.
    pub fn svg(&self) -> String {
        let curve = self.curve();
        let labels: Vec<String> = curve
            .iter()
            .map(|r| r.offered_items_per_s.map_or("flat out".into(), si))
            .collect();
        let ceiling = curve
            .iter()
            .find(|r| r.offered_items_per_s.is_none())
            .and_then(|r| self.ceiling(r))
            .map(|c| c.items_per_s);
        let offered: Vec<Option<f64>> = curve.iter().map(|r| r.offered_items_per_s).collect();
        let achieved: Vec<Option<f64>> = curve.iter().map(|r| Some(r.items_per_s)).collect();
        let cpu: Vec<Option<f64>> = curve.iter().map(|r| Some(r.server_cpu_cores)).collect();
        let others: Vec<Option<f64>> = curve.iter().map(|r| r.others_on_server_core).collect();
        let rss: Vec<Option<f64>> = curve.iter().map(|r| Some(mib(r.peak_rss_kib))).collect();

        let mut chart = Chart::new(760, &labels);
        let mut throughput_lines = Vec::new();
        if let Some(c) = ceiling {
            throughput_lines.push(("null-server ceiling", c, "#999"));
        }
        chart.panel(
            &format!(
                "Traces over OTLP/gRPC, {} spans a request, {} in flight: spans/s",
                self.items_per_request, self.curve_concurrency
            ),
            &[
                ("offered", "#bbb", &offered),
                ("acknowledged", "#1f77b4", &achieved),
            ],
            &throughput_lines,
            si,
        );
        chart.panel(
            "Collector CPU (cores; 1.0 = the one core it is pinned to)",
            &[
                ("collector", "#d62728", &cpu),
                ("others on its core", "#bbb", &others),
            ],
            &[],
            |v| format!("{v:.2}"),
        );
        chart.panel(
            "Collector peak RSS (MiB)",
            &[("peak RSS", "#2ca02c", &rss)],
            &[
                ("idle", mib(self.idle_rss_kib), "#999"),
                ("goal at 100k spans/s", 32.0, "#d62728"),
            ],
            |v| format!("{v:.0}"),
        );
        chart.finish("offered load (spans/s)")
    }
}

/// A minimal SVG line chart with a shared categorical x axis. Hand-written because the plot is
/// three small panels of lines and text, and a plotting crate would bring a font stack for
/// that.
struct Chart<'a> {
    width: f64,
    labels: &'a [String],
    body: String,
    y: f64,
}

const PANEL_H: f64 = 215.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 190.0;

impl<'a> Chart<'a> {
    fn new(width: u32, labels: &'a [String]) -> Self {
        Chart {
            width: width as f64,
            labels,
            body: String::new(),
            y: 10.0,
        }
    }

    fn x(&self, i: usize) -> f64 {
        let span = self.width - LEFT - RIGHT;
        let n = self.labels.len().max(2) - 1;
        LEFT + span * i as f64 / n as f64
    }

    fn panel(
        &mut self,
        title: &str,
        series: &[(&str, &str, &Vec<Option<f64>>)],
        hlines: &[(&str, f64, &str)],
        fmt: impl Fn(f64) -> String,
    ) {
        let top = self.y + 40.0;
        let bottom = top + PANEL_H - 60.0;
        let max = series
            .iter()
            .flat_map(|(_, _, v)| v.iter().flatten().copied())
            .chain(hlines.iter().map(|h| h.1))
            .fold(0.0f64, f64::max);
        let (max, ticks) = nice_ceiling(max);
        let y = |v: f64| bottom - (bottom - top) * v / max;
        let mut body = String::new();
        let b = &mut body;
        let _ = writeln!(
            b,
            r#"<text x="{LEFT}" y="{}" font-size="13" font-weight="bold">{}</text>"#,
            self.y + 24.0,
            escape(title)
        );
        for k in 0..=ticks {
            let v = max * k as f64 / ticks as f64;
            let _ = writeln!(
                b,
                r##"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
                self.width - RIGHT,
                LEFT - 6.0,
                y(v) + 4.0,
                fmt(v),
                y = y(v),
            );
        }
        for (label, value, color) in hlines {
            let _ = writeln!(
                b,
                r#"<line x1="{LEFT}" x2="{}" y1="{y:.1}" y2="{y:.1}" stroke="{color}" stroke-dasharray="5,4"/><text x="{}" y="{:.1}" font-size="11" fill="{color}">{}: {}</text>"#,
                self.width - RIGHT,
                self.width - RIGHT + 6.0,
                y(*value) + 4.0,
                escape(label),
                fmt(*value),
                y = y(*value),
            );
        }
        for (n, (name, color, values)) in series.iter().enumerate() {
            let points: Vec<String> = values
                .iter()
                .enumerate()
                .filter_map(|(i, v)| v.map(|v| format!("{:.1},{:.1}", self.x(i), y(v))))
                .collect();
            let _ = writeln!(
                b,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                points.join(" ")
            );
            for (i, v) in values.iter().enumerate() {
                if let Some(v) = v {
                    let _ = writeln!(
                        b,
                        r#"<circle cx="{:.1}" cy="{:.1}" r="3.5" fill="{color}"><title>{}</title></circle>"#,
                        self.x(i),
                        y(*v),
                        fmt(*v)
                    );
                }
            }
            let _ = writeln!(
                b,
                r#"<text x="{}" y="{:.1}" font-size="11" fill="{color}">■ {}</text>"#,
                self.width - RIGHT + 6.0,
                top + 14.0 * n as f64,
                escape(name)
            );
        }
        let _ = writeln!(
            b,
            r##"<line x1="{LEFT}" x2="{}" y1="{bottom:.1}" y2="{bottom:.1}" stroke="#444"/>"##,
            self.width - RIGHT
        );
        for (i, label) in self.labels.iter().enumerate() {
            let _ = writeln!(
                b,
                r#"<text x="{:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}</text>"#,
                self.x(i),
                bottom + 15.0,
                escape(label)
            );
        }
        self.body.push_str(&body);
        self.y += PANEL_H;
    }

    fn finish(self, x_title: &str) -> String {
        let height = self.y + 36.0;
        format!(
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{height}" viewBox="0 0 {w} {height}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
{body}<text x="{cx}" y="{ty}" font-size="12" text-anchor="middle">{x_title}</text>
</svg>
"#,
            w = self.width,
            body = self.body,
            cx = (LEFT + self.width - RIGHT) / 2.0,
            ty = self.y + 22.0,
            x_title = escape(x_title),
        )
    }
}

/// The smallest of 1, 2, 2.5, 5 × 10^k at or above `v`, and a number of ticks that divides
/// it into round steps.
fn nice_ceiling(v: f64) -> (f64, u32) {
    if v <= 0.0 || !v.is_finite() {
        return (1.0, 4);
    }
    let magnitude = 10f64.powf(v.log10().floor());
    [(1.0, 5), (2.0, 4), (2.5, 5), (5.0, 5), (10.0, 5)]
        .iter()
        .map(|(m, ticks)| (m * magnitude, *ticks))
        .find(|(c, _)| *c >= v)
        .unwrap_or((10.0 * magnitude, 5))
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(target: Target, offered: Option<f64>, items: f64, cpu: f64) -> Row {
        Row {
            target,
            signal: "traces".into(),
            protocol: "grpc".into(),
            item: "spans".into(),
            concurrency: 256,
            offered_items_per_s: offered,
            req_per_s: items / 100.0,
            items_per_s: items,
            p50_ms: 1.0,
            p99_ms: 2.0,
            failed: 0,
            errors: BTreeMap::new(),
            server_cpu_cores: cpu,
            others_on_server_core: Some(0.1),
            loadgen_cpu_cores: 0.5,
            peak_rss_kib: 20 * 1024,
            drain: None,
        }
    }

    fn drain(sink: &str, cores: &str, baseline: Option<&str>, items_per_s: f64, cpu: f64) -> Row {
        let mut r = row(Target::Processor, None, items_per_s, cpu);
        r.protocol = format!("bus → {sink}");
        r.concurrency = 0;
        r.peak_rss_kib = 100 * 1024;
        r.drain = Some(Drain {
            sink: sink.into(),
            cores: cores.into(),
            core_count: cores.split(',').count(),
            baseline: baseline.map(Into::into),
            items: 2_000_000,
            records: 400,
            drain_s: 2_000_000.0 / items_per_s,
        });
        r
    }

    fn report() -> Report {
        Report {
            date: "2025-01-01".into(),
            cpu_model: "test cpu".into(),
            cores: 2,
            loadavg: "0.1 0.1 0.1".into(),
            pinned: true,
            duration_s: 5.0,
            warmup_s: 1.0,
            items_per_request: 100,
            collector_settings: vec![],
            idle_rss_kib: 8 * 1024,
            idle_hwm_kib: 8 * 1024,
            rss_after_kib: 30 * 1024,
            curve_concurrency: 256,
            processor_settings: vec![],
            rows: vec![
                row(Target::Null, None, 2_000_000.0, 0.9),
                row(Target::Collector, Some(100_000.0), 100_000.0, 0.4),
                row(Target::Collector, None, 250_000.0, 1.0),
                row(Target::Collector, Some(10_000.0), 10_000.0, 0.05),
            ],
        }
    }

    #[test]
    fn summary_relates_the_collector_to_its_ceiling() {
        let md = report().markdown();
        assert!(md.contains("250.0k spans/s at 1.00 cores"), "{md}");
        assert!(
            md.contains("12% of the load generator's ceiling (2.00M spans/s"),
            "{md}"
        );
        assert!(
            md.contains("| peak RSS at 100,000 spans/s | < 32 MiB | 20.0 MiB"),
            "{md}"
        );
        assert!(md.contains("| idle RSS | < 10 MiB | 8.0 MiB"), "{md}");
    }

    #[test]
    fn the_processor_section_relates_the_drains() {
        let mut r = report();
        r.rows.extend([
            drain("file", "0", Some("tidewater-27a113c"), 100_000.0, 1.0),
            drain("file", "0", None, 200_000.0, 1.0),
            drain("file", "0,1", None, 360_000.0, 1.9),
            drain("xray", "0", None, 50_000.0, 1.0),
        ]);
        r.rows[4].peak_rss_kib = 4000 * 1024;
        let md = r.markdown();
        assert!(md.contains("## Processor"), "{md}");
        assert!(
            md.contains(
                "| ≤ 256 MiB | **100.0 MiB**; on cores 0,1: 100.0 MiB; before the rework (tidewater-27a113c): 4000.0 MiB: met |"
            ),
            "{md}"
        );
        // 200k against the baseline's 100k, and against the collector's 250k per CPU-second.
        assert!(
            md.contains("2.00× the processor before the rework (tidewater-27a113c: 100.0k"),
            "{md}"
        );
        assert!(
            md.contains("80% of the collector's 250.0k spans per CPU-second in this run: met"),
            "{md}"
        );
        assert!(md.contains("| ≥ 1.7× | **1.80×**: 360.0k spans/s"), "{md}");
        assert!(
            md.contains("| X-Ray translation path, one core | | 50.0k spans/s"),
            "{md}"
        );
        assert!(!md.contains("Elasticsearch documents, one core"), "{md}");
        assert!(
            md.contains("| processor on cores 0,1 | traces | bus → file |"),
            "{md}"
        );
        assert!(
            md.contains("| processor (tidewater-27a113c) | traces |"),
            "{md}"
        );
        // The old one-line summary is for results without drain points only.
        assert!(!md.contains("processor: traces from the bus"), "{md}");
    }

    #[test]
    fn results_of_earlier_runs_still_read() {
        let mut old = serde_json::to_value(report()).unwrap();
        old.as_object_mut().unwrap().remove("processor_settings");
        let mut processor =
            serde_json::to_value(row(Target::Processor, None, 228_000.0, 1.0)).unwrap();
        processor.as_object_mut().unwrap().remove("drain");
        old["rows"].as_array_mut().unwrap().push(processor);
        let r: Report = serde_json::from_value(old).unwrap();
        assert!(r.drains().next().is_none());
        let md = r.markdown();
        assert!(
            md.contains("processor: traces from the bus to the file sink"),
            "{md}"
        );
        assert!(!md.contains("## Processor"), "{md}");
    }

    #[test]
    fn the_curve_runs_from_low_load_to_flat_out() {
        let r = report();
        let offered: Vec<_> = r.curve().iter().map(|r| r.offered_items_per_s).collect();
        assert_eq!(offered, [Some(10_000.0), Some(100_000.0), None]);
        let svg = r.svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert!(svg.contains(">flat out<") && svg.contains("null-server ceiling"));
    }

    #[test]
    fn axis_ceilings_are_round() {
        assert_eq!(nice_ceiling(0.0), (1.0, 4));
        assert_eq!(nice_ceiling(0.93), (1.0, 5));
        assert_eq!(nice_ceiling(1.2), (2.0, 4));
        assert_eq!(nice_ceiling(230_000.0), (250_000.0, 5));
        assert_eq!(nice_ceiling(2_600_000.0), (5_000_000.0, 5));
        assert_eq!(si(1_234_567.0), "1.23M");
        assert_eq!(si(45_600.0), "45.6k");
        assert_eq!(percent(0.123), "12%");
        assert_eq!(percent(0.0031), "0.3%");
    }
}
