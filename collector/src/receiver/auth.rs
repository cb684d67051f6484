//! Authentication of clients on the gRPC and HTTP listeners, checked on the request's headers
//! before its body is read: a client without credentials costs a header parse, not a
//! 16 MiB upload.
//!
//! Credentials are what OTLP exporters and analytics SDKs already send: `Authorization:
//! Bearer <token>` (the exporters' `headers` setting) or `Authorization: Basic` (write keys).
//! A refusal is the protocol's own: gRPC `UNAUTHENTICATED`, HTTP 401 with `WWW-Authenticate`.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use base64::Engine;
use futures::future::{ready, Either, Ready};
use http::{HeaderMap, Request, Response};
use subtle::ConstantTimeEq;

use crate::config::AuthConfig;

/// The accepted credentials: each a scheme (lowercase) and its value.
#[derive(Clone)]
pub struct Auth {
    accepted: Arc<Vec<(&'static str, Vec<u8>)>>,
}

impl Auth {
    /// `None` when no credential is configured (no authentication).
    pub fn new(config: &AuthConfig) -> Option<Auth> {
        if !config.is_enabled() {
            return None;
        }
        let bearer = config
            .bearer_tokens
            .iter()
            .map(|t| ("bearer", t.0.as_bytes().to_vec()));
        let basic = config.basic.iter().map(|pair| {
            let encoded = base64::engine::general_purpose::STANDARD.encode(pair.0.as_bytes());
            ("basic", encoded.into_bytes())
        });
        Some(Auth {
            accepted: Arc::new(bearer.chain(basic).collect()),
        })
    }

    /// Why the request is refused, if it is. The reason never echoes what the client sent.
    pub fn check(&self, headers: &HeaderMap) -> Result<(), &'static str> {
        let value = headers
            .get(http::header::AUTHORIZATION)
            .ok_or("missing Authorization header")?
            .as_bytes();
        let (scheme, credential) = match value.iter().position(|b| *b == b' ') {
            Some(i) => (&value[..i], value[i + 1..].trim_ascii()),
            None => return Err("Authorization header is not `<scheme> <credentials>`"),
        };
        let scheme = scheme.to_ascii_lowercase();
        // Every accepted credential is compared, in constant time, so the answer's timing
        // tells nothing about how close a guess was.
        let mut matched = 0u8;
        for (accepted_scheme, accepted) in self.accepted.iter() {
            let same_scheme = scheme.as_slice() == accepted_scheme.as_bytes();
            matched |= u8::from(same_scheme) & accepted.as_slice().ct_eq(credential).unwrap_u8();
        }
        if matched == 1 {
            Ok(())
        } else {
            Err("credentials not accepted")
        }
    }
}

/// A service that only lets authenticated requests through to `inner`; `refuse` builds the
/// protocol's answer to the others.
#[derive(Clone)]
pub struct Authenticated<S, F> {
    pub inner: S,
    pub auth: Option<Auth>,
    pub refuse: F,
    /// Labels `tidewater_collector_unauthenticated_requests_total{listener}`.
    pub listener: &'static str,
}

impl<S, F, B, R> tower::Service<Request<B>> for Authenticated<S, F>
where
    S: tower::Service<Request<B>, Response = Response<R>, Error = Infallible>,
    F: Fn(&'static str) -> Response<R>,
{
    type Response = Response<R>;
    type Error = Infallible;
    type Future = Either<Ready<Result<Response<R>, Infallible>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        match self.auth.as_ref().map(|a| a.check(request.headers())) {
            None | Some(Ok(())) => Either::Right(self.inner.call(request)),
            Some(Err(why)) => {
                metrics::counter!("tidewater_collector_unauthenticated_requests_total", "listener" => self.listener).increment(1);
                tracing::debug!(
                    listener = self.listener,
                    why,
                    "request refused: not authenticated"
                );
                Either::Left(ready(Ok((self.refuse)(why))))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn headers(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        h
    }

    #[test]
    fn accepts_configured_bearer_tokens_and_basic_pairs_only() {
        let auth = Auth::new(&AuthConfig {
            bearer_tokens: vec![Secret("t0ken".into())],
            basic: vec![Secret("app:pw".into())],
        })
        .unwrap();
        assert_eq!(auth.check(&headers("Bearer t0ken")), Ok(()));
        assert_eq!(auth.check(&headers("bearer  t0ken ")), Ok(()));
        assert_eq!(auth.check(&headers("Basic YXBwOnB3")), Ok(()));
        for bad in [
            "Bearer t0ke",
            "Bearer t0kenn",
            "Basic t0ken",
            "Bearer YXBwOnB3",
            "t0ken",
        ] {
            assert!(auth.check(&headers(bad)).is_err(), "{bad}");
        }
        assert_eq!(
            auth.check(&HeaderMap::new()),
            Err("missing Authorization header")
        );
        assert!(Auth::new(&AuthConfig::default()).is_none());
    }
}
