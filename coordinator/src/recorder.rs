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
use remedy_shared::finding::{ConditionKey, Finding};
use remedy_shared::incident::{self, Incident, IncidentId, Outcome, Signal, TimelineEntry};
use remedy_shared::sequence::{Accept, SequenceError, SequenceTracker};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::metrics::Metrics;
use crate::store::{AgentRecord, COORDINATOR_SOURCE, Counters, Loaded, Store, StoreError, StoredFinding, WriteBatch};

/// Most commands folded into one transaction.
const MAX_GROUP: usize = 512;

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
}

/// Handle to the writer.
#[derive(Debug, Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Command>,
    events: broadcast::Sender<Incident>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Command::Hello { .. } => "Hello",
            Command::Findings { .. } => "Findings",
            Command::Raise { .. } => "Raise",
            Command::Alerts { .. } => "Alerts",
            Command::Sweep => "Sweep",
        })
    }
}

impl Recorder {
    /// Loads the state from `store` and starts the writer thread.
    pub fn start(store: Arc<dyn Store>, metrics: Metrics) -> Result<Recorder, StoreError> {
        let loaded = store.load()?;
        let (tx, rx) = mpsc::channel(4096);
        let (events, _) = broadcast::channel(4096);
        let writer = Writer::new(store, loaded, events.clone(), metrics);
        std::thread::Builder::new()
            .name("recorder".into())
            .spawn(move || writer.run(rx))
            .map_err(|e| StoreError::Backend(format!("cannot start the writer thread: {e}")))?;
        Ok(Recorder { tx, events })
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
    changed: Vec<Incident>,
}

type Reply = Box<dyn FnOnce(Result<(), &str>) + Send>;

impl Writer {
    fn new(store: Arc<dyn Store>, loaded: Loaded, events: broadcast::Sender<Incident>, metrics: Metrics) -> Self {
        Writer {
            store,
            agents: loaded.agents.into_iter().map(|a| (a.agent_id.clone(), a)).collect(),
            open: loaded.open_incidents.into_iter().map(|i| (i.key.clone(), i)).collect(),
            counters: loaded.counters,
            alert_keys: loaded.alert_keys.into_iter().collect(),
            events,
            metrics,
        }
    }

    fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        while let Some(first) = rx.blocking_recv() {
            let mut group = vec![first];
            while group.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(cmd) => group.push(cmd),
                    Err(_) => break,
                }
            }
            self.apply_group(group);
        }
    }

    fn apply_group(&mut self, group: Vec<Command>) {
        let now = now();
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
            }
        }
        if let Some(c) = stage.counters {
            stage.batch.counters = Some(c);
        }
        stage.batch.agents.extend(stage.agents.values().cloned());
        let result = self.store.commit(&stage.batch);
        self.metrics.store_commits.inc();
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

    fn merge(&mut self, stage: Stage) {
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
                    self.open.insert(key, i);
                }
                None => {
                    self.open.remove(&key);
                }
            }
        }
        self.metrics.findings_persisted.inc_by(stage.batch.findings.len() as u64);
        self.metrics.open_incidents.set(self.open.len() as i64);
        let mut seen = std::collections::HashSet::new();
        for incident in stage.changed.into_iter().rev() {
            if seen.insert(incident.id) {
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
            self.stage_signal(stage, &Signal::from_alert(&alert), now);
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
        let incident_id = self.stage_signal(stage, &Signal::from_finding(source, &finding), now);
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
    fn stage_signal(&self, stage: &mut Stage, signal: &Signal, now: Timestamp) -> Option<IncidentId> {
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
                self.stage_incident(stage, incident, entries);
                Some(id)
            }
        }
    }

    fn stage_incident(&self, stage: &mut Stage, incident: Incident, entries: Vec<TimelineEntry>) {
        let still_open = !incident.state.is_closed();
        stage.batch.timeline.extend(entries.into_iter().map(|e| (incident.id, e)));
        stage.batch.incidents.push(incident.clone());
        stage.changed.push(incident.clone());
        stage.open.insert(incident.key.clone(), still_open.then_some(incident));
    }

    fn stage_sweep(&self, stage: &mut Stage, now: Timestamp) {
        let cutoff = Timestamp::from_millis(now.as_millis().saturating_sub(ALERT_KEY_RETENTION.as_millis() as i64));
        stage
            .batch
            .forgotten_alert_keys
            .extend(self.alert_keys.iter().filter(|(_, at)| **at < cutoff).map(|(k, _)| k.clone()));
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

/// The wall clock, as the domain's timestamp.
pub fn now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    Timestamp::from_millis(ms)
}
