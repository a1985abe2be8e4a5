//! PagerDuty's webhook (`POST /api/v1/pagerduty/webhook`, Webhooks v3):
//! an incident acknowledged or resolved in PagerDuty is acknowledged or
//! resolved in Remedy.
//!
//! Remedy's pages carry the dedup key `remedy-<INCIDENT_ID>`, which
//! PagerDuty keeps as the incident's `incident_key`; that is how an event
//! finds its Remedy incident. The person is PagerDuty's `agent` (its
//! summary, else its id), recorded as `pagerduty:<name>`.
//!
//! - `incident.acknowledged` acknowledges the incident: its escalation
//!   stops climbing. One already acknowledged stays as it is, so Remedy's
//!   own acknowledgement, which PagerDuty echoes back, changes nothing and
//!   tells nobody twice.
//! - `incident.resolved` resolves it, reason `resolved in PagerDuty`: the
//!   responders who closed the page closed the incident.
//! - Any other event is answered 200 and ignored, as is an event for an
//!   incident Remedy does not know (202), or one already closed.
//!
//! Trust: `X-PagerDuty-Signature` lists `v1=<hex HMAC-SHA256 of the raw
//! body>`, one per secret of the subscription; one matching a secret of
//! `pagerduty_webhook.secret_file` (one a line, for rotation) admits the
//! request, else 401. v3 signs no timestamp, so `occurred_at` stands in:
//! an event older than [`MAX_AGE`] or more than [`MAX_AHEAD`] in the future
//! is refused (401). Each accepted event id is remembered for as long as
//! it would be fresh (at most [`super::REMEMBERED`]), and written on the
//! timeline entry it made (`pagerduty_event`), which is looked for too:
//! a replay does nothing, even after a restart. Answers: 413 over
//! [`MAX_BODY`], 400 for a body that is not a v3 event, 503 when the store
//! cannot take it (PagerDuty retries).

use std::path::Path;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use remedy_shared::auth::AdminCall;
use remedy_shared::inbound;
use remedy_shared::incident::IncidentId;
use remedy_shared::limits;
use remedy_shared::sync::lock;
use remedy_shared::{Timestamp, config::ConfigError};
use serde::Deserialize;
use serde_json::json;

use super::{ChatOps, SigningSecret, answer, not_configured, via};

/// The signature header.
pub const SIGNATURE_HEADER: &str = "x-pagerduty-signature";

/// Largest body read; PagerDuty's events are a few kilobytes.
pub const MAX_BODY: usize = 256 * 1024;

/// Oldest `occurred_at` accepted.
pub const MAX_AGE: Duration = Duration::from_secs(3600);

/// Furthest `occurred_at` accepted ahead of the coordinator's clock.
pub const MAX_AHEAD: Duration = Duration::from_secs(300);

/// How long an event id is remembered: as long as it would be fresh.
pub const REMEMBER_FOR: Duration = Duration::from_secs(3600 + 300);

/// The prefix of the dedup key Remedy's pages carry.
const KEY_PREFIX: &str = "remedy-";

/// `pagerduty_webhook:` validated: the subscription's secrets.
#[derive(Debug, Clone)]
pub struct PagerDutyConfig {
    /// One or more (while rotating).
    pub secrets: Vec<SigningSecret>,
}

/// `pagerduty_webhook:` in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PagerDutyFile {
    /// The subscription's signing secret(s), one a line.
    pub secret_file: Option<std::path::PathBuf>,
}

impl PagerDutyFile {
    /// Reads the secrets now: a bad file stops the coordinator at start.
    pub fn resolve(self, source: &str) -> Result<PagerDutyConfig, ConfigError> {
        let field = "pagerduty_webhook.secret_file";
        let path = self.secret_file.ok_or_else(|| ConfigError::new(source, field, "is required"))?;
        let secrets = super::read_secrets(Path::new(&path)).map_err(|e| ConfigError::new(source, field, e))?;
        Ok(PagerDutyConfig { secrets })
    }
}

#[derive(Debug, Deserialize)]
struct Envelope {
    event: Event,
}

#[derive(Debug, Deserialize)]
struct Event {
    id: String,
    event_type: String,
    #[serde(default)]
    resource_type: String,
    occurred_at: String,
    #[serde(default)]
    agent: Option<Reference>,
    #[serde(default)]
    data: Option<Data>,
}

