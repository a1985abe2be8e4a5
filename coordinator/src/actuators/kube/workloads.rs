//! `scale` (Deployment or StatefulSet, through the scale subresource),
//! `rollout_restart` (the pod-template annotation `kubectl rollout restart`
//! sets) and `patch_hpa` (an autoscaler's bounds).

use std::collections::BTreeMap;
use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Api, Patch};
use kube::{Resource, ResourceExt};
use remedy_shared::guard::{CapacityChange, TargetRef};
use remedy_shared::runbook::{PatchHpa, RolloutRestart, Scale, WorkloadKind};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::fields::{hold, later_change, merged};
use super::{
    ActionCall, ActionReport, ActionStatus, Deadline, Failure, KubeActuator, RESTARTED_AT_ANNOTATION, Resolved,
    api_code, api_failure, api_message, change_annotations, check_name, check_namespace, on_conflict_look_again,
    params, patch_params, replicas,
};

/// A workload that can be scaled and restarted.
pub(crate) trait Workload:
    Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static
{
    /// The pod template's `restartedAt`, if it was ever restarted.
    fn restarted_at(&self) -> Option<String>;
    /// Whether its rollouts are paused (a Deployment's `spec.paused`).
    fn paused(&self) -> bool {
        false
    }
}

impl Workload for Deployment {
    fn restarted_at(&self) -> Option<String> {
        let template = self.spec.as_ref()?.template.metadata.as_ref()?;
        template.annotations.as_ref()?.get(RESTARTED_AT_ANNOTATION).cloned()
    }

    fn paused(&self) -> bool {
        self.spec.as_ref().and_then(|s| s.paused).unwrap_or(false)
    }
}

impl Workload for StatefulSet {
    fn restarted_at(&self) -> Option<String> {
        let template = self.spec.as_ref()?.template.metadata.as_ref()?;
        template.annotations.as_ref()?.get(RESTARTED_AT_ANNOTATION).cloned()
    }
}

fn kind_name(kind: WorkloadKind) -> &'static str {
    match kind {
        WorkloadKind::Deployment => "Deployment",
        WorkloadKind::StatefulSet => "StatefulSet",
    }
}

/// `Kind ns/name`, as messages name objects.
pub(crate) fn describe(kind: &str, namespace: &str, name: &str) -> String {
    format!("{kind} {namespace}/{name}")
}

/// An object as the rails see it: its labels, and its annotations merged
/// over those of `around` (its namespace, its scale target...).
pub(crate) fn target(
    kind: &str,
    namespace: &str,
    meta: &kube::api::ObjectMeta,
    around: &[&BTreeMap<String, String>],
) -> TargetRef {
    let own = meta.annotations.clone().unwrap_or_default();
    TargetRef {
        kind: kind.to_owned(),
        namespace: Some(namespace.to_owned()),
        name: meta.name.clone().unwrap_or_default(),
        labels: meta.labels.clone().unwrap_or_default(),
        annotations: merged(around.iter().copied().chain([&own])),
    }
}

/// Reads an object and its namespace's annotations; a missing object is
/// named (`Deployment shop/api not found`).
async fn read<K>(
    a: &KubeActuator,
    namespace: &str,
    name: &str,
    deadline: Deadline,
) -> Result<(K, BTreeMap<String, String>), Failure>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let what = describe(&K::kind(&()), namespace, name);
    let api: Api<K> = Api::namespaced(a.client(), namespace);
    let object = deadline
        .api(&format!("reading {what}"), api.get_opt(name))
        .await?
        .ok_or_else(|| Failure::Failed(format!("{what} not found")))?;
    let ns = a.namespace_annotations(namespace, deadline).await?;
    Ok((object, ns))
}

/// Refuses when the object, or anything around it, is on hold. `around`
/// goes from the outside in (namespace first), so the hold named is the
/// widest one, where a person is likeliest to have put it.
pub(crate) fn refuse_if_held(
    what: &str,
    meta: &kube::api::ObjectMeta,
    around: &[(String, &BTreeMap<String, String>)],
) -> Result<(), Failure> {
    let own = meta.annotations.clone().unwrap_or_default();
    let layers = around.iter().map(|(on, a)| (on.clone(), *a)).chain(std::iter::once((what.to_owned(), &own)));
    match hold(what, layers) {
        Some(message) => Err(Failure::Refused(message)),
        None => Ok(()),
    }
}

