//! The pods bound to this node: watched, judged, and restarted: a Failed
//! one by the local rule (when enabled), a named one when the coordinator
//! asks ([`directive`]).
//!
//! One watch, filtered by the API server to `spec.nodeName=<this node>`, so
//! the agent never sees the rest of the cluster. Each event becomes a
//! [`view::PodView`] (a few fields, not the object), the [`judge::Judge`]
//! decides what to report, and findings go through the spool like every
//! other finding. The watch resumes by itself; on errors it waits with a
//! growing, jittered delay, and never stops the agent.

pub mod config;
pub mod directive;
pub mod judge;
pub mod restart;
pub mod view;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::Api;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::watcher::{self, Event};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use remedy_shared::Timestamp;
use remedy_shared::backoff::Backoff;
use remedy_shared::config::ConfigError;
use remedy_shared::finding::Finding;
use serde::Serialize;
use tokio::sync::mpsc;

use self::config::{PodsConfig, PodsMode};
use crate::clock::now;
use crate::outbox::Outbox;
use crate::published::Published;
use judge::{Judge, PodKey};
use restart::{RestartStatus, Restarter};

/// How often time-based judgements run (storm windows, grace periods,
/// refreshes).
const TICK: Duration = Duration::from_secs(1);
/// How often the Failed pods are offered for a restart again (a budget
/// may have freed up, a hold may have been lifted).
const RECHECK: Duration = Duration::from_secs(30);
/// Watch retry delays.
const RETRY_INITIAL: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The pod metrics (`remedy_agent_pod*`).
#[derive(Debug, Clone, Default)]
pub struct PodMetrics {
    /// Pods of this node being watched.
    pub watched: Gauge,
    /// Pod findings raised and not cleared.
    pub findings_active: Gauge,
    /// Errors of the pod watch (each followed by a retry).
    pub watch_errors: Counter,
    /// Pods deleted so that their controller replaces them (by the local
    /// rule or a `restart_pod` directive).
    pub restarts: Counter,
    /// Pod restarts refused, by reason (the local rule's once per pod and
    /// reason).
    pub restarts_refused: Family<Vec<(String, String)>, Counter>,
    /// Restarts whose API calls failed.
    pub restart_failures: Counter,
}

impl PodMetrics {
    /// Registers them.
    pub fn register(&self, registry: &mut Registry) {
        registry.register("pods_watched", "Pods bound to this node being watched", self.watched.clone());
        registry.register("pod_findings_active", "Pod findings raised and not cleared", self.findings_active.clone());
        registry.register(
            "pod_watch_errors",
            "Errors of the pod watch, each followed by a retry",
            self.watch_errors.clone(),
        );
        registry.register(
            "pod_restarts",
            "Pods deleted so that their controller replaces them (local rule or restart_pod directive)",
            self.restarts.clone(),
        );
        registry.register(
            "pod_restarts_refused",
            "Pod restarts refused, by reason (the local rule's: each pod and reason once)",
            self.restarts_refused.clone(),
        );
        registry.register("pod_restart_failures", "Pod restarts whose API calls failed", self.restart_failures.clone());
    }
}

/// What the pods feature tells people: the `pods` section of `/debug/state`
/// and the pod metrics. Cheap to clone; clones report to the same place.
#[derive(Debug, Clone, Default)]
pub struct PodsReport {
    /// The `pods` section of `/debug/state`.
    pub status: Published<PodsStatus>,
    /// The pod metrics.
    pub metrics: PodMetrics,
}

/// The pods section of `/debug/state`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PodsStatus {
    /// Whether this node's pods are watched.
    pub enabled: bool,
    /// Where the Kubernetes client came from, or why there is none.
    pub client: String,
    /// The first full list arrived.
    pub synced: bool,
    /// Pods of this node known.
    pub watched: usize,
    /// Pod findings raised and not cleared.
    pub findings_active: usize,
    /// Those findings.
    pub findings: Vec<Finding>,
    /// The watch.
    pub watch: WatchStatus,
    /// Restarts of Failed pods.
    pub restarts: RestartStatus,
}

/// The watch, for `/debug/state`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WatchStatus {
    /// Events received.
    pub events: u64,
    /// Full lists (the first, and each after the watch could not resume).
    pub lists: u64,
    /// Errors; each was followed by a wait and a retry.
    pub errors: u64,
    /// The latest error.
    pub last_error: Option<String>,
    /// When it happened.
    pub last_error_at: Option<Timestamp>,
    /// When the latest event arrived.
    pub last_event_at: Option<Timestamp>,
}

/// The outcome of looking for a Kubernetes client.
pub enum Connection {
    /// A client, and where its configuration came from.
    On(Client, String),
    /// No pod watching, and why.
    Off(String),
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Connection::On(_, from) => write!(f, "On({from})"),
            Connection::Off(why) => write!(f, "Off({why})"),
        }
    }
}

