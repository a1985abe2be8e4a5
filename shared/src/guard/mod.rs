//! Guard rails: the one layer every action passes, in dry-run too.
//!
//! Whatever its kind (scale, delete pods, block an IP, fail over, flush a
//! cache, call a URL, an agent directive, a notification), an action is an
//! [`ActionRequest`]; [`evaluate`] weighs it against the [`GuardPolicy`]
//! (configuration) and the [`GuardState`] (what the rails remember) at
//! `now`, and returns a [`Decision`]. Pure: no I/O, no clock.
//!
//! # How an engine uses it
//!
//! 1. Resolve selectors to named targets, re-check the trigger of a
//!    destructive action, fill in capacity and pool, and build the request.
//! 2. `let decision = evaluate(&policy, &state, &request, now);`
//!    then `state.note_decision(&policy, &request, &decision, now)`, which
//!    files approval requests and opens a breaker on an exhausted budget
//!    ([`decide`] does both). Write `decision.note(&request)` and every
//!    returned [`GuardEvent`] to the incident's timeline: allowed or not,
//!    every decision is recorded with its reason.
//! 3. On [`Decision::Allow`] (or [`Decision::WouldAllow`] in dry-run and
//!    shadow), call [`GuardState::record_executed`] with the idempotency key,
//!    before the action runs; execute only when live.
//! 4. If the action fails, [`GuardState::record_failure`]; it may open
//!    breakers (timeline events again).
//! 5. On [`Decision::NeedsApproval`], wait for
//!    [`GuardState::grant_approval`] / [`GuardState::deny_approval`] or the
//!    expiry, then evaluate again (re-checking the trigger): the other rails
//!    are weighed afresh, since the world moved while a person decided.
//! 6. On [`Decision::Escalate`], hand the incident to people.
//! 7. From time to time, [`GuardState::prune`].
//!
//! People act through [`GuardState::pause`], [`GuardState::resume`],
//! [`GuardState::reset_breaker`] and the approval methods.
//!
//! # Order of the rails
//!
//! Cheap and global first, then per target, then what needs history, and
//! the person last. The first rail that objects decides; the order fixes
//! which reason is reported when several apply.
//!
//! 1. **Global pause** ([`Refusal::GlobalPause`]).
//! 2. **Breakers**, global then the runbook's ([`Refusal::BreakerOpen`]).
//!    Kinds in `pause_exempt_kinds` (default `notify`) skip 1 and 2 only:
//!    telling people must work precisely when automation has stopped.
//! 3. **Request shape**: blank runbook, step, kind or target name, a `*`
//!    target ([`Refusal::InvalidRequest`]); an empty target set
//!    ([`Refusal::EmptyTargetSet`]), never read as "all".
//! 4. **Protected targets**, per target: namespace, label, the
//!    `remedy.dev/hold` annotation; for address kinds (`block_ip`), the
//!    target must parse as an address or network and must not overlap an
//!    allow-listed range ([`Refusal::ProtectedAddress`]) nor any range of
//!    Remedy's own [`Infrastructure`] ([`Refusal::OwnInfrastructure`]).
//! 5. **Capacity**: a capacity kind (`scale`) must carry its change; floors
//!    and ceilings from the request and the policy (the tighter wins). A
//!    change that moves towards the bounds is allowed even if it does not
//!    reach them (3 → 4 with a floor of 5 helps); a change that goes below
//!    the floor or above the ceiling, moving away, is refused.
//! 6. **Freshness**: a destructive action needs `trigger_still_holds ==
//!    Some(true)`; any action whose caller reports the trigger gone is
//!    refused ([`Refusal::StaleTrigger`]).
//! 7. **Cooldown** per (target, kind), across runbooks: two runbooks cannot
//!    take turns restarting the same workload.
//! 8. **Repeat cap** per (runbook, target) within its window: at the cap,
//!    [`Decision::Escalate`] instead of acting again.
//! 9. **Budgets**, in policy order: actions, targets, percentage of a pool.
//!    Free kinds (`free_kinds`: evidence and `notify`) skip 7 to 9 and are
//!    not counted: budgets limit change, not looking or telling people.
//! 10. **Approval**: asked last, so a person is only asked about an action
//!     every other rail would let through, and never kept waiting for one
//!     the rails would refuse anyway. (The list puts approval before
//!     freshness and history; evaluating again after the answer means no
//!     rail is skipped, whichever order is used.) A request carrying a
//!     `risk` (what the actuator's look found unsafe without a person)
//!     always needs approval, and states the risk as its reason
//!     ([`ApprovalReason::Risk`]), so whoever approves knows what they
//!     accept; [`GuardState::accepted_risk`] tells the engine they did.
//!
//! # Dry-run and shadow
//!
//! The same rails, in the same order, with the same refusals. Only an
//! allowed action differs: [`Decision::WouldAllow`], and
//! [`Decision::WouldNeedApproval`] instead of asking a person. Would-have
//! executions are remembered with their mode: a dry-run or shadow request
//! sees live history plus would-have history of its own mode (so a shadow
//! runbook meets its own cooldowns and budgets), while live requests see
//! only live history. Dry-run and shadow never open breakers or file
//! approval requests.
//!
//! # Windows
//!
//! Windows slide: an action at `t` counts while `now - t < window`.
//! Percentages are rounded down (10% of 15 pods is 1), and a pool of 0
//! allows nothing. Counts saturate; nothing here panics on any input.

