//! The audit log: who did what, when, with which arguments, and how it
//! ended. Every admin call and every action leaves one entry; entries are
//! only ever appended.
//!
//! Arguments pass through [`redact`] first: a value under a key that names
//! a secret (a token, a password, an authorization header, a key) never
//! reaches the log, whatever the caller or the runbook put there.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::Timestamp;

/// One audited event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Position in the log, from 1, given by the store when appended.
    #[serde(default)]
    pub seq: u64,
    /// When.
    pub at: Timestamp,
    /// Who: `user:NAME`, `agent:NODE`, `anonymous` (insecure mode), or the
    /// runbook run's starter for actions.
    pub actor: String,
    /// `admin_call` or `action`.
    pub kind: AuditKind,
    /// The admin method or the action kind.
    pub operation: String,
    /// What it acted on, when there is one thing (an incident, a target).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub target: String,
    /// Arguments, redacted.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub arguments: BTreeMap<String, String>,
    /// `ok`, or the status and why (`permission_denied: ...`).
    pub outcome: String,
}

/// What an audit entry is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    /// A call on the admin API.
    AdminCall,
    /// An action a runbook step performed (or rehearsed).
    Action,
}

/// What replaces a secret.
pub const REDACTED: &str = "[redacted]";

/// Whether a key names something secret.
pub fn is_secret_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["token", "password", "passwd", "secret", "authorization", "api_key", "apikey", "private_key", "credential"]
        .iter()
        .any(|s| key.contains(s))
}

/// Secret values a run holds in memory only, by param name: what its
/// actions use and what nothing written may contain. `Debug` shows the
/// names, never the values, and the type is never serialized (a run's
/// record skips it), so a value cannot reach a store, a log or an answer
/// by being printed or saved with its record.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretValues(BTreeMap<String, String>);

impl std::fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl SecretValues {
    /// Keeps `value` under `name`.
    pub fn insert(&mut self, name: String, value: String) {
        self.0.insert(name, value);
    }

    /// The value of `name`, if held.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The names and values, for rendering a run's templates.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// `text` with every held value replaced by [`REDACTED`]: what an
    /// action's report, its URL or an error may echo of a secret is hidden
    /// before it is written anywhere. The longest values go first, so a
    /// value that contains another is hidden whole.
    pub fn scrub(&self, text: &str) -> String {
        let mut values: Vec<&String> = self.0.values().filter(|v| !v.is_empty()).collect();
        values.sort_by_key(|v| std::cmp::Reverse(v.len()));
        let mut out = text.to_owned();
        for value in values {
            if out.contains(value.as_str()) {
                out = out.replace(value.as_str(), REDACTED);
            }
        }
        out
    }

    /// Scrubs every string inside `json` in place.
    pub fn scrub_json(&self, json: &mut serde_json::Value) {
        match json {
            serde_json::Value::String(s) => *s = self.scrub(s),
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| self.scrub_json(v)),
            serde_json::Value::Object(map) => map.values_mut().for_each(|v| self.scrub_json(v)),
            _ => {}
        }
    }
}

/// Flattens JSON arguments into `path = value` pairs, replacing the value
/// of every key that names a secret (at any depth) by [`REDACTED`].
pub fn redact(arguments: &serde_json::Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    flatten(String::new(), arguments, false, &mut out);
    out
}

fn flatten(path: String, value: &serde_json::Value, secret: bool, out: &mut BTreeMap<String, String>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let child = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
                flatten(child, v, secret || is_secret_key(k), out);
            }
        }
        serde_json::Value::Array(items) => {
            for (i, v) in items.iter().enumerate() {
                flatten(format!("{path}[{i}]"), v, secret, out);
            }
        }
        _ if secret => {
            out.insert(path, REDACTED.to_owned());
        }
        serde_json::Value::String(s) => {
            out.insert(path, s.clone());
        }
        other => {
            out.insert(path, other.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secrets_are_redacted_at_any_depth_and_the_rest_kept() {
        let args = json!({
            "url": "http://gw/reset",
            "headers": { "Authorization": "Bearer abc", "X-Trace": "1" },
            "auth": { "password": { "nested": "p4ss" } },
            "api_key": "k",
            "replicas": 3,
            "list": [{ "token": "t" }, "plain"],
        });
        let r = redact(&args);
        assert_eq!(r["url"], "http://gw/reset");
        assert_eq!(r["headers.X-Trace"], "1");
        assert_eq!(r["headers.Authorization"], REDACTED);
        assert_eq!(r["auth.password.nested"], REDACTED);
        assert_eq!(r["api_key"], REDACTED);
        assert_eq!(r["replicas"], "3");
        assert_eq!(r["list[0].token"], REDACTED);
        assert_eq!(r["list[1]"], "plain");
        let all: String = r.values().cloned().collect();
        for secret in ["abc", "p4ss", "\"k\""] {
            assert!(!all.contains(secret), "{secret} leaked: {all}");
        }
    }

    #[test]
    fn held_values_are_scrubbed_from_text_and_never_shown_by_debug() {
        let mut held = SecretValues::default();
        held.insert("api_token".into(), "v4lue".into());
        held.insert("long".into(), "v4lue-and-more".into());
        held.insert("blank".into(), String::new());
        assert_eq!(held.scrub("GET /x?t=v4lue-and-more&u=v4lue"), "GET /x?t=[redacted]&u=[redacted]");
        assert_eq!(held.scrub("nothing here"), "nothing here", "an empty value hides nothing");
        let mut json = json!({ "a": ["v4lue"], "b": { "c": "x v4lue" }, "n": 1 });
        held.scrub_json(&mut json);
        assert_eq!(json, json!({ "a": ["[redacted]"], "b": { "c": "x [redacted]" }, "n": 1 }));
        let shown = format!("{held:?}");
        assert!(shown.contains("api_token") && !shown.contains("v4lue"), "{shown}");
    }
}
