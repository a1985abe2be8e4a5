//! Incidents: findings about one condition, grouped, with their record.
//!
//! The grouping rule is pure: given the open incident for a condition (if
//! any), who reported and what, it returns the incident after the finding
//! and the timeline entries to append. The store persists both in one
//! transaction.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::alert::{Alert, AlertStatus};
use crate::finding::{ConditionKey, ConditionKind, Finding, FindingState, Severity};
use crate::runbook::{Priority, Runbook};
use crate::time::Timestamp;

/// An incident's id: a number shown as `INC-000042`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IncidentId(pub u64);

impl fmt::Display for IncidentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "INC-{:06}", self.0)
    }
}

impl FromStr for IncidentId {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // `INC-000042`, `inc-000042`, `INC-42` and `42` all name incident 42:
        // people type what they read, in any case.
        let trimmed = s.trim();
        let digits = match trimmed.get(..4) {
            Some(prefix) if prefix.eq_ignore_ascii_case("INC-") => &trimmed[4..],
            _ => trimmed,
        };
        digits
            .parse::<u64>()
            .map(IncidentId)
            .map_err(|_| format!("`{s}` is not an incident id (expected INC-<number>, or the number)"))
    }
}

/// Where an incident stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentState {
    /// Opened; nobody and nothing has taken it yet.
    Triggered,
    /// A person acknowledged it.
    Acknowledged,
    /// Remediation is running.
    Mitigating,
    /// Over.
    Resolved,
    /// Handed to people.
    Escalated,
}

impl IncidentState {
    /// Whether the incident is over.
    pub fn is_closed(self) -> bool {
        self == IncidentState::Resolved
    }
}

/// One line of an incident's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEntry {
    /// When it happened.
    pub at: Timestamp,
    /// What kind of entry.
    pub kind: EntryKind,
    /// One line for humans.
    pub message: String,
    /// Structured details.
    #[serde(default)]
    pub details: BTreeMap<String, String>,
}

/// Kinds of timeline entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EntryKind {
    /// The incident was opened by a finding.
    Opened,
    /// Another source reported the condition, or its severity rose.
    Finding,
    /// One source reported the condition cleared.
    Cleared,
    /// A source's finding expired without a refresh.
    Expired,
    /// The incident was resolved.
    Resolved,
    /// A runbook run started, finished, or was interrupted; a step was
    /// skipped.
    Runbook,
    /// The guard rails' decision on an action, allowed or refused, with why.
    Decision,
    /// An action was recorded (its idempotency key) and started.
    Action,
    /// An action's result, with its evidence.
    Result,
    /// A verification check and its outcome.
    Verification,
    /// People were asked to take over.
    Escalated,
    /// A person acknowledged the incident.
    Acknowledged,
    /// An approval was asked for, granted, denied or expired.
    Approval,
    /// The incident's time to recovery neared or passed its target.
    Mttr,
    /// People or a channel were told (a page, an update, a follow-up), or
    /// could not be.
    Notified,
}

impl EntryKind {
    /// The snake_case name used in output.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Opened => "opened",
            EntryKind::Finding => "finding",
            EntryKind::Cleared => "cleared",
            EntryKind::Expired => "expired",
            EntryKind::Resolved => "resolved",
            EntryKind::Runbook => "runbook",
            EntryKind::Decision => "decision",
            EntryKind::Action => "action",
            EntryKind::Result => "result",
            EntryKind::Verification => "verification",
            EntryKind::Escalated => "escalated",
            EntryKind::Acknowledged => "acknowledged",
            EntryKind::Approval => "approval",
            EntryKind::Mttr => "mttr",
            EntryKind::Notified => "notified",
        }
    }
}

