//! What an action asks for: who asks (runbook, incident, step, attempt),
//! what kind of action, on which targets, and the facts the rails need
//! (capacity, population, freshness, mode).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::incident::IncidentId;

/// How an action is carried out: what a runbook asks for all its actions
/// (`guard_rails.mode`), what a run asks for, and what one step gets of
/// the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// For real.
    #[default]
    Live,
    /// A rehearsal (a runbook that says so, `remedyctl run --dry-run`, or a
    /// step whose actuator is not there yet): same rails, nothing executed,
    /// the outcome recorded as "would have".
    DryRun,
    /// A runbook running continuously beside live automation, and the
    /// people who still handle the incident, to prove itself: same rails,
    /// nothing executed, outcomes recorded as "would have" and remembered
    /// apart from live ones, to compare decisions.
    Shadow,
}

impl Mode {
    /// Whether nothing is executed in this mode (dry-run or shadow).
    pub fn is_hypothetical(self) -> bool {
        self != Mode::Live
    }

    /// The snake_case name used in output.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Live => "live",
            Mode::DryRun => "dry_run",
            Mode::Shadow => "shadow",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One object an action touches, resolved to a concrete name.
///
/// Selectors are resolved by the caller before the rails see the action:
/// the rails only ever see named objects, so an empty resolution is an
/// empty set (refused), never "everything the selector might match".
///
/// `annotations` should include those of the object's owning workload and
/// namespace as well as its own (the caller merges them), so that
/// `remedy.dev/hold` on a Deployment covers its pods.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TargetRef {
    /// What it is: `Deployment`, `Pod`, `Node`, `ip`, `url`, `cache`...
    pub kind: String,
    /// Its namespace; `None` for cluster-scoped objects and non-Kubernetes
    /// targets.
    #[serde(default)]
    pub namespace: Option<String>,
    /// Its name (for `ip`: an address or CIDR; for `url`: the URL).
    pub name: String,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its annotations (and its owner's and namespace's; see above).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

impl TargetRef {
    /// A target with no namespace, labels or annotations.
    pub fn new(kind: impl Into<String>, name: impl Into<String>) -> Self {
        TargetRef { kind: kind.into(), name: name.into(), ..TargetRef::default() }
    }

    /// A namespaced target with no labels or annotations.
    pub fn namespaced(kind: impl Into<String>, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        TargetRef { kind: kind.into(), namespace: Some(namespace.into()), name: name.into(), ..TargetRef::default() }
    }

    /// This target with one more label.
    pub fn with_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.labels.insert(key.into(), value.into());
        self
    }

    /// This target with one more annotation.
    pub fn with_annotation(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.annotations.insert(key.into(), value.into());
        self
    }

    /// The identity the rails remember it by: `kind/namespace/name`, or
    /// `kind/name` without a namespace.
    pub fn key(&self) -> String {
        match &self.namespace {
            Some(ns) if !ns.is_empty() => format!("{}/{}/{}", self.kind, ns, self.name),
            _ => format!("{}/{}", self.kind, self.name),
        }
    }
}

impl fmt::Display for TargetRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.key())
    }
}

/// A change of capacity (replicas, HPA bounds) and the bounds it must keep.
///
/// The bounds here come from the runbook or the workload; the policy may add
/// tighter ones. The effective floor is the higher of the two, the effective
/// ceiling the lower.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CapacityChange {
    /// Capacity now.
    pub current: u32,
    /// Capacity asked for.
    pub desired: u32,
    /// Never below this, if set.
    #[serde(default)]
    pub floor: Option<u32>,
    /// Never above this, if set.
    #[serde(default)]
    pub ceiling: Option<u32>,
}

/// The pool an action's targets are drawn from, for percentage budgets:
/// "at most 10% of the pods of `Deployment/shop/api` per hour".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Population {
    /// The pool's identity, e.g. `Deployment/shop/api`. Actions in the same
    /// pool count together.
    pub pool: String,
    /// Its size now.
    pub size: u64,
}

/// One action, as the rails see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionRequest {
    /// The runbook that asks (`P0-001`), or `manual` for a person's run.
    pub runbook_id: String,
    /// The incident it acts for.
    pub incident_id: IncidentId,
    /// The step within the runbook.
    pub step_id: String,
    /// Which attempt of the step (1 for the first).
    pub attempt: u32,
    /// The action kind: `scale`, `delete_pods`, `block_ip`, `failover`,
    /// `flush_cache`, `http`, `agent`, `notify`...
    pub action_kind: String,
    /// The objects it touches. Never empty: an empty set is refused.
    pub targets: Vec<TargetRef>,
    /// Whether it destroys or removes something (deletes pods, flushes a
    /// cache, fails over, scales down): such actions need a fresh trigger.
    #[serde(default)]
    pub destructive: bool,
    /// Whether the runbook marks it as needing a person's approval.
    #[serde(default)]
    pub requires_approval: bool,
    /// For capacity changes: the change and its bounds.
    #[serde(default)]
    pub capacity: Option<CapacityChange>,
    /// The pool the targets come from (the pods of a workload, the nodes of
    /// the cluster) and its size now, for percentage budgets.
    #[serde(default)]
    pub population: Option<Population>,
    /// For destructive actions: whether the trigger still held when the
    /// caller re-checked it just before asking. `None`: not re-checked.
    #[serde(default)]
    pub trigger_still_holds: Option<bool>,
    /// Live, dry-run or shadow.
    #[serde(default)]
    pub mode: Mode,
    /// What the actuator's look at the world found that makes the action
    /// unsafe unless a person accepts it, in plain words (a failover whose
    /// old primary nothing showed down). Such an action always needs a
    /// person's approval, and the request states this risk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub risk: Option<String>,
}

impl ActionRequest {
    /// The distinct target keys, sorted.
    pub fn target_keys(&self) -> BTreeSet<String> {
        self.targets.iter().map(TargetRef::key).collect()
    }

    /// How many distinct targets it touches (what target and percentage
    /// budgets count).
    pub fn units(&self) -> u64 {
        u64::try_from(self.target_keys().len()).unwrap_or(u64::MAX)
    }

    /// The key its approval is filed under.
    pub fn approval_key(&self) -> ApprovalKey {
        ApprovalKey { incident_id: self.incident_id, step_id: self.step_id.clone(), attempt: self.attempt }
    }

    /// A short description for timelines: `scale Deployment/shop/api`, or
    /// `delete_pods 3 targets (Pod/shop/a, ...)`.
    pub fn describe(&self) -> String {
        format!("{} {}", self.action_kind, self.describe_targets())
    }

    /// The targets in a few words: one key, or a count and the first three.
    pub fn describe_targets(&self) -> String {
        let keys = self.target_keys();
        match keys.len() {
            0 => "(no targets)".to_owned(),
            1 => keys.into_iter().next().unwrap_or_default(),
            n => {
                let first: Vec<&str> = keys.iter().take(3).map(String::as_str).collect();
                let more = if n > 3 { ", ..." } else { "" };
                format!("{n} targets ({}{more})", first.join(", "))
            }
        }
    }
}

/// Which execution an approval is for: one attempt of one step of one
/// incident. A retry is a new attempt and needs its own approval.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ApprovalKey {
    /// The incident.
    pub incident_id: IncidentId,
    /// The step.
    pub step_id: String,
    /// The attempt.
    pub attempt: u32,
}

impl fmt::Display for ApprovalKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}#{}", self.incident_id, self.step_id, self.attempt)
    }
}
