//! Receivers open beyond loopback: TLS with a certificate reloaded from disk, client
//! certificates (mTLS) and bearer tokens, with the official OpenTelemetry Python SDK as the
//! client; clients without credentials refused before their body is read; an unprotected
//! non-loopback bind refused at start-up.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::common::*;

const TOKEN: &str = "s3cret-t0ken";

/// A CA, a server certificate for 127.0.0.1 and a client certificate, made by `trustme` (the
/// venv's) into `dir`: `ca.pem`, `server.pem`, `server.key`, `client.pem`, `client.key`.
fn make_certificates(dir: &Path) {
    run_python(
        r#"
import sys, trustme
d = sys.argv[1]
ca = trustme.CA()
ca.cert_pem.write_to_path(d + "/ca.pem")
def issue(name, *hosts):
    leaf = ca.issue_cert(*hosts)
    leaf.private_key_pem.write_to_path(d + f"/{name}.key")
    with open(d + f"/{name}.pem", "wb") as f:
        for blob in leaf.cert_chain_pems:
            f.write(blob.bytes())
issue("server", "127.0.0.1", "localhost")
issue("client", "client.example")
"#,
        &[dir.to_str().unwrap()],
    );
}

/// Python's TLS client against `port`: prints the server certificate's serial and the HTTP
/// status of a POST whose 1 MB body is declared but never sent, or the error.
fn probe(dir: &Path, port: u16, client_cert: bool, token: Option<&str>) -> String {
    run_python(
        r#"
import http.client, ssl, sys
d, port, client_cert, token = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
ctx = ssl.create_default_context(cafile=d + "/ca.pem")
if client_cert:
    ctx.load_cert_chain(d + "/client.pem", d + "/client.key")
try:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    conn.connect()
    serial = conn.sock.getpeercert()["serialNumber"]
    conn.putrequest("POST", "/v1/traces")
    conn.putheader("content-type", "application/x-protobuf")
    conn.putheader("content-length", "1000000")
    if token:
        conn.putheader("authorization", "Bearer " + token)
    conn.endheaders()
    response = conn.getresponse()
    print(serial, response.status, response.getheader("www-authenticate"))
except Exception as e:
    print("error", type(e).__name__, e)
"#,
        &[
            dir.to_str().unwrap(),
            &port.to_string(),
            if client_cert { "1" } else { "0" },
            token.unwrap_or(""),
        ],
    )
}

