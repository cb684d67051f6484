//! End to end against CloudWatch Logs (moto, started here): the official OpenTelemetry Python
//! SDK → `tidewater up` → EMF documents and log events, read back with `GetLogEvents` and
//! `FilterLogEvents` and compared with what the app reports having recorded.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::common::peers::{aws_env, moto, Peer};
use crate::common::*;
use aws_sdk_cloudwatchlogs::Client;
use serde_json::{json, Value};

fn client(rt: &tokio::runtime::Runtime, moto: &Peer) -> Client {
    let conf = rt.block_on(
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(moto.endpoint())
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_cloudwatchlogs::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .load(),
    );
    Client::new(&conf)
}

/// Every event message in `group`/`stream`, oldest first (empty until the stream exists).
fn stream_messages(
    rt: &tokio::runtime::Runtime,
    c: &Client,
    group: &str,
    stream: &str,
) -> Vec<String> {
    rt.block_on(async {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let resp = c
                .get_log_events()
                .log_group_name(group)
                .log_stream_name(stream)
                .start_from_head(true)
                .set_next_token(token.clone())
                .send()
                .await;
            let Ok(resp) = resp else { return out };
            let events = resp.events();
            out.extend(
                events
                    .iter()
                    .filter_map(|e| e.message().map(str::to_string)),
            );
            let next = resp.next_forward_token().map(str::to_string);
            if events.is_empty() || next == token {
                return out;
            }
            token = next;
        }
    })
}

