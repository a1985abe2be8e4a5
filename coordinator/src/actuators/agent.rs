//! The `agent` action (a directive to one or more agents, with each
//! agent's result collected), the `agent_snapshot` action (what agents
//! see on their node, combined into one piece of evidence) and the
//! `log_cleanup` action (old files deleted on the nodes, read in
//! [`cleanup`]).
//!
//! Both go through the [`Directives`] hub. Every agent a target names is
//! accounted for in the report: it answered (succeeded or not), it did not
//! answer in time, or it could not be reached (not connected, directive not
//! among its capabilities, stream closed before it answered). An empty
//! target set is a failure, never "succeeded on 0 agents".

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use remedy_proto::v1 as pb;
use remedy_shared::incident::IncidentId;
use remedy_shared::runbook::{AgentDirective, AgentSnapshot, AgentTarget, Combine, LogCleanup};

use remedy_shared::guard::{Population, TargetRef};

use super::{ActionCall, ActionReport, ActionStatus, Actuator, Resolved, cleanup};
use crate::directives::{Answer, Delivery, DirectiveSpec, Directives, Pending, Target, Undelivered};
use crate::store::Store;

/// The directive agents answer with a snapshot of their node.
pub const SNAPSHOT_DIRECTIVE: &str = "snapshot";

/// Longest any step waits for agents, whatever its parameters say: a bound
/// that keeps deadline arithmetic far from overflow.
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// Finds the agents whose findings keep an incident open, which is what a
/// runbook means by `agents: reporting`. A trait so the actuator does not
/// care where incidents live.
#[tonic::async_trait]
pub trait ReportingAgents: Send + Sync + fmt::Debug {
    /// The ids of the agents reporting `incident_id` now.
    async fn reporting_agents(&self, incident_id: &str) -> Result<BTreeSet<String>, String>;
}

/// Reads reporting agents from the store: the incident's active sources.
/// Sources that are not agents (Alertmanager, the coordinator) match no
/// agent and so never count as one.
#[derive(Clone)]
pub struct StoreReporting {
    store: Arc<dyn Store>,
}

impl StoreReporting {
    /// Reads incidents from `store`, the same one the writer commits to.
    pub fn new(store: Arc<dyn Store>) -> Self {
        StoreReporting { store }
    }
}

impl fmt::Debug for StoreReporting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StoreReporting")
    }
}

#[tonic::async_trait]
impl ReportingAgents for StoreReporting {
    async fn reporting_agents(&self, incident_id: &str) -> Result<BTreeSet<String>, String> {
        let id: IncidentId = incident_id.parse()?;
        let store = self.store.clone();
        let found = tokio::task::spawn_blocking(move || store.get_incident(id))
            .await
            .map_err(|e| format!("reading incident {id}: {e}"))?
            .map_err(|e| format!("reading incident {id}: {e}"))?;
        match found {
            Some((incident, _)) => Ok(incident.active_sources.into_keys().collect()),
            None => Err(format!("no incident {id}")),
        }
    }
}

/// Performs `agent` and `agent_snapshot` actions through the hub.
#[derive(Debug, Clone)]
pub struct AgentActuator {
    directives: Directives,
    reporting: Option<Arc<dyn ReportingAgents>>,
}

impl AgentActuator {
    /// An actuator sending through `directives`. Without
    /// [`with_reporting`](Self::with_reporting), `agents: reporting` is
    /// refused as invalid rather than guessed.
    pub fn new(directives: Directives) -> Self {
        AgentActuator { directives, reporting: None }
    }

    /// Resolves `agents: reporting` with `reporting`.
    pub fn with_reporting(mut self, reporting: Arc<dyn ReportingAgents>) -> Self {
        self.reporting = Some(reporting);
        self
    }

    /// The hub target for a runbook target; `Err` is the report to give.
    async fn target(&self, call: &ActionCall, agents: &AgentTarget) -> Result<Target, ActionReport> {
        match agents {
            AgentTarget::All => Ok(Target::All),
            AgentTarget::Node(node) if node.trim().is_empty() => {
                Err(ActionReport::new(ActionStatus::Invalid, "agents.node is empty: no node to send to"))
            }
            AgentTarget::Node(node) => Ok(Target::Node(node.trim().to_owned())),
            AgentTarget::Reporting => {
                let Some(reporting) = &self.reporting else {
                    return Err(ActionReport::new(
                        ActionStatus::Invalid,
                        "`agents: reporting` cannot be resolved: this coordinator has no incident lookup for it",
                    ));
                };
                match reporting.reporting_agents(&call.incident_id).await {
                    Ok(ids) if ids.is_empty() => Err(ActionReport::new(
                        ActionStatus::Failed,
                        format!("no agent reports incident {}: nothing to send to", call.incident_id),
                    )
                    .with("agents", 0)),
                    Ok(ids) => Ok(Target::Agents(ids)),
                    Err(e) => Err(ActionReport::new(
                        ActionStatus::Failed,
                        format!("cannot tell which agents report {}: {e}", call.incident_id),
                    )),
                }
            }
        }
    }

