//! The store in the cluster: the embedded store, with what a new leader
//! needs mirrored into `remedy.dev/v1alpha1` objects.
//!
//! Every batch is committed to the local redb file first, then the objects it
//! changed are written to the Kubernetes API:
//!
//! | domain | object | name |
//! |---|---|---|
//! | `Incident` and its newest timeline entries | `Incident` | `inc-000042` |
//! | `RunRecord` | `RunRecord` | `inc-000042` |
//! | each `Intent` of a run | `IdempotencyKey` | `inc-000042-<sha256(key)[..16]>` |
//! | `GuardState` (without approvals) and `Counters` | `GuardState` | `cluster` |
//! | each approval of the `GuardState` | `Approval` | `inc-000042-<sha256(key)[..16]>` |
//!
//! Findings, agents and Alertmanager notification keys stay local: agents
//! send again whatever a new leader has not acknowledged, and a notification
//! recorded by the old leader only may be recorded once more, joining the
//! open incident of its condition.
//!
//! A commit writes the local file first, then the objects. When an object
//! write fails the commit fails and nothing is acknowledged, but the local
//! file already holds the batch; the next commit writes each object whole
//! again from what was last acknowledged, so the cluster never keeps a
//! half-written batch's timeline entries twice.
//!
//! [`ClusterStore::load`] overlays the local state with the cluster's and
//! imports the cluster's open incidents (with their timelines), their runs
//! and the rails' memory into the local store, so a replica that takes over
//! reads the old leader's incidents like its own.
//!
//! The pieces: this file is the store, which keeps the local file and
//! writes the objects a batch changed; `api.rs` is the Kubernetes API client,
//! each call bounded by a timeout; `overlay.rs` is the pure overlay of the
//! cluster's state on the local file; `encoding.rs` the pure conversion
//! between domain values and objects.

mod api;
mod encoding;
#[cfg(test)]
mod fixtures;
mod overlay;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use kube::api::DynamicObject;
use remedy_shared::audit::AuditEntry;
use remedy_shared::guard::GuardState;
use remedy_shared::incident::{Incident, IncidentId, TimelineEntry};
use remedy_shared::run::RunRecord;
use serde_json::Value;
use tokio::runtime::{Handle, RuntimeFlavor};

use self::api::{ClusterApi, Created};
use self::encoding::{
    ClusterIncident, Desired, FINISHED_LABEL, GUARD_NAME, INCIDENT_LABEL, Kind, OPEN_LABEL, ObjectKey, Timeline,
    approval_from_object, approvals_desired, guard_desired, guard_from_status, guard_with_approvals, incident_desired,
    incident_from_object, incident_timeline, intent_from_key_object, key_desired, new_object, object_name,
    object_name_of, resource_version, run_desired, run_from_object,
};
use self::overlay::{Snapshot, bounded, max_counters, merge_keys, overlay, touched_incidents, touches_cluster};
use super::embedded::EmbeddedStore;
use super::{AgentRecord, BanRecord, Counters, FindingQuery, Loaded, Store, StoreError, StoredFinding, WriteBatch};

/// Timeline entries an `Incident` object keeps (the newest).
pub const DEFAULT_TIMELINE_LIMIT: usize = 200;
/// Longest wait for one API call.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// The timeline's share of an object: etcd refuses objects over 1.5 MiB, and
/// an entry may carry up to 32 details of 2 KiB each.
const TIMELINE_BYTES: usize = 512 * 1024;
/// The schema's cap on `status.timeline`.
const TIMELINE_MAX_ITEMS: usize = 500;

/// An object as this store last saw or wrote it.
#[derive(Debug, Clone)]
struct Known {
    resource_version: String,
    spec: Value,
    labels: BTreeMap<String, String>,
    status: Value,
    /// Created by a commit that has not succeeded (yet): nothing it says was
    /// acknowledged, so a retry that describes the object differently may
    /// replace it.
    provisional: bool,
    /// A conditional write was refused: someone else wrote it since this
    /// store last saw it. This store's view is stale and it writes the
    /// object no more until it loads again.
    conflict: bool,
}

/// The rails' memory and the counters as of the last acknowledged commit.
#[derive(Debug, Clone, Default)]
struct GuardBase {
    guard: Option<GuardState>,
    counters: Counters,
}

