//! Directives end to end against a real agent: the coordinator's agent
//! service runs in this process, so the test drives the `agent` and
//! `agent_snapshot` actuators directly (as the runbook engine does), and the
//! agent is the real `remedy-agent` binary, on loopback.

// Test helpers fail the test by panicking; that is their job.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use remedy_coordinator::actuators::agent::AgentActuator;
use remedy_coordinator::actuators::{ActionCall, ActionReport, ActionStatus, Actuator};
use remedy_coordinator::directives::Directives;
use remedy_e2e::procs::{Agent, eventually};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// The agent service on an ephemeral loopback port: its URL and its hub.
async fn coordinator(dir: &Path) -> (String, Directives) {
    remedy_e2e::in_process::agent_service(dir).await
}

async fn run(actuator: &AgentActuator, kind: &str, params: serde_json::Value, dry_run: bool) -> ActionReport {
    let call = ActionCall {
        incident_id: "INC-000001".into(),
        step_id: "step".into(),
        kind: kind.into(),
        params,
        dry_run,
        deadline: Duration::from_secs(30),
        accepted_risk: None,
    };
    actuator.execute(&call).await
}

fn bytes(report: &ActionReport, key: &str) -> u64 {
    report.evidence.get(key).and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("no number at {key}: {report:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_agent_answers_snapshots_and_refuses_what_it_cannot_run() {
    let dir = tempfile::tempdir().unwrap();
    let (url, directives) = coordinator(&dir.path().join("c")).await;
    let mut agent = Agent::start(&dir.path().join("a"), "node-d", &url).await;
    let registered = eventually("the agent registered for directives", WAIT, || {
        let directives = directives.clone();
        async move { directives.connected().into_iter().find(|a| a.node_name == "node-d") }
    })
    .await;
    assert_eq!(
        registered.capabilities,
        ["reach".to_owned(), "restart_pod".to_owned(), "snapshot".to_owned()].into(),
        "the hello lists what the agent runs"
    );
    eventually("the agent's first resource sample", WAIT, || async {
        (!agent.debug_state().await["snapshot"].is_null()).then_some(())
    })
    .await;
    let actuator = AgentActuator::new(directives.clone());

    // Resources summed over agents (one here); a section the agent does not
    // collect is said to be missing, not reported as zero.
    let report = run(
        &actuator,
        "agent_snapshot",
        json!({ "agents": "all", "include": ["resources", "pods"], "combine": "sum", "timeout": "20s" }),
        false,
    )
    .await;
    assert_eq!(report.status, ActionStatus::Succeeded, "{report:?}");
    assert_eq!((report.evidence["agents"].as_str(), report.evidence["succeeded"].as_str()), ("1", "1"));
    let total = bytes(&report, "memory_total_bytes");
    assert!(total > 0 && bytes(&report, "memory_used_bytes") <= total, "{report:?}");
    assert!(report.evidence.contains_key("cpu_percent"), "{report:?}");
    assert_eq!(report.evidence["nodes.node-d.unavailable.pods"], "not collected by this agent version");
    assert!(!report.evidence.keys().any(|k| k.starts_with("pods")), "no made-up pod figures");
    assert!(report.message.ends_with("not collected: pods"), "{}", report.message);

    // Per node, in a dry run: a snapshot only reads, so it runs anyway.
    let report = run(
        &actuator,
        "agent_snapshot",
        json!({ "agents": { "node": "node-d" }, "include": ["resources", "processes"], "combine": "per_node" }),
        true,
    )
    .await;
    assert_eq!(report.status, ActionStatus::Succeeded, "{report:?}");
    assert!(bytes(&report, "nodes.node-d.memory_total_bytes") > 0);
    assert!(report.evidence.contains_key("nodes.node-d.processes.1.process"), "{report:?}");

    // A directive the agent does not announce is reported, not sent.
    let report = run(&actuator, "agent", json!({ "agents": "all", "directive": "reboot_node" }), false).await;
    assert_eq!(report.status, ActionStatus::Failed, "{report:?}");
    assert_eq!(report.evidence["node-d.outcome"], "unsupported");
    assert_eq!(
        report.evidence["node-d.message"],
        "the agent cannot run `reboot_node`: it announced reach, restart_pod, snapshot"
    );
    assert_eq!(report.evidence["failed"], "1");

    // A directive it knows, with a parameter it refuses: the agent's own answer.
    let report = run(
        &actuator,
        "agent",
        json!({ "agents": { "node": "node-d" }, "directive": "snapshot", "params": { "include": "resources,disks" } }),
        true,
    )
    .await;
    assert_eq!(report.status, ActionStatus::Failed, "{report:?}");
    assert_eq!(report.evidence["node-d.outcome"], "refused");
    assert!(report.evidence["node-d.message"].starts_with("include: unknown section `disks`"), "{report:?}");

    // The agent goes away: named by node, it is reported unreachable.
    agent.kill();
    eventually("the agent's stream to close", WAIT, || {
        let directives = directives.clone();
        async move { directives.connected().is_empty().then_some(()) }
    })
    .await;
    let report = run(
        &actuator,
        "agent_snapshot",
        json!({ "agents": { "node": "node-d" }, "include": ["resources"], "timeout": "5s" }),
        false,
    )
    .await;
    assert_eq!(report.status, ActionStatus::Failed, "{report:?}");
    assert_eq!(report.evidence["unreachable"], "1");
    assert!(report.evidence["nodes.node-d.message"].ends_with("is not connected"), "{report:?}");
    let report = run(&actuator, "agent_snapshot", json!({ "agents": "all", "include": ["resources"] }), false).await;
    assert_eq!(report.status, ActionStatus::Failed);
    assert_eq!(report.message, "`snapshot` not sent: no agent is connected");
}
