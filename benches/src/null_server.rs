//! A server that accepts OTLP (gRPC and HTTP) and events without decoding them and answers OK
//! at once: the load generator's own ceiling, against which the collector is measured.
//!
//! It also stands in for the services the processor's sinks call, so that the processor's
//! drain into them measures the processor (translation, documents, the client) rather than a
//! service: X-Ray's `PutTraceSegments` (nothing left unprocessed), and Elasticsearch's `_bulk`
//! (every document created) and the index-template calls the sink makes at start.
//!
//! It reads every request body to its end (so the client's bytes really travel), and sets
//! TCP_NODELAY on accepted connections as the collector does: without it each answer waits
//! for the client's delayed ACK, about 40 ms.

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

type Body = BoxBody<Bytes, Infallible>;

/// Serves on `listener` until `stop` completes.
pub async fn serve(listener: TcpListener, stop: impl Future<Output = ()>) -> std::io::Result<()> {
    let builder = auto::Builder::new(TokioExecutor::new());
    tokio::pin!(stop);
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => accepted?,
            _ = &mut stop => return Ok(()),
        };
        stream.set_nodelay(true)?;
        let builder = builder.clone();
        tokio::spawn(async move {
            // A client going away mid-request is not the null server's business.
            let _ = builder
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}

async fn answer(request: Request<Incoming>) -> Result<Response<Body>, hyper::Error> {
    let grpc = request
        .headers()
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let path = request.uri().path().to_string();
    let method = request.method().clone();
    let mut body = request.into_body();
    // Lines are counted for `_bulk`, whose answer needs one item per action.
    let mut lines = Lines::default();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            lines.add(&data);
        }
    }
    let json = |body: Bytes| {
        Response::builder()
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(body).boxed())
    };
    let response = if grpc {
        // One empty message (uncompressed flag, zero length), then grpc-status 0 in trailers:
        // an empty message is a valid Export/Publish response.
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::from_static("0"));
        let frames = futures::stream::iter([
            Ok::<_, Infallible>(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0]))),
            Ok(Frame::trailers(trailers)),
        ]);
        Response::builder()
            .header(CONTENT_TYPE, "application/grpc")
            .body(BodyExt::boxed(StreamBody::new(frames)))
    } else if path == "/v1/events" {
        json(Bytes::from_static(br#"{"rejected":[]}"#))
    } else if path == "/TraceSegments" {
        json(Bytes::from_static(br#"{"UnprocessedTraceSegments":[]}"#))
    } else if path == "/_bulk" || path.ends_with("/_bulk") {
        json(bulk_answer(lines.count() / 2).into())
    } else if path.starts_with("/_index_template/") {
        // No template there yet (so the sink installs its own), and any install succeeds.
        if method == Method::GET {
            json(Bytes::from_static(br#"{"index_templates":[]}"#))
        } else {
            json(Bytes::from_static(br#"{"acknowledged":true}"#))
        }
    } else {
        // An empty protobuf body is an Export*ServiceResponse with no partial success.
        Response::builder()
            .header(CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::new()).boxed())
    };
    Ok(response.expect("static headers are valid"))
}

/// The answer to a `_bulk` of `actions` `create` actions (an action line and a document line
/// each): all created.
pub fn bulk_answer(actions: usize) -> String {
    const ITEM: &str = r#"{"create":{"status":201}}"#;
    let mut answer = String::with_capacity(40 + actions * (ITEM.len() + 1));
    answer.push_str(r#"{"took":0,"errors":false,"items":["#);
    for i in 0..actions {
        if i > 0 {
            answer.push(',');
        }
        answer.push_str(ITEM);
    }
    answer.push_str("]}");
    answer
}

/// Counts the lines of a body that arrives in pieces; a last line without its newline counts.
#[derive(Default)]
struct Lines {
    newlines: usize,
    open: bool,
}

impl Lines {
    fn add(&mut self, data: &[u8]) {
        if let Some(&last) = data.last() {
            self.newlines += data.iter().filter(|&&b| b == b'\n').count();
            self.open = last != b'\n';
        }
    }

    fn count(&self) -> usize {
        self.newlines + usize::from(self.open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_lines_across_pieces() {
        let mut lines = Lines::default();
        for piece in [
            &b"{\"create\":{}}\n{\"a\""[..],
            b":1}\n{\"create\":{}}",
            b"\n{}",
        ] {
            lines.add(piece);
        }
        assert_eq!(lines.count(), 4);
        lines.add(b"");
        assert_eq!(lines.count(), 4);
        assert_eq!(Lines::default().count(), 0);
    }

    #[test]
    fn bulk_answers_one_created_item_per_action() {
        let v: serde_json::Value = serde_json::from_str(&bulk_answer(3)).unwrap();
        assert_eq!(v["errors"], false);
        assert_eq!(v["items"].as_array().unwrap().len(), 3);
        assert_eq!(v["items"][2]["create"]["status"], 201);
        let none: serde_json::Value = serde_json::from_str(&bulk_answer(0)).unwrap();
        assert_eq!(none["items"], serde_json::json!([]));
    }
}
