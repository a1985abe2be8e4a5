//! The runbook engine: runs each incident's runbook, step by step, through
//! the guard rails, and records everything on the incident's timeline.
//!
//! Runs arrive from the writer (see [`crate::recorder`]): a run is created
//! in the same transaction as the signal that triggered it, and the runs
//! found unfinished at start-up come first. For each step the engine:
//!
//! 1. evaluates its `when` condition on what the run knows (skips it, with a
//!    timeline entry, when false or when it cannot be evaluated);
//! 2. renders its parameters (strict templates: a missing value fails the
//!    step, never sends a blank);
//! 3. asks the guard rails, under one lock so two runs cannot both spend
//!    the last of a budget, and records the decision with its reason;
//! 4. records the step's idempotency key durably *before* the action runs,
//!    so a coordinator that dies mid-action does not run it again after a
//!    restart: the step is reported as interrupted and handled as a failure;
//! 5. runs the action (for real, or as a rehearsal in dry-run and shadow, or
//!    when no actuator performs its kind here yet) and records the result.
//!
//! Verification repeats its checks until they pass or the deadline passes;
//! then the runbook escalates (or retries, if it says so, up to its
//! `max_attempts`).

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use remedy_shared::Timestamp;
use remedy_shared::audit::{AuditEntry, AuditKind};
use remedy_shared::guard::{self, ActionRequest, ApprovalKey, Decision, GuardPolicy, GuardState, Infrastructure, Mode};
use remedy_shared::incident::{EntryKind, IncidentId, IncidentState, TimelineEntry};
use remedy_shared::run::{self, Catalog, RunOutcome, RunRecord, RunStatus, StepState, Verification};
use remedy_shared::runbook::{Action, ActionClass, AfterFailure, OnFailure, Renderer, Runbook, Step};
use remedy_shared::sync::lock;
use tokio::sync::Notify;

use crate::actuators::{AcceptedRisk, ActionCall, ActionReport, ActionStatus, Actuators};
use crate::infrastructure::InfrastructureMap;
use crate::leader::{FencingToken, LeaderElector};
use crate::recorder::{ManualRun, RecordError, Recorder, RunFeed, RunUpdate};

/// The engine; cheap to clone.
#[derive(Debug, Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    catalog: Arc<Catalog>,
    policy: GuardPolicy,
    actuators: Actuators,
    recorder: Recorder,
    /// The names of the configured channels `notify` steps may use.
    channels: BTreeSet<String>,
    guard: Mutex<GuardState>,
    /// Woken when an approval is answered.
    answered: Notify,
    /// Incidents whose run is being driven now.
    driving: Mutex<HashSet<IncidentId>>,
    /// The election whose term every action must hold; unset when this
    /// coordinator acts alone.
    fence: std::sync::OnceLock<LeaderElector>,
    /// Remedy's own addresses, which the address rail never lets a ban
    /// cover; read afresh at every decision.
    infrastructure: InfrastructureMap,
}

impl Inner {
    /// Why `action` can only be rehearsed here (no actuator performs its
    /// kind, a channel that is not configured); `None` when it can act.
    fn rehearsal_reason(&self, action: &Action) -> Option<String> {
        let kind = action.kind().as_str();
        if !self.actuators.available(kind) {
            return Some(unavailable_reason(kind));
        }
        match action {
            Action::Notify(n) if !self.channels.contains(&n.channel) => {
                Some(format!("channel `{}` is not configured", n.channel))
            }
            _ => None,
        }
    }

    /// The policy as the rails weigh it now: the configured one, with
    /// Remedy's own infrastructure as it is known at this moment.
    fn policy_now(&self) -> GuardPolicy {
        let mut policy = self.policy.clone();
        policy.protected.infrastructure = Infrastructure::clone(&self.infrastructure.current());
        policy
    }
}

/// Why an admin request on the engine failed.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The approval cannot be answered (unknown, answered, expired).
    #[error("{0}")]
    Approval(#[from] guard::ApprovalError),
    /// Nothing to do (already paused, not paused).
    #[error("{0}")]
    Nothing(String),
    /// The writer refused.
    #[error("{0}")]
    Record(#[from] RecordError),
}

/// How a step ended, for what follows.
enum StepEnd {
    /// It ran: a change that happened, evidence gathered, or a rehearsal.
    Done(StepState),
    Skipped,
    Failed(String),
    /// The rails refused it; the run goes on as after a failure.
    Refused(String),
    Escalate(String),
    /// This coordinator no longer leads: the run stops here, writing
    /// nothing, and the new leader continues it from the last record.
    Fenced(String),
}

/// Longest an action may take when its parameters say nothing.
const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);

impl Engine {
    /// An engine over `catalog`, with the global `policy` tightened by each
    /// runbook's own settings, and the rails' memory as last persisted.
    pub fn new(
        catalog: Arc<Catalog>,
        base_policy: &GuardPolicy,
        actuators: Actuators,
        recorder: Recorder,
        channels: BTreeSet<String>,
        guard: Option<GuardState>,
        infrastructure: InfrastructureMap,
    ) -> Engine {
        Engine {
            inner: Arc::new(Inner {
                policy: catalog.policy(base_policy),
                catalog,
                actuators,
                recorder,
                channels,
                guard: Mutex::new(guard.unwrap_or_default()),
                answered: Notify::new(),
                driving: Mutex::new(HashSet::new()),
                fence: std::sync::OnceLock::new(),
                infrastructure,
            }),
        }
    }

    /// Makes every action hold the current term of `elector`: the lease is
    /// re-read and the term confirmed before the rails weigh an action and
    /// again before it starts, and the term (the fencing token) is recorded
    /// with the action. A step whose term cannot be confirmed is not run.
    /// Set once; later calls are ignored.
    pub fn fenced_by(self, elector: LeaderElector) -> Engine {
        let _ = self.inner.fence.set(elector);
        self
    }

