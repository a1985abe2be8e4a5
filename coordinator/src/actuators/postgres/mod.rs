//! PostgreSQL actions, through PostgreSQL's own protocol (tokio-postgres):
//! `pg_select1`, `pg_maintenance` and `pg_failover`, on the clusters named
//! under `databases:` in the coordinator's configuration.
//!
//! `pg_select1` asks `SELECT 1` of one member, or of every member to find
//! the one that takes writes (evidence `primary`, `app_url`, `lsn`, and
//! `members.<name>` for each; with no primary, `agents`: what the nodes
//! see of it). `pg_maintenance` runs `pg_reload_conf()` and
//! `pg_stat_reset()` on the current primary and attaches the longest
//! running statements from `pg_stat_activity` (`slow_queries.*`).
//!
//! `pg_failover`, one at a time per cluster: ask every member and, when the
//! primary does not answer, every agent ([`view`]); refuse, with nothing
//! changed, when a node still reaches the primary (the coordinator is cut
//! off, not the primary down), when no replica is healthy, when the chosen
//! one is further behind than `max_lag_bytes`, or when a member would stay
//! writable. Then fence every member that still takes writes (`ALTER
//! SYSTEM SET default_transaction_read_only = on`, reload, its other
//! databases closed to connections with `fence_connections`, its client
//! sessions terminated), let the candidate replay up to the fenced
//! primary's last position, `pg_promote()`, wait until it accepts writes,
//! and tell the configured `repoint_hook`. A primary that did not answer is
//! watched by the [`guard`] for `fence_watch` and fenced the moment it
//! answers again, and the guard's timeline check fences it even after this
//! coordinator is gone, so it never takes writes beside the new one; it is
//! never a candidate (it is not a standby). Each of these steps is evidence
//! `step.NN` with the LSNs it saw; a step that ran out of time says exactly
//! what was done and what was not. The approval gate and the
//! one-automatic-failover rule are the guard rails' (approval kind
//! `pg_failover`, the runbook's repeat cap and budget), weighed before this
//! runs.
//!
//! Passwords are read from their files at each connection and never
//! appear in evidence or logs.

pub mod config;
mod guard;
mod session;
mod view;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use remedy_shared::runbook::{PgFailover, PgMaintenance, PgOperation, PgSelect1};
use serde::de::DeserializeOwned;

pub use self::config::{DatabaseConfig, MemberConfig};
use self::session::{Session, mark_promotions, probe, probe_all};
use super::{ActionCall, ActionReport, ActionStatus, Actuator};
use remedy_shared::failover::{self as plan, MemberState, Role, format_lsn, parse_lsn};
use remedy_shared::sync;

/// The kinds this actuator performs.
pub const KINDS: &[&str] = &["pg_select1", "pg_maintenance", "pg_failover"];

/// Longest statement text kept as evidence.
const MAX_QUERY_TEXT: usize = 200;
/// How many running statements `pg_maintenance` attaches.
const SLOW_QUERIES: usize = 5;

/// What the actuator remembers of one cluster between actions.
#[derive(Debug, Default)]
struct ClusterState {
    /// The member promoted by the last failover (the configured primary
    /// until then).
    current_primary: Option<String>,
    /// The primary's furthest WAL position seen.
    last_primary_lsn: Option<u64>,
    /// A promotion asked and not confirmed.
    pending_promotion: Option<String>,
    /// Old primaries that did not answer during a failover, watched.
    watches: Vec<guard::Watch>,
    /// Two primaries whose timelines do not say which is newer were seen
    /// at the last look: said once, and cleared when it ends.
    split_brain_undecided: bool,
}

#[derive(Debug)]
struct Cluster {
    config: DatabaseConfig,
    state: Mutex<ClusterState>,
    /// Held for a whole failover: never two at once on one cluster.
    failing_over: tokio::sync::Mutex<()>,
    /// Wakes the guard when a watch is added.
    wake: tokio::sync::Notify,
}

impl Cluster {
    fn with_state<T>(&self, f: impl FnOnce(&mut ClusterState) -> T) -> T {
        f(&mut sync::lock(&self.state))
    }

