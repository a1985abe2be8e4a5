//! The `restart_pod` directive: the coordinator asks this agent to restart
//! one named pod of its node, that is to delete it so that its controller
//! replaces it.
//!
//! Parameters, all strings; any other is refused, naming it:
//!
//! - `namespace` and `name` (required): the pod. Surrounding whitespace is
//!   ignored; what is left must be a namespace (an RFC 1123 label) and a pod
//!   name (an RFC 1123 subdomain), so a template that rendered something
//!   else is caught before any API call.
//! - `only_if_phase` (optional): `Pending`, `Running`, `Succeeded`, `Failed`
//!   or `Unknown`, spelled as Kubernetes does; a pod in another phase is
//!   refused. Without it, the phase does not matter (a hung Running pod can
//!   be restarted too).
//!
//! The pod is read from the API server, not from the watch: a pod of
//! another node is not in the watch, and its refusal names the node it is
//! bound to. It then passes the local rule's checks (bound to this node, not
//! already being deleted, no `remedy.dev/hold` on it or on its namespace,
//! owned by a controller, not a static pod's mirror) and the local budget,
//! `pods.restart_failed.max_per_hour`, which the local rule and this
//! directive spend together whether or not the local rule is enabled. The
//! delete carries the UID and resourceVersion just read as preconditions: a
//! pod that changed meanwhile is read and checked again (at most
//! [`ATTEMPTS`] times); one replaced meanwhile, under the same name with
//! another UID, is left alone.
//!
//! Outcomes: `succeeded` (deleted); `dry_run` (every check passed and the
//! API server accepted the delete as a server-side dry run, so its
//! authorization and admission were checked too; the budget is checked,
//! not spent); `refused` (a parameter, a check or the budget, or pod
//! watching is off: no Kubernetes client); `failed` (no such pod, the pod
//! was deleted or replaced meanwhile, or the API server failed). In a dry
//! run a refusal is still `refused`, so a rehearsal shows what would stop
//! the real one. The evidence names the pod (`pod`, `namespace`, `name`),
//! this agent's node (`agent_node`), once read the pod's `node`, `phase`,
//! `uid` and `controller`, whether it was `deleted`, the refusal's `reason`,
//! and after a restart `budget_used` of `budget_max`.

use std::collections::{BTreeMap, HashMap};

use super::restart::{self, DeleteError, Refusal, Restarter};
use super::view::{self, PHASES, PodView};
use super::{Pods, PodsReport};
use crate::clock::now;
use crate::handler::{Handlers, Outcome, Reply, Request};

/// The directive's name, as announced in the hello.
pub const RESTART_POD: &str = "restart_pod";
/// Reads and deletes tried when the pod keeps changing in between (each
/// status update by its kubelet changes its resourceVersion).
pub const ATTEMPTS: usize = 3;
/// The parameters a `restart_pod` takes, as its refusals list them.
const PARAMS: &str = "namespace, name, only_if_phase";

/// What a `restart_pod` directive asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestartPodParams {
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's name.
    pub name: String,
    /// Restart it only in this phase.
    pub only_if_phase: Option<&'static str>,
}

/// Reads a `restart_pod`'s parameters; the error names the parameter at
/// fault.
pub fn restart_pod_params(params: &HashMap<String, String>) -> Result<RestartPodParams, String> {
    let mut keys: Vec<&String> = params.keys().collect();
    keys.sort();
    if let Some(unknown) = keys.into_iter().find(|k| !matches!(k.as_str(), "namespace" | "name" | "only_if_phase")) {
        return Err(format!("unknown parameter `{unknown}` (restart_pod takes {PARAMS})"));
    }
    let required = |key: &str, what: &str| -> Result<String, String> {
        let value = params.get(key).ok_or_else(|| format!("{key}: missing; name the {what}"))?.trim();
        if value.is_empty() {
            return Err(format!("{key}: empty; name the {what}"));
        }
        Ok(value.to_owned())
    };
    let namespace = required("namespace", "pod's namespace")?;
    if !dns_label(&namespace) {
        return Err(format!(
            "namespace: `{namespace}` is not a namespace (lower-case letters, digits and '-', at most 63)"
        ));
    }
    let name = required("name", "pod")?;
    if !dns_subdomain(&name) {
        return Err(format!("name: `{name}` is not a pod name (lower-case letters, digits, '-' and '.', at most 253)"));
    }
    let only_if_phase = match params.get("only_if_phase").map(|p| p.trim()) {
        None => None,
        // An empty value (a template that rendered nothing) must not widen
        // the restart to every phase.
        Some("") => return Err("only_if_phase: empty; omit it to restart the pod whatever its phase".to_owned()),
        Some(phase) => Some(PHASES.iter().copied().find(|p| *p == phase).ok_or_else(|| {
            format!("only_if_phase: `{phase}` is not a pod phase (expected one of {})", PHASES.join(", "))
        })?),
    };
    Ok(RestartPodParams { namespace, name, only_if_phase })
}

