//! The coordinator's Prometheus metrics. Each one has a reason to exist:
//! the help text says which question it answers.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Handles to every metric; cheap to clone.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Findings persisted (each counted once).
    pub findings_persisted: Counter,
    /// Findings received again after they were persisted.
    pub findings_duplicate: Counter,
    /// Findings or batches refused as invalid.
    pub findings_rejected: Counter,
    /// Store transactions committed or attempted.
    pub store_commits: Counter,
    /// Store transactions that failed.
    pub store_commit_errors: Counter,
    /// Incidents opened.
    pub incidents_opened: Counter,
    /// Alert notifications recorded.
    pub alerts_received: Counter,
    /// Alert notifications seen before.
    pub alerts_duplicate: Counter,
    /// Incidents open now.
    pub open_incidents: Gauge,
    /// Agent streams open now.
    pub agent_streams: Gauge,
    /// Agents marked stale now.
    pub stale_agents: Gauge,
    /// Directive results that matched no waiting directive.
    pub directive_results_unmatched: Counter,
    /// Anonymous admin calls refused beyond the audit's per-minute budget:
    /// counted here, not recorded one by one.
    pub admin_refusals_unrecorded: Counter,
    /// Deliveries to people's channels, by channel and outcome.
    pub notifications: Family<NotificationLabels, Counter>,
    /// Escalation levels whose pages reached nobody (each escalates at once).
    pub levels_unreached: Counter,
    /// Mean time to recovery over the report window, in seconds.
    pub mttr_seconds: Family<WindowLabels, Gauge<f64, AtomicU64>>,
    /// Mean time to acknowledge over the report window, in seconds.
    pub mtta_seconds: Family<WindowLabels, Gauge<f64, AtomicU64>>,
    /// Availability over the report window, from total-outage incidents.
    pub availability_percent: Family<WindowLabels, Gauge<f64, AtomicU64>>,
    /// Incidents opened in the report window, by priority: the rows add
    /// up to the total.
    pub window_incidents: Family<PriorityLabels, Gauge>,
    /// Incidents opened in the report window and tagged security.
    pub window_security_incidents: Family<WindowLabels, Gauge>,
    /// Connections the server closed by a deadline or a cap.
    pub connections_closed: Family<ClosedLabels, Counter>,
    /// Actions the engine ran, by kind and outcome.
    pub actions: Family<ActionLabels, Counter>,
    /// Actions the rails refused, by kind and rail.
    pub refusals: Family<RefusalLabels, Counter>,
    /// Alertmanager webhook requests, by outcome.
    pub webhook_requests: Family<OutcomeLabels, Counter>,
    /// 1 while automation is paused.
    pub paused: Gauge,
    /// Circuit breakers open now.
    pub breakers_open: Gauge,
    /// Approval requests waiting for an answer now.
    pub approvals_pending: Gauge,
    /// How long the oldest waiting approval request has waited.
    pub approvals_oldest_seconds: Gauge<f64, AtomicU64>,
    /// Reads the rails' state at each scrape; unset on a standby.
    rails: Arc<std::sync::OnceLock<Rails>>,
}

/// The rails' source, opaque to `Debug`.
struct Rails(RailsSource);

impl std::fmt::Debug for Rails {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Rails")
    }
}

/// What the rails say at a scrape: `None` once the engine is gone.
pub type RailsSource = Box<dyn Fn() -> Option<RailsState> + Send + Sync>;

/// The rails' state as the metrics show it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RailsState {
    /// Automation is paused.
    pub paused: bool,
    /// Circuit breakers open.
    pub breakers_open: usize,
    /// Approval requests waiting.
    pub approvals_pending: usize,
    /// The oldest waiting one's age, in seconds (0 when none waits).
    pub approvals_oldest_seconds: f64,
}

/// Labels of an action the engine ran.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ActionLabels {
    /// The action's kind (`restart_pod`, `scale`, `block_ip`...).
    pub kind: String,
    /// The actuator's status (`succeeded`, `failed`, `rehearsed`...).
    pub outcome: String,
}

