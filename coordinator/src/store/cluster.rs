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
//! Conversions between the domain and the objects are pure functions at the
//! bottom of this file; I/O is confined to [`Api`] calls, each bounded by a
//! timeout.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, ListParams, ObjectMeta, Patch, PatchParams, PostParams,
    Preconditions,
};
use remedy_shared::Timestamp;
use remedy_shared::audit::AuditEntry;
use remedy_shared::finding::{ConditionKey, ConditionKind, FindingKind, Severity};
use remedy_shared::guard::GuardState;
use remedy_shared::incident::{EntryKind, Incident, IncidentId, IncidentState, TimelineEntry};
use remedy_shared::run::{Intent, RunRecord, RunStatus};
use serde_json::{Map, Value, json};
use tokio::runtime::{Handle, RuntimeFlavor};

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
const GROUP: &str = "remedy.dev";
const VERSION: &str = "v1alpha1";
const FIELD_MANAGER: &str = "remedy";
const GUARD_NAME: &str = "cluster";
/// On incidents: whether it is open, so a new leader lists only those.
const OPEN_LABEL: &str = "remedy.dev/open";
/// On runs: whether it is finished.
const FINISHED_LABEL: &str = "remedy.dev/finished";
/// On idempotency keys and approvals: their incident's object name.
const INCIDENT_LABEL: &str = "remedy.dev/incident";
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "remedy-coordinator");
const LIST_PAGE: u32 = 250;

/// The kinds of `remedy.dev` objects the store writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kind {
    Incident,
    RunRecord,
    GuardState,
    Approval,
    IdempotencyKey,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Incident => "Incident",
            Kind::RunRecord => "RunRecord",
            Kind::GuardState => "GuardState",
            Kind::Approval => "Approval",
            Kind::IdempotencyKey => "IdempotencyKey",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Kind::Incident => "incidents",
            Kind::RunRecord => "runrecords",
            Kind::GuardState => "guardstates",
            Kind::Approval => "approvals",
            Kind::IdempotencyKey => "idempotencykeys",
        }
    }

    /// The name used in corruption errors.
    fn table(self) -> &'static str {
        match self {
            Kind::Incident => "incidents.remedy.dev",
            Kind::RunRecord => "runrecords.remedy.dev",
            Kind::GuardState => "guardstates.remedy.dev",
            Kind::Approval => "approvals.remedy.dev",
            Kind::IdempotencyKey => "idempotencykeys.remedy.dev",
        }
    }

    fn resource(self) -> ApiResource {
        ApiResource {
            group: GROUP.into(),
            version: VERSION.into(),
            api_version: format!("{GROUP}/{VERSION}"),
            kind: self.name().into(),
            plural: self.plural().into(),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

type ObjectKey = (Kind, String);

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

/// An incident's timeline as of the last acknowledged commit.
#[derive(Debug, Clone, Default, PartialEq)]
struct Timeline {
    entries: Vec<TimelineEntry>,
    dropped: u64,
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

/// What an object should look like after a commit.
#[derive(Debug, Clone, PartialEq)]
struct Desired {
    kind: Kind,
    name: String,
    labels: BTreeMap<String, String>,
    spec: Option<Value>,
    status: Value,
}

impl Desired {
    fn key(&self) -> ObjectKey {
        (self.kind, self.name.clone())
    }
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
            .field("namespace", &self.api.namespace)
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
            api: ClusterApi { client, namespace: namespace.to_owned(), timeout: DEFAULT_CALL_TIMEOUT },
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
        self.api.timeout = timeout;
        self
    }

    /// The namespace holding the objects.
    pub fn namespace(&self) -> &str {
        &self.api.namespace
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
        timeline_from_status(&Fields { kind: Kind::Incident, name: &key.1 }, &current.status)
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
            Err(Refused { conflict: true, error }) => {
                if let Some(k) = mirror.objects.get_mut(&key) {
                    k.conflict = true;
                }
                Err(error)
            }
            Err(Refused { error, .. }) => {
                mirror.objects.remove(&key);
                Err(error)
            }
        }
    }

    async fn ensure_inner(&self, mirror: &mut Mirror, desired: &Desired) -> Result<(), Refused> {
        let key = desired.key();
        let (kind, name) = (desired.kind, desired.name.as_str());
        let mut current = match mirror.objects.get(&key) {
            Some(k) if k.conflict => {
                return Err(Refused::conflict(StoreError::Backend(format!(
                    "{kind} {name} in namespace {} was changed by another writer after this coordinator last \
                     saw it; it writes it no more until it loads the cluster's state again",
                    self.api.namespace
                ))));
            }
            Some(k) => Some(k.clone()),
            None => self.api.get(kind, name).await?.map(|o| known(&o, false)),
        };
        if let (Some(k), Some(spec)) = (&current, &desired.spec)
            && &k.spec != spec
        {
            if !k.provisional {
                return Err(Refused::other(StoreError::Backend(format!(
                    "{kind} {name} in namespace {} already exists and describes something else \
                     (spec {}, this coordinator has {spec}); refusing to overwrite it",
                    self.api.namespace, k.spec
                ))));
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
                            return Err(Refused::other(StoreError::Backend(format!(
                                "{kind} {name} in namespace {} exists and does not: deleted while being created",
                                self.api.namespace
                            ))));
                        };
                        let k = known(&object, false);
                        if desired.spec.as_ref().is_some_and(|s| &k.spec != s) {
                            return Err(Refused::other(StoreError::Backend(format!(
                                "{kind} {name} in namespace {} was created by another writer with a different spec \
                                 ({}); refusing to overwrite it",
                                self.api.namespace, k.spec
                            ))));
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

    fn list_findings(&self, query: &FindingQuery) -> Result<Vec<StoredFinding>, StoreError> {
        self.local.list_findings(query)
    }

    fn get_finding(&self, agent_id: &str, sequence: u64) -> Result<Option<StoredFinding>, StoreError> {
        self.local.get_finding(agent_id, sequence)
    }

    /// The local store's incidents: those of this replica's terms, and the
    /// open ones it found in the cluster when it took over.
    fn list_incidents(&self, include_resolved: bool, limit: usize) -> Result<Vec<Incident>, StoreError> {
        self.local.list_incidents(include_resolved, limit)
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
    fn list_audit(&self, after: u64, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        self.local.list_audit(after, limit)
    }
}

// ---- the API, with a timeout on every call -------------------------------

#[derive(Clone)]
struct ClusterApi {
    client: kube::Client,
    namespace: String,
    timeout: Duration,
}

/// A failed call, and whether the API refused it as a conflict (409).
#[derive(Debug)]
struct Refused {
    conflict: bool,
    error: StoreError,
}

impl Refused {
    fn conflict(error: StoreError) -> Refused {
        Refused { conflict: true, error }
    }

    fn other(error: StoreError) -> Refused {
        Refused { conflict: false, error }
    }
}

impl From<StoreError> for Refused {
    fn from(error: StoreError) -> Refused {
        Refused::other(error)
    }
}

impl From<Refused> for StoreError {
    fn from(refused: Refused) -> StoreError {
        refused.error
    }
}

enum Created {
    Made(Box<DynamicObject>),
    Exists,
}

impl ClusterApi {
    fn api(&self, kind: Kind) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.namespace, &kind.resource())
    }

    async fn call<T>(
        &self,
        what: impl FnOnce() -> String,
        fut: impl Future<Output = kube::Result<T>>,
    ) -> Result<T, StoreError> {
        self.write(what, fut).await.map_err(StoreError::from)
    }

    /// Like `call`, telling a conflict apart.
    async fn write<T>(
        &self,
        what: impl FnOnce() -> String,
        fut: impl Future<Output = kube::Result<T>>,
    ) -> Result<T, Refused> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Refused {
                conflict: matches!(&e, kube::Error::Api(status) if status.code == 409),
                error: StoreError::Backend(format!("{}: {}", what(), describe(&e, &self.namespace))),
            }),
            Err(_) => Err(Refused::other(StoreError::Backend(format!(
                "{}: no answer from the Kubernetes API within {:?}",
                what(),
                self.timeout
            )))),
        }
    }

    async fn get(&self, kind: Kind, name: &str) -> Result<Option<DynamicObject>, StoreError> {
        let api = self.api(kind);
        self.call(|| format!("cannot read {kind} {name} in namespace {}", self.namespace), api.get_opt(name)).await
    }

    async fn list(&self, kind: Kind, selector: &str) -> Result<Vec<DynamicObject>, StoreError> {
        let api = self.api(kind);
        let mut out = Vec::new();
        let mut params = ListParams::default().limit(LIST_PAGE);
        if !selector.is_empty() {
            params = params.labels(selector);
        }
        loop {
            let page = self
                .call(|| format!("cannot list {} in namespace {}", kind.plural(), self.namespace), api.list(&params))
                .await?;
            out.extend(page.items);
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => return Ok(out),
            }
        }
    }

    async fn create(&self, kind: Kind, object: &DynamicObject) -> Result<Created, StoreError> {
        let api = self.api(kind);
        let name = object.metadata.name.clone().unwrap_or_default();
        let params = PostParams { dry_run: false, field_manager: Some(FIELD_MANAGER.into()) };
        match tokio::time::timeout(self.timeout, api.create(&params, object)).await {
            Ok(Ok(made)) => Ok(Created::Made(Box::new(made))),
            Ok(Err(kube::Error::Api(status))) if status.code == 409 => Ok(Created::Exists),
            Ok(Err(e)) => Err(StoreError::Backend(format!(
                "cannot create {kind} {name} in namespace {}: {}",
                self.namespace,
                describe(&e, &self.namespace)
            ))),
            Err(_) => Err(StoreError::Backend(format!(
                "cannot create {kind} {name} in namespace {}: no answer from the Kubernetes API within {:?}",
                self.namespace, self.timeout
            ))),
        }
    }

    async fn replace_status(
        &self,
        kind: Kind,
        name: &str,
        resource_version: &str,
        status: &Value,
    ) -> Result<DynamicObject, Refused> {
        let api = self.api(kind);
        let mut object = DynamicObject::new(name, &kind.resource()).within(&self.namespace);
        object.metadata.resource_version = Some(resource_version.to_owned());
        object.data = json!({ "status": status });
        let params = PostParams { dry_run: false, field_manager: Some(FIELD_MANAGER.into()) };
        self.write(
            || format!("cannot write the status of {kind} {name} in namespace {}", self.namespace),
            api.replace_status(name, &params, &object),
        )
        .await
    }

    async fn set_labels(
        &self,
        kind: Kind,
        name: &str,
        resource_version: &str,
        old: &BTreeMap<String, String>,
        new: &BTreeMap<String, String>,
    ) -> Result<DynamicObject, Refused> {
        let api = self.api(kind);
        let mut labels = Map::new();
        for key in old.keys().filter(|k| !new.contains_key(*k)) {
            labels.insert(key.clone(), Value::Null);
        }
        for (k, v) in new {
            labels.insert(k.clone(), Value::String(v.clone()));
        }
        // The resourceVersion makes the patch conditional, like every other
        // write here.
        let patch = Patch::Merge(json!({ "metadata": { "labels": labels, "resourceVersion": resource_version } }));
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
        self.write(
            || format!("cannot label {kind} {name} in namespace {}", self.namespace),
            api.patch(name, &params, &patch),
        )
        .await
    }

    async fn delete(&self, kind: Kind, name: &str, resource_version: &str) -> Result<(), Refused> {
        let api = self.api(kind);
        let params = DeleteParams {
            preconditions: Some(Preconditions { resource_version: Some(resource_version.to_owned()), uid: None }),
            ..DeleteParams::default()
        };
        let deleted = async {
            match api.delete(name, &params).await {
                Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
                other => other.map(|_| ()),
            }
        };
        self.write(|| format!("cannot delete {kind} {name} in namespace {}", self.namespace), deleted).await
    }
}

