//! Checks a parsed runbook against itself and against the actions the
//! coordinator offers: every reference resolves, every template renders,
//! every action's parameters make sense. All problems are reported at once.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use minijinja::Value;
use serde::{Deserialize, Serialize};

use super::action::{Action, ActionClass, ActionKind, USER_PLACEHOLDER};
use super::condition::Condition;
use super::locate::SourceMap;
use super::template::{IncidentContext, Renderer, is_template, sample_context, unresolved_prefix};
use super::trigger::Aggregate;
use super::{InvalidRunbook, Runbook, RunbookError};
use crate::catalog::CatalogKind;

/// Whether the coordinator can run an action kind yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Availability {
    /// An actuator is there: the action runs (guard rails permitting).
    Now,
    /// The kind is known but its actuator arrives later: the step runs in
    /// dry-run until then.
    Later,
}

/// The action kinds the coordinator offers, each available now or later.
/// A kind missing from the catalog is unknown to this coordinator and
/// refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActionCatalog {
    kinds: BTreeMap<ActionKind, Availability>,
}

impl ActionCatalog {
    /// A catalog offering nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// What this release of the coordinator performs: the kinds with an
    /// actuator now; every other kind is known and runs in dry-run until its
    /// actuator arrives. A test keeps the coordinator's actuators in
    /// agreement, so `remedyctl runbooks validate` says the same thing
    /// offline that the coordinator would. The Kubernetes kinds need a
    /// cluster: a coordinator started without one rehearses them, and says
    /// so at start.
    pub fn this_release() -> Self {
        Self::every_kind(Availability::Later)
            .with(ActionKind::Http, Availability::Now)
            .with(ActionKind::Notify, Availability::Now)
            .with(ActionKind::ProbeHttp, Availability::Now)
            .with(ActionKind::Agent, Availability::Now)
            .with(ActionKind::AgentSnapshot, Availability::Now)
            .with(ActionKind::LogCleanup, Availability::Now)
            .with(ActionKind::Scale, Availability::Now)
            .with(ActionKind::PatchHpa, Availability::Now)
            .with(ActionKind::RolloutRestart, Availability::Now)
            .with(ActionKind::DeletePods, Availability::Now)
            .with(ActionKind::EvictPods, Availability::Now)
            .with(ActionKind::PatchConfigmap, Availability::Now)
            .with(ActionKind::ListPods, Availability::Now)
            .with(ActionKind::ListServices, Availability::Now)
            .with(ActionKind::BlockIp, Availability::Now)
            .with(ActionKind::PgSelect1, Availability::Now)
            .with(ActionKind::PgMaintenance, Availability::Now)
            .with(ActionKind::PgFailover, Availability::Now)
            .with(ActionKind::RedisPing, Availability::Now)
            .with(ActionKind::RedisFlush, Availability::Now)
            .with(ActionKind::RedisDeleteKeys, Availability::Now)
            .with(ActionKind::CacheWarm, Availability::Now)
    }

    /// A catalog offering every kind with the same availability.
    pub fn every_kind(availability: Availability) -> Self {
        ActionCatalog { kinds: ActionKind::ALL.iter().map(|k| (*k, availability)).collect() }
    }

    /// This catalog with `kind` offered as `availability`.
    pub fn with(mut self, kind: ActionKind, availability: Availability) -> Self {
        self.kinds.insert(kind, availability);
        self
    }

    /// How `kind` is offered; `None` if it is not.
    pub fn availability(&self, kind: ActionKind) -> Option<Availability> {
        self.kinds.get(&kind).copied()
    }
}

/// A step or check whose action has no actuator yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnavailableAction {
    /// The step's or check's id.
    pub step: String,
    /// Its kind.
    pub kind: ActionKind,
}

/// What a valid runbook still cannot do.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValidationReport {
    /// Steps and checks that will run in dry-run until their actuator
    /// arrives, in document order.
    pub unavailable: Vec<UnavailableAction>,
}

impl ValidationReport {
    /// Whether every action can run now.
    pub fn fully_available(&self) -> bool {
        self.unavailable.is_empty()
    }
}

