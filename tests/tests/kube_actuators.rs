//! The coordinator's Kubernetes actuators against a real control plane
//! (etcd, kube-apiserver, controller-manager, scheduler, kwok): what
//! `resolve` hands the rails, what `execute` changes, and what it refuses
//! to change. Each test has a namespace of its own; the actuator is called
//! directly, as the engine calls it.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use remedy_coordinator::actuators::kube::{
    CHANGED_AT_ANNOTATION, FIELD_MANAGER, INCIDENT_ANNOTATION, KubeActuator, RESTARTED_AT_ANNOTATION, STEP_ANNOTATION,
    client_from_config,
};
use remedy_coordinator::actuators::{ActionCall, ActionReport, ActionStatus, Actuator, Resolved};
use remedy_e2e::cluster::{
    ClusterOptions, KWOK_NODE_LABEL, TestCluster, kwok_deployment, kwok_toleration, wait_for, wait_until,
};
use remedy_shared::guard::{self, ActionRequest, Decision, GuardPolicy, GuardState, HOLD_ANNOTATION, Mode, Refusal};
use remedy_shared::incident::IncidentId;
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(90);

static NODES: tokio::sync::OnceCell<()> = tokio::sync::OnceCell::const_new();

/// The shared cluster with every component, three kwok nodes, and a fresh
/// namespace.
async fn setup(prefix: &str) -> (&'static TestCluster, String, kube::Client, KubeActuator) {
    let cluster = TestCluster::start_with(ClusterOptions::full()).await;
    NODES
        .get_or_init(|| async {
            cluster.create_kwok_nodes(3).await.unwrap_or_else(|e| panic!("kwok nodes: {e:#}"));
        })
        .await;
    let ns = cluster.new_namespace(prefix).await.unwrap_or_else(|e| panic!("namespace: {e:#}"));
    let client = cluster.client();
    let actuator = KubeActuator::new(client_from_config(cluster.config()).expect("actuator client"));
    (cluster, ns, client, actuator)
}

fn call(kind: &str, params: Value, dry_run: bool) -> ActionCall {
    ActionCall {
        incident_id: "INC-000042".into(),
        step_id: "act".into(),
        kind: kind.into(),
        params,
        dry_run,
        deadline: Duration::from_secs(30),
        accepted_risk: None,
    }
}

async fn resolve(actuator: &KubeActuator, kind: &str, params: Value) -> Result<Resolved, String> {
    actuator.resolve(&call(kind, params, true)).await.unwrap_or_else(|| panic!("{kind} resolves"))
}

async fn execute(actuator: &KubeActuator, kind: &str, params: Value, dry_run: bool) -> ActionReport {
    actuator.execute(&call(kind, params, dry_run)).await
}

async fn create_deployment(client: &kube::Client, ns: &str, d: Deployment) {
    Api::<Deployment>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &d)
        .await
        .expect("create deployment");
}

fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default()
}

async fn pods_of(client: &kube::Client, ns: &str, app: &str) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    pods.list(&ListParams::default().labels(&format!("app={app}"))).await.expect("list pods").items
}

