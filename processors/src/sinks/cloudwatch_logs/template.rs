//! Log group and stream names from resource attributes: `/ecs/{service.name}`,
//! `{host.name}/{container.id}`. Pure.

use std::collections::BTreeMap;

/// What a placeholder becomes when the resource lacks the attribute.
pub const MISSING: &str = "unknown";

/// CloudWatch Logs allows names of 1 to 512 characters.
const MAX_NAME: usize = 512;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    /// `[A-Za-z0-9_\-/.#]`
    LogGroup,
    /// Anything but `:` and `*`.
    LogStream,
}

#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Attribute(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pieces: Vec<Piece>,
    kind: NameKind,
}

impl Template {
    /// Parses `{attribute}` placeholders; `{{` and `}}` are literal braces.
    pub fn parse(text: &str, kind: NameKind) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut lit = String::new();
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    lit.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    lit.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(c) => name.push(c),
                            None => return Err(format!("{text:?}: unclosed '{{'")),
                        }
                    }
                    if name.trim().is_empty() {
                        return Err(format!("{text:?}: empty placeholder"));
                    }
                    if !lit.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut lit)));
                    }
                    pieces.push(Piece::Attribute(name.trim().to_string()));
                }
                '}' => return Err(format!("{text:?}: '}}' without '{{'")),
                c => lit.push(c),
            }
        }
        if !lit.is_empty() {
            pieces.push(Piece::Text(lit));
        }
        if pieces.is_empty() {
            return Err("a log group or stream name cannot be empty".into());
        }
        Ok(Template { pieces, kind })
    }

    /// The name for a resource: placeholders replaced by attribute values ([`MISSING`] when
    /// absent), characters CloudWatch refuses replaced by `_`, cut to 512 characters.
    pub fn render(&self, attributes: &BTreeMap<String, String>) -> String {
        let mut out = String::new();
        for p in &self.pieces {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Attribute(a) => match attributes.get(a).filter(|v| !v.is_empty()) {
                    Some(v) => out.push_str(v),
                    None => out.push_str(MISSING),
                },
            }
        }
        let allowed = |c: char| match self.kind {
            NameKind::LogGroup => c.is_ascii_alphanumeric() || "_-/.#".contains(c),
            NameKind::LogStream => c != ':' && c != '*',
        };
        let mut name: String = out
            .chars()
            .map(|c| if allowed(c) { c } else { '_' })
            .take(MAX_NAME)
            .collect();
        if name.is_empty() {
            name.push_str(MISSING);
        }
        name
    }

    /// Whether the name depends on the resource at all.
    pub fn is_constant(&self) -> bool {
        self.pieces.iter().all(|p| matches!(p, Piece::Text(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn renders_resource_attributes() {
        let g = Template::parse("/ecs/{service.name}", NameKind::LogGroup).unwrap();
        let s = Template::parse("{host.name}/{container.id}", NameKind::LogStream).unwrap();
        let a = attrs(&[
            ("service.name", "checkout"),
            ("host.name", "ip-10-0-0-1"),
            ("container.id", "abc"),
        ]);
        assert_eq!(g.render(&a), "/ecs/checkout");
        assert_eq!(s.render(&a), "ip-10-0-0-1/abc");
        assert_eq!(s.render(&attrs(&[("host.name", "h")])), "h/unknown");
        assert!(!g.is_constant());
        assert!(Template::parse("/fixed", NameKind::LogGroup)
            .unwrap()
            .is_constant());
    }

    #[test]
    fn replaces_characters_cloudwatch_refuses() {
        let g = Template::parse("/app/{service.name}", NameKind::LogGroup).unwrap();
        assert_eq!(
            g.render(&attrs(&[("service.name", "my svc:v2*")])),
            "/app/my_svc_v2_"
        );
        let s = Template::parse("{service.name}", NameKind::LogStream).unwrap();
        assert_eq!(
            s.render(&attrs(&[("service.name", "my svc:v2*")])),
            "my svc_v2_"
        );
        let long = "x".repeat(600);
        assert_eq!(s.render(&attrs(&[("service.name", &long)])).len(), 512);
    }

    #[test]
    fn refuses_malformed_templates() {
        assert!(Template::parse("/ecs/{service.name", NameKind::LogGroup).is_err());
        assert!(Template::parse("/ecs/{}", NameKind::LogGroup).is_err());
        assert!(Template::parse("a}b", NameKind::LogGroup).is_err());
        assert!(Template::parse("", NameKind::LogGroup).is_err());
        assert_eq!(
            Template::parse("{{x}}", NameKind::LogStream)
                .unwrap()
                .render(&attrs(&[])),
            "{x}"
        );
    }
}
