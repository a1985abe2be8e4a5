//! Alertmanager's webhook (`POST /api/v1/alertmanager`, payload version 4).
//!
//! Nothing anonymous starts a runbook: a notification must carry a bearer
//! token from `alertmanager.tokens_file` (Alertmanager sends one with
//! `http_config.authorization.credentials_file`), and its body must be
//! `application/json`, as Alertmanager's is. A form or `text/plain` body,
//! which any web page can make a browser send, is refused before it is
//! read. The sender's identity goes on each alert, and so on the incident.
//!
//! Answers: 200 once the alerts are persisted (or recognised as already
//! seen), 400 with the reason for a payload that can never succeed (so
//! Alertmanager does not retry it), 401 without a known token, 415 for a
//! body that is not JSON, 413 for one over [`MAX_BODY`], 503 when the queue is full or the store cannot
//! write (Alertmanager retries 5xx). A refused request records nothing.
//!
//! Every alert is bounded before it is kept (see `convert`): over-long
//! names are a 400, over-long label values and annotations are cut and say
//! so.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use remedy_shared::Timestamp;
use remedy_shared::alert::{self, Alert, AlertStatus};
use remedy_shared::limits::{self, LimitError};
use serde::Deserialize;

use crate::auth::TokenFile;
use crate::recorder::{RecordError, Recorder};
use remedy_shared::auth::SenderScopes;
use remedy_shared::run::Catalog;
use std::sync::Arc;

/// Most alerts accepted in one notification.
pub const MAX_ALERTS: usize = 1_000;

/// A notification as Alertmanager sends it. Fields Remedy does not use are
/// accepted and ignored: Alertmanager adds fields between versions.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Notification {
    version: String,
    #[serde(default)]
    group_key: String,
    alerts: Vec<WireAlert>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireAlert {
    status: String,
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
    starts_at: String,
    #[serde(default)]
    ends_at: String,
    #[serde(default, rename = "generatorURL")]
    generator_url: String,
    #[serde(default)]
    fingerprint: String,
}

/// Decodes and validates a notification; the error is the reason for a 400.
pub fn parse(body: &[u8]) -> Result<Vec<Alert>, String> {
    let n: Notification = serde_json::from_slice(body).map_err(|e| format!("not an Alertmanager notification: {e}"))?;
    if n.version != "4" {
        return Err(format!("payload version `{}` is not supported; Remedy reads version 4", n.version));
    }
    if n.alerts.len() > MAX_ALERTS {
        return Err(format!("{} alerts in one notification; at most {MAX_ALERTS}", n.alerts.len()));
    }
    tracing::debug!(group = %n.group_key, alerts = n.alerts.len(), "alertmanager notification");
    n.alerts.into_iter().enumerate().map(|(i, a)| convert(a).map_err(|e| format!("alerts[{i}]: {e}"))).collect()
}

/// One alert from the wire, bounded by [`remedy_shared::limits`]: its
/// identity (label names, the alert's name, its fingerprint) is refused over
/// its limit, while long label values, annotations and the generator URL are
/// cut saying so, so an alert with a long description still opens its
/// incident. The fingerprint is taken before any cut, so two alerts that
/// differ only past a cut stay two.
fn convert(mut a: WireAlert) -> Result<Alert, String> {
    let status = match a.status.as_str() {
        "firing" => AlertStatus::Firing,
        "resolved" => AlertStatus::Resolved,
        other => return Err(format!("status `{other}` is neither firing nor resolved")),
    };
    let alertname =
        a.labels.get("alertname").filter(|n| !n.trim().is_empty()).cloned().ok_or("labels.alertname is missing")?;
    let starts_at = Timestamp::parse_rfc3339(&a.starts_at)
        .ok_or_else(|| format!("startsAt `{}` is not an RFC 3339 time", a.starts_at))?;
    let fingerprint = if a.fingerprint.is_empty() { alert::fingerprint(&a.labels) } else { a.fingerprint };
    let named = |e: LimitError| e.to_string();
    limits::check_name("labels.alertname", &alertname, limits::MAX_KEY_BYTES).map_err(named)?;
    limits::check_name("fingerprint", &fingerprint, limits::MAX_KEY_BYTES).map_err(named)?;
    limits::check_name("startsAt", &a.starts_at, limits::MAX_KEY_BYTES).map_err(named)?;
    limits::bound_map("labels", &mut a.labels).map_err(named)?;
    limits::bound_map("annotations", &mut a.annotations).map_err(named)?;
    limits::clip(&mut a.generator_url, limits::MAX_VALUE_BYTES);
    Ok(Alert {
        status,
        alertname,
        ends_at: Timestamp::parse_rfc3339(&a.ends_at),
        labels: a.labels,
        annotations: a.annotations,
        starts_at_raw: a.starts_at,
        starts_at,
        fingerprint,
        generator_url: a.generator_url,
        // Named by the handler, from the token the request came with.
        sent_by: String::new(),
    })
}

