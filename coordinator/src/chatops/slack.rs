//! Slack's buttons (`POST /api/v1/slack/actions`, the app's interactivity
//! request URL): a person presses Acknowledge, Approve or Deny on a
//! message Remedy posted, and Slack tells the coordinator.
//!
//! The body is `application/x-www-form-urlencoded` with one field,
//! `payload`, holding a `block_actions` JSON document: who pressed
//! (`user.id`, `team.id`) and which button (`actions[].action_id`,
//! `value`, `action_ts`).
//!
//! - [`ACK`] (`value`: the incident id) acknowledges the incident;
//! - [`APPROVE`] and [`DENY`] (`value`: the approval request's key as it is
//!   shown, `INC-000042/step#1`) answer the request; a denial's reason is
//!   `denied from Slack by user:<name>`.
//!
//! Who: the Slack user id is looked up in `slack.users` (`U024BE7LH:
//! alice` acts as `user:alice`, with the role `authorization.roles` gives
//! that identity). A user not listed, or whose role may not make the call,
//! is told why in an ephemeral reply and nothing happens. The two-person
//! rule applies as on the admin API. Every command is audited and written
//! on the timeline with `via: slack`.
//!
//! Trust: `X-Slack-Signature` is `v0=` and the hex HMAC-SHA256, keyed with
//! the app's signing secret (`slack.signing_secret_file`, one a line while
//! rotating), of `v0:<X-Slack-Request-Timestamp>:<raw body>`. A timestamp
//! more than [`WINDOW`] from the coordinator's clock, a missing or wrong
//! signature: 401. Each action (team, user, `action_ts`, `action_id`) is
//! done at most once: a replay within the window is answered 200 (so Slack
//! does not retry) and does nothing. Answers are always 200 once admitted,
//! with an ephemeral message saying what happened: Slack shows it to the
//! person who pressed.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use remedy_shared::Timestamp;
use remedy_shared::auth::{AdminCall, Identity, required_role};
use remedy_shared::config::ConfigError;
use remedy_shared::inbound;
use remedy_shared::limits;
use remedy_shared::sync::lock;
use serde::Deserialize;
use serde_json::json;

use super::{ChatOps, SigningSecret, answer, not_configured, via};

/// The button that acknowledges an incident.
pub const ACK: &str = "remedy_ack";
/// The button that grants an approval request.
pub const APPROVE: &str = "remedy_approve";
/// The button that denies one.
pub const DENY: &str = "remedy_deny";

/// The timestamp header.
pub const TIMESTAMP_HEADER: &str = "x-slack-request-timestamp";
/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-slack-signature";

/// How far a request's timestamp may be from the coordinator's clock.
pub const WINDOW: Duration = Duration::from_secs(300);

/// How long an action is remembered: as long as its request is fresh.
pub const REMEMBER_FOR: Duration = Duration::from_secs(600);

/// Largest body read. A `block_actions` payload carries the message it
/// came from, so it can reach tens of kilobytes.
pub const MAX_BODY: usize = 1024 * 1024;

/// `slack:` validated.
#[derive(Debug, Clone)]
pub struct SlackConfig {
    /// The app's signing secret(s).
    pub signing_secrets: Vec<SigningSecret>,
    /// Slack user id -> the Remedy identity they act as.
    pub users: BTreeMap<String, Identity>,
    /// The incoming webhook approval requests are announced to, if any.
    pub approvals_webhook: Option<WebhookUrl>,
}

/// An incoming webhook's URL: it carries the credential, so `Debug` never
/// shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookUrl(String);

impl std::fmt::Debug for WebhookUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// `slack:` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackFile {
    /// The app's signing secret, one a line.
    pub signing_secret_file: Option<PathBuf>,
    /// Slack user id -> Remedy user name.
    #[serde(default)]
    pub users: BTreeMap<String, String>,
    /// A file holding the incoming webhook URL approval requests are
    /// announced to, with Approve and Deny buttons.
    pub approvals_webhook_url_file: Option<PathBuf>,
}