    /// Sends and, with `collect`, waits for every answer until `wait` has
    /// passed. `Err` is the report for an empty target set.
    async fn dispatch(
        &self,
        target: &Target,
        spec: DirectiveSpec,
        collect: bool,
        wait: Duration,
    ) -> Result<Vec<AgentAnswer>, ActionReport> {
        let answers = send_and_collect(&self.directives, target, &spec, collect, wait).await;
        if answers.is_empty() {
            let why = match target {
                Target::All => "no agent is connected".to_owned(),
                Target::Node(node) => format!("no agent on node {node}"),
                Target::Agents(_) => "no agent to send to".to_owned(),
            };
            return Err(
                ActionReport::new(ActionStatus::Failed, format!("`{}` not sent: {why}", spec.action)).with("agents", 0)
            );
        }
        Ok(answers)
    }
}

/// Sends `spec` to every agent `target` names and, with `collect`, waits
/// for each answer until `wait` has passed. Every named agent comes back,
/// labelled and sorted (see [`label`]); empty when the target named nobody.
pub(crate) async fn send_and_collect(
    directives: &Directives,
    target: &Target,
    spec: &DirectiveSpec,
    collect: bool,
    wait: Duration,
) -> Vec<AgentAnswer> {
    let until = tokio::time::Instant::now() + wait;
    let pending = directives.send(target, spec, collect).await;
    let answers = pending.into_iter().map(|p| answer(p, &spec.action, until, wait));
    label(futures::future::join_all(answers).await)
}

#[tonic::async_trait]
impl Actuator for AgentActuator {
    fn kinds(&self) -> &'static [&'static str] {
        &["agent", "agent_snapshot", "log_cleanup"]
    }

    /// The connected agents the action names, as the rails see them: an
    /// agent nobody can reach is not a target, and none at all is an empty
    /// set, refused.
    async fn resolve(&self, call: &ActionCall) -> Option<Result<Resolved, String>> {
        let agents = match call.kind.as_str() {
            "agent" => serde_json::from_value::<AgentDirective>(call.params.clone()).map(|p| p.agents),
            "agent_snapshot" => serde_json::from_value::<AgentSnapshot>(call.params.clone()).map(|p| p.agents),
            "log_cleanup" => serde_json::from_value::<LogCleanup>(call.params.clone()).map(|p| p.agents),
            _ => return None,
        };
        let agents = match agents {
            Ok(a) => a,
            Err(e) => return Some(Err(format!("{} parameters: {e}", call.kind))),
        };
        let target = match self.target(call, &agents).await {
            Ok(t) => t,
            // Nobody reports the incident: nothing to act on.
            Err(report) if report.status == ActionStatus::Failed => Target::Agents(BTreeSet::new()),
            Err(report) => return Some(Err(report.message)),
        };
        let connected = self.directives.connected();
        // Node actions count against the nodes there are, so a runbook's
        // percentage budget (`max_percent`) has its pool: the nodes whose
        // agents are connected now.
        let population = (call.kind == "log_cleanup").then(|| Population {
            pool: cleanup::POOL.to_owned(),
            size: connected.iter().map(|a| a.node_name.as_str()).collect::<BTreeSet<_>>().len() as u64,
        });
        let targets = connected
            .into_iter()
            .filter(|a| match &target {
                Target::All => true,
                Target::Node(node) => &a.node_name == node,
                Target::Agents(ids) => ids.contains(&a.agent_id),
            })
            .map(|a| TargetRef::new("agent", a.agent_id).with_label("node", a.node_name))
            .collect();
        Some(Ok(Resolved { targets, population, ..Resolved::default() }))
    }

    async fn execute(&self, call: &ActionCall) -> ActionReport {
        match call.kind.as_str() {
            "agent" => self.directive(call).await,
            "agent_snapshot" => self.snapshot(call).await,
            "log_cleanup" => self.log_cleanup(call).await,
            other => ActionReport::new(ActionStatus::Invalid, format!("the agent actuator does not perform `{other}`")),
        }
    }
}

impl AgentActuator {
    async fn directive(&self, call: &ActionCall) -> ActionReport {
        let p: AgentDirective = match serde_json::from_value(call.params.clone()) {
            Ok(p) => p,
            Err(e) => return ActionReport::new(ActionStatus::Invalid, format!("agent parameters: {e}")),
        };
        let directive = p.directive.trim().to_owned();
        if directive.is_empty() {
            return ActionReport::new(ActionStatus::Invalid, "agent parameters: `directive` is empty");
        }
        let target = match self.target(call, &p.agents).await {
            Ok(t) => t,
            Err(report) => return report.with("directive", &directive),
        };
        let wait = p.timeout.min(call.deadline).min(MAX_WAIT);
        let spec = DirectiveSpec {
            action: directive.clone(),
            params: p.params,
            deadline: self.directives.clock().now().plus(wait),
            // The agent applies its own checks and reports what it would do.
            dry_run: call.dry_run,
            incident_id: call.incident_id.clone(),
            step_id: call.step_id.clone(),
        };
        match self.dispatch(&target, spec, p.collect, wait).await {
            Ok(answers) => directive_report(&directive, &answers, call.dry_run),
            Err(report) => report.with("directive", &directive),
        }
    }

