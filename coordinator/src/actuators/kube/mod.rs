//! The Kubernetes actuators: scale, autoscaler bounds, rollout restarts,
//! pod deletion and eviction, ConfigMap keys, and two evidence kinds (pods,
//! services), spoken to the API server through kube-rs.
//!
//! # Before the rails: `resolve`
//!
//! [`KubeActuator::resolve`] reads the world and changes nothing. Selectors
//! become the named pods they match, each carrying its own annotations and
//! those of its owning workload (Pod → ReplicaSet → Deployment, or
//! StatefulSet, ...) and of its Namespace, so `remedy.dev/hold` on any of
//! them covers the pod. A scale carries its real current replicas, read from
//! the scale subresource, and pod actions carry their pool for percentage
//! budgets. A selector that matches nothing, or would match everything,
//! resolves to no targets at all, which the rails refuse.
//!
//! # Acting: `execute`
//!
//! Every change is written with the field manager [`FIELD_MANAGER`], and the
//! object changed is annotated with [`INCIDENT_ANNOTATION`],
//! [`STEP_ANNOTATION`] and [`CHANGED_AT_ANNOTATION`] (pods being deleted or
//! evicted are not: they are going away). Just before writing, the object is
//! read again: a `remedy.dev/hold` that appeared since the rails decided
//! refuses the action, and so does a person's change. If Remedy changed the
//! object before and the field it is about to set was written since by
//! another field manager (from `metadata.managedFields`), Remedy refuses and
//! names who and when: it never reverses a person's change. Writes carry the
//! resourceVersion that was checked, so a change that lands in between makes
//! the write fail rather than overwrite it; the object is then read and
//! checked again, a few times at most.
//!
//! In dry-run the same checks run and the write goes to the API server as a
//! server-side dry run (`dryRun=All`): validated, admitted (disruption
//! budgets included), never persisted. A refusal is reported as in a live
//! run (`failed`, `refused: ...`), so a rehearsal shows what would stop it.
//!
//! Every API call is bounded by what is left of the call's deadline.

mod configmaps;
mod evidence;
mod fields;
mod pods;
mod selector;
mod workloads;

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, ObjectMeta, PatchParams};
use serde::de::DeserializeOwned;

use super::{ActionCall, ActionReport, ActionStatus, Actuator, Resolved};
use crate::clock::Clock;

/// The field manager every write of Remedy's is recorded under.
pub const FIELD_MANAGER: &str = "remedy";
/// Annotation: the incident a change served.
pub const INCIDENT_ANNOTATION: &str = "remedy.dev/incident";
/// Annotation: the runbook step that made the change.
pub const STEP_ANNOTATION: &str = "remedy.dev/step";
/// Annotation: when Remedy changed the object (RFC 3339, whole seconds, as
/// `metadata.managedFields` times are).
pub const CHANGED_AT_ANNOTATION: &str = "remedy.dev/changed-at";
/// The pod-template annotation `kubectl rollout restart` sets.
pub const RESTARTED_AT_ANNOTATION: &str = "kubectl.kubernetes.io/restartedAt";

/// The action kinds these actuators perform.
pub const KINDS: &[&str] = &[
    "scale",
    "patch_hpa",
    "rollout_restart",
    "delete_pods",
    "evict_pods",
    "patch_configmap",
    "list_pods",
    "list_services",
];

/// Performs the Kubernetes action kinds ([`KINDS`]) with one client.
#[derive(Clone)]
pub struct KubeActuator {
    client: kube::Client,
    /// Dates the changes it makes (`remedy.dev/changed-at`).
    clock: Clock,
}

impl std::fmt::Debug for KubeActuator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeActuator").field("default_namespace", &self.client.default_namespace()).finish()
    }
}

impl KubeActuator {
    /// An actuator acting through `client`, whose credentials decide what it
    /// may do (see the RBAC in `deploy/`).
    ///
    /// The client should not retry on its own: build it with
    /// [`client_from_environment`] or [`client_from_config`]. kube's default
    /// client retries 429 answers, and a 429 from the Eviction API is a
    /// PodDisruptionBudget saying no; retried, it becomes a wait until the
    /// call's deadline (reported as timed out) instead of a refusal that
    /// names the budget. Either way no pod is evicted against its budget.
    pub fn new(client: kube::Client) -> Self {
        KubeActuator { client, clock: Clock::System }
    }

    /// The same actuator, dating its changes by `clock`.
    pub fn with_clock(self, clock: Clock) -> Self {
        KubeActuator { clock, ..self }
    }

    /// When a change made now is said to be made, to the second.
    pub(crate) fn changed_at(&self) -> String {
        fields::rfc3339_seconds(self.clock.now())
    }
}

