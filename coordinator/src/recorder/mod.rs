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
//!
//! This file is the writer: its commands, their grouping, the commit, the
//! replies and what it publishes. Applying commands to the staged copy of
//! the state is `staging.rs`, which does no I/O; how a run begins and the
//! sums across nodes are the domain's (`remedy_shared::run`).

mod staging;

use std::collections::BTreeMap;
use std::sync::Arc;

use remedy_shared::Timestamp;
use remedy_shared::alert::Alert;
use remedy_shared::audit::AuditEntry;
use remedy_shared::finding::Finding;
use remedy_shared::guard::GuardState;
use remedy_shared::incident::{self, Incident, IncidentId, IncidentState, TimelineEntry};
pub use remedy_shared::run::ManualRun;
use remedy_shared::run::{Catalog, RunRecord};
use remedy_shared::sequence::SequenceError;
use tokio::sync::{broadcast, mpsc, oneshot};

use self::staging::{Stage, State};
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::store::{Loaded, Retention, Store, StoreError};

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
    /// Every address on the node's interfaces.
    pub node_addresses: Vec<std::net::IpAddr>,
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
    /// A hello for an agent id bound to another node: an id names one
    /// agent on one node, so its findings, sequence and stream stay that
    /// node's. Nothing of the hello was recorded.
    #[error(
        "agent id `{agent_id}` belongs to node {bound} (since its first hello); node {claimed} may not use it: \
         give this agent its own id (remove its agent-id file, or its configured id)"
    )]
    AgentOfAnotherNode {
        /// The id the hello gave.
        agent_id: String,
        /// The node it is bound to.
        bound: String,
        /// The node the hello came from.
        claimed: String,
    },
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
    /// Close the incident, by whom and why: a run a person started ended
    /// and no signal is left to clear it.
    pub resolve: Option<(String, String)>,
    /// The rails' memory, when it changed.
    pub guard: Option<GuardState>,
    /// Audit entries, written in the same transaction.
    pub audit: Vec<AuditEntry>,
    /// Hand the incident to people: start its escalation policy's climb
    /// (policy, why), unless one is already under way.
    pub escalate: Option<(String, String)>,
    /// A channel's reference for the incident (channel, reference), kept
    /// unless one is kept already (see `Incident::remember`).
    pub conversation: Option<(String, String)>,
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

