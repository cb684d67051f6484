//! AWS Signature Version 4 for sinks that speak plain HTTP to AWS endpoints rather than through
//! an `aws-sdk-*` client: Amazon OpenSearch Service (the `elasticsearch` crate has no AWS auth
//! of its own) and the X-Ray and CloudWatch Logs OTLP endpoints. Written once so both sign
//! alike: credentials and region from the standard AWS chain (or a configured region),
//! credentials cached until shortly before they expire, and each request signed with
//! `aws-sigv4` and sent with the resulting headers.

use std::time::{Duration, SystemTime};

use aws_config::BehaviorVersion;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, SignableBody, SignableRequest, SigningSettings,
};
use aws_sigv4::sign::v4;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use reqwest::Url;
use tokio::sync::{Mutex, OnceCell};

pub struct SigV4 {
    service: String,
    /// A configured region; `None` takes the chain's (`AWS_REGION`, the profile, ECS).
    region: Option<String>,
    chain: OnceCell<(SharedCredentialsProvider, String)>,
    /// The chain's providers do not cache (SDK clients cache in front of them); signing every
    /// request must not ask the container metadata endpoint every time.
    cached: Mutex<Option<Credentials>>,
}

/// Credentials this close to expiry are refreshed first.
const REFRESH_BEFORE: Duration = Duration::from_secs(300);

impl SigV4 {
    /// Signs for `service` in the chain's region.
    pub fn new(service: &str) -> SigV4 {
        SigV4::with_region(service, None)
    }

    /// Signs for `service` in `region`, or the chain's when `None`.
    pub fn with_region(service: &str, region: Option<String>) -> SigV4 {
        SigV4 {
            service: service.to_string(),
            region: region.filter(|r| !r.is_empty()),
            chain: OnceCell::new(),
            cached: Mutex::new(None),
        }
    }

    /// Signs with these credentials in `region`, not the chain's (tests, and credentials a
    /// caller already holds).
    pub fn fixed(service: &str, region: &str, credentials: Credentials) -> SigV4 {
        SigV4 {
            service: service.to_string(),
            region: Some(region.to_string()),
            chain: OnceCell::new_with(Some((
                SharedCredentialsProvider::new(credentials),
                region.to_string(),
            ))),
            cached: Mutex::new(None),
        }
    }

    async fn chain(&self) -> anyhow::Result<&(SharedCredentialsProvider, String)> {
        self.chain
            .get_or_try_init(|| async {
                let conf = aws_config::defaults(BehaviorVersion::latest()).load().await;
                let provider = conf
                    .credentials_provider()
                    .ok_or_else(|| anyhow::anyhow!("no AWS credentials provider configured"))?;
                let region = match &self.region {
                    Some(r) => r.clone(),
                    None => conf
                        .region()
                        .ok_or_else(|| anyhow::anyhow!("no AWS region: set AWS_REGION"))?
                        .to_string(),
                };
                anyhow::Ok((provider, region))
            })
            .await
    }

    /// The region requests are signed for (endpoints derived from it use the same).
    pub async fn region(&self) -> anyhow::Result<String> {
        Ok(self.chain().await?.1.clone())
    }

    async fn credentials(&self) -> anyhow::Result<(Credentials, &str)> {
        let (provider, region) = self.chain().await?;
        let mut cached = self.cached.lock().await;
        let fresh = cached.as_ref().is_some_and(|c| {
            c.expiry()
                .is_none_or(|at| at > SystemTime::now() + REFRESH_BEFORE)
        });
        if !fresh {
            *cached = Some(provider.provide_credentials().await?);
        }
        Ok((cached.clone().expect("just set"), region.as_str()))
    }

    /// The headers that sign `method url` with `body`: `authorization`, `x-amz-date`,
    /// `x-amz-content-sha256` and, for temporary credentials, `x-amz-security-token`.
    pub async fn headers(&self, method: &str, url: &Url, body: &[u8]) -> anyhow::Result<HeaderMap> {
        self.headers_for(&self.service, method, url, body).await
    }