/// A client for the actuators from `config`, with kube's automatic retries
/// (429, 503, 504) turned off: the actuators decide what an answer means.
/// A 429 from a disruption budget is a refusal, not a transient failure, and
/// a write is never sent twice behind Remedy's back (the engine records
/// what it did once, with its outcome).
pub fn client_from_config(mut config: kube::Config) -> Result<kube::Client, kube::Error> {
    config.default_retry = false;
    kube::Client::try_from(config)
}

/// No Kubernetes API could be reached from this process's configuration.
#[derive(Debug, thiserror::Error)]
#[error(
    "no Kubernetes API: tried the kubeconfig ({kubeconfig}) and the in-cluster service account ({in_cluster}): {cause}"
)]
pub struct ClientError {
    kubeconfig: String,
    in_cluster: String,
    cause: String,
}

/// A client from the kubeconfig (`KUBECONFIG`, else `~/.kube/config`) or,
/// failing that, from the in-cluster service account (what
/// `kube::Client::try_default` does), through [`client_from_config`]. The
/// error says what was tried, so an operator can tell a missing file from a
/// missing service account.
pub async fn client_from_environment() -> Result<kube::Client, ClientError> {
    let config = config_from_environment().await?;
    client_from_config(config.clone()).map_err(|e| config_error(&config, "environment", chain(&e)))
}

/// The configuration [`client_from_environment`] uses, for callers that
/// build other clients from it too.
pub async fn config_from_environment() -> Result<kube::Config, ClientError> {
    let kubeconfig = match std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        Some(path) => format!("KUBECONFIG={}", path.to_string_lossy()),
        None => "KUBECONFIG unset, so ~/.kube/config".to_owned(),
    };
    let in_cluster = match std::env::var("KUBERNETES_SERVICE_HOST") {
        Ok(host) if !host.is_empty() => format!("KUBERNETES_SERVICE_HOST={host}"),
        _ => "KUBERNETES_SERVICE_HOST unset".to_owned(),
    };
    kube::Config::infer().await.map_err(|e| ClientError { kubeconfig, in_cluster, cause: chain(&e) })
}

/// A client from the kubeconfig file at `path` (its current context),
/// through [`client_from_config`].
pub async fn client_from_kubeconfig(path: &std::path::Path) -> Result<kube::Client, ClientError> {
    let config = config_from_kubeconfig(path).await?;
    client_from_config(config.clone()).map_err(|e| config_error(&config, &path.display().to_string(), chain(&e)))
}

/// The configuration of the kubeconfig file at `path` (its current context).
pub async fn config_from_kubeconfig(path: &std::path::Path) -> Result<kube::Config, ClientError> {
    let error = |cause: String| ClientError {
        kubeconfig: path.display().to_string(),
        in_cluster: "not tried: a kubeconfig was named".to_owned(),
        cause,
    };
    let file = kube::config::Kubeconfig::read_from(path).map_err(|e| error(chain(&e)))?;
    kube::Config::from_custom_kubeconfig(file, &kube::config::KubeConfigOptions::default())
        .await
        .map_err(|e| error(chain(&e)))
}

fn config_error(config: &kube::Config, source: &str, cause: String) -> ClientError {
    ClientError { kubeconfig: source.to_owned(), in_cluster: format!("server {}", config.cluster_url), cause }
}

#[tonic::async_trait]
impl Actuator for KubeActuator {
    fn kinds(&self) -> &'static [&'static str] {
        KINDS
    }

    /// Change kinds only: evidence kinds read, and reading is not weighed
    /// against holds (the engine names their namespace as the target).
    async fn resolve(&self, call: &ActionCall) -> Option<Result<Resolved, String>> {
        let deadline = Deadline::of(call);
        let found = match call.kind.as_str() {
            "scale" => workloads::resolve_scale(self, call, deadline).await,
            "rollout_restart" => workloads::resolve_restart(self, call, deadline).await,
            "patch_hpa" => workloads::resolve_hpa(self, call, deadline).await,
            "patch_configmap" => configmaps::resolve(self, call, deadline).await,
            "delete_pods" => pods::resolve_delete(self, call, deadline).await,
            "evict_pods" => pods::resolve_evict(self, call, deadline).await,
            _ => return None,
        };
        Some(found.map_err(|f| f.message()))
    }

    async fn execute(&self, call: &ActionCall) -> ActionReport {
        let deadline = Deadline::of(call);
        let done = match call.kind.as_str() {
            "scale" => workloads::scale(self, call, deadline).await,
            "rollout_restart" => workloads::restart(self, call, deadline).await,
            "patch_hpa" => workloads::patch_hpa(self, call, deadline).await,
            "patch_configmap" => configmaps::patch(self, call, deadline).await,
            "delete_pods" => pods::delete(self, call, deadline).await,
            "evict_pods" => pods::evict(self, call, deadline).await,
            "list_pods" => evidence::list_pods(self, call, deadline).await,
            "list_services" => evidence::list_services(self, call, deadline).await,
            other => Err(Failure::Invalid(format!("the Kubernetes actuator does not perform `{other}`"))),
        };
        done.unwrap_or_else(Failure::report)
    }
}

