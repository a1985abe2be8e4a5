//! The seed catalog under deploy/runbooks: every file parses, validates, and
//! carries the seed's specifics (runbooks-seed.md).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use remedy_shared::FindingKind;
use remedy_shared::catalog::{CatalogKind, peek_kind};
use remedy_shared::runbook::{
    Action, ActionCatalog, ActionKind, Aggregate, Availability, Combine, HttpMethod, PodPhase, Priority, Renderer,
    Runbook, TemplateContext, ValidationReport, load_runbook,
};

/// What the runbook engine offers now; the rest arrives with later issues.
fn engine_catalog() -> ActionCatalog {
    [ActionKind::Http, ActionKind::Agent, ActionKind::Notify, ActionKind::ProbeHttp, ActionKind::AgentSnapshot]
        .into_iter()
        .fold(ActionCatalog::every_kind(Availability::Later), |c, k| c.with(k, Availability::Now))
}

fn catalog() -> BTreeMap<String, (Runbook, ValidationReport)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/runbooks");
    let mut out = BTreeMap::new();
    let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        // Communication templates live beside the runbooks.
        if peek_kind(&text).is_some_and(|kind| kind != CatalogKind::Runbook) {
            continue;
        }
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let (runbook, report) = load_runbook(&name, &text, &engine_catalog()).unwrap_or_else(|e| panic!("{e}"));
        let id = runbook.id().to_owned();
        assert!(out.insert(id.clone(), (runbook, report)).is_none(), "duplicate runbook id {id}");
    }
    out
}

fn runbook(id: &str) -> Runbook {
    catalog().remove(id).unwrap_or_else(|| panic!("no runbook {id}")).0
}

fn actions(rb: &Runbook) -> impl Iterator<Item = &Action> {
    rb.steps.iter().map(|s| &s.action)
}

#[test]
fn the_seven_seed_runbooks_load_with_their_priority_mttr_alert_and_escalation() {
    let all = catalog();
    let ids: Vec<&str> = all.keys().map(String::as_str).collect();
    assert_eq!(ids, ["P0-001", "P0-002", "P0-003", "P1-001", "P1-002", "P2-001", "SEC-001"]);
    let expected = [
        ("P0-001", Priority::P0, 5 * 60, "P0_SystemDown", "p0-chain"),
        ("P0-002", Priority::P0, 5 * 60, "P0_DatabaseDown", "p0-chain"),
        ("P0-003", Priority::P0, 3 * 60, "P0_AuthenticationSystemDown", "p0-chain"),
        ("P1-001", Priority::P1, 15 * 60, "P1_SeverePerformanceDegradation", "p1-chain"),
        ("P1-002", Priority::P1, 15 * 60, "P1_HighErrorRate", "p1-chain"),
        ("P2-001", Priority::P2, 60 * 60, "P2_HighResourceUsage", "p2-chain"),
        ("SEC-001", Priority::Security, 5 * 60, "P1_BruteForceAttackDetected", "security-chain"),
    ];
    for (id, priority, mttr, alert, policy) in expected {
        let (rb, _) = &all[id];
        assert_eq!(rb.priority, priority, "{id}");
        assert_eq!(rb.mttr_target, Duration::from_secs(mttr), "{id}");
        assert!(rb.triggers.matching_alert(alert, &BTreeMap::new()).is_some(), "{id} is triggered by {alert}");
        assert!(rb.triggers.manual, "{id} can be run by hand");
        assert_eq!(rb.escalation.policy, policy, "{id}");
        assert_eq!(rb.escalation.page_on_open, id.starts_with("P0") || id == "SEC-001", "{id}");
        // Everything acts in the seed's namespace.
        for step in &rb.steps {
            let json = serde_json::to_value(&step.action).unwrap_or_default();
            if let Some(ns) = json.as_object().and_then(|o| o.values().next()).and_then(|p| p.get("namespace")) {
                assert_eq!(ns, "saas-idp-production", "{id} step {}", step.id);
            }
        }
    }
    assert!(all["P0-001"].0.metadata.tags.contains(&"total_outage".to_owned()));
    assert!(all["SEC-001"].0.metadata.tags.contains(&"security".to_owned()));
}

#[test]
fn unavailable_actions_are_reported_and_engine_actions_are_not() {
    for (id, (rb, report)) in catalog() {
        for step in &rb.steps {
            let listed = report.unavailable.iter().any(|u| u.step == step.id);
            let now = engine_catalog().availability(step.kind()) == Some(Availability::Now);
            assert_eq!(listed, !now, "{id} step {}", step.id);
        }
    }
    let (_, report) = &catalog()["P0-001"];
    let kinds: Vec<ActionKind> = report.unavailable.iter().map(|u| u.kind).collect();
    assert!(kinds.contains(&ActionKind::Scale) && kinds.contains(&ActionKind::PgSelect1));
}