    /// Learns from a probe of every member: the writable one, or of
    /// several the one on the newest timeline, is the primary (and a
    /// pending promotion of it is confirmed).
    fn learn(&self, members: &[MemberState]) {
        let primary = match plan::writers(members) {
            plan::Writers::One(name) => name,
            plan::Writers::Diverged { keep, .. } => keep,
            plan::Writers::None | plan::Writers::Undecidable(_) => return,
        };
        let lsn = members.iter().find(|m| m.name == primary).and_then(|m| m.answer.as_ref().ok()?.current_lsn);
        self.with_state(|s| {
            if s.pending_promotion.as_deref() == Some(primary.as_str()) {
                s.pending_promotion = None;
            }
            s.current_primary = Some(primary);
            s.last_primary_lsn = s.last_primary_lsn.max(lsn);
        });
    }
}

/// Performs the PostgreSQL kinds on the configured clusters.
#[derive(Debug, Clone)]
pub struct PostgresActuator {
    clusters: Arc<BTreeMap<String, Arc<Cluster>>>,
    http: reqwest::Client,
    /// The writer: the watch on an old primary records what became of it
    /// on the failover's incident, and the guard its findings.
    recorder: Option<crate::recorder::Recorder>,
    /// The agents, asked whether their nodes reach a primary the
    /// coordinator cannot.
    agents: Option<crate::directives::Directives>,
}

impl PostgresActuator {
    /// An actuator for `databases` (validated by the configuration).
    pub fn new(databases: BTreeMap<String, DatabaseConfig>) -> Result<Self, reqwest::Error> {
        let clusters = databases
            .into_iter()
            .map(|(name, config)| {
                let cluster = Cluster {
                    config,
                    state: Mutex::default(),
                    failing_over: tokio::sync::Mutex::new(()),
                    wake: tokio::sync::Notify::new(),
                };
                (name, Arc::new(cluster))
            })
            .collect();
        Ok(PostgresActuator {
            clusters: Arc::new(clusters),
            http: reqwest::Client::builder().build()?,
            recorder: None,
            agents: None,
        })
    }

    /// Asks the agents connected to `hub` whether their nodes reach a
    /// primary the coordinator cannot, before failing it over.
    pub fn with_agents(mut self, hub: crate::directives::Directives) -> Self {
        self.agents = Some(hub);
        self
    }

    /// Guards every configured cluster against two primaries until
    /// `stopped` (see [`guard`]); run it while this coordinator leads.
    pub async fn keep_guarding<F>(self, stopped: impl Fn() -> F)
    where
        F: std::future::Future<Output = ()>,
    {
        let guards = self.clusters.iter().map(|(name, cluster)| {
            guard::keep_guarding(name.clone(), cluster.clone(), self.recorder.clone(), stopped())
        });
        futures::future::join_all(guards).await;
    }

    /// Records what the watch on an unreachable old primary finds (fenced
    /// when it came back, or never seen) on the failover's incident, and
    /// what the guard finds as findings.
    pub fn with_recorder(mut self, recorder: crate::recorder::Recorder) -> Self {
        self.recorder = Some(recorder);
        self
    }

    fn cluster(&self, name: &str) -> Result<Arc<Cluster>, ActionReport> {
        self.clusters.get(name).cloned().ok_or_else(|| {
            // As with a webhook that is not configured: rehearsed, and said.
            ActionReport::new(
                ActionStatus::DryRun,
                format!(
                    "no database `{name}` is configured on this coordinator (`databases:`): rehearsed, nothing done"
                ),
            )
            .with("database", name)
        })
    }
}

fn params<T: DeserializeOwned>(call: &ActionCall) -> Result<T, ActionReport> {
    serde_json::from_value(call.params.clone())
        .map_err(|e| ActionReport::new(ActionStatus::Invalid, format!("{} parameters: {e}", call.kind)))
}

#[tonic::async_trait]
impl Actuator for PostgresActuator {
    fn kinds(&self) -> &'static [&'static str] {
        KINDS
    }

    async fn execute(&self, call: &ActionCall) -> ActionReport {
        let outcome = match call.kind.as_str() {
            "pg_select1" => self.select1(call).await,
            "pg_maintenance" => self.maintenance(call).await,
            "pg_failover" => self.failover(call).await,
            other => Err(ActionReport::new(ActionStatus::Invalid, format!("`{other}` is not a PostgreSQL action"))),
        };
        outcome.unwrap_or_else(|report| report)
    }
}

