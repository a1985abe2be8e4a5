//! The single writer: every change to findings, agents and incidents goes
//! through one thread that owns the in-memory state and the store's write
//! side.
//!
//! Streams send commands over a bounded channel and wait for the reply. The
//! writer takes whatever commands are queued, applies them to a staged copy
//! of the state, commits them in one durable transaction and only then
//! answers and publishes. One fsync covers many agents' batches (group
//! commit), which is how persistence keeps up with thousands of streams;
//! and because replies wait for the commit, an acknowledgement can never run
//! ahead of the data.

use std::collections::HashMap;
use std::sync::Arc;

use remedy_shared::Timestamp;
use remedy_shared::alert::Alert;
use remedy_shared::audit::AuditEntry;
use remedy_shared::escalation::Progress;
use remedy_shared::finding::ConditionKind;
use remedy_shared::finding::{ConditionKey, Finding};
use remedy_shared::guard::{self, GuardState};
use remedy_shared::incident::{self, EntryKind, Incident, IncidentId, IncidentState, Outcome, Signal, TimelineEntry};
use remedy_shared::run::{Catalog, RunRecord};
use remedy_shared::runbook::{AcrossNodesSum, AlertContext, FindingContext, IncidentContext, Runbook, TemplateContext};
use remedy_shared::sequence::{Accept, SequenceError, SequenceTracker};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::store::{AgentRecord, COORDINATOR_SOURCE, Counters, Loaded, Store, StoreError, StoredFinding, WriteBatch};

/// Most commands folded into one transaction.
const MAX_GROUP: usize = 512;
/// Most findings (and alerts) folded into one transaction.
const MAX_GROUP_FINDINGS: usize = 8_192;

/// What an agent announced in its hello.
#[derive(Debug, Clone)]
pub struct AgentHello {
    /// Identity.
    pub agent_id: String,
    /// Node.
    pub node_name: String,
    /// Version.
    pub version: String,
    /// Local actions.
    pub capabilities: Vec<String>,
    /// Node labels.
    pub labels: std::collections::BTreeMap<String, String>,
}

/// The answer to a finding batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchReceipt {
    /// Highest contiguous sequence persisted for the agent.
    pub acked: u64,
    /// Findings persisted by this batch.
    pub new: usize,
    /// Findings already persisted before.
    pub duplicates: usize,
}

/// Why a command failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RecordError {
    /// The batch broke the sequence rules; nothing of it was kept.
    #[error("{0}")]
    Sequence(#[from] SequenceError),
    /// Findings from an agent that never said hello on this coordinator.
    #[error("agent `{0}` has not said hello")]
    UnknownAgent(String),
    /// The store refused the write; nothing was acknowledged.
    #[error("{0}")]
    Store(String),
    /// The writer stopped (the coordinator is shutting down).
    #[error("the coordinator is shutting down")]
    Stopped,
    /// The writer's queue is full; the caller should shed and retry later.
    #[error("the coordinator's queue is full")]
    QueueFull,
    /// No open incident has this id.
    #[error("no open incident {0}")]
    NoOpenIncident(IncidentId),
    /// A person's command does not apply to the incident as it stands.
    #[error("{0}")]
    Transition(#[from] incident::TransitionError),
    /// A manual run named a runbook or params the catalog does not have.
    #[error("{0}")]
    BadRun(String),
}

/// What the engine writes after a step: the run, the incident's new state,
/// timeline entries, and the rails' memory, in one transaction.
#[derive(Debug, Default)]
pub struct RunUpdate {
    /// The run as it now stands.
    pub run: Option<RunRecord>,
    /// The incident's new state, for the run's incident.
    pub state: Option<IncidentState>,
    /// Entries for the run's incident (or, without a run, `incident`).
    pub entries: Vec<TimelineEntry>,
    /// The incident the entries are for when there is no run.
    pub incident: Option<IncidentId>,
    /// Close the incident (verification passed with no source left).
    pub resolve: Option<String>,
    /// The rails' memory, when it changed.
    pub guard: Option<GuardState>,
    /// Audit entries, written in the same transaction.
    pub audit: Vec<AuditEntry>,
    /// Hand the incident to people: start its escalation policy's climb
    /// (policy, why), unless one is already under way.
    pub escalate: Option<(String, String)>,
}

/// What the escalator writes after telling people: the climb's progress,
/// what the timeline records, and the state after a lapsed
/// acknowledgement.
#[derive(Debug, Clone)]
pub struct EscalationUpdate {
    /// The incident.
    pub id: IncidentId,
    /// The hold the escalator saw when it decided (`held_since`): a person
    /// who acknowledged meanwhile keeps their hold.
    pub seen_hold: Option<Timestamp>,
    /// The news the escalator saw (and sent): news that arrived meanwhile
    /// stays to be sent.
    pub seen_news: Option<String>,
    /// The progress after telling.
    pub progress: remedy_shared::escalation::Progress,
    /// Entries: who was told through which channel, what failed.
    pub entries: Vec<TimelineEntry>,
    /// The new state, if the decision changed it.
    pub state: Option<IncidentState>,
}

/// A person's request to run a runbook now.
#[derive(Debug, Clone)]
pub struct ManualRun {
    /// The runbook.
    pub runbook_id: String,
    /// Param overrides.
    pub params: std::collections::BTreeMap<String, String>,
    /// Rehearse only.
    pub dry_run: bool,
    /// Who asked.
    pub by: String,
}

/// The answer to a batch of alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertReceipt {
    /// Alert notifications recorded for the first time.
    pub new: usize,
    /// Notifications seen before (retries, the other Alertmanager replica).
    pub duplicates: usize,
}