fn env_with(moto: &Peer, extra: &[(&'static str, &str)]) -> Vec<(&'static str, String)> {
    let mut env = aws_env(&moto.endpoint());
    env.push(("TIDEWATER_SINKS__FILE__ENABLED", "false".into()));
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    env
}

fn emf_env(moto: &Peer) -> Vec<(&'static str, String)> {
    env_with(
        moto,
        &[
            ("TIDEWATER_SINKS__EMF__ENABLED", "true"),
            ("TIDEWATER_SINKS__EMF__NAMESPACE", "ShopE2E"),
            ("TIDEWATER_SINKS__EMF__WINDOW", "2s"),
            ("TIDEWATER_SINKS__EMF__GRACE", "300ms"),
            // The app exports its cumulative counter once, at exit: its first value is all of it.
            ("TIDEWATER_SINKS__EMF__KEEP_FIRST_VALUE", "true"),
        ],
    )
}

fn documents(messages: &[String]) -> Vec<Value> {
    messages
        .iter()
        .map(|m| serde_json::from_str(m).expect("EMF documents are JSON"))
        .collect()
}

/// Sum of a counter across documents, and the merged Count/Sum/Counts of a distribution.
fn counter(docs: &[Value], name: &str) -> f64 {
    docs.iter().filter_map(|d| d[name].as_f64()).sum()
}

fn distribution(docs: &[Value], name: &str) -> (u64, f64, u64) {
    let parts: Vec<&Value> = docs
        .iter()
        .map(|d| &d[name])
        .filter(|v| v.is_object())
        .collect();
    let count = parts.iter().map(|p| p["Count"].as_u64().unwrap()).sum();
    let sum = parts.iter().map(|p| p["Sum"].as_f64().unwrap()).sum();
    let counts = parts
        .iter()
        .flat_map(|p| p["Counts"].as_array().unwrap())
        .map(|c| c.as_u64().unwrap())
        .sum();
    (count, sum, counts)
}

/// Every document is valid EMF: a directive naming metrics the document carries, dimension
/// sets of at most 30 names the document carries, at most 100 metrics and 100 values each.
fn assert_valid_emf(doc: &Value, namespace: &str) {
    let directive = &doc["_aws"]["CloudWatchMetrics"][0];
    assert_eq!(directive["Namespace"], namespace, "{doc}");
    assert!(doc["_aws"]["Timestamp"].as_i64().unwrap() > 0);
    let metrics = directive["Metrics"].as_array().unwrap();
    assert!(!metrics.is_empty() && metrics.len() <= 100);
    for m in metrics {
        let v = &doc[m["Name"].as_str().unwrap()];
        assert!(
            v.is_number() || v["Values"].as_array().is_some_and(|a| a.len() <= 100),
            "{doc}"
        );
    }
    for set in directive["Dimensions"].as_array().unwrap() {
        let set = set.as_array().unwrap();
        assert!(set.len() <= 30);
        for d in set {
            assert!(doc[d.as_str().unwrap()].is_string(), "{doc}");
        }
    }
}

#[test]
fn emf_documents_hold_exactly_what_the_app_recorded() {
    let moto = moto();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let logs = client(&rt, &moto);
    let dir = tempfile::tempdir().unwrap();
    let mut tw = Tidewater::up(dir.path(), &emf_env(&moto));

    let sent = run_otel_app(
        "grpc",
        &tw.grpc_url(),
        &["--service", "checkout", "--traces", "20", "--logs", "0"],
    );
    assert_eq!(
        sent["export_failures"],
        json!({"spans": 0, "metrics": 0, "logs": 0}),
        "{sent}"
    );
    assert_eq!(sent["requests"], 20);

    // After the window closes: the counter, the histogram and the span metrics, exactly.
    let docs = wait_for(Duration::from_secs(30), || {
        let docs = documents(&stream_messages(
            &rt,
            &logs,
            "/tidewater/metrics",
            "checkout",
        ));
        let done = counter(&docs, "app.requests") >= 20.0 && counter(&docs, "RequestCount") >= 20.0;
        done.then_some(docs)
    })
    .unwrap_or_else(|| panic!("no EMF documents in moto:\n{}", tw.log()));
    for d in &docs {
        assert_valid_emf(d, "ShopE2E");
    }
    assert_eq!(counter(&docs, "app.requests"), 20.0);
    let (count, sum, counts) = distribution(&docs, "app.latency");
    assert_eq!((count, counts), (20, 20));
    assert_eq!(sum, sent["latency_sum"].as_f64().unwrap());
    let latency_doc = docs
        .iter()
        .find(|d| d.get("app.latency").is_some())
        .unwrap();
    assert_eq!(latency_doc["service.name"], "checkout");
    assert_eq!(latency_doc["route"], "/checkout");
    assert_eq!(
        latency_doc["_aws"]["CloudWatchMetrics"][0]["Metrics"][0],
        json!({"Name": "app.latency", "Unit": "Milliseconds"})
    );

    // Span metrics: 20 server spans, every fifth failed; client spans are not requests.
    assert_eq!(counter(&docs, "RequestCount"), 20.0);
    assert_eq!(counter(&docs, "ErrorCount"), 4.0);
    assert_eq!(distribution(&docs, "Latency").0, 20);
    let error_doc = docs.iter().find(|d| d["StatusClass"] == "error").unwrap();
    assert_eq!(
        (
            error_doc["Service"].as_str(),
            error_doc["Operation"].as_str()
        ),
        (Some("checkout"), Some("POST /checkout/{id}"))
    );
    assert_eq!(error_doc["RequestCount"], json!(4.0));

    // Nothing is sent twice, and a graceful stop leaves no unsent document behind.
    let before = stream_messages(&rt, &logs, "/tidewater/metrics", "checkout").len();
    tw.stop();
    assert_eq!(
        stream_messages(&rt, &logs, "/tidewater/metrics", "checkout").len(),
        before
    );
    let state: Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("tidewater-data/emf/emf-state.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(state["pending"], json!([]));
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// An OTLP/JSON export of one cumulative counter point.
fn cumulative(start: u64, time: u64, value: i64) -> Value {
    json!({"resourceMetrics": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "billing"}}]},
        "scopeMetrics": [{"metrics": [{
            "name": "invoices.sent", "unit": "{invoice}",
            "sum": {"aggregationTemporality": 2, "isMonotonic": true, "dataPoints": [{
                "startTimeUnixNano": start.to_string(), "timeUnixNano": time.to_string(), "asInt": value.to_string()}]}
        }]}]
    }]})
}