/// One line per member for the evidence.
fn describe_member(m: &MemberState) -> String {
    match &m.answer {
        Err(e) => format!("unreachable: {e}"),
        Ok(s) => {
            let mut text = s.role.as_str().to_owned();
            if let Some(lsn) = s.current_lsn {
                text.push_str(&format!(" lsn {}", format_lsn(lsn)));
            }
            if let Some(lsn) = s.replay_lsn {
                text.push_str(&format!(" replayed {}", format_lsn(lsn)));
            }
            if let Some(lsn) = s.receive_lsn {
                text.push_str(&format!(" received {}", format_lsn(lsn)));
            }
            text
        }
    }
}

fn with_members(mut report: ActionReport, members: &[MemberState]) -> ActionReport {
    for m in members {
        report = report.with(&format!("members.{}", m.name), describe_member(m));
    }
    report
}

impl PostgresActuator {
    async fn select1(&self, call: &ActionCall) -> Result<ActionReport, ActionReport> {
        let p: PgSelect1 = params(call)?;
        let cluster = self.cluster(&p.database)?;
        let db = &cluster.config;
        if let Some(name) = &p.member {
            let member = db.member(name).ok_or_else(|| {
                ActionReport::new(ActionStatus::Invalid, format!("database `{}` has no member `{name}`", p.database))
            })?;
            let state = probe(db, member).await;
            let report = match &state.answer {
                Ok(s) => ActionReport::new(
                    ActionStatus::Succeeded,
                    format!("{name} answered SELECT 1 ({})", s.role.as_str()),
                )
                .with("role", s.role.as_str())
                .with("millis", s.millis),
                Err(e) => ActionReport::new(ActionStatus::Failed, format!("{name} did not answer SELECT 1: {e}")),
            };
            return Ok(with_members(report.with("database", &p.database).with("member", name), &[state]));
        }
        let members = probe_all(db).await;
        cluster.learn(&members);
        let writable: Vec<&MemberState> =
            members.iter().filter(|m| m.answer.as_ref().is_ok_and(|s| s.role == Role::Primary)).collect();
        let report = match writable.as_slice() {
            [one] => {
                let member = db.member(&one.name).map(MemberConfig::app_url).unwrap_or_default();
                let status = one.answer.as_ref().ok();
                let mut r =
                    ActionReport::new(ActionStatus::Succeeded, format!("primary {} answered SELECT 1", one.name))
                        .with("primary", &one.name)
                        .with("app_url", member);
                if let Some(s) = status {
                    r = r.with("millis", s.millis);
                    if let Some(lsn) = s.current_lsn {
                        r = r.with("lsn", format_lsn(lsn));
                    }
                }
                r
            }
            [] => {
                let why: Vec<String> = members.iter().map(|m| format!("{} {}", m.name, describe_member(m))).collect();
                let report = ActionReport::new(
                    ActionStatus::Failed,
                    format!("no member of `{}` takes writes: {}", p.database, why.join("; ")),
                );
                // Evidence for people: a primary the nodes still reach is
                // not the same incident as one nobody reaches.
                let primary = cluster.with_state(|s| s.current_primary.clone());
                let primary = primary.unwrap_or_else(|| db.primary.name().to_owned());
                match self.agents_view(&cluster, &members, &primary, call).await {
                    Some(look) => report.with("agents", look.summary(&primary)),
                    None => report,
                }
            }
            many => {
                let names: Vec<&str> = many.iter().map(|m| m.name.as_str()).collect();
                ActionReport::new(ActionStatus::Failed, format!("two primaries take writes: {}", names.join(", ")))
            }
        };
        Ok(with_members(report.with("database", &p.database), &members))
    }