async fn wait_running(client: &kube::Client, ns: &str, app: &str, n: usize) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let selector = format!("app={app}");
    wait_for(&format!("{n} Running pods of {app}"), WAIT, || async {
        let list = pods.list(&ListParams::default().labels(&selector)).await?.items;
        let running: Vec<Pod> =
            list.into_iter().filter(|p| phase(p) == "Running" && p.metadata.deletion_timestamp.is_none()).collect();
        Ok((running.len() == n).then_some(running))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"))
}

fn annotations(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.annotations.clone().unwrap_or_default()
}

fn assert_annotated_by_remedy(meta: &ObjectMeta) {
    let a = annotations(meta);
    assert_eq!(a.get(INCIDENT_ANNOTATION).map(String::as_str), Some("INC-000042"), "{a:?}");
    assert_eq!(a.get(STEP_ANNOTATION).map(String::as_str), Some("act"), "{a:?}");
    let at = a.get(CHANGED_AT_ANNOTATION).expect("changed-at");
    assert!(at.parse::<k8s_openapi::jiff::Timestamp>().is_ok(), "{at} is RFC 3339");
    let managers: Vec<&str> = meta.managed_fields.iter().flatten().filter_map(|m| m.manager.as_deref()).collect();
    assert!(managers.contains(&FIELD_MANAGER), "written by the remedy field manager: {managers:?}");
}

fn request(kind: &str, resolved: Resolved) -> ActionRequest {
    ActionRequest {
        runbook_id: "P0-001".into(),
        incident_id: IncidentId(42),
        step_id: "act".into(),
        attempt: 1,
        action_kind: kind.into(),
        targets: resolved.targets,
        destructive: true,
        requires_approval: false,
        capacity: resolved.capacity,
        population: resolved.population,
        trigger_still_holds: Some(true),
        mode: Mode::Live,
        risk: None,
    }
}

/// What the rails say about a resolved action, with no history.
fn rails(kind: &str, resolved: Resolved) -> Decision {
    let now = remedy_shared::Timestamp::from_millis(1_800_000_000_000);
    guard::evaluate(&GuardPolicy::default(), &GuardState::default(), &request(kind, resolved), now)
}

#[tokio::test]
async fn scale_goes_through_the_scale_subresource_and_pods_follow() {
    let (_cluster, ns, client, actuator) = setup("kscale").await;
    create_deployment(&client, &ns, deployment("web", 3, BTreeMap::new())).await;
    wait_running(&client, &ns, "web", 3).await;

    let params =
        json!({ "kind": "Deployment", "namespace": ns, "name": "web", "replicas": 5, "floor": 2, "ceiling": 8 });
    let resolved = resolve(&actuator, "scale", params.clone()).await.expect("resolve");
    let capacity = resolved.capacity.expect("capacity");
    assert_eq!((capacity.current, capacity.desired, capacity.floor, capacity.ceiling), (3, 5, Some(2), Some(8)));
    assert_eq!(resolved.targets.len(), 1);
    assert_eq!(resolved.targets[0].key(), format!("Deployment/{ns}/web"));
    assert_eq!(rails("scale", resolved), Decision::Allow);

    let report = execute(&actuator, "scale", params, false).await;
    assert_eq!(report.status, ActionStatus::Succeeded, "{report:?}");
    assert_eq!(report.message, format!("scaled Deployment {ns}/web from 3 to 5"));
    assert_eq!((report.evidence["before"].as_str(), report.evidence["after"].as_str()), ("3", "5"));
    assert_eq!(report.evidence["annotated"], "true");

    wait_running(&client, &ns, "web", 5).await;
    let web = Api::<Deployment>::namespaced(client.clone(), &ns).get("web").await.expect("get");
    assert_annotated_by_remedy(&web.metadata);
    let scale_entry = web
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .find(|m| m.manager.as_deref() == Some(FIELD_MANAGER) && m.subresource.as_deref() == Some("scale"));
    assert!(scale_entry.is_some(), "replicas were written through /scale by remedy");

    // A scale to what is already there changes nothing.
    let again = json!({ "namespace": ns, "name": "web", "replicas": 5 });
    let report = execute(&actuator, "scale", again, false).await;
    assert_eq!(report.status, ActionStatus::Succeeded, "{report:?}");
    assert_eq!(report.evidence["changed"], "false");

    // A missing workload is named.
    let ghost = json!({ "namespace": ns, "name": "ghost", "replicas": 2 });
    let err = resolve(&actuator, "scale", ghost.clone()).await.expect_err("missing");
    assert_eq!(err, format!("Deployment {ns}/ghost not found"));
    let report = execute(&actuator, "scale", ghost, false).await;
    assert_eq!(report.status, ActionStatus::Failed);
    assert_eq!(report.message, format!("Deployment {ns}/ghost not found"));
}

#[tokio::test]
async fn a_hold_on_the_deployment_or_the_namespace_reaches_its_pods() {
    let (_cluster, ns, client, actuator) = setup("khold").await;
    let held = BTreeMap::from([(HOLD_ANNOTATION.to_owned(), "INC-7 investigation".to_owned())]);
    create_deployment(&client, &ns, deployment("api", 2, held)).await;
    create_deployment(&client, &ns, deployment("free", 2, BTreeMap::new())).await;
    wait_running(&client, &ns, "api", 2).await;
    wait_running(&client, &ns, "free", 2).await;

    let params = json!({ "namespace": ns, "selector": "app=api", "max_count": 5 });
    let resolved = resolve(&actuator, "delete_pods", params.clone()).await.expect("resolve");
    assert_eq!(resolved.targets.len(), 2, "{resolved:?}");
    for t in &resolved.targets {
        assert_eq!(t.kind, "Pod");
        assert_eq!(t.namespace.as_deref(), Some(ns.as_str()));
        assert_eq!(t.labels.get("app").map(String::as_str), Some("api"));
        assert_eq!(t.annotations.get(HOLD_ANNOTATION).map(String::as_str), Some("INC-7 investigation"), "{t:?}");
    }
    let population = resolved.population.clone().expect("population");
    assert_eq!(population.pool, format!("Deployment/{ns}/api"));
    assert_eq!(population.size, 2);
    match rails("delete_pods", resolved) {
        Decision::Refuse(Refusal::HoldAnnotation { annotation, .. }) => assert_eq!(annotation, HOLD_ANNOTATION),
        other => panic!("the rails must refuse held pods, got {other:?}"),
    }
    // The actuator checks again just before acting, should it be asked.
    let report = execute(&actuator, "delete_pods", params, false).await;
    assert_eq!(report.status, ActionStatus::Failed, "{report:?}");
    assert!(report.message.starts_with("refused: Pod"), "{}", report.message);
    assert!(report.message.contains(&format!("on Deployment {ns}/api")), "{}", report.message);
    assert_eq!(pods_of(&client, &ns, "api").await.len(), 2, "nothing deleted");

    // The other Deployment is free, until its namespace is held.
    let free = json!({ "namespace": ns, "selector": "app=free", "max_count": 1 });
    let resolved = resolve(&actuator, "delete_pods", free.clone()).await.expect("resolve");
    assert_eq!(resolved.targets.len(), 1, "at most max_count");
    assert!(!resolved.targets[0].annotations.contains_key(HOLD_ANNOTATION));
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let hold = json!({ "metadata": { "annotations": { HOLD_ANNOTATION: "change freeze" } } });
    namespaces.patch(&ns, &PatchParams::default(), &Patch::Merge(&hold)).await.expect("hold the namespace");
    let resolved = resolve(&actuator, "delete_pods", free.clone()).await.expect("resolve");
    assert_eq!(resolved.targets[0].annotations.get(HOLD_ANNOTATION).map(String::as_str), Some("change freeze"));
    let scale = json!({ "namespace": ns, "name": "free", "replicas": 3 });
    let resolved = resolve(&actuator, "scale", scale.clone()).await.expect("resolve");
    assert_eq!(resolved.targets[0].annotations.get(HOLD_ANNOTATION).map(String::as_str), Some("change freeze"));
    let report = execute(&actuator, "scale", scale, false).await;
    assert_eq!(report.status, ActionStatus::Failed, "{report:?}");
    assert!(report.message.contains(&format!("on Namespace {ns}")), "{}", report.message);
    let free_scale = Api::<Deployment>::namespaced(client.clone(), &ns).get_scale("free").await.expect("scale");
    assert_eq!(free_scale.spec.and_then(|s| s.replicas), Some(2), "not scaled");
}

#[tokio::test]
async fn empty_wildcard_and_unmatched_selectors_give_no_targets_and_the_rails_refuse() {
    let (_cluster, ns, client, actuator) = setup("kempty").await;
    create_deployment(&client, &ns, deployment("svc", 2, BTreeMap::new())).await;
    wait_running(&client, &ns, "svc", 2).await;

    for selector in ["", "  ", "*", ",", "app!=db"] {
        let params = json!({ "namespace": ns, "selector": selector, "max_count": 10 });
        let resolved = resolve(&actuator, "delete_pods", params.clone()).await.expect("resolve");
        assert!(resolved.targets.is_empty(), "{selector:?} resolved to {:?}", resolved.targets);
        assert_eq!(rails("delete_pods", resolved), Decision::Refuse(Refusal::EmptyTargetSet), "{selector:?}");
        let report = execute(&actuator, "delete_pods", params, false).await;
        assert_eq!(report.status, ActionStatus::Failed, "{selector:?}: {report:?}");
        assert!(report.message.starts_with("refused: selector"), "{}", report.message);
        let evict = json!({ "namespace": ns, "selector": selector, "max_count": 10 });
        let resolved = resolve(&actuator, "evict_pods", evict).await.expect("resolve");
        assert!(resolved.targets.is_empty(), "{selector:?}");
    }
    let nothing = json!({ "namespace": ns, "selector": "app=nothing-here", "max_count": 10 });
    let resolved = resolve(&actuator, "delete_pods", nothing.clone()).await.expect("resolve");
    assert!(resolved.targets.is_empty());
    assert_eq!(resolved.population.as_ref().map(|p| p.size), Some(0));
    assert_eq!(rails("delete_pods", resolved), Decision::Refuse(Refusal::EmptyTargetSet));

    let malformed = json!({ "namespace": ns, "selector": "app in (", "max_count": 1 });
    let err = resolve(&actuator, "delete_pods", malformed.clone()).await.expect_err("malformed");
    assert!(err.contains("unbalanced"), "{err}");
    assert_eq!(execute(&actuator, "delete_pods", malformed, false).await.status, ActionStatus::Invalid);
    let path = json!({ "namespace": ns, "name": "../../../api/v1/namespaces", "replicas": 1 });
    assert_eq!(execute(&actuator, "scale", path, false).await.status, ActionStatus::Invalid);
    assert_eq!(pods_of(&client, &ns, "svc").await.len(), 2, "nothing deleted");
}

#[tokio::test]
async fn delete_pods_deletes_only_failed_pods_and_at_most_max_count() {
    let (_cluster, ns, client, actuator) = setup("kdelete").await;
    create_deployment(&client, &ns, deployment("worker", 4, BTreeMap::new())).await;
    let running = wait_running(&client, &ns, "worker", 4).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let mut failed = Vec::new();
    for pod in &running[..3] {
        let name = pod.metadata.name.clone().expect("name");
        let status =
            json!({ "status": { "phase": "Failed", "reason": "Evicted", "message": "made Failed by the test" } });
        pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await.expect("patch status");
        failed.push(name);
    }
    let healthy = running[3].metadata.name.clone().expect("name");
    wait_until("3 Failed pods", WAIT, || async {
        Ok(pods_of(&client, &ns, "worker").await.iter().filter(|p| phase(p) == "Failed").count() == 3)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));

    let params = json!({ "namespace": ns, "selector": "app=worker", "phase": "Failed", "max_count": 2 });
    let resolved = resolve(&actuator, "delete_pods", params.clone()).await.expect("resolve");
    assert_eq!(resolved.targets.len(), 2, "at most max_count: {:?}", resolved.targets);
    assert!(resolved.targets.iter().all(|t| failed.contains(&t.name)), "only Failed pods: {:?}", resolved.targets);
    let population = resolved.population.clone().expect("population");
    assert_eq!(population.pool, format!("Deployment/{ns}/worker"));
    assert!(population.size >= 4, "every pod of the selector, whatever its phase: {population:?}");
    assert_eq!(rails("delete_pods", resolved), Decision::Allow);

    // Dry-run deletes nothing.
    let report = execute(&actuator, "delete_pods", params.clone(), true).await;
    assert_eq!(report.status, ActionStatus::DryRun, "{report:?}");
    assert!(report.message.starts_with("would delete 2 of 3 Failed pods"), "{}", report.message);
    assert_eq!(pods_of(&client, &ns, "worker").await.iter().filter(|p| phase(p) == "Failed").count(), 3);

    let report = execute(&actuator, "delete_pods", params, false).await;
    assert_eq!(report.status, ActionStatus::Succeeded, "{report:?}");
    assert_eq!(report.evidence["deleted"], "2");
    assert_eq!(report.evidence["matched"], "3");
    let deleted: Vec<String> = report.evidence["pods"].split(',').map(str::to_owned).collect();
    assert!(deleted.iter().all(|d| failed.contains(d)), "{deleted:?} ⊂ {failed:?}");
    wait_until("the deleted pods to be gone", WAIT, || async {
        let names: Vec<String> =
            pods_of(&client, &ns, "worker").await.into_iter().filter_map(|p| p.metadata.name).collect();
        Ok(deleted.iter().all(|d| !names.contains(d)))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let left = pods_of(&client, &ns, "worker").await;
    let still_failed: Vec<&str> =
        left.iter().filter(|p| phase(p) == "Failed").filter_map(|p| p.metadata.name.as_deref()).collect();
    assert_eq!(still_failed.len(), 1, "one Failed pod past max_count is left: {still_failed:?}");
    assert!(left.iter().any(|p| p.metadata.name.as_deref() == Some(healthy.as_str())), "the Running pod stays");
}

async fn wait_budget(client: &kube::Client, ns: &str, name: &str, allowed: i32) {
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), ns);
    wait_until(&format!("PodDisruptionBudget {name} to allow {allowed} disruptions"), WAIT, || async {
        let pdb = pdbs.get(name).await?;
        let generation = pdb.metadata.generation;
        Ok(pdb.status.is_some_and(|s| s.observed_generation == generation && s.disruptions_allowed == allowed))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
}

#[tokio::test]
async fn evict_pods_respects_a_disruption_budget_and_names_it() {
    let (_cluster, ns, client, actuator) = setup("kevict").await;
    create_deployment(&client, &ns, deployment("guarded", 2, BTreeMap::new())).await;
    wait_running(&client, &ns, "guarded", 2).await;
    let pdb: PodDisruptionBudget = serde_json::from_value(json!({
        "metadata": { "name": "guarded-pdb" },
        "spec": { "minAvailable": 2, "selector": { "matchLabels": { "app": "guarded" } } }
    }))
    .expect("a valid PodDisruptionBudget");
    let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
    pdbs.create(&PostParams::default(), &pdb).await.expect("create pdb");
    wait_budget(&client, &ns, "guarded-pdb", 0).await;

    let params = json!({ "namespace": ns, "selector": "app=guarded", "max_count": 1 });
    let resolved = resolve(&actuator, "evict_pods", params.clone()).await.expect("resolve");
    assert_eq!(resolved.targets.len(), 1);
    for dry_run in [true, false] {
        let report = execute(&actuator, "evict_pods", params.clone(), dry_run).await;
        assert_eq!(report.status, ActionStatus::Failed, "dry_run={dry_run}: {report:?}");
        assert!(report.message.starts_with("refused: evicting Pod"), "{}", report.message);
        assert!(report.message.contains(&format!("PodDisruptionBudget {ns}/guarded-pdb")), "{}", report.message);
        assert!(report.message.contains("guarded-pdb needs 2 healthy pods"), "{}", report.message);
        assert_eq!(report.evidence["refused_by"], format!("PodDisruptionBudget {ns}/guarded-pdb"));
        assert_eq!(report.evidence["evicted"], "0");
    }
    assert_eq!(wait_running(&client, &ns, "guarded", 2).await.len(), 2, "nothing evicted");

    // A budget with room lets one pod go.
    let room = json!({ "spec": { "minAvailable": 1 } });
    pdbs.patch("guarded-pdb", &PatchParams::default(), &Patch::Merge(&room)).await.expect("patch pdb");
    wait_budget(&client, &ns, "guarded-pdb", 1).await;
    let report = execute(&actuator, "evict_pods", params, false).await;
    assert_eq!(report.status, ActionStatus::Succeeded, "{report:?}");
    assert_eq!(report.evidence["evicted"], "1");
    let evicted = report.evidence["pods"].clone();
    wait_until("the evicted pod to be gone", WAIT, || async {
        Ok(pods_of(&client, &ns, "guarded").await.iter().all(|p| p.metadata.name.as_deref() != Some(evicted.as_str())))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
}

#[tokio::test]
async fn patch_configmap_sets_keys_and_leaves_its_mark() {
    let (_cluster, ns, client, actuator) = setup("kcm").await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": { "name": "limits" },
        "data": { "pool.size": "10", "log.level": "info" }
    }))
    .expect("a valid ConfigMap");
    cms.create(&PostParams::default(), &cm).await.expect("create configmap");

    let params = json!({ "namespace": ns, "name": "limits", "data": { "pool.size": "40", "breaker": "on" } });
    let resolved = resolve(&actuator, "patch_configmap", params.clone()).await.expect("resolve");
    assert_eq!(resolved.targets[0].key(), format!("ConfigMap/{ns}/limits"));

    let report = execute(&actuator, "patch_configmap", params, false).await;
    assert_eq!(report.status, ActionStatus::Succeeded, "{report:?}");
    assert_eq!(report.evidence["before.pool.size"], "10");
    assert_eq!(report.evidence["after.pool.size"], "40");
    assert_eq!(report.evidence["before.breaker"], "(absent)");
    let cm = cms.get("limits").await.expect("get");
    let data = cm.data.clone().unwrap_or_default();
    assert_eq!(data.get("pool.size").map(String::as_str), Some("40"));
    assert_eq!(data.get("breaker").map(String::as_str), Some("on"));
    assert_eq!(data.get("log.level").map(String::as_str), Some("info"), "other keys are kept");
    assert_annotated_by_remedy(&cm.metadata);

    let missing = json!({ "namespace": ns, "name": "nope", "data": { "a": "b" } });
    assert_eq!(
        resolve(&actuator, "patch_configmap", missing).await.expect_err("missing"),
        format!("ConfigMap {ns}/nope not found")
    );
}

#[tokio::test]
async fn a_persons_later_change_stops_remedy_naming_the_manager() {
    let (_cluster, ns, client, actuator) = setup("khuman").await;
    create_deployment(&client, &ns, deployment("shop", 3, BTreeMap::new())).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);

    let report = execute(&actuator, "scale", json!({ "namespace": ns, "name": "shop", "replicas": 4 }), false).await;
    assert_eq!(report.status, ActionStatus::Succeeded, "{report:?}");
    // Remedy may change its own change again.
    let report = execute(&actuator, "scale", json!({ "namespace": ns, "name": "shop", "replicas": 5 }), false).await;
    assert_eq!(report.status, ActionStatus::Succeeded, "{report:?}");

    // A person sets the replicas afterwards, with their own field manager.
    let by_hand = PatchParams { field_manager: Some("alice-kubectl".into()), ..PatchParams::default() };
    deployments
        .patch("shop", &by_hand, &Patch::Merge(json!({ "spec": { "replicas": 2 } })))
        .await
        .expect("a person's change");

    let report = execute(&actuator, "scale", json!({ "namespace": ns, "name": "shop", "replicas": 6 }), false).await;
    assert_eq!(report.status, ActionStatus::Failed, "{report:?}");
    assert!(report.message.starts_with("refused:"), "{}", report.message);
    assert!(report.message.contains("spec.replicas was set by `alice-kubectl` at "), "{}", report.message);
    assert!(report.message.contains("does not reverse"), "{}", report.message);
    let scale = deployments.get_scale("shop").await.expect("scale");
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(2), "the person's value stands");
    // The dry run says the same.
    let report = execute(&actuator, "scale", json!({ "namespace": ns, "name": "shop", "replicas": 6 }), true).await;
    assert_eq!(report.status, ActionStatus::Failed, "{report:?}");
    assert!(report.message.contains("alice-kubectl"), "{}", report.message);

    // The same for a ConfigMap key.
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm: ConfigMap =
        serde_json::from_value(json!({ "metadata": { "name": "flags" }, "data": { "mode": "normal" } })).expect("cm");
    cms.create(&PostParams::default(), &cm).await.expect("create configmap");
    let degrade = json!({ "namespace": ns, "name": "flags", "data": { "mode": "degraded" } });
    assert_eq!(execute(&actuator, "patch_configmap", degrade.clone(), false).await.status, ActionStatus::Succeeded);
    let by_bob = PatchParams { field_manager: Some("bob-console".into()), ..PatchParams::default() };
    cms.patch("flags", &by_bob, &Patch::Merge(json!({ "data": { "mode": "normal" } }))).await.expect("bob's change");
    let report = execute(&actuator, "patch_configmap", degrade, false).await;
    assert_eq!(report.status, ActionStatus::Failed, "{report:?}");
    assert!(report.message.contains("data.mode was set by `bob-console`"), "{}", report.message);
    // A key nobody else touched can still be set.
    let other = json!({ "namespace": ns, "name": "flags", "data": { "banner": "degraded service" } });
    assert_eq!(execute(&actuator, "patch_configmap", other, false).await.status, ActionStatus::Succeeded);
}

