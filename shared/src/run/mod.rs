//! Runbook runs: which runbook an incident gets, what a run remembers
//! across restarts, what an action touches, and the guard-rail policy the
//! catalog implies.
//!
//! A run is created in the same transaction as the signal that triggered
//! it, so a trigger is never forgotten; each step's idempotency key is
//! recorded before the step runs, so a step is never run twice. How a run
//! begins (a trigger matched, or a person's request) is `start.rs`; the
//! sums of aggregated triggers across nodes are `sums.rs`.

mod outcome;
mod start;
mod sums;

pub use outcome::{RunOutcome, StepCounts, StepState, Verdict, Verification};
pub use start::{Cause, ManualRun, ManualRunRefused, Started, manual_run, triggered_run};
pub use sums::{SumKey, TriggerSum, sum_signal, trigger_sums};

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::alert::{Alert, AlertStatus};
use crate::audit::SecretValues;
use crate::finding::{Finding, FindingState, Severity};
use crate::guard::{self, GuardPolicy, LabelMatch, RailOverrides, TargetRef};
use crate::incident::{EntryKind, Incident, IncidentId, TimelineEntry};
use crate::runbook::{self, Action, AgentTarget, FindingTrigger, Runbook};
use crate::time::Timestamp;

/// The runbooks a coordinator runs, most urgent first.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    runbooks: Vec<Runbook>,
}

impl Catalog {
    /// A catalog of `runbooks`. When several match one signal, the most
    /// urgent wins, then the lowest id, so the choice never depends on file
    /// order.
    pub fn new(mut runbooks: Vec<Runbook>) -> Self {
        runbooks.sort_by(|a, b| a.priority.cmp(&b.priority).then_with(|| a.id().cmp(b.id())));
        Catalog { runbooks }
    }

    /// Every runbook, most urgent first.
    pub fn runbooks(&self) -> &[Runbook] {
        &self.runbooks
    }

    /// A runbook by id, in any case (`p0-001` finds `P0-001`); an exact
    /// match wins over one that differs only in case.
    pub fn get(&self, id: &str) -> Option<&Runbook> {
        self.runbooks
            .iter()
            .find(|r| r.id() == id)
            .or_else(|| self.runbooks.iter().find(|r| r.id().eq_ignore_ascii_case(id)))
    }

    /// The id of the runbook `id` most likely meant, for a near miss (a
    /// character or two off, in any case): `P0-01` suggests `P0-001`.
    pub fn suggestion(&self, id: &str) -> Option<&str> {
        let wanted = id.to_ascii_lowercase();
        let most = (wanted.chars().count() / 3).clamp(1, 2);
        self.runbooks
            .iter()
            .map(|r| (edit_distance(&wanted, &r.id().to_ascii_lowercase()), r.id()))
            .filter(|(d, _)| *d <= most)
            .min()
            .map(|(_, id)| id)
    }

    /// Why `id` names no runbook, with a suggestion for a near miss.
    pub fn not_found(&self, id: &str) -> String {
        match self.suggestion(id) {
            Some(near) => format!("no runbook `{id}` in the catalog; did you mean {near}?"),
            None => format!("no runbook `{id}` in the catalog"),
        }
    }

    /// The runbook a firing alert starts, if any.
    pub fn for_alert(&self, alert: &Alert) -> Option<&Runbook> {
        if alert.status != AlertStatus::Firing {
            return None;
        }
        self.runbooks.iter().find(|r| r.triggers.matching_alert(&alert.alertname, &alert.labels).is_some())
    }

    /// The runbook a finding, judged alone, starts at `now`, if any
    /// (aggregated triggers are judged on their sums instead).
    pub fn for_finding(&self, finding: &Finding, now: Timestamp) -> Option<&Runbook> {
        self.runbooks.iter().find(|r| r.triggers.findings.iter().any(|t| t.fires(finding, now)))
    }

    /// Every trigger that sums a value across nodes, with its runbook id and
    /// its index among the runbook's finding triggers.
    pub fn aggregated_triggers(&self) -> impl Iterator<Item = (&str, usize, &FindingTrigger)> {
        self.runbooks.iter().flat_map(|r| {
            r.triggers
                .findings
                .iter()
                .enumerate()
                .filter(|(_, t)| t.aggregate == runbook::Aggregate::SumAcrossNodes)
                .map(move |(i, t)| (r.id(), i, t))
        })
    }

