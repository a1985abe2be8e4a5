//! The agent watches the pods bound to its own node, in a real control plane
//! (etcd, kube-apiserver, kwok playing the kubelets): it reports crash loops,
//! restart storms, OOM kills and Failed pods of its node only, through the
//! spool to a real coordinator, clears them when they end, restarts a Failed
//! pod within its budget and never a held one or another node's; and when a
//! runbook asks, through the coordinator's `restart_pod` directive, restarts
//! a named pod of its node under the same checks and budget.
//!
//! Statuses are written through the status subresource, as a kubelet would;
//! kwok only makes new pods Running. Waits are by condition and bounded.

// Test helpers fail the test by panicking; that is their job.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use remedy_e2e::cluster::{ClusterOptions, TestCluster, kwok_node, node_is_ready, wait_for};
use remedy_e2e::procs::{
    self, Agent, Coordinator, all_findings, bin, eventually, http_request, metric_value, remedyctl,
};
use remedy_proto::convert;
use remedy_proto::v1::admin_service_client::AdminServiceClient;
use remedy_shared::finding::{Finding, FindingKind, FindingState};
use serde_json::{Value, json};
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(120);
const IMAGE: &str = "example.invalid/app:1";

/// The two cluster tests share one control plane and two cores: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Lines that show in the test output even when it is captured.
fn report(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

async fn cluster() -> &'static TestCluster {
    TestCluster::start_with(ClusterOptions { kwok: true, ..ClusterOptions::default() }).await
}

fn stamp() -> String {
    k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

// ---- objects -------------------------------------------------------------

/// Nodes with the given names, simulated by kwok, Ready; their pod ranges
/// are `10.<range>.<i>.0/24`, so each test passes its own `range`.
async fn named_kwok_nodes(cluster: &TestCluster, names: &[&str], range: u8) {
    let nodes: Api<Node> = Api::all(cluster.client());
    for (i, name) in names.iter().enumerate() {
        let node = kwok_node(name, &format!("10.{range}.{i}.0/24"), false);
        nodes.create(&PostParams::default(), &node).await.unwrap_or_else(|e| panic!("create node {name}: {e}"));
    }
    wait_for("the named kwok nodes to be Ready", WAIT, || {
        let nodes = nodes.clone();
        async move {
            for name in names {
                if !nodes.get(name).await.is_ok_and(|n| node_is_ready(&n)) {
                    return Ok(None);
                }
            }
            Ok(Some(()))
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
}

/// A ReplicaSet of no replicas to own test pods (nothing reconciles it:
/// no controller-manager runs), so the agent sees controlled pods.
async fn owner(cluster: &TestCluster, ns: &str) -> Value {
    let rs: ReplicaSet = serde_json::from_value(json!({
        "metadata": { "name": "owner" },
        "spec": {
            "replicas": 0,
            "selector": { "matchLabels": { "app": "owner" } },
            "template": {
                "metadata": { "labels": { "app": "owner" } },
                "spec": { "containers": [{ "name": "app", "image": IMAGE }] }
            }
        }
    }))
    .unwrap();
    let created =
        Api::<ReplicaSet>::namespaced(cluster.client(), ns).create(&PostParams::default(), &rs).await.unwrap();
    json!([{
        "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "owner",
        "uid": created.metadata.uid.unwrap(), "controller": true
    }])
}

fn pod(name: &str, node: &str, owners: Option<&Value>, annotations: Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {
            "name": name,
            "labels": { "app": "shop" },
            "annotations": annotations,
            "ownerReferences": owners.cloned().unwrap_or(json!([])),
        },
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 0,
            "containers": [{ "name": "app", "image": IMAGE }]
        }
    }))
    .unwrap()
}