/// What the store knows of the cluster's objects. Only open incidents,
/// unfinished runs and their keys stay here; the rest is read again when a
/// commit touches it.
#[derive(Debug, Default)]
struct Mirror {
    objects: HashMap<ObjectKey, Known>,
    timelines: HashMap<IncidentId, Timeline>,
    guard: Option<GuardBase>,
}

/// A [`Store`] that keeps the embedded store and mirrors incidents, runs,
/// idempotency keys, approvals, the rails' memory and the counters into
/// `remedy.dev` objects of one namespace, so that a new leader continues
/// where the old one stopped.
///
/// Its methods block: call them from a plain thread, from
/// `spawn_blocking`, or from a worker of a multi-threaded runtime (they use
/// `block_in_place` there); never from a current-thread runtime's own thread.
pub struct ClusterStore {
    local: EmbeddedStore,
    api: ClusterApi,
    runtime: Handle,
    timeline_limit: usize,
    mirror: Mutex<Mirror>,
}

impl fmt::Debug for ClusterStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterStore")
            .field("namespace", &self.api.namespace())
            .field("timeline_limit", &self.timeline_limit)
            .finish_non_exhaustive()
    }
}

impl ClusterStore {
    /// A store over `local` that mirrors into `namespace` through `client`,
    /// driving API calls on `runtime`.
    pub fn new(local: EmbeddedStore, client: kube::Client, namespace: &str, runtime: Handle) -> ClusterStore {
        ClusterStore {
            local,
            api: ClusterApi::new(client, namespace, DEFAULT_CALL_TIMEOUT),
            runtime,
            timeline_limit: DEFAULT_TIMELINE_LIMIT,
            mirror: Mutex::new(Mirror::default()),
        }
    }

    /// Keeps the newest `limit` timeline entries per `Incident` object
    /// (at least 1, at most the schema's 500).
    pub fn with_timeline_limit(mut self, limit: usize) -> ClusterStore {
        self.timeline_limit = limit.clamp(1, TIMELINE_MAX_ITEMS);
        self
    }

    /// Bounds each API call by `timeout`.
    pub fn with_call_timeout(mut self, timeout: Duration) -> ClusterStore {
        self.api.set_timeout(timeout);
        self
    }

    /// The namespace holding the objects.
    pub fn namespace(&self) -> &str {
        self.api.namespace()
    }

    /// Runs `fut` to completion from synchronous code. On a worker of a
    /// multi-threaded runtime `block_in_place` hands the worker's other
    /// tasks away first: a bare `block_on` there would panic.
    fn block<F: Future>(&self, fut: F) -> F::Output {
        let on_multi_thread = Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
        if on_multi_thread {
            tokio::task::block_in_place(|| self.runtime.block_on(fut))
        } else {
            self.runtime.block_on(fut)
        }
    }

