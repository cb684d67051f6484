//! Redaction of analytics events: they are decoded already (each is validated alone), so the
//! walk is over prost structs. `properties`, `context` (with `context.traits`) and the event's
//! name go through every rule; `user_id` and `anonymous_id` too, under their own names as keys,
//! so a custom rule on `user_id` with the `hash` action pseudonymizes users for analysts.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct};
use tidewater_proto::events::v1::Event;

use super::rules::{KeyCtx, Rules, Verdict};

/// Redacts `event` in place, pushing the rules that fired onto `hits`.
pub fn redact(rules: &Rules, event: &mut Event, hits: &mut Vec<u16>) {
    let plain = rules.plain();
    // These must stay (an event needs a name and a user), so a drop masks them.
    for (key, value) in [
        (None, &mut event.name),
        (Some("user_id"), &mut event.user_id),
        (Some("anonymous_id"), &mut event.anonymous_id),
    ] {
        let ctx = match key {
            Some(k) => rules.key(k, &plain),
            None => plain,
        };
        match rules.value(value, &ctx, hits) {
            Verdict::Keep => {}
            Verdict::Replace(new) => *value = new,
            Verdict::Drop => *value = rules.replacement(ctx.whole.unwrap_or_default(), value),
        }
    }
    for s in [event.properties.as_mut(), event.context.as_mut()]
        .into_iter()
        .flatten()
    {
        object(rules, s, &plain, hits);
    }
}

fn object(rules: &Rules, s: &mut Struct, outer: &KeyCtx, hits: &mut Vec<u16>) {
    s.fields.retain(|key, value| {
        let ctx = rules.key(key, outer);
        !matches!(
            self::value(rules, &mut value.kind, &ctx, hits),
            Verdict::Drop
        )
    });
}

/// Redacts one value; `Drop` asks the holder to remove it.
fn value(rules: &Rules, kind: &mut Option<Kind>, ctx: &KeyCtx, hits: &mut Vec<u16>) -> Verdict {
    match kind {
        Some(Kind::StringValue(s)) => match rules.value(s, ctx, hits) {
            Verdict::Replace(new) => {
                *s = new;
                Verdict::Keep
            }
            other => other,
        },
        Some(Kind::StructValue(inner)) => {
            if let Some(Verdict::Drop) = whole_drop(rules, ctx, hits) {
                return Verdict::Drop;
            }
            object(rules, inner, ctx, hits);
            Verdict::Keep
        }
        Some(Kind::ListValue(ListValue { values })) => {
            if let Some(Verdict::Drop) = whole_drop(rules, ctx, hits) {
                return Verdict::Drop;
            }
            for v in values.iter_mut() {
                if let Verdict::Drop = value(rules, &mut v.kind, ctx, hits) {
                    v.kind = Some(Kind::StringValue(
                        rules.replacement(ctx.whole.unwrap_or_default(), ""),
                    ));
                }
            }
            Verdict::Keep
        }
        // Numbers, booleans and nulls are not credentials; a sensitive key's `drop` still
        // removes them with the rest.
        _ => whole_drop(rules, ctx, hits).unwrap_or(Verdict::Keep),
    }
}

/// A container or scalar under a key whose rule drops the whole value.
fn whole_drop(rules: &Rules, ctx: &KeyCtx, hits: &mut Vec<u16>) -> Option<Verdict> {
    let rule = ctx.whole?;
    (rules.action(rule) == super::config::Action::Drop).then(|| {
        hits.push(rule);
        Verdict::Drop
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use tidewater_proto::json::struct_from_json;

    use super::*;
    use crate::redact::config::{Action, CustomRule, RedactionConfig};

    fn event() -> Event {
        Event {
            name: "Order Completed".into(),
            user_id: "u-42".into(),
            properties: struct_from_json(&json!({
                "card": "4111 1111 1111 1111",
                "order_id": "4111111111111112",
                "note": "ship to jane@example.com",
                "total": 10.5,
                "password": "hunter2",
                "tags": ["AKIAIOSFODNN7EXAMPLE", "ok"],
            })),
            context: struct_from_json(&json!({
                "ip": "203.0.113.7",
                "traits": {"email": "jane@example.com", "plan": "pro"},
            })),
            ..Default::default()
        }
    }

    fn json_of(s: &Option<Struct>) -> serde_json::Value {
        tidewater_proto::json::struct_to_json(s.as_ref().unwrap())
    }

    #[test]
    fn properties_context_and_traits_are_redacted() {
        let rules = Rules::new(&RedactionConfig::default()).unwrap();
        let mut e = event();
        let mut hits = Vec::new();
        redact(&rules, &mut e, &mut hits);
        assert_eq!(
            json_of(&e.properties),
            json!({
                "card": "[REDACTED:card_number]",
                "order_id": "4111111111111112",
                "note": "ship to [REDACTED:email]",
                "total": 10.5,
                "password": "[REDACTED:sensitive_key]",
                "tags": ["[REDACTED:aws_access_key]", "ok"],
            })
        );
        assert_eq!(
            json_of(&e.context),
            json!({"ip": "203.0.113.7", "traits": {"email": "[REDACTED:email]", "plan": "pro"}})
        );
        assert_eq!(
            (e.name.as_str(), e.user_id.as_str()),
            ("Order Completed", "u-42")
        );
        assert_eq!(hits.len(), 5);
    }

    #[test]
    fn user_ids_pseudonymized_stably_per_key() {
        let mut config = RedactionConfig::default();
        config.rules.push(CustomRule {
            name: "user".into(),
            pattern: None,
            keys: vec!["user_id".into()],
            action: Action::Hash,
        });
        config.actions.insert("sensitive_key".into(), Action::Drop);
        config.hash_key = Some(crate::config::Secret("0123456789abcdef-one".into()));
        let one = Rules::new(&config).unwrap();
        config.hash_key = Some(crate::config::Secret("0123456789abcdef-two".into()));
        let two = Rules::new(&config).unwrap();
        let user = |rules: &Rules| {
            let mut e = event();
            redact(rules, &mut e, &mut Vec::new());
            assert!(json_of(&e.properties).get("password").is_none(), "dropped");
            e.user_id
        };
        assert!(user(&one).starts_with("[REDACTED:user:"));
        assert_eq!(user(&one), user(&one));
        assert_ne!(user(&one), user(&two));
    }
}