impl SlackFile {
    /// Reads the secret now and checks each user: a bad entry stops the
    /// coordinator at start, naming it.
    pub fn resolve(self, source: &str) -> Result<SlackConfig, ConfigError> {
        let field = "slack.signing_secret_file";
        let path = self.signing_secret_file.ok_or_else(|| ConfigError::new(source, field, "is required"))?;
        let signing_secrets = super::read_secrets(&path).map_err(|e| ConfigError::new(source, field, e))?;
        let mut users = BTreeMap::new();
        for (slack_id, name) in self.users {
            let field = format!("slack.users.{slack_id}");
            if slack_id.is_empty() || !slack_id.bytes().all(|b| b.is_ascii_alphanumeric()) {
                return Err(ConfigError::new(source, field, "a Slack user id is letters and digits (U024BE7LH)"));
            }
            let identity = Identity::parse(&format!("user:{name}")).map_err(|e| ConfigError::new(source, field, e))?;
            users.insert(slack_id, identity);
        }
        let approvals_webhook = match self.approvals_webhook_url_file {
            None => None,
            Some(path) => {
                let field = "slack.approvals_webhook_url_file";
                let url = super::read_secrets(&path).map_err(|e| ConfigError::new(source, field, e))?;
                let url = String::from_utf8_lossy(&url[0].0).into_owned();
                // Checked now so a typo fails at start; the message never
                // quotes the file, which is the credential.
                if reqwest::Url::parse(&url).ok().filter(|u| matches!(u.scheme(), "http" | "https")).is_none() {
                    let why = format!("`{}` does not hold an http or https URL", path.display());
                    return Err(ConfigError::new(source, field, why));
                }
                Some(WebhookUrl(url))
            }
        };
        Ok(SlackConfig { signing_secrets, users, approvals_webhook })
    }
}

#[derive(Debug, Deserialize)]
struct Payload {
    #[serde(rename = "type")]
    kind: String,
    user: User,
    #[serde(default)]
    team: Option<Team>,
    #[serde(default)]
    actions: Vec<Action>,
}

#[derive(Debug, Deserialize)]
struct User {
    id: String,
    #[serde(default)]
    team_id: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Team {
    id: String,
}

/// One pressed button.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Action {
    /// Which button.
    pub action_id: String,
    /// What it carries.
    #[serde(default)]
    pub value: String,
    /// When it was pressed, as Slack writes it.
    #[serde(default)]
    pub action_ts: String,
}

/// A read request: who pressed which buttons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pressed {
    /// The Slack user id.
    pub user: String,
    /// The Slack team id.
    pub team: String,
    /// The buttons (Slack sends one).
    pub actions: Vec<Action>,
}

/// Reads the form body; the error is the reason for a 400. A payload that
/// is not `block_actions` is `Ok(None)`: nothing to do.
pub fn parse(body: &[u8]) -> Result<Option<Pressed>, String> {
    let body = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_owned())?;
    let payload = inbound::form_value(body, "payload").ok_or("the form has no `payload` field")?;
    let p: Payload =
        serde_json::from_str(&payload).map_err(|e| format!("the payload is not a Slack interaction: {e}"))?;
    if p.kind != "block_actions" {
        return Ok(None);
    }
    let named = |e: limits::LimitError| e.to_string();
    let team = p.team.map(|t| t.id).or(p.user.team_id).unwrap_or_default();
    limits::check_name("user.id", &p.user.id, limits::MAX_KEY_BYTES).map_err(named)?;
    limits::check_name("team.id", &team, limits::MAX_KEY_BYTES).map_err(named)?;
    if p.actions.len() > 16 {
        return Err(format!("{} actions in one request; at most 16", p.actions.len()));
    }
    for a in &p.actions {
        limits::check_name("actions.action_id", &a.action_id, limits::MAX_KEY_BYTES).map_err(named)?;
        limits::check_name("actions.value", &a.value, limits::MAX_VALUE_BYTES).map_err(named)?;
        limits::check_name("actions.action_ts", &a.action_ts, limits::MAX_KEY_BYTES).map_err(named)?;
    }
    Ok(Some(Pressed { user: p.user.id, team, actions: p.actions }))
}

/// The signature Slack sends for `body` at `timestamp` under `secret`.
pub fn signature(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    format!("v0={}", super::sign(secret, &[b"v0:", timestamp.as_bytes(), b":", body]))
}