// ---------------------------------------------------------------- shared pieces

/// Why an action did not happen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The parameters are wrong; nothing was read or written.
    Invalid(String),
    /// A guard the actuator keeps itself (a hold, a person's change, a
    /// disruption budget) stopped it.
    Refused(String),
    /// The API server said no, or the object is missing.
    Failed(String),
    /// The deadline passed.
    TimedOut(String),
    /// The object changed between the checks and the write, so the write
    /// was refused by its resourceVersion; see [`on_conflict_look_again`].
    Conflict(String),
}

impl Failure {
    pub(crate) fn message(&self) -> String {
        match self {
            Failure::Invalid(m) | Failure::Failed(m) | Failure::TimedOut(m) | Failure::Conflict(m) => m.clone(),
            Failure::Refused(m) => format!("refused: {m}"),
        }
    }

    fn report(self) -> ActionReport {
        let status = match &self {
            Failure::Invalid(_) => ActionStatus::Invalid,
            Failure::Refused(_) | Failure::Failed(_) | Failure::Conflict(_) => ActionStatus::Failed,
            Failure::TimedOut(_) => ActionStatus::TimedOut,
        };
        let report = ActionReport::new(status, self.message());
        match self {
            Failure::Refused(_) => report.with("refused", true),
            _ => report,
        }
    }
}

/// How many times a change is read, checked and written when the object
/// keeps changing under it.
const WRITE_ATTEMPTS: u32 = 5;
/// The pause before the second attempt; it doubles for each next one
/// (40, 80, 160, 320 ms): a Deployment in a rollout has its status written
/// several times a second, and each write moves its resourceVersion.
const CONFLICT_PAUSE: Duration = Duration::from_millis(40);

/// Runs `attempt` (read, check, write) again when its write conflicted:
/// the object moved on (a controller updated its status, a person edited
/// it) after it was checked. Each attempt reads and checks afresh, holds
/// and people's changes included, so nothing is written blindly. The
/// attempts' API calls stay within the call's deadline.
pub(crate) async fn on_conflict_look_again<T, F, Fut>(mut attempt: F) -> Result<T, Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let mut tries = 1;
    loop {
        match attempt().await {
            Err(Failure::Conflict(_)) if tries < WRITE_ATTEMPTS => {
                tokio::time::sleep(CONFLICT_PAUSE * 2u32.pow(tries - 1)).await;
                tries += 1;
            }
            Err(Failure::Conflict(m)) => return Err(Failure::Failed(format!("{m} ({tries} attempts)"))),
            other => return other,
        }
    }
}

/// When the call must be over; every API call gets what is left.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    at: tokio::time::Instant,
    budget: Duration,
}

impl Deadline {
    pub(crate) fn of(call: &ActionCall) -> Self {
        let now = tokio::time::Instant::now();
        // A deadline too large to add (a misconfigured caller) is a day.
        let at = now.checked_add(call.deadline).unwrap_or_else(|| now + Duration::from_secs(86_400));
        Deadline { at, budget: call.deadline }
    }

    /// Runs one API call within the deadline; the API's own errors are left
    /// to the caller (some are answers: 404, 409, 429).
    pub(crate) async fn within<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<Result<T, kube::Error>, Failure> {
        tokio::time::timeout_at(self.at, call)
            .await
            .map_err(|_| Failure::TimedOut(format!("{what}: no answer within {:?}", self.budget)))
    }

    /// Runs one API call within the deadline; any API error fails it.
    pub(crate) async fn api<T>(
        &self,
        what: &str,
        call: impl Future<Output = Result<T, kube::Error>>,
    ) -> Result<T, Failure> {
        self.within(what, call).await?.map_err(|e| api_failure(what, &e))
    }
}

/// An API error as a failure naming what was being done.
pub(crate) fn api_failure(what: &str, e: &kube::Error) -> Failure {
    Failure::Failed(format!("{what}: {}", api_message(e)))
}

