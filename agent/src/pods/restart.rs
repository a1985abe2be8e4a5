//! Restarting a pod of this node: deleting it so that its controller
//! replaces it.
//!
//! Two callers share one [`Restarter`], and so one budget
//! (`pods.restart_failed.max_per_hour` within any sliding hour), one cache
//! of namespace holds and one delete: the local rule for Failed pods
//! ([`run`], off unless `pods.restart_failed.enabled`) and the
//! coordinator's `restart_pod` directive (`super::directive`), which spends
//! the same budget whether or not the local rule is on.
//!
//! The local rule passes every candidate, in this order: the checks on what
//! the watch saw ([`check`]: this node's, Failed, not being deleted, no
//! `remedy.dev/hold`, owned by a controller, not a static pod's mirror), the
//! hold on its namespace (read once per namespace and kept
//! [`NAMESPACE_TTL`]), the budget, and the same checks again on a fresh read
//! just before the delete, which carries the pod's UID and resourceVersion
//! as preconditions: a pod changed since (a hold added, recreated) is not
//! deleted. A refusal is logged, counted in the metrics and shown in
//! `/debug/state` once per pod and reason; it is never silent.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, Preconditions};
use remedy_shared::Timestamp;
use remedy_shared::budget::{SlidingBudget, Spent};
use remedy_shared::guard::HOLD_ANNOTATION;
use serde::Serialize;
use tokio::sync::mpsc;

use super::PodsReport;
use super::view::{self, FAILED, PodView};
use crate::clock::now;
use remedy_shared::sync::lock;

/// How long a namespace's hold is believed without reading it again.
pub const NAMESPACE_TTL: Duration = Duration::from_secs(30);
/// The budget's window.
const HOUR: Duration = Duration::from_secs(3600);
/// Longest an API call of a restart may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Decisions kept for `/debug/state`.
const RECENT: usize = 20;
/// Who decided, in `/debug/state`, for the local rule.
const LOCAL_RULE: &str = "local rule";

/// Why a pod was not restarted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `remedy.dev/hold` on the pod or its namespace.
    Held(&'static str),
    /// Bound to another node (or to none).
    OtherNode(String),
    /// Not (or no longer) in the phase asked for.
    Phase {
        /// The phase asked for.
        wanted: &'static str,
        /// The pod's phase.
        phase: String,
    },
    /// Already being deleted.
    Deleting,
    /// No controller would replace it: deleting it would not restart it,
    /// and would remove what a person made.
    NoController,
    /// A static pod's mirror: the kubelet owns it.
    Mirror,
    /// The hour's budget is spent.
    Budget {
        /// Restarts within the last hour.
        used: usize,
        /// The budget.
        max: u32,
        /// When the oldest of them leaves the window.
        next_free: Option<Timestamp>,
    },
    /// The namespace could not be read, so its hold is unknown.
    NamespaceUnreadable(String),
}

impl Refusal {
    /// The short reason used in metrics and `/debug/state`.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Held(_) => "hold",
            Refusal::OtherNode(_) => "other_node",
            // The local rule's reason, kept for the metric's existing series.
            Refusal::Phase { wanted, .. } if *wanted == FAILED => "not_failed",
            Refusal::Phase { .. } => "phase",
            Refusal::Deleting => "deleting",
            Refusal::NoController => "no_controller",
            Refusal::Mirror => "mirror",
            Refusal::Budget { .. } => "budget",
            Refusal::NamespaceUnreadable(_) => "namespace_unreadable",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Held(on) => write!(f, "{HOLD_ANNOTATION} is set on its {on}"),
            Refusal::OtherNode(node) if node.is_empty() => f.write_str("it is bound to no node"),
            Refusal::OtherNode(node) => write!(f, "it is bound to node {node}, not this one"),
            Refusal::Phase { wanted, phase } => write!(f, "its phase is {phase}, not {wanted}"),
            Refusal::Deleting => f.write_str("it is already being deleted"),
            Refusal::NoController => {
                f.write_str("no controller owns it: deleting it would not restart it, only remove it")
            }
            Refusal::Mirror => f.write_str("it is the mirror of a static pod, which only its kubelet restarts"),
            Refusal::Budget { used, max, next_free } => {
                write!(f, "the budget of {max} restarts per hour is spent ({used} in the last hour)")?;
                match next_free {
                    Some(at) => write!(f, "; the next is allowed at {at}"),
                    None => Ok(()),
                }
            }
            Refusal::NamespaceUnreadable(e) => write!(f, "its namespace cannot be read to check for a hold: {e}"),
        }
    }
}

