//! Notification channels against real local servers: an HTTP server that
//! records every request and answers from a script, and a small SMTP
//! server. Everything listens on 127.0.0.1.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use remedy_coordinator::channels::{
    ChannelConfig, Channels, Delivery, Event, Message, Patience, SIGNATURE_HEADER, StatusUpdate, TIMESTAMP_HEADER,
};
use remedy_shared::Timestamp;
use remedy_shared::comms::Audience;
use remedy_shared::config::{ConfigError, parse_yaml};

// ---------------------------------------------------------------------------
// A recording HTTP server.

#[derive(Debug, Clone)]
struct Recorded {
    method: String,
    path: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Recorded {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default()
    }
}

#[derive(Debug, Clone)]
enum Reply {
    Status(u16, String),
    /// The status with `Retry-After: <secs>`.
    RetryAfter(u16, u64),
    /// No answer at all.
    Hang,
}

struct Shared {
    requests: Mutex<Vec<Recorded>>,
    script: Mutex<VecDeque<Reply>>,
    default: Reply,
}

struct Server {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Server {
    /// A server answering `default` to whatever is not scripted.
    async fn start(default: Reply) -> Server {
        let shared = Arc::new(Shared { requests: Mutex::default(), script: Mutex::default(), default });
        let app = Router::new().fallback(record).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Server { addr, shared }
    }

    /// Answers the next requests with these statuses, in order.
    fn script(&self, statuses: &[u16]) {
        let mut script = self.shared.script.lock().unwrap();
        script.extend(statuses.iter().map(|s| Reply::Status(*s, String::new())));
    }

    fn script_reply(&self, reply: Reply) {
        self.shared.script.lock().unwrap().push_back(reply);
    }

    fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

async fn record(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.requests.lock().unwrap().push(Recorded {
        method: method.to_string(),
        path: uri.path().to_owned(),
        headers,
        body: body.to_vec(),
    });
    let reply = shared.script.lock().unwrap().pop_front().unwrap_or_else(|| shared.default.clone());
    let status = |s: u16| StatusCode::from_u16(s).unwrap();
    match reply {
        Reply::Status(s, text) => (status(s), text).into_response(),
        Reply::RetryAfter(s, secs) => (status(s), [("retry-after", secs.to_string())], "slow down").into_response(),
        Reply::Hang => {
            std::future::pending::<()>().await;
            StatusCode::OK.into_response()
        }
    }
}

fn ok(status: u16) -> Reply {
    Reply::Status(status, String::new())
}

// ---------------------------------------------------------------------------
// A small SMTP server: enough of RFC 5321 for one client, and AUTH PLAIN.

#[derive(Debug, Clone)]
struct Mail {
    from: String,
    to: Vec<String>,
    data: String,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Auth {
    NotOffered,
    Accept,
    Refuse,
}

#[derive(Default)]
struct SmtpLog {
    mails: Mutex<Vec<Mail>>,
    /// Decoded AUTH PLAIN responses: `\0user\0password`.
    auths: Mutex<Vec<String>>,
    connections: AtomicUsize,
}

struct Smtp {
    addr: SocketAddr,
    log: Arc<SmtpLog>,
}

impl Smtp {
    async fn start(auth: Auth) -> Smtp {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let log = Arc::new(SmtpLog::default());
        let served = log.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                served.connections.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(smtp_session(stream, served.clone(), auth));
            }
        });
        Smtp { addr, log }
    }

    fn mails(&self) -> Vec<Mail> {
        self.log.mails.lock().unwrap().clone()
    }
}

