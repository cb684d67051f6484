//! The index templates Tidewater installs: what analysts see. Pure JSON; `service.rs` sends it.
//!
//! # Events
//! The envelope is mapped explicitly (`@timestamp`, `event.name`, `user.*`, `message_id`,
//! received/processed times, `client.ip` as `ip`, `geo.location` as `geo_point`, the usual
//! `context.app/device/os/location/page/campaign` fields as keywords). Free-form fields get
//! dynamic templates:
//! - `properties.*` strings: `keyword` (exact filters, terms aggregations) with a `.text`
//!   sub-field for full-text search;
//! - every number: `double`, so `3` then `3.5` never conflict;
//! - `properties.*` booleans: `boolean`; other strings: `keyword`.
//!
//! `date_detection` is off: a property that once held "2026-11-01" stays a keyword.
//!
//! # Type conflicts and mapping explosion
//! The first type a field takes in an index wins. A later event whose value cannot be read as
//! that type (a string in a number field) is rejected by the cluster with
//! `mapper_parsing_exception`; the sink dead-letters it (file and dead-letter index) with that
//! reason and the rest of the bulk goes on. With daily indices a conflict is contained to one
//! day: the next day's index starts from the template again. `index.mapping.total_fields.limit`
//! bounds how many fields free-form properties can create; an event past it is dead-lettered
//! the same way, and strings longer than `ignore_above` are stored but not indexed.

use serde_json::{json, Value};
use xxhash_rust::xxh3::xxh3_64;

use super::config::{ElasticsearchSinkConfig, IndexLayout};

/// `_meta.managed_by` of templates Tidewater installed; others are never overwritten.
pub const MANAGED_BY: &str = "tidewater";

/// A template to install: its name, and the body for `PUT _index_template/<name>`.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub name: String,
    pub body: Value,
    /// Hash of the body, kept in `_meta.fingerprint`: a different one on the cluster means
    /// the template came from another version or configuration and is replaced.
    pub fingerprint: String,
}

fn keyword(ignore_above: u32) -> Value {
    json!({"type": "keyword", "ignore_above": ignore_above})
}

fn keywords(names: &[&str], ignore_above: u32) -> Value {
    Value::Object(
        names
            .iter()
            .map(|n| (n.to_string(), keyword(ignore_above)))
            .collect(),
    )
}

fn dynamic_templates(ignore_above: u32, text_prefix: &str) -> Value {
    json!([
        {"strings_with_text": {
            "path_match": format!("{text_prefix}.*"),
            "match_mapping_type": "string",
            "mapping": {"type": "keyword", "ignore_above": ignore_above,
                        "fields": {"text": {"type": "text"}}}}},
        {"booleans": {"match_mapping_type": "boolean", "mapping": {"type": "boolean"}}},
        {"integers_as_double": {"match_mapping_type": "long", "mapping": {"type": "double"}}},
        {"doubles": {"match_mapping_type": "double", "mapping": {"type": "double"}}},
        {"strings": {"match_mapping_type": "string", "mapping": keyword(ignore_above)}}
    ])
}

fn settings(config: &ElasticsearchSinkConfig) -> Value {
    json!({
        "index.number_of_shards": config.shards,
        "index.number_of_replicas": config.replicas,
        "index.mapping.total_fields.limit": config.total_fields_limit,
    })
}

/// Wraps mappings into a composable template for `index` in the configured layout.
fn template(
    config: &ElasticsearchSinkConfig,
    index: &str,
    layout: IndexLayout,
    mappings: Value,
) -> Template {
    let mut inner = json!({"settings": settings(config), "mappings": mappings});
    let mut body = json!({"priority": 200, "template": {}});
    match layout {
        IndexLayout::DailyIndices => {
            body["index_patterns"] = json!([format!("{index}-*")]);
            inner["aliases"] = json!({ index: {} });
        }
        IndexLayout::DataStream => {
            body["index_patterns"] = json!([index]);
            body["data_stream"] = json!({});
        }
    }
    body["template"] = inner;
    let fingerprint = format!("{:016x}", xxh3_64(body.to_string().as_bytes()));
    body["_meta"] = json!({"managed_by": MANAGED_BY, "fingerprint": fingerprint});
    Template {
        name: index.to_string(),
        body,
        fingerprint,
    }
}

