//! Alertmanager's webhook (`POST /api/v1/alertmanager`, payload version 4).
//!
//! Answers: 200 once the alerts are persisted (or recognised as already
//! seen), 400 with the reason for a payload that can never succeed (so
//! Alertmanager does not retry it), 503 when the queue is full or the store
//! cannot write (Alertmanager retries 5xx).

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use remedy_shared::Timestamp;
use remedy_shared::alert::{self, Alert, AlertStatus};
use serde::Deserialize;

use crate::recorder::{RecordError, Recorder};

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

fn convert(a: WireAlert) -> Result<Alert, String> {
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
    })
}

fn answer(code: StatusCode, body: serde_json::Value) -> Response {
    (code, Json(body)).into_response()
}

/// The webhook handler.
pub async fn receive(State(recorder): State<Recorder>, body: axum::body::Bytes) -> Response {
    let alerts = match parse(&body) {
        Ok(alerts) => alerts,
        Err(reason) => {
            tracing::warn!(%reason, "refused an Alertmanager notification");
            return answer(StatusCode::BAD_REQUEST, serde_json::json!({ "error": reason }));
        }
    };
    match recorder.alerts(alerts).await {
        Ok(receipt) => {
            answer(StatusCode::OK, serde_json::json!({ "accepted": receipt.new, "duplicates": receipt.duplicates }))
        }
        Err(RecordError::QueueFull) => answer(
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({ "error": "the coordinator's queue is full; retry later" }),
        ),
        Err(e) => answer(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({ "error": e.to_string() })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
