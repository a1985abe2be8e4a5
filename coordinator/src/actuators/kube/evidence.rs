//! The evidence kinds: `list_pods` (phase, readiness and restarts, counted)
//! and `list_services` (ready endpoints per service, from EndpointSlices).
//! They only read, so they run the same in every mode, dry-run included,
//! and a rehearsal decides its conditions on real data.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use remedy_shared::runbook::{ListPods, ListServices};

use super::selector::{self, Rejected};
use super::{ActionCall, ActionReport, ActionStatus, Deadline, Failure, KubeActuator, check_namespace, params};

/// Page size when listing.
const PAGE: u32 = 500;
/// Most names in one piece of evidence.
const MAX_NAMES: usize = 20;
/// Most services given a `services.<name>.ready` entry of their own.
const MAX_SERVICES: usize = 50;
/// The label an EndpointSlice names its Service with.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

async fn list_all<K>(api: &Api<K>, mut lp: ListParams, what: &str, d: Deadline) -> Result<Vec<K>, Failure>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    lp = lp.limit(PAGE);
    let mut items = Vec::new();
    loop {
        let page = d.api(what, api.list(&lp)).await?;
        items.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => lp = lp.continue_token(&token),
            None => return Ok(items),
        }
    }
}

fn names(list: &[String]) -> String {
    let mut shown: Vec<&str> = list.iter().take(MAX_NAMES).map(String::as_str).collect();
    if list.len() > MAX_NAMES {
        shown.push("…");
    }
    shown.join(",")
}

/// One pod as counted.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodView {
    name: String,
    phase: String,
    ready: bool,
    restarts: u64,
}

fn view(pod: &Pod) -> PodView {
    let status = pod.status.as_ref();
    let ready = status
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    let restarts = status
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| u64::try_from(c.restart_count).unwrap_or(0)).sum())
        .unwrap_or(0);
    PodView {
        name: pod.metadata.name.clone().unwrap_or_default(),
        phase: status.and_then(|s| s.phase.clone()).unwrap_or_else(|| "Unknown".to_owned()),
        ready,
        restarts,
    }
}

/// The counts `list_pods` reports. `not_ready` counts Running and Pending
/// pods that are not Ready: a finished pod is neither ready nor a problem,
/// and a Failed one is counted as failed.
fn pod_evidence(pods: &[PodView]) -> BTreeMap<String, String> {
    let count = |phase: &str| pods.iter().filter(|p| p.phase == phase).count();
    let not_ready: Vec<String> = pods
        .iter()
        .filter(|p| !p.ready && (p.phase == "Running" || p.phase == "Pending"))
        .map(|p| p.name.clone())
        .collect();
    let failed: Vec<String> = pods.iter().filter(|p| p.phase == "Failed").map(|p| p.name.clone()).collect();
    let mut restarted: Vec<&PodView> = pods.iter().filter(|p| p.restarts > 0).collect();
    restarted.sort_by(|a, b| b.restarts.cmp(&a.restarts).then_with(|| a.name.cmp(&b.name)));
    let restarts: u64 = pods.iter().map(|p| p.restarts).fold(0, u64::saturating_add);
    let mut e = BTreeMap::new();
    e.insert("pods".to_owned(), pods.len().to_string());
    e.insert("running".to_owned(), count("Running").to_string());
    e.insert("pending".to_owned(), count("Pending").to_string());
    e.insert("succeeded".to_owned(), count("Succeeded").to_string());
    e.insert("failed".to_owned(), failed.len().to_string());
    e.insert("unknown".to_owned(), count("Unknown").to_string());
    e.insert("ready".to_owned(), pods.iter().filter(|p| p.ready).count().to_string());
    e.insert("not_ready".to_owned(), not_ready.len().to_string());
    e.insert("restarts".to_owned(), restarts.to_string());
    e.insert("max_restarts".to_owned(), restarted.first().map_or(0, |p| p.restarts).to_string());
    e.insert("not_ready_pods".to_owned(), names(&not_ready));
    e.insert("failed_pods".to_owned(), names(&failed));
    let most: Vec<String> = restarted.iter().map(|p| format!("{}={}", p.name, p.restarts)).collect();
    e.insert("restarted_pods".to_owned(), names(&most));
    e
}

pub(crate) async fn list_pods(a: &KubeActuator, call: &ActionCall, d: Deadline) -> Result<ActionReport, Failure> {
    let p: ListPods = params(call)?;
    check_namespace(&p.namespace)?;
    let selector = selector::for_reading(p.selector.as_deref()).map_err(|r| match r {
        Rejected::Unbounded(m) | Rejected::Invalid(m) => Failure::Invalid(m),
    })?;
    // A namespace that is not there is a failure, not "no pods".
    a.namespace_annotations(&p.namespace, d).await?;
    let api: Api<Pod> = Api::namespaced(a.client(), &p.namespace);
    let mut lp = ListParams::default();
    if let Some(s) = &selector {
        lp = lp.labels(s);
    }
    let which = selector.as_deref().map(|s| format!("pods matching {s}")).unwrap_or_else(|| "pods".to_owned());
    let pods = list_all(&api, lp, &format!("listing {which} in {}", p.namespace), d).await?;
    let views: Vec<PodView> = pods.iter().map(view).collect();
    let evidence = pod_evidence(&views);
    let count = |key: &str| evidence.get(key).map_or("0", String::as_str);
    let message = format!(
        "{} {which} in {}: {} running, {} not ready, {} failed, {} restarts",
        views.len(),
        p.namespace,
        count("running"),
        count("not_ready"),
        count("failed"),
        count("restarts")
    );
    let mut report = ActionReport::new(ActionStatus::Succeeded, message).with("namespace", &p.namespace);
    report.evidence.extend(evidence);
    if let Some(s) = selector {
        report = report.with("selector", s);
    }
    Ok(report)
}