    fn mirror(&self) -> Result<MutexGuard<'_, Mirror>, StoreError> {
        self.mirror.lock().map_err(|_| StoreError::Backend("the cluster store's mirror is poisoned".into()))
    }

    // ---- load --------------------------------------------------------

    async fn read_cluster(&self, mirror: &mut Mirror, local: &Loaded) -> Result<Snapshot, StoreError> {
        let api = &self.api;
        let mut incidents: BTreeMap<IncidentId, ClusterIncident> = BTreeMap::new();
        for object in api.list(Kind::Incident, &format!("{OPEN_LABEL}=true")).await? {
            let incident = incident_from_object(&object)?;
            mirror.objects.insert((Kind::Incident, object_name(&object)), known(&object, false));
            incidents.insert(incident.incident.id, incident);
        }
        // A local open incident the cluster does not list as open may have
        // been closed by a later leader (this replica's file is stale), or
        // never reached the cluster.
        for incident in &local.open_incidents {
            if incidents.contains_key(&incident.id) {
                continue;
            }
            if let Some(object) = api.get(Kind::Incident, &object_name_of(incident.id)).await? {
                let found = incident_from_object(&object)?;
                if !found.incident.state.is_closed() {
                    mirror.objects.insert((Kind::Incident, object_name(&object)), known(&object, false));
                }
                incidents.insert(found.incident.id, found);
            }
        }
        for (id, found) in &incidents {
            mirror.timelines.insert(*id, Timeline { entries: found.timeline.clone(), dropped: found.dropped });
        }

        let mut runs: BTreeMap<IncidentId, RunRecord> = BTreeMap::new();
        for object in api.list(Kind::RunRecord, &format!("{FINISHED_LABEL}=false")).await? {
            let run = run_from_object(&object)?;
            mirror.objects.insert((Kind::RunRecord, object_name(&object)), known(&object, false));
            runs.insert(run.incident_id, run);
        }
        let open_ids: BTreeSet<IncidentId> = incidents
            .values()
            .filter(|i| !i.incident.state.is_closed())
            .map(|i| i.incident.id)
            .chain(local.open_incidents.iter().map(|i| i.id))
            .chain(local.runs.iter().filter(|r| !r.status.is_finished()).map(|r| r.incident_id))
            .collect();
        for id in &open_ids {
            if runs.contains_key(id) {
                continue;
            }
            if let Some(object) = api.get(Kind::RunRecord, &object_name_of(*id)).await? {
                let run = run_from_object(&object)?;
                mirror.objects.insert((Kind::RunRecord, object_name(&object)), known(&object, false));
                runs.insert(run.incident_id, run);
            }
        }
        let mut keys = Vec::new();
        for id in runs.keys() {
            for object in api.list(Kind::IdempotencyKey, &format!("{INCIDENT_LABEL}={}", object_name_of(*id))).await? {
                keys.push(intent_from_key_object(&object)?);
                mirror.objects.insert((Kind::IdempotencyKey, object_name(&object)), known(&object, false));
            }
        }

        let base = self.fetch_guard(mirror).await?;
        Ok(Snapshot {
            incidents: incidents.into_values().collect(),
            runs: runs.into_values().collect(),
            keys,
            guard: base.guard,
            counters: base.counters,
        })
    }

    /// The rails' memory and counters as the cluster holds them, approvals
    /// included; remembered as the acknowledged base.
    async fn fetch_guard(&self, mirror: &mut Mirror) -> Result<GuardBase, StoreError> {
        let object = self.api.get(Kind::GuardState, GUARD_NAME).await?;
        let mut approvals = Vec::new();
        for object in self.api.list(Kind::Approval, "").await? {
            approvals.push(approval_from_object(&object)?);
            mirror.objects.insert((Kind::Approval, object_name(&object)), known(&object, false));
        }
        let base = match object {
            Some(object) => {
                mirror.objects.insert((Kind::GuardState, GUARD_NAME.into()), known(&object, false));
                let status = object.data.get("status").cloned().unwrap_or(Value::Null);
                let (guard, counters) = guard_from_status(&status, approvals)?;
                GuardBase { guard, counters }
            }
            None if approvals.is_empty() => GuardBase::default(),
            None => GuardBase { guard: Some(guard_with_approvals(None, approvals)?), counters: Counters::default() },
        };
        mirror.guard = Some(base.clone());
        Ok(base)
    }

    // ---- commit ------------------------------------------------------

    async fn write_batch(&self, mirror: &mut Mirror, batch: &WriteBatch) -> Result<(), StoreError> {
        let mut written: Vec<ObjectKey> = Vec::new();
        // Counters first: once an incident object exists, its number must
        // already be spent in the cluster, or a new leader would hand it out
        // again and collide with it.
        let mut new_guard = None;
        if batch.guard.is_some() || batch.counters.is_some() {
            let base = match &mirror.guard {
                Some(base) => base.clone(),
                None => self.fetch_guard(mirror).await?,
            };
            let guard = batch.guard.clone().or(base.guard);
            let counters = max_counters(base.counters, batch.counters.unwrap_or_default());
            let desired = guard_desired(guard.as_ref(), counters)?;
            self.ensure(mirror, &desired).await?;
            written.push(desired.key());
            new_guard = Some(GuardBase { guard, counters });
        }

        // An idempotency key goes before the run that mentions it: a key
        // without its run is read back as an interrupted step, never the
        // reverse.
        for run in &batch.runs {
            for intent in &run.intents {
                let desired = key_desired(run, intent)?;
                self.ensure(mirror, &desired).await?;
                written.push(desired.key());
            }
            let desired = run_desired(run)?;
            self.ensure(mirror, &desired).await?;
            written.push(desired.key());
        }

        let mut new_timelines = Vec::new();
        for id in touched_incidents(batch) {
            let incident = match batch.incidents.iter().rev().find(|i| i.id == id) {
                Some(i) => i.clone(),
                // Entries for an incident the batch did not change: the local
                // store, committed just before, has it.
                None => match self.local.get_incident(id)? {
                    Some((i, _)) => i,
                    None => {
                        return Err(StoreError::Backend(format!(
                            "timeline entries for {id}, which the store does not know"
                        )));
                    }
                },
            };
            let base = match mirror.timelines.get(&id) {
                Some(t) => t.clone(),
                None => self.fetch_timeline(mirror, id).await?,
            };
            let appended = batch.timeline.iter().filter(|(i, _)| *i == id).map(|(_, e)| e.clone());
            let timeline = bounded(base, appended, self.timeline_limit, TIMELINE_BYTES);
            let desired = incident_desired(&incident, &timeline)?;
            self.ensure(mirror, &desired).await?;
            written.push(desired.key());
            new_timelines.push((incident, timeline));
        }

        if let Some(guard) = &batch.guard {
            let wanted = approvals_desired(guard)?;
            let names: HashSet<String> = wanted.iter().map(|d| d.name.clone()).collect();
            for desired in &wanted {
                self.ensure(mirror, desired).await?;
                written.push(desired.key());
            }
            // The rails forgot these (used, or expired past the horizon).
            let stale: Vec<(String, String)> = mirror
                .objects
                .iter()
                .filter(|((kind, name), _)| *kind == Kind::Approval && !names.contains(name))
                .map(|((_, name), k)| (name.clone(), k.resource_version.clone()))
                .collect();
            for (name, rv) in stale {
                self.api.delete(Kind::Approval, &name, &rv).await?;
                mirror.objects.remove(&(Kind::Approval, name));
            }
        }

        // Acknowledged: this is now the base of the next commit.
        for key in &written {
            if let Some(k) = mirror.objects.get_mut(key) {
                k.provisional = false;
            }
        }
        if new_guard.is_some() {
            mirror.guard = new_guard;
        }
        for (incident, timeline) in new_timelines {
            if incident.state.is_closed() {
                mirror.timelines.remove(&incident.id);
                mirror.objects.remove(&(Kind::Incident, object_name_of(incident.id)));
            } else {
                mirror.timelines.insert(incident.id, timeline);
            }
        }
        for run in batch.runs.iter().filter(|r| r.status.is_finished()) {
            let name = object_name_of(run.incident_id);
            let prefix = format!("{name}-");
            mirror.objects.retain(|(kind, n), _| match kind {
                Kind::RunRecord => *n != name,
                Kind::IdempotencyKey => !n.starts_with(&prefix),
                _ => true,
            });
        }
        Ok(())
    }

    /// The timeline an incident's object holds, for an incident no
    /// acknowledged commit of this store wrote.
    async fn fetch_timeline(&self, mirror: &mut Mirror, id: IncidentId) -> Result<Timeline, StoreError> {
        let key = (Kind::Incident, object_name_of(id));
        let current = match mirror.objects.get(&key) {
            Some(k) => k.clone(),
            None => match self.api.get(Kind::Incident, &key.1).await? {
                Some(object) => {
                    let k = known(&object, false);
                    mirror.objects.insert(key.clone(), k.clone());
                    k
                }
                None => return Ok(Timeline::default()),
            },
        };
        if current.provisional {
            // Written by a commit that failed: none of its entries counts.
            return Ok(Timeline::default());
        }
        incident_timeline(&key.1, &current.status)
    }

    /// Makes the object `desired` describes exist with its labels and
    /// status, in as few calls as what changed needs.
    ///
    /// Writes are replacements conditional on the resourceVersion this store
    /// last saw, not server-side apply: a write based on a stale view (the
    /// object changed under us, by a deposed or a new leader) is refused with
    /// 409 and the commit fails, instead of silently overwriting the other
    /// writer's state; the rails' memory in particular must never be spent
    /// twice. A refused write is final for this store until it loads again
    /// (the leader that lost its lease stops and loads as a candidate);
    /// after any other failure (a timeout whose write may or may not have
    /// landed, say) the object is forgotten and read afresh by the next
    /// commit.
    async fn ensure(&self, mirror: &mut Mirror, desired: &Desired) -> Result<(), StoreError> {
        let key = desired.key();
        match self.ensure_inner(mirror, desired).await {
            Ok(()) => Ok(()),
            Err(error @ StoreError::Conflict { .. }) => {
                if let Some(k) = mirror.objects.get_mut(&key) {
                    k.conflict = true;
                }
                Err(error)
            }
            Err(error) => {
                mirror.objects.remove(&key);
                Err(error)
            }
        }
    }

    async fn ensure_inner(&self, mirror: &mut Mirror, desired: &Desired) -> Result<(), StoreError> {
        let key = desired.key();
        let (kind, name) = (desired.kind, desired.name.as_str());
        let mut current = match mirror.objects.get(&key) {
            Some(k) if k.conflict => {
                return Err(StoreError::Conflict {
                    message: format!(
                        "{kind} {name} in namespace {} was changed by another writer after this coordinator last \
                         saw it; it writes it no more until it loads the cluster's state again",
                        self.api.namespace()
                    ),
                });
            }
            Some(k) => Some(k.clone()),
            None => self.api.get(kind, name).await?.map(|o| known(&o, false)),
        };
        if let (Some(k), Some(spec)) = (&current, &desired.spec)
            && &k.spec != spec
        {
            if !k.provisional {
                return Err(StoreError::Backend(format!(
                    "{kind} {name} in namespace {} already exists and describes something else \
                     (spec {}, this coordinator has {spec}); refusing to overwrite it",
                    self.api.namespace(),
                    k.spec
                )));
            }
            self.api.delete(kind, name, &k.resource_version).await?;
            mirror.objects.remove(&key);
            current = None;
        }
        let mut current = match current {
            Some(k) => k,
            None => {
                let created = match self.api.create(kind, &new_object(desired)).await? {
                    Created::Made(object) => known(&object, true),
                    Created::Exists => {
                        // Made between our read and our create: by whom?
                        let Some(object) = self.api.get(kind, name).await? else {
                            return Err(StoreError::Backend(format!(
                                "{kind} {name} in namespace {} exists and does not: deleted while being created",
                                self.api.namespace()
                            )));
                        };
                        let k = known(&object, false);
                        if desired.spec.as_ref().is_some_and(|s| &k.spec != s) {
                            return Err(StoreError::Backend(format!(
                                "{kind} {name} in namespace {} was created by another writer with a different spec \
                                 ({}); refusing to overwrite it",
                                self.api.namespace(),
                                k.spec
                            )));
                        }
                        k
                    }
                };
                mirror.objects.insert(key.clone(), created.clone());
                created
            }
        };
        if current.labels != desired.labels {
            let object =
                self.api.set_labels(kind, name, &current.resource_version, &current.labels, &desired.labels).await?;
            current.resource_version = resource_version(&object);
            current.labels = desired.labels.clone();
            mirror.objects.insert(key.clone(), current.clone());
        }
        if current.status != desired.status {
            let object = self.api.replace_status(kind, name, &current.resource_version, &desired.status).await?;
            current.resource_version = resource_version(&object);
            current.status = desired.status.clone();
            mirror.objects.insert(key, current);
        }
        Ok(())
    }

    // ---- read-through ------------------------------------------------

    async fn read_incident(&self, id: IncidentId) -> Result<Option<(Incident, Vec<TimelineEntry>)>, StoreError> {
        Ok(self
            .api
            .get(Kind::Incident, &object_name_of(id))
            .await?
            .map(|o| incident_from_object(&o))
            .transpose()?
            .map(|found| (found.incident, found.timeline)))
    }

    async fn read_run(&self, id: IncidentId) -> Result<Option<RunRecord>, StoreError> {
        let Some(object) = self.api.get(Kind::RunRecord, &object_name_of(id)).await? else {
            return Ok(None);
        };
        let mut run = run_from_object(&object)?;
        let keys = self.api.list(Kind::IdempotencyKey, &format!("{INCIDENT_LABEL}={}", object_name_of(id))).await?;
        let keys = keys.iter().map(intent_from_key_object).collect::<Result<Vec<_>, _>>()?;
        merge_keys(&mut run, keys.into_iter().map(|(_, intent)| intent));
        Ok(Some(run))
    }
}