#[derive(Debug, Default, Deserialize)]
struct Reference {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    summary: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Data {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    incident_key: Option<String>,
}

/// What an event asks, once read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Asked {
    /// Acknowledge or resolve the incident whose key the event carries.
    Act {
        /// Acknowledge (else resolve).
        acknowledge: bool,
        /// The Remedy incident, when the key is one of Remedy's.
        incident: Option<IncidentId>,
        /// `pagerduty:<agent>`.
        by: String,
        /// PagerDuty's incident id (for the record).
        pagerduty_incident: String,
    },
    /// Nothing Remedy acts on.
    Ignore(String),
}

/// A read event: its id, when it happened, and what it asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// PagerDuty's event id.
    pub id: String,
    /// Its type.
    pub event_type: String,
    /// When it happened.
    pub occurred_at: Timestamp,
    /// What it asks.
    pub asked: Asked,
}

/// Reads a v3 event; the error is the reason for a 400.
pub fn parse(body: &[u8]) -> Result<Parsed, String> {
    let Envelope { event } =
        serde_json::from_slice(body).map_err(|e| format!("not a PagerDuty v3 webhook event: {e}"))?;
    let named = |e: limits::LimitError| e.to_string();
    if event.id.trim().is_empty() {
        return Err("event.id is empty".into());
    }
    limits::check_name("event.id", &event.id, limits::MAX_KEY_BYTES).map_err(named)?;
    limits::check_name("event.event_type", &event.event_type, limits::MAX_KEY_BYTES).map_err(named)?;
    let occurred_at = Timestamp::parse_rfc3339(&event.occurred_at)
        .ok_or_else(|| format!("event.occurred_at `{}` is not an RFC 3339 time", event.occurred_at))?;
    let acknowledge = match (event.resource_type.as_str(), event.event_type.as_str()) {
        ("incident", "incident.acknowledged") => true,
        ("incident", "incident.resolved") => false,
        (_, other) => {
            return Ok(Parsed {
                id: event.id,
                event_type: other.to_owned(),
                occurred_at,
                asked: Asked::Ignore(format!("{other} events change nothing in Remedy")),
            });
        }
    };
    let data = event.data.unwrap_or_default();
    let key = data.incident_key.unwrap_or_default();
    limits::check_name("event.data.incident_key", &key, limits::MAX_KEY_BYTES).map_err(named)?;
    let incident = key.strip_prefix(KEY_PREFIX).and_then(|id| id.parse::<IncidentId>().ok());
    let agent = event.agent.unwrap_or_default();
    let name = agent.summary.filter(|s| !s.trim().is_empty()).or(agent.id).unwrap_or_default();
    let mut pagerduty_incident = data.id.unwrap_or_default();
    limits::clip(&mut pagerduty_incident, limits::MAX_KEY_BYTES);
    Ok(Parsed {
        id: event.id,
        event_type: event.event_type,
        occurred_at,
        asked: Asked::Act {
            acknowledge,
            incident,
            by: inbound::outside_identity("pagerduty", &name),
            pagerduty_incident,
        },
    })
}

/// Whether `headers` carry a signature of `body` under one of `secrets`;
/// the error is the reason for the 401.
pub fn verify(headers: &HeaderMap, body: &[u8], secrets: &[SigningSecret]) -> Result<(), &'static str> {
    let header = headers
        .get(SIGNATURE_HEADER)
        .ok_or("the X-PagerDuty-Signature header is required")?
        .to_str()
        .map_err(|_| "the X-PagerDuty-Signature header is not text")?;
    let tags = inbound::signatures(header, "v1");
    if tags.is_empty() {
        return Err("the X-PagerDuty-Signature header lists no v1 signature");
    }
    if !super::signed_by_any(secrets, &[body], &tags) {
        return Err("no signature in X-PagerDuty-Signature matches a configured secret");
    }
    Ok(())
}

