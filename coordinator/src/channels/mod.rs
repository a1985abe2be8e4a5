//! Notification channels: how people are told about incidents.
//!
//! A channel is named in the coordinator's configuration and is one of
//! Slack, PagerDuty, a signed generic webhook, email or Statuspage.
//! [`Channels`] reads every secret when it is built, so a missing file
//! stops the coordinator at start rather than in an outage, and then
//! delivers [`Message`]s:
//!
//! - each delivery is tried up to `retries.attempts` times, each attempt
//!   bounded by `timeout`, with exponential backoff and jitter between
//!   attempts (`Retry-After` honoured on a 429, capped at `retries.max`).
//!   Connection failures, timeouts, 408, 429 and 5xx are retried; any other
//!   refusal is final at once, and a 401/403 says the credential was
//!   refused. A page is more patient ([`Patience`]): it keeps retrying past
//!   `retries.attempts` until its level's time is up, so a pager that is
//!   down for a minute still delivers the page once it is back, and it
//!   stops as soon as the incident is acknowledged or resolved;
//! - each channel has a breaker ([`remedy_shared::breaker`]): after
//!   `breaker.failure_threshold` consecutive failed deliveries it refuses
//!   sends at once for `breaker.recovery`, then lets one trial through;
//! - secrets never appear in `Debug` output, logs or a [`Delivery`]'s
//!   detail: answers quoted in details are scrubbed of them.
//!
//! A delivery never panics and never takes longer than
//! `attempts × (timeout + retries.max)`, or, for a patient one, than its
//! deadline plus one attempt and one delay.
//!
//! # Configuration
//!
//! ```yaml
//! channels:
//!   slack-ops: {type: slack, webhook_url_file: /etc/remedy/secrets/slack-ops}
//!   pager:
//!     type: pagerduty
//!     routing_key_file: /etc/remedy/secrets/pd
//!     events_url: https://events.pagerduty.com/v2/enqueue   # the default
//!     retries: {attempts: 5, initial: 2s, max: 1m}            # any channel; defaults 3, 1s, 30s
//!     timeout: 10s                                            # any channel; default 5s
//!     breaker: {failure_threshold: 5, recovery: 5m}           # any channel; defaults 10, 120s
//!   hooks: {type: webhook, url: https://hooks.example.com/remedy, secret_file: /etc/remedy/secrets/hmac}
//!   mail:
//!     type: email
//!     smtp: {host: smtp.example.com, port: 587, tls: starttls,   # tls: none | starttls (default) | tls
//!            username_file: /etc/remedy/secrets/smtp-user, password_file: /etc/remedy/secrets/smtp-pass,
//!            ca_file: /etc/remedy/smtp-ca.pem}   # optional: PEM CAs trusted besides the public roots
//!     from: "Remedy <remedy@example.com>"
//!     to: [ops@example.com]
//!   status:
//!     type: statuspage
//!     api_base: https://api.statuspage.io/v1                  # the default
//!     page_id: abc
//!     api_key_file: /etc/remedy/secrets/statuspage
//!     components: {api: cmp123}                               # name: component id
//! ```
//!
//! Every channel also takes `audience: internal | customers` (a status page
//! defaults to `customers`, every other kind to `internal`): a message
//! written for the people handling an incident ([`Message::audience`]) is
//! refused by a customer channel, unsent, whoever sends it.
//!
//! Secrets are only ever named by file (surrounding whitespace dropped).
//! Credentials over `tls: none` are refused unless the relay is on
//! loopback. An email channel's `smtp.ca_file` is for a relay whose
//! certificate a private CA signed: its certificates are trusted in
//! addition to the public roots, and it is read with the configuration (an
//! unreadable file or one without a certificate is a configuration error).
//! `tls: starttls` never falls back to clear text: a relay that does not
//! offer STARTTLS gets neither the credentials nor the mail.
//!
//! # On the wire
//!
//! - **Slack**: `POST {"text": "*<title>*\n<body>\n<links>", "blocks":
//!   [...]}` (mrkdwn, `&<>` escaped) to the webhook URL; the blocks show
//!   the same text and, on a page to the people on call (a trigger written
//!   for internal readers), an Acknowledge button (`remedy_ack`, answered
//!   at `/api/v1/slack/actions`; see `slack.rs`).
//! - **PagerDuty** (Events API v2): `POST {events_url}` with `routing_key`,
//!   `event_action`, `dedup_key` = `remedy-<incident_id>` (see
//!   [`pagerduty_dedup_key`]), and on a trigger `payload` (`summary` cut at
//!   1024 characters, `source`, `severity`, `custom_details`) and `links`.
//!   An [`Event::Update`] is sent as a `trigger` with the same key, which
//!   PagerDuty folds into the open alert's log without paging again.
//!   Severities `critical`, `error`, `warning`, `info` pass; any other is
//!   sent as `error` ([`pagerduty_severity`]).
//! - **Webhook**: `POST` of the message as JSON (`incident_id`, `event`,
//!   `severity`, `title`, `body`, `links`, `source`, `sent_at` in RFC 3339,
//!   and `status` when set), with [`TIMESTAMP_HEADER`] (Unix seconds) and
//!   [`SIGNATURE_HEADER`]: `sha256=` and the lowercase hex HMAC-SHA256,
//!   keyed with the secret, of `"<timestamp>.<raw body>"`
//!   ([`webhook_signature`]). A receiver recomputes it over the body bytes
//!   as received, compares in constant time, and refuses timestamps far
//!   from its clock (five minutes is usual) against replays. Each retry is
//!   signed anew.
//! - **Email**: one plain-text message per delivery, subject the title,
//!   body then links; recipients are [`Message::email_to`], or the
//!   channel's `to` when that is empty. A MIME message (`MIME-Version:
//!   1.0`, `Content-Type: text/plain; charset=utf-8`, 7bit,
//!   quoted-printable or base64 as the text needs) with `Date`,
//!   `Auto-Submitted: auto-generated` (RFC 3834: no vacation replies) and
//!   `X-Auto-Response-Suppress: All`. Mails of one incident thread: its
//!   root id is `<remedy.<incident_id>@<from domain>>` (bytes other than
//!   letters, digits, `-` and `_` written `=XX`). The first trigger of an
//!   incident a channel delivers is the root (that is its `Message-ID`);
//!   every other mail (acknowledgements, updates, resolves, later triggers
//!   such as the next escalation level's page) has a `Message-ID` of its
//!   own, `<remedy.<incident_id>.<event>.<random>@<from domain>>`, and
//!   names the root in `In-Reply-To` and `References`. Which incidents'
//!   roots were sent is kept in memory (the latest 4096): after a restart
//!   the next trigger of an older incident is the root again.
//! - **Statuspage**: without [`Message::reference`], `POST
//!   {api_base}/pages/{page_id}/incidents` with `{"incident": {"name",
//!   "status", "body", "components", "component_ids"}}`, the new id becoming
//!   [`Delivery::reference`]; with one, `PATCH .../incidents/{id}` with
//!   what changes. Header `Authorization: OAuth <key>`. Unless
//!   [`Message::status`] says otherwise: a trigger is `investigating` with
//!   the components at `major_outage` (critical), `partial_outage`
//!   (warning) or `degraded_performance`; an acknowledgement `identified`;
//!   an update changes only the body; a resolve is always `resolved` with
//!   the components `operational`.

