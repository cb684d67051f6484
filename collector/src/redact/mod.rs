//! Secrets and personal data removed in the collector, before anything leaves the host.
//!
//! Once a value is published it sits on the bus for the stream's retention, then in X-Ray,
//! CloudWatch Logs and Elasticsearch, readable by whoever reads those: the sidecar is the one
//! place to remove it. Every signal goes through here between being read and being split
//! ([`crate::ingest`]): OTLP on its wire bytes ([`otlp`], a request with nothing to redact is
//! not copied), events as the structs they are already decoded into ([`events`]), X-Ray
//! segments as JSON ([`xray`]). What counts as a secret and what becomes of it is one set of
//! pure rules ([`rules`]) configured by `[collector.redaction]` ([`config`]).
//!
//! Counted in `tidewater_collector_redactions_total{signal,rule}`; the values themselves are
//! never logged, counted or kept.

pub mod config;
pub mod events;
pub mod otlp;
pub mod rules;
pub mod xray;

use tidewater_proto::events::v1::Event;
use tidewater_proto::Signal;

pub use config::RedactionConfig;
use otlp::OtlpSignal;
use rules::Rules;

/// The redaction stage, shared by every receiver.
pub struct Redactor {
    /// `None` when redaction is off.
    rules: Option<Rules>,
    dry_run: bool,
    allow_services: Vec<String>,
}

impl Redactor {
    pub fn new(config: &RedactionConfig) -> Result<Redactor, String> {
        let rules = Rules::new(config)?;
        Ok(Redactor {
            rules: config.enabled.then_some(rules),
            dry_run: config.dry_run,
            allow_services: config.allow_services.clone(),
        })
    }

    /// An encoded OTLP request of `signal` with its secrets replaced, or `None` when it has
    /// none (or in a dry run): the caller keeps the bytes it has.
    pub fn otlp(&self, signal: Signal, request: &[u8]) -> Option<Vec<u8>> {
        let rules = self.rules.as_ref()?;
        let which = match signal {
            Signal::Traces => OtlpSignal::Traces,
            Signal::Metrics => OtlpSignal::Metrics,
            Signal::Logs => OtlpSignal::Logs,
            _ => return None,
        };
        let mut hits = Vec::new();
        let redacted = otlp::redact(rules, which, request, &self.allow_services, &mut hits);
        self.count(signal, &hits);
        redacted.filter(|_| !self.dry_run)
    }

    /// Redacts one event in place.
    pub fn event(&self, event: &mut Event) {
        let Some(rules) = &self.rules else {
            return;
        };
        let mut hits = Vec::new();
        if self.dry_run {
            events::redact(rules, &mut event.clone(), &mut hits);
        } else {
            events::redact(rules, event, &mut hits);
        }
        self.count(Signal::Events, &hits);
    }

    /// An X-Ray segment document with its secrets replaced (`Ok(None)`: unchanged). An error
    /// means the document could not be read, so it must not be published.
    pub fn xray(&self, document: &str) -> Result<Option<String>, String> {
        let Some(rules) = &self.rules else {
            return Ok(None);
        };
        let mut hits = Vec::new();
        let redacted = xray::redact(rules, document, &self.allow_services, &mut hits)?;
        self.count(Signal::XraySegments, &hits);
        Ok(redacted.filter(|_| !self.dry_run))
    }

    fn count(&self, signal: Signal, hits: &[u16]) {
        let Some(rules) = &self.rules else {
            return;
        };
        if hits.is_empty() {
            return;
        }
        let mut counts = vec![0u64; rules.rule_count()];
        for &h in hits {
            counts[h as usize] += 1;
        }
        for (rule, n) in counts.into_iter().enumerate().filter(|(_, n)| *n > 0) {
            metrics::counter!(
                "tidewater_collector_redactions_total",
                "signal" => signal.label(),
                "rule" => rules.name(rule as u16).to_string()
            )
            .increment(n);
        }
    }
}