/// Builds the client pod watching needs, as `pods.enabled` asks. `source`
/// names the configuration for errors. A kubeconfig named explicitly that
/// cannot be used, or `enabled: true` without a client, is a configuration
/// error; with `auto`, no client means no pod watching.
pub async fn connect(pods: &PodsConfig, source: &str) -> Result<Connection, ConfigError> {
    if pods.mode == PodsMode::Off {
        return Ok(Connection::Off("pods.enabled is false".to_owned()));
    }
    let found = match &pods.kubeconfig {
        Some(path) => {
            let config = explicit(path)
                .await
                .map_err(|e| ConfigError::new(source, "kubeconfig", format!("cannot use {}: {e}", path.display())))?;
            Ok((config, format!("kubeconfig {}", path.display())))
        }
        None => infer().await,
    };
    let built = found.and_then(|(config, from)| match Client::try_from(config) {
        Ok(client) => Ok((client, from)),
        Err(e) => Err(format!("{from}: {e}")),
    });
    match (built, pods.mode) {
        (Ok((client, from)), _) => Ok(Connection::On(client, from)),
        (Err(why), PodsMode::On) => Err(ConfigError::new(
            source,
            "pods.enabled",
            format!("is true, but no Kubernetes client can be built: {why}"),
        )),
        (Err(why), _) => Ok(Connection::Off(format!("no Kubernetes client: {why}"))),
    }
}

async fn explicit(path: &std::path::Path) -> Result<kube::Config, String> {
    let file = Kubeconfig::read_from(path).map_err(|e| e.to_string())?;
    kube::Config::from_custom_kubeconfig(file, &KubeConfigOptions::default()).await.map_err(|e| e.to_string())
}

/// KUBECONFIG, then the in-cluster service account, then ~/.kube/config.
async fn infer() -> Result<(kube::Config, String), String> {
    if let Some(paths) = std::env::var_os("KUBECONFIG").filter(|p| !p.is_empty()) {
        let paths = paths.to_string_lossy().into_owned();
        return kube::Config::from_kubeconfig(&KubeConfigOptions::default())
            .await
            .map(|c| (c, format!("KUBECONFIG {paths}")))
            .map_err(|e| format!("KUBECONFIG {paths}: {e}"));
    }
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        return kube::Config::incluster()
            .map(|c| (c, "the in-cluster service account".to_owned()))
            .map_err(|e| format!("in-cluster configuration: {e}"));
    }
    kube::Config::from_kubeconfig(&KubeConfigOptions::default())
        .await
        .map(|c| (c, "~/.kube/config".to_owned()))
        .map_err(|e| format!("not in a cluster (no KUBERNETES_SERVICE_HOST), no KUBECONFIG, and ~/.kube/config: {e}"))
}

