//! Atlassian Statuspage: one public incident per Remedy incident.
//!
//! Without a reference the message opens an incident (`POST
//! {api_base}/pages/{page_id}/incidents`) and the delivery's reference is
//! the new incident's id; with one it updates that incident (`PATCH
//! .../incidents/{id}`). Authentication is `Authorization: OAuth <key>`.
//!
//! Statuses, unless the message's [`StatusUpdate`](super::StatusUpdate)
//! says otherwise:
//!
//! | event | incident status | configured components |
//! |---|---|---|
//! | trigger | `investigating` | by severity: critical `major_outage`, warning `partial_outage`, else `degraded_performance` |
//! | acknowledge | `identified` | unchanged |
//! | update | unchanged | unchanged |
//! | resolve | `resolved` (always) | `operational` (always) |
//!
//! Opening an incident always sets a status and the components (with the
//! trigger's defaults for what the message leaves open), so a resolve whose
//! trigger never got through still leaves the page with a resolved
//! incident: what happened, after the fact.
//!
//! A create whose answer was lost (a timeout after the server acted) is
//! retried like any other and may open a second incident; the page's
//! owners can merge them, whereas a missed outage notice cannot be undone.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value, json};

use super::http::{exchange, failure};
use super::secret::Secret;
use super::{Event, Message, Outcome, Setup, one_line};

/// Statuspage's component statuses.
pub const COMPONENT_STATUSES: &[&str] =
    &["operational", "degraded_performance", "partial_outage", "major_outage", "under_maintenance"];

/// Statuspage's statuses of a (realtime) incident.
pub const INCIDENT_STATUSES: &[&str] = &["investigating", "identified", "monitoring", "resolved"];

pub(super) struct Statuspage {
    api_base: reqwest::Url,
    page_id: String,
    api_key: Secret,
    /// Component ids, by the name people use.
    components: BTreeMap<String, String>,
}

impl fmt::Debug for Statuspage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Statuspage")
            .field("api_base", &self.api_base.as_str())
            .field("page_id", &self.page_id)
            .field("api_key", &self.api_key)
            .field("components", &self.components)
            .finish()
    }
}

/// What one message asks of the page.
#[derive(Debug, PartialEq, Eq)]
struct Change<'a> {
    incident_status: Option<&'a str>,
    component_status: Option<&'a str>,
}

impl Statuspage {
    pub(super) fn build(
        setup: &Setup<'_>,
        api_base: &str,
        page_id: &str,
        api_key_file: &std::path::Path,
        components: &BTreeMap<String, String>,
    ) -> Result<Self, remedy_shared::config::ConfigError> {
        let api_base = setup.url("api_base", api_base)?;
        if api_base.cannot_be_a_base() {
            return Err(setup.error("api_base", format!("`{api_base}` cannot be a base URL")));
        }
        let page_id = page_id.trim();
        if page_id.is_empty() || !page_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            return Err(setup.error("page_id", format!("`{page_id}` is not a page id (letters, digits, - and _)")));
        }
        for (name, id) in components {
            if id.trim().is_empty() {
                return Err(setup.error(&format!("components.{name}"), "the component id is empty"));
            }
        }
        let api_key = setup.secret("api_key_file", api_key_file)?;
        Ok(Statuspage { api_base, page_id: page_id.to_owned(), api_key, components: components.clone() })
    }

    pub(super) fn secrets(&self) -> Vec<&Secret> {
        vec![&self.api_key]
    }

    pub(super) async fn attempt(&self, client: &reqwest::Client, message: &Message) -> Outcome {
        let change = match change(message) {
            Ok(c) => c,
            Err(detail) => return Outcome::Fail { detail },
        };
        let reference = message.reference.as_deref().map(str::trim).filter(|r| !r.is_empty());
        let mut url = self.api_base.clone();
        let request = {
            let Ok(mut path) = url.path_segments_mut() else {
                return Outcome::Fail { detail: "the API base URL cannot take a path".into() };
            };
            // Segments are percent-encoded as pushed: a reference is an id
            // from the API's own answer, but it is never trusted into a path.
            path.pop_if_empty().extend(["pages", self.page_id.as_str(), "incidents"]);
            if let Some(id) = reference {
                path.push(id);
            }
            drop(path);
            let body = self.body(message, &change, reference.is_none());
            let builder = match reference {
                None => client.post(url),
                Some(_) => client.patch(url),
            };
            builder.header(reqwest::header::AUTHORIZATION, format!("OAuth {}", self.api_key.expose())).json(&body)
        };
        match exchange(request).await {
            Ok(a) if a.success() => {
                let id = match reference {
                    Some(id) => Some(id.to_owned()),
                    None => serde_json::from_str::<Value>(&a.body)
                        .ok()
                        .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_owned)),
                };
                let detail = if id.is_some() {
                    format!("HTTP {}", a.status)
                } else {
                    format!(
                        "HTTP {}, but the answer named no incident id: later messages will open another incident",
                        a.status
                    )
                };
                Outcome::Delivered { detail, reference: id }
            }
            Ok(a) => failure(&a, "api_key_file"),
            Err(outcome) => outcome,
        }
    }

    /// `{"incident": {...}}` for a create (`name` and a status always) or an
    /// update (only what changes).
    fn body(&self, message: &Message, change: &Change<'_>, create: bool) -> Value {
        let mut incident = Map::new();
        let (incident_status, component_status) = if create {
            (
                Some(change.incident_status.unwrap_or("investigating")),
                Some(change.component_status.unwrap_or_else(|| outage(&message.severity))),
            )
        } else {
            (change.incident_status, change.component_status)
        };
        if create {
            incident.insert("name".into(), json!(one_line(&message.title)));
        }
        if let Some(status) = incident_status {
            incident.insert("status".into(), json!(status));
        }
        if !message.body.is_empty() {
            incident.insert("body".into(), json!(message.body));
        }
        if let Some(status) = component_status
            && !self.components.is_empty()
        {
            let ids: Vec<&String> = self.components.values().collect();
            let statuses: Map<String, Value> = ids.iter().map(|id| ((*id).clone(), json!(status))).collect();
            incident.insert("components".into(), Value::Object(statuses));
            incident.insert("component_ids".into(), json!(ids));
        }
        json!({ "incident": incident })
    }
}