/// The answer to a batch of alerts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlertReceipt {
    /// Alert notifications recorded for the first time.
    pub new: usize,
    /// Notifications seen before (retries, the other Alertmanager replica).
    pub duplicates: usize,
}

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
    Prune(Retention),
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
        details: BTreeMap<String, String>,
        reply: oneshot::Sender<Result<Incident, RecordError>>,
    },
    Resolve {
        id: IncidentId,
        by: String,
        reason: String,
        details: BTreeMap<String, String>,
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
    /// The writer's clock, which stamps every commit.
    clock: Clock,
    /// The metrics the writer and the engine count into.
    metrics: Metrics,
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
            Command::Prune(_) => "Prune",
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

/// `entry` with `details` added; what the transition wrote (`by`) stays.
fn with_details(mut entry: TimelineEntry, details: BTreeMap<String, String>) -> TimelineEntry {
    for (key, value) in details {
        entry.details.entry(key).or_insert(value);
    }
    entry
}

impl Recorder {
    /// The writer's clock: everything that stamps what it records reads it.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The metrics the writer counts into.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

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
            clock: clock.clone(),
            ..Writer::new(store, loaded, events.clone(), metrics.clone(), catalog, runs_tx, store_failure.clone())
        };
        std::thread::Builder::new()
            .name("recorder".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok((Recorder { tx, events, store_failure, clock, metrics }, runs_rx, guard))
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
        self.acknowledge_with(id, by, BTreeMap::new()).await
    }

    /// As [`Recorder::acknowledge`], with `details` on the timeline entry
    /// (how the acknowledgement came: `via`, the sender's event id).
    pub async fn acknowledge_with(
        &self,
        id: IncidentId,
        by: String,
        details: BTreeMap<String, String>,
    ) -> Result<Incident, RecordError> {
        self.ask(|reply| Command::Acknowledge { id, by, details, reply }).await?
    }

    /// A person resolves an open incident.
    pub async fn resolve(&self, id: IncidentId, by: String, reason: String) -> Result<Incident, RecordError> {
        self.resolve_with(id, by, reason, BTreeMap::new()).await
    }

    /// As [`Recorder::resolve`], with `details` on the timeline entry.
    pub async fn resolve_with(
        &self,
        id: IncidentId,
        by: String,
        reason: String,
        details: BTreeMap<String, String>,
    ) -> Result<Incident, RecordError> {
        self.ask(|reply| Command::Resolve { id, by, reason, details, reply }).await?
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

    /// Asks the writer to forget the records past `retention`, in its next
    /// commit.
    pub async fn prune(&self, retention: Retention) {
        let _ = self.tx.send(Command::Prune(retention)).await;
    }

    /// Asks the writer to expire findings that were not refreshed in time.
    pub async fn sweep(&self) {
        let _ = self.tx.send(Command::Sweep).await;
    }

    /// Why the store refused the last commit, while it keeps refusing: a
    /// coordinator that cannot commit acknowledges nothing and is not ready.
    pub fn store_failure(&self) -> Option<String> {
        remedy_shared::sync::lock(&self.store_failure).clone()
    }

    /// Every committed change to an incident, in commit order.
    pub fn subscribe(&self) -> broadcast::Receiver<Incident> {
        self.events.subscribe()
    }
}

struct Writer {
    store: Arc<dyn Store>,
    state: State,
    events: broadcast::Sender<Incident>,
    metrics: Metrics,
    new_runs: mpsc::UnboundedSender<RunRecord>,
    store_failure: StoreFailure,
    /// Stamps every group of commands.
    clock: Clock,
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
        Writer {
            store,
            state: State::new(loaded, catalog),
            events,
            metrics,
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
        let state = &self.state;
        let mut stage = Stage::default();
        let mut replies: Vec<Reply> = Vec::with_capacity(group.len());
        for cmd in group {
            match cmd {
                Command::Hello { hello, reply } => match state.stage_hello(&mut stage, hello, now) {
                    Ok(acked) => replies.push(Box::new(move |r| {
                        let _ = reply.send(r.map(|()| acked).map_err(|e| RecordError::Store(e.to_owned())));
                    })),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                Command::Findings { agent_id, findings, oldest_retained, reply } => {
                    match state.stage_findings(&mut stage, &agent_id, findings, oldest_retained, now) {
                        Ok(receipt) => replies.push(Box::new(move |r| {
                            let _ = reply.send(r.map(|()| receipt).map_err(|e| RecordError::Store(e.to_owned())));
                        })),
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
                Command::Raise { findings, node_name } => state.stage_own(&mut stage, findings, &node_name, now),
                Command::Alerts { alerts, reply } => {
                    let receipt = state.stage_alerts(&mut stage, alerts, now);
                    replies.push(Box::new(move |r| {
                        let _ = reply.send(r.map(|()| receipt).map_err(|e| RecordError::Store(e.to_owned())));
                    }));
                }
                Command::Sweep => state.stage_sweep(&mut stage, now),
                Command::Prune(retention) => state.stage_prune(&mut stage, &retention, now),
                Command::Run { update, reply } => match state.stage_run_update(&mut stage, *update, now) {
                    Ok(()) => replies.push(Box::new(move |r| {
                        let _ = reply.send(r.map_err(|e| RecordError::Store(e.to_owned())));
                    })),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                Command::Manual { run, reply } => match state.stage_manual(&mut stage, run, now) {
                    Ok(id) => replies.push(Box::new(move |r| {
                        let _ = reply.send(r.map(|()| id).map_err(|e| RecordError::Store(e.to_owned())));
                    })),
                    Err(e) => {
                        let _ = reply.send(Err(e));
                    }
                },
                Command::Acknowledge { id, by, details, reply } => {
                    let staged = state.stage_transition(&mut stage, id, |i| {
                        incident::acknowledge(i, &by, now).map(|(i, e)| (i, with_details(e, details)))
                    });
                    Self::reply_incident(&mut replies, reply, staged);
                }
                Command::Resolve { id, by, reason, details, reply } => {
                    let staged = state.stage_transition(&mut stage, id, |i| {
                        incident::resolve(i, &by, &reason, now).map(|(i, e)| (i, with_details(e, details)))
                    });
                    Self::reply_incident(&mut replies, reply, staged);
                }
                Command::Open { id, reply } => {
                    let _ = reply.send(state.current(&stage, id));
                }
                Command::Escalation { update, reply } => {
                    // An incident neither open nor changed in this group
                    // (closed earlier) is read from the store.
                    let stored = if state.holds(&stage, update.id) {
                        Ok(None)
                    } else {
                        self.store
                            .get_incident(update.id)
                            .map(|found| found.map(|(incident, _)| incident))
                            .map_err(|e| RecordError::Store(e.to_string()))
                    };
                    match stored.and_then(|stored| state.stage_escalation(&mut stage, *update, stored, now)) {
                        Ok(()) => replies.push(Box::new(move |r| {
                            let _ = reply.send(r.map_err(|e| RecordError::Store(e.to_owned())));
                        })),
                        Err(e) => {
                            let _ = reply.send(Err(e));
                        }
                    }
                }
            }
        }
        let tally = stage.tally();
        self.metrics.incidents_opened.inc_by(tally.incidents_opened);
        self.metrics.findings_duplicate.inc_by(tally.findings_duplicate);
        self.metrics.alerts_received.inc_by(tally.alerts_received);
        self.metrics.alerts_duplicate.inc_by(tally.alerts_duplicate);
        let batch = stage.seal();
        let result = self.store.commit(batch);
        self.metrics.store_commits.inc();
        // An empty batch touches nothing, so it says nothing about the store.
        if !batch.is_empty() {
            *remedy_shared::sync::lock(&self.store_failure) = result.as_ref().err().map(ToString::to_string);
        }
        match result {
            Ok(()) => {
                self.publish(stage);
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

    /// Makes the committed `stage` the state, then hands new runs to the
    /// engine and every changed incident to subscribers.
    fn publish(&mut self, stage: Stage) {
        let absorbed = self.state.absorb(stage);
        for run in absorbed.new_runs {
            let _ = self.new_runs.send(run);
        }
        self.metrics.findings_persisted.inc_by(absorbed.findings as u64);
        self.metrics.open_incidents.set(absorbed.open_incidents as i64);
        for incident in absorbed.changed {
            let _ = self.events.send(incident);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::atomic::{AtomicBool, Ordering};

    use remedy_shared::alert::AlertStatus;
    use remedy_shared::audit::AuditEntry;
    use remedy_shared::finding::{FindingKind, FindingState, Severity};
    use remedy_shared::run::RunStatus;
    use tempfile::TempDir;

    use super::*;
    use crate::clock::ManualClock;
    use crate::store::embedded::EmbeddedStore;
    use crate::store::{AgentRecord, BanRecord, FindingQuery, StoredFinding, WriteBatch};

    fn at(s: i64) -> Timestamp {
        Timestamp::from_millis(1_700_000_000_000 + s * 1000)
    }

    /// The embedded store, whose commits a test can make fail as a full
    /// disk would.
    #[derive(Debug)]
    struct Flaky {
        inner: EmbeddedStore,
        refuse: AtomicBool,
    }

    impl Store for Flaky {
        fn load(&self) -> Result<Loaded, StoreError> {
            self.inner.load()
        }
        fn commit(&self, batch: &WriteBatch) -> Result<(), StoreError> {
            if self.refuse.load(Ordering::SeqCst) {
                return Err(StoreError::Backend("no space left on device".into()));
            }
            self.inner.commit(batch)
        }
        fn scan_findings(
            &self,
            query: &FindingQuery,
            visit: &mut dyn FnMut(StoredFinding) -> bool,
        ) -> Result<(), StoreError> {
            self.inner.scan_findings(query, visit)
        }
        fn get_finding(&self, agent_id: &str, sequence: u64) -> Result<Option<StoredFinding>, StoreError> {
            self.inner.get_finding(agent_id, sequence)
        }
        fn scan_incidents(
            &self,
            include_resolved: bool,
            before: Option<IncidentId>,
            visit: &mut dyn FnMut(Incident) -> bool,
        ) -> Result<(), StoreError> {
            self.inner.scan_incidents(include_resolved, before, visit)
        }
        fn get_run(&self, id: IncidentId) -> Result<Option<RunRecord>, StoreError> {
            self.inner.get_run(id)
        }
        fn get_incident(&self, id: IncidentId) -> Result<Option<(Incident, Vec<TimelineEntry>)>, StoreError> {
            self.inner.get_incident(id)
        }
        fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
            self.inner.list_agents()
        }
        fn list_bans(&self) -> Result<Vec<BanRecord>, StoreError> {
            self.inner.list_bans()
        }
        fn put_ban(&self, ban: &BanRecord) -> Result<(), StoreError> {
            self.inner.put_ban(ban)
        }
        fn last_audit_seq(&self) -> Result<u64, StoreError> {
            self.inner.last_audit_seq()
        }
        fn scan_audit(&self, after: u64, visit: &mut dyn FnMut(AuditEntry) -> bool) -> Result<(), StoreError> {
            self.inner.scan_audit(after, visit)
        }
    }

    struct Harness {
        recorder: Recorder,
        runs: RunFeed,
        store: Arc<Flaky>,
        _dir: TempDir,
    }

    /// A writer over a fresh store in a temporary directory, with a clock at
    /// `at(0)` and one runbook started by the alert `Down`.
    fn start() -> Harness {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = Arc::new(Flaky {
            inner: EmbeddedStore::open(dir.path()).expect("the store opens"),
            refuse: AtomicBool::new(false),
        });
        let runbook = remedy_shared::runbook::parse_runbook(
            "r.yaml",
            "apiVersion: remedy.dev/v1\nkind: Runbook\nmetadata: {id: R-1, title: Site down}\npriority: P1\n\
             mttr_target: 5m\ntriggers: {alerts: [{name: Down}], manual: true}\n\
             steps: [{id: s, notify: {webhook: w, message: m}}]\nescalation: {policy: p}\n",
        )
        .expect("the runbook parses");
        let clock = Clock::Manual(ManualClock::new(at(0)));
        let (recorder, runs, _) =
            Recorder::start_with_clock(store.clone(), Metrics::default(), Arc::new(Catalog::new(vec![runbook])), clock)
                .expect("the writer starts");
        Harness { recorder, runs, store, _dir: dir }
    }

    fn hello(agent_id: &str) -> AgentHello {
        AgentHello {
            agent_id: agent_id.into(),
            node_name: "n1".into(),
            version: "1.0.0".into(),
            capabilities: vec![],
            labels: BTreeMap::new(),
            node_addresses: vec![],
        }
    }

    fn disk(target: &str) -> Finding {
        Finding {
            kind: FindingKind::DiskUsageHigh,
            severity: Severity::Warning,
            state: FindingState::Active,
            target: target.into(),
            labels: BTreeMap::new(),
            evidence: BTreeMap::new(),
            summary: "disk 97%".into(),
            first_seen: at(0),
            last_seen: at(0),
            expires_at: None,
        }
    }

    fn down(fingerprint: &str) -> Alert {
        Alert {
            status: AlertStatus::Firing,
            alertname: "Down".into(),
            labels: BTreeMap::from([("alertname".to_owned(), "Down".to_owned())]),
            annotations: BTreeMap::new(),
            starts_at_raw: "2026-11-26T10:00:00Z".into(),
            starts_at: at(0),
            ends_at: None,
            fingerprint: fingerprint.into(),
            generator_url: String::new(),
            sent_by: String::new(),
        }
    }

    fn stored_findings(store: &Flaky) -> Vec<(String, u64)> {
        let page = store.list_findings(&FindingQuery { limit: 100, ..FindingQuery::default() }).expect("a listing");
        page.into_iter().map(|f| (f.agent_id, f.sequence)).collect()
    }

    #[tokio::test]
    async fn findings_are_acknowledged_once_committed_and_a_resent_one_is_counted_not_stored_again() {
        let h = start();
        assert_eq!(h.recorder.hello(hello("a1")).await.expect("hello"), 0);
        let batch = vec![(1, disk("mount/n1:/var")), (2, disk("mount/n1:/var"))];
        let receipt = h.recorder.findings("a1".into(), batch, 0).await.expect("committed");
        assert_eq!(receipt, BatchReceipt { acked: 2, new: 2, duplicates: 0 });
        let again = h.recorder.findings("a1".into(), vec![(2, disk("mount/n1:/var"))], 0).await.expect("committed");
        assert_eq!(again, BatchReceipt { acked: 2, new: 0, duplicates: 1 });
        assert_eq!(stored_findings(&h.store), vec![("a1".to_owned(), 1), ("a1".to_owned(), 2)]);
        let incidents = h.store.list_incidents(true, 10).expect("a listing");
        assert_eq!(incidents.len(), 1, "both findings joined one incident");
        assert_eq!(incidents[0].finding_count, 2);
        let agents = h.store.list_agents().expect("a listing");
        assert_eq!(agents[0].tracker.contiguous(), 2, "the bookkeeping is committed with the findings");
        assert_eq!(h.recorder.hello(hello("a1")).await.expect("hello"), 2, "a reconnecting agent resumes after 2");
    }

    #[tokio::test]
    async fn a_batch_that_breaks_the_sequence_rules_or_comes_before_hello_is_refused_whole() {
        let h = start();
        let unknown = h.recorder.findings("a1".into(), vec![(1, disk("mount/n1:/var"))], 0).await;
        assert!(matches!(unknown, Err(RecordError::UnknownAgent(ref id)) if id == "a1"), "{unknown:?}");
        h.recorder.hello(hello("a1")).await.expect("hello");
        let bad = h.recorder.findings("a1".into(), vec![(1, disk("mount/n1:/a")), (0, disk("mount/n1:/b"))], 0).await;
        assert!(matches!(bad, Err(RecordError::Sequence(SequenceError::Zero))), "{bad:?}");
        assert!(stored_findings(&h.store).is_empty(), "nothing of a refused batch is kept");
        assert!(h.store.list_incidents(true, 10).expect("a listing").is_empty());
    }

    #[tokio::test]
    async fn an_alert_is_recorded_once_and_its_run_is_committed_with_its_incident() {
        let mut h = start();
        let mut events = h.recorder.subscribe();
        let receipt = h.recorder.alerts(vec![down("f1")]).await.expect("committed");
        assert_eq!(receipt, AlertReceipt { new: 1, duplicates: 0 });
        let again = h.recorder.alerts(vec![down("f1")]).await.expect("committed");
        assert_eq!(again, AlertReceipt { new: 0, duplicates: 1 }, "Alertmanager's retry does nothing");

        let run = h.runs.recv().await.expect("the new run is handed to the engine");
        assert_eq!((run.incident_id, run.runbook_id.as_str(), run.status), (IncidentId(1), "R-1", RunStatus::Pending));
        assert_eq!(h.store.get_run(IncidentId(1)).expect("a read"), Some(run), "committed before it was handed over");
        let (incident, timeline) = h.store.get_incident(IncidentId(1)).expect("a read").expect("the incident");
        assert_eq!(incident.runbook.as_deref(), Some("R-1"));
        assert!(timeline.iter().any(|e| e.message == "runbook R-1 (Site down) matched alert Down"), "{timeline:?}");
        let published = events.recv().await.expect("the change is published");
        assert_eq!(published, incident);
        assert!(h.runs.try_recv().is_err(), "one run, not one per notification");
    }

    #[tokio::test]
    async fn people_acknowledge_and_resolve_open_incidents_only() {
        let h = start();
        let id = h
            .recorder
            .manual_run(ManualRun {
                runbook_id: "R-1".into(),
                params: BTreeMap::new(),
                dry_run: true,
                drill: false,
                by: "user:ada".into(),
            })
            .await
            .expect("a manual run");
        assert_eq!(id, IncidentId(1));
        let acked = h.recorder.acknowledge(id, "user:ada".into()).await.expect("acknowledged");
        assert_eq!(acked.acknowledged_by.as_deref(), Some("user:ada"));
        let resolved = h.recorder.resolve(id, "user:ada".into(), "fixed".into()).await.expect("resolved");
        assert!(resolved.state.is_closed());
        assert_eq!(h.store.get_incident(id).expect("a read").map(|(i, _)| i), Some(resolved));
        assert_eq!(h.recorder.open_incident(id).await.expect("an answer"), None);
        let late = h.recorder.acknowledge(id, "user:bob".into()).await;
        assert!(matches!(late, Err(RecordError::NoOpenIncident(i)) if i == id), "{late:?}");
    }

    #[tokio::test]
    async fn a_refused_manual_run_spends_no_incident_number() {
        let h = start();
        let request = |runbook_id: &str| ManualRun {
            runbook_id: runbook_id.into(),
            params: BTreeMap::new(),
            dry_run: false,
            drill: false,
            by: "user:ada".into(),
        };
        let refused = h.recorder.manual_run(request("nope")).await;
        assert!(matches!(refused, Err(RecordError::BadRun(ref m)) if m.contains("nope")), "{refused:?}");
        assert_eq!(h.recorder.manual_run(request("R-1")).await.expect("a manual run"), IncidentId(1));
        let run = h.store.get_run(IncidentId(1)).expect("a read").expect("the run");
        assert_eq!(run.requested_by.as_deref(), Some("user:ada"));
    }

    #[tokio::test]
    async fn while_the_store_refuses_commits_nothing_is_acknowledged_and_the_state_does_not_move() {
        let h = start();
        h.recorder.hello(hello("a1")).await.expect("hello");
        h.store.refuse.store(true, Ordering::SeqCst);
        let refused = h.recorder.findings("a1".into(), vec![(1, disk("mount/n1:/var"))], 0).await;
        assert!(matches!(refused, Err(RecordError::Store(ref m)) if m.contains("no space left")), "{refused:?}");
        assert!(h.recorder.store_failure().is_some_and(|why| why.contains("no space left")));
        assert_eq!(h.recorder.open_incident(IncidentId(1)).await.expect("an answer"), None);

        h.store.refuse.store(false, Ordering::SeqCst);
        let receipt = h.recorder.findings("a1".into(), vec![(1, disk("mount/n1:/var"))], 0).await.expect("committed");
        assert_eq!(receipt, BatchReceipt { acked: 1, new: 1, duplicates: 0 }, "the resent finding is new");
        assert_eq!(h.recorder.store_failure(), None);
        assert!(h.recorder.open_incident(IncidentId(1)).await.expect("an answer").is_some(), "numbered 1 still");
    }
}