async fn wait_running(pods: &Api<Pod>, n: usize) {
    wait_for(&format!("{n} Running pods"), WAIT, || async {
        let list = pods.list(&ListParams::default()).await?;
        let running =
            list.items.iter().filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")).count();
        Ok((running == n).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
}

// ---- statuses, as a kubelet would write them --------------------------------

fn container(restarts: i32, state: Value, last: Value) -> Value {
    json!({
        "name": "app", "image": IMAGE, "imageID": "", "ready": false,
        "restartCount": restarts, "state": state, "lastState": last
    })
}

fn running(restarts: i32) -> Value {
    json!({ "status": { "containerStatuses": [container(restarts, json!({ "running": { "startedAt": stamp() } }), json!({}))] } })
}

fn crash_looping(restarts: i32) -> Value {
    let t = stamp();
    json!({ "status": { "containerStatuses": [container(
        restarts,
        json!({ "waiting": { "reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container=app" } }),
        json!({ "terminated": { "exitCode": 1, "reason": "Error", "startedAt": t, "finishedAt": t } }),
    )] } })
}

fn oom_killed(restarts: i32) -> Value {
    let t = stamp();
    json!({ "status": { "containerStatuses": [container(
        restarts,
        json!({ "running": { "startedAt": t } }),
        json!({ "terminated": { "exitCode": 137, "reason": "OOMKilled", "startedAt": t, "finishedAt": t } }),
    )] } })
}

fn failed() -> Value {
    let t = stamp();
    json!({ "status": {
        "phase": "Failed", "reason": "Evicted", "message": "The node was low on resource: memory.",
        "containerStatuses": [container(
            0,
            json!({ "terminated": { "exitCode": 137, "reason": "Error", "startedAt": t, "finishedAt": t } }),
            json!({}),
        )]
    } })
}

async fn set_status(pods: &Api<Pod>, name: &str, patch: &Value) {
    pods.patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .unwrap_or_else(|e| panic!("patch the status of {name}: {e}"));
}

// ---- the agent's least privilege ----------------------------------------------

/// A kubeconfig for ServiceAccount `ns/remedy-agent`, bound to exactly what
/// the agent needs: pods get/list/watch/delete, namespaces get.
async fn agent_kubeconfig(cluster: &TestCluster, ns: &str, dir: &Path) -> PathBuf {
    let client = cluster.client();
    let pp = PostParams::default();
    let sa: ServiceAccount = serde_json::from_value(json!({ "metadata": { "name": "remedy-agent" } })).unwrap();
    Api::<ServiceAccount>::namespaced(client.clone(), ns).create(&pp, &sa).await.unwrap();
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": { "name": format!("remedy-agent-pods-{ns}") },
        "rules": [
            { "apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "delete"] },
            { "apiGroups": [""], "resources": ["namespaces"], "verbs": ["get"] }
        ]
    }))
    .unwrap();
    Api::<ClusterRole>::all(client.clone()).create(&pp, &role).await.unwrap();
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": { "name": format!("remedy-agent-pods-{ns}") },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": format!("remedy-agent-pods-{ns}") },
        "subjects": [{ "kind": "ServiceAccount", "name": "remedy-agent", "namespace": ns }]
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(client).create(&pp, &binding).await.unwrap();
    let as_agent = cluster.client_for_service_account(ns, "remedy-agent").await.unwrap();
    // The authorizer learns of new bindings through its informer.
    wait_for("the agent's ServiceAccount to be allowed to list pods", WAIT, || {
        let pods: Api<Pod> = Api::all(as_agent.clone());
        async move { Ok(Some(pods.list(&ListParams::default().limit(1)).await?)) }
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let token = token(cluster, ns).await;
    let path = dir.join("agent.kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: agent\n  user:\n    token: {token}\ncontexts:\n- name: agent\n  context:\n    cluster: test\n    user: agent\ncurrent-context: agent\n",
            cluster.server_url(),
            cluster.ca_cert_path().display()
        ),
    )
    .unwrap();
    path
}

async fn token(cluster: &TestCluster, ns: &str) -> String {
    use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
    let request = TokenRequest {
        spec: TokenRequestSpec { expiration_seconds: Some(3600), ..Default::default() },
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(cluster.client(), ns)
        .create_token_request("remedy-agent", &PostParams::default(), &request)
        .await
        .unwrap()
        .status
        .unwrap()
        .token
}

// ---- reading what the agent and the coordinator say ----------------------------

async fn pods_state(agent: &Agent) -> Value {
    agent.debug_state().await["pods"].clone()
}

/// Pod findings the coordinator stored, in the order the agent sent them.
async fn stored(admin: &AdminServiceClient<Channel>) -> Vec<Finding> {
    let mut admin = admin.clone();
    all_findings(&mut admin)
        .await
        .into_values()
        .filter_map(|s| convert::finding_from_proto(s.finding?).ok())
        .filter(|f| f.target.starts_with("pod/"))
        .collect()
}

fn of<'a>(findings: &'a [Finding], kind: FindingKind, target: &str, state: FindingState) -> Vec<&'a Finding> {
    findings.iter().filter(|f| f.kind == kind && f.target == target && f.state == state).collect()
}

/// Waits until the coordinator holds a finding of `kind` on `target` in
/// `state`; returns the latest such.
async fn stored_one(
    admin: &AdminServiceClient<Channel>,
    kind: FindingKind,
    target: &str,
    state: FindingState,
) -> Finding {
    eventually(&format!("the coordinator to store {kind} {state:?} on {target}"), WAIT, || async {
        of(&stored(admin).await, kind, target, state).last().map(|f| (*f).clone())
    })
    .await
}