impl Store for ClusterStore {
    fn load(&self) -> Result<Loaded, StoreError> {
        let local = self.local.load()?;
        let mut mirror = self.mirror()?;
        *mirror = Mirror::default();
        let snapshot = self.block(self.read_cluster(&mut mirror, &local))?;
        let mut local_timelines = HashMap::new();
        for found in &snapshot.incidents {
            let entries = self.local.get_incident(found.incident.id)?.map(|(_, t)| t).unwrap_or_default();
            local_timelines.insert(found.incident.id, entries);
        }
        let (loaded, import) = overlay(local, snapshot, &local_timelines);
        // The import goes to the local file only: the cluster already has it.
        self.local.commit(&import)?;
        if let Some(base) = &mut mirror.guard {
            base.counters = max_counters(base.counters, loaded.counters);
        }
        Ok(loaded)
    }

    fn commit(&self, batch: &WriteBatch) -> Result<(), StoreError> {
        self.local.commit(batch)?;
        if !touches_cluster(batch) {
            return Ok(());
        }
        let mut mirror = self.mirror()?;
        self.block(self.write_batch(&mut mirror, batch))
    }

    fn scan_findings(
        &self,
        query: &FindingQuery,
        visit: &mut dyn FnMut(StoredFinding) -> bool,
    ) -> Result<(), StoreError> {
        self.local.scan_findings(query, visit)
    }

