//! The detectors and the decisions on one value: pure functions of text, a key and the
//! configuration, so each is tested alone and the walkers over OTLP, events and X-Ray JSON
//! only carry context to them.
//!
//! A detector is a pattern plus a check the pattern cannot express (Luhn, a JWT header that
//! decodes, base64 that holds `user:password`, an SSN the SSA could have issued), so that
//! look-alikes (order ids, git SHAs, UUIDs, version strings) stay. Patterns run only where a
//! cheap test says they could match ([`Features`], then each detector's own test): most
//! telemetry strings have no `@`, not 13 digits, no `eyJ`, so the common case is one table
//! lookup per byte.

use std::borrow::Cow;

use base64::Engine;
use hmac::{KeyInit, Mac};
use regex::{Regex, RegexSet};

use super::config::{Action, RedactionConfig};

type HmacSha256 = hmac::Hmac<sha2::Sha256>;

/// What every replacement starts with; a value already carrying it is not redacted again
/// (a second collector on the way, or a later detector meeting an earlier one's marker).
pub const MARKER: &str = "[REDACTED:";

/// Rule numbers: the built-in ones in this order, then custom rules.
pub const AWS_ACCESS_KEY: u16 = 0;
pub const AWS_SECRET_KEY: u16 = 1;
pub const BEARER_TOKEN: u16 = 2;
pub const BASIC_AUTH: u16 = 3;
pub const JWT: u16 = 4;
pub const PRIVATE_KEY: u16 = 5;
pub const SECRET_ASSIGNMENT: u16 = 6;
pub const CARD_NUMBER: u16 = 7;
pub const EMAIL: u16 = 8;
pub const US_SSN: u16 = 9;
pub const IPV4: u16 = 10;
pub const SENSITIVE_KEY: u16 = 11;
pub const DB_STATEMENT: u16 = 12;
pub const URL_QUERY: u16 = 13;
pub const BUILTIN: [&str; 14] = [
    "aws_access_key",
    "aws_secret_key",
    "bearer_token",
    "basic_auth",
    "jwt",
    "private_key",
    "secret_assignment",
    "card_number",
    "email",
    "us_ssn",
    "ipv4",
    "sensitive_key",
    "db_statement",
    "url_query",
];

/// Keys whose whole value is a secret, before the user's own (globs, case-insensitive).
/// Suffix globs for `token`/`secret` so that `gen_ai.usage.input_tokens` or
/// `aws.secretsmanager.secret.arn` are not caught.
pub const SENSITIVE_KEYS: &[&str] = &[
    "*password*",
    "*passwd*",
    "*passphrase*",
    "*secret",
    "*secret_key",
    "*secret-key",
    "*secretkey",
    "*secret_access_key",
    "*token",
    "*api_key*",
    "*api-key*",
    "*apikey*",
    "*access_key",
    "*access-key",
    "*private_key*",
    "*private-key*",
    "*credential",
    "*credentials",
    "*authorization",
    "*cookie",
    "*session_id",
    "*sessionid",
    "*session-id",
];

/// Query parameters that carry credentials under names too short for [`SENSITIVE_KEYS`]
/// (OAuth `code`, presigned URLs' signature parts).
const SENSITIVE_PARAMS: &[&str] = &[
    "key",
    "code",
    "sig",
    "signature",
    "x-amz-signature",
    "x-amz-credential",
    "x-amz-security-token",
    "auth",
    "pwd",
    "pass",
];

/// What a rule decided about a whole value.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Keep,
    Replace(String),
    /// Remove the attribute, property or member holding it.
    Drop,
}

