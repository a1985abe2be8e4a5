//! Driving the coordinator's runbook engine from tests: the seed catalog
//! pointed at a local world server, a configuration whose webhooks reach
//! it, alerts in, and the timeline read back until the run ends.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use remedy_proto::v1 as pb;

use crate::procs::{Coordinator, eventually};
use crate::world::World;

/// The hosts the seed catalog names, all redirected to the world server so
/// no test traffic leaves loopback.
pub const SEED_HOSTS: &[&str] = &[
    "http://saas-idp-api.saas-idp-production.svc:8080",
    "http://auth-service.saas-idp-production.svc:8080",
    "http://api-gateway.saas-idp-production.svc:8080",
];

/// Copies the seed catalog to `dir`, pointing its URLs at the world.
pub fn seed_catalog(dir: &Path, world: &World) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/runbooks");
    let target = dir.join("runbooks");
    std::fs::create_dir_all(&target).expect("create the catalog directory");
    for entry in std::fs::read_dir(&source).expect("read deploy/runbooks") {
        let path = entry.expect("a catalog entry").path();
        let mut text = std::fs::read_to_string(&path).expect("read a seed runbook");
        for host in SEED_HOSTS {
            text = text.replace(host, &world.url());
        }
        // Verification windows of minutes, shortened: a check that cannot
        // pass here (no agent is connected) escalates in seconds.
        for (long, short) in
            [("within: 30m", "within: 3s"), ("within: 10m", "within: 3s"), ("interval: 1m", "interval: 1s")]
        {
            text = text.replace(long, short);
        }
        assert!(!text.contains(".svc"), "{} still names a cluster address", path.display());
        std::fs::write(target.join(path.file_name().expect("a file name")), text).expect("write a runbook");
    }
    target
}

/// The people the seed catalog's escalation policies and schedules name.
pub const SEED_PEOPLE: &[&str] =
    &["engineer-1", "engineer-2", "engineer-3", "engineering-manager", "cto", "ceo", "security-lead"];

/// A coordinator configuration whose channels all post to the world (as
/// generic webhooks, `/hooks/<channel>`), with the seed's people all
/// reached through `oncall`.
pub fn config(dir: &Path, world: &World, extra: &str) -> PathBuf {
    let hooks = ["status-page", "executives", "customer-notifications", "oncall", "security-slack"];
    let secret = webhook_secret(dir);
    let mut text = String::from("channels:\n");
    for hook in hooks {
        text.push_str(&format!(
            "  {hook}: {{type: webhook, url: '{}/hooks/{hook}', secret_file: '{}', \
             retries: {{attempts: 2, initial: 10ms, max: 50ms}}}}\n",
            world.url(),
            secret.display()
        ));
    }
    text.push_str("people:\n");
    for person in SEED_PEOPLE {
        text.push_str(&format!("  {person}: {{notify: [oncall]}}\n"));
    }
    text.push_str(extra);
    let path = dir.join("coordinator.yaml");
    std::fs::write(&path, text).expect("write the coordinator configuration");
    path
}

/// The key test webhooks sign their payloads with, written under `dir`.
pub fn webhook_secret(dir: &Path) -> PathBuf {
    let path = dir.join("webhook-secret");
    std::fs::write(&path, "test-signing-key").expect("write the webhook secret");
    path
}

/// Writes an escalation policy `id` (tell the `oncall` channel at once)
/// into a catalog directory, for catalogs tests write themselves.
pub fn policy(catalog: &Path, id: &str) {
    let text = format!(
        "apiVersion: remedy.dev/v1\nkind: EscalationPolicy\nmetadata: {{id: {id}}}\n\
         levels: [{{name: on-call, after: 0m, notify: [{{channel: oncall}}]}}]\n"
    );
    std::fs::write(catalog.join(format!("{id}.policy.yaml")), text).expect("write the test policy");
}

pub async fn start(dir: &Path, world: &World, runbooks: &Path, extra_config: &str) -> Coordinator {
    start_with_args(dir, world, runbooks, extra_config, &[]).await
}

/// As [`start`], with more command-line arguments.
pub async fn start_with_args(
    dir: &Path,
    world: &World,
    runbooks: &Path,
    extra_config: &str,
    extra_args: &[&str],
) -> Coordinator {
    let config = config(dir, world, extra_config);
    let mut args =
        vec!["--config", config.to_str().unwrap_or_default(), "--runbooks-dir", runbooks.to_str().unwrap_or_default()];
    args.extend_from_slice(extra_args);
    Coordinator::start_with(&dir.join("coordinator"), &args).await
}

/// As [`start`], serving gRPC on `grpc` (an address agents in a network
/// namespace can dial).
pub async fn start_on(dir: &Path, world: &World, runbooks: &Path, extra_config: &str, grpc: SocketAddr) -> Coordinator {
    let config = config(dir, world, extra_config);
    let args =
        ["--config", config.to_str().unwrap_or_default(), "--runbooks-dir", runbooks.to_str().unwrap_or_default()];
    Coordinator::start_on(&dir.join("coordinator"), grpc, &args).await
}

pub async fn post_alert(coordinator: &Coordinator, payload: &str) {
    let (code, body) = coordinator.notify(payload).await;
    assert!((200..300).contains(&code), "the webhook answered {code}: {body}");
}

