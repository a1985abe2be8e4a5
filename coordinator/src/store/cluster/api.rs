//! The Kubernetes API as the cluster store uses it: `remedy.dev` objects of
//! one namespace, every call bounded by a timeout, every write conditional on
//! the resourceVersion the caller last saw, and errors that say what usually
//! causes them.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use kube::api::{Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, Preconditions};
use serde_json::{Map, Value, json};

use super::encoding::Kind;
use crate::store::StoreError;

/// The field manager every write names.
const FIELD_MANAGER: &str = "remedy";
/// Objects asked for per page of a listing.
const LIST_PAGE: u32 = 250;

/// The API client of one namespace, with a timeout on every call.
#[derive(Clone)]
pub(super) struct ClusterApi {
    client: kube::Client,
    namespace: String,
    timeout: Duration,
}

/// What a create did.
pub(super) enum Created {
    /// The object, as the API server made it.
    Made(Box<DynamicObject>),
    /// An object of that name exists already.
    Exists,
}

impl ClusterApi {
    /// A client of `namespace` whose calls each wait at most `timeout`.
    pub(super) fn new(client: kube::Client, namespace: &str, timeout: Duration) -> ClusterApi {
        ClusterApi { client, namespace: namespace.to_owned(), timeout }
    }

    /// The namespace holding the objects.
    pub(super) fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Bounds each later call by `timeout`.
    pub(super) fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    fn api(&self, kind: Kind) -> Api<DynamicObject> {
        Api::namespaced_with(self.client.clone(), &self.namespace, &kind.resource())
    }

    async fn call<T>(
        &self,
        what: impl FnOnce() -> String,
        fut: impl Future<Output = kube::Result<T>>,
    ) -> Result<T, StoreError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(failed(what(), &e, &self.namespace)),
            Err(_) => Err(StoreError::Backend(format!(
                "{}: no answer from the Kubernetes API within {:?}",
                what(),
                self.timeout
            ))),
        }
    }

    /// The object, or `None` when there is none.
    pub(super) async fn get(&self, kind: Kind, name: &str) -> Result<Option<DynamicObject>, StoreError> {
        let api = self.api(kind);
        self.call(|| format!("cannot read {kind} {name} in namespace {}", self.namespace), api.get_opt(name)).await
    }

    /// Every object matching `selector` (all when empty), page by page.
    pub(super) async fn list(&self, kind: Kind, selector: &str) -> Result<Vec<DynamicObject>, StoreError> {
        let api = self.api(kind);
        let mut out = Vec::new();
        let mut params = ListParams::default().limit(LIST_PAGE);
        if !selector.is_empty() {
            params = params.labels(selector);
        }
        loop {
            let page = self
                .call(|| format!("cannot list {} in namespace {}", kind.plural(), self.namespace), api.list(&params))
                .await?;
            out.extend(page.items);
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => return Ok(out),
            }
        }
    }

    /// Creates `object`, telling apart one that exists already.
    pub(super) async fn create(&self, kind: Kind, object: &DynamicObject) -> Result<Created, StoreError> {
        let api = self.api(kind);
        let name = object.metadata.name.clone().unwrap_or_default();
        let params = PostParams { dry_run: false, field_manager: Some(FIELD_MANAGER.into()) };
        match tokio::time::timeout(self.timeout, api.create(&params, object)).await {
            Ok(Ok(made)) => Ok(Created::Made(Box::new(made))),
            Ok(Err(kube::Error::Api(status))) if status.code == 409 => Ok(Created::Exists),
            Ok(Err(e)) => Err(StoreError::Backend(format!(
                "cannot create {kind} {name} in namespace {}: {}",
                self.namespace,
                describe(&e, &self.namespace)
            ))),
            Err(_) => Err(StoreError::Backend(format!(
                "cannot create {kind} {name} in namespace {}: no answer from the Kubernetes API within {:?}",
                self.namespace, self.timeout
            ))),
        }
    }

    /// Replaces the status, conditional on `resource_version`.
    pub(super) async fn replace_status(
        &self,
        kind: Kind,
        name: &str,
        resource_version: &str,
        status: &Value,
    ) -> Result<DynamicObject, StoreError> {
        let api = self.api(kind);
        let mut object = DynamicObject::new(name, &kind.resource()).within(&self.namespace);
        object.metadata.resource_version = Some(resource_version.to_owned());
        object.data = json!({ "status": status });
        let params = PostParams { dry_run: false, field_manager: Some(FIELD_MANAGER.into()) };
        self.call(
            || format!("cannot write the status of {kind} {name} in namespace {}", self.namespace),
            api.replace_status(name, &params, &object),
        )
        .await
    }

    /// Turns the labels `old` into `new`, conditional on `resource_version`.
    pub(super) async fn set_labels(
        &self,
        kind: Kind,
        name: &str,
        resource_version: &str,
        old: &BTreeMap<String, String>,
        new: &BTreeMap<String, String>,
    ) -> Result<DynamicObject, StoreError> {
        let api = self.api(kind);
        let mut labels = Map::new();
        for key in old.keys().filter(|k| !new.contains_key(*k)) {
            labels.insert(key.clone(), Value::Null);
        }
        for (k, v) in new {
            labels.insert(k.clone(), Value::String(v.clone()));
        }
        // The resourceVersion makes the patch conditional, like every other
        // write here.
        let patch = Patch::Merge(json!({ "metadata": { "labels": labels, "resourceVersion": resource_version } }));
        let params = PatchParams { field_manager: Some(FIELD_MANAGER.into()), ..PatchParams::default() };
        self.call(
            || format!("cannot label {kind} {name} in namespace {}", self.namespace),
            api.patch(name, &params, &patch),
        )
        .await
    }

    /// Deletes the object, conditional on `resource_version`; one already
    /// gone is deleted.
    pub(super) async fn delete(&self, kind: Kind, name: &str, resource_version: &str) -> Result<(), StoreError> {
        let api = self.api(kind);
        let params = DeleteParams {
            preconditions: Some(Preconditions { resource_version: Some(resource_version.to_owned()), uid: None }),
            ..DeleteParams::default()
        };
        let deleted = async {
            match api.delete(name, &params).await {
                Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
                other => other.map(|_| ()),
            }
        };
        self.call(|| format!("cannot delete {kind} {name} in namespace {}", self.namespace), deleted).await
    }
}