/// How long an alert notification's key is remembered. Retries and HA
/// replicas repeat a notification within minutes; a week is generous, and
/// bounds the memory the keys take.
const ALERT_KEY_RETENTION: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

enum Command {
    Hello {
        hello: AgentHello,
        reply: oneshot::Sender<Result<u64, RecordError>>,
    },
    Findings {
        agent_id: String,
        findings: Vec<(u64, Finding)>,
        oldest_retained: u64,
        reply: oneshot::Sender<Result<BatchReceipt, RecordError>>,
    },
    Raise {
        findings: Vec<Finding>,
        node_name: String,
    },
    Alerts {
        alerts: Vec<Alert>,
        reply: oneshot::Sender<Result<AlertReceipt, RecordError>>,
    },
    Sweep,
    Run {
        update: Box<RunUpdate>,
        reply: oneshot::Sender<Result<(), RecordError>>,
    },
    Manual {
        run: ManualRun,
        reply: oneshot::Sender<Result<IncidentId, RecordError>>,
    },
    Acknowledge {
        id: IncidentId,
        by: String,
        reply: oneshot::Sender<Result<Incident, RecordError>>,
    },
    Resolve {
        id: IncidentId,
        by: String,
        reason: String,
        reply: oneshot::Sender<Result<Incident, RecordError>>,
    },
    Open {
        id: IncidentId,
        reply: oneshot::Sender<Option<Incident>>,
    },
    Escalation {
        update: Box<EscalationUpdate>,
        reply: oneshot::Sender<Result<(), RecordError>>,
    },
}

/// Handle to the writer.
#[derive(Debug, Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Command>,
    events: broadcast::Sender<Incident>,
    store_failure: StoreFailure,
}

/// Why the last store commit failed; `None` once a commit succeeds again.
type StoreFailure = Arc<std::sync::Mutex<Option<String>>>;

/// Runs the writer committed: new ones, and those found unfinished at start.
pub type RunFeed = mpsc::UnboundedReceiver<RunRecord>;

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Hello { .. } => "Hello",
            Command::Findings { .. } => "Findings",
            Command::Raise { .. } => "Raise",
            Command::Alerts { .. } => "Alerts",
            Command::Sweep => "Sweep",
            Command::Run { .. } => "Run",
            Command::Manual { .. } => "Manual",
            Command::Acknowledge { .. } => "Acknowledge",
            Command::Resolve { .. } => "Resolve",
            Command::Open { .. } => "Open",
            Command::Escalation { .. } => "Escalation",
        })
    }
}

impl Command {
    /// How much work the command is, for grouping.
    fn weight(&self) -> usize {
        match self {
            Command::Findings { findings, .. } => findings.len().max(1),
            Command::Raise { findings, .. } => findings.len().max(1),
            Command::Alerts { alerts, .. } => alerts.len().max(1),
            _ => 1,
        }
    }
}

impl Recorder {
    /// Loads the state from `store` and starts the writer thread, matching
    /// signals against `catalog`. Returns the feed of runs to execute: the
    /// unfinished runs found in the store first, then each new run once it
    /// is committed.
    pub fn start(
        store: Arc<dyn Store>,
        metrics: Metrics,
        catalog: Arc<Catalog>,
    ) -> Result<(Recorder, RunFeed, Option<GuardState>), StoreError> {
        Self::start_with_clock(store, metrics, catalog, Clock::System)
    }

    /// As [`Recorder::start`], stamping with `clock`.
    pub fn start_with_clock(
        store: Arc<dyn Store>,
        metrics: Metrics,
        catalog: Arc<Catalog>,
        clock: Clock,
    ) -> Result<(Recorder, RunFeed, Option<GuardState>), StoreError> {
        let mut loaded = store.load()?;
        let guard = loaded.guard.take();
        let (tx, rx) = mpsc::channel(4096);
        let (events, _) = broadcast::channel(4096);
        let (runs_tx, runs_rx) = mpsc::unbounded_channel();
        for run in loaded.runs.iter().filter(|r| !r.status.is_finished()) {
            let _ = runs_tx.send(run.clone());
        }
        let store_failure = StoreFailure::default();
        let writer = Writer {
            clock,
            ..Writer::new(store, loaded, events.clone(), metrics, catalog, runs_tx, store_failure.clone())
        };
        std::thread::Builder::new()
            .name("recorder".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok((Recorder { tx, events, store_failure }, runs_rx, guard))
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, RecordError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| RecordError::Stopped)?;
        rx.await.map_err(|_| RecordError::Stopped)
    }

    /// Commits what the engine did; returns once it is durable.
    pub async fn run_update(&self, update: RunUpdate) -> Result<(), RecordError> {
        self.ask(|reply| Command::Run { update: Box::new(update), reply }).await?
    }

    /// Appends one entry to the audit log, durably.
    pub async fn audit(&self, entry: AuditEntry) -> Result<(), RecordError> {
        self.run_update(RunUpdate { audit: vec![entry], ..RunUpdate::default() }).await
    }

    /// Opens an incident for a person's run of a runbook, with its run, in
    /// one transaction.
    pub async fn manual_run(&self, run: ManualRun) -> Result<IncidentId, RecordError> {
        self.ask(|reply| Command::Manual { run, reply }).await?
    }