    async fn maintenance(&self, call: &ActionCall) -> Result<ActionReport, ActionReport> {
        let p: PgMaintenance = params(call)?;
        if p.operations.is_empty() {
            return Err(ActionReport::new(ActionStatus::Invalid, "pg_maintenance lists no operation"));
        }
        let cluster = self.cluster(&p.database)?;
        let db = &cluster.config;
        let members = probe_all(db).await;
        cluster.learn(&members);
        let Some(primary) = members.iter().find(|m| m.answer.as_ref().is_ok_and(|s| s.role == Role::Primary)) else {
            let report = ActionReport::new(ActionStatus::Failed, format!("no member of `{}` takes writes", p.database));
            return Ok(with_members(report, &members));
        };
        let member =
            db.member(&primary.name).ok_or_else(|| ActionReport::new(ActionStatus::Failed, "member vanished"))?;
        let fail = |e: String| ActionReport::new(ActionStatus::Failed, format!("{}: {e}", primary.name));
        let session = Session::open(db, member).await.map_err(fail)?;
        let mut report = ActionReport::new(ActionStatus::Succeeded, String::new())
            .with("database", &p.database)
            .with("member", &primary.name);
        // Evidence first: what was running before anything is reset.
        let slow = session
            .rows(
                &format!(
                    "SELECT pid, usename, state, (extract(epoch FROM now() - query_start))::bigint, left(query, {MAX_QUERY_TEXT}) \
                     FROM pg_stat_activity WHERE backend_type = 'client backend' AND state <> 'idle' \
                     AND pid <> pg_backend_pid() AND query_start IS NOT NULL ORDER BY query_start LIMIT {SLOW_QUERIES}"
                ),
                None,
            )
            .await
            .map_err(fail)?;
        report = report.with("slow_queries.count", slow.len());
        for (i, row) in slow.iter().enumerate() {
            let col = |j: usize| row.get(j).cloned().flatten().unwrap_or_default();
            report = report.with(
                &format!("slow_queries.{}", i + 1),
                format!("pid {} ({}, {}, {}s): {}", col(0), col(1), col(2), col(3), col(4)),
            );
        }
        let mut done = Vec::new();
        for op in &p.operations {
            let (name, sql) = match op {
                PgOperation::ReloadConf => ("reload_conf", "SELECT pg_reload_conf()"),
                PgOperation::StatReset => ("stat_reset", "SELECT pg_stat_reset()"),
            };
            if call.dry_run {
                report = report.with(&format!("operations.{name}"), "would run");
                continue;
            }
            match session.value(sql).await {
                Ok(v) => {
                    report = report.with(&format!("operations.{name}"), v.unwrap_or_default());
                    done.push(name);
                }
                Err(e) => {
                    report.status = ActionStatus::Failed;
                    report.message = format!(
                        "{name} failed on {}: {e} (done before it: {})",
                        primary.name,
                        if done.is_empty() { "nothing".to_owned() } else { done.join(", ") }
                    );
                    return Ok(report);
                }
            }
        }
        if call.dry_run {
            report.status = ActionStatus::DryRun;
            report.message = format!("would run {} on {}", p.operations.len(), primary.name);
        } else {
            report.message = format!("{} on {}", done.join(", "), primary.name);
        }
        Ok(report)
    }

    async fn failover(&self, call: &ActionCall) -> Result<ActionReport, ActionReport> {
        let p: PgFailover = params(call)?;
        let cluster = self.cluster(&p.database)?;
        let Ok(_one_at_a_time) = cluster.failing_over.try_lock() else {
            return Err(ActionReport::new(
                ActionStatus::Failed,
                format!("a failover of `{}` is already running: refused, nothing done", p.database),
            ));
        };
        let mut progress = Progress::default();
        // Leave room for the report inside the engine's own deadline.
        let limit = call.deadline.saturating_sub(Duration::from_secs(2)).max(Duration::from_secs(1));
        let outcome = tokio::time::timeout(limit, self.fail_over(&cluster, &p, call, &mut progress)).await;
        let mut report = match outcome {
            Ok(Ok(report)) => report,
            Ok(Err(report)) => report,
            Err(_) => ActionReport::new(
                ActionStatus::TimedOut,
                format!("failover of `{}` stopped after {limit:?}, {}", p.database, progress.state()),
            ),
        };
        report = report.with("database", &p.database);
        for (i, line) in progress.steps.iter().enumerate() {
            report = report.with(&format!("step.{:02}", i + 1), line);
        }
        Ok(report)
    }

