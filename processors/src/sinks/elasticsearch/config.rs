//! `[sinks.elasticsearch]`: where to index, how to authenticate, how big a bulk request may
//! be, and how to deliver (`[sinks.elasticsearch.delivery]`, the engine's table shared by every
//! sink).

use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use serde::{Deserialize, Serialize};

use crate::delivery::DeliveryConfig;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ElasticsearchSinkConfig {
    pub enabled: bool,
    /// Base URL of the cluster (or of an Amazon OpenSearch Service domain).
    pub url: String,
    pub layout: IndexLayout,
    /// The alias (daily layout) or data stream analysts query for events.
    pub events_index: String,
    /// Also index OTLP log records.
    pub logs: bool,
    pub logs_index: String,
    /// Documents the cluster rejected (mapping or parse errors), with the reason, are indexed
    /// here, once the engine has appended them to
    /// `<delivery.dead_letter_dir>/elasticsearch.ndjson`.
    pub dead_letter_index: String,
    /// Install the index templates at start-up when missing (or when an older Tidewater
    /// installed a different one). Templates someone else owns are left alone.
    pub install_templates: bool,
    /// Guard against mapping explosion: most distinct fields one index may have. An event that
    /// would add more is dead-lettered with the cluster's reason.
    pub total_fields_limit: u32,
    /// Longest keyword indexed; longer strings are kept in `_source` but not indexed.
    pub ignore_above: u32,
    pub shards: u32,
    pub replicas: u32,
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    pub bulk: BulkConfig,
    /// Concurrency, retries and dead letters: the delivery engine's settings.
    pub delivery: DeliveryConfig,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
}

impl Default for ElasticsearchSinkConfig {
    fn default() -> Self {
        ElasticsearchSinkConfig {
            enabled: false,
            url: "http://127.0.0.1:9200".into(),
            layout: IndexLayout::DailyIndices,
            events_index: "tidewater-events".into(),
            logs: false,
            logs_index: "tidewater-logs".into(),
            dead_letter_index: "tidewater-dead-letter".into(),
            install_templates: true,
            total_fields_limit: 1000,
            ignore_above: 1024,
            shards: 1,
            replicas: 1,
            request_timeout: Duration::from_secs(30),
            bulk: BulkConfig::default(),
            delivery: default_delivery(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
        }
    }
}

/// The engine's defaults, but for `retry_max`: this sink waited at most 10 s between retries
/// before it moved onto the engine, and a cluster back from an outage is used again as soon.
fn default_delivery() -> DeliveryConfig {
    DeliveryConfig {
        retry_max: Duration::from_secs(10),
        ..DeliveryConfig::default()
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IndexLayout {
    /// `<index>-YYYY.MM.DD` by the document's own UTC day, every one joined to the alias
    /// `<index>`: works on every cluster; retention is deleting old days.
    #[default]
    DailyIndices,
    /// A data stream named `<index>` (Elasticsearch 7.9+, OpenSearch 2.6+): the cluster
    /// rolls backing indices over (with ILM / ISM policies you attach to the template).
    DataStream,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BulkConfig {
    /// A `_bulk` request is sent at this size (NDJSON bytes)...
    pub max_bytes: ByteSize,
    /// ...or this many documents, whichever comes first.
    pub max_actions: usize,
}

impl Default for BulkConfig {
    fn default() -> Self {
        BulkConfig {
            max_bytes: ByteSize::mib(5),
            max_actions: 5000,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    pub kind: AuthKind,
    /// For `basic`.
    pub username: String,
    pub password: String,
    /// For `api_key`: the base64 `id:api_key` the cluster returns as `encoded`.
    pub api_key: String,
    /// For `aws_sigv4`: the signing name, `es` for OpenSearch Service domains, `aoss` for
    /// OpenSearch Serverless. Region and credentials come from the standard AWS chain.
    pub aws_service: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            kind: AuthKind::None,
            username: String::new(),
            password: String::new(),
            api_key: String::new(),
            aws_service: "es".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthKind {
    #[default]
    None,
    Basic,
    ApiKey,
    AwsSigv4,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM file of CA certificates trusted besides the public roots (a self-signed cluster).
    pub ca_file: Option<PathBuf>,
}

impl ElasticsearchSinkConfig {
    /// Checks what serde cannot: called when the sink is built.
    pub fn validate(&self) -> anyhow::Result<()> {
        let b = &self.bulk;
        if b.max_actions == 0 {
            anyhow::bail!("sinks.elasticsearch.bulk.max_actions must be at least 1");
        }
        self.delivery
            .validate("sinks.elasticsearch.delivery")
            .map_err(anyhow::Error::msg)?;
        // Elasticsearch's default http.max_content_length, and Amazon OpenSearch Service's
        // payload limit on its largest instance types: a bigger request can only be refused.
        if b.max_bytes.as_u64() < 1024 || b.max_bytes > ByteSize::mib(100) {
            anyhow::bail!(
                "sinks.elasticsearch.bulk.max_bytes must be between 1 KiB and 100 MiB (got {})",
                b.max_bytes
            );
        }
        for (key, name) in [
            ("events_index", &self.events_index),
            ("logs_index", &self.logs_index),
            ("dead_letter_index", &self.dead_letter_index),
        ] {
            if !valid_index_name(name) {
                anyhow::bail!(
                    "sinks.elasticsearch.{key} {name:?} is not a valid index name (lowercase, \
                     no spaces or \\ / * ? \" < > | , #, not starting with - _ +)"
                );
            }
        }
        // Daily indices of one name must not fall under another's `<name>-*` template.
        let names = [
            &self.events_index,
            &self.logs_index,
            &self.dead_letter_index,
        ];
        for a in names {
            for b in names {
                if a != b && b.starts_with(&format!("{a}-")) {
                    anyhow::bail!(
                        "sinks.elasticsearch index names {a:?} and {b:?} overlap: {b:?} would \
                         match the template of {a:?}-*"
                    );
                }
            }
        }
        let a = &self.auth;
        match a.kind {
            AuthKind::Basic if a.username.is_empty() => {
                anyhow::bail!("sinks.elasticsearch.auth.kind = \"basic\" needs auth.username")
            }
            AuthKind::ApiKey if a.api_key.is_empty() => {
                anyhow::bail!("sinks.elasticsearch.auth.kind = \"api_key\" needs auth.api_key")
            }
            _ => {}
        }
        Ok(())
    }
}

/// The cluster's own rules for index names, checked up front so a typo fails at start-up.
fn valid_index_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && name == name.to_lowercase()
        && !name.starts_with(['-', '_', '+'])
        && !name.contains([' ', '\\', '/', '*', '?', '"', '<', '>', '|', ',', '#', ':'])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        ElasticsearchSinkConfig::default().validate().unwrap();
        let mut c = ElasticsearchSinkConfig {
            events_index: "Events".into(),
            ..Default::default()
        };
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("events_index"));
        c.events_index = "events".into();
        c.bulk.max_bytes = ByteSize::mib(500);
        assert!(c.validate().unwrap_err().to_string().contains("max_bytes"));
        c.bulk.max_bytes = ByteSize::mib(5);
        c.logs_index = "events-logs".into();
        assert!(c.validate().unwrap_err().to_string().contains("overlap"));
        c.logs_index = "logs".into();
        c.delivery.concurrency = 0;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("sinks.elasticsearch.delivery.concurrency"));
        c.delivery.concurrency = 4;
        c.auth.kind = AuthKind::Basic;
        assert!(c.validate().unwrap_err().to_string().contains("username"));
    }
}
