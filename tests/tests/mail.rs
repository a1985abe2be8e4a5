//! The email channel against a real SMTP relay (Exim, see
//! `remedy_e2e::smtp`), used as a user of the channel would: a YAML
//! `channels:` section, `Channels::from_config`, `Channels::send`.
//!
//! A page arrives through STARTTLS and authentication as a MIME mail that
//! mail stores and responders treat right, and follow-ups thread under
//! it; a refused password fails at once and is never quoted; a relay that
//! does not offer STARTTLS gets no credentials and no mail; a certificate
//! signed by another CA than the configured one is refused; a `ca_file`
//! that cannot be used stops the coordinator with exit 64.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use remedy_coordinator::channels::{ChannelConfig, Channels, Delivery, Event, Message};
use remedy_e2e::smtp::{MAIL_DOMAIN, Smtp, SmtpSetup, SmtpTlsFiles};

const USER: &str = "remedy-mailer";
const PASSWORD: &str = "relay-pass-7f3a9c";
const FROM_DOMAIN: &str = "alerts.example.test";

/// The relay's host as the channel names it; its certificate carries it.
const HOST: &str = "127.0.0.1";

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a file");
    path
}

/// One email channel named `mail`, as YAML, to `relay` with `tls` and the
/// credentials `password`, trusting `ca`.
fn channels(dir: &Path, relay: &Smtp, tls: &str, password: &str, ca: &Path) -> Channels {
    let user = write(dir, "smtp-user", &format!("{USER}\n"));
    let pass = write(dir, "smtp-pass", &format!("{password}\n"));
    let yaml = format!(
        "mail:\n  type: email\n  smtp: {{host: '{HOST}', port: {}, tls: {tls}, username_file: '{}', password_file: '{}', \
         ca_file: '{}'}}\n  from: 'Remedy <remedy@{FROM_DOMAIN}>'\n  to: ['oncall@{MAIL_DOMAIN}']\n  \
         retries: {{attempts: 3, initial: 10ms, max: 50ms}}\n  timeout: 10s\n",
        relay.addr.port(),
        user.display(),
        pass.display(),
        ca.display()
    );
    let config: BTreeMap<String, ChannelConfig> =
        remedy_shared::config::parse_yaml("coordinator.yaml", &yaml).expect("the channels parse");
    Channels::from_config("coordinator.yaml", &config).expect("the channels build")
}

fn users() -> Vec<(String, String)> {
    vec![(USER.to_owned(), PASSWORD.to_owned())]
}

/// The lines of the relay's log about connections that sent no mail, with
/// the SMTP commands each sent (`C=EHLO,STARTTLS,...`).
fn commands(relay: &Smtp) -> Vec<String> {
    relay.log().lines().filter(|l| l.contains("no MAIL in SMTP connection")).map(str::to_owned).collect()
}

fn assert_failed_once(d: &Delivery) {
    assert!(!d.ok, "{d:?}");
    assert_eq!(d.attempts, 1, "not retried: {d:?}");
    assert!(!d.skipped_by_breaker, "{d:?}");
}