mod decision;
mod infra;
pub mod net;
mod policy;
mod request;
mod state;

#[cfg(test)]
mod tests;

pub use decision::{ApprovalReason, BudgetUnit, Decision, DecisionNote, Escalation, GuardEvent, Refusal, Scope};
pub use infra::Infrastructure;
pub use net::IpNet;
pub use policy::{
    ApprovalPolicy, BreakerPolicy, Budget, BudgetScope, CapacityBound, CapacityPolicy, GuardPolicy, HOLD_ANNOTATION,
    LabelMatch, ProtectedPolicy, RailOverrides, RepeatPolicy,
};
pub use request::{ActionRequest, ApprovalKey, CapacityChange, Mode, Population, TargetRef};
pub use state::{ActionRecord, Approval, ApprovalError, ApprovalStatus, FailureRecord, GuardState, OpenBreaker, Pause};

use state::{visible, within};

use crate::time::Timestamp;

/// Weighs `request` against every rail, in the documented order, at `now`.
/// Pure: the state is not changed (see [`GuardState::note_decision`] and
/// [`decide`]).
pub fn evaluate(policy: &GuardPolicy, state: &GuardState, request: &ActionRequest, now: Timestamp) -> Decision {
    match check(policy, state, request, now) {
        Ok(()) if request.mode.is_hypothetical() => Decision::WouldAllow,
        Ok(()) => Decision::Allow,
        Err(decision) => decision,
    }
}

/// [`evaluate`], then [`GuardState::note_decision`]: the decision and the
/// events it caused (an approval request filed, a breaker opened).
pub fn decide(
    policy: &GuardPolicy,
    state: &mut GuardState,
    request: &ActionRequest,
    now: Timestamp,
) -> (Decision, Vec<GuardEvent>) {
    let decision = evaluate(policy, state, request, now);
    let events = state.note_decision(policy, request, &decision, now);
    (decision, events)
}

type Rail = Result<(), Decision>;

fn refuse(refusal: Refusal) -> Rail {
    Err(Decision::Refuse(refusal))
}

fn check(policy: &GuardPolicy, state: &GuardState, request: &ActionRequest, now: Timestamp) -> Rail {
    if !policy.pause_exempt_kinds.contains(&request.action_kind) {
        pause(state)?;
        breakers(state, request)?;
    }
    shape(request)?;
    protected(policy, request)?;
    addresses(policy, request)?;
    capacity(policy, request)?;
    freshness(request)?;
    cooldown(policy, state, request, now)?;
    repeat_cap(policy, state, request, now)?;
    budgets(policy, state, request, now)?;
    approval(policy, state, request, now)
}