    /// `base` with each runbook's own guard-rail settings added. A runbook
    /// can only tighten the global rails: its protected targets and approval
    /// kinds add to the global ones, its budgets count on top of the global
    /// budgets, its cooldown and repeat cap apply to its own actions.
    pub fn policy(&self, base: &GuardPolicy) -> GuardPolicy {
        let mut policy = base.clone();
        for r in &self.runbooks {
            let rails = &r.guard_rails;
            let overrides = RailOverrides {
                cooldown: Some(rails.cooldown),
                repeat_max: Some(rails.max_attempts),
                repeat_window: None,
                protected_namespaces: rails.protected.namespaces.iter().cloned().collect(),
                protected_labels: rails
                    .protected
                    .labels
                    .iter()
                    .map(|(k, v)| LabelMatch { key: k.clone(), value: Some(v.clone()) })
                    .collect(),
                approval_kinds: rails.requires_approval.iter().map(|k| k.as_str().to_owned()).collect(),
                approval_wait: Some(rails.approval_ttl),
            };
            policy.runbooks.insert(r.id().to_owned(), overrides);
            for budget in &rails.budgets {
                let kinds: Vec<Option<String>> = match &budget.actions {
                    runbook::BudgetScope::All => vec![None],
                    runbook::BudgetScope::Kinds(kinds) => kinds.iter().map(|k| Some(k.as_str().to_owned())).collect(),
                };
                for action_kind in kinds {
                    policy.budgets.push(guard::Budget {
                        scope: guard::BudgetScope::Runbook(r.id().to_owned()),
                        action_kind,
                        window: budget.window,
                        max_actions: budget.max_actions.map(u64::from),
                        max_targets: None,
                        // Validation keeps 0 < p <= 100; a fraction rounds
                        // down, which only tightens.
                        max_percent: budget.max_percent.map(|p| p.clamp(0.0, 100.0) as u8),
                    });
                }
            }
        }
        policy
    }
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Recorded with its trigger; no step has started.
    Pending,
    /// Working through its steps.
    Running,
    /// Checking that remediation worked.
    Verifying,
    /// Over without escalating: every step was considered and verification
    /// did not fail. What it really did is its [`RunOutcome`]: a run that
    /// only rehearsed ends here too, with the verdict `rehearsed_only`.
    Succeeded,
    /// Handed to people.
    Escalated,
    /// Stopped because the incident was resolved (by its signals or by a
    /// person) before the run finished.
    Cancelled,
}

impl RunStatus {
    /// Whether the run is over.
    pub fn is_finished(self) -> bool {
        matches!(self, RunStatus::Succeeded | RunStatus::Escalated | RunStatus::Cancelled)
    }

    /// The snake_case name used in output.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Pending => "pending",
            RunStatus::Running => "running",
            RunStatus::Verifying => "verifying",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Escalated => "escalated",
            RunStatus::Cancelled => "cancelled",
        }
    }
}

/// One step execution, recorded before it starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// `INC-000042/restart_api#1`: incident, step, attempt.
    pub key: String,
    /// The step.
    pub step_id: String,
    /// When it was recorded (before the action started).
    pub recorded_at: Timestamp,
    /// How it ended (`succeeded`, `failed`, `dry_run`...); `None` while it
    /// runs, or if the coordinator stopped before it ended.
    pub outcome: Option<String>,
}