/// What a value's key says about it, worked out once per key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct KeyCtx {
    /// Under an allow-listed key: nothing touches it.
    pub allowed: bool,
    /// The rule that makes the whole value a secret.
    pub whole: Option<u16>,
    pub special: Special,
    /// Custom pattern rules that apply here (bit i: custom rule i).
    pub custom: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Special {
    #[default]
    None,
    /// A database statement; the dialect when the span says which system it is.
    Sql(Dialect),
    Url(UrlPart),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `'...'` strings with `''`; `"..."` identifiers.
    Standard,
    /// MySQL and MariaDB: `"..."` strings too, and backslash escapes.
    MySql,
    /// The system does not speak SQL (MongoDB, Redis, ...): left alone.
    NotSql,
    /// No system named: SQL when it starts like a SQL statement.
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlPart {
    /// `url.full`, `http.url`: scheme, authority, path, query.
    Full,
    /// `http.target`: path and query.
    Target,
    /// `url.query`: the query alone.
    Query,
}

struct Custom {
    rule: u16,
    pattern: Option<Regex>,
}

/// The compiled rule set.
pub struct Rules {
    names: Vec<String>,
    actions: Vec<Action>,
    enabled: [bool; BUILTIN.len()],
    detectors: Vec<Detector>,
    /// The built-in sensitive key globs, and the user's.
    sensitive: Option<Regex>,
    sensitive_user: Option<Regex>,
    allow: Option<Regex>,
    /// Key globs of the custom rules that have some, by custom rule.
    custom_keys: Option<(RegexSet, Vec<usize>)>,
    custom: Vec<Custom>,
    /// Custom pattern rules without keys: they apply everywhere.
    custom_everywhere: u64,
    hmac: Option<HmacSha256>,
}

/// Names the rules only: the hash key must never reach a log line.
impl std::fmt::Debug for Rules {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rules")
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

impl Rules {
    /// Compiles the configuration, or says which rule is wrong and why.
    pub fn new(config: &RedactionConfig) -> Result<Rules, String> {
        let d = &config.detectors;
        let enabled = [
            d.aws_access_key,
            d.aws_secret_key,
            d.bearer_token,
            d.basic_auth,
            d.jwt,
            d.private_key,
            d.secret_assignment,
            d.card_number,
            d.email,
            d.us_ssn,
            d.ipv4,
            d.sensitive_key,
            d.db_statement,
            d.url_query,
        ];
        let mut names: Vec<String> = BUILTIN.iter().map(|s| s.to_string()).collect();
        if config.rules.len() > 64 {
            return Err(format!(
                "collector.redaction.rules: at most 64 custom rules (got {})",
                config.rules.len()
            ));
        }
        let mut custom = Vec::new();
        let mut custom_key_globs = Vec::new();
        let mut custom_key_owner = Vec::new();
        let mut custom_everywhere = 0u64;
        for (i, rule) in config.rules.iter().enumerate() {
            let bad =
                |why: String| format!("collector.redaction.rules: rule {:?}: {why}", rule.name);
            if rule.name.is_empty()
                || !rule
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            {
                return Err(bad("the name must be letters, digits, '_' or '-'".into()));
            }
            if names.contains(&rule.name) {
                return Err(bad("the name is already taken".into()));
            }
            let pattern = match &rule.pattern {
                Some(p) => Some(Regex::new(p).map_err(|e| bad(format!("invalid pattern: {e}")))?),
                None => None,
            };
            if pattern.is_none() && rule.keys.is_empty() {
                return Err(bad("needs a pattern, keys, or both".into()));
            }
            if rule.keys.is_empty() {
                custom_everywhere |= 1 << i;
            }
            for k in &rule.keys {
                custom_key_globs.push(glob_regex(k));
                custom_key_owner.push(i);
            }
            custom.push(Custom {
                rule: names.len() as u16,
                pattern,
            });
            names.push(rule.name.clone());
        }
        let mut actions = vec![Action::Mask; names.len()];
        for (name, action) in &config.actions {
            let Some(i) = names.iter().position(|n| n == name) else {
                return Err(format!(
                    "collector.redaction.actions: no rule named {name:?} (rules: {})",
                    names.join(", ")
                ));
            };
            actions[i] = *action;
        }
        for (i, rule) in config.rules.iter().enumerate() {
            actions[BUILTIN.len() + i] = rule.action;
        }
        let hashing = actions.contains(&Action::Hash);
        let key = match (&config.hash_key, &config.hash_key_file) {
            (Some(_), Some(_)) => {
                return Err("collector.redaction: set hash_key or hash_key_file, not both".into())
            }
            (Some(k), None) => Some(k.0.as_bytes().to_vec()),
            (None, Some(path)) => {
                let mut bytes = std::fs::read(path).map_err(|e| {
                    format!(
                        "collector.redaction.hash_key_file: cannot read {}: {e}",
                        path.display()
                    )
                })?;
                while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                    bytes.pop();
                }
                Some(bytes)
            }
            (None, None) => None,
        };
        let hmac = match key {
            // Short keys make pseudonyms guessable by trying every likely value.
            Some(k) if k.len() < 16 => {
                return Err("collector.redaction: the hash key must be at least 16 bytes".into())
            }
            Some(k) => Some(HmacSha256::new_from_slice(&k).map_err(|e| e.to_string())?),
            None if hashing => {
                return Err("collector.redaction: a rule's action is \"hash\" but neither hash_key nor hash_key_file is set (an unkeyed hash of a card number or an email is reversible by guessing)".into())
            }
            None => None,
        };
        let globs = |list: &mut dyn Iterator<Item = &str>| -> Result<Option<Regex>, String> {
            let parts: Vec<String> = list.map(glob_regex).collect();
            if parts.is_empty() {
                return Ok(None);
            }
            Regex::new(&format!("(?i)^(?:{})$", parts.join("|")))
                .map(Some)
                .map_err(|e| e.to_string())
        };
        let sensitive = if enabled[SENSITIVE_KEY as usize] {
            globs(&mut SENSITIVE_KEYS.iter().copied())?
        } else {
            None
        };
        let sensitive_user = globs(&mut config.sensitive_keys.iter().map(String::as_str))?;
        let allow = globs(&mut config.allow_keys.iter().map(String::as_str))?;
        let custom_keys = if custom_key_globs.is_empty() {
            None
        } else {
            let set = RegexSet::new(custom_key_globs.iter().map(|g| format!("(?i)^{g}$")))
                .map_err(|e| e.to_string())?;
            Some((set, custom_key_owner))
        };
        let detectors = Detector::all()
            .into_iter()
            .filter(|d| enabled[d.rule as usize])
            .collect();
        Ok(Rules {
            names,
            actions,
            enabled,
            detectors,
            sensitive,
            sensitive_user,
            allow,
            custom_keys,
            custom,
            custom_everywhere,
            hmac,
        })
    }

    pub fn name(&self, rule: u16) -> &str {
        &self.names[rule as usize]
    }

    pub fn action(&self, rule: u16) -> Action {
        self.actions[rule as usize]
    }

    pub fn rule_count(&self) -> usize {
        self.names.len()
    }

    /// The context of a value found with no key (a span name, a log body).
    pub fn plain(&self) -> KeyCtx {
        KeyCtx {
            custom: self.custom_everywhere,
            ..KeyCtx::default()
        }
    }

    /// The context of a value under `key`, nested in a value whose context is `outer`: an
    /// allowed or secret outer value makes everything inside it so.
    pub fn key(&self, key: &str, outer: &KeyCtx) -> KeyCtx {
        if outer.allowed || outer.whole.is_some() {
            return *outer;
        }
        let mut ctx = self.plain();
        if self.allow.as_ref().is_some_and(|r| r.is_match(key)) {
            ctx.allowed = true;
            return ctx;
        }
        if self.sensitive_key(key) {
            ctx.whole = Some(SENSITIVE_KEY);
        }
        if let Some((set, owner)) = &self.custom_keys {
            for m in set.matches(key).iter() {
                let i = owner[m];
                if self.custom[i].pattern.is_some() {
                    ctx.custom |= 1 << i;
                } else if ctx.whole.is_none() {
                    ctx.whole = Some(self.custom[i].rule);
                }
            }
        }
        ctx.special = match key {
            "db.statement" | "db.query.text" | "sanitized_query"
                if self.enabled[DB_STATEMENT as usize] =>
            {
                Special::Sql(Dialect::Unknown)
            }
            "url.full" | "http.url" | "url.original" | "url"
                if self.enabled[URL_QUERY as usize] =>
            {
                Special::Url(UrlPart::Full)
            }
            "http.target" if self.enabled[URL_QUERY as usize] => Special::Url(UrlPart::Target),
            "url.query" if self.enabled[URL_QUERY as usize] => Special::Url(UrlPart::Query),
            _ => Special::None,
        };
        ctx
    }

    /// Whether [`Rules::value`] could change these bytes under `ctx`: false for most values,
    /// which then need not even be checked as UTF-8 here (the split checks them).
    pub fn could_change(&self, bytes: &[u8], ctx: &KeyCtx) -> bool {
        if ctx.allowed || bytes.is_empty() {
            return false;
        }
        if ctx.whole.is_some() || ctx.special != Special::None || ctx.custom != 0 {
            return true;
        }
        !self.detectors.is_empty() && Features::of_bytes(bytes).any(bytes.len())
    }

    /// Redacts one string value, pushing the number of each rule that fired onto `hits`.
    pub fn value(&self, text: &str, ctx: &KeyCtx, hits: &mut Vec<u16>) -> Verdict {
        if ctx.allowed || text.is_empty() || text.starts_with(MARKER) {
            return Verdict::Keep;
        }
        if let Some(rule) = ctx.whole {
            hits.push(rule);
            return match self.actions[rule as usize] {
                Action::Drop => Verdict::Drop,
                _ => Verdict::Replace(self.replacement(rule, text)),
            };
        }
        let mut current = Cow::Borrowed(text);
        match ctx.special {
            Special::Sql(dialect) => {
                if let Some(s) = sql_literals(&current, dialect) {
                    hits.push(DB_STATEMENT);
                    current = Cow::Owned(s);
                }
            }
            Special::Url(part) => {
                if let Some(s) = self.url(&current, part) {
                    hits.push(URL_QUERY);
                    current = Cow::Owned(s);
                }
            }
            Special::None => {}
        }
        if let Some(s) = self.text(&current, ctx.custom, hits) {
            current = Cow::Owned(s);
        }
        match current {
            Cow::Borrowed(_) => Verdict::Keep,
            Cow::Owned(s) => Verdict::Replace(s),
        }
    }

    /// Free text through the custom patterns in `custom` and every enabled detector, in turn.
    pub fn text(&self, text: &str, custom: u64, hits: &mut Vec<u16>) -> Option<String> {
        if custom == 0 && self.detectors.is_empty() {
            return None;
        }
        let mut current: Option<String> = None;
        let mut bits = custom;
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let c = &self.custom[i];
            if let Some(re) = &c.pattern {
                let now = current.as_deref().unwrap_or(text);
                if let Some(s) = self.replace_all(now, re, c.rule, |_| true, hits) {
                    current = Some(s);
                }
            }
        }
        let mut features = Features::of(current.as_deref().unwrap_or(text));
        if !features.any(current.as_deref().unwrap_or(text).len()) {
            return current;
        }
        for d in &self.detectors {
            let now = current.as_deref().unwrap_or(text);
            if !d.maybe(&features, now) {
                continue;
            }
            let rule = d.rule;
            let check = d.check;
            if let Some(s) = self.replace_all(now, &d.regex, rule, |c| check(c, now), hits) {
                // A marker holds a colon, which could start an assignment; nothing else a
                // detector looks for.
                features.mask |= ASSIGN;
                current = Some(s);
            }
        }
        current
    }

    /// Replaces each match of `re` that `check` accepts (the capture group `v` when the
    /// pattern has one, else the whole match), skipping matches inside an earlier marker.
    fn replace_all(
        &self,
        text: &str,
        re: &Regex,
        rule: u16,
        check: impl Fn(&regex::Captures) -> bool,
        hits: &mut Vec<u16>,
    ) -> Option<String> {
        // Most candidates do not match, and a find allocates no captures.
        let first = re.find(text)?.start();
        let mut out: Option<String> = None;
        let mut last = 0;
        for caps in re.captures_iter(&text[first..]) {
            let Some(m) = caps.name("v").or_else(|| caps.get(0)) else {
                continue;
            };
            let (start, end) = (first + m.start(), first + m.end());
            if m.as_str().is_empty()
                || m.as_str().starts_with(MARKER)
                || inside_marker(text, start)
                || !check(&caps)
            {
                continue;
            }
            let out = out.get_or_insert_with(|| String::with_capacity(text.len()));
            out.push_str(&text[last..start]);
            out.push_str(&self.replacement(rule, m.as_str()));
            last = end;
            hits.push(rule);
        }
        let mut out = out?;
        out.push_str(&text[last..]);
        Some(out)
    }

    /// `[REDACTED:<rule>]`, or with the keyed hash's first 8 bytes for the `hash` action.
    pub fn replacement(&self, rule: u16, value: &str) -> String {
        let name = self.name(rule);
        match (self.actions[rule as usize], &self.hmac) {
            (Action::Hash, Some(mac)) => {
                let mut mac = mac.clone();
                mac.update(value.as_bytes());
                let digest = mac.finalize().into_bytes();
                let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
                format!("{MARKER}{name}:{hex}]")
            }
            _ => format!("{MARKER}{name}]"),
        }
    }

    /// Sensitive query parameters' values, and a password in the authority.
    fn url(&self, url: &str, part: UrlPart) -> Option<String> {
        let (head, query_and_fragment) = match part {
            UrlPart::Query => ("", url),
            UrlPart::Full | UrlPart::Target => match url.find('?') {
                Some(q) => (&url[..q + 1], &url[q + 1..]),
                None => (url, ""),
            },
        };
        let mut changed = false;
        let mut out = String::with_capacity(url.len());
        // `scheme://user:password@host`: the password goes.
        let head = match (part, head.find("://")) {
            (UrlPart::Full, Some(s)) => {
                let auth_start = s + 3;
                let auth_end = head[auth_start..]
                    .find(['/', '?', '#'])
                    .map_or(head.len(), |e| auth_start + e);
                let authority = &head[auth_start..auth_end];
                match authority
                    .rfind('@')
                    .and_then(|at| authority[..at].find(':').map(|colon| (colon, at)))
                {
                    Some((colon, at)) if colon + 1 < at => {
                        changed = true;
                        out.push_str(&head[..auth_start + colon + 1]);
                        out.push_str(&self.replacement(URL_QUERY, &authority[colon + 1..at]));
                        &head[auth_start + at..]
                    }
                    _ => head,
                }
            }
            _ => head,
        };
        out.push_str(head);
        let (query, fragment) = match query_and_fragment.find('#') {
            Some(h) => query_and_fragment.split_at(h),
            None => (query_and_fragment, ""),
        };
        for (i, pair) in query.split('&').enumerate() {
            if i > 0 {
                out.push('&');
            }
            match pair.split_once('=') {
                Some((name, value))
                    if !value.is_empty()
                        && !value.starts_with(MARKER)
                        && self.sensitive_param(name) =>
                {
                    changed = true;
                    out.push_str(name);
                    out.push('=');
                    out.push_str(&self.replacement(URL_QUERY, value));
                }
                _ => out.push_str(pair),
            }
        }
        out.push_str(fragment);
        changed.then_some(out)
    }

    fn sensitive_param(&self, name: &str) -> bool {
        SENSITIVE_PARAMS
            .iter()
            .any(|p| p.eq_ignore_ascii_case(name))
            || self.sensitive_key(name)
    }

    fn sensitive_key(&self, key: &str) -> bool {
        self.sensitive
            .as_ref()
            .is_some_and(|r| SENSITIVE_WORDS.is_match(key) && r.is_match(key))
            || self
                .sensitive_user
                .as_ref()
                .is_some_and(|r| r.is_match(key))
    }
}

