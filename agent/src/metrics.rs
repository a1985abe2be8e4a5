//! The agent's Prometheus metrics, under the `remedy_agent_` prefix.
//!
//! Each feature defines and registers its own metrics; this module only
//! puts them in one registry, in a fixed order, and renders it.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;

use crate::local::LocalMetrics;
use crate::logs::LogMetrics;
use crate::nft::BlockMetrics;
use crate::outbox::OutboxMetrics;
use crate::pods::PodMetrics;
use crate::procsig::ProcessMetrics;
use crate::stream::StreamMetrics;

/// Handles to every metric; cheap to clone.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// The spool's (`remedy_agent_findings_*`, `remedy_agent_spool_*`).
    pub outbox: OutboxMetrics,
    /// The stream's (`remedy_agent_connected`, `remedy_agent_reconnects`).
    pub stream: StreamMetrics,
    /// Resource samples taken.
    pub samples: Counter,
    /// The pods watch's and restarts' (`remedy_agent_pod*`).
    pub pods: PodMetrics,
    /// The log tailer's and log detectors' (`remedy_agent_log_*`).
    pub logs: LogMetrics,
    /// IP blocking's (`remedy_agent_blocks_*`).
    pub blocks: BlockMetrics,
    /// Process signals' (`remedy_agent_process_*`).
    pub processes: ProcessMetrics,
    /// Log cleanup's and GC nudges' (`remedy_agent_local_*`).
    pub local: LocalMetrics,
    /// Diagnostics connections the agent closed by a deadline or a cap.
    pub diagnostics_connections_closed: Family<ReasonLabels, Counter>,
}

/// Why a connection was closed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    /// `first_request_timeout`, `header_timeout`, `idle_timeout`,
    /// `peer_limit` or `total_limit`.
    pub reason: String,
}

impl Metrics {
    /// Registers every metric under the `remedy_agent_` prefix.
    pub fn new() -> Self {
        let mut root = Registry::default();
        remedy_proto::selfmetrics::register(&mut root, "agent", env!("CARGO_PKG_VERSION"));
        let registry = root.sub_registry_with_prefix("remedy_agent");
        let outbox = OutboxMetrics::default();
        outbox.register(registry);
        let stream = StreamMetrics::default();
        stream.register(registry);
        let samples = Counter::default();
        registry.register("samples", "Resource samples taken", samples.clone());
        let pods = PodMetrics::default();
        pods.register(registry);
        let logs = LogMetrics::default();
        logs.register(registry);
        let blocks = BlockMetrics::default();
        blocks.register(registry);
        let processes = ProcessMetrics::default();
        processes.register(registry);
        let local = LocalMetrics::default();
        local.register(registry);
        let diagnostics_connections_closed = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "diagnostics_connections_closed",
            "Connections to the diagnostics endpoint closed by a deadline or a cap, by reason",
            diagnostics_connections_closed.clone(),
        );
        Metrics {
            registry: Arc::new(root),
            outbox,
            stream,
            samples,
            pods,
            logs,
            blocks,
            processes,
            local,
            diagnostics_connections_closed,
        }
    }

    /// What the diagnostics listener's gate calls for each connection it
    /// closes.
    pub fn on_close(&self) -> remedy_proto::listen::OnClose {
        let family = self.diagnostics_connections_closed.clone();
        Arc::new(move |reason: remedy_shared::connections::CloseReason| {
            family.get_or_create(&ReasonLabels { reason: reason.label().to_owned() }).inc();
        })
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