    /// When `primary` did not answer the coordinator: what the agents'
    /// nodes see of it. `None` when it answered (the coordinator's view
    /// decides) or no agent hub is wired.
    async fn agents_view(
        &self,
        cluster: &Cluster,
        members: &[MemberState],
        primary: &str,
        call: &ActionCall,
    ) -> Option<view::AgentsLook> {
        let answered = members.iter().any(|m| m.name == primary && m.answer.is_ok());
        let member = cluster.config.member(primary).filter(|_| !answered)?;
        let hub = self.agents.as_ref()?;
        Some(view::look(hub, &cluster.config, member, &call.incident_id, &call.step_id).await)
    }

    /// Watches `old`, the primary that did not answer during a failover:
    /// the guard fences it when it answers and says so on the incident.
    fn watch(&self, cluster: &Cluster, old: &str, call: &ActionCall) {
        let watch = guard::Watch {
            member: old.to_owned(),
            until: tokio::time::Instant::now() + cluster.config.fence_watch,
            record: guard::WatchRecord {
                timeline: self.recorder.clone(),
                incident: call.incident_id.parse().ok(),
                step: call.step_id.clone(),
            },
            failure_said: false,
        };
        cluster.with_state(|s| s.watches.push(watch));
        cluster.wake.notify_one();
    }