/// Whether `headers` carry a fresh signature of `body`; the error is the
/// reason for the 401.
pub fn verify(headers: &HeaderMap, body: &[u8], secrets: &[SigningSecret], now: Timestamp) -> Result<(), &'static str> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let timestamp = text(TIMESTAMP_HEADER).ok_or("the X-Slack-Request-Timestamp header is required")?;
    let seconds: i64 = timestamp.trim().parse().map_err(|_| "X-Slack-Request-Timestamp is not a number")?;
    let sent = Timestamp::from_millis(seconds.saturating_mul(1000));
    if !inbound::fresh(sent, now, WINDOW, WINDOW) {
        return Err("X-Slack-Request-Timestamp is more than five minutes from this coordinator's clock");
    }
    let header = text(SIGNATURE_HEADER).ok_or("the X-Slack-Signature header is required")?;
    let tags = inbound::signatures(header, "v0");
    if tags.is_empty() {
        return Err("X-Slack-Signature is not v0=<hex>");
    }
    if !super::signed_by_any(secrets, &[b"v0:", timestamp.as_bytes(), b":", body], &tags) {
        return Err("X-Slack-Signature does not match the signing secret");
    }
    Ok(())
}

/// How often pending approval requests are looked for.
const ANNOUNCE_EVERY: Duration = Duration::from_secs(2);

/// Tries to announce one request before giving up on it.
const ANNOUNCE_ATTEMPTS: u32 = 5;

/// The announcement of a pending approval request: what it would do and
/// why, and Approve and Deny buttons carrying its key.
pub fn announcement(approval: &remedy_proto::v1::Approval) -> serde_json::Value {
    let key = format!("{}/{}#{}", approval.incident_id, approval.step_id, approval.attempt);
    let expires = Timestamp::from_millis(approval.expires_at_ms);
    let escape = |t: &str| t.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    let text = format!(
        "*Approval needed: {}* step `{}` (attempt {}) of {}\n{}\n{}\nAnswer by {expires}.",
        escape(&approval.incident_id),
        escape(&approval.step_id),
        approval.attempt,
        escape(&approval.runbook_id),
        escape(&approval.action),
        escape(&approval.reason),
    );
    let shown = remedy_shared::text::prefix(&text, 3_000, remedy_shared::text::Unit::Chars);
    let button = |id: &str, label: &str, style: &str| {
        json!({ "type": "button", "action_id": id, "text": { "type": "plain_text", "text": label },
                "style": style, "value": key })
    };
    json!({
        "text": text,
        "blocks": [
            { "type": "section", "text": { "type": "mrkdwn", "text": shown } },
            { "type": "actions", "block_id": "remedy_approval",
              "elements": [button(APPROVE, "Approve", "primary"), button(DENY, "Deny", "danger")] },
        ],
    })
}

impl ChatOps {
    /// Announces each pending approval request once to
    /// `slack.approvals_webhook_url_file`, until `stop` resolves; does
    /// nothing without one. A request whose post fails is tried again at
    /// the next look, [`ANNOUNCE_ATTEMPTS`] times at most. What was
    /// announced is kept in memory: after a restart, requests still
    /// pending are announced again.
    pub async fn announce_approvals(self, stop: impl std::future::Future<Output = ()>) {
        let Some(url) = self.slack.as_ref().and_then(|s| s.approvals_webhook.clone()) else { return };
        let client = match reqwest::Client::builder().timeout(Duration::from_secs(5)).build() {
            Ok(client) => client,
            Err(e) => {
                tracing::error!(error = %e, "cannot make the HTTP client; approval requests are not announced in Slack");
                return;
            }
        };
        let mut tried: BTreeMap<String, u32> = BTreeMap::new();
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(ANNOUNCE_EVERY);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = tick.tick() => {}
            }
            let now = self.now();
            let pending: Vec<remedy_proto::v1::Approval> = {
                let guard = self.admin.engine.guard();
                guard
                    .approvals()
                    .iter()
                    .filter(|a| a.is_pending(now))
                    .map(|a| remedy_proto::convert::approval_to_proto(a, now))
                    .collect()
            };
            let keys: Vec<String> =
                pending.iter().map(|a| format!("{}/{}#{}", a.incident_id, a.step_id, a.attempt)).collect();
            // Forget what is no longer pending: the memory stays as small
            // as the rails' own.
            tried.retain(|k, _| keys.contains(k));
            for (approval, key) in pending.iter().zip(keys) {
                let attempts = tried.entry(key.clone()).or_insert(0);
                if *attempts >= ANNOUNCE_ATTEMPTS {
                    continue;
                }
                *attempts += 1;
                let sent = client.post(&url.0).json(&announcement(approval)).send().await;
                match sent.map(|r| r.status()) {
                    Ok(status) if status.is_success() => {
                        *attempts = ANNOUNCE_ATTEMPTS;
                        tracing::info!(%key, "approval request announced in Slack");
                    }
                    Ok(status) => tracing::warn!(%key, %status, "Slack refused an approval request's announcement"),
                    Err(e) => {
                        tracing::warn!(%key, error = %e.without_url(), "cannot announce an approval request in Slack")
                    }
                }
            }
        }
    }
}