fn answer(code: StatusCode, body: serde_json::Value) -> Response {
    (code, Json(body)).into_response()
}

/// Largest notification body read, bytes (Alertmanager groups are far
/// smaller); a larger one is answered 413.
pub const MAX_BODY: usize = 4 * 1024 * 1024;

/// What the webhook needs: where alerts go and who may send them.
#[derive(Debug, Clone)]
pub struct Webhook {
    /// The writer.
    pub recorder: Recorder,
    /// The senders' bearer tokens.
    pub senders: TokenFile,
    /// Which runbooks each sender may start.
    pub scopes: SenderScopes,
    /// The catalog, to know which runbook an alert would start.
    pub catalog: Arc<Catalog>,
}

/// Why a request is refused before its body is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// No token, a malformed header, or a token nobody holds (401).
    Unauthenticated(&'static str),
    /// A body that is not `application/json` (415).
    NotJson,
}

impl Refused {
    fn response(&self) -> Response {
        match self {
            Refused::Unauthenticated(why) => {
                let mut r = answer(StatusCode::UNAUTHORIZED, serde_json::json!({ "error": why }));
                r.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
                r
            }
            Refused::NotJson => answer(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                serde_json::json!({ "error": "the body must be application/json, as Alertmanager sends it" }),
            ),
        }
    }
}

/// Who sent a request, or why it is refused: a known bearer token first,
/// then a JSON body.
pub fn admit(headers: &HeaderMap, senders: &TokenFile) -> Result<String, Refused> {
    if !senders.is_configured() {
        return Err(Refused::Unauthenticated(
            "this coordinator accepts no notification: configure alertmanager.tokens_file and give Alertmanager a token from it",
        ));
    }
    let authorization = headers.get(header::AUTHORIZATION).map(|v| v.to_str().unwrap_or(""));
    let sender = match remedy_proto::tokens::bearer(authorization) {
        remedy_proto::tokens::Bearer::Absent => {
            return Err(Refused::Unauthenticated("an `Authorization: Bearer TOKEN` header is required"));
        }
        remedy_proto::tokens::Bearer::Malformed => {
            return Err(Refused::Unauthenticated("the authorization header is not `Bearer TOKEN`"));
        }
        remedy_proto::tokens::Bearer::Token(token) => {
            senders.identify(token).ok_or(Refused::Unauthenticated("the bearer token is not known"))?
        }
    };
    let json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"));
    if !json {
        return Err(Refused::NotJson);
    }
    Ok(sender.to_string())
}

/// Why `sender` may not send `alerts`: one of them would start a runbook
/// its scope does not name. The whole notification is refused (403) and
/// nothing of it is recorded, so the sender's operators see it in
/// Alertmanager's own failed-notification log.
pub fn out_of_scope(scopes: &SenderScopes, catalog: &Catalog, sender: &str, alerts: &[Alert]) -> Option<String> {
    let name = sender.strip_prefix("user:").unwrap_or(sender);
    alerts.iter().find_map(|alert| {
        let runbook = catalog.for_alert(alert)?;
        (!scopes.may_start(name, runbook.id())).then(|| {
            format!(
                "{sender} may not start runbook {} (alert {}): alertmanager.may_start does not name it",
                runbook.id(),
                alert.alertname
            )
        })
    })
}

/// The webhook handler. The body is read only once the sender is admitted:
/// an anonymous caller cannot make the coordinator buffer anything.
pub async fn receive(State(webhook): State<Webhook>, headers: HeaderMap, body: axum::body::Body) -> Response {
    let metrics = webhook.recorder.metrics().clone();
    let (outcome, response) = handle(webhook, headers, body).await;
    let labels = crate::metrics::OutcomeLabels { outcome: outcome.to_owned() };
    metrics.webhook_requests.get_or_create(&labels).inc();
    response
}