mod config;
mod email;
mod http;
mod pagerduty;
mod secret;
mod slack;
mod statuspage;
mod webhook;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use remedy_shared::Timestamp;
use remedy_shared::backoff::Backoff;
use remedy_shared::breaker::{Admission, Breaker, Transition};
use remedy_shared::comms::Audience;
use remedy_shared::config::{ConfigError, format_duration};
use remedy_shared::sync::lock;

use crate::clock::Clock;

pub use config::{
    BreakerConfig, ChannelConfig, ChannelKind, DEFAULT_EVENTS_URL, DEFAULT_STATUSPAGE_API, DEFAULT_TIMEOUT, Retries,
    SmtpConfig, SmtpTls,
};
pub use pagerduty::{dedup_key as pagerduty_dedup_key, severity as pagerduty_severity};
pub use statuspage::{COMPONENT_STATUSES, INCIDENT_STATUSES};
pub use webhook::{SIGNATURE_HEADER, TIMESTAMP_HEADER, signature as webhook_signature};

/// Most attempts one delivery may be configured to make: retries are for
/// blips, and a delivery must stay short enough for a fallback to matter.
pub const MAX_ATTEMPTS: u32 = 20;

/// Most attempts a patient delivery makes, whatever its deadline: a bound
/// on the loop if a channel answers "try again" at once forever.
pub const MAX_PATIENT_ATTEMPTS: u32 = 1_000;