/// The handler; see the module documentation.
pub async fn receive(State(ops): State<ChatOps>, headers: HeaderMap, body: axum::body::Body) -> Response {
    let Some(config) = ops.pagerduty.clone() else { return not_configured("pagerduty_webhook") };
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return answer(
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({ "error": format!("a webhook event is at most {MAX_BODY} bytes") }),
        );
    };
    if let Err(why) = verify(&headers, &body, &config.secrets) {
        tracing::warn!(why, "refused a PagerDuty webhook");
        return answer(StatusCode::UNAUTHORIZED, json!({ "error": why }));
    }
    let event = match parse(&body) {
        Ok(event) => event,
        Err(why) => {
            tracing::warn!(%why, "refused a PagerDuty webhook");
            return answer(StatusCode::BAD_REQUEST, json!({ "error": why }));
        }
    };
    let now = ops.now();
    if !inbound::fresh(event.occurred_at, now, MAX_AGE, MAX_AHEAD) {
        tracing::warn!(event = %event.id, occurred_at = %event.occurred_at, "refused a stale PagerDuty webhook");
        return answer(
            StatusCode::UNAUTHORIZED,
            json!({ "error": format!(
                "event.occurred_at {} is more than {}s before or {}s after this coordinator's clock ({now}): refused as a possible replay",
                event.occurred_at, MAX_AGE.as_secs(), MAX_AHEAD.as_secs()) }),
        );
    }
    if !lock(&ops.pagerduty_events).remember(&event.id, now) {
        return answer(StatusCode::OK, json!({ "ignored": format!("event {} was received already", event.id) }));
    }
    let outcome = act(&ops, &event).await;
    if outcome.0 == StatusCode::SERVICE_UNAVAILABLE {
        // Not done: PagerDuty's retry must get through.
        lock(&ops.pagerduty_events).forget(&event.id);
    }
    answer(outcome.0, outcome.1)
}

