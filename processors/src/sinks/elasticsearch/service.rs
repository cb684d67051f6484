//! The HTTP side: an `elasticsearch` client with the configured auth and TLS, `_bulk` with
//! item results parsed, and index template reads and writes. Thin: decisions live in
//! `retry.rs` and `template.rs`.

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::Bytes;
use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::headers::{HeaderMap, HeaderValue, CONTENT_TYPE};
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::http::{Method, StatusCode, Url};
use elasticsearch::Elasticsearch;
use serde::Deserialize;
use serde_json::Value;

use super::config::{AuthKind, ElasticsearchSinkConfig};
use super::retry::{BulkSender, ItemResult, SendError};
use super::sigv4::SigV4;

pub struct EsService {
    client: Elasticsearch,
    base: Url,
    sigv4: Option<SigV4>,
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
        })
    }

    /// One request; `Err` only when it did not get an answer.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Bytes>,
        content_type: &'static str,
    ) -> Result<(StatusCode, Bytes), elasticsearch::Error> {
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
        let bytes = response.bytes().await?;
        Ok((status, bytes))
    }

    /// The template installed under `name`, if any.
    pub async fn template(&self, name: &str) -> anyhow::Result<Option<Value>> {
        let (status, body) = self
            .call(
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
        let (status, body) = self
            .call(
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
}

/// The URL the crate sends to is its base with a trailing slash, joined with the path: the
/// signature must cover that same URL.
fn with_trailing_slash(mut url: Url) -> Url {
    if !url.path().ends_with('/') {
        url.set_path(&format!("{}/", url.path()));
    }
    url
}

#[derive(Deserialize)]
struct BulkResponse {
    items: Vec<BTreeMap<String, ItemResult>>,
}

#[async_trait]
impl BulkSender for EsService {
    async fn send_bulk(&self, body: Bytes, count: usize) -> Result<Vec<ItemResult>, SendError> {
        let bytes = body.len() as u64;
        let answer = self
            .call(Method::Post, "/_bulk", Some(body), "application/x-ndjson")
            .await;
        let outcome = match &answer {
            Ok((status, _)) if status.is_success() => "ok",
            Ok((status, _)) if status.as_u16() == 413 => "too_large",
            Ok((status, _)) if retryable_status(*status) => "retryable",
            Ok(_) => "failed",
            Err(_) => "unreachable",
        };
        metrics::counter!("tidewater_elasticsearch_bulk_requests_total", "outcome" => outcome)
            .increment(1);
        metrics::counter!("tidewater_elasticsearch_bulk_bytes_total").increment(bytes);
        let (status, response) = answer.map_err(|e| SendError::Retryable(e.to_string()))?;
        match status.as_u16() {
            200..=299 => {
                let parsed: BulkResponse = serde_json::from_slice(&response).map_err(|e| {
                    SendError::Fatal(format!(
                        "unreadable _bulk response: {e}: {}",
                        excerpt(&response)
                    ))
                })?;
                let results: Vec<ItemResult> = parsed
                    .items
                    .into_iter()
                    .filter_map(|op| op.into_values().next())
                    .collect();
                if results.len() != count {
                    return Err(SendError::Fatal(format!(
                        "_bulk answered {} items for {count}",
                        results.len()
                    )));
                }
                Ok(results)
            }
            413 => Err(SendError::TooLarge),
            _ if retryable_status(status) => Err(SendError::Retryable(format!(
                "{status} {}",
                excerpt(&response)
            ))),
            _ => Err(SendError::Fatal(format!("{status} {}", excerpt(&response)))),
        }
    }
}

fn retryable_status(status: StatusCode) -> bool {
    status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error()
}

/// The start of an error body, for messages.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(512)]);
    text.trim().to_string()
}
