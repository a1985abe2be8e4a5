//! What an object says about who may change it: `remedy.dev/hold` on it or
//! around it, and, from `metadata.managedFields`, whether a person changed
//! a field after Remedy last did. Pure: the callers read the objects.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::jiff::Timestamp;
use remedy_shared::guard::HOLD_ANNOTATION;

use super::{CHANGED_AT_ANNOTATION, FIELD_MANAGER};

/// `at` in RFC 3339 with whole seconds: `metadata.managedFields` records
/// times to the second, and comparing a finer time with them would let a
/// change made in the same second look older than Remedy's.
pub(crate) fn rfc3339_seconds(at: remedy_shared::Timestamp) -> String {
    let t = Timestamp::from_millisecond(at.as_millis()).unwrap_or(Timestamp::UNIX_EPOCH);
    whole_seconds(t).to_string()
}

fn whole_seconds(t: Timestamp) -> Timestamp {
    Timestamp::from_second(t.as_second()).unwrap_or(t)
}

/// Annotations merged from the outside in: later maps win, so a pod's own
/// annotations override its workload's, which override its namespace's.
pub(crate) fn merged<'a>(layers: impl IntoIterator<Item = &'a BTreeMap<String, String>>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for layer in layers {
        out.extend(layer.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    out
}

/// The first `remedy.dev/hold` among `layers` (each named, e.g.
/// `Namespace shop`), as a sentence naming where it is.
pub(crate) fn hold<'a>(
    target: &str,
    layers: impl IntoIterator<Item = (String, &'a BTreeMap<String, String>)>,
) -> Option<String> {
    layers.into_iter().find_map(|(on, annotations)| {
        annotations
            .get(HOLD_ANNOTATION)
            .map(|value| format!("{target} is on hold ({HOLD_ANNOTATION}={value:?} on {on})"))
    })
}

/// A field written by someone other than Remedy after Remedy's last change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HumanChange {
    /// The field, as `spec.replicas` or `data.<key>`.
    pub field: String,
    /// The field manager that wrote it.
    pub manager: String,
    /// When (from `managedFields`); `None` when the entry has no time.
    pub at: Option<String>,
    /// When Remedy last changed the object (`remedy.dev/changed-at`).
    pub remedy_at: String,
}

impl fmt::Display for HumanChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let at = self.at.as_deref().unwrap_or("an unrecorded time");
        write!(
            f,
            "{} was set by `{}` at {at}, after Remedy's change at {}; Remedy does not reverse a change someone else made",
            self.field, self.manager, self.remedy_at
        )
    }
}

/// Whether one of `fields` (each a path such as `["spec", "replicas"]`) was
/// written by another field manager at or after Remedy's last change of the
/// object. Only objects Remedy changed before (they carry
/// `remedy.dev/changed-at`) are looked at: the first change is Remedy's own
/// decision, weighed by the rails. The same second counts as after: times
/// are whole seconds, and when in doubt Remedy leaves a person's value be.
/// Of several such changes, the latest is named.
pub(crate) fn later_change(meta: &ObjectMeta, fields: &[Vec<&str>]) -> Result<Option<HumanChange>, String> {
    let Some(remedy_at) = meta.annotations.as_ref().and_then(|a| a.get(CHANGED_AT_ANNOTATION)) else {
        return Ok(None);
    };
    let since: Timestamp = remedy_at.parse().map_err(|_| {
        format!(
            "{CHANGED_AT_ANNOTATION}={remedy_at:?} is not an RFC 3339 time, so whether someone changed the object \
             since Remedy did cannot be told"
        )
    })?;
    let since = whole_seconds(since);
    let mut found: Vec<(Option<Timestamp>, HumanChange)> = Vec::new();
    for entry in meta.managed_fields.iter().flatten() {
        let manager = entry.manager.as_deref().unwrap_or_default();
        if manager == FIELD_MANAGER {
            continue;
        }
        let Some(owned) = entry.fields_v1.as_ref() else { continue };
        let at = entry.time.as_ref().map(|t| whole_seconds(t.0));
        // An entry without a time might be after: counted, as the careful
        // answer. The API server always records one.
        if at.is_some_and(|at| at < since) {
            continue;
        }
        for path in fields.iter().filter(|path| owns(&owned.0, path)) {
            let change = HumanChange {
                field: path.join("."),
                manager: if manager.is_empty() { "(unnamed)".to_owned() } else { manager.to_owned() },
                at: at.map(|t| t.to_string()),
                remedy_at: remedy_at.clone(),
            };
            found.push((at, change));
        }
    }
    // The latest is named; an unrecorded time sorts last.
    Ok(found.into_iter().max_by_key(|(at, _)| at.map_or(i64::MAX, |t| t.as_second())).map(|(_, change)| change))
}

