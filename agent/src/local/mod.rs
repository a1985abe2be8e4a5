//! Actions the agent takes on its own node from directives: `log_cleanup`
//! (see [`cleanup`]) and `gc_nudge` (see [`nudge`]). Each runs through a
//! local budget per hour and a cooldown ([`limit`]), honours dry-run (which
//! checks the budget and spends none of it), and answers with evidence.

pub mod cleanup;
pub mod config;
pub mod limit;
pub mod nudge;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use remedy_shared::Timestamp;
use remedy_shared::cleanup as cleanup_words;
use serde::Serialize;

use self::config::LocalActionsConfig;
use self::limit::{Exhausted, LimitStatus, Limiter};
use crate::clock::now;
use crate::handler::{Handlers, Outcome, Reply, Request};
use crate::logs::LogsStatus;
use remedy_shared::sync::lock;

use crate::published::Published;

/// Deletes old log files under the configured roots.
pub const LOG_CLEANUP: &str = "log_cleanup";
/// Asks matching processes' runtimes to collect garbage.
pub const GC_NUDGE: &str = "gc_nudge";
/// The cooldown target of log cleanup: the node.
const NODE: &str = "node";

/// The local actions' metrics (`remedy_agent_local_*`).
#[derive(Debug, Clone, Default)]
pub struct LocalMetrics {
    /// Directives answered, by action and outcome.
    pub runs: Family<Vec<(String, String)>, Counter>,
    /// Directives refused, by action and reason.
    pub refused: Family<Vec<(String, String)>, Counter>,
    /// Files deleted by log cleanup.
    pub files_deleted: Counter,
    /// Bytes freed by log cleanup.
    pub bytes_freed: Counter,
    /// Files log cleanup kept, by reason.
    pub files_skipped: Family<Vec<(String, String)>, Counter>,
    /// Processes nudged, by selector and result.
    pub nudges: Family<Vec<(String, String)>, Counter>,
}

impl LocalMetrics {
    /// Registers them.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("local_runs", "Local action directives answered, by action and outcome", self.runs.clone());
        registry.register(
            "local_refused",
            "Local action directives refused, by action and reason",
            self.refused.clone(),
        );
        registry.register("local_cleanup_files_deleted", "Files deleted by log cleanup", self.files_deleted.clone());
        registry.register("local_cleanup_bytes_freed", "Bytes freed by log cleanup", self.bytes_freed.clone());
        registry.register(
            "local_cleanup_files_skipped",
            "Files log cleanup kept, by reason (too young, open by a process, other hard links, another mount, symlink...)",
            self.files_skipped.clone(),
        );
        registry.register(
            "local_gc_nudges",
            "Processes nudged to collect garbage, by selector and result",
            self.nudges.clone(),
        );
    }
}

/// One local action's last run, for /debug/state.
#[derive(Debug, Clone, Serialize)]
pub struct LastRun {
    /// When it finished.
    pub at: Timestamp,
    /// Its directive.
    pub directive: String,
    /// Its outcome.
    pub outcome: String,
    /// Its message.
    pub message: String,
}

/// One local action, for /debug/state.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ActionStatus {
    /// Whether directives run it.
    pub enabled: bool,
    /// Its budget and cooldowns.
    pub limit: LimitStatus,
    /// Where (cleanup roots) or what (nudge selectors).
    pub scope: Vec<String>,
    /// The last directive it answered.
    pub last: Option<LastRun>,
}

/// What /debug/state shows under `local_actions`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LocalStatus {
    /// `log_cleanup`.
    pub log_cleanup: ActionStatus,
    /// `gc_nudge`.
    pub gc_nudge: ActionStatus,
}

/// Runs local actions, each through its own limiter.
#[derive(Debug)]
pub struct LocalActions {
    config: LocalActionsConfig,
    cleanup_limit: Mutex<Limiter>,
    nudge_limit: Mutex<Limiter>,
    /// One cleanup at a time: two walks would race for the same files.
    cleanup_running: tokio::sync::Mutex<()>,
    /// What /debug/state shows under `local_actions`.
    status: Published<LocalStatus>,
    metrics: LocalMetrics,
    /// The log tailer's files: cleanup never deletes a file being read.
    tailed: Published<LogsStatus>,
}

impl LocalActions {
    /// Local actions as configured, their status published for
    /// /debug/state; `tailed` tells which files the log tailer reads.
    pub fn new(config: LocalActionsConfig, metrics: LocalMetrics, tailed: Published<LogsStatus>) -> LocalActions {
        let c = &config;
        let local = LocalActions {
            cleanup_limit: Mutex::new(Limiter::new(c.log_cleanup.max_per_hour, c.log_cleanup.cooldown)),
            nudge_limit: Mutex::new(Limiter::new(c.gc_nudge.max_per_hour, c.gc_nudge.cooldown)),
            cleanup_running: tokio::sync::Mutex::new(()),
            config,
            status: Published::default(),
            metrics,
            tailed,
        };
        *local.status.lock() = local.describe(now());
        local
    }

