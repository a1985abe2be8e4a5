//! `delete_pods` and `evict_pods`: pods chosen by label selector (and
//! phase, or node), at most `max_count` of them, never by an unbounded
//! selector. Eviction goes through the Eviction API, so PodDisruptionBudgets
//! decide; a budget that says no is reported as a refusal, not retried.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, EvictParams, ListParams, ObjectMeta, PostParams, Preconditions};
use kube::core::{Selector, SelectorExt};
use remedy_shared::guard::{Population, TargetRef};
use remedy_shared::runbook::{DeletePods, EvictPods, PodPhase};

use super::fields::{hold, merged};
use super::selector::{self, Rejected};
use super::workloads::describe;
use super::{
    ActionCall, ActionReport, ActionStatus, Deadline, FIELD_MANAGER, Failure, KubeActuator, Resolved, api_code,
    api_failure, api_message, check_name, check_namespace, params,
};

/// How far up `ownerReferences` go (Pod → ReplicaSet → Deployment is two).
const MAX_OWNER_DEPTH: usize = 5;
/// Past this many distinct controllers in a pool, the pool is the selector
/// in its namespace, without reading every owner.
const MAX_POOL_OWNERS: usize = 8;
/// Page size when listing pods.
const PAGE: u32 = 500;
/// Most pod names in one piece of evidence.
const MAX_NAMES: usize = 20;

/// Which pods an action means.
#[derive(Debug, Clone)]
struct Query {
    namespace: String,
    selector: String,
    phase: Option<PodPhase>,
    node: Option<String>,
    max_count: u32,
}

impl Query {
    fn fields(&self) -> Option<String> {
        let mut fields = Vec::new();
        if let Some(phase) = self.phase {
            fields.push(format!("status.phase={}", phase_name(phase)));
        }
        if let Some(node) = &self.node {
            fields.push(format!("spec.nodeName={node}"));
        }
        (!fields.is_empty()).then(|| fields.join(","))
    }

    /// `Failed pods matching app=api in shop`.
    fn describe(&self) -> String {
        let phase = self.phase.map(|p| format!("{} ", phase_name(p))).unwrap_or_default();
        let node = self.node.as_ref().map(|n| format!(" on node {n}")).unwrap_or_default();
        format!("{phase}pods matching {} in {}{node}", self.selector, self.namespace)
    }
}

fn phase_name(phase: PodPhase) -> &'static str {
    match phase {
        PodPhase::Pending => "Pending",
        PodPhase::Running => "Running",
        PodPhase::Succeeded => "Succeeded",
        PodPhase::Failed => "Failed",
        PodPhase::Unknown => "Unknown",
    }
}

/// The pods a call's parameters mean; `Ok(Err(_))` when its selector is
/// unbounded or malformed, `Err` when the other parameters are wrong.
fn query(call: &ActionCall) -> Result<Result<Query, Rejected>, Failure> {
    let (namespace, raw, phase, node, max_count) = match call.kind.as_str() {
        "delete_pods" => {
            let p: DeletePods = params(call)?;
            (p.namespace, p.selector, p.phase, None, p.max_count)
        }
        _ => {
            let p: EvictPods = params(call)?;
            (p.namespace, p.selector, None, p.node, p.max_count)
        }
    };
    check_namespace(&namespace)?;
    if let Some(node) = &node {
        check_name("node", node)?;
    }
    if max_count == 0 {
        return Err(Failure::Invalid("max_count must be at least 1".to_owned()));
    }
    Ok(selector::bounded(&raw).map(|selector| Query { namespace, selector, phase, node, max_count }))
}

/// One pod chosen, with the annotations of what is around it.
#[derive(Debug, Clone)]
struct Chosen {
    name: String,
    uid: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
    owners: Vec<Owner>,
}

/// A controller up a pod's `ownerReferences`.
#[derive(Debug, Clone)]
struct Owner {
    kind: String,
    name: String,
    annotations: BTreeMap<String, String>,
}