    /// Drives every run the writer feeds, each in its own task, until
    /// `stopped`. A run in progress when the coordinator stops resumes at
    /// the next start from what was persisted.
    pub async fn drive(self, mut feed: RunFeed, stopped: impl Future<Output = ()>) {
        tokio::pin!(stopped);
        loop {
            let run = tokio::select! {
                run = feed.recv() => match run { Some(run) => run, None => return },
                () = &mut stopped => return,
            };
            if !lock(&self.inner.driving).insert(run.incident_id) {
                continue;
            }
            let inner = self.inner.clone();
            tokio::spawn(async move {
                let id = run.incident_id;
                let driver = Driver { inner: inner.clone() };
                if let Err(e) = driver.run(run).await {
                    tracing::error!(incident = %id, error = %e, "run stopped: its state could not be recorded");
                }
                lock(&inner.driving).remove(&id);
            });
        }
    }

    /// Opens an incident for a person's run of a runbook; the run starts as
    /// soon as it is committed.
    pub async fn run_manual(&self, request: ManualRun) -> Result<IncidentId, RecordError> {
        self.inner.recorder.manual_run(request).await
    }

    /// The rails' memory now (pause, breakers, approvals).
    pub fn guard(&self) -> GuardState {
        lock(&self.inner.guard).clone()
    }

    /// Shows the rails' state (pause, breakers, approvals) on `/metrics`,
    /// read at each scrape; the metrics hold no strong reference to the
    /// engine.
    pub fn report_rails(&self) {
        let engine = Arc::downgrade(&self.inner);
        self.inner.recorder.metrics().watch_rails(Box::new(move || {
            let inner = engine.upgrade()?;
            let now = inner.recorder.clock().now();
            let g = lock(&inner.guard).clone();
            let pending: Vec<_> = g.pending_approvals(now).map(|a| a.requested_at).collect();
            let oldest =
                pending.iter().min().map_or(0.0, |at| (now.as_millis() - at.as_millis()).max(0) as f64 / 1000.0);
            Some(crate::metrics::RailsState {
                paused: g.paused().is_some(),
                breakers_open: g.open_breakers().count(),
                approvals_pending: pending.len(),
                approvals_oldest_seconds: oldest,
            })
        }));
    }

    /// The policy in force, runbook settings included.
    pub fn policy(&self) -> &GuardPolicy {
        &self.inner.policy
    }

    /// Weighs an action the engine does not run itself (a person lifting a
    /// ban) against the rails as they stand, under the lock every run's
    /// decision takes, so no run's decision lands between the reading and
    /// the verdict. It spends and records nothing: the verdict is decided
    /// on a copy of the rails' state, which is then dropped.
    pub fn weigh_without_spending(&self, request: &ActionRequest) -> Decision {
        let policy = self.inner.policy_now();
        let guard = lock(&self.inner.guard);
        let mut copy = guard.clone();
        guard::decide(&policy, &mut copy, request, self.now()).0
    }

    /// The catalog.
    pub fn catalog(&self) -> &Catalog {
        &self.inner.catalog
    }

    /// Stops all automation except telling people, until [`Engine::resume`].
    pub async fn pause(&self, by: &str, reason: &str) -> Result<(), EngineError> {
        let snapshot = {
            let mut g = lock(&self.inner.guard);
            if !g.pause(by, reason, self.now()) {
                return Err(EngineError::Nothing("automation is already paused".into()));
            }
            g.clone()
        };
        tracing::warn!(by, reason, "automation paused");
        self.inner.recorder.run_update(RunUpdate { guard: Some(snapshot), ..RunUpdate::default() }).await?;
        Ok(())
    }

    /// Lets automation act again.
    pub async fn resume(&self, by: &str) -> Result<(), EngineError> {
        let snapshot = {
            let mut g = lock(&self.inner.guard);
            if g.resume().is_none() {
                return Err(EngineError::Nothing("automation is not paused".into()));
            }
            g.clone()
        };
        tracing::warn!(by, "automation resumed");
        self.inner.recorder.run_update(RunUpdate { guard: Some(snapshot), ..RunUpdate::default() }).await?;
        Ok(())
    }

    /// Closes the breaker of `scope` so automation in it acts again.
    pub async fn reset_breaker(&self, scope: &guard::Scope, by: &str) -> Result<(), EngineError> {
        let snapshot = {
            let mut g = lock(&self.inner.guard);
            if g.reset_breaker(scope, self.now()).is_none() {
                return Err(EngineError::Nothing(format!("the {scope} breaker is not open")));
            }
            g.clone()
        };
        tracing::warn!(%scope, by, "breaker reset");
        self.inner.recorder.run_update(RunUpdate { guard: Some(snapshot), ..RunUpdate::default() }).await?;
        Ok(())
    }

    /// The steps and checks of `runbook` that run as rehearsals here, each
    /// with why: all of them when its mode is not live, else those whose
    /// action has no actuator here or names a channel not configured.
    pub fn rehearsed_steps(&self, runbook: &Runbook) -> Vec<(String, String)> {
        let steps = runbook.steps.iter().map(|s| (&s.id, &s.action));
        let checks = runbook.verification.iter().flat_map(|v| v.checks.iter().map(|c| (&c.id, &c.action)));
        let mode = runbook.guard_rails.mode;
        steps
            .chain(checks)
            .filter_map(|(id, action)| {
                let why = match mode {
                    Mode::Live => self.inner.rehearsal_reason(action)?,
                    other => format!("the runbook's mode is {}: every step rehearses", other.as_str()),
                };
                Some((id.clone(), why))
            })
            .collect()
    }

    /// A person answers an approval request: `Some(reason)` denies it.
    pub async fn answer(&self, key: &ApprovalKey, by: &str, deny: Option<&str>) -> Result<(), EngineError> {
        self.answer_with(key, by, deny, BTreeMap::new()).await
    }

