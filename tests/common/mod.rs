//! Runs the real `tidewater` binary for end-to-end tests: free loopback ports, a scratch
//! working directory (so `tidewater-data/` lands there), readiness polling, signals, and
//! readers for what the file sink wrote.
#![allow(dead_code)]

pub mod bulk_proxy;
pub mod es;
pub mod peers;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::Value;

pub struct Tidewater {
    child: Option<Child>,
    pub dir: PathBuf,
    pub grpc: u16,
    pub http: u16,
    pub admin: u16,
    /// The X-Ray daemon protocol's UDP port.
    pub xray_udp: u16,
    env: Vec<(String, String)>,
    /// `up`, `collector` or `processor`.
    role: &'static str,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Tidewater {
    /// Starts `tidewater up` in `dir` with `env` overrides and waits until `/readyz` says so.
    pub fn up<K: AsRef<str>, V: AsRef<str>>(dir: &Path, env: &[(K, V)]) -> Tidewater {
        Tidewater::run("up", dir, env)
    }

    /// Starts `tidewater <role>` (`up`, `collector` or `processor`) like [`Tidewater::up`].
    pub fn run<K: AsRef<str>, V: AsRef<str>>(
        role: &'static str,
        dir: &Path,
        env: &[(K, V)],
    ) -> Tidewater {
        let mut t = Tidewater {
            role,
            child: None,
            dir: dir.to_path_buf(),
            grpc: free_port(),
            http: free_port(),
            admin: free_port(),
            xray_udp: free_udp_port(),
            env: env
                .iter()
                .map(|(k, v)| (k.as_ref().to_string(), v.as_ref().to_string()))
                .collect(),
        };
        t.start();
        t
    }

    /// Starts the process. Ports come from `free_port`, which cannot reserve them: another test
    /// or peer may take one before Tidewater binds it, so a bind failure retries on fresh ports.
    pub fn start(&mut self) {
        for attempt in 1.. {
            let log_start = self.log().len();
            self.spawn();
            match self.wait_ready() {
                Ok(()) => return,
                Err(_)
                    if attempt < 5
                        && self.log()[log_start..].contains("Address already in use") =>
                {
                    eprintln!("tidewater could not bind a test port (attempt {attempt}); retrying on fresh ports");
                    self.child = None;
                    self.grpc = free_port();
                    self.http = free_port();
                    self.admin = free_port();
                    self.xray_udp = free_udp_port();
                }
                Err(e) => panic!("{e}"),
            }
        }
    }

    fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tidewater.log"))
            .unwrap();
        // Only the EMF self-metrics (telemetry.emf) are written to stdout.
        let stdout = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("tidewater.stdout"))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidewater"));
        cmd.arg(self.role)
            .current_dir(&self.dir)
            .env(
                "TIDEWATER_COLLECTOR__GRPC_ADDR",
                format!("127.0.0.1:{}", self.grpc),
            )
            .env(
                "TIDEWATER_COLLECTOR__HTTP_ADDR",
                format!("127.0.0.1:{}", self.http),
            )
            .env("TIDEWATER_ADMIN__ADDR", format!("127.0.0.1:{}", self.admin))
            .env(
                "TIDEWATER_COLLECTOR__XRAY_UDP_ADDR",
                format!("127.0.0.1:{}", self.xray_udp),
            )
            .env("TIDEWATER_COLLECTOR__BATCH__TIMEOUT", "50ms")
            .env("TIDEWATER_PROCESSOR__POLL_WAIT", "100ms")
            .stdout(stdout)
            .stderr(log);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("spawn tidewater"));
    }

    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                return Err(format!(
                    "tidewater exited with {status} before it was ready:\n{}",
                    self.log()
                ));
            }
            if http_get(self.admin, "/readyz").is_some_and(|(code, _)| code == 200) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!("tidewater not ready after 30s:\n{}", self.log()))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("tidewater.log")).unwrap_or_default()
    }

    /// What the process wrote to stdout: EMF self-metrics, one document a line.
    pub fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.join("tidewater.stdout")).unwrap_or_default()
    }

    /// SIGTERM and wait: the graceful path.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            Command::new("kill")
                .arg("-TERM")
                .arg(child.id().to_string())
                .status()
                .unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Some(status) = child.try_wait().unwrap() {
                    assert!(
                        status.success(),
                        "tidewater exited with {status}:\n{}",
                        self.log()
                    );
                    return;
                }
                assert!(
                    Instant::now() < deadline,
                    "tidewater did not stop within 30s of SIGTERM"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// SIGKILL: the crash path.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// The process's peak resident memory so far (`VmHWM`), in bytes.
    pub fn peak_rss(&self) -> u64 {
        self.proc_status("VmHWM:")
    }

    /// The process's resident memory now (`VmRSS`), in bytes.
    pub fn rss(&self) -> u64 {
        self.proc_status("VmRSS:")
    }

    fn proc_status(&self, field: &str) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{field} in /proc/PID/status"))
            * 1024
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().unwrap().is_none())
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.http)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc)
    }

    pub fn metrics(&self) -> String {
        http_get(self.admin, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// Every JSON line the file sink wrote for `signal`.
    pub fn sink_lines(&self, signal: &str) -> Vec<Value> {
        let path = self
            .dir
            .join("tidewater-data/out")
            .join(format!("{signal}.ndjson"));
        let text = std::fs::read_to_string(path).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str(l).expect("sink writes JSON lines"))
            .collect()
    }
}

impl Drop for Tidewater {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A minimal blocking HTTP GET on loopback, so readiness polling needs no async runtime.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Some((code, body))
}

