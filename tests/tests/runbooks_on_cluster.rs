//! The seed's runbooks acting on a real cluster: the coordinator binary
//! with the seed catalog and a kubeconfig, an alert in through the
//! Alertmanager webhook, and the changes read back from the API server.
//! The platform's HTTP endpoints and webhooks are a local world server; the
//! cluster is the harness's (etcd, kube-apiserver, controller-manager,
//! scheduler, kwok nodes).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::Api;
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use remedy_e2e::cluster::{ClusterOptions, TestCluster, kwok_deployment, wait_for};
use remedy_e2e::runs::{about, incident_for, now_rfc3339, post_alert, run_end, seed_catalog, show, start_with_args};
use remedy_e2e::world::{World, alert_payload};
use serde_json::json;

/// The namespace the seed catalog acts in.
const PRODUCTION: &str = "saas-idp-production";
/// Bound on the cluster converging (pods scheduled and Running).
const WAIT: Duration = Duration::from_secs(90);

fn fail(e: anyhow::Error) -> ! {
    panic!("{e:#}")
}

/// The seed's namespace, with the `default` ServiceAccount pods need (made
/// by the controller-manager).
async fn production_namespace(cluster: &TestCluster) {
    let client = cluster.client();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns = Namespace {
        metadata: ObjectMeta { name: Some(PRODUCTION.into()), ..Default::default() },
        ..Default::default()
    };
    match namespaces.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating namespace {PRODUCTION}: {e}"),
    }
    let sas: Api<ServiceAccount> = Api::namespaced(client, PRODUCTION);
    wait_for("the default ServiceAccount", WAIT, || async { Ok(sas.get_opt("default").await?) })
        .await
        .unwrap_or_else(|e| fail(e));
}

fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or_default()
}

async fn running_pods(pods: &Api<Pod>, app: &str, n: usize) -> Vec<Pod> {
    let selector = format!("app={app}");
    wait_for(&format!("{n} Running pods of {app}"), WAIT, || async {
        let list = pods.list(&ListParams::default().labels(&selector)).await?.items;
        let running: Vec<Pod> =
            list.into_iter().filter(|p| phase(p) == "Running" && p.metadata.deletion_timestamp.is_none()).collect();
        Ok((running.len() >= n).then_some(running))
    })
    .await
    .unwrap_or_else(|e| fail(e))
}

