//! State shared by the agent's tasks: the spool, what the diagnostics
//! endpoint shows, and the signal that new findings wait to be sent.

use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use remedy_shared::Timestamp;
use remedy_shared::finding::Finding;
use remedy_shared::signals::ResourceSnapshot;
use serde::Serialize;
use tokio::sync::Notify;

use crate::logs::LogsStatus;
use crate::metrics::Metrics;
use crate::nft::{Blocker, BlockingStatus};
use crate::pods::PodsStatus;
use crate::pods::restart::Restarter;
use crate::spool::{AppendReport, Spool, SpoolError};

/// Where the stream to the coordinator stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionState {
    /// Dialling.
    Connecting,
    /// Stream open and welcomed.
    Connected,
    /// Waiting before the next attempt.
    Backoff,
}

/// The stream's status, for /readyz and /debug/state.
#[derive(Debug, Clone, Serialize)]
pub struct Connection {
    /// Where it stands.
    pub state: ConnectionState,
    /// The coordinator dialled.
    pub coordinator: String,
    /// The coordinator replica that welcomed us.
    pub coordinator_id: Option<String>,
    /// Since when in this state.
    pub since: Timestamp,
    /// The last failure, if any.
    pub last_error: Option<String>,
    /// Highest sequence the coordinator acknowledged.
    pub last_acked: u64,
}

/// What /debug/state shows besides the spool.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// The stream.
    pub connection: Connection,
    /// The latest snapshot.
    pub snapshot: Option<ResourceSnapshot>,
    /// Findings raised and not cleared.
    pub active_findings: Vec<Finding>,
    /// This node's pods.
    pub pods: PodsStatus,
    /// Log tailing: files, offsets, sources that cannot be read.
    pub logs: LogsStatus,
    /// IP blocking: the table, each ban and whether it is in force.
    pub blocking: BlockingStatus,
    /// What the log detectors have seen.
    pub log_detectors: crate::logs::detect::DetectorsStatus,
    /// Process signals: judged processes, zombies, the kernel log, OOM kills.
    pub processes: crate::procsig::ProcessesStatus,
    /// Log cleanup and GC nudges: budgets, cooldowns, last runs.
    pub local_actions: crate::local::LocalStatus,
}

/// Shared by every task of the agent.
#[derive(Debug)]
pub struct Shared {
    /// The agent's identity.
    pub agent_id: String,
    /// The node.
    pub node_name: String,
    status: Mutex<Status>,
    spool: Mutex<Spool>,
    /// Woken when findings were spooled.
    pub new_findings: Notify,
    /// Metrics.
    pub metrics: Metrics,
    /// Restarts this node's pods; set once when there is a Kubernetes
    /// client, never when pod watching is off.
    restarter: OnceLock<Arc<Restarter>>,
    /// The log detectors, for snapshots; set once when log tailing is on.
    log_detectors: OnceLock<crate::logs::detect::LogDetectors>,
    /// Sets and lifts IP bans; set once when blocking is on and nft works.
    blocker: OnceLock<Arc<Blocker>>,
    /// Log cleanup and GC nudges; set once at start.
    local_actions: OnceLock<Arc<crate::local::LocalActions>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data behind these locks stays consistent across a panic elsewhere.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    /// Shared state around an opened spool.
    pub fn new(
        agent_id: String,
        node_name: String,
        coordinator: String,
        spool: Spool,
        metrics: Metrics,
        now: Timestamp,
    ) -> Arc<Self> {
        metrics.spool_depth.set(spool.depth() as i64);
        Arc::new(Shared {
            agent_id,
            node_name,
            status: Mutex::new(Status {
                connection: Connection {
                    state: ConnectionState::Connecting,
                    coordinator,
                    coordinator_id: None,
                    since: now,
                    last_error: None,
                    last_acked: 0,
                },
                snapshot: None,
                active_findings: Vec::new(),
                pods: PodsStatus::default(),
                logs: LogsStatus::default(),
                blocking: BlockingStatus::default(),
                log_detectors: Default::default(),
                processes: Default::default(),
                local_actions: Default::default(),
            }),
            spool: Mutex::new(spool),
            new_findings: Notify::new(),
            metrics,
            restarter: OnceLock::new(),
            log_detectors: OnceLock::new(),
            blocker: OnceLock::new(),
            local_actions: OnceLock::new(),
        })
    }