async fn smtp_session(stream: tokio::net::TcpStream, log: Arc<SmtpLog>, auth: Auth) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    write.write_all(b"220 127.0.0.1 ESMTP test\r\n").await?;
    let (mut from, mut to) = (String::new(), Vec::new());
    while let Some(line) = lines.next_line().await? {
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            if auth == Auth::NotOffered {
                b"250-127.0.0.1\r\n250 8BITMIME\r\n"
            } else {
                b"250-127.0.0.1\r\n250-AUTH PLAIN\r\n250 8BITMIME\r\n"
            }
        } else if upper.starts_with("HELO") || upper.starts_with("RSET") || upper.starts_with("NOOP") {
            b"250 OK\r\n"
        } else if upper.starts_with("AUTH PLAIN ") {
            log.auths.lock().unwrap().push(String::from_utf8_lossy(&base64_decode(&line[11..])).into_owned());
            if auth == Auth::Accept {
                b"235 2.7.0 Authentication successful\r\n"
            } else {
                b"535 5.7.8 Authentication credentials invalid\r\n"
            }
        } else if upper.starts_with("MAIL FROM:") {
            from = between_angles(&line);
            b"250 OK\r\n"
        } else if upper.starts_with("RCPT TO:") {
            to.push(between_angles(&line));
            b"250 OK\r\n"
        } else if upper == "DATA" {
            write.write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n").await?;
            let mut data = String::new();
            while let Some(line) = lines.next_line().await? {
                if line == "." {
                    break;
                }
                // Dot-stuffing: a leading dot was doubled by the client.
                data.push_str(line.strip_prefix('.').unwrap_or(&line));
                data.push('\n');
            }
            log.mails.lock().unwrap().push(Mail { from: std::mem::take(&mut from), to: std::mem::take(&mut to), data });
            b"250 OK queued\r\n"
        } else if upper == "QUIT" {
            write.write_all(b"221 Bye\r\n").await?;
            break;
        } else {
            b"502 Command not implemented\r\n"
        };
        write.write_all(reply).await?;
    }
    Ok(())
}

fn between_angles(line: &str) -> String {
    let start = line.find('<').map_or(0, |i| i + 1);
    let end = line.rfind('>').unwrap_or(line.len());
    line[start..end].to_owned()
}

fn base64_decode(text: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in text.trim().bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Configuration helpers.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    channels: BTreeMap<String, ChannelConfig>,
}

/// Channels from YAML as the coordinator's file would hold them.
fn parse(yaml: &str) -> Result<BTreeMap<String, ChannelConfig>, ConfigError> {
    parse_yaml::<Doc>("coordinator.yaml", yaml).map(|d| d.channels)
}

fn channels(yaml: &str) -> Channels {
    let config = parse(yaml).unwrap();
    Channels::from_config("coordinator.yaml", &config).unwrap()
}

fn secret(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    // The trailing newline, as `echo` writes it, is not part of the secret.
    std::fs::write(&path, format!("{content}\n")).unwrap();
    path
}

/// Fast retries so tests never wait on a default second of backoff.
const QUICK: &str = "retries: {attempts: 3, initial: 10ms, max: 50ms}";

fn message(event: Event) -> Message {
    let mut m = Message::new(
        "INC-000042",
        event,
        "critical",
        "API down: 5xx above 50%",
        "The API answers 503 to most requests since 10:02.",
    );
    m.links.insert("runbook".into(), "https://runbooks.example.com/p0-001".into());
    m
}

// ---------------------------------------------------------------------------
// Payloads, channel by channel.

