//! `patch_configmap`: set keys in a ConfigMap, never one a person set
//! since Remedy last changed it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use kube::api::{Api, Patch};
use remedy_shared::runbook::PatchConfigmap;
use remedy_shared::text::{self, Unit};
use serde_json::json;

use super::workloads::{describe, refuse_if_changed_by_someone, refuse_if_held, target, write_failure};
use super::{
    ActionCall, ActionReport, ActionStatus, Deadline, Failure, KubeActuator, Resolved, change_annotations, check_name,
    check_namespace, params,
};

/// Longest value kept as evidence; ConfigMaps can hold whole files.
const MAX_EVIDENCE_VALUE: usize = 256;

/// A ConfigMap key: alphanumerics, `-`, `_` and `.`, at most 253.
fn check_key(key: &str) -> Result<(), Failure> {
    let ok = !key.is_empty()
        && key.len() <= 253
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && key != "."
        && key != "..";
    if ok { Ok(()) } else { Err(Failure::Invalid(format!("`{key}` is not a ConfigMap key"))) }
}

fn configmap_params(call: &ActionCall) -> Result<PatchConfigmap, Failure> {
    let p: PatchConfigmap = params(call)?;
    check_namespace(&p.namespace)?;
    check_name("ConfigMap", &p.name)?;
    if p.data.is_empty() {
        return Err(Failure::Invalid("data names no key to set".to_owned()));
    }
    p.data.keys().try_for_each(|k| check_key(k))?;
    Ok(p)
}

async fn read(
    a: &KubeActuator,
    p: &PatchConfigmap,
    d: Deadline,
) -> Result<(ConfigMap, BTreeMap<String, String>), Failure> {
    let what = describe("ConfigMap", &p.namespace, &p.name);
    let api: Api<ConfigMap> = Api::namespaced(a.client(), &p.namespace);
    let cm = d
        .api(&format!("reading {what}"), api.get_opt(&p.name))
        .await?
        .ok_or_else(|| Failure::Failed(format!("{what} not found")))?;
    let ns = a.namespace_annotations(&p.namespace, d).await?;
    Ok((cm, ns))
}

pub(crate) async fn resolve(a: &KubeActuator, call: &ActionCall, d: Deadline) -> Result<Resolved, Failure> {
    let p = configmap_params(call)?;
    let (cm, ns) = read(a, &p, d).await?;
    Ok(Resolved { targets: vec![target("ConfigMap", &p.namespace, &cm.metadata, &[&ns])], ..Resolved::default() })
}

fn shown(value: Option<&String>) -> String {
    match value {
        None => "(absent)".to_owned(),
        Some(v) => text::truncate(v, MAX_EVIDENCE_VALUE, Unit::Chars).into_owned(),
    }
}

pub(crate) async fn patch(a: &KubeActuator, call: &ActionCall, d: Deadline) -> Result<ActionReport, Failure> {
    let p = configmap_params(call)?;
    super::on_conflict_look_again(|| patch_once(a, call, &p, d)).await
}

async fn patch_once(
    a: &KubeActuator,
    call: &ActionCall,
    p: &PatchConfigmap,
    d: Deadline,
) -> Result<ActionReport, Failure> {
    let what = describe("ConfigMap", &p.namespace, &p.name);
    let (cm, ns) = read(a, p, d).await?;
    refuse_if_held(&what, &cm.metadata, &[(format!("Namespace {}", p.namespace), &ns)])?;
    if cm.immutable == Some(true) {
        return Err(Failure::Failed(format!("{what} is immutable; its keys cannot be set")));
    }
    let current = cm.data.clone().unwrap_or_default();
    let changing: BTreeMap<&String, &String> =
        p.data.iter().filter(|(k, v)| current.get(k.as_str()) != Some(*v)).collect();
    let report = |status: ActionStatus, message: String| {
        let mut r = ActionReport::new(status, message).with("target", &what);
        for (k, v) in &p.data {
            r = r.with(&format!("before.{k}"), shown(current.get(k))).with(&format!("after.{k}"), shown(Some(v)));
        }
        r
    };
    if changing.is_empty() {
        let status = if call.dry_run { ActionStatus::DryRun } else { ActionStatus::Succeeded };
        return Ok(report(status, format!("{what} already has these values; nothing to change")).with("changed", false));
    }
    let keys: Vec<&str> = changing.keys().map(|k| k.as_str()).collect();
    let paths: Vec<Vec<&str>> = keys.iter().map(|k| vec!["data", *k]).collect();
    refuse_if_changed_by_someone(&what, &cm.metadata, &paths)?;
    let changed_at = a.changed_at();
    let patch = json!({
        "metadata": {
            "resourceVersion": cm.resource_version(),
            "annotations": change_annotations(call, &changed_at),
        },
        "data": changing,
    });
    let api: Api<ConfigMap> = Api::namespaced(a.client(), &p.namespace);
    d.within(
        &format!("patching {what}"),
        api.patch(&p.name, &super::patch_params(call.dry_run), &Patch::Merge(&patch)),
    )
    .await?
    .map_err(|e| write_failure(&what, &e))?;
    let keys = keys.join(",");
    let (status, message) = if call.dry_run {
        (ActionStatus::DryRun, format!("would set {keys} in {what}"))
    } else {
        (ActionStatus::Succeeded, format!("set {keys} in {what}"))
    };
    Ok(report(status, message).with("keys", keys).with("changed", !call.dry_run))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_and_long_values_cut() {
        assert!(check_key("log.level").is_ok());
        for bad in ["", ".", "..", "a/b", "a b"] {
            assert!(check_key(bad).is_err(), "{bad:?}");
        }
        let long = "x".repeat(1000);
        assert_eq!(shown(Some(&long)).chars().count(), MAX_EVIDENCE_VALUE + 1);
        assert_eq!(shown(None), "(absent)");
    }
}