/// The request's outcome, for the metrics, and the answer.
async fn handle(webhook: Webhook, headers: HeaderMap, body: axum::body::Body) -> (&'static str, Response) {
    let sender = match admit(&headers, &webhook.senders) {
        Ok(sender) => sender,
        Err(refused) => {
            tracing::warn!(?refused, "refused an Alertmanager notification");
            let outcome = match refused {
                Refused::Unauthenticated(_) => "unauthenticated",
                Refused::NotJson => "not_json",
            };
            return (outcome, refused.response());
        }
    };
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        let body = serde_json::json!({ "error": format!("a notification is at most {MAX_BODY} bytes") });
        return ("too_large", answer(StatusCode::PAYLOAD_TOO_LARGE, body));
    };
    let recorder = webhook.recorder;
    let alerts: Vec<Alert> = match parse(&body) {
        Ok(alerts) => alerts.into_iter().map(|a| Alert { sent_by: sender.clone(), ..a }).collect(),
        Err(reason) => {
            tracing::warn!(%reason, "refused an Alertmanager notification");
            return ("invalid", answer(StatusCode::BAD_REQUEST, serde_json::json!({ "error": reason })));
        }
    };
    if let Some(why) = out_of_scope(&webhook.scopes, &webhook.catalog, &sender, &alerts) {
        tracing::warn!(%sender, %why, "refused an Alertmanager notification");
        return ("forbidden", answer(StatusCode::FORBIDDEN, serde_json::json!({ "error": why })));
    }
    match recorder.alerts(alerts).await {
        Ok(receipt) => (
            "accepted",
            answer(StatusCode::OK, serde_json::json!({ "accepted": receipt.new, "duplicates": receipt.duplicates })),
        ),
        Err(RecordError::QueueFull) => (
            "unavailable",
            answer(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({ "error": "the coordinator's queue is full; retry later" }),
            ),
        ),
        Err(e) => {
            ("unavailable", answer(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({ "error": e.to_string() })))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn senders() -> (TokenFile, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.yaml");
        std::fs::write(&path, "- {user: alertmanager, token: s3cret-token-of-alertmanager}\n").unwrap();
        (TokenFile::load(Some(&path)).unwrap(), dir)
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, header::HeaderValue::from_static(value));
        }
        h
    }

    fn notification(labels: serde_json::Value, annotations: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "version": "4", "alerts": [{ "status": "firing",
            "labels": labels, "annotations": annotations, "startsAt": "2026-01-01T00:00:00Z" }] }))
        .unwrap()
    }

    #[test]
    fn long_values_are_cut_saying_so_and_two_alerts_differing_past_the_cut_stay_two() {
        let long = |tail: &str| format!("{}{tail}", "v".repeat(10_000));
        let one = parse(&notification(
            serde_json::json!({ "alertname": "Down", "detail": long("a") }),
            serde_json::json!({ "description": "d".repeat(100_000) }),
        ))
        .unwrap();
        let other = parse(&notification(
            serde_json::json!({ "alertname": "Down", "detail": long("b") }),
            serde_json::json!({}),
        ))
        .unwrap();
        let (one, other) = (&one[0], &other[0]);
        assert!(one.labels["detail"].len() <= limits::MAX_VALUE_BYTES);
        assert!(one.labels["detail"].ends_with("[truncated from 10001 bytes]"), "{}", one.labels["detail"]);
        assert!(one.annotations["description"].ends_with("[truncated from 100000 bytes]"));
        assert_eq!(one.labels["detail"], other.labels["detail"], "cut to the same text");
        assert_ne!(one.fingerprint, other.fingerprint, "but still two alerts");
    }

    #[test]
    fn an_over_long_name_or_too_many_labels_are_refused_naming_the_alert_and_field() {
        let key = "k".repeat(300);
        let e = parse(&notification(serde_json::json!({ "alertname": "Down", key: "v" }), serde_json::json!({})))
            .unwrap_err();
        assert_eq!(e, "alerts[0]: labels key is 300 bytes, over the limit of 256");
        let mut many = serde_json::Map::new();
        many.insert("alertname".into(), "Down".into());
        for i in 0..64 {
            many.insert(format!("l{i}"), "v".into());
        }
        let e = parse(&notification(serde_json::Value::Object(many), serde_json::json!({}))).unwrap_err();
        assert_eq!(e, "alerts[0]: labels has 65 entries, over the limit of 64");
        let e = parse(&notification(serde_json::json!({ "alertname": "D".repeat(257) }), serde_json::json!({})))
            .unwrap_err();
        assert_eq!(e, "alerts[0]: labels.alertname is 257 bytes, over the limit of 256");
    }

    #[test]
    fn only_a_known_token_with_a_json_body_is_admitted_and_names_its_holder() {
        let (senders, _dir) = senders();
        let json = ("content-type", "application/json");
        let good = ("authorization", "Bearer s3cret-token-of-alertmanager");
        assert_eq!(admit(&headers(&[good, json]), &senders), Ok("user:alertmanager".to_owned()));
        let charset = ("content-type", "Application/JSON; charset=utf-8");
        assert_eq!(admit(&headers(&[good, charset]), &senders), Ok("user:alertmanager".to_owned()));
        assert!(matches!(admit(&headers(&[json]), &senders), Err(Refused::Unauthenticated(_))));
        let wrong = ("authorization", "Bearer s3cret-token-of-alertmanagex");
        assert_eq!(
            admit(&headers(&[wrong, json]), &senders),
            Err(Refused::Unauthenticated("the bearer token is not known"))
        );
        let basic = ("authorization", "Basic czNjcmV0LXRva2Vu");
        assert!(matches!(admit(&headers(&[basic, json]), &senders), Err(Refused::Unauthenticated(_))));
        for kind in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data", "application/jsonx"] {
            let h = {
                let mut h = headers(&[good]);
                h.insert(header::CONTENT_TYPE, header::HeaderValue::from_str(kind).unwrap());
                h
            };
            assert_eq!(admit(&h, &senders), Err(Refused::NotJson), "{kind}");
        }
        assert_eq!(admit(&headers(&[good]), &senders), Err(Refused::NotJson), "no content type");
    }

    #[test]
    fn without_a_tokens_file_nothing_is_admitted_and_the_refusal_says_what_to_configure() {
        let refused = admit(
            &headers(&[("authorization", "Bearer anything"), ("content-type", "application/json")]),
            &TokenFile::default(),
        );
        match refused {
            Err(Refused::Unauthenticated(why)) => assert!(why.contains("alertmanager.tokens_file"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    const SAMPLE: &str = r#"{
      "receiver": "remedy", "status": "firing", "version": "4", "truncatedAlerts": 0,
      "groupKey": "{}:{alertname=\"P0_SystemDown\"}", "groupLabels": {}, "commonLabels": {}, "commonAnnotations": {},
      "externalURL": "http://alertmanager:9093",
      "alerts": [{
        "status": "firing",
        "labels": {"alertname": "P0_SystemDown", "severity": "critical", "namespace": "saas-idp-production"},
        "annotations": {"summary": "platform down"},
        "startsAt": "2026-11-26T10:00:00.5+01:00", "endsAt": "0001-01-01T00:00:00Z",
        "generatorURL": "http://prometheus:9090/graph", "fingerprint": "1a30ba71cca2921f"
      }]
    }"#;

    #[test]
    fn a_version_4_notification_becomes_alerts() {
        let alerts = parse(SAMPLE.as_bytes()).unwrap();
        assert_eq!(alerts.len(), 1);
        let a = &alerts[0];
        assert_eq!((a.alertname.as_str(), a.status), ("P0_SystemDown", AlertStatus::Firing));
        assert_eq!(a.starts_at, Timestamp::parse_rfc3339("2026-11-26T09:00:00.5Z").unwrap());
        assert_eq!(a.ends_at, None);
        assert_eq!(a.fingerprint, "1a30ba71cca2921f");
        assert_eq!(a.dedup_key(), "1a30ba71cca2921f|firing|2026-11-26T10:00:00.5+01:00");
    }

    #[test]
    fn malformed_notifications_are_refused_with_the_reason() {
        assert!(parse(b"{").unwrap_err().starts_with("not an Alertmanager notification"));
        let v3 = SAMPLE.replace("\"version\": \"4\"", "\"version\": \"3\"");
        assert_eq!(parse(v3.as_bytes()).unwrap_err(), "payload version `3` is not supported; Remedy reads version 4");
        let bad_status = SAMPLE
            .replace("\"status\": \"firing\",\n        \"labels\"", "\"status\": \"burning\",\n        \"labels\"");
        assert_eq!(
            parse(bad_status.as_bytes()).unwrap_err(),
            "alerts[0]: status `burning` is neither firing nor resolved"
        );
        let no_name = SAMPLE.replace("\"alertname\": \"P0_SystemDown\", ", "");
        assert_eq!(parse(no_name.as_bytes()).unwrap_err(), "alerts[0]: labels.alertname is missing");
        let bad_time = SAMPLE.replace("2026-11-26T10:00:00.5+01:00", "soon");
        assert_eq!(parse(bad_time.as_bytes()).unwrap_err(), "alerts[0]: startsAt `soon` is not an RFC 3339 time");
    }

    #[test]
    fn a_missing_fingerprint_is_computed_from_the_labels() {
        let without = SAMPLE.replace(", \"fingerprint\": \"1a30ba71cca2921f\"", "");
        let alerts = parse(without.as_bytes()).unwrap();
        assert_eq!(alerts[0].fingerprint, alert::fingerprint(&alerts[0].labels));
    }
}