    /// A person acknowledges an open incident.
    pub async fn acknowledge(&self, id: IncidentId, by: String) -> Result<Incident, RecordError> {
        self.ask(|reply| Command::Acknowledge { id, by, reply }).await?
    }

    /// A person resolves an open incident.
    pub async fn resolve(&self, id: IncidentId, by: String, reason: String) -> Result<Incident, RecordError> {
        self.ask(|reply| Command::Resolve { id, by, reason, reply }).await?
    }

    /// Commits what the escalator did; returns once it is durable.
    pub async fn escalation_update(&self, update: EscalationUpdate) -> Result<(), RecordError> {
        self.ask(|reply| Command::Escalation { update: Box::new(update), reply }).await?
    }

    /// The incident as it stands, if it is open.
    pub async fn open_incident(&self, id: IncidentId) -> Result<Option<Incident>, RecordError> {
        self.ask(|reply| Command::Open { id, reply }).await
    }

    /// Registers an agent; returns its highest contiguous persisted sequence.
    pub async fn hello(&self, hello: AgentHello) -> Result<u64, RecordError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Command::Hello { hello, reply }).await.map_err(|_| RecordError::Stopped)?;
        rx.await.map_err(|_| RecordError::Stopped)?
    }

    /// Persists a batch of findings from an agent.
    pub async fn findings(
        &self,
        agent_id: String,
        findings: Vec<(u64, Finding)>,
        oldest_retained: u64,
    ) -> Result<BatchReceipt, RecordError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Findings { agent_id, findings, oldest_retained, reply })
            .await
            .map_err(|_| RecordError::Stopped)?;
        rx.await.map_err(|_| RecordError::Stopped)?
    }

    /// Records findings the coordinator itself raised (for example a stale agent).
    pub async fn raise(&self, findings: Vec<Finding>, node_name: String) {
        let _ = self.tx.send(Command::Raise { findings, node_name }).await;
    }

    /// Records Alertmanager alerts, each notification once. Refuses at once
    /// with [`RecordError::QueueFull`] rather than wait when the writer is
    /// saturated: Alertmanager retries, and a webhook must answer quickly.
    pub async fn alerts(&self, alerts: Vec<Alert>) -> Result<AlertReceipt, RecordError> {
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(Command::Alerts { alerts, reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => RecordError::QueueFull,
            mpsc::error::TrySendError::Closed(_) => RecordError::Stopped,
        })?;
        rx.await.map_err(|_| RecordError::Stopped)?
    }

    /// Asks the writer to expire findings that were not refreshed in time.
    pub async fn sweep(&self) {
        let _ = self.tx.send(Command::Sweep).await;
    }

    /// Why the store refused the last commit, while it keeps refusing: a
    /// coordinator that cannot commit acknowledges nothing and is not ready.
    pub fn store_failure(&self) -> Option<String> {
        self.store_failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Every committed change to an incident, in commit order.
    pub fn subscribe(&self) -> broadcast::Receiver<Incident> {
        self.events.subscribe()
    }
}

struct Writer {
    store: Arc<dyn Store>,
    agents: HashMap<String, AgentRecord>,
    open: HashMap<ConditionKey, Incident>,
    counters: Counters,
    /// Alert notifications already recorded, with when.
    alert_keys: HashMap<String, Timestamp>,
    events: broadcast::Sender<Incident>,
    metrics: Metrics,
    catalog: Arc<Catalog>,
    /// Runs of open incidents, and unfinished runs.
    runs: HashMap<IncidentId, RunRecord>,
    /// Open incidents by id.
    ids: HashMap<IncidentId, ConditionKey>,
    /// Aggregated triggers' sums, by (runbook, trigger index), with whether
    /// each fired last time it was judged.
    sums: HashMap<(String, usize), (AcrossNodesSum, bool)>,
    new_runs: mpsc::UnboundedSender<RunRecord>,
    store_failure: StoreFailure,
    /// Stamps every group of commands.
    clock: Clock,
}

