//! The agent's Prometheus metrics.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// Handles to every metric; cheap to clone.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Findings raised (spooled or dropped).
    pub findings_raised: Counter,
    /// Findings acknowledged by the coordinator.
    pub findings_acked: Counter,
    /// Findings dropped because the spool was full.
    pub spool_dropped: Counter,
    /// Findings in the spool.
    pub spool_depth: Gauge,
    /// 1 while a stream to the coordinator is open.
    pub connected: Gauge,
    /// Connection attempts that failed or streams that broke.
    pub reconnects: Counter,
    /// Resource samples taken.
    pub samples: Counter,
    /// Pods of this node being watched.
    pub pods_watched: Gauge,
    /// Pod findings raised and not cleared.
    pub pod_findings_active: Gauge,
    /// Errors of the pod watch (each followed by a retry).
    pub pod_watch_errors: Counter,
    /// Pods deleted so that their controller replaces them (by the local
    /// rule or a `restart_pod` directive).
    pub pod_restarts: Counter,
    /// Pod restarts refused, by reason (the local rule's once per pod and
    /// reason).
    pub pod_restarts_refused: Family<Vec<(String, String)>, Counter>,
    /// Restarts whose API calls failed.
    pub pod_restart_failures: Counter,
    /// The log tailer's.
    pub logs: LogMetrics,
    /// IP blocking's (`remedy_agent_blocks_*`).
    pub blocks: crate::nft::BlockMetrics,
    /// Process signals' (`remedy_agent_process_*`).
    pub processes: crate::procsig::ProcessMetrics,
    /// Log cleanup's and GC nudges' (`remedy_agent_local_*`).
    pub local: crate::local::LocalMetrics,
}

/// The log tailer's metrics (`remedy_agent_log_*`).
#[derive(Debug, Clone, Default)]
pub struct LogMetrics {
    /// Logical lines delivered to the sink.
    pub lines_read: Counter,
    /// Bytes consumed from log files.
    pub bytes_read: Counter,
    /// Lines longer than the maximum, cut.
    pub lines_cut: Counter,
    /// Lines with bytes that are not UTF-8.
    pub invalid_utf8_lines: Counter,
    /// Files open.
    pub files_open: Gauge,
    /// Live files replaced by a new one (renamed or deleted).
    pub rotations: Counter,
    /// Files that shrank below the read offset or whose first bytes changed.
    pub truncations: Counter,
    /// Failed reads and opens of files being tailed.
    pub read_errors: Counter,
    /// Failed checkpoint writes.
    pub checkpoint_errors: Counter,
    /// Seconds spent waiting for a full sink.
    pub sink_blocked_seconds: Counter<f64, AtomicU64>,
    /// Lines the consumer of log lines took.
    pub lines_accepted: Counter,
    /// Lines the error classifier counted as errors.
    pub error_lines: Counter,
    /// Failed logins the brute-force detector counted against an address.
    pub auth_failures: Counter,
}

impl LogMetrics {
    fn register(&self, registry: &mut Registry) {
        registry.register("log_lines_read", "Log lines delivered (CRI partial lines joined)", self.lines_read.clone());
        registry.register("log_bytes_read", "Bytes consumed from log files", self.bytes_read.clone());
        registry.register("log_lines_cut", "Log lines longer than logs.max_line_bytes, cut", self.lines_cut.clone());
        registry.register(
            "log_invalid_utf8_lines",
            "Log lines with bytes that are not UTF-8 (passed on with U+FFFD)",
            self.invalid_utf8_lines.clone(),
        );
        registry.register("log_files_open", "Log files open", self.files_open.clone());
        registry.register(
            "log_rotations",
            "Live log files replaced by a new file (renamed or deleted)",
            self.rotations.clone(),
        );
        registry.register(
            "log_truncations",
            "Log files truncated or rewritten in place (read again from the start)",
            self.truncations.clone(),
        );
        registry.register("log_read_errors", "Failed opens and reads of log files", self.read_errors.clone());
        registry.register(
            "log_checkpoint_errors",
            "Failed writes of the log offsets checkpoint",
            self.checkpoint_errors.clone(),
        );
        registry.register(
            "log_sink_blocked_seconds",
            "Seconds the log tailer waited because the line consumer was full",
            self.sink_blocked_seconds.clone(),
        );
        registry.register("log_lines_accepted", "Log lines the line consumer took", self.lines_accepted.clone());
        registry.register("log_error_lines", "Log lines classified as errors", self.error_lines.clone());
        registry.register(
            "log_auth_failures",
            "Failed logins in logs counted against a source address (allow-listed ones excluded)",
            self.auth_failures.clone(),
        );
    }
}

impl Metrics {
    /// Registers every metric under the `remedy_agent_` prefix.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("remedy_agent");
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            findings_raised: Counter::default(),
            findings_acked: Counter::default(),
            spool_dropped: Counter::default(),
            spool_depth: Gauge::default(),
            connected: Gauge::default(),
            reconnects: Counter::default(),
            samples: Counter::default(),
            pods_watched: Gauge::default(),
            pod_findings_active: Gauge::default(),
            pod_watch_errors: Counter::default(),
            pod_restarts: Counter::default(),
            pod_restarts_refused: Family::default(),
            pod_restart_failures: Counter::default(),
            logs: LogMetrics::default(),
            blocks: Default::default(),
            processes: Default::default(),
            local: Default::default(),
        };
        registry.register("findings_raised", "Findings raised on this node", m.findings_raised.clone());
        registry.register("findings_acked", "Findings the coordinator acknowledged", m.findings_acked.clone());
        registry.register(
            "spool_dropped",
            "Findings dropped because the spool was full (least severe first)",
            m.spool_dropped.clone(),
        );
        registry.register(
            "spool_depth",
            "Findings waiting for the coordinator's acknowledgement",
            m.spool_depth.clone(),
        );
        registry.register("connected", "1 while the stream to the coordinator is open", m.connected.clone());
        registry.register("reconnects", "Failed connection attempts and broken streams", m.reconnects.clone());
        registry.register("samples", "Resource samples taken", m.samples.clone());
        registry.register("pods_watched", "Pods bound to this node being watched", m.pods_watched.clone());
        registry.register("pod_findings_active", "Pod findings raised and not cleared", m.pod_findings_active.clone());
        registry.register(
            "pod_watch_errors",
            "Errors of the pod watch, each followed by a retry",
            m.pod_watch_errors.clone(),
        );
        registry.register(
            "pod_restarts",
            "Pods deleted so that their controller replaces them (local rule or restart_pod directive)",
            m.pod_restarts.clone(),
        );
        registry.register(
            "pod_restarts_refused",
            "Pod restarts refused, by reason (the local rule's: each pod and reason once)",
            m.pod_restarts_refused.clone(),
        );
        registry.register(
            "pod_restart_failures",
            "Pod restarts whose API calls failed",
            m.pod_restart_failures.clone(),
        );
        m.logs.register(&mut registry);
        m.blocks.register(&mut registry);
        m.processes.register(&mut registry);
        m.local.register(&mut registry);
        Metrics { registry: Arc::new(registry), ..m }
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
