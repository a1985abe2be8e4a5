//! P0-002 all the way through: a real PostgreSQL primary with a streaming
//! replica fails over, and the application is repointed and restarted on a
//! real Kubernetes control plane (kube-apiserver, controller-manager,
//! scheduler, kwok nodes). The coordinator binary runs the seed catalog
//! with `databases:` for the pair and the harness's kubeconfig; everything
//! it did is read back from the API server, from PostgreSQL and from the
//! incident's timeline.
//!
//! Without a cluster (`data_plane.rs`) the ConfigMap patch and the restarts
//! only rehearse; here they act, after a real promotion, on the URL the
//! promoted member really serves.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, ServiceAccount};
use kube::Api;
use kube::api::{ListParams, ObjectMeta, PostParams};
use remedy_e2e::cluster::{ClusterOptions, TestCluster, kwok_deployment, wait_for};
use remedy_e2e::datastores::{PG_PASSWORD, Postgres, databases_yaml};
use remedy_e2e::runs::{
    approve, incident_for, now_rfc3339, post_alert, result_of, run_end, seed_catalog, show, start_with_args, status_of,
};
use remedy_e2e::world::{World, alert_payload};
use remedy_proto::v1 as pb;
use remedy_shared::runbook::{Action, Runbook, WorkloadKind, parse_runbook};

/// Bound on the cluster converging (pods scheduled, rollouts done).
const WAIT: Duration = Duration::from_secs(90);
/// Rows committed on the primary before it fails.
const ROWS: i64 = 500;
/// The pod-template annotation a rollout restart sets (as `kubectl rollout
/// restart` does).
const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";
/// What Remedy writes on every object it changes.
const INCIDENT_ANNOTATION: &str = "remedy.dev/incident";
const STEP_ANNOTATION: &str = "remedy.dev/step";
const CHANGED_AT_ANNOTATION: &str = "remedy.dev/changed-at";

fn fail(e: anyhow::Error) -> ! {
    panic!("{e:#}")
}

/// What P0-002 acts on, read from the seed runbook itself so the test
/// follows the catalog rather than a copy of its names.
struct Targets {
    failover_step: String,
    new_primary_step: String,
    repoint_step: String,
    namespace: String,
    configmap: String,
    key: String,
    /// (step id, Deployment name), in runbook order.
    restarts: Vec<(String, String)>,
}

fn p0_002() -> Targets {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/runbooks/p0-002-database-failure.yaml");
    let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("read {}: {e}", file.display()));
    let runbook: Runbook =
        parse_runbook(&file.display().to_string(), &text).unwrap_or_else(|e| panic!("parse P0-002: {e}"));
    let failover = runbook.steps.iter().position(|s| matches!(s.action, Action::PgFailover(_))).expect("a pg_failover");
    let new_primary = runbook.steps[failover..]
        .iter()
        .find(|s| matches!(s.action, Action::PgSelect1(_)))
        .expect("a pg_select1 after the failover");
    let (repoint_step, patch) = runbook
        .steps
        .iter()
        .find_map(|s| match &s.action {
            Action::PatchConfigmap(p) => Some((s.id.clone(), p.clone())),
            _ => None,
        })
        .expect("a patch_configmap");
    let key = "DATABASE_URL";
    let template = patch.data.get(key).expect("the patch sets DATABASE_URL");
    assert!(
        template.contains(&format!("steps.{}.app_url", new_primary.id)),
        "DATABASE_URL comes from the new primary's app_url: {template}"
    );
    let restarts: Vec<(String, String)> = runbook
        .steps
        .iter()
        .filter_map(|s| match &s.action {
            Action::RolloutRestart(r) => {
                assert_eq!(r.kind, WorkloadKind::Deployment, "{}", s.id);
                assert_eq!(r.namespace, patch.namespace, "{}: the application's namespace", s.id);
                Some((s.id.clone(), r.name.clone()))
            }
            _ => None,
        })
        .collect();
    assert!(!restarts.is_empty(), "P0-002 restarts the application");
    Targets {
        failover_step: runbook.steps[failover].id.clone(),
        new_primary_step: new_primary.id.clone(),
        repoint_step,
        namespace: patch.namespace,
        configmap: patch.name,
        key: key.to_owned(),
        restarts,
    }
}

