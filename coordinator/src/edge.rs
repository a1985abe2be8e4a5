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
    pub fn new(config: EdgeConfig) -> Result<Edge, String> {
        config.validate()?;
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(config.timeout)
            .user_agent(concat!("remedy-coordinator/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("cannot build the edge client: {e}"))?;
        Ok(Edge { config, client })
    }

    fn rules_url(&self) -> String {
        format!(
            "{}/zones/{}/firewall/access_rules/rules",
            self.config.base_url.trim_end_matches('/'),
            self.config.zone_id
        )
    }

    fn token(&self) -> Result<String, String> {
        let text = std::fs::read_to_string(&self.config.token_file)
            .map_err(|e| format!("cannot read the edge token from {}: {e}", self.config.token_file.display()))?;
        let token = text.trim().to_owned();
        if token.is_empty() {
            return Err(format!("the edge token file {} is empty", self.config.token_file.display()));
        }
        Ok(token)
    }

    /// Blocks `ip`; returns the rule's id.
    pub async fn block(&self, ip: &str, notes: &str) -> Result<String, String> {
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
            .map_err(|e| format!("edge block of {ip}: {e}"))?;
        let envelope = read(response).await.map_err(|e| format!("edge block of {ip}: {e}"))?;
        envelope.result.map(|r| r.id).ok_or_else(|| format!("edge block of {ip}: the answer names no rule id"))
    }

    /// Removes the rule `rule_id`.
    pub async fn unblock(&self, rule_id: &str) -> Result<(), String> {
        if rule_id.is_empty() || rule_id.contains('/') {
            return Err(format!("`{rule_id}` is not a rule id"));
        }
        let response = self
            .client
            .delete(format!("{}/{rule_id}", self.rules_url()))
            .bearer_auth(self.token()?)
            .send()
            .await
            .map_err(|e| format!("edge removal of rule {rule_id}: {e}"))?;
        read(response).await.map(drop).map_err(|e| format!("edge removal of rule {rule_id}: {e}"))
    }
}

async fn read(response: reqwest::Response) -> Result<Envelope, String> {
    let status = response.status();
    let text = response.text().await.map_err(|e| format!("reading the answer: {e}"))?;
    let envelope: Option<Envelope> = serde_json::from_str(&text).ok();
    match envelope {
        Some(e) if status.is_success() && e.success => Ok(e),
        Some(e) if !e.errors.is_empty() => {
            let errors: Vec<String> = e.errors.iter().map(|x| format!("{} {}", x.code, x.message)).collect();
            Err(format!("HTTP {}: {}", status.as_u16(), errors.join("; ")))
        }
        _ => Err(format!("HTTP {}: {}", status.as_u16(), remedy_shared::text::prefix(&text, 200, Unit::Chars))),
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
}