    fn get_finding(&self, agent_id: &str, sequence: u64) -> Result<Option<StoredFinding>, StoreError> {
        self.local.get_finding(agent_id, sequence)
    }

    /// The local store's incidents: those of this replica's terms, and the
    /// open ones it found in the cluster when it took over. Read from the
    /// local file, which seeks by number; the cluster's objects are not
    /// listed (their API pages by name, not by number).
    fn scan_incidents(
        &self,
        include_resolved: bool,
        before: Option<IncidentId>,
        visit: &mut dyn FnMut(Incident) -> bool,
    ) -> Result<(), StoreError> {
        self.local.scan_incidents(include_resolved, before, visit)
    }

    /// Read through to the cluster for a run this replica never held.
    fn get_run(&self, id: IncidentId) -> Result<Option<RunRecord>, StoreError> {
        match self.local.get_run(id)? {
            Some(run) => Ok(Some(run)),
            None => self.block(self.read_run(id)),
        }
    }

    /// Read through to the cluster for an incident this replica never held
    /// (one an earlier leader resolved, say); its timeline is then the
    /// object's newest entries.
    fn get_incident(&self, id: IncidentId) -> Result<Option<(Incident, Vec<TimelineEntry>)>, StoreError> {
        match self.local.get_incident(id)? {
            Some(found) => Ok(Some(found)),
            None => self.block(self.read_incident(id)),
        }
    }

