//! The rails' configuration: what is protected, how often and how much
//! automation may act, when it must stop and when it must ask.
//!
//! Read from YAML with unknown fields refused and durations written as
//! `30s`, `5m`, `1h`; [`GuardPolicy::validate`] names the field that is
//! wrong. Every field has a default, so an empty document is the default
//! policy.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::infra::Infrastructure;
use super::net::IpNet;
use super::request::TargetRef;
use crate::config::{ConfigError, opt_duration};

/// The annotation that puts any object out of Remedy's reach.
pub const HOLD_ANNOTATION: &str = "remedy.dev/hold";

/// Everything the rails are configured with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GuardPolicy {
    /// Minimum time between two actions of the same kind on the same target,
    /// whichever runbook asks (default 5m).
    #[serde(with = "crate::config::duration")]
    pub cooldown: Duration,
    /// After this many actions by one runbook on one target within the
    /// window, escalate to a person instead of acting again.
    pub repeat: RepeatPolicy,
    /// Per action kind: cooldown and repeat cap overrides.
    pub kinds: BTreeMap<String, RailOverrides>,
    /// Per runbook id: cooldown and repeat cap overrides (they win over the
    /// per-kind ones).
    pub runbooks: BTreeMap<String, RailOverrides>,
    /// Action kinds that only look or tell people (default: the evidence
    /// kinds and `notify`): no cooldown, no repeat cap, and budgets neither
    /// count nor limit them, since budgets exist to limit change and a
    /// verification that probes every 10 seconds must not spend them. Every
    /// other rail still applies.
    pub free_kinds: BTreeSet<String>,
    /// Action kinds that still pass during a global pause or with a breaker
    /// open (default `notify`: telling people must work precisely when
    /// automation has stopped). Every other rail still applies to them.
    pub pause_exempt_kinds: BTreeSet<String>,
    /// Budgets per window. Every budget that applies must have room.
    pub budgets: Vec<Budget>,
    /// When automation stops by itself.
    pub breaker: BreakerPolicy,
    /// Capacity floors and ceilings.
    pub capacity: CapacityPolicy,
    /// What automation never touches.
    pub protected: ProtectedPolicy,
    /// Approval gates.
    pub approval: ApprovalPolicy,
}

impl Default for GuardPolicy {
    fn default() -> Self {
        GuardPolicy {
            cooldown: Duration::from_secs(5 * 60),
            repeat: RepeatPolicy::default(),
            kinds: BTreeMap::new(),
            runbooks: BTreeMap::new(),
            free_kinds: [
                "notify",
                "probe_http",
                "agent_snapshot",
                "pg_select1",
                "redis_ping",
                "list_pods",
                "list_services",
            ]
            .iter()
            .map(|k| (*k).to_owned())
            .collect(),
            pause_exempt_kinds: BTreeSet::from(["notify".to_owned()]),
            budgets: vec![
                Budget {
                    scope: BudgetScope::Global,
                    action_kind: None,
                    window: Duration::from_secs(3600),
                    max_actions: Some(60),
                    max_targets: None,
                    max_percent: None,
                },
                Budget {
                    scope: BudgetScope::EachRunbook,
                    action_kind: None,
                    window: Duration::from_secs(3600),
                    max_actions: Some(20),
                    max_targets: None,
                    max_percent: None,
                },
            ],
            breaker: BreakerPolicy::default(),
            capacity: CapacityPolicy::default(),
            protected: ProtectedPolicy::default(),
            approval: ApprovalPolicy::default(),
        }
    }
}

/// The cap on repeated actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RepeatPolicy {
    /// How many actions one runbook may take on one target within the window
    /// before a person is called instead (0: no cap). Default 3.
    pub max: u32,
    /// The window (default 1h).
    #[serde(with = "crate::config::duration")]
    pub window: Duration,
}

impl Default for RepeatPolicy {
    fn default() -> Self {
        RepeatPolicy { max: 3, window: Duration::from_secs(3600) }
    }
}

