//! A server that accepts OTLP (gRPC and HTTP) and events without decoding them and answers OK
//! at once: the load generator's own ceiling, against which the collector is measured.
//!
//! It reads every request body to its end (so the client's bytes really travel), and sets
//! TCP_NODELAY on accepted connections as the collector does: without it each answer waits
//! for the client's delayed ACK, about 40 ms.

use std::convert::Infallible;
use std::future::Future;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, Request, Response};
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
    let events = request.uri().path() == "/v1/events";
    let mut body = request.into_body();
    while let Some(frame) = body.frame().await {
        frame?;
    }
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
    } else if events {
        Response::builder()
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from_static(br#"{"rejected":[]}"#)).boxed())
    } else {
        // An empty protobuf body is an Export*ServiceResponse with no partial success.
        Response::builder()
            .header(CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::new()).boxed())
    };
    Ok(response.expect("static headers are valid"))
}
