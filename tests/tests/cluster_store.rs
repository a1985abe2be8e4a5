//! The coordinator's store in a real cluster: what one leader commits, a
//! new leader with an empty local store loads (open incidents with their
//! timelines, runs with their idempotency keys and outcomes, the rails'
//! memory, the counters); an incident object keeps the newest timeline
//! entries; a write the cluster refuses fails the commit, whoever made it.
//!
//! One control plane (etcd and kube-apiserver) serves the file; the CRDs of
//! deploy/base/crds are applied once, and each test works in a namespace of
//! its own.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use remedy_coordinator::store::cluster::{ClusterStore, DEFAULT_TIMELINE_LIMIT};
use remedy_coordinator::store::embedded::EmbeddedStore;
use remedy_coordinator::store::{Counters, Store, StoreError, WriteBatch};
use remedy_e2e::cluster::TestCluster;
use remedy_shared::finding::{Finding, FindingKind, FindingState, Severity};
use remedy_shared::guard::{GuardState, Mode};
use remedy_shared::incident::{self, EntryKind, Incident, IncidentId, IncidentState, Outcome, TimelineEntry};
use remedy_shared::run::{RunRecord, RunStatus};
use remedy_shared::runbook::TemplateContext;
use remedy_shared::{Timestamp, runbook};
use serde_json::json;
use tempfile::TempDir;

fn fail(e: anyhow::Error) -> ! {
    panic!("{e:#}")
}

/// The shared cluster with Remedy's CRDs installed.
async fn cluster_with_crds() -> &'static TestCluster {
    let cluster = TestCluster::start().await;
    cluster.install_remedy_crds().await.unwrap_or_else(|e| fail(e));
    cluster
}

fn api(client: &Client, ns: &str, kind: &str, plural: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("remedy.dev", "v1alpha1", kind);
    Api::namespaced_with(client.clone(), ns, &ApiResource::from_gvk_with_plural(&gvk, plural))
}

/// A store over a fresh local directory, as a replica that just took over
/// has.
fn store(client: &Client, ns: &str) -> (Arc<ClusterStore>, TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let local = EmbeddedStore::open(dir.path()).expect("the embedded store opens");
    let store = ClusterStore::new(local, client.clone(), ns, tokio::runtime::Handle::current());
    (Arc::new(store), dir)
}

/// Commits from a thread of its own, as the recorder's writer does.
async fn commit(store: &Arc<ClusterStore>, batch: WriteBatch) -> Result<(), StoreError> {
    let store = store.clone();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(store.commit(&batch));
    });
    rx.await.expect("the committing thread answers")
}

/// Reads from the blocking pool, as the admin service does.
async fn read<T: Send + 'static>(
    store: &Arc<ClusterStore>,
    f: impl FnOnce(&ClusterStore) -> Result<T, StoreError> + Send + 'static,
) -> T {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store)).await.expect("the reader finishes").expect("the store reads")
}

fn now() -> Timestamp {
    let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_millis();
    Timestamp::from_millis(i64::try_from(ms).expect("a sane clock"))
}

fn later(t: Timestamp, ms: u64) -> Timestamp {
    t.plus(Duration::from_millis(ms))
}

fn opened(id: u64, at: Timestamp) -> (Incident, Vec<TimelineEntry>) {
    let finding = Finding {
        kind: FindingKind::DiskUsageHigh,
        severity: Severity::Critical,
        state: FindingState::Active,
        target: "mount/worker-1:/var".into(),
        labels: BTreeMap::new(),
        evidence: [("used_percent".to_owned(), "97".to_owned())].into(),
        summary: "/var is 97% full".into(),
        first_seen: at,
        last_seen: at,
        expires_at: Some(later(at, 300_000)),
    };
    match incident::apply_finding(None, "agent-1", &finding, IncidentId(id), at) {
        Outcome::Changed { incident, entries, .. } => (incident, entries),
        Outcome::Ignored => panic!("an active finding opens an incident"),
    }
}

fn entry(at: Timestamp, kind: EntryKind, message: &str) -> TimelineEntry {
    TimelineEntry { at, kind, message: message.into(), details: [("step".to_owned(), "cleanup".to_owned())].into() }
}