/// An API error, with what usually causes it.
fn describe(e: &kube::Error, namespace: &str) -> String {
    match e {
        kube::Error::Api(status) if status.code == 404 => format!(
            "{} (404: is namespace {namespace} there, and are the remedy.dev CRDs of deploy/base/crds applied?)",
            status.message
        ),
        kube::Error::Api(status) if status.code == 409 => format!(
            "{} (409: another writer changed it since this coordinator read it; is another coordinator acting as \
             leader?)",
            status.message
        ),
        kube::Error::Api(status) => format!("{} ({} {})", status.message, status.code, status.reason),
        other => other.to_string(),
    }
}

fn object_name(object: &DynamicObject) -> String {
    object.metadata.name.clone().unwrap_or_default()
}

fn resource_version(object: &DynamicObject) -> String {
    object.metadata.resource_version.clone().unwrap_or_default()
}

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

/// The object to create: metadata and spec. Status is written separately:
/// the status subresource ignores it on create.
fn new_object(desired: &Desired) -> DynamicObject {
    let mut data = Map::new();
    if let Some(spec) = &desired.spec {
        data.insert("spec".into(), spec.clone());
    }
    DynamicObject {
        types: Some(kube::api::TypeMeta {
            api_version: format!("{GROUP}/{VERSION}"),
            kind: desired.kind.name().into(),
        }),
        metadata: ObjectMeta {
            name: Some(desired.name.clone()),
            labels: Some(desired.labels.clone()),
            ..ObjectMeta::default()
        },
        data: Value::Object(data),
    }
}

// ---- pure: what a batch touches, overlaying a load ----------------------

fn touches_cluster(batch: &WriteBatch) -> bool {
    !batch.incidents.is_empty()
        || !batch.timeline.is_empty()
        || batch.counters.is_some()
        || !batch.runs.is_empty()
        || batch.guard.is_some()
}

/// Incidents changed or given entries, in the batch's order.
fn touched_incidents(batch: &WriteBatch) -> Vec<IncidentId> {
    let mut seen = HashSet::new();
    batch
        .incidents
        .iter()
        .map(|i| i.id)
        .chain(batch.timeline.iter().map(|(id, _)| *id))
        .filter(|id| seen.insert(*id))
        .collect()
}

fn max_counters(a: Counters, b: Counters) -> Counters {
    Counters {
        next_incident: a.next_incident.max(b.next_incident),
        next_own_sequence: a.next_own_sequence.max(b.next_own_sequence),
    }
}

/// An incident as its object holds it.
#[derive(Debug, Clone, PartialEq)]
struct ClusterIncident {
    incident: Incident,
    timeline: Vec<TimelineEntry>,
    dropped: u64,
}

/// What the cluster holds that a new leader needs.
#[derive(Debug, Default)]
struct Snapshot {
    incidents: Vec<ClusterIncident>,
    runs: Vec<RunRecord>,
    /// Idempotency keys of those runs, by incident.
    keys: Vec<(IncidentId, Intent)>,
    guard: Option<GuardState>,
    counters: Counters,
}

/// `local` overlaid with the cluster's state, and what the local store must
/// import to agree. The cluster wins where both have something: each commit
/// reaches it after the local file, so a local copy that differs is either
/// stale (this replica led long ago) or was never acknowledged.
fn overlay(
    mut local: Loaded,
    snapshot: Snapshot,
    local_timelines: &HashMap<IncidentId, Vec<TimelineEntry>>,
) -> (Loaded, WriteBatch) {
    let mut import = WriteBatch::default();
    let mut open: BTreeMap<IncidentId, Incident> = local.open_incidents.drain(..).map(|i| (i.id, i)).collect();
    let mut highest = 0;
    for found in snapshot.incidents {
        let id = found.incident.id;
        highest = highest.max(id.0);
        if found.incident.state.is_closed() {
            open.remove(&id);
        } else {
            open.insert(id, found.incident.clone());
        }
        let empty = Vec::new();
        let have = local_timelines.get(&id).unwrap_or(&empty);
        import.timeline.extend(missing_entries(have, &found.timeline).into_iter().map(|e| (id, e)));
        import.incidents.push(found.incident);
    }

    let mut keys: BTreeMap<IncidentId, Vec<Intent>> = BTreeMap::new();
    for (id, intent) in snapshot.keys {
        keys.entry(id).or_default().push(intent);
    }
    let mut runs: BTreeMap<IncidentId, RunRecord> = local.runs.drain(..).map(|r| (r.incident_id, r)).collect();
    for mut run in snapshot.runs {
        let recorded = keys.remove(&run.incident_id).unwrap_or_default();
        merge_keys(&mut run, recorded);
        import.runs.push(run.clone());
        runs.insert(run.incident_id, run);
    }
    local.runs = runs.into_values().filter(|r| !r.status.is_finished() || open.contains_key(&r.incident_id)).collect();
    local.open_incidents = open.into_values().collect();

    if let Some(guard) = snapshot.guard {
        import.guard = Some(guard.clone());
        local.guard = Some(guard);
    }
    let mut counters = max_counters(local.counters, snapshot.counters);
    counters.next_incident = counters.next_incident.max(highest.saturating_add(1));
    if counters != local.counters {
        import.counters = Some(counters);
    }
    local.counters = counters;
    (local, import)
}

/// Adds to `run` the executions whose idempotency key was recorded but that
/// the run's own record does not list (the leader stopped between the two
/// writes): they may have run, so they come back as interrupted, never to
/// run again.
fn merge_keys(run: &mut RunRecord, keys: impl IntoIterator<Item = Intent>) {
    let mut extra: Vec<Intent> = keys.into_iter().filter(|k| run.intent(&k.key).is_none()).collect();
    extra.sort_by(|a, b| a.recorded_at.cmp(&b.recorded_at).then_with(|| a.key.cmp(&b.key)));
    run.intents.extend(extra);
}