/// The local rule's checks on a pod as seen, before any budget or API call.
pub fn check(pod: &PodView, node: &str) -> Result<(), Refusal> {
    check_phase(pod, node, Some(FAILED))
}

/// The checks every restart passes: bound to `node`, in phase `wanted`
/// (any when `None`), not being deleted, not held, a controller's and not
/// a mirror.
pub fn check_phase(pod: &PodView, node: &str, wanted: Option<&'static str>) -> Result<(), Refusal> {
    if pod.node != node {
        return Err(Refusal::OtherNode(pod.node.clone()));
    }
    if let Some(wanted) = wanted
        && pod.phase != wanted
    {
        return Err(Refusal::Phase { wanted, phase: pod.phase.clone() });
    }
    if pod.deleting {
        return Err(Refusal::Deleting);
    }
    if pod.held {
        return Err(Refusal::Held("pod"));
    }
    if pod.mirror || pod.controller.as_deref().is_some_and(|c| c.starts_with("Node/")) {
        return Err(Refusal::Mirror);
    }
    if pod.controller.is_none() {
        return Err(Refusal::NoController);
    }
    Ok(())
}

/// The restarts budget: the project's sliding budget, refusing in this
/// module's words.
#[derive(Debug)]
pub struct Budget(SlidingBudget);

impl Budget {
    /// A budget of `max` per `window`.
    pub fn new(max: u32, window: Duration) -> Budget {
        Budget(SlidingBudget::new(max, window))
    }

    /// Uses within the window ending at `now`.
    pub fn used(&mut self, now: Timestamp) -> usize {
        self.0.used(now)
    }

    /// `Ok` when one more use fits at `now` (nothing is taken).
    pub fn check(&mut self, now: Timestamp) -> Result<(), Refusal> {
        self.0.check(now).map_err(spent)
    }

    /// Takes one use at `now`, if it fits.
    pub fn take(&mut self, now: Timestamp) -> Result<(), Refusal> {
        self.0.take(now).map_err(spent)
    }

    /// Gives back the use taken at `at` (the action did not happen).
    pub fn give_back(&mut self, at: Timestamp) {
        self.0.give_back(at);
    }
}

fn spent(s: Spent) -> Refusal {
    Refusal::Budget { used: s.used, max: s.max, next_free: s.next_free }
}

/// Deletes pods of this node for whoever restarts them. Locks are never
/// held across an API call; the budget is checked early (to spare API calls
/// on a spent budget) and taken again at the delete, so two callers at once
/// cannot both spend its last use.
pub struct Restarter {
    node: String,
    client: Client,
    namespaces: Api<Namespace>,
    budget: Mutex<Budget>,
    max_per_hour: u32,
    held_namespaces: Mutex<HashMap<String, (bool, Instant)>>,
}

impl std::fmt::Debug for Restarter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Restarter").field("node", &self.node).field("max_per_hour", &self.max_per_hour).finish()
    }
}

/// Why a delete did not happen.
#[derive(Debug)]
pub enum DeleteError {
    /// The budget was spent meanwhile.
    Refused(Refusal),
    /// The pod is gone already (HTTP 404).
    Gone,
    /// The pod changed since it was read (HTTP 409: its UID or
    /// resourceVersion no longer match).
    Changed(String),
    /// The API refused or did not answer; the budget stays spent, as the
    /// delete may have happened.
    Failed(CallError),
}

impl Restarter {
    /// Restarts pods bound to `node`, at most `max_per_hour` within any
    /// sliding hour.
    pub fn new(node: String, client: Client, max_per_hour: u32) -> Restarter {
        Restarter {
            node,
            namespaces: Api::all(client.clone()),
            client,
            budget: Mutex::new(Budget::new(max_per_hour, HOUR)),
            max_per_hour,
            held_namespaces: Mutex::new(HashMap::new()),
        }
    }

    /// The node whose pods it restarts.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The budget: restarts per sliding hour.
    pub fn max_per_hour(&self) -> u32 {
        self.max_per_hour
    }

    /// `Ok` when one more restart fits in the budget now (nothing is taken).
    pub fn budget_check(&self, now: Timestamp) -> Result<(), Refusal> {
        lock(&self.budget).check(now)
    }