/// An RFC 1123 label, as namespaces are named.
fn dns_label(s: &str) -> bool {
    let bytes = s.as_bytes();
    (1..=63).contains(&bytes.len())
        && bytes.iter().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// An RFC 1123 subdomain, as pods are named.
fn dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(dns_label)
}

/// Serves `restart_pod`. It is announced with pod watching off too, so that
/// the coordinator hears why it cannot run here rather than that it is
/// unknown.
pub fn register(handlers: &mut Handlers, pods: &Pods) {
    let restarter = pods.restarter.clone();
    let report = pods.report.clone();
    handlers.announce(RESTART_POD, move |request: Request| {
        let restarter = restarter.clone();
        let report = report.clone();
        async move { restart_pod(restarter.as_deref(), &report, &request).await }
    });
}

/// Runs a `restart_pod` directive; never panics on what the API returns.
async fn restart_pod(restarter: Option<&Restarter>, report: &PodsReport, request: &Request) -> Reply {
    let wanted = match restart_pod_params(&request.params) {
        Ok(p) => p,
        Err(e) => return Reply::new(Outcome::Refused, e),
    };
    let mut run = Run::new(report, &request.id, &wanted, request.dry_run);
    let Some(restarter) = restarter else {
        let why = report.status.lock().client.clone();
        return run.reply(
            Outcome::Refused,
            format!("pod watching is off on this agent ({why}): it has no Kubernetes client to restart pods with"),
        );
    };
    run.evidence.insert("agent_node".into(), restarter.node().to_owned());
    run.attempts(restarter, &wanted).await
}

/// One `restart_pod` on its way to a reply.
struct Run<'a> {
    report: &'a PodsReport,
    /// Who asked, in `/debug/state`.
    by: String,
    /// `<namespace>/<name>`.
    pod: String,
    dry_run: bool,
    evidence: BTreeMap<String, String>,
}

impl<'a> Run<'a> {
    fn new(report: &'a PodsReport, directive_id: &str, wanted: &RestartPodParams, dry_run: bool) -> Run<'a> {
        let pod = format!("{}/{}", wanted.namespace, wanted.name);
        let evidence = BTreeMap::from([
            ("pod".to_owned(), pod.clone()),
            ("namespace".to_owned(), wanted.namespace.clone()),
            ("name".to_owned(), wanted.name.clone()),
            ("dry_run".to_owned(), dry_run.to_string()),
            ("deleted".to_owned(), "false".to_owned()),
        ]);
        Run { report, by: format!("directive {directive_id}"), pod, dry_run, evidence }
    }

    async fn attempts(&mut self, restarter: &Restarter, wanted: &RestartPodParams) -> Reply {
        let mut read_uid: Option<String> = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let fresh = match restarter.get(&wanted.namespace, &wanted.name).await {
                Ok(Some(pod)) => pod,
                Ok(None) if read_uid.is_some() => {
                    return self.reply(
                        Outcome::Failed,
                        format!("pod {} was deleted by someone else before this agent could", self.pod),
                    );
                }
                Ok(None) => {
                    return self.reply(Outcome::Failed, format!("pod {} does not exist: nothing to restart", self.pod));
                }
                Err(e) => return self.reply(Outcome::Failed, format!("cannot read pod {}: {e}", self.pod)),
            };
            let Some(current) = view::view(&fresh) else {
                return self.reply(Outcome::Failed, format!("pod {} came back without a name", self.pod));
            };
            if let Some(uid) = read_uid.as_deref()
                && uid != current.uid
            {
                return self.reply(
                    Outcome::Failed,
                    format!(
                        "pod {} was replaced (UID {uid}, now {}) before it could be deleted; the new one is left alone",
                        self.pod, current.uid
                    ),
                );
            }
            read_uid = Some(current.uid.clone());
            self.describe(&current);
            if let Err(refusal) = restart::check_phase(&current, restarter.node(), wanted.only_if_phase) {
                return self.refuse(&current, &refusal);
            }
            match restarter.namespace_held(&current.namespace).await {
                Ok(false) => {}
                Ok(true) => return self.refuse(&current, &Refusal::Held("namespace")),
                Err(e) => return self.refuse(&current, &Refusal::NamespaceUnreadable(e)),
            }
            if let Err(refusal) = restarter.budget_check(now()) {
                return self.refuse(&current, &refusal);
            }
            match restarter.delete(&fresh, self.dry_run).await {
                Ok(()) if self.dry_run => {
                    return self.reply(
                        Outcome::DryRun,
                        format!(
                            "dry run: would delete pod {} (UID {}, {}) on node {} so that {} replaces it; \
                             the API server accepted the delete as a dry run",
                            self.pod,
                            current.uid,
                            current.phase,
                            current.node,
                            controller(&current)
                        ),
                    );
                }
                Ok(()) => return self.restarted(restarter, &current),
                Err(DeleteError::Refused(refusal)) => return self.refuse(&current, &refusal),
                Err(DeleteError::Gone) => {
                    return self.reply(
                        Outcome::Failed,
                        format!("pod {} was deleted by someone else just before this agent could", self.pod),
                    );
                }
                Err(DeleteError::Changed(message)) if attempt < ATTEMPTS => {
                    tracing::info!(pod = %self.pod, %message, attempt, "the pod changed just before its delete; reading it again");
                }
                Err(DeleteError::Changed(message)) => {
                    return self.reply(
                        Outcome::Failed,
                        format!("pod {} changed before each of {ATTEMPTS} deletes: {message}", self.pod),
                    );
                }
                Err(DeleteError::Failed(e)) => {
                    let message = format!("the delete of pod {} failed: {e}", self.pod);
                    if !self.dry_run {
                        restart::record_failed(self.report, &current, "delete_failed", &self.by, message.clone());
                    }
                    return self.reply(Outcome::Failed, message);
                }
            }
        }
    }

