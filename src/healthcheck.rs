//! `tidewater healthcheck`: asks a running Tidewater's admin listener whether it is ready
//! (`/readyz` by default) and exits 0 when it answers 200, or 1 with a one-line reason. It exists
//! so container health checks (ECS, whose checks run inside the container, and the image's
//! Docker `HEALTHCHECK`) need no curl or shell in the image. Plain HTTP/1.1 over a blocking
//! socket with a short deadline: no async runtime, nothing to install.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::config::Config;

/// The most of an answer read: a status line, headers and a short body.
const MAX_RESPONSE: u64 = 64 * 1024;
/// The reason printed is cut to this many characters, so it stays one readable line.
const MAX_REASON: usize = 300;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// What to ask (plain http only). Default: `/readyz` on the configured admin listener
    /// (`admin.addr`, or TIDEWATER_ADMIN__ADDR), with an unspecified address (0.0.0.0, ::)
    /// asked on loopback.
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// Give up after this long in all (connect, send, answer), e.g. `2s`, `500ms`.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = parse_duration)]
    pub timeout: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime_serde::re::humantime::parse_duration(s).map_err(|e| e.to_string())
}

/// Runs the check: 0 when ready, 1 otherwise (Docker reserves 2, so nothing else is used),
/// with one line on stdout (ready) or stderr (the reason).
pub fn main(args: &Args, config_file: Option<&Path>) -> ExitCode {
    let url = match &args.url {
        Some(url) => url.clone(),
        None => match Config::load(config_file, std::env::vars()) {
            Ok(config) => default_url(config.admin.addr),
            Err(e) => {
                let reason = one_line(&format!("cannot read the configuration: {e:#}"));
                eprintln!("tidewater healthcheck: {reason}");
                return ExitCode::FAILURE;
            }
        },
    };
    match check(&url, args.timeout) {
        Ok(()) => {
            println!("{url}: ready");
            ExitCode::SUCCESS
        }
        Err(reason) => {
            eprintln!("tidewater healthcheck: {url}: {}", one_line(&reason));
            ExitCode::FAILURE
        }
    }
}

/// `/readyz` on the admin listener, asked on loopback when it binds every interface.
pub fn default_url(admin: SocketAddr) -> String {
    let ip = match admin.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}/readyz", SocketAddr::new(ip, admin.port()))
}