/// Settings for one action kind or one runbook. Unset fields inherit;
/// the protected lists and approval kinds add to the global ones (they can
/// only tighten).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RailOverrides {
    /// Cooldown (`0s`: none).
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<Duration>,
    /// Repeat cap (0: none). `1` means "once automatically, then people"
    /// (a database failover).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repeat_max: Option<u32>,
    /// Repeat window.
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub repeat_window: Option<Duration>,
    /// More protected namespaces.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub protected_namespaces: BTreeSet<String>,
    /// More protected labels.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub protected_labels: Vec<LabelMatch>,
    /// More action kinds that need approval.
    #[serde(skip_serializing_if = "BTreeSet::is_empty")]
    pub approval_kinds: BTreeSet<String>,
    /// How long an approval request waits for a person.
    #[serde(with = "opt_duration", skip_serializing_if = "Option::is_none")]
    pub approval_wait: Option<Duration>,
}

/// Whom a budget counts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum BudgetScope {
    /// All runbooks together (`global`).
    Global,
    /// Each runbook on its own (`each_runbook`): every runbook gets this
    /// budget, counted separately.
    EachRunbook,
    /// One runbook (`runbook/P0-001`).
    Runbook(String),
}

impl FromStr for BudgetScope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "global" => Ok(BudgetScope::Global),
            "each_runbook" => Ok(BudgetScope::EachRunbook),
            _ => match s.strip_prefix("runbook/") {
                Some(id) if !id.trim().is_empty() => Ok(BudgetScope::Runbook(id.to_owned())),
                _ => Err(format!("unknown budget scope `{s}` (expected global, each_runbook or runbook/<id>)")),
            },
        }
    }
}

impl fmt::Display for BudgetScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BudgetScope::Global => f.write_str("global"),
            BudgetScope::EachRunbook => f.write_str("each_runbook"),
            BudgetScope::Runbook(id) => write!(f, "runbook/{id}"),
        }
    }
}

impl TryFrom<String> for BudgetScope {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<BudgetScope> for String {
    fn from(scope: BudgetScope) -> Self {
        scope.to_string()
    }
}

/// How much automation may do within a window. Every limit that is set
/// must hold; a budget with no limit set is refused by validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Whom it counts.
    pub scope: BudgetScope,
    /// Only actions of this kind (`None`: every kind).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_kind: Option<String>,
    /// The sliding window.
    #[serde(with = "crate::config::duration")]
    pub window: Duration,
    /// At most this many actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_actions: Option<u64>,
    /// At most this many targets touched (a deletion of 3 pods counts 3).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_targets: Option<u64>,
    /// At most this percentage of a pool (the pods of a workload): targets
    /// touched in that pool within the window, this action's included, must
    /// not exceed `max_percent`% of its size, rounded down. An action that
    /// does not say its pool is refused by such a budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_percent: Option<u8>,
}

impl Budget {
    /// Whether the budget counts actions of `runbook_id` and `action_kind`.
    pub fn applies_to(&self, runbook_id: &str, action_kind: &str) -> bool {
        let scope = match &self.scope {
            BudgetScope::Global | BudgetScope::EachRunbook => true,
            BudgetScope::Runbook(id) => id == runbook_id,
        };
        scope && self.action_kind.as_deref().is_none_or(|k| k == action_kind)
    }
}

/// When the breaker opens by itself. Once open, it stays open until a
/// person resets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerPolicy {
    /// Open the global breaker after this many failed actions, all runbooks
    /// together, within the window (`null`: never). Default 10.
    pub global_failures: Option<u32>,
    /// Open a runbook's breaker after this many of its actions failed within
    /// the window (`null`: never). Default 3.
    pub runbook_failures: Option<u32>,
    /// The window (default 30m).
    #[serde(with = "crate::config::duration")]
    pub window: Duration,
    /// Open the breaker of a budget's scope when the budget is exhausted
    /// (default true): automation that has spent its budget stops and
    /// tells people, rather than retrying against the budget.
    pub on_budget_exhausted: bool,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        BreakerPolicy {
            global_failures: Some(10),
            runbook_failures: Some(3),
            window: Duration::from_secs(30 * 60),
            on_budget_exhausted: true,
        }
    }
}