    /// Sends `log_cleanup` with the step's roots to the agents it names
    /// (for `agents: reporting`, those whose findings keep the incident
    /// open), and reads what each deleted and kept.
    async fn log_cleanup(&self, call: &ActionCall) -> ActionReport {
        let p: LogCleanup = match serde_json::from_value(call.params.clone()) {
            Ok(p) => p,
            Err(e) => return ActionReport::new(ActionStatus::Invalid, format!("log_cleanup parameters: {e}")),
        };
        let params = match cleanup::directive_params(&p) {
            Ok(params) => params,
            Err(e) => return ActionReport::new(ActionStatus::Invalid, format!("log_cleanup parameters: {e}")),
        };
        let target = match self.target(call, &p.agents).await {
            Ok(t) => t,
            Err(report) => return report,
        };
        let wait = call.deadline.min(MAX_WAIT);
        let spec = DirectiveSpec {
            action: cleanup::DIRECTIVE.to_owned(),
            params,
            deadline: self.directives.clock().now().plus(wait),
            // The agent walks and checks for real and says what would go.
            dry_run: call.dry_run,
            incident_id: call.incident_id.clone(),
            step_id: call.step_id.clone(),
        };
        match self.dispatch(&target, spec, true, wait).await {
            Ok(answers) => cleanup::report(&answers, call.dry_run),
            Err(report) => report,
        }
    }

    async fn snapshot(&self, call: &ActionCall) -> ActionReport {
        let p: AgentSnapshot = match serde_json::from_value(call.params.clone()) {
            Ok(p) => p,
            Err(e) => return ActionReport::new(ActionStatus::Invalid, format!("agent_snapshot parameters: {e}")),
        };
        let sections = match section_names(&p) {
            Ok(s) => s,
            Err(e) => return ActionReport::new(ActionStatus::Invalid, format!("agent_snapshot parameters: {e}")),
        };
        let target = match self.target(call, &p.agents).await {
            Ok(t) => t,
            Err(report) => return report,
        };
        let wait = p.timeout.min(call.deadline).min(MAX_WAIT);
        let mut params = BTreeMap::from([("include".to_owned(), sections.clone())]);
        if let Some(window) = p.window {
            params.insert("window".to_owned(), format!("{}ms", window.as_millis()));
        }
        if let Some(selector) = p.selector.filter(|s| !s.trim().is_empty()) {
            params.insert("selector".to_owned(), selector);
        }
        let spec = DirectiveSpec {
            action: SNAPSHOT_DIRECTIVE.to_owned(),
            params,
            deadline: self.directives.clock().now().plus(wait),
            // A snapshot only reads, so it runs in dry-run too and the
            // rehearsal decides on real evidence. `call.dry_run` is ignored
            // on purpose.
            dry_run: false,
            incident_id: call.incident_id.clone(),
            step_id: call.step_id.clone(),
        };
        match self.dispatch(&target, spec, true, wait).await {
            Ok(answers) => snapshot_report(&sections, &answers, p.combine),
            Err(report) => report,
        }
    }
}

/// The sections as the agent reads them: a comma list of their names.
fn section_names(p: &AgentSnapshot) -> Result<String, String> {
    let names: BTreeSet<String> = p
        .include
        .iter()
        .map(|s| match serde_json::to_value(s) {
            Ok(serde_json::Value::String(name)) => Ok(name),
            _ => Err(format!("section {s:?} has no name")),
        })
        .collect::<Result<_, _>>()?;
    if names.is_empty() {
        return Err("`include` names no section".to_owned());
    }
    Ok(names.into_iter().collect::<Vec<_>>().join(","))
}

/// How one agent's directive ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    Succeeded,
    DryRun,
    Failed,
    Refused,
    Unsupported,
    TimedOut,
    Unreachable,
    /// Sent, not collected.
    Sent,
}

impl Outcome {
    /// Whether the agent did what was asked: done, rehearsed in a dry run,
    /// or sent when results are not collected.
    pub(crate) fn fulfils(self, dry_run: bool) -> bool {
        matches!(self, Outcome::Succeeded | Outcome::Sent) || (dry_run && self == Outcome::DryRun)
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::DryRun => "dry_run",
            Outcome::Failed => "failed",
            Outcome::Refused => "refused",
            Outcome::Unsupported => "unsupported",
            Outcome::TimedOut => "timed_out",
            Outcome::Unreachable => "unreachable",
            Outcome::Sent => "sent",
        }
    }
}

