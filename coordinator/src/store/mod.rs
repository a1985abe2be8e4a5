//! Where the coordinator keeps what it knows.
//!
//! The [`Store`] trait is the seam between the coordinator and its storage:
//! the embedded default is a redb file ([`embedded::EmbeddedStore`]). Writes
//! arrive as one [`WriteBatch`] that is applied atomically, so findings, the
//! sequence bookkeeping that acknowledges them and the incidents they changed
//! can never disagree after a crash.
//!
//! In a cluster, [`cluster::ClusterStore`] keeps that file and mirrors what a
//! new leader needs into `remedy.dev/v1alpha1` objects: incidents with their
//! newest timeline entries, runs and their idempotency keys, approvals, the
//! guard rails' memory and the counters. A commit is acknowledged only once
//! both have it. Findings, agents and Alertmanager notification keys stay in
//! the local file only: after a failover agents send again whatever the new
//! leader has not acknowledged and say hello again, and a notification only
//! the old leader recorded may be recorded once more by the new one, where it
//! joins the open incident of its condition. IP bans stay local too: a new
//! leader does not list the old leader's bans, while the agents (and their
//! own timeouts) keep enforcing them until they end.

pub mod cluster;
pub mod embedded;

use std::collections::BTreeMap;

use remedy_shared::Timestamp;
use remedy_shared::audit::AuditEntry;
use remedy_shared::finding::Finding;
use remedy_shared::guard::GuardState;
use remedy_shared::incident::{Incident, IncidentId, TimelineEntry};
use remedy_shared::run::RunRecord;
use remedy_shared::sequence::SequenceTracker;
use serde::{Deserialize, Serialize};

/// A finding as persisted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredFinding {
    /// Sender (an agent id, or [`COORDINATOR_SOURCE`]).
    pub agent_id: String,
    /// Its sequence in the sender's stream.
    pub sequence: u64,
    /// Node it came from.
    pub node_name: String,
    /// When it was persisted.
    pub received_at: Timestamp,
    /// The incident it joined, if any.
    pub incident_id: Option<IncidentId>,
    /// The finding.
    pub finding: Finding,
}

/// The sender name of findings the coordinator raises itself.
pub const COORDINATOR_SOURCE: &str = "coordinator";

/// What the coordinator remembers of an agent across restarts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentRecord {
    /// Identity from its hello.
    pub agent_id: String,
    /// Its node.
    pub node_name: String,
    /// Version from its latest hello.
    pub version: String,
    /// Local actions it can run.
    pub capabilities: Vec<String>,
    /// Node labels.
    pub labels: BTreeMap<String, String>,
    /// Every address on its node's interfaces, as its latest hello
    /// announced them: read back at start so a restarted coordinator
    /// protects its nodes before they reconnect.
    #[serde(default)]
    pub node_addresses: Vec<std::net::IpAddr>,
    /// Which of its sequences are persisted.
    pub tracker: SequenceTracker,
    /// First hello.
    pub first_seen: Timestamp,
    /// Latest hello.
    pub last_hello: Timestamp,
}

/// An address the coordinator blocked on the agents, and what each node did
/// with it. Kept apart from the incident's record: a ban outlives its
/// incident, and a node that connects later needs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BanRecord {
    /// The address or CIDR, as blocked; the key.
    pub ip: String,
    /// Why, as the step gave it.
    pub reason: String,
    /// The incident that placed it.
    pub incident_id: Option<IncidentId>,
    /// The step that placed it.
    pub step_id: String,
    /// When it was (last) placed.
    pub blocked_at: Timestamp,
    /// When it ends; the agents' own timeouts remove it then.
    pub until: Timestamp,
    /// Per node, by node name (`node/agent` when two agents share one).
    pub nodes: BTreeMap<String, BanNode>,
    /// Who lifted it before its end, and when.
    pub unblocked: Option<(String, Timestamp)>,
    /// Its rule at the edge provider, when the step asked for one.
    #[serde(default)]
    pub edge: Option<EdgeBan>,
}

/// A ban's rule at the edge provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeBan {
    /// The provider's id of the rule; empty when it was not created.
    pub rule_id: String,
    /// `enforced`, `failed`, `expired` (removed at the ban's end),
    /// `unblocked` or `not_configured`.
    pub state: String,
    /// The provider's error, or why nothing was sent.
    pub reason: String,
    /// When this was learned.
    pub at: Timestamp,
}

/// What one node's agent did with a ban.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BanNode {
    /// The agent on the node.
    pub agent_id: String,
    /// `enforced`, `failed`, `refused`, `timed_out`, `unreachable`,
    /// `unblocked` or `dry_run`.
    pub state: String,
    /// The agent's message, or why it was not reached.
    pub reason: String,
    /// When this was learned.
    pub at: Timestamp,
}