fn active_targets(pods: &Value) -> Vec<(String, String)> {
    pods["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["kind"].as_str().unwrap().to_owned(), f["target"].as_str().unwrap().to_owned()))
        .collect()
}

async fn wait_state(agent: &Agent, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    eventually(what, WAIT, || async {
        let pods = pods_state(agent).await;
        check(&pods).then_some(pods)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_reports_and_restarts_only_its_own_nodes_pods() {
    let _serial = SERIAL.lock().await;
    let cluster = cluster().await;
    let client = cluster.client();
    named_kwok_nodes(cluster, &["node-a", "node-b"], 250).await;
    let ns = cluster.new_namespace("pods").await.unwrap();
    let held_ns = cluster.new_namespace("held").await.unwrap();
    Api::<Namespace>::all(client.clone())
        .patch(
            &held_ns,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "annotations": { "remedy.dev/hold": "incident review" } } })),
        )
        .await
        .unwrap();
    let owners = owner(cluster, &ns).await;
    let held_owners = owner(cluster, &held_ns).await;

    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = agent_kubeconfig(cluster, &ns, dir.path()).await;
    let config = dir.path().join("agent.yaml");
    std::fs::write(
        &config,
        "pods:\n  enabled: true\n  crash_loop: {restarts: 3, window: 5s, clear_after: 1s}\n  restart_failed: {enabled: true, max_per_hour: 1}\n",
    )
    .unwrap();
    let coordinator = Coordinator::start(&dir.path().join("c")).await;
    let agent = Agent::start_with(
        &dir.path().join("a"),
        "node-a",
        &coordinator.url(),
        &["--config", config.to_str().unwrap(), "--kubeconfig", kubeconfig.to_str().unwrap()],
    )
    .await;
    assert!(agent.log().contains("pod watching on"), "{}", agent.log());
    wait_state(&agent, "the pod watch to sync", |p| p["enabled"] == true && p["synced"] == true).await;
    let admin = coordinator.admin().await;

    // Pods on both nodes; on node-a, one held by annotation, one in a held
    // namespace, one that no controller owns.
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let held_pods: Api<Pod> = Api::namespaced(client.clone(), &held_ns);
    let pp = PostParams::default();
    let no = json!({});
    for name in ["a-crash", "a-oom", "a-storm", "a-fail", "a-fail2"] {
        pods.create(&pp, &pod(name, "node-a", Some(&owners), no.clone())).await.unwrap();
    }
    pods.create(&pp, &pod("a-held", "node-a", Some(&owners), json!({ "remedy.dev/hold": "" }))).await.unwrap();
    pods.create(&pp, &pod("a-bare", "node-a", None, no.clone())).await.unwrap();
    for name in ["b-crash", "b-oom", "b-fail"] {
        pods.create(&pp, &pod(name, "node-b", Some(&owners), no.clone())).await.unwrap();
    }
    held_pods.create(&pp, &pod("a-nsheld", "node-a", Some(&held_owners), no.clone())).await.unwrap();
    wait_running(&pods, 10).await;
    wait_running(&held_pods, 1).await;
    wait_state(&agent, "the agent to watch node-a's 8 pods", |p| p["watched"] == 8).await;

    // Crash loop, OOM kill and a restart storm, on both nodes.
    let target = |name: &str| format!("pod/{ns}/{name}");
    set_status(&pods, "a-crash", &crash_looping(2)).await;
    set_status(&pods, "b-crash", &crash_looping(2)).await;
    set_status(&pods, "a-oom", &oom_killed(1)).await;
    set_status(&pods, "b-oom", &oom_killed(1)).await;
    set_status(&pods, "a-storm", &running(3)).await;
    wait_state(&agent, "crash loop and OOM findings in /debug/state", |p| {
        let active = active_targets(p);
        active.contains(&("pod_crash_loop".into(), target("a-crash")))
            && active.contains(&("pod_oom_killed".into(), target("a-oom")))
    })
    .await;

    let crash = stored_one(&admin, FindingKind::PodCrashLoop, &target("a-crash"), FindingState::Active).await;
    let expected_labels: BTreeMap<String, String> =
        [("namespace", ns.as_str()), ("pod", "a-crash"), ("container", "app"), ("node", "node-a"), ("app", "shop")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
    assert_eq!(crash.labels, expected_labels);
    assert_eq!(crash.evidence["reason"], "CrashLoopBackOff");
    assert_eq!(crash.evidence["restart_count"], "2");
    assert_eq!(crash.evidence["exit_code"], "1");
    assert!(crash.expires_at.is_some(), "an active finding is refreshed or expires");
    let oom = stored_one(&admin, FindingKind::PodOomKilled, &target("a-oom"), FindingState::Active).await;
    assert_eq!((oom.evidence["exit_code"].as_str(), oom.evidence["restart_count"].as_str()), ("137", "1"));
    let storm = stored_one(&admin, FindingKind::PodCrashLoop, &target("a-storm"), FindingState::Active).await;
    assert_eq!(storm.evidence["trigger"], "restart_storm");
    assert_eq!(storm.evidence["restarts_in_window"], "3");

    // The same OOM kill in another status update is not news. The crash
    // loop's recovery, sent after it, proves the update was handled: the
    // agent handles watch events in order and numbers findings in order.
    let mut same_kill = oom_killed(1);
    same_kill["status"]["containerStatuses"][0]["ready"] = json!(true);
    set_status(&pods, "a-oom", &same_kill).await;
    set_status(&pods, "a-crash", &running(2)).await;
    let cleared = stored_one(&admin, FindingKind::PodCrashLoop, &target("a-crash"), FindingState::Cleared).await;
    assert_eq!(cleared.evidence["cleared"], "recovered");
    let all = stored(&admin).await;
    assert_eq!(of(&all, FindingKind::PodOomKilled, &target("a-oom"), FindingState::Active).len(), 1, "{all:#?}");
    // A second kill is news at once; the container's recovery clears it.
    set_status(&pods, "a-oom", &oom_killed(2)).await;
    eventually("the second OOM kill at the coordinator", WAIT, || async {
        let all = stored(&admin).await;
        let kills = of(&all, FindingKind::PodOomKilled, &target("a-oom"), FindingState::Active);
        (kills.len() == 2 && kills[1].evidence["restart_count"] == "2").then_some(())
    })
    .await;
    set_status(&pods, "a-oom", &running(2)).await;
    stored_one(&admin, FindingKind::PodOomKilled, &target("a-oom"), FindingState::Cleared).await;
    // The storm leaves its 5-second window and clears.
    stored_one(&admin, FindingKind::PodCrashLoop, &target("a-storm"), FindingState::Cleared).await;
    let pods_now = wait_state(&agent, "no pod finding left active", |p| p["findings_active"] == 0).await;
    assert_eq!(pods_now["findings"], json!([]));

    // Failed pods: held ones and the uncontrolled one are refused without
    // touching the budget; node-b's is none of this agent's business.
    for name in ["a-held", "a-bare", "b-fail"] {
        set_status(&pods, name, &failed()).await;
    }
    set_status(&held_pods, "a-nsheld", &failed()).await;
    let state = wait_state(&agent, "hold and no-controller refusals", |p| {
        let by = &p["restarts"]["refused_by_reason"];
        by["hold"] == 2 && by["no_controller"] == 1
    })
    .await;
    assert_eq!(state["restarts"]["done"], 0);
    let failed_finding = stored_one(&admin, FindingKind::PodFailed, &target("a-held"), FindingState::Active).await;
    assert_eq!(failed_finding.evidence["reason"], "Evicted");
    assert_eq!(failed_finding.evidence["exit_code"], "137");
    stored_one(&admin, FindingKind::PodFailed, &format!("pod/{held_ns}/a-nsheld"), FindingState::Active).await;

    // A Failed pod of node-a, controlled and unheld: restarted (deleted).
    let uid_of = |p: Pod| p.metadata.uid.unwrap();
    set_status(&pods, "a-fail", &failed()).await;
    wait_for("a-fail to be deleted", WAIT, || async { Ok(pods.get_opt("a-fail").await?.is_none().then_some(())) })
        .await
        .unwrap_or_else(|e| panic!("{e:#}\n{}", agent.log()));
    let state = wait_state(&agent, "the restart counted", |p| p["restarts"]["done"] == 1).await;
    let done = state["restarts"]["recent"].as_array().unwrap().iter().find(|e| e["outcome"] == "restarted").unwrap();
    assert_eq!(done["pod"], format!("{ns}/a-fail"));
    let gone = stored_one(&admin, FindingKind::PodFailed, &target("a-fail"), FindingState::Cleared).await;
    assert_eq!(gone.evidence["cleared"], "deleted");

    // The next one is over the budget of one per hour: refused, counted, kept.
    let fail2_uid = uid_of(pods.get("a-fail2").await.unwrap());
    set_status(&pods, "a-fail2", &failed()).await;
    let state = wait_state(&agent, "a budget refusal", |p| p["restarts"]["refused_by_reason"]["budget"] == 1).await;
    let refusal = state["restarts"]["recent"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["pod"] == format!("{ns}/a-fail2"))
        .unwrap()
        .clone();
    assert_eq!((refusal["outcome"].as_str(), refusal["reason"].as_str()), (Some("refused"), Some("budget")));
    assert!(refusal["message"].as_str().unwrap().contains("budget of 1 restarts per hour is spent"), "{refusal}");
    assert_eq!(state["restarts"]["done"], 1);
    assert_eq!(state["restarts"]["used_in_last_hour"], 1);
    assert_eq!(uid_of(pods.get("a-fail2").await.unwrap()), fail2_uid, "a refused pod is not touched");
    let (_, metrics) = http_request(agent.diagnostics, "GET", "/metrics", None).await.unwrap();
    assert_eq!(metric_value(&metrics, "remedy_agent_pod_restarts_total"), 1.0);
    assert_eq!(metric_value(&metrics, "remedy_agent_pod_restarts_refused_total{reason=\"budget\"}"), 1.0);
    assert_eq!(metric_value(&metrics, "remedy_agent_pod_restarts_refused_total{reason=\"hold\"}"), 2.0);
    assert_eq!(metric_value(&metrics, "remedy_agent_pods_watched"), 7.0, "{metrics}");

    // Nothing held, uncontrolled or on node-b was touched.
    for name in ["a-held", "a-bare", "b-crash", "b-oom", "b-fail"] {
        assert!(pods.get_opt(name).await.unwrap().is_some(), "{name} is still there");
    }
    assert!(held_pods.get_opt("a-nsheld").await.unwrap().is_some());

    // The coordinator heard of node-a's pods only, exactly as /debug/state.
    let all = stored(&admin).await;
    assert!(all.iter().all(|f| f.labels["node"] == "node-a" && !f.target.contains("/b-")), "{all:#?}");
    let (status, out, err) = remedyctl(&coordinator.url(), &["findings", "--kind", "pod_failed", "-o", "json"]);
    assert!(status.success(), "{err}");
    let listed: Vec<Value> = serde_json::from_str(&out).unwrap();
    let mut targets: Vec<&str> = listed.iter().map(|f| f["target"].as_str().unwrap()).collect();
    targets.sort_unstable();
    targets.dedup();
    let mut expected = vec![
        target("a-bare"),
        target("a-fail"),
        target("a-fail2"),
        target("a-held"),
        format!("pod/{held_ns}/a-nsheld"),
    ];
    expected.sort_unstable();
    assert_eq!(targets, expected);
    let state = pods_state(&agent).await;
    assert!(active_targets(&state).iter().all(|(_, t)| !t.contains("/b-")), "{state}");
    report(&format!(
        "agent pods: {} watch events, {} watch errors, restarts {}",
        state["watch"]["events"], state["watch"]["errors"], state["restarts"]
    ));
}

// ---- the restart_pod directive, from a runbook ----------------------------------

/// A manual runbook `id` whose one step asks the agent of `node` to restart
/// pod `params.pod` of `namespace`, if it is Failed (`failed_only`) or
/// whatever its phase.
fn restart_runbook(runbooks: &Path, id: &str, namespace: &str, node: &str, failed_only: bool) {
    std::fs::create_dir_all(runbooks).unwrap();
    let phase = if failed_only { "\n        only_if_phase: Failed" } else { "" };
    let text = format!(
        r#"apiVersion: remedy.dev/v1
kind: Runbook
metadata:
  id: {id}
  title: restart a pod through its node's agent
priority: P3
mttr_target: 10m
params:
  namespace: {namespace}
  pod: none
triggers:
  manual: true
steps:
  - id: restart
    agent:
      agents: {{ node: {node} }}
      directive: restart_pod
      params:
        namespace: "{{{{ params.namespace }}}}"
        name: "{{{{ params.pod }}}}"{phase}
      timeout: 30s
escalation:
  policy: test-chain
guard_rails:
  cooldown: 0s
  max_attempts: 20
"#
    );
    std::fs::write(runbooks.join(format!("{}.yaml", id.to_lowercase())), text).unwrap();
    remedy_e2e::runs::policy(runbooks, "test-chain");
}

/// `remedyctl run <runbook> --param pod=<pod> [--dry-run] --wait`, off the
/// runtime's threads; returns the result entry of step `restart`.
async fn restart_by_runbook(url: &str, runbook: &str, pod: &str, dry_run: bool) -> Value {
    let mut args: Vec<String> =
        ["--as", "tester", "run", runbook, "--param", &format!("pod={pod}")].iter().map(|a| (*a).to_owned()).collect();
    if dry_run {
        args.push("--dry-run".to_owned());
    }
    args.extend(["--wait", "--timeout", "2m", "-o", "json"].map(str::to_owned));
    let url = url.to_owned();
    let (status, out, err) = tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        remedyctl(&url, &args)
    })
    .await
    .unwrap();
    assert!(status.success(), "remedyctl run {runbook} for {pod} failed: {err}");
    let out: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("no JSON ({e}): {out}"));
    let timeline = out["incident"]["timeline"].as_array().unwrap_or_else(|| panic!("no timeline: {out:#}"));
    timeline
        .iter()
        .find(|e| e["kind"] == "result" && e["details"]["step"] == "restart")
        .unwrap_or_else(|| panic!("no result for step restart in {out:#}"))
        .clone()
}