    async fn fail_over(
        &self,
        cluster: &Arc<Cluster>,
        p: &PgFailover,
        call: &ActionCall,
        progress: &mut Progress,
    ) -> Result<ActionReport, ActionReport> {
        let dry_run = call.dry_run;
        let db = &cluster.config;
        let mut members = probe_all(db).await;
        mark_promotions(db, &mut members).await;
        cluster.learn(&members);
        let (current_primary, last_primary_lsn, pending) =
            cluster.with_state(|s| (s.current_primary.clone(), s.last_primary_lsn, s.pending_promotion.clone()));
        let current_primary = current_primary.unwrap_or_else(|| db.primary.name().to_owned());
        let probed: Vec<String> = members.iter().map(|m| format!("{} {}", m.name, describe_member(m))).collect();
        progress.step(format!("probed: {}", probed.join("; ")));
        let seen = self.agents_view(cluster, &members, &current_primary, call).await;
        if let Some(look) = &seen {
            progress.step(format!("agents' view: {}", look.summary(&current_primary)));
        }
        let plan = plan::plan(&plan::Inputs {
            members: &members,
            preferred: p.replica.as_deref(),
            current_primary: &current_primary,
            last_primary_lsn,
            max_lag_bytes: db.max_lag_bytes,
            fence_primary: p.fence_primary,
            pending_promotion: pending.as_deref(),
            primary_seen_from: seen.as_ref().map(|l| l.reached.as_slice()).unwrap_or_default(),
        })
        .map_err(|why| ActionReport::new(ActionStatus::Failed, format!("refused, nothing changed: {why}")))?;
        progress.step(format!(
            "chose {}: replayed {}, WAL reaches {}, {} bytes behind (limit {})",
            plan.candidate,
            format_lsn(plan.candidate_replay_lsn),
            format_lsn(plan.reference_lsn),
            plan.lag_bytes,
            db.max_lag_bytes
        ));
        if dry_run {
            let fence = if plan.to_fence.is_empty() { "nobody".to_owned() } else { plan.to_fence.join(", ") };
            return Ok(ActionReport::new(
                ActionStatus::DryRun,
                format!("would fence {fence} and promote {} ({} bytes behind)", plan.candidate, plan.lag_bytes),
            )
            .with("candidate", &plan.candidate));
        }
        let mut fenced_at: Option<u64> = None;
        for name in &plan.to_fence {
            progress.phase = Phase::Fencing(name.clone());
            let member = db.member(name).ok_or_else(|| ActionReport::new(ActionStatus::Failed, "member vanished"))?;
            match fence(db, member).await {
                Ok(f) => {
                    progress.fenced.push(name.clone());
                    progress.step(format!("fenced {name}: {}", f.describe()));
                    fenced_at = fenced_at.max(f.lsn);
                }
                Err(e) => {
                    progress.step(format!("fencing {name} failed: {e}"));
                    return Err(ActionReport::new(
                        ActionStatus::Failed,
                        format!(
                            "{name} still takes writes and could not be fenced ({e}): nothing promoted, so two \
                             primaries never take writes; {}",
                            progress.state()
                        ),
                    ));
                }
            }
        }
        let candidate =
            db.member(&plan.candidate).ok_or_else(|| ActionReport::new(ActionStatus::Failed, "candidate vanished"))?;
        if let Some(target) = fenced_at {
            progress.phase = Phase::CatchingUp;
            let replayed = catch_up(db, candidate, target).await;
            let behind = target.saturating_sub(replayed.unwrap_or(0));
            progress.step(format!(
                "{} replayed {} of the fenced primary's {}",
                plan.candidate,
                replayed.map(format_lsn).unwrap_or_else(|| "nothing".into()),
                format_lsn(target)
            ));
            if behind > db.max_lag_bytes {
                return Err(ActionReport::new(
                    ActionStatus::Failed,
                    format!(
                        "{} stayed {behind} bytes behind the fenced primary (limit {}): not promoted; {}",
                        plan.candidate,
                        db.max_lag_bytes,
                        progress.state()
                    ),
                ));
            }
        }
        progress.phase = Phase::Promoting(plan.candidate.clone());
        cluster.with_state(|s| s.pending_promotion = Some(plan.candidate.clone()));
        let session = Session::open(db, candidate).await.map_err(|e| {
            cluster.with_state(|s| s.pending_promotion = None);
            ActionReport::new(
                ActionStatus::Failed,
                format!("cannot reach {} to promote it ({e}): not promoted; {}", plan.candidate, progress.state()),
            )
        })?;
        let wait = db.promote_timeout.as_secs().max(1);
        let promoted = session.value(&format!("SELECT pg_promote(true, {wait})")).await;
        progress.promote_asked = true;
        match promoted {
            Ok(Some(t)) if t == "t" => {}
            other => {
                let why = match other {
                    Ok(_) => format!("still in recovery after {wait}s"),
                    Err(e) => e,
                };
                progress.step(format!("asked {} to promote: {why}", plan.candidate));
                return Err(ActionReport::new(
                    ActionStatus::TimedOut,
                    format!(
                        "promotion of {} not confirmed ({why}): it may still complete on its own, and no other \
                         replica will be promoted until a probe sees it take writes; {}",
                        plan.candidate,
                        progress.state()
                    ),
                )
                .with("pending_promotion", &plan.candidate));
            }
        }
        let new_lsn = accepts_writes(db, candidate).await.map_err(|e| {
            ActionReport::new(
                ActionStatus::TimedOut,
                format!("{} was promoted but does not accept writes yet ({e}); {}", plan.candidate, progress.state()),
            )
        })?;
        progress.phase = Phase::Promoted(plan.candidate.clone());
        cluster.with_state(|s| {
            s.current_primary = Some(plan.candidate.clone());
            s.pending_promotion = None;
            s.last_primary_lsn = Some(new_lsn);
        });
        progress.step(format!(
            "promoted {}: accepts writes, lsn {} (replayed {} before)",
            plan.candidate,
            format_lsn(new_lsn),
            format_lsn(plan.candidate_replay_lsn)
        ));
        let mut report = ActionReport::new(
            ActionStatus::Succeeded,
            format!(
                "{} is the primary of `{}`{}",
                plan.candidate,
                p.database,
                if plan.to_fence.is_empty() { String::new() } else { format!("; fenced {}", plan.to_fence.join(", ")) }
            ),
        )
        .with("promoted", &plan.candidate)
        .with("app_url", candidate.app_url())
        .with("lag_bytes", plan.lag_bytes)
        .with("promoted_lsn", format_lsn(new_lsn));
        if let Some(old) = &plan.unreachable_primary {
            self.watch(cluster, old, call);
            progress.step(format!("{old} did not answer: watched for {:?}, fenced when it answers", db.fence_watch));
            report = report.with("old_primary", format!("{old} unreachable, watched to be fenced"));
        }
        if let Some(hook) = &db.repoint_hook {
            let body = serde_json::json!({
                "database": p.database, "primary": plan.candidate, "url": candidate.app_url(),
            });
            let sent = self.http.post(hook).json(&body).timeout(db.query_timeout).send().await;
            match sent.map(|r| r.status()) {
                Ok(s) if s.is_success() => progress.step(format!("repoint hook told: {}", candidate.app_url())),
                other => {
                    let why = match other {
                        Ok(s) => format!("answered {s}"),
                        Err(e) => e.to_string(),
                    };
                    progress.step(format!("repoint hook failed: {why}"));
                    report.status = ActionStatus::Failed;
                    report.message = format!(
                        "{} promoted and accepts writes, but the repoint hook failed ({why}): the application \
                         still points at the old primary",
                        plan.candidate
                    );
                }
            }
        }
        Ok(report)
    }
}