/// Checks `runbook` against itself and `catalog`. Errors name the runbook's
/// source file and the field; [`super::load_runbook`] adds lines.
pub fn validate(runbook: &Runbook, catalog: &ActionCatalog) -> Result<ValidationReport, InvalidRunbook> {
    validate_with_source(runbook, catalog, None)
}

/// As [`validate`], with the runbook's text to find lines in.
pub(crate) fn validate_with_source(
    runbook: &Runbook,
    catalog: &ActionCatalog,
    text: Option<&str>,
) -> Result<ValidationReport, InvalidRunbook> {
    let mut v = Validator {
        runbook,
        catalog,
        renderer: Renderer::new(),
        problems: Vec::new(),
        report: ValidationReport::default(),
    };
    v.run();
    if v.problems.is_empty() {
        return Ok(v.report);
    }
    let map = text.and_then(SourceMap::parse);
    let errors = v
        .problems
        .into_iter()
        .map(|(field, message)| {
            let location = map.as_ref().and_then(|m| m.locate(&field));
            RunbookError {
                file: runbook.source.clone(),
                line: location.map(|l| l.line()),
                column: location.map(|l| l.column()),
                field,
                message,
            }
        })
        .collect();
    Err(InvalidRunbook { errors })
}

/// Step ids and param names: `[a-z][a-z0-9_]*`, readable as `steps.<id>`.
fn valid_identifier(id: &str) -> bool {
    id.chars().next().is_some_and(|c| c.is_ascii_lowercase())
        && id.len() <= 63
        && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

struct Validator<'a> {
    runbook: &'a Runbook,
    catalog: &'a ActionCatalog,
    renderer: Renderer,
    problems: Vec<(String, String)>,
    report: ValidationReport,
}

