//! What the rails remember: actions taken (and would-have actions in
//! dry-run and shadow), failures, open breakers, approvals, the pause.
//!
//! Pure and serialisable: the coordinator persists it in its store and
//! changes it only through these methods, from its single writer.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::decision::{ApprovalReason, Decision, GuardEvent, Refusal, Scope};
use super::policy::GuardPolicy;
use super::request::{ActionRequest, ApprovalKey, Mode};
use crate::incident::IncidentId;
use crate::time::Timestamp;

/// A global pause set by a person.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pause {
    /// Who paused.
    pub by: String,
    /// When.
    pub since: Timestamp,
    /// Why.
    pub reason: String,
}

/// An open breaker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenBreaker {
    /// Opened at.
    pub since: Timestamp,
    /// Why.
    pub reason: String,
}

/// An action taken (live) or that would have been taken (dry-run, shadow).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRecord {
    /// When it was issued.
    pub at: Timestamp,
    /// The runbook.
    pub runbook_id: String,
    /// The incident.
    pub incident_id: IncidentId,
    /// The step.
    pub step_id: String,
    /// The attempt.
    pub attempt: u32,
    /// The kind.
    pub action_kind: String,
    /// The distinct target keys.
    pub targets: Vec<String>,
    /// The pool the targets came from, for percentage budgets.
    #[serde(default)]
    pub pool: Option<String>,
    /// Live, dry-run or shadow.
    pub mode: Mode,
}

/// A failed action.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// When it failed.
    pub at: Timestamp,
    /// The runbook.
    pub runbook_id: String,
    /// The kind.
    pub action_kind: String,
    /// What went wrong.
    pub reason: String,
}

/// Where an approval stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ApprovalStatus {
    /// Waiting for a person until the request's `expires_at`.
    Pending,
    /// Approved; usable until `valid_until`.
    Granted {
        /// Who.
        by: String,
        /// When.
        at: Timestamp,
        /// Usable until.
        valid_until: Timestamp,
    },
    /// Refused by a person.
    Denied {
        /// Who.
        by: String,
        /// When.
        at: Timestamp,
        /// Why.
        reason: String,
    },
}

/// An approval request and its answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Which execution.
    pub key: ApprovalKey,
    /// The runbook.
    pub runbook_id: String,
    /// What it would do, for the person deciding.
    pub action: String,
    /// Why approval is needed.
    pub reason: ApprovalReason,
    /// Filed at.
    pub requested_at: Timestamp,
    /// Unanswered, it expires at.
    pub expires_at: Timestamp,
    /// The answer so far.
    pub status: ApprovalStatus,
}

impl Approval {
    /// Whether it still waits for an answer at `now`.
    pub fn is_pending(&self, now: Timestamp) -> bool {
        self.status == ApprovalStatus::Pending && now < self.expires_at
    }
}

/// Why an approval cannot be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApprovalError {
    /// No request under this key.
    #[error("no approval request for {0}")]
    NotFound(ApprovalKey),
    /// The request expired unanswered.
    #[error("the approval request for {key} expired at {}", super::decision::show(*expired_at))]
    Expired {
        /// Which.
        key: ApprovalKey,
        /// When.
        expired_at: Timestamp,
    },
    /// Someone already answered.
    #[error("the approval request for {0} was already answered")]
    AlreadyAnswered(ApprovalKey),
}

/// Everything the rails remember.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct GuardState {
    paused: Option<Pause>,
    actions: Vec<ActionRecord>,
    failures: Vec<FailureRecord>,
    breakers: BTreeMap<Scope, OpenBreaker>,
    breaker_resets: BTreeMap<Scope, Timestamp>,
    approvals: Vec<Approval>,
}