#[tokio::test]
async fn dry_run_validates_and_describes_but_changes_nothing() {
    let (_cluster, ns, client, actuator) = setup("kdry").await;
    create_deployment(&client, &ns, deployment("calm", 2, BTreeMap::new())).await;
    wait_running(&client, &ns, "calm", 2).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let before = deployments.get("calm").await.expect("get");

    let report = execute(&actuator, "scale", json!({ "namespace": ns, "name": "calm", "replicas": 4 }), true).await;
    assert_eq!(report.status, ActionStatus::DryRun, "{report:?}");
    assert_eq!(report.message, format!("would scale Deployment {ns}/calm from 2 to 4"));
    let report = execute(&actuator, "rollout_restart", json!({ "namespace": ns, "name": "calm" }), true).await;
    assert_eq!(report.status, ActionStatus::DryRun, "{report:?}");
    assert_eq!(report.message, format!("would restart Deployment {ns}/calm"));
    let report =
        execute(&actuator, "delete_pods", json!({ "namespace": ns, "selector": "app=calm", "max_count": 2 }), true)
            .await;
    assert_eq!(report.status, ActionStatus::DryRun, "{report:?}");
    let report =
        execute(&actuator, "evict_pods", json!({ "namespace": ns, "selector": "app=calm", "max_count": 2 }), true)
            .await;
    assert_eq!(report.status, ActionStatus::DryRun, "{report:?}");

    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let cm: ConfigMap =
        serde_json::from_value(json!({ "metadata": { "name": "quiet" }, "data": { "a": "1" } })).expect("cm");
    cms.create(&PostParams::default(), &cm).await.expect("create configmap");
    let report =
        execute(&actuator, "patch_configmap", json!({ "namespace": ns, "name": "quiet", "data": { "a": "2" } }), true)
            .await;
    assert_eq!(report.status, ActionStatus::DryRun, "{report:?}");
    assert_eq!(report.message, format!("would set a in ConfigMap {ns}/quiet"));

    // Nothing moved: no new generation, no replicas, no restart, no mark.
    let after = deployments.get("calm").await.expect("get");
    assert_eq!(after.metadata.generation, before.metadata.generation, "the Deployment's spec was not written");
    assert_eq!(after.spec.as_ref().and_then(|s| s.replicas), Some(2));
    let template = after.spec.as_ref().and_then(|s| s.template.metadata.as_ref()).and_then(|m| m.annotations.clone());
    assert!(!template.unwrap_or_default().contains_key(RESTARTED_AT_ANNOTATION));
    assert!(!annotations(&after.metadata).contains_key(CHANGED_AT_ANNOTATION));
    assert_eq!(wait_running(&client, &ns, "calm", 2).await.len(), 2);
    let cm = cms.get("quiet").await.expect("get");
    assert_eq!(cm.data.unwrap_or_default().get("a").map(String::as_str), Some("1"));
    assert!(!annotations(&cm.metadata).contains_key(CHANGED_AT_ANNOTATION));
}

