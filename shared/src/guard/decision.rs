//! What the rails decide, why, and how it reads on a timeline.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::net::IpNet;
use super::request::{ActionRequest, ApprovalKey, Mode};
use crate::time::Timestamp;

/// Whose breaker, whose budget: everything, or one runbook.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Scope {
    /// All automation (`global`).
    Global,
    /// One runbook (`runbook/P0-001`).
    Runbook(String),
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "global" {
            return Ok(Scope::Global);
        }
        match s.strip_prefix("runbook/") {
            Some(id) if !id.trim().is_empty() => Ok(Scope::Runbook(id.to_owned())),
            _ => Err(format!("unknown scope `{s}` (expected global or runbook/<id>)")),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Global => f.write_str("global"),
            Scope::Runbook(id) => write!(f, "runbook/{id}"),
        }
    }
}

impl TryFrom<String> for Scope {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<Scope> for String {
    fn from(scope: Scope) -> Self {
        scope.to_string()
    }
}

/// What a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "unit", rename_all = "snake_case")]
pub enum BudgetUnit {
    /// Actions.
    Actions,
    /// Targets touched.
    Targets,
    /// Targets touched in one pool, as a percentage of its size.
    Percent {
        /// The percentage allowed.
        percent: u8,
        /// The pool's size.
        population: u64,
    },
}

/// The outcome of the rails for one action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "decision", rename_all = "snake_case")]
pub enum Decision {
    /// Live: go ahead.
    Allow,
    /// Dry-run or shadow: every rail passed; the action would have run.
    WouldAllow,
    /// Live: every rail passed but a person must approve first. Ask, and
    /// evaluate again once they answer (or when the request expires).
    NeedsApproval {
        /// When the request expires unanswered.
        expires_at: Timestamp,
        /// Why approval is needed.
        reason: ApprovalReason,
    },
    /// Dry-run or shadow: every rail passed; a person would have been asked
    /// to approve. Nobody is asked.
    WouldNeedApproval {
        /// Why approval would have been needed.
        reason: ApprovalReason,
    },
    /// Refused by a rail. In dry-run and shadow the same refusals apply.
    Refuse(Refusal),
    /// Not done again: hand it to a person.
    Escalate(Escalation),
}

impl Decision {
    /// Whether the action may run (or, in dry-run/shadow, would have run).
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow | Decision::WouldAllow)
    }

    /// The snake_case outcome for timelines and metrics labels.
    pub fn outcome(&self) -> &'static str {
        match self {
            Decision::Allow => "allowed",
            Decision::WouldAllow => "would_allow",
            Decision::NeedsApproval { .. } => "needs_approval",
            Decision::WouldNeedApproval { .. } => "would_need_approval",
            Decision::Refuse(_) => "refused",
            Decision::Escalate(_) => "escalated",
        }
    }

    /// The rail that decided, when one stopped or held the action.
    pub fn rail(&self) -> Option<&'static str> {
        match self {
            Decision::Allow | Decision::WouldAllow => None,
            Decision::NeedsApproval { .. } | Decision::WouldNeedApproval { .. } => Some("approval"),
            Decision::Refuse(r) => Some(r.rail()),
            Decision::Escalate(e) => Some(e.rail()),
        }
    }

    /// The decision as a timeline entry's text and details.
    pub fn note(&self, request: &ActionRequest) -> DecisionNote {
        let action = request.describe();
        let prefix = match request.mode {
            Mode::Live => String::new(),
            mode => format!("[{mode}] "),
        };
        let message = match self {
            Decision::Allow => format!("allowed: {action}"),
            Decision::WouldAllow => format!("{prefix}would have run: {action}"),
            Decision::NeedsApproval { expires_at, reason } => {
                format!("awaiting approval until {}: {action} ({reason})", show(*expires_at))
            }
            Decision::WouldNeedApproval { reason } => {
                format!("{prefix}would have asked for approval: {action} ({reason})")
            }
            Decision::Refuse(r) => format!("{prefix}refused: {action}: {r}"),
            Decision::Escalate(e) => format!("{prefix}escalated to a person instead of {action}: {e}"),
        };
        let mut details = BTreeMap::from([
            ("runbook".to_owned(), request.runbook_id.clone()),
            ("incident".to_owned(), request.incident_id.to_string()),
            ("step".to_owned(), request.step_id.clone()),
            ("attempt".to_owned(), request.attempt.to_string()),
            ("action".to_owned(), request.action_kind.clone()),
            ("targets".to_owned(), request.target_keys().into_iter().collect::<Vec<_>>().join(",")),
            ("mode".to_owned(), request.mode.to_string()),
            ("outcome".to_owned(), self.outcome().to_owned()),
        ]);
        if let Some(rail) = self.rail() {
            details.insert("rail".to_owned(), rail.to_owned());
        }
        if let Decision::NeedsApproval { expires_at, .. } = self {
            details.insert("approval_expires_at".to_owned(), show(*expires_at).to_string());
        }
        DecisionNote { mode: request.mode, outcome: self.outcome(), rail: self.rail(), message, details }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Decision::Allow => f.write_str("allowed"),
            Decision::WouldAllow => f.write_str("would have been allowed"),
            Decision::NeedsApproval { expires_at, reason } => {
                write!(f, "needs approval by {} ({reason})", show(*expires_at))
            }
            Decision::WouldNeedApproval { reason } => write!(f, "would have needed approval ({reason})"),
            Decision::Refuse(r) => write!(f, "refused: {r}"),
            Decision::Escalate(e) => write!(f, "escalated: {e}"),
        }
    }
}

