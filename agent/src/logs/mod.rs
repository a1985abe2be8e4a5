//! Log tailing: container logs in CRI format under the kubelet's pod log
//! directory, and plain files, read line by line into a [`LineSink`].
//!
//! Files are followed by identity (device, inode and a fingerprint of their
//! first bytes), not by path, so rotation by rename, copytruncate and a file
//! deleted and recreated are each read once. What was delivered is
//! checkpointed in the state directory (see [`checkpoint`] and
//! [`tailer`] for the exact guarantee).

pub mod checkpoint;
pub mod config;
pub mod detect;
pub mod tailer;

#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use remedy_shared::Timestamp;
use remedy_shared::logs::LineClock;
use serde::Serialize;

pub use config::LogsConfig;
pub use remedy_shared::logs::cri::Stream;
pub use tailer::{TailerHandle, spawn};

use self::detect::{DetectorsStatus, LogDetectors};
use crate::infrastructure::OwnInfrastructure;
use crate::outbox::Outbox;
use crate::published::Published;

/// What kind of source a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    /// A container log in CRI format under the pod log directory.
    Cri,
    /// A configured file, one message per line.
    Plain,
}

/// Where lines come from; shared by every line of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LogSource {
    /// CRI or plain.
    pub kind: SourceKind,
    /// The path the file had when it was first opened (a rotated file keeps
    /// its source).
    pub path: PathBuf,
    /// The pod's namespace (CRI only).
    pub namespace: Option<String>,
    /// The pod (CRI only).
    pub pod: Option<String>,
    /// The container (CRI only).
    pub container: Option<String>,
}

/// One logical line: CRI partial lines joined, the newline removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Its file.
    pub source: Arc<LogSource>,
    /// When the runtime wrote it (CRI only), to the millisecond.
    pub timestamp: Option<Timestamp>,
    /// stdout or stderr (CRI only).
    pub stream: Option<Stream>,
    /// The text; bytes that are not UTF-8 are replaced by U+FFFD.
    pub message: String,
    /// The line was longer than `max_line_bytes`; `message` is its start.
    pub cut: bool,
}

/// Where the tailer delivers lines, in file order.
///
/// A line is delivered, and its file's offset may be checkpointed past it,
/// once `accept` returns `Ok`. A sink that cannot take a line now returns
/// it in `Err`: the tailer keeps it, stops reading, and offers the same line
/// again later, so a slow consumer bounds the tailer's memory instead of
/// growing it.
pub trait LineSink: Send {
    /// Takes `line`, or hands it back when full.
    fn accept(&mut self, line: LogLine) -> Result<(), LogLine>;
}

/// Where the tailer starts in files it finds at its very first scan, when
/// the state directory holds no checkpoint (the agent never ran here).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StartAt {
    /// From their first byte: everything already logged is read.
    Beginning,
    /// After their last complete line: only what is written from now on.
    End,
}

/// What the tailer reads and how.
#[derive(Debug, Clone, PartialEq)]
pub struct TailerConfig {
    /// The pod log directory (`/var/log/pods`); `None` reads no container
    /// logs.
    pub cri_root: Option<PathBuf>,
    /// Plain files, one message per line.
    pub plain_files: Vec<PathBuf>,
    /// Longest logical line kept, bytes; the rest of a longer one is
    /// skipped and the line marked cut.
    pub max_line_bytes: usize,
    /// How often the directory tree is listed for new, rotated and deleted
    /// files.
    pub discover_interval: Duration,
    /// How long the tailer waits after finding nothing new to read.
    pub poll_interval: Duration,
    /// How often delivered offsets are written (and at a clean stop).
    pub checkpoint_interval: Duration,
    /// The checkpoint file.
    pub checkpoint_path: PathBuf,
    /// Where files found at the first scan start without a checkpoint.
    pub first_start: StartAt,
}

/// The tailer as /debug/state shows it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LogsStatus {
    /// Whether the tailer runs.
    pub enabled: bool,
    /// The pod log directory.
    pub root: Option<PathBuf>,
    /// Configured plain files.
    pub plain_files: Vec<PathBuf>,
    /// Files open now.
    pub files: Vec<FileStatus>,
    /// Sources that cannot be read, and why; retried at every scan.
    pub unreadable: Vec<Unreadable>,
    /// The checkpoint.
    pub checkpoint: CheckpointStatus,
    /// Sources this agent does not read (and why).
    pub not_read: Vec<Unreadable>,
}

/// One open file.
#[derive(Debug, Clone, Serialize)]
pub struct FileStatus {
    /// Its current path (a rotated file's new name).
    pub path: PathBuf,
    /// CRI or plain.
    pub kind: SourceKind,
    /// Namespace, pod and container (CRI only).
    pub namespace: Option<String>,
    /// Pod.
    pub pod: Option<String>,
    /// Container.
    pub container: Option<String>,
    /// Device.
    pub dev: u64,
    /// Inode.
    pub ino: u64,
    /// FNV-1a of the first `fingerprint_len` bytes, hex.
    pub fingerprint: String,
    /// Bytes the fingerprint covers.
    pub fingerprint_len: u32,
    /// Delivered up to this byte.
    pub offset: u64,
    /// Read up to this byte (beyond `offset`: a partial line, or a line the
    /// sink has not taken yet).
    pub read_offset: u64,
    /// Size at the last scan.
    pub size: u64,
    /// Lines delivered.
    pub lines: u64,
    /// Still the file the writer appends to; false once renamed or deleted
    /// (it is read to its end, then closed).
    pub live: bool,
    /// A line waits for the sink.
    pub waiting_for_sink: bool,
}