#[test]
fn p0_001_investigates_scales_clears_failed_pods_and_resets_breakers() {
    let rb = runbook("P0-001");
    let evidence: Vec<ActionKind> = rb.steps.iter().filter(|s| s.is_evidence()).map(|s| s.kind()).collect();
    for kind in [
        ActionKind::ProbeHttp,
        ActionKind::AgentSnapshot,
        ActionKind::PgSelect1,
        ActionKind::RedisPing,
        ActionKind::ListPods,
        ActionKind::ListServices,
    ] {
        assert!(evidence.contains(&kind), "evidence {kind}");
    }
    let scales: BTreeMap<&str, (u32, u32)> = actions(&rb)
        .filter_map(|a| match a {
            Action::Scale(s) => Some((s.name.as_str(), (s.replicas, s.floor))),
            _ => None,
        })
        .collect();
    assert_eq!(scales.get("saas-idp-api").map(|s| s.0), Some(10));
    assert_eq!(scales.get("saas-idp-worker").map(|s| s.0), Some(5));
    assert!(scales.values().all(|(replicas, floor)| *floor >= 1 && floor <= replicas));
    let delete = actions(&rb).find_map(|a| match a {
        Action::DeletePods(d) => Some(d),
        _ => None,
    });
    let delete = delete.unwrap_or_else(|| panic!("deletes failed pods"));
    assert_eq!((delete.selector.as_str(), delete.phase), ("app=saas-idp-api", Some(PodPhase::Failed)));
    assert!(delete.max_count >= 1);

    // The circuit-breaker reset is a POST to the API's admin endpoint,
    // rendered from the declared param, overridable per run.
    let ctx = TemplateContext { params: rb.resolve_params(&BTreeMap::new()).unwrap_or_default(), ..Default::default() };
    let reset = rb.step("reset_circuit_breakers").unwrap_or_else(|| panic!("has a reset"));
    let Ok(Action::Http(call)) = Renderer::new().render_action(&reset.action, &ctx) else { panic!("renders") };
    assert_eq!(call.method, HttpMethod::Post);
    assert_eq!(call.url, "http://saas-idp-api.saas-idp-production.svc:8080/admin/circuit-breaker/reset");

    let checks = &rb.verification.as_ref().unwrap_or_else(|| panic!("verifies")).checks;
    assert!(
        matches!(&checks[0].action, Action::ProbeHttp(p) if p.url.ends_with("/health") && p.expected_status == 200)
    );
    assert!(rb.step("failover_database").is_some_and(|s| s.requires_approval(&rb.guard_rails)));
}