    /// The pod as read, into the evidence.
    fn describe(&mut self, pod: &PodView) {
        self.evidence.insert("node".into(), pod.node.clone());
        self.evidence.insert("phase".into(), pod.phase.clone());
        self.evidence.insert("uid".into(), pod.uid.clone());
        match &pod.controller {
            Some(c) => self.evidence.insert("controller".into(), c.clone()),
            None => self.evidence.remove("controller"),
        };
    }

    fn refuse(&mut self, pod: &PodView, refusal: &Refusal) -> Reply {
        let message = format!("not restarting pod {}: {refusal}", self.pod);
        self.evidence.insert("reason".into(), refusal.reason().to_owned());
        // A rehearsal's refusal is no refusal of anything: not counted.
        if !self.dry_run {
            restart::record_refused(self.report, pod, refusal, &self.by, message.clone());
        }
        self.reply(Outcome::Refused, message)
    }

    fn restarted(&mut self, restarter: &Restarter, pod: &PodView) -> Reply {
        let used = restarter.budget_used(now());
        let message = format!(
            "deleted pod {} (UID {}, {}) on node {} so that {} replaces it",
            self.pod,
            pod.uid,
            pod.phase,
            pod.node,
            controller(pod)
        );
        restart::record_restarted(self.report, pod, used, &self.by, message.clone());
        self.evidence.insert("deleted".into(), "true".to_owned());
        self.evidence.insert("budget_used".into(), used.to_string());
        self.evidence.insert("budget_max".into(), restarter.max_per_hour().to_string());
        self.reply(Outcome::Succeeded, message)
    }

    fn reply(&mut self, outcome: Outcome, message: String) -> Reply {
        let message = match (self.dry_run, outcome) {
            (true, Outcome::Refused | Outcome::Failed) => format!("dry run: {message}"),
            _ => message,
        };
        Reply { outcome, message, evidence: std::mem::take(&mut self.evidence) }
    }
}

