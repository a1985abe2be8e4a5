//! How a channel is written under `channels:` in the coordinator's YAML
//! (the example is in the module above).
//!
//! The channel's own fields and the common ones (`retries`, `timeout`,
//! `breaker`) sit side by side in one mapping. [`ChannelConfig`] reads that
//! mapping by hand rather than through `#[serde(flatten)]`: flattening
//! buffers the values and loses the field path, and an operator should read
//! `channels.mail.smtp.port` in the error, not just `channels.mail`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use remedy_shared::comms::Audience;
use remedy_shared::config::duration;

/// What a channel is and where it delivers, as written under `type:`.
/// Secrets are never written here, only the files that hold them: files
/// are what Kubernetes mounts from a Secret, and a configuration file is
/// read, copied and logged far more often than a secret should be.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ChannelKind {
    /// A Slack incoming webhook.
    Slack {
        /// File holding the webhook URL (the URL itself is the credential).
        webhook_url_file: PathBuf,
    },
    /// PagerDuty's Events API v2.
    Pagerduty {
        /// File holding the integration's routing key.
        routing_key_file: PathBuf,
        /// The enqueue endpoint; the EU service region and tests use another.
        #[serde(default = "default_events_url")]
        events_url: String,
    },
    /// A generic webhook: the message as JSON, signed with HMAC-SHA256
    /// (see the module above for the scheme).
    Webhook {
        /// Where to POST.
        url: String,
        /// File holding the shared signing secret.
        secret_file: PathBuf,
    },
    /// Email over SMTP.
    Email {
        /// The relay.
        smtp: SmtpConfig,
        /// The sender, `Name <address>` or a bare address.
        from: String,
        /// Recipients when a message names none.
        #[serde(default)]
        to: Vec<String>,
    },
    /// An Atlassian Statuspage page.
    Statuspage {
        /// The API root.
        #[serde(default = "default_statuspage_api")]
        api_base: String,
        /// The page's id.
        page_id: String,
        /// File holding the API key.
        api_key_file: PathBuf,
        /// The page's components an incident affects: a name for people,
        /// the component id for the API.
        #[serde(default)]
        components: BTreeMap<String, String>,
    },
}

/// PagerDuty's enqueue endpoint (US service region).
pub const DEFAULT_EVENTS_URL: &str = "https://events.pagerduty.com/v2/enqueue";

/// Statuspage's API root.
pub const DEFAULT_STATUSPAGE_API: &str = "https://api.statuspage.io/v1";

fn default_events_url() -> String {
    DEFAULT_EVENTS_URL.to_owned()
}

fn default_statuspage_api() -> String {
    DEFAULT_STATUSPAGE_API.to_owned()
}

/// An SMTP relay.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// Host name (also the name its certificate must carry).
    pub host: String,
    /// Port; absent means the usual one for `tls` (25, 587 or 465).
    #[serde(default)]
    pub port: Option<u16>,
    /// How the connection is protected.
    #[serde(default)]
    pub tls: SmtpTls,
    /// File holding the user name to authenticate as; with `password_file`.
    #[serde(default)]
    pub username_file: Option<PathBuf>,
    /// File holding the password; with `username_file`.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// PEM file of CA certificates trusted for the relay's certificate, in
    /// addition to the public roots: for a relay whose certificate a
    /// private CA signed. Read when the configuration is.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// Transport security towards the SMTP relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SmtpTls {
    /// Plain text. Only for a relay on the same host or a test.
    None,
    /// Plain connection upgraded with STARTTLS, which the relay must offer
    /// (never silently skipped). Port 587 by default.
    #[default]
    Starttls,
    /// TLS from the first byte ("implicit TLS", SMTPS). Port 465 by default.
    Tls,
}

impl SmtpTls {
    /// The usual port for this mode.
    pub fn default_port(self) -> u16 {
        match self {
            SmtpTls::None => 25,
            SmtpTls::Starttls => 587,
            SmtpTls::Tls => 465,
        }
    }
}