/// Findings about one condition, grouped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// Its id.
    pub id: IncidentId,
    /// The condition.
    pub key: ConditionKey,
    /// Highest severity seen.
    pub severity: Severity,
    /// Where it stands.
    pub state: IncidentState,
    /// Latest summary.
    pub summary: String,
    /// Opened.
    pub opened_at: Timestamp,
    /// When the condition began, as its first report says (an alert's
    /// `startsAt`, a finding's `first_seen`), when that is before
    /// `opened_at`: what people are told as the start (see [`Incident::started`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Timestamp>,
    /// Last changed.
    pub updated_at: Timestamp,
    /// Resolved, if it is.
    pub resolved_at: Option<Timestamp>,
    /// Findings that joined it.
    pub finding_count: u64,
    /// Sources whose latest finding says the condition holds, with when that
    /// finding expires (`None`: never).
    pub active_sources: BTreeMap<String, Option<Timestamp>>,
    /// The runbook handling it, once one matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runbook: Option<String>,
    /// The runbook's time-to-recovery target, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mttr_target_ms: Option<u64>,
    /// `at_risk` or `breached` once the incident's age crossed those marks
    /// of its target (see `run::mttr_check`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mttr_status: Option<String>,
    /// The handling runbook's priority, once one matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// The handling runbook's tags (`total_outage`, `security`, ...).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// When a person first acknowledged it (time to acknowledge counts to
    /// here), and who.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_at: Option<Timestamp>,
    /// Who acknowledged it first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledged_by: Option<String>,
    /// How far telling people got, once an escalation policy took it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub escalation: Option<crate::escalation::Progress>,
    /// A drill: a person's dry run, or a run they asked for as an exercise.
    /// Kept out of MTTR and availability figures unless a report asks for
    /// drills.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drill: bool,
    /// Per channel, what it returned to continue the conversation about
    /// this incident (a status page incident's id), whoever spoke first:
    /// a runbook's `notify` step or the escalation policy. Every later
    /// message through that channel continues it, so the public page has
    /// one incident per Remedy incident.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub conversations: BTreeMap<String, String>,
}

/// What [`Incident::conversations`] keeps for a channel that was told of
/// the incident but returned nothing to continue with (a webhook): the
/// channel is in the incident's story all the same. A real reference
/// later replaces it.
pub const NO_REFERENCE: &str = "-";

impl Incident {
    /// When the condition began: the first report's own start, or the
    /// opening when no report said.
    pub fn started(&self) -> Timestamp {
        self.started_at.map_or(self.opened_at, |at| at.min(self.opened_at))
    }

    /// The reference `channel` returned when it was first told of this
    /// incident, if it returned one.
    pub fn conversation(&self, channel: &str) -> Option<&str> {
        self.conversations.get(channel).map(String::as_str).filter(|r| !r.trim().is_empty() && *r != NO_REFERENCE)
    }

    /// Keeps `reference` as `channel`'s conversation unless one is kept
    /// already: the first stays, so two writers never split the story.
    /// Whether anything changed.
    pub fn remember(&mut self, channel: &str, reference: &str) -> bool {
        if reference.trim().is_empty() || self.conversation(channel).is_some() {
            return false;
        }
        self.conversations.insert(channel.to_owned(), reference.to_owned());
        true
    }

    /// Hands the incident to `runbook`: its id, time-to-recovery target,
    /// priority and tags are the incident's from now on.
    pub fn adopt(&mut self, runbook: &Runbook) {
        self.runbook = Some(runbook.id().to_owned());
        self.mttr_target_ms = Some(u64::try_from(runbook.mttr_target.as_millis()).unwrap_or(u64::MAX));
        self.priority = Some(runbook.priority);
        self.tags = runbook.metadata.tags.clone();
    }
}

/// The result of applying a finding.
#[allow(clippy::large_enum_variant)] // built once per signal and consumed at once; boxing buys nothing
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// The incident, new or changed, and the entries to append to its timeline
    /// (possibly none, for a plain refresh).
    Changed {
        /// The incident after the finding.
        incident: Incident,
        /// Entries to append.
        entries: Vec<TimelineEntry>,
        /// Whether the incident was opened by this finding.
        opened: bool,
    },
    /// A cleared finding with no open incident: nothing to record.
    Ignored,
}

/// One report about a condition, from a finding or an alert: what the
/// incident logic needs, whatever the source.
#[derive(Debug, Clone, PartialEq)]
pub struct Signal {
    /// Who reports it (an agent id, "alertmanager", "coordinator").
    pub source: String,
    /// The condition.
    pub key: ConditionKey,
    /// How bad.
    pub severity: Severity,
    /// Whether the condition holds (false: it ended).
    pub holds: bool,
    /// One line for humans.
    pub summary: String,
    /// When an unrefreshed report stops counting.
    pub expires_at: Option<Timestamp>,
    /// When the condition began, if the report says (an alert's
    /// `startsAt`, a finding's `first_seen`).
    pub started_at: Option<Timestamp>,
    /// What the timeline shows besides the message.
    pub details: BTreeMap<String, String>,
}

