//! The collector's listeners. Each one decodes its protocol and calls [`crate::ingest::Ingest`].

pub mod auth;
pub mod connections;
pub mod grpc;
pub mod http;
pub mod serve;
pub mod tls;
pub mod xray_udp;

/// What the gRPC and HTTP listeners share beyond the configuration: the TLS acceptor (one,
/// so a reloaded certificate reaches both) and the accepted credentials.
#[derive(Clone, Default)]
pub struct Listener {
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub auth: Option<auth::Auth>,
}

impl Listener {
    /// Loads the certificates and credentials, and refuses to expose an unprotected listener
    /// beyond loopback unless `allow_insecure_non_loopback` says so.
    pub fn new(
        config: &crate::CollectorConfig,
        stop: tokio_util::sync::CancellationToken,
    ) -> anyhow::Result<Listener> {
        let auth = auth::Auth::new(&config.auth);
        // A client certificate required by mTLS is authentication too.
        let authenticated =
            auth.is_some() || config.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        for (key, addr) in [
            ("grpc_addr", config.grpc_addr),
            ("http_addr", config.http_addr),
        ] {
            if addr.ip().is_loopback() || (config.tls.is_some() && authenticated) {
                continue;
            }
            let missing = match (config.tls.is_some(), authenticated) {
                (false, false) => "neither TLS nor authentication",
                (false, true) => "no TLS (credentials would cross the network in clear)",
                _ => "no authentication (anyone who reaches it can publish)",
            };
            anyhow::ensure!(
                config.allow_insecure_non_loopback,
                "collector.{key} = {addr} is beyond loopback with {missing}: configure \
                 collector.tls and collector.auth, or set collector.allow_insecure_non_loopback = true"
            );
            tracing::warn!(%addr, missing, "listening beyond loopback unprotected (collector.allow_insecure_non_loopback)");
        }
        let tls = match &config.tls {
            Some(tls) => Some(tls::acceptor(tls, stop)?),
            None => None,
        };
        Ok(Listener { tls, auth })
    }
}