#[test]
fn a_restart_continues_from_the_last_cumulative_value_without_a_spike() {
    let moto = moto();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let logs = client(&rt, &moto);
    let dir = tempfile::tempdir().unwrap();
    let mut tw = Tidewater::up(dir.path(), &emf_env(&moto));
    let http = reqwest::blocking::Client::new();
    let post = |tw: &Tidewater, body: Value| {
        let r = http
            .post(tw.http_url("/v1/metrics"))
            .json(&body)
            .send()
            .unwrap();
        assert!(r.status().is_success(), "{}", r.text().unwrap_or_default());
    };
    let start = now_nanos() - 60 * 1_000_000_000;
    post(&tw, cumulative(start, now_nanos(), 100));
    let sent = |want: usize| {
        wait_for(Duration::from_secs(30), || {
            let docs = documents(&stream_messages(
                &rt,
                &logs,
                "/tidewater/metrics",
                "billing",
            ));
            (docs.len() >= want).then_some(docs)
        })
    };
    let first = sent(1).unwrap_or_else(|| panic!("no document:\n{}", tw.log()));
    assert_eq!(counter(&first, "invoices.sent"), 100.0);
    assert_eq!(
        first[0]["_aws"]["CloudWatchMetrics"][0]["Metrics"][0],
        json!({"Name": "invoices.sent", "Unit": "Count"})
    );

    // A crash, then the same series continues at 130: 30 are new, not 130.
    tw.kill();
    tw.start();
    std::thread::sleep(Duration::from_millis(50));
    post(&tw, cumulative(start, now_nanos(), 130));
    let all = sent(2).unwrap_or_else(|| panic!("no second document:\n{}", tw.log()));
    assert_eq!(all.len(), 2, "{all:?}");
    assert_eq!(all[1]["invoices.sent"], json!(30.0));
}