fn otel_app(endpoint: &str, protocol: &str, dir: &Path, token: &str) -> serde_json::Value {
    let out = Command::new(python())
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/otel_app.py"))
        .args([
            "--protocol",
            protocol,
            "--endpoint",
            endpoint,
            "--traces",
            "5",
        ])
        .env("OTEL_EXPORTER_OTLP_CERTIFICATE", dir.join("ca.pem"))
        .env(
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
            dir.join("client.pem"),
        )
        .env("OTEL_EXPORTER_OTLP_CLIENT_KEY", dir.join("client.key"))
        .env(
            "OTEL_EXPORTER_OTLP_HEADERS",
            format!("authorization=Bearer%20{token}"),
        )
        // `requests` (the HTTP exporter's) lets these override the exporter's own CA setting;
        // some machines set them globally.
        .env_remove("REQUESTS_CA_BUNDLE")
        .env_remove("CURL_CA_BUNDLE")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    // The SDK logs why an export failed on stderr: shown when the test fails.
    eprintln!(
        "otel_app {protocol} stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| {
        panic!(
            "otel_app printed no summary ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

#[test]
fn the_sdk_exports_over_mtls_with_a_token_and_others_are_refused_before_their_body() {
    let certs = tempfile::tempdir().unwrap();
    make_certificates(certs.path());
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| certs.path().join(name).to_str().unwrap().to_string();
    let tw = Tidewater::up(
        dir.path(),
        &[
            ("TIDEWATER_COLLECTOR__TLS__CERT", path("server.pem")),
            ("TIDEWATER_COLLECTOR__TLS__KEY", path("server.key")),
            ("TIDEWATER_COLLECTOR__TLS__CLIENT_CA", path("ca.pem")),
            ("TIDEWATER_COLLECTOR__TLS__RELOAD_INTERVAL", "200ms".into()),
            (
                "TIDEWATER_COLLECTOR__AUTH__BEARER_TOKENS",
                format!("[\"{TOKEN}\"]"),
            ),
        ],
    );

    // The official SDK, over gRPC and over HTTP, with the CA, its certificate and the token.
    for (protocol, port) in [("grpc", tw.grpc), ("http", tw.http)] {
        let sent = otel_app(
            &format!("https://127.0.0.1:{port}"),
            protocol,
            certs.path(),
            TOKEN,
        );
        assert_eq!(sent["export_failures"]["spans"], 0, "{protocol}: {sent}");
        let ids = sent_span_ids(&sent);
        assert!(!ids.is_empty());
        let delivered = wait_for(Duration::from_secs(20), || {
            let counts = span_id_counts(&tw);
            ids.iter().all(|id| counts.contains_key(id)).then_some(())
        });
        assert!(delivered.is_some(), "{protocol}: not every span delivered");
    }
    // A wrong token: the SDK's exports fail, and nothing of them is delivered.
    let refused = otel_app(
        &format!("https://127.0.0.1:{}", tw.grpc),
        "grpc",
        certs.path(),
        "wrong",
    );
    assert!(
        refused["export_failures"]["spans"].as_u64().unwrap() > 0,
        "{refused}"
    );

    // Without a client certificate the handshake fails; with one but no token the request
    // is answered 401 at once, its declared 1 MB body never sent.
    let no_cert = probe(certs.path(), tw.http, false, None);
    assert!(no_cert.starts_with("error"), "{no_cert}");
    let no_token = probe(certs.path(), tw.http, true, None);
    let mut fields = no_token.split(' ');
    let serial = fields.next().unwrap().to_string();
    assert_eq!(fields.next(), Some("401"), "{no_token}");
    assert!(no_token.contains("Bearer"), "{no_token}");
    let wrong = probe(certs.path(), tw.http, true, Some("t0ken-guess"));
    assert!(wrong.contains(" 401 "), "{wrong}");
    let metrics = tw.metrics();
    assert!(
        metrics.contains("tidewater_collector_unauthenticated_requests_total{listener=\"http\"} 2"),
        "{metrics}"
    );

    // A renewed certificate on disk reaches new connections without a restart. It comes
    // from a new CA, so a client trusting only that CA (and presenting its old, still
    // accepted, client certificate) verifies the server only once the renewal is served.
    let renewed = tempfile::tempdir().unwrap();
    make_certificates(renewed.path());
    let client = tempfile::tempdir().unwrap();
    for (from, name) in [
        (renewed.path(), "ca.pem"),
        (certs.path(), "client.pem"),
        (certs.path(), "client.key"),
    ] {
        std::fs::copy(from.join(name), client.path().join(name)).unwrap();
    }
    for name in ["server.key", "server.pem"] {
        let staged = certs.path().join(format!("{name}.new"));
        std::fs::copy(renewed.path().join(name), &staged).unwrap();
        std::fs::rename(staged, certs.path().join(name)).unwrap();
    }
    // Each probe starts a Python interpreter: generous on a loaded 2-core machine.
    let reloaded = wait_for(Duration::from_secs(30), || {
        let answer = probe(client.path(), tw.http, true, Some(TOKEN));
        (!answer.starts_with("error")).then_some(answer)
    })
    .expect("the renewed certificate is served");
    assert_ne!(reloaded.split(' ').next().unwrap(), serial, "{reloaded}");
    assert!(
        tw.metrics()
            .contains("tidewater_collector_tls_reloads_total{outcome=\"loaded\"}"),
        "reload counted"
    );
}

#[test]
fn an_unprotected_listener_beyond_loopback_is_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tidewater"))
        .arg("collector")
        .current_dir(dir.path())
        .env(
            "TIDEWATER_COLLECTOR__HTTP_ADDR",
            format!("0.0.0.0:{}", free_port()),
        )
        .env(
            "TIDEWATER_COLLECTOR__GRPC_ADDR",
            format!("127.0.0.1:{}", free_port()),
        )
        .env(
            "TIDEWATER_ADMIN__ADDR",
            format!("127.0.0.1:{}", free_port()),
        )
        .env(
            "TIDEWATER_COLLECTOR__XRAY_UDP_ADDR",
            format!("127.0.0.1:{}", free_udp_port()),
        )
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("collector.http_addr") && stderr.contains("allow_insecure_non_loopback"),
        "{stderr}"
    );
}
