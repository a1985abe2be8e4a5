//! Findings: what agents (and the coordinator) observe.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::limits::{self, LimitError};
use crate::time::Timestamp;

/// How bad a finding is. The order matters: under pressure the lowest goes
/// first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Worth recording, never worth waking anyone.
    Info,
    /// Degradation that automation should look at.
    Warning,
    /// Service is impaired; remediation should start now.
    Critical,
}

impl Severity {
    /// The lowercase name used in configuration and output.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a finding reports a condition that holds or one that ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FindingState {
    /// The condition holds.
    Active,
    /// The condition ended.
    Cleared,
}

macro_rules! finding_kinds {
    ($( $(#[$doc:meta])* $variant:ident => $name:literal, )*) => {
        /// The closed catalogue of things Remedy knows how to observe.
        ///
        /// A closed set on purpose: a typo in an agent or a rule must be
        /// refused, not open an incident nobody's runbook matches.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum FindingKind {
            $( $(#[$doc])* $variant, )*
        }

        impl FindingKind {
            /// Every kind, in declaration order.
            pub const ALL: &'static [FindingKind] = &[$(FindingKind::$variant),*];

            /// The snake_case name used on the wire and in runbooks.
            pub fn as_str(self) -> &'static str {
                match self { $(FindingKind::$variant => $name,)* }
            }
        }

        impl FromStr for FindingKind {
            type Err = UnknownKind;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($name => Ok(FindingKind::$variant),)*
                    _ => Err(UnknownKind(s.to_owned())),
                }
            }
        }
    };
}

finding_kinds! {
    /// Node CPU use above its threshold.
    NodeCpuHigh => "node_cpu_high",
    /// Node memory use above its threshold.
    NodeMemoryHigh => "node_memory_high",
    /// Load average per core above its threshold.
    NodeLoadHigh => "node_load_high",
    /// A filesystem fuller than its threshold.
    DiskUsageHigh => "disk_usage_high",
    /// An agent stopped sending heartbeats (raised by the coordinator).
    AgentStale => "agent_stale",
    /// A local probe or node tool reported a failure.
    ProbeFailed => "probe_failed",
    /// Error lines above their rate, by category.
    HighErrorRate => "high_error_rate",
    /// Authentication failures from one source above their rate.
    BruteForce => "brute_force",
    /// A log detector tracking as many keys as it may, evicting the least
    /// recently updated to take new ones (`evicted` in the last `interval`):
    /// failures from more sources than it can follow, itself a sign of an
    /// attack (a botnet), and one in which the slowest sources go unjudged.
    LogTrackingCapped => "log_tracking_capped",
    /// A container restarting in a crash loop.
    PodCrashLoop => "pod_crash_loop",
    /// A container killed for exceeding its memory.
    PodOomKilled => "pod_oom_killed",
    /// A pod in phase Failed.
    PodFailed => "pod_failed",
    /// A process above its memory or CPU threshold.
    ProcessHot => "process_hot",
    /// Zombie processes (exited, never reaped by their parent) at or above
    /// their threshold on a node.
    ProcessZombies => "process_zombies",
    /// The kernel's OOM killer killed a process on a node (from the kernel
    /// log; for any process, in a pod or not).
    NodeOomKill => "node_oom_kill",
    /// An incident's time to recovery neared or passed its runbook's target
    /// (raised by the coordinator; a runbook may react to it).
    MttrAtRisk => "mttr_at_risk",
    /// Two members of a PostgreSQL cluster took writes at once (raised by
    /// the coordinator's guard: `fenced` names the members it fenced; none
    /// when their timelines could not tell which is newer).
    DatabaseSplitBrain => "database_split_brain",
}

