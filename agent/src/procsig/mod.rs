//! Process signals: processes above a memory or CPU threshold
//! (`process_hot`), zombies (`process_zombies`) and the kernel's OOM kills
//! (`node_oom_kill`).
//!
//! The judging is pure ([`hot`], [`zombies`], [`oom`]); this module is the
//! edge: it reads the process table ([`table`]) and the kernel log
//! ([`kmsg`]) on its own task, so walking `/proc` on a busy node never
//! delays the node sample, and spools what the judges raise.
//!
//! Container restarts are the pods watch's (`pod_crash_loop` from the API's
//! restart counts); nothing here counts them again.

pub mod config;
pub mod hot;
pub mod kmsg;
pub mod oom;
pub mod table;
pub mod zombies;

use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use remedy_shared::Timestamp;
use remedy_shared::finding::Finding;
use serde::Serialize;

use crate::clock::now;
use crate::outbox::Outbox;
use crate::published::Published;
pub use config::ProcessesConfig;

/// How often the kernel log is read.
const KERNEL_LOG_POLL: Duration = Duration::from_millis(500);
/// Tracked processes listed in /debug/state; the rest are counted.
const STATUS_TRACKED: usize = 50;
/// OOM kills remembered for /debug/state.
const STATUS_KILLS: usize = 20;

/// The process signals' metrics (`remedy_agent_process_*`).
#[derive(Debug, Clone, Default)]
pub struct ProcessMetrics {
    /// Reads of the process table.
    pub samples: Counter,
    /// Processes in the last read.
    pub processes: Gauge,
    /// (process, resource) pairs being judged.
    pub tracked: Gauge,
    /// Processes over a threshold the bound left unjudged, last read.
    pub untracked: Gauge,
    /// `process_hot` findings held.
    pub hot_active: Gauge,
    /// Zombies in the last read.
    pub zombies: Gauge,
    /// OOM kills read from the kernel log.
    pub oom_kills: Counter,
    /// Kernel log records read.
    pub kernel_log_records: Counter,
    /// Kernel log records overwritten before they were read.
    pub kernel_log_lost: Counter,
    /// 1 while the kernel log can be read.
    pub kernel_log_readable: Gauge,
}

impl ProcessMetrics {
    /// Registers them.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("process_samples", "Reads of the node's process table", self.samples.clone());
        registry.register(
            "processes",
            "Processes in the last read of the node's process table",
            self.processes.clone(),
        );
        registry.register(
            "process_tracked",
            "Processes (per resource) at or above a threshold being judged",
            self.tracked.clone(),
        );
        registry.register(
            "process_untracked",
            "Processes over a threshold left unjudged by processes.max_tracked at the last read",
            self.untracked.clone(),
        );
        registry.register("process_hot_active", "process_hot findings held", self.hot_active.clone());
        registry.register("process_zombies", "Zombie processes at the last read", self.zombies.clone());
        registry.register("process_oom_kills", "Kernel OOM kills read from the kernel log", self.oom_kills.clone());
        registry.register(
            "process_kernel_log_records",
            "Kernel log records read (for OOM kills)",
            self.kernel_log_records.clone(),
        );
        registry.register(
            "process_kernel_log_lost",
            "Kernel log records overwritten before the agent read them",
            self.kernel_log_lost.clone(),
        );
        registry.register(
            "process_kernel_log_readable",
            "1 while the kernel log can be read (OOM kills are seen)",
            self.kernel_log_readable.clone(),
        );
    }
}

/// The processes section of /debug/state.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcessesStatus {
    /// Whether process signals run.
    pub enabled: bool,
    /// When the table was last read.
    pub last_read: Option<Timestamp>,
    /// Processes in it.
    pub processes: usize,
    /// Processes at or above a threshold being judged (the first 50).
    pub tracked: Vec<hot::TrackedStatus>,
    /// How many are judged in all.
    pub tracked_total: usize,
    /// Over a threshold, left unjudged by the bound.
    pub untracked: usize,
    /// Zombies.
    pub zombies: zombies::ZombiesStatus,
    /// The kernel log, when OOM kills are read.
    pub kernel_log: Option<kmsg::KernelLogStatus>,
    /// The latest OOM kills, newest last.
    pub oom_kills: Vec<oom::OomKill>,
    /// Findings held.
    pub findings: Vec<Finding>,
    /// Container restart counts come from the pods watch (pod_crash_loop).
    pub restarts: &'static str,
}

/// Process signals as started: what /debug/state shows under `processes`,
/// and the task while it runs.
#[derive(Debug, Default)]
pub struct Processes {
    /// `/debug/state`'s `processes`.
    pub status: Published<ProcessesStatus>,
    /// The task, while process signals are on.
    pub task: Option<tokio::task::JoinHandle<()>>,
}

