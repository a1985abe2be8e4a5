//! The API server's audit log, kept for writes only, so tests can count
//! what a component changed instead of inferring it from object state (a
//! repeated write that changes nothing leaves no trace in the object).

use std::path::Path;

use anyhow::{Context, Result};
use serde::Deserialize;

/// The policy: writes (`create`, `update`, `patch`, `delete`) at
/// `Metadata`, once each (when the response is complete); nothing else.
pub(crate) const POLICY: &str = "\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived, ResponseStarted]
rules:
  - level: None
    users: [system:kube-controller-manager, system:kube-scheduler]
  - level: Metadata
    verbs: [create, update, patch, delete, deletecollection]
  - level: None
";

/// One write the API server answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    /// `create`, `update`, `patch`, `delete`...
    pub verb: String,
    /// Who asked (the certificate's CN or the ServiceAccount).
    pub user: String,
    /// The client's User-Agent.
    pub user_agent: String,
    /// `deployments`, `pods`...
    pub resource: String,
    /// `scale`, `status`, `eviction`... or empty.
    pub subresource: String,
    /// Namespace, or empty.
    pub namespace: String,
    /// Object name, or empty.
    pub name: String,
    /// The HTTP status answered.
    pub code: u16,
    /// Whether it was a dry run (nothing persisted).
    pub dry_run: bool,
    /// When the request arrived (RFC 3339, microseconds).
    pub received_at: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    verb: String,
    #[serde(default)]
    user: RawUser,
    #[serde(default)]
    user_agent: String,
    #[serde(default)]
    object_ref: RawRef,
    #[serde(default)]
    response_status: RawStatus,
    #[serde(default)]
    request_uri: String,
    #[serde(default)]
    request_received_timestamp: String,
}

#[derive(Deserialize, Default)]
struct RawUser {
    #[serde(default)]
    username: String,
}

#[derive(Deserialize, Default)]
struct RawRef {
    #[serde(default)]
    resource: String,
    #[serde(default)]
    subresource: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize, Default)]
struct RawStatus {
    #[serde(default)]
    code: u16,
}

/// Every event in the log file at `path` so far.
pub(crate) fn read(path: &Path) -> Result<Vec<AuditEvent>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut events = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        // The last line may be half written; everything before it is whole.
        let Ok(raw) = serde_json::from_str::<Raw>(line) else { continue };
        events.push(AuditEvent {
            verb: raw.verb,
            user: raw.user.username,
            user_agent: raw.user_agent,
            resource: raw.object_ref.resource,
            subresource: raw.object_ref.subresource,
            namespace: raw.object_ref.namespace,
            name: raw.object_ref.name,
            code: raw.response_status.code,
            dry_run: raw.request_uri.contains("dryRun=All"),
            received_at: raw.request_received_timestamp,
        });
    }
    Ok(events)
}