#[tokio::test]
async fn a_page_arrives_as_a_threaded_mime_mail_through_starttls_and_auth() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let tls = SmtpTlsFiles::generate(dir.path(), "relay", &[HOST]);
    let relay = Smtp::start(dir.path(), "relay", &tls, &SmtpSetup { starttls: true, users: users() }).await;
    let channels = channels(dir.path(), &relay, "starttls", PASSWORD, &tls.ca);

    let body = "Störung: api is down — 97% of requests fail with 5xx. \
                This line is long enough that a mail must be wrapped somewhere along its way, \
                and its words must come back unchanged.\nSecond line.";
    let mut trigger = Message::new("INC-000042", Event::Trigger, "critical", "INC-000042 api down", body);
    trigger.links.insert("runbook".into(), "https://runbooks.example.test/api".into());
    let d = channels.send("mail", &trigger).await;
    assert!(d.ok, "{d:?}");
    assert_eq!(d.attempts, 1);
    assert!(d.detail.starts_with("SMTP 250"), "{d:?}");
    let first = relay.wait_for_mails(1).await.remove(0);

    for (event, title) in [(Event::Acknowledge, "INC-000042 taken"), (Event::Resolve, "INC-000042 resolved")] {
        let d = channels.send("mail", &Message::new("INC-000042", event, "critical", title, "news")).await;
        assert!(d.ok, "{d:?}");
    }
    let mails = relay.wait_for_mails(3).await;
    assert_eq!(mails.len(), 3);

    // What every mail carries.
    for mail in &mails {
        assert_eq!(mail.header("MIME-Version"), Some("1.0"), "{}", mail.raw);
        assert_eq!(mail.header("Content-Type"), Some("text/plain; charset=utf-8"), "{}", mail.raw);
        assert!(mail.header("Content-Transfer-Encoding").is_some(), "{}", mail.raw);
        assert_eq!(mail.header("Auto-Submitted"), Some("auto-generated"), "{}", mail.raw);
        assert!(mail.header("Date").is_some_and(|d| d.contains(':')), "{}", mail.raw);
        assert_eq!(mail.header("From"), Some(format!("Remedy <remedy@{FROM_DOMAIN}>").as_str()), "{}", mail.raw);
        assert_eq!(mail.header("To"), Some(format!("oncall@{MAIL_DOMAIN}").as_str()), "{}", mail.raw);
        let id = mail.header("Message-ID").expect("a Message-ID");
        assert!(id.starts_with('<') && id.ends_with(&format!("@{FROM_DOMAIN}>")), "{id}");
        assert!(!id.contains("localhost"), "{id}");
    }
    let ids: BTreeSet<&str> = mails.iter().filter_map(|m| m.header("Message-ID")).collect();
    assert_eq!(ids.len(), 3, "every mail has an id of its own: {ids:?}");

    // The page: subject, and a body that decodes to what was sent.
    assert_eq!(first.header("Subject"), Some("INC-000042 api down"));
    assert_eq!(first.body.trim_end(), format!("{body}\n\nrunbook: https://runbooks.example.test/api"));
    assert!(
        matches!(first.header("Content-Transfer-Encoding"), Some("quoted-printable" | "base64")),
        "non-ASCII text is encoded: {}",
        first.raw
    );
    assert_eq!(first.header("In-Reply-To"), None);
    let root = first.header("Message-ID").expect("the page's Message-ID");

    // The follow-ups thread under the page.
    for title in ["INC-000042 taken", "INC-000042 resolved"] {
        let mail = mails.iter().find(|m| m.header("Subject") == Some(title)).expect("the follow-up arrived");
        assert_eq!(mail.header("In-Reply-To"), Some(root), "{}", mail.raw);
        assert_eq!(mail.header("References"), Some(root), "{}", mail.raw);
        assert_eq!(mail.body.trim_end(), "news");
    }

    // All three came in over TLS, authenticated.
    let received: Vec<String> = relay.log().lines().filter(|l| l.contains(" <= ")).map(str::to_owned).collect();
    assert_eq!(received.len(), 3, "{received:?}");
    for line in &received {
        assert!(line.contains("P=esmtpsa") && line.contains(" X=TLS"), "{line}");
        assert!(line.contains(&format!("A=plain:{USER}")), "{line}");
    }
}

#[tokio::test]
async fn a_refused_password_fails_at_once_and_is_never_quoted() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let tls = SmtpTlsFiles::generate(dir.path(), "relay", &[HOST]);
    let relay = Smtp::start(dir.path(), "relay", &tls, &SmtpSetup { starttls: true, users: users() }).await;
    let wrong = "not-the-pass-e81d";
    let channels = channels(dir.path(), &relay, "starttls", wrong, &tls.ca);

    let d = channels.send("mail", &Message::new("INC-7", Event::Trigger, "critical", "t", "b")).await;
    assert_failed_once(&d);
    assert!(d.detail.contains("refused the credentials"), "{d:?}");
    assert!(d.detail.contains("535"), "{d:?}");
    assert!(!d.detail.contains(wrong), "the password is quoted: {d:?}");
    assert!(!d.detail.contains(USER), "the user name is quoted: {d:?}");

    // The relay saw one authentication, inside TLS, and refused it.
    let failed = relay.wait_for_log("authenticator failed").await;
    assert!(failed.contains("535"), "{failed}");
    assert_eq!(relay.log().matches("authenticator failed").count(), 1, "{}", relay.log());
    // (The harness's own readiness probe is a session that sent nothing.)
    let line = relay.wait_for_log("C=EHLO").await;
    assert!(line.contains("no MAIL in SMTP connection"), "{line}");
    assert!(line.contains("C=EHLO,STARTTLS,EHLO,AUTH"), "{line}");
    assert!(relay.mails().is_empty());
}