impl Validator<'_> {
    fn problem(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.problems.push((field.into(), message.into()));
    }

    fn run(&mut self) {
        self.header();
        self.triggers();
        self.steps_and_checks();
        self.escalation_and_rails();
    }

    fn header(&mut self) {
        let rb = self.runbook;
        for (field, message) in crate::catalog::header_problems(CatalogKind::Runbook, rb.kind, &rb.metadata) {
            self.problem(field, message);
        }
        if rb.mttr_target.is_zero() {
            self.problem("mttr_target", "must be longer than zero");
        }
        for name in rb.params.keys() {
            if !valid_identifier(name) {
                self.problem(format!("params.{name}"), "param names are lowercase identifiers ([a-z][a-z0-9_]*)");
            }
        }
    }

    fn triggers(&mut self) {
        let t = &self.runbook.triggers;
        if t.is_empty() {
            self.problem("triggers", "a runbook needs at least one trigger: alerts, findings or manual: true");
        }
        for (i, a) in t.alerts.iter().enumerate() {
            if a.name.trim().is_empty() {
                self.problem(format!("triggers.alerts[{i}].name"), "must not be empty");
            }
        }
        for (i, f) in t.findings.iter().enumerate() {
            let field = format!("triggers.findings[{i}]");
            match (&f.evidence, f.above) {
                (Some(_), None) => self.problem(format!("{field}.evidence"), "`evidence` needs `above`, the threshold"),
                (None, Some(_)) => {
                    self.problem(format!("{field}.above"), "`above` needs `evidence`, the key it applies to")
                }
                (None, None) if f.aggregate == Aggregate::SumAcrossNodes => {
                    self.problem(format!("{field}.aggregate"), "sum_across_nodes needs `evidence` and `above`")
                }
                _ => {}
            }
            if f.above.is_some_and(|a| !a.is_finite()) {
                self.problem(format!("{field}.above"), "must be a finite number");
            }
        }
    }

    fn incident_sample(&self) -> IncidentContext {
        let rb = self.runbook;
        IncidentContext {
            id: "INC-000000".into(),
            started_at: "2026-01-01T00:00:00.000Z".into(),
            priority: rb.priority.to_string(),
            runbook: rb.metadata.id.clone(),
            title: rb.metadata.title.clone(),
            summary: rb.metadata.title.clone(),
            mode: "dry_run".into(),
        }
    }

    fn steps_and_checks(&mut self) {
        let rb = self.runbook;
        let incident = self.incident_sample();
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        // Evidence steps so far: readable by the steps after them.
        let mut evidence: Vec<&str> = Vec::new();
        for (i, step) in rb.steps.iter().enumerate() {
            let field = format!("steps[{i}]");
            self.id(&field, &step.id, &mut seen);
            self.kind_offered(&field, &step.id, step.kind());
            let sample = sample_context(&incident, &rb.declared_params(), &evidence);
            if let Some(when) = &step.when {
                self.condition(&format!("{field}.when"), when, &sample, &evidence);
            }
            self.templates(&field, &step.action, &sample);
            self.action(&format!("{field}.{}", step.kind()), &step.action);
            if let Action::RedisFlush(flush) = &step.action
                && flush.all_databases
                && !step.requires_approval(&rb.guard_rails)
            {
                self.problem(
                    format!("{field}.redis_flush.all_databases"),
                    "flushing every database needs a person: add `requires_approval: true` to the step",
                );
            }
            if step.destructive == Some(false) && step.kind().is_destructive() {
                self.problem(format!("{field}.destructive"), format!("{} is always destructive", step.kind()));
            }
            if step.is_evidence() {
                evidence.push(&step.id);
            }
        }
        let Some(verification) = &rb.verification else { return };
        if verification.within.is_zero() {
            self.problem("verification.within", "must be longer than zero");
        }
        if verification.interval.is_zero() {
            self.problem("verification.interval", "must be longer than zero");
        }
        if verification.checks.is_empty() {
            self.problem("verification.checks", "needs at least one check");
        }
        for (i, check) in verification.checks.iter().enumerate() {
            let field = format!("verification.checks[{i}]");
            self.id(&field, &check.id, &mut seen);
            self.kind_offered(&field, &check.id, check.action.kind());
            if check.action.kind().class() != ActionClass::Evidence {
                self.problem(
                    format!("{field}.{}", check.action.kind()),
                    format!("a check only looks: {} changes something", check.action.kind()),
                );
            }
            let sample = sample_context(&incident, &rb.declared_params(), &evidence);
            self.templates(&field, &check.action, &sample);
            self.action(&format!("{field}.{}", check.action.kind()), &check.action);
            evidence.push(&check.id);
            if let Some(expect) = &check.expect {
                let sample = sample_context(&incident, &rb.declared_params(), &evidence);
                self.condition(&format!("{field}.expect"), expect, &sample, &evidence);
            }
        }
    }

    fn id<'r>(&mut self, field: &str, id: &'r str, seen: &mut BTreeSet<&'r str>) {
        if !valid_identifier(id) {
            self.problem(
                format!("{field}.id"),
                format!("`{id}`: step ids are lowercase identifiers ([a-z][a-z0-9_]*), read as steps.<id>"),
            );
        }
        if !seen.insert(id) {
            self.problem(format!("{field}.id"), format!("duplicate step id `{id}`"));
        }
    }

    fn kind_offered(&mut self, field: &str, id: &str, kind: ActionKind) {
        match self.catalog.availability(kind) {
            None => self.problem(format!("{field}.{kind}"), format!("this coordinator offers no `{kind}` action")),
            Some(Availability::Later) => {
                self.report.unavailable.push(UnavailableAction { step: id.to_owned(), kind });
            }
            Some(Availability::Now) => {}
        }
    }

    fn condition(&mut self, field: &str, condition: &Condition, sample: &Value, evidence: &[&str]) {
        for path in condition.paths() {
            let text = path.to_string();
            let Some(missing) = unresolved_prefix(&text, sample) else { continue };
            let message = match path.0.as_slice() {
                [root, id, ..] if root == "steps" && !evidence.contains(&id.as_str()) => {
                    let what = match self.runbook.step(id) {
                        Some(s) if !s.is_evidence() => "is not an evidence step",
                        Some(_) => "comes later",
                        None => "does not exist",
                    };
                    format!("`{text}` reads step `{id}`, which {what}: conditions read evidence steps that come before")
                }
                _ => format!("`{missing}` is not defined (in `{condition}`)"),
            };
            self.problem(field, message);
        }
    }

    fn templates(&mut self, field: &str, action: &Action, sample: &Value) {
        let Ok(json) = serde_json::to_value(action) else {
            self.problem(field, "parameters cannot be represented as JSON");
            return;
        };
        let mut strings = Vec::new();
        collect_templates(&json, String::new(), &mut strings);
        for (path, text) in strings {
            if let Err(e) = self.renderer.render_str(&text, sample) {
                self.problem(format!("{field}{path}"), e.to_string());
            }
        }
    }

    fn action(&mut self, field: &str, action: &Action) {
        let mut p = |sub: &str, message: String| self.problems.push((format!("{field}{sub}"), message));
        let positive = |d: Duration| !d.is_zero();
        match action {
            Action::Http(h) => {
                if h.url.trim().is_empty() {
                    p(".url", "must not be empty".into());
                }
                if h.expected_status.is_some_and(|s| !(100..=599).contains(&s)) {
                    p(".expected_status", "must be an HTTP status, 100 to 599".into());
                }
                if !positive(h.timeout) {
                    p(".timeout", "must be longer than zero".into());
                }
            }
            Action::ProbeHttp(h) => {
                if h.url.trim().is_empty() {
                    p(".url", "must not be empty".into());
                }
                if !(100..=599).contains(&h.expected_status) {
                    p(".expected_status", "must be an HTTP status, 100 to 599".into());
                }
                if !positive(h.timeout) {
                    p(".timeout", "must be longer than zero".into());
                }
            }
            Action::Agent(a) => {
                if a.directive.trim().is_empty() {
                    p(".directive", "must not be empty".into());
                }
                if !positive(a.timeout) {
                    p(".timeout", "must be longer than zero".into());
                }
            }
            Action::Notify(n) => {
                if n.channel.trim().is_empty() {
                    p(".channel", "must name a channel configured on the coordinator".into());
                }
            }
            Action::AgentSnapshot(s) => {
                if s.include.is_empty() {
                    p(".include", "must list at least one section".into());
                }
            }
            Action::Scale(s) => {
                if s.replicas < s.floor {
                    p(".replicas", format!("{} is below the floor {}", s.replicas, s.floor));
                }
                if let Some(ceiling) = s.ceiling
                    && s.replicas > ceiling
                {
                    p(".replicas", format!("{} is above the ceiling {ceiling}", s.replicas));
                }
            }
            Action::PatchHpa(h) => {
                if h.min_replicas == 0 {
                    p(".min_replicas", "must be at least 1".into());
                }
                if h.min_replicas > h.max_replicas {
                    p(".max_replicas", format!("{} is below min_replicas {}", h.max_replicas, h.min_replicas));
                }
            }
            Action::DeletePods(d) => {
                if d.selector.trim().is_empty() {
                    p(".selector", "must not be empty: an empty selector would mean every pod".into());
                }
                if d.max_count == 0 {
                    p(".max_count", "must be at least 1".into());
                }
            }
            Action::EvictPods(e) => {
                if e.selector.trim().is_empty() {
                    p(".selector", "must not be empty: an empty selector would mean every pod".into());
                }
                if e.max_count == 0 {
                    p(".max_count", "must be at least 1".into());
                }
            }
            Action::GcNudge(g) => {
                if g.selector.trim().is_empty() {
                    p(".selector", "must not be empty: an empty selector would mean every pod".into());
                }
                if g.max_pods == 0 {
                    p(".max_pods", "must be at least 1".into());
                }
            }
            Action::PatchConfigmap(c) => {
                if c.data.is_empty() {
                    p(".data", "must set at least one key".into());
                }
            }
            Action::PgFailover(f) => {
                if f.database.trim().is_empty() {
                    p(".database", "must name a database configured on the coordinator".into());
                }
                if f.replica.as_ref().is_some_and(|r| r.trim().is_empty()) {
                    p(".replica", "must name a replica, or be left out to take the least lagging".into());
                }
            }
            Action::PgMaintenance(m) => {
                if m.operations.is_empty() {
                    p(".operations", "must list at least one operation".into());
                }
            }
            Action::RedisFlush(r) => match (r.db, r.all_databases) {
                (Some(_), true) => p(".all_databases", "give either `db` or `all_databases: true`, not both".into()),
                (None, false) => {
                    p(".db", "say which database (`db`), or `all_databases: true` to flush them all".into())
                }
                _ => {}
            },
            Action::RedisDeleteKeys(r) => {
                if r.pattern.chars().all(|c| matches!(c, '*' | '?')) {
                    p(".pattern", format!("`{}` would match every key", r.pattern));
                }
                if r.max_keys == 0 {
                    p(".max_keys", "must be at least 1".into());
                }
                if r.scoped_to_users.is_some() && !r.pattern.contains(USER_PLACEHOLDER) {
                    p(
                        ".pattern",
                        format!(
                            "with scoped_to_users, `{}` must say where the user is, with {USER_PLACEHOLDER}",
                            r.pattern
                        ),
                    );
                }
            }
            Action::BlockIp(b) => {
                if !positive(b.duration) {
                    p(".duration", "must be longer than zero".into());
                }
            }
            Action::LogCleanup(l) => {
                if l.roots.is_empty() {
                    p(".roots", "must list at least one root".into());
                }
                for (i, root) in l.roots.iter().enumerate() {
                    let path = root.path.trim_end_matches('/');
                    if !root.path.starts_with('/') || path.is_empty() || root.path.split('/').any(|s| s == "..") {
                        p(
                            &format!(".roots[{i}].path"),
                            format!("`{}` must be an absolute directory other than /, without `..`", root.path),
                        );
                    }
                    if root.globs.is_empty() || root.globs.iter().any(|g| g.contains('/')) {
                        p(&format!(".roots[{i}].globs"), "must list file name globs (no `/`)".into());
                    }
                }
            }
            Action::CircuitBreaker(c) => {
                if c.services.is_empty() {
                    p(".services", "must list at least one service".into());
                }
            }
            Action::RolloutRestart(_)
            | Action::CacheWarm(_)
            | Action::PgSelect1(_)
            | Action::RedisPing(_)
            | Action::ListPods(_)
            | Action::ListServices(_) => {}
        }
    }

    fn escalation_and_rails(&mut self) {
        let rb = self.runbook;
        if rb.escalation.policy.trim().is_empty() {
            self.problem("escalation.policy", "must name an escalation policy");
        }
        let rails = &rb.guard_rails;
        if rails.max_attempts == 0 {
            self.problem("guard_rails.max_attempts", "must be at least 1");
        }
        if rails.approval_ttl.is_zero() {
            self.problem("guard_rails.approval_ttl", "must be longer than zero");
        }
        for (i, b) in rails.budgets.iter().enumerate() {
            let field = format!("guard_rails.budgets[{i}]");
            if b.window.is_zero() {
                self.problem(format!("{field}.window"), "must be longer than zero");
            }
            if b.max_actions.is_none() && b.max_percent.is_none() {
                self.problem(field.clone(), "needs max_actions, max_percent or both");
            }
            if b.max_actions == Some(0) {
                self.problem(format!("{field}.max_actions"), "must be at least 1 (use mode: dry_run to stop actions)");
            }
            if b.max_percent.is_some_and(|p| !(p > 0.0 && p <= 100.0)) {
                self.problem(format!("{field}.max_percent"), "must be above 0 and at most 100");
            }
            if matches!(&b.actions, super::BudgetScope::Kinds(k) if k.is_empty()) {
                self.problem(format!("{field}.actions"), "must list at least one kind, or say `all`");
            }
        }
    }
}

/// Every string under `json` that contains template syntax, with its path
/// (`.http.url`, `.http.body.incident`, `.log_cleanup.roots[0].path`).
fn collect_templates(json: &serde_json::Value, path: String, out: &mut Vec<(String, String)>) {
    match json {
        serde_json::Value::String(s) if is_template(s) => out.push((path, s.clone())),
        serde_json::Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                collect_templates(item, format!("{path}[{i}]"), out);
            }
        }
        serde_json::Value::Object(map) => {
            for (key, item) in map {
                collect_templates(item, format!("{path}.{key}"), out);
            }
        }
        _ => {}
    }
}