/// `Ok` when `url` answers 200 within `timeout`; otherwise why not.
pub fn check(url: &str, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let target = Target::parse(url)?;
    let mut stream = connect(&target, deadline)?;
    let left = remaining(deadline)?;
    stream.set_write_timeout(Some(left)).map_err(io)?;
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: tidewater-healthcheck\r\nAccept: */*\r\nConnection: close\r\n\r\n",
        target.path, target.host_header
    );
    stream
        .write_all(request.as_bytes())
        .map_err(|e| timed_out_or(e, "cannot send the request"))?;
    let mut response = Vec::new();
    let mut limited = (&mut stream).take(MAX_RESPONSE);
    let mut buf = [0u8; 4096];
    loop {
        stream_timeout(limited.get_ref(), deadline)?;
        match limited.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => {
                // A complete head is enough to judge; a reset after it changes nothing.
                if head_end(&response).is_some() && !response.is_empty() {
                    break;
                }
                return Err(timed_out_or(e, "no answer"));
            }
        }
    }
    let (status, body) = parse_response(&response)?;
    if status == 200 {
        return Ok(());
    }
    let body = body.trim();
    Err(if body.is_empty() {
        format!("answered {status}")
    } else {
        format!("{body} (HTTP {status})")
    })
}

#[derive(Debug)]
struct Target {
    /// `host:port` as written, for the `Host` header.
    host_header: String,
    host: String,
    port: u16,
    path: String,
}

impl Target {
    fn parse(url: &str) -> Result<Target, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("{url:?} is not an http:// URL (the admin listener speaks plain HTTP)")
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.is_empty() || authority.contains('@') {
            return Err(format!("{url:?} has no usable host"));
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{url:?}: unclosed [ in the host"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p,
                None if after.is_empty() => "80",
                None => return Err(format!("{url:?}: bad port")),
            };
            (host.to_string(), port)
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p),
                None => (authority.to_string(), "80"),
            }
        };
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{url:?}: bad port {port:?}"))?;
        Ok(Target {
            host_header: authority.to_string(),
            host,
            port,
            path: path.to_string(),
        })
    }
}

fn connect(target: &Target, deadline: Instant) -> Result<TcpStream, String> {
    let addrs: Vec<SocketAddr> = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", target.host))?
        .collect();
    let mut last = format!("{} resolves to no address", target.host);
    for addr in addrs {
        let left = remaining(deadline)?;
        match TcpStream::connect_timeout(&addr, left) {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                last = format!("nothing listens on {addr} (connection refused)");
            }
            Err(e) => last = timed_out_or(e, &format!("cannot connect to {addr}")),
        }
    }
    Err(last)
}

fn remaining(deadline: Instant) -> Result<Duration, String> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err("timed out".into())
    } else {
        Ok(left)
    }
}

fn stream_timeout(stream: &&mut TcpStream, deadline: Instant) -> Result<(), String> {
    let left = remaining(deadline)?;
    stream.set_read_timeout(Some(left)).map_err(io)
}

fn timed_out_or(e: std::io::Error, what: &str) -> String {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => "timed out".into(),
        _ => format!("{what}: {e}"),
    }
}

fn io(e: std::io::Error) -> String {
    e.to_string()
}

fn head_end(response: &[u8]) -> Option<usize> {
    response.windows(4).position(|w| w == b"\r\n\r\n")
}

/// The status code and the body (de-chunked when sent chunked).
fn parse_response(response: &[u8]) -> Result<(u16, String), String> {
    if response.is_empty() {
        return Err("the connection closed without an answer".into());
    }
    let end = head_end(response).ok_or("the answer is not HTTP (no complete head)")?;
    let head = String::from_utf8_lossy(&response[..end]);
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let status = match (parts.next(), parts.next()) {
        (Some(v), Some(code)) if v.starts_with("HTTP/") => code
            .parse::<u16>()
            .map_err(|_| format!("bad status line {status_line:?}"))?,
        _ => return Err(format!("the answer is not HTTP: {status_line:?}")),
    };
    let chunked = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding")
                && v.to_ascii_lowercase().contains("chunked")
        })
    });
    let raw = &response[end + 4..];
    let body = if chunked { dechunk(raw) } else { raw.to_vec() };
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&raw[..eol])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next()?.trim(), 16).ok());
        let Some(size) = size.filter(|s| *s > 0) else {
            break;
        };
        let start = eol + 2;
        let stop = (start + size).min(raw.len());
        out.extend_from_slice(&raw[start..stop]);
        raw = raw.get(stop + 2..).unwrap_or_default();
    }
    out
}

/// Newlines and runs of spaces folded, cut to [`MAX_REASON`] characters.
fn one_line(s: &str) -> String {
    let folded = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if folded.chars().count() <= MAX_REASON {
        folded
    } else {
        let cut: String = folded.chars().take(MAX_REASON).collect();
        format!("{cut}...")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_url_asks_loopback_for_an_unspecified_address() {
        assert_eq!(
            default_url("0.0.0.0:8888".parse().unwrap()),
            "http://127.0.0.1:8888/readyz"
        );
        assert_eq!(
            default_url("[::]:9000".parse().unwrap()),
            "http://[::1]:9000/readyz"
        );
        assert_eq!(
            default_url("10.0.0.5:8888".parse().unwrap()),
            "http://10.0.0.5:8888/readyz"
        );
    }

    #[test]
    fn urls_are_parsed_or_refused_with_a_reason() {
        let t = Target::parse("http://[::1]:8888/readyz").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 8888, "/readyz")
        );
        let t = Target::parse("http://localhost").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("localhost", 80, "/")
        );
        assert!(Target::parse("https://x/readyz")
            .unwrap_err()
            .contains("http://"));
        assert!(Target::parse("http://x:port/")
            .unwrap_err()
            .contains("bad port"));
        assert!(Target::parse("http:///readyz").is_err());
    }

    #[test]
    fn answers_are_read_plain_or_chunked() {
        let plain =
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 22\r\n\r\nnot ready: processor\n";
        assert_eq!(
            parse_response(plain).unwrap(),
            (503, "not ready: processor\n".to_string())
        );
        let chunked =
            b"HTTP/1.1 503 x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nnot r\r\n6\r\neady\r\n\r\n0\r\n\r\n";
        assert_eq!(parse_response(chunked).unwrap().1, "not ready\r\n");
        assert!(parse_response(b"").is_err());
        assert!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n").is_err());
    }

    #[test]
    fn reasons_stay_on_one_line() {
        assert_eq!(
            one_line("not ready:\n  xray  (HTTP 503)\n"),
            "not ready: xray (HTTP 503)"
        );
        assert!(one_line(&"x ".repeat(400)).len() <= MAX_REASON + 3);
    }
}
