//! Actuators: the code that performs an action a runbook step names.
//!
//! Every actuator implements [`Actuator`]. The engine renders a step's
//! parameters (templates filled from the incident), passes the guard rails,
//! and only then calls `execute`; in dry-run the actuator validates its
//! parameters and reports what it would have done, changing nothing.
//! Parameters arrive as JSON so each actuator owns the shape of its own.

pub mod agent;
pub mod block;
pub mod cleanup;
pub mod http;
pub mod kube;
pub mod notify;
pub mod postgres;
pub mod redis;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// One action to perform.
#[derive(Debug, Clone)]
pub struct ActionCall {
    /// The incident it serves.
    pub incident_id: String,
    /// The runbook step.
    pub step_id: String,
    /// The action kind (`http`, `notify`, ...).
    pub kind: String,
    /// Rendered parameters.
    pub params: serde_json::Value,
    /// Validate and report, change nothing.
    pub dry_run: bool,
    /// Longest the action may take.
    pub deadline: Duration,
    /// The risk a person accepted in approving this very execution, when
    /// the approval request stated one (see [`Resolved::risk`]). An
    /// actuator that finds the same want of evidence again goes ahead only
    /// with it; `None` in dry-run and shadow.
    pub accepted_risk: Option<AcceptedRisk>,
}

/// A risk a person accepted by approving an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedRisk {
    /// The risk, as the approval request stated it.
    pub risk: String,
    /// Who approved.
    pub by: String,
}

/// How an action ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionStatus {
    /// Done.
    Succeeded,
    /// Tried and failed.
    Failed,
    /// Dry run: nothing changed.
    DryRun,
    /// Not done before the deadline.
    TimedOut,
    /// The parameters are wrong; nothing was tried.
    Invalid,
}

impl ActionStatus {
    /// The snake_case name used on the timeline.
    pub fn as_str(self) -> &'static str {
        match self {
            ActionStatus::Succeeded => "succeeded",
            ActionStatus::Failed => "failed",
            ActionStatus::DryRun => "dry_run",
            ActionStatus::TimedOut => "timed_out",
            ActionStatus::Invalid => "invalid",
        }
    }
}

/// What an action reports for the timeline.
#[derive(Debug, Clone, PartialEq)]
pub struct ActionReport {
    /// How it ended.
    pub status: ActionStatus,
    /// One line for humans.
    pub message: String,
    /// What it found and did.
    pub evidence: BTreeMap<String, String>,
}

impl ActionReport {
    /// A report with no evidence.
    pub fn new(status: ActionStatus, message: impl Into<String>) -> Self {
        ActionReport { status, message: message.into(), evidence: BTreeMap::new() }
    }

    /// Adds one piece of evidence.
    pub fn with(mut self, key: &str, value: impl ToString) -> Self {
        self.evidence.insert(key.to_owned(), value.to_string());
        self
    }
}

/// What an action touches, as found in the world just before the rails
/// weigh it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resolved {
    /// Named objects, with their labels and annotations (and their owner's
    /// and namespace's annotations merged in, so `remedy.dev/hold` on a
    /// Deployment covers its pods). Empty means nothing matched: refused.
    pub targets: Vec<remedy_shared::guard::TargetRef>,
    /// For capacity changes: current and desired replicas and the bounds.
    pub capacity: Option<remedy_shared::guard::CapacityChange>,
    /// The pool the targets come from, for percentage budgets.
    pub population: Option<remedy_shared::guard::Population>,
    /// What makes the action unsafe unless a person accepts it, in plain
    /// words: the rails then always ask a person, and the request states
    /// it. Only an actuator that would otherwise refuse, for want of
    /// evidence a person can vouch for, says so.
    pub risk: Option<String>,
}

/// Something that can perform actions of some kinds.
#[tonic::async_trait]
pub trait Actuator: Send + Sync + std::fmt::Debug {
    /// The action kinds it performs.
    fn kinds(&self) -> &'static [&'static str];
    /// Looks at the world before the rails decide: resolves selectors to
    /// named objects and reads what the rails need (annotations, current
    /// replicas, pool size). `None`: this actuator has nothing to add, and
    /// the engine weighs the targets the runbook names. Called in every
    /// mode; it must change nothing.
    async fn resolve(&self, _call: &ActionCall) -> Option<Result<Resolved, String>> {
        None
    }
    /// Performs (or, in dry-run, validates and describes) one action.
    async fn execute(&self, call: &ActionCall) -> ActionReport;
}

/// Every actuator this release of the coordinator has, wired to the agents'
/// directive hub, the store and, when there is one, the Kubernetes API.
/// `ActionCatalog::this_release` says the same thing for offline validation;
/// a test keeps the two equal. Without a Kubernetes client the Kubernetes
/// kinds are not available here, and their steps rehearse.
pub fn this_release(
    directives: crate::directives::Directives,
    store: Arc<dyn crate::store::Store>,
    kube: Option<::kube::Client>,
) -> Result<Actuators, reqwest::Error> {
    // The Kubernetes actuator dates its changes by the clock directives are
    // dated by: the one `main` hands to everything.
    let clock = directives.clock().clone();
    let bans = crate::bans::Bans::new(store.clone(), directives.clone());
    let mut actuators = Actuators::default()
        .with(Arc::new(http::HttpActuator::new()?))
        .with(Arc::new(
            agent::AgentActuator::new(directives).with_reporting(Arc::new(agent::StoreReporting::new(store))),
        ))
        .with(Arc::new(block::BlockActuator::new(bans)))
        // No database configured here: a step naming one rehearses and says
        // so; the coordinator registers the configured ones over these.
        .with(Arc::new(postgres::PostgresActuator::new(BTreeMap::new())?))
        .with(Arc::new(redis::RedisActuator::default()))
        // No channel configured here: a `notify` to one rehearses and says
        // so; the coordinator registers the configured ones over this.
        .with(Arc::new(notify::NotifyActuator::new(crate::channels::Channels::none()?)));
    if let Some(client) = kube {
        actuators = actuators.with(Arc::new(kube::KubeActuator::new(client).with_clock(clock)));
    }
    Ok(actuators)
}

/// The actuators this coordinator has, by action kind.
#[derive(Debug, Clone, Default)]
pub struct Actuators {
    by_kind: BTreeMap<&'static str, Arc<dyn Actuator>>,
}

impl Actuators {
    /// Registers an actuator for each of its kinds.
    pub fn with(mut self, actuator: Arc<dyn Actuator>) -> Self {
        for kind in actuator.kinds() {
            self.by_kind.insert(kind, actuator.clone());
        }
        self
    }

    /// Whether an action kind can be performed here.
    pub fn available(&self, kind: &str) -> bool {
        self.by_kind.contains_key(kind)
    }

    /// Every kind that can be performed here.
    pub fn kinds(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.by_kind.keys().copied()
    }

    /// What the actuator of `call`'s kind finds in the world, if it looks.
    pub async fn resolve(&self, call: &ActionCall) -> Option<Result<Resolved, String>> {
        self.by_kind.get(call.kind.as_str())?.resolve(call).await
    }

    /// Performs `call`; a kind nobody performs is reported as invalid.
    pub async fn execute(&self, call: &ActionCall) -> ActionReport {
        match self.by_kind.get(call.kind.as_str()) {
            Some(actuator) => actuator.execute(call).await,
            None => ActionReport::new(ActionStatus::Invalid, format!("no actuator performs `{}` here", call.kind)),
        }
    }
}