/// How long one delivery keeps trying. The default is the channel's
/// configured `retries.attempts`.
#[derive(Debug, Clone, Default)]
pub struct Patience {
    /// Keep retrying past `retries.attempts` while the next attempt would
    /// start before this moment (tokio's clock): a page's level deadline.
    pub until: Option<tokio::time::Instant>,
    /// Stop retrying once this turns `true` (the incident was acknowledged
    /// or resolved meanwhile): the attempt under way finishes, no other
    /// starts.
    pub stop: Option<tokio::sync::watch::Receiver<bool>>,
}

impl Patience {
    /// Keeps trying until `until`, stopping early when `stop` says so.
    pub fn until(until: tokio::time::Instant, stop: Option<tokio::sync::watch::Receiver<bool>>) -> Patience {
        Patience { until: Some(until), stop }
    }

    fn stopped(&self) -> bool {
        self.stop.as_ref().is_some_and(|s| *s.borrow())
    }

    /// Waits `delay`; false when told to stop first.
    async fn wait(&self, delay: Duration) -> bool {
        let Some(mut stop) = self.stop.clone() else {
            tokio::time::sleep(delay).await;
            return true;
        };
        tokio::select! {
            () = tokio::time::sleep(delay) => true,
            // A dropped sender (the escalator stopping) is not a stop.
            Ok(_) = stop.wait_for(|s| *s) => false,
        }
    }
}

/// What happened to an incident, as a channel tells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    /// The incident opened (or escalated): someone should look.
    Trigger,
    /// A person took it.
    Acknowledge,
    /// It is over.
    Resolve,
    /// News about an open incident.
    Update,
}

impl Event {
    /// The lowercase name, as the webhook payload writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Event::Trigger => "trigger",
            Event::Acknowledge => "acknowledge",
            Event::Resolve => "resolve",
            Event::Update => "update",
        }
    }
}

/// What a Statuspage incident and its components should say.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusUpdate {
    /// One of [`COMPONENT_STATUSES`]: `major_outage`, `partial_outage`,
    /// `degraded_performance`, `operational` (or `under_maintenance`).
    pub component_status: String,
    /// One of [`INCIDENT_STATUSES`]: `investigating`, `identified`,
    /// `monitoring`, `resolved`.
    pub incident_status: String,
}

/// One notification about an incident. Each channel uses what it can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The incident, `INC-000042`. PagerDuty's dedup key is
    /// `remedy-<incident_id>`, so every event of an incident lands on one
    /// PagerDuty alert.
    pub incident_id: String,
    /// What happened.
    pub event: Event,
    /// `critical`, `warning` or `info` (PagerDuty also knows `error`; any
    /// other value is sent to PagerDuty as `error`).
    pub severity: String,
    /// One line: Slack's bold first line, the email subject, PagerDuty's
    /// summary (cut at 1024 characters), the Statuspage incident's name.
    /// Line breaks are folded into spaces.
    pub title: String,
    /// The full text: Slack's text, the email body, the webhook's `body`,
    /// the Statuspage update.
    pub body: String,
    /// Recipients for email channels; empty means the channel's `to`.
    pub email_to: Vec<String>,
    /// For Statuspage only; see `statuspage.rs` for what applies without it.
    pub status: Option<StatusUpdate>,
    /// What an earlier [`Delivery`] of this incident on this channel
    /// returned (the Statuspage incident id), so later messages update the
    /// same thing.
    pub reference: Option<String>,
    /// Named links (runbook, dashboard): Slack and email list them,
    /// PagerDuty attaches them to a trigger, the webhook passes them on.
    pub links: BTreeMap<String, String>,
    /// Who reports: PagerDuty's `payload.source`; empty means `remedy`.
    pub source: String,
    /// Who the text was written for. Text for the people handling the
    /// incident ([`Audience::Internal`], the default) is refused by a
    /// customer channel.
    pub audience: Audience,
}

