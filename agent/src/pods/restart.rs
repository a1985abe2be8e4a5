//! Local remediation: deleting a Failed pod of this node so that its
//! controller replaces it.
//!
//! Off unless `pods.restart_failed.enabled`. Every candidate passes, in
//! this order: the checks on what the watch saw ([`check`]: this node's,
//! Failed, not being deleted, no `remedy.dev/hold`, owned by a controller,
//! not a static pod's mirror), the hold on its namespace (read once per
//! namespace and kept [`NAMESPACE_TTL`]), the local budget (`max_per_hour`
//! within any sliding hour), and the same checks again on a fresh read just
//! before the delete, which carries the pod's UID and resourceVersion as
//! preconditions: a pod changed since (a hold added, recreated) is not
//! deleted. A refusal is logged, counted in the metrics and shown in
//! `/debug/state` once per pod and reason; it is never silent.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Client;
use kube::api::{Api, DeleteParams, Preconditions};
use remedy_shared::Timestamp;
use remedy_shared::guard::HOLD_ANNOTATION;
use serde::Serialize;
use tokio::sync::mpsc;

use super::view::{self, PodView};
use crate::clock::now;
use crate::config::RestartFailed;
use crate::state::Shared;

/// How long a namespace's hold is believed without reading it again.
pub const NAMESPACE_TTL: Duration = Duration::from_secs(30);
/// The budget's window.
const HOUR: Duration = Duration::from_secs(3600);
/// Longest an API call of a restart may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Decisions kept for `/debug/state`.
const RECENT: usize = 20;

