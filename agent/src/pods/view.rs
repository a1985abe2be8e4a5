//! What the agent keeps of a pod: the few fields its detectors and its
//! restart checks read, never the whole object.
//!
//! This is the one place Kubernetes' `Pod` becomes the agent's own type;
//! messages are cut to [`MAX_TEXT`] bytes so a chatty container cannot grow
//! the agent.

use k8s_openapi::api::core::v1::{ContainerState, ContainerStatus, Pod};
use remedy_shared::Timestamp;
use remedy_shared::guard::HOLD_ANNOTATION;

/// Longest message or reason kept, bytes.
pub const MAX_TEXT: usize = 256;
/// The annotation the kubelet sets on the API copy of a static pod.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";
/// The phase of a pod whose containers all ended, one at least in failure.
pub const FAILED: &str = "Failed";
/// Every pod phase, as Kubernetes spells it.
pub const PHASES: &[&str] = &["Pending", "Running", "Succeeded", FAILED, "Unknown"];

/// A pod, as the agent remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PodView {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// UID: a pod recreated under the same name is another pod.
    pub uid: String,
    /// `spec.nodeName`.
    pub node: String,
    /// The `app` or `app.kubernetes.io/name` label.
    pub app: Option<String>,
    /// `status.phase` (`Pending`, `Running`, `Succeeded`, `Failed`, `Unknown`).
    pub phase: String,
    /// `status.reason` (for example `Evicted`).
    pub reason: Option<String>,
    /// `status.message`, cut.
    pub message: Option<String>,
    /// Init and app containers (their names are unique within a pod).
    pub containers: Vec<ContainerView>,
    /// Carries `remedy.dev/hold` as an annotation or a label.
    pub held: bool,
    /// `Kind/name` of the owner that controls it, if any.
    pub controller: Option<String>,
    /// The API copy of a static pod: deleting it restarts nothing.
    pub mirror: bool,
    /// Has a deletion timestamp.
    pub deleting: bool,
}

/// A container's status, as the agent remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ContainerView {
    /// Name.
    pub name: String,
    /// `restartCount`.
    pub restart_count: u32,
    /// `state.waiting.reason` (for example `CrashLoopBackOff`).
    pub waiting_reason: Option<String>,
    /// `state.waiting.message`, cut.
    pub waiting_message: Option<String>,
    /// `state.terminated`: how it ended, if it is not running again.
    pub terminated: Option<Termination>,
    /// `lastState.terminated`: how it ended before its latest start.
    pub last_termination: Option<Termination>,
}

/// How a container last ended.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Termination {
    /// `reason` (for example `OOMKilled`, `Error`).
    pub reason: Option<String>,
    /// `exitCode`.
    pub exit_code: i32,
    /// `finishedAt`.
    pub finished_at: Option<Timestamp>,
    /// `message`, cut.
    pub message: Option<String>,
}

impl PodView {
    /// `pod/<namespace>/<name>`, the target of its findings.
    pub fn target(&self) -> String {
        format!("pod/{}/{}", self.namespace, self.name)
    }

    /// `<namespace>/<name>`, for logs and people.
    pub fn full_name(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    /// The phase is Failed.
    pub fn failed(&self) -> bool {
        self.phase == FAILED
    }
}

/// Cuts `text` to [`MAX_TEXT`] bytes at a character boundary, marking the cut.
pub fn cut(text: &str) -> String {
    remedy_shared::text::truncate_to_fit(text, MAX_TEXT, remedy_shared::text::Unit::Bytes).into_owned()
}

fn cut_opt(text: Option<&String>) -> Option<String> {
    text.map(|t| cut(t.trim())).filter(|t| !t.is_empty())
}

fn container(status: &ContainerStatus) -> ContainerView {
    let waiting = status.state.as_ref().and_then(|s| s.waiting.as_ref());
    ContainerView {
        name: status.name.clone(),
        restart_count: u32::try_from(status.restart_count).unwrap_or(0),
        waiting_reason: cut_opt(waiting.and_then(|w| w.reason.as_ref())),
        waiting_message: cut_opt(waiting.and_then(|w| w.message.as_ref())),
        terminated: status.state.as_ref().and_then(termination),
        last_termination: status.last_state.as_ref().and_then(termination),
    }
}

fn termination(state: &ContainerState) -> Option<Termination> {
    let t = state.terminated.as_ref()?;
    Some(Termination {
        reason: cut_opt(t.reason.as_ref()),
        exit_code: t.exit_code,
        finished_at: t.finished_at.as_ref().map(|f| Timestamp::from_millis(f.0.as_millisecond())),
        message: cut_opt(t.message.as_ref()),
    })
}

/// The view of `pod`; `None` for an object without a namespace or a name.
pub fn view(pod: &Pod) -> Option<PodView> {
    let meta = &pod.metadata;
    let namespace = meta.namespace.clone().filter(|n| !n.is_empty())?;
    let name = meta.name.clone().filter(|n| !n.is_empty())?;
    let labels = meta.labels.as_ref();
    let annotations = meta.annotations.as_ref();
    let app = labels
        .and_then(|l| l.get("app").or_else(|| l.get("app.kubernetes.io/name")))
        .map(|a| cut(a))
        .filter(|a| !a.is_empty());
    let held = annotations.is_some_and(|a| a.contains_key(HOLD_ANNOTATION))
        || labels.is_some_and(|l| l.contains_key(HOLD_ANNOTATION));
    let controller = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| format!("{}/{}", o.kind, o.name));
    let status = pod.status.as_ref();
    let containers = status
        .into_iter()
        .flat_map(|s| s.init_container_statuses.iter().flatten().chain(s.container_statuses.iter().flatten()))
        .map(container)
        .collect();
    Some(PodView {
        namespace,
        name,
        uid: meta.uid.clone().unwrap_or_default(),
        node: pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default(),
        app,
        phase: status.and_then(|s| s.phase.clone()).unwrap_or_else(|| "Unknown".to_owned()),
        reason: cut_opt(status.and_then(|s| s.reason.as_ref())),
        message: cut_opt(status.and_then(|s| s.message.as_ref())),
        containers,
        held,
        controller,
        mirror: annotations.is_some_and(|a| a.contains_key(MIRROR_ANNOTATION)),
        deleting: meta.deletion_timestamp.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).expect("a valid Pod")
    }