/// A decision ready for the timeline: the engine wraps it in a
/// `TimelineEntry` at `now`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DecisionNote {
    /// The request's mode.
    pub mode: Mode,
    /// [`Decision::outcome`].
    pub outcome: &'static str,
    /// [`Decision::rail`].
    pub rail: Option<&'static str>,
    /// One line for humans, naming the action and the reason.
    pub message: String,
    /// Structured details: runbook, incident, step, attempt, action,
    /// targets, mode, outcome, rail.
    pub details: BTreeMap<String, String>,
}

/// Why an action needs a person's approval.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "why", rename_all = "snake_case")]
pub enum ApprovalReason {
    /// The runbook marks the step so.
    Runbook,
    /// The policy says every action of this kind needs approval.
    ActionKind {
        /// The kind.
        kind: String,
    },
    /// It scales a workload to zero.
    ScaleToZero,
    /// It blocks a wide network.
    WideBlock {
        /// The network.
        network: IpNet,
    },
    /// What the action's own look at the world found makes it unsafe
    /// without a person: approving accepts the risk, in these words
    /// (`ActionRequest::risk`).
    Risk {
        /// The risk, in plain words.
        risk: String,
    },
}

impl fmt::Display for ApprovalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ApprovalReason::Runbook => f.write_str("the runbook requires approval for this step"),
            ApprovalReason::ActionKind { kind } => write!(f, "`{kind}` actions always require approval"),
            ApprovalReason::ScaleToZero => f.write_str("scaling to zero requires approval"),
            ApprovalReason::WideBlock { network } => write!(f, "blocking the wide range {network} requires approval"),
            ApprovalReason::Risk { risk } => write!(f, "approving accepts this risk: {risk}"),
        }
    }
}

/// Why the rails hand an action to a person instead of taking it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "rail", rename_all = "snake_case")]
pub enum Escalation {
    /// The runbook already acted on this target `count` times within the
    /// window: acting again would hide the real fault.
    RepeatCap {
        /// The target.
        target: String,
        /// Actions already taken.
        count: u32,
        /// The cap.
        max: u32,
        /// The window.
        #[serde(with = "crate::config::duration")]
        window: Duration,
    },
}

impl Escalation {
    /// The rail's snake_case name.
    pub fn rail(&self) -> &'static str {
        match self {
            Escalation::RepeatCap { .. } => "repeat_cap",
        }
    }
}

impl fmt::Display for Escalation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Escalation::RepeatCap { target, count, max, window } => write!(
                f,
                "{target} was already acted on {count} times in the last {} (cap {max}); a person should look at the underlying fault",
                humantime::format_duration(*window)
            ),
        }
    }
}

