//! deploy/ against a real control plane: the kustomize base applies on a
//! bare cluster; its RBAC lets the agent and the coordinator do what the
//! runbooks need and refuses the rest; the CRDs are established and their
//! schemas refuse bad objects; the admission policy keeps the coordinator's
//! pod patches to its leader label; and the configuration the manifests
//! hand to the binaries is what the binaries accept.
//!
//! One cluster serves the whole file (no controller-manager: nothing here
//! needs pods to run). The base is applied for real once, by whichever test
//! needs it first.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, Pod, Secret, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::ServiceCIDR;
use kube::Client;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, ListParams, ObjectMeta, Patch, PatchParams,
    PostParams,
};
use remedy_e2e::cluster::{TestCluster, kwok_deployment, wait_for, wait_until};
use remedy_e2e::procs::{Agent, Coordinator, remedyctl};
use remedy_shared::catalog::{CatalogKind, peek_kind};
use serde_json::{Value, json};

const REMEDY_NS: &str = "remedy-system";
const WORKLOADS_NS: &str = "saas-idp-production";
const CRDS: [&str; 5] = [
    "incidents.remedy.dev",
    "approvals.remedy.dev",
    "guardstates.remedy.dev",
    "runrecords.remedy.dev",
    "idempotencykeys.remedy.dev",
];
/// The seed's alerts, one per runbook.
const SEED_ALERTS: [&str; 7] = [
    "P0_SystemDown",
    "P0_DatabaseDown",
    "P0_AuthenticationSystemDown",
    "P1_SeverePerformanceDegradation",
    "P1_HighErrorRate",
    "P2_HighResourceUsage",
    "P1_BruteForceAttackDetected",
];
/// Bound on waiting for RBAC and admission policies to reach the
/// apiserver's caches.
const PROPAGATION: Duration = Duration::from_secs(30);

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn deploy_path(sub: &str) -> String {
    deploy_dir().join(sub).display().to_string()
}

fn fail(e: anyhow::Error) -> ! {
    panic!("{e:#}")
}

/// The HTTP status of a refused API call, or a panic naming what happened.
fn refused_with<T: std::fmt::Debug>(what: &str, result: kube::Result<T>) -> u16 {
    match result {
        Err(kube::Error::Api(status)) => status.code,
        other => panic!("{what}: expected a refusal, got {other:?}"),
    }
}

fn assert_forbidden<T: std::fmt::Debug>(what: &str, result: kube::Result<T>) {
    assert_eq!(refused_with(what, result), 403, "{what} must be forbidden");
}

async fn ensure_namespace(client: &Client, name: &str) {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace { metadata: ObjectMeta { name: Some(name.into()), ..Default::default() }, ..Default::default() };
    match namespaces.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating namespace {name}: {e}"),
    }
    // Pods need their ServiceAccount; without a controller-manager nobody
    // else makes `default`.
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), name);
    let sa = ServiceAccount {
        metadata: ObjectMeta { name: Some("default".into()), ..Default::default() },
        ..Default::default()
    };
    match sas.create(&PostParams::default(), &sa).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating {name}/default: {e}"),
    }
}

/// The namespaces the base puts objects in. A server-side dry run creates
/// nothing, so it refuses objects in a namespace that does not exist yet,
/// even one the same apply would create; the workloads' namespace is the
/// user's and must exist before the base is applied at all.
async fn ensure_namespaces(cluster: &TestCluster) {
    let client = cluster.client();
    ensure_namespace(&client, REMEDY_NS).await;
    ensure_namespace(&client, WORKLOADS_NS).await;
}

/// What the server-side dry run of the base printed on the bare cluster.
static APPLIED: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();

/// `kubectl apply -k deploy/` for real, once per cluster, then waits for the
/// CRDs to be Established. The server-side dry run goes first, inside the
/// same once-only step: run beside a real apply from another test it would
/// plan creations that the real apply makes first, and fail with
/// AlreadyExists. Returns the dry run's output.
async fn apply_base(cluster: &'static TestCluster) -> &'static str {
    APPLIED
        .get_or_init(|| async {
            ensure_namespaces(cluster).await;
            let dry_run = cluster
                .kubectl_ok(["apply", "--dry-run=server", "-k", &deploy_path("")])
                .await
                .unwrap_or_else(|e| fail(e));
            cluster.kubectl_ok(["apply", "-k", &deploy_path("")]).await.unwrap_or_else(|e| fail(e));
            let mut args = vec!["wait".to_owned(), "--for=condition=Established".into(), "--timeout=60s".into()];
            args.extend(CRDS.iter().map(|c| format!("crd/{c}")));
            cluster.kubectl_ok(&args).await.unwrap_or_else(|e| fail(e));
            dry_run
        })
        .await
}

fn pod(name: &str, labels: Value, service_account: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": { "name": name, "labels": labels },
        "spec": {
            "serviceAccountName": service_account,
            "automountServiceAccountToken": false,
            "containers": [{ "name": "app", "image": "example.invalid/app:1" }]
        }
    }))
    .expect("a valid Pod")
}