fn ephemeral(text: impl Into<String>) -> Response {
    answer(StatusCode::OK, json!({ "response_type": "ephemeral", "replace_original": false, "text": text.into() }))
}

/// The handler; see the module documentation.
pub async fn receive(State(ops): State<ChatOps>, headers: HeaderMap, body: axum::body::Body) -> Response {
    let Some(config) = ops.slack.clone() else { return not_configured("slack") };
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({ "error": format!("a request is at most {MAX_BODY} bytes") }),
        );
    };
    let now = ops.now();
    if let Err(why) = verify(&headers, &body, &config.signing_secrets, now) {
        tracing::warn!(why, "refused a Slack action");
        return answer(StatusCode::UNAUTHORIZED, json!({ "error": why }));
    }
    let pressed = match parse(&body) {
        Ok(Some(pressed)) => pressed,
        Ok(None) => return answer(StatusCode::OK, json!({})),
        Err(why) => {
            tracing::warn!(%why, "refused a Slack action");
            return answer(StatusCode::BAD_REQUEST, json!({ "error": why }));
        }
    };
    let mut said = Vec::new();
    for action in &pressed.actions {
        let key = format!("{}|{}|{}|{}", pressed.team, pressed.user, action.action_ts, action.action_id);
        if !lock(&ops.slack_actions).remember(&key, now) {
            tracing::info!(user = %pressed.user, action = %action.action_id, "a Slack action received again; nothing done");
            continue;
        }
        said.push(act(&ops, &config, &pressed, action).await);
    }
    if said.is_empty() {
        return answer(StatusCode::OK, json!({}));
    }
    ephemeral(said.join("\n"))
}