/// The component status a trigger of this severity means.
fn outage(severity: &str) -> &'static str {
    match severity.trim().to_ascii_lowercase().as_str() {
        "critical" => "major_outage",
        "warning" => "partial_outage",
        _ => "degraded_performance",
    }
}

/// The statuses a message asks for, checked against Statuspage's own:
/// a typo would be a 422 from the API, found only in an outage.
fn change(message: &Message) -> Result<Change<'_>, String> {
    if message.event == Event::Resolve {
        return Ok(Change { incident_status: Some("resolved"), component_status: Some("operational") });
    }
    if let Some(status) = &message.status {
        if !INCIDENT_STATUSES.contains(&status.incident_status.as_str()) {
            return Err(format!(
                "`{}` is not a Statuspage incident status (one of {}); not sent",
                status.incident_status,
                INCIDENT_STATUSES.join(", ")
            ));
        }
        if !COMPONENT_STATUSES.contains(&status.component_status.as_str()) {
            return Err(format!(
                "`{}` is not a Statuspage component status (one of {}); not sent",
                status.component_status,
                COMPONENT_STATUSES.join(", ")
            ));
        }
        return Ok(Change {
            incident_status: Some(status.incident_status.as_str()),
            component_status: Some(status.component_status.as_str()),
        });
    }
    Ok(match message.event {
        Event::Trigger => Change { incident_status: Some("investigating"), component_status: None },
        Event::Acknowledge => Change { incident_status: Some("identified"), component_status: None },
        Event::Update | Event::Resolve => Change { incident_status: None, component_status: None },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::StatusUpdate;

    #[test]
    fn resolve_always_means_resolved_and_operational() {
        let mut m = Message::new("INC-1", Event::Resolve, "critical", "t", "b");
        m.status = Some(StatusUpdate { component_status: "major_outage".into(), incident_status: "monitoring".into() });
        assert_eq!(
            change(&m).unwrap(),
            Change { incident_status: Some("resolved"), component_status: Some("operational") }
        );
    }

    #[test]
    fn unknown_statuses_are_refused_before_sending() {
        let mut m = Message::new("INC-1", Event::Update, "critical", "t", "b");
        m.status = Some(StatusUpdate { component_status: "down".into(), incident_status: "identified".into() });
        assert!(change(&m).unwrap_err().contains("`down` is not a Statuspage component status"));
    }

    #[test]
    fn severity_picks_the_outage_on_trigger() {
        assert_eq!(outage("critical"), "major_outage");
        assert_eq!(outage("warning"), "partial_outage");
        assert_eq!(outage("info"), "degraded_performance");
    }
}