/// Whether `at` falls inside a `[REDACTED:...]` already in `text`.
fn inside_marker(text: &str, at: usize) -> bool {
    match text[..at].rfind(MARKER) {
        Some(open) => !text[open..at].contains(']'),
        None => false,
    }
}

/// A key glob (`*` any run) as a regex fragment.
fn glob_regex(glob: &str) -> String {
    glob.split('*')
        .map(regex::escape)
        .collect::<Vec<_>>()
        .join(".*")
}

/// One free-text detector.
struct Detector {
    rule: u16,
    regex: Regex,
    /// A cheap test that the pattern could match, run before it, on what one pass over the
    /// text found ([`Features`]).
    maybe: fn(&Features, &str) -> bool,
    /// What the pattern cannot say: is this match really one.
    check: fn(&regex::Captures, &str) -> bool,
}

/// What one pass over a text finds: which bytes a detector needs occur, and how many digits.
/// Most telemetry strings lack every combination a detector needs, so this pass (a table
/// lookup per byte, no branches) is all redaction costs them; the detectors' own checks
/// ([`Detector::maybe`]) look further only at texts that pass it.
#[derive(Default)]
pub struct Features {
    mask: u8,
    digits: u32,
}

const DIGIT: u8 = 1;
const AT: u8 = 2;
const ASSIGN: u8 = 4;
const DOT: u8 = 8;
const DASH: u8 = 16;
const UPPER_J: u8 = 32;
const UPPER_A: u8 = 64;
const LETTER_B: u8 = 128;