/// How often, and how patiently, one delivery is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retries {
    /// Attempts in all, the first included (1 means no retry).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// Delay before the first retry; doubles after each, with jitter.
    #[serde(default = "default_initial", with = "duration")]
    pub initial: Duration,
    /// Longest delay between attempts, `Retry-After` included.
    #[serde(default = "default_max", with = "duration")]
    pub max: Duration,
}

impl Default for Retries {
    fn default() -> Self {
        Retries { attempts: default_attempts(), initial: default_initial(), max: default_max() }
    }
}

fn default_attempts() -> u32 {
    3
}

fn default_initial() -> Duration {
    Duration::from_secs(1)
}

fn default_max() -> Duration {
    Duration::from_secs(30)
}

/// When a channel stops being tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failed deliveries (each after all its retries) that open
    /// the breaker.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    /// How long it stays open before one trial delivery is let through.
    #[serde(default = "default_recovery", with = "duration")]
    pub recovery: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig { failure_threshold: default_failure_threshold(), recovery: default_recovery() }
    }
}

fn default_failure_threshold() -> u32 {
    10
}

fn default_recovery() -> Duration {
    Duration::from_secs(120)
}

/// Per-request timeout when none is configured.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// One channel's configuration: its kind and fields, and how deliveries
/// to it are retried, timed out and broken off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelConfig {
    /// What the channel is (`type:` and that type's fields).
    pub kind: ChannelKind,
    /// Retries of one delivery.
    pub retries: Retries,
    /// Longest wait for one attempt (connect, send, answer).
    pub timeout: Duration,
    /// The channel's breaker.
    pub breaker: BreakerConfig,
    /// Who reads what it carries: `customers` for a status page (the
    /// default there) or a channel to customers, `internal` otherwise.
    /// Text written for the people handling an incident is never sent to
    /// a customer channel.
    pub audience: Audience,
}

impl ChannelConfig {
    /// A channel of `kind` with the default retries, timeout, breaker and
    /// audience.
    pub fn new(kind: ChannelKind) -> Self {
        let audience = default_audience(&kind);
        ChannelConfig {
            kind,
            retries: Retries::default(),
            timeout: DEFAULT_TIMEOUT,
            breaker: BreakerConfig::default(),
            audience,
        }
    }
}

/// A status page is public; every other kind reaches the people handling
/// the incident unless it says otherwise.
fn default_audience(kind: &ChannelKind) -> Audience {
    match kind {
        ChannelKind::Statuspage { .. } => Audience::Customers,
        _ => Audience::Internal,
    }
}

/// The names `type:` accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum TypeName {
    Slack,
    Pagerduty,
    Webhook,
    Email,
    Statuspage,
}

impl TypeName {
    fn name(self) -> &'static str {
        match self {
            TypeName::Slack => "slack",
            TypeName::Pagerduty => "pagerduty",
            TypeName::Webhook => "webhook",
            TypeName::Email => "email",
            TypeName::Statuspage => "statuspage",
        }
    }

    /// The fields of this type, required ones first.
    fn fields(self) -> &'static [&'static str] {
        match self {
            TypeName::Slack => &["webhook_url_file"],
            TypeName::Pagerduty => &["routing_key_file", "events_url"],
            TypeName::Webhook => &["url", "secret_file"],
            TypeName::Email => &["smtp", "from", "to"],
            TypeName::Statuspage => &["page_id", "api_key_file", "api_base", "components"],
        }
    }
}

const COMMON_FIELDS: &[&str] = &["type", "retries", "timeout", "breaker", "audience"];

const ALL_FIELDS: &[&str] = &[
    "type",
    "retries",
    "timeout",
    "breaker",
    "audience",
    "webhook_url_file",
    "routing_key_file",
    "events_url",
    "url",
    "secret_file",
    "smtp",
    "from",
    "to",
    "api_base",
    "page_id",
    "api_key_file",
    "components",
];