impl Signal {
    /// A finding from `source`.
    pub fn from_finding(source: &str, finding: &Finding) -> Signal {
        let mut details = BTreeMap::new();
        for (k, v) in &finding.evidence {
            details.insert(format!("evidence.{k}"), v.clone());
        }
        Signal {
            source: source.to_owned(),
            key: finding.condition_key(),
            severity: finding.severity,
            holds: finding.state == FindingState::Active,
            summary: finding.summary.clone(),
            expires_at: finding.expires_at,
            started_at: Some(finding.first_seen),
            details,
        }
    }

    /// An Alertmanager alert. Its target is its fingerprint: the same label
    /// set is the same condition.
    pub fn from_alert(alert: &Alert) -> Signal {
        let mut details: BTreeMap<String, String> =
            alert.labels.iter().map(|(k, v)| (format!("label.{k}"), v.clone())).collect();
        details.insert("starts_at".to_owned(), alert.starts_at_raw.clone());
        details.insert("fingerprint".to_owned(), alert.fingerprint.clone());
        if !alert.generator_url.is_empty() {
            details.insert("generator_url".to_owned(), alert.generator_url.clone());
        }
        if !alert.sent_by.is_empty() {
            details.insert("sent_by".to_owned(), alert.sent_by.clone());
        }
        Signal {
            source: ALERTMANAGER_SOURCE.to_owned(),
            key: ConditionKey {
                kind: ConditionKind::Alert(alert.alertname.clone()),
                target: format!("alert/{}", alert.fingerprint),
            },
            severity: alert.severity(),
            holds: alert.status == AlertStatus::Firing,
            summary: alert.summary().to_owned(),
            expires_at: None,
            started_at: Some(alert.starts_at),
            details,
        }
    }
}

/// The source name of alerts on timelines.
pub const ALERTMANAGER_SOURCE: &str = "alertmanager";

/// Applies a finding from `source` to the open incident for its condition.
/// `next_id` is used only if a new incident must be opened.
pub fn apply_finding(
    open: Option<&Incident>,
    source: &str,
    finding: &Finding,
    next_id: IncidentId,
    now: Timestamp,
) -> Outcome {
    apply_signal(open, &Signal::from_finding(source, finding), next_id, now)
}

/// Applies a report about a condition to its open incident (if any).
pub fn apply_signal(open: Option<&Incident>, signal: &Signal, next_id: IncidentId, now: Timestamp) -> Outcome {
    let source = signal.source.as_str();
    let details = |extra: &[(&str, String)]| {
        let mut details = BTreeMap::from([("source".to_owned(), source.to_owned())]);
        for (k, v) in extra {
            details.insert((*k).to_owned(), v.clone());
        }
        for (k, v) in &signal.details {
            details.entry(k.clone()).or_insert_with(|| v.clone());
        }
        details
    };
    let key = &signal.key;
    match (open, signal.holds) {
        (None, false) => Outcome::Ignored,
        (None, true) => {
            let incident = Incident {
                id: next_id,
                key: key.clone(),
                severity: signal.severity,
                state: IncidentState::Triggered,
                summary: signal.summary.clone(),
                opened_at: now,
                // A clock ahead of ours must not start it in the future.
                started_at: signal.started_at.filter(|at| *at < now),
                updated_at: now,
                resolved_at: None,
                finding_count: 1,
                active_sources: BTreeMap::from([(source.to_owned(), signal.expires_at)]),
                runbook: None,
                mttr_target_ms: None,
                mttr_status: None,
                priority: None,
                tags: Vec::new(),
                acknowledged_at: None,
                acknowledged_by: None,
                escalation: None,
                drill: false,
                conversations: BTreeMap::new(),
            };
            let entry = TimelineEntry {
                at: now,
                kind: EntryKind::Opened,
                message: format!("{key} ({}) reported by {source}", signal.severity),
                details: details(&[("severity", signal.severity.to_string())]),
            };
            Outcome::Changed { incident, entries: vec![entry], opened: true }
        }
        (Some(current), true) => {
            let mut incident = current.clone();
            incident.finding_count += 1;
            incident.updated_at = now;
            if !signal.summary.is_empty() {
                incident.summary = signal.summary.clone();
            }
            let new_source = !incident.active_sources.contains_key(source);
            let escalated = signal.severity > incident.severity;
            incident.severity = incident.severity.max(signal.severity);
            incident.active_sources.insert(source.to_owned(), signal.expires_at);
            let entries = if new_source || escalated {
                let why = if escalated { "severity rose to" } else { "also reported at" };
                vec![TimelineEntry {
                    at: now,
                    kind: EntryKind::Finding,
                    message: format!("{key} {why} {} by {source}", signal.severity),
                    details: details(&[("severity", signal.severity.to_string())]),
                }]
            } else {
                Vec::new()
            };
            Outcome::Changed { incident, entries, opened: false }
        }
        (Some(current), false) => {
            let mut incident = current.clone();
            incident.finding_count += 1;
            incident.updated_at = now;
            incident.active_sources.remove(source);
            let mut entries = vec![TimelineEntry {
                at: now,
                kind: EntryKind::Cleared,
                message: format!("{key} cleared by {source}"),
                details: details(&[]),
            }];
            entries.extend(resolve_if_quiet(&mut incident, now));
            Outcome::Changed { incident, entries, opened: false }
        }
    }
}