    /// As [`Engine::answer`], with `details` on the timeline entry (how
    /// the answer came: `via`).
    pub async fn answer_with(
        &self,
        key: &ApprovalKey,
        by: &str,
        deny: Option<&str>,
        details: BTreeMap<String, String>,
    ) -> Result<(), EngineError> {
        let at = self.now();
        let (snapshot, message) = {
            let mut g = lock(&self.inner.guard);
            let message = match deny {
                None => {
                    let until = g.grant_approval(&self.inner.policy, key, by, at)?;
                    format!("{key} approved by {by}, usable until {until}")
                }
                Some(reason) => {
                    g.deny_approval(key, by, reason, at)?;
                    format!("{key} denied by {by}: {reason}")
                }
            };
            (g.clone(), message)
        };
        let entry = TimelineEntry {
            at,
            kind: EntryKind::Approval,
            message,
            details: details
                .into_iter()
                .chain([("by".to_owned(), by.to_owned()), ("key".to_owned(), key.to_string())])
                .collect(),
        };
        self.inner
            .recorder
            .run_update(RunUpdate {
                incident: Some(key.incident_id),
                entries: vec![entry],
                guard: Some(snapshot),
                ..RunUpdate::default()
            })
            .await?;
        self.inner.answered.notify_waiters();
        Ok(())
    }
}

impl Engine {
    fn now(&self) -> Timestamp {
        self.inner.now()
    }
}

impl Driver {
    fn now(&self) -> Timestamp {
        self.inner.now()
    }

    fn entry(&self, kind: EntryKind, message: impl Into<String>, details: BTreeMap<String, String>) -> TimelineEntry {
        self.inner.entry(kind, message, details)
    }
}

impl Inner {
    /// The time now, by the writer's clock: every stamp of a run agrees
    /// with what the writer records.
    fn now(&self) -> Timestamp {
        self.recorder.clock().now()
    }

    /// A timeline entry stamped now.
    fn entry(&self, kind: EntryKind, message: impl Into<String>, details: BTreeMap<String, String>) -> TimelineEntry {
        TimelineEntry { at: self.now(), kind, message: message.into(), details }
    }
}

fn step_details(run: &RunRecord, step_id: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("runbook".to_owned(), run.runbook_id.clone()),
        ("step".to_owned(), step_id.to_owned()),
        ("attempt".to_owned(), run.attempt.to_string()),
    ])
}

/// One run's driver.
struct Driver {
    inner: Arc<Inner>,
}

impl Driver {
    async fn save(
        &self,
        run: &mut RunRecord,
        entries: Vec<TimelineEntry>,
        state: Option<IncidentState>,
    ) -> Result<(), RecordError> {
        self.commit(run, RunUpdate { state, entries, ..RunUpdate::default() }).await
    }

    async fn save_with_guard(&self, run: &mut RunRecord, entries: Vec<TimelineEntry>) -> Result<(), RecordError> {
        let guard = Some(lock(&self.inner.guard).clone());
        self.commit(run, RunUpdate { entries, guard, ..RunUpdate::default() }).await
    }

    /// Commits `update` with the run as it now stands, while this
    /// coordinator still leads.
    async fn commit(&self, run: &mut RunRecord, mut update: RunUpdate) -> Result<(), RecordError> {
        self.still_leading()?;
        run.updated_at = self.now();
        scrub(run, &mut update);
        self.inner.recorder.run_update(RunUpdate { run: Some(run.clone()), ..update }).await
    }

    /// A deposed leader writes nothing more: the new leader owns the
    /// record, and this process is stopping (see main.rs).
    fn still_leading(&self) -> Result<(), RecordError> {
        match self.inner.fence.get() {
            Some(elector) if !elector.current().leader => Err(RecordError::Stopped),
            _ => Ok(()),
        }
    }