/// Refuses when a field Remedy is about to change was written by someone
/// else since Remedy's last change of the object.
pub(crate) fn refuse_if_changed_by_someone(
    what: &str,
    meta: &kube::api::ObjectMeta,
    fields: &[Vec<&str>],
) -> Result<(), Failure> {
    match later_change(meta, fields) {
        Ok(None) => Ok(()),
        Ok(Some(change)) => Err(Failure::Refused(format!("{what}: {change}"))),
        Err(why) => Err(Failure::Refused(format!("{what}: {why}"))),
    }
}

/// The failure of a write: a conflict means the object changed after it was
/// checked, and nothing was written.
pub(crate) fn write_failure(what: &str, e: &kube::Error) -> Failure {
    if api_code(e) == Some(409) {
        return Failure::Conflict(format!("{what} kept changing while Remedy was about to write it; nothing written"));
    }
    api_failure(&format!("writing {what}"), e)
}

/// Writes Remedy's annotations on an object it changed. A failure here does
/// not undo the change: it is reported with it.
async fn annotate<K>(
    api: &Api<K>,
    name: &str,
    call: &ActionCall,
    changed_at: &str,
    deadline: Deadline,
) -> Option<String>
where
    K: Clone + DeserializeOwned + Debug,
{
    let patch = json!({ "metadata": { "annotations": change_annotations(call, changed_at) } });
    match deadline.within("annotating", api.patch(name, &patch_params(false), &Patch::Merge(&patch))).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(api_message(&e)),
        Err(f) => Some(f.message()),
    }
}

// ---------------------------------------------------------------- scale

pub(crate) async fn resolve_scale(a: &KubeActuator, call: &ActionCall, d: Deadline) -> Result<Resolved, Failure> {
    let p: Scale = params(call)?;
    check_namespace(&p.namespace)?;
    check_name(kind_name(p.kind), &p.name)?;
    match p.kind {
        WorkloadKind::Deployment => resolve_scale_of::<Deployment>(a, &p, d).await,
        WorkloadKind::StatefulSet => resolve_scale_of::<StatefulSet>(a, &p, d).await,
    }
}

async fn resolve_scale_of<K: Workload>(a: &KubeActuator, p: &Scale, d: Deadline) -> Result<Resolved, Failure> {
    let (object, ns) = read::<K>(a, &p.namespace, &p.name, d).await?;
    let api: Api<K> = Api::namespaced(a.client(), &p.namespace);
    let what = describe(&K::kind(&()), &p.namespace, &p.name);
    let current = current_replicas(&api, &p.name, &what, d).await?;
    Ok(Resolved {
        targets: vec![target(&K::kind(&()), &p.namespace, object.meta(), &[&ns])],
        capacity: Some(CapacityChange { current, desired: p.replicas, floor: Some(p.floor), ceiling: p.ceiling }),
        population: None,
        risk: None,
    })
}

/// `spec.replicas` from the scale subresource.
async fn current_replicas<K>(api: &Api<K>, name: &str, what: &str, d: Deadline) -> Result<u32, Failure>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    let scale = d.api(&format!("reading the scale of {what}"), api.get_scale(name)).await?;
    let replicas = scale.spec.and_then(|s| s.replicas).unwrap_or(0);
    u32::try_from(replicas).map_err(|_| Failure::Failed(format!("{what} reports {replicas} replicas")))
}

pub(crate) async fn scale(a: &KubeActuator, call: &ActionCall, d: Deadline) -> Result<ActionReport, Failure> {
    let p: Scale = params(call)?;
    check_namespace(&p.namespace)?;
    check_name(kind_name(p.kind), &p.name)?;
    replicas("replicas", p.replicas)?;
    match p.kind {
        WorkloadKind::Deployment => on_conflict_look_again(|| scale_of::<Deployment>(a, call, &p, d)).await,
        WorkloadKind::StatefulSet => on_conflict_look_again(|| scale_of::<StatefulSet>(a, call, &p, d)).await,
    }
}