    /// As [`SigV4::headers`], for another signing name with the same credentials (one OTLP
    /// sink signs traces for `xray` and logs for `logs`).
    pub async fn headers_for(
        &self,
        service: &str,
        method: &str,
        url: &Url,
        body: &[u8],
    ) -> anyhow::Result<HeaderMap> {
        let (credentials, region) = self.credentials().await?;
        signed_headers(
            &credentials,
            region,
            service,
            SystemTime::now(),
            method,
            url,
            body,
        )
    }
}

/// Pure signing: the same inputs give the same headers.
pub fn signed_headers(
    credentials: &Credentials,
    region: &str,
    service: &str,
    time: SystemTime,
    method: &str,
    url: &Url,
    body: &[u8],
) -> anyhow::Result<HeaderMap> {
    let identity = credentials.clone().into();
    let mut settings = SigningSettings::default();
    // OpenSearch Service wants the payload hash as a header; the other endpoints accept it.
    settings.payload_checksum_kind = PayloadChecksumKind::XAmzSha256;
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name(service)
        .time(time)
        .settings(settings)
        .build()?
        .into();
    // Only `host` is signed among the request's own headers: the others are set by the
    // HTTP client after this point and need not be.
    let host = match url.port() {
        Some(port) => format!("{}:{port}", url.host_str().unwrap_or_default()),
        None => url.host_str().unwrap_or_default().to_string(),
    };
    let signable = SignableRequest::new(
        method,
        url.as_str(),
        [("host", host.as_str())].into_iter(),
        SignableBody::Bytes(body),
    )?;
    let (instructions, _signature) = sign(signable, &params)?.into_parts();
    let (headers, _query) = instructions.into_parts();
    let mut out = HeaderMap::new();
    for h in headers {
        let mut value = HeaderValue::from_str(h.value())?;
        // The signature and the session token are credentials: never in debug output.
        value.set_sensitive(
            h.sensitive() || matches!(h.name(), "authorization" | "x-amz-security-token"),
        );
        out.insert(HeaderName::from_static(h.name()), value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_host_date_and_payload() {
        let creds = Credentials::new("AKIDEXAMPLE", "secret", Some("token".into()), None, "test");
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_793_520_000);
        let url = Url::parse("https://search-shop.eu-west-1.es.amazonaws.com/_bulk").unwrap();
        let h = signed_headers(&creds, "eu-west-1", "es", time, "POST", &url, b"{}\n").unwrap();
        let auth = h["authorization"].to_str().unwrap();
        assert!(
            auth.starts_with(
                "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20261101/eu-west-1/es/aws4_request, \
                 SignedHeaders=host;x-amz-content-sha256;x-amz-date;x-amz-security-token, Signature="
            ),
            "{auth}"
        );
        assert_eq!(h["x-amz-date"], "20261101T080000Z");
        // sha256("{}\n")
        assert_eq!(
            h["x-amz-content-sha256"],
            "ca3d163bab055381827226140568f3bef7eaac187cebd76878e0b63e9e442356"
        );
        assert_eq!(h["x-amz-security-token"], "token");
        let again = signed_headers(&creds, "eu-west-1", "es", time, "POST", &url, b"{}\n").unwrap();
        assert_eq!(h, again);
    }

    #[test]
    fn the_signing_name_and_region_are_in_the_scope() {
        let creds = Credentials::new("AKIDEXAMPLE", "secret", None, None, "test");
        let time = SystemTime::UNIX_EPOCH + Duration::from_secs(1_793_520_000);
        let url = Url::parse("https://xray.us-west-2.amazonaws.com/v1/traces").unwrap();
        let h =
            signed_headers(&creds, "us-west-2", "xray", time, "POST", &url, b"\x0a\x00").unwrap();
        let auth = h["authorization"].to_str().unwrap();
        assert!(
            auth.contains("Credential=AKIDEXAMPLE/20261101/us-west-2/xray/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, "),
            "{auth}"
        );
        assert!(h["authorization"].is_sensitive());
    }
}
