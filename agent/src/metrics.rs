//! The agent's Prometheus metrics, under the `remedy_agent_` prefix.
//!
//! Each feature defines and registers its own metrics; this module only
//! puts them in one registry, in a fixed order, and renders it.

use std::sync::Arc;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
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
}

impl Metrics {
    /// Registers every metric under the `remedy_agent_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("remedy_agent");
        let outbox = OutboxMetrics::default();
        outbox.register(&mut registry);
        let stream = StreamMetrics::default();
        stream.register(&mut registry);
        let samples = Counter::default();
        registry.register("samples", "Resource samples taken", samples.clone());
        let pods = PodMetrics::default();
        pods.register(&mut registry);
        let logs = LogMetrics::default();
        logs.register(&mut registry);
        let blocks = BlockMetrics::default();
        blocks.register(&mut registry);
        let processes = ProcessMetrics::default();
        processes.register(&mut registry);
        let local = LocalMetrics::default();
        local.register(&mut registry);
        Metrics { registry: Arc::new(registry), outbox, stream, samples, pods, logs, blocks, processes, local }
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