async fn act(ops: &ChatOps, event: &Parsed) -> (StatusCode, serde_json::Value) {
    let (acknowledge, incident, by, pagerduty_incident) = match &event.asked {
        Asked::Ignore(why) => return (StatusCode::OK, json!({ "ignored": why })),
        Asked::Act { acknowledge, incident, by, pagerduty_incident } => {
            (*acknowledge, *incident, by.clone(), pagerduty_incident.clone())
        }
    };
    let Some(id) = incident else {
        tracing::info!(event = %event.id, "a PagerDuty event for an incident Remedy did not page; nothing done");
        return (StatusCode::ACCEPTED, json!({ "ignored": "the incident key is not one of Remedy's" }));
    };
    // The timeline keeps the events that acted: a replay after a restart,
    // when the memory above is empty, is found there.
    match ops.admin.incident(id).await {
        Ok(Some((_, timeline))) if timeline.iter().any(|e| e.details.get("pagerduty_event") == Some(&event.id)) => {
            return (StatusCode::OK, json!({ "ignored": format!("event {} was received already", event.id) }));
        }
        Ok(None) => {
            tracing::info!(event = %event.id, incident = %id, "a PagerDuty event for an incident Remedy does not know; nothing done");
            return (StatusCode::ACCEPTED, json!({ "ignored": format!("no incident {id}") }));
        }
        Ok(Some(_)) => {}
        Err(status) => return (StatusCode::SERVICE_UNAVAILABLE, json!({ "error": status.message() })),
    }
    let details = via(
        "pagerduty",
        &[
            ("pagerduty_event", &event.id),
            ("pagerduty_incident", &pagerduty_incident),
            ("event_type", &event.event_type),
        ],
    );
    let (call, result) = if acknowledge {
        (AdminCall::AcknowledgeIncident, ops.admin.acknowledge(id, by.clone(), details.clone()).await)
    } else {
        let reason = "resolved in PagerDuty".to_owned();
        (AdminCall::ResolveIncident, ops.admin.resolve(id, by.clone(), reason, details.clone()).await)
    };
    if let Err(status) = ops.admin.audit_command(&by, call, &id.to_string(), details, &result).await {
        tracing::error!(error = %status.message(), "cannot write the audit entry of a PagerDuty event");
    }
    let what = if acknowledge { "acknowledged" } else { "resolved" };
    match result {
        Ok(_) => {
            tracing::info!(incident = %id, %by, "{what} from PagerDuty");
            (StatusCode::OK, json!({ "done": format!("{id} {what} by {by}") }))
        }
        Err(status) if status.code() == tonic::Code::Unavailable => {
            (StatusCode::SERVICE_UNAVAILABLE, json!({ "error": status.message() }))
        }
        // Acknowledged already (Remedy's own acknowledgement coming back),
        // or closed: nothing to do, and nothing for PagerDuty to retry.
        Err(status) => (StatusCode::OK, json!({ "ignored": status.message() })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(event_type: &str, key: &str) -> String {
        json!({ "event": {
            "id": "01DEN4HPBQAAAG05V5QQYBRZMF", "event_type": event_type, "resource_type": "incident",
            "occurred_at": "2026-12-07T10:00:00.123Z",
            "agent": { "html_url": "https://acme.pagerduty.com/users/PLH1HKV", "id": "PLH1HKV",
                       "self": "https://api.pagerduty.com/users/PLH1HKV", "summary": "Alice Smith", "type": "user_reference" },
            "client": null,
            "data": { "id": "Q2S1BGCMQCZ9XZ", "type": "incident", "status": "acknowledged", "number": 7,
                      "incident_key": key, "title": "INC-000042 down", "html_url": "https://acme.pagerduty.com/incidents/Q2S1BGCMQCZ9XZ" }
        }})
        .to_string()
    }

    #[test]
    fn an_acknowledgement_names_the_remedy_incident_and_the_person() {
        let parsed = parse(event("incident.acknowledged", "remedy-INC-000042").as_bytes()).unwrap();
        assert_eq!(parsed.id, "01DEN4HPBQAAAG05V5QQYBRZMF");
        assert_eq!(parsed.occurred_at, Timestamp::parse_rfc3339("2026-12-07T10:00:00.123Z").unwrap());
        assert_eq!(
            parsed.asked,
            Asked::Act {
                acknowledge: true,
                incident: Some(IncidentId(42)),
                by: "pagerduty:Alice_Smith".into(),
                pagerduty_incident: "Q2S1BGCMQCZ9XZ".into()
            }
        );
        let resolved = parse(event("incident.resolved", "remedy-INC-000042").as_bytes()).unwrap();
        assert!(matches!(resolved.asked, Asked::Act { acknowledge: false, .. }));
    }

    #[test]
    fn other_events_and_foreign_keys_ask_nothing_of_an_incident() {
        let other = parse(event("incident.priority_updated", "remedy-INC-000042").as_bytes()).unwrap();
        assert!(matches!(other.asked, Asked::Ignore(_)));
        let foreign = parse(event("incident.acknowledged", "d3640fbd41094207a1c11e58e46b1662").as_bytes()).unwrap();
        assert!(matches!(foreign.asked, Asked::Act { incident: None, .. }));
    }

    #[test]
    fn malformed_events_are_refused_with_the_reason() {
        assert!(parse(b"{").unwrap_err().starts_with("not a PagerDuty v3 webhook event"));
        let bad_time = event("incident.acknowledged", "remedy-INC-000042").replace("2026-12-07T10:00:00.123Z", "soon");
        assert_eq!(parse(bad_time.as_bytes()).unwrap_err(), "event.occurred_at `soon` is not an RFC 3339 time");
        let long_key = event("incident.acknowledged", &"k".repeat(300));
        assert!(parse(long_key.as_bytes()).unwrap_err().contains("incident_key"));
    }

    #[test]
    fn the_signature_is_an_hmac_of_the_raw_body_and_any_listed_one_counts() {
        let secrets = vec![SigningSecret(b"new-secret".to_vec()), SigningSecret(b"old-secret".to_vec())];
        let body = br#"{"event":{}}"#;
        let header = |value: &str| {
            let mut h = HeaderMap::new();
            h.insert(SIGNATURE_HEADER, value.parse().unwrap());
            h
        };
        // Computed independently: HMAC-SHA256("old-secret", body).
        let old = super::super::sign(b"old-secret", &[body]);
        assert_eq!(verify(&header(&format!("v1=00ff,v1={old}")), body, &secrets), Ok(()));
        let forged = super::super::sign(b"guessed", &[body]);
        assert!(verify(&header(&format!("v1={forged}")), body, &secrets).is_err());
        assert!(verify(&header(&format!("v1={old}")), br#"{"event":{ }}"#, &secrets).is_err(), "the raw body");
        assert!(verify(&HeaderMap::new(), body, &secrets).unwrap_err().contains("required"));
        assert!(verify(&header("sha256=00"), body, &secrets).unwrap_err().contains("no v1"));
    }
}