/// Why a rail refused an action: one variant per rail, each naming its
/// reason in its message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "rail", rename_all = "snake_case")]
pub enum Refusal {
    /// Automation is paused by a person.
    #[error("automation is paused (by {by} at {}: {reason})", show(*since))]
    GlobalPause {
        /// Who paused.
        by: String,
        /// When.
        since: Timestamp,
        /// Why.
        reason: String,
    },
    /// A breaker is open: automation in its scope stopped until a person
    /// resets it.
    #[error("the {scope} breaker is open since {} ({reason}); a person must reset it", show(*since))]
    BreakerOpen {
        /// Whose breaker.
        scope: Scope,
        /// Opened at.
        since: Timestamp,
        /// Why it opened.
        reason: String,
    },
    /// The request itself is malformed (a blank runbook, step, kind or
    /// target name).
    #[error("invalid action request: {reason}")]
    InvalidRequest {
        /// What is wrong.
        reason: String,
    },
    /// No targets: an empty set is an error, never "all".
    #[error("the target set is empty; an empty set never means \"all\"")]
    EmptyTargetSet,
    /// A target is in a protected namespace.
    #[error("{target} is in the protected namespace `{namespace}`")]
    ProtectedNamespace {
        /// The target.
        target: String,
        /// The namespace.
        namespace: String,
    },
    /// A target carries a protected label.
    #[error("{target} carries the protected label `{label}`")]
    ProtectedLabel {
        /// The target.
        target: String,
        /// The label (`key` or `key=value`).
        label: String,
    },
    /// A target (or its owner or namespace) is on hold.
    #[error("{target} is on hold (`{annotation}: {value}`); remove the annotation to let Remedy act")]
    HoldAnnotation {
        /// The target.
        target: String,
        /// The annotation.
        annotation: String,
        /// Its value.
        value: String,
    },
    /// A block would cover an address that must never be blocked.
    #[error("blocking {target} would cover the allow-listed range {protected}")]
    ProtectedAddress {
        /// The target.
        target: String,
        /// The allow-listed range it overlaps.
        protected: IpNet,
    },
    /// A block would cover an address of Remedy's own infrastructure: a
    /// node, the pod or service ranges, the API server, the coordinator.
    #[error("blocking {target} would cover {protected}, {owner}: Remedy never bans its own infrastructure")]
    OwnInfrastructure {
        /// The target.
        target: String,
        /// The infrastructure range it overlaps.
        protected: IpNet,
        /// Whose range it is, and how the coordinator knows.
        owner: String,
    },
    /// A block's target is not an address or network.
    #[error("{target} is not an IP address or network: {reason}")]
    InvalidAddress {
        /// The target.
        target: String,
        /// The parse error.
        reason: String,
    },
    /// A capacity action without its capacity change: its floor cannot be
    /// checked.
    #[error(
        "`{action_kind}` changes capacity but the request carries no current/desired capacity; floors cannot be checked"
    )]
    MissingCapacity {
        /// The action kind.
        action_kind: String,
    },
    /// The bounds contradict each other.
    #[error("capacity floor {floor} is above ceiling {ceiling}")]
    InvalidCapacity {
        /// The effective floor.
        floor: u32,
        /// The effective ceiling.
        ceiling: u32,
    },
    /// The change would take capacity below its floor.
    #[error("{target}: {desired} is below the floor of {floor} (now {current})")]
    BelowFloor {
        /// The target.
        target: String,
        /// The floor.
        floor: u32,
        /// Asked for.
        desired: u32,
        /// Now.
        current: u32,
    },
    /// The change would take capacity above its ceiling.
    #[error("{target}: {desired} is above the ceiling of {ceiling} (now {current})")]
    AboveCeiling {
        /// The target.
        target: String,
        /// The ceiling.
        ceiling: u32,
        /// Asked for.
        desired: u32,
        /// Now.
        current: u32,
    },
    /// A destructive action whose trigger was not re-checked.
    #[error("destructive action without a fresh re-check of its trigger")]
    FreshnessUnknown,
    /// The trigger no longer holds: the destructive action is not needed.
    #[error("the trigger no longer holds; destructive action not taken")]
    StaleTrigger,
    /// The same kind of action hit this target too recently.
    #[error("{target} had a `{action_kind}` at {}; cooling down until {}", show(*last), show(*until))]
    Cooldown {
        /// The target.
        target: String,
        /// The action kind.
        action_kind: String,
        /// The previous action.
        last: Timestamp,
        /// When the cooldown ends.
        until: Timestamp,
    },
    /// A budget has no room for this action.
    #[error("{} budget{} exhausted: {}", scope, kind_suffix(action_kind.as_deref()), budget_text(*unit, *used, *requested, *limit, *window))]
    BudgetExhausted {
        /// Whose budget.
        scope: Scope,
        /// The kind it counts (`None`: every kind).
        action_kind: Option<String>,
        /// What it counts.
        unit: BudgetUnit,
        /// Already used within the window.
        used: u64,
        /// What this action would add.
        requested: u64,
        /// The limit, in the unit (for a percentage: the targets it allows).
        limit: u64,
        /// The window.
        #[serde(with = "crate::config::duration")]
        window: Duration,
    },
    /// A percentage budget applies but the request does not say its pool.
    #[error("{scope} budget{} is a percentage of a pool, and the request names no pool", kind_suffix(action_kind.as_deref()))]
    PopulationUnknown {
        /// Whose budget.
        scope: Scope,
        /// The kind it counts.
        action_kind: Option<String>,
    },
    /// The approval request expired unanswered, or the approval given
    /// expired before use.
    #[error("approval expired at {}", show(*expired_at))]
    ApprovalExpired {
        /// When.
        expired_at: Timestamp,
    },
    /// A person denied the approval.
    #[error("approval denied by {by} at {}: {reason}", show(*at))]
    ApprovalDenied {
        /// Who.
        by: String,
        /// When.
        at: Timestamp,
        /// Why.
        reason: String,
    },
}

