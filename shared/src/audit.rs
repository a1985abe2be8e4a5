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
}