/// Counters the store owns so they survive restarts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Next incident number.
    pub next_incident: u64,
    /// Next sequence for the coordinator's own findings.
    pub next_own_sequence: u64,
}

/// Everything the coordinator needs in memory at start-up.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// Known agents.
    pub agents: Vec<AgentRecord>,
    /// Incidents not yet resolved.
    pub open_incidents: Vec<Incident>,
    /// Counters.
    pub counters: Counters,
    /// Alert notifications already recorded, with when.
    pub alert_keys: Vec<(String, Timestamp)>,
    /// Runs not finished, and the runs of open incidents.
    pub runs: Vec<RunRecord>,
    /// What the guard rails remember (cooldowns, budgets, breakers,
    /// approvals, the pause), as of the last commit.
    pub guard: Option<GuardState>,
}

/// One atomic write.
#[derive(Debug, Default)]
pub struct WriteBatch {
    /// Findings to add.
    pub findings: Vec<StoredFinding>,
    /// Agents to create or update (tracker included).
    pub agents: Vec<AgentRecord>,
    /// Incidents to create or update.
    pub incidents: Vec<Incident>,
    /// Timeline entries to append, per incident, in order.
    pub timeline: Vec<(IncidentId, TimelineEntry)>,
    /// New counters, when they moved.
    pub counters: Option<Counters>,
    /// Alert notification keys recorded now.
    pub alert_keys: Vec<(String, Timestamp)>,
    /// Alert notification keys past their retention.
    pub forgotten_alert_keys: Vec<String>,
    /// Runs created or changed.
    pub runs: Vec<RunRecord>,
    /// The guard rails' memory, when it changed.
    pub guard: Option<GuardState>,
    /// Audit entries to append (their `seq` is given at commit).
    pub audit: Vec<AuditEntry>,
    /// Records past their retention, forgotten in this commit.
    pub prune: Option<Prune>,
}

/// What a commit forgets: records older than each cutoff. `None` keeps
/// that kind of record for ever.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Prune {
    /// Findings received before this, unless their incident is still open:
    /// an open incident keeps its evidence however old.
    pub findings_before: Option<Timestamp>,
    /// Audit entries written before this. Positions are never reused: the
    /// next entry still follows the last one ever written.
    pub audit_before: Option<Timestamp>,
    /// Incidents resolved before this, with their timelines and runs.
    pub incidents_resolved_before: Option<Timestamp>,
}

/// How long records are kept, from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Findings; `None`: for ever.
    pub findings: Option<std::time::Duration>,
    /// The audit log; `None`: for ever.
    pub audit: Option<std::time::Duration>,
    /// Resolved incidents; `None`: for ever.
    pub resolved_incidents: Option<std::time::Duration>,
    /// How often the records past their retention are forgotten.
    pub check_every: std::time::Duration,
}

impl Default for Retention {
    /// Findings a month, the audit log and resolved incidents a year (a
    /// year of incidents is what quarterly and yearly reviews read), checked
    /// every ten minutes.
    fn default() -> Self {
        const DAY: u64 = 24 * 3600;
        Retention {
            findings: Some(std::time::Duration::from_secs(30 * DAY)),
            audit: Some(std::time::Duration::from_secs(365 * DAY)),
            resolved_incidents: Some(std::time::Duration::from_secs(365 * DAY)),
            check_every: std::time::Duration::from_secs(600),
        }
    }
}

impl Retention {
    /// The cutoffs at `now`.
    pub fn cutoffs(&self, now: Timestamp) -> Prune {
        let before = |keep: Option<std::time::Duration>| {
            keep.map(|d| {
                Timestamp::from_millis(now.as_millis().saturating_sub(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
            })
        };
        Prune {
            findings_before: before(self.findings),
            audit_before: before(self.audit),
            incidents_resolved_before: before(self.resolved_incidents),
        }
    }
}

impl WriteBatch {
    /// Whether there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.findings.is_empty()
            && self.agents.is_empty()
            && self.incidents.is_empty()
            && self.timeline.is_empty()
            && self.counters.is_none()
            && self.alert_keys.is_empty()
            && self.forgotten_alert_keys.is_empty()
            && self.runs.is_empty()
            && self.guard.is_none()
            && self.audit.is_empty()
            && self.prune.is_none()
    }
}

/// Filter and page of a findings listing.
#[derive(Debug, Clone, Default)]
pub struct FindingQuery {
    /// Only this agent.
    pub agent_id: Option<String>,
    /// Only this kind.
    pub kind: Option<remedy_shared::FindingKind>,
    /// Start strictly after this (agent id, sequence).
    pub after: Option<(String, u64)>,
    /// Most results (read by `list_findings`, not by `scan_findings`).
    pub limit: usize,
}

/// A store failure. The coordinator answers UNAVAILABLE and does not
/// acknowledge: the agent keeps the findings and sends them again.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The storage engine failed (disk full, I/O error, corruption).
    #[error("store failure: {0}")]
    Backend(String),
    /// A write conditional on what this store last read was refused (the
    /// Kubernetes API's 409 Conflict): another writer changed the object
    /// since, most likely a coordinator that took the lease, so this one
    /// has probably lost it. Nothing of the commit may be acknowledged, and
    /// writing again from the same stale view is refused too: a deposed
    /// leader stops and loads the cluster's state again before it writes.
    #[error("store failure: {message}")]
    Conflict {
        /// What was refused, and what usually causes it.
        message: String,
    },
    /// A persisted record could not be decoded.
    #[error("corrupt record in {table}: {message}")]
    Corrupt {
        /// The table holding it.
        table: &'static str,
        /// The decoder's complaint.
        message: String,
    },
}