/// Drops sources whose findings expired by `now` without a refresh; resolves
/// the incident when none is left. Returns `None` when nothing expired.
pub fn expire_sources(open: &Incident, now: Timestamp) -> Option<(Incident, Vec<TimelineEntry>)> {
    let expired: Vec<String> = open
        .active_sources
        .iter()
        .filter(|(_, at)| at.is_some_and(|at| at <= now))
        .map(|(source, _)| source.clone())
        .collect();
    if expired.is_empty() {
        return None;
    }
    let mut incident = open.clone();
    incident.updated_at = now;
    let mut entries = Vec::new();
    for source in expired {
        incident.active_sources.remove(&source);
        entries.push(TimelineEntry {
            at: now,
            kind: EntryKind::Expired,
            message: format!("{} from {source} expired without a refresh", incident.key),
            details: BTreeMap::from([("source".to_owned(), source)]),
        });
    }
    entries.extend(resolve_if_quiet(&mut incident, now));
    Some((incident, entries))
}

/// The earliest instant at which some source of `incident` expires.
pub fn next_expiry(incident: &Incident) -> Option<Timestamp> {
    incident.active_sources.values().flatten().min().copied()
}

fn resolve_if_quiet(incident: &mut Incident, now: Timestamp) -> Option<TimelineEntry> {
    if !incident.active_sources.is_empty() || incident.state.is_closed() {
        return None;
    }
    incident.state = IncidentState::Resolved;
    incident.resolved_at = Some(now);
    Some(TimelineEntry {
        at: now,
        kind: EntryKind::Resolved,
        message: "resolved: the condition cleared on every source".to_owned(),
        details: BTreeMap::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::finding::FindingKind;
    use crate::finding::tests::finding;

    fn ts(ms: i64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    fn opened(f: &Finding, source: &str) -> Incident {
        match apply_finding(None, source, f, IncidentId(1), ts(100)) {
            Outcome::Changed { incident, opened: true, .. } => incident,
            other => panic!("expected an opened incident, got {other:?}"),
        }
    }

    #[test]
    fn the_first_active_finding_opens_an_incident() {
        let f = finding(FindingKind::DiskUsageHigh, "mount/n1:/var", 100);
        let Outcome::Changed { incident, entries, opened } = apply_finding(None, "agent-a", &f, IncidentId(7), ts(100))
        else {
            panic!("expected a change")
        };
        assert!(opened);
        assert_eq!(incident.id.to_string(), "INC-000007");
        assert_eq!(incident.state, IncidentState::Triggered);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].kind, EntryKind::Opened);
    }

    #[test]
    fn a_start_after_the_opening_is_not_believed() {
        let mut f = finding(FindingKind::ProbeFailed, "service/api", 100);
        f.first_seen = ts(500);
        f.last_seen = ts(500);
        let Outcome::Changed { incident, .. } = apply_finding(None, "a", &f, IncidentId(1), ts(200)) else {
            panic!("expected an opened incident")
        };
        assert_eq!(incident.started(), ts(200));
    }

    #[test]
    fn the_first_conversation_with_a_channel_is_the_one_kept() {
        let f = finding(FindingKind::ProbeFailed, "service/api", 100);
        let mut inc = opened(&f, "a");
        assert!(!inc.remember("page", " "), "an empty reference is no conversation");
        assert_eq!(inc.conversation("page"), None);
        assert!(inc.remember("page", "sp-1"));
        assert!(!inc.remember("page", "sp-2"), "a second writer never splits the story");
        assert_eq!(inc.conversation("page"), Some("sp-1"));
    }

    #[test]
    fn a_refresh_from_the_same_source_adds_no_timeline_entry() {
        let f = finding(FindingKind::DiskUsageHigh, "mount/n1:/var", 100);
        let inc = opened(&f, "agent-a");
        let Outcome::Changed { incident, entries, .. } =
            apply_finding(Some(&inc), "agent-a", &f, IncidentId(9), ts(200))
        else {
            panic!("expected a change")
        };
        assert!(entries.is_empty());
        assert_eq!(incident.finding_count, 2);
        assert_eq!(incident.id, IncidentId(1));
    }

    #[test]
    fn resolves_only_when_every_source_has_cleared() {
        let f = finding(FindingKind::ProbeFailed, "service/api", 100);
        let inc = opened(&f, "a");
        let Outcome::Changed { incident: inc, .. } = apply_finding(Some(&inc), "b", &f, IncidentId(9), ts(110)) else {
            panic!()
        };
        let mut cleared = f.clone();
        cleared.state = FindingState::Cleared;
        let Outcome::Changed { incident: inc, entries, .. } =
            apply_finding(Some(&inc), "a", &cleared, IncidentId(9), ts(120))
        else {
            panic!()
        };
        assert_eq!(inc.state, IncidentState::Triggered);
        assert_eq!(entries.len(), 1);
        let Outcome::Changed { incident: inc, entries, .. } =
            apply_finding(Some(&inc), "b", &cleared, IncidentId(9), ts(130))
        else {
            panic!()
        };
        assert_eq!(inc.state, IncidentState::Resolved);
        assert_eq!(inc.resolved_at, Some(ts(130)));
        assert_eq!(entries.iter().map(|e| e.kind).collect::<Vec<_>>(), vec![EntryKind::Cleared, EntryKind::Resolved]);
    }

    #[test]
    fn a_clear_without_an_open_incident_is_ignored() {
        let mut f = finding(FindingKind::ProbeFailed, "service/api", 100);
        f.state = FindingState::Cleared;
        assert_eq!(apply_finding(None, "a", &f, IncidentId(1), ts(1)), Outcome::Ignored);
    }

    #[test]
    fn expiry_resolves_an_incident_whose_sources_went_silent() {
        let mut f = finding(FindingKind::NodeCpuHigh, "node/n1", 100);
        f.expires_at = Some(ts(1_000));
        let inc = opened(&f, "a");
        assert_eq!(next_expiry(&inc), Some(ts(1_000)));
        assert!(expire_sources(&inc, ts(999)).is_none());
        let (inc, entries) = expire_sources(&inc, ts(1_000)).expect("expired");
        assert_eq!(inc.state, IncidentState::Resolved);
        assert_eq!(entries.iter().map(|e| e.kind).collect::<Vec<_>>(), vec![EntryKind::Expired, EntryKind::Resolved]);
    }

    #[test]
    fn severity_rise_is_recorded() {
        let f = finding(FindingKind::NodeMemoryHigh, "node/n1", 100);
        let inc = opened(&f, "a");
        let mut worse = f.clone();
        worse.severity = Severity::Critical;
        let Outcome::Changed { incident, entries, .. } = apply_finding(Some(&inc), "a", &worse, IncidentId(2), ts(200))
        else {
            panic!()
        };
        assert_eq!(incident.severity, Severity::Critical);
        assert_eq!(entries.len(), 1);
        assert!(entries[0].message.contains("severity rose"));
    }

    #[test]
    fn an_alert_opens_an_incident_and_its_resolution_resolves_it() {
        let mut alert = Alert {
            status: AlertStatus::Firing,
            alertname: "P0_SystemDown".into(),
            labels: BTreeMap::from([
                ("alertname".into(), "P0_SystemDown".into()),
                ("severity".into(), "critical".into()),
            ]),
            annotations: BTreeMap::from([("summary".into(), "platform down".into())]),
            starts_at_raw: "2026-11-26T10:00:00Z".into(),
            starts_at: ts(1),
            ends_at: None,
            fingerprint: "f00d".into(),
            generator_url: String::new(),
            sent_by: String::new(),
        };
        let Outcome::Changed { incident, entries, opened: true } =
            apply_signal(None, &Signal::from_alert(&alert), IncidentId(3), ts(10))
        else {
            panic!("expected an opened incident")
        };
        assert_eq!(incident.key.to_string(), "P0_SystemDown on alert/f00d");
        assert_eq!(incident.summary, "platform down");
        assert_eq!(incident.started(), ts(1), "it started when the alert did, not when it reached us");
        assert_eq!(incident.opened_at, ts(10));
        assert_eq!(entries[0].details["label.severity"], "critical");
        alert.status = AlertStatus::Resolved;
        let Outcome::Changed { incident, .. } =
            apply_signal(Some(&incident), &Signal::from_alert(&alert), IncidentId(4), ts(20))
        else {
            panic!("expected a change")
        };
        assert_eq!(incident.state, IncidentState::Resolved);
    }

    #[test]
    fn incident_ids_parse_with_or_without_prefix() {
        assert_eq!("INC-000042".parse::<IncidentId>(), Ok(IncidentId(42)));
        assert_eq!("42".parse::<IncidentId>(), Ok(IncidentId(42)));
        assert_eq!("inc-000042".parse::<IncidentId>(), Ok(IncidentId(42)), "what the cluster's objects are named");
        assert_eq!(" Inc-42 ".parse::<IncidentId>(), Ok(IncidentId(42)));
        assert!("INC-x".parse::<IncidentId>().is_err());
        assert!("INC-".parse::<IncidentId>().is_err());
        assert!("é".parse::<IncidentId>().is_err(), "no panic on a multi-byte first character");
    }
}

/// Why a person's command on an incident was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// The incident is already resolved.
    #[error("{0} is already resolved")]
    Closed(IncidentId),
    /// The incident is already in the state asked for.
    #[error("{0} is already {1}")]
    Already(IncidentId, &'static str),
}

impl IncidentState {
    /// The snake_case name used in output.
    pub fn as_str(self) -> &'static str {
        match self {
            IncidentState::Triggered => "triggered",
            IncidentState::Acknowledged => "acknowledged",
            IncidentState::Mitigating => "mitigating",
            IncidentState::Resolved => "resolved",
            IncidentState::Escalated => "escalated",
        }
    }
}