/// The entries of `cluster` (the newest of a timeline) that `local` (a
/// possibly stale, possibly complete copy) lacks.
fn missing_entries(local: &[TimelineEntry], cluster: &[TimelineEntry]) -> Vec<TimelineEntry> {
    let Some(first) = cluster.first() else {
        return Vec::new();
    };
    let local: Vec<TimelineEntry> = local.iter().map(sanitize_entry).collect();
    for start in (0..local.len()).rev().filter(|&p| &local[p] == first) {
        let matched = local[start..].iter().zip(cluster).take_while(|(a, b)| a == b).count();
        if start + matched == local.len() {
            return cluster[matched..].to_vec();
        }
        if matched == cluster.len() {
            return Vec::new();
        }
    }
    cluster.to_vec()
}

/// `base` with `appended` added, cut to the newest `limit` entries and to
/// `max_bytes` of JSON, counting what was cut.
fn bounded(
    base: Timeline,
    appended: impl IntoIterator<Item = TimelineEntry>,
    limit: usize,
    max_bytes: usize,
) -> Timeline {
    let Timeline { mut entries, mut dropped } = base;
    entries.extend(appended.into_iter().map(|e| sanitize_entry(&e)));
    let over = entries.len().saturating_sub(limit);
    let mut cut = over;
    let mut bytes: usize = entries[over..].iter().map(entry_bytes).sum();
    while bytes > max_bytes && cut + 1 < entries.len() {
        bytes -= entry_bytes(&entries[cut]);
        cut += 1;
    }
    entries.drain(..cut);
    dropped = dropped.saturating_add(cut as u64);
    Timeline { entries, dropped }
}

fn entry_bytes(entry: &TimelineEntry) -> usize {
    entry.message.len() + entry.details.iter().map(|(k, v)| k.len() + v.len() + 8).sum::<usize>() + 64
}

// ---- pure: limits of the schemas ----------------------------------------

/// `text` cut to `max` characters (the schemas' maxLength counts
/// characters), marked as cut.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

const MESSAGE_MAX: usize = 2048;
const DETAILS_MAX: usize = 32;
const DETAILS_MORE: &str = "…";

/// An entry as the `Incident` schema accepts it: message and details within
/// their lengths, at most 32 details (the rest counted under `…`).
fn sanitize_entry(entry: &TimelineEntry) -> TimelineEntry {
    let mut details: BTreeMap<String, String> = BTreeMap::new();
    let total = entry.details.len();
    for (k, v) in &entry.details {
        if total > DETAILS_MAX && details.len() == DETAILS_MAX - 1 {
            details.insert(DETAILS_MORE.into(), format!("{} more details not kept", total - (DETAILS_MAX - 1)));
            break;
        }
        details.insert(k.clone(), clip(v, MESSAGE_MAX));
    }
    TimelineEntry { at: entry.at, kind: entry.kind, message: clip(&entry.message, MESSAGE_MAX), details }
}

// ---- pure: names ---------------------------------------------------------

/// `inc-000042` for INC-000042.
fn object_name_of(id: IncidentId) -> String {
    id.to_string().to_ascii_lowercase()
}

/// `inc-000042-<first 16 hex digits of sha256(key)>`, as the CRDs document
/// for approvals and idempotency keys: filing the same key twice is the
/// same name.
fn keyed_name(id: IncidentId, key: &str) -> String {
    let digest = sha256(key.as_bytes());
    let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{hex}", object_name_of(id))
}

fn labels(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
    out.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
    out
}

// ---- pure: times -----------------------------------------------------------

/// The last instant RFC 3339's four-digit years can write.
const LAST_RFC3339_MS: i64 = 253_402_300_799_999;

fn rfc3339(at: Timestamp, what: &str) -> Result<String, StoreError> {
    if (0..=LAST_RFC3339_MS).contains(&at.as_millis()) {
        Ok(at.to_string())
    } else {
        Err(StoreError::Backend(format!("{what}: {} ms is outside what RFC 3339 can write", at.as_millis())))
    }
}

// ---- pure: reading fields of an object -----------------------------------

struct Fields<'a> {
    kind: Kind,
    name: &'a str,
}

impl Fields<'_> {
    fn corrupt(&self, message: String) -> StoreError {
        StoreError::Corrupt { table: self.kind.table(), message: format!("{} {}: {message}", self.kind, self.name) }
    }

    fn value<'v>(&self, v: &'v Value, path: &str) -> Result<&'v Value, StoreError> {
        v.get(path.rsplit('.').next().unwrap_or(path))
            .filter(|v| !v.is_null())
            .ok_or_else(|| self.corrupt(format!("{path} is missing")))
    }

    fn str<'v>(&self, v: &'v Value, path: &str) -> Result<&'v str, StoreError> {
        self.value(v, path)?.as_str().ok_or_else(|| self.corrupt(format!("{path} is not a string")))
    }

    fn opt_str<'v>(&self, v: &'v Value, path: &str) -> Result<Option<&'v str>, StoreError> {
        match v.get(path.rsplit('.').next().unwrap_or(path)) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(self.corrupt(format!("{path} is not a string"))),
        }
    }

    fn u64(&self, v: &Value, path: &str) -> Result<u64, StoreError> {
        self.value(v, path)?.as_u64().ok_or_else(|| self.corrupt(format!("{path} is not a count")))
    }

    fn opt_u64(&self, v: &Value, path: &str) -> Result<Option<u64>, StoreError> {
        match v.get(path.rsplit('.').next().unwrap_or(path)) {
            None | Some(Value::Null) => Ok(None),
            Some(n) => n.as_u64().map(Some).ok_or_else(|| self.corrupt(format!("{path} is not a count"))),
        }
    }

    fn time(&self, v: &Value, path: &str) -> Result<Timestamp, StoreError> {
        let text = self.str(v, path)?;
        Timestamp::parse_rfc3339(text).ok_or_else(|| self.corrupt(format!("{path} `{text}` is not an RFC 3339 time")))
    }

    fn opt_time(&self, v: &Value, path: &str) -> Result<Option<Timestamp>, StoreError> {
        self.opt_str(v, path)?
            .map(|text| {
                Timestamp::parse_rfc3339(text)
                    .ok_or_else(|| self.corrupt(format!("{path} `{text}` is not an RFC 3339 time")))
            })
            .transpose()
    }

    fn array<'v>(&self, v: &'v Value, path: &str) -> Result<&'v [Value], StoreError> {
        match v.get(path.rsplit('.').next().unwrap_or(path)) {
            None | Some(Value::Null) => Ok(&[]),
            Some(Value::Array(items)) => Ok(items),
            Some(_) => Err(self.corrupt(format!("{path} is not a list"))),
        }
    }

    /// A snake_case enum value through the domain's own serde names.
    fn parse<T: serde::de::DeserializeOwned>(&self, v: &Value, path: &str) -> Result<T, StoreError> {
        let raw = self.value(v, path)?;
        serde_json::from_value(raw.clone()).map_err(|e| self.corrupt(format!("{path} {raw}: {e}")))
    }

    fn incident_id(&self, v: &Value, path: &str) -> Result<IncidentId, StoreError> {
        let text = self.str(v, path)?;
        text.parse().map_err(|e: String| self.corrupt(format!("{path}: {e}")))
    }
}

fn fields(kind: Kind, object: &DynamicObject) -> (Fields<'_>, &Value, &Value) {
    let name = object.metadata.name.as_deref().unwrap_or("<unnamed>");
    let spec = object.data.get("spec").unwrap_or(&Value::Null);
    let status = object.data.get("status").unwrap_or(&Value::Null);
    (Fields { kind, name }, spec, status)
}

fn enum_str<T: serde::Serialize>(value: &T) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

// ---- pure: Incident --------------------------------------------------------

fn condition_to_json(key: &ConditionKey) -> Value {
    let (kind, name) = match &key.kind {
        ConditionKind::Finding(kind) => ("finding", kind.as_str().to_owned()),
        ConditionKind::Alert(name) => ("alert", name.clone()),
        ConditionKind::Runbook(id) => ("runbook", id.clone()),
    };
    json!({ "kind": kind, "name": clip(&name, 253), "target": clip(&key.target, 1024) })
}

fn incident_spec(incident: &Incident) -> Result<Value, StoreError> {
    Ok(json!({
        "id": incident.id.to_string(),
        "key": condition_to_json(&incident.key),
        "openedAt": rfc3339(incident.opened_at, "openedAt")?,
    }))
}

fn entry_to_json(entry: &TimelineEntry) -> Result<Value, StoreError> {
    let mut out = json!({
        "at": rfc3339(entry.at, "timeline entry")?,
        "kind": entry.kind.as_str(),
        "message": entry.message,
    });
    if !entry.details.is_empty() {
        out["details"] = json!(entry.details);
    }
    Ok(out)
}

