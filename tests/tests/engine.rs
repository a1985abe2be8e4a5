//! The runbook engine end to end, with real processes: the coordinator
//! binary with the seed catalog, driven by Alertmanager version 4 payloads
//! and manual runs, acting on a local HTTP server that plays the platform
//! and its webhooks. Every address is on loopback.

use std::path::{Path, PathBuf};
use std::time::Duration;

use remedy_e2e::procs::{eventually, http_request, remedyctl};
use remedy_e2e::runs::{
    about, approve, incident_for, now_rfc3339, post_alert, run_end, run_manual, runbook, seed_catalog, show, start,
    status_of, timeline,
};
use remedy_e2e::world::{World, alert_payload};
use remedy_proto::v1 as pb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_seed_runbook_runs_from_its_alert_through_its_timeline() {
    let dir = tempfile::tempdir().expect("temp dir");
    let world = World::start().await;
    let catalog = seed_catalog(dir.path(), &world);
    let coordinator = start(dir.path(), &world, &catalog, "").await;
    let started = now_rfc3339();

    // P0-001, delivered five times (Alertmanager retries): one incident, one
    // action.
    let payload = alert_payload("P0_SystemDown", &[("severity", "critical")], "firing", &started);
    for _ in 0..5 {
        post_alert(&coordinator, &payload).await;
    }
    let p0 = incident_for(&coordinator, "P0-001").await;
    let entries = run_end(&coordinator, &p0.id).await;
    let log = show(&entries);
    assert!(entries.iter().any(|e| e.kind == "runbook" && e.message.contains("matched alert P0_SystemDown")), "{log}");
    assert!(entries.iter().any(|e| e.kind == "verification" && e.message.contains("passed")), "{log}");
    assert!(entries.iter().any(|e| e.message.contains("runbook P0-001 finished")), "{log}");
    let resets = world.requests("POST", "/admin/circuit-breaker/reset");
    assert_eq!(resets.len(), 1, "five deliveries, one reset: {log}");
    assert_eq!(resets[0].headers.get("x-remedy-incident"), Some(&p0.id), "the template filled the header");
    let status_page = world.requests("POST", "/hooks/status-page");
    assert_eq!(status_page.len(), 1);
    assert!(status_page[0].body.contains(&p0.id), "{}", status_page[0].body);
    // page_on_open: the p0-chain's first level (the primary on-call, who
    // is reached through `oncall`) is told, written with the P0 notice.
    let pages = world.wait_for("POST", "/hooks/oncall", 1).await;
    assert!(pages.iter().any(|p| p.body.contains("[P0 INCIDENT]") && p.body.contains(&p0.id)), "{pages:?}");
    assert!(pages[0].headers.contains_key("x-remedy-signature"), "webhooks are signed: {:?}", pages[0].headers);
    // This coordinator has no cluster: scaling rehearses through the same
    // rails, and without the current replicas the rails refuse it.
    let scale = about(&entries, "scale_api");
    assert!(scale.iter().any(|e| e.details.get("mode").map(String::as_str) == Some("dry_run")), "{log}");
    assert!(scale.iter().any(|e| e.details.get("rail").map(String::as_str) == Some("missing_capacity")), "{log}");
    // The database is only failed over when the API is still down.
    assert!(about(&entries, "failover_database").iter().any(|e| e.message.contains("skipped")), "{log}");
    // Every decision says why.
    assert!(entries.iter().filter(|e| e.kind == "decision").all(|e| e.details.contains_key("outcome")), "{log}");

    // The other seed runbooks, each from its own alert.
    type Labels<'a> = &'a [(&'a str, &'a str)];
    let others: &[(&str, &str, Labels)] = &[
        ("P0-002", "P0_DatabaseDown", &[]),
        ("P0-003", "P0_AuthenticationSystemDown", &[]),
        ("P1-001", "P1_SeverePerformanceDegradation", &[]),
        ("P1-002", "P1_HighErrorRate", &[]),
        ("P2-001", "P2_HighResourceUsage", &[]),
        ("SEC-001", "P1_BruteForceAttackDetected", &[("source_ip", "203.0.113.7"), ("users", "alice,bob")]),
    ];
    for (runbook, alert, labels) in others {
        post_alert(&coordinator, &alert_payload(alert, labels, "firing", &started)).await;
        let incident = incident_for(&coordinator, runbook).await;
        run_end(&coordinator, &incident.id).await;
        // Each either acted (a result) or handed the incident to people,
        // who were told (the escalator pages after the escalation is
        // recorded, so that entry may follow the end of the run).
        let what = format!("{runbook} to record a result or a page");
        let entries = eventually(&what, Duration::from_secs(30), || async {
            let entries = timeline(&coordinator, &incident.id).await;
            entries.iter().any(|e| e.kind == "result" || e.kind == "notified").then_some(entries)
        })
        .await;
        let log = show(&entries);
        assert!(
            entries.iter().any(|e| e.kind == "runbook" && e.message.contains(&format!("matched alert {alert}"))),
            "{runbook}:\n{log}"
        );
        assert!(entries.iter().any(|e| e.kind == "decision"), "{runbook} decided nothing:\n{log}");
        assert!(incident.mttr_target_ms > 0, "{runbook} has its MTTR target");
    }

    // SEC-001 weighs the block of the address the alert named; with no
    // agent that can block connected, the block fails saying so (never
    // "blocked on 0 nodes"), and the security chain is told, with the address.
    let sec = incident_for(&coordinator, "SEC-001").await;
    let entries = timeline(&coordinator, &sec.id).await;
    let log = show(&entries);
    let block = about(&entries, "block_attacker");
    assert!(
        block.iter().any(|e| e.kind == "decision" && e.details.get("targets").is_some_and(|t| t == "ip/203.0.113.7")),
        "{log}"
    );
    assert!(
        block.iter().any(|e| e.kind == "result"
            && e.details.get("status").map(String::as_str) == Some("failed")
            && e.message.contains("no agent can block 203.0.113.7")),
        "{log}"
    );
    assert!(entries.iter().any(|e| e.kind == "escalated" && e.message.contains("security-chain")), "{log}");
    eventually("the security chain to be paged with the address", Duration::from_secs(30), || async {
        world.requests("POST", "/hooks/oncall").iter().any(|r| r.body.contains("203.0.113.7")).then_some(())
    })
    .await;
    // No agent is connected: a snapshot of all agents is an empty target set,
    // refused, never "everyone".
    assert!(
        about(&entries, "auth_failures")
            .iter()
            .any(|e| e.details.get("rail").map(String::as_str) == Some("empty_target_set")),
        "{log}"
    );

    // The review draft of SEC-001, through remedyctl: the automation, the
    // guard rail's refusal, the escalation and the people told, in the
    // order they happened, and the sections people fill in.
    let told = eventually("people told that automation gave up", Duration::from_secs(30), || async {
        let entries = timeline(&coordinator, &sec.id).await;
        entries.iter().any(|e| e.kind == "notified" && e.message.contains("automation gave up")).then_some(())
    });
    told.await;
    let (status, review, err) = remedyctl(&coordinator.url(), &["incident", "review", &sec.id]);
    assert!(status.success(), "{err}");
    let row = |needle: &str| {
        review
            .lines()
            .position(|l| l.starts_with('|') && l.contains(needle))
            .unwrap_or_else(|| panic!("no timeline row with {needle:?} in\n{review}"))
    };
    let order = [
        row("matched alert P1_BruteForceAttackDetected"),
        row("told engineer-"),
        row("empty_target_set"),
        row("ip/203.0.113.7"),
        row("no agent can block 203.0.113.7"),
        row("escalated to security-chain"),
        row("automation gave up"),
    ];
    assert!(order.windows(2).all(|w| w[0] < w[1]), "rows out of order {order:?} in\n{review}");
    for section in ["# Post-Incident Review - ", "## Timeline", "## What Went Well", "## Action Items"] {
        assert!(review.contains(section), "{section} missing from\n{review}");
    }
    let (status, report, err) = remedyctl(&coordinator.url(), &["report", "--since", "1h", "-o", "json"]);
    assert!(status.success(), "{err}");
    let report: serde_json::Value = serde_json::from_str(&report).expect("the report is JSON");
    assert_eq!(report["total_incidents"], 7, "{report}");
    assert_eq!(report["p0_incidents"], 3, "{report}");
    assert_eq!(report["security_incidents"], 1, "{report}");
    // The same figures for Prometheus, over the last 30 days.
    eventually("the incident gauges on /metrics", Duration::from_secs(30), || async {
        let (_, text) = http_request(coordinator.http, "GET", "/metrics", None).await.ok()?;
        // The priority rows partition the incidents: they add up to 7.
        let rows: f64 = text
            .lines()
            .filter(|l| l.starts_with("remedy_window_incidents{window=\"30d\","))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum();
        (rows == 7.0
            && text.contains("remedy_window_incidents{window=\"30d\",priority=\"P0\"} 3")
            && text.contains("remedy_window_security_incidents{window=\"30d\"} 1"))
        .then_some(())
    })
    .await;

    // The alert's resolution resolves the incident.
    post_alert(&coordinator, &alert_payload("P0_SystemDown", &[("severity", "critical")], "resolved", &started)).await;
    eventually("P0-001's incident to resolve", Duration::from_secs(30), || async {
        let mut admin = coordinator.admin().await;
        let i = admin.get_incident(pb::GetIncidentRequest { id: p0.id.clone() }).await.ok()?.into_inner();
        (i.state == pb::IncidentState::Resolved as i32).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_killed_mid_action_neither_repeats_nor_loses_the_step() {
    let dir = tempfile::tempdir().expect("temp dir");
    let world = World::start().await;
    let steps = format!(
        "  - id: slow_reset\n    http: {{method: POST, url: '{0}/hang/reset', timeout: 60s}}\n    on_failure: next\n\
         \x20 - id: after\n    http: {{method: POST, url: '{0}/after'}}\n",
        world.url()
    );
    let catalog = runbook(dir.path(), "KILL", &steps, "");
    let mut coordinator = start(dir.path(), &world, &catalog, "").await;
    let id = run_manual(&coordinator, "KILL", false).await;
    // The request is in flight: its idempotency key was recorded first.
    world.wait_for("POST", "/hang/reset", 1).await;
    coordinator.kill();
    world.release_hung();
    coordinator.restart().await;

    let entries = run_end(&coordinator, &id).await;
    let log = show(&entries);
    assert!(
        entries
            .iter()
            .any(|e| e.message.contains("was started but its end was never recorded")
                && e.message.contains("slow_reset")),
        "the interrupted step is on the record:\n{log}"
    );
    assert_eq!(world.requests("POST", "/hang/reset").len(), 1, "not run twice:\n{log}");
    assert_eq!(world.requests("POST", "/after").len(), 1, "the next step still ran once:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_rails_refuse_through_the_engine_in_live_and_dry_run_alike() {
    let dir = tempfile::tempdir().expect("temp dir");
    let world = World::start().await;
    let steps = format!(
        "  - id: reset\n    http: {{method: POST, url: '{}/admin/reset'}}\n    on_failure: next\n",
        world.url()
    );
    runbook(dir.path(), "COOL", &steps, "guard_rails: {cooldown: 1h}\n");
    runbook(
        dir.path(),
        "BUDGET",
        &steps.replace("/admin/reset", "/admin/budgeted"),
        "guard_rails:\n  cooldown: 0s\n  budgets: [{actions: all, window: 1h, max_actions: 1}]\n",
    );
    let failing =
        format!("  - id: broken\n    http: {{method: POST, url: '{}/fail/x'}}\n    on_failure: next\n", world.url());
    let catalog = runbook(dir.path(), "BREAK", &failing, "guard_rails: {cooldown: 0s, max_attempts: 10}\n");
    let approval = format!(
        "  - id: gated\n    http: {{method: POST, url: '{}/admin/gated'}}\n    requires_approval: true\n    on_failure: next\n",
        world.url()
    );
    runbook(dir.path(), "GATE", &approval, "guard_rails: {cooldown: 0s}\n");
    runbook(
        dir.path(),
        "LAPSE",
        &approval.replace("/admin/gated", "/admin/lapsed"),
        "guard_rails: {approval_ttl: 1s}\n",
    );
    let coordinator = start(dir.path(), &world, &catalog, "").await;

    let refusal = |entries: &[pb::TimelineEntry], step: &str| -> Option<String> {
        // The last word on the step: a wait for approval comes before its end.
        about(entries, step).iter().rev().find_map(|e| e.details.get("rail").cloned())
    };

    // Cooldown: the second run may not touch the same URL within the hour.
    let first = run_manual(&coordinator, "COOL", false).await;
    run_end(&coordinator, &first).await;
    let second = run_manual(&coordinator, "COOL", false).await;
    let entries = run_end(&coordinator, &second).await;
    assert_eq!(refusal(&entries, "reset").as_deref(), Some("cooldown"), "{}", show(&entries));
    assert_eq!(world.requests("POST", "/admin/reset").len(), 1);
    // A rehearsal weighs the live history too: the same refusal, and nothing
    // is sent.
    let rehearsal = run_manual(&coordinator, "COOL", true).await;
    let entries = run_end(&coordinator, &rehearsal).await;
    assert_eq!(refusal(&entries, "reset").as_deref(), Some("cooldown"), "{}", show(&entries));
    assert!(about(&entries, "reset").iter().any(|e| e.message.starts_with("[dry_run] refused")), "{}", show(&entries));
    assert_eq!(world.requests("POST", "/admin/reset").len(), 1, "a rehearsal sends nothing");

    // Budget: one action per hour for this runbook; the second is refused.
    let a = run_manual(&coordinator, "BUDGET", false).await;
    run_end(&coordinator, &a).await;
    let b = run_manual(&coordinator, "BUDGET", false).await;
    let entries = run_end(&coordinator, &b).await;
    assert_eq!(refusal(&entries, "reset").as_deref(), Some("budget_exhausted"), "{}", show(&entries));
    assert_eq!(world.requests("POST", "/admin/budgeted").len(), 1);

    // Breaker: three failed actions open the runbook's breaker; the fourth
    // run is refused until a person resets it.
    for _ in 0..3 {
        let id = run_manual(&coordinator, "BREAK", false).await;
        run_end(&coordinator, &id).await;
    }
    let id = run_manual(&coordinator, "BREAK", false).await;
    let entries = run_end(&coordinator, &id).await;
    assert_eq!(refusal(&entries, "broken").as_deref(), Some("breaker_open"), "{}", show(&entries));
    assert_eq!(world.requests("POST", "/fail/x").len(), 3);
    let dry = run_manual(&coordinator, "BREAK", true).await;
    let entries = run_end(&coordinator, &dry).await;
    assert_eq!(refusal(&entries, "broken").as_deref(), Some("breaker_open"), "dry-run shows the same refusal");
    let mut admin = coordinator.admin().await;
    admin
        .reset_breaker(pb::ResetBreakerRequest { scope: "runbook/BREAK".into(), requested_by: "tester".into() })
        .await
        .expect("reset the breaker");
    let id = run_manual(&coordinator, "BREAK", false).await;
    run_end(&coordinator, &id).await;
    assert_eq!(world.requests("POST", "/fail/x").len(), 4, "after the reset, automation acts again");

    // Global pause: refused live and in dry-run, with who paused named.
    admin
        .pause_automation(pb::PauseAutomationRequest { requested_by: "tester".into(), reason: "freeze".into() })
        .await
        .expect("pause");
    for dry_run in [false, true] {
        let id = run_manual(&coordinator, "BUDGET", dry_run).await;
        let entries = run_end(&coordinator, &id).await;
        assert_eq!(refusal(&entries, "reset").as_deref(), Some("global_pause"), "{}", show(&entries));
    }
    admin.resume_automation(pb::ResumeAutomationRequest { requested_by: "tester".into() }).await.expect("resume");

    // Approval: granted, the action runs once.
    let id = run_manual(&coordinator, "GATE", false).await;
    approve(&coordinator, &id, "gated").await;
    run_end(&coordinator, &id).await;
    assert_eq!(world.requests("POST", "/admin/gated").len(), 1);

    // Approval left unanswered: it expires, the action is refused.
    let id = run_manual(&coordinator, "LAPSE", false).await;
    let entries = run_end(&coordinator, &id).await;
    assert_eq!(refusal(&entries, "gated").as_deref(), Some("approval_expired"), "{}", show(&entries));
    assert!(world.requests("POST", "/admin/lapsed").is_empty(), "an expired approval runs nothing");
}

fn write_runbook(dir: &Path, id: &str, text: &str) -> PathBuf {
    let target = dir.join("runbooks");
    std::fs::create_dir_all(&target).expect("create the catalog directory");
    let text = format!("apiVersion: remedy.dev/v1\nkind: Runbook\nmetadata: {{id: {id}, title: {id} test}}\n{text}");
    std::fs::write(target.join(format!("{id}.yaml")), text).expect("write the runbook");
    remedy_e2e::runs::policy(&target, "test-chain");
    target
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_findings_start_runbooks_alone_and_summed_across_nodes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let world = World::start().await;
    let tail = "priority: P2\nmttr_target: 30m\nescalation: {policy: test-chain}\n";
    write_runbook(
        dir.path(),
        "DISK",
        &format!(
            "{tail}triggers: {{findings: [{{kind: disk_usage_high, matchers: ['mount=\"/var\"']}}]}}\n\
             steps:\n  - id: usage\n    agent_snapshot: {{agents: reporting, include: [resources], combine: sum}}\n\
             \x20 - id: clean\n    when: steps.usage.memory_total_bytes > 0\n\
             \x20   http: {{method: POST, url: '{}/disk/{{{{ finding.labels.node }}}}'}}\n",
            world.url()
        ),
    );
    let catalog = write_runbook(
        dir.path(),
        "ERRORS",
        &format!(
            "{tail}triggers:\n  findings:\n    - {{kind: high_error_rate, matchers: ['app=\"api\"'], evidence: database, above: 10, aggregate: sum_across_nodes}}\n\
             steps:\n  - id: restart\n    http: {{method: POST, url: '{}/errors/restart'}}\n",
            world.url()
        ),
    );
    let coordinator = start(dir.path(), &world, &catalog, "").await;
    let agents = [
        remedy_e2e::procs::Agent::start(&dir.path().join("a"), "node-a", &coordinator.url()).await,
        remedy_e2e::procs::Agent::start(&dir.path().join("b"), "node-b", &coordinator.url()).await,
    ];

    // One finding starts DISK; a finding its matchers exclude does not.
    let disk = |mount: &str| {
        serde_json::json!([{ "kind": "disk_usage_high", "severity": "warning", "target": format!("mount/node-a:{mount}"),
            "summary": format!("{mount} at 95%"), "labels": { "mount": mount, "node": "node-a" } }])
    };
    assert_eq!(agents[0].submit(&disk("/data")).await.0, 202);
    assert_eq!(agents[0].submit(&disk("/var")).await.0, 202);
    let incident = incident_for(&coordinator, "DISK").await;
    let entries = run_end(&coordinator, &incident.id).await;
    // The reporting agent answered the snapshot with its node's real memory,
    // and the next step's condition read it.
    let usage = about(&entries, "usage");
    assert!(
        usage.iter().any(|e| e.kind == "result" && e.details.get("evidence.agents").map(String::as_str) == Some("1")),
        "{}",
        show(&entries)
    );
    assert_eq!(world.requests("POST", "/disk/node-a").len(), 1, "{}", show(&entries));

    // Six database errors on each node: neither alone is above ten, the sum is.
    let errors = |node: &str, n: u32| {
        serde_json::json!([{ "kind": "high_error_rate", "severity": "warning", "target": format!("pod/{node}-api"),
            "summary": format!("{n} database errors"), "labels": { "app": "api", "node": node },
            "evidence": { "database": n.to_string() } }])
    };
    assert_eq!(agents[0].submit(&errors("node-a", 6)).await.0, 202);
    // The first node's six are persisted before the second's arrive.
    eventually("node-a's error finding", Duration::from_secs(30), || async {
        let mut admin = coordinator.admin().await;
        let list =
            admin.list_findings(pb::ListFindingsRequest { kind: "high_error_rate".into(), ..Default::default() });
        (list.await.ok()?.into_inner().findings.len() == 1).then_some(())
    })
    .await;
    let mut admin = coordinator.admin().await;
    let listed = admin
        .list_incidents(pb::ListIncidentsRequest { include_resolved: true, ..Default::default() })
        .await
        .expect("list");
    assert!(listed.into_inner().incidents.iter().all(|i| i.runbook_id != "ERRORS"), "six alone start nothing");
    assert_eq!(agents[1].submit(&errors("node-b", 6)).await.0, 202);
    let summed = incident_for(&coordinator, "ERRORS").await;
    assert_eq!(summed.kind, "runbook ERRORS");
    assert!(summed.summary.contains("summed over 2 nodes is 12"), "{}", summed.summary);
    run_end(&coordinator, &summed.id).await;
    assert_eq!(world.requests("POST", "/errors/restart").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incident_late_on_its_mttr_target_raises_a_finding_cleared_when_it_closes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let world = World::start().await;
    let catalog = write_runbook(
        dir.path(),
        "LATE",
        &format!(
            "priority: P1\nmttr_target: 2s\nescalation: {{policy: test-chain}}\ntriggers: {{manual: true}}\n\
             steps:\n  - id: slow\n    http: {{method: POST, url: '{}/hang/late', timeout: 60s}}\n",
            world.url()
        ),
    );
    let coordinator = start(dir.path(), &world, &catalog, "expiry_sweep_interval: 100ms\n").await;
    let id = run_manual(&coordinator, "LATE", false).await;
    let entries = eventually("the MTTR breach on the timeline", Duration::from_secs(30), || async {
        let entries = timeline(&coordinator, &id).await;
        entries
            .iter()
            .any(|e| e.kind == "mttr" && e.details.get("status").map(String::as_str) == Some("breached"))
            .then_some(entries)
    })
    .await;
    assert!(
        entries.iter().any(|e| e.kind == "mttr" && e.details.get("status").map(String::as_str) == Some("at_risk")),
        "at risk comes before breached:\n{}",
        show(&entries)
    );
    let mut admin = coordinator.admin().await;
    let late = |admin: &mut remedy_proto::v1::admin_service_client::AdminServiceClient<tonic::transport::Channel>| {
        let mut admin = admin.clone();
        async move {
            let list = admin
                .list_findings(pb::ListFindingsRequest { kind: "mttr_at_risk".into(), ..Default::default() })
                .await
                .ok()?
                .into_inner();
            Some(list.findings.into_iter().filter_map(|f| f.finding).collect::<Vec<_>>())
        }
    };
    let found = late(&mut admin).await.unwrap_or_default();
    assert!(found.iter().any(|f| f.target == format!("incident/{id}")), "{found:?}");
    admin
        .resolve_incident(pb::IncidentCommand {
            id: id.clone(),
            requested_by: "tester".into(),
            reason: "fixed by hand".into(),
        })
        .await
        .expect("resolve");
    world.release_hung();
    eventually("the MTTR finding cleared", Duration::from_secs(30), || {
        let mut admin = admin.clone();
        async move {
            let found = late(&mut admin).await?;
            found.iter().any(|f| f.state == pb::FindingState::Cleared as i32).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_leaves_nothing_that_refuses_the_live_run_after_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let world = World::start().await;
    // A rollout restart with a ten-minute cooldown. No cluster is
    // configured, so the live run rehearses it too, on the same rails.
    let catalog = runbook(
        dir.path(),
        "RESIZE",
        "  - id: shrink\n    rollout_restart: {kind: Deployment, namespace: shop, name: analytics}\n",
        "guard_rails: {cooldown: 10m}\n",
    );
    let coordinator = start(dir.path(), &world, &catalog, "").await;
    let dry = run_manual(&coordinator, "RESIZE", true).await;
    let entries = run_end(&coordinator, &dry).await;
    assert_eq!(status_of(&entries, "shrink").as_deref(), Some("dry_run"), "{}", show(&entries));

    let live = run_manual(&coordinator, "RESIZE", false).await;
    let entries = run_end(&coordinator, &live).await;
    let log = show(&entries);
    assert!(!log.contains("cooling down"), "the dry run's would-have scale refused the live run:\n{log}");
    assert_eq!(status_of(&entries, "shrink").as_deref(), Some("dry_run"), "rehearsed, not refused:\n{log}");

    // Neither run changed anything, and neither record says otherwise: the
    // outcome is a field, and it reads "rehearsed only" for both.
    let mut admin = coordinator.admin().await;
    for id in [&dry, &live] {
        let incident = admin.get_incident(pb::GetIncidentRequest { id: id.clone() }).await.expect("get").into_inner();
        let outcome = incident.run_outcome.clone().unwrap_or_else(|| panic!("no outcome on {id}"));
        assert_eq!(outcome.verdict, "rehearsed_only", "{id}: {outcome:?}");
        assert_eq!((outcome.steps_rehearsed, outcome.steps_succeeded), (1, 0), "{id}: {outcome:?}");
        assert_eq!(outcome.verification, "not_configured", "{id}: {outcome:?}");
        let end = incident.timeline.iter().rev().find(|e| e.kind == "runbook").map(|e| e.message.clone());
        assert_eq!(
            end.as_deref(),
            Some(
                "runbook RESIZE finished: rehearsed only, nothing changed (1 rehearsed); the runbook has no verification"
            ),
            "{id}"
        );
    }

    // The dry run is a drill: it stays out of the figures unless asked for.
    let figures = |include_drills: bool| {
        let mut admin = admin.clone();
        async move {
            let request = pb::GetReportRequest { include_drills, ..Default::default() };
            let json = admin.get_report(request).await.expect("report").into_inner().json;
            let report: serde_json::Value = serde_json::from_str(&json).expect("the report is JSON");
            report["total_incidents"].as_u64().unwrap_or_default()
        }
    };
    assert_eq!(figures(false).await, 1, "only the live run counts");
    assert_eq!(figures(true).await, 2, "with drills, both");
}
