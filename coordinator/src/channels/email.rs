//! Email over SMTP (lettre, rustls with ring).
//!
//! One connection per delivery: notifications are rare, and a pooled
//! connection would be a stale one by the next incident.
//!
//! Every mail is a MIME message (`MIME-Version: 1.0`, one `text/plain;
//! charset=utf-8` part whose transfer encoding lettre picks: 7bit,
//! quoted-printable or base64), dated, marked `Auto-Submitted:
//! auto-generated` (RFC 3834) so that vacation responders stay silent, and
//! threaded per incident (see [`Threading`]).

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use lettre::message::header::{HeaderName, HeaderValue, InReplyTo, MessageId, References};
use lettre::message::{Mailbox, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use remedy_shared::sync::lock;

use super::config::{SmtpConfig, SmtpTls};
use super::secret::Secret;
use super::{Event, Message, Outcome, Setup, one_line};

/// How many incidents a channel remembers having sent the first mail of.
const REMEMBERED_ROOTS: usize = 4096;

pub(super) struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    host: String,
    port: u16,
    tls: SmtpTls,
    ca_file: Option<std::path::PathBuf>,
    from: Mailbox,
    to: Vec<Mailbox>,
    /// User name and password, kept only to scrub them from details (the
    /// transport holds the copy it sends).
    credentials: Vec<Secret>,
    threading: Threading,
}

impl fmt::Debug for Email {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Email")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("from", &self.from.to_string())
            .field("to", &self.to.iter().map(ToString::to_string).collect::<Vec<_>>())
            .field("credentials", &self.credentials)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl Email {
    pub(super) fn build(
        setup: &Setup<'_>,
        smtp: &SmtpConfig,
        from: &str,
        to: &[String],
        timeout: Duration,
    ) -> Result<Self, remedy_shared::config::ConfigError> {
        let host = smtp.host.trim();
        if host.is_empty() {
            return Err(setup.error("smtp.host", "the SMTP host is empty"));
        }
        let port = smtp.port.unwrap_or_else(|| smtp.tls.default_port());
        if port == 0 {
            return Err(setup.error("smtp.port", "port 0 cannot be connected to"));
        }
        let from: Mailbox = from.parse().map_err(|e| {
            setup.error("from", format!("`{from}` is not an address (`Name <a@b.example>` or `a@b.example`): {e}"))
        })?;
        let mut recipients = Vec::with_capacity(to.len());
        for (i, address) in to.iter().enumerate() {
            let mbox: Mailbox = address
                .parse()
                .map_err(|e| setup.error(&format!("to[{i}]"), format!("`{address}` is not an address: {e}")))?;
            recipients.push(mbox);
        }
        let credentials = match (&smtp.username_file, &smtp.password_file) {
            (Some(u), Some(p)) => {
                Some((setup.secret("smtp.username_file", u)?, setup.secret("smtp.password_file", p)?))
            }
            (None, None) => None,
            (Some(_), None) => {
                return Err(setup.error("smtp.password_file", "`username_file` needs `password_file` beside it"));
            }
            (None, Some(_)) => {
                return Err(setup.error("smtp.username_file", "`password_file` needs `username_file` beside it"));
            }
        };
        // A password in clear text may cross only this machine.
        if credentials.is_some() && smtp.tls == SmtpTls::None && !is_loopback(host) {
            return Err(setup.error(
                "smtp.tls",
                format!("credentials would cross the network in clear text to `{host}`: use `starttls` or `tls`"),
            ));
        }
        let roots = match &smtp.ca_file {
            None => None,
            Some(_) if smtp.tls == SmtpTls::None => {
                return Err(setup.error(
                    "smtp.ca_file",
                    "`tls: none` verifies no certificate: drop `ca_file` or use `starttls` or `tls`",
                ));
            }
            Some(path) => Some(read_ca_file(path).map_err(|e| setup.error("smtp.ca_file", e))?),
        };
        let tls = match smtp.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::Starttls | SmtpTls::Tls => {
                let mut params = TlsParameters::builder(host.to_owned());
                if let Some(roots) = roots {
                    params = params.add_root_certificate(roots);
                }
                let params = params.build_rustls().map_err(|e| {
                    let field = if smtp.ca_file.is_some() { "smtp.ca_file" } else { "smtp.tls" };
                    setup.error(field, format!("cannot set up TLS towards `{host}`: {e}"))
                })?;
                if smtp.tls == SmtpTls::Starttls { Tls::Required(params) } else { Tls::Wrapper(params) }
            }
        };
        let mut builder =
            AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host).port(port).tls(tls).timeout(Some(timeout));
        let mut kept = Vec::new();
        if let Some((user, password)) = credentials {
            builder = builder.credentials(Credentials::new(user.expose().to_owned(), password.expose().to_owned()));
            kept = vec![user, password];
        }
        let threading = Threading::new(from.email.domain());
        Ok(Email {
            transport: builder.build(),
            host: host.to_owned(),
            port,
            tls: smtp.tls,
            ca_file: smtp.ca_file.clone(),
            from,
            to: recipients,
            credentials: kept,
            threading,
        })
    }

    pub(super) fn secrets(&self) -> Vec<&Secret> {
        self.credentials.iter().collect()
    }

    pub(super) async fn attempt(&self, message: &Message) -> Outcome {
        let ids = self.threading.ids(message);
        let email = match self.compose(message, &ids) {
            Ok(e) => e,
            Err(detail) => return Outcome::Fail { detail },
        };
        match self.transport.send(email).await {
            Ok(response) => {
                if ids.in_reply_to.is_none() {
                    self.threading.root_sent(&message.incident_id);
                }
                Outcome::Delivered { detail: format!("SMTP {}", response.code()), reference: None }
            }
            Err(e) => judge(&e, self.tls),
        }
    }

    fn compose(&self, message: &Message, ids: &Ids) -> Result<lettre::Message, String> {
        let recipients = if message.email_to.is_empty() {
            self.to.clone()
        } else {
            message
                .email_to
                .iter()
                .map(|a| a.parse::<Mailbox>().map_err(|e| format!("`{a}` is not an address: {e}; not sent")))
                .collect::<Result<Vec<_>, _>>()?
        };
        if recipients.is_empty() {
            return Err("no recipients: the message names none and the channel has no `to`; not sent".into());
        }
        let mut builder = lettre::Message::builder()
            .from(self.from.clone())
            .subject(one_line(&message.title))
            .header(MessageId::from(ids.message_id.clone()))
            .raw_header(HeaderValue::new(AUTO_SUBMITTED, "auto-generated".to_owned()))
            .raw_header(HeaderValue::new(AUTO_RESPONSE_SUPPRESS, "All".to_owned()));
        if let Some(root) = &ids.in_reply_to {
            builder = builder.header(InReplyTo::from(root.clone())).header(References::from(root.clone()));
        }
        for mbox in recipients {
            builder = builder.to(mbox);
        }
        // `singlepart` sets `MIME-Version: 1.0`; `plain` is `text/plain;
        // charset=utf-8` with the transfer encoding the text needs.
        builder.singlepart(SinglePart::plain(text(message))).map_err(|e| format!("cannot build the email: {e}"))
    }
}

