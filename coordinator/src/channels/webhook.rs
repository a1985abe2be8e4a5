//! Generic webhooks: the message as JSON, signed.
//!
//! # Verifying a delivery
//!
//! Each request carries two headers:
//!
//! - `X-Remedy-Timestamp`: Unix seconds when this attempt was sent;
//! - `X-Remedy-Signature`: `sha256=` and the lowercase hex HMAC-SHA256,
//!   keyed with the channel's shared secret (the content of `secret_file`,
//!   surrounding whitespace removed), of the timestamp, a `.`, and the raw
//!   request body, byte for byte: `HMAC(secret, "<timestamp>.<body>")`.
//!
//! A receiver recomputes the HMAC over the body exactly as received (before
//! any JSON parsing), compares it with the header in constant time, and
//! refuses timestamps far from its own clock (five minutes is usual) so a
//! recorded request cannot be replayed later. Each retry is signed anew
//! with its own timestamp.
//!
//! The body is a JSON object: `incident_id`, `event` (`trigger`,
//! `acknowledge`, `resolve`, `update`), `severity`, `title`, `body`,
//! `links` (name to URL), `source`, `sent_at` (RFC 3339), `audience`
//! (`internal`, or `customers` for words written for customers: only
//! those reach a channel configured `audience: customers`), and `status`
//! (`component_status`, `incident_status`) when the message has one.

use std::fmt;

use ring::hmac;
use serde::Serialize;

use super::http::{exchange, failure};
use super::secret::Secret;
use super::{Message, Outcome, Setup, StatusUpdate};
use remedy_shared::Timestamp;

/// The header with the attempt's Unix time in seconds.
pub const TIMESTAMP_HEADER: &str = "X-Remedy-Timestamp";

/// The header with `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`.
pub const SIGNATURE_HEADER: &str = "X-Remedy-Signature";

pub(super) struct Webhook {
    url: reqwest::Url,
    secret: Secret,
}

impl fmt::Debug for Webhook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Webhook").field("url", &self.url.as_str()).field("secret", &self.secret).finish()
    }
}

#[derive(Serialize)]
struct Payload<'a> {
    incident_id: &'a str,
    event: &'static str,
    severity: &'a str,
    title: &'a str,
    body: &'a str,
    links: &'a std::collections::BTreeMap<String, String>,
    source: &'a str,
    sent_at: String,
    audience: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'a StatusUpdate>,
}

impl Webhook {
    pub(super) fn build(
        setup: &Setup<'_>,
        url: &str,
        secret_file: &std::path::Path,
    ) -> Result<Self, remedy_shared::config::ConfigError> {
        let url = setup.url("url", url)?;
        let secret = setup.secret("secret_file", secret_file)?;
        Ok(Webhook { url, secret })
    }

    pub(super) fn secrets(&self) -> Vec<&Secret> {
        vec![&self.secret]
    }

    pub(super) async fn attempt(&self, client: &reqwest::Client, message: &Message, now: Timestamp) -> Outcome {
        let payload = Payload {
            incident_id: &message.incident_id,
            event: message.event.as_str(),
            severity: &message.severity,
            title: &message.title,
            body: &message.body,
            links: &message.links,
            source: &message.source,
            sent_at: now.to_string(),
            audience: message.audience.as_str(),
            status: message.status.as_ref(),
        };
        // Serialized once: the bytes signed are the bytes sent.
        let body = match serde_json::to_vec(&payload) {
            Ok(b) => b,
            Err(e) => return Outcome::Fail { detail: format!("cannot encode the message: {e}") },
        };
        let timestamp = unix_seconds(now);
        let request = client
            .post(self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, signature(self.secret.expose().as_bytes(), timestamp, &body))
            .body(body);
        match exchange(request).await {
            Ok(a) if a.success() => Outcome::Delivered { detail: format!("HTTP {}", a.status), reference: None },
            Ok(a) => failure(&a, "secret_file"),
            Err(outcome) => outcome,
        }
    }
}

fn unix_seconds(t: Timestamp) -> i64 {
    t.as_millis().div_euclid(1000)
}

/// `sha256=<hex>` of HMAC-SHA256(`key`, `"<timestamp>.<body>"`).
pub fn signature(key: &[u8], timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    let tag = ctx.sign();
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256=");
    for byte in tag.as_ref() {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_dot_body_in_lowercase_hex() {
        // Computed independently: HMAC-SHA256("secret", "1700000000.{\"a\":1}").
        assert_eq!(
            signature(b"secret", 1_700_000_000, br#"{"a":1}"#),
            "sha256=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
    }
}