/// Every type-specific field, each typed once: field names mean the same
/// thing in every type that has them.
#[derive(Default)]
struct Fields {
    webhook_url_file: Option<PathBuf>,
    routing_key_file: Option<PathBuf>,
    events_url: Option<String>,
    url: Option<String>,
    secret_file: Option<PathBuf>,
    smtp: Option<SmtpConfig>,
    from: Option<String>,
    to: Option<Vec<String>>,
    api_base: Option<String>,
    page_id: Option<String>,
    api_key_file: Option<PathBuf>,
    components: Option<BTreeMap<String, String>>,
}

impl Fields {
    fn present(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        let mut add = |set: bool, name: &'static str| {
            if set {
                names.push(name);
            }
        };
        add(self.webhook_url_file.is_some(), "webhook_url_file");
        add(self.routing_key_file.is_some(), "routing_key_file");
        add(self.events_url.is_some(), "events_url");
        add(self.url.is_some(), "url");
        add(self.secret_file.is_some(), "secret_file");
        add(self.smtp.is_some(), "smtp");
        add(self.from.is_some(), "from");
        add(self.to.is_some(), "to");
        add(self.api_base.is_some(), "api_base");
        add(self.page_id.is_some(), "page_id");
        add(self.api_key_file.is_some(), "api_key_file");
        add(self.components.is_some(), "components");
        names
    }

    fn into_kind<E: de::Error>(self, ty: TypeName) -> Result<ChannelKind, E> {
        if let Some(stray) = self.present().into_iter().find(|f| !ty.fields().contains(f)) {
            return Err(not_a_field(stray, ty));
        }
        fn need<T, E: de::Error>(v: Option<T>, field: &'static str) -> Result<T, E> {
            v.ok_or_else(|| de::Error::missing_field(field))
        }
        Ok(match ty {
            TypeName::Slack => {
                ChannelKind::Slack { webhook_url_file: need(self.webhook_url_file, "webhook_url_file")? }
            }
            TypeName::Pagerduty => ChannelKind::Pagerduty {
                routing_key_file: need(self.routing_key_file, "routing_key_file")?,
                events_url: self.events_url.unwrap_or_else(default_events_url),
            },
            TypeName::Webhook => ChannelKind::Webhook {
                url: need(self.url, "url")?,
                secret_file: need(self.secret_file, "secret_file")?,
            },
            TypeName::Email => ChannelKind::Email {
                smtp: need(self.smtp, "smtp")?,
                from: need(self.from, "from")?,
                to: self.to.unwrap_or_default(),
            },
            TypeName::Statuspage => ChannelKind::Statuspage {
                api_base: self.api_base.unwrap_or_else(default_statuspage_api),
                page_id: need(self.page_id, "page_id")?,
                api_key_file: need(self.api_key_file, "api_key_file")?,
                components: self.components.unwrap_or_default(),
            },
        })
    }
}

fn not_a_field<E: de::Error>(field: &str, ty: TypeName) -> E {
    E::custom(format_args!(
        "`{field}` is not a field of a {} channel; its fields are {}, and every channel has retries, timeout, breaker and audience",
        ty.name(),
        ty.fields().iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ")
    ))
}

/// A value that refuses itself: raising an error from inside `next_value`
/// makes the path tracker name the offending key, which an error returned
/// straight from the visitor would not.
struct Refuse(String);

impl<'de> DeserializeSeed<'de> for Refuse {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, _: D) -> Result<(), D::Error> {
        Err(de::Error::custom(self.0))
    }
}

impl<'de> Deserialize<'de> for ChannelConfig {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        de.deserialize_map(ChannelVisitor)
    }
}

struct ChannelVisitor;

impl<'de> Visitor<'de> for ChannelVisitor {
    type Value = ChannelConfig;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a channel: a mapping with `type` and that type's fields")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ChannelConfig, A::Error> {
        let mut ty: Option<TypeName> = None;
        let mut retries: Option<Retries> = None;
        let mut timeout: Option<Duration> = None;
        let mut breaker: Option<BreakerConfig> = None;
        let mut audience: Option<Audience> = None;
        let mut f = Fields::default();

