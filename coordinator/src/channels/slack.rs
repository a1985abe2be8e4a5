//! Slack incoming webhooks: `POST {"text": ..., "blocks": [...]}` to the
//! webhook's URL. `text` is the whole message (notifications and clients
//! without blocks show it); `blocks` show the same text and, on a page, an
//! Acknowledge button that Slack's interactivity sends back to the
//! coordinator (`crate::chatops::slack`).
//!
//! The URL carries the credential, so it lives in a file and is never
//! shown: not in errors, not in details, not in `Debug`.

use std::fmt;

use remedy_shared::text::Unit;

use super::http::{exchange, failure};
use super::secret::Secret;
use super::{Message, Outcome, Setup, one_line};

/// Slack truncates a message's text past 40,000 characters; staying under
/// keeps the end of a long body (the links) from silently disappearing.
const MAX_TEXT: usize = 39_000;

pub(super) struct Slack {
    url: Secret,
}

impl fmt::Debug for Slack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Slack").field("webhook_url", &self.url).finish()
    }
}

impl Slack {
    pub(super) fn build(
        setup: &Setup<'_>,
        webhook_url_file: &std::path::Path,
    ) -> Result<Self, remedy_shared::config::ConfigError> {
        let url = setup.secret("webhook_url_file", webhook_url_file)?;
        // Checked here so a typo fails at start; the message never quotes
        // the file's content, which is the credential.
        if super::http::parse_url(url.expose()).is_err() {
            return Err(setup.error(
                "webhook_url_file",
                format!("`{}` does not hold an http or https URL", webhook_url_file.display()),
            ));
        }
        Ok(Slack { url })
    }

    pub(super) fn secrets(&self) -> Vec<&Secret> {
        vec![&self.url]
    }

    pub(super) async fn attempt(&self, client: &reqwest::Client, message: &Message) -> Outcome {
        let payload = payload(message);
        match exchange(client.post(self.url.expose()).json(&payload)).await {
            Ok(a) if a.success() => Outcome::Delivered { detail: format!("HTTP {}", a.status), reference: None },
            Ok(a) => failure(&a, "webhook_url_file"),
            Err(outcome) => outcome,
        }
    }
}

/// Slack refuses a section's text past 3,000 characters.
const MAX_SECTION: usize = 3_000;

/// The webhook's JSON: the text, and blocks showing it with, on a page
/// (a trigger), an Acknowledge button carrying the incident id.
pub(super) fn payload(message: &Message) -> serde_json::Value {
    let text = text(message);
    let shown = remedy_shared::text::prefix(&text, MAX_SECTION, Unit::Chars);
    let mut blocks = vec![serde_json::json!({ "type": "section", "text": { "type": "mrkdwn", "text": shown } })];
    // Customers have nothing to press: the button is for the people on call.
    if message.event == super::Event::Trigger && message.audience == remedy_shared::comms::Audience::Internal {
        blocks.push(serde_json::json!({
            "type": "actions",
            "block_id": "remedy_incident",
            "elements": [{
                "type": "button",
                "action_id": crate::chatops::slack::ACK,
                "text": { "type": "plain_text", "text": "Acknowledge" },
                "style": "primary",
                "value": message.incident_id,
            }],
        }));
    }
    serde_json::json!({ "text": text, "blocks": blocks })
}

/// The message as Slack `mrkdwn`: the title in bold on the first line, the
/// body, then the links.
pub(super) fn text(message: &Message) -> String {
    let mut text = format!("*{}*", escape(&one_line(&message.title)));
    if !message.body.is_empty() {
        text.push('\n');
        text.push_str(&escape(&message.body));
    }
    if !message.links.is_empty() {
        let links: Vec<String> = message
            .links
            .iter()
            .map(|(name, url)| format!("<{}|{}>", escape(url).replace('|', "%7C"), escape(name).replace('|', "/")))
            .collect();
        text.push('\n');
        text.push_str(&links.join(" · "));
    }
    remedy_shared::text::prefix(&text, MAX_TEXT, Unit::Chars).to_owned()
}

/// Slack's three control characters in message text.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channels::Event;

    #[test]
    fn the_title_leads_in_bold_and_control_characters_are_escaped() {
        let mut m = Message::new("INC-000001", Event::Trigger, "critical", "API <down>\n& out", "5xx > 50%");
        m.links.insert("runbook".into(), "https://r.example/p0|1".into());
        assert_eq!(text(&m), "*API &lt;down&gt; &amp; out*\n5xx &gt; 50%\n<https://r.example/p0%7C1|runbook>");
    }

    #[test]
    fn a_page_carries_an_acknowledge_button_and_the_text_stays_as_the_fallback() {
        let mut m = Message::new("INC-000042", Event::Trigger, "critical", "API down", "x".repeat(5_000));
        let p = payload(&m);
        assert_eq!(p["text"], text(&m));
        assert_eq!(p["blocks"][0]["text"]["text"].as_str().unwrap().chars().count(), MAX_SECTION);
        let button = &p["blocks"][1]["elements"][0];
        assert_eq!((button["action_id"].as_str(), button["value"].as_str()), (Some("remedy_ack"), Some("INC-000042")));
        m.event = Event::Resolve;
        assert_eq!(payload(&m)["blocks"].as_array().unwrap().len(), 1, "nothing to press once it is over");
        m.event = Event::Trigger;
        m.audience = remedy_shared::comms::Audience::Customers;
        assert_eq!(payload(&m)["blocks"].as_array().unwrap().len(), 1, "customers get no button");
    }
}