static CLASSES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut d = b'0';
    while d <= b'9' {
        t[d as usize] = DIGIT;
        d += 1;
    }
    t[b'@' as usize] = AT;
    t[b'=' as usize] = ASSIGN;
    t[b':' as usize] = ASSIGN;
    t[b'.' as usize] = DOT;
    t[b'-' as usize] = DASH;
    t[b'J' as usize] = UPPER_J;
    t[b'A' as usize] = UPPER_A;
    t[b'b' as usize] = LETTER_B;
    t[b'B' as usize] = LETTER_B;
    t
};

impl Features {
    pub fn of(text: &str) -> Features {
        Features::of_bytes(text.as_bytes())
    }

    pub fn of_bytes(text: &[u8]) -> Features {
        let mut f = Features::default();
        for &c in text {
            let class = CLASSES[c as usize];
            f.mask |= class;
            f.digits += u32::from(class & DIGIT);
        }
        f
    }

    fn has(&self, class: u8) -> bool {
        self.mask & class != 0
    }

    /// Whether any detector could match: 40 characters for an AWS secret key, else one of
    /// the bytes each needs.
    fn any(&self, len: usize) -> bool {
        len >= 40
            || self.digits >= 9
            || self.has(AT | ASSIGN | DASH | UPPER_J | UPPER_A | LETTER_B)
            || (self.has(DOT) && self.digits >= 4)
    }
}

static BEGIN: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new("-----BEGIN"));
static EYJ: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
    std::sync::LazyLock::new(|| memchr::memmem::Finder::new("eyJ"));

/// `AKIA` or `ASIA` somewhere.
fn aws_key_id(b: &[u8]) -> bool {
    memchr::memchr_iter(b'A', b).any(|i| matches!(b.get(i + 1..i + 4), Some(b"KIA" | b"SIA")))
}

/// `b` or `B` followed by `rest` (any case) somewhere: `bearer`, `basic`.
fn word_at_b(b: &[u8], rest: &[u8]) -> bool {
    memchr::memchr2_iter(b'b', b'B', b).any(|i| {
        b.get(i + 1..i + 1 + rest.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(rest))
    })
}

/// The longest run of digits, with single spaces or dashes between them.
fn digit_run(b: &[u8]) -> u32 {
    let (mut best, mut run, mut after_digit) = (0, 0, false);
    for &c in b {
        if c.is_ascii_digit() {
            run += 1;
            best = u32::max(best, run);
            after_digit = true;
        } else if after_digit && (c == b' ' || c == b'-') {
            after_digit = false;
        } else {
            run = 0;
            after_digit = false;
        }
    }
    best
}

/// The longest run of base64 characters.
fn base64_run(b: &[u8]) -> u32 {
    let (mut best, mut run) = (0, 0);
    for &c in b {
        if c.is_ascii_alphanumeric() || c == b'/' || c == b'+' {
            run += 1;
            best = u32::max(best, run);
        } else {
            run = 0;
        }
    }
    best
}

/// Names that end right before an `=` or `:` (spaces and a quote allowed between) in a
/// secret assignment, as the pattern of [`SECRET_ASSIGNMENT`] lists them.
const ASSIGNED: &[&[u8]] = &[
    b"password",
    b"passwd",
    b"passphrase",
    b"secret",
    b"token",
    b"key",
    b"auth",
    b"authorization",
    b"credential",
    b"credentials",
    b"sessionid",
    b"session_id",
    b"session-id",
    b"cookie",
];

/// Whether some `=` or `:` follows one of the [`ASSIGNED`] names: the pattern runs only then.
fn assignment(b: &[u8]) -> bool {
    memchr::memchr2_iter(b'=', b':', b).any(|at| {
        let mut end = at;
        while end > 0 && b[end - 1] == b' ' {
            end -= 1;
        }
        if end > 0 && matches!(b[end - 1], b'"' | b'\'') {
            end -= 1;
        }
        let name = &b[..end];
        ASSIGNED
            .iter()
            .any(|w| name.len() >= w.len() && name[name.len() - w.len()..].eq_ignore_ascii_case(w))
    })
}

impl Detector {
    fn maybe(&self, features: &Features, text: &str) -> bool {
        (self.maybe)(features, text)
    }

