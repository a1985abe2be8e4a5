//! IP blocking with nftables, kept in force.
//!
//! The agent owns one table, `inet <blocking.table>` (see [`ruleset`]),
//! and never reads or writes any other. The bans it should hold are kept in
//! memory and in `blocks.json` in the state directory (absolute expiry
//! times, so a restart re-asserts each ban for the time it has left); nft
//! expires each element by itself, with the same timeout.
//!
//! Enforcement is level-triggered: every `blocking.reconcile_interval`, and
//! right after every change, a pass lists the table and puts back what is
//! missing: the table, a set, a chain, our rules (a chain whose rules are
//! not exactly ours is flushed and refilled) or a ban that has not expired;
//! it removes elements this agent did not set. What it had to put back is
//! drift: counted in `remedy_agent_blocks_drift_total`, and per ban in
//! `/debug/state` (`state`, `drifts`, `last_drift_at`) and `list_blocks`.

pub mod cidr;
pub mod config;
pub mod directive;
pub mod ruleset;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nftables::batch::Batch;
use nftables::helper::{self, DEFAULT_NFT, NftablesError};
use nftables::schema::Nftables;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use remedy_shared::Timestamp;
use serde::{Deserialize, Serialize};

pub use self::cidr::{Cidr, Protected};
pub use self::config::BlockingConfig;
use crate::clock::now;
use crate::published::Published;

/// Longest an `nft` run may take before it counts as failed.
const NFT_TIMEOUT: Duration = Duration::from_secs(30);
/// Bans listed one by one in /debug/state; the rest are counted.
const STATUS_BANS: usize = 1_000;
/// A ban with less left than this is left to expire by itself: putting it
/// back would outlive it.
const EXPIRING: Duration = Duration::from_secs(1);

/// The blocking metrics (`remedy_agent_blocks_*`).
#[derive(Debug, Clone, Default)]
pub struct BlockMetrics {
    /// Bans this agent holds.
    pub active: Gauge,
    /// Objects put back (or removed) because someone else changed the table.
    pub drift: Counter,
    /// Bans refused, by reason.
    pub refused: Family<Vec<(String, String)>, Counter>,
    /// Passes that could not list or change the table.
    pub errors: Counter,
}

impl BlockMetrics {
    /// Registers them.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("blocks_active", "IP bans this agent holds", self.active.clone());
        registry.register(
            "blocks_drift",
            "Parts of the nftables table (the table, a set, chain, rule or ban) found changed by someone else and put back",
            self.drift.clone(),
        );
        registry.register("blocks_refused", "IP bans refused, by reason", self.refused.clone());
        registry.register("blocks_errors", "Enforcement passes whose nft run failed", self.errors.clone());
    }
}

/// Why blocking could not do what it was asked. Each says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlockingError {
    /// `blocks.json` in the state directory cannot be read or is not a list
    /// of bans: blocking stays off rather than start without bans it owes.
    #[error("cannot read the bans in {path}: {reason}")]
    StateUnreadable {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The bans cannot be written to the state directory: the change is not
    /// made, since it would not survive a restart.
    #[error("cannot write {path}: {reason}")]
    StateUnwritable {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// The `nft` program is not on this node.
    #[error("{command}: the nft program is not installed (Debian package nftables)")]
    NftMissing {
        /// What was run.
        command: &'static str,
    },
    /// `nft` ran and failed, or did not finish in time; the next pass tries
    /// again.
    #[error("{command} {reason}")]
    Nft {
        /// What was run.
        command: &'static str,
        /// Its error output, or why it did not finish.
        reason: String,
    },
}

/// One ban, as persisted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ban {
    /// What is blocked.
    pub ip: Cidr,
    /// When it ends.
    pub expires_at: Timestamp,
    /// When it was (last) set.
    pub set_at: Timestamp,
    /// Why, as the directive said.
    pub reason: String,
    /// Who asked (`directive <id>`).
    pub by: String,
}

/// Where a ban stands in nftables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    /// Not yet in the table.
    Pending,
    /// In the table at the last pass.
    Enforced,
    /// Found missing at the last pass and put back.
    Drifted,
    /// The last attempt to put it in the table failed.
    Failed,
}