    /// What /debug/state shows under `local_actions`.
    pub fn status(&self) -> Published<LocalStatus> {
        self.status.clone()
    }

    fn describe(&self, at: Timestamp) -> LocalStatus {
        let c = &self.config;
        LocalStatus {
            log_cleanup: ActionStatus {
                enabled: c.log_cleanup.enabled,
                limit: lock(&self.cleanup_limit).status(at),
                scope: c
                    .log_cleanup
                    .roots
                    .iter()
                    .map(|r| {
                        format!(
                            "{} {} older than {} (emergency {})",
                            r.path.display(),
                            r.globs.join(" "),
                            remedy_shared::config::format_duration(r.older_than),
                            remedy_shared::config::format_duration(r.emergency_older_than)
                        )
                    })
                    .collect(),
                last: None,
            },
            gc_nudge: ActionStatus {
                enabled: c.gc_nudge.enabled,
                limit: lock(&self.nudge_limit).status(at),
                scope: c.gc_nudge.selectors.iter().map(|s| format!("{}: {}", s.name, s.method.describe())).collect(),
                last: None,
            },
        }
    }
}

/// Serves `log_cleanup` and `gc_nudge`: each announced while enabled, and
/// answered with why not while it is off.
pub fn register(handlers: &mut Handlers, local: &Arc<LocalActions>) {
    for (name, enabled) in [(LOG_CLEANUP, local.config.log_cleanup.enabled), (GC_NUDGE, local.config.gc_nudge.enabled)]
    {
        let local = local.clone();
        let handler = move |request: Request| {
            let local = local.clone();
            async move { local.run(&request).await }
        };
        if enabled {
            handlers.announce(name, handler);
        } else {
            handlers.answer_unannounced(name, handler);
        }
    }
}

impl LocalActions {
    fn record(&self, action: &str, directive_id: &str, reply: &Reply) {
        let outcome = reply.outcome.as_str().to_owned();
        let m = &self.metrics;
        m.runs.get_or_create(&vec![("action".into(), action.into()), ("outcome".into(), outcome.clone())]).inc();
        if reply.outcome == Outcome::Refused {
            let reason = reply.evidence.get("reason").cloned().unwrap_or_else(|| "parameters".into());
            m.refused.get_or_create(&vec![("action".into(), action.into()), ("reason".into(), reason)]).inc();
        }
        let at = now();
        let fresh = self.describe(at);
        let mut s = self.status.lock();
        let last_cleanup = s.log_cleanup.last.take();
        let last_nudge = s.gc_nudge.last.take();
        *s = fresh;
        s.log_cleanup.last = last_cleanup;
        s.gc_nudge.last = last_nudge;
        let last = LastRun { at, directive: directive_id.to_owned(), outcome, message: reply.message.clone() };
        match action {
            LOG_CLEANUP => s.log_cleanup.last = Some(last),
            _ => s.gc_nudge.last = Some(last),
        }
    }

    /// Runs a `log_cleanup` or `gc_nudge` directive.
    pub async fn run(self: &Arc<Self>, request: &Request) -> Reply {
        let (params, dry_run) = (&request.params, request.dry_run);
        let reply = match request.action.as_str() {
            LOG_CLEANUP => self.log_cleanup(params, dry_run).await,
            _ => self.gc_nudge(params, dry_run).await,
        };
        self.record(&request.action, &request.id, &reply);
        reply
    }
}

fn refused(message: String, reason: &str, dry_run: bool, mut evidence: BTreeMap<String, String>) -> Reply {
    evidence.insert("reason".into(), reason.to_owned());
    let prefix = if dry_run { "dry run: " } else { "" };
    Reply { outcome: Outcome::Refused, message: format!("{prefix}{message}"), evidence }
}

fn exhausted(action: &str, e: &Exhausted, dry_run: bool, evidence: BTreeMap<String, String>) -> Reply {
    refused(format!("not running {action}: {e}"), e.reason(), dry_run, evidence)
}