/// Why a pod was not restarted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `remedy.dev/hold` on the pod or its namespace.
    Held(&'static str),
    /// Bound to another node (or to none).
    OtherNode(String),
    /// Not (or no longer) Failed.
    NotFailed(String),
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
            Refusal::NotFailed(_) => "not_failed",
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
            Refusal::NotFailed(phase) => write!(f, "it is no longer Failed (phase {phase})"),
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

/// The checks on a pod as seen, before any budget or API call.
pub fn check(pod: &PodView, node: &str) -> Result<(), Refusal> {
    if pod.node != node {
        return Err(Refusal::OtherNode(pod.node.clone()));
    }
    if !pod.failed() {
        return Err(Refusal::NotFailed(pod.phase.clone()));
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

/// At most `max` uses within any sliding `window`.
#[derive(Debug, Clone)]
pub struct Budget {
    max: u32,
    window: Duration,
    used: VecDeque<Timestamp>,
}

impl Budget {
    /// A budget of `max` per `window`.
    pub fn new(max: u32, window: Duration) -> Budget {
        Budget { max, window, used: VecDeque::new() }
    }

    fn prune(&mut self, now: Timestamp) {
        while self.used.front().is_some_and(|at| now.since(*at) >= self.window) {
            self.used.pop_front();
        }
    }

    /// Uses within the window ending at `now`.
    pub fn used(&mut self, now: Timestamp) -> usize {
        self.prune(now);
        self.used.len()
    }

    /// `Ok` when one more use fits at `now` (nothing is taken).
    pub fn check(&mut self, now: Timestamp) -> Result<(), Refusal> {
        let used = self.used(now);
        if used < self.max as usize {
            return Ok(());
        }
        Err(Refusal::Budget { used, max: self.max, next_free: self.used.front().map(|at| at.plus(self.window)) })
    }

    /// Takes one use at `now`, if it fits.
    pub fn take(&mut self, now: Timestamp) -> Result<(), Refusal> {
        self.check(now)?;
        self.used.push_back(now);
        Ok(())
    }

    /// Gives back the use taken at `at` (the action did not happen).
    pub fn give_back(&mut self, at: Timestamp) {
        if let Some(i) = self.used.iter().rposition(|u| *u == at) {
            self.used.remove(i);
        }
    }
}

/// Restarts as `/debug/state` shows them.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RestartStatus {
    /// Whether Failed pods are restarted at all.
    pub enabled: bool,
    /// The budget.
    pub max_per_hour: u32,
    /// Restarts within the last hour (as of the last decision).
    pub used_in_last_hour: usize,
    /// Pods deleted for a restart.
    pub done: u64,
    /// Refusals, each pod and reason counted once.
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
}

/// Restarts the Failed pods it is sent (each message: every Failed pod of
/// the node as the watch sees it) until the sender goes away.
pub async fn run(shared: Arc<Shared>, client: Client, policy: RestartFailed, mut rx: mpsc::Receiver<Vec<PodView>>) {
    let mut r = Remediator {
        shared,
        namespaces: Api::all(client.clone()),
        client,
        budget: Budget::new(policy.max_per_hour, HOUR),
        held_namespaces: HashMap::new(),
        decided: HashMap::new(),
    };
    while let Some(failed) = rx.recv().await {
        r.decided.retain(|uid, _| failed.iter().any(|p| &p.uid == uid));
        for pod in failed {
            r.consider(pod).await;
        }
        let used = r.budget.used(now());
        r.shared.status().pods.restarts.used_in_last_hour = used;
    }
}

/// What was last decided about a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decided {
    Restarted,
    Refused(&'static str),
}

struct Remediator {
    shared: Arc<Shared>,
    client: Client,
    namespaces: Api<Namespace>,
    budget: Budget,
    held_namespaces: HashMap<String, (bool, Instant)>,
    /// By pod UID; only pods still Failed are remembered.
    decided: HashMap<String, Decided>,
}

impl Remediator {
    async fn consider(&mut self, seen: PodView) {
        if self.decided.get(&seen.uid) == Some(&Decided::Restarted) {
            return;
        }
        let node = self.shared.node_name.clone();
        if let Err(refusal) = check(&seen, &node) {
            return self.refuse(&seen, refusal);
        }
        match self.namespace_held(&seen.namespace).await {
            Ok(false) => {}
            Ok(true) => return self.refuse(&seen, Refusal::Held("namespace")),
            Err(e) => return self.refuse(&seen, Refusal::NamespaceUnreadable(e)),
        }
        if let Err(refusal) = self.budget.check(now()) {
            return self.refuse(&seen, refusal);
        }
        // Freshness: the pod as it is now, not as the watch last saw it.
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &seen.namespace);
        let fresh = match call(pods.get_opt(&seen.name)).await {
            Ok(Some(pod)) => pod,
            Ok(None) => return,
            Err(e) => return self.fail(&seen, "read_failed", format!("cannot read the pod before deleting it: {e}")),
        };
        let Some(current) = view::view(&fresh) else { return };
        if current.uid != seen.uid {
            return;
        }
        if let Err(refusal) = check(&current, &node) {
            return self.refuse(&seen, refusal);
        }
        let at = now();
        if let Err(refusal) = self.budget.take(at) {
            return self.refuse(&seen, refusal);
        }
        let params = DeleteParams {
            preconditions: Some(Preconditions {
                uid: Some(current.uid.clone()),
                resource_version: fresh.metadata.resource_version.clone(),
            }),
            ..DeleteParams::default()
        };
        match call(pods.delete(&seen.name, &params)).await {
            Ok(_) => self.restarted(&current),
            Err(CallError::Api(404, _)) => self.budget.give_back(at),
            Err(CallError::Api(409, message)) => {
                // Changed since the read: looked at again with the next batch.
                self.budget.give_back(at);
                tracing::info!(pod = %seen.full_name(), %message, "a Failed pod changed just before its restart; will look again");
            }
            Err(e) => self.fail(&seen, "delete_failed", format!("the delete failed: {e}")),
        }
    }

    async fn namespace_held(&mut self, namespace: &str) -> Result<bool, String> {
        if let Some((held, read_at)) = self.held_namespaces.get(namespace)
            && read_at.elapsed() < NAMESPACE_TTL
        {
            return Ok(*held);
        }
        let ns = call(self.namespaces.get(namespace)).await.map_err(|e| e.to_string())?;
        let held = ns.metadata.annotations.as_ref().is_some_and(|a| a.contains_key(HOLD_ANNOTATION))
            || ns.metadata.labels.as_ref().is_some_and(|l| l.contains_key(HOLD_ANNOTATION));
        self.held_namespaces.retain(|_, (_, at)| at.elapsed() < NAMESPACE_TTL);
        self.held_namespaces.insert(namespace.to_owned(), (held, Instant::now()));
        Ok(held)
    }

    fn refuse(&mut self, pod: &PodView, refusal: Refusal) {
        let reason = refusal.reason();
        if self.decided.insert(pod.uid.clone(), Decided::Refused(reason)) == Some(Decided::Refused(reason)) {
            return; // already counted and said for this pod
        }
        let message = format!("not restarting Failed pod {}: {refusal}", pod.full_name());
        tracing::warn!(pod = %pod.full_name(), reason, "{message}");
        self.shared.metrics.pod_restarts_refused.get_or_create(&vec![("reason".to_owned(), reason.to_owned())]).inc();
        let mut status = self.shared.status();
        let restarts = &mut status.pods.restarts;
        restarts.refused += 1;
        *restarts.refused_by_reason.entry(reason.to_owned()).or_default() += 1;
        push(restarts, pod, "refused", reason, message);
    }

    fn restarted(&mut self, pod: &PodView) {
        self.decided.insert(pod.uid.clone(), Decided::Restarted);
        let message = format!(
            "deleted Failed pod {} so that {} replaces it",
            pod.full_name(),
            pod.controller.as_deref().unwrap_or("its controller")
        );
        tracing::info!(pod = %pod.full_name(), uid = %pod.uid, "{message}");
        self.shared.metrics.pod_restarts.inc();
        let used = self.budget.used(now());
        let mut status = self.shared.status();
        let restarts = &mut status.pods.restarts;
        restarts.done += 1;
        restarts.used_in_last_hour = used;
        push(restarts, pod, "restarted", "", message);
    }

    fn fail(&mut self, pod: &PodView, reason: &str, message: String) {
        // Not remembered: the next batch tries again, within the budget.
        tracing::warn!(pod = %pod.full_name(), reason, "restart of Failed pod {} failed: {message}", pod.full_name());
        self.shared.metrics.pod_restart_failures.inc();
        let mut status = self.shared.status();
        status.pods.restarts.failed += 1;
        push(&mut status.pods.restarts, pod, "failed", reason, message);
    }
}

fn push(restarts: &mut RestartStatus, pod: &PodView, outcome: &'static str, reason: &str, message: String) {
    restarts.recent.push_back(RestartEntry {
        at: now(),
        pod: pod.full_name(),
        uid: pod.uid.clone(),
        outcome,
        reason: reason.to_owned(),
        message,
    });
    while restarts.recent.len() > RECENT {
        restarts.recent.pop_front();
    }
}

/// An API call that failed or did not answer in time.
#[derive(Debug, thiserror::Error)]
enum CallError {
    #[error("{1} (HTTP {0})")]
    Api(u16, String),
    #[error("{0}")]
    Other(String),
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