    /// Restarts within the last hour.
    pub fn budget_used(&self, now: Timestamp) -> usize {
        lock(&self.budget).used(now)
    }

    /// Whether `remedy.dev/hold` is on `namespace` (as an annotation or a
    /// label), as read at most [`NAMESPACE_TTL`] ago.
    pub async fn namespace_held(&self, namespace: &str) -> Result<bool, String> {
        if let Some((held, read_at)) = lock(&self.held_namespaces).get(namespace)
            && read_at.elapsed() < NAMESPACE_TTL
        {
            return Ok(*held);
        }
        let ns = call(self.namespaces.get(namespace)).await.map_err(|e| e.to_string())?;
        let held = ns.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(HOLD_ANNOTATION))
            || ns.metadata.labels.as_ref().is_some_and(|l| l.contains_key(HOLD_ANNOTATION));
        let mut cache = lock(&self.held_namespaces);
        cache.retain(|_, (_, at)| at.elapsed() < NAMESPACE_TTL);
        cache.insert(namespace.to_owned(), (held, Instant::now()));
        Ok(held)
    }

    /// The pod as it is now; `None` when there is none.
    pub async fn get(&self, namespace: &str, name: &str) -> Result<Option<Pod>, CallError> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        call(pods.get_opt(name)).await
    }

    /// Deletes `fresh` (the pod as just read), with its UID and
    /// resourceVersion as preconditions, taking one use of the budget. A
    /// dry run asks the API server for a server-side dry run, so its
    /// authorization and admission are checked too, and takes nothing.
    pub async fn delete(&self, fresh: &Pod, dry_run: bool) -> Result<(), DeleteError> {
        let meta = &fresh.metadata;
        let (Some(namespace), Some(name)) = (meta.namespace.as_deref(), meta.name.as_deref()) else {
            return Err(DeleteError::Failed(CallError::Other("the pod has no namespace or name".to_owned())));
        };
        let at = now();
        if dry_run {
            lock(&self.budget).check(at).map_err(DeleteError::Refused)?;
        } else {
            lock(&self.budget).take(at).map_err(DeleteError::Refused)?;
        }
        let params = DeleteParams {
            dry_run,
            preconditions: Some(Preconditions {
                uid: meta.uid.clone(),
                resource_version: meta.resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let give_back = |e: DeleteError| {
            if !dry_run {
                lock(&self.budget).give_back(at);
            }
            e
        };
        match call(pods.delete(name, &params)).await {
            Ok(_) => Ok(()),
            Err(CallError::Api(404, _)) => Err(give_back(DeleteError::Gone)),
            Err(CallError::Api(409, message)) => Err(give_back(DeleteError::Changed(message))),
            Err(e) => Err(DeleteError::Failed(e)),
        }
    }
}

/// Restarts as `/debug/state` shows them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestartStatus {
    /// Whether the local rule restarts Failed pods.
    pub enabled: bool,
    /// The budget, shared by the local rule and directives.
    pub max_per_hour: u32,
    /// Restarts within the last hour (as of the last decision).
    pub used_in_last_hour: usize,
    /// Pods deleted for a restart.
    pub done: u64,
    /// Refusals (the local rule's: each pod and reason counted once).
    pub refused: u64,
    /// Refusals by reason.
    pub refused_by_reason: BTreeMap<String, u64>,
    /// Deletes the API refused or that did not answer.
    pub failed: u64,
    /// The latest decisions, newest last.
    pub recent: VecDeque<RestartEntry>,
}

/// One decision about one pod.
#[derive(Debug, Clone, Serialize)]
pub struct RestartEntry {
    /// When.
    pub at: Timestamp,
    /// `<namespace>/<name>`.
    pub pod: String,
    /// Its UID.
    pub uid: String,
    /// `restarted`, `refused` or `failed`.
    pub outcome: &'static str,
    /// The refusal's or failure's reason (empty when restarted).
    pub reason: String,
    /// For people.
    pub message: String,
    /// Who asked: `local rule`, or `directive <id>`.
    pub by: String,
}

/// Records a restart: log, metrics, `/debug/state`.
pub fn record_restarted(report: &PodsReport, pod: &PodView, used: usize, by: &str, message: String) {
    tracing::info!(pod = %pod.full_name(), uid = %pod.uid, by, "{message}");
    report.metrics.restarts.inc();
    let mut status = report.status.lock();
    let restarts = &mut status.restarts;
    restarts.done += 1;
    restarts.used_in_last_hour = used;
    push(restarts, pod, "restarted", "", message, by);
}

/// Records a refusal: log, metrics, `/debug/state`.
pub fn record_refused(report: &PodsReport, pod: &PodView, refusal: &Refusal, by: &str, message: String) {
    let reason = refusal.reason();
    tracing::warn!(pod = %pod.full_name(), reason, by, "{message}");
    report.metrics.restarts_refused.get_or_create(&vec![("reason".to_owned(), reason.to_owned())]).inc();
    let mut status = report.status.lock();
    let restarts = &mut status.restarts;
    restarts.refused += 1;
    *restarts.refused_by_reason.entry(reason.to_owned()).or_default() += 1;
    push(restarts, pod, "refused", reason, message, by);
}

/// Records a restart whose API calls failed: log, metrics, `/debug/state`.
pub fn record_failed(report: &PodsReport, pod: &PodView, reason: &str, by: &str, message: String) {
    tracing::warn!(pod = %pod.full_name(), reason, by, "restart of pod {} failed: {message}", pod.full_name());
    report.metrics.restart_failures.inc();
    let mut status = report.status.lock();
    status.restarts.failed += 1;
    push(&mut status.restarts, pod, "failed", reason, message, by);
}

/// Restarts the Failed pods it is sent (each message: every Failed pod of
/// the node as the watch sees it) until the sender goes away.
pub async fn run(report: PodsReport, restarter: Arc<Restarter>, mut rx: mpsc::Receiver<Vec<PodView>>) {
    let mut r = Remediator { report, restarter, decided: HashMap::new() };
    while let Some(failed) = rx.recv().await {
        r.decided.retain(|uid, _| failed.iter().any(|p| &p.uid == uid));
        for pod in failed {
            r.consider(pod).await;
        }
        let used = r.restarter.budget_used(now());
        r.report.status.lock().restarts.used_in_last_hour = used;
    }
}

/// What was last decided about a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decided {
    Restarted,
    Refused(&'static str),
}

struct Remediator {
    report: PodsReport,
    restarter: Arc<Restarter>,
    /// By pod UID; only pods still Failed are remembered.
    decided: HashMap<String, Decided>,
}

impl Remediator {
    async fn consider(&mut self, seen: PodView) {
        if self.decided.get(&seen.uid) == Some(&Decided::Restarted) {
            return;
        }
        let restarter = self.restarter.clone();
        let node = restarter.node();
        if let Err(refusal) = check(&seen, node) {
            return self.refuse(&seen, refusal);
        }
        match restarter.namespace_held(&seen.namespace).await {
            Ok(false) => {}
            Ok(true) => return self.refuse(&seen, Refusal::Held("namespace")),
            Err(e) => return self.refuse(&seen, Refusal::NamespaceUnreadable(e)),
        }
        if let Err(refusal) = restarter.budget_check(now()) {
            return self.refuse(&seen, refusal);
        }
        // Freshness: the pod as it is now, not as the watch last saw it.
        let fresh = match restarter.get(&seen.namespace, &seen.name).await {
            Ok(Some(pod)) => pod,
            Ok(None) => return,
            Err(e) => return self.fail(&seen, "read_failed", format!("cannot read the pod before deleting it: {e}")),
        };
        let Some(current) = view::view(&fresh) else { return };
        if current.uid != seen.uid {
            return;
        }
        if let Err(refusal) = check(&current, node) {
            return self.refuse(&seen, refusal);
        }
        match restarter.delete(&fresh, false).await {
            Ok(()) => self.restarted(&current),
            Err(DeleteError::Refused(refusal)) => self.refuse(&seen, refusal),
            Err(DeleteError::Gone) => {}
            Err(DeleteError::Changed(message)) => {
                // Looked at again with the next batch.
                tracing::info!(pod = %seen.full_name(), %message, "a Failed pod changed just before its restart; will look again");
            }
            Err(DeleteError::Failed(e)) => self.fail(&seen, "delete_failed", format!("the delete failed: {e}")),
        }
    }

    fn refuse(&mut self, pod: &PodView, refusal: Refusal) {
        let reason = refusal.reason();
        if self.decided.insert(pod.uid.clone(), Decided::Refused(reason)) == Some(Decided::Refused(reason)) {
            return; // already counted and said for this pod
        }
        let message = format!("not restarting Failed pod {}: {refusal}", pod.full_name());
        record_refused(&self.report, pod, &refusal, LOCAL_RULE, message);
    }

    fn restarted(&mut self, pod: &PodView) {
        self.decided.insert(pod.uid.clone(), Decided::Restarted);
        let message = format!(
            "deleted Failed pod {} so that {} replaces it",
            pod.full_name(),
            pod.controller.as_deref().unwrap_or("its controller")
        );
        record_restarted(&self.report, pod, self.restarter.budget_used(now()), LOCAL_RULE, message);
    }

    fn fail(&mut self, pod: &PodView, reason: &str, message: String) {
        // Not remembered: the next batch tries again, within the budget.
        record_failed(&self.report, pod, reason, LOCAL_RULE, message);
    }
}

fn push(restarts: &mut RestartStatus, pod: &PodView, outcome: &'static str, reason: &str, message: String, by: &str) {
    restarts.recent.push_back(RestartEntry {
        at: now(),
        pod: pod.full_name(),
        uid: pod.uid.clone(),
        outcome,
        reason: reason.to_owned(),
        message,
        by: by.to_owned(),
    });
    while restarts.recent.len() > RECENT {
        restarts.recent.pop_front();
    }
}

/// An API call that failed or did not answer in time.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The API server answered with an error status.
    #[error("{1} (HTTP {0})")]
    Api(u16, String),
    /// No answer: connection, TLS, decoding.
    #[error("{0}")]
    Other(String),
    /// No answer in time.
    #[error("no answer within {CALL_TIMEOUT:?}")]
    Timeout,
}

