//! The edge provider: a `block_ip` with `edge: true` also blocks the
//! address in front of the cluster, through Cloudflare's IP access rules.
//!
//! `POST {base_url}/zones/{zone_id}/firewall/access_rules/rules` with
//! `{"mode":"block","configuration":{"target":"ip"|"ip6"|"ip_range","value":…},"notes":…}`
//! creates a rule, whose id the ban keeps; `DELETE …/rules/{id}` removes
//! it. Rules do not expire at the edge, so the coordinator removes them at
//! the ban's end ([`crate::bans::Bans::reassert`]). The token is read from
//! its file at every call, so a rotated token is used without a restart,
//! and is sent as a Bearer token only.

use std::path::PathBuf;
use std::time::Duration;

use remedy_shared::text::Unit;
use serde::Deserialize;

/// Why the edge provider did not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    /// The configuration cannot work (checked at start too): the coordinator
    /// does not start with it.
    #[error("{0}")]
    Invalid(String),
    /// The HTTP client could not be built: the coordinator does not start.
    #[error("cannot build the edge client: {0}")]
    Client(#[source] reqwest::Error),
    /// The token file cannot be read: nothing was sent. It is read again at
    /// the next call, so fixing the file is enough.
    #[error("cannot read the edge token from {}: {source}", .path.display())]
    TokenUnreadable {
        /// The configured `token_file`.
        path: PathBuf,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// The token file is empty: nothing was sent.
    #[error("the edge token file {} is empty", .path.display())]
    TokenEmpty {
        /// The configured `token_file`.
        path: PathBuf,
    },
    /// The rule id to remove cannot be one (empty, or would change the
    /// URL's path): nothing was sent.
    #[error("`{0}` is not a rule id")]
    NotARuleId(String),
    /// The request did not reach the edge or broke off before its answer
    /// (connection refused, TLS, reset): trying again later may work.
    #[error("{call}: {source}")]
    Unreachable {
        /// The call, as in `edge block of 203.0.113.7`.
        call: String,
        /// The client's error.
        source: reqwest::Error,
    },
    /// No answer within the configured timeout: the edge may have acted
    /// anyway, so a block may have made a rule nobody knows the id of.
    #[error("{call}: {source}")]
    TimedOut {
        /// The call, as in `edge block of 203.0.113.7`.
        call: String,
        /// The client's error.
        source: reqwest::Error,
    },
    /// The edge answered with an error status or `success: false`: it did
    /// not act. A 4xx is usually the token's scope or the zone, which a
    /// retry does not change.
    #[error("{call}: HTTP {status}: {detail}")]
    Refused {
        /// The call, as in `edge block of 203.0.113.7`.
        call: String,
        /// The HTTP status.
        status: u16,
        /// The provider's errors (code and message), or the start of its
        /// answer when it names none.
        detail: String,
    },
    /// The edge answered success in a shape this client does not read (no
    /// envelope, no rule id) or the answer could not be read: whether it
    /// acted is unknown.
    #[error("{call}: {detail}")]
    BadAnswer {
        /// The call, as in `edge block of 203.0.113.7`.
        call: String,
        /// What is wrong with the answer.
        detail: String,
    },
}

impl EdgeError {
    /// A request that failed before an answer arrived.
    fn unsent(call: String, source: reqwest::Error) -> EdgeError {
        if source.is_timeout() { EdgeError::TimedOut { call, source } } else { EdgeError::Unreachable { call, source } }
    }
}

/// `edge:` in the coordinator's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    /// The API's base URL.
    #[serde(default = "default_base_url")]
    pub base_url: String,
    /// The zone whose access rules are written.
    pub zone_id: String,
    /// A file holding the API token (scoped to the zone's firewall access
    /// rules, edit).
    pub token_file: PathBuf,
    /// Longest one call may take.
    #[serde(default = "default_timeout", with = "remedy_shared::config::duration")]
    pub timeout: Duration,
}

fn default_base_url() -> String {
    "https://api.cloudflare.com/client/v4".to_owned()
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

impl EdgeConfig {
    /// Checks what can be checked at start: the URL and the zone; the
    /// token is read at each call.
    pub fn validate(&self) -> Result<(), String> {
        let url = reqwest::Url::parse(&self.base_url).map_err(|e| format!("base_url `{}`: {e}", self.base_url))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("base_url `{}` is not an http(s) URL", self.base_url));
        }
        if self.zone_id.trim().is_empty() || self.zone_id.contains('/') {
            return Err(format!("zone_id `{}` is not a zone id", self.zone_id));
        }
        Ok(())
    }
}