/// One targeted agent's part in the report.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AgentAnswer {
    pub(crate) agent_id: String,
    pub(crate) node: String,
    /// The evidence prefix: the node's name, made unique when two agents
    /// share a node.
    pub(crate) label: String,
    pub(crate) outcome: Outcome,
    pub(crate) message: String,
    pub(crate) evidence: BTreeMap<String, String>,
}

async fn answer(p: Pending, action: &str, until: tokio::time::Instant, wait: Duration) -> AgentAnswer {
    let (outcome, message, evidence) = match p.delivery {
        Delivery::Waiting(w) => match w.wait(until).await {
            Answer::Result(r) => from_result(r),
            Answer::Disconnected => (
                Outcome::Unreachable,
                "the agent's stream closed before it answered; the directive may or may not have run".to_owned(),
                BTreeMap::new(),
            ),
            Answer::TimedOut => (Outcome::TimedOut, format!("no answer within {wait:?}"), BTreeMap::new()),
        },
        Delivery::Sent { directive_id } => {
            (Outcome::Sent, format!("sent as {directive_id}; result not collected"), BTreeMap::new())
        }
        Delivery::NotSent(why) => {
            let outcome = if matches!(why, Undelivered::Unsupported { .. }) {
                Outcome::Unsupported
            } else {
                Outcome::Unreachable
            };
            (outcome, undelivered_message(&why, action, &p.agent_id, &p.node_name), BTreeMap::new())
        }
    };
    AgentAnswer { agent_id: p.agent_id, node: p.node_name, label: String::new(), outcome, message, evidence }
}

fn undelivered_message(why: &Undelivered, action: &str, agent_id: &str, node: &str) -> String {
    match why {
        Undelivered::NotConnected if agent_id.is_empty() => format!("no agent on node {node} is connected"),
        Undelivered::NotConnected if node.is_empty() => {
            format!("agent {agent_id} has not connected to this coordinator")
        }
        Undelivered::NotConnected => format!("agent {agent_id} on {node} is not connected"),
        Undelivered::Unsupported { capabilities } if capabilities.is_empty() => {
            format!("the agent cannot run `{action}`: it announced no directives")
        }
        Undelivered::Unsupported { capabilities } => format!(
            "the agent cannot run `{action}`: it announced {}",
            capabilities.iter().cloned().collect::<Vec<_>>().join(", ")
        ),
        Undelivered::StreamClosed => "the agent's stream closed as the directive was sent".to_owned(),
        Undelivered::StreamFull => "the agent's stream is backed up: it is not reading".to_owned(),
    }
}

fn from_result(r: pb::ActionResult) -> (Outcome, String, BTreeMap<String, String>) {
    let evidence: BTreeMap<String, String> = r.evidence.into_iter().collect();
    let outcome = match pb::ActionOutcome::try_from(r.outcome) {
        Ok(pb::ActionOutcome::Succeeded) => Outcome::Succeeded,
        Ok(pb::ActionOutcome::DryRun) => Outcome::DryRun,
        Ok(pb::ActionOutcome::Failed) => Outcome::Failed,
        Ok(pb::ActionOutcome::Refused) => Outcome::Refused,
        Ok(pb::ActionOutcome::Unsupported) => Outcome::Unsupported,
        Ok(pb::ActionOutcome::TimedOut) => Outcome::TimedOut,
        Ok(pb::ActionOutcome::Unspecified) | Err(_) => {
            return (
                Outcome::Failed,
                format!("answered with an unknown outcome ({}): {}", r.outcome, r.message),
                evidence,
            );
        }
    };
    (outcome, r.message, evidence)
}

/// Gives each answer its evidence prefix: the node name, or
/// `node/agent id` when two targeted agents share a node (or the agent id
/// when the node is unknown). Sorted by label.
fn label(mut answers: Vec<AgentAnswer>) -> Vec<AgentAnswer> {
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for a in &answers {
        *per_node.entry(a.node.clone()).or_default() += 1;
    }
    for a in &mut answers {
        a.label = if a.node.is_empty() {
            a.agent_id.clone()
        } else if per_node.get(&a.node).copied().unwrap_or(0) > 1 && !a.agent_id.is_empty() {
            format!("{}/{}", a.node, a.agent_id)
        } else {
            a.node.clone()
        };
    }
    answers.sort_by(|a, b| a.label.cmp(&b.label));
    answers
}

/// The counts every report carries.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Counts {
    pub(crate) agents: usize,
    pub(crate) succeeded: usize,
    pub(crate) failed: usize,
    pub(crate) timed_out: usize,
    pub(crate) unreachable: usize,
    pub(crate) sent: usize,
}

impl Counts {
    /// Counts `answers`; a dry-run answer is a success only in a dry run.
    pub(crate) fn of(answers: &[AgentAnswer], dry_run: bool) -> Counts {
        let mut c = Counts { agents: answers.len(), ..Counts::default() };
        for a in answers {
            match a.outcome {
                Outcome::Succeeded => c.succeeded += 1,
                Outcome::DryRun if dry_run => c.succeeded += 1,
                Outcome::DryRun | Outcome::Failed | Outcome::Refused | Outcome::Unsupported => c.failed += 1,
                Outcome::TimedOut => c.timed_out += 1,
                Outcome::Unreachable => c.unreachable += 1,
                Outcome::Sent => c.sent += 1,
            }
        }
        c
    }

