//! Two coordinator processes elect a leader on a real cluster; the leader
//! is killed in the middle of a runbook, and the standby takes over from
//! the state in the cluster's CRDs: it finishes the run, and no step runs
//! twice (counted as writes to the API server and requests to the world).

use std::path::Path;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::PostParams;
use remedy_e2e::cluster::{AuditEvent, ClusterOptions, TestCluster, kwok_deployment, wait_for};
use remedy_e2e::procs::{Coordinator, http_request};
use remedy_e2e::runs::{about, config, run_end, run_manual, runbook, show};
use remedy_e2e::world::World;

/// Where the Lease and the CRD objects live.
const REMEDY_NS: &str = "remedy-system";

fn fail(e: anyhow::Error) -> ! {
    panic!("{e:#}")
}

/// A coordinator of `catalog` taking part in the election for `lease`
/// (4 s), acting on the test cluster, with its files under `dir`.
async fn elected(cluster: &TestCluster, dir: &Path, world: &World, catalog: &Path, lease: &str) -> Coordinator {
    std::fs::create_dir_all(dir).expect("coordinator dir");
    let election = format!(
        "kubernetes:\n  leader_election: {{lease: {lease}, namespace: {REMEDY_NS}, duration: 4s, renew_every: 1s, retry: 500ms}}\n"
    );
    let config = config(dir, world, &election);
    let kubeconfig = cluster.kubeconfig_path().display().to_string();
    let args = [
        "--config",
        config.to_str().unwrap_or_default(),
        "--runbooks-dir",
        catalog.to_str().unwrap_or_default(),
        "--kubeconfig",
        &kubeconfig,
    ];
    Coordinator::start_with(&dir.join("coordinator"), &args).await
}

/// Whether this coordinator serves as the leader: a standby answers 503
/// everywhere but /healthz.
async fn leads(coordinator: &Coordinator) -> bool {
    matches!(http_request(coordinator.http, "GET", "/metrics", None).await, Ok((200, _)))
}

async fn wait_leading(coordinator: &Coordinator, what: &str) {
    wait_for(what, Duration::from_secs(60), || async { Ok(leads(coordinator).await.then_some(())) })
        .await
        .unwrap_or_else(|e| fail(e));
}