/// The pods a query chooses now.
#[derive(Debug)]
struct Found {
    /// Pods matching, before the cap.
    matched: usize,
    /// The first `max_count` of them, oldest first.
    chosen: Vec<Chosen>,
    namespace_annotations: BTreeMap<String, String>,
}

impl Found {
    fn targets(&self, namespace: &str) -> Vec<TargetRef> {
        self.chosen
            .iter()
            .map(|pod| {
                let owners = pod.owners.iter().rev().map(|o| &o.annotations);
                TargetRef {
                    kind: "Pod".to_owned(),
                    namespace: Some(namespace.to_owned()),
                    name: pod.name.clone(),
                    labels: pod.labels.clone(),
                    annotations: merged(
                        std::iter::once(&self.namespace_annotations).chain(owners).chain([&pod.annotations]),
                    ),
                }
            })
            .collect()
    }

    /// Refuses when any chosen pod, its owners or its namespace is on hold.
    /// The widest hold is named (namespace, then the top workload, down to
    /// the pod): a ReplicaSet carries its Deployment's annotations, and the
    /// Deployment is where a person put the hold.
    fn refuse_if_held(&self, namespace: &str) -> Result<(), Failure> {
        for pod in &self.chosen {
            let what = describe("Pod", namespace, &pod.name);
            let layers = std::iter::once((format!("Namespace {namespace}"), &self.namespace_annotations))
                .chain(pod.owners.iter().rev().map(|o| (describe(&o.kind, namespace, &o.name), &o.annotations)))
                .chain([(what.clone(), &pod.annotations)]);
            if let Some(message) = hold(&what, layers) {
                return Err(Failure::Refused(message));
            }
        }
        Ok(())
    }
}

/// Reads owners up the chain, once per controller.
struct Owners<'a> {
    actuator: &'a KubeActuator,
    namespace: &'a str,
    deadline: Deadline,
    chains: HashMap<String, Vec<Owner>>,
}

impl<'a> Owners<'a> {
    fn new(actuator: &'a KubeActuator, namespace: &'a str, deadline: Deadline) -> Self {
        Owners { actuator, namespace, deadline, chains: HashMap::new() }
    }

    /// The controllers above an object, nearest first. An owner that is
    /// gone ends the chain (its pods are being collected); one that cannot
    /// be read fails the lookup, since its hold could not be seen.
    async fn chain(&mut self, meta: &ObjectMeta) -> Result<Vec<Owner>, Failure> {
        let Some(first) = controller(meta) else { return Ok(Vec::new()) };
        if let Some(chain) = self.chains.get(&first.uid) {
            return Ok(chain.clone());
        }
        let mut chain = Vec::new();
        let mut next = Some(first.clone());
        while let Some(reference) = next.take() {
            if chain.len() >= MAX_OWNER_DEPTH {
                break;
            }
            let found = self
                .actuator
                .object_metadata(
                    self.namespace,
                    &reference.api_version,
                    &reference.kind,
                    &reference.name,
                    self.deadline,
                )
                .await
                .map_err(|f| {
                    Failure::Failed(format!(
                        "cannot see whether {} is on hold: {}",
                        describe(&reference.kind, self.namespace, &reference.name),
                        f.message()
                    ))
                })?;
            let Some(meta) = found else { break };
            next = controller(&meta).cloned();
            chain.push(Owner {
                kind: reference.kind,
                name: reference.name,
                annotations: meta.annotations.unwrap_or_default(),
            });
        }
        self.chains.insert(first.uid.clone(), chain.clone());
        Ok(chain)
    }
}

fn controller(meta: &ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references.iter().flatten().find(|r| r.controller == Some(true))
}

/// Every pod of a listing, page by page.
async fn list(
    a: &KubeActuator,
    namespace: &str,
    labels: &str,
    fields: Option<&str>,
    d: Deadline,
) -> Result<Vec<Pod>, Failure> {
    let api: Api<Pod> = Api::namespaced(a.client(), namespace);
    let mut lp = ListParams::default().labels(labels).limit(PAGE);
    if let Some(fields) = fields {
        lp = lp.fields(fields);
    }
    let mut pods = Vec::new();
    loop {
        let page = d.api(&format!("listing pods matching {labels} in {namespace}"), api.list(&lp)).await?;
        pods.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => lp = lp.continue_token(&token),
            None => return Ok(pods),
        }
    }
}