/// RFC 3834: the mail is automatic, and no automatic answer is wanted.
const AUTO_SUBMITTED: HeaderName = HeaderName::new_from_ascii_str("Auto-Submitted");
/// Exchange's own word for the same.
const AUTO_RESPONSE_SUPPRESS: HeaderName = HeaderName::new_from_ascii_str("X-Auto-Response-Suppress");

/// The ids one mail carries.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ids {
    /// Its `Message-ID`, `<...@domain>`.
    message_id: String,
    /// The incident's root id, as `In-Reply-To` and `References`; `None`
    /// when this mail is the root.
    in_reply_to: Option<String>,
}

/// Threads the mails of one incident. The incident's root id is
/// `<remedy.<incident id>@<from domain>>` (characters other than letters,
/// digits, `-` and `_` written `=XX`), the same on every coordinator and
/// across restarts. A trigger of an incident whose root this channel has not
/// sent yet is the root: its `Message-ID` is the root id. Every other mail
/// (acknowledgements, updates, resolves, and triggers after the first, such
/// as the next escalation level's page) has an id of its own,
/// `<remedy.<incident id>.<event>.<random>@<from domain>>`, and names the
/// root in `In-Reply-To` and `References`. A `Message-ID` is thus never
/// reused while the coordinator runs: mail stores drop a second message
/// with an id they already hold, and a page must not vanish so.
struct Threading {
    domain: String,
    /// Incidents whose root was delivered, oldest first; bounded.
    sent: Mutex<(HashSet<String>, VecDeque<String>)>,
}