/// The API server's own message for an error, or the cause's chain.
pub(crate) fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) if !status.message.is_empty() => format!("{} ({})", status.message, status.code),
        other => chain(other),
    }
}

/// The HTTP status the API server answered with, if it answered.
pub(crate) fn api_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(status) => Some(status.code),
        _ => None,
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let next = c.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        cause = c.source();
    }
    text
}

/// Typed parameters from the call, or why they are not.
pub(crate) fn params<T: DeserializeOwned>(call: &ActionCall) -> Result<T, Failure> {
    serde_json::from_value(call.params.clone()).map_err(|e| Failure::Invalid(format!("{} parameters: {e}", call.kind)))
}

/// A namespace name: a DNS-1123 label. Checked before it goes into a URL.
pub(crate) fn check_namespace(namespace: &str) -> Result<(), Failure> {
    let ok = !namespace.is_empty()
        && namespace.len() <= 63
        && namespace.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !namespace.starts_with('-')
        && !namespace.ends_with('-');
    if ok { Ok(()) } else { Err(Failure::Invalid(format!("`{namespace}` is not a namespace name"))) }
}

/// An object name: a DNS-1123 subdomain. Checked before it goes into a URL
/// (a name such as `../x` must never reach another path).
pub(crate) fn check_name(what: &str, name: &str) -> Result<(), Failure> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.split('.').all(|part| !part.is_empty() && !part.starts_with('-') && !part.ends_with('-'));
    if ok { Ok(()) } else { Err(Failure::Invalid(format!("`{name}` is not a {what} name"))) }
}

/// A replica count as the API takes it.
pub(crate) fn replicas(what: &str, n: u32) -> Result<i32, Failure> {
    i32::try_from(n).map_err(|_| Failure::Invalid(format!("{what} {n} is more than the API accepts")))
}

/// The write options of every change: Remedy's field manager, and a
/// server-side dry run when nothing may change.
pub(crate) fn patch_params(dry_run: bool) -> PatchParams {
    PatchParams { field_manager: Some(FIELD_MANAGER.to_owned()), dry_run, ..PatchParams::default() }
}

/// The annotations Remedy leaves on what it changes.
pub(crate) fn change_annotations(call: &ActionCall, changed_at: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (INCIDENT_ANNOTATION.to_owned(), call.incident_id.clone()),
        (STEP_ANNOTATION.to_owned(), call.step_id.clone()),
        (CHANGED_AT_ANNOTATION.to_owned(), changed_at.to_owned()),
    ])
}

impl KubeActuator {
    pub(crate) fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The annotations of a namespace, which cover everything in it.
    pub(crate) async fn namespace_annotations(
        &self,
        namespace: &str,
        deadline: Deadline,
    ) -> Result<BTreeMap<String, String>, Failure> {
        let api: Api<Namespace> = Api::all(self.client());
        let what = format!("reading Namespace {namespace}");
        match deadline.api(&what, api.get_metadata_opt(namespace)).await? {
            Some(ns) => Ok(ns.metadata.annotations.unwrap_or_default()),
            None => Err(Failure::Failed(format!("Namespace {namespace} not found"))),
        }
    }

