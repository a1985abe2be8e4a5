//! Rules users add for their own logs: which lines of which workloads are
//! failed logins, and where the address is.
//!
//! A rule reads a line in one of three ways: a regular expression with
//! named captures (`addr`, and optionally `user` and `forwarded_for`),
//! JSON field paths, or logfmt keys. It is checked when it loads: an
//! address captured after free text a client could fill (`.*`, `[^"]*`)
//! without the pattern being anchored on the other side is refused, since
//! a client could then write an address of its choosing where the rule
//! looks; so is a pattern with no literal text, which the detector could
//! not skip lines with.

use std::collections::BTreeMap;

use regex::Regex;
use regex_syntax::hir::{Class, Hir, HirKind, Look};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{InvalidLogConfig, Scope};

/// One rule, as written in `logs.brute_force.rules`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// Its name, in findings' evidence and in `remedyctl rules test`.
    pub name: String,
    /// The sources it reads; every line when empty.
    #[serde(rename = "match", default)]
    pub scope: Scope,
    /// A regular expression with an `addr` capture.
    #[serde(default)]
    pub regex: Option<String>,
    /// JSON objects, one per line.
    #[serde(default)]
    pub json: Option<FieldsSpec>,
    /// logfmt (`key=value key="quoted value"`).
    #[serde(default)]
    pub logfmt: Option<FieldsSpec>,
    /// Whether a line it reads is a failed login (`true`), or a line that
    /// must never count, whatever later rules say (`false`).
    #[serde(default = "counts_by_default")]
    pub counts: bool,
}

fn counts_by_default() -> bool {
    true
}

/// Where a structured line keeps what a rule needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldsSpec {
    /// Fields and the values that make a line one of this rule's (every
    /// field listed must hold one of its values).
    pub when: BTreeMap<String, Vec<String>>,
    /// The field holding the peer's address.
    pub addr: String,
    /// The field holding the account name.
    #[serde(default)]
    pub user: Option<String>,
    /// The field holding the `X-Forwarded-For` (or `Forwarded`) header the
    /// peer sent; believed only when the peer is a trusted proxy.
    #[serde(default)]
    pub forwarded_for: Option<String>,
}

/// What a rule read from a line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Read<'a> {
    /// The line is the rule's, with these fields.
    Fields {
        /// The peer's address as written.
        addr: Option<std::borrow::Cow<'a, str>>,
        /// The account.
        user: Option<std::borrow::Cow<'a, str>>,
        /// The forwarding header.
        forwarded_for: Option<std::borrow::Cow<'a, str>>,
    },
    /// The line is not the rule's.
    NotMine,
    /// A field the rule reads appears twice: the line was not written by
    /// an encoder that escapes its values, and which copy is the daemon's
    /// cannot be told.
    Ambiguous,
}

#[derive(Debug, Clone)]
enum Reader {
    Regex(Regex),
    Json(FieldsSpec),
    Logfmt(FieldsSpec),
}

/// A rule, checked and compiled.
#[derive(Debug, Clone)]
pub struct Rule {
    /// As written.
    pub spec: RuleSpec,
    reader: Reader,
    /// Literal text every line of the rule contains (the prefilter's).
    pub literals: Vec<String>,
}

const CAPTURES: &[&str] = &["addr", "user", "forwarded_for"];