fn secret(name: &str) -> Secret {
    Secret {
        metadata: ObjectMeta { name: Some(name.into()), ..Default::default() },
        string_data: Some([("password".to_owned(), "hunter2".to_owned())].into()),
        ..Default::default()
    }
}

async fn create_ignoring_conflict<K>(api: &Api<K>, object: &K)
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating {:?}: {e}", object.meta().name),
    }
}

fn scale_to(replicas: i32) -> Patch<Value> {
    Patch::Merge(json!({ "spec": { "replicas": replicas } }))
}

/// The rendered base, as kubectl would send it (JSON), without the server
/// storing anything.
async fn rendered_base(cluster: &TestCluster) -> Vec<Value> {
    let out = cluster
        .kubectl_ok(["apply", "--dry-run=client", "-o", "json", "-k", &deploy_path("")])
        .await
        .unwrap_or_else(|e| fail(e));
    let list: Value = serde_json::from_str(&out).expect("kubectl prints JSON");
    list["items"].as_array().cloned().expect("a List of objects")
}

fn find<'a>(objects: &'a [Value], kind: &str, name_prefix: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"].as_str().is_some_and(|n| n.starts_with(name_prefix)))
        .unwrap_or_else(|| panic!("no {kind} named {name_prefix}* in the base"))
}

/// The value of a top-level `key: value` line of a YAML document.
fn yaml_scalar(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| v.trim().to_owned())
        .unwrap_or_else(|| panic!("no `{key}:` line in\n{text}"))
}

#[tokio::test]
async fn base_applies_with_server_side_dry_run_and_leaves_out_what_a_bare_cluster_lacks() {
    let cluster = TestCluster::start().await;
    let out = apply_base(cluster).await;
    for object in [
        "namespace/remedy-system",
        "customresourcedefinition.apiextensions.k8s.io/incidents.remedy.dev",
        "customresourcedefinition.apiextensions.k8s.io/guardstates.remedy.dev",
        "serviceaccount/remedy-agent",
        "serviceaccount/remedy-coordinator",
        "role.rbac.authorization.k8s.io/remedy-coordinator",
        "clusterrole.rbac.authorization.k8s.io/remedy-coordinator-workloads",
        "rolebinding.rbac.authorization.k8s.io/remedy-coordinator",
        "validatingadmissionpolicy.admissionregistration.k8s.io/remedy-coordinator-leader-label-only",
        "configmap/remedy-runbooks-",
        "service/remedy-coordinator ",
        "service/remedy-coordinator-http",
        "service/remedy-coordinator-replicas",
        "deployment.apps/remedy-coordinator",
        "poddisruptionbudget.policy/remedy-coordinator",
        "daemonset.apps/remedy-agent",
        "networkpolicy.networking.k8s.io/remedy-coordinator",
        "networkpolicy.networking.k8s.io/remedy-agent",
    ] {
        assert!(out.contains(object), "{object} missing from the dry run:\n{out}");
    }
    assert!(out.contains("(server dry run)"), "{out}");

    // The base renders no Prometheus Operator objects and nothing of the
    // workloads' own; the two optional directories render on their own.
    let base = cluster.kubectl_ok(["kustomize", &deploy_path("")]).await.unwrap_or_else(|e| fail(e));
    for absent in ["kind: PrometheusRule", "kind: ServiceMonitor", "kind: HorizontalPodAutoscaler"] {
        assert!(!base.contains(absent), "the base must not include {absent}");
    }
    let monitoring = cluster.kubectl_ok(["kustomize", &deploy_path("monitoring")]).await.unwrap_or_else(|e| fail(e));
    assert!(monitoring.contains("kind: PrometheusRule") && monitoring.contains("kind: ServiceMonitor"));

    // Every runbook's alert has its rule, and every seed rule starts a
    // runbook.
    let alerts: BTreeSet<String> = monitoring
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: ").map(str::to_owned))
        .filter(|a| !a.starts_with("Remedy"))
        .collect();
    let mut triggers = BTreeSet::new();
    for entry in std::fs::read_dir(deploy_dir().join("runbooks")).expect("deploy/runbooks") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("runbook");
        if peek_kind(&text).is_some_and(|kind| kind != CatalogKind::Runbook) {
            continue; // a policy, schedule or template, beside the runbooks
        }
        let after = text.split_once("\n  alerts:\n").map(|(_, rest)| rest).expect("a runbook with an alert trigger");
        let name = after.lines().next().and_then(|l| l.trim().strip_prefix("- name: ")).expect("the alert's name");
        triggers.insert(name.to_owned());
    }
    let seed: BTreeSet<String> = SEED_ALERTS.iter().map(|s| (*s).to_owned()).collect();
    assert_eq!(alerts, seed, "PrometheusRules vs the seed's alerts");
    assert_eq!(triggers, seed, "runbook triggers vs the seed's alerts");

    // The seed's HPA: the server validates it (autoscaling/v2 is built in).
    let out = cluster
        .kubectl_ok(["apply", "--dry-run=server", "-k", &deploy_path("examples")])
        .await
        .unwrap_or_else(|e| fail(e));
    assert!(out.contains("horizontalpodautoscaler.autoscaling/saas-idp-api-hpa"), "{out}");
}

