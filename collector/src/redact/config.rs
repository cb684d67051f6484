//! `[collector.redaction]`: which detectors run, what they do to what they find, custom rules
//! and allow lists. Typed and checked when the configuration is read, so a bad custom rule is
//! refused at start-up (and by `tidewater check-config`) with its name, never met at run time.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::Secret;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactionConfig {
    /// On by default: the sidecar is the last place a secret can be removed before it sits in
    /// the bus, X-Ray, CloudWatch and Elasticsearch for their whole retention.
    pub enabled: bool,
    /// Count what would be redacted (`tidewater_collector_redactions_total`) without changing
    /// anything: for rolling out a new rule.
    pub dry_run: bool,
    pub detectors: Detectors,
    /// What a rule does to what it finds, by rule name (`mask` when not listed).
    pub actions: BTreeMap<String, Action>,
    /// Attribute keys (globs, `*` any run of characters, case-insensitive) whose whole value is
    /// a secret, added to the built-in list (`*password*`, `*secret*`, `*token`, `cookie`, ...).
    pub sensitive_keys: Vec<String>,
    /// Attribute keys (globs) never redacted, by any rule: for a value a detector mistakes for
    /// a secret and that is known not to be one.
    pub allow_keys: Vec<String>,
    /// Services (`service.name` of the resource) whose telemetry is not redacted at all.
    pub allow_services: Vec<String>,
    /// Key for the `hash` action (HMAC-SHA256), e.g. from
    /// `TIDEWATER_COLLECTOR__REDACTION__HASH_KEY`. Never logged or printed.
    pub hash_key: Option<Secret>,
    /// Or a file holding the key (a mounted secret); its bytes, less a trailing newline.
    pub hash_key_file: Option<PathBuf>,
    pub rules: Vec<CustomRule>,
}

impl Default for RedactionConfig {
    fn default() -> Self {
        RedactionConfig {
            enabled: true,
            dry_run: false,
            detectors: Detectors::default(),
            actions: BTreeMap::new(),
            sensitive_keys: Vec::new(),
            allow_keys: Vec::new(),
            allow_services: Vec::new(),
            hash_key: None,
            hash_key_file: None,
            rules: Vec::new(),
        }
    }
}

/// The built-in detectors. Each is validated beyond its pattern (see `redact::rules`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Detectors {
    pub aws_access_key: bool,
    /// Only where the text names it (`aws_secret_access_key=`, `SecretAccessKey`) or an access
    /// key id is beside it: 40 base64 characters alone are too often something else.
    pub aws_secret_key: bool,
    pub bearer_token: bool,
    pub basic_auth: bool,
    pub jwt: bool,
    pub private_key: bool,
    /// `password=...`, `api_key: ...`, `"client_secret": "..."` in free text, whatever the
    /// value's shape.
    pub secret_assignment: bool,
    /// Luhn-checked, with a card network's leading digit.
    pub card_number: bool,
    pub email: bool,
    /// `123-45-6789` with the SSA's impossible numbers excluded.
    pub us_ssn: bool,
    /// Off: addresses are what operators debug with, and client IPs feed geo lookups.
    pub ipv4: bool,
    /// Whole values of attributes whose key names a secret.
    pub sensitive_key: bool,
    /// `db.statement` / `db.query.text` literals replaced by `?` (SQL systems only).
    pub db_statement: bool,
    /// Values of sensitive query parameters and URL passwords in `url.full`, `url.query`,
    /// `http.url`, `http.target`.
    pub url_query: bool,
}

impl Default for Detectors {
    fn default() -> Self {
        Detectors {
            aws_access_key: true,
            aws_secret_key: true,
            bearer_token: true,
            basic_auth: true,
            jwt: true,
            private_key: true,
            secret_assignment: true,
            card_number: true,
            email: true,
            us_ssn: true,
            ipv4: false,
            sensitive_key: true,
            db_statement: true,
            url_query: true,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// `[REDACTED:<rule>]`.
    Mask,
    /// `[REDACTED:<rule>:<16 hex digits of HMAC-SHA256>]`: the same value gives the same
    /// pseudonym with the same key, so analysts can still count and join.
    Hash,
    /// The attribute (or event property, or JSON member) is removed; inside free text, where
    /// there is nothing to remove, it masks.
    Drop,
}

/// A rule of the user's: a regex over values, limited to some keys, or a whole value under
/// some keys (no `pattern`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomRule {
    /// In markers and in `tidewater_collector_redactions_total{rule}`.
    pub name: String,
    /// Regex (Rust `regex` syntax) over string values; each match is replaced.
    #[serde(default)]
    pub pattern: Option<String>,
    /// Key globs the rule applies under; empty: every value (a `pattern` is then required).
    #[serde(default)]
    pub keys: Vec<String>,
    #[serde(default = "mask")]
    pub action: Action,
}

fn mask() -> Action {
    Action::Mask
}

/// Reads `[collector.redaction]` and compiles it, so a bad rule fails the configuration (at
/// start-up and in `tidewater check-config`) naming the rule and what is wrong.
pub fn checked<'de, D: serde::Deserializer<'de>>(d: D) -> Result<RedactionConfig, D::Error> {
    let config = RedactionConfig::deserialize(d)?;
    super::rules::Rules::new(&config).map_err(serde::de::Error::custom)?;
    Ok(config)
}