#[derive(Debug, Clone)]
struct Tracked {
    ban: Ban,
    /// Once in the table: from then on, missing is drift.
    applied: bool,
    /// Set again with a new timeout: the element is replaced.
    refresh: bool,
    state: Enforcement,
    drifts: u64,
    last_drift_at: Option<Timestamp>,
}

impl Tracked {
    fn new(ban: Ban) -> Tracked {
        Tracked { ban, applied: false, refresh: false, state: Enforcement::Pending, drifts: 0, last_drift_at: None }
    }
}

#[derive(Debug, Default)]
struct Inner {
    bans: BTreeMap<Cidr, Tracked>,
    /// Unblocked, still to delete from the table.
    removals: BTreeSet<Cidr>,
    /// The table was in place once: from then on, missing is drift.
    established: bool,
}

/// A ban in /debug/state.
#[derive(Debug, Clone, Serialize)]
pub struct BanStatus {
    /// Address or prefix.
    pub ip: String,
    /// When it ends.
    pub expires_at: Timestamp,
    /// Seconds left.
    pub remaining_seconds: u64,
    /// Why.
    pub reason: String,
    /// Who asked.
    pub by: String,
    /// Enforced, drifted, pending or failed.
    pub state: Enforcement,
    /// Times it was found missing and put back.
    pub drifts: u64,
    /// The last time.
    pub last_drift_at: Option<Timestamp>,
}

/// IP blocking in /debug/state.
#[derive(Debug, Clone, Default, Serialize)]
pub struct BlockingStatus {
    /// Whether bans can be set on this agent.
    pub enabled: bool,
    /// Why not, when not.
    pub off: Option<String>,
    /// `inet <name>`.
    pub table: String,
    /// The last enforcement pass.
    pub last_pass_at: Option<Timestamp>,
    /// The last pass's failure; cleared by a pass that works.
    pub last_error: Option<String>,
    /// Drift found since start.
    pub drift_total: u64,
    /// The last drift found, described.
    pub last_drift: Vec<String>,
    /// Bans held.
    pub bans_total: usize,
    /// The first of them (by address).
    pub bans: Vec<BanStatus>,
}

/// What a pass did.
#[derive(Debug, Clone, Default)]
pub struct Pass {
    /// What it found changed and put back.
    pub drift: Vec<String>,
}