impl Message {
    /// A message with no recipients, status, reference or links, from
    /// source `remedy`.
    pub fn new(
        incident_id: impl Into<String>,
        event: Event,
        severity: impl Into<String>,
        title: impl Into<String>,
        body: impl Into<String>,
    ) -> Self {
        Message {
            incident_id: incident_id.into(),
            event,
            severity: severity.into(),
            title: title.into(),
            body: body.into(),
            email_to: Vec::new(),
            status: None,
            reference: None,
            links: BTreeMap::new(),
            source: "remedy".to_owned(),
            audience: Audience::Internal,
        }
    }
}

/// How one send to one channel went: what the caller records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// The channel's name.
    pub channel: String,
    /// Whether the channel took the message.
    pub ok: bool,
    /// Attempts made (0 when none could be: breaker open, unknown channel).
    pub attempts: u32,
    /// What the last attempt came to (`HTTP 202`, `SMTP 250`, the error),
    /// or why nothing was sent. Never contains a secret.
    pub detail: String,
    /// What later messages of this incident on this channel should carry
    /// as [`Message::reference`]: the Statuspage incident id, the
    /// PagerDuty dedup key.
    pub reference: Option<String>,
    /// The channel's breaker was open: nothing was sent.
    pub skipped_by_breaker: bool,
    /// Retrying stopped because [`Patience::stop`] said so: not delivered,
    /// and not a failure of the channel either.
    pub stopped: bool,
}

/// One attempt's result, as the channel modules report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Taken.
    Delivered { detail: String, reference: Option<String> },
    /// Not taken, and worth another attempt (after `after` if the service
    /// said so).
    Retry { detail: String, after: Option<Duration> },
    /// Not taken, and asking again will not change that.
    Fail { detail: String },
}

/// The configured channels, ready to send. Cloning is cheap and clones
/// share connections and breakers.
#[derive(Clone)]
pub struct Channels {
    inner: Arc<Inner>,
}

struct Inner {
    client: reqwest::Client,
    /// Shared by every copy made with [`Channels::with_clock`], so each
    /// channel keeps one breaker.
    channels: Arc<BTreeMap<String, Channel>>,
    /// The breakers' clock starts here (tokio's, so a paused test clock
    /// drives it too).
    start: tokio::time::Instant,
    /// Dates what is sent and when a breaker's next trial is due.
    clock: Clock,
}

struct Channel {
    transport: Transport,
    audience: Audience,
    retries: Retries,
    timeout: Duration,
    breaker: Mutex<Breaker>,
}

enum Transport {
    Slack(slack::Slack),
    PagerDuty(pagerduty::PagerDuty),
    Webhook(webhook::Webhook),
    Email(Box<email::Email>),
    Statuspage(statuspage::Statuspage),
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Each inner type's Debug is written by hand to redact its secrets.
        match self {
            Transport::Slack(t) => t.fmt(f),
            Transport::PagerDuty(t) => t.fmt(f),
            Transport::Webhook(t) => t.fmt(f),
            Transport::Email(t) => t.fmt(f),
            Transport::Statuspage(t) => t.fmt(f),
        }
    }
}

impl fmt::Debug for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Channel")
            .field("transport", &self.transport)
            .field("audience", &self.audience)
            .field("retries", &self.retries)
            .field("timeout", &self.timeout)
            .field("breaker", &*lock(&self.breaker))
            .finish()
    }
}

impl fmt::Debug for Channels {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.inner.channels.iter()).finish()
    }
}

impl Transport {
    fn secrets(&self) -> Vec<&secret::Secret> {
        match self {
            Transport::Slack(t) => t.secrets(),
            Transport::PagerDuty(t) => t.secrets(),
            Transport::Webhook(t) => t.secrets(),
            Transport::Email(t) => t.secrets(),
            Transport::Statuspage(t) => t.secrets(),
        }
    }

    async fn attempt(&self, client: &reqwest::Client, message: &Message, now: Timestamp) -> Outcome {
        match self {
            Transport::Slack(t) => t.attempt(client, message).await,
            Transport::PagerDuty(t) => t.attempt(client, message).await,
            Transport::Webhook(t) => t.attempt(client, message, now).await,
            Transport::Email(t) => t.attempt(message).await,
            Transport::Statuspage(t) => t.attempt(client, message).await,
        }
    }
}

/// Building one channel: errors name `channels.<name>.<field>`.
pub(crate) struct Setup<'a> {
    source: &'a str,
    channel: &'a str,
}