#[tokio::test]
async fn slack_posts_the_text_to_the_webhook_url_read_from_its_file() {
    let server = Server::start(ok(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let url_file = secret(dir.path(), "slack", &server.url("/services/T000/B000/XXXX"));
    let channels =
        channels(&format!("channels:\n  slack-ops: {{type: slack, webhook_url_file: {}}}\n", url_file.display()));
    assert_eq!(channels.names().collect::<Vec<_>>(), ["slack-ops"]);
    assert!(channels.contains("slack-ops") && !channels.contains("pager"));

    let d = channels.send("slack-ops", &message(Event::Trigger)).await;
    assert_eq!(
        d,
        Delivery {
            channel: "slack-ops".into(),
            ok: true,
            attempts: 1,
            detail: "HTTP 200".into(),
            reference: None,
            skipped_by_breaker: false,
            stopped: false,
        }
    );
    let [req] = server.requests().try_into().unwrap();
    assert_eq!((req.method.as_str(), req.path.as_str()), ("POST", "/services/T000/B000/XXXX"));
    assert_eq!(req.header("content-type"), "application/json");
    let body = req.json();
    let text = "*API down: 5xx above 50%*\nThe API answers 503 to most requests since 10:02.\n<https://runbooks.example.com/p0-001|runbook>";
    assert_eq!(body["text"], text);
    // The same text in blocks, and on a page a button to acknowledge it.
    assert_eq!(body["blocks"][0]["text"], json!({"type": "mrkdwn", "text": text}));
    let button = &body["blocks"][1]["elements"][0];
    assert_eq!(button["action_id"], "remedy_ack");
    assert_eq!(button["value"], "INC-000042");
    assert_eq!(button["text"]["text"], "Acknowledge");
}

#[tokio::test]
async fn pagerduty_trigger_acknowledge_and_resolve_carry_one_dedup_key() {
    let server = Server::start(Reply::Status(
        202,
        r#"{"status":"success","message":"Event processed","dedup_key":"remedy-INC-000042"}"#.into(),
    ))
    .await;
    let dir = tempfile::tempdir().unwrap();
    let key = "0123456789abcdef0123456789abcdef";
    let key_file = secret(dir.path(), "pd", key);
    let channels = channels(&format!(
        "channels:\n  pager: {{type: pagerduty, routing_key_file: {}, events_url: '{}'}}\n",
        key_file.display(),
        server.url("/v2/enqueue")
    ));

    for event in [Event::Trigger, Event::Acknowledge, Event::Resolve] {
        let d = channels.send("pager", &message(event)).await;
        assert!(d.ok, "{d:?}");
        assert_eq!(d.detail, "HTTP 202");
        assert_eq!(d.reference.as_deref(), Some("remedy-INC-000042"));
    }
    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    for req in &requests {
        assert_eq!((req.method.as_str(), req.path.as_str()), ("POST", "/v2/enqueue"));
        let body = req.json();
        assert_eq!(body["routing_key"], key);
        assert_eq!(body["dedup_key"], "remedy-INC-000042");
    }
    let actions: Vec<Value> = requests.iter().map(|r| r.json()["event_action"].clone()).collect();
    assert_eq!(actions, [json!("trigger"), json!("acknowledge"), json!("resolve")]);

    let trigger = requests[0].json();
    assert_eq!(
        trigger["payload"],
        json!({
            "summary": "API down: 5xx above 50%",
            "source": "remedy",
            "severity": "critical",
            "custom_details": {
                "incident_id": "INC-000042",
                "event": "trigger",
                "body": "The API answers 503 to most requests since 10:02."
            }
        })
    );
    assert_eq!(trigger["links"], json!([{"href": "https://runbooks.example.com/p0-001", "text": "runbook"}]));
    // Acknowledge and resolve name the alert by its key alone.
    for req in &requests[1..] {
        let body = req.json();
        assert!(body.get("payload").is_none() && body.get("links").is_none(), "{body}");
    }

    // An unknown severity pages as `error`; an update is a trigger PagerDuty folds into the alert.
    let mut update = message(Event::Update);
    update.severity = "sev2".into();
    assert!(channels.send("pager", &update).await.ok);
    let body = server.requests()[3].json();
    assert_eq!(body["event_action"], "trigger");
    assert_eq!(body["dedup_key"], "remedy-INC-000042");
    assert_eq!(body["payload"]["severity"], "error");
}

#[tokio::test]
async fn webhook_payload_is_signed_with_hmac_sha256_over_timestamp_and_body() {
    let server = Server::start(ok(204)).await;
    let dir = tempfile::tempdir().unwrap();
    let hmac_secret = "whsec-7f3a9c2e-shared";
    let secret_file = secret(dir.path(), "hmac", hmac_secret);
    let channels = channels(&format!(
        "channels:\n  hooks: {{type: webhook, url: '{}', secret_file: {}}}\n",
        server.url("/remedy"),
        secret_file.display()
    ));
    let mut m = message(Event::Trigger);
    m.status = Some(StatusUpdate { component_status: "major_outage".into(), incident_status: "investigating".into() });
    let d = channels.send("hooks", &m).await;
    assert!(d.ok && d.detail == "HTTP 204", "{d:?}");

    let [req] = server.requests().try_into().unwrap();
    assert_eq!((req.method.as_str(), req.path.as_str()), ("POST", "/remedy"));
    assert_eq!(req.header("content-type"), "application/json");
    let timestamp = req.header(TIMESTAMP_HEADER);
    let ts: i64 = timestamp.parse().expect("unix seconds");
    let signature = req.header(SIGNATURE_HEADER);
    let hex = signature.strip_prefix("sha256=").expect("sha256= prefix");

    // Verify as a receiver would: HMAC over "<timestamp>.<raw body>".
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, hmac_secret.as_bytes());
    let mut signed = format!("{timestamp}.").into_bytes();
    signed.extend_from_slice(&req.body);
    let tag: Vec<u8> = (0..hex.len() / 2).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap()).collect();
    ring::hmac::verify(&key, &signed, &tag).expect("the signature verifies with the shared secret");
    assert!(ring::hmac::verify(&key, &req.body, &tag).is_err(), "the timestamp is part of what is signed");

    let body = req.json();
    let sent_at = Timestamp::parse_rfc3339(body["sent_at"].as_str().unwrap()).expect("RFC 3339 sent_at");
    assert_eq!(sent_at.as_millis().div_euclid(1000), ts);
    assert_eq!(
        body,
        json!({
            "incident_id": "INC-000042",
            "event": "trigger",
            "severity": "critical",
            "title": "API down: 5xx above 50%",
            "body": "The API answers 503 to most requests since 10:02.",
            "links": {"runbook": "https://runbooks.example.com/p0-001"},
            "source": "remedy",
            "sent_at": body["sent_at"],
            "audience": "internal",
            "status": {"component_status": "major_outage", "incident_status": "investigating"},
        })
    );
}