impl Threading {
    fn new(domain: &str) -> Self {
        Threading { domain: domain.to_owned(), sent: Mutex::default() }
    }

    fn root(&self, incident: &str) -> String {
        format!("<remedy.{}@{}>", id_text(incident), self.domain)
    }

    fn ids(&self, message: &Message) -> Ids {
        let root = self.root(&message.incident_id);
        if message.event == Event::Trigger && !lock(&self.sent).0.contains(&message.incident_id) {
            return Ids { message_id: root, in_reply_to: None };
        }
        let unique: u128 = rand::random();
        let message_id = format!(
            "<remedy.{}.{}.{unique:032x}@{}>",
            id_text(&message.incident_id),
            message.event.as_str(),
            self.domain
        );
        Ids { message_id, in_reply_to: Some(root) }
    }

    fn root_sent(&self, incident: &str) {
        let mut sent = lock(&self.sent);
        let (set, order) = &mut *sent;
        if set.insert(incident.to_owned()) {
            order.push_back(incident.to_owned());
            if order.len() > REMEMBERED_ROOTS
                && let Some(oldest) = order.pop_front()
            {
                set.remove(&oldest);
            }
        }
    }
}

/// An incident id as the left part of a message id (RFC 5322 `dot-atom`):
/// letters, digits, `-` and `_` as they are, any other byte as `=XX`.
fn id_text(incident: &str) -> String {
    let mut out = String::with_capacity(incident.len());
    for b in incident.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    if out.is_empty() { "-".to_owned() } else { out }
}

/// The CA certificates in a PEM file, for the relay's certificate.
fn read_ca_file(path: &std::path::Path) -> Result<Certificate, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    let text = String::from_utf8_lossy(&pem);
    if !text.contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!("`{}` holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)", path.display()));
    }
    Certificate::from_pem(&pem).map_err(|e| format!("`{}` is not a PEM certificate file: {e}", path.display()))
}

/// The body, then the links one per line.
fn text(message: &Message) -> String {
    let mut text = message.body.clone();
    if !message.links.is_empty() {
        if !text.is_empty() {
            text.push_str("\n\n");
        }
        let lines: Vec<String> = message.links.iter().map(|(name, url)| format!("{name}: {url}")).collect();
        text.push_str(&lines.join("\n"));
    }
    text
}

/// Whether an SMTP failure is worth another attempt. A 4xx reply is the
/// server's "try later"; a 5xx is final, and 530/534/535 mean the
/// credentials (or their absence) were refused.
fn judge(e: &lettre::transport::smtp::Error, tls: SmtpTls) -> Outcome {
    if let Some(why) = certificate_refused(e) {
        return Outcome::Fail {
            detail: format!(
                "SMTP: the relay's certificate was refused ({why}); check `smtp.host` and `smtp.ca_file`; not retried"
            ),
        };
    }
    if tls == SmtpTls::Starttls && e.is_client() && e.to_string().contains("STARTTLS") {
        return Outcome::Fail {
            detail: "SMTP: the relay does not offer STARTTLS, which `tls: starttls` requires; nothing was sent \
                     and no credentials were offered; not retried"
                .to_owned(),
        };
    }
    let code = e.status().map(|c| c.to_string());
    if let Some(code) = code.as_deref()
        && matches!(code, "530" | "534" | "535")
    {
        return Outcome::Fail {
            detail: format!(
                "SMTP {code}: the server refused the credentials (check `smtp.username_file` and `smtp.password_file`); not retried: {e}"
            ),
        };
    }
    if e.is_permanent() {
        return Outcome::Fail { detail: format!("SMTP: {e}; not retried") };
    }
    if e.is_client() {
        // Something this side cannot do (no common AUTH mechanism, a
        // relay without STARTTLS): asking again will not help.
        return Outcome::Fail { detail: format!("SMTP: {e}; not retried") };
    }
    // A 4xx reply, a timeout, a refused or reset connection, a failed
    // handshake, an unreadable reply: the server may do better next time.
    Outcome::Retry { detail: format!("SMTP: {e}"), after: None }
}

