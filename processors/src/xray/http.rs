//! `http` block from current (`http.request.method`, `url.full`, `server.address`,
//! ...) and legacy (`http.method`, `http.url`, `net.host.name`, ...) semantic
//! conventions.

use opentelemetry_proto::tonic::trace::v1::span::SpanKind;

use super::attrs::Attrs;
use super::segment::{Http, HttpRequest, HttpResponse};

const METHOD: &[&str] = &["http.request.method", "http.method"];
const STATUS: &[&str] = &["http.response.status_code", "http.status_code"];
const FULL_URL: &[&str] = &["url.full", "http.url"];
const SCHEME: &[&str] = &["url.scheme", "http.scheme"];
const SERVER_HOST: &[&str] = &["server.address", "net.host.name", "http.host"];
const SERVER_PORT: &[&str] = &["server.port", "net.host.port"];
const CLIENT_HOST: &[&str] = &["server.address", "net.peer.name", "http.host"];
const CLIENT_PORT: &[&str] = &["server.port", "net.peer.port"];
const USER_AGENT: &[&str] = &["user_agent.original", "http.user_agent"];
/// The originating client (possibly taken from `X-Forwarded-For`).
const CLIENT_IP: &[&str] = &["client.address", "http.client_ip"];
/// The immediate peer of a server span (used when the client address is unknown).
const PEER_IP: &[&str] = &["network.peer.address", "net.sock.peer.addr", "net.peer.ip"];
const CONTENT_LENGTH: &[&str] = &["http.response.body.size", "http.response_content_length"];

/// Hosts named by a CLIENT-side span (for naming the subsegment).
pub(crate) const PEER_HOST: &[&str] = CLIENT_HOST;

/// Builds the `http` block; returns it with the HTTP status code (for
/// error/fault/throttle). Spans without a method, status code or full url are not
/// HTTP spans and get no block.
pub(crate) fn make_http(a: &mut Attrs<'_>, kind: SpanKind) -> (Option<Http>, Option<i64>) {
    let is_http = [METHOD, STATUS, FULL_URL]
        .iter()
        .any(|keys| keys.iter().any(|k| a.has(k)));
    if !is_http {
        return (None, None);
    }
    let server = kind == SpanKind::Server;
    let (host_keys, port_keys) = if server {
        (SERVER_HOST, SERVER_PORT)
    } else {
        (CLIENT_HOST, CLIENT_PORT)
    };

    let method = a.take_string(METHOD);
    let status = a.take_int(STATUS);
    let full = a.take_string(FULL_URL);
    // The url parts are consumed even when `url.full` is present: they are
    // redundant with it.
    let scheme = a.take_string(SCHEME);
    let host = a.take_string(host_keys);
    let port = a.take_int(port_keys);
    let path = a.take_string(&["url.path"]);
    let query = a.take_string(&["url.query"]);
    let legacy_target = a.take_string(&["http.target"]);
    let target = match path {
        Some(p) => Some(match query {
            Some(q) => format!("{p}?{q}"),
            None => p,
        }),
        None => legacy_target,
    };
    let url = match full {
        Some(u) => Some(u),
        None => {
            let target = match target {
                Some(t) => Some(t),
                None => a.take_string(&["http.route"]),
            };
            build_url(scheme.as_deref(), host.as_deref(), port, target.as_deref())
        }
    };

    let user_agent = a.take_string(USER_AGENT);
    let client_ip =
        a.take_string(CLIENT_IP)
            .or_else(|| if server { a.take_string(PEER_IP) } else { None });
    let content_length = a.take_int(CONTENT_LENGTH);

    let request = HttpRequest {
        method,
        url,
        user_agent,
        client_ip,
        x_forwarded_for: None,
    };
    let response = HttpResponse {
        status,
        content_length,
    };
    let http = Http {
        request: (request != HttpRequest::default()).then_some(request),
        response: (response != HttpResponse::default()).then_some(response),
    };
    ((http != Http::default()).then_some(http), status)
}

fn build_url(
    scheme: Option<&str>,
    host: Option<&str>,
    port: Option<i64>,
    target: Option<&str>,
) -> Option<String> {
    let target = target.unwrap_or("");
    let Some(host) = host else {
        return (!target.is_empty()).then(|| target.to_string());
    };
    let scheme = scheme.unwrap_or("http");
    let host = if host.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let has_port = host
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok());
    let port = match port {
        Some(80) if scheme == "http" => String::new(),
        Some(443) if scheme == "https" => String::new(),
        Some(p) if !has_port => format!(":{p}"),
        _ => String::new(),
    };
    let slash = if target.is_empty() || target.starts_with('/') {
        ""
    } else {
        "/"
    };
    Some(format!("{scheme}://{host}{port}{slash}{target}"))
}

/// Host of an absolute URL, without userinfo, port or IPv6 brackets.
pub(crate) fn url_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next()?
    } else {
        host_port.split(':').next()?
    };
    (!host.is_empty()).then_some(host)
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn xray_url_building() {
        assert_eq!(
            build_url(Some("https"), Some("a.example"), Some(443), Some("/x?y=1")).as_deref(),
            Some("https://a.example/x?y=1")
        );
        assert_eq!(
            build_url(None, Some("a.example:8080"), Some(8080), Some("x")).as_deref(),
            Some("http://a.example:8080/x")
        );
        assert_eq!(
            build_url(None, Some("::1"), Some(8080), None).as_deref(),
            Some("http://[::1]:8080")
        );
        assert_eq!(
            build_url(None, None, None, Some("/p")).as_deref(),
            Some("/p")
        );
        assert_eq!(build_url(None, None, Some(1), None), None);
        assert_eq!(url_host("https://u:p@h.example:9/x"), Some("h.example"));
        assert_eq!(url_host("http://[::1]:80/"), Some("::1"));
        assert_eq!(url_host("/relative"), None);
    }
}