fn email_channel(smtp: &Smtp, extra: &str) -> String {
    format!(
        "channels:\n  mail:\n    type: email\n    smtp: {{host: 127.0.0.1, port: {}, tls: none{extra}}}\n    from: 'Remedy <remedy@example.com>'\n    to: [ops@example.com]\n    {QUICK}\n",
        smtp.addr.port()
    )
}

#[tokio::test]
async fn email_reaches_the_smtp_server_with_envelope_headers_and_body() {
    let smtp = Smtp::start(Auth::NotOffered).await;
    let channels = channels(&email_channel(&smtp, ""));

    let d = channels.send("mail", &message(Event::Trigger)).await;
    assert!(d.ok, "{d:?}");
    assert_eq!(d.detail, "SMTP 250");
    let [mail] = smtp.mails().try_into().unwrap();
    assert_eq!(mail.from, "remedy@example.com");
    assert_eq!(mail.to, ["ops@example.com"]);
    let (headers, body) = mail.data.split_once("\n\n").expect("headers, blank line, body");
    let headers: Vec<&str> = headers.lines().collect();
    assert!(headers.contains(&"From: Remedy <remedy@example.com>"), "{headers:?}");
    assert!(headers.contains(&"To: ops@example.com"), "{headers:?}");
    assert!(headers.contains(&"Subject: API down: 5xx above 50%"), "{headers:?}");
    assert!(headers.contains(&"Content-Type: text/plain; charset=utf-8"), "{headers:?}");
    assert!(headers.contains(&"MIME-Version: 1.0"), "{headers:?}");
    assert!(headers.contains(&"Auto-Submitted: auto-generated"), "{headers:?}");
    // lettre ends a MIME part with a line break of its own.
    assert_eq!(
        body.replace('\r', ""),
        "The API answers 503 to most requests since 10:02.\n\nrunbook: https://runbooks.example.com/p0-001\n\n"
    );

    // The message's own recipients replace the channel's.
    let mut m = message(Event::Resolve);
    m.email_to = vec!["a@example.com".into(), "B <b@example.com>".into()];
    assert!(channels.send("mail", &m).await.ok);
    let mail = smtp.mails().pop().unwrap();
    assert_eq!(mail.to, ["a@example.com", "b@example.com"]);
    assert!(mail.data.lines().any(|l| l == "To: a@example.com, B <b@example.com>"), "{}", mail.data);
}

#[tokio::test]
async fn email_authenticates_with_the_credentials_from_files() {
    let smtp = Smtp::start(Auth::Accept).await;
    let dir = tempfile::tempdir().unwrap();
    let user = secret(dir.path(), "user", "remedy-mailer");
    let pass = secret(dir.path(), "pass", "s3cret-smtp-pass");
    let extra = format!(", username_file: {}, password_file: {}", user.display(), pass.display());
    let channels = channels(&email_channel(&smtp, &extra));
    let d = channels.send("mail", &message(Event::Trigger)).await;
    assert!(d.ok, "{d:?}");
    assert_eq!(*smtp.log.auths.lock().unwrap(), ["\0remedy-mailer\0s3cret-smtp-pass"]);
    assert_eq!(smtp.mails().len(), 1);
}

#[tokio::test]
async fn email_credentials_refused_fail_at_once_without_the_password_in_the_detail() {
    let smtp = Smtp::start(Auth::Refuse).await;
    let dir = tempfile::tempdir().unwrap();
    let user = secret(dir.path(), "user", "remedy-mailer");
    let pass = secret(dir.path(), "pass", "s3cret-smtp-pass");
    let extra = format!(", username_file: {}, password_file: {}", user.display(), pass.display());
    let channels = channels(&email_channel(&smtp, &extra));
    let d = channels.send("mail", &message(Event::Trigger)).await;
    assert!(!d.ok);
    assert_eq!(d.attempts, 1, "{d:?}");
    assert!(d.detail.contains("refused the credentials"), "{}", d.detail);
    assert!(!d.detail.contains("s3cret-smtp-pass"), "{}", d.detail);
    assert_eq!(smtp.log.connections.load(Ordering::SeqCst), 1);
    assert!(smtp.mails().is_empty());
}

