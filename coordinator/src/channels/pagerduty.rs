//! PagerDuty Events API v2: one alert per incident.
//!
//! Every event of an incident carries the dedup key `remedy-<incident id>`,
//! so the trigger, the acknowledgement and the resolution land on one
//! PagerDuty alert. The routing key travels in the body; PagerDuty answers
//! 202 when it queued the event.
//!
//! An [`Event::Update`] is sent as a `trigger` with the same dedup key:
//! PagerDuty folds it into the open alert's log (no new page), so
//! responders see the news where they work. After a resolve, a trigger
//! would open a new alert; Remedy does not send updates after resolving.
//!
//! Severity: `critical`, `error`, `warning` and `info` pass as they are
//! (any case); anything else is sent as `error`. An unclassified problem
//! should reach a person rather than sit as `info`, but not wake them as
//! `critical`.

use std::fmt;

use remedy_shared::text::{self, Unit};
use serde_json::{Value, json};

use super::http::{exchange, failure};
use super::secret::Secret;
use super::{Event, Message, Outcome, Setup, one_line};

/// PagerDuty refuses summaries longer than this.
const MAX_SUMMARY: usize = 1024;

/// PagerDuty's limit on a dedup key.
const MAX_DEDUP_KEY: usize = 255;

pub(super) struct PagerDuty {
    events_url: reqwest::Url,
    routing_key: Secret,
}

impl fmt::Debug for PagerDuty {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PagerDuty")
            .field("events_url", &self.events_url.as_str())
            .field("routing_key", &self.routing_key)
            .finish()
    }
}

impl PagerDuty {
    pub(super) fn build(
        setup: &Setup<'_>,
        routing_key_file: &std::path::Path,
        events_url: &str,
    ) -> Result<Self, remedy_shared::config::ConfigError> {
        let events_url = setup.url("events_url", events_url)?;
        let routing_key = setup.secret("routing_key_file", routing_key_file)?;
        Ok(PagerDuty { events_url, routing_key })
    }

    pub(super) fn secrets(&self) -> Vec<&Secret> {
        vec![&self.routing_key]
    }

    pub(super) async fn attempt(&self, client: &reqwest::Client, message: &Message) -> Outcome {
        let event = event(self.routing_key.expose(), message);
        match exchange(client.post(self.events_url.clone()).json(&event)).await {
            Ok(a) if a.success() => {
                // PagerDuty echoes the key it filed the event under.
                let echoed = serde_json::from_str::<Value>(&a.body)
                    .ok()
                    .and_then(|v| v.get("dedup_key").and_then(Value::as_str).map(str::to_owned));
                Outcome::Delivered {
                    detail: format!("HTTP {}", a.status),
                    reference: Some(echoed.unwrap_or_else(|| dedup_key(&message.incident_id))),
                }
            }
            Ok(a) => failure(&a, "routing_key_file"),
            Err(outcome) => outcome,
        }
    }
}

/// The dedup key of an incident's alert.
pub fn dedup_key(incident_id: &str) -> String {
    text::prefix(&format!("remedy-{incident_id}"), MAX_DEDUP_KEY, Unit::Chars).to_owned()
}

/// PagerDuty's severity for a message's.
pub fn severity(severity: &str) -> &'static str {
    match severity.trim().to_ascii_lowercase().as_str() {
        "critical" => "critical",
        "warning" => "warning",
        "info" => "info",
        _ => "error",
    }
}

fn action(event: Event) -> &'static str {
    match event {
        Event::Trigger | Event::Update => "trigger",
        Event::Acknowledge => "acknowledge",
        Event::Resolve => "resolve",
    }
}

/// The event's JSON. Only a trigger carries `payload` and `links`:
/// acknowledge and resolve refer to the alert by its key alone.
fn event(routing_key: &str, message: &Message) -> Value {
    let mut event = json!({
        "routing_key": routing_key,
        "event_action": action(message.event),
        "dedup_key": dedup_key(&message.incident_id),
    });
    if action(message.event) == "trigger" {
        let source = if message.source.trim().is_empty() { "remedy" } else { message.source.as_str() };
        event["payload"] = json!({
            "summary": text::prefix(&one_line(&message.title), MAX_SUMMARY, Unit::Chars),
            "source": source,
            "severity": severity(&message.severity),
            "custom_details": {
                "incident_id": message.incident_id,
                "event": message.event.as_str(),
                "body": message.body,
            },
        });
        event["client"] = json!("Remedy");
        if !message.links.is_empty() {
            let links: Vec<Value> =
                message.links.iter().map(|(text, href)| json!({ "href": href, "text": text })).collect();
            event["links"] = Value::Array(links);
        }
    }
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severities_map_and_unknown_ones_become_error() {
        assert_eq!(severity("Critical"), "critical");
        assert_eq!(severity("warning"), "warning");
        assert_eq!(severity("info"), "info");
        assert_eq!(severity("error"), "error");
        assert_eq!(severity("sev1"), "error");
        assert_eq!(severity(""), "error");
    }

    #[test]
    fn only_triggers_carry_a_payload_and_summaries_are_bounded() {
        let mut m = Message::new("INC-000042", Event::Trigger, "critical", "x".repeat(2000), "body");
        let e = event("k", &m);
        assert_eq!(e["payload"]["summary"].as_str().unwrap().chars().count(), MAX_SUMMARY);
        assert_eq!(e["dedup_key"], "remedy-INC-000042");
        m.event = Event::Resolve;
        let e = event("k", &m);
        assert_eq!(e["event_action"], "resolve");
        assert!(e.get("payload").is_none());
        m.event = Event::Update;
        assert_eq!(event("k", &m)["event_action"], "trigger");
    }
}
