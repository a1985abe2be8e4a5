//! The `notify` action: a runbook's message through a configured channel
//! (Slack, PagerDuty, a signed webhook, email, a status page), with the
//! channel's retries, breaker and timeout. A rehearsal sends nothing.
//!
//! A channel that returns a reference (a status page incident's id) is in
//! a conversation about the incident: the first message's reference is
//! kept on the incident (`Incident::conversations`, so in the store) and
//! every later message through that channel, from a step or from the
//! escalation policy, continues it rather than beginning another.

use crate::actuators::{ActionCall, ActionReport, ActionStatus, Actuator};
use remedy_shared::comms::Audience;
use remedy_shared::incident::{IncidentId, NO_REFERENCE};

use crate::channels::{Channels, Event, Message};
use crate::recorder::{Recorder, RunUpdate};

/// Performs `notify`.
#[derive(Debug, Clone)]
pub struct NotifyActuator {
    channels: Channels,
    /// Where the incident's conversations are read and kept; without one
    /// every message begins its own.
    recorder: Option<Recorder>,
}

impl NotifyActuator {
    /// Sends through `channels`.
    pub fn new(channels: Channels) -> Self {
        NotifyActuator { channels, recorder: None }
    }

    /// Continues and keeps the incidents' conversations through `recorder`.
    pub fn with_recorder(self, recorder: Recorder) -> Self {
        NotifyActuator { recorder: Some(recorder), ..self }
    }

    /// The reference `channel` returned for the incident, if one is kept.
    async fn conversation(&self, incident: Option<IncidentId>, channel: &str) -> Option<String> {
        let (recorder, id) = (self.recorder.as_ref()?, incident?);
        match recorder.open_incident(id).await {
            Ok(Some(incident)) => incident.conversation(channel).map(str::to_owned),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(incident = %id, error = %e, "cannot read the incident's conversations; the message begins one");
                None
            }
        }
    }

    /// Keeps what the channel returned as the incident's conversation.
    async fn remember(&self, incident: Option<IncidentId>, channel: &str, reference: &str) {
        let (Some(recorder), Some(id)) = (self.recorder.as_ref(), incident) else { return };
        let update = RunUpdate {
            incident: Some(id),
            conversation: Some((channel.to_owned(), reference.to_owned())),
            ..RunUpdate::default()
        };
        if let Err(e) = recorder.run_update(update).await {
            tracing::warn!(incident = %id, error = %e, "cannot keep the channel's reference; a later message may begin another conversation");
        }
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    channel: String,
    #[serde(default)]
    title: Option<String>,
    message: String,
    /// Who the step's author wrote the text for; the channel's own
    /// audience when not said (the author wrote it for that channel).
    #[serde(default)]
    audience: Option<remedy_shared::comms::Audience>,
}

#[tonic::async_trait]
impl Actuator for NotifyActuator {
    fn kinds(&self) -> &'static [&'static str] {
        &["notify"]
    }

    async fn execute(&self, call: &ActionCall) -> ActionReport {
        let p: Params = match serde_json::from_value(call.params.clone()) {
            Ok(p) => p,
            Err(e) => return ActionReport::new(ActionStatus::Invalid, format!("notify parameters: {e}")),
        };
        if !self.channels.contains(&p.channel) {
            return ActionReport::new(ActionStatus::Invalid, format!("channel `{}` is not configured", p.channel));
        }
        if call.dry_run {
            return ActionReport::new(
                ActionStatus::DryRun,
                format!("would tell {} through {}", call.incident_id, p.channel),
            )
            .with("channel", &p.channel);
        }
        let title = p.title.unwrap_or_else(|| format!("{} {}", call.incident_id, call.step_id));
        let incident = call.incident_id.parse::<IncidentId>().ok();
        let reference = self.conversation(incident, &p.channel).await;
        let audience = p.audience.or_else(|| self.channels.audience(&p.channel)).unwrap_or_default();
        let message = Message {
            reference,
            audience,
            ..Message::new(&call.incident_id, Event::Trigger, "critical", title, p.message)
        };
        let delivery = self.channels.send(&p.channel, &message).await;
        // A customer channel joins the incident's public story even when it
        // returns nothing to continue with: it hears every later state.
        let public = self.channels.audience(&p.channel) == Some(Audience::Customers);
        match &delivery.reference {
            Some(reference) if delivery.ok => self.remember(incident, &p.channel, reference).await,
            None if delivery.ok && public => self.remember(incident, &p.channel, NO_REFERENCE).await,
            _ => {}
        }
        let status = if delivery.ok { ActionStatus::Succeeded } else { ActionStatus::Failed };
        let verb = if delivery.ok { "told" } else { "could not tell" };
        ActionReport::new(status, format!("{verb} {} through {}: {}", call.incident_id, p.channel, delivery.detail))
            .with("channel", &p.channel)
            .with("attempts", delivery.attempts)
    }
}
