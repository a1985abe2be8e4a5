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
//! changed, when no replica is healthy, when the chosen one is further
//! behind than `max_lag_bytes`, when a member would stay writable, when a
//! node still reaches a primary the coordinator cannot (the coordinator is
//! cut off, not the primary down), or when nothing shows that primary down:
//! a primary that does not answer is replaced only when a quorum of the
//! nodes that run its clients (`client_nodes`, `down_quorum`) answered that
//! they cannot reach it either, when it was fenced and the fence confirmed,
//! or when a person approved after being told that promoting may create
//! two writers. That last one is asked before anything runs: `resolve`
//! finds the want of evidence and hands the rails the risk, which makes
//! them ask a person in those words ([`remedy_shared::failover::TWO_WRITERS_RISK`]);
//! the execution goes ahead on it only if that very approval accepted it.
//!
//! Then fence every member that still takes writes ([`fence`]: logins
//! closed for every role but the coordinator's, every database closed to
//! connections, read-only by default, every other session ended, all
//! confirmed), let the candidate replay up to the fenced primary's last
//! position, `pg_promote()`, reopen on it what the fence closed and
//! replication carried over, wait until it accepts writes, and tell the
//! configured `repoint_hook`. A primary that did not answer is watched by
//! the [`guard`] for `fence_watch` and fenced the moment it answers again,
//! and the guard's timeline check fences it even after this coordinator is
//! gone, so it never takes writes beside the new one; it is never a
//! candidate (it is not a standby). Each of these steps is evidence
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
mod tls;
mod view;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use remedy_shared::guard::TargetRef;
use remedy_shared::runbook::{PgFailover, PgMaintenance, PgOperation, PgSelect1};
use serde::de::DeserializeOwned;

pub use self::config::{DatabaseConfig, MemberConfig};
use self::session::{FENCED_DOOR, Session, mark_promotions, probe, probe_all};
use super::{ActionCall, ActionReport, ActionStatus, Actuator, Resolved};
use remedy_shared::failover::{self as plan, DownEvidence, MemberState, Refusal, Role, format_lsn, parse_lsn};
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
    /// Members fenced by this coordinator (the fence confirmed) or seen
    /// fenced by a probe, and not seen taking writes since: a primary among
    /// them that stops answering is known to take no writes.
    sealed: BTreeSet<String>,
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
        self.with_state(|s| {
            for m in members {
                match m.answer.as_ref().map(|a| a.role) {
                    Ok(Role::Fenced) => s.sealed.insert(m.name.clone()),
                    Ok(Role::Primary | Role::Replica) => s.sealed.remove(&m.name),
                    Err(_) => false,
                };
            }
        });
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

impl Cluster {
    /// Fences `name` ([`fence`]) and remembers it sealed once confirmed.
    async fn fence(&self, name: &str) -> Result<Fenced, String> {
        let member = self.config.member(name).ok_or_else(|| format!("`{name}` is not a member"))?;
        let fenced = fence(&self.config, member).await?;
        self.with_state(|s| s.sealed.insert(name.to_owned()));
        Ok(fenced)
    }
}

/// What a failover found before changing anything: every member's answer
/// and, when the primary did not answer, what the agents' nodes see of it.
struct Assessment {
    members: Vec<MemberState>,
    current_primary: String,
    last_primary_lsn: Option<u64>,
    pending: Option<String>,
    primary_fenced: bool,
    look: Option<view::AgentsLook>,
}