    /// In the order they run: the most specific first, so that a JWT inside a bearer header
    /// is named a JWT and a private key block is taken whole before its lines look like
    /// anything else.
    fn all() -> Vec<Detector> {
        let d = |rule, pattern: &str, maybe, check| Detector {
            rule,
            regex: Regex::new(pattern).expect("built-in pattern"),
            maybe,
            check,
        };
        vec![
            d(
                PRIVATE_KEY,
                r"-----BEGIN[A-Z ]*PRIVATE KEY(?: BLOCK)?-----(?s:.*?)(?:-----END[A-Z ]*PRIVATE KEY(?: BLOCK)?-----|\z)",
                |f, t| f.has(DASH) && BEGIN.find(t.as_bytes()).is_some(),
                |_, _| true,
            ),
            d(
                JWT,
                r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*",
                |f, t| f.has(UPPER_J) && EYJ.find(t.as_bytes()).is_some(),
                |c, _| jwt_header(&c[0]),
            ),
            d(
                AWS_ACCESS_KEY,
                r"\b(?:AKIA|ASIA)[A-Z2-7]{16}\b",
                |f, t| f.has(UPPER_A) && aws_key_id(t.as_bytes()),
                |_, _| true,
            ),
            d(
                AWS_SECRET_KEY,
                r"(?:^|[^A-Za-z0-9/+=])(?P<v>[A-Za-z0-9/+]{40})(?:$|[^A-Za-z0-9/+=])",
                // The cheaper test first: the run on most texts, the SIMD search on long ones.
                |_, t| match t.len() {
                    0..40 => false,
                    40..1024 => base64_run(t.as_bytes()) >= 40 && aws_context(t),
                    _ => aws_context(t) && base64_run(t.as_bytes()) >= 40,
                },
                |c, _| mixed(&c["v"]),
            ),
            d(
                BEARER_TOKEN,
                r"(?i)\bbearer\s+(?P<v>[A-Za-z0-9\-._~+/]+=*)",
                |f, t| f.has(LETTER_B) && word_at_b(t.as_bytes(), b"earer"),
                |c, _| bearer(&c["v"]),
            ),
            d(
                BASIC_AUTH,
                r"(?i)\bbasic\s+(?P<v>[A-Za-z0-9+/]{4,}={0,2})",
                |f, t| f.has(LETTER_B) && word_at_b(t.as_bytes(), b"asic"),
                |c, _| basic(&c["v"]),
            ),
            d(
                SECRET_ASSIGNMENT,
                r#"(?i)(?:password|passwd|passphrase|secret|token|api[_-]?key|apikey|access[_-]?key|secret[_-]?key|private[_-]?key|auth|authorization|credentials?|session[_-]?id|cookie)["']?\s*[:=]\s*(?:(?:bearer|basic|token)\s+)?["']?(?P<v>[^\s"'&,;}\])]+)"#,
                |f, t| f.has(ASSIGN) && assignment(t.as_bytes()),
                |_, _| true,
            ),
            d(
                CARD_NUMBER,
                r"\b(?:[0-9][ -]?){12,18}[0-9]\b",
                |f, t| f.digits >= 13 && digit_run(t.as_bytes()) >= 13,
                |c, _| card(&c[0]),
            ),
            d(
                EMAIL,
                r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}\b",
                |f, _| f.has(AT),
                |c, _| !c[0].starts_with('.'),
            ),
            d(
                US_SSN,
                r"\b(?P<v>[0-9]{3}-[0-9]{2}-[0-9]{4})\b",
                |f, t| f.digits >= 9 && f.has(DASH) && digit_run(t.as_bytes()) >= 9,
                |c, _| ssn(&c["v"]),
            ),
            d(
                IPV4,
                r"\b(?:[0-9]{1,3}\.){3}[0-9]{1,3}\b",
                |f, _| f.has(DOT) && f.digits >= 4,
                |c, _| c[0].split('.').all(|o| o.parse::<u8>().is_ok()),
            ),
        ]
    }
}

/// Words every built-in sensitive key glob contains: a key with none is not one, without
/// running the globs.
static SENSITIVE_WORDS: std::sync::LazyLock<aho_corasick::AhoCorasick> =
    std::sync::LazyLock::new(|| {
        words(&[
            "passw",
            "passphrase",
            "secret",
            "token",
            "api",
            "access",
            "private",
            "credential",
            "authorization",
            "cookie",
            "session",
        ])
    });

fn words(list: &[&str]) -> aho_corasick::AhoCorasick {
    // A DFA without prefilter: keys are short, where a byte-at-a-time table walk is fastest.
    aho_corasick::AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .kind(Some(aho_corasick::AhoCorasickKind::DFA))
        .prefilter(false)
        .build(list)
        .expect("built-in words")
}

/// A JWT's first part is base64url JSON naming its algorithm.
fn jwt_header(token: &str) -> bool {
    let header = token.split('.').next().unwrap_or("");
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .is_some_and(|v| v.get("alg").is_some())
}

/// 40 base64 characters are an AWS secret key only beside what names one.
fn aws_context(t: &str) -> bool {
    AWS_WORDS.is_match(t)
}

/// What names an AWS secret key, or an access key id beside one. Searched with a SIMD
/// prefilter: the texts that get here are long (40 base64 characters at least).
static AWS_WORDS: std::sync::LazyLock<aho_corasick::AhoCorasick> = std::sync::LazyLock::new(|| {
    aho_corasick::AhoCorasick::builder()
        .ascii_case_insensitive(true)
        .build(["aws", "secret", "akia", "asia"])
        .expect("built-in words")
});

/// Upper, lower case and a digit: random base64, not a word, a hex digest or a path.
fn mixed(v: &str) -> bool {
    v.bytes().any(|b| b.is_ascii_uppercase())
        && v.bytes().any(|b| b.is_ascii_lowercase())
        && v.bytes().any(|b| b.is_ascii_digit())
}

/// `Bearer` followed by prose (`bearer token required`) is not a credential.
fn bearer(v: &str) -> bool {
    v.len() >= 16 || (v.len() >= 8 && v.bytes().any(|b| b.is_ascii_digit()))
}

/// `Basic` credentials are base64 of `user:password`.
fn basic(v: &str) -> bool {
    base64::engine::general_purpose::STANDARD
        .decode(v)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .is_some_and(|s| s.contains(':'))
}

/// 13 to 19 digits, one separator style, a card network's first digit, and the Luhn check.
pub fn card(candidate: &str) -> bool {
    let seps: Vec<u8> = candidate.bytes().filter(|b| !b.is_ascii_digit()).collect();
    if seps.windows(2).any(|w| w[0] != w[1]) {
        return false;
    }
    let digits: Vec<u32> = candidate
        .bytes()
        .filter(u8::is_ascii_digit)
        .map(|b| u32::from(b - b'0'))
        .collect();
    (13..=19).contains(&digits.len()) && (2..=6).contains(&digits[0]) && luhn(&digits)
}