/// A time as the audit log writes it (`2026-11-27T03:41:27.123456Z`), so
/// the two compare as strings.
fn rfc3339_micros(t: std::time::SystemTime) -> String {
    let micros = t.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or_default();
    let ts = k8s_openapi::jiff::Timestamp::from_microsecond(micros).expect("a valid time");
    ts.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_finishes_the_leaders_run_without_repeating_a_step() {
    let cluster = TestCluster::start_with(ClusterOptions::full()).await;
    cluster.create_kwok_nodes(2).await.unwrap_or_else(|e| fail(e));
    cluster.install_remedy_crds().await.unwrap_or_else(|e| fail(e));
    let ns = cluster.new_namespace("failover").await.unwrap_or_else(|e| fail(e));
    let client = cluster.client();
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    for name in ["front", "back"] {
        deployments.create(&PostParams::default(), &kwok_deployment(name, 1)).await.expect("create deployment");
    }

    // Scale one, hold a request open (the leader dies during it), scale
    // the other.
    let dir = tempfile::tempdir().expect("temp dir");
    let world = World::start().await;
    let steps = format!(
        "  - id: scale_front\n    scale: {{kind: Deployment, namespace: {ns}, name: front, replicas: 3, floor: 1, ceiling: 10}}\n\
         \x20 - id: slow_call\n    http: {{method: POST, url: '{0}/hang/slow', timeout: 60s}}\n    on_failure: continue\n\
         \x20 - id: scale_back\n    scale: {{kind: Deployment, namespace: {ns}, name: back, replicas: 4, floor: 1, ceiling: 10}}\n",
        world.url()
    );
    let catalog = runbook(dir.path(), "FAILOVER", &steps, "");
    let mut first = elected(cluster, &dir.path().join("first"), &world, &catalog, "failover-test").await;
    wait_leading(&first, "the first coordinator to lead").await;
    let second = elected(cluster, &dir.path().join("second"), &world, &catalog, "failover-test").await;
    assert!(!leads(&second).await, "two leaders at once:\n{}", second.log());

    let id = run_manual(&first, "FAILOVER", false).await;
    world.wait_for("POST", "/hang/slow", 1).await;
    let front = deployments.get("front").await.expect("front");
    assert_eq!(front.spec.as_ref().and_then(|s| s.replicas), Some(3), "the leader scaled front first");
    first.kill();
    let killed = Instant::now();
    let killed_at = rfc3339_micros(std::time::SystemTime::now());
    world.release_hung();

    wait_leading(&second, "the standby to take over").await;
    eprintln!("takeover after SIGKILL of the leader: {:.2}s (lease 4s)", killed.elapsed().as_secs_f64());
    let entries = run_end(&second, &id).await;
    let log = format!("{}\n{}", show(&entries), second.log());

    // Every step ran once. Counted where it cannot hide: the API server's
    // audit log of writes to the two Deployments (a repeated scale to the
    // same size would leave the object as it was). The leader that died
    // wrote front, the new one wrote back, and nobody wrote front after the
    // kill.
    let writes = |name: &str| -> Vec<AuditEvent> {
        let all = cluster.audit_writes().unwrap_or_else(|e| fail(e));
        all.into_iter()
            .filter(|e| e.resource == "deployments" && e.namespace == ns && e.name == name && e.verb != "create")
            .filter(|e| e.subresource != "status" && !e.dry_run && (200..300).contains(&e.code))
            .collect()
    };
    let (front_writes, back_writes) = (writes("front"), writes("back"));
    assert!(!front_writes.is_empty(), "{log}");
    assert_eq!(front_writes.len(), back_writes.len(), "one scale step each:\n{front_writes:#?}\n{back_writes:#?}");
    assert!(
        front_writes.iter().all(|e| e.received_at.as_str() < killed_at.as_str()),
        "front was written after the leader died:\n{front_writes:#?}\nkilled at {killed_at}"
    );
    assert!(back_writes.iter().all(|e| e.received_at.as_str() > killed_at.as_str()), "{back_writes:#?}");
    let front = deployments.get("front").await.expect("front");
    let back = deployments.get("back").await.expect("back");
    assert_eq!(front.spec.as_ref().and_then(|s| s.replicas), Some(3), "{log}");
    assert_eq!(back.spec.as_ref().and_then(|s| s.replicas), Some(4), "{log}");
    let actions = |step: &str| about(&entries, step).into_iter().filter(|e| e.kind == "action").count();
    for step in ["scale_front", "slow_call", "scale_back"] {
        assert_eq!(actions(step), 1, "{step} started once:\n{log}");
    }
    assert_eq!(world.requests("POST", "/hang/slow").len(), 1, "the slow call ran once:\n{log}");
    assert!(
        entries.iter().any(
            |e| e.message.contains("was started but its end was never recorded") && e.message.contains("slow_call")
        ),
        "the interrupted step is on the record:\n{log}"
    );
    assert!(entries.iter().any(|e| e.kind == "runbook" && e.message.contains("finished")), "{log}");

    // Each action carries the term it ran under: two holders, the later
    // with more transitions.
    let term = |step: &str| {
        let started = about(&entries, step).into_iter().find(|e| e.kind == "action").cloned();
        let started = started.unwrap_or_else(|| panic!("{step} never started:\n{log}"));
        let holder = started.details.get("fencing.holder").cloned().unwrap_or_default();
        let transitions: u32 =
            started.details.get("fencing.transitions").and_then(|t| t.parse().ok()).unwrap_or_default();
        (holder, transitions)
    };
    let (old_holder, old_term) = term("scale_front");
    let (new_holder, new_term) = term("scale_back");
    assert!(!old_holder.is_empty() && !new_holder.is_empty(), "{log}");
    assert_ne!(old_holder, new_holder, "{log}");
    assert!(new_term > old_term, "{old_term} -> {new_term}");
    let lease = Api::<Lease>::namespaced(client, REMEDY_NS).get("failover-test").await.expect("the lease");
    assert_eq!(lease.spec.and_then(|s| s.holder_identity), Some(new_holder), "the standby holds the lease now");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_sees_another_holder_stops_and_exits() {
    let cluster = TestCluster::start_with(ClusterOptions::full()).await;
    cluster.install_remedy_crds().await.unwrap_or_else(|e| fail(e));
    let dir = tempfile::tempdir().expect("temp dir");
    let world = World::start().await;
    let catalog = runbook(dir.path(), "NOOP", "  - id: look\n    probe_http: {url: 'http://127.0.0.1:9/'}\n", "");
    let mut coordinator = elected(cluster, dir.path(), &world, &catalog, "deposed-test").await;
    wait_leading(&coordinator, "the coordinator to lead").await;

    // Someone else writes the Lease as theirs (a partition healed, an
    // operator's hand): the coordinator must stop acting and leave.
    let leases: Api<Lease> = Api::namespaced(cluster.client(), REMEDY_NS);
    let mut lease = leases.get("deposed-test").await.expect("the lease");
    let spec = lease.spec.get_or_insert_with(Default::default);
    spec.holder_identity = Some("an-impostor".into());
    spec.lease_transitions = Some(spec.lease_transitions.unwrap_or_default() + 1);
    leases.replace("deposed-test", &PostParams::default(), &lease).await.expect("replace the lease");

    let status = wait_for("the deposed coordinator to exit", Duration::from_secs(30), || {
        let status = coordinator.exited();
        async move { Ok(status) }
    })
    .await
    .unwrap_or_else(|e| fail(e));
    let log = coordinator.log();
    assert!(!status.success(), "a deposed leader exits with a failure so it is restarted as a standby:\n{log}");
    assert!(log.contains("lost the lease"), "{log}");
}
