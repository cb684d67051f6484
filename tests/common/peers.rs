//! Real protocol peers for end-to-end tests, each started on a free loopback port by the test
//! that needs it and stopped when dropped. They come from the venv `scripts/test` prepares
//! (moto) or from the registries the same script installs from.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{free_port, http_get};

/// A child process serving on `port`, killed on drop.
pub struct Peer {
    child: Child,
    pub port: u16,
    pub name: &'static str,
}

impl Peer {
    /// Spawns `cmd` (which must listen on `port`) and waits until `ready(port)` holds.
    pub fn spawn(
        name: &'static str,
        mut cmd: Command,
        port: u16,
        ready: impl Fn(u16) -> bool,
    ) -> Peer {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        let mut peer = Peer { child, port, name };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready(port) {
            if let Some(status) = peer.child.try_wait().unwrap() {
                panic!("{name} exited with {status} before it was ready");
            }
            assert!(
                Instant::now() < deadline,
                "{name} not ready on port {port} after 60s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        peer
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Peer {
    /// Kills the peer now (it is also killed on drop), for a test that restarts it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// moto in server mode: Kinesis, DynamoDB, CloudWatch Logs, X-Ray... on one endpoint.
pub fn moto() -> Peer {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
    assert!(
        bin.exists(),
        "{} is missing: run ./scripts/test (it installs moto into .venv)",
        bin.display()
    );
    let port = free_port();
    let mut cmd = Command::new(bin);
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
    Peer::spawn("moto", cmd, port, |p| http_get(p, "/moto-api/").is_some())
}

/// kinesalite, the most faithful Kinesis stand-in (real sequence numbers, the service's limits,
/// split/merge and shard ends), in memory. Its CLI listens on every interface, so it is started
/// from a few lines of Node that bind loopback only. Installed by `scripts/setup-node`.
pub fn kinesalite() -> Peer {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(".peers/node");
    assert!(
        dir.join("node_modules/kinesalite").exists(),
        "{} has no kinesalite: run ./scripts/test (scripts/setup-node installs it)",
        dir.display()
    );
    let port = free_port();
    let script = "require('kinesalite')({createStreamMs: 0, deleteStreamMs: 0, updateStreamMs: 0, shardLimit: 100})\
                  .listen(Number(process.argv[1]), '127.0.0.1')";
    let mut cmd = Command::new("node");
    cmd.current_dir(&dir)
        .args(["-e", script, &port.to_string()]);
    Peer::spawn("kinesalite", cmd, port, |p| {
        std::net::TcpStream::connect(("127.0.0.1", p)).is_ok()
    })
}

/// kinesalite on a chosen `port` keeping its streams in `path` (LevelDB) instead of memory, so
/// a test can kill it and start it again on the same port with what it had stored: an outage
/// of the bus, not the loss of it.
pub fn kinesalite_at(port: u16, path: &Path) -> Peer {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(".peers/node");
    assert!(
        dir.join("node_modules/kinesalite").exists(),
        "{} has no kinesalite: run ./scripts/test (scripts/setup-node installs it)",
        dir.display()
    );
    let script = "require('kinesalite')({createStreamMs: 0, deleteStreamMs: 0, updateStreamMs: 0, shardLimit: 100, \
                  path: process.argv[2]}).listen(Number(process.argv[1]), '127.0.0.1')";
    let mut cmd = Command::new("node");
    cmd.current_dir(&dir)
        .args(["-e", script, &port.to_string()])
        .arg(path);
    Peer::spawn("kinesalite", cmd, port, |p| {
        std::net::TcpStream::connect(("127.0.0.1", p)).is_ok()
    })
}

/// Environment that points every AWS SDK client at `endpoint` with dummy credentials, for
/// `Tidewater::up(dir, &env)`; the SDKs read these through the standard configuration chain.
pub fn aws_env(endpoint: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", endpoint.to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ACCESS_KEY_ID", "testing".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "testing".to_string()),
        // No profile files or instance metadata lookups on a test machine.
        ("AWS_EC2_METADATA_DISABLED", "true".to_string()),
    ]
}

/// osmem-server: an in-memory OpenSearch-compatible server (mappings, templates, `_bulk` with
/// per-item errors, aggregations; no data streams). The PyPI package ships the binary inside
/// the module rather than in `.venv/bin`.
pub fn elasticsearch() -> Peer {
    let lib = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/lib");
    let bin = std::fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .flatten()
        .map(|python| python.path().join("site-packages/osmem_server/bin/osmem-server"))
        .find(|p| p.exists())
        .unwrap_or_else(|| {
            panic!(
                "osmem-server is missing under {}: run ./scripts/test (it installs osmem-server into .venv)",
                lib.display()
            )
        });
    let port = free_port();
    let mut cmd = Command::new(bin);
    cmd.args([
        "-addr",
        &format!("127.0.0.1:{port}"),
        "-no-stdin-watch",
        // Gone with the test process even if it dies without dropping the peer.
        "-parent-pid",
        &std::process::id().to_string(),
    ]);
    Peer::spawn("osmem-server", cmd, port, |p| {
        http_get(p, "/").is_some_and(|(code, _)| code == 200)
    })
}