/// Holds the bans and keeps them in nftables.
#[derive(Debug)]
pub struct Blocker {
    config: BlockingConfig,
    path: PathBuf,
    inner: tokio::sync::Mutex<Inner>,
    metrics: BlockMetrics,
    /// What /debug/state shows under `blocking`, kept by every pass.
    status: Published<BlockingStatus>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Persisted {
    bans: Vec<Ban>,
}

impl Blocker {
    /// Loads the bans kept in `state_dir`, dropping those that expired.
    pub fn open(
        config: BlockingConfig,
        state_dir: &Path,
        metrics: BlockMetrics,
        status: Published<BlockingStatus>,
    ) -> Result<Blocker, BlockingError> {
        let path = state_dir.join("blocks.json");
        let unreadable = |reason: String| BlockingError::StateUnreadable { path: path.display().to_string(), reason };
        let mut inner = Inner::default();
        match std::fs::read(&path) {
            Ok(bytes) => {
                let kept: Persisted =
                    serde_json::from_slice(&bytes).map_err(|e| unreadable(format!("not a list of bans: {e}")))?;
                let at = now();
                for ban in kept.bans.into_iter().filter(|b| b.expires_at > at) {
                    inner.bans.insert(ban.ip, Tracked::new(ban));
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(unreadable(e.to_string())),
        }
        metrics.active.set(inner.bans.len() as i64);
        Ok(Blocker { config, path, inner: tokio::sync::Mutex::new(inner), metrics, status })
    }

    /// The table, as nft names it.
    pub fn table(&self) -> String {
        format!("inet {}", self.config.table)
    }

    fn persist(&self, inner: &Inner) -> Result<(), BlockingError> {
        let unwritable =
            |reason: String| BlockingError::StateUnwritable { path: self.path.display().to_string(), reason };
        let kept = Persisted { bans: inner.bans.values().map(|t| t.ban.clone()).collect() };
        let bytes = serde_json::to_vec(&kept).map_err(|e| unwritable(e.to_string()))?;
        let tmp = self.path.with_extension("json.tmp");
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        write().map_err(|e| unwritable(e.to_string()))
    }

    /// One enforcement pass.
    pub async fn reconcile(&self) -> Result<Pass, BlockingError> {
        let mut inner = self.inner.lock().await;
        self.pass(&mut inner).await
    }

    /// Puts one new or renewed ban in force without reading the table:
    /// one `nft` batch whose cost does not grow with the bans the table
    /// already holds, so a block takes effect in milliseconds under a
    /// large ban list. It relies on the table a pass put in place; if
    /// anything is not as expected (the table deleted, a renewed element
    /// already gone), nft refuses the batch and a full pass runs instead,
    /// which finds and reports the drift.
    async fn enforce_one(&self, inner: &mut Inner, ip: Cidr) -> Result<Pass, BlockingError> {
        let at = now();
        let Some(t) = inner.bans.get(&ip) else { return Ok(Pass::default()) };
        let left = t.ban.expires_at.since(at);
        if !inner.established || left < EXPIRING {
            return self.pass(inner).await;
        }
        let mut batch = Batch::new();
        if t.applied && t.refresh {
            // A new end: the element is replaced.
            ruleset::delete_bans(&mut batch, &self.config.table, &[ip]);
        }
        ruleset::add_bans(&mut batch, &self.config.table, &[(ip, left.as_millis().div_ceil(1000) as u64)]);
        if let Err(e) = self.apply(batch, false).await {
            tracing::debug!(error = %e, %ip, "the one-element change was refused; enforcing by a full pass");
            return self.pass(inner).await;
        }
        if let Some(t) = inner.bans.get_mut(&ip) {
            t.applied = true;
            t.refresh = false;
            t.state = Enforcement::Enforced;
        }
        let mut b = self.status.lock();
        self.describe(inner, &mut b);
        Ok(Pass::default())
    }

    /// Lifts one ban without reading the table; a full pass when nft
    /// refuses (the element was already gone: someone else removed it).
    async fn lift_one(&self, inner: &mut Inner, ip: Cidr) -> Result<Pass, BlockingError> {
        if !inner.established {
            return self.pass(inner).await;
        }
        let mut batch = Batch::new();
        ruleset::delete_bans(&mut batch, &self.config.table, &[ip]);
        if let Err(e) = self.apply(batch, false).await {
            tracing::debug!(error = %e, %ip, "the one-element removal was refused; a full pass settles it");
            return self.pass(inner).await;
        }
        inner.removals.remove(&ip);
        let mut b = self.status.lock();
        self.describe(inner, &mut b);
        Ok(Pass::default())
    }

    async fn pass(&self, inner: &mut Inner) -> Result<Pass, BlockingError> {
        let result = self.pass_inner(inner).await;
        let mut b = self.status.lock();
        b.last_pass_at = Some(now());
        match &result {
            Ok(pass) => {
                b.last_error = None;
                if !pass.drift.is_empty() {
                    b.drift_total += pass.drift.len() as u64;
                    b.last_drift = pass.drift.clone();
                }
            }
            Err(e) => b.last_error = Some(e.to_string()),
        }
        self.describe(inner, &mut b);
        result
    }

    async fn pass_inner(&self, inner: &mut Inner) -> Result<Pass, BlockingError> {
        let at = now();
        let before = inner.bans.len();
        inner.bans.retain(|_, t| t.ban.expires_at > at);
        if inner.bans.len() != before
            && let Err(e) = self.persist(inner)
        {
            tracing::warn!(error = %e, "cannot forget expired bans in the state directory");
        }
        self.metrics.active.set(inner.bans.len() as i64);
        let listing = match self.list_table().await {
            Ok(l) => l,
            Err(e) => {
                self.metrics.errors.inc();
                return Err(e);
            }
        };
        let table = &self.config.table;
        let observed = ruleset::observe(listing.as_ref(), table);
        let mut batch = Batch::new();
        let mut drift = Vec::new();
        let mut touched = false;
        if !observed.structure_intact() {
            if inner.established {
                if !observed.table {
                    drift.push(format!("table {} was deleted", self.table()));
                } else {
                    drift.extend(observed.bad_sets.iter().map(|s| format!("set {s} missing or changed")));
                    drift.extend(observed.bad_chains.iter().map(|c| format!("chain {c} missing or changed")));
                    drift.extend(observed.bad_rules.iter().map(|c| format!("rules of chain {c} changed")));
                }
            }
            ruleset::structure(&mut batch, table);
            touched = true;
        }
        let mut deletes: Vec<Cidr> =
            inner.removals.iter().filter(|c| observed.bans.contains_key(*c)).copied().collect();
        for extra in observed.bans.keys().filter(|c| !inner.bans.contains_key(*c) && !inner.removals.contains(*c)) {
            drift.push(format!("ban {extra} was not set by this agent: removed"));
            deletes.push(*extra);
        }
        let mut adds = Vec::new();
        let mut drifted = BTreeSet::new();
        for (ip, t) in inner.bans.iter_mut() {
            let left = t.ban.expires_at.since(at);
            let present = observed.bans.contains_key(ip);
            if present && !t.refresh {
                t.applied = true;
                t.state = Enforcement::Enforced;
                continue;
            }
            if left < EXPIRING {
                continue;
            }
            if present {
                deletes.push(*ip);
            } else if t.applied && !t.refresh {
                t.drifts += 1;
                t.last_drift_at = Some(at);
                drifted.insert(*ip);
                drift.push(format!("ban {ip} was missing"));
            }
            adds.push((*ip, left.as_millis().div_ceil(1000) as u64));
        }
        ruleset::delete_bans(&mut batch, table, &deletes);
        ruleset::add_bans(&mut batch, table, &adds);
        if touched || !deletes.is_empty() || !adds.is_empty() {
            if let Err(e) = self.apply(batch, false).await {
                self.metrics.errors.inc();
                for (ip, _) in &adds {
                    if let Some(t) = inner.bans.get_mut(ip) {
                        t.state = Enforcement::Failed;
                    }
                }
                return Err(e);
            }
            for (ip, _) in &adds {
                if let Some(t) = inner.bans.get_mut(ip) {
                    t.applied = true;
                    t.refresh = false;
                    t.state = if drifted.contains(ip) { Enforcement::Drifted } else { Enforcement::Enforced };
                }
            }
        }
        inner.removals.clear();
        inner.established = true;
        if !drift.is_empty() {
            self.metrics.drift.inc_by(drift.len() as u64);
            tracing::warn!(table = %self.table(), drift = ?drift, "the nftables table was changed by someone else: put back");
        }
        Ok(Pass { drift })
    }

    fn describe(&self, inner: &Inner, b: &mut crate::nft::BlockingStatus) {
        let at = now();
        b.enabled = true;
        b.off = None;
        b.table = self.table();
        b.bans_total = inner.bans.len();
        b.bans = inner.bans.values().take(STATUS_BANS).map(|t| ban_status(t, at)).collect();
    }

    /// `nft -j list table inet <name>`; `None` when there is no such table.
    async fn list_table(&self) -> Result<Option<Nftables<'static>>, BlockingError> {
        let table = self.config.table.clone();
        let run = tokio::task::spawn_blocking(move || {
            helper::get_current_ruleset_with_args(DEFAULT_NFT, ["list", "table", "inet", table.as_str()])
        });
        match tokio::time::timeout(NFT_TIMEOUT, run).await {
            Err(_) => Err(BlockingError::Nft { command: LIST, reason: format!("took longer than {NFT_TIMEOUT:?}") }),
            Ok(Err(e)) => Err(BlockingError::Nft { command: LIST, reason: format!("did not finish: {e}") }),
            Ok(Ok(Ok(listing))) => Ok(Some(listing)),
            Ok(Ok(Err(NftablesError::NftFailed { stderr, .. }))) if stderr.contains("No such file or directory") => {
                Ok(None)
            }
            Ok(Ok(Err(e))) => Err(nft_error(LIST, e)),
        }
    }

    /// Runs a batch with `nft -j -f -` (with `--check`: validated by the
    /// kernel, then thrown away).
    async fn apply(&self, batch: Batch<'static>, check: bool) -> Result<(), BlockingError> {
        let nftables = batch.to_nftables();
        let run = tokio::task::spawn_blocking(move || {
            let args: &[&str] = if check { &["--check"] } else { &[] };
            helper::apply_ruleset_with_args(&nftables, DEFAULT_NFT, args)
        });
        match tokio::time::timeout(NFT_TIMEOUT, run).await {
            Err(_) => Err(BlockingError::Nft { command: APPLY, reason: format!("took longer than {NFT_TIMEOUT:?}") }),
            Ok(Err(e)) => Err(BlockingError::Nft { command: APPLY, reason: format!("did not finish: {e}") }),
            Ok(Ok(result)) => result.map_err(|e| nft_error(APPLY, e)),
        }
    }
}

/// The two commands the agent runs.
const LIST: &str = "nft list table";
const APPLY: &str = "nft -j -f -";

fn nft_error(command: &'static str, e: NftablesError) -> BlockingError {
    match e {
        NftablesError::NftFailed { stderr, .. } => {
            BlockingError::Nft { command, reason: format!("failed: {}", stderr.trim()) }
        }
        NftablesError::NftExecution { inner, .. } if inner.kind() == std::io::ErrorKind::NotFound => {
            BlockingError::NftMissing { command }
        }
        other => BlockingError::Nft { command, reason: format!("failed: {other}") },
    }
}

fn ban_status(t: &Tracked, at: Timestamp) -> BanStatus {
    BanStatus {
        ip: t.ban.ip.to_string(),
        expires_at: t.ban.expires_at,
        remaining_seconds: t.ban.expires_at.since(at).as_secs(),
        reason: t.ban.reason.clone(),
        by: t.ban.by.clone(),
        state: t.state,
        drifts: t.drifts,
        last_drift_at: t.last_drift_at,
    }
}

/// IP blocking as started: its status, and the blocker while it is on.
#[derive(Debug)]
pub struct Blocking {
    /// What /debug/state shows under `blocking`.
    pub status: Published<BlockingStatus>,
    /// Sets and lifts bans; `None` while blocking is off.
    pub blocker: Option<Arc<Blocker>>,
    /// The enforcement loop, while blocking is on.
    pub task: Option<tokio::task::JoinHandle<()>>,
}

/// Starts IP blocking when enabled and nft works here: the first pass puts
/// the table and the persisted bans in place, then the enforcement loop
/// runs until `stopped`. Otherwise says why in /debug/state and the log,
/// and the block directives are not announced.
pub async fn start(
    config: &BlockingConfig,
    state_dir: &Path,
    metrics: BlockMetrics,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> Blocking {
    let status = Published::new(BlockingStatus { table: format!("inet {}", config.table), ..Default::default() });
    let off = |why: String| {
        let mut s = status.lock();
        s.enabled = false;
        s.off = Some(why);
    };
    if !config.enabled {
        tracing::info!("IP blocking off (blocking.enabled: false)");
        off("blocking.enabled is false".into());
        return Blocking { status, blocker: None, task: None };
    }
    let blocker = match Blocker::open(config.clone(), state_dir, metrics, status.clone()) {
        Ok(b) => Arc::new(b),
        Err(e) => {
            tracing::error!(error = %e, "IP blocking off: cannot load the bans");
            off(e.to_string());
            return Blocking { status, blocker: None, task: None };
        }
    };
    if let Err(e) = blocker.reconcile().await {
        tracing::error!(error = %e, table = %blocker.table(), "IP blocking off: nftables does not work here");
        off(format!("nftables does not work here: {e}"));
        return Blocking { status, blocker: None, task: None };
    }
    tracing::info!(table = %blocker.table(), bans = status.lock().bans_total, "IP blocking on");
    let enforcer = blocker.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(enforcer.config.reconcile_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        tokio::pin!(stopped);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = &mut stopped => return,
            }
            if let Err(e) = enforcer.reconcile().await {
                tracing::error!(error = %e, table = %enforcer.table(), "cannot enforce the IP bans; trying again");
            }
        }
    });
    Blocking { status, blocker: Some(blocker), task: Some(task) }
}