/// Capacity floors and ceilings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CapacityPolicy {
    /// Action kinds that change capacity: such a request without its
    /// capacity change is refused, so no scale goes unchecked (default
    /// `scale`).
    pub kinds: BTreeSet<String>,
    /// Bounds per workload, on top of those the request carries.
    pub bounds: Vec<CapacityBound>,
}

impl Default for CapacityPolicy {
    fn default() -> Self {
        CapacityPolicy { kinds: BTreeSet::from(["scale".to_owned()]), bounds: Vec::new() }
    }
}

/// Bounds for the workloads a rule matches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacityBound {
    /// Target kind (`None`: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Namespace (`None`: any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Name.
    pub name: String,
    /// Never below.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor: Option<u32>,
    /// Never above.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ceiling: Option<u32>,
}

impl CapacityBound {
    /// Whether the rule is about `target`.
    pub fn matches(&self, target: &TargetRef) -> bool {
        self.name == target.name
            && self.kind.as_ref().is_none_or(|k| *k == target.kind)
            && self.namespace.as_ref().is_none_or(|ns| Some(ns) == target.namespace.as_ref())
    }
}

/// What automation never touches.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProtectedPolicy {
    /// Namespaces (default `kube-system`, `kube-public`, `kube-node-lease`).
    pub namespaces: BTreeSet<String>,
    /// Labels: `key` (any value) or `key=value`.
    pub labels: Vec<LabelMatch>,
    /// The hold annotation; present with any value, it holds the object
    /// (default `remedy.dev/hold`).
    pub hold_annotation: String,
    /// Action kinds whose targets are IP addresses or networks to block
    /// (default `block_ip`).
    pub address_kinds: BTreeSet<String>,
    /// Addresses never to block: a block overlapping any of them is refused.
    /// Defaults: loopback and link-local (the cloud metadata service); add
    /// the node, pod and service ranges and your own addresses.
    pub never_block: Vec<IpNet>,
    /// What the coordinator knows of its own infrastructure now (nodes,
    /// ranges, API server, itself). Not configuration: the coordinator
    /// fills it from what it observes, and a ban overlapping it is refused.
    #[serde(skip)]
    pub infrastructure: Infrastructure,
}

impl Default for ProtectedPolicy {
    fn default() -> Self {
        let never_block = ["127.0.0.0/8", "::1/128", "169.254.0.0/16", "fe80::/10"]
            .iter()
            .filter_map(|s| s.parse::<IpNet>().ok())
            .collect();
        ProtectedPolicy {
            namespaces: ["kube-system", "kube-public", "kube-node-lease"].iter().map(|s| (*s).to_owned()).collect(),
            labels: Vec::new(),
            hold_annotation: HOLD_ANNOTATION.to_owned(),
            address_kinds: BTreeSet::from(["block_ip".to_owned()]),
            never_block,
            infrastructure: Infrastructure::default(),
        }
    }
}

/// A protected label: `key` (any value) or `key=value`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LabelMatch {
    /// The label key.
    pub key: String,
    /// The value it must have (`None`: any).
    pub value: Option<String>,
}

impl LabelMatch {
    /// Whether `labels` carry this label.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match (labels.get(&self.key), &self.value) {
            (Some(_), None) => true,
            (Some(v), Some(want)) => v == want,
            (None, _) => false,
        }
    }
}

impl FromStr for LabelMatch {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (key, value) = match s.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim().to_owned())),
            None => (s.trim(), None),
        };
        if key.is_empty() {
            return Err(format!("`{s}` is not a label (expected key or key=value)"));
        }
        Ok(LabelMatch { key: key.to_owned(), value })
    }
}

impl fmt::Display for LabelMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}={v}", self.key),
            None => f.write_str(&self.key),
        }
    }
}

