//! Conversions between the wire types and the domain, in one place.
//!
//! Decoding is where untrusted input meets the domain, so every conversion
//! from the wire validates and names what is wrong.

use std::collections::BTreeMap;

use remedy_shared::Timestamp;
use remedy_shared::audit::{AuditEntry, AuditKind};
use remedy_shared::finding::{Finding, FindingKind, FindingState, InvalidFinding, Severity, UnknownKind};
use remedy_shared::guard::{Approval, ApprovalStatus, GuardState};
use remedy_shared::incident::{EntryKind, Incident, IncidentState, TimelineEntry};
use remedy_shared::runbook::Runbook;
use remedy_shared::signals::{DiskUsage, ProcessUsage, ResourceSnapshot};

use crate::v1 as pb;

/// A wire message that does not make a valid domain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The kind is not in the catalogue.
    #[error(transparent)]
    UnknownKind(#[from] UnknownKind),
    /// A required enum was left unspecified.
    #[error("finding {0} is unspecified")]
    Unspecified(&'static str),
    /// The finding breaks a domain invariant.
    #[error(transparent)]
    Invalid(#[from] InvalidFinding),
}

/// Severity to the wire.
pub fn severity_to_proto(s: Severity) -> pb::Severity {
    match s {
        Severity::Info => pb::Severity::Info,
        Severity::Warning => pb::Severity::Warning,
        Severity::Critical => pb::Severity::Critical,
    }
}

/// Severity from the wire; `None` when unspecified or unknown.
pub fn severity_from_proto(value: i32) -> Option<Severity> {
    match pb::Severity::try_from(value).ok()? {
        pb::Severity::Info => Some(Severity::Info),
        pb::Severity::Warning => Some(Severity::Warning),
        pb::Severity::Critical => Some(Severity::Critical),
        pb::Severity::Unspecified => None,
    }
}

fn millis_opt(ms: i64) -> Option<Timestamp> {
    (ms != 0).then(|| Timestamp::from_millis(ms))
}

/// A finding from the wire, validated and bounded ([`Finding::bound`]): a
/// long summary or value is cut saying so, anything else over a limit is
/// refused.
pub fn finding_from_proto(f: pb::Finding) -> Result<Finding, DecodeError> {
    let kind: FindingKind = f.kind.parse()?;
    let severity = severity_from_proto(f.severity).ok_or(DecodeError::Unspecified("severity"))?;
    let state = match pb::FindingState::try_from(f.state) {
        Ok(pb::FindingState::Active) => FindingState::Active,
        Ok(pb::FindingState::Cleared) => FindingState::Cleared,
        _ => return Err(DecodeError::Unspecified("state")),
    };
    let mut finding = Finding {
        kind,
        severity,
        state,
        target: f.target,
        labels: f.labels.into_iter().collect(),
        evidence: f.evidence.into_iter().collect(),
        summary: f.summary,
        first_seen: Timestamp::from_millis(f.first_seen_ms),
        last_seen: Timestamp::from_millis(f.last_seen_ms),
        expires_at: millis_opt(f.expires_at_ms),
    };
    finding.bound()?;
    Ok(finding)
}

/// A finding to the wire.
pub fn finding_to_proto(f: &Finding) -> pb::Finding {
    pb::Finding {
        kind: f.kind.as_str().to_owned(),
        severity: severity_to_proto(f.severity) as i32,
        state: match f.state {
            FindingState::Active => pb::FindingState::Active,
            FindingState::Cleared => pb::FindingState::Cleared,
        } as i32,
        target: f.target.clone(),
        labels: f.labels.clone().into_iter().collect(),
        evidence: f.evidence.clone().into_iter().collect(),
        summary: f.summary.clone(),
        first_seen_ms: f.first_seen.as_millis(),
        last_seen_ms: f.last_seen.as_millis(),
        expires_at_ms: f.expires_at.map_or(0, Timestamp::as_millis),
    }
}

/// A snapshot to the wire.
pub fn snapshot_to_proto(s: &ResourceSnapshot) -> pb::ResourceSnapshot {
    pb::ResourceSnapshot {
        taken_at_ms: s.taken_at.as_millis(),
        cpu_percent: s.cpu_percent,
        memory_used_bytes: s.memory_used_bytes,
        memory_total_bytes: s.memory_total_bytes,
        load1: s.load[0],
        load5: s.load[1],
        load15: s.load[2],
        disks: s
            .disks
            .iter()
            .map(|d| pb::DiskUsage {
                mount_point: d.mount_point.clone(),
                total_bytes: d.total_bytes,
                available_bytes: d.available_bytes,
            })
            .collect(),
        top_processes: s
            .top_processes
            .iter()
            .map(|p| pb::ProcessUsage {
                pid: p.pid,
                name: p.name.clone(),
                cpu_percent: p.cpu_percent,
                memory_bytes: p.memory_bytes,
            })
            .collect(),
    }
}

/// A snapshot from the wire. Nothing in it can break an invariant.
pub fn snapshot_from_proto(s: pb::ResourceSnapshot) -> ResourceSnapshot {
    ResourceSnapshot {
        taken_at: Timestamp::from_millis(s.taken_at_ms),
        cpu_percent: s.cpu_percent,
        memory_used_bytes: s.memory_used_bytes,
        memory_total_bytes: s.memory_total_bytes,
        load: [s.load1, s.load5, s.load15],
        disks: s
            .disks
            .into_iter()
            .map(|d| DiskUsage {
                mount_point: d.mount_point,
                total_bytes: d.total_bytes,
                available_bytes: d.available_bytes,
            })
            .collect(),
        top_processes: s
            .top_processes
            .into_iter()
            .map(|p| ProcessUsage {
                pid: p.pid,
                name: p.name,
                cpu_percent: p.cpu_percent,
                memory_bytes: p.memory_bytes,
            })
            .collect(),
    }
}

/// An incident state to the wire.
pub fn incident_state_to_proto(s: IncidentState) -> pb::IncidentState {
    match s {
        IncidentState::Triggered => pb::IncidentState::Triggered,
        IncidentState::Acknowledged => pb::IncidentState::Acknowledged,
        IncidentState::Mitigating => pb::IncidentState::Mitigating,
        IncidentState::Resolved => pb::IncidentState::Resolved,
        IncidentState::Escalated => pb::IncidentState::Escalated,
    }
}

/// An incident to the wire, with the given timeline (empty in listings).
pub fn incident_to_proto(i: &Incident, timeline: &[TimelineEntry]) -> pb::Incident {
    pb::Incident {
        id: i.id.to_string(),
        kind: i.key.kind.to_string(),
        target: i.key.target.clone(),
        severity: severity_to_proto(i.severity) as i32,
        state: incident_state_to_proto(i.state) as i32,
        summary: i.summary.clone(),
        opened_at_ms: i.opened_at.as_millis(),
        updated_at_ms: i.updated_at.as_millis(),
        resolved_at_ms: i.resolved_at.map_or(0, Timestamp::as_millis),
        finding_count: i.finding_count,
        timeline: timeline.iter().map(entry_to_proto).collect(),
        runbook_id: i.runbook.clone().unwrap_or_default(),
        mttr_target_ms: i.mttr_target_ms.unwrap_or(0),
        priority: i.priority.map(|p| p.as_str().to_owned()).unwrap_or_default(),
        tags: i.tags.clone(),
        acknowledged_at_ms: i.acknowledged_at.map_or(0, Timestamp::as_millis),
        acknowledged_by: i.acknowledged_by.clone().unwrap_or_default(),
        escalation_policy: i.escalation.as_ref().map(|p| p.policy.clone()).unwrap_or_default(),
        escalation_levels_told: i.escalation.as_ref().map_or(0, |p| p.told),
        // The run is a record of its own; GetIncident adds its status.
        run_status: pb::RunStatus::Unspecified as i32,
        run_outcome: None,
    }
}

fn entry_to_proto(e: &TimelineEntry) -> pb::TimelineEntry {
    pb::TimelineEntry {
        at_ms: e.at.as_millis(),
        kind: EntryKind::as_str(e.kind).to_owned(),
        message: e.message.clone(),
        details: e.details.clone().into_iter().collect(),
    }
}

/// A runbook to the wire: `rehearsals` names the steps and checks that
/// rehearse here, each with why; the YAML definition only when asked for.
pub fn runbook_to_proto(r: &Runbook, rehearsals: Vec<(String, String)>, with_definition: bool) -> pb::Runbook {
    let dry_run_steps = rehearsals.iter().map(|(id, _)| id.clone()).collect();
    pb::Runbook {
        rehearsal_reasons: rehearsals.into_iter().collect(),
        id: r.id().to_owned(),
        title: r.metadata.title.clone(),
        priority: r.priority.to_string(),
        mttr_target_ms: u64::try_from(r.mttr_target.as_millis()).unwrap_or(u64::MAX),
        mode: r.guard_rails.mode.as_str().to_owned(),
        steps: r.steps.iter().map(|s| s.id.clone()).collect(),
        dry_run_steps,
        manual: r.triggers.manual,
        params: r.shown_params().into_iter().collect(),
        source: r.source.clone(),
        definition: if with_definition { r.to_yaml() } else { String::new() },
    }
}

/// An approval request to the wire, its status as of `now` (a pending one
/// past its expiry is `expired`).
pub fn approval_to_proto(a: &Approval, now: Timestamp) -> pb::Approval {
    let (status, by, why) = match &a.status {
        ApprovalStatus::Pending if now >= a.expires_at => ("expired", String::new(), String::new()),
        ApprovalStatus::Pending => ("pending", String::new(), String::new()),
        ApprovalStatus::Granted { by, .. } => ("granted", by.clone(), String::new()),
        ApprovalStatus::Denied { by, reason, .. } => ("denied", by.clone(), reason.clone()),
    };
    pb::Approval {
        incident_id: a.key.incident_id.to_string(),
        step_id: a.key.step_id.clone(),
        attempt: a.key.attempt,
        runbook_id: a.runbook_id.clone(),
        action: a.action.clone(),
        reason: a.reason.to_string(),
        status: status.to_owned(),
        requested_at_ms: a.requested_at.as_millis(),
        expires_at_ms: a.expires_at.as_millis(),
        answered_by: by,
        answer_reason: why,
    }
}

/// Whether automation is paused, and the open breakers, to the wire.
pub fn automation_to_proto(state: &GuardState) -> pb::Automation {
    let pause = state.paused();
    pb::Automation {
        paused: pause.is_some(),
        paused_by: pause.map(|p| p.by.clone()).unwrap_or_default(),
        pause_reason: pause.map(|p| p.reason.clone()).unwrap_or_default(),
        paused_since_ms: pause.map_or(0, |p| p.since.as_millis()),
        open_breakers: state.open_breakers().map(|(scope, b)| (scope.to_string(), b.reason.clone())).collect(),
    }
}

/// An audit entry to the wire.
pub fn audit_to_proto(e: &AuditEntry) -> pb::AuditEntry {
    pb::AuditEntry {
        seq: e.seq,
        at_ms: e.at.as_millis(),
        actor: e.actor.clone(),
        kind: match e.kind {
            AuditKind::AdminCall => "admin_call",
            AuditKind::Action => "action",
        }
        .to_owned(),
        operation: e.operation.clone(),
        target: e.target.clone(),
        arguments: e.arguments.clone().into_iter().collect(),
        outcome: e.outcome.clone(),
    }
}

/// Labels or evidence from the wire, sorted.
pub fn sorted(map: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    map.into_iter().collect()
}

/// Where a run stands, on the wire.
pub fn run_status_to_proto(status: remedy_shared::run::RunStatus) -> pb::RunStatus {
    use remedy_shared::run::RunStatus;
    match status {
        RunStatus::Pending => pb::RunStatus::Pending,
        RunStatus::Running => pb::RunStatus::Running,
        RunStatus::Verifying => pb::RunStatus::Verifying,
        RunStatus::Succeeded => pb::RunStatus::Succeeded,
        RunStatus::Escalated => pb::RunStatus::Escalated,
        RunStatus::Cancelled => pb::RunStatus::Cancelled,
    }
}

/// What a finished run did, on the wire.
pub fn run_outcome_to_proto(outcome: &remedy_shared::run::RunOutcome) -> pb::RunOutcome {
    let c = outcome.steps;
    pb::RunOutcome {
        verdict: outcome.verdict.as_str().to_owned(),
        verification: outcome.verification.as_str().to_owned(),
        steps_succeeded: c.succeeded,
        steps_observed: c.observed,
        steps_rehearsed: c.rehearsed,
        steps_refused: c.refused,
        steps_failed: c.failed,
        steps_skipped: c.skipped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire() -> pb::Finding {
        pb::Finding {
            kind: "disk_usage_high".into(),
            severity: pb::Severity::Critical as i32,
            state: pb::FindingState::Active as i32,
            target: "mount/n1:/var".into(),
            first_seen_ms: 10,
            last_seen_ms: 20,
            expires_at_ms: 30,
            ..Default::default()
        }
    }

    #[test]
    fn a_finding_round_trips() {
        let f = finding_from_proto(wire()).unwrap();
        assert_eq!(f.expires_at, Some(Timestamp::from_millis(30)));
        assert_eq!(finding_to_proto(&f), wire());
    }

    #[test]
    fn unknown_kinds_and_unspecified_enums_are_refused_by_name() {
        let mut w = wire();
        w.kind = "disk_usage_hgh".into();
        assert_eq!(finding_from_proto(w).unwrap_err().to_string(), "unknown finding kind `disk_usage_hgh`");
        let mut w = wire();
        w.severity = 0;
        assert_eq!(finding_from_proto(w).unwrap_err(), DecodeError::Unspecified("severity"));
        let mut w = wire();
        w.state = 9;
        assert_eq!(finding_from_proto(w).unwrap_err(), DecodeError::Unspecified("state"));
        let mut w = wire();
        w.target.clear();
        assert_eq!(finding_from_proto(w).unwrap_err(), DecodeError::Invalid(InvalidFinding::EmptyTarget));
    }
}