    /// Succeeded only when every agent did; timed out when the only
    /// shortfall is agents that did not answer in time; failed otherwise.
    pub(crate) fn status(&self, success: ActionStatus) -> ActionStatus {
        if self.agents > 0 && self.succeeded + self.sent == self.agents {
            success
        } else if self.agents > 0 && self.failed == 0 && self.unreachable == 0 {
            ActionStatus::TimedOut
        } else {
            ActionStatus::Failed
        }
    }

    pub(crate) fn add_to(&self, evidence: &mut BTreeMap<String, String>) {
        for (k, v) in [
            ("agents", self.agents),
            ("succeeded", self.succeeded),
            ("failed", self.failed),
            ("timed_out", self.timed_out),
            ("unreachable", self.unreachable),
        ] {
            evidence.insert(k.to_owned(), v.to_string());
        }
        if self.sent > 0 {
            evidence.insert("sent".to_owned(), self.sent.to_string());
        }
    }

    pub(crate) fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (n, what) in [
            (self.succeeded, "succeeded"),
            (self.sent, "sent without collecting"),
            (self.failed, "failed"),
            (self.timed_out, "timed out"),
            (self.unreachable, "unreachable"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        parts.join(", ")
    }
}

pub(crate) fn agents_word(n: usize) -> &'static str {
    if n == 1 { "agent" } else { "agents" }
}

/// The first agent that did not succeed, for the one-line message.
pub(crate) fn first_problem(answers: &[AgentAnswer], dry_run: bool) -> Option<String> {
    answers.iter().find(|a| !a.outcome.fulfils(dry_run)).map(|a| format!("{}: {}", a.label, a.message))
}

/// The `agent` report: per agent `<label>.outcome`, `<label>.message` and
/// its evidence as `<label>.<key>`; the counts.
fn directive_report(directive: &str, answers: &[AgentAnswer], dry_run: bool) -> ActionReport {
    let counts = Counts::of(answers, dry_run);
    let status = counts.status(if dry_run { ActionStatus::DryRun } else { ActionStatus::Succeeded });
    let mut message =
        format!("`{directive}` on {} {}: {}", counts.agents, agents_word(counts.agents), counts.describe());
    if dry_run {
        message.push_str(" (dry run: nothing changed)");
    }
    if let Some(problem) = first_problem(answers, dry_run) {
        message.push_str("; ");
        message.push_str(&problem);
    }
    let mut evidence = BTreeMap::new();
    for a in answers {
        for (k, v) in &a.evidence {
            evidence.insert(format!("{}.{k}", a.label), v.clone());
        }
        evidence.insert(format!("{}.outcome", a.label), a.outcome.as_str().to_owned());
        evidence.insert(format!("{}.message", a.label), a.message.clone());
    }
    evidence.insert("directive".to_owned(), directive.to_owned());
    counts.add_to(&mut evidence);
    ActionReport { status, message, evidence }
}

/// The `agent_snapshot` report: the answers of the agents that succeeded,
/// combined (see [`combine`]); `nodes.<label>.outcome` for every agent and
/// `nodes.<label>.message` for those that did not succeed; the counts.
fn snapshot_report(sections: &str, answers: &[AgentAnswer], how: Combine) -> ActionReport {
    let counts = Counts::of(answers, false);
    let status = counts.status(ActionStatus::Succeeded);
    let answered: Vec<(&str, &BTreeMap<String, String>)> =
        answers.iter().filter(|a| a.outcome == Outcome::Succeeded).map(|a| (a.label.as_str(), &a.evidence)).collect();
    let mut evidence = combine(&answered, how);
    for a in answers {
        evidence.insert(format!("nodes.{}.outcome", a.label), a.outcome.as_str().to_owned());
        if a.outcome != Outcome::Succeeded {
            evidence.insert(format!("nodes.{}.message", a.label), a.message.clone());
        }
    }
    let how_name = match how {
        Combine::PerNode => "per_node",
        Combine::Sum => "sum",
        Combine::Max => "max",
    };
    evidence.insert("include".to_owned(), sections.to_owned());
    evidence.insert("combine".to_owned(), how_name.to_owned());
    counts.add_to(&mut evidence);
    let mut message = format!(
        "snapshot ({sections}) from {} of {} {}, {how_name}",
        counts.succeeded,
        counts.agents,
        agents_word(counts.agents)
    );
    if let Some(problem) = first_problem(answers, false) {
        message.push_str("; ");
        message.push_str(&problem);
    }
    let unavailable: BTreeSet<&str> =
        answered.iter().flat_map(|(_, ev)| ev.keys()).filter_map(|k| k.strip_prefix("unavailable.")).collect();
    if !unavailable.is_empty() {
        message.push_str(&format!("; not collected: {}", unavailable.into_iter().collect::<Vec<_>>().join(", ")));
    }
    ActionReport { status, message, evidence }
}