impl Rule {
    /// Checks and compiles `spec`, the `index`-th rule.
    pub fn new(spec: RuleSpec, index: usize) -> Result<Rule, InvalidLogConfig> {
        let at = |field: &str| format!("rules[{index}].{field}");
        if spec.name.trim().is_empty() || spec.name.len() > 64 || spec.name.contains([',', ' ']) {
            return Err(InvalidLogConfig::new(
                at("name"),
                "must be a name of 1 to 64 characters without spaces or commas",
            ));
        }
        spec.scope.validate(&at("match"))?;
        let kinds = [spec.regex.is_some(), spec.json.is_some(), spec.logfmt.is_some()];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err(InvalidLogConfig::new(at("regex"), "a rule has exactly one of regex, json, logfmt"));
        }
        let (reader, literals) = if let Some(pattern) = &spec.regex {
            let (re, literal) = check_regex(pattern).map_err(|m| InvalidLogConfig::new(at("regex"), m))?;
            (Reader::Regex(re), vec![literal])
        } else {
            let (fields, kind) = match (&spec.json, &spec.logfmt) {
                (Some(f), _) => (f.clone(), "json"),
                (_, Some(f)) => (f.clone(), "logfmt"),
                (None, None) => {
                    return Err(InvalidLogConfig::new(at("regex"), "a rule has exactly one of regex, json, logfmt"));
                }
            };
            let literals =
                check_fields(&fields, kind).map_err(|(f, m)| InvalidLogConfig::new(at(&format!("{kind}.{f}")), m))?;
            (if kind == "json" { Reader::Json(fields) } else { Reader::Logfmt(fields) }, literals)
        };
        Ok(Rule { spec, reader, literals })
    }

    /// The rule's name.
    pub fn name(&self) -> &str {
        &self.spec.name
    }

    /// Whether the rule reads lines of `line`'s source.
    pub fn scope_matches(&self, line: &super::LineRef<'_>) -> bool {
        self.spec.scope.matches(line)
    }

    /// Reads `message` (the caller has checked the scope).
    pub fn read<'a>(&self, message: &'a str) -> Read<'a> {
        use std::borrow::Cow;
        match &self.reader {
            Reader::Regex(re) => match re.captures(message) {
                None => Read::NotMine,
                Some(c) => {
                    let text = |n: &str| c.name(n).map(|m| Cow::Borrowed(m.as_str()));
                    Read::Fields { addr: text("addr"), user: text("user"), forwarded_for: text("forwarded_for") }
                }
            },
            Reader::Json(fields) => {
                let Some(object) = strict_json(message) else { return Read::NotMine };
                let Ok(object) = object else { return Read::Ambiguous };
                let get = |path: &str| json_path(&object, path);
                if !fields.when.iter().all(|(k, values)| get(k).is_some_and(|v| values.contains(&v))) {
                    return Read::NotMine;
                }
                let field = |path: Option<&str>| path.and_then(get).map(Cow::Owned);
                Read::Fields {
                    addr: field(Some(&fields.addr)),
                    user: field(fields.user.as_deref()),
                    forwarded_for: field(fields.forwarded_for.as_deref()),
                }
            }
            Reader::Logfmt(fields) => {
                let Some(pairs) = logfmt(message) else { return Read::NotMine };
                let read = |key: &str| -> Result<Option<Cow<'a, str>>, ()> {
                    let mut found = pairs.iter().filter(|(k, _)| k == key);
                    let first = found.next().map(|(_, v)| v.clone());
                    if found.next().is_some() { Err(()) } else { Ok(first) }
                };
                let mut keys: Vec<&str> = fields.when.keys().map(String::as_str).collect();
                keys.push(&fields.addr);
                keys.extend(fields.user.as_deref());
                keys.extend(fields.forwarded_for.as_deref());
                if keys.iter().any(|k| read(k).is_err()) {
                    return Read::Ambiguous;
                }
                let value = |k: &str| read(k).ok().flatten();
                if !fields.when.iter().all(|(k, values)| value(k).is_some_and(|v| values.iter().any(|w| *w == v))) {
                    return Read::NotMine;
                }
                Read::Fields {
                    addr: value(&fields.addr),
                    user: fields.user.as_deref().and_then(value),
                    forwarded_for: fields.forwarded_for.as_deref().and_then(value),
                }
            }
        }
    }
}

/// Checks the fields of a JSON or logfmt rule; the literals are the
/// `when` values as they appear in a line.
fn check_fields(fields: &FieldsSpec, kind: &str) -> Result<Vec<String>, (String, String)> {
    let path_ok = |p: &str| !p.is_empty() && !p.split('.').any(str::is_empty) && !p.contains(' ');
    if fields.when.is_empty() {
        return Err((
            "when".into(),
            "must name at least one field and its values, such as {event: [login_failed]}".into(),
        ));
    }
    for (field, values) in &fields.when {
        if !path_ok(field) {
            return Err((format!("when.{field}"), "is not a field name".into()));
        }
        if values.is_empty() || values.iter().any(|v| v.len() < 3) {
            return Err((
                format!("when.{field}"),
                "must list values of 3 characters or more: the detector skips lines that contain none of them".into(),
            ));
        }
    }
    for (name, path) in
        [("addr", Some(&fields.addr)), ("user", fields.user.as_ref()), ("forwarded_for", fields.forwarded_for.as_ref())]
    {
        if let Some(p) = path
            && (!path_ok(p) || (kind == "logfmt" && p.contains('.')))
        {
            return Err((
                name.into(),
                format!("`{p}` is not a {} field name", if kind == "json" { "JSON" } else { "logfmt" }),
            ));
        }
    }
    // The values as written in a line: JSON escapes some characters, and a
    // value with any of them would not be found as written here.
    let mut literals = Vec::new();
    for values in fields.when.values() {
        for v in values {
            if v.contains(['"', '\\']) || v.chars().any(char::is_control) {
                return Err(("when".into(), format!("`{v}` has quotes, backslashes or control characters")));
            }
            literals.push(v.clone());
        }
    }
    Ok(literals)
}