    #[test]
    fn keeps_only_what_the_detectors_and_checks_read() {
        let p = pod(json!({
            "metadata": {
                "namespace": "shop", "name": "api-1", "uid": "u-1",
                "labels": { "app.kubernetes.io/name": "api", "tier": "web" },
                "annotations": { "remedy.dev/hold": "", "big": "x".repeat(10_000) },
                "ownerReferences": [
                    { "apiVersion": "v1", "kind": "ConfigMap", "name": "cm", "uid": "c" },
                    { "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "api-7d", "uid": "r", "controller": true }
                ]
            },
            "spec": { "nodeName": "node-a", "containers": [{ "name": "app", "image": "i" }] },
            "status": {
                "phase": "Running",
                "initContainerStatuses": [{ "name": "init", "image": "i", "imageID": "", "ready": true, "restartCount": 0 }],
                "containerStatuses": [{
                    "name": "app", "image": "i", "imageID": "", "ready": false, "restartCount": 4,
                    "state": { "waiting": { "reason": "CrashLoopBackOff", "message": "m".repeat(1_000) } },
                    "lastState": { "terminated": {
                        "reason": "OOMKilled", "exitCode": 137, "finishedAt": "2026-01-02T03:04:05Z"
                    } }
                }]
            }
        }));
        let v = view(&p).unwrap();
        assert_eq!((v.namespace.as_str(), v.name.as_str(), v.uid.as_str()), ("shop", "api-1", "u-1"));
        assert_eq!(v.target(), "pod/shop/api-1");
        assert_eq!((v.node.as_str(), v.phase.as_str()), ("node-a", "Running"));
        assert_eq!(v.app.as_deref(), Some("api"));
        assert!(v.held && !v.mirror && !v.deleting && !v.failed());
        assert_eq!(v.controller.as_deref(), Some("ReplicaSet/api-7d"));
        assert_eq!(v.containers.len(), 2);
        let app = &v.containers[1];
        assert_eq!((app.name.as_str(), app.restart_count), ("app", 4));
        assert_eq!(app.waiting_reason.as_deref(), Some("CrashLoopBackOff"));
        assert!(app.waiting_message.as_ref().unwrap().len() <= MAX_TEXT);
        let t = app.last_termination.as_ref().unwrap();
        assert_eq!((t.reason.as_deref(), t.exit_code), (Some("OOMKilled"), 137));
        assert_eq!(t.finished_at, Timestamp::parse_rfc3339("2026-01-02T03:04:05Z"));
    }

    #[test]
    fn a_bare_pod_without_status_is_unknown_and_uncontrolled() {
        let v =
            view(&pod(json!({ "metadata": { "namespace": "a", "name": "b" }, "spec": { "containers": [] } }))).unwrap();
        assert_eq!(v.phase, "Unknown");
        assert!(v.controller.is_none() && v.containers.is_empty() && !v.held);
        assert!(view(&pod(json!({ "metadata": { "name": "b" } }))).is_none(), "no namespace");
    }

    #[test]
    fn cut_keeps_short_text_and_cuts_long_text_at_a_character() {
        assert_eq!(cut("short"), "short");
        let long = "é".repeat(300);
        let c = cut(&long);
        assert!(c.len() <= MAX_TEXT && c.ends_with('…'), "{} bytes", c.len());
    }
}
