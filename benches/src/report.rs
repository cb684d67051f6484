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
    /// `tidewater processor` draining the bus into the file sink.
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
}

impl Row {
    pub fn items_per_cpu_second(&self) -> f64 {
        if self.server_cpu_cores > 0.0 {
            self.items_per_s / self.server_cpu_cores
        } else {
            0.0
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
    pub rows: Vec<Row>,
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

        if self.rows.iter().any(|r| r.target == Target::Processor) {
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
        if let Some(r) = self.rows.iter().find(|r| r.target == Target::Processor) {
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
                match r.target {
                    Target::Null => "null",
                    Target::Collector => "collector",
                    Target::Processor => "processor",
                },
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
        }
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