/// The pods `q` chooses now: matching, not already terminating, oldest
/// first, at most `max_count`.
async fn find(a: &KubeActuator, q: &Query, owners: &mut Owners<'_>, d: Deadline) -> Result<Found, Failure> {
    let namespace_annotations = a.namespace_annotations(&q.namespace, d).await?;
    let mut pods: Vec<Pod> = list(a, &q.namespace, &q.selector, q.fields().as_deref(), d)
        .await?
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    pods.sort_by(|x, y| {
        let key = |p: &Pod| (p.metadata.creation_timestamp.as_ref().map(|t| t.0), p.metadata.name.clone());
        key(x).cmp(&key(y))
    });
    let matched = pods.len();
    let cap = usize::try_from(q.max_count).unwrap_or(usize::MAX);
    let mut chosen = Vec::new();
    for pod in pods.into_iter().take(cap) {
        let owners = owners.chain(&pod.metadata).await?;
        let meta = pod.metadata;
        chosen.push(Chosen {
            name: meta.name.unwrap_or_default(),
            uid: meta.uid,
            labels: meta.labels.unwrap_or_default(),
            annotations: meta.annotations.unwrap_or_default(),
            owners,
        });
    }
    Ok(Found { matched, chosen, namespace_annotations })
}

/// The pool the pods come from: their workload when they all share one
/// (`Deployment/shop/api`), else the selector in its namespace; its size is
/// every pod the selector matches, whatever its phase.
async fn population(a: &KubeActuator, q: &Query, owners: &mut Owners<'_>, d: Deadline) -> Result<Population, Failure> {
    let pods = list(a, &q.namespace, &q.selector, None, d).await?;
    let size = u64::try_from(pods.len()).unwrap_or(u64::MAX);
    let fallback = Population { pool: format!("Namespace/{}/{}", q.namespace, q.selector), size };
    let mut controllers: BTreeMap<String, &Pod> = BTreeMap::new();
    for pod in &pods {
        match controller(&pod.metadata) {
            Some(r) => controllers.entry(r.uid.clone()).or_insert(pod),
            None => return Ok(fallback),
        };
    }
    if controllers.is_empty() || controllers.len() > MAX_POOL_OWNERS {
        return Ok(fallback);
    }
    let mut tops = BTreeSet::new();
    for pod in controllers.values() {
        let chain = owners.chain(&pod.metadata).await?;
        match chain.last() {
            Some(top) => tops.insert(format!("{}/{}/{}", top.kind, q.namespace, top.name)),
            None => return Ok(fallback),
        };
    }
    match (tops.len(), tops.into_iter().next()) {
        (1, Some(pool)) => Ok(Population { pool, size }),
        _ => Ok(fallback),
    }
}

async fn resolve(a: &KubeActuator, call: &ActionCall, d: Deadline) -> Result<Resolved, Failure> {
    let q = match query(call)? {
        Ok(q) => q,
        // Unbounded: no targets, which the rails refuse as an empty set.
        Err(Rejected::Unbounded(_)) => return Ok(Resolved::default()),
        Err(Rejected::Invalid(m)) => return Err(Failure::Invalid(m)),
    };
    let mut owners = Owners::new(a, &q.namespace, d);
    let found = find(a, &q, &mut owners, d).await?;
    let population = population(a, &q, &mut owners, d).await?;
    Ok(Resolved { targets: found.targets(&q.namespace), population: Some(population), ..Resolved::default() })
}

pub(crate) async fn resolve_delete(a: &KubeActuator, call: &ActionCall, d: Deadline) -> Result<Resolved, Failure> {
    resolve(a, call, d).await
}