fn run_of(incident: &Incident, at: Timestamp) -> RunRecord {
    let rb = runbook::parse_runbook(
        "disk.yaml",
        "apiVersion: remedy.dev/v1\nkind: Runbook\nmetadata: {id: P2-001, title: disk}\npriority: P2\n\
         mttr_target: 15m\ntriggers: {manual: true}\n\
         steps: [{id: snapshot, notify: {webhook: w, message: m}}, {id: cleanup, notify: {webhook: w, message: m}}]\n\
         escalation: {policy: p}\n",
    )
    .expect("the runbook parses");
    let mut context = TemplateContext::default();
    context.incident.id = incident.id.to_string();
    context.params.insert("mount".into(), "/var".into());
    RunRecord::new(incident.id, &rb, Mode::Live, "finding disk_usage_high".into(), context, at)
}

/// The rails' memory with a pause, an action, a breaker and an approval;
/// built from its serialised form, the only way to hold an approval without
/// running the rails.
fn guard(at: Timestamp) -> GuardState {
    let ms = at.as_millis();
    serde_json::from_value(json!({
        "paused": { "by": "alice", "since": ms, "reason": "change freeze" },
        "actions": [{ "at": ms, "runbook_id": "P2-001", "incident_id": 1, "step_id": "snapshot", "attempt": 1,
                      "action_kind": "notify", "targets": ["webhook/w"], "pool": null, "mode": "live" }],
        "failures": [{ "at": ms, "runbook_id": "P2-001", "action_kind": "notify", "reason": "503" }],
        "breakers": { "runbook/P2-001": { "since": ms, "reason": "3 failed actions" } },
        "breaker_resets": {},
        "approvals": [{
            "key": { "incident_id": 1, "step_id": "cleanup", "attempt": 1 },
            "runbook_id": "P2-001", "action": "log_cleanup on worker-1",
            "reason": { "why": "runbook" },
            "requested_at": ms, "expires_at": ms + 300_000,
            "status": { "status": "pending" }
        }]
    }))
    .expect("a guard state")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_new_leader_continues_from_what_the_old_one_committed() {
    let cluster = cluster_with_crds().await;
    let client = cluster.client();
    let ns = cluster.new_namespace("store-takeover").await.unwrap_or_else(|e| fail(e));
    let t0 = now();

    // The old leader: an incident, its run with one finished and one
    // interrupted step, the rails' memory, the counters.
    let (old, _old_dir) = store(&client, &ns);
    let loaded = old.load().expect("an empty cluster loads");
    assert!(loaded.open_incidents.is_empty() && loaded.runs.is_empty() && loaded.guard.is_none());
    let (mut incident, opening) = opened(1, t0);
    let mut timeline = opening.clone();
    let mut run = run_of(&incident, t0);
    run.status = RunStatus::Running;
    run.record_intent("snapshot", later(t0, 1));
    let memory = guard(later(t0, 1));
    let counters = Counters { next_incident: 2, next_own_sequence: 5 };
    commit(
        &old,
        WriteBatch {
            incidents: vec![incident.clone()],
            timeline: opening.iter().map(|e| (incident.id, e.clone())).collect(),
            counters: Some(counters),
            runs: vec![run.clone()],
            guard: Some(memory.clone()),
            ..WriteBatch::default()
        },
    )
    .await
    .expect("the first commit reaches the cluster");

    let key = run.key_for("snapshot");
    run.record_outcome(&key, "succeeded", later(t0, 2));
    run.next_step = 1;
    run.record_intent("cleanup", later(t0, 3));
    incident.state = IncidentState::Mitigating;
    incident.updated_at = later(t0, 3);
    let step_entries = [
        entry(later(t0, 1), EntryKind::Decision, "allowed: notify"),
        entry(later(t0, 2), EntryKind::Result, "snapshot succeeded"),
        entry(later(t0, 3), EntryKind::Action, "cleanup started"),
    ];
    timeline.extend(step_entries.iter().cloned());
    commit(
        &old,
        WriteBatch {
            incidents: vec![incident.clone()],
            timeline: step_entries.iter().map(|e| (incident.id, e.clone())).collect(),
            runs: vec![run.clone()],
            ..WriteBatch::default()
        },
    )
    .await
    .expect("the second commit reaches the cluster");

    // What is in the cluster, read with the API itself.
    let incidents = api(&client, &ns, "Incident", "incidents");
    let object = incidents.get("inc-000001").await.expect("the Incident object");
    assert_eq!(object.data["spec"]["id"], "INC-000001");
    assert_eq!(object.data["status"]["state"], "mitigating");
    assert_eq!(object.data["status"]["timeline"].as_array().map(Vec::len), Some(timeline.len()));
    let runs = api(&client, &ns, "RunRecord", "runrecords");
    let object = runs.get("inc-000001").await.expect("the RunRecord object");
    assert_eq!(object.data["status"]["intents"][0]["outcome"], "succeeded");
    assert!(object.data["status"]["intents"][1].get("outcome").is_none(), "cleanup never ended");
    let keys = api(&client, &ns, "IdempotencyKey", "idempotencykeys").list(&ListParams::default()).await.expect("keys");
    let mut recorded: Vec<String> =
        keys.items.iter().filter_map(|k| k.data["spec"]["key"].as_str().map(str::to_owned)).collect();
    recorded.sort();
    assert_eq!(recorded, vec!["INC-000001/cleanup#1".to_owned(), "INC-000001/snapshot#1".to_owned()]);
    let guard_object =
        api(&client, &ns, "GuardState", "guardstates").get("cluster").await.expect("the GuardState object");
    assert_eq!(guard_object.data["status"]["paused"]["by"], "alice");
    assert_eq!(guard_object.data["status"]["counters"]["nextIncident"], 2);
    let approvals = api(&client, &ns, "Approval", "approvals").list(&ListParams::default()).await.expect("approvals");
    assert_eq!(approvals.items.len(), 1);
    assert_eq!(approvals.items[0].data["spec"]["stepId"], "cleanup");

    // The new leader, with an empty local store, loads all of it. load()
    // runs on a runtime worker here, as the coordinator's start does.
    let (new, _new_dir) = store(&client, &ns);
    let loaded = new.load().expect("the new leader loads");
    assert_eq!(loaded.open_incidents, vec![incident.clone()]);
    assert_eq!(loaded.runs, vec![run.clone()], "the same run, intents and outcomes");
    assert_eq!(loaded.runs[0].interrupted().map(|i| i.key.as_str()), Some("INC-000001/cleanup#1"));
    assert_eq!(loaded.guard, Some(memory.clone()), "pause, actions, failures, breakers, approvals");
    assert_eq!(loaded.counters, counters);
    let (shown, shown_timeline) =
        read(&new, |s| s.get_incident(IncidentId(1))).await.expect("the new leader knows INC-000001");
    assert_eq!(shown, incident);
    assert_eq!(shown_timeline, timeline, "the old leader's timeline, imported into the new leader's store");
    assert_eq!(read(&new, |s| s.get_run(IncidentId(1))).await, Some(run.clone()));
    let listed = read(&new, |s| s.list_incidents(false, 10)).await;
    assert_eq!(listed.iter().map(|i| i.id).collect::<Vec<_>>(), vec![IncidentId(1)]);

    // The new leader goes on: the cleanup's end and the resolution.
    run.record_outcome(&run.key_for("cleanup"), "interrupted", later(t0, 10));
    run.status = RunStatus::Cancelled;
    let (resolved, resolution) = incident::resolve(&incident, "bob", "disk freed", later(t0, 11)).expect("resolves");
    commit(
        &new,
        WriteBatch {
            incidents: vec![resolved.clone()],
            timeline: vec![(resolved.id, resolution.clone())],
            runs: vec![run.clone()],
            counters: Some(Counters { next_incident: 2, next_own_sequence: 6 }),
            ..WriteBatch::default()
        },
    )
    .await
    .expect("the new leader commits");
    let object = incidents.get("inc-000001").await.expect("the Incident object");
    assert_eq!(object.data["status"]["state"], "resolved");
    assert_eq!(object.data["status"]["timeline"].as_array().map(Vec::len), Some(timeline.len() + 1));
    assert_eq!(object.metadata.labels.unwrap_or_default().get("remedy.dev/open").map(String::as_str), Some("false"));

    // The old leader, deposed but still writing from what it last saw, is
    // refused instead of undoing the new leader's resolution.
    let mut stale = incident.clone();
    stale.summary = "still mitigating".into();
    let err = commit(&old, WriteBatch { incidents: vec![stale], ..WriteBatch::default() })
        .await
        .expect_err("a write from a stale view is refused");
    let message = err.to_string();
    assert!(matches!(err, StoreError::Conflict { .. }), "{err:?}");
    assert!(message.contains("inc-000001") && message.contains("another writer"), "{message}");
    let err = commit(&old, WriteBatch { incidents: vec![incident.clone()], ..WriteBatch::default() })
        .await
        .expect_err("and stays refused: its view of that incident is stale");
    assert!(err.to_string().contains("until it loads"), "{err}");
    let object = incidents.get("inc-000001").await.expect("the Incident object");
    assert_eq!(object.data["status"]["state"], "resolved", "the new leader's write stands");

    // A third replica finds nothing open, and the counters where the new
    // leader left them; the resolved incident still reads through.
    let (third, _third_dir) = store(&client, &ns);
    let loaded = third.load().expect("loads");
    assert!(loaded.open_incidents.is_empty(), "{:?}", loaded.open_incidents);
    assert!(loaded.runs.is_empty(), "a finished run of a closed incident is not loaded");
    assert_eq!(loaded.counters, Counters { next_incident: 2, next_own_sequence: 6 });
    let (shown, shown_timeline) = read(&third, |s| s.get_incident(IncidentId(1))).await.expect("reads through");
    assert_eq!(shown, resolved);
    assert_eq!(shown_timeline.last(), Some(&resolution));
}

#[tokio::test(flavor = "multi_thread")]
async fn an_incident_object_keeps_the_newest_timeline_entries() {
    let cluster = cluster_with_crds().await;
    let client = cluster.client();
    let ns = cluster.new_namespace("store-timeline").await.unwrap_or_else(|e| fail(e));
    let t0 = now();
    let (leader, _dir) = store(&client, &ns);
    leader.load().expect("loads");
    let (incident, _) = opened(1, t0);
    let total = DEFAULT_TIMELINE_LIMIT + 57;
    let entries: Vec<TimelineEntry> =
        (0..total).map(|n| entry(later(t0, n as u64), EntryKind::Decision, &format!("decision {n}"))).collect();
    // In several commits, as a long incident accumulates them.
    for (i, chunk) in entries.chunks(100).enumerate() {
        commit(
            &leader,
            WriteBatch {
                incidents: if i == 0 { vec![incident.clone()] } else { Vec::new() },
                timeline: chunk.iter().map(|e| (incident.id, e.clone())).collect(),
                counters: (i == 0).then_some(Counters { next_incident: 2, next_own_sequence: 1 }),
                ..WriteBatch::default()
            },
        )
        .await
        .expect("commits");
    }

    let object = api(&client, &ns, "Incident", "incidents").get("inc-000001").await.expect("the Incident object");
    let kept = object.data["status"]["timeline"].as_array().cloned().expect("a timeline");
    assert_eq!(kept.len(), DEFAULT_TIMELINE_LIMIT);
    assert_eq!(object.data["status"]["timelineDropped"], 57);
    assert_eq!(kept[0]["message"], "decision 57", "the oldest entries went first");
    assert_eq!(kept[DEFAULT_TIMELINE_LIMIT - 1]["message"], format!("decision {}", total - 1));

    // The leader's own store keeps all of them; a new leader gets the newest.
    let (_, all) = read(&leader, |s| s.get_incident(IncidentId(1))).await.expect("known");
    assert_eq!(all.len(), total);
    let (new, _new_dir) = store(&client, &ns);
    new.load().expect("loads");
    let (_, newest) = read(&new, |s| s.get_incident(IncidentId(1))).await.expect("imported");
    assert_eq!(newest, entries[57..].to_vec());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_write_the_cluster_refuses_fails_the_commit() {
    let cluster = cluster_with_crds().await;
    let client = cluster.client();
    let t0 = now();
    let (incident, entries) = opened(1, t0);
    let batch = || WriteBatch {
        incidents: vec![incident.clone()],
        timeline: entries.iter().map(|e| (incident.id, e.clone())).collect(),
        counters: Some(Counters { next_incident: 2, next_own_sequence: 1 }),
        ..WriteBatch::default()
    };

    // No such namespace.
    let (nowhere, _dir) = store(&client, "remedy-no-such-namespace");
    let err = commit(&nowhere, batch()).await.expect_err("nothing can be written there");
    let message = err.to_string();
    assert!(matches!(err, StoreError::Backend(_)), "{err:?}");
    assert!(
        message.contains("remedy-no-such-namespace") && message.contains("not found") && message.contains("CRDs"),
        "the error names the namespace and the likely causes: {message}"
    );

    // Objects the schema refuses: the API's reason comes through.
    let ns = cluster.new_namespace("store-refused").await.unwrap_or_else(|e| fail(e));
    let (leader, _dir) = store(&client, &ns);
    leader.load().expect("loads");
    let mut nameless = incident.clone();
    nameless.key.kind = remedy_shared::finding::ConditionKind::Alert(String::new());
    let err = commit(&leader, WriteBatch { incidents: vec![nameless], ..WriteBatch::default() })
        .await
        .expect_err("an alert without a name is refused by the schema");
    assert!(err.to_string().contains("spec.key.name"), "{err}");

    // The same store writes again once the cause is gone: a refused commit
    // leaves nothing that blocks the next.
    commit(&leader, batch()).await.expect("a valid incident commits");
    let incidents = api(&client, &ns, "Incident", "incidents");
    let object = incidents.get("inc-000001").await.expect("the Incident object");
    assert_eq!(object.data["status"]["timeline"].as_array().map(Vec::len), Some(entries.len()));

    // A commit that fails half-way (the incident is written, the approval
    // after it is refused) is never acknowledged: its retry may describe
    // the incident differently (opened later), and replaces the object the
    // failed commit left instead of being refused for ever.
    let (second, second_entries) = opened(2, t0);
    let mut bad_guard = serde_json::to_value(guard(t0)).expect("serialises");
    bad_guard["approvals"][0]["expires_at"] = bad_guard["approvals"][0]["requested_at"].clone();
    let bad_guard: GuardState = serde_json::from_value(bad_guard).expect("a guard state");
    let err = commit(
        &leader,
        WriteBatch {
            incidents: vec![second.clone()],
            timeline: second_entries.iter().map(|e| (second.id, e.clone())).collect(),
            counters: Some(Counters { next_incident: 3, next_own_sequence: 1 }),
            guard: Some(bad_guard),
            ..WriteBatch::default()
        },
    )
    .await
    .expect_err("an approval that expires as it is filed is refused");
    assert!(err.to_string().contains("expiresAt must be after requestedAt"), "{err}");
    assert!(incidents.get_opt("inc-000002").await.expect("reads").is_some(), "the failed commit wrote the incident");
    let (retried, retried_entries) = opened(2, later(t0, 5_000));
    commit(
        &leader,
        WriteBatch {
            incidents: vec![retried.clone()],
            timeline: retried_entries.iter().map(|e| (retried.id, e.clone())).collect(),
            counters: Some(Counters { next_incident: 3, next_own_sequence: 1 }),
            guard: Some(guard(t0)),
            ..WriteBatch::default()
        },
    )
    .await
    .expect("the retry commits");
    let object = incidents.get("inc-000002").await.expect("the Incident object");
    assert_eq!(object.data["spec"]["openedAt"], retried.opened_at.to_string());
    assert_eq!(
        object.data["status"]["timeline"].as_array().map(Vec::len),
        Some(retried_entries.len()),
        "only the acknowledged commit's entries"
    );
    assert_eq!(
        api(&client, &ns, "Approval", "approvals").list(&ListParams::default()).await.expect("approvals").items.len(),
        1
    );
}