async fn scale_of<K: Workload>(
    a: &KubeActuator,
    call: &ActionCall,
    p: &Scale,
    d: Deadline,
) -> Result<ActionReport, Failure> {
    let what = describe(&K::kind(&()), &p.namespace, &p.name);
    let (object, ns) = read::<K>(a, &p.namespace, &p.name, d).await?;
    refuse_if_held(&what, object.meta(), &[(format!("Namespace {}", p.namespace), &ns)])?;
    let api: Api<K> = Api::namespaced(a.client(), &p.namespace);
    let current = current_replicas(&api, &p.name, &what, d).await?;
    let report = |status: ActionStatus, message: String, after: u32| {
        ActionReport::new(status, message).with("target", &what).with("before", current).with("after", after)
    };
    if current == p.replicas {
        let status = if call.dry_run { ActionStatus::DryRun } else { ActionStatus::Succeeded };
        return Ok(report(status, format!("{what} already has {current} replicas; nothing to change"), current)
            .with("changed", false));
    }
    refuse_outside_bounds(&what, p, current)?;
    refuse_if_changed_by_someone(&what, object.meta(), &[vec!["spec", "replicas"]])?;
    let changed_at = a.changed_at();
    let patch = json!({
        "metadata": { "resourceVersion": object.resource_version() },
        "spec": { "replicas": replicas("replicas", p.replicas)? },
    });
    let written = d
        .within(
            &format!("scaling {what}"),
            api.patch_scale(&p.name, &patch_params(call.dry_run), &Patch::Merge(&patch)),
        )
        .await?
        .map_err(|e| write_failure(&what, &e))?;
    let after = written.spec.and_then(|s| s.replicas).and_then(|r| u32::try_from(r).ok()).unwrap_or(p.replicas);
    if call.dry_run {
        return Ok(report(ActionStatus::DryRun, format!("would scale {what} from {current} to {after}"), after)
            .with("changed", false));
    }
    let message = format!("scaled {what} from {current} to {after}");
    Ok(annotated(report(ActionStatus::Succeeded, message, after), annotate(&api, &p.name, call, &changed_at, d).await)
        .with("changed", true)
        .with("changed_at", changed_at))
}

/// The runbook's own floor and ceiling, kept here too should a caller skip
/// the rails, with the rails' reading: a change that moves towards the
/// bounds helps and is allowed (3 → 4 with a floor of 5); one that moves
/// away past them is not. The policy's bounds are the rails' alone.
fn refuse_outside_bounds(what: &str, p: &Scale, current: u32) -> Result<(), Failure> {
    if let Some(ceiling) = p.ceiling
        && p.floor > ceiling
    {
        return Err(Failure::Invalid(format!("floor {} is above ceiling {ceiling}", p.floor)));
    }
    if p.replicas < p.floor && p.replicas < current {
        return Err(Failure::Refused(format!(
            "scaling {what} from {current} to {} would take it below its floor of {}",
            p.replicas, p.floor
        )));
    }
    if let Some(ceiling) = p.ceiling
        && p.replicas > ceiling
        && p.replicas > current
    {
        return Err(Failure::Refused(format!(
            "scaling {what} from {current} to {} would take it above its ceiling of {ceiling}",
            p.replicas
        )));
    }
    Ok(())
}

/// A report that says whether Remedy's annotations were written.
fn annotated(report: ActionReport, failure: Option<String>) -> ActionReport {
    match failure {
        None => report.with("annotated", true),
        Some(why) => {
            let message = format!("{} (its remedy.dev annotations could not be written: {why})", report.message);
            ActionReport { message, ..report }.with("annotated", false)
        }
    }
}

// ---------------------------------------------------------------- rollout_restart

pub(crate) async fn resolve_restart(a: &KubeActuator, call: &ActionCall, d: Deadline) -> Result<Resolved, Failure> {
    let p: RolloutRestart = params(call)?;
    check_namespace(&p.namespace)?;
    check_name(kind_name(p.kind), &p.name)?;
    let (kind, meta, ns) = match p.kind {
        WorkloadKind::Deployment => {
            let (o, ns) = read::<Deployment>(a, &p.namespace, &p.name, d).await?;
            ("Deployment", o.metadata, ns)
        }
        WorkloadKind::StatefulSet => {
            let (o, ns) = read::<StatefulSet>(a, &p.namespace, &p.name, d).await?;
            ("StatefulSet", o.metadata, ns)
        }
    };
    Ok(Resolved { targets: vec![target(kind, &p.namespace, &meta, &[&ns])], ..Resolved::default() })
}

pub(crate) async fn restart(a: &KubeActuator, call: &ActionCall, d: Deadline) -> Result<ActionReport, Failure> {
    let p: RolloutRestart = params(call)?;
    check_namespace(&p.namespace)?;
    check_name(kind_name(p.kind), &p.name)?;
    match p.kind {
        WorkloadKind::Deployment => on_conflict_look_again(|| restart_of::<Deployment>(a, call, &p, d)).await,
        WorkloadKind::StatefulSet => on_conflict_look_again(|| restart_of::<StatefulSet>(a, call, &p, d)).await,
    }
}