        // Reads a field's value once; a second occurrence is an error at
        // that key.
        macro_rules! once {
            ($slot:expr, $key:expr) => {{
                if $slot.is_some() {
                    map.next_value_seed(Refuse(format!("duplicate field `{}`", $key)))?;
                } else {
                    $slot = Some(map.next_value()?);
                }
            }};
        }

        while let Some(key) = map.next_key::<String>()? {
            // A field of another type is refused at its own key as soon as
            // the type is known (usually: `type` comes first).
            if let Some(t) = ty
                && !COMMON_FIELDS.contains(&key.as_str())
                && ALL_FIELDS.contains(&key.as_str())
                && !t.fields().contains(&key.as_str())
            {
                map.next_value_seed(Refuse(not_a_field::<A::Error>(&key, t).to_string()))?;
                continue;
            }
            match key.as_str() {
                "type" => once!(ty, key),
                "retries" => once!(retries, key),
                "timeout" => {
                    if timeout.is_some() {
                        map.next_value_seed(Refuse("duplicate field `timeout`".into()))?;
                    } else {
                        timeout = Some(map.next_value::<Text<Duration>>()?.0);
                    }
                }
                "breaker" => once!(breaker, key),
                "audience" => once!(audience, key),
                "webhook_url_file" => once!(f.webhook_url_file, key),
                "routing_key_file" => once!(f.routing_key_file, key),
                "events_url" => once!(f.events_url, key),
                "url" => once!(f.url, key),
                "secret_file" => once!(f.secret_file, key),
                "smtp" => once!(f.smtp, key),
                "from" => once!(f.from, key),
                "to" => once!(f.to, key),
                "api_base" => once!(f.api_base, key),
                "page_id" => once!(f.page_id, key),
                "api_key_file" => once!(f.api_key_file, key),
                "components" => once!(f.components, key),
                other => {
                    let expected = match ty {
                        Some(t) => [COMMON_FIELDS, t.fields()].concat(),
                        None => ALL_FIELDS.to_vec(),
                    };
                    let list = expected.iter().map(|f| format!("`{f}`")).collect::<Vec<_>>().join(", ");
                    map.next_value_seed(Refuse(format!("unknown field `{other}`, expected one of {list}")))?;
                }
            }
        }
        let ty = ty.ok_or_else(|| {
            de::Error::custom("missing field `type` (one of `slack`, `pagerduty`, `webhook`, `email`, `statuspage`)")
        })?;
        let kind = f.into_kind(ty)?;
        Ok(ChannelConfig {
            audience: audience.unwrap_or_else(|| default_audience(&kind)),
            kind,
            retries: retries.unwrap_or_default(),
            timeout: timeout.unwrap_or(DEFAULT_TIMEOUT),
            breaker: breaker.unwrap_or_default(),
        })
    }
}

/// A duration written as text, as a value of its own.
struct Text<T>(T);

impl<'de> Deserialize<'de> for Text<Duration> {
    fn deserialize<D: Deserializer<'de>>(de: D) -> Result<Self, D::Error> {
        duration::deserialize(de).map(Text)
    }
}

#[cfg(test)]
mod tests {
    use remedy_shared::config::parse_yaml;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Doc {
        channels: BTreeMap<String, ChannelConfig>,
    }

    fn parse(text: &str) -> Result<BTreeMap<String, ChannelConfig>, remedy_shared::config::ConfigError> {
        parse_yaml::<Doc>("coordinator.yaml", text).map(|d| d.channels)
    }