/// What a run remembers, persisted after every step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The incident it serves.
    pub incident_id: IncidentId,
    /// The runbook.
    pub runbook_id: String,
    /// Live, dry-run or shadow, for the whole run (a step whose actuator is
    /// not available runs dry whatever this says).
    pub mode: guard::Mode,
    /// Who or what started it, for the timeline.
    pub started_by: String,
    /// The person who asked for a manual run (their identity); `None` for
    /// runs an alert or a finding started. The two-person rule reads it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_by: Option<String>,
    /// What templates and conditions read: incident, alert, finding, params,
    /// and the results of the steps so far. Secret params are not here
    /// (see `secret_values`).
    pub context: runbook::TemplateContext,
    /// The secret params a person gave this run: their values are held in
    /// `secret_values` only, so a run resumed after a restart knows which
    /// values it lost.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub secret_params: BTreeSet<String>,
    /// The values of the run's secret params (given, or the runbook's
    /// defaults): in memory only, never serialized.
    #[serde(skip)]
    pub secret_values: SecretValues,
    /// The next step to consider, by index.
    pub next_step: usize,
    /// The attempt (1 for the first pass; `after_failure: retry` adds one).
    pub attempt: u32,
    /// Where it stands.
    pub status: RunStatus,
    /// Created.
    pub created_at: Timestamp,
    /// Last changed.
    pub updated_at: Timestamp,
    /// Every step execution, in order.
    pub intents: Vec<Intent>,
    /// Steps of this attempt that failed or were refused and were passed
    /// over (`on_failure: next`): verification decides whether the run
    /// still worked; without verification they make it escalate.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<String>,
    /// How each step of this attempt ended, by step id (verification
    /// checks are not steps).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub steps: BTreeMap<String, StepState>,
    /// What the run did, once it is over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<RunOutcome>,
}

impl RunRecord {
    /// A pending run of `runbook` for `incident_id`.
    pub fn new(
        incident_id: IncidentId,
        runbook: &Runbook,
        mode: guard::Mode,
        started_by: String,
        context: runbook::TemplateContext,
        now: Timestamp,
    ) -> Self {
        RunRecord {
            incident_id,
            runbook_id: runbook.id().to_owned(),
            mode,
            started_by,
            requested_by: None,
            context,
            secret_params: BTreeSet::new(),
            secret_values: SecretValues::default(),
            next_step: 0,
            attempt: 1,
            status: RunStatus::Pending,
            created_at: now,
            updated_at: now,
            intents: Vec::new(),
            failures: Vec::new(),
            steps: BTreeMap::new(),
            outcome: None,
        }
    }

    /// What `runbook`'s templates and conditions read in this run: the
    /// recorded context with the secret params' values put back: the
    /// runbook's secret defaults, overridden by the values the run holds.
    pub fn template_context(&self, runbook: &Runbook) -> runbook::TemplateContext {
        let mut context = self.context.clone();
        for (name, param) in &runbook.params {
            if let Some(default) = param.default.as_ref().filter(|_| runbook.is_secret_param(name)) {
                context.params.insert(name.clone(), default.clone());
            }
        }
        for (name, value) in self.secret_values.iter() {
            context.params.insert(name.to_owned(), value.to_owned());
        }
        context
    }

    /// The secret params a person gave this run whose values it no longer
    /// holds (the coordinator restarted since), among those `action` or
    /// `when` read. Such a step cannot run: its value would be missing or
    /// a default the person overrode.
    pub fn lost_secrets(&self, action: &Action, when: Option<&runbook::Condition>) -> Vec<String> {
        let lost: Vec<&String> = self.secret_params.iter().filter(|n| self.secret_values.get(n).is_none()).collect();
        if lost.is_empty() {
            return Vec::new();
        }
        let read = runbook::Renderer::new().params_read(action);
        let in_when = |name: &str| {
            when.is_some_and(|w| {
                w.paths()
                    .iter()
                    .any(|p| p.0.first().is_some_and(|r| r == "params") && p.0.get(1).is_none_or(|n| n == name))
            })
        };
        lost.into_iter()
            .filter(|name| read.as_ref().is_none_or(|r| r.contains(*name)) || in_when(name))
            .cloned()
            .collect()
    }

    /// The idempotency key of `step_id` in the current attempt.
    pub fn key_for(&self, step_id: &str) -> String {
        format!("{}/{step_id}#{}", self.incident_id, self.attempt)
    }

    /// The execution recorded under `key`, if any.
    pub fn intent(&self, key: &str) -> Option<&Intent> {
        self.intents.iter().find(|i| i.key == key)
    }

    /// An execution that was recorded but never reported its end: the
    /// coordinator stopped while it ran. Its outcome is unknown; it must
    /// not run again.
    pub fn interrupted(&self) -> Option<&Intent> {
        self.intents.iter().rev().find(|i| i.outcome.is_none())
    }