/// A restart sets a new value and reverses nobody's, so only holds are
/// checked, not who wrote `restartedAt` last.
async fn restart_of<K: Workload>(
    a: &KubeActuator,
    call: &ActionCall,
    p: &RolloutRestart,
    d: Deadline,
) -> Result<ActionReport, Failure> {
    let what = describe(&K::kind(&()), &p.namespace, &p.name);
    let (object, ns) = read::<K>(a, &p.namespace, &p.name, d).await?;
    refuse_if_held(&what, object.meta(), &[(format!("Namespace {}", p.namespace), &ns)])?;
    let before = object.restarted_at();
    let changed_at = a.changed_at();
    let patch = json!({
        "metadata": {
            "resourceVersion": object.resource_version(),
            "annotations": change_annotations(call, &changed_at),
        },
        "spec": { "template": { "metadata": { "annotations": { RESTARTED_AT_ANNOTATION: changed_at } } } },
    });
    let api: Api<K> = Api::namespaced(a.client(), &p.namespace);
    d.within(&format!("restarting {what}"), api.patch(&p.name, &patch_params(call.dry_run), &Patch::Merge(&patch)))
        .await?
        .map_err(|e| write_failure(&what, &e))?;
    let paused = if object.paused() { " (its rollouts are paused: the restart waits until they resume)" } else { "" };
    let (status, message) = if call.dry_run {
        (ActionStatus::DryRun, format!("would restart {what}{paused}"))
    } else {
        (ActionStatus::Succeeded, format!("restarted {what} ({RESTARTED_AT_ANNOTATION}={changed_at}){paused}"))
    };
    Ok(ActionReport::new(status, message)
        .with("target", &what)
        .with("restarted_at_before", before.as_deref().unwrap_or("never"))
        .with("restarted_at", if call.dry_run { before.unwrap_or_else(|| "never".into()) } else { changed_at.clone() })
        .with("paused", object.paused())
        .with("changed", !call.dry_run))
}

// ---------------------------------------------------------------- patch_hpa

const HPA: &str = "HorizontalPodAutoscaler";

/// The annotations of what the autoscaler scales, so a hold on a Deployment
/// covers its autoscaler too. A missing target adds nothing.
async fn scale_target_annotations(
    a: &KubeActuator,
    namespace: &str,
    hpa: &HorizontalPodAutoscaler,
    d: Deadline,
) -> Result<Option<(String, BTreeMap<String, String>)>, Failure> {
    let Some(r) = hpa.spec.as_ref().map(|s| &s.scale_target_ref) else { return Ok(None) };
    let api_version = r.api_version.clone().unwrap_or_else(|| "apps/v1".to_owned());
    let meta = a.object_metadata(namespace, &api_version, &r.kind, &r.name, d).await?;
    Ok(meta.map(|m| (describe(&r.kind, namespace, &r.name), m.annotations.unwrap_or_default())))
}

fn hpa_params(call: &ActionCall) -> Result<PatchHpa, Failure> {
    let p: PatchHpa = params(call)?;
    check_namespace(&p.namespace)?;
    check_name(HPA, &p.name)?;
    replicas("min_replicas", p.min_replicas)?;
    replicas("max_replicas", p.max_replicas)?;
    if p.min_replicas < 1 {
        return Err(Failure::Invalid("min_replicas must be at least 1".to_owned()));
    }
    if p.min_replicas > p.max_replicas {
        return Err(Failure::Invalid(format!(
            "min_replicas {} is more than max_replicas {}",
            p.min_replicas, p.max_replicas
        )));
    }
    Ok(p)
}

pub(crate) async fn resolve_hpa(a: &KubeActuator, call: &ActionCall, d: Deadline) -> Result<Resolved, Failure> {
    let p = hpa_params(call)?;
    let (hpa, ns) = read::<HorizontalPodAutoscaler>(a, &p.namespace, &p.name, d).await?;
    let scaled = scale_target_annotations(a, &p.namespace, &hpa, d).await?.map(|(_, ann)| ann).unwrap_or_default();
    Ok(Resolved {
        targets: vec![target(HPA, &p.namespace, &hpa.metadata, &[&ns, &scaled])],
        capacity: None,
        population: None,
        risk: None,
    })
}