    async fn run(&self, mut run: RunRecord) -> Result<(), RecordError> {
        let Some(runbook) = self.inner.catalog.get(&run.runbook_id).cloned() else {
            let message = format!("runbook {} is no longer in the catalog; people take over", run.runbook_id);
            return self.escalate(&mut run, None, message).await;
        };
        if run.status == RunStatus::Pending {
            run.status = RunStatus::Running;
            let message = format!("runbook {} started ({}, attempt {})", runbook.id(), run.mode, run.attempt);
            let details = BTreeMap::from([("mode".to_owned(), run.mode.to_string())]);
            self.save(
                &mut run,
                vec![self.entry(EntryKind::Runbook, message, details)],
                Some(IncidentState::Mitigating),
            )
            .await?;
        }
        if let Some(interrupted) = run.interrupted().cloned() {
            // Recorded, never reported done: the coordinator stopped while
            // it ran. Its effect is unknown, so it is not run again.
            run.record_outcome(&interrupted.key, "interrupted", self.now());
            let message = format!(
                "step {} ({}) was started but its end was never recorded (the coordinator stopped); not run again",
                interrupted.step_id, interrupted.key
            );
            let details = step_details(&run, &interrupted.step_id);
            self.save(&mut run, vec![self.entry(EntryKind::Result, message, details)], None).await?;
            let position = runbook.steps.iter().position(|s| s.id == interrupted.step_id);
            match (position, runbook.step(&interrupted.step_id).map(Step::on_failure)) {
                (Some(i), Some(on_failure @ (OnFailure::Next | OnFailure::Continue))) => {
                    run.next_step = run.next_step.max(i + 1);
                    if on_failure == OnFailure::Next {
                        run.failures.push(format!("step {} was interrupted", interrupted.step_id));
                    }
                }
                (Some(_), Some(OnFailure::Escalate)) => {
                    let why = format!("step {} was interrupted and its outcome is unknown", interrupted.step_id);
                    return self.escalate(&mut run, Some(&runbook), why).await;
                }
                // A verification check: verification starts over.
                _ => {}
            }
        }
        loop {
            if run.status == RunStatus::Running {
                while run.next_step < runbook.steps.len() {
                    if !self.still_open(&mut run).await? {
                        return Ok(());
                    }
                    let step = &runbook.steps[run.next_step];
                    let end = self.step(&mut run, &runbook, step).await?;
                    if let StepEnd::Fenced(why) = &end {
                        let why = run.secret_values.scrub(why);
                        tracing::warn!(incident = %run.incident_id, step = %step.id, "{why}");
                        return Ok(());
                    }
                    run.next_step += 1;
                    if let Some(state) = end.state() {
                        run.steps.insert(step.id.clone(), state);
                    }
                    match end {
                        StepEnd::Done(_) | StepEnd::Skipped => {}
                        StepEnd::Failed(_) | StepEnd::Refused(_) if step.on_failure() == OnFailure::Continue => {}
                        StepEnd::Failed(why) | StepEnd::Refused(why) if step.on_failure() == OnFailure::Next => {
                            run.failures.push(why)
                        }
                        StepEnd::Failed(why) | StepEnd::Refused(why) | StepEnd::Escalate(why) => {
                            return self.escalate(&mut run, Some(&runbook), why).await;
                        }
                        StepEnd::Fenced(_) => return Ok(()),
                    }
                    self.save(&mut run, Vec::new(), None).await?;
                }
                run.status = RunStatus::Verifying;
                self.save(&mut run, Vec::new(), None).await?;
            }
            match self.verify(&mut run, &runbook).await? {
                Verified::Yes(verification) => return self.succeed(&mut run, &runbook, verification).await,
                Verified::Cancelled => return Ok(()),
                Verified::No(why) => {
                    run.outcome = Some(RunOutcome::judge(&run.steps, Verification::NotPassed));
                    let retry = runbook.escalation.after_failure == AfterFailure::Retry
                        && run.attempt < runbook.guard_rails.max_attempts;
                    if !retry {
                        return self.escalate(&mut run, Some(&runbook), why).await;
                    }
                    run.attempt += 1;
                    run.next_step = 0;
                    run.failures.clear();
                    run.steps.clear();
                    run.status = RunStatus::Running;
                    let message = format!("{why}; trying again (attempt {})", run.attempt);
                    self.save(&mut run, vec![self.entry(EntryKind::Runbook, message, BTreeMap::new())], None).await?;
                }
            }
        }
    }

    /// Whether the incident is still open; cancels the run if not.
    async fn still_open(&self, run: &mut RunRecord) -> Result<bool, RecordError> {
        if self.inner.recorder.open_incident(run.incident_id).await?.is_some() {
            return Ok(true);
        }
        run.status = RunStatus::Cancelled;
        let message = format!("runbook {} stopped: the incident was resolved", run.runbook_id);
        self.save(run, vec![self.entry(EntryKind::Runbook, message, BTreeMap::new())], None).await?;
        Ok(false)
    }

    async fn step(&self, run: &mut RunRecord, runbook: &Runbook, step: &Step) -> Result<StepEnd, RecordError> {
        if let Some(end) = self.lost_secrets(run, &step.id, &step.action, step.when.as_ref()).await? {
            return Ok(end);
        }
        if let Some(when) = &step.when {
            let skip = match when.evaluate(&run.template_context(runbook).to_json()) {
                Ok(true) => None,
                Ok(false) => Some(format!("step {} skipped: `{}` is false", step.id, when.as_str())),
                Err(e) => Some(format!("step {} skipped: `{}` cannot be evaluated: {e}", step.id, when.as_str())),
            };
            if let Some(message) = skip {
                self.save(run, vec![self.entry(EntryKind::Runbook, message, step_details(run, &step.id))], None)
                    .await?;
                return Ok(StepEnd::Skipped);
            }
        }
        let destructive = step.is_destructive();
        let approval = step.requires_approval(&runbook.guard_rails);
        self.action(run, runbook, &step.id, &step.action, destructive, approval).await
    }

