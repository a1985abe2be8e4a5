//! A runbook's guard-rail settings.
//!
//! These are the per-runbook knobs; the guard-rail layer applies them to
//! every action together with the global ones (global budgets, the global
//! pause, the circuit breaker, IP allow-lists, `remedy.dev/hold`), so a
//! runbook can tighten the rails but never switch the global ones off.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::action::ActionKind;
use crate::config::duration;
use crate::guard::Mode;

/// Which actions a budget counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetScope {
    /// Every change action of the runbook.
    All,
    /// These kinds only.
    Kinds(Vec<ActionKind>),
}

/// At most so many actions per window: absolute, as a percentage of the
/// targets they may touch (pods of a workload, nodes), or both.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// What the budget counts.
    pub actions: BudgetScope,
    /// The sliding window.
    #[serde(with = "duration")]
    pub window: Duration,
    /// At most this many actions in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_actions: Option<u32>,
    /// At most this percentage (0 < p <= 100) of the target population
    /// affected in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_percent: Option<f64>,
}

impl Budget {
    /// Whether the budget counts actions of `kind`.
    pub fn counts(&self, kind: ActionKind) -> bool {
        match &self.actions {
            BudgetScope::All => true,
            BudgetScope::Kinds(kinds) => kinds.contains(&kind),
        }
    }
}

/// Targets a runbook must never touch, on top of the global ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Protected {
    /// Namespaces.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Objects carrying any of these labels with this value.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

fn default_cooldown() -> Duration {
    Duration::from_secs(5 * 60)
}
fn default_max_attempts() -> u32 {
    3
}
fn default_approval_ttl() -> Duration {
    Duration::from_secs(15 * 60)
}

/// A runbook's guard-rail settings. Every field has a safe default, so the
/// whole block may be omitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardRails {
    /// Live, dry-run or shadow.
    #[serde(default)]
    pub mode: Mode,
    /// After acting on a target, wait this long before acting on it again.
    #[serde(with = "duration", default = "default_cooldown")]
    pub cooldown: Duration,
    /// After this many attempts on the same target without lasting success,
    /// escalate to a person instead of acting again (automation that keeps
    /// "fixing" the same host hides the real fault).
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// Budgets per window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub budgets: Vec<Budget>,
    /// Action kinds that need a person's approval in this runbook (a step may
    /// also say `requires_approval`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub requires_approval: Vec<ActionKind>,
    /// How long an approval request stays valid.
    #[serde(with = "duration", default = "default_approval_ttl")]
    pub approval_ttl: Duration,
    /// Targets never to touch.
    #[serde(default)]
    pub protected: Protected,
}

impl Default for GuardRails {
    fn default() -> Self {
        GuardRails {
            mode: Mode::default(),
            cooldown: default_cooldown(),
            max_attempts: default_max_attempts(),
            budgets: Vec::new(),
            requires_approval: Vec::new(),
            approval_ttl: default_approval_ttl(),
            protected: Protected::default(),
        }
    }
}

impl GuardRails {
    /// The budgets that count actions of `kind`.
    pub fn budgets_for(&self, kind: ActionKind) -> impl Iterator<Item = &Budget> {
        self.budgets.iter().filter(move |b| b.counts(kind))
    }
}
