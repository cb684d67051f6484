//! The HTTP side: an `elasticsearch` client with the configured auth and TLS, index template
//! reads and writes, and `_bulk` as the delivery engine's [`Service`]: documents cut into
//! requests by `bulk.max_bytes` and `bulk.max_actions`, one request per call, its answer read
//! by `classify.rs`. Thin: decisions live in `classify.rs` and `template.rs`, retries in the
//! engine (the `elasticsearch` crate's transport never retries on its own).

use std::borrow::Borrow;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::headers::{HeaderMap, HeaderValue, CONTENT_TYPE, RETRY_AFTER};
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::http::{Method, StatusCode, Url};
use elasticsearch::Elasticsearch;
use serde_json::Value;

use super::classify::{self, excerpt, ItemResult, Reply};
use super::config::{AuthKind, ElasticsearchSinkConfig};
use super::request::{self, BulkItem};
use crate::delivery::{Answer, Service};
use crate::sinks::sigv4::SigV4;

/// The sink's name in the engine's metrics, logs, dead letters and `/readyz`.
pub const NAME: &str = "elasticsearch";

pub struct EsService {
    client: Elasticsearch,
    base: Url,
    sigv4: Option<SigV4>,
    max_bytes: usize,
    max_actions: usize,
}

/// A document as the engine carries it: its encoded `create` action, and what the cluster last
/// told about it. The engine gives [`Service::describe`] only the item, and a dead letter
/// keeps the cluster's status and error, so the document remembers them.
#[derive(Debug)]
pub struct Doc {
    pub bulk: BulkItem,
    told: Mutex<Option<(ItemResult, DateTime<Utc>)>>,
}

impl Doc {
    pub fn new(bulk: BulkItem) -> Doc {
        Doc {
            bulk,
            told: Mutex::new(None),
        }
    }

    fn tell(&self, result: ItemResult, at: DateTime<Utc>) {
        *self.told.lock().unwrap_or_else(|p| p.into_inner()) = Some((result, at));
    }

    /// The cluster's last word on this document and when; fixed on first read when it never
    /// answered, so the dead-letter file and the dead-letter index get the same line.
    pub fn told(&self) -> (ItemResult, DateTime<Utc>) {
        self.told
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(|| {
                (
                    ItemResult {
                        status: 0,
                        error: None,
                    },
                    Utc::now(),
                )
            })
            .clone()
    }
}

impl Borrow<BulkItem> for Doc {
    fn borrow(&self) -> &BulkItem {
        &self.bulk
    }
}

impl EsService {
    pub fn new(config: &ElasticsearchSinkConfig) -> anyhow::Result<EsService> {
        let base = Url::parse(&config.url)
            .map_err(|e| anyhow::anyhow!("sinks.elasticsearch.url {:?}: {e}", config.url))?;
        let mut transport = TransportBuilder::new(SingleNodeConnectionPool::new(base.clone()))
            .timeout(config.request_timeout)
            .enable_meta_header(false);
        let a = &config.auth;
        match a.kind {
            AuthKind::None | AuthKind::AwsSigv4 => {}
            AuthKind::Basic => {
                transport =
                    transport.auth(Credentials::Basic(a.username.clone(), a.password.clone()))
            }
            AuthKind::ApiKey => {
                transport = transport.auth(Credentials::EncodedApiKey(a.api_key.clone()))
            }
        }
        if let Some(path) = &config.tls.ca_file {
            let pem = std::fs::read(path).map_err(|e| {
                anyhow::anyhow!("sinks.elasticsearch.tls.ca_file {}: {e}", path.display())
            })?;
            let ca = Certificate::from_pem(&pem).map_err(|e| {
                anyhow::anyhow!(
                    "sinks.elasticsearch.tls.ca_file {}: not PEM certificates: {e}",
                    path.display()
                )
            })?;
            transport = transport.cert_validation(CertificateValidation::Full(ca));
        }
        let sigv4 = (a.kind == AuthKind::AwsSigv4).then(|| SigV4::new(&a.aws_service));
        Ok(EsService {
            client: Elasticsearch::new(transport.build()?),
            base: with_trailing_slash(base),
            sigv4,
            max_bytes: config.bulk.max_bytes.as_u64() as usize,
            max_actions: config.bulk.max_actions,
        })
    }