impl Setup<'_> {
    fn error(&self, field: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::new(self.source, format!("channels.{}.{field}", self.channel), message)
    }

    fn secret(&self, field: &str, path: &Path) -> Result<secret::Secret, ConfigError> {
        secret::read_secret_file(path).map_err(|e| self.error(field, e))
    }

    fn url(&self, field: &str, text: &str) -> Result<reqwest::Url, ConfigError> {
        http::parse_url(text).map_err(|e| self.error(field, e))
    }
}

fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        // A notification goes where it was configured to go.
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("remedy-coordinator/", env!("CARGO_PKG_VERSION")))
        .build()
}

impl Channels {
    /// Checks every channel and reads every secret file now. Errors name
    /// the field as `channels.<name>.<field>`, from `source` (the
    /// configuration file).
    pub fn from_config(source: &str, config: &BTreeMap<String, ChannelConfig>) -> Result<Channels, ConfigError> {
        let client = http_client()
            .map_err(|e| ConfigError::new(source, "channels", format!("cannot set up the HTTP client: {e}")))?;
        let mut channels = BTreeMap::new();
        for (name, cfg) in config {
            let setup = Setup { source, channel: name };
            if name.trim().is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(ConfigError::new(
                    source,
                    format!("channels.{name}"),
                    "a channel name must be non-empty, without spaces or control characters",
                ));
            }
            channels.insert(name.clone(), build_channel(&setup, cfg)?);
        }
        let inner =
            Inner { client, channels: Arc::new(channels), start: tokio::time::Instant::now(), clock: Clock::System };
        Ok(Channels { inner: Arc::new(inner) })
    }

    /// No channels: every send fails saying the channel is not configured.
    pub fn none() -> Result<Channels, reqwest::Error> {
        let inner = Inner {
            client: http_client()?,
            channels: Arc::default(),
            start: tokio::time::Instant::now(),
            clock: Clock::System,
        };
        Ok(Channels { inner: Arc::new(inner) })
    }

    /// The same channels (and breakers), dating what they send by `clock`.
    pub fn with_clock(&self, clock: Clock) -> Channels {
        let i = &self.inner;
        let inner = Inner { client: i.client.clone(), channels: i.channels.clone(), start: i.start, clock };
        Channels { inner: Arc::new(inner) }
    }

    /// The channels' names, in order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.inner.channels.keys().map(String::as_str)
    }

    /// Whether a channel of this name is configured.
    pub fn contains(&self, name: &str) -> bool {
        self.inner.channels.contains_key(name)
    }

    /// Who reads what the channel of this name carries.
    pub fn audience(&self, name: &str) -> Option<Audience> {
        self.inner.channels.get(name).map(|c| c.audience)
    }

    /// Sends `message` to `channel`, with retries and backoff, through the
    /// channel's breaker. Never panics, never takes longer than
    /// `attempts × (timeout + retries.max)`.
    pub async fn send(&self, channel: &str, message: &Message) -> Delivery {
        self.send_with(channel, message, &Patience::default()).await
    }

    /// [`Channels::send`], trying for as long as `patience` says.
    pub async fn send_with(&self, channel: &str, message: &Message, patience: &Patience) -> Delivery {
        let Some(ch) = self.inner.channels.get(channel) else {
            return Delivery {
                channel: channel.to_owned(),
                ok: false,
                attempts: 0,
                detail: format!("no channel named `{channel}` is configured"),
                reference: None,
                skipped_by_breaker: false,
                stopped: false,
            };
        };
        if ch.audience == Audience::Customers && message.audience == Audience::Internal {
            // Never a retry, never a breaker failure: the text is wrong for
            // the channel, not the channel for the text.
            return Delivery {
                channel: channel.to_owned(),
                ok: false,
                attempts: 0,
                detail: format!(
                    "not sent: `{channel}` reaches customers and this text was written for the people handling the incident"
                ),
                reference: None,
                skipped_by_breaker: false,
                stopped: false,
            };
        }
        let admission = lock(&ch.breaker).admit(self.now());
        if let Admission::Refused { until } = admission {
            let detail = self.refusal(ch, until);
            tracing::debug!(channel, incident = %message.incident_id, "{detail}");
            return Delivery {
                channel: channel.to_owned(),
                ok: false,
                attempts: 0,
                detail,
                reference: None,
                skipped_by_breaker: true,
                stopped: false,
            };
        }
        if admission == Admission::Trial {
            tracing::info!(channel, "breaker half-open: trying one delivery");
        }
        let delivery = self.deliver(channel, ch, message, patience).await;
        if delivery.stopped {
            // Nothing about the channel was learnt: its breaker is left as it was.
            return delivery;
        }
        let transition = lock(&ch.breaker).record(delivery.ok, self.now());
        match transition {
            Some(Transition::Opened { until }) => tracing::warn!(
                channel,
                failure_threshold = lock(&ch.breaker).failure_threshold(),
                "breaker opened: sends to this channel are refused for {}",
                format_duration(until.saturating_sub(self.now()))
            ),
            Some(Transition::Closed) => tracing::info!(channel, "breaker closed: the channel delivers again"),
            None => {}
        }
        delivery
    }

    /// Tries `channels` in order until one delivers. Returns every
    /// attempt's delivery in order, the failed ones too, so the caller can
    /// record them; empty when `channels` is.
    ///
    /// With a deadline, the channels share the time left to it in order:
    /// of `n` channels, the first keeps retrying until a `1/n` share of it
    /// has passed, the second until `2/n`, and the last until the
    /// deadline, each making at least its configured attempts. A person
    /// whose pager is down for a minute is paged there when it is back;
    /// one whose pager stays down hears through their next channel before
    /// the level's time is up.
    pub async fn send_first(&self, channels: &[String], message: &Message, patience: &Patience) -> Vec<Delivery> {
        let mut deliveries = Vec::new();
        let start = tokio::time::Instant::now();
        let n = u32::try_from(channels.len()).unwrap_or(u32::MAX).max(1);
        for (i, channel) in (1u32..).zip(channels) {
            let share = Patience {
                until: patience.until.map(|until| start + until.saturating_duration_since(start) * i / n),
                stop: patience.stop.clone(),
            };
            let delivery = self.send_with(channel, message, &share).await;
            let (ok, stopped) = (delivery.ok, delivery.stopped);
            deliveries.push(delivery);
            if ok || stopped {
                break;
            }
        }
        deliveries
    }

    /// The breakers' clock: an offset from this set's creation.
    fn now(&self) -> Duration {
        tokio::time::Instant::now().saturating_duration_since(self.inner.start)
    }

    fn refusal(&self, ch: &Channel, until: Duration) -> String {
        let wait = until.saturating_sub(self.now());
        let at = self.inner.clock.now().plus(wait);
        format!(
            "not sent: the channel's breaker is open after {} consecutive failed deliveries; next trial at {at} (in {})",
            lock(&ch.breaker).failure_threshold(),
            format_duration(round_to_millis(wait))
        )
    }

    async fn deliver(&self, name: &str, ch: &Channel, message: &Message, patience: &Patience) -> Delivery {
        let secrets = ch.transport.secrets();
        let clean = |text: &str| secret::scrub(text, &secrets);
        let mut backoff = Backoff::new(ch.retries.initial, ch.retries.max);
        let mut attempts = 0;
        let started = tokio::time::Instant::now();
        loop {
            attempts += 1;
            // The transports set their own timeouts too (lettre's per
            // command); this one bounds the whole attempt, answer included.
            let outcome = tokio::time::timeout(
                ch.timeout,
                ch.transport.attempt(&self.inner.client, message, self.inner.clock.now()),
            )
            .await
            .unwrap_or_else(|_| Outcome::Retry {
                detail: format!("no answer within {}", format_duration(ch.timeout)),
                after: None,
            });
            let delivery = |ok: bool, detail: String, reference: Option<String>| Delivery {
                channel: name.to_owned(),
                ok,
                attempts,
                detail: clean(&detail),
                reference,
                skipped_by_breaker: false,
                stopped: false,
            };
            match outcome {
                Outcome::Delivered { detail, reference } => {
                    tracing::debug!(channel = name, incident = %message.incident_id, attempts, "delivered");
                    return delivery(true, detail, reference);
                }
                Outcome::Fail { detail } => {
                    let d = delivery(false, detail, None);
                    tracing::warn!(channel = name, incident = %message.incident_id, attempts, "not delivered: {}", d.detail);
                    return d;
                }
                Outcome::Retry { detail, after } => {
                    let jitter: f64 = rand::random();
                    let backoff_delay = backoff.next_delay(jitter);
                    let delay = after.map_or(backoff_delay, |d| d.min(ch.retries.max));
                    let time_left = patience.until.is_some_and(|until| tokio::time::Instant::now() + delay < until);
                    if (attempts >= ch.retries.attempts && !time_left) || attempts >= MAX_PATIENT_ATTEMPTS {
                        let why = if patience.until.is_some() && attempts >= ch.retries.attempts {
                            format!(
                                "gave up after {attempts} attempts over {}: its time was up",
                                format_duration(round_to_seconds(started.elapsed()))
                            )
                        } else {
                            format!("gave up after {attempts} attempts")
                        };
                        let d = delivery(false, format!("{detail} ({why})"), None);
                        tracing::warn!(channel = name, incident = %message.incident_id, attempts, "not delivered: {}", d.detail);
                        return d;
                    }
                    tracing::debug!(
                        channel = name,
                        incident = %message.incident_id,
                        attempts,
                        "attempt failed, again in {}: {}",
                        format_duration(round_to_millis(delay)),
                        clean(&detail)
                    );
                    if patience.stopped() || !patience.wait(delay).await {
                        let mut d = delivery(
                            false,
                            format!("{detail} (stopped retrying after {attempts} attempts: no longer needed)"),
                            None,
                        );
                        d.stopped = true;
                        tracing::info!(channel = name, incident = %message.incident_id, attempts, "retrying stopped: no longer needed");
                        return d;
                    }
                }
            }
        }
    }
}