#[tokio::test]
async fn patch_hpa_and_rollout_restart_change_what_they_name() {
    let (_cluster, ns, client, actuator) = setup("khpa").await;
    create_deployment(&client, &ns, deployment("front", 2, BTreeMap::new())).await;
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "metadata": { "name": "front" },
        "spec": {
            "scaleTargetRef": { "apiVersion": "apps/v1", "kind": "Deployment", "name": "front" },
            "minReplicas": 1,
            "maxReplicas": 4,
            "metrics": [{ "type": "Resource", "resource": { "name": "cpu", "target": { "type": "Utilization", "averageUtilization": 80 } } }]
        }
    }))
    .expect("a valid HPA");
    let hpas: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), &ns);
    hpas.create(&PostParams::default(), &hpa).await.expect("create hpa");

    let params = json!({ "namespace": ns, "name": "front", "min_replicas": 3, "max_replicas": 10 });
    let resolved = resolve(&actuator, "patch_hpa", params.clone()).await.expect("resolve");
    assert_eq!(resolved.targets[0].key(), format!("HorizontalPodAutoscaler/{ns}/front"));
    let report = execute(&actuator, "patch_hpa", params, false).await;
    assert_eq!(report.status, ActionStatus::Succeeded, "{report:?}");
    assert_eq!(report.message, format!("changed HorizontalPodAutoscaler {ns}/front from 1..4 to 3..10"));
    let hpa = hpas.get("front").await.expect("get");
    let spec = hpa.spec.clone().expect("spec");
    assert_eq!((spec.min_replicas, spec.max_replicas), (Some(3), 10));
    assert_annotated_by_remedy(&hpa.metadata);

    // Restarted: a Deployment the autoscaler does not drive, so nothing
    // else writes it meanwhile.
    create_deployment(&client, &ns, deployment("back", 1, BTreeMap::new())).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let generation = deployments.get("back").await.expect("get").metadata.generation;
    let report = execute(&actuator, "rollout_restart", json!({ "namespace": ns, "name": "back" }), false).await;
    assert_eq!(report.status, ActionStatus::Succeeded, "{report:?}");
    let front = deployments.get("back").await.expect("get");
    assert!(front.metadata.generation > generation, "the template changed");
    let template = front.spec.as_ref().and_then(|s| s.template.metadata.as_ref()).and_then(|m| m.annotations.clone());
    let restarted = template.unwrap_or_default().get(RESTARTED_AT_ANNOTATION).cloned().expect("restartedAt");
    assert_eq!(report.evidence["restarted_at"], restarted);
    assert_annotated_by_remedy(&front.metadata);
}

