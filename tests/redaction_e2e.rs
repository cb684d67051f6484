//! Redaction end to end (issue #15): an app that leaks sends, through the official
//! OpenTelemetry Python SDK, the AWS X-Ray SDK over UDP and the events API, an AWS access key, a
//! bearer token, a card number and an email beside look-alikes (an order id failing Luhn, a git
//! SHA, a UUID, a base64 image name); what the file sink stored holds none of the secrets
//! anywhere, every look-alike unchanged, and the markers where the secrets were.

use std::time::Duration;

use serde_json::{json, Value};

use crate::common::*;

#[test]
fn secrets_never_reach_the_sinks_and_look_alikes_stay() {
    let dir = tempfile::tempdir().unwrap();
    let tw = Tidewater::up(
        dir.path(),
        &[
            // Users pseudonymized: stable, so analysts can still count them.
            (
                "TIDEWATER_COLLECTOR__REDACTION__RULES",
                r#"[{name = "user", keys = ["user_id"], action = "hash"}]"#,
            ),
            (
                "TIDEWATER_COLLECTOR__REDACTION__HASH_KEY",
                "an e2e key of at least 16 bytes",
            ),
        ],
    );
    let daemon = format!("127.0.0.1:{}", tw.xray_udp);
    let sent = run_client(
        "redaction_app.py",
        &["--endpoint", &tw.grpc_url(), "--daemon", &daemon],
    );
    let secrets: Vec<String> = sent["secrets"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let look_alikes: Vec<String> = sent["look_alikes"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let s = &sent["secrets"];
    let event = |id: &str, user: &str| {
        json!({"message_id": id, "name": "Order Completed", "user_id": user,
               "properties": {"card": s["card_number"], "note": format!("receipt to {}", s["email"].as_str().unwrap()),
                              "order_id": sent["look_alikes"]["order_id"], "sha": sent["look_alikes"]["git_sha"]},
               "context": {"traits": {"email": s["email"], "plan": "pro"},
                           "headers": {"authorization": format!("Bearer {}", s["bearer_token"].as_str().unwrap())},
                           "debug": format!("key {}", s["aws_access_key"].as_str().unwrap())}})
    };
    let resp = reqwest::blocking::Client::new()
        .post(tw.http_url("/v1/events"))
        .json(&json!({"events": [event("e-1", "user-1"), event("e-2", "user-1"), event("e-3", "user-2")]}))
        .send()
        .unwrap();
    assert_eq!(resp.status(), 200);

    let files = ["traces", "logs", "events", "xray"];
    let stored = wait_for(Duration::from_secs(20), || {
        let lines: Vec<Vec<Value>> = files.iter().map(|f| tw.sink_lines(f)).collect();
        (!lines[0].is_empty()
            && !lines[1].is_empty()
            && lines[2].len() >= 3
            && !lines[3].is_empty())
        .then_some(lines)
    })
    .unwrap_or_else(|| panic!("sink incomplete:\n{}", tw.log()));

    // No secret anywhere in what the sinks stored (the raw files, every field).
    for file in files {
        let text =
            std::fs::read_to_string(dir.path().join(format!("tidewater-data/out/{file}.ndjson")))
                .unwrap();
        for secret in &secrets {
            assert!(
                !text.contains(secret.as_str()),
                "{file} holds {secret:?}:\n{text}"
            );
        }
        // The SDKs write the card with spaces; no form of it survives.
        assert!(!text.contains("4242424242424242"), "{file}");
    }

    // The markers are where the secrets were, and the look-alikes are untouched.
    let (spans, logs) = (spans(&stored[0]), log_records(&stored[1]));
    let (resource, span) = spans
        .iter()
        .find(|(_, s)| s["traceId"] == sent["otel_trace_id"])
        .expect("the span");
    assert_eq!(span["name"], "charge [REDACTED:card_number]");
    let a = &span["attributes"];
    assert_eq!(
        attr(a, "http.request.header.authorization").unwrap()["arrayValue"]["values"][0]
            ["stringValue"],
        "[REDACTED:sensitive_key]"
    );
    assert_eq!(
        attr(a, "url.full").unwrap()["stringValue"],
        "https://shop.example.com/pay?order=7&access_token=[REDACTED:url_query]"
    );
    assert_eq!(
        attr(a, "enduser.email").unwrap()["stringValue"],
        "[REDACTED:email]"
    );
    assert_eq!(
        attr(a, "app.env").unwrap()["arrayValue"]["values"][0]["stringValue"],
        "AWS_ACCESS_KEY_ID=[REDACTED:aws_access_key]"
    );
    assert_eq!(
        attr(a, "db.statement").unwrap()["stringValue"],
        "SELECT * FROM cards WHERE number = ? AND owner = ?"
    );
    for (k, v) in sent["look_alikes"].as_object().unwrap() {
        assert_eq!(
            attr(a, &format!("app.{k}")).unwrap()["stringValue"],
            *v,
            "{k}"
        );
    }
    assert_eq!(
        attr(&span["events"][0]["attributes"], "detail").unwrap()["stringValue"],
        "auth with Bearer [REDACTED:bearer_token] failed for [REDACTED:email]"
    );
    assert_eq!(
        attr(&resource["attributes"], "deployed.by").unwrap()["stringValue"],
        "[REDACTED:email]"
    );
    let (_, record) = logs
        .iter()
        .find(|(_, r)| r["traceId"] == sent["otel_trace_id"])
        .expect("the log record");
    assert_eq!(
        record["body"]["stringValue"],
        "payment by [REDACTED:email] with card [REDACTED:card_number] using key [REDACTED:aws_access_key] and header Authorization: Bearer [REDACTED:bearer_token]"
    );
    assert_eq!(
        attr(&record["attributes"], "app.customer").unwrap()["stringValue"],
        "[REDACTED:email]"
    );
    for (k, v) in sent["look_alikes"].as_object().unwrap() {
        assert_eq!(
            attr(&record["attributes"], &format!("app.{k}")).unwrap()["stringValue"],
            *v,
            "{k}"
        );
    }

    let segment = stored[3]
        .iter()
        .find(|d| d["trace_id"] == sent["xray_trace_id"])
        .expect("the X-Ray segment");
    assert_eq!(segment["user"], "[REDACTED:email]");
    assert_eq!(
        segment["http"]["request"]["url"],
        "https://shop.example.com/pay?api_key=[REDACTED:url_query]&order=7"
    );
    assert_eq!(segment["annotations"]["card"], "[REDACTED:card_number]");
    assert_eq!(
        segment["annotations"]["order_id"],
        sent["look_alikes"]["order_id"]
    );
    assert_eq!(
        segment["metadata"]["app"]["headers"]["Authorization"],
        "[REDACTED:sensitive_key]"
    );
    assert_eq!(
        segment["metadata"]["app"]["look_alikes"],
        sent["look_alikes"]
    );

    let events: Vec<&Value> = stored[2].iter().collect();
    let by_id = |id: &str| *events.iter().find(|e| e["message_id"] == id).unwrap();
    let e1 = by_id("e-1");
    assert_eq!(e1["properties"]["card"], "[REDACTED:card_number]");
    assert_eq!(e1["properties"]["note"], "receipt to [REDACTED:email]");
    assert_eq!(
        e1["properties"]["order_id"],
        sent["look_alikes"]["order_id"]
    );
    assert_eq!(e1["properties"]["sha"], sent["look_alikes"]["git_sha"]);
    assert_eq!(
        e1["context"]["traits"],
        json!({"email": "[REDACTED:email]", "plan": "pro"})
    );
    assert_eq!(
        e1["context"]["headers"]["authorization"],
        "[REDACTED:sensitive_key]"
    );
    assert_eq!(e1["context"]["debug"], "key [REDACTED:aws_access_key]");
    // Pseudonyms: the same user the same, another user another, neither readable.
    let user = |e: &Value| e["user"]["id"].as_str().unwrap().to_string();
    assert!(user(e1).starts_with("[REDACTED:user:"), "{}", user(e1));
    assert_eq!(user(e1), user(by_id("e-2")));
    assert_ne!(user(e1), user(by_id("e-3")));
    assert!(!look_alikes.is_empty());

    // Counted by signal and rule, never logged.
    let metrics = tw.metrics();
    for line in [
        r#"tidewater_collector_redactions_total{signal="traces",rule="card_number"}"#,
        r#"tidewater_collector_redactions_total{signal="logs",rule="bearer_token"}"#,
        r#"tidewater_collector_redactions_total{signal="events",rule="user"}"#,
        r#"tidewater_collector_redactions_total{signal="xray",rule="email"}"#,
    ] {
        assert!(metrics.contains(line), "missing {line} in:\n{metrics}");
    }
    let log = tw.log();
    for secret in &secrets {
        assert!(!log.contains(secret.as_str()), "the log holds {secret:?}");
    }
}

#[test]
fn a_bad_custom_rule_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tidewater.toml");
    std::fs::write(
        &file,
        "[[collector.redaction.rules]]\nname = \"order_ref\"\npattern = \"ORD-(\"\n",
    )
    .unwrap();
    for args in [
        vec!["check-config", file.to_str().unwrap()],
        vec!["--config", file.to_str().unwrap(), "up"],
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_tidewater"))
            .args(&args)
            .current_dir(dir.path())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr.contains("\"order_ref\"") && stderr.contains("invalid pattern"),
            "{args:?}: {stderr}"
        );
    }
}