/// A person acknowledges the incident: they are on it. Automation goes on.
pub fn acknowledge(open: &Incident, by: &str, now: Timestamp) -> Result<(Incident, TimelineEntry), TransitionError> {
    match open.state {
        IncidentState::Resolved => return Err(TransitionError::Closed(open.id)),
        IncidentState::Acknowledged => return Err(TransitionError::Already(open.id, "acknowledged")),
        _ => {}
    }
    let mut incident = open.clone();
    incident.state = IncidentState::Acknowledged;
    incident.updated_at = now;
    if incident.acknowledged_at.is_none() {
        incident.acknowledged_at = Some(now);
        incident.acknowledged_by = Some(by.to_owned());
    }
    // The acknowledgement holds the escalation's climb (until it lapses).
    if let Some(progress) = incident.escalation.as_mut() {
        progress.held_since = Some(now);
        progress.held_by = Some(by.to_owned());
        progress.hold_told = false;
    }
    let entry = TimelineEntry {
        at: now,
        kind: EntryKind::Acknowledged,
        message: format!("acknowledged by {by}"),
        details: BTreeMap::from([("by".to_owned(), by.to_owned())]),
    };
    Ok((incident, entry))
}

/// A person (or a passed verification) declares the incident over, whatever
/// its sources still say.
pub fn resolve(
    open: &Incident,
    by: &str,
    reason: &str,
    now: Timestamp,
) -> Result<(Incident, TimelineEntry), TransitionError> {
    if open.state.is_closed() {
        return Err(TransitionError::Closed(open.id));
    }
    let mut incident = open.clone();
    incident.state = IncidentState::Resolved;
    incident.resolved_at = Some(now);
    incident.updated_at = now;
    let mut message = format!("resolved by {by}");
    if !reason.is_empty() {
        message.push_str(": ");
        message.push_str(reason);
    }
    let entry = TimelineEntry {
        at: now,
        kind: EntryKind::Resolved,
        message,
        details: BTreeMap::from([("by".to_owned(), by.to_owned())]),
    };
    Ok((incident, entry))
}

/// Moves an open incident to `state` as automation progresses
/// (mitigating, escalated). An acknowledged incident stays acknowledged
/// while automation works (a person holds it); escalation always shows.
pub fn progress(open: &Incident, state: IncidentState, now: Timestamp) -> Option<Incident> {
    if open.state.is_closed() || open.state == state {
        return None;
    }
    if open.state == IncidentState::Acknowledged && state == IncidentState::Mitigating {
        return None;
    }
    let mut incident = open.clone();
    incident.state = state;
    incident.updated_at = now;
    Some(incident)
}
