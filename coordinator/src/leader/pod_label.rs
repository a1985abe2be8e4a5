//! Labels this coordinator's pod `remedy.dev/leader=true` while it leads,
//! so a Service selecting that label routes agents to the leader.
//!
//! A separate component with its own error handling: it only follows the
//! election's channel. A label that cannot be written is logged and
//! retried with backoff; it never affects leadership. The label is
//! removed on step-down and, bounded, on shutdown.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use tokio::sync::watch;

use super::Leadership;

/// The label that marks the leader's pod.
pub const LEADER_LABEL: &str = "remedy.dev/leader";

/// Longest a label write may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Backoff between failed writes.
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Keeps [`LEADER_LABEL`] on one pod in step with leadership.
#[derive(Debug, Clone)]
pub struct PodLabeler {
    pods: Api<Pod>,
    namespace: String,
    pod: String,
}

impl PodLabeler {
    /// A labeler for pod `namespace/pod`.
    pub fn new(client: Client, namespace: &str, pod: &str) -> PodLabeler {
        PodLabeler { pods: Api::namespaced(client, namespace), namespace: namespace.to_owned(), pod: pod.to_owned() }
    }

    /// A labeler for this pod, when `POD_NAME` and `POD_NAMESPACE` are set
    /// (the downward API); `None` otherwise.
    pub fn from_env(client: Client) -> Option<PodLabeler> {
        let var = |name: &str| std::env::var(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
        Some(PodLabeler::new(client, &var("POD_NAMESPACE")?, &var("POD_NAME")?))
    }

    /// `namespace/pod`.
    pub fn pod(&self) -> String {
        format!("{}/{}", self.namespace, self.pod)
    }

    /// Sets the label (`leader`) or removes it, with a merge patch that
    /// touches nothing else.
    pub async fn set(&self, leader: bool) -> Result<(), kube::Error> {
        let value = if leader { serde_json::json!("true") } else { serde_json::Value::Null };
        let patch = serde_json::json!({ "metadata": { "labels": { LEADER_LABEL: value } } });
        self.pods.patch(&self.pod, &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ())
    }

    async fn set_bounded(&self, leader: bool) -> Result<(), String> {
        match tokio::time::timeout(WRITE_TIMEOUT, self.set(leader)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {WRITE_TIMEOUT:?}")),
        }
    }

    /// Follows `leadership` until `shutdown` resolves or the election is
    /// gone, then removes the label (bounded).
    pub async fn follow(self, mut leadership: watch::Receiver<Leadership>, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut applied: Option<bool> = None;
        let mut backoff = FIRST_BACKOFF;
        loop {
            let want = leadership.borrow_and_update().leader;
            if applied != Some(want) {
                match self.set_bounded(want).await {
                    Ok(()) => {
                        tracing::info!(pod = %self.pod(), leader = want, "leader label updated");
                        applied = Some(want);
                        backoff = FIRST_BACKOFF;
                    }
                    Err(e) => {
                        tracing::warn!(pod = %self.pod(), leader = want, error = %e, retry_in = ?backoff, "cannot update the leader label");
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            changed = leadership.changed() => if changed.is_err() { break },
                            () = &mut shutdown => break,
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
            tokio::select! {
                changed = leadership.changed() => if changed.is_err() { break },
                () = &mut shutdown => break,
            }
        }
        if applied != Some(false)
            && let Err(e) = self.set_bounded(false).await
        {
            tracing::warn!(pod = %self.pod(), error = %e, "cannot remove the leader label");
        }
    }
}