#[test]
fn p0_002_fences_promotes_repoints_and_restarts_with_one_automatic_failover() {
    let rb = runbook("P0-002");
    assert!(actions(&rb).any(|a| matches!(a, Action::PgFailover(f) if f.fence_primary)));
    assert!(actions(&rb).any(
        |a| matches!(a, Action::PatchConfigmap(c) if c.name == "app-config" && c.data.contains_key("DATABASE_URL"))
    ));
    // The new primary's URL comes from the database, not from a guess.
    assert!(actions(&rb).any(|a| matches!(a, Action::PatchConfigmap(c)
        if c.data.get("DATABASE_URL").is_some_and(|v| v.contains("steps.new_primary.app_url")))));
    assert!(rb.step("failover").is_some_and(|s| s.requires_approval(&rb.guard_rails)));
    let restarted: Vec<&str> = actions(&rb)
        .filter_map(|a| match a {
            Action::RolloutRestart(r) => Some(r.name.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(restarted, ["saas-idp-api", "saas-idp-worker"]);
    assert_eq!(rb.guard_rails.max_attempts, 1);
    assert!(rb.guard_rails.budgets_for(ActionKind::PgFailover).any(|b| b.max_actions == Some(1)));
}

#[test]
fn p0_003_flushes_a_named_auth_cache_database_restarts_and_checks_both_endpoints() {
    let rb = runbook("P0-003");
    assert!(actions(&rb).any(|a| matches!(a, Action::RedisFlush(f) if f.db.is_some() && !f.all_databases)));
    assert!(actions(&rb).any(|a| matches!(a, Action::RolloutRestart(r) if r.name == "auth-service")));
    let urls: Vec<String> = rb
        .verification
        .iter()
        .flat_map(|v| &v.checks)
        .filter_map(|c| match &c.action {
            Action::ProbeHttp(p) => Some(p.url.clone()),
            _ => None,
        })
        .collect();
    assert!(urls.iter().any(|u| u.ends_with("/auth/health")) && urls.iter().any(|u| u.ends_with("/auth/providers")));
}

#[test]
fn p1_001_patches_the_hpa_and_enables_breakers_for_non_critical_services() {
    let rb = runbook("P1-001");
    assert!(actions(&rb).any(|a| matches!(a, Action::PatchHpa(h) if h.min_replicas == 5 && h.max_replicas == 20)));
    assert!(
        actions(&rb).any(|a| matches!(a, Action::CircuitBreaker(c) if c.services == ["analytics", "recommendations"]))
    );
    assert!(actions(&rb).all(|a| !matches!(a, Action::RedisFlush(f) if f.all_databases)), "cache actions only scoped");
}

#[test]
fn p1_002_sums_error_categories_across_nodes_with_the_seed_thresholds() {
    let rb = runbook("P1-002");
    let thresholds: BTreeMap<&str, f64> = rb
        .triggers
        .findings
        .iter()
        .inspect(|t| assert_eq!((t.kind, t.aggregate), (FindingKind::HighErrorRate, Aggregate::SumAcrossNodes)))
        .filter_map(|t| Some((t.evidence.as_deref()?, t.above?)))
        .collect();
    assert_eq!(thresholds, BTreeMap::from([("database", 10.0), ("timeout", 5.0)]));
    let errors = rb.step("errors").unwrap_or_else(|| panic!("collects errors"));
    assert!(matches!(&errors.action, Action::AgentSnapshot(s) if s.combine == Combine::Sum));

    let restart = rb.step("restart_api").and_then(|s| s.when.clone()).unwrap_or_else(|| panic!("conditional restart"));
    let raise = rb.step("raise_timeouts").unwrap_or_else(|| panic!("raises timeouts"));
    let Action::PatchConfigmap(patch) = &raise.action else { panic!("patches config") };
    assert_eq!(patch.name, "app-config");
    assert_eq!((patch.data["REQUEST_TIMEOUT"].as_str(), patch.data["DB_TIMEOUT"].as_str()), ("30000", "10000"));
    let raise_when = raise.when.clone().unwrap_or_else(|| panic!("conditional patch"));
    let ctx = |database: u32, timeout: u32| serde_json::json!({"steps": {"errors": {"database": database, "timeout": timeout}}});
    assert_eq!(restart.evaluate(&ctx(11, 0)), Ok(true));
    assert_eq!(restart.evaluate(&ctx(10, 0)), Ok(false));
    assert_eq!(raise_when.evaluate(&ctx(0, 6)), Ok(true));
    assert_eq!(raise_when.evaluate(&ctx(0, 5)), Ok(false));
}

#[test]
fn p2_001_cleans_old_logs_under_the_seed_roots_and_scales_non_essentials_to_one() {
    let rb = runbook("P2-001");
    let cleanup = actions(&rb).find_map(|a| match a {
        Action::LogCleanup(l) => Some(l),
        _ => None,
    });
    let roots: Vec<(&str, Duration, &[String])> = cleanup
        .unwrap_or_else(|| panic!("cleans logs"))
        .roots
        .iter()
        .map(|r| (r.path.as_str(), r.older_than, r.globs.as_slice()))
        .collect();
    let day = Duration::from_secs(86_400);
    let log = ["*.log".to_owned()];
    assert_eq!(roots, [("/tmp", day, &log[..]), ("/var/log", 7 * day, &log[..])]);
    let scaled: BTreeMap<&str, u32> = actions(&rb)
        .filter_map(|a| match a {
            Action::Scale(s) => Some((s.name.as_str(), s.replicas)),
            _ => None,
        })
        .collect();
    assert_eq!(scaled, BTreeMap::from([("analytics-service", 1), ("recommendation-engine", 1)]));
    assert!(actions(&rb).any(|a| matches!(a, Action::GcNudge(g) if g.selector == "app=saas-idp-api")));
}

#[test]
fn sec_001_blocks_at_the_edge_invalidates_sessions_hardens_config_and_tells_security() {
    let rb = runbook("SEC-001");
    assert!(rb.triggers.findings.iter().any(|t| t.kind == FindingKind::BruteForce));
    let block = actions(&rb).find_map(|a| match a {
        Action::BlockIp(b) => Some(b),
        _ => None,
    });
    assert!(block.is_some_and(|b| b.edge && b.duration > Duration::ZERO));
    assert!(actions(&rb).any(
        |a| matches!(a, Action::RedisDeleteKeys(r) if r.pattern == "session:{user}:*" && r.scoped_to_users.is_some())
    ));
    assert!(actions(&rb).any(|a| matches!(a, Action::PatchConfigmap(c)
        if c.name == "security-config" && c.data["RATE_LIMIT_STRICT"] == "true" && c.data["MFA_REQUIRED"] == "true")));
    assert!(actions(&rb).any(|a| matches!(a, Action::Notify(n) if n.channel == "security-slack")));

    // The attacker's address comes from the finding, else from the alert.
    let mut ctx = TemplateContext::default();
    ctx.alert.labels.insert("source_ip".into(), "203.0.113.50".into());
    let step = rb.step("block_attacker").unwrap_or_else(|| panic!("blocks"));
    let rendered = Renderer::new().render_action(&step.action, &ctx);
    assert!(matches!(rendered, Ok(Action::BlockIp(b)) if b.ip == "203.0.113.50"));
    // Without either, rendering fails rather than blocking a blank address.
    assert!(Renderer::new().render_action(&step.action, &TemplateContext::default()).is_err());
}