/// Whether `record` counts for `request`. Live records count for everyone:
/// the world really changed. A shadow runbook's would-have records count
/// only for shadow requests, so it meets its own cooldowns and budgets and
/// never restricts live automation. A dry run's would-have records count
/// only within the same incident's dry run: a second step on the same
/// target is still refused as it would be for real, but one rehearsal
/// never restricts another run, live or rehearsed, later.
pub(crate) fn visible(record: &ActionRecord, request: &ActionRequest) -> bool {
    match record.mode {
        Mode::Live => true,
        Mode::Shadow => request.mode == Mode::Shadow,
        Mode::DryRun => request.mode == Mode::DryRun && record.incident_id == request.incident_id,
    }
}

/// Whether something at `at` is within `window` before `now`.
pub(crate) fn within(at: Timestamp, window: std::time::Duration, now: Timestamp) -> bool {
    now.since(at) < window
}

impl GuardState {
    /// A state with nothing remembered.
    pub fn new() -> Self {
        GuardState::default()
    }

    // ---- pause -------------------------------------------------------

    /// The global pause, if set.
    pub fn paused(&self) -> Option<&Pause> {
        self.paused.as_ref()
    }

    /// Pauses all automation. Returns false if it was already paused (the
    /// first pause and its reason stand).
    pub fn pause(&mut self, by: &str, reason: &str, now: Timestamp) -> bool {
        if self.paused.is_some() {
            return false;
        }
        self.paused = Some(Pause { by: by.to_owned(), since: now, reason: reason.to_owned() });
        true
    }

    /// Lifts the global pause; returns the pause that was lifted.
    pub fn resume(&mut self) -> Option<Pause> {
        self.paused.take()
    }

    // ---- breakers ----------------------------------------------------

    /// The breaker of `scope`, if open.
    pub fn breaker(&self, scope: &Scope) -> Option<&OpenBreaker> {
        self.breakers.get(scope)
    }

    /// Every open breaker.
    pub fn open_breakers(&self) -> impl Iterator<Item = (&Scope, &OpenBreaker)> {
        self.breakers.iter()
    }

    /// Closes the breaker of `scope` (a person's act). Failures before now
    /// no longer count towards opening it again. Returns what was open.
    pub fn reset_breaker(&mut self, scope: &Scope, now: Timestamp) -> Option<OpenBreaker> {
        self.breaker_resets.insert(scope.clone(), now);
        self.breakers.remove(scope)
    }

    fn open_breaker(&mut self, scope: Scope, reason: String, now: Timestamp) -> Option<GuardEvent> {
        if self.breakers.contains_key(&scope) {
            return None;
        }
        self.breakers.insert(scope.clone(), OpenBreaker { since: now, reason: reason.clone() });
        Some(GuardEvent::BreakerOpened { scope, reason })
    }

    // ---- outcomes ----------------------------------------------------

    /// Remembers that `request` was issued at `now` (in dry-run and shadow:
    /// that it would have been). Call it once the rails allowed it, when the
    /// action is issued and before it runs (with its idempotency key), so a
    /// crash mid-action still counts against cooldowns and budgets. A live
    /// execution uses up its approval.
    pub fn record_executed(&mut self, request: &ActionRequest, now: Timestamp) {
        self.actions.push(ActionRecord {
            at: now,
            runbook_id: request.runbook_id.clone(),
            incident_id: request.incident_id,
            step_id: request.step_id.clone(),
            attempt: request.attempt,
            action_kind: request.action_kind.clone(),
            targets: request.target_keys().into_iter().collect(),
            pool: request.population.as_ref().map(|p| p.pool.clone()),
            mode: request.mode,
        });
        if request.mode == Mode::Live {
            let key = request.approval_key();
            self.approvals.retain(|a| a.key != key);
        }
    }