    /// Records that `step_id` is about to run; false if it already was.
    pub fn record_intent(&mut self, step_id: &str, now: Timestamp) -> bool {
        let key = self.key_for(step_id);
        if self.intent(&key).is_some() {
            return false;
        }
        self.intents.push(Intent { key, step_id: step_id.to_owned(), recorded_at: now, outcome: None });
        self.updated_at = now;
        true
    }

    /// Records how the execution under `key` ended.
    pub fn record_outcome(&mut self, key: &str, outcome: &str, now: Timestamp) {
        if let Some(i) = self.intents.iter_mut().find(|i| i.key == key) {
            i.outcome = Some(outcome.to_owned());
        }
        self.updated_at = now;
    }
}

/// The mode one step runs in: the run's, made hypothetical when the
/// runbook says dry-run or shadow, or when no actuator performs the step's
/// kind here yet (it then rehearses through the same rails).
pub fn step_mode(run: guard::Mode, runbook: guard::Mode, actuator_available: bool) -> guard::Mode {
    match (run, runbook) {
        (guard::Mode::Shadow, _) | (_, guard::Mode::Shadow) => guard::Mode::Shadow,
        (guard::Mode::DryRun, _) | (_, guard::Mode::DryRun) => guard::Mode::DryRun,
        _ if !actuator_available => guard::Mode::DryRun,
        _ => guard::Mode::Live,
    }
}

/// What a rendered action touches, as the runbook names it, for the rails
/// when no actuator looks at the world first. Selectors that only the
/// cluster can resolve are named by the selector itself (kind
/// `PodSelector`), never widened; an empty selector is an empty set, which
/// the rails refuse. Agents are named by the agent actuator, which knows
/// who is connected; without it an agent action names nobody.
pub fn targets(action: &Action) -> Vec<TargetRef> {
    let ns = |kind: &str, namespace: &str, name: &str| TargetRef::namespaced(kind, namespace, name);
    let selector = |namespace: &str, selector: &str| {
        if selector.trim().is_empty() { Vec::new() } else { vec![ns("PodSelector", namespace, selector)] }
    };
    match action {
        Action::Http(a) => vec![TargetRef::new("url", a.url.clone())],
        Action::ProbeHttp(a) => vec![TargetRef::new("url", a.url.clone())],
        Action::Notify(a) => vec![TargetRef::new("channel", a.channel.clone())],
        Action::Agent(_) | Action::AgentSnapshot(_) | Action::LogCleanup(_) => Vec::new(),
        Action::Scale(a) => vec![ns(workload(a.kind), &a.namespace, &a.name)],
        Action::RolloutRestart(a) => vec![ns(workload(a.kind), &a.namespace, &a.name)],
        Action::PatchHpa(a) => vec![ns("HorizontalPodAutoscaler", &a.namespace, &a.name)],
        Action::DeletePods(a) => selector(&a.namespace, &a.selector),
        Action::EvictPods(a) => selector(&a.namespace, &a.selector),
        Action::GcNudge(a) => selector(&a.namespace, &a.selector),
        Action::PatchConfigmap(a) => vec![ns("ConfigMap", &a.namespace, &a.name)],
        Action::PgFailover(a) => vec![TargetRef::new("database", a.database.clone())],
        Action::PgMaintenance(a) => vec![TargetRef::new("database", a.database.clone())],
        Action::PgSelect1(a) => vec![TargetRef::new("database", a.database.clone())],
        Action::RedisFlush(a) => vec![TargetRef::new("cache", a.instance.clone())],
        Action::RedisDeleteKeys(a) => vec![TargetRef::new("cache", a.instance.clone())],
        Action::CacheWarm(a) => vec![TargetRef::new("cache", a.instance.clone())],
        Action::RedisPing(a) => vec![TargetRef::new("cache", a.instance.clone())],
        Action::BlockIp(a) => vec![TargetRef::new("ip", a.ip.clone())],
        Action::CircuitBreaker(a) => a.services.iter().map(|s| TargetRef::new("service", s.clone())).collect(),
        Action::ListPods(a) => vec![TargetRef::new("Namespace", a.namespace.clone())],
        Action::ListServices(a) => vec![TargetRef::new("Namespace", a.namespace.clone())],
    }
}

fn workload(kind: runbook::WorkloadKind) -> &'static str {
    match kind {
        runbook::WorkloadKind::Deployment => "Deployment",
        runbook::WorkloadKind::StatefulSet => "StatefulSet",
    }
}

