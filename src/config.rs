//! The whole configuration: one TOML file, every key overridable from the environment.

use std::net::SocketAddr;
use std::path::Path;

use figment::providers::{Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};
use tidewater_bus::BusConfig;
use tidewater_collector::CollectorConfig;
use tidewater_processors::delivery::config::RENAMED_KEYS;
use tidewater_processors::{ProcessorConfig, SinksConfig};

/// Prefix of environment overrides: `TIDEWATER_BUS__KIND=embedded` sets `bus.kind`.
pub const ENV_PREFIX: &str = "TIDEWATER_";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub collector: CollectorConfig,
    pub bus: BusConfig,
    pub processor: ProcessorConfig,
    pub sinks: SinksConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub telemetry: crate::logging::TelemetryConfig,
}

/// `[telemetry.emf]`: Tidewater's own health as CloudWatch Embedded Metric Format lines on
/// stdout (`src/self_metrics`), for deployments whose log driver ships stdout to CloudWatch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EmfTelemetryConfig {
    pub enabled: bool,
    /// How often a report is written; counters are reported as their increase over it.
    #[serde(with = "humantime_serde")]
    pub interval: std::time::Duration,
    pub namespace: String,
    /// The `Pipeline` dimension: which pipeline this process belongs to, so that alarms on
    /// one pipeline's collectors and processors see neither another pipeline's nor miss any.
    pub pipeline: String,
    /// The `Service` dimension, in addition: the app a collector sidecar serves. Empty: none.
    pub service: String,
}

impl Default for EmfTelemetryConfig {
    fn default() -> Self {
        EmfTelemetryConfig {
            enabled: false,
            interval: std::time::Duration::from_secs(60),
            namespace: "Tidewater".into(),
            pipeline: "tidewater".into(),
            service: String::new(),
        }
    }
}

impl EmfTelemetryConfig {
    /// CloudWatch's own limits, so a bad value fails at start-up rather than as metrics that
    /// silently never appear.
    fn validate(&self) -> anyhow::Result<()> {
        if self.interval < std::time::Duration::from_secs(1) {
            anyhow::bail!(
                "telemetry.emf.interval must be at least 1s (got {:?})",
                self.interval
            );
        }
        let ns = &self.namespace;
        if ns.is_empty() || ns.len() > 255 || ns.starts_with("AWS/") {
            anyhow::bail!(
                "telemetry.emf.namespace must be 1 to 255 characters and not start with \"AWS/\" (got {ns:?})"
            );
        }
        for (key, value, may_be_empty) in [
            ("pipeline", &self.pipeline, false),
            ("service", &self.service, true),
        ] {
            if (value.is_empty() && !may_be_empty) || value.len() > 1024 {
                anyhow::bail!(
                    "telemetry.emf.{key} is a dimension value: 1 to 1024 characters (got {value:?})"
                );
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// `/healthz`, `/readyz` and Prometheus `/metrics`.
    pub addr: SocketAddr,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 8888)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `RUST_LOG` syntax; `RUST_LOG` itself wins when set.
    pub level: String,
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

impl Config {
    /// Defaults, then the file (when given), then `TIDEWATER_*` variables from `env`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> anyhow::Result<Config> {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = file {
            if !path.exists() {
                anyhow::bail!("config file {} does not exist", path.display());
            }
            figment = figment.merge(Toml::file(path));
        }
        // Overrides come from the given pairs, not the process environment, so callers (and
        // tests) decide what is read; the rule is figment's Env provider's: `__` nests.
        let mut from_env = std::collections::HashMap::new();
        for (var, value) in env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)) {
            let key = var[ENV_PREFIX.len()..].to_lowercase().replace("__", ".");
            figment = figment.merge(Serialized::global(&key, parse_env_value(&value)));
            from_env.insert(key, var);
        }
        let renamed: Vec<String> = RENAMED_KEYS
            .iter()
            .filter(|(old, _)| figment.find_value(old).is_ok())
            .map(|(old, new)| {
                let origin = from_env
                    .get(*old)
                    .map(|var| format!(" (set by {var})"))
                    .unwrap_or_default();
                format!("{old}: this key is now {new}{origin}")
            })
            .collect();
        if !renamed.is_empty() {
            anyhow::bail!("invalid configuration:\n  {}", renamed.join("\n  "));
        }
        let config: Config = figment.extract().map_err(|e| {
            let errors: Vec<String> = e.into_iter().map(|e| describe(e, &from_env)).collect();
            anyhow::anyhow!("invalid configuration:\n  {}", errors.join("\n  "))
        })?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> anyhow::Result<()> {
        let b = &self.bus.embedded;
        if b.partitions == 0 || b.partitions > 1024 {
            anyhow::bail!(
                "bus.embedded.partitions must be between 1 and 1024 (got {})",
                b.partitions
            );
        }
        if self.bus.kind == tidewater_bus::BusKind::Kinesis {
            self.bus.kinesis.validate().map_err(anyhow::Error::msg)?;
        }
        if self.collector.batch.max_items == 0 {
            anyhow::bail!("collector.batch.max_items must be at least 1");
        }
        if self.collector.memory_limit.as_u64() < self.collector.batch.max_size.as_u64() {
            anyhow::bail!(
                "collector.memory_limit ({}) must be at least collector.batch.max_size ({})",
                self.collector.memory_limit,
                self.collector.batch.max_size
            );
        }
        self.processor.validate().map_err(anyhow::Error::msg)?;
        if self.telemetry.emf.enabled {
            self.telemetry.emf.validate()?;
        }
        self.sinks.validate().map_err(anyhow::Error::msg)?;
        let emf = &self.sinks.emf;
        if emf.enabled && emf.dedup_records < self.processor.max_poll_records {
            anyhow::bail!(
                "sinks.emf.dedup_records ({}) must be at least processor.max_poll_records ({}): a crash redelivers up to one round",
                emf.dedup_records,
                self.processor.max_poll_records
            );
        }
        Ok(())
    }
}

