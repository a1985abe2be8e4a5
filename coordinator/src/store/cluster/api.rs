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

/// A failed call, and whether the API refused it as a conflict (409).
#[derive(Debug)]
pub(super) struct Refused {
    /// The API answered 409: another writer changed the object.
    pub(super) conflict: bool,
    /// What failed, for the caller.
    pub(super) error: StoreError,
}

impl Refused {
    /// A write the API refused as a conflict.
    pub(super) fn conflict(error: StoreError) -> Refused {
        Refused { conflict: true, error }
    }

    /// Any other failure.
    pub(super) fn other(error: StoreError) -> Refused {
        Refused { conflict: false, error }
    }
}

impl From<StoreError> for Refused {
    fn from(error: StoreError) -> Refused {
        Refused::other(error)
    }
}

impl From<Refused> for StoreError {
    fn from(refused: Refused) -> StoreError {
        refused.error
    }
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
        self.write(what, fut).await.map_err(StoreError::from)
    }

    /// Like `call`, telling a conflict apart.
    async fn write<T>(
        &self,
        what: impl FnOnce() -> String,
        fut: impl Future<Output = kube::Result<T>>,
    ) -> Result<T, Refused> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(Refused {
                conflict: matches!(&e, kube::Error::Api(status) if status.code == 409),
                error: StoreError::Backend(format!("{}: {}", what(), describe(&e, &self.namespace))),
            }),
            Err(_) => Err(Refused::other(StoreError::Backend(format!(
                "{}: no answer from the Kubernetes API within {:?}",
                what(),
                self.timeout
            )))),
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
    ) -> Result<DynamicObject, Refused> {
        let api = self.api(kind);
        let mut object = DynamicObject::new(name, &kind.resource()).within(&self.namespace);
        object.metadata.resource_version = Some(resource_version.to_owned());
        object.data = json!({ "status": status });
        let params = PostParams { dry_run: false, field_manager: Some(FIELD_MANAGER.into()) };
        self.write(
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
    ) -> Result<DynamicObject, Refused> {
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
        self.write(
            || format!("cannot label {kind} {name} in namespace {}", self.namespace),
            api.patch(name, &params, &patch),
        )
        .await
    }

    /// Deletes the object, conditional on `resource_version`; one already
    /// gone is deleted.
    pub(super) async fn delete(&self, kind: Kind, name: &str, resource_version: &str) -> Result<(), Refused> {
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
        self.write(|| format!("cannot delete {kind} {name} in namespace {}", self.namespace), deleted).await
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