fn build_channel(setup: &Setup<'_>, cfg: &ChannelConfig) -> Result<Channel, ConfigError> {
    if cfg.retries.attempts == 0 || cfg.retries.attempts > MAX_ATTEMPTS {
        return Err(setup.error("retries.attempts", format!("must be between 1 and {MAX_ATTEMPTS}")));
    }
    if cfg.retries.max < cfg.retries.initial {
        return Err(setup.error("retries.max", "must not be shorter than `retries.initial`"));
    }
    if cfg.timeout.is_zero() {
        return Err(setup.error("timeout", "must be longer than 0s"));
    }
    if cfg.breaker.failure_threshold == 0 {
        return Err(setup.error("breaker.failure_threshold", "must be at least 1"));
    }
    if cfg.breaker.recovery.is_zero() {
        return Err(setup.error("breaker.recovery", "must be longer than 0s"));
    }
    let transport = match &cfg.kind {
        ChannelKind::Slack { webhook_url_file } => Transport::Slack(slack::Slack::build(setup, webhook_url_file)?),
        ChannelKind::Pagerduty { routing_key_file, events_url } => {
            Transport::PagerDuty(pagerduty::PagerDuty::build(setup, routing_key_file, events_url)?)
        }
        ChannelKind::Webhook { url, secret_file } => {
            Transport::Webhook(webhook::Webhook::build(setup, url, secret_file)?)
        }
        ChannelKind::Email { smtp, from, to } => {
            Transport::Email(Box::new(email::Email::build(setup, smtp, from, to, cfg.timeout)?))
        }
        ChannelKind::Statuspage { api_base, page_id, api_key_file, components } => {
            Transport::Statuspage(statuspage::Statuspage::build(setup, api_base, page_id, api_key_file, components)?)
        }
    };
    Ok(Channel {
        transport,
        audience: cfg.audience,
        retries: cfg.retries,
        timeout: cfg.timeout,
        breaker: Mutex::new(Breaker::new(cfg.breaker.failure_threshold, cfg.breaker.recovery)),
    })
}

/// Text on one line: line breaks and tabs become single spaces.
pub(crate) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn round_to_seconds(d: Duration) -> Duration {
    Duration::from_secs(d.as_secs())
}

fn round_to_millis(d: Duration) -> Duration {
    Duration::from_millis(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_folds_breaks() {
        assert_eq!(one_line(" a\nb\r\n\tc "), "a b c");
    }

    #[test]
    fn an_unknown_channel_is_a_failed_delivery_not_a_panic() {
        let channels = Channels::from_config("c.yaml", &BTreeMap::new()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let m = Message::new("INC-1", Event::Trigger, "info", "t", "b");
        let d = rt.block_on(channels.send("nope", &m));
        assert!(!d.ok && d.attempts == 0 && !d.skipped_by_breaker);
        assert!(d.detail.contains("no channel named `nope`"), "{}", d.detail);
        assert!(rt.block_on(channels.send_first(&[], &m, &Patience::default())).is_empty());
    }
}