/// Compiles `pattern` and checks that its `addr` capture is anchored where
/// a daemon writes it; returns the longest literal every match contains.
fn check_regex(pattern: &str) -> Result<(Regex, String), String> {
    let re = Regex::new(pattern).map_err(|e| format!("does not compile: {}", first_line(&e.to_string())))?;
    let names: Vec<&str> = re.capture_names().flatten().collect();
    if let Some(other) = names.iter().find(|n| !CAPTURES.contains(n)) {
        return Err(format!("capture `{other}` is not one of addr, user, forwarded_for"));
    }
    if !names.contains(&"addr") {
        return Err("has no `addr` capture (write (?P<addr>...) where the daemon writes the address)".into());
    }
    let hir = regex_syntax::ParserBuilder::new()
        .build()
        .parse(pattern)
        .map_err(|e| format!("does not parse: {}", first_line(&e.to_string())))?;
    let items = flatten(&hir);
    let at = items.iter().position(|h| is_capture(h, "addr")).ok_or_else(|| {
        "the `addr` capture sits inside an alternation, a repetition or an optional group; \
         put it in the pattern's main sequence, where the daemon writes the address"
            .to_owned()
    })?;
    if let HirKind::Capture(c) = items[at].kind()
        && free_text(&c.sub)
    {
        return Err("the `addr` capture can match spaces (free text): capture the address alone, such as (?P<addr>[0-9a-fA-F.:]+)".into());
    }
    let starts = matches!(items.first().map(|h| h.kind()), Some(HirKind::Look(Look::Start | Look::StartLF)));
    let ends = matches!(items.last().map(|h| h.kind()), Some(HirKind::Look(Look::End | Look::EndLF)));
    let clean_before = starts && !items[..at].iter().any(|h| free_text(h));
    let clean_after = ends && !items[at + 1..].iter().any(|h| free_text(h));
    if !(clean_before || clean_after) {
        let why = match (starts, ends) {
            (false, false) => "the pattern is not anchored (no ^ at its start nor $ at its end), so the `addr` \
                               capture can match an address written anywhere in the line, by a client too"
                .to_owned(),
            _ => "the `addr` capture follows free text a client may fill (.*, .+, [^\"]* and the like) and the \
                  pattern is not anchored with $ after it by fields without free text, so a client could write \
                  an address where the rule looks"
                .to_owned(),
        };
        return Err(format!(
            "{why}; describe the fields between the address and the anchor (^ or $) without free text"
        ));
    }
    let literal = literals(&items).into_iter().max_by_key(String::len).filter(|l| l.len() >= 3).ok_or_else(|| {
        "has no literal text of 3 bytes or more outside optional parts: the detector could not skip the lines \
         it cannot match, and would run it on every line"
            .to_owned()
    })?;
    Ok((re, literal))
}

fn first_line(s: &str) -> String {
    s.lines().rfind(|l| !l.trim().is_empty()).unwrap_or_default().trim().to_owned()
}

/// The pattern as a sequence: nested sequences and unnamed groups opened.
fn flatten(hir: &Hir) -> Vec<&Hir> {
    match hir.kind() {
        HirKind::Concat(items) => items.iter().flat_map(flatten).collect(),
        HirKind::Capture(c) if c.name.is_none() => flatten(&c.sub),
        _ => vec![hir],
    }
}

fn is_capture(hir: &Hir, name: &str) -> bool {
    matches!(hir.kind(), HirKind::Capture(c) if c.name.as_deref() == Some(name))
}

/// Whether `hir` can match text of varying length that includes a space:
/// a field a client may fill with anything, another field's syntax
/// included.
fn free_text(hir: &Hir) -> bool {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) | HirKind::Literal(_) | HirKind::Class(_) => false,
        HirKind::Repetition(r) => r.max != Some(r.min) && matches_space(&r.sub) || free_text(&r.sub),
        HirKind::Capture(c) => free_text(&c.sub),
        HirKind::Concat(items) => items.iter().any(free_text),
        HirKind::Alternation(items) => items.iter().any(free_text),
    }
}