#[test]
fn log_records_land_in_the_group_and_stream_their_resource_maps_to() {
    let moto = moto();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let logs = client(&rt, &moto);
    let dir = tempfile::tempdir().unwrap();
    let env = env_with(
        &moto,
        &[
            ("TIDEWATER_SINKS__CLOUDWATCH_LOGS__ENABLED", "true"),
            (
                "TIDEWATER_SINKS__CLOUDWATCH_LOGS__LOG_GROUP",
                "/ecs/{service.name}",
            ),
            (
                "TIDEWATER_SINKS__CLOUDWATCH_LOGS__LOG_STREAM",
                "{host.name}/{container.id}",
            ),
            ("TIDEWATER_SINKS__CLOUDWATCH_LOGS__RETENTION_DAYS", "7"),
        ],
    );
    let tw = Tidewater::up(dir.path(), &env);
    let apps = [
        ("checkout", "ip-10-0-0-7", "c0ffee"),
        ("payments", "ip-10-0-0-8", "beef42"),
    ];
    let mut sent = Vec::new();
    for (service, host, container) in apps {
        let host = format!("host.name={host}");
        let container = format!("container.id={container}");
        let s = run_otel_app(
            "http",
            &tw.http_url(""),
            &[
                "--service",
                service,
                "--traces",
                "0",
                "--logs",
                "12",
                "--logs-in-spans",
                "--resource",
                &host,
                "--resource",
                &container,
            ],
        );
        assert_eq!(s["export_failures"]["logs"], 0, "{s}");
        sent.push(s);
    }

    // One record from 20 days ago: CloudWatch refuses it as too old; it is dead-lettered and
    // the record sent with it is stored.
    let old_ms = (now_nanos() / 1_000_000) as i64 - 20 * 24 * 3600 * 1000;
    let record = |body: &str, nanos: u64| json!({"timeUnixNano": nanos.to_string(), "severityText": "WARN", "body": {"stringValue": body}});
    let old = json!({"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "checkout"}},
                                    {"key": "host.name", "value": {"stringValue": "ip-10-0-0-7"}},
                                    {"key": "container.id", "value": {"stringValue": "c0ffee"}}]},
        "scopeLogs": [{"logRecords": [record("ancient history", old_ms as u64 * 1_000_000), record("fresh news", now_nanos())]}]
    }]});
    let r = reqwest::blocking::Client::new()
        .post(tw.http_url("/v1/logs"))
        .json(&old)
        .send()
        .unwrap();
    assert!(r.status().is_success());

    for ((service, host, container), s) in apps.iter().zip(&sent) {
        let group = format!("/ecs/{service}");
        let stream = format!("{host}/{container}");
        for (i, body) in s["logs"].as_array().unwrap().iter().enumerate() {
            let body = body.as_str().unwrap();
            // FilterLogEvents by the record's exact words, in its group and stream only.
            let found = wait_for(Duration::from_secs(30), || {
                let resp = rt
                    .block_on(
                        logs.filter_log_events()
                            .log_group_name(&group)
                            .log_stream_names(&stream)
                            .filter_pattern(format!("\"{body}\""))
                            .send(),
                    )
                    .ok()?;
                let msgs: Vec<Value> = resp
                    .events()
                    .iter()
                    .map(|e| serde_json::from_str(e.message().unwrap()).unwrap())
                    .filter(|m: &Value| m["body"] == body)
                    .collect();
                (!msgs.is_empty()).then_some(msgs)
            })
            .unwrap_or_else(|| panic!("{body:?} not in {group}/{stream}:\n{}", tw.log()));
            assert_eq!(found.len(), 1, "{found:?}");
            let m = &found[0];
            assert_eq!(m["severity"], "INFO");
            assert_eq!(m["severity_number"], 9);
            assert_eq!(m["attributes"]["order.id"], i as i64);
            assert_eq!(m["trace_id"], s["log_ids"][i]["trace_id"]);
            assert_eq!(m["span_id"], s["log_ids"][i]["span_id"]);
        }
        // Each stream holds its own service's records and nothing else.
        let all = stream_messages(&rt, &logs, &group, &stream);
        let bodies: Vec<String> = all
            .iter()
            .map(|m| {
                serde_json::from_str::<Value>(m).unwrap()["body"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .filter(|b| b != "fresh news")
            .collect();
        let want: Vec<String> = s["logs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_str().unwrap().to_string())
            .collect();
        assert_eq!(bodies, want);
    }

    // The group was created with the configured retention.
    let groups = rt
        .block_on(
            logs.describe_log_groups()
                .log_group_name_prefix("/ecs/")
                .send(),
        )
        .unwrap();
    let retention: Vec<Option<i32>> = groups
        .log_groups()
        .iter()
        .map(|g| g.retention_in_days())
        .collect();
    assert_eq!(retention, vec![Some(7), Some(7)]);

    // The too-old record: dead-lettered with its reason, counted, not retried.
    let dead = std::fs::read_to_string(
        dir.path()
            .join("tidewater-data/dead-letter/cloudwatch_logs.ndjson"),
    )
    .unwrap_or_default();
    let dead: Vec<Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(dead.len(), 1, "{dead:?}\n{}", tw.log());
    assert_eq!(dead[0]["reason"], "too_old");
    assert_eq!(dead[0]["log_group"], "/ecs/checkout");
    assert!(dead[0]["message"]
        .as_str()
        .unwrap()
        .contains("ancient history"));
    assert!(
        tw.metrics()
            .contains("tidewater_sink_refusals_total{sink=\"cloudwatch_logs\",code=\"too_old\"} 1"),
        "{}",
        tw.metrics()
    );
}

/// A small HTTP proxy in front of moto that answers some `PutLogEvents` calls with
/// `ThrottlingException`, as CloudWatch does under load (moto never throttles).
mod throttling_proxy {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    pub struct Proxy {
        pub port: u16,
        /// `PutLogEvents` calls seen, and how many were throttled.
        pub puts: Arc<AtomicUsize>,
        pub throttled: Arc<AtomicUsize>,
    }

    /// Throttles the `PutLogEvents` calls whose 1-based arrival number is in `throttle`.
    pub fn start(upstream: String, throttle: Vec<usize>) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let puts = Arc::new(AtomicUsize::new(0));
        let throttled = Arc::new(AtomicUsize::new(0));
        let (p, t) = (puts.clone(), throttled.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let (upstream, throttle, p, t) =
                    (upstream.clone(), throttle.clone(), p.clone(), t.clone());
                std::thread::spawn(move || serve(conn, &upstream, &throttle, &p, &t));
            }
        });
        Proxy {
            port,
            puts,
            throttled,
        }
    }

    fn serve(
        conn: TcpStream,
        upstream: &str,
        throttle: &[usize],
        puts: &AtomicUsize,
        throttled: &AtomicUsize,
    ) {
        let http = reqwest::blocking::Client::new();
        let mut reader = BufReader::new(conn.try_clone().unwrap());
        let mut out = conn;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let mut parts = line.split_whitespace();
            let (method, path) = (
                parts.next().unwrap_or("").to_string(),
                parts.next().unwrap_or("/").to_string(),
            );
            let mut headers = Vec::new();
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                let h = h.trim_end().to_string();
                if h.is_empty() {
                    break;
                }
                if let Some((k, v)) = h.split_once(':') {
                    headers.push((k.trim().to_lowercase(), v.trim().to_string()));
                }
            }
            let len: usize = headers
                .iter()
                .find(|(k, _)| k == "content-length")
                .map_or(0, |(_, v)| v.parse().unwrap());
            let mut body = vec![0; len];
            reader.read_exact(&mut body).unwrap();
            let target = headers
                .iter()
                .find(|(k, _)| k == "x-amz-target")
                .map(|(_, v)| v.clone())
                .unwrap_or_default();
            let (status, content_type, reply) = if target.ends_with("PutLogEvents")
                && throttle.contains(&(puts.fetch_add(1, Ordering::SeqCst) + 1))
            {
                throttled.fetch_add(1, Ordering::SeqCst);
                (
                    400,
                    "application/x-amz-json-1.1".to_string(),
                    br#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#.to_vec(),
                )
            } else {
                let mut req = http.request(method.parse().unwrap(), format!("{upstream}{path}"));
                for (k, v) in &headers {
                    if k != "host" && k != "content-length" {
                        req = req.header(k.as_str(), v.as_str());
                    }
                }
                let resp = req.body(body).send().unwrap();
                let status = resp.status().as_u16();
                let ct = resp
                    .headers()
                    .get("content-type")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("application/x-amz-json-1.1")
                    .to_string();
                (status, ct, resp.bytes().unwrap().to_vec())
            };
            let head = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n",
                reply.len()
            );
            if out
                .write_all(head.as_bytes())
                .and_then(|_| out.write_all(&reply))
                .is_err()
            {
                return;
            }
        }
    }
}