#[tokio::test]
async fn rbac_lets_the_agent_and_the_coordinator_do_what_runbooks_need_and_refuses_the_rest() {
    let cluster = TestCluster::start().await;
    apply_base(cluster).await;
    let admin = cluster.client();
    let other_ns = cluster.new_namespace("not-workloads").await.unwrap_or_else(|e| fail(e));

    for ns in [WORKLOADS_NS, other_ns.as_str()] {
        let deployments: Api<Deployment> = Api::namespaced(admin.clone(), ns);
        create_ignoring_conflict(&deployments, &kwok_deployment("saas-idp-api", 3)).await;
        create_ignoring_conflict(&Api::<Secret>::namespaced(admin.clone(), ns), &secret("db-credentials")).await;
    }
    create_ignoring_conflict(&Api::<Secret>::namespaced(admin.clone(), REMEDY_NS), &secret("remedy-secret")).await;
    let workload_pods: Api<Pod> = Api::namespaced(admin.clone(), WORKLOADS_NS);
    create_ignoring_conflict(&workload_pods, &pod("stuck-api-pod", json!({ "app": "saas-idp-api" }), "default")).await;
    let other_pods: Api<Pod> = Api::namespaced(admin.clone(), &other_ns);
    create_ignoring_conflict(&other_pods, &pod("someone-elses-pod", json!({ "app": "x" }), "default")).await;

    // ---- the agent ----
    let agent = cluster.client_for_service_account(REMEDY_NS, "remedy-agent").await.unwrap_or_else(|e| fail(e));
    // Its node's pods, cluster-wide, with the field selector it uses.
    let all_pods: Api<Pod> = Api::all(agent.clone());
    let on_node = ListParams::default().fields("spec.nodeName=kwok-node-0");
    wait_for("the agent to be allowed to list pods", PROPAGATION, || async {
        Ok(Some(all_pods.list(&on_node).await?))
    })
    .await
    .unwrap_or_else(|e| fail(e));
    let listed = all_pods.list(&ListParams::default()).await.expect("the agent lists every namespace's pods");
    assert!(listed.items.iter().any(|p| p.metadata.name.as_deref() == Some("stuck-api-pod")));
    // A namespace's remedy.dev/hold, before a restart.
    Api::<Namespace>::all(agent.clone()).get(WORKLOADS_NS).await.expect("the agent reads a namespace");

    // Deletes a pod in the workloads' namespace (node-local pod restart)...
    let agent_workload_pods: Api<Pod> = Api::namespaced(agent.clone(), WORKLOADS_NS);
    wait_for("the agent to be allowed to delete a workload pod", PROPAGATION, || async {
        Ok(Some(agent_workload_pods.delete("stuck-api-pod", &DeleteParams::default()).await?))
    })
    .await
    .unwrap_or_else(|e| fail(e));
    // ...and nowhere else.
    assert_forbidden(
        "the agent deleting a pod outside the workloads' namespaces",
        Api::<Pod>::namespaced(agent.clone(), &other_ns).delete("someone-elses-pod", &DeleteParams::default()).await,
    );
    assert_forbidden(
        "the agent patching a Deployment's scale",
        Api::<Deployment>::namespaced(agent.clone(), WORKLOADS_NS)
            .patch_scale("saas-idp-api", &PatchParams::default(), &scale_to(10))
            .await,
    );
    assert_forbidden(
        "the agent reading a Secret",
        Api::<Secret>::namespaced(agent.clone(), WORKLOADS_NS).get("db-credentials").await,
    );
    assert_forbidden(
        "the agent reading a Secret in its own namespace",
        Api::<Secret>::namespaced(agent.clone(), REMEDY_NS).get("remedy-secret").await,
    );
    let configmap = ConfigMap {
        metadata: ObjectMeta { name: Some("agent-was-here".into()), ..Default::default() },
        ..Default::default()
    };
    assert_forbidden(
        "the agent creating a ConfigMap",
        Api::<ConfigMap>::namespaced(agent.clone(), WORKLOADS_NS).create(&PostParams::default(), &configmap).await,
    );

    // ---- the coordinator ----
    let coordinator =
        cluster.client_for_service_account(REMEDY_NS, "remedy-coordinator").await.unwrap_or_else(|e| fail(e));
    // Its own infrastructure, never to be banned: the nodes, the service
    // ranges and the API server's endpoints, and no other EndpointSlices.
    wait_for("the coordinator to be allowed to list nodes", PROPAGATION, || async {
        Ok(Some(Api::<Node>::all(coordinator.clone()).list(&ListParams::default()).await?))
    })
    .await
    .unwrap_or_else(|e| fail(e));
    Api::<ServiceCIDR>::all(coordinator.clone())
        .list(&ListParams::default())
        .await
        .expect("the coordinator lists the service ranges");
    let api_server = ListParams::default().labels("kubernetes.io/service-name=kubernetes");
    Api::<EndpointSlice>::namespaced(coordinator.clone(), "default")
        .list(&api_server)
        .await
        .expect("the coordinator lists the API server's EndpointSlices");
    assert_forbidden(
        "the coordinator listing EndpointSlices outside `default` and the workloads' namespaces",
        Api::<EndpointSlice>::namespaced(coordinator.clone(), &other_ns).list(&ListParams::default()).await,
    );

    // P0-001 scale_api: saas-idp-api to 10 through the scale subresource.
    let workload_deployments: Api<Deployment> = Api::namespaced(coordinator.clone(), WORKLOADS_NS);
    let scale = wait_for("the coordinator to be allowed to scale saas-idp-api", PROPAGATION, || async {
        Ok(Some(workload_deployments.patch_scale("saas-idp-api", &PatchParams::default(), &scale_to(10)).await?))
    })
    .await
    .unwrap_or_else(|e| fail(e));
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(10));
    let current = Api::<Deployment>::namespaced(admin.clone(), WORKLOADS_NS).get("saas-idp-api").await.expect("get");
    assert_eq!(current.spec.and_then(|s| s.replicas), Some(10), "the scale reached the Deployment");
    // Reads what the guard rails read: the workload, its namespace.
    workload_deployments.get("saas-idp-api").await.expect("the coordinator reads the Deployment (remedy.dev/hold)");
    Api::<Namespace>::all(coordinator.clone())
        .get(WORKLOADS_NS)
        .await
        .expect("the coordinator reads namespaces (remedy.dev/hold)");

    assert_forbidden(
        "the coordinator scaling a Deployment outside the workloads' namespaces",
        Api::<Deployment>::namespaced(coordinator.clone(), &other_ns)
            .patch_scale("saas-idp-api", &PatchParams::default(), &scale_to(10))
            .await,
    );
    assert_forbidden(
        "the coordinator deleting a pod outside the workloads' namespaces",
        Api::<Pod>::namespaced(coordinator.clone(), &other_ns)
            .delete("someone-elses-pod", &DeleteParams::default())
            .await,
    );
    for ns in [WORKLOADS_NS, REMEDY_NS, other_ns.as_str()] {
        assert_forbidden(
            &format!("the coordinator listing Secrets in {ns}"),
            Api::<Secret>::namespaced(coordinator.clone(), ns).list(&ListParams::default()).await,
        );
    }
    assert_forbidden(
        "the coordinator reading a Secret",
        Api::<Secret>::namespaced(coordinator.clone(), WORKLOADS_NS).get("db-credentials").await,
    );
    assert!(other_pods.get_opt("someone-elses-pod").await.expect("admin get").is_some(), "a refused delete deleted");
}