/// Storage for findings, agents and incidents.
///
/// Synchronous on purpose: callers run it on a blocking thread, and the
/// writer is a single thread that groups many batches in one commit.
pub trait Store: Send + Sync + 'static {
    /// Reads what the coordinator keeps in memory.
    fn load(&self) -> Result<Loaded, StoreError>;
    /// Applies `batch` atomically and durably.
    fn commit(&self, batch: &WriteBatch) -> Result<(), StoreError>;
    /// Findings that match `query` in (agent id, sequence) order, from
    /// `query.after`, each handed to `visit` until it returns false
    /// (`query.limit` is not read). Listings page through this, so what a
    /// page holds is read once and no more is read than it takes.
    fn scan_findings(
        &self,
        query: &FindingQuery,
        visit: &mut dyn FnMut(StoredFinding) -> bool,
    ) -> Result<(), StoreError>;
    /// Findings in (agent id, sequence) order, at most `query.limit`.
    fn list_findings(&self, query: &FindingQuery) -> Result<Vec<StoredFinding>, StoreError> {
        collect_up_to(query.limit, |visit| self.scan_findings(query, visit))
    }
    /// One finding.
    fn get_finding(&self, agent_id: &str, sequence: u64) -> Result<Option<StoredFinding>, StoreError>;
    /// Incidents newest first (by id), from the one just older than
    /// `before` (`None`: the newest), each handed to `visit` until it
    /// returns false.
    fn scan_incidents(
        &self,
        include_resolved: bool,
        before: Option<IncidentId>,
        visit: &mut dyn FnMut(Incident) -> bool,
    ) -> Result<(), StoreError>;
    /// Incidents, newest first, at most `limit`.
    fn list_incidents(&self, include_resolved: bool, limit: usize) -> Result<Vec<Incident>, StoreError> {
        collect_up_to(limit, |visit| self.scan_incidents(include_resolved, None, visit))
    }
    /// The runbook run of an incident, if it has one.
    fn get_run(&self, id: IncidentId) -> Result<Option<RunRecord>, StoreError>;
    /// One incident and its timeline.
    fn get_incident(&self, id: IncidentId) -> Result<Option<(Incident, Vec<TimelineEntry>)>, StoreError>;
    /// Every known agent.
    fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError>;
    /// Every recorded IP ban, by address.
    fn list_bans(&self) -> Result<Vec<BanRecord>, StoreError>;
    /// Records `ban`, replacing the record of the same address. Written
    /// outside the writer's batches: a ban is not part of any incident's
    /// transaction, and the actuator records it as the agents answer.
    fn put_ban(&self, ban: &BanRecord) -> Result<(), StoreError>;
    /// Audit entries with `seq > after`, oldest first, each handed to
    /// `visit` until it returns false.
    fn scan_audit(&self, after: u64, visit: &mut dyn FnMut(AuditEntry) -> bool) -> Result<(), StoreError>;
    /// The audit log's last position (0 when it is empty).
    fn last_audit_seq(&self) -> Result<u64, StoreError>;
    /// Audit entries with `seq > after`, oldest first, at most `limit`.
    fn list_audit(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        collect_up_to(limit, |visit| self.scan_audit(after, visit))
    }
}

/// At most `limit` items of a scan.
fn collect_up_to<T>(
    limit: usize,
    scan: impl FnOnce(&mut dyn FnMut(T) -> bool) -> Result<(), StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    if limit == 0 {
        return Ok(out);
    }
    scan(&mut |item| {
        out.push(item);
        out.len() < limit
    })?;
    Ok(out)
}