pub fn luhn(digits: &[u32]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let d = d * 2;
                if d > 9 {
                    d - 9
                } else {
                    d
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// Numbers the SSA never issues: area 000, 666 or 900-999, group 00, serial 0000.
fn ssn(v: &str) -> bool {
    let mut parts = v.split('-');
    let (Some(area), Some(group), Some(serial)) = (parts.next(), parts.next(), parts.next()) else {
        return false;
    };
    area != "000" && area != "666" && !area.starts_with('9') && group != "00" && serial != "0000"
}

/// The dialect of `db.system` / `db.system.name`.
pub fn dialect(system: &str) -> Dialect {
    match system {
        "mysql" | "mariadb" | "tidb" => Dialect::MySql,
        "mongodb" | "redis" | "memcached" | "elasticsearch" | "opensearch" | "dynamodb"
        | "aws.dynamodb" | "couchdb" | "couchbase" | "neo4j" | "cosmosdb" | "azure.cosmosdb"
        | "hbase" | "geode" | "influxdb" | "etcd" | "valkey" => Dialect::NotSql,
        "" => Dialect::Unknown,
        _ => Dialect::Standard,
    }
}

/// Statement keywords SQL starts with; `SET`/`GET` are left out, as Redis commands start so.
const SQL_STARTS: &[&str] = &[
    "select", "insert", "update", "delete", "with", "merge", "upsert", "replace", "call", "exec",
    "execute", "values", "create", "alter", "drop", "truncate",
];

/// The statement with every literal (string, number, dollar-quoted) replaced by `?`, or
/// `None` when it holds none or is not SQL. Identifiers (`"col"`, `` `col` ``, `t1`),
/// placeholders (`$1`, `?`, `:name`, `@p`) and comments are kept.
///
/// Hand-written: a regex cannot follow quoting (`'it''s'`, `"a'b"` as an identifier,
/// `$tag$...$tag$`), and the SQL parsers on crates.io refuse what they do not fully parse,
/// where a statement with an unknown extension must still lose its literals.
pub fn sql_literals(stmt: &str, dialect: Dialect) -> Option<String> {
    let dialect = match dialect {
        Dialect::NotSql => return None,
        Dialect::Unknown => {
            let first = stmt
                .trim_start_matches(|c: char| c.is_whitespace() || c == '(')
                .split(|c: char| !c.is_ascii_alphabetic())
                .next()
                .unwrap_or("");
            if !SQL_STARTS.iter().any(|k| k.eq_ignore_ascii_case(first)) {
                return None;
            }
            Dialect::Standard
        }
        d => d,
    };
    let b = stmt.as_bytes();
    let mut out = String::with_capacity(stmt.len());
    let mut changed = false;
    let mut i = 0;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' => {
                i = skip_quoted(b, i, b'\'', dialect == Dialect::MySql);
                out.push('?');
                changed = true;
            }
            b'"' if dialect == Dialect::MySql => {
                i = skip_quoted(b, i, b'"', true);
                out.push('?');
                changed = true;
            }
            b'"' | b'`' => {
                let end = skip_quoted(b, i, c, false);
                out.push_str(&stmt[i..end]);
                i = end;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                let end = b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |p| i + p);
                out.push_str(&stmt[i..end]);
                i = end;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let end =
                    memchr::memmem::find(&b[i + 2..], b"*/").map_or(b.len(), |p| i + 2 + p + 2);
                out.push_str(&stmt[i..end]);
                i = end;
            }
            b'$' => {
                // `$1` placeholder, or `$$...$$` / `$tag$...$tag$` (PostgreSQL).
                let tag_end = b[i + 1..]
                    .iter()
                    .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_'))
                    .map(|p| i + 1 + p);
                match tag_end {
                    Some(t) if b[t] == b'$' && !b[i + 1].is_ascii_digit() => {
                        let tag = &b[i..=t];
                        let end = memchr::memmem::find(&b[t + 1..], tag)
                            .map_or(b.len(), |p| t + 1 + p + tag.len());
                        out.push('?');
                        changed = true;
                        i = end;
                    }
                    _ => {
                        let end = tag_end.unwrap_or(b.len());
                        out.push_str(&stmt[i..end]);
                        i = end;
                    }
                }
            }
            c if c.is_ascii_digit()
                || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) =>
            {
                let after_ident =
                    i > 0 && (ident(b[i - 1]) || b[i - 1] == b'@' || b[i - 1] == b':');
                if after_ident {
                    out.push(c as char);
                    i += 1;
                    continue;
                }
                let mut j = i;
                if b[j] == b'0' && matches!(b.get(j + 1), Some(b'x' | b'X')) {
                    j += 2;
                    while j < b.len() && b[j].is_ascii_hexdigit() {
                        j += 1;
                    }
                } else {
                    while j < b.len() && (b[j].is_ascii_digit() || b[j] == b'.') {
                        j += 1;
                    }
                    if j < b.len() && matches!(b[j], b'e' | b'E') {
                        let mut k = j + 1;
                        if k < b.len() && matches!(b[k], b'+' | b'-') {
                            k += 1;
                        }
                        if k < b.len() && b[k].is_ascii_digit() {
                            j = k;
                            while j < b.len() && b[j].is_ascii_digit() {
                                j += 1;
                            }
                        }
                    }
                }
                out.push('?');
                changed = true;
                i = j;
            }
            c if ident(c) => {
                let end = b[i..]
                    .iter()
                    .position(|&c| !ident(c))
                    .map_or(b.len(), |p| i + p);
                out.push_str(&stmt[i..end]);
                i = end;
            }
            _ => {
                // One character, whole (it may be multi-byte).
                let ch = stmt[i..].chars().next().expect("in bounds");
                out.push(ch);
                i += ch.len_utf8();
            }
        }
    }
    changed.then_some(out)
}