/// Labels of an action the rails refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RefusalLabels {
    /// The action's kind.
    pub kind: String,
    /// The rail that refused it (`global_pause`, `breaker_open`,
    /// `cooldown`, `budget_exhausted`...).
    pub reason: String,
}

/// Labels of a request by how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `accepted`, `unauthenticated`, `not_json`, `too_large`,
    /// `invalid`, `forbidden` or `unavailable`.
    pub outcome: String,
}

/// Labels of a connection the server closed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ClosedLabels {
    /// `grpc` or `http`.
    pub listener: String,
    /// `handshake_timeout`, `first_request_timeout`, `header_timeout`,
    /// `idle_timeout`, `peer_limit` or `total_limit`.
    pub reason: String,
}

/// Labels of a delivery to a channel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct NotificationLabels {
    /// The channel's name.
    pub channel: String,
    /// `delivered`, `failed` or `breaker_open`.
    pub outcome: String,
}

/// The window a reported figure covers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct WindowLabels {
    /// `30d`.
    pub window: String,
}

/// A count of incidents by priority in a window.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct PriorityLabels {
    /// `30d`.
    pub window: String,
    /// `P0`..`P3`, `security`, `none`.
    pub priority: String,
}

impl Metrics {
    /// Registers every metric under the `remedy_` prefix.
    pub fn new() -> Self {
        let mut root = Registry::default();
        remedy_proto::selfmetrics::register(&mut root, "coordinator", env!("CARGO_PKG_VERSION"));
        let registry = root.sub_registry_with_prefix("remedy");
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            findings_persisted: Counter::default(),
            findings_duplicate: Counter::default(),
            findings_rejected: Counter::default(),
            store_commits: Counter::default(),
            store_commit_errors: Counter::default(),
            incidents_opened: Counter::default(),
            alerts_received: Counter::default(),
            alerts_duplicate: Counter::default(),
            open_incidents: Gauge::default(),
            agent_streams: Gauge::default(),
            stale_agents: Gauge::default(),
            directive_results_unmatched: Counter::default(),
            admin_refusals_unrecorded: Counter::default(),
            notifications: Family::default(),
            levels_unreached: Counter::default(),
            mttr_seconds: Family::default(),
            mtta_seconds: Family::default(),
            availability_percent: Family::default(),
            window_incidents: Family::default(),
            window_security_incidents: Family::default(),
            connections_closed: Family::default(),
            actions: Family::default(),
            refusals: Family::default(),
            webhook_requests: Family::default(),
            paused: Gauge::default(),
            breakers_open: Gauge::default(),
            approvals_pending: Gauge::default(),
            approvals_oldest_seconds: Gauge::default(),
            rails: Arc::default(),
        };
        registry.register("findings_persisted", "Findings persisted, each counted once", m.findings_persisted.clone());
        registry.register(
            "findings_duplicate",
            "Findings received again after being persisted (resends after reconnects); not stored twice",
            m.findings_duplicate.clone(),
        );
        registry.register("findings_rejected", "Findings or batches refused as invalid", m.findings_rejected.clone());
        registry.register("store_commits", "Store transactions attempted", m.store_commits.clone());
        registry.register(
            "store_commit_errors",
            "Store transactions that failed; while this grows nothing is acknowledged",
            m.store_commit_errors.clone(),
        );
        registry.register("incidents_opened", "Incidents opened", m.incidents_opened.clone());
        registry.register("alerts_received", "Alertmanager alert notifications recorded", m.alerts_received.clone());
        registry.register(
            "alerts_duplicate",
            "Alert notifications received again (retries, the other Alertmanager replica); acted on once",
            m.alerts_duplicate.clone(),
        );
        registry.register("open_incidents", "Incidents not yet resolved", m.open_incidents.clone());
        registry.register("agent_streams", "Agent streams open now", m.agent_streams.clone());
        registry.register("stale_agents", "Agents that missed their heartbeats", m.stale_agents.clone());
        registry.register(
            "directive_results_unmatched",
            "Directive results nobody waited for (late after a timeout, duplicate, unknown id, wrong agent); logged and ignored",
            m.directive_results_unmatched.clone(),
        );
        registry.register(
            "admin_refusals_unrecorded",
            "Anonymous admin calls refused beyond the audit log's budget of 30 a minute: counted, not recorded one by one",
            m.admin_refusals_unrecorded.clone(),
        );
        registry.register(
            "notifications",
            "Deliveries to people's channels (pages, follow-ups, updates) by channel and outcome",
            m.notifications.clone(),
        );
        registry.register(
            "escalation_levels_unreached",
            "Escalation levels whose pages reached nobody after every channel's retries; the next level is told at once",
            m.levels_unreached.clone(),
        );
        registry.register(
            "mttr_seconds",
            "Mean time to recovery of the incidents opened in the window and resolved",
            m.mttr_seconds.clone(),
        );
        registry.register(
            "mtta_seconds",
            "Mean time to acknowledge of the incidents opened in the window and acknowledged",
            m.mtta_seconds.clone(),
        );
        registry.register(
            "availability_percent",
            "Availability over the window: time outside incidents tagged total_outage, overlaps counted once",
            m.availability_percent.clone(),
        );
        registry.register(
            "window_incidents",
            "Incidents opened in the window, by priority; sum them for the total",
            m.window_incidents.clone(),
        );
        registry.register(
            "connections_closed",
            "Connections the server closed by a deadline (handshake, first request, headers, idle) or a cap \
             (per peer address, per listener), by listener and reason",
            m.connections_closed.clone(),
        );
        registry.register("actions", "Actions the engine ran, by kind and the actuator's outcome", m.actions.clone());
        registry.register(
            "refusals",
            "Actions the rails refused, by kind and the rail that refused (reason)",
            m.refusals.clone(),
        );
        registry.register(
            "alertmanager_webhook_requests",
            "Alertmanager webhook requests, by outcome",
            m.webhook_requests.clone(),
        );
        registry.register("automation_paused", "1 while a person has paused automation", m.paused.clone());
        registry.register(
            "breakers_open",
            "Circuit breakers open now (actions in their scope are refused)",
            m.breakers_open.clone(),
        );
        registry.register(
            "approvals_pending",
            "Approval requests waiting for a person's answer",
            m.approvals_pending.clone(),
        );
        registry.register(
            "approvals_oldest_pending_seconds",
            "How long the oldest approval request still waiting has waited; 0 when none waits",
            m.approvals_oldest_seconds.clone(),
        );
        registry.register(
            "window_security_incidents",
            "Incidents opened in the window and tagged security, whatever their priority",
            m.window_security_incidents.clone(),
        );
        Metrics { registry: Arc::new(root), ..m }
    }

    /// What a listener's gate calls for each connection it closes.
    pub fn on_close(&self, listener: &str) -> remedy_proto::listen::OnClose {
        let (family, listener) = (self.connections_closed.clone(), listener.to_owned());
        std::sync::Arc::new(move |reason: remedy_shared::connections::CloseReason| {
            family.get_or_create(&ClosedLabels { listener: listener.clone(), reason: reason.label().to_owned() }).inc();
        })
    }

    /// Reads the rails' gauges from `source` at each scrape. Set once.
    pub fn watch_rails(&self, source: RailsSource) {
        let _ = self.rails.set(Rails(source));
    }

    /// The OpenMetrics text format.
    pub fn render(&self) -> String {
        if let Some(rails) = self.rails.get().and_then(|source| (source.0)()) {
            self.paused.set(i64::from(rails.paused));
            self.breakers_open.set(i64::try_from(rails.breakers_open).unwrap_or(i64::MAX));
            self.approvals_pending.set(i64::try_from(rails.approvals_pending).unwrap_or(i64::MAX));
            self.approvals_oldest_seconds.set(rails.approvals_oldest_seconds);
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
