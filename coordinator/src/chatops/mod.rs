//! Acknowledgements and approvals from where people already are: a
//! PagerDuty webhook (`POST /api/v1/pagerduty/webhook`, see [`pagerduty`])
//! and Slack's buttons (`POST /api/v1/slack/actions`, see [`slack`]).
//!
//! Both are doors onto the same commands as the admin API: they call
//! [`Admin::acknowledge`], [`Admin::resolve`] and [`Admin::answer`], so an
//! incident acknowledged from PagerDuty or a step approved from Slack is
//! checked by the same rules (an open incident, the role, the two-person
//! rule), written on the timeline with `via` naming the door, and audited
//! as the admin call it stands for, with `via` among its arguments.
//!
//! Nothing anonymous gets in: each request is signed with a secret the
//! service and the coordinator share (HMAC-SHA256 over the raw body,
//! compared in constant time), refused when too old (a signature proves
//! only that a request was once genuine), and done at most once (each
//! event or action is remembered for as long as it would be fresh).
//! Without its section in the configuration a door answers 404.

pub mod pagerduty;
pub mod slack;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use remedy_shared::auth::{Bindings, Identity};
use remedy_shared::inbound::Replays;
use ring::hmac;

use crate::admin_service::Admin;

/// A shared secret from a file. `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningSecret(Vec<u8>);

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl SigningSecret {
    fn key(&self) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, &self.0)
    }
}

/// Reads the secrets of a file, one a line (surrounding whitespace and
/// empty lines dropped): more than one while a secret is rotated. The
/// error names the file, never its content.
pub fn read_secrets(path: &Path) -> Result<Vec<SigningSecret>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let secrets: Vec<SigningSecret> =
        text.lines().map(str::trim).filter(|l| !l.is_empty()).map(|l| SigningSecret(l.as_bytes().to_vec())).collect();
    if secrets.is_empty() {
        return Err(format!("`{}` holds no secret", path.display()));
    }
    Ok(secrets)
}

/// Whether `tag` is the HMAC-SHA256 of `parts` (concatenated) under one of
/// `secrets`: compared in constant time (`ring::hmac::verify`).
pub fn signed_by_any(secrets: &[SigningSecret], parts: &[&[u8]], tags: &[Vec<u8>]) -> bool {
    let message: Vec<u8> = parts.concat();
    secrets.iter().any(|s| {
        let key = s.key();
        tags.iter().any(|tag| hmac::verify(&key, &message, tag).is_ok())
    })
}

/// The lower-case hex HMAC-SHA256 of `parts` under `secret`: what a sender
/// puts in its signature header (for tests and for documentation).
pub fn sign(secret: &[u8], parts: &[&[u8]]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, secret);
    remedy_shared::inbound::hex_encode(hmac::sign(&key, &parts.concat()).as_ref())
}

/// The validated `pagerduty_webhook:` and `slack:` sections.
#[derive(Debug, Clone, Default)]
pub struct ChatOpsConfig {
    /// PagerDuty's webhook, when configured.
    pub pagerduty: Option<pagerduty::PagerDutyConfig>,
    /// Slack's interactivity, when configured.
    pub slack: Option<slack::SlackConfig>,
}

/// What the two doors need; cheap to clone (the handlers' state).
#[derive(Clone)]
pub struct ChatOps {
    admin: Admin,
    bindings: Bindings,
    pagerduty: Option<Arc<pagerduty::PagerDutyConfig>>,
    slack: Option<Arc<slack::SlackConfig>>,
    pagerduty_events: Arc<Mutex<Replays>>,
    slack_actions: Arc<Mutex<Replays>>,
}

impl std::fmt::Debug for ChatOps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatOps")
            .field("pagerduty", &self.pagerduty.is_some())
            .field("slack", &self.slack.is_some())
            .finish_non_exhaustive()
    }
}

/// Most event ids or actions remembered per door.
pub const REMEMBERED: usize = 10_000;

impl ChatOps {
    /// The doors `config` opens onto `admin`; people's roles are `bindings`.
    pub fn new(admin: Admin, bindings: Bindings, config: ChatOpsConfig) -> ChatOps {
        ChatOps {
            admin,
            bindings,
            pagerduty: config.pagerduty.map(Arc::new),
            slack: config.slack.map(Arc::new),
            pagerduty_events: Arc::new(Mutex::new(Replays::new(pagerduty::REMEMBER_FOR, REMEMBERED))),
            slack_actions: Arc::new(Mutex::new(Replays::new(slack::REMEMBER_FOR, REMEMBERED))),
        }
    }

    fn now(&self) -> remedy_shared::Timestamp {
        self.admin.now()
    }

    /// The role of a person, if bound.
    fn role_of(&self, identity: &Identity) -> Option<remedy_shared::auth::Role> {
        self.bindings.role_of(identity)
    }
}

/// `details` for a command's timeline entry and audit: `via` first.
fn via(door: &str, more: &[(&str, &str)]) -> BTreeMap<String, String> {
    let mut d = BTreeMap::from([("via".to_owned(), door.to_owned())]);
    d.extend(more.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
    d
}

fn answer(code: StatusCode, body: serde_json::Value) -> Response {
    (code, Json(body)).into_response()
}

fn not_configured(section: &str) -> Response {
    answer(StatusCode::NOT_FOUND, serde_json::json!({ "error": format!("not configured: no `{section}` section") }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_listed_signature_under_any_secret_counts() {
        let old = SigningSecret(b"old-secret".to_vec());
        let new = SigningSecret(b"new-secret".to_vec());
        let tag = |s: &[u8]| remedy_shared::inbound::hex_decode(&sign(s, &[b"a", b"b"])).unwrap();
        assert!(signed_by_any(&[old.clone(), new.clone()], &[b"ab"], &[vec![1, 2], tag(b"new-secret")]));
        assert!(signed_by_any(std::slice::from_ref(&old), &[b"a", b"b"], &[tag(b"old-secret")]));
        assert!(!signed_by_any(&[old, new], &[b"ab"], &[tag(b"other")]));
        assert_eq!(format!("{:?}", SigningSecret(b"x".to_vec())), "[redacted]");
    }

    #[test]
    fn a_secrets_file_lists_one_a_line_and_an_empty_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s");
        std::fs::write(&p, "  one\n\ntwo\n").unwrap();
        assert_eq!(read_secrets(&p).unwrap().len(), 2);
        std::fs::write(&p, "\n \n").unwrap();
        assert!(read_secrets(&p).unwrap_err().contains("holds no secret"));
    }
}
