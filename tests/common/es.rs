//! Reading what the Elasticsearch sink stored, from the real peer; and the environment that
//! points `tidewater up` at it.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use super::{python, wait_for};

pub struct Es {
    pub url: String,
    http: reqwest::blocking::Client,
}

impl Es {
    pub fn new(url: &str) -> Es {
        Es {
            url: url.trim_end_matches('/').to_string(),
            http: reqwest::blocking::Client::new(),
        }
    }

    /// `(status, body)` of any request.
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().unwrap_or_else(|e| panic!("{path}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub fn get(&self, path: &str) -> Value {
        let (status, body) = self.request("GET", path, None);
        assert_eq!(status, 200, "GET {path}: {body}");
        body
    }

    pub fn search(&self, index: &str, body: Value) -> Value {
        let (status, out) = self.request("POST", &format!("/{index}/_search"), Some(&body));
        assert_eq!(status, 200, "search {index} {body}: {out}");
        out
    }

    /// Documents in `index` (an alias or pattern); 0 when it does not exist yet.
    pub fn count(&self, index: &str) -> u64 {
        let (status, body) = self.request("GET", &format!("/{index}/_count"), None);
        if status == 404 {
            return 0;
        }
        assert_eq!(status, 200, "count {index}: {body}");
        body["count"].as_u64().unwrap()
    }

    /// Waits until `index` holds exactly `n` documents (and stays there a moment: a count
    /// that overshoots is caught too).
    pub fn wait_count(&self, index: &str, n: u64, log: impl Fn() -> String) {
        let reached = wait_for(Duration::from_secs(30), || {
            (self.count(index) >= n).then_some(())
        });
        assert!(
            reached.is_some(),
            "{index} has {} documents, want {n}\n{}",
            self.count(index),
            log()
        );
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(self.count(index), n, "{index} count after settling");
    }

    /// The `_source` of every document in `index`, by `_id`.
    pub fn sources(&self, index: &str) -> Vec<(String, Value)> {
        let out = self.search(index, json!({"size": 10000, "query": {"match_all": {}}}));
        out["hits"]["hits"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| (h["_id"].as_str().unwrap().to_string(), h["_source"].clone()))
            .collect()
    }

    /// The mapping of one field (dotted path) in `index`.
    pub fn field_mapping(&self, index: &str, field: &str) -> Value {
        let m = self.get(&format!("/{index}/_mapping"));
        let mut at = &m[index]["mappings"];
        for part in field.split('.') {
            at = &at["properties"][part];
        }
        at.clone()
    }
}

/// `TIDEWATER_*` overrides that turn the Elasticsearch sink on against `url`.
pub fn es_env(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("TIDEWATER_SINKS__ELASTICSEARCH__ENABLED", "true".into()),
        ("TIDEWATER_SINKS__ELASTICSEARCH__URL", url.to_string()),
        // One node: replicas would never be assigned.
        ("TIDEWATER_SINKS__ELASTICSEARCH__REPLICAS", "0".into()),
        (
            "TIDEWATER_SINKS__ELASTICSEARCH__DELIVERY__RETRY_INITIAL",
            "20ms".into(),
        ),
        (
            "TIDEWATER_SINKS__ELASTICSEARCH__DELIVERY__RETRY_MAX",
            "200ms".into(),
        ),
    ]
}

/// Runs `scripts/analyst-queries --json` against `url` and returns its answers.
pub fn analyst_queries(url: &str, args: &[&str]) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/analyst-queries");
    let out = Command::new(python())
        .arg(script)
        .args(["--url", url, "--json"])
        .args(args)
        .output()
        .expect("run scripts/analyst-queries");
    assert!(
        out.status.success(),
        "analyst-queries failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("analyst-queries --json prints JSON")
}

/// The value of the Prometheus sample `name{labels...}` (labels in any order), 0 if absent.
pub fn metric(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .find(|(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or(0.0)
}

/// An HTTPS front for `upstream` with a certificate from a throwaway CA; returns the peer
/// and the CA's PEM file (written into `dir`).
pub fn tls_front(upstream: &str, dir: &Path) -> (super::peers::Peer, std::path::PathBuf) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/tls_front.py");
    let ca = dir.join("test-ca.pem");
    let port = super::free_port();
    let mut cmd = Command::new(python());
    cmd.arg(script)
        .args(["--port", &port.to_string(), "--upstream", upstream])
        .arg("--ca-out")
        .arg(&ca);
    let ca_written = ca.clone();
    let peer = super::peers::Peer::spawn("tls front", cmd, port, move |p| {
        ca_written.exists() && std::net::TcpStream::connect(("127.0.0.1", p)).is_ok()
    });
    (peer, ca)
}

/// `POST /v1/events` with `events` (JSON event objects); asserts 200 and returns the answer.
pub fn post_events(tw: &super::Tidewater, events: &[Value]) -> Value {
    let resp = reqwest::blocking::Client::new()
        .post(tw.http_url("/v1/events"))
        .json(&json!({ "events": events }))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().unwrap()
}