/// Environment values are TOML scalars when they parse as one (`8192`, `true`), else strings
/// (`127.0.0.1:4317`, `5s`, `16MiB`).
fn parse_env_value(v: &str) -> figment::value::Value {
    // figment 0.10's parser cuts a quoted string at a count of characters taken for a byte
    // offset, and panics on an escape after a non-ASCII character: such a value is taken as
    // the plain string it is.
    if v.contains('\\') && !v.is_ascii() {
        return figment::value::Value::from(v.to_string());
    }
    v.parse::<figment::value::Value>()
        .unwrap_or_else(|_| figment::value::Value::from(v.to_string()))
}

/// One line per problem, naming the key and, for overrides, the variable that set it.
fn describe(e: figment::Error, from_env: &std::collections::HashMap<String, String>) -> String {
    let path = e.path.join(".");
    let origin = match from_env.get(&path) {
        Some(var) => format!(" (set by {var})"),
        None => match e.metadata.as_ref().and_then(|m| m.source.as_ref()) {
            Some(src) => format!(" (in {src})"),
            None => String::new(),
        },
    };
    let key = if path.is_empty() {
        String::new()
    } else {
        format!("{path}: ")
    };
    format!("{key}{}{origin}", e.kind)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn example_file_is_valid_and_matches_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tidewater.example.toml");
        let from_file = Config::load(Some(&path), []).unwrap();
        let defaults = Config::default();
        assert_eq!(
            toml::to_string(&from_file).unwrap(),
            toml::to_string(&defaults).unwrap(),
            "the example documents the defaults"
        );
    }

    #[test]
    fn xray_sink_settings_from_the_environment() {
        let c = Config::load(
            None,
            env(&[
                ("TIDEWATER_SINKS__XRAY__ENABLED", "true"),
                (
                    "TIDEWATER_SINKS__XRAY__INDEXED_ATTRIBUTES",
                    r#"["order.id", "otel.resource.deployment.environment"]"#,
                ),
            ]),
        )
        .unwrap();
        assert!(c.sinks.xray.enabled);
        assert_eq!(
            c.sinks.xray.indexed_attributes,
            ["order.id", "otel.resource.deployment.environment"]
        );
    }

    #[test]
    fn environment_overrides_nested_keys() {
        let c = Config::load(
            None,
            env(&[
                ("TIDEWATER_BUS__KIND", "embedded"),
                ("TIDEWATER_SINKS__FILE__DIR", "/tmp/out"),
                ("TIDEWATER_COLLECTOR__BATCH__TIMEOUT", "5s"),
                ("TIDEWATER_COLLECTOR__MAX_REQUEST_SIZE", "2MiB"),
                ("TIDEWATER_COLLECTOR__BATCH__MAX_ITEMS", "100"),
                ("TIDEWATER_COLLECTOR__GRPC_ADDR", "0.0.0.0:14317"),
                ("OTHER", "ignored"),
            ]),
        )
        .unwrap();
        assert_eq!(c.sinks.file.dir, Path::new("/tmp/out"));
        assert_eq!(c.collector.batch.timeout, std::time::Duration::from_secs(5));
        assert_eq!(c.collector.max_request_size.as_u64(), 2 * 1024 * 1024);
        assert_eq!(c.collector.batch.max_items, 100);
        assert_eq!(c.collector.grpc_addr.port(), 14317);
    }

    #[test]
    fn errors_name_the_bad_key() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "[bus]\nkind = \"embedded\"\npartitons = 3").unwrap();
        let e = Config::load(Some(f.path()), []).unwrap_err().to_string();
        assert!(e.contains("partitons"), "{e}");

        let e = Config::load(
            None,
            env(&[("TIDEWATER_COLLECTOR__BATCH__TIMEOUT", "soon")]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("collector.batch.timeout"), "{e}");

        let e = Config::load(None, env(&[("TIDEWATER_BUS__KIND", "carrier-pigeon")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("bus.kind") && e.contains("carrier-pigeon"),
            "{e}"
        );
    }

    #[test]
    fn a_renamed_retry_key_is_refused_with_its_new_name() {
        let e = Config::load(None, env(&[("TIDEWATER_SINKS__XRAY__MAX_ATTEMPTS", "3")]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("sinks.xray.max_attempts: this key is now sinks.xray.delivery.max_attempts")
                && e.contains("TIDEWATER_SINKS__XRAY__MAX_ATTEMPTS"),
            "{e}"
        );
        let mut f = tempfile::NamedTempFile::new().unwrap();
        writeln!(f, "[sinks.elasticsearch.bulk]\nmax_retries = 3").unwrap();
        let e = Config::load(Some(f.path()), []).unwrap_err().to_string();
        assert!(
            e.contains("sinks.elasticsearch.delivery.max_attempts"),
            "{e}"
        );
    }

    #[test]
    fn emf_self_metrics_from_the_environment_within_cloudwatch_limits() {
        let c = Config::load(
            None,
            env(&[
                ("TIDEWATER_TELEMETRY__EMF__ENABLED", "true"),
                ("TIDEWATER_TELEMETRY__EMF__INTERVAL", "10s"),
                ("TIDEWATER_TELEMETRY__EMF__PIPELINE", "orders-bus"),
                ("TIDEWATER_TELEMETRY__EMF__SERVICE", "shop"),
            ]),
        )
        .unwrap();
        let emf = &c.telemetry.emf;
        assert!(emf.enabled);
        assert_eq!(emf.interval, std::time::Duration::from_secs(10));
        assert_eq!(
            (
                emf.namespace.as_str(),
                emf.pipeline.as_str(),
                emf.service.as_str()
            ),
            ("Tidewater", "orders-bus", "shop")
        );
        for (key, value, expected) in [
            (
                "TIDEWATER_TELEMETRY__EMF__NAMESPACE",
                "AWS/Mine",
                "telemetry.emf.namespace",
            ),
            (
                "TIDEWATER_TELEMETRY__EMF__INTERVAL",
                "0s",
                "telemetry.emf.interval",
            ),
            (
                "TIDEWATER_TELEMETRY__EMF__PIPELINE",
                "",
                "telemetry.emf.pipeline",
            ),
        ] {
            let e = Config::load(
                None,
                env(&[("TIDEWATER_TELEMETRY__EMF__ENABLED", "true"), (key, value)]),
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains(expected), "{key}={value}: {e}");
        }
    }

    /// The manifests in deploy/ carry real configuration: keep them loadable.
    #[test]
    fn deploy_manifests_hold_valid_configuration() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let yaml = std::fs::read_to_string(root.join("deploy/k8s/collector-sidecar.yaml")).unwrap();
        let mut lines = yaml
            .lines()
            .skip_while(|l| !l.trim_start().starts_with("tidewater.toml: |"));
        let header = lines.next().expect("the ConfigMap holds tidewater.toml");
        let indent = header.len() - header.trim_start().len() + 2;
        let toml: String = lines
            .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent)
            .map(|l| format!("{}\n", l.get(indent..).unwrap_or("")))
            .collect();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(toml.as_bytes()).unwrap();
        let c = Config::load(Some(f.path()), []).unwrap();
        assert_eq!(c.admin.addr.port(), 8888);

        let ecs: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(root.join("deploy/ecs/collector-sidecar.json")).unwrap(),
        )
        .unwrap();
        let sidecar = ecs["containerDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == "tidewater")
            .unwrap();
        let vars = sidecar["environment"].as_array().unwrap().iter().map(|v| {
            (
                v["name"].as_str().unwrap().to_string(),
                v["value"].as_str().unwrap().to_string(),
            )
        });
        Config::load(None, vars).unwrap();
    }
}