#[tokio::test]
async fn starttls_required_but_not_offered_sends_no_credentials_and_no_mail() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let tls = SmtpTlsFiles::generate(dir.path(), "relay", &[HOST]);
    // The relay offers AUTH in clear text and would take the mail.
    let relay = Smtp::start(dir.path(), "plain", &tls, &SmtpSetup { starttls: false, users: users() }).await;
    let channels = channels(dir.path(), &relay, "starttls", PASSWORD, &tls.ca);

    let d = channels.send("mail", &Message::new("INC-8", Event::Trigger, "critical", "t", "b")).await;
    assert_failed_once(&d);
    assert!(d.detail.contains("does not offer STARTTLS"), "{d:?}");
    assert!(d.detail.contains("no credentials were offered"), "{d:?}");
    assert!(!d.detail.contains(PASSWORD), "{d:?}");

    // The only session: EHLO, and no AUTH, no MAIL.
    // (The harness's own readiness probe is a session that sent nothing.)
    relay.wait_for_log("C=EHLO").await;
    let sessions = commands(&relay);
    let client: Vec<&String> = sessions.iter().filter(|l| l.contains("C=EHLO")).collect();
    assert_eq!(client.len(), 1, "{sessions:?}");
    assert!(!client[0].contains("AUTH"), "credentials went out in clear text: {}", client[0]);
    assert!(!relay.log().contains("authenticator"), "{}", relay.log());
    assert!(!relay.log().contains(" <= "), "{}", relay.log());
    assert!(relay.mails().is_empty());
}

#[tokio::test]
async fn a_certificate_another_ca_signed_is_refused() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let tls = SmtpTlsFiles::generate(dir.path(), "relay", &[HOST]);
    let other = SmtpTlsFiles::generate(dir.path(), "other", &[HOST]);
    let relay = Smtp::start(dir.path(), "relay", &tls, &SmtpSetup { starttls: true, users: users() }).await;
    // Trusts a private CA, not the one that signed the relay's certificate.
    let channels = channels(dir.path(), &relay, "starttls", PASSWORD, &other.ca);

    let d = channels.send("mail", &Message::new("INC-9", Event::Trigger, "critical", "t", "b")).await;
    assert_failed_once(&d);
    assert!(d.detail.contains("certificate was refused"), "{d:?}");
    assert!(d.detail.contains("smtp.ca_file"), "{d:?}");
    assert!(!d.detail.contains(PASSWORD), "{d:?}");

    // The handshake broke off: no AUTH, no mail.
    relay.wait_for_log("TLS error on connection").await;
    assert!(!relay.log().contains("authenticator"), "{}", relay.log());
    assert!(!relay.log().contains(" <= "), "{}", relay.log());
    assert!(relay.mails().is_empty());
}

#[tokio::test]
async fn a_bad_ca_file_stops_the_coordinator_with_exit_64_naming_the_field() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let junk = write(dir.path(), "junk.pem", "not a certificate\n");
    for (ca, why) in [(dir.path().join("absent.pem"), "cannot read"), (junk, "no PEM certificate")] {
        let config = format!(
            "channels:\n  mail:\n    type: email\n    smtp: {{host: smtp.example.test, ca_file: '{}'}}\n    \
             from: remedy@{FROM_DOMAIN}\n",
            ca.display()
        );
        let path = write(dir.path(), "coordinator.yaml", &config);
        let out = std::process::Command::new(remedy_e2e::procs::bin("remedy-coordinator"))
            .args(["--insecure", "--config", path.to_str().expect("a UTF-8 path")])
            .args(["--data-dir", dir.path().join("data").to_str().expect("a UTF-8 path")])
            .output()
            .expect("run the coordinator");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(64), "{config}: {err}");
        assert!(err.contains("channels.mail.smtp.ca_file"), "{config}: {err}");
        assert!(err.contains(why), "{config}: {err}");
    }
}