/// Why the TLS handshake refused the relay's certificate, if that is what
/// failed: a wrong CA or name does not mend itself, so it is not retried.
fn certificate_refused(e: &lettre::transport::smtp::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = source {
        let tls = err.downcast_ref::<rustls::Error>().or_else(|| {
            err.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()?.downcast_ref::<rustls::Error>())
        });
        if let Some(refused @ rustls::Error::InvalidCertificate(_)) = tls {
            return Some(refused.to_string());
        }
        source = err.source();
    }
    None
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.trim_matches(['[', ']']).parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts_are_recognised() {
        assert!(is_loopback("127.0.0.1"));
        assert!(is_loopback("[::1]"));
        assert!(is_loopback("LOCALHOST"));
        assert!(!is_loopback("smtp.example.com"));
        assert!(!is_loopback("10.0.0.1"));
    }

    fn setup() -> Setup<'static> {
        Setup { source: "c.yaml", channel: "mail" }
    }

    fn smtp() -> SmtpConfig {
        SmtpConfig {
            host: "127.0.0.1".into(),
            port: Some(2525),
            tls: SmtpTls::None,
            username_file: None,
            password_file: None,
            ca_file: None,
        }
    }

    fn email() -> Email {
        Email::build(
            &setup(),
            &smtp(),
            "Remedy <remedy@alerts.example.com>",
            &["ops@example.com".into()],
            Duration::from_secs(1),
        )
        .unwrap()
    }

    /// The header section, folded lines joined, and the body.
    fn parts(email: &lettre::Message) -> (Vec<(String, String)>, String) {
        let bytes = String::from_utf8(email.formatted()).unwrap();
        let (head, body) = bytes.split_once("\r\n\r\n").unwrap();
        let mut headers: Vec<(String, String)> = Vec::new();
        for line in head.split("\r\n") {
            if line.starts_with([' ', '\t']) {
                headers.last_mut().unwrap().1.push_str(line);
            } else {
                let (name, value) = line.split_once(':').unwrap();
                headers.push((name.to_owned(), value.trim().to_owned()));
            }
        }
        (headers, body.to_owned())
    }

    fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
        let mut found = headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name));
        let first = found.next().map(|(_, v)| v.as_str());
        assert!(found.next().is_none(), "{name} twice in {headers:?}");
        first
    }

    fn compose(email: &Email, message: &Message) -> (Vec<(String, String)>, String) {
        let ids = email.threading.ids(message);
        parts(&email.compose(message, &ids).unwrap())
    }

    #[test]
    fn a_mail_is_mime_dated_automatic_and_identified() {
        let e = email();
        let m = Message::new("INC-000042", crate::channels::Event::Trigger, "critical", "api down", "all 5xx");
        let (h, body) = compose(&e, &m);
        assert_eq!(header(&h, "MIME-Version"), Some("1.0"));
        assert_eq!(header(&h, "Content-Type"), Some("text/plain; charset=utf-8"));
        assert_eq!(header(&h, "Content-Transfer-Encoding"), Some("7bit"));
        assert_eq!(header(&h, "Auto-Submitted"), Some("auto-generated"));
        assert_eq!(header(&h, "X-Auto-Response-Suppress"), Some("All"));
        assert!(header(&h, "Date").is_some_and(|d| d.ends_with("+0000")), "{h:?}");
        assert_eq!(header(&h, "Message-ID"), Some("<remedy.INC-000042@alerts.example.com>"));
        assert_eq!(header(&h, "In-Reply-To"), None);
        assert_eq!(header(&h, "References"), None);
        assert_eq!(header(&h, "Subject"), Some("api down"));
        assert_eq!(header(&h, "From"), Some("Remedy <remedy@alerts.example.com>"));
        assert_eq!(header(&h, "To"), Some("ops@example.com"));
        assert_eq!(body, "all 5xx\r\n");
    }

    #[test]
    fn text_that_needs_it_is_encoded() {
        let e = email();
        let long = format!("Störung: {}", "x".repeat(200));
        let m = Message::new("INC-1", crate::channels::Event::Update, "info", "Größe", long);
        let (h, body) = compose(&e, &m);
        let cte = header(&h, "Content-Transfer-Encoding").unwrap();
        assert!(cte == "quoted-printable" || cte == "base64", "{cte}");
        assert_eq!(header(&h, "MIME-Version"), Some("1.0"));
        assert!(header(&h, "Subject").unwrap().starts_with("=?utf-8?"), "{h:?}");
        assert!(body.lines().all(|l| l.len() <= 78), "{body}");
        assert!(body.is_ascii());
    }

    #[test]
    fn mails_of_an_incident_thread_under_its_first_trigger() {
        let e = email();
        let trigger = Message::new("INC-7", crate::channels::Event::Trigger, "critical", "t", "b");
        let root = e.threading.ids(&trigger);
        assert_eq!(root, Ids { message_id: "<remedy.INC-7@alerts.example.com>".into(), in_reply_to: None });
        // Until the root is delivered, a trigger (a retry) is the root again.
        assert_eq!(e.threading.ids(&trigger), root);
        e.threading.root_sent("INC-7");
        let mut seen = HashSet::from([root.message_id.clone()]);
        for event in [
            crate::channels::Event::Acknowledge,
            crate::channels::Event::Update,
            crate::channels::Event::Trigger,
            crate::channels::Event::Resolve,
        ] {
            let m = Message::new("INC-7", event, "critical", "t", "b");
            let (h, _) = compose(&e, &m);
            let id = header(&h, "Message-ID").unwrap().to_owned();
            assert!(id.starts_with(&format!("<remedy.INC-7.{}.", event.as_str())), "{id}");
            assert!(id.ends_with("@alerts.example.com>"), "{id}");
            assert!(seen.insert(id), "a Message-ID used twice");
            assert_eq!(header(&h, "In-Reply-To"), Some(root.message_id.as_str()));
            assert_eq!(header(&h, "References"), Some(root.message_id.as_str()));
        }
        // Another incident has its own root.
        let other = Message::new("INC-8", crate::channels::Event::Trigger, "critical", "t", "b");
        assert_eq!(e.threading.ids(&other).message_id, "<remedy.INC-8@alerts.example.com>");
    }

    #[test]
    fn incident_ids_are_written_as_dot_atoms() {
        assert_eq!(id_text("INC-000042"), "INC-000042");
        assert_eq!(id_text("a.b c@d<>"), "a=2Eb=20c=40d=3C=3E");
        assert_eq!(id_text("é"), "=C3=A9");
        assert_eq!(id_text(""), "-");
    }

    #[test]
    fn remembered_roots_are_bounded() {
        let t = Threading::new("example.com");
        for i in 0..REMEMBERED_ROOTS + 10 {
            t.root_sent(&format!("INC-{i}"));
        }
        let sent = lock(&t.sent);
        assert_eq!(sent.0.len(), REMEMBERED_ROOTS);
        assert_eq!(sent.1.len(), REMEMBERED_ROOTS);
        assert!(!sent.0.contains("INC-0"));
    }

    #[test]
    fn a_ca_file_must_hold_certificates() {
        let dir = tempfile::tempdir().unwrap();
        let field = |cfg: &SmtpConfig| {
            Email::build(&setup(), cfg, "remedy@example.com", &[], Duration::from_secs(1)).map(|_| ()).unwrap_err()
        };
        let mut cfg = SmtpConfig { tls: SmtpTls::Starttls, ca_file: Some(dir.path().join("absent.pem")), ..smtp() };
        let err = field(&cfg);
        assert_eq!(err.field, "channels.mail.smtp.ca_file");
        assert!(err.message.contains("absent.pem"), "{}", err.message);
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate\n").unwrap();
        cfg.ca_file = Some(junk);
        let err = field(&cfg);
        assert_eq!(err.field, "channels.mail.smtp.ca_file");
        assert!(err.message.contains("no PEM certificate"), "{}", err.message);
        let broken = dir.path().join("broken.pem");
        std::fs::write(&broken, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").unwrap();
        cfg.ca_file = Some(broken);
        assert_eq!(field(&cfg).field, "channels.mail.smtp.ca_file");
        let ca = rcgen::generate_simple_self_signed(vec!["smtp-ca".to_owned()]).unwrap();
        let good = dir.path().join("ca.pem");
        std::fs::write(&good, ca.cert.pem()).unwrap();
        cfg.ca_file = Some(good);
        Email::build(&setup(), &cfg, "remedy@example.com", &[], Duration::from_secs(1)).unwrap();
        cfg.tls = SmtpTls::None;
        let err = field(&cfg);
        assert_eq!(err.field, "channels.mail.smtp.ca_file");
        assert!(err.message.contains("tls: none"), "{}", err.message);
    }

    #[test]
    fn links_follow_the_body() {
        let mut m = Message::new("INC-1", crate::channels::Event::Trigger, "info", "t", "body");
        m.links.insert("runbook".into(), "https://r.example".into());
        assert_eq!(text(&m), "body\n\nrunbook: https://r.example");
    }
}