impl Assessment {
    /// The plan, or why not; `override_accepted`: a person accepted
    /// promoting without evidence that the primary is down.
    fn plan(&self, db: &DatabaseConfig, p: &PgFailover, override_accepted: bool) -> Result<plan::Plan, Refusal> {
        let quorum = db.quorum();
        plan::plan(&plan::Inputs {
            members: &self.members,
            preferred: p.replica.as_deref(),
            current_primary: &self.current_primary,
            last_primary_lsn: self.last_primary_lsn,
            max_lag_bytes: db.max_lag_bytes,
            fence_primary: p.fence_primary,
            pending_promotion: self.pending.as_deref(),
            nodes: self.look.as_ref().map(|l| l.reports.as_slice()).unwrap_or_default(),
            quorum: &quorum,
            primary_fenced: self.primary_fenced,
            override_accepted,
        })
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

    /// For `pg_failover`: looks before the rails weigh it, so that a
    /// failover nothing shows safe (a primary that does not answer, and no
    /// evidence that it is down) is put to a person in plain words rather
    /// than refused after an approval that did not say so. Reads only.
    async fn resolve(&self, call: &ActionCall) -> Option<Result<Resolved, String>> {
        if call.kind != "pg_failover" {
            return None;
        }
        // Bad parameters or an unconfigured database: the execution says so.
        let p: PgFailover = params(call).ok()?;
        let cluster = self.clusters.get(&p.database)?.clone();
        let seen = self.assess(&cluster, call).await;
        let risk = seen.plan(&cluster.config, &p, false).err().and_then(|why| why.override_risk());
        Some(Ok(Resolved { targets: vec![TargetRef::new("database", &p.database)], risk, ..Resolved::default() }))
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

    /// Asks every member, and the agents when the primary does not answer.
    async fn assess(&self, cluster: &Cluster, call: &ActionCall) -> Assessment {
        let db = &cluster.config;
        let mut members = probe_all(db).await;
        mark_promotions(db, &mut members).await;
        cluster.learn(&members);
        let (current_primary, last_primary_lsn, pending, sealed) = cluster.with_state(|s| {
            (s.current_primary.clone(), s.last_primary_lsn, s.pending_promotion.clone(), s.sealed.clone())
        });
        let current_primary = current_primary.unwrap_or_else(|| db.primary.name().to_owned());
        let look = self.agents_view(cluster, &members, &current_primary, call).await;
        Assessment {
            primary_fenced: sealed.contains(&current_primary),
            members,
            current_primary,
            last_primary_lsn,
            pending,
            look,
        }
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
        let seen = self.assess(cluster, call).await;
        let current_primary = seen.current_primary.clone();
        let probed: Vec<String> = seen.members.iter().map(|m| format!("{} {}", m.name, describe_member(m))).collect();
        progress.step(format!("probed: {}", probed.join("; ")));
        if let Some(look) = &seen.look {
            progress.step(format!("agents' view: {}", look.summary(&current_primary)));
        }
        let accepted = call.accepted_risk.as_ref();
        let plan = match seen.plan(db, p, accepted.is_some()) {
            Ok(plan) => plan,
            Err(why) => {
                // A rehearsal says what a person would be asked to accept.
                if let (true, Some(risk), Ok(plan)) = (dry_run, why.override_risk(), seen.plan(db, p, true)) {
                    return Ok(ActionReport::new(
                        ActionStatus::DryRun,
                        format!("would promote {} only once a person approves: {risk}", plan.candidate),
                    )
                    .with("candidate", &plan.candidate)
                    .with("risk", risk));
                }
                return Err(ActionReport::new(ActionStatus::Failed, format!("refused, nothing changed: {why}")));
            }
        };
        if let (Some(old), Some(evidence)) = (&plan.unreachable_primary, &plan.down_evidence) {
            let mut line = evidence.describe(old);
            if let (DownEvidence::Overridden, Some(a)) = (evidence, accepted) {
                line.push_str(&format!(": approved by {}, who was told \"{}\"", a.by, a.risk));
            }
            progress.step(line);
        }
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
        // What the fences closed: replication carries it to the candidate,
        // which must serve the applications once promoted.
        let mut closed = Closed::default();
        for name in &plan.to_fence {
            progress.phase = Phase::Fencing(name.clone());
            match cluster.fence(name).await {
                Ok(f) => {
                    progress.fenced.push(name.clone());
                    progress.step(format!("fenced {name}: {}", f.describe()));
                    fenced_at = fenced_at.max(f.lsn);
                    closed.roles.extend(f.closed_roles.iter().cloned());
                    closed.databases.extend(f.closed.iter().cloned());
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
        // The fence's closed logins and databases are in the WAL the
        // candidate replayed: opened again on it, and only what the fence
        // closed, before anything checks that it serves.
        let mut reopen_failed = None;
        if !closed.is_empty() {
            match reopen(db, candidate, &closed).await {
                Ok(again) if again.is_empty() => {
                    progress.step(format!("nothing the fence closed reached {} through replication", plan.candidate))
                }
                Ok(again) => progress.step(format!(
                    "reopened on {} what the fence closed and replication carried over: {}",
                    plan.candidate,
                    again.describe()
                )),
                Err(e) => {
                    progress.step(format!("reopening on {} what the fence closed failed: {e}", plan.candidate));
                    reopen_failed = Some(e);
                }
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
        if let Some(evidence) = &plan.down_evidence {
            let kind = match evidence {
                DownEvidence::NodesCannotReach { .. } => "nodes_cannot_reach",
                DownEvidence::Fenced => "fenced",
                DownEvidence::Overridden => "approved_without_evidence",
            };
            report = report.with("old_primary_down", kind);
        }
        if let Some(e) = &reopen_failed {
            report.status = ActionStatus::Failed;
            report.message = format!(
                "{} promoted and accepts writes, but what the old primary's fence closed is still closed on it \
                 ({e}): the applications cannot log in; as the coordinator's role, through {FENCED_DOOR}: ALTER ROLE \
                 … LOGIN for {}, ALTER DATABASE … ALLOW_CONNECTIONS true for {}",
                plan.candidate,
                closed.roles.iter().cloned().collect::<Vec<_>>().join(", "),
                closed.databases.iter().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        if let Some(old) = &plan.unreachable_primary {
            self.watch(cluster, old, call);
            progress.step(format!("{old} did not answer: watched for {:?}, fenced when it answers", db.fence_watch));
            report = report.with("old_primary", format!("{old} unreachable, watched to be fenced"));
        }
        // Applications are not sent where they cannot log in.
        if let (Some(hook), None) = (&db.repoint_hook, &reopen_failed) {
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
    /// The coordinator's own role: the one left that may log in.
    kept_role: String,
    /// The roles whose logins the fence closed (`NOLOGIN`).
    closed_roles: Vec<String>,
    /// The databases that stopped taking connections.
    closed: Vec<String>,
    /// The database the coordinator still reaches the member through.
    door: String,
    /// Why some databases still take connections, when they do.
    still_open: Option<String>,
    terminated: u64,
    lsn: Option<u64>,
}

impl Fenced {
    /// The fence in words, for the timeline: what was done, so that a
    /// person knows what to undo.
    fn describe(&self) -> String {
        let lsn = self.lsn.map(format_lsn).unwrap_or_else(|| "unknown".into());
        let logins = match self.closed_roles.as_slice() {
            [] => format!("no role but {} could log in", self.kept_role),
            roles => format!("logins closed for every role but {} (NOLOGIN: {})", self.kept_role, roles.join(", ")),
        };
        let databases = match (&self.still_open, self.closed.as_slice()) {
            (Some(why), []) => format!("its databases still take connections ({why})"),
            (Some(why), closed) => {
                format!(
                    "connections refused to {} (ALLOW_CONNECTIONS false), but not to all ({why})",
                    closed.join(", ")
                )
            }
            (None, closed) => format!(
                "connections refused to every database{} (ALLOW_CONNECTIONS false), the coordinator reaching it \
                 through {}",
                if closed.is_empty() { String::new() } else { format!(": {}", closed.join(", ")) },
                self.door
            ),
        };
        format!(
            "{logins}; {databases}; default_transaction_read_only = on; {} sessions terminated; last lsn {lsn}",
            self.terminated
        )
    }
}

/// An identifier as PostgreSQL reads it quoted: any name, exactly.
fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// The first column of every row.
async fn names(session: &Session, sql: &str) -> Result<Vec<String>, String> {
    Ok(session.rows(sql, None).await?.into_iter().filter_map(|r| r.into_iter().next().flatten()).collect())
}

/// Runs `statements` in one transaction that explicitly writes and commits
/// locally: the member may be read-only by default, and a synchronous
/// standby it would wait for may be the one being promoted. On an error
/// the transaction is rolled back, so the session stays usable.
async fn write_locally(session: &Session, statements: &[String]) -> Result<(), String> {
    let sql = format!("BEGIN READ WRITE; SET LOCAL synchronous_commit = local; {}; COMMIT", statements.join("; "));
    let outcome = session.execute(&sql).await;
    if outcome.is_err() {
        let _ = session.execute("ROLLBACK").await;
    }
    outcome
}

/// Closes `member` to writes from every session on every database, and
/// confirms it.
///
/// What PostgreSQL lets a session override decides the shape. Read-only by
/// default (`ALTER SYSTEM SET default_transaction_read_only = on`) is a
/// default: any session may `SET default_transaction_read_only = off` or
/// `BEGIN READ WRITE` and commit, and no server setting forbids it outside
/// recovery. A session that is not there cannot write, though, and whether
/// one may start is decided by the server, not by the session:
///
/// - every role that may log in, but the coordinator's own, is made
///   `NOLOGIN` (roles are the cluster's, so this covers every database;
///   superusers included, and the check holds for every authentication
///   method);
/// - with `fence_connections`, every database stops taking connections
///   (`ALLOW_CONNECTIONS false`, which binds superusers too), the
///   coordinator's own `dbname` included: PostgreSQL will not close the
///   database a session is in, so the fence works from [`FENCED_DOOR`], a
///   template holding no application data, through which the coordinator
///   still reads what the member is;
/// - every other client session is terminated, so no session opened before
///   the fence is left to write;
/// - read-only by default and reloaded, for the coordinator's own sessions.
///
/// Then it confirms from a new session: read-only, no login left but the
/// coordinator's, no session left on a closed database or of another role.
/// Only a fence so confirmed is `Ok`. Replication connections are not ended
/// (the candidate replays up to the fence through them) and background
/// workers are not PostgreSQL sessions: an extension that writes from one
/// is not stopped by this.
async fn fence(db: &DatabaseConfig, member: &MemberConfig) -> Result<Fenced, String> {
    let at_door = match db.fence_connections {
        true => Session::open_to(db, member, FENCED_DOOR).await.ok(),
        false => None,
    };
    let session = match at_door {
        Some(s) => s,
        None => Session::open(db, member).await?,
    };
    let kept_role = session.value("SELECT current_user").await?.unwrap_or_default();
    // Logins first, then sessions: ended before, a client could log in again.
    let roles =
        names(&session, "SELECT rolname FROM pg_roles WHERE rolcanlogin AND rolname <> current_user ORDER BY 1")
            .await?;
    if !roles.is_empty() {
        let statements: Vec<String> = roles.iter().map(|r| format!("ALTER ROLE {} NOLOGIN", quote_ident(r))).collect();
        write_locally(&session, &statements)
            .await
            .map_err(|e| format!("closing the logins of {} failed: {e}", roles.join(", ")))?;
    }
    // Every role but the coordinator's is closed now: a database left open
    // is open to the coordinator's role alone, so a failure here is said,
    // not fatal.
    let (closed, still_open) = if !db.fence_connections {
        (Vec::new(), Some("fence_connections is off: the coordinator's own role could still write there".to_owned()))
    } else {
        let open = names(
            &session,
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate AND datname <> current_database() \
             ORDER BY 1",
        )
        .await?;
        let statements: Vec<String> =
            open.iter().map(|d| format!("ALTER DATABASE {} ALLOW_CONNECTIONS false", quote_ident(d))).collect();
        let done = match statements.is_empty() {
            true => Ok(()),
            false => write_locally(&session, &statements).await,
        };
        let left = (session.database != FENCED_DOOR).then(|| {
            format!(
                "{}, the coordinator's own, could not be closed: {FENCED_DOOR} did not take the connection",
                session.database
            )
        });
        match done {
            Ok(()) => (open, left),
            Err(e) => (Vec::new(), Some(format!("refusing connections to {} failed: {e}", open.join(", ")))),
        }
    };
    session.execute("ALTER SYSTEM SET default_transaction_read_only = on").await?;
    session.execute("SELECT pg_reload_conf()").await?;
    let terminated = session
        .value(
            "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()) AS ended",
        )
        .await?
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    // The reload reaches the server, and terminated sessions end,
    // asynchronously: confirmed from a new session, a bounded number of
    // times.
    const CONFIRM: &str = "SELECT current_setting('default_transaction_read_only'), \
         (SELECT count(*) FROM pg_roles WHERE rolcanlogin AND rolname <> current_user), \
         (SELECT count(*) FROM pg_stat_activity a JOIN pg_database d ON d.oid = a.datid \
          WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid() \
          AND (a.usename IS DISTINCT FROM current_user OR NOT d.datallowconn))";
    let mut last = String::new();
    for _ in 0..50 {
        let check = Session::open(db, member).await?;
        let row = check.rows(CONFIRM, None).await?.into_iter().next().unwrap_or_default();
        let text = |i: usize| row.get(i).cloned().flatten().unwrap_or_default();
        if (text(0).as_str(), text(1).as_str(), text(2).as_str()) == ("on", "0", "0") {
            let lsn = session.value("SELECT pg_current_wal_lsn()::text").await?.as_deref().and_then(parse_lsn);
            return Ok(Fenced {
                kept_role,
                closed_roles: roles,
                closed,
                door: session.database.clone(),
                still_open,
                terminated,
                lsn,
            });
        }
        last = format!(
            "default_transaction_read_only {}, {} other roles may log in, {} sessions left that could write",
            text(0),
            text(1),
            text(2)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("the fence did not hold: {last}"))
}

/// What fences closed, by name.
#[derive(Debug, Default)]
struct Closed {
    roles: BTreeSet<String>,
    databases: BTreeSet<String>,
}

impl Closed {
    fn is_empty(&self) -> bool {
        self.roles.is_empty() && self.databases.is_empty()
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        if !self.roles.is_empty() {
            parts.push(format!("logins of {}", self.roles.iter().cloned().collect::<Vec<_>>().join(", ")));
        }
        if !self.databases.is_empty() {
            parts.push(format!("connections to {}", self.databases.iter().cloned().collect::<Vec<_>>().join(", ")));
        }
        parts.join("; ")
    }
}

/// Opens again on the promoted `member` what a fence of its old primary
/// closed and it replayed: only what the fence closed, and only what is
/// closed there now. Returns what it opened.
async fn reopen(db: &DatabaseConfig, member: &MemberConfig, closed: &Closed) -> Result<Closed, String> {
    // Its own database may be one the fence closed.
    let session = match Session::open_to(db, member, FENCED_DOOR).await {
        Ok(s) => s,
        Err(_) => Session::open(db, member).await?,
    };
    let roles: BTreeSet<String> = names(&session, "SELECT rolname FROM pg_roles WHERE NOT rolcanlogin")
        .await?
        .into_iter()
        .filter(|r| closed.roles.contains(r))
        .collect();
    let databases: BTreeSet<String> =
        names(&session, "SELECT datname FROM pg_database WHERE NOT datallowconn AND NOT datistemplate")
            .await?
            .into_iter()
            .filter(|d| closed.databases.contains(d))
            .collect();
    let again = Closed { roles, databases };
    if again.is_empty() {
        return Ok(again);
    }
    let statements: Vec<String> = again
        .roles
        .iter()
        .map(|r| format!("ALTER ROLE {} LOGIN", quote_ident(r)))
        .chain(again.databases.iter().map(|d| format!("ALTER DATABASE {} ALLOW_CONNECTIONS true", quote_ident(d))))
        .collect();
    write_locally(&session, &statements).await?;
    Ok(again)
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
            format!("fenced: {}", self.fenced.join(", "))
        };
        let at = match &self.phase {
            Phase::Probing => "while asking the members: nothing changed".to_owned(),
            Phase::Fencing(name) => format!(
                "while fencing {name} (it may be partly fenced: check its logins, databases and default_transaction_read_only)"
            ),
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
        let fenced = |roles: &[&str], closed: &[&str], still_open: Option<&str>| Fenced {
            kept_role: "remedy".into(),
            closed_roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            closed: closed.iter().map(|c| (*c).to_owned()).collect(),
            door: FENCED_DOOR.into(),
            still_open: still_open.map(str::to_owned),
            terminated: 3,
            lsn: Some(0x300_0148),
        };
        assert_eq!(
            fenced(&["app", "postgres"], &["app", "saasidp"], None).describe(),
            "logins closed for every role but remedy (NOLOGIN: app, postgres); connections refused to every \
             database: app, saasidp (ALLOW_CONNECTIONS false), the coordinator reaching it through template1; \
             default_transaction_read_only = on; 3 sessions terminated; last lsn 0/3000148"
        );
        assert_eq!(
            fenced(&[], &[], Some("fence_connections is off")).describe(),
            "no role but remedy could log in; its databases still take connections (fence_connections is off); \
             default_transaction_read_only = on; 3 sessions terminated; last lsn 0/3000148"
        );
        assert!(
            fenced(&["app"], &["app"], Some("saasidp, the coordinator's own, could not be closed"))
                .describe()
                .contains("connections refused to app (ALLOW_CONNECTIONS false), but not to all (saasidp")
        );
    }

    #[test]
    fn any_name_is_quoted_as_postgresql_reads_it() {
        assert_eq!(quote_ident("app"), "\"app\"");
        assert_eq!(quote_ident("Odd \"name\"; DROP"), "\"Odd \"\"name\"\"; DROP\"");
    }

    #[test]
    fn what_fences_closed_reads_by_kind() {
        let closed =
            Closed { roles: ["postgres".to_owned(), "app".to_owned()].into(), databases: ["app".to_owned()].into() };
        assert_eq!(closed.describe(), "logins of app, postgres; connections to app");
        assert!(Closed::default().is_empty());
    }
}