/// Whether `hir` can match a space or a tab anywhere.
fn matches_space(hir: &Hir) -> bool {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => false,
        HirKind::Literal(l) => l.0.iter().any(|b| *b == b' ' || *b == b'\t'),
        HirKind::Class(Class::Unicode(c)) => {
            c.ranges().iter().any(|r| r.start() <= ' ' && ' ' <= r.end() || r.start() <= '\t' && '\t' <= r.end())
        }
        HirKind::Class(Class::Bytes(c)) => {
            c.ranges().iter().any(|r| r.start() <= b' ' && b' ' <= r.end() || r.start() <= b'\t' && b'\t' <= r.end())
        }
        HirKind::Repetition(r) => matches_space(&r.sub),
        HirKind::Capture(c) => matches_space(&c.sub),
        HirKind::Concat(items) | HirKind::Alternation(items) => items.iter().any(matches_space),
    }
}

/// The runs of literal text in the main sequence.
fn literals(items: &[&Hir]) -> Vec<String> {
    let mut out = Vec::new();
    let mut run: Vec<u8> = Vec::new();
    for item in items {
        match item.kind() {
            HirKind::Literal(l) => run.extend_from_slice(&l.0),
            HirKind::Capture(c) => {
                if let HirKind::Literal(l) = c.sub.kind() {
                    run.extend_from_slice(&l.0);
                } else {
                    out.push(std::mem::take(&mut run));
                }
            }
            _ => out.push(std::mem::take(&mut run)),
        }
    }
    out.push(run);
    out.into_iter().filter_map(|b| String::from_utf8(b).ok()).filter(|s| !s.is_empty()).collect()
}

/// A JSON object, refusing duplicate keys at any depth: `Some(Err(()))`
/// when a key repeats, `None` when the line is not a JSON object.
pub fn strict_json(line: &str) -> Option<Result<serde_json::Map<String, Value>, ()>> {
    let line = line.trim();
    if !line.starts_with('{') {
        return None;
    }
    match serde_json::from_str::<Strict>(line) {
        Ok(Strict(Value::Object(map))) => Some(Ok(map)),
        Ok(_) => None,
        Err(e) if e.to_string().starts_with(DUPLICATE) => Some(Err(())),
        Err(_) => None,
    }
}

const DUPLICATE: &str = "duplicate key";

/// A JSON value whose objects have no repeated keys.
struct Strict(Value);

impl<'de> Deserialize<'de> for Strict {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_any(StrictVisitor).map(Strict)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::new();
        while let Some(Strict(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Strict(value) = map.next_value()?;
            if out.insert(key.clone(), value).is_some() {
                return Err(serde::de::Error::custom(format!("{DUPLICATE} `{key}`")));
            }
        }
        Ok(Value::Object(out))
    }
}

