//! The `notify` action: a runbook's message through a configured channel
//! (Slack, PagerDuty, a signed webhook, email, a status page), with the
//! channel's retries, breaker and timeout. A rehearsal sends nothing.

use crate::actuators::{ActionCall, ActionReport, ActionStatus, Actuator};
use crate::channels::{Channels, Event, Message};

/// Performs `notify`.
#[derive(Debug, Clone)]
pub struct NotifyActuator {
    channels: Channels,
}

impl NotifyActuator {
    /// Sends through `channels`.
    pub fn new(channels: Channels) -> Self {
        NotifyActuator { channels }
    }
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Params {
    channel: String,
    #[serde(default)]
    title: Option<String>,
    message: String,
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
        let message = Message::new(&call.incident_id, Event::Trigger, "critical", title, p.message);
        let delivery = self.channels.send(&p.channel, &message).await;
        let status = if delivery.ok { ActionStatus::Succeeded } else { ActionStatus::Failed };
        let verb = if delivery.ok { "told" } else { "could not tell" };
        ActionReport::new(status, format!("{verb} {} through {}: {}", call.incident_id, p.channel, delivery.detail))
            .with("channel", &p.channel)
            .with("attempts", delivery.attempts)
    }
}