/// A timestamp for messages: RFC 3339 within years 1970..=9999, raw
/// milliseconds outside (where RFC 3339 formatting fails).
pub(crate) fn show(t: Timestamp) -> impl fmt::Display {
    struct Show(Timestamp);
    impl fmt::Display for Show {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            // 9999-12-31T23:59:59.999Z
            const LAST: i64 = 253_402_300_799_999;
            match self.0.as_millis() {
                ms @ 0..=LAST => write!(f, "{}", Timestamp::from_millis(ms)),
                ms => write!(f, "{ms}ms"),
            }
        }
    }
    Show(t)
}

fn kind_suffix(kind: Option<&str>) -> String {
    kind.map(|k| format!(" for `{k}`")).unwrap_or_default()
}

fn budget_text(unit: BudgetUnit, used: u64, requested: u64, limit: u64, window: Duration) -> String {
    let window = humantime::format_duration(window);
    match unit {
        BudgetUnit::Actions => format!("{used} of {limit} actions used in the last {window}"),
        BudgetUnit::Targets => {
            format!("{used} of {limit} targets used in the last {window}, this action needs {requested}")
        }
        BudgetUnit::Percent { percent, population } => format!(
            "{used} of {limit} targets ({percent}% of {population}) used in the last {window}, this action needs {requested}"
        ),
    }
}

impl Refusal {
    /// The rail's snake_case name, for timelines and metrics labels.
    pub fn rail(&self) -> &'static str {
        match self {
            Refusal::GlobalPause { .. } => "global_pause",
            Refusal::BreakerOpen { .. } => "breaker_open",
            Refusal::InvalidRequest { .. } => "invalid_request",
            Refusal::EmptyTargetSet => "empty_target_set",
            Refusal::ProtectedNamespace { .. } => "protected_namespace",
            Refusal::ProtectedLabel { .. } => "protected_label",
            Refusal::HoldAnnotation { .. } => "hold_annotation",
            Refusal::ProtectedAddress { .. } => "protected_address",
            Refusal::OwnInfrastructure { .. } => "own_infrastructure",
            Refusal::InvalidAddress { .. } => "invalid_address",
            Refusal::MissingCapacity { .. } => "missing_capacity",
            Refusal::InvalidCapacity { .. } => "invalid_capacity",
            Refusal::BelowFloor { .. } => "below_floor",
            Refusal::AboveCeiling { .. } => "above_ceiling",
            Refusal::FreshnessUnknown => "freshness_unknown",
            Refusal::StaleTrigger => "stale_trigger",
            Refusal::Cooldown { .. } => "cooldown",
            Refusal::BudgetExhausted { .. } => "budget_exhausted",
            Refusal::PopulationUnknown { .. } => "population_unknown",
            Refusal::ApprovalExpired { .. } => "approval_expired",
            Refusal::ApprovalDenied { .. } => "approval_denied",
        }
    }
}

/// Something the rails' state did by itself that belongs on a timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum GuardEvent {
    /// A breaker opened.
    BreakerOpened {
        /// Whose.
        scope: Scope,
        /// Why.
        reason: String,
    },
    /// An approval request was filed for a person.
    ApprovalRequested {
        /// Which execution.
        key: ApprovalKey,
        /// Until when it waits.
        expires_at: Timestamp,
        /// Why it is needed.
        reason: ApprovalReason,
    },
}

impl fmt::Display for GuardEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuardEvent::BreakerOpened { scope, reason } => {
                write!(f, "{scope} breaker opened: {reason}; automation in its scope stops until a person resets it")
            }
            GuardEvent::ApprovalRequested { key, expires_at, reason } => {
                write!(f, "approval requested for {key} until {}: {reason}", show(*expires_at))
            }
        }
    }
}