/// The value at a dotted path, as text: strings as they are, numbers and
/// booleans written out; objects, arrays and null are not values here.
pub fn json_path(object: &serde_json::Map<String, Value>, path: &str) -> Option<String> {
    let mut parts = path.split('.');
    let mut value = object.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A logfmt line as key and value pairs, in order; `None` when it is not
/// logfmt (a key with no `=`, an unterminated quote). Quoted values
/// unescape `\"` and `\\`.
pub fn logfmt(line: &str) -> Option<Vec<(String, std::borrow::Cow<'_, str>)>> {
    use std::borrow::Cow;
    let mut out = Vec::new();
    let mut rest = line.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        if key.is_empty() || key.contains([' ', '"']) {
            return None;
        }
        let (value, after) = if let Some(quoted) = after.strip_prefix('"') {
            let mut value = String::new();
            let mut chars = quoted.char_indices();
            let end = loop {
                let (i, c) = chars.next()?;
                match c {
                    '\\' => value.push(chars.next()?.1),
                    '"' => break i,
                    c => value.push(c),
                }
            };
            let after = &quoted[end + 1..];
            if !(after.is_empty() || after.starts_with(' ')) {
                return None;
            }
            (Cow::Owned(value), after)
        } else {
            let (v, a) = after.split_once(' ').unwrap_or((after, ""));
            if v.contains('"') {
                return None;
            }
            (Cow::Borrowed(v), a)
        };
        out.push((key.to_owned(), value));
        rest = after.trim_start();
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(spec: &str) -> Result<Rule, InvalidLogConfig> {
        let spec: RuleSpec = crate::config::parse_yaml("rules.yaml", spec).unwrap_or_else(|e| panic!("{e}"));
        Rule::new(spec, 0)
    }

    fn refused(spec: &str) -> (String, String) {
        let e = rule(spec).expect_err("refused");
        (e.field, e.message)
    }

    fn addr_of(rule: &Rule, line: &str) -> Option<String> {
        match rule.read(line) {
            Read::Fields { addr, .. } => addr.map(|a| a.into_owned()),
            _ => None,
        }
    }

    #[test]
    fn a_regex_rule_is_refused_unless_its_address_is_anchored_where_the_daemon_writes_it() {
        // Anchored at the start, fields without free text before it.
        let ok = rule("name: a\nregex: '^(?P<addr>[0-9a-f.:]+) login failed for (?P<user>.*)$'").expect("anchored");
        assert_eq!(ok.literals, vec![" login failed for ".to_owned()]);
        // Anchored at the end, free text only before.
        rule("name: b\nregex: '^auth: denied user=(?P<user>.*) ip=(?P<addr>[0-9a-f.:]+) port=\\d+$'")
            .expect("end-anchored");

        let (field, why) = refused("name: c\nregex: 'login failed from (?P<addr>\\S+)'");
        assert_eq!(field, "rules[0].regex");
        assert!(why.contains("not anchored"), "{why}");
        let (_, why) = refused("name: d\nregex: '^login failed for (?P<user>.*) from (?P<addr>\\S+)'");
        assert!(why.contains("follows free text"), "{why}");
        let (_, why) = refused("name: e\nregex: '^msg=\"[^\"]*\" ip=(?P<addr>\\S+) ua=\"(?P<user>.*)\"$'");
        assert!(why.contains("follows free text"), "free text on both sides: {why}");
        let (_, why) = refused("name: f\nregex: '^(?P<addr>.+) failed$'");
        assert!(why.contains("can match spaces"), "{why}");
        let (_, why) = refused("name: g\nregex: '^(?:(?P<addr>\\S+) failed|x)$'");
        assert!(why.contains("alternation"), "{why}");
        let (_, why) = refused("name: h\nregex: '^(?P<addr>\\S+) (?P<who>\\S+)$'");
        assert!(why.contains("`who`"), "{why}");
        let (_, why) = refused("name: i\nregex: '^(?P<addr>\\S+) \\S+$'");
        assert!(why.contains("literal"), "{why}");
        let (_, why) = refused("name: j\nregex: '^(?P<user>\\S+) failed$'");
        assert!(why.contains("no `addr`"), "{why}");
        let (field, _) = refused("name: k\nregex: '^(?P<addr>'");
        assert_eq!(field, "rules[0].regex");
        let (field, _) =
            refused("name: l\njson: {when: {event: [login_failed]}, addr: ip}\nlogfmt: {when: {event: [x]}, addr: ip}");
        assert_eq!(field, "rules[0].regex");
        let (field, why) = refused("name: m\njson: {when: {event: [no]}, addr: ip}");
        assert_eq!(field, "rules[0].json.when.event");
        assert!(why.contains("3 characters"), "{why}");
        let (field, _) = refused("name: n\nlogfmt: {when: {event: [login_failed]}, addr: client.ip}");
        assert_eq!(field, "rules[0].logfmt.addr");
        let (field, _) = refused("name: two words\nlogfmt: {when: {event: [login_failed]}, addr: ip}");
        assert_eq!(field, "rules[0].name");
    }

    #[test]
    fn structured_rules_read_fields_and_refuse_repeated_keys() {
        let json =
            rule("name: j\njson: {when: {event: [login_failed]}, addr: client.ip, user: user.name}").expect("json");
        let line = r#"{"event":"login_failed","client":{"ip":"203.0.113.9"},"user":{"name":"alice 192.0.2.1"},"msg":"from 192.0.2.2"}"#;
        assert_eq!(addr_of(&json, line), Some("203.0.113.9".into()));
        assert_eq!(json.read(r#"{"event":"login_ok","client":{"ip":"203.0.113.9"}}"#), Read::NotMine);
        // A hand-built line with a second `client` would let a client's
        // text replace the daemon's.
        let forged =
            r#"{"event":"login_failed","client":{"ip":"203.0.113.9"},"user":{"name":"x"},"client":{"ip":"192.0.2.1"}}"#;
        assert_eq!(json.read(forged), Read::Ambiguous);

        let lf = rule("name: l\nlogfmt: {when: {event: [login_failed]}, addr: ip, user: user}").expect("logfmt");
        let line = r#"level=warn event=login_failed user="bob ip=192.0.2.1 \"x\"" ip=203.0.113.9 msg="login failed""#;
        assert_eq!(addr_of(&lf, line), Some("203.0.113.9".into()));
        match lf.read(line) {
            Read::Fields { user, .. } => assert_eq!(user.as_deref(), Some("bob ip=192.0.2.1 \"x\"")),
            other => panic!("{other:?}"),
        }
        assert_eq!(lf.read("event=login_failed ip=203.0.113.9 ip=192.0.2.1"), Read::Ambiguous);
        assert_eq!(lf.read("event=login_failed user=\"unterminated ip=1.2.3.4"), Read::NotMine);
    }
}