/// The agents an action addresses, when it addresses agents.
pub fn agent_target(action: &Action) -> Option<&AgentTarget> {
    match action {
        Action::Agent(a) => Some(&a.agents),
        Action::AgentSnapshot(a) => Some(&a.agents),
        Action::LogCleanup(a) => Some(&a.agents),
        _ => None,
    }
}

/// The capacity change of a scale action, when the current replicas are
/// known. Without them the rails refuse the scale (`missing capacity`),
/// which is the safe answer.
pub fn capacity(action: &Action, current: Option<u32>) -> Option<guard::CapacityChange> {
    match (action, current) {
        (Action::Scale(s), Some(current)) => {
            Some(guard::CapacityChange { current, desired: s.replicas, floor: Some(s.floor), ceiling: s.ceiling })
        }
        _ => None,
    }
}

/// Where an incident stands against its time-to-recovery target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MttrStatus {
    /// Comfortably within.
    Within,
    /// Past the warning fraction: people should know recovery is late.
    AtRisk,
    /// Past the target.
    Breached,
}

/// The fraction of the target after which an incident is at risk.
pub const MTTR_AT_RISK: f64 = 0.8;

/// Judges an open incident's age against its target.
pub fn mttr_status(opened_at: Timestamp, target: Duration, now: Timestamp) -> MttrStatus {
    let age = now.since(opened_at);
    if age >= target {
        MttrStatus::Breached
    } else if age.as_secs_f64() >= target.as_secs_f64() * MTTR_AT_RISK {
        MttrStatus::AtRisk
    } else {
        MttrStatus::Within
    }
}

/// What an incident's time to recovery calls for at `now`, when it changed:
/// the incident with its new MTTR status, the timeline entry, and the
/// coordinator's finding about it (active while the incident is late and
/// open, cleared once it closes).
pub fn mttr_check(incident: &Incident, now: Timestamp) -> Option<(Incident, TimelineEntry, Finding)> {
    let target = Duration::from_millis(incident.mttr_target_ms?);
    let status = if incident.state.is_closed() {
        None
    } else {
        match mttr_status(incident.opened_at, target, now) {
            MttrStatus::Within => None,
            MttrStatus::AtRisk => Some("at_risk"),
            MttrStatus::Breached => Some("breached"),
        }
    };
    if status == incident.mttr_status.as_deref() || (status.is_none() && !incident.state.is_closed()) {
        return None;
    }
    let age = crate::config::format_duration(Duration::from_secs(now.since(incident.opened_at).as_secs()));
    let target_text = crate::config::format_duration(target);
    let (severity, state, summary) = match status {
        Some("breached") => (
            Severity::Critical,
            FindingState::Active,
            format!("{} open {age}, past its time-to-recovery target of {target_text}", incident.id),
        ),
        Some(_) => (
            Severity::Warning,
            FindingState::Active,
            format!("{} open {age}, near its time-to-recovery target of {target_text}", incident.id),
        ),
        None => (
            Severity::Info,
            FindingState::Cleared,
            format!("{} closed after {age} (target {target_text})", incident.id),
        ),
    };
    let mut changed = incident.clone();
    changed.mttr_status = status.map(str::to_owned);
    let entry = TimelineEntry {
        at: now,
        kind: EntryKind::Mttr,
        message: summary.clone(),
        details: BTreeMap::from([
            ("mttr_target".to_owned(), target_text),
            ("age".to_owned(), age),
            ("status".to_owned(), status.unwrap_or("closed").to_owned()),
        ]),
    };
    let finding = Finding {
        kind: crate::finding::FindingKind::MttrAtRisk,
        severity,
        state,
        target: format!("incident/{}", incident.id),
        labels: BTreeMap::from([
            ("incident".to_owned(), incident.id.to_string()),
            ("runbook".to_owned(), incident.runbook.clone().unwrap_or_default()),
        ]),
        evidence: BTreeMap::from([("target_ms".to_owned(), target.as_millis().to_string())]),
        summary,
        first_seen: now,
        last_seen: now,
        expires_at: None,
    };
    Some((changed, entry, finding))
}