impl LocalActions {
    async fn log_cleanup(self: &Arc<Self>, params: &HashMap<String, String>, dry_run: bool) -> Reply {
        let base = BTreeMap::from([("dry_run".to_owned(), dry_run.to_string())]);
        let local = self;
        let config = &local.config.log_cleanup;
        let wanted = match cleanup::cleanup_params(params, config) {
            Ok(p) => p,
            Err(e) => return refused(e, "parameters", dry_run, base),
        };
        if !config.enabled {
            return refused(
                "log cleanup is off on this agent (local_actions.log_cleanup.enabled is false)".into(),
                "off",
                dry_run,
                base,
            );
        }
        let _one = local.cleanup_running.lock().await;
        let at = now();
        let spent = {
            let mut limiter = lock(&local.cleanup_limit);
            let r = if dry_run { limiter.check(NODE, at) } else { limiter.take(NODE, at) };
            r.map(|()| (limiter.used(at), limiter.max_per_hour()))
        };
        let (used, max) = match spent {
            Ok(u) => u,
            Err(e) => return exhausted(LOG_CLEANUP, &e, dry_run, base),
        };
        let tailed: HashSet<(u64, u64)> = self.tailed.lock().files.iter().map(|f| (f.dev, f.ino)).collect();
        let limits = cleanup::Limits {
            max_files: wanted.max_files,
            max_depth: config.max_depth,
            deadline: Instant::now() + config.max_duration,
        };
        let job = tokio::task::spawn_blocking(move || cleanup::run(&wanted, limits, &tailed, dry_run));
        let out = match job.await {
            Ok(o) => o,
            Err(e) => {
                return Reply { outcome: Outcome::Failed, message: format!("log cleanup failed: {e}"), evidence: base };
            }
        };
        let m = &self.metrics;
        if !dry_run {
            m.files_deleted.inc_by(out.deleted);
            m.bytes_freed.inc_by(out.bytes);
            for (reason, n) in &out.kept {
                m.files_skipped.get_or_create(&vec![("reason".into(), reason.name().to_owned())]).inc_by(*n);
            }
        }
        let mut evidence = base;
        evidence.extend(out.roots.clone());
        let (files_key, bytes_key) = if dry_run {
            (cleanup_words::FILES_WOULD_DELETE, cleanup_words::BYTES_WOULD_FREE)
        } else {
            (cleanup_words::FILES_DELETED, cleanup_words::BYTES_FREED)
        };
        evidence.insert(files_key.into(), out.deleted.to_string());
        evidence.insert(bytes_key.into(), out.bytes.to_string());
        evidence.insert("files_matched".into(), out.matched.to_string());
        let kept: u64 = out.kept.iter().filter(|(r, _)| r.for_safety()).map(|(_, n)| n).sum();
        evidence.insert("kept".into(), kept.to_string());
        for (reason, n) in &out.kept {
            evidence.insert(format!("{}{}", cleanup_words::SKIPPED_PREFIX, reason.name()), n.to_string());
        }
        for (path, what) in &out.files {
            evidence.insert(format!("file.{}", path.display()), what.clone());
        }
        if let Some(t) = &out.truncated {
            evidence.insert("truncated".into(), t.clone());
        }
        if out.procs_unreadable > 0 {
            evidence.insert(cleanup_words::UNREADABLE_PROCESSES.into(), out.procs_unreadable.to_string());
        }
        if !dry_run {
            evidence.insert("budget_used".into(), used.to_string());
        }
        evidence.insert("budget_max".into(), max.to_string());
        // What was kept, and why, is part of the one line: it reaches the
        // incident's timeline as the node's message.
        let kept = out.kept_summary().map(|k| format!("; {k}")).unwrap_or_default();
        let unreadable = if out.procs_unreadable > 0 {
            let n = out.procs_unreadable;
            format!(" (the open files of {n} {} could not be read)", if n == 1 { "process" } else { "processes" })
        } else {
            String::new()
        };
        let stopped = out.truncated.as_ref().map(|t| format!("; stopped early ({t})")).unwrap_or_default();
        let any_emergency = out.roots.iter().any(|(k, v)| k.ends_with(".emergency") && v == "true");
        let mode = if any_emergency { " (emergency)" } else { "" };
        if dry_run {
            Reply {
                outcome: Outcome::DryRun,
                message: format!(
                    "dry run{mode}: would delete {} files ({} bytes){kept}{unreadable}{stopped}",
                    out.deleted, out.bytes
                ),
                evidence,
            }
        } else {
            Reply {
                outcome: Outcome::Succeeded,
                message: format!(
                    "deleted {} files{mode}, {} bytes freed{kept}{unreadable}{stopped}",
                    out.deleted, out.bytes
                ),
                evidence,
            }
        }
    }

