//! Email over SMTP (lettre, rustls with ring).
//!
//! One connection per delivery: notifications are rare, and a pooled
//! connection would be a stale one by the next incident.

use std::fmt;
use std::time::Duration;

use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};

use super::config::{SmtpConfig, SmtpTls};
use super::secret::Secret;
use super::{Message, Outcome, Setup, one_line};

pub(super) struct Email {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    host: String,
    port: u16,
    tls: SmtpTls,
    from: Mailbox,
    to: Vec<Mailbox>,
    /// User name and password, kept only to scrub them from details (the
    /// transport holds the copy it sends).
    credentials: Vec<Secret>,
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
        let tls = match smtp.tls {
            SmtpTls::None => Tls::None,
            SmtpTls::Starttls | SmtpTls::Tls => {
                let params = TlsParameters::new_rustls(host.to_owned())
                    .map_err(|e| setup.error("smtp.tls", format!("cannot set up TLS towards `{host}`: {e}")))?;
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
        Ok(Email {
            transport: builder.build(),
            host: host.to_owned(),
            port,
            tls: smtp.tls,
            from,
            to: recipients,
            credentials: kept,
        })
    }

    pub(super) fn secrets(&self) -> Vec<&Secret> {
        self.credentials.iter().collect()
    }

    pub(super) async fn attempt(&self, message: &Message) -> Outcome {
        let email = match self.compose(message) {
            Ok(e) => e,
            Err(detail) => return Outcome::Fail { detail },
        };
        match self.transport.send(email).await {
            Ok(response) => Outcome::Delivered { detail: format!("SMTP {}", response.code()), reference: None },
            Err(e) => judge(&e),
        }
    }

    fn compose(&self, message: &Message) -> Result<lettre::Message, String> {
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
        let mut builder = lettre::Message::builder().from(self.from.clone()).subject(one_line(&message.title));
        for mbox in recipients {
            builder = builder.to(mbox);
        }
        builder.header(ContentType::TEXT_PLAIN).body(text(message)).map_err(|e| format!("cannot build the email: {e}"))
    }
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
fn judge(e: &lettre::transport::smtp::Error) -> Outcome {
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

    #[test]
    fn links_follow_the_body() {
        let mut m = Message::new("INC-1", crate::channels::Event::Trigger, "info", "t", "body");
        m.links.insert("runbook".into(), "https://r.example".into());
        assert_eq!(text(&m), "body\n\nrunbook: https://r.example");
    }
}