fn incident(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "remedy.dev/v1alpha1",
        "kind": "Incident",
        "metadata": { "name": name },
        "spec": spec
    }))
    .expect("a DynamicObject")
}

fn good_incident_spec(id: &str) -> Value {
    json!({
        "id": id,
        "key": { "kind": "alert", "name": "P0_SystemDown", "target": "service/saas-idp-api" },
        "openedAt": "2026-11-26T10:00:00Z"
    })
}

fn remedy_api(client: &Client, ns: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("remedy.dev", "v1alpha1", kind);
    Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk_with_plural(&gvk, plural))
}

/// The API's refusal of a create, as (code, message).
async fn refusal(api: &Api<DynamicObject>, object: &DynamicObject) -> (u16, String) {
    match api.create(&PostParams::default(), object).await {
        Err(kube::Error::Api(status)) => (status.code, status.message),
        other => panic!("{:?} should be refused, got {other:?}", object.metadata.name),
    }
}

#[tokio::test]
async fn crds_are_established_and_their_schemas_refuse_bad_objects() {
    let cluster = TestCluster::start().await;
    apply_base(cluster).await;
    let client = cluster.client();
    let ns = cluster.new_namespace("store").await.unwrap_or_else(|e| fail(e));
    let incidents = remedy_api(&client, &ns, "Incident", "incidents");

    // A well-formed incident is stored, and its status takes the timeline.
    incidents
        .create(&PostParams::default(), &incident("inc-000042", good_incident_spec("INC-000042")))
        .await
        .expect("a valid Incident is accepted");
    let status = json!({ "status": {
        "state": "mitigating", "severity": "critical", "summary": "API down", "runbook": "P0-001",
        "findingCount": 3, "updatedAt": "2026-11-26T10:01:00Z",
        "activeSources": [{ "source": "alertmanager" }],
        "timeline": [
            { "at": "2026-11-26T10:00:00Z", "kind": "opened", "message": "P0_SystemDown firing" },
            { "at": "2026-11-26T10:00:01Z", "kind": "decision", "message": "allowed: scale",
              "details": { "rail": "budget", "step": "scale_api" } }
        ]
    }});
    let stored = incidents
        .patch_status("inc-000042", &PatchParams::default(), &Patch::Merge(&status))
        .await
        .expect("a valid status is accepted through the status subresource");
    assert_eq!(stored.data["status"]["timeline"].as_array().map(Vec::len), Some(2));
    let table = cluster.kubectl_ok(["get", "incidents", "-n", &ns]).await.unwrap_or_else(|e| fail(e));
    for column in ["ID", "STATE", "SEVERITY", "RUNBOOK", "INC-000042", "mitigating", "P0-001"] {
        assert!(table.contains(column), "printer columns: {column} missing in\n{table}");
    }

    // Wrong types, values and shapes are refused by the schema (422).
    let mut bad_type = good_incident_spec("INC-000043");
    bad_type["openedAt"] = json!(1764151200000_i64);
    let mut bad_enum = good_incident_spec("INC-000044");
    bad_enum["key"]["kind"] = json!("rumour");
    let bad_id = good_incident_spec("42");
    let mut missing = good_incident_spec("INC-000046");
    missing.as_object_mut().expect("object").remove("key");
    for (name, spec, field) in [
        ("inc-000043", bad_type, "spec.openedAt"),
        ("inc-000044", bad_enum, "spec.key.kind"),
        ("inc-000045", bad_id, "spec.id"),
        ("inc-000046", missing, "spec.key"),
    ] {
        let (code, message) = refusal(&incidents, &incident(name, spec)).await;
        assert_eq!(code, 422, "{name}: {message}");
        assert!(message.contains(field), "{name}: the refusal names {field}: {message}");
    }
    match incidents
        .patch_status(
            "inc-000042",
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": { "findingCount": "many", "timeline": [{ "at": "now" }] } })),
        )
        .await
    {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert!(status.message.contains("status.findingCount"), "{}", status.message);
        }
        other => panic!("a status with a string count must be refused, got {other:?}"),
    }
    // An incident's identity never changes (CEL).
    match incidents
        .patch("inc-000042", &PatchParams::default(), &Patch::Merge(json!({ "spec": { "id": "INC-000099" } })))
        .await
    {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422, "{status:?}");
            assert!(status.message.contains("immutable"), "{}", status.message);
        }
        other => panic!("changing an incident's id must be refused, got {other:?}"),
    }

    // One GuardState per cluster, named `cluster`.
    let guard = remedy_api(&client, &ns, "GuardState", "guardstates");
    let guard_state = |name: &str| -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "remedy.dev/v1alpha1", "kind": "GuardState", "metadata": { "name": name }
        }))
        .expect("a DynamicObject")
    };
    guard.create(&PostParams::default(), &guard_state("cluster")).await.expect("GuardState `cluster`");
    let (code, message) = refusal(&guard, &guard_state("another")).await;
    assert_eq!(code, 422, "{message}");
    assert!(message.contains("one GuardState per cluster"), "{message}");
    let paused = json!({ "status": {
        "paused": { "by": "alice", "since": "2026-11-26T10:00:00Z", "reason": "change freeze" },
        "breakers": [{ "scope": "runbook/P0-001", "since": "2026-11-26T10:00:00Z", "reason": "3 failures" }],
        "actions": [{ "at": "2026-11-26T10:00:00Z", "runbookId": "P0-001", "incidentId": "INC-000042",
            "stepId": "scale_api", "attempt": 1, "actionKind": "scale",
            "targets": ["Deployment/saas-idp-production/saas-idp-api"], "mode": "live" }]
    }});
    guard.patch_status("cluster", &PatchParams::default(), &Patch::Merge(&paused)).await.expect("the rails' memory");
    let bad_breaker = json!({ "status": { "breakers": [{ "scope": "everything", "since": "2026-11-26T10:00:00Z", "reason": "x" }] } });
    assert_eq!(
        refused_with(
            "a breaker with an unknown scope",
            guard.patch_status("cluster", &PatchParams::default(), &Patch::Merge(&bad_breaker)).await
        ),
        422
    );

    // An idempotency key is created once: the second create of the same
    // key conflicts, which is what keeps a step from running twice.
    let keys = remedy_api(&client, &ns, "IdempotencyKey", "idempotencykeys");
    let key = |name: &str, key: &str| -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "remedy.dev/v1alpha1", "kind": "IdempotencyKey", "metadata": { "name": name },
            "spec": { "key": key, "incidentId": "INC-000042", "runbookId": "P0-001", "stepId": "scale_api",
                "attempt": 1, "actionKind": "scale", "mode": "live", "recordedAt": "2026-11-26T10:00:02Z",
                "fencing": { "holder": "remedy-coordinator-abc", "leaseTransitions": 3 } }
        }))
        .expect("a DynamicObject")
    };
    keys.create(&PostParams::default(), &key("inc-000042-0123456789abcdef", "INC-000042/scale_api#1"))
        .await
        .expect("the first record of a key");
    let (code, _) = refusal(&keys, &key("inc-000042-0123456789abcdef", "INC-000042/scale_api#1")).await;
    assert_eq!(code, 409, "recording the same key twice conflicts");
    let (code, message) = refusal(&keys, &key("inc-000042-fedcba9876543210", "INC-000042/scale_api#2")).await;
    assert_eq!(code, 422, "{message}");
    assert!(message.contains("incidentId/stepId#attempt"), "{message}");

    // Approvals and runs take well-formed objects.
    let approvals = remedy_api(&client, &ns, "Approval", "approvals");
    let approval: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "remedy.dev/v1alpha1", "kind": "Approval", "metadata": { "name": "inc-000042-aaaaaaaaaaaaaaaa" },
        "spec": { "incidentId": "INC-000042", "stepId": "failover_database", "attempt": 1, "runbookId": "P0-001",
            "action": "pg_failover primary -> replica", "reason": { "why": "runbook" },
            "requestedAt": "2026-11-26T10:00:00Z", "expiresAt": "2026-11-26T10:05:00Z" }
    }))
    .expect("a DynamicObject");
    approvals.create(&PostParams::default(), &approval).await.expect("a valid Approval");
    let half_granted = json!({ "status": { "status": "granted", "by": "alice" } });
    assert_eq!(
        refused_with(
            "a grant without its time and validity",
            approvals
                .patch_status("inc-000042-aaaaaaaaaaaaaaaa", &PatchParams::default(), &Patch::Merge(&half_granted))
                .await
        ),
        422
    );
    let runs = remedy_api(&client, &ns, "RunRecord", "runrecords");
    let run: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "remedy.dev/v1alpha1", "kind": "RunRecord", "metadata": { "name": "inc-000042" },
        "spec": { "incidentId": "INC-000042", "runbookId": "P0-001", "mode": "live",
            "startedBy": "alert P0_SystemDown", "createdAt": "2026-11-26T10:00:00Z" }
    }))
    .expect("a DynamicObject");
    runs.create(&PostParams::default(), &run).await.expect("a valid RunRecord");
    let progress = json!({ "status": {
        "phase": "running", "nextStep": 4, "attempt": 1, "updatedAt": "2026-11-26T10:00:03Z",
        "intents": [{ "key": "INC-000042/scale_api#1", "stepId": "scale_api",
            "recordedAt": "2026-11-26T10:00:02Z", "outcome": "succeeded" }],
        "context": { "params": { "api_base": "http://saas-idp-api:8080" },
            "steps": { "health": { "ok": false, "status": 503, "latency_ms": 12.5, "nested": { "list": [1, "two"] } } } }
    }});
    let stored = runs
        .patch_status("inc-000042", &PatchParams::default(), &Patch::Merge(&progress))
        .await
        .expect("a run's progress, with free-form step results");
    assert_eq!(stored.data["status"]["context"]["steps"]["health"]["nested"]["list"][1], "two");
}

