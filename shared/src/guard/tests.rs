//! Every rail with a case that refuses and a case that allows, dry-run and
//! shadow showing the same refusals, windows expiring, the breaker's life,
//! approvals' life, serialisation, and inputs at the edges.

use std::time::Duration;

use super::*;
use crate::incident::IncidentId;

const MIN: u64 = 60;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_millis(1_700_000_000_000 + secs * 1000)
}

fn mins(m: u64) -> Duration {
    Duration::from_secs(m * MIN)
}

/// The default policy without budgets, so each test sees only its rail.
fn policy() -> GuardPolicy {
    GuardPolicy { budgets: Vec::new(), ..GuardPolicy::default() }
}

fn deploy(name: &str) -> TargetRef {
    TargetRef::namespaced("Deployment", "shop", name)
}

fn pod(name: &str) -> TargetRef {
    TargetRef::namespaced("Pod", "shop", name).with_label("app", "api")
}

fn request(kind: &str, targets: Vec<TargetRef>) -> ActionRequest {
    ActionRequest {
        runbook_id: "P0-001".into(),
        incident_id: IncidentId(1),
        step_id: "step".into(),
        attempt: 1,
        action_kind: kind.into(),
        targets,
        destructive: false,
        requires_approval: false,
        capacity: None,
        population: None,
        trigger_still_holds: None,
        mode: Mode::Live,
        risk: None,
    }
}

fn http(name: &str) -> ActionRequest {
    request("http", vec![TargetRef::new("url", name)])
}

fn delete_pods(names: &[&str]) -> ActionRequest {
    let mut r = request("delete_pods", names.iter().map(|n| pod(n)).collect());
    r.destructive = true;
    r.trigger_still_holds = Some(true);
    r
}

fn scale(current: u32, desired: u32, floor: Option<u32>, ceiling: Option<u32>) -> ActionRequest {
    let mut r = request("scale", vec![deploy("api")]);
    r.capacity = Some(CapacityChange { current, desired, floor, ceiling });
    r
}

fn block(addr: &str) -> ActionRequest {
    request("block_ip", vec![TargetRef::new("ip", addr)])
}

fn in_mode(mut r: ActionRequest, mode: Mode) -> ActionRequest {
    r.mode = mode;
    r
}

fn by(mut r: ActionRequest, runbook: &str) -> ActionRequest {
    r.runbook_id = runbook.into();
    r
}

