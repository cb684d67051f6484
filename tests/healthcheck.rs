//! `tidewater healthcheck` against live processes: what ECS and the image's Docker
//! `HEALTHCHECK` run inside the container. 0 when the admin listener says ready; 1 with a
//! one-line reason when it says not ready, when nothing listens, or when nothing answers in
//! time.

use std::net::TcpListener;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::*;

fn healthcheck(args: &[&str], env: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidewater"));
    cmd.arg("healthcheck").args(args);
    // The caller's environment must not choose the admin address for these checks.
    cmd.env_remove("TIDEWATER_ADMIN__ADDR");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run tidewater healthcheck")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn assert_one_line_failure(out: &Output, wanted: &str) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(1), "exit 1 expected: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err:?}");
    assert!(err.contains(wanted), "{wanted:?} in {err:?}");
}

#[test]
fn ready_process_passes_by_configured_address_and_by_url() {
    let dir = tempfile::tempdir().unwrap();
    let tw = Tidewater::up(dir.path(), &[] as &[(&str, &str)]);

    // No --url: the admin address comes from the configuration, as in a container where
    // TIDEWATER_ADMIN__ADDR (or the TOML file) sets it.
    let out = healthcheck(
        &[],
        &[("TIDEWATER_ADMIN__ADDR", format!("127.0.0.1:{}", tw.admin))],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ready"));

    // An admin listener on every interface is asked on loopback.
    let out = healthcheck(
        &[],
        &[("TIDEWATER_ADMIN__ADDR", format!("0.0.0.0:{}", tw.admin))],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    // And from a TOML file given with --config.
    let file = dir.path().join("hc.toml");
    std::fs::write(
        &file,
        format!("[admin]\naddr = \"127.0.0.1:{}\"\n", tw.admin),
    )
    .unwrap();
    let out = healthcheck(&["--config", file.to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));

    let url = format!("http://127.0.0.1:{}/readyz", tw.admin);
    let out = healthcheck(&["--url", &url], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let url = format!("http://localhost:{}/healthz", tw.admin);
    assert!(healthcheck(&["--url", &url], &[]).status.success());

    // A path the listener does not serve is a failure, named with its status.
    let url = format!("http://127.0.0.1:{}/nope", tw.admin);
    assert_one_line_failure(&healthcheck(&["--url", &url], &[]), "404");
}

/// A processor whose bus does not answer stays "not ready: processor" while its admin
/// listener is up: the check fails with /readyz's own words.
#[test]
fn not_ready_process_fails_with_the_reason() {
    // Accepts connections (the kernel's backlog) and never answers: the AWS calls hang.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", silent.local_addr().unwrap());
    let admin = free_port();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tidewater"));
    cmd.arg("processor")
        .current_dir(dir.path())
        .env("TIDEWATER_ADMIN__ADDR", format!("127.0.0.1:{admin}"))
        .env("TIDEWATER_BUS__KIND", "kinesis")
        .env("TIDEWATER_BUS__KINESIS__STREAM", "hc")
        .env("TIDEWATER_BUS__KINESIS__LEASE_TABLE", "hc-leases")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in peers::aws_env(&endpoint) {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let url = format!("http://127.0.0.1:{admin}/readyz");
    let deadline = Instant::now() + Duration::from_secs(30);
    let out = loop {
        let out = healthcheck(&["--url", &url], &[]);
        if stderr(&out).contains("not ready") {
            break out;
        }
        assert!(
            Instant::now() < deadline,
            "never saw 'not ready': {}",
            stderr(&out)
        );
        assert!(child.try_wait().unwrap().is_none(), "processor exited");
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_one_line_failure(&out, "not ready: processor");
    assert!(stderr(&out).contains("HTTP 503"), "{}", stderr(&out));
    drop(silent);
}

#[test]
fn nothing_listening_or_nothing_answering_fails_quickly() {
    let port = free_port();
    let started = Instant::now();
    let out = healthcheck(
        &[],
        &[("TIDEWATER_ADMIN__ADDR", format!("127.0.0.1:{port}"))],
    );
    assert_one_line_failure(&out, "nothing listens");
    assert!(started.elapsed() < Duration::from_secs(2));

    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/readyz", silent.local_addr().unwrap());
    let started = Instant::now();
    let out = healthcheck(&["--url", &url, "--timeout", "500ms"], &[]);
    let took = started.elapsed();
    assert_one_line_failure(&out, "timed out");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "took {took:?}"
    );
    // The default deadline is short too (3 s), well inside ECS's 5 s check timeout.
    let started = Instant::now();
    assert_one_line_failure(&healthcheck(&["--url", &url], &[]), "timed out");
    assert!(started.elapsed() < Duration::from_secs(5));

    assert_one_line_failure(
        &healthcheck(&["--url", "https://127.0.0.1:1/readyz"], &[]),
        "not an http:// URL",
    );
    // A configuration it cannot read is exit 1 too (Docker reserves 2).
    assert_one_line_failure(
        &healthcheck(&[], &[("TIDEWATER_BUS__KIND", "carrier-pigeon".into())]),
        "cannot read the configuration",
    );
}
