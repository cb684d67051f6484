//! The load generator against the real collector (embedded bus) and against its null server:
//! every signal over both protocols is accepted whole, and what the collector published on the
//! bus holds exactly the items the load generator counted.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tidewater_bus::config::{EmbeddedConfig, FsyncPolicy};
use tidewater_bus::embedded::EmbeddedLog;
use tidewater_bus::Consumer;
use tidewater_collector::{Collector, CollectorConfig};
use tidewater_proto::{Envelope, Signal};

const COMBOS: [(&str, &str); 8] = [
    ("traces", "grpc"),
    ("traces", "http"),
    ("logs", "grpc"),
    ("logs", "http"),
    ("metrics", "grpc"),
    ("metrics", "http"),
    ("events", "grpc"),
    ("events", "http"),
];

fn loadgen(target: SocketAddr, signal: &str, protocol: &str, requests: u64) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--target", &target.to_string(), "--signal", signal])
        .args([
            "--protocol",
            protocol,
            "--items",
            "50",
            "--concurrency",
            "4",
        ])
        .args(["--requests", &requests.to_string(), "--duration", "60s"])
        .args(["--pool", "4", "--quiet"])
        .output()
        .expect("loadgen runs");
    assert!(
        out.status.success(),
        "loadgen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    serde_json::from_str(stdout.lines().last().expect("a summary line")).expect("JSON summary")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_signal_and_protocol_reaches_the_bus_whole() {
    let dir = tempfile::tempdir().unwrap();
    let log = EmbeddedLog::open(&EmbeddedConfig {
        dir: dir.path().join("bus"),
        fsync: FsyncPolicy::Never,
        ..Default::default()
    })
    .unwrap();
    let config = CollectorConfig {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        http_addr: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    let collector = Collector::start(&config, Arc::new(log.producer()), "bench-test".into())
        .await
        .unwrap();
    let mut sent: HashMap<i32, u64> = HashMap::new();
    for (signal, protocol) in COMBOS {
        let addr = if protocol == "grpc" {
            collector.grpc_addr
        } else {
            collector.http_addr
        };
        let summary = tokio::task::spawn_blocking(move || loadgen(addr, signal, protocol, 6))
            .await
            .unwrap();
        assert_eq!(summary["ok"], 6, "{signal}/{protocol}: {summary}");
        assert_eq!(summary["failed"], 0, "{signal}/{protocol}: {summary}");
        assert_eq!(
            summary["items_rejected"], 0,
            "{signal}/{protocol}: {summary}"
        );
        assert_eq!(summary["items_ok"], 300, "{signal}/{protocol}: {summary}");
        let bus_signal = match signal {
            "traces" => Signal::Traces,
            "logs" => Signal::Logs,
            "metrics" => Signal::Metrics,
            _ => Signal::Events,
        };
        *sent.entry(bus_signal as i32).or_default() += 300;
    }
    collector.shutdown().await;

    let mut consumer = log.consumer("bench-test").unwrap();
    let mut published: HashMap<i32, u64> = HashMap::new();
    loop {
        let records = consumer
            .poll(1000, usize::MAX, Duration::from_millis(200))
            .await
            .unwrap();
        if records.is_empty() {
            break;
        }
        for r in records {
            let envelope = Envelope::decode(r.payload).unwrap();
            *published.entry(envelope.signal).or_default() += envelope.item_count as u64;
        }
    }
    assert_eq!(published, sent);
}

#[test]
fn the_null_server_answers_every_signal_and_protocol() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut server = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--null-server", &addr.to_string(), "--duration", "60s"])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "null server did not listen"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    for (signal, protocol) in COMBOS {
        let summary = loadgen(addr, signal, protocol, 10);
        assert_eq!(summary["ok"], 10, "{signal}/{protocol}: {summary}");
        assert_eq!(summary["items_ok"], 500, "{signal}/{protocol}: {summary}");
        // Measured over the time the 10 requests took, not the 60 s allowed.
        assert!(summary["window_s"].as_f64().unwrap() < 30.0, "{summary}");
    }
    server.kill().unwrap();
    server.wait().unwrap();
}

#[test]
fn refuses_targets_beyond_this_machine() {
    let out = Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["--target", "192.0.2.1:4317", "--requests", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a loopback address"));
}