    /// The metadata of any namespaced object named by reference (an owner,
    /// an autoscaler's target); `None` when it is gone. The resource's
    /// plural is guessed from its kind, right for the built-in workloads.
    pub(crate) async fn object_metadata(
        &self,
        namespace: &str,
        api_version: &str,
        kind: &str,
        name: &str,
        deadline: Deadline,
    ) -> Result<Option<ObjectMeta>, Failure> {
        let what = format!("{kind} {namespace}/{name}");
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let plain = |s: &str| s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        // A reference comes from an object anyone with write access may have
        // edited: it must not reach another path.
        if kind.is_empty() || !kind.bytes().all(|b| b.is_ascii_alphanumeric()) || !plain(group) || !plain(version) {
            return Err(Failure::Failed(format!("cannot follow the reference to {api_version} {what}")));
        }
        check_name(kind, name).map_err(|f| Failure::Failed(f.message()))?;
        let resource = ApiResource::from_gvk(&GroupVersionKind::gvk(group, version, kind));
        let api: Api<DynamicObject> = Api::namespaced_with(self.client(), namespace, &resource);
        let found = deadline.api(&format!("reading {what}"), api.get_metadata_opt(name)).await?;
        Ok(found.map(|m| m.metadata))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An actuator whose API server is nowhere: nothing here may reach it.
    fn offline() -> KubeActuator {
        let config = kube::Config::new("https://127.0.0.1:9".parse().unwrap_or_default());
        KubeActuator::new(client_from_config(config).expect("a client needs no connection to be built"))
    }

    fn call(kind: &str, params: serde_json::Value) -> ActionCall {
        ActionCall {
            incident_id: "INC-000001".into(),
            step_id: "s".into(),
            kind: kind.into(),
            params,
            dry_run: false,
            deadline: Duration::from_secs(2),
            accepted_risk: None,
        }
    }

    #[tokio::test]
    async fn bad_parameters_are_invalid_before_any_request() {
        let actuator = offline();
        for kind in KINDS {
            for params in [serde_json::json!({ "bogus": 1 }), serde_json::Value::Null, serde_json::json!([1, 2])] {
                let report = actuator.execute(&call(kind, params.clone())).await;
                assert_eq!(report.status, ActionStatus::Invalid, "{kind} {params}: {report:?}");
                match actuator.resolve(&call(kind, params.clone())).await {
                    None => assert!(kind.starts_with("list_"), "{kind} resolves"),
                    Some(found) => assert!(found.is_err(), "{kind} {params}: {found:?}"),
                }
            }
        }
        let bad = [
            ("scale", serde_json::json!({ "namespace": "Shop", "name": "api", "replicas": 1 })),
            ("scale", serde_json::json!({ "namespace": "shop", "name": "a/b", "replicas": 1 })),
            ("scale", serde_json::json!({ "namespace": "shop", "name": "api", "replicas": 3_000_000_000u32 })),
            (
                "patch_hpa",
                serde_json::json!({ "namespace": "shop", "name": "api", "min_replicas": 0, "max_replicas": 3 }),
            ),
            ("delete_pods", serde_json::json!({ "namespace": "shop", "selector": "app=api", "max_count": 0 })),
            (
                "evict_pods",
                serde_json::json!({ "namespace": "shop", "selector": "app=api", "node": "a,b", "max_count": 1 }),
            ),
            ("patch_configmap", serde_json::json!({ "namespace": "shop", "name": "cm", "data": {} })),
            ("list_pods", serde_json::json!({ "namespace": "shop", "selector": "app in (" })),
        ];
        for (kind, params) in bad {
            let report = actuator.execute(&call(kind, params.clone())).await;
            assert_eq!(report.status, ActionStatus::Invalid, "{kind} {params}: {report:?}");
        }
        let report = actuator.execute(&call("pg_failover", serde_json::json!({}))).await;
        assert_eq!(report.status, ActionStatus::Invalid);
    }

    #[test]
    fn names_that_could_leave_their_path_are_invalid() {
        assert!(check_name("Deployment", "api").is_ok());
        assert!(check_name("Deployment", "api.v2-x").is_ok());
        for bad in ["", "../x", "a/b", "API", "-a", "a..b", "a b", "*"] {
            assert!(check_name("Deployment", bad).is_err(), "{bad:?}");
        }
        assert!(check_namespace("shop-1").is_ok());
        for bad in ["", "a.b", "Shop", "-a", &"x".repeat(64)] {
            assert!(check_namespace(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn replicas_beyond_the_api_range_are_invalid() {
        assert_eq!(replicas("replicas", 5), Ok(5));
        assert!(matches!(replicas("replicas", u32::MAX), Err(Failure::Invalid(_))));
    }

    #[tokio::test]
    async fn conflicts_are_looked_at_again_a_few_times_then_fail() {
        let mut calls = 0;
        let result: Result<(), Failure> = on_conflict_look_again(|| {
            calls += 1;
            async { Err(Failure::Conflict("moved".into())) }
        })
        .await;
        assert_eq!(calls, WRITE_ATTEMPTS);
        assert_eq!(result, Err(Failure::Failed("moved (5 attempts)".into())));
        let mut calls = 0;
        let result = on_conflict_look_again(|| {
            calls += 1;
            let n = calls;
            async move { if n < 2 { Err(Failure::Conflict("moved".into())) } else { Ok(n) } }
        })
        .await;
        assert_eq!(result, Ok(2));
        let result: Result<(), Failure> =
            on_conflict_look_again(|| async { Err(Failure::Refused("held".into())) }).await;
        assert_eq!(result, Err(Failure::Refused("held".into())));
    }

    #[test]
    fn a_refusal_is_a_failed_report_that_says_refused() {
        let report = Failure::Refused("held".into()).report();
        assert_eq!(report.status, ActionStatus::Failed);
        assert_eq!(report.message, "refused: held");
        assert_eq!(report.evidence["refused"], "true");
        assert_eq!(Failure::Invalid("x".into()).report().status, ActionStatus::Invalid);
        assert_eq!(Failure::TimedOut("x".into()).report().status, ActionStatus::TimedOut);
    }
}