fn pause(state: &GuardState) -> Rail {
    match state.paused() {
        Some(p) => refuse(Refusal::GlobalPause { by: p.by.clone(), since: p.since, reason: p.reason.clone() }),
        None => Ok(()),
    }
}

fn breakers(state: &GuardState, request: &ActionRequest) -> Rail {
    for scope in [Scope::Global, Scope::Runbook(request.runbook_id.clone())] {
        if let Some(b) = state.breaker(&scope) {
            return refuse(Refusal::BreakerOpen { scope, since: b.since, reason: b.reason.clone() });
        }
    }
    Ok(())
}

fn shape(request: &ActionRequest) -> Rail {
    let invalid = |reason: String| refuse(Refusal::InvalidRequest { reason });
    for (field, value) in
        [("runbook_id", &request.runbook_id), ("step_id", &request.step_id), ("action_kind", &request.action_kind)]
    {
        if value.trim().is_empty() {
            return invalid(format!("{field} is empty"));
        }
    }
    if request.targets.is_empty() {
        return refuse(Refusal::EmptyTargetSet);
    }
    for (i, t) in request.targets.iter().enumerate() {
        if t.kind.trim().is_empty() || t.name.trim().is_empty() {
            return invalid(format!("target {i} ({}) has an empty kind or name", t.key()));
        }
        if t.name.trim() == "*" {
            return invalid(format!("target {} is a wildcard; targets must be named", t.key()));
        }
    }
    Ok(())
}

fn protected(policy: &GuardPolicy, request: &ActionRequest) -> Rail {
    let hold = &policy.protected.hold_annotation;
    for t in &request.targets {
        let namespace = match (&t.namespace, t.kind.as_str()) {
            (Some(ns), _) => Some(ns),
            (None, "Namespace") => Some(&t.name),
            (None, _) => None,
        };
        if let Some(ns) = namespace
            && policy.is_protected_namespace(&request.runbook_id, &request.action_kind, ns)
        {
            return refuse(Refusal::ProtectedNamespace { target: t.key(), namespace: ns.clone() });
        }
        if let Some(label) = policy.protected_label(&request.runbook_id, &request.action_kind, &t.labels) {
            return refuse(Refusal::ProtectedLabel { target: t.key(), label: label.to_string() });
        }
        if let Some(value) = t.annotations.get(hold) {
            return refuse(Refusal::HoldAnnotation { target: t.key(), annotation: hold.clone(), value: value.clone() });
        }
    }
    Ok(())
}

fn addresses(policy: &GuardPolicy, request: &ActionRequest) -> Rail {
    if !policy.protected.address_kinds.contains(&request.action_kind) {
        return Ok(());
    }
    for t in &request.targets {
        let net: IpNet = match t.name.parse() {
            Ok(net) => net,
            Err(reason) => return refuse(Refusal::InvalidAddress { target: t.key(), reason }),
        };
        if let Some(protected) = policy.protected.never_block.iter().find(|p| p.overlaps(&net)) {
            return refuse(Refusal::ProtectedAddress { target: t.key(), protected: *protected });
        }
        if let Some((protected, owner)) = policy.protected.infrastructure.covering(&net) {
            return refuse(Refusal::OwnInfrastructure {
                target: t.key(),
                protected: *protected,
                owner: owner.to_owned(),
            });
        }
    }
    Ok(())
}