/// The store's error for the call `what` that failed with `e`: a 409 is a
/// [`StoreError::Conflict`] (another writer changed the object after this
/// store read it), anything else a backend failure.
fn failed(what: String, e: &kube::Error, namespace: &str) -> StoreError {
    let message = format!("{what}: {}", describe(e, namespace));
    match e {
        kube::Error::Api(status) if status.code == 409 => StoreError::Conflict { message },
        _ => StoreError::Backend(message),
    }
}

/// An API error, with what usually causes it.
fn describe(e: &kube::Error, namespace: &str) -> String {
    match e {
        kube::Error::Api(status) if status.code == 404 => format!(
            "{} (404: is namespace {namespace} there, and are the remedy.dev CRDs of deploy/base/crds applied?)",
            status.message
        ),
        kube::Error::Api(status) if status.code == 409 => format!(
            "{} (409: another writer changed it since this coordinator read it; is another coordinator acting as \
             leader?)",
            status.message
        ),
        kube::Error::Api(status) => format!("{} ({} {})", status.message, status.code, status.reason),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status::failure("the object has been modified", reason).with_code(code)))
    }

    #[test]
    fn a_409_is_a_conflict_and_says_another_writer_changed_the_object() {
        let e = failed(
            "cannot write the status of Incident inc-000001 in namespace ns".into(),
            &api_error(409, "Conflict"),
            "ns",
        );
        assert!(matches!(&e, StoreError::Conflict { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "store failure: cannot write the status of Incident inc-000001 in namespace ns: the object has been \
             modified (409: another writer changed it since this coordinator read it; is another coordinator acting \
             as leader?)"
        );
    }

    #[test]
    fn other_failures_are_backend_failures_with_their_likely_cause() {
        let missing = failed("cannot list incidents in namespace ns".into(), &api_error(404, "NotFound"), "ns");
        assert!(matches!(&missing, StoreError::Backend(m) if m.contains("remedy.dev CRDs")), "{missing:?}");
        let forbidden =
            failed("cannot read Incident inc-000001 in namespace ns".into(), &api_error(403, "Forbidden"), "ns");
        assert!(
            matches!(&forbidden, StoreError::Backend(m) if m.ends_with("the object has been modified (403 Forbidden)")),
            "{forbidden:?}"
        );
    }
}