pub(crate) async fn resolve_evict(a: &KubeActuator, call: &ActionCall, d: Deadline) -> Result<Resolved, Failure> {
    resolve(a, call, d).await
}

/// The query of an action that acts: an unbounded selector is refused here
/// too, should a caller skip the rails.
fn acting_query(call: &ActionCall) -> Result<Query, Failure> {
    match query(call)? {
        Ok(q) => Ok(q),
        Err(Rejected::Unbounded(m)) => Err(Failure::Refused(m)),
        Err(Rejected::Invalid(m)) => Err(Failure::Invalid(m)),
    }
}

/// What a pod action did, for its report.
#[derive(Debug, Default)]
struct Tally {
    done: Vec<String>,
    gone: Vec<String>,
}

fn names(list: &[String]) -> String {
    let mut shown: Vec<&str> = list.iter().take(MAX_NAMES).map(String::as_str).collect();
    if list.len() > MAX_NAMES {
        shown.push("…");
    }
    shown.join(",")
}

fn report(status: ActionStatus, message: String, q: &Query, found: &Found, tally: &Tally, verb: &str) -> ActionReport {
    let mut report = ActionReport::new(status, message)
        .with("selector", &q.selector)
        .with("namespace", &q.namespace)
        .with("max_count", q.max_count)
        .with("matched", found.matched)
        .with(verb, tally.done.len())
        .with("pods", names(&tally.done))
        .with("already_gone", tally.gone.len());
    if let Some(phase) = q.phase {
        report = report.with("phase", phase_name(phase));
    }
    if let Some(node) = &q.node {
        report = report.with("node", node);
    }
    report
}

fn preconditions(pod: &Chosen) -> Option<Preconditions> {
    // The uid makes sure the pod deleted is the one chosen, not a
    // replacement of the same name (a StatefulSet's).
    pod.uid.as_ref().map(|uid| Preconditions { uid: Some(uid.clone()), resource_version: None })
}

pub(crate) async fn delete(a: &KubeActuator, call: &ActionCall, d: Deadline) -> Result<ActionReport, Failure> {
    remove(a, call, d, Removal::Delete).await
}

pub(crate) async fn evict(a: &KubeActuator, call: &ActionCall, d: Deadline) -> Result<ActionReport, Failure> {
    remove(a, call, d, Removal::Evict).await
}

/// How chosen pods are taken away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Removal {
    /// DELETE: nothing but the rails and holds stand in the way.
    Delete,
    /// The Eviction API: PodDisruptionBudgets may refuse.
    Evict,
}

impl Removal {
    /// (verb, past tense, gerund) for messages and evidence.
    fn words(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Removal::Delete => ("delete", "deleted", "deleting"),
            Removal::Evict => ("evict", "evicted", "evicting"),
        }
    }
}