    /// Reads or changes the status.
    pub fn status(&self) -> MutexGuard<'_, Status> {
        lock(&self.status)
    }

    /// Makes `restarter` the one that restarts this node's pods; a second
    /// one is ignored, so there is only ever one budget.
    pub fn set_restarter(&self, restarter: Arc<Restarter>) {
        if self.restarter.set(restarter).is_err() {
            tracing::error!("a second pod restarter was offered and ignored");
        }
    }

    /// What restarts this node's pods; `None` while pod watching is off.
    pub fn restarter(&self) -> Option<&Arc<Restarter>> {
        self.restarter.get()
    }

    /// Makes `detectors` the ones snapshots read; a second offer is ignored.
    pub fn set_log_detectors(&self, detectors: crate::logs::detect::LogDetectors) {
        if self.log_detectors.set(detectors).is_err() {
            tracing::error!("second log detectors were offered and ignored");
        }
    }

    /// The log detectors, when log tailing is on.
    pub fn log_detectors(&self) -> Option<&crate::logs::detect::LogDetectors> {
        self.log_detectors.get()
    }

    /// Makes `blocker` the one that holds this node's IP bans.
    pub fn set_blocker(&self, blocker: Arc<Blocker>) {
        if self.blocker.set(blocker).is_err() {
            tracing::error!("a second IP blocker was offered and ignored");
        }
    }

    /// What holds this node's IP bans; `None` while blocking is off.
    pub fn blocker(&self) -> Option<&Arc<Blocker>> {
        self.blocker.get()
    }

    /// Makes `local` the one that runs log cleanup and GC nudges, so there
    /// is one budget of each.
    pub fn set_local_actions(&self, local: Arc<crate::local::LocalActions>) {
        if self.local_actions.set(local).is_err() {
            tracing::error!("second local actions were offered and ignored");
        }
    }

    /// Log cleanup and GC nudges, once set up.
    pub fn local_actions(&self) -> Option<&Arc<crate::local::LocalActions>> {
        self.local_actions.get()
    }

    /// Runs `f` on the spool on a blocking thread (spool writes wait for the disk).
    pub async fn with_spool<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&mut Spool) -> Result<T, SpoolError> + Send + 'static,
    ) -> Result<T, SpoolError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || {
            let mut spool = lock(&me.spool);
            let result = f(&mut spool);
            me.metrics.spool_depth.set(spool.depth() as i64);
            result
        })
        .await
        .map_err(|e| SpoolError::from_panic(e.to_string()))?
    }

    /// Spools findings durably and wakes the sender.
    pub async fn submit(self: &Arc<Self>, findings: Vec<Finding>) -> Result<AppendReport, SpoolError> {
        if findings.is_empty() {
            return Ok(AppendReport::default());
        }
        let count = findings.len() as u64;
        let report = self.with_spool(move |s| s.append(&findings)).await?;
        self.metrics.findings_raised.inc_by(count);
        if report.dropped > 0 {
            self.metrics.spool_dropped.inc_by(report.dropped as u64);
            tracing::warn!(dropped = report.dropped, "spool full: dropped the least severe findings");
        }
        self.new_findings.notify_one();
        Ok(report)
    }

    /// The spool's figures for /debug/state.
    pub fn spool_figures(&self) -> SpoolFigures {
        let spool = lock(&self.spool);
        SpoolFigures {
            depth: spool.depth(),
            capacity: spool.capacity(),
            last_sequence: spool.last_sequence(),
            dropped_total: spool.dropped_total(),
        }
    }
}

/// The spool as /debug/state shows it.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct SpoolFigures {
    /// Findings waiting for an acknowledgement.
    pub depth: usize,
    /// Most it holds.
    pub capacity: usize,
    /// Last sequence assigned.
    pub last_sequence: u64,
    /// Findings dropped since start because it was full.
    pub dropped_total: u64,
}
