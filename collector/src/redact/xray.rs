//! Redaction of X-Ray segment documents (JSON, from X-Ray SDKs over the daemon protocol).
//! Member names are the keys the rules see (`annotations`, `metadata` and `http` hold what
//! apps put there); `http.request.url` is cleaned as a URL and `sql.sanitized_query` as SQL
//! in the dialect `sql.database_type` names. A document is parsed and written again only
//! when something in it changes.

use serde_json::Value;

use super::config::Action;
use super::rules::{self, KeyCtx, Rules, Special, Verdict};

/// The document with its secrets replaced, `Ok(None)` when nothing was, or an error when it
/// is not JSON (then it must not be published: nothing could check it).
pub fn redact(
    rules: &Rules,
    document: &str,
    allow_services: &[String],
    hits: &mut Vec<u16>,
) -> Result<Option<String>, String> {
    let mut doc: Value = serde_json::from_str(document).map_err(|e| e.to_string())?;
    // A segment's `name` is its service's.
    if let Some(name) = doc.get("name").and_then(Value::as_str) {
        if allow_services.iter().any(|s| s == name) {
            return Ok(None);
        }
    }
    let before = hits.len();
    let mut changed = false;
    walk(rules, &mut doc, &rules.plain(), hits, &mut changed);
    if !changed {
        debug_assert_eq!(before, hits.len());
        return Ok(None);
    }
    serde_json::to_string(&doc)
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Redacts `value` in place; `false` asks the holder to remove it.
fn walk(
    rules: &Rules,
    value: &mut Value,
    ctx: &KeyCtx,
    hits: &mut Vec<u16>,
    changed: &mut bool,
) -> bool {
    match value {
        Value::String(s) => match rules.value(s, ctx, hits) {
            Verdict::Keep => true,
            Verdict::Replace(new) => {
                *s = new;
                *changed = true;
                true
            }
            Verdict::Drop => {
                *changed = true;
                false
            }
        },
        Value::Object(map) => {
            if let Some(false) = keep_whole(rules, ctx, hits, changed) {
                return false;
            }
            let dialect = map
                .get("database_type")
                .and_then(Value::as_str)
                .map(|t| rules::dialect(&t.to_ascii_lowercase()));
            map.retain(|key, v| {
                let mut inner = rules.key(key, ctx);
                if let (Special::Sql(_), Some(d)) = (inner.special, dialect) {
                    inner.special = Special::Sql(d);
                }
                walk(rules, v, &inner, hits, changed)
            });
            true
        }
        Value::Array(items) => {
            if let Some(false) = keep_whole(rules, ctx, hits, changed) {
                return false;
            }
            for item in items.iter_mut() {
                if !walk(rules, item, ctx, hits, changed) {
                    *item = Value::String(rules.replacement(ctx.whole.unwrap_or_default(), ""));
                }
            }
            true
        }
        _ => keep_whole(rules, ctx, hits, changed).unwrap_or(true),
    }
}

/// `Some(false)` when a rule drops the whole value under this key.
fn keep_whole(
    rules: &Rules,
    ctx: &KeyCtx,
    hits: &mut Vec<u16>,
    changed: &mut bool,
) -> Option<bool> {
    let rule = ctx.whole?;
    (rules.action(rule) == Action::Drop).then(|| {
        hits.push(rule);
        *changed = true;
        false
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::redact::config::RedactionConfig;

    #[test]
    fn segments_are_redacted_member_by_member() {
        let rules = Rules::new(&RedactionConfig::default()).unwrap();
        let doc = json!({
            "name": "checkout", "id": "70de5b6f19ff9a0a", "trace_id": "1-581cf771-a006649127e371903a2de979",
            "start_time": 1478293361.271, "user": "jane@example.com",
            "http": {"request": {"url": "https://shop.example.com/pay?token=abc&x=1", "method": "POST"}},
            "annotations": {"card": "4111111111111111", "order": "4111111111111112"},
            "metadata": {"app": {"headers": {"Authorization": "Bearer abc"}, "aws_key": "AKIAIOSFODNN7EXAMPLE"}},
            "subsegments": [{"name": "db", "sql": {"database_type": "MySQL", "sanitized_query": "SELECT * FROM u WHERE e = \"a@b.co\""}}],
        })
        .to_string();
        let mut hits = Vec::new();
        let out = redact(&rules, &doc, &[], &mut hits).unwrap().unwrap();
        assert!(!out.contains('\n'));
        let out: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(out["user"], "[REDACTED:email]");
        assert_eq!(
            out["http"]["request"]["url"],
            "https://shop.example.com/pay?token=[REDACTED:url_query]&x=1"
        );
        assert_eq!(
            out["annotations"],
            json!({"card": "[REDACTED:card_number]", "order": "4111111111111112"})
        );
        assert_eq!(
            out["metadata"]["app"]["headers"]["Authorization"],
            "[REDACTED:sensitive_key]"
        );
        assert_eq!(
            out["metadata"]["app"]["aws_key"],
            "[REDACTED:aws_access_key]"
        );
        assert_eq!(
            out["subsegments"][0]["sql"]["sanitized_query"],
            "SELECT * FROM u WHERE e = ?"
        );
        assert_eq!(out["trace_id"], "1-581cf771-a006649127e371903a2de979");
        assert_eq!(out["start_time"], 1478293361.271);
        assert_eq!(hits.len(), 6);

        let clean = json!({"name": "a", "id": "1", "trace_id": "t", "http": {"request": {"url": "https://x/y?id=2"}}}).to_string();
        assert_eq!(redact(&rules, &clean, &[], &mut hits).unwrap(), None);
        assert_eq!(
            redact(&rules, &doc, &["checkout".into()], &mut hits).unwrap(),
            None
        );
        assert!(redact(&rules, "{not json", &[], &mut hits).is_err());
    }
}
