//! TLS for the gRPC and HTTP listeners, for collectors that listen beyond loopback (a gateway,
//! a Kubernetes pod port).
//!
//! Certificates are renewed on disk by whoever issues them (cert-manager, ACM exports, a
//! cron job), and a restart to pick them up would drop every client's connection: the files
//! are checked every `reload_interval` and a changed pair is loaded for new connections (a pair
//! that does not load is logged and the previous one kept). With `client_ca` set, clients must
//! present a certificate it signed (mTLS). Both listeners advertise `h2` and `http/1.1` by
//! ALPN, since gRPC clients insist on `h2`.

use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use anyhow::Context as _;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::config::TlsConfig;

/// Builds the acceptor both listeners share, and starts watching the certificate files until
/// `stop`.
pub fn acceptor(config: &TlsConfig, stop: CancellationToken) -> anyhow::Result<TlsAcceptor> {
    // Explicit, not the process default: more than one provider is compiled into the binary
    // (the AWS SDK brings its own), and rustls then refuses to guess.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let resolver = Arc::new(Reloading {
        current: RwLock::new(Arc::new(load_pair(config, &provider)?)),
    });
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match &config.client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in read_certs(ca)? {
                roots
                    .add(cert)
                    .with_context(|| format!("collector.tls.client_ca {}", ca.display()))?;
            }
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .context("collector.tls.client_ca")?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut server = builder.with_cert_resolver(resolver.clone());
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio::spawn(watch(config.clone(), provider, resolver, stop));
    Ok(TlsAcceptor::from(Arc::new(server)))
}

/// The certificate new handshakes get.
#[derive(Debug)]
struct Reloading {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for Reloading {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().expect("not poisoned").clone())
    }
}

async fn watch(
    config: TlsConfig,
    provider: Arc<CryptoProvider>,
    resolver: Arc<Reloading>,
    stop: CancellationToken,
) {
    let stamp = |c: &TlsConfig| -> Option<(SystemTime, SystemTime)> {
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        Some((modified(&c.cert)?, modified(&c.key)?))
    };
    let mut seen = stamp(&config);
    let mut tick = tokio::time::interval(
        config
            .reload_interval
            .max(std::time::Duration::from_millis(100)),
    );
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let now = stamp(&config);
        if now == seen {
            continue;
        }
        match load_pair(&config, &provider) {
            Ok(pair) => {
                seen = now;
                *resolver.current.write().expect("not poisoned") = Arc::new(pair);
                metrics::counter!("tidewater_collector_tls_reloads_total", "outcome" => "loaded")
                    .increment(1);
                tracing::info!(cert = %config.cert.display(), "TLS certificate reloaded");
            }
            // Often a renewal caught between writing the certificate and the key: the next
            // check sees both.
            Err(e) => {
                metrics::counter!("tidewater_collector_tls_reloads_total", "outcome" => "failed")
                    .increment(1);
                tracing::warn!(error = %format!("{e:#}"), "TLS certificate changed but does not load; keeping the previous one");
            }
        }
    }
}

fn load_pair(config: &TlsConfig, provider: &CryptoProvider) -> anyhow::Result<CertifiedKey> {
    let certs = read_certs(&config.cert)?;
    let key = PrivateKeyDer::from_pem_file(&config.key).with_context(|| {
        format!(
            "collector.tls.key {}: no PEM private key",
            config.key.display()
        )
    })?;
    let signing = provider
        .key_provider
        .load_private_key(key)
        .with_context(|| format!("collector.tls.key {}", config.key.display()))?;
    let pair = CertifiedKey::new(certs, signing);
    pair.keys_match().with_context(|| {
        format!(
            "collector.tls.key {} does not match collector.tls.cert",
            config.key.display()
        )
    })?;
    Ok(pair)
}

fn read_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("{}: not PEM certificates", path.display()))?;
    anyhow::ensure!(
        !certs.is_empty(),
        "{}: no certificate in it",
        path.display()
    );
    Ok(certs)
}
