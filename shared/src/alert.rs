//! Alerts from Prometheus Alertmanager, as the domain sees them.
//!
//! Alertmanager delivers at least once: it retries failed webhooks, and an
//! HA pair sends every notification from each replica. An alert's
//! (fingerprint, status, startsAt) identifies one notification of one
//! alert, so the same key seen twice is the same news and must act once.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::finding::Severity;
use crate::time::Timestamp;

/// Whether the alert fires or has resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertStatus {
    /// The alert's condition holds.
    Firing,
    /// The alert's condition ended.
    Resolved,
}

impl AlertStatus {
    /// The name Alertmanager uses.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertStatus::Firing => "firing",
            AlertStatus::Resolved => "resolved",
        }
    }
}

/// One alert of a notification.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Firing or resolved.
    pub status: AlertStatus,
    /// The `alertname` label.
    pub alertname: String,
    /// Every label, `alertname` included.
    pub labels: BTreeMap<String, String>,
    /// Annotations (summary, description, runbook_url...).
    pub annotations: BTreeMap<String, String>,
    /// `startsAt` exactly as sent: part of the deduplication key, so it is
    /// compared as text, never re-formatted.
    pub starts_at_raw: String,
    /// `startsAt`, parsed.
    pub starts_at: Timestamp,
    /// `endsAt`, when known.
    pub ends_at: Option<Timestamp>,
    /// Alertmanager's fingerprint of the label set.
    pub fingerprint: String,
    /// Link to the expression that fired.
    pub generator_url: String,
    /// Who delivered it (`user:NAME`, the holder of the webhook token it
    /// came with); empty for alerts recorded before senders were named.
    #[serde(default)]
    pub sent_by: String,
}

impl Alert {
    /// What identifies one notification of one alert.
    pub fn dedup_key(&self) -> String {
        format!("{}|{}|{}", self.fingerprint, self.status.as_str(), self.starts_at_raw)
    }

    /// Severity from the conventional `severity` label; an alert without one
    /// is taken as critical, since someone thought it worth routing here.
    pub fn severity(&self) -> Severity {
        match self.labels.get("severity").map(|s| s.to_ascii_lowercase()).as_deref() {
            Some("info" | "none") => Severity::Info,
            Some("warning" | "warn" | "minor") => Severity::Warning,
            _ => Severity::Critical,
        }
    }

    /// One line for humans: the summary annotation, else the description,
    /// else the alert's name.
    pub fn summary(&self) -> &str {
        self.annotations
            .get("summary")
            .or_else(|| self.annotations.get("description"))
            .map_or(self.alertname.as_str(), String::as_str)
    }
}

/// A fingerprint of a label set for alerts that arrive without one: FNV-1a
/// over the sorted labels, stable across processes and versions.
pub fn fingerprint(labels: &BTreeMap<String, String>) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for (k, v) in labels {
        for byte in k.bytes().chain([0xff]).chain(v.bytes()).chain([0xfe]) {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(status: AlertStatus) -> Alert {
        Alert {
            status,
            alertname: "P0_SystemDown".into(),
            labels: BTreeMap::from([("alertname".into(), "P0_SystemDown".into())]),
            annotations: BTreeMap::new(),
            starts_at_raw: "2026-11-26T10:00:00.123Z".into(),
            starts_at: Timestamp::from_millis(1),
            ends_at: None,
            fingerprint: "abc".into(),
            generator_url: String::new(),
            sent_by: String::new(),
        }
    }

    #[test]
    fn the_same_notification_has_the_same_key_and_a_resolution_does_not() {
        assert_eq!(alert(AlertStatus::Firing).dedup_key(), alert(AlertStatus::Firing).dedup_key());
        assert_ne!(alert(AlertStatus::Firing).dedup_key(), alert(AlertStatus::Resolved).dedup_key());
    }

    #[test]
    fn severity_defaults_to_critical_and_summary_falls_back_to_the_name() {
        let mut a = alert(AlertStatus::Firing);
        assert_eq!(a.severity(), Severity::Critical);
        assert_eq!(a.summary(), "P0_SystemDown");
        a.labels.insert("severity".into(), "Warning".into());
        a.annotations.insert("description".into(), "api down".into());
        assert_eq!(a.severity(), Severity::Warning);
        assert_eq!(a.summary(), "api down");
    }

    #[test]
    fn fingerprints_are_stable_and_depend_on_every_label() {
        let a = BTreeMap::from([("alertname".to_owned(), "X".to_owned()), ("job".to_owned(), "api".to_owned())]);
        let mut b = a.clone();
        assert_eq!(fingerprint(&a), fingerprint(&b));
        b.insert("job".into(), "apj".into());
        assert_ne!(fingerprint(&a), fingerprint(&b));
        assert_eq!(fingerprint(&a).len(), 16);
    }
}