    async fn gc_nudge(self: &Arc<Self>, params: &HashMap<String, String>, dry_run: bool) -> Reply {
        let mut evidence = BTreeMap::from([("dry_run".to_owned(), dry_run.to_string())]);
        let local = self;
        let config = &local.config.gc_nudge;
        let wanted = match nudge::nudge_params(params, config) {
            Ok(p) => p,
            Err(e) => return refused(e, "parameters", dry_run, evidence),
        };
        if !config.enabled {
            return refused(
                "GC nudges are off on this agent (local_actions.gc_nudge.enabled is false)".into(),
                "off",
                dry_run,
                evidence,
            );
        }
        let selector = match nudge::choose(config, &wanted) {
            Ok(s) => s.clone(),
            Err(e) => return refused(e, "selector", dry_run, evidence),
        };
        evidence.insert("selector".into(), selector.name.clone());
        evidence.insert("method".into(), selector.method.describe());
        let targets = match wanted.pid {
            Some(pid) => {
                let Some(p) = nudge::read_process(pid) else {
                    return Reply {
                        outcome: Outcome::Failed,
                        message: format!("no process {pid} on this node"),
                        evidence,
                    };
                };
                if pid == std::process::id() as i32 {
                    return refused(
                        format!("pid {pid} is this agent: it never nudges itself"),
                        "not_matching",
                        dry_run,
                        evidence,
                    );
                }
                if let Some(why) = nudge::mismatch(&selector, &p) {
                    evidence.insert("pid".into(), pid.to_string());
                    return refused(
                        format!(
                            "not nudging pid {pid} (`{}`): it does not match selector `{}`: {why}",
                            p.name, selector.name
                        ),
                        "not_matching",
                        dry_run,
                        evidence,
                    );
                }
                let rss = nudge::rss_bytes(pid).unwrap_or(0);
                vec![(p, rss)]
            }
            None => {
                let s = selector.clone();
                let max = wanted.max;
                tokio::task::spawn_blocking(move || nudge::matching(&s, max)).await.unwrap_or_default()
            }
        };
        if targets.is_empty() {
            return Reply {
                outcome: Outcome::Failed,
                message: format!("no process on this node matches selector `{}`", selector.name),
                evidence,
            };
        }
        let at = now();
        let spent = {
            let mut limiter = lock(&local.nudge_limit);
            let r = if dry_run { limiter.check(&selector.name, at) } else { limiter.take(&selector.name, at) };
            r.map(|()| (limiter.used(at), limiter.max_per_hour()))
        };
        let (used, max) = match spent {
            Ok(u) => u,
            Err(e) => return exhausted(GC_NUDGE, &e, dry_run, evidence),
        };
        let pids: Vec<String> = targets.iter().map(|(p, _)| p.pid.to_string()).collect();
        evidence.insert("pids".into(), pids.join(","));
        evidence.insert("budget_max".into(), max.to_string());
        if dry_run {
            for (p, rss) in &targets {
                let n = nudge::Nudged {
                    process: p.clone(),
                    before: *rss,
                    after: None,
                    settled: false,
                    result: Ok(String::new()),
                };
                nudge::evidence(&n, true, &mut evidence);
            }
            return Reply {
                outcome: Outcome::DryRun,
                message: format!(
                    "dry run: would nudge {} process(es) of selector `{}` ({}): {}",
                    targets.len(),
                    selector.name,
                    selector.method.describe(),
                    pids.join(", ")
                ),
                evidence,
            };
        }
        evidence.insert("budget_used".into(), used.to_string());
        let results = nudge::nudge(&selector.method, targets, config.settle).await;
        let mut ok = 0;
        let (mut before, mut after) = (0u64, 0u64);
        for n in &results {
            nudge::evidence(n, false, &mut evidence);
            let result = if n.result.is_ok() { "nudged" } else { "failed" };
            self.metrics
                .nudges
                .get_or_create(&vec![("selector".into(), selector.name.clone()), ("result".into(), result.into())])
                .inc();
            if n.result.is_ok() {
                ok += 1;
                before += n.before;
                after += n.after.unwrap_or(n.before);
            }
        }
        evidence.insert("nudged".into(), ok.to_string());
        let mib = |b: u64| b as f64 / 1_048_576.0;
        if ok == results.len() {
            Reply {
                outcome: Outcome::Succeeded,
                message: format!(
                    "nudged {ok} process(es) of selector `{}` ({}): RSS {:.1} MiB before, {:.1} MiB after",
                    selector.name,
                    selector.method.describe(),
                    mib(before),
                    mib(after)
                ),
                evidence,
            }
        } else {
            let failures: Vec<String> = results
                .iter()
                .filter_map(|n| n.result.as_ref().err().map(|e| format!("{}: {e}", n.process.pid)))
                .collect();
            Reply {
                outcome: Outcome::Failed,
                message: format!("nudged {ok} of {} process(es): {}", results.len(), failures.join("; ")),
                evidence,
            }
        }
    }
}
