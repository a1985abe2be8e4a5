//! The cluster store's objects, pure: domain values to and from
//! `remedy.dev/v1alpha1` objects (`Incident`, `RunRecord`, `IdempotencyKey`,
//! `GuardState`, `Approval`), their names and labels, and the limits their
//! schemas set.
//!
//! Reading an object back checks every field it needs and names the one that
//! is missing or malformed, with the object's kind and name.

use std::collections::BTreeMap;
use std::fmt;

use kube::api::{ApiResource, DynamicObject, ObjectMeta};
use remedy_shared::Timestamp;
use remedy_shared::finding::{ConditionKey, ConditionKind, FindingKind, Severity};
use remedy_shared::guard::GuardState;
use remedy_shared::incident::{EntryKind, Incident, IncidentId, IncidentState, TimelineEntry};
use remedy_shared::run::{Intent, RunRecord, RunStatus};
use serde_json::{Map, Value, json};

use crate::store::{Counters, StoreError};

const GROUP: &str = "remedy.dev";
const VERSION: &str = "v1alpha1";
/// The one `GuardState` object's name.
pub(super) const GUARD_NAME: &str = "cluster";
/// On incidents: whether it is open, so a new leader lists only those.
pub(super) const OPEN_LABEL: &str = "remedy.dev/open";
/// On runs: whether it is finished.
pub(super) const FINISHED_LABEL: &str = "remedy.dev/finished";
/// On idempotency keys and approvals: their incident's object name.
pub(super) const INCIDENT_LABEL: &str = "remedy.dev/incident";
const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "remedy-coordinator");

/// The kinds of `remedy.dev` objects the store writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Kind {
    /// An incident with its newest timeline entries.
    Incident,
    /// A runbook run.
    RunRecord,
    /// The rails' memory and the counters.
    GuardState,
    /// One approval the rails asked for.
    Approval,
    /// One step execution, recorded before it starts.
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

    /// The resource's plural, as URLs and listings name it.
    pub(super) fn plural(self) -> &'static str {
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

    /// The resource, for the API client.
    pub(super) fn resource(self) -> ApiResource {
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

/// An object by kind and name.
pub(super) type ObjectKey = (Kind, String);

/// An incident's timeline as its object keeps it: the newest entries, and
/// how many older ones were cut.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Timeline {
    /// The newest entries, oldest first.
    pub(super) entries: Vec<TimelineEntry>,
    /// Entries cut so far.
    pub(super) dropped: u64,
}

/// What an object should look like after a commit.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Desired {
    /// Its kind.
    pub(super) kind: Kind,
    /// Its name.
    pub(super) name: String,
    /// Its labels, all of them.
    pub(super) labels: BTreeMap<String, String>,
    /// Its spec, fixed once created; `None` for a kind without one.
    pub(super) spec: Option<Value>,
    /// Its status.
    pub(super) status: Value,
}

impl Desired {
    /// The object's kind and name.
    pub(super) fn key(&self) -> ObjectKey {
        (self.kind, self.name.clone())
    }
}

/// The object's name, empty when it has none.
pub(super) fn object_name(object: &DynamicObject) -> String {
    object.metadata.name.clone().unwrap_or_default()
}

/// The object's resourceVersion, empty when it has none.
pub(super) fn resource_version(object: &DynamicObject) -> String {
    object.metadata.resource_version.clone().unwrap_or_default()
}

/// The object to create: metadata and spec. Status is written separately:
/// the status subresource ignores it on create.
pub(super) fn new_object(desired: &Desired) -> DynamicObject {
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

/// An incident as its object holds it.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct ClusterIncident {
    /// The incident.
    pub(super) incident: Incident,
    /// Its newest timeline entries.
    pub(super) timeline: Vec<TimelineEntry>,
    /// Entries cut from the object.
    pub(super) dropped: u64,
}

// ---- limits of the schemas ----------------------------------------

/// `text` cut to `max` characters (the schemas' maxLength counts
/// characters), marked as cut.
fn clip(text: &str, max: usize) -> String {
    remedy_shared::text::truncate_to_fit(text, max, remedy_shared::text::Unit::Chars).into_owned()
}

/// The schema's maxLength of a message or a detail.
pub(super) const MESSAGE_MAX: usize = 2048;
const DETAILS_MAX: usize = 32;
const DETAILS_MORE: &str = "…";

/// An entry as the `Incident` schema accepts it: message and details within
/// their lengths, at most 32 details (the rest counted under `…`).
pub(super) fn sanitize_entry(entry: &TimelineEntry) -> TimelineEntry {
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

// ---- names ---------------------------------------------------------

/// `inc-000042` for INC-000042.
pub(super) fn object_name_of(id: IncidentId) -> String {
    id.to_string().to_ascii_lowercase()
}

/// `inc-000042-<first 16 hex digits of sha256(key)>`, as the CRDs document
/// for approvals and idempotency keys: filing the same key twice is the
/// same name.
fn keyed_name(id: IncidentId, key: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
    let hex: String = digest.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect();
    format!("{}-{hex}", object_name_of(id))
}

fn labels(pairs: &[(&str, String)]) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
    out.insert(MANAGED_BY.0.into(), MANAGED_BY.1.into());
    out
}