    #[test]
    fn every_type_reads_as_written_with_defaults() {
        let channels = parse(
            r#"
channels:
  slack-ops: {type: slack, webhook_url_file: /s/slack}
  pager: {type: pagerduty, routing_key_file: /s/pd}
  hooks: {type: webhook, url: "https://hooks.example.com/remedy", secret_file: /s/hmac, timeout: 2s}
  mail:
    type: email
    smtp: {host: smtp.example.com, port: 587, tls: none, username_file: /s/u, password_file: /s/p}
    from: "Remedy <remedy@example.com>"
    to: [ops@example.com]
    retries: {attempts: 5, initial: 10ms}
    breaker: {recovery: 50ms}
  status: {type: statuspage, page_id: abc, api_key_file: /s/sp, components: {api: cmp123}}
"#,
        )
        .unwrap();
        assert_eq!(
            channels["slack-ops"],
            ChannelConfig::new(ChannelKind::Slack { webhook_url_file: "/s/slack".into() })
        );
        assert_eq!(
            channels["pager"].kind,
            ChannelKind::Pagerduty { routing_key_file: "/s/pd".into(), events_url: DEFAULT_EVENTS_URL.into() }
        );
        assert_eq!(channels["hooks"].timeout, Duration::from_secs(2));
        let mail = &channels["mail"];
        let ChannelKind::Email { smtp, from, to } = &mail.kind else { panic!("{mail:?}") };
        assert_eq!(smtp.tls, SmtpTls::None);
        assert_eq!(smtp.port, Some(587));
        assert_eq!(from, "Remedy <remedy@example.com>");
        assert_eq!(to, &vec!["ops@example.com".to_owned()]);
        assert_eq!(
            mail.retries,
            Retries { attempts: 5, initial: Duration::from_millis(10), max: Duration::from_secs(30) }
        );
        assert_eq!(mail.breaker, BreakerConfig { failure_threshold: 10, recovery: Duration::from_millis(50) });
        let ChannelKind::Statuspage { api_base, components, .. } = &channels["status"].kind else { panic!() };
        assert_eq!(api_base, DEFAULT_STATUSPAGE_API);
        assert_eq!(components["api"], "cmp123");
    }

    #[test]
    fn an_unknown_type_is_named_at_type() {
        let err = parse("channels:\n  x: {type: sms, number: 123}\n").unwrap_err();
        assert_eq!(err.field, "channels.x.type");
        assert!(err.message.contains("unknown variant `sms`"), "{}", err.message);
    }

    #[test]
    fn unknown_and_foreign_fields_are_named_at_their_key() {
        let err = parse("channels:\n  x: {type: webhook, urll: http://a, secret_file: /s}\n").unwrap_err();
        assert_eq!(err.field, "channels.x.urll");
        let err = parse("channels:\n  x: {type: slack, webhook_url_file: /s, url: http://a}\n").unwrap_err();
        assert_eq!(err.field, "channels.x.url");
        assert!(err.message.contains("not a field of a slack channel"), "{}", err.message);
        // With `type` last, the stray field is still named, in the message.
        let err = parse("channels:\n  x: {webhook_url_file: /s, url: http://a, type: slack}\n").unwrap_err();
        assert_eq!(err.field, "channels.x");
        assert!(err.message.contains("`url` is not a field of a slack channel"), "{}", err.message);
    }

    #[test]
    fn nested_errors_keep_their_path() {
        let err = parse("channels:\n  m: {type: email, smtp: {host: h, port: lots}, from: a@b.c}\n").unwrap_err();
        assert_eq!(err.field, "channels.m.smtp.port");
        let err = parse("channels:\n  m: {type: email, smtp: {host: h, tls: ssl}, from: a@b.c}\n").unwrap_err();
        assert_eq!(err.field, "channels.m.smtp.tls");
        let err = parse("channels:\n  s: {type: slack, webhook_url_file: /s, timeout: soon}\n").unwrap_err();
        assert_eq!(err.field, "channels.s.timeout");
        let err = parse("channels:\n  s: {type: slack, webhook_url_file: /s, retries: {attempts: 2, jitter: 1}}\n")
            .unwrap_err();
        assert_eq!(err.field, "channels.s.retries.jitter");
    }

    #[test]
    fn missing_fields_are_named() {
        let err = parse("channels:\n  w: {type: webhook, url: http://a}\n").unwrap_err();
        assert_eq!(err.field, "channels.w");
        assert!(err.message.contains("missing field `secret_file`"), "{}", err.message);
        let err = parse("channels:\n  w: {url: http://a}\n").unwrap_err();
        assert!(err.message.contains("missing field `type`"), "{}", err.message);
    }
}