/// Watches this node's pods until `stopped` resolves; the local rule
/// restarts through `restarter`, as directives do.
pub async fn watch(
    node: String,
    report: PodsReport,
    outbox: Outbox,
    client: Client,
    config: PodsConfig,
    restarter: Arc<Restarter>,
    stopped: impl Future<Output = ()>,
) {
    let api: Api<Pod> = Api::all(client);
    // From the API server's watch cache: a DaemonSet's relists stay off etcd.
    let selector = format!("spec.nodeName={node}");
    let events = watcher::watcher(api, watcher::Config::default().fields(&selector).any_semantic());
    tokio::pin!(events);
    tokio::pin!(stopped);
    let (restarts_tx, restarts_rx) = mpsc::channel::<Vec<view::PodView>>(8);
    let remediator =
        config.restart_failed.enabled.then(|| tokio::spawn(restart::run(report.clone(), restarter, restarts_rx)));
    let mut w = Watch {
        report,
        judge: Judge::new(config.rules),
        relist: None,
        restarts: remediator.as_ref().map(|_| restarts_tx),
        failed_changed: false,
    };
    let mut backoff = Backoff::new(RETRY_INITIAL, RETRY_MAX);
    let mut retry_at: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut recheck = tokio::time::interval(RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(node = %node, selector = %selector, "watching this node's pods");
    loop {
        let findings = tokio::select! {
            event = events.next(), if retry_at.is_none() => match event {
                Some(Ok(event)) => {
                    backoff.reset();
                    w.apply(event, now())
                }
                Some(Err(e)) => {
                    let delay = backoff.next_delay(rand::random::<f64>());
                    w.error(&e, delay);
                    retry_at = Some(tokio::time::Instant::now() + delay);
                    Vec::new()
                }
                None => {
                    tracing::error!("the pod watch ended; it never should");
                    break;
                }
            },
            () = tokio::time::sleep_until(retry_at.unwrap_or_else(tokio::time::Instant::now)), if retry_at.is_some() => {
                retry_at = None;
                Vec::new()
            }
            _ = tick.tick() => w.judge.tick(now()),
            _ = recheck.tick() => {
                w.failed_changed = true;
                Vec::new()
            }
            () = &mut stopped => break,
        };
        w.publish();
        w.offer_failed();
        // Spooled like every other finding (nothing happens when empty).
        if let Err(e) = outbox.submit(findings).await {
            tracing::error!(error = %e, "cannot spool pod findings");
        }
    }
    drop(w);
    if let Some(task) = remediator {
        task.abort();
        let _ = task.await;
    }
}

/// The watch loop's state.
struct Watch {
    report: PodsReport,
    judge: Judge,
    /// Pods listed since the last `Init`, while a full list arrives.
    relist: Option<HashSet<PodKey>>,
    /// To the remediator, when restarts are enabled.
    restarts: Option<mpsc::Sender<Vec<view::PodView>>>,
    /// A Failed pod appeared or changed since the remediator was last told.
    failed_changed: bool,
}

impl Watch {
    fn apply(&mut self, event: Event<Pod>, now: Timestamp) -> Vec<Finding> {
        {
            let mut status = self.report.status.lock();
            status.watch.events += 1;
            status.watch.last_event_at = Some(now);
        }
        match event {
            Event::Init => {
                self.relist = Some(HashSet::new());
                self.report.status.lock().watch.lists += 1;
                Vec::new()
            }
            Event::InitApply(pod) | Event::Apply(pod) => {
                let Some(v) = view::view(&pod) else { return Vec::new() };
                if let Some(seen) = self.relist.as_mut() {
                    seen.insert((v.namespace.clone(), v.name.clone()));
                }
                self.failed_changed |= v.failed();
                self.judge.observe(v, now)
            }
            Event::InitDone => {
                let present = self.relist.take().unwrap_or_else(|| self.judge.keys());
                self.report.status.lock().synced = true;
                self.failed_changed = true;
                self.judge.keep_only(&present, now)
            }
            Event::Delete(pod) => match (pod.metadata.namespace.as_deref(), pod.metadata.name.as_deref()) {
                (Some(ns), Some(name)) => self.judge.forget(ns, name, now),
                _ => Vec::new(),
            },
        }
    }

    fn error(&mut self, e: &watcher::Error, retry_in: Duration) {
        self.report.metrics.watch_errors.inc();
        tracing::warn!(error = %e, ?retry_in, "the pod watch failed; retrying");
        let mut status = self.report.status.lock();
        status.watch.errors += 1;
        status.watch.last_error = Some(e.to_string());
        status.watch.last_error_at = Some(now());
    }

    /// Updates `/debug/state` and the gauges.
    fn publish(&self) {
        let watched = self.judge.watched();
        let active = self.judge.active_count();
        self.report.metrics.watched.set(watched as i64);
        self.report.metrics.findings_active.set(active as i64);
        let mut pods = self.report.status.lock();
        pods.watched = watched;
        if pods.findings_active != active || active > 0 {
            pods.findings_active = active;
            pods.findings = self.judge.active();
        }
    }

    /// Tells the remediator about every Failed pod, when something changed.
    fn offer_failed(&mut self) {
        if !std::mem::take(&mut self.failed_changed) {
            return;
        }
        let Some(tx) = &self.restarts else { return };
        // The whole set, empty too: the remediator forgets pods not in it.
        let failed: Vec<view::PodView> = self.judge.failed_pods().cloned().collect();
        if tx.try_send(failed).is_err() {
            // Busy: the next recheck offers them again.
            tracing::debug!("the remediator is busy; Failed pods are offered again later");
        }
    }
}

/// This node's pods as started: what they report, and the restarter while
/// there is a Kubernetes client.
#[derive(Debug)]
pub struct Pods {
    /// `/debug/state`'s `pods` and the pod metrics.
    pub report: PodsReport,
    /// Restarts this node's pods; `None` while pod watching is off.
    pub restarter: Option<Arc<Restarter>>,
    /// The watch, while on.
    pub task: Option<tokio::task::JoinHandle<()>>,
}

/// Starts watching this node's pods when there is a client; says which way
/// it went either way.
pub fn start(
    node: &str,
    config: &PodsConfig,
    connection: Connection,
    outbox: Outbox,
    metrics: PodMetrics,
    stopped: impl Future<Output = ()> + Send + 'static,
) -> Pods {
    let mode = match config.mode {
        PodsMode::Auto => "auto",
        PodsMode::On => "true",
        PodsMode::Off => "false",
    };
    let restart = config.restart_failed;
    let report = PodsReport { status: Published::default(), metrics };
    let mut status = report.status.lock();
    status.restarts.enabled = restart.enabled;
    status.restarts.max_per_hour = restart.max_per_hour;
    match connection {
        Connection::On(client, from) => {
            tracing::info!(
                pods_enabled = mode,
                client = %from,
                restart_failed = restart.enabled,
                max_per_hour = restart.max_per_hour,
                "pod watching on: Kubernetes client from {from}"
            );
            status.enabled = true;
            status.client = from;
            drop(status);
            // One restarter, so the local rule and directives spend one budget.
            let restarter = Arc::new(Restarter::new(node.to_owned(), client.clone(), restart.max_per_hour));
            let task = tokio::spawn(watch(
                node.to_owned(),
                report.clone(),
                outbox,
                client,
                config.clone(),
                restarter.clone(),
                stopped,
            ));
            Pods { report, restarter: Some(restarter), task: Some(task) }
        }
        Connection::Off(why) => {
            tracing::info!(pods_enabled = mode, "pod watching off: {why}");
            status.client = why;
            drop(status);
            Pods { report, restarter: None, task: None }
        }
    }
}