/// The namespace, with the `default` ServiceAccount pods need (made by the
/// controller-manager).
async fn namespace(cluster: &TestCluster, name: &str) {
    let namespaces: Api<Namespace> = Api::all(cluster.client());
    let ns = Namespace { metadata: ObjectMeta { name: Some(name.into()), ..Default::default() }, ..Default::default() };
    match namespaces.create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => panic!("creating namespace {name}: {e}"),
    }
    let sas: Api<ServiceAccount> = Api::namespaced(cluster.client(), name);
    wait_for("the default ServiceAccount", WAIT, || async { Ok(sas.get_opt("default").await?) })
        .await
        .unwrap_or_else(|e| fail(e));
}

/// A Deployment on the kwok nodes that reads its settings from the
/// ConfigMap, as the application P0-002 repoints does.
fn app_deployment(name: &str, configmap: &str) -> Deployment {
    let mut d = kwok_deployment(name, 2);
    if let Some(spec) = d.spec.as_mut().and_then(|s| s.template.spec.as_mut()) {
        for c in &mut spec.containers {
            c.env_from = Some(vec![
                serde_json::from_value(serde_json::json!({ "configMapRef": { "name": configmap } }))
                    .expect("a valid envFrom"),
            ]);
        }
    }
    d
}

fn annotations(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.annotations.clone().unwrap_or_default()
}

fn template_restarted_at(d: &Deployment) -> Option<String> {
    d.spec.as_ref()?.template.metadata.as_ref()?.annotations.as_ref()?.get(RESTARTED_AT).cloned()
}

/// Waits until the Deployment's latest template is everything that runs:
/// observed, all replicas updated and available, no old pod left.
async fn rolled_out(deployments: &Api<Deployment>, name: &str) -> Deployment {
    wait_for(&format!("Deployment {name} rolled out"), WAIT, || async {
        let d = deployments.get(name).await?;
        let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let Some(status) = d.status.as_ref() else { return Ok(None) };
        let done = status.observed_generation >= d.metadata.generation
            && status.replicas == Some(want)
            && status.updated_replicas == Some(want)
            && status.available_replicas == Some(want);
        Ok(done.then_some(d))
    })
    .await
    .unwrap_or_else(|e| fail(e))
}

/// Every pod of `app`, and whether each is Running and not going away.
async fn app_pods(pods: &Api<Pod>, app: &str) -> kube::Result<Vec<(Pod, bool)>> {
    let list = pods.list(&ListParams::default().labels(&format!("app={app}"))).await?.items;
    Ok(list
        .into_iter()
        .map(|p| {
            let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
                && p.metadata.deletion_timestamp.is_none();
            (p, running)
        })
        .collect())
}