async fn call<T>(fut: impl Future<Output = Result<T, kube::Error>>) -> Result<T, CallError> {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(kube::Error::Api(status))) => Err(CallError::Api(status.code, status.message.clone())),
        Ok(Err(e)) => Err(CallError::Other(e.to_string())),
        Err(_) => Err(CallError::Timeout),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed_pod() -> PodView {
        PodView {
            namespace: "shop".into(),
            name: "api-1".into(),
            uid: "u1".into(),
            node: "node-a".into(),
            phase: "Failed".into(),
            controller: Some("ReplicaSet/api-7d".into()),
            ..PodView::default()
        }
    }

    #[test]
    fn only_a_failed_controlled_unheld_pod_of_this_node_passes() {
        assert_eq!(check(&failed_pod(), "node-a"), Ok(()));
        let cases: Vec<(PodView, &str)> = vec![
            (PodView { node: "node-b".into(), ..failed_pod() }, "other_node"),
            (PodView { node: String::new(), ..failed_pod() }, "other_node"),
            (PodView { phase: "Running".into(), ..failed_pod() }, "not_failed"),
            (PodView { deleting: true, ..failed_pod() }, "deleting"),
            (PodView { held: true, ..failed_pod() }, "hold"),
            (PodView { controller: None, ..failed_pod() }, "no_controller"),
            (PodView { mirror: true, ..failed_pod() }, "mirror"),
            (PodView { controller: Some("Node/node-a".into()), ..failed_pod() }, "mirror"),
        ];
        for (pod, reason) in cases {
            let refusal = check(&pod, "node-a").unwrap_err();
            assert_eq!(refusal.reason(), reason, "{pod:?}");
            assert!(!refusal.to_string().is_empty());
        }
        assert_eq!(
            check(&PodView { node: "node-b".into(), ..failed_pod() }, "node-a").unwrap_err().to_string(),
            "it is bound to node node-b, not this one"
        );
    }

    #[test]
    fn the_budget_slides_and_says_when_the_next_is_allowed() {
        let t = |s: i64| Timestamp::from_millis(s * 1000);
        let mut b = Budget::new(2, HOUR);
        assert_eq!(b.take(t(0)), Ok(()));
        assert_eq!(b.take(t(600)), Ok(()));
        let refusal = b.take(t(1200)).unwrap_err();
        assert_eq!(refusal, Refusal::Budget { used: 2, max: 2, next_free: Some(t(3600)) });
        assert!(refusal.to_string().contains("budget of 2 restarts per hour is spent"), "{refusal}");
        assert!(b.check(t(3599)).is_err());
        assert_eq!(b.check(t(3600)), Ok(()), "the first left the window");
        assert_eq!(b.take(t(3600)), Ok(()));
        assert_eq!(b.used(t(3600)), 2);
        b.give_back(t(3600));
        assert_eq!(b.used(t(3600)), 1);
    }
}