/// Ready endpoints of one slice. An endpoint whose readiness is unknown
/// counts as ready, as the API asks consumers to read it.
fn ready_endpoints(slice: &EndpointSlice) -> usize {
    slice.endpoints.iter().filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true)).count()
}

/// The evidence of `list_services`: per service its ready endpoints, and
/// which have none.
fn service_evidence(services: &[String], slices: &[EndpointSlice]) -> BTreeMap<String, String> {
    let mut ready: BTreeMap<&str, usize> = services.iter().map(|s| (s.as_str(), 0)).collect();
    for slice in slices {
        let owner = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL));
        if let Some(count) = owner.and_then(|name| ready.get_mut(name.as_str())) {
            *count = count.saturating_add(ready_endpoints(slice));
        }
    }
    let without: Vec<String> = ready.iter().filter(|(_, n)| **n == 0).map(|(s, _)| (*s).to_owned()).collect();
    let mut e = BTreeMap::new();
    e.insert("services".to_owned(), services.len().to_string());
    e.insert("ready_endpoints".to_owned(), ready.values().fold(0usize, |a, b| a.saturating_add(*b)).to_string());
    e.insert("without_endpoints".to_owned(), without.len().to_string());
    e.insert("services_without_endpoints".to_owned(), names(&without));
    for (service, n) in ready.iter().take(MAX_SERVICES) {
        e.insert(format!("services.{service}.ready"), n.to_string());
    }
    e
}

pub(crate) async fn list_services(a: &KubeActuator, call: &ActionCall, d: Deadline) -> Result<ActionReport, Failure> {
    let p: ListServices = params(call)?;
    check_namespace(&p.namespace)?;
    a.namespace_annotations(&p.namespace, d).await?;
    let services: Api<Service> = Api::namespaced(a.client(), &p.namespace);
    let mut names: Vec<String> =
        list_all(&services, ListParams::default(), &format!("listing services in {}", p.namespace), d)
            .await?
            .into_iter()
            .filter_map(|s| s.metadata.name)
            .collect();
    names.sort();
    let slices: Api<EndpointSlice> = Api::namespaced(a.client(), &p.namespace);
    let slices = list_all(
        &slices,
        ListParams::default().labels(SERVICE_NAME_LABEL),
        &format!("listing EndpointSlices in {}", p.namespace),
        d,
    )
    .await?;
    let evidence = service_evidence(&names, &slices);
    let count = |key: &str| evidence.get(key).map_or("0", String::as_str);
    let message = format!(
        "{} services in {}: {} ready endpoints, {} without any",
        names.len(),
        p.namespace,
        count("ready_endpoints"),
        count("without_endpoints")
    );
    let mut report = ActionReport::new(ActionStatus::Succeeded, message).with("namespace", &p.namespace);
    report.evidence.extend(evidence);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};
    use kube::api::ObjectMeta;

    use super::*;

    fn pod(name: &str, phase: &str, ready: bool, restarts: u64) -> PodView {
        PodView { name: name.into(), phase: phase.into(), ready, restarts }
    }

    #[test]
    fn pods_are_counted_by_phase_readiness_and_restarts() {
        let e = pod_evidence(&[
            pod("a", "Running", true, 0),
            pod("b", "Running", false, 7),
            pod("c", "Failed", false, 2),
            pod("d", "Succeeded", false, 0),
            pod("e", "Pending", false, 0),
        ]);
        assert_eq!(e["pods"], "5");
        assert_eq!(e["running"], "2");
        assert_eq!(e["failed"], "1");
        assert_eq!(e["not_ready"], "2", "Running b and Pending e; finished pods are not counted");
        assert_eq!(e["not_ready_pods"], "b,e");
        assert_eq!(e["restarts"], "9");
        assert_eq!(e["max_restarts"], "7");
        assert_eq!(e["restarted_pods"], "b=7,c=2");
        assert_eq!(e["failed_pods"], "c");
    }

    fn slice(service: &str, ready: &[Option<bool>]) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                labels: Some(BTreeMap::from([(SERVICE_NAME_LABEL.to_owned(), service.to_owned())])),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: ready
                .iter()
                .map(|r| Endpoint {
                    addresses: vec!["10.0.0.1".into()],
                    conditions: Some(EndpointConditions { ready: *r, ..Default::default() }),
                    ..Default::default()
                })
                .collect(),
            ports: None,
        }
    }

    #[test]
    fn services_count_ready_endpoints_over_their_slices() {
        let services = vec!["api".to_owned(), "db".to_owned(), "web".to_owned()];
        let slices = [
            slice("api", &[Some(true), Some(false)]),
            slice("api", &[None]),
            slice("db", &[Some(false)]),
            slice("other", &[Some(true)]),
        ];
        let e = service_evidence(&services, &slices);
        assert_eq!(e["services"], "3");
        assert_eq!(e["services.api.ready"], "2");
        assert_eq!(e["services.db.ready"], "0");
        assert_eq!(e["ready_endpoints"], "2");
        assert_eq!(e["without_endpoints"], "2");
        assert_eq!(e["services_without_endpoints"], "db,web");
    }
}