pub async fn incident_for(coordinator: &Coordinator, runbook: &str) -> pb::Incident {
    let mut admin = coordinator.admin().await;
    eventually(&format!("an incident handled by {runbook}"), Duration::from_secs(30), || {
        let mut admin = admin.clone();
        async move {
            let list = admin
                .list_incidents(pb::ListIncidentsRequest { include_resolved: true, ..Default::default() })
                .await
                .ok()?
                .into_inner();
            list.incidents.into_iter().find(|i| i.runbook_id == runbook)
        }
    })
    .await;
    let list = admin
        .list_incidents(pb::ListIncidentsRequest { include_resolved: true, ..Default::default() })
        .await
        .expect("list incidents")
        .into_inner();
    let mut ours: Vec<pb::Incident> = list.incidents.into_iter().filter(|i| i.runbook_id == runbook).collect();
    assert_eq!(ours.len(), 1, "exactly one incident for {runbook}: {ours:?}");
    ours.remove(0)
}

pub async fn timeline(coordinator: &Coordinator, id: &str) -> Vec<pb::TimelineEntry> {
    let mut admin = coordinator.admin().await;
    admin
        .get_incident(pb::GetIncidentRequest { id: id.to_owned() })
        .await
        .expect("get the incident")
        .into_inner()
        .timeline
}

pub fn finished(entries: &[pb::TimelineEntry]) -> bool {
    entries.iter().any(|e| (e.kind == "runbook" && e.message.contains("finished")) || e.kind == "escalated")
}

/// Waits until the incident's run is over (finished or escalated).
pub async fn run_end(coordinator: &Coordinator, id: &str) -> Vec<pb::TimelineEntry> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let entries = timeline(coordinator, id).await;
        if finished(&entries) {
            return entries;
        }
        assert!(tokio::time::Instant::now() < deadline, "the run of {id} did not end:\n{}", show(&entries));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Approves the request for `step` of `incident` once the coordinator has
/// asked for it, as a person would through the admin API; returns the
/// request as the person saw it.
pub async fn approve(coordinator: &Coordinator, incident: &str, step: &str) -> pb::Approval {
    answer(coordinator, incident, step, None).await
}

/// Denies the request for `step` of `incident` once the coordinator has
/// asked for it, for `reason`; returns the request as the person saw it.
pub async fn deny(coordinator: &Coordinator, incident: &str, step: &str, reason: &str) -> pb::Approval {
    answer(coordinator, incident, step, Some(reason)).await
}

/// Answers the request for `step` of `incident`: approves it, or with
/// `Some(reason)` denies it.
async fn answer(coordinator: &Coordinator, incident: &str, step: &str, deny: Option<&str>) -> pb::Approval {
    let mut admin = coordinator.admin().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let pending = loop {
        let list = admin
            .list_approvals(pb::ListApprovalsRequest { all: false, ..Default::default() })
            .await
            .expect("list approvals");
        if let Some(found) =
            list.into_inner().approvals.into_iter().find(|a| a.incident_id == incident && a.step_id == step)
        {
            break found;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no approval request for {step}:\n{}",
            show(&timeline(coordinator, incident).await)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    admin
        .answer_approval(pb::AnswerApprovalRequest {
            incident_id: pending.incident_id.clone(),
            step_id: pending.step_id.clone(),
            attempt: pending.attempt,
            approve: deny.is_none(),
            requested_by: "dba".into(),
            reason: deny.unwrap_or("approved by the test").into(),
        })
        .await
        .expect("answer the approval request");
    pending
}

/// The result entry of one step.
pub fn result_of<'a>(entries: &'a [pb::TimelineEntry], step: &str) -> Option<&'a pb::TimelineEntry> {
    about(entries, step).into_iter().find(|e| e.kind == "result")
}

/// The status of one step's result (`succeeded`, `failed`, `dry_run`...).
pub fn status_of(entries: &[pb::TimelineEntry], step: &str) -> Option<String> {
    result_of(entries, step).and_then(|e| e.details.get("status").cloned())
}

pub fn show(entries: &[pb::TimelineEntry]) -> String {
    entries.iter().map(|e| format!("  [{}] {} {:?}\n", e.kind, e.message, e.details)).collect()
}

/// Entries about one step.
pub fn about<'a>(entries: &'a [pb::TimelineEntry], step: &str) -> Vec<&'a pb::TimelineEntry> {
    entries.iter().filter(|e| e.details.get("step").map(String::as_str) == Some(step)).collect()
}

pub fn now_rfc3339() -> String {
    remedy_shared::Timestamp::from_millis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default(),
    )
    .to_string()
}

/// A runbook written for one test: a manual trigger and the given steps.
pub fn runbook(dir: &Path, id: &str, steps: &str, rails: &str) -> PathBuf {
    let target = dir.join("runbooks");
    std::fs::create_dir_all(&target).expect("create the catalog directory");
    let text = format!(
        "apiVersion: remedy.dev/v1\nkind: Runbook\nmetadata: {{id: {id}, title: {id} test}}\npriority: P2\nmttr_target: 10m\n\
         triggers: {{manual: true}}\nsteps:\n{steps}escalation: {{policy: test-chain}}\n{rails}"
    );
    std::fs::write(target.join(format!("{id}.yaml")), text).expect("write the runbook");
    policy(&target, "test-chain");
    target
}

pub async fn run_manual(coordinator: &Coordinator, runbook: &str, dry_run: bool) -> String {
    let mut admin = coordinator.admin().await;
    admin
        .run_runbook(pb::RunRunbookRequest {
            runbook_id: runbook.to_owned(),
            params: Default::default(),
            dry_run,
            requested_by: "tester".into(),
            drill: false,
        })
        .await
        .expect("run the runbook")
        .into_inner()
        .incident_id
}