/// A source that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unreadable {
    /// The path.
    pub path: PathBuf,
    /// Why.
    pub reason: String,
}

/// The checkpoint's state.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CheckpointStatus {
    /// Its file.
    pub path: Option<PathBuf>,
    /// When it was last written.
    pub last_written: Option<Timestamp>,
    /// The last failure to read or write it, if the latest attempt failed.
    pub last_error: Option<String>,
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
    /// Registers them.
    pub fn register(&self, registry: &mut Registry) {
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

/// Log tailing as started: what it shows in /debug/state, the detectors
/// snapshots read, and its tasks while it runs.
#[derive(Debug, Default)]
pub struct Logs {
    /// `/debug/state`'s `logs`: files, offsets, sources that cannot be read.
    pub status: Published<LogsStatus>,
    /// `/debug/state`'s `log_detectors`.
    pub detectors_status: Published<DetectorsStatus>,
    /// The detectors, while tailing is on.
    pub detectors: Option<LogDetectors>,
    /// The tailer and the flush task, while tailing is on.
    pub tasks: Option<LogTasks>,
}

/// The log tailer and the task that hands what its detectors raise to the
/// spool.
#[derive(Debug)]
pub struct LogTasks {
    tailer: TailerHandle,
    flush: tokio::task::JoinHandle<()>,
    stop_flush: tokio::sync::oneshot::Sender<()>,
}

impl LogTasks {
    /// Stops the tailer first (its final checkpoint is what makes a clean
    /// restart read every line once), then spools what the detectors raised
    /// from the last lines, so no line is checkpointed without its finding.
    pub async fn stop(self) {
        match tokio::task::spawn_blocking(move || self.tailer.stop()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "log tailer stopped without its checkpoint"),
            Err(e) => tracing::error!(error = %e, "log tailer did not stop"),
        }
        let _ = self.stop_flush.send(());
        let _ = self.flush.await;
    }
}

/// Why log tailing could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The detectors' settings are wrong. They were validated with the
    /// configuration, so this is a bug, not input.
    #[error("log detectors: {}: {}", .0.field, .0.message)]
    Detectors(#[from] remedy_shared::logs::InvalidLogConfig),
    /// The tailer's thread could not be started.
    #[error("cannot start the log tailer: {0}")]
    Tailer(#[from] std::io::Error),
}

/// Starts the log tailer feeding the error classifier and the brute-force
/// detector, when enabled; offsets are checkpointed in `state_dir`.
pub fn start(
    config: &LogsConfig,
    state_dir: &std::path::Path,
    outbox: Outbox,
    metrics: LogMetrics,
    own: OwnInfrastructure,
) -> Result<Logs, StartError> {
    let c = config;
    if !c.enabled {
        tracing::info!("log tailing off (logs.enabled: false)");
        return Ok(Logs::default());
    }
    let tailer_config = TailerConfig {
        cri_root: Some(c.root.clone()),
        plain_files: c.files.clone(),
        max_line_bytes: c.max_line_bytes,
        discover_interval: c.discover_interval,
        poll_interval: c.poll_interval,
        checkpoint_interval: c.checkpoint_interval,
        checkpoint_path: state_dir.join("log-checkpoint.json"),
        first_start: c.first_start,
    };
    // Validated with the configuration; a failure here is a bug, not input.
    let detectors = LogDetectors::new(c.errors.clone(), c.brute_force.clone())?.protecting(own);
    // RFC 3164 times are in the zone syslog writes them in: the node's,
    // when the DaemonSet mounts its /etc/localtime (UTC without it).
    let localtime = std::fs::read("/etc/localtime").ok();
    detectors.set_line_clock(LineClock::new(&c.line_time, localtime.as_deref())?);
    let detectors_status = Published::default();
    let (stop_flush, flush_stopped) = tokio::sync::oneshot::channel::<()>();
    let flush = tokio::spawn(detectors.clone().flush(outbox, detectors_status.clone(), metrics.clone(), async move {
        let _ = flush_stopped.await;
    }));
    let sink = detectors.sink(metrics.lines_accepted.clone());
    let status: Published<LogsStatus> = Published::default();
    let published = status.clone();
    let publish: tailer::Publish = Box::new(move |fresh| *published.lock() = fresh);
    let tailer = spawn(tailer_config, sink, metrics, publish)?;
    tracing::info!(root = %c.root.display(), files = c.files.len(), "log tailing on");
    Ok(Logs {
        status,
        detectors_status,
        detectors: Some(detectors),
        tasks: Some(LogTasks { tailer, flush, stop_flush }),
    })
}