impl FindingKind {
    /// Whether a node reports this kind. The others are the coordinator's
    /// own judgements about agents, incidents and clusters: a node-local
    /// tool claiming one (an agent gone stale, an MTTR at risk) would make
    /// the coordinator act on something it did not see. Every kind is
    /// named here, so a new one must be placed.
    pub fn reported_by_nodes(self) -> bool {
        match self {
            FindingKind::AgentStale | FindingKind::MttrAtRisk | FindingKind::DatabaseSplitBrain => false,
            FindingKind::NodeCpuHigh
            | FindingKind::NodeMemoryHigh
            | FindingKind::NodeLoadHigh
            | FindingKind::DiskUsageHigh
            | FindingKind::ProbeFailed
            | FindingKind::HighErrorRate
            | FindingKind::BruteForce
            | FindingKind::LogTrackingCapped
            | FindingKind::PodCrashLoop
            | FindingKind::PodOomKilled
            | FindingKind::PodFailed
            | FindingKind::ProcessHot
            | FindingKind::ProcessZombies
            | FindingKind::NodeOomKill => true,
        }
    }
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A finding kind that is not in the catalogue.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown finding kind `{0}`")]
pub struct UnknownKind(pub String);

/// Something observed that may need action.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// What was observed.
    pub kind: FindingKind,
    /// How bad it is.
    pub severity: Severity,
    /// Whether it holds or ended.
    pub state: FindingState,
    /// What it is about, "<type>/<name>".
    pub target: String,
    /// Labels for runbook matchers.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Measured values behind it.
    #[serde(default)]
    pub evidence: BTreeMap<String, String>,
    /// One line for humans.
    #[serde(default)]
    pub summary: String,
    /// First seen.
    pub first_seen: Timestamp,
    /// Last confirmed.
    pub last_seen: Timestamp,
    /// When an unrefreshed active finding counts as cleared.
    #[serde(default)]
    pub expires_at: Option<Timestamp>,
}

/// Why a finding was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidFinding {
    /// The target is empty; every finding must say what it is about.
    #[error("finding target must not be empty")]
    EmptyTarget,
    /// The target is longer than [`MAX_TARGET_LEN`].
    #[error("finding target is longer than {MAX_TARGET_LEN} bytes")]
    TargetTooLong,
    /// Last seen precedes first seen.
    #[error("finding last_seen is before first_seen")]
    TimeReversed,
    /// A label or evidence map over its limits (see [`crate::limits`]).
    #[error("finding {0}")]
    Limit(#[from] LimitError),
    /// A kind only the coordinator raises, reported by a node.
    #[error("kind `{0}` is raised by the coordinator only; a node may not report it")]
    NotFromNodes(FindingKind),
    /// A node's finding that would stay active too long unrefreshed.
    #[error("finding expires {0} s after it was last seen, over the limit of {max} s (24 hours)", max = MAX_NODE_TTL.as_secs())]
    TtlTooLong(u64),
}

/// Longest accepted target, bytes.
pub const MAX_TARGET_LEN: usize = 512;

/// Longest a node's finding may stay active without being refreshed. A
/// detector that still sees its condition says so again long before; a
/// longer life would let one report hold an incident open for days after
/// its node went quiet.
pub const MAX_NODE_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

impl Finding {
    /// Checks the invariants every stored finding satisfies, without
    /// changing it: [`Finding::bound`] is the intake's check.
    pub fn validate(&self) -> Result<(), InvalidFinding> {
        if self.target.trim().is_empty() {
            return Err(InvalidFinding::EmptyTarget);
        }
        if self.target.len() > MAX_TARGET_LEN {
            return Err(InvalidFinding::TargetTooLong);
        }
        if self.last_seen < self.first_seen {
            return Err(InvalidFinding::TimeReversed);
        }
        for (field, map) in [("labels", &self.labels), ("evidence", &self.evidence)] {
            if map.len() > limits::MAX_ENTRIES {
                return Err(
                    LimitError::TooMany { field: field.into(), count: map.len(), max: limits::MAX_ENTRIES }.into()
                );
            }
        }
        Ok(())
    }

    /// The intake's check: [`Finding::validate`], then the size limits of
    /// [`crate::limits`]: a long key or too many entries is refused, a long
    /// summary or value is cut saying so. Returns the cut fields.
    pub fn bound(&mut self) -> Result<Vec<String>, InvalidFinding> {
        self.validate()?;
        let mut cut: Vec<String> =
            limits::bound_map("labels", &mut self.labels)?.into_iter().map(|k| format!("labels.{k}")).collect();
        cut.extend(limits::bound_map("evidence", &mut self.evidence)?.into_iter().map(|k| format!("evidence.{k}")));
        if limits::clip(&mut self.summary, limits::MAX_SUMMARY_BYTES) {
            cut.push("summary".to_owned());
        }
        Ok(cut)
    }