/// Starts an agent on `node` with pod watching through `kubeconfig` and the
/// given `restart_failed` settings; waits until its watch is synced and it
/// is connected to the coordinator at `url`.
async fn restarting_agent(dir: &Path, node: &str, url: &str, kubeconfig: &Path, restart_failed: &str) -> Agent {
    let config = dir.join(format!("{node}.yaml"));
    std::fs::write(&config, format!("pods:\n  enabled: true\n  restart_failed: {restart_failed}\n")).unwrap();
    let agent = Agent::start_with(
        &dir.join(node),
        node,
        url,
        &["--config", config.to_str().unwrap(), "--kubeconfig", kubeconfig.to_str().unwrap()],
    )
    .await;
    wait_state(&agent, &format!("{node}'s pod watch to sync"), |p| p["synced"] == true).await;
    eventually(&format!("the agent on {node} connected to the coordinator"), WAIT, || async {
        let (status, out, _) = remedyctl(url, &["agents", "-o", "json"]);
        let agents: Vec<Value> = serde_json::from_str(&out).ok()?;
        (status.success() && agents.iter().any(|a| a["node_name"] == node && a["connected"] == true)).then_some(())
    })
    .await;
    agent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runbook_restarts_a_pod_through_its_nodes_agent_within_the_local_rails() {
    let _serial = SERIAL.lock().await;
    let cluster = cluster().await;
    let client = cluster.client();
    named_kwok_nodes(cluster, &["node-r1", "node-r2"], 251).await;
    let ns = cluster.new_namespace("restart").await.unwrap();
    let owners = owner(cluster, &ns).await;
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = agent_kubeconfig(cluster, &ns, dir.path()).await;
    let runbooks = dir.path().join("runbooks");
    restart_runbook(&runbooks, "RST-001", &ns, "node-r1", true);
    restart_runbook(&runbooks, "RST-002", &ns, "node-r2", false);
    let coordinator =
        Coordinator::start_with(&dir.path().join("c"), &["--runbooks-dir", runbooks.to_str().unwrap()]).await;
    let url = coordinator.url();
    // On node-r1 the local rule is off, so only directives delete; the
    // budget (one an hour) binds them all the same.
    let agent = restarting_agent(dir.path(), "node-r1", &url, &kubeconfig, "{enabled: false, max_per_hour: 1}").await;

    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pp = PostParams::default();
    for (name, node) in [("r-fail", "node-r1"), ("r-fail2", "node-r1"), ("o-fail", "node-r2"), ("o-run", "node-r2")] {
        pods.create(&pp, &pod(name, node, Some(&owners), json!({}))).await.unwrap();
    }
    pods.create(&pp, &pod("r-held", "node-r1", Some(&owners), json!({ "remedy.dev/hold": "" }))).await.unwrap();
    wait_running(&pods, 5).await;
    for name in ["r-fail", "r-fail2", "o-fail", "r-held"] {
        set_status(&pods, name, &failed()).await;
    }
    let uid_of = |p: Pod| p.metadata.uid.unwrap();
    let fail_uid = uid_of(pods.get("r-fail").await.unwrap());
    let log = || format!("agent log:\n{}\ncoordinator log:\n{}", agent.log(), coordinator.log());

    // A rehearsal: every check passes, the API server accepts the delete as
    // a dry run; the pod stays and the budget is not spent.
    let result = restart_by_runbook(&url, "RST-001", "r-fail", true).await;
    let d = &result["details"];
    assert_eq!(d["status"], "dry_run", "{result:#}\n{}", log());
    assert_eq!(d["evidence.node-r1.outcome"], "dry_run", "{result:#}");
    assert_eq!(d["evidence.node-r1.uid"], fail_uid.as_str(), "{result:#}");
    assert_eq!(d["evidence.node-r1.node"], "node-r1", "{result:#}");
    assert_eq!(d["evidence.node-r1.phase"], "Failed", "{result:#}");
    assert_eq!(d["evidence.node-r1.deleted"], "false", "{result:#}");
    assert!(d["evidence.node-r1.message"].as_str().unwrap().starts_with("dry run: would delete pod"), "{result:#}");
    assert_eq!(uid_of(pods.get("r-fail").await.unwrap()), fail_uid, "a dry run deletes nothing");
    let state = pods_state(&agent).await;
    assert_eq!((state["restarts"]["done"].as_u64(), state["restarts"]["refused"].as_u64()), (Some(0), Some(0)));

    // Another node's pod: refused by the agent, which names the node it is on.
    let o_uid = uid_of(pods.get("o-fail").await.unwrap());
    let result = restart_by_runbook(&url, "RST-001", "o-fail", false).await;
    let d = &result["details"];
    assert_eq!(d["status"], "failed", "{result:#}");
    assert_eq!(d["evidence.node-r1.outcome"], "refused", "{result:#}");
    assert_eq!(d["evidence.node-r1.reason"], "other_node", "{result:#}");
    assert_eq!(d["evidence.node-r1.node"], "node-r2", "{result:#}");
    let why = format!("not restarting pod {ns}/o-fail: it is bound to node node-r2, not this one");
    assert_eq!(d["evidence.node-r1.message"], why.as_str(), "{result:#}");
    assert!(result["message"].as_str().unwrap().contains(&why), "the timeline says why: {result:#}");
    assert_eq!(uid_of(pods.get("o-fail").await.unwrap()), o_uid, "another node's pod is left alone");

    // Held: refused before the budget is looked at.
    let result = restart_by_runbook(&url, "RST-001", "r-held", false).await;
    assert_eq!(result["details"]["evidence.node-r1.reason"], "hold", "{result:#}");
    assert!(pods.get_opt("r-held").await.unwrap().is_some());

    // For real: deleted, with the evidence of what was deleted.
    let result = restart_by_runbook(&url, "RST-001", "r-fail", false).await;
    let d = &result["details"];
    assert_eq!(d["status"], "succeeded", "{result:#}\n{}", log());
    assert_eq!(d["evidence.node-r1.outcome"], "succeeded", "{result:#}");
    assert_eq!(d["evidence.node-r1.deleted"], "true", "{result:#}");
    assert_eq!(d["evidence.node-r1.uid"], fail_uid.as_str(), "{result:#}");
    assert_eq!(d["evidence.node-r1.pod"], format!("{ns}/r-fail").as_str(), "{result:#}");
    assert_eq!(
        (d["evidence.node-r1.budget_used"].as_str(), d["evidence.node-r1.budget_max"].as_str()),
        (Some("1"), Some("1"))
    );
    wait_for("r-fail to be gone from the API", WAIT, || async {
        Ok(pods.get_opt("r-fail").await?.is_none().then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", log()));

    // The hour's budget (one) is spent: the next is refused and kept.
    let fail2_uid = uid_of(pods.get("r-fail2").await.unwrap());
    let result = restart_by_runbook(&url, "RST-001", "r-fail2", false).await;
    let d = &result["details"];
    assert_eq!(d["evidence.node-r1.outcome"], "refused", "{result:#}");
    assert_eq!(d["evidence.node-r1.reason"], "budget", "{result:#}");
    assert!(
        d["evidence.node-r1.message"].as_str().unwrap().contains("budget of 1 restarts per hour is spent"),
        "{result:#}"
    );
    assert_eq!(uid_of(pods.get("r-fail2").await.unwrap()), fail2_uid, "a refused pod is not touched");

    // The agent's own account agrees, naming the directives that decided.
    let state = pods_state(&agent).await;
    let restarts = &state["restarts"];
    assert_eq!(restarts["done"], 1, "{state:#}");
    assert_eq!(restarts["used_in_last_hour"], 1, "{state:#}");
    assert_eq!(restarts["refused_by_reason"], json!({ "other_node": 1, "hold": 1, "budget": 1 }), "{state:#}");
    let recent = restarts["recent"].as_array().unwrap();
    let done = recent.iter().find(|e| e["outcome"] == "restarted").unwrap();
    assert_eq!(
        (done["pod"].as_str(), done["uid"].as_str()),
        (Some(format!("{ns}/r-fail").as_str()), Some(fail_uid.as_str()))
    );
    assert!(done["by"].as_str().unwrap().starts_with("directive "), "{done}");
    let (_, metrics) = http_request(agent.diagnostics, "GET", "/metrics", None).await.unwrap();
    assert_eq!(metric_value(&metrics, "remedy_agent_pod_restarts_total"), 1.0, "{metrics}");
    for name in ["r-fail2", "r-held", "o-fail"] {
        assert!(pods.get_opt(name).await.unwrap().is_some(), "{name} is still there");
    }

    // One budget for the local rule and directives: on node-r2, the local
    // rule restarts o-fail, which spends the hour's one restart, and then a
    // directive for o-run (any phase) is refused for the budget.
    let agent2 = restarting_agent(dir.path(), "node-r2", &url, &kubeconfig, "{enabled: true, max_per_hour: 1}").await;
    wait_for("o-fail to be restarted by node-r2's local rule", WAIT, || async {
        Ok(pods.get_opt("o-fail").await?.is_none().then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}\n{}", agent2.log()));
    wait_state(&agent2, "the local rule's restart counted", |p| p["restarts"]["done"] == 1).await;
    let run_uid = uid_of(pods.get("o-run").await.unwrap());
    let result = restart_by_runbook(&url, "RST-002", "o-run", false).await;
    let d = &result["details"];
    assert_eq!(d["evidence.node-r2.outcome"], "refused", "{result:#}\n{}", agent2.log());
    assert_eq!(d["evidence.node-r2.reason"], "budget", "{result:#}");
    assert_eq!(d["evidence.node-r2.phase"], "Running", "{result:#}");
    assert_eq!(uid_of(pods.get("o-run").await.unwrap()), run_uid, "o-run is not touched");
}

/// Finds the process whose command line mentions `marker`.
fn pid_of(marker: &str) -> Option<u32> {
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
        String::from_utf8_lossy(&cmdline).contains(marker).then_some(pid)
    })
}

/// (VmRSS, VmHWM) of a process, KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// 200 nodes and 2,000 pods, ten on the agent's node: what the agent costs
/// while it watches. Prints the figures; asserts only what it watches.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_while_watching_ten_of_two_thousand_pods() {
    const NODES: usize = 200;
    const PODS: usize = 2_000;
    let _serial = SERIAL.lock().await;
    let cluster = cluster().await;
    let ns = cluster.new_namespace("scale").await.unwrap();
    let started = Instant::now();
    let nodes = cluster.create_kwok_nodes(NODES).await.unwrap();
    let nodes_ready = started.elapsed();
    let mine = nodes[0].clone();

    let dir = tempfile::tempdir().unwrap();
    let coordinator = Coordinator::start(&dir.path().join("c")).await;
    let kubeconfig = cluster.kubeconfig_path().to_str().unwrap().to_owned();
    let watching_dir = dir.path().join("watching");
    let agent = Agent::start_with(&watching_dir, &mine, &coordinator.url(), &["--kubeconfig", &kubeconfig]).await;
    // The peer: the same agent with pod watching off.
    let off = dir.path().join("off.yaml");
    std::fs::write(&off, "pods: {enabled: false}\n").unwrap();
    let peer_dir = dir.path().join("peer");
    let peer = Agent::start_with(&peer_dir, &nodes[1], &coordinator.url(), &["--config", off.to_str().unwrap()]).await;
    wait_state(&agent, "the pod watch to sync", |p| p["synced"] == true).await;
    assert_eq!(pods_state(&peer).await["enabled"], false);

    let started = Instant::now();
    let mut creators = tokio::task::JoinSet::new();
    const WORKERS: usize = 16;
    for w in 0..WORKERS {
        let pods: Api<Pod> = Api::namespaced(cluster.client(), &ns);
        let nodes = nodes.clone();
        creators.spawn(async move {
            for i in (w..PODS).step_by(WORKERS) {
                let p = pod(&format!("bulk-{i}"), &nodes[i % NODES], None, json!({}));
                pods.create(&PostParams::default(), &p).await.map_err(|e| format!("bulk-{i}: {e}"))?;
            }
            Ok::<(), String>(())
        });
    }
    while let Some(done) = creators.join_next().await {
        done.unwrap().unwrap();
    }
    let created_in = started.elapsed();
    let pods: Api<Pod> = Api::namespaced(cluster.client(), &ns);
    wait_for(&format!("{PODS} Running pods"), Duration::from_secs(900), || async {
        let list = pods.list(&ListParams::default()).await?;
        let running =
            list.items.iter().filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")).count();
        Ok((running == PODS).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let running_in = started.elapsed();
    let state = wait_state(&agent, "the agent to watch its node's 10 pods", |p| p["watched"] == PODS / NODES).await;
    assert_eq!(state["findings_active"], 0);

    let pid = pid_of(watching_dir.to_str().unwrap()).expect("the watching agent's process");
    let peer_pid = pid_of(peer_dir.to_str().unwrap()).expect("the peer agent's process");
    let (rss, hwm) = memory_kib(pid);
    let (peer_rss, peer_hwm) = memory_kib(peer_pid);
    report(&format!(
        "agent memory: watching {} of {PODS} pods on {NODES} kwok nodes ({} watch events): VmRSS {:.1} MiB, \
         VmHWM {:.1} MiB; the same agent with pods.enabled false: VmRSS {:.1} MiB, VmHWM {:.1} MiB \
         ({} build; nodes Ready in {nodes_ready:.1?}, pods created in {created_in:.1?}, Running in {running_in:.1?})",
        state["watched"],
        state["watch"]["events"],
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        peer_rss as f64 / 1024.0,
        peer_hwm as f64 / 1024.0,
        if cfg!(debug_assertions) { "debug" } else { "release" },
    ));
    drop(peer);
    drop(agent);
}

/// Without an API server the watch retries with a growing delay; the agent
/// keeps serving and reporting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_api_server_is_retried_and_never_stops_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("nowhere.kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: gone\n  cluster:\n    server: https://{}\n    insecure-skip-tls-verify: true\nusers:\n- name: u\n  user:\n    token: t\ncontexts:\n- name: c\n  context:\n    cluster: gone\n    user: u\ncurrent-context: c\n",
            procs::free_addr()
        ),
    )
    .unwrap();
    let coordinator = Coordinator::start(&dir.path().join("c")).await;
    let agent = Agent::start_with(
        &dir.path().join("a"),
        "node-x",
        &coordinator.url(),
        &["--kubeconfig", kubeconfig.to_str().unwrap()],
    )
    .await;
    let state = wait_state(&agent, "two watch errors", |p| p["watch"]["errors"].as_u64().unwrap_or(0) >= 2).await;
    assert_eq!(state["enabled"], true);
    assert_eq!(state["synced"], false);
    assert!(!state["watch"]["last_error"].as_str().unwrap().is_empty());
    eventually("the agent ready while its pod watch fails", WAIT, || async {
        (agent.readyz().await == 200).then_some(())
    })
    .await;
    let (code, _) = http_request(agent.diagnostics, "GET", "/healthz", None).await.unwrap();
    assert_eq!(code, 200);
}

/// `pods.enabled: true` without any way to reach Kubernetes, or a named
/// kubeconfig that cannot be read, is bad configuration: exit 64 naming the
/// field. With `auto`, the agent runs and says why it does not watch pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_watching_without_a_client_exits_64_when_required_and_says_why_when_auto() {
    let dir = tempfile::tempdir().unwrap();
    // No KUBECONFIG, no in-cluster environment, no ~/.kube/config.
    let agent = |args: &[&str]| {
        let mut cmd = std::process::Command::new(bin("remedy-agent"));
        cmd.args(["--node-name", "node-x"])
            .args(["--state-dir", dir.path().join("s").to_str().unwrap()])
            .args(["--diagnostics-listen", &procs::free_addr().to_string()])
            .args(["--insecure", "--coordinator", &format!("http://{}", procs::free_addr())])
            .args(args)
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env("HOME", dir.path())
            .stdin(std::process::Stdio::null());
        cmd
    };
    let on = dir.path().join("on.yaml");
    std::fs::write(&on, "pods: {enabled: true}\n").unwrap();
    let out = agent(&["--config", on.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains(&format!("invalid configuration in {}: field `pods.enabled`", on.display())), "{stderr}");

    let missing = dir.path().join("missing.kubeconfig");
    let out = agent(&["--kubeconfig", missing.to_str().unwrap()]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains("field `kubeconfig`"), "{stderr}");

    // auto (the default): runs, and its log says why pods are not watched.
    let log = dir.path().join("auto.log");
    let file = std::fs::File::create(&log).unwrap();
    let mut child = agent(&[]).stdout(file.try_clone().unwrap()).stderr(file).spawn().unwrap();
    let line = eventually("the agent to say pod watching is off", WAIT, || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        text.lines().find(|l| l.contains("pod watching off")).map(str::to_owned)
    })
    .await;
    let _ = child.kill();
    let _ = child.wait();
    assert!(line.contains("no Kubernetes client"), "{line}");
    assert!(line.contains("pods_enabled=\"auto\"") || line.contains("pods_enabled=auto"), "{line}");
}