fn annotations(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.annotations.clone().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p0_001_scales_out_clears_failed_pods_and_records_every_step() {
    let cluster = TestCluster::start_with(ClusterOptions::full()).await;
    cluster.create_kwok_nodes(3).await.unwrap_or_else(|e| fail(e));
    production_namespace(cluster).await;
    let client = cluster.client();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), PRODUCTION);
    let pods: Api<Pod> = Api::namespaced(client.clone(), PRODUCTION);
    for (name, replicas) in [("saas-idp-api", 3), ("saas-idp-worker", 1)] {
        deployments.create(&PostParams::default(), &kwok_deployment(name, replicas)).await.expect("create deployment");
    }
    // Two API pods crashed for good: Failed, as the runbook's
    // `status.phase=Failed` clean-up expects.
    let api_pods = running_pods(&pods, "saas-idp-api", 3).await;
    let mut failed = Vec::new();
    for pod in &api_pods[..2] {
        let name = pod.metadata.name.clone().expect("a pod name");
        let status =
            json!({ "status": { "phase": "Failed", "reason": "Error", "message": "made Failed by the test" } });
        pods.patch_status(&name, &PatchParams::default(), &Patch::Merge(&status)).await.expect("patch pod status");
        failed.push(name);
    }
    let healthy = api_pods[2].metadata.name.clone().expect("a pod name");

    let dir = tempfile::tempdir().expect("temp dir");
    let world = World::start().await;
    let catalog = seed_catalog(dir.path(), &world);
    let kubeconfig = cluster.kubeconfig_path().display().to_string();
    let coordinator = start_with_args(dir.path(), &world, &catalog, "", &["--kubeconfig", &kubeconfig]).await;

    let payload = alert_payload("P0_SystemDown", &[("severity", "critical")], "firing", &now_rfc3339());
    post_alert(&coordinator, &payload).await;
    let incident = incident_for(&coordinator, "P0-001").await;
    let entries = run_end(&coordinator, &incident.id).await;
    let log = format!("{}\n{}", show(&entries), coordinator.log());

    // Scaled through the scale subresource, annotated with the incident
    // and the step.
    for (name, step, replicas) in [("saas-idp-api", "scale_api", 10), ("saas-idp-worker", "scale_worker", 5)] {
        let d = deployments.get(name).await.expect("read deployment");
        assert_eq!(d.spec.as_ref().and_then(|s| s.replicas), Some(replicas), "{name}:\n{log}");
        let a = annotations(&d.metadata);
        assert_eq!(a.get("remedy.dev/incident"), Some(&incident.id), "{name}: {a:?}");
        assert_eq!(a.get("remedy.dev/step").map(String::as_str), Some(step), "{name}: {a:?}");
        let result = about(&entries, step).into_iter().find(|e| e.kind == "result").expect("a result");
        assert_eq!(result.details.get("status").map(String::as_str), Some("succeeded"), "{step}:\n{log}");
    }
    // The Failed pods are gone; the Running one is untouched.
    for name in &failed {
        let pod = pods.get_opt(name).await.expect("read pod");
        assert!(pod.is_none_or(|p| p.metadata.deletion_timestamp.is_some()), "{name} was not deleted:\n{log}");
    }
    let survivor = pods.get(&healthy).await.expect("the Running pod is still there");
    assert!(survivor.metadata.deletion_timestamp.is_none(), "the Running pod was left alone");

    // The timeline is complete: every step that acted was weighed by the
    // rails, started and ended; the evidence kinds looked at the cluster;
    // what has no actuator here rehearsed; the recovery branch was skipped
    // because the API answered; verification passed.
    for step in [
        "status_page",
        "page_executives",
        "customer_notice",
        "health",
        "pods",
        "services",
        "scale_api",
        "scale_worker",
        "delete_failed_api_pods",
        "reset_circuit_breakers",
        "recheck",
    ] {
        let kinds: Vec<&str> = about(&entries, step).iter().map(|e| e.kind.as_str()).collect();
        for kind in ["decision", "action", "result"] {
            assert!(kinds.contains(&kind), "{step} has no {kind} entry:\n{log}");
        }
    }
    for step in ["pods", "services"] {
        let result = about(&entries, step).into_iter().find(|e| e.kind == "result").expect("a result");
        assert_eq!(result.details.get("status").map(String::as_str), Some("succeeded"), "{step}:\n{log}");
    }
    let pods_seen = about(&entries, "pods").into_iter().find(|e| e.kind == "result").expect("a result");
    assert!(pods_seen.details.values().any(|v| v.contains("saas-idp-api")), "list_pods names the pods:\n{log}");
    let deleted = about(&entries, "delete_failed_api_pods").into_iter().find(|e| e.kind == "result").expect("result");
    assert_eq!(deleted.details.get("status").map(String::as_str), Some("succeeded"), "{log}");
    for name in &failed {
        assert!(deleted.message.contains(name.as_str()) || deleted.details.values().any(|v| v.contains(name.as_str())));
    }
    // No database is configured here: the probe rehearses and says so.
    let database = about(&entries, "database");
    assert!(
        database.iter().any(|e| e.kind == "result" && e.details.get("status").map(String::as_str) == Some("dry_run")),
        "{log}"
    );
    for step in ["failover_database", "warm_cache", "restart_api", "restart_worker"] {
        assert!(about(&entries, step).iter().any(|e| e.message.contains("skipped")), "{step} ran:\n{log}");
    }
    assert_eq!(world.requests("POST", "/admin/circuit-breaker/reset").len(), 1, "{log}");
    assert!(entries.iter().any(|e| e.kind == "verification" && e.message.contains("passed")), "{log}");
    assert!(entries.iter().any(|e| e.kind == "runbook" && e.message.contains("finished")), "{log}");
}