fn refusal(d: &Decision) -> &Refusal {
    match d {
        Decision::Refuse(r) => r,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn rail_of(d: &Decision) -> &'static str {
    d.rail().unwrap_or("none")
}

/// Evaluates in all three modes and checks that they agree on the refusal
/// (or on allowing), returning the live decision.
fn same_in_every_mode(p: &GuardPolicy, s: &GuardState, r: &ActionRequest, now: Timestamp) -> Decision {
    let live = evaluate(p, s, &in_mode(r.clone(), Mode::Live), now);
    for mode in [Mode::DryRun, Mode::Shadow] {
        let other = evaluate(p, s, &in_mode(r.clone(), mode), now);
        match (&live, &other) {
            (Decision::Allow, Decision::WouldAllow) => {}
            (Decision::NeedsApproval { reason: a, .. }, Decision::WouldNeedApproval { reason: b }) => {
                assert_eq!(a, b)
            }
            _ => assert_eq!(live, other, "{mode} differs from live"),
        }
    }
    live
}

// ---- the plain case ---------------------------------------------------

#[test]
fn a_plain_action_is_allowed_live_and_would_be_in_dry_run_and_shadow() {
    let (p, s) = (policy(), GuardState::new());
    assert_eq!(evaluate(&p, &s, &http("http://gw/reset"), at(0)), Decision::Allow);
    assert_eq!(evaluate(&p, &s, &in_mode(http("http://gw/reset"), Mode::DryRun), at(0)), Decision::WouldAllow);
    assert_eq!(evaluate(&p, &s, &in_mode(http("http://gw/reset"), Mode::Shadow), at(0)), Decision::WouldAllow);
    assert!(Decision::Allow.is_allowed() && Decision::WouldAllow.is_allowed());
}

// ---- pause --------------------------------------------------------------

#[test]
fn global_pause_refuses_everything_but_notifications_until_resumed() {
    let p = policy();
    let mut s = GuardState::new();
    assert!(s.pause("alice", "maintenance window", at(0)));
    assert!(!s.pause("bob", "again", at(1)), "the first pause stands");
    let d = same_in_every_mode(&p, &s, &http("http://gw/reset"), at(5));
    assert!(matches!(refusal(&d), Refusal::GlobalPause { by, .. } if by == "alice"));
    assert!(refusal(&d).to_string().contains("maintenance window"));
    let notify = request("notify", vec![TargetRef::new("webhook", "oncall")]);
    assert_eq!(evaluate(&p, &s, &notify, at(5)), Decision::Allow, "telling people still works");
    assert_eq!(s.resume().map(|p| p.by), Some("alice".into()));
    assert_eq!(evaluate(&p, &s, &http("http://gw/reset"), at(6)), Decision::Allow);
}

// ---- breaker ------------------------------------------------------------

#[test]
fn runbook_breaker_opens_after_k_failures_and_stays_open_until_reset() {
    let p = policy(); // runbook_failures 3 in 30m
    let mut s = GuardState::new();
    let r = http("http://gw/reset");
    assert!(s.record_failure(&p, &r, "503", at(0)).is_empty());
    assert!(s.record_failure(&p, &r, "503", at(10)).is_empty());
    assert_eq!(evaluate(&p, &s, &r, at(20)), Decision::Allow, "two failures: still closed");
    let events = s.record_failure(&p, &r, "timeout", at(30));
    assert!(
        matches!(events.as_slice(), [GuardEvent::BreakerOpened { scope: Scope::Runbook(id), .. }] if id == "P0-001")
    );
    let d = same_in_every_mode(&p, &s, &r, at(40));
    assert!(matches!(refusal(&d), Refusal::BreakerOpen { scope: Scope::Runbook(_), since, .. } if *since == at(30)));
    // Long after the failures left the window, it is still open: only a person closes it.
    assert_eq!(rail_of(&evaluate(&p, &s, &r, at(24 * 3600))), "breaker_open");
    // Other runbooks are not affected.
    assert_eq!(evaluate(&p, &s, &by(r.clone(), "P1-002"), at(40)), Decision::Allow);
    assert!(s.reset_breaker(&Scope::Runbook("P0-001".into()), at(50)).is_some());
    assert_eq!(evaluate(&p, &s, &r, at(60)), Decision::Allow);
    // Failures before the reset no longer count: one more does not reopen it.
    assert!(s.record_failure(&p, &r, "503", at(70)).is_empty());
    assert_eq!(evaluate(&p, &s, &r, at(80)), Decision::Allow);
}

#[test]
fn failures_spread_beyond_the_window_do_not_open_the_breaker() {
    let p = policy();
    let mut s = GuardState::new();
    let r = http("http://gw/reset");
    for i in 0..5 {
        assert!(s.record_failure(&p, &r, "503", at(i * 31 * 60)).is_empty(), "failure {i}");
    }
    assert_eq!(evaluate(&p, &s, &r, at(5 * 31 * 60)), Decision::Allow);
}

#[test]
fn global_breaker_opens_on_failures_across_runbooks() {
    let mut p = policy();
    p.breaker.global_failures = Some(4);
    p.breaker.runbook_failures = None;
    let mut s = GuardState::new();
    let mut opened = Vec::new();
    for (i, rb) in ["A", "B", "C", "D"].iter().enumerate() {
        opened.extend(s.record_failure(&p, &by(http("http://x"), rb), "boom", at(i as i64)));
    }
    assert!(matches!(opened.as_slice(), [GuardEvent::BreakerOpened { scope: Scope::Global, .. }]));
    let d = evaluate(&p, &s, &by(http("http://y"), "E"), at(10));
    assert!(matches!(refusal(&d), Refusal::BreakerOpen { scope: Scope::Global, .. }));
    assert!(s.open_breakers().count() == 1);
    s.reset_breaker(&Scope::Global, at(11));
    assert_eq!(evaluate(&p, &s, &by(http("http://y"), "E"), at(12)), Decision::Allow);
}

#[test]
fn dry_run_failures_are_ignored() {
    let p = policy();
    let mut s = GuardState::new();
    for i in 0..10 {
        assert!(s.record_failure(&p, &in_mode(http("http://x"), Mode::DryRun), "x", at(i)).is_empty());
    }
    assert!(s.failures().is_empty());
    assert_eq!(s.open_breakers().count(), 0);
}

// ---- request shape ------------------------------------------------------

#[test]
fn an_empty_target_set_is_refused_never_all() {
    let (p, s) = (policy(), GuardState::new());
    let d = same_in_every_mode(&p, &s, &request("delete_pods", Vec::new()), at(0));
    assert_eq!(d, Decision::Refuse(Refusal::EmptyTargetSet));
    assert!(refusal(&d).to_string().contains("never means \"all\""));
    assert!(same_in_every_mode(&p, &s, &delete_pods(&["a"]), at(0)).is_allowed());
}

#[test]
fn blank_fields_and_wildcards_are_refused() {
    let (p, s) = (policy(), GuardState::new());
    let mut r = http("http://x");
    r.step_id = " ".into();
    assert_eq!(rail_of(&evaluate(&p, &s, &r, at(0))), "invalid_request");
    assert_eq!(
        rail_of(&evaluate(&p, &s, &request("flush_cache", vec![TargetRef::new("cache", "*")]), at(0))),
        "invalid_request"
    );
    assert_eq!(rail_of(&evaluate(&p, &s, &request("http", vec![TargetRef::new("", "x")]), at(0))), "invalid_request");
    assert_eq!(rail_of(&evaluate(&p, &s, &by(http("http://x"), ""), at(0))), "invalid_request");
}

// ---- protected targets ----------------------------------------------------

#[test]
fn protected_namespaces_are_refused() {
    let (p, s) = (policy(), GuardState::new());
    let d = same_in_every_mode(
        &p,
        &s,
        &request("delete_pods", vec![TargetRef::namespaced("Pod", "kube-system", "coredns-1")]),
        at(0),
    );
    assert!(matches!(refusal(&d), Refusal::ProtectedNamespace { namespace, .. } if namespace == "kube-system"));
    let ns = request("annotate", vec![TargetRef::new("Namespace", "kube-system")]);
    assert_eq!(rail_of(&evaluate(&p, &s, &ns, at(0))), "protected_namespace");
    assert_eq!(evaluate(&p, &s, &request("restart", vec![deploy("api")]), at(0)), Decision::Allow);
}

#[test]
fn protected_labels_are_refused_by_key_or_key_and_value() {
    let mut p = policy();
    p.protected.labels = vec!["tier=database".parse().unwrap(), "remedy.dev/never".parse().unwrap()];
    let s = GuardState::new();
    let db = request("restart", vec![deploy("pg").with_label("tier", "database")]);
    let d = same_in_every_mode(&p, &s, &db, at(0));
    assert!(matches!(refusal(&d), Refusal::ProtectedLabel { label, .. } if label == "tier=database"));
    let never = request("restart", vec![deploy("x").with_label("remedy.dev/never", "")]);
    assert_eq!(rail_of(&evaluate(&p, &s, &never, at(0))), "protected_label");
    let web = request("restart", vec![deploy("web").with_label("tier", "frontend")]);
    assert_eq!(evaluate(&p, &s, &web, at(0)), Decision::Allow);
}

#[test]
fn the_hold_annotation_is_honoured_on_any_target_of_the_set() {
    let (p, s) = (policy(), GuardState::new());
    let mut r = delete_pods(&["a", "b"]);
    r.targets[1] = pod("b").with_annotation(HOLD_ANNOTATION, "investigating, do not touch");
    let d = same_in_every_mode(&p, &s, &r, at(0));
    assert!(matches!(refusal(&d), Refusal::HoldAnnotation { target, .. } if target == "Pod/shop/b"));
    assert!(refusal(&d).to_string().contains("remedy.dev/hold"));
    r.targets[1] = pod("b").with_annotation("other/annotation", "x");
    assert_eq!(evaluate(&p, &s, &r, at(0)), Decision::Allow);
}

#[test]
fn blocks_never_cover_allow_listed_addresses() {
    let mut p = policy();
    p.protected.never_block.push("10.244.0.0/16".parse().unwrap()); // pod range
    let s = GuardState::new();
    for addr in ["127.0.0.1", "::1", "169.254.169.254", "10.244.3.7", "10.0.0.0/8", "0.0.0.0/0", "::ffff:127.0.0.1"] {
        let d = same_in_every_mode(&p, &s, &block(addr), at(0));
        assert_eq!(rail_of(&d), "protected_address", "{addr}");
    }
    assert_eq!(rail_of(&evaluate(&p, &s, &block("attacker.example"), at(0))), "invalid_address");
    assert_eq!(evaluate(&p, &s, &block("203.0.113.7"), at(0)), Decision::Allow);
}

#[test]
fn blocks_never_cover_remedys_own_infrastructure_and_say_whose_it_is() {
    let mut p = policy();
    p.protected.infrastructure = crate::guard::Infrastructure::new([
        ("10.79.2.2".parse().unwrap(), "node-2's address 10.79.2.2 (announced by its agent)".to_owned()),
        ("10.96.0.0/12".parse().unwrap(), "the service range (configuration)".to_owned()),
    ]);
    let s = GuardState::new();
    for addr in ["10.79.2.2", "::ffff:10.79.2.2", "10.79.0.0/16", "10.96.0.10"] {
        let d = same_in_every_mode(&p, &s, &block(addr), at(0));
        assert_eq!(rail_of(&d), "own_infrastructure", "{addr}");
    }
    let d = evaluate(&p, &s, &block("10.79.2.2"), at(0));
    assert_eq!(
        refusal(&d).to_string(),
        "blocking ip/10.79.2.2 would cover 10.79.2.2/32, node-2's address 10.79.2.2 (announced by its agent): \
         Remedy never bans its own infrastructure"
    );
    assert_eq!(evaluate(&p, &s, &block("10.79.2.3"), at(0)), Decision::Allow, "a neighbour is not a node");
}

#[test]
fn runbooks_and_kinds_add_protected_targets_and_approval_kinds() {
    let mut p = policy();
    p.runbooks.insert(
        "P2-001".into(),
        RailOverrides {
            protected_namespaces: ["payments".to_owned()].into(),
            protected_labels: vec!["critical=true".parse().unwrap()],
            approval_kinds: ["scale".to_owned()].into(),
            approval_wait: Some(mins(2)),
            ..RailOverrides::default()
        },
    );
    p.kinds.insert(
        "delete_pods".into(),
        RailOverrides { protected_namespaces: ["ledger".to_owned()].into(), ..RailOverrides::default() },
    );
    let s = GuardState::new();
    let pay = request("restart", vec![TargetRef::namespaced("Deployment", "payments", "api")]);
    assert_eq!(rail_of(&evaluate(&p, &s, &by(pay.clone(), "P2-001"), at(0))), "protected_namespace");
    assert_eq!(evaluate(&p, &s, &pay, at(0)), Decision::Allow, "only that runbook is held back");
    let crit = request("restart", vec![deploy("x").with_label("critical", "true")]);
    assert_eq!(rail_of(&evaluate(&p, &s, &by(crit, "P2-001"), at(0))), "protected_label");
    let ledger = request("delete_pods", vec![TargetRef::namespaced("Pod", "ledger", "p")]);
    assert_eq!(rail_of(&evaluate(&p, &s, &ledger, at(0))), "protected_namespace", "per kind");
    assert_eq!(
        evaluate(&p, &s, &by(scale(5, 6, None, None), "P2-001"), at(0)),
        Decision::NeedsApproval { expires_at: at(120), reason: ApprovalReason::ActionKind { kind: "scale".into() } }
    );
}

// ---- capacity ---------------------------------------------------------------

#[test]
fn capacity_never_goes_below_the_floor_or_above_the_ceiling() {
    let (p, s) = (policy(), GuardState::new());
    let d = same_in_every_mode(&p, &s, &scale(5, 1, Some(2), None), at(0));
    assert_eq!(
        d,
        Decision::Refuse(Refusal::BelowFloor {
            target: "Deployment/shop/api".into(),
            floor: 2,
            desired: 1,
            current: 5
        })
    );
    assert_eq!(evaluate(&p, &s, &scale(5, 2, Some(2), None), at(0)), Decision::Allow, "at the floor");
    assert_eq!(evaluate(&p, &s, &scale(1, 2, Some(3), None), at(0)), Decision::Allow, "towards the floor");
    let d = same_in_every_mode(&p, &s, &scale(10, 60, None, Some(50)), at(0));
    assert_eq!(rail_of(&d), "above_ceiling");
    assert_eq!(evaluate(&p, &s, &scale(10, 50, None, Some(50)), at(0)), Decision::Allow, "at the ceiling");
    assert_eq!(evaluate(&p, &s, &scale(70, 60, None, Some(50)), at(0)), Decision::Allow, "towards the ceiling");
    assert_eq!(rail_of(&evaluate(&p, &s, &scale(3, 3, Some(5), Some(4)), at(0))), "invalid_capacity");
}

#[test]
fn policy_bounds_tighten_the_request_bounds() {
    let mut p = policy();
    p.capacity.bounds.push(CapacityBound {
        kind: Some("Deployment".into()),
        namespace: Some("shop".into()),
        name: "api".into(),
        floor: Some(3),
        ceiling: Some(50),
    });
    let s = GuardState::new();
    assert!(matches!(
        refusal(&evaluate(&p, &s, &scale(10, 2, Some(1), None), at(0))),
        Refusal::BelowFloor { floor: 3, .. }
    ));
    assert!(matches!(
        refusal(&evaluate(&p, &s, &scale(10, 80, None, Some(100)), at(0))),
        Refusal::AboveCeiling { ceiling: 50, .. }
    ));
    assert_eq!(evaluate(&p, &s, &scale(10, 3, None, None), at(0)), Decision::Allow);
}

#[test]
fn a_scale_without_its_capacity_is_refused() {
    let (p, s) = (policy(), GuardState::new());
    let d = same_in_every_mode(&p, &s, &request("scale", vec![deploy("api")]), at(0));
    assert_eq!(rail_of(&d), "missing_capacity");
}

// ---- freshness ------------------------------------------------------------

#[test]
fn destructive_actions_need_a_fresh_trigger() {
    let (p, s) = (policy(), GuardState::new());
    let mut r = delete_pods(&["a"]);
    r.trigger_still_holds = Some(false);
    assert_eq!(same_in_every_mode(&p, &s, &r, at(0)), Decision::Refuse(Refusal::StaleTrigger));
    r.trigger_still_holds = None;
    assert_eq!(same_in_every_mode(&p, &s, &r, at(0)), Decision::Refuse(Refusal::FreshnessUnknown));
    r.trigger_still_holds = Some(true);
    assert_eq!(evaluate(&p, &s, &r, at(0)), Decision::Allow);
    assert_eq!(evaluate(&p, &s, &http("http://x"), at(0)), Decision::Allow, "not destructive: no re-check needed");
}

// ---- cooldown ---------------------------------------------------------------

#[test]
fn cooldown_per_target_and_kind_across_runbooks() {
    let p = policy(); // 5m
    let mut s = GuardState::new();
    let r = request("restart", vec![deploy("api")]);
    s.record_executed(&r, at(0));
    let d = same_in_every_mode(&p, &s, &r, at(60));
    assert_eq!(
        d,
        Decision::Refuse(Refusal::Cooldown {
            target: "Deployment/shop/api".into(),
            action_kind: "restart".into(),
            last: at(0),
            until: at(300),
        })
    );
    assert_eq!(rail_of(&evaluate(&p, &s, &by(r.clone(), "P1-002"), at(60))), "cooldown", "another runbook too");
    assert_eq!(evaluate(&p, &s, &request("restart", vec![deploy("worker")]), at(60)), Decision::Allow);
    assert_eq!(evaluate(&p, &s, &scale(3, 5, None, None), at(60)), Decision::Allow, "another kind");
    assert_eq!(evaluate(&p, &s, &r, at(300)), Decision::Allow, "cooldown over");
}

#[test]
fn cooldown_overrides_per_kind_and_runbook() {
    let mut p = policy();
    p.kinds.insert("restart".into(), RailOverrides { cooldown: Some(mins(30)), ..RailOverrides::default() });
    p.runbooks.insert("P1-002".into(), RailOverrides { cooldown: Some(Duration::ZERO), ..RailOverrides::default() });
    let mut s = GuardState::new();
    let r = request("restart", vec![deploy("api")]);
    s.record_executed(&r, at(0));
    assert_eq!(rail_of(&evaluate(&p, &s, &r, at(20 * 60))), "cooldown");
    assert_eq!(evaluate(&p, &s, &r, at(30 * 60)), Decision::Allow);
    assert_eq!(evaluate(&p, &s, &by(r.clone(), "P1-002"), at(1)), Decision::Allow);
}

#[test]
fn would_have_history_binds_its_own_mode_and_never_live() {
    let p = policy();
    let mut s = GuardState::new();
    let r = request("restart", vec![deploy("api")]);
    s.record_executed(&in_mode(r.clone(), Mode::Shadow), at(0));
    assert_eq!(rail_of(&evaluate(&p, &s, &in_mode(r.clone(), Mode::Shadow), at(60))), "cooldown");
    assert_eq!(evaluate(&p, &s, &r, at(60)), Decision::Allow, "shadow never restricts live");
    assert_eq!(evaluate(&p, &s, &in_mode(r.clone(), Mode::DryRun), at(60)), Decision::WouldAllow);
    s.record_executed(&r, at(100));
    assert_eq!(rail_of(&evaluate(&p, &s, &in_mode(r.clone(), Mode::DryRun), at(160))), "cooldown", "live binds all");
}

#[test]
fn a_dry_run_binds_only_itself_never_a_later_run_live_or_rehearsed() {
    let p = policy();
    let mut s = GuardState::new();
    let r = request("restart", vec![deploy("api")]);
    let rehearsed = in_mode(r.clone(), Mode::DryRun);
    s.record_executed(&rehearsed, at(0));
    // Within the same dry run, a second restart of the same target is
    // refused, as it would be for real.
    assert_eq!(rail_of(&evaluate(&p, &s, &rehearsed, at(60))), "cooldown");
    // Another incident's run, live or with its steps rehearsed (no
    // actuator here), is not restricted by what the dry run would have done.
    let later = ActionRequest { incident_id: IncidentId(2), ..r.clone() };
    assert_eq!(evaluate(&p, &s, &later, at(60)), Decision::Allow);
    assert_eq!(evaluate(&p, &s, &in_mode(later.clone(), Mode::DryRun), at(60)), Decision::WouldAllow);
    assert_eq!(evaluate(&p, &s, &in_mode(later, Mode::Shadow), at(60)), Decision::WouldAllow);
}

// ---- repeat cap ---------------------------------------------------------------

#[test]
fn repeat_cap_escalates_to_a_person_and_lets_go_after_the_window() {
    let p = policy(); // 3 per hour, cooldown 5m
    let mut s = GuardState::new();
    let r = request("restart", vec![deploy("api")]);
    for i in 0..3 {
        let now = at(i * 10 * 60);
        assert_eq!(evaluate(&p, &s, &r, now), Decision::Allow, "attempt {i}");
        s.record_executed(&r, now);
    }
    let d = same_in_every_mode(&p, &s, &r, at(30 * 60));
    assert_eq!(
        d,
        Decision::Escalate(Escalation::RepeatCap {
            target: "Deployment/shop/api".into(),
            count: 3,
            max: 3,
            window: mins(60)
        })
    );
    assert!(d.to_string().contains("underlying fault"));
    assert_eq!(evaluate(&p, &s, &by(r.clone(), "P1-001"), at(30 * 60)), Decision::Allow, "per runbook");
    // The first action leaves the window at 60m.
    assert_eq!(evaluate(&p, &s, &r, at(60 * 60)), Decision::Allow);
}

#[test]
fn looking_at_a_target_uses_up_no_attempt_of_the_repeat_cap() {
    let mut p = policy();
    let once = RailOverrides { repeat_max: Some(1), cooldown: Some(Duration::ZERO), ..RailOverrides::default() };
    p.runbooks.insert("P0-002".into(), once);
    p.approval.kinds.clear();
    let mut s = GuardState::new();
    let database = || vec![TargetRef::new("database", "main")];
    let probe = by(request("pg_select1", database()), "P0-002");
    let failover = by(request("pg_failover", database()), "P0-002");
    for i in 0..3 {
        assert_eq!(evaluate(&p, &s, &probe, at(i)), Decision::Allow, "probing is free");
        s.record_executed(&probe, at(i));
    }
    assert_eq!(evaluate(&p, &s, &failover, at(10)), Decision::Allow, "the probes used up nothing");
    s.record_executed(&failover, at(10));
    assert!(matches!(evaluate(&p, &s, &failover, at(20)), Decision::Escalate(Escalation::RepeatCap { count: 1, .. })));
}

#[test]
fn one_automatic_failover_then_people() {
    let mut p = policy();
    p.runbooks.insert(
        "P0-002".into(),
        RailOverrides { repeat_max: Some(1), repeat_window: Some(mins(24 * 60)), ..RailOverrides::default() },
    );
    p.approval.kinds.clear();
    let mut s = GuardState::new();
    let mut r = by(request("failover", vec![TargetRef::new("postgres", "main")]), "P0-002");
    r.destructive = true;
    r.trigger_still_holds = Some(true);
    assert_eq!(evaluate(&p, &s, &r, at(0)), Decision::Allow);
    s.record_executed(&r, at(0));
    assert_eq!(rail_of(&evaluate(&p, &s, &r, at(3 * 3600))), "repeat_cap");
}

// ---- budgets ---------------------------------------------------------------

#[test]
fn absolute_action_budget_refuses_when_spent_and_recovers_as_the_window_slides() {
    let mut p = policy();
    p.budgets.push(Budget {
        scope: BudgetScope::Global,
        action_kind: None,
        window: mins(60),
        max_actions: Some(2),
        max_targets: None,
        max_percent: None,
    });
    let mut s = GuardState::new();
    s.record_executed(&http("http://a"), at(0));
    s.record_executed(&by(http("http://b"), "P1-001"), at(10 * 60));
    let d = same_in_every_mode(&p, &s, &http("http://c"), at(20 * 60));
    assert_eq!(
        d,
        Decision::Refuse(Refusal::BudgetExhausted {
            scope: Scope::Global,
            action_kind: None,
            unit: BudgetUnit::Actions,
            used: 2,
            requested: 1,
            limit: 2,
            window: mins(60),
        })
    );
    assert!(refusal(&d).to_string().contains("2 of 2 actions used in the last 1h"));
    assert_eq!(evaluate(&p, &s, &http("http://c"), at(60 * 60)), Decision::Allow, "the first left the window");
}

#[test]
fn each_runbook_and_per_kind_budgets_count_separately() {
    let mut p = policy();
    p.budgets.push(Budget {
        scope: BudgetScope::EachRunbook,
        action_kind: Some("http".into()),
        window: mins(60),
        max_actions: Some(1),
        max_targets: None,
        max_percent: None,
    });
    let mut s = GuardState::new();
    s.record_executed(&http("http://a"), at(0));
    let d = evaluate(&p, &s, &http("http://b"), at(1));
    assert!(matches!(refusal(&d), Refusal::BudgetExhausted { scope: Scope::Runbook(id), .. } if id == "P0-001"));
    assert!(d.to_string().contains("for `http`"));
    assert_eq!(evaluate(&p, &s, &by(http("http://b"), "P1-002"), at(1)), Decision::Allow, "another runbook");
    assert_eq!(evaluate(&p, &s, &request("restart", vec![deploy("api")]), at(1)), Decision::Allow, "another kind");
}

#[test]
fn runbook_scoped_budget_applies_only_to_its_runbook() {
    let mut p = policy();
    p.budgets.push(Budget {
        scope: "runbook/SEC-001".parse().unwrap(),
        action_kind: None,
        window: mins(60),
        max_actions: None,
        max_targets: Some(3),
        max_percent: None,
    });
    let mut s = GuardState::new();
    let sec = |a: &str| by(block(a), "SEC-001");
    s.record_executed(&sec("203.0.113.1"), at(0));
    s.record_executed(&sec("203.0.113.2"), at(0));
    let mut two = sec("203.0.113.3");
    two.targets.push(TargetRef::new("ip", "203.0.113.4"));
    let d = same_in_every_mode(&p, &s, &two, at(1));
    assert!(matches!(
        refusal(&d),
        Refusal::BudgetExhausted { unit: BudgetUnit::Targets, used: 2, requested: 2, limit: 3, .. }
    ));
    assert_eq!(evaluate(&p, &s, &sec("203.0.113.3"), at(1)), Decision::Allow, "one more fits");
    assert_eq!(evaluate(&p, &s, &block("203.0.113.9"), at(1)), Decision::Allow, "other runbooks unaffected");
}

#[test]
fn percentage_budget_counts_targets_in_the_same_pool() {
    let mut p = policy();
    p.budgets.push(Budget {
        scope: BudgetScope::Global,
        action_kind: Some("delete_pods".into()),
        window: mins(60),
        max_actions: None,
        max_targets: None,
        max_percent: Some(10),
    });
    let api = |names: &[&str], size: u64| {
        let mut r = delete_pods(names);
        r.population = Some(Population { pool: "Deployment/shop/api".into(), size });
        r
    };
    let mut s = GuardState::new();
    assert_eq!(evaluate(&p, &s, &api(&["a", "b", "c"], 40), at(0)), Decision::Allow);
    s.record_executed(&api(&["a", "b", "c"], 40), at(0));
    let d = same_in_every_mode(&p, &s, &api(&["d", "e"], 40), at(60));
    assert_eq!(
        d,
        Decision::Refuse(Refusal::BudgetExhausted {
            scope: Scope::Global,
            action_kind: Some("delete_pods".into()),
            unit: BudgetUnit::Percent { percent: 10, population: 40 },
            used: 3,
            requested: 2,
            limit: 4,
            window: mins(60),
        })
    );
    assert!(refusal(&d).to_string().contains("10% of 40"));
    assert_eq!(evaluate(&p, &s, &api(&["d"], 40), at(60)), Decision::Allow, "4 of 40 fits");
    let mut other_pool = delete_pods(&["w1", "w2"]);
    other_pool.population = Some(Population { pool: "Deployment/shop/worker".into(), size: 20 });
    assert_eq!(evaluate(&p, &s, &other_pool, at(60)), Decision::Allow, "another pool");
    assert_eq!(evaluate(&p, &s, &api(&["d", "e"], 40), at(3600)), Decision::Allow, "window over");
    // Rounded down: 10% of 9 is 0; a pool of 0 allows nothing.
    assert_eq!(rail_of(&evaluate(&p, &GuardState::new(), &api(&["a"], 9), at(0))), "budget_exhausted");
    assert_eq!(rail_of(&evaluate(&p, &GuardState::new(), &api(&["a"], 0), at(0))), "budget_exhausted");
    // No pool: cannot prove the budget holds.
    assert_eq!(rail_of(&evaluate(&p, &GuardState::new(), &delete_pods(&["a"]), at(0))), "population_unknown");
}

#[test]
fn an_exhausted_budget_opens_the_breaker_live_only() {
    let mut p = policy();
    p.budgets.push(Budget {
        scope: BudgetScope::EachRunbook,
        action_kind: None,
        window: mins(60),
        max_actions: Some(1),
        max_targets: None,
        max_percent: None,
    });
    let mut s = GuardState::new();
    s.record_executed(&http("http://a"), at(0));
    let (d, events) = decide(&p, &mut s, &in_mode(http("http://b"), Mode::DryRun), at(1));
    assert_eq!(rail_of(&d), "budget_exhausted");
    assert!(events.is_empty(), "a dry run opens nothing");
    let (d, events) = decide(&p, &mut s, &http("http://b"), at(2));
    assert_eq!(rail_of(&d), "budget_exhausted");
    assert!(matches!(events.as_slice(), [GuardEvent::BreakerOpened { scope: Scope::Runbook(_), .. }]));
    // Now the breaker answers first, and stays open after the window.
    assert_eq!(rail_of(&evaluate(&p, &s, &http("http://c"), at(2 * 3600))), "breaker_open");
    s.reset_breaker(&Scope::Runbook("P0-001".into()), at(2 * 3600));
    assert_eq!(evaluate(&p, &s, &http("http://c"), at(2 * 3600)), Decision::Allow);

    p.breaker.on_budget_exhausted = false;
    s.record_executed(&http("http://c"), at(2 * 3600));
    let (_, events) = decide(&p, &mut s, &http("http://d"), at(2 * 3600 + 1));
    assert!(events.is_empty());
}

#[test]
fn the_default_policy_has_global_and_per_runbook_budgets() {
    let p = GuardPolicy::default();
    let mut s = GuardState::new();
    for i in 0..20 {
        s.record_executed(&http(&format!("http://x/{i}")), at(i));
    }
    assert_eq!(rail_of(&evaluate(&p, &s, &http("http://y"), at(30))), "budget_exhausted");
    assert_eq!(evaluate(&p, &s, &by(http("http://y"), "P2-001"), at(30)), Decision::Allow);
}

// ---- approval ---------------------------------------------------------------

#[test]
fn approval_is_asked_once_granted_used_and_then_gone() {
    let p = policy(); // wait 15m, valid 10m
    let mut s = GuardState::new();
    let mut r = http("http://gw/dr-reroute");
    r.requires_approval = true;
    let (d, events) = decide(&p, &mut s, &r, at(0));
    assert_eq!(d, Decision::NeedsApproval { expires_at: at(15 * 60), reason: ApprovalReason::Runbook });
    assert!(matches!(events.as_slice(), [GuardEvent::ApprovalRequested { .. }]));
    let (d, events) = decide(&p, &mut s, &r, at(60));
    assert_eq!(d, Decision::NeedsApproval { expires_at: at(15 * 60), reason: ApprovalReason::Runbook }, "same request");
    assert!(events.is_empty(), "filed once");
    assert_eq!(s.pending_approvals(at(60)).count(), 1);
    assert_eq!(s.grant_approval(&p, &r.approval_key(), "alice", at(120)), Ok(at(120 + 10 * 60)));
    assert_eq!(evaluate(&p, &s, &r, at(180)), Decision::Allow);
    assert_eq!(
        s.grant_approval(&p, &r.approval_key(), "bob", at(181)),
        Err(ApprovalError::AlreadyAnswered(r.approval_key()))
    );
    s.record_executed(&r, at(180));
    assert!(s.approval(&r.approval_key()).is_none(), "used up");
    let mut retry = r.clone();
    retry.attempt = 2;
    assert!(matches!(evaluate(&p, &s, &retry, at(180 + 300)), Decision::NeedsApproval { .. }), "a retry asks again");
}

#[test]
fn approvals_expire_unanswered_and_after_the_grant() {
    let p = policy();
    let mut s = GuardState::new();
    let mut r = http("http://gw/dr-reroute");
    r.requires_approval = true;
    decide(&p, &mut s, &r, at(0));
    let d = evaluate(&p, &s, &r, at(15 * 60));
    assert_eq!(d, Decision::Refuse(Refusal::ApprovalExpired { expired_at: at(15 * 60) }));
    assert_eq!(
        s.grant_approval(&p, &r.approval_key(), "late", at(16 * 60)),
        Err(ApprovalError::Expired { key: r.approval_key(), expired_at: at(15 * 60) })
    );

    let mut s = GuardState::new();
    decide(&p, &mut s, &r, at(0));
    s.grant_approval(&p, &r.approval_key(), "alice", at(60)).unwrap();
    assert_eq!(evaluate(&p, &s, &r, at(60 + 10 * 60 - 1)), Decision::Allow);
    assert_eq!(
        evaluate(&p, &s, &r, at(60 + 10 * 60)),
        Decision::Refuse(Refusal::ApprovalExpired { expired_at: at(60 + 10 * 60) })
    );
}

#[test]
fn a_denied_approval_refuses_and_unknown_keys_are_errors() {
    let p = policy();
    let mut s = GuardState::new();
    let mut r = http("http://gw/dr-reroute");
    r.requires_approval = true;
    let missing = s.deny_approval(&r.approval_key(), "bob", "no", at(0));
    assert_eq!(missing, Err(ApprovalError::NotFound(r.approval_key())));
    decide(&p, &mut s, &r, at(0));
    s.deny_approval(&r.approval_key(), "bob", "primary is fine", at(30)).unwrap();
    let d = evaluate(&p, &s, &r, at(40));
    assert!(matches!(refusal(&d), Refusal::ApprovalDenied { by, .. } if by == "bob"));
    assert!(d.to_string().contains("primary is fine"));
}

#[test]
fn dry_run_would_ask_for_approval_without_filing_a_request() {
    let p = policy();
    let mut s = GuardState::new();
    let mut r = in_mode(http("http://gw/dr-reroute"), Mode::DryRun);
    r.requires_approval = true;
    let (d, events) = decide(&p, &mut s, &r, at(0));
    assert_eq!(d, Decision::WouldNeedApproval { reason: ApprovalReason::Runbook });
    assert!(events.is_empty());
    assert!(s.approvals().is_empty());
    assert!(d.note(&r).message.contains("would have asked for approval"));
}

#[test]
fn policy_adds_approval_for_failover_scale_to_zero_and_wide_blocks() {
    let (p, s) = (policy(), GuardState::new());
    let mut failover = request("failover", vec![TargetRef::new("postgres", "main")]);
    failover.destructive = true;
    failover.trigger_still_holds = Some(true);
    assert!(matches!(
        evaluate(&p, &s, &failover, at(0)),
        Decision::NeedsApproval { reason: ApprovalReason::ActionKind { .. }, .. }
    ));
    assert!(matches!(
        evaluate(&p, &s, &scale(2, 0, None, None), at(0)),
        Decision::NeedsApproval { reason: ApprovalReason::ScaleToZero, .. }
    ));
    assert!(matches!(
        evaluate(&p, &s, &block("198.51.0.0/16"), at(0)),
        Decision::NeedsApproval { reason: ApprovalReason::WideBlock { .. }, .. }
    ));
    assert_eq!(evaluate(&p, &s, &block("198.51.100.0/24"), at(0)), Decision::Allow);
    assert!(matches!(
        evaluate(&p, &s, &block("2001:db8::/48"), at(0)),
        Decision::NeedsApproval { reason: ApprovalReason::WideBlock { .. }, .. }
    ));
}

#[test]
fn a_risk_the_actuator_found_always_asks_a_person_and_says_what_approving_accepts() {
    let p =
        GuardPolicy { approval: ApprovalPolicy { kinds: Default::default(), ..ApprovalPolicy::default() }, ..policy() };
    let mut s = GuardState::new();
    let mut failover = request("pg_failover", vec![TargetRef::new("database", "main")]);
    // No kind needs approval under this policy, and a runbook's own reason
    // gives way: the risk is what the person must read.
    failover.requires_approval = true;
    failover.risk = Some("promoting may create two writers".into());
    let reason = ApprovalReason::Risk { risk: "promoting may create two writers".into() };
    assert_eq!(
        evaluate(&p, &s, &failover, at(0)),
        Decision::NeedsApproval { expires_at: at(15 * 60), reason: reason.clone() }
    );
    assert_eq!(reason.to_string(), "approving accepts this risk: promoting may create two writers");
    assert_eq!(
        evaluate(&p, &s, &in_mode(failover.clone(), Mode::DryRun), at(0)),
        Decision::WouldNeedApproval { reason: reason.clone() }
    );
    let (decision, events) = decide(&p, &mut s, &failover, at(0));
    assert!(matches!(decision, Decision::NeedsApproval { .. }));
    assert!(
        events.iter().any(|e| e.to_string().contains("approving accepts this risk: promoting may create two writers"))
    );
    let key = failover.approval_key();
    assert_eq!(s.accepted_risk(&key), None, "pending is not accepted");
    s.grant_approval(&p, &key, "dba", at(60)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.accepted_risk(&key), Some(("promoting may create two writers".into(), "dba".into())));
    assert_eq!(evaluate(&p, &s, &failover, at(61)), Decision::Allow);
    // An approval that stated no risk accepted none.
    let mut plain = http("https://example.com/hook");
    plain.step_id = "call".into();
    plain.requires_approval = true;
    let _ = decide(&p, &mut s, &plain, at(0));
    s.grant_approval(&p, &plain.approval_key(), "dba", at(60)).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(s.accepted_risk(&plain.approval_key()), None);
    // Without a risk the request is weighed as ever.
    failover.risk = None;
    failover.requires_approval = false;
    failover.step_id = "other".into();
    assert_eq!(evaluate(&p, &s, &failover, at(0)), Decision::Allow);
}

// ---- order and records --------------------------------------------------------

#[test]
fn cheap_global_rails_answer_first() {
    let p = policy();
    let mut s = GuardState::new();
    s.pause("alice", "freeze", at(0));
    // Empty, protected and below the floor all at once: the pause answers.
    let mut r = scale(5, 0, Some(2), None);
    r.targets.clear();
    assert_eq!(rail_of(&evaluate(&p, &s, &r, at(1))), "global_pause");
    s.resume();
    assert_eq!(rail_of(&evaluate(&p, &s, &r, at(1))), "empty_target_set");
    r.targets.push(deploy("api").with_annotation(HOLD_ANNOTATION, "yes"));
    assert_eq!(rail_of(&evaluate(&p, &s, &r, at(1))), "hold_annotation");
    r.targets = vec![deploy("api")];
    assert_eq!(rail_of(&evaluate(&p, &s, &r, at(1))), "below_floor");
}

#[test]
fn every_decision_reads_well_on_a_timeline() {
    let (p, mut s) = (policy(), GuardState::new());
    let r = delete_pods(&["a", "b", "c", "d"]);
    let note = evaluate(&p, &s, &r, at(0)).note(&r);
    assert_eq!(note.message, "allowed: delete_pods 4 targets (Pod/shop/a, Pod/shop/b, Pod/shop/c, ...)");
    assert_eq!(note.details.get("outcome").map(String::as_str), Some("allowed"));
    assert_eq!(note.details.get("incident").map(String::as_str), Some("INC-000001"));
    s.record_executed(&r, at(0));
    let dry = in_mode(r.clone(), Mode::DryRun);
    let note = evaluate(&p, &s, &dry, at(1)).note(&dry);
    assert!(note.message.starts_with("[dry_run] refused: delete_pods"), "{}", note.message);
    assert!(note.message.contains("cooling down until"), "{}", note.message);
    assert_eq!(note.rail, Some("cooldown"));
    assert_eq!(note.details.get("mode").map(String::as_str), Some("dry_run"));
    let shadow = in_mode(http("http://x"), Mode::Shadow);
    assert_eq!(evaluate(&p, &s, &shadow, at(1)).note(&shadow).message, "[shadow] would have run: http url/http://x");
}

// ---- persistence, pruning, configuration --------------------------------------

#[test]
fn state_and_decisions_survive_json() {
    let p = policy();
    let mut s = GuardState::new();
    let mut r = http("http://a");
    s.record_executed(&r, at(0));
    for i in 0..3 {
        s.record_failure(&p, &r, "503", at(i));
    }
    r.requires_approval = true;
    r.step_id = "s2".into();
    s.reset_breaker(&Scope::Global, at(3));
    let mut s2 = s.clone();
    decide(&p, &mut s2, &by(r.clone(), "P2-001"), at(4));
    s.pause("alice", "x", at(5));
    let json = serde_json::to_string(&s2).unwrap();
    let back: GuardState = serde_json::from_str(&json).unwrap();
    assert_eq!(back, s2);
    let json = serde_json::to_string(&s).unwrap();
    assert_eq!(serde_json::from_str::<GuardState>(&json).unwrap(), s);
    assert_eq!(serde_json::from_str::<GuardState>("{}").unwrap(), GuardState::new());

    for d in [
        Decision::Allow,
        Decision::WouldNeedApproval { reason: ApprovalReason::WideBlock { network: "10.0.0.0/8".parse().unwrap() } },
        Decision::Refuse(Refusal::EmptyTargetSet),
        Decision::Refuse(Refusal::BudgetExhausted {
            scope: Scope::Runbook("P0-001".into()),
            action_kind: None,
            unit: BudgetUnit::Percent { percent: 10, population: 40 },
            used: 1,
            requested: 4,
            limit: 4,
            window: mins(60),
        }),
        Decision::Escalate(Escalation::RepeatCap { target: "x".into(), count: 3, max: 3, window: mins(60) }),
    ] {
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(serde_json::from_str::<Decision>(&json).unwrap(), d, "{json}");
    }
}

#[test]
fn prune_forgets_only_what_no_rail_looks_at() {
    let p = policy(); // horizon 1h (repeat window)
    let mut s = GuardState::new();
    s.record_executed(&http("http://old"), at(0));
    s.record_executed(&http("http://new"), at(50 * 60));
    s.record_failure(&p, &http("http://old"), "x", at(0));
    let mut r = http("http://approve");
    r.requires_approval = true;
    decide(&p, &mut s, &r, at(0)); // expires at 15m
    assert_eq!(s.prune(&p, at(61 * 60)), 2);
    assert_eq!(s.actions().len(), 1);
    assert!(s.failures().is_empty());
    assert_eq!(s.approvals().len(), 1, "an expired request is kept so it keeps refusing");
    assert_eq!(s.prune(&p, at(15 * 60 + 3600)), 1);
    assert!(s.approvals().is_empty());
}

#[test]
fn policy_reads_from_yaml_and_validation_names_the_field() {
    let yaml = r#"
cooldown: 2m
repeat: { max: 2, window: 30m }
kinds:
  restart: { cooldown: 10m }
runbooks:
  P0-002: { repeat_max: 1, repeat_window: 24h }
budgets:
  - { scope: global, window: 1h, max_actions: 30 }
  - { scope: each_runbook, action_kind: delete_pods, window: 1h, max_percent: 10 }
  - { scope: runbook/SEC-001, window: 10m, max_targets: 50 }
breaker: { runbook_failures: 2, global_failures: null, window: 15m }
capacity:
  bounds:
    - { kind: Deployment, namespace: saas, name: saas-idp-api, floor: 3, ceiling: 50 }
protected:
  namespaces: [kube-system, remedy]
  labels: [tier=database, remedy.dev/never]
  never_block: [127.0.0.0/8, 10.244.0.0/16, 10.96.0.0/12]
approval: { wait: 5m, kinds: [failover, flush_cache] }
"#;
    let p: GuardPolicy = crate::config::parse_yaml("guard.yaml", yaml).unwrap();
    p.validate("guard.yaml").unwrap();
    assert_eq!(p.cooldown_for("P0-001", "restart"), mins(10));
    assert_eq!(p.repeat_for("P0-002", "failover"), RepeatPolicy { max: 1, window: mins(24 * 60) });
    assert_eq!(p.budgets[2].scope, BudgetScope::Runbook("SEC-001".into()));
    assert_eq!(p.breaker.global_failures, None);
    assert_eq!(p.protected.hold_annotation, HOLD_ANNOTATION, "defaults fill the rest");
    assert_eq!(p.horizon(), mins(24 * 60));
    let empty: GuardPolicy = crate::config::parse_yaml("guard.yaml", "{}").unwrap();
    assert_eq!(empty, GuardPolicy::default());
    GuardPolicy::default().validate("default").unwrap();

    let unknown = crate::config::parse_yaml::<GuardPolicy>("guard.yaml", "cooldwn: 5m").unwrap_err();
    assert!(unknown.message.contains("cooldwn"), "{unknown}");
    let bad_scope = crate::config::parse_yaml::<GuardPolicy>(
        "g.yaml",
        "budgets: [{ scope: everyone, window: 1h, max_actions: 1 }]",
    )
    .unwrap_err();
    assert!(bad_scope.to_string().contains("budgets"), "{bad_scope}");
    let bad_net = crate::config::parse_yaml::<GuardPolicy>("g.yaml", "protected: { never_block: [10.0.0.0/99] }");
    assert!(bad_net.is_err());

    let mut p = GuardPolicy::default();
    p.budgets.push(Budget {
        scope: BudgetScope::Global,
        action_kind: None,
        window: mins(60),
        max_actions: None,
        max_targets: None,
        max_percent: Some(150),
    });
    assert_eq!(p.validate("g.yaml").unwrap_err().field, "budgets[2].max_percent");
    p.budgets.pop();
    p.budgets[0].window = Duration::ZERO;
    assert_eq!(p.validate("g.yaml").unwrap_err().field, "budgets[0].window");
    let mut p = GuardPolicy::default();
    p.breaker.runbook_failures = Some(0);
    assert_eq!(p.validate("g.yaml").unwrap_err().field, "breaker.runbook_failures");
}

// ---- edges ----------------------------------------------------------------

#[test]
fn extreme_inputs_do_not_panic() {
    let mut p = GuardPolicy {
        cooldown: Duration::MAX,
        repeat: RepeatPolicy { max: u32::MAX, window: Duration::MAX },
        ..GuardPolicy::default()
    };
    p.approval.wait = Duration::MAX;
    p.budgets.push(Budget {
        scope: BudgetScope::Global,
        action_kind: None,
        window: Duration::MAX,
        max_actions: Some(u64::MAX),
        max_targets: Some(u64::MAX),
        max_percent: Some(100),
    });
    let mut s = GuardState::new();
    let mut r = delete_pods(&["a"]);
    r.population = Some(Population { pool: "p".into(), size: u64::MAX });
    r.requires_approval = true;
    r.attempt = u32::MAX;
    for now in [Timestamp::from_millis(i64::MIN), Timestamp::EPOCH, Timestamp::from_millis(i64::MAX)] {
        s.record_executed(&r, now);
        let (d, _) = decide(&p, &mut s, &r, now);
        let _ = d.note(&r);
        s.record_failure(&p, &r, "x", now);
        s.prune(&p, now);
    }
    let capacity = scale(u32::MAX, 0, Some(u32::MAX), Some(0));
    let _ = evaluate(&p, &s, &capacity, at(0));
}

#[test]
fn free_kinds_have_no_cooldown_and_spend_no_budget() {
    let policy = GuardPolicy {
        budgets: vec![Budget {
            scope: BudgetScope::Global,
            action_kind: None,
            window: Duration::from_secs(3600),
            max_actions: Some(1),
            max_targets: None,
            max_percent: None,
        }],
        ..GuardPolicy::default()
    };
    let mut state = GuardState::new();
    let probe = request("probe_http", vec![TargetRef::new("url", "http://127.0.0.1:9/health")]);
    for i in 0..5 {
        let now = at(i);
        let (decision, _) = decide(&policy, &mut state, &probe, now);
        assert_eq!(decision, Decision::Allow, "probe {i}");
        state.record_executed(&probe, now);
    }
    // The one change the budget allows is still there after five probes.
    let change = request("http", vec![TargetRef::new("url", "http://127.0.0.1:9/reset")]);
    assert_eq!(decide(&policy, &mut state, &change, at(6)).0, Decision::Allow);
}