impl TryFrom<String> for LabelMatch {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<LabelMatch> for String {
    fn from(m: LabelMatch) -> Self {
        m.to_string()
    }
}

/// Approval gates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApprovalPolicy {
    /// How long a request waits for a person before it expires (default 15m).
    #[serde(with = "crate::config::duration")]
    pub wait: Duration,
    /// How long a granted approval stays usable (default 10m): an approval
    /// given for yesterday's situation does not authorise today's action.
    #[serde(with = "crate::config::duration")]
    pub valid_for: Duration,
    /// Action kinds that always need approval (default `failover` and
    /// `pg_failover`).
    pub kinds: BTreeSet<String>,
    /// Whether scaling to zero needs approval (default true).
    pub scale_to_zero: bool,
    /// A block of an IPv4 network wider than this prefix needs approval
    /// (default 24: blocking a /16 asks a person).
    pub wide_block_v4: u8,
    /// The same for IPv6 (default 64).
    pub wide_block_v6: u8,
}

impl Default for ApprovalPolicy {
    fn default() -> Self {
        ApprovalPolicy {
            wait: Duration::from_secs(15 * 60),
            valid_for: Duration::from_secs(10 * 60),
            // `pg_failover` is the database failover runbooks name.
            kinds: BTreeSet::from(["failover".to_owned(), "pg_failover".to_owned()]),
            scale_to_zero: true,
            wide_block_v4: 24,
            wide_block_v6: 64,
        }
    }
}

impl GuardPolicy {
    /// The cooldown for `action_kind` actions by `runbook_id`.
    pub fn cooldown_for(&self, runbook_id: &str, action_kind: &str) -> Duration {
        if self.is_free(action_kind) {
            return Duration::ZERO;
        }
        self.runbooks
            .get(runbook_id)
            .and_then(|o| o.cooldown)
            .or_else(|| self.kinds.get(action_kind).and_then(|o| o.cooldown))
            .unwrap_or(self.cooldown)
    }

    /// The repeat cap (0: none) and its window for `action_kind` actions by
    /// `runbook_id`.
    pub fn repeat_for(&self, runbook_id: &str, action_kind: &str) -> RepeatPolicy {
        if self.is_free(action_kind) {
            return RepeatPolicy { max: 0, window: self.repeat.window };
        }
        let by_runbook = self.runbooks.get(runbook_id);
        let by_kind = self.kinds.get(action_kind);
        let max = by_runbook
            .and_then(|o| o.repeat_max)
            .or_else(|| by_kind.and_then(|o| o.repeat_max))
            .unwrap_or(self.repeat.max);
        let window = by_runbook
            .and_then(|o| o.repeat_window)
            .or_else(|| by_kind.and_then(|o| o.repeat_window))
            .unwrap_or(self.repeat.window);
        RepeatPolicy { max, window }
    }

    /// Whether `action_kind` only looks or tells people (see
    /// [`GuardPolicy::free_kinds`]).
    pub fn is_free(&self, action_kind: &str) -> bool {
        self.free_kinds.contains(action_kind)
    }