// ---- times -----------------------------------------------------------

/// The last instant RFC 3339's four-digit years can write.
const LAST_RFC3339_MS: i64 = 253_402_300_799_999;

fn rfc3339(at: Timestamp, what: &str) -> Result<String, StoreError> {
    if (0..=LAST_RFC3339_MS).contains(&at.as_millis()) {
        Ok(at.to_string())
    } else {
        Err(StoreError::Backend(format!("{what}: {} ms is outside what RFC 3339 can write", at.as_millis())))
    }
}

// ---- reading fields of an object -----------------------------------

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

// ---- Incident --------------------------------------------------------

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

/// The `Incident` object of `incident`, holding `timeline`.
pub(super) fn incident_desired(incident: &Incident, timeline: &Timeline) -> Result<Desired, StoreError> {
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
    if incident.drill {
        status["drill"] = json!(true);
    }
    if let Some(at) = incident.started_at {
        status["startedAt"] = json!(rfc3339(at, "startedAt")?);
    }
    if !incident.conversations.is_empty() {
        status["conversations"] = json!(incident.conversations);
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

/// An incident and its timeline from its object.
pub(super) fn incident_from_object(object: &DynamicObject) -> Result<ClusterIncident, StoreError> {
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
        drill: status.get("drill").and_then(Value::as_bool).unwrap_or(false),
        started_at: f.opt_time(status, "status.startedAt")?,
        conversations: match status.get("conversations") {
            None | Some(Value::Null) => BTreeMap::new(),
            Some(_) => f.parse(status, "status.conversations")?,
        },
    };
    Ok(ClusterIncident { incident, timeline: timeline.entries, dropped: timeline.dropped })
}

/// The timeline an `Incident` object named `name` holds in `status`.
pub(super) fn incident_timeline(name: &str, status: &Value) -> Result<Timeline, StoreError> {
    timeline_from_status(&Fields { kind: Kind::Incident, name }, status)
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

// ---- RunRecord and IdempotencyKey -----------------------------------

const INTENTS_MAX: usize = 512;
const FAILURES_MAX: usize = 256;

/// The `RunRecord` object of `run`. Refuses a run with more executions than
/// the object holds.
pub(super) fn run_desired(run: &RunRecord) -> Result<Desired, StoreError> {
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
    let steps = serde_json::to_value(&run.steps)
        .map_err(|e| StoreError::Backend(format!("the run of {}: its steps: {e}", run.incident_id)))?;
    let outcome = serde_json::to_value(run.outcome)
        .map_err(|e| StoreError::Backend(format!("the run of {}: its outcome: {e}", run.incident_id)))?;
    Ok(Desired {
        kind: Kind::RunRecord,
        name: object_name_of(run.incident_id),
        labels: labels(&[
            (FINISHED_LABEL, run.status.is_finished().to_string()),
            (INCIDENT_LABEL, object_name_of(run.incident_id)),
        ]),
        spec: Some(run_spec(run)?),
        status: json!({
            "phase": run.status.as_str(),
            "nextStep": next_step,
            "attempt": run.attempt,
            "updatedAt": rfc3339(run.updated_at, "updatedAt")?,
            "intents": intents,
            "failures": failures,
            "steps": steps,
            "outcome": outcome,
            "context": context,
        }),
    })
}

/// What started a run: written once (the spec is immutable).
fn run_spec(run: &RunRecord) -> Result<Value, StoreError> {
    let mut spec = json!({
        "incidentId": run.incident_id.to_string(),
        "runbookId": run.runbook_id,
        "mode": run.mode.as_str(),
        "startedBy": clip(&run.started_by, 512),
        "requestedBy": run.requested_by,
        "createdAt": rfc3339(run.created_at, "createdAt")?,
    });
    // Names only: the values are held in memory by the run. Absent when
    // none, as in runs recorded before secret params were kept apart.
    if !run.secret_params.is_empty() {
        spec["secretParams"] = json!(run.secret_params);
    }
    Ok(spec)
}

/// A run from its object, without the keys recorded apart from it.
pub(super) fn run_from_object(object: &DynamicObject) -> Result<RunRecord, StoreError> {
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
    let steps = match status.get("steps") {
        None | Some(Value::Null) => Default::default(),
        Some(v) => serde_json::from_value(v.clone()).map_err(|e| f.corrupt(format!("status.steps: {e}")))?,
    };
    let outcome = match status.get("outcome") {
        None | Some(Value::Null) => None,
        Some(v) => Some(serde_json::from_value(v.clone()).map_err(|e| f.corrupt(format!("status.outcome: {e}")))?),
    };
    let attempt = f.u64(status, "status.attempt")?;
    let next_step = f.u64(status, "status.nextStep")?;
    Ok(RunRecord {
        incident_id: f.incident_id(spec, "spec.incidentId")?,
        runbook_id: f.str(spec, "spec.runbookId")?.to_owned(),
        mode: f.parse(spec, "spec.mode")?,
        started_by: f.opt_str(spec, "spec.startedBy")?.unwrap_or_default().to_owned(),
        requested_by: f.opt_str(spec, "spec.requestedBy")?.map(str::to_owned),
        secret_params: match spec.get("secretParams") {
            None | Some(Value::Null) => Default::default(),
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| f.corrupt(format!("spec.secretParams: {e}")))?,
        },
        secret_values: Default::default(),
        context,
        next_step: usize::try_from(next_step).map_err(|_| f.corrupt("status.nextStep is too large".into()))?,
        attempt: u32::try_from(attempt).map_err(|_| f.corrupt("status.attempt is too large".into()))?,
        status: f.parse::<RunStatus>(status, "status.phase")?,
        created_at: f.time(spec, "spec.createdAt")?,
        updated_at: f.time(status, "status.updatedAt")?,
        intents,
        failures,
        steps,
        outcome,
    })
}

/// `INC-000042/restart_api#3` -> 3.
fn attempt_of(key: &str) -> Option<u32> {
    key.rsplit_once('#').and_then(|(_, n)| n.parse().ok())
}

/// The `IdempotencyKey` object of one execution of `run`.
pub(super) fn key_desired(run: &RunRecord, intent: &Intent) -> Result<Desired, StoreError> {
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

/// An execution, and its incident, from its `IdempotencyKey` object.
pub(super) fn intent_from_key_object(object: &DynamicObject) -> Result<(IncidentId, Intent), StoreError> {
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

// ---- GuardState, Counters and Approval -------------------------------
//
// `GuardState` keeps its fields private and changes only through its
// methods; its serde form (snake_case, Unix ms) is the stable crossing, so
// the conversion goes through it.

const ACTIONS_MAX: usize = 2000;
const FAILURES_RECORD_MAX: usize = 1000;

/// The `GuardState` object: the rails' memory without its approvals (they
/// are objects of their own), and the counters.
pub(super) fn guard_desired(guard: Option<&GuardState>, counters: Counters) -> Result<Desired, StoreError> {
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
pub(super) fn guard_from_status(
    status: &Value,
    approvals: Vec<Value>,
) -> Result<(Option<GuardState>, Counters), StoreError> {
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
pub(super) fn guard_with_approvals(
    guard: Option<&GuardState>,
    approvals: Vec<Value>,
) -> Result<GuardState, StoreError> {
    let mut domain = match guard {
        Some(g) => serde_json::to_value(g).map_err(|e| StoreError::Backend(format!("the rails' memory: {e}")))?,
        None => json!({}),
    };
    domain["approvals"] = Value::Array(approvals);
    serde_json::from_value(domain)
        .map_err(|e| StoreError::Corrupt { table: Kind::Approval.table(), message: e.to_string() })
}

/// One `Approval` object per approval the rails remember.
pub(super) fn approvals_desired(guard: &GuardState) -> Result<Vec<Desired>, StoreError> {
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
pub(super) fn approval_from_object(object: &DynamicObject) -> Result<Value, StoreError> {
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

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::super::fixtures::{at, entry, guard, incident, run, stored};
    use super::*;

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
    fn a_run_with_more_executions_than_its_object_holds_is_refused() {
        let mut r = run(7);
        let template = r.intents[0].clone();
        r.intents =
            (0..=INTENTS_MAX).map(|n| Intent { key: format!("INC-000007/s{n}#1"), ..template.clone() }).collect();
        let err = run_desired(&r).expect_err("too many executions");
        assert!(err.to_string().contains("513 step executions"), "{err}");
    }

    #[test]
    fn an_idempotency_key_without_its_attempt_is_refused() {
        let r = run(7);
        let intent = Intent { key: "INC-000007/cleanup".into(), ..r.intents[0].clone() };
        let err = key_desired(&r, &intent).expect_err("no attempt");
        assert!(err.to_string().contains("#<attempt>"), "{err}");
    }

    #[test]
    fn an_approval_with_an_unknown_answer_names_the_field() {
        let approvals = approvals_desired(&guard()).expect("converts");
        let mut object = stored(&approvals[1]);
        object.data["status"]["status"] = json!("maybe");
        let err = approval_from_object(&object).expect_err("an unknown answer");
        assert!(err.to_string().contains("status.status `maybe`"), "{err}");
        assert!(err.to_string().contains(&approvals[1].name), "{err}");
    }

    #[test]
    fn incident_text_is_cut_to_the_schema_and_the_mttr_target_to_whole_seconds() {
        let mut long = incident(7, IncidentState::Triggered);
        long.summary = "s".repeat(5000);
        long.mttr_target_ms = Some(1_500);
        let desired = incident_desired(&long, &Timeline::default()).expect("converts");
        let summary = desired.status["summary"].as_str().expect("a summary");
        assert_eq!(summary.chars().count(), 4096);
        assert!(summary.ends_with('…'));
        assert_eq!(desired.status["mttrTargetSeconds"], 2, "a part second rounds up");
        long.mttr_target_ms = Some(1);
        let desired = incident_desired(&long, &Timeline::default()).expect("converts");
        assert_eq!(desired.status["mttrTargetSeconds"], 1, "never zero");
    }
}