/// Deletes or evicts the pods the query chooses, one at a time, stopping at
/// the first failure; what was done before it is reported with it.
async fn remove(a: &KubeActuator, call: &ActionCall, d: Deadline, how: Removal) -> Result<ActionReport, Failure> {
    let (verb, done, doing) = how.words();
    let q = acting_query(call)?;
    let mut owners = Owners::new(a, &q.namespace, d);
    let found = find(a, &q, &mut owners, d).await?;
    found.refuse_if_held(&q.namespace)?;
    let mut tally = Tally::default();
    if found.chosen.is_empty() {
        let status = if call.dry_run { ActionStatus::DryRun } else { ActionStatus::Succeeded };
        let message = format!("no {} now; nothing to {verb}", q.describe());
        return Ok(report(status, message, &q, &found, &tally, done));
    }
    let api: Api<Pod> = Api::namespaced(a.client(), &q.namespace);
    for pod in &found.chosen {
        let dp = DeleteParams { dry_run: call.dry_run, preconditions: preconditions(pod), ..DeleteParams::default() };
        let what = describe("Pod", &q.namespace, &pod.name);
        let request = async {
            match how {
                Removal::Delete => api.delete(&pod.name, &dp).await.map(|_| ()),
                Removal::Evict => {
                    let ep = EvictParams {
                        delete_options: Some(dp.clone()),
                        post_options: PostParams {
                            dry_run: call.dry_run,
                            field_manager: Some(FIELD_MANAGER.to_owned()),
                        },
                    };
                    api.evict(&pod.name, &ep).await.map(|_| ())
                }
            }
        };
        match d.within(&format!("{doing} {what}"), request).await {
            Ok(Ok(())) => tally.done.push(pod.name.clone()),
            // Gone already, or replaced by another pod of the same name.
            Ok(Err(e)) if matches!(api_code(&e), Some(404 | 409)) => tally.gone.push(pod.name.clone()),
            // A disruption budget said no: that is its answer, reported as a
            // refusal; the remaining pods are left alone.
            Ok(Err(e)) if how == Removal::Evict && api_code(&e) == Some(429) => {
                let budgets = budgets_covering(a, &q.namespace, &pod.labels, d).await;
                let by = if budgets.is_empty() { "a PodDisruptionBudget".to_owned() } else { budgets.join(", ") };
                let message = format!(
                    "refused: evicting {what} would break {by}: {} ({} evicted before)",
                    budget_message(&e),
                    tally.done.len()
                );
                return Ok(report(ActionStatus::Failed, message, &q, &found, &tally, done)
                    .with("refused", true)
                    .with("refused_by", by));
            }
            Ok(Err(e)) => {
                let message = format!(
                    "{} ({} {done} before)",
                    api_failure(&format!("{doing} {what}"), &e).message(),
                    tally.done.len()
                );
                return Ok(report(ActionStatus::Failed, message, &q, &found, &tally, done));
            }
            Err(timeout) => {
                let message = format!("{} ({} {done} before)", timeout.message(), tally.done.len());
                return Ok(report(ActionStatus::TimedOut, message, &q, &found, &tally, done));
            }
        }
    }
    let of = format!("{} of {} {} (at most {})", tally.done.len(), found.matched, q.describe(), q.max_count);
    // A dry run of evictions checks each pod against the budgets as they are
    // now; it spends nothing, so a later pod may be refused for real.
    let (status, message) = if call.dry_run {
        (ActionStatus::DryRun, format!("would {verb} {of}: {}", names(&tally.done)))
    } else {
        (ActionStatus::Succeeded, format!("{done} {of}: {}", names(&tally.done)))
    };
    Ok(report(status, message, &q, &found, &tally, done))
}

/// The API server's refusal with its causes, which name the budget and
/// what it needs ("The disruption budget api needs 3 healthy pods...").
fn budget_message(e: &kube::Error) -> String {
    let kube::Error::Api(status) = e else { return api_message(e) };
    let causes: Vec<&str> = status
        .details
        .iter()
        .flat_map(|d| d.causes.iter())
        .map(|c| c.message.as_str())
        .filter(|m| !m.is_empty())
        .collect();
    if causes.is_empty() { status.message.clone() } else { format!("{} {}", status.message, causes.join("; ")) }
}

/// The PodDisruptionBudgets whose selector takes in a pod's labels, by
/// name. Best effort: the refusal stands whether or not they can be listed.
async fn budgets_covering(
    a: &KubeActuator,
    namespace: &str,
    labels: &BTreeMap<String, String>,
    d: Deadline,
) -> Vec<String> {
    let api: Api<PodDisruptionBudget> = Api::namespaced(a.client(), namespace);
    let Ok(Ok(list)) = d.within("listing PodDisruptionBudgets", api.list(&ListParams::default())).await else {
        return Vec::new();
    };
    list.items
        .into_iter()
        .filter(|pdb| {
            let selector = pdb.spec.as_ref().and_then(|s| s.selector.clone());
            // policy/v1: no selector selects no pod; an empty one, every pod.
            selector.and_then(|s| Selector::try_from(s).ok()).is_some_and(|s| s.matches(labels))
        })
        .map(|pdb| format!("PodDisruptionBudget {namespace}/{}", pdb.metadata.name.unwrap_or_default()))
        .collect()
}