/// Does one action; what the person is told.
async fn act(ops: &ChatOps, config: &SlackConfig, pressed: &Pressed, action: &Action) -> String {
    let Some(identity) = config.users.get(&pressed.user) else {
        tracing::warn!(user = %pressed.user, "a Slack action from a user slack.users does not name; nothing done");
        return format!(
            "Remedy does not know you (Slack user {}): ask an administrator to add you under slack.users. Nothing was done.",
            pressed.user
        );
    };
    let by = identity.to_string();
    let call = match action.action_id.as_str() {
        ACK => AdminCall::AcknowledgeIncident,
        APPROVE | DENY => AdminCall::AnswerApproval,
        other => return format!("Remedy has no button `{other}`. Nothing was done."),
    };
    let details = via("slack", &[("slack_user", &pressed.user), ("slack_team", &pressed.team)]);
    let mut arguments = details.clone();
    arguments.insert("action_id".into(), action.action_id.clone());
    arguments.insert("value".into(), action.value.clone());
    let needed = required_role(call);
    let result: Result<String, tonic::Status> = match ops.role_of(identity) {
        Some(role) if role >= needed => match call {
            AdminCall::AcknowledgeIncident => match action.value.parse() {
                Ok(id) => ops
                    .admin
                    .acknowledge(id, by.clone(), details)
                    .await
                    .map(|i| format!("{} acknowledged by {by}", i.id)),
                Err(e) => Err(tonic::Status::invalid_argument(e)),
            },
            _ => match inbound::approval_key(&action.value) {
                Some(key) => {
                    let approve = action.action_id == APPROVE;
                    let reason = if approve { String::new() } else { format!("denied from Slack by {by}") };
                    ops.admin
                        .answer(&key, &by, approve, &reason, details)
                        .await
                        .map(|a| format!("{key} {} by {by}", a.status))
                }
                None => {
                    Err(tonic::Status::invalid_argument(format!("`{}` is not an approval request's key", action.value)))
                }
            },
        },
        Some(role) => {
            Err(tonic::Status::permission_denied(format!("{by} is {role}; {} needs {needed}", call.method())))
        }
        None => Err(tonic::Status::permission_denied(format!("{by} has no role under authorization.roles"))),
    };
    let target = match call {
        AdminCall::AcknowledgeIncident => action.value.clone(),
        _ => action.value.split('/').next().unwrap_or_default().to_owned(),
    };
    if let Err(status) = ops.admin.audit_command(&by, call, &target, arguments, &result).await {
        tracing::error!(error = %status.message(), "cannot write the audit entry of a Slack action");
    }
    match result {
        Ok(done) => done,
        Err(status) => format!("Not done: {}", status.message()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secrets() -> Vec<SigningSecret> {
        vec![SigningSecret(b"8f742231b10e8888abcd99yyyzzz85a5".to_vec())]
    }

    /// Slack's worked example ("Verifying requests from Slack").
    const EXAMPLE_BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const EXAMPLE_SIGNATURE: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    fn headers(timestamp: &str, signature: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(TIMESTAMP_HEADER, timestamp.parse().unwrap());
        h.insert(SIGNATURE_HEADER, signature.parse().unwrap());
        h
    }

    #[test]
    fn slacks_worked_example_verifies_within_five_minutes_of_its_timestamp() {
        assert_eq!(
            signature(b"8f742231b10e8888abcd99yyyzzz85a5", "1531420618", EXAMPLE_BODY.as_bytes()),
            EXAMPLE_SIGNATURE
        );
        let at = |s: i64| Timestamp::from_millis(s * 1000);
        let h = headers("1531420618", EXAMPLE_SIGNATURE);
        assert_eq!(verify(&h, EXAMPLE_BODY.as_bytes(), &secrets(), at(1_531_420_618 + 300)), Ok(()));
        let stale = verify(&h, EXAMPLE_BODY.as_bytes(), &secrets(), at(1_531_420_618 + 301)).unwrap_err();
        assert!(stale.contains("five minutes"), "{stale}");
        let changed = format!("{EXAMPLE_BODY}&x=1");
        assert!(verify(&h, changed.as_bytes(), &secrets(), at(1_531_420_618)).is_err());
        let other_time = headers("1531420619", EXAMPLE_SIGNATURE);
        assert!(verify(&other_time, EXAMPLE_BODY.as_bytes(), &secrets(), at(1_531_420_618)).is_err());
        let mut none = HeaderMap::new();
        none.insert(TIMESTAMP_HEADER, "1531420618".parse().unwrap());
        assert!(
            verify(&none, EXAMPLE_BODY.as_bytes(), &secrets(), at(1_531_420_618)).unwrap_err().contains("required")
        );
    }

    #[test]
    fn a_block_actions_payload_names_the_user_team_and_buttons() {
        let payload = json!({
            "type": "block_actions", "user": { "id": "U024BE7LH", "username": "alice", "team_id": "T9TK3CUKW" },
            "team": { "id": "T9TK3CUKW", "domain": "example" }, "trigger_id": "12321423423.333649436676.d8c1bb837935619ccad0f624c448ffb3",
            "response_url": "https://hooks.slack.com/actions/T9TK3CUKW/1/x",
            "actions": [{ "action_id": ACK, "block_id": "remedy", "value": "INC-000042", "type": "button", "action_ts": "1548426417.840180" }]
        });
        let body = format!("payload={}", url_encode(&payload.to_string()));
        let pressed = parse(body.as_bytes()).unwrap().unwrap();
        assert_eq!((pressed.user.as_str(), pressed.team.as_str()), ("U024BE7LH", "T9TK3CUKW"));
        assert_eq!(pressed.actions[0].value, "INC-000042");
        let other = format!("payload={}", url_encode(r#"{"type":"view_submission","user":{"id":"U1"}}"#));
        assert_eq!(parse(other.as_bytes()).unwrap(), None);
        assert!(parse(b"payload=%7B").unwrap_err().contains("not a Slack interaction"));
        assert!(parse(b"text=hi").unwrap_err().contains("no `payload`"));
    }

    #[test]
    fn an_approval_request_is_announced_with_buttons_carrying_its_key() {
        let a = remedy_proto::v1::Approval {
            incident_id: "INC-000042".into(),
            step_id: "fail<over>".into(),
            attempt: 2,
            runbook_id: "P0-002".into(),
            action: "failover".into(),
            reason: "a failover needs a person".into(),
            status: "pending".into(),
            expires_at_ms: 1_700_000_000_000,
            ..Default::default()
        };
        let m = announcement(&a);
        assert!(m["text"].as_str().unwrap().contains("fail&lt;over&gt;"), "{m}");
        let buttons = m["blocks"][1]["elements"].as_array().unwrap();
        assert_eq!(buttons[0]["action_id"], APPROVE);
        assert_eq!(buttons[1]["action_id"], DENY);
        for b in buttons {
            let key = inbound::approval_key(b["value"].as_str().unwrap()).unwrap();
            assert_eq!((key.step_id.as_str(), key.attempt), ("fail<over>", 2));
        }
    }

    fn url_encode(text: &str) -> String {
        text.bytes()
            .map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") })
            .collect()
    }
}