/// Cloudflare's answer envelope.
#[derive(Debug, Deserialize)]
struct Envelope {
    success: bool,
    #[serde(default)]
    errors: Vec<ApiError>,
    result: Option<RuleResult>,
}

#[derive(Debug, Deserialize)]
struct ApiError {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

#[derive(Debug, Deserialize)]
struct RuleResult {
    id: String,
}

/// Talks to the edge provider.
#[derive(Debug, Clone)]
pub struct Edge {
    config: EdgeConfig,
    client: reqwest::Client,
}

/// The access rule's target for an address or a range.
fn target(ip: &str) -> &'static str {
    if ip.contains('/') {
        "ip_range"
    } else if ip.contains(':') {
        "ip6"
    } else {
        "ip"
    }
}

impl Edge {
    /// A client for `config`.
    pub fn new(config: EdgeConfig) -> Result<Edge, EdgeError> {
        config.validate().map_err(EdgeError::Invalid)?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .user_agent(concat!("remedy-coordinator/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(EdgeError::Client)?;
        Ok(Edge { config, client })
    }

    fn rules_url(&self) -> String {
        format!(
            "{}/zones/{}/firewall/access_rules/rules",
            self.config.base_url.trim_end_matches('/'),
            self.config.zone_id
        )
    }

    fn token(&self) -> Result<String, EdgeError> {
        let path = &self.config.token_file;
        let text = std::fs::read_to_string(path)
            .map_err(|source| EdgeError::TokenUnreadable { path: path.clone(), source })?;
        let token = text.trim().to_owned();
        if token.is_empty() {
            return Err(EdgeError::TokenEmpty { path: path.clone() });
        }
        Ok(token)
    }

    /// Blocks `ip`; returns the rule's id.
    pub async fn block(&self, ip: &str, notes: &str) -> Result<String, EdgeError> {
        let body = serde_json::json!({
            "mode": "block",
            "configuration": { "target": target(ip), "value": ip },
            "notes": notes,
        });
        let response = self
            .client
            .post(self.rules_url())
            .bearer_auth(self.token()?)
            .json(&body)
            .send()
            .await
            .map_err(|e| EdgeError::unsent(format!("edge block of {ip}"), e))?;
        let envelope = read(response, || format!("edge block of {ip}")).await?;
        envelope.result.map(|r| r.id).ok_or_else(|| EdgeError::BadAnswer {
            call: format!("edge block of {ip}"),
            detail: "the answer names no rule id".to_owned(),
        })
    }

    /// Removes the rule `rule_id`.
    pub async fn unblock(&self, rule_id: &str) -> Result<(), EdgeError> {
        if rule_id.is_empty() || rule_id.contains('/') {
            return Err(EdgeError::NotARuleId(rule_id.to_owned()));
        }
        let response = self
            .client
            .delete(format!("{}/{rule_id}", self.rules_url()))
            .bearer_auth(self.token()?)
            .send()
            .await
            .map_err(|e| EdgeError::unsent(format!("edge removal of rule {rule_id}"), e))?;
        read(response, || format!("edge removal of rule {rule_id}")).await.map(drop)
    }
}

/// The envelope of an answer to `call`, or what the answer says went wrong.
async fn read(response: reqwest::Response, call: impl FnOnce() -> String) -> Result<Envelope, EdgeError> {
    let status = response.status();
    let text = match response.text().await {
        Ok(text) => text,
        Err(e) => return Err(EdgeError::BadAnswer { call: call(), detail: format!("reading the answer: {e}") }),
    };
    judge(status, &text, call)
}

/// What an answer to `call` with `status` and body `text` means.
fn judge(status: reqwest::StatusCode, text: &str, call: impl FnOnce() -> String) -> Result<Envelope, EdgeError> {
    let envelope: Option<Envelope> = serde_json::from_str(text).ok();
    let start = || remedy_shared::text::prefix(text, 200, Unit::Chars).to_owned();
    match envelope {
        Some(e) if status.is_success() && e.success => Ok(e),
        Some(e) if !e.errors.is_empty() => {
            let errors: Vec<String> = e.errors.iter().map(|x| format!("{} {}", x.code, x.message)).collect();
            Err(EdgeError::Refused { call: call(), status: status.as_u16(), detail: errors.join("; ") })
        }
        // A success status with a body that is no envelope: whether the edge
        // acted is unknown.
        None if status.is_success() => {
            Err(EdgeError::BadAnswer { call: call(), detail: format!("HTTP {}: {}", status.as_u16(), start()) })
        }
        _ => Err(EdgeError::Refused { call: call(), status: status.as_u16(), detail: start() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_follow_the_address_family_and_ranges() {
        assert_eq!(target("203.0.113.7"), "ip");
        assert_eq!(target("2001:db8::66"), "ip6");
        assert_eq!(target("203.0.113.0/24"), "ip_range");
    }

    #[test]
    fn a_bad_base_url_or_zone_is_refused_at_start() {
        let good = EdgeConfig {
            base_url: default_base_url(),
            zone_id: "z1".into(),
            token_file: "/t".into(),
            timeout: default_timeout(),
        };
        assert!(good.validate().is_ok());
        assert!(EdgeConfig { base_url: "ftp://x".into(), ..good.clone() }.validate().is_err());
        assert!(EdgeConfig { zone_id: "a/b".into(), ..good }.validate().is_err());
    }

    fn judged(status: u16, body: &str) -> Result<Envelope, EdgeError> {
        let status = reqwest::StatusCode::from_u16(status).unwrap_or_else(|e| panic!("{e}"));
        judge(status, body, || "edge block of 203.0.113.7".to_owned())
    }

    #[tokio::test]
    async fn a_bad_rule_id_or_token_file_sends_nothing() {
        let dir = std::env::temp_dir().join(format!("remedy-edge-{}", std::process::id()));
        let config = EdgeConfig {
            base_url: "http://127.0.0.1:9".into(),
            zone_id: "z1".into(),
            token_file: dir.join("missing"),
            timeout: Duration::from_secs(1),
        };
        let edge = Edge::new(config).unwrap_or_else(|e| panic!("{e}"));
        let bad_id = edge.unblock("a/b").await;
        assert!(matches!(&bad_id, Err(EdgeError::NotARuleId(id)) if id == "a/b"), "{bad_id:?}");
        let unread = edge.block("203.0.113.7", "n").await;
        assert!(matches!(&unread, Err(EdgeError::TokenUnreadable { .. })), "{unread:?}");
        assert!(unread.is_err_and(|e| e.to_string().starts_with("cannot read the edge token from ")));
    }

    #[test]
    fn a_successful_envelope_is_the_answer() {
        let answer = judged(200, r#"{"success":true,"errors":[],"result":{"id":"r1"}}"#);
        assert_eq!(answer.ok().and_then(|e| e.result).map(|r| r.id).as_deref(), Some("r1"));
    }

    #[test]
    fn the_edges_errors_are_a_refusal_with_the_status() {
        let refused = judged(403, r#"{"success":false,"errors":[{"code":10000,"message":"Authentication error"}]}"#);
        assert!(matches!(&refused, Err(EdgeError::Refused { status: 403, .. })), "{refused:?}");
        assert_eq!(
            refused.err().map(|e| e.to_string()).as_deref(),
            Some("edge block of 203.0.113.7: HTTP 403: 10000 Authentication error")
        );
        let bare = judged(502, "<html>bad gateway</html>");
        assert!(matches!(&bare, Err(EdgeError::Refused { status: 502, .. })), "{bare:?}");
        assert_eq!(
            bare.err().map(|e| e.to_string()).as_deref(),
            Some("edge block of 203.0.113.7: HTTP 502: <html>bad gateway</html>")
        );
    }

    #[test]
    fn a_success_status_without_an_envelope_is_a_bad_answer() {
        let odd = judged(200, "ok");
        assert!(matches!(&odd, Err(EdgeError::BadAnswer { .. })), "{odd:?}");
        assert_eq!(odd.err().map(|e| e.to_string()).as_deref(), Some("edge block of 203.0.113.7: HTTP 200: ok"));
    }
}