pub(crate) async fn patch_hpa(a: &KubeActuator, call: &ActionCall, d: Deadline) -> Result<ActionReport, Failure> {
    let p = hpa_params(call)?;
    on_conflict_look_again(|| patch_hpa_once(a, call, &p, d)).await
}

async fn patch_hpa_once(
    a: &KubeActuator,
    call: &ActionCall,
    p: &PatchHpa,
    d: Deadline,
) -> Result<ActionReport, Failure> {
    let what = describe(HPA, &p.namespace, &p.name);
    let (hpa, ns) = read::<HorizontalPodAutoscaler>(a, &p.namespace, &p.name, d).await?;
    let mut around = vec![(format!("Namespace {}", p.namespace), ns)];
    if let Some(scaled) = scale_target_annotations(a, &p.namespace, &hpa, d).await? {
        around.push(scaled);
    }
    let around: Vec<(String, &BTreeMap<String, String>)> = around.iter().map(|(on, ann)| (on.clone(), ann)).collect();
    refuse_if_held(&what, &hpa.metadata, &around)?;
    let spec = hpa.spec.as_ref();
    let (min_before, max_before) =
        (spec.and_then(|s| s.min_replicas).unwrap_or(1), spec.map(|s| s.max_replicas).unwrap_or(0));
    let (min, max) = (replicas("min_replicas", p.min_replicas)?, replicas("max_replicas", p.max_replicas)?);
    let report = |status: ActionStatus, message: String| {
        ActionReport::new(status, message)
            .with("target", &what)
            .with("min_before", min_before)
            .with("max_before", max_before)
    };
    let mut changing = Vec::new();
    if min != min_before {
        changing.push(vec!["spec", "minReplicas"]);
    }
    if max != max_before {
        changing.push(vec!["spec", "maxReplicas"]);
    }
    if changing.is_empty() {
        let status = if call.dry_run { ActionStatus::DryRun } else { ActionStatus::Succeeded };
        return Ok(report(status, format!("{what} already scales between {min} and {max}; nothing to change"))
            .with("min_after", min)
            .with("max_after", max)
            .with("changed", false));
    }
    refuse_if_changed_by_someone(&what, &hpa.metadata, &changing)?;
    let changed_at = a.changed_at();
    let patch = json!({
        "metadata": {
            "resourceVersion": hpa.resource_version(),
            "annotations": change_annotations(call, &changed_at),
        },
        "spec": { "minReplicas": min, "maxReplicas": max },
    });
    let api: Api<HorizontalPodAutoscaler> = Api::namespaced(a.client(), &p.namespace);
    let written = d
        .within(&format!("patching {what}"), api.patch(&p.name, &patch_params(call.dry_run), &Patch::Merge(&patch)))
        .await?
        .map_err(|e| write_failure(&what, &e))?;
    let spec = written.spec.as_ref();
    let (min_after, max_after) =
        (spec.and_then(|s| s.min_replicas).unwrap_or(min), spec.map_or(max, |s| s.max_replicas));
    let bounds = format!("{min_before}..{max_before} to {min_after}..{max_after}");
    let (status, message) = if call.dry_run {
        (ActionStatus::DryRun, format!("would change {what} from {bounds}"))
    } else {
        (ActionStatus::Succeeded, format!("changed {what} from {bounds}"))
    };
    Ok(report(status, message).with("min_after", min_after).with("max_after", max_after).with("changed", !call.dry_run))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scale(replicas: u32, floor: u32, ceiling: Option<u32>) -> Scale {
        Scale { kind: WorkloadKind::Deployment, namespace: "shop".into(), name: "api".into(), replicas, floor, ceiling }
    }

    #[test]
    fn bounds_refuse_moving_away_and_allow_moving_towards() {
        assert!(refuse_outside_bounds("Deployment shop/api", &scale(4, 5, None), 3).is_ok(), "towards the floor");
        let below = refuse_outside_bounds("Deployment shop/api", &scale(1, 2, None), 3);
        assert!(matches!(below, Err(Failure::Refused(m)) if m.contains("below its floor of 2")));
        let above = refuse_outside_bounds("Deployment shop/api", &scale(12, 1, Some(10)), 3);
        assert!(matches!(above, Err(Failure::Refused(m)) if m.contains("above its ceiling of 10")));
        assert!(
            refuse_outside_bounds("Deployment shop/api", &scale(11, 1, Some(10)), 12).is_ok(),
            "towards the ceiling"
        );
        assert!(matches!(refuse_outside_bounds("x", &scale(3, 5, Some(4)), 3), Err(Failure::Invalid(_))));
    }
}