pub fn events_template(config: &ElasticsearchSinkConfig) -> Template {
    let ia = config.ignore_above;
    let mappings = json!({
        "dynamic": true,
        "date_detection": false,
        "dynamic_templates": dynamic_templates(ia, "properties"),
        "properties": {
            "@timestamp": {"type": "date"},
            "message_id": keyword(ia),
            "event": {"properties": {"name": keyword(ia)}},
            "user": {"properties": keywords(&["id", "anonymous_id", "distinct_id"], ia)},
            "received_at": {"type": "date"},
            "processed_at": {"type": "date"},
            "client": {"properties": {"ip": {"type": "ip"}}},
            "geo": {"properties": {"location": {"type": "geo_point"}}},
            "properties": {"type": "object"},
            "context": {"properties": {
                "ip": keyword(ia),
                "locale": keyword(ia),
                "timezone": keyword(ia),
                "user_agent": keyword(ia),
                "app": {"properties": keywords(&["name", "version", "build", "namespace"], ia)},
                "device": {"properties": keywords(&["id", "manufacturer", "model", "name", "type"], ia)},
                "os": {"properties": keywords(&["name", "version"], ia)},
                "location": {"properties": {
                    "city": keyword(ia), "country": keyword(ia), "region": keyword(ia),
                    "latitude": {"type": "double"}, "longitude": {"type": "double"}}},
                "page": {"properties": keywords(&["path", "referrer", "search", "title", "url"], ia)},
                "campaign": {"properties": keywords(&["name", "source", "medium", "term", "content"], ia)}
            }}
        }
    });
    template(config, &config.events_index, config.layout, mappings)
}

pub fn logs_template(config: &ElasticsearchSinkConfig) -> Template {
    let ia = config.ignore_above;
    let mappings = json!({
        "dynamic": true,
        "date_detection": false,
        "dynamic_templates": dynamic_templates(ia, "attributes"),
        "properties": {
            "@timestamp": {"type": "date_nanos"},
            "observed_timestamp": {"type": "date_nanos"},
            "severity_text": keyword(ia),
            "severity_number": {"type": "integer"},
            "message": {"type": "text", "fields": {"keyword": keyword(ia)}},
            // Structured bodies are kept whole but not indexed: their shapes vary by record
            // and would conflict; `message` holds them as searchable text.
            "body": {"type": "object", "enabled": false},
            "event_name": keyword(ia),
            "trace_id": keyword(ia),
            "span_id": keyword(ia),
            "service": {"properties": {"name": keyword(ia)}},
            "scope": {"properties": keywords(&["name", "version"], ia)},
            "attributes": {"type": "object"},
            "resource": {"properties": {"attributes": {"type": "object"}}}
        }
    });
    template(config, &config.logs_index, config.layout, mappings)
}

/// One plain index (never a data stream: dead letters are few, and kept until someone looks).
/// Strict, so a dead letter can never itself fail on mapping: the rejected document is stored
/// whole in `document`, not indexed. The fields are those of the dead-letter file's lines
/// (`dead_letter.rs`): the engine's `time`, `sink`, `code`, `reason`, then the sink's own.
pub fn dead_letter_template(config: &ElasticsearchSinkConfig) -> Template {
    let mappings = json!({
        "dynamic": "strict",
        "properties": {
            "time": {"type": "date"},
            "@timestamp": {"type": "date"},
            "sink": {"type": "keyword"},
            "code": {"type": "keyword"},
            "reason": {"type": "text"},
            "index": {"type": "keyword"},
            "document_id": {"type": "keyword"},
            "status": {"type": "integer"},
            "error": {"properties": {
                "type": {"type": "keyword"},
                "reason": {"type": "text"}
            }},
            "document": {"type": "object", "enabled": false}
        }
    });
    let mut t = template(
        config,
        &config.dead_letter_index,
        IndexLayout::DataStream,
        mappings,
    );
    t.body
        .as_object_mut()
        .expect("template is an object")
        .remove("data_stream");
    t
}

/// What to do about a template, given what the cluster holds under its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Install {
    /// Not there: install.
    Missing,
    /// Installed by Tidewater from another version or configuration: replace.
    Outdated,
    UpToDate,
    /// Someone else's: leave it, they chose their mappings.
    Foreign,
}