/// The end of the quoted run opening at `start` (past its closing quote, or the end of the
/// text when it never closes): a doubled quote stays inside, and with `backslash` an escaped
/// character does too.
fn skip_quoted(b: &[u8], start: usize, quote: u8, backslash: bool) -> usize {
    let mut i = start + 1;
    while i < b.len() {
        if backslash && b[i] == b'\\' {
            i += 2;
            continue;
        }
        if b[i] == quote {
            if b.get(i + 1) == Some(&quote) {
                i += 2;
                continue;
            }
            return i + 1;
        }
        i += 1;
    }
    b.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redact::config::CustomRule;

    fn rules() -> Rules {
        Rules::new(&RedactionConfig::default()).unwrap()
    }

    /// Free text through the default rules: what it becomes, and which rules fired.
    fn text(t: &str) -> (String, Vec<&'static str>) {
        let r = rules();
        let mut hits = Vec::new();
        let out = r
            .text(t, r.plain().custom, &mut hits)
            .unwrap_or_else(|| t.to_string());
        (out, hits.iter().map(|h| BUILTIN[*h as usize]).collect())
    }

    fn kept(t: &str) {
        assert_eq!(text(t), (t.to_string(), vec![]), "{t:?} must be kept");
    }

    #[test]
    fn aws_access_key_ids_and_keys_named_or_beside_one() {
        assert_eq!(
            text("using AKIAIOSFODNN7EXAMPLE for s3"),
            (
                "using [REDACTED:aws_access_key] for s3".into(),
                vec!["aws_access_key"]
            )
        );
        assert_eq!(
            text("creds ASIAY34FZKBOKMUTVV7A wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"),
            (
                "creds [REDACTED:aws_access_key] [REDACTED:aws_secret_key]".into(),
                vec!["aws_access_key", "aws_secret_key"]
            )
        );
        // Resource ids with other prefixes, and lower case, are not credentials.
        kept("role AROAIOSFODNN7EXAMPLE1");
        kept("akiaiosfodnn7example");
        // 40 characters alone: a git SHA, a base64 image name, a path.
        kept("deployed commit 3f786850e387550fdab836ed7e6dc881de23001b");
        kept("image iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYA.png");
        kept("a secret? 0123456789abcdef0123456789abcdef01234567");
    }

    #[test]
    fn authorization_headers_keep_their_scheme() {
        assert_eq!(
            text("Authorization: Bearer 8f1e2c9a7b6d5e4f3a2b1c0d"),
            (
                "Authorization: Bearer [REDACTED:bearer_token]".into(),
                vec!["bearer_token"]
            )
        );
        // dXNlcjpodW50ZXIy is user:hunter2.
        assert_eq!(
            text("auth header was Basic dXNlcjpodW50ZXIy"),
            (
                "auth header was Basic [REDACTED:basic_auth]".into(),
                vec!["basic_auth"]
            )
        );
        kept("bearer token required");
        kept("Basic authentication failed for realm");
        kept("basic QUJDREVGR0g="); // base64 of ABCDEFGH: no user:password
    }

    #[test]
    fn jwts_are_checked_by_their_header() {
        let jwt = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U";
        assert_eq!(
            text(&format!("token {jwt} expired")),
            ("token [REDACTED:jwt] expired".into(), vec!["jwt"])
        );
        assert_eq!(
            text(&format!("Authorization: Bearer {jwt}")).0,
            "Authorization: Bearer [REDACTED:jwt]"
        );
        // Starts like one, but the header is not JSON with "alg".
        kept("eyJustKidding.eyJustKidding.abc");
    }

    #[test]
    fn private_key_blocks_go_whole_even_cut_short() {
        let pem = "key: -----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\nabc\n-----END RSA PRIVATE KEY----- loaded";
        assert_eq!(
            text(pem),
            (
                "key: [REDACTED:private_key] loaded".into(),
                vec!["private_key"]
            )
        );
        assert_eq!(
            text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA").0,
            "[REDACTED:private_key]"
        );
        kept("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----");
    }

    #[test]
    fn secrets_assigned_in_free_text_whatever_their_shape() {
        assert_eq!(
            text("login password=hunter2 user=bob").0,
            "login password=[REDACTED:secret_assignment] user=bob"
        );
        assert_eq!(
            text(r#"{"client_secret": "a b", "api_key":"k-1", "x": 1}"#).0,
            r#"{"client_secret": "[REDACTED:secret_assignment] b", "api_key":"[REDACTED:secret_assignment]", "x": 1}"#
        );
        assert_eq!(
            text("retrying with token: abc").0,
            "retrying with token: [REDACTED:secret_assignment]"
        );
        kept("prompt_tokens=512 completion_tokens=20");
        kept("author=bob token_count=5");
        kept("GET /api/cart?page=2");
    }

    #[test]
    fn card_numbers_only_when_luhn_and_network_agree() {
        for card in [
            "4111111111111111",
            "4111 1111 1111 1111",
            "5500-0000-0000-0004",
            "378282246310005",
        ] {
            assert_eq!(
                text(&format!("paid with {card}.")),
                (
                    "paid with [REDACTED:card_number].".into(),
                    vec!["card_number"]
                ),
                "{card}"
            );
        }
        // A 16-digit order id that fails Luhn, a nanosecond timestamp, mixed separators,
        // a UUID, and digits glued to letters.
        kept("order 4111111111111112 shipped");
        kept("at 1732900000123456789 ns");
        kept("4111-1111 1111-1111");
        kept("id 123e4567-e89b-12d3-a456-426614174000");
        kept("sku4111111111111111");
        assert!(luhn(&[7, 9, 9, 2, 7, 3, 9, 8, 7, 1, 3]));
    }

    #[test]
    fn emails_ssns_and_optional_ipv4() {
        assert_eq!(
            text("invite sent to jane.doe+shop@example.co.uk today"),
            (
                "invite sent to [REDACTED:email] today".into(),
                vec!["email"]
            )
        );
        kept("user@localhost");
        kept("@mention in #channel");
        assert_eq!(
            text("ssn 078-05-1120 on file").0,
            "ssn [REDACTED:us_ssn] on file"
        );
        kept("ssn 000-12-3456, 666-12-3456, 900-12-3456, 123-00-4567, 123-45-0000");
        kept("call 415-555-0100");
        // Off by default.
        kept("from 203.0.113.7");
        let mut config = RedactionConfig::default();
        config.detectors.ipv4 = true;
        let r = Rules::new(&config).unwrap();
        let mut hits = vec![];
        assert_eq!(
            r.text("from 203.0.113.7 v1.2.3.400", 0, &mut hits).unwrap(),
            "from [REDACTED:ipv4] v1.2.3.400"
        );
    }

    #[test]
    fn markers_are_not_redacted_again() {
        let once = text("password=hunter2 mail bob@example.com").0;
        assert_eq!(text(&once), (once.clone(), vec![]));
    }

    fn value(r: &Rules, key: &str, v: &str) -> Verdict {
        let mut hits = Vec::new();
        r.value(v, &r.key(key, &r.plain()), &mut hits)
    }

    fn replaced(s: &str) -> Verdict {
        Verdict::Replace(s.to_string())
    }

    #[test]
    fn sensitive_keys_take_the_whole_value() {
        let r = rules();
        for key in [
            "http.request.header.authorization",
            "password",
            "db.Password",
            "app.client_secret",
            "http.request.header.cookie",
            "http.response.header.set-cookie",
            "x-api-key",
            "auth_token",
        ] {
            assert_eq!(
                value(&r, key, "anything at all"),
                replaced("[REDACTED:sensitive_key]"),
                "{key}"
            );
        }
        for key in [
            "gen_ai.usage.input_tokens",
            "aws.secretsmanager.secret.arn",
            "cache.key",
            "http.route",
        ] {
            assert_eq!(value(&r, key, "plain"), Verdict::Keep, "{key}");
        }
    }

    #[test]
    fn sql_literals_become_placeholders_respecting_quotes() {
        let sql = |s: &str, d| sql_literals(s, d);
        assert_eq!(
            sql(
                "SELECT * FROM users WHERE email = 'bob@x.com' AND id = 42 AND t1.x > -3.5e2",
                Dialect::Standard
            )
            .unwrap(),
            "SELECT * FROM users WHERE email = ? AND id = ? AND t1.x > -?"
        );
        assert_eq!(
            sql(
                r#"UPDATE "order" SET note = 'it''s "fine"', n=0x1F WHERE "col1" = $1"#,
                Dialect::Standard
            )
            .unwrap(),
            r#"UPDATE "order" SET note = ?, n=? WHERE "col1" = $1"#
        );
        assert_eq!(
            sql(
                r#"SELECT * FROM t WHERE a = "x\"y" AND b = 'p\'q' -- 5"#,
                Dialect::MySql
            )
            .unwrap(),
            "SELECT * FROM t WHERE a = ? AND b = ? -- 5"
        );
        assert_eq!(
            sql(
                "select $tag$secret 'body'$tag$, $$x$$ from f(:name, @p1, ?)",
                Dialect::Unknown
            )
            .unwrap(),
            "select ?, ? from f(:name, @p1, ?)"
        );
        // Placeholders only: nothing to change. Not SQL: left alone.
        assert_eq!(
            sql("SELECT id FROM products WHERE id = $1", Dialect::Standard),
            None
        );
        assert_eq!(sql("SET session:1 'tok'", Dialect::Unknown), None);
        assert_eq!(
            sql(
                r#"{"find": "users", "filter": {"age": 30}}"#,
                Dialect::NotSql
            ),
            None
        );
        assert_eq!(
            sql("SELECT 'unterminated", Dialect::Standard).unwrap(),
            "SELECT ?"
        );
        assert_eq!(dialect("postgresql"), Dialect::Standard);
        assert_eq!(dialect("mongodb"), Dialect::NotSql);
    }

    #[test]
    fn urls_lose_sensitive_parameters_and_passwords_only() {
        let r = rules();
        assert_eq!(
            value(&r, "url.full", "https://bob:pw@api.example.com/v1/x?id=7&access_token=abc&sig=zz#frag"),
            replaced("https://bob:[REDACTED:url_query]@api.example.com/v1/x?id=7&access_token=[REDACTED:url_query]&sig=[REDACTED:url_query]#frag")
        );
        assert_eq!(
            value(&r, "url.query", "q=shoes&api_key=k1"),
            replaced("q=shoes&api_key=[REDACTED:url_query]")
        );
        assert_eq!(
            value(&r, "http.target", "/login?user=bob&password=x"),
            replaced("/login?user=bob&password=[REDACTED:url_query]")
        );
        assert_eq!(
            value(&r, "url.full", "http://cart:8080/internal/v1/lookup?id=12"),
            Verdict::Keep
        );
    }

    #[test]
    fn actions_hash_with_a_key_and_drop() {
        let mut config = RedactionConfig::default();
        config.actions.insert("email".into(), Action::Hash);
        config.actions.insert("sensitive_key".into(), Action::Drop);
        assert!(
            Rules::new(&config).unwrap_err().contains("hash_key"),
            "an unkeyed hash is refused"
        );
        config.hash_key = Some(crate::config::Secret("k".repeat(32)));
        let a = Rules::new(&config).unwrap();
        config.hash_key = Some(crate::config::Secret("other-key-".repeat(4)));
        let b = Rules::new(&config).unwrap();
        let mut hits = vec![];
        let ha = a.text("from bob@example.com", 0, &mut hits).unwrap();
        assert!(
            ha.starts_with("from [REDACTED:email:")
                && ha.len() == "from [REDACTED:email:]".len() + 16,
            "{ha}"
        );
        assert_eq!(
            a.text("from bob@example.com", 0, &mut hits).unwrap(),
            ha,
            "stable"
        );
        assert_ne!(
            b.text("from bob@example.com", 0, &mut hits).unwrap(),
            ha,
            "keyed"
        );
        assert_eq!(value(&a, "password", "x"), Verdict::Drop);
    }

    #[test]
    fn custom_rules_and_allow_lists() {
        let mut config = RedactionConfig {
            allow_keys: vec!["test.fixture.*".into()],
            ..Default::default()
        };
        config.rules = vec![
            CustomRule {
                name: "order_ref".into(),
                pattern: Some(r"ORD-\d{6}".into()),
                keys: vec![],
                action: Action::Mask,
            },
            CustomRule {
                name: "customer".into(),
                pattern: None,
                keys: vec!["app.customer.*".into()],
                action: Action::Mask,
            },
        ];
        let r = Rules::new(&config).unwrap();
        assert_eq!(
            value(&r, "note", "ref ORD-123456"),
            replaced("ref [REDACTED:order_ref]")
        );
        assert_eq!(
            value(&r, "app.customer.name", "Jane"),
            replaced("[REDACTED:customer]")
        );
        assert_eq!(
            value(&r, "test.fixture.card", "4111111111111111"),
            Verdict::Keep
        );
        // Refused with the rule's name and the reason.
        config.rules[0].pattern = Some("ORD-(".into());
        let e = Rules::new(&config).unwrap_err();
        assert!(
            e.contains("\"order_ref\"") && e.contains("invalid pattern"),
            "{e}"
        );
        config.rules[0].pattern = None;
        assert!(Rules::new(&config).unwrap_err().contains("needs a pattern"));
        let mut config = RedactionConfig::default();
        config.actions.insert("no_such_rule".into(), Action::Mask);
        assert!(Rules::new(&config).unwrap_err().contains("no_such_rule"));
    }
}
