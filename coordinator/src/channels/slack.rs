//! Slack incoming webhooks: `POST {"text": ...}` to the webhook's URL.
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
        let payload = serde_json::json!({ "text": text(message) });
        match exchange(client.post(self.url.expose()).json(&payload)).await {
            Ok(a) if a.success() => Outcome::Delivered { detail: format!("HTTP {}", a.status), reference: None },
            Ok(a) => failure(&a, "webhook_url_file"),
            Err(outcome) => outcome,
        }
    }
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
}