/// What a fence did.
#[derive(Debug)]
struct Fenced {
    terminated: u64,
    lsn: Option<u64>,
    /// The databases that stopped taking connections.
    closed: Vec<String>,
    /// Why the other databases still take connections, when closing them
    /// failed.
    still_open: Option<String>,
}

impl Fenced {
    /// The fence in words, for the timeline: what was done, and how a
    /// person undoes it.
    fn describe(&self) -> String {
        let lsn = self.lsn.map(format_lsn).unwrap_or_else(|| "unknown".into());
        let closed = match (&self.still_open, self.closed.is_empty()) {
            (Some(e), _) => format!(", but its databases still take connections ({e})"),
            (None, true) => String::new(),
            (None, false) => format!(", connections refused to {} (ALLOW_CONNECTIONS false)", self.closed.join(", ")),
        };
        format!("default_transaction_read_only = on{closed}, {} sessions terminated, last lsn {lsn}", self.terminated)
    }
}

/// Makes `member` read-only for every new transaction, with
/// `fence_connections` refuses new connections to its other databases (a
/// session could still ask for a read-write transaction), and ends the
/// sessions that could still write.
async fn fence(db: &DatabaseConfig, member: &MemberConfig) -> Result<Fenced, String> {
    let session = Session::open(db, member).await?;
    session.execute("ALTER SYSTEM SET default_transaction_read_only = on").await?;
    session.execute("SELECT pg_reload_conf()").await?;
    // The reload reaches the server asynchronously: confirm from a new
    // session, a bounded number of times.
    let mut confirmed = false;
    for _ in 0..50 {
        let check = Session::open(db, member).await?;
        if check.value("SHOW default_transaction_read_only").await?.as_deref() == Some("on") {
            confirmed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if !confirmed {
        return Err("default_transaction_read_only is still off after the reload".to_owned());
    }
    // Read-only is the fence the failover relies on; a role that may not
    // alter databases keeps that, and the timeline says what is missing.
    let (closed, still_open) = match db.fence_connections {
        false => (Vec::new(), None),
        true => match close_databases(&session).await {
            Ok(closed) => (closed, None),
            Err(e) => (Vec::new(), Some(e)),
        },
    };
    let terminated = session
        .value(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()) AS ended",
        )
        .await?
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let lsn = session.value("SELECT pg_current_wal_lsn()::text").await?.as_deref().and_then(parse_lsn);
    Ok(Fenced { terminated, lsn, closed, still_open })
}

/// Every database of the member but the one the coordinator uses (and the
/// templates) stops taking connections, superusers' included. In a
/// transaction of its own that explicitly writes, and commits locally: the
/// member is read-only by default now, and a synchronous standby it waited
/// for may be the one being promoted.
async fn close_databases(session: &Session) -> Result<Vec<String>, String> {
    let open = "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate \
                AND datname <> current_database() ORDER BY datname";
    let names: Vec<String> =
        session.rows(open, None).await?.into_iter().filter_map(|r| r.into_iter().next().flatten()).collect();
    if names.is_empty() {
        return Ok(names);
    }
    session
        .execute(
            "BEGIN READ WRITE; SET LOCAL synchronous_commit = local; \
             DO $fence$ DECLARE d text; BEGIN \
               FOR d IN SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate \
                        AND datname <> current_database() LOOP \
                 EXECUTE format('ALTER DATABASE %I ALLOW_CONNECTIONS false', d); \
               END LOOP; END $fence$; COMMIT",
        )
        .await
        .map_err(|e| format!("refusing connections to {} failed: {e}", names.join(", ")))?;
    Ok(names)
}

/// Waits (within the promote timeout) until `candidate` has replayed up to
/// `target`; returns how far it got.
async fn catch_up(db: &DatabaseConfig, candidate: &MemberConfig, target: u64) -> Option<u64> {
    let until = tokio::time::Instant::now() + db.promote_timeout;
    let mut replayed = None;
    loop {
        if let Ok(s) = probe(db, candidate).await.answer {
            replayed = s.replay_lsn;
        }
        if replayed.is_some_and(|r| r >= target) || tokio::time::Instant::now() >= until {
            return replayed;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits (within the promote timeout) until `member` is out of recovery,
/// not read-only and can take a transaction id; returns its WAL position.
async fn accepts_writes(db: &DatabaseConfig, member: &MemberConfig) -> Result<u64, String> {
    let until = tokio::time::Instant::now() + db.promote_timeout;
    loop {
        let attempt = async {
            let s = Session::open(db, member).await?;
            let row = s
                .rows(
                    "SELECT pg_is_in_recovery(), current_setting('default_transaction_read_only'), \
                     pg_current_xact_id()::text, pg_current_wal_lsn()::text",
                    None,
                )
                .await?;
            let row = row.into_iter().next().ok_or("no row")?;
            let text = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
            if text(0) != "f" || text(1) != "off" {
                return Err(format!("in recovery {}, read-only {}", text(0), text(1)));
            }
            parse_lsn(&text(3)).ok_or_else(|| "no WAL position".to_owned())
        }
        .await;
        match attempt {
            Ok(lsn) => return Ok(lsn),
            Err(e) if tokio::time::Instant::now() >= until => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Where a failover got to, for a report that ends early.
#[derive(Debug, Default)]
struct Progress {
    steps: Vec<String>,
    phase: Phase,
    fenced: Vec<String>,
    promote_asked: bool,
}

#[derive(Debug, Default, Clone)]
enum Phase {
    #[default]
    Probing,
    Fencing(String),
    CatchingUp,
    Promoting(String),
    Promoted(String),
}

impl Progress {
    fn step(&mut self, line: String) {
        self.steps.push(line);
    }

    /// What was done and what not, in words.
    fn state(&self) -> String {
        let fenced = if self.fenced.is_empty() {
            "nobody fenced".to_owned()
        } else {
            format!("fenced (read-only): {}", self.fenced.join(", "))
        };
        let at = match &self.phase {
            Phase::Probing => "while asking the members: nothing changed".to_owned(),
            Phase::Fencing(name) => format!("while fencing {name} (it may be read-only or not: check it)"),
            Phase::CatchingUp => "while the replica caught up: nothing promoted".to_owned(),
            Phase::Promoting(name) if self.promote_asked => {
                format!("after asking {name} to promote: it may still complete, check pg_is_in_recovery() on it")
            }
            Phase::Promoting(name) => format!("before {name} was asked to promote: nothing promoted"),
            Phase::Promoted(name) => format!("after {name} was promoted and took writes"),
        };
        format!("{at}; {fenced}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fence_says_what_it_closed_or_why_it_could_not() {
        let fenced = |closed: &[&str], still_open: Option<&str>| Fenced {
            terminated: 3,
            lsn: Some(0x300_0148),
            closed: closed.iter().map(|c| (*c).to_owned()).collect(),
            still_open: still_open.map(str::to_owned),
        };
        assert_eq!(
            fenced(&["app", "billing"], None).describe(),
            "default_transaction_read_only = on, connections refused to app, billing (ALLOW_CONNECTIONS false), \
             3 sessions terminated, last lsn 0/3000148"
        );
        assert_eq!(
            fenced(&[], Some("must be owner of database app")).describe(),
            "default_transaction_read_only = on, but its databases still take connections (must be owner of \
             database app), 3 sessions terminated, last lsn 0/3000148"
        );
        assert_eq!(
            fenced(&[], None).describe(),
            "default_transaction_read_only = on, 3 sessions terminated, last lsn 0/3000148"
        );
    }
}