/// Starts the process signals' task on `node`, when enabled.
pub fn start(
    config: &ProcessesConfig,
    node: &str,
    outbox: Outbox,
    metrics: ProcessMetrics,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> Processes {
    let c = config.clone();
    if !c.enabled {
        tracing::info!("process signals off (processes.enabled: false)");
        return Processes::default();
    }
    tracing::info!(
        interval = ?c.interval,
        memory = c.memory.is_some(),
        cpu = c.cpu.is_some(),
        zombies = c.zombies.is_some(),
        oom_kills = ?c.oom_kills.as_ref().map(|o| o.source.display().to_string()),
        "process signals on"
    );
    let status = Published::new(ProcessesStatus { enabled: true, restarts: RESTARTS, ..ProcessesStatus::default() });
    let task = tokio::spawn(run(status.clone(), outbox, metrics, c, node.to_owned(), stopped));
    Processes { status, task: Some(task) }
}

struct Judges {
    hot: hot::HotJudge,
    zombies: Option<zombies::ZombieJudge>,
    oom: Option<(kmsg::KernelLog, oom::OomParser, oom::OomJudge)>,
    kills: Vec<oom::OomKill>,
}

async fn run(
    status: Published<ProcessesStatus>,
    outbox: Outbox,
    metrics: ProcessMetrics,
    config: ProcessesConfig,
    node: String,
    stopped: impl Future<Output = ()>,
) {
    let mut collector = match table::Collector::new(config.cmdline_bytes) {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::error!(error = %e, "cannot read this node's processes: only OOM kills are watched");
            None
        }
    };
    let mut judges = Judges {
        hot: hot::HotJudge::new(&config, node.clone()),
        zombies: config.zombies.map(|z| zombies::ZombieJudge::new(z, node.clone())),
        oom: config.oom_kills.as_ref().map(|o| {
            let rule = oom::OomRule { clear_after: o.clear_after, severity: o.severity };
            (
                kmsg::KernelLog::new(&o.source, o.from_beginning),
                oom::OomParser::default(),
                oom::OomJudge::new(rule, node),
            )
        }),
        kills: Vec::new(),
    };
    let mut sample = tokio::time::interval(config.interval);
    sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut kernel = tokio::time::interval(KERNEL_LOG_POLL);
    kernel.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stopped);
    loop {
        let findings = tokio::select! {
            () = &mut stopped => return,
            _ = sample.tick(), if collector.is_some() => {
                let Some(mut c) = collector.take() else { continue };
                // Walking /proc blocks; it runs beside the runtime's workers.
                let (c, table) = match tokio::task::spawn_blocking(move || { let t = c.read(); (c, t) }).await {
                    Ok(read) => read,
                    Err(e) => {
                        tracing::error!(error = %e, "reading the process table failed; process signals stop");
                        return;
                    }
                };
                collector = Some(c);
                let at = now();
                metrics.samples.inc();
                metrics.processes.set(table.processes.len() as i64);
                let mut findings = judges.hot.observe(&table, at);
                if let Some(z) = judges.zombies.as_mut() {
                    findings.extend(z.observe(&table, at));
                }
                let mut s = status.lock();
                s.last_read = Some(at);
                s.processes = table.processes.len();
                let tracked = judges.hot.tracked();
                s.tracked_total = tracked.len();
                s.tracked = tracked.into_iter().take(STATUS_TRACKED).collect();
                s.untracked = judges.hot.untracked();
                s.zombies = judges.zombies.as_ref().map(|z| z.status()).unwrap_or_else(|| {
                    let (count, parents) = zombies::count(&table);
                    zombies::ZombiesStatus { count, parents, phase: None }
                });
                metrics.tracked.set(s.tracked_total as i64);
                metrics.untracked.set(s.untracked as i64);
                metrics.zombies.set(s.zombies.count as i64);
                findings
            }
            _ = kernel.tick(), if judges.oom.is_some() => read_kernel_log(&status, &mut judges, &metrics),
        };
        let held = held(&judges);
        metrics
            .hot_active
            .set(held.iter().filter(|f| f.kind == remedy_shared::finding::FindingKind::ProcessHot).count() as i64);
        status.lock().findings = held;
        if let Err(e) = outbox.submit(findings).await {
            tracing::error!(error = %e, "cannot spool process findings");
        }
    }
}

const RESTARTS: &str = "container restarts are counted by the pods watch (pod_crash_loop)";

/// Reads what the kernel logged since the last read; returns the findings.
fn read_kernel_log(status: &Published<ProcessesStatus>, judges: &mut Judges, metrics: &ProcessMetrics) -> Vec<Finding> {
    let Some((log, parser, judge)) = judges.oom.as_mut() else { return Vec::new() };
    let at = now();
    let lost_before = log.status().lost;
    let records = log.read(at);
    metrics.kernel_log_records.inc_by(records.len() as u64);
    metrics.kernel_log_lost.inc_by(log.status().lost - lost_before);
    metrics.kernel_log_readable.set(i64::from(log.status().readable));
    let mut kills = Vec::new();
    for record in &records {
        kills.extend(parser.feed(&oom::parse_record(record), at));
    }
    kills.extend(parser.flush(at));
    let mut findings = judge.tick(at);
    for kill in kills {
        tracing::warn!(pid = kill.pid, process = %kill.process, pod_uid = ?kill.pod_uid, "kernel OOM kill");
        metrics.oom_kills.inc();
        findings.push(judge.kill(&kill, at));
        judges.kills.push(kill);
    }
    let excess = judges.kills.len().saturating_sub(STATUS_KILLS);
    judges.kills.drain(..excess);
    let mut status = status.lock();
    status.kernel_log = Some(log.status().clone());
    if excess > 0 || !findings.is_empty() {
        status.oom_kills.clone_from(&judges.kills);
    }
    findings
}

/// Every process finding held, for /debug/state.
fn held(judges: &Judges) -> Vec<Finding> {
    let mut out: Vec<Finding> = Vec::new();
    if let Some((_, _, judge)) = judges.oom.as_ref() {
        out.extend(judge.active().cloned());
    }
    out.extend(judges.hot.held().cloned());
    if let Some(z) = judges.zombies.as_ref() {
        out.extend(z.held().cloned());
    }
    out
}