    /// Remembers that a live `request` failed. Returns the breakers this
    /// opened (runbook first, then global), each a timeline entry. Dry-run
    /// and shadow failures are ignored: nothing ran.
    pub fn record_failure(
        &mut self,
        policy: &GuardPolicy,
        request: &ActionRequest,
        reason: &str,
        now: Timestamp,
    ) -> Vec<GuardEvent> {
        if request.mode != Mode::Live {
            return Vec::new();
        }
        self.failures.push(FailureRecord {
            at: now,
            runbook_id: request.runbook_id.clone(),
            action_kind: request.action_kind.clone(),
            reason: reason.to_owned(),
        });
        let mut events = Vec::new();
        let window = policy.breaker.window;
        let runbook_scope = Scope::Runbook(request.runbook_id.clone());
        if let Some(max) = policy.breaker.runbook_failures {
            let n = self.failures_since_reset(&runbook_scope, Some(&request.runbook_id), window, now);
            if n >= u64::from(max) {
                let why = format!(
                    "{n} failed actions in the last {}, latest: {} ({reason})",
                    humantime::format_duration(window),
                    request.describe()
                );
                events.extend(self.open_breaker(runbook_scope, why, now));
            }
        }
        if let Some(max) = policy.breaker.global_failures {
            let n = self.failures_since_reset(&Scope::Global, None, window, now);
            if n >= u64::from(max) {
                let why = format!(
                    "{n} failed actions across runbooks in the last {}, latest: {} by {} ({reason})",
                    humantime::format_duration(window),
                    request.describe(),
                    request.runbook_id
                );
                events.extend(self.open_breaker(Scope::Global, why, now));
            }
        }
        events
    }

    fn failures_since_reset(
        &self,
        scope: &Scope,
        runbook: Option<&str>,
        window: std::time::Duration,
        now: Timestamp,
    ) -> u64 {
        let reset = self.breaker_resets.get(scope).copied();
        let n = self
            .failures
            .iter()
            .filter(|f| within(f.at, window, now))
            .filter(|f| reset.is_none_or(|r| f.at > r))
            .filter(|f| runbook.is_none_or(|id| f.runbook_id == id))
            .count();
        u64::try_from(n).unwrap_or(u64::MAX)
    }

    /// Applies what a decision implies for the state itself, and returns the
    /// events for the timeline:
    ///
    /// - a live `NeedsApproval` files an approval request (once);
    /// - a live `BudgetExhausted` opens the breaker of the budget's scope
    ///   when the policy says so.
    ///
    /// Dry-run and shadow decisions change nothing here.
    pub fn note_decision(
        &mut self,
        policy: &GuardPolicy,
        request: &ActionRequest,
        decision: &Decision,
        now: Timestamp,
    ) -> Vec<GuardEvent> {
        if request.mode != Mode::Live {
            return Vec::new();
        }
        match decision {
            Decision::NeedsApproval { expires_at, reason } => {
                let key = request.approval_key();
                if self.approvals.iter().any(|a| a.key == key) {
                    return Vec::new();
                }
                self.approvals.push(Approval {
                    key: key.clone(),
                    runbook_id: request.runbook_id.clone(),
                    action: request.describe(),
                    reason: reason.clone(),
                    requested_at: now,
                    expires_at: *expires_at,
                    status: ApprovalStatus::Pending,
                });
                vec![GuardEvent::ApprovalRequested { key, expires_at: *expires_at, reason: reason.clone() }]
            }
            Decision::Refuse(refusal @ Refusal::BudgetExhausted { scope, .. })
                if policy.breaker.on_budget_exhausted =>
            {
                self.open_breaker(scope.clone(), refusal.to_string(), now).into_iter().collect()
            }
            _ => Vec::new(),
        }
    }

    // ---- approvals ---------------------------------------------------

    /// Every approval request still remembered.
    pub fn approvals(&self) -> &[Approval] {
        &self.approvals
    }

    /// The approval request for `key`.
    pub fn approval(&self, key: &ApprovalKey) -> Option<&Approval> {
        self.approvals.iter().find(|a| &a.key == key)
    }

    /// Requests still waiting for a person at `now`.
    pub fn pending_approvals(&self, now: Timestamp) -> impl Iterator<Item = &Approval> {
        self.approvals.iter().filter(move |a| a.is_pending(now))
    }

