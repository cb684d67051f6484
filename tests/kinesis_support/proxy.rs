//! A small fault-injecting HTTP proxy between the Kinesis client and kinesalite (neither peer
//! injects faults). It forwards every call, and on demand:
//! - fails chosen records of a `PutRecords` with `ProvisionedThroughputExceededException`
//!   inside a 200 response (only the others are forwarded), as the service does under load;
//! - plays dead (drops every connection) to simulate an outage.
//!
//! It records the data of every record it forwarded in `PutRecords` calls, so a test can tell
//! exactly what was sent again.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

type Fault = dyn Fn(usize, usize) -> bool + Send + Sync;

pub struct Proxy {
    pub port: u16,
    state: Arc<State>,
}

struct State {
    upstream: String,
    down: AtomicBool,
    put_calls: AtomicUsize,
    /// `fail(call, index)`: should record `index` of PutRecords call `call` (from 0) fail?
    fail: Mutex<Option<Box<Fault>>>,
    /// Per PutRecords call: the base64 data of each record forwarded, and of each failed.
    log: Mutex<Vec<(Vec<String>, Vec<String>)>>,
    /// Errors to answer, in turn, to calls of an operation (by X-Amz-Target suffix).
    errors: Mutex<Vec<(String, String)>>,
}

impl Proxy {
    pub fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(State {
            upstream: upstream.to_string(),
            down: AtomicBool::new(false),
            put_calls: AtomicUsize::new(0),
            fail: Mutex::new(None),
            log: Mutex::new(Vec::new()),
            errors: Mutex::new(Vec::new()),
        });
        let s = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || serve(conn, &s));
            }
        });
        Proxy { port, state }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    pub fn fail_records(&self, fail: impl Fn(usize, usize) -> bool + Send + Sync + 'static) {
        *self.state.fail.lock().unwrap() = Some(Box::new(fail));
    }

    /// The next calls of `operation` (e.g. "GetRecords") are answered with these error types
    /// (HTTP 400, as the service does), one per call, before calls go through again.
    pub fn fail_calls(&self, operation: &str, errors: &[&str]) {
        let mut queue = self.state.errors.lock().unwrap();
        queue.extend(
            errors
                .iter()
                .map(|e| (operation.to_string(), e.to_string())),
        );
    }

    /// Injected errors not yet served.
    pub fn pending_errors(&self) -> usize {
        self.state.errors.lock().unwrap().len()
    }

    /// (forwarded, failed) record data per PutRecords call.
    pub fn put_log(&self) -> Vec<(Vec<String>, Vec<String>)> {
        self.state.log.lock().unwrap().clone()
    }
}

fn serve(conn: TcpStream, state: &State) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut writer = conn;
    let http = reqwest::blocking::Client::new();
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = Vec::new();
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end().to_string();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                let (k, v) = (k.trim().to_string(), v.trim().to_string());
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.parse().unwrap_or(0);
                }
                headers.push((k, v));
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if state.down.load(Ordering::SeqCst) {
            // An outage: the connection just goes away.
            return;
        }
        let target = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("x-amz-target"))
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        let injected = {
            let mut queue = state.errors.lock().unwrap();
            let operation = target.rsplit('.').next().unwrap_or_default().to_string();
            queue
                .iter()
                .position(|(op, _)| *op == operation)
                .map(|i| queue.remove(i).1)
        };
        let (status, content_type, response) = if let Some(error) = injected {
            let body = json!({"__type": error, "message": "injected by the test proxy"});
            (
                400,
                "application/x-amz-json-1.1".to_string(),
                serde_json::to_vec(&body).unwrap(),
            )
        } else if target.ends_with(".PutRecords") {
            put_records(state, &http, &headers, &body)
        } else {
            forward(state, &http, &headers, body)
        };
        let head = format!(
            "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
            response.len()
        );
        if writer
            .write_all(head.as_bytes())
            .and_then(|_| writer.write_all(&response))
            .is_err()
        {
            return;
        }
    }
}

fn forward(
    state: &State,
    http: &reqwest::blocking::Client,
    headers: &[(String, String)],
    body: Vec<u8>,
) -> (u16, String, Vec<u8>) {
    let mut req = http.post(&state.upstream).body(body);
    for (k, v) in headers {
        if !["host", "content-length", "connection"].contains(&k.to_ascii_lowercase().as_str()) {
            req = req.header(k, v);
        }
    }
    let resp = req.send().expect("kinesalite answers");
    let status = resp.status().as_u16();
    let content_type = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/x-amz-json-1.1")
        .to_string();
    (status, content_type, resp.bytes().unwrap().to_vec())
}

/// Forwards only the records the fault rule spares, and answers for all of them in order.
fn put_records(
    state: &State,
    http: &reqwest::blocking::Client,
    headers: &[(String, String)],
    body: &[u8],
) -> (u16, String, Vec<u8>) {
    let call = state.put_calls.fetch_add(1, Ordering::SeqCst);
    let mut request: Value = serde_json::from_slice(body).unwrap();
    let records = request["Records"].as_array().cloned().unwrap_or_default();
    let fail = state.fail.lock().unwrap();
    let failing: Vec<bool> = (0..records.len())
        .map(|i| fail.as_ref().is_some_and(|f| f(call, i)))
        .collect();
    drop(fail);
    let kept: Vec<Value> = records
        .iter()
        .zip(&failing)
        .filter(|(_, f)| !**f)
        .map(|(r, _)| r.clone())
        .collect();
    let data = |rs: &mut dyn Iterator<Item = &Value>| {
        rs.map(|r| r["Data"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    state.log.lock().unwrap().push((
        data(&mut kept.iter()),
        data(
            &mut records
                .iter()
                .zip(&failing)
                .filter(|(_, f)| **f)
                .map(|(r, _)| r),
        ),
    ));
    let mut answered = Vec::new();
    let mut failed_count = 0;
    if !kept.is_empty() {
        request["Records"] = Value::Array(kept);
        let (status, content_type, response) =
            forward(state, http, headers, serde_json::to_vec(&request).unwrap());
        if status != 200 {
            return (status, content_type, response);
        }
        let response: Value = serde_json::from_slice(&response).unwrap();
        failed_count += response["FailedRecordCount"].as_u64().unwrap_or(0);
        answered = response["Records"].as_array().cloned().unwrap();
    }
    let mut real = answered.into_iter();
    let results: Vec<Value> = failing
        .iter()
        .map(|f| {
            if *f {
                failed_count += 1;
                json!({"ErrorCode": "ProvisionedThroughputExceededException", "ErrorMessage": "Rate exceeded for shard (injected by the test proxy)"})
            } else {
                real.next().unwrap()
            }
        })
        .collect();
    let response = json!({"FailedRecordCount": failed_count, "Records": results});
    (
        200,
        "application/x-amz-json-1.1".into(),
        serde_json::to_vec(&response).unwrap(),
    )
}