/// What made a signal, for trigger matching.
#[derive(Clone, Copy)]
enum Cause<'a> {
    Alert(&'a Alert),
    Finding { source: &'a str, finding: &'a Finding },
    Runbook(&'a str),
}

/// Changes staged for one transaction, on top of the writer's state.
#[derive(Default)]
struct Stage {
    agents: HashMap<String, AgentRecord>,
    /// Post-transaction view of open incidents touched (None: closed).
    open: HashMap<ConditionKey, Option<Incident>>,
    counters: Option<Counters>,
    alert_keys: HashMap<String, Timestamp>,
    batch: WriteBatch,
    /// Incidents changed in this transaction, latest version, in order of
    /// first change: a thousand findings joining one incident write it once.
    changed: HashMap<IncidentId, Incident>,
    changed_order: Vec<IncidentId>,
    /// Runs staged now, by incident.
    runs: HashMap<IncidentId, RunRecord>,
    /// Sums staged now.
    sums: HashMap<(String, usize), (AcrossNodesSum, bool)>,
}

type Reply = Box<dyn FnOnce(Result<(), &str>) + Send>;

impl Writer {
    fn new(
        store: Arc<dyn Store>,
        loaded: Loaded,
        events: broadcast::Sender<Incident>,
        metrics: Metrics,
        catalog: Arc<Catalog>,
        new_runs: mpsc::UnboundedSender<RunRecord>,
        store_failure: StoreFailure,
    ) -> Self {
        let sums = catalog
            .aggregated_triggers()
            .filter_map(|(id, i, t)| AcrossNodesSum::for_trigger(t).map(|sum| ((id.to_owned(), i), (sum, false))))
            .collect();
        Writer {
            store,
            agents: loaded.agents.into_iter().map(|a| (a.agent_id.clone(), a)).collect(),
            ids: loaded.open_incidents.iter().map(|i| (i.id, i.key.clone())).collect(),
            open: loaded.open_incidents.into_iter().map(|i| (i.key.clone(), i)).collect(),
            counters: loaded.counters,
            alert_keys: loaded.alert_keys.into_iter().collect(),
            events,
            metrics,
            catalog,
            runs: loaded.runs.into_iter().map(|r| (r.incident_id, r)).collect(),
            sums,
            new_runs,
            store_failure,
            clock: Clock::System,
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(first) = rx.blocking_recv() {
            let mut weight = first.weight();
            let mut group = vec![first];
            // Group by work, not by count: 512 batches of 1,000 findings
            // would make one enormous transaction and a long wait for the
            // first of them.
            while group.len() < MAX_GROUP && weight < MAX_GROUP_FINDINGS {
                match rx.try_recv() {
                    Ok(cmd) => {
                        weight += cmd.weight();
                        group.push(cmd);
                    }
                    Err(_) => break,
                }
            }
            self.apply_group(group);
        }
    }

    fn apply_group(&mut self, group: Vec<Command>) {
        let now = self.clock.now();
        let mut stage = Stage::default();
        let mut replies: Vec<Reply> = Vec::with_capacity(group.len());
        for cmd in group {
            match cmd {
                Command::Hello { hello, reply } => {
                    let acked = self.stage_hello(&mut stage, hello, now);
                    replies.push(Box::new(move |r| {
                        let _ = reply.send(r.map(|()| acked).map_err(|e| RecordError::Store(e.to_owned())));
                    }));
                }
                Command::Findings { agent_id, findings, oldest_retained, reply } => {
                    match self.stage_findings(&mut stage, &agent_id, findings, oldest_retained, now) {
                        Ok(receipt) => replies.push(Box::new(move |r| {
                            let _ = reply.send(r.map(|()| receipt).map_err(|e| RecordError::Store(e.to_owned())));
                        })),
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
                Command::Raise { findings, node_name } => self.stage_own(&mut stage, findings, &node_name, now),
                Command::Alerts { alerts, reply } => {
                    let receipt = self.stage_alerts(&mut stage, alerts, now);
                    replies.push(Box::new(move |r| {
                        let _ = reply.send(r.map(|()| receipt).map_err(|e| RecordError::Store(e.to_owned())));
                    }));
                }
                Command::Sweep => self.stage_sweep(&mut stage, now),
                Command::Run { update, reply } => match self.stage_run_update(&mut stage, *update, now) {
                    Ok(()) => replies.push(Box::new(move |r| {
                        let _ = reply.send(r.map_err(|e| RecordError::Store(e.to_owned())));
                    })),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                Command::Manual { run, reply } => match self.stage_manual(&mut stage, run, now) {
                    Ok(id) => replies.push(Box::new(move |r| {
                        let _ = reply.send(r.map(|()| id).map_err(|e| RecordError::Store(e.to_owned())));
                    })),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                Command::Acknowledge { id, by, reply } => {
                    let staged = self.stage_transition(&mut stage, id, |i| incident::acknowledge(i, &by, now));
                    Self::reply_incident(&mut replies, reply, staged);
                }
                Command::Resolve { id, by, reason, reply } => {
                    let staged = self.stage_transition(&mut stage, id, |i| incident::resolve(i, &by, &reason, now));
                    Self::reply_incident(&mut replies, reply, staged);
                }
                Command::Open { id, reply } => {
                    let _ = reply.send(self.current(&stage, id));
                }
                Command::Escalation { update, reply } => match self.stage_escalation(&mut stage, *update, now) {
                    Ok(()) => replies.push(Box::new(move |r| {
                        let _ = reply.send(r.map_err(|e| RecordError::Store(e.to_owned())));
                    })),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
            }
        }
        if let Some(c) = stage.counters {
            stage.batch.counters = Some(c);
        }
        stage.batch.incidents.extend(stage.changed_order.iter().filter_map(|id| stage.changed.get(id)).cloned());
        stage.batch.agents.extend(stage.agents.values().cloned());
        let result = self.store.commit(&stage.batch);
        self.metrics.store_commits.inc();
        // An empty batch touches nothing, so it says nothing about the store.
        if !stage.batch.is_empty() {
            *self.store_failure.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                result.as_ref().err().map(ToString::to_string);
        }
        match result {
            Ok(()) => {
                self.merge(stage);
                for reply in replies {
                    reply(Ok(()));
                }
            }
            Err(e) => {
                self.metrics.store_commit_errors.inc();
                tracing::error!(error = %e, "store commit failed; nothing in this group is acknowledged");
                let message = e.to_string();
                for reply in replies {
                    reply(Err(&message));
                }
            }
        }
    }

    fn reply_incident(
        replies: &mut Vec<Reply>,
        reply: oneshot::Sender<Result<Incident, RecordError>>,
        staged: Result<Incident, RecordError>,
    ) {
        match staged {
            Ok(incident) => replies.push(Box::new(move |r| {
                let _ = reply.send(r.map(|()| incident).map_err(|e| RecordError::Store(e.to_owned())));
            })),
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    fn merge(&mut self, stage: Stage) {
        self.sums.extend(stage.sums);
        for (id, run) in stage.runs {
            let pending = run.status == remedy_shared::run::RunStatus::Pending;
            if pending && !self.runs.contains_key(&id) {
                let _ = self.new_runs.send(run.clone());
            }
            self.runs.insert(id, run);
        }
        self.agents.extend(stage.agents);
        self.alert_keys.extend(stage.alert_keys);
        for key in &stage.batch.forgotten_alert_keys {
            self.alert_keys.remove(key);
        }
        if let Some(c) = stage.counters {
            self.counters = c;
        }
        for (key, incident) in stage.open {
            match incident {
                Some(i) => {
                    self.ids.insert(i.id, key.clone());
                    self.open.insert(key, i);
                }
                None => {
                    if let Some(closed) = self.open.remove(&key) {
                        self.ids.remove(&closed.id);
                        // A finished run of a closed incident is no longer
                        // needed in memory; it stays in the store.
                        if self.runs.get(&closed.id).is_some_and(|r| r.status.is_finished()) {
                            self.runs.remove(&closed.id);
                        }
                    }
                }
            }
        }
        self.metrics.findings_persisted.inc_by(stage.batch.findings.len() as u64);
        self.metrics.open_incidents.set(self.open.len() as i64);
        let mut changed = stage.changed;
        for id in stage.changed_order {
            if let Some(incident) = changed.remove(&id) {
                let _ = self.events.send(incident);
            }
        }
    }

    fn agent<'a>(&'a self, stage: &'a mut Stage, agent_id: &str) -> Option<&'a mut AgentRecord> {
        if !stage.agents.contains_key(agent_id) {
            let record = self.agents.get(agent_id)?.clone();
            stage.agents.insert(agent_id.to_owned(), record);
        }
        stage.agents.get_mut(agent_id)
    }

    fn counters(&self, stage: &mut Stage) -> Counters {
        stage.counters.unwrap_or(self.counters)
    }

    fn stage_hello(&self, stage: &mut Stage, hello: AgentHello, now: Timestamp) -> u64 {
        if self.agent(stage, &hello.agent_id).is_none() {
            stage.agents.insert(
                hello.agent_id.clone(),
                AgentRecord {
                    agent_id: hello.agent_id.clone(),
                    node_name: String::new(),
                    version: String::new(),
                    capabilities: Vec::new(),
                    labels: Default::default(),
                    tracker: SequenceTracker::default(),
                    first_seen: now,
                    last_hello: now,
                },
            );
        }
        let Some(record) = stage.agents.get_mut(&hello.agent_id) else {
            return 0;
        };
        record.node_name = hello.node_name;
        record.version = hello.version;
        record.capabilities = hello.capabilities;
        record.labels = hello.labels;
        record.last_hello = now;
        record.tracker.contiguous()
    }

    fn stage_findings(
        &self,
        stage: &mut Stage,
        agent_id: &str,
        findings: Vec<(u64, Finding)>,
        oldest_retained: u64,
        now: Timestamp,
    ) -> Result<BatchReceipt, RecordError> {
        let Some(record) = self.agent(stage, agent_id) else {
            return Err(RecordError::UnknownAgent(agent_id.to_owned()));
        };
        // Check the whole batch before staging any of it: a bad batch is
        // refused whole, never half-applied.
        let mut tracker = record.tracker.clone();
        let mut verdicts = Vec::with_capacity(findings.len());
        for (sequence, _) in &findings {
            verdicts.push(tracker.record(*sequence)?);
        }
        if oldest_retained > 0 {
            tracker.settle_below(oldest_retained);
        }
        let node_name = record.node_name.clone();
        record.tracker = tracker;
        let acked = record.tracker.contiguous();
        let mut receipt = BatchReceipt { acked, new: 0, duplicates: 0 };
        for ((sequence, finding), verdict) in findings.into_iter().zip(verdicts) {
            if verdict == Accept::Duplicate {
                receipt.duplicates += 1;
                continue;
            }
            receipt.new += 1;
            self.stage_finding(stage, agent_id, &node_name, sequence, finding, now);
        }
        self.metrics.findings_duplicate.inc_by(receipt.duplicates as u64);
        Ok(receipt)
    }

    fn stage_alerts(&self, stage: &mut Stage, alerts: Vec<Alert>, now: Timestamp) -> AlertReceipt {
        let mut receipt = AlertReceipt { new: 0, duplicates: 0 };
        for alert in alerts {
            let key = alert.dedup_key();
            if self.alert_keys.contains_key(&key) || stage.alert_keys.contains_key(&key) {
                receipt.duplicates += 1;
                continue;
            }
            receipt.new += 1;
            stage.alert_keys.insert(key.clone(), now);
            stage.batch.alert_keys.push((key, now));
            self.stage_signal(stage, &Signal::from_alert(&alert), Cause::Alert(&alert), now);
        }
        self.metrics.alerts_received.inc_by(receipt.new as u64);
        self.metrics.alerts_duplicate.inc_by(receipt.duplicates as u64);
        receipt
    }

    fn stage_own(&self, stage: &mut Stage, findings: Vec<Finding>, node_name: &str, now: Timestamp) {
        for finding in findings {
            let mut counters = self.counters(stage);
            let sequence = counters.next_own_sequence;
            counters.next_own_sequence += 1;
            stage.counters = Some(counters);
            self.stage_finding(stage, COORDINATOR_SOURCE, node_name, sequence, finding, now);
        }
    }

    fn stage_finding(
        &self,
        stage: &mut Stage,
        source: &str,
        node_name: &str,
        sequence: u64,
        finding: Finding,
        now: Timestamp,
    ) {
        let incident_id = self.stage_signal(
            stage,
            &Signal::from_finding(source, &finding),
            Cause::Finding { source, finding: &finding },
            now,
        );
        self.stage_sums(stage, source, &finding, now);
        stage.batch.findings.push(StoredFinding {
            agent_id: source.to_owned(),
            sequence,
            node_name: node_name.to_owned(),
            received_at: now,
            incident_id,
            finding,
        });
    }

    /// Applies a report to its condition's open incident; returns the
    /// incident it joined, if any.
    fn stage_signal(&self, stage: &mut Stage, signal: &Signal, cause: Cause<'_>, now: Timestamp) -> Option<IncidentId> {
        let open = match stage.open.get(&signal.key) {
            Some(staged) => staged.clone(),
            None => self.open.get(&signal.key).cloned(),
        };
        let mut counters = self.counters(stage);
        match incident::apply_signal(open.as_ref(), signal, IncidentId(counters.next_incident), now) {
            Outcome::Ignored => None,
            Outcome::Changed { incident, entries, opened } => {
                if opened {
                    counters.next_incident += 1;
                    stage.counters = Some(counters);
                    self.metrics.incidents_opened.inc();
                }
                let id = incident.id;
                let (incident, entries) = self.stage_trigger(stage, incident, entries, signal, cause, now);
                self.stage_incident(stage, incident, entries);
                Some(id)
            }
        }
    }

    fn stage_incident(&self, stage: &mut Stage, mut incident: Incident, mut entries: Vec<TimelineEntry>) {
        let still_open = !incident.state.is_closed();
        // A late incident that closes clears the finding that said it was late.
        let mut cleared = None;
        if !still_open
            && incident.mttr_status.is_some()
            && let Some((closed, entry, finding)) = remedy_shared::run::mttr_check(&incident, incident.updated_at)
        {
            incident = closed;
            entries.push(entry);
            cleared = Some(finding);
        }
        stage.batch.timeline.extend(entries.into_iter().map(|e| (incident.id, e)));
        if stage.changed.insert(incident.id, incident.clone()).is_none() {
            stage.changed_order.push(incident.id);
        }
        stage.open.insert(incident.key.clone(), still_open.then_some(incident));
        if let Some(finding) = cleared {
            self.stage_own(stage, vec![finding], "", incident_now(&stage.batch));
        }
    }

    /// The run of `id`, staged or committed.
    fn run_of<'a>(&'a self, stage: &'a Stage, id: IncidentId) -> Option<&'a RunRecord> {
        stage.runs.get(&id).or_else(|| self.runs.get(&id))
    }

    /// The open incident `id`, staged or committed.
    fn current(&self, stage: &Stage, id: IncidentId) -> Option<Incident> {
        let key = self.ids.get(&id).cloned().or_else(|| {
            stage.open.iter().find(|(_, i)| i.as_ref().is_some_and(|i| i.id == id)).map(|(k, _)| k.clone())
        })?;
        match stage.open.get(&key) {
            Some(staged) => staged.clone(),
            None => self.open.get(&key).cloned(),
        }
    }

    /// If the signal holds and its incident has no run yet, finds the
    /// runbook it triggers and stages a pending run in the same
    /// transaction: a trigger committed is a run that will happen.
    fn stage_trigger(
        &self,
        stage: &mut Stage,
        mut incident: Incident,
        mut entries: Vec<TimelineEntry>,
        signal: &Signal,
        cause: Cause<'_>,
        now: Timestamp,
    ) -> (Incident, Vec<TimelineEntry>) {
        if !signal.holds || incident.state.is_closed() || self.run_of(stage, incident.id).is_some() {
            return (incident, entries);
        }
        let runbook = match cause {
            Cause::Alert(alert) => self.catalog.for_alert(alert),
            Cause::Finding { finding, .. } => self.catalog.for_finding(finding, now),
            Cause::Runbook(id) => self.catalog.get(id),
        };
        let Some(runbook) = runbook else {
            return (incident, entries);
        };
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
        let context = run_context(&incident, runbook, mode, alert, finding, runbook.params.clone());
        let run = RunRecord::new(incident.id, runbook, mode, started_by.clone(), context, now);
        incident.adopt(runbook);
        if runbook.escalation.page_on_open && incident.escalation.is_none() {
            incident.escalation = Some(Progress::start(&runbook.escalation.policy, "opened", now));
        }
        entries.push(TimelineEntry {
            at: now,
            kind: EntryKind::Runbook,
            message: format!("runbook {} ({}) matched {started_by}", runbook.id(), runbook.metadata.title),
            details: std::collections::BTreeMap::from([
                ("runbook".to_owned(), runbook.id().to_owned()),
                ("priority".to_owned(), runbook.priority.to_string()),
                ("mttr_target".to_owned(), remedy_shared::config::format_duration(runbook.mttr_target)),
            ]),
        });
        stage.batch.runs.push(run.clone());
        stage.runs.insert(incident.id, run);
        (incident, entries)
    }

    /// Feeds a finding to the sums of aggregated triggers; a sum that starts
    /// or stops firing raises or clears its runbook's own condition.
    fn stage_sums(&self, stage: &mut Stage, source: &str, finding: &Finding, now: Timestamp) {
        for (id, index, trigger) in self.catalog.aggregated_triggers() {
            if !trigger.selects(finding) {
                continue;
            }
            let key = (id.to_owned(), index);
            let Some(mut entry) = stage.sums.get(&key).or_else(|| self.sums.get(&key)).cloned() else {
                continue;
            };
            let status = entry.0.observe_finding(trigger, source, finding);
            self.stage_sum_status(stage, &key, &mut entry, trigger, status, now);
            stage.sums.insert(key, entry);
        }
    }

    fn stage_sum_status(
        &self,
        stage: &mut Stage,
        key: &(String, usize),
        entry: &mut (AcrossNodesSum, bool),
        trigger: &remedy_shared::runbook::FindingTrigger,
        status: remedy_shared::runbook::SumStatus,
        now: Timestamp,
    ) {
        if status.fires == entry.1 {
            return;
        }
        entry.1 = status.fires;
        let evidence = trigger.evidence.clone().unwrap_or_default();
        let above = trigger.above.unwrap_or_default();
        let summary = if status.fires {
            format!("{} {evidence} summed over {} nodes is {} (> {above})", trigger.kind, status.sources, status.sum)
        } else {
            format!("{} {evidence} summed over {} nodes is back to {}", trigger.kind, status.sources, status.sum)
        };
        let signal = Signal {
            source: COORDINATOR_SOURCE.to_owned(),
            key: ConditionKey { kind: ConditionKind::Runbook(key.0.clone()), target: format!("sum/{evidence}") },
            severity: remedy_shared::Severity::Critical,
            holds: status.fires,
            summary,
            expires_at: None,
            details: std::collections::BTreeMap::from([
                ("sum".to_owned(), status.sum.to_string()),
                ("nodes".to_owned(), status.sources.to_string()),
            ]),
        };
        self.stage_signal(stage, &signal, Cause::Runbook(&key.0), now);
    }

    fn stage_run_update(&self, stage: &mut Stage, update: RunUpdate, now: Timestamp) -> Result<(), RecordError> {
        let id = match (&update.run, update.incident) {
            (Some(run), _) => Some(run.incident_id),
            (None, id) => id,
        };
        if let Some(id) = id {
            let mut entries = update.entries;
            match self.current(stage, id) {
                Some(open) => {
                    let mut changed = update.state.and_then(|s| incident::progress(&open, s, now));
                    if let Some((policy, why)) = &update.escalate {
                        let base = changed.get_or_insert_with(|| open.clone());
                        match base.escalation.as_mut() {
                            None => base.escalation = Some(Progress::start(policy, why, now)),
                            // People already paged (on open) hear that
                            // automation gave up, and why.
                            Some(progress) => progress.news = Some(why.clone()),
                        }
                    }
                    if let Some(by) = &update.resolve {
                        let base = changed.clone().unwrap_or(open);
                        if let Ok((closed, entry)) = incident::resolve(&base, by, "verification passed", now) {
                            entries.push(entry);
                            changed = Some(closed);
                        }
                    }
                    match changed {
                        Some(incident) => self.stage_incident(stage, incident, entries),
                        None => stage.batch.timeline.extend(entries.into_iter().map(|e| (id, e))),
                    }
                }
                // Closed meanwhile: the record still gets what happened.
                None => stage.batch.timeline.extend(entries.into_iter().map(|e| (id, e))),
            }
        }
        stage.batch.audit.extend(update.audit);
        if let Some(run) = update.run {
            stage.batch.runs.push(run.clone());
            stage.runs.insert(run.incident_id, run);
        }
        if let Some(guard) = update.guard {
            stage.batch.guard = Some(guard);
        }
        Ok(())
    }

    /// The escalator's progress, merged into the incident as it stands now:
    /// an acknowledgement that arrived after the escalator decided keeps
    /// its hold (and the state it set). A closed incident still takes its
    /// progress (the channels told of the resolution), without touching
    /// the open incidents of its condition.
    fn stage_escalation(&self, stage: &mut Stage, update: EscalationUpdate, now: Timestamp) -> Result<(), RecordError> {
        let (current, open) = match self.current(stage, update.id) {
            Some(open) => (open, true),
            None => match stage.changed.get(&update.id).cloned() {
                Some(staged) => (staged, false),
                None => {
                    let stored = self.store.get_incident(update.id).map_err(|e| RecordError::Store(e.to_string()))?;
                    (stored.ok_or(RecordError::NoOpenIncident(update.id))?.0, false)
                }
            },
        };
        let mut incident = current;
        let mut progress = update.progress;
        let now_hold = incident.escalation.as_ref().and_then(|p| p.held_since);
        let same_hold = now_hold == update.seen_hold;
        if let Some(current) = &incident.escalation {
            if !same_hold {
                progress.held_since = current.held_since;
                progress.held_by = current.held_by.clone();
                progress.hold_told = current.hold_told;
            }
            if current.news != update.seen_news {
                progress.news = current.news.clone();
            }
        }
        incident.escalation = Some(progress);
        if same_hold
            && let Some(state) = update.state
            && !incident.state.is_closed()
        {
            incident.state = state;
        }
        incident.updated_at = incident.updated_at.max(now);
        if open {
            self.stage_incident(stage, incident, update.entries);
        } else {
            stage.batch.timeline.extend(update.entries.into_iter().map(|e| (incident.id, e)));
            if stage.changed.insert(incident.id, incident).is_none() {
                stage.changed_order.push(update.id);
            }
        }
        Ok(())
    }

    fn stage_manual(&self, stage: &mut Stage, request: ManualRun, now: Timestamp) -> Result<IncidentId, RecordError> {
        let runbook = self
            .catalog
            .get(&request.runbook_id)
            .ok_or_else(|| RecordError::BadRun(format!("no runbook `{}` in the catalog", request.runbook_id)))?;
        if !runbook.triggers.manual {
            return Err(RecordError::BadRun(format!(
                "runbook {} does not allow manual runs (triggers.manual is false)",
                runbook.id()
            )));
        }
        let params = runbook.resolve_params(&request.params).map_err(RecordError::BadRun)?;
        let mut counters = self.counters(stage);
        let id = IncidentId(counters.next_incident);
        counters.next_incident += 1;
        stage.counters = Some(counters);
        let signal = Signal {
            source: format!("remedyctl:{}", request.by),
            key: ConditionKey { kind: ConditionKind::Runbook(runbook.id().to_owned()), target: format!("manual/{id}") },
            severity: remedy_shared::Severity::Warning,
            holds: true,
            summary: format!("manual run of {} by {}", runbook.id(), request.by),
            expires_at: None,
            details: request.params.iter().map(|(k, v)| (format!("param.{k}"), v.clone())).collect(),
        };
        let Outcome::Changed { mut incident, mut entries, .. } = incident::apply_signal(None, &signal, id, now) else {
            return Err(RecordError::BadRun("the manual run opened no incident".into()));
        };
        let mode = if request.dry_run { guard::Mode::DryRun } else { guard::Mode::Live };
        let context = run_context(&incident, runbook, mode, AlertContext::default(), FindingContext::default(), params);
        let run = RunRecord {
            requested_by: Some(request.by.clone()),
            ..RunRecord::new(id, runbook, mode, signal.summary.clone(), context, now)
        };
        incident.adopt(runbook);
        entries.push(TimelineEntry {
            at: now,
            kind: EntryKind::Runbook,
            message: format!("runbook {} run by {} ({})", runbook.id(), request.by, mode),
            details: std::collections::BTreeMap::from([
                ("runbook".to_owned(), runbook.id().to_owned()),
                ("mode".to_owned(), mode.to_string()),
            ]),
        });
        self.metrics.incidents_opened.inc();
        stage.batch.runs.push(run.clone());
        stage.runs.insert(id, run);
        self.stage_incident(stage, incident, entries);
        Ok(id)
    }

    fn stage_transition(
        &self,
        stage: &mut Stage,
        id: IncidentId,
        change: impl FnOnce(&Incident) -> Result<(Incident, TimelineEntry), incident::TransitionError>,
    ) -> Result<Incident, RecordError> {
        let open = self.current(stage, id).ok_or(RecordError::NoOpenIncident(id))?;
        let (incident, entry) = change(&open)?;
        self.stage_incident(stage, incident.clone(), vec![entry]);
        Ok(incident)
    }

    fn stage_sweep(&self, stage: &mut Stage, now: Timestamp) {
        let keys: Vec<(String, usize)> = self.sums.keys().cloned().collect();
        for key in keys {
            let Some(trigger) = self.catalog.get(&key.0).and_then(|r| r.triggers.findings.get(key.1)) else {
                continue;
            };
            let Some(mut entry) = stage.sums.get(&key).or_else(|| self.sums.get(&key)).cloned() else {
                continue;
            };
            let status = entry.0.evaluate(now);
            self.stage_sum_status(stage, &key, &mut entry, trigger, status, now);
            stage.sums.insert(key, entry);
        }
        let cutoff = Timestamp::from_millis(now.as_millis().saturating_sub(ALERT_KEY_RETENTION.as_millis() as i64));
        stage
            .batch
            .forgotten_alert_keys
            .extend(self.alert_keys.iter().filter(|(_, at)| **at < cutoff).map(|(k, _)| k.clone()));
        let late: Vec<(Incident, TimelineEntry, Finding)> = self
            .open
            .values()
            .filter(|i| !stage.open.contains_key(&i.key))
            .filter_map(|i| remedy_shared::run::mttr_check(i, now))
            .collect();
        for (incident, entry, finding) in late {
            self.stage_incident(stage, incident, vec![entry]);
            self.stage_own(stage, vec![finding], "", now);
        }
        let due: Vec<Incident> = self
            .open
            .values()
            .filter(|i| !stage.open.contains_key(&i.key))
            .filter(|i| incident::next_expiry(i).is_some_and(|at| at <= now))
            .cloned()
            .collect();
        for open in due {
            if let Some((incident, entries)) = incident::expire_sources(&open, now) {
                self.stage_incident(stage, incident, entries);
            }
        }
    }
}

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
    params: std::collections::BTreeMap<String, String>,
) -> TemplateContext {
    TemplateContext {
        incident: IncidentContext {
            id: incident.id.to_string(),
            started_at: incident.opened_at.to_string(),
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

/// The instant of the latest timeline entry staged, or the wall clock:
/// what a clearing raised while staging another change is dated.
fn incident_now(batch: &WriteBatch) -> Timestamp {
    batch.timeline.last().map_or_else(now, |(_, e)| e.at)
}

/// The wall clock, as the domain's timestamp.
pub fn now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Timestamp::from_millis(ms)
}