/// A number read from evidence: integers stay exact.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Number {
    Int(i128),
    Float(f64),
}

impl Number {
    fn parse(text: &str) -> Option<Number> {
        let text = text.trim();
        if let Ok(i) = text.parse::<i128>() {
            return Some(Number::Int(i));
        }
        text.parse::<f64>().ok().filter(|f| f.is_finite()).map(Number::Float)
    }

    fn as_f64(self) -> f64 {
        match self {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        }
    }

    fn plus(self, other: Number) -> Number {
        match (self, other) {
            (Number::Int(a), Number::Int(b)) => {
                a.checked_add(b).map_or(Number::Float(a as f64 + b as f64), Number::Int)
            }
            (a, b) => Number::Float(a.as_f64() + b.as_f64()),
        }
    }

    fn greater_than(self, other: Number) -> bool {
        match (self, other) {
            (Number::Int(a), Number::Int(b)) => a > b,
            (a, b) => a.as_f64() > b.as_f64(),
        }
    }

    fn render(self) -> String {
        match self {
            Number::Int(i) => i.to_string(),
            Number::Float(f) => {
                // Sums of decimals pick up binary noise (0.1 + 0.2); six
                // places are more than any of our figures carry.
                let text = format!("{f:.6}");
                let text = text.trim_end_matches('0').trim_end_matches('.');
                if text == "-0" { "0".to_owned() } else { text.to_owned() }
            }
        }
    }
}

