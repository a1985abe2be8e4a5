//! How a run begins: the runbook a committed signal starts, or a person's
//! request to run one now, turned into a pending [`RunRecord`], the incident
//! adopting its runbook and what the timeline says of it.
//!
//! The writer records all of it in the transaction that records the signal:
//! a trigger committed is a run that will happen.

use std::collections::BTreeMap;

use crate::alert::Alert;
use crate::audit::{REDACTED, SecretValues};
use crate::escalation::Progress;
use crate::finding::{ConditionKey, ConditionKind, Finding, Severity};
use crate::guard;
use crate::incident::{self, EntryKind, Incident, IncidentId, Outcome, Signal, TimelineEntry};
use crate::runbook::{
    AlertContext, FindingContext, IncidentContext, Priority, Runbook, TemplateContext, UndeclaredParam,
};
use crate::time::Timestamp;

use super::{Catalog, RunRecord};

/// What made a signal, for finding the runbook it starts.
#[derive(Debug, Clone, Copy)]
pub enum Cause<'a> {
    /// An Alertmanager alert.
    Alert(&'a Alert),
    /// A finding, and who sent it.
    Finding {
        /// The sender (an agent id, or the coordinator).
        source: &'a str,
        /// The finding.
        finding: &'a Finding,
    },
    /// A runbook's own condition, by runbook id (an aggregated trigger's sum).
    Runbook(&'a str),
}

/// A person's request to run a runbook now.
#[derive(Debug, Clone)]
pub struct ManualRun {
    /// The runbook.
    pub runbook_id: String,
    /// Param overrides.
    pub params: BTreeMap<String, String>,
    /// Rehearse only.
    pub dry_run: bool,
    /// An exercise: the incident is a drill (a dry run always is).
    pub drill: bool,
    /// Who asked.
    pub by: String,
}

/// A run that begins, with its incident: what one transaction records.
#[derive(Debug, Clone, PartialEq)]
pub struct Started {
    /// The incident, having adopted the runbook.
    pub incident: Incident,
    /// Entries this start adds to the incident's timeline, in order.
    pub entries: Vec<TimelineEntry>,
    /// The pending run.
    pub run: RunRecord,
}

/// The run `signal` starts for `incident`, the incident it joined or
/// opened, when the signal holds, the incident is open and the catalog has
/// a runbook for `cause`. The caller checks that the incident has no run
/// yet. A runbook that pages on open starts its escalation policy's climb
/// unless one is under way.
pub fn triggered_run(
    catalog: &Catalog,
    incident: &Incident,
    signal: &Signal,
    cause: Cause<'_>,
    now: Timestamp,
) -> Option<Started> {
    if !signal.holds || incident.state.is_closed() {
        return None;
    }
    let runbook = match cause {
        Cause::Alert(alert) => catalog.for_alert(alert),
        Cause::Finding { finding, .. } => catalog.for_finding(finding, now),
        Cause::Runbook(id) => catalog.get(id),
    }?;
    let (alert, finding, started_by) = match cause {
        Cause::Alert(a) => (alert_context(a), FindingContext::default(), format!("alert {}", a.alertname)),
        Cause::Finding { source, finding } => (
            AlertContext::default(),
            FindingContext::from_finding(finding, source),
            format!("finding {} from {source}", finding.kind),
        ),
        Cause::Runbook(_) => (AlertContext::default(), FindingContext::default(), signal.summary.clone()),
    };
    let mode = guard::Mode::Live;
    let (params, secret_values) = split_params(runbook, runbook.resolve_params(&BTreeMap::new()).unwrap_or_default());
    let context = run_context(incident, runbook, mode, alert, finding, params);
    let run =
        RunRecord { secret_values, ..RunRecord::new(incident.id, runbook, mode, started_by.clone(), context, now) };
    let mut incident = incident.clone();
    incident.adopt(runbook);
    if runbook.escalation.page_on_open && incident.escalation.is_none() {
        incident.escalation = Some(Progress::start(&runbook.escalation.policy, "opened", now));
    }
    let entry = TimelineEntry {
        at: now,
        kind: EntryKind::Runbook,
        message: format!("runbook {} ({}) matched {started_by}", runbook.id(), runbook.metadata.title),
        details: BTreeMap::from([
            ("runbook".to_owned(), runbook.id().to_owned()),
            ("priority".to_owned(), runbook.priority.to_string()),
            ("mttr_target".to_owned(), crate::config::format_duration(runbook.mttr_target)),
        ]),
    };
    Some(Started { incident, entries: vec![entry], run })
}

/// Why a person's run of a runbook was refused. Nothing was recorded and no
/// incident number was spent; the request is wrong, not the coordinator.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManualRunRefused {
    /// The catalog has no runbook of that id.
    #[error("no runbook `{0}` in the catalog")]
    UnknownRunbook(String),
    /// The runbook does not allow manual runs (`triggers.manual` is false).
    #[error("runbook {0} does not allow manual runs (triggers.manual is false)")]
    NotManual(String),
    /// A param the runbook does not declare.
    #[error(transparent)]
    UndeclaredParam(#[from] UndeclaredParam),
    /// The signal of the run opened no incident: a fault of this code, not
    /// of the request.
    #[error("the manual run opened no incident")]
    NoIncident,
}

/// The incident `id` that a person's run of a runbook opens, and its run.
/// Refuses a runbook the catalog does not have, one that does not allow
/// manual runs, and params it does not declare.
pub fn manual_run(
    catalog: &Catalog,
    request: &ManualRun,
    id: IncidentId,
    now: Timestamp,
) -> Result<Started, ManualRunRefused> {
    let runbook =
        catalog.get(&request.runbook_id).ok_or_else(|| ManualRunRefused::UnknownRunbook(request.runbook_id.clone()))?;
    if !runbook.triggers.manual {
        return Err(ManualRunRefused::NotManual(runbook.id().to_owned()));
    }
    let (params, secret_values) = split_params(runbook, runbook.resolve_params(&request.params)?);
    let signal = Signal {
        source: format!("remedyctl:{}", request.by),
        key: ConditionKey { kind: ConditionKind::Runbook(runbook.id().to_owned()), target: format!("manual/{id}") },
        severity: manual_severity(runbook.priority),
        holds: true,
        summary: format!("manual run of {} by {}", runbook.id(), request.by),
        expires_at: None,
        started_at: None,
        details: request
            .params
            .iter()
            .map(|(k, v)| {
                let shown = if runbook.is_secret_param(k) { REDACTED.to_owned() } else { v.clone() };
                (format!("param.{k}"), shown)
            })
            .collect(),
    };
    let Outcome::Changed { mut incident, mut entries, .. } = incident::apply_signal(None, &signal, id, now) else {
        return Err(ManualRunRefused::NoIncident);
    };
    let mode = if request.dry_run { guard::Mode::DryRun } else { guard::Mode::Live };
    let context = run_context(&incident, runbook, mode, AlertContext::default(), FindingContext::default(), params);
    let run = RunRecord {
        requested_by: Some(request.by.clone()),
        secret_params: request.params.keys().filter(|k| runbook.is_secret_param(k)).cloned().collect(),
        secret_values,
        ..RunRecord::new(id, runbook, mode, signal.summary.clone(), context, now)
    };
    incident.adopt(runbook);
    // A rehearsal, or a run asked for as an exercise, measures nothing
    // about recovering from real incidents.
    incident.drill = request.dry_run || request.drill;
    entries.push(TimelineEntry {
        at: now,
        kind: EntryKind::Runbook,
        message: format!("runbook {} run by {} ({})", runbook.id(), request.by, mode),
        details: BTreeMap::from([
            ("runbook".to_owned(), runbook.id().to_owned()),
            ("mode".to_owned(), mode.to_string()),
        ]),
    });
    Ok(Started { incident, entries, run })
}

/// The severity of the incident a person's run opens, from its runbook's
/// priority, as an on-call person reads them: P0, P1 and security runbooks
/// are for impaired service, so `critical`; P2 and P3 `warning`. Nothing
/// else reports on a manual run's condition, so the priority is the only
/// word on how bad it is.
pub fn manual_severity(priority: Priority) -> Severity {
    match priority {
        Priority::P0 | Priority::P1 | Priority::Security => Severity::Critical,
        Priority::P2 | Priority::P3 => Severity::Warning,
    }
}

/// A run's params split into what its record keeps and the secret values
/// it holds in memory only.
fn split_params(runbook: &Runbook, params: BTreeMap<String, String>) -> (BTreeMap<String, String>, SecretValues) {
    let mut kept = BTreeMap::new();
    let mut secret = SecretValues::default();
    for (name, value) in params {
        if runbook.is_secret_param(&name) {
            secret.insert(name, value);
        } else {
            kept.insert(name, value);
        }
    }
    (kept, secret)
}

/// What a run's templates read of the alert that started it.
fn alert_context(alert: &Alert) -> AlertContext {
    AlertContext {
        name: alert.alertname.clone(),
        status: alert.status.as_str().to_owned(),
        starts_at: alert.starts_at_raw.clone(),
        fingerprint: alert.fingerprint.clone(),
        labels: alert.labels.clone(),
        annotations: alert.annotations.clone(),
    }
}

/// What a run's templates read, as it starts.
fn run_context(
    incident: &Incident,
    runbook: &Runbook,
    mode: guard::Mode,
    alert: AlertContext,
    finding: FindingContext,
    params: BTreeMap<String, String>,
) -> TemplateContext {
    TemplateContext {
        incident: IncidentContext {
            id: incident.id.to_string(),
            started_at: incident.started().to_string(),
            priority: runbook.priority.to_string(),
            runbook: runbook.id().to_owned(),
            title: runbook.metadata.title.clone(),
            summary: incident.summary.clone(),
            mode: mode.to_string(),
        },
        alert,
        finding,
        params,
        steps: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alert::AlertStatus;
    use crate::incident::IncidentState;
    use crate::run::RunStatus;
    use crate::runbook::parse_runbook;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_millis(1_700_000_000_000 + s * 1000)
    }

    fn runbook(id: &str, alert: &str, manual: bool, page_on_open: bool) -> Runbook {
        let text = format!(
            "apiVersion: remedy.dev/v1\nkind: Runbook\nmetadata: {{id: {id}, title: Site down}}\npriority: P1\n\
             mttr_target: 5m\nparams: {{namespace: shop}}\ntriggers:\n  alerts: [{{name: {alert}}}]\n  \
             manual: {manual}\nsteps: [{{id: tell, notify: {{webhook: oncall, message: hi}}}}]\n\
             escalation: {{policy: p0-chain, page_on_open: {page_on_open}}}\n"
        );
        parse_runbook("t.yaml", &text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn catalog() -> Catalog {
        Catalog::new(vec![runbook("A", "Down", true, false), runbook("B", "Paged", false, true)])
    }

    fn alert(name: &str) -> Alert {
        Alert {
            status: AlertStatus::Firing,
            alertname: name.into(),
            labels: BTreeMap::from([("alertname".to_owned(), name.to_owned())]),
            annotations: BTreeMap::new(),
            starts_at_raw: "2026-11-26T10:00:00Z".into(),
            starts_at: at(0),
            ends_at: None,
            fingerprint: "f1".into(),
            generator_url: String::new(),
            sent_by: String::new(),
        }
    }

    /// The incident `signal` opens, as the writer would stage it.
    fn opened(signal: &Signal) -> Incident {
        match incident::apply_signal(None, signal, IncidentId(7), at(1)) {
            Outcome::Changed { incident, .. } => incident,
            Outcome::Ignored => panic!("an incident opens"),
        }
    }

    #[test]
    fn a_firing_alert_starts_its_runbook_with_the_alert_in_the_run_context() {
        let down = alert("Down");
        let signal = Signal::from_alert(&down);
        let incident = opened(&signal);
        let started = triggered_run(&catalog(), &incident, &signal, Cause::Alert(&down), at(2)).expect("a run");
        assert_eq!(started.run.incident_id, IncidentId(7));
        assert_eq!((started.run.runbook_id.as_str(), started.run.status), ("A", RunStatus::Pending));
        assert_eq!(started.run.mode, guard::Mode::Live);
        assert_eq!(started.run.started_by, "alert Down");
        assert_eq!(started.run.created_at, at(2));
        assert_eq!(started.run.context.alert.name, "Down");
        assert_eq!(started.run.context.alert.fingerprint, "f1");
        assert_eq!(started.run.context.incident.id, "INC-000007");
        assert_eq!(started.run.context.params["namespace"], "shop", "the runbook's defaults");
        assert_eq!(started.incident.runbook.as_deref(), Some("A"), "the incident adopts its runbook");
        assert_eq!(started.incident.mttr_target_ms, Some(300_000));
        assert!(started.incident.escalation.is_none(), "A does not page on open");
        let [entry] = started.entries.as_slice() else { panic!("one entry: {:?}", started.entries) };
        assert_eq!(entry.kind, EntryKind::Runbook);
        assert_eq!(entry.message, "runbook A (Site down) matched alert Down");
        assert_eq!(entry.details["mttr_target"], "5m");
    }

    #[test]
    fn a_runbook_that_pages_on_open_starts_the_climb_once() {
        let paged = alert("Paged");
        let signal = Signal::from_alert(&paged);
        let incident = opened(&signal);
        let started = triggered_run(&catalog(), &incident, &signal, Cause::Alert(&paged), at(2)).expect("a run");
        let progress = started.incident.escalation.expect("the climb started");
        assert_eq!(
            (progress.policy.as_str(), progress.reason.as_str(), progress.started_at),
            ("p0-chain", "opened", at(2))
        );

        let mut climbing = incident.clone();
        climbing.escalation = Some(Progress::start("earlier", "by hand", at(1)));
        let started = triggered_run(&catalog(), &climbing, &signal, Cause::Alert(&paged), at(2)).expect("a run");
        assert_eq!(started.incident.escalation.map(|p| p.policy), Some("earlier".into()), "one under way stays");
    }

    #[test]
    fn nothing_starts_for_an_ended_signal_a_closed_incident_or_an_unknown_cause() {
        let down = alert("Down");
        let signal = Signal::from_alert(&down);
        let incident = opened(&signal);
        let ended = Signal { holds: false, ..signal.clone() };
        assert!(triggered_run(&catalog(), &incident, &ended, Cause::Alert(&down), at(2)).is_none());
        let closed = Incident { state: IncidentState::Resolved, ..incident.clone() };
        assert!(triggered_run(&catalog(), &closed, &signal, Cause::Alert(&down), at(2)).is_none());
        let other = alert("Unknown");
        assert!(triggered_run(&catalog(), &incident, &signal, Cause::Alert(&other), at(2)).is_none());
        assert!(triggered_run(&catalog(), &incident, &signal, Cause::Runbook("Z"), at(2)).is_none());
    }

    #[test]
    fn a_runbook_condition_starts_its_own_runbook_by_id() {
        let signal = Signal {
            source: "coordinator".into(),
            key: ConditionKey { kind: ConditionKind::Runbook("A".into()), target: "sum/database".into() },
            severity: Severity::Critical,
            holds: true,
            summary: "high_error_rate database summed over 3 nodes is 12 (> 10)".into(),
            expires_at: None,
            started_at: None,
            details: BTreeMap::new(),
        };
        let incident = opened(&signal);
        let started = triggered_run(&catalog(), &incident, &signal, Cause::Runbook("A"), at(2)).expect("a run");
        assert_eq!(started.run.started_by, signal.summary, "named by the signal");
        assert_eq!(started.run.context.alert.name, "", "no alert");
    }

    #[test]
    fn a_manual_run_opens_its_own_incident_and_names_who_asked() {
        let request = ManualRun {
            runbook_id: "A".into(),
            params: BTreeMap::from([("namespace".to_owned(), "billing".to_owned())]),
            dry_run: true,
            drill: false,
            by: "user:ada".into(),
        };
        let started = manual_run(&catalog(), &request, IncidentId(9), at(3)).expect("a run");
        assert_eq!(started.incident.id, IncidentId(9));
        assert_eq!(started.incident.key.target, "manual/INC-000009");
        assert_eq!(started.incident.runbook.as_deref(), Some("A"));
        assert_eq!(started.run.requested_by.as_deref(), Some("user:ada"), "the two-person rule reads it");
        assert_eq!(started.run.mode, guard::Mode::DryRun);
        assert_eq!(started.run.started_by, "manual run of A by user:ada");
        assert_eq!(started.run.context.params["namespace"], "billing", "the override wins");
        assert_eq!(started.run.context.incident.mode, "dry_run");
        let kinds: Vec<EntryKind> = started.entries.iter().map(|e| e.kind).collect();
        assert_eq!(kinds.last(), Some(&EntryKind::Runbook));
        assert_eq!(started.entries.last().map(|e| e.message.as_str()), Some("runbook A run by user:ada (dry_run)"));
        assert_eq!(started.entries[0].details["param.namespace"], "billing");
        assert_eq!(started.incident.severity, Severity::Critical, "a P1 runbook's run is critical");
    }

    #[test]
    fn a_manual_run_takes_its_severity_from_the_runbook_priority() {
        assert_eq!(manual_severity(Priority::P0), Severity::Critical);
        assert_eq!(manual_severity(Priority::P1), Severity::Critical);
        assert_eq!(manual_severity(Priority::Security), Severity::Critical);
        assert_eq!(manual_severity(Priority::P2), Severity::Warning);
        assert_eq!(manual_severity(Priority::P3), Severity::Warning);
    }

    #[test]
    fn a_manual_run_finds_its_runbook_in_any_case_and_records_the_catalog_id() {
        let request = ManualRun {
            runbook_id: "a".into(),
            params: BTreeMap::new(),
            dry_run: true,
            drill: false,
            by: "user:ada".into(),
        };
        let started = manual_run(&catalog(), &request, IncidentId(9), at(3)).expect("a run");
        assert_eq!(started.incident.runbook.as_deref(), Some("A"));
        assert_eq!(started.run.runbook_id, "A");
    }

    #[test]
    fn a_manual_run_is_refused_for_an_unknown_runbook_a_closed_one_or_undeclared_params() {
        let request = |id: &str, param: &str| ManualRun {
            runbook_id: id.into(),
            params: BTreeMap::from([(param.to_owned(), "x".to_owned())]),
            dry_run: false,
            drill: false,
            by: "user:ada".into(),
        };
        let err = manual_run(&catalog(), &request("Z", "namespace"), IncidentId(9), at(3)).expect_err("unknown");
        assert_eq!(err.to_string(), "no runbook `Z` in the catalog");
        assert_eq!(err, ManualRunRefused::UnknownRunbook("Z".into()));
        let err = manual_run(&catalog(), &request("B", "namespace"), IncidentId(9), at(3)).expect_err("not manual");
        assert!(err.to_string().contains("does not allow manual runs"), "{err}");
        assert_eq!(err, ManualRunRefused::NotManual("B".into()));
        let err = manual_run(&catalog(), &request("A", "namespce"), IncidentId(9), at(3)).expect_err("a typo");
        assert!(err.to_string().contains("namespce"), "{err}");
        assert!(matches!(&err, ManualRunRefused::UndeclaredParam(p) if p.name == "namespce"), "{err:?}");
    }
}