/// Params for a run: the runbook's defaults overridden by the caller's,
/// refusing names the runbook does not declare.
pub fn params_for(
    runbook: &Runbook,
    overrides: &BTreeMap<String, String>,
) -> Result<BTreeMap<String, String>, runbook::UndeclaredParam> {
    runbook.resolve_params(overrides)
}

/// Levenshtein distance between two strings, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitute = previous[j] + usize::from(ca != *cb);
            current.push(substitute.min(previous[j + 1] + 1).min(current[j] + 1));
        }
        previous = current;
    }
    previous[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incident::Outcome;
    use crate::runbook::parse_runbook;

    #[test]
    fn edit_distance_counts_characters_changed() {
        assert_eq!(edit_distance("p0-01", "p0-001"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
        assert_eq!(edit_distance("p1-002", "p0-001"), 2);
    }

    fn runbook(id: &str, priority: &str, alert: &str) -> Runbook {
        let text = format!(
            "apiVersion: remedy.dev/v1\nkind: Runbook\nmetadata: {{id: {id}, title: t}}\npriority: {priority}\n\
             mttr_target: 5m\ntriggers:\n  alerts: [{{name: {alert}}}]\nsteps:\n  - id: tell\n    \
             notify: {{webhook: oncall, message: hi}}\nescalation: {{policy: p}}\n\
             guard_rails:\n  cooldown: 1m\n  max_attempts: 2\n  budgets:\n    - actions: {{kinds: [rollout_restart]}}\n      window: 1h\n      max_actions: 2\n"
        );
        match parse_runbook("t.yaml", &text) {
            Ok(r) => r,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn runbook_ids_are_found_in_any_case_and_near_misses_are_named() {
        let catalog = Catalog::new(vec![runbook("P0-001", "P0", "Down"), runbook("P1-001", "P1", "Slow")]);
        assert_eq!(catalog.get("p0-001").map(Runbook::id), Some("P0-001"));
        assert_eq!(catalog.get("P0-001").map(Runbook::id), Some("P0-001"));
        assert!(catalog.get("P0-01").is_none());
        assert_eq!(catalog.not_found("P0-01"), "no runbook `P0-01` in the catalog; did you mean P0-001?");
        assert_eq!(catalog.suggestion("p1-01"), Some("P1-001"));
        assert_eq!(catalog.not_found("NOPE"), "no runbook `NOPE` in the catalog", "nothing near: no guess");
        let exact = Catalog::new(vec![runbook("a", "P0", "Down"), runbook("A", "P1", "Down")]);
        assert_eq!(exact.get("A").map(|r| r.priority), Some(runbook::Priority::P1), "an exact match wins");
    }

    #[test]
    fn the_most_urgent_matching_runbook_wins_whatever_the_file_order() {
        let catalog = Catalog::new(vec![runbook("B", "P2", "Down"), runbook("A", "P0", "Down")]);
        let alert = Alert {
            status: AlertStatus::Firing,
            alertname: "Down".into(),
            labels: BTreeMap::from([("alertname".to_owned(), "Down".to_owned())]),
            annotations: BTreeMap::new(),
            starts_at_raw: "2026-11-26T10:00:00Z".into(),
            starts_at: Timestamp::EPOCH,
            ends_at: None,
            fingerprint: "f".into(),
            generator_url: String::new(),
            sent_by: String::new(),
        };
        assert_eq!(catalog.for_alert(&alert).map(Runbook::id), Some("A"));
        let mut resolved = alert.clone();
        resolved.status = AlertStatus::Resolved;
        assert!(catalog.for_alert(&resolved).is_none(), "a resolution starts nothing");
    }

    #[test]
    fn runbook_rails_tighten_the_global_policy() {
        let catalog = Catalog::new(vec![runbook("A", "P0", "Down")]);
        let policy = catalog.policy(&GuardPolicy::default());
        assert_eq!(policy.cooldown_for("A", "rollout_restart"), Duration::from_secs(60));
        assert_eq!(policy.repeat_for("A", "rollout_restart").max, 2);
        let ours: Vec<_> = policy.budgets.iter().filter(|b| b.applies_to("A", "rollout_restart")).collect();
        assert!(ours.iter().any(|b| b.max_actions == Some(2) && b.action_kind.as_deref() == Some("rollout_restart")));
        // Global budgets are still there.
        assert!(policy.budgets.len() > ours.len() - 1);
    }

    #[test]
    fn a_step_without_its_actuator_rehearses() {
        use guard::Mode::*;
        assert_eq!(step_mode(Live, Live, true), Live);
        assert_eq!(step_mode(Live, Live, false), DryRun);
        assert_eq!(step_mode(DryRun, Live, true), DryRun);
        assert_eq!(step_mode(Live, Shadow, false), Shadow);
    }

    #[test]
    fn intents_are_recorded_once_and_an_unfinished_one_is_found_after_a_restart() {
        let r = runbook("A", "P0", "Down");
        let mut run =
            RunRecord::new(IncidentId(7), &r, guard::Mode::Live, "t".into(), Default::default(), Timestamp::EPOCH);
        assert!(run.record_intent("tell", Timestamp::EPOCH));
        assert!(!run.record_intent("tell", Timestamp::EPOCH), "the same step and attempt is never recorded twice");
        assert_eq!(run.interrupted().map(|i| i.key.as_str()), Some("INC-000007/tell#1"));
        run.record_outcome("INC-000007/tell#1", "succeeded", Timestamp::EPOCH);
        assert!(run.interrupted().is_none());
        run.attempt = 2;
        assert!(run.record_intent("tell", Timestamp::EPOCH), "a retry is a new attempt");
    }

    #[test]
    fn an_empty_selector_is_an_empty_target_set_never_everything() {
        let action = Action::DeletePods(runbook::DeletePods {
            namespace: "shop".into(),
            selector: " ".into(),
            phase: None,
            max_count: 3,
        });
        assert!(targets(&action).is_empty());
        let snapshot = Action::AgentSnapshot(runbook::AgentSnapshot {
            agents: AgentTarget::All,
            include: vec![],
            selector: None,
            window: None,
            combine: runbook::Combine::Sum,
            timeout: Duration::from_secs(1),
        });
        assert!(targets(&snapshot).is_empty(), "agents are named by the agent actuator, never assumed");
    }

    #[test]
    fn an_incident_late_on_its_target_raises_a_finding_once_and_clears_it_when_closed() {
        let at = |s: i64| Timestamp::from_millis(s * 1000);
        let Outcome::Changed { mut incident, .. } = crate::incident::apply_signal(
            None,
            &crate::incident::Signal {
                source: "s".into(),
                key: crate::finding::ConditionKey {
                    kind: crate::finding::ConditionKind::Alert("A".into()),
                    target: "t".into(),
                },
                severity: Severity::Critical,
                holds: true,
                summary: String::new(),
                expires_at: None,
                started_at: None,
                details: BTreeMap::new(),
            },
            IncidentId(3),
            at(0),
        ) else {
            panic!("an incident opens")
        };
        incident.mttr_target_ms = Some(100_000);
        assert!(mttr_check(&incident, at(50)).is_none(), "within the target: nothing");
        let (late, entry, finding) = mttr_check(&incident, at(85)).expect("at risk");
        assert_eq!(late.mttr_status.as_deref(), Some("at_risk"));
        assert_eq!((finding.kind, finding.state), (crate::finding::FindingKind::MttrAtRisk, FindingState::Active));
        assert_eq!(entry.kind, EntryKind::Mttr);
        assert!(mttr_check(&late, at(90)).is_none(), "said once");
        let (breached, _, finding) = mttr_check(&late, at(100)).expect("breached");
        assert_eq!(finding.severity, Severity::Critical);
        let (closed, _, _) = crate::incident::resolve(&breached, "ops", "", at(120)).map(|(i, _)| (i, (), ())).unwrap();
        let (_, _, finding) = mttr_check(&closed, at(120)).expect("cleared when closed");
        assert_eq!(finding.state, FindingState::Cleared);
    }

    #[test]
    fn mttr_is_at_risk_past_four_fifths_of_the_target() {
        let target = Duration::from_secs(100);
        let at = |s: i64| Timestamp::from_millis(s * 1000);
        assert_eq!(mttr_status(at(0), target, at(79)), MttrStatus::Within);
        assert_eq!(mttr_status(at(0), target, at(80)), MttrStatus::AtRisk);
        assert_eq!(mttr_status(at(0), target, at(100)), MttrStatus::Breached);
    }
}