    /// Renders, weighs, records and runs one action; its result joins
    /// `steps.<id>`.
    async fn action(
        &self,
        run: &mut RunRecord,
        runbook: &Runbook,
        step_id: &str,
        action: &Action,
        destructive: bool,
        requires_approval: bool,
    ) -> Result<StepEnd, RecordError> {
        if let Some(end) = self.lost_secrets(run, step_id, action, None).await? {
            return Ok(end);
        }
        let details = step_details(run, step_id);
        let rendered = match Renderer::new().render_action(action, &run.template_context(runbook)) {
            Ok(a) => a,
            Err(e) => {
                let message = format!("step {step_id} not run: {e}");
                self.save(run, vec![self.entry(EntryKind::Result, message.clone(), details)], None).await?;
                return Ok(StepEnd::Failed(message));
            }
        };
        let kind = rendered.kind();
        let evidence = kind.class() == ActionClass::Evidence;
        let (call_params, unavailable) = self.call_params(&rendered);
        let mode = run::step_mode(run.mode, runbook.guard_rails.mode, unavailable.is_none());
        let incident = self.inner.recorder.open_incident(run.incident_id).await?;
        let mut request = ActionRequest {
            runbook_id: run.runbook_id.clone(),
            incident_id: run.incident_id,
            step_id: step_id.to_owned(),
            attempt: run.attempt,
            action_kind: kind.as_str().to_owned(),
            targets: run::targets(&rendered),
            destructive,
            requires_approval,
            capacity: run::capacity(&rendered, None),
            population: None,
            trigger_still_holds: Some(incident.as_ref().is_some_and(|i| !i.active_sources.is_empty())),
            mode,
            risk: None,
        };
        // The actuator looks at the world first (selectors to names, hold
        // annotations, current replicas), so the rails weigh what is there.
        if unavailable.is_none() {
            let look = call_for(run, step_id, kind.as_str(), call_params.clone(), true);
            match self.inner.actuators.resolve(&look).await {
                None => {}
                Some(Ok(found)) => {
                    request.targets = found.targets;
                    request.capacity = found.capacity;
                    request.population = found.population;
                    request.risk = found.risk;
                }
                Some(Err(e)) => {
                    let message = format!("step {step_id} not run: cannot see its targets: {e}");
                    self.save(run, vec![self.entry(EntryKind::Result, message.clone(), details)], None).await?;
                    return Ok(StepEnd::Failed(message));
                }
            }
        }
        // The rails remember what they weighed (an action's URL is its
        // target): they remember it without the run's secrets.
        for target in &mut request.targets {
            target.name = run.secret_values.scrub(&target.name);
        }
        // Only the leader weighs and acts; nothing is written when it no
        // longer leads (the new leader owns the record from then on).
        if let Err(why) = self.confirm_term(step_id).await {
            return Ok(StepEnd::Fenced(why));
        }
        let accepted = match self.weigh(run, &request).await? {
            Ok(accepted) => accepted,
            Err(end) => return Ok(end),
        };
        // Re-confirmed right before acting: weighing may have waited for a
        // person's approval, and a term can end meanwhile.
        let fencing = match self.confirm_term(step_id).await {
            Ok(token) => token,
            Err(why) => return Ok(StepEnd::Fenced(why)),
        };
        // The idempotency key is durable before the action starts.
        let key = run.key_for(step_id);
        if !run.record_intent(step_id, self.now()) {
            let message = format!("step {step_id} ({key}) already ran; not run again");
            self.save(run, vec![self.entry(EntryKind::Result, message, details)], None).await?;
            let state = run
                .intent(&key)
                .and_then(|i| i.outcome.as_deref())
                .map_or(StepState::Failed, |o| step_state(o, evidence));
            return Ok(StepEnd::Done(state));
        }
        let mut started = details.clone();
        started.insert("key".into(), key.clone());
        started.insert("mode".into(), mode.to_string());
        started.extend(fencing.iter().flat_map(FencingToken::details));
        let message = format!("{}{} started", mode_prefix(mode), request.describe());
        // The rails' memory, this execution counted, was saved with the decision.
        self.save(run, vec![self.entry(EntryKind::Action, message, started)], None).await?;

        let audited_params = call_params.clone();
        let report = match (&unavailable, mode) {
            (Some(why), _) => {
                ActionReport::new(ActionStatus::DryRun, format!("would have run {}: {why}", request.describe()))
            }
            // Looking changes nothing: evidence is gathered in every mode, so
            // a rehearsal decides its conditions on real data.
            (None, _) if evidence => self.call(run, step_id, kind.as_str(), call_params, false, None).await,
            // With what the person who approved this execution accepted,
            // if the request stated a risk: the actuator decides with it.
            (None, Mode::Live) => self.call(run, step_id, kind.as_str(), call_params, false, accepted).await,
            (None, _) => self.call(run, step_id, kind.as_str(), call_params, true, None).await,
        };
        // What the action says may echo a secret (its URL, an error): hidden
        // before anything keeps it, the rails' memory of failures included.
        let mut report = report;
        report.message = run.secret_values.scrub(&report.message);
        report.evidence.values_mut().for_each(|v| *v = run.secret_values.scrub(v));
        run.record_outcome(&key, report.status.as_str(), self.now());
        run.context.steps.insert(step_id.to_owned(), evidence_json(&report));
        let failed = matches!(report.status, ActionStatus::Failed | ActionStatus::TimedOut | ActionStatus::Invalid);
        let mut entries = Vec::new();
        let mut result = details;
        result.insert("key".into(), key);
        result.insert("status".into(), report.status.as_str().to_owned());
        for (k, v) in &report.evidence {
            result.insert(format!("evidence.{k}"), v.clone());
        }
        entries.push(self.entry(EntryKind::Result, format!("{}: {}", report.status.as_str(), report.message), result));
        let labels =
            crate::metrics::ActionLabels { kind: kind.as_str().to_owned(), outcome: report.status.as_str().to_owned() };
        self.inner.recorder.metrics().actions.get_or_create(&labels).inc();
        let mut arguments = remedy_shared::audit::redact(&audited_params);
        arguments.insert("mode".into(), mode.to_string());
        arguments.insert("step".into(), step_id.to_owned());
        let audit = AuditEntry {
            seq: 0,
            at: self.now(),
            actor: run.started_by.clone(),
            kind: AuditKind::Action,
            operation: kind.as_str().to_owned(),
            target: format!("{} {}", run.incident_id, request.describe()),
            arguments,
            outcome: format!("{}: {}", report.status.as_str(), report.message),
        };
        let guard = if failed && !evidence {
            let events =
                lock(&self.inner.guard).record_failure(&self.inner.policy, &request, &report.message, self.now());
            entries.extend(events.iter().map(|e| self.entry(EntryKind::Decision, e.to_string(), BTreeMap::new())));
            // A failure changes what the rails remember (breakers).
            Some(lock(&self.inner.guard).clone())
        } else {
            None
        };
        self.commit(run, RunUpdate { entries, guard, audit: vec![audit], ..RunUpdate::default() }).await?;
        Ok(if failed {
            StepEnd::Failed(format!("step {step_id}: {}", report.message))
        } else {
            StepEnd::Done(step_state(report.status.as_str(), evidence))
        })
    }

    /// A step that reads a secret param whose value a person gave and the
    /// run no longer holds (the coordinator restarted: secret values are
    /// kept in memory only) fails, saying so; it never runs with a blank
    /// or with the default the person overrode.
    async fn lost_secrets(
        &self,
        run: &mut RunRecord,
        step_id: &str,
        action: &Action,
        when: Option<&remedy_shared::runbook::Condition>,
    ) -> Result<Option<StepEnd>, RecordError> {
        let lost = run.lost_secrets(action, when);
        if lost.is_empty() {
            return Ok(None);
        }
        let message = format!(
            "step {step_id} not run: secret parameter {} was not kept across the coordinator's restart \
             (secret values are held in memory only); start the run again",
            lost.join(", ")
        );
        let details = step_details(run, step_id);
        self.save(run, vec![self.entry(EntryKind::Result, message.clone(), details)], None).await?;
        Ok(Some(StepEnd::Failed(message)))
    }