fn capacity(policy: &GuardPolicy, request: &ActionRequest) -> Rail {
    let Some(change) = request.capacity else {
        if policy.capacity.kinds.contains(&request.action_kind) {
            return refuse(Refusal::MissingCapacity { action_kind: request.action_kind.clone() });
        }
        return Ok(());
    };
    let mut floor = change.floor;
    let mut ceiling = change.ceiling;
    for bound in policy.capacity.bounds.iter().filter(|b| request.targets.iter().any(|t| b.matches(t))) {
        floor = floor.max(bound.floor);
        ceiling = match (ceiling, bound.ceiling) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    if let (Some(floor), Some(ceiling)) = (floor, ceiling)
        && floor > ceiling
    {
        return refuse(Refusal::InvalidCapacity { floor, ceiling });
    }
    let target = request.describe_targets();
    let (current, desired) = (change.current, change.desired);
    if let Some(floor) = floor
        && desired < floor
        && desired < current
    {
        return refuse(Refusal::BelowFloor { target, floor, desired, current });
    }
    if let Some(ceiling) = ceiling
        && desired > ceiling
        && desired > current
    {
        return refuse(Refusal::AboveCeiling { target, ceiling, desired, current });
    }
    Ok(())
}

fn freshness(request: &ActionRequest) -> Rail {
    match (request.destructive, request.trigger_still_holds) {
        (_, Some(false)) => refuse(Refusal::StaleTrigger),
        (true, None) => refuse(Refusal::FreshnessUnknown),
        _ => Ok(()),
    }
}

fn cooldown(policy: &GuardPolicy, state: &GuardState, request: &ActionRequest, now: Timestamp) -> Rail {
    let cooldown = policy.cooldown_for(&request.runbook_id, &request.action_kind);
    if cooldown.is_zero() {
        return Ok(());
    }
    for key in request.target_keys() {
        let last = state
            .actions()
            .iter()
            .rev()
            .filter(|a| visible(a, request) && a.action_kind == request.action_kind)
            .find(|a| a.targets.contains(&key));
        if let Some(last) = last {
            let until = last.at.plus(cooldown);
            if now < until {
                return refuse(Refusal::Cooldown {
                    target: key,
                    action_kind: request.action_kind.clone(),
                    last: last.at,
                    until,
                });
            }
        }
    }
    Ok(())
}

fn repeat_cap(policy: &GuardPolicy, state: &GuardState, request: &ActionRequest, now: Timestamp) -> Rail {
    let repeat = policy.repeat_for(&request.runbook_id, &request.action_kind);
    if repeat.max == 0 {
        return Ok(());
    }
    for key in request.target_keys() {
        let count = state
            .actions()
            .iter()
            .filter(|a| visible(a, request) && a.runbook_id == request.runbook_id)
            // Looking is no attempt at a fix: probing a database before
            // failing it over must not use up the failover's one attempt.
            .filter(|a| !policy.is_free(&a.action_kind))
            .filter(|a| within(a.at, repeat.window, now) && a.targets.contains(&key))
            .count();
        let count = u32::try_from(count).unwrap_or(u32::MAX);
        if count >= repeat.max {
            return Err(Decision::Escalate(Escalation::RepeatCap {
                target: key,
                count,
                max: repeat.max,
                window: repeat.window,
            }));
        }
    }
    Ok(())
}

fn budgets(policy: &GuardPolicy, state: &GuardState, request: &ActionRequest, now: Timestamp) -> Rail {
    if policy.is_free(&request.action_kind) {
        return Ok(());
    }
    let units = request.units();
    for budget in policy.budgets.iter().filter(|b| b.applies_to(&request.runbook_id, &request.action_kind)) {
        let scope = match budget.scope {
            BudgetScope::Global => Scope::Global,
            BudgetScope::EachRunbook | BudgetScope::Runbook(_) => Scope::Runbook(request.runbook_id.clone()),
        };
        let counted: Vec<&ActionRecord> = state
            .actions()
            .iter()
            .filter(|a| visible(a, request) && within(a.at, budget.window, now))
            .filter(|a| !policy.is_free(&a.action_kind))
            .filter(|a| match &scope {
                Scope::Global => true,
                Scope::Runbook(id) => &a.runbook_id == id,
            })
            .filter(|a| budget.action_kind.as_ref().is_none_or(|k| k == &a.action_kind))
            .collect();
        let exhausted = |unit: BudgetUnit, used: u64, requested: u64, limit: u64| {
            refuse(Refusal::BudgetExhausted {
                scope: scope.clone(),
                action_kind: budget.action_kind.clone(),
                unit,
                used,
                requested,
                limit,
                window: budget.window,
            })
        };
        if let Some(max) = budget.max_actions {
            let used = u64::try_from(counted.len()).unwrap_or(u64::MAX);
            if used.saturating_add(1) > max {
                return exhausted(BudgetUnit::Actions, used, 1, max);
            }
        }
        if let Some(max) = budget.max_targets {
            let used = target_count(counted.iter().copied());
            if used.saturating_add(units) > max {
                return exhausted(BudgetUnit::Targets, used, units, max);
            }
        }
        if let Some(percent) = budget.max_percent {
            let Some(population) = &request.population else {
                return refuse(Refusal::PopulationUnknown { scope, action_kind: budget.action_kind.clone() });
            };
            let allowed = u128::from(population.size).saturating_mul(u128::from(percent)) / 100;
            let allowed = u64::try_from(allowed).unwrap_or(u64::MAX);
            let used = target_count(counted.iter().copied().filter(|a| a.pool.as_ref() == Some(&population.pool)));
            if used.saturating_add(units) > allowed {
                return exhausted(BudgetUnit::Percent { percent, population: population.size }, used, units, allowed);
            }
        }
    }
    Ok(())
}

fn target_count<'a>(records: impl Iterator<Item = &'a ActionRecord>) -> u64 {
    records.fold(0u64, |sum, a| sum.saturating_add(u64::try_from(a.targets.len()).unwrap_or(u64::MAX)))
}