/// Index in the timeline of a step's result.
fn position(entries: &[pb::TimelineEntry], step: &str) -> usize {
    entries
        .iter()
        .position(|e| e.kind == "result" && e.details.get("step").map(String::as_str) == Some(step))
        .unwrap_or_else(|| panic!("no result for {step}:\n{}", show(entries)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p0_002_fails_over_then_repoints_the_configmap_and_restarts_the_application_on_the_cluster() {
    let targets = p0_002();
    let cluster = TestCluster::start_with(ClusterOptions::full()).await;
    cluster.create_kwok_nodes(2).await.unwrap_or_else(|e| fail(e));

    let dir = tempfile::tempdir().expect("temp dir");
    let mut primary = Postgres::primary(dir.path(), "db-0", true).await;
    let replica = Postgres::replica_of(&primary, dir.path(), "db-1").await;
    primary.write_orders(ROWS).await;

    // The application as deployed before the incident: its settings point
    // at the primary, and its pods run.
    namespace(cluster, &targets.namespace).await;
    let client = cluster.client();
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), &targets.namespace);
    let settings =
        BTreeMap::from([(targets.key.clone(), primary.app_url()), ("LOG_LEVEL".to_owned(), "info".to_owned())]);
    let cm = ConfigMap {
        metadata: ObjectMeta { name: Some(targets.configmap.clone()), ..Default::default() },
        data: Some(settings),
        ..Default::default()
    };
    configmaps.create(&PostParams::default(), &cm).await.expect("create the ConfigMap");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &targets.namespace);
    let pods: Api<Pod> = Api::namespaced(client.clone(), &targets.namespace);
    let mut before = BTreeMap::new();
    for (_, name) in &targets.restarts {
        deployments
            .create(&PostParams::default(), &app_deployment(name, &targets.configmap))
            .await
            .expect("create the Deployment");
        let d = rolled_out(&deployments, name).await;
        assert_eq!(template_restarted_at(&d), None, "{name} was never restarted");
        let names: Vec<String> = wait_for(&format!("the pods of {name} Running"), WAIT, || async {
            let all = app_pods(&pods, name).await?;
            let done = all.len() == 2 && all.iter().all(|(_, running)| *running);
            Ok(done.then(|| all.into_iter().filter_map(|(p, _)| p.metadata.name).collect()))
        })
        .await
        .unwrap_or_else(|e| fail(e));
        before.insert(name.clone(), names);
    }

    let world = World::start().await;
    let catalog = seed_catalog(dir.path(), &world);
    let config = databases_yaml(dir.path(), &primary, &replica, "    promote_timeout: 20s\n");
    let kubeconfig = cluster.kubeconfig_path().display().to_string();
    let coordinator = start_with_args(dir.path(), &world, &catalog, &config, &["--kubeconfig", &kubeconfig]).await;

    // The primary goes down; what it acknowledged is on the replica
    // (synchronous replication).
    primary.crash();
    post_alert(&coordinator, &alert_payload("P0_DatabaseDown", &[], "firing", &now_rfc3339())).await;
    let incident = incident_for(&coordinator, "P0-002").await;
    approve(&coordinator, &incident.id, &targets.failover_step).await;
    let entries = run_end(&coordinator, &incident.id).await;
    let log = format!("{}\n{}", show(&entries), coordinator.log());
    println!("P0-002 on the cluster:\n{}", show(&entries));
    assert!(
        entries.iter().any(|e| e.kind == "runbook" && e.message.contains("runbook P0-002 finished")),
        "the run finished rather than escalated:\n{log}"
    );

    // The timeline: the failover, the new primary found, the ConfigMap
    // patched, then every restart, each succeeded, in that order.
    let promoted = result_of(&entries, &targets.failover_step).expect("a failover result");
    assert_eq!(promoted.details.get("evidence.promoted").map(String::as_str), Some("db-1"), "{log}");
    let found = result_of(&entries, &targets.new_primary_step).expect("a new primary result");
    assert_eq!(found.details.get("evidence.app_url"), Some(&replica.app_url()), "{log}");
    let mut order = vec![targets.failover_step.clone(), targets.new_primary_step.clone(), targets.repoint_step.clone()];
    order.extend(targets.restarts.iter().map(|(step, _)| step.clone()));
    for step in &order {
        assert_eq!(status_of(&entries, step).as_deref(), Some("succeeded"), "{step}:\n{log}");
    }
    let positions: Vec<usize> = order.iter().map(|step| position(&entries, step)).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{order:?} at {positions:?}:\n{log}");
    let times: Vec<i64> = positions.iter().map(|&i| entries[i].at_ms).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{order:?} at {times:?}:\n{log}");
    assert!(!log.contains(PG_PASSWORD), "no password on the timeline or in the log");

    // The ConfigMap names the promoted member, and only that key changed,
    // marked with the incident and the step.
    let cm = configmaps.get(&targets.configmap).await.expect("read the ConfigMap");
    let data = cm.data.clone().unwrap_or_default();
    assert_eq!(data.get(&targets.key), Some(&replica.app_url()), "{log}");
    assert_eq!(data.get("LOG_LEVEL").map(String::as_str), Some("info"), "other keys untouched");
    let marks = annotations(&cm.metadata);
    assert_eq!(marks.get(INCIDENT_ANNOTATION), Some(&incident.id), "{marks:?}");
    assert_eq!(marks.get(STEP_ANNOTATION), Some(&targets.repoint_step), "{marks:?}");
    let patched_at = marks.get(CHANGED_AT_ANNOTATION).cloned().expect("when the ConfigMap was changed");
    let repointed = result_of(&entries, &targets.repoint_step).expect("a repoint result");
    assert_eq!(repointed.details.get(&format!("evidence.before.{}", targets.key)), Some(&primary.app_url()), "{log}");

    // Every Deployment was restarted after the patch, so its new pods read
    // the new URL; the rollout replaced every pod.
    for (step, name) in &targets.restarts {
        let d = rolled_out(&deployments, name).await;
        let restarted_at = template_restarted_at(&d).unwrap_or_else(|| panic!("{name} has no {RESTARTED_AT}:\n{log}"));
        // Both are RFC 3339 in whole seconds, UTC: text order is time order.
        assert!(restarted_at >= patched_at, "{name} restarted at {restarted_at}, before the patch at {patched_at}");
        let marks = annotations(&d.metadata);
        assert_eq!(marks.get(INCIDENT_ANNOTATION), Some(&incident.id), "{name}: {marks:?}");
        assert_eq!(marks.get(STEP_ANNOTATION), Some(step), "{name}: {marks:?}");
        let restart = result_of(&entries, step).expect("a restart result");
        assert_eq!(restart.details.get("evidence.restarted_at"), Some(&restarted_at), "{log}");
        let now = wait_for(&format!("only new pods of {name}"), WAIT, || async {
            let all = app_pods(&pods, name).await?;
            let fresh = all.len() == before[name].len()
                && all.iter().all(|(p, running)| {
                    *running
                        && annotations(&p.metadata).get(RESTARTED_AT) == Some(&restarted_at)
                        && p.metadata.name.as_ref().is_some_and(|n| !before[name].contains(n))
                });
            Ok(fresh.then_some(all))
        })
        .await
        .unwrap_or_else(|e| fail(e));
        println!("{name}: restarted at {restarted_at}, {} new pods", now.len());
    }

    // Through the URL the application now reads, the promoted member
    // takes writes, and every row committed before the failure is there.
    let url: tokio_postgres::Config = data[&targets.key].parse().expect("DATABASE_URL is a PostgreSQL URL");
    let mut config = url.clone();
    config.user("postgres").password(PG_PASSWORD).connect_timeout(Duration::from_secs(5));
    let (db, connection) = config.connect(tokio_postgres::NoTls).await.expect("connect through DATABASE_URL");
    tokio::spawn(connection);
    let in_recovery: bool = db.query_one("SELECT pg_is_in_recovery()", &[]).await.expect("ask").get(0);
    assert!(!in_recovery, "DATABASE_URL names a primary");
    db.execute("INSERT INTO orders VALUES ($1, 'after the failover')", &[&(ROWS + 1)])
        .await
        .expect("write through DATABASE_URL");
    let row =
        db.query_one("SELECT count(*), max(id) FILTER (WHERE id <= $1) FROM orders", &[&ROWS]).await.expect("count");
    let (count, max): (i64, i64) = (row.get(0), row.get(1));
    assert_eq!((count, max), (ROWS + 1, ROWS), "nothing committed before the failure was lost");
}