    /// The term this coordinator acts under, confirmed against the Lease
    /// now; `None` when it acts alone. `Err`: it must not act.
    async fn confirm_term(&self, step_id: &str) -> Result<Option<FencingToken>, String> {
        let Some(elector) = self.inner.fence.get() else {
            return Ok(None);
        };
        let refused = |why: String| format!("step {step_id} not run: this coordinator does not hold the lease: {why}");
        let token = elector.current().fencing.ok_or_else(|| refused("not leading".into()))?;
        elector.check(&token).await.map_err(|e| refused(e.to_string()))?;
        Ok(Some(token))
    }

    /// Asks the rails; waits for a person when approval is needed. `Ok`
    /// means go ahead (the execution is already counted), with the risk the
    /// approval accepted when it stated one; `Err`, how the step ends.
    async fn weigh(
        &self,
        run: &mut RunRecord,
        request: &ActionRequest,
    ) -> Result<Result<Option<AcceptedRisk>, StepEnd>, RecordError> {
        let mut last_outcome = "";
        loop {
            let at = self.now();
            let policy = self.inner.policy_now();
            let (decision, events, accepted) = {
                let mut g = lock(&self.inner.guard);
                // Forget what no rail looks back to any more, so the memory
                // (decided on and saved at every step) stays bounded.
                g.prune(&policy, at);
                let (decision, events) = guard::decide(&policy, &mut g, request, at);
                // Read before counting the execution, which uses the
                // approval up.
                let accepted = g.accepted_risk(&request.approval_key()).map(|(risk, by)| AcceptedRisk { risk, by });
                if decision.is_allowed() || matches!(decision, Decision::WouldNeedApproval { .. }) {
                    g.record_executed(request, at);
                }
                (decision, events, accepted)
            };
            // While waiting for a person the same decision comes back on
            // every wake-up; the timeline gets it once.
            if decision.outcome() != last_outcome || !events.is_empty() {
                let note = decision.note(request);
                let mut entries =
                    vec![TimelineEntry { at, kind: EntryKind::Decision, message: note.message, details: note.details }];
                entries.extend(events.iter().map(|e| self.entry(EntryKind::Approval, e.to_string(), BTreeMap::new())));
                self.save_with_guard(run, entries).await?;
            }
            last_outcome = decision.outcome();
            match decision {
                Decision::Allow => return Ok(Ok(accepted)),
                Decision::WouldAllow | Decision::WouldNeedApproval { .. } => return Ok(Ok(None)),
                Decision::Refuse(refusal) => {
                    let labels = crate::metrics::RefusalLabels {
                        kind: request.action_kind.clone(),
                        reason: refusal.rail().to_owned(),
                    };
                    self.inner.recorder.metrics().refusals.get_or_create(&labels).inc();
                    return Ok(Err(StepEnd::Refused(format!("step {}: refused: {refusal}", request.step_id))));
                }
                Decision::Escalate(why) => return Ok(Err(StepEnd::Escalate(why.to_string()))),
                Decision::NeedsApproval { expires_at, .. } => {
                    if !self.still_open(run).await? {
                        return Ok(Err(StepEnd::Skipped));
                    }
                    self.await_answer(expires_at).await;
                }
            }
        }
    }

    /// Waits until an approval is answered somewhere, or `until` passes.
    async fn await_answer(&self, until: Timestamp) {
        let wait = Duration::from_millis(u64::try_from(until.as_millis() - self.now().as_millis()).unwrap_or(0));
        // Bounded by the request's expiry; re-checked at least every minute
        // so a resolved incident does not keep a waiting task.
        let wait = wait.min(Duration::from_secs(60));
        let _ = tokio::time::timeout(wait, self.inner.answered.notified()).await;
    }

    /// The parameters an actuator receives, and why the action cannot run
    /// for real here (no actuator, an unconfigured webhook).
    fn call_params(&self, action: &Action) -> (serde_json::Value, Option<String>) {
        if let Some(why) = self.inner.rehearsal_reason(action) {
            return (serde_json::Value::Null, Some(why));
        }
        let kind = action.kind().as_str();
        let json = serde_json::to_value(action).unwrap_or_default();
        (json.get(kind).cloned().unwrap_or_default(), None)
    }

    async fn call(
        &self,
        run: &RunRecord,
        step_id: &str,
        kind: &str,
        params: serde_json::Value,
        dry_run: bool,
        accepted_risk: Option<AcceptedRisk>,
    ) -> ActionReport {
        let call = ActionCall { accepted_risk, ..call_for(run, step_id, kind, params, dry_run) };
        // The actuators bound their own calls; this bounds a misbehaving one.
        match tokio::time::timeout(DEFAULT_DEADLINE + Duration::from_secs(5), self.inner.actuators.execute(&call)).await
        {
            Ok(report) => report,
            Err(_) => {
                ActionReport::new(ActionStatus::TimedOut, format!("{kind} did not finish within {DEFAULT_DEADLINE:?}"))
            }
        }
    }