    /// One request; `Err` only when it did not get an answer.
    async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        content_type: &'static str,
    ) -> Result<(StatusCode, HeaderMap, Bytes), elasticsearch::Error> {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        if let Some(signer) = &self.sigv4 {
            let url = self.base.join(path.trim_start_matches('/'))?;
            let method_name = match method {
                Method::Get => "GET",
                Method::Put => "PUT",
                Method::Post => "POST",
                Method::Head => "HEAD",
                Method::Delete => "DELETE",
            };
            let signed = signer
                .headers(method_name, &url, body.as_deref().unwrap_or_default())
                .await
                .map_err(|e| elasticsearch::Error::from(std::io::Error::other(e.to_string())))?;
            headers.extend(signed);
        }
        let response = self
            .client
            .send(method, path, headers, None::<&()>, body, None)
            .await?;
        let status = response.status_code();
        let headers = response.headers().clone();
        let bytes = response.bytes().await?;
        Ok((status, headers, bytes))
    }

    /// The template installed under `name`, if any.
    pub async fn template(&self, name: &str) -> anyhow::Result<Option<Value>> {
        let (status, _, body) = self
            .request(
                Method::Get,
                &format!("/_index_template/{name}"),
                None,
                "application/json",
            )
            .await?;
        match status.as_u16() {
            404 => Ok(None),
            200 => {
                let v: Value = serde_json::from_slice(&body)?;
                Ok(v["index_templates"]
                    .as_array()
                    .and_then(|all| all.iter().find(|t| t["name"] == name))
                    .map(|t| t["index_template"].clone()))
            }
            s => anyhow::bail!("GET _index_template/{name}: {s} {}", excerpt(&body)),
        }
    }

    pub async fn put_template(&self, name: &str, template: &Value) -> anyhow::Result<()> {
        let (status, _, body) = self
            .request(
                Method::Put,
                &format!("/_index_template/{name}"),
                Some(serde_json::to_vec(template)?.into()),
                "application/json",
            )
            .await?;
        if !status.is_success() {
            anyhow::bail!("PUT _index_template/{name}: {status} {}", excerpt(&body));
        }
        Ok(())
    }

    /// Adds `mappings` to the existing `index`; `false` when there is no such index.
    pub async fn put_mapping(&self, index: &str, mappings: &Value) -> anyhow::Result<bool> {
        let (status, _, body) = self
            .request(
                Method::Put,
                &format!("/{index}/_mapping"),
                Some(serde_json::to_vec(mappings)?.into()),
                "application/json",
            )
            .await?;
        match status.as_u16() {
            404 => Ok(false),
            _ if status.is_success() => Ok(true),
            _ => anyhow::bail!("PUT {index}/_mapping: {status} {}", excerpt(&body)),
        }
    }
}

/// The URL the crate sends to is its base with a trailing slash, joined with the path: the
/// signature must cover that same URL.
fn with_trailing_slash(mut url: Url) -> Url {
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    url
}

/// Reads the `reply` to a `_bulk` of `docs` (`bytes` long) for the engine; each document
/// remembers what it was told.
pub fn answer(docs: &[Doc], reply: Reply, bytes: usize) -> Answer {
    let now = Utc::now();
    let reading = classify::read(reply, docs.len(), bytes, now);
    for (doc, told) in docs.iter().zip(reading.told) {
        doc.tell(told, now);
    }
    reading.answer
}

#[async_trait]
impl Service for EsService {
    type Item = Doc;

    fn name(&self) -> &'static str {
        NAME
    }

    fn calls(&self, docs: Vec<Doc>) -> Vec<Vec<Doc>> {
        request::chunks(docs.into_iter(), self.max_bytes, self.max_actions).collect()
    }

    async fn call(&self, docs: &[Doc]) -> Answer {
        let body = request::body(docs.iter().map(|d| &d.bulk));
        let bytes = body.len();
        metrics::counter!("tidewater_elasticsearch_bulk_bytes_total").increment(bytes as u64);
        let response = self
            .request(Method::Post, "/_bulk", Some(body), "application/x-ndjson")
            .await;
        let error;
        let reply = match &response {
            Ok((status, headers, body)) => Reply::Answered {
                status: status.as_u16(),
                retry_after: headers.get(RETRY_AFTER).and_then(|v| v.to_str().ok()),
                body,
            },
            Err(e) => {
                error = e.to_string();
                Reply::Unreachable {
                    timeout: e.is_timeout(),
                    error: &error,
                }
            }
        };
        answer(docs, reply, bytes)
    }

    fn describe(&self, doc: &Doc) -> Value {
        super::dead_letter::record(doc)
    }
}