fn incident_desired(incident: &Incident, timeline: &Timeline) -> Result<Desired, StoreError> {
    let mut status = json!({
        "state": enum_str(&incident.state),
        "severity": incident.severity.as_str(),
        "summary": clip(&incident.summary, 4096),
        "updatedAt": rfc3339(incident.updated_at, "updatedAt")?,
        "findingCount": incident.finding_count,
        "activeSources": incident
            .active_sources
            .iter()
            .take(1024)
            .map(|(source, expires)| {
                let mut s = json!({ "source": clip(source, 253) });
                if let Some(at) = expires {
                    s["expiresAt"] = json!(rfc3339(*at, "activeSources.expiresAt")?);
                }
                Ok(s)
            })
            .collect::<Result<Vec<_>, StoreError>>()?,
        "timeline": timeline.entries.iter().map(entry_to_json).collect::<Result<Vec<_>, _>>()?,
        "timelineDropped": timeline.dropped,
    });
    if let Some(runbook) = &incident.runbook {
        status["runbook"] = json!(clip(runbook, 64));
    }
    if let Some(ms) = incident.mttr_target_ms {
        // The schema counts whole seconds; a sub-second target rounds up.
        status["mttrTargetSeconds"] = json!(ms.div_ceil(1000).max(1));
    }
    if let Some(mttr) = &incident.mttr_status {
        status["mttrStatus"] = json!(mttr);
    }
    if let Some(at) = incident.resolved_at {
        status["resolvedAt"] = json!(rfc3339(at, "resolvedAt")?);
    }
    if let Some(priority) = incident.priority {
        status["priority"] = json!(priority.as_str());
    }
    if !incident.tags.is_empty() {
        status["tags"] = json!(incident.tags.iter().take(32).map(|t| clip(t, 63)).collect::<Vec<_>>());
    }
    if let Some(at) = incident.acknowledged_at {
        status["acknowledgedAt"] = json!(rfc3339(at, "acknowledgedAt")?);
    }
    if let Some(by) = &incident.acknowledged_by {
        status["acknowledgedBy"] = json!(clip(by, 253));
    }
    if let Some(progress) = &incident.escalation {
        status["escalation"] = serde_json::to_value(progress)
            .map_err(|e| StoreError::Corrupt { table: Kind::Incident.table(), message: format!("escalation: {e}") })?;
    }
    Ok(Desired {
        kind: Kind::Incident,
        name: object_name_of(incident.id),
        labels: labels(&[(OPEN_LABEL, (!incident.state.is_closed()).to_string())]),
        spec: Some(incident_spec(incident)?),
        status,
    })
}

fn incident_from_object(object: &DynamicObject) -> Result<ClusterIncident, StoreError> {
    let (f, spec, status) = fields(Kind::Incident, object);
    let key = f.value(spec, "spec.key")?;
    let name = f.str(key, "spec.key.name")?.to_owned();
    let kind = match f.str(key, "spec.key.kind")? {
        "finding" => ConditionKind::Finding(
            name.parse::<FindingKind>().map_err(|e| f.corrupt(format!("spec.key.name: unknown finding kind {e:?}")))?,
        ),
        "alert" => ConditionKind::Alert(name),
        "runbook" => ConditionKind::Runbook(name),
        other => return Err(f.corrupt(format!("spec.key.kind `{other}` is not finding, alert or runbook"))),
    };
    let mut active_sources = BTreeMap::new();
    for s in f.array(status, "status.activeSources")? {
        active_sources.insert(
            f.str(s, "status.activeSources.source")?.to_owned(),
            f.opt_time(s, "status.activeSources.expiresAt")?,
        );
    }
    let timeline = timeline_from_status(&f, status)?;
    let incident = Incident {
        id: f.incident_id(spec, "spec.id")?,
        key: ConditionKey { kind, target: f.str(key, "spec.key.target").unwrap_or_default().to_owned() },
        severity: f.parse::<Severity>(status, "status.severity")?,
        state: f.parse::<IncidentState>(status, "status.state")?,
        summary: f.opt_str(status, "status.summary")?.unwrap_or_default().to_owned(),
        opened_at: f.time(spec, "spec.openedAt")?,
        updated_at: f.time(status, "status.updatedAt")?,
        resolved_at: f.opt_time(status, "status.resolvedAt")?,
        finding_count: f.opt_u64(status, "status.findingCount")?.unwrap_or(0),
        active_sources,
        runbook: f.opt_str(status, "status.runbook")?.map(str::to_owned),
        mttr_target_ms: f.opt_u64(status, "status.mttrTargetSeconds")?.map(|s| s.saturating_mul(1000)),
        mttr_status: f.opt_str(status, "status.mttrStatus")?.map(str::to_owned),
        priority: match f.opt_str(status, "status.priority")? {
            Some(_) => Some(f.parse(status, "status.priority")?),
            None => None,
        },
        tags: f
            .array(status, "status.tags")?
            .iter()
            .map(|t| {
                t.as_str().map(str::to_owned).ok_or_else(|| f.corrupt(format!("status.tags: {t} is not a string")))
            })
            .collect::<Result<_, _>>()?,
        acknowledged_at: f.opt_time(status, "status.acknowledgedAt")?,
        acknowledged_by: f.opt_str(status, "status.acknowledgedBy")?.map(str::to_owned),
        escalation: match status.get("escalation") {
            None | Some(Value::Null) => None,
            Some(_) => Some(f.parse(status, "status.escalation")?),
        },
    };
    Ok(ClusterIncident { incident, timeline: timeline.entries, dropped: timeline.dropped })
}

fn timeline_from_status(f: &Fields<'_>, status: &Value) -> Result<Timeline, StoreError> {
    let mut entries = Vec::new();
    for e in f.array(status, "status.timeline")? {
        let details = match e.get("details") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(d) => {
                serde_json::from_value(d.clone()).map_err(|err| f.corrupt(format!("status.timeline.details: {err}")))?
            }
        };
        entries.push(TimelineEntry {
            at: f.time(e, "status.timeline.at")?,
            kind: f.parse::<EntryKind>(e, "status.timeline.kind")?,
            message: f.str(e, "status.timeline.message")?.to_owned(),
            details,
        });
    }
    let dropped = f.opt_u64(status, "status.timelineDropped")?.unwrap_or(0);
    Ok(Timeline { entries, dropped })
}

// ---- pure: RunRecord and IdempotencyKey -----------------------------------

const INTENTS_MAX: usize = 512;
const FAILURES_MAX: usize = 256;