    /// The strict size check, for node-local tools that can shorten what
    /// they submit: any field over its limit is refused, naming it.
    pub fn check_sizes(&self) -> Result<(), LimitError> {
        limits::check_map("labels", &self.labels)?;
        limits::check_map("evidence", &self.evidence)?;
        limits::check_name("summary", &self.summary, limits::MAX_SUMMARY_BYTES)
    }

    /// What a node may report: only kinds nodes observe, and a life of at
    /// most [`MAX_NODE_TTL`] past its last sighting.
    pub fn check_from_node(&self) -> Result<(), InvalidFinding> {
        if !self.kind.reported_by_nodes() {
            return Err(InvalidFinding::NotFromNodes(self.kind));
        }
        if let Some(expires) = self.expires_at {
            let life_ms = expires.as_millis().saturating_sub(self.last_seen.as_millis());
            let life = u64::try_from(life_ms).unwrap_or(0) / 1000;
            if life > MAX_NODE_TTL.as_secs() {
                return Err(InvalidFinding::TtlTooLong(life));
            }
        }
        Ok(())
    }

    /// The key that groups findings describing the same condition.
    pub fn condition_key(&self) -> ConditionKey {
        ConditionKey { kind: ConditionKind::Finding(self.kind), target: self.target.clone() }
    }

    /// Whether the finding still describes a holding condition at `now`.
    pub fn holds_at(&self, now: Timestamp) -> bool {
        self.state == FindingState::Active && self.expires_at.is_none_or(|at| now < at)
    }
}

/// What raised a condition: an agent's finding kind, or an alert's name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConditionKind {
    /// A finding of this kind.
    Finding(FindingKind),
    /// An Alertmanager alert with this `alertname`.
    Alert(String),
    /// A runbook's own condition: a manual run, or a trigger aggregated
    /// across nodes, which no single finding or alert stands for.
    Runbook(String),
}

impl fmt::Display for ConditionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConditionKind::Finding(kind) => f.write_str(kind.as_str()),
            ConditionKind::Alert(name) => f.write_str(name),
            ConditionKind::Runbook(id) => write!(f, "runbook {id}"),
        }
    }
}

/// Signals with the same kind and target describe one condition, and join
/// one incident.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ConditionKey {
    /// What raised it.
    pub kind: ConditionKind,
    /// What it is about.
    pub target: String,
}

impl fmt::Display for ConditionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} on {}", self.kind, self.target)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn finding(kind: FindingKind, target: &str, at: i64) -> Finding {
        Finding {
            kind,
            severity: Severity::Warning,
            state: FindingState::Active,
            target: target.to_owned(),
            labels: BTreeMap::new(),
            evidence: BTreeMap::new(),
            summary: String::new(),
            first_seen: Timestamp::from_millis(at),
            last_seen: Timestamp::from_millis(at),
            expires_at: None,
        }
    }

    #[test]
    fn every_kind_round_trips_through_its_name() {
        for kind in FindingKind::ALL {
            assert_eq!(kind.as_str().parse::<FindingKind>(), Ok(*kind));
        }
        assert_eq!("node_cpu_hgh".parse::<FindingKind>(), Err(UnknownKind("node_cpu_hgh".into())));
    }

    #[test]
    fn severities_order_from_info_to_critical() {
        assert!(Severity::Info < Severity::Warning && Severity::Warning < Severity::Critical);
    }

    #[test]
    fn validation_refuses_empty_target_and_reversed_time() {
        let mut f = finding(FindingKind::NodeCpuHigh, "  ", 10);
        assert_eq!(f.validate(), Err(InvalidFinding::EmptyTarget));
        f.target = "node/a".into();
        f.last_seen = Timestamp::from_millis(5);
        assert_eq!(f.validate(), Err(InvalidFinding::TimeReversed));
        f.last_seen = Timestamp::from_millis(10);
        assert_eq!(f.validate(), Ok(()));
    }

    #[test]
    fn an_expired_active_finding_no_longer_holds() {
        let mut f = finding(FindingKind::NodeCpuHigh, "node/a", 10);
        f.expires_at = Some(Timestamp::from_millis(100));
        assert!(f.holds_at(Timestamp::from_millis(99)));
        assert!(!f.holds_at(Timestamp::from_millis(100)));
        f.expires_at = None;
        f.state = FindingState::Cleared;
        assert!(!f.holds_at(Timestamp::from_millis(50)));
    }
}