#[tokio::test]
async fn list_pods_and_list_services_count_what_is_there() {
    let (_cluster, ns, client, actuator) = setup("klist").await;
    create_deployment(&client, &ns, deployment("shop", 3, BTreeMap::new())).await;
    let running = wait_running(&client, &ns, "shop", 3).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let failed = running[0].metadata.name.clone().expect("name");
    let status = json!({ "status": { "phase": "Failed" } });
    pods.patch_status(&failed, &PatchParams::default(), &Patch::Merge(&status)).await.expect("patch status");
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    for (name, app) in [("shop", "shop"), ("lonely", "nobody")] {
        let svc: Service = serde_json::from_value(json!({
            "metadata": { "name": name },
            "spec": { "selector": { "app": app }, "ports": [{ "port": 80, "targetPort": 8080 }] }
        }))
        .expect("a valid Service");
        services.create(&PostParams::default(), &svc).await.expect("create service");
    }

    let params = json!({ "namespace": ns, "selector": "app=shop" });
    let report = wait_for("list_pods to see the Failed pod and its replacement", WAIT, || async {
        let r = execute(&actuator, "list_pods", params.clone(), false).await;
        Ok((r.evidence.get("failed").map(String::as_str) == Some("1")
            && r.evidence.get("running").map(String::as_str) == Some("3"))
        .then_some(r))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(report.status, ActionStatus::Succeeded, "{report:?}");
    assert_eq!(report.evidence["pods"], "4");
    assert_eq!(report.evidence["failed_pods"], failed);
    assert_eq!(report.evidence["not_ready"], "0");

    let params = json!({ "namespace": ns });
    let report = wait_for("the shop service to have 3 ready endpoints", WAIT, || async {
        let r = execute(&actuator, "list_services", params.clone(), false).await;
        Ok((r.evidence.get("services.shop.ready").map(String::as_str) == Some("3")).then_some(r))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(report.status, ActionStatus::Succeeded, "{report:?}");
    assert_eq!(report.evidence["services"], "2");
    assert_eq!(report.evidence["services.lonely.ready"], "0");
    assert_eq!(report.evidence["services_without_endpoints"], "lonely");

    let report = execute(&actuator, "list_pods", json!({ "namespace": "no-such-namespace" }), false).await;
    assert_eq!(report.status, ActionStatus::Failed, "{report:?}");
    assert_eq!(report.message, "Namespace no-such-namespace not found");
}

#[tokio::test]
async fn a_statefulset_scales_through_its_scale_subresource_too() {
    let (_cluster, ns, client, actuator) = setup("ksts").await;
    let sts: StatefulSet = serde_json::from_value(json!({
        "metadata": { "name": "db" },
        "spec": {
            "serviceName": "db",
            "replicas": 1,
            "selector": { "matchLabels": { "app": "db" } },
            "template": {
                "metadata": { "labels": { "app": "db" } },
                "spec": {
                    "terminationGracePeriodSeconds": 0,
                    "nodeSelector": { KWOK_NODE_LABEL.0: KWOK_NODE_LABEL.1 },
                    "tolerations": [kwok_toleration()],
                    "containers": [{ "name": "db", "image": "example.invalid/db:1" }]
                }
            }
        }
    }))
    .expect("a valid StatefulSet");
    Api::<StatefulSet>::namespaced(client.clone(), &ns).create(&PostParams::default(), &sts).await.expect("create");
    wait_running(&client, &ns, "db", 1).await;

    let params = json!({ "kind": "StatefulSet", "namespace": ns, "name": "db", "replicas": 2 });
    let resolved = resolve(&actuator, "scale", params.clone()).await.expect("resolve");
    assert_eq!(resolved.targets[0].key(), format!("StatefulSet/{ns}/db"));
    assert_eq!(resolved.capacity.map(|c| (c.current, c.desired)), Some((1, 2)));
    let report = execute(&actuator, "scale", params, false).await;
    assert_eq!(report.status, ActionStatus::Succeeded, "{report:?}");
    assert_eq!(report.message, format!("scaled StatefulSet {ns}/db from 1 to 2"));
    wait_running(&client, &ns, "db", 2).await;
    let sts = Api::<StatefulSet>::namespaced(client.clone(), &ns).get("db").await.expect("get");
    assert_annotated_by_remedy(&sts.metadata);
}

/// A kwok Deployment carrying `annotations`.
fn deployment(name: &str, replicas: i32, annotations: BTreeMap<String, String>) -> Deployment {
    let mut d = kwok_deployment(name, replicas);
    d.metadata.annotations = Some(annotations);
    d
}