/// A message written for customers, as a status page takes.
fn public(event: Event) -> Message {
    Message { audience: Audience::Customers, ..message(event) }
}

#[tokio::test]
async fn statuspage_opens_an_incident_then_patches_the_same_one_by_reference() {
    let server = Server::start(Reply::Status(201, r#"{"id":"p31zjtct2jer","name":"API down"}"#.into())).await;
    let dir = tempfile::tempdir().unwrap();
    let key_file = secret(dir.path(), "sp", "sp-api-key-89a7");
    let channels = channels(&format!(
        "channels:\n  status: {{type: statuspage, api_base: '{}', page_id: abc, api_key_file: {}, components: {{api: cmp123, web: cmp456}}}}\n",
        server.url("/v1"),
        key_file.display()
    ));

    let created = channels.send("status", &public(Event::Trigger)).await;
    assert!(created.ok, "{created:?}");
    assert_eq!(created.reference.as_deref(), Some("p31zjtct2jer"));

    let mut update = public(Event::Update);
    update.body = "A fix is rolling out.".into();
    update.status =
        Some(StatusUpdate { component_status: "partial_outage".into(), incident_status: "identified".into() });
    update.reference = created.reference.clone();
    let updated = channels.send("status", &update).await;
    assert!(updated.ok, "{updated:?}");
    assert_eq!(updated.reference.as_deref(), Some("p31zjtct2jer"));

    let mut resolve = public(Event::Resolve);
    resolve.body = "Resolved.".into();
    resolve.reference = created.reference.clone();
    assert!(channels.send("status", &resolve).await.ok);

    let requests = server.requests();
    assert_eq!(requests.len(), 3);
    for req in &requests {
        assert_eq!(req.header("authorization"), "OAuth sp-api-key-89a7");
    }
    assert_eq!((requests[0].method.as_str(), requests[0].path.as_str()), ("POST", "/v1/pages/abc/incidents"));
    assert_eq!(
        requests[0].json(),
        json!({"incident": {
            "name": "API down: 5xx above 50%",
            "status": "investigating",
            "body": "The API answers 503 to most requests since 10:02.",
            "components": {"cmp123": "major_outage", "cmp456": "major_outage"},
            "component_ids": ["cmp123", "cmp456"],
        }})
    );
    for req in &requests[1..] {
        assert_eq!((req.method.as_str(), req.path.as_str()), ("PATCH", "/v1/pages/abc/incidents/p31zjtct2jer"));
    }
    assert_eq!(
        requests[1].json(),
        json!({"incident": {
            "status": "identified",
            "body": "A fix is rolling out.",
            "components": {"cmp123": "partial_outage", "cmp456": "partial_outage"},
            "component_ids": ["cmp123", "cmp456"],
        }})
    );
    assert_eq!(
        requests[2].json(),
        json!({"incident": {
            "status": "resolved",
            "body": "Resolved.",
            "components": {"cmp123": "operational", "cmp456": "operational"},
            "component_ids": ["cmp123", "cmp456"],
        }})
    );
}

// ---------------------------------------------------------------------------
// Retries.

async fn slack_at(server: &Server, name: &str, extra: &str) -> (Channels, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url_file = secret(dir.path(), name, &server.url(&format!("/hooks/{name}")));
    let channels =
        channels(&format!("channels:\n  {name}: {{type: slack, webhook_url_file: {}, {extra}}}\n", url_file.display()));
    (channels, dir)
}

#[tokio::test]
async fn two_server_errors_then_success_deliver_on_the_third_attempt() {
    let server = Server::start(ok(200)).await;
    server.script(&[500, 500]);
    let (channels, _dir) = slack_at(&server, "ops", QUICK).await;
    let d = channels.send("ops", &message(Event::Trigger)).await;
    assert!(d.ok, "{d:?}");
    assert_eq!(d.attempts, 3);
    assert_eq!(server.count(), 3);
}

#[tokio::test]
async fn retries_stop_at_the_configured_attempts() {
    let server = Server::start(ok(503)).await;
    let (channels, _dir) = slack_at(&server, "ops", QUICK).await;
    let d = channels.send("ops", &message(Event::Trigger)).await;
    assert!(!d.ok);
    assert_eq!(d.attempts, 3);
    assert!(d.detail.starts_with("HTTP 503") && d.detail.ends_with("(gave up after 3 attempts)"), "{}", d.detail);
    assert_eq!(server.count(), 3);
}

#[tokio::test]
async fn a_rate_limit_is_retried_after_its_retry_after() {
    let server = Server::start(ok(200)).await;
    server.script_reply(Reply::RetryAfter(429, 0));
    let (channels, _dir) = slack_at(&server, "ops", QUICK).await;
    let d = channels.send("ops", &message(Event::Trigger)).await;
    assert!(d.ok && d.attempts == 2, "{d:?}");
}

#[tokio::test]
async fn a_bad_request_is_not_retried() {
    let server = Server::start(ok(200)).await;
    server.script_reply(Reply::Status(400, "invalid_payload".into()));
    let (channels, _dir) = slack_at(&server, "ops", QUICK).await;
    let d = channels.send("ops", &message(Event::Trigger)).await;
    assert!(!d.ok);
    assert_eq!(d.attempts, 1);
    assert_eq!(d.detail, "HTTP 400: the service refused the request; not retried: invalid_payload");
    assert_eq!(server.count(), 1);
}

#[tokio::test]
async fn a_refused_credential_is_not_retried_and_says_so() {
    let server = Server::start(ok(202)).await;
    server.script(&[401]);
    let dir = tempfile::tempdir().unwrap();
    let key_file = secret(dir.path(), "pd", "routing-key-0001");
    let channels = channels(&format!(
        "channels:\n  pager: {{type: pagerduty, routing_key_file: {}, events_url: '{}', {QUICK}}}\n",
        key_file.display(),
        server.url("/v2/enqueue")
    ));
    let d = channels.send("pager", &message(Event::Trigger)).await;
    assert!(!d.ok);
    assert_eq!(d.attempts, 1);
    assert!(
        d.detail.contains("HTTP 401: the service refused the credential (check `routing_key_file`)"),
        "{}",
        d.detail
    );
    assert_eq!(server.count(), 1);
}

#[tokio::test]
async fn a_silent_server_times_out_and_each_attempt_is_bounded() {
    let server = Server::start(Reply::Hang).await;
    let (channels, _dir) =
        slack_at(&server, "ops", "timeout: 100ms, retries: {attempts: 2, initial: 10ms, max: 10ms}").await;
    let d = channels.send("ops", &message(Event::Trigger)).await;
    assert!(!d.ok);
    assert_eq!(d.attempts, 2);
    assert_eq!(d.detail, "no answer within 100ms (gave up after 2 attempts)");
    // Each attempt gave up; whether the server saw both requests before
    // then is up to the scheduler, and beside the point.
    assert!(server.count() <= 2);
}

// ---------------------------------------------------------------------------
// Fallback and breaker.

#[tokio::test]
async fn send_first_falls_back_to_the_next_channel() {
    let broken = Server::start(ok(503)).await;
    let working = Server::start(ok(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let broken_file = secret(dir.path(), "broken", &broken.url("/hooks/broken"));
    let working_file = secret(dir.path(), "working", &working.url("/hooks/working"));
    let channels = channels(&format!(
        "channels:\n  broken: {{type: slack, webhook_url_file: {}, retries: {{attempts: 2, initial: 10ms, max: 10ms}}}}\n  working: {{type: slack, webhook_url_file: {}}}\n",
        broken_file.display(),
        working_file.display()
    ));
    let order = ["broken".to_owned(), "working".to_owned(), "never-tried".to_owned()];
    let deliveries = channels.send_first(&order, &message(Event::Trigger), &Patience::default()).await;
    assert_eq!(deliveries.len(), 2, "{deliveries:?}");
    assert_eq!((deliveries[0].channel.as_str(), deliveries[0].ok, deliveries[0].attempts), ("broken", false, 2));
    assert_eq!((deliveries[1].channel.as_str(), deliveries[1].ok, deliveries[1].attempts), ("working", true, 1));
    assert_eq!(broken.count(), 2);
    assert_eq!(working.count(), 1);
}

#[tokio::test]
async fn a_customer_channel_refuses_words_written_for_the_people_handling_the_incident() {
    let server = Server::start(ok(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let file = secret(dir.path(), "customers", &server.url("/hooks/customers"));
    let channels = channels(&format!(
        "channels:\n  customers: {{type: slack, webhook_url_file: {}, audience: customers}}\n",
        file.display()
    ));
    assert_eq!(channels.audience("customers"), Some(Audience::Customers));
    let internal = message(Event::Acknowledge);
    let d = channels.send("customers", &internal).await;
    assert!(!d.ok && d.attempts == 0 && !d.skipped_by_breaker, "{d:?}");
    assert!(d.detail.contains("reaches customers"), "{}", d.detail);
    assert_eq!(server.count(), 0, "nothing left");
    let public = Message { audience: Audience::Customers, ..message(Event::Update) };
    assert!(channels.send("customers", &public).await.ok);
    assert_eq!(server.count(), 1);
    // Refusals are the text's fault, not the channel's: the breaker is untouched.
    for _ in 0..20 {
        channels.send("customers", &internal).await;
    }
    assert!(channels.send("customers", &public).await.ok, "the breaker did not open");
}

#[tokio::test]
async fn a_status_page_reaches_customers_unless_it_says_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let key = secret(dir.path(), "key", "k");
    let channels = channels(&format!(
        "channels:\n  public: {{type: statuspage, page_id: p, api_key_file: {k}}}\n  \
         internal-page: {{type: statuspage, page_id: q, api_key_file: {k}, audience: internal}}\n",
        k = key.display()
    ));
    assert_eq!(channels.audience("public"), Some(Audience::Customers));
    assert_eq!(channels.audience("internal-page"), Some(Audience::Internal));
    assert_eq!(channels.audience("nope"), None);
}

#[tokio::test]
async fn an_open_breaker_refuses_sends_without_a_request() {
    let server = Server::start(ok(500)).await;
    let (channels, _dir) =
        slack_at(&server, "ops", "retries: {attempts: 1}, breaker: {failure_threshold: 3, recovery: 1h}").await;
    for _ in 0..3 {
        let d = channels.send("ops", &message(Event::Trigger)).await;
        assert!(!d.ok && !d.skipped_by_breaker, "{d:?}");
    }
    assert_eq!(server.count(), 3);
    let d = channels.send("ops", &message(Event::Trigger)).await;
    assert!(!d.ok && d.skipped_by_breaker, "{d:?}");
    assert_eq!(d.attempts, 0);
    assert!(d.detail.contains("breaker is open after 3 consecutive failed deliveries; next trial at "), "{}", d.detail);
    assert_eq!(server.count(), 3, "no request while the breaker is open");
}

#[tokio::test]
async fn after_recovery_one_trial_goes_through_and_closes_the_breaker() {
    let server = Server::start(ok(200)).await;
    server.script(&[500, 500]);
    let (channels, _dir) =
        slack_at(&server, "ops", "retries: {attempts: 1}, breaker: {failure_threshold: 2, recovery: 50ms}").await;
    for _ in 0..2 {
        assert!(!channels.send("ops", &message(Event::Trigger)).await.ok);
    }
    // Wait for the trial: each refused send reaches nothing; the first one
    // let through is the trial, and it succeeds.
    let mut trial = None;
    for _ in 0..1000 {
        let d = channels.send("ops", &message(Event::Trigger)).await;
        if !d.skipped_by_breaker {
            trial = Some(d);
            break;
        }
        assert_eq!(server.count(), 2, "a refused send reached the server");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let trial = trial.expect("the breaker let a trial through after its recovery");
    assert!(trial.ok && trial.attempts == 1, "{trial:?}");
    assert_eq!(server.count(), 3);
    // Closed again: the next send goes straight through.
    let d = channels.send("ops", &message(Event::Trigger)).await;
    assert!(d.ok && !d.skipped_by_breaker, "{d:?}");
    assert_eq!(server.count(), 4);
}

// ---------------------------------------------------------------------------
// Configuration errors.

fn build_error(yaml: &str) -> ConfigError {
    let config = parse(yaml).unwrap();
    Channels::from_config("coordinator.yaml", &config).unwrap_err()
}

#[test]
fn configuration_errors_name_the_channel_and_field() {
    let err = parse("channels:\n  pager: {type: opsgenie, api_key_file: /k}\n").unwrap_err();
    assert_eq!(err.field, "channels.pager.type");
    assert!(err.message.contains("unknown variant `opsgenie`"), "{err}");

    let err = build_error("channels:\n  pager: {type: pagerduty, routing_key_file: /nonexistent/remedy/pd}\n");
    assert_eq!((err.file.as_str(), err.field.as_str()), ("coordinator.yaml", "channels.pager.routing_key_file"));
    assert!(err.message.contains("cannot read `/nonexistent/remedy/pd`"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let s = secret(dir.path(), "s", "whsec-1234");
    let err = build_error(&format!(
        "channels:\n  hooks: {{type: webhook, url: 'hooks example', secret_file: {}}}\n",
        s.display()
    ));
    assert_eq!(err.field, "channels.hooks.url");
    assert!(err.message.contains("is not a URL"), "{err}");

    let err = build_error(&format!(
        "channels:\n  status: {{type: statuspage, api_base: 'ftp://api.example.com', page_id: abc, api_key_file: {}}}\n",
        s.display()
    ));
    assert_eq!(err.field, "channels.status.api_base");

    let err = build_error(&format!(
        "channels:\n  pager: {{type: pagerduty, routing_key_file: {}, events_url: 'events'}}\n",
        s.display()
    ));
    assert_eq!(err.field, "channels.pager.events_url");

    // A file that does not hold a URL is refused without quoting it: it may be a token.
    let err = build_error(&format!("channels:\n  slack: {{type: slack, webhook_url_file: {}}}\n", s.display()));
    assert_eq!(err.field, "channels.slack.webhook_url_file");
    assert!(!err.to_string().contains("whsec-1234"), "{err}");

    let err = build_error("channels:\n  mail: {type: email, smtp: {host: smtp.example.com}, from: 'not an address'}\n");
    assert_eq!(err.field, "channels.mail.from");

    let err = build_error(&format!(
        "channels:\n  mail: {{type: email, smtp: {{host: smtp.example.com, tls: none, username_file: {0}, password_file: {0}}}, from: a@example.com}}\n",
        s.display()
    ));
    assert_eq!(err.field, "channels.mail.smtp.tls");
    assert!(err.message.contains("clear text"), "{err}");

    let err = build_error(&format!(
        "channels:\n  hooks: {{type: webhook, url: 'http://127.0.0.1:9/h', secret_file: {}, retries: {{attempts: 0}}}}\n",
        s.display()
    ));
    assert_eq!(err.field, "channels.hooks.retries.attempts");
}

// ---------------------------------------------------------------------------
// Secrets.

#[tokio::test]
async fn secrets_stay_out_of_debug_output_and_delivery_details() {
    let dir = tempfile::tempdir().unwrap();
    let slack_token = "T0SECRET/B0SECRET/xoxSLACKSECRET";
    // A privileged port nothing here listens on (and no test server can
    // be given): connections are refused.
    let closed = "127.0.0.1:1";
    let slack_file = secret(dir.path(), "slack", &format!("http://{closed}/services/{slack_token}"));
    let pd_key = "pdROUTINGKEYsecret00000000000000";
    // A service that quotes the key it refuses.
    let echo = Server::start(Reply::Status(400, format!("routing key {pd_key} is not valid"))).await;
    let pd_file = secret(dir.path(), "pd", pd_key);
    let hmac_file = secret(dir.path(), "hmac", "whsecHMACSECRET");
    let sp_file = secret(dir.path(), "sp", "spAPIKEYSECRET");
    let user_file = secret(dir.path(), "user", "smtpUSERSECRET");
    let pass_file = secret(dir.path(), "pass", "smtpPASSWORDSECRET");
    let channels = channels(&format!(
        r#"channels:
  slack: {{type: slack, webhook_url_file: {}, retries: {{attempts: 2, initial: 10ms, max: 10ms}}}}
  pager: {{type: pagerduty, routing_key_file: {}, events_url: '{}'}}
  hooks: {{type: webhook, url: 'https://hooks.example.com/remedy', secret_file: {}}}
  status: {{type: statuspage, page_id: abc, api_key_file: {}}}
  mail: {{type: email, smtp: {{host: smtp.example.com, username_file: {}, password_file: {}}}, from: remedy@example.com}}
"#,
        slack_file.display(),
        pd_file.display(),
        echo.url("/v2/enqueue"),
        hmac_file.display(),
        sp_file.display(),
        user_file.display(),
        pass_file.display(),
    ));
    let secrets = [slack_token, pd_key, "whsecHMACSECRET", "spAPIKEYSECRET", "smtpUSERSECRET", "smtpPASSWORDSECRET"];

    let debug = format!("{channels:?} {channels:#?}");
    for s in secrets {
        assert!(!debug.contains(s), "`{s}` in Debug output: {debug}");
    }
    assert!(debug.contains("[redacted]"), "{debug}");

    let d = channels.send("pager", &message(Event::Trigger)).await;
    assert!(!d.ok && d.detail.starts_with("HTTP 400"), "{d:?}");
    assert!(!d.detail.contains(pd_key), "{}", d.detail);
    assert!(d.detail.ends_with("routing key [redacted] is not valid"), "{}", d.detail);
    assert_eq!(echo.count(), 1);

    // A connection failure names no URL (the URL is Slack's secret).
    let d = channels.send("slack", &message(Event::Trigger)).await;
    assert!(!d.ok && d.attempts == 2, "{d:?}");
    assert!(d.detail.starts_with("cannot connect"), "{}", d.detail);
    assert!(!d.detail.contains("SECRET") && !d.detail.contains(closed), "{}", d.detail);
}
