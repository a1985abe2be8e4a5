//! What remedyctl prints: plain structs made from the wire types, so JSON
//! and YAML output are stable and readable.

use std::collections::BTreeMap;
use std::time::Duration;

use remedy_proto::v1 as pb;
use remedy_shared::Timestamp;
use serde::Serialize;

fn time(ms: i64) -> Option<String> {
    (ms != 0).then(|| Timestamp::from_millis(ms).to_string())
}

/// How long before `now_ms` the moment `ms` was, as kubectl's AGE column
/// says it: `45s`, `5m`, `2h`, `3d`; `-` for no moment (0).
pub fn age(ms: i64, now_ms: i64) -> String {
    if ms == 0 {
        return "-".into();
    }
    match (now_ms - ms).max(0) / 1000 {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}

/// Now, Unix milliseconds, for ages: the one wall-clock reading.
pub fn now_ms() -> i64 {
    crate::reports::now_millis()
}

/// A duration the way runbooks write it: `5m`, `1h`, `90s`.
pub fn short_duration(d: Duration) -> String {
    if d.subsec_nanos() != 0 {
        return format!("{}ms", d.as_millis());
    }
    match d.as_secs() {
        s if s % 3600 == 0 && s > 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 && s > 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

fn mttr(ms: u64) -> Option<String> {
    (ms != 0).then(|| short_duration(Duration::from_millis(ms)))
}

fn non_empty(s: String) -> Option<String> {
    (!s.is_empty()).then_some(s)
}

fn severity(v: i32) -> String {
    pb::Severity::try_from(v)
        .map(|s| s.as_str_name().trim_start_matches("SEVERITY_").to_lowercase())
        .unwrap_or_default()
}

fn incident_state(v: i32) -> String {
    pb::IncidentState::try_from(v)
        .map(|s| s.as_str_name().trim_start_matches("INCIDENT_STATE_").to_lowercase())
        .unwrap_or_default()
}

fn finding_state(v: i32) -> String {
    pb::FindingState::try_from(v)
        .map(|s| s.as_str_name().trim_start_matches("FINDING_STATE_").to_lowercase())
        .unwrap_or_default()
}

/// An agent.
#[derive(Debug, Serialize)]
pub struct Agent {
    pub agent_id: String,
    pub node_name: String,
    pub version: String,
    pub connected: bool,
    pub stale: bool,
    pub last_seen: Option<String>,
    pub acked_sequence: u64,
    pub spool_depth: u64,
    pub spool_dropped_total: u64,
    pub cpu_percent: Option<f64>,
    pub memory_percent: Option<f64>,
    pub labels: BTreeMap<String, String>,
}

impl From<pb::Agent> for Agent {
    fn from(a: pb::Agent) -> Self {
        let memory_percent = a.snapshot.as_ref().and_then(|s| {
            (s.memory_total_bytes > 0).then(|| s.memory_used_bytes as f64 * 100.0 / s.memory_total_bytes as f64)
        });
        Agent {
            cpu_percent: a.snapshot.as_ref().map(|s| s.cpu_percent),
            memory_percent,
            agent_id: a.agent_id,
            node_name: a.node_name,
            version: a.version,
            connected: a.connected,
            stale: a.stale,
            last_seen: time(a.last_seen_ms),
            acked_sequence: a.acked_sequence,
            spool_depth: a.spool_depth,
            spool_dropped_total: a.spool_dropped_total,
            labels: a.labels.into_iter().collect(),
        }
    }
}

/// A stored finding.
#[derive(Debug, Serialize)]
pub struct Finding {
    pub agent_id: String,
    pub sequence: u64,
    pub node_name: String,
    pub kind: String,
    pub severity: String,
    pub state: String,
    pub target: String,
    pub summary: String,
    pub incident_id: String,
    pub received_at: Option<String>,
    /// `received_at`, Unix milliseconds, for the AGE column.
    #[serde(skip)]
    pub received_ms: i64,
    pub labels: BTreeMap<String, String>,
    pub evidence: BTreeMap<String, String>,
}

impl From<pb::StoredFinding> for Finding {
    fn from(f: pb::StoredFinding) -> Self {
        let body = f.finding.unwrap_or_default();
        Finding {
            agent_id: f.agent_id,
            sequence: f.sequence,
            node_name: f.node_name,
            kind: body.kind,
            severity: severity(body.severity),
            state: finding_state(body.state),
            target: body.target,
            summary: body.summary,
            incident_id: f.incident_id,
            received_at: time(f.received_at_ms),
            received_ms: f.received_at_ms,
            labels: body.labels.into_iter().collect(),
            evidence: body.evidence.into_iter().collect(),
        }
    }
}

/// An incident in a listing.
#[derive(Debug, Serialize)]
pub struct Incident {
    pub id: String,
    pub state: String,
    pub severity: String,
    pub kind: String,
    pub target: String,
    pub summary: String,
    pub opened_at: Option<String>,
    /// `opened_at`, Unix milliseconds, for the AGE column.
    #[serde(skip)]
    pub opened_ms: i64,
    pub updated_at: Option<String>,
    pub resolved_at: Option<String>,
    pub finding_count: u64,
    /// The runbook handling it, when one matched or a person ran one.
    pub runbook_id: Option<String>,
    /// The runbook's time-to-recovery target (`5m`), when it has one.
    pub mttr_target: Option<String>,
    /// The runbook's priority, when one matched.
    pub priority: Option<String>,
    /// When and by whom it was first acknowledged.
    pub acknowledged_at: Option<String>,
    /// Who first acknowledged it.
    pub acknowledged_by: Option<String>,
    /// The escalation policy telling people, and how many of its levels
    /// were told in the current pass.
    pub escalation: Option<String>,
}

impl From<pb::Incident> for Incident {
    fn from(i: pb::Incident) -> Self {
        Incident {
            id: i.id,
            state: incident_state(i.state),
            severity: severity(i.severity),
            kind: i.kind,
            target: i.target,
            summary: i.summary,
            opened_at: time(i.opened_at_ms),
            opened_ms: i.opened_at_ms,
            updated_at: time(i.updated_at_ms),
            resolved_at: time(i.resolved_at_ms),
            finding_count: i.finding_count,
            runbook_id: non_empty(i.runbook_id),
            mttr_target: mttr(i.mttr_target_ms),
            priority: non_empty(i.priority),
            acknowledged_at: time(i.acknowledged_at_ms),
            acknowledged_by: non_empty(i.acknowledged_by),
            escalation: non_empty(i.escalation_policy)
                .map(|p| format!("{p}, {} level(s) told", i.escalation_levels_told)),
        }
    }
}

/// A timeline entry.
#[derive(Debug, Serialize)]
pub struct Entry {
    pub at: Option<String>,
    pub kind: String,
    pub message: String,
    pub details: BTreeMap<String, String>,
}

/// An incident with its timeline.
#[derive(Debug, Serialize)]
pub struct IncidentDetail {
    #[serde(flatten)]
    pub incident: Incident,
    pub timeline: Vec<Entry>,
}

impl From<pb::TimelineEntry> for Entry {
    fn from(e: pb::TimelineEntry) -> Self {
        Entry { at: time(e.at_ms), kind: e.kind, message: e.message, details: e.details.into_iter().collect() }
    }
}

impl From<pb::Incident> for IncidentDetail {
    fn from(mut i: pb::Incident) -> Self {
        let timeline = std::mem::take(&mut i.timeline).into_iter().map(Entry::from).collect();
        IncidentDetail { incident: Incident::from(i), timeline }
    }
}

/// A runbook as the coordinator loaded it.
#[derive(Debug, Serialize)]
pub struct Runbook {
    pub id: String,
    pub title: String,
    pub priority: String,
    pub mttr_target: Option<String>,
    pub mode: String,
    pub manual: bool,
    pub steps: Vec<String>,
    /// Steps and checks that run as rehearsals here.
    pub dry_run_steps: Vec<String>,
    /// Why each of them rehearses, by step or check id.
    pub rehearsal_reasons: BTreeMap<String, String>,
    pub params: BTreeMap<String, String>,
    pub source: String,
    /// The YAML definition (`runbooks show` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub definition: Option<String>,
}

impl From<pb::Runbook> for Runbook {
    fn from(r: pb::Runbook) -> Self {
        Runbook {
            id: r.id,
            title: r.title,
            priority: r.priority,
            mttr_target: mttr(r.mttr_target_ms),
            mode: r.mode,
            manual: r.manual,
            steps: r.steps,
            dry_run_steps: r.dry_run_steps,
            rehearsal_reasons: r.rehearsal_reasons.into_iter().collect(),
            params: r.params.into_iter().collect(),
            source: r.source,
            definition: non_empty(r.definition),
        }
    }
}

/// A request for a person to approve one execution of one step.
#[derive(Debug, Serialize)]
pub struct Approval {
    /// `INC-000042/step#1`: what `approvals approve` and `deny` accept.
    pub key: String,
    pub incident_id: String,
    pub step_id: String,
    pub attempt: u32,
    pub runbook_id: String,
    pub action: String,
    pub reason: String,
    pub status: String,
    pub requested_at: Option<String>,
    pub expires_at: Option<String>,
    pub answered_by: Option<String>,
    pub answer_reason: Option<String>,
}

impl From<pb::Approval> for Approval {
    fn from(a: pb::Approval) -> Self {
        Approval {
            key: format!("{}/{}#{}", a.incident_id, a.step_id, a.attempt),
            incident_id: a.incident_id,
            step_id: a.step_id,
            attempt: a.attempt,
            runbook_id: a.runbook_id,
            action: a.action,
            reason: a.reason,
            status: a.status,
            requested_at: time(a.requested_at_ms),
            expires_at: time(a.expires_at_ms),
            answered_by: non_empty(a.answered_by),
            answer_reason: non_empty(a.answer_reason),
        }
    }
}

/// Automation's switches: the global pause and the open breakers.
#[derive(Debug, Serialize)]
pub struct Automation {
    pub paused: bool,
    pub paused_by: Option<String>,
    pub pause_reason: Option<String>,
    pub paused_since: Option<String>,
    /// Scope (`global`, `runbook/<id>`) -> why it opened.
    pub open_breakers: BTreeMap<String, String>,
}

impl From<pb::Automation> for Automation {
    fn from(a: pb::Automation) -> Self {
        Automation {
            paused: a.paused,
            paused_by: non_empty(a.paused_by),
            pause_reason: non_empty(a.pause_reason),
            paused_since: time(a.paused_since_ms),
            open_breakers: a.open_breakers.into_iter().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        let now = 1_700_000_000_000;
        assert_eq!(age(0, now), "-", "no moment");
        assert_eq!(age(now - 45_000, now), "45s");
        assert_eq!(age(now - 5 * 60_000, now), "5m");
        assert_eq!(age(now - 2 * 3_600_000, now), "2h");
        assert_eq!(age(now - 3 * 86_400_000, now), "3d");
        assert_eq!(age(now + 5_000, now), "0s", "a clock ahead is not a negative age");
    }
}