#[tokio::test]
async fn admission_policy_lets_the_coordinator_change_only_its_leader_label() {
    let cluster = TestCluster::start().await;
    apply_base(cluster).await;
    let admin = cluster.client();
    let admin_pods: Api<Pod> = Api::namespaced(admin.clone(), REMEDY_NS);
    let coordinator_labels = json!({ "app.kubernetes.io/name": "remedy-coordinator" });
    create_ignoring_conflict(&admin_pods, &pod("coordinator-a", coordinator_labels, "remedy-coordinator")).await;
    let agent_labels = json!({ "app.kubernetes.io/name": "remedy-agent" });
    create_ignoring_conflict(&admin_pods, &pod("agent-a", agent_labels, "remedy-agent")).await;

    // The policy compiled and type-checked without warnings.
    let policy = cluster
        .kubectl_ok(["get", "validatingadmissionpolicy", "remedy-coordinator-leader-label-only", "-o", "json"])
        .await
        .unwrap_or_else(|e| fail(e));
    let policy: Value = serde_json::from_str(&policy).expect("JSON");
    let warnings = &policy["status"]["typeChecking"]["expressionWarnings"];
    assert!(warnings.is_null() || warnings.as_array().is_some_and(Vec::is_empty), "{warnings}");

    let coordinator =
        cluster.client_for_service_account(REMEDY_NS, "remedy-coordinator").await.unwrap_or_else(|e| fail(e));
    let pods: Api<Pod> = Api::namespaced(coordinator, REMEDY_NS);
    let label = |value: Value| Patch::Merge(json!({ "metadata": { "labels": { "remedy.dev/leader": value } } }));

    // The leader labels its pod.
    let labelled = wait_for("the coordinator to label its pod leader", PROPAGATION, || async {
        Ok(Some(pods.patch("coordinator-a", &PatchParams::default(), &label(json!("true"))).await?))
    })
    .await
    .unwrap_or_else(|e| fail(e));
    assert_eq!(labelled.metadata.labels.unwrap_or_default().get("remedy.dev/leader").map(String::as_str), Some("true"));

    // The policy reaches the apiserver's cache in its own time: wait until
    // labelling an agent's pod is refused.
    wait_until("the policy to refuse labelling an agent's pod", PROPAGATION, || async {
        match pods.patch("agent-a", &PatchParams::default(), &label(json!("true"))).await {
            Err(kube::Error::Api(status)) if status.code == 403 => Ok(true),
            Ok(_) => {
                // Allowed before the policy arrived: undo and try again.
                admin_pods.patch("agent-a", &PatchParams::default(), &label(Value::Null)).await?;
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    })
    .await
    .unwrap_or_else(|e| fail(e));

    let other_label = Patch::Merge(json!({ "metadata": { "labels": { "app.kubernetes.io/version": "evil" } } }));
    assert_forbidden(
        "another label on a coordinator pod",
        pods.patch("coordinator-a", &PatchParams::default(), &other_label).await,
    );
    assert_forbidden(
        "remedy.dev/leader=false",
        pods.patch("coordinator-a", &PatchParams::default(), &label(json!("false"))).await,
    );
    let image =
        Patch::Strategic(json!({ "spec": { "containers": [{ "name": "app", "image": "example.invalid/evil:1" }] } }));
    assert_forbidden(
        "a new image for a coordinator pod",
        pods.patch("coordinator-a", &PatchParams::default(), &image).await,
    );
    assert_forbidden("a new image for an agent pod", pods.patch("agent-a", &PatchParams::default(), &image).await);
    let annotate = Patch::Merge(json!({ "metadata": { "annotations": { "remedy.dev/hold": "x" } } }));
    assert_forbidden(
        "an annotation on a coordinator pod",
        pods.patch("coordinator-a", &PatchParams::default(), &annotate).await,
    );

    // Stepping down takes the label off.
    let stepped_down = pods
        .patch("coordinator-a", &PatchParams::default(), &label(Value::Null))
        .await
        .expect("the coordinator takes its leader label off");
    assert!(!stepped_down.metadata.labels.unwrap_or_default().contains_key("remedy.dev/leader"));
    // People and controllers are untouched by the policy.
    admin_pods.patch("agent-a", &PatchParams::default(), &annotate).await.expect("the admin annotates a pod");
}

#[tokio::test]
async fn configuration_the_manifests_hand_over_is_what_the_binaries_accept() {
    let cluster = TestCluster::start().await;
    let objects = rendered_base(cluster).await;

    // ---- the coordinator's pod spec against its config ----
    let deployment = find(&objects, "Deployment", "remedy-coordinator");
    let pod_spec = &deployment["spec"]["template"]["spec"];
    let container = &pod_spec["containers"][0];
    let env = |name: &str| -> Value {
        container["env"].as_array().and_then(|e| e.iter().find(|v| v["name"] == name).cloned()).unwrap_or(Value::Null)
    };
    assert_eq!(env("POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"], "metadata.name");
    assert_eq!(env("POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"], "metadata.namespace");
    let mount_of = |container: &Value, pod_spec: &Value, configmap_prefix: &str| -> String {
        let volume = pod_spec["volumes"]
            .as_array()
            .and_then(|vs| {
                vs.iter().find(|v| {
                    let name = v["configMap"]["name"].as_str().or(v["secret"]["secretName"].as_str());
                    name.is_some_and(|n| n.starts_with(configmap_prefix))
                })
            })
            .unwrap_or_else(|| panic!("no volume of ConfigMap {configmap_prefix}*"));
        container["volumeMounts"]
            .as_array()
            .and_then(|ms| ms.iter().find(|m| m["name"] == volume["name"]))
            .and_then(|m| m["mountPath"].as_str())
            .unwrap_or_else(|| panic!("ConfigMap {configmap_prefix}* is not mounted"))
            .to_owned()
    };
    let config_dir = mount_of(container, pod_spec, "remedy-coordinator-config-");
    assert_eq!(env("REMEDY_COORDINATOR_CONFIG")["value"], format!("{config_dir}/coordinator.yaml"));
    let coordinator_config = find(&objects, "ConfigMap", "remedy-coordinator-config-")["data"]["coordinator.yaml"]
        .as_str()
        .expect("coordinator.yaml in its ConfigMap")
        .to_owned();
    assert_eq!(yaml_scalar(&coordinator_config, "runbooks_dir"), mount_of(container, pod_spec, "remedy-runbooks-"));
    for (key, port) in [("grpc_listen", "7070"), ("http_listen", "7071")] {
        assert_eq!(yaml_scalar(&coordinator_config, key), format!("0.0.0.0:{port}"), "{key}: the pod IP must answer");
    }
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let services: Vec<&Value> = objects.iter().filter(|o| o["kind"] == "Service").collect();
    for name in ["remedy-coordinator", "remedy-coordinator-http"] {
        let service = services.iter().find(|s| s["metadata"]["name"] == name).expect("service");
        assert_eq!(service["spec"]["selector"]["remedy.dev/leader"], "true", "{name} routes to the leader");
    }

    // ---- the agent's pod spec against its config ----
    let daemonset = find(&objects, "DaemonSet", "remedy-agent");
    let agent_spec = &daemonset["spec"]["template"]["spec"];
    let agent = &agent_spec["containers"][0];
    assert_eq!(agent_spec["hostNetwork"], true);
    assert_eq!(agent_spec["dnsPolicy"], "ClusterFirstWithHostNet", "Service names resolve with hostNetwork");
    assert_eq!(agent_spec["priorityClassName"], "system-node-critical");
    assert_eq!(agent_spec["tolerations"], json!([{ "operator": "Exists" }]));
    assert_eq!(agent["env"][0]["name"], "NODE_NAME");
    assert_eq!(agent["env"][0]["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    assert_eq!(agent["securityContext"]["capabilities"], json!({ "drop": ["ALL"], "add": ["NET_ADMIN", "SYSLOG"] }));
    assert_eq!(agent["securityContext"]["readOnlyRootFilesystem"], true);
    let agent_config = find(&objects, "ConfigMap", "remedy-agent-config-")["data"]["agent.yaml"]
        .as_str()
        .expect("agent.yaml in its ConfigMap")
        .to_owned();
    let agent_config_dir = mount_of(agent, agent_spec, "remedy-agent-config-");
    assert_eq!(agent["args"], json!(["--config", format!("{agent_config_dir}/agent.yaml")]));
    // The probes reach the loopback-only endpoint from the node's network
    // namespace, which the pod shares.
    let listen = yaml_scalar(&agent_config, "diagnostics_listen");
    for probe in ["livenessProbe", "readinessProbe"] {
        let get = &agent[probe]["httpGet"];
        assert_eq!(format!("{}:{}", get["host"].as_str().unwrap_or("<pod IP>"), get["port"]), listen, "{probe}");
    }
    let state_dir = yaml_scalar(&agent_config, "state_dir");
    let state_mount = agent["volumeMounts"]
        .as_array()
        .and_then(|ms| ms.iter().find(|m| m["mountPath"] == state_dir.as_str()))
        .unwrap_or_else(|| panic!("state_dir {state_dir} is not mounted"));
    assert_ne!(state_mount["readOnly"], true, "the state directory is writable");
    assert!(
        yaml_scalar(&agent_config, "coordinator").starts_with("https://remedy-coordinator.remedy-system.svc:7070"),
        "agents dial the leader's Service, over TLS"
    );
    // Both speak mutual TLS from the mounted Secret and node files.
    assert!(coordinator_config.contains("client_ca: /etc/remedy/tls/ca.crt"), "{coordinator_config}");
    assert_eq!(mount_of(container, pod_spec, "remedy-coordinator-tls"), "/etc/remedy/tls");
    assert!(agent_config.contains("cert: /etc/remedy-agent/tls/tls.crt"), "{agent_config}");

    // ---- the binaries take them ----
    // The files as the pods would see them; flags move the listen
    // addresses and directories to this machine.
    let dir = tempfile::tempdir().expect("temp dir");
    let runbooks = dir.path().join("runbooks");
    std::fs::create_dir_all(&runbooks).expect("runbooks dir");
    let catalog = find(&objects, "ConfigMap", "remedy-runbooks-")["data"].as_object().expect("catalog data").clone();
    // One key per file of deploy/runbooks: runbooks, escalation policies,
    // schedules and templates alike.
    let shipped = std::fs::read_dir(deploy_dir().join("runbooks")).expect("deploy/runbooks").count();
    assert_eq!(catalog.len(), shipped, "one key per catalog file: {:?}", catalog.keys());
    for (file, text) in &catalog {
        std::fs::write(runbooks.join(file), text.as_str().expect("text")).expect("write runbook");
    }
    // A CA of this test stands for the cluster's issuer; flags point the
    // files' TLS paths at it, and an overlay's role binding lets the test's
    // user list runbooks (the shipped file binds nobody).
    let pki = remedy_proto::pki::init_local(&dir.path().join("pki"), "node-a", "tester").expect("a local CA");
    let path = |p: &Path| p.display().to_string();
    let coordinator_file = dir.path().join("coordinator.yaml");
    let with_role = coordinator_config.replacen("roles: {}", "roles: {viewer: ['user:tester']}", 1);
    assert_ne!(with_role, coordinator_config, "the shipped file has an empty `roles: {{}}` to bind in an overlay");
    std::fs::write(&coordinator_file, &with_role).expect("write coordinator.yaml");
    let agent_file = dir.path().join("agent.yaml");
    std::fs::write(&agent_file, &agent_config).expect("write agent.yaml");

    // In a pod the service account is the credential; here the harness's
    // kubeconfig. The replica must win the Lease before it serves.
    ensure_namespaces(cluster).await;
    let coordinator = Coordinator::start_with(
        &dir.path().join("coordinator"),
        &[
            "--config",
            &coordinator_file.display().to_string(),
            "--runbooks-dir",
            &runbooks.display().to_string(),
            "--kubeconfig",
            &cluster.kubeconfig_path().display().to_string(),
            "--tls-cert",
            &path(&pki.coordinator.0),
            "--tls-key",
            &path(&pki.coordinator.1),
            "--tls-client-ca",
            &path(&pki.ca),
        ],
    )
    .await;
    let https = format!("https://{}", coordinator.grpc);
    let agent = Agent::start_with(
        &dir.path().join("agent"),
        "node-a",
        &https,
        &[
            "--config",
            &agent_file.display().to_string(),
            "--tls-cert",
            &path(&pki.agent.0),
            "--tls-key",
            &path(&pki.agent.1),
            "--tls-ca",
            &path(&pki.ca),
        ],
    )
    .await;
    wait_until("the agent to connect with the shipped configuration", Duration::from_secs(30), || async {
        Ok(agent.readyz().await == 200)
    })
    .await
    .unwrap_or_else(|e| fail(e));
    let (ca, cert, key) = (path(&pki.ca), path(&pki.user.0), path(&pki.user.1));
    let (status, stdout, stderr) = tokio::task::spawn_blocking(move || {
        remedyctl(&https, &["--ca", &ca, "--cert", &cert, "--key", &key, "runbooks", "list"])
    })
    .await
    .expect("remedyctl");
    assert!(status.success(), "{stderr}");
    for id in ["P0-001", "P0-002", "P0-003", "P1-001", "P1-002", "P2-001", "SEC-001"] {
        assert!(stdout.contains(id), "{id} missing from the mounted catalog:\n{stdout}");
    }
}