/// Polls `check` until it returns `Some` or `timeout` passes.
pub fn wait_for<T>(timeout: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The Python interpreter of the venv that `scripts/test` prepares.
pub fn python() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run ./scripts/test (it creates the venv with the OpenTelemetry SDK)",
        p.display()
    );
    p
}

/// Runs a few lines of Python with the venv (its gRPC, SDKs) and returns what they printed.
pub fn run_python(code: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg("-c")
        .arg(code)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Runs the OpenTelemetry SDK app and returns what it reports having sent.
pub fn run_otel_app(protocol: &str, endpoint: &str, args: &[&str]) -> Value {
    let mut all = vec!["--protocol", protocol, "--endpoint", endpoint];
    all.extend_from_slice(args);
    run_client("otel_app.py", &all)
}

/// Runs a script of `tests/clients/` with the venv's Python and returns the JSON summary it
/// prints last.
pub fn run_client(script: &str, args: &[&str]) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(script);
    let out = Command::new(python())
        .arg(path)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script} failed ({}):\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("{script} prints a JSON summary last: {e}"))
}

/// The span ids (hex) `run_otel_app` reports having sent.
pub fn sent_span_ids(sent: &Value) -> Vec<String> {
    sent["spans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["span_id"].as_str().unwrap().to_string())
        .collect()
}

/// Every span in the OTLP/JSON batches the file sink wrote, with its resource attached.
pub fn spans(lines: &[Value]) -> Vec<(Value, Value)> {
    let mut out = Vec::new();
    for line in lines {
        for rs in line["resourceSpans"].as_array().into_iter().flatten() {
            for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
                for span in ss["spans"].as_array().into_iter().flatten() {
                    out.push((rs["resource"].clone(), span.clone()));
                }
            }
        }
    }
    out
}

pub fn log_records(lines: &[Value]) -> Vec<(Value, Value)> {
    let mut out = Vec::new();
    for line in lines {
        for rl in line["resourceLogs"].as_array().into_iter().flatten() {
            for sl in rl["scopeLogs"].as_array().into_iter().flatten() {
                for r in sl["logRecords"].as_array().into_iter().flatten() {
                    out.push((rl["resource"].clone(), r.clone()));
                }
            }
        }
    }
    out
}

/// (metric name, data point) for every point written.
pub fn metric_points(lines: &[Value]) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for line in lines {
        for rm in line["resourceMetrics"].as_array().into_iter().flatten() {
            for sm in rm["scopeMetrics"].as_array().into_iter().flatten() {
                for m in sm["metrics"].as_array().into_iter().flatten() {
                    let name = m["name"].as_str().unwrap_or_default().to_string();
                    for kind in [
                        "sum",
                        "gauge",
                        "histogram",
                        "exponentialHistogram",
                        "summary",
                    ] {
                        for p in m[kind]["dataPoints"].as_array().into_iter().flatten() {
                            out.push((name.clone(), p.clone()));
                        }
                    }
                }
            }
        }
    }
    out
}

/// The value of attribute `key` in an OTLP/JSON attribute list, as its JSON AnyValue.
pub fn attr<'a>(attrs: &'a Value, key: &str) -> Option<&'a Value> {
    attrs
        .as_array()?
        .iter()
        .find(|kv| kv["key"] == key)
        .map(|kv| &kv["value"])
}

/// An OTLP trace request of `traces` traces with `spans` spans each. Span ids encode
/// `(batch, trace, span)` so a test can tell every span apart.
pub fn otlp_traces(
    batch: u32,
    traces: u32,
    spans: u32,
) -> opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
    let kv = |k: &str, v: any_value::Value| KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..Default::default()
    };
    let spans = (0..traces)
        .flat_map(|t| {
            (0..spans).map(move |s| {
                let mut trace_id = [0u8; 16];
                trace_id[..4].copy_from_slice(&batch.to_be_bytes());
                trace_id[4..8].copy_from_slice(&t.to_be_bytes());
                trace_id[15] = 1;
                let mut span_id = [0u8; 8];
                span_id[..4].copy_from_slice(&batch.to_be_bytes());
                span_id[4..6].copy_from_slice(&(t as u16).to_be_bytes());
                span_id[6..].copy_from_slice(&(s as u16 + 1).to_be_bytes());
                Span {
                    trace_id: trace_id.to_vec(),
                    span_id: span_id.to_vec(),
                    name: format!("op-{s}"),
                    kind: if s == 0 { 2 } else { 3 },
                    start_time_unix_nano: 1_795_000_000_000_000_000,
                    end_time_unix_nano: 1_795_000_000_001_000_000,
                    attributes: vec![
                        kv("http.route", any_value::Value::StringValue("/a/{b}".into())),
                        kv("n", any_value::Value::IntValue(s as i64)),
                    ],
                    ..Default::default()
                }
            })
        })
        .collect();
    opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv(
                    "service.name",
                    any_value::Value::StringValue("load".into()),
                )],
                ..Default::default()
            }),
            scope_spans: vec![ScopeSpans {
                spans,
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
}

/// POSTs an OTLP protobuf request; returns the status, headers and body.
pub fn post_protobuf(url: &str, body: Vec<u8>) -> reqwest::blocking::Response {
    reqwest::blocking::Client::new()
        .post(url)
        .header("content-type", "application/x-protobuf")
        .body(body)
        .send()
        .expect("POST")
}

/// Span ids (hex) in what the file sink wrote, with how often each appears.
pub fn span_id_counts(tw: &Tidewater) -> std::collections::HashMap<String, usize> {
    let mut seen = std::collections::HashMap::new();
    for (_, span) in spans(&tw.sink_lines("traces")) {
        *seen
            .entry(span["spanId"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    seen
}
