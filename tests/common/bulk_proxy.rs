//! A fault-injecting HTTP proxy between Tidewater and the Elasticsearch stand-in, which
//! injects no faults of its own. It forwards every request, records every `_bulk` it sees
//! (index and `_id` of each action, and the request headers), and on demand:
//! - answers chosen documents with an item-level 429 the first time they come (the rest of
//!   the same bulk goes to the cluster and its real item results are merged back in order);
//! - answers the next N `_bulk` requests with a whole-request 503, forwarding nothing;
//! - holds each `_bulk` a while (and counts how many it holds at once);
//! - forwards `_bulk` requests but never answers them: the documents are stored and the
//!   client never learns it (a crash between indexing and checkpointing).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{to_bytes, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Value};

#[derive(Default)]
struct Faults {
    throttle_once: HashSet<String>,
    fail_requests: u32,
    swallow_responses: bool,
    delay: Duration,
}

#[derive(Default)]
struct InFlight {
    now: usize,
    max: usize,
}

/// One `_bulk` request as received: `(index, _id)` per action, and its headers.
#[derive(Clone, Debug)]
pub struct SeenBulk {
    pub actions: Vec<(String, String)>,
    pub headers: HeaderMap,
}

impl SeenBulk {
    pub fn ids_in(&self, index_prefix: &str) -> Vec<String> {
        self.actions
            .iter()
            .filter(|(index, _)| index.starts_with(index_prefix))
            .map(|(_, id)| id.clone())
            .collect()
    }
}

struct Shared {
    upstream: String,
    http: reqwest::Client,
    faults: Mutex<Faults>,
    seen: Mutex<Vec<SeenBulk>>,
    in_flight: Mutex<InFlight>,
}

pub struct BulkProxy {
    pub port: u16,
    shared: Arc<Shared>,
    _runtime: tokio::runtime::Runtime,
}

impl BulkProxy {
    pub fn start(upstream: &str) -> BulkProxy {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let shared = Arc::new(Shared {
            upstream: upstream.trim_end_matches('/').to_string(),
            http: reqwest::Client::new(),
            faults: Mutex::default(),
            seen: Mutex::default(),
            in_flight: Mutex::default(),
        });
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = Router::new().fallback(forward).with_state(shared.clone());
        runtime.spawn(async move { axum::serve(listener, app).await.unwrap() });
        BulkProxy {
            port,
            shared,
            _runtime: runtime,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The first time each of `ids` comes in a `_bulk`, it gets a 429 item instead of being
    /// forwarded.
    pub fn throttle_once(&self, ids: &[&str]) {
        let mut f = self.shared.faults.lock().unwrap();
        f.throttle_once.extend(ids.iter().map(|s| s.to_string()));
    }

    /// The next `n` `_bulk` requests get a 503 for the whole request.
    pub fn fail_requests(&self, n: u32) {
        self.shared.faults.lock().unwrap().fail_requests = n;
    }

    /// Forward `_bulk` requests but never answer them (until turned off).
    pub fn swallow_responses(&self, on: bool) {
        self.shared.faults.lock().unwrap().swallow_responses = on;
    }

    /// Hold every `_bulk` this long before forwarding it, so concurrent requests overlap.
    pub fn delay(&self, delay: Duration) {
        self.shared.faults.lock().unwrap().delay = delay;
    }

    /// Most `_bulk` requests that were in the proxy at once.
    pub fn max_in_flight(&self) -> usize {
        self.shared.in_flight.lock().unwrap().max
    }

    pub fn bulks(&self) -> Vec<SeenBulk> {
        self.shared.seen.lock().unwrap().clone()
    }
}

async fn forward(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = to_bytes(body, 512 * 1024 * 1024).await.unwrap();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_default();
    if parts.uri.path().ends_with("/_bulk") {
        {
            let mut f = shared.in_flight.lock().unwrap();
            f.now += 1;
            f.max = f.max.max(f.now);
        }
        let delay = shared.faults.lock().unwrap().delay;
        tokio::time::sleep(delay).await;
        let response = bulk(&shared, &path, parts.headers, body).await;
        shared.in_flight.lock().unwrap().now -= 1;
        return response;
    }
    let (status, bytes) = send(&shared, parts.method.as_str(), &path, &parts.headers, body).await;
    (status, bytes).into_response()
}

async fn send(
    shared: &Shared,
    method: &str,
    path: &str,
    headers: &HeaderMap,
    body: Bytes,
) -> (StatusCode, Bytes) {
    let mut req = shared.http.request(
        reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
        format!("{}{path}", shared.upstream),
    );
    if let Some(ct) = headers.get("content-type") {
        req = req.header("content-type", ct.as_bytes());
    }
    let resp = req.body(body).send().await.unwrap();
    let status = StatusCode::from_u16(resp.status().as_u16()).unwrap();
    (status, resp.bytes().await.unwrap())
}

async fn bulk(shared: &Shared, path: &str, headers: HeaderMap, body: Bytes) -> Response {
    let text = String::from_utf8(body.to_vec()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let pairs: Vec<(Value, &str)> = lines
        .chunks(2)
        .map(|p| (serde_json::from_str(p[0]).unwrap(), p[1]))
        .collect();
    let action = |a: &Value| {
        let target = &a["create"];
        (
            target["_index"].as_str().unwrap_or_default().to_string(),
            target["_id"].as_str().unwrap_or_default().to_string(),
        )
    };
    shared.seen.lock().unwrap().push(SeenBulk {
        actions: pairs.iter().map(|(a, _)| action(a)).collect(),
        headers: headers.clone(),
    });

    let (throttled, swallow) = {
        let mut f = shared.faults.lock().unwrap();
        if f.fail_requests > 0 {
            f.fail_requests -= 1;
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                axum::Json(
                    json!({"error": {"type": "injected", "reason": "injected 503"}, "status": 503}),
                ),
            )
                .into_response();
        }
        let throttled: Vec<bool> = pairs
            .iter()
            .map(|(a, _)| f.throttle_once.remove(&action(a).1))
            .collect();
        (throttled, f.swallow_responses)
    };

    let mut forwarded = String::new();
    for ((a, source), skip) in pairs.iter().zip(&throttled) {
        if !skip {
            forwarded.push_str(&format!("{a}\n{source}\n"));
        }
    }
    let mut upstream_items = Vec::new();
    if !forwarded.is_empty() {
        let (status, bytes) = send(shared, "POST", path, &headers, Bytes::from(forwarded)).await;
        if !status.is_success() {
            return (status, bytes).into_response();
        }
        let answer: Value = serde_json::from_slice(&bytes).unwrap();
        upstream_items = answer["items"].as_array().unwrap().clone();
    }
    if swallow {
        // Stored upstream; the client waits until it gives up or is killed.
        tokio::time::sleep(Duration::from_secs(3600)).await;
    }
    let mut upstream_items = upstream_items.into_iter();
    let items: Vec<Value> = pairs
        .iter()
        .zip(&throttled)
        .map(|((a, _), skip)| {
            if *skip {
                let (index, id) = action(a);
                json!({"create": {"_index": index, "_id": id, "status": 429, "error": {
                    "type": "es_rejected_execution_exception",
                    "reason": "injected: rejected execution of coordinating operation"}}})
            } else {
                upstream_items.next().unwrap()
            }
        })
        .collect();
    let errors = items
        .iter()
        .any(|i| i["create"]["status"].as_u64().unwrap_or(0) >= 300);
    axum::Json(json!({"took": 1, "errors": errors, "items": items})).into_response()
}
