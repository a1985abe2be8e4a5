//! Proves the test control plane: real etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler, kwok and kubectl processes.

use std::io::Write;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use remedy_e2e::cluster::{
    ClusterOptions, Component, TestCluster, k8s_version, kwok_deployment, node_is_ready, wait_for, wait_until,
};
use serde_json::json;

/// Lines that show in the test output even when it is captured.
fn report(msg: &str) {
    let _ = writeln!(std::io::stderr(), "{msg}");
}

fn is_running_on_kwok_node(pod: &Pod) -> bool {
    let running = pod.status.as_ref().and_then(|s| s.phase.as_deref()).is_some_and(|phase| phase == "Running");
    let on_kwok_node =
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()).is_some_and(|n| n.starts_with("kwok-node-"));
    running && on_kwok_node
}

async fn running_pods(pods: &Api<Pod>, app: &str) -> anyhow::Result<usize> {
    let list = pods.list(&ListParams::default().labels(&format!("app={app}"))).await?;
    Ok(list.items.iter().filter(|p| is_running_on_kwok_node(p)).count())
}

async fn wait_running_pods(pods: &Api<Pod>, app: &str, n: usize, timeout: Duration) {
    wait_until(&format!("{n} Running pods of {app}"), timeout, || async { Ok(running_pods(pods, app).await? == n) })
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

#[tokio::test]
async fn deployment_gets_running_pods_on_kwok_nodes_and_scales_through_the_scale_subresource() {
    let cluster = TestCluster::start_with(ClusterOptions::full()).await;
    let ns = cluster.new_namespace("deploy").await.expect("namespace");
    cluster.create_kwok_nodes(3).await.expect("kwok nodes");
    let client = cluster.client();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(client, &ns);

    deployments.create(&PostParams::default(), &kwok_deployment("web", 3)).await.expect("create deployment");
    wait_running_pods(&pods, "web", 3, Duration::from_secs(90)).await;

    let scale = deployments
        .patch_scale("web", &PatchParams::default(), &Patch::Merge(json!({ "spec": { "replicas": 5 } })))
        .await
        .expect("patch the scale subresource");
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(5));
    wait_running_pods(&pods, "web", 5, Duration::from_secs(90)).await;

    // The Deployment itself reports the pods kwok made ready.
    wait_until("web to report 5 available replicas", Duration::from_secs(60), || async {
        let d = deployments.get("web").await?;
        Ok(d.status.and_then(|s| s.available_replicas) == Some(5))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let scale = deployments.get_scale("web").await.expect("get scale");
    assert_eq!(scale.status.map(|s| s.replicas), Some(5));
}

#[tokio::test]
async fn service_account_allowed_only_to_get_pods_is_forbidden_to_delete_them() {
    let cluster = TestCluster::start().await;
    let ns = cluster.new_namespace("rbac").await.expect("namespace");
    let admin = cluster.client();
    let pp = PostParams::default();

    let sa = ServiceAccount {
        metadata: ObjectMeta { name: Some("reader".into()), ..Default::default() },
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(admin.clone(), &ns).create(&pp, &sa).await.expect("create service account");
    let role = Role {
        metadata: ObjectMeta { name: Some("pod-getter".into()), ..Default::default() },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec![String::new()]),
            resources: Some(vec!["pods".into()]),
            verbs: vec!["get".into()],
            ..Default::default()
        }]),
    };
    Api::<Role>::namespaced(admin.clone(), &ns).create(&pp, &role).await.expect("create role");
    let binding = RoleBinding {
        metadata: ObjectMeta { name: Some("reader-gets-pods".into()), ..Default::default() },
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "Role".into(),
            name: "pod-getter".into(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: "reader".into(),
            namespace: Some(ns.clone()),
            ..Default::default()
        }]),
    };
    Api::<RoleBinding>::namespaced(admin.clone(), &ns).create(&pp, &binding).await.expect("create role binding");
    let pod: Pod = serde_json::from_value(json!({
        "metadata": { "name": "victim" },
        "spec": { "containers": [{ "name": "app", "image": "example.invalid/app:1" }] }
    }))
    .expect("a valid Pod");
    let admin_pods: Api<Pod> = Api::namespaced(admin, &ns);
    admin_pods.create(&pp, &pod).await.expect("create pod");

    let reader = cluster.client_for_service_account(&ns, "reader").await.expect("service account client");
    let reader_pods: Api<Pod> = Api::namespaced(reader, &ns);

    // The authorizer sees new bindings through its informer: wait for it.
    let got = wait_for("the reader to be allowed to get the pod", Duration::from_secs(30), || async {
        Ok(Some(reader_pods.get("victim").await?))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(got.metadata.name.as_deref(), Some("victim"));

    match reader_pods.delete("victim", &DeleteParams::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("delete by the reader should be forbidden, got {other:?}"),
    }
    match reader_pods.list(&ListParams::default()).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("list by the reader should be forbidden, got {other:?}"),
    }
    let still_there = admin_pods.get_opt("victim").await.expect("admin get");
    assert!(still_there.is_some(), "the forbidden delete removed the pod");
}