    fn list_agents(&self) -> Result<Vec<AgentRecord>, StoreError> {
        self.local.list_agents()
    }

    // Bans stay in the local file: a new leader does not see the old
    // leader's bans, while the agents keep enforcing them until they end.
    fn list_bans(&self) -> Result<Vec<BanRecord>, StoreError> {
        self.local.list_bans()
    }

    fn put_ban(&self, ban: &BanRecord) -> Result<(), StoreError> {
        self.local.put_ban(ban)
    }

    // The audit log stays in the pod's file, written in the same
    // transaction as what it records; each replica keeps the entries of
    // its own terms.
    fn last_audit_seq(&self) -> Result<u64, StoreError> {
        self.local.last_audit_seq()
    }

    fn scan_audit(&self, after: u64, visit: &mut dyn FnMut(AuditEntry) -> bool) -> Result<(), StoreError> {
        self.local.scan_audit(after, visit)
    }
}

/// What this store remembers of `object`.
fn known(object: &DynamicObject, provisional: bool) -> Known {
    Known {
        resource_version: resource_version(object),
        spec: object.data.get("spec").cloned().unwrap_or(Value::Null),
        labels: object.metadata.labels.clone().unwrap_or_default(),
        status: object.data.get("status").cloned().unwrap_or(Value::Null),
        provisional,
        conflict: false,
    }
}