fn run_desired(run: &RunRecord) -> Result<Desired, StoreError> {
    if run.intents.len() > INTENTS_MAX {
        return Err(StoreError::Backend(format!(
            "the run of {} has {} step executions, more than a RunRecord holds ({INTENTS_MAX})",
            run.incident_id,
            run.intents.len()
        )));
    }
    let next_step = i32::try_from(run.next_step).map_err(|_| {
        StoreError::Backend(format!("the run of {}: next step {} is too large", run.incident_id, run.next_step))
    })?;
    let intents = run
        .intents
        .iter()
        .map(|i| {
            let mut out = json!({
                "key": i.key,
                "stepId": i.step_id,
                "recordedAt": rfc3339(i.recorded_at, "intents.recordedAt")?,
            });
            if let Some(outcome) = &i.outcome {
                out["outcome"] = json!(clip(outcome, 64));
            }
            Ok(out)
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    let skip = run.failures.len().saturating_sub(FAILURES_MAX);
    let failures: Vec<String> = run.failures[skip..].iter().map(|f| clip(f, 2048)).collect();
    let context = serde_json::to_value(&run.context)
        .map_err(|e| StoreError::Backend(format!("the run of {}: its context: {e}", run.incident_id)))?;
    Ok(Desired {
        kind: Kind::RunRecord,
        name: object_name_of(run.incident_id),
        labels: labels(&[
            (FINISHED_LABEL, run.status.is_finished().to_string()),
            (INCIDENT_LABEL, object_name_of(run.incident_id)),
        ]),
        spec: Some(json!({
            "incidentId": run.incident_id.to_string(),
            "runbookId": run.runbook_id,
            "mode": run.mode.as_str(),
            "startedBy": clip(&run.started_by, 512),
            "requestedBy": run.requested_by,
            "createdAt": rfc3339(run.created_at, "createdAt")?,
        })),
        status: json!({
            "phase": run.status.as_str(),
            "nextStep": next_step,
            "attempt": run.attempt,
            "updatedAt": rfc3339(run.updated_at, "updatedAt")?,
            "intents": intents,
            "failures": failures,
            "context": context,
        }),
    })
}

fn run_from_object(object: &DynamicObject) -> Result<RunRecord, StoreError> {
    let (f, spec, status) = fields(Kind::RunRecord, object);
    let mut intents = Vec::new();
    for i in f.array(status, "status.intents")? {
        intents.push(Intent {
            key: f.str(i, "status.intents.key")?.to_owned(),
            step_id: f.str(i, "status.intents.stepId")?.to_owned(),
            recorded_at: f.time(i, "status.intents.recordedAt")?,
            outcome: f.opt_str(i, "status.intents.outcome")?.map(str::to_owned),
        });
    }
    let failures = f
        .array(status, "status.failures")?
        .iter()
        .map(|v| v.as_str().map(str::to_owned).ok_or_else(|| f.corrupt("status.failures holds a non-string".into())))
        .collect::<Result<Vec<_>, _>>()?;
    let context = match status.get("context") {
        None | Some(Value::Null) => Default::default(),
        Some(c) => serde_json::from_value(c.clone()).map_err(|e| f.corrupt(format!("status.context: {e}")))?,
    };
    let attempt = f.u64(status, "status.attempt")?;
    let next_step = f.u64(status, "status.nextStep")?;
    Ok(RunRecord {
        incident_id: f.incident_id(spec, "spec.incidentId")?,
        runbook_id: f.str(spec, "spec.runbookId")?.to_owned(),
        mode: f.parse(spec, "spec.mode")?,
        started_by: f.opt_str(spec, "spec.startedBy")?.unwrap_or_default().to_owned(),
        requested_by: f.opt_str(spec, "spec.requestedBy")?.map(str::to_owned),
        context,
        next_step: usize::try_from(next_step).map_err(|_| f.corrupt("status.nextStep is too large".into()))?,
        attempt: u32::try_from(attempt).map_err(|_| f.corrupt("status.attempt is too large".into()))?,
        status: f.parse::<RunStatus>(status, "status.phase")?,
        created_at: f.time(spec, "spec.createdAt")?,
        updated_at: f.time(status, "status.updatedAt")?,
        intents,
        failures,
    })
}

/// `INC-000042/restart_api#3` -> 3.
fn attempt_of(key: &str) -> Option<u32> {
    key.rsplit_once('#').and_then(|(_, n)| n.parse().ok())
}

fn key_desired(run: &RunRecord, intent: &Intent) -> Result<Desired, StoreError> {
    let attempt = attempt_of(&intent.key)
        .ok_or_else(|| StoreError::Backend(format!("idempotency key `{}` does not end in #<attempt>", intent.key)))?;
    // No status at all while it runs: what a fresh object has, so recording
    // a key is one call.
    let status = match &intent.outcome {
        Some(outcome) => json!({ "outcome": clip(outcome, 64) }),
        None => Value::Null,
    };
    Ok(Desired {
        kind: Kind::IdempotencyKey,
        name: keyed_name(run.incident_id, &intent.key),
        labels: labels(&[(INCIDENT_LABEL, object_name_of(run.incident_id))]),
        spec: Some(json!({
            "key": intent.key,
            "incidentId": run.incident_id.to_string(),
            "runbookId": run.runbook_id,
            "stepId": intent.step_id,
            "attempt": attempt,
            "mode": run.mode.as_str(),
            "recordedAt": rfc3339(intent.recorded_at, "recordedAt")?,
        })),
        status,
    })
}

fn intent_from_key_object(object: &DynamicObject) -> Result<(IncidentId, Intent), StoreError> {
    let (f, spec, status) = fields(Kind::IdempotencyKey, object);
    Ok((
        f.incident_id(spec, "spec.incidentId")?,
        Intent {
            key: f.str(spec, "spec.key")?.to_owned(),
            step_id: f.str(spec, "spec.stepId")?.to_owned(),
            recorded_at: f.time(spec, "spec.recordedAt")?,
            outcome: f.opt_str(status, "status.outcome")?.map(str::to_owned),
        },
    ))
}

// ---- pure: GuardState, Counters and Approval -------------------------------
//
// `GuardState` keeps its fields private and changes only through its
// methods; its serde form (snake_case, Unix ms) is the stable crossing, so
// the conversion goes through it.

const ACTIONS_MAX: usize = 2000;
const FAILURES_RECORD_MAX: usize = 1000;

fn guard_desired(guard: Option<&GuardState>, counters: Counters) -> Result<Desired, StoreError> {
    let domain = match guard {
        Some(g) => serde_json::to_value(g).map_err(|e| StoreError::Backend(format!("the rails' memory: {e}")))?,
        None => json!({}),
    };
    let f = Fields { kind: Kind::GuardState, name: GUARD_NAME };
    let ms = |v: &Value, what: &str| -> Result<String, StoreError> {
        let at = v.as_i64().ok_or_else(|| StoreError::Backend(format!("the rails' memory: {what} is not a time")))?;
        rfc3339(Timestamp::from_millis(at), what)
    };
    let mut status = Map::new();
    if let Some(p) = domain.get("paused").filter(|p| !p.is_null()) {
        status.insert(
            "paused".into(),
            json!({
                "by": clip(f.str(p, "by")?, 253),
                "since": ms(&p["since"], "paused.since")?,
                "reason": clip(f.str(p, "reason")?, 1024),
            }),
        );
    }
    let actions = f.array(&domain, "actions")?;
    if actions.len() > ACTIONS_MAX {
        return Err(StoreError::Backend(format!(
            "the rails remember {} actions, more than a GuardState holds ({ACTIONS_MAX}); shorten the policy's \
             windows so fewer actions count at once",
            actions.len()
        )));
    }
    let mut out_actions = Vec::with_capacity(actions.len());
    for a in actions {
        let mut item = json!({
            "at": ms(&a["at"], "actions.at")?,
            "runbookId": f.str(a, "runbook_id")?,
            "incidentId": IncidentId(f.u64(a, "incident_id")?).to_string(),
            "stepId": f.str(a, "step_id")?,
            "attempt": f.u64(a, "attempt")?,
            "actionKind": f.str(a, "action_kind")?,
            "targets": a.get("targets").cloned().unwrap_or_else(|| json!([])),
            "mode": f.str(a, "mode")?,
        });
        if let Some(pool) = f.opt_str(a, "pool")? {
            item["pool"] = json!(pool);
        }
        out_actions.push(item);
    }
    let failures = f.array(&domain, "failures")?;
    let skip = failures.len().saturating_sub(FAILURES_RECORD_MAX);
    let mut out_failures = Vec::new();
    for x in &failures[skip..] {
        out_failures.push(json!({
            "at": ms(&x["at"], "failures.at")?,
            "runbookId": f.str(x, "runbook_id")?,
            "actionKind": f.str(x, "action_kind")?,
            "reason": clip(f.str(x, "reason")?, 1024),
        }));
    }
    let mut breakers = Vec::new();
    if let Some(map) = domain.get("breakers").and_then(Value::as_object) {
        for (scope, b) in map {
            breakers.push(json!({
                "scope": scope,
                "since": ms(&b["since"], "breakers.since")?,
                "reason": clip(f.str(b, "reason")?, 1024),
            }));
        }
    }
    let mut resets = Vec::new();
    if let Some(map) = domain.get("breaker_resets").and_then(Value::as_object) {
        for (scope, at) in map {
            resets.push(json!({ "scope": scope, "at": ms(at, "breakerResets.at")? }));
        }
    }
    // Without memory to keep, only the counters: read back, it is no memory
    // either, rather than an empty one.
    if guard.is_some() {
        status.insert("actions".into(), Value::Array(out_actions));
        status.insert("failures".into(), Value::Array(out_failures));
        status.insert("breakers".into(), Value::Array(breakers));
        status.insert("breakerResets".into(), Value::Array(resets));
    }
    status.insert(
        "counters".into(),
        json!({ "nextIncident": counters.next_incident, "nextOwnSequence": counters.next_own_sequence }),
    );
    Ok(Desired {
        kind: Kind::GuardState,
        name: GUARD_NAME.into(),
        labels: labels(&[]),
        spec: None,
        status: Value::Object(status),
    })
}

/// The rails' memory and counters from a `GuardState` status and the
/// `Approval` objects (already in the domain's serde form). `None` when the
/// status holds no memory at all.
fn guard_from_status(status: &Value, approvals: Vec<Value>) -> Result<(Option<GuardState>, Counters), StoreError> {
    let f = Fields { kind: Kind::GuardState, name: GUARD_NAME };
    let counters = match status.get("counters").filter(|c| !c.is_null()) {
        Some(c) => Counters {
            next_incident: f.opt_u64(c, "status.counters.nextIncident")?.unwrap_or(0),
            next_own_sequence: f.opt_u64(c, "status.counters.nextOwnSequence")?.unwrap_or(0),
        },
        None => Counters::default(),
    };
    let has_memory = ["paused", "actions", "failures", "breakers", "breakerResets"]
        .iter()
        .any(|k| status.get(*k).is_some_and(|v| !v.is_null()));
    if !has_memory && approvals.is_empty() {
        return Ok((None, counters));
    }
    let ms = |v: &Value, path: &str| -> Result<i64, StoreError> { Ok(f.time(v, path)?.as_millis()) };
    let mut domain = Map::new();
    if let Some(p) = status.get("paused").filter(|p| !p.is_null()) {
        domain.insert(
            "paused".into(),
            json!({
                "by": f.str(p, "status.paused.by")?,
                "since": ms(p, "status.paused.since")?,
                "reason": f.str(p, "status.paused.reason")?,
            }),
        );
    }
    let mut actions = Vec::new();
    for a in f.array(status, "status.actions")? {
        actions.push(json!({
            "at": ms(a, "status.actions.at")?,
            "runbook_id": f.str(a, "status.actions.runbookId")?,
            "incident_id": f.incident_id(a, "status.actions.incidentId")?.0,
            "step_id": f.str(a, "status.actions.stepId")?,
            "attempt": f.u64(a, "status.actions.attempt")?,
            "action_kind": f.str(a, "status.actions.actionKind")?,
            "targets": a.get("targets").cloned().unwrap_or_else(|| json!([])),
            "pool": f.opt_str(a, "status.actions.pool")?,
            "mode": f.str(a, "status.actions.mode")?,
        }));
    }
    domain.insert("actions".into(), Value::Array(actions));
    let mut failures = Vec::new();
    for x in f.array(status, "status.failures")? {
        failures.push(json!({
            "at": ms(x, "status.failures.at")?,
            "runbook_id": f.str(x, "status.failures.runbookId")?,
            "action_kind": f.str(x, "status.failures.actionKind")?,
            "reason": f.str(x, "status.failures.reason")?,
        }));
    }
    domain.insert("failures".into(), Value::Array(failures));
    let mut breakers = Map::new();
    for b in f.array(status, "status.breakers")? {
        breakers.insert(
            f.str(b, "status.breakers.scope")?.to_owned(),
            json!({ "since": ms(b, "status.breakers.since")?, "reason": f.str(b, "status.breakers.reason")? }),
        );
    }
    domain.insert("breakers".into(), Value::Object(breakers));
    let mut resets = Map::new();
    for r in f.array(status, "status.breakerResets")? {
        resets.insert(f.str(r, "status.breakerResets.scope")?.to_owned(), json!(ms(r, "status.breakerResets.at")?));
    }
    domain.insert("breaker_resets".into(), Value::Object(resets));
    domain.insert("approvals".into(), Value::Array(approvals));
    let guard = serde_json::from_value(Value::Object(domain)).map_err(|e| f.corrupt(format!("status: {e}")))?;
    Ok((Some(guard), counters))
}

/// `guard` (or an empty memory) holding exactly `approvals`.
fn guard_with_approvals(guard: Option<&GuardState>, approvals: Vec<Value>) -> Result<GuardState, StoreError> {
    let mut domain = match guard {
        Some(g) => serde_json::to_value(g).map_err(|e| StoreError::Backend(format!("the rails' memory: {e}")))?,
        None => json!({}),
    };
    domain["approvals"] = Value::Array(approvals);
    serde_json::from_value(domain)
        .map_err(|e| StoreError::Corrupt { table: Kind::Approval.table(), message: e.to_string() })
}

fn approvals_desired(guard: &GuardState) -> Result<Vec<Desired>, StoreError> {
    let domain = serde_json::to_value(guard).map_err(|e| StoreError::Backend(format!("the rails' memory: {e}")))?;
    let f = Fields { kind: Kind::Approval, name: "-" };
    let mut out = Vec::new();
    for (approval, a) in guard.approvals().iter().zip(f.array(&domain, "approvals")?) {
        let id = approval.key.incident_id;
        let reason = a.get("reason").cloned().unwrap_or_else(|| json!({ "why": "runbook" }));
        let answer = a.get("status").cloned().unwrap_or_else(|| json!({ "status": "pending" }));
        let mut status = json!({ "status": f.str(&answer, "status.status")? });
        for (from, to) in [("by", "by"), ("reason", "reason")] {
            if let Some(v) = f.opt_str(&answer, from)? {
                status[to] = json!(clip(v, if to == "by" { 253 } else { 4096 }));
            }
        }
        for (from, to) in [("at", "at"), ("valid_until", "validUntil")] {
            if let Some(v) = answer.get(from).and_then(Value::as_i64) {
                status[to] = json!(rfc3339(Timestamp::from_millis(v), to)?);
            }
        }
        out.push(Desired {
            kind: Kind::Approval,
            name: keyed_name(id, &approval.key.to_string()),
            labels: labels(&[(INCIDENT_LABEL, object_name_of(id))]),
            spec: Some(json!({
                "incidentId": id.to_string(),
                "stepId": approval.key.step_id,
                "attempt": approval.key.attempt,
                "runbookId": approval.runbook_id,
                "action": clip(&approval.action, 4096),
                "reason": reason,
                "requestedAt": rfc3339(approval.requested_at, "requestedAt")?,
                "expiresAt": rfc3339(approval.expires_at, "expiresAt")?,
            })),
            status,
        });
    }
    Ok(out)
}

/// An `Approval` object in the domain's serde form (`guard::Approval`).
fn approval_from_object(object: &DynamicObject) -> Result<Value, StoreError> {
    let (f, spec, status) = fields(Kind::Approval, object);
    let ms = |v: &Value, path: &str| -> Result<i64, StoreError> { Ok(f.time(v, path)?.as_millis()) };
    let answer = match f.opt_str(status, "status.status")?.unwrap_or("pending") {
        "pending" => json!({ "status": "pending" }),
        "granted" => json!({
            "status": "granted",
            "by": f.str(status, "status.by")?,
            "at": ms(status, "status.at")?,
            "valid_until": ms(status, "status.validUntil")?,
        }),
        "denied" => json!({
            "status": "denied",
            "by": f.str(status, "status.by")?,
            "at": ms(status, "status.at")?,
            "reason": f.opt_str(status, "status.reason")?.unwrap_or_default(),
        }),
        other => return Err(f.corrupt(format!("status.status `{other}` is not pending, granted or denied"))),
    };
    Ok(json!({
        "key": {
            "incident_id": f.incident_id(spec, "spec.incidentId")?.0,
            "step_id": f.str(spec, "spec.stepId")?,
            "attempt": f.u64(spec, "spec.attempt")?,
        },
        "runbook_id": f.str(spec, "spec.runbookId")?,
        "action": f.str(spec, "spec.action")?,
        "reason": f.value(spec, "spec.reason")?.clone(),
        "requested_at": ms(spec, "spec.requestedAt")?,
        "expires_at": ms(spec, "spec.expiresAt")?,
        "status": answer,
    }))
}

// ---- pure: SHA-256, for object names derived from keys ---------------------

const SHA256_K: [u32; 64] = [
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98,
    0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8,
    0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819,
    0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
    0xc67178f2,
];

/// SHA-256 (FIPS 180-4). Names only, never security: keys are short, and
/// the coordinator's dependencies carry no hash crate of their own.
fn sha256(data: &[u8]) -> [u8; 32] {
    let mut h: [u32; 8] =
        [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];
    let mut message = data.to_vec();
    let bits = (data.len() as u64).wrapping_mul(8);
    message.push(0x80);
    while message.len() % 64 != 56 {
        message.push(0);
    }
    message.extend_from_slice(&bits.to_be_bytes());
    for block in message.chunks_exact(64) {
        let mut w = [0u32; 64];
        for (i, word) in block.chunks_exact(4).enumerate() {
            w[i] = u32::from_be_bytes([word[0], word[1], word[2], word[3]]);
        }
        for i in 16..64 {
            let s0 = w[i - 15].rotate_right(7) ^ w[i - 15].rotate_right(18) ^ (w[i - 15] >> 3);
            let s1 = w[i - 2].rotate_right(17) ^ w[i - 2].rotate_right(19) ^ (w[i - 2] >> 10);
            w[i] = w[i - 16].wrapping_add(s0).wrapping_add(w[i - 7]).wrapping_add(s1);
        }
        let [mut a, mut b, mut c, mut d, mut e, mut f, mut g, mut hh] = h;
        for i in 0..64 {
            let s1 = e.rotate_right(6) ^ e.rotate_right(11) ^ e.rotate_right(25);
            let ch = (e & f) ^ (!e & g);
            let t1 = hh.wrapping_add(s1).wrapping_add(ch).wrapping_add(SHA256_K[i]).wrapping_add(w[i]);
            let s0 = a.rotate_right(2) ^ a.rotate_right(13) ^ a.rotate_right(22);
            let maj = (a & b) ^ (a & c) ^ (b & c);
            let t2 = s0.wrapping_add(maj);
            hh = g;
            g = f;
            f = e;
            e = d.wrapping_add(t1);
            d = c;
            c = b;
            b = a;
            a = t1.wrapping_add(t2);
        }
        for (x, y) in h.iter_mut().zip([a, b, c, d, e, f, g, hh]) {
            *x = x.wrapping_add(y);
        }
    }
    let mut out = [0u8; 32];
    for (chunk, word) in out.chunks_exact_mut(4).zip(h) {
        chunk.copy_from_slice(&word.to_be_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use remedy_shared::guard::Mode;

    use super::*;

    fn at(ms: i64) -> Timestamp {
        Timestamp::from_millis(1_700_000_000_000 + ms)
    }

    /// The object as the API server returns it after `desired` was written.
    fn stored(desired: &Desired) -> DynamicObject {
        let mut data = Map::new();
        if let Some(spec) = &desired.spec {
            data.insert("spec".into(), spec.clone());
        }
        data.insert("status".into(), desired.status.clone());
        let mut object = new_object(desired);
        object.data = Value::Object(data);
        object.metadata.resource_version = Some("7".into());
        object
    }

    fn entry(n: i64, message: &str) -> TimelineEntry {
        TimelineEntry { at: at(n), kind: EntryKind::Decision, message: message.into(), details: BTreeMap::new() }
    }

    fn incident(id: u64, state: IncidentState) -> Incident {
        Incident {
            id: IncidentId(id),
            key: ConditionKey {
                kind: ConditionKind::Finding(FindingKind::DiskUsageHigh),
                target: "mount/n1:/var".into(),
            },
            severity: Severity::Critical,
            state,
            summary: "disk 97%".into(),
            opened_at: at(0),
            updated_at: at(5),
            resolved_at: state.is_closed().then(|| at(9)),
            finding_count: 3,
            active_sources: [("agent-a".to_owned(), Some(at(60_000))), ("agent-b".to_owned(), None)].into(),
            runbook: Some("P2-001".into()),
            mttr_target_ms: Some(900_000),
            mttr_status: Some("at_risk".into()),
            priority: Some(remedy_shared::runbook::Priority::P2),
            tags: vec!["total_outage".into()],
            acknowledged_at: Some(at(3)),
            acknowledged_by: Some("user:alice".into()),
            escalation: None,
        }
    }

    fn run(id: u64) -> RunRecord {
        let mut context = remedy_shared::runbook::TemplateContext::default();
        context.incident.id = IncidentId(id).to_string();
        context.params.insert("namespace".into(), "shop".into());
        context.steps.insert("health".into(), json!({ "ok": false, "status": 503, "nested": { "list": [1, "two"] } }));
        RunRecord {
            incident_id: IncidentId(id),
            runbook_id: "P2-001".into(),
            mode: Mode::Live,
            started_by: "finding disk_usage_high".into(),
            requested_by: Some("user:ada".into()),
            context,
            next_step: 2,
            attempt: 1,
            status: RunStatus::Running,
            created_at: at(1),
            updated_at: at(4),
            intents: vec![
                Intent {
                    key: format!("{}/snapshot#1", IncidentId(id)),
                    step_id: "snapshot".into(),
                    recorded_at: at(2),
                    outcome: Some("succeeded".into()),
                },
                Intent {
                    key: format!("{}/cleanup#1", IncidentId(id)),
                    step_id: "cleanup".into(),
                    recorded_at: at(3),
                    outcome: None,
                },
            ],
            failures: vec!["probe: 503".into()],
        }
    }

    /// A guard state in the domain's serde form: its fields are private.
    fn guard() -> GuardState {
        serde_json::from_value(json!({
            "paused": { "by": "alice", "since": at(1).as_millis(), "reason": "change freeze" },
            "actions": [{
                "at": at(2).as_millis(), "runbook_id": "P2-001", "incident_id": 7, "step_id": "cleanup",
                "attempt": 1, "action_kind": "log_cleanup", "targets": ["node/n1"], "pool": "nodes", "mode": "live"
            }, {
                "at": at(3).as_millis(), "runbook_id": "P2-001", "incident_id": 7, "step_id": "scale",
                "attempt": 1, "action_kind": "scale", "targets": [], "pool": null, "mode": "shadow"
            }],
            "failures": [{ "at": at(3).as_millis(), "runbook_id": "P2-001", "action_kind": "scale", "reason": "409" }],
            "breakers": { "runbook/P2-001": { "since": at(4).as_millis(), "reason": "3 failures" } },
            "breaker_resets": { "global": at(0).as_millis() },
            "approvals": [{
                "key": { "incident_id": 7, "step_id": "failover", "attempt": 1 },
                "runbook_id": "P0-002", "action": "pg_failover db-0 -> db-1",
                "reason": { "why": "action_kind", "kind": "pg_failover" },
                "requested_at": at(5).as_millis(), "expires_at": at(305_000).as_millis(),
                "status": { "status": "granted", "by": "bob", "at": at(6).as_millis(),
                            "valid_until": at(906_000).as_millis() }
            }, {
                "key": { "incident_id": 7, "step_id": "block", "attempt": 2 },
                "runbook_id": "P1-003", "action": "block_ip 10.0.0.0/8",
                "reason": { "why": "wide_block", "network": "10.0.0.0/8" },
                "requested_at": at(5).as_millis(), "expires_at": at(305_000).as_millis(),
                "status": { "status": "pending" }
            }]
        }))
        .expect("a guard state")
    }

    #[test]
    fn sha256_matches_the_standard_vectors() {
        let hex = |d: [u8; 32]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        assert_eq!(hex(sha256(b"")), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(hex(sha256(b"abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(
            hex(sha256(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        let million = vec![b'a'; 1_000_000];
        assert_eq!(hex(sha256(&million)), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    }

    #[test]
    fn names_derived_from_keys_stay_what_earlier_releases_wrote() {
        // Pinned with `echo -n KEY | sha256sum`: a new leader must find the
        // idempotency keys and approvals an older coordinator named.
        assert_eq!(keyed_name(IncidentId(42), "INC-000042/restart_api#1"), "inc-000042-694c46ebe70eceb3");
        let approvals = approvals_desired(&guard()).expect("converts");
        assert_eq!(approvals[0].name, "inc-000007-db9fd8d57bbb418f", "INC-000007/failover#1");
    }

    #[test]
    fn names_follow_the_crds() {
        assert_eq!(object_name_of(IncidentId(42)), "inc-000042");
        let name = keyed_name(IncidentId(42), "INC-000042/restart_api#1");
        assert!(name.starts_with("inc-000042-") && name.len() == "inc-000042-".len() + 16, "{name}");
        assert_eq!(name, keyed_name(IncidentId(42), "INC-000042/restart_api#1"), "the same key, the same name");
        assert_ne!(name, keyed_name(IncidentId(42), "INC-000042/restart_api#2"));
        assert_eq!(attempt_of("INC-000042/restart_api#12"), Some(12));
        assert_eq!(attempt_of("INC-000042/restart_api"), None);
    }

    #[test]
    fn times_are_rfc3339_with_milliseconds_and_refuse_what_it_cannot_write() {
        assert_eq!(
            rfc3339(Timestamp::from_millis(1_700_000_000_123), "t").ok().as_deref(),
            Some("2023-11-14T22:13:20.123Z")
        );
        assert_eq!(rfc3339(Timestamp::EPOCH, "t").ok().as_deref(), Some("1970-01-01T00:00:00.000Z"));
        assert!(
            matches!(rfc3339(Timestamp::from_millis(-1), "openedAt"), Err(StoreError::Backend(m)) if m.contains("openedAt"))
        );
        assert!(rfc3339(Timestamp::from_millis(i64::MAX), "t").is_err());
    }

    #[test]
    fn an_incident_round_trips_through_its_object() {
        for state in [IncidentState::Mitigating, IncidentState::Resolved] {
            let original = incident(7, state);
            let timeline = Timeline { entries: vec![entry(1, "opened"), entry(2, "allowed")], dropped: 4 };
            let desired = incident_desired(&original, &timeline).expect("converts");
            assert_eq!(desired.name, "inc-000007");
            assert_eq!(desired.labels[OPEN_LABEL], (!state.is_closed()).to_string());
            assert_eq!(desired.spec.as_ref().map(|s| s["id"].clone()), Some(json!("INC-000007")));
            assert_eq!(desired.status["mttrTargetSeconds"], 900);
            let back = incident_from_object(&stored(&desired)).expect("parses");
            assert_eq!(back.incident, original);
            assert_eq!(back.timeline, timeline.entries);
            assert_eq!(back.dropped, 4);
        }
        let mut alert = incident(8, IncidentState::Triggered);
        alert.key = ConditionKey { kind: ConditionKind::Alert("P0_SystemDown".into()), target: "alert/abc".into() };
        alert.runbook = None;
        alert.mttr_target_ms = None;
        alert.mttr_status = None;
        let desired = incident_desired(&alert, &Timeline::default()).expect("converts");
        assert_eq!(incident_from_object(&stored(&desired)).expect("parses").incident, alert);
    }

    #[test]
    fn a_corrupt_incident_names_the_field() {
        let desired = incident_desired(&incident(7, IncidentState::Triggered), &Timeline::default()).expect("converts");
        let mut object = stored(&desired);
        object.data["spec"]["key"]["name"] = json!("disk_usage_hgh");
        let err = incident_from_object(&object).expect_err("an unknown finding kind");
        assert!(err.to_string().contains("spec.key.name"), "{err}");
        let mut object = stored(&desired);
        object.data["status"]["updatedAt"] = json!("yesterday");
        let err = incident_from_object(&object).expect_err("a bad time");
        assert!(err.to_string().contains("status.updatedAt") && err.to_string().contains("inc-000007"), "{err}");
    }

    #[test]
    fn a_run_round_trips_and_its_intents_become_keys() {
        let original = run(7);
        let desired = run_desired(&original).expect("converts");
        assert_eq!(desired.labels[FINISHED_LABEL], "false");
        assert_eq!(run_from_object(&stored(&desired)).expect("parses"), original);
        let key = key_desired(&original, &original.intents[0]).expect("converts");
        assert_eq!(key.spec.as_ref().map(|s| s["attempt"].clone()), Some(json!(1)));
        assert_eq!(key.status["outcome"], "succeeded");
        let (id, intent) = intent_from_key_object(&stored(&key)).expect("parses");
        assert_eq!((id, &intent), (IncidentId(7), &original.intents[0]));
        let running = key_desired(&original, &original.intents[1]).expect("converts");
        assert_eq!(running.status, Value::Null, "no outcome while it runs");
    }

    #[test]
    fn a_key_the_run_does_not_list_comes_back_interrupted() {
        let mut r = run(7);
        let recorded = Intent {
            key: "INC-000007/restart#1".into(),
            step_id: "restart".into(),
            recorded_at: at(10),
            outcome: None,
        };
        let listed = r.intents[0].clone();
        merge_keys(&mut r, vec![listed, recorded.clone()]);
        assert_eq!(r.intents.len(), 3, "a key the run lists is not added twice");
        assert_eq!(r.interrupted(), Some(&recorded));
    }

    #[test]
    fn the_rails_memory_and_counters_round_trip_with_approvals_as_objects() {
        let original = guard();
        let counters = Counters { next_incident: 8, next_own_sequence: 3 };
        let desired = guard_desired(Some(&original), counters).expect("converts");
        assert_eq!(desired.name, "cluster");
        assert_eq!(desired.status["paused"]["since"], json!(at(1).to_string()));
        assert_eq!(desired.status["breakers"][0]["scope"], "runbook/P2-001");
        assert!(desired.status.get("approvals").is_none(), "approvals are objects of their own");
        let approvals = approvals_desired(&original).expect("converts");
        assert_eq!(approvals.len(), 2);
        assert_eq!(approvals[0].status["status"], "granted");
        assert_eq!(approvals[0].status["validUntil"], json!(at(906_000).to_string()));
        assert_eq!(approvals[1].spec.as_ref().map(|s| s["reason"]["network"].clone()), Some(json!("10.0.0.0/8")));
        let read: Vec<Value> = approvals.iter().map(|a| approval_from_object(&stored(a)).expect("parses")).collect();
        let (back, back_counters) = guard_from_status(&desired.status, read).expect("parses");
        assert_eq!(back, Some(original));
        assert_eq!(back_counters, counters);

        let (none, counters_only) =
            guard_from_status(&guard_desired(None, counters).expect("converts").status, Vec::new()).expect("parses");
        assert_eq!((none, counters_only), (None, counters), "counters alone are no memory");
    }

    #[test]
    fn the_timeline_keeps_the_newest_entries_and_counts_the_rest() {
        let base = Timeline { entries: (0..3).map(|n| entry(n, "old")).collect(), dropped: 10 };
        let t = bounded(base, (3..8).map(|n| entry(n, "new")), 4, usize::MAX);
        assert_eq!(t.entries.iter().map(|e| e.at).collect::<Vec<_>>(), (4..8).map(at).collect::<Vec<_>>());
        assert_eq!(t.dropped, 14);
        // Bytes bound it too, but the newest entry always stays.
        let big = "x".repeat(MESSAGE_MAX);
        let t = bounded(Timeline::default(), (0..10).map(|n| entry(n, &big)), 100, 3 * (MESSAGE_MAX + 64));
        assert_eq!(t.entries.len(), 3);
        assert_eq!(t.dropped, 7);
        let t = bounded(Timeline::default(), [entry(0, &big)], 100, 10);
        assert_eq!(t.entries.len(), 1);
    }

    #[test]
    fn entries_are_cut_to_the_schema() {
        let mut e = entry(0, &"é".repeat(3000));
        for i in 0..40 {
            e.details.insert(format!("k{i:02}"), "v".repeat(5000));
        }
        let s = sanitize_entry(&e);
        assert_eq!(s.message.chars().count(), MESSAGE_MAX);
        assert!(s.message.ends_with('…'));
        assert_eq!(s.details.len(), DETAILS_MAX);
        assert_eq!(s.details[DETAILS_MORE], "9 more details not kept");
        assert!(s.details.values().all(|v| v.chars().count() <= MESSAGE_MAX));
        let small = entry(0, "fine");
        assert_eq!(sanitize_entry(&small), small);
    }

    #[test]
    fn missing_entries_are_what_the_local_copy_lacks() {
        let all: Vec<TimelineEntry> = (0..10).map(|n| entry(n, "e")).collect();
        // Empty local store: everything.
        assert_eq!(missing_entries(&[], &all[5..]), all[5..].to_vec());
        // Stale: the tail overlaps the cluster's head.
        assert_eq!(missing_entries(&all[..7], &all[5..]), all[7..].to_vec());
        // Up to date, or ahead (a commit the cluster never took): nothing.
        assert!(missing_entries(&all, &all[5..]).is_empty());
        assert!(missing_entries(&all, &all[3..8]).is_empty());
        // No overlap at all: everything.
        assert_eq!(missing_entries(&all[..2], &all[5..]), all[5..].to_vec());
        assert!(missing_entries(&all, &[]).is_empty());
    }

    #[test]
    fn overlay_prefers_the_cluster_and_imports_it() {
        let stale_open = incident(3, IncidentState::Triggered);
        let local = Loaded {
            open_incidents: vec![stale_open.clone(), incident(4, IncidentState::Triggered)],
            counters: Counters { next_incident: 5, next_own_sequence: 9 },
            runs: vec![run(3)],
            ..Loaded::default()
        };
        let mut closed = stale_open.clone();
        closed.state = IncidentState::Resolved;
        let mut newer = incident(7, IncidentState::Mitigating);
        newer.summary = "from the old leader".into();
        let mut cluster_run = run(7);
        cluster_run.intents.truncate(1);
        let snapshot = Snapshot {
            incidents: vec![
                ClusterIncident { incident: closed, timeline: vec![entry(1, "a")], dropped: 0 },
                ClusterIncident { incident: newer.clone(), timeline: vec![entry(1, "a"), entry(2, "b")], dropped: 0 },
            ],
            runs: vec![cluster_run],
            keys: vec![(IncidentId(7), run(7).intents[1].clone())],
            guard: Some(guard()),
            counters: Counters { next_incident: 6, next_own_sequence: 2 },
        };
        let timelines: HashMap<IncidentId, Vec<TimelineEntry>> = [(IncidentId(3), vec![entry(1, "a")])].into();
        let (loaded, import) = overlay(local, snapshot, &timelines);
        let open: Vec<u64> = loaded.open_incidents.iter().map(|i| i.id.0).collect();
        assert_eq!(open, vec![4, 7], "the cluster closed INC-3; INC-7 is the old leader's");
        assert_eq!(loaded.counters, Counters { next_incident: 8, next_own_sequence: 9 }, "max of both, past INC-7");
        assert_eq!(loaded.guard, Some(guard()));
        let run7 = loaded.runs.iter().find(|r| r.incident_id == IncidentId(7)).expect("the old leader's run");
        assert_eq!(run7.intents, run(7).intents, "the recorded key is back, interrupted");
        assert!(
            loaded.runs.iter().any(|r| r.incident_id == IncidentId(3)),
            "an unfinished run stays loaded whatever its incident: the engine finishes it"
        );
        assert_eq!(import.incidents.len(), 2);
        assert_eq!(
            import.timeline,
            vec![(IncidentId(7), entry(1, "a")), (IncidentId(7), entry(2, "b"))],
            "INC-3's entry was there already"
        );
        assert_eq!(import.counters, Some(loaded.counters));
        assert_eq!(import.runs.len(), 1);
    }

    #[test]
    fn a_batch_touches_the_cluster_only_for_what_lives_there() {
        let mut batch = WriteBatch::default();
        batch.alert_keys.push(("k".into(), at(0)));
        assert!(!touches_cluster(&batch), "findings, agents and alert keys stay local");
        batch.timeline.push((IncidentId(2), entry(0, "x")));
        batch.incidents.push(incident(1, IncidentState::Triggered));
        batch.timeline.push((IncidentId(1), entry(0, "y")));
        assert!(touches_cluster(&batch));
        assert_eq!(touched_incidents(&batch), vec![IncidentId(1), IncidentId(2)]);
    }
}