    async fn verify(&self, run: &mut RunRecord, runbook: &Runbook) -> Result<Verified, RecordError> {
        let Some(verification) = &runbook.verification else {
            // Nothing to check against: steps that failed are the verdict.
            if run.failures.is_empty() {
                return Ok(Verified::Yes(Verification::NotConfigured));
            }
            return Ok(Verified::No(format!("no verification, and steps failed: {}", run.failures.join("; "))));
        };
        // A check that can only be rehearsed proves nothing: say so now
        // rather than wait out the deadline.
        let blind: Vec<String> = verification
            .checks
            .iter()
            .filter(|c| !self.inner.actuators.available(c.action.kind().as_str()))
            .map(|c| format!("{} ({})", c.id, c.action.kind().as_str()))
            .collect();
        if !blind.is_empty() {
            let why = format!("verification cannot run here: no actuator for {}", blind.join(", "));
            self.save(run, vec![self.entry(EntryKind::Verification, why.clone(), BTreeMap::new())], None).await?;
            return Ok(Verified::No(why));
        }
        let deadline = self.now().plus(verification.within);
        let mut round = 0u32;
        loop {
            round += 1;
            if !self.still_open(run).await? {
                return Ok(Verified::Cancelled);
            }
            let mut failing = Vec::new();
            let mut rehearsed = Vec::new();
            for check in &verification.checks {
                match self.check(run, runbook, check, round).await? {
                    Err(why) => failing.push(why),
                    Ok(StepState::Rehearsed) => rehearsed.push(check.id.clone()),
                    Ok(_) => {}
                }
            }
            if failing.is_empty() && !rehearsed.is_empty() {
                // A rehearsed check looked at nothing real: it proves nothing.
                let message = format!(
                    "verification round {round}: only rehearsed ({}); nothing was verified against the real system",
                    rehearsed.join(", ")
                );
                self.save(run, vec![self.entry(EntryKind::Verification, message, BTreeMap::new())], None).await?;
                return Ok(Verified::Yes(Verification::Unverified));
            }
            if failing.is_empty() {
                let message = format!("verification passed (round {round})");
                self.save(run, vec![self.entry(EntryKind::Verification, message, BTreeMap::new())], None).await?;
                return Ok(Verified::Yes(Verification::Passed));
            }
            let message = format!("verification round {round} not passed: {}", failing.join("; "));
            self.save(run, vec![self.entry(EntryKind::Verification, message, BTreeMap::new())], None).await?;
            if self.now().plus(verification.interval) > deadline {
                return Ok(Verified::No(format!(
                    "verification did not pass within {}",
                    remedy_shared::config::format_duration(verification.within)
                )));
            }
            tokio::time::sleep(verification.interval).await;
        }
    }

    /// One round of one check: how its action ended, or why it did not
    /// pass.
    async fn check(
        &self,
        run: &mut RunRecord,
        runbook: &Runbook,
        check: &remedy_shared::runbook::Check,
        round: u32,
    ) -> Result<Result<StepState, String>, RecordError> {
        let id = check.id.as_str();
        // Rounds are attempts of the check, so each has its own key.
        let attempt = run.attempt;
        run.attempt = attempt.saturating_mul(1000).saturating_add(round);
        let end = self.action(run, runbook, id, &check.action, false, false).await?;
        run.attempt = attempt;
        let state = match end {
            StepEnd::Failed(why) | StepEnd::Refused(why) | StepEnd::Escalate(why) | StepEnd::Fenced(why) => {
                return Ok(Err(why));
            }
            StepEnd::Done(state) => state,
            StepEnd::Skipped => StepState::Skipped,
        };
        let Some(expect) = &check.expect else {
            return Ok(Ok(state));
        };
        Ok(match expect.evaluate(&run.template_context(runbook).to_json()) {
            Ok(true) => Ok(state),
            Ok(false) => Err(format!("{id}: `{}` is false", expect.as_str())),
            Err(e) => Err(format!("{id}: `{}` cannot be evaluated: {e}", expect.as_str())),
        })
    }

    /// Ends a run whose verification did not fail, with its outcome: what
    /// really changed, what was only rehearsed, refused or failed (the
    /// steps the runbook went on past are named), and whether verification
    /// really ran. The record never says more than what happened.
    async fn succeed(
        &self,
        run: &mut RunRecord,
        runbook: &Runbook,
        verification: Verification,
    ) -> Result<(), RecordError> {
        run.status = RunStatus::Succeeded;
        let outcome = RunOutcome::judge(&run.steps, verification);
        run.outcome = Some(outcome);
        let mut message = format!("runbook {} finished: {}", runbook.id(), outcome.describe());
        if !run.failures.is_empty() {
            message.push_str(&format!("; did not: {}", run.failures.join("; ")));
        }
        let incident = self.inner.recorder.open_incident(run.incident_id).await?;
        // A person's run has no signal that will clear it; an alert or a
        // finding clears the incident itself when it ends.
        let only_people =
            incident.as_ref().is_some_and(|i| i.active_sources.keys().all(|s| s.starts_with("remedyctl:")));
        let mut update = RunUpdate {
            entries: vec![self.entry(EntryKind::Runbook, message, outcome_details(&outcome))],
            resolve: only_people.then(|| (format!("runbook {}", runbook.id()), outcome.describe())),
            ..RunUpdate::default()
        };
        scrub(run, &mut update);
        self.inner.recorder.run_update(RunUpdate { run: Some(run.clone()), ..update }).await
    }

    /// Hands the incident to people: its state says so, and (for a live
    /// run) the escalator starts the policy's climb, telling each level
    /// in turn until someone acknowledges or the incident resolves. A
    /// rehearsal only records who would have been called.
    async fn escalate(&self, run: &mut RunRecord, runbook: Option<&Runbook>, why: String) -> Result<(), RecordError> {
        run.status = RunStatus::Escalated;
        // Escalated before verification (a step failed or was refused):
        // nothing was verified.
        let outcome = *run.outcome.get_or_insert_with(|| RunOutcome::judge(&run.steps, Verification::Unverified));
        let policy = runbook.map(|r| r.escalation.policy.clone()).unwrap_or_default();
        let mut details = BTreeMap::from([("policy".to_owned(), policy.clone()), ("reason".to_owned(), why.clone())]);
        details.extend(outcome_details(&outcome));
        let live = run.mode == Mode::Live && !policy.is_empty();
        let message = if policy.is_empty() {
            format!("escalated: {why}; with no escalation policy nobody is paged")
        } else if live {
            format!("escalated to {policy}: {why}")
        } else {
            format!("{}would escalate to {policy}: {why}", mode_prefix(run.mode))
        };
        let update = RunUpdate {
            state: Some(IncidentState::Escalated),
            entries: vec![self.entry(EntryKind::Escalated, message, details)],
            escalate: live.then_some((policy, why)),
            ..RunUpdate::default()
        };
        self.commit(run, update).await
    }
}