fn controller(pod: &PodView) -> &str {
    pod.controller.as_deref().unwrap_or("its controller")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_pod_is_named_by_namespace_and_name_and_optionally_a_phase() {
        let p = restart_pod_params(&params(&[("namespace", "shop"), ("name", "api-7d-x1.b")])).unwrap();
        assert_eq!(p, RestartPodParams { namespace: "shop".into(), name: "api-7d-x1.b".into(), only_if_phase: None });
        let p =
            restart_pod_params(&params(&[("namespace", " shop\n"), ("name", "api-1 "), ("only_if_phase", "Failed")]))
                .unwrap();
        assert_eq!((p.namespace.as_str(), p.name.as_str(), p.only_if_phase), ("shop", "api-1", Some("Failed")));
        for phase in PHASES {
            let p = restart_pod_params(&params(&[("namespace", "a"), ("name", "b"), ("only_if_phase", phase)]));
            assert_eq!(p.unwrap().only_if_phase, Some(*phase));
        }
    }

    #[test]
    fn bad_parameters_are_refused_naming_the_parameter() {
        let long = "a".repeat(64);
        let cases = [
            (params(&[("name", "api-1")]), "namespace: missing"),
            (params(&[("namespace", "  "), ("name", "api-1")]), "namespace: empty"),
            (params(&[("namespace", "Shop"), ("name", "api-1")]), "namespace: `Shop` is not a namespace"),
            (params(&[("namespace", &long), ("name", "api-1")]), "namespace: `aaaa"),
            (params(&[("namespace", "shop-"), ("name", "api-1")]), "namespace: `shop-` is not a namespace"),
            (params(&[("namespace", "shop")]), "name: missing"),
            (params(&[("namespace", "shop"), ("name", "")]), "name: empty"),
            (params(&[("namespace", "shop"), ("name", "api/1")]), "name: `api/1` is not a pod name"),
            (params(&[("namespace", "shop"), ("name", "api..1")]), "name: `api..1` is not a pod name"),
            (params(&[("namespace", "shop"), ("name", "a b")]), "name: `a b` is not a pod name"),
            (params(&[("namespace", "shop"), ("name", "api-1"), ("only_if_phase", "")]), "only_if_phase: empty"),
            (
                params(&[("namespace", "shop"), ("name", "api-1"), ("only_if_phase", "failed")]),
                "only_if_phase: `failed` is not a pod phase (expected one of Pending, Running, Succeeded, Failed, Unknown)",
            ),
            (
                params(&[("namespace", "shop"), ("name", "api-1"), ("grace", "0")]),
                "unknown parameter `grace` (restart_pod takes namespace, name, only_if_phase)",
            ),
            // The unknown parameter is named before anything else is checked.
            (params(&[("force", "yes")]), "unknown parameter `force`"),
        ];
        for (p, expected) in cases {
            let err = restart_pod_params(&p).unwrap_err();
            assert!(err.starts_with(expected), "{p:?}: {err}");
        }
    }

    #[test]
    fn the_phase_check_is_the_local_rules_with_the_phase_asked_for() {
        let pod = PodView {
            namespace: "shop".into(),
            name: "api-1".into(),
            uid: "u1".into(),
            node: "node-a".into(),
            phase: "Running".into(),
            controller: Some("ReplicaSet/api-7d".into()),
            ..PodView::default()
        };
        assert_eq!(restart::check_phase(&pod, "node-a", None), Ok(()));
        assert_eq!(restart::check_phase(&pod, "node-a", Some("Running")), Ok(()));
        let refusal = restart::check_phase(&pod, "node-a", Some("Failed")).unwrap_err();
        assert_eq!(
            (refusal.reason(), refusal.to_string().as_str()),
            ("not_failed", "its phase is Running, not Failed")
        );
        let refusal = restart::check_phase(&pod, "node-a", Some("Pending")).unwrap_err();
        assert_eq!(refusal.reason(), "phase");
        let elsewhere = restart::check_phase(&pod, "node-b", None).unwrap_err();
        assert_eq!(elsewhere.to_string(), "it is bound to node node-a, not this one");
        let held = PodView { held: true, ..pod.clone() };
        assert_eq!(restart::check_phase(&held, "node-a", None).unwrap_err().reason(), "hold");
        let bare = PodView { controller: None, ..pod };
        assert_eq!(restart::check_phase(&bare, "node-a", None).unwrap_err().reason(), "no_controller");
    }

    #[tokio::test]
    async fn without_a_kubernetes_client_it_is_refused_saying_pod_watching_is_off() {
        let report = PodsReport::default();
        report.status.lock().client = "pods.enabled is false".into();
        let request = |id: &str, p: &[(&str, &str)], dry_run: bool| Request {
            id: id.into(),
            action: RESTART_POD.into(),
            params: params(p),
            dry_run,
        };
        for dry_run in [false, true] {
            let reply =
                restart_pod(None, &report, &request("d1", &[("namespace", "shop"), ("name", "api-1")], dry_run)).await;
            assert_eq!(reply.outcome, Outcome::Refused, "{reply:?}");
            assert!(
                reply
                    .message
                    .contains("pod watching is off on this agent (pods.enabled is false): it has no Kubernetes client"),
                "{}",
                reply.message
            );
            assert_eq!(reply.evidence["pod"], "shop/api-1");
            assert_eq!(reply.evidence["deleted"], "false");
        }
        // Parameters are checked first, with or without a client.
        let reply = restart_pod(None, &report, &request("d2", &[("namespace", "shop")], false)).await;
        assert_eq!((reply.outcome, reply.message.as_str()), (Outcome::Refused, "name: missing; name the pod"));
        assert_eq!(report.status.lock().restarts.refused, 0, "nothing about a pod was decided");
    }
}