/// Combines the agents' evidence, given as (label, evidence):
///
/// - `per_node`: every key kept apart, as `nodes.<label>.<key>`;
/// - `sum` and `max`: each key whose values are numbers becomes `<key>`,
///   summed or the largest over the agents that have it (a max keeps the
///   agent's own text); values that are not numbers cannot be combined and
///   stay apart as `nodes.<label>.<key>`.
fn combine(answers: &[(&str, &BTreeMap<String, String>)], how: Combine) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut combined: BTreeMap<&str, (Number, &str)> = BTreeMap::new();
    for (label, evidence) in answers {
        for (key, value) in *evidence {
            let number = match how {
                Combine::PerNode => None,
                Combine::Sum | Combine::Max => Number::parse(value),
            };
            let Some(n) = number else {
                out.insert(format!("nodes.{label}.{key}"), value.clone());
                continue;
            };
            match combined.get_mut(key.as_str()) {
                None => {
                    combined.insert(key, (n, value));
                }
                Some(slot) => match how {
                    Combine::Sum => slot.0 = slot.0.plus(n),
                    Combine::Max if n.greater_than(slot.0) => *slot = (n, value),
                    Combine::Max | Combine::PerNode => {}
                },
            }
        }
    }
    for (key, (n, text)) in combined {
        let value = match how {
            Combine::Max => text.trim().to_owned(),
            Combine::Sum | Combine::PerNode => n.render(),
        };
        out.insert(key.to_owned(), value);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn ans(node: &str, outcome: Outcome, evidence: &[(&str, &str)]) -> AgentAnswer {
        AgentAnswer {
            agent_id: format!("{node}-id"),
            node: node.into(),
            label: node.into(),
            outcome,
            message: format!("{} on {node}", outcome.as_str()),
            evidence: ev(evidence),
        }
    }

    #[test]
    fn sum_adds_numbers_over_agents_and_keeps_the_rest_per_node() {
        let a = ev(&[("database", "7"), ("timeout", "2"), ("cpu_percent", "12.5"), ("unavailable.pods", "not here")]);
        let b = ev(&[("database", "5"), ("cpu_percent", "30.25"), ("taken_at", "2026-11-26T10:00:00Z")]);
        let out = combine(&[("n1", &a), ("n2", &b)], Combine::Sum);
        assert_eq!(out["database"], "12");
        assert_eq!(out["timeout"], "2", "a key only one agent has is that agent's figure");
        assert_eq!(out["cpu_percent"], "42.75");
        assert_eq!(out["nodes.n1.unavailable.pods"], "not here");
        assert_eq!(out["nodes.n2.taken_at"], "2026-11-26T10:00:00Z");
        assert!(!out.contains_key("nodes.n1.database"));
    }

    #[test]
    fn sums_stay_exact_for_integers_and_clean_for_decimals() {
        let a = ev(&[("bytes", "18446744073709551615"), ("p", "0.1")]);
        let b = ev(&[("bytes", "18446744073709551615"), ("p", "0.2")]);
        let out = combine(&[("n1", &a), ("n2", &b)], Combine::Sum);
        assert_eq!(out["bytes"], "36893488147419103230");
        assert_eq!(out["p"], "0.3");
    }

    #[test]
    fn max_keeps_the_worst_agents_own_figure() {
        let a = ev(&[("memory_percent", "91.50"), ("disk_percent", "40")]);
        let b = ev(&[("memory_percent", "60"), ("disk_percent", "97.125"), ("load1", "nan")]);
        let out = combine(&[("n1", &a), ("n2", &b)], Combine::Max);
        assert_eq!(out["memory_percent"], "91.50");
        assert_eq!(out["disk_percent"], "97.125");
        assert_eq!(out["nodes.n2.load1"], "nan", "not a finite number: kept apart, not combined");
    }

    #[test]
    fn per_node_keeps_every_key_apart() {
        let a = ev(&[("cpu_percent", "5")]);
        let b = ev(&[("cpu_percent", "9"), ("processes.1.process", "java[42]")]);
        let out = combine(&[("n1", &a), ("n2", &b)], Combine::PerNode);
        assert_eq!(
            out,
            ev(&[
                ("nodes.n1.cpu_percent", "5"),
                ("nodes.n2.cpu_percent", "9"),
                ("nodes.n2.processes.1.process", "java[42]")
            ])
        );
    }

    #[test]
    fn a_snapshot_combines_only_the_agents_that_answered_and_names_the_others() {
        let answers = vec![
            ans("n1", Outcome::Succeeded, &[("database", "4")]),
            ans(
                "n2",
                Outcome::Succeeded,
                &[("database", "9"), ("unavailable.pods", "not collected by this agent version")],
            ),
            ans("n3", Outcome::TimedOut, &[]),
        ];
        let report = snapshot_report("error_counts", &answers, Combine::Sum);
        assert_eq!(report.status, ActionStatus::TimedOut);
        assert_eq!(report.evidence["database"], "13");
        assert_eq!(report.evidence["agents"], "3");
        assert_eq!(report.evidence["succeeded"], "2");
        assert_eq!(report.evidence["timed_out"], "1");
        assert_eq!(report.evidence["nodes.n3.outcome"], "timed_out");
        assert_eq!(report.evidence["nodes.n3.message"], "timed_out on n3");
        assert_eq!(report.evidence["nodes.n1.outcome"], "succeeded");
        assert!(
            report.message.starts_with("snapshot (error_counts) from 2 of 3 agents, sum; n3: "),
            "{}",
            report.message
        );
        assert!(report.message.ends_with("not collected: pods"), "{}", report.message);

        let all = snapshot_report("resources", &answers[..2], Combine::Max);
        assert_eq!(all.status, ActionStatus::Succeeded);
        assert_eq!(all.evidence["database"], "9");
    }

    #[test]
    fn a_directive_succeeds_only_if_every_agent_did() {
        let ok = vec![ans("n1", Outcome::Succeeded, &[("freed_bytes", "10")]), ans("n2", Outcome::Succeeded, &[])];
        let report = directive_report("log_cleanup", &ok, false);
        assert_eq!(report.status, ActionStatus::Succeeded);
        assert_eq!(report.message, "`log_cleanup` on 2 agents: 2 succeeded");
        assert_eq!(report.evidence["n1.freed_bytes"], "10");
        assert_eq!(report.evidence["n1.outcome"], "succeeded");
        assert_eq!(report.evidence["n2.message"], "succeeded on n2");
        assert_eq!((report.evidence["agents"].as_str(), report.evidence["succeeded"].as_str()), ("2", "2"));

        let mixed = vec![
            ans("n1", Outcome::Succeeded, &[]),
            ans("n2", Outcome::Refused, &[]),
            ans("n3", Outcome::Unreachable, &[]),
            ans("n4", Outcome::TimedOut, &[]),
        ];
        let report = directive_report("log_cleanup", &mixed, false);
        assert_eq!(report.status, ActionStatus::Failed);
        assert_eq!(
            report.message,
            "`log_cleanup` on 4 agents: 1 succeeded, 1 failed, 1 timed out, 1 unreachable; n2: refused on n2"
        );
        for (k, v) in [("failed", "1"), ("timed_out", "1"), ("unreachable", "1")] {
            assert_eq!(report.evidence[k], v, "{k}");
        }
        let slow = vec![ans("n1", Outcome::Succeeded, &[]), ans("n2", Outcome::TimedOut, &[])];
        assert_eq!(directive_report("x", &slow, false).status, ActionStatus::TimedOut);
        let unsupported = vec![ans("n1", Outcome::Unsupported, &[])];
        assert_eq!(directive_report("x", &unsupported, false).status, ActionStatus::Failed);
    }

    #[test]
    fn dry_run_answers_count_only_in_a_dry_run() {
        let answers = vec![ans("n1", Outcome::DryRun, &[("would_free_bytes", "10")])];
        let report = directive_report("log_cleanup", &answers, true);
        assert_eq!(report.status, ActionStatus::DryRun);
        assert!(report.message.ends_with("(dry run: nothing changed)"), "{}", report.message);
        assert_eq!(directive_report("log_cleanup", &answers, false).status, ActionStatus::Failed);
    }

    #[test]
    fn two_agents_on_one_node_are_told_apart() {
        let mut a = ans("n1", Outcome::Succeeded, &[]);
        a.agent_id = "a".into();
        let mut b = ans("n1", Outcome::Succeeded, &[]);
        b.agent_id = "b".into();
        let mut c = ans("", Outcome::Unreachable, &[]);
        c.agent_id = "gone".into();
        let labels: Vec<String> = label(vec![b, a, c]).into_iter().map(|x| x.label).collect();
        assert_eq!(labels, vec!["gone", "n1/a", "n1/b"]);
    }

    #[test]
    fn unknown_outcomes_are_failures_that_say_so() {
        let r = pb::ActionResult { directive_id: "d".into(), outcome: 42, message: "hm".into(), ..Default::default() };
        let (outcome, message, _) = from_result(r);
        assert_eq!(outcome, Outcome::Failed);
        assert_eq!(message, "answered with an unknown outcome (42): hm");
    }

    fn call(kind: &str, params: serde_json::Value) -> ActionCall {
        ActionCall {
            incident_id: "INC-000001".into(),
            step_id: "s".into(),
            kind: kind.into(),
            params,
            dry_run: false,
            deadline: Duration::from_secs(5),
            accepted_risk: None,
        }
    }

    #[tokio::test]
    async fn no_agent_connected_is_a_failure_never_success_on_zero() {
        let actuator = AgentActuator::new(Directives::default());
        let report = actuator
            .execute(&call("agent_snapshot", serde_json::json!({ "agents": "all", "include": ["resources"] })))
            .await;
        assert_eq!(report.status, ActionStatus::Failed);
        assert_eq!(report.message, "`snapshot` not sent: no agent is connected");
        assert_eq!(report.evidence["agents"], "0");
        let report =
            actuator.execute(&call("agent", serde_json::json!({ "agents": {"node": "n9"}, "directive": "x" }))).await;
        assert_eq!(report.status, ActionStatus::Failed);
        assert_eq!(report.evidence["unreachable"], "1");
        assert_eq!(report.evidence["n9.message"], "no agent on node n9 is connected");
    }

    #[tokio::test]
    async fn bad_parameters_and_unresolvable_targets_are_invalid() {
        let actuator = AgentActuator::new(Directives::default());
        let report = actuator.execute(&call("agent", serde_json::json!({ "agents": "all" }))).await;
        assert_eq!(report.status, ActionStatus::Invalid);
        assert!(report.message.contains("missing field `directive`"), "{}", report.message);
        let report = actuator
            .execute(&call("agent_snapshot", serde_json::json!({ "agents": "all", "include": [], "timeout": "1s" })))
            .await;
        assert_eq!(report.status, ActionStatus::Invalid);
        assert_eq!(report.message, "agent_snapshot parameters: `include` names no section");
        let report =
            actuator.execute(&call("agent", serde_json::json!({ "agents": {"node": " "}, "directive": "x" }))).await;
        assert_eq!(report.status, ActionStatus::Invalid);
        let report =
            actuator.execute(&call("agent", serde_json::json!({ "agents": "reporting", "directive": "x" }))).await;
        assert_eq!(report.status, ActionStatus::Invalid);
        assert!(report.message.contains("`agents: reporting` cannot be resolved"), "{}", report.message);
    }

    #[derive(Debug)]
    struct Nobody;

    #[tonic::async_trait]
    impl ReportingAgents for Nobody {
        async fn reporting_agents(&self, _: &str) -> Result<BTreeSet<String>, String> {
            Ok(BTreeSet::new())
        }
    }

    #[tokio::test]
    async fn an_incident_nobody_reports_has_no_target() {
        let actuator = AgentActuator::new(Directives::default()).with_reporting(Arc::new(Nobody));
        let report =
            actuator.execute(&call("agent", serde_json::json!({ "agents": "reporting", "directive": "x" }))).await;
        assert_eq!(report.status, ActionStatus::Failed);
        assert_eq!(report.message, "no agent reports incident INC-000001: nothing to send to");
    }

    #[tokio::test]
    async fn an_agent_that_disconnects_while_it_works_is_reported_unreachable() {
        let directives = Directives::default();
        let (tx, mut inbox) = tokio::sync::mpsc::channel(8);
        let registration = directives.register(
            crate::directives::AgentInfo {
                agent_id: "a1".into(),
                node_name: "n1".into(),
                labels: BTreeMap::new(),
                capabilities: ["snapshot".to_owned()].into(),
            },
            tx,
        );
        let actuator = AgentActuator::new(directives);
        let running = tokio::spawn(async move {
            actuator
                .execute(&call("agent_snapshot", serde_json::json!({ "agents": "all", "include": ["resources"] })))
                .await
        });
        // The directive is on the agent's stream; the agent goes away.
        assert!(inbox.recv().await.is_some());
        drop(registration);
        let report = running.await.expect("the actuator task");
        assert_eq!(report.status, ActionStatus::Failed);
        assert_eq!(report.evidence["unreachable"], "1");
        assert!(report.evidence["nodes.n1.message"].contains("closed before it answered"), "{report:?}");
    }
}