    /// A person approves the request `key`. The approval is usable for
    /// `policy.approval.valid_for`; returns until when.
    pub fn grant_approval(
        &mut self,
        policy: &GuardPolicy,
        key: &ApprovalKey,
        by: &str,
        now: Timestamp,
    ) -> Result<Timestamp, ApprovalError> {
        let approval = self.answerable(key, now)?;
        let valid_until = now.plus(policy.approval.valid_for);
        approval.status = ApprovalStatus::Granted { by: by.to_owned(), at: now, valid_until };
        Ok(valid_until)
    }

    /// The risk a person accepted by granting the request `key`, and who:
    /// `Some` only for a granted request that stated one
    /// ([`ApprovalReason::Risk`]). An actuator that found the risk again
    /// goes ahead only with it. Read it before [`GuardState::record_executed`],
    /// which uses the approval up.
    pub fn accepted_risk(&self, key: &ApprovalKey) -> Option<(String, String)> {
        let approval = self.approval(key)?;
        match (&approval.reason, &approval.status) {
            (ApprovalReason::Risk { risk }, ApprovalStatus::Granted { by, .. }) => Some((risk.clone(), by.clone())),
            _ => None,
        }
    }

    /// A person refuses the request `key`.
    pub fn deny_approval(
        &mut self,
        key: &ApprovalKey,
        by: &str,
        reason: &str,
        now: Timestamp,
    ) -> Result<(), ApprovalError> {
        let approval = self.answerable(key, now)?;
        approval.status = ApprovalStatus::Denied { by: by.to_owned(), at: now, reason: reason.to_owned() };
        Ok(())
    }

    fn answerable(&mut self, key: &ApprovalKey, now: Timestamp) -> Result<&mut Approval, ApprovalError> {
        let approval =
            self.approvals.iter_mut().find(|a| &a.key == key).ok_or_else(|| ApprovalError::NotFound(key.clone()))?;
        if approval.status != ApprovalStatus::Pending {
            return Err(ApprovalError::AlreadyAnswered(key.clone()));
        }
        if now >= approval.expires_at {
            return Err(ApprovalError::Expired { key: key.clone(), expired_at: approval.expires_at });
        }
        Ok(approval)
    }

    // ---- queries used by the rails -----------------------------------

    /// Actions remembered, oldest first.
    pub fn actions(&self) -> &[ActionRecord] {
        &self.actions
    }

    /// Failures remembered, oldest first.
    pub fn failures(&self) -> &[FailureRecord] {
        &self.failures
    }

    // ---- forgetting --------------------------------------------------

    /// Forgets what no rail looks at any more: actions and failures older
    /// than the policy's horizon, approvals that expired (or whose grant
    /// expired) longer than the horizon ago, resets older than the breaker
    /// window. Returns how many entries were dropped.
    pub fn prune(&mut self, policy: &GuardPolicy, now: Timestamp) -> usize {
        let horizon = policy.horizon();
        let before = self.actions.len() + self.failures.len() + self.approvals.len() + self.breaker_resets.len();
        self.actions.retain(|a| within(a.at, horizon, now));
        self.failures.retain(|f| within(f.at, horizon, now));
        self.approvals.retain(|a| {
            let ended = match &a.status {
                ApprovalStatus::Pending => a.expires_at,
                ApprovalStatus::Granted { valid_until, .. } => *valid_until,
                ApprovalStatus::Denied { at, .. } => (*at).max(a.expires_at),
            };
            now < ended || within(ended, horizon, now)
        });
        let window = policy.breaker.window;
        self.breaker_resets.retain(|_, at| within(*at, window, now));
        let after = self.actions.len() + self.failures.len() + self.approvals.len() + self.breaker_resets.len();
        before.saturating_sub(after)
    }
}

impl fmt::Display for Pause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "paused by {} at {}: {}", self.by, super::decision::show(self.since), self.reason)
    }
}