#[test]
fn throttled_requests_are_retried_and_nothing_is_sent_twice() {
    let moto = moto();
    let proxy = throttling_proxy::start(moto.endpoint(), vec![2, 3, 4]);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let logs = client(&rt, &moto);
    let dir = tempfile::tempdir().unwrap();
    let mut env = env_with(
        &moto,
        &[
            ("TIDEWATER_SINKS__CLOUDWATCH_LOGS__ENABLED", "true"),
            ("TIDEWATER_SINKS__CLOUDWATCH_LOGS__LOG_STREAM", "app"),
            // Throttling fails a call as a whole: the engine sends that call again, and
            // only it, whatever the attempt budget.
            (
                "TIDEWATER_SINKS__CLOUDWATCH_LOGS__DELIVERY__MAX_ATTEMPTS",
                "2",
            ),
            (
                "TIDEWATER_SINKS__CLOUDWATCH_LOGS__DELIVERY__RETRY_INITIAL",
                "50ms",
            ),
            ("TIDEWATER_PROCESSOR__RETRY_INITIAL", "50ms"),
        ],
    );
    env.retain(|(k, _)| *k != "AWS_ENDPOINT_URL");
    env.push((
        "AWS_ENDPOINT_URL",
        format!("http://127.0.0.1:{}", proxy.port),
    ));
    let tw = Tidewater::up(dir.path(), &env);

    // 300 records of 4 KiB: more than one PutLogEvents request (1 MiB each) in one round.
    let records: Vec<Value> = (0..300)
        .map(|i| json!({"timeUnixNano": (now_nanos() + i as u64).to_string(), "body": {"stringValue": format!("record {i:03} {}", "x".repeat(4096))}}))
        .collect();
    let body = json!({"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "bulk"}}]},
        "scopeLogs": [{"logRecords": records}]}]});
    let r = reqwest::blocking::Client::new()
        .post(tw.http_url("/v1/logs"))
        .json(&body)
        .send()
        .unwrap();
    assert!(r.status().is_success());

    let stored = wait_for(Duration::from_secs(60), || {
        let m = stream_messages(&rt, &logs, "/tidewater/bulk", "app");
        (m.len() >= 300 && proxy.throttled.load(std::sync::atomic::Ordering::SeqCst) == 3)
            .then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "not all records stored ({} throttled):\n{}",
            proxy.throttled.load(std::sync::atomic::Ordering::SeqCst),
            tw.log()
        )
    });
    // Two requests (1 MiB each at most): the first to arrive stored, the other throttled
    // three times, then stored. Five calls; a sixth would mean a stored request was sent
    // twice.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(proxy.puts.load(std::sync::atomic::Ordering::SeqCst), 5);
    assert!(stored.len() >= 300);
    let stored = stream_messages(&rt, &logs, "/tidewater/bulk", "app");
    let mut bodies: Vec<String> = stored
        .iter()
        .map(|m| {
            serde_json::from_str::<Value>(m).unwrap()["body"]
                .as_str()
                .unwrap()[..10]
                .to_string()
        })
        .collect();
    bodies.sort();
    let want: Vec<String> = (0..300).map(|i| format!("record {i:03}")).collect();
    assert_eq!(bodies, want, "each record exactly once");
    assert!(
        tw.metrics().contains(
            "tidewater_sink_retries_total{sink=\"cloudwatch_logs\",reason=\"ThrottlingException\"}"
        ),
        "{}",
        tw.metrics()
    );
}