fn lease_expired(lease: &Lease, now: Timestamp) -> bool {
    let Some(spec) = lease.spec.as_ref() else {
        return true;
    };
    match (&spec.renew_time, spec.lease_duration_seconds) {
        (Some(MicroTime(renewed)), Some(secs)) => {
            now.duration_since(*renewed) > SignedDuration::from_secs(i64::from(secs))
        }
        _ => true,
    }
}

#[tokio::test]
async fn lease_is_renewed_then_taken_over_after_it_expires() {
    let cluster = TestCluster::start().await;
    let ns = cluster.new_namespace("lease").await.expect("namespace");
    let leases: Api<Lease> = Api::namespaced(cluster.client(), &ns);
    let pp = PostParams::default();
    let now = Timestamp::now();

    // Holder A acquires.
    let acquired = leases
        .create(
            &pp,
            &Lease {
                metadata: ObjectMeta { name: Some("leader".into()), ..Default::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some("holder-a".into()),
                    lease_duration_seconds: Some(2),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            },
        )
        .await
        .expect("holder A creates the lease");

    // Holder B reads the lease now, before A renews.
    let seen_by_b = leases.get("leader").await.expect("B reads the lease");

    // A renews, with the resourceVersion it holds.
    let mut renewal = acquired.clone();
    let spec = renewal.spec.as_mut().expect("spec");
    spec.renew_time = Some(MicroTime(Timestamp::now()));
    let renewed = leases.replace("leader", &pp, &renewal).await.expect("holder A renews");
    let renew_time = |l: &Lease| l.spec.as_ref().and_then(|s| s.renew_time.clone());
    assert!(renew_time(&renewed) > renew_time(&acquired), "renewTime moved on");
    assert_ne!(renewed.metadata.resource_version, acquired.metadata.resource_version);

    // B's write based on what it read before the renewal is refused: the
    // resourceVersion makes a takeover race-free.
    let mut stale_takeover = seen_by_b.clone();
    if let Some(spec) = stale_takeover.spec.as_mut() {
        spec.holder_identity = Some("holder-b".into());
    }
    match leases.replace("leader", &pp, &stale_takeover).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 409, "{status:?}"),
        other => panic!("a takeover from a stale read must conflict, got {other:?}"),
    }

    // A stops renewing. B polls until, by the lease's own renewTime and
    // duration, it has expired.
    let expired = wait_for("the lease to expire", Duration::from_secs(30), || async {
        let lease = leases.get("leader").await?;
        Ok(lease_expired(&lease, Timestamp::now()).then_some(lease))
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(expired.spec.as_ref().and_then(|s| s.holder_identity.as_deref()), Some("holder-a"));

    // B takes over with the resourceVersion of its fresh read.
    let mut takeover = expired.clone();
    let now = Timestamp::now();
    let spec = takeover.spec.as_mut().expect("spec");
    spec.holder_identity = Some("holder-b".into());
    spec.acquire_time = Some(MicroTime(now));
    spec.renew_time = Some(MicroTime(now));
    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
    leases.replace("leader", &pp, &takeover).await.expect("holder B takes over the expired lease");

    // A's late renewal, from its old copy, conflicts.
    let mut late = renewed.clone();
    if let Some(spec) = late.spec.as_mut() {
        spec.renew_time = Some(MicroTime(Timestamp::now()));
    }
    match leases.replace("leader", &pp, &late).await {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 409, "{status:?}"),
        other => panic!("A's late renewal must conflict, got {other:?}"),
    }

    let last = leases.get("leader").await.expect("read the lease");
    let spec = last.spec.expect("spec");
    assert_eq!(spec.holder_identity.as_deref(), Some("holder-b"));
    assert_eq!(spec.lease_transitions, Some(1));
}

#[tokio::test]
async fn kubectl_server_side_dry_run_validates_without_persisting() {
    let cluster = TestCluster::start().await;
    let ns = cluster.new_namespace("kubectl").await.expect("namespace");
    let dir = tempfile::tempdir().expect("temp dir");
    let good = dir.path().join("good.yaml");
    std::fs::write(
        &good,
        "apiVersion: v1
kind: ConfigMap
metadata:
  name: dry-run-config
data:
  key: value
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: dry-run-deploy
spec:
  replicas: 1
  selector:
    matchLabels: {app: dry-run}
  template:
    metadata:
      labels: {app: dry-run}
    spec:
      containers:
      - name: app
        image: example.invalid/app:1
",
    )
    .expect("write manifest");

    let out = cluster
        .kubectl_ok(["apply", "--dry-run=server", "-n", &ns, "-f", good.to_str().expect("utf-8 path")])
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(out.contains("configmap/dry-run-config created (server dry run)"), "{out}");
    assert!(out.contains("deployment.apps/dry-run-deploy created (server dry run)"), "{out}");
    let configmaps: Api<ConfigMap> = Api::namespaced(cluster.client(), &ns);
    assert!(
        configmaps.get_opt("dry-run-config").await.expect("get configmap").is_none(),
        "a dry run must not persist anything"
    );

    // The server, not kubectl, rejects what only it can validate.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(
        &bad,
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: bad-deploy
spec:
  replicas: -1
  selector:
    matchLabels: {app: bad}
  template:
    metadata:
      labels: {app: other}
    spec:
      containers:
      - name: app
        image: example.invalid/app:1
",
    )
    .expect("write manifest");
    let out = cluster
        .kubectl(["apply", "--dry-run=server", "-n", &ns, "-f", bad.to_str().expect("utf-8 path")])
        .await
        .expect("run kubectl");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "an invalid manifest was accepted");
    assert!(stderr.contains("spec.replicas"), "{stderr}");
    assert!(stderr.contains("does not match template"), "{stderr}");
}