    /// The overrides that apply to `action_kind` actions by `runbook_id`:
    /// the runbook's, then the kind's.
    fn overrides<'a>(&'a self, runbook_id: &str, action_kind: &str) -> impl Iterator<Item = &'a RailOverrides> {
        self.runbooks.get(runbook_id).into_iter().chain(self.kinds.get(action_kind))
    }

    /// Whether `namespace` is protected for `action_kind` actions by
    /// `runbook_id`.
    pub fn is_protected_namespace(&self, runbook_id: &str, action_kind: &str, namespace: &str) -> bool {
        self.protected.namespaces.contains(namespace)
            || self.overrides(runbook_id, action_kind).any(|o| o.protected_namespaces.contains(namespace))
    }

    /// The first protected label among `labels` for `action_kind` actions by
    /// `runbook_id`.
    pub fn protected_label(
        &self,
        runbook_id: &str,
        action_kind: &str,
        labels: &BTreeMap<String, String>,
    ) -> Option<&LabelMatch> {
        let extra = self.overrides(runbook_id, action_kind).flat_map(|o| o.protected_labels.iter());
        self.protected.labels.iter().chain(extra).find(|m| m.matches(labels))
    }

    /// Whether `action_kind` actions by `runbook_id` always need approval.
    pub fn kind_needs_approval(&self, runbook_id: &str, action_kind: &str) -> bool {
        self.approval.kinds.contains(action_kind)
            || self.overrides(runbook_id, action_kind).any(|o| o.approval_kinds.contains(action_kind))
    }

    /// How long an approval request by `runbook_id` for `action_kind` waits.
    pub fn approval_wait_for(&self, runbook_id: &str, action_kind: &str) -> Duration {
        self.overrides(runbook_id, action_kind).find_map(|o| o.approval_wait).unwrap_or(self.approval.wait)
    }

    /// The longest time any rail looks back: state older than this can be
    /// forgotten.
    pub fn horizon(&self) -> Duration {
        let overrides = self.kinds.values().chain(self.runbooks.values());
        let mut longest = self.cooldown.max(self.repeat.window).max(self.breaker.window);
        for o in overrides {
            longest = longest.max(o.cooldown.unwrap_or_default()).max(o.repeat_window.unwrap_or_default());
        }
        for b in &self.budgets {
            longest = longest.max(b.window);
        }
        longest
    }

    /// Checks what serde cannot: windows, limits, percentages, names.
    /// `source` names the file in the error.
    pub fn validate(&self, source: &str) -> Result<(), ConfigError> {
        let err = |field: String, message: &str| Err(ConfigError::new(source, field, message));
        if self.repeat.window.is_zero() && self.repeat.max > 0 {
            return err("repeat.window".into(), "must be longer than 0s when repeat.max is set");
        }
        for (i, b) in self.budgets.iter().enumerate() {
            if b.window.is_zero() {
                return err(format!("budgets[{i}].window"), "must be longer than 0s");
            }
            if b.max_actions.is_none() && b.max_targets.is_none() && b.max_percent.is_none() {
                return err(format!("budgets[{i}]"), "sets no limit (max_actions, max_targets or max_percent)");
            }
            if b.max_percent.is_some_and(|p| p > 100) {
                return err(format!("budgets[{i}].max_percent"), "must be between 0 and 100");
            }
            if b.action_kind.as_deref().is_some_and(|k| k.trim().is_empty()) {
                return err(format!("budgets[{i}].action_kind"), "must not be empty (omit it for every kind)");
            }
        }
        for (name, value) in [
            ("breaker.global_failures", self.breaker.global_failures),
            ("breaker.runbook_failures", self.breaker.runbook_failures),
        ] {
            if value == Some(0) {
                return err(name.into(), "must be at least 1 (null disables it)");
            }
        }
        if self.breaker.window.is_zero() {
            return err("breaker.window".into(), "must be longer than 0s");
        }
        for (i, b) in self.capacity.bounds.iter().enumerate() {
            if b.name.trim().is_empty() {
                return err(format!("capacity.bounds[{i}].name"), "must not be empty");
            }
            if let (Some(floor), Some(ceiling)) = (b.floor, b.ceiling)
                && floor > ceiling
            {
                return err(format!("capacity.bounds[{i}]"), "floor is above ceiling");
            }
        }
        if self.protected.hold_annotation.trim().is_empty() {
            return err("protected.hold_annotation".into(), "must not be empty");
        }
        if self.approval.wait.is_zero() {
            return err("approval.wait".into(), "must be longer than 0s");
        }
        if self.approval.valid_for.is_zero() {
            return err("approval.valid_for".into(), "must be longer than 0s");
        }
        if self.approval.wide_block_v4 > 32 {
            return err("approval.wide_block_v4".into(), "must be between 0 and 32");
        }
        if self.approval.wide_block_v6 > 128 {
            return err("approval.wide_block_v6".into(), "must be between 0 and 128");
        }
        Ok(())
    }
}