/// Hides the run's secret values in everything about to be written: what
/// an action's report, its URL, its evidence or an error echoes of them.
/// The record (and so the store) never holds the values themselves: they
/// are not serialized, and the recorded params leave them out.
fn scrub(run: &mut RunRecord, update: &mut RunUpdate) {
    let secrets = &run.secret_values;
    if secrets.is_empty() {
        return;
    }
    for entry in &mut update.entries {
        entry.message = secrets.scrub(&entry.message);
        entry.details.values_mut().for_each(|v| *v = secrets.scrub(v));
    }
    for audit in &mut update.audit {
        audit.target = secrets.scrub(&audit.target);
        audit.outcome = secrets.scrub(&audit.outcome);
        audit.arguments.values_mut().for_each(|v| *v = secrets.scrub(v));
    }
    for (_, why) in update.escalate.iter_mut().chain(update.resolve.iter_mut()) {
        *why = secrets.scrub(why);
    }
    run.failures.iter_mut().for_each(|f| *f = secrets.scrub(f));
    run.context.steps.values_mut().for_each(|v| secrets.scrub_json(v));
}

impl StepEnd {
    /// The state a step that ended so is recorded with; `None` when the run
    /// stops here without a verdict on it (fenced).
    fn state(&self) -> Option<StepState> {
        match self {
            StepEnd::Done(state) => Some(*state),
            StepEnd::Skipped => Some(StepState::Skipped),
            StepEnd::Failed(_) => Some(StepState::Failed),
            // Sent to a person instead of acting: nothing was done.
            StepEnd::Refused(_) | StepEnd::Escalate(_) => Some(StepState::Refused),
            StepEnd::Fenced(_) => None,
        }
    }
}

/// A step's state from its action's status (`succeeded`, `dry_run`, ...):
/// a live success of a change is the only thing that counts as a change.
fn step_state(status: &str, evidence: bool) -> StepState {
    match status {
        "succeeded" if evidence => StepState::Observed,
        "succeeded" => StepState::Succeeded,
        "dry_run" => StepState::Rehearsed,
        _ => StepState::Failed,
    }
}

fn call_for(run: &RunRecord, step_id: &str, kind: &str, params: serde_json::Value, dry_run: bool) -> ActionCall {
    ActionCall {
        incident_id: run.incident_id.to_string(),
        step_id: step_id.to_owned(),
        kind: kind.to_owned(),
        params,
        dry_run,
        deadline: DEFAULT_DEADLINE,
        accepted_risk: None,
    }
}

enum Verified {
    /// Nothing failed; how much that proves.
    Yes(Verification),
    No(String),
    Cancelled,
}

/// A run's outcome as timeline details: `outcome` (the verdict),
/// `verification`, and `steps.<state>` for every state.
fn outcome_details(outcome: &RunOutcome) -> BTreeMap<String, String> {
    let c = outcome.steps;
    let mut details = BTreeMap::from([
        ("outcome".to_owned(), outcome.verdict.as_str().to_owned()),
        ("verification".to_owned(), outcome.verification.as_str().to_owned()),
    ]);
    for (n, state) in [
        (c.succeeded, StepState::Succeeded),
        (c.observed, StepState::Observed),
        (c.rehearsed, StepState::Rehearsed),
        (c.refused, StepState::Refused),
        (c.failed, StepState::Failed),
        (c.skipped, StepState::Skipped),
    ] {
        details.insert(format!("steps.{}", state.as_str()), n.to_string());
    }
    details
}

fn mode_prefix(mode: Mode) -> String {
    match mode {
        Mode::Live => String::new(),
        other => format!("[{other}] "),
    }
}

/// An action's evidence as `steps.<id>`: numbers and booleans typed, so
/// conditions compare them as such; `ok` says whether the action succeeded.
fn evidence_json(report: &ActionReport) -> serde_json::Value {
    let mut map = serde_json::Map::new();
    for (k, v) in &report.evidence {
        let value = match v.as_str() {
            "true" => serde_json::Value::Bool(true),
            "false" => serde_json::Value::Bool(false),
            text => match text.parse::<f64>() {
                Ok(n) if n.is_finite() => serde_json::json!(n),
                _ => serde_json::Value::String(text.to_owned()),
            },
        };
        map.insert(k.clone(), value);
    }
    // A rehearsal gathered nothing: `ok` stays undefined, so a condition on
    // it says it cannot be evaluated rather than read a failure into it.
    if report.status != ActionStatus::DryRun {
        map.entry("ok").or_insert(serde_json::Value::Bool(report.status == ActionStatus::Succeeded));
    }
    map.insert("status_text".into(), serde_json::Value::String(report.status.as_str().to_owned()));
    serde_json::Value::Object(map)
}

/// Why a step of `kind` rehearses when no actuator here performs it: the
/// Kubernetes kinds need a cluster configured; any other kind has no
/// actuator in this release.
fn unavailable_reason(kind: &str) -> String {
    if crate::actuators::kube::KINDS.contains(&kind) {
        format!(
            "no Kubernetes cluster is configured, so `{kind}` is only rehearsed (set `kubernetes` in the configuration or --kubeconfig)"
        )
    } else {
        format!("no actuator performs `{kind}` in this release")
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_kubernetes_step_rehearses_because_no_cluster_is_configured() {
        let why = super::unavailable_reason("list_pods");
        assert!(why.contains("no Kubernetes cluster is configured") && why.contains("list_pods"), "{why}");
        assert!(!why.contains("in this release"), "{why}");
        assert!(super::unavailable_reason("teleport").contains("no actuator performs `teleport`"));
    }
}