#[tokio::test]
async fn apiserver_reports_the_pinned_version() {
    let cluster = TestCluster::start().await;
    let info = cluster.client().apiserver_version().await.expect("GET /version");
    assert_eq!(info.git_version, k8s_version());
    report(&format!(
        "cluster figures: etcd+apiserver ready in {:.1?}; RSS apiserver {} MiB, etcd {} MiB",
        cluster.apiserver_start_time(),
        cluster.rss_kib(Component::ApiServer).unwrap_or(0) / 1024,
        cluster.rss_kib(Component::Etcd).unwrap_or(0) / 1024,
    ));
}

/// 200 simulated nodes and 2,000 pods. Reports how long each step took and
/// the memory of each component; it asserts only that everything runs.
#[tokio::test]
async fn two_hundred_nodes_run_two_thousand_pods() {
    const NODES: usize = 200;
    const DEPLOYMENTS: usize = 4;
    const REPLICAS: i32 = 500;
    let total = DEPLOYMENTS * REPLICAS as usize;

    let cluster = TestCluster::start_with(ClusterOptions::full()).await;
    let ns = cluster.new_namespace("scale").await.expect("namespace");
    let client = cluster.client();

    let start = Instant::now();
    cluster.create_kwok_nodes(NODES).await.expect("kwok nodes");
    let nodes_ready = start.elapsed();

    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let start = Instant::now();
    for i in 0..DEPLOYMENTS {
        deployments
            .create(&PostParams::default(), &kwok_deployment(&format!("bulk-{i}"), REPLICAS))
            .await
            .expect("create deployment");
    }
    wait_until(&format!("{total} ready replicas"), Duration::from_secs(900), || async {
        let list = deployments.list(&ListParams::default()).await?;
        let ready: i32 = list.items.iter().filter_map(|d| d.status.as_ref()?.ready_replicas).sum();
        Ok(ready as usize == total)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let pods_ready = start.elapsed();

    let pods: Api<Pod> = Api::namespaced(client, &ns);
    let list = pods.list(&ListParams::default()).await.expect("list pods");
    let running = list.items.iter().filter(|p| is_running_on_kwok_node(p)).count();
    assert_eq!(running, total, "every pod Running on a kwok node");

    // Past the controller-manager's 40 s grace period, the nodes are still
    // Ready: kwok keeps renewing their leases.
    let nodes: Api<Node> = Api::all(cluster.client());
    let not_ready: Vec<String> = nodes
        .list(&ListParams::default().labels("type=kwok"))
        .await
        .expect("list nodes")
        .items
        .into_iter()
        .filter(|n| !node_is_ready(n))
        .filter_map(|n| n.metadata.name)
        .collect();
    assert!(not_ready.is_empty(), "nodes not Ready: {not_ready:?}");

    let mib = |c| cluster.rss_kib(c).map_or(0, |k| k / 1024);
    report(&format!(
        "cluster figures: {NODES} kwok nodes Ready in {nodes_ready:.1?}; {total} pods Running in \
         {pods_ready:.1?}; RSS MiB: apiserver {}, etcd {}, controller-manager {}, scheduler {}, \
         kwok {}",
        mib(Component::ApiServer),
        mib(Component::Etcd),
        mib(Component::ControllerManager),
        mib(Component::Scheduler),
        mib(Component::Kwok),
    ));
}

#[tokio::test]
async fn dedicated_cluster_stops_its_processes_when_dropped() {
    let cluster = TestCluster::start_dedicated(ClusterOptions::default()).await.unwrap_or_else(|e| panic!("{e:#}"));
    let pids: Vec<u32> =
        [Component::Etcd, Component::ApiServer].into_iter().map(|c| cluster.pid(c).expect("running")).collect();
    let ns = cluster.new_namespace("own").await.expect("namespace");
    assert!(ns.starts_with("own-"));
    drop(cluster);
    for pid in pids {
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "process {pid} outlived its cluster");
    }
}