/// Why `request` needs a person's approval under `policy`, if it does (the
/// first reason found).
pub fn approval_reason(policy: &GuardPolicy, request: &ActionRequest) -> Option<ApprovalReason> {
    // First: whoever approves must be told what they accept, whatever else
    // also asks for a person.
    if let Some(risk) = &request.risk {
        return Some(ApprovalReason::Risk { risk: risk.clone() });
    }
    if request.requires_approval {
        return Some(ApprovalReason::Runbook);
    }
    if policy.kind_needs_approval(&request.runbook_id, &request.action_kind) {
        return Some(ApprovalReason::ActionKind { kind: request.action_kind.clone() });
    }
    if policy.approval.scale_to_zero && request.capacity.is_some_and(|c| c.desired == 0 && c.current > 0) {
        return Some(ApprovalReason::ScaleToZero);
    }
    if policy.protected.address_kinds.contains(&request.action_kind) {
        let wide = request.targets.iter().filter_map(|t| t.name.parse::<IpNet>().ok()).find(|net| {
            let limit = if net.is_ipv4() { policy.approval.wide_block_v4 } else { policy.approval.wide_block_v6 };
            net.prefix() < limit
        });
        if let Some(network) = wide {
            return Some(ApprovalReason::WideBlock { network });
        }
    }
    None
}

fn approval(policy: &GuardPolicy, state: &GuardState, request: &ActionRequest, now: Timestamp) -> Rail {
    let Some(reason) = approval_reason(policy, request) else {
        return Ok(());
    };
    if request.mode.is_hypothetical() {
        return Err(Decision::WouldNeedApproval { reason });
    }
    let Some(filed) = state.approval(&request.approval_key()) else {
        let wait = policy.approval_wait_for(&request.runbook_id, &request.action_kind);
        return Err(Decision::NeedsApproval { expires_at: now.plus(wait), reason });
    };
    match &filed.status {
        ApprovalStatus::Pending if now >= filed.expires_at => {
            refuse(Refusal::ApprovalExpired { expired_at: filed.expires_at })
        }
        ApprovalStatus::Pending => {
            Err(Decision::NeedsApproval { expires_at: filed.expires_at, reason: filed.reason.clone() })
        }
        ApprovalStatus::Granted { valid_until, .. } if now >= *valid_until => {
            refuse(Refusal::ApprovalExpired { expired_at: *valid_until })
        }
        ApprovalStatus::Granted { .. } => Ok(()),
        ApprovalStatus::Denied { by, at, reason } => {
            refuse(Refusal::ApprovalDenied { by: by.clone(), at: *at, reason: reason.clone() })
        }
    }
}