/// Whether a `FieldsV1` set (`{"f:spec": {"f:replicas": {}}}`) holds `path`.
fn owns(set: &serde_json::Value, path: &[&str]) -> bool {
    let mut node = set;
    for part in path {
        match node.get(format!("f:{part}")) {
            Some(next) => node = next,
            None => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry, Time};
    use serde_json::json;

    use super::*;

    fn entry(manager: &str, time: &str, fields: serde_json::Value) -> ManagedFieldsEntry {
        ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some("Update".into()),
            time: Some(Time(time.parse().unwrap())),
            fields_v1: Some(FieldsV1(fields)),
            ..Default::default()
        }
    }

    fn meta(changed_at: Option<&str>, entries: Vec<ManagedFieldsEntry>) -> ObjectMeta {
        ObjectMeta {
            annotations: changed_at.map(|t| BTreeMap::from([(CHANGED_AT_ANNOTATION.to_owned(), t.to_owned())])),
            managed_fields: Some(entries),
            ..Default::default()
        }
    }

    fn replicas() -> Vec<Vec<&'static str>> {
        vec![vec!["spec", "replicas"]]
    }

    #[test]
    fn a_later_write_by_someone_else_is_named_with_its_time() {
        let m = meta(
            Some("2026-11-27T10:00:00Z"),
            vec![
                entry("remedy", "2026-11-27T10:00:00Z", json!({"f:spec": {"f:replicas": {}}})),
                entry("kubectl-edit", "2026-11-27T10:05:00Z", json!({"f:spec": {"f:replicas": {}}})),
            ],
        );
        let change = later_change(&m, &replicas()).unwrap().unwrap();
        assert_eq!(change.manager, "kubectl-edit");
        assert_eq!(change.at.as_deref(), Some("2026-11-27T10:05:00Z"));
        assert_eq!(change.field, "spec.replicas");
        assert!(change.to_string().contains("`kubectl-edit` at 2026-11-27T10:05:00Z"), "{change}");
    }

    #[test]
    fn the_same_second_counts_as_after() {
        let m = meta(
            Some("2026-11-27T10:00:00Z"),
            vec![entry("alice", "2026-11-27T10:00:00Z", json!({"f:spec": {"f:replicas": {}}}))],
        );
        assert!(later_change(&m, &replicas()).unwrap().is_some());
    }

    #[test]
    fn earlier_writes_other_fields_and_untouched_objects_do_not_count() {
        let older = meta(
            Some("2026-11-27T10:00:00Z"),
            vec![entry("kubectl", "2026-11-27T09:00:00Z", json!({"f:spec": {"f:replicas": {}}}))],
        );
        assert_eq!(later_change(&older, &replicas()), Ok(None));
        let other_field = meta(
            Some("2026-11-27T10:00:00Z"),
            vec![entry("alice", "2026-11-27T11:00:00Z", json!({"f:spec": {"f:template": {}}}))],
        );
        assert_eq!(later_change(&other_field, &replicas()), Ok(None));
        let never_changed_by_remedy =
            meta(None, vec![entry("alice", "2026-11-27T11:00:00Z", json!({"f:spec": {"f:replicas": {}}}))]);
        assert_eq!(later_change(&never_changed_by_remedy, &replicas()), Ok(None));
    }

    #[test]
    fn configmap_keys_are_looked_up_one_by_one() {
        let m = meta(
            Some("2026-11-27T10:00:00Z"),
            vec![entry("bob", "2026-11-27T10:01:00Z", json!({"f:data": {"f:log.level": {}}}))],
        );
        let change = later_change(&m, &[vec!["data", "pool.size"], vec!["data", "log.level"]]).unwrap().unwrap();
        assert_eq!(change.field, "data.log.level");
        assert_eq!(later_change(&m, &[vec!["data", "pool.size"]]), Ok(None));
    }

    #[test]
    fn an_unreadable_changed_at_is_an_error_not_a_pass() {
        let m = meta(Some("yesterday"), vec![]);
        assert!(later_change(&m, &replicas()).unwrap_err().contains("not an RFC 3339 time"));
    }

    #[test]
    fn holds_are_found_on_any_layer_and_named_where() {
        let ns = BTreeMap::from([(HOLD_ANNOTATION.to_owned(), "freeze".to_owned())]);
        let none = BTreeMap::new();
        let found = hold("Pod shop/a", [("Pod shop/a".to_owned(), &none), ("Namespace shop".to_owned(), &ns)]);
        assert_eq!(found.as_deref(), Some("Pod shop/a is on hold (remedy.dev/hold=\"freeze\" on Namespace shop)"));
        assert_eq!(hold("Pod shop/a", [("Pod shop/a".to_owned(), &none)]), None);
    }

    #[test]
    fn merged_annotations_let_the_inner_layer_win() {
        let ns = BTreeMap::from([("a".to_owned(), "ns".to_owned()), ("b".to_owned(), "ns".to_owned())]);
        let pod = BTreeMap::from([("a".to_owned(), "pod".to_owned())]);
        let m = merged([&ns, &pod]);
        assert_eq!(m["a"], "pod");
        assert_eq!(m["b"], "ns");
    }

    #[test]
    fn times_have_whole_seconds() {
        let at = rfc3339_seconds(remedy_shared::Timestamp::from_millis(1_765_000_000_999));
        assert_eq!(at, "2025-12-06T05:46:40Z");
    }
}