pub fn decide(existing: Option<&Value>, ours: &Template) -> Install {
    let Some(existing) = existing else {
        return Install::Missing;
    };
    let meta = &existing["_meta"];
    if meta["managed_by"] != MANAGED_BY {
        Install::Foreign
    } else if meta["fingerprint"] == ours.fingerprint.as_str() {
        Install::UpToDate
    } else {
        Install::Outdated
    }
}

/// Every template the configuration needs, in install order.
pub fn templates(config: &ElasticsearchSinkConfig) -> Vec<Template> {
    let mut all = vec![events_template(config), dead_letter_template(config)];
    if config.logs {
        all.push(logs_template(config));
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_template_golden() {
        let t = events_template(&ElasticsearchSinkConfig::default());
        assert_eq!(t.name, "tidewater-events");
        let b = &t.body;
        assert_eq!(b["index_patterns"], json!(["tidewater-events-*"]));
        assert_eq!(b["template"]["aliases"], json!({"tidewater-events": {}}));
        assert!(b.get("data_stream").is_none());
        assert_eq!(
            b["template"]["settings"],
            json!({"index.number_of_shards": 1, "index.number_of_replicas": 1,
                   "index.mapping.total_fields.limit": 1000})
        );
        let m = &b["template"]["mappings"];
        assert_eq!(m["date_detection"], false);
        let p = &m["properties"];
        assert_eq!(p["@timestamp"], json!({"type": "date"}));
        assert_eq!(p["event"]["properties"]["name"]["type"], "keyword");
        assert_eq!(p["user"]["properties"]["id"]["type"], "keyword");
        assert_eq!(p["message_id"]["type"], "keyword");
        assert_eq!(p["client"]["properties"]["ip"], json!({"type": "ip"}));
        assert_eq!(
            p["geo"]["properties"]["location"],
            json!({"type": "geo_point"})
        );
        assert_eq!(
            p["context"]["properties"]["app"]["properties"]["version"]["type"],
            "keyword"
        );
        assert_eq!(
            m["dynamic_templates"][0],
            json!({"strings_with_text": {"path_match": "properties.*", "match_mapping_type": "string",
                   "mapping": {"type": "keyword", "ignore_above": 1024, "fields": {"text": {"type": "text"}}}}})
        );
        assert_eq!(
            b["_meta"],
            json!({"managed_by": "tidewater", "fingerprint": t.fingerprint})
        );
    }

    #[test]
    fn install_decisions() {
        let t = events_template(&ElasticsearchSinkConfig::default());
        assert_eq!(decide(None, &t), Install::Missing);
        assert_eq!(decide(Some(&t.body), &t), Install::UpToDate);
        let old = json!({"_meta": {"managed_by": "tidewater", "fingerprint": "0"}});
        assert_eq!(decide(Some(&old), &t), Install::Outdated);
        assert_eq!(
            decide(Some(&json!({"index_patterns": ["x"]})), &t),
            Install::Foreign
        );
    }

    #[test]
    fn data_stream_layout_and_fingerprints() {
        let mut c = ElasticsearchSinkConfig {
            layout: IndexLayout::DataStream,
            logs: true,
            ..Default::default()
        };
        let all = templates(&c);
        let names: Vec<&str> = all.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "tidewater-events",
                "tidewater-dead-letter",
                "tidewater-logs"
            ]
        );
        let events = &all[0].body;
        assert_eq!(events["index_patterns"], json!(["tidewater-events"]));
        assert_eq!(events["data_stream"], json!({}));
        assert!(events["template"].get("aliases").is_none());
        let dead = &all[1].body;
        assert_eq!(dead["index_patterns"], json!(["tidewater-dead-letter"]));
        assert!(dead.get("data_stream").is_none() && dead["template"].get("aliases").is_none());
        assert_eq!(dead["template"]["mappings"]["dynamic"], "strict");
        assert_eq!(
            all[2].body["template"]["mappings"]["properties"]["@timestamp"]["type"],
            "date_nanos"
        );

        let before = events_template(&c).fingerprint;
        c.total_fields_limit = 2000;
        assert_ne!(
            before,
            events_template(&c).fingerprint,
            "a config change is seen"
        );
    }
}
